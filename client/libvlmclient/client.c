// libvlmclient: one blocking msgpack-RPC connection to vlmd. Every call sends one request and reads messages
// until the response with its msgid arrives; notifications for it (text pieces, progress) go to the caller's
// callbacks on the way, responses to anything else (a cancel, a call that timed out earlier) are skipped.
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vlm/client.h"

#define CANCEL_GRACE_MS 5000 // how long a cancelled or timed-out call waits for the daemon's answer
#define RECV_CHUNK (64 * 1024)

// vlm_client_cancel runs in signal handlers: the flag must be a lock-free atomic.
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "vlm_client_cancel needs a lock-free atomic int");

struct vlm_client {
    int fd;
    int wake_rd, wake_wr; // self-pipe: vlm_client_cancel wakes a thread blocked in poll
    atomic_int cancel;
    int dead;             // 0, or the connection is unusable
    uint32_t next_id;
    int timeout_ms;
    int last_wire;
    struct vlm_proto_reader rd;
    struct vlm_proto_buf out;
    size_t in_off, in_len;
    struct vlm_client_server_info info;
    char *info_store; // server, version and capability strings
    const char *caps[VLM_RPC_CAPS_MAX];
    uint8_t in[RECV_CHUNK];
};

const char *vlm_client_strerror(int code) {
    switch (code) {
    case VLM_CLIENT_ECONNREFUSED:
        return "connection refused";
    case VLM_CLIENT_ETIMEDOUT:
        return "timed out";
    case VLM_CLIENT_ECONNRESET:
        return "connection closed by vlmd";
    default:
        return vlm_strerror(code);
    }
}

const char *vlm_client_default_socket(void) {
    const char *env = getenv("VLMD_SOCKET");
    return env && *env ? env : VLM_CLIENT_DEFAULT_SOCKET;
}

int vlm_client_code_from_wire(int wire_code) {
    switch (wire_code) {
    case VLM_PROTO_EBAD_REQUEST:
        return VLM_EBADREQUEST;
    case VLM_PROTO_EUNKNOWN_METHOD:
    case VLM_PROTO_EUNSUPPORTED_PROTOCOL:
    case VLM_PROTO_EUNSUPPORTED:
        return VLM_EUNSUPPORTED;
    case VLM_PROTO_ETOO_LARGE:
    case VLM_PROTO_EIMAGE_TOO_LARGE:
        return VLM_ETOOLARGE;
    case VLM_PROTO_ENOT_FOUND:
        return VLM_ENOTFOUND;
    case VLM_PROTO_EBUSY:
    case VLM_PROTO_ESHUTTING_DOWN:
    case VLM_PROTO_EMAX_CLIENTS:
        return VLM_EBUSY;
    case VLM_PROTO_ECANCELLED:
        return VLM_ECANCELED;
    case VLM_PROTO_EUNSUPPORTED_IMAGE:
    case VLM_PROTO_EBAD_IMAGE:
        return VLM_EBADIMAGE;
    case VLM_PROTO_EMODEL_INVALID:
        return VLM_EBADMODEL;
    case VLM_PROTO_EPLUGIN_INVALID:
        return VLM_EABI;
    case VLM_PROTO_EOUT_OF_MEMORY:
        return VLM_ENOMEM;
    case VLM_PROTO_EDEVICE_ERROR:
        return VLM_EDEVICE;
    case VLM_PROTO_ETIMEOUT:
        return VLM_CLIENT_ETIMEDOUT;
    default:
        return VLM_EINTERNAL;
    }
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// -1: no deadline.
static int64_t deadline_after(int timeout_ms) {
    return timeout_ms > 0 ? now_ms() + timeout_ms : -1;
}

static int kill_conn(struct vlm_client *c, int code) {
    if (!c->dead) {
        c->dead = code;
    }
    return code;
}

static void drain_wake(struct vlm_client *c) {
    char tmp[64];
    while (read(c->wake_rd, tmp, sizeof tmp) > 0) {
    }
}

// Waits until fd has `events`. Returns 1 when ready, 0 when woken by vlm_client_cancel (only with watch_wake),
// VLM_CLIENT_ETIMEDOUT at the deadline.
static int wait_fd(struct vlm_client *c, short events, int64_t deadline, bool watch_wake) {
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0) {
                return VLM_CLIENT_ETIMEDOUT;
            }
            ms = left > 1000000 ? 1000000 : (int)left;
        }
        struct pollfd p[2] = {{.fd = c->fd, .events = events}, {.fd = c->wake_rd, .events = POLLIN}};
        int n = poll(p, watch_wake ? 2 : 1, ms);
        if (n < 0) {
            if (errno == EINTR) {
                // A signal handler may have called vlm_client_cancel: let the caller look at the flag.
                if (watch_wake && atomic_load(&c->cancel)) {
                    return 0;
                }
                continue;
            }
            return -errno;
        }
        if (watch_wake && (p[1].revents & POLLIN)) {
            drain_wake(c);
            return 0;
        }
        if (p[0].revents) {
            return 1; // POLLERR/POLLHUP too: the read or write that follows reports it
        }
    }
}

