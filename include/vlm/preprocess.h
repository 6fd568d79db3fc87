// Image preprocessing for vision encoders: the resize, pad, crop, tiling and normalization that transformers'
// image processors apply before a CLIP vision tower, reproduced so that our pixel values match theirs.
//
// Resampling reproduces Pillow's Image.resize (BICUBIC/BILINEAR on 8-bit RGB): separable, horizontal pass then
// vertical, support widened by the downscale factor (antialiasing), weights normalized per output pixel and
// rounded to 22-bit fixed point, each pass rounded and clamped to 8 bits. Results are byte-identical to Pillow.
//
// Modes (see ../shared/docs/gguf-llava.md §6):
//   LLAVA15_HF   CLIPImageProcessor as llava-hf ships it: resize the shortest edge to `size` (the other side
//                int(size * long / short)), then center-crop size x size (offsets floor((dim - size) / 2)).
//   LLAVA15_PAD  original LLaVA 1.5 (image_aspect_ratio "pad"): expand2square with the colour int(255 * mean) at
//                the original resolution, image centred at ((S - W) / 2, (S - H) / 2); then as LLAVA15_HF.
//   ANYRES       transformers' LlavaNextImageProcessor: best resolution among the pinpoints (each pair read as
//                (height, width), as transformers does), resize to fit keeping the aspect ratio, pad black centred,
//                cut size x size tiles row-major; the overview is the whole image resized to size x size
//                (aspect not kept). Encoder order: overview, then the tiles.
// Normalization: (float)(v * (1/255.0)), then (x - mean[c]) / std[c] in float32, laid out [3][size][size] per
// tile, exactly as transformers' rescale + normalize.
//
// All functions are thread-safe (no shared state). Memory: large images are never padded or resized in full;
// only the rows and columns that reach an output tile are computed, so the working set stays small even for a
// 16384 x 4000 input in pad mode.
#ifndef VLM_PREPROCESS_H
#define VLM_PREPROCESS_H

#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/gguf.h"
#include "vlm/image.h"
#include "vlm/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

enum vlm_preprocess_mode {
    VLM_PREPROCESS_MODE_LLAVA15_HF = 1,
    VLM_PREPROCESS_MODE_LLAVA15_PAD = 2,
    VLM_PREPROCESS_MODE_ANYRES = 3,
};

#define VLM_PREPROCESS_MAX_PINPOINTS 64

struct vlm_preprocess_config {
    enum vlm_preprocess_mode mode;
    int32_t size;  // tile side in pixels (clip.vision.image_size): shortest-edge target and crop size
    float mean[3]; // per channel, for normalization and the LLAVA15_PAD fill colour
    float std[3];
    int32_t n_pinpoints; // ANYRES only
    // As stored in the file (clip.vision.image_grid_pinpoints, flattened pairs); each pair is read as
    // {height, width}, as transformers does. Both must be positive multiples of `size`.
    int32_t pinpoints[VLM_PREPROCESS_MAX_PINPOINTS][2];
};

// "llava15-hf", "llava15-pad", "anyres", or "?" (static strings).
VLM_API const char *vlm_preprocess_mode_name(enum vlm_preprocess_mode mode);

// Reads the config from an mmproj GGUF (general.architecture "clip"):
//   clip.vision.image_size (required), clip.vision.image_mean / image_std (required, 3 numbers each),
//   clip.vision.image_grid_pinpoints (numbers, even count) present => ANYRES;
//   otherwise clip.vision.image_aspect_ratio == "pad" or absent (old LLaVA-1.5 files, trained with padding)
//   => LLAVA15_PAD ("anyres" without pinpoints is an error); any other value ("crop") => LLAVA15_HF.
// `*cfg` is written only on success. VLM_EBADMODEL (with a message naming the key) for a missing or malformed
// key. Borrows `g`.
VLM_API int
vlm_preprocess_config_from_gguf(const struct vlm_gguf *g, struct vlm_preprocess_config *cfg, struct vlm_diag *diag);

