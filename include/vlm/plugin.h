// Plugin ABI. A plugin is a shared object (MODULE library) exporting two symbols:
//
//   const uint32_t vlm_plugin_abi_version;              // = VLM_PLUGIN_ABI_VERSION, read before any call
//   const struct vlm_plugin_desc *vlm_plugin_query(void);
//
// The loader (vlm_plugin_open) checks the data symbol first, then the descriptor (ABI version again, kind,
// name, the kind's operation table), and refuses a plugin that does not match with a message naming the file.
// Plugins link libvlm (the SDK: GGUF reader, tokenizer, backend ops) and never the daemon. The host hands a
// plugin its compute backend in `struct vlm_host`.
//
// Threading: a model instance is used by one worker thread at a time; sessions belong to that worker.
#ifndef VLM_PLUGIN_H
#define VLM_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/backend.h"
#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a struct or table below changes layout (2: struct vlm_host gained `precision`); the loader
// refuses a plugin built for another version with VLM_EABI.
#define VLM_PLUGIN_ABI_VERSION 2u

enum vlm_plugin_kind {
    VLM_PLUGIN_KIND_ENCODER = 1,
    VLM_PLUGIN_KIND_PROJECTOR = 2,
    VLM_PLUGIN_KIND_LLM = 3,
};

// What the host gives a plugin instance.
struct vlm_host {
    uint32_t abi_version;        // VLM_PLUGIN_ABI_VERSION of the host
    struct vlm_backend *backend; // compute backend the instance runs on (borrowed)
    // Polled between layers; a true return stops the current call with VLM_ECANCELED. May be NULL.
    bool (*should_cancel)(void *user);
    void *cancel_user;
    // How the instance multiplies with F32/F16 weights. AUTO: the plugin's default (vision encoders and
    // projectors: BF16 for F16 weights where the backend is faster that way, exact for F32; LLMs: exact).
    enum vlm_precision precision;
};

// ---- LLM ---------------------------------------------------------------------------------------------------

struct vlm_llm_info {
    char arch[32];       // "llama"
    char name[64];       // general.name, may be empty
    int32_t n_vocab;
    int32_t n_embd;      // width of the embeddings eval accepts
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_ctx_train; // context length the model was trained with
    enum vlm_type weight_type; // type of most matrix weights
    uint64_t n_params;
    uint64_t weight_bytes;
};

struct vlm_llm_params {
    int32_t n_ctx;        // KV cache positions per session; <= 0: min(n_ctx_train, 4096)
    enum vlm_type kv_type; // VLM_TYPE_F32 or VLM_TYPE_F16 (default 0 = F32... set explicitly)
};

// One step of input: either token ids or embeddings (n rows of n_embd floats, e.g. projected image features).
struct vlm_llm_batch {
    const int32_t *tokens; // n ids, or NULL
    const float *embd;     // n * n_embd floats, or NULL
    int32_t n;
    bool logits_all; // write logits for every row (n * n_vocab); otherwise only the last row's
};

struct vlm_llm_ops {
    // Loads `path` (GGUF). `*model` is written only on success.
    int (*load)(const struct vlm_host *host, const char *path, const struct vlm_llm_params *params, void **model,
                struct vlm_diag *diag);
    void (*unload)(void *model);
    void (*info)(const void *model, struct vlm_llm_info *info);
    const struct vlm_tokenizer *(*tokenizer)(const void *model); // owned by the model

    // A session holds one sequence's KV cache (n_ctx from params at load unless n_ctx > 0 here).
    int (*session_new)(void *model, int32_t n_ctx, void **session, struct vlm_diag *diag);
    void (*session_free)(void *session);
    int32_t (*session_n_past)(const void *session);
    int32_t (*session_n_ctx)(const void *session);
    // Forgets cache positions >= n_past (n_past <= current).
    int (*session_truncate)(void *session, int32_t n_past);
    // Appends the batch at positions n_past.. and writes logits (see vlm_llm_batch.logits_all).
    // VLM_ENOSPC if the cache would overflow (nothing is appended), VLM_ECANCELED if the host cancelled.
    int (*session_eval)(void *session, const struct vlm_llm_batch *batch, float *logits, struct vlm_diag *diag);
};

// ---- vision: encoder and projector ------------------------------------------------------------------------
// The chain is: image -> encoder.preprocess (tiles) -> encoder.encode (patch features per tile) ->
// projector.project (embeddings in the LLM's space, assembled in the model's token order) -> LLM.

struct vlm_image; // include/vlm/image.h

// Encoder input made by preprocess: normalized square tiles plus the layout the projector needs to assemble
// the features (LLaVA-NeXT anyres: overview first, then grid_w x grid_h tiles in row-major order).
struct vlm_image_batch {
    int32_t n_tiles;          // square images to encode
    int32_t size;             // side of each, in pixels
    float *pixels;            // [n_tiles][3][size][size], normalized; owned (free with encoder batch_free)
    int32_t grid_w, grid_h;   // tile grid after the overview; 0, 0 when the image is a single tile
    int32_t image_w, image_h; // the original image's size (for LLaVA-NeXT's unpadding)
};

