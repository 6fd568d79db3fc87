// CPU backend ops against naive double-precision references written here, on random data with odd sizes.
// Every op runs with 1, 2 and 3 threads and on every instruction-set path this CPU has (scalar, AVX2, AVX-512),
// with sizes on both sides of the "run inline" threshold.
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/cpu/quants.h"
#include "kernels/cpu/repack.h"
#include "test-util.h"
#include "vlm/backend.h"

// The references are double precision by design; every float operand promotes on purpose.
#pragma GCC diagnostic ignored "-Wdouble-promotion"

#define N_BE 3

static struct vlm_backend *g_be[N_BE]; // 1, 2, 3 threads
static enum vlm_cpu_isa g_isas[3];
static int g_n_isa;
static uint64_t g_rng = 0x9e3779b97f4a7c15ULL;

static int setup(void **state) {
    (void)state;
    for (int i = 0; i < N_BE; i++) {
        struct vlm_backend_cpu_params p = {.n_threads = i + 1};
        struct vlm_diag diag = {0};
        if (vlm_backend_cpu_new(&p, &g_be[i], &diag) != 0) {
            return -1;
        }
    }
    for (int isa = VLM_CPU_ISA_SCALAR; isa <= (int)vlm__cpu_isa_best(); isa++) {
        g_isas[g_n_isa++] = (enum vlm_cpu_isa)isa;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < N_BE; i++) {
        vlm_backend_free(g_be[i]);
    }
    vlm__cpu_isa_set(vlm__cpu_isa_best());
    return 0;
}

static void use_isa(int ii) {
    assert_int_equal(vlm__cpu_isa_set(g_isas[ii]), 0);
}

#define FOR_EACH_CONFIG(ii, bi)                                                                                        \
    for (int ii = 0; ii < g_n_isa; ii++)                                                                               \
        for (int bi = (use_isa(ii), 0); bi < N_BE; bi++)

static float *rand_vec(int64_t n, float lo, float hi) {
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    assert_non_null(v);
    for (int64_t i = 0; i < n; i++) {
        v[i] = lo + (hi - lo) * 0.5f * (vlm_test_rand_f32(&g_rng) + 1.0f);
    }
    return v;
}

static double *dvec(int64_t n) {
    double *v = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    assert_non_null(v);
    return v;
}

static struct vlm_tensor
tensor_new(struct vlm_backend *be, enum vlm_type type, int64_t ne0, int64_t ne1, const void *src) {
    struct vlm_tensor d = vlm_tensor_make(type, ne0, ne1, 1, 1), t;
    assert_int_equal(vlm_tensor_alloc(be, &d, &t), 0);
    if (src) {
        assert_int_equal(vlm_tensor_set(&t, src, 0, vlm_tensor_nbytes(&t)), 0);
    }
    return t;
}

static float *tensor_read_f32(const struct vlm_tensor *t) {
    float *v = malloc(vlm_tensor_nbytes(t) + 1);
    assert_non_null(v);
    assert_int_equal(vlm_tensor_get(t, v, 0, vlm_tensor_nbytes(t)), 0);
    return v;
}

// max |got - ref| / (atol + rtol |ref|) must stay <= 1; returns max |got - ref| for the summary line.
static double check_close(
    const char *what, int ii, int bi, const float *got, const double *ref, int64_t n, double atol, double rtol) {
    double max_err = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= atol + rtol * fabs(ref[i]))) { // also catches NaN
            fail_msg("%s [%s, %d threads]: element %lld = %.9g, expected %.9g (err %.3g)", what,
                     vlm__cpu_isa_name(g_isas[ii]), bi + 1, (long long)i, (double)got[i], ref[i], err);
        }
        max_err = err > max_err ? err : max_err;
    }
    return max_err;
}

static void report(const char *op, double max_err, int n_cases) {
    printf("%-28s max abs err %.3e over %d cases (%d ISA paths x %d thread counts)\n", op, max_err, n_cases, g_n_isa,
           N_BE);
}

// ---- norms ---------------------------------------------------------------------------------------------------

static void test_rms_norm(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{67, 5}, {1031, 37}, {4096, 1}};
    double worst = 0.0;
    int cases = 0;
    for (size_t s = 0; s < 3; s++) {
        int64_t n = shapes[s][0], rows = shapes[s][1];
        float *x = rand_vec(n * rows, -2.0f, 2.0f), *w = rand_vec(n, 0.5f, 1.5f);
        const float eps = 1e-5f;
        for (int use_w = 0; use_w < 2; use_w++) {
            double *ref = dvec(n * rows);
            for (int64_t r = 0; r < rows; r++) {
                double ss = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    ss += (double)x[r * n + i] * x[r * n + i];
                }
                double sc = 1.0 / sqrt(ss / (double)n + eps);
                for (int64_t i = 0; i < n; i++) {
                    ref[r * n + i] = x[r * n + i] * sc * (use_w ? (double)w[i] : 1.0);
                }
            }
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n, rows, x);
                struct vlm_tensor tw = tensor_new(be, VLM_TYPE_F32, n, 1, w);
                struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n, rows, NULL);
                vlm_op_rms_norm(be, &td, &tx, use_w ? &tw : NULL, eps);
                float *got = tensor_read_f32(&td);
                double e = check_close("rms_norm", ii, bi, got, ref, n * rows, 1e-5, 1e-5);
                worst = e > worst ? e : worst;
                // in place (dst aliases x)
                vlm_op_rms_norm(be, &tx, &tx, use_w ? &tw : NULL, eps);
                free(got);
                got = tensor_read_f32(&tx);
                check_close("rms_norm in place", ii, bi, got, ref, n * rows, 1e-5, 1e-5);
                free(got);
                vlm_tensor_release(&tx);
                vlm_tensor_release(&tw);
                vlm_tensor_release(&td);
                cases++;
            }
            free(ref);
        }
        free(x);
        free(w);
    }
    report("rms_norm (+in place)", worst, cases);
}

static void test_layer_norm(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{33, 3}, {1025, 41}};
    double worst = 0.0;
    int cases = 0;
    for (size_t s = 0; s < 2; s++) {
        int64_t n = shapes[s][0], rows = shapes[s][1];
        // offset mean: checks the variance is taken around the mean, not as E[x^2] - E[x]^2
        float *x = rand_vec(n * rows, 9.0f, 11.0f), *w = rand_vec(n, 0.5f, 1.5f), *b = rand_vec(n, -1.0f, 1.0f);
        const float eps = 1e-6f;
        for (int mode = 0; mode < 3; mode++) { // 0: w+b, 1: w only, 2: neither
            bool use_w = mode < 2, use_b = mode == 0;
            double *ref = dvec(n * rows);
            for (int64_t r = 0; r < rows; r++) {
                double mean = 0.0, var = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    mean += x[r * n + i];
                }
                mean /= (double)n;
                for (int64_t i = 0; i < n; i++) {
                    var += (x[r * n + i] - mean) * (x[r * n + i] - mean);
                }
                var /= (double)n;
                for (int64_t i = 0; i < n; i++) {
                    double y = (x[r * n + i] - mean) / sqrt(var + eps);
                    ref[r * n + i] = y * (use_w ? (double)w[i] : 1.0) + (use_b ? (double)b[i] : 0.0);
                }
            }
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n, rows, x);
                struct vlm_tensor tw = tensor_new(be, VLM_TYPE_F32, n, 1, w);
                struct vlm_tensor tb = tensor_new(be, VLM_TYPE_F32, n, 1, b);
                struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n, rows, NULL);
                vlm_op_layer_norm(be, &td, &tx, use_w ? &tw : NULL, use_b ? &tb : NULL, eps);
                float *got = tensor_read_f32(&td);
                double e = check_close("layer_norm", ii, bi, got, ref, n * rows, 2e-4, 1e-4);
                worst = e > worst ? e : worst;
                free(got);
                vlm_tensor_release(&tx);
                vlm_tensor_release(&tw);
                vlm_tensor_release(&tb);
                vlm_tensor_release(&td);
                cases++;
            }
            free(ref);
        }
        free(x);
        free(w);
        free(b);
    }
    report("layer_norm (w+b, w, none)", worst, cases);
}

