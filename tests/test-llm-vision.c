// Golden test of the vision chain: tiny random-weight LLaVA 1.5 and LLaVA-NeXT (1.6) models built with transformers
// (tools/make_vlm_goldens.py) and converted to an LLM GGUF plus an mmproj GGUF, run through the encoder-clip,
// projector-mlp and llm-llama plugins as vlm-run and the daemon run them. Data format: tests/data/vlm/FORMAT.md.
//
// For every model and case: decode the image(s), preprocess (pixel_values within 0.03 max / 0.003 mean of
// transformers'), encode + project (image features within 1e-3 of their range, token count and grid equal),
// splice the prompt (input_ids equal, image runs as -1), evaluate (final logits within 1e-3 of the logit range)
// and generate 32 greedy tokens (all equal). The test fails if the golden folder is missing or incomplete.
//
// The name starts with test-llm so that it links the shared libvlm, as the plugins do.
#include <dirent.h>
#include <math.h>
#include <string.h>

#include "test-util.h"
#include "vlm/backend.h"
#include "vlm/chat.h"
#include "vlm/generate.h"
#include "vlm/image.h"
#include "vlm/plugin.h"

#define MAX_IDS 1024
#define MAX_IMAGES 4
#define N_GREEDY 32

#define PIXEL_MAX_TOL 0.03
#define PIXEL_MEAN_TOL 0.003
#define FEATURE_TOL 1e-3
#define LOGIT_TOL 1e-3
// With the vision chain in BF16 (vision_precision = bf16) on F32 goldens: weights and activations lose 16 bits
// of significand, so features move by about 2^-9 of their scale per layer; the bounds are an order above what
// this machine shows (see the printed figures).
#define BF16_FEATURE_TOL 3e-2
#define BF16_LOGIT_TOL 3e-2

struct vcase {
    char name[256];
    char images[MAX_IMAGES][256];
    int n_images;
    char prompt[4096];   // unescaped
    int32_t ids[MAX_IDS]; // -1 for each run of image tokens
    int n_ids;
    int32_t n_image_tokens[MAX_IMAGES];
    int32_t grid[MAX_IMAGES][2];
    int32_t greedy[N_GREEDY];
    float logit_range;
};

struct chain {
    const struct vlm_llm_ops *llm;
    const struct vlm_encoder_ops *enc;
    const struct vlm_projector_ops *proj;
    void *llm_model, *enc_model, *proj_model;
    struct vlm_llm_info li;
    struct vlm_encoder_info ei;
    struct vlm_projector_info pi;
};

static struct vlm_plugin *llm_plugin, *enc_plugin, *proj_plugin;
static struct vlm_backend *backend;
static enum vlm_precision g_vision_precision = VLM_PRECISION_AUTO; // for the encoder and projector

// ---- the prompt splicing vlm-run and the daemon use (vlm_chat_tokenize), as one sequence --------------------------

// Writes the spliced sequence with -1 for each image into seq; chunk c's tokens are seq positions recorded in
// starts/lens. Returns the number of chunks.
static int splice(const struct vlm_tokenizer *tok, const char *text, int32_t *seq, int *n_seq, int64_t *starts,
                  int64_t *lens, int max_chunks) {
    int32_t *ids = NULL;
    int64_t chunk[MAX_IMAGES + 2];
    int n_chunks = vlm_chat_tokenize(tok, text, true, false, true, &ids, chunk, max_chunks);
    assert_true(n_chunks > 0);
    int n = 0;
    for (int c = 0; c < n_chunks; c++) {
        int64_t len = chunk[c + 1] - chunk[c];
        assert_true(n + len + 1 <= MAX_IDS);
        memcpy(seq + n, ids + chunk[c], (size_t)len * sizeof *seq);
        starts[c] = n;
        lens[c] = len;
        n += (int)len;
        if (c + 1 < n_chunks) {
            seq[n++] = -1;
        }
    }
    free(ids);
    *n_seq = n;
    return n_chunks;
}

// ---- golden files ------------------------------------------------------------------------------------------------

