// AVX-512 vector kernels (same contracts as the scalar table in ../ops-vec.c). Tails use masked loads, so
// every function is one loop. Only reached after the run-time check behind vlm__cpu_isa_get.
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/ops-cpu.h"

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static inline __m512 load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
}

static inline __m512 load_f16_mask(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// Same polynomial and clamping as the AVX2 path; scalef applies 2^n without integer tricks.
static inline __m512 v_exp(__m512 x_in) {
    __m512 x = _mm512_min_ps(x_in, _mm512_set1_ps(88.0f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __mmask16 keep = _mm512_cmp_ps_mask(x_in, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n));
}

static inline __m512 v_silu(__m512 x) {
    __m512 e = v_exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static float dot_f32(int64_t n, const float *x, const float *y) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_f16(int64_t n, const float *x, const uint16_t *y) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load_f16(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), load_f16(y + i + 16), a1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), load_f16_mask(y + i, m), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static void axpy_f32(int64_t n, float a, const float *x, float *y) {
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static void axpy_f16(int64_t n, float a, const uint16_t *x, float *y) {
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 r = _mm512_fmadd_ps(va, load_f16_mask(x + i, m), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static float vmax(int64_t n, const float *x) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, x + i));
    }
    return _mm512_reduce_max_ps(mx);
}

static float vsum(int64_t n, const float *x) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
    }
    for (; i < n; i += 16) {
        a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static float sum_sq(int64_t n, const float *x) {
    return dot_f32(n, x, x);
}

static float exp_sum(int64_t n, float *x, float scale, float sub) {
    __m512 vs = _mm512_set1_ps(scale), vsub = _mm512_set1_ps(sub), acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = v_exp(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, x + i), vs, vsub));
        _mm512_mask_storeu_ps(x + i, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

static void silu(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, v_silu(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

static void swiglu(int64_t n, const float *g, const float *u, float *y) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 r = _mm512_mul_ps(v_silu(_mm512_maskz_loadu_ps(m, g + i)), _mm512_maskz_loadu_ps(m, u + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static void gelu_quick(int64_t n, const float *x, float *y) {
    const __m512 k = _mm512_set1_ps(-1.702f), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_div_ps(v, _mm512_add_ps(one, v_exp(_mm512_mul_ps(k, v)))));
    }
}

const struct vlm_cpu_vec vlm__cpu_vec_avx512 = {
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

// ---- attention block, head_dim 64 ----------------------------------------------------------------------------
//
// Register tiles of 6 query rows x 64 floats (24 accumulators) in outer-product form: scores broadcast one query
// element against 64 transposed keys, the output broadcasts one probability against a 64-float value row. No
// horizontal reductions, unlike dot products of length 64.

#define ATTN_AI inline __attribute__((always_inline))
#define ATTN_QR 6

static ATTN_AI void score_tile(const int QN, const int NV, const float *q, size_t qs, const float *kt, size_t kts,
                               float *sc, size_t ss) {
    __m512 acc[ATTN_QR][4];
#pragma GCC unroll 6
    for (int r = 0; r < QN; r++) {
#pragma GCC unroll 4
        for (int c = 0; c < NV; c++) {
            acc[r][c] = _mm512_setzero_ps();
        }
    }
    for (int d = 0; d < 64; d++) {
        __m512 kv[4];
#pragma GCC unroll 4
        for (int c = 0; c < NV; c++) {
            kv[c] = _mm512_loadu_ps(kt + (size_t)d * kts + 16 * c);
        }
#pragma GCC unroll 6
        for (int r = 0; r < QN; r++) {
            const __m512 b = _mm512_set1_ps(q[(size_t)r * qs + (size_t)d]);
#pragma GCC unroll 4
            for (int c = 0; c < NV; c++) {
                acc[r][c] = _mm512_fmadd_ps(b, kv[c], acc[r][c]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < QN; r++) {
#pragma GCC unroll 4
        for (int c = 0; c < NV; c++) {
            _mm512_storeu_ps(sc + (size_t)r * ss + 16 * c, acc[r][c]);
        }
    }
}

static ATTN_AI void out_tile(const int QN, int64_t n_kv, const float *sc, size_t ss, const float *vh,
                             const float *inv, float *out, size_t os) {
    __m512 acc[ATTN_QR][4];
#pragma GCC unroll 6
    for (int r = 0; r < QN; r++) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            acc[r][c] = _mm512_setzero_ps();
        }
    }
    for (int64_t j = 0; j < n_kv; j++) {
        __m512 vv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            vv[c] = _mm512_loadu_ps(vh + (size_t)j * 64 + 16 * c);
        }
#pragma GCC unroll 6
        for (int r = 0; r < QN; r++) {
            const __m512 b = _mm512_set1_ps(sc[(size_t)r * ss + (size_t)j]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                acc[r][c] = _mm512_fmadd_ps(b, vv[c], acc[r][c]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < QN; r++) {
        const __m512 s = _mm512_set1_ps(inv[r]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            _mm512_storeu_ps(out + (size_t)r * os + 16 * c, _mm512_mul_ps(acc[r][c], s));
        }
    }
}

#define ATTN_QN_SWITCH(qn, CALL)                                                                                \
    switch (qn) {                                                                                                \
    case 1: CALL(1); break;                                                                                      \
    case 2: CALL(2); break;                                                                                      \
    case 3: CALL(3); break;                                                                                      \
    case 4: CALL(4); break;                                                                                      \
    case 5: CALL(5); break;                                                                                      \
    default: CALL(6); break;                                                                                     \
    }

void vlm__attn_block64_avx512(int64_t n_kv, int nq, const float *q, size_t qs, const float *kt, size_t kts,
                              const float *vh, float *sc, size_t ss, float *out, size_t os, float scale);

void vlm__attn_block64_avx512(int64_t n_kv, int nq, const float *q, size_t qs, const float *kt, size_t kts,
                              const float *vh, float *sc, size_t ss, float *out, size_t os, float scale) {
    // every score row is complete before any output row is written: out may alias q
    for (int r0 = 0; r0 < nq; r0 += ATTN_QR) {
        const int qn = nq - r0 < ATTN_QR ? nq - r0 : ATTN_QR;
        const float *qr = q + (size_t)r0 * qs;
        float *sr = sc + (size_t)r0 * ss;
        int64_t j0 = 0;
        for (; j0 + 64 <= (int64_t)kts; j0 += 64) {
#define SCORE4(QN) score_tile(QN, 4, qr, qs, kt + j0, kts, sr + j0, ss)
            ATTN_QN_SWITCH(qn, SCORE4)
#undef SCORE4
        }
        for (; j0 < (int64_t)kts; j0 += 16) {
#define SCORE1(QN) score_tile(QN, 1, qr, qs, kt + j0, kts, sr + j0, ss)
            ATTN_QN_SWITCH(qn, SCORE1)
#undef SCORE1
        }
    }
    float inv[ATTN_QR];
    for (int r0 = 0; r0 < nq; r0 += ATTN_QR) {
        const int qn = nq - r0 < ATTN_QR ? nq - r0 : ATTN_QR;
        float *sr = sc + (size_t)r0 * ss;
        for (int r = 0; r < qn; r++) {
            float *s = sr + (size_t)r * ss;
            // scale > 0 (validated by the op), so max(s) * scale is the maximum of the scaled scores
            float m = vmax(n_kv, s) * scale;
            inv[r] = 1.0f / exp_sum(n_kv, s, scale, m);
        }
#define OUT4(QN) out_tile(QN, n_kv, sr, ss, vh, inv, out + (size_t)r0 * os, os)
        ATTN_QN_SWITCH(qn, OUT4)
#undef OUT4
    }
}
