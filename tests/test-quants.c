// Type table and reference converters: dequantizers against gguf-py's golden vectors (tests/data/quants, made by
// tools/make_quant_vectors.py), quantizers byte-for-byte against gguf-py's quantize, and properties of the
// activation quantizers gguf-py lacks (Q8_1, Q8_K).
#include "test-util.h"

#include <math.h>
#include <string.h>

#include "kernels/cpu/quant-ref.h"
#include "kernels/cpu/quants.h"
#include "vlm/types.h"

struct golden {
    char *buf;
    uint32_t type;
    uint32_t n;
    float *input; // NULL when gguf-py could not quantize the type (K-quants: random blocks)
    const uint8_t *blocks;
    size_t nbytes;
    float *expected;
};

static void golden_load(const char *name, struct golden *g) {
    char path[512];
    snprintf(path, sizeof path, "%s/quants/%s.bin", VLM_TEST_DATA_DIR, name);
    size_t size;
    g->buf = vlm_test_read_file(path, &size);
    assert_true(size >= 16);
    uint32_t hdr[4];
    memcpy(hdr, g->buf, sizeof hdr);
    assert_int_equal(hdr[0], 0x31565156u);
    g->type = hdr[1];
    g->n = hdr[2];
    assert_string_equal(vlm_type_name((int)g->type), name);
    g->nbytes = vlm_row_size((enum vlm_type)g->type, g->n);
    assert_true(g->nbytes > 0);
    size_t off = 16;
    g->input = NULL;
    g->expected = NULL;
    // sections are copied out: after odd-sized block data they are not float-aligned in the file
    const size_t fbytes = (size_t)g->n * sizeof(float);
    if (hdr[3]) {
        assert_true(off + fbytes <= size);
        g->input = malloc(fbytes);
        assert_non_null(g->input);
        memcpy(g->input, g->buf + off, fbytes);
        off += fbytes;
    }
    g->blocks = (const uint8_t *)(g->buf + off);
    off += g->nbytes;
    assert_int_equal(off + fbytes, size); // also checks our row size against gguf-py's block geometry
    g->expected = malloc(fbytes);
    assert_non_null(g->expected);
    memcpy(g->expected, g->buf + off, fbytes);
}

static bool same_float(float a, float b) {
    if (isnan(a) || isnan(b)) {
        return isnan(a) && isnan(b);
    }
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    return ua == ub;
}

static void check_golden(const char *name) {
    struct golden g;
    golden_load(name, &g);
    const struct vlm_type_traits *t = vlm_type_traits((int)g.type);
    assert_non_null(t->to_float);

    float *out = malloc((size_t)g.n * sizeof(float));
    assert_non_null(out);
    t->to_float(g.blocks, out, g.n);
    int bad = 0;
    for (uint32_t i = 0; i < g.n; i++) {
        if (!same_float(out[i], g.expected[i])) {
            if (bad++ < 5) {
                print_message("%s: element %u: got %.9g expected %.9g\n", name, i, (double)out[i],
                              (double)g.expected[i]);
            }
        }
    }
    assert_int_equal(bad, 0);

    if (g.input) {
        assert_non_null(t->from_float);
        uint8_t *q = malloc(g.nbytes);
        assert_non_null(q);
        t->from_float(g.input, q, g.n);
        size_t diff = 0;
        for (size_t i = 0; i < g.nbytes; i++) {
            if (q[i] != g.blocks[i] && diff++ < 5) {
                print_message("%s: quantized byte %zu: got 0x%02x expected 0x%02x\n", name, i, q[i], g.blocks[i]);
            }
        }
        assert_int_equal(diff, 0);
        free(q);
    }
    free(out);
    free(g.input);
    free(g.expected);
    free(g.buf);
}

static void test_golden_f16(void **state) {
    (void)state;
    check_golden("F16");
}
static void test_golden_bf16(void **state) {
    (void)state;
    check_golden("BF16");
}
static void test_golden_q4_0(void **state) {
    (void)state;
    check_golden("Q4_0");
}
static void test_golden_q4_1(void **state) {
    (void)state;
    check_golden("Q4_1");
}
static void test_golden_q5_0(void **state) {
    (void)state;
    check_golden("Q5_0");
}
static void test_golden_q5_1(void **state) {
    (void)state;
    check_golden("Q5_1");
}
static void test_golden_q8_0(void **state) {
    (void)state;
    check_golden("Q8_0");
}
static void test_golden_q2_k(void **state) {
    (void)state;
    check_golden("Q2_K");
}
static void test_golden_q3_k(void **state) {
    (void)state;
    check_golden("Q3_K");
}
static void test_golden_q4_k(void **state) {
    (void)state;
    check_golden("Q4_K");
}
static void test_golden_q5_k(void **state) {
    (void)state;
    check_golden("Q5_K");
}
static void test_golden_q6_k(void **state) {
    (void)state;
    check_golden("Q6_K");
}

