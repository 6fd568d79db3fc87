// Integration tests of the clients: libvlmclient, vlmctl and the Python client against a real vlmd started on a
// temporary socket with the tiny golden model; and, for what needs exact timing (cancel, timeouts, streaming
// piece by piece, a dropped connection), against a scripted server in this process written with libvlm's
// protocol code.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test-util.h"
#include "vlm/client.h"
#include "vlm/proto.h"

#ifndef VLM_SOURCE_DIR
#    define VLM_SOURCE_DIR VLM_TEST_DATA_DIR "/../.."
#endif

#define MODEL_DIR VLM_TEST_DATA_DIR "/golden/llama-gqa"
#define MODEL MODEL_DIR "/model-f32.gguf"
#define VISION_DIR VLM_TEST_DATA_DIR "/vlm/models/llava15-tiny"
#define IMAGES VLM_TEST_DATA_DIR "/vlm/images"
#define VLMD VLM_BIN_DIR "/vlmd"
#define VLMCTL VLM_BIN_DIR "/vlmctl"
#define VLMRUN VLM_BIN_DIR "/vlm-run"
#define PYDIR VLM_SOURCE_DIR "/client/python"

extern char **environ;

static char g_dir[64];
static char g_sock[128];
static pid_t g_daemon = -1;

#define N_PROMPTS 4
static const char *const g_prompts[N_PROMPTS] = {
    "In the beginning there was nothing but a small light",
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog",
    "Tell me about the sea",
};
#define N_TOKENS "24"
static char *g_expected[N_PROMPTS]; // vlm-run's greedy answers, trailing newline removed

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// ---- processes ----------------------------------------------------------------------------------------------

struct proc {
    pid_t pid;
    int out_fd, err_fd;
};

struct proc_result {
    int status;  // exit code, or 128 + signal
    char *out;   // stdout (NUL-terminated, malloc'd)
    size_t out_len;
    char *err;   // stderr
};

static int proc_start(struct proc *p, char *const argv[]) {
    int o[2], e[2];
    if (pipe2(o, O_CLOEXEC) != 0 || pipe2(e, O_CLOEXEC) != 0) {
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, o[1], 1);
    posix_spawn_file_actions_adddup2(&fa, e[1], 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    int rc = posix_spawn(&p->pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(o[1]);
    close(e[1]);
    if (rc != 0) {
        close(o[0]);
        close(e[0]);
        return -1;
    }
    p->out_fd = o[0];
    p->err_fd = e[0];
    return 0;
}

static void append(char **buf, size_t *len, const char *p, size_t n) {
    char *nb = realloc(*buf, *len + n + 1);
    if (!nb) {
        return;
    }
    memcpy(nb + *len, p, n);
    *len += n;
    nb[*len] = 0;
    *buf = nb;
}

// Reads stdout/stderr until both close, then reaps. `on_out` (may be NULL) is called once when the first stdout
// byte arrives. Kills the process after timeout_ms.
static void proc_finish(struct proc *p, struct proc_result *r, int timeout_ms, void (*on_out)(struct proc *p)) {
    memset(r, 0, sizeof *r);
    size_t err_len = 0;
    append(&r->out, &r->out_len, "", 0);
    append(&r->err, &err_len, "", 0);
    int64_t deadline = now_ms() + timeout_ms;
    bool out_open = true, err_open = true, killed = false;
    while (out_open || err_open) {
        struct pollfd fds[2] = {{.fd = out_open ? p->out_fd : -1, .events = POLLIN},
                                {.fd = err_open ? p->err_fd : -1, .events = POLLIN}};
        int64_t left = deadline - now_ms();
        if (left <= 0 && !killed) {
            kill(p->pid, SIGKILL);
            killed = true;
        }
        if (poll(fds, 2, left > 0 ? (int)left : 100) < 0 && errno != EINTR) {
            break;
        }
        char buf[4096];
        for (int i = 0; i < 2; i++) {
            if (!fds[i].revents) {
                continue;
            }
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            if (n <= 0) {
                if (i == 0) {
                    out_open = false;
                } else {
                    err_open = false;
                }
            } else if (i == 0) {
                bool first = r->out_len == 0;
                append(&r->out, &r->out_len, buf, (size_t)n);
                if (first && on_out) {
                    on_out(p);
                }
            } else {
                append(&r->err, &err_len, buf, (size_t)n);
            }
        }
    }
    close(p->out_fd);
    close(p->err_fd);
    int st = 0;
    while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
    }
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int run(char *const argv[], struct proc_result *r) {
    struct proc p;
    if (proc_start(&p, argv) != 0) {
        memset(r, 0, sizeof *r);
        r->status = -1;
        return -1;
    }
    proc_finish(&p, r, 60000, NULL);
    return r->status;
}

static void proc_result_free(struct proc_result *r) {
    free(r->out);
    free(r->err);
}

// One trailing newline: vlm-run always ends with one; vlmctl adds one when the text has none.
static void chomp(char *s) {
    size_t n = strlen(s);
    if (n && s[n - 1] == '\n') {
        s[n - 1] = 0;
    }
}

// ---- the daemon ---------------------------------------------------------------------------------------------

static void dump_daemon_log(void) {
    char path[160];
    snprintf(path, sizeof path, "%s/vlmd.log", g_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        return;
    }
    char line[512];
    fprintf(stderr, "---- vlmd log ----\n");
    while (fgets(line, sizeof line, f)) {
        fputs(line, stderr);
    }
    fprintf(stderr, "------------------\n");
    fclose(f);
}

static int make_dir(void **state) {
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_dir, sizeof g_dir, "/tmp/vlm-client-test-XXXXXX");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    snprintf(g_sock, sizeof g_sock, "%s/vlmd.sock", g_dir);
    return 0;
}

static int remove_dir(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (g_dir[0] && system(cmd) != 0) {
        fprintf(stderr, "cannot remove %s\n", g_dir);
    }
    g_dir[0] = 0;
    return 0;
}

static int start_daemon(void **state) {
    if (make_dir(state) != 0) {
        return -1;
    }
    if (access(VLMD, X_OK) != 0) {
        fprintf(stderr, "%s is not built: the daemon tests cannot run\n", VLMD);
        return -1;
    }
    char chain[512], vision[512], log[160];
    snprintf(chain, sizeof chain, "default=%s", MODEL);
    snprintf(vision, sizeof vision, "vision=%s/llm-f32.gguf,%s/mmproj-f32.gguf", VISION_DIR, VISION_DIR);
    snprintf(log, sizeof log, "%s/vlmd.log", g_dir);
    char *argv[] = {VLMD,         "--socket",  g_sock, "--chain", chain, "--plugin-dir", VLM_PLUGIN_BUILD_DIR,
                    "--model-dir", MODEL_DIR, "--chain", vision, "--default-chain", "default", "--threads", "1",
                    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawn(&g_daemon, VLMD, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "cannot start %s: %s\n", VLMD, strerror(rc));
        return -1;
    }
    // Ready when it answers hello.
    int64_t deadline = now_ms() + 20000;
    while (now_ms() < deadline) {
        int st;
        if (waitpid(g_daemon, &st, WNOHANG) == g_daemon) {
            fprintf(stderr, "vlmd exited during start-up (status %d)\n", st);
            dump_daemon_log();
            g_daemon = -1;
            return -1;
        }
        struct vlm_client *c;
        if (vlm_client_connect(g_sock, &c, NULL) == 0) {
            vlm_client_close(c);
            return 0;
        }
        usleep(20000);
    }
    fprintf(stderr, "vlmd did not answer within 20 s\n");
    dump_daemon_log();
    return -1;
}

static int stop_daemon(void **state) {
    (void)state;
    int status = 0;
    if (g_daemon > 0) {
        kill(g_daemon, SIGTERM);
        int st = 0;
        int64_t deadline = now_ms() + 15000;
        pid_t w;
        while ((w = waitpid(g_daemon, &st, WNOHANG)) == 0 && now_ms() < deadline) {
            usleep(20000);
        }
        if (w == 0) {
            fprintf(stderr, "vlmd did not exit within 15 s of SIGTERM\n");
            kill(g_daemon, SIGKILL);
            waitpid(g_daemon, &st, 0);
            status = -1;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "vlmd exited with status %d after SIGTERM (expected 0)\n", st);
            dump_daemon_log();
            status = -1;
        }
        g_daemon = -1;
    }
    remove_dir(state);
    for (int i = 0; i < N_PROMPTS; i++) {
        free(g_expected[i]);
        g_expected[i] = NULL;
    }
    return status;
}

