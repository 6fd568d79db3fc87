// Model-loading helpers for plugins: hyperparameters read with range checks, and weights looked up, checked
// and placed on a backend, each failure a VLM_EBADMODEL / VLM_EUNSUPPORTED message naming the file and the
// key or tensor. One copy of these rules for every plugin.
#ifndef VLM_WEIGHTS_H
#define VLM_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "vlm/backend.h"
#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

// Reads integer key `key` into *out when it lies in [lo, hi]. A missing key is an error only when `required`
// (then *out is untouched). A per-layer array is accepted when every layer has the same value.
VLM_API int vlm_hparam_i32(const struct vlm_gguf *g, const char *key, int32_t lo, int32_t hi, bool required,
                           int32_t *out, struct vlm_diag *diag);
// Reads a finite float key into *out; a missing key leaves *out untouched.
VLM_API int vlm_hparam_f32(const struct vlm_gguf *g, const char *key, float *out, struct vlm_diag *diag);
// Reads a bool key into *out; a missing key leaves *out untouched.
VLM_API int vlm_hparam_bool(const struct vlm_gguf *g, const char *key, bool *out, struct vlm_diag *diag);

enum vlm_weight_flags {
    VLM_WEIGHT_REQUIRED = 1, // a missing tensor is an error (else `out` is zeroed, data NULL)
    VLM_WEIGHT_MATRIX = 2,   // any type the backend can multiply with; without it the tensor must be F32
    // With VLM_WEIGHT_MATRIX: multiply in BF16 (vlm_tensor_set_precision) where the backend is faster that way,
    // an F16 matrix only (BF16_16) or an F32 one too (BF16). Elsewhere the products stay exact.
    VLM_WEIGHT_BF16_16 = 4,
    VLM_WEIGHT_BF16 = 8,
};

// The BF16 flags above for a plugin instance: the host's precision (struct vlm_host), where VLM_PRECISION_AUTO
// means `auto_flags` (the plugin's default: 0, or VLM_WEIGHT_BF16_16 for a vision encoder).
VLM_API unsigned vlm_weight_precision_flags(enum vlm_precision host_precision, unsigned auto_flags);

// Looks up tensor `name`, checks its shape against `want` (ggml order, unused dims 1) and its type, and hands
// it to the backend as a 2-D tensor: [ne0, ne1*ne2] normally, [ne0*ne1*ne2, ne3] when ne3 > 1 (a 4-D
// convolution kernel becomes one row per output channel). On the CPU the data stays in the GGUF mapping, which
// must outlive the tensor.
VLM_API int vlm_weight_load(struct vlm_backend *be, const struct vlm_gguf *g, const char *name, const int64_t want[4],
                            unsigned flags, struct vlm_tensor *out, struct vlm_diag *diag);
// The same for a vector (ne1 = 1) or a matrix [ne0, ne1].
VLM_API int vlm_weight_load_2d(struct vlm_backend *be, const struct vlm_gguf *g, const char *name, int64_t ne0,
                               int64_t ne1, unsigned flags, struct vlm_tensor *out, struct vlm_diag *diag);

#ifdef __cplusplus
}
#endif

#endif // VLM_WEIGHTS_H
