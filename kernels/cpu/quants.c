// CPU compute traits: instruction-set detection, the per-ISA trait tables, and the scalar dot products that
// define what every SIMD kernel must compute.
//
// Activation formats (as ggml, except F16): F32 -> F32; F16 -> F32 (weights are widened with F16C, so
// activations keep full precision and need no conversion); BF16 -> BF16 (AVX512-BF16 vdpbf16ps does 32
// products per instruction); Q4_0/Q5_0/Q8_0 -> Q8_0; Q4_1/Q5_1 -> Q8_1; K-quants -> Q8_K.
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant-ref.h"
#include "vlm/error.h"

#if defined(VLM_HAVE_X86)
#include <cpuid.h>
#endif

// =============================================================================================================
// Scalar dot products
// =============================================================================================================

void vlm__vec_dot_f32_scalar(int64_t n, float *s, const void *w, const void *x) {
    const float *a = w, *b = x;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)a[i] * (double)b[i];
    }
    *s = (float)sum;
}

void vlm__vec_dot_f16_scalar(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)vlm_fp16_to_fp32(a[i]) * (double)b[i];
    }
    *s = (float)sum;
}

void vlm__vec_dot_bf16_scalar(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w, *b = x;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)vlm_bf16_to_fp32(a[i]) * (double)vlm_bf16_to_fp32(b[i]);
    }
    *s = (float)sum;
}

void vlm__vec_dot_q4_0_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_0 *a = w;
    const struct vlm_block_q8_0 *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += ((a[i].qs[j] & 0x0f) - 8) * b[i].qs[j] + ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
        }
        sumf += (float)sumi * (vlm_fp16_to_fp32(a[i].d) * vlm_fp16_to_fp32(b[i].d));
    }
    *s = sumf;
}

void vlm__vec_dot_q4_1_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_1 *a = w;
    const struct vlm_block_q8_1 *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += (a[i].qs[j] & 0x0f) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + 16];
        }
        sumf += (float)sumi * (vlm_fp16_to_fp32(a[i].d) * vlm_fp16_to_fp32(b[i].d)) +
                vlm_fp16_to_fp32(a[i].m) * vlm_fp16_to_fp32(b[i].s);
    }
    *s = sumf;
}

static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void vlm__vec_dot_q5_0_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_0 *a = w;
    const struct vlm_block_q8_0 *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        const uint32_t qh = load_u32(a[i].qh);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            const int c0 = ((a[i].qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4) - 16;
            const int c1 = ((a[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4) - 16;
            sumi += c0 * b[i].qs[j] + c1 * b[i].qs[j + 16];
        }
        sumf += (float)sumi * (vlm_fp16_to_fp32(a[i].d) * vlm_fp16_to_fp32(b[i].d));
    }
    *s = sumf;
}

void vlm__vec_dot_q5_1_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_1 *a = w;
    const struct vlm_block_q8_1 *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK8_1; i++) {
        const uint32_t qh = load_u32(a[i].qh);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            const int c0 = (a[i].qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
            const int c1 = (a[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
            sumi += c0 * b[i].qs[j] + c1 * b[i].qs[j + 16];
        }
        sumf += (float)sumi * (vlm_fp16_to_fp32(a[i].d) * vlm_fp16_to_fp32(b[i].d)) +
                vlm_fp16_to_fp32(a[i].m) * vlm_fp16_to_fp32(b[i].s);
    }
    *s = sumf;
}

void vlm__vec_dot_q8_0_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q8_0 *a = w;
    const struct vlm_block_q8_0 *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < VLM_QK8_0; j++) {
            sumi += a[i].qs[j] * b[i].qs[j];
        }
        sumf += (float)sumi * (vlm_fp16_to_fp32(a[i].d) * vlm_fp16_to_fp32(b[i].d));
    }
    *s = sumf;
}

