// The image half of a chain: an encoder and a projector (plugins), and the routine that turns one decoded image
// into LLM embeddings through them. Shared by vlm-run and the daemon.
#ifndef VLM_VISION_H
#define VLM_VISION_H

#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/image.h"
#include "vlm/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

// One image's embeddings, in the order the LLM takes them.
struct vlm_vision_embedding {
    float *embd;   // n * n_embd floats; owned (vlm_vision_embedding_free)
    int32_t n;     // rows (image tokens)
    int32_t n_embd;
    int32_t n_tiles, grid_w, grid_h;
    double preprocess_ms, encode_ms, project_ms;
};

// Preprocesses, encodes and projects `img` with the given encoder and projector instances (borrowed).
// `*out` is written only on success.
VLM_API int vlm_vision_embed(const struct vlm_encoder_ops *enc, void *enc_model, const struct vlm_projector_ops *proj,
                             void *proj_model, const struct vlm_image *img, struct vlm_vision_embedding *out,
                             struct vlm_diag *diag);
VLM_API void vlm_vision_embedding_free(struct vlm_vision_embedding *e);

// Convenience for one mmproj file: opens the encoder and projector plugins registered for its architecture in
// `plugin_dir` and loads both from the file. Checks that the encoder's width is the projector's input and,
// when llm_n_embd > 0, that the projector's output is the LLM's width.
struct vlm_vision {
    struct vlm_plugin *enc_plugin;
    struct vlm_plugin *proj_plugin;
    const struct vlm_encoder_ops *enc;
    const struct vlm_projector_ops *proj;
    void *enc_model;
    void *proj_model;
    struct vlm_encoder_info enc_info;
    struct vlm_projector_info proj_info;
};

VLM_API int vlm_vision_open(const char *plugin_dir, const char *mmproj, const struct vlm_host *host,
                            int32_t llm_n_embd, struct vlm_vision *v, struct vlm_diag *diag);
VLM_API void vlm_vision_close(struct vlm_vision *v); // safe on a zeroed or partly opened struct

#ifdef __cplusplus
}
#endif

#endif // VLM_VISION_H
