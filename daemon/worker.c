// Workers: one thread per compute device, owning that device's models. A worker takes jobs from its FIFO
// (asks, loads, unloads), runs them, and hands results back to the loop through the daemon's completion list
// and uv_async_send. Workers never touch sockets; the loop never runs model code.
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vlmd.h"
#include "vlm/backend.h"

struct vlm__job *vlm__job_new(enum vlm__job_kind kind) {
    struct vlm__job *job = calloc(1, sizeof *job);
    if (job) {
        job->kind = kind;
        atomic_init(&job->cancel, false);
        atomic_init(&job->hold, false);
        atomic_init(&job->n_gen_live, 0);
        job->cancel_code = VLM_PROTO_ECANCELLED;
        job->gen_at_cancel = -1;
    }
    return job;
}

void vlm__job_free(struct vlm__job *job) {
    if (!job) {
        return;
    }
    free(job->prompt);
    for (int i = 0; i < VLM_RPC_STOP_MAX; i++) {
        free(job->stops[i]);
    }
    for (uint32_t i = 0; i < VLM_RPC_IMAGES_MAX; i++) {
        free(job->images[i]);
    }
    free(job->pending);
    free(job->sending);
    free(job->text);
    free(job);
}

void vlm__job_cancel(struct vlm__job *job) {
    if (job->gen_at_cancel < 0) {
        job->gen_at_cancel = atomic_load(&job->n_gen_live);
        job->t_cancel = vlm_time_ms();
    }
    atomic_store(&job->cancel, true);
    if (job->worker) { // a held ask waits for its client or for this
        uv_mutex_lock(&job->worker->mu);
        uv_cond_broadcast(&job->worker->resume);
        uv_mutex_unlock(&job->worker->mu);
    }
}

void vlm__job_hold(struct vlm__job *job, bool hold) {
    if (!job->worker) { // not submitted yet: the flag is published by the submit's lock
        atomic_store(&job->hold, hold);
        return;
    }
    // Changed under the lock the worker checks it with, so a release cannot fall between its check and its wait.
    uv_mutex_lock(&job->worker->mu);
    atomic_store(&job->hold, hold);
    if (!hold) {
        uv_cond_broadcast(&job->worker->resume);
    }
    uv_mutex_unlock(&job->worker->mu);
}

void vlm__job_wait_released(struct vlm__worker *w, struct vlm__job *job) {
    if (!atomic_load(&job->hold)) { // the common case: one atomic load per piece
        return;
    }
    uv_mutex_lock(&w->mu);
    while (atomic_load(&job->hold) && !atomic_load(&job->cancel) && !w->quit) {
        uv_cond_wait(&w->resume, &w->mu);
    }
    uv_mutex_unlock(&w->mu);
}

bool vlm__worker_should_cancel(void *user) {
    const struct vlm__worker *w = user;
    const struct vlm__job *job = w->current; // written by this same thread
    return job && atomic_load(&job->cancel);
}

void vlm__job_post(struct vlmd *d, struct vlm__job *job, bool done) {
    uv_mutex_lock(&d->out_mu);
    if (done) {
        job->done = true;
    }
    if (!job->in_out) {
        job->in_out = true;
        job->out_next = NULL;
        if (d->out_tail) {
            d->out_tail->out_next = job;
        } else {
            d->out_head = job;
        }
        d->out_tail = job;
    }
    uv_mutex_unlock(&d->out_mu);
    uv_async_send(&d->async);
}

static void run_job(struct vlm__worker *w, struct vlm__job *job) {
    switch (job->kind) {
    case VLM__JOB_ASK:
        vlm__ask_run(w, job);
        break;
    case VLM__JOB_LOAD:
        vlm__model_load(w, job->comp[0]);
        break;
    case VLM__JOB_UNLOAD:
        vlm__model_unload(w, job->comp[0]);
        break;
    }
}

