// Image preprocessing for LLaVA-style encoders, following transformers' image processors (PIL backend) step by
// step: CLIPImageProcessor / LlavaImageProcessor (llava-hf 1.5, with or without pad-to-square) and
// LlavaNextImageProcessor (anyres). Integer and float arithmetic mirrors the Python code (same divisions, same
// truncations, same double products) so that sizes, grids and token counts agree on every input, including ties.
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/sdk/preprocess-impl.h"
#include "vlm/preprocess.h"

#define MAX_TILE_SIZE  4096
#define MAX_GRID_SIDE  32 // tiles per side of a pinpoint
#define MAX_GRID_CELLS 100

const char *vlm_preprocess_mode_name(enum vlm_preprocess_mode mode) {
    switch (mode) {
    case VLM_PREPROCESS_MODE_LLAVA15_HF:
        return "llava15-hf";
    case VLM_PREPROCESS_MODE_LLAVA15_PAD:
        return "llava15-pad";
    case VLM_PREPROCESS_MODE_ANYRES:
        return "anyres";
    }
    return "?";
}

int vlm_preprocess_config_check(const struct vlm_preprocess_config *cfg, struct vlm_diag *diag) {
    if (!cfg) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: no config", __func__);
    }
    if (cfg->mode != VLM_PREPROCESS_MODE_LLAVA15_HF && cfg->mode != VLM_PREPROCESS_MODE_LLAVA15_PAD &&
        cfg->mode != VLM_PREPROCESS_MODE_ANYRES) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: unknown mode %d", __func__, (int)cfg->mode);
    }
    if (cfg->size <= 0 || cfg->size > MAX_TILE_SIZE) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: image size %d, expected 1..%d", __func__, (int)cfg->size,
                            MAX_TILE_SIZE);
    }
    for (int c = 0; c < 3; c++) {
        if (!isfinite(cfg->mean[c]) || !isfinite(cfg->std[c]) || cfg->std[c] == 0.0f) {
            return vlm_diag_set(diag, VLM_EINVAL, "%s: channel %d: mean %g, std %g (need finite, std != 0)", __func__,
                                c, (double)cfg->mean[c], (double)cfg->std[c]);
        }
    }
    if (cfg->mode != VLM_PREPROCESS_MODE_ANYRES) {
        return 0;
    }
    if (cfg->n_pinpoints <= 0 || cfg->n_pinpoints > VLM_PREPROCESS_MAX_PINPOINTS) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: anyres needs 1..%d grid pinpoints, got %d", __func__,
                            VLM_PREPROCESS_MAX_PINPOINTS, (int)cfg->n_pinpoints);
    }
    for (int32_t i = 0; i < cfg->n_pinpoints; i++) {
        int32_t h = cfg->pinpoints[i][0], w = cfg->pinpoints[i][1];
        if (h <= 0 || w <= 0 || h % cfg->size || w % cfg->size || h / cfg->size > MAX_GRID_SIDE ||
            w / cfg->size > MAX_GRID_SIDE || (h / cfg->size) * (w / cfg->size) > MAX_GRID_CELLS) {
            return vlm_diag_set(diag, VLM_EINVAL,
                                "%s: grid pinpoint %d (%d, %d): need positive multiples of the tile size %d, at most "
                                "%d tiles per side and %d tiles",
                                __func__, (int)i, (int)h, (int)w, (int)cfg->size, MAX_GRID_SIDE, MAX_GRID_CELLS);
        }
    }
    return 0;
}

// ---- config from an mmproj file -----------------------------------------------------------------------------

static int read_vec3(const struct vlm_gguf *g, const char *key, float out[3], struct vlm_diag *diag) {
    int64_t i = vlm_gguf_find_key(g, key);
    if (i < 0) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: missing key %s", vlm_gguf_path(g), key);
    }
    enum vlm_gguf_type et;
    uint64_t n = 0;
    if (vlm_gguf_kv_array(g, i, &et, &n) != 0 || n != 3) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s: expected an array of 3 numbers", vlm_gguf_path(g), key);
    }
    for (uint64_t j = 0; j < 3; j++) {
        double v;
        if (vlm_gguf_array_get_num(g, i, j, &v) != 0 || !isfinite(v)) {
            return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s: element %d is not a finite number", vlm_gguf_path(g), key,
                                (int)j);
        }
        out[j] = (float)v;
    }
    return 0;
}

