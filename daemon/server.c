// The socket side, on the loop thread: listening on the Unix socket, accepting clients, feeding their bytes to
// the bounded protocol reader, and writing answers with a cap on what one client may leave unread.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/vlmd.h"

struct write_req {
    uv_write_t req;
    struct vlm__conn *conn;
    uint8_t *data;
};

// One buffer for every connection: the loop reads one connection at a time and the reader takes it all at once.
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    struct vlm__conn *c = (struct vlm__conn *)h;
    (void)suggested;
    *buf = uv_buf_init(c->d->read_buf, sizeof c->d->read_buf);
}

// ---- closing ------------------------------------------------------------------------------------------------

static void on_closed(uv_handle_t *h) {
    struct vlm__conn *c = (struct vlm__conn *)h;
    struct vlmd *d = c->d;
    vlm_proto_reader_close(&c->reader);
    vlm_proto_buf_free(&c->out);
    free(c);
    vlm__daemon_maybe_finish(d);
}

// The client's work stops: queued asks are dropped now, running ones are told to stop at the next token and
// answered to nobody; loads and swaps go on (they change the daemon, not the client) but answer nobody.
static void detach_work(struct vlm__conn *c) {
    struct vlmd *d = c->d;
    for (struct vlm__job *j = c->jobs, *next; j; j = next) {
        next = j->conn_next;
        j->conn = NULL;
        j->conn_next = NULL;
        if (vlm__worker_unqueue(j->worker, j)) {
            j->rc = VLM_ECANCELED;
            d->jobs_in_flight--;
            vlm__rpc_ask_done(d, j);
        } else {
            vlm__job_cancel(j);
        }
    }
    c->jobs = NULL;
    for (struct vlm__op *op = c->ops, *next; op; op = next) {
        next = op->conn_next;
        op->conn = NULL;
        op->conn_next = NULL;
    }
    c->ops = NULL;
}

static void unlink_conn(struct vlm__conn *c) {
    struct vlmd *d = c->d;
    if (c->prev) {
        c->prev->next = c->next;
    } else if (d->conns == c) {
        d->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    c->prev = c->next = NULL;
    d->n_conns--;
}

void vlm__conn_close(struct vlm__conn *c, const char *why) {
    if (c->closing) {
        return;
    }
    c->closing = true;
    VLM_LOGI("conn %llu: closed: %s", (unsigned long long)c->id, why);
    uv_read_stop((uv_stream_t *)&c->pipe);
    detach_work(c);
    unlink_conn(c);
    vlm_proto_buf_reset(&c->out);
    uv_close((uv_handle_t *)&c->pipe, on_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    struct vlm__conn *c = req->data;
    (void)status;
    vlm__conn_close(c, c->why ? c->why : "done");
}

void vlm__conn_close_after_write(struct vlm__conn *c, const char *why) {
    if (c->closing || c->draining) {
        return;
    }
    c->draining = true;
    c->why = why;
    uv_read_stop((uv_stream_t *)&c->pipe);
    detach_work(c);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->pipe, on_shutdown) != 0) {
        vlm__conn_close(c, why);
    }
}

// ---- back-pressure ------------------------------------------------------------------------------------------

// Bytes handed to the connection and not yet taken by the client's socket.
static size_t unwritten(struct vlm__conn *c) {
    return uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) + c->out.len;
}

void vlm__conn_hold(struct vlm__conn *c, struct vlm__job *job, bool hold) {
    if (!job->stream || atomic_load(&job->hold) == hold) {
        return; // an ask that is not streamed writes nothing until its answer: nothing to hold back
    }
    double now = vlm_time_ms();
    if (hold) {
        job->n_pauses++;
        job->t_held = now;
        VLM_LOGD("req %llu: paused: conn %llu is not reading", (unsigned long long)job->rid, (unsigned long long)c->id);
    } else {
        job->paused_ms += now - job->t_held;
    }
    vlm__job_hold(job, hold);
}

// Past output_pause: the client's streams stop producing (their workers wait) until it reads. Redis keeps
// buffering up to a limit and nginx stops reading the upstream; for a generation, stopping the producer is what
// keeps memory flat without losing the stream.
static void pause_conn(struct vlm__conn *c, size_t queued) {
    double now = vlm_time_ms();
    c->paused = true;
    c->t_paused = c->t_progress = now;
    c->bytes_taken = c->bytes_queued - uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
    VLM_LOGI("conn %llu: %zu bytes unread by the client (output_pause %zu): pausing its generation",
             (unsigned long long)c->id, queued, c->d->cfg.output_pause);
    for (struct vlm__job *j = c->jobs; j; j = j->conn_next) {
        vlm__conn_hold(c, j, true);
    }
}

