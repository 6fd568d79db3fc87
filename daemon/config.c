// The configuration: defaults, then the INI file (inih), then the command line. Every [daemon] key has a flag
// of the same name (--queue-depth for queue_depth); chains come from [chain NAME] sections or --chain.
// docs/vlmd.conf.example lists every key.
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "daemon/vlmd.h"

#define CHAINS_MAX 256
#define OUTPUT_PAUSE_DEFAULT ((size_t)256 << 10)

struct parse_state {
    struct vlm__config *cfg;
    char reason[200]; // first error
    bool failed;
};

bool vlm__name_valid(const char *name, size_t len) {
    if (len == 0 || len > VLM_PROTO_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-') {
            return false;
        }
    }
    return true;
}

static bool copy_str(char *dst, size_t cap, const char *v) {
    size_t n = strlen(v);
    if (n >= cap) {
        return false;
    }
    memcpy(dst, v, n + 1);
    return true;
}

static bool parse_long(const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || errno || x < lo || x > hi) {
        return false;
    }
    *out = x;
    return true;
}

// A byte count with an optional K, M or G suffix (powers of 1024).
static bool parse_size(const char *v, size_t lo, size_t hi, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v == 0 || *v == '-' || errno || end == v) {
        return false;
    }
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k') {
        mul = 1024ull;
        end++;
    } else if (*end == 'M' || *end == 'm') {
        mul = 1024ull * 1024;
        end++;
    } else if (*end == 'G' || *end == 'g') {
        mul = 1024ull * 1024 * 1024;
        end++;
    }
    if (*end != 0 || x > (unsigned long long)SIZE_MAX / mul || x * mul < lo || x * mul > hi) {
        return false;
    }
    *out = (size_t)(x * mul);
    return true;
}

static int set_daemon_key(struct vlm__config *cfg, const char *key, const char *v, char *why, size_t cap) {
    long n;
    if (!strcmp(key, "socket")) {
        if (v[0] == 0 || !copy_str(cfg->socket_path, sizeof cfg->socket_path, v)) {
            snprintf(why, cap, "socket: expected a path of 1..%zu bytes", sizeof cfg->socket_path - 1);
            return -1;
        }
    } else if (!strcmp(key, "plugin_dir")) {
        if (v[0] == 0 || !copy_str(cfg->plugin_dir, sizeof cfg->plugin_dir, v)) {
            snprintf(why, cap, "plugin_dir: expected a directory");
            return -1;
        }
    } else if (!strcmp(key, "model_dir")) {
        if (v[0] == 0 || !copy_str(cfg->model_dir, sizeof cfg->model_dir, v)) {
            snprintf(why, cap, "model_dir: expected a directory");
            return -1;
        }
    } else if (!strcmp(key, "default_chain")) {
        if (!vlm__name_valid(v, strlen(v))) {
            snprintf(why, cap, "default_chain: expected a chain name ([A-Za-z0-9._-], 1..255 bytes)");
            return -1;
        }
        copy_str(cfg->default_chain, sizeof cfg->default_chain, v);
    } else if (!strcmp(key, "threads")) {
        if (!parse_long(v, 0, 1024, &n)) {
            snprintf(why, cap, "threads: expected 0 (all CPUs) .. 1024");
            return -1;
        }
        cfg->threads = (int)n;
    } else if (!strcmp(key, "ctx_size")) {
        if (!parse_long(v, 0, 1 << 24, &n)) {
            snprintf(why, cap, "ctx_size: expected 0 (the model's default) .. 16777216");
            return -1;
        }
        cfg->ctx_size = (int32_t)n;
    } else if (!strcmp(key, "kv_type")) {
        if (strcmp(v, "f16") && strcmp(v, "f32")) {
            snprintf(why, cap, "kv_type: expected f16 or f32");
            return -1;
        }
        cfg->kv_f16 = !strcmp(v, "f16");
    } else if (!strcmp(key, "vision_precision")) {
        if (vlm_precision_parse(v, &cfg->vision_precision) != 0) {
            snprintf(why, cap, "vision_precision: expected auto, exact or bf16");
            return -1;
        }
    } else if (!strcmp(key, "queue_depth")) {
        if (!parse_long(v, 0, 65536, &n)) {
            snprintf(why, cap, "queue_depth: expected 0 .. 65536");
            return -1;
        }
        cfg->queue_depth = (uint32_t)n;
    } else if (!strcmp(key, "max_clients")) {
        if (!parse_long(v, 1, 1000000, &n)) {
            snprintf(why, cap, "max_clients: expected 1 .. 1000000");
            return -1;
        }
        cfg->max_clients = (uint32_t)n;
    } else if (!strcmp(key, "max_message")) {
        if (!parse_size(v, 64, (size_t)1 << 30, &cfg->max_message)) {
            snprintf(why, cap, "max_message: expected a size of 64 bytes .. 1G (suffixes K, M, G)");
            return -1;
        }
    } else if (!strcmp(key, "max_output")) {
        if (!parse_size(v, 4096, (size_t)1 << 32, &cfg->max_output)) {
            snprintf(why, cap, "max_output: expected a size of 4K .. 4G (suffixes K, M, G)");
            return -1;
        }
    } else if (!strcmp(key, "output_pause")) {
        // Below max_output: checked once every key is read (either may come from the file or a flag).
        if (!parse_size(v, 1024, (size_t)1 << 32, &cfg->output_pause)) {
            snprintf(why, cap, "output_pause: expected a size of 1K .. 4G, below max_output (suffixes K, M, G)");
            return -1;
        }
    } else if (!strcmp(key, "shutdown_timeout") || !strcmp(key, "frame_timeout") || !strcmp(key, "idle_timeout") ||
               !strcmp(key, "send_timeout")) {
        char *end;
        double t = strtod(v, &end);
        if (*v == 0 || *end != 0 || !(t >= 0 && t <= 3600)) {
            snprintf(why, cap, "%s: expected seconds, 0 .. 3600", key);
            return -1;
        }
        double *dst = key[0] == 'f'   ? &cfg->frame_timeout_s
                      : key[0] == 'i' ? &cfg->idle_timeout_s
                      : key[1] == 'h' ? &cfg->shutdown_timeout_s
                                      : &cfg->send_timeout_s;
        *dst = t;
    } else if (!strcmp(key, "log_level")) {
        static const struct {
            const char *name;
            enum vlm_log_level level;
        } levels[] = {{"error", VLM_LOG_ERROR}, {"warn", VLM_LOG_WARN}, {"info", VLM_LOG_INFO}, {"debug", VLM_LOG_DEBUG}};
        size_t i;
        for (i = 0; i < sizeof levels / sizeof levels[0] && strcmp(v, levels[i].name); i++) {
        }
        if (i == sizeof levels / sizeof levels[0]) {
            snprintf(why, cap, "log_level: expected error, warn, info or debug");
            return -1;
        }
        cfg->log_level = levels[i].level;
    } else if (!strcmp(key, "allow_users") || !strcmp(key, "allow_groups")) {
        return vlm__access_set(&cfg->access, key[6] == 'g', v, why, cap); // access.c
    } else {
        snprintf(why, cap, "unknown key '%s' in [daemon]", key);
        return -1;
    }
    return 0;
}

