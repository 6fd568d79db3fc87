// Scalar reference vector kernels and the run-time choice among the ISA paths.
#include <math.h>

#include "kernels/cpu/ops-cpu.h"
#include "kernels/cpu/quants.h"

static float dot_f32(int64_t n, const float *x, const float *y) {
    float acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        for (int k = 0; k < 4; k++) {
            acc[k] += x[i + k] * y[i + k];
        }
    }
    for (; i < n; i++) {
        acc[0] += x[i] * y[i];
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static float dot_f16(int64_t n, const float *x, const uint16_t *y) {
    float acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        for (int k = 0; k < 4; k++) {
            acc[k] += x[i + k] * vlm_fp16_to_fp32(y[i + k]);
        }
    }
    for (; i < n; i++) {
        acc[0] += x[i] * vlm_fp16_to_fp32(y[i]);
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static void axpy_f32(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) {
        y[i] += a * x[i];
    }
}

static void axpy_f16(int64_t n, float a, const uint16_t *x, float *y) {
    for (int64_t i = 0; i < n; i++) {
        y[i] += a * vlm_fp16_to_fp32(x[i]);
    }
}

static float vmax(int64_t n, const float *x) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        m = x[i] > m ? x[i] : m;
    }
    return m;
}

static float vsum(int64_t n, const float *x) {
    float acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        for (int k = 0; k < 4; k++) {
            acc[k] += x[i + k];
        }
    }
    for (; i < n; i++) {
        acc[0] += x[i];
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static float sum_sq(int64_t n, const float *x) {
    return dot_f32(n, x, x);
}

static float exp_sum(int64_t n, float *x, float scale, float sub) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float e = expf(x[i] * scale - sub);
        x[i] = e;
        sum += e;
    }
    return sum;
}

static void silu(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) {
        y[i] = x[i] / (1.0f + expf(-x[i]));
    }
}

static void swiglu(int64_t n, const float *g, const float *u, float *y) {
    for (int64_t i = 0; i < n; i++) {
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

static void gelu_quick(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) {
        y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
    }
}

const struct vlm_cpu_vec vlm__cpu_vec_scalar = {
    .dot_f32 = dot_f32,
    .dot_f16 = dot_f16,
    .axpy_f32 = axpy_f32,
    .axpy_f16 = axpy_f16,
    .max = vmax,
    .sum = vsum,
    .sum_sq = sum_sq,
    .exp_sum = exp_sum,
    .silu = silu,
    .swiglu = swiglu,
    .gelu_quick = gelu_quick,
};

const struct vlm_cpu_vec *vlm__cpu_vec_get(void) {
#ifdef VLM_HAVE_X86
    switch (vlm__cpu_isa_get()) {
    case VLM_CPU_ISA_AVX512:
        return &vlm__cpu_vec_avx512;
    case VLM_CPU_ISA_AVX2:
        return &vlm__cpu_vec_avx2;
    case VLM_CPU_ISA_SCALAR:
        break;
    }
#endif
    return &vlm__cpu_vec_scalar;
}
