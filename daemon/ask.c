// Running an ask on a worker thread: format the prompt, tokenize it, and generate with vlm_generate — the same
// calls, in the same order and with the same parameters, as vlm-run, so one seed gives the same tokens in both.
#include <stdlib.h>
#include <string.h>

#include "daemon/vlmd.h"
#include "vlm/tokenizer.h"

#define VICUNA_SYSTEM                                                                                            \
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "  \
    "detailed, and polite answers to the human's questions."

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

static bool on_piece(const char *text, size_t len, void *user) {
    struct ask_ctx *a = user;
    struct vlm__job *job = a->job;
    struct vlmd *d = a->w->d;
    if (grow(&job->text, &job->text_cap, job->text_len + len + 1) != 0) {
        a->oom = true;
        return false;
    }
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
    if (!ok) {
        a->oom = true;
        return false;
    }
    if (job->stream) {
        vlm__job_post(d, job, false);
    }
    return !atomic_load(&job->cancel);
}

// The prompt text as the chain's template lays it out for a text-only ask (vlm-run's format_prompt with no
// image: "auto" and "none" keep the prompt as given). Returns a malloc'd string or NULL.
static char *format_text(const char *template_name, const char *prompt, size_t len, size_t *out_len) {
    const char *pre = "", *post = "";
    if (!strcmp(template_name, "vicuna")) {
        pre = VICUNA_SYSTEM " USER: ";
        post = " ASSISTANT:";
    } else if (!strcmp(template_name, "mistral")) {
        pre = "[INST] ";
        post = " [/INST]";
    }
    size_t a = strlen(pre), b = strlen(post);
    char *s = malloc(a + len + b + 1);
    if (!s) {
        return NULL;
    }
    memcpy(s, pre, a);
    memcpy(s + a, prompt, len);
    memcpy(s + a + len, post, b + 1);
    *out_len = a + len + b;
    return s;
}

// SEAM (images): the image path — decode each job->images[i] with vlm_image_decode, preprocess/encode through
// job->comp[VLM_PLUGIN_KIND_ENCODER], project through job->comp[VLM_PLUGIN_KIND_PROJECTOR], then split the
// formatted prompt at <image> markers and tokenize the chunks as LLaVA does — belongs here. The splicing code
// (format_prompt, tokenize_chunks, tokenize_after_image) lives in tools/vlm-run/vlm-run.c today; it is to move
// into libvlm (include/vlm/chat.h) so that vlm-run and vlmd share it instead of holding two copies.
static int prompt_parts_with_images(struct vlm__job *job, struct vlm_diag *diag) {
    return vlm_diag_set(diag, VLM_EUNSUPPORTED, "req %llu: images are not wired into vlmd yet",
                        (unsigned long long)job->rid);
}

void vlm__ask_run(struct vlm__worker *w, struct vlm__job *job) {
    struct vlmd *d = w->d;
    struct vlm__component *lc = job->comp[VLM_PLUGIN_KIND_LLM];
    struct vlm_diag *diag = &job->diag;
    void *session = NULL;
    int32_t *ids = NULL;
    char *text = NULL;
    job->t_start = vlm_time_ms();
    if (atomic_load(&job->cancel)) {
        job->rc = VLM_ECANCELED;
        goto out;
    }
    if (!lc || !lc->model) { // its load failed (the loop will have said why in the log)
        job->rc = vlm_diag_set(diag, VLM_EBADMODEL, "the chain's language model is not loaded");
        goto out;
    }
    if (job->n_images > 0) {
        job->rc = prompt_parts_with_images(job, diag);
        goto out;
    }
    const struct vlm_plugin_desc *desc = vlm_plugin_desc(lc->plugin);
    struct vlm_llm llm = {.ops = desc->llm, .model = lc->model};
    const struct vlm_tokenizer *tok = llm.ops->tokenizer(llm.model);
    size_t text_len;
    text = format_text(job->template_name, job->prompt, job->prompt_len, &text_len);
    if (!text) {
        job->rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
        goto out;
    }
    int64_t n = vlm_tokenize(tok, text, text_len, true, false, NULL, 0);
    if (n < 0) {
        job->rc = vlm_diag_set(diag, (int)n, "cannot tokenize the prompt");
        goto out;
    }
    if (!(ids = malloc((size_t)(n ? n : 1) * sizeof *ids))) {
        job->rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
        goto out;
    }
    vlm_tokenize(tok, text, text_len, true, false, ids, n);
    if ((job->rc = llm.ops->session_new(llm.model, d->cfg.ctx_size, &session, diag)) != 0) {
        goto out;
    }
    int32_t n_ctx = llm.ops->session_n_ctx(session);
    if (n == 0 || n >= n_ctx) {
        job->rc = vlm_diag_set(diag, n ? VLM_ETOOLARGE : VLM_EBADREQUEST,
                               "the prompt has %lld tokens; the context holds %d", (long long)n, n_ctx);
        goto out;
    }
    uv_mutex_lock(&d->out_mu);
    job->prefill_total = (uint64_t)n;
    uv_mutex_unlock(&d->out_mu);
    if (job->stream) {
        vlm__job_post(d, job, false);
    }
    struct vlm_prompt_part part = {.tokens = ids, .n = (int32_t)n};
    struct ask_ctx a = {.w = w, .job = job};
    job->rc = vlm_generate(&llm, session, &part, 1, &job->gp, on_piece, &a, NULL, 0, &job->stats, diag);
    if (a.oom) {
        job->rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    } else if (job->rc == 0 && job->stats.stop == VLM_STOP_CANCELLED) {
        job->rc = VLM_ECANCELED;
    }
out:
    if (session) {
        vlm_plugin_desc(lc->plugin)->llm->session_free(session);
    }
    free(ids);
    free(text);
    job->t_end = vlm_time_ms();
}
