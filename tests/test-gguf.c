// GGUF reader: valid fixtures read back value by value, a corpus of corrupt files with expected messages, OS-level
// open errors, size caps, and a deterministic mutation sweep (every variant must open or fail cleanly).
// Fixtures come from tools/make_gguf_fixtures.py; the expected values below mirror that script.
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include "test-util.h"
#include "vlm/gguf.h"

#define GGUF_DIR VLM_TEST_DATA_DIR "/gguf"

static void data_path(char *buf, size_t cap, const char *rel) {
    snprintf(buf, cap, "%s/%s", GGUF_DIR, rel);
}

static struct vlm_gguf *open_ok(const char *rel) {
    char path[512];
    data_path(path, sizeof path, rel);
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    int rc = vlm_gguf_open(path, &g, &d);
    if (rc != 0) {
        fail_msg("vlm_gguf_open(%s) = %d: %s", path, rc, d.msg);
    }
    assert_non_null(g);
    assert_string_equal(vlm_gguf_path(g), path);
    return g;
}

static bool str_eq(struct vlm_gguf_str s, const char *want) {
    return s.ptr && s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

static int64_t get_int(const struct vlm_gguf *g, const char *key) {
    int64_t v = 0x5a5a;
    struct vlm_diag d = {0};
    int rc = vlm_gguf_get_int(g, key, &v, &d);
    if (rc != 0) {
        fail_msg("get_int(%s) = %d: %s", key, rc, d.msg);
    }
    return v;
}

static double get_float(const struct vlm_gguf *g, const char *key) {
    double v = 0;
    struct vlm_diag d = {0};
    int rc = vlm_gguf_get_float(g, key, &v, &d);
    if (rc != 0) {
        fail_msg("get_float(%s) = %d: %s", key, rc, d.msg);
    }
    return v;
}

static void expect_type(const struct vlm_gguf *g, const char *key, enum vlm_gguf_type t) {
    int64_t i = vlm_gguf_find_key(g, key);
    if (i < 0) {
        fail_msg("key %s missing", key);
    }
    assert_string_equal(vlm_gguf_kv_key(g, i), key);
    assert_int_equal(vlm_gguf_kv_type(g, i), t);
}

static float ld_f32(const void *p, size_t i) {
    float f;
    memcpy(&f, (const char *)p + i * 4, 4);
    return f;
}

// ---- all-types.gguf ------------------------------------------------------------------------------------------

static void check_all_types_kv(const struct vlm_gguf *g) {
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_version(g), 3);
    assert_int_equal(vlm_gguf_alignment(g), 64);
    assert_int_equal(vlm_gguf_kv_count(g), 24);

    expect_type(g, "general.architecture", VLM_GGUF_TYPE_STRING);
    expect_type(g, "general.alignment", VLM_GGUF_TYPE_UINT32);
    expect_type(g, "test.u8", VLM_GGUF_TYPE_UINT8);
    expect_type(g, "test.i8", VLM_GGUF_TYPE_INT8);
    expect_type(g, "test.u16", VLM_GGUF_TYPE_UINT16);
    expect_type(g, "test.i16", VLM_GGUF_TYPE_INT16);
    expect_type(g, "test.u32", VLM_GGUF_TYPE_UINT32);
    expect_type(g, "test.i32", VLM_GGUF_TYPE_INT32);
    expect_type(g, "test.f32", VLM_GGUF_TYPE_FLOAT32);
    expect_type(g, "test.bool_true", VLM_GGUF_TYPE_BOOL);
    expect_type(g, "test.str", VLM_GGUF_TYPE_STRING);
    expect_type(g, "test.str_empty", VLM_GGUF_TYPE_STRING);
    expect_type(g, "test.u64", VLM_GGUF_TYPE_UINT64);
    expect_type(g, "test.i64", VLM_GGUF_TYPE_INT64);
    expect_type(g, "test.f64", VLM_GGUF_TYPE_FLOAT64);
    expect_type(g, "test.arr_empty", VLM_GGUF_TYPE_ARRAY);

    assert_int_equal(get_int(g, "general.alignment"), 64);
    assert_int_equal(get_int(g, "test.u8"), 200);
    assert_int_equal(get_int(g, "test.i8"), -100);
    assert_int_equal(get_int(g, "test.u16"), 60000);
    assert_int_equal(get_int(g, "test.i16"), -30000);
    assert_int_equal(get_int(g, "test.u32"), 4000000000LL);
    assert_int_equal(get_int(g, "test.i32"), -2000000000LL);
    assert_true(get_int(g, "test.i64") == -(INT64_C(1) << 62));
    assert_int_equal(get_int(g, "test.bool_true"), 1);
    assert_int_equal(get_int(g, "test.bool_false"), 0);
    assert_true(get_float(g, "test.f32") == 1.5);
    assert_true(get_float(g, "test.f64") == 3.141592653589793);
    assert_true(get_float(g, "test.i16") == -30000.0);
    assert_true(get_float(g, "test.u64") == 9223372036854775813.0);

    bool b = false;
    assert_int_equal(vlm_gguf_get_bool(g, "test.bool_true", &b, &d), 0);
    assert_true(b);
    assert_int_equal(vlm_gguf_get_bool(g, "test.bool_false", &b, &d), 0);
    assert_false(b);

    struct vlm_gguf_str s = {0};
    assert_int_equal(vlm_gguf_get_str(g, "general.architecture", &s, &d), 0);
    assert_true(str_eq(s, "test"));
    assert_int_equal(vlm_gguf_get_str(g, "test.str", &s, &d), 0);
    assert_true(str_eq(s, "hello, gguf \xe2\x9c\x93"));
    assert_int_equal(vlm_gguf_get_str(g, "test.str_empty", &s, &d), 0);
    assert_int_equal(s.len, 0);

    // wrong types and missing keys: clean errors naming the key, outputs untouched
    int64_t iv = 77;
    assert_int_equal(vlm_gguf_get_int(g, "test.str", &iv, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "key 'test.str' has type STRING, expected an integer"));
    assert_non_null(strstr(d.msg, vlm_gguf_path(g)));
    assert_int_equal(vlm_gguf_get_int(g, "test.u64", &iv, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "does not fit in int64"));
    assert_int_equal(vlm_gguf_get_int(g, "test.f32", &iv, &d), VLM_EBADMODEL);
    assert_int_equal(vlm_gguf_get_int(g, "test.arr_i32", &iv, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "has type ARRAY of INT32"));
    assert_int_equal(vlm_gguf_get_int(g, "no.such.key", &iv, &d), VLM_ENOENT);
    assert_int_equal(iv, 77);
    double fv = 0;
    assert_int_equal(vlm_gguf_get_float(g, "test.str", &fv, &d), VLM_EBADMODEL);
    assert_int_equal(vlm_gguf_get_float(g, "test.bool_true", &fv, &d), VLM_EBADMODEL);
    assert_int_equal(vlm_gguf_get_bool(g, "test.u8", &b, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "key 'test.u8' has type UINT8, expected BOOL"));
    assert_int_equal(vlm_gguf_get_str(g, "test.u8", &s, &d), VLM_EBADMODEL);
    assert_int_equal(vlm_gguf_get_str(g, "missing", &s, &d), VLM_ENOENT);
    assert_int_equal(vlm_gguf_find_key(g, "missing"), -1);
    assert_int_equal(vlm_gguf_find_key(g, "test"), -1); // prefix of real keys
    assert_int_equal(vlm_gguf_find_key(g, "test.u8x"), -1);
    assert_null(vlm_gguf_kv_key(g, -1));
    assert_null(vlm_gguf_kv_key(g, 24));
    assert_int_equal(vlm_gguf_kv_type(g, 24), VLM_GGUF_TYPE_COUNT);

    // numeric arrays
    const void *data = NULL;
    uint64_t n = 0;
    assert_int_equal(vlm_gguf_get_array(g, "test.arr_i32", VLM_GGUF_TYPE_INT32, &data, &n, &d), 0);
    assert_int_equal(n, 5);
    int32_t want_i32[5] = {1, -2, 3, -4, 5};
    for (int i = 0; i < 5; i++) {
        int32_t v;
        memcpy(&v, (const char *)data + 4 * i, 4);
        assert_int_equal(v, want_i32[i]);
    }
    assert_int_equal(vlm_gguf_get_array(g, "test.arr_i32", VLM_GGUF_TYPE_UINT32, &data, &n, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "expected ARRAY of UINT32"));
    assert_int_equal(vlm_gguf_get_array(g, "test.u8", VLM_GGUF_TYPE_UINT8, &data, &n, &d), VLM_EBADMODEL);
    assert_int_equal(vlm_gguf_get_array(g, "test.arr_u8", VLM_GGUF_TYPE_UINT8, &data, &n, &d), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(data, "\x00\x01\xff", 3);
    assert_int_equal(vlm_gguf_get_array(g, "test.arr_f32", VLM_GGUF_TYPE_FLOAT32, &data, &n, &d), 0);
    assert_int_equal(n, 3);
    assert_true(ld_f32(data, 0) == 0.5f && ld_f32(data, 1) == -1.25f && ld_f32(data, 2) == 1e10f);
    assert_int_equal(vlm_gguf_get_array(g, "test.arr_empty", VLM_GGUF_TYPE_INT32, &data, &n, &d), 0);
    assert_int_equal(n, 0);

    int64_t ki = vlm_gguf_find_key(g, "test.arr_f64");
    enum vlm_gguf_type et = VLM_GGUF_TYPE_COUNT;
    assert_int_equal(vlm_gguf_kv_array(g, ki, &et, &n), 0);
    assert_int_equal(et, VLM_GGUF_TYPE_FLOAT64);
    assert_int_equal(n, 2);
    double num = 0;
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 0, &num), 0);
    assert_true(num == 0.1);
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 1, &num), 0);
    assert_true(num == -2.5);
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 2, &num), VLM_EINVAL);
    ki = vlm_gguf_find_key(g, "test.arr_u64");
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 1, &num), 0);
    assert_true(num == 18446744073709551615.0);
    ki = vlm_gguf_find_key(g, "test.arr_i32");
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 3, &num), 0);
    assert_true(num == -4.0);
    ki = vlm_gguf_find_key(g, "test.arr_bool");
    assert_int_equal(vlm_gguf_kv_array(g, ki, &et, &n), 0);
    assert_int_equal(et, VLM_GGUF_TYPE_BOOL);
    assert_int_equal(n, 3);
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 1, &num), 0);
    assert_true(num == 0.0);
    assert_int_equal(vlm_gguf_array_get_num(g, ki, 2, &num), 0);
    assert_true(num == 1.0);
    assert_int_equal(vlm_gguf_kv_array(g, vlm_gguf_find_key(g, "test.u8"), &et, &n), VLM_EINVAL);

    // string arrays
    int64_t si = -1;
    assert_int_equal(vlm_gguf_get_str_array(g, "test.arr_str", &si, &n, &d), 0);
    assert_int_equal(n, 4);
    assert_true(str_eq(vlm_gguf_array_str(g, si, 0), "a"));
    assert_int_equal(vlm_gguf_array_str(g, si, 1).len, 0);
    assert_non_null(vlm_gguf_array_str(g, si, 1).ptr);
    assert_true(str_eq(vlm_gguf_array_str(g, si, 2), "hello world"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 3), "\xe2\x98\x83"));
    assert_null(vlm_gguf_array_str(g, si, 4).ptr);
    assert_null(vlm_gguf_array_str(g, vlm_gguf_find_key(g, "test.arr_i32"), 0).ptr);
    assert_int_equal(vlm_gguf_array_get_num(g, si, 0, &num), VLM_EINVAL);
    assert_int_equal(vlm_gguf_get_str_array(g, "test.arr_i32", &si, &n, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "key 'test.arr_i32' has type ARRAY of INT32, expected ARRAY of STRING"));
}

