// Backend front door: tensor helpers, backend lifetime, and every vlm_op_* entry. Each op checks shapes and
// types here, once, and then dispatches through be->iface, so backends may assume valid arguments.
//
// A failed check is a programmer error (model code built a wrong shape): it prints file:line and the condition
// and aborts. Nothing from a file or a client reaches these checks unvalidated (the loader checks shapes).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend-impl.h"
#include "kernels/cpu/ops-cpu.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/repack.h"
#include "vlm/log.h"

static _Noreturn void op_abort(const char *file, int line, const char *func, const char *cond) {
    fprintf(stderr, "vlmd: %s:%d: %s: assertion failed: %s\n", file, line, func, cond);
    fflush(stderr);
    abort();
}

#define OP_ASSERT(cond)                                                                                                \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            op_abort(__FILE__, __LINE__, __func__, #cond);                                                             \
        }                                                                                                              \
    } while (0)

// ---- tensors -------------------------------------------------------------------------------------------------

struct vlm_tensor vlm_tensor_make(enum vlm_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    const struct vlm_type_traits *tt = vlm_type_traits((int)type);
    OP_ASSERT(tt->name && tt->type_size > 0);
    OP_ASSERT(ne0 >= 0 && ne1 >= 0 && ne2 >= 0 && ne3 >= 0);
    OP_ASSERT(ne0 % tt->blck_size == 0);
    struct vlm_tensor t = {.type = type, .ne = {ne0, ne1, ne2, ne3}};
    t.nb[0] = tt->type_size;
    t.nb[1] = vlm_row_size(type, ne0);
    t.nb[2] = t.nb[1] * (size_t)ne1;
    t.nb[3] = t.nb[2] * (size_t)ne2;
    return t;
}

