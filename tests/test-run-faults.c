// Fault and load tests of vlmd over its real socket (reliability.md section 3): a client that sends a byte at a
// time, slowloris clients (a stalled partial frame, a trickle that never completes one), an idle client, a
// client that stops reading for a while (its generation pauses, then resumes), one that never reads (dropped
// after send_timeout) or floods requests without reading (dropped at max_output), 1000 concurrent connections
// and the one past max_clients, and the timings of cancel, disconnect and `busy`. After each fault another client completes a normal request on the
// same daemon and its RSS returns to within 10% of the value before ("keeps serving").
//
// Figures for the closing note are printed with a "figure:" prefix.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test-util.h"
#include "vlm/generate.h"
#include "vlm/gguf.h"
#include "vlm/proto.h"
#include "vlm/tokenizer.h"

#define GOLDEN_DIR VLM_TEST_DATA_DIR "/golden/llama-gqa"
#define MODEL GOLDEN_DIR "/model-f32.gguf"
#define LONG_TOKENS 100000 // until the context (ctx 16384) is full: far longer than any test waits
#define TIMEOUT_MS 10000
#define QUEUE_DEPTH 8
#define FRAME_TIMEOUT_MS 500
#define IDLE_TIMEOUT_MS 1000
#define MAX_CONNS 1000
// Back-pressure (the main daemon's config file): streams pause once 4K wait unread; a client that reads nothing
// for SEND_TIMEOUT_MS while paused is dropped. The slow reader stops reading for STALL_MS (< send_timeout) in the
// middle of a SLOW_TOKENS answer, long enough to fill the socket buffer and output_pause many times over.
#define OUTPUT_PAUSE     "4K"
#define SEND_TIMEOUT_MS  1000
#define STALL_MS         600
#define SLOW_TOKENS      3000

static char g_dir[64];
static char g_sock[100];
static char g_sock2[100];
static char g_log[128];
static char g_conf[128];
static pid_t g_pid = -1;
static pid_t g_pid2 = -1; // the idle-timeout test's daemon
static int g_child_nofile;  // RLIMIT_NOFILE of the next daemon spawned (0: inherited)
static int g_max_clients = MAX_CONNS;
static char g_max_clients_arg[32];
static char g_prompt[512];   // golden prompt text
static char g_expected[4096]; // golden greedy continuation, as the daemon streams it
static int32_t g_prompt_ids[64];
static int g_n_prompt;

static double now_ms(void) {
    return vlm_time_ms();
}

// ---- the daemon ---------------------------------------------------------------------------------------------

// `extra`: NULL-terminated further flags.
static pid_t spawn_daemon(const char *sock, char *const *extra) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        // Under ASan, freed memory waits in a quarantine (256M by default) and RSS would never come back: keep
        // it small, and have the allocator hand free pages back to the kernel promptly (it does so on a timer),
        // so "RSS returns within 10%" measures the daemon, not the sanitizer.
        static char asan[512];
        const char *prev = getenv("ASAN_OPTIONS");
        snprintf(asan, sizeof asan, "%s%squarantine_size_mb=1:allocator_release_to_os_interval_ms=10",
                 prev ? prev : "", prev && prev[0] ? ":" : "");
        setenv("ASAN_OPTIONS", asan, 1);
        if (g_child_nofile > 0) {
            struct rlimit rl = {.rlim_cur = (rlim_t)g_child_nofile, .rlim_max = (rlim_t)g_child_nofile};
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        char *argv[48];
        int n = 0;
        char *const base[] = {VLM_BIN_DIR "/vlmd", "--socket", (char *)(uintptr_t)sock, "--plugin-dir",
                              VLM_PLUGIN_BUILD_DIR, "--model-dir", GOLDEN_DIR, "--chain", "default=" MODEL,
                              "--threads", "1", "--ctx-size", "16384", "--queue-depth", "8", "--max-message", "64K",
                              "--shutdown-timeout", "1", "--log-level", "info"};
        for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
            argv[n++] = base[i];
        }
        for (int i = 0; extra && extra[i] && n < 47; i++) {
            argv[n++] = extra[i];
        }
        argv[n] = NULL;
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static int connect_sock(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void wait_listening(const char *path, pid_t pid) {
    for (int i = 0; i < 1000; i++) {
        int fd = connect_sock(path);
        if (fd >= 0) {
            close(fd);
            return;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fail_msg("vlmd exited during start-up (status %d); see %s", st, g_log);
        }
        usleep(5000);
    }
    fail_msg("vlmd did not listen on %s within 5 s; see %s", path, g_log);
}

// VmRSS of the daemon, in KiB.
static long rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    assert_true(kb > 0);
    return kb;
}

// How many times the daemon's log has `text`.
static int log_count(const char *text) {
    char *log = vlm_test_read_file(g_log, NULL);
    int n = 0;
    for (const char *p = log; p && (p = strstr(p, text)); p += strlen(text)) {
        n++;
    }
    free(log);
    return n;
}

// Whether the daemon's log has `text` (the logged reason of a drop).
static bool log_has(const char *text) {
    return log_count(text) > 0;
}

// ---- a raw client -------------------------------------------------------------------------------------------

struct client {
    int fd;
    struct vlm_proto_reader r;
    struct vlm_proto_buf out;
};

static void client_open_at(struct client *c, const char *path) {
    c->fd = connect_sock(path);
    assert_true(c->fd >= 0);
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    assert_int_equal(vlm_proto_reader_init(&c->r, &lim), 0);
    vlm_proto_buf_init(&c->out);
}

