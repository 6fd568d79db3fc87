// llm-llama: the LLM plugin for GGUF architecture "llama" (Llama 2, Vicuna, Mistral, TinyLlama).
//
// The forward pass is written once against the backend ops (include/vlm/backend.h), llama2.c-style: weights
// in `struct llama_weights`, per-sequence state in `struct llama_session`, and one straight-line function,
// `forward_chunk`, with the shape of every step in a comment. Weights stay in the GGUF mapping on the CPU.
//
// GGUF layout facts (../shared/docs/gguf-llava.md §3): matrices are [n_in, n_out] in ggml order; Q/K rows are
// permuted so RoPE rotates adjacent pairs (VLM_ROPE_NORM); `output.weight` may be absent (tied embeddings).
// `llama.attention.sliding_window` is our extension for Mistral-style local attention (llama.cpp ignores it).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/backend.h"
#include "vlm/gguf.h"
#include "vlm/log.h"
#include "vlm/plugin.h"
#include "vlm/tokenizer.h"
#include "vlm/weights.h"

#define LLAMA_MAX_LAYERS 1024   // refuse absurd block counts before sizing arrays by them
#define LLAMA_MAX_EMBD (1 << 17)
#define LLAMA_UBATCH 256        // tokens per forward chunk: bounds scratch memory during prefill
#define LLAMA_DEFAULT_CTX 4096

struct llama_hparams {
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_rot;
    int32_t n_ff;
    int32_t n_ctx_train;
    int32_t window; // 0: full causal attention
    float eps;
    float rope_base;
    float rope_scale; // position multiplier (1 / linear scaling factor)
};

struct llama_layer {
    struct vlm_tensor attn_norm; // [n_embd]
    struct vlm_tensor wq;        // [n_embd, n_head * head_dim]
    struct vlm_tensor wk;        // [n_embd, n_head_kv * head_dim]
    struct vlm_tensor wv;        // [n_embd, n_head_kv * head_dim]
    struct vlm_tensor wo;        // [n_head * head_dim, n_embd]
    struct vlm_tensor bq, bk, bv, bo; // optional biases (data NULL when absent)
    struct vlm_tensor ffn_norm;  // [n_embd]
    struct vlm_tensor w_gate;    // [n_embd, n_ff]
    struct vlm_tensor w_up;      // [n_embd, n_ff]
    struct vlm_tensor w_down;    // [n_ff, n_embd]
};

struct llama_model {
    struct vlm_host host;
    struct vlm_backend *be;
    struct vlm_gguf *gguf; // owns the mapping the weights point into
    struct vlm_tokenizer *tok;
    struct llama_hparams hp;
    struct vlm_llm_params params;
    struct vlm_llm_info info;
    struct vlm_tensor tok_embd;    // [n_embd, n_vocab]
    struct vlm_tensor output_norm; // [n_embd]
    struct vlm_tensor output;      // [n_embd, n_vocab] (tok_embd when tied)
    struct llama_layer *layers;    // [n_layer]
};

struct llama_session {
    struct llama_model *model;
    int32_t n_ctx;
    int32_t n_past;
    struct vlm_tensor *k_cache; // [n_layer] of [n_head_kv * head_dim, n_ctx]
    struct vlm_tensor *v_cache; // [n_layer] of [n_head_kv * head_dim, n_ctx]
    // scratch, sized for LLAMA_UBATCH rows
    struct vlm_tensor x;      // [n_embd, ub] residual stream
    struct vlm_tensor xb;     // [n_embd, ub] normed input of a sub-block
    struct vlm_tensor xb2;    // [n_embd, ub] sub-block output
    struct vlm_tensor q;      // [n_head * head_dim, ub]
    struct vlm_tensor k;      // [n_head_kv * head_dim, ub]
    struct vlm_tensor v;      // [n_head_kv * head_dim, ub]
    struct vlm_tensor att;    // [n_head * head_dim, ub]
    struct vlm_tensor gate;   // [n_ff, ub]
    struct vlm_tensor up;     // [n_ff, ub]
    struct vlm_tensor logits; // [n_vocab, ub]
};

// ---- loading -------------------------------------------------------------------------------------------------

