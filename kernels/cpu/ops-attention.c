// Multi-head attention of query rows against a KV cache (F32 or F16): causal mask, grouped-query heads and an
// optional sliding window.
//
// A work item is one query token and a set of query heads that share a KV head, so each K and V row is read
// from memory once for all of them (4x less cache traffic for Llama-3/Mistral-style 32/8 heads). When that gives
// fewer items than threads (decode with few KV heads), the group is split into smaller head sets. Items are
// dealt round-robin, which balances the triangle of a causal prefill. Scores live in per-thread scratch sized
// by the backend (no per-op allocation); the softmax subtracts the row maximum before exponentiating.
#include <stdatomic.h>
#include <string.h>

#include "kernels/cpu/ops-cpu.h"
#include "kernels/cpu/quants.h"

// Non-causal F32 attention with head_dim 64 (the CLIP ViT: 577 queries x 577 keys per head) takes a blocked
// path instead: a work item is one head and ATTN64_QB queries; the thread transposes the head's keys and packs
// its values once into its scratch (kept while the next items use the same KV head), and the AVX-512 kernel
// tiles registers over 6 queries x 64 keys / 64 value floats. The per-query path below spends most of its time
// in horizontal sums of 64-float dot products.
#define ATTN64_QB     48
#define ATTN64_MAX_KV 16384

#if defined(VLM_HAVE_X86)
// x86/ops-avx512.c
void vlm__attn_block64_avx512(int64_t n_kv, int nq, const float *q, size_t qs, const float *kt, size_t kts,
                              const float *vh, float *sc, size_t ss, float *out, size_t os, float scale);
#endif

struct attn_ctx {
    const struct vlm_cpu_vec *vec;
    struct vlm_cpu_ctx *c;
    struct vlm_tensor *dst;
    const struct vlm_tensor *q;
    const struct vlm_tensor *k;
    const struct vlm_tensor *v;
    const struct vlm_attention_params *p;
    int64_t n_split; // head sets per KV group
    int64_t per_set; // most heads in one set
    size_t n_kv_pad; // floats reserved for one head's scores
};