void vlm__vec_dot_q2_k_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q2_k *a = w;
    const struct vlm_block_q8_k *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const uint8_t *q2 = a[i].qs;
        const int8_t *q8 = b[i].qs;
        int summs = 0;
        for (int j = 0; j < 16; j++) {
            summs += b[i].bsums[j] * (a[i].scales[j] >> 4);
        }
        int isum = 0, is = 0;
        for (int half = 0; half < 2; half++) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int g = 0; g < 2; g++) {
                    int suml = 0;
                    for (int l = 0; l < 16; l++) {
                        suml += q8[l] * ((q2[16 * g + l] >> shift) & 3);
                    }
                    isum += (a[i].scales[is++] & 0x0f) * suml;
                    q8 += 16;
                }
            }
            q2 += 32;
        }
        const float dall = b[i].d * vlm_fp16_to_fp32(a[i].d);
        const float dmin = b[i].d * vlm_fp16_to_fp32(a[i].dmin);
        sumf += dall * (float)isum - dmin * (float)summs;
    }
    *s = sumf;
}

void vlm__vec_dot_q3_k_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q3_k *a = w;
    const struct vlm_block_q8_k *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        int sc[16];
        for (int k = 0; k < 4; k++) {
            const uint8_t *c = a[i].scales;
            sc[k] = ((c[k] & 15) | ((c[8 + k] >> 0) & 3) << 4) - 32;
            sc[4 + k] = ((c[4 + k] & 15) | ((c[8 + k] >> 2) & 3) << 4) - 32;
            sc[8 + k] = ((c[k] >> 4) | ((c[8 + k] >> 4) & 3) << 4) - 32;
            sc[12 + k] = ((c[4 + k] >> 4) | ((c[8 + k] >> 6) & 3) << 4) - 32;
        }
        const uint8_t *q3 = a[i].qs;
        const uint8_t *hm = a[i].hmask;
        const int8_t *q8 = b[i].qs;
        int isum = 0, is = 0;
        uint8_t m = 1;
        for (int half = 0; half < 2; half++) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int g = 0; g < 2; g++) {
                    int suml = 0;
                    for (int l = 0; l < 16; l++) {
                        const int v = ((q3[16 * g + l] >> shift) & 3) - ((hm[16 * g + l] & m) ? 0 : 4);
                        suml += q8[l] * v;
                    }
                    isum += sc[is++] * suml;
                    q8 += 16;
                }
                m = (uint8_t)(m << 1);
            }
            q3 += 32;
        }
        sumf += vlm_fp16_to_fp32(a[i].d) * b[i].d * (float)isum;
    }
    *s = sumf;
}

static void k4_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void vlm__vec_dot_q4_k_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_k *a = w;
    const struct vlm_block_q8_k *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const uint8_t *q4 = a[i].qs;
        const int8_t *q8 = b[i].qs;
        int isum = 0, summs = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(j, a[i].scales, &sc, &m);
            const int shift = (j & 1) * 4;
            int suml = 0;
            for (int l = 0; l < 32; l++) {
                suml += ((q4[32 * (j / 2) + l] >> shift) & 0x0f) * q8[32 * j + l];
            }
            isum += sc * suml;
            summs += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        }
        sumf += vlm_fp16_to_fp32(a[i].d) * b[i].d * (float)isum - vlm_fp16_to_fp32(a[i].dmin) * b[i].d * (float)summs;
    }
    *s = sumf;
}

void vlm__vec_dot_q5_k_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_k *a = w;
    const struct vlm_block_q8_k *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const uint8_t *q5 = a[i].qs;
        const uint8_t *qh = a[i].qh;
        const int8_t *q8 = b[i].qs;
        int isum = 0, summs = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(j, a[i].scales, &sc, &m);
            const int shift = (j & 1) * 4;
            int suml = 0;
            for (int l = 0; l < 32; l++) {
                const int v = ((q5[32 * (j / 2) + l] >> shift) & 0x0f) | ((qh[l] >> j) & 1) << 4;
                suml += v * q8[32 * j + l];
            }
            isum += sc * suml;
            summs += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        }
        sumf += vlm_fp16_to_fp32(a[i].d) * b[i].d * (float)isum - vlm_fp16_to_fp32(a[i].dmin) * b[i].d * (float)summs;
    }
    *s = sumf;
}

