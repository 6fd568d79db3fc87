// vlmctl: the command-line client of vlmd (ask, status, chains, plugins, load, unload, swap).
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vlm/client.h"

enum exit_code {
    EXIT_OK = 0,
    EXIT_SERVER = 1,
    EXIT_USAGE = 2,
    EXIT_CONNECT = 3,
    EXIT_CANCELLED = 4,
    EXIT_TIMEOUT = 5,
};

#define MAX_STOPS VLM_RPC_STOP_MAX

static void usage(FILE *f) {
    fprintf(f,
            "usage: vlmctl [options] COMMAND [ARGS]\n"
            "\n"
            "Talks to vlmd, the local vision-language model daemon, over its Unix socket.\n"
            "\n"
            "commands:\n"
            "  ask [ask options] PROMPT...      ask a question; the answer is printed as it is generated. PROMPT\n"
            "                                   words are joined with spaces; '-' (or no PROMPT with stdin not a\n"
            "                                   terminal) reads the prompt from stdin\n"
            "  status                           daemon state: uptime, clients, queue, workers\n"
            "  chains                           configured chains and what each has loaded\n"
            "  plugins                          plugins found in the plugin directory\n"
            "  load CHAIN [COMPONENT]           load a chain's models (all, or encoder|projector|llm)\n"
            "  unload CHAIN [COMPONENT]         free a chain's models\n"
            "  swap CHAIN COMPONENT MODEL       replace one component of a chain (MODEL: a file name in the\n"
            "                                   daemon's model directory); running requests finish on the old one\n"
            "\n"
            "options:\n"
            "  -s, --socket PATH        daemon socket (default: $VLMD_SOCKET, else %s)\n"
            "      --timeout SEC        give up on a call after SEC seconds (an ask is cancelled on the daemon)\n"
            "      --connect-timeout SEC  (default %d)\n"
            "      --json               print one JSON object (results and errors) for scripts\n"
            "  -q, --quiet              no progress bar\n"
            "  -h, --help               this help\n"
            "  -V, --version            print the version of vlmctl (and of the daemon, when it runs)\n"
            "ask options:\n"
            "  -i, --image FILE         JPEG, PNG or WebP image, sent as bytes (repeatable, in prompt order)\n"
            "  -c, --chain NAME         chain to ask (default: the daemon's default chain)\n"
            "  -n, --max-tokens N       tokens to generate (-1: until the end of the text)\n"
            "      --temperature T      0: greedy (default: the daemon's, 0.8)\n"
            "      --top-p P, --top-k N, --min-p P, --repeat-penalty F, --repeat-last-n N\n"
            "      --seed N             sampling seed\n"
            "      --stop TEXT          stop when TEXT is generated (repeatable, up to %d)\n"
            "      --no-stream          print the answer only when it is complete\n"
            "load/swap options:\n"
            "      --plugin NAME        plugin to load the model with (default: chosen by the model's architecture)\n"
            "      --model NAME         model file in the daemon's model directory (load: instead of the\n"
            "                           configured one)\n"
            "\n"
            "With --json, ask prints {\"text\", \"tokens_prompt\", \"tokens_generated\", \"stop_reason\", \"timings\"}\n"
            "and the other commands print the daemon's result; a failure prints {\"error\": {\"code\", \"name\",\n"
            "\"message\"}} with the exit status below.\n"
            "\n"
            "Ctrl-C during ask cancels the request on the daemon, then exits with status 4 (twice: exit at once).\n"
            "\n"
            "exit status:\n"
            "  0  success\n"
            "  1  the daemon answered with an error (busy, not found, bad image, ...)\n"
            "  2  usage error: bad option or argument, unreadable image or prompt file\n"
            "  3  cannot connect to the daemon (not running, no permission) or the connection was lost\n"
            "  4  cancelled or interrupted (Ctrl-C, SIGTERM)\n"
            "  5  timed out (--timeout, --connect-timeout)\n",
            VLM_CLIENT_DEFAULT_SOCKET, VLM_CLIENT_CONNECT_TIMEOUT_MS / 1000, MAX_STOPS);
}

// ---- signals ----------------------------------------------------------------------------------------------

