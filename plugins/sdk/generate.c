// The generation loop: prefill, then sample -> stream -> evaluate until a stop condition.
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vlm/generate.h"
#include "vlm/log.h"
#include "vlm/tokenizer.h"

double vlm_time_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

// Holds generated text that is not yet final: it may be the start of a stop string.
struct text_hold {
    char *buf;
    size_t len;
    size_t cap;
};

static int hold_append(struct text_hold *h, const char *s, size_t n) {
    if (h->len + n + 1 > h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        while (cap < h->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(h->buf, cap);
        if (!p) {
            return VLM_ENOMEM;
        }
        h->buf = p;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, s, n);
    h->len += n;
    h->buf[h->len] = 0;
    return 0;
}

// Emits what is final in the hold buffer. Returns false if the callback asked to stop; sets *hit when a stop
// string was found (the text from it on is dropped).
static bool hold_flush(struct text_hold *h, const struct vlm_generate_params *p, bool final, vlm_generate_piece_cb cb,
                       void *user, bool *hit) {
    size_t emit = h->len;
    *hit = false;
    if (p->n_stops > 0) {
        size_t partial = 0;
        int64_t at = vlm_stop_find(p->stops, p->n_stops, h->buf, h->len, &partial);
        if (at >= 0) {
            emit = (size_t)at;
            *hit = true;
        } else if (!final) {
            emit = h->len - partial;
        }
    }
    bool go_on = true;
    if (emit > 0 && cb) {
        go_on = cb(h->buf, emit, user);
    }
    memmove(h->buf, h->buf + emit, h->len - emit);
    h->len -= emit;
    if (h->buf) {
        h->buf[h->len] = 0;
    }
    return go_on;
}

int vlm_generate(const struct vlm_llm *llm, void *session, const struct vlm_prompt_part *parts, int n_parts,
                 const struct vlm_generate_params *params, vlm_generate_piece_cb cb, void *user, int32_t *out_tokens,
                 int32_t out_cap, struct vlm_generate_stats *stats, struct vlm_diag *diag) {
    const struct vlm_llm_ops *ops = llm->ops;
    struct vlm_llm_info info;
    ops->info(llm->model, &info);
    const struct vlm_tokenizer *tok = ops->tokenizer(llm->model);
    struct vlm_generate_stats st = {0};
    struct vlm_sampler *sampler = NULL;
    struct text_hold hold = {0};
    float *logits = malloc((size_t)info.n_vocab * sizeof(float));
    int rc = 0;
    if (!logits) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
        goto out;
    }
    rc = vlm_sampler_new(&params->sampling, info.n_vocab, &sampler);
    if (rc) {
        vlm_diag_set(diag, rc, "cannot create the sampler");
        goto out;
    }

    // ---- prefill -----------------------------------------------------------------------------------------
    double t0 = vlm_time_ms();
    bool have_logits = false;
    for (int i = 0; i < n_parts; i++) {
        if (parts[i].n <= 0) {
            continue;
        }
        struct vlm_llm_batch b = {.tokens = parts[i].tokens, .embd = parts[i].embd, .n = parts[i].n};
        rc = ops->session_eval(session, &b, logits, diag);
        if (rc) {
            goto out;
        }
        if (parts[i].tokens) {
            for (int32_t j = 0; j < parts[i].n; j++) {
                vlm_sampler_accept(sampler, parts[i].tokens[j]);
            }
        }
        st.n_prompt += parts[i].n;
        have_logits = true;
    }
    st.prefill_ms = vlm_time_ms() - t0;
    if (!have_logits) {
        rc = vlm_diag_set(diag, VLM_EINVAL, "empty prompt");
        goto out;
    }

    // ---- decode ------------------------------------------------------------------------------------------
    struct vlm_detok_stream ds;
    // The first generated piece keeps its leading space: it follows the prompt, it does not start a text.
    vlm_detok_stream_init(&ds, tok, false, false);
    double t1 = vlm_time_ms();
    char piece[512];
    for (;;) {
        if (params->n_predict >= 0 && st.n_gen >= params->n_predict) {
            st.stop = VLM_STOP_LENGTH;
            break;
        }
        int32_t id = vlm_sampler_sample(sampler, logits);
        vlm_sampler_accept(sampler, id);
        if (out_tokens && st.n_gen < out_cap) {
            out_tokens[st.n_gen] = id;
        }
        st.n_gen++;
        if (vlm_tokenizer_is_eog(tok, id)) {
            st.stop = VLM_STOP_EOS;
            break;
        }
        int32_t n = vlm_detok_stream_push(&ds, id, piece, (int32_t)sizeof piece);
        if (n > 0 && (rc = hold_append(&hold, piece, (size_t)n))) {
            vlm_diag_set(diag, rc, "out of memory");
            goto out;
        }
        bool hit;
        if (!hold_flush(&hold, params, false, cb, user, &hit)) {
            st.stop = VLM_STOP_CANCELLED;
            break;
        }
        if (hit) {
            st.stop = VLM_STOP_STRING;
            break;
        }
        if (params->n_predict >= 0 && st.n_gen >= params->n_predict) {
            st.stop = VLM_STOP_LENGTH; // no need to evaluate a token whose logits nobody reads
            break;
        }
        if (ops->session_n_past(session) >= ops->session_n_ctx(session)) {
            st.stop = VLM_STOP_CONTEXT;
            break;
        }
        struct vlm_llm_batch b = {.tokens = &id, .n = 1};
        rc = ops->session_eval(session, &b, logits, diag);
        if (rc) {
            goto out;
        }
        st.n_decode++;
    }
    st.decode_ms = vlm_time_ms() - t1;
    if (st.stop != VLM_STOP_STRING && st.stop != VLM_STOP_CANCELLED) {
        int32_t n = vlm_detok_stream_flush(&ds, piece, (int32_t)sizeof piece);
        if (n > 0 && (rc = hold_append(&hold, piece, (size_t)n))) {
            vlm_diag_set(diag, rc, "out of memory");
            goto out;
        }
        bool hit;
        hold_flush(&hold, params, true, cb, user, &hit);
        if (hit) {
            st.stop = VLM_STOP_STRING;
        }
    }

out:
    if (stats) {
        *stats = st;
    }
    free(hold.buf);
    vlm_sampler_free(sampler);
    free(logits);
    return rc;
}