static int send_all(struct vlm_client *c, const uint8_t *p, size_t n, int64_t deadline, struct vlm_diag *diag) {
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c, POLLOUT, deadline, false);
            if (rc == VLM_CLIENT_ETIMEDOUT) {
                // A partial message leaves the stream unusable.
                kill_conn(c, VLM_CLIENT_ECONNRESET);
                return vlm_diag_set(diag, VLM_CLIENT_ETIMEDOUT, "timed out sending a request to vlmd");
            }
            if (rc < 0) {
                kill_conn(c, VLM_CLIENT_ECONNRESET);
                return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "poll: %s", strerror(-rc));
            }
            continue;
        }
        kill_conn(c, VLM_CLIENT_ECONNRESET);
        return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "vlmd closed the connection (%s)",
                            w < 0 ? strerror(errno) : "short write");
    }
    return 0;
}

// Returns 1 with the next message (valid until the next read), 0 when woken by vlm_client_cancel, or a negative
// code (VLM_CLIENT_ETIMEDOUT keeps the connection; the others end it).
static int read_msg(struct vlm_client *c, int64_t deadline, bool watch_wake, struct vlm_proto_msg *m,
                    struct vlm_diag *diag) {
    for (;;) {
        struct vlm_diag d;
        int rc = vlm_proto_reader_next(&c->rd, m, &d);
        if (rc == 1) {
            return 1;
        }
        if (rc < 0) {
            if (vlm_proto_reader_broken(&c->rd)) {
                kill_conn(c, VLM_CLIENT_ECONNRESET);
                return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "malformed data from vlmd: %s", d.msg);
            }
            continue; // a well-framed message we cannot use: skipped
        }
        if (c->in_off < c->in_len) {
            size_t taken = 0;
            rc = vlm_proto_reader_feed(&c->rd, c->in + c->in_off, c->in_len - c->in_off, &taken);
            if (rc < 0) {
                kill_conn(c, VLM_CLIENT_ECONNRESET);
                return vlm_diag_set(diag, rc == VLM_ENOMEM ? VLM_ENOMEM : VLM_CLIENT_ECONNRESET,
                                    "reading from vlmd: %s", vlm_strerror(rc));
            }
            c->in_off += taken;
            continue;
        }
        if (watch_wake && atomic_load(&c->cancel)) {
            return 0;
        }
        rc = wait_fd(c, POLLIN, deadline, watch_wake);
        if (rc <= 0) {
            if (rc < 0 && rc != VLM_CLIENT_ETIMEDOUT) {
                kill_conn(c, VLM_CLIENT_ECONNRESET);
                return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "poll: %s", strerror(-rc));
            }
            return rc == 0 ? 0 : vlm_diag_set(diag, rc, "timed out waiting for vlmd");
        }
        ssize_t n = recv(c->fd, c->in, sizeof c->in, 0);
        if (n == 0) {
            kill_conn(c, VLM_CLIENT_ECONNRESET);
            return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "vlmd closed the connection");
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                continue;
            }
            kill_conn(c, VLM_CLIENT_ECONNRESET);
            return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "reading from vlmd: %s", strerror(errno));
        }
        c->in_off = 0;
        c->in_len = (size_t)n;
    }
}

// ---- one call -----------------------------------------------------------------------------------------------

typedef int (*result_fn)(struct vlm_client *c, const struct vlm_proto_msg *m, void *ctx, struct vlm_diag *diag);

