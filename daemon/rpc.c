// RPC dispatch, on the loop thread: a table from method to handler. Handlers decode with proto.h, answer at
// once (hello, status, ...) or hand work to a worker (ask) or to the chain module (load, swap) which answer
// later. Error replies carry a stable code and fixed text (plus the name of the field or chain concerned),
// never a path or a library's message; the details go to the log under the request's id.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vlmd.h"

static void reply_diag(struct vlm__conn *c, uint32_t msgid, int rc, const struct vlm_diag *diag) {
    if (vlm_proto_error_encode_diag(&c->out, msgid, rc, diag) == 0) {
        vlm__conn_flush(c);
    }
}

static void reply_chain_error(struct vlm__conn *c, uint32_t msgid, int wire, const char *what,
                              struct vlm_proto_str chain) {
    char msg[VLM_PROTO_NAME_MAX + 64];
    snprintf(msg, sizeof msg, "%s '%.*s'", what, (int)chain.len, chain.ptr ? chain.ptr : "");
    vlm__conn_error(c, msgid, wire, msg);
}

// A load, swap or chain-load failure: the code from `rc`, the fixed text `why` (vlm__why); details are logged.
static void reply_why(struct vlm__conn *c, uint32_t msgid, int rc, const char *chain, const char *why) {
    int wire = vlm_proto_err_from_code(rc);
    char msg[VLM_PROTO_NAME_MAX + 128];
    snprintf(msg, sizeof msg, "chain '%s': %s", chain, why ? why : vlm_proto_err_text(wire));
    vlm__conn_error(c, msgid, wire, msg);
}

// ---- hello ------------------------------------------------------------------------------------------------

static void on_hello(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlm_rpc_hello h;
    struct vlm_diag diag = {0};
    uint32_t agreed;
    int rc = vlm_rpc_hello_decode(msg, &h, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    if (vlm_rpc_hello_negotiate(&h, &agreed, &diag) != 0) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EUNSUPPORTED_PROTOCOL, diag.msg);
        return;
    }
    static const char *const caps[] = {"stream", "cancel", "progress", "load", "swap"};
    struct vlm_rpc_hello_result r = {
        .server = vlm_proto_str_c("vlmd"),
        .version = vlm_proto_str_c(VLMD_VERSION),
        .protocol = agreed,
        .limits = c->d->limits,
    };
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        r.capabilities[r.n_capabilities++] = vlm_proto_str_c(caps[i]);
    }
    if (vlm_rpc_hello_result_encode(&c->out, msg->msgid, &r) == 0) {
        vlm__conn_flush(c);
    }
    VLM_LOGD("conn %llu: hello from '%.*s', protocol %u", (unsigned long long)c->id, (int)h.client.len,
             h.client.ptr ? h.client.ptr : "", agreed);
}

// ---- ask --------------------------------------------------------------------------------------------------

static struct vlm__job *find_job(struct vlm__conn *c, uint32_t msgid) {
    for (struct vlm__job *j = c->jobs; j; j = j->conn_next) {
        if (j->msgid == msgid) {
            return j;
        }
    }
    return NULL;
}