static struct vlm_client *volatile g_client;
static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig) {
    (void)sig;
    if (g_interrupted) {
        _exit(EXIT_CANCELLED); // second Ctrl-C: do not wait for the daemon
    }
    g_interrupted = 1;
    struct vlm_client *c = g_client;
    if (c) {
        vlm_client_cancel(c);
    }
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: a blocking poll returns EINTR and looks at the cancel flag
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

// ---- options ----------------------------------------------------------------------------------------------

struct opts {
    const char *socket;
    int timeout_ms;
    int connect_timeout_ms;
    bool json;
    bool quiet;
    bool version;
    bool no_stream;
    const char *images[VLM_RPC_IMAGES_MAX];
    uint32_t n_images;
    const char *stops[MAX_STOPS];
    uint32_t n_stops;
    const char *plugin;
    const char *model;
    struct vlm_client_ask_params ask;
};

enum {
    OPT_TIMEOUT = 1000,
    OPT_CONNECT_TIMEOUT,
    OPT_JSON,
    OPT_TEMPERATURE,
    OPT_TOP_P,
    OPT_TOP_K,
    OPT_MIN_P,
    OPT_REPEAT_PENALTY,
    OPT_REPEAT_LAST_N,
    OPT_SEED,
    OPT_STOP,
    OPT_NO_STREAM,
    OPT_PLUGIN,
    OPT_MODEL,
};

static bool parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == 0 || *end != 0 || errno || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (*s == '-') {
        return false;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == 0 || *end != 0 || errno) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_float(const char *s, float lo, float hi, float *out) {
    char *end;
    float v = strtof(s, &end);
    if (*s == 0 || *end != 0 || !(v >= lo && v <= hi)) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_seconds(const char *s, int *ms) {
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !(v > 0 && v <= 2e6)) {
        return false;
    }
    *ms = (int)(v * 1000.0 + 0.5);
    if (*ms < 1) {
        *ms = 1;
    }
    return true;
}

// Returns the index of the first non-option argument, or -1 after printing a usage error (or 0 for --help).
static int parse_options(int argc, char **argv, struct opts *o) {
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
        {"json", no_argument, NULL, OPT_JSON},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"image", required_argument, NULL, 'i'},
        {"chain", required_argument, NULL, 'c'},
        {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE},
        {"temp", required_argument, NULL, OPT_TEMPERATURE},
        {"top-p", required_argument, NULL, OPT_TOP_P},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"min-p", required_argument, NULL, OPT_MIN_P},
        {"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
        {"repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N},
        {"seed", required_argument, NULL, OPT_SEED},
        {"stop", required_argument, NULL, OPT_STOP},
        {"no-stream", no_argument, NULL, OPT_NO_STREAM},
        {"plugin", required_argument, NULL, OPT_PLUGIN},
        {"model", required_argument, NULL, OPT_MODEL},
        {NULL, 0, NULL, 0},
    };
    struct vlm_client_ask_params *a = &o->ask;
    int ch, li = -1;
    char optname[64];
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":s:qhVi:c:n:", longopts, &li)) != -1) {
        long long v;
        if (li >= 0) {
            snprintf(optname, sizeof optname, "--%s", longopts[li].name);
        } else {
            snprintf(optname, sizeof optname, "-%c", ch);
        }
        li = -1;
        switch (ch) {
        case 's':
            o->socket = optarg;
            break;
        case OPT_TIMEOUT:
            if (!parse_seconds(optarg, &o->timeout_ms)) {
                goto bad_value;
            }
            break;
        case OPT_CONNECT_TIMEOUT:
            if (!parse_seconds(optarg, &o->connect_timeout_ms)) {
                goto bad_value;
            }
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            o->version = true;
            break;
        case 'i':
            if (o->n_images == VLM_RPC_IMAGES_MAX) {
                fprintf(stderr, "vlmctl: at most %d images\n", VLM_RPC_IMAGES_MAX);
                return -1;
            }
            o->images[o->n_images++] = optarg;
            break;
        case 'c':
            a->chain = optarg;
            break;
        case 'n':
            if (!parse_long(optarg, -1, VLM_RPC_MAX_TOKENS_MAX, &v)) {
                goto bad_value;
            }
            a->max_tokens = (int32_t)v;
            a->fields |= VLM_RPC_ASK_MAX_TOKENS;
            break;
        case OPT_TEMPERATURE:
            if (!parse_float(optarg, 0.0f, 100.0f, &a->temperature)) {
                goto bad_value;
            }
            a->fields |= VLM_RPC_ASK_TEMPERATURE;
            break;
        case OPT_TOP_P:
            if (!parse_float(optarg, 0.0f, 1.0f, &a->top_p)) {
                goto bad_value;
            }
            a->fields |= VLM_RPC_ASK_TOP_P;
            break;
        case OPT_TOP_K:
            if (!parse_long(optarg, 0, INT32_MAX, &v)) {
                goto bad_value;
            }
            a->top_k = (int32_t)v;
            a->fields |= VLM_RPC_ASK_TOP_K;
            break;
        case OPT_MIN_P:
            if (!parse_float(optarg, 0.0f, 1.0f, &a->min_p)) {
                goto bad_value;
            }
            a->fields |= VLM_RPC_ASK_MIN_P;
            break;
        case OPT_REPEAT_PENALTY:
            if (!parse_float(optarg, 1e-6f, 100.0f, &a->repeat_penalty)) {
                goto bad_value;
            }
            a->fields |= VLM_RPC_ASK_REPEAT_PENALTY;
            break;
        case OPT_REPEAT_LAST_N:
            if (!parse_long(optarg, -1, VLM_RPC_MAX_TOKENS_MAX, &v)) {
                goto bad_value;
            }
            a->repeat_last_n = (int32_t)v;
            a->fields |= VLM_RPC_ASK_REPEAT_LAST_N;
            break;
        case OPT_SEED:
            if (!parse_u64(optarg, &a->seed)) {
                goto bad_value;
            }
            a->fields |= VLM_RPC_ASK_SEED;
            break;
        case OPT_STOP:
            if (o->n_stops == MAX_STOPS) {
                fprintf(stderr, "vlmctl: at most %d --stop strings\n", MAX_STOPS);
                return -1;
            }
            if (!*optarg || strlen(optarg) > VLM_RPC_STOP_LEN_MAX) {
                goto bad_value;
            }
            o->stops[o->n_stops++] = optarg;
            break;
        case OPT_NO_STREAM:
            o->no_stream = true;
            break;
        case OPT_PLUGIN:
            o->plugin = optarg;
            break;
        case OPT_MODEL:
            o->model = optarg;
            break;
        case ':':
            fprintf(stderr, "vlmctl: option %s needs a value (see vlmctl --help)\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "vlmctl: unknown option '%s' (see vlmctl --help)\n", argv[optind - 1]);
            return -1;
        }
        continue;
    bad_value:
        fprintf(stderr, "vlmctl: invalid value '%s' for option %s (see vlmctl --help)\n", optarg, optname);
        return -1;
    }
    if (o->n_stops) {
        a->stop = o->stops;
        a->n_stop = o->n_stops;
        a->fields |= VLM_RPC_ASK_STOP;
    }
    return optind;
}

