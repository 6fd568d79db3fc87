// vlm-run: run an LLM (optionally with images) from GGUF files on the command line and stream its answer.
//
//   vlm-run --model m.gguf -p "Once upon a time" -n 64 [-t THREADS] [--temp 0] ...
//   vlm-run --model llm.gguf --mmproj mmproj.gguf --image photo.jpg -p "What is in this picture?"
//
// The model is loaded through the plugin registered for its architecture (llm-llama for "llama"), exactly
// as the daemon does it, so what vlm-run prints is what vlmd answers for the same seed. Images go through the
// encoder and projector plugins registered for the mmproj file's architecture ("clip"), and their embeddings
// are spliced into the prompt at `<image>` markers, as LLaVA does it (../shared/docs/gguf-llava.md §7.1).
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vlm/backend.h"
#include "vlm/chat.h"
#include "vlm/generate.h"
#include "vlm/gguf.h"
#include "vlm/image.h"
#include "vlm/log.h"
#include "vlm/plugin.h"
#include "vlm/sampler.h"
#include "vlm/tokenizer.h"
#include "vlm/vision.h"

#define MAX_STOPS 16
#define MAX_IMAGES 16

struct options {
    const char *model;
    const char *prompt;
    const char *prompt_file;
    const char *plugin_dir;
    int32_t n_predict;
    int32_t n_ctx;
    int n_threads;
    bool parse_special;
    bool no_bos;
    bool json_stats;
    bool show_prompt;
    enum vlm_type kv_type;
    struct vlm_sampler_params sampling;
    const char *stops[MAX_STOPS];
    int n_stops;
    const char *mmproj;
    const char *images[MAX_IMAGES];
    int n_images;
    enum vlm_chat_format chat_format;
    bool encode_only;
    enum vlm_precision vision_precision;
    const char *embd_out;
};

static void usage(FILE *f) {
    fprintf(f,
            "usage: vlm-run [options] -p PROMPT\n"
            "\n"
            "Runs a language model from a GGUF file and prints the generated text as it is produced.\n"
            "\n"
            "model:\n"
            "  -m, --model FILE         GGUF model (default: the bundled tiny test model in a build tree)\n"
            "      --plugin-dir DIR     where plugins are (default: $VLM_PLUGIN_DIR, the build tree, %s)\n"
            "  -c, --ctx-size N         context positions (default: min(trained context, 4096))\n"
            "      --kv-type f16|f32    KV cache element type (default f16)\n"
            "  -t, --threads N          compute threads (default: number of CPUs)\n"
            "images:\n"
            "      --mmproj FILE        vision encoder + projector GGUF (llama.cpp's mmproj layout)\n"
            "      --image FILE         JPEG, PNG or WebP image (repeatable, up to %d, in prompt order)\n"
            "      --encode-only        only encode the images and print the timings (no --model needed)\n"
            "      --embd-out FILE      with --encode-only: write the image embeddings (LLM input rows, F32, in\n"
            "                           image order) to FILE\n"
            "      --vision-precision P auto|exact|bf16 (default auto): how the encoder and projector multiply with\n"
            "                           F32/F16 weights. exact: the stored weights, exact products; bf16: weights\n"
            "                           and activations rounded to BF16 (twice as fast on CPUs with AVX512-BF16);\n"
            "                           auto: bf16 for 16-bit weights where the CPU has it, exact otherwise\n"
            "      --chat-format F      auto|vicuna|mistral|none (default auto). vicuna: LLaVA 1.5 \"SYSTEM USER:\n"
            "                           <image>\\nPROMPT ASSISTANT:\"; mistral: LLaVA 1.6 \"[INST] <image>\\nPROMPT\n"
            "                           [/INST]\"; none: the prompt as given. auto: none when the prompt already\n"
            "                           contains %s markers or no image is given; else mistral when the\n"
            "                           LLM's chat template has [INST] or its name says mistral, vicuna when the\n"
            "                           name says vicuna, else mistral for anyres (LLaVA 1.6) mmproj files and\n"
            "                           vicuna otherwise. Without markers, one %s\\n per image goes in front\n"
            "                           of the prompt, as LLaVA places it.\n"
            "prompt:\n"
            "  -p, --prompt TEXT        the prompt\n"
            "  -f, --file FILE          read the prompt from FILE\n"
            "      --special            parse special-token text such as </s> in the prompt\n"
            "      --no-bos             do not add the BOS token\n"
            "      --show-prompt        echo the prompt before the answer\n"
            "generation:\n"
            "  -n, --n-predict N        tokens to generate (default 128; -1: until end of text)\n"
            "      --temp T             temperature (default 0.8; 0 = greedy)\n"
            "      --top-k N            (default 40; 0 = off)\n"
            "      --top-p P            (default 0.95; 1 = off)\n"
            "      --min-p P            (default 0.05; 0 = off)\n"
            "      --repeat-penalty F   (default 1.0 = off)\n"
            "      --repeat-last-n N    tokens the penalty looks back over (default 64)\n"
            "  -s, --seed N             random seed (default 42)\n"
            "      --stop TEXT          stop when TEXT is generated (repeatable, up to %d)\n"
            "output:\n"
            "      --json-stats         print timings as one JSON line on stderr\n"
            "  -v, --verbose            log debug detail\n"
            "  -h, --help               this help\n",
            vlm_plugin_default_dir(), MAX_IMAGES, VLM_IMAGE_MARKER, VLM_IMAGE_MARKER, MAX_STOPS);
}

