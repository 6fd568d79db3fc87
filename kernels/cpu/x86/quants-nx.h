// Multi-row (nx) kernel scaffolding shared by the ISA files: a tile body K(W, X, ...) is an always-inline
// function of constant (W, X); NX_KERNEL instantiates it for every (W, X) up to (TW, TX), makes the table nx_run
// indexes, and defines the public vlm_vec_dot_nx_fn. Full unrolling of the constant loops turns the bodies'
// fixed-size accumulator arrays into registers.
#ifndef VLM_CPU_X86_QUANTS_NX_H
#define VLM_CPU_X86_QUANTS_NX_H

#include <stddef.h>
#include <stdint.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef void (*tile_fn)(int64_t n, float *s, size_t ss, const uint8_t *w, size_t ws, const uint8_t *x, size_t xs);

static inline void nx_run(const tile_fn *tab, int tw, int tx, int64_t n, float *s, size_t ss, const void *w,
                          size_t ws, const void *x, size_t xs, int nw, int nx) {
    const uint8_t *wb = w, *xb = x;
    // weight tile outer: its rows stay in L1 while the activation rows stream past
    for (int iw = 0; iw < nw; iw += tw) {
        const int bw = nw - iw < tw ? nw - iw : tw;
        for (int ix = 0; ix < nx; ix += tx) {
            const int bx = nx - ix < tx ? nx - ix : tx;
            tab[(bw - 1) * tx + (bx - 1)](n, s + (size_t)ix * ss + (size_t)iw, ss, wb + (size_t)iw * ws, ws,
                                          xb + (size_t)ix * xs, xs);
        }
    }
}

// Instantiation of tile body K for every (W, X) in [1, TW] x [1, TX], the table nx_run indexes, and the public
// entry point.
#define NX_FN(K, W, X) K##_##W##x##X
#define NX_DEF(K, W, X)                                                                                         \
    static void NX_FN(K, W, X)(int64_t n, float *s, size_t ss, const uint8_t *w, size_t ws, const uint8_t *x,    \
                               size_t xs) {                                                                      \
        K(W, X, n, s, ss, w, ws, x, xs);                                                                         \
    }
#define NX_DX1(K, W) NX_DEF(K, W, 1)
#define NX_DX2(K, W) NX_DX1(K, W) NX_DEF(K, W, 2)
#define NX_DX3(K, W) NX_DX2(K, W) NX_DEF(K, W, 3)
#define NX_DX4(K, W) NX_DX3(K, W) NX_DEF(K, W, 4)
#define NX_DX5(K, W) NX_DX4(K, W) NX_DEF(K, W, 5)
#define NX_DX6(K, W) NX_DX5(K, W) NX_DEF(K, W, 6)
#define NX_DX7(K, W) NX_DX6(K, W) NX_DEF(K, W, 7)
#define NX_DX8(K, W) NX_DX7(K, W) NX_DEF(K, W, 8)
#define NX_DW1(K, TX) NX_DX##TX(K, 1)
#define NX_DW2(K, TX) NX_DW1(K, TX) NX_DX##TX(K, 2)
#define NX_DW3(K, TX) NX_DW2(K, TX) NX_DX##TX(K, 3)
#define NX_DW4(K, TX) NX_DW3(K, TX) NX_DX##TX(K, 4)
#define NX_PX1(K, W) NX_FN(K, W, 1)
#define NX_PX2(K, W) NX_PX1(K, W), NX_FN(K, W, 2)
#define NX_PX3(K, W) NX_PX2(K, W), NX_FN(K, W, 3)
#define NX_PX4(K, W) NX_PX3(K, W), NX_FN(K, W, 4)
#define NX_PX5(K, W) NX_PX4(K, W), NX_FN(K, W, 5)
#define NX_PX6(K, W) NX_PX5(K, W), NX_FN(K, W, 6)
#define NX_PX7(K, W) NX_PX6(K, W), NX_FN(K, W, 7)
#define NX_PX8(K, W) NX_PX7(K, W), NX_FN(K, W, 8)
#define NX_PW1(K, TX) NX_PX##TX(K, 1)
#define NX_PW2(K, TX) NX_PW1(K, TX), NX_PX##TX(K, 2)
#define NX_PW3(K, TX) NX_PW2(K, TX), NX_PX##TX(K, 3)
#define NX_PW4(K, TX) NX_PW3(K, TX), NX_PX##TX(K, 4)
#define NX_KERNEL(NAME, K, TW, TX) NX_KERNEL_(NAME, K, TW, TX)
#define NX_KERNEL_(NAME, K, TW, TX)                                                                             \
    NX_DW##TW(K, TX) static const tile_fn K##_tab[(TW) * (TX)] = {NX_PW##TW(K, TX)};                            \
    void NAME(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,              \
              size_t x_stride, int nw, int nx) {                                                                 \
        nx_run(K##_tab, TW, TX, n, s, s_stride, w, w_stride, x, x_stride, nw, nx);                               \
    }

#define FOR_W for (int j = 0; j < W; j++)
#define FOR_X for (int k = 0; k < X; k++)

#endif // VLM_CPU_X86_QUANTS_NX_H
