// AVX2 + FMA + F16C kernels: activation quantizers (byte-identical to the reference ones) and dot products.
// Integer parts are exact; only the float accumulation order differs from the scalar path.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/quant-ref.h"
#include "kernels/cpu/x86/quants-nx.h"

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline float fp16(uint16_t h) {
    return _cvtsh_ss(h);
}

// Sum of int8 products, 8 int32 lanes. x may hold any int8 but -128 in y would overflow the sign trick; our
// activation quantizers never produce -128.
static inline __m256i dot_i8(__m256i x, __m256i y) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// Sum of u8 (x, < 128) by i8 (y) products, 8 int32 lanes.
static inline __m256i dot_u8i8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

// 16 packed nibbles -> 32 bytes: low nibbles first, then high nibbles (the Q4/Q5 element order).
static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

// 32 bits -> 32 bytes, 0xff where the bit is set.
static inline __m256i bits_to_bytes(const uint8_t *p) {
    uint32_t u;
    memcpy(&u, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u), shuf);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// =============================================================================================================
// Activation quantizers
// =============================================================================================================

// roundf (half away from zero), exact for |v| < 2^23.
static inline __m256 round_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(sign, _mm256_set1_ps(1.0f))));
}

// Four vectors of 8 int32 (each in int8 range) -> 32 int8 in order.
static inline __m256i pack_i32x4(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b);
    const __m256i cd = _mm256_packs_epi32(c, d);
    const __m256i v = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float absmax32(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int j = 8; j < 32; j += 8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

// Quantizes 32 floats as Q8_0/Q8_1 do; returns d and the sum of the codes.
static inline float quant32(const float *x, int8_t *qs, int *sum) {
    const float amax = absmax32(x);
    const float d = amax / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i v[4];
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * j), id)));
    }
    _mm256_storeu_si256((__m256i *)qs, pack_i32x4(v[0], v[1], v[2], v[3]));
    if (sum) {
        *sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
    }
    return d;
}

void vlm__quant_row_q8_0_avx2(const float *src, void *dst, int64_t n) {
    struct vlm_block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        y[i].d = vlm_fp32_to_fp16(quant32(src + i * VLM_QK8_0, y[i].qs, NULL));
    }
}

void vlm__quant_row_q8_1_avx2(const float *src, void *dst, int64_t n) {
    struct vlm_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / VLM_QK8_1; i++) {
        int sum;
        const float d = quant32(src + i * VLM_QK8_1, y[i].qs, &sum);
        y[i].d = vlm_fp32_to_fp16(d);
        y[i].s = vlm_fp32_to_fp16((float)sum * d);
    }
}

void vlm__quant_row_q8_k_avx2(const float *src, void *dst, int64_t n) {
    struct vlm_block_q8_k *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const float *x = src + i * VLM_QK_K;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < VLM_QK_K; j += 8) {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        // The reference keeps the sign of the first element of largest magnitude.
        float max = 0.0f;
        const __m256 vamax = _mm256_set1_ps(amax);
        for (int j = 0; j < VLM_QK_K; j += 8) {
            const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j));
            const int mask = _mm256_movemask_ps(_mm256_cmp_ps(a, vamax, _CMP_EQ_OQ));
            if (mask) {
                max = x[j + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m256 vis = _mm256_set1_ps(iscale);
        for (int j = 0; j < VLM_QK_K; j += 32) {
            __m256i v[4];
            for (int k = 0; k < 4; k++) {
                const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * k), vis),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                v[k] = _mm256_min_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127));
            }
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), pack_i32x4(v[0], v[1], v[2], v[3]));
            y[i].bsums[j / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(v[0], v[1]));
            y[i].bsums[j / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(v[2], v[3]));
        }
        y[i].d = 1.0f / iscale;
    }
}

// fp32 -> bf16 as vlm_fp32_to_bf16: round to nearest even, NaN kept quiet.
static inline __m256i bf16_round(__m256 f) {
    const __m256i x = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(64));
    const __m256i is_nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    return _mm256_blendv_epi8(r, nan, is_nan);
}

void vlm__quant_row_bf16_avx2(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i a = bf16_round(_mm256_loadu_ps(src + i));
        const __m256i b = bf16_round(_mm256_loadu_ps(src + i + 8));
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++) {
        y[i] = vlm_fp32_to_bf16(src[i]);
    }
}

// =============================================================================================================
// Float dot products
// =============================================================================================================

void vlm__vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *x) {
    const float *a = w, *b = x;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 4; k++) {
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k), acc[k]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
    }
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        sum += a[i] * b[i];
    }
    *s = sum;
}