void vlm__vec_dot_q6_k_scalar(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q6_k *a = w;
    const struct vlm_block_q8_k *b = x;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const uint8_t *ql = a[i].ql;
        const uint8_t *qh = a[i].qh;
        const int8_t *q8 = b[i].qs;
        int isum = 0;
        for (int half = 0; half < 2; half++) {
            // 16-element groups: l in [16*g, 16*g+16) of each of the four 32-element outputs
            for (int g = 0; g < 2; g++) {
                int s1 = 0, s2 = 0, s3 = 0, s4 = 0;
                for (int l = 16 * g; l < 16 * g + 16; l++) {
                    const int q1 = ((ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4) - 32;
                    const int q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) - 32;
                    const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                    const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                    s1 += q1 * q8[l];
                    s2 += q2 * q8[l + 32];
                    s3 += q3 * q8[l + 64];
                    s4 += q4 * q8[l + 96];
                }
                const int8_t *sc = a[i].scales + 8 * half;
                isum += sc[g] * s1 + sc[g + 2] * s2 + sc[g + 4] * s3 + sc[g + 6] * s4;
            }
            ql += 64;
            qh += 32;
            q8 += 128;
        }
        sumf += vlm_fp16_to_fp32(a[i].d) * b[i].d * (float)isum;
    }
    *s = sumf;
}

// =============================================================================================================
// Trait tables
// =============================================================================================================

#define T(vdt, ff, vd, nx) {.vec_dot_type = (vdt), .from_float = (ff), .vec_dot = (vd), .vec_dot_nx = (nx)}

static const struct vlm_cpu_type_traits scalar_traits[VLM_TYPE_COUNT] = {
    [VLM_TYPE_F32] = T(VLM_TYPE_F32, NULL, vlm__vec_dot_f32_scalar, NULL),
    [VLM_TYPE_F16] = T(VLM_TYPE_F32, NULL, vlm__vec_dot_f16_scalar, NULL),
    [VLM_TYPE_BF16] = T(VLM_TYPE_BF16, vlm__quant_row_bf16_ref, vlm__vec_dot_bf16_scalar, NULL),
    [VLM_TYPE_Q4_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_ref, vlm__vec_dot_q4_0_scalar, NULL),
    [VLM_TYPE_Q4_1] = T(VLM_TYPE_Q8_1, vlm__quant_row_q8_1_ref, vlm__vec_dot_q4_1_scalar, NULL),
    [VLM_TYPE_Q5_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_ref, vlm__vec_dot_q5_0_scalar, NULL),
    [VLM_TYPE_Q5_1] = T(VLM_TYPE_Q8_1, vlm__quant_row_q8_1_ref, vlm__vec_dot_q5_1_scalar, NULL),
    [VLM_TYPE_Q8_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_ref, vlm__vec_dot_q8_0_scalar, NULL),
    [VLM_TYPE_Q2_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_ref, vlm__vec_dot_q2_k_scalar, NULL),
    [VLM_TYPE_Q3_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_ref, vlm__vec_dot_q3_k_scalar, NULL),
    [VLM_TYPE_Q4_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_ref, vlm__vec_dot_q4_k_scalar, NULL),
    [VLM_TYPE_Q5_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_ref, vlm__vec_dot_q5_k_scalar, NULL),
    [VLM_TYPE_Q6_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_ref, vlm__vec_dot_q6_k_scalar, NULL),
};

