// Error codes: names, messages and the diagnostic helper.
#include <stdarg.h>
#include <stdio.h>

#include "vlm/error.h"
#include "vlm/log.h"

const char *vlm_strerror(int code) {
    switch (code) {
    case VLM_OK:
        return "success";
#define VLM_ERRNO_CASE(name, value, msg)                                                                        \
    case VLM_##name:                                                                                           \
        return msg;
        VLM_ERRNO_MAP(VLM_ERRNO_CASE)
#undef VLM_ERRNO_CASE
    default:
        return "unknown error";
    }
}

const char *vlm_err_name(int code) {
    switch (code) {
    case VLM_OK:
        return "OK";
#define VLM_ERRNO_NAME(name, value, msg)                                                                        \
    case VLM_##name:                                                                                           \
        return #name;
        VLM_ERRNO_MAP(VLM_ERRNO_NAME)
#undef VLM_ERRNO_NAME
    default:
        return "UNKNOWN";
    }
}

int vlm_diag_set(struct vlm_diag *diag, int code, const char *fmt, ...) {
    char msg[sizeof(diag->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (diag) {
        diag->code = code;
        snprintf(diag->msg, sizeof diag->msg, "%s", msg);
    }
    vlm_log(VLM_LOG_DEBUG, "error %s: %s", vlm_err_name(code), msg);
    return code;
}
