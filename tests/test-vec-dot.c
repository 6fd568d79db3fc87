// Dot-product kernels of every ISA path this CPU has, against the scalar path (the plain-C definition), and the
// scalar path against dequantize(w) . dequantize(x) in double. Also: SIMD activation quantizers byte-identical
// to the reference ones, odd sizes, unaligned buffers, and the multi-row (nx) kernels where a path has them.
//
// Bounds. Integer-accumulating quant dots compute the same integer per block on every path; only the order of
// the float accumulation of (integer x scale) differs, so |simd - scalar| <= 1e-5 * sum|w_i x_i| (n / 16 float
// adds of relative error 2^-24 each stay far below that for the sizes here). Float dots use the same bound.
//
// Run with --bench to print single-thread matvec and prefill throughput instead of testing (--bench nx [isa]:
// only prefill, on the best or the named path).
#include "test-util.h"

#include <math.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/quant-ref.h"
#include "kernels/cpu/quants.h"
#include "vlm/error.h"
#include "vlm/types.h"

static const enum vlm_type weight_types[] = {
    VLM_TYPE_F32,  VLM_TYPE_F16,  VLM_TYPE_BF16, VLM_TYPE_Q4_0, VLM_TYPE_Q4_1, VLM_TYPE_Q5_0, VLM_TYPE_Q5_1,
    VLM_TYPE_Q8_0, VLM_TYPE_Q2_K, VLM_TYPE_Q3_K, VLM_TYPE_Q4_K, VLM_TYPE_Q5_K, VLM_TYPE_Q6_K,
};
#define N_WEIGHT_TYPES (sizeof weight_types / sizeof weight_types[0])

// Fills a weight row of type t with valid data: quantized random floats, or (K-quants, which have no reference
// quantizer here) random bytes with finite, moderate fp16 scales.
static void make_weights(enum vlm_type t, void *dst, int64_t n, uint64_t *seed) {
    const struct vlm_type_traits *tt = vlm_type_traits((int)t);
    float *f = malloc((size_t)n * sizeof(float));
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++) {
        f[i] = vlm_test_rand_f32(seed) * (i % 7 == 0 ? 4.0f : 1.0f);
    }
    if (tt->from_float) {
        tt->from_float(f, dst, n);
        free(f);
        return;
    }
    free(f);
    const size_t nb = (size_t)(n / tt->blck_size);
    uint8_t *p = dst;
    for (size_t i = 0; i < nb * tt->type_size; i++) {
        p[i] = (uint8_t)vlm_test_rand_u64(seed);
    }
    size_t off[2] = {0, 0};
    int nf = 0;
    switch (t) {
    case VLM_TYPE_Q2_K:
        off[0] = offsetof(struct vlm_block_q2_k, d);
        off[1] = offsetof(struct vlm_block_q2_k, dmin);
        nf = 2;
        break;
    case VLM_TYPE_Q3_K:
        off[0] = offsetof(struct vlm_block_q3_k, d);
        nf = 1;
        break;
    case VLM_TYPE_Q4_K:
    case VLM_TYPE_Q5_K:
        off[0] = 0;
        off[1] = 2;
        nf = 2;
        break;
    case VLM_TYPE_Q6_K:
        off[0] = offsetof(struct vlm_block_q6_k, d);
        nf = 1;
        break;
    default:
        fail_msg("no generator for %s", tt->name);
    }
    for (size_t b = 0; b < nb; b++) {
        for (int k = 0; k < nf; k++) {
            const uint16_t h = vlm_fp32_to_fp16(vlm_test_rand_f32(seed) * 0.01f);
            memcpy(p + b * tt->type_size + off[k], &h, 2);
        }
    }
}

static size_t act_row_size(const struct vlm_cpu_type_traits *ct, int64_t n) {
    return vlm_row_size(ct->vec_dot_type, n);
}

// Activation row in the dot's format, made with the reference converter.
static void make_act(const struct vlm_cpu_type_traits *ct, const float *x, void *dst, int64_t n) {
    if (ct->vec_dot_type == VLM_TYPE_F32) {
        memcpy(dst, x, (size_t)n * sizeof(float));
    } else {
        vlm_type_traits((int)ct->vec_dot_type)->from_float(x, dst, n);
    }
}

// sum |w_i x_i| and sum w_i x_i in double, from the dequantized rows.
static void deq_dot(enum vlm_type wt, const void *w, enum vlm_type xt, const void *xq, int64_t n, double *abs_sum,
                    double *sum) {
    float *a = malloc((size_t)n * sizeof(float));
    float *b = malloc((size_t)n * sizeof(float));
    assert_non_null(a);
    assert_non_null(b);
    vlm_type_traits((int)wt)->to_float(w, a, n);
    vlm_type_traits((int)xt)->to_float(xq, b, n);
    double s = 0.0, sa = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)a[i] * (double)b[i];
        sa += fabs((double)a[i] * (double)b[i]);
    }
    *sum = s;
    *abs_sum = sa;
    free(a);
    free(b);
}

