// Error codes and diagnostics shared by every vlmd component.
//
// Functions that can fail return int: 0 on success or a negative VLM_E* code. OS failures reuse the negated
// errno value (VLM_ENOENT == -ENOENT), as libuv does; domain failures live in a private range below -4000.
// When a caller needs more than the code, the function takes a final `struct vlm_diag *diag` (may be NULL)
// that receives the code and a human message naming the object and what was expected versus found.
#ifndef VLM_ERROR_H
#define VLM_ERROR_H

#include <errno.h>
#include <stddef.h>

#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

// XX(name, value, message). Stable: values travel in the protocol's error replies.
#define VLM_ERRNO_MAP(XX)                                                                                     \
    XX(EPERM, -EPERM, "operation not permitted")                                                               \
    XX(ENOENT, -ENOENT, "no such file or directory")                                                           \
    XX(EIO, -EIO, "input/output error")                                                                        \
    XX(ENOMEM, -ENOMEM, "out of memory")                                                                       \
    XX(EACCES, -EACCES, "permission denied")                                                                   \
    XX(EBUSY, -EBUSY, "resource busy")                                                                         \
    XX(EINVAL, -EINVAL, "invalid argument")                                                                    \
    XX(ERANGE, -ERANGE, "value out of range")                                                                  \
    XX(ENOSPC, -ENOSPC, "no space left")                                                                       \
    XX(ECANCELED, -ECANCELED, "operation canceled")                                                            \
    XX(EBADMODEL, -4001, "invalid or corrupt model file")                                                      \
    XX(EUNSUPPORTED, -4002, "unsupported feature")                                                             \
    XX(EABI, -4003, "plugin ABI mismatch")                                                                     \
    XX(EDEVICE, -4004, "compute device failure")                                                               \
    XX(ETOOLARGE, -4005, "input too large")                                                                    \
    XX(EBADIMAGE, -4006, "invalid image")                                                                      \
    XX(EBADREQUEST, -4007, "bad request")                                                                      \
    XX(ENOTFOUND, -4008, "not found")                                                                          \
    XX(EINTERNAL, -4009, "internal error")

enum vlm_errno {
    VLM_OK = 0,
#define VLM_ERRNO_ENUM(name, value, msg) VLM_##name = (value),
    VLM_ERRNO_MAP(VLM_ERRNO_ENUM)
#undef VLM_ERRNO_ENUM
};

// Detail for a failure: the code again plus a message such as
// "model.gguf: tensor 'blk.3.attn_q.weight': offset 912 past end of file (size 800)".
struct vlm_diag {
    int code;
    char msg[256];
};

// Returns a static, never-NULL description of `code` ("unknown error" for unknown codes).
VLM_API const char *vlm_strerror(int code);

// Returns the symbolic name of `code` ("EBADMODEL"), or "UNKNOWN".
VLM_API const char *vlm_err_name(int code);

// Fills `diag` (if non-NULL) with `code` and the formatted message, and returns `code` so callers can write
// `return vlm_diag_set(diag, VLM_EBADMODEL, "%s: ...", path);`. Also logs the message at debug level.
VLM_API int vlm_diag_set(struct vlm_diag *diag, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif

#endif // VLM_ERROR_H