// What sits in the kernel's socket buffer is unread too, and Linux gives a Unix socket about 200K of it
// (net.core.wmem_default) whatever output_pause says. A smaller output_pause caps that buffer as well, so a
// client can leave about twice output_pause unread before its stream pauses, not output_pause plus a sysctl.
static void cap_kernel_buffer(struct vlm__conn *c) {
    int cur = 0;
    size_t want = c->d->cfg.output_pause;
    if (uv_send_buffer_size((uv_handle_t *)&c->pipe, &cur) == 0 && cur > 0 && (size_t)cur > want) {
        int v = (int)(want / 2); // Linux doubles what it is given (bookkeeping); reads give the doubled value
        uv_send_buffer_size((uv_handle_t *)&c->pipe, &v);
    }
}

static void resume_conn(struct vlm__conn *c) {
    c->paused = false;
    c->t_progress = 0;
    VLM_LOGI("conn %llu: the client read its output: resuming after %.1f ms", (unsigned long long)c->id,
             vlm_time_ms() - c->t_paused);
    for (struct vlm__job *j = c->jobs; j; j = j->conn_next) {
        vlm__conn_hold(c, j, false);
    }
}

// ---- writing ------------------------------------------------------------------------------------------------

static void on_write(uv_write_t *req, int status) {
    struct write_req *w = (struct write_req *)req;
    struct vlm__conn *c = w->conn;
    if (status < 0 && status != UV_ECANCELED && !c->closing) {
        vlm__conn_close(c, uv_strerror(status));
    } else if (c->paused && !c->closing && !c->draining && unwritten(c) <= c->d->cfg.output_pause / 2) {
        resume_conn(c); // hysteresis: half the mark, so a client reading slowly does not flap pause/resume
    }
    free(w->data);
    free(w);
}

void vlm__conn_flush(struct vlm__conn *c) {
    if (c->out.len == 0) {
        return;
    }
    if (c->closing || c->draining) {
        vlm_proto_buf_reset(&c->out);
        return;
    }
    size_t queued = unwritten(c);
    if (queued > c->d->cfg.max_output) { // the hard limit holds while paused too (errors, progress, replies)
        VLM_LOGW("conn %llu: %zu bytes unread by the client (max_output %zu): dropping it", (unsigned long long)c->id,
                 queued, c->d->cfg.max_output);
        vlm_proto_buf_reset(&c->out);
        vlm__conn_close(c, "output limit");
        return;
    }
    struct write_req *w = malloc(sizeof *w);
    if (!w) {
        vlm_proto_buf_reset(&c->out);
        vlm__conn_close(c, "out of memory");
        return;
    }
    w->conn = c;
    w->data = c->out.data; // the request takes the bytes; the connection starts a fresh buffer
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    vlm_proto_buf_init(&c->out);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc) {
        free(w->data);
        free(w);
        vlm__conn_close(c, uv_strerror(rc));
        return;
    }
    c->bytes_queued += b.len;
    // uv_write has tried the socket already: what is queued now is what the client left unread.
    if (!c->paused && (queued = unwritten(c)) > c->d->cfg.output_pause) {
        pause_conn(c, queued);
    }
}

void vlm__conn_error(struct vlm__conn *c, uint32_t msgid, int wire_code, const char *message) {
    if (vlm_proto_error_encode(&c->out, msgid, wire_code, message) == 0) {
        vlm__conn_flush(c);
    }
}

void vlm__conn_progress(struct vlm__conn *c, uint32_t id, enum vlm_rpc_stage stage, uint64_t done, uint64_t total) {
    struct vlm_rpc_progress p = {.id = id, .stage = stage, .done = done, .total = total};
    if (vlm_rpc_progress_encode(&c->out, &p) == 0) {
        vlm__conn_flush(c);
    }
}

// ---- reading ------------------------------------------------------------------------------------------------