// For Q8_1 activations: sum over blocks of |m_w| * |s - d * sum(q)|, the part of the Q4_1/Q5_1 dot that
// comes from the fp16 rounding of the stored block sum rather than from the codes.
static double q8_1_sum_gap(enum vlm_type wt, const void *w, enum vlm_type xt, const void *xq, int64_t n) {
    if (xt != VLM_TYPE_Q8_1) {
        return 0.0;
    }
    const struct vlm_block_q8_1 *b = xq;
    const size_t wsz = vlm_type_traits((int)wt)->type_size;
    double gap = 0.0;
    for (int64_t i = 0; i < n / 32; i++) {
        uint16_t mbits; // m follows d in both Q4_1 and Q5_1
        memcpy(&mbits, (const uint8_t *)w + (size_t)i * wsz + 2, 2);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            sum += b[i].qs[j];
        }
        const double dx = (double)vlm_fp16_to_fp32(b[i].d) * sum;
        gap += fabs((double)vlm_fp16_to_fp32(mbits)) * fabs((double)vlm_fp16_to_fp32(b[i].s) - dx);
    }
    return gap * 1.01;
}

static void sizes_for(enum vlm_type t, int64_t *sizes, int *count) {
    const int64_t bs = vlm_type_traits((int)t)->blck_size;
    if (bs == 1) {
        static const int64_t fs[] = {1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300, 1000, 4099};
        *count = (int)(sizeof fs / sizeof fs[0]);
        memcpy(sizes, fs, sizeof fs);
    } else if (bs == 32) {
        static const int64_t nbs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33, 128};
        *count = (int)(sizeof nbs / sizeof nbs[0]);
        for (int i = 0; i < *count; i++) {
            sizes[i] = nbs[i] * 32;
        }
    } else {
        static const int64_t nbs[] = {1, 2, 3, 5, 16};
        *count = (int)(sizeof nbs / sizeof nbs[0]);
        for (int i = 0; i < *count; i++) {
            sizes[i] = nbs[i] * 256;
        }
    }
}

static int n_isas(void) {
    return (int)vlm__cpu_isa_best() + 1;
}

static void test_isa_control(void **state) {
    (void)state;
    const enum vlm_cpu_isa best = vlm__cpu_isa_best();
    print_message("best ISA: %s\n", vlm__cpu_isa_name(best));
    for (int isa = 0; isa <= (int)best; isa++) {
        assert_int_equal(vlm__cpu_isa_set((enum vlm_cpu_isa)isa), 0);
        assert_int_equal(vlm__cpu_isa_get(), isa);
        assert_ptr_equal(vlm__cpu_type_traits(VLM_TYPE_Q4_0), vlm__cpu_type_traits_isa(VLM_TYPE_Q4_0, isa));
    }
    if (best < VLM_CPU_ISA_AVX512) {
        assert_int_equal(vlm__cpu_isa_set(VLM_CPU_ISA_AVX512), VLM_EUNSUPPORTED);
    }
    assert_int_equal(vlm__cpu_isa_set((enum vlm_cpu_isa)7), VLM_EUNSUPPORTED);
    assert_int_equal(vlm__cpu_isa_get(), best);
    assert_string_equal(vlm__cpu_isa_name(VLM_CPU_ISA_SCALAR), "scalar");
    assert_string_equal(vlm__cpu_isa_name(VLM_CPU_ISA_AVX512), "avx512");
    // activation-only and integer formats have no compute traits on any path
    for (int isa = 0; isa <= (int)best; isa++) {
        assert_null(vlm__cpu_type_traits_isa(VLM_TYPE_Q8_K, isa));
        assert_null(vlm__cpu_type_traits_isa(VLM_TYPE_I32, isa));
    }
    assert_null(vlm__cpu_type_traits_isa(VLM_TYPE_F32, (enum vlm_cpu_isa)((int)best + 1)));
}

