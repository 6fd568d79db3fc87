// Integration test of vlmd's component swap and plugin registry: the built daemon on a temporary socket with the
// tiny LLaVA models, driven by a raw client written with proto.h (no dependency on client/).
//
// - the encoder is swapped while 8 image asks stream: none fails, those sent before the swap finish on the old
//   encoder, later ones use the new one (a copy of the mmproj whose patch embedding is negated, so its answers
//   differ), the old component is freed and, once nothing uses the plugin, the plugin is unmapped;
// - failed swaps and loads answer a stable code and a fixed text without paths, and leave the chain as it was;
// - a plugin directory with broken plugins next to the real ones: each is refused in the log, naming its file,
//   and the daemon serves with the good ones.
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
#include <unistd.h>

#include "test-util.h"
#include "vlm/generate.h"
#include "vlm/gguf.h"
#include "vlm/proto.h"

#define VISION_DIR VLM_TEST_DATA_DIR "/vlm/models/llava15-tiny"
#define IMAGE VLM_TEST_DATA_DIR "/vlm/images/synth-50x50.png"
#define TEST_PLUGIN_DIR VLM_BIN_DIR "/../tests/plugins" // tests/CMakeLists.txt builds the broken plugins there
#define TIMEOUT_MS 20000
#define N_STREAM 8
#define ANSWER_TOKENS 1000 // greedy tokens of each image answer: long enough to be streaming during the swap
#define PROMPT "What is in the picture?"

static char g_dir[64];
static char g_models[96];
static char g_sock[100];
static char g_log[128];
static char g_conf_arg[160];
static pid_t g_pid = -1;
static uint8_t *g_image;
static size_t g_image_len;
static char g_old_answer[1 << 16]; // with the original encoder
static char g_new_answer[1 << 16]; // with the negated one

static double now_ms(void) {
    return vlm_time_ms();
}

// ---- files --------------------------------------------------------------------------------------------------

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void copy_file(const char *src, const char *dst) {
    size_t n;
    char *buf = vlm_test_read_file(src, &n);
    write_file(dst, buf, n);
    free(buf);
}

