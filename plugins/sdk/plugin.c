// Host side of the plugin ABI: dlopen a plugin and check it before anything else in it is called.
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/log.h"
#include "vlm/plugin.h"

struct vlm_plugin {
    void *handle;
    const struct vlm_plugin_desc *desc;
    char *path;
};

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int check_llm_ops(const char *path, const struct vlm_llm_ops *ops, struct vlm_diag *diag) {
    if (!ops) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: LLM plugin has no operation table", path);
    }
    // Every entry is required: a plugin with a hole would crash the worker later, far from the cause.
    static const char *const names[] = {"load", "unload", "info", "tokenizer", "session_new", "session_free",
                                        "session_n_past", "session_n_ctx", "session_truncate", "session_eval"};
    const bool present[] = {ops->load != NULL,           ops->unload != NULL,        ops->info != NULL,
                            ops->tokenizer != NULL,      ops->session_new != NULL,   ops->session_free != NULL,
                            ops->session_n_past != NULL, ops->session_n_ctx != NULL, ops->session_truncate != NULL,
                            ops->session_eval != NULL};
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++) {
        if (!present[i]) {
            return vlm_diag_set(diag, VLM_EINVAL, "%s: LLM operation '%s' is missing", path, names[i]);
        }
    }
    return 0;
}

static int check_encoder_ops(const char *path, const struct vlm_encoder_ops *ops, struct vlm_diag *diag) {
    if (!ops) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: encoder plugin has no operation table", path);
    }
    static const char *const names[] = {"load", "unload", "info", "preprocess", "batch_free", "encode"};
    const bool present[] = {ops->load != NULL,       ops->unload != NULL,     ops->info != NULL,
                            ops->preprocess != NULL, ops->batch_free != NULL, ops->encode != NULL};
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++) {
        if (!present[i]) {
            return vlm_diag_set(diag, VLM_EINVAL, "%s: encoder operation '%s' is missing", path, names[i]);
        }
    }
    return 0;
}

static int check_projector_ops(const char *path, const struct vlm_projector_ops *ops, struct vlm_diag *diag) {
    if (!ops) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: projector plugin has no operation table", path);
    }
    static const char *const names[] = {"load", "unload", "info", "n_tokens", "project"};
    const bool present[] = {ops->load != NULL, ops->unload != NULL, ops->info != NULL, ops->n_tokens != NULL,
                            ops->project != NULL};
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++) {
        if (!present[i]) {
            return vlm_diag_set(diag, VLM_EINVAL, "%s: projector operation '%s' is missing", path, names[i]);
        }
    }
    return 0;
}