// Every path, every type, every size, several misalignments: SIMD vs scalar, and scalar vs dequantized math.
static void test_vec_dot_paths(void **state) {
    (void)state;
    uint64_t seed = 0x1234;
    enum { MAXN = 4099 + 256 };
    float *x = malloc(MAXN * sizeof(float));
    uint8_t *wbuf = malloc(MAXN * 4 + 128);
    uint8_t *xbuf = malloc(MAXN * 4 + 128);
    assert_non_null(x);
    assert_non_null(wbuf);
    assert_non_null(xbuf);
    int checked = 0;
    double worst = 0.0;
    for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const enum vlm_type t = weight_types[ti];
        const struct vlm_cpu_type_traits *ref = vlm__cpu_type_traits_isa(t, VLM_CPU_ISA_SCALAR);
        assert_non_null(ref);
        int64_t sizes[32];
        int ns;
        sizes_for(t, sizes, &ns);
        for (int si = 0; si < ns; si++) {
            const int64_t n = sizes[si];
            // misaligned for SIMD (any offset up to 63 that keeps the C element alignment: 4 for float and Q8_K
            // rows, 2 for fp16 and blocks with fp16 fields, as in a GGUF mapping)
            const int wal = t == VLM_TYPE_F32 ? 4 : 2;
            const int xal = (ref->vec_dot_type == VLM_TYPE_F32 || ref->vec_dot_type == VLM_TYPE_Q8_K) ? 4 : 2;
            const int woff = wal * (1 + (int)(vlm_test_rand_u64(&seed) % (uint64_t)(63 / wal)));
            const int xoff = xal * (1 + (int)(vlm_test_rand_u64(&seed) % (uint64_t)(63 / xal)));
            void *w = wbuf + woff;
            void *xq = xbuf + xoff;
            make_weights(t, w, n, &seed);
            for (int64_t i = 0; i < n; i++) {
                x[i] = vlm_test_rand_f32(&seed) * (i % 5 == 0 ? 3.0f : 1.0f);
            }
            make_act(ref, x, xq, n);

            float s_ref;
            ref->vec_dot(n, &s_ref, w, xq);
            double abs_sum, exact;
            const enum vlm_type xt = ref->vec_dot_type;
            deq_dot(t, w, xt, xq, n, &abs_sum, &exact);
            // scalar path vs the dequantized product: float rounding of per-block terms only, except that Q8_1's
            // stored s = fp16(d * sum(q)) stands in for the sum of the dequantized activations (as in ggml)
            const double extra = q8_1_sum_gap(t, w, xt, xq, n);
            if (fabs((double)s_ref - exact) > 1e-5 * abs_sum + extra + 1e-30) {
                fail_msg("%s n=%lld: scalar %.9g vs dequantized %.9g (sum|.| %.3g)", vlm_type_name((int)t),
                         (long long)n, (double)s_ref, exact, abs_sum);
            }
            // and vs the float activations: the gap is the activation quantization error, bounded by
            // sum |w_i| * |x_i - deq(xq)_i|
            {
                float *wd = malloc((size_t)n * sizeof(float));
                float *xd = malloc((size_t)n * sizeof(float));
                assert_non_null(wd);
                assert_non_null(xd);
                vlm_type_traits((int)t)->to_float(w, wd, n);
                vlm_type_traits((int)xt)->to_float(xq, xd, n);
                double fx = 0.0, bound = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    fx += (double)wd[i] * (double)x[i];
                    bound += fabs((double)wd[i]) * fabs((double)x[i] - (double)xd[i]);
                }
                if (fabs((double)s_ref - fx) > bound + 1e-5 * abs_sum + extra + 1e-30) {
                    fail_msg("%s n=%lld: scalar %.9g vs float-x %.9g, bound %.3g", vlm_type_name((int)t),
                             (long long)n, (double)s_ref, fx, bound);
                }
                free(wd);
                free(xd);
            }

            for (int isa = 1; isa < n_isas(); isa++) {
                const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits_isa(t, (enum vlm_cpu_isa)isa);
                assert_non_null(ct);
                assert_int_equal(ct->vec_dot_type, ref->vec_dot_type);
                // SIMD activation quantizer: byte-identical to the reference
                if (ct->from_float) {
                    uint8_t *xs = malloc(act_row_size(ct, n) + 64);
                    assert_non_null(xs);
                    ct->from_float(x, xs + 2 * xal, n);
                    if (memcmp(xs + 2 * xal, xq, act_row_size(ct, n)) != 0) {
                        fail_msg("%s: %s from_float differs from the reference (n=%lld)",
                                 vlm_type_name((int)ct->vec_dot_type), vlm__cpu_isa_name(isa), (long long)n);
                    }
                    free(xs);
                }
                float s;
                ct->vec_dot(n, &s, w, xq);
                const double err = fabs((double)s - (double)s_ref);
                const double tol = 1e-5 * abs_sum + 1e-30;
                if (err > tol) {
                    fail_msg("%s %s n=%lld: %.9g vs scalar %.9g (err %.3g, tol %.3g)", vlm_type_name((int)t),
                             vlm__cpu_isa_name(isa), (long long)n, (double)s, (double)s_ref, err, tol);
                }
                if (abs_sum > 0 && err / abs_sum > worst) {
                    worst = err / abs_sum;
                }
                checked++;
            }
        }
    }
    print_message("checked %d (type, size, isa) dots; worst |simd - scalar| / sum|w x| = %.3g\n", checked, worst);
    assert_true(checked > 0 || n_isas() == 1);
    free(x);
    free(wbuf);
    free(xbuf);
}