// ---- without a daemon: usage and "not running" ------------------------------------------------------------

static void test_usage_exit_codes(void **state) {
    (void)state;
    struct proc_result r;
    char *no_cmd[] = {VLMCTL, NULL};
    assert_int_equal(run(no_cmd, &r), 2);
    assert_non_null(strstr(r.err, "no command"));
    proc_result_free(&r);

    char *help[] = {VLMCTL, "--help", NULL};
    assert_int_equal(run(help, &r), 0);
    assert_non_null(strstr(r.out, "exit status"));
    assert_non_null(strstr(r.out, "4  cancelled"));
    proc_result_free(&r);

    char *bad_cmd[] = {VLMCTL, "frobnicate", NULL};
    assert_int_equal(run(bad_cmd, &r), 2);
    proc_result_free(&r);

    char *bad_value[] = {VLMCTL, "ask", "--temperature", "hot", "hi", NULL};
    assert_int_equal(run(bad_value, &r), 2);
    assert_non_null(strstr(r.err, "--temperature"));
    proc_result_free(&r);

    char *no_image[] = {VLMCTL, "--socket", "/nonexistent/vlmd.sock", "ask", "--image", "/nonexistent.png", "hi",
                        NULL};
    assert_int_equal(run(no_image, &r), 2); // the file is read before connecting
    assert_non_null(strstr(r.err, "/nonexistent.png"));
    proc_result_free(&r);

    char *swap_usage[] = {VLMCTL, "swap", "default", NULL};
    assert_int_equal(run(swap_usage, &r), 2);
    proc_result_free(&r);
}

static void check_not_running_message(const char *sock_path) {
    struct proc_result r;
    char *argv[] = {VLMCTL, "--socket", (char *)(uintptr_t)sock_path, "status", NULL};
    assert_int_equal(run(argv, &r), 3);
    assert_non_null(strstr(r.err, "systemctl start vlmd.socket"));
    char want[256];
    snprintf(want, sizeof want, "vlmd --socket %s", sock_path);
    assert_non_null(strstr(r.err, want));
    proc_result_free(&r);

    char *json[] = {VLMCTL, "--json", "--socket", (char *)(uintptr_t)sock_path, "ask", "hi", NULL};
    assert_int_equal(run(json, &r), 3);
    assert_non_null(strstr(r.out, "\"error\""));
    assert_non_null(strstr(r.out, "\"exit\":3"));
    proc_result_free(&r);
}

static void test_not_running(void **state) {
    (void)state;
    char missing[160], stale[160];
    snprintf(missing, sizeof missing, "%s/missing.sock", g_dir);
    snprintf(stale, sizeof stale, "%s/stale.sock", g_dir);

    struct vlm_client *c = NULL;
    struct vlm_diag diag;
    assert_int_equal(vlm_client_connect(missing, &c, &diag), VLM_ENOENT);
    assert_null(c);
    check_not_running_message(missing);

    // A socket file nobody listens on (a daemon that died): connection refused, same advice.
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(stale) < sizeof sa.sun_path);
    memcpy(sa.sun_path, stale, strlen(stale) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    assert_int_equal(vlm_client_connect(stale, &c, &diag), VLM_CLIENT_ECONNREFUSED);
    assert_non_null(strstr(diag.msg, stale));
    check_not_running_message(stale);

    // VLMD_SOCKET is where vlmctl and the library look without --socket.
    setenv("VLMD_SOCKET", missing, 1);
    assert_string_equal(vlm_client_default_socket(), missing);
    struct proc_result r;
    char *argv[] = {VLMCTL, "status", NULL};
    assert_int_equal(run(argv, &r), 3);
    assert_non_null(strstr(r.err, missing));
    proc_result_free(&r);
    unsetenv("VLMD_SOCKET");
    assert_string_equal(vlm_client_default_socket(), VLM_CLIENT_DEFAULT_SOCKET);
}

// ---- against vlmd -------------------------------------------------------------------------------------------