static char *dup_bytes(const void *p, size_t n) {
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

static void release_job(struct vlmd *d, struct vlm__job *job) {
    for (int k = 0; k < VLMD_SLOTS; k++) {
        vlm__component_unref(d, job->comp[k]);
        job->comp[k] = NULL;
    }
    if (job->chain) {
        vlm__chain_unref(d, job->chain);
        job->chain = NULL;
    }
    vlm__job_free(job);
}

// Copies what the job needs out of the request (whose bytes go away when this callback returns).
static int fill_ask(struct vlm__job *job, const struct vlm_rpc_ask *a) {
    if (!(job->prompt = dup_bytes(a->prompt.ptr, a->prompt.len))) {
        return VLM_ENOMEM;
    }
    job->prompt_len = a->prompt.len;
    job->stream = a->stream;
    job->gp.n_predict = a->max_tokens;
    job->gp.sampling = (struct vlm_sampler_params){
        .temperature = a->temperature,
        .top_k = a->top_k,
        .top_p = a->top_p,
        .min_p = a->min_p,
        .repeat_penalty = a->repeat_penalty,
        .repeat_last_n = a->repeat_last_n,
        .seed = a->seed,
    };
    for (uint32_t i = 0; i < a->n_stop; i++) {
        if (!(job->stops[i] = dup_bytes(a->stop[i].ptr, a->stop[i].len))) {
            return VLM_ENOMEM;
        }
    }
    job->gp.stops = (const char *const *)job->stops;
    job->gp.n_stops = (int)a->n_stop;
    for (uint32_t i = 0; i < a->n_images; i++) {
        if (!(job->images[i] = malloc(a->images[i].len))) {
            return VLM_ENOMEM;
        }
        memcpy(job->images[i], a->images[i].ptr, a->images[i].len);
        job->image_len[i] = a->images[i].len;
    }
    job->n_images = a->n_images;
    return 0;
}

static void on_ask(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlmd *d = c->d;
    struct vlm_rpc_ask a;
    struct vlm_diag diag = {0};
    int rc = vlm_rpc_ask_decode(msg, &d->limits, &a, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    if (find_job(c, msg->msgid)) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EBAD_REQUEST, "msgid already in use by a running ask");
        return;
    }
    struct vlm__chain *chain = a.chain.ptr ? vlm__chain_find(d, a.chain.ptr, a.chain.len) : vlm__chain_default(d);
    if (!chain) {
        if (a.chain.ptr) {
            reply_chain_error(c, msg->msgid, VLM_PROTO_ENOT_FOUND, "no chain", a.chain);
        } else {
            vlm__conn_error(c, msg->msgid, VLM_PROTO_ENOT_FOUND, "no chain is configured");
        }
        return;
    }
    if (a.n_images > 0 && !chain->spec.slot[VLM_PLUGIN_KIND_ENCODER].model[0]) {
        reply_chain_error(c, msg->msgid, VLM_PROTO_EUNSUPPORTED, "images: no image encoder in chain",
                          vlm_proto_str_c(chain->spec.name));
        return;
    }
    if (a.n_images > 0 && !chain->spec.slot[VLM_PLUGIN_KIND_PROJECTOR].model[0]) {
        reply_chain_error(c, msg->msgid, VLM_PROTO_EUNSUPPORTED, "images: no projector in chain",
                          vlm_proto_str_c(chain->spec.name));
        return;
    }
    // A chain that is not loaded (unloaded, or its load failed) loads now; the ask waits behind the load in
    // the worker's queue. An image ask needs the encoder and projector too.
    bool missing = false;
    for (int k = a.n_images > 0 ? VLM_PLUGIN_KIND_ENCODER : VLM_PLUGIN_KIND_LLM; k <= VLM_PLUGIN_KIND_LLM; k++) {
        missing |= !chain->slot[k] || chain->slot[k]->state == VLM__COMP_FAILED;
    }
    if (missing) {
        const char *why = NULL;
        if ((rc = vlm__chain_load(d, chain, 0, NULL, &diag, &why)) != 0) {
            reply_why(c, msg->msgid, rc, chain->spec.name, why);
            return;
        }
    }
    struct vlm__job *job = vlm__job_new(VLM__JOB_ASK);
    if (!job || fill_ask(job, &a) != 0) {
        vlm__job_free(job);
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EOUT_OF_MEMORY, NULL);
        return;
    }
    job->rid = ++d->next_rid;
    job->conn = c;
    job->msgid = msg->msgid;
    job->chain = chain;
    vlm__chain_ref(chain);
    memcpy(job->template_name, chain->spec.template_name, sizeof job->template_name);
    for (int k = 1; k < VLMD_SLOTS; k++) {
        if ((job->comp[k] = chain->slot[k])) {
            vlm__component_ref(job->comp[k]);
        }
    }
    job->t_queued = vlm_time_ms();
    if (c->paused) { // the client has not read what it was sent: its new stream starts held
        vlm__conn_hold(c, job, true);
    }
    struct vlm__worker *w = job->comp[VLM_PLUGIN_KIND_LLM]->worker;
    if (vlm__worker_submit(w, job) != 0) {
        VLM_LOGI("req %llu: conn %llu ask %u: busy (queue full)", (unsigned long long)job->rid,
                 (unsigned long long)c->id, msg->msgid);
        release_job(d, job);
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EBUSY, "busy: the request queue is full, try again later");
        return;
    }
    d->requests_total++;
    d->jobs_in_flight++;
    chain->active++;
    job->conn_next = c->jobs;
    c->jobs = job;
    uint32_t waiting = vlm__worker_waiting(w);
    VLM_LOGI("req %llu: conn %llu ask %u: chain %s, %u prompt bytes, max_tokens %d, temperature %.2f, seed %llu, "
             "%u waiting",
             (unsigned long long)job->rid, (unsigned long long)c->id, msg->msgid, chain->spec.name, a.prompt.len,
             a.max_tokens, (double)a.temperature, (unsigned long long)a.seed, waiting);
    if (job->stream) {
        vlm__conn_progress(c, msg->msgid, VLM_RPC_STAGE_QUEUED, waiting ? waiting - 1 : 0, waiting);
    }
}

