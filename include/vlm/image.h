// Image input: JPEG (libjpeg-turbo), PNG (libpng) and WebP (libwebp) decoded into 8-bit RGB.
//
// Untrusted input: the format is chosen by magic bytes (anything else is refused before a decoder runs); the
// size is read from the header and checked against the limits before the pixel buffer is allocated; decoder
// errors become VLM_EBADIMAGE with a message, never a crash or exit. Grey, palette, 16-bit and alpha images
// become RGB as Pillow's convert("RGB") does; JPEG EXIF orientation is applied.
#ifndef VLM_IMAGE_H
#define VLM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vlm_image {
    int32_t width;
    int32_t height;
    uint8_t *rgb; // width * height * 3 bytes, rows top to bottom; owned: release with vlm_image_free
};

enum vlm_image_format {
    VLM_IMAGE_FORMAT_UNKNOWN = 0,
    VLM_IMAGE_FORMAT_JPEG = 1,
    VLM_IMAGE_FORMAT_PNG = 2,
    VLM_IMAGE_FORMAT_WEBP = 3,
};

struct vlm_image_limits {
    size_t max_bytes;   // encoded size
    int32_t max_side;   // pixels per side
    int64_t max_pixels; // width * height
};

// 64 MiB encoded, 16384 px per side, 64 megapixels (../shared/docs/reliability.md §3 targets).
VLM_API struct vlm_image_limits vlm_image_default_limits(void);

VLM_API enum vlm_image_format vlm_image_sniff(const void *data, size_t size);

// Decodes `size` bytes. `limits` may be NULL (defaults). `*out` is written only on success. Errors:
// VLM_EUNSUPPORTED (not JPEG/PNG/WebP, or a variant such as animated WebP), VLM_ETOOLARGE (over a limit),
// VLM_EBADIMAGE (corrupt or truncated).
VLM_API int vlm_image_decode(const void *data, size_t size, const struct vlm_image_limits *limits,
                             struct vlm_image *out, struct vlm_diag *diag);

// Reads and decodes a file (for tools; the daemon receives bytes).
VLM_API int vlm_image_load(const char *path, const struct vlm_image_limits *limits, struct vlm_image *out,
                           struct vlm_diag *diag);

VLM_API void vlm_image_free(struct vlm_image *img);

#ifdef __cplusplus
}
#endif

#endif // VLM_IMAGE_H
