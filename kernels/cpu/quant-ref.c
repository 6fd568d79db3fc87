// Reference converters between float and every block format we read or produce. Plain C, one element at a
// time, written to be checked against ggml's dequantize_row_* / quantize_row_*_ref by eye; the SIMD paths and
// the golden vectors in tests/data/quants are tested against these.
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/quant-ref.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

// ggml's nearest_int: round half to even through the float mantissa; valid for |f| <= 4194303.
static inline int nearest_int(float f) {
    float val = f + 12582912.f;
    int32_t i;
    memcpy(&i, &val, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

// =============================================================================================================
// Dequantizers
// =============================================================================================================

void vlm__dequant_row_f32(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void vlm__dequant_row_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = vlm_fp16_to_fp32(x[i]);
    }
}

void vlm__dequant_row_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = vlm_bf16_to_fp32(x[i]);
    }
}

void vlm__dequant_row_q4_0(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q4_0 *x = src;
    for (int64_t i = 0; i < n / VLM_QK4_0; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        for (int j = 0; j < VLM_QK4_0 / 2; j++) {
            dst[j] = d * (float)((x[i].qs[j] & 0x0f) - 8);
            dst[j + VLM_QK4_0 / 2] = d * (float)((x[i].qs[j] >> 4) - 8);
        }
        dst += VLM_QK4_0;
    }
}

void vlm__dequant_row_q4_1(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q4_1 *x = src;
    for (int64_t i = 0; i < n / VLM_QK4_1; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const float m = vlm_fp16_to_fp32(x[i].m);
        for (int j = 0; j < VLM_QK4_1 / 2; j++) {
            dst[j] = d * (float)(x[i].qs[j] & 0x0f) + m;
            dst[j + VLM_QK4_1 / 2] = d * (float)(x[i].qs[j] >> 4) + m;
        }
        dst += VLM_QK4_1;
    }
}

static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void vlm__dequant_row_q5_0(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q5_0 *x = src;
    for (int64_t i = 0; i < n / VLM_QK5_0; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < VLM_QK5_0 / 2; j++) {
            const int c0 = (x[i].qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
            const int c1 = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
            dst[j] = d * (float)(c0 - 16);
            dst[j + VLM_QK5_0 / 2] = d * (float)(c1 - 16);
        }
        dst += VLM_QK5_0;
    }
}

void vlm__dequant_row_q5_1(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q5_1 *x = src;
    for (int64_t i = 0; i < n / VLM_QK5_1; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const float m = vlm_fp16_to_fp32(x[i].m);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < VLM_QK5_1 / 2; j++) {
            const int c0 = (x[i].qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
            const int c1 = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
            dst[j] = d * (float)c0 + m;
            dst[j + VLM_QK5_1 / 2] = d * (float)c1 + m;
        }
        dst += VLM_QK5_1;
    }
}

void vlm__dequant_row_q8_0(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q8_0 *x = src;
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        for (int j = 0; j < VLM_QK8_0; j++) {
            dst[j] = d * (float)x[i].qs[j];
        }
        dst += VLM_QK8_0;
    }
}

void vlm__dequant_row_q8_1(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q8_1 *x = src;
    for (int64_t i = 0; i < n / VLM_QK8_1; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        for (int j = 0; j < VLM_QK8_1; j++) {
            dst[j] = d * (float)x[i].qs[j];
        }
        dst += VLM_QK8_1;
    }
}

void vlm__dequant_row_q2_k(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q2_k *x = src;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const float dmin = vlm_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int half = 0; half < 2; half++) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int g = 0; g < 2; g++) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (float)(sc & 0x0f);
                    const float ml = dmin * (float)(sc >> 4);
                    for (int l = 0; l < 16; l++) {
                        *dst++ = dl * (float)((q[16 * g + l] >> shift) & 3) - ml;
                    }
                }
            }
            q += 32;
        }
    }
}