static char *vlm_run(const char *prompt, const char *temp, const char *seed) {
    char *argv[] = {VLMRUN, "-m", MODEL, "--temp", (char *)(uintptr_t)temp, "--top-k", "40", "--top-p", "0.95",
                    "--min-p", "0.05", "-s", (char *)(uintptr_t)seed, "-n", N_TOKENS, "-p",
                    (char *)(uintptr_t)prompt, NULL};
    struct proc_result r;
    int st = run(argv, &r);
    if (st != 0) {
        fprintf(stderr, "vlm-run failed (%d): %s\n", st, r.err);
    }
    assert_int_equal(st, 0);
    free(r.err);
    chomp(r.out);
    return r.out;
}

static char *vlmctl_ask(const char *prompt, const char *temp, const char *seed) {
    char *argv[] = {VLMCTL, "--socket", g_sock, "ask", "--temperature", (char *)(uintptr_t)temp, "--top-k", "40",
                    "--top-p", "0.95", "--min-p", "0.05", "--seed", (char *)(uintptr_t)seed, "-n", N_TOKENS, "--",
                    (char *)(uintptr_t)prompt, NULL};
    struct proc_result r;
    int st = run(argv, &r);
    if (st != 0) {
        fprintf(stderr, "vlmctl failed (%d): %s\n", st, r.err);
    }
    assert_int_equal(st, 0);
    free(r.err);
    chomp(r.out);
    return r.out;
}

static void test_vlmctl_matches_vlm_run(void **state) {
    (void)state;
    for (int i = 0; i < N_PROMPTS; i++) {
        g_expected[i] = vlm_run(g_prompts[i], "0", "7");
        char *got = vlmctl_ask(g_prompts[i], "0", "7");
        assert_true(strlen(g_expected[i]) > 0);
        assert_string_equal(got, g_expected[i]);
        free(got);
    }
    printf("# greedy: vlmctl == vlm-run for %d prompts (%zu bytes for the first)\n", N_PROMPTS,
           strlen(g_expected[0]));
    // Sampling with the same seed gives the same tokens too.
    const char *seeds[] = {"1", "42", "12345"};
    for (int i = 0; i < 3; i++) {
        char *want = vlm_run(g_prompts[1], "0.8", seeds[i]);
        char *got = vlmctl_ask(g_prompts[1], "0.8", seeds[i]);
        assert_string_equal(got, want);
        free(want);
        free(got);
    }
}

// Images: vlmctl reads the files and sends their bytes; the answer must be vlm-run's for the same files.
static void test_vlmctl_image_matches_vlm_run(void **state) {
    (void)state;
    static const char *const sets[][2] = {
        {IMAGES "/synth-50x50.png", NULL},
        {IMAGES "/test-1.jpeg", NULL},
        {IMAGES "/synth-300x200.png", IMAGES "/synth-50x50.png"},
    };
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        const char *a = sets[i][0], *b = sets[i][1];
        char *run_argv[] = {VLMRUN, "-m", VISION_DIR "/llm-f32.gguf", "--mmproj", VISION_DIR "/mmproj-f32.gguf",
                            "--temp", "0", "-n", "12", "-p", "What is in the picture?", "--image",
                            (char *)(uintptr_t)a, b ? "--image" : NULL, (char *)(uintptr_t)b, NULL};
        struct proc_result want;
        assert_int_equal(run(run_argv, &want), 0);
        char *ctl_argv[] = {VLMCTL, "--socket", g_sock, "ask", "--chain", "vision", "--temperature", "0", "-n", "12",
                            "--image", (char *)(uintptr_t)a, "--", "What is in the picture?",
                            b ? "--image" : NULL, (char *)(uintptr_t)b, NULL};
        if (b) { // options after "--" would be prompt words: put the second image before it
            ctl_argv[12] = "--image";
            ctl_argv[13] = (char *)(uintptr_t)b;
            ctl_argv[14] = "--";
            ctl_argv[15] = "What is in the picture?";
        }
        struct proc_result got;
        int st = run(ctl_argv, &got);
        if (st == 1 && strstr(got.err, "UNSUPPORTED")) {
            printf("# NOTE: image asks NOT RUN: this vlmd answers UNSUPPORTED for images (%s)\n", got.err);
            proc_result_free(&want);
            proc_result_free(&got);
            skip();
        }
        if (st != 0) {
            fprintf(stderr, "vlmctl: %s\n", got.err);
        }
        assert_int_equal(st, 0);
        chomp(want.out);
        chomp(got.out);
        assert_string_equal(got.out, want.out);
        proc_result_free(&want);
        proc_result_free(&got);
    }
    printf("# images: vlmctl == vlm-run for 3 image sets\n");
}

struct pieces {
    int n;
    size_t len;
    char text[65536];
    int64_t first_ms, last_ms;
};

static int collect_piece(const char *text, size_t len, void *user) {
    struct pieces *p = user;
    int64_t t = now_ms();
    if (p->n == 0) {
        p->first_ms = t;
    }
    p->last_ms = t;
    p->n++;
    if (p->len + len < sizeof p->text) {
        memcpy(p->text + p->len, text, len);
        p->len += len;
        p->text[p->len] = 0;
    }
    return 0;
}

static void greedy_params(struct vlm_client_ask_params *p, const char *prompt) {
    vlm_client_ask_params_init(p);
    p->prompt = prompt;
    p->temperature = 0;
    p->seed = 7;
    p->max_tokens = atoi(N_TOKENS);
    p->fields |= VLM_RPC_ASK_TEMPERATURE | VLM_RPC_ASK_SEED | VLM_RPC_ASK_MAX_TOKENS;
}