// A second encoder: the mmproj with its patch embedding negated. A different file is a different component, and
// different weights give different image embeddings, hence different answers; the projector tensors (mm.*) are
// untouched.
static void make_negated_mmproj(const char *dst) {
    size_t n;
    char *buf = vlm_test_read_file(VISION_DIR "/mmproj-f32.gguf", &n);
    struct vlm_gguf *g;
    assert_int_equal(vlm_gguf_open_buffer(buf, n, "mmproj", &g, NULL), 0);
    const struct vlm_gguf_tensor *t = vlm_gguf_find_tensor(g, "v.patch_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, VLM_TYPE_F32);
    size_t off = (size_t)((const char *)t->data - buf), count = t->size / sizeof(float);
    vlm_gguf_close(g);
    assert_true(off + count * sizeof(float) <= n);
    for (size_t i = 0; i < count; i++) {
        float v;
        memcpy(&v, buf + off + i * sizeof v, sizeof v);
        v = -v;
        memcpy(buf + off + i * sizeof v, &v, sizeof v);
    }
    write_file(dst, buf, n);
    free(buf);
}

static char *read_log(void) {
    return vlm_test_read_file(g_log, NULL);
}

// ---- the daemon ---------------------------------------------------------------------------------------------

static pid_t spawn_daemon(const char *sock, const char *plugin_dir, const char *log) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        char *argv[] = {VLM_BIN_DIR "/vlmd", "--socket", (char *)(uintptr_t)sock, "--plugin-dir",
                        (char *)(uintptr_t)plugin_dir, "--model-dir", g_models, "--threads", "1", "--queue-depth",
                        "32", "--ctx-size", "2048", "--shutdown-timeout", "1", g_conf_arg, NULL};
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

static void wait_listening(const char *path, pid_t pid, const char *log) {
    for (int i = 0; i < 2000; i++) {
        int fd = connect_sock(path);
        if (fd >= 0) {
            close(fd);
            return;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fail_msg("vlmd exited during start-up (status %d); see %s", st, log);
        }
        usleep(5000);
    }
    fail_msg("vlmd did not listen on %s within 10 s; see %s", path, log);
}

static void stop_daemon(pid_t pid) {
    assert_int_equal(kill(pid, SIGTERM), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

// True when the daemon's address space maps a file whose name ends with `file`.
static bool maps_file(pid_t pid, const char *file) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    bool found = false;
    size_t fl = strlen(file);
    while (!found && fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\n");
        line[n] = 0;
        found = n >= fl + 1 && line[n - fl - 1] == '/' && !strcmp(line + n - fl, file);
    }
    fclose(f);
    return found;
}

// ---- a raw client -------------------------------------------------------------------------------------------

struct client {
    int fd;
    struct vlm_proto_reader r;
    struct vlm_proto_buf out;
};

static void client_open_at(struct client *c, const char *sock) {
    c->fd = connect_sock(sock);
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

static void client_flush(struct client *c) {
    const uint8_t *b = c->out.data;
    size_t n = c->out.len;
    while (n > 0) {
        ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        assert_true(w > 0);
        b += w;
        n -= (size_t)w;
    }
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
        size_t taken;
        assert_int_equal(vlm_proto_reader_feed(&c->r, buf, (size_t)n, &taken), 0);
        assert_int_equal(taken, (size_t)n);
    }
}

// The response to `id`, skipping notifications. Returns the wire error code (0 on success); the error's message
// goes to `text` when given.
static int wait_response(struct client *c, uint32_t id, struct vlm_proto_msg *msg, char *text, size_t cap) {
    for (;;) {
        int rc = client_next(c, msg, TIMEOUT_MS);
        if (rc != 1) {
            fail_msg("no response to request %u (%s)", id, rc == 0 ? "timeout" : "connection closed");
        }
        if (msg->type == VLM_PROTO_RESPONSE && msg->msgid == id) {
            struct vlm_rpc_error e;
            int er = vlm_proto_error_decode(msg, &e, NULL);
            assert_true(er >= 0);
            if (text) {
                snprintf(text, cap, "%.*s", er == 1 ? (int)e.message.len : 0, er == 1 ? e.message.ptr : "");
            }
            return er == 1 ? e.code : 0;
        }
    }
}

static void send_image_ask(struct client *c, uint32_t id, bool stream) {
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c(PROMPT);
    a.chain = vlm_proto_str_c("vision");
    a.temperature = 0;
    a.max_tokens = ANSWER_TOKENS;
    a.stream = stream;
    a.images[0] = (struct vlm_proto_bytes){.ptr = g_image, .len = g_image_len};
    a.n_images = 1;
    a.fields = VLM_RPC_ASK_CHAIN | VLM_RPC_ASK_TEMPERATURE | VLM_RPC_ASK_MAX_TOKENS | VLM_RPC_ASK_STREAM |
               VLM_RPC_ASK_IMAGES;
    assert_int_equal(vlm_rpc_ask_encode(&c->out, id, &a), 0);
    client_flush(c);
}

struct answer {
    int code;
    char text[1 << 16];
    int n_text; // vlm.text notifications before the response
    double t_done;
};

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
            ans->n_text += t.id == id;
        } else if (msg.type == VLM_PROTO_RESPONSE && msg.msgid == id) {
            ans->t_done = now_ms();
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
            return;
        }
    }
}

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

static void image_answer(const char *sock, char *out, size_t cap) {
    struct client c;
    client_open_at(&c, sock);
    send_image_ask(&c, 1, false);
    static struct answer a;
    read_answer(&c, 1, &a);
    assert_int_equal(a.code, 0);
    assert_true(strlen(a.text) > 0);
    snprintf(out, cap, "%s", a.text);
    client_close(&c);
}

struct plugin_counts {
    uint32_t n;
    char names[8][64];
    uint32_t instances[8];
};

static void get_plugins(struct client *c, uint32_t id, struct plugin_counts *pc) {
    struct vlm_proto_msg msg;
    assert_int_equal(vlm_rpc_noparams_encode(&c->out, id, VLM_RPC_PLUGINS), 0);
    client_flush(c);
    assert_int_equal(wait_response(c, id, &msg, NULL, 0), 0);
    struct vlm_rpc_plugin pl[8];
    assert_int_equal(vlm_rpc_plugins_decode(&msg, pl, 8, &pc->n, NULL), 0);
    assert_true(pc->n <= 8);
    for (uint32_t i = 0; i < pc->n; i++) {
        snprintf(pc->names[i], sizeof pc->names[i], "%.*s", (int)pl[i].name.len, pl[i].name.ptr);
        pc->instances[i] = pl[i].instances;
    }
}