// ---- elementwise ---------------------------------------------------------------------------------------------

enum ew_kind { K_ADD, K_ADD_BC, K_MUL, K_MUL_BC, K_SCALE, K_SILU, K_GELU_ERF, K_GELU_TANH, K_GELU_QUICK, K_SWIGLU };
static const char *const ew_names[] = {
    "add",       "add (row broadcast)", "mul",   "mul (row broadcast)", "scale", "silu", "gelu erf",
    "gelu tanh", "gelu quick",          "swiglu"};

static double ew_ref(enum ew_kind k, double a, double b) {
    switch (k) {
    case K_ADD:
    case K_ADD_BC:
        return a + b;
    case K_MUL:
    case K_MUL_BC:
        return a * b;
    case K_SCALE:
        return a * -0.37;
    case K_SILU:
        return a / (1.0 + exp(-a));
    case K_GELU_ERF:
        return 0.5 * a * (1.0 + erf(a / sqrt(2.0)));
    case K_GELU_TANH:
        return 0.5 * a * (1.0 + tanh(sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a)));
    case K_GELU_QUICK:
        return a / (1.0 + exp(-1.702 * a));
    case K_SWIGLU:
        return a / (1.0 + exp(-a)) * b;
    }
    return 0.0;
}

static void test_elementwise(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{19, 3}, {1003, 29}};
    for (int k = K_ADD; k <= K_SWIGLU; k++) {
        double worst = 0.0;
        int cases = 0;
        for (size_t s = 0; s < 2; s++) {
            int64_t n = shapes[s][0], rows = shapes[s][1];
            bool bc = k == K_ADD_BC || k == K_MUL_BC;
            int64_t b_rows = bc ? 1 : rows;
            float *a = rand_vec(n * rows, -8.0f, 8.0f), *b = rand_vec(n * b_rows, -2.0f, 2.0f);
            a[0] = -100.0f; // exp overflow/underflow region of the activations
            a[1] = 100.0f;
            double *ref = dvec(n * rows);
            for (int64_t i = 0; i < n * rows; i++) {
                ref[i] = ew_ref((enum ew_kind)k, a[i], b[bc ? i % n : i]);
            }
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                struct vlm_tensor ta = tensor_new(be, VLM_TYPE_F32, n, rows, a);
                struct vlm_tensor tb = tensor_new(be, VLM_TYPE_F32, n, b_rows, b);
                struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n, rows, NULL);
                for (int inplace = 0; inplace < 2; inplace++) {
                    struct vlm_tensor *dst = inplace ? &ta : &td;
                    switch ((enum ew_kind)k) {
                    case K_ADD:
                    case K_ADD_BC:
                        vlm_op_add(be, dst, &ta, &tb);
                        break;
                    case K_MUL:
                    case K_MUL_BC:
                        vlm_op_mul(be, dst, &ta, &tb);
                        break;
                    case K_SCALE:
                        vlm_op_scale(be, dst, &ta, -0.37f);
                        break;
                    case K_SILU:
                        vlm_op_silu(be, dst, &ta);
                        break;
                    case K_GELU_ERF:
                        vlm_op_gelu(be, dst, &ta, VLM_GELU_ERF);
                        break;
                    case K_GELU_TANH:
                        vlm_op_gelu(be, dst, &ta, VLM_GELU_TANH);
                        break;
                    case K_GELU_QUICK:
                        vlm_op_gelu(be, dst, &ta, VLM_GELU_QUICK);
                        break;
                    case K_SWIGLU:
                        vlm_op_swiglu(be, dst, &ta, &tb);
                        break;
                    }
                    float *got = tensor_read_f32(dst);
                    double e = check_close(ew_names[k], ii, bi, got, ref, n * rows, 1e-5, 2e-6);
                    worst = e > worst ? e : worst;
                    free(got);
                }
                vlm_tensor_release(&ta);
                vlm_tensor_release(&tb);
                vlm_tensor_release(&td);
                cases++;
            }
            free(a);
            free(b);
            free(ref);
        }
        char name[64];
        snprintf(name, sizeof name, "%s (+in place)", ew_names[k]);
        report(name, worst, cases);
    }
}

// ---- softmax -------------------------------------------------------------------------------------------------

static void test_softmax(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{7, 3}, {1537, 23}};
    const float scales[] = {0.7f, 25.0f}; // 25: logits up to +-250, overflows without the max subtraction
    double worst = 0.0;
    int cases = 0;
    for (size_t s = 0; s < 2; s++) {
        int64_t n = shapes[s][0], rows = shapes[s][1];
        for (size_t sc = 0; sc < 2; sc++) {
            float scale = scales[sc];
            float *x = rand_vec(n * rows, -10.0f, 10.0f);
            x[1] = -INFINITY; // masked entries must get exactly zero weight
            x[n + 2] = -INFINITY;
            double *ref = dvec(n * rows);
            for (int64_t r = 0; r < rows; r++) {
                double m = -INFINITY, sum = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    m = fmax(m, (double)x[r * n + i] * scale);
                }
                for (int64_t i = 0; i < n; i++) {
                    ref[r * n + i] = exp((double)x[r * n + i] * scale - m);
                    sum += ref[r * n + i];
                }
                for (int64_t i = 0; i < n; i++) {
                    ref[r * n + i] /= sum;
                }
            }
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n, rows, x);
                struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n, rows, NULL);
                vlm_op_softmax(be, &td, &tx, scale);
                float *got = tensor_read_f32(&td);
                double e = check_close("softmax", ii, bi, got, ref, n * rows, 1e-7, 2e-5);
                worst = e > worst ? e : worst;
                assert_true(got[1] == 0.0f && got[n + 2] == 0.0f);
                for (int64_t r = 0; r < rows; r++) {
                    double sum = 0.0;
                    for (int64_t i = 0; i < n; i++) {
                        sum += got[r * n + i];
                    }
                    assert_true(fabs(sum - 1.0) < 1e-5);
                }
                free(got);
                vlm_tensor_release(&tx);
                vlm_tensor_release(&td);
                cases++;
            }
            free(x);
            free(ref);
        }
    }
    report("softmax (scaled, masked)", worst, cases);
}

// ---- rope ----------------------------------------------------------------------------------------------------