struct want_tensor {
    const char *name;
    enum vlm_type type;
    uint32_t n_dims;
    int64_t ne[4];
    size_t size;
};

static void check_all_types_tensors(const struct vlm_gguf *g, const uint8_t *file) {
    static const struct want_tensor want[] = {
        {"f32_vec", VLM_TYPE_F32, 1, {10, 1, 1, 1}, 40},    {"f16_mat", VLM_TYPE_F16, 2, {8, 3, 1, 1}, 48},
        {"q8_0_mat", VLM_TYPE_Q8_0, 2, {64, 2, 1, 1}, 136}, {"i32_vec", VLM_TYPE_I32, 1, {7, 1, 1, 1}, 28},
        {"t3d", VLM_TYPE_F32, 3, {4, 3, 2, 1}, 96},         {"t4d", VLM_TYPE_F32, 4, {5, 3, 1, 2}, 120},
    };
    assert_int_equal(vlm_gguf_tensor_count(g), 6);
    uint64_t off = 0;
    const uint8_t *data0 = vlm_gguf_tensor_at(g, 0)->data;
    for (int i = 0; i < 6; i++) {
        const struct vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, i);
        assert_non_null(t);
        assert_ptr_equal(vlm_gguf_find_tensor(g, want[i].name), t);
        assert_string_equal(t->name, want[i].name);
        assert_int_equal(t->type, want[i].type);
        assert_int_equal(t->n_dims, want[i].n_dims);
        for (int k = 0; k < 4; k++) {
            assert_int_equal(t->ne[k], want[i].ne[k]);
        }
        assert_int_equal(t->size, want[i].size);
        assert_int_equal(t->offset, off);
        assert_ptr_equal(t->data, data0 + off);
        off += (want[i].size + 63) / 64 * 64;
    }
    assert_null(vlm_gguf_tensor_at(g, 6));
    assert_null(vlm_gguf_tensor_at(g, -1));
    assert_null(vlm_gguf_find_tensor(g, "t3"));
    assert_null(vlm_gguf_find_tensor(g, "missing"));
    if (file) {
        // the data section starts at a multiple of the alignment, after the tensor table
        size_t start = (size_t)(data0 - file);
        assert_int_equal(start % 64, 0);
        assert_true(start > 24 && start + off <= vlm_gguf_file_size(g) + 63);
    }

    const struct vlm_gguf_tensor *t = vlm_gguf_find_tensor(g, "f32_vec");
    for (int i = 0; i < 10; i++) {
        assert_true(ld_f32(t->data, (size_t)i) == (float)i * 0.25f - 1.0f);
    }
    t = vlm_gguf_find_tensor(g, "f16_mat");
    for (int i = 0; i < 24; i++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        assert_true(vlm_fp16_to_fp32(h) == (float)(i - 12) * 0.5f);
    }
    t = vlm_gguf_find_tensor(g, "q8_0_mat");
    const uint8_t *q = t->data;
    for (int b = 0; b < 4; b++) {
        uint16_t h;
        memcpy(&h, q + 34 * b, 2);
        assert_true(vlm_fp16_to_fp32(h) == 0.5f);
        for (int j = 0; j < 32; j++) {
            assert_int_equal((int8_t)q[34 * b + 2 + j], (b * 32 + j) % 256 - 128);
        }
    }
    t = vlm_gguf_find_tensor(g, "i32_vec");
    for (int i = 0; i < 7; i++) {
        int32_t v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        assert_int_equal(v, i * 1000);
    }
    t = vlm_gguf_find_tensor(g, "t3d");
    for (int i = 0; i < 24; i++) {
        assert_true(ld_f32(t->data, (size_t)i) == (float)i);
    }
    t = vlm_gguf_find_tensor(g, "t4d");
    for (int i = 0; i < 30; i++) {
        assert_true(ld_f32(t->data, (size_t)i) == -(float)i);
    }
}