static void client_open(struct client *c) {
    client_open_at(c, g_sock);
}
static void client_close(struct client *c) {
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    vlm_proto_reader_close(&c->r);
    vlm_proto_buf_free(&c->out);
}

static void send_raw(struct client *c, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        assert_true(w > 0);
        b += w;
        n -= (size_t)w;
    }
}

static void client_flush(struct client *c) {
    send_raw(c, c->out.data, c->out.len);
    vlm_proto_buf_reset(&c->out);
}

// 1: a message (valid until the next call), 0: timeout, -1: the daemon closed the connection.
static int client_next(struct client *c, struct vlm_proto_msg *msg, int timeout_ms) {
    double end = now_ms() + timeout_ms;
    for (;;) {
        struct vlm_diag diag;
        int rc = vlm_proto_reader_next(&c->r, msg, &diag);
        if (rc == 1) {
            return 1;
        }
        assert_int_equal(rc, 0);
        int left = (int)(end - now_ms());
        if (left <= 0) {
            return 0;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0) {
            continue;
        }
        uint8_t buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n <= 0) {
            return -1;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            size_t taken;
            assert_int_equal(vlm_proto_reader_feed(&c->r, buf + off, (size_t)n - off, &taken), 0);
            off += taken;
            if (off < (size_t)n) { // full: drain first (only happens with messages over the client's limit)
                fail_msg("client reader full");
            }
        }
    }
}

// The response to `id`, skipping notifications. Returns the wire error code (0 on success).
static int wait_response(struct client *c, uint32_t id, struct vlm_proto_msg *msg) {
    for (;;) {
        int rc = client_next(c, msg, TIMEOUT_MS);
        if (rc != 1) {
            fail_msg("no response to request %u (%s)", id, rc == 0 ? "timeout" : "connection closed");
        }
        if (msg->type == VLM_PROTO_RESPONSE && msg->msgid == id) {
            struct vlm_rpc_error e;
            int er = vlm_proto_error_decode(msg, &e, NULL);
            assert_true(er >= 0);
            return er == 1 ? e.code : 0;
        }
    }
}

static int client_hello(struct client *c, uint32_t id, uint32_t protocol) {
    struct vlm_rpc_hello h = {.client = vlm_proto_str_c("test-run-faults"), .protocol = protocol};
    assert_int_equal(vlm_rpc_hello_encode(&c->out, id, &h), 0);
    client_flush(c);
    struct vlm_proto_msg msg;
    int code = wait_response(c, id, &msg);
    if (code == 0) {
        struct vlm_rpc_hello_result r;
        assert_int_equal(vlm_rpc_hello_result_decode(&msg, &r, NULL), 0);
        assert_true(vlm_proto_str_eq(r.server, "vlmd"));
        assert_int_equal(r.protocol, VLM_PROTO_VERSION);
    }
    return code;
}

static void send_ask(struct client *c, uint32_t id, int32_t max_tokens, bool stream) {
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(g_prompt);
    a.temperature = 0;
    a.max_tokens = max_tokens;
    a.stream = stream;
    a.fields = VLM_RPC_ASK_TEMPERATURE | VLM_RPC_ASK_MAX_TOKENS | VLM_RPC_ASK_STREAM;
    assert_int_equal(vlm_rpc_ask_encode(&c->out, id, &a), 0);
    client_flush(c);
}

struct answer {
    int code;             // wire error, 0 on success
    char text[1 << 18];   // result text
    char streamed[1 << 18];
    size_t streamed_len;
    int n_text;           // vlm.text notifications before the response
    int n_progress;
    uint32_t tokens_prompt, tokens_generated;
};

// Reads until the response to `id`, collecting its notifications.
static void read_answer(struct client *c, uint32_t id, struct answer *ans) {
    memset(ans, 0, sizeof *ans);
    for (;;) {
        struct vlm_proto_msg msg;
        int rc = client_next(c, &msg, TIMEOUT_MS);
        if (rc != 1) {
            fail_msg("no answer to ask %u (%s)", id, rc == 0 ? "timeout" : "connection closed");
        }
        if (msg.type == VLM_PROTO_NOTIFY && msg.method == VLM_RPC_N_TEXT) {
            struct vlm_rpc_text t;
            assert_int_equal(vlm_rpc_text_decode(&msg, &t, NULL), 0);
            if (t.id == id) {
                assert_true(ans->streamed_len + t.text.len < sizeof ans->streamed);
                memcpy(ans->streamed + ans->streamed_len, t.text.ptr, t.text.len);
                ans->streamed_len += t.text.len;
                ans->n_text++;
            }
        } else if (msg.type == VLM_PROTO_NOTIFY && msg.method == VLM_RPC_N_PROGRESS) {
            struct vlm_rpc_progress p;
            assert_int_equal(vlm_rpc_progress_decode(&msg, &p, NULL), 0);
            ans->n_progress += p.id == id;
        } else if (msg.type == VLM_PROTO_RESPONSE && msg.msgid == id) {
            struct vlm_rpc_error e;
            int er = vlm_proto_error_decode(&msg, &e, NULL);
            assert_true(er >= 0);
            if (er == 1) {
                ans->code = e.code;
                return;
            }
            struct vlm_rpc_ask_result r;
            assert_int_equal(vlm_rpc_ask_result_decode(&msg, &r, NULL), 0);
            assert_true(r.text.len < sizeof ans->text);
            memcpy(ans->text, r.text.ptr, r.text.len);
            ans->text[r.text.len] = 0;
            ans->streamed[ans->streamed_len] = 0;
            ans->tokens_prompt = r.tokens_prompt;
            ans->tokens_generated = r.tokens_generated;
            return;
        }
    }
}

