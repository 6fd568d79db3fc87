// Golden test of the LLM path: tiny random-weight Llama/Mistral models built with transformers
// (tools/make_llm_goldens.py), converted by our converter, run through the llm-llama plugin as the daemon runs
// them. Compares every prompt position's logits and 32 greedy tokens with what transformers produced.
//
// Bounds (issue 2): F32 logits within 1e-3 of the logit range and all 32 greedy tokens equal; F16 within 1%
// and Q8_0 within 5% of the range, with greedy tokens equal up to the first step whose transformers top-two
// margin is below that bound (after a legitimately different choice the sequences are not comparable), and,
// teacher-forced on transformers' tokens, our argmax equal at every step whose margin exceeds the bound.
#include <dirent.h>
#include <math.h>
#include <string.h>

#include "test-util.h"
#include "vlm/backend.h"
#include "vlm/generate.h"
#include "vlm/plugin.h"

#define MAX_PROMPT 256
#define N_GREEDY 32

struct golden {
    char dir[1024];
    char name[256];
    char prompt_text[1024];
    int32_t n_vocab;
    int32_t prompt[MAX_PROMPT];
    int32_t n_prompt;
    int32_t greedy[N_GREEDY];
    float margin[N_GREEDY];
    float logit_range;
    float *logits; // [n_prompt, n_vocab]
};

static struct vlm_plugin *plugin;
static struct vlm_backend *backend;

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

static void golden_load(struct golden *g, const char *dir, const char *name) {
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "%s", dir);
    snprintf(g->name, sizeof g->name, "%s", name);
    char path[1200];
    snprintf(path, sizeof path, "%s/golden.txt", dir);
    char *text = vlm_test_read_file(path, NULL);
    int seen = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *sp = strchr(line, ' ');
        if (!sp) {
            continue;
        }
        *sp = 0;
        const char *val = sp + 1;
        if (!strcmp(line, "n_vocab")) {
            g->n_vocab = atoi(val);
            seen |= 1;
        } else if (!strcmp(line, "prompt_text")) {
            snprintf(g->prompt_text, sizeof g->prompt_text, "%s", val);
            seen |= 32;
        } else if (!strcmp(line, "prompt")) {
            g->n_prompt = read_ints(val, g->prompt, MAX_PROMPT);
            seen |= 2;
        } else if (!strcmp(line, "greedy")) {
            assert_int_equal(read_ints(val, g->greedy, N_GREEDY), N_GREEDY);
            seen |= 4;
        } else if (!strcmp(line, "greedy_margin")) {
            char *end;
            for (int i = 0; i < N_GREEDY; i++) {
                g->margin[i] = strtof(val, &end);
                assert_true(end != val);
                val = end;
            }
            seen |= 8;
        } else if (!strcmp(line, "logit_range")) {
            g->logit_range = strtof(val, NULL);
            seen |= 16;
        }
    }
    free(text);
    assert_int_equal(seen, 63);
    assert_true(g->n_prompt > 1 && g->n_vocab > 0 && g->logit_range > 0);
    snprintf(path, sizeof path, "%s/logits.f32", dir);
    size_t size;
    g->logits = (float *)vlm_test_read_file(path, &size);
    assert_int_equal(size, (size_t)g->n_prompt * g->n_vocab * sizeof(float));
}

struct check {
    double max_rel;   // max |ours - theirs| / logit_range over all prompt positions
    int n_compared;   // greedy steps compared
    int n_match;      // of which equal
    int first_mismatch;
};

// Runs one GGUF variant of a golden model. `tol` is the bound as a fraction of the logit range.
static struct check run_variant(const struct golden *g, const char *file, enum vlm_type kv_type, double tol) {
    struct check c = {0, 0, 0, -1};
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", g->dir, file);
    const struct vlm_llm_ops *ops = vlm_plugin_desc(plugin)->llm;
    struct vlm_host host = {.abi_version = VLM_PLUGIN_ABI_VERSION, .backend = backend};
    struct vlm_llm_params lp = {.n_ctx = 256, .kv_type = kv_type};
    struct vlm_diag diag = {0};
    void *model = NULL;
    if (ops->load(&host, path, &lp, &model, &diag) != 0) {
        fail_msg("%s: %s", path, diag.msg);
    }
    struct vlm_llm_info info;
    ops->info(model, &info);
    assert_int_equal(info.n_vocab, g->n_vocab);

    // 0. our tokenizer, built from the GGUF metadata, gives transformers' prompt ids (with BOS)
    int32_t ids[MAX_PROMPT];
    const struct vlm_tokenizer *tok = ops->tokenizer(model);
    int64_t n_ids = vlm_tokenize(tok, g->prompt_text, strlen(g->prompt_text), true, false, ids, MAX_PROMPT);
    assert_int_equal(n_ids, g->n_prompt);
    assert_memory_equal(ids, g->prompt, (size_t)g->n_prompt * sizeof ids[0]);

    // 1. logits at every prompt position
    void *session;
    assert_int_equal(ops->session_new(model, 0, &session, &diag), 0);
    float *logits = malloc((size_t)g->n_prompt * g->n_vocab * sizeof(float));
    assert_non_null(logits);
    struct vlm_llm_batch b = {.tokens = g->prompt, .n = g->n_prompt, .logits_all = true};
    assert_int_equal(ops->session_eval(session, &b, logits, &diag), 0);
    for (size_t i = 0; i < (size_t)g->n_prompt * g->n_vocab; i++) {
        double d = fabs((double)logits[i] - (double)g->logits[i]) / (double)g->logit_range;
        if (!(d <= c.max_rel)) { // also catches NaN
            c.max_rel = isnan(d) ? (double)INFINITY : d;
        }
    }
    free(logits);
    ops->session_free(session);