static void test_rope(void **state) {
    (void)state;
    struct {
        int32_t n_head, head_dim, n_rot, pos0, n_tok;
        float base, fscale;
    } cfgs[] = {
        {3, 10, 10, 0, 4, 10000.0f, 1.0f},
        {5, 18, 8, 1234, 7, 10000.0f, 0.5f},  // partial rotation, positions in the thousands
        {32, 128, 128, 3000, 37, 1e6f, 1.0f}, // Mistral base; large enough to run threaded
    };
    double worst = 0.0;
    int cases = 0;
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        int32_t nh = cfgs[c].n_head, hd = cfgs[c].head_dim, nr = cfgs[c].n_rot, nt = cfgs[c].n_tok;
        int64_t n = (int64_t)nh * hd;
        float *x = rand_vec(n * nt, -1.0f, 1.0f);
        for (int mode_i = 0; mode_i < 2; mode_i++) {
            enum vlm_rope_mode mode = mode_i ? VLM_ROPE_NEOX : VLM_ROPE_NORM;
            double *ref = dvec(n * nt);
            for (int64_t i = 0; i < n * nt; i++) {
                ref[i] = x[i];
            }
            for (int32_t t = 0; t < nt; t++) {
                double pos = (double)cfgs[c].pos0 + t;
                for (int32_t h = 0; h < nh; h++) {
                    const float *xh = x + (int64_t)t * n + (int64_t)h * hd;
                    double *rh = ref + (int64_t)t * n + (int64_t)h * hd;
                    for (int32_t i = 0; i < nr / 2; i++) {
                        double theta = pos * cfgs[c].fscale * pow(cfgs[c].base, -2.0 * i / nr);
                        int32_t i0 = mode == VLM_ROPE_NORM ? 2 * i : i;
                        int32_t i1 = mode == VLM_ROPE_NORM ? 2 * i + 1 : i + nr / 2;
                        rh[i0] = xh[i0] * cos(theta) - xh[i1] * sin(theta);
                        rh[i1] = xh[i0] * sin(theta) + xh[i1] * cos(theta);
                    }
                }
            }
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n, nt, x);
                vlm_op_rope(be, &tx, nh, hd, nr, cfgs[c].pos0, cfgs[c].base, cfgs[c].fscale, mode);
                float *got = tensor_read_f32(&tx);
                double e = check_close(mode == VLM_ROPE_NORM ? "rope norm" : "rope neox", ii, bi, got, ref, n * nt,
                                       2e-6, 1e-6);
                worst = e > worst ? e : worst;
                free(got);
                vlm_tensor_release(&tx);
                cases++;
            }
            free(ref);
        }
        free(x);
    }
    report("rope (norm + neox)", worst, cases);
}

// ---- copy ----------------------------------------------------------------------------------------------------

static void test_copy(void **state) {
    (void)state;
    const enum vlm_type dts[] = {VLM_TYPE_F32, VLM_TYPE_F16, VLM_TYPE_BF16};
    const int64_t n = 523, n_ctx = 40, row0 = 11, n_rows = 17;
    int cases = 0;
    float *x = rand_vec(n * n_rows, -3.0f, 3.0f);
    x[0] = 1e-6f;   // f16 subnormal
    x[1] = 70000.f; // f16 overflow -> inf
    for (size_t d = 0; d < 3; d++) {
        size_t esz = vlm_type_traits((int)dts[d])->type_size;
        FOR_EACH_CONFIG(ii, bi) {
            struct vlm_backend *be = g_be[bi];
            struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n, n_rows, x);
            struct vlm_tensor cache = tensor_new(be, dts[d], n, n_ctx, NULL);
            struct vlm_tensor view = vlm_tensor_rows(&cache, row0, n_rows);
            vlm_op_copy(be, &view, &tx);
            unsigned char *bytes = malloc(vlm_tensor_nbytes(&cache));
            assert_non_null(bytes);
            assert_int_equal(vlm_tensor_get(&cache, bytes, 0, vlm_tensor_nbytes(&cache)), 0);
            for (int64_t r = 0; r < n_ctx; r++) {
                for (int64_t i = 0; i < n; i++) {
                    const unsigned char *p = bytes + ((size_t)r * (size_t)n + (size_t)i) * esz;
                    bool in_view = r >= row0 && r < row0 + n_rows;
                    float v = in_view ? x[(r - row0) * n + i] : 0.0f;
                    if (dts[d] == VLM_TYPE_F32) {
                        float got;
                        memcpy(&got, p, 4);
                        assert_true(memcmp(&got, &v, 4) == 0);
                    } else {
                        uint16_t got, want = dts[d] == VLM_TYPE_F16 ? vlm_fp32_to_fp16(v) : vlm_fp32_to_bf16(v);
                        memcpy(&got, p, 2);
                        if (got != want) {
                            fail_msg("copy to %s: row %lld elem %lld: 0x%04x, expected 0x%04x", vlm_type_name(dts[d]),
                                     (long long)r, (long long)i, got, want);
                        }
                    }
                }
            }
            free(bytes);
            vlm_tensor_release(&tx);
            vlm_tensor_release(&cache);
            cases++;
        }
    }
    // F16 -> F32 round trip through a view (the reverse direction the op also accepts).
    {
        struct vlm_backend *be = g_be[1];
        struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n, n_rows, x);
        struct vlm_tensor h = tensor_new(be, VLM_TYPE_F16, n, n_rows, NULL);
        struct vlm_tensor back = tensor_new(be, VLM_TYPE_F32, n, n_rows, NULL);
        vlm_op_copy(be, &h, &tx);
        vlm_op_copy(be, &back, &h);
        float *got = tensor_read_f32(&back);
        for (int64_t i = 0; i < n * n_rows; i++) {
            assert_true(got[i] == vlm_fp16_to_fp32(vlm_fp32_to_fp16(x[i])));
        }
        free(got);
        vlm_tensor_release(&tx);
        vlm_tensor_release(&h);
        vlm_tensor_release(&back);
    }
    free(x);
    printf("%-28s bit-exact (F32, F16, BF16 into rows %lld..%lld of a %lld-row cache; rest untouched), %d cases\n",
           "copy", (long long)row0, (long long)(row0 + n_rows - 1), (long long)n_ctx, cases);
}

// ---- weights of any type -------------------------------------------------------------------------------------

