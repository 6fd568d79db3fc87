// Logging: one line per event. Levels are syslog priorities so the daemon can prefix lines with "<3>" etc.
// and journald files them at the right level.
#ifndef VLM_LOG_H
#define VLM_LOG_H

#include <stdarg.h>

#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

enum vlm_log_level {
    VLM_LOG_ERROR = 3,
    VLM_LOG_WARN = 4,
    VLM_LOG_INFO = 6,
    VLM_LOG_DEBUG = 7,
};

// A sink receives one complete line without the trailing newline. It may be called from any thread.
typedef void (*vlm_log_cb)(enum vlm_log_level level, const char *line, void *user);

// Replaces the sink (NULL restores the default: "<level>line\n" on stderr when stderr is not a terminal,
// "level: line\n" when it is). Not thread-safe against concurrent vlm_log calls; set it at start-up.
VLM_API void vlm_log_set(vlm_log_cb cb, void *user);

// Messages above `level` are dropped. Default VLM_LOG_INFO, or VLM_LOG_LEVEL from the environment
// ("error", "warn", "info", "debug").
VLM_API void vlm_log_set_level(enum vlm_log_level level);
VLM_API enum vlm_log_level vlm_log_get_level(void);

VLM_API void vlm_log(enum vlm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
VLM_API void vlm_logv(enum vlm_log_level level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

// Like vlm_log, with "func: " in front of the message.
VLM_API void vlm_log_fn(enum vlm_log_level level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// The usual way to log: the message starts with the calling function's name.
#define VLM_LOGE(...) vlm_log_fn(VLM_LOG_ERROR, __func__, __VA_ARGS__)
#define VLM_LOGW(...) vlm_log_fn(VLM_LOG_WARN, __func__, __VA_ARGS__)
#define VLM_LOGI(...) vlm_log_fn(VLM_LOG_INFO, __func__, __VA_ARGS__)
#define VLM_LOGD(...) vlm_log_fn(VLM_LOG_DEBUG, __func__, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif // VLM_LOG_H