// Waits for the first vlm.text of `id` (a long generation has started).
static void wait_first_text(struct client *c, uint32_t id) {
    for (;;) {
        struct vlm_proto_msg msg;
        assert_int_equal(client_next(c, &msg, TIMEOUT_MS), 1);
        struct vlm_rpc_text t;
        if (msg.type == VLM_PROTO_NOTIFY && msg.method == VLM_RPC_N_TEXT &&
            vlm_rpc_text_decode(&msg, &t, NULL) == 0 && t.id == id) {
            return;
        }
        assert_false(msg.type == VLM_PROTO_RESPONSE && msg.msgid == id);
    }
}

// The worker is idle again (status says so) within `ms`; returns the time it took.
static double wait_idle(int ms) {
    struct client c;
    client_open(&c);
    double t0 = now_ms();
    for (uint32_t id = 1;; id++) {
        assert_int_equal(vlm_rpc_noparams_encode(&c.out, id, VLM_RPC_STATUS), 0);
        client_flush(&c);
        struct vlm_proto_msg msg;
        assert_int_equal(wait_response(&c, id, &msg), 0);
        struct vlm_rpc_worker w[4];
        struct vlm_rpc_status s;
        assert_int_equal(vlm_rpc_status_decode(&msg, &s, w, 4, NULL, NULL), 0);
        assert_int_equal(s.n_workers, 1);
        if (!w[0].busy && s.queue_length == 0) {
            break;
        }
        assert_true(now_ms() - t0 < ms);
        usleep(1000);
    }
    double t = now_ms() - t0;
    client_close(&c);
    return t;
}

static void ask_ok(void) {
    struct client c;
    client_open(&c);
    send_ask(&c, 1, 32, false);
    static struct answer a;
    read_answer(&c, 1, &a);
    assert_int_equal(a.code, 0);
    assert_string_equal(a.text, g_expected);
    client_close(&c);
}

// ---- setup --------------------------------------------------------------------------------------------------

static void load_golden(void) {
    char *txt = vlm_test_read_file(GOLDEN_DIR "/golden.txt", NULL);
    int32_t greedy[64];
    int n_greedy = 0;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "prompt_text ", 12)) {
            snprintf(g_prompt, sizeof g_prompt, "%s", line + 12);
        } else if (!strncmp(line, "prompt ", 7) || !strncmp(line, "greedy ", 7)) {
            bool is_prompt = line[0] == 'p';
            int32_t *dst = is_prompt ? g_prompt_ids : greedy;
            int n = 0;
            for (char *p = line + 7, *end; *p; p = end) {
                long v = strtol(p, &end, 10);
                if (end == p) {
                    break;
                }
                assert_true(n < 64);
                dst[n++] = (int32_t)v;
            }
            *(is_prompt ? &g_n_prompt : &n_greedy) = n;
        }
    }
    free(txt);
    assert_int_equal(n_greedy, 32);
    // The expected text: the golden greedy tokens detokenized as vlm_generate streams them.
    struct vlm_gguf *g;
    struct vlm_tokenizer *tok;
    assert_int_equal(vlm_gguf_open(MODEL, &g, NULL), 0);
    assert_int_equal(vlm_tokenizer_new(g, &tok, NULL), 0);
    int32_t ids[64];
    int64_t n = vlm_tokenize(tok, g_prompt, strlen(g_prompt), true, false, ids, 64);
    assert_int_equal(n, g_n_prompt); // the daemon tokenizes the text the same way
    assert_memory_equal(ids, g_prompt_ids, (size_t)n * sizeof ids[0]);
    struct vlm_detok_stream ds;
    vlm_detok_stream_init(&ds, tok, false, false);
    size_t len = 0;
    for (int i = 0; i < n_greedy; i++) {
        int32_t k = vlm_detok_stream_push(&ds, greedy[i], g_expected + len, (int32_t)(sizeof g_expected - len));
        assert_true(k >= 0);
        len += (size_t)k;
    }
    len += (size_t)vlm_detok_stream_flush(&ds, g_expected + len, (int32_t)(sizeof g_expected - len));
    g_expected[len] = 0;
    assert_true(len > 0);
    vlm_tokenizer_free(tok);
    vlm_gguf_close(g);
}


static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/vlmd-faults-XXXXXX");
    if (!mkdtemp(g_dir)) {
        return -1;
    }
    snprintf(g_sock, sizeof g_sock, "%s/vlmd.sock", g_dir);
    snprintf(g_sock2, sizeof g_sock2, "%s/idle.sock", g_dir);
    snprintf(g_log, sizeof g_log, "%s/vlmd.log", g_dir);
    snprintf(g_conf, sizeof g_conf, "%s/vlmd.conf", g_dir);
    // 1000 clients need 1000 descriptors here and in the daemon (which inherits the limit).
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t want = MAX_CONNS + 64;
        if (rl.rlim_cur < want) {
            rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        if (rl.rlim_cur < want) {
            g_max_clients = (int)rl.rlim_cur - 64;
            print_message("RLIMIT_NOFILE hard limit %lu: testing %d connections, not %d\n",
                          (unsigned long)rl.rlim_max, g_max_clients, MAX_CONNS);
        }
    }
    snprintf(g_max_clients_arg, sizeof g_max_clients_arg, "--max-clients=%d", g_max_clients);
    load_golden();
    // output_pause and send_timeout from a file, as an operator would set them (flags override the file).
    FILE *conf = fopen(g_conf, "w");
    if (!conf) {
        return -1;
    }
    fprintf(conf, "[daemon]\noutput_pause = %s\nsend_timeout = %g\n", OUTPUT_PAUSE, SEND_TIMEOUT_MS / 1e3);
    fclose(conf);
    char *const extra[] = {
        g_max_clients_arg, "--frame-timeout", "0.5", "--max-output", "64K", "--config", g_conf, NULL};
    g_pid = spawn_daemon(g_sock, extra);
    wait_listening(g_sock, g_pid);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    if (g_pid2 > 0) { // a failed idle-timeout test left it running
        kill(g_pid2, SIGKILL);
        waitpid(g_pid2, NULL, 0);
    }
    unlink(g_sock);
    unlink(g_sock2);
    unlink(g_conf);
    if (getenv("VLMD_TEST_KEEP_LOG")) {
        print_message("vlmd log kept in %s\n", g_log);
    } else {
        unlink(g_log);
        rmdir(g_dir);
    }
    return 0;
}

