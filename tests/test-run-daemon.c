// Integration test of vlmd: the built daemon on a temporary socket with the tiny golden Llama model, driven by a
// raw client written here with proto.h (no dependency on client/).
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
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

static char g_dir[64];
static char g_sock[100];
static char g_log[128];
static char g_conf[128];
static char g_conf_arg[160];
static pid_t g_pid = -1;
static char g_prompt[512];   // golden prompt text
static char g_expected[4096]; // golden greedy continuation, as the daemon streams it
static int32_t g_prompt_ids[64];
static int g_n_prompt;

static double now_ms(void) {
    return vlm_time_ms();
}

// ---- the daemon ---------------------------------------------------------------------------------------------

static pid_t spawn_daemon(char *sock, char *extra) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        char *argv[32];
        int n = 0;
        argv[n++] = VLM_BIN_DIR "/vlmd";
        argv[n++] = "--socket";
        argv[n++] = sock;
        argv[n++] = "--plugin-dir";
        argv[n++] = VLM_PLUGIN_BUILD_DIR;
        argv[n++] = "--model-dir";
        argv[n++] = GOLDEN_DIR;
        argv[n++] = "--chain";
        argv[n++] = "default=" MODEL;
        argv[n++] = "--threads";
        argv[n++] = "1";
        argv[n++] = "--ctx-size";
        argv[n++] = "16384";
        argv[n++] = "--queue-depth";
        argv[n++] = "8";
        argv[n++] = "--max-message";
        argv[n++] = "64K";
        argv[n++] = "--shutdown-timeout";
        argv[n++] = "1";
        argv[n++] = g_conf_arg;
        if (extra) {
            argv[n++] = extra;
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

// ---- a raw client -------------------------------------------------------------------------------------------

struct client {
    int fd;
    struct vlm_proto_reader r;
    struct vlm_proto_buf out;
};

static void client_open(struct client *c) {
    c->fd = connect_sock(g_sock);
    assert_true(c->fd >= 0);
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    assert_int_equal(vlm_proto_reader_init(&c->r, &lim), 0);
    vlm_proto_buf_init(&c->out);
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
    struct vlm_rpc_hello h = {.client = vlm_proto_str_c("test-run-daemon"), .protocol = protocol};
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
    char text[1 << 16];   // result text
    char streamed[1 << 16];
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

static void write_conf(const char *text) {
    FILE *f = fopen(g_conf, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
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
    snprintf(g_dir, sizeof g_dir, "/tmp/vlmd-test-XXXXXX");
    if (!mkdtemp(g_dir)) {
        return -1;
    }
    snprintf(g_sock, sizeof g_sock, "%s/vlmd.sock", g_dir);
    snprintf(g_log, sizeof g_log, "%s/vlmd.log", g_dir);
    snprintf(g_conf, sizeof g_conf, "%s/vlmd.conf", g_dir);
    snprintf(g_conf_arg, sizeof g_conf_arg, "--config=%s", g_conf);
    write_conf("[daemon]\nlog_level = info\n");
    load_golden();
    g_pid = spawn_daemon(g_sock, NULL);
    wait_listening(g_sock, g_pid);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    unlink(g_sock);
    unlink(g_conf);
    if (getenv("VLMD_TEST_KEEP_LOG")) { // the daemon's log, for a failure's post-mortem
        print_message("vlmd log kept in %s\n", g_log);
    } else {
        unlink(g_log);
        rmdir(g_dir);
    }
    return 0;
}

// ---- tests --------------------------------------------------------------------------------------------------

static void test_hello(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    assert_int_equal(client_hello(&c, 1, VLM_PROTO_VERSION), 0);
    // A newer client gets a clear error, and the connection stays usable.
    assert_int_equal(client_hello(&c, 2, VLM_PROTO_VERSION + 1), VLM_PROTO_EUNSUPPORTED_PROTOCOL);
    assert_int_equal(client_hello(&c, 3, VLM_PROTO_VERSION), 0);
    client_close(&c);
}

static void test_ask_golden(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    send_ask(&c, 7, 32, false);
    static struct answer a;
    read_answer(&c, 7, &a);
    assert_int_equal(a.code, 0);
    assert_int_equal(a.tokens_prompt, (uint32_t)g_n_prompt);
    assert_int_equal(a.tokens_generated, 32);
    assert_int_equal(a.n_text, 0); // not streamed
    assert_string_equal(a.text, g_expected);
    client_close(&c);
}

static void test_stream(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    send_ask(&c, 9, 512, true);
    static struct answer a;
    read_answer(&c, 9, &a);
    assert_int_equal(a.code, 0);
    assert_int_equal(a.tokens_generated, 512);
    print_message("stream: 512 tokens arrived in %d text notifications (+%d progress) before the response\n",
                  a.n_text, a.n_progress);
    assert_true(a.n_text >= 2);
    assert_true(a.n_progress >= 1);
    assert_string_equal(a.streamed, a.text);
    assert_int_equal(strncmp(a.text, g_expected, strlen(g_expected)), 0); // greedy: the 32-token answer is its start
    client_close(&c);
}

// Same seed, same params: the daemon's sampled answer is vlm-run's, token for token.
static void test_same_as_vlm_run(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "'" VLM_BIN_DIR "/vlm-run' --model '" MODEL "' --plugin-dir '" VLM_PLUGIN_BUILD_DIR "' -p '%s' -n 48 "
             "--temp 0.8 --seed 7 -t 1 -c 16384 2>/dev/null",
             g_prompt);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    static char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, f);
    assert_int_equal(pclose(f), 0);
    assert_true(n > 1 && out[n - 1] == '\n'); // vlm-run ends the answer with a newline
    out[n - 1] = 0;
    struct client c;
    client_open(&c);
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(g_prompt);
    a.max_tokens = 48;
    a.temperature = 0.8f;
    a.seed = 7;
    a.stream = true;
    a.fields = VLM_RPC_ASK_MAX_TOKENS | VLM_RPC_ASK_TEMPERATURE | VLM_RPC_ASK_SEED | VLM_RPC_ASK_STREAM;
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 3, &a), 0);
    client_flush(&c);
    static struct answer ans;
    read_answer(&c, 3, &ans);
    assert_int_equal(ans.code, 0);
    assert_int_equal(ans.tokens_generated, 48);
    assert_string_equal(ans.text, out);
    assert_string_equal(ans.streamed, out);
    client_close(&c);
}

