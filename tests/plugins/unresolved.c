// Test plugin: imports a symbol nobody defines; RTLD_NOW must make dlopen fail.
#include "vlm/plugin.h"

extern int vlm_test_symbol_that_does_not_exist(void);

VLM_API const uint32_t vlm_plugin_abi_version = VLM_PLUGIN_ABI_VERSION;

VLM_API int vlm_test_unresolved_call(void);
int vlm_test_unresolved_call(void) {
    return vlm_test_symbol_that_does_not_exist();
}