static void test_all_types_file(void **state) {
    (void)state;
    struct vlm_gguf *g = open_ok("all-types.gguf");
    check_all_types_kv(g);
    check_all_types_tensors(g, NULL);
    vlm_gguf_close(g);
}

static void test_all_types_buffer(void **state) {
    (void)state;
    char path[512];
    data_path(path, sizeof path, "all-types.gguf");
    size_t size;
    char *buf = vlm_test_read_file(path, &size);
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_open_buffer(buf, size, "mem.gguf", &g, &d), 0);
    assert_string_equal(vlm_gguf_path(g), "mem.gguf");
    assert_int_equal(vlm_gguf_file_size(g), size);
    check_all_types_kv(g);
    check_all_types_tensors(g, (const uint8_t *)buf);
    vlm_gguf_close(g);
    free(buf);
}

// ---- other valid files ---------------------------------------------------------------------------------------

static void test_v2(void **state) {
    (void)state;
    struct vlm_gguf *g = open_ok("v2.gguf");
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_version(g), 2);
    assert_int_equal(vlm_gguf_alignment(g), 32);
    assert_int_equal(vlm_gguf_kv_count(g), 3);
    struct vlm_gguf_str s;
    assert_int_equal(vlm_gguf_get_str(g, "general.architecture", &s, &d), 0);
    assert_true(str_eq(s, "v2test"));
    assert_int_equal(get_int(g, "v2.count"), 7);
    int64_t si;
    uint64_t n;
    assert_int_equal(vlm_gguf_get_str_array(g, "v2.names", &si, &n, &d), 0);
    assert_int_equal(n, 2);
    assert_true(str_eq(vlm_gguf_array_str(g, si, 0), "x"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 1), "yz"));
    assert_int_equal(vlm_gguf_tensor_count(g), 2);
    const struct vlm_gguf_tensor *a = vlm_gguf_find_tensor(g, "a"), *b = vlm_gguf_find_tensor(g, "b");
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->type, VLM_TYPE_F32);
    assert_int_equal(a->offset, 0);
    assert_int_equal(a->size, 16);
    assert_int_equal(b->type, VLM_TYPE_F16);
    assert_int_equal(b->n_dims, 2);
    assert_int_equal(b->ne[0], 2);
    assert_int_equal(b->ne[1], 2);
    assert_int_equal(b->offset, 32);
    assert_int_equal(b->size, 8);
    for (int i = 0; i < 4; i++) {
        assert_true(ld_f32(a->data, (size_t)i) == (float)(i + 1));
    }
    static const float bw[4] = {0.5f, -0.5f, 2.0f, -2.0f};
    for (int i = 0; i < 4; i++) {
        uint16_t h;
        memcpy(&h, (const char *)b->data + 2 * i, 2);
        assert_true(vlm_fp16_to_fp32(h) == bw[i]);
    }
    vlm_gguf_close(g);
}