void vlm__vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 4; k++) {
            const __m256 wa = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8 * k)));
            acc[k] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(b + i + 8 * k), acc[k]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 wa = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
        acc[0] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(b + i), acc[0]);
    }
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        sum += vlm_fp16_to_fp32(a[i]) * b[i];
    }
    *s = sum;
}

static inline __m256 load_bf16(const uint16_t *p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

void vlm__vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w, *b = x;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 4; k++) {
            acc[k] = _mm256_fmadd_ps(load_bf16(a + i + 8 * k), load_bf16(b + i + 8 * k), acc[k]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        acc[0] = _mm256_fmadd_ps(load_bf16(a + i), load_bf16(b + i), acc[0]);
    }
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        sum += vlm_bf16_to_fp32(a[i]) * vlm_bf16_to_fp32(b[i]);
    }
    *s = sum;
}

// =============================================================================================================
// 32-element block dot products
// =============================================================================================================

void vlm__vec_dot_q4_0_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_0 *a = w;
    const struct vlm_block_q8_0 *b = x;
    const int64_t nb = n / VLM_QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m256i q0 = _mm256_sub_epi8(unpack_nibbles(a[i].qs), _mm256_set1_epi8(8));
        const __m256i q1 = _mm256_sub_epi8(unpack_nibbles(a[i + 1].qs), _mm256_set1_epi8(8));
        const __m256i p0 = dot_i8(q0, _mm256_loadu_si256((const __m256i *)b[i].qs));
        const __m256i p1 = dot_i8(q1, _mm256_loadu_si256((const __m256i *)b[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i + 1].d) * fp16(b[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i q0 = _mm256_sub_epi8(unpack_nibbles(a[i].qs), _mm256_set1_epi8(8));
        const __m256i p0 = dot_i8(q0, _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p0), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

void vlm__vec_dot_q4_1_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_1 *a = w;
    const struct vlm_block_q8_1 *b = x;
    const int64_t nb = n / VLM_QK8_1;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i p = dot_u8i8(unpack_nibbles(a[i].qs), _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p), acc);
        summs += fp16(a[i].m) * fp16(b[i].s);
    }
    *s = hsum_ps(acc) + summs;
}

void vlm__vec_dot_q5_0_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_0 *a = w;
    const struct vlm_block_q8_0 *b = x;
    const int64_t nb = n / VLM_QK8_0;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        // code - 16 as int8: the nibble with the upper four bits set where the fifth bit is clear
        const __m256i hi = _mm256_andnot_si256(bits_to_bytes(a[i].qh), _mm256_set1_epi8((char)0xf0));
        const __m256i q = _mm256_or_si256(unpack_nibbles(a[i].qs), hi);
        const __m256i p = dot_i8(q, _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

void vlm__vec_dot_q5_1_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_1 *a = w;
    const struct vlm_block_q8_1 *b = x;
    const int64_t nb = n / VLM_QK8_1;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i hi = _mm256_and_si256(bits_to_bytes(a[i].qh), _mm256_set1_epi8(0x10));
        const __m256i q = _mm256_or_si256(unpack_nibbles(a[i].qs), hi);
        const __m256i p = dot_u8i8(q, _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p), acc);
        summs += fp16(a[i].m) * fp16(b[i].s);
    }
    *s = hsum_ps(acc) + summs;
}

void vlm__vec_dot_q8_0_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q8_0 *a = w;
    const struct vlm_block_q8_0 *b = x;
    const int64_t nb = n / VLM_QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)a[i].qs),
                                  _mm256_loadu_si256((const __m256i *)b[i].qs));
        const __m256i p1 = dot_i8(_mm256_loadu_si256((const __m256i *)a[i + 1].qs),
                                  _mm256_loadu_si256((const __m256i *)b[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i + 1].d) * fp16(b[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)a[i].qs),
                                  _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * fp16(b[i].d)), _mm256_cvtepi32_ps(p0), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

// =============================================================================================================
// K-quant dot products
// =============================================================================================================

// Q4_K/Q5_K 12-byte scale field -> bytes 0..7 scales, 8..15 mins.
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

