// AVX-512 (F/BW/VL/DQ + VNNI, BF16 for the BF16 dot) kernels. 32-element formats do two blocks per 512-bit
// register with vpdpbusd; K-quants do 64 elements per register with vpmaddubsw + vpdpwssd so the sub-block
// scales are applied in the integer domain. Integer parts are exact; only the float accumulation order differs
// from the scalar path. Quantizers are byte-identical to the reference ones.
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant-ref.h"
#include "kernels/cpu/x86/quants-nx.h"

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

static inline uint64_t qh_x2(const uint8_t *h0, const uint8_t *h1) {
    uint32_t a, b;
    memcpy(&a, h0, 4);
    memcpy(&b, h1, 4);
    return (uint64_t)a | (uint64_t)b << 32;
}

// The fp16 fields at byte offsets 0 and 2 of four consecutive blocks of sz bytes starting at p, as 8 floats:
// lanes 0..3 the first field (d) of blocks 0..3, lanes 4..7 the second (m or s). One or two masked loads and a
// word permute instead of a scalar conversion per field; the masks keep the loads inside the four blocks.
static inline __m256 fp16_fields_x4(const uint8_t *p, int sz) {
    const int words = 2 * sz;
    const __mmask32 m0 = words >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << words) - 1u);
    const __mmask32 m1 =
        words <= 32 ? 0 : words >= 64 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (words - 32)) - 1u);
    const __m512i lo = _mm512_maskz_loadu_epi16(m0, p);
    const __m512i hi = m1 ? _mm512_maskz_loadu_epi16(m1, p + 64) : _mm512_setzero_si512();
    const short h = (short)(sz / 2);
    const __m512i idx = _mm512_zextsi128_si512(
        _mm_setr_epi16(0, h, (short)(2 * h), (short)(3 * h), 1, (short)(h + 1), (short)(2 * h + 1),
                       (short)(3 * h + 1)));
    return _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(lo, idx, hi)));
}

static inline float hsum128_ps(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

// Lanes 0..7 = v[a], lanes 8..15 = v[b] of a 4- or 8-float vector.
static inline __m512 spread2(__m256 v, int a, int b) {
    const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(a), _mm256_set1_epi32(b), 1);
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(v));
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
        const __m256 dd = _mm256_mul_ps(fp16_fields_x4((const uint8_t *)(a + i), (int)sizeof *a),               \
                                        fp16_fields_x4((const uint8_t *)(b + i), (int)sizeof *b));              \
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread2(dd, 0, 1), acc0);                                 \
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread2(dd, 2, 3), acc1);                                 \
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
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                                               \
    __m256 summs = _mm256_setzero_ps();                                                                          \
    int64_t i = 0;                                                                                               \
    for (; i + 4 <= nb; i += 4) {                                                                                \
        const __m512i z = _mm512_setzero_si512();                                                                \
        const __m512i p0 = _mm512_dpbusd_epi32(z, UNPACK(i), y_x2(b[i].qs, b[i + 1].qs));                        \
        const __m512i p1 = _mm512_dpbusd_epi32(z, UNPACK(i + 2), y_x2(b[i + 2].qs, b[i + 3].qs));                \
        /* lanes 0..3: d_w * d_x; lanes 4..7: m_w * s_x */                                                       \
        const __m256 dm = _mm256_mul_ps(fp16_fields_x4((const uint8_t *)(a + i), (int)sizeof *a),               \
                                        fp16_fields_x4((const uint8_t *)(b + i), (int)sizeof *b));              \
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread2(dm, 0, 1), acc0);                                 \
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread2(dm, 2, 3), acc1);                                 \
        summs = _mm256_add_ps(summs, dm);                                                                        \
    }                                                                                                            \
    float tail = 0.0f;                                                                                           \
    for (; i < nb; i++) {                                                                                        \
        float t;                                                                                                 \
        TAIL(32, &t, a + i, b + i);                                                                              \
        tail += t;                                                                                               \
    }                                                                                                            \
    const __m128 ms = _mm256_extractf128_ps(summs, 1);                                                           \
    *s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + hsum128_ps(ms) + tail;

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

