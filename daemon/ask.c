// Running an ask on a worker thread: decode and embed the images, format the prompt, splice and tokenize it,
// and generate with vlm_generate — the same libvlm calls (chat.h, vision.h, generate.h), in the same order and
// with the same parameters, as vlm-run, so one seed gives the same tokens in both.
#include <stdlib.h>
#include <string.h>

#include "daemon/vlmd.h"
#include "vlm/chat.h"
#include "vlm/image.h"
#include "vlm/tokenizer.h"
#include "vlm/vision.h"

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) {
        return 0;
    }
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        c *= 2;
    }
    char *p = realloc(*buf, c);
    if (!p) {
        return VLM_ENOMEM;
    }
    *buf = p;
    *cap = c;
    return 0;
}

struct ask_ctx {
    struct vlm__worker *w;
    struct vlm__job *job;
    bool oom;
};

// A model may emit the byte token <0x00>; protocol strings are UTF-8 without NUL (PROTOCOL.md), so a NUL in the
// answer becomes U+FFFD, as any other byte that is not text would. Writes into `out` (room for 3 * len bytes).
static size_t text_for_wire(const char *text, size_t len, char *out) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == 0) {
            memcpy(out + n, "\xEF\xBF\xBD", 3);
            n += 3;
        } else {
            out[n++] = text[i];
        }
    }
    return n;
}

static bool on_piece(const char *raw, size_t raw_len, void *user) {
    struct ask_ctx *a = user;
    struct vlm__job *job = a->job;
    struct vlmd *d = a->w->d;
    // Back-pressure: while the client has output_pause bytes unread the loop holds the ask, and the worker waits
    // here, before the piece goes anywhere, so nothing is lost or reordered when it resumes. The worker slot stays
    // taken (the session and its KV cache live on this stack); send_timeout bounds how long.
    vlm__job_wait_released(a->w, job);
    if (atomic_load(&job->cancel)) {
        return false;
    }
    char stack[512];
    char *text = raw_len * 3 <= sizeof stack ? stack : malloc(raw_len * 3);
    if (!text || grow(&job->text, &job->text_cap, job->text_len + raw_len * 3 + 1) != 0) {
        if (text != stack) {
            free(text);
        }
        a->oom = true;
        return false;
    }
    size_t len = text_for_wire(raw, raw_len, text);
    memcpy(job->text + job->text_len, text, len);
    job->text_len += len;
    job->text[job->text_len] = 0;
    uv_mutex_lock(&d->out_mu);
    job->prefill_done = true;
    bool ok = !job->stream || grow(&job->pending, &job->pending_cap, job->pending_len + len) == 0;
    if (ok && job->stream) {
        memcpy(job->pending + job->pending_len, text, len);
        job->pending_len += len;
    }
    uv_mutex_unlock(&d->out_mu);
    if (text != stack) {
        free(text);
    }
    if (!ok) {
        a->oom = true;
        return false;
    }
    if (job->stream) {
        vlm__job_post(d, job, false);
    }
    return !atomic_load(&job->cancel);
}

// Counting generated tokens as they happen. vlm_generate reports n_gen only at its end and calls the piece
// callback only when text becomes final, so the worker wraps the model's session_eval: every evaluation after
// the prompt's parts is the evaluation of the token sampled just before it. The worker thread runs one ask at a
// time, hence thread-local state rather than a field the plugin's signature has no room for.
struct eval_count {
    int (*eval)(void *session, const struct vlm_llm_batch *batch, float *logits, struct vlm_diag *diag);
    struct vlm__job *job;
    int n_prefill; // evaluations of the prompt (its parts)
    int n_calls;
};

static _Thread_local struct eval_count tl_count;

static int counting_eval(void *session, const struct vlm_llm_batch *batch, float *logits, struct vlm_diag *diag) {
    struct eval_count *ec = &tl_count;
    if (++ec->n_calls > ec->n_prefill) {
        atomic_store(&ec->job->n_gen_live, ec->n_calls - ec->n_prefill);
    }
    return ec->eval(session, batch, logits, diag);
}

// Decodes image i of the job and runs it through the chain's encoder and projector.
static int embed_image(struct vlm__job *job, uint32_t i, struct vlm_vision_embedding *out, struct vlm_diag *diag) {
    struct vlm__component *ec = job->comp[VLM_PLUGIN_KIND_ENCODER];
    struct vlm__component *pc = job->comp[VLM_PLUGIN_KIND_PROJECTOR];
    if (!ec || !ec->model || !pc || !pc->model) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "the chain's image encoder or projector is not loaded");
    }
    struct vlm_image img = {0};
    struct vlm_image_limits limits = vlm_image_default_limits();
    int rc = vlm_image_decode(job->images[i], job->image_len[i], &limits, &img, diag);
    if (rc) {
        return rc;
    }
    rc = vlm_vision_embed(vlm_plugin_desc(ec->plugin)->encoder, ec->model, vlm_plugin_desc(pc->plugin)->projector,
                          pc->model, &img, out, diag);
    if (rc == 0) {
        VLM_LOGI("req %llu: image %u: %dx%d, %d tiles (grid %dx%d) -> %d tokens in %.1f ms",
                 (unsigned long long)job->rid, i, img.width, img.height, out->n_tiles, out->grid_w, out->grid_h,
                 out->n, out->preprocess_ms + out->encode_ms + out->project_ms);
    }
    vlm_image_free(&img);
    return rc;
}