// Random weights of `type`: float types from random values; quantized types as random blocks whose fp16 scale
// fields are set to sane magnitudes (independent of any quantizer, and covers every code value).
static void *make_weights(enum vlm_type type, int64_t n_in, int64_t n_out) {
    const struct vlm_type_traits *tt = vlm_type_traits((int)type);
    size_t row = vlm_row_size(type, n_in), nb = (size_t)(n_in / tt->blck_size) * (size_t)n_out;
    unsigned char *w = malloc(row * (size_t)n_out);
    assert_non_null(w);
    if (type == VLM_TYPE_F32 || type == VLM_TYPE_F16 || type == VLM_TYPE_BF16) {
        float *f = rand_vec(n_in * n_out, -1.0f, 1.0f);
        tt->from_float(f, w, n_in * n_out);
        free(f);
        return w;
    }
    for (size_t i = 0; i < row * (size_t)n_out; i++) {
        w[i] = (unsigned char)vlm_test_rand_u64(&g_rng);
    }
    for (size_t b = 0; b < nb; b++) {
        unsigned char *blk = w + b * tt->type_size;
        uint16_t d = vlm_fp32_to_fp16(0.004f + 0.01f * (vlm_test_rand_f32(&g_rng) + 1.0f));
        uint16_t m = vlm_fp32_to_fp16(0.003f * vlm_test_rand_f32(&g_rng));
        switch (type) {
        case VLM_TYPE_Q4_0:
        case VLM_TYPE_Q5_0:
        case VLM_TYPE_Q8_0:
            memcpy(blk, &d, 2);
            break;
        case VLM_TYPE_Q4_1:
        case VLM_TYPE_Q5_1:
            memcpy(blk, &d, 2);
            memcpy(blk + 2, &m, 2);
            break;
        case VLM_TYPE_Q2_K:
            memcpy(blk + offsetof(struct vlm_block_q2_k, d), &d, 2);
            memcpy(blk + offsetof(struct vlm_block_q2_k, dmin), &m, 2);
            break;
        case VLM_TYPE_Q3_K:
            memcpy(blk + offsetof(struct vlm_block_q3_k, d), &d, 2);
            break;
        case VLM_TYPE_Q4_K:
            memcpy(blk + offsetof(struct vlm_block_q4_k, d), &d, 2);
            memcpy(blk + offsetof(struct vlm_block_q4_k, dmin), &m, 2);
            break;
        case VLM_TYPE_Q5_K:
            memcpy(blk + offsetof(struct vlm_block_q5_k, d), &d, 2);
            memcpy(blk + offsetof(struct vlm_block_q5_k, dmin), &m, 2);
            break;
        case VLM_TYPE_Q6_K:
            memcpy(blk + offsetof(struct vlm_block_q6_k, d), &d, 2);
            break;
        default:
            fail_msg("test has no weight generator for supported type %s", vlm_type_name(type));
        }
    }
    return w;
}

static void test_get_rows(void **state) {
    (void)state;
    int n_types = 0, cases = 0;
    for (int type = 0; type < VLM_TYPE_COUNT; type++) {
        if (!vlm_backend_supports_type(g_be[0], (enum vlm_type)type)) {
            continue;
        }
        const struct vlm_type_traits *tt = vlm_type_traits(type);
        int64_t n = tt->blck_size == 1 ? 37 : 3 * tt->blck_size, n_rows = 11;
        void *table = make_weights((enum vlm_type)type, n, n_rows);
        const int32_t ids[] = {3, 0, 10, 3, 7, 1, 9, 9, 2};
        const int64_t n_ids = (int64_t)(sizeof ids / sizeof ids[0]);
        size_t row = vlm_row_size((enum vlm_type)type, n);
        float *ref = malloc((size_t)(n * n_ids) * sizeof(float));
        assert_non_null(ref);
        for (int64_t t = 0; t < n_ids; t++) {
            tt->to_float((const char *)table + (size_t)ids[t] * row, ref + t * n, n);
        }
        FOR_EACH_CONFIG(ii, bi) {
            struct vlm_backend *be = g_be[bi];
            struct vlm_tensor desc = vlm_tensor_make((enum vlm_type)type, n, n_rows, 1, 1), tt_w;
            assert_int_equal(vlm_tensor_from_host(be, &desc, table, &tt_w), 0);
            struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n, n_ids, NULL);
            vlm_op_get_rows(be, &td, &tt_w, ids, n_ids);
            float *got = tensor_read_f32(&td);
            assert_memory_equal(got, ref, (size_t)(n * n_ids) * sizeof(float));
            free(got);
            vlm_tensor_release(&td);
            vlm_tensor_release(&tt_w); // borrowed: must not free `table`
            cases++;
        }
        free(ref);
        free(table);
        n_types++;
    }
    assert_true(n_types >= 3);
    printf("%-28s bit-exact vs to_float for %d types, %d cases\n", "get_rows", n_types, cases);
}

// ---- matmul --------------------------------------------------------------------------------------------------

// Tolerance relative to the output RMS, from the activation format the dot product uses: F32 only sums in
// float; F16/BF16 round each activation (2^-11, 2^-8 relative); Q8 formats round to 1/127 of a block's max.
static double matmul_tol(enum vlm_type vdt) {
    switch (vdt) {
    case VLM_TYPE_F32:
        return 2e-5;
    case VLM_TYPE_F16:
        return 2e-3;
    case VLM_TYPE_BF16:
        return 1.5e-2;
    case VLM_TYPE_Q8_K: // one scale per 256 activations: coarser than Q8_0's per 32
        return 4e-2;
    default:
        return 3e-2;
    }
}