static int load_hparams(const struct vlm_gguf *g, struct llama_hparams *hp, struct vlm_diag *diag) {
    const char *path = vlm_gguf_path(g);
    memset(hp, 0, sizeof *hp);
    hp->eps = 1e-5f;
    hp->rope_base = 10000.0f;
    hp->rope_scale = 1.0f;
    int rc;
    if ((rc = vlm_hparam_i32(g, "llama.embedding_length", 1, LLAMA_MAX_EMBD, true, &hp->n_embd, diag)) ||
        (rc = vlm_hparam_i32(g, "llama.block_count", 1, LLAMA_MAX_LAYERS, true, &hp->n_layer, diag)) ||
        (rc = vlm_hparam_i32(g, "llama.feed_forward_length", 1, 1 << 20, true, &hp->n_ff, diag)) ||
        (rc = vlm_hparam_i32(g, "llama.attention.head_count", 1, 4096, true, &hp->n_head, diag))) {
        return rc;
    }
    hp->n_head_kv = hp->n_head;
    hp->n_ctx_train = LLAMA_DEFAULT_CTX;
    hp->head_dim = hp->n_embd / hp->n_head;
    if ((rc = vlm_hparam_i32(g, "llama.attention.head_count_kv", 1, hp->n_head, false, &hp->n_head_kv, diag)) ||
        (rc = vlm_hparam_i32(g, "llama.context_length", 1, 1 << 24, false, &hp->n_ctx_train, diag)) ||
        (rc = vlm_hparam_i32(g, "llama.attention.key_length", 1, 1 << 14, false, &hp->head_dim, diag)) ||
        (rc = vlm_hparam_i32(g, "llama.attention.sliding_window", 0, 1 << 24, false, &hp->window, diag)) ||
        (rc = vlm_hparam_f32(g, "llama.attention.layer_norm_rms_epsilon", &hp->eps, diag)) ||
        (rc = vlm_hparam_f32(g, "llama.rope.freq_base", &hp->rope_base, diag))) {
        return rc;
    }
    int32_t value_length = hp->head_dim;
    if ((rc = vlm_hparam_i32(g, "llama.attention.value_length", 1, 1 << 14, false, &value_length, diag))) {
        return rc;
    }
    if (value_length != hp->head_dim) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: key and value head sizes differ (%d, %d)", path,
                            hp->head_dim, value_length);
    }
    hp->n_rot = hp->head_dim;
    if ((rc = vlm_hparam_i32(g, "llama.rope.dimension_count", 2, hp->head_dim, false, &hp->n_rot, diag))) {
        return rc;
    }
    if (hp->n_rot % 2) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: rope.dimension_count %d is odd", path, hp->n_rot);
    }
    if (hp->head_dim <= 0 || hp->n_head % hp->n_head_kv) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: head_count %d is not a multiple of head_count_kv %d", path,
                            hp->n_head, hp->n_head_kv);
    }
    // Linear RoPE scaling (old and new key names); other scaling types are refused rather than run wrongly.
    struct vlm_gguf_str st;
    if (vlm_gguf_get_str(g, "llama.rope.scaling.type", &st, NULL) == 0 &&
        !(st.len == 4 && !memcmp(st.ptr, "none", 4)) && !(st.len == 6 && !memcmp(st.ptr, "linear", 6))) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: rope scaling type '%.*s' is not supported", path,
                            (int)(st.len > 32 ? 32 : st.len), st.ptr);
    }
    float factor = 1.0f;
    if ((rc = vlm_hparam_f32(g, "llama.rope.scale_linear", &factor, diag)) ||
        (rc = vlm_hparam_f32(g, "llama.rope.scaling.factor", &factor, diag))) {
        return rc;
    }
    if (factor > 0.0f) {
        hp->rope_scale = 1.0f / factor;
    }
    if (!(hp->eps > 0.0f) || !(hp->rope_base > 0.0f)) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: rms epsilon and rope base must be positive", path);
    }
    return 0;
}

