// The plugin registry: what the plugin directory holds. Each *.so is opened once at start-up (the loader checks
// its ABI version before calling anything, then its kind and operation table), described, and closed again;
// components open their plugin again when they load a model, so a plugin stays mapped exactly as long as a
// model made with it lives (the dynamic linker counts the handles).
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vlmd.h"

#define REGISTRY_FILES_MAX 256

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void describe(struct vlm__plugin_entry *e, const struct vlm_plugin_desc *desc) {
    snprintf(e->name, sizeof e->name, "%s", desc->name);
    snprintf(e->version, sizeof e->version, "%s", desc->version);
    e->kind = desc->kind;
    e->abi = desc->abi_version;
    e->n_archs = 0;
    for (const char *const *a = desc->archs; a && *a && e->n_archs < VLMD_PLUGIN_ARCHS_MAX; a++) {
        snprintf(e->archs[e->n_archs++], sizeof e->archs[0], "%s", *a);
    }
}

int vlm__registry_scan(struct vlm__registry *reg, const char *dir, struct vlm_diag *diag) {
    memset(reg, 0, sizeof *reg);
    DIR *dp = opendir(dir);
    if (!dp) {
        return vlm_diag_set(diag, VLM_ENOTFOUND, "%s: cannot open the plugin directory: %s", dir, strerror(errno));
    }
    char *names[REGISTRY_FILES_MAX];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(dp))) {
        size_t len = strlen(de->d_name);
        if (len <= 3 || strcmp(de->d_name + len - 3, ".so") || de->d_name[0] == '.') {
            continue;
        }
        if (n == REGISTRY_FILES_MAX) {
            VLM_LOGW("%s: more than %d plugin files; ignoring %s", dir, REGISTRY_FILES_MAX, de->d_name);
            continue;
        }
        if (!(names[n] = strdup(de->d_name))) {
            break;
        }
        n++;
    }
    closedir(dp);
    qsort(names, n, sizeof names[0], cmp_name);
    reg->entries = calloc(n ? n : 1, sizeof *reg->entries);
    if (!reg->entries) {
        for (size_t i = 0; i < n; i++) {
            free(names[i]);
        }
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        struct vlm__plugin_entry *e = &reg->entries[reg->n];
        snprintf(e->file, sizeof e->file, "%s", names[i]);
        snprintf(e->path, sizeof e->path, "%s/%s", dir, names[i]);
        free(names[i]);
        struct vlm_plugin *p;
        struct vlm_diag why = {0};
        if (vlm_plugin_open(e->path, &p, &why) != 0) {
            VLM_LOGW("plugin %s refused: %s", e->file, why.msg);
            reg->n_refused++;
            continue;
        }
        describe(e, vlm_plugin_desc(p));
        vlm_plugin_close(p);
        if (vlm__registry_find(reg, e->name)) {
            VLM_LOGW("plugin %s refused: another file already provides plugin '%s'", e->file, e->name);
            reg->n_refused++;
            continue;
        }
        static const char *const kinds[] = {"?", "encoder", "projector", "llm"};
        char archs[128] = "";
        for (int a = 0; a < e->n_archs; a++) {
            size_t len = strlen(archs);
            snprintf(archs + len, sizeof archs - len, "%s%s", a ? "," : "", e->archs[a]);
        }
        VLM_LOGI("plugin %s: %s %s (%s, archs %s, abi %u)", e->file, e->name, e->version, kinds[e->kind], archs,
                 e->abi);
        reg->n++;
    }
    return 0;
}

void vlm__registry_free(struct vlm__registry *reg) {
    free(reg->entries);
    memset(reg, 0, sizeof *reg);
}

struct vlm__plugin_entry *vlm__registry_find(struct vlm__registry *reg, const char *name) {
    for (uint32_t i = 0; i < reg->n; i++) {
        if (!strcmp(reg->entries[i].name, name)) {
            return &reg->entries[i];
        }
    }
    return NULL;
}

struct vlm__plugin_entry *vlm__registry_for_arch(struct vlm__registry *reg, enum vlm_plugin_kind kind,
                                                 const char *arch) {
    for (uint32_t i = 0; i < reg->n; i++) {
        struct vlm__plugin_entry *e = &reg->entries[i];
        for (int a = 0; e->kind == kind && a < e->n_archs; a++) {
            if (!strcmp(e->archs[a], arch)) {
                return e;
            }
        }
    }
    return NULL;
}