static void worker_main(void *arg) {
    struct vlm__worker *w = arg;
    // Signals belong to the loop (uv_signal); a worker must never be the thread they interrupt.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    struct vlm_backend_cpu_params bp = {.n_threads = w->d->cfg.threads};
    w->start_rc = vlm_backend_cpu_new(&bp, &w->backend, &w->start_diag);
    uv_sem_post(&w->started);
    if (w->start_rc) {
        return;
    }
    for (;;) {
        uv_mutex_lock(&w->mu);
        while (!w->head && !w->quit) {
            uv_cond_wait(&w->cv, &w->mu);
        }
        struct vlm__job *job = w->head;
        if (!job) {
            uv_mutex_unlock(&w->mu);
            break;
        }
        w->head = job->next;
        if (w->head) {
            w->head->prev = NULL;
        } else {
            w->tail = NULL;
        }
        job->prev = job->next = NULL;
        if (job->queued_counted) {
            job->queued_counted = false;
            w->n_waiting--;
        }
        w->current = job;
        uv_mutex_unlock(&w->mu);

        run_job(w, job);

        uv_mutex_lock(&w->mu);
        w->current = NULL;
        uv_mutex_unlock(&w->mu);
        vlm__job_post(w->d, job, true); // the job is the loop's from here on
    }
    vlm_backend_free(w->backend);
    w->backend = NULL;
}

int vlm__worker_start(struct vlmd *d, struct vlm__worker *w, int index, struct vlm_diag *diag) {
    memset(w, 0, sizeof *w);
    w->d = d;
    w->index = index;
    snprintf(w->device, sizeof w->device, "cpu");
    if (uv_mutex_init(&w->mu) || uv_cond_init(&w->cv) || uv_cond_init(&w->resume) || uv_sem_init(&w->started, 0)) {
        return vlm_diag_set(diag, VLM_EINTERNAL, "cannot create the worker's locks");
    }
    int rc = uv_thread_create(&w->thread, worker_main, w);
    if (rc) {
        return vlm_diag_set(diag, VLM_EINTERNAL, "cannot start a worker thread: %s", uv_strerror(rc));
    }
    uv_sem_wait(&w->started);
    if (w->start_rc) {
        uv_thread_join(&w->thread);
        if (diag) {
            *diag = w->start_diag;
        }
        return w->start_rc;
    }
    VLM_LOGI("worker %d: %s, %d threads", index, w->device, vlm_backend_n_threads(w->backend));
    return 0;
}

void vlm__worker_stop(struct vlm__worker *w) {
    uv_mutex_lock(&w->mu);
    w->quit = true;
    uv_cond_signal(&w->cv);
    uv_cond_broadcast(&w->resume);
    uv_mutex_unlock(&w->mu);
    uv_thread_join(&w->thread);
    uv_cond_destroy(&w->resume);
    uv_cond_destroy(&w->cv);
    uv_mutex_destroy(&w->mu);
    uv_sem_destroy(&w->started);
}

int vlm__worker_submit(struct vlm__worker *w, struct vlm__job *job) {
    uv_mutex_lock(&w->mu);
    if (job->kind == VLM__JOB_ASK) {
        // The running ask does not count: queue_depth is how many may wait behind it.
        if (w->n_waiting >= w->d->cfg.queue_depth && (w->current || w->head)) {
            uv_mutex_unlock(&w->mu);
            return VLM_EBUSY;
        }
        job->queued_counted = true;
        w->n_waiting++;
    }
    job->worker = w;
    // Loads and unloads go before the waiting asks (in their own order): a swap must not wait for the whole
    // queue, only for the ask running now. Asks queued before it keep the components they took.
    struct vlm__job *before = NULL;
    if (job->kind != VLM__JOB_ASK) {
        for (before = w->head; before && before->kind != VLM__JOB_ASK; before = before->next) {
        }
    }
    job->next = before;
    job->prev = before ? before->prev : w->tail;
    if (job->prev) {
        job->prev->next = job;
    } else {
        w->head = job;
    }
    if (before) {
        before->prev = job;
    } else {
        w->tail = job;
    }
    uv_cond_signal(&w->cv);
    uv_mutex_unlock(&w->mu);
    return 0;
}

bool vlm__worker_unqueue(struct vlm__worker *w, struct vlm__job *job) {
    uv_mutex_lock(&w->mu);
    bool queued = job->prev || w->head == job;
    if (queued) {
        if (job->prev) {
            job->prev->next = job->next;
        } else {
            w->head = job->next;
        }
        if (job->next) {
            job->next->prev = job->prev;
        } else {
            w->tail = job->prev;
        }
        job->prev = job->next = NULL;
        if (job->queued_counted) {
            job->queued_counted = false;
            w->n_waiting--;
        }
    }
    uv_mutex_unlock(&w->mu);
    return queued;
}