static bool parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_float(const char *s, float *out) {
    char *end;
    float v = strtof(s, &end);
    if (*s == 0 || *end != 0) {
        return false;
    }
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, struct options *o) {
    enum {
        OPT_PLUGIN_DIR = 256,
        OPT_KV_TYPE,
        OPT_SPECIAL,
        OPT_NO_BOS,
        OPT_SHOW_PROMPT,
        OPT_TEMP,
        OPT_TOP_K,
        OPT_TOP_P,
        OPT_MIN_P,
        OPT_REPEAT_PENALTY,
        OPT_REPEAT_LAST_N,
        OPT_STOP,
        OPT_JSON_STATS,
        OPT_MMPROJ,
        OPT_IMAGE,
        OPT_CHAT_FORMAT,
        OPT_ENCODE_ONLY,
        OPT_VISION_PRECISION,
        OPT_EMBD_OUT,
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
        {"ctx-size", required_argument, NULL, 'c'},
        {"kv-type", required_argument, NULL, OPT_KV_TYPE},
        {"threads", required_argument, NULL, 't'},
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        {"special", no_argument, NULL, OPT_SPECIAL},
        {"no-bos", no_argument, NULL, OPT_NO_BOS},
        {"show-prompt", no_argument, NULL, OPT_SHOW_PROMPT},
        {"n-predict", required_argument, NULL, 'n'},
        {"temp", required_argument, NULL, OPT_TEMP},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"top-p", required_argument, NULL, OPT_TOP_P},
        {"min-p", required_argument, NULL, OPT_MIN_P},
        {"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
        {"repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N},
        {"seed", required_argument, NULL, 's'},
        {"stop", required_argument, NULL, OPT_STOP},
        {"json-stats", no_argument, NULL, OPT_JSON_STATS},
        {"mmproj", required_argument, NULL, OPT_MMPROJ},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"chat-format", required_argument, NULL, OPT_CHAT_FORMAT},
        {"encode-only", no_argument, NULL, OPT_ENCODE_ONLY},
        {"vision-precision", required_argument, NULL, OPT_VISION_PRECISION},
        {"embd-out", required_argument, NULL, OPT_EMBD_OUT},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    long v;
    while ((c = getopt_long(argc, argv, "m:c:t:p:f:n:s:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            o->model = optarg;
            break;
        case OPT_PLUGIN_DIR:
            o->plugin_dir = optarg;
            break;
        case 'c':
            if (!parse_int(optarg, 1, 1 << 24, &v)) {
                goto bad;
            }
            o->n_ctx = (int32_t)v;
            break;
        case OPT_KV_TYPE:
            if (!strcmp(optarg, "f16")) {
                o->kv_type = VLM_TYPE_F16;
            } else if (!strcmp(optarg, "f32")) {
                o->kv_type = VLM_TYPE_F32;
            } else {
                goto bad;
            }
            break;
        case 't':
            if (!parse_int(optarg, 1, 1024, &v)) {
                goto bad;
            }
            o->n_threads = (int)v;
            break;
        case 'p':
            o->prompt = optarg;
            break;
        case 'f':
            o->prompt_file = optarg;
            break;
        case OPT_SPECIAL:
            o->parse_special = true;
            break;
        case OPT_NO_BOS:
            o->no_bos = true;
            break;
        case OPT_SHOW_PROMPT:
            o->show_prompt = true;
            break;
        case 'n':
            if (!parse_int(optarg, -1, 1 << 24, &v)) {
                goto bad;
            }
            o->n_predict = (int32_t)v;
            break;
        case OPT_TEMP:
            if (!parse_float(optarg, &o->sampling.temperature)) {
                goto bad;
            }
            break;
        case OPT_TOP_K:
            if (!parse_int(optarg, 0, 1 << 24, &v)) {
                goto bad;
            }
            o->sampling.top_k = (int32_t)v;
            break;
        case OPT_TOP_P:
            if (!parse_float(optarg, &o->sampling.top_p)) {
                goto bad;
            }
            break;
        case OPT_MIN_P:
            if (!parse_float(optarg, &o->sampling.min_p)) {
                goto bad;
            }
            break;
        case OPT_REPEAT_PENALTY:
            if (!parse_float(optarg, &o->sampling.repeat_penalty) || !(o->sampling.repeat_penalty > 0.0f)) {
                goto bad;
            }
            break;
        case OPT_REPEAT_LAST_N:
            if (!parse_int(optarg, -1, 1 << 24, &v)) {
                goto bad;
            }
            o->sampling.repeat_last_n = (int32_t)v;
            break;
        case 's':
            if (!parse_int(optarg, 0, __LONG_MAX__, &v)) {
                goto bad;
            }
            o->sampling.seed = (uint64_t)v;
            break;
        case OPT_STOP:
            if (o->n_stops == MAX_STOPS || optarg[0] == 0) {
                goto bad;
            }
            o->stops[o->n_stops++] = optarg;
            break;
        case OPT_JSON_STATS:
            o->json_stats = true;
            break;
        case OPT_MMPROJ:
            o->mmproj = optarg;
            break;
        case OPT_IMAGE:
            if (o->n_images == MAX_IMAGES || optarg[0] == 0) {
                goto bad;
            }
            o->images[o->n_images++] = optarg;
            break;
        case OPT_ENCODE_ONLY:
            o->encode_only = true;
            break;
        case OPT_VISION_PRECISION:
            if (vlm_precision_parse(optarg, &o->vision_precision) != 0) {
                goto bad;
            }
            break;
        case OPT_EMBD_OUT:
            o->embd_out = optarg;
            break;
        case OPT_CHAT_FORMAT:
            if (vlm_chat_format_from_name(optarg, &o->chat_format) != 0) {
                goto bad;
            }
            break;
        case 'v':
            vlm_log_set_level(VLM_LOG_DEBUG);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vlm-run: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (o->n_images > 0 && !o->mmproj) {
        fprintf(stderr, "vlm-run: --image needs the vision model: give it with --mmproj FILE.gguf\n");
        return -1;
    }
    if (o->embd_out && !o->encode_only) {
        fprintf(stderr, "vlm-run: --embd-out goes with --encode-only\n");
        return -1;
    }
    if (o->encode_only && o->n_images == 0) {
        fprintf(stderr, "vlm-run: --encode-only needs --mmproj FILE.gguf and at least one --image FILE\n");
        return -1;
    }
    return 0;
bad:
    fprintf(stderr, "vlm-run: invalid value '%s' for option %s\n", optarg, argv[optind - 1]);
    return -1;
}

static char *read_text_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) {
        buf[len] = 0;
    }
    return buf;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static const char *pick_plugin_dir(const struct options *o) {
    if (o->plugin_dir) {
        return o->plugin_dir;
    }
    if (getenv("VLM_PLUGIN_DIR")) {
        return vlm_plugin_default_dir();
    }
#ifdef VLM_PLUGIN_BUILD_DIR
    if (is_dir(VLM_PLUGIN_BUILD_DIR)) {
        return VLM_PLUGIN_BUILD_DIR; // running from a build tree
    }
#endif
    return vlm_plugin_default_dir();
}

// A command-line tool's log lines: plain text on stderr, no syslog priority prefix.
static void log_to_stderr(enum vlm_log_level level, const char *line, void *user) {
    (void)user;
    fprintf(stderr, "%s%s\n", level <= VLM_LOG_WARN ? (level == VLM_LOG_ERROR ? "error: " : "warning: ") : "", line);
}

static bool print_piece(const char *text, size_t len, void *user) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

static const char *stop_reason_name(enum vlm_stop_reason r) {
    switch (r) {
    case VLM_STOP_EOS:
        return "eos";
    case VLM_STOP_STRING:
        return "stop";
    case VLM_STOP_LENGTH:
        return "length";
    case VLM_STOP_CONTEXT:
        return "context";
    case VLM_STOP_CANCELLED:
        return "cancelled";
    default:
        return "none";
    }
}

// ---- models and prompt formats --------------------------------------------------------------------------------

// What vlm-run needs to know about a GGUF file before loading it.
struct gguf_probe {
    char arch[64];
    char name[128];      // general.name
    bool has_pinpoints;  // clip.vision.image_grid_pinpoints: an anyres (LLaVA 1.6) mmproj
    bool template_inst;  // tokenizer.chat_template uses [INST] (Mistral / Llama 2 style)
};

static int probe_gguf(const char *path, struct gguf_probe *p, struct vlm_diag *diag) {
    memset(p, 0, sizeof *p);
    struct vlm_gguf *g;
    int rc = vlm_gguf_open(path, &g, diag);
    if (rc) {
        return rc;
    }
    struct vlm_gguf_str s;
    if (vlm_gguf_get_str(g, "general.architecture", &s, NULL) != 0) {
        vlm_gguf_close(g);
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: no general.architecture key", path);
    }
    snprintf(p->arch, sizeof p->arch, "%.*s", (int)(s.len < 63 ? s.len : 63), s.ptr);
    if (vlm_gguf_get_str(g, "general.name", &s, NULL) == 0) {
        snprintf(p->name, sizeof p->name, "%.*s", (int)(s.len < 127 ? s.len : 127), s.ptr);
    }
    p->has_pinpoints = vlm_gguf_find_key(g, "clip.vision.image_grid_pinpoints") >= 0;
    if (vlm_gguf_get_str(g, "tokenizer.chat_template", &s, NULL) == 0) {
        p->template_inst = memmem(s.ptr, s.len, "[INST]", 6) != NULL;
    }
    vlm_gguf_close(g);
    return 0;
}

// ---- images ----------------------------------------------------------------------------------------------------

// Loads an image file and runs it through the vision chain, logging the stages' timings.
static int embed_image(const struct vlm_vision *v, const char *path, struct vlm_vision_embedding *out,
                       struct vlm_diag *diag) {
    struct vlm_image img = {0};
    double t0 = vlm_time_ms();
    int rc = vlm_image_load(path, NULL, &img, diag);
    if (rc) {
        return rc;
    }
    double t_decode = vlm_time_ms() - t0;
    rc = vlm_vision_embed(v->enc, v->enc_model, v->proj, v->proj_model, &img, out, diag);
    if (rc == 0) {
        vlm_log(VLM_LOG_INFO,
                "%s: %dx%d, %d tile%s (grid %dx%d) -> %d image tokens | decode %.1f ms, preprocess %.1f ms, "
                "encode %.1f ms (%.1f ms/tile), project %.1f ms",
                path, img.width, img.height, out->n_tiles, out->n_tiles == 1 ? "" : "s", out->grid_w, out->grid_h,
                out->n, t_decode, out->preprocess_ms, out->encode_ms, out->encode_ms / out->n_tiles,
                out->project_ms);
    }
    vlm_image_free(&img);
    return rc;
}

static double embedding_ms(const struct vlm_vision_embedding *e) {
    return e->preprocess_ms + e->encode_ms + e->project_ms;
}

// --encode-only: the vision half alone (timing an mmproj without its LLM).
static int encode_only(const struct options *o) {
    struct vlm_diag diag = {0};
    struct vlm_backend *be = NULL;
    struct vlm_vision vis = {0};
    struct gguf_probe mm;
    FILE *embd_file = NULL;
    int status = 1;
    if (probe_gguf(o->mmproj, &mm, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        return 1;
    }
    struct vlm_backend_cpu_params bp = {.n_threads = o->n_threads};
    if (vlm_backend_cpu_new(&bp, &be, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        return 1;
    }
    struct vlm_host host = {.abi_version = VLM_PLUGIN_ABI_VERSION, .backend = be, .precision = o->vision_precision};
    if (vlm_vision_open(pick_plugin_dir(o), o->mmproj, &host, 0, &vis, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    if (o->embd_out && !(embd_file = fopen(o->embd_out, "wb"))) {
        fprintf(stderr, "vlm-run: cannot write %s: %s\n", o->embd_out, strerror(errno));
        goto out;
    }
    for (int i = 0; i < o->n_images; i++) {
        struct vlm_vision_embedding e = {0};
        if (embed_image(&vis, o->images[i], &e, &diag) != 0) {
            fprintf(stderr, "vlm-run: %s\n", diag.msg);
            goto out;
        }
        if (o->json_stats) {
            fprintf(stderr, "{\"image\":%d,\"image_tokens\":%d,\"encode_ms\":%.3f,\"threads\":%d}\n", i, e.n,
                    embedding_ms(&e), vlm_backend_n_threads(be));
        }
        const size_t n_f = (size_t)e.n * (size_t)e.n_embd;
        const bool written = !embd_file || fwrite(e.embd, sizeof(float), n_f, embd_file) == n_f;
        vlm_vision_embedding_free(&e);
        if (!written) {
            fprintf(stderr, "vlm-run: cannot write %s: %s\n", o->embd_out, strerror(errno));
            goto out;
        }
    }
    status = 0;
out:
    if (embd_file && fclose(embd_file) != 0 && status == 0) {
        fprintf(stderr, "vlm-run: cannot write %s: %s\n", o->embd_out, strerror(errno));
        status = 1;
    }
    vlm_vision_close(&vis);
    vlm_backend_free(be);
    return status;
}

int main(int argc, char **argv) {
    struct options o = {.n_predict = 128, .kv_type = VLM_TYPE_F16, .sampling = vlm_sampler_default_params()};
    vlm_log_set(log_to_stderr, NULL);
    if (parse_args(argc, argv, &o) != 0) {
        return 2;
    }
    if (o.encode_only) {
        return encode_only(&o);
    }
#ifdef VLM_SOURCE_DIR
    static const char default_model[] = VLM_SOURCE_DIR "/tests/data/golden/llama-gqa/model-f32.gguf";
    if (!o.model && access(default_model, R_OK) == 0) {
        o.model = default_model;
    }
#endif
    if (!o.model) {
        fprintf(stderr, "vlm-run: no model: give one with --model FILE.gguf\n");
        return 2;
    }
    char *prompt_buf = NULL;
    const char *prompt = o.prompt;
    if (o.prompt_file) {
        prompt = prompt_buf = read_text_file(o.prompt_file);
        if (!prompt) {
            fprintf(stderr, "vlm-run: cannot read prompt file %s\n", o.prompt_file);
            return 2;
        }
    }
    if (!prompt) {
        fprintf(stderr, "vlm-run: no prompt: give one with -p TEXT or -f FILE\n");
        return 2;
    }
    int n_markers = o.n_images > 0 ? vlm_chat_count_markers(prompt) : 0;
    if (n_markers > 0 && n_markers != o.n_images) {
        fprintf(stderr, "vlm-run: the prompt has %d %s markers but %d image%s given\n", n_markers, VLM_IMAGE_MARKER,
                o.n_images, o.n_images == 1 ? " was" : "s were");
        free(prompt_buf);
        return 2;
    }

    int status = 1;
    struct vlm_diag diag = {0};
    struct vlm_backend *be = NULL;
    struct vlm_plugin *plugin = NULL;
    struct vlm_llm llm = {0};
    struct vlm_vision vis = {0};
    struct vlm_vision_embedding images[MAX_IMAGES] = {{0}};
    struct vlm_prompt_part parts[2 * MAX_IMAGES + 1];
    int64_t starts[MAX_IMAGES + 2];
    void *session = NULL;
    int32_t *tokens = NULL;
    char *text = NULL;

    // Which plugins: the ones that list the files' architectures.
    struct gguf_probe llm_probe, mm_probe = {0};
    if (probe_gguf(o.model, &llm_probe, &diag) != 0 || (o.mmproj && probe_gguf(o.mmproj, &mm_probe, &diag) != 0)) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    const char *plugin_dir = pick_plugin_dir(&o);
    if (vlm_plugin_open_for_arch(plugin_dir, VLM_PLUGIN_KIND_LLM, llm_probe.arch, &plugin, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    struct vlm_backend_cpu_params bp = {.n_threads = o.n_threads};
    if (vlm_backend_cpu_new(&bp, &be, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    struct vlm_host host = {.abi_version = VLM_PLUGIN_ABI_VERSION, .backend = be};
    struct vlm_llm_params lp = {.n_ctx = o.n_ctx, .kv_type = o.kv_type};
    llm.ops = vlm_plugin_desc(plugin)->llm;
    double t_load = vlm_time_ms();
    if (llm.ops->load(&host, o.model, &lp, &llm.model, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    t_load = vlm_time_ms() - t_load;
    struct vlm_llm_info info;
    llm.ops->info(llm.model, &info);
    vlm_log(VLM_LOG_INFO, "%s: %s (%s), %d layers, n_embd %d, vocab %d, %.1f M params, %s weights, loaded in %.0f ms with %s "
             "(%d threads)",
             o.model, info.name[0] ? info.name : "unnamed", info.arch, info.n_layer, info.n_embd, info.n_vocab,
             (double)info.n_params / 1e6, vlm_type_name(info.weight_type), t_load, vlm_backend_name(be),
             vlm_backend_n_threads(be));

    // Images: encode and project each one (in prompt order).
    double encode_ms = 0;
    int32_t n_image_tokens = 0;
    if (o.n_images > 0) {
        struct vlm_host vision_host = host;
        vision_host.precision = o.vision_precision;
        if (vlm_vision_open(plugin_dir, o.mmproj, &vision_host, info.n_embd, &vis, &diag) != 0) {
            fprintf(stderr, "vlm-run: %s\n", diag.msg);
            goto out;
        }
        for (int i = 0; i < o.n_images; i++) {
            if (embed_image(&vis, o.images[i], &images[i], &diag) != 0) {
                fprintf(stderr, "vlm-run: %s\n", diag.msg);
                goto out;
            }
            encode_ms += embedding_ms(&images[i]);
            n_image_tokens += images[i].n;
        }
    } else if (o.mmproj) {
        vlm_log(VLM_LOG_WARN, "--mmproj given without --image: running text only");
    }

    enum vlm_chat_format fmt = o.chat_format;
    if (fmt == VLM_CHAT_AUTO) {
        fmt = vlm_chat_format_auto(n_markers, o.n_images, llm_probe.name, llm_probe.template_inst,
                                   o.mmproj && mm_probe.has_pinpoints);
    }
    text = vlm_chat_format_prompt(prompt, o.n_images, fmt);
    if (!text) {
        fprintf(stderr, "vlm-run: out of memory\n");
        goto out;
    }
    if (o.n_images > 0) {
        vlm_log(VLM_LOG_INFO, "prompt format: %s%s", vlm_chat_format_name(fmt), o.chat_format == VLM_CHAT_AUTO ? " (auto)" : "");
    }
    const struct vlm_tokenizer *tok = llm.ops->tokenizer(llm.model);
    int n_chunks = vlm_chat_tokenize(tok, text, !o.no_bos, o.parse_special, o.n_images > 0, &tokens, starts,
                                   MAX_IMAGES + 1);
    if (n_chunks < 0) {
        fprintf(stderr, "vlm-run: cannot tokenize the prompt: %s\n", vlm_strerror(n_chunks));
        goto out;
    }
    if (n_chunks != o.n_images + 1) {
        fprintf(stderr, "vlm-run: internal error: %d prompt chunks for %d images\n", n_chunks, o.n_images);
        goto out;
    }
    int n_parts = 0;
    int64_t n_total = 0;
    for (int c = 0; c < n_chunks; c++) {
        if (starts[c + 1] > starts[c]) {
            parts[n_parts++] =
                (struct vlm_prompt_part){.tokens = tokens + starts[c], .n = (int32_t)(starts[c + 1] - starts[c])};
        }
        if (c < o.n_images) {
            parts[n_parts++] = (struct vlm_prompt_part){.embd = images[c].embd, .n = images[c].n};
        }
    }
    n_total = starts[n_chunks] + n_image_tokens;
    if (n_total == 0) {
        fprintf(stderr, "vlm-run: the prompt is empty\n");
        goto out;
    }
    if (llm.ops->session_new(llm.model, 0, &session, &diag) != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    if (n_total >= llm.ops->session_n_ctx(session)) {
        fprintf(stderr, "vlm-run: the prompt has %lld tokens (%d of them image embeddings); the context holds %d\n",
                (long long)n_total, n_image_tokens, llm.ops->session_n_ctx(session));
        goto out;
    }
    if (o.show_prompt) {
        fputs(text, stdout);
    }

    struct vlm_generate_params gp = {
        .n_predict = o.n_predict, .sampling = o.sampling, .stops = o.stops, .n_stops = o.n_stops};
    struct vlm_generate_stats st;
    int rc = vlm_generate(&llm, session, parts, n_parts, &gp, print_piece, NULL, NULL, 0, &st, &diag);
    fputc('\n', stdout);
    fflush(stdout);
    if (rc != 0) {
        fprintf(stderr, "vlm-run: %s\n", diag.msg);
        goto out;
    }
    double prefill_tps = st.prefill_ms > 0 ? st.n_prompt / (st.prefill_ms / 1e3) : 0;
    double decode_tps = st.decode_ms > 0 ? st.n_decode / (st.decode_ms / 1e3) : 0;
    if (o.json_stats) {
        fprintf(stderr,
                "{\"prompt_tokens\":%d,\"prefill_ms\":%.3f,\"gen_tokens\":%d,\"decode_evals\":%d,\"decode_ms\":%.3f,"
                "\"prefill_tps\":%.2f,\"decode_tps\":%.2f,\"threads\":%d,\"stop\":\"%s\",\"images\":%d,"
                "\"image_tokens\":%d,\"encode_ms\":%.3f}\n",
                st.n_prompt, st.prefill_ms, st.n_gen, st.n_decode, st.decode_ms, prefill_tps, decode_tps,
                vlm_backend_n_threads(be), stop_reason_name(st.stop), o.n_images, n_image_tokens, encode_ms);
    } else {
        if (o.n_images > 0) {
            fprintf(stderr, "\nimages: %d (%d tokens) encoded in %.1f ms", o.n_images, n_image_tokens, encode_ms);
        }
        fprintf(stderr, "\nprompt: %d tokens in %.1f ms (%.1f tok/s) | generation: %d tokens in %.1f ms (%.1f tok/s) "
                        "| %d threads | stop: %s\n",
                st.n_prompt, st.prefill_ms, prefill_tps, st.n_gen, st.decode_ms, decode_tps, vlm_backend_n_threads(be),
                stop_reason_name(st.stop));
    }
    status = 0;

out:
    if (session) {
        llm.ops->session_free(session);
    }
    if (llm.model) {
        llm.ops->unload(llm.model);
    }
    for (int i = 0; i < MAX_IMAGES; i++) {
        vlm_vision_embedding_free(&images[i]);
    }
    vlm_vision_close(&vis);
    vlm_plugin_close(plugin);
    vlm_backend_free(be);
    free(tokens);
    free(text);
    free(prompt_buf);
    return status;
}
