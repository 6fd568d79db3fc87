// Sampler: greedy, top-k/top-p/min-p filtering, temperature, repetition penalty, seeding, and stop strings.
#include "test-util.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "vlm/sampler.h"

static struct vlm_sampler_params params(float temp, int32_t top_k, float top_p, float min_p, uint64_t seed) {
    struct vlm_sampler_params p = vlm_sampler_default_params();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

static struct vlm_sampler *new_sampler(struct vlm_sampler_params p, int32_t n_vocab) {
    struct vlm_sampler *s = NULL;
    assert_int_equal(vlm_sampler_new(&p, n_vocab, &s), 0);
    assert_non_null(s);
    return s;
}

static int32_t argmax(const float *x, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[b]) {
            b = i;
        }
    }
    return b;
}

// Logits whose softmax is exactly `probs` (up to a constant).
static void logits_from_probs(const double *probs, float *logits, int n) {
    for (int i = 0; i < n; i++) {
        logits[i] = (float)log(probs[i]);
    }
}

// Draws `n_draws` tokens and counts them.
static void histogram(struct vlm_sampler *s, const float *logits, int n, int n_draws, int *counts) {
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int d = 0; d < n_draws; d++) {
        int32_t t = vlm_sampler_sample(s, logits);
        assert_true(t >= 0 && t < n);
        counts[t]++;
    }
}

// Pearson chi-square of counts against expected probabilities (cells with p = 0 must have no draws).
static double chi_square(const int *counts, const double *p, int n, int n_draws) {
    double chi = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] == 0) {
            assert_int_equal(counts[i], 0);
            continue;
        }
        double e = p[i] * n_draws;
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

static void test_defaults(void **state) {
    (void)state;
    struct vlm_sampler_params p = vlm_sampler_default_params();
    assert_true(p.temperature == 0.8f);
    assert_int_equal(p.top_k, 40);
    assert_true(p.top_p == 0.95f);
    assert_true(p.min_p == 0.05f);
    assert_true(p.repeat_penalty == 1.0f);
    assert_int_equal(p.repeat_last_n, 64);
    assert_int_equal(p.seed, 42);

    struct vlm_sampler *s = NULL;
    assert_int_equal(vlm_sampler_new(&p, 0, &s), VLM_EINVAL);
    p.repeat_penalty = 0;
    assert_int_equal(vlm_sampler_new(&p, 10, &s), VLM_EINVAL);
    p = vlm_sampler_default_params();
    p.temperature = NAN;
    assert_int_equal(vlm_sampler_new(&p, 10, &s), VLM_EINVAL);
    p = vlm_sampler_default_params();
    p.repeat_last_n = -2;
    assert_int_equal(vlm_sampler_new(&p, 10, &s), VLM_EINVAL);
    assert_null(s);
}

static void test_greedy(void **state) {
    (void)state;
    struct vlm_sampler *s = new_sampler(params(0, 40, 0.95f, 0.05f, 1), 6);
    const float a[6] = {0.1f, 2.0f, -3.0f, 1.9f, 0.0f, 2.0f};
    assert_int_equal(vlm_sampler_sample(s, a), 1); // ties go to the lowest id
    const float b[6] = {-INFINITY, -5, NAN, -4, -INFINITY, -4.5f};
    assert_int_equal(vlm_sampler_sample(s, b), 3); // NaN never wins
    const float c[6] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(vlm_sampler_sample(s, c), 0);
    vlm_sampler_free(s);

    // Non-finite logits while sampling: +inf wins, NaN and -inf are never drawn.
    s = new_sampler(params(0.7f, 0, 0.9f, 0.05f, 1), 6);
    const float d[6] = {NAN, 1.0f, INFINITY, -INFINITY, 2.0f, NAN};
    for (int i = 0; i < 100; i++) {
        assert_int_equal(vlm_sampler_sample(s, d), 2);
    }
    vlm_sampler_free(s);
    s = new_sampler(params(1.0f, 0, 1.0f, 0, 1), 4);
    const float e[4] = {NAN, 0.0f, -INFINITY, 0.0f};
    for (int i = 0; i < 200; i++) {
        int32_t t = vlm_sampler_sample(s, e);
        assert_true(t == 1 || t == 3);
    }
    vlm_sampler_free(s);

    // Random logits over a real vocabulary size.
    enum { N = 32000 };
    float *x = malloc(N * sizeof *x);
    uint64_t rng = 7;
    s = new_sampler(params(-1, 0, 1, 0, 1), N);
    for (int t = 0; t < 20; t++) {
        for (int i = 0; i < N; i++) {
            x[i] = vlm_test_rand_f32(&rng) * 10;
        }
        assert_int_equal(vlm_sampler_sample(s, x), argmax(x, N));
    }
    vlm_sampler_free(s);
    free(x);
}