struct call {
    const char *what;  // for messages: "ask", "status", ...
    uint32_t id;
    bool cancellable;  // ask, load, swap: a cancel request is sent; others just stop waiting
    int timeout_ms;
    vlm_client_text_cb text;
    void *text_user;
    vlm_client_progress_cb progress;
    void *progress_user;
    result_fn on_result;
    void *ctx;
    uint32_t n_pieces;
};

static int server_error(struct vlm_client *c, const struct call *k, const struct vlm_rpc_error *e, bool timed_out,
                        struct vlm_diag *diag) {
    int code = vlm_client_code_from_wire(e->code);
    if (timed_out && code == VLM_ECANCELED) {
        // Our own cancel, sent at the deadline: a client-side timeout, not a server error.
        c->last_wire = 0;
        return vlm_diag_set(diag, VLM_CLIENT_ETIMEDOUT, "%s: timed out after %d ms (cancelled on vlmd)", k->what,
                            k->timeout_ms);
    }
    c->last_wire = e->code;
    const char *name = e->name.ptr ? NULL : vlm_proto_err_name(e->code);
    if (name) {
        return vlm_diag_set(diag, code, "%s: %.*s", name, (int)e->message.len, e->message.ptr ? e->message.ptr : "");
    }
    return vlm_diag_set(diag, code, "%.*s: %.*s", (int)e->name.len, e->name.ptr, (int)e->message.len,
                        e->message.ptr ? e->message.ptr : "");
}

static uint32_t take_id(struct vlm_client *c) {
    uint32_t id = c->next_id++;
    if (c->next_id == 0) {
        c->next_id = 1;
    }
    return id;
}

// Sends the request in c->out (whose msgid is k->id) and reads until its response.
static int call(struct vlm_client *c, struct call *k, struct vlm_diag *diag) {
    c->last_wire = 0;
    int64_t deadline = deadline_after(k->timeout_ms);
    int rc = send_all(c, c->out.data, c->out.len, deadline, diag);
    vlm_proto_buf_reset(&c->out);
    if (rc < 0) {
        return rc;
    }
    bool cancel_sent = false, cb_cancel = false, timed_out = false;
    for (;;) {
        if (!cancel_sent && (atomic_exchange(&c->cancel, 0) || cb_cancel || timed_out)) {
            if (!k->cancellable) {
                if (timed_out) {
                    return vlm_diag_set(diag, VLM_CLIENT_ETIMEDOUT, "%s: no answer from vlmd within %d ms", k->what,
                                        k->timeout_ms);
                }
                return vlm_diag_set(diag, VLM_ECANCELED, "%s: cancelled", k->what);
            }
            struct vlm_rpc_cancel cp = {.id = k->id};
            rc = vlm_rpc_cancel_encode(&c->out, take_id(c), &cp);
            if (rc < 0) {
                return vlm_diag_set(diag, rc, "%s: cannot encode cancel", k->what);
            }
            deadline = deadline_after(CANCEL_GRACE_MS);
            rc = send_all(c, c->out.data, c->out.len, deadline, diag);
            vlm_proto_buf_reset(&c->out);
            if (rc < 0) {
                return rc;
            }
            cancel_sent = true;
        }
        struct vlm_proto_msg m;
        rc = read_msg(c, deadline, !cancel_sent, &m, diag);
        if (rc == 0) {
            continue;
        }
        if (rc == VLM_CLIENT_ETIMEDOUT) {
            if (!cancel_sent && !timed_out) {
                timed_out = true;
                continue;
            }
            return vlm_diag_set(diag, VLM_CLIENT_ETIMEDOUT, "%s: vlmd did not answer the cancel within %d ms",
                                k->what, CANCEL_GRACE_MS);
        }
        if (rc < 0) {
            return rc;
        }
        struct vlm_diag d;
        if (m.type == VLM_PROTO_RESPONSE) {
            if (m.msgid != k->id) {
                continue; // the cancel's answer, or a late answer to a call that timed out
            }
            struct vlm_rpc_error e;
            rc = vlm_proto_error_decode(&m, &e, &d);
            if (rc < 0) {
                return vlm_diag_set(diag, VLM_EBADREQUEST, "%s: malformed reply from vlmd: %s", k->what, d.msg);
            }
            if (rc == 1) {
                return server_error(c, k, &e, timed_out, diag);
            }
            return k->on_result(c, &m, k->ctx, diag);
        }
        if (m.type != VLM_PROTO_NOTIFY) {
            continue;
        }
        if (m.method == VLM_RPC_N_TEXT) {
            struct vlm_rpc_text t;
            if (vlm_rpc_text_decode(&m, &t, &d) == 0 && t.id == k->id) {
                k->n_pieces++;
                if (k->text && !cancel_sent && !cb_cancel && k->text(t.text.ptr ? t.text.ptr : "", t.text.len,
                                                                      k->text_user) != 0) {
                    cb_cancel = true;
                }
            }
        } else if (m.method == VLM_RPC_N_PROGRESS) {
            struct vlm_rpc_progress p;
            if (vlm_rpc_progress_decode(&m, &p, &d) == 0 && p.id == k->id && k->progress && !cancel_sent) {
                k->progress(&p, k->progress_user);
            }
        } else if (m.method == VLM_RPC_N_ERROR) {
            // A connection-level error: the daemon closes the connection after it.
            struct vlm_rpc_error e;
            kill_conn(c, VLM_CLIENT_ECONNRESET);
            if (vlm_proto_error_decode(&m, &e, &d) == 1) {
                return server_error(c, k, &e, false, diag);
            }
            return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "vlmd closed the connection: %s", d.msg);
        }
    }
}