static double ms_between(double a, double b) {
    return b > a && a > 0 ? b - a : 0;
}

void vlm__rpc_ask_done(struct vlmd *d, struct vlm__job *job) {
    struct vlm__conn *c = job->conn;
    if (job->chain) {
        job->chain->active--;
    }
    const struct vlm_generate_stats *st = &job->stats;
    // Tokens sampled after the cancel arrived (-1: it was never running when cancelled). n_gen_live may lag the
    // true count by one token, never lead it, so this errs high, never low.
    int after_cancel = job->gen_at_cancel >= 0 ? st->n_gen - job->gen_at_cancel : -1;
    if (after_cancel < -1) {
        after_cancel = 0;
    }
    char paused[64] = "";
    if (job->n_pauses) { // the client's reading, not the model, set the pace
        if (atomic_load(&job->hold)) {
            job->paused_ms += vlm_time_ms() - job->t_held;
        }
        snprintf(paused, sizeof paused, ", paused %u times for %.1f ms (client not reading)", job->n_pauses,
                 job->paused_ms);
    }
    if (job->rc == 0) {
        VLM_LOGI("req %llu: done: %d prompt + %d generated tokens, prefill %.1f ms, decode %.1f ms (%.1f tok/s), "
                 "queued %.1f ms%s",
                 (unsigned long long)job->rid, st->n_prompt, st->n_gen, st->prefill_ms, st->decode_ms,
                 st->decode_ms > 0 ? st->n_decode / (st->decode_ms / 1e3) : 0.0,
                 ms_between(job->t_queued, job->t_start), paused);
    } else if (job->rc == VLM_ECANCELED) {
        if (after_cancel >= 0) {
            VLM_LOGI("req %llu: cancelled after %d tokens: %d generated after the cancel arrived, stopped %.2f ms "
                     "after it%s%s",
                     (unsigned long long)job->rid, st->n_gen, after_cancel, ms_between(job->t_cancel, job->t_end),
                     c ? "" : " (client gone)", paused);
        } else {
            VLM_LOGI("req %llu: cancelled before it ran%s", (unsigned long long)job->rid, c ? "" : " (client gone)");
        }
    } else {
        VLM_LOGE("req %llu: failed: %s", (unsigned long long)job->rid, job->diag.msg);
    }
    if (c) {
        for (struct vlm__job **p = &c->jobs; *p; p = &(*p)->conn_next) {
            if (*p == job) {
                *p = job->conn_next;
                break;
            }
        }
        if (job->rc == 0) {
            struct vlm_rpc_ask_result r = {
                .text = {job->text ? job->text : "", (uint32_t)job->text_len},
                .tokens_prompt = (uint32_t)st->n_prompt,
                .tokens_generated = (uint32_t)st->n_gen,
                .stop_reason = (enum vlm_rpc_stop)st->stop,
                .timings = {
                    .queued_ms = ms_between(job->t_queued, job->t_start),
                    .prefill_ms = st->prefill_ms,
                    .decode_ms = st->decode_ms,
                    .total_ms = ms_between(job->t_queued, job->t_end),
                },
            };
            if (vlm_rpc_ask_result_encode(&c->out, job->msgid, &r) == 0) {
                vlm__conn_flush(c);
            } else {
                vlm__conn_error(c, job->msgid, VLM_PROTO_EINTERNAL, NULL);
            }
        } else if (job->rc == VLM_ECANCELED) {
            char msg[96];
            if (after_cancel >= 0) {
                snprintf(msg, sizeof msg, "%s: %d tokens generated after the cancel arrived",
                         vlm_proto_err_text(job->cancel_code), after_cancel);
            }
            vlm__conn_error(c, job->msgid, job->cancel_code, after_cancel >= 0 ? msg : NULL);
        } else {
            int wire = vlm_proto_err_from_code(job->rc);
            // Only our own request-level messages go to the client; model and plugin messages stay in the log.
            bool own = wire == VLM_PROTO_ETOO_LARGE || wire == VLM_PROTO_EBAD_REQUEST;
            vlm__conn_error(c, job->msgid, wire, own ? job->diag.msg : NULL);
        }
    }
    release_job(d, job);
}