static void test_concurrent(void **state) {
    (void)state;
    enum { N = 8 };
    struct client c[N];
    static struct answer a[N];
    double t0 = now_ms();
    for (int i = 0; i < N; i++) {
        client_open(&c[i]);
        send_ask(&c[i], (uint32_t)(100 + i), 32, i % 2 == 0);
    }
    for (int i = 0; i < N; i++) {
        read_answer(&c[i], (uint32_t)(100 + i), &a[i]);
        assert_int_equal(a[i].code, 0);
        assert_string_equal(a[i].text, g_expected);
        client_close(&c[i]);
    }
    print_message("concurrent: %d clients answered identically in %.1f ms\n", N, now_ms() - t0);
}

// Tokens the daemon generated after a cancel arrived, from its log line "... N generated after the cancel
// arrived ..." that contains `tag` (the last such line); -1 while there is none. *n_lines: how many there are.
static int log_after_cancel(const char *tag, int *n_lines) {
    char *log = vlm_test_read_file(g_log, NULL);
    int n = -1, lines = 0;
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) {
        const char *p = strstr(line, " generated after the cancel arrived");
        if (p && strstr(line, tag)) {
            lines++;
            while (p > line && p[-1] >= '0' && p[-1] <= '9') {
                p--;
            }
            n = atoi(p);
        }
    }
    free(log);
    if (n_lines) {
        *n_lines = lines;
    }
    return n;
}