// Activation quantizers on inputs built to hit rounding ties, zeros, and extreme values.
static void test_from_float_edges(void **state) {
    (void)state;
    enum { N = 1024 };
    float *x = malloc(N * sizeof(float));
    assert_non_null(x);
    uint64_t seed = 77;
    for (int i = 0; i < N; i++) {
        x[i] = (float)((int)(vlm_test_rand_u64(&seed) % 255) - 127) * 0.5f; // many exact .5 ties
    }
    for (int b = 0; b < N / 32; b++) {
        x[32 * b + (b % 32)] = (b & 1) ? 127.0f : -127.0f; // amax 127 -> d = 1 (Q8_0/Q8_1), iscale = +-1 (Q8_K)
    }
    memset(x + 64, 0, 32 * sizeof(float)); // zero Q8_0 block
    memset(x + 512, 0, 256 * sizeof(float)); // zero Q8_K block
    x[300] = 1e-30f;
    x[301] = -1e30f;
    static const enum vlm_type acts[] = {VLM_TYPE_Q8_0, VLM_TYPE_Q8_1, VLM_TYPE_Q8_K, VLM_TYPE_BF16};
    static const enum vlm_type users[] = {VLM_TYPE_Q4_0, VLM_TYPE_Q4_1, VLM_TYPE_Q4_K, VLM_TYPE_BF16};
    uint8_t *a = malloc(N * 4);
    uint8_t *b = malloc(N * 4);
    assert_non_null(a);
    assert_non_null(b);
    for (size_t k = 0; k < sizeof acts / sizeof acts[0]; k++) {
        const size_t sz = vlm_row_size(acts[k], N);
        vlm_type_traits((int)acts[k])->from_float(x, a, N);
        for (int isa = 1; isa < n_isas(); isa++) {
            const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits_isa(users[k], (enum vlm_cpu_isa)isa);
            assert_non_null(ct);
            assert_int_equal(ct->vec_dot_type, acts[k]);
            memset(b, 0xa5, sz);
            ct->from_float(x, b, N);
            for (size_t i = 0; i < sz; i++) {
                if (a[i] != b[i]) {
                    fail_msg("%s %s: byte %zu: 0x%02x vs reference 0x%02x", vlm_type_name((int)acts[k]),
                             vlm__cpu_isa_name(isa), i, b[i], a[i]);
                }
            }
        }
    }
    // BF16 specials: NaN stays NaN, denormals are rounded (not flushed), ties go to even
    const float sp[16] = {NAN, -NAN, INFINITY, -INFINITY, 1e-40f, -1e-40f, 1.0f + 0x1p-8f, 1.0f + 0x3p-8f,
                          0.0f, -0.0f, 3.3e38f, 1.0f, 2.0f, 1e-45f, 5.0f, 6.0f};
    for (int isa = 1; isa < n_isas(); isa++) {
        const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits_isa(VLM_TYPE_BF16, (enum vlm_cpu_isa)isa);
        uint16_t r[16], v[16];
        vlm__quant_row_bf16_ref(sp, r, 16);
        ct->from_float(sp, v, 16);
        assert_memory_equal(r, v, sizeof r);
    }
    free(a);
    free(b);
    free(x);
}