static void test_kv_only(void **state) {
    (void)state;
    struct vlm_gguf *g = open_ok("kv-only.gguf");
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_tensor_count(g), 0);
    assert_int_equal(vlm_gguf_kv_count(g), 3);
    int64_t si;
    uint64_t n;
    assert_int_equal(vlm_gguf_get_str_array(g, "kv.tokens", &si, &n, &d), 0);
    assert_int_equal(n, 4);
    assert_true(str_eq(vlm_gguf_array_str(g, si, 0), "<unk>"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 3), "\xe2\x96\x81the"));
    const void *data;
    assert_int_equal(vlm_gguf_get_array(g, "kv.scores", VLM_GGUF_TYPE_FLOAT32, &data, &n, &d), 0);
    assert_int_equal(n, 4);
    assert_true(ld_f32(data, 3) == -3.5f);
    vlm_gguf_close(g);
}

static void test_zero_size_tensors(void **state) {
    (void)state;
    struct vlm_gguf *g = open_ok("zero-size.gguf");
    assert_int_equal(vlm_gguf_tensor_count(g), 3);
    const struct vlm_gguf_tensor *e = vlm_gguf_find_tensor(g, "empty_rows");
    const struct vlm_gguf_tensor *q = vlm_gguf_find_tensor(g, "empty_q8");
    const struct vlm_gguf_tensor *a = vlm_gguf_find_tensor(g, "after");
    assert_non_null(e);
    assert_non_null(q);
    assert_non_null(a);
    assert_int_equal(e->size, 0);
    assert_int_equal(e->ne[0], 0);
    assert_int_equal(e->ne[1], 5);
    assert_int_equal(q->size, 0);
    assert_int_equal(q->n_dims, 3);
    assert_int_equal(a->offset, 0);
    assert_int_equal(a->size, 16);
    assert_true(ld_f32(a->data, 0) == 9.0f && ld_f32(a->data, 3) == 6.0f);
    vlm_gguf_close(g);
}

