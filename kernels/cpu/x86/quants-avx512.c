// AVX-512 (F/BW/VL/DQ + VNNI, BF16 for the BF16 dot) kernels. 32-element formats do two blocks per 512-bit
// register with vpdpbusd; K-quants do 64 elements per register with vpmaddubsw + vpdpwssd so the sub-block
// scales are applied in the integer domain. Integer parts are exact; only the float accumulation order differs
// from the scalar path. Quantizers are byte-identical to the reference ones.
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant-ref.h"

static inline float fp16(uint16_t h) {
    return _cvtsh_ss(h);
}

// =============================================================================================================
// Activation quantizers
// =============================================================================================================

// roundf (half away from zero), exact for |v| < 2^23.
static inline __m512 round_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    return _mm512_mask_add_ps(t, up, t, one);
}

static inline float quant32(const float *x, int8_t *qs, int *sum) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const float d = amax / 127.0f;
    const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    const __m512i v0 = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(x0, id)));
    const __m512i v1 = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(x1, id)));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(v0));
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtepi32_epi8(v1));
    if (sum) {
        *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(v0, v1));
    }
    return d;
}

void vlm__quant_row_q8_0_avx512(const float *src, void *dst, int64_t n) {
    struct vlm_block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        y[i].d = vlm_fp32_to_fp16(quant32(src + i * VLM_QK8_0, y[i].qs, NULL));
    }
}

void vlm__quant_row_q8_1_avx512(const float *src, void *dst, int64_t n) {
    struct vlm_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / VLM_QK8_1; i++) {
        int sum;
        const float d = quant32(src + i * VLM_QK8_1, y[i].qs, &sum);
        y[i].d = vlm_fp32_to_fp16(d);
        y[i].s = vlm_fp32_to_fp16((float)sum * d);
    }
}

void vlm__quant_row_q8_k_avx512(const float *src, void *dst, int64_t n) {
    struct vlm_block_q8_k *y = dst;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float *x = src + i * VLM_QK_K;
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < VLM_QK_K; j += 16) {
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
        }
        const float amax = _mm512_reduce_max_ps(m);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        // The reference keeps the sign of the first element of largest magnitude.
        float max = 0.0f;
        const __m512 vamax = _mm512_set1_ps(amax);
        for (int j = 0; j < VLM_QK_K; j += 16) {
            const __mmask16 k = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + j)), vamax, _CMP_EQ_OQ);
            if (k) {
                max = x[j + __builtin_ctz((unsigned)k)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m512 vis = _mm512_set1_ps(iscale);
        for (int j = 0; j < VLM_QK_K; j += 16) {
            const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j), vis),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512i v = _mm512_min_epi32(_mm512_cvtps_epi32(r), _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(y[i].qs + j), _mm512_cvtepi32_epi8(v));
            y[i].bsums[j / 16] = (int16_t)_mm512_reduce_add_epi32(v);
        }
        y[i].d = 1.0f / iscale;
    }
}

// Integer rounding rather than vcvtneps2bf16, which flushes denormal inputs to zero and so differs from the
// reference on them.
void vlm__quant_row_bf16_avx512(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i x = _mm512_loadu_si512(src + i);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
        const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
        const __mmask16 nan =
            _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
        const __m512i v = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(64));
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(v));
    }
    for (; i < n; i++) {
        y[i] = vlm_fp32_to_bf16(src[i]);
    }
}

// =============================================================================================================
// Float dot products
// =============================================================================================================

void vlm__vec_dot_f32_avx512(int64_t n, float *s, const void *w, const void *x) {
    const float *a = w, *b = x;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    }
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