static void test_matmul(void **state) {
    (void)state;
    const int64_t n_toks[] = {1, 7, 45, 133}; // 133: several token blocks of the prefill tiling
    int n_types = 0;
    for (int type = 0; type < VLM_TYPE_COUNT; type++) {
        if (!vlm_backend_supports_type(g_be[0], (enum vlm_type)type)) {
            continue;
        }
        const struct vlm_type_traits *tt = vlm_type_traits(type);
        int64_t n_in = tt->blck_size == 1 ? 211 : (tt->blck_size == 32 ? 7 * 32 : 3 * 256);
        int64_t n_out = 83;
        void *wq = make_weights((enum vlm_type)type, n_in, n_out);
        float *wf = malloc((size_t)(n_in * n_out) * sizeof(float));
        assert_non_null(wf);
        tt->to_float(wq, wf, n_in * n_out);
        double worst_rel = 0.0, worst_strict = 0.0;
        int cases = 0;
        for (size_t k = 0; k < sizeof n_toks / sizeof n_toks[0]; k++) {
            int64_t n_tok = n_toks[k];
            float *x = rand_vec(n_in * n_tok, -1.0f, 1.0f);
            double *ref = dvec(n_out * n_tok);
            double ms = 0.0;
            for (int64_t t = 0; t < n_tok; t++) {
                for (int64_t o = 0; o < n_out; o++) {
                    double s = 0.0;
                    for (int64_t i = 0; i < n_in; i++) {
                        s += (double)wf[o * n_in + i] * x[t * n_in + i];
                    }
                    ref[t * n_out + o] = s;
                    ms += s * s;
                }
            }
            double rms = sqrt(ms / (double)(n_out * n_tok));
            double *strict = NULL;
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits((enum vlm_type)type);
                assert_non_null(ct);
                // Strict reference: the same activation rounding the kernel does (the path's own from_float,
                // dequantized), then exact sums. Only float accumulation separates the kernel from it.
                // Depends on the ISA path only: computed for the first thread count and reused.
                if (bi == 0) {
                    free(strict);
                    strict = NULL;
                }
                if (bi == 0 && ct->vec_dot_type != VLM_TYPE_F32) {
                    const struct vlm_type_traits *vt = vlm_type_traits((int)ct->vec_dot_type);
                    assert_non_null(vt->to_float);
                    size_t xrow = vlm_row_size(ct->vec_dot_type, n_in);
                    void *xq = malloc(xrow);
                    float *xd = malloc((size_t)n_in * sizeof(float));
                    assert_true(xq && xd);
                    strict = dvec(n_out * n_tok);
                    for (int64_t t = 0; t < n_tok; t++) {
                        ct->from_float(x + t * n_in, xq, n_in);
                        vt->to_float(xq, xd, n_in);
                        for (int64_t o = 0; o < n_out; o++) {
                            double s = 0.0;
                            for (int64_t i = 0; i < n_in; i++) {
                                s += (double)wf[o * n_in + i] * xd[i];
                            }
                            strict[t * n_out + o] = s;
                        }
                    }
                    free(xq);
                    free(xd);
                }
                struct vlm_tensor desc = vlm_tensor_make((enum vlm_type)type, n_in, n_out, 1, 1), tw;
                assert_int_equal(vlm_tensor_from_host(be, &desc, wq, &tw), 0);
                struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n_in, n_tok, x);
                struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n_out, n_tok, NULL);
                vlm_op_matmul(be, &td, &tw, &tx);
                float *got = tensor_read_f32(&td);
                char what[64];
                snprintf(what, sizeof what, "matmul %s n_tok=%lld", tt->name, (long long)n_tok);
                double e = check_close(what, ii, bi, got, ref, n_out * n_tok, matmul_tol(ct->vec_dot_type) * rms, 0.0);
                worst_rel = e / rms > worst_rel ? e / rms : worst_rel;
                if (strict) {
                    snprintf(what, sizeof what, "matmul %s n_tok=%lld (strict)", tt->name, (long long)n_tok);
                    // Q8_1 also stores d * sum(q) as fp16, which the kernel uses and to_float ignores.
                    double stol = ct->vec_dot_type == VLM_TYPE_Q8_1 ? 2e-4 : 2e-5;
                    double es = check_close(what, ii, bi, got, strict, n_out * n_tok, stol * rms, 0.0);
                    worst_strict = es / rms > worst_strict ? es / rms : worst_strict;
                }
                free(got);
                vlm_tensor_release(&tx);
                vlm_tensor_release(&td);
                vlm_tensor_release(&tw);
                cases++;
            }
            free(strict);
            free(x);
            free(ref);
        }
        printf("matmul %-6s n_in=%-4lld   max err/rms %.2e vs exact (tol %.1e), %.2e vs same-rounding ref, "
               "%d cases\n",
               tt->name, (long long)n_in, worst_rel,
               matmul_tol(vlm__cpu_type_traits((enum vlm_type)type)->vec_dot_type), worst_strict, cases);
        free(wq);
        free(wf);
        n_types++;
    }
    assert_true(n_types >= 3);
}

// Packed weights (kernels/cpu/repack.h): a Q4_0 weight handed over with vlm_tensor_from_host gets a packed copy
// on AVX-512 machines. Checked on every path against the scalar dot of the original bytes: whole tensors (16-row
// groups plus leftover rows), views of the first rows (found through the same data pointer), views that start
// later (plain kernels), and a buffer released and refilled with other weights at the same address (the packed
// copy must not go stale).
static void matmul_check_scalar(struct vlm_backend *be, const char *what, int ii, int bi, const struct vlm_tensor *tw,
                                const unsigned char *wq, int64_t n_tok) {
    const int64_t n_in = tw->ne[0], n_out = tw->ne[1];
    const struct vlm_cpu_type_traits *sc = vlm__cpu_type_traits_isa(VLM_TYPE_Q4_0, VLM_CPU_ISA_SCALAR);
    const size_t wrow = vlm_row_size(VLM_TYPE_Q4_0, n_in), xrow = vlm_row_size(VLM_TYPE_Q8_0, n_in);
    float *x = rand_vec(n_in * n_tok, -1.0f, 1.0f);
    double *ref = dvec(n_out * n_tok);
    unsigned char *xq = malloc(xrow);
    assert_non_null(xq);
    double ms = 0.0;
    for (int64_t t = 0; t < n_tok; t++) {
        sc->from_float(x + t * n_in, xq, n_in);
        for (int64_t o = 0; o < n_out; o++) {
            float v;
            sc->vec_dot(n_in, &v, wq + (size_t)o * wrow, xq);
            ref[t * n_out + o] = v;
            ms += (double)v * v;
        }
    }
    struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n_in, n_tok, x);
    struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n_out, n_tok, NULL);
    vlm_op_matmul(be, &td, tw, &tx);
    float *got = tensor_read_f32(&td);
    check_close(what, ii, bi, got, ref, n_out * n_tok, 2e-5 * sqrt(ms / (double)(n_out * n_tok)), 0.0);
    free(got);
    free(xq);
    free(x);
    free(ref);
    vlm_tensor_release(&tx);
    vlm_tensor_release(&td);
}

static void test_matmul_packed(void **state) {
    (void)state;
    const int64_t n_in = 8 * 32, n_out = 83;
    const size_t bytes = vlm_row_size(VLM_TYPE_Q4_0, n_in) * (size_t)n_out;
    int cases = 0;
    FOR_EACH_CONFIG(ii, bi) {
        struct vlm_backend *be = g_be[bi];
        unsigned char *wq = make_weights(VLM_TYPE_Q4_0, n_in, n_out);
        struct vlm_tensor desc = vlm_tensor_make(VLM_TYPE_Q4_0, n_in, n_out, 1, 1), tw;
        assert_int_equal(vlm_tensor_from_host(be, &desc, wq, &tw), 0);
        // the packed copy exists and is used exactly where the AVX-512 kernels run
        const char *env = getenv("VLM_CPU_REPACK");
        const bool want = g_isas[ii] == VLM_CPU_ISA_AVX512 && !(env && strcmp(env, "0") == 0);
        struct vlm_cpu_packed pk;
        assert_int_equal(vlm__cpu_packed_find(be, &tw, &pk), want);
        if (want) {
            assert_int_equal(pk.n_groups, n_out / VLM_PACK_ROWS);
            struct vlm_tensor v = vlm_tensor_rows(&tw, 16, 16);
            assert_false(vlm__cpu_packed_find(be, &v, &pk));
            v = vlm_tensor_rows(&tw, 0, 40);
            assert_true(vlm__cpu_packed_find(be, &v, &pk));
            assert_int_equal(pk.n_groups, 2);
        }
        const int64_t toks[] = {1, 3, 70};
        for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
            matmul_check_scalar(be, "packed Q4_0 whole", ii, bi, &tw, wq, toks[k]);
            struct vlm_tensor head = vlm_tensor_rows(&tw, 0, 40);
            matmul_check_scalar(be, "packed Q4_0 view of rows 0..39", ii, bi, &head, wq, toks[k]);
            struct vlm_tensor mid = vlm_tensor_rows(&tw, 16, 50);
            matmul_check_scalar(be, "packed Q4_0 view of rows 16..65", ii, bi, &mid,
                                wq + 16 * vlm_row_size(VLM_TYPE_Q4_0, n_in), toks[k]);
            cases += 3;
        }
        const struct vlm_tensor before = tw;
        vlm_tensor_release(&tw);
        assert_false(vlm__cpu_packed_find(be, &before, &pk)); // released: the copy is gone
        // other weights in the same buffer: what the next from_host packs, and all the matmul may see
        unsigned char *other = make_weights(VLM_TYPE_Q4_0, n_in, n_out);
        memcpy(wq, other, bytes);
        free(other);
        assert_int_equal(vlm_tensor_from_host(be, &desc, wq, &tw), 0);
        matmul_check_scalar(be, "packed Q4_0 after refill", ii, bi, &tw, wq, 5);
        vlm_tensor_release(&tw);
        free(wq);
        cases++;
    }
    print_message("packed Q4_0 matmul: %d cases\n", cases);
}