// llama.cpp's SentencePiece vocab file, copied into tests/data/vocab/ by the tokenizer's tests.
static void test_llama_vocab(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", VLM_TEST_DATA_DIR);
    struct stat st;
    if (stat(path, &st) != 0) {
        print_message("%s not present\n", path);
        skip();
    }
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_open(path, &g, &d), 0);
    assert_int_equal(vlm_gguf_version(g), 3);
    assert_int_equal(vlm_gguf_kv_count(g), 22);
    assert_int_equal(vlm_gguf_tensor_count(g), 0);
    assert_int_equal(vlm_gguf_file_size(g), 723869);
    struct vlm_gguf_str s;
    assert_int_equal(vlm_gguf_get_str(g, "tokenizer.ggml.model", &s, &d), 0);
    assert_true(str_eq(s, "llama"));
    assert_int_equal(get_int(g, "llama.block_count"), 32);
    assert_int_equal(get_int(g, "tokenizer.ggml.bos_token_id"), 1);
    assert_true(fabs(get_float(g, "llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-9);
    bool b = false;
    assert_int_equal(vlm_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, &d), 0);
    assert_true(b);
    int64_t si;
    uint64_t n;
    assert_int_equal(vlm_gguf_get_str_array(g, "tokenizer.ggml.tokens", &si, &n, &d), 0);
    assert_int_equal(n, 32000);
    assert_true(str_eq(vlm_gguf_array_str(g, si, 0), "<unk>"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 1), "<s>"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 2), "</s>"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 3), "<0x00>"));
    assert_true(str_eq(vlm_gguf_array_str(g, si, 31999), "\xe7\xbb\x99"));
    const void *data;
    assert_int_equal(vlm_gguf_get_array(g, "tokenizer.ggml.scores", VLM_GGUF_TYPE_FLOAT32, &data, &n, &d), 0);
    assert_int_equal(n, 32000);
    assert_int_equal(vlm_gguf_get_array(g, "tokenizer.ggml.token_type", VLM_GGUF_TYPE_INT32, &data, &n, &d), 0);
    assert_int_equal(n, 32000);
    vlm_gguf_close(g);
}

// ---- corrupt corpus ------------------------------------------------------------------------------------------

static void expect_fail_file(const char *path, const char *want) {
    struct vlm_gguf *g = (struct vlm_gguf *)&g; // must stay untouched on failure
    struct vlm_diag d = {0};
    int rc = vlm_gguf_open(path, &g, &d);
    if (rc != VLM_EBADMODEL || !strstr(d.msg, want) || !strstr(d.msg, path)) {
        fail_msg("%s: rc %d (%s), message \"%s\", expected EBADMODEL with \"%s\"", path, rc, vlm_err_name(rc), d.msg,
                 want);
    }
    assert_ptr_equal(g, (struct vlm_gguf *)&g);
}

static void expect_fail_buffer(const char *path, const char *name, const char *want) {
    size_t size;
    char *buf = vlm_test_read_file(path, &size);
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    int rc = vlm_gguf_open_buffer(buf, size, name, &g, &d);
    if (rc != VLM_EBADMODEL || !strstr(d.msg, want) || strncmp(d.msg, name, strlen(name)) != 0) {
        fail_msg("%s (buffer): rc %d (%s), message \"%s\", expected EBADMODEL with \"%s\"", name, rc, vlm_err_name(rc),
                 d.msg, want);
    }
    assert_null(g);
    free(buf);
}