int64_t vlm_tensor_nelements(const struct vlm_tensor *t) {
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

int64_t vlm_tensor_nrows(const struct vlm_tensor *t) {
    return t->ne[1] * t->ne[2] * t->ne[3];
}

size_t vlm_tensor_nbytes(const struct vlm_tensor *t) {
    return vlm_row_size(t->type, t->ne[0]) * (size_t)vlm_tensor_nrows(t);
}

bool vlm_tensor_is_contiguous(const struct vlm_tensor *t) {
    const struct vlm_type_traits *tt = vlm_type_traits((int)t->type);
    if (t->nb[0] != tt->type_size) {
        return false;
    }
    size_t expect = vlm_row_size(t->type, t->ne[0]);
    for (int i = 1; i < 4; i++) {
        // the stride of a dimension of extent 1 is never used to address anything
        if (t->ne[i] != 1 && t->nb[i] != expect) {
            return false;
        }
        expect *= (size_t)t->ne[i];
    }
    return true;
}

struct vlm_tensor vlm_tensor_rows(const struct vlm_tensor *t, int64_t row0, int64_t n_rows) {
    OP_ASSERT(t->ne[2] == 1 && t->ne[3] == 1);
    OP_ASSERT(row0 >= 0 && n_rows >= 0 && row0 + n_rows <= t->ne[1]);
    struct vlm_tensor v = *t;
    v.data = t->data ? (char *)t->data + (size_t)row0 * t->nb[1] : NULL;
    v.ne[1] = n_rows;
    v.nb[2] = t->nb[1] * (size_t)n_rows;
    v.nb[3] = v.nb[2];
    v.owns_data = false; // keeps `backend`, so set/get on a view still go through the device's copy routine
    return v;
}

int vlm_tensor_alloc(struct vlm_backend *be, const struct vlm_tensor *desc, struct vlm_tensor *out) {
    struct vlm_tensor t = vlm_tensor_make(desc->type, desc->ne[0], desc->ne[1], desc->ne[2], desc->ne[3]);
    void *data = NULL;
    int rc = be->iface->alloc(be, vlm_tensor_nbytes(&t), &data);
    if (rc < 0) {
        return rc;
    }
    t.data = data;
    t.backend = be;
    t.owns_data = true;
    t.name = desc->name;
    *out = t;
    return 0;
}

int vlm_tensor_from_host(struct vlm_backend *be,
                         const struct vlm_tensor *desc,
                         const void *host,
                         struct vlm_tensor *out) {
    OP_ASSERT(vlm_tensor_is_contiguous(desc));
    void *data = NULL;
    bool owned = false;
    int rc = be->iface->from_host(be, host, vlm_tensor_nbytes(desc), &data, &owned);
    if (rc < 0) {
        return rc;
    }
    struct vlm_tensor t = *desc;
    t.data = data;
    t.backend = be;
    t.owns_data = owned; // borrowed host memory (a GGUF mapping) is not released through the backend
    vlm__cpu_prepare_weights(be, &t); // CPU: packed copies for the faster matmul kernels (no-op elsewhere)
    *out = t;
    return 0;
}

void vlm_tensor_release(struct vlm_tensor *t) {
    if (!t) {
        return;
    }
    if (t->owns_data && t->backend && t->data) {
        t->backend->iface->release(t->backend, t->data);
    } else if (t->backend && t->data) {
        vlm__cpu_forget_weights(t->backend, t); // a borrowed CPU weight may have a packed copy
    }
    t->data = NULL;
    t->backend = NULL;
    t->owns_data = false;
}

int vlm_tensor_set(struct vlm_tensor *t, const void *src, size_t offset, size_t size) {
    size_t nbytes = vlm_tensor_nbytes(t);
    if (!t->data || offset > nbytes || size > nbytes - offset) {
        return VLM_ERANGE;
    }
    if (size == 0) {
        return 0;
    }
    if (!t->backend) { // plain host memory
        memcpy((char *)t->data + offset, src, size);
        return 0;
    }
    return t->backend->iface->set(t->backend, (char *)t->data + offset, src, size);
}

int vlm_tensor_get(const struct vlm_tensor *t, void *dst, size_t offset, size_t size) {
    size_t nbytes = vlm_tensor_nbytes(t);
    if (!t->data || offset > nbytes || size > nbytes - offset) {
        return VLM_ERANGE;
    }
    if (size == 0) {
        return 0;
    }
    if (!t->backend) {
        memcpy(dst, (const char *)t->data + offset, size);
        return 0;
    }
    return t->backend->iface->get(t->backend, (const char *)t->data + offset, dst, size);
}

// ---- backend lifetime ----------------------------------------------------------------------------------------

int vlm_backend_cpu_new(const struct vlm_backend_cpu_params *params, struct vlm_backend **out, struct vlm_diag *diag) {
    return vlm__backend_cpu_new(params, out, diag);
}

int vlm_backend_cuda_new(int device, struct vlm_backend **out, struct vlm_diag *diag) {
#ifdef VLM_HAVE_CUDA
    return vlm__backend_cuda_new(device, out, diag);
#else
    (void)out;
    return vlm_diag_set(diag, VLM_EUNSUPPORTED, "cuda%d: this build has no CUDA backend", device);
#endif
}

void vlm_backend_free(struct vlm_backend *be) {
    if (be) {
        be->iface->free(be);
    }
}

const char *vlm_backend_name(const struct vlm_backend *be) {
    return be->name;
}

int vlm_backend_n_threads(const struct vlm_backend *be) {
    return be->n_threads;
}

int vlm_backend_synchronize(struct vlm_backend *be) {
    return be->iface->synchronize(be);
}

const char *vlm_precision_name(enum vlm_precision p) {
    switch (p) {
    case VLM_PRECISION_EXACT: return "exact";
    case VLM_PRECISION_BF16: return "bf16";
    default: return "auto";
    }
}

int vlm_precision_parse(const char *name, enum vlm_precision *out) {
    static const enum vlm_precision all[] = {VLM_PRECISION_AUTO, VLM_PRECISION_EXACT, VLM_PRECISION_BF16};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, vlm_precision_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return VLM_EINVAL;
}

bool vlm_backend_fast_bf16(const struct vlm_backend *be) {
    return be && be->iface->matmul == vlm__cpu_matmul && vlm__cpu_bf16_dot();
}

int vlm_tensor_set_precision(struct vlm_backend *be, const struct vlm_tensor *w, enum vlm_precision p) {
    OP_ASSERT(be && w && w->backend == be);
    if (be->iface->matmul != vlm__cpu_matmul) {
        return p == VLM_PRECISION_BF16 && (w->type == VLM_TYPE_F32 || w->type == VLM_TYPE_F16) ? VLM_EUNSUPPORTED
                                                                                                : 0;
    }
    return vlm__cpu_set_precision(be, w, p);
}

bool vlm_backend_supports_type(const struct vlm_backend *be, enum vlm_type type) {
    if ((int)type < 0 || (int)type >= VLM_TYPE_COUNT) {
        return false;
    }
    return be->iface->supports_type(be, type);
}

// ---- shape checks --------------------------------------------------------------------------------------------

// F32 rows of ne[0] contiguous floats, with data.
static bool is_f32_rows(const struct vlm_tensor *t) {
    return t && t->data && t->type == VLM_TYPE_F32 && t->nb[0] == sizeof(float) && t->ne[0] >= 0 && t->ne[1] >= 0 &&
           t->ne[2] >= 1 && t->ne[3] >= 1;
}

static bool same_shape(const struct vlm_tensor *a, const struct vlm_tensor *b) {
    return a->ne[0] == b->ne[0] && a->ne[1] == b->ne[1] && a->ne[2] == b->ne[2] && a->ne[3] == b->ne[3];
}

// A 1-D F32 parameter vector of n floats (norm weight or bias).
static bool is_f32_vec(const struct vlm_tensor *t, int64_t n) {
    return is_f32_rows(t) && t->ne[0] == n && vlm_tensor_nrows(t) == 1;
}

// Rows of a 2-D tensor are evenly strided (nb[1]), which the matmul and attention kernels rely on.
static bool is_2d(const struct vlm_tensor *t) {
    return t->ne[2] == 1 && t->ne[3] == 1 && t->nb[1] >= vlm_row_size(t->type, t->ne[0]);
}

// Byte span [lo, hi) covered by a tensor's elements (for alias checks).
static void byte_span(const struct vlm_tensor *t, const char **lo, const char **hi) {
    size_t last = 0;
    for (int i = 1; i < 4; i++) {
        last += (size_t)(t->ne[i] - 1) * t->nb[i];
    }
    *lo = t->data;
    *hi = (const char *)t->data + last + vlm_row_size(t->type, t->ne[0]);
}

static bool overlaps(const struct vlm_tensor *a, const struct vlm_tensor *b) {
    if (vlm_tensor_nelements(a) == 0 || vlm_tensor_nelements(b) == 0) {
        return false;
    }
    const char *alo, *ahi, *blo, *bhi;
    byte_span(a, &alo, &ahi);
    byte_span(b, &blo, &bhi);
    return alo < bhi && blo < ahi;
}

static bool is_float_type(enum vlm_type type) {
    return type == VLM_TYPE_F32 || type == VLM_TYPE_F16 || type == VLM_TYPE_BF16;
}

// ---- operations ----------------------------------------------------------------------------------------------

static void matmul_checked(struct vlm_backend *be,
                           struct vlm_tensor *dst,
                           const struct vlm_tensor *w,
                           const struct vlm_tensor *x,
                           const struct vlm_tensor *bias) {
    OP_ASSERT(be && w && w->data);
    OP_ASSERT(vlm_backend_supports_type(be, w->type));
    OP_ASSERT(w->nb[0] == vlm_type_traits((int)w->type)->type_size && is_2d(w));
    OP_ASSERT(w->ne[0] % vlm_type_traits((int)w->type)->blck_size == 0);
    OP_ASSERT(is_f32_rows(x) && is_2d(x) && x->ne[0] == w->ne[0]);
    OP_ASSERT(is_f32_rows(dst) && is_2d(dst) && dst->ne[0] == w->ne[1] && dst->ne[1] == x->ne[1]);
    OP_ASSERT(dst->nb[1] % sizeof(float) == 0);
    OP_ASSERT(!overlaps(dst, x) && !overlaps(dst, w));
    if (vlm_tensor_nelements(dst) == 0) {
        return;
    }
    be->iface->matmul(be, dst, w, x, bias);
}

void vlm_op_matmul(struct vlm_backend *be,
                   struct vlm_tensor *dst,
                   const struct vlm_tensor *w,
                   const struct vlm_tensor *x) {
    matmul_checked(be, dst, w, x, NULL);
}

void vlm_op_matmul_bias(struct vlm_backend *be,
                        struct vlm_tensor *dst,
                        const struct vlm_tensor *w,
                        const struct vlm_tensor *x,
                        const struct vlm_tensor *b) {
    if (!b || !b->data) {
        matmul_checked(be, dst, w, x, NULL);
        return;
    }
    OP_ASSERT(is_f32_rows(b) && vlm_tensor_nrows(b) == 1 && w && b->ne[0] == w->ne[1]);
    OP_ASSERT(!overlaps(dst, b));
    matmul_checked(be, dst, w, x, b);
}

void vlm_op_get_rows(
    struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *table, const int32_t *ids, int64_t n_ids) {
    OP_ASSERT(be && table && table->data && n_ids >= 0 && (ids || n_ids == 0));
    OP_ASSERT(vlm_type_traits((int)table->type)->to_float != NULL);
    OP_ASSERT(table->nb[0] == vlm_type_traits((int)table->type)->type_size && is_2d(table));
    OP_ASSERT(is_f32_rows(dst) && dst->ne[0] == table->ne[0] && vlm_tensor_nrows(dst) == n_ids);
    for (int64_t i = 0; i < n_ids; i++) {
        OP_ASSERT(ids[i] >= 0 && ids[i] < table->ne[1]);
    }
    if (n_ids == 0) {
        return;
    }
    be->iface->get_rows(be, dst, table, ids, n_ids);
}

void vlm_op_rms_norm(
    struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, const struct vlm_tensor *w, float eps) {
    OP_ASSERT(be && is_f32_rows(x) && is_f32_rows(dst) && same_shape(dst, x));
    OP_ASSERT(!w || is_f32_vec(w, x->ne[0]));
    OP_ASSERT(eps >= 0.0f);
    if (vlm_tensor_nelements(x) == 0) {
        return;
    }
    be->iface->rms_norm(be, dst, x, w, eps);
}

void vlm_op_layer_norm(struct vlm_backend *be,
                       struct vlm_tensor *dst,
                       const struct vlm_tensor *x,
                       const struct vlm_tensor *w,
                       const struct vlm_tensor *b,
                       float eps) {
    OP_ASSERT(be && is_f32_rows(x) && is_f32_rows(dst) && same_shape(dst, x));
    OP_ASSERT(!w || is_f32_vec(w, x->ne[0]));
    OP_ASSERT(!b || is_f32_vec(b, x->ne[0]));
    OP_ASSERT(eps >= 0.0f);
    if (vlm_tensor_nelements(x) == 0) {
        return;
    }
    be->iface->layer_norm(be, dst, x, w, b, eps);
}

static void check_binary(struct vlm_backend *be,
                         const struct vlm_tensor *dst,
                         const struct vlm_tensor *a,
                         const struct vlm_tensor *b) {
    OP_ASSERT(be && is_f32_rows(a) && is_f32_rows(b) && is_f32_rows(dst) && same_shape(dst, a));
    OP_ASSERT(same_shape(a, b) || (b->ne[0] == a->ne[0] && vlm_tensor_nrows(b) == 1));
}

void vlm_op_add(struct vlm_backend *be,
                struct vlm_tensor *dst,
                const struct vlm_tensor *a,
                const struct vlm_tensor *b) {
    check_binary(be, dst, a, b);
    if (vlm_tensor_nelements(a) != 0) {
        be->iface->add(be, dst, a, b);
    }
}

void vlm_op_mul(struct vlm_backend *be,
                struct vlm_tensor *dst,
                const struct vlm_tensor *a,
                const struct vlm_tensor *b) {
    check_binary(be, dst, a, b);
    if (vlm_tensor_nelements(a) != 0) {
        be->iface->mul(be, dst, a, b);
    }
}

void vlm_op_scale(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float s) {
    OP_ASSERT(be && is_f32_rows(x) && is_f32_rows(dst) && same_shape(dst, x));
    if (vlm_tensor_nelements(x) != 0) {
        be->iface->scale(be, dst, x, s);
    }
}

void vlm_op_silu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x) {
    OP_ASSERT(be && is_f32_rows(x) && is_f32_rows(dst) && same_shape(dst, x));
    if (vlm_tensor_nelements(x) != 0) {
        be->iface->silu(be, dst, x);
    }
}

