// vlmd as a system service: socket activation (through systemd-socket-activate, with the listening socket held
// by this test as systemd holds it), the sd_notify messages, SIGKILL + restart without a refused connection,
// SIGTERM while four requests stream, clients refused by uid (SO_PEERCRED), and model names that try to leave
// the model directory (checked with inotify: nothing outside is opened).
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test-util.h"
#include "vlm/generate.h"
#include "vlm/proto.h"

#define MODEL VLM_TEST_DATA_DIR "/golden/llama-gqa/model-f32.gguf"
#define VLMD VLM_BIN_DIR "/vlmd"
#define TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000 // what the test allows after SIGTERM (vlmd.service: TimeoutStopSec=30s)
#define NOBODY 65534

static char g_dir[64];
static char g_sock[100], g_log[128], g_conf[128], g_notify_path[100], g_models[128];
static int g_listen = -1;   // the listening socket, held here as systemd holds it
static int g_notify = -1;   // NOTIFY_SOCKET (datagrams from the daemon)
static pid_t g_pid = -1;
static const char *g_activate; // systemd-socket-activate, or NULL (then this test passes the fd itself)
static char g_notes[8192];  // notify messages received so far (g_notes_mu)
static pthread_mutex_t g_notes_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t g_notes_thread;

// ---- files and the daemon ---------------------------------------------------------------------------------

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *data = vlm_test_read_file(from, &n);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
    free(data);
}

static void write_conf(const char *allow_users) {
    char text[1024];
    snprintf(text, sizeof text,
             "[daemon]\nmodel_dir = %s\nallow_users = %s\nthreads = 1\nctx_size = 16384\nshutdown_timeout = 1\n"
             "\n[chain default]\nllm = model.gguf\n",
             g_models, allow_users);
    write_file(g_conf, text);
}

static bool log_contains(const char *needle) {
    size_t n;
    FILE *f = fopen(g_log, "rb");
    if (!f) {
        return false;
    }
    fclose(f);
    char *text = vlm_test_read_file(g_log, &n);
    bool found = strstr(text, needle) != NULL;
    free(text);
    return found;
}

// Starts vlmd the way systemd does: the listening socket as fd 3, LISTEN_PID/LISTEN_FDS, NOTIFY_SOCKET and a
// 200 ms watchdog. Through systemd-socket-activate when it is installed (it passes the fd on and waits for the
// first connection before it execs the daemon, as a .socket unit does).
static pid_t spawn_daemon(void) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid) {
        return pid;
    }
    int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
    if (g_listen != 3) {
        dup2(g_listen, 3); // dup2 clears FD_CLOEXEC on the copy
    } else {
        fcntl(3, F_SETFD, 0);
    }
    char pid_s[32], notify_env[160];
    snprintf(pid_s, sizeof pid_s, "%ld", (long)getpid());
    snprintf(notify_env, sizeof notify_env, "NOTIFY_SOCKET=%s", g_notify_path);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", pid_s, 1);
    setenv("LISTEN_FDNAMES", "api", 1);
    setenv("NOTIFY_SOCKET", g_notify_path, 1);
    setenv("WATCHDOG_USEC", "200000", 1);
    char *args[] = {VLMD, "--config", g_conf, "--plugin-dir", VLM_PLUGIN_BUILD_DIR, NULL};
    char *argv[32];
    int n = 0;
    if (g_activate) {
        argv[n++] = (char *)(uintptr_t)g_activate;
        argv[n++] = "--fdname=api";
        argv[n++] = "-E";
        argv[n++] = notify_env;
        argv[n++] = "-E";
        argv[n++] = "WATCHDOG_USEC=200000";
    }
    for (int i = 0; args[i]; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    execv(argv[0], argv);
    _exit(127);
}

// Waits for the process to exit within `ms`; returns its status, or -1 on timeout.
static int wait_exit(pid_t pid, int ms) {
    for (int t = 0; t < ms; t += 5) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            return st;
        }
        usleep(5000);
    }
    return -1;
}

// ---- NOTIFY_SOCKET ----------------------------------------------------------------------------------------

