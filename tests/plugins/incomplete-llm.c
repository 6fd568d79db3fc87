// Test plugin: an LLM whose operation table has holes.
#include "vlm/plugin.h"

VLM_API const uint32_t vlm_plugin_abi_version = VLM_PLUGIN_ABI_VERSION;

static const struct vlm_llm_ops ops = {0};
static const char *const archs[] = {"llama", NULL};

static const struct vlm_plugin_desc desc = {
    .abi_version = VLM_PLUGIN_ABI_VERSION,
    .kind = VLM_PLUGIN_KIND_LLM,
    .name = "incomplete-llm",
    .version = "0",
    .archs = archs,
    .llm = &ops,
};

VLM_API const struct vlm_plugin_desc *vlm_plugin_query(void);
const struct vlm_plugin_desc *vlm_plugin_query(void) {
    return &desc;
}
