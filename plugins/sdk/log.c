// Logging: level filter plus a replaceable sink. The default sink writes "<N>message" (syslog priority prefix,
// which journald parses) when stderr is not a terminal, and "level: message" on a terminal.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vlm/log.h"

static vlm_log_cb log_cb;
static void *log_user;
static int log_level = -1; // -1: not yet read from the environment

static int level_from_env(void) {
    const char *s = getenv("VLM_LOG_LEVEL");
    if (!s) {
        return VLM_LOG_INFO;
    }
    if (!strcmp(s, "error")) {
        return VLM_LOG_ERROR;
    }
    if (!strcmp(s, "warn") || !strcmp(s, "warning")) {
        return VLM_LOG_WARN;
    }
    if (!strcmp(s, "debug")) {
        return VLM_LOG_DEBUG;
    }
    return VLM_LOG_INFO;
}

void vlm_log_set(vlm_log_cb cb, void *user) {
    log_cb = cb;
    log_user = user;
}

void vlm_log_set_level(enum vlm_log_level level) {
    log_level = (int)level;
}

enum vlm_log_level vlm_log_get_level(void) {
    if (log_level < 0) {
        log_level = level_from_env();
    }
    return (enum vlm_log_level)log_level;
}

static const char *level_word(enum vlm_log_level level) {
    switch (level) {
    case VLM_LOG_ERROR:
        return "error";
    case VLM_LOG_WARN:
        return "warning";
    case VLM_LOG_INFO:
        return "info";
    default:
        return "debug";
    }
}

void vlm_logv(enum vlm_log_level level, const char *fmt, va_list ap) {
    if ((int)level > (int)vlm_log_get_level()) {
        return;
    }
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    // one event, one line: fold embedded newlines
    for (char *p = line; *p; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
    if (log_cb) {
        log_cb(level, line, log_user);
        return;
    }
    if (isatty(STDERR_FILENO)) {
        fprintf(stderr, "%s: %s\n", level_word(level), line);
    } else {
        fprintf(stderr, "<%d>%s\n", (int)level, line);
    }
}

void vlm_log(enum vlm_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlm_logv(level, fmt, ap);
    va_end(ap);
}

void vlm_log_fn(enum vlm_log_level level, const char *func, const char *fmt, ...) {
    if ((int)level > (int)vlm_log_get_level()) {
        return;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    vlm_log(level, "%s: %s", func, msg);
}
