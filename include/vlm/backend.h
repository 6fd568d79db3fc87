// Compute backend interface: one table of eager operations, implemented by the CPU backend (kernels/cpu) and
// the CUDA backend (kernels/cuda). Model code (plugins) is written once against these calls.
//
// Tensors: `struct vlm_tensor` describes up to 4-D data in ggml order (ne[0] contiguous) with byte strides.
// Activations are F32 unless an op says otherwise; weights may be any supported type (vlm_type_is_supported).
// All shapes use ggml's convention for matrices: a weight with ne = [n_in, n_out] has n_out rows of n_in.
//
// Calls run eagerly: on the CPU they have finished when the call returns; on CUDA they are queued on the
// backend's stream and vlm_backend_synchronize() waits. Shape mismatches are programmer errors (VLM_ASSERT);
// ops never see file or client data unchecked. A backend object is used by one thread at a time (the worker
// that owns the model); its CPU thread pool is internal.
#ifndef VLM_BACKEND_H
#define VLM_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vlm_backend;

struct vlm_tensor {
    enum vlm_type type;
    int64_t ne[4];               // elements per dimension; unused dims are 1
    size_t nb[4];                // byte strides; nb[0] is the block size in bytes for the type
    void *data;                  // host pointer (CPU backend) or device pointer (CUDA backend)
    struct vlm_backend *backend; // backend `data` lives on (NULL: plain host memory, e.g. a test's array)
    bool owns_data;              // release frees `data` (false for views and borrowed host weights)
    const char *name;            // optional, for messages
};

// Rotary embedding layouts (ggml's mode ids).
enum vlm_rope_mode {
    VLM_ROPE_NORM = 0, // rotate adjacent pairs (x[2i], x[2i+1]): llama arch in GGUF (Q/K rows permuted)
    VLM_ROPE_NEOX = 2, // rotate (x[i], x[i + n_rot/2]): HF layout
};

enum vlm_gelu_kind {
    VLM_GELU_ERF = 0,   // exact: x/2 * (1 + erf(x/sqrt 2)), PyTorch nn.GELU()
    VLM_GELU_TANH = 1,  // tanh approximation, PyTorch GELU(approximate='tanh')
    VLM_GELU_QUICK = 2, // x * sigmoid(1.702 x), CLIP's quick_gelu
};

struct vlm_attention_params {
    int32_t n_head;    // query heads
    int32_t n_head_kv; // key/value heads; n_head % n_head_kv == 0 (grouped-query attention)
    int32_t head_dim;
    int32_t pos0;      // absolute position of the first query row
    int32_t n_kv;      // number of valid cache positions (>= pos0 + n_tokens when causal)
    int32_t window;    // sliding window: a query at position p sees keys in (p - window, p]; 0 = unlimited
    bool causal;       // mask keys after the query's position
    float scale;       // usually 1/sqrt(head_dim)
};

// How a backend multiplies with F32 and F16 weights (quantized ones have one way; BF16 ones are BF16).
enum vlm_precision {
    VLM_PRECISION_AUTO = 0,  // the model plugin's choice (see struct vlm_host in plugin.h)
    VLM_PRECISION_EXACT = 1, // the stored weight times the F32 activation, exact products summed in F32
    VLM_PRECISION_BF16 = 2,  // weight and activation rounded to BF16 (8-bit significands), products summed in F32:
                             // twice the multiply rate on CPUs with AVX512-BF16; what LLaVA was trained in
};

// "auto", "exact", "bf16".
VLM_API const char *vlm_precision_name(enum vlm_precision p);
// Parses a name vlm_precision_name returns; VLM_EINVAL for anything else.
VLM_API int vlm_precision_parse(const char *name, enum vlm_precision *out);

// ---- backend lifetime ------------------------------------------------------------------------------------

struct vlm_backend_cpu_params {
    int n_threads; // <= 0: the number of online CPUs
};

// Creates a CPU backend with its own persistent thread pool. Free with vlm_backend_free.
VLM_API int vlm_backend_cpu_new(const struct vlm_backend_cpu_params *params, struct vlm_backend **out,
                                struct vlm_diag *diag);

// Creates a CUDA backend on `device`. VLM_EUNSUPPORTED when built without CUDA or no device exists.
VLM_API int vlm_backend_cuda_new(int device, struct vlm_backend **out, struct vlm_diag *diag);

VLM_API void vlm_backend_free(struct vlm_backend *be);
VLM_API const char *vlm_backend_name(const struct vlm_backend *be); // "cpu", "cuda0"
VLM_API int vlm_backend_n_threads(const struct vlm_backend *be);
VLM_API int vlm_backend_synchronize(struct vlm_backend *be);
// True when the backend can run matmul with weights of this type.
VLM_API bool vlm_backend_supports_type(const struct vlm_backend *be, enum vlm_type type);
// True when VLM_PRECISION_BF16 is faster than exact products on this backend (CPU: AVX512-BF16 on the AVX-512 path).
VLM_API bool vlm_backend_fast_bf16(const struct vlm_backend *be);

// ---- tensors ---------------------------------------------------------------------------------------------

// Contiguous tensor description without data (ne1..ne3 default 1 when passed as 1).
VLM_API struct vlm_tensor vlm_tensor_make(enum vlm_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3);
VLM_API int64_t vlm_tensor_nelements(const struct vlm_tensor *t);
VLM_API size_t vlm_tensor_nbytes(const struct vlm_tensor *t); // contiguous size
VLM_API int64_t vlm_tensor_nrows(const struct vlm_tensor *t); // ne[1]*ne[2]*ne[3]
VLM_API bool vlm_tensor_is_contiguous(const struct vlm_tensor *t);

