// Test plugin: right ABI, unknown kind.
#include "vlm/plugin.h"

VLM_API const uint32_t vlm_plugin_abi_version = VLM_PLUGIN_ABI_VERSION;

static const struct vlm_plugin_desc desc = {
    .abi_version = VLM_PLUGIN_ABI_VERSION,
    .kind = (enum vlm_plugin_kind)42,
    .name = "bad-kind",
    .version = "0",
};

VLM_API const struct vlm_plugin_desc *vlm_plugin_query(void);
const struct vlm_plugin_desc *vlm_plugin_query(void) {
    return &desc;
}