static void test_corrupt_corpus(void **state) {
    (void)state;
    char path[512];
    data_path(path, sizeof path, "corrupt/MANIFEST");
    char *manifest = vlm_test_read_file(path, NULL);
    int count = 0;
    for (char *line = manifest, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) {
            *next++ = 0;
        }
        char *tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = 0;
        const char *want = tab + 1;
        assert_true(strlen(want) > 0);
        char rel[256];
        snprintf(rel, sizeof rel, "corrupt/%s", line);
        data_path(path, sizeof path, rel);
        expect_fail_file(path, want);
        expect_fail_buffer(path, line, want);
        count++;
    }
    print_message("%d corrupt files rejected with the expected messages\n", count);
    assert_true(count >= 40);
    free(manifest);
}

static void test_open_errors(void **state) {
    (void)state;
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_open(GGUF_DIR, &g, &d), VLM_EINVAL);
    assert_non_null(strstr(d.msg, "is a directory"));
    assert_non_null(strstr(d.msg, GGUF_DIR));
    assert_int_equal(vlm_gguf_open(GGUF_DIR "/does-not-exist.gguf", &g, &d), VLM_ENOENT);
    assert_non_null(strstr(d.msg, "does-not-exist.gguf: cannot open"));
    assert_int_equal(vlm_gguf_open("/dev/null", &g, &d), VLM_EINVAL);
    assert_non_null(strstr(d.msg, "/dev/null: not a regular file"));
    assert_null(g);
    assert_int_equal(vlm_gguf_open_buffer(NULL, 10, "x", &g, &d), VLM_EINVAL);
    assert_int_equal(vlm_gguf_open_buffer(NULL, 0, "x.gguf", &g, &d), VLM_EBADMODEL);
    assert_string_equal(d.msg, "x.gguf: file is empty");
    assert_null(g);
}

// ---- caps that need more bytes than a committed fixture should hold ------------------------------------------

static size_t put_u32(uint8_t *p, uint32_t v) {
    memcpy(p, &v, 4);
    return 4;
}

static size_t put_u64(uint8_t *p, uint64_t v) {
    memcpy(p, &v, 8);
    return 8;
}

static size_t put_header(uint8_t *p, int64_t n_tensors, int64_t n_kv) {
    memcpy(p, "GGUF", 4);
    put_u32(p + 4, 3);
    put_u64(p + 8, (uint64_t)n_tensors);
    put_u64(p + 16, (uint64_t)n_kv);
    return 24;
}

static void test_size_caps(void **state) {
    (void)state;
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    // a 16 MiB + 1 string value: present in the buffer, refused by the cap
    size_t slen = (16u << 20) + 1, size = 24 + 8 + 1 + 4 + 8 + slen;
    uint8_t *buf = calloc(1, size);
    assert_non_null(buf);
    size_t o = put_header(buf, 0, 1);
    o += put_u64(buf + o, 1);
    buf[o++] = 'k';
    o += put_u32(buf + o, VLM_GGUF_TYPE_STRING);
    o += put_u64(buf + o, slen);
    assert_int_equal(o + slen, size);
    assert_int_equal(vlm_gguf_open_buffer(buf, size, "big.gguf", &g, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "value of key 'k': string length 16777217 exceeds the limit"));
    // exactly 16 MiB is fine
    put_u64(buf + o - 8, slen - 1);
    assert_int_equal(vlm_gguf_open_buffer(buf, size - 1, "big.gguf", &g, &d), 0);
    struct vlm_gguf_str s;
    assert_int_equal(vlm_gguf_get_str(g, "k", &s, &d), 0);
    assert_int_equal(s.len, 16u << 20);
    vlm_gguf_close(g);
    free(buf);

    // 2^26 + 1 UINT8 array elements
    uint64_t n = (UINT64_C(1) << 26) + 1;
    size = 24 + 8 + 1 + 4 + 4 + 8 + (size_t)n;
    buf = calloc(1, size);
    assert_non_null(buf);
    o = put_header(buf, 0, 1);
    o += put_u64(buf + o, 1);
    buf[o++] = 'a';
    o += put_u32(buf + o, VLM_GGUF_TYPE_ARRAY);
    o += put_u32(buf + o, VLM_GGUF_TYPE_UINT8);
    o += put_u64(buf + o, n);
    g = NULL;
    assert_int_equal(vlm_gguf_open_buffer(buf, size, "arr.gguf", &g, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "key 'a': array of 67108865 elements exceeds the limit"));
    assert_null(g);
    free(buf);
}

