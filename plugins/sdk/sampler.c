// Token sampler: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw, as llama.cpp's default
// chain, plus the stop-string helper.
//
// Randomness: xoshiro256** (Blackman & Vigna, 2018; https://prng.di.unimi.it/) seeded through splitmix64, so
// a seed fully determines the draws on every platform. Sampling allocates nothing and sorts no more than it
// must: top-k keeps a k-element heap (O(n log k)); top-p first selects the nucleus by a quickselect on
// probability mass (expected O(n)) and sorts only that.
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/sampler.h"

// Bound on the repetition window so a silly value cannot ask for gigabytes (-1 covers "everything").
#define MAX_REPEAT_LAST_N (1 << 24)

struct cand {
    float logit;
    int32_t id;
    float w; // unnormalized probability, where a step needs it
};

struct vlm_sampler {
    struct vlm_sampler_params p;
    int32_t n_vocab;
    struct cand *cand; // [n_vocab] scratch
    int32_t *count;    // [n_vocab] occurrences inside the penalty window
    int32_t *ring;     // [ring_cap] the window, when repeat_last_n > 0
    int32_t ring_cap, ring_len, ring_pos;
    uint64_t rng[4];
};

// ---- RNG ---------------------------------------------------------------------------------------------------

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static void rng_seed(uint64_t s[4], uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        s[i] = splitmix64(&seed);
    }
}

// Uniform in [0, 1) with 53 random bits.
static double rng_uniform(uint64_t s[4]) {
    return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

// ---- params, lifetime --------------------------------------------------------------------------------------

struct vlm_sampler_params vlm_sampler_default_params(void) {
    return (struct vlm_sampler_params){
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 42,
    };
}

int vlm_sampler_new(const struct vlm_sampler_params *p, int32_t n_vocab, struct vlm_sampler **out) {
    if (!p || !out || n_vocab <= 0) {
        return VLM_EINVAL;
    }
    if (isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p) || !(p->repeat_penalty > 0) ||
        isinf(p->repeat_penalty) || p->repeat_last_n < -1 || p->repeat_last_n > MAX_REPEAT_LAST_N) {
        return VLM_EINVAL;
    }
    struct vlm_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        return VLM_ENOMEM;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->count = calloc((size_t)n_vocab, sizeof *s->count);
    s->ring_cap = p->repeat_last_n > 0 ? p->repeat_last_n : 0;
    s->ring = s->ring_cap ? malloc((size_t)s->ring_cap * sizeof *s->ring) : NULL;
    if (!s->cand || !s->count || (s->ring_cap && !s->ring)) {
        vlm_sampler_free(s);
        return VLM_ENOMEM;
    }
    rng_seed(s->rng, p->seed);
    *out = s;
    return 0;
}

void vlm_sampler_free(struct vlm_sampler *s) {
    if (!s) {
        return;
    }
    free(s->cand);
    free(s->count);
    free(s->ring);
    free(s);
}

void vlm_sampler_reset(struct vlm_sampler *s) {
    if (!s) {
        return;
    }
    memset(s->count, 0, (size_t)s->n_vocab * sizeof *s->count);
    s->ring_len = 0;
    s->ring_pos = 0;
    rng_seed(s->rng, s->p.seed);
}

void vlm_sampler_accept(struct vlm_sampler *s, int32_t token) {
    if (!s || token < 0 || token >= s->n_vocab || s->p.repeat_last_n == 0) {
        return;
    }
    if (s->ring_cap == 0) { // -1: every token seen
        if (s->count[token] < INT32_MAX) {
            s->count[token]++;
        }
        return;
    }
    if (s->ring_len == s->ring_cap) {
        s->count[s->ring[s->ring_pos]]--;
    } else {
        s->ring_len++;
    }
    s->ring[s->ring_pos] = token;
    s->count[token]++;
    s->ring_pos = s->ring_pos + 1 == s->ring_cap ? 0 : s->ring_pos + 1;
}

// ---- sampling ----------------------------------------------------------------------------------------------