// =============================================================================================================
// Multi-row (nx) kernels
// =============================================================================================================
//
// A register tile of W weight rows x X activation rows keeps W * X accumulators live; each weight block is
// loaded and unpacked once and used against all X activation rows, each activation block against all W weight
// rows. The tile bodies are always-inline functions of constant (W, X): every (W, X) up to the maximum is
// instantiated (full unrolling turns the fixed-size arrays into registers) and nx_run covers any nw x nx with
// them. Per (weight, activation) pair the arithmetic is that of the single-row kernel of the same type.

// Largest tile any body supports (array bounds; the loops run to the constant W, X).
#define TMW 4
#define TMX 8

static ALWAYS_INLINE void store_tile(const int W, const int X, __m512 acc[TMW][TMX], float *s, size_t ss) {
#pragma GCC unroll 4
    FOR_W {
#pragma GCC unroll 8
        FOR_X {
            s[(size_t)k * ss + (size_t)j] = _mm512_reduce_add_ps(acc[j][k]);
        }
    }
}

#define ZERO_TILE(acc)                                                                                          \
    _Pragma("GCC unroll 4") FOR_W {                                                                              \
        _Pragma("GCC unroll 8") FOR_X {                                                                          \
            acc[j][k] = _mm512_setzero_ps();                                                                     \
        }                                                                                                        \
    }

// ---- float weights ------------------------------------------------------------------------------------------

enum { FW_F32, FW_F16 };

static ALWAYS_INLINE __m512 load_fw(const int kind, const uint8_t *row, int64_t i, __mmask16 m) {
    if (kind == FW_F32) {
        return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    }
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i));
}

static ALWAYS_INLINE __m512 load_fw_full(const int kind, const uint8_t *row, int64_t i) {
    if (kind == FW_F32) {
        return _mm512_loadu_ps((const float *)row + i);
    }
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
}

static ALWAYS_INLINE void tile_float(const int W, const int X, const int kind, int64_t n, float *s, size_t ss,
                                     const uint8_t *w, size_t ws, const uint8_t *x, size_t xs) {
    __m512 acc[TMW][TMX];
    ZERO_TILE(acc)
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wv[TMW];
#pragma GCC unroll 4
        FOR_W {
            wv[j] = load_fw_full(kind, w + (size_t)j * ws, i);
        }
#pragma GCC unroll 8
        FOR_X {
            const __m512 xv = _mm512_loadu_ps((const float *)(x + (size_t)k * xs) + i);
#pragma GCC unroll 4
            FOR_W {
                acc[j][k] = _mm512_fmadd_ps(wv[j], xv, acc[j][k]);
            }
        }
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 wv[TMW];
#pragma GCC unroll 4
        FOR_W {
            wv[j] = load_fw(kind, w + (size_t)j * ws, i, m);
        }
#pragma GCC unroll 8
        FOR_X {
            const __m512 xv = _mm512_maskz_loadu_ps(m, (const float *)(x + (size_t)k * xs) + i);
#pragma GCC unroll 4
            FOR_W {
                acc[j][k] = _mm512_fmadd_ps(wv[j], xv, acc[j][k]);
            }
        }
    }
    store_tile(W, X, acc, s, ss);
}

static ALWAYS_INLINE void tile_f32(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                   size_t ws, const uint8_t *x, size_t xs) {
    tile_float(W, X, FW_F32, n, s, ss, w, ws, x, xs);
}

static ALWAYS_INLINE void tile_f16(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                   size_t ws, const uint8_t *x, size_t xs) {
    tile_float(W, X, FW_F16, n, s, ss, w, ws, x, xs);
}

NX_KERNEL(vlm__vec_dot_f32_nx_avx512, tile_f32, 4, 6)
NX_KERNEL(vlm__vec_dot_f16_nx_avx512, tile_f16, 4, 6)