// Read all the time, as systemd does: libsystemd's sd_notify() blocks once the receiver's queue is full, and a
// test that stopped reading would stall the daemon's loop (a 200 ms watchdog fills it within a second or two).
static void *notify_reader(void *arg) {
    (void)arg;
    char buf[1024];
    for (;;) {
        ssize_t n = recv(g_notify, buf, sizeof buf - 1, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return NULL; // shut down at teardown (sd_notify never sends an empty datagram)
        }
        buf[n] = 0;
        pthread_mutex_lock(&g_notes_mu);
        size_t have = strlen(g_notes);
        if (have + (size_t)n + 2 < sizeof g_notes) {
            memcpy(g_notes + have, buf, (size_t)n);
            memcpy(g_notes + have + (size_t)n, "\n", 2);
        } else { // keep the latest messages
            snprintf(g_notes, sizeof g_notes, "%s\n", buf);
        }
        pthread_mutex_unlock(&g_notes_mu);
    }
}

static void notes_clear(void) {
    pthread_mutex_lock(&g_notes_mu);
    g_notes[0] = 0;
    pthread_mutex_unlock(&g_notes_mu);
}

static bool notify_wait(const char *needle, int ms) {
    for (int t = 0; t <= ms; t += 10) {
        pthread_mutex_lock(&g_notes_mu);
        bool found = strstr(g_notes, needle) != NULL;
        pthread_mutex_unlock(&g_notes_mu);
        if (found) {
            return true;
        }
        usleep(10000);
    }
    return false;
}

// ---- a raw client (no cmocka asserts: also used in a child that changed its uid) ---------------------------

struct client {
    int fd;
    struct vlm_proto_reader r;
    struct vlm_proto_buf out;
};

// 0, or -errno of connect().
static int client_open(struct client *c) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_sock);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        if (c->fd >= 0) {
            close(c->fd);
        }
        c->fd = -1;
        return -e;
    }
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    vlm_proto_reader_init(&c->r, &lim);
    vlm_proto_buf_init(&c->out);
    return 0;
}

static void client_close(struct client *c) {
    if (c->fd >= 0) {
        close(c->fd);
        vlm_proto_reader_close(&c->r);
        vlm_proto_buf_free(&c->out);
    }
    c->fd = -1;
}

static bool client_flush(struct client *c) {
    size_t off = 0;
    while (off < c->out.len) {
        ssize_t w = send(c->fd, c->out.data + off, c->out.len - off, MSG_NOSIGNAL);
        if (w <= 0 && errno != EINTR) {
            return false;
        }
        off += w > 0 ? (size_t)w : 0;
    }
    vlm_proto_buf_reset(&c->out);
    return true;
}

// 1: a message, 0: timeout, -1: closed by the daemon, -2: protocol error.
static int client_next(struct client *c, struct vlm_proto_msg *msg, int timeout_ms) {
    double end = vlm_time_ms() + timeout_ms;
    for (;;) {
        int rc = vlm_proto_reader_next(&c->r, msg, NULL);
        if (rc != 0) {
            return rc == 1 ? 1 : -2;
        }
        int left = (int)(end - vlm_time_ms());
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
        size_t taken;
        if (vlm_proto_reader_feed(&c->r, buf, (size_t)n, &taken) != 0 || taken != (size_t)n) {
            return -2;
        }
    }
}

static bool send_hello(struct client *c, uint32_t id) {
    struct vlm_rpc_hello h = {.client = vlm_proto_str_c("test-run-service"), .protocol = VLM_PROTO_VERSION};
    return vlm_rpc_hello_encode(&c->out, id, &h) == 0 && client_flush(c);
}