void vlm__vec_dot_q4_k_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q4_k *a = w;
    const struct vlm_block_q8_k *b = x;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        uint8_t sm[16];
        k4_unpack_scales(a[i].scales, sm);
        // mins . (pairwise bsums)
        const __m256i bs = _mm256_loadu_si256((const __m256i *)b[i].bsums);
        const __m128i bs8 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        const __m128i pm = _mm_madd_epi16(mins, bs8);
        __m128i t = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0x4e));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
        const float dy = b[i].d;
        summ += fp16(a[i].dmin) * dy * (float)_mm_cvtsi128_si32(t);

        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            const __m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0f));
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0f));
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c + 32));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), _mm256_set1_epi16(sm[2 * c]));
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), _mm256_set1_epi16(sm[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * dy), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc) - summ;
}

void vlm__vec_dot_q6_k_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q6_k *a = w;
    const struct vlm_block_q8_k *b = x;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        const uint8_t *ql = a[i].ql;
        const uint8_t *qh = a[i].qh;
        const int8_t *q8 = b[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++) {
            const int8_t *sc = a[i].scales + 8 * half;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(q8 + 32 * k));
                // (q - 32) . y = q . y - 32 . y
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], y), _mm256_maddubs_epi16(m32, y));
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
            ql += 64;
            qh += 32;
            q8 += 128;
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * b[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

void vlm__vec_dot_q5_k_avx2(int64_t n, float *s, const void *w, const void *x) {
    const struct vlm_block_q5_k *a = w;
    const struct vlm_block_q8_k *b = x;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t i = 0; i < n / VLM_QK_K; i++) {
        uint8_t sm[16];
        k4_unpack_scales(a[i].scales, sm);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)b[i].bsums);
        const __m128i bs8 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        const __m128i pm = _mm_madd_epi16(mins, bs8);
        __m128i t = _mm_add_epi32(pm, _mm_shuffle_epi32(pm, 0x4e));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
        const float dy = b[i].d;
        summ += fp16(a[i].dmin) * dy * (float)_mm_cvtsi128_si32(t);

        const __m256i qh = _mm256_loadu_si256((const __m256i *)a[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(a[i].qs + 32 * c));
            const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c)), m1);
            const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c + 1)), m1);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_slli_epi16(h1, 4));
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(b[i].qs + 64 * c + 32));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), _mm256_set1_epi16(sm[2 * c]));
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), _mm256_set1_epi16(sm[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(a[i].d) * dy), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc) - summ;
}

// =============================================================================================================
// Multi-row (nx) kernels
// =============================================================================================================
//
// As in quants-avx512.c: W weight rows x X activation rows per register tile, each weight block unpacked once
// for all X rows. Sixteen ymm registers allow about eight accumulators.

#define TMW 4
#define TMX 4

static ALWAYS_INLINE void store_tile(const int W, const int X, __m256 acc[TMW][TMX], float *s, size_t ss) {
#pragma GCC unroll 4
    FOR_W {
#pragma GCC unroll 4
        FOR_X {
            s[(size_t)k * ss + (size_t)j] = hsum_ps(acc[j][k]);
        }
    }
}

#define ZERO_TILE(acc)                                                                                          \
    _Pragma("GCC unroll 4") FOR_W {                                                                              \
        _Pragma("GCC unroll 4") FOR_X {                                                                          \
            acc[j][k] = _mm256_setzero_ps();                                                                     \
        }                                                                                                        \
    }

// ---- float weights ------------------------------------------------------------------------------------------

enum { FW_F32, FW_F16 };

static ALWAYS_INLINE __m256 load_fw(const int kind, const uint8_t *row, int64_t i) {
    if (kind == FW_F32) {
        return _mm256_loadu_ps((const float *)row + i);
    }
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
}

static ALWAYS_INLINE void tile_float(const int W, const int X, const int kind, int64_t n, float *s, size_t ss,
                                     const uint8_t *w, size_t ws, const uint8_t *x, size_t xs) {
    __m256 acc[TMW][TMX];
    ZERO_TILE(acc)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv[TMW];
#pragma GCC unroll 4
        FOR_W {
            wv[j] = load_fw(kind, w + (size_t)j * ws, i);
        }
#pragma GCC unroll 4
        FOR_X {
            const __m256 xv = _mm256_loadu_ps((const float *)(x + (size_t)k * xs) + i);
#pragma GCC unroll 4
            FOR_W {
                acc[j][k] = _mm256_fmadd_ps(wv[j], xv, acc[j][k]);
            }
        }
    }
    store_tile(W, X, acc, s, ss);
    // the last n % 8 elements in scalar code, added to the stored sums
    for (; i < n; i++) {
        for (int j = 0; j < W; j++) {
            const uint8_t *row = w + (size_t)j * ws;
            const float wi = kind == FW_F32 ? ((const float *)row)[i] : vlm_fp16_to_fp32(((const uint16_t *)row)[i]);
            for (int k = 0; k < X; k++) {
                s[(size_t)k * ss + (size_t)j] += wi * ((const float *)(x + (size_t)k * xs))[i];
            }
        }
    }
}

