// Test plugin: has the ABI version symbol but no vlm_plugin_query.
#include "vlm/plugin.h"

VLM_API const uint32_t vlm_plugin_abi_version = VLM_PLUGIN_ABI_VERSION;