static int instances_of(const struct plugin_counts *pc, const char *name) {
    for (uint32_t i = 0; i < pc->n; i++) {
        if (!strcmp(pc->names[i], name)) {
            return (int)pc->instances[i];
        }
    }
    fail_msg("plugin %s is not listed", name);
    return -1;
}

struct chain_state {
    char encoder[128];
    bool encoder_loaded;
    bool projector_loaded;
    bool llm_loaded;
    uint32_t n_chains;
};

static void get_chain(struct client *c, uint32_t id, struct chain_state *cs) {
    struct vlm_proto_msg msg;
    assert_int_equal(vlm_rpc_noparams_encode(&c->out, id, VLM_RPC_CHAINS), 0);
    client_flush(c);
    assert_int_equal(wait_response(c, id, &msg, NULL, 0), 0);
    struct vlm_rpc_chain ch[4];
    assert_int_equal(vlm_rpc_chains_decode(&msg, ch, 4, &cs->n_chains, NULL), 0);
    for (uint32_t i = 0; i < cs->n_chains && i < 4; i++) {
        if (vlm_proto_str_eq(ch[i].name, "vision")) {
            snprintf(cs->encoder, sizeof cs->encoder, "%.*s", (int)ch[i].encoder.model.len, ch[i].encoder.model.ptr);
            cs->encoder_loaded = ch[i].encoder.loaded;
            cs->projector_loaded = ch[i].projector.loaded;
            cs->llm_loaded = ch[i].llm.loaded;
            return;
        }
    }
    fail_msg("chain 'vision' is not listed");
}

static int send_component(struct client *c, uint32_t id, enum vlm_rpc_method method, const char *chain,
                          enum vlm_rpc_component kind, const char *plugin, const char *model, char *text, size_t cap) {
    struct vlm_rpc_component_req r = {.chain = vlm_proto_str_c(chain), .component = kind};
    if (plugin) {
        r.plugin = vlm_proto_str_c(plugin);
    }
    if (model) {
        r.model = vlm_proto_str_c(model);
    }
    assert_int_equal(vlm_rpc_component_req_encode(&c->out, id, method, &r), 0);
    client_flush(c);
    struct vlm_proto_msg msg;
    return wait_response(c, id, &msg, text, cap);
}

// ---- setup --------------------------------------------------------------------------------------------------

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/vlmd-swap-XXXXXX");
    if (!mkdtemp(g_dir)) {
        return -1;
    }
    snprintf(g_models, sizeof g_models, "%s/models", g_dir);
    snprintf(g_sock, sizeof g_sock, "%s/vlmd.sock", g_dir);
    snprintf(g_log, sizeof g_log, "%s/vlmd.log", g_dir);
    char conf[128], path[256];
    snprintf(conf, sizeof conf, "%s/vlmd.conf", g_dir);
    snprintf(g_conf_arg, sizeof g_conf_arg, "--config=%s", conf);
    if (mkdir(g_models, 0700) != 0) {
        return -1;
    }
    // The models live in the daemon's model directory as regular files (a symlink out of it would be refused).
    snprintf(path, sizeof path, "%s/llm-f32.gguf", g_models);
    copy_file(VISION_DIR "/llm-f32.gguf", path);
    snprintf(path, sizeof path, "%s/mmproj-f32.gguf", g_models);
    copy_file(VISION_DIR "/mmproj-f32.gguf", path);
    snprintf(path, sizeof path, "%s/mmproj-neg.gguf", g_models);
    make_negated_mmproj(path);
    snprintf(path, sizeof path, "%s/junk.gguf", g_models);
    static const char junk[] = "this is not a GGUF file, just some bytes in one";
    write_file(path, junk, sizeof junk);
    static const char text[] = "[daemon]\nlog_level = info\n\n"
                               "[chain vision]\nllm = llm-f32.gguf\nmmproj = mmproj-f32.gguf\n";
    write_file(conf, text, sizeof text - 1);
    g_image = (uint8_t *)vlm_test_read_file(IMAGE, &g_image_len);
    g_pid = spawn_daemon(g_sock, VLM_PLUGIN_BUILD_DIR, g_log);
    wait_listening(g_sock, g_pid, g_log);
    return 0;
}