// ---- output helpers ---------------------------------------------------------------------------------------

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            fprintf(f, "\\%c", *p);
        } else if (*p == '\n') {
            fputs("\\n", f);
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(f, "\\u%04x", *p);
        } else {
            fputc(*p, f);
        }
    }
    fputc('"', f);
}

// The error's name: the wire name when the daemon sent one, else the client-side code's.
static const char *error_name(struct vlm_client *c, int rc) {
    if (c && vlm_client_last_error(c)) {
        return vlm_proto_err_name(vlm_client_last_error(c));
    }
    switch (rc) {
    case VLM_CLIENT_ECONNREFUSED:
    case VLM_ENOENT:
    case VLM_EACCES:
        return "CANNOT_CONNECT";
    case VLM_CLIENT_ECONNRESET:
        return "CONNECTION_LOST";
    case VLM_CLIENT_ETIMEDOUT:
        return "TIMEOUT";
    case VLM_ECANCELED:
        return "CANCELLED";
    default:
        return vlm_err_name(rc);
    }
}

static int exit_for(struct vlm_client *c, int rc) {
    if (rc == VLM_ECANCELED || g_interrupted) {
        return EXIT_CANCELLED;
    }
    if (c && vlm_client_last_error(c)) {
        return EXIT_SERVER;
    }
    switch (rc) {
    case VLM_CLIENT_ECONNRESET:
        return EXIT_CONNECT;
    case VLM_CLIENT_ETIMEDOUT:
        return EXIT_TIMEOUT;
    case VLM_EINVAL:
    case VLM_ETOOLARGE:
        return EXIT_USAGE; // refused before anything was sent
    default:
        return EXIT_SERVER;
    }
}