// Total order: higher logit first, then lower id, so every path (greedy, top-k, sorting) breaks ties the same way.
static bool better(const struct cand *a, const struct cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

// Sift-down in a heap whose root is the *worst* candidate.
static void sift_down(struct cand *c, size_t n, size_t i) {
    struct cand x = c[i];
    for (;;) {
        size_t ch = 2 * i + 1;
        if (ch >= n) {
            break;
        }
        if (ch + 1 < n && better(&c[ch], &c[ch + 1])) {
            ch++;
        }
        if (!better(&x, &c[ch])) {
            break;
        }
        c[i] = c[ch];
        i = ch;
    }
    c[i] = x;
}

static void heapify(struct cand *c, size_t n) {
    for (size_t i = n / 2; i-- > 0;) {
        sift_down(c, n, i);
    }
}

// Heapsort, best first: O(n log n) worst case, no allocation (glibc's qsort may malloc).
static void sort_best_first(struct cand *c, size_t n) {
    heapify(c, n);
    for (size_t end = n; end > 1; end--) {
        struct cand t = c[0];
        c[0] = c[end - 1];
        c[end - 1] = t;
        sift_down(c, end - 1, 0);
    }
}

// Moves the k best candidates to the front, sorted best first. O(n log k).
static void top_k(struct cand *c, size_t n, size_t k) {
    heapify(c, k);
    for (size_t i = k; i < n; i++) {
        if (better(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
    }
    sort_best_first(c, k);
}

static float max_logit(const struct cand *c, size_t n) {
    float m = c[0].logit;
    for (size_t i = 1; i < n; i++) {
        if (c[i].logit > m) {
            m = c[i].logit;
        }
    }
    return m;
}

static void swap_cand(struct cand *a, struct cand *b) {
    struct cand t = *a;
    *a = *b;
    *b = t;
}

// Moves to the front of c[0..n) a set of best candidates whose weight reaches `need` and returns its size:
// a quickselect on probability mass, expected O(n). The returned prefix holds the best candidates (unsorted)
// and is a superset of the nucleus. Median-of-three pivots; after too many rounds it stops narrowing, which
// costs only a bigger sort, never a wrong answer.
static size_t select_mass(struct cand *c, size_t n, double need) {
    size_t lo = 0, hi = n;
    double acc = 0; // weight of c[0..lo), all better than c[lo..n)
    for (int rounds = 0; hi - lo > 16 && rounds < 128; rounds++) {
        size_t mid = lo + (hi - lo) / 2;
        // Order c[lo], c[mid], c[hi-1] best first and use the middle one as pivot, parked at hi-1.
        if (better(&c[mid], &c[lo])) {
            swap_cand(&c[mid], &c[lo]);
        }
        if (better(&c[hi - 1], &c[lo])) {
            swap_cand(&c[hi - 1], &c[lo]);
        }
        if (better(&c[hi - 1], &c[mid])) {
            swap_cand(&c[hi - 1], &c[mid]);
        }
        swap_cand(&c[mid], &c[hi - 1]);
        struct cand pivot = c[hi - 1];
        size_t k = lo;
        double mass = 0;
        for (size_t i = lo; i < hi - 1; i++) {
            if (better(&c[i], &pivot)) {
                mass += (double)c[i].w;
                swap_cand(&c[i], &c[k++]);
            }
        }
        swap_cand(&c[k], &c[hi - 1]); // pivot at k: c[lo..k) better, c[k+1..hi) worse
        mass += (double)c[k].w;
        if (acc + mass >= need) {
            hi = k + 1; // the nucleus ends at or before the pivot
        } else {
            acc += mass;
            lo = k + 1;
        }
    }
    return hi;
}

// llama.cpp's top-p: keep the shortest best-first prefix whose probability mass reaches p. Leaves the kept
// prefix sorted.
static size_t top_p(struct cand *c, size_t n, bool sorted, float p) {
    float mx = sorted ? c[0].logit : max_logit(c, n);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        c[i].w = expf(c[i].logit - mx);
        sum += (double)c[i].w;
    }
    double target = (double)p * sum;
    size_t head = n;
    if (!sorted) {
        // Slightly more than the target, so summation-order rounding cannot cut the selection short.
        head = select_mass(c, n, target * (1.0 + 1e-6));
        sort_best_first(c, head);
    }
    double cum = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == head) {
            sort_best_first(c + head, n - head); // rounding left the selection short after all
            head = n;
        }
        cum += (double)c[i].w;
        if (cum >= target) {
            return i + 1;
        }
    }
    return n;
}