    // 2. greedy generation through the shared generation loop
    assert_int_equal(ops->session_new(model, 0, &session, &diag), 0);
    struct vlm_llm llm = {.ops = ops, .model = model};
    struct vlm_prompt_part part = {.tokens = g->prompt, .n = g->n_prompt};
    struct vlm_generate_params gp = {.n_predict = N_GREEDY, .sampling = vlm_sampler_default_params()};
    gp.sampling.temperature = 0;
    gp.sampling.repeat_penalty = 1.0f;
    int32_t out[N_GREEDY];
    struct vlm_generate_stats st;
    // EOS may be among the golden tokens (generation there did not stop at EOS), so compare step by step only
    // over what we produced; the golden generator disables EOS stopping and so do the tiny vocabularies' ids.
    assert_int_equal(vlm_generate(&llm, session, &part, 1, &gp, NULL, NULL, out, N_GREEDY, &st, &diag), 0);
    for (int i = 0; i < st.n_gen && i < N_GREEDY; i++) {
        c.n_compared++;
        if (out[i] == g->greedy[i]) {
            c.n_match++;
            continue;
        }
        c.first_mismatch = i;
        break;
    }
    // Free-running generation may legitimately part ways at a step whose margin is below the bound; every
    // step before it must match.
    int must = N_GREEDY;
    for (int i = 0; i < N_GREEDY; i++) {
        if ((double)g->margin[i] < tol * (double)g->logit_range) {
            must = i;
            break;
        }
    }
    assert_true(c.n_match >= must || c.n_match == st.n_gen);
    ops->session_free(session);

    // Teacher forcing: feed the prompt plus transformers' 32 tokens and check our argmax at every step whose
    // margin exceeds the bound. The prefix is the reference's at each step, so every step is compared.
    assert_int_equal(ops->session_new(model, 0, &session, &diag), 0);
    int32_t n_all = g->n_prompt + N_GREEDY - 1;
    int32_t seq[MAX_PROMPT + N_GREEDY];
    memcpy(seq, g->prompt, (size_t)g->n_prompt * sizeof seq[0]);
    memcpy(seq + g->n_prompt, g->greedy, (N_GREEDY - 1) * sizeof seq[0]);
    float *all = malloc((size_t)n_all * g->n_vocab * sizeof(float));
    assert_non_null(all);
    struct vlm_llm_batch tb = {.tokens = seq, .n = n_all, .logits_all = true};
    assert_int_equal(ops->session_eval(session, &tb, all, &diag), 0);
    int n_forced = 0, n_forced_ok = 0;
    for (int i = 0; i < N_GREEDY; i++) {
        const float *row = all + (size_t)(g->n_prompt - 1 + i) * g->n_vocab;
        int32_t best = 0;
        for (int32_t t = 1; t < g->n_vocab; t++) {
            best = row[t] > row[best] ? t : best;
        }
        if ((double)g->margin[i] > tol * (double)g->logit_range) {
            n_forced++;
            n_forced_ok += best == g->greedy[i];
            if (best != g->greedy[i]) {
                print_message("  step %d: ours %d, transformers %d (margin %.3g)\n", i, best, g->greedy[i],
                              (double)g->margin[i]);
            }
        }
    }
    free(all);
    print_message("  %-12s %-16s max|dlogit|/range = %.2e (bound %.0e)  free-running: %d/%d equal (%d required)  "
                  "teacher-forced: %d/%d steps above the margin bound equal\n",
                  g->name, file, c.max_rel, tol, c.n_match, N_GREEDY, must, n_forced_ok, n_forced);
    assert_true(c.max_rel < tol);
    assert_int_equal(n_forced_ok, n_forced);
    ops->session_free(session);
    ops->unload(model);
    return c;
}

static void test_goldens(void **state) {
    (void)state;
    char root[512];
    snprintf(root, sizeof root, "%s/golden", VLM_TEST_DATA_DIR);
    DIR *d = opendir(root);
    assert_non_null(d);
    struct dirent *e;
    int n_models = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char dir[1024];
        snprintf(dir, sizeof dir, "%.500s/%.255s", root, e->d_name);
        char probe[1200];
        snprintf(probe, sizeof probe, "%s/golden.txt", dir);
        FILE *f = fopen(probe, "r");
        if (!f) {
            continue;
        }
        fclose(f);
        struct golden g;
        golden_load(&g, dir, e->d_name);
        struct check c = run_variant(&g, "model-f32.gguf", VLM_TYPE_F32, 1e-3);
        assert_int_equal(c.n_match, N_GREEDY); // F32: every token
        run_variant(&g, "model-f16.gguf", VLM_TYPE_F16, 1e-2);
        run_variant(&g, "model-q8_0.gguf", VLM_TYPE_F16, 5e-2);
        free(g.logits);
        n_models++;
    }
    closedir(d);
    print_message("  %d golden models checked\n", n_models);
    assert_true(n_models >= 4);
}

static int setup(void **state) {
    (void)state;
    struct vlm_diag diag = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/llm-llama.so", VLM_PLUGIN_BUILD_DIR);
    if (vlm_plugin_open(path, &plugin, &diag) != 0) {
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
    vlm_plugin_close(plugin);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