static int fail(const struct opts *o, struct vlm_client *c, int rc, const char *msg) {
    int code = exit_for(c, rc);
    if (code == EXIT_CANCELLED) {
        fprintf(stderr, "vlmctl: cancelled\n");
    } else {
        fprintf(stderr, "vlmctl: %s\n", msg);
    }
    if (o->json) {
        printf("{\"error\":{\"code\":%d,\"name\":", c && vlm_client_last_error(c) ? vlm_client_last_error(c) : rc);
        json_string(stdout, error_name(c, rc));
        printf(",\"message\":");
        json_string(stdout, code == EXIT_CANCELLED ? "cancelled" : msg);
        printf(",\"exit\":%d}}\n", code);
    }
    return code;
}

// ---- progress bar -----------------------------------------------------------------------------------------

struct progress {
    bool enabled; // stderr is a terminal and not --quiet
    bool shown;   // a bar is on the screen
    int64_t last_ms;
};

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void progress_clear(struct progress *pr) {
    if (pr->shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        pr->shown = false;
    }
}

static void on_progress(const struct vlm_rpc_progress *p, void *user) {
    struct progress *pr = user;
    if (!pr->enabled) {
        return;
    }
    int64_t now = mono_ms();
    bool last = p->total && p->done >= p->total;
    if (pr->shown && !last && now - pr->last_ms < 100) {
        return; // at most 10 redraws a second
    }
    pr->last_ms = now;
    static const char *const names[] = {"", "queued", "loading", "encoding", "prefill"};
    const char *stage = (unsigned)p->stage <= VLM_RPC_STAGE_PREFILL ? names[p->stage] : "working";
    if (p->stage == VLM_RPC_STAGE_QUEUED) {
        fprintf(stderr, "\r\033[Kqueued: %llu request%s ahead", (unsigned long long)p->done, p->done == 1 ? "" : "s");
    } else if (p->total == 0) {
        fprintf(stderr, "\r\033[K%-9s %llu", stage, (unsigned long long)p->done);
    } else {
        enum { WIDTH = 30 };
        double frac = p->done >= p->total ? 1.0 : (double)p->done / (double)p->total;
        int fill = (int)(frac * WIDTH);
        char bar[WIDTH + 1];
        for (int i = 0; i < WIDTH; i++) {
            bar[i] = i < fill ? '#' : '.';
        }
        bar[WIDTH] = 0;
        if (p->stage == VLM_RPC_STAGE_LOADING) {
            fprintf(stderr, "\r\033[K%-9s [%s] %3d%% %.1f/%.1f MiB", stage, bar, (int)(frac * 100),
                    (double)p->done / 1048576.0, (double)p->total / 1048576.0);
        } else {
            fprintf(stderr, "\r\033[K%-9s [%s] %3d%% %llu/%llu", stage, bar, (int)(frac * 100),
                    (unsigned long long)p->done, (unsigned long long)p->total);
        }
    }
    fflush(stderr);
    pr->shown = true;
}

// ---- ask --------------------------------------------------------------------------------------------------

struct file_buf {
    void *data;
    size_t len;
};

static int read_file(const char *path, size_t max, struct file_buf *out) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "vlmctl: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (f != stdin && fstat(fileno(f), &st) == 0 && !S_ISREG(st.st_mode)) {
        fprintf(stderr, "vlmctl: %s is not a regular file\n", path);
        fclose(f);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (len == cap) {
            if (cap >= max) {
                fprintf(stderr, "vlmctl: %s is larger than %zu MiB\n", path, max >> 20);
                free(buf);
                buf = NULL;
                break;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                fprintf(stderr, "vlmctl: cannot read %s: %s\n", path, strerror(errno));
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (f != stdin) {
        fclose(f);
    }
    if (!buf) {
        return -1;
    }
    buf[len] = 0;
    out->data = buf;
    out->len = len;
    return 0;
}

struct stream_state {
    struct progress *pr;
    bool ends_with_newline;
    bool any;
};

static int on_text(const char *text, size_t len, void *user) {
    struct stream_state *st = user;
    progress_clear(st->pr);
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        st->ends_with_newline = text[len - 1] == '\n';
        st->any = true;
    }
    return g_interrupted ? 1 : 0;
}