static void test_cancel(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    // Cancels at different points of the generation (right after the first piece, then a few ms later): each
    // time the daemon says how many tokens it generated after the cancel arrived, and that is at most one.
    static const int delays_us[] = {0, 300, 1000, 2500, 5000};
    int worst = 0;
    double worst_ms = 0;
    for (uint32_t k = 0; k < sizeof delays_us / sizeof delays_us[0]; k++) {
        uint32_t ask_id = 11 + 10 * k, cancel_id = 12 + 10 * k;
        send_ask(&c, ask_id, LONG_TOKENS, true);
        wait_first_text(&c, ask_id);
        usleep((useconds_t)delays_us[k]);
        struct vlm_rpc_cancel cp = {.id = ask_id};
        assert_int_equal(vlm_rpc_cancel_encode(&c.out, cancel_id, &cp), 0);
        double t0 = now_ms();
        client_flush(&c);
        struct vlm_proto_msg msg;
        bool got_cancel_result = false;
        int ask_code = -1;
        char message[256] = "";
        while (ask_code < 0) {
            assert_int_equal(client_next(&c, &msg, TIMEOUT_MS), 1);
            if (msg.type != VLM_PROTO_RESPONSE) {
                continue;
            }
            struct vlm_rpc_error e;
            int er = vlm_proto_error_decode(&msg, &e, NULL);
            if (msg.msgid == cancel_id) {
                assert_int_equal(er, 0);
                got_cancel_result = true;
            } else if (msg.msgid == ask_id) {
                ask_code = er == 1 ? e.code : 0;
                if (er == 1) {
                    snprintf(message, sizeof message, "%.*s", (int)e.message.len, e.message.ptr);
                }
            }
        }
        double dt = now_ms() - t0;
        assert_true(got_cancel_result);
        assert_int_equal(ask_code, VLM_PROTO_ECANCELLED);
        // "cancelled: N tokens generated after the cancel arrived"
        int after = -1;
        assert_int_equal(sscanf(message, "cancelled: %d tokens generated after the cancel arrived", &after), 1);
        assert_true(after >= 0);
        assert_true(after <= 1);
        assert_int_equal(log_after_cancel("cancelled after", NULL), after); // the log says the same
        worst = after > worst ? after : worst;
        worst_ms = dt > worst_ms ? dt : worst_ms;
    }
    print_message("cancel: %zu cancels, at most %d token generated after the cancel arrived; the ask ended at most "
                  "%.2f ms after the cancel was sent\n",
                  sizeof delays_us / sizeof delays_us[0], worst, worst_ms);
    // Cancelling something unknown is a clear error.
    struct vlm_proto_msg msg;
    struct vlm_rpc_cancel cp = {.id = 999};
    assert_int_equal(vlm_rpc_cancel_encode(&c.out, 13, &cp), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 13, &msg), VLM_PROTO_ENOT_FOUND);
    client_close(&c);
    ask_ok();
}

static void test_disconnect(void **state) {
    (void)state;
    int worst = 0;
    for (int k = 0; k < 3; k++) {
        struct client c;
        client_open(&c);
        send_ask(&c, 21, LONG_TOKENS, true);
        wait_first_text(&c, 21);
        usleep((useconds_t)(k * 1000));
        double t0 = now_ms();
        client_close(&c);
        double idle = wait_idle(2000);
        print_message("disconnect: worker free %.2f ms after the client closed mid-stream (%.2f ms polling)\n",
                      now_ms() - t0, idle);
        // The daemon logs how many tokens it generated after it saw the client go (the worker is idle before the
        // loop writes that line: wait for it).
        int after = -1, n_lines = 0;
        double t1 = now_ms();
        while (n_lines <= k) {
            assert_true(now_ms() - t1 < 2000);
            usleep(1000);
            after = log_after_cancel("(client gone)", &n_lines);
        }
        assert_true(after >= 0);
        assert_true(after <= 1);
        worst = after > worst ? after : worst;
    }
    print_message("disconnect: 3 disconnects, at most %d token generated after the daemon saw the client go\n",
                  worst);
    ask_ok();
}