void vlm__vec_dot_f16_avx512(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    int64_t i = 0;
#define W16(off) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i + (off))))
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(W16(0), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(W16(16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(W16(32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(W16(48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm512_fmadd_ps(W16(0), _mm512_loadu_ps(b + i), acc0);
    }
#undef W16
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        const __m512 wa = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, a + i));
        acc1 = _mm512_fmadd_ps(wa, _mm512_maskz_loadu_ps(k, b + i), acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

// vdpbf16ps: 32 bf16 products per instruction, pairs summed exactly into fp32 lanes.
void vlm__vec_dot_bf16_avx512(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w, *b = x;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    int64_t i = 0;
#define BH(p) ((__m512bh)_mm512_loadu_si512(p))
    for (; i + 128 <= n; i += 128) {
        acc0 = _mm512_dpbf16_ps(acc0, BH(a + i), BH(b + i));
        acc1 = _mm512_dpbf16_ps(acc1, BH(a + i + 32), BH(b + i + 32));
        acc2 = _mm512_dpbf16_ps(acc2, BH(a + i + 64), BH(b + i + 64));
        acc3 = _mm512_dpbf16_ps(acc3, BH(a + i + 96), BH(b + i + 96));
    }
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_dpbf16_ps(acc0, BH(a + i), BH(b + i));
    }
#undef BH
    if (i < n) {
        const __mmask32 k = (__mmask32)((1u << (n - i)) - 1u);
        acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_maskz_loadu_epi16(k, a + i),
                                (__m512bh)_mm512_maskz_loadu_epi16(k, b + i));
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

// =============================================================================================================
// 32-element block dot products, two blocks per register
// =============================================================================================================

// Nibbles of two consecutive blocks' 16-byte qs fields (at p0 and p1) as 64 bytes in element order: block 0's
// 32 elements, then block 1's.
static inline __m512i nibbles_x2(const uint8_t *p0, const uint8_t *p1) {
    const __m256i q = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)p1), _mm_loadu_si128((const __m128i *)p0));
    const __m512i d = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(q));
    const __m512i sh = _mm512_srlv_epi64(d, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(sh, _mm512_set1_epi8(0x0f));
}

// 64 activation bytes of two Q8_0/Q8_1 blocks.
static inline __m512i y_x2(const int8_t *q0, const int8_t *q1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q0)),
                              _mm256_loadu_si256((const __m256i *)q1), 1);
}

// Two scales: s0 in lanes 0..7, s1 in lanes 8..15.
static inline __m512 scale_x2(float s0, float s1) {
    return _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
}

static inline uint64_t qh_x2(const uint8_t *h0, const uint8_t *h1) {
    uint32_t a, b;
    memcpy(&a, h0, 4);
    memcpy(&b, h1, 4);
    return (uint64_t)a | (uint64_t)b << 32;
}

// Shared loop of the Q8_0-activation formats: each weight block pair becomes 64 unsigned codes q and a constant
// offset c (so the weight is q - c); sum((q - c) * y) = dpbusd(q, y) - dpbusd(c, y).
#define DOT_X2_Q8_0(WBLOCK, UNPACK, OFFSET)                                                                     \
    const struct WBLOCK *a = w;                                                                                  \
    const struct vlm_block_q8_0 *b = x;                                                                          \
    const int64_t nb = n / VLM_QK8_0;                                                                            \
    const __m512i off = _mm512_set1_epi8(OFFSET);                                                                \
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                                               \
    int64_t i = 0;                                                                                               \
    for (; i + 4 <= nb; i += 4) {                                                                                \
        const __m512i q0 = UNPACK(i), q1 = UNPACK(i + 2);                                                        \
        const __m512i y0 = y_x2(b[i].qs, b[i + 1].qs), y1 = y_x2(b[i + 2].qs, b[i + 3].qs);                      \
        const __m512i z = _mm512_setzero_si512();                                                                \
        const __m512i p0 = _mm512_sub_epi32(_mm512_dpbusd_epi32(z, q0, y0), _mm512_dpbusd_epi32(z, off, y0));    \
        const __m512i p1 = _mm512_sub_epi32(_mm512_dpbusd_epi32(z, q1, y1), _mm512_dpbusd_epi32(z, off, y1));    \
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0),                                                           \
                               scale_x2(fp16(a[i].d) * fp16(b[i].d), fp16(a[i + 1].d) * fp16(b[i + 1].d)), acc0); \
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1),                                                           \
                               scale_x2(fp16(a[i + 2].d) * fp16(b[i + 2].d), fp16(a[i + 3].d) * fp16(b[i + 3].d)), \
                               acc1);                                                                            \
    }                                                                                                            \
    float tail = 0.0f;                                                                                           \
    for (; i < nb; i++) {                                                                                        \
        float t;                                                                                                 \
        TAIL(32, &t, a + i, b + i);                                                                              \
        tail += t;                                                                                               \
    }                                                                                                            \
    *s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;

#define UNPACK_Q4_0(k) nibbles_x2(a[k].qs, a[(k) + 1].qs)
#define UNPACK_Q5_0(k)                                                                                          \
    _mm512_or_si512(nibbles_x2(a[k].qs, a[(k) + 1].qs),                                                          \
                    _mm512_maskz_mov_epi8(qh_x2(a[k].qh, a[(k) + 1].qh), _mm512_set1_epi8(0x10)))