static void rm_dir(const char *dir) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        print_message("could not remove %s\n", dir);
    }
}

static int group_teardown(void **state) {
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    free(g_image);
    if (getenv("VLMD_TEST_KEEP_LOG")) {
        print_message("vlmd log kept in %s\n", g_log);
    } else {
        rm_dir(g_dir);
    }
    return 0;
}

// ---- tests --------------------------------------------------------------------------------------------------

static void test_swap_encoder_while_streaming(void **state) {
    (void)state;
    struct client c;
    client_open(&c);
    uint32_t id = 1;
    // The chain loads at start-up: wait for it.
    struct chain_state cs;
    double t0 = now_ms();
    for (;;) {
        get_chain(&c, id++, &cs);
        if (cs.encoder_loaded && cs.projector_loaded && cs.llm_loaded) {
            break;
        }
        assert_true(now_ms() - t0 < TIMEOUT_MS);
        usleep(2000);
    }
    assert_string_equal(cs.encoder, "mmproj-f32.gguf");
    struct plugin_counts pc;
    get_plugins(&c, id++, &pc);
    assert_int_equal(instances_of(&pc, "encoder-clip"), 1);
    assert_int_equal(instances_of(&pc, "projector-mlp"), 1);
    assert_int_equal(instances_of(&pc, "llm-llama"), 1);
    assert_true(maps_file(g_pid, "encoder-clip.so"));
    image_answer(g_sock, g_old_answer, sizeof g_old_answer);

    // 8 image asks stream; the encoder is swapped while the first one generates.
    struct client s[N_STREAM];
    static struct answer a[N_STREAM];
    for (int i = 0; i < N_STREAM; i++) {
        client_open(&s[i]);
        send_image_ask(&s[i], (uint32_t)(100 + i), true);
    }
    wait_first_text(&s[0], 100);
    double t_swap = now_ms();
    char text[256];
    assert_int_equal(send_component(&c, id++, VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL,
                                    "mmproj-neg.gguf", text, sizeof text),
                     0);
    double swap_ms = now_ms() - t_swap;
    // Switched: the chain names the new encoder, loaded; the old one is still held by the asks queued before the
    // swap, so the plugin has two instances now.
    get_chain(&c, id++, &cs);
    assert_string_equal(cs.encoder, "mmproj-neg.gguf");
    assert_true(cs.encoder_loaded);
    get_plugins(&c, id++, &pc);
    int during = instances_of(&pc, "encoder-clip");
    assert_int_equal(during, 2);
    assert_int_equal(instances_of(&pc, "projector-mlp"), 1);
    // Asks sent after the swap completed use the new encoder.
    struct client late;
    client_open(&late);
    send_image_ask(&late, 200, true);

    int streamed = 0;
    for (int i = 0; i < N_STREAM; i++) {
        read_answer(&s[i], (uint32_t)(100 + i), &a[i]);
        assert_int_equal(a[i].code, 0); // zero failed requests
        assert_string_equal(a[i].text, g_old_answer); // sent before the swap: finished on the old encoder
        streamed += i == 0 || a[i].n_text > 0; // ask 0's first piece was read by wait_first_text
        client_close(&s[i]);
    }
    assert_int_equal(streamed, N_STREAM);
    static struct answer la;
    read_answer(&late, 200, &la);
    client_close(&late);
    assert_int_equal(la.code, 0);
    snprintf(g_new_answer, sizeof g_new_answer, "%s", la.text);
    assert_string_not_equal(g_new_answer, g_old_answer); // the new encoder's embeddings make another answer
    static char again[1 << 16];
    image_answer(g_sock, again, sizeof again);
    assert_string_equal(again, g_new_answer);

    // The old encoder was freed with its last request: one instance of the plugin again.
    t0 = now_ms();
    for (;;) {
        get_plugins(&c, id++, &pc);
        if (instances_of(&pc, "encoder-clip") == 1) {
            break;
        }
        assert_true(now_ms() - t0 < 5000);
        usleep(1000);
    }
    char *log = read_log();
    assert_non_null(strstr(log, "encoder mmproj-f32.gguf unloaded (plugin encoder-clip: 1 instance left)"));
    free(log);
    print_message("swap: encoder switched %.1f ms after the swap was sent, during %d streaming image asks "
                  "(0 failed; encoder-clip instances 1 -> %d -> 1)\n",
                  swap_ms, N_STREAM, during);

    // Back to the original encoder: the original answer again (the answer follows the encoder).
    assert_int_equal(send_component(&c, id++, VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL,
                                    "mmproj-f32.gguf", text, sizeof text),
                     0);
    image_answer(g_sock, again, sizeof again);
    assert_string_equal(again, g_old_answer);

    // Unloading the only encoder closes its plugin: no instance left, and the shared object is unmapped.
    assert_int_equal(send_component(&c, id++, VLM_RPC_UNLOAD, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, NULL, text,
                                    sizeof text),
                     0);
    get_chain(&c, id++, &cs);
    assert_string_equal(cs.encoder, "mmproj-f32.gguf"); // still listed, not loaded
    assert_false(cs.encoder_loaded);
    assert_true(cs.llm_loaded);
    // The worker unloads the model and closes the plugin, then the loop counts the instance gone: once the count
    // is 0, the shared object must be unmapped already.
    t0 = now_ms();
    for (;;) {
        get_plugins(&c, id++, &pc);
        if (instances_of(&pc, "encoder-clip") == 0) {
            break;
        }
        assert_true(now_ms() - t0 < 5000);
        usleep(1000);
    }
    assert_false(maps_file(g_pid, "encoder-clip.so"));
    assert_int_equal(instances_of(&pc, "projector-mlp"), 1);
    assert_true(maps_file(g_pid, "projector-mlp.so"));
    // An image ask loads it again and waits for it.
    image_answer(g_sock, again, sizeof again);
    assert_string_equal(again, g_old_answer);
    get_plugins(&c, id++, &pc);
    assert_int_equal(instances_of(&pc, "encoder-clip"), 1);
    assert_true(maps_file(g_pid, "encoder-clip.so"));
    client_close(&c);
}