// Multi-row kernels, where a path has one: every tile shape up to 9 x 9 and a few driver-sized ones, at sizes
// with odd block counts, each element against the same path's vec_dot with the bound of the other checks.
static void test_vec_dot_nx(void **state) {
    (void)state;
    uint64_t seed = 4242;
    int tiles = 0, types_on_best = 0;
    double worst = 0.0;
    enum { MW = 16, MX = 32 };
    static const int big[][2] = {{16, 32}, {15, 31}, {12, 24}, {13, 5}, {3, 29}};
    for (int isa = 0; isa < n_isas(); isa++) {
        for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
            const enum vlm_type t = weight_types[ti];
            const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits_isa(t, (enum vlm_cpu_isa)isa);
            assert_non_null(ct);
            if (!ct->vec_dot_nx) {
                continue;
            }
            types_on_best += isa == n_isas() - 1;
            const int64_t bs = vlm_type_traits((int)t)->blck_size;
            static const int64_t fsz[] = {1, 17, 100, 531}, bsz[] = {1, 3, 6, 9}, ksz[] = {1, 2, 3};
            const int64_t *nbs = bs == 1 ? fsz : bs == 32 ? bsz : ksz;
            const int n_sizes = bs == 1 ? 4 : bs == 32 ? 4 : 3;
            for (int si = 0; si < n_sizes; si++) {
                const int64_t n = nbs[si] * bs;
                // strides that are not multiples of 64: rows start at varying SIMD alignments
                const size_t wrow = vlm_row_size(t, n) + 4;
                const size_t xrow = act_row_size(ct, n) + 12;
                uint8_t *w = malloc(wrow * MW + 64);
                uint8_t *xq = malloc(xrow * MX + 64);
                float *xf = malloc((size_t)n * sizeof(float));
                float *out = malloc((MW + 2) * MX * sizeof(float) + 64);
                double *abs_sum = malloc(MW * MX * sizeof(double));
                float *expect = malloc(MW * MX * sizeof(float));
                assert_non_null(w);
                assert_non_null(xq);
                assert_non_null(xf);
                assert_non_null(out);
                assert_non_null(abs_sum);
                assert_non_null(expect);
                for (int r = 0; r < MW; r++) {
                    make_weights(t, w + 4 + r * wrow, n, &seed);
                }
                for (int r = 0; r < MX; r++) {
                    for (int64_t i = 0; i < n; i++) {
                        xf[i] = vlm_test_rand_f32(&seed) * (i % 5 == 0 ? 3.0f : 1.0f);
                    }
                    make_act(ct, xf, xq + 8 + r * xrow, n);
                }
                for (int iw = 0; iw < MW; iw++) {
                    for (int ix = 0; ix < MX; ix++) {
                        double exact;
                        deq_dot(t, w + 4 + iw * wrow, ct->vec_dot_type, xq + 8 + ix * xrow, n,
                                &abs_sum[iw * MX + ix], &exact);
                        ct->vec_dot(n, &expect[iw * MX + ix], w + 4 + iw * wrow, xq + 8 + ix * xrow);
                    }
                }
                for (int shape = 0; shape < 81 + (int)(sizeof big / sizeof big[0]); shape++) {
                    const int nw = shape < 81 ? 1 + shape / 9 : big[shape - 81][0];
                    const int nx = shape < 81 ? 1 + shape % 9 : big[shape - 81][1];
                    const size_t s_stride = (size_t)nw + 2;
                    const size_t n_out = (size_t)nx * s_stride;
                    for (size_t i = 0; i < n_out; i++) {
                        out[i] = -12345.0f;
                    }
                    ct->vec_dot_nx(n, out, s_stride, w + 4, wrow, xq + 8, xrow, nw, nx);
                    for (int ix = 0; ix < nx; ix++) {
                        for (int iw = 0; iw < nw; iw++) {
                            const float e = expect[iw * MX + ix];
                            const float got = out[(size_t)ix * s_stride + (size_t)iw];
                            const double err = fabs((double)got - (double)e);
                            const double tol = 1e-5 * abs_sum[iw * MX + ix] + 1e-30;
                            if (!(err <= tol)) {
                                fail_msg("%s %s n=%lld tile %dx%d [%d,%d]: %.9g vs vec_dot %.9g (err %.3g, tol %.3g)",
                                         vlm_type_name((int)t), vlm__cpu_isa_name(isa), (long long)n, nw, nx, iw, ix,
                                         (double)got, (double)e, err, tol);
                            }
                            if (abs_sum[iw * MX + ix] > 0 && err / abs_sum[iw * MX + ix] > worst) {
                                worst = err / abs_sum[iw * MX + ix];
                            }
                        }
                        for (size_t iw = (size_t)nw; iw < s_stride; iw++) {
                            if (out[(size_t)ix * s_stride + iw] != -12345.0f) { // no writes in the gap
                                fail_msg("%s %s tile %dx%d wrote s[%d * s_stride + %zu]", vlm_type_name((int)t),
                                         vlm__cpu_isa_name(isa), nw, nx, ix, iw);
                            }
                        }
                    }
                    tiles++;
                }
                free(w);
                free(xq);
                free(xf);
                free(out);
                free(abs_sum);
                free(expect);
            }
        }
    }
    print_message("nx tiles checked: %d (%d types with nx kernels on the best path); worst |nx - vec_dot| / "
                  "sum|w x| = %.3g\n", tiles, types_on_best, worst);
    // the types that dominate real GGUF files must have one on AVX-512
    if (vlm__cpu_isa_best() == VLM_CPU_ISA_AVX512) {
        static const enum vlm_type need[] = {VLM_TYPE_Q4_K, VLM_TYPE_Q6_K, VLM_TYPE_Q8_0, VLM_TYPE_F16,
                                             VLM_TYPE_Q4_0, VLM_TYPE_Q5_K, VLM_TYPE_F32};
        for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
            assert_non_null(vlm__cpu_type_traits_isa(need[i], VLM_CPU_ISA_AVX512)->vec_dot_nx);
        }
        assert_true(tiles > 0);
    }
}

