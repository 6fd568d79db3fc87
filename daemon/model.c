// Loading and unloading a component's model, on the worker that owns it. The plugin is chosen here (by name, or
// by the GGUF's general.architecture), opened, and asked to load; the component's plugin handle keeps the
// shared object mapped until the model is unloaded.
#include <stdio.h>
#include <string.h>

#include "daemon/vlmd.h"
#include "vlm/gguf.h"

static int probe_arch(const char *path, char *arch, size_t cap, struct vlm_diag *diag) {
    struct vlm_gguf *g;
    int rc = vlm_gguf_open(path, &g, diag);
    if (rc) {
        return rc;
    }
    struct vlm_gguf_str s;
    if (vlm_gguf_get_str(g, "general.architecture", &s, NULL) != 0) {
        vlm_gguf_close(g);
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: no general.architecture key", path);
    }
    snprintf(arch, cap, "%.*s", (int)(s.len < cap - 1 ? s.len : cap - 1), s.ptr);
    vlm_gguf_close(g);
    return 0;
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
    int rc = probe_arch(c->path, arch, sizeof arch, diag);
    if (rc) {
        goto fail;
    }
    if (c->plugin_req[0]) {
        e = vlm__registry_find(&d->reg, c->plugin_req);
        if (!e || e->kind != c->kind) {
            rc = vlm_diag_set(diag, VLM_ENOTFOUND, "no %s plugin named '%s'", kind_name(c->kind), c->plugin_req);
            goto fail;
        }
    } else if (!(e = vlm__registry_for_arch(&d->reg, c->kind, arch))) {
        rc = vlm_diag_set(diag, VLM_ENOTFOUND, "%s: no %s plugin handles architecture '%s'", c->name,
                          kind_name(c->kind), arch);
        goto fail;
    }
    if ((rc = vlm_plugin_open(e->path, &c->plugin, diag)) != 0) {
        goto fail;
    }
    const struct vlm_plugin_desc *desc = vlm_plugin_desc(c->plugin);
    struct vlm_host host = {
        .abi_version = VLM_PLUGIN_ABI_VERSION,
        .backend = w->backend,
        .should_cancel = vlm__worker_should_cancel,
        .cancel_user = w,
    };
    switch (c->kind) {
    case VLM_PLUGIN_KIND_LLM: {
        struct vlm_llm_params lp = {.n_ctx = d->cfg.ctx_size, .kv_type = d->cfg.kv_f16 ? VLM_TYPE_F16 : VLM_TYPE_F32};
        if ((rc = desc->llm->load(&host, c->path, &lp, &c->model, diag)) == 0) {
            desc->llm->info(c->model, &c->llm_info);
        }
        break;
    }
    case VLM_PLUGIN_KIND_ENCODER:
        if ((rc = desc->encoder->load(&host, c->path, &c->model, diag)) == 0) {
            desc->encoder->info(c->model, &c->enc_info);
        }
        break;
    case VLM_PLUGIN_KIND_PROJECTOR:
        if ((rc = desc->projector->load(&host, c->path, &c->model, diag)) == 0) {
            desc->projector->info(c->model, &c->proj_info);
        }
        break;
    }
    if (rc) {
        goto fail;
    }
    c->loaded_entry = e;
    c->load_rc = 0;
    c->load_ms = vlm_time_ms() - t0;
    return;
fail:
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
