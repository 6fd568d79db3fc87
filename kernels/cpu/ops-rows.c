// Row movement: get_rows (embedding lookup, any type with a to_float) and copy with float-type conversion
// (activations into an F16/BF16/F32 KV cache slot).
#include <string.h>

#include "kernels/cpu/ops-cpu.h"

struct get_rows_ctx {
    struct vlm_tensor *dst;
    const struct vlm_tensor *table;
    const int32_t *ids;
    int64_t n_ids;
    vlm_to_float_fn to_float;
};

static void get_rows_worker(void *arg, int ith, int nth) {
    const struct get_rows_ctx *gc = arg;
    int64_t lo, hi, n = gc->table->ne[0];
    vlm__cpu_split(gc->n_ids, ith, nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        const char *src = (const char *)gc->table->data + (size_t)gc->ids[t] * gc->table->nb[1];
        float *y = vlm__row_f32(gc->dst, t);
        if (gc->table->type == VLM_TYPE_F32) {
            memcpy(y, src, (size_t)n * sizeof(float));
        } else {
            gc->to_float(src, y, n);
        }
    }
}

void vlm__cpu_get_rows(
    struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *table, const int32_t *ids, int64_t n_ids) {
    struct get_rows_ctx gc = {
        .dst = dst,
        .table = table,
        .ids = ids,
        .n_ids = n_ids,
        .to_float = vlm_type_traits((int)table->type)->to_float,
    };
    vlm__cpu_parallel(vlm__cpu_ctx(be), get_rows_worker, &gc, 4 * n_ids * table->ne[0]);
}

struct copy_ctx {
    struct vlm_tensor *dst;
    const struct vlm_tensor *x;
    bool flat; // both contiguous: one run of nelements
};

static inline float load_as_f32(enum vlm_type type, const void *p, int64_t i) {
    switch (type) {
    case VLM_TYPE_F16:
        return vlm_fp16_to_fp32(((const uint16_t *)p)[i]);
    case VLM_TYPE_BF16:
        return vlm_bf16_to_fp32(((const uint16_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

static void convert_run(enum vlm_type dt, void *dst, enum vlm_type st, const void *src, int64_t n) {
    if (dt == st) {
        memcpy(dst, src, (size_t)n * vlm_type_traits((int)dt)->type_size);
        return;
    }
    switch (dt) {
    case VLM_TYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            ((uint16_t *)dst)[i] = vlm_fp32_to_fp16(load_as_f32(st, src, i));
        }
        break;
    case VLM_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            ((uint16_t *)dst)[i] = vlm_fp32_to_bf16(load_as_f32(st, src, i));
        }
        break;
    default:
        for (int64_t i = 0; i < n; i++) {
            ((float *)dst)[i] = load_as_f32(st, src, i);
        }
        break;
    }
}

static void copy_worker(void *arg, int ith, int nth) {
    const struct copy_ctx *cc = arg;
    enum vlm_type dt = cc->dst->type, st = cc->x->type;
    size_t dsz = vlm_type_traits((int)dt)->type_size, ssz = vlm_type_traits((int)st)->type_size;
    int64_t lo, hi;
    if (cc->flat) {
        vlm__cpu_split(vlm_tensor_nelements(cc->x), ith, nth, &lo, &hi);
        convert_run(dt, (char *)cc->dst->data + (size_t)lo * dsz, st, (const char *)cc->x->data + (size_t)lo * ssz,
                    hi - lo);
        return;
    }
    vlm__cpu_split(vlm_tensor_nrows(cc->x), ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        convert_run(dt, vlm__row(cc->dst, r), st, vlm__row(cc->x, r), cc->x->ne[0]);
    }
}

void vlm__cpu_copy(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x) {
    struct copy_ctx cc = {
        .dst = dst,
        .x = x,
        .flat = vlm_tensor_is_contiguous(dst) && vlm_tensor_is_contiguous(x),
    };
    vlm__cpu_parallel(vlm__cpu_ctx(be), copy_worker, &cc, 2 * vlm_tensor_nelements(x));
}