static void test_library_stream(void **state) {
    (void)state;
    assert_non_null(g_expected[0]);
    struct vlm_client *c;
    struct vlm_diag diag;
    assert_int_equal(vlm_client_connect(g_sock, &c, &diag), 0);
    const struct vlm_client_server_info *si = vlm_client_server(c);
    assert_string_equal(si->server, "vlmd");
    assert_int_equal(si->protocol, VLM_PROTO_VERSION);
    assert_true(si->limits.max_message > 0);

    struct vlm_client_ask_params p;
    greedy_params(&p, g_prompts[0]);
    struct pieces *pc = calloc(1, sizeof *pc);
    struct vlm_client_ask_result r;
    int rc = vlm_client_ask(c, &p, collect_piece, pc, &r, &diag);
    if (rc != 0) {
        fail_msg("ask: %s", diag.msg);
    }
    assert_string_equal(r.text, g_expected[0]);
    assert_int_equal(r.tokens_generated, atoi(N_TOKENS));
    assert_string_equal(r.stop_reason_name, "length");
    assert_true(r.tokens_prompt > 0);
    // Streamed: pieces which put together are the final text. (24 tokens take about 1 ms: the daemon may well
    // send them as one piece; the long answer below checks that pieces come as they are generated.)
    assert_true(pc->n >= 1);
    assert_int_equal(r.n_pieces, (uint32_t)pc->n);
    assert_int_equal(pc->len, r.text_len);
    assert_memory_equal(pc->text, r.text, r.text_len);
    assert_non_null(strstr(r.json, "\"tokens_generated\":" N_TOKENS));
    printf("# stream: %d pieces for %u tokens, %.2f ms decode\n", pc->n, r.tokens_generated, r.timings.decode_ms);
    vlm_client_ask_result_free(&r);

    // A long answer (until the context is full, ~250 tokens in ~15 ms) arrives piece by piece as it is
    // generated. The daemon batches what was generated between two wake-ups of its loop, so how many pieces
    // come depends on scheduling: up to 5 tries to see 3 or more.
    p.max_tokens = -1;
    int best = 0;
    for (int attempt = 0; attempt < 5 && best < 3; attempt++) {
        memset(pc, 0, sizeof *pc);
        rc = vlm_client_ask(c, &p, collect_piece, pc, &r, &diag);
        assert_int_equal(rc, 0);
        assert_true(r.tokens_generated > 100);
        assert_int_equal(pc->len, r.text_len);
        assert_memory_equal(pc->text, r.text, r.text_len);
        assert_int_equal(r.n_pieces, (uint32_t)pc->n);
        printf("# long stream: %d pieces for %u tokens (stop %s); first piece %lld ms before the last\n", pc->n,
               r.tokens_generated, r.stop_reason_name, (long long)(pc->last_ms - pc->first_ms));
        best = pc->n > best ? pc->n : best;
        vlm_client_ask_result_free(&r);
    }
    assert_true(best >= 3);
    p.max_tokens = atoi(N_TOKENS);

    // Without a callback: no pieces, same text.
    rc = vlm_client_ask(c, &p, NULL, NULL, &r, &diag);
    assert_int_equal(rc, 0);
    assert_int_equal(r.n_pieces, 0);
    assert_string_equal(r.text, g_expected[0]);
    vlm_client_ask_result_free(&r);

    // A server error keeps the connection usable.
    p.chain = "no-such-chain";
    rc = vlm_client_ask(c, &p, NULL, NULL, &r, &diag);
    assert_int_equal(rc, VLM_ENOTFOUND);
    assert_int_equal(vlm_client_last_error(c), VLM_PROTO_ENOT_FOUND);
    assert_non_null(strstr(diag.msg, "NOT_FOUND"));
    assert_null(r.text);

    // status and chains: JSON and typed access to the same reply.
    struct vlm_client_reply rep;
    assert_int_equal(vlm_client_status(c, &rep, &diag), 0);
    assert_non_null(strstr(rep.json, "\"workers\""));
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    struct vlm_proto_msg m;
    assert_int_equal(vlm_proto_parse(rep.msg, rep.msg_len, &lim, &m, &diag), 0);
    struct vlm_rpc_status st;
    struct vlm_rpc_worker workers[8];
    uint32_t total;
    assert_int_equal(vlm_rpc_status_decode(&m, &st, workers, 8, &total, &diag), 0);
    assert_true(st.clients >= 1);
    assert_true(st.requests_total >= 2);
    vlm_client_reply_free(&rep);

    assert_int_equal(vlm_client_chains(c, &rep, &diag), 0);
    assert_int_equal(vlm_proto_parse(rep.msg, rep.msg_len, &lim, &m, &diag), 0);
    struct vlm_rpc_chain chains[4];
    uint32_t n_chains;
    assert_int_equal(vlm_rpc_chains_decode(&m, chains, 4, &n_chains, &diag), 0);
    assert_int_equal(n_chains, 2);
    assert_true(vlm_proto_str_eq(chains[0].name, "default") || vlm_proto_str_eq(chains[1].name, "default"));
    assert_true(vlm_proto_str_eq(chains[0].name, "vision") || vlm_proto_str_eq(chains[1].name, "vision"));
    vlm_client_reply_free(&rep);

    assert_int_equal(vlm_client_plugins(c, &rep, &diag), 0);
    assert_non_null(strstr(rep.json, "\"plugins\""));
    vlm_client_reply_free(&rep);

    free(pc);
    vlm_client_close(c);
}