#define UNPACK_Q8_0(k) _mm512_xor_si512(y_x2(a[k].qs, a[(k) + 1].qs), _mm512_set1_epi8((char)0x80))

// Leftover blocks (fewer than 4) go through the AVX2 kernels: same integer results.
void vlm__vec_dot_q4_0_avx512(int64_t n, float *s, const void *w, const void *x) {
#define TAIL vlm__vec_dot_q4_0_avx2
    DOT_X2_Q8_0(vlm_block_q4_0, UNPACK_Q4_0, 8)
#undef TAIL
}

void vlm__vec_dot_q5_0_avx512(int64_t n, float *s, const void *w, const void *x) {
#define TAIL vlm__vec_dot_q5_0_avx2
    DOT_X2_Q8_0(vlm_block_q5_0, UNPACK_Q5_0, 16)
#undef TAIL
}

// Q8_0 weights are signed: w + 128 is unsigned, and the offset 128 is removed as above.
void vlm__vec_dot_q8_0_avx512(int64_t n, float *s, const void *w, const void *x) {
#define TAIL vlm__vec_dot_q8_0_avx2
    DOT_X2_Q8_0(vlm_block_q8_0, UNPACK_Q8_0, (char)0x80)
#undef TAIL
}

// Q4_1/Q5_1: unsigned codes times d plus m; the m part is m * s with s = d_y * sum(y) stored in the block.
#define DOT_X2_Q8_1(WBLOCK, UNPACK)                                                                             \
    const struct WBLOCK *a = w;                                                                                  \
    const struct vlm_block_q8_1 *b = x;                                                                          \
    const int64_t nb = n / VLM_QK8_1;                                                                            \
    __m512 acc0 = _mm512_setzero_ps();                                                                           \
    float summs = 0.0f;                                                                                          \
    int64_t i = 0;                                                                                               \
    for (; i + 2 <= nb; i += 2) {                                                                                \
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), UNPACK(i), y_x2(b[i].qs, b[i + 1].qs));    \
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p),                                                            \
                               scale_x2(fp16(a[i].d) * fp16(b[i].d), fp16(a[i + 1].d) * fp16(b[i + 1].d)), acc0); \
        summs += fp16(a[i].m) * fp16(b[i].s) + fp16(a[i + 1].m) * fp16(b[i + 1].s);                              \
    }                                                                                                            \
    float tail = 0.0f;                                                                                           \
    if (i < nb) {                                                                                                \
        TAIL(32, &tail, a + i, b + i);                                                                           \
    }                                                                                                            \
    *s = _mm512_reduce_add_ps(acc0) + summs + tail;

void vlm__vec_dot_q4_1_avx512(int64_t n, float *s, const void *w, const void *x) {
#define TAIL vlm__vec_dot_q4_1_avx2
    DOT_X2_Q8_1(vlm_block_q4_1, UNPACK_Q4_0)
#undef TAIL
}

void vlm__vec_dot_q5_1_avx512(int64_t n, float *s, const void *w, const void *x) {
#define TAIL vlm__vec_dot_q5_1_avx2
    DOT_X2_Q8_1(vlm_block_q5_1, UNPACK_Q5_0)
#undef TAIL
}

// =============================================================================================================
// K-quant dot products
// =============================================================================================================

static inline void k4_unpack_scales(const uint8_t *scales, uint8_t out[16]) {
    uint32_t u[4];
    memcpy(u, scales, 12);
    const uint32_t km1 = 0x3f3f3f3f, km2 = 0x0f0f0f0f, km3 = 0x03030303;
    u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
    const uint32_t mins_lo = u[1] & km1;
    u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
    u[2] = mins_lo;
    u[0] &= km1;
    memcpy(out, u, 16);
}

static inline int hsum128_epi32(__m128i v) {
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4e));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xb1));
    return _mm_cvtsi128_si32(v);
}

void vlm__vec_dot_q4_k_avx512(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_k *a = w;
    const struct vlm_block_q8_k *b = x;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i shifts = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    __m512 acc = _mm512_setzero_ps();
    float summ = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        uint8_t sm[16];
        k4_unpack_scales(a[i].scales, sm);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)b[i].bsums);
        const __m128i bs8 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        const float dy = b[i].d;
        summ += fp16(a[i].dmin) * dy * (float)hsum128_epi32(_mm_madd_epi16(mins, bs8));

        // int16 scales; chunk c uses scale 2c for its first 32 elements (16 int16 lanes), 2c+1 for the rest
        const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sm)));
        __m512i sumi = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const __m512i qq = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c)));
            const __m512i q = _mm512_and_si512(_mm512_srlv_epi64(qq, shifts), m4);
            const __m512i y = _mm512_loadu_si512(b[i].qs + 64 * c);
            const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * c)),
                                                   _mm256_set1_epi16((short)(2 * c + 1)), 1);
            const __m512i scv = _mm512_permutexvar_epi16(idx, sc16);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(q, y), scv);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(fp16(a[i].d) * dy), _mm512_cvtepi32_ps(sumi), acc);
    }
    *s = _mm512_reduce_add_ps(acc) - summ;
}

