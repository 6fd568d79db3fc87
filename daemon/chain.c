// Chains and their components, on the loop thread. A component (one model loaded through one plugin) is shared
// by every chain slot and running request that uses it and counted by references; the last one to let go queues
// its unload on the owning worker, which also closes the plugin handle. Switching a slot (swap, reload) happens
// in one step on the loop once the new component is loaded, so requests already queued or running keep the
// component they took a reference on, and a failed load leaves the chain as it was.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/vlmd.h"

static const char *kind_name(int k) {
    return k == VLM_PLUGIN_KIND_ENCODER ? "encoder" : k == VLM_PLUGIN_KIND_PROJECTOR ? "projector" : "llm";
}

// ---- model names ------------------------------------------------------------------------------------------

static int fail_why(const char **why, const char *text, int rc) {
    if (why) {
        *why = text;
    }
    return rc;
}

int vlm__model_resolve(const struct vlmd *d, const char *name, bool paths, char *out, size_t cap, uint64_t *size,
                       int *fd, struct vlm_diag *diag, const char **why) {
    if (fd) {
        *fd = -1;
    }
    if (!paths) { // names from clients and the config: resolved by the kernel inside the directory (modelpath.c)
        return vlm__model_beneath(d->cfg.model_dir, name, out, cap, size, fd, diag, why);
    }
    size_t len = strlen(name);
    char joined[PATH_MAX + VLMD_MODEL_MAX];
    if (len == 0 || len >= VLMD_MODEL_MAX) {
        return fail_why(why, VLM__WHY_NAME_LENGTH,
                        vlm_diag_set(diag, VLM_EINVAL, "model name: expected 1..%d bytes", VLMD_MODEL_MAX - 1));
    }
    if (paths) {
        snprintf(joined, sizeof joined, "%s", name);
    } else {
        // A name inside the model directory: no absolute path and no ".." component.
        if (name[0] == '/') {
            return fail_why(why, VLM__WHY_NAME_ABSOLUTE,
                            vlm_diag_set(diag, VLM_EINVAL, "model '%s': must be relative to the model directory", name));
        }
        for (const char *p = name; *p;) {
            const char *slash = strchr(p, '/');
            size_t n = slash ? (size_t)(slash - p) : strlen(p);
            if ((n == 2 && p[0] == '.' && p[1] == '.') || n == 0) {
                return fail_why(why, VLM__WHY_NAME_DOTDOT,
                                vlm_diag_set(diag, VLM_EINVAL, "model '%s': '..' and empty components are not allowed",
                                             name));
            }
            p += n + (slash ? 1 : 0);
        }
        snprintf(joined, sizeof joined, "%s/%s", d->cfg.model_dir, name);
    }
    char real[PATH_MAX];
    if (!realpath(joined, real)) {
        return fail_why(why, VLM__WHY_MODEL_NOT_FOUND,
                        vlm_diag_set(diag, VLM_ENOTFOUND, "model '%s' not found (%s)", name, joined));
    }
    if (!paths) { // a symlink must not lead out of the directory
        char dir[PATH_MAX];
        size_t dl;
        if (!realpath(d->cfg.model_dir, dir) || strncmp(real, dir, dl = strlen(dir)) || real[dl] != '/') {
            return fail_why(why, VLM__WHY_MODEL_NOT_FOUND,
                            vlm_diag_set(diag, VLM_ENOTFOUND, "model '%s' leads out of the model directory (to %s)",
                                         name, real));
        }
    }
    struct stat st;
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
        return fail_why(why, VLM__WHY_MODEL_NOT_FILE,
                        vlm_diag_set(diag, VLM_ENOTFOUND, "model '%s' is not a regular file (%s)", name, real));
    }
    if (strlen(real) >= cap) {
        return fail_why(why, VLM__WHY_PATH_TOO_LONG, vlm_diag_set(diag, VLM_EINVAL, "model '%s': path too long", name));
    }
    snprintf(out, cap, "%s", real);
    *size = (uint64_t)st.st_size;
    return 0;
}

// ---- components -------------------------------------------------------------------------------------------