// Geometry of every ggml id, from ggml's type_traits table (gguf-llava.md §2 and gguf-py GGML_QUANT_SIZES;
// Q8_1 is 36 bytes in current ggml, gguf-py still lists the old 40).
static void test_type_table(void **state) {
    (void)state;
    static const struct {
        int id;
        const char *name;
        int64_t bs;
        size_t ts;
    } rows[] = {
        {0, "F32", 1, 4},         {1, "F16", 1, 2},        {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
        {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},     {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},
        {10, "Q2_K", 256, 84},    {11, "Q3_K", 256, 110},  {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
        {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},  {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
        {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},  {20, "IQ4_NL", 32, 18},  {21, "IQ3_S", 256, 110},
        {22, "IQ2_S", 256, 82},   {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},        {25, "I16", 1, 2},
        {26, "I32", 1, 4},        {27, "I64", 1, 8},       {28, "F64", 1, 8},       {29, "IQ1_M", 256, 56},
        {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},  {35, "TQ2_0", 256, 66},  {39, "MXFP4", 32, 17},
    };
    bool seen[VLM_TYPE_COUNT] = {false};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const struct vlm_type_traits *t = vlm_type_traits(rows[i].id);
        assert_true(t->known);
        assert_string_equal(t->name, rows[i].name);
        assert_string_equal(vlm_type_name(rows[i].id), rows[i].name);
        assert_int_equal(t->blck_size, rows[i].bs);
        assert_int_equal(t->type_size, rows[i].ts);
        assert_int_equal(vlm_row_size((enum vlm_type)rows[i].id, rows[i].bs * 7), rows[i].ts * 7);
        seen[rows[i].id] = true;
    }
    for (int id = -3; id < VLM_TYPE_COUNT + 3; id++) {
        if (id >= 0 && id < VLM_TYPE_COUNT && seen[id]) {
            continue;
        }
        const struct vlm_type_traits *t = vlm_type_traits(id);
        assert_non_null(t);
        assert_false(t->known);
        assert_null(t->name);
        assert_null(t->to_float);
        assert_string_equal(vlm_type_name(id), "?");
    }
    // what the CPU backend can run
    static const enum vlm_type supported[] = {VLM_TYPE_F32,  VLM_TYPE_F16,  VLM_TYPE_BF16, VLM_TYPE_Q4_0,
                                              VLM_TYPE_Q4_1, VLM_TYPE_Q5_0, VLM_TYPE_Q5_1, VLM_TYPE_Q8_0,
                                              VLM_TYPE_Q2_K, VLM_TYPE_Q3_K, VLM_TYPE_Q4_K, VLM_TYPE_Q5_K,
                                              VLM_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof supported / sizeof supported[0]; i++) {
        assert_true(vlm_type_is_supported(supported[i]));
    }
    assert_false(vlm_type_is_supported(VLM_TYPE_Q8_K)); // activation-only format
    assert_false(vlm_type_is_supported(VLM_TYPE_Q8_1));
    assert_false(vlm_type_is_supported(VLM_TYPE_I32));
    assert_false(vlm_type_is_supported((enum vlm_type)16));
}

// Every half round-trips through float; float -> half rounds to nearest even.
static void test_fp16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = vlm_fp16_to_fp32((uint16_t)h);
        const uint16_t back = vlm_fp32_to_fp16(f);
        if (isnan(f)) {
            assert_true((back & 0x7c00u) == 0x7c00u && (back & 0x3ffu) != 0);
        } else {
            assert_int_equal(back, h);
        }
        assert_true(same_float(vlm_bf16_to_fp32((uint16_t)h), vlm_bf16_to_fp32(vlm_fp32_to_bf16(vlm_bf16_to_fp32(
                                                                    (uint16_t)h)))));
    }
    assert_int_equal(vlm_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00); // tie -> even
    assert_int_equal(vlm_fp32_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
}

static void rand_row(float *x, int64_t n, uint64_t *seed, float scale) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = vlm_test_rand_f32(seed) * scale;
    }
}