static void test_busy(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    send_ask(&c, 1, LONG_TOKENS, true); // runs
    wait_first_text(&c, 1);
    for (uint32_t id = 2; id <= 9; id++) { // fill the queue (depth 8)
        send_ask(&c, id, LONG_TOKENS, false);
    }
    double t0 = now_ms();
    send_ask(&c, 10, 32, false);
    struct vlm_proto_msg msg;
    assert_int_equal(wait_response(&c, 10, &msg), VLM_PROTO_EBUSY);
    print_message("busy: answered %.2f ms after the request was sent (queue depth 8 full)\n", now_ms() - t0);
    client_close(&c); // drops the queued asks and cancels the running one
    wait_idle(2000);
    ask_ok();
}

static void expect_closed(struct client *c, int *code) {
    struct vlm_proto_msg msg;
    *code = 0;
    for (;;) {
        int rc = client_next(c, &msg, TIMEOUT_MS);
        assert_int_not_equal(rc, 0); // no hang: an error, then the close
        if (rc < 0) {
            return;
        }
        struct vlm_rpc_error e;
        if (vlm_proto_error_decode(&msg, &e, NULL) == 1) {
            *code = e.code;
        }
    }
}

static void test_bad_input(void **state) {
    (void)state;
    struct client c;
    int code;
    // Garbage bytes: 0xc1 is never valid msgpack. The daemon says why, then closes.
    client_open(&c);
    static const uint8_t garbage[] = {0xc1, 0xde, 0xad, 0xbe, 0xef, 0xc1, 0xc1, 0xc1};
    send_raw(&c, garbage, sizeof garbage);
    expect_closed(&c, &code);
    assert_int_equal(code, VLM_PROTO_EBAD_REQUEST);
    client_close(&c);

    // A truncated frame, then the client leaves.
    client_open(&c);
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(g_prompt);
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 2, &a), 0);
    send_raw(&c, c.out.data, c.out.len / 2);
    client_close(&c);

    // Oversized: a prompt str header of 1 MiB (over max_message 64K) is refused from its header.
    client_open(&c);
    static const uint8_t big[] = {0x94, 0x00, 0x05, 0xa3, 'a', 's', 'k', 0x91, 0x81, 0xa6, 'p', 'r', 'o', 'm', 'p',
                                  't', 0xdb, 0x00, 0x10, 0x00, 0x00, 'x', 'x', 'x'};
    send_raw(&c, big, sizeof big);
    expect_closed(&c, &code);
    assert_int_equal(code, VLM_PROTO_ETOO_LARGE);
    client_close(&c);

    // Unknown method and wrong types: an error reply, and the connection goes on.
    client_open(&c);
    static const uint8_t unknown[] = {0x94, 0x00, 0x06, 0xaa, 'f', 'r', 'o', 'b', 'n', 'i', 'c', 'a', 't', 'e', 0x90};
    send_raw(&c, unknown, sizeof unknown);
    struct vlm_proto_msg msg;
    assert_int_equal(wait_response(&c, 6, &msg), VLM_PROTO_EUNKNOWN_METHOD);
    static const uint8_t wrong[] = {0x94, 0x00, 0x08, 0xa3, 'a', 's', 'k', 0x91, 0x81, 0xa6, 'p', 'r', 'o', 'm', 'p',
                                    't', 0x2a};
    send_raw(&c, wrong, sizeof wrong);
    assert_int_equal(wait_response(&c, 8, &msg), VLM_PROTO_EBAD_REQUEST);
    // A chain that does not exist.
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c("hi");
    a.chain = vlm_proto_str_c("nope");
    a.fields = VLM_RPC_ASK_CHAIN;
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 9, &a), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 9, &msg), VLM_PROTO_ENOT_FOUND);
    assert_int_equal(client_hello(&c, 10, VLM_PROTO_VERSION), 0);
    client_close(&c);

    ask_ok(); // the daemon kept serving
    int st;
    assert_int_equal(waitpid(g_pid, &st, WNOHANG), 0);
}

