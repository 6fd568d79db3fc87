// The contract with systemd (daemon(7), sd_notify(3), sd_listen_fds(3), sd_watchdog_enabled(3)):
//   - socket activation: the listening socket is the one vlmd.socket holds (fd 3, LISTEN_PID/LISTEN_FDS), so its
//     mode and group are systemd's (SocketMode=, SocketGroup=) and it stays bound while vlmd restarts: clients
//     queue in the backlog instead of being refused. Such a socket is never unlinked (Accept=no);
//   - Type=notify: STATUS= while the configured chains load, READY=1 once none is loading (failed ones
//     included: the daemon serves, and asks retry the load), STOPPING=1 on SIGTERM;
//   - watchdog: WATCHDOG=1 from a loop timer every WATCHDOG_USEC/2, so a stalled event loop gets the service
//     restarted; the timer runs on the loop thread on purpose (a long generation on a worker is not a stall).
// Built with libsystemd when the build finds it (VLMD_HAVE_LIBSYSTEMD); otherwise the same protocol is spoken
// here (environment variables and one datagram per message), which is all libsystemd does for these calls.
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/vlmd.h"

#if defined(VLMD_HAVE_LIBSYSTEMD) && VLMD_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#define HAVE_LIBSYSTEMD 1
#else
#define HAVE_LIBSYSTEMD 0
#define SD_LISTEN_FDS_START 3
#endif

#define POLL_MS 50 // how often readiness is checked while the configured chains load

static struct {
    bool ready;
    uint64_t watchdog_us; // 0: no watchdog
    double last_ping_ms;
    char last_status[256];
} g_sd;

// ---- the protocol (libsystemd or our own) ------------------------------------------------------------------

#if !HAVE_LIBSYSTEMD
static int own_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !path[0]) {
        return 0;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path || (path[0] != '/' && path[0] != '@')) {
        return -EINVAL;
    }
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') {
        sa.sun_path[0] = 0; // abstract namespace
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    // Never wait for a receiver whose queue is full (net.unix.max_dgram_qlen): a lost STATUS= is better than a
    // stalled loop. (libsystemd's sd_notify does wait; systemd reads its socket promptly.)
    ssize_t w = sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sa, len);
    int e = errno;
    close(fd);
    return w < 0 ? -e : 1;
}

static bool env_is_our_pid(const char *name) {
    const char *v = getenv(name);
    char *end;
    if (!v) {
        return false;
    }
    errno = 0;
    unsigned long pid = strtoul(v, &end, 10);
    return !errno && *end == 0 && end != v && pid == (unsigned long)getpid();
}
#endif

__attribute__((format(printf, 1, 2))) static void notify(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
#if HAVE_LIBSYSTEMD
    int rc = sd_notify(0, buf);
#else
    int rc = own_notify(buf);
#endif
    if (rc < 0) {
        VLM_LOGD("sd_notify: %s", strerror(-rc));
    }
}

static uint64_t watchdog_usec(void) {
#if HAVE_LIBSYSTEMD
    uint64_t us = 0;
    return sd_watchdog_enabled(0, &us) > 0 ? us : 0;
#else
    const char *v = getenv("WATCHDOG_USEC");
    if (!v || (getenv("WATCHDOG_PID") && !env_is_our_pid("WATCHDOG_PID"))) {
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long us = strtoull(v, &end, 10);
    return errno || *end || end == v ? 0 : (uint64_t)us;
#endif
}

// ---- listening socket --------------------------------------------------------------------------------------

static bool is_unix_stream_listener(int fd) {
#if HAVE_LIBSYSTEMD
    return sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0;
#else
    int type = 0, listening = 0, family = 0;
    socklen_t l1 = sizeof type, l2 = sizeof listening, l3 = sizeof family;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l1) == 0 && type == SOCK_STREAM &&
           getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l2) == 0 && listening &&
           getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &l3) == 0 && family == AF_UNIX;
#endif
}

