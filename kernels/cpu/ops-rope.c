// Rotary position embedding, in place. Angles are computed in double: at positions in the thousands a float
// angle is off by ~1e-4 rad, which is visible against a double reference and needless.
#include <math.h>

#include "kernels/cpu/ops-cpu.h"

struct rope_ctx {
    struct vlm_cpu_ctx *c;
    const struct vlm_tensor *x;
    int32_t n_head;
    int32_t head_dim;
    int32_t n_rot;
    int32_t pos0;
    double freq_scale;
    double theta_step; // base^(-2/n_rot): ratio between consecutive pair frequencies
    enum vlm_rope_mode mode;
};

static void rope_rows(void *arg, int ith, int nth) {
    const struct rope_ctx *rc = arg;
    int half = rc->n_rot / 2;
    float *cs = rc->c->tscratch + (size_t)ith * rc->c->tscratch_stride; // [cos, sin] per pair
    int64_t lo, hi;
    vlm__cpu_split(rc->x->ne[1], ith, nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        double theta = ((double)rc->pos0 + (double)t) * rc->freq_scale;
        for (int i = 0; i < half; i++) {
            cs[2 * i] = (float)cos(theta);
            cs[2 * i + 1] = (float)sin(theta);
            theta *= rc->theta_step;
        }
        float *row = vlm__row_f32(rc->x, t);
        for (int32_t h = 0; h < rc->n_head; h++) {
            float *x = row + (size_t)h * (size_t)rc->head_dim;
            if (rc->mode == VLM_ROPE_NEOX) {
                for (int i = 0; i < half; i++) {
                    float x0 = x[i], x1 = x[i + half];
                    x[i] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
                    x[i + half] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float x0 = x[2 * i], x1 = x[2 * i + 1];
                    x[2 * i] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
                    x[2 * i + 1] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
                }
            }
        }
    }
}

void vlm__cpu_rope(struct vlm_backend *be,
                   struct vlm_tensor *x,
                   int32_t n_head,
                   int32_t head_dim,
                   int32_t n_rot,
                   int32_t pos0,
                   float freq_base,
                   float freq_scale,
                   enum vlm_rope_mode mode) {
    struct vlm_cpu_ctx *c = vlm__cpu_ctx(be);
    vlm__cpu_tscratch(c, (size_t)n_rot);
    struct rope_ctx rc = {
        .c = c,
        .x = x,
        .n_head = n_head,
        .head_dim = head_dim,
        .n_rot = n_rot,
        .pos0 = pos0,
        .freq_scale = (double)freq_scale,
        .theta_step = pow((double)freq_base, -2.0 / (double)n_rot),
        .mode = mode,
    };
    vlm__cpu_parallel(c, rope_rows, &rc, x->ne[1] * (n_rot * 16 + (int64_t)n_head * n_rot));
}