void vlm_op_gelu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, enum vlm_gelu_kind kind) {
    OP_ASSERT(be && is_f32_rows(x) && is_f32_rows(dst) && same_shape(dst, x));
    OP_ASSERT(kind == VLM_GELU_ERF || kind == VLM_GELU_TANH || kind == VLM_GELU_QUICK);
    if (vlm_tensor_nelements(x) != 0) {
        be->iface->gelu(be, dst, x, kind);
    }
}

void vlm_op_swiglu(struct vlm_backend *be,
                   struct vlm_tensor *dst,
                   const struct vlm_tensor *gate,
                   const struct vlm_tensor *up) {
    OP_ASSERT(be && is_f32_rows(gate) && is_f32_rows(up) && is_f32_rows(dst));
    OP_ASSERT(same_shape(dst, gate) && same_shape(up, gate));
    if (vlm_tensor_nelements(gate) != 0) {
        be->iface->swiglu(be, dst, gate, up);
    }
}

void vlm_op_softmax(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float scale) {
    OP_ASSERT(be && is_f32_rows(x) && is_f32_rows(dst) && same_shape(dst, x));
    if (vlm_tensor_nelements(x) != 0) {
        be->iface->softmax(be, dst, x, scale);
    }
}

void vlm_op_rope(struct vlm_backend *be,
                 struct vlm_tensor *x,
                 int32_t n_head,
                 int32_t head_dim,
                 int32_t n_rot,
                 int32_t pos0,
                 float freq_base,
                 float freq_scale,
                 enum vlm_rope_mode mode) {
    OP_ASSERT(be && is_f32_rows(x) && is_2d(x));
    OP_ASSERT(n_head > 0 && head_dim > 0 && x->ne[0] == (int64_t)n_head * head_dim);
    OP_ASSERT(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim);
    OP_ASSERT(pos0 >= 0 && freq_base > 0.0f);
    OP_ASSERT(mode == VLM_ROPE_NORM || mode == VLM_ROPE_NEOX);
    if (x->ne[1] != 0) {
        be->iface->rope(be, x, n_head, head_dim, n_rot, pos0, freq_base, freq_scale, mode);
    }
}