// ---- packed (row-interleaved) kernels ------------------------------------------------------------------------
// Q4_0 x16 groups times split-Q8_0 activations against the scalar vec_dot on the original rows and the
// reference Q8_0 activations: same integers per block, so within 1e-5 of sum|w x|. Also: the split quantizer
// holds exactly the reference Q8_0 codes and scales.
static void test_packed_q4_0(void **state) {
    (void)state;
    if (vlm__cpu_isa_best() < VLM_CPU_ISA_AVX512) {
        print_message("packed Q4_0: no AVX-512 on this CPU, kernel not built for it\n");
        return;
    }
    static const int64_t sizes[] = {32, 224, 2080};
    enum { NG = 3, ROWS = NG * VLM_PACK_ROWS, MX = 35 };
    uint64_t seed = 11;
    double worst = 0.0;
    int checked = 0;
    const struct vlm_cpu_type_traits *sc = vlm__cpu_type_traits_isa(VLM_TYPE_Q4_0, VLM_CPU_ISA_SCALAR);
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int64_t n = sizes[si], nb = n / 32;
        const size_t wrow = vlm_row_size(VLM_TYPE_Q4_0, n), xrow = vlm_row_size(VLM_TYPE_Q8_0, n);
        const size_t gsz = vlm__q4_0x16_group_size(n), srow = vlm__q8_0s_row_size(n);
        assert_int_equal(gsz % 64, 0);
        assert_int_equal(srow % 64, 0);
        uint8_t *w = malloc(wrow * ROWS);
        uint8_t *pk = aligned_alloc(64, gsz * NG);
        uint8_t *xq = malloc(xrow * MX);
        uint8_t *xs = aligned_alloc(64, srow * MX);
        float *xf = malloc((size_t)n * sizeof(float));
        float *out = malloc((size_t)MX * (ROWS + 5) * sizeof(float));
        float *expect = malloc((size_t)MX * ROWS * sizeof(float));
        double *abs_sum = malloc((size_t)MX * ROWS * sizeof(double));
        assert_true(w && pk && xq && xs && xf && out && expect && abs_sum);
        for (int r = 0; r < ROWS; r++) {
            make_weights(VLM_TYPE_Q4_0, w + (size_t)r * wrow, n, &seed);
        }
        for (int g = 0; g < NG; g++) {
            vlm__pack_q4_0x16(w + (size_t)g * VLM_PACK_ROWS * wrow, wrow, pk + (size_t)g * gsz, n);
        }
        for (int k = 0; k < MX; k++) {
            for (int64_t i = 0; i < n; i++) {
                xf[i] = vlm_test_rand_f32(&seed) * (i % 5 == 0 ? 3.0f : 1.0f) * (k == 3 && i < 32 ? 0.0f : 1.0f);
            }
            vlm__quant_row_q8_0_ref(xf, xq + (size_t)k * xrow, n);
            assert_true(vlm__packed_quant_q8_0s(xf, xs + (size_t)k * srow, n, 8));
            const struct vlm_block_q8_0 *b = (const struct vlm_block_q8_0 *)(const void *)(xq + (size_t)k * xrow);
            const int8_t *sq = (const int8_t *)(xs + (size_t)k * srow);
            const float *sd = (const float *)(const void *)(sq + n);
            const int32_t *scn = (const int32_t *)(const void *)(sd + nb);
            for (int64_t i = 0; i < nb; i++) {
                int sum = 0;
                for (int j = 0; j < 32; j++) {
                    assert_int_equal(sq[i * 32 + j], b[i].qs[j]);
                    sum += b[i].qs[j];
                }
                assert_true(sd[i] == vlm_fp16_to_fp32(b[i].d));
                assert_int_equal(scn[i], -8 * sum);
            }
            for (int r = 0; r < ROWS; r++) {
                double exact;
                deq_dot(VLM_TYPE_Q4_0, w + (size_t)r * wrow, VLM_TYPE_Q8_0, xq + (size_t)k * xrow, n,
                        &abs_sum[k * ROWS + r], &exact);
                sc->vec_dot(n, &expect[k * ROWS + r], w + (size_t)r * wrow, xq + (size_t)k * xrow);
            }
        }
        static const int nxs[] = {1, 2, 5, 15, 16, 17, 33, MX};
        for (size_t ci = 0; ci < sizeof nxs / sizeof nxs[0]; ci++) {
            for (int ng = 1; ng <= NG; ng++) {
                const int nx = nxs[ci];
                const size_t ss = ROWS + 5;
                for (size_t i = 0; i < (size_t)MX * ss; i++) {
                    out[i] = -12345.0f;
                }
                assert_true(vlm__packed_gemm_q4_0x16(n, out, ss, pk, gsz, ng, xs, srow, nx));
                for (int k = 0; k < MX; k++) {
                    for (int r = 0; r < (int)ss; r++) {
                        const float got = out[(size_t)k * ss + (size_t)r];
                        if (k >= nx || r >= ng * VLM_PACK_ROWS) {
                            if (got != -12345.0f) {
                                fail_msg("packed Q4_0 n=%lld %d groups x %d rows wrote s[%d][%d]", (long long)n, ng, nx,
                                         k, r);
                            }
                            continue;
                        }
                        const double err = fabs((double)got - (double)expect[k * ROWS + r]);
                        const double tol = 1e-5 * abs_sum[k * ROWS + r] + 1e-30;
                        if (!(err <= tol)) {
                            fail_msg("packed Q4_0 n=%lld [%d,%d]: %.9g vs scalar %.9g (err %.3g, tol %.3g)",
                                     (long long)n, r, k, (double)got, (double)expect[k * ROWS + r], err, tol);
                        }
                        if (abs_sum[k * ROWS + r] > 0 && err / abs_sum[k * ROWS + r] > worst) {
                            worst = err / abs_sum[k * ROWS + r];
                        }
                        checked++;
                    }
                }
            }
        }
        free(w);
        free(pk);
        free(xq);
        free(xs);
        free(xf);
        free(out);
        free(expect);
        free(abs_sum);
    }
    print_message("packed Q4_0: %d outputs checked, worst |packed - scalar| / sum|w x| = %.3g\n", checked, worst);
    assert_true(checked > 0);
}