// The answer to `id`: 0 success, a wire error code (> 0), or -1 closed / -2 protocol error / -3 timeout.
// A vlm.error notification (the connection is refused) is returned as its code, negated minus 100.
static int wait_answer(struct client *c, uint32_t id, int timeout_ms) {
    for (;;) {
        struct vlm_proto_msg msg;
        int rc = client_next(c, &msg, timeout_ms);
        if (rc != 1) {
            return rc == 0 ? -3 : rc;
        }
        struct vlm_rpc_error e;
        if (msg.type == VLM_PROTO_NOTIFY && msg.method == VLM_RPC_N_ERROR) {
            return vlm_proto_error_decode(&msg, &e, NULL) == 1 ? -100 - e.code : -2;
        }
        if (msg.type == VLM_PROTO_RESPONSE && msg.msgid == id) {
            int er = vlm_proto_error_decode(&msg, &e, NULL);
            return er < 0 ? -2 : er == 1 ? e.code : 0;
        }
    }
}

static int request_component(struct client *c, uint32_t id, enum vlm_rpc_method method, const char *chain,
                             const char *model, size_t model_len) {
    struct vlm_rpc_component_req r = {
        .chain = vlm_proto_str_c(chain),
        .component = VLM_RPC_COMPONENT_LLM,
        .plugin = {NULL, 0},
        .model = {model, model_len},
    };
    // The encoder refuses a NUL byte: encode the name with '#' in its place, then put the NUL in the bytes.
    char tmp[8192];
    const char *nul = memchr(model, 0, model_len);
    if (nul && model_len <= sizeof tmp) {
        memcpy(tmp, model, model_len);
        tmp[nul - model] = '#';
        r.model.ptr = tmp;
    }
    size_t start = c->out.len;
    if (vlm_rpc_component_req_encode(&c->out, id, method, &r) != 0) {
        return -2;
    }
    if (nul) {
        uint8_t *at = memmem(c->out.data + start, c->out.len - start, tmp, model_len);
        if (!at) {
            return -2;
        }
        at[nul - model] = 0;
    }
    if (!client_flush(c)) {
        return -2;
    }
    return wait_answer(c, id, TIMEOUT_MS);
}

// A whole hello exchange on a new connection: 0 answered, else as wait_answer (or -errno of connect - 1000).
static int hello_once(void) {
    struct client c;
    int rc = client_open(&c);
    if (rc) {
        return rc - 1000;
    }
    // A refused client may find the connection closed before its hello is sent; the error still waits to be read.
    send_hello(&c, 1);
    rc = wait_answer(&c, 1, TIMEOUT_MS);
    client_close(&c);
    return rc;
}

// ---- tests ------------------------------------------------------------------------------------------------

// A client that connects before vlmd runs is answered once it has started; READY=1 follows the model load.
static void test_connect_before_start(void **state) {
    (void)state;
    assert_int_equal(g_pid, -1);
    struct client c;
    assert_int_equal(client_open(&c), 0); // nobody has accepted yet: the connection waits in the backlog
    assert_true(send_hello(&c, 7));
    notes_clear();
    double t0 = vlm_time_ms();
    g_pid = spawn_daemon();
    assert_int_equal(wait_answer(&c, 7, TIMEOUT_MS), 0);
    printf("# hello sent before vlmd started: answered %.0f ms after the start\n", vlm_time_ms() - t0);
    client_close(&c);
    assert_true(notify_wait("READY=1", TIMEOUT_MS));
    assert_true(notify_wait("STATUS=", 0));
    notes_clear();
    assert_true(notify_wait("WATCHDOG=1", 1000)); // WATCHDOG_USEC=200000: a ping every 100 ms
    assert_true(log_contains("(socket activation)"));
    assert_true(log_contains("ready: 1 chains, 1 models loaded, 0 failed"));
    struct stat st;
    assert_int_equal(stat(g_sock, &st), 0);
}

// SIGKILL, then a new vlmd on the same socket: connections made in between wait and are answered.
static void test_sigkill_restart(void **state) {
    (void)state;
    assert_true(g_pid > 0);
    assert_int_equal(hello_once(), 0);
    int refused = 0;
    assert_int_equal(kill(g_pid, SIGKILL), 0);
    assert_true(wait_exit(g_pid, TIMEOUT_MS) != -1);
    g_pid = -1;
    enum { N = 8 };
    struct client c[N];
    for (int i = 0; i < N; i++) {
        int rc = client_open(&c[i]);
        refused += rc != 0;
        if (rc == 0) {
            assert_true(send_hello(&c[i], (uint32_t)(10 + i)));
        }
    }
    assert_int_equal(refused, 0);
    notes_clear();
    g_pid = spawn_daemon();
    int answered = 0;
    for (int i = 0; i < N; i++) {
        answered += wait_answer(&c[i], (uint32_t)(10 + i), TIMEOUT_MS) == 0;
        client_close(&c[i]);
    }
    assert_int_equal(answered, N);
    assert_true(notify_wait("READY=1", TIMEOUT_MS));
    printf("# SIGKILL + restart: %d connections made while no daemon ran, %d refused, %d answered\n", N, refused,
           answered);
}