static int cmd_ask(struct vlm_client *c, struct opts *o, char *prompt, const struct file_buf *images,
                   struct progress *pr) {
    struct vlm_client_ask_params *a = &o->ask;
    struct vlm_client_image img[VLM_RPC_IMAGES_MAX];
    for (uint32_t i = 0; i < o->n_images; i++) {
        img[i] = (struct vlm_client_image){images[i].data, images[i].len};
    }
    a->prompt = prompt;
    a->images = img;
    a->n_images = o->n_images;
    a->progress = on_progress;
    a->progress_user = pr;
    struct stream_state st = {.pr = pr};
    bool stream = !o->json && !o->no_stream;
    struct vlm_client_ask_result r;
    struct vlm_diag diag = {0};
    int rc = vlm_client_ask(c, a, stream ? on_text : NULL, &st, &r, &diag);
    progress_clear(pr);
    if (rc < 0) {
        if (st.any && !st.ends_with_newline) {
            fputc('\n', stdout);
            fflush(stdout);
        }
        return fail(o, c, rc, diag.msg);
    }
    if (o->json) {
        printf("%s\n", r.json);
    } else {
        if (!stream) {
            fwrite(r.text, 1, r.text_len, stdout);
            st.ends_with_newline = r.text_len && r.text[r.text_len - 1] == '\n';
            st.any = r.text_len > 0;
        }
        if (!st.ends_with_newline) {
            fputc('\n', stdout);
        }
    }
    fflush(stdout);
    vlm_client_ask_result_free(&r);
    return g_interrupted ? EXIT_CANCELLED : EXIT_OK;
}

// ---- status, chains, plugins ------------------------------------------------------------------------------

static void print_str(struct vlm_proto_str s, const char *absent) {
    if (s.ptr) {
        printf("%.*s", (int)s.len, s.ptr);
    } else {
        fputs(absent, stdout);
    }
}

static void print_component(const char *name, const struct vlm_rpc_component_info *ci) {
    if (!ci->plugin.ptr && !ci->model.ptr) {
        return;
    }
    printf("  %-10s ", name);
    print_str(ci->plugin, "(auto)");
    fputs("  ", stdout);
    print_str(ci->model, "-");
    printf("  %s\n", ci->loaded ? "loaded" : "not loaded");
}

static void print_chain(const struct vlm_rpc_chain *ch) {
    print_str(ch->name, "?");
    printf("  (template ");
    print_str(ch->template_name, "default");
    printf(", %u active)\n", ch->active);
    print_component("encoder", &ch->encoder);
    print_component("projector", &ch->projector);
    print_component("llm", &ch->llm);
}

static int parse_reply(const struct vlm_client_reply *r, struct vlm_proto_msg *m) {
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    struct vlm_diag d;
    if (vlm_proto_parse(r->msg, r->msg_len, &lim, m, &d) != 0) {
        fprintf(stderr, "vlmctl: malformed reply: %s\n", d.msg);
        return -1;
    }
    return 0;
}

static void print_duration(double s) {
    long long t = (long long)s;
    if (t >= 86400) {
        printf("%lldd %02lldh%02lldm", t / 86400, t % 86400 / 3600, t % 3600 / 60);
    } else if (t >= 3600) {
        printf("%lldh%02lldm%02llds", t / 3600, t % 3600 / 60, t % 60);
    } else if (t >= 60) {
        printf("%lldm%02llds", t / 60, t % 60);
    } else {
        printf("%.1fs", s);
    }
}

static int show_status(const struct vlm_client_reply *r, struct vlm_client *c) {
    struct vlm_proto_msg m;
    if (parse_reply(r, &m) < 0) {
        return EXIT_SERVER;
    }
    struct vlm_rpc_worker workers[64];
    struct vlm_rpc_status s;
    uint32_t total = 0;
    struct vlm_diag d;
    if (vlm_rpc_status_decode(&m, &s, workers, 64, &total, &d) != 0) {
        fprintf(stderr, "vlmctl: malformed status: %s\n", d.msg);
        return EXIT_SERVER;
    }
    const struct vlm_client_server_info *info = vlm_client_server(c);
    printf("%s ", info->server);
    print_str(s.version, info->version);
    printf(" (protocol %u), up ", s.protocol);
    print_duration(s.uptime_s);
    printf("\nclients: %u  queue: %u/%u  requests: %llu\n", s.clients, s.queue_length, s.queue_capacity,
           (unsigned long long)s.requests_total);
    for (uint32_t i = 0; i < s.n_workers; i++) {
        printf("worker ");
        print_str(s.workers[i].device, "?");
        if (s.workers[i].busy) {
            printf(": busy (request %u", s.workers[i].request);
            if (s.workers[i].chain.ptr) {
                printf(", chain %.*s", (int)s.workers[i].chain.len, s.workers[i].chain.ptr);
            }
            printf(")\n");
        } else {
            printf(": idle\n");
        }
    }
    if (total > s.n_workers) {
        printf("(%u more workers)\n", total - s.n_workers);
    }
    return EXIT_OK;
}