// BF16 precision (vlm_tensor_set_precision): F32 and F16 weights get a BF16 x16 copy where the CPU has AVX512-BF16
// on the AVX-512 path, BF16 weights get one at vlm_tensor_from_host. The product must then equal the exact sum of
// BF16-rounded weights times BF16-rounded activations (up to F32 accumulation), and must differ from the exact
// product of the stored weights by about BF16's rounding (so the check sees which path ran). Odd row lengths,
// partial last groups, views of the first rows (same copy, fewer rows), a view that starts later (exact path),
// switching back to exact, and paths without the instruction (EUNSUPPORTED, exact products).
static double bf16r(double v) {
    return (double)vlm_bf16_to_fp32(vlm_fp32_to_bf16((float)v));
}

static double stored(enum vlm_type type, const void *w, size_t i) {
    switch (type) {
    case VLM_TYPE_F16: return (double)vlm_fp16_to_fp32(((const uint16_t *)w)[i]);
    case VLM_TYPE_BF16: return (double)vlm_bf16_to_fp32(((const uint16_t *)w)[i]);
    default: return (double)((const float *)w)[i];
    }
}

// max |got - ref| / rms(ref) against the BF16 (bf16 = true) or exact reference of rows [row0, row0 + n_out).
static double rel_err_vs(const float *got, const void *w, enum vlm_type type, const float *x, int64_t n_in,
                         int64_t row0, int64_t n_out, int64_t n_tok, bool bf16) {
    double max_err = 0.0, ms = 0.0;
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t o = 0; o < n_out; o++) {
            double ref = 0.0;
            for (int64_t i = 0; i < n_in; i++) {
                double wv = stored(type, w, (size_t)((row0 + o) * n_in + i)), xv = x[t * n_in + i];
                ref += bf16 ? bf16r(wv) * bf16r(xv) : wv * (type == VLM_TYPE_BF16 ? bf16r(xv) : xv);
            }
            double err = fabs((double)got[t * n_out + o] - ref);
            max_err = err > max_err ? err : max_err;
            ms += ref * ref;
        }
    }
    return max_err / sqrt(ms / (double)(n_out * n_tok));
}

static void test_matmul_bf16_precision(void **state) {
    (void)state;
    const enum vlm_type types[] = {VLM_TYPE_F32, VLM_TYPE_F16, VLM_TYPE_BF16};
    const int64_t shapes[][2] = {{64, 83}, {31, 16}, {1024, 40}}; // n_in, n_out
    const int64_t toks[] = {1, 5, 13};
    int cases = 0, packed_cases = 0;
    double worst_bf16 = 0.0, least_exact = 1e9;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t n_in = shapes[si][0], n_out = shapes[si][1];
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                const enum vlm_type type = types[ti];
                void *w = make_weights(type, n_in, n_out);
                struct vlm_tensor desc = vlm_tensor_make(type, n_in, n_out, 1, 1), tw;
                assert_int_equal(vlm_tensor_from_host(be, &desc, w, &tw), 0);
                const char *env = getenv("VLM_CPU_REPACK");
                const bool can = g_isas[ii] == VLM_CPU_ISA_AVX512 && vlm__cpu_bf16_dot() &&
                                 !(env && strcmp(env, "0") == 0);
                assert_int_equal(vlm_backend_fast_bf16(be), g_isas[ii] == VLM_CPU_ISA_AVX512 && vlm__cpu_bf16_dot());
                int rc = vlm_tensor_set_precision(be, &tw, VLM_PRECISION_BF16);
                assert_int_equal(rc, can || type == VLM_TYPE_BF16 ? 0 : VLM_EUNSUPPORTED);
                struct vlm_cpu_packed pk;
                assert_int_equal(vlm__cpu_packed_find(be, &tw, &pk), can);
                // BF16 weights always have BF16 products (their activations are rounded on every path)
                const bool want_bf16 = can || type == VLM_TYPE_BF16;
                for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
                    const int64_t n_tok = toks[k];
                    float *x = rand_vec(n_in * n_tok, -1.0f, 1.0f);
                    struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n_in, n_tok, x);
                    // whole, first rows (a partial last group of the same copy), rows from 16 on (no copy)
                    const int64_t views[][2] = {{0, n_out}, {0, n_out > 20 ? 20 : n_out}, {n_out > 16 ? 16 : 0,
                                                                                          n_out > 16 ? n_out - 16 : n_out}};
                    for (int v = 0; v < 3; v++) {
                        struct vlm_tensor tv = vlm_tensor_rows(&tw, views[v][0], views[v][1]);
                        struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, views[v][1], n_tok, NULL);
                        vlm_op_matmul(be, &td, &tv, &tx);
                        float *got = tensor_read_f32(&td);
                        const bool bf16 = type == VLM_TYPE_BF16 || (want_bf16 && views[v][0] == 0);
                        double e_b = rel_err_vs(got, w, type, x, n_in, views[v][0], views[v][1], n_tok, true);
                        double e_x = rel_err_vs(got, w, type, x, n_in, views[v][0], views[v][1], n_tok, false);
                        double e_own = bf16 ? e_b : e_x;
                        if (!(e_own < 2e-6 * sqrt((double)n_in))) {
                            fail_msg("%s %lldx%lld view %d, %lld tokens [%s, %d threads]: error %.3g vs the %s "
                                     "reference", vlm_type_name(type), (long long)n_in, (long long)n_out, v,
                                     (long long)n_tok, vlm__cpu_isa_name(g_isas[ii]), bi + 1, e_own,
                                     bf16 ? "BF16" : "exact");
                        }
                        if (bf16 && type != VLM_TYPE_BF16) {
                            // the other reference is a whole BF16 rounding away: proves the BF16 copy ran
                            assert_true(e_x > 20 * e_b);
                            least_exact = e_x < least_exact ? e_x : least_exact;
                            packed_cases++;
                        }
                        if (bf16) {
                            worst_bf16 = e_b > worst_bf16 ? e_b : worst_bf16;
                        }
                        free(got);
                        vlm_tensor_release(&td);
                        cases++;
                    }
                    // back to exact: the copy is dropped and the products are the stored weights' again
                    if (k == 0 && type != VLM_TYPE_BF16) {
                        assert_int_equal(vlm_tensor_set_precision(be, &tw, VLM_PRECISION_EXACT), 0);
                        assert_false(vlm__cpu_packed_find(be, &tw, &pk));
                        struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, n_out, n_tok, NULL);
                        vlm_op_matmul(be, &td, &tw, &tx);
                        float *got = tensor_read_f32(&td);
                        assert_true(rel_err_vs(got, w, type, x, n_in, 0, n_out, n_tok, false) < 2e-6 * sqrt((double)n_in));
                        free(got);
                        vlm_tensor_release(&td);
                        assert_int_equal(vlm_tensor_set_precision(be, &tw, VLM_PRECISION_BF16),
                                         can ? 0 : VLM_EUNSUPPORTED);
                    }
                    vlm_tensor_release(&tx);
                    free(x);
                }
                const struct vlm_tensor before = tw;
                vlm_tensor_release(&tw);
                assert_false(vlm__cpu_packed_find(be, &before, &pk));
                free(w);
            }
        }
    }
    print_message("BF16 precision matmul: %d cases (%d through a BF16 copy of F32/F16 weights); worst error vs "
                  "the BF16 reference %.2e of rms, least vs the exact one %.2e\n",
                  cases, packed_cases, worst_bf16, least_exact);
    if (vlm__cpu_bf16_dot() || vlm__cpu_isa_best() < VLM_CPU_ISA_AVX512) {
        return;
    }
    print_message("(this CPU has no AVX512-BF16: only the fallbacks were checked)\n");
}