// Many keys: exercises the hash index (and its duplicate detection) well past a handful of entries.
static void test_many_keys(void **state) {
    (void)state;
    enum { N = 5000 };
    size_t cap = 24 + (size_t)N * (8 + 16 + 4 + 4);
    uint8_t *buf = calloc(1, cap);
    assert_non_null(buf);
    size_t o = put_header(buf, 0, N);
    for (int i = 0; i < N; i++) {
        char key[17];
        snprintf(key, sizeof key, "key.%012d", i);
        o += put_u64(buf + o, 16);
        memcpy(buf + o, key, 16);
        o += 16;
        o += put_u32(buf + o, VLM_GGUF_TYPE_INT32);
        o += put_u32(buf + o, (uint32_t)(i * 3));
    }
    struct vlm_gguf *g = NULL;
    struct vlm_diag d = {0};
    assert_int_equal(vlm_gguf_open_buffer(buf, o, "many.gguf", &g, &d), 0);
    for (int i = 0; i < N; i += 7) {
        char key[17];
        snprintf(key, sizeof key, "key.%012d", i);
        assert_int_equal(vlm_gguf_find_key(g, key), i);
        assert_int_equal(get_int(g, key), i * 3);
    }
    vlm_gguf_close(g);
    // make the last key a duplicate of key 1234
    memcpy(buf + o - 4 - 4 - 16, "key.000000001234", 16); // key, type, value
    assert_int_equal(vlm_gguf_open_buffer(buf, o, "many.gguf", &g, &d), VLM_EBADMODEL);
    assert_non_null(strstr(d.msg, "duplicate key 'key.000000001234'"));
    free(buf);
}

// ---- mutation sweep ------------------------------------------------------------------------------------------

static void assert_inside(const void *p, size_t n, const uint8_t *buf, size_t size) {
    const uint8_t *q = p;
    assert_true(q >= buf && q <= buf + size && n <= (size_t)(buf + size - q));
}

// Touches everything a reader exposes; pointers must lie inside the buffer.
static uint64_t walk(const struct vlm_gguf *g, const uint8_t *buf, size_t size) {
    uint64_t h = 0;
    for (int64_t i = 0; i < vlm_gguf_kv_count(g); i++) {
        const char *key = vlm_gguf_kv_key(g, i);
        assert_non_null(key);
        assert_int_equal(vlm_gguf_find_key(g, key), i);
        enum vlm_gguf_type t = vlm_gguf_kv_type(g, i);
        int64_t iv;
        double fv;
        bool bv;
        struct vlm_gguf_str s;
        h += (uint64_t)vlm_gguf_get_int(g, key, &iv, NULL);
        h += (uint64_t)vlm_gguf_get_float(g, key, &fv, NULL);
        h += (uint64_t)vlm_gguf_get_bool(g, key, &bv, NULL);
        if (vlm_gguf_get_str(g, key, &s, NULL) == 0) {
            assert_inside(s.ptr, s.len, buf, size);
        }
        enum vlm_gguf_type et;
        uint64_t n;
        if (t == VLM_GGUF_TYPE_ARRAY) {
            assert_int_equal(vlm_gguf_kv_array(g, i, &et, &n), 0);
            for (uint64_t k = 0; k < n && k < 4096; k++) {
                if (et == VLM_GGUF_TYPE_STRING) {
                    s = vlm_gguf_array_str(g, i, k);
                    assert_non_null(s.ptr);
                    assert_inside(s.ptr, s.len, buf, size);
                    h += s.len;
                } else {
                    assert_int_equal(vlm_gguf_array_get_num(g, i, k, &fv), 0);
                }
            }
            const void *data;
            if (et != VLM_GGUF_TYPE_STRING && vlm_gguf_get_array(g, key, et, &data, &n, NULL) == 0 && n > 0) {
                assert_inside(data, 1, buf, size);
            }
        }
    }
    for (int64_t i = 0; i < vlm_gguf_tensor_count(g); i++) {
        const struct vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, i);
        assert_ptr_equal(vlm_gguf_find_tensor(g, t->name), t);
        assert_true(t->n_dims >= 1 && t->n_dims <= 4);
        assert_inside(t->data, t->size, buf, size);
        if (t->size > 0) {
            h += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->size - 1];
        }
    }
    return h;
}