struct vlm_encoder_info {
    char arch[32];      // "clip"
    char name[64];
    int32_t image_size; // side of one tile (336)
    int32_t patch_size; // 14
    int32_t n_embd;     // width of the features (1024 for ViT-L)
    int32_t n_patches;  // feature rows per tile after dropping the class token (576)
};

struct vlm_encoder_ops {
    int (*load)(const struct vlm_host *host, const char *path, void **model, struct vlm_diag *diag);
    void (*unload)(void *model);
    void (*info)(const void *model, struct vlm_encoder_info *info);
    // Resizes, pads, tiles and normalizes as the model's processor does. `*out` is written only on success.
    int (*preprocess)(void *model, const struct vlm_image *image, struct vlm_image_batch *out, struct vlm_diag *diag);
    void (*batch_free)(struct vlm_image_batch *batch);
    // features: n_tiles * n_patches * n_embd floats, tile-major.
    int (*encode)(void *model, const struct vlm_image_batch *batch, float *features, struct vlm_diag *diag);
};

struct vlm_projector_info {
    char type[32];  // "mlp", "linear"
    int32_t n_in;   // feature width it takes (the encoder's n_embd)
    int32_t n_out;  // embedding width it makes (the LLM's n_embd)
};

struct vlm_projector_ops {
    int (*load)(const struct vlm_host *host, const char *path, void **model, struct vlm_diag *diag);
    void (*unload)(void *model);
    void (*info)(const void *model, struct vlm_projector_info *info);
    // Number of LLM embedding rows the image of this layout becomes (e.g. 576, or 2144 for a 2x2 anyres grid).
    int32_t (*n_tokens)(const void *model, const struct vlm_image_batch *layout, int32_t n_patches);
    // features: as the encoder wrote them; embd: n_tokens * n_out floats in the LLM's input order.
    int (*project)(void *model, const float *features, const struct vlm_image_batch *layout, int32_t n_patches,
                   float *embd, struct vlm_diag *diag);
};

// ---- descriptor --------------------------------------------------------------------------------------------

struct vlm_plugin_desc {
    uint32_t abi_version; // VLM_PLUGIN_ABI_VERSION the plugin was built against
    enum vlm_plugin_kind kind;
    const char *name;        // "llm-llama"
    const char *version;     // plugin version string
    const char *description; // one line
    const char *const *archs; // NULL-terminated list of GGUF general.architecture values it loads
    const struct vlm_llm_ops *llm; // for VLM_PLUGIN_KIND_LLM
    const struct vlm_encoder_ops *encoder;     // for VLM_PLUGIN_KIND_ENCODER
    const struct vlm_projector_ops *projector; // for VLM_PLUGIN_KIND_PROJECTOR
};

typedef const struct vlm_plugin_desc *(*vlm_plugin_query_fn)(void);

// Exports the two symbols the loader looks for, for a plugin whose descriptor is the static `desc`:
//   static const struct vlm_plugin_desc my_desc = {...};
//   VLM_PLUGIN_EXPORT(my_desc)
#define VLM_PLUGIN_EXPORT(desc)                                                                                   \
    VLM_API const uint32_t vlm_plugin_abi_version = VLM_PLUGIN_ABI_VERSION;                                      \
    VLM_API const struct vlm_plugin_desc *vlm_plugin_query(void);                                                \
    const struct vlm_plugin_desc *vlm_plugin_query(void) {                                                       \
        return &(desc);                                                                                          \
    }

// ---- host side: loading plugins ----------------------------------------------------------------------------

struct vlm_plugin; // an opened plugin (dlopen handle + descriptor)

// dlopen()s `path` with RTLD_NOW | RTLD_LOCAL and validates it. VLM_EABI for a wrong ABI version, VLM_EINVAL
// for a missing symbol, wrong kind or incomplete operation table; the message names the file.
VLM_API int vlm_plugin_open(const char *path, struct vlm_plugin **out, struct vlm_diag *diag);
VLM_API void vlm_plugin_close(struct vlm_plugin *p);
VLM_API const struct vlm_plugin_desc *vlm_plugin_desc(const struct vlm_plugin *p);
VLM_API const char *vlm_plugin_path(const struct vlm_plugin *p);

// Scans `dir` for plugins (*.so) of `kind` whose descriptor lists `arch` and opens the first match (in name
// order). VLM_ENOTFOUND when none does; plugins that fail to open are skipped with a warning.
VLM_API int vlm_plugin_open_for_arch(const char *dir, enum vlm_plugin_kind kind, const char *arch,
                                     struct vlm_plugin **out, struct vlm_diag *diag);

// The directory plugins are installed in (compile-time default, overridden by VLM_PLUGIN_DIR).
VLM_API const char *vlm_plugin_default_dir(void);

#ifdef __cplusplus
}
#endif

#endif // VLM_PLUGIN_H