// top_k = 1 is greedy at any temperature, whatever the other filters.
static void test_top_k_1(void **state) {
    (void)state;
    enum { N = 5000 };
    float *x = malloc(N * sizeof *x);
    uint64_t rng = 99;
    const float temps[] = {0.1f, 0.8f, 1.0f, 5.0f, 100.0f};
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        struct vlm_sampler *s = new_sampler(params(temps[k], 1, k % 2 ? 0.5f : 1.0f, k % 2 ? 0.1f : 0, k), N);
        for (int t = 0; t < 50; t++) {
            for (int i = 0; i < N; i++) {
                x[i] = vlm_test_rand_f32(&rng) * 3;
            }
            if (t % 5 == 0) {
                x[N - 1] = x[argmax(x, N)]; // a tie: the lower id must win
            }
            assert_int_equal(vlm_sampler_sample(s, x), argmax(x, N));
        }
        vlm_sampler_free(s);
    }
    free(x);
}

static void draw_seq(uint64_t seed, const float *x, int n, int32_t *out, int n_draws) {
    struct vlm_sampler *s = new_sampler(params(1.0f, 0, 1.0f, 0, seed), n);
    for (int i = 0; i < n_draws; i++) {
        out[i] = vlm_sampler_sample(s, x);
    }
    // reset reseeds: the same sequence again
    vlm_sampler_reset(s);
    for (int i = 0; i < n_draws; i++) {
        assert_int_equal(vlm_sampler_sample(s, x), out[i]);
    }
    vlm_sampler_free(s);
}

static void test_seed(void **state) {
    (void)state;
    enum { N = 64, D = 2000 };
    float x[N];
    for (int i = 0; i < N; i++) {
        x[i] = 0.05f * (float)i; // fairly flat: draws vary a lot
    }
    int32_t a[D], b[D], c[D];
    draw_seq(1234, x, N, a, D);
    draw_seq(1234, x, N, b, D);
    draw_seq(1235, x, N, c, D);
    assert_memory_equal(a, b, sizeof a);
    int differ = 0;
    for (int i = 0; i < D; i++) {
        differ += a[i] != c[i];
    }
    // Two independent draws from this distribution agree ~3% of the time.
    printf("seed 1234 vs 1235: %d of %d draws differ\n", differ, D);
    assert_true(differ > D * 9 / 10);
}

static void test_distribution(void **state) {
    (void)state;
    enum { N = 8, D = 200000 };
    const double probs[N] = {0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.04, 0.01};
    float x[N];
    logits_from_probs(probs, x, N);
    int counts[N];
    struct vlm_sampler *s = new_sampler(params(1.0f, 0, 1.0f, 0, 5), N);
    histogram(s, x, N, D, counts);
    double chi = chi_square(counts, probs, N, D);
    // 7 degrees of freedom: P(chi2 > 24.3) = 0.001. The seed is fixed, so this is not flaky.
    printf("temperature 1: chi-square %.2f (7 dof)\n", chi);
    assert_true(chi < 24.3);
    vlm_sampler_free(s);

    // Temperature 2 flattens: p_i ~ sqrt(probs_i).
    double q[N], z = 0;
    for (int i = 0; i < N; i++) {
        z += q[i] = sqrt(probs[i]);
    }
    for (int i = 0; i < N; i++) {
        q[i] /= z;
    }
    s = new_sampler(params(2.0f, 0, 1.0f, 0, 6), N);
    histogram(s, x, N, D, counts);
    chi = chi_square(counts, q, N, D);
    printf("temperature 2: chi-square %.2f (7 dof)\n", chi);
    assert_true(chi < 24.3);
    vlm_sampler_free(s);
}