static int read_ints(const char *s, int32_t *out, int max) {
    int n = 0;
    char *end;
    while (n < max) {
        long v = strtol(s, &end, 10);
        if (end == s) {
            break;
        }
        out[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

static void unescape(char *dst, size_t cap, const char *src) {
    size_t n = 0;
    for (; *src && n + 1 < cap; src++) {
        if (src[0] == '\\' && src[1] == 'n') {
            dst[n++] = '\n';
            src++;
        } else if (src[0] == '\\' && src[1] == '\\') {
            dst[n++] = '\\';
            src++;
        } else {
            dst[n++] = *src;
        }
    }
    dst[n] = 0;
}

static void case_load(struct vcase *c, const char *path, const char *name) {
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    char *text = vlm_test_read_file(path, NULL);
    int seen = 0, n_tok = 0, n_grid = 0;
    int32_t grid[2 * MAX_IMAGES];
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *sp = strchr(line, ' ');
        if (!sp) {
            continue;
        }
        *sp = 0;
        char *val = sp + 1;
        if (!strcmp(line, "image")) {
            for (char *w = strtok_r(val, " ", &sp); w && c->n_images < MAX_IMAGES; w = strtok_r(NULL, " ", &sp)) {
                snprintf(c->images[c->n_images++], sizeof c->images[0], "%s", w);
            }
            seen |= 1;
        } else if (!strcmp(line, "prompt_text")) {
            unescape(c->prompt, sizeof c->prompt, val);
            seen |= 2;
        } else if (!strcmp(line, "input_ids")) {
            c->n_ids = read_ints(val, c->ids, MAX_IDS);
            seen |= 4;
        } else if (!strcmp(line, "n_image_tokens")) {
            n_tok = read_ints(val, c->n_image_tokens, MAX_IMAGES);
            seen |= 8;
        } else if (!strcmp(line, "grid")) {
            n_grid = read_ints(val, grid, 2 * MAX_IMAGES);
            seen |= 16;
        } else if (!strcmp(line, "greedy")) {
            assert_int_equal(read_ints(val, c->greedy, N_GREEDY), N_GREEDY);
            seen |= 32;
        } else if (!strcmp(line, "logit_range")) {
            c->logit_range = strtof(val, NULL);
            seen |= 64;
        }
    }
    free(text);
    if (seen != 127) {
        fail_msg("%s: incomplete case file (fields seen: 0x%x of 0x7f)", path, (unsigned)seen);
    }
    assert_true(c->n_images >= 1);
    assert_int_equal(n_tok, c->n_images);
    assert_int_equal(n_grid, 2 * c->n_images);
    for (int i = 0; i < c->n_images; i++) {
        c->grid[i][0] = grid[2 * i];
        c->grid[i][1] = grid[2 * i + 1];
    }
    assert_true(c->n_ids > 1 && c->logit_range > 0);
}

static float *read_f32(const char *dir, const char *name, const char *suffix, size_t n_expected) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s.%s", dir, name, suffix);
    size_t size;
    float *data = (float *)vlm_test_read_file(path, &size);
    if (size != n_expected * sizeof(float)) {
        fail_msg("%s: %zu bytes, expected %zu floats", path, size, n_expected);
    }
    return data;
}

// ---- one case ------------------------------------------------------------------------------------------------------

static void run_case(const struct chain *ch, const char *model_name, const char *cases_dir, const struct vcase *c) {
    struct vlm_diag diag = {0};
    struct vlm_image_batch batch[MAX_IMAGES];
    float *embd[MAX_IMAGES] = {0};
    int64_t n_px = 0, n_feat = 0;

    // 1. decode + preprocess every image
    for (int i = 0; i < c->n_images; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/vlm/images/%s", VLM_TEST_DATA_DIR, c->images[i]);
        struct vlm_image img;
        if (vlm_image_load(path, NULL, &img, &diag) != 0) {
            fail_msg("%s: %s", path, diag.msg);
        }
        if (ch->enc->preprocess(ch->enc_model, &img, &batch[i], &diag) != 0) {
            fail_msg("%s: preprocess: %s", path, diag.msg);
        }
        vlm_image_free(&img);
        assert_int_equal(batch[i].size, ch->ei.image_size);
        n_px += (int64_t)batch[i].n_tiles * 3 * batch[i].size * batch[i].size;
        n_feat += (int64_t)c->n_image_tokens[i] * ch->pi.n_out;
    }
    float *px_gold = read_f32(cases_dir, c->name, "pixel_values.f32", (size_t)n_px);
    double px_max = 0, px_sum = 0;
    int64_t off = 0;
    for (int i = 0; i < c->n_images; i++) {
        int64_t n = (int64_t)batch[i].n_tiles * 3 * batch[i].size * batch[i].size;
        for (int64_t j = 0; j < n; j++) {
            double d = fabs((double)batch[i].pixels[j] - (double)px_gold[off + j]);
            px_max = d > px_max || isnan(d) ? d : px_max;
            px_sum += d;
        }
        off += n;
    }
    free(px_gold);
    double px_mean = px_sum / (double)n_px;

    // 2. encode + project; token counts and grids as transformers'
    float *feat_gold = read_f32(cases_dir, c->name, "features.f32", (size_t)n_feat);
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < n_feat; j++) {
        lo = feat_gold[j] < lo ? feat_gold[j] : lo;
        hi = feat_gold[j] > hi ? feat_gold[j] : hi;
    }
    double feat_range = (double)hi - (double)lo, feat_max = 0;
    double t_enc = 0;
    off = 0;
    for (int i = 0; i < c->n_images; i++) {
        assert_int_equal(batch[i].grid_w, c->grid[i][0]);
        assert_int_equal(batch[i].grid_h, c->grid[i][1]);
        int32_t n_tok = ch->proj->n_tokens(ch->proj_model, &batch[i], ch->ei.n_patches);
        if (n_tok != c->n_image_tokens[i]) {
            fail_msg("%s/%s image %d: %d image tokens, transformers has %d", model_name, c->name, i, n_tok,
                     c->n_image_tokens[i]);
        }
        size_t n_f = (size_t)batch[i].n_tiles * (size_t)ch->ei.n_patches * (size_t)ch->ei.n_embd;
        float *features = malloc(n_f * sizeof(float));
        embd[i] = malloc((size_t)n_tok * (size_t)ch->pi.n_out * sizeof(float));
        assert_non_null(features);
        assert_non_null(embd[i]);
        double t0 = vlm_time_ms();
        if (ch->enc->encode(ch->enc_model, &batch[i], features, &diag) != 0 ||
            ch->proj->project(ch->proj_model, features, &batch[i], ch->ei.n_patches, embd[i], &diag) != 0) {
            fail_msg("%s/%s: %s", model_name, c->name, diag.msg);
        }
        t_enc += vlm_time_ms() - t0;
        free(features);
        for (int64_t j = 0; j < (int64_t)n_tok * ch->pi.n_out; j++) {
            double d = fabs((double)embd[i][j] - (double)feat_gold[off + j]) / feat_range;
            feat_max = d > feat_max || isnan(d) ? d : feat_max;
        }
        off += (int64_t)n_tok * ch->pi.n_out;
    }
    free(feat_gold);

    // 3. the spliced sequence equals transformers' input_ids
    const struct vlm_tokenizer *tok = ch->llm->tokenizer(ch->llm_model);
    int32_t seq[MAX_IDS];
    int n_seq;
    int64_t starts[MAX_IMAGES + 1], lens[MAX_IMAGES + 1];
    int n_chunks = splice(tok, c->prompt, seq, &n_seq, starts, lens, MAX_IMAGES + 1);
    assert_int_equal(n_chunks, c->n_images + 1);
    bool ids_equal = n_seq == c->n_ids && !memcmp(seq, c->ids, (size_t)n_seq * sizeof seq[0]);
    if (!ids_equal) {
        print_message("  ours (%d):", n_seq);
        for (int i = 0; i < n_seq; i++) {
            print_message(" %d", seq[i]);
        }
        print_message("\n  transformers (%d):", c->n_ids);
        for (int i = 0; i < c->n_ids; i++) {
            print_message(" %d", c->ids[i]);
        }
        print_message("\n");
    }

    struct vlm_prompt_part parts[2 * MAX_IMAGES + 1];
    int n_parts = 0;
    for (int k = 0; k < n_chunks; k++) {
        if (lens[k] > 0) {
            parts[n_parts++] = (struct vlm_prompt_part){.tokens = seq + starts[k], .n = (int32_t)lens[k]};
        }
        if (k < c->n_images) {
            parts[n_parts++] = (struct vlm_prompt_part){.embd = embd[k], .n = c->n_image_tokens[k]};
        }
    }

    // 4. final logits
    float *logits_gold = read_f32(cases_dir, c->name, "logits.f32", (size_t)ch->li.n_vocab);
    float *logits = malloc((size_t)ch->li.n_vocab * sizeof(float));
    assert_non_null(logits);
    void *session;
    assert_int_equal(ch->llm->session_new(ch->llm_model, 0, &session, &diag), 0);
    for (int k = 0; k < n_parts; k++) {
        struct vlm_llm_batch b = {.tokens = parts[k].tokens, .embd = parts[k].embd, .n = parts[k].n};
        if (ch->llm->session_eval(session, &b, logits, &diag) != 0) {
            fail_msg("%s/%s: %s", model_name, c->name, diag.msg);
        }
    }
    ch->llm->session_free(session);
    double logit_max = 0;
    for (int32_t t = 0; t < ch->li.n_vocab; t++) {
        double d = fabs((double)logits[t] - (double)logits_gold[t]) / (double)c->logit_range;
        logit_max = d > logit_max || isnan(d) ? d : logit_max;
    }
    double top1 = -INFINITY, top2 = -INFINITY; // transformers' top-two margin at the first generated token
    for (int32_t t = 0; t < ch->li.n_vocab; t++) {
        double v = (double)logits_gold[t];
        if (v > top1) {
            top2 = top1;
            top1 = v;
        } else if (v > top2) {
            top2 = v;
        }
    }
    const double gold_margin = top1 - top2;
    free(logits);
    free(logits_gold);

    // 5. 32 greedy tokens through the shared generation loop
    assert_int_equal(ch->llm->session_new(ch->llm_model, 0, &session, &diag), 0);
    struct vlm_llm llm = {.ops = ch->llm, .model = ch->llm_model};
    struct vlm_generate_params gp = {.n_predict = N_GREEDY, .sampling = vlm_sampler_default_params()};
    gp.sampling.temperature = 0;
    gp.sampling.repeat_penalty = 1.0f;
    int32_t out[N_GREEDY];
    struct vlm_generate_stats st;
    assert_int_equal(vlm_generate(&llm, session, parts, n_parts, &gp, NULL, NULL, out, N_GREEDY, &st, &diag), 0);
    ch->llm->session_free(session);
    int n_match = 0;
    while (n_match < st.n_gen && n_match < N_GREEDY && out[n_match] == c->greedy[n_match]) {
        n_match++;
    }

    int32_t tokens_total = 0;
    for (int i = 0; i < c->n_images; i++) {
        tokens_total += c->n_image_tokens[i];
    }
    print_message("  %-13s %-16s px max %.4f mean %.5f | %4d img tok | feat %.1e | ids %s (%d) | logits %.1e | "
                  "greedy %d/%d | enc+proj %.1f ms\n",
                  model_name, c->name, px_max, px_mean, tokens_total, feat_max, ids_equal ? "equal" : "DIFFER",
                  n_seq, logit_max, n_match, N_GREEDY, t_enc);
    for (int i = 0; i < c->n_images; i++) {
        ch->enc->batch_free(&batch[i]);
        free(embd[i]);
    }
    assert_true(px_max < PIXEL_MAX_TOL);
    assert_true(px_mean < PIXEL_MEAN_TOL);
    assert_true(ids_equal);
    if (g_vision_precision != VLM_PRECISION_BF16) {
        assert_true(feat_max < FEATURE_TOL);
        assert_true(logit_max < LOGIT_TOL);
        assert_int_equal(n_match, N_GREEDY);
        return;
    }
    assert_true(feat_max < BF16_FEATURE_TOL);
    assert_true(logit_max < BF16_LOGIT_TOL);
    if (vlm_backend_fast_bf16(backend)) {
        assert_true(feat_max > 1e-5); // the BF16 copies ran (exact products give ~5e-7)
    }
    // The first generated token is transformers' wherever its top-two margin exceeds our logit error twice over
    // (later tokens follow from it, and from low-margin steps on they may part ways: printed, not asserted).
    if (gold_margin > 2.0 * logit_max * (double)c->logit_range) {
        assert_true(st.n_gen > 0 && out[0] == c->greedy[0]);
    }
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_model(const char *dir, const char *model_name) {
    struct vlm_diag diag = {0};
    struct chain ch = {0};
    struct vlm_host host = {.abi_version = VLM_PLUGIN_ABI_VERSION, .backend = backend};
    struct vlm_host vision_host = host;
    vision_host.precision = g_vision_precision;
    struct vlm_llm_params lp = {.n_ctx = 2048, .kv_type = VLM_TYPE_F32};
    char llm_path[1200], mm_path[1200], cases_dir[1200];
    snprintf(llm_path, sizeof llm_path, "%s/llm-f32.gguf", dir);
    snprintf(mm_path, sizeof mm_path, "%s/mmproj-f32.gguf", dir);
    snprintf(cases_dir, sizeof cases_dir, "%s/cases", dir);
    ch.llm = vlm_plugin_desc(llm_plugin)->llm;
    ch.enc = vlm_plugin_desc(enc_plugin)->encoder;
    ch.proj = vlm_plugin_desc(proj_plugin)->projector;
    if (ch.llm->load(&host, llm_path, &lp, &ch.llm_model, &diag) != 0 ||
        ch.enc->load(&vision_host, mm_path, &ch.enc_model, &diag) != 0 ||
        ch.proj->load(&vision_host, mm_path, &ch.proj_model, &diag) != 0) {
        fail_msg("%s: %s", model_name, diag.msg);
    }
    ch.llm->info(ch.llm_model, &ch.li);
    ch.enc->info(ch.enc_model, &ch.ei);
    ch.proj->info(ch.proj_model, &ch.pi);
    assert_int_equal(ch.ei.n_embd, ch.pi.n_in);
    assert_int_equal(ch.pi.n_out, ch.li.n_embd);

    DIR *d = opendir(cases_dir);
    if (!d) {
        fail_msg("%s: no cases folder", dir);
    }
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t len = strlen(e->d_name);
        if (len > 4 && !strcmp(e->d_name + len - 4, ".txt")) {
            names[n++] = strndup(e->d_name, len - 4);
        }
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    for (int i = 0; i < n; i++) {
        char path[1600];
        snprintf(path, sizeof path, "%s/%s.txt", cases_dir, names[i]);
        struct vcase *c = malloc(sizeof *c);
        assert_non_null(c);
        case_load(c, path, names[i]);
        run_case(&ch, model_name, cases_dir, c);
        free(c);
        free(names[i]);
    }
    ch.proj->unload(ch.proj_model);
    ch.enc->unload(ch.enc_model);
    ch.llm->unload(ch.llm_model);
    if (n == 0) {
        fail_msg("%s: no cases", cases_dir);
    }
    return n;
}

static void run_goldens(enum vlm_precision vision_precision) {
    g_vision_precision = vision_precision;
    char root[512];
    snprintf(root, sizeof root, "%s/vlm/models", VLM_TEST_DATA_DIR);
    DIR *d = opendir(root);
    if (!d) {
        fail_msg("%s: golden folder missing (tools/make_vlm_goldens.py makes it)", root);
    }
    char *names[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        if (e->d_name[0] != '.') {
            names[n++] = strdup(e->d_name);
        }
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    int n_cases = 0;
    bool have15 = false, have16 = false;
    for (int i = 0; i < n; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%.500s/%.255s", root, names[i]);
        n_cases += run_model(dir, names[i]);
        have15 = have15 || strstr(names[i], "llava15");
        have16 = have16 || strstr(names[i], "llava16");
        free(names[i]);
    }
    print_message("  %d golden models, %d cases checked\n", n, n_cases);
    assert_true(have15 && have16);
}

static void test_goldens(void **state) {
    (void)state;
    run_goldens(VLM_PRECISION_AUTO); // F32 files: exact products
}

// The same goldens with the encoder and projector in BF16 (the default for F16 files on CPUs with AVX512-BF16,
// forced here on the F32 files): bounded drift, and the same first token wherever transformers' margin allows.
static void test_goldens_bf16(void **state) {
    (void)state;
    run_goldens(VLM_PRECISION_BF16);
}

// Files that are not vision models are refused with a clear error, not loaded half-way.
static void test_refuses_other_files(void **state) {
    (void)state;
    struct vlm_diag diag = {0};
    struct vlm_host host = {.abi_version = VLM_PLUGIN_ABI_VERSION, .backend = backend};
    char path[512];
    snprintf(path, sizeof path, "%s/vlm/models/llava15-tiny/llm-f32.gguf", VLM_TEST_DATA_DIR);
    void *m = NULL;
    assert_int_equal(vlm_plugin_desc(enc_plugin)->encoder->load(&host, path, &m, &diag), VLM_EUNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(diag.msg, "clip"));
    assert_int_equal(vlm_plugin_desc(proj_plugin)->projector->load(&host, path, &m, &diag), VLM_EUNSUPPORTED);
    assert_null(m);
}

static int setup(void **state) {
    (void)state;
    struct vlm_diag diag = {0};
    if (vlm_plugin_open_for_arch(VLM_PLUGIN_BUILD_DIR, VLM_PLUGIN_KIND_LLM, "llama", &llm_plugin, &diag) != 0 ||
        vlm_plugin_open_for_arch(VLM_PLUGIN_BUILD_DIR, VLM_PLUGIN_KIND_ENCODER, "clip", &enc_plugin, &diag) != 0 ||
        vlm_plugin_open_for_arch(VLM_PLUGIN_BUILD_DIR, VLM_PLUGIN_KIND_PROJECTOR, "clip", &proj_plugin, &diag) != 0) {
        fprintf(stderr, "%s\n", diag.msg);
        return -1;
    }
    struct vlm_backend_cpu_params bp = {.n_threads = 2};
    if (vlm_backend_cpu_new(&bp, &backend, &diag) != 0) {
        fprintf(stderr, "%s\n", diag.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    vlm_backend_free(backend);
    vlm_plugin_close(llm_plugin);
    vlm_plugin_close(enc_plugin);
    vlm_plugin_close(proj_plugin);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens),
        cmocka_unit_test(test_goldens_bf16),
        cmocka_unit_test(test_refuses_other_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