static void test_vlmctl_commands(void **state) {
    (void)state;
    struct proc_result r;
    char *status[] = {VLMCTL, "--socket", g_sock, "status", NULL};
    assert_int_equal(run(status, &r), 0);
    assert_non_null(strstr(r.out, "clients:"));
    proc_result_free(&r);

    char *chains[] = {VLMCTL, "--socket", g_sock, "chains", NULL};
    assert_int_equal(run(chains, &r), 0);
    assert_non_null(strstr(r.out, "default"));
    proc_result_free(&r);

    char *plugins[] = {VLMCTL, "--socket", g_sock, "plugins", NULL};
    assert_int_equal(run(plugins, &r), 0);
    assert_non_null(strstr(r.out, "llm"));
    proc_result_free(&r);

    char *json_status[] = {VLMCTL, "--socket", g_sock, "--json", "status", NULL};
    assert_int_equal(run(json_status, &r), 0);
    assert_true(r.out[0] == '{');
    assert_non_null(strstr(r.out, "\"queue\""));
    proc_result_free(&r);

    char *json_ask[] = {VLMCTL, "--socket", g_sock, "--json", "ask", "--temperature", "0", "-n", "5", "Hello", NULL};
    assert_int_equal(run(json_ask, &r), 0);
    assert_true(strncmp(r.out, "{\"text\":", 8) == 0);
    assert_non_null(strstr(r.out, "\"tokens_generated\":5"));
    assert_non_null(strstr(r.out, "\"stop_reason\":\"length\""));
    assert_non_null(strstr(r.out, "\"timings\":{"));
    proc_result_free(&r);

    // Server errors: exit 1, the daemon's error name on stderr (and in the JSON).
    char *no_chain[] = {VLMCTL, "--socket", g_sock, "ask", "--chain", "nosuch", "hi", NULL};
    assert_int_equal(run(no_chain, &r), 1);
    assert_non_null(strstr(r.err, "NOT_FOUND"));
    proc_result_free(&r);
    char *no_chain_json[] = {VLMCTL, "--socket", g_sock, "--json", "ask", "--chain", "nosuch", "hi", NULL};
    assert_int_equal(run(no_chain_json, &r), 1);
    assert_non_null(strstr(r.out, "\"name\":\"NOT_FOUND\""));
    proc_result_free(&r);

    // An image that is not an image: the daemon refuses it, vlmctl says so (exit 1).
    char bogus[160];
    snprintf(bogus, sizeof bogus, "%s/bogus.png", g_dir);
    FILE *f = fopen(bogus, "wb");
    assert_non_null(f);
    fputs("this is not a PNG file", f);
    fclose(f);
    char *bad_image[] = {VLMCTL, "--socket", g_sock, "ask", "--image", bogus, "describe", NULL};
    assert_int_equal(run(bad_image, &r), 1);
    proc_result_free(&r);

    // unload, load, swap (models named relative to the daemon's --model-dir), and back to the f32 model the
    // other tests expect.
    char *unload[] = {VLMCTL, "--socket", g_sock, "unload", "default", NULL};
    assert_int_equal(run(unload, &r), 0);
    assert_non_null(strstr(r.out, "not loaded"));
    proc_result_free(&r);
    char *load[] = {VLMCTL, "--socket", g_sock, "load", "default", "llm", NULL};
    assert_int_equal(run(load, &r), 0);
    assert_non_null(strstr(r.out, " loaded"));
    assert_null(strstr(r.out, "not loaded"));
    proc_result_free(&r);
    char *swap_q8[] = {VLMCTL, "--socket", g_sock, "swap", "default", "llm", "model-q8_0.gguf", NULL};
    assert_int_equal(run(swap_q8, &r), 0);
    assert_non_null(strstr(r.out, "model-q8_0.gguf"));
    proc_result_free(&r);
    char *json_chains[] = {VLMCTL, "--socket", g_sock, "--json", "chains", NULL};
    assert_int_equal(run(json_chains, &r), 0);
    assert_non_null(strstr(r.out, "\"model\":\"model-q8_0.gguf\""));
    proc_result_free(&r);
    char *swap_missing[] = {VLMCTL, "--socket", g_sock, "swap", "default", "llm", "no-such-model.gguf", NULL};
    assert_int_equal(run(swap_missing, &r), 1); // a failed load leaves the chain as it was
    proc_result_free(&r);
    assert_int_equal(run(json_chains, &r), 0);
    assert_non_null(strstr(r.out, "\"model\":\"model-q8_0.gguf\""));
    proc_result_free(&r);
    char *swap_back[] = {VLMCTL, "--socket", g_sock, "swap", "default", "llm", "model-f32.gguf", NULL};
    assert_int_equal(run(swap_back, &r), 0);
    proc_result_free(&r);

    // The prompt from stdin ("-"): the same answer as from the command line.
    assert_non_null(g_expected[1]);
    char *stdin_ask[] = {"/bin/sh", "-c",
                         "printf '%s' \"$1\" | \"$0\" --socket \"$2\" ask --temperature 0 --seed 7 -n " N_TOKENS " -",
                         VLMCTL, (char *)(uintptr_t)g_prompts[1], g_sock, NULL};
    assert_int_equal(run(stdin_ask, &r), 0);
    chomp(r.out);
    assert_string_equal(r.out, g_expected[1]);
    proc_result_free(&r);
}

// ---- 32 concurrent clients ----------------------------------------------------------------------------------

#define N_CLIENTS 32
#define N_VLMCTL 6
#define N_PYTHON 2

enum client_kind { KIND_C, KIND_VLMCTL, KIND_PYTHON };

struct worker {
    pthread_t th;
    int index;
    enum client_kind kind;
    pthread_barrier_t *start;
    bool ok;
    char why[512];
};

static const char *const g_py_script =
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from vlmd_client import Client\n"
    "with Client(sys.argv[2]) as c:\n"
    "    pieces = []\n"
    "    r = c.ask(sys.argv[3], on_text=pieces.append, temperature=0, seed=7, max_tokens=int(sys.argv[4]))\n"
    "    assert ''.join(pieces) == r['text'], 'streamed pieces differ from the result'\n"
    "    sys.stdout.buffer.write(r['text'].encode('utf-8', 'surrogatepass'))\n";

static void *worker_main(void *arg) {
    struct worker *w = arg;
    int pi = w->index % N_PROMPTS;
    const char *prompt = g_prompts[pi];
    const char *want = g_expected[pi];
    pthread_barrier_wait(w->start);
    if (w->kind == KIND_C) {
        struct vlm_client *c;
        struct vlm_diag diag;
        if (vlm_client_connect(g_sock, &c, &diag) != 0) {
            snprintf(w->why, sizeof w->why, "connect: %s", diag.msg);
            return NULL;
        }
        struct vlm_client_ask_params p;
        greedy_params(&p, prompt);
        struct pieces *pc = calloc(1, sizeof *pc);
        struct vlm_client_ask_result r;
        int rc = vlm_client_ask(c, &p, collect_piece, pc, &r, &diag);
        if (rc != 0) {
            snprintf(w->why, sizeof w->why, "ask: %s", diag.msg);
        } else if (strcmp(r.text, want) != 0 || pc->len != r.text_len) {
            snprintf(w->why, sizeof w->why, "text differs: '%.100s' vs '%.100s'", r.text, want);
        } else {
            w->ok = true;
        }
        vlm_client_ask_result_free(&r);
        free(pc);
        vlm_client_close(c);
        return NULL;
    }
    struct proc_result r;
    if (w->kind == KIND_VLMCTL) {
        char *argv[] = {VLMCTL, "--socket", g_sock, "ask", "--temperature", "0", "--seed", "7", "-n", N_TOKENS, "--",
                        (char *)(uintptr_t)prompt, NULL};
        run(argv, &r);
    } else {
        char *argv[] = {"/usr/bin/env", "python3", "-c", (char *)(uintptr_t)g_py_script, PYDIR, g_sock,
                        (char *)(uintptr_t)prompt, N_TOKENS, NULL};
        run(argv, &r);
    }
    if (w->kind == KIND_VLMCTL) {
        chomp(r.out);
    }
    if (r.status != 0) {
        snprintf(w->why, sizeof w->why, "exit %d: %.400s", r.status, r.err ? r.err : "");
    } else if (strcmp(r.out, want) != 0) {
        snprintf(w->why, sizeof w->why, "text differs: '%.100s' vs '%.100s'", r.out, want);
    } else {
        w->ok = true;
    }
    proc_result_free(&r);
    return NULL;
}