static int show_chains(const struct vlm_client_reply *r) {
    struct vlm_proto_msg m;
    if (parse_reply(r, &m) < 0) {
        return EXIT_SERVER;
    }
    enum { CAP = 256 };
    struct vlm_rpc_chain *chains = calloc(CAP, sizeof *chains);
    uint32_t n = 0;
    struct vlm_diag d;
    if (!chains || vlm_rpc_chains_decode(&m, chains, CAP, &n, &d) != 0) {
        fprintf(stderr, "vlmctl: malformed chains: %s\n", chains ? d.msg : "out of memory");
        free(chains);
        return EXIT_SERVER;
    }
    if (n == 0) {
        printf("no chains\n");
    }
    for (uint32_t i = 0; i < n && i < CAP; i++) {
        print_chain(&chains[i]);
    }
    free(chains);
    return EXIT_OK;
}

static int show_plugins(const struct vlm_client_reply *r) {
    struct vlm_proto_msg m;
    if (parse_reply(r, &m) < 0) {
        return EXIT_SERVER;
    }
    enum { CAP = 256 };
    struct vlm_rpc_plugin *pl = calloc(CAP, sizeof *pl);
    uint32_t n = 0;
    struct vlm_diag d;
    if (!pl || vlm_rpc_plugins_decode(&m, pl, CAP, &n, &d) != 0) {
        fprintf(stderr, "vlmctl: malformed plugins: %s\n", pl ? d.msg : "out of memory");
        free(pl);
        return EXIT_SERVER;
    }
    static const char *const kinds[] = {"?", "encoder", "projector", "llm"};
    printf("%-20s %-10s %-10s %4s %9s  %s\n", "NAME", "KIND", "VERSION", "ABI", "INSTANCES", "FILE");
    for (uint32_t i = 0; i < n && i < CAP; i++) {
        printf("%-20.*s %-10s %-10.*s %4u %9u  %.*s\n", (int)pl[i].name.len, pl[i].name.ptr ? pl[i].name.ptr : "",
               (unsigned)pl[i].kind <= 3 ? kinds[pl[i].kind] : "?", (int)pl[i].version.len,
               pl[i].version.ptr ? pl[i].version.ptr : "", pl[i].abi, pl[i].instances, (int)pl[i].file.len,
               pl[i].file.ptr ? pl[i].file.ptr : "");
    }
    free(pl);
    return EXIT_OK;
}

static int show_chain_result(const struct vlm_client_reply *r) {
    struct vlm_proto_msg m;
    if (parse_reply(r, &m) < 0) {
        return EXIT_SERVER;
    }
    struct vlm_rpc_chain ch;
    struct vlm_diag d;
    if (vlm_rpc_chain_result_decode(&m, &ch, &d) != 0) {
        fprintf(stderr, "vlmctl: malformed chain: %s\n", d.msg);
        return EXIT_SERVER;
    }
    print_chain(&ch);
    return EXIT_OK;
}

static bool parse_component(const char *s, enum vlm_rpc_component *out) {
    static const char *const names[] = {"all", "encoder", "projector", "llm"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum vlm_rpc_component)i;
            return true;
        }
    }
    return false;
}

// ---- connecting -------------------------------------------------------------------------------------------

static void not_running_help(const char *path) {
    bool is_default = strcmp(path, VLM_CLIENT_DEFAULT_SOCKET) == 0;
    fprintf(stderr,
            "vlmctl: vlmd does not seem to be running. Start it with\n"
            "    systemctl start vlmd.socket     (the system service, listening on %s)\n"
            "or run it by hand:\n"
            "    vlmd --socket %s --chain default=MODEL.gguf\n",
            VLM_CLIENT_DEFAULT_SOCKET, is_default ? "$XDG_RUNTIME_DIR/vlmd.sock" : path);
    if (is_default) {
        fprintf(stderr, "and point vlmctl at it with --socket PATH or VLMD_SOCKET=PATH.\n");
    }
}