uint32_t vlm__worker_waiting(struct vlm__worker *w) {
    uv_mutex_lock(&w->mu);
    uint32_t n = w->n_waiting;
    uv_mutex_unlock(&w->mu);
    return n;
}

// ---- loop side ----------------------------------------------------------------------------------------------

static void swap_text(struct vlm__job *job) {
    char *p = job->sending;
    size_t cap = job->sending_cap;
    job->sending = job->pending;
    job->sending_len = job->pending_len;
    job->sending_cap = job->pending_cap;
    job->pending = p;
    job->pending_len = 0;
    job->pending_cap = cap;
}

void vlm__worker_drain(struct vlmd *d) {
    // Take everything under the lock into loop-owned fields, then work without it: answering can free jobs,
    // release components and queue unload jobs (which takes a worker's lock).
    size_t n = 0;
    uv_mutex_lock(&d->out_mu);
    for (struct vlm__job *j = d->out_head; j; j = j->out_next) {
        n++;
    }
    if (n > d->drain_cap) {
        struct vlm__job **p = realloc(d->drain, n * sizeof *p);
        if (!p) {
            uv_mutex_unlock(&d->out_mu);
            uv_async_send(&d->async); // try again on the next turn
            return;
        }
        d->drain = p;
        d->drain_cap = n;
    }
    n = 0;
    for (struct vlm__job *j = d->out_head; j; j = j->out_next) {
        d->drain[n++] = j;
    }
    d->out_head = d->out_tail = NULL;
    for (size_t i = 0; i < n; i++) {
        struct vlm__job *j = d->drain[i];
        j->in_out = false;
        if (j->pending_len && !j->sending_len) {
            swap_text(j);
        } else if (j->pending_len) { // the last batch was not sent yet: append
            size_t need = j->sending_len + j->pending_len;
            char *p = need > j->sending_cap ? realloc(j->sending, need) : j->sending;
            if (p) {
                if (need > j->sending_cap) {
                    j->sending = p;
                    j->sending_cap = need;
                }
                memcpy(j->sending + j->sending_len, j->pending, j->pending_len);
                j->sending_len = need;
                j->pending_len = 0;
            }
        }
        j->seen_total = j->prefill_total;
        j->seen_first = j->prefill_done;
        j->seen_done = j->done;
    }
    uv_mutex_unlock(&d->out_mu);

    for (size_t i = 0; i < n; i++) {
        struct vlm__job *j = d->drain[i];
        if (j->kind == VLM__JOB_ASK && j->conn && j->stream) {
            struct vlm__conn *c = j->conn;
            if (j->seen_total && !j->sent_prefill_start) {
                j->sent_prefill_start = true;
                vlm__conn_progress(c, j->msgid, VLM_RPC_STAGE_PREFILL, 0, j->seen_total);
            }
            if (j->seen_first && !j->sent_prefill_done) {
                j->sent_prefill_done = true;
                vlm__conn_progress(c, j->msgid, VLM_RPC_STAGE_PREFILL, j->seen_total, j->seen_total);
            }
            if (j->sending_len) {
                struct vlm_rpc_text t = {.id = j->msgid, .text = {j->sending, (uint32_t)j->sending_len}};
                if (vlm_rpc_text_encode(&c->out, &t) != 0) {
                    VLM_LOGW("req %llu: cannot encode %zu bytes of text", (unsigned long long)j->rid,
                             j->sending_len);
                }
                vlm__conn_flush(c); // may drop the client (which detaches j->conn)
            }
        }
        j->sending_len = 0;
        if (!j->seen_done) {
            continue;
        }
        d->jobs_in_flight--;
        switch (j->kind) {
        case VLM__JOB_ASK:
            vlm__rpc_ask_done(d, j); // frees j
            break;
        case VLM__JOB_LOAD:
            vlm__component_loaded(d, j->comp[0]);
            vlm__job_free(j);
            break;
        case VLM__JOB_UNLOAD:
            vlm__component_unloaded(d, j->comp[0]);
            vlm__job_free(j);
            break;
        }
    }
    vlm__daemon_maybe_finish(d);
}