// vlm_op_matmul_bias = vlm_op_matmul + the bias on every row, on the packed BF16 kernel (bias added at the store),
// packed Q4_0 and the plain kernels (bias pass after), including a partial last group and one token.
static void test_matmul_bias(void **state) {
    (void)state;
    const enum vlm_type types[] = {VLM_TYPE_F32, VLM_TYPE_F16, VLM_TYPE_BF16, VLM_TYPE_Q4_0};
    const int64_t n_in = 64, n_out = 37, toks[] = {1, 9};
    int cases = 0;
    double worst = 0.0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        for (int prec = 0; prec < 2; prec++) {
            FOR_EACH_CONFIG(ii, bi) {
                struct vlm_backend *be = g_be[bi];
                void *w = make_weights(types[ti], n_in, n_out);
                struct vlm_tensor desc = vlm_tensor_make(types[ti], n_in, n_out, 1, 1), tw;
                assert_int_equal(vlm_tensor_from_host(be, &desc, w, &tw), 0);
                if (prec) {
                    (void)vlm_tensor_set_precision(be, &tw, VLM_PRECISION_BF16); // where it can
                }
                float *b = rand_vec(n_out, -2.0f, 2.0f);
                struct vlm_tensor tb = tensor_new(be, VLM_TYPE_F32, n_out, 1, b);
                for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
                    float *x = rand_vec(n_in * toks[k], -1.0f, 1.0f);
                    struct vlm_tensor tx = tensor_new(be, VLM_TYPE_F32, n_in, toks[k], x);
                    struct vlm_tensor t0 = tensor_new(be, VLM_TYPE_F32, n_out, toks[k], NULL);
                    struct vlm_tensor t1 = tensor_new(be, VLM_TYPE_F32, n_out, toks[k], NULL);
                    vlm_op_matmul(be, &t0, &tw, &tx);
                    vlm_op_matmul_bias(be, &t1, &tw, &tx, &tb);
                    float *p0 = tensor_read_f32(&t0), *p1 = tensor_read_f32(&t1);
                    double *ref = dvec(n_out * toks[k]);
                    for (int64_t i = 0; i < n_out * toks[k]; i++) {
                        ref[i] = (double)p0[i] + (double)b[i % n_out];
                    }
                    worst = fmax(worst, check_close("matmul_bias", ii, bi, p1, ref, n_out * toks[k], 1e-5, 1e-6));
                    free(ref);
                    free(p0);
                    free(p1);
                    free(x);
                    vlm_tensor_release(&tx);
                    vlm_tensor_release(&t0);
                    vlm_tensor_release(&t1);
                    cases++;
                }
                vlm_tensor_release(&tb);
                vlm_tensor_release(&tw);
                free(b);
                free(w);
            }
        }
    }
    report("matmul_bias", worst, cases);
}

// ---- attention -----------------------------------------------------------------------------------------------

static void test_attention(void **state) {
    (void)state;
    struct {
        int32_t n_head, n_head_kv, head_dim, pos0, n_tok, n_ctx, window;
        bool causal;
        enum vlm_type kv_type;
    } cfgs[] = {
        {4, 2, 20, 7, 5, 16, 0, true, VLM_TYPE_F32},    // GQA, prefill after a prefix
        {4, 2, 20, 7, 5, 16, 4, true, VLM_TYPE_F16},    // + sliding window, F16 cache
        {8, 2, 64, 300, 1, 400, 0, true, VLM_TYPE_F16}, // decode step
        {6, 3, 33, 0, 40, 48, 16, true, VLM_TYPE_F32},  // prefill from 0 with a window
        {3, 3, 17, 0, 50, 50, 0, false, VLM_TYPE_F32},  // vision encoder: no mask
        {4, 2, 64, 0, 77, 83, 0, false, VLM_TYPE_F32},  // head size 64, no mask: the blocked ViT kernel (AVX-512)
        {3, 3, 64, 0, 133, 130, 0, false, VLM_TYPE_F32}, // ... with a tail of queries and keys
        {2, 1, 64, 0, 5, 200, 0, false, VLM_TYPE_F32},  // ... few queries, many keys
        {2, 1, 8, 30, 3, 40, 1, true, VLM_TYPE_F16},    // window 1: each query sees only itself
        {6, 2, 40, 10, 1, 64, 0, true, VLM_TYPE_F32},   // decode, group of 3 split unevenly across threads
        {5, 1, 16, 99, 1, 100, 50, true, VLM_TYPE_F16}, // decode, one KV head shared by 5 query heads
    };
    double worst = 0.0;
    int cases = 0;
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        int32_t nh = cfgs[c].n_head, nkv = cfgs[c].n_head_kv, hd = cfgs[c].head_dim, nt = cfgs[c].n_tok;
        int32_t n_ctx = cfgs[c].n_ctx;
        struct vlm_attention_params p = {
            .n_head = nh,
            .n_head_kv = nkv,
            .head_dim = hd,
            .pos0 = cfgs[c].pos0,
            .n_kv = cfgs[c].causal ? cfgs[c].pos0 + nt : n_ctx,
            .window = cfgs[c].window,
            .causal = cfgs[c].causal,
            .scale = 1.0f / sqrtf((float)hd),
        };
        int64_t qw = (int64_t)nh * hd, kw = (int64_t)nkv * hd;
        float *q = rand_vec(qw * nt, -1.5f, 1.5f), *kf = rand_vec(kw * n_ctx, -1.5f, 1.5f);
        float *vf = rand_vec(kw * n_ctx, -1.0f, 1.0f);
        // The cache as the op sees it (F16 rounding included), for the reference.
        if (cfgs[c].kv_type == VLM_TYPE_F16) {
            for (int64_t i = 0; i < kw * n_ctx; i++) {
                kf[i] = vlm_fp16_to_fp32(vlm_fp32_to_fp16(kf[i]));
                vf[i] = vlm_fp16_to_fp32(vlm_fp32_to_fp16(vf[i]));
            }
        }
        double *ref = dvec(qw * nt), *sc = dvec(n_ctx);
        for (int32_t t = 0; t < nt; t++) {
            int64_t pos = (int64_t)p.pos0 + t;
            for (int32_t h = 0; h < nh; h++) {
                int32_t g = h / (nh / nkv);
                double m = -INFINITY, sum = 0.0;
                for (int32_t j = 0; j < p.n_kv; j++) {
                    bool visible = (!p.causal || j <= pos) && (p.window == 0 || j > pos - p.window);
                    sc[j] = -INFINITY;
                    if (visible) {
                        double s = 0.0;
                        for (int32_t i = 0; i < hd; i++) {
                            s += (double)q[t * qw + h * hd + i] * kf[(int64_t)j * kw + g * hd + i];
                        }
                        sc[j] = s * p.scale;
                        m = fmax(m, sc[j]);
                    }
                }
                for (int32_t j = 0; j < p.n_kv; j++) {
                    sc[j] = sc[j] == -INFINITY ? 0.0 : exp(sc[j] - m);
                    sum += sc[j];
                }
                for (int32_t i = 0; i < hd; i++) {
                    double o = 0.0;
                    for (int32_t j = 0; j < p.n_kv; j++) {
                        o += sc[j] * vf[(int64_t)j * kw + g * hd + i];
                    }
                    ref[t * qw + h * hd + i] = o / sum;
                }
            }
        }
        FOR_EACH_CONFIG(ii, bi) {
            struct vlm_backend *be = g_be[bi];
            struct vlm_tensor tq = tensor_new(be, VLM_TYPE_F32, qw, nt, q);
            struct vlm_tensor tk = tensor_new(be, cfgs[c].kv_type, kw, n_ctx, NULL);
            struct vlm_tensor tv = tensor_new(be, cfgs[c].kv_type, kw, n_ctx, NULL);
            struct vlm_tensor tkf = tensor_new(be, VLM_TYPE_F32, kw, n_ctx, kf);
            struct vlm_tensor tvf = tensor_new(be, VLM_TYPE_F32, kw, n_ctx, vf);
            vlm_op_copy(be, &tk, &tkf); // fill the cache through the op the model uses
            vlm_op_copy(be, &tv, &tvf);
            struct vlm_tensor td = tensor_new(be, VLM_TYPE_F32, qw, nt, NULL);
            vlm_op_attention(be, &td, &tq, &tk, &tv, &p);
            float *got = tensor_read_f32(&td);
            char what[64];
            snprintf(what, sizeof what, "attention cfg %zu", c);
            double e = check_close(what, ii, bi, got, ref, qw * nt, 2e-6, 2e-5);
            worst = e > worst ? e : worst;
            free(got);
            // in place: dst aliases q
            vlm_op_attention(be, &tq, &tq, &tk, &tv, &p);
            got = tensor_read_f32(&tq);
            check_close(what, ii, bi, got, ref, qw * nt, 2e-6, 2e-5);
            free(got);
            vlm_tensor_release(&tq);
            vlm_tensor_release(&tk);
            vlm_tensor_release(&tv);
            vlm_tensor_release(&tkf);
            vlm_tensor_release(&tvf);
            vlm_tensor_release(&td);
            cases++;
        }
        free(q);
        free(kf);
        free(vf);
        free(ref);
        free(sc);
    }
    report("attention (GQA/window/F16)", worst, cases);
}