// ---- benchmark ---------------------------------------------------------------------------------------------

// Thread CPU time: the shared build machines deschedule us often, which wall time would count.
static double cpu_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void bench(void) {
    const int64_t n = 4096, rows = 4096;
    uint64_t seed = 1;
    float *xf = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        xf[i] = vlm_test_rand_f32(&seed);
    }
    printf("single-thread matvec, %lld x %lld, GB/s of weights (ms per matvec)\n", (long long)rows, (long long)n);
    for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const enum vlm_type t = weight_types[ti];
        const size_t rs = vlm_row_size(t, n);
        uint8_t *w = malloc(rs * (size_t)rows);
        for (int64_t r = 0; r < rows; r++) {
            make_weights(t, w + (size_t)r * rs, n, &seed);
        }
        printf("%-5s", vlm_type_name((int)t));
        for (int isa = 0; isa < n_isas(); isa++) {
            const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits_isa(t, (enum vlm_cpu_isa)isa);
            uint8_t *xq = malloc(act_row_size(ct, n));
            make_act(ct, xf, xq, n);
            float sink = 0.0f, s;
            double best = 1e9;
            for (int rep = 0; rep < 5; rep++) {
                const double t0 = now_s();
                for (int64_t r = 0; r < rows; r++) {
                    ct->vec_dot(n, &s, w + (size_t)r * rs, xq);
                    sink += s;
                }
                const double dt = now_s() - t0;
                best = dt < best ? dt : best;
            }
            printf("  %s %6.1f GB/s (%6.2f ms)%s", vlm__cpu_isa_name(isa), (double)(rs * (size_t)rows) / best * 1e-9,
                   best * 1e3, sink == 12345.0f ? "!" : "");
            free(xq);
        }
        printf("\n");
        free(w);
    }
    free(xf);
}

// Prefill: a 4096 x 4096 weight matrix times 64 activation rows, one thread, in the matmul driver's order
// (16 weight rows x 32 activation rows per tile): vec_dot per (row, token) pair vs the multi-row kernel.
static void bench_nx(int isa) {
    const int64_t n = 4096, rows = 4096, toks = 64;
    enum { TR = 16, TT = 32 };
    uint64_t seed = 2;
    float *xf = malloc((size_t)(n * toks) * sizeof(float));
    float *out = malloc((size_t)(rows * toks) * sizeof(float));
    for (int64_t i = 0; i < n * toks; i++) {
        xf[i] = vlm_test_rand_f32(&seed);
    }
    const double flop = 2.0 * (double)n * (double)rows * (double)toks;
    printf("single-thread prefill, %lld x %lld weights x %lld tokens, %s path, GFLOP/s (ms)\n", (long long)rows,
           (long long)n, (long long)toks, vlm__cpu_isa_name(isa));
    for (size_t ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const enum vlm_type t = weight_types[ti];
        const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits_isa(t, (enum vlm_cpu_isa)isa);
        const size_t rs = vlm_row_size(t, n), xs = act_row_size(ct, n);
        uint8_t *w = malloc(rs * (size_t)rows);
        uint8_t *xq = malloc(xs * (size_t)toks);
        for (int64_t r = 0; r < rows; r++) {
            make_weights(t, w + (size_t)r * rs, n, &seed);
        }
        for (int64_t r = 0; r < toks; r++) {
            make_act(ct, xf + r * n, xq + (size_t)r * xs, n);
        }
        printf("%-5s", vlm_type_name((int)t));
        for (int use_nx = 0; use_nx < 2; use_nx++) {
            if (use_nx && !ct->vec_dot_nx) {
                printf("  nx       -");
                continue;
            }
            double best = 1e9;
            for (int rep = 0; rep < 5; rep++) {
                const double t0 = cpu_now_s();
                for (int64_t o0 = 0; o0 < rows; o0 += TR) {
                    for (int64_t k0 = 0; k0 < toks; k0 += TT) {
                        const uint8_t *wt = w + (size_t)o0 * rs;
                        const uint8_t *xt = xq + (size_t)k0 * xs;
                        float *st = out + (size_t)k0 * (size_t)rows + (size_t)o0;
                        if (use_nx) {
                            ct->vec_dot_nx(n, st, (size_t)rows, wt, rs, xt, xs, TR, TT);
                            continue;
                        }
                        for (int r = 0; r < TR; r++) {
                            for (int k = 0; k < TT; k++) {
                                ct->vec_dot(n, st + (size_t)k * (size_t)rows + r, wt + (size_t)r * rs,
                                            xt + (size_t)k * xs);
                            }
                        }
                    }
                }
                const double dt = cpu_now_s() - t0;
                best = dt < best ? dt : best;
            }
            printf("  %s %6.1f (%6.1f ms)", use_nx ? "nx" : "vec_dot", flop / best * 1e-9, best * 1e3);
        }
        printf("\n");
        free(w);
        free(xq);
    }
    free(xf);
    free(out);
}