// ---- cancel -----------------------------------------------------------------------------------------------

static void on_cancel(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlm_rpc_cancel p;
    struct vlm_diag diag = {0};
    int rc = vlm_rpc_cancel_decode(msg, &p, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    struct vlm__job *job = find_job(c, p.id);
    if (!job) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_ENOT_FOUND, "no running request with this id");
        return;
    }
    if (vlm_rpc_cancel_result_encode(&c->out, msg->msgid) == 0) {
        vlm__conn_flush(c);
    }
    VLM_LOGI("req %llu: cancel asked by conn %llu", (unsigned long long)job->rid, (unsigned long long)c->id);
    if (vlm__worker_unqueue(job->worker, job)) {
        job->rc = VLM_ECANCELED;
        c->d->jobs_in_flight--;
        vlm__rpc_ask_done(c->d, job);
    } else {
        vlm__job_cancel(job); // the worker stops at the next token (or layer)
    }
}

// ---- status, chains, plugins ----------------------------------------------------------------------------

static void on_status(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlmd *d = c->d;
    struct vlm_diag diag = {0};
    int rc = vlm_rpc_noparams_decode(msg, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    struct vlm_rpc_worker workers[8];
    char names[8][VLM_PROTO_NAME_MAX + 1];
    uint32_t n = 0, waiting = 0;
    for (int i = 0; i < d->n_workers && n < 8; i++, n++) {
        struct vlm__worker *w = &d->workers[i];
        uv_mutex_lock(&w->mu);
        struct vlm__job *cur = w->current;
        workers[n] = (struct vlm_rpc_worker){.device = vlm_proto_str_c(w->device), .busy = cur != NULL};
        if (cur) {
            workers[n].request = cur->msgid;
            if (cur->chain) {
                snprintf(names[n], sizeof names[n], "%s", cur->chain->spec.name);
                workers[n].chain = vlm_proto_str_c(names[n]);
            }
        }
        waiting += w->n_waiting;
        uv_mutex_unlock(&w->mu);
    }
    struct vlm_rpc_status s = {
        .version = vlm_proto_str_c(VLMD_VERSION),
        .protocol = VLM_PROTO_VERSION,
        .uptime_s = (vlm_time_ms() - d->t_start) / 1e3,
        .clients = d->n_conns,
        .queue_length = waiting,
        .queue_capacity = d->cfg.queue_depth,
        .requests_total = d->requests_total,
        .n_workers = n,
        .workers = workers,
    };
    if (vlm_rpc_status_encode(&c->out, msg->msgid, &s) == 0) {
        vlm__conn_flush(c);
    } else {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EINTERNAL, NULL);
    }
}

static void on_chains(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlmd *d = c->d;
    struct vlm_diag diag = {0};
    int rc = vlm_rpc_noparams_decode(msg, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    uint32_t n = 0;
    for (struct vlm__chain *ch = d->chains; ch; ch = ch->next) {
        n++;
    }
    struct vlm_rpc_chain *list = calloc(n ? n : 1, sizeof *list);
    if (!list) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EOUT_OF_MEMORY, NULL);
        return;
    }
    n = 0;
    for (struct vlm__chain *ch = d->chains; ch; ch = ch->next) {
        vlm__chain_describe(ch, &list[n++]);
    }
    if (vlm_rpc_chains_encode(&c->out, msg->msgid, list, n) == 0) {
        vlm__conn_flush(c);
    } else {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EINTERNAL, NULL);
    }
    free(list);
}

static void on_plugins(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlmd *d = c->d;
    struct vlm_diag diag = {0};
    int rc = vlm_rpc_noparams_decode(msg, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    struct vlm_rpc_plugin *list = calloc(d->reg.n ? d->reg.n : 1, sizeof *list);
    if (!list) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EOUT_OF_MEMORY, NULL);
        return;
    }
    for (uint32_t i = 0; i < d->reg.n; i++) {
        const struct vlm__plugin_entry *e = &d->reg.entries[i];
        list[i] = (struct vlm_rpc_plugin){
            .name = vlm_proto_str_c(e->name),
            .kind = (enum vlm_rpc_component)e->kind,
            .version = vlm_proto_str_c(e->version),
            .file = vlm_proto_str_c(e->file),
            .abi = e->abi,
            .instances = e->instances,
        };
    }
    if (vlm_rpc_plugins_encode(&c->out, msg->msgid, list, d->reg.n) == 0) {
        vlm__conn_flush(c);
    } else {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EINTERNAL, NULL);
    }
    free(list);
}