static void add_waiter(struct vlm__component *c, struct vlm__op *op) {
    struct vlm__op **p = realloc(c->waiters, (size_t)(c->n_waiters + 1) * sizeof *p);
    if (!p) { // cannot wait: the op goes on as if this component were ready; the ask will say if it is not
        return;
    }
    c->waiters = p;
    c->waiters[c->n_waiters++] = op;
    op->pending++;
    if (op->conn) {
        vlm__conn_progress(op->conn, op->msgid, VLM_RPC_STAGE_LOADING, 0, c->bytes);
    }
}

void vlm__component_ref(struct vlm__component *c) {
    c->refs++;
}

static void unlink_component(struct vlmd *d, struct vlm__component *c) {
    for (struct vlm__component **p = &d->components; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    c->next = NULL;
}

static void free_component(struct vlm__component *c) {
    if (c->fd >= 0) {
        close(c->fd);
    }
    free(c->waiters);
    free(c);
}

// The last reference went: unload on the worker (or free now when nothing was loaded).
static void release_component(struct vlmd *d, struct vlm__component *c) {
    unlink_component(d, c);
    if (c->state == VLM__COMP_FAILED) {
        free_component(c);
        return;
    }
    struct vlm__job *job = vlm__job_new(VLM__JOB_UNLOAD);
    if (!job) {
        VLM_LOGE("%s %s: out of memory: the model stays loaded", kind_name(c->kind), c->name);
        return;
    }
    job->rid = ++d->next_rid;
    job->comp[0] = c;
    d->jobs_in_flight++;
    vlm__worker_submit(c->worker, job);
}

void vlm__component_unref(struct vlmd *d, struct vlm__component *c) {
    if (!c || --c->refs > 0) {
        return;
    }
    if (c->state == VLM__COMP_LOADING) {
        return; // vlm__component_loaded releases it
    }
    release_component(d, c);
}

struct vlm__component *vlm__component_get(struct vlmd *d, enum vlm_plugin_kind kind, const struct vlm__slot_spec *spec,
                                          struct vlm__op *op, struct vlm_diag *diag, const char **why) {
    char path[PATH_MAX];
    uint64_t size = 0;
    int fd = -1;
    if (vlm__model_resolve(d, spec->model, spec->paths, path, sizeof path, &size, &fd, diag, why) != 0) {
        return NULL;
    }
    if (spec->plugin[0]) {
        struct vlm__plugin_entry *e = vlm__registry_find(&d->reg, spec->plugin);
        if (!e || e->kind != kind) {
            if (fd >= 0) {
                close(fd);
            }
            fail_why(why, VLM__WHY_PLUGIN_NOT_FOUND,
                     vlm_diag_set(diag, VLM_ENOTFOUND, "no %s plugin named '%s'", kind_name(kind), spec->plugin));
            return NULL;
        }
    }
    for (struct vlm__component *c = d->components; c; c = c->next) {
        if (c->kind == kind && c->state != VLM__COMP_FAILED && !strcmp(c->path, path) &&
            !strcmp(c->plugin_req, spec->plugin)) {
            if (fd >= 0) {
                close(fd); // the loaded (or loading) file serves: in use, it stays what it was
            }
            c->refs++;
            if (c->state == VLM__COMP_LOADING && op) {
                add_waiter(c, op);
            }
            return c;
        }
    }
    struct vlm__component *c = calloc(1, sizeof *c);
    struct vlm__job *job = vlm__job_new(VLM__JOB_LOAD);
    if (!c || !job) {
        if (fd >= 0) {
            close(fd);
        }
        free(c);
        vlm__job_free(job);
        fail_why(why, VLM__WHY_OUT_OF_MEMORY, vlm_diag_set(diag, VLM_ENOMEM, "out of memory"));
        return NULL;
    }
    c->kind = kind;
    snprintf(c->plugin_req, sizeof c->plugin_req, "%s", spec->plugin);
    snprintf(c->name, sizeof c->name, "%s", spec->model);
    snprintf(c->path, sizeof c->path, "%s", path);
    c->fd = fd; // the load opens this very file (vlm__model_open_path), then closes it
    c->bytes = size;
    c->refs = 1;
    c->state = VLM__COMP_LOADING;
    c->worker = &d->workers[0]; // one device for now: every model lives on the CPU worker
    c->next = d->components;
    d->components = c;
    if (op) {
        add_waiter(c, op);
    }
    job->rid = ++d->next_rid;
    job->comp[0] = c;
    d->jobs_in_flight++;
    VLM_LOGI("req %llu: loading %s %s (%.1f MiB)", (unsigned long long)job->rid, kind_name(kind), spec->model,
             (double)size / (1024.0 * 1024.0));
    vlm__worker_submit(c->worker, job);
    return c;
}

void vlm__component_loaded(struct vlmd *d, struct vlm__component *c) {
    if (c->load_rc == 0) {
        c->state = VLM__COMP_READY;
        c->entry = c->loaded_entry;
        c->entry->instances++;
        VLM_LOGI("%s %s loaded with plugin %s in %.0f ms", kind_name(c->kind), c->name, c->entry->name, c->load_ms);
    } else {
        c->state = VLM__COMP_FAILED;
        VLM_LOGE("%s %s: load failed: %s", kind_name(c->kind), c->name, c->load_diag.msg);
    }
    struct vlm__op **waiters = c->waiters;
    int n = c->n_waiters;
    c->waiters = NULL;
    c->n_waiters = 0;
    // Finishing a waiter may drop its reference (a failed swap lets go of what it loaded): hold one of our own
    // so the component is released once, below, and not under our feet.
    c->refs++;
    for (int i = 0; i < n; i++) {
        struct vlm__op *op = waiters[i];
        if (c->load_rc && op->rc == 0) {
            op->rc = c->load_rc;
            op->diag = c->load_diag;
            op->why = c->load_why;
        }
        if (op->conn) {
            vlm__conn_progress(op->conn, op->msgid, VLM_RPC_STAGE_LOADING, c->bytes, c->bytes);
        }
        vlm__op_finish(d, op); // finishes it when this was the last component it waited for
    }
    free(waiters);
    vlm__component_unref(d, c);
}

void vlm__component_unloaded(struct vlmd *d, struct vlm__component *c) {
    (void)d;
    if (c->entry) {
        c->entry->instances--;
        VLM_LOGI("%s %s unloaded (plugin %s: %u instance%s left)", kind_name(c->kind), c->name, c->entry->name,
                 c->entry->instances, c->entry->instances == 1 ? "" : "s");
    }
    free_component(c);
}

// ---- chains -----------------------------------------------------------------------------------------------

struct vlm__chain *vlm__chain_find(struct vlmd *d, const char *name, size_t len) {
    for (struct vlm__chain *c = d->chains; c; c = c->next) {
        if (strlen(c->spec.name) == len && !memcmp(c->spec.name, name, len)) {
            return c;
        }
    }
    return NULL;
}

struct vlm__chain *vlm__chain_default(struct vlmd *d) {
    if (d->cfg.default_chain[0]) {
        struct vlm__chain *c = vlm__chain_find(d, d->cfg.default_chain, strlen(d->cfg.default_chain));
        if (c) {
            return c;
        }
    }
    struct vlm__chain *c = vlm__chain_find(d, "default", 7);
    return c ? c : d->chains;
}

void vlm__chain_ref(struct vlm__chain *c) {
    c->refs++;
}

void vlm__chain_unload(struct vlmd *d, struct vlm__chain *c, int kind) {
    for (int k = 1; k < VLMD_SLOTS; k++) {
        if ((kind == 0 || kind == k) && c->slot[k]) {
            struct vlm__component *comp = c->slot[k];
            c->slot[k] = NULL;
            vlm__component_unref(d, comp);
        }
    }
}

void vlm__chain_unref(struct vlmd *d, struct vlm__chain *c) {
    if (--c->refs > 0) {
        return;
    }
    vlm__chain_unload(d, c, 0);
    free(c);
}

struct vlm__chain *vlm__chain_add(struct vlmd *d, const struct vlm__chain_spec *spec) {
    struct vlm__chain *c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    c->spec = *spec;
    c->refs = 1;
    struct vlm__chain **p = &d->chains;
    while (*p) {
        p = &(*p)->next;
    }
    *p = c;
    return c;
}

static void chain_remove(struct vlmd *d, struct vlm__chain *c) {
    for (struct vlm__chain **p = &d->chains; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    c->next = NULL;
    c->removed = true;
    vlm__chain_unref(d, c);
}

int vlm__chain_load(struct vlmd *d, struct vlm__chain *c, int kind, struct vlm__op *op, struct vlm_diag *diag,
                    const char **why) {
    for (int k = 1; k < VLMD_SLOTS; k++) {
        if ((kind != 0 && kind != k) || !c->spec.slot[k].model[0]) {
            continue;
        }
        if (c->slot[k] && c->slot[k]->state != VLM__COMP_FAILED) {
            if (c->slot[k]->state == VLM__COMP_LOADING && op) {
                add_waiter(c->slot[k], op);
            }
            continue;
        }
        struct vlm__component *comp = vlm__component_get(d, (enum vlm_plugin_kind)k, &c->spec.slot[k], op, diag, why);
        if (!comp) {
            VLM_LOGE("chain %s: %s: %s", c->spec.name, kind_name(k), diag ? diag->msg : "cannot load");
            return diag ? diag->code : VLM_EINVAL;
        }
        struct vlm__component *old = c->slot[k];
        c->slot[k] = comp;
        vlm__component_unref(d, old);
    }
    return 0;
}

void vlm__chain_describe(const struct vlm__chain *c, struct vlm_rpc_chain *out) {
    memset(out, 0, sizeof *out);
    out->name = vlm_proto_str_c(c->spec.name);
    out->template_name = vlm_proto_str_c(c->spec.template_name);
    struct vlm_rpc_component_info *info[VLMD_SLOTS] = {NULL, &out->encoder, &out->projector, &out->llm};
    for (int k = 1; k < VLMD_SLOTS; k++) {
        const struct vlm__slot_spec *s = &c->spec.slot[k];
        const struct vlm__component *comp = c->slot[k];
        if (!s->model[0]) {
            continue;
        }
        info[k]->model = vlm_proto_str_c(s->model);
        if (comp && comp->state == VLM__COMP_READY) {
            info[k]->plugin = vlm_proto_str_c(comp->entry->name);
            info[k]->loaded = true;
        } else if (s->plugin[0]) {
            info[k]->plugin = vlm_proto_str_c(s->plugin);
        }
    }
    out->active = c->active;
}

// ---- ops: loads and swaps waiting for components ---------------------------------------------------------

struct vlm__op *vlm__op_new(struct vlmd *d, enum vlm__op_kind kind, struct vlm__conn *conn, uint32_t msgid,
                            struct vlm__chain *chain) {
    struct vlm__op *op = calloc(1, sizeof *op);
    if (!op) {
        return NULL;
    }
    op->kind = kind;
    op->conn = conn;
    op->msgid = msgid;
    op->rid = ++d->next_rid;
    op->chain = chain;
    vlm__chain_ref(chain);
    op->pending = 1; // the creator's own hold, released by its vlm__op_finish call once set up
    if (conn) {
        op->conn_next = conn->ops;
        conn->ops = op;
    }
    return op;
}

static void op_detach(struct vlm__op *op) {
    if (!op->conn) {
        return;
    }
    for (struct vlm__op **p = &op->conn->ops; *p; p = &(*p)->conn_next) {
        if (*p == op) {
            *p = op->conn_next;
            break;
        }
    }
    op->conn = NULL;
}

void vlm__op_finish(struct vlmd *d, struct vlm__op *op) {
    if (op->pending > 0 && --op->pending > 0) {
        return; // components still loading
    }
    struct vlm__chain *c = op->chain;
    if (op->kind != VLM__OP_LOAD && op->rc == 0) {
        // The switch: one step on the loop thread. Requests holding the old components keep them.
        for (int k = 1; k < VLMD_SLOTS; k++) {
            if (op->swap_in[k]) {
                struct vlm__component *old = c->slot[k];
                c->slot[k] = op->swap_in[k];
                op->swap_in[k] = NULL;
                c->spec.slot[k] = op->swap_spec[k];
                vlm__component_unref(d, old);
                VLM_LOGI("req %llu: chain %s: %s is now %s", (unsigned long long)op->rid, c->spec.name,
                         kind_name(k), c->spec.slot[k].model);
            } else if (op->clear_mask & (1u << k)) {
                struct vlm__component *old = c->slot[k];
                c->slot[k] = NULL;
                memset(&c->spec.slot[k], 0, sizeof c->spec.slot[k]);
                vlm__component_unref(d, old);
            }
        }
        if (op->template_name[0]) {
            snprintf(c->spec.template_name, sizeof c->spec.template_name, "%s", op->template_name);
        }
    }
    for (int k = 1; k < VLMD_SLOTS; k++) { // a failed swap: the chain stays as it was
        vlm__component_unref(d, op->swap_in[k]);
        op->swap_in[k] = NULL;
    }
    if (op->rc) {
        VLM_LOGE("req %llu: chain %s: %s failed: %s", (unsigned long long)op->rid, c->spec.name,
                 op->kind == VLM__OP_LOAD ? "load" : op->kind == VLM__OP_SWAP ? "swap" : "reload", op->diag.msg);
    }
    if (op->conn) {
        struct vlm__conn *conn = op->conn;
        if (op->rc) {
            int wire = vlm_proto_err_from_code(op->rc);
            char msg[VLM_PROTO_NAME_MAX + 128];
            snprintf(msg, sizeof msg, "chain '%s': %s", c->spec.name, op->why ? op->why : vlm_proto_err_text(wire));
            vlm__conn_error(conn, op->msgid, wire, msg);
        } else {
            struct vlm_rpc_chain desc;
            vlm__chain_describe(c, &desc);
            if (vlm_rpc_chain_result_encode(&conn->out, op->msgid, &desc) != 0) {
                vlm__conn_error(conn, op->msgid, VLM_PROTO_EINTERNAL, NULL);
            } else {
                vlm__conn_flush(conn);
            }
        }
    }
    op_detach(op);
    vlm__chain_unref(d, c);
    free(op);
    vlm__daemon_maybe_finish(d);
}

// ---- reload ----------------------------------------------------------------------------------------------

static bool slot_same(const struct vlm__slot_spec *a, const struct vlm__slot_spec *b) {
    return a->paths == b->paths && !strcmp(a->model, b->model) && !strcmp(a->plugin, b->plugin);
}

static bool spec_same(const struct vlm__chain_spec *a, const struct vlm__chain_spec *b) {
    for (int k = 1; k < VLMD_SLOTS; k++) {
        if (!slot_same(&a->slot[k], &b->slot[k])) {
            return false;
        }
    }
    return !strcmp(a->template_name, b->template_name);
}

void vlm__chains_reload(struct vlmd *d, const struct vlm__config *old, const struct vlm__config *cfg) {
    // Only what the file changed is applied: chains created or swapped at run time stay as they are unless
    // the file's own entry for them changed.
    for (uint32_t i = 0; i < old->n_chains; i++) {
        const char *name = old->chains[i].name;
        struct vlm__chain *c = vlm__chain_find(d, name, strlen(name));
        if (c && !vlm__config_chain(cfg, name)) {
            VLM_LOGI("reload: chain %s removed", name);
            chain_remove(d, c);
        }
    }
    for (uint32_t i = 0; i < cfg->n_chains; i++) {
        const struct vlm__chain_spec *s = &cfg->chains[i];
        struct vlm__chain *c = vlm__chain_find(d, s->name, strlen(s->name));
        const struct vlm__chain_spec *was = vlm__config_chain(old, s->name);
        struct vlm_diag diag = {0};
        if (c && was && spec_same(was, s)) {
            continue;
        }
        if (!c) {
            if (!(c = vlm__chain_add(d, s))) {
                VLM_LOGE("reload: chain %s: out of memory", s->name);
                continue;
            }
            VLM_LOGI("reload: chain %s added", s->name);
            vlm__chain_load(d, c, 0, NULL, &diag, NULL);
            continue;
        }
        struct vlm__op *op = vlm__op_new(d, VLM__OP_RELOAD, NULL, 0, c);
        if (!op) {
            VLM_LOGE("reload: chain %s: out of memory", s->name);
            continue;
        }
        bool changed = strcmp(c->spec.template_name, s->template_name) != 0;
        snprintf(op->template_name, sizeof op->template_name, "%s", s->template_name);
        for (int k = 1; k < VLMD_SLOTS && op->rc == 0; k++) {
            if (slot_same(&c->spec.slot[k], &s->slot[k])) {
                continue;
            }
            changed = true;
            if (!s->slot[k].model[0]) {
                op->clear_mask |= 1u << k;
                continue;
            }
            op->swap_spec[k] = s->slot[k];
            if (!(op->swap_in[k] =
                      vlm__component_get(d, (enum vlm_plugin_kind)k, &s->slot[k], op, &op->diag, &op->why))) {
                op->rc = op->diag.code ? op->diag.code : VLM_EINVAL;
            }
        }
        if (changed) {
            VLM_LOGI("reload: chain %s changed: switching once its new components are loaded", s->name);
        }
        vlm__op_finish(d, op);
    }
}