static bool python_client_available(void) {
    char *argv[] = {"/usr/bin/env", "python3", "-c", "import msgpack", NULL};
    struct proc_result r;
    int st = run(argv, &r);
    proc_result_free(&r);
    return st == 0;
}

static void test_concurrent_clients(void **state) {
    (void)state;
    for (int i = 0; i < N_PROMPTS; i++) {
        assert_non_null(g_expected[i]);
    }
    bool py = python_client_available();
    if (!py) {
        printf("# NOTE: the Python client part was NOT RUN (python3 with the msgpack module is not available); "
               "its %d clients are C clients instead\n",
               N_PYTHON);
    }
    static struct worker w[N_CLIENTS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N_CLIENTS);
    int n_kind[3] = {0};
    for (int i = 0; i < N_CLIENTS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].index = i;
        w[i].start = &start;
        w[i].kind = i < N_VLMCTL ? KIND_VLMCTL : (py && i < N_VLMCTL + N_PYTHON) ? KIND_PYTHON : KIND_C;
        n_kind[w[i].kind]++;
        assert_int_equal(pthread_create(&w[i].th, NULL, worker_main, &w[i]), 0);
    }
    int64_t t0 = now_ms();
    int ok = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].ok) {
            ok++;
        } else {
            fprintf(stderr, "client %d (%s): %s\n", i,
                    w[i].kind == KIND_C ? "libvlmclient" : w[i].kind == KIND_VLMCTL ? "vlmctl" : "python", w[i].why);
        }
    }
    pthread_barrier_destroy(&start);
    printf("# concurrent: %d/%d correct (%d libvlmclient, %d vlmctl, %d python) in %lld ms\n", ok, N_CLIENTS,
           n_kind[KIND_C], n_kind[KIND_VLMCTL], n_kind[KIND_PYTHON], (long long)(now_ms() - t0));
    assert_int_equal(ok, N_CLIENTS);
}

// ---- a scripted server: cancel, timeouts, streaming, dropped connections ------------------------------------
//
// Prompts choose the script: "slow" streams 40 pieces 25 ms apart and honours cancel; "busy" answers BUSY;
// "drop" sends two pieces and closes; anything else streams 3 pieces at once.

struct mock {
    int listen_fd;
    char path[160];
    pthread_t th;
    atomic_int cancels;     // cancel requests that named a running ask
    atomic_int stop;
    uint32_t hello_protocol; // what hello answers (VLM_PROTO_VERSION normally)
};

static struct mock g_mock;

static int mock_send(int fd, struct vlm_proto_buf *b) {
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = send(fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            vlm_proto_buf_reset(b);
            return -1;
        }
        off += (size_t)n;
    }
    vlm_proto_buf_reset(b);
    return 0;
}

// Reads what is there (waiting up to `ms`) and handles cancel requests for `running`. Returns 1 when the
// running ask was cancelled, -1 when the client left, 0 otherwise.
static int mock_poll(int fd, struct vlm_proto_reader *rd, uint32_t running, int ms, struct vlm_proto_buf *b) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) > 0) {
        uint8_t buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            return -1;
        }
        size_t taken;
        vlm_proto_reader_feed(rd, buf, (size_t)n, &taken);
    }
    struct vlm_proto_msg m;
    int cancelled = 0;
    while (vlm_proto_reader_next(rd, &m, NULL) == 1) {
        struct vlm_rpc_cancel cc;
        if (m.method == VLM_RPC_CANCEL && vlm_rpc_cancel_decode(&m, &cc, NULL) == 0) {
            if (cc.id == running) {
                atomic_fetch_add(&g_mock.cancels, 1);
                cancelled = 1;
            }
            vlm_rpc_cancel_result_encode(b, m.msgid);
        }
    }
    if (b->len && mock_send(fd, b) < 0) {
        return -1;
    }
    return cancelled;
}

static void mock_ask(int fd, struct vlm_proto_reader *rd, const struct vlm_proto_msg *m, struct vlm_proto_buf *b) {
    struct vlm_rpc_ask a;
    if (vlm_rpc_ask_decode(m, NULL, &a, NULL) != 0) {
        vlm_proto_error_encode(b, m->msgid, VLM_PROTO_EBAD_REQUEST, NULL);
        mock_send(fd, b);
        return;
    }
    uint32_t id = m->msgid;
    char prompt[64];
    vlm_proto_str_copy(a.prompt, prompt, sizeof prompt);
    if (!strcmp(prompt, "busy")) {
        vlm_proto_error_encode(b, id, VLM_PROTO_EBUSY, "the request queue is full (8)");
        mock_send(fd, b);
        return;
    }
    int n = !strcmp(prompt, "slow") ? 40 : !strcmp(prompt, "drop") ? 2 : 3;
    char text[512] = "";
    for (int i = 0; i < n; i++) {
        char piece[16];
        snprintf(piece, sizeof piece, "p%d ", i);
        strcat(text, piece);
        if (a.stream) {
            struct vlm_rpc_text t = {.id = id, .text = vlm_proto_str_c(piece)};
            vlm_rpc_text_encode(b, &t);
            if (mock_send(fd, b) < 0) {
                return;
            }
        }
        // Reads messages that arrived meanwhile. Only a cancel can be among them: the client makes one call at
        // a time.
        int rc = mock_poll(fd, rd, id, !strcmp(prompt, "slow") ? 25 : 0, b);
        if (rc < 0) {
            return;
        }
        if (rc == 1) {
            vlm_proto_error_encode(b, id, VLM_PROTO_ECANCELLED, "cancelled by the client");
            mock_send(fd, b);
            return;
        }
    }
    if (!strcmp(prompt, "drop")) {
        shutdown(fd, SHUT_RDWR);
        return;
    }
    struct vlm_rpc_ask_result r = {.text = vlm_proto_str_c(text),
                                   .tokens_prompt = 3,
                                   .tokens_generated = (uint32_t)n,
                                   .stop_reason = VLM_RPC_STOP_LENGTH};
    vlm_rpc_ask_result_encode(b, id, &r);
    mock_send(fd, b);
}