static int check_usable(struct vlm_client *c, struct vlm_diag *diag) {
    if (c->dead) {
        return vlm_diag_set(diag, VLM_CLIENT_ECONNRESET, "the connection to vlmd is closed");
    }
    return 0;
}

// ---- connect / hello ----------------------------------------------------------------------------------------

static int hello_result(struct vlm_client *c, const struct vlm_proto_msg *m, void *ctx, struct vlm_diag *diag) {
    (void)ctx;
    struct vlm_rpc_hello_result r;
    struct vlm_diag d;
    if (vlm_rpc_hello_result_decode(m, &r, &d) != 0) {
        return vlm_diag_set(diag, VLM_EBADREQUEST, "hello: malformed reply from vlmd: %s", d.msg);
    }
    if (r.protocol < VLM_PROTO_VERSION_MIN || r.protocol > VLM_PROTO_VERSION) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "vlmd answered with protocol %u; this client speaks %d..%d",
                            r.protocol, VLM_PROTO_VERSION_MIN, VLM_PROTO_VERSION);
    }
    size_t need = (size_t)r.server.len + r.version.len + 2;
    for (uint32_t i = 0; i < r.n_capabilities; i++) {
        need += r.capabilities[i].len + 1;
    }
    char *s = malloc(need);
    if (!s) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    free(c->info_store);
    c->info_store = s;
    struct vlm_proto_str all[2 + VLM_RPC_CAPS_MAX];
    all[0] = r.server;
    all[1] = r.version;
    for (uint32_t i = 0; i < r.n_capabilities; i++) {
        all[2 + i] = r.capabilities[i];
    }
    const char *ptrs[2 + VLM_RPC_CAPS_MAX] = {0};
    for (uint32_t i = 0; i < 2 + r.n_capabilities; i++) {
        ptrs[i] = s;
        if (all[i].len) {
            memcpy(s, all[i].ptr, all[i].len);
        }
        s += all[i].len;
        *s++ = 0;
    }
    c->info.server = ptrs[0];
    c->info.version = ptrs[1];
    for (uint32_t i = 0; i < r.n_capabilities; i++) {
        c->caps[i] = ptrs[2 + i];
    }
    c->info.capabilities = c->caps;
    c->info.n_capabilities = r.n_capabilities;
    c->info.protocol = r.protocol;
    // A daemon that does not state a limit gets the protocol's defaults.
    struct vlm_proto_limits def = vlm_proto_default_limits();
    c->info.limits = r.limits;
    if (!c->info.limits.max_message) {
        c->info.limits.max_message = def.max_message;
    }
    if (!c->info.limits.max_images) {
        c->info.limits.max_images = def.max_images;
    }
    if (!c->info.limits.max_str) {
        c->info.limits.max_str = def.max_str;
    }
    return 0;
}