// A message the reader refused. The stream may still be usable (a well-framed message with a bad envelope) or
// not (framing lost): then the client gets the error and the connection closes once it is written.
static void refused(struct vlm__conn *c, const struct vlm_proto_msg *msg, int rc, const struct vlm_diag *diag) {
    bool broken = vlm_proto_reader_broken(&c->reader);
    int wire = vlm_proto_err_from_code(rc);
    VLM_LOGW("conn %llu: %s%s: %s", (unsigned long long)c->id, broken ? "closing: " : "", vlm_proto_err_name(wire),
             diag->msg);
    if (msg->type == VLM_PROTO_REQUEST && msg->has_msgid) {
        vlm__conn_error(c, msg->msgid, wire, NULL);
    } else if (broken && vlm_proto_error_notify_encode(&c->out, wire, NULL) == 0) {
        vlm__conn_flush(c);
    }
    if (broken) {
        vlm__conn_close_after_write(c, "protocol error");
    }
}

static void process(struct vlm__conn *c) {
    while (!c->closing && !c->draining) {
        struct vlm_proto_msg msg;
        struct vlm_diag diag = {0};
        int rc = vlm_proto_reader_next(&c->reader, &msg, &diag);
        if (rc == 0) {
            return;
        }
        if (rc < 0) {
            refused(c, &msg, rc, &diag);
            continue;
        }
        c->t_frame = 0; // a whole message arrived: the next one's clock starts with its first byte
        if (msg.type == VLM_PROTO_REQUEST) {
            vlm__rpc_dispatch(c, &msg);
        } else {
            VLM_LOGD("conn %llu: ignoring a %s from the client", (unsigned long long)c->id,
                     msg.type == VLM_PROTO_RESPONSE ? "response" : "notification");
        }
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct vlm__conn *c = (struct vlm__conn *)s;
    if (nread == 0) {
        return;
    }
    if (nread < 0) {
        vlm__conn_close(c, nread == UV_EOF ? "closed by the client" : uv_strerror((int)nread));
        return;
    }
    size_t off = 0;
    while (off < (size_t)nread && !c->closing && !c->draining) {
        size_t taken = 0;
        int rc = vlm_proto_reader_feed(&c->reader, buf->base + off, (size_t)nread - off, &taken);
        if (rc) {
            vlm__conn_close(c, rc == VLM_ENOMEM ? "out of memory" : "protocol error");
            return;
        }
        off += taken;
        process(c);
        if (taken == 0 && !c->closing && !c->draining) { // the reader guarantees progress; never spin
            vlm__conn_close(c, "reader stalled");
            return;
        }
    }
    // A byte at a time must not keep a partial message alive forever (slowloris): the frame clock is not reset
    // by activity, only by a whole message.
    c->t_active = vlm_time_ms();
    if (c->t_frame == 0 && vlm_proto_reader_pending(&c->reader) > 0) {
        c->t_frame = c->t_active;
    }
}

// ---- timeouts -----------------------------------------------------------------------------------------------

// send_timeout: a paused client (or one being closed after its last answer) that takes no byte for this long is
// dropped, which cancels its generation and frees the worker it held. True when it was dropped.
static bool send_timed_out(struct vlm__conn *c, double now, double send_ms) {
    size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
    if (send_ms <= 0 || !(c->paused || (c->draining && queued > 0))) {
        return false;
    }
    uint64_t taken = c->bytes_queued - queued;
    if (c->t_progress == 0 || taken != c->bytes_taken) {
        c->t_progress = now;
        c->bytes_taken = taken;
        return false;
    }
    if (now - c->t_progress <= send_ms) {
        return false;
    }
    VLM_LOGW("conn %llu: client not reading for %.1f s (send_timeout %.1f s; %zu bytes unread, paused %.1f s ago): "
             "dropping it",
             (unsigned long long)c->id, (now - c->t_progress) / 1e3, send_ms / 1e3, unwritten(c),
             c->paused ? (now - c->t_paused) / 1e3 : 0.0);
    vlm__conn_close(c, "send timeout");
    return true;
}

// One timer sweeps every client (as Redis's clientsCron) rather than a timer per connection: nothing to close
// per client, and a few hundred comparisons a tick cost less than rearming a timer on every read.
static void sweep_timeouts(uv_timer_t *t) {
    struct vlmd *d = t->data;
    double now = vlm_time_ms();
    double frame_ms = d->cfg.frame_timeout_s * 1e3, idle_ms = d->cfg.idle_timeout_s * 1e3;
    double send_ms = d->cfg.send_timeout_s * 1e3;
    for (struct vlm__conn *c = d->conns, *next; c; c = next) {
        next = c->next;
        if (c->closing || send_timed_out(c, now, send_ms) || c->draining) {
            continue;
        }
        if (c->jobs || c->ops || uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) > 0) {
            c->t_active = now; // waiting for its answer, or we are writing to it: not idle
        }
        if (frame_ms > 0 && c->t_frame > 0 && now - c->t_frame > frame_ms) {
            VLM_LOGW("conn %llu: a message began %.1f s ago and is still incomplete (%zu bytes; frame_timeout %.1f "
                     "s): dropping it", (unsigned long long)c->id, (now - c->t_frame) / 1e3,
                     vlm_proto_reader_pending(&c->reader), d->cfg.frame_timeout_s);
            vlm__conn_close(c, "frame timeout");
        } else if (idle_ms > 0 && c->t_frame == 0 && now - c->t_active > idle_ms) {
            vlm__conn_close(c, "idle timeout");
        }
    }
    // A quarter of the shortest timeout: a client is closed at most 25% late. SIGHUP may change them.
    double shortest = frame_ms > 0 && (idle_ms <= 0 || frame_ms < idle_ms) ? frame_ms : idle_ms;
    shortest = send_ms > 0 && (shortest <= 0 || send_ms < shortest) ? send_ms : shortest;
    double period = shortest > 0 ? shortest / 4 : 1000;
    uv_timer_set_repeat(t, (uint64_t)(period < 10 ? 10 : period > 1000 ? 1000 : period));
}