static void mock_serve(int fd) {
    struct vlm_proto_reader rd;
    vlm_proto_reader_init(&rd, NULL);
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    for (;;) {
        struct vlm_proto_msg m;
        int rc = vlm_proto_reader_next(&rd, &m, NULL);
        if (rc < 0 && vlm_proto_reader_broken(&rd)) {
            break;
        }
        if (rc == 0) {
            uint8_t buf[65536];
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0) {
                break;
            }
            size_t taken;
            vlm_proto_reader_feed(&rd, buf, (size_t)n, &taken);
            continue;
        }
        if (rc != 1 || m.type != VLM_PROTO_REQUEST) {
            continue;
        }
        if (m.method == VLM_RPC_HELLO) {
            struct vlm_rpc_hello_result h = {.server = vlm_proto_str_c("vlmd"),
                                             .version = vlm_proto_str_c("0.0-mock"),
                                             .protocol = g_mock.hello_protocol,
                                             .limits = vlm_proto_default_limits()};
            vlm_rpc_hello_result_encode(&b, m.msgid, &h);
        } else if (m.method == VLM_RPC_ASK) {
            // Copy the message: mock_ask reads more from the same reader.
            uint8_t *copy = malloc(m.len);
            memcpy(copy, m.data, m.len);
            struct vlm_proto_msg mc;
            if (vlm_proto_parse(copy, m.len, NULL, &mc, NULL) == 0) {
                mock_ask(fd, &rd, &mc, &b);
            }
            free(copy);
        } else if (m.method == VLM_RPC_CANCEL) {
            vlm_rpc_cancel_result_encode(&b, m.msgid); // for an ask that already finished
        } else {
            vlm_proto_error_encode_unknown_method(&b, &m);
        }
        if (b.len && mock_send(fd, &b) < 0) {
            break;
        }
    }
    vlm_proto_buf_free(&b);
    vlm_proto_reader_close(&rd);
}

static void *mock_main(void *arg) {
    (void)arg;
    while (!atomic_load(&g_mock.stop)) {
        struct pollfd p = {.fd = g_mock.listen_fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            continue;
        }
        int fd = accept(g_mock.listen_fd, NULL, NULL);
        if (fd >= 0) {
            mock_serve(fd); // one connection at a time is all these tests use
            close(fd);
        }
    }
    return NULL;
}

static void mock_start(void) {
    memset(&g_mock, 0, sizeof g_mock);
    g_mock.hello_protocol = VLM_PROTO_VERSION;
    snprintf(g_mock.path, sizeof g_mock.path, "%s/mock.sock", g_dir);
    unlink(g_mock.path);
    g_mock.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(g_mock.path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, g_mock.path, strlen(g_mock.path) + 1);
    assert_int_equal(bind(g_mock.listen_fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(g_mock.listen_fd, 16), 0);
    assert_int_equal(pthread_create(&g_mock.th, NULL, mock_main, NULL), 0);
}

static void mock_stop(void) {
    atomic_store(&g_mock.stop, 1);
    pthread_join(g_mock.th, NULL);
    close(g_mock.listen_fd);
    unlink(g_mock.path);
}

struct cancel_at {
    int at;  // piece index at which the callback asks to stop
    int n;
    struct vlm_client *c;
    bool via_api; // call vlm_client_cancel instead of returning non-zero
};

static int cancel_cb(const char *text, size_t len, void *user) {
    (void)text;
    (void)len;
    struct cancel_at *ca = user;
    if (++ca->n == ca->at) {
        if (ca->via_api) {
            vlm_client_cancel(ca->c);
            return 0;
        }
        return 1;
    }
    return 0;
}

struct canceller {
    struct vlm_client *c;
    int delay_ms;
};

static void *cancel_later(void *arg) {
    struct canceller *k = arg;
    usleep((useconds_t)k->delay_ms * 1000);
    vlm_client_cancel(k->c);
    return NULL;
}

static void test_library_behaviour(void **state) {
    (void)state;
    mock_start();
    struct vlm_client *c;
    struct vlm_diag diag;
    assert_int_equal(vlm_client_connect(g_mock.path, &c, &diag), 0);
    struct vlm_client_ask_params p;
    vlm_client_ask_params_init(&p);
    struct vlm_client_ask_result r;

    // Pieces are handed over as they arrive: the first one long before the result (40 pieces, 25 ms apart).
    p.prompt = "slow";
    struct pieces *pc = calloc(1, sizeof *pc);
    int64_t t0 = now_ms();
    assert_int_equal(vlm_client_ask(c, &p, collect_piece, pc, &r, &diag), 0);
    int64_t t_end = now_ms();
    assert_int_equal(pc->n, 40);
    assert_int_equal(r.n_pieces, 40);
    assert_string_equal(pc->text, r.text);
    assert_true(pc->first_ms - t0 < 200);
    assert_true(t_end - pc->first_ms > 600);
    printf("# mock stream: first piece after %lld ms, result after %lld ms\n", (long long)(pc->first_ms - t0),
           (long long)(t_end - t0));
    vlm_client_ask_result_free(&r);
    free(pc);

    // The callback cancels: the daemon gets `cancel` for this ask, the call returns ECANCELED, and the
    // connection goes on working.
    struct cancel_at ca = {.at = 3, .c = c};
    assert_int_equal(vlm_client_ask(c, &p, cancel_cb, &ca, &r, &diag), VLM_ECANCELED);
    assert_int_equal(atomic_load(&g_mock.cancels), 1);
    assert_true(ca.n == 3); // no callbacks after the cancel
    assert_null(r.text);
    p.prompt = "fast";
    assert_int_equal(vlm_client_ask(c, &p, NULL, NULL, &r, &diag), 0);
    assert_string_equal(r.text, "p0 p1 p2 ");
    vlm_client_ask_result_free(&r);

    // vlm_client_cancel from inside the callback and from another thread.
    p.prompt = "slow";
    ca = (struct cancel_at){.at = 2, .c = c, .via_api = true};
    assert_int_equal(vlm_client_ask(c, &p, cancel_cb, &ca, &r, &diag), VLM_ECANCELED);
    assert_int_equal(atomic_load(&g_mock.cancels), 2);
    struct canceller k = {.c = c, .delay_ms = 150};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cancel_later, &k), 0);
    t0 = now_ms();
    assert_int_equal(vlm_client_ask(c, &p, NULL, NULL, &r, &diag), VLM_ECANCELED);
    pthread_join(th, NULL);
    assert_true(now_ms() - t0 < 600);
    assert_int_equal(atomic_load(&g_mock.cancels), 3);

    // Timeout: cancelled on the server, reported as a timeout (not a server error).
    vlm_client_set_timeout(c, 200);
    t0 = now_ms();
    assert_int_equal(vlm_client_ask(c, &p, collect_piece, &(struct pieces){0}, &r, &diag), VLM_CLIENT_ETIMEDOUT);
    assert_true(now_ms() - t0 < 800);
    assert_int_equal(vlm_client_last_error(c), 0);
    assert_int_equal(atomic_load(&g_mock.cancels), 4);
    vlm_client_set_timeout(c, 0);

    // A server error.
    p.prompt = "busy";
    assert_int_equal(vlm_client_ask(c, &p, NULL, NULL, &r, &diag), VLM_EBUSY);
    assert_int_equal(vlm_client_last_error(c), VLM_PROTO_EBUSY);
    assert_string_equal(diag.msg, "BUSY: the request queue is full (8)");

    // An unknown method answer maps to EUNSUPPORTED (status is unknown to the mock).
    struct vlm_client_reply rep;
    assert_int_equal(vlm_client_status(c, &rep, &diag), VLM_EUNSUPPORTED);
    assert_non_null(strstr(diag.msg, "UNKNOWN_METHOD"));

    // Local checks: nothing is sent.
    p.prompt = "fast";
    p.temperature = 1000;
    p.fields = VLM_RPC_ASK_TEMPERATURE;
    assert_int_equal(vlm_client_ask(c, &p, NULL, NULL, &r, &diag), VLM_EINVAL);
    p.fields = 0;
    p.prompt = "\xff\xfe";
    assert_int_equal(vlm_client_ask(c, &p, NULL, NULL, &r, &diag), VLM_EINVAL);

    // The daemon goes away mid-stream: ECONNRESET, and the connection stays dead.
    p.prompt = "drop";
    assert_int_equal(vlm_client_ask(c, &p, collect_piece, &(struct pieces){0}, &r, &diag), VLM_CLIENT_ECONNRESET);
    p.prompt = "fast";
    assert_int_equal(vlm_client_ask(c, &p, NULL, NULL, &r, &diag), VLM_CLIENT_ECONNRESET);
    vlm_client_close(c);

    // A daemon that speaks a protocol this client does not know.
    g_mock.hello_protocol = VLM_PROTO_VERSION + 1;
    assert_int_equal(vlm_client_connect(g_mock.path, &c, &diag), VLM_EUNSUPPORTED);
    assert_non_null(strstr(diag.msg, "protocol"));
    g_mock.hello_protocol = VLM_PROTO_VERSION;
    mock_stop();
}