#if defined(VLM_HAVE_X86)
// Types without a kernel of their own on a path use the scalar one (same activation format, so a path's row is
// always self-consistent).
static const struct vlm_cpu_type_traits avx2_traits[VLM_TYPE_COUNT] = {
    [VLM_TYPE_F32] = T(VLM_TYPE_F32, NULL, vlm__vec_dot_f32_avx2, vlm__vec_dot_f32_nx_avx2),
    [VLM_TYPE_F16] = T(VLM_TYPE_F32, NULL, vlm__vec_dot_f16_avx2, vlm__vec_dot_f16_nx_avx2),
    [VLM_TYPE_BF16] = T(VLM_TYPE_BF16, vlm__quant_row_bf16_avx2, vlm__vec_dot_bf16_avx2, NULL),
    [VLM_TYPE_Q4_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_avx2, vlm__vec_dot_q4_0_avx2, vlm__vec_dot_q4_0_nx_avx2),
    [VLM_TYPE_Q4_1] = T(VLM_TYPE_Q8_1, vlm__quant_row_q8_1_avx2, vlm__vec_dot_q4_1_avx2, NULL),
    [VLM_TYPE_Q5_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_avx2, vlm__vec_dot_q5_0_avx2, vlm__vec_dot_q5_0_nx_avx2),
    [VLM_TYPE_Q5_1] = T(VLM_TYPE_Q8_1, vlm__quant_row_q8_1_avx2, vlm__vec_dot_q5_1_avx2, NULL),
    [VLM_TYPE_Q8_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_avx2, vlm__vec_dot_q8_0_avx2, vlm__vec_dot_q8_0_nx_avx2),
    [VLM_TYPE_Q2_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx2, vlm__vec_dot_q2_k_scalar, NULL),
    [VLM_TYPE_Q3_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx2, vlm__vec_dot_q3_k_scalar, NULL),
    [VLM_TYPE_Q4_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx2, vlm__vec_dot_q4_k_avx2, NULL),
    [VLM_TYPE_Q5_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx2, vlm__vec_dot_q5_k_avx2, NULL),
    [VLM_TYPE_Q6_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx2, vlm__vec_dot_q6_k_avx2, NULL),
};

static const struct vlm_cpu_type_traits avx512_traits[VLM_TYPE_COUNT] = {
    [VLM_TYPE_F32] = T(VLM_TYPE_F32, NULL, vlm__vec_dot_f32_avx512, vlm__vec_dot_f32_nx_avx512),
    [VLM_TYPE_F16] = T(VLM_TYPE_F32, NULL, vlm__vec_dot_f16_avx512, vlm__vec_dot_f16_nx_avx512),
    [VLM_TYPE_BF16] = T(VLM_TYPE_BF16, vlm__quant_row_bf16_avx512, vlm__vec_dot_bf16_avx512,
        vlm__vec_dot_bf16_nx_avx512),
    [VLM_TYPE_Q4_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_avx512, vlm__vec_dot_q4_0_avx512,
        vlm__vec_dot_q4_0_nx_avx512),
    [VLM_TYPE_Q4_1] = T(VLM_TYPE_Q8_1, vlm__quant_row_q8_1_avx512, vlm__vec_dot_q4_1_avx512,
        vlm__vec_dot_q4_1_nx_avx512),
    [VLM_TYPE_Q5_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_avx512, vlm__vec_dot_q5_0_avx512,
        vlm__vec_dot_q5_0_nx_avx512),
    [VLM_TYPE_Q5_1] = T(VLM_TYPE_Q8_1, vlm__quant_row_q8_1_avx512, vlm__vec_dot_q5_1_avx512,
        vlm__vec_dot_q5_1_nx_avx512),
    [VLM_TYPE_Q8_0] = T(VLM_TYPE_Q8_0, vlm__quant_row_q8_0_avx512, vlm__vec_dot_q8_0_avx512,
        vlm__vec_dot_q8_0_nx_avx512),
    [VLM_TYPE_Q2_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx512, vlm__vec_dot_q2_k_scalar, NULL),
    [VLM_TYPE_Q3_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx512, vlm__vec_dot_q3_k_scalar, NULL),
    [VLM_TYPE_Q4_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx512, vlm__vec_dot_q4_k_avx512,
        vlm__vec_dot_q4_k_nx_avx512),
    [VLM_TYPE_Q5_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx512, vlm__vec_dot_q5_k_avx512,
        vlm__vec_dot_q5_k_nx_avx512),
    [VLM_TYPE_Q6_K] = T(VLM_TYPE_Q8_K, vlm__quant_row_q8_k_avx512, vlm__vec_dot_q6_k_avx512,
        vlm__vec_dot_q6_k_nx_avx512),
};

// AVX-512 without the BF16 extension: BF16 rows fall back to the AVX2 kernel.
static const struct vlm_cpu_type_traits avx512_nobf16_bf16 =
    T(VLM_TYPE_BF16, vlm__quant_row_bf16_avx512, vlm__vec_dot_bf16_avx2, NULL);
#endif

#undef T

// =============================================================================================================
// ISA detection
// =============================================================================================================

static int detected_best = -1;
static bool detected_bf16;
static atomic_int isa_current = -1;