static int connect_socket(struct vlm_client *c, const char *path, int64_t deadline, struct vlm_diag *diag) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof sa.sun_path) {
        return vlm_diag_set(diag, n ? VLM_ETOOLARGE : VLM_EINVAL, "socket path '%s': %s", path,
                            n ? "longer than a socket address holds (107 bytes)" : "empty");
    }
    memcpy(sa.sun_path, path, n);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        return vlm_diag_set(diag, -errno, "socket: %s", strerror(errno));
    }
    for (;;) {
        if (connect(c->fd, (const struct sockaddr *)&sa, sizeof sa) == 0) {
            return 0;
        }
        int e = errno;
        if (e == EINTR) {
            continue;
        }
        if (e == EAGAIN) {
            // The daemon's listen backlog is full: it is alive but slow to accept. Try again until the deadline.
            if (now_ms() >= deadline) {
                return vlm_diag_set(diag, VLM_CLIENT_ETIMEDOUT, "%s: vlmd did not accept the connection in time",
                                    path);
            }
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (e == EINPROGRESS) {
            int rc = wait_fd(c, POLLOUT, deadline, false);
            if (rc < 0) {
                return vlm_diag_set(diag, rc, "%s: connect: %s", path, vlm_client_strerror(rc));
            }
            socklen_t len = sizeof e;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) {
                e = errno;
            }
            if (e == 0) {
                return 0;
            }
        }
        switch (e) {
        case ENOENT:
        case ENOTDIR:
            return vlm_diag_set(diag, VLM_ENOENT, "%s: no such socket (vlmd is not running?)", path);
        case ECONNREFUSED:
            return vlm_diag_set(diag, VLM_CLIENT_ECONNREFUSED, "%s: connection refused (vlmd is not running?)",
                                path);
        case EACCES:
        case EPERM:
            return vlm_diag_set(diag, VLM_EACCES, "%s: permission denied (is this user in vlmd's group?)", path);
        default:
            return vlm_diag_set(diag, -e, "%s: connect: %s", path, strerror(e));
        }
    }
}

int vlm_client_connect_ex(const struct vlm_client_options *opts, struct vlm_client **out, struct vlm_diag *diag) {
    struct vlm_client_options o = {0};
    if (opts) {
        o = *opts;
    }
    const char *path = o.socket_path ? o.socket_path : vlm_client_default_socket();
    int connect_ms = o.connect_timeout_ms > 0 ? o.connect_timeout_ms : VLM_CLIENT_CONNECT_TIMEOUT_MS;
    int64_t deadline = now_ms() + connect_ms;
    struct vlm_client *c = calloc(1, sizeof *c);
    if (!c) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    c->fd = c->wake_rd = c->wake_wr = -1;
    c->next_id = 1;
    c->timeout_ms = o.call_timeout_ms > 0 ? o.call_timeout_ms : 0;
    atomic_init(&c->cancel, 0);
    vlm_proto_buf_init(&c->out);
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    int rc = vlm_proto_reader_init(&c->rd, &lim);
    if (rc < 0) {
        free(c);
        return vlm_diag_set(diag, rc, "cannot set up the reader");
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
        rc = vlm_diag_set(diag, -errno, "pipe: %s", strerror(errno));
        goto err;
    }
    c->wake_rd = p[0];
    c->wake_wr = p[1];
    rc = connect_socket(c, path, deadline, diag);
    if (rc < 0) {
        goto err;
    }
    struct vlm_rpc_hello h = {.client = vlm_proto_str_c(o.client_name ? o.client_name : "libvlmclient "
                                                                                        VLM_CLIENT_VERSION),
                              .protocol = VLM_PROTO_VERSION};
    struct call k = {.what = "hello", .id = take_id(c), .on_result = hello_result};
    rc = vlm_rpc_hello_encode(&c->out, k.id, &h);
    if (rc < 0) {
        rc = vlm_diag_set(diag, rc, "hello: cannot encode (client name not UTF-8?)");
        goto err;
    }
    int64_t left = deadline - now_ms();
    k.timeout_ms = left > 1 ? (int)left : 1;
    rc = call(c, &k, diag);
    if (rc < 0) {
        if (rc == VLM_CLIENT_ETIMEDOUT) {
            vlm_diag_set(diag, rc, "%s: vlmd did not answer hello within %d ms", path, connect_ms);
        }
        goto err;
    }
    // A cancel that was requested before the caller even had the connection means nothing.
    atomic_store(&c->cancel, 0);
    *out = c;
    return 0;
err:
    vlm_client_close(c);
    return rc;
}