static void test_swap_errors(void **state) {
    (void)state;
    static const struct {
        enum vlm_rpc_method method;
        const char *chain;
        enum vlm_rpc_component kind;
        const char *plugin, *model;
        int code;
        const char *message;
    } cases[] = {
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, "/etc/passwd", VLM_PROTO_EBAD_REQUEST,
         "chain 'vision': model name must be relative to the model directory"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, "../models/mmproj-neg.gguf", VLM_PROTO_EBAD_REQUEST,
         "chain 'vision': model name must not contain '.', '..' or empty path components"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, "missing.gguf", VLM_PROTO_ENOT_FOUND,
         "chain 'vision': model not found"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, "llm-f32.gguf", VLM_PROTO_EMODEL_INVALID,
         "chain 'vision': not a model for this component kind"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_LLM, NULL, "mmproj-neg.gguf", VLM_PROTO_EMODEL_INVALID,
         "chain 'vision': not a model for this component kind"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, "junk.gguf", VLM_PROTO_EMODEL_INVALID,
         "chain 'vision': model file is not a valid GGUF file"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, "nosuch", "mmproj-neg.gguf", VLM_PROTO_ENOT_FOUND,
         "chain 'vision': no plugin of this component kind has that name"},
        {VLM_RPC_SWAP, "vision", VLM_RPC_COMPONENT_ENCODER, "llm-llama", "mmproj-neg.gguf", VLM_PROTO_ENOT_FOUND,
         "chain 'vision': no plugin of this component kind has that name"},
        {VLM_RPC_LOAD, "vision", VLM_RPC_COMPONENT_ENCODER, NULL, "junk.gguf", VLM_PROTO_EMODEL_INVALID,
         "chain 'vision': model file is not a valid GGUF file"},
        {VLM_RPC_LOAD, "fresh", VLM_RPC_COMPONENT_LLM, NULL, "missing.gguf", VLM_PROTO_ENOT_FOUND,
         "chain 'fresh': model not found"},
        {VLM_RPC_LOAD, "fresh", VLM_RPC_COMPONENT_ENCODER, NULL, "mmproj-f32.gguf", VLM_PROTO_EBAD_REQUEST,
         "chain 'fresh': a new chain starts with its llm"},
        {VLM_RPC_SWAP, "nochain", VLM_RPC_COMPONENT_ENCODER, NULL, "mmproj-neg.gguf", VLM_PROTO_ENOT_FOUND,
         "no chain 'nochain'"},
    };
    struct client c;
    client_open(&c);
    uint32_t id = 1;
    struct chain_state before, after;
    get_chain(&c, id++, &before);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        int code = send_component(&c, id++, cases[i].method, cases[i].chain, cases[i].kind, cases[i].plugin,
                                  cases[i].model, text, sizeof text);
        print_message("%s %s %s -> %s: %s\n", cases[i].method == VLM_RPC_SWAP ? "swap" : "load", cases[i].chain,
                      cases[i].model, vlm_proto_err_name(code), text);
        assert_int_equal(code, cases[i].code);
        assert_string_equal(text, cases[i].message);
        assert_null(strstr(text, g_dir)); // never a path
    }
    // The chain is as it was, and serves.
    get_chain(&c, id++, &after);
    assert_int_equal(after.n_chains, before.n_chains);
    assert_string_equal(after.encoder, before.encoder);
    assert_true(after.encoder_loaded && after.projector_loaded && after.llm_loaded);
    static char answer[1 << 16];
    image_answer(g_sock, answer, sizeof answer);
    assert_string_equal(answer, g_old_answer);
    // The details are in the log, under the request.
    char *log = read_log();
    assert_non_null(strstr(log, "junk.gguf"));
    assert_non_null(strstr(log, "a plugin of another kind does"));
    free(log);
    client_close(&c);
}