// Model names from clients that try to leave the model directory are refused, and nothing outside it (nor a
// device or FIFO inside it) is opened: inotify sees every open of the watched files.
static void test_model_names_confined(void **state) {
    (void)state;
    assert_true(g_pid > 0);
    // Names longer than 255 bytes never reach the resolver (the protocol refuses them, and so does our encoder).
    char outside[160], path[300], longname[VLM_PROTO_NAME_MAX + 1], deep[VLM_PROTO_NAME_MAX + 1];
    snprintf(outside, sizeof outside, "%s/outside.gguf", g_dir);
    copy_file(MODEL, outside);
    snprintf(path, sizeof path, "%s/model2.gguf", g_models);
    copy_file(MODEL, path);
    snprintf(path, sizeof path, "%s/link.gguf", g_models);
    assert_int_equal(symlink("../outside.gguf", path), 0);
    snprintf(path, sizeof path, "%s/abs-link.gguf", g_models);
    assert_int_equal(symlink(outside, path), 0);
    snprintf(path, sizeof path, "%s/inside-link.gguf", g_models);
    assert_int_equal(symlink("model2.gguf", path), 0);
    snprintf(path, sizeof path, "%s/sub", g_models);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/fifo.gguf", g_models);
    assert_int_equal(mkfifo(path, 0644), 0);
    bool root = geteuid() == 0;
    if (root) {
        snprintf(path, sizeof path, "%s/dev.gguf", g_models);
        assert_int_equal(mknod(path, S_IFCHR | 0644, makedev(1, 3)), 0); // a /dev/null node
    } else {
        printf("# not root: the device-node name is not checked (mknod needs root)\n");
    }
    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(in >= 0);
    const char *watched[] = {outside, "fifo.gguf", "dev.gguf", "model2.gguf"};
    int wd[4];
    for (int i = 0; i < 4; i++) {
        if (i > 0) {
            snprintf(path, sizeof path, "%s/%s", g_models, watched[i]);
        }
        wd[i] = i == 2 && !root ? -1 : inotify_add_watch(in, i ? path : outside, IN_OPEN | IN_ACCESS);
        assert_true(wd[i] >= 0 || (i == 2 && !root));
    }

    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    for (size_t i = 0; i + 2 < sizeof deep; i += 2) {
        memcpy(deep + i, "a/", 2);
    }
    deep[sizeof deep - 2] = 'x';
    deep[sizeof deep - 1] = 0;
    static const char nul_name[] = "model2.gguf\0../outside.gguf"; // sent raw: the encoder refuses a NUL
    struct {
        const char *name;
        size_t len;
    } bad[] = {
        {"../outside.gguf", 0},   {outside, 0},           {"link.gguf", 0},          {"abs-link.gguf", 0},
        {"inside-link.gguf", 0},  {"sub/../../outside.gguf", 0}, {"sub/../model2.gguf", 0}, {"./model2.gguf", 0},
        {"sub//model2.gguf", 0},  {"sub", 0},             {"fifo.gguf", 0},          {"dev.gguf", 0},
        {nul_name, sizeof nul_name - 1}, {longname, 0},   {deep, 0},
        {"/dev/null", 0},         {"../../../../../../etc/passwd", 0},
    };
    struct client c;
    assert_int_equal(client_open(&c), 0);
    uint32_t id = 100;
    int n_checked = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = bad[i].len ? bad[i].len : strlen(bad[i].name);
        if (!root && !strcmp(bad[i].name, "dev.gguf")) {
            continue;
        }
        for (int m = 0; m < 2; m++) { // swap on the configured chain; load creating a new chain
            int code = m == 0 ? request_component(&c, id++, VLM_RPC_SWAP, "default", bad[i].name, len)
                              : request_component(&c, id++, VLM_RPC_LOAD, "evil", bad[i].name, len);
            if (code != VLM_PROTO_EBAD_REQUEST && code != VLM_PROTO_ENOT_FOUND && code != VLM_PROTO_ETOO_LARGE) {
                fail_msg("model name #%zu (%.40s, %zu bytes) via %s: answered %d, expected BAD_REQUEST, NOT_FOUND "
                         "or TOO_LARGE", i, bad[i].name, len, m ? "load" : "swap", code);
            }
            n_checked++;
        }
    }
    // The control: a good name is loaded, and inotify sees that open (so it would have seen the others).
    assert_int_equal(request_component(&c, id++, VLM_RPC_SWAP, "default", "model2.gguf", 11), 0);
    client_close(&c);
    int opened[4] = {0};
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
            for (int i = 0; i < 4; i++) {
                opened[i] += ev->wd == wd[i] && (ev->mask & (IN_OPEN | IN_ACCESS));
            }
            p += sizeof *ev + ev->len;
        }
    }
    close(in);
    printf("# %d traversal requests refused; opens seen: outside %d, fifo %d, device %d, control %d\n", n_checked,
           opened[0], opened[1], opened[2], opened[3]);
    assert_int_equal(opened[0], 0);
    assert_int_equal(opened[1], 0);
    assert_int_equal(opened[2], 0);
    assert_true(opened[3] > 0);
    assert_int_equal(hello_once(), 0); // still serving
}