int vlm_preprocess_config_from_gguf(const struct vlm_gguf *g,
                                    struct vlm_preprocess_config *out,
                                    struct vlm_diag *diag) {
    static const char K_SIZE[] = "clip.vision.image_size";
    static const char K_PINPOINTS[] = "clip.vision.image_grid_pinpoints";
    static const char K_ASPECT[] = "clip.vision.image_aspect_ratio";
    if (!g || !out) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: NULL argument", __func__);
    }
    struct vlm_preprocess_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    int64_t size = 0;
    int rc = vlm_gguf_get_int(g, K_SIZE, &size, diag);
    if (rc == VLM_ENOENT) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: missing key %s", vlm_gguf_path(g), K_SIZE);
    }
    if (rc) {
        return rc;
    }
    if (size <= 0 || size > MAX_TILE_SIZE) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s = %lld, expected 1..%d", vlm_gguf_path(g), K_SIZE,
                            (long long)size, MAX_TILE_SIZE);
    }
    cfg.size = (int32_t)size;
    if ((rc = read_vec3(g, "clip.vision.image_mean", cfg.mean, diag)) != 0 ||
        (rc = read_vec3(g, "clip.vision.image_std", cfg.std, diag)) != 0) {
        return rc;
    }

    struct vlm_gguf_str aspect = {0};
    rc = vlm_gguf_get_str(g, K_ASPECT, &aspect, diag);
    if (rc && rc != VLM_ENOENT) {
        return rc;
    }
    bool aspect_absent = rc == VLM_ENOENT;
    bool aspect_pad = aspect.len == 3 && memcmp(aspect.ptr, "pad", 3) == 0;
    bool aspect_anyres = aspect.len >= 6 && memcmp(aspect.ptr, "anyres", 6) == 0; // also "anyres_max_9" etc.

    int64_t pi = vlm_gguf_find_key(g, K_PINPOINTS);
    if (pi >= 0) {
        enum vlm_gguf_type et;
        uint64_t n = 0;
        if (vlm_gguf_kv_array(g, pi, &et, &n) != 0 || n == 0 || n % 2 || n / 2 > VLM_PREPROCESS_MAX_PINPOINTS) {
            return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s: expected an array of 1..%d (height, width) pairs",
                                vlm_gguf_path(g), K_PINPOINTS, VLM_PREPROCESS_MAX_PINPOINTS);
        }
        for (uint64_t j = 0; j < n; j++) {
            double v;
            if (vlm_gguf_array_get_num(g, pi, j, &v) != 0 || !(v >= 1.0 && v <= 1e6) || v != floor(v)) {
                return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s: element %llu is not a positive integer",
                                    vlm_gguf_path(g), K_PINPOINTS, (unsigned long long)j);
            }
            cfg.pinpoints[j / 2][j % 2] = (int32_t)v;
        }
        cfg.n_pinpoints = (int32_t)(n / 2);
        cfg.mode = VLM_PREPROCESS_MODE_ANYRES;
    } else if (aspect_anyres) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s is \"%.*s\" but %s is missing", vlm_gguf_path(g), K_ASPECT,
                            (int)aspect.len, aspect.ptr, K_PINPOINTS);
    } else if (aspect_pad || aspect_absent) {
        // No key: 2023-era LLaVA-1.5 mmproj files (llama.cpp's legacy converter) lack it, and those models were
        // trained with pad-to-square; our converter writes "crop" for llava-hf checkpoints explicitly.
        cfg.mode = VLM_PREPROCESS_MODE_LLAVA15_PAD;
    } else {
        cfg.mode = VLM_PREPROCESS_MODE_LLAVA15_HF;
    }
    struct vlm_diag d2 = {0};
    if ((rc = vlm_preprocess_config_check(&cfg, &d2)) != 0) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s", vlm_gguf_path(g), d2.msg);
    }
    *out = cfg;
    return 0;
}

// ---- anyres arithmetic ---------------------------------------------------------------------------------------

