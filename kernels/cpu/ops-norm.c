// Row normalisations: RMSNorm (Llama) and LayerNorm (CLIP), rows split evenly among threads.
#include <math.h>

#include "kernels/cpu/ops-cpu.h"

struct norm_ctx {
    const struct vlm_cpu_vec *vec;
    struct vlm_tensor *dst;
    const struct vlm_tensor *x;
    const float *w; // NULL: no weight
    const float *b; // NULL: no bias
    float eps;
};

static void rms_norm_rows(void *arg, int ith, int nth) {
    const struct norm_ctx *nc = arg;
    int64_t n = nc->x->ne[0], lo, hi;
    vlm__cpu_split(vlm_tensor_nrows(nc->x), ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const float *x = vlm__row_f32(nc->x, r);
        float *y = vlm__row_f32(nc->dst, r);
        float s = 1.0f / sqrtf(nc->vec->sum_sq(n, x) / (float)n + nc->eps);
        if (nc->w) {
            for (int64_t i = 0; i < n; i++) {
                y[i] = x[i] * s * nc->w[i];
            }
        } else {
            for (int64_t i = 0; i < n; i++) {
                y[i] = x[i] * s;
            }
        }
    }
}

static void layer_norm_rows(void *arg, int ith, int nth) {
    const struct norm_ctx *nc = arg;
    int64_t n = nc->x->ne[0], lo, hi;
    vlm__cpu_split(vlm_tensor_nrows(nc->x), ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const float *x = vlm__row_f32(nc->x, r);
        float *y = vlm__row_f32(nc->dst, r);
        float mean = nc->vec->sum(n, x) / (float)n;
        for (int64_t i = 0; i < n; i++) {
            y[i] = x[i] - mean;
        }
        // Variance from the centred values (two passes): no cancellation when |mean| >> stddev.
        float s = 1.0f / sqrtf(nc->vec->sum_sq(n, y) / (float)n + nc->eps);
        if (nc->w && nc->b) {
            for (int64_t i = 0; i < n; i++) {
                y[i] = y[i] * s * nc->w[i] + nc->b[i];
            }
        } else if (nc->w) {
            for (int64_t i = 0; i < n; i++) {
                y[i] = y[i] * s * nc->w[i];
            }
        } else {
            for (int64_t i = 0; i < n; i++) {
                y[i] = y[i] * s + (nc->b ? nc->b[i] : 0.0f);
            }
        }
    }
}

void vlm__cpu_rms_norm(
    struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, const struct vlm_tensor *w, float eps) {
    struct norm_ctx nc = {.vec = vlm__cpu_vec_get(), .dst = dst, .x = x, .w = w ? w->data : NULL, .eps = eps};
    vlm__cpu_parallel(vlm__cpu_ctx(be), rms_norm_rows, &nc, vlm_tensor_nelements(x));
}

void vlm__cpu_layer_norm(struct vlm_backend *be,
                         struct vlm_tensor *dst,
                         const struct vlm_tensor *x,
                         const struct vlm_tensor *w,
                         const struct vlm_tensor *b,
                         float eps) {
    struct norm_ctx nc = {
        .vec = vlm__cpu_vec_get(),
        .dst = dst,
        .x = x,
        .w = w ? w->data : NULL,
        .b = b ? b->data : NULL,
        .eps = eps,
    };
    vlm__cpu_parallel(vlm__cpu_ctx(be), layer_norm_rows, &nc, vlm_tensor_nelements(x));
}