static ALWAYS_INLINE void tile_bf16(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    __m512 acc[TMW][TMX];
    ZERO_TILE(acc)
    for (int64_t i = 0; i < n; i += 32) {
        const __mmask32 m = n - i >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (n - i)) - 1u);
        __m512bh wv[TMW];
#pragma GCC unroll 4
        FOR_W {
            wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)(w + (size_t)j * ws) + i);
        }
#pragma GCC unroll 8
        FOR_X {
            const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)(x + (size_t)k * xs) + i);
#pragma GCC unroll 4
            FOR_W {
                acc[j][k] = _mm512_dpbf16_ps(acc[j][k], wv[j], xv);
            }
        }
    }
    store_tile(W, X, acc, s, ss);
}

NX_KERNEL(vlm__vec_dot_bf16_nx_avx512, tile_bf16, 4, 6)

// ---- 32-element blocks -------------------------------------------------------------------------------------
//
// Weights become unsigned codes q with the weight q - OFF (OFF = 8, 16, 128 for Q4_0, Q5_0, Q8_0; 0 for the
// Q8_1 formats, whose minimum is added as m * s). The offset part -OFF * sum(y) depends on the activations
// only, so it is computed once per activation block pair and is the starting value of the weight's vpdpbusd.

enum { B_Q4_0, B_Q5_0, B_Q8_0, B_Q4_1, B_Q5_1 };

#define B_WSIZE(kind)                                                                                           \
    ((kind) == B_Q4_0 ? 18 : (kind) == B_Q5_0 ? 22 : (kind) == B_Q8_0 ? 34 : (kind) == B_Q4_1 ? 20 : 24)
#define B_Q8_1(kind) ((kind) == B_Q4_1 || (kind) == B_Q5_1)

// fp16 values h0 (lanes 0..7) and h1 (lanes 8..15).
static inline __m512 half_x2(uint16_t h0, uint16_t h1) {
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | (uint32_t)h1 << 16)));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_castps128_ps512(f));
}

static inline uint16_t ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

// Codes of blocks p and p + size (two = 1) or of p alone with the upper half zero (two = 0).
static ALWAYS_INLINE __m512i unpack_b(const int kind, const int two, const uint8_t *p) {
    const int sz = B_WSIZE(kind);
    const uint8_t *p1 = two ? p + sz : p;
    __m512i q;
    switch (kind) {
    case B_Q8_0:
        q = _mm512_xor_si512(y_x2((const int8_t *)p + 2, (const int8_t *)p1 + 2), _mm512_set1_epi8((char)0x80));
        break;
    case B_Q4_0:
        q = nibbles_x2(p + 2, p1 + 2);
        break;
    case B_Q4_1:
        q = nibbles_x2(p + 4, p1 + 4);
        break;
    case B_Q5_0:
        q = _mm512_or_si512(nibbles_x2(p + 6, p1 + 6),
                            _mm512_maskz_mov_epi8(qh_x2(p + 2, p1 + 2), _mm512_set1_epi8(0x10)));
        break;
    default: // B_Q5_1
        q = _mm512_or_si512(nibbles_x2(p + 8, p1 + 8),
                            _mm512_maskz_mov_epi8(qh_x2(p + 4, p1 + 4), _mm512_set1_epi8(0x10)));
        break;
    }
    return two ? q : _mm512_zextsi256_si512(_mm512_castsi512_si256(q));
}