// Packed Q4_0 (x16 groups), one thread: prefill as bench_nx (16 rows x 64 tokens per call here: one group) and
// matvec over the whole matrix.
static void bench_packed(void) {
    if (vlm__cpu_isa_best() < VLM_CPU_ISA_AVX512) {
        return;
    }
    const int64_t n = 4096, rows = 4096, toks = 64;
    uint64_t seed = 2;
    const size_t wrow = vlm_row_size(VLM_TYPE_Q4_0, n), gsz = vlm__q4_0x16_group_size(n);
    const size_t srow = vlm__q8_0s_row_size(n);
    const int64_t ng = rows / VLM_PACK_ROWS;
    uint8_t *w = malloc(wrow * (size_t)rows);
    uint8_t *pk = aligned_alloc(64, gsz * (size_t)ng);
    uint8_t *xs = aligned_alloc(64, srow * (size_t)toks);
    float *xf = malloc((size_t)n * sizeof(float));
    float *out = malloc((size_t)(rows * toks) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        make_weights(VLM_TYPE_Q4_0, w + (size_t)r * wrow, n, &seed);
    }
    for (int64_t g = 0; g < ng; g++) {
        vlm__pack_q4_0x16(w + (size_t)(g * VLM_PACK_ROWS) * wrow, wrow, pk + (size_t)g * gsz, n);
    }
    for (int64_t k = 0; k < toks; k++) {
        for (int64_t i = 0; i < n; i++) {
            xf[i] = vlm_test_rand_f32(&seed);
        }
        vlm__packed_quant_q8_0s(xf, xs + (size_t)k * srow, n, 8);
    }
    double best = 1e9, best_mv = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = cpu_now_s();
        for (int64_t g = 0; g < ng; g++) {
            vlm__packed_gemm_q4_0x16(n, out + g * VLM_PACK_ROWS, (size_t)rows, pk + (size_t)g * gsz, gsz, 1, xs, srow,
                                     (int)toks);
        }
        double dt = cpu_now_s() - t0;
        best = dt < best ? dt : best;
        t0 = now_s();
        vlm__packed_gemm_q4_0x16(n, out, (size_t)rows, pk, gsz, (int)ng, xs, srow, 1);
        dt = now_s() - t0;
        best_mv = dt < best_mv ? dt : best_mv;
    }
    printf("packed Q4_0 x16: prefill %6.1f GFLOP/s (%6.1f ms), matvec %6.1f GB/s (%6.2f ms)\n",
           2.0 * (double)n * (double)rows * (double)toks / best * 1e-9, best * 1e3,
           (double)(gsz * (size_t)ng) / best_mv * 1e-9, best_mv * 1e3);
    free(w);
    free(pk);
    free(xs);
    free(xf);
    free(out);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        if (argc < 3 || strcmp(argv[2], "nx") != 0) {
            bench();
        }
        // --bench nx [scalar|avx2|avx512]: that path's prefill only (default the best)
        int isa = n_isas() - 1;
        for (int i = 0; argc > 3 && i < n_isas(); i++) {
            isa = strcmp(argv[3], vlm__cpu_isa_name((enum vlm_cpu_isa)i)) == 0 ? i : isa;
        }
        bench_nx(isa);
        bench_packed();
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_control),
        cmocka_unit_test(test_vec_dot_paths),
        cmocka_unit_test(test_from_float_edges),
        cmocka_unit_test(test_vec_dot_nx),
        cmocka_unit_test(test_packed_q4_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
