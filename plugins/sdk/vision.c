// The image half of a chain (see include/vlm/vision.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/generate.h"
#include "vlm/gguf.h"
#include "vlm/log.h"
#include "vlm/vision.h"

int vlm_vision_embed(const struct vlm_encoder_ops *enc, void *enc_model, const struct vlm_projector_ops *proj,
                     void *proj_model, const struct vlm_image *img, struct vlm_vision_embedding *out,
                     struct vlm_diag *diag) {
    struct vlm_encoder_info ei;
    struct vlm_projector_info pi;
    enc->info(enc_model, &ei);
    proj->info(proj_model, &pi);
    struct vlm_image_batch batch = {0};
    struct vlm_vision_embedding e = {0};
    float *features = NULL;
    double t0 = vlm_time_ms();
    int rc = enc->preprocess(enc_model, img, &batch, diag);
    if (rc) {
        return rc;
    }
    double t1 = vlm_time_ms();
    int32_t n_tok = proj->n_tokens(proj_model, &batch, ei.n_patches);
    if (n_tok <= 0) {
        rc = vlm_diag_set(diag, VLM_EINTERNAL, "the projector cannot lay out %d tiles (grid %dx%d)", batch.n_tiles,
                          batch.grid_w, batch.grid_h);
        goto out;
    }
    features = malloc((size_t)batch.n_tiles * (size_t)ei.n_patches * (size_t)ei.n_embd * sizeof(float));
    e.embd = malloc((size_t)n_tok * (size_t)pi.n_out * sizeof(float));
    if (!features || !e.embd) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "out of memory for the features of %d tiles", batch.n_tiles);
        goto out;
    }
    if ((rc = enc->encode(enc_model, &batch, features, diag))) {
        goto out;
    }
    double t2 = vlm_time_ms();
    if ((rc = proj->project(proj_model, features, &batch, ei.n_patches, e.embd, diag))) {
        goto out;
    }
    e.n = n_tok;
    e.n_embd = pi.n_out;
    e.n_tiles = batch.n_tiles;
    e.grid_w = batch.grid_w;
    e.grid_h = batch.grid_h;
    e.preprocess_ms = t1 - t0;
    e.encode_ms = t2 - t1;
    e.project_ms = vlm_time_ms() - t2;
    *out = e;
    e.embd = NULL;
out:
    free(e.embd);
    free(features);
    enc->batch_free(&batch);
    return rc;
}

void vlm_vision_embedding_free(struct vlm_vision_embedding *e) {
    if (e) {
        free(e->embd);
        e->embd = NULL;
        e->n = 0;
    }
}

void vlm_vision_close(struct vlm_vision *v) {
    if (!v) {
        return;
    }
    if (v->enc_model) {
        v->enc->unload(v->enc_model);
    }
    if (v->proj_model) {
        v->proj->unload(v->proj_model);
    }
    vlm_plugin_close(v->enc_plugin);
    vlm_plugin_close(v->proj_plugin);
    memset(v, 0, sizeof *v);
}

int vlm_vision_open(const char *plugin_dir, const char *mmproj, const struct vlm_host *host, int32_t llm_n_embd,
                    struct vlm_vision *v, struct vlm_diag *diag) {
    memset(v, 0, sizeof *v);
    char arch[64];
    struct vlm_gguf *g;
    int rc = vlm_gguf_open(mmproj, &g, diag);
    if (rc) {
        return rc;
    }
    struct vlm_gguf_str s;
    if (vlm_gguf_get_str(g, "general.architecture", &s, NULL) != 0) {
        vlm_gguf_close(g);
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: no general.architecture key", mmproj);
    }
    snprintf(arch, sizeof arch, "%.*s", (int)(s.len < 63 ? s.len : 63), s.ptr);
    vlm_gguf_close(g);

    double t0 = vlm_time_ms();
    if (vlm_plugin_open_for_arch(plugin_dir, VLM_PLUGIN_KIND_ENCODER, arch, &v->enc_plugin, NULL) != 0 ||
        vlm_plugin_open_for_arch(plugin_dir, VLM_PLUGIN_KIND_PROJECTOR, arch, &v->proj_plugin, NULL) != 0) {
        vlm_vision_close(v);
        return vlm_diag_set(diag, VLM_EUNSUPPORTED,
                            "%s: no image encoder and projector plugins in %s for architecture '%s' (is this an "
                            "mmproj file?)",
                            mmproj, plugin_dir, arch);
    }
    v->enc = vlm_plugin_desc(v->enc_plugin)->encoder;
    v->proj = vlm_plugin_desc(v->proj_plugin)->projector;
    if ((rc = v->enc->load(host, mmproj, &v->enc_model, diag)) ||
        (rc = v->proj->load(host, mmproj, &v->proj_model, diag))) {
        vlm_vision_close(v);
        return rc;
    }
    v->enc->info(v->enc_model, &v->enc_info);
    v->proj->info(v->proj_model, &v->proj_info);
    if (v->enc_info.n_embd != v->proj_info.n_in) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: the encoder makes %d-wide features; the projector takes %d",
                          mmproj, v->enc_info.n_embd, v->proj_info.n_in);
        vlm_vision_close(v);
        return rc;
    }
    if (llm_n_embd > 0 && v->proj_info.n_out != llm_n_embd) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL,
                          "%s: the projector makes %d-wide embeddings but the LLM takes %d: this mmproj belongs to "
                          "another model",
                          mmproj, v->proj_info.n_out, llm_n_embd);
        vlm_vision_close(v);
        return rc;
    }
    vlm_log(VLM_LOG_INFO, "%s: %s (%s) %d px, patch %d, %d patches x %d, projector %s -> %d, loaded in %.0f ms",
            mmproj, v->enc_info.name[0] ? v->enc_info.name : "unnamed", v->enc_info.arch, v->enc_info.image_size,
            v->enc_info.patch_size, v->enc_info.n_patches, v->enc_info.n_embd, v->proj_info.type,
            v->proj_info.n_out, vlm_time_ms() - t0);
    return 0;
}