static ALWAYS_INLINE void tile_b_step(const int W, const int X, const int kind, const int two, int64_t i,
                                      __m512 acc[TMW][TMX], const uint8_t *w, size_t ws, const uint8_t *x,
                                      size_t xs) {
    const int wsz = B_WSIZE(kind);
    const int xsz = B_Q8_1(kind) ? 36 : 34;
    const int xqs = B_Q8_1(kind) ? 4 : 2;
    const char off = kind == B_Q4_0 ? 8 : kind == B_Q5_0 ? 16 : (char)0x80;
    __m512i y[TMX], c[TMX];
    __m512 dx[TMX], sx[TMX];
#pragma GCC unroll 8
    FOR_X {
        const uint8_t *b = x + (size_t)k * xs + (size_t)i * (size_t)xsz;
        if (two) {
            y[k] = y_x2((const int8_t *)b + xqs, (const int8_t *)b + xsz + xqs);
        } else {
            y[k] = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(b + xqs)));
        }
        dx[k] = half_x2(ld16(b), two ? ld16(b + xsz) : 0);
        if (B_Q8_1(kind)) {
            c[k] = _mm512_setzero_si512();
            sx[k] = _mm512_maskz_mov_ps(0x0101, half_x2(ld16(b + 2), two ? ld16(b + xsz + 2) : 0));
        } else {
            const __m512i z = _mm512_setzero_si512();
            c[k] = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, _mm512_set1_epi8(off), y[k]));
            sx[k] = _mm512_setzero_ps();
        }
    }
#pragma GCC unroll 4
    FOR_W {
        const uint8_t *a = w + (size_t)j * ws + (size_t)i * (size_t)wsz;
        const __m512i q = unpack_b(kind, two, a);
        const __m512 dw = half_x2(ld16(a), two ? ld16(a + wsz) : 0);
        __m512 mw = _mm512_setzero_ps();
        if (B_Q8_1(kind)) {
            mw = half_x2(ld16(a + 2), two ? ld16(a + wsz + 2) : 0);
        }
#pragma GCC unroll 8
        FOR_X {
            const __m512i p = _mm512_dpbusd_epi32(c[k], q, y[k]);
            acc[j][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, dx[k]), acc[j][k]);
            if (B_Q8_1(kind)) {
                acc[j][k] = _mm512_fmadd_ps(mw, sx[k], acc[j][k]);
            }
        }
    }
}

static ALWAYS_INLINE void tile_b(const int W, const int X, const int kind, int64_t n, float *s, size_t ss,
                                 const uint8_t *w, size_t ws, const uint8_t *x, size_t xs) {
    const int64_t nb = n / 32;
    __m512 acc[TMW][TMX];
    ZERO_TILE(acc)
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        tile_b_step(W, X, kind, 1, i, acc, w, ws, x, xs);
    }
    if (i < nb) {
        tile_b_step(W, X, kind, 0, i, acc, w, ws, x, xs);
    }
    store_tile(W, X, acc, s, ss);
}

#define TILE_B(NAME, KIND)                                                                                      \
    static ALWAYS_INLINE void NAME(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,   \
                                   size_t ws, const uint8_t *x, size_t xs) {                                     \
        tile_b(W, X, KIND, n, s, ss, w, ws, x, xs);                                                              \
    }
TILE_B(tile_q4_0, B_Q4_0)
TILE_B(tile_q5_0, B_Q5_0)
TILE_B(tile_q8_0, B_Q8_0)
TILE_B(tile_q4_1, B_Q4_1)
TILE_B(tile_q5_1, B_Q5_1)
#undef TILE_B

NX_KERNEL(vlm__vec_dot_q4_0_nx_avx512, tile_q4_0, 4, 4)
NX_KERNEL(vlm__vec_dot_q5_0_nx_avx512, tile_q5_0, 4, 4)
NX_KERNEL(vlm__vec_dot_q8_0_nx_avx512, tile_q8_0, 4, 4)
NX_KERNEL(vlm__vec_dot_q4_1_nx_avx512, tile_q4_1, 4, 4)
NX_KERNEL(vlm__vec_dot_q5_1_nx_avx512, tile_q5_1, 4, 4)

// ---- K-quants ------------------------------------------------------------------------------------------------
//
// Per super-block each weight row is unpacked into four 64-code registers and four int16 scale registers (the
// single-row layout), then run against the X activation rows: vpmaddubsw + vpdpwssd per 64 codes, so the
// sub-block scales are applied in the integer domain. The minimum / offset terms use Q8_K's bsums.