int vlm_client_connect(const char *path, struct vlm_client **out, struct vlm_diag *diag) {
    struct vlm_client_options o = {.socket_path = path};
    return vlm_client_connect_ex(&o, out, diag);
}

void vlm_client_close(struct vlm_client *c) {
    if (!c) {
        return;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    if (c->wake_rd >= 0) {
        close(c->wake_rd);
    }
    if (c->wake_wr >= 0) {
        close(c->wake_wr);
    }
    vlm_proto_reader_close(&c->rd);
    vlm_proto_buf_free(&c->out);
    free(c->info_store);
    free(c);
}

void vlm_client_set_timeout(struct vlm_client *c, int timeout_ms) {
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

const struct vlm_client_server_info *vlm_client_server(const struct vlm_client *c) {
    return &c->info;
}

int vlm_client_last_error(const struct vlm_client *c) {
    return c->last_wire;
}

void vlm_client_cancel(struct vlm_client *c) {
    atomic_store(&c->cancel, 1);
    char one = 1;
    ssize_t w = write(c->wake_wr, &one, 1); // a full pipe already wakes the reader
    (void)w;
}

// ---- ask ----------------------------------------------------------------------------------------------------

void vlm_client_ask_params_init(struct vlm_client_ask_params *p) {
    memset(p, 0, sizeof *p);
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    p->max_tokens = a.max_tokens;
    p->temperature = a.temperature;
    p->top_k = a.top_k;
    p->top_p = a.top_p;
    p->min_p = a.min_p;
    p->repeat_penalty = a.repeat_penalty;
    p->repeat_last_n = a.repeat_last_n;
    p->seed = a.seed;
}

static const char *stop_name(enum vlm_rpc_stop s) {
    switch (s) {
    case VLM_RPC_STOP_EOS:
        return "eos";
    case VLM_RPC_STOP_STRING:
        return "stop";
    case VLM_RPC_STOP_LENGTH:
        return "length";
    case VLM_RPC_STOP_CONTEXT:
        return "context";
    case VLM_RPC_STOP_CANCELLED:
        return "cancelled";
    default:
        return "unknown";
    }
}

static int ask_result(struct vlm_client *c, const struct vlm_proto_msg *m, void *ctx, struct vlm_diag *diag) {
    (void)c;
    struct vlm_client_ask_result *out = ctx;
    struct vlm_rpc_ask_result r;
    struct vlm_diag d;
    if (vlm_rpc_ask_result_decode(m, &r, &d) != 0) {
        return vlm_diag_set(diag, VLM_EBADREQUEST, "ask: malformed reply from vlmd: %s", d.msg);
    }
    out->text = malloc((size_t)r.text.len + 1);
    if (!out->text) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    if (r.text.len) {
        memcpy(out->text, r.text.ptr, r.text.len);
    }
    out->text[r.text.len] = 0;
    out->text_len = r.text.len;
    out->tokens_prompt = r.tokens_prompt;
    out->tokens_generated = r.tokens_generated;
    out->stop_reason = r.stop_reason;
    out->stop_reason_name = stop_name(r.stop_reason);
    out->timings = r.timings;
    int rc = vlm_client_msgpack_to_json(m->result, m->result_len, &out->json, diag);
    if (rc < 0) {
        free(out->text);
        out->text = NULL;
    }
    return rc;
}

int vlm_client_ask(struct vlm_client *c, const struct vlm_client_ask_params *p, vlm_client_text_cb cb, void *user,
                   struct vlm_client_ask_result *out, struct vlm_diag *diag) {
    memset(out, 0, sizeof *out);
    int rc = check_usable(c, diag);
    if (rc < 0) {
        return rc;
    }
    if (!p || !p->prompt) {
        return vlm_diag_set(diag, VLM_EINVAL, "ask: no prompt");
    }
    size_t plen = strlen(p->prompt);
    if (!vlm_proto_utf8_valid(p->prompt, plen)) {
        return vlm_diag_set(diag, VLM_EINVAL, "ask: the prompt is not valid UTF-8");
    }
    if (plen > c->info.limits.max_str) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "ask: the prompt has %zu bytes; vlmd takes at most %u", plen,
                            c->info.limits.max_str);
    }
    uint32_t max_images = c->info.limits.max_images < VLM_RPC_IMAGES_MAX ? c->info.limits.max_images
                                                                          : VLM_RPC_IMAGES_MAX;
    if (p->n_images > max_images) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "ask: %u images; vlmd takes at most %u", p->n_images, max_images);
    }
    if (p->n_stop > VLM_RPC_STOP_MAX) {
        return vlm_diag_set(diag, VLM_EINVAL, "ask: %u stop strings; at most %d", p->n_stop, VLM_RPC_STOP_MAX);
    }
    size_t total = plen;
    for (uint32_t i = 0; i < p->n_images; i++) {
        if (!p->images[i].data || p->images[i].len == 0) {
            return vlm_diag_set(diag, VLM_EINVAL, "ask: image %u is empty", i + 1);
        }
        total += p->images[i].len;
    }
    if (total > c->info.limits.max_message) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "ask: the request holds %zu bytes; vlmd takes at most %zu per message",
                            total, c->info.limits.max_message);
    }
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.fields = p->fields & ~(uint32_t)(VLM_RPC_ASK_CHAIN | VLM_RPC_ASK_IMAGES | VLM_RPC_ASK_STREAM |
                                       VLM_RPC_ASK_PROMPT | VLM_RPC_ASK_STOP);
    a.prompt = vlm_proto_str_c(p->prompt);
    if (p->chain) {
        a.chain = vlm_proto_str_c(p->chain);
        a.fields |= VLM_RPC_ASK_CHAIN;
    }
    if (p->n_images) {
        a.n_images = p->n_images;
        for (uint32_t i = 0; i < p->n_images; i++) {
            a.images[i] = (struct vlm_proto_bytes){p->images[i].data, p->images[i].len};
        }
        a.fields |= VLM_RPC_ASK_IMAGES;
    }
    if (cb) {
        a.stream = true;
        a.fields |= VLM_RPC_ASK_STREAM;
    }
    if ((p->fields & VLM_RPC_ASK_STOP) && p->n_stop) {
        for (uint32_t i = 0; i < p->n_stop; i++) {
            a.stop[i] = vlm_proto_str_c(p->stop[i]);
        }
        a.n_stop = p->n_stop;
        a.fields |= VLM_RPC_ASK_STOP;
    }
    a.max_tokens = p->max_tokens;
    a.temperature = p->temperature;
    a.top_k = p->top_k;
    a.top_p = p->top_p;
    a.min_p = p->min_p;
    a.repeat_penalty = p->repeat_penalty;
    a.repeat_last_n = p->repeat_last_n;
    a.seed = p->seed;
    struct call k = {.what = "ask",
                     .id = take_id(c),
                     .cancellable = true,
                     .timeout_ms = p->timeout_ms > 0 ? p->timeout_ms : c->timeout_ms,
                     .text = cb,
                     .text_user = user,
                     .progress = p->progress,
                     .progress_user = p->progress_user,
                     .on_result = ask_result,
                     .ctx = out};
    rc = vlm_rpc_ask_encode(&c->out, k.id, &a);
    if (rc == VLM_EINVAL) {
        return vlm_diag_set(diag, rc, "ask: a parameter is outside the protocol's ranges (see vlm/proto.h: "
                                      "temperature 0..100, top_p/min_p 0..1, max_tokens -1..2^20, stop 1..256 "
                                      "bytes, at most 64 MiB per request)");
    }
    if (rc < 0) {
        return vlm_diag_set(diag, rc, "ask: cannot encode the request");
    }
    if (c->out.len > c->info.limits.max_message) {
        size_t len = c->out.len;
        vlm_proto_buf_reset(&c->out);
        return vlm_diag_set(diag, VLM_ETOOLARGE, "ask: the request has %zu bytes; vlmd takes at most %zu", len,
                            c->info.limits.max_message);
    }
    rc = call(c, &k, diag);
    out->n_pieces = k.n_pieces;
    if (rc < 0) {
        vlm_client_ask_result_free(out);
    }
    return rc;
}