static ALWAYS_INLINE void tile_f32(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                   size_t ws, const uint8_t *x, size_t xs) {
    tile_float(W, X, FW_F32, n, s, ss, w, ws, x, xs);
}

static ALWAYS_INLINE void tile_f16(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                   size_t ws, const uint8_t *x, size_t xs) {
    tile_float(W, X, FW_F16, n, s, ss, w, ws, x, xs);
}

NX_KERNEL(vlm__vec_dot_f32_nx_avx2, tile_f32, 4, 2)
NX_KERNEL(vlm__vec_dot_f16_nx_avx2, tile_f16, 4, 2)

// ---- Q8_0-activation blocks -----------------------------------------------------------------------------------
//
// Signed codes w against signed activations y with the sign trick of dot_i8: |w| is computed once per weight
// block, sign(y, w) per pair.

enum { B_Q4_0, B_Q5_0, B_Q8_0 };

static ALWAYS_INLINE __m256i codes_b(const int kind, const uint8_t *blk) {
    switch (kind) {
    case B_Q4_0:
        return _mm256_sub_epi8(unpack_nibbles(((const struct vlm_block_q4_0 *)blk)->qs), _mm256_set1_epi8(8));
    case B_Q5_0: {
        const struct vlm_block_q5_0 *a = (const struct vlm_block_q5_0 *)blk;
        const __m256i hi = _mm256_andnot_si256(bits_to_bytes(a->qh), _mm256_set1_epi8((char)0xf0));
        return _mm256_or_si256(unpack_nibbles(a->qs), hi);
    }
    default:
        return _mm256_loadu_si256((const __m256i *)((const struct vlm_block_q8_0 *)blk)->qs);
    }
}

static ALWAYS_INLINE void tile_b(const int W, const int X, const int kind, int64_t n, float *s, size_t ss,
                                 const uint8_t *w, size_t ws, const uint8_t *x, size_t xs) {
    const size_t wsz = kind == B_Q4_0 ? sizeof(struct vlm_block_q4_0)
                       : kind == B_Q5_0 ? sizeof(struct vlm_block_q5_0)
                                        : sizeof(struct vlm_block_q8_0);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TMW][TMX];
    ZERO_TILE(acc)
    for (int64_t i = 0; i < n / VLM_QK8_0; i++) {
        __m256i y[TMX];
        __m256 dx[TMX];
#pragma GCC unroll 4
        FOR_X {
            const struct vlm_block_q8_0 *b = (const struct vlm_block_q8_0 *)(x + (size_t)k * xs) + i;
            y[k] = _mm256_loadu_si256((const __m256i *)b->qs);
            dx[k] = _mm256_set1_ps(fp16(b->d));
        }
#pragma GCC unroll 4
        FOR_W {
            const uint8_t *blk = w + (size_t)j * ws + (size_t)i * wsz;
            const __m256i q = codes_b(kind, blk);
            const __m256i aq = _mm256_sign_epi8(q, q);
            uint16_t dbits;
            memcpy(&dbits, blk, 2);
            const __m256 dw = _mm256_set1_ps(fp16(dbits));
#pragma GCC unroll 4
            FOR_X {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(y[k], q)), ones);
                acc[j][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw, dx[k]), acc[j][k]);
            }
        }
    }
    store_tile(W, X, acc, s, ss);
}

static ALWAYS_INLINE void tile_q4_0(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    tile_b(W, X, B_Q4_0, n, s, ss, w, ws, x, xs);
}

static ALWAYS_INLINE void tile_q5_0(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    tile_b(W, X, B_Q5_0, n, s, ss, w, ws, x, xs);
}

static ALWAYS_INLINE void tile_q8_0(const int W, const int X, int64_t n, float *s, size_t ss, const uint8_t *w,
                                    size_t ws, const uint8_t *x, size_t xs) {
    tile_b(W, X, B_Q8_0, n, s, ss, w, ws, x, xs);
}

NX_KERNEL(vlm__vec_dot_q4_0_nx_avx2, tile_q4_0, 2, 4)
NX_KERNEL(vlm__vec_dot_q5_0_nx_avx2, tile_q5_0, 2, 4)
NX_KERNEL(vlm__vec_dot_q8_0_nx_avx2, tile_q8_0, 2, 4)