int vlm__sd_listen_fd(int *out, char *path, size_t path_cap, struct vlm_diag *diag) {
    *out = -1;
    int n;
#if HAVE_LIBSYSTEMD
    n = sd_listen_fds(1); // 1: unset LISTEN_* so programs we start do not take our sockets
    if (n < 0) {
        return vlm_diag_set(diag, VLM_EINVAL, "sd_listen_fds: %s", strerror(-n));
    }
#else
    n = 0;
    if (env_is_our_pid("LISTEN_PID")) {
        char *end;
        const char *v = getenv("LISTEN_FDS");
        long k = v ? strtol(v, &end, 10) : 0;
        n = v && *end == 0 && k > 0 && k < 64 ? (int)k : 0;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (int i = 0; i < n; i++) {
        fcntl(SD_LISTEN_FDS_START + i, F_SETFD, FD_CLOEXEC);
    }
#endif
    if (n == 0) {
        return 0;
    }
    // vlmd.socket passes one socket; anything else passed along is closed rather than leaked into plugins.
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        if (*out < 0 && is_unix_stream_listener(fd)) {
            *out = fd;
        } else {
            VLM_LOGW("socket activation: fd %d is not a listening Unix stream socket: closing it", fd);
            close(fd);
        }
    }
    if (*out < 0) {
        return vlm_diag_set(diag, VLM_EINVAL, "socket activation: none of the %d passed fds is a listening Unix "
                                              "stream socket (check ListenStream= in vlmd.socket)", n);
    }
    struct sockaddr_un sa;
    socklen_t len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    path[0] = 0;
    if (getsockname(*out, (struct sockaddr *)&sa, &len) == 0 && len > offsetof(struct sockaddr_un, sun_path) &&
        sa.sun_path[0]) {
        snprintf(path, path_cap, "%.*s", (int)sizeof sa.sun_path, sa.sun_path);
    }
    return 0;
}

// ---- readiness, status, watchdog ---------------------------------------------------------------------------

__attribute__((format(printf, 1, 2))) static void set_status(const char *fmt, ...) {
    char buf[sizeof g_sd.last_status];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (strcmp(buf, g_sd.last_status)) {
        memcpy(g_sd.last_status, buf, sizeof buf);
        notify("STATUS=%s", buf);
    }
}

static void sd_tick(uv_timer_t *t) {
    struct vlmd *d = t->data;
    double now = vlm_time_ms();
    if (!g_sd.ready && !d->shutting_down) {
        unsigned loading = 0, loaded = 0, failed = 0;
        for (const struct vlm__component *c = d->components; c; c = c->next) {
            loading += c->state == VLM__COMP_LOADING;
            loaded += c->state == VLM__COMP_READY;
            failed += c->state == VLM__COMP_FAILED;
        }
        if (loading > 0) {
            set_status("loading models: %u of %u done%s", loaded + failed, loading + loaded + failed,
                       failed ? " (some failed: see the log)" : "");
        } else {
            unsigned chains = 0;
            for (const struct vlm__chain *c = d->chains; c; c = c->next) {
                chains++;
            }
            g_sd.ready = true;
            VLM_LOGI("ready: %u chains, %u models loaded, %u failed", chains, loaded, failed);
            notify("READY=1\nSTATUS=ready: %u chains, %u models loaded%s", chains, loaded,
                   failed ? ", some failed to load (see the log)" : "");
            if (!g_sd.watchdog_us) {
                uv_timer_stop(t);
                return;
            }
            uv_timer_set_repeat(t, g_sd.watchdog_us / 2000 ? g_sd.watchdog_us / 2000 : 1);
        }
    }
    if (g_sd.watchdog_us && (now - g_sd.last_ping_ms) * 1e3 >= (double)g_sd.watchdog_us / 4) {
        notify("WATCHDOG=1");
        g_sd.last_ping_ms = now;
    }
}

void vlm__sd_start(struct vlmd *d) {
    g_sd.watchdog_us = watchdog_usec();
    uv_timer_init(d->loop, &d->sd_timer);
    d->sd_timer.data = d;
    uv_unref((uv_handle_t *)&d->sd_timer); // never what keeps the loop running
    uint64_t ms = POLL_MS;
    if (g_sd.watchdog_us && g_sd.watchdog_us / 2000 < ms) {
        ms = g_sd.watchdog_us / 2000 ? g_sd.watchdog_us / 2000 : 1;
    }
    if (g_sd.watchdog_us) {
        VLM_LOGI("systemd watchdog: %.1f s, pinging every %.1f s", (double)g_sd.watchdog_us / 1e6,
                 (double)g_sd.watchdog_us / 2e6);
    }
    uv_timer_start(&d->sd_timer, sd_tick, 0, ms);
}

void vlm__sd_stopping(struct vlmd *d) {
    notify("STOPPING=1\nSTATUS=stopping: %u requests and loads to finish", d->jobs_in_flight);
}

void vlm__sd_reloaded(struct vlmd *d) {
    (void)d;
    if (g_sd.ready) {
        notify("STATUS=configuration reloaded");
    }
}

void vlm__sd_close(struct vlmd *d) {
    if (!uv_is_closing((uv_handle_t *)&d->sd_timer)) {
        uv_close((uv_handle_t *)&d->sd_timer, NULL);
    }
}