// ---- load, unload, swap -----------------------------------------------------------------------------------

static bool to_slot(const struct vlm_rpc_component_req *r, int kind, struct vlm__slot_spec *s) {
    memset(s, 0, sizeof *s);
    (void)kind;
    if (r->model.len >= sizeof s->model || r->plugin.len >= sizeof s->plugin) {
        return false;
    }
    memcpy(s->model, r->model.ptr ? r->model.ptr : "", r->model.len);
    memcpy(s->plugin, r->plugin.ptr ? r->plugin.ptr : "", r->plugin.len);
    return r->plugin.len == 0 || vlm__name_valid(s->plugin, r->plugin.len);
}

// swap (and load with a model for an existing chain): load the new component, then switch in one step.
static void start_swap(struct vlm__conn *c, uint32_t msgid, struct vlm__chain *chain, int kind,
                       const struct vlm__slot_spec *slot, enum vlm__op_kind op_kind) {
    struct vlmd *d = c->d;
    struct vlm__op *op = vlm__op_new(d, op_kind == VLM__OP_LOAD ? VLM__OP_SWAP : op_kind, c, msgid, chain);
    if (!op) {
        vlm__conn_error(c, msgid, VLM_PROTO_EOUT_OF_MEMORY, NULL);
        return;
    }
    op->swap_spec[kind] = *slot;
    op->swap_in[kind] = vlm__component_get(d, (enum vlm_plugin_kind)kind, slot, op, &op->diag, &op->why);
    if (!op->swap_in[kind]) {
        op->rc = op->diag.code ? op->diag.code : VLM_EINVAL;
    }
    VLM_LOGI("req %llu: conn %llu: chain %s: %s %s -> %s", (unsigned long long)op->rid, (unsigned long long)c->id,
             chain->spec.name, op_kind == VLM__OP_SWAP ? "swap" : "load", kind == 1 ? "encoder" : kind == 2 ?
             "projector" : "llm", slot->model);
    vlm__op_finish(d, op);
}