static void start_timeouts(struct vlmd *d) {
    uv_timer_init(d->loop, &d->conn_timer);
    d->conn_timer.data = d;
    uv_unref((uv_handle_t *)&d->conn_timer); // never what keeps the loop running
    uv_timer_start(&d->conn_timer, sweep_timeouts, 10, 10);
}

void vlm__server_stop_timeouts(struct vlmd *d) {
    if (d->conn_timer.data && !uv_is_closing((uv_handle_t *)&d->conn_timer)) {
        uv_close((uv_handle_t *)&d->conn_timer, NULL);
    }
}

// ---- listening ----------------------------------------------------------------------------------------------

static void on_connection(uv_stream_t *server, int status) {
    struct vlmd *d = server->data;
    if (status < 0) {
        VLM_LOGW("accept: %s", uv_strerror(status));
        return;
    }
    struct vlm__conn *c = calloc(1, sizeof *c);
    if (!c) {
        VLM_LOGE("accept: out of memory");
        return;
    }
    c->d = d;
    uv_pipe_init(d->loop, &c->pipe, 0);
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        uv_close((uv_handle_t *)&c->pipe, on_closed);
        return;
    }
    c->id = ++d->next_conn_id;
    c->t_active = vlm_time_ms();
    vlm_proto_reader_init(&c->reader, &d->limits);
    vlm_proto_buf_init(&c->out);
    c->next = d->conns;
    if (d->conns) {
        d->conns->prev = c;
    }
    d->conns = c;
    d->n_conns++;
    if (d->n_conns > d->cfg.max_clients) {
        VLM_LOGW("conn %llu: refused: %u clients already (max_clients)", (unsigned long long)c->id, d->n_conns - 1);
        if (vlm_proto_error_notify_encode(&c->out, VLM_PROTO_EMAX_CLIENTS, NULL) == 0) {
            vlm__conn_flush(c);
        }
        vlm__conn_close_after_write(c, "too many clients");
        return;
    }
    if (!vlm__access_admit(c)) { // access.c: SO_PEERCRED against allow_users / allow_groups
        return;
    }
    cap_kernel_buffer(c);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

// Whether a daemon answers on `path` (a stale file from a crashed one does not).
static bool socket_alive(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    bool alive = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 || errno == EAGAIN;
    close(fd);
    return alive;
}

