// GGUF reader: v2 and v3 files, every metadata type, the tensor table and memory-mapped tensor data.
//
// Untrusted input: every count, length, offset, shape and type in the file is checked against the file size
// and against overflow before it is used; a corrupt file yields VLM_EBADMODEL with a message naming the file
// and the problem, never a crash or a read outside the mapping. Nothing is allocated in proportion to a
// declared count before the bytes backing it are known to be present.
//
// Ownership: strings, arrays and tensor data returned by the getters point into the reader's mapping and
// stay valid until vlm_gguf_close(). A reader is immutable after open and may be shared by threads.
#ifndef VLM_GGUF_H
#define VLM_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VLM_GGUF_MAX_DIMS 4
#define VLM_GGUF_MAX_NAME 64 // tensor names are shorter than this (ggml's GGML_MAX_NAME)
#define VLM_GGUF_DEFAULT_ALIGNMENT 32

// Metadata value types (the file's `gguf_type` ids).
enum vlm_gguf_type {
    VLM_GGUF_TYPE_UINT8 = 0,
    VLM_GGUF_TYPE_INT8 = 1,
    VLM_GGUF_TYPE_UINT16 = 2,
    VLM_GGUF_TYPE_INT16 = 3,
    VLM_GGUF_TYPE_UINT32 = 4,
    VLM_GGUF_TYPE_INT32 = 5,
    VLM_GGUF_TYPE_FLOAT32 = 6,
    VLM_GGUF_TYPE_BOOL = 7,
    VLM_GGUF_TYPE_STRING = 8,
    VLM_GGUF_TYPE_ARRAY = 9,
    VLM_GGUF_TYPE_UINT64 = 10,
    VLM_GGUF_TYPE_INT64 = 11,
    VLM_GGUF_TYPE_FLOAT64 = 12,
    VLM_GGUF_TYPE_COUNT,
};

// A string inside the file: not NUL-terminated.
struct vlm_gguf_str {
    const char *ptr;
    uint64_t len;
};

struct vlm_gguf_tensor {
    char name[VLM_GGUF_MAX_NAME]; // NUL-terminated
    enum vlm_type type;
    uint32_t n_dims;
    int64_t ne[VLM_GGUF_MAX_DIMS]; // ggml order: ne[0] is contiguous; unused dims are 1
    uint64_t offset;               // relative to the start of the data section
    size_t size;                   // bytes
    const void *data;              // inside the mapping
};

struct vlm_gguf;

// Opens and validates `path`; maps it read-only. `*out` is written only on success; close with vlm_gguf_close.
VLM_API int vlm_gguf_open(const char *path, struct vlm_gguf **out, struct vlm_diag *diag);

// Same, over a caller-owned buffer that must outlive the reader (used by tests and fuzzers). `name` is used
// in messages.
VLM_API int vlm_gguf_open_buffer(const void *data, size_t size, const char *name, struct vlm_gguf **out,
                                 struct vlm_diag *diag);

VLM_API void vlm_gguf_close(struct vlm_gguf *g);

VLM_API const char *vlm_gguf_path(const struct vlm_gguf *g); // the path or name given at open
VLM_API uint32_t vlm_gguf_version(const struct vlm_gguf *g);
VLM_API size_t vlm_gguf_alignment(const struct vlm_gguf *g);
VLM_API size_t vlm_gguf_file_size(const struct vlm_gguf *g);

// ---- metadata --------------------------------------------------------------------------------------------
VLM_API int64_t vlm_gguf_kv_count(const struct vlm_gguf *g);
VLM_API int64_t vlm_gguf_find_key(const struct vlm_gguf *g, const char *key); // index, or -1
VLM_API const char *vlm_gguf_kv_key(const struct vlm_gguf *g, int64_t i);    // NUL-terminated
VLM_API enum vlm_gguf_type vlm_gguf_kv_type(const struct vlm_gguf *g, int64_t i);
// For arrays: element type and count. Returns VLM_EINVAL if kv `i` is not an array.
VLM_API int vlm_gguf_kv_array(const struct vlm_gguf *g, int64_t i, enum vlm_gguf_type *elem_type, uint64_t *n);

// Typed getters by key. They return 0, VLM_ENOENT when the key is absent (out untouched), or VLM_EBADMODEL
// (with a message) when the stored type does not fit. vlm_gguf_get_int accepts any integer type whose value
// fits in int64 (and bool); vlm_gguf_get_float accepts FLOAT32/FLOAT64 and integers; get_bool accepts BOOL.
VLM_API int vlm_gguf_get_int(const struct vlm_gguf *g, const char *key, int64_t *out, struct vlm_diag *diag);
VLM_API int vlm_gguf_get_float(const struct vlm_gguf *g, const char *key, double *out, struct vlm_diag *diag);
VLM_API int vlm_gguf_get_bool(const struct vlm_gguf *g, const char *key, bool *out, struct vlm_diag *diag);
VLM_API int vlm_gguf_get_str(const struct vlm_gguf *g, const char *key, struct vlm_gguf_str *out,
                             struct vlm_diag *diag);

// Arrays by key. The element type must be `elem_type` exactly, else VLM_EBADMODEL. For numeric arrays `*data`
// points at `*n` packed little-endian elements in the mapping (possibly unaligned: copy with memcpy).
VLM_API int vlm_gguf_get_array(const struct vlm_gguf *g, const char *key, enum vlm_gguf_type elem_type,
                               const void **data, uint64_t *n, struct vlm_diag *diag);
// String arrays by key: `*n` elements; fetch each with vlm_gguf_array_str.
VLM_API int vlm_gguf_get_str_array(const struct vlm_gguf *g, const char *key, int64_t *kv_index, uint64_t *n,
                                   struct vlm_diag *diag);
VLM_API struct vlm_gguf_str vlm_gguf_array_str(const struct vlm_gguf *g, int64_t kv_index, uint64_t i);

// Reads element `i` of a numeric array of any integer/float type, converted (for callers that accept e.g.
// per-layer head counts stored as UINT32 or INT32). Returns VLM_EINVAL for a bad index or non-numeric array.
VLM_API int vlm_gguf_array_get_num(const struct vlm_gguf *g, int64_t kv_index, uint64_t i, double *out);

// ---- tensors ---------------------------------------------------------------------------------------------
VLM_API int64_t vlm_gguf_tensor_count(const struct vlm_gguf *g);
VLM_API const struct vlm_gguf_tensor *vlm_gguf_tensor_at(const struct vlm_gguf *g, int64_t i);
VLM_API const struct vlm_gguf_tensor *vlm_gguf_find_tensor(const struct vlm_gguf *g, const char *name); // or NULL

VLM_API const char *vlm_gguf_type_name(enum vlm_gguf_type t);

// True when the file string equals the NUL-terminated `lit`.
VLM_API bool vlm_gguf_str_eq(struct vlm_gguf_str s, const char *lit);

#ifdef __cplusplus
}
#endif

#endif // VLM_GGUF_H