static struct vlm__chain_spec *chain_get(struct vlm__config *cfg, const char *name, char *why, size_t cap) {
    for (uint32_t i = 0; i < cfg->n_chains; i++) {
        if (!strcmp(cfg->chains[i].name, name)) {
            return &cfg->chains[i];
        }
    }
    if (!vlm__name_valid(name, strlen(name))) {
        snprintf(why, cap, "chain name '%.64s': expected 1..255 bytes of [A-Za-z0-9._-]", name);
        return NULL;
    }
    if (cfg->n_chains == CHAINS_MAX) {
        snprintf(why, cap, "more than %d chains", CHAINS_MAX);
        return NULL;
    }
    struct vlm__chain_spec *p = realloc(cfg->chains, (cfg->n_chains + 1) * sizeof *p);
    if (!p) {
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    cfg->chains = p;
    struct vlm__chain_spec *c = &p[cfg->n_chains++];
    memset(c, 0, sizeof *c);
    copy_str(c->name, sizeof c->name, name);
    copy_str(c->template_name, sizeof c->template_name, "auto");
    return c;
}

static int set_model(struct vlm__slot_spec *s, const char *key, const char *v, char *why, size_t cap) {
    if (v[0] == 0 || !copy_str(s->model, sizeof s->model, v)) {
        snprintf(why, cap, "%s: expected a model file name of 1..%d bytes", key, VLMD_MODEL_MAX - 1);
        return -1;
    }
    return 0;
}

static int set_plugin(struct vlm__slot_spec *s, const char *key, const char *v, char *why, size_t cap) {
    if (!vlm__name_valid(v, strlen(v))) {
        snprintf(why, cap, "%s: expected a plugin name", key);
        return -1;
    }
    copy_str(s->plugin, sizeof s->plugin, v);
    return 0;
}

static int set_chain_key(struct vlm__chain_spec *c, const char *key, const char *v, char *why, size_t cap) {
    if (!strcmp(key, "llm")) {
        return set_model(&c->slot[VLM_PLUGIN_KIND_LLM], key, v, why, cap);
    }
    if (!strcmp(key, "mmproj")) { // llama.cpp's layout: encoder and projector in one file
        return set_model(&c->slot[VLM_PLUGIN_KIND_ENCODER], key, v, why, cap) ||
               set_model(&c->slot[VLM_PLUGIN_KIND_PROJECTOR], key, v, why, cap);
    }
    if (!strcmp(key, "encoder")) {
        return set_model(&c->slot[VLM_PLUGIN_KIND_ENCODER], key, v, why, cap);
    }
    if (!strcmp(key, "projector")) {
        return set_model(&c->slot[VLM_PLUGIN_KIND_PROJECTOR], key, v, why, cap);
    }
    if (!strcmp(key, "llm_plugin")) {
        return set_plugin(&c->slot[VLM_PLUGIN_KIND_LLM], key, v, why, cap);
    }
    if (!strcmp(key, "encoder_plugin")) {
        return set_plugin(&c->slot[VLM_PLUGIN_KIND_ENCODER], key, v, why, cap);
    }
    if (!strcmp(key, "projector_plugin")) {
        return set_plugin(&c->slot[VLM_PLUGIN_KIND_PROJECTOR], key, v, why, cap);
    }
    if (!strcmp(key, "template")) {
        if (strcmp(v, "auto") && strcmp(v, "none") && strcmp(v, "vicuna") && strcmp(v, "mistral")) {
            snprintf(why, cap, "template: expected auto, none, vicuna or mistral");
            return -1;
        }
        copy_str(c->template_name, sizeof c->template_name, v);
        return 0;
    }
    snprintf(why, cap, "unknown key '%s' in a chain section", key);
    return -1;
}

static int on_ini(void *user, const char *section, const char *key, const char *value) {
    struct parse_state *st = user;
    if (st->failed) {
        return 0;
    }
    int rc = -1;
    if (!strcmp(section, "daemon")) {
        rc = set_daemon_key(st->cfg, key, value, st->reason, sizeof st->reason);
    } else if (!strncmp(section, "chain ", 6)) {
        struct vlm__chain_spec *c = chain_get(st->cfg, section + 6, st->reason, sizeof st->reason);
        rc = c ? set_chain_key(c, key, value, st->reason, sizeof st->reason) : -1;
    } else {
        snprintf(st->reason, sizeof st->reason, "unknown section [%.64s] (expected [daemon] or [chain NAME])",
                 section);
    }
    if (rc) {
        st->failed = true;
        return 0;
    }
    return 1;
}

// --chain NAME=llm.gguf[,mmproj.gguf]: paths as given, as a person typing the command expects.
static int set_cli_chain(struct vlm__config *cfg, const char *v, char *why, size_t cap) {
    const char *eq = strchr(v, '=');
    char name[VLM_PROTO_NAME_MAX + 1];
    if (!eq || eq == v || (size_t)(eq - v) > VLM_PROTO_NAME_MAX) {
        snprintf(why, cap, "expected NAME=llm.gguf[,mmproj.gguf]");
        return -1;
    }
    memcpy(name, v, (size_t)(eq - v));
    name[eq - v] = 0;
    struct vlm__chain_spec *c = chain_get(cfg, name, why, cap);
    if (!c) {
        return -1;
    }
    struct vlm__chain_spec fresh = {0};
    copy_str(fresh.name, sizeof fresh.name, name);
    copy_str(fresh.template_name, sizeof fresh.template_name, c->template_name);
    const char *llm = eq + 1;
    const char *comma = strchr(llm, ',');
    size_t llm_len = comma ? (size_t)(comma - llm) : strlen(llm);
    if (llm_len == 0 || llm_len >= VLMD_MODEL_MAX) {
        snprintf(why, cap, "expected NAME=llm.gguf[,mmproj.gguf]");
        return -1;
    }
    memcpy(fresh.slot[VLM_PLUGIN_KIND_LLM].model, llm, llm_len);
    if (comma && (set_chain_key(&fresh, "mmproj", comma + 1, why, cap) || strchr(comma + 1, ','))) {
        snprintf(why, cap, "expected NAME=llm.gguf[,mmproj.gguf]");
        return -1;
    }
    for (int k = 1; k < VLMD_SLOTS; k++) {
        fresh.slot[k].paths = true;
    }
    *c = fresh;
    return 0;
}

const struct vlm__chain_spec *vlm__config_chain(const struct vlm__config *cfg, const char *name) {
    for (uint32_t i = 0; i < cfg->n_chains; i++) {
        if (!strcmp(cfg->chains[i].name, name)) {
            return &cfg->chains[i];
        }
    }
    return NULL;
}

static void set_defaults(struct vlm__config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    copy_str(cfg->socket_path, sizeof cfg->socket_path, "/run/vlmd/vlmd.sock");
    copy_str(cfg->plugin_dir, sizeof cfg->plugin_dir, vlm_plugin_default_dir());
    copy_str(cfg->model_dir, sizeof cfg->model_dir, "/var/lib/vlmd/models");
    cfg->kv_f16 = true; // as vlm-run, so both give the same tokens
    cfg->queue_depth = 64;
    cfg->max_clients = 256;
    cfg->max_message = vlm_proto_default_limits().max_message;
    cfg->max_output = 8u << 20;
    cfg->output_pause = 0;    // unset: 256K, or a quarter of a smaller max_output (vlm__config_load)
    cfg->send_timeout_s = 30; // nginx's send_timeout default
    cfg->shutdown_timeout_s = 10;
    cfg->frame_timeout_s = 30; // nginx's client_header_timeout is 60 s; our messages are one frame, sent at once
    cfg->idle_timeout_s = 0;   // as Redis's timeout: clients such as vlmctl --watch may hold a connection open
    cfg->log_level = vlm_log_get_level();
}

void vlm__config_free(struct vlm__config *cfg) {
    free(cfg->chains);
    cfg->chains = NULL;
    cfg->n_chains = 0;
}

int vlm__config_load(const char *file, const struct vlm__override *ov, int n_ov, struct vlm__config *out,
                     struct vlm_diag *diag) {
    struct vlm__config cfg;
    set_defaults(&cfg);
    struct parse_state st = {.cfg = &cfg};
    if (file && file[0]) {
        copy_str(cfg.file, sizeof cfg.file, file);
        FILE *f = fopen(file, "r");
        if (!f) {
            int e = errno;
            vlm__config_free(&cfg);
            return vlm_diag_set(diag, VLM_EINVAL, "%s: cannot open: %s", file, strerror(e));
        }
        int line = ini_parse_file(f, on_ini, &st);
        fclose(f);
        if (line != 0) {
            vlm__config_free(&cfg);
            return vlm_diag_set(diag, VLM_EINVAL, "%s:%d: %s", file, line,
                                st.failed ? st.reason : "syntax error (expected [section] or key = value)");
        }
    }
    for (int i = 0; i < n_ov; i++) {
        int rc = !strcmp(ov[i].key, "chain") ? set_cli_chain(&cfg, ov[i].value, st.reason, sizeof st.reason)
                                             : set_daemon_key(&cfg, ov[i].key, ov[i].value, st.reason,
                                                              sizeof st.reason);
        if (rc) {
            char flag[64];
            snprintf(flag, sizeof flag, "--%s", ov[i].key);
            for (char *p = flag; *p; p++) {
                *p = *p == '_' ? '-' : *p;
            }
            vlm__config_free(&cfg);
            return vlm_diag_set(diag, VLM_EINVAL, "%s %s: %s", flag, ov[i].value, st.reason);
        }
    }
    for (uint32_t i = 0; i < cfg.n_chains; i++) {
        const struct vlm__chain_spec *c = &cfg.chains[i];
        if (!c->slot[VLM_PLUGIN_KIND_LLM].model[0]) {
            vlm__config_free(&cfg);
            return vlm_diag_set(diag, VLM_EINVAL, "%s: chain '%s' has no llm", file && file[0] ? file : "config",
                                c->name);
        }
        if (!c->slot[VLM_PLUGIN_KIND_ENCODER].model[0] != !c->slot[VLM_PLUGIN_KIND_PROJECTOR].model[0]) {
            vlm__config_free(&cfg);
            return vlm_diag_set(diag, VLM_EINVAL, "%s: chain '%s' needs both an encoder and a projector (or mmproj)",
                                file && file[0] ? file : "config", c->name);
        }
    }
    if (cfg.output_pause == 0) {
        cfg.output_pause = cfg.max_output / 4 < OUTPUT_PAUSE_DEFAULT ? cfg.max_output / 4 : OUTPUT_PAUSE_DEFAULT;
    } else if (cfg.output_pause >= cfg.max_output) {
        vlm__config_free(&cfg);
        return vlm_diag_set(diag, VLM_EINVAL,
                            "%s: output_pause (%zu bytes) must be below max_output (%zu bytes): a client is paused "
                            "before it is dropped",
                            file && file[0] ? file : "config", cfg.output_pause, cfg.max_output);
    }
    if (cfg.default_chain[0] && !vlm__config_chain(&cfg, cfg.default_chain)) {
        vlm__config_free(&cfg);
        return vlm_diag_set(diag, VLM_EINVAL, "default_chain '%s' is not a configured chain", cfg.default_chain);
    }
    *out = cfg;
    return 0;
}
