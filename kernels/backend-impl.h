// Private side of include/vlm/backend.h: the operation table each backend fills in. kernels/backend.c checks
// shapes once, in one place, and dispatches through this table; backends may assume valid shapes.
#ifndef VLM_BACKEND_IMPL_H
#define VLM_BACKEND_IMPL_H

#include "vlm/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vlm_backend_iface {
    void (*free)(struct vlm_backend *be);
    int (*synchronize)(struct vlm_backend *be);
    bool (*supports_type)(const struct vlm_backend *be, enum vlm_type type);

    // memory
    int (*alloc)(struct vlm_backend *be, size_t size, void **data);            // zero-filled
    void (*release)(struct vlm_backend *be, void *data);                       // data from alloc or from_host copy
    int (*from_host)(struct vlm_backend *be, const void *host, size_t size, void **data, bool *owned);
    int (*set)(struct vlm_backend *be, void *data, const void *src, size_t size);   // host -> tensor bytes
    int (*get)(struct vlm_backend *be, const void *data, void *dst, size_t size);   // tensor bytes -> host

    // ops (arguments already validated by kernels/backend.c)
    // bias: NULL, or one F32 row of n_out added to every output row
    void (*matmul)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *w,
                   const struct vlm_tensor *x, const struct vlm_tensor *bias);
    void (*get_rows)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *table,
                     const int32_t *ids, int64_t n_ids);
    void (*rms_norm)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x,
                     const struct vlm_tensor *w, float eps);
    void (*layer_norm)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x,
                       const struct vlm_tensor *w, const struct vlm_tensor *b, float eps);
    void (*add)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *a,
                const struct vlm_tensor *b);
    void (*mul)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *a,
                const struct vlm_tensor *b);
    void (*scale)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float s);
    void (*silu)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x);
    void (*gelu)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, enum vlm_gelu_kind kind);
    void (*swiglu)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *gate,
                   const struct vlm_tensor *up);
    void (*softmax)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float scale);
    void (*rope)(struct vlm_backend *be, struct vlm_tensor *x, int32_t n_head, int32_t head_dim, int32_t n_rot,
                 int32_t pos0, float freq_base, float freq_scale, enum vlm_rope_mode mode);
    void (*copy)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x);
    void (*attention)(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *q,
                      const struct vlm_tensor *k, const struct vlm_tensor *v, const struct vlm_attention_params *p);
};

struct vlm_backend {
    const struct vlm_backend_iface *iface;
    char name[16];
    int n_threads;
    void *ctx; // backend-private state
};

// Constructors of the concrete backends (kernels/cpu/backend-cpu.c, kernels/cuda/backend-cuda.cu).
int vlm__backend_cpu_new(const struct vlm_backend_cpu_params *params, struct vlm_backend **out,
                         struct vlm_diag *diag);
int vlm__backend_cuda_new(int device, struct vlm_backend **out, struct vlm_diag *diag);
int vlm__cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif // VLM_BACKEND_IMPL_H