// ---- keeps serving ------------------------------------------------------------------------------------------

static long g_rss_base; // after a first request: models loaded, arenas warm

// After a fault: another client completes a normal request, and the daemon's RSS comes back within 10% of
// `before` (freed memory may take a moment to be trimmed: up to 2 s).
// "RSS returns within 10%" (issue 6). ASan's allocator keeps the memory of 1000 closed connections in its own
// size-class caches however small the quarantine, so a sanitizer build checks only for runaway growth (50%); the
// Release run of the same test holds the 10% bound.
#if defined(__SANITIZE_ADDRESS__)
#    define RSS_SLACK_DIV 2
#else
#    define RSS_SLACK_DIV 10
#endif

static void keeps_serving(const char *fault, long before) {
    ask_ok();
    assert_int_equal(waitpid(g_pid, NULL, WNOHANG), 0);
    long rss = rss_kb(g_pid);
    for (int i = 0; i < 200 && rss > before + before / RSS_SLACK_DIV; i++) {
        usleep(10000);
        rss = rss_kb(g_pid);
    }
    print_message("%s: keeps serving; RSS %ld KiB before, %ld KiB after\n", fault, before, rss);
    if (rss > before + before / RSS_SLACK_DIV) {
        fail_msg("%s: RSS %ld KiB did not return within %d%% of %ld KiB", fault, rss, 100 / RSS_SLACK_DIV, before);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Nearest-rank percentile.
static double percentile(double *v, int n, double p) {
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    int k = (int)(p / 100 * n + 0.999999);
    return v[k < 1 ? 0 : k > n ? n - 1 : k - 1];
}

// Reads from a raw fd until the daemon closes it (or `timeout_ms`): returns the time it took, -1 on timeout.
static double wait_closed(int fd, int timeout_ms) {
    double t0 = now_ms();
    for (;;) {
        int left = (int)(t0 + timeout_ms - now_ms());
        if (left <= 0) {
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0) {
            continue;
        }
        uint8_t buf[65536];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            return now_ms() - t0;
        }
    }
}

// ---- tests --------------------------------------------------------------------------------------------------

static void test_baseline(void **state) {
    (void)state;
    ask_ok();
    ask_ok();
    g_rss_base = rss_kb(g_pid);
    print_message("figure: daemon RSS with the model loaded, no clients: %ld KiB\n", g_rss_base);
}

// Matrix row: a client that sends its request a byte at a time gets the same answer as any other.
static void test_byte_at_a_time(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    struct client c;
    client_open(&c);
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(g_prompt);
    a.temperature = 0;
    a.max_tokens = 32;
    a.fields = VLM_RPC_ASK_TEMPERATURE | VLM_RPC_ASK_MAX_TOKENS;
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 5, &a), 0);
    for (size_t i = 0; i < c.out.len; i++) {
        send_raw(&c, c.out.data + i, 1);
        usleep(200); // each byte its own read on the daemon's side
    }
    print_message("byte-at-a-time: %zu bytes sent one by one\n", c.out.len);
    vlm_proto_buf_reset(&c.out);
    static struct answer ans;
    read_answer(&c, 5, &ans);
    assert_int_equal(ans.code, 0);
    assert_string_equal(ans.text, g_expected);
    client_close(&c);
    keeps_serving("byte-at-a-time", before);
}

// Matrix rows: slowloris. A partial header then silence, and a trickle of one byte every 50 ms that never
// completes its message: both are closed once frame_timeout (0.5 s here) has passed since their first byte,
// however active the trickle is.
static void test_slowloris(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    struct client c;
    client_open(&c);
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(g_prompt);
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 1, &a), 0);
    send_raw(&c, c.out.data, 3);
    double t = wait_closed(c.fd, 5000);
    print_message("slowloris (partial header, stalled): closed after %.0f ms (frame_timeout %d ms)\n", t,
                  FRAME_TIMEOUT_MS);
    assert_true(t >= FRAME_TIMEOUT_MS - 50 && t < FRAME_TIMEOUT_MS * 3);
    client_close(&c);

    client_open(&c);
    static char big[8192];
    memset(big, 'a', sizeof big - 1);
    a.prompt = vlm_proto_str_c(big);
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 1, &a), 0);
    double t0 = now_ms();
    size_t sent = 0;
    bool closed = false;
    while (sent < c.out.len && now_ms() - t0 < 5000) {
        ssize_t w = send(c.fd, c.out.data + sent, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        struct pollfd p = {.fd = c.fd, .events = POLLIN};
        if (w < 0 || (poll(&p, 1, 50) == 1 && (p.revents & (POLLIN | POLLHUP)))) {
            closed = true;
            break;
        }
        sent++;
    }
    t = now_ms() - t0;
    print_message("slowloris (a byte every 50 ms): closed after %.0f ms, %zu of %zu bytes sent\n", t, sent,
                  c.out.len);
    assert_true(closed);
    assert_true(t >= FRAME_TIMEOUT_MS - 50 && t < FRAME_TIMEOUT_MS * 3);
    client_close(&c);
    assert_true(log_has("frame timeout"));
    keeps_serving("slowloris", before);
}

