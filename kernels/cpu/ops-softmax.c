// Row softmax of x * scale, stabilised by subtracting the row maximum.
#include <math.h>

#include "kernels/cpu/ops-cpu.h"

struct softmax_ctx {
    const struct vlm_cpu_vec *vec;
    struct vlm_tensor *dst;
    const struct vlm_tensor *x;
    float scale;
};

static void softmax_rows(void *arg, int ith, int nth) {
    const struct softmax_ctx *sc = arg;
    int64_t n = sc->x->ne[0], lo, hi;
    vlm__cpu_split(vlm_tensor_nrows(sc->x), ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const float *x = vlm__row_f32(sc->x, r);
        float *y = vlm__row_f32(sc->dst, r);
        for (int64_t i = 0; i < n; i++) {
            y[i] = x[i] * sc->scale;
        }
        float m = sc->vec->max(n, y);
        if (m == -INFINITY) { // fully masked row: no finite logit, define the result as all zeros
            for (int64_t i = 0; i < n; i++) {
                y[i] = 0.0f;
            }
            continue;
        }
        float inv = 1.0f / sc->vec->exp_sum(n, y, 1.0f, m);
        for (int64_t i = 0; i < n; i++) {
            y[i] *= inv;
        }
    }
}

void vlm__cpu_softmax(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float scale) {
    struct softmax_ctx sc = {.vec = vlm__cpu_vec_get(), .dst = dst, .x = x, .scale = scale};
    vlm__cpu_parallel(vlm__cpu_ctx(be), softmax_rows, &sc, 8 * vlm_tensor_nelements(x));
}