// Expected distribution after keeping the first `keep` of the (descending) probs, at temperature 1.
static void renorm(const double *probs, int n, int keep, double *q) {
    double z = 0;
    for (int i = 0; i < keep; i++) {
        z += probs[i];
    }
    for (int i = 0; i < n; i++) {
        q[i] = i < keep ? probs[i] / z : 0;
    }
}

static void test_top_p_min_p(void **state) {
    (void)state;
    enum { N = 6, D = 50000 };
    const double probs[N] = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};
    float x[N];
    logits_from_probs(probs, x, N);
    int counts[N];
    double q[N];
    static const struct {
        int32_t top_k;
        float top_p, min_p;
        int keep;
    } cases[] = {
        {0, 0.6f, 0, 2},  // 0.4 + 0.25 >= 0.6
        {0, 0.66f, 0, 3}, // needs the third
        {6, 0.66f, 0, 3}, // same through the sorted (top-k) path
        {0, 0.0f, 0, 1},  // top_p 0 keeps the best
        {0, 1.0f, 0.3f, 3},  // p >= 0.3 * 0.4 = 0.12
        {0, 1.0f, 0.24f, 4}, // p >= 0.096
        {0, 1.0f, 2.0f, 1},  // min_p > 1 still keeps the best
        {3, 1.0f, 0, 3},
        {0, 0.92f, 0.2f, 4}, // top-p keeps 5 (0.96), min-p then drops 0.06 < 0.08
        {2, 0.92f, 0.2f, 2},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct vlm_sampler *s = new_sampler(params(1.0f, cases[c].top_k, cases[c].top_p, cases[c].min_p, c), N);
        histogram(s, x, N, D, counts);
        renorm(probs, N, cases[c].keep, q);
        double chi = chi_square(counts, q, N, D); // also asserts nothing outside the kept set was drawn
        printf("top_k %d top_p %.2f min_p %.2f: kept %d, chi-square %.2f\n", cases[c].top_k, (double)cases[c].top_p,
               (double)cases[c].min_p, cases[c].keep, chi);
        for (int i = 0; i < cases[c].keep; i++) {
            assert_true(counts[i] > 0);
        }
        assert_true(chi < 20.5); // <= 5 dof: P(chi2 > 20.5) = 0.001
        vlm_sampler_free(s);
    }
}

static const float *g_sort_keys;

static int cmp_desc(const void *a, const void *b) {
    float x = g_sort_keys[*(const int32_t *)a], y = g_sort_keys[*(const int32_t *)b];
    return x > y ? -1 : x < y;
}