static int connect_daemon(const struct opts *o, struct vlm_client **c) {
    const char *path = o->socket ? o->socket : vlm_client_default_socket();
    struct vlm_client_options co = {.socket_path = path,
                                    .client_name = "vlmctl " VLM_CLIENT_VERSION,
                                    .connect_timeout_ms = o->connect_timeout_ms,
                                    .call_timeout_ms = o->timeout_ms};
    struct vlm_diag diag = {0};
    int rc = vlm_client_connect_ex(&co, c, &diag);
    if (rc == 0) {
        return 0;
    }
    int code = g_interrupted ? EXIT_CANCELLED : rc == VLM_CLIENT_ETIMEDOUT ? EXIT_TIMEOUT : EXIT_CONNECT;
    // A daemon that answered hello with an error (too many clients, protocol) is reachable: still code 3, the
    // command did not run.
    fprintf(stderr, "vlmctl: cannot connect to vlmd: %s\n", diag.msg);
    if (rc == VLM_ENOENT || rc == VLM_CLIENT_ECONNREFUSED) {
        not_running_help(path);
    }
    if (o->json) {
        printf("{\"error\":{\"code\":%d,\"name\":\"CANNOT_CONNECT\",\"message\":", rc);
        json_string(stdout, diag.msg);
        printf(",\"exit\":%d}}\n", code);
    }
    return -code;
}

// ---- main -------------------------------------------------------------------------------------------------

static char *join_words(char **w, int n) {
    size_t len = 1;
    for (int i = 0; i < n; i++) {
        len += strlen(w[i]) + 1;
    }
    char *s = malloc(len);
    if (!s) {
        return NULL;
    }
    s[0] = 0;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t k = strlen(w[i]);
        if (i) {
            s[at++] = ' ';
        }
        memcpy(s + at, w[i], k);
        at += k;
        s[at] = 0;
    }
    return s;
}