int vlm_plugin_open(const char *path, struct vlm_plugin **out, struct vlm_diag *diag) {
    // RTLD_NOW: unresolved imports fail here, not at first call. RTLD_LOCAL: plugins cannot see each other.
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *why = dlerror();
        return vlm_diag_set(diag, VLM_EINVAL, "%s: cannot load plugin: %s", path, why ? why : "unknown error");
    }
    int rc;
    // The ABI version is a data symbol, so it is read before any plugin function runs.
    const uint32_t *abi = (const uint32_t *)dlsym(handle, "vlm_plugin_abi_version");
    if (!abi) {
        rc = vlm_diag_set(diag, VLM_EINVAL, "%s: not a vlmd plugin (no symbol vlm_plugin_abi_version)", path);
        goto err_close;
    }
    if (*abi != VLM_PLUGIN_ABI_VERSION) {
        rc = vlm_diag_set(diag, VLM_EABI, "%s: plugin ABI version %u, this host needs %u", path, *abi,
                          VLM_PLUGIN_ABI_VERSION);
        goto err_close;
    }
    vlm_plugin_query_fn query;
    void *sym = dlsym(handle, "vlm_plugin_query");
    memcpy(&query, &sym, sizeof query); // object pointer -> function pointer without a pedantic warning
    if (!query) {
        rc = vlm_diag_set(diag, VLM_EINVAL, "%s: not a vlmd plugin (no symbol vlm_plugin_query)", path);
        goto err_close;
    }
    const struct vlm_plugin_desc *desc = query();
    if (!desc) {
        rc = vlm_diag_set(diag, VLM_EINVAL, "%s: vlm_plugin_query returned NULL", path);
        goto err_close;
    }
    if (desc->abi_version != VLM_PLUGIN_ABI_VERSION) {
        rc = vlm_diag_set(diag, VLM_EABI, "%s: descriptor ABI version %u, this host needs %u", path,
                          desc->abi_version, VLM_PLUGIN_ABI_VERSION);
        goto err_close;
    }
    if (!desc->name || !desc->name[0] || !desc->version) {
        rc = vlm_diag_set(diag, VLM_EINVAL, "%s: plugin descriptor lacks a name or version", path);
        goto err_close;
    }
    switch (desc->kind) {
    case VLM_PLUGIN_KIND_LLM:
        rc = check_llm_ops(path, desc->llm, diag);
        if (rc) {
            goto err_close;
        }
        break;
    case VLM_PLUGIN_KIND_ENCODER:
        rc = check_encoder_ops(path, desc->encoder, diag);
        if (rc) {
            goto err_close;
        }
        break;
    case VLM_PLUGIN_KIND_PROJECTOR:
        rc = check_projector_ops(path, desc->projector, diag);
        if (rc) {
            goto err_close;
        }
        break;
    default:
        rc = vlm_diag_set(diag, VLM_EINVAL, "%s: unknown plugin kind %d", path, (int)desc->kind);
        goto err_close;
    }

    struct vlm_plugin *p = calloc(1, sizeof *p);
    char *path_copy = strdup(path);
    if (!p || !path_copy) {
        free(p);
        free(path_copy);
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", path);
        goto err_close;
    }
    p->handle = handle;
    p->desc = desc;
    p->path = path_copy;
    VLM_LOGD("loaded plugin %s %s from %s", desc->name, desc->version, base_name(path));
    *out = p;
    return 0;

err_close:
    dlclose(handle);
    return rc;
}

void vlm_plugin_close(struct vlm_plugin *p) {
    if (!p) {
        return;
    }
    dlclose(p->handle);
    free(p->path);
    free(p);
}

const struct vlm_plugin_desc *vlm_plugin_desc(const struct vlm_plugin *p) {
    return p->desc;
}

const char *vlm_plugin_path(const struct vlm_plugin *p) {
    return p->path;
}

const char *vlm_plugin_default_dir(void) {
    const char *env = getenv("VLM_PLUGIN_DIR");
    if (env && env[0]) {
        return env;
    }
#ifdef VLM_PLUGIN_DIR_DEFAULT
    return VLM_PLUGIN_DIR_DEFAULT;
#else
    return "/usr/local/lib/vlmd/plugins";
#endif
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int vlm_plugin_open_for_arch(const char *dir, enum vlm_plugin_kind kind, const char *arch, struct vlm_plugin **out,
                             struct vlm_diag *diag) {
    DIR *d = opendir(dir);
    if (!d) {
        return vlm_diag_set(diag, VLM_ENOTFOUND, "%s: cannot open plugin directory: %s", dir, strerror(errno));
    }
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < sizeof names / sizeof names[0]) {
        size_t len = strlen(e->d_name);
        if (len > 3 && !strcmp(e->d_name + len - 3, ".so") && (names[n] = strdup(e->d_name))) {
            n++;
        }
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);
    int rc = vlm_diag_set(diag, VLM_ENOTFOUND, "%s: no plugin handles architecture '%s'", dir, arch);
    for (size_t i = 0; i < n && rc; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct vlm_plugin *p;
        struct vlm_diag why;
        if (vlm_plugin_open(path, &p, &why) != 0) {
            VLM_LOGW("skipping %s", why.msg);
            continue;
        }
        const struct vlm_plugin_desc *desc = p->desc;
        bool match = false;
        for (const char *const *a = desc->archs; desc->kind == kind && a && *a; a++) {
            match = match || !strcmp(*a, arch);
        }
        if (match) {
            *out = p;
            rc = 0;
        } else {
            vlm_plugin_close(p);
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(names[i]);
    }
    if (rc) {
        return vlm_diag_set(diag, VLM_ENOTFOUND, "%s: no plugin handles architecture '%s'", dir, arch);
    }
    return 0;
}
