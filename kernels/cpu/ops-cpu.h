// Internals shared by the CPU backend's op files: backend state (thread pool, scratch), the parallel-for helper,
// row addressing, and the table of vector kernels chosen at run time for the instruction set.
//
// Ops receive arguments already validated by kernels/backend.c; they only read rows through the byte strides.
#ifndef VLM_CPU_OPS_CPU_H
#define VLM_CPU_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend-impl.h"
#include "kernels/cpu/threadpool.h"

// ---- vector kernels ------------------------------------------------------------------------------------------
// One table per instruction-set path. The scalar table (ops-vec.c) is the reference; x86/ops-avx2.c and
// x86/ops-avx512.c provide the same functions with intrinsics. All take any n >= 0 and unaligned pointers.
struct vlm_cpu_vec {
    float (*dot_f32)(int64_t n, const float *x, const float *y);
    float (*dot_f16)(int64_t n, const float *x, const uint16_t *y);    // y: IEEE half bits
    void (*axpy_f32)(int64_t n, float a, const float *x, float *y);    // y += a * x
    void (*axpy_f16)(int64_t n, float a, const uint16_t *x, float *y); // y += a * x
    float (*max)(int64_t n, const float *x);                           // -INFINITY for n == 0
    float (*sum)(int64_t n, const float *x);
    float (*sum_sq)(int64_t n, const float *x);
    float (*exp_sum)(int64_t n, float *x, float scale, float sub);       // x = exp(x * scale - sub); returns sum
    void (*silu)(int64_t n, const float *x, float *y);                   // y = x / (1 + exp(-x)); y may alias x
    void (*swiglu)(int64_t n, const float *g, const float *u, float *y); // y = silu(g) * u; y may alias g or u
    void (*gelu_quick)(int64_t n, const float *x, float *y); // y = x / (1 + exp(-1.702 x)) (CLIP); y may alias x
};

extern const struct vlm_cpu_vec vlm__cpu_vec_scalar;
#ifdef VLM_HAVE_X86
extern const struct vlm_cpu_vec vlm__cpu_vec_avx2;
extern const struct vlm_cpu_vec vlm__cpu_vec_avx512;
#endif

// The table for the ISA path in use (vlm__cpu_isa_get in quants.h).
const struct vlm_cpu_vec *vlm__cpu_vec_get(void);

// ---- backend state -------------------------------------------------------------------------------------------

struct vlm_cpu_ctx {
    struct vlm_threadpool *pool;
    int n_threads;
    void *wdata; // activation rows converted to a weight type's vec_dot_type
    size_t wdata_size;
    float *tscratch;        // per-thread scratch: thread ith owns [ith * tscratch_stride, (ith + 1) * tscratch_stride)
    size_t tscratch_stride; // floats, a multiple of 16
};

static inline struct vlm_cpu_ctx *vlm__cpu_ctx(struct vlm_backend *be) {
    return (struct vlm_cpu_ctx *)be->ctx;
}

// Grows the conversion buffer to at least `size` bytes (contents not kept) and returns it. Aborts on OOM: ops
// cannot fail, and the size follows from the model's shapes, which the loader bounded.
void *vlm__cpu_wdata(struct vlm_cpu_ctx *c, size_t size);

// Grows the per-thread scratch to at least `n_floats` per thread and returns the base pointer.
float *vlm__cpu_tscratch(struct vlm_cpu_ctx *c, size_t n_floats);

// Runs fn over the pool, or inline as (0, 1) when `work` (roughly: elements touched) is too small to pay for
// waking the workers.
void vlm__cpu_parallel(struct vlm_cpu_ctx *c, vlm_threadpool_fn fn, void *ctx, int64_t work);

// [*lo, *hi): thread ith's share of n items split into nth near-equal contiguous ranges.
static inline void vlm__cpu_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    *lo = n * ith / nth;
    *hi = n * (ith + 1) / nth;
}

// Address of row r (flattened over ne[1..3]) of a tensor.
static inline char *vlm__row(const struct vlm_tensor *t, int64_t r) {
    int64_t i1 = r % t->ne[1];
    int64_t i2 = (r / t->ne[1]) % t->ne[2];
    int64_t i3 = r / (t->ne[1] * t->ne[2]);
    return (char *)t->data + (size_t)i1 * t->nb[1] + (size_t)i2 * t->nb[2] + (size_t)i3 * t->nb[3];
}

static inline float *vlm__row_f32(const struct vlm_tensor *t, int64_t r) {
    return (float *)(void *)vlm__row(t, r);
}

// ---- op implementations (iface entries) ----------------------------------------------------------------------

void vlm__cpu_matmul(struct vlm_backend *be,
                     struct vlm_tensor *dst,
                     const struct vlm_tensor *w,
                     const struct vlm_tensor *x,
                     const struct vlm_tensor *bias);
void vlm__cpu_get_rows(
    struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *table, const int32_t *ids, int64_t n_ids);
void vlm__cpu_rms_norm(
    struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, const struct vlm_tensor *w, float eps);
void vlm__cpu_layer_norm(struct vlm_backend *be,
                         struct vlm_tensor *dst,
                         const struct vlm_tensor *x,
                         const struct vlm_tensor *w,
                         const struct vlm_tensor *b,
                         float eps);
void vlm__cpu_add(struct vlm_backend *be,
                  struct vlm_tensor *dst,
                  const struct vlm_tensor *a,
                  const struct vlm_tensor *b);
void vlm__cpu_mul(struct vlm_backend *be,
                  struct vlm_tensor *dst,
                  const struct vlm_tensor *a,
                  const struct vlm_tensor *b);
void vlm__cpu_scale(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float s);
void vlm__cpu_silu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x);
void vlm__cpu_gelu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, enum vlm_gelu_kind kind);
void vlm__cpu_swiglu(struct vlm_backend *be,
                     struct vlm_tensor *dst,
                     const struct vlm_tensor *gate,
                     const struct vlm_tensor *up);
void vlm__cpu_softmax(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float scale);
void vlm__cpu_rope(struct vlm_backend *be,
                   struct vlm_tensor *x,
                   int32_t n_head,
                   int32_t head_dim,
                   int32_t n_rot,
                   int32_t pos0,
                   float freq_base,
                   float freq_scale,
                   enum vlm_rope_mode mode);
void vlm__cpu_copy(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x);
void vlm__cpu_attention(struct vlm_backend *be,
                        struct vlm_tensor *dst,
                        const struct vlm_tensor *q,
                        const struct vlm_tensor *k,
                        const struct vlm_tensor *v,
                        const struct vlm_attention_params *p);

#endif // VLM_CPU_OPS_CPU_H