void vlm_client_ask_result_free(struct vlm_client_ask_result *r) {
    if (!r) {
        return;
    }
    free(r->text);
    free(r->json);
    memset(r, 0, sizeof *r);
}

// ---- replies with open shapes -------------------------------------------------------------------------------

static int reply_result(struct vlm_client *c, const struct vlm_proto_msg *m, void *ctx, struct vlm_diag *diag) {
    (void)c;
    struct vlm_client_reply *out = ctx;
    out->msg = malloc(m->len);
    if (!out->msg) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    memcpy(out->msg, m->data, m->len);
    out->msg_len = m->len;
    int rc = vlm_client_msgpack_to_json(m->result, m->result_len, &out->json, diag);
    if (rc < 0) {
        vlm_client_reply_free(out);
    }
    return rc;
}

void vlm_client_reply_free(struct vlm_client_reply *r) {
    if (!r) {
        return;
    }
    free(r->msg);
    free(r->json);
    memset(r, 0, sizeof *r);
}

static int simple_call(struct vlm_client *c, enum vlm_rpc_method method, struct vlm_client_reply *out,
                       struct vlm_diag *diag) {
    memset(out, 0, sizeof *out);
    int rc = check_usable(c, diag);
    if (rc < 0) {
        return rc;
    }
    struct call k = {.what = vlm_rpc_method_name(method),
                     .id = take_id(c),
                     .timeout_ms = c->timeout_ms,
                     .on_result = reply_result,
                     .ctx = out};
    rc = vlm_rpc_noparams_encode(&c->out, k.id, method);
    if (rc < 0) {
        return vlm_diag_set(diag, rc, "%s: cannot encode the request", k.what);
    }
    return call(c, &k, diag);
}