// Unpacks Q3_K's 12 scale bytes into 16 signed 6-bit scales.
static void q3_k_scales(const uint8_t *b, int *s) {
    for (int k = 0; k < 4; k++) {
        s[k] = ((b[k] & 15) | ((b[8 + k] >> 0) & 3) << 4) - 32;
        s[4 + k] = ((b[4 + k] & 15) | ((b[8 + k] >> 2) & 3) << 4) - 32;
        s[8 + k] = ((b[k] >> 4) | ((b[8 + k] >> 4) & 3) << 4) - 32;
        s[12 + k] = ((b[4 + k] >> 4) | ((b[8 + k] >> 6) & 3) << 4) - 32;
    }
}

void vlm__dequant_row_q3_k(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q3_k *x = src;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float d_all = vlm_fp16_to_fp32(x[i].d);
        int sc[16];
        q3_k_scales(x[i].scales, sc);
        const uint8_t *q = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int half = 0; half < 2; half++) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int g = 0; g < 2; g++) {
                    const float dl = d_all * (float)sc[is++];
                    for (int l = 0; l < 16; l++) {
                        const int v = ((q[16 * g + l] >> shift) & 3) - ((hm[16 * g + l] & m) ? 0 : 4);
                        *dst++ = dl * (float)v;
                    }
                }
                m = (uint8_t)(m << 1);
            }
            q += 32;
        }
    }
}

// 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block.
static void k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void vlm__dequant_row_q4_k(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q4_k *x = src;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const float dmin = vlm_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int c = 0; c < 4; c++) {
            uint8_t sc, m;
            k4_scale_min(2 * c, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            k4_scale_min(2 * c + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                *dst++ = d1 * (float)(q[l] & 0x0f) - m1;
            }
            for (int l = 0; l < 32; l++) {
                *dst++ = d2 * (float)(q[l] >> 4) - m2;
            }
            q += 32;
        }
    }
}

void vlm__dequant_row_q5_k(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q5_k *x = src;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const float dmin = vlm_fp16_to_fp32(x[i].dmin);
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        for (int c = 0; c < 4; c++) {
            uint8_t sc, m;
            k4_scale_min(2 * c, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            k4_scale_min(2 * c + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                const int v = (ql[l] & 0x0f) + (((qh[l] >> (2 * c)) & 1) << 4);
                *dst++ = d1 * (float)v - m1;
            }
            for (int l = 0; l < 32; l++) {
                const int v = (ql[l] >> 4) + (((qh[l] >> (2 * c + 1)) & 1) << 4);
                *dst++ = d2 * (float)v - m2;
            }
            ql += 32;
        }
    }
}

void vlm__dequant_row_q6_k(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q6_k *x = src;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float d = vlm_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                dst[l] = d * (float)sc[is] * (float)q1;
                dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            dst += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void vlm__dequant_row_q8_k(const void *src, float *dst, int64_t n) {
    const struct vlm_block_q8_k *x = src;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        for (int j = 0; j < VLM_QK_K; j++) {
            dst[j] = x[i].d * (float)x[i].qs[j];
        }
        dst += VLM_QK_K;
    }
}

// =============================================================================================================
// Quantizers (ggml's quantize_row_*_ref, same operation order so the bytes match)
// =============================================================================================================

void vlm__quant_row_f32_ref(const float *src, void *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void vlm__quant_row_f16_ref(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) {
        y[i] = vlm_fp32_to_fp16(src[i]);
    }
}

void vlm__quant_row_bf16_ref(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) {
        y[i] = vlm_fp32_to_bf16(src[i]);
    }
}

// Value of largest magnitude (first one on ties), keeping its sign.
static float signed_absmax(const float *x, int n, float *amax_out) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    *amax_out = amax;
    return max;
}

void vlm__quant_row_q4_0_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q4_0 *y = dst;
    const int qk = VLM_QK4_0;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float amax;
        const float max = signed_absmax(x, qk, &amax);
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = vlm_fp32_to_fp16(d);
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[qk / 2 + j] * id;
            const uint8_t xi0 = (uint8_t)MIN(15, (int8_t)(x0 + 8.5f));
            const uint8_t xi1 = (uint8_t)MIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(xi0 | xi1 << 4);
        }
    }
}

static void min_max(const float *x, int n, float *mn, float *mx) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) {
            lo = x[j];
        }
        if (x[j] > hi) {
            hi = x[j];
        }
    }
    *mn = lo;
    *mx = hi;
}