// Matrix row: idle timeout (its own daemon: the main one keeps idle clients for the 1000-connection test). A
// silent client is closed after idle_timeout; one that sends a request now and then, or waits for its answer, is
// not.
static void test_idle_timeout(void **state) {
    (void)state;
    char *const extra[] = {"--idle-timeout", "1", NULL};
    pid_t pid = g_pid2 = spawn_daemon(g_sock2, extra);
    wait_listening(g_sock2, pid);
    struct client idle, chatty;
    client_open_at(&idle, g_sock2);
    client_open_at(&chatty, g_sock2);
    double t0 = now_ms();
    for (uint32_t id = 1; now_ms() - t0 < 2 * IDLE_TIMEOUT_MS; id++) {
        assert_int_equal(vlm_rpc_noparams_encode(&chatty.out, id, VLM_RPC_STATUS), 0);
        client_flush(&chatty);
        struct vlm_proto_msg msg;
        assert_int_equal(wait_response(&chatty, id, &msg), 0);
        usleep(IDLE_TIMEOUT_MS * 1000 / 3);
    }
    double t = wait_closed(idle.fd, 200); // already closed by now
    double elapsed = now_ms() - t0;
    assert_true(t >= 0);
    print_message("idle timeout: a silent client was closed within %.0f ms (idle_timeout %d ms); an active one "
                  "was kept\n", elapsed, IDLE_TIMEOUT_MS);
    // The active client is still served.
    assert_int_equal(vlm_rpc_noparams_encode(&chatty.out, 999, VLM_RPC_STATUS), 0);
    client_flush(&chatty);
    struct vlm_proto_msg msg;
    assert_int_equal(wait_response(&chatty, 999, &msg), 0);
    client_close(&idle);
    client_close(&chatty);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    g_pid2 = -1;
    unlink(g_sock2);
    assert_true(log_has("idle timeout"));
}

// CPU time (user + system) the process has used, in ms.
static double cpu_ms(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); // the command may hold spaces
    assert_non_null(p);
    unsigned long ut = 0, st = 0;
    // after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st), 2);
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

// Matrix row: out of descriptors. A daemon with a small RLIMIT_NOFILE gets more clients than it has fds for:
// accept fails with EMFILE, and the daemon must not spin on the listening socket (libuv's spare-fd trick closes
// the excess clients); once they leave it serves again.
static void test_emfile(void **state) {
    (void)state;
    g_child_nofile = 64;
    char *const extra[] = {NULL};
    pid_t pid = g_pid2 = spawn_daemon(g_sock2, extra);
    g_child_nofile = 0;
    wait_listening(g_sock2, pid);
    enum { N = 100 };
    int fds[N];
    int n = 0;
    for (int i = 0; i < N; i++) {
        fds[n] = connect_sock(g_sock2);
        n += fds[n] >= 0;
    }
    usleep(100000);
    // The daemon is at its limit: accept() fails with EMFILE (libuv closes the excess clients without a callback).
    char fddir[64];
    snprintf(fddir, sizeof fddir, "/proc/%d/fd", (int)pid);
    int open_fds = 0;
    DIR *dir = opendir(fddir);
    assert_non_null(dir);
    for (struct dirent *e; (e = readdir(dir));) {
        open_fds += e->d_name[0] != '.';
    }
    closedir(dir);
    assert_true(open_fds >= 64 - 2);
    double c0 = cpu_ms(pid), t0 = now_ms();
    usleep(500000);
    double used = cpu_ms(pid) - c0, wall = now_ms() - t0;
    print_message("EMFILE: %d clients against RLIMIT_NOFILE 64 (%d fds open): the daemon used %.0f ms of CPU in "
                  "%.0f ms\n", n, open_fds, used, wall);
    assert_true(used < wall / 5); // not spinning
    for (int i = 0; i < n; i++) {
        close(fds[i]);
    }
    // Serves again: a status round trip on a fresh connection.
    double t1 = now_ms();
    for (;;) {
        struct client c;
        client_open_at(&c, g_sock2);
        assert_int_equal(vlm_rpc_noparams_encode(&c.out, 1, VLM_RPC_STATUS), 0);
        client_flush(&c);
        struct vlm_proto_msg msg;
        int rc = client_next(&c, &msg, 1000);
        client_close(&c);
        if (rc == 1) {
            break;
        }
        assert_true(now_ms() - t1 < TIMEOUT_MS);
        usleep(20000);
    }
    assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    g_pid2 = -1;
    unlink(g_sock2);
}

// One status round trip on a fresh connection (new clients are accepted and served): the time it took, and
// whether the worker was busy.
static double status_probe(bool *busy) {
    struct client c;
    client_open(&c);
    double t0 = now_ms();
    assert_int_equal(vlm_rpc_noparams_encode(&c.out, 1, VLM_RPC_STATUS), 0);
    client_flush(&c);
    struct vlm_proto_msg msg;
    assert_int_equal(wait_response(&c, 1, &msg), 0);
    double dt = now_ms() - t0;
    struct vlm_rpc_worker w[4];
    struct vlm_rpc_status s;
    assert_int_equal(vlm_rpc_status_decode(&msg, &s, w, 4, NULL, NULL), 0);
    *busy = w[0].busy;
    client_close(&c);
    return dt;
}

