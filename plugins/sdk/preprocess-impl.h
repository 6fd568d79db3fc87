// Internal parts of the image preprocessing (plugins/sdk/preprocess.c, resize.c): the region resampler and the
// 8-bit tile output that the tests compare with transformers' tiles before normalization.
#ifndef VLM_PREPROCESS_IMPL_H
#define VLM_PREPROCESS_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "vlm/preprocess.h"

// A virtual RGB8 canvas: w x h filled with `fill`, with the img_w x img_h pixels at `rgb` pasted at (ox, oy).
// Lets pad-then-resize run without materializing the padded image. For a plain image: w = img_w, h = img_h,
// ox = oy = 0. The pasted image must lie inside the canvas.
struct vlm__canvas {
    int32_t w, h;
    const uint8_t *rgb; // img_w * img_h * 3, rows top to bottom
    int32_t img_w, img_h;
    int32_t ox, oy;
    uint8_t fill[3];
};

// Largest side the preprocessing accepts (inputs and intermediate resize targets stay far below int32 limits).
#define VLM__PREPROCESS_MAX_SIDE (1 << 16)

// Writes the pixels [x0, x0 + cw) x [y0, y0 + ch) of `src` resized to out_w x out_h (as Pillow would produce
// them for the whole image) to `dst`, rows `dst_stride` bytes apart. The region must lie inside out_w x out_h.
// VLM_EINVAL for bad sizes, VLM_ENOMEM.
int vlm__resample_region(const struct vlm__canvas *src,
                         int32_t out_w,
                         int32_t out_h,
                         int32_t x0,
                         int32_t y0,
                         int32_t cw,
                         int32_t ch,
                         enum vlm_resample filter,
                         uint8_t *dst,
                         size_t dst_stride);

// Tiles before rescale/normalize: n_tiles x size x size x RGB8, interleaved, rows top to bottom.
struct vlm__tiles {
    int32_t n_tiles;
    int32_t size;
    int32_t grid_w, grid_h;
    int32_t image_w, image_h;
    uint8_t *rgb; // owned; vlm__tiles_free
};

// vlm_preprocess without the normalization. `*out` is written only on success.
int vlm__preprocess_u8(const struct vlm_preprocess_config *cfg,
                       const struct vlm_image *image,
                       struct vlm__tiles *out,
                       struct vlm_diag *diag);
void vlm__tiles_free(struct vlm__tiles *t);

#endif // VLM_PREPROCESS_IMPL_H