static void attn_worker(void *arg, int ith, int nth) {
    const struct attn_ctx *ac = arg;
    const struct vlm_attention_params *p = ac->p;
    const struct vlm_cpu_vec *vec = ac->vec;
    int64_t hd = p->head_dim, group = p->n_head / p->n_head_kv;
    int64_t per_tok = (int64_t)p->n_head_kv * ac->n_split;
    int64_t n_items = ac->q->ne[1] * per_tok;
    bool f16 = ac->k->type == VLM_TYPE_F16;
    size_t esz = f16 ? sizeof(uint16_t) : sizeof(float);
    float *scores = ac->c->tscratch + (size_t)ith * ac->c->tscratch_stride; // [per_set][n_kv_pad]
    float *acc = scores + (size_t)ac->per_set * ac->n_kv_pad;               // [per_set][hd]

    for (int64_t it = ith; it < n_items; it += nth) {
        int64_t t = it / per_tok, g = (it % per_tok) / ac->n_split, sp = it % ac->n_split;
        int64_t h0 = g * group + group * sp / ac->n_split, h1 = g * group + group * (sp + 1) / ac->n_split;
        int64_t nh = h1 - h0;
        int64_t pos = (int64_t)p->pos0 + t;
        int64_t j0 = 0, j1 = p->n_kv;
        if (p->causal && pos + 1 < j1) {
            j1 = pos + 1;
        }
        if (p->window > 0 && pos - p->window + 1 > j0) {
            j0 = pos - p->window + 1;
        }
        const float *qrow = vlm__row_f32(ac->q, t);
        float *orow = vlm__row_f32(ac->dst, t);
        if (j0 >= j1) {
            memset(orow + h0 * hd, 0, (size_t)(nh * hd) * sizeof(float));
            continue;
        }
        int64_t n = j1 - j0;
        const char *kbase = (const char *)ac->k->data + (size_t)j0 * ac->k->nb[1] + (size_t)(g * hd) * esz;
        const char *vbase = (const char *)ac->v->data + (size_t)j0 * ac->v->nb[1] + (size_t)(g * hd) * esz;

        for (int64_t j = 0; j < n; j++) {
            const void *kr = kbase + (size_t)j * ac->k->nb[1];
            for (int64_t hh = 0; hh < nh; hh++) {
                const float *qh = qrow + (h0 + hh) * hd;
                scores[(size_t)hh * ac->n_kv_pad + (size_t)j] =
                    f16 ? vec->dot_f16(hd, qh, kr) : vec->dot_f32(hd, qh, kr);
            }
        }
        float inv_sum[64];
        for (int64_t hh = 0; hh < nh; hh++) {
            float *s = scores + (size_t)hh * ac->n_kv_pad;
            // scale > 0 (validated), so max(s) * scale is the maximum of the scaled scores
            float m = vec->max(n, s) * p->scale;
            float sum = vec->exp_sum(n, s, p->scale, m);
            inv_sum[hh] = 1.0f / sum;
            memset(acc + hh * hd, 0, (size_t)hd * sizeof(float));
        }
        for (int64_t j = 0; j < n; j++) {
            const void *vr = vbase + (size_t)j * ac->v->nb[1];
            for (int64_t hh = 0; hh < nh; hh++) {
                float w = scores[(size_t)hh * ac->n_kv_pad + (size_t)j];
                if (f16) {
                    vec->axpy_f16(hd, w, vr, acc + hh * hd);
                } else {
                    vec->axpy_f32(hd, w, vr, acc + hh * hd);
                }
            }
        }
        // out may alias q: every query head of this item was consumed by the score loop above, and other items
        // touch other heads or other tokens.
        for (int64_t hh = 0; hh < nh; hh++) {
            float *out = orow + (h0 + hh) * hd;
            const float *a = acc + hh * hd;
            float inv = inv_sum[hh];
            for (int64_t i = 0; i < hd; i++) {
                out[i] = a[i] * inv;
            }
        }
    }
}

#if defined(VLM_HAVE_X86)
struct attn64_ctx {
    struct vlm_cpu_ctx *c;
    struct vlm_tensor *dst;
    const struct vlm_tensor *q;
    const struct vlm_tensor *k;
    const struct vlm_tensor *v;
    const struct vlm_attention_params *p;
    size_t n_kv_pad;
    int64_t n_qb;
    int64_t n_items;
    atomic_llong next;
};

static void attn64_worker(void *arg, int ith, int nth) {
    (void)nth;
    struct attn64_ctx *ac = arg;
    const struct vlm_attention_params *p = ac->p;
    const int64_t n_kv = p->n_kv, n_q = ac->q->ne[1], group = p->n_head / p->n_head_kv;
    const size_t pad = ac->n_kv_pad;
    float *kt = ac->c->tscratch + (size_t)ith * ac->c->tscratch_stride; // [64][pad], zero past n_kv
    float *vh = kt + 64 * pad;                                            // [n_kv][64]
    float *sc = vh + 64 * pad;                                            // [ATTN64_QB][pad]
    int64_t cur = -1;
    for (;;) {
        int64_t it = atomic_fetch_add_explicit(&ac->next, 1, memory_order_relaxed);
        if (it >= ac->n_items) {
            break;
        }
        int64_t h = it / ac->n_qb, q0 = (it % ac->n_qb) * ATTN64_QB, g = h / group;
        if (g != cur) {
            for (int64_t j0 = 0; j0 < n_kv; j0 += 16) {
                int64_t j1 = j0 + 16 < n_kv ? j0 + 16 : n_kv;
                for (int64_t j = j0; j < j1; j++) {
                    const float *kr = vlm__row_f32(ac->k, j) + g * 64;
                    for (int64_t d = 0; d < 64; d++) {
                        kt[(size_t)d * pad + (size_t)j] = kr[d];
                    }
                }
            }
            for (int64_t d = 0; d < 64; d++) {
                memset(kt + (size_t)d * pad + (size_t)n_kv, 0, (pad - (size_t)n_kv) * sizeof(float));
            }
            for (int64_t j = 0; j < n_kv; j++) {
                memcpy(vh + (size_t)j * 64, vlm__row_f32(ac->v, j) + g * 64, 64 * sizeof(float));
            }
            cur = g;
        }
        int nq = (int)(n_q - q0 < ATTN64_QB ? n_q - q0 : ATTN64_QB);
        vlm__attn_block64_avx512(n_kv, nq, vlm__row_f32(ac->q, q0) + h * 64, ac->q->nb[1] / sizeof(float), kt, pad,
                                 vh, sc, pad, vlm__row_f32(ac->dst, q0) + h * 64, ac->dst->nb[1] / sizeof(float),
                                 p->scale);
    }
}