int vlm_anyres_select(int32_t image_w,
                      int32_t image_h,
                      const int32_t (*pinpoints)[2],
                      int32_t n_pinpoints,
                      int32_t *best_w,
                      int32_t *best_h) {
    if (image_w <= 0 || image_h <= 0 || !pinpoints || n_pinpoints <= 0) {
        return VLM_EINVAL;
    }
    int best = -1;
    int64_t max_eff = 0, min_wasted = 0;
    int64_t area = (int64_t)image_w * image_h;
    for (int32_t i = 0; i < n_pinpoints; i++) {
        int32_t h = pinpoints[i][0], w = pinpoints[i][1];
        if (h <= 0 || w <= 0) {
            return VLM_EINVAL;
        }
        double sw = (double)w / (double)image_w, sh = (double)h / (double)image_h;
        double scale = sh < sw ? sh : sw; // Python min(): the first on a tie
        int64_t dw = (int64_t)((double)image_w * scale), dh = (int64_t)((double)image_h * scale);
        int64_t eff = dw * dh < area ? dw * dh : area;
        int64_t wasted = (int64_t)w * h - eff;
        if (best < 0 || eff > max_eff || (eff == max_eff && wasted < min_wasted)) {
            best = i;
            max_eff = eff;
            min_wasted = wasted;
        }
    }
    if (best_w) {
        *best_w = pinpoints[best][1];
    }
    if (best_h) {
        *best_h = pinpoints[best][0];
    }
    return best;
}

// Python's int(round(x, 7)) for x >= 0: round to 7 decimals, then truncate. Only a value within 5e-8 below an
// integer rounds up to it (transformers added this so that 23.99999999 from a float product counts as 24).
static int64_t int_round7(double x) {
    double n = floor(x);
    // 5e-8 as a double is a hair below the decimal 5e-8 and exact ties cannot occur, so <= is the right test.
    return (n + 1.0) - x <= 5e-8 ? (int64_t)n + 1 : (int64_t)n;
}

int32_t vlm_anyres_unpad_shape(int32_t image_w,
                               int32_t image_h,
                               int32_t grid_w,
                               int32_t grid_h,
                               int32_t patches_per_side,
                               int32_t *rows,
                               int32_t *cols) {
    if (image_w <= 0 || image_h <= 0 || grid_w <= 0 || grid_h <= 0 || patches_per_side <= 0 ||
        grid_w > MAX_GRID_SIDE * 4 || grid_h > MAX_GRID_SIDE * 4 || patches_per_side > 1024) {
        return VLM_EINVAL;
    }
    int64_t cur_h = (int64_t)patches_per_side * grid_h, cur_w = (int64_t)patches_per_side * grid_w;
    double orig_aspect = (double)image_w / (double)image_h;
    double cur_aspect = (double)cur_w / (double)cur_h;
    if (orig_aspect > cur_aspect) {
        int64_t new_h = int_round7((double)image_h * ((double)cur_w / (double)image_w));
        int64_t pad = (cur_h - new_h) / 2; // new_h <= cur_h here, so C and Python division agree
        cur_h -= 2 * pad;
    } else {
        int64_t new_w = int_round7((double)image_w * ((double)cur_h / (double)image_h));
        int64_t pad = (cur_w - new_w) / 2;
        cur_w -= 2 * pad;
    }
    if (rows) {
        *rows = (int32_t)cur_h;
    }
    if (cols) {
        *cols = (int32_t)cur_w;
    }
    return (int32_t)((int64_t)patches_per_side * patches_per_side + cur_h * (cur_w + 1));
}

int32_t vlm_anyres_n_tokens(const struct vlm_preprocess_config *cfg,
                            int32_t image_w,
                            int32_t image_h,
                            int32_t patches_per_side,
                            int32_t *grid_w,
                            int32_t *grid_h) {
    if (!cfg || cfg->mode != VLM_PREPROCESS_MODE_ANYRES || cfg->size <= 0) {
        return VLM_EINVAL;
    }
    int32_t bw, bh;
    int rc = vlm_anyres_select(image_w, image_h, (const int32_t(*)[2])cfg->pinpoints, cfg->n_pinpoints, &bw, &bh);
    if (rc < 0) {
        return rc;
    }
    // transformers' model takes best // patch size; the processor's pinpoints are multiples of it
    int32_t gw = bw / cfg->size, gh = bh / cfg->size;
    if (gw <= 0 || gh <= 0) {
        return VLM_EINVAL;
    }
    if (grid_w) {
        *grid_w = gw;
    }
    if (grid_h) {
        *grid_h = gh;
    }
    return vlm_anyres_unpad_shape(image_w, image_h, gw, gh, patches_per_side, NULL, NULL);
}

// ---- the modes --------------------------------------------------------------------------------------------------