static void interrupt_on_output(struct proc *p) {
    kill(p->pid, SIGINT);
}

static void test_vlmctl_behaviour(void **state) {
    (void)state;
    mock_start();
    struct proc_result r;

    // Ctrl-C while the answer streams: vlmctl sends cancel, the daemon confirms, exit 4.
    char *slow[] = {VLMCTL, "--socket", g_mock.path, "ask", "slow", NULL};
    struct proc p;
    assert_int_equal(proc_start(&p, slow), 0);
    int64_t t0 = now_ms();
    proc_finish(&p, &r, 10000, interrupt_on_output);
    assert_int_equal(r.status, 4);
    assert_true(now_ms() - t0 < 800); // well before the 1 s the whole answer takes
    assert_non_null(strstr(r.out, "p0 "));
    assert_null(strstr(r.out, "p39"));
    assert_non_null(strstr(r.err, "cancelled"));
    assert_int_equal(atomic_load(&g_mock.cancels), 1);
    proc_result_free(&r);

    // --timeout: exit 5, the ask cancelled on the daemon.
    char *timeout[] = {VLMCTL, "--socket", g_mock.path, "--timeout", "0.2", "ask", "slow", NULL};
    assert_int_equal(run(timeout, &r), 5);
    assert_int_equal(atomic_load(&g_mock.cancels), 2);
    proc_result_free(&r);

    // The daemon's error: exit 1 with its message.
    char *busy[] = {VLMCTL, "--socket", g_mock.path, "ask", "busy", NULL};
    assert_int_equal(run(busy, &r), 1);
    assert_non_null(strstr(r.err, "BUSY: the request queue is full"));
    proc_result_free(&r);

    // The connection lost mid-answer: exit 3.
    char *drop[] = {VLMCTL, "--socket", g_mock.path, "ask", "drop", NULL};
    assert_int_equal(run(drop, &r), 3);
    assert_non_null(strstr(r.out, "p1 "));
    proc_result_free(&r);

    // A normal streamed answer ends with a newline.
    char *fast[] = {VLMCTL, "--socket", g_mock.path, "ask", "fast", NULL};
    assert_int_equal(run(fast, &r), 0);
    assert_string_equal(r.out, "p0 p1 p2 \n");
    proc_result_free(&r);
    mock_stop();
}

int main(void) {
    // Without a daemon: usage, "not running", and the client side of cancel/timeouts/streaming against a
    // scripted server.
    const struct CMUnitTest client_tests[] = {
        cmocka_unit_test(test_usage_exit_codes),
        cmocka_unit_test(test_not_running),
        cmocka_unit_test(test_library_behaviour),
        cmocka_unit_test(test_vlmctl_behaviour),
    };
    // Against a real vlmd with the golden model.
    const struct CMUnitTest daemon_tests[] = {
        cmocka_unit_test(test_vlmctl_matches_vlm_run),
        cmocka_unit_test(test_vlmctl_image_matches_vlm_run),
        cmocka_unit_test(test_library_stream),
        cmocka_unit_test(test_vlmctl_commands),
        cmocka_unit_test(test_concurrent_clients),
    };
    int failed = cmocka_run_group_tests_name("client", client_tests, make_dir, remove_dir);
    failed += cmocka_run_group_tests_name("daemon", daemon_tests, start_daemon, stop_daemon);
    return failed;
}