void vlm__ask_run(struct vlm__worker *w, struct vlm__job *job) {
    struct vlmd *d = w->d;
    struct vlm__component *lc = job->comp[VLM_PLUGIN_KIND_LLM];
    struct vlm_diag *diag = &job->diag;
    void *session = NULL;
    int32_t *ids = NULL;
    char *user = NULL, *text = NULL;
    struct vlm_vision_embedding emb[VLM_RPC_IMAGES_MAX] = {{0}};
    struct vlm_prompt_part parts[2 * VLM_RPC_IMAGES_MAX + 1];
    int64_t starts[VLM_RPC_IMAGES_MAX + 2];
    job->t_start = vlm_time_ms();
    if (atomic_load(&job->cancel)) {
        job->rc = VLM_ECANCELED;
        goto out;
    }
    if (!lc || !lc->model) { // its load failed (the loop will have said why in the log)
        job->rc = vlm_diag_set(diag, VLM_EBADMODEL, "the chain's language model is not loaded");
        goto out;
    }
    const struct vlm_plugin_desc *desc = vlm_plugin_desc(lc->plugin);
    struct vlm_llm llm = {.ops = desc->llm, .model = lc->model};
    const struct vlm_tokenizer *tok = llm.ops->tokenizer(llm.model);
    if (!(user = strndup(job->prompt, job->prompt_len))) {
        job->rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
        goto out;
    }
    int n_images = (int)job->n_images;
    int n_markers = n_images > 0 ? vlm_chat_count_markers(user) : 0;
    if (n_markers > 0 && n_markers != n_images) {
        job->rc = vlm_diag_set(diag, VLM_EBADREQUEST, "the prompt has %d %s markers for %d images", n_markers,
                               VLM_IMAGE_MARKER, n_images);
        goto out;
    }
    enum vlm_chat_format fmt = VLM_CHAT_NONE;
    vlm_chat_format_from_name(job->template_name, &fmt);
    if (fmt == VLM_CHAT_AUTO) {
        fmt = vlm_chat_format_auto(n_markers, n_images, lc->llm_info.name, false, false);
    }
    if (!(text = vlm_chat_format_prompt(user, n_images, fmt))) {
        job->rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
        goto out;
    }

    // images first: their embeddings are spliced in at the markers
    int64_t n_image_tokens = 0;
    for (int i = 0; i < n_images; i++) {
        if (atomic_load(&job->cancel)) {
            job->rc = VLM_ECANCELED;
            goto out;
        }
        if ((job->rc = embed_image(job, (uint32_t)i, &emb[i], diag)) != 0) {
            goto out;
        }
        if (emb[i].n_embd != lc->llm_info.n_embd) {
            job->rc = vlm_diag_set(diag, VLM_EBADMODEL, "the projector makes %d-wide embeddings; the LLM takes %d",
                                   emb[i].n_embd, lc->llm_info.n_embd);
            goto out;
        }
        n_image_tokens += emb[i].n;
    }
    int n_chunks = vlm_chat_tokenize(tok, text, true, false, n_images > 0, &ids, starts, VLM_RPC_IMAGES_MAX + 1);
    if (n_chunks < 0) {
        job->rc = vlm_diag_set(diag, n_chunks, "cannot tokenize the prompt");
        goto out;
    }
    if (n_chunks != n_images + 1) {
        job->rc = vlm_diag_set(diag, VLM_EINTERNAL, "%d prompt chunks for %d images", n_chunks, n_images);
        goto out;
    }
    int n_parts = 0;
    for (int c = 0; c < n_chunks; c++) {
        if (starts[c + 1] > starts[c]) {
            parts[n_parts++] =
                (struct vlm_prompt_part){.tokens = ids + starts[c], .n = (int32_t)(starts[c + 1] - starts[c])};
        }
        if (c < n_images) {
            parts[n_parts++] = (struct vlm_prompt_part){.embd = emb[c].embd, .n = emb[c].n};
        }
    }
    int64_t n = starts[n_chunks] + n_image_tokens;
    if ((job->rc = llm.ops->session_new(llm.model, d->cfg.ctx_size, &session, diag)) != 0) {
        goto out;
    }
    int32_t n_ctx = llm.ops->session_n_ctx(session);
    if (n == 0 || n >= n_ctx) {
        job->rc = vlm_diag_set(diag, n ? VLM_ETOOLARGE : VLM_EBADREQUEST,
                               "the prompt has %lld positions (%lld for images); the context holds %d", (long long)n,
                               (long long)n_image_tokens, n_ctx);
        goto out;
    }
    uv_mutex_lock(&d->out_mu);
    job->prefill_total = (uint64_t)n;
    uv_mutex_unlock(&d->out_mu);
    if (job->stream) {
        vlm__job_post(d, job, false);
    }
    struct ask_ctx a = {.w = w, .job = job};
    struct vlm_llm_ops counted = *llm.ops;
    int n_prefill = 0; // vlm_generate evaluates each non-empty part once
    for (int i = 0; i < n_parts; i++) {
        n_prefill += parts[i].n > 0;
    }
    tl_count = (struct eval_count){.eval = llm.ops->session_eval, .job = job, .n_prefill = n_prefill};
    counted.session_eval = counting_eval;
    struct vlm_llm llm_counted = {.ops = &counted, .model = llm.model};
    job->rc = vlm_generate(&llm_counted, session, parts, n_parts, &job->gp, on_piece, &a, NULL, 0, &job->stats,
                           diag);
    tl_count = (struct eval_count){0};
    if (a.oom) {
        job->rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    } else if (job->rc == 0 && job->stats.stop == VLM_STOP_CANCELLED) {
        job->rc = VLM_ECANCELED;
    }
out:
    if (session) {
        vlm_plugin_desc(lc->plugin)->llm->session_free(session);
    }
    for (int i = 0; i < VLM_RPC_IMAGES_MAX; i++) {
        vlm_vision_embedding_free(&emb[i]);
    }
    free(ids);
    free(text);
    free(user);
    job->t_end = vlm_time_ms();
}