// Whether the daemon has closed `fd`, without reading from it (reading would let a paused stream resume).
static bool peer_closed(int fd, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = 0}; // POLLHUP is reported whatever is asked for
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & (POLLHUP | POLLERR));
}

// Waits until the daemon's log has `text` more than `n` times; returns when (ms since `t0`).
static double wait_log(const char *text, int n, double t0) {
    while (log_count(text) <= n) {
        assert_true(now_ms() - t0 < TIMEOUT_MS);
        usleep(2000);
    }
    return now_ms() - t0;
}

// The "paused N times for X ms" of the last answer logged with it.
static double last_paused_ms(int *times) {
    char *log = vlm_test_read_file(g_log, NULL);
    assert_non_null(log);
    const char *last = NULL;
    for (const char *p = log; (p = strstr(p, ", paused ")); p++) {
        last = p;
    }
    assert_non_null(last);
    double ms = -1;
    assert_int_equal(sscanf(last, ", paused %d times for %lf ms", times, &ms), 2);
    free(log);
    return ms;
}

// Matrix row: a client that stops reading for a while. Its streamed answer pauses once the socket buffer and
// output_pause are full (the worker waits rather than piling text up) and resumes once it reads; what it receives
// is byte for byte what a client that reads along receives. Meanwhile other clients are served, and the daemon's
// own account (its log) shows the worker held for as long as the client did not read.
static void test_slow_reader(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    struct client c;
    client_open(&c);
    double t0 = now_ms();
    send_ask(&c, 1, SLOW_TOKENS, true);
    static struct answer want, got;
    read_answer(&c, 1, &want);
    double t_ref = now_ms() - t0;
    client_close(&c);
    assert_int_equal(want.code, 0);
    assert_int_equal(want.tokens_generated, SLOW_TOKENS);
    int pauses = log_count("pausing its generation"), resumes = log_count("resuming after");
    int done_paused = log_count("(client not reading)");

    client_open(&c);
    t0 = now_ms();
    send_ask(&c, 1, SLOW_TOKENS, true);
    double t_pause = wait_log("pausing its generation", pauses, t0); // socket buffer and output_pause are full
    double cpu0 = cpu_ms(g_pid), worst = 0;
    int probes = 0;
    while (now_ms() - t0 < t_pause + STALL_MS) {
        bool busy;
        double dt = status_probe(&busy);
        worst = dt > worst ? dt : worst;
        probes++;
        assert_true(busy); // the worker stays with the paused ask (and is not done with it)
        usleep(20000);
    }
    int unread = 0;
    assert_int_equal(ioctl(c.fd, FIONREAD, &unread), 0);
    double t_read = now_ms() - t0;
    double cpu = cpu_ms(g_pid) - cpu0; // generating takes a whole core; a held worker waits, it does not spin
    assert_true(cpu < (t_read - t_pause) / 4);
    read_answer(&c, 1, &got);
    double t_total = now_ms() - t0;
    client_close(&c);
    assert_int_equal(got.code, 0);
    assert_int_equal(got.tokens_generated, want.tokens_generated);
    assert_int_equal(got.streamed_len, want.streamed_len);
    assert_memory_equal(got.streamed, want.streamed, want.streamed_len);
    assert_string_equal(got.text, want.text);
    assert_true(log_count("resuming after") > resumes);
    assert_int_equal(log_count("(client not reading)"), done_paused + 1); // the answer's log line says so
    int times;
    double held = last_paused_ms(&times);
    // The worker waited (rather than generating) at least for the time the client read nothing after the pause.
    assert_true(held >= t_read - t_pause - 20);
    print_message(
        "figure: slow reader: a %zu-byte stream (%d vlm.text, %d tokens; %.0f ms to generate and read "
        "along); the client read nothing for %.0f ms: paused once %.0f ms in, with %d bytes in its "
        "socket (output_pause " OUTPUT_PAUSE "); the worker was held %.0f ms (%d pauses), the daemon used %.0f ms "
        "of CPU meanwhile; all read after %.0f ms, byte-identical to the reading client's\n",
        want.streamed_len, want.n_text, SLOW_TOKENS, t_ref, t_read, t_pause, unread, held, times, cpu, t_total);
    print_message("figure: slow reader: another client's status (a new connection each time) took at most %.1f ms "
                  "over %d probes while it was paused\n",
                  worst, probes);
    keeps_serving("slow reader", before);
}

// Matrix row: a client that never reads. It starts a long streamed answer and reads nothing: the generation
// pauses at once and, after send_timeout with nothing taken, the client is dropped with a logged reason, its
// generation cancelled and the worker freed; other clients are answered throughout.
static void test_never_reads(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    int drops = log_count("client not reading for"), pauses = log_count("pausing its generation");
    struct client slow;
    client_open(&slow);
    double t0 = now_ms(), worst = 0;
    send_ask(&slow, 1, LONG_TOKENS, true);
    double t_pause = wait_log("pausing its generation", pauses, t0); // once its socket buffer is full
    bool closed = false;
    while (!closed && now_ms() - t0 < t_pause + 5 * SEND_TIMEOUT_MS) {
        bool busy;
        double dt = status_probe(&busy);
        worst = dt > worst ? dt : worst;
        closed = peer_closed(slow.fd, 20);
    }
    double t = now_ms() - t0 - t_pause;
    print_message("figure: never-reads: paused %.0f ms after its ask, dropped %.0f ms later (send_timeout %d ms); "
                  "another client's status took at most %.1f ms meanwhile\n",
                  t_pause, t, SEND_TIMEOUT_MS, worst);
    assert_true(closed);
    assert_true(t >= SEND_TIMEOUT_MS - 50 && t < 2 * SEND_TIMEOUT_MS);
    assert_int_equal(log_count("client not reading for"), drops + 1);
    assert_true(wait_closed(slow.fd, TIMEOUT_MS) >= 0); // what was written can still be read, then EOF
    double t_idle = wait_idle(TIMEOUT_MS);              // its generation was cancelled
    print_message("never-reads: worker free %.1f ms after the drop was seen\n", t_idle);
    client_close(&slow);
    keeps_serving("never-reads", before);
}