// CLIPImageProcessor's resize(shortest_edge = size) + center_crop(size) of `c`, written as one size x size tile.
static int shortest_edge_crop(const struct vlm__canvas *c, int32_t size, uint8_t *dst) {
    int32_t sh = c->w <= c->h ? c->w : c->h;
    int32_t lg = c->w <= c->h ? c->h : c->w;
    // get_resize_output_image_size(default_to_square=False): int(size * long / short), a correctly rounded
    // double division of exact integers, as in Python.
    int64_t new_long = (int64_t)((double)((int64_t)size * lg) / (double)sh);
    int32_t out_w = c->w <= c->h ? size : (int32_t)new_long;
    int32_t out_h = c->w <= c->h ? (int32_t)new_long : size;
    // new_long >= size, so the crop lies inside; offsets as transformers' center_crop: (dim - size) // 2
    return vlm__resample_region(c, out_w, out_h, (out_w - size) / 2, (out_h - size) / 2, size, size,
                                VLM_RESAMPLE_BICUBIC, dst, (size_t)size * 3);
}

static void copy_tile(const uint8_t *src, int32_t src_w, int32_t x0, int32_t y0, int32_t size, uint8_t *dst) {
    for (int32_t y = 0; y < size; y++) {
        memcpy(dst + (size_t)y * size * 3, src + ((size_t)(y0 + y) * src_w + x0) * 3, (size_t)size * 3);
    }
}

static int preprocess_anyres(const struct vlm_preprocess_config *cfg,
                             const struct vlm__canvas *img,
                             struct vlm__tiles *t,
                             struct vlm_diag *diag) {
    const int32_t S = cfg->size;
    const int32_t W = img->w, H = img->h;
    int32_t bw, bh;
    if (vlm_anyres_select(W, H, (const int32_t(*)[2])cfg->pinpoints, cfg->n_pinpoints, &bw, &bh) < 0) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: no usable grid pinpoint", __func__);
    }
    // get_patch_output_size: fit inside (bw, bh) keeping the aspect ratio, the fitted side rounded up
    double scale_w = (double)bw / (double)W, scale_h = (double)bh / (double)H;
    int32_t nw, nh;
    if (scale_w < scale_h) {
        nw = bw;
        double v = ceil((double)H * scale_w);
        nh = v < (double)bh ? (int32_t)v : bh;
    } else {
        nh = bh;
        double v = ceil((double)W * scale_h);
        nw = v < (double)bw ? (int32_t)v : bw;
    }
    if (nw <= 0 || nh <= 0) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: image %dx%d is too thin for the %dx%d grid", __func__, (int)W,
                            (int)H, (int)bw, (int)bh);
    }
    const int32_t gw = bw / S, gh = bh / S;
    t->grid_w = gw;
    t->grid_h = gh;
    t->n_tiles = 1 + gw * gh;
    const size_t tile_bytes = (size_t)S * S * 3;
    t->rgb = malloc((size_t)t->n_tiles * tile_bytes);
    uint8_t *padded = calloc((size_t)bw * bh * 3, 1); // black: np.pad with zeros
    int rc = 0;
    if (!t->rgb || !padded) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: %d tiles of %d px", __func__, (int)t->n_tiles, (int)S);
        goto out;
    }
    // Overview: the whole image squashed to S x S; the per-tile CLIP resize and crop are no-ops on it.
    if ((rc = vlm__resample_region(img, S, S, 0, 0, S, S, VLM_RESAMPLE_BICUBIC, t->rgb, (size_t)S * 3)) != 0) {
        goto fail;
    }
    // Resized image pasted at the floor of half the slack on each axis.
    int32_t px = (bw - nw) / 2, py = (bh - nh) / 2;
    rc = vlm__resample_region(img, nw, nh, 0, 0, nw, nh, VLM_RESAMPLE_BICUBIC, padded + ((size_t)py * bw + px) * 3,
                              (size_t)bw * 3);
    if (rc) {
        goto fail;
    }
    for (int32_t r = 0; r < gh; r++) {
        for (int32_t c = 0; c < gw; c++) {
            copy_tile(padded, bw, c * S, r * S, S, t->rgb + (size_t)(1 + r * gw + c) * tile_bytes);
        }
    }
    goto out;
fail:
    rc = vlm_diag_set(diag, rc, "%s: resize failed (%s)", __func__, vlm_strerror(rc));
out:
    free(padded);
    return rc;
}