static ALWAYS_INLINE __m512i k_scale_idx(int c) {
    return _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * c)), _mm256_set1_epi16((short)(2 * c + 1)), 1);
}

enum { K_Q4, K_Q5 };

static ALWAYS_INLINE void tile_k45(const int W, const int X, const int kind, int64_t n, float *s, size_t ss,
                                   const uint8_t *w, size_t ws, const uint8_t *x, size_t xs) {
    const size_t wsz = kind == K_Q4 ? sizeof(struct vlm_block_q4_k) : sizeof(struct vlm_block_q5_k);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m1 = _mm512_set1_epi8(1);
    const __m512i shifts = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    __m512 acc[TMW][TMX];
    ZERO_TILE(acc)
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
#pragma GCC unroll 4
        FOR_W {
            const uint8_t *blk = w + (size_t)j * ws + (size_t)i * wsz;
            // Q4_K and Q5_K share the d, dmin, scales prefix; qs follows qh in Q5_K
            const struct vlm_block_q4_k *a = (const struct vlm_block_q4_k *)blk;
            const uint8_t *qs = kind == K_Q4 ? a->qs : ((const struct vlm_block_q5_k *)blk)->qs;
            uint8_t sm[16];
            k4_unpack_scales(a->scales, sm);
            const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sm)));
            const __m128i m8 = _mm_loadl_epi64((const __m128i *)(sm + 8));
            // each min twice: one per 16-element bsum
            const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
            __m512i q[4], scv[4];
            __m512i qh = _mm512_setzero_si512();
            if (kind == K_Q5) {
                const uint8_t *hb = ((const struct vlm_block_q5_k *)blk)->qh;
                qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)hb));
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i qq = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
                q[c] = _mm512_and_si512(_mm512_srlv_epi64(qq, shifts), m4);
                if (kind == K_Q5) {
                    const __m512i hs = _mm512_add_epi64(_mm512_set1_epi64(2 * c), _mm512_srli_epi64(shifts, 2));
                    q[c] = _mm512_or_si512(q[c], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(qh, hs), m1), 4));
                }
                scv[c] = _mm512_permutexvar_epi16(k_scale_idx(c), sc16);
            }
            const __m512 dw = _mm512_set1_ps(fp16(a->d));
            const __m512 dmw = _mm512_set1_ps(fp16(a->dmin));
#pragma GCC unroll 8
            FOR_X {
                const struct vlm_block_q8_k *b = (const struct vlm_block_q8_k *)(x + (size_t)k * xs) + i;
                __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) {
                    const __m512i p = _mm512_maddubs_epi16(q[c], _mm512_loadu_si512(b->qs + 64 * c));
                    sumi = _mm512_dpwssd_epi32(sumi, p, scv[c]);
                }
                const __m256i mm = _mm256_madd_epi16(mins16, _mm256_loadu_si256((const __m256i *)b->bsums));
                __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dw);
                f = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(mm)), dmw, f);
                acc[j][k] = _mm512_fmadd_ps(f, _mm512_set1_ps(b->d), acc[j][k]);
            }
        }
    }
    store_tile(W, X, acc, s, ss);
}

static ALWAYS_INLINE void tile_q4_k(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    tile_k45(W, X, K_Q4, n, s, ss, w, ws, x, xs);
}

static ALWAYS_INLINE void tile_q5_k(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    tile_k45(W, X, K_Q5, n, s, ss, w, ws, x, xs);
}

NX_KERNEL(vlm__vec_dot_q4_k_nx_avx512, tile_q4_k, 4, 4)
NX_KERNEL(vlm__vec_dot_q5_k_nx_avx512, tile_q5_k, 4, 4)