// Matrix row: a client that never reads and keeps sending requests. Its stream is paused, but the replies to its
// requests still pile up: max_output (64K here) is a hard limit, paused or not, and it is dropped as soon as it
// passes it (well before send_timeout), its generation cancelled; other clients are answered throughout.
static void test_never_reads_pipelined(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    struct client slow, other;
    client_open(&slow);
    client_open(&other);
    send_ask(&slow, 1, LONG_TOKENS, true);
    double worst = 0;
    double t0 = now_ms();
    uint32_t id = 10;
    bool dropped = false;
    while (!dropped && now_ms() - t0 < 8000) {
        for (int i = 0; i < 64; i++) {
            assert_int_equal(vlm_rpc_noparams_encode(&slow.out, id++, VLM_RPC_STATUS), 0);
        }
        ssize_t w = send(slow.fd, slow.out.data, slow.out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        vlm_proto_buf_reset(&slow.out);
        dropped = w < 0 && errno != EAGAIN;
        double ts = now_ms();
        assert_int_equal(vlm_rpc_noparams_encode(&other.out, id, VLM_RPC_STATUS), 0);
        client_flush(&other);
        struct vlm_proto_msg msg;
        assert_int_equal(wait_response(&other, id++, &msg), 0);
        double dt = now_ms() - ts;
        worst = dt > worst ? dt : worst;
        dropped = dropped || log_has("output limit");
    }
    double t = now_ms() - t0;
    print_message("never-reads, pipelining: dropped at max_output after %.0f ms; another client's status took at "
                  "most %.1f ms meanwhile\n",
                  t, worst);
    assert_true(dropped);
    assert_true(t < SEND_TIMEOUT_MS); // the hard limit, not the timeout
    assert_true(log_has("max_output"));
    assert_true(wait_closed(slow.fd, TIMEOUT_MS) >= 0);
    wait_idle(TIMEOUT_MS);
    client_close(&slow);
    client_close(&other);
    keeps_serving("never-reads, pipelining", before);
}

static int status_clients(void) {
    struct client c;
    client_open(&c);
    assert_int_equal(vlm_rpc_noparams_encode(&c.out, 1, VLM_RPC_STATUS), 0);
    client_flush(&c);
    struct vlm_proto_msg msg;
    assert_int_equal(wait_response(&c, 1, &msg), 0);
    struct vlm_rpc_worker w[4];
    struct vlm_rpc_status s;
    assert_int_equal(vlm_rpc_status_decode(&msg, &s, w, 4, NULL, NULL), 0);
    client_close(&c);
    return (int)s.clients - 1; // not counting this one
}

// Matrix row: 1000 concurrent connections. All are accepted and answered; the next one is told MAX_CLIENTS and
// closed; after they leave the daemon serves and its memory comes back.
static void test_many_connections(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    int n = g_max_clients;
    struct client *c = calloc((size_t)n, sizeof *c);
    assert_non_null(c);
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        client_open(&c[i]);
    }
    for (int i = 0; i < n; i++) { // every one is served, not just accepted
        assert_int_equal(client_hello(&c[i], 1, VLM_PROTO_VERSION), 0);
    }
    double t_open = now_ms() - t0;
    long held = rss_kb(g_pid);
    // One more: refused with MAX_CLIENTS, then closed.
    struct client extra;
    client_open(&extra);
    struct vlm_proto_msg msg;
    assert_int_equal(client_next(&extra, &msg, TIMEOUT_MS), 1);
    struct vlm_rpc_error e;
    assert_int_equal(vlm_proto_error_decode(&msg, &e, NULL), 1);
    assert_int_equal(e.code, VLM_PROTO_EMAX_CLIENTS);
    assert_int_equal(client_next(&extra, &msg, TIMEOUT_MS), -1);
    client_close(&extra);
    // The held ones are all still there and served.
    assert_int_equal(client_hello(&c[n - 1], 2, VLM_PROTO_VERSION), 0);
    assert_int_equal(client_hello(&c[0], 2, VLM_PROTO_VERSION), 0);
    print_message("figure: connections held: %d (max_clients), opened and greeted in %.0f ms; the next one was "
                  "refused with MAX_CLIENTS\n", n, t_open);
    print_message("figure: RSS per idle connection: %.0f bytes (%ld KiB before, %ld KiB with %d held)\n",
                  (double)(held - before) * 1024 / n, before, held, n);
    for (int i = 0; i < n; i++) {
        client_close(&c[i]);
    }
    free(c);
    double t1 = now_ms();
    while (status_clients() > 0) {
        assert_true(now_ms() - t1 < TIMEOUT_MS);
        usleep(2000);
    }
    keeps_serving("1000 connections", before);
}