// top-p over a full-size vocabulary (exercises the partial sort): only the nucleus is ever drawn.
static void test_top_p_large(void **state) {
    (void)state;
    enum { N = 32000, D = 5000 };
    float *x = malloc(N * sizeof *x);
    uint64_t rng = 3;
    for (int i = 0; i < N; i++) {
        x[i] = vlm_test_rand_f32(&rng) * 8; // p_max / p_min ~ e^16
    }
    // Nucleus by brute force: sort ids by logit.
    int32_t *order = malloc(N * sizeof *order);
    for (int i = 0; i < N; i++) {
        order[i] = i;
    }
    g_sort_keys = x;
    qsort(order, N, sizeof *order, cmp_desc);
    double z = 0;
    for (int i = 0; i < N; i++) {
        z += exp((double)x[i] - (double)x[order[0]]);
    }
    const float top_p = 0.5f;
    int keep = 0;
    double cum = 0;
    while (cum < (double)top_p * z) {
        cum += exp((double)x[order[keep]] - (double)x[order[0]]);
        keep++;
    }
    bool *in = calloc(N, 1);
    for (int i = 0; i < keep; i++) {
        in[order[i]] = true;
    }
    struct vlm_sampler *s = new_sampler(params(1.0f, 0, top_p, 0, 11), N);
    int outside = 0, worst = 0;
    for (int d = 0; d < D; d++) {
        int32_t t = vlm_sampler_sample(s, x);
        outside += !in[t];
        int rank = 0;
        while (order[rank] != t) {
            rank++;
        }
        worst = rank > worst ? rank : worst;
    }
    printf("top_p %.2f over %d tokens: nucleus %d tokens, worst rank drawn %d, %d draws outside\n", (double)top_p, N,
           keep, worst, outside);
    // Float rounding may move the boundary by one token; nothing further out may appear.
    assert_true(worst <= keep);
    assert_true(worst >= keep / 2); // and the draws do reach across the nucleus
    vlm_sampler_free(s);
    free(in);
    free(order);
    free(x);
}

static struct vlm_sampler *penalty_sampler(float penalty, int32_t last_n, int n) {
    struct vlm_sampler_params p = params(0, 0, 1, 0, 1);
    p.repeat_penalty = penalty;
    p.repeat_last_n = last_n;
    return new_sampler(p, n);
}

static void test_repeat_penalty(void **state) {
    (void)state;
    // Positive logits are divided: 3 / 2 = 1.5 < 2 flips the choice, 3 / 1.4 = 2.14 does not.
    const float pos[2] = {3.0f, 2.0f};
    struct vlm_sampler *s = penalty_sampler(2.0f, 64, 2);
    vlm_sampler_accept(s, 0);
    assert_int_equal(vlm_sampler_sample(s, pos), 1);
    vlm_sampler_free(s);
    s = penalty_sampler(1.4f, 64, 2);
    vlm_sampler_accept(s, 0);
    assert_int_equal(vlm_sampler_sample(s, pos), 0);
    vlm_sampler_free(s);

    // Negative logits are multiplied: -1 * 2 = -2 < -1.5 (dividing would give -0.5 and keep token 0).
    const float neg[2] = {-1.0f, -1.5f};
    s = penalty_sampler(2.0f, 64, 2);
    assert_int_equal(vlm_sampler_sample(s, neg), 0);
    vlm_sampler_accept(s, 0);
    vlm_sampler_accept(s, 0); // once per distinct token, not per occurrence: -2 either way
    assert_int_equal(vlm_sampler_sample(s, neg), 1);
    const float neg2[2] = {-1.0f, -2.5f};
    assert_int_equal(vlm_sampler_sample(s, neg2), 0); // -2 > -2.5: applied once, not twice (-4)
    vlm_sampler_reset(s);
    assert_int_equal(vlm_sampler_sample(s, neg), 0); // history forgotten
    vlm_sampler_free(s);

    // Window: with last_n = 2 only the two most recent tokens count.
    const float w[4] = {2.0f, 1.0f, 0.5f, 1.9f};
    s = penalty_sampler(4.0f, 2, 4);
    vlm_sampler_accept(s, 0);
    assert_int_equal(vlm_sampler_sample(s, w), 3);
    vlm_sampler_accept(s, 2);
    vlm_sampler_accept(s, 2); // pushes 0 out of the window
    assert_int_equal(vlm_sampler_sample(s, w), 0);
    vlm_sampler_accept(s, 3);
    vlm_sampler_accept(s, 0);
    assert_int_equal(vlm_sampler_sample(s, w), 1); // 0 and 3 penalized: 0.5, 1.0, 0.5, 0.475
    vlm_sampler_free(s);

    // last_n = -1 remembers everything; last_n = 0 and penalty 1 are off.
    s = penalty_sampler(4.0f, -1, 4);
    vlm_sampler_accept(s, 0);
    for (int i = 0; i < 1000; i++) {
        vlm_sampler_accept(s, 2);
    }
    assert_int_equal(vlm_sampler_sample(s, w), 3);
    vlm_sampler_free(s);
    s = penalty_sampler(4.0f, 0, 4);
    vlm_sampler_accept(s, 0);
    assert_int_equal(vlm_sampler_sample(s, w), 0);
    vlm_sampler_free(s);
    s = penalty_sampler(1.0f, 64, 4);
    vlm_sampler_accept(s, 0);
    vlm_sampler_accept(s, -5);   // ignored
    vlm_sampler_accept(s, 1000); // ignored
    assert_int_equal(vlm_sampler_sample(s, w), 0);
    vlm_sampler_free(s);

    // With sampling: the draws follow the softmax of the penalized logits.
    enum { N = 4, D = 100000 };
    const float x[N] = {1.0f, -0.5f, 0.2f, 0.0f};
    struct vlm_sampler_params p = params(1.0f, 0, 1, 0, 21);
    p.repeat_penalty = 1.5f;
    s = new_sampler(p, N);
    vlm_sampler_accept(s, 0);
    vlm_sampler_accept(s, 1);
    const double pen[N] = {1.0 / 1.5, -0.5 * 1.5, 0.2, 0.0};
    double q[N], z = 0;
    for (int i = 0; i < N; i++) {
        z += q[i] = exp(pen[i]);
    }
    for (int i = 0; i < N; i++) {
        q[i] /= z;
    }
    int counts[N];
    histogram(s, x, N, D, counts);
    double chi = chi_square(counts, q, N, D);
    printf("penalized softmax: chi-square %.2f (3 dof)\n", chi);
    assert_true(chi < 16.3); // P(chi2 > 16.3) = 0.001 at 3 dof
    vlm_sampler_free(s);
}

