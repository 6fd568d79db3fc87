// Test plugin: built against a future ABI version; the loader must refuse it before calling into it.
#include "vlm/plugin.h"

VLM_API const uint32_t vlm_plugin_abi_version = VLM_PLUGIN_ABI_VERSION + 1;

static const struct vlm_plugin_desc desc = {
    .abi_version = VLM_PLUGIN_ABI_VERSION + 1,
    .kind = VLM_PLUGIN_KIND_LLM,
    .name = "bad-abi",
    .version = "0",
};

VLM_API const struct vlm_plugin_desc *vlm_plugin_query(void);
const struct vlm_plugin_desc *vlm_plugin_query(void) {
    return &desc;
}
