// Elementwise ops: add/mul with row broadcast, scale, and the activations (SiLU, GELU variants, SwiGLU).
// Rows are split evenly among threads; every op allows dst to alias its inputs.
#include <math.h>

#include "kernels/cpu/ops-cpu.h"

enum ew_op {
    EW_ADD,
    EW_MUL,
    EW_SCALE,
    EW_SILU,
    EW_GELU,
    EW_SWIGLU,
};

struct ew_ctx {
    enum ew_op op;
    const struct vlm_cpu_vec *vec;
    struct vlm_tensor *dst;
    const struct vlm_tensor *a;
    const struct vlm_tensor *b; // NULL for unary ops
    bool b_bcast;               // b is a single row used for every row of a
    float s;
    enum vlm_gelu_kind gelu;
};

static void gelu_row(const struct vlm_cpu_vec *vec, enum vlm_gelu_kind kind, int64_t n, const float *x, float *y) {
    switch (kind) {
    case VLM_GELU_ERF:
        for (int64_t i = 0; i < n; i++) {
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        }
        break;
    case VLM_GELU_TANH:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    case VLM_GELU_QUICK: vec->gelu_quick(n, x, y); break;
    }
}

static void ew_rows(void *arg, int ith, int nth) {
    const struct ew_ctx *ec = arg;
    int64_t n = ec->a->ne[0], lo, hi;
    vlm__cpu_split(vlm_tensor_nrows(ec->a), ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const float *a = vlm__row_f32(ec->a, r);
        const float *b = ec->b ? vlm__row_f32(ec->b, ec->b_bcast ? 0 : r) : NULL;
        float *y = vlm__row_f32(ec->dst, r);
        switch (ec->op) {
        case EW_ADD:
            for (int64_t i = 0; i < n; i++) {
                y[i] = a[i] + b[i];
            }
            break;
        case EW_MUL:
            for (int64_t i = 0; i < n; i++) {
                y[i] = a[i] * b[i];
            }
            break;
        case EW_SCALE:
            for (int64_t i = 0; i < n; i++) {
                y[i] = a[i] * ec->s;
            }
            break;
        case EW_SILU:
            ec->vec->silu(n, a, y);
            break;
        case EW_GELU:
            gelu_row(ec->vec, ec->gelu, n, a, y);
            break;
        case EW_SWIGLU:
            ec->vec->swiglu(n, a, b, y);
            break;
        }
    }
}

static void ew_run(struct vlm_backend *be, struct ew_ctx *ec) {
    ec->vec = vlm__cpu_vec_get();
    ec->b_bcast = ec->b && vlm_tensor_nrows(ec->b) == 1 && vlm_tensor_nrows(ec->a) != 1;
    int64_t work = vlm_tensor_nelements(ec->a);
    if (ec->op == EW_SILU || ec->op == EW_GELU || ec->op == EW_SWIGLU) {
        work *= 8; // transcendental per element
    }
    vlm__cpu_parallel(vlm__cpu_ctx(be), ew_rows, ec, work);
}

void vlm__cpu_add(struct vlm_backend *be,
                  struct vlm_tensor *dst,
                  const struct vlm_tensor *a,
                  const struct vlm_tensor *b) {
    struct ew_ctx ec = {.op = EW_ADD, .dst = dst, .a = a, .b = b};
    ew_run(be, &ec);
}

void vlm__cpu_mul(struct vlm_backend *be,
                  struct vlm_tensor *dst,
                  const struct vlm_tensor *a,
                  const struct vlm_tensor *b) {
    struct ew_ctx ec = {.op = EW_MUL, .dst = dst, .a = a, .b = b};
    ew_run(be, &ec);
}

void vlm__cpu_scale(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float s) {
    struct ew_ctx ec = {.op = EW_SCALE, .dst = dst, .a = x, .s = s};
    ew_run(be, &ec);
}

void vlm__cpu_silu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x) {
    struct ew_ctx ec = {.op = EW_SILU, .dst = dst, .a = x};
    ew_run(be, &ec);
}

void vlm__cpu_gelu(struct vlm_backend *be,
                   struct vlm_tensor *dst,
                   const struct vlm_tensor *x,
                   enum vlm_gelu_kind kind) {
    struct ew_ctx ec = {.op = EW_GELU, .dst = dst, .a = x, .gelu = kind};
    ew_run(be, &ec);
}

void vlm__cpu_swiglu(struct vlm_backend *be,
                     struct vlm_tensor *dst,
                     const struct vlm_tensor *gate,
                     const struct vlm_tensor *up) {
    struct ew_ctx ec = {.op = EW_SWIGLU, .dst = dst, .a = gate, .b = up};
    ew_run(be, &ec);
}