static void test_registry_and_swap(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    struct vlm_proto_msg msg;
    // plugins: three loaded from the build tree, one instance of llm-llama (the default chain's model).
    assert_int_equal(vlm_rpc_noparams_encode(&c.out, 1, VLM_RPC_PLUGINS), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 1, &msg), 0);
    struct vlm_rpc_plugin pl[8];
    uint32_t n;
    assert_int_equal(vlm_rpc_plugins_decode(&msg, pl, 8, &n, NULL), 0);
    assert_true(n >= 1);
    int llama = -1;
    for (uint32_t i = 0; i < n && i < 8; i++) {
        if (vlm_proto_str_eq(pl[i].name, "llm-llama")) {
            llama = (int)i;
        }
    }
    assert_true(llama >= 0);
    assert_int_equal(pl[llama].instances, 1);
    assert_int_equal(pl[llama].kind, VLM_RPC_COMPONENT_LLM);

    // The LLM is swapped for the F16 file while a stream runs: the stream goes on to its end on the model it
    // started with (one worker: the new model loads right after it, before any waiting ask).
    struct client s;
    client_open(&s);
    send_ask(&s, 5, 2000, true);
    wait_first_text(&s, 5);
    struct vlm_rpc_component_req r = {.chain = vlm_proto_str_c("default"),
                                      .component = VLM_RPC_COMPONENT_LLM,
                                      .model = vlm_proto_str_c("model-f16.gguf")};
    assert_int_equal(vlm_rpc_component_req_encode(&c.out, 2, VLM_RPC_SWAP, &r), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 2, &msg), 0);
    struct vlm_rpc_chain ch;
    assert_int_equal(vlm_rpc_chain_result_decode(&msg, &ch, NULL), 0);
    assert_true(vlm_proto_str_eq(ch.llm.model, "model-f16.gguf"));
    assert_true(ch.llm.loaded);
    static struct answer a;
    read_answer(&s, 5, &a);
    assert_int_equal(a.code, 0);
    assert_int_equal(a.tokens_generated, 2000);
    client_close(&s);

    // A bad name or a missing file leaves the chain as it was.
    r.model = vlm_proto_str_c("../llama-gqa/model-f32.gguf");
    assert_int_equal(vlm_rpc_component_req_encode(&c.out, 3, VLM_RPC_SWAP, &r), 0);
    r.model = vlm_proto_str_c("missing.gguf");
    assert_int_equal(vlm_rpc_component_req_encode(&c.out, 4, VLM_RPC_SWAP, &r), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 3, &msg), VLM_PROTO_EBAD_REQUEST);
    assert_int_equal(wait_response(&c, 4, &msg), VLM_PROTO_ENOT_FOUND);
    assert_int_equal(vlm_rpc_noparams_encode(&c.out, 5, VLM_RPC_CHAINS), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 5, &msg), 0);
    struct vlm_rpc_chain chains[4];
    assert_int_equal(vlm_rpc_chains_decode(&msg, chains, 4, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_true(vlm_proto_str_eq(chains[0].llm.model, "model-f16.gguf"));

    // The old model was freed when its last request ended: still one llm-llama instance.
    double t0 = now_ms();
    for (uint32_t id = 6;; id++) {
        assert_int_equal(vlm_rpc_noparams_encode(&c.out, id, VLM_RPC_PLUGINS), 0);
        client_flush(&c);
        assert_int_equal(wait_response(&c, id, &msg), 0);
        assert_int_equal(vlm_rpc_plugins_decode(&msg, pl, 8, &n, NULL), 0);
        if (pl[llama].instances == 1) {
            break;
        }
        assert_true(now_ms() - t0 < 2000);
        usleep(1000);
    }
    // Back to the F32 model for the golden comparison.
    r.model = vlm_proto_str_c("model-f32.gguf");
    assert_int_equal(vlm_rpc_component_req_encode(&c.out, 100, VLM_RPC_SWAP, &r), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 100, &msg), 0);
    client_close(&c);
    ask_ok();
}