static bool is_plain_2d(const struct vlm_tensor *t) {
    return t->type == VLM_TYPE_F32 && t->ne[2] == 1 && t->ne[3] == 1 && t->nb[0] == sizeof(float) &&
           t->nb[1] % sizeof(float) == 0;
}

// The blocked path when it applies; false leaves the op to the per-query path.
static bool attention64(struct vlm_cpu_ctx *c, struct vlm_tensor *dst, const struct vlm_tensor *q,
                        const struct vlm_tensor *k, const struct vlm_tensor *v, const struct vlm_attention_params *p) {
    if (vlm__cpu_isa_get() != VLM_CPU_ISA_AVX512 || p->head_dim != 64 || p->causal || p->window > 0 ||
        p->n_kv < 1 || p->n_kv > ATTN64_MAX_KV || !is_plain_2d(dst) || !is_plain_2d(q) || !is_plain_2d(k) ||
        !is_plain_2d(v)) {
        return false;
    }
    struct attn64_ctx ac = {
        .c = c,
        .dst = dst,
        .q = q,
        .k = k,
        .v = v,
        .p = p,
        .n_kv_pad = ((size_t)p->n_kv + 15) & ~(size_t)15,
        .n_qb = (q->ne[1] + ATTN64_QB - 1) / ATTN64_QB,
    };
    ac.n_items = ac.n_qb * p->n_head;
    atomic_init(&ac.next, 0);
    vlm__cpu_tscratch(c, ac.n_kv_pad * (size_t)(64 + 64 + ATTN64_QB));
    vlm__cpu_parallel(c, attn64_worker, &ac, q->ne[1] * p->n_head * (int64_t)p->n_kv * p->head_dim * 2);
    return true;
}
#endif

void vlm__cpu_attention(struct vlm_backend *be,
                        struct vlm_tensor *dst,
                        const struct vlm_tensor *q,
                        const struct vlm_tensor *k,
                        const struct vlm_tensor *v,
                        const struct vlm_attention_params *p) {
    struct vlm_cpu_ctx *c = vlm__cpu_ctx(be);
#if defined(VLM_HAVE_X86)
    if (attention64(c, dst, q, k, v, p)) {
        return;
    }
#endif
    int64_t group = p->n_head / p->n_head_kv;
    // Head sets of at most 64 (inv_sum above); split further only while threads would otherwise idle.
    int64_t n_split = (group + 63) / 64;
    while (n_split < group && q->ne[1] * p->n_head_kv * n_split < c->n_threads) {
        n_split *= 2;
    }
    n_split = n_split < group ? n_split : group;
    int64_t per_set = (group + n_split - 1) / n_split;
    size_t n_kv_pad = ((size_t)p->n_kv + 15) & ~(size_t)15;
    vlm__cpu_tscratch(c, (size_t)per_set * (n_kv_pad + (size_t)p->head_dim));
    struct attn_ctx ac = {
        .vec = vlm__cpu_vec_get(),
        .c = c,
        .dst = dst,
        .q = q,
        .k = k,
        .v = v,
        .p = p,
        .n_split = n_split,
        .per_set = per_set,
        .n_kv_pad = n_kv_pad,
    };
    int64_t work = q->ne[1] * p->n_head * (int64_t)p->n_kv * p->head_dim * 2;
    vlm__cpu_parallel(c, attn_worker, &ac, work);
}