void vlm_op_copy(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x) {
    OP_ASSERT(be && dst && x && dst->data && x->data);
    OP_ASSERT(is_float_type(dst->type) && is_float_type(x->type));
    OP_ASSERT(dst->nb[0] == vlm_type_traits((int)dst->type)->type_size);
    OP_ASSERT(x->nb[0] == vlm_type_traits((int)x->type)->type_size);
    OP_ASSERT(vlm_tensor_nelements(dst) == vlm_tensor_nelements(x));
    // Non-contiguous operands are copied row by row, so their rows must line up.
    OP_ASSERT((vlm_tensor_is_contiguous(dst) && vlm_tensor_is_contiguous(x)) ||
              (dst->ne[0] == x->ne[0] && vlm_tensor_nrows(dst) == vlm_tensor_nrows(x)));
    OP_ASSERT(dst->data == x->data ? dst->type == x->type : !overlaps(dst, x));
    if (vlm_tensor_nelements(x) != 0 && dst->data != x->data) {
        be->iface->copy(be, dst, x);
    }
}

void vlm_op_attention(struct vlm_backend *be,
                      struct vlm_tensor *dst,
                      const struct vlm_tensor *q,
                      const struct vlm_tensor *k,
                      const struct vlm_tensor *v,
                      const struct vlm_attention_params *p) {
    OP_ASSERT(be && p && k && v && k->data && v->data);
    OP_ASSERT(p->n_head > 0 && p->n_head_kv > 0 && p->n_head % p->n_head_kv == 0 && p->head_dim > 0);
    OP_ASSERT(p->window >= 0 && p->pos0 >= 0 && p->scale > 0.0f);
    int64_t q_width = (int64_t)p->n_head * p->head_dim, kv_width = (int64_t)p->n_head_kv * p->head_dim;
    OP_ASSERT(is_f32_rows(q) && is_2d(q) && q->ne[0] == q_width);
    OP_ASSERT(is_f32_rows(dst) && is_2d(dst) && same_shape(dst, q));
    OP_ASSERT(dst->data == q->data ? dst->nb[1] == q->nb[1] : !overlaps(dst, q));
    OP_ASSERT(k->type == VLM_TYPE_F32 || k->type == VLM_TYPE_F16);
    OP_ASSERT(v->type == k->type);
    OP_ASSERT(k->nb[0] == vlm_type_traits((int)k->type)->type_size && is_2d(k) && k->ne[0] == kv_width);
    OP_ASSERT(v->nb[0] == k->nb[0] && is_2d(v) && v->ne[0] == kv_width);
    OP_ASSERT(p->n_kv >= 1 && p->n_kv <= k->ne[1] && p->n_kv <= v->ne[1]);
    OP_ASSERT(!p->causal || (int64_t)p->n_kv >= (int64_t)p->pos0 + q->ne[1]);
    OP_ASSERT(!overlaps(dst, k) && !overlaps(dst, v));
    if (q->ne[1] != 0) {
        be->iface->attention(be, dst, q, k, v, p);
    }
}