static void test_stop_strings(void **state) {
    (void)state;
    const char *stops[] = {"</s>", "\nUser:", "", NULL, "###"};
    size_t partial = 99;
    const char *t = "Hello</s>more";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), 5);
    assert_int_equal(partial, 0);
    t = "Hello\nUser: x</s>";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), 5); // the earliest start wins
    t = "a ### b </s>";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), 2);
    t = "Hello\nUs";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), -1);
    assert_int_equal(partial, 3); // "\nUs" could still become "\nUser:"
    t = "Hello <";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), -1);
    assert_int_equal(partial, 1);
    t = "Hello </s";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), -1);
    assert_int_equal(partial, 3);
    t = "a ##";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), -1);
    assert_int_equal(partial, 2);
    t = "no stop here";
    assert_int_equal(vlm_stop_find(stops, 5, t, strlen(t), &partial), -1);
    assert_int_equal(partial, 0);
    // The length is honoured (not NUL termination), and a match must lie inside it.
    t = "abc</s>";
    assert_int_equal(vlm_stop_find(stops, 5, t, 5, &partial), -1);
    assert_int_equal(partial, 2);
    assert_int_equal(vlm_stop_find(stops, 5, "", 0, &partial), -1);
    assert_int_equal(partial, 0);
    assert_int_equal(vlm_stop_find(NULL, 0, "x", 1, NULL), -1);
    // A stop string that is its own prefix-suffix.
    const char *aa[] = {"aab"};
    t = "xaaa";
    assert_int_equal(vlm_stop_find(aa, 1, t, strlen(t), &partial), -1);
    assert_int_equal(partial, 2);
    t = "xaaab";
    assert_int_equal(vlm_stop_find(aa, 1, t, strlen(t), &partial), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_top_k_1),       cmocka_unit_test(test_seed),
        cmocka_unit_test(test_distribution),  cmocka_unit_test(test_top_p_min_p),
        cmocka_unit_test(test_top_p_large),   cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_stop_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