// Keep candidates with p >= min_p * p_max, i.e. logit >= max + log(min_p); at least the best one.
static size_t min_p(struct cand *c, size_t n, bool sorted, float mp) {
    float lim = (sorted ? c[0].logit : max_logit(c, n)) + logf(mp);
    if (sorted) {
        size_t i = 1;
        while (i < n && c[i].logit >= lim) {
            i++;
        }
        return i;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (c[i].logit >= lim) {
            c[k++] = c[i];
        }
    }
    if (k == 0) { // min_p > 1: nothing passes; keep the best as llama.cpp does
        size_t b = 0;
        for (size_t i = 1; i < n; i++) {
            if (better(&c[i], &c[b])) {
                b = i;
            }
        }
        c[0] = c[b];
        k = 1;
    }
    return k;
}

int32_t vlm_sampler_sample(struct vlm_sampler *s, const float *logits) {
    if (!s || !logits) {
        return VLM_EINVAL;
    }
    const struct vlm_sampler_params *p = &s->p;
    size_t n = (size_t)s->n_vocab;
    struct cand *c = s->cand;
    bool penalize = p->repeat_penalty != 1.0f && p->repeat_last_n != 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        float l = logits[i];
        if (isnan(l)) {
            l = -INFINITY;
        } else if (l > FLT_MAX) {
            l = FLT_MAX; // keeps max - logit finite in the softmax
        }
        if (penalize && s->count[i] > 0) {
            l = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
        }
        c[i] = (struct cand){l, (int32_t)i, 0};
        if (l > c[best].logit) {
            best = i; // strict: ties keep the lowest id
        }
    }
    if (!(p->temperature > 0) || isinf(1.0f / p->temperature) || c[best].logit == -INFINITY) {
        return c[best].id;
    }

    bool sorted = false;
    if (p->top_k > 0 && (size_t)p->top_k < n) {
        n = (size_t)p->top_k;
        top_k(c, (size_t)s->n_vocab, n);
        sorted = true;
    }
    if (p->top_p < 1.0f) {
        n = top_p(c, n, sorted, p->top_p);
        sorted = true;
    }
    if (p->min_p > 0.0f) {
        n = min_p(c, n, sorted, p->min_p);
    }

    // Temperature, then draw from the softmax of what is left.
    float inv_t = 1.0f / p->temperature;
    float mx = max_logit(c, n);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        c[i].w = expf((c[i].logit - mx) * inv_t);
        sum += (double)c[i].w;
    }
    double u = rng_uniform(s->rng) * sum;
    double cum = 0;
    size_t last = 0;
    for (size_t i = 0; i < n; i++) {
        if (c[i].w > 0) {
            last = i;
        }
        cum += (double)c[i].w;
        if (u < cum) {
            return c[i].id;
        }
    }
    return c[last].id; // u landed in the rounding gap at the top
}

// ---- stop strings ------------------------------------------------------------------------------------------

int64_t vlm_stop_find(const char *const *stops, int n_stops, const char *text, size_t len, size_t *partial) {
    int64_t first = -1;
    size_t hold = 0;
    if (!text) {
        len = 0;
    }
    for (int i = 0; i < n_stops && stops; i++) {
        if (!stops[i] || !stops[i][0]) {
            continue; // an empty stop string would match everywhere
        }
        size_t m = strlen(stops[i]);
        if (len > 0) {
            const char *hit = memmem(text, len, stops[i], m);
            if (hit && (first < 0 || hit - text < first)) {
                first = hit - text;
            }
        }
        // Longest suffix of text that is a proper prefix of this stop string.
        size_t k = m - 1 < len ? m - 1 : len;
        for (; k > hold; k--) {
            if (memcmp(text + len - k, stops[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    if (partial) {
        *partial = first >= 0 ? 0 : hold;
    }
    return first;
}