// ---- front door ----------------------------------------------------------------------------------------------

static void test_tensor_helpers(void **state) {
    (void)state;
    struct vlm_tensor t = vlm_tensor_make(VLM_TYPE_Q4_K, 512, 3, 2, 1);
    assert_int_equal(t.nb[0], 144);
    assert_int_equal(t.nb[1], 288);
    assert_int_equal(vlm_tensor_nrows(&t), 6);
    assert_int_equal(vlm_tensor_nelements(&t), 512 * 6);
    assert_int_equal(vlm_tensor_nbytes(&t), 288 * 6);
    assert_true(vlm_tensor_is_contiguous(&t));
    t.nb[2] += 16;
    assert_false(vlm_tensor_is_contiguous(&t));

    struct vlm_backend *be = g_be[0];
    assert_string_equal(vlm_backend_name(be), "cpu");
    assert_int_equal(vlm_backend_n_threads(be), 1);
    assert_int_equal(vlm_backend_n_threads(g_be[2]), 3);
    assert_int_equal(vlm_backend_synchronize(be), 0);
    assert_false(vlm_backend_supports_type(be, VLM_TYPE_I32));
    assert_false(vlm_backend_supports_type(be, (enum vlm_type)39));
    assert_true(vlm_backend_supports_type(be, VLM_TYPE_F32));

    struct vlm_tensor a = tensor_new(be, VLM_TYPE_F32, 5, 4, NULL);
    float z[20];
    assert_int_equal(vlm_tensor_get(&a, z, 0, sizeof z), 0); // zero-filled
    for (int i = 0; i < 20; i++) {
        assert_true(z[i] == 0.0f);
    }
    assert_int_equal(vlm_tensor_set(&a, z, 8, sizeof z), VLM_ERANGE);
    assert_int_equal(vlm_tensor_get(&a, z, 81, 0), VLM_ERANGE);
    struct vlm_tensor r = vlm_tensor_rows(&a, 1, 2);
    assert_ptr_equal(r.data, (char *)a.data + 20);
    assert_ptr_equal(r.backend, a.backend); // a view stays on its backend...
    assert_false(r.owns_data);              // ...but does not own the memory
    assert_true(a.owns_data);
    assert_int_equal(vlm_tensor_nbytes(&r), 40);
    float one[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    assert_int_equal(vlm_tensor_set(&r, one, 0, sizeof one), 0);
    assert_int_equal(vlm_tensor_get(&a, z, 0, sizeof z), 0);
    assert_true(z[4] == 0.0f && z[5] == 1.0f && z[14] == 10.0f && z[15] == 0.0f);
    vlm_tensor_release(&r); // a view: no-op
    assert_int_equal(vlm_tensor_get(&a, z, 0, sizeof z), 0); // still alive
    vlm_tensor_release(&a);
    assert_null(a.data);

    struct vlm_backend *cuda = NULL;
    struct vlm_diag diag = {0};
    int rc = vlm_backend_cuda_new(0, &cuda, &diag);
    if (rc == 0) {
        vlm_backend_free(cuda);
    } else {
        assert_true(rc == VLM_EUNSUPPORTED || rc == VLM_EINVAL);
        assert_int_equal(diag.code, rc);
    }
}

// A shape mismatch is a programmer error: the op must abort with file:line, not compute garbage.
static void test_shape_assert_aborts(void **state) {
    (void)state;
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 2);
        }
        struct vlm_backend *be = g_be[0];
        struct vlm_tensor a = tensor_new(be, VLM_TYPE_F32, 5, 4, NULL);
        struct vlm_tensor b = tensor_new(be, VLM_TYPE_F32, 6, 4, NULL);
        vlm_op_add(be, &a, &a, &b);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_helpers), cmocka_unit_test(test_shape_assert_aborts),
        cmocka_unit_test(test_rms_norm),       cmocka_unit_test(test_layer_norm),
        cmocka_unit_test(test_elementwise),    cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_rope),           cmocka_unit_test(test_copy),
        cmocka_unit_test(test_get_rows),       cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_packed),  cmocka_unit_test(test_matmul_bf16_precision),
        cmocka_unit_test(test_matmul_bias),
        cmocka_unit_test(test_attention),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
