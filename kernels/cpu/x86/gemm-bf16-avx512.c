// Row-interleaved BF16 weights (x16 groups, prepared at load by kernels/cpu/repack.c) times BF16 activations,
// with AVX512-BF16's vdpbf16ps.
//
// One 32-bit lane per weight row: lane r of pair p holds row r's elements 2p and 2p+1, so vdpbf16ps against an
// activation pair broadcast to all lanes advances 16 rows by 2 elements each (32 products, summed exactly in
// pairs into F32). The result for a token is one 16-float store: no horizontal sums, which cost the row-major
// kernel about a sixth of its time on the ViT's 1024-wide rows. Each product of two BF16 values is exact in F32;
// the only roundings are the two inputs to BF16 and the F32 accumulation.
#include <immintrin.h>

#include "kernels/cpu/quant-ref.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/x86/quants-nx.h"

// Register tile: G groups (16 rows each) x X tokens = 24 accumulators, G weight vectors, broadcasts from memory.
#define BX_G 4
#define BX_X 6

// Token rows (BF16 pairs, x_stride bytes apart) against G groups (g_stride bytes apart): s[k * ss + 16 g + r].
// `last` masks the rows stored for the last group (a partial group is zero-padded in the packed copy).
static ALWAYS_INLINE void bf16x16_tile(const int G, const int X, int64_t n2, float *s, size_t ss, const uint8_t *w,
                                       size_t gs, const uint8_t *x, size_t xs, __mmask16 last, const float *bias) {
    __m512 acc[BX_G][BX_X];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
        const __m512 b0 = bias ? _mm512_maskz_loadu_ps(g == G - 1 ? last : (__mmask16)0xffff, bias + 16 * g)
                               : _mm512_setzero_ps();
#pragma GCC unroll 6
        for (int k = 0; k < X; k++) {
            acc[g][k] = b0;
        }
    }
    for (int64_t p = 0; p < n2; p++) {
        __m512bh wv[BX_G];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            wv[g] = (__m512bh)_mm512_load_si512((const void *)(w + (size_t)g * gs + (size_t)p * 64));
        }
#pragma GCC unroll 6
        for (int k = 0; k < X; k++) {
            const __m512bh xv =
                (__m512bh)_mm512_set1_epi32(((const int32_t *)(const void *)(x + (size_t)k * xs))[p]);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) {
                acc[g][k] = _mm512_dpbf16_ps(acc[g][k], wv[g], xv);
            }
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
#pragma GCC unroll 6
        for (int k = 0; k < X; k++) {
            _mm512_mask_storeu_ps(s + (size_t)k * ss + 16 * (size_t)g, g == G - 1 ? last : (__mmask16)0xffff,
                                  acc[g][k]);
        }
    }
}

typedef void (*bx_fn)(int64_t n2, float *s, size_t ss, const uint8_t *w, size_t gs, const uint8_t *x, size_t xs,
                      __mmask16 last, const float *bias);

#define BX_DEF(G, X)                                                                                            \
    static void bf16x16_tile_##G##x##X(int64_t n2, float *s, size_t ss, const uint8_t *w, size_t gs,             \
                                       const uint8_t *x, size_t xs, __mmask16 last, const float *bias) {         \
        bf16x16_tile(G, X, n2, s, ss, w, gs, x, xs, last, bias);                                                 \
    }
#define BX_ROW(G) BX_DEF(G, 1) BX_DEF(G, 2) BX_DEF(G, 3) BX_DEF(G, 4) BX_DEF(G, 5) BX_DEF(G, 6)
BX_ROW(1)
BX_ROW(2)
BX_ROW(3)
BX_ROW(4)
#define BX_PTR(G)                                                                                               \
    bf16x16_tile_##G##x1, bf16x16_tile_##G##x2, bf16x16_tile_##G##x3, bf16x16_tile_##G##x4,                      \
        bf16x16_tile_##G##x5, bf16x16_tile_##G##x6
static const bx_fn bf16x16_tab[BX_G * BX_X] = {BX_PTR(1), BX_PTR(2), BX_PTR(3), BX_PTR(4)};
#undef BX_PTR
#undef BX_ROW
#undef BX_DEF

void vlm__quant_row_bf16p_avx512(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    vlm__quant_row_bf16_avx512(src, y, n);
    if (n & 1) {
        y[n] = 0; // the odd element's partner: the packed weights are zero there too
    }
}

void vlm__gemm_bf16x16_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              int last_rows, const void *x, size_t x_stride, int nx, const float *bias) {
    const uint8_t *wb = w, *xb = x;
    const int64_t n2 = (n + 1) / 2;
    const __mmask16 last_mask = (__mmask16)((1u << last_rows) - 1u);
    // tokens outer: a few activation rows stay in L1 while the groups' weights stream from L2
    for (int ix = 0; ix < nx; ix += BX_X) {
        const int bx = nx - ix < BX_X ? nx - ix : BX_X;
        for (int ig = 0; ig < ng; ig += BX_G) {
            const int bg = ng - ig < BX_G ? ng - ig : BX_G;
            const __mmask16 m = ig + bg == ng ? last_mask : (__mmask16)0xffff;
            bf16x16_tab[(bg - 1) * BX_X + (bx - 1)](n2, s + (size_t)ix * s_stride + (size_t)ig * 16, s_stride,
                                                   wb + (size_t)ig * g_stride, g_stride,
                                                   xb + (size_t)ix * x_stride, x_stride, m,
                                                   bias ? bias + (size_t)ig * 16 : NULL);
        }
    }
}