// Q8_1: codes within half a step of x/d, s = d * sum(codes), and dequantization within d/2 of x.
static void test_q8_1_ref(void **state) {
    (void)state;
    enum { N = 32 * 9 };
    float x[N], y[N];
    struct vlm_block_q8_1 b[N / 32];
    uint64_t seed = 7;
    rand_row(x, N, &seed, 3.0f);
    for (int j = 0; j < 32; j++) {
        x[32 + j] = 0.0f; // all-zero block
    }
    vlm__quant_row_q8_1_ref(x, b, N);
    vlm__dequant_row_q8_1(b, y, N);
    for (int i = 0; i < N / 32; i++) {
        const float d = vlm_fp16_to_fp32(b[i].d);
        int sum = 0, amax = 0;
        for (int j = 0; j < 32; j++) {
            sum += b[i].qs[j];
            amax = abs(b[i].qs[j]) > amax ? abs(b[i].qs[j]) : amax;
            // half a step, plus 127 codes times the fp16 rounding of d (2^-11 relative)
            assert_true(fabsf(y[32 * i + j] - x[32 * i + j]) <= (0.5f + 127.0f * 0x1p-11f) * d * 1.001f + 1e-7f);
        }
        float xmax = 0.0f; // ggml scales the sum by the unrounded d
        for (int j = 0; j < 32; j++) {
            xmax = fmaxf(xmax, fabsf(x[32 * i + j]));
        }
        assert_int_equal(b[i].d, vlm_fp32_to_fp16(xmax / 127.0f));
        assert_int_equal(b[i].s, vlm_fp32_to_fp16((float)sum * (xmax / 127.0f)));
        assert_int_equal(amax, i == 1 ? 0 : 127);
    }
}

// Q8_K: the element of largest magnitude maps to -127, bsums are the sums of 16 codes, d = 1/iscale.
static void test_q8_k_ref(void **state) {
    (void)state;
    enum { N = 256 * 3 };
    float x[N], y[N];
    struct vlm_block_q8_k b[N / 256];
    uint64_t seed = 11;
    rand_row(x, N, &seed, 2.0f);
    memset(x + 256, 0, 256 * sizeof(float));
    x[512 + 5] = 4.0f; // tie on |x|: the first one (positive) decides the sign
    x[512 + 77] = -4.0f;
    vlm__quant_row_q8_k_ref(x, b, N);
    vlm__dequant_row_q8_k(b, y, N);
    assert_true(b[1].d == 0.0f);
    assert_int_equal(b[2].qs[5], -127);
    assert_int_equal(b[2].qs[77], 127);
    assert_true(b[2].d < 0.0f);
    for (int i = 0; i < N / 256; i++) {
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) {
                sum += b[i].qs[16 * g + l];
            }
            assert_int_equal(b[i].bsums[g], sum);
        }
        for (int j = 0; j < 256; j++) {
            assert_true(fabsf(y[256 * i + j] - x[256 * i + j]) <= 0.5f * fabsf(b[i].d) * 1.01f + 1e-7f);
        }
    }
}

// Round trips of the weight quantizers stay within their step sizes (catches a wrong nibble order that a
// golden file with a symmetric pattern might miss).
static void test_roundtrip_bounds(void **state) {
    (void)state;
    static const struct {
        enum vlm_type type;
        float steps; // max error in units of d
    } cases[] = {{VLM_TYPE_Q4_0, 1.0f}, {VLM_TYPE_Q4_1, 0.5f}, {VLM_TYPE_Q5_0, 1.0f},
                 {VLM_TYPE_Q5_1, 0.5f}, {VLM_TYPE_Q8_0, 0.5f}};
    enum { N = 32 * 16 };
    float x[N], y[N];
    uint8_t q[N * 2];
    uint64_t seed = 99;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct vlm_type_traits *t = vlm_type_traits(cases[c].type);
        rand_row(x, N, &seed, 5.0f);
        t->from_float(x, q, N);
        t->to_float(q, y, N);
        for (int i = 0; i < N; i++) {
            const uint16_t dbits = *(const uint16_t *)(q + (size_t)(i / 32) * t->type_size);
            const float d = fabsf(vlm_fp16_to_fp32(dbits));
            // the fp16 rounding of d and m adds up to 2^-11 of the block range (|x| < 5 here)
            const float tol = cases[c].steps * d * 1.01f + 0.01f;
            if (fabsf(y[i] - x[i]) > tol) {
                fail_msg("%s element %d: x %g -> %g (d %g)", t->name, i, (double)x[i], (double)y[i], (double)d);
            }
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),   cmocka_unit_test(test_fp16_exhaustive),
        cmocka_unit_test(test_golden_f16),   cmocka_unit_test(test_golden_bf16),
        cmocka_unit_test(test_golden_q4_0),  cmocka_unit_test(test_golden_q4_1),
        cmocka_unit_test(test_golden_q5_0),  cmocka_unit_test(test_golden_q5_1),
        cmocka_unit_test(test_golden_q8_0),  cmocka_unit_test(test_golden_q2_k),
        cmocka_unit_test(test_golden_q3_k),  cmocka_unit_test(test_golden_q4_k),
        cmocka_unit_test(test_golden_q5_k),  cmocka_unit_test(test_golden_q6_k),
        cmocka_unit_test(test_q8_1_ref),     cmocka_unit_test(test_q8_k_ref),
        cmocka_unit_test(test_roundtrip_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