// Loads one weight (vlm_weight_load_2d) and counts it in the model's info.
static int load_tensor(struct llama_model *m, const char *name, int64_t ne0, int64_t ne1, bool required,
                       bool weight_matrix, struct vlm_tensor *out, struct vlm_diag *diag) {
    unsigned flags = (required ? VLM_WEIGHT_REQUIRED : 0u) | (weight_matrix ? VLM_WEIGHT_MATRIX : 0u);
    if (weight_matrix) {
        flags |= vlm_weight_precision_flags(m->host.precision, 0); // AUTO: exact (the goldens' numerics)
    }
    int rc = vlm_weight_load_2d(m->be, m->gguf, name, ne0, ne1, flags, out, diag);
    if (rc == 0 && out->data) {
        m->info.n_params += (uint64_t)vlm_tensor_nelements(out);
        m->info.weight_bytes += vlm_tensor_nbytes(out);
    }
    return rc;
}

static void model_free(struct llama_model *m) {
    if (!m) {
        return;
    }
    if (m->layers) {
        for (int32_t i = 0; i < m->hp.n_layer; i++) {
            struct llama_layer *l = &m->layers[i];
            struct vlm_tensor *all[] = {&l->attn_norm, &l->wq, &l->wk, &l->wv, &l->wo, &l->bq, &l->bk,
                                        &l->bv,        &l->bo, &l->ffn_norm, &l->w_gate, &l->w_up, &l->w_down};
            for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) {
                vlm_tensor_release(all[j]);
            }
        }
        free(m->layers);
    }
    if (m->output.data != m->tok_embd.data) {
        vlm_tensor_release(&m->output);
    }
    vlm_tensor_release(&m->tok_embd);
    vlm_tensor_release(&m->output_norm);
    vlm_tokenizer_free(m->tok);
    vlm_gguf_close(m->gguf);
    free(m);
}