static void test_broken_plugins_refused(void **state) {
    (void)state;
    static const char *const good[] = {"encoder-clip.so", "llm-llama.so", "projector-mlp.so"};
    static const char *const bad[] = {"bad-abi.so", "bad-kind.so", "incomplete-llm.so", "no-query.so",
                                      "unresolved.so"};
    char dir[128], sock[128], log[128], src[512], dst[512];
    snprintf(dir, sizeof dir, "%s/plugins", g_dir);
    snprintf(sock, sizeof sock, "%s/second.sock", g_dir);
    snprintf(log, sizeof log, "%s/second.log", g_dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    for (size_t i = 0; i < 3; i++) {
        snprintf(src, sizeof src, "%s/%s", VLM_PLUGIN_BUILD_DIR, good[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, good[i]);
        copy_file(src, dst);
    }
    for (size_t i = 0; i < 5; i++) {
        snprintf(src, sizeof src, "%s/%s", TEST_PLUGIN_DIR, bad[i]);
        struct stat st;
        if (stat(src, &st) != 0) {
            fail_msg("%s is missing: build the test plugins (target test-plugin-%.*s) first", src,
                     (int)(strlen(bad[i]) - 3), bad[i]);
        }
        snprintf(dst, sizeof dst, "%s/%s", dir, bad[i]);
        copy_file(src, dst);
    }
    pid_t pid = spawn_daemon(sock, dir, log);
    wait_listening(sock, pid, log);
    struct client c;
    client_open_at(&c, sock);
    struct plugin_counts pc;
    get_plugins(&c, 1, &pc);
    assert_int_equal(pc.n, 3); // only the good ones
    assert_string_equal(pc.names[0], "encoder-clip");
    assert_string_equal(pc.names[1], "llm-llama");
    assert_string_equal(pc.names[2], "projector-mlp");
    static char answer[1 << 16];
    image_answer(sock, answer, sizeof answer); // the chain loads with the good plugins and serves
    assert_string_equal(answer, g_old_answer);
    client_close(&c);
    stop_daemon(pid);
    char *text = vlm_test_read_file(log, NULL);
    for (size_t i = 0; i < 5; i++) {
        char want[128];
        snprintf(want, sizeof want, "plugin %s refused: ", bad[i]);
        const char *line = strstr(text, want);
        if (line) {
            print_message("%.*s\n", (int)strcspn(line, "\n"), line);
        } else {
            fail_msg("no refusal of %s in the log:\n%s", bad[i], text);
        }
    }
    assert_null(strstr(text, "plugin llm-llama.so refused"));
    free(text);
}

// SIGTERM: the daemon unloads everything and exits 0 (under LeakSanitizer, a leak would make that non-zero).
static void test_sigterm_clean(void **state) {
    (void)state;
    stop_daemon(g_pid);
    g_pid = -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swap_encoder_while_streaming),
        cmocka_unit_test(test_swap_errors),
        cmocka_unit_test(test_broken_plugins_refused),
        cmocka_unit_test(test_sigterm_clean),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