static ALWAYS_INLINE void tile_q6_k(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3);
    const __m512i hshift_lo = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    const __m512i hshift_hi = _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6);
    const __m512i base_idx = _mm512_setr_epi64(0, 0, 0x0001000100010001LL, 0x0001000100010001LL, 0x0002000200020002LL,
                                               0x0002000200020002LL, 0x0003000300030003LL, 0x0003000300030003LL);
    __m512 acc[TMW][TMX];
    ZERO_TILE(acc)
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
#pragma GCC unroll 4
        FOR_W {
            const struct vlm_block_q6_k *a = (const struct vlm_block_q6_k *)(w + (size_t)j * ws) + i;
            const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a->scales));
            const __m512i scz = _mm512_castsi256_si512(sc);
            // -32 * scale per 16-element group, against bsums: removes the code offset of 32
            const __m512i nsc =
                _mm512_zextsi256_si512(_mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc, 5)));
            __m512i q[4], scv[4];
#pragma GCC unroll 2
            for (int half = 0; half < 2; half++) {
                const __m512i l = _mm512_loadu_si512(a->ql + 64 * half);
                const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a->qh + 32 * half)));
                q[2 * half] =
                    _mm512_or_si512(_mm512_and_si512(l, m4),
                                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h, hshift_lo), m3), 4));
                q[2 * half + 1] =
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h, hshift_hi), m3), 4));
                const __m512i ia = _mm512_add_epi16(base_idx, _mm512_set1_epi16((short)(8 * half)));
                scv[2 * half] = _mm512_permutexvar_epi16(ia, scz);
                scv[2 * half + 1] = _mm512_permutexvar_epi16(_mm512_add_epi16(ia, _mm512_set1_epi16(4)), scz);
            }
            const __m512 dw = _mm512_set1_ps(fp16(a->d));
#pragma GCC unroll 8
            FOR_X {
                const struct vlm_block_q8_k *b = (const struct vlm_block_q8_k *)(x + (size_t)k * xs) + i;
                __m512i sumi = _mm512_dpwssd_epi32(
                    _mm512_setzero_si512(), _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b->bsums)), nsc);
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) {
                    // order of the 64-code registers: ql[0..63] low, high nibbles; then ql[64..127]
                    const __m512i p = _mm512_maddubs_epi16(q[c], _mm512_loadu_si512(b->qs + 64 * c));
                    sumi = _mm512_dpwssd_epi32(sumi, p, scv[c]);
                }
                const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(b->d));
                acc[j][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), dd, acc[j][k]);
            }
        }
    }
    store_tile(W, X, acc, s, ss);
}

NX_KERNEL(vlm__vec_dot_q6_k_nx_avx512, tile_q6_k, 4, 4)

// =============================================================================================================
// Row-interleaved Q4_0 (x16 groups, prepared at load by kernels/cpu/repack.c)
// =============================================================================================================
//
// One 32-bit lane per weight row: dword lane r of code part c holds row r's bytes qs[4c..4c+3], so vpdpbusd with
// an activation dword broadcast to all lanes advances 16 rows by 4 elements each, and after 8 of them every lane
// holds a whole block's integer dot. The float work (convert, scale, accumulate) is then one instruction per 16
// (row, block) pairs instead of one per 2 in the row-major kernels, and the result for a token is one 16-float
// store. Activations are in the split Q8_0 format, whose per-block -8 * sum(q) starts each integer accumulator.

void vlm__quant_row_q8_0s_avx512(const float *src, void *dst, int64_t n, int off) {
    const int64_t nb = n / VLM_QK8_0;
    int8_t *qs = dst;
    float *d = (float *)(void *)(qs + n);
    int32_t *c = (int32_t *)(void *)(d + nb);
    for (int64_t i = 0; i < nb; i++) {
        int sum;
        // the reference stores d as fp16: keep that rounding so results match Q8_0's
        d[i] = fp16(vlm_fp32_to_fp16(quant32(src + i * VLM_QK8_0, qs + i * VLM_QK8_0, &sum)));
        c[i] = -off * sum;
    }
}

// Matvec prefetch distance in code blocks (16 x 256 bytes = 4 KB ahead).
#define Q4X16_PREFETCH_BLOCKS 16

