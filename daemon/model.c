// Loading and unloading a component's model, on the worker that owns it. The plugin is chosen here (by name, or
// by the GGUF's general.architecture), opened, and asked to load; the component's plugin handle keeps the
// shared object mapped until the model is unloaded.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon/vlmd.h"
#include "vlm/gguf.h"

static int probe_arch(const char *path, char *arch, size_t cap, struct vlm_diag *diag, const char **why) {
    struct vlm_gguf *g;
    int rc = vlm_gguf_open(path, &g, diag);
    if (rc) {
        *why = rc == VLM_ENOMEM ? VLM__WHY_OUT_OF_MEMORY : VLM__WHY_NOT_GGUF;
        return rc;
    }
    struct vlm_gguf_str s;
    if (vlm_gguf_get_str(g, "general.architecture", &s, NULL) != 0) {
        vlm_gguf_close(g);
        *why = VLM__WHY_NO_ARCH;
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: no general.architecture key", path);
    }
    snprintf(arch, cap, "%.*s", (int)(s.len < cap - 1 ? s.len : cap - 1), s.ptr);
    vlm_gguf_close(g);
    return 0;
}

// Messages name the file as the loader opened it (/proc/self/fd/N): put the model's path back for the log.
static void name_the_file(struct vlm_diag *diag, const char *opened, const char *path) {
    size_t n = strlen(opened);
    char *at = opened != path ? strstr(diag->msg, opened) : NULL;
    if (!at || (at[n] >= '0' && at[n] <= '9')) { // not there, or fd 1 matched inside fd 12
        return;
    }
    char rest[sizeof diag->msg];
    snprintf(rest, sizeof rest, "%s", at + n);
    snprintf(at, sizeof diag->msg - (size_t)(at - diag->msg), "%s%s", path, rest);
}

// The model is mapped (or refused): the descriptor has done its job.
static void done_with_fd(struct vlm__component *c) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static const char *kind_name(enum vlm_plugin_kind k) {
    return k == VLM_PLUGIN_KIND_ENCODER ? "encoder" : k == VLM_PLUGIN_KIND_PROJECTOR ? "projector" : "llm";
}

void vlm__model_load(struct vlm__worker *w, struct vlm__component *c) {
    struct vlmd *d = w->d;
    struct vlm_diag *diag = &c->load_diag;
    double t0 = vlm_time_ms();
    struct vlm__plugin_entry *e = NULL;
    char arch[64] = "";
    c->load_why = NULL;
    // the file checked in the model directory, whatever its name points at by now (modelpath.c)
    char fd_path[32];
    const char *path = vlm__model_open_path(c->fd, c->path, fd_path, sizeof fd_path);
    int rc = probe_arch(path, arch, sizeof arch, diag, &c->load_why);
    if (rc) {
        if (rc != VLM_ENOMEM) { // whatever the reader's reason (truncated, bad magic, ...): not a usable model
            rc = VLM_EBADMODEL;
        }
        goto fail;
    }
    if (c->plugin_req[0]) {
        e = vlm__registry_find(&d->reg, c->plugin_req);
        if (!e || e->kind != c->kind) {
            rc = vlm_diag_set(diag, VLM_ENOTFOUND, "no %s plugin named '%s'", kind_name(c->kind), c->plugin_req);
            c->load_why = VLM__WHY_PLUGIN_NOT_FOUND;
            goto fail;
        }
    } else if (!(e = vlm__registry_for_arch(&d->reg, c->kind, arch))) {
        // A model some plugin of another kind takes (an LLM given as an encoder, an mmproj as the LLM) is the
        // wrong kind of model; one nobody takes needs a plugin we do not have.
        bool other = false;
        for (int k = VLM_PLUGIN_KIND_ENCODER; k <= VLM_PLUGIN_KIND_LLM; k++) {
            other |= k != (int)c->kind && vlm__registry_for_arch(&d->reg, (enum vlm_plugin_kind)k, arch) != NULL;
        }
        rc = vlm_diag_set(diag, other ? VLM_EBADMODEL : VLM_EUNSUPPORTED,
                          "%s: no %s plugin handles architecture '%s'%s", c->name, kind_name(c->kind), arch,
                          other ? " (a plugin of another kind does)" : "");
        c->load_why = other ? VLM__WHY_WRONG_KIND : VLM__WHY_NO_PLUGIN;
        goto fail;
    }
    if ((rc = vlm_plugin_open(e->path, &c->plugin, diag)) != 0) {
        c->load_why = VLM__WHY_PLUGIN_OPEN;
        rc = VLM_EABI; // answered PLUGIN_INVALID whatever the loader's reason
        goto fail;
    }
    const struct vlm_plugin_desc *desc = vlm_plugin_desc(c->plugin);
    struct vlm_host host = {
        .abi_version = VLM_PLUGIN_ABI_VERSION,
        .backend = w->backend,
        .should_cancel = vlm__worker_should_cancel,
        .cancel_user = w,
        .precision = c->kind == VLM_PLUGIN_KIND_LLM ? VLM_PRECISION_AUTO : d->cfg.vision_precision,
    };
    switch (c->kind) {
    case VLM_PLUGIN_KIND_LLM: {
        struct vlm_llm_params lp = {.n_ctx = d->cfg.ctx_size, .kv_type = d->cfg.kv_f16 ? VLM_TYPE_F16 : VLM_TYPE_F32};
        if ((rc = desc->llm->load(&host, path, &lp, &c->model, diag)) == 0) {
            desc->llm->info(c->model, &c->llm_info);
        }
        break;
    }
    case VLM_PLUGIN_KIND_ENCODER:
        if ((rc = desc->encoder->load(&host, path, &c->model, diag)) == 0) {
            desc->encoder->info(c->model, &c->enc_info);
        }
        break;
    case VLM_PLUGIN_KIND_PROJECTOR:
        if ((rc = desc->projector->load(&host, path, &c->model, diag)) == 0) {
            desc->projector->info(c->model, &c->proj_info);
        }
        break;
    }
    if (rc) {
        // The plugin's own reason stays in the log; the client learns it was the model the plugin refused.
        if (rc == VLM_ENOMEM) {
            c->load_why = VLM__WHY_OUT_OF_MEMORY;
        } else if (rc != VLM_EDEVICE) {
            c->load_why = VLM__WHY_MODEL_REFUSED;
            rc = VLM_EBADMODEL;
        }
        goto fail;
    }
    c->loaded_entry = e;
    c->load_rc = 0;
    c->load_ms = vlm_time_ms() - t0;
    done_with_fd(c);
    return;
fail:
    name_the_file(diag, path, c->path);
    done_with_fd(c);
    if (c->plugin) {
        vlm_plugin_close(c->plugin);
        c->plugin = NULL;
    }
    c->model = NULL;
    c->load_rc = rc;
}

void vlm__model_unload(struct vlm__worker *w, struct vlm__component *c) {
    (void)w;
    if (c->model) {
        const struct vlm_plugin_desc *desc = vlm_plugin_desc(c->plugin);
        switch (c->kind) {
        case VLM_PLUGIN_KIND_LLM:
            desc->llm->unload(c->model);
            break;
        case VLM_PLUGIN_KIND_ENCODER:
            desc->encoder->unload(c->model);
            break;
        case VLM_PLUGIN_KIND_PROJECTOR:
            desc->projector->unload(c->model);
            break;
        }
        c->model = NULL;
    }
    if (c->plugin) {
        vlm_plugin_close(c->plugin);
        c->plugin = NULL;
    }
}