void vlm__quant_row_q4_1_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q4_1 *y = dst;
    const int qk = VLM_QK4_1;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float mn, mx;
        min_max(x, qk, &mn, &mx);
        const float d = (mx - mn) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = vlm_fp32_to_fp16(d);
        y[i].m = vlm_fp32_to_fp16(mn);
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = (x[j] - mn) * id;
            const float x1 = (x[qk / 2 + j] - mn) * id;
            const uint8_t xi0 = (uint8_t)MIN(15, (int8_t)(x0 + 0.5f));
            const uint8_t xi1 = (uint8_t)MIN(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = (uint8_t)(xi0 | xi1 << 4);
        }
    }
}

void vlm__quant_row_q5_0_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q5_0 *y = dst;
    const int qk = VLM_QK5_0;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float amax;
        const float max = signed_absmax(x, qk, &amax);
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = vlm_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[qk / 2 + j] * id;
            const uint8_t xi0 = (uint8_t)MIN(31, (int8_t)(x0 + 16.5f));
            const uint8_t xi1 = (uint8_t)MIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (uint8_t)((xi0 & 0x0f) | (xi1 & 0x0f) << 4);
            qh |= (uint32_t)((xi0 & 0x10u) >> 4) << j;
            qh |= (uint32_t)((xi1 & 0x10u) >> 4) << (j + qk / 2);
        }
        for (int b = 0; b < 4; b++) {
            y[i].qh[b] = (uint8_t)(qh >> (8 * b));
        }
    }
}

void vlm__quant_row_q5_1_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q5_1 *y = dst;
    const int qk = VLM_QK5_1;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float mn, mx;
        min_max(x, qk, &mn, &mx);
        const float d = (mx - mn) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = vlm_fp32_to_fp16(d);
        y[i].m = vlm_fp32_to_fp16(mn);
        uint32_t qh = 0;
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = (x[j] - mn) * id;
            const float x1 = (x[qk / 2 + j] - mn) * id;
            const uint8_t xi0 = (uint8_t)(x0 + 0.5f);
            const uint8_t xi1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (uint8_t)((xi0 & 0x0f) | (xi1 & 0x0f) << 4);
            qh |= (uint32_t)((xi0 & 0x10u) >> 4) << j;
            qh |= (uint32_t)((xi1 & 0x10u) >> 4) << (j + qk / 2);
        }
        for (int b = 0; b < 4; b++) {
            y[i].qh[b] = (uint8_t)(qh >> (8 * b));
        }
    }
}

void vlm__quant_row_q8_0_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q8_0 *y = dst;
    const int qk = VLM_QK8_0;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float amax = 0.0f;
        for (int j = 0; j < qk; j++) {
            amax = MAX(amax, fabsf(x[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = vlm_fp32_to_fp16(d);
        for (int j = 0; j < qk; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
        }
    }
}

void vlm__quant_row_q8_1_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q8_1 *y = dst;
    const int qk = VLM_QK8_1;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float amax = 0.0f;
        for (int j = 0; j < qk; j++) {
            amax = MAX(amax, fabsf(x[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = vlm_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < qk; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = vlm_fp32_to_fp16((float)sum * d);
    }
}

void vlm__quant_row_q8_k_ref(const float *x, void *dst, int64_t n) {
    struct vlm_block_q8_k *y = dst;
    for (int64_t i = 0; i < n / VLM_QK_K; i++, x += VLM_QK_K) {
        float amax;
        const float max = signed_absmax(x, VLM_QK_K, &amax);
        if (amax == 0.0f) {
            y[i].d = 0.0f;
            memset(y[i].qs, 0, sizeof y[i].qs);
            memset(y[i].bsums, 0, sizeof y[i].bsums);
            continue;
        }
        // ggml uses -127/max: the largest magnitude maps to -127 exactly, whatever its sign.
        const float iscale = -127.0f / max;
        for (int j = 0; j < VLM_QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)MIN(127, v);
        }
        for (int j = 0; j < VLM_QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) {
                sum += y[i].qs[16 * j + l];
            }
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}