#if defined(VLM_HAVE_X86)
static uint64_t read_xcr0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t)edx << 32 | eax;
}
#endif

static void detect(void) {
    int best = VLM_CPU_ISA_SCALAR;
    bool bf16 = false;
#if defined(VLM_HAVE_X86)
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    // The OS must save the YMM/ZMM state on context switches, or the registers are unusable (XCR0 bits).
    bool osxsave = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_OSXSAVE);
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    bool ymm_os = (xcr0 & 0x6) == 0x6;
    bool zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (ymm_os && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C)) {
        best = VLM_CPU_ISA_AVX2;
        if (zmm_os && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vnni")) {
            best = VLM_CPU_ISA_AVX512;
            bf16 = __builtin_cpu_supports("avx512bf16");
        }
    }
#endif
    detected_bf16 = bf16;
    detected_best = best;
}

enum vlm_cpu_isa vlm__cpu_isa_best(void) {
    // Every thread computes the same answer, so a racing first call only repeats work.
    static atomic_int best = -1;
    int b = atomic_load(&best);
    if (b < 0) {
        detect();
        b = detected_best;
        atomic_store(&best, b);
    }
    return (enum vlm_cpu_isa)b;
}

#if defined(VLM_HAVE_X86)
bool vlm__cpu_has_bf16(void) {
    vlm__cpu_isa_best();
    return detected_bf16;
}
#endif

enum vlm_cpu_isa vlm__cpu_isa_get(void) {
    int cur = atomic_load(&isa_current);
    if (cur >= 0) {
        return (enum vlm_cpu_isa)cur;
    }
    int isa = (int)vlm__cpu_isa_best();
    const char *env = getenv("VLM_CPU_ISA");
    if (env) {
        int cap = isa;
        if (strcmp(env, "scalar") == 0) {
            cap = VLM_CPU_ISA_SCALAR;
        } else if (strcmp(env, "avx2") == 0) {
            cap = VLM_CPU_ISA_AVX2;
        } else if (strcmp(env, "avx512") == 0) {
            cap = VLM_CPU_ISA_AVX512;
        }
        isa = cap < isa ? cap : isa;
    }
    int expected = -1;
    atomic_compare_exchange_strong(&isa_current, &expected, isa);
    return (enum vlm_cpu_isa)atomic_load(&isa_current);
}

int vlm__cpu_isa_set(enum vlm_cpu_isa isa) {
    if ((int)isa < VLM_CPU_ISA_SCALAR || (int)isa > VLM_CPU_ISA_AVX512 || (int)isa > (int)vlm__cpu_isa_best()) {
        return VLM_EUNSUPPORTED;
    }
    atomic_store(&isa_current, (int)isa);
    return 0;
}

const char *vlm__cpu_isa_name(enum vlm_cpu_isa isa) {
    switch (isa) {
    case VLM_CPU_ISA_SCALAR:
        return "scalar";
    case VLM_CPU_ISA_AVX2:
        return "avx2";
    case VLM_CPU_ISA_AVX512:
        return "avx512";
    }
    return "?";
}

const struct vlm_cpu_type_traits *vlm__cpu_type_traits_isa(enum vlm_type type, enum vlm_cpu_isa isa) {
    if ((int)type < 0 || (int)type >= VLM_TYPE_COUNT || (int)isa > (int)vlm__cpu_isa_best()) {
        return NULL;
    }
    const struct vlm_cpu_type_traits *t = NULL;
    switch (isa) {
    case VLM_CPU_ISA_SCALAR:
        t = &scalar_traits[type];
        break;
#if defined(VLM_HAVE_X86)
    case VLM_CPU_ISA_AVX2:
        t = &avx2_traits[type];
        break;
    case VLM_CPU_ISA_AVX512:
        t = (type == VLM_TYPE_BF16 && !vlm__cpu_has_bf16()) ? &avx512_nobf16_bf16 : &avx512_traits[type];
        break;
#endif
    default:
        return NULL;
    }
    return t->vec_dot ? t : NULL;
}

const struct vlm_cpu_type_traits *vlm__cpu_type_traits(enum vlm_type type) {
    return vlm__cpu_type_traits_isa(type, vlm__cpu_isa_get());
}