static void on_component(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    struct vlmd *d = c->d;
    struct vlm_rpc_component_req r;
    struct vlm_diag diag = {0};
    int rc = vlm_rpc_component_req_decode(msg, &r, &diag);
    if (rc) {
        reply_diag(c, msg->msgid, rc, &diag);
        return;
    }
    struct vlm__slot_spec slot;
    int kind = (int)r.component;
    if (!vlm__name_valid(r.chain.ptr, r.chain.len)) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EBAD_REQUEST, "field 'chain': expected 1..255 of [A-Za-z0-9._-]");
        return;
    }
    if (!to_slot(&r, kind, &slot)) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EBAD_REQUEST, "field 'model' or 'plugin': invalid");
        return;
    }
    struct vlm__chain *chain = vlm__chain_find(d, r.chain.ptr, r.chain.len);
    if (msg->method == VLM_RPC_UNLOAD) {
        if (!chain) {
            reply_chain_error(c, msg->msgid, VLM_PROTO_ENOT_FOUND, "no chain", r.chain);
            return;
        }
        VLM_LOGI("conn %llu: chain %s: unload %s", (unsigned long long)c->id, chain->spec.name,
                 kind ? (kind == 1 ? "encoder" : kind == 2 ? "projector" : "llm") : "all");
        vlm__chain_unload(d, chain, kind);
        struct vlm_rpc_chain desc;
        vlm__chain_describe(chain, &desc);
        if (vlm_rpc_chain_result_encode(&c->out, msg->msgid, &desc) == 0) {
            vlm__conn_flush(c);
        }
        return;
    }
    if (msg->method == VLM_RPC_SWAP) {
        if (!chain) {
            reply_chain_error(c, msg->msgid, VLM_PROTO_ENOT_FOUND, "no chain", r.chain);
            return;
        }
        start_swap(c, msg->msgid, chain, kind, &slot, VLM__OP_SWAP);
        return;
    }
    // load
    if (!slot.model[0] && slot.plugin[0] && chain && chain->spec.slot[kind].model[0]) {
        // the same model through another plugin: a swap of the plugin
        snprintf(slot.model, sizeof slot.model, "%s", chain->spec.slot[kind].model);
        slot.paths = chain->spec.slot[kind].paths;
    }
    if (!slot.model[0] && slot.plugin[0]) {
        vlm__conn_error(c, msg->msgid, chain ? VLM_PROTO_EBAD_REQUEST : VLM_PROTO_ENOT_FOUND,
                        chain ? "field 'plugin': the chain has no such component; give a 'model' too" : "no chain");
        return;
    }
    if (slot.model[0]) {
        kind = kind ? kind : VLM_PLUGIN_KIND_LLM;
        if (chain) {
            start_swap(c, msg->msgid, chain, kind, &slot, VLM__OP_LOAD);
            return;
        }
        // A chain created at run time: it starts with its LLM; vision components come with later loads.
        char name[VLM_PROTO_NAME_MAX + 1] = {0};
        memcpy(name, r.chain.ptr, r.chain.len);
        if (kind != VLM_PLUGIN_KIND_LLM) {
            reply_why(c, msg->msgid, VLM_EINVAL, name, VLM__WHY_NEW_CHAIN_KIND);
            return;
        }
        char path[PATH_MAX];
        uint64_t size;
        const char *why = NULL;
        if ((rc = vlm__model_resolve(d, slot.model, false, path, sizeof path, &size, NULL, &diag, &why)) != 0) {
            VLM_LOGI("conn %llu: chain %s: load refused: %s", (unsigned long long)c->id, name, diag.msg);
            reply_why(c, msg->msgid, rc, name, why);
            return;
        }
        struct vlm__chain_spec spec = {0};
        memcpy(spec.name, r.chain.ptr, r.chain.len);
        snprintf(spec.template_name, sizeof spec.template_name, "auto");
        spec.slot[kind] = slot;
        if (!(chain = vlm__chain_add(d, &spec))) {
            vlm__conn_error(c, msg->msgid, VLM_PROTO_EOUT_OF_MEMORY, NULL);
            return;
        }
        VLM_LOGI("conn %llu: chain %s created", (unsigned long long)c->id, spec.name);
    } else if (!chain) {
        reply_chain_error(c, msg->msgid, VLM_PROTO_ENOT_FOUND, "no chain", r.chain);
        return;
    }
    struct vlm__op *op = vlm__op_new(d, VLM__OP_LOAD, c, msg->msgid, chain);
    if (!op) {
        vlm__conn_error(c, msg->msgid, VLM_PROTO_EOUT_OF_MEMORY, NULL);
        return;
    }
    if ((rc = vlm__chain_load(d, chain, kind, op, &op->diag, &op->why)) != 0) {
        op->rc = rc;
    }
    vlm__op_finish(d, op);
}

// ---- dispatch ---------------------------------------------------------------------------------------------

typedef void (*handler_fn)(struct vlm__conn *c, const struct vlm_proto_msg *msg);

static const struct {
    enum vlm_rpc_method method;
    handler_fn fn;
    bool while_stopping; // still served after SIGTERM
} handlers[] = {
    {VLM_RPC_HELLO, on_hello, true},      {VLM_RPC_ASK, on_ask, false},       {VLM_RPC_CANCEL, on_cancel, true},
    {VLM_RPC_STATUS, on_status, true},    {VLM_RPC_CHAINS, on_chains, true},  {VLM_RPC_PLUGINS, on_plugins, true},
    {VLM_RPC_LOAD, on_component, false},  {VLM_RPC_UNLOAD, on_component, false}, {VLM_RPC_SWAP, on_component, false},
};

void vlm__rpc_dispatch(struct vlm__conn *c, const struct vlm_proto_msg *msg) {
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        if (handlers[i].method != msg->method) {
            continue;
        }
        if (c->d->shutting_down && !handlers[i].while_stopping) {
            vlm__conn_error(c, msg->msgid, VLM_PROTO_ESHUTTING_DOWN, NULL);
            return;
        }
        handlers[i].fn(c, msg);
        return;
    }
    VLM_LOGD("conn %llu: request %u: unknown method", (unsigned long long)c->id, msg->msgid);
    if (vlm_proto_error_encode_unknown_method(&c->out, msg) == 0) {
        vlm__conn_flush(c);
    }
}