static void test_reload(void **state) {
    (void)state;
    // SIGHUP: a chain added to the file is loaded in the background; the command-line chain stays.
    write_conf("[daemon]\nlog_level = info\n\n[chain extra]\nllm = model-q8_0.gguf\ntemplate = none\n");
    assert_int_equal(kill(g_pid, SIGHUP), 0);
    struct client c;
    client_open(&c);
    struct vlm_proto_msg msg;
    double t0 = now_ms();
    for (uint32_t id = 1;; id++) {
        assert_int_equal(vlm_rpc_noparams_encode(&c.out, id, VLM_RPC_CHAINS), 0);
        client_flush(&c);
        assert_int_equal(wait_response(&c, id, &msg), 0);
        struct vlm_rpc_chain chains[4];
        uint32_t n;
        assert_int_equal(vlm_rpc_chains_decode(&msg, chains, 4, &n, NULL), 0);
        if (n == 2 && vlm_proto_str_eq(chains[1].name, "extra") && chains[1].llm.loaded) {
            assert_true(vlm_proto_str_eq(chains[0].name, "default"));
            break;
        }
        assert_true(now_ms() - t0 < 3000);
        usleep(2000);
    }
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(g_prompt);
    a.chain = vlm_proto_str_c("extra");
    a.max_tokens = 8;
    a.fields = VLM_RPC_ASK_CHAIN | VLM_RPC_ASK_MAX_TOKENS;
    assert_int_equal(vlm_rpc_ask_encode(&c.out, 50, &a), 0);
    client_flush(&c);
    static struct answer ans;
    read_answer(&c, 50, &ans);
    assert_int_equal(ans.code, 0);
    assert_int_equal(ans.tokens_generated, 8);
    // A broken file is refused and the running configuration stays.
    write_conf("[daemon]\nqueue_depth = many\n");
    assert_int_equal(kill(g_pid, SIGHUP), 0);
    usleep(50000);
    assert_int_equal(vlm_rpc_noparams_encode(&c.out, 60, VLM_RPC_CHAINS), 0);
    client_flush(&c);
    assert_int_equal(wait_response(&c, 60, &msg), 0);
    uint32_t n;
    assert_int_equal(vlm_rpc_chains_decode(&msg, NULL, 0, &n, NULL), 0);
    assert_int_equal(n, 2);
    write_conf("[daemon]\nlog_level = info\n");
    client_close(&c);
    ask_ok();
}

static void test_second_daemon_refused(void **state) {
    (void)state;
    pid_t pid = spawn_daemon(g_sock, NULL);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0); // a live daemon owns the socket
    ask_ok();
}

// A bad value for a flag is refused before anything starts, the message naming the key and what it takes.
static void test_bad_flag_refused(void **state) {
    (void)state;
    pid_t pid = spawn_daemon(g_sock, "--vision-precision=fast");
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    char *log = vlm_test_read_file(g_log, NULL);
    assert_non_null(log);
    assert_non_null(strstr(log, "vision_precision: expected auto, exact or bf16"));
    free(log);
    ask_ok(); // the running daemon on the same socket was not disturbed
}

static void test_sigterm(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    send_ask(&c, 1, LONG_TOKENS, true);
    wait_first_text(&c, 1);
    double t0 = now_ms();
    assert_int_equal(kill(g_pid, SIGTERM), 0);
    static struct answer a;
    read_answer(&c, 1, &a); // the stream ends with a final message
    assert_int_equal(a.code, VLM_PROTO_ESHUTTING_DOWN);
    int st;
    assert_int_equal(waitpid(g_pid, &st, 0), g_pid);
    print_message("sigterm: exited %.0f ms after SIGTERM (shutdown timeout 1 s), status %d\n", now_ms() - t0,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    g_pid = -1;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    client_close(&c);
    struct stat sb;
    assert_int_not_equal(stat(g_sock, &sb), 0); // the socket file is gone

    // A stale socket file (its daemon died without removing it) is replaced.
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_sock);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    g_pid = spawn_daemon(g_sock, NULL);
    wait_listening(g_sock, g_pid);
    assert_int_equal(stat(g_sock, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0660);
    ask_ok();
    assert_int_equal(kill(g_pid, SIGTERM), 0);
    assert_int_equal(waitpid(g_pid, &st, 0), g_pid);
    g_pid = -1;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_ask_golden),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_same_as_vlm_run),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_disconnect),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_registry_and_swap),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_second_daemon_refused),
        cmocka_unit_test(test_bad_flag_refused),
        cmocka_unit_test(test_sigterm),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
