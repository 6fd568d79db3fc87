// Plugin loader: the real plugin loads and describes itself; broken plugins are refused with a message that
// names the file, and refusing one does not disturb loading the others.
#include <string.h>

#include "test-util.h"
#include "vlm/plugin.h"

static void expect_refused(const char *file, int code, const char *substring) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", VLM_TEST_PLUGIN_DIR, file);
    struct vlm_plugin *p = NULL;
    struct vlm_diag diag = {0};
    int rc = vlm_plugin_open(path, &p, &diag);
    print_message("  %-20s -> %s: %s\n", file, vlm_err_name(rc), diag.msg);
    assert_int_equal(rc, code);
    assert_null(p);
    assert_int_equal(diag.code, code);
    assert_non_null(strstr(diag.msg, file));
    assert_non_null(strstr(diag.msg, substring));
}

static void test_real_plugin(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/llm-llama.so", VLM_PLUGIN_BUILD_DIR);
    struct vlm_plugin *p = NULL;
    struct vlm_diag diag = {0};
    assert_int_equal(vlm_plugin_open(path, &p, &diag), 0);
    const struct vlm_plugin_desc *d = vlm_plugin_desc(p);
    assert_int_equal(d->kind, VLM_PLUGIN_KIND_LLM);
    assert_string_equal(d->name, "llm-llama");
    assert_string_equal(d->archs[0], "llama");
    assert_string_equal(vlm_plugin_path(p), path);
    vlm_plugin_close(p);
}

static void test_broken_plugins(void **state) {
    (void)state;
    char abi_msg[64]; // the plugin says the host's version + 1
    snprintf(abi_msg, sizeof abi_msg, "ABI version %u, this host needs %u", VLM_PLUGIN_ABI_VERSION + 1u,
             VLM_PLUGIN_ABI_VERSION);
    expect_refused("bad-abi.so", VLM_EABI, abi_msg);
    expect_refused("no-query.so", VLM_EINVAL, "vlm_plugin_query");
    expect_refused("bad-kind.so", VLM_EINVAL, "unknown plugin kind 42");
    expect_refused("incomplete-llm.so", VLM_EINVAL, "'load' is missing");
    expect_refused("unresolved.so", VLM_EINVAL, "vlm_test_symbol_that_does_not_exist");
    expect_refused("does-not-exist.so", VLM_EINVAL, "cannot load plugin");
}

static void test_find_by_arch(void **state) {
    (void)state;
    struct vlm_plugin *p = NULL;
    struct vlm_diag diag = {0};
    // The build's plugin directory holds llm-llama: found by architecture.
    assert_int_equal(vlm_plugin_open_for_arch(VLM_PLUGIN_BUILD_DIR, VLM_PLUGIN_KIND_LLM, "llama", &p, &diag), 0);
    assert_string_equal(vlm_plugin_desc(p)->name, "llm-llama");
    vlm_plugin_close(p);
    assert_int_equal(vlm_plugin_open_for_arch(VLM_PLUGIN_BUILD_DIR, VLM_PLUGIN_KIND_LLM, "gpt2", &p, &diag),
                     VLM_ENOTFOUND);
    assert_non_null(strstr(diag.msg, "gpt2"));
    // The broken-plugin directory: every plugin there is skipped, none matches, nothing crashes.
    assert_int_equal(vlm_plugin_open_for_arch(VLM_TEST_PLUGIN_DIR, VLM_PLUGIN_KIND_LLM, "llama", &p, &diag),
                     VLM_ENOTFOUND);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_plugin),
        cmocka_unit_test(test_broken_plugins),
        cmocka_unit_test(test_find_by_arch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