// A writer of the model directory flips a name between a model file and a symlink out of the directory
// (renameat2 RENAME_EXCHANGE, as fast as it can) while clients load that name. The daemon checks the name with
// openat2 on the loop thread and the worker opens the file later: it must open the very file it checked, through
// the descriptor of the check, never the symlink's target. Every load either gets the model file or NOT_FOUND
// (the check met the symlink); inotify on the outside file must see no open.
static atomic_bool g_flip_stop;
static atomic_long g_flips;

static void *flipper(void *arg) {
    (void)arg;
    while (!atomic_load(&g_flip_stop)) {
        if (renameat2(AT_FDCWD, "race.gguf", AT_FDCWD, "race-alt", RENAME_EXCHANGE) != 0) {
            break;
        }
        atomic_fetch_add(&g_flips, 1);
    }
    return NULL;
}

static void test_model_rename_race(void **state) {
    (void)state;
    assert_true(g_pid > 0);
    char outside[160], path[300], cwd[512];
    snprintf(outside, sizeof outside, "%s/outside-race.gguf", g_dir);
    copy_file(MODEL, outside);
    snprintf(path, sizeof path, "%s/race.gguf", g_models);
    copy_file(MODEL, path);
    snprintf(path, sizeof path, "%s/race-alt", g_models);
    assert_int_equal(symlink(outside, path), 0);
    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(in >= 0);
    int wd = inotify_add_watch(in, outside, IN_OPEN | IN_ACCESS);
    assert_true(wd >= 0);

    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(g_models), 0);
    atomic_store(&g_flip_stop, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flipper, NULL), 0);
    struct client c;
    assert_int_equal(client_open(&c), 0);
    uint32_t id = 1000;
    int ok = 0, not_found = 0;
    for (int i = 0; i < 150; i++) {
        // a swap to the racing name loads a fresh component (the previous one was released by the swap back)
        int code = request_component(&c, id++, VLM_RPC_SWAP, "default", "race.gguf", 9);
        if (code == 0) {
            ok++;
        } else if (code == VLM_PROTO_ENOT_FOUND) {
            not_found++;
        } else {
            fail_msg("load %d of the racing name: answered %d, expected 0 or NOT_FOUND", i, code);
        }
        assert_int_equal(request_component(&c, id++, VLM_RPC_SWAP, "default", "model2.gguf", 11), 0);
    }
    atomic_store(&g_flip_stop, true);
    pthread_join(th, NULL);
    client_close(&c);
    assert_int_equal(chdir(cwd), 0);
    int opened = 0;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
            opened += ev->wd == wd && (ev->mask & (IN_OPEN | IN_ACCESS));
            p += sizeof *ev + ev->len;
        }
    }
    close(in);
    printf("# rename race: %ld flips during 150 loads: %d loaded the model file, %d refused (symlink at the check); "
           "opens of the outside file: %d\n",
           atomic_load(&g_flips), ok, not_found, opened);
    assert_true(ok > 0);
    assert_int_equal(opened, 0);
    assert_false(log_contains("/proc/self/fd/")); // messages name the model, not the descriptor
    assert_int_equal(hello_once(), 0);
}