// Checks a config (size 1..4096, std non-zero, pinpoints for ANYRES). 0 or VLM_EINVAL.
VLM_API int vlm_preprocess_config_check(const struct vlm_preprocess_config *cfg, struct vlm_diag *diag);

// Turns `image` into normalized encoder tiles. `*out` is written only on success; release it with
// vlm_image_batch_free. Borrows `cfg` and `image`. VLM_EINVAL (bad config or empty image), VLM_ENOMEM.
VLM_API int vlm_preprocess(const struct vlm_preprocess_config *cfg,
                           const struct vlm_image *image,
                           struct vlm_image_batch *out,
                           struct vlm_diag *diag);

// Frees `batch->pixels` and zeroes the struct. NULL-safe; a zeroed batch may be freed.
VLM_API void vlm_image_batch_free(struct vlm_image_batch *batch);

// ---- resampling --------------------------------------------------------------------------------------------

enum vlm_resample {
    VLM_RESAMPLE_BILINEAR = 1, // Pillow Image.BILINEAR (triangle filter, antialiased)
    VLM_RESAMPLE_BICUBIC = 2,  // Pillow Image.BICUBIC (Keys a = -0.5, antialiased)
};

// Resizes `src` to w x h as Pillow's Image.resize does (identical bytes). `*dst` is written only on success and
// is released with vlm_image_free. VLM_EINVAL for empty sizes, VLM_ETOOLARGE if w * h exceeds 2^28, VLM_ENOMEM.
VLM_API int
vlm_image_resize(const struct vlm_image *src, int32_t w, int32_t h, enum vlm_resample filter, struct vlm_image *dst);
VLM_API int vlm_image_resize_bicubic(const struct vlm_image *src, int32_t w, int32_t h, struct vlm_image *dst);

// ---- LLaVA-NeXT (anyres) arithmetic ------------------------------------------------------------------------

// transformers' select_best_resolution for an image of image_w x image_h: maximal effective area, then minimal
// wasted area, earlier pinpoint on a full tie; pinpoints read as {height, width}. Writes the chosen resolution
// and returns its index, or VLM_EINVAL (no pinpoints, non-positive sizes).
VLM_API int vlm_anyres_select(int32_t image_w,
                              int32_t image_h,
                              const int32_t (*pinpoints)[2],
                              int32_t n_pinpoints,
                              int32_t *best_w,
                              int32_t *best_h);

// The unpadded feature grid of LLaVA-NeXT's spatial_unpad, as transformers computes it (processor token count
// and model unpad_image agree): the grid_w x grid_h tiles give (pps * grid_h) rows by (pps * grid_w) columns of
// patch features (pps = patches per tile side, 24 for ViT-L/14-336); the rows (or columns) padded by the
// letterbox are dropped, using int(round(x, 7)) for the scaled side. Writes the remaining *rows and *cols and
// returns the image's total token count: the overview pps * pps, plus rows * (cols + 1) (one image_newline
// after each row). Returns VLM_EINVAL for non-positive arguments.
VLM_API int32_t vlm_anyres_unpad_shape(int32_t image_w,
                                       int32_t image_h,
                                       int32_t grid_w,
                                       int32_t grid_h,
                                       int32_t patches_per_side,
                                       int32_t *rows,
                                       int32_t *cols);

// Convenience: best resolution from `cfg` (ANYRES), grid = best / cfg->size, then vlm_anyres_unpad_shape.
// Writes the grid when the pointers are non-NULL. Returns the token count or VLM_EINVAL.
VLM_API int32_t vlm_anyres_n_tokens(const struct vlm_preprocess_config *cfg,
                                    int32_t image_w,
                                    int32_t image_h,
                                    int32_t patches_per_side,
                                    int32_t *grid_w,
                                    int32_t *grid_h);

#ifdef __cplusplus
}
#endif

#endif // VLM_PREPROCESS_H