// Matrix rows: cancel and disconnect while generating. The time from the cancel (or the close) to the worker
// being free again, as another client sees it in status.
static void test_cancel_disconnect_p99(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    enum { K = 20 };
    double t_cancel[K], t_disc[K];
    struct client st;
    client_open(&st);
    uint32_t sid = 1;
    for (int k = 0; k < 2 * K; k++) {
        bool disconnect = k % 2 == 1;
        struct client c;
        client_open(&c);
        send_ask(&c, 7, LONG_TOKENS, true);
        wait_first_text(&c, 7);
        double t0 = now_ms();
        if (disconnect) {
            client_close(&c);
        } else {
            struct vlm_rpc_cancel cp = {.id = 7};
            assert_int_equal(vlm_rpc_cancel_encode(&c.out, 8, &cp), 0);
            client_flush(&c);
        }
        for (;;) {
            assert_int_equal(vlm_rpc_noparams_encode(&st.out, sid, VLM_RPC_STATUS), 0);
            client_flush(&st);
            struct vlm_proto_msg msg;
            assert_int_equal(wait_response(&st, sid++, &msg), 0);
            struct vlm_rpc_worker w[4];
            struct vlm_rpc_status s;
            assert_int_equal(vlm_rpc_status_decode(&msg, &s, w, 4, NULL, NULL), 0);
            if (!w[0].busy) {
                break;
            }
            assert_true(now_ms() - t0 < TIMEOUT_MS);
        }
        (disconnect ? t_disc : t_cancel)[k / 2] = now_ms() - t0;
        if (!disconnect) {
            static struct answer ans;
            read_answer(&c, 7, &ans);
            assert_int_equal(ans.code, VLM_PROTO_ECANCELLED);
            client_close(&c);
        }
    }
    client_close(&st);
    double p50c = percentile(t_cancel, K, 50), p99c = percentile(t_cancel, K, 99);
    double p50d = percentile(t_disc, K, 50), p99d = percentile(t_disc, K, 99);
    print_message("figure: cancel -> worker free: p50 %.2f ms, p99 %.2f ms (%d samples)\n", p50c, p99c, K);
    print_message("figure: disconnect -> worker free: p50 %.2f ms, p99 %.2f ms (%d samples)\n", p50d, p99d, K);
    assert_true(p99c < 1000 && p99d < 1000);
    keeps_serving("cancel/disconnect", before);
}

// Matrix row: queue overflow. With the worker busy and queue_depth asks waiting, each further ask is answered
// `busy` at once; the figure is the time from sending it to the answer.
static void test_busy_p99(void **state) {
    (void)state;
    long before = rss_kb(g_pid);
    struct client f, g;
    client_open(&f);
    client_open(&g);
    send_ask(&f, 1, LONG_TOKENS, false); // not streamed: nothing piles up unread
    // The worker must have taken the long ask before the others arrive: had the loop queued all of them first,
    // the last would be refused and the queue would never show QUEUE_DEPTH once the worker took the first.
    for (double t0 = now_ms();; usleep(1000)) {
        bool busy;
        status_probe(&busy);
        if (busy) {
            break;
        }
        assert_true(now_ms() - t0 < TIMEOUT_MS);
    }
    for (uint32_t i = 0; i < QUEUE_DEPTH; i++) {
        send_ask(&f, 2 + i, 32, false);
    }
    // Wait until status shows the worker running and the queue full.
    for (double t0 = now_ms();; usleep(2000)) {
        struct client s;
        client_open(&s);
        assert_int_equal(vlm_rpc_noparams_encode(&s.out, 1, VLM_RPC_STATUS), 0);
        client_flush(&s);
        struct vlm_proto_msg msg;
        assert_int_equal(wait_response(&s, 1, &msg), 0);
        struct vlm_rpc_worker w[4];
        struct vlm_rpc_status st;
        assert_int_equal(vlm_rpc_status_decode(&msg, &st, w, 4, NULL, NULL), 0);
        client_close(&s);
        if (w[0].busy && st.queue_length == QUEUE_DEPTH) {
            break;
        }
        assert_true(now_ms() - t0 < TIMEOUT_MS);
    }
    enum { K = 200 };
    double t[K];
    for (int k = 0; k < K; k++) {
        double t0 = now_ms();
        send_ask(&g, (uint32_t)(100 + k), 32, false);
        struct vlm_proto_msg msg;
        assert_int_equal(wait_response(&g, (uint32_t)(100 + k), &msg), VLM_PROTO_EBUSY);
        t[k] = now_ms() - t0;
    }
    double p50 = percentile(t, K, 50), p99 = percentile(t, K, 99);
    print_message("figure: time to a `busy` answer: p50 %.3f ms, p99 %.3f ms (%d samples, queue_depth %d)\n", p50,
                  p99, K, QUEUE_DEPTH);
    assert_true(p99 < 100);
    client_close(&f); // its running and queued asks go with it
    client_close(&g);
    wait_idle(TIMEOUT_MS);
    keeps_serving("queue overflow", before);
    // Each fault is checked against the RSS just before it; the drift over the whole run is shown, not asserted
    // (the allocator keeps some of what the first large requests used).
    print_message("RSS after all faults: %ld KiB (after the first request: %ld KiB)\n", rss_kb(g_pid), g_rss_base);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_baseline),         cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_slowloris),        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_emfile),           cmocka_unit_test(test_slow_reader),
        cmocka_unit_test(test_never_reads),      cmocka_unit_test(test_never_reads_pipelined),
        cmocka_unit_test(test_many_connections), cmocka_unit_test(test_cancel_disconnect_p99),
        cmocka_unit_test(test_busy_p99),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