static int llama_load(const struct vlm_host *host, const char *path, const struct vlm_llm_params *params,
                      void **out, struct vlm_diag *diag) {
    if (!host || !host->backend) {
        return vlm_diag_set(diag, VLM_EINVAL, "llm-llama: no backend given");
    }
    struct llama_model *m = calloc(1, sizeof *m);
    if (!m) {
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", path);
    }
    m->host = *host;
    m->be = host->backend;
    if (params) {
        m->params = *params;
    }
    int rc = vlm_gguf_open(path, &m->gguf, diag);
    if (rc) {
        free(m);
        return rc;
    }
    struct vlm_gguf_str arch;
    if (vlm_gguf_get_str(m->gguf, "general.architecture", &arch, diag) != 0 ||
        !(arch.len == 5 && !memcmp(arch.ptr, "llama", 5))) {
        rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: general.architecture is not 'llama'", path);
        goto err;
    }
    if ((rc = load_hparams(m->gguf, &m->hp, diag))) {
        goto err;
    }
    if ((rc = vlm_tokenizer_new(m->gguf, &m->tok, diag))) {
        goto err;
    }
    struct llama_hparams *hp = &m->hp;
    hp->n_vocab = vlm_tokenizer_n_vocab(m->tok);
    int32_t n_vocab_key = hp->n_vocab;
    if ((rc = vlm_hparam_i32(m->gguf, "llama.vocab_size", 1, 1 << 24, false, &n_vocab_key, diag))) {
        goto err;
    }
    const int64_t n_q = (int64_t)hp->n_head * hp->head_dim;
    const int64_t n_kv = (int64_t)hp->n_head_kv * hp->head_dim;

    if ((rc = load_tensor(m, "token_embd.weight", hp->n_embd, hp->n_vocab, true, true, &m->tok_embd, diag)) ||
        (rc = load_tensor(m, "output_norm.weight", hp->n_embd, 1, true, false, &m->output_norm, diag)) ||
        (rc = load_tensor(m, "output.weight", hp->n_embd, hp->n_vocab, false, true, &m->output, diag))) {
        goto err;
    }
    if (!m->output.data) {
        m->output = m->tok_embd; // tied embeddings
    }
    if (n_vocab_key != hp->n_vocab) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: llama.vocab_size %d differs from the tokenizer's %d tokens", path,
                          n_vocab_key, hp->n_vocab);
        goto err;
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", path);
        goto err;
    }
    for (int32_t i = 0; i < hp->n_layer; i++) {
        struct llama_layer *l = &m->layers[i];
        char name[VLM_GGUF_MAX_NAME];
#define LT(field, suffix, ne0, ne1, req, mat)                                                                    \
    snprintf(name, sizeof name, "blk.%d.%s", i, suffix);                                                       \
    if ((rc = load_tensor(m, name, ne0, ne1, req, mat, &l->field, diag))) {                                   \
        goto err;                                                                                              \
    }
        LT(attn_norm, "attn_norm.weight", hp->n_embd, 1, true, false)
        LT(wq, "attn_q.weight", hp->n_embd, n_q, true, true)
        LT(wk, "attn_k.weight", hp->n_embd, n_kv, true, true)
        LT(wv, "attn_v.weight", hp->n_embd, n_kv, true, true)
        LT(wo, "attn_output.weight", n_q, hp->n_embd, true, true)
        LT(bq, "attn_q.bias", n_q, 1, false, false)
        LT(bk, "attn_k.bias", n_kv, 1, false, false)
        LT(bv, "attn_v.bias", n_kv, 1, false, false)
        LT(bo, "attn_output.bias", hp->n_embd, 1, false, false)
        LT(ffn_norm, "ffn_norm.weight", hp->n_embd, 1, true, false)
        LT(w_gate, "ffn_gate.weight", hp->n_embd, hp->n_ff, true, true)
        LT(w_up, "ffn_up.weight", hp->n_embd, hp->n_ff, true, true)
        LT(w_down, "ffn_down.weight", hp->n_ff, hp->n_embd, true, true)
#undef LT
    }

    struct vlm_llm_info *info = &m->info;
    snprintf(info->arch, sizeof info->arch, "llama");
    struct vlm_gguf_str gname;
    if (vlm_gguf_get_str(m->gguf, "general.name", &gname, NULL) == 0) {
        snprintf(info->name, sizeof info->name, "%.*s", (int)(gname.len < 63 ? gname.len : 63), gname.ptr);
    }
    info->n_vocab = hp->n_vocab;
    info->n_embd = hp->n_embd;
    info->n_layer = hp->n_layer;
    info->n_head = hp->n_head;
    info->n_head_kv = hp->n_head_kv;
    info->n_ctx_train = hp->n_ctx_train;
    info->weight_type = m->layers[0].wq.type;
    if (m->params.n_ctx <= 0) {
        m->params.n_ctx = hp->n_ctx_train < LLAMA_DEFAULT_CTX ? hp->n_ctx_train : LLAMA_DEFAULT_CTX;
    }
    if (m->params.kv_type != VLM_TYPE_F32 && m->params.kv_type != VLM_TYPE_F16) {
        rc = vlm_diag_set(diag, VLM_EINVAL, "%s: KV cache type %s not supported (F32 or F16)", path,
                          vlm_type_name(m->params.kv_type));
        goto err;
    }
    VLM_LOGD("%s: llama n_embd=%d n_layer=%d n_head=%d/%d head_dim=%d n_ff=%d n_vocab=%d window=%d", path,
             hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff, hp->n_vocab, hp->window);
    *out = m;
    return 0;

err:
    model_free(m);
    return rc;
}

static void llama_unload(void *model) {
    model_free(model);
}

static void llama_info(const void *model, struct vlm_llm_info *info) {
    *info = ((const struct llama_model *)model)->info;
}

static const struct vlm_tokenizer *llama_tokenizer(const void *model) {
    return ((const struct llama_model *)model)->tok;
}

// ---- sessions ------------------------------------------------------------------------------------------------

static void session_free(void *session) {
    struct llama_session *s = session;
    if (!s) {
        return;
    }
    if (s->k_cache) {
        for (int32_t i = 0; i < s->model->hp.n_layer; i++) {
            vlm_tensor_release(&s->k_cache[i]);
            vlm_tensor_release(&s->v_cache[i]);
        }
    }
    free(s->k_cache);
    free(s->v_cache);
    struct vlm_tensor *scratch[] = {&s->x, &s->xb, &s->xb2, &s->q, &s->k, &s->v, &s->att, &s->gate, &s->up, &s->logits};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++) {
        vlm_tensor_release(scratch[i]);
    }
    free(s);
}