// The socket passed by systemd (vlmd.socket): already bound with its mode and group, and listening.
static int listen_activated(struct vlmd *d, int fd, const char *path, struct vlm_diag *diag) {
    int rc = uv_pipe_init(d->loop, &d->server, 0);
    if (rc == 0 && (rc = uv_pipe_open(&d->server, fd)) != 0) {
        uv_close((uv_handle_t *)&d->server, NULL);
    }
    if (rc) {
        close(fd);
        return vlm_diag_set(diag, VLM_EIO, "socket activation: %s", uv_strerror(rc));
    }
    d->server.data = d;
    // listen() again only updates the backlog: keep systemd's (Backlog=, up to somaxconn), not a smaller one.
    if ((rc = uv_listen((uv_stream_t *)&d->server, SOMAXCONN, on_connection)) != 0) {
        uv_close((uv_handle_t *)&d->server, NULL);
        return vlm_diag_set(diag, VLM_EIO, "socket activation: cannot listen: %s", uv_strerror(rc));
    }
    struct stat st;
    d->socket_activated = true;
    d->socket_gid_known = path[0] && stat(path, &st) == 0;
    d->socket_gid = d->socket_gid_known ? st.st_gid : 0;
    d->listening = true;
    start_timeouts(d);
    VLM_LOGI("listening on %s (socket activation)", path[0] ? path : "a socket passed by systemd");
    return 0;
}

// A socket vlmd binds itself must not sit in a directory others can write to: another user could replace the
// file (or plant one) between our checks and a client's connect. The directory is created (0755) if missing.
static int check_socket_dir(const char *path, struct vlm_diag *diag) {
    char dir[108];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, sizeof dir, ".");
    } else {
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    }
    struct stat st;
    if (stat(dir, &st) != 0 && errno == ENOENT && mkdir(dir, 0755) != 0 && errno != EEXIST) {
        return vlm_diag_set(diag, VLM_EIO, "%s: cannot create the socket's directory: %s", dir, strerror(errno));
    }
    if (stat(dir, &st) != 0) {
        return vlm_diag_set(diag, VLM_EIO, "%s: %s", dir, strerror(errno));
    }
    if (st.st_mode & S_IWOTH) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: the socket's directory is world-writable: choose a directory only "
                                              "the daemon's user can write to (e.g. /run/vlmd)", dir);
    }
    return 0;
}

int vlm__server_listen(struct vlmd *d, struct vlm_diag *diag) {
    const char *path = d->cfg.socket_path;
    char activated_path[sizeof d->cfg.socket_path];
    int sd_fd;
    int rc0 = vlm__sd_listen_fd(&sd_fd, activated_path, sizeof activated_path, diag); // sd.c
    if (rc0) {
        return rc0;
    }
    if (sd_fd >= 0) {
        return listen_activated(d, sd_fd, activated_path, diag);
    }
    if ((rc0 = check_socket_dir(path, diag)) != 0) {
        return rc0;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return vlm_diag_set(diag, VLM_EINVAL, "%s exists and is not a socket: not touching it", path);
        }
        if (socket_alive(path)) {
            return vlm_diag_set(diag, VLM_EBUSY, "%s: another daemon is listening on it", path);
        }
        VLM_LOGI("%s: removing the stale socket of a daemon that is gone", path);
        if (unlink(path) != 0) {
            return vlm_diag_set(diag, VLM_EIO, "%s: cannot remove the stale socket: %s", path, strerror(errno));
        }
    }
    int rc = uv_pipe_init(d->loop, &d->server, 0);
    if (rc) {
        return vlm_diag_set(diag, VLM_EIO, "%s: %s", path, uv_strerror(rc));
    }
    d->server.data = d;
    // The mode is right from the moment the file exists (0660: owner and group), not fixed up after listen.
    mode_t old = umask(0117);
    rc = uv_pipe_bind(&d->server, path);
    umask(old);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&d->server, 128, on_connection);
    }
    if (rc) {
        uv_close((uv_handle_t *)&d->server, NULL);
        return vlm_diag_set(diag, VLM_EIO, "%s: cannot listen: %s", path, uv_strerror(rc));
    }
    d->listening = true;
    start_timeouts(d);
    d->socket_gid_known = stat(path, &st) == 0;
    d->socket_gid = d->socket_gid_known ? st.st_gid : 0;
    VLM_LOGI("listening on %s", path);
    return 0;
}

void vlm__server_stop_accepting(struct vlmd *d) {
    if (!d->listening) {
        return;
    }
    d->listening = false;
    uv_close((uv_handle_t *)&d->server, NULL);
    if (!d->socket_activated) { // systemd's socket outlives us: clients queue on it until the next start
        unlink(d->cfg.socket_path);
    }
}