int main(int argc, char **argv) {
    struct opts o;
    memset(&o, 0, sizeof o);
    vlm_client_ask_params_init(&o.ask);
    int first = parse_options(argc, argv, &o);
    if (first <= 0) {
        return first == 0 ? EXIT_OK : EXIT_USAGE;
    }
    install_signals();
    if (o.version) {
        printf("vlmctl %s (protocol %d)\n", VLM_CLIENT_VERSION, VLM_PROTO_VERSION);
        struct vlm_client *c;
        struct vlm_diag d;
        o.connect_timeout_ms = o.connect_timeout_ms ? o.connect_timeout_ms : 1000;
        struct vlm_client_options co = {.socket_path = o.socket, .connect_timeout_ms = o.connect_timeout_ms};
        if (vlm_client_connect_ex(&co, &c, &d) == 0) {
            const struct vlm_client_server_info *si = vlm_client_server(c);
            printf("%s %s (protocol %u)\n", si->server, si->version, si->protocol);
            vlm_client_close(c);
        }
        return EXIT_OK;
    }
    if (first >= argc) {
        fprintf(stderr, "vlmctl: no command (see vlmctl --help)\n");
        return EXIT_USAGE;
    }
    const char *cmd = argv[first];
    char **args = argv + first + 1;
    int n_args = argc - first - 1;
    struct progress pr = {.enabled = !o.quiet && !o.json && isatty(STDERR_FILENO)};

    // Check the command line and read the files before connecting: usage errors never need a daemon.
    char *prompt = NULL;
    struct file_buf images[VLM_RPC_IMAGES_MAX] = {{0}};
    struct vlm_client_component_params cp = {.progress = on_progress, .progress_user = &pr};
    enum { ASK, STATUS, CHAINS, PLUGINS, LOAD, UNLOAD, SWAP } which;
    int status = EXIT_USAGE;
    if (strcmp(cmd, "ask") == 0) {
        which = ASK;
        if (n_args == 0 && isatty(STDIN_FILENO)) {
            fprintf(stderr, "vlmctl: ask needs a prompt (see vlmctl --help)\n");
            goto out;
        }
        if (n_args == 0 || (n_args == 1 && strcmp(args[0], "-") == 0)) {
            struct file_buf fb;
            if (read_file("-", (size_t)64 << 20, &fb) < 0) {
                goto out;
            }
            prompt = fb.data;
        } else {
            prompt = join_words(args, n_args);
        }
        if (!prompt) {
            fprintf(stderr, "vlmctl: out of memory\n");
            goto out;
        }
        for (uint32_t i = 0; i < o.n_images; i++) {
            if (read_file(o.images[i], (size_t)1 << 30, &images[i]) < 0) {
                goto out;
            }
        }
    } else if (strcmp(cmd, "status") == 0 || strcmp(cmd, "chains") == 0 || strcmp(cmd, "plugins") == 0) {
        which = cmd[0] == 's' ? STATUS : cmd[0] == 'c' ? CHAINS : PLUGINS;
        if (n_args) {
            fprintf(stderr, "vlmctl: %s takes no arguments\n", cmd);
            goto out;
        }
    } else if (strcmp(cmd, "load") == 0 || strcmp(cmd, "unload") == 0) {
        which = cmd[0] == 'l' ? LOAD : UNLOAD;
        if (n_args < 1 || n_args > 2 || (n_args == 2 && !parse_component(args[1], &cp.component))) {
            fprintf(stderr, "vlmctl: usage: vlmctl %s CHAIN [encoder|projector|llm]\n", cmd);
            goto out;
        }
        if (which == UNLOAD && (o.model || o.plugin)) {
            fprintf(stderr, "vlmctl: unload takes no --model or --plugin\n");
            goto out;
        }
        cp.chain = args[0];
        cp.plugin = o.plugin;
        cp.model = o.model;
    } else if (strcmp(cmd, "swap") == 0) {
        which = SWAP;
        const char *model = n_args == 3 ? args[2] : o.model;
        if (n_args < 2 || n_args > 3 || !model || !parse_component(args[1], &cp.component) ||
            cp.component == VLM_RPC_COMPONENT_ALL) {
            fprintf(stderr, "vlmctl: usage: vlmctl swap CHAIN encoder|projector|llm MODEL [--plugin NAME]\n");
            goto out;
        }
        cp.chain = args[0];
        cp.plugin = o.plugin;
        cp.model = model;
    } else {
        fprintf(stderr, "vlmctl: unknown command '%s' (see vlmctl --help)\n", cmd);
        goto out;
    }

    struct vlm_client *c = NULL;
    int rc = connect_daemon(&o, &c);
    if (rc < 0) {
        status = -rc;
        goto out;
    }
    g_client = c;
    if (g_interrupted) {
        status = EXIT_CANCELLED;
        goto out_close;
    }
    if (which == ASK) {
        status = cmd_ask(c, &o, prompt, images, &pr);
        goto out_close;
    }
    struct vlm_client_reply reply;
    struct vlm_diag diag = {0};
    switch (which) {
    case STATUS:
        rc = vlm_client_status(c, &reply, &diag);
        break;
    case CHAINS:
        rc = vlm_client_chains(c, &reply, &diag);
        break;
    case PLUGINS:
        rc = vlm_client_plugins(c, &reply, &diag);
        break;
    case LOAD:
        rc = vlm_client_load(c, &cp, &reply, &diag);
        break;
    case UNLOAD:
        rc = vlm_client_unload(c, &cp, &reply, &diag);
        break;
    default:
        rc = vlm_client_swap(c, &cp, &reply, &diag);
        break;
    }
    progress_clear(&pr);
    if (rc < 0) {
        status = fail(&o, c, rc, diag.msg);
        goto out_close;
    }
    if (o.json) {
        printf("%s\n", reply.json);
        status = EXIT_OK;
    } else if (which == STATUS) {
        status = show_status(&reply, c);
    } else if (which == CHAINS) {
        status = show_chains(&reply);
    } else if (which == PLUGINS) {
        status = show_plugins(&reply);
    } else {
        status = show_chain_result(&reply);
    }
    vlm_client_reply_free(&reply);
out_close:
    g_client = NULL;
    vlm_client_close(c);
out:
    free(prompt);
    for (uint32_t i = 0; i < VLM_RPC_IMAGES_MAX; i++) {
        free(images[i].data);
    }
    return status;
}