int vlm_client_status(struct vlm_client *c, struct vlm_client_reply *out, struct vlm_diag *diag) {
    return simple_call(c, VLM_RPC_STATUS, out, diag);
}

int vlm_client_chains(struct vlm_client *c, struct vlm_client_reply *out, struct vlm_diag *diag) {
    return simple_call(c, VLM_RPC_CHAINS, out, diag);
}

int vlm_client_plugins(struct vlm_client *c, struct vlm_client_reply *out, struct vlm_diag *diag) {
    return simple_call(c, VLM_RPC_PLUGINS, out, diag);
}

static int component_call(struct vlm_client *c, enum vlm_rpc_method method,
                          const struct vlm_client_component_params *p, struct vlm_client_reply *out,
                          struct vlm_diag *diag) {
    memset(out, 0, sizeof *out);
    const char *what = vlm_rpc_method_name(method);
    int rc = check_usable(c, diag);
    if (rc < 0) {
        return rc;
    }
    if (!p || !p->chain) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: no chain named", what);
    }
    struct vlm_rpc_component_req r = {.chain = vlm_proto_str_c(p->chain),
                                      .component = p->component,
                                      .plugin = vlm_proto_str_c(p->plugin),
                                      .model = vlm_proto_str_c(p->model)};
    struct call k = {.what = what,
                     .id = take_id(c),
                     .cancellable = method != VLM_RPC_UNLOAD,
                     .timeout_ms = c->timeout_ms,
                     .progress = p->progress,
                     .progress_user = p->progress_user,
                     .on_result = reply_result,
                     .ctx = out};
    rc = vlm_rpc_component_req_encode(&c->out, k.id, method, &r);
    if (rc == VLM_EINVAL) {
        return vlm_diag_set(diag, rc, "%s: invalid request (swap needs a component and a model; unload takes no "
                                      "model; names are at most %d bytes of UTF-8)", what, VLM_PROTO_NAME_MAX);
    }
    if (rc < 0) {
        return vlm_diag_set(diag, rc, "%s: cannot encode the request", what);
    }
    return call(c, &k, diag);
}

int vlm_client_load(struct vlm_client *c, const struct vlm_client_component_params *p, struct vlm_client_reply *out,
                    struct vlm_diag *diag) {
    return component_call(c, VLM_RPC_LOAD, p, out, diag);
}

int vlm_client_unload(struct vlm_client *c, const struct vlm_client_component_params *p,
                      struct vlm_client_reply *out, struct vlm_diag *diag) {
    return component_call(c, VLM_RPC_UNLOAD, p, out, diag);
}

int vlm_client_swap(struct vlm_client *c, const struct vlm_client_component_params *p, struct vlm_client_reply *out,
                    struct vlm_diag *diag) {
    return component_call(c, VLM_RPC_SWAP, p, out, diag);
}
