// libFuzzer entry point for the GGUF reader: parse the input, then touch everything the reader exposes.
//
// Built by tests/fuzz/CMakeLists.txt (-DVLM_BUILD_FUZZERS=ON, clang); seeds in tests/fuzz/corpus-gguf (the fixtures
// of tests/data/gguf and tests/data/gguf/corrupt). Run: tools/fuzz.sh SECONDS gguf.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/gguf.h"
#include "vlm/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// The reader must never hand out memory outside the input.
static void check_inside(const void *p, uint64_t n, const uint8_t *data, size_t size) {
    const uint8_t *q = p;
    if (q < data || q > data + size || n > (uint64_t)(data + size - q)) {
        abort();
    }
}

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool quiet;
    if (!quiet) {
        vlm_log_set_level(VLM_LOG_ERROR); // failures log at debug level; keep the fuzzer's output readable
        quiet = true;
    }
    // An exact-size copy, so ASan sees a read one byte past the end even when libFuzzer's buffer is larger.
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) {
        return 0;
    }
    if (size) {
        memcpy(copy, data, size);
    }
    struct vlm_gguf *g = NULL;
    struct vlm_diag diag;
    if (vlm_gguf_open_buffer(copy, size, "fuzz.gguf", &g, &diag) != 0) {
        if (g || diag.code >= 0 || strncmp(diag.msg, "fuzz.gguf: ", 11) != 0) {
            abort();
        }
        free(copy);
        return 0;
    }
    uint64_t h = vlm_gguf_version(g) + vlm_gguf_alignment(g);
    for (int64_t i = 0; i < vlm_gguf_kv_count(g); i++) {
        const char *key = vlm_gguf_kv_key(g, i);
        if (!key || vlm_gguf_find_key(g, key) != i) {
            abort();
        }
        int64_t iv;
        double fv;
        bool bv;
        struct vlm_gguf_str s;
        if (vlm_gguf_get_int(g, key, &iv, NULL) == 0) {
            h += (uint64_t)iv;
        }
        if (vlm_gguf_get_float(g, key, &fv, NULL) == 0) {
            h += fv > 0;
        }
        if (vlm_gguf_get_bool(g, key, &bv, NULL) == 0) {
            h += bv;
        }
        if (vlm_gguf_get_str(g, key, &s, NULL) == 0) {
            check_inside(s.ptr, s.len, copy, size);
            h += s.len ? (uint8_t)s.ptr[s.len - 1] : 0;
        }
        enum vlm_gguf_type et;
        uint64_t n;
        if (vlm_gguf_kv_array(g, i, &et, &n) != 0) {
            continue;
        }
        if (et == VLM_GGUF_TYPE_STRING) {
            int64_t ki;
            if (vlm_gguf_get_str_array(g, key, &ki, &n, NULL) != 0 || ki != i) {
                abort();
            }
            for (uint64_t k = 0; k < n; k++) {
                s = vlm_gguf_array_str(g, i, k);
                check_inside(s.ptr, s.len, copy, size);
                h += s.len ? (uint8_t)s.ptr[0] : 0;
            }
        } else {
            const void *p;
            if (vlm_gguf_get_array(g, key, et, &p, &n, NULL) != 0) {
                abort();
            }
            for (uint64_t k = 0; k < n; k++) {
                if (vlm_gguf_array_get_num(g, i, k, &fv) != 0) {
                    abort();
                }
                h += fv > 0;
            }
            if (n > 0) {
                check_inside(p, 1, copy, size);
            }
        }
    }
    for (int64_t i = 0; i < vlm_gguf_tensor_count(g); i++) {
        const struct vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, i);
        if (!t || vlm_gguf_find_tensor(g, t->name) != t || t->n_dims < 1 || t->n_dims > VLM_GGUF_MAX_DIMS) {
            abort();
        }
        check_inside(t->data, t->size, copy, size);
        if (t->size) {
            h += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->size - 1];
        }
    }
    sink = h;
    vlm_gguf_close(g);
    free(copy);
    return 0;
}