// Runs in a child: become uid/gid 65534 and say hello. Exit 0: answered; 1: refused with PERMISSION and
// disconnected; anything else: a failure.
static int nobody_hello(void) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0) {
            _exit(90);
        }
        int rc = hello_once();
        if (rc == 0) {
            _exit(0);
        }
        _exit(rc == -100 - VLM_PROTO_EPERMISSION ? 1 : 100 + (rc < 0 ? -rc % 100 : rc));
    }
    int st = wait_exit(pid, TIMEOUT_MS);
    assert_true(st != -1 && WIFEXITED(st));
    return WEXITSTATUS(st);
}

// A uid the config does not allow is refused with PERMISSION even though the socket file lets it connect, and
// the refusal is logged; allowing it (SIGHUP) lets it in.
static void test_uid_not_allowed(void **state) {
    (void)state;
    if (geteuid() != 0) {
        printf("# not root: cannot run a client as another uid; the SO_PEERCRED refusal is not checked here\n");
        skip();
    }
    assert_true(g_pid > 0);
    // As if SocketMode= were 0666: the file system lets anyone in; the daemon's own check must not.
    assert_int_equal(chmod(g_sock, 0666), 0);
    assert_int_equal(nobody_hello(), 1);
    assert_true(log_contains("refused: uid 65534 gid 65534"));
    assert_int_equal(hello_once(), 0); // root still is
    write_conf("65534");
    assert_int_equal(kill(g_pid, SIGHUP), 0);
    for (int t = 0; t < TIMEOUT_MS && !log_contains("SIGHUP: configuration reloaded"); t += 10) {
        usleep(10000);
    }
    assert_true(log_contains("SIGHUP: configuration reloaded"));
    assert_int_equal(nobody_hello(), 0);
    assert_true(log_contains("uid 65534 gid 65534 pid"));
    assert_true(log_contains("connected (allowed: allow_users)"));
    write_conf("");
    assert_int_equal(kill(g_pid, SIGHUP), 0);
    usleep(200000);
    assert_int_equal(chmod(g_sock, 0660), 0);
}