// Scale index of element e is e / 16, the same grouping as Q8_K's bsums, so the -32 offset of the 6-bit codes
// is removed once per block as 32 * sum(scale_g * bsum_g).
void vlm__vec_dot_q6_k_avx512(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q6_k *a = w;
    const struct vlm_block_q8_k *b = x;
    const __m512i m4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3);
    const __m512i hshift_lo = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    const __m512i hshift_hi = _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6);
    // int16 lane j of a 64-element product vector belongs to scale group j / 8
    const __m512i base_idx = _mm512_setr_epi64(0, 0, 0x0001000100010001LL, 0x0001000100010001LL, 0x0002000200020002LL,
                                               0x0002000200020002LL, 0x0003000300030003LL, 0x0003000300030003LL);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[i].scales));
        const __m256i bs = _mm256_loadu_si256((const __m256i *)b[i].bsums);
        const __m256i pm = _mm256_madd_epi16(sc16, bs);
        const int off = hsum128_epi32(_mm_add_epi32(_mm256_castsi256_si128(pm), _mm256_extracti128_si256(pm, 1)));
        const __m512i scz = _mm512_castsi256_si512(sc16);

        __m512i sumi = _mm512_setzero_si512();
        for (int half = 0; half < 2; half++) {
            const __m512i l = _mm512_loadu_si512(a[i].ql + 64 * half);
            const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * half)));
            const __m512i qa = _mm512_or_si512(
                _mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h, hshift_lo), m3), 4));
            const __m512i qb =
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h, hshift_hi), m3), 4));
            const __m512i ya = _mm512_loadu_si512(b[i].qs + 128 * half);
            const __m512i yb = _mm512_loadu_si512(b[i].qs + 128 * half + 64);
            // scales 8h..8h+3 for qa, 8h+4..8h+7 for qb, each over 8 int16 lanes
            const __m512i ia = _mm512_add_epi16(base_idx, _mm512_set1_epi16((short)(8 * half)));
            const __m512i ib = _mm512_add_epi16(ia, _mm512_set1_epi16(4));
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(qa, ya), _mm512_permutexvar_epi16(ia, scz));
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(qb, yb), _mm512_permutexvar_epi16(ib, scz));
        }
        sumi = _mm512_sub_epi32(sumi, _mm512_zextsi128_si512(_mm_cvtsi32_si128(32 * off)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(fp16(a[i].d) * b[i].d), _mm512_cvtepi32_ps(sumi), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

void vlm__vec_dot_q5_k_avx512(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_k *a = w;
    const struct vlm_block_q8_k *b = x;
    const __m512i m4 = _mm512_set1_epi8(0x0f), m1 = _mm512_set1_epi8(1);
    const __m512i shifts = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    __m512 acc = _mm512_setzero_ps();
    float summ = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        uint8_t sm[16];
        k4_unpack_scales(a[i].scales, sm);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)b[i].bsums);
        const __m128i bs8 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        const float dy = b[i].d;
        summ += fp16(a[i].dmin) * dy * (float)hsum128_epi32(_mm_madd_epi16(mins, bs8));

        const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sm)));
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)a[i].qh));
        __m512i sumi = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const __m512i qq = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c)));
            // fifth bit: bit 2c of qh[l] for the low-nibble half, bit 2c+1 for the high-nibble half
            const __m512i hs = _mm512_add_epi64(_mm512_set1_epi64(2 * c), _mm512_srli_epi64(shifts, 2));
            const __m512i h = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(qh, hs), m1), 4);
            const __m512i q = _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi64(qq, shifts), m4), h);
            const __m512i y = _mm512_loadu_si512(b[i].qs + 64 * c);
            const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * c)),
                                                   _mm256_set1_epi16((short)(2 * c + 1)), 1);
            sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(q, y), _mm512_permutexvar_epi16(idx, sc16));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(fp16(a[i].d) * dy), _mm512_cvtepi32_ps(sumi), acc);
    }
    *s = _mm512_reduce_add_ps(acc) - summ;
}