int vlm__preprocess_u8(const struct vlm_preprocess_config *cfg,
                       const struct vlm_image *image,
                       struct vlm__tiles *out,
                       struct vlm_diag *diag) {
    int rc = vlm_preprocess_config_check(cfg, diag);
    if (rc) {
        return rc;
    }
    if (!image || !image->rgb || image->width <= 0 || image->height <= 0 || !out) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: empty image", __func__);
    }
    if (image->width > VLM__PREPROCESS_MAX_SIDE || image->height > VLM__PREPROCESS_MAX_SIDE) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "%s: image %dx%d, at most %d px per side", __func__, (int)image->width,
                            (int)image->height, VLM__PREPROCESS_MAX_SIDE);
    }
    const int32_t S = cfg->size;
    const int32_t W = image->width, H = image->height;
    struct vlm__tiles t = {.size = S, .image_w = W, .image_h = H};
    struct vlm__canvas plain = {.w = W, .h = H, .rgb = image->rgb, .img_w = W, .img_h = H};

    if (cfg->mode == VLM_PREPROCESS_MODE_ANYRES) {
        rc = preprocess_anyres(cfg, &plain, &t, diag);
        if (rc) {
            free(t.rgb);
            return rc;
        }
        *out = t;
        return 0;
    }
    t.n_tiles = 1;
    t.rgb = malloc((size_t)S * S * 3);
    if (!t.rgb) {
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: tile of %d px", __func__, (int)S);
    }
    struct vlm__canvas c = plain;
    if (cfg->mode == VLM_PREPROCESS_MODE_LLAVA15_PAD && W != H) {
        // expand2square: the mean colour int(255 * mean), image centred (floor of half the slack)
        int32_t side = W > H ? W : H;
        c.w = c.h = side;
        c.ox = (side - W) / 2;
        c.oy = (side - H) / 2;
        for (int k = 0; k < 3; k++) {
            double v = (double)cfg->mean[k] * 255.0;
            c.fill[k] = v <= 0.0 ? 0 : v >= 255.0 ? 255 : (uint8_t)v;
        }
    }
    rc = shortest_edge_crop(&c, S, t.rgb);
    if (rc) {
        free(t.rgb);
        return vlm_diag_set(diag, rc, "%s: resize failed (%s)", __func__, vlm_strerror(rc));
    }
    *out = t;
    return 0;
}

void vlm__tiles_free(struct vlm__tiles *t) {
    if (t) {
        free(t->rgb);
        memset(t, 0, sizeof(*t));
    }
}

int vlm_preprocess(const struct vlm_preprocess_config *cfg,
                   const struct vlm_image *image,
                   struct vlm_image_batch *out,
                   struct vlm_diag *diag) {
    if (!out) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: NULL output", __func__);
    }
    struct vlm__tiles t;
    int rc = vlm__preprocess_u8(cfg, image, &t, diag);
    if (rc) {
        return rc;
    }
    const size_t plane = (size_t)t.size * t.size;
    float *px = malloc((size_t)t.n_tiles * 3 * plane * sizeof(float));
    if (!px) {
        vlm__tiles_free(&t);
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: %d tiles", __func__, (int)t.n_tiles);
    }
    // transformers: rescale in float64 then cast to float32; normalize in float32 with float32 mean and std.
    float lut[3][256];
    for (int c = 0; c < 3; c++) {
        for (int v = 0; v < 256; v++) {
            float x = (float)((double)v * (1.0 / 255.0));
            lut[c][v] = (x - cfg->mean[c]) / cfg->std[c];
        }
    }
    for (int32_t i = 0; i < t.n_tiles; i++) {
        const uint8_t *src = t.rgb + (size_t)i * plane * 3;
        float *dst = px + (size_t)i * 3 * plane;
        for (size_t p = 0; p < plane; p++) {
            dst[p] = lut[0][src[3 * p + 0]];
            dst[plane + p] = lut[1][src[3 * p + 1]];
            dst[2 * plane + p] = lut[2][src[3 * p + 2]];
        }
    }
    out->n_tiles = t.n_tiles;
    out->size = t.size;
    out->pixels = px;
    out->grid_w = t.grid_w;
    out->grid_h = t.grid_h;
    out->image_w = t.image_w;
    out->image_h = t.image_h;
    vlm__tiles_free(&t);
    return 0;
}

void vlm_image_batch_free(struct vlm_image_batch *batch) {
    if (batch) {
        free(batch->pixels);
        memset(batch, 0, sizeof(*batch));
    }
}