// A view of rows [row0, row0 + n_rows) of a 2-D tensor (same data and backend, no ownership).
VLM_API struct vlm_tensor vlm_tensor_rows(const struct vlm_tensor *t, int64_t row0, int64_t n_rows);

// Allocates device memory for a contiguous tensor shaped like `desc` (zero-filled). `*out` is written only on
// success. Release with vlm_tensor_release.
VLM_API int vlm_tensor_alloc(struct vlm_backend *be, const struct vlm_tensor *desc, struct vlm_tensor *out);

// Makes weights available to the backend from host memory that outlives the tensor (a GGUF mapping). The CPU
// backend borrows the pointer (no copy); CUDA copies to the device.
VLM_API int vlm_tensor_from_host(struct vlm_backend *be, const struct vlm_tensor *desc, const void *host,
                                 struct vlm_tensor *out);

VLM_API void vlm_tensor_release(struct vlm_tensor *t);

// Multiplies with weight `w` (a whole tensor from vlm_tensor_from_host) at precision `p` from then on. For F32 and
// F16 weights, VLM_PRECISION_BF16 makes the CPU backend keep a BF16 copy in its packed layout (the stored bytes
// stay as they are for every other op; the copy is dropped with the tensor); EXACT (or AUTO) drops such a copy.
// Other types are left alone (0). VLM_EUNSUPPORTED when the backend has no BF16 path: it keeps computing exactly.
VLM_API int vlm_tensor_set_precision(struct vlm_backend *be, const struct vlm_tensor *w, enum vlm_precision p);

// Copies bytes between host memory and a tensor (`offset` and `size` in bytes within the contiguous tensor).
VLM_API int vlm_tensor_set(struct vlm_tensor *t, const void *src, size_t offset, size_t size);
VLM_API int vlm_tensor_get(const struct vlm_tensor *t, void *dst, size_t offset, size_t size);

// ---- operations ------------------------------------------------------------------------------------------
// Unless said otherwise: `x` and `dst` are F32 with the same shape, rows are ne[0] long, and dst may alias x.

// dst[t][o] = sum_i w[o][i] * x[t][i].  w: [n_in, n_out] any supported type; x: [n_in, n_tok] F32;
// dst: [n_out, n_tok] F32 (must not alias x).
VLM_API void vlm_op_matmul(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *w,
                           const struct vlm_tensor *x);
// dst = matmul(w, x) + b on every row: b is [n_out] F32 (or NULL / no data: plain matmul). One pass over dst where
// the backend can add the bias as it stores the product (the CPU's packed BF16 kernel does).
VLM_API void vlm_op_matmul_bias(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *w,
                                const struct vlm_tensor *x, const struct vlm_tensor *b);

// dst row t = table row ids[t], converted to F32. table: [n_embd, n_rows] any supported type;
// ids: host array of n_ids values, each checked against n_rows by the caller; dst: [n_embd, n_ids].
VLM_API void vlm_op_get_rows(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *table,
                             const int32_t *ids, int64_t n_ids);

// dst = x / sqrt(mean(x^2) + eps) * w per row; w: [ne0] F32 or NULL.
VLM_API void vlm_op_rms_norm(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x,
                             const struct vlm_tensor *w, float eps);

// dst = (x - mean) / sqrt(var + eps) * w + b per row; w, b: [ne0] F32 or NULL.
VLM_API void vlm_op_layer_norm(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x,
                               const struct vlm_tensor *w, const struct vlm_tensor *b, float eps);

// Elementwise with row broadcast: b has the same shape as a, or a single row ([ne0, 1]).
VLM_API void vlm_op_add(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *a,
                        const struct vlm_tensor *b);
VLM_API void vlm_op_mul(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *a,
                        const struct vlm_tensor *b);
VLM_API void vlm_op_scale(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x, float s);

VLM_API void vlm_op_silu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x);
VLM_API void vlm_op_gelu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x,
                         enum vlm_gelu_kind kind);
// dst = silu(gate) * up (Llama's SwiGLU FFN).
VLM_API void vlm_op_swiglu(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *gate,
                           const struct vlm_tensor *up);

// Row softmax of x * scale.
VLM_API void vlm_op_softmax(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x,
                            float scale);

// In-place rotary embedding. x: [n_head * head_dim, n_tok] F32; row t has position pos0 + t. The first n_rot
// dims of each head are rotated by pos * freq_scale * freq_base^(-2i/n_rot).
VLM_API void vlm_op_rope(struct vlm_backend *be, struct vlm_tensor *x, int32_t n_head, int32_t head_dim,
                         int32_t n_rot, int32_t pos0, float freq_base, float freq_scale, enum vlm_rope_mode mode);

// Copies x into dst converting the type (F32 -> F32/F16/BF16). Same element count; dst may be a row view
// of a larger tensor (e.g. a KV cache slot).
VLM_API void vlm_op_copy(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *x);

// Multi-head attention of n_tok query rows against a KV cache.
// q: [n_head * head_dim, n_tok] F32; k, v: [n_head_kv * head_dim, n_ctx] F32 or F16 (rows 0..n_kv-1 used);
// dst: [n_head * head_dim, n_tok] F32.
VLM_API void vlm_op_attention(struct vlm_backend *be, struct vlm_tensor *dst, const struct vlm_tensor *q,
                              const struct vlm_tensor *k, const struct vlm_tensor *v,
                              const struct vlm_attention_params *p);

#ifdef __cplusplus
}
#endif

#endif // VLM_BACKEND_H