static int alloc_f32(struct vlm_backend *be, int64_t ne0, int64_t ne1, struct vlm_tensor *out) {
    struct vlm_tensor desc = vlm_tensor_make(VLM_TYPE_F32, ne0, ne1, 1, 1);
    return vlm_tensor_alloc(be, &desc, out);
}

static int session_new(void *model, int32_t n_ctx, void **out, struct vlm_diag *diag) {
    struct llama_model *m = model;
    const struct llama_hparams *hp = &m->hp;
    if (n_ctx <= 0) {
        n_ctx = m->params.n_ctx;
    }
    if (n_ctx > (1 << 24)) {
        return vlm_diag_set(diag, VLM_EINVAL, "context size %d is too large", n_ctx);
    }
    struct llama_session *s = calloc(1, sizeof *s);
    if (!s) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    s->model = m;
    s->n_ctx = n_ctx;
    s->k_cache = calloc((size_t)hp->n_layer, sizeof *s->k_cache);
    s->v_cache = calloc((size_t)hp->n_layer, sizeof *s->v_cache);
    if (!s->k_cache || !s->v_cache) {
        session_free(s);
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    const int64_t n_q = (int64_t)hp->n_head * hp->head_dim;
    const int64_t n_kv = (int64_t)hp->n_head_kv * hp->head_dim;
    int rc = 0;
    for (int32_t i = 0; i < hp->n_layer && !rc; i++) {
        struct vlm_tensor desc = vlm_tensor_make(m->params.kv_type, n_kv, n_ctx, 1, 1);
        rc = vlm_tensor_alloc(m->be, &desc, &s->k_cache[i]);
        if (!rc) {
            rc = vlm_tensor_alloc(m->be, &desc, &s->v_cache[i]);
        }
    }
    const int64_t ub = LLAMA_UBATCH;
    if (rc || (rc = alloc_f32(m->be, hp->n_embd, ub, &s->x)) || (rc = alloc_f32(m->be, hp->n_embd, ub, &s->xb)) ||
        (rc = alloc_f32(m->be, hp->n_embd, ub, &s->xb2)) || (rc = alloc_f32(m->be, n_q, ub, &s->q)) ||
        (rc = alloc_f32(m->be, n_kv, ub, &s->k)) || (rc = alloc_f32(m->be, n_kv, ub, &s->v)) ||
        (rc = alloc_f32(m->be, n_q, ub, &s->att)) || (rc = alloc_f32(m->be, hp->n_ff, ub, &s->gate)) ||
        (rc = alloc_f32(m->be, hp->n_ff, ub, &s->up)) || (rc = alloc_f32(m->be, hp->n_vocab, ub, &s->logits))) {
        session_free(s);
        return vlm_diag_set(diag, rc, "cannot allocate a session of %d positions: %s", n_ctx, vlm_strerror(rc));
    }
    *out = s;
    return 0;
}

static int32_t session_n_past(const void *session) {
    return ((const struct llama_session *)session)->n_past;
}

static int32_t session_n_ctx(const void *session) {
    return ((const struct llama_session *)session)->n_ctx;
}

static int session_truncate(void *session, int32_t n_past) {
    struct llama_session *s = session;
    if (n_past < 0 || n_past > s->n_past) {
        return VLM_EINVAL;
    }
    s->n_past = n_past; // rows past n_past are simply overwritten later
    return 0;
}

// y = W x (+ b)
static void linear(struct vlm_backend *be, struct vlm_tensor *y, const struct vlm_tensor *w,
                   const struct vlm_tensor *b, const struct vlm_tensor *x) {
    vlm_op_matmul(be, y, w, x);
    if (b->data) {
        vlm_op_add(be, y, y, b);
    }
}

// Runs `n` rows (already embedded into s->x rows 0..n-1) at positions n_past.., leaving the final hidden
// state in s->x. Returns VLM_ECANCELED if the host asked to stop between layers.
static int forward_chunk(struct llama_session *s, int32_t n) {
    struct llama_model *m = s->model;
    const struct llama_hparams *hp = &m->hp;
    struct vlm_backend *be = m->be;
    const int32_t pos0 = s->n_past;

    struct vlm_tensor x = vlm_tensor_rows(&s->x, 0, n);     // [n_embd, n]
    struct vlm_tensor xb = vlm_tensor_rows(&s->xb, 0, n);   // [n_embd, n]
    struct vlm_tensor xb2 = vlm_tensor_rows(&s->xb2, 0, n); // [n_embd, n]
    struct vlm_tensor q = vlm_tensor_rows(&s->q, 0, n);     // [n_head * head_dim, n]
    struct vlm_tensor k = vlm_tensor_rows(&s->k, 0, n);     // [n_head_kv * head_dim, n]
    struct vlm_tensor v = vlm_tensor_rows(&s->v, 0, n);     // [n_head_kv * head_dim, n]
    struct vlm_tensor att = vlm_tensor_rows(&s->att, 0, n); // [n_head * head_dim, n]
    struct vlm_tensor gate = vlm_tensor_rows(&s->gate, 0, n); // [n_ff, n]
    struct vlm_tensor up = vlm_tensor_rows(&s->up, 0, n);     // [n_ff, n]

    const struct vlm_attention_params ap = {
        .n_head = hp->n_head,
        .n_head_kv = hp->n_head_kv,
        .head_dim = hp->head_dim,
        .pos0 = pos0,
        .n_kv = pos0 + n,
        .window = hp->window,
        .causal = true,
        .scale = 1.0f / sqrtf((float)hp->head_dim),
    };

    for (int32_t il = 0; il < hp->n_layer; il++) {
        if (m->host.should_cancel && m->host.should_cancel(m->host.cancel_user)) {
            return VLM_ECANCELED;
        }
        const struct llama_layer *l = &m->layers[il];

        // attention: xb = rmsnorm(x) * attn_norm
        vlm_op_rms_norm(be, &xb, &x, &l->attn_norm, hp->eps);
        linear(be, &q, &l->wq, &l->bq, &xb); // [n_head * head_dim, n]
        linear(be, &k, &l->wk, &l->bk, &xb); // [n_head_kv * head_dim, n]
        linear(be, &v, &l->wv, &l->bv, &xb); // [n_head_kv * head_dim, n]
        vlm_op_rope(be, &q, hp->n_head, hp->head_dim, hp->n_rot, pos0, hp->rope_base, hp->rope_scale, VLM_ROPE_NORM);
        vlm_op_rope(be, &k, hp->n_head_kv, hp->head_dim, hp->n_rot, pos0, hp->rope_base, hp->rope_scale,
                    VLM_ROPE_NORM);

        // append this chunk's keys and values at cache rows pos0 .. pos0 + n - 1
        struct vlm_tensor k_slot = vlm_tensor_rows(&s->k_cache[il], pos0, n);
        struct vlm_tensor v_slot = vlm_tensor_rows(&s->v_cache[il], pos0, n);
        vlm_op_copy(be, &k_slot, &k);
        vlm_op_copy(be, &v_slot, &v);

        vlm_op_attention(be, &att, &q, &s->k_cache[il], &s->v_cache[il], &ap); // [n_head * head_dim, n]
        linear(be, &xb2, &l->wo, &l->bo, &att);                               // [n_embd, n]
        vlm_op_add(be, &x, &x, &xb2);                                         // residual

        // feed-forward: x += W_down(silu(W_gate xb) * (W_up xb)), xb = rmsnorm(x) * ffn_norm
        vlm_op_rms_norm(be, &xb, &x, &l->ffn_norm, hp->eps);
        vlm_op_matmul(be, &gate, &l->w_gate, &xb); // [n_ff, n]
        vlm_op_matmul(be, &up, &l->w_up, &xb);     // [n_ff, n]
        vlm_op_swiglu(be, &gate, &gate, &up);
        vlm_op_matmul(be, &xb2, &l->w_down, &gate); // [n_embd, n]
        vlm_op_add(be, &x, &x, &xb2);
    }
    return 0;
}

static int session_eval(void *session, const struct vlm_llm_batch *batch, float *logits, struct vlm_diag *diag) {
    struct llama_session *s = session;
    struct llama_model *m = s->model;
    const struct llama_hparams *hp = &m->hp;
    struct vlm_backend *be = m->be;

    if (!batch || batch->n <= 0 || (!batch->tokens) == (!batch->embd)) {
        return vlm_diag_set(diag, VLM_EINVAL, "a batch needs n > 0 and exactly one of tokens or embeddings");
    }
    if (batch->n > s->n_ctx - s->n_past) {
        return vlm_diag_set(diag, VLM_ENOSPC, "context full: %d positions used, %d more needed, context size %d",
                            s->n_past, batch->n, s->n_ctx);
    }
    if (batch->tokens) {
        for (int32_t i = 0; i < batch->n; i++) {
            if (batch->tokens[i] < 0 || batch->tokens[i] >= hp->n_vocab) {
                return vlm_diag_set(diag, VLM_EINVAL, "token id %d at index %d is outside the vocabulary (%d)",
                                    batch->tokens[i], i, hp->n_vocab);
            }
        }
    }
    const int32_t start_past = s->n_past;
    for (int32_t done = 0; done < batch->n;) {
        int32_t n = batch->n - done;
        if (n > LLAMA_UBATCH) {
            n = LLAMA_UBATCH;
        }
        struct vlm_tensor x = vlm_tensor_rows(&s->x, 0, n);
        if (batch->tokens) {
            vlm_op_get_rows(be, &x, &m->tok_embd, batch->tokens + done, n);
        } else {
            int rc = vlm_tensor_set(&x, batch->embd + (size_t)done * hp->n_embd, 0,
                                    (size_t)n * hp->n_embd * sizeof(float));
            if (rc) {
                s->n_past = start_past;
                return vlm_diag_set(diag, rc, "cannot upload embeddings");
            }
        }
        int rc = forward_chunk(s, n);
        if (rc) {
            s->n_past = start_past; // a cancelled batch leaves the session as it was
            return vlm_diag_set(diag, rc, "evaluation %s", rc == VLM_ECANCELED ? "cancelled" : "failed");
        }
        s->n_past += n;
        done += n;

        // logits of every row (logits_all) or only of the batch's last row
        bool last_chunk = done == batch->n;
        if (logits && (batch->logits_all || last_chunk)) {
            int32_t row0 = batch->logits_all ? 0 : n - 1;
            int32_t n_out = batch->logits_all ? n : 1;
            struct vlm_tensor xs = vlm_tensor_rows(&s->x, row0, n_out);
            struct vlm_tensor xn = vlm_tensor_rows(&s->xb, 0, n_out);
            struct vlm_tensor lg = vlm_tensor_rows(&s->logits, 0, n_out);
            vlm_op_rms_norm(be, &xn, &xs, &m->output_norm, hp->eps);
            vlm_op_matmul(be, &lg, &m->output, &xn); // [n_vocab, n_out]
            float *dst = logits + (batch->logits_all ? (size_t)(done - n) * hp->n_vocab : 0);
            rc = vlm_tensor_get(&lg, dst, 0, (size_t)n_out * hp->n_vocab * sizeof(float));
            if (rc) {
                return vlm_diag_set(diag, rc, "cannot read logits");
            }
        }
    }
    return 0;
}

// ---- descriptor ------------------------------------------------------------------------------------------------

static const struct vlm_llm_ops llama_ops = {
    .load = llama_load,
    .unload = llama_unload,
    .info = llama_info,
    .tokenizer = llama_tokenizer,
    .session_new = session_new,
    .session_free = session_free,
    .session_n_past = session_n_past,
    .session_n_ctx = session_n_ctx,
    .session_truncate = session_truncate,
    .session_eval = session_eval,
};

static const char *const llama_archs[] = {"llama", NULL};

static const struct vlm_plugin_desc llama_desc = {
    .abi_version = VLM_PLUGIN_ABI_VERSION,
    .kind = VLM_PLUGIN_KIND_LLM,
    .name = "llm-llama",
    .version = "0.1.0",
    .description = "Llama-family LLMs (Llama 2, Vicuna, Mistral) from GGUF",
    .archs = llama_archs,
    .llm = &llama_ops,
};

VLM_PLUGIN_EXPORT(llama_desc)