// SIGTERM while four streaming asks run or wait: every stream gets its final message, vlmd says STOPPING=1 and
// exits 0 within the stop timeout, and the socket (systemd's) is left in place.
static void test_sigterm_streams(void **state) {
    (void)state;
    assert_true(g_pid > 0);
    enum { N = 4 };
    struct client c[N];
    for (int i = 0; i < N; i++) {
        assert_int_equal(client_open(&c[i]), 0);
        struct vlm_rpc_ask a;
        vlm_rpc_ask_init(&a);
        a.prompt = vlm_proto_str_c("Once upon a time");
        a.temperature = 0;
        a.max_tokens = 100000; // until the context is full: far longer than the test waits
        a.stream = true;
        a.fields = VLM_RPC_ASK_TEMPERATURE | VLM_RPC_ASK_MAX_TOKENS | VLM_RPC_ASK_STREAM;
        assert_int_equal(vlm_rpc_ask_encode(&c[i].out, 1, &a), 0);
        assert_true(client_flush(&c[i]));
    }
    // The first ask is generating once its first token arrives.
    for (;;) {
        struct vlm_proto_msg msg;
        assert_int_equal(client_next(&c[0], &msg, TIMEOUT_MS), 1);
        if (msg.type == VLM_PROTO_NOTIFY && msg.method == VLM_RPC_N_TEXT) {
            break;
        }
        assert_false(msg.type == VLM_PROTO_RESPONSE);
    }
    notes_clear();
    double t0 = vlm_time_ms();
    assert_int_equal(kill(g_pid, SIGTERM), 0);
    int finals = 0, codes[N];
    for (int i = 0; i < N; i++) {
        codes[i] = wait_answer(&c[i], 1, STOP_TIMEOUT_MS);
        finals += codes[i] >= 0; // a result or an error response, not a dropped connection
        client_close(&c[i]);
    }
    int st = wait_exit(g_pid, STOP_TIMEOUT_MS);
    double t_exit = vlm_time_ms() - t0;
    g_pid = -1;
    printf("# SIGTERM with %d streams: final messages %d (codes %d %d %d %d), exit status %d after %.0f ms\n", N,
           finals, codes[0], codes[1], codes[2], codes[3], st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, t_exit);
    assert_int_equal(finals, N);
    for (int i = 0; i < N; i++) {
        assert_true(codes[i] == 0 || codes[i] == VLM_PROTO_ESHUTTING_DOWN);
    }
    assert_true(st != -1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_true(notify_wait("STOPPING=1", 1000));
    struct stat sb;
    assert_int_equal(stat(g_sock, &sb), 0); // not unlinked: it belongs to systemd (here: to this test)
}

// ---- setup --------------------------------------------------------------------------------------------------

static const char *find_activate(void) {
    static const char *const where[] = {"/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate",
                                        "/usr/local/bin/systemd-socket-activate"};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        if (access(where[i], X_OK) == 0) {
            return where[i];
        }
    }
    return NULL;
}

static int group_setup(void **state) {
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_dir, sizeof g_dir, "/tmp/vlmd-svc-XXXXXX");
    if (!mkdtemp(g_dir) || chmod(g_dir, 0755) != 0) { // others may enter (the uid check), not write
        return -1;
    }
    snprintf(g_sock, sizeof g_sock, "%s/vlmd.sock", g_dir);
    snprintf(g_log, sizeof g_log, "%s/vlmd.log", g_dir);
    snprintf(g_conf, sizeof g_conf, "%s/vlmd.conf", g_dir);
    snprintf(g_notify_path, sizeof g_notify_path, "%s/notify", g_dir);
    snprintf(g_models, sizeof g_models, "%s/models", g_dir);
    if (mkdir(g_models, 0755) != 0) {
        return -1;
    }
    char path[200];
    snprintf(path, sizeof path, "%s/model.gguf", g_models);
    copy_file(MODEL, path);
    write_conf("");
    g_activate = find_activate();
    if (!g_activate) {
        printf("# systemd-socket-activate not found: this test passes the socket to vlmd itself (same protocol)\n");
    }
    // The listening socket, as vlmd.socket creates it: mode 0660 before listen.
    g_listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_sock);
    mode_t old = umask(0117);
    int rc = bind(g_listen, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc != 0 || listen(g_listen, 128) != 0) {
        return -1;
    }
    g_notify = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un na = {.sun_family = AF_UNIX};
    snprintf(na.sun_path, sizeof na.sun_path, "%s", g_notify_path);
    if (bind(g_notify, (struct sockaddr *)&na, sizeof na) != 0 ||
        pthread_create(&g_notes_thread, NULL, notify_reader, NULL) != 0) {
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    close(g_listen);
    shutdown(g_notify, SHUT_RDWR); // ends the reader's recv
    pthread_join(g_notes_thread, NULL);
    close(g_notify);
    if (getenv("VLM_KEEP_TEST_DIR")) { // for a failure's post-mortem: the daemon's log is in there
        printf("# kept %s\n", g_dir);
        return 0;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_before_start),
        cmocka_unit_test(test_sigkill_restart),
        cmocka_unit_test(test_model_names_confined),
        cmocka_unit_test(test_model_rename_race),
        cmocka_unit_test(test_uid_not_allowed),
        cmocka_unit_test(test_sigterm_streams),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