static void mutate_file(const char *rel, int variants, uint64_t seed) {
    char path[512];
    data_path(path, sizeof path, rel);
    size_t size;
    uint8_t *orig = (uint8_t *)vlm_test_read_file(path, &size);
    uint8_t *buf = malloc(size);
    assert_non_null(buf);
    int ok = 0, bad = 0;
    uint64_t sink = 0;
    static const uint64_t interesting[] = {0,
                                           1,
                                           0x7f,
                                           0xff,
                                           0xffff,
                                           0x7fffffff,
                                           0x80000000u,
                                           0xffffffffu,
                                           UINT64_C(1) << 32,
                                           UINT64_C(1) << 62,
                                           UINT64_C(1) << 63,
                                           UINT64_MAX};
    for (int v = 0; v < variants; v++) {
        memcpy(buf, orig, size);
        size_t len = size;
        uint64_t r = vlm_test_rand_u64(&seed);
        switch (r % 4) {
        case 0: // flip 1..4 random bytes
            for (int k = 0; k < 1 + (int)((r >> 8) % 4); k++) {
                buf[vlm_test_rand_u64(&seed) % size] ^= (uint8_t)(1 + vlm_test_rand_u64(&seed) % 255);
            }
            break;
        case 1: { // an interesting 32- or 64-bit value at a random offset (lengths, counts, types, dims)
            uint64_t x = interesting[(r >> 8) % (sizeof interesting / sizeof interesting[0])];
            size_t w = (r >> 16) & 1 ? 8 : 4, at = vlm_test_rand_u64(&seed) % (size - w);
            memcpy(buf + at, &x, w);
            break;
        }
        case 2: // truncate
            len = vlm_test_rand_u64(&seed) % size;
            break;
        default: // small increment of a byte in the metadata area (off-by-one lengths)
            buf[vlm_test_rand_u64(&seed) % (size < 1024 ? size : 1024)] += (uint8_t)((r >> 8) & 1 ? 1 : 0xff);
            break;
        }
        // copy to an exact-size allocation so ASan catches a read one byte past the end
        uint8_t *exact = malloc(len ? len : 1);
        assert_non_null(exact);
        memcpy(exact, buf, len);
        struct vlm_gguf *g = NULL;
        struct vlm_diag d = {0};
        int rc = vlm_gguf_open_buffer(exact, len, "mut.gguf", &g, &d);
        if (rc == 0) {
            sink += walk(g, exact, len);
            vlm_gguf_close(g);
            ok++;
        } else {
            if (rc != VLM_EBADMODEL || strncmp(d.msg, "mut.gguf: ", 10) != 0) {
                fail_msg("variant %d: rc %d, message \"%s\"", v, rc, d.msg);
            }
            assert_null(g);
            bad++;
        }
        free(exact);
    }
    print_message("%s: %d variants, %d opened, %d rejected (checksum %llu)\n", rel, variants, ok, bad,
                  (unsigned long long)sink);
    assert_true(bad > variants / 4); // the sweep really corrupted things
    free(buf);
    free(orig);
}

static void test_mutations(void **state) {
    (void)state;
    mutate_file("all-types.gguf", 20000, 0x9e3779b97f4a7c15ull);
    mutate_file("v2.gguf", 5000, 42);
    mutate_file("kv-only.gguf", 3000, 7);
    mutate_file("zero-size.gguf", 2000, 99);
}

// Every strict prefix that cuts into tensor data or metadata must fail; no prefix may crash.
static void test_every_truncation(void **state) {
    (void)state;
    char path[512];
    data_path(path, sizeof path, "all-types.gguf");
    size_t size;
    uint8_t *orig = (uint8_t *)vlm_test_read_file(path, &size);
    struct vlm_gguf *g = NULL;
    assert_int_equal(vlm_gguf_open_buffer(orig, size, "t.gguf", &g, NULL), 0);
    const struct vlm_gguf_tensor *last = vlm_gguf_tensor_at(g, vlm_gguf_tensor_count(g) - 1);
    size_t data_end = (size_t)((const uint8_t *)last->data - orig) + last->size;
    vlm_gguf_close(g);
    for (size_t len = 0; len < size; len++) {
        uint8_t *exact = malloc(len ? len : 1);
        assert_non_null(exact);
        memcpy(exact, orig, len);
        g = NULL;
        int rc = vlm_gguf_open_buffer(exact, len, "t.gguf", &g, NULL);
        if (len < data_end) {
            if (rc != VLM_EBADMODEL) {
                fail_msg("prefix of %zu bytes (data ends at %zu): rc %d", len, data_end, rc);
            }
        } else {
            assert_int_equal(rc, 0);
            vlm_gguf_close(g);
        }
        free(exact);
    }
    free(orig);
}

static void test_type_names(void **state) {
    (void)state;
    assert_string_equal(vlm_gguf_type_name(VLM_GGUF_TYPE_UINT8), "UINT8");
    assert_string_equal(vlm_gguf_type_name(VLM_GGUF_TYPE_FLOAT64), "FLOAT64");
    assert_string_equal(vlm_gguf_type_name(VLM_GGUF_TYPE_ARRAY), "ARRAY");
    assert_string_equal(vlm_gguf_type_name(VLM_GGUF_TYPE_COUNT), "?");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_types_file),
        cmocka_unit_test(test_all_types_buffer),
        cmocka_unit_test(test_v2),
        cmocka_unit_test(test_kv_only),
        cmocka_unit_test(test_zero_size_tensors),
        cmocka_unit_test(test_llama_vocab),
        cmocka_unit_test(test_corrupt_corpus),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_size_caps),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_type_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