static ALWAYS_INLINE void q4_0x16_tile(const int X, int64_t n, float *s, size_t ss, const uint8_t *g,
                                       const uint8_t *x, size_t xs) {
    const int64_t nb = n / VLM_QK4_0;
    const uint16_t *dw16 = (const uint16_t *)(const void *)(g + (size_t)nb * 256);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[16];
#pragma GCC unroll 16
    FOR_X {
        acc[k] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m512i *qp = (const __m512i *)(const void *)(g + (size_t)i * 256);
        if (X == 1) {
            // matvec streams the weights once: ask for them a few blocks early (an address past the group's end
            // is harmless for a prefetch; it is formed as an integer so no pointer leaves its object)
            const uintptr_t ahead = (uintptr_t)qp + Q4X16_PREFETCH_BLOCKS * 256;
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                _mm_prefetch((const char *)(ahead + 64 * (uintptr_t)c), _MM_HINT_T0);
            }
        }
        __m512i q[8];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m512i raw = _mm512_load_si512(qp + c);
            q[c] = _mm512_and_si512(raw, m4);
            q[c + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(dw16 + 16 * i)));
#pragma GCC unroll 16
        FOR_X {
            const uint8_t *xr = x + (size_t)k * xs;
            const int32_t *y = (const int32_t *)(const void *)(xr + i * VLM_QK8_0);
            const float dx = ((const float *)(const void *)(xr + n))[i];
            const int32_t cx = ((const int32_t *)(const void *)(xr + n + 4 * nb))[i];
            __m512i a = _mm512_set1_epi32(cx);
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                a = _mm512_dpbusd_epi32(a, q[c], _mm512_set1_epi32(y[c]));
            }
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc[k]);
        }
    }
#pragma GCC unroll 16
    FOR_X {
        _mm512_storeu_ps(s + (size_t)k * ss, acc[k]);
    }
}

#define Q4X16_DEF(X)                                                                                            \
    static void q4_0x16_tile_##X(int64_t n, float *s, size_t ss, const uint8_t *g, const uint8_t *x, size_t xs) { \
        q4_0x16_tile(X, n, s, ss, g, x, xs);                                                                     \
    }
Q4X16_DEF(1)
Q4X16_DEF(2)
Q4X16_DEF(3)
Q4X16_DEF(4)
Q4X16_DEF(5)
Q4X16_DEF(6)
Q4X16_DEF(7)
Q4X16_DEF(8)
Q4X16_DEF(9)
Q4X16_DEF(10)
Q4X16_DEF(11)
Q4X16_DEF(12)
Q4X16_DEF(13)
Q4X16_DEF(14)
Q4X16_DEF(15)
Q4X16_DEF(16)
#undef Q4X16_DEF

typedef void (*q4x16_fn)(int64_t n, float *s, size_t ss, const uint8_t *g, const uint8_t *x, size_t xs);
static const q4x16_fn q4_0x16_tab[16] = {
    q4_0x16_tile_1,  q4_0x16_tile_2,  q4_0x16_tile_3,  q4_0x16_tile_4,  q4_0x16_tile_5,  q4_0x16_tile_6,
    q4_0x16_tile_7,  q4_0x16_tile_8,  q4_0x16_tile_9,  q4_0x16_tile_10, q4_0x16_tile_11, q4_0x16_tile_12,
    q4_0x16_tile_13, q4_0x16_tile_14, q4_0x16_tile_15, q4_0x16_tile_16,
};

void vlm__gemm_q4_0x16_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              const void *x, size_t x_stride, int nx) {
    const uint8_t *wb = w, *xb = x;
    for (int ig = 0; ig < ng; ig++) {
        for (int ix = 0; ix < nx; ix += 16) {
            const int bx = nx - ix < 16 ? nx - ix : 16;
            q4_0x16_tab[bx - 1](n, s + (size_t)ix * s_stride + (size_t)ig * 16, s_stride, wb + (size_t)ig * g_stride,
                                xb + (size_t)ix * x_stride, x_stride);
        }
    }
}
