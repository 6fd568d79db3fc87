// Pillow-exact resampling of 8-bit RGB (Image.resize with BICUBIC or BILINEAR), written from the algorithm of
// Pillow's libImaging/Resample.c: per output pixel, the filter is centred on (x + 0.5) * in / out, its support
// widened by the downscale factor (antialiasing), sampled at source pixel centres, normalized to sum 1 and
// rounded to 22-bit fixed point. The horizontal pass runs first, over only the source rows the vertical pass
// reads (Pillow >= 13: vertical first when the height shrinks by more than twice as many pixels as the width);
// each pass adds half a unit and clamps to 0..255. Passes whose size does not change are skipped.
// Matching Pillow bit for bit matters because CLIP-based models were trained on Pillow's pixels.
//
// Unlike Pillow we compute only a window of the output and read the source through a virtual padded canvas, so
// "pad to square, resize, center crop" never builds the padded or the full resized image.
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/sdk/preprocess-impl.h"
#include "vlm/preprocess.h"

#define PRECISION_BITS 22 // 32 bits - 8 for the pixel - 2 for the overshoot of negative lobes (Pillow)

struct filter {
    double (*fn)(double x);
    double support;
};

static double bicubic_fn(double x) {
    // Keys' cubic convolution with a = -0.5, evaluated in Pillow's operation order so the doubles agree.
    const double a = -0.5;
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    }
    if (x < 2.0) {
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    }
    return 0.0;
}

static double bilinear_fn(double x) {
    if (x < 0.0) {
        x = -x;
    }
    return x < 1.0 ? 1.0 - x : 0.0;
}

static const struct filter BICUBIC = {bicubic_fn, 2.0};
static const struct filter BILINEAR = {bilinear_fn, 1.0};

// Fixed-point weights for `count` consecutive output positions starting at `first`, of a resize from in_size
// to out_size. For output i: source pixels lo[i] .. lo[i] + n[i] - 1 with weights k[i * ksize ..].
struct coeffs {
    int32_t ksize;
    int32_t *lo;
    int32_t *n;
    int32_t *k;
};

static void coeffs_free(struct coeffs *c) {
    free(c->lo);
    free(c->n);
    free(c->k);
    memset(c, 0, sizeof(*c));
}

static int
coeffs_init(struct coeffs *c, int32_t in_size, int32_t out_size, int32_t first, int32_t count, const struct filter *f) {
    memset(c, 0, sizeof(*c));
    // Pillow takes the box as floats; (float)in_size is exact for the sizes we accept.
    double scale = (double)in_size / (double)out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = f->support * filterscale;
    double ss = 1.0 / filterscale;
    int32_t ksize = (int32_t)ceil(support) * 2 + 1;

    c->ksize = ksize;
    c->lo = malloc((size_t)count * sizeof(*c->lo));
    c->n = malloc((size_t)count * sizeof(*c->n));
    c->k = malloc((size_t)count * (size_t)ksize * sizeof(*c->k));
    double *w = malloc((size_t)ksize * sizeof(*w));
    if (!c->lo || !c->n || !c->k || !w) {
        free(w);
        coeffs_free(c);
        return VLM_ENOMEM;
    }
    for (int32_t i = 0; i < count; i++) {
        int32_t xx = first + i;
        double center = ((double)xx + 0.5) * scale;
        // truncation toward zero, then clamping, as Pillow rounds the window ends
        int32_t xmin = (int32_t)(center - support + 0.5);
        if (xmin < 0) {
            xmin = 0;
        }
        int32_t xmax = (int32_t)(center + support + 0.5);
        if (xmax > in_size) {
            xmax = in_size;
        }
        int32_t n = xmax - xmin;
        if (n > ksize) { // cannot happen (the window is at most 2 * support + 1 wide); keeps writes in bounds
            n = ksize;
        }
        double ww = 0.0;
        for (int32_t x = 0; x < n; x++) {
            w[x] = f->fn(((double)(x + xmin) - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = &c->k[(size_t)i * (size_t)ksize];
        for (int32_t x = 0; x < n; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            double s = v * (double)(1 << PRECISION_BITS);
            k[x] = (int32_t)(v < 0.0 ? s - 0.5 : s + 0.5);
        }
        for (int32_t x = n; x < ksize; x++) {
            k[x] = 0;
        }
        c->lo[i] = xmin;
        c->n[i] = n < 0 ? 0 : n;
    }
    free(w);
    return 0;
}

static inline uint8_t clip8(int32_t v) {
    if (v < 0) {
        return 0;
    }
    v >>= PRECISION_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

// One source row through the horizontal weights: cw output pixels. The accumulators fit in int32 as in Pillow:
// the normalized weights' absolute sum stays below 1.3 for these kernels, so |sum| < 255 * 1.3 * 2^22 < 2^31.
static void hpass_row(const uint8_t *row, const struct coeffs *c, int32_t cw, uint8_t *out) {
    for (int32_t i = 0; i < cw; i++) {
        const int32_t *k = &c->k[(size_t)i * (size_t)c->ksize];
        const uint8_t *p = row + (size_t)c->lo[i] * 3;
        int32_t n = c->n[i];
        int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int32_t x = 0; x < n; x++) {
            s0 += p[3 * x + 0] * k[x];
            s1 += p[3 * x + 1] * k[x];
            s2 += p[3 * x + 2] * k[x];
        }
        out[3 * i + 0] = clip8(s0);
        out[3 * i + 1] = clip8(s1);
        out[3 * i + 2] = clip8(s2);
    }
}

// Source rows of a canvas: the fill colour outside the pasted image, the image row (composed with the fill when
// the canvas is wider) inside it.
struct row_reader {
    const struct vlm__canvas *c;
    uint8_t *fill_row; // w * 3, or NULL when the canvas is the image itself
    uint8_t *scratch;  // w * 3, prefilled with the fill colour, when the image is narrower than the canvas
};

static int row_reader_init(struct row_reader *r, const struct vlm__canvas *c) {
    memset(r, 0, sizeof(*r));
    r->c = c;
    bool padded = c->img_w != c->w || c->img_h != c->h;
    if (!padded) {
        return 0;
    }
    size_t bytes = (size_t)c->w * 3;
    r->fill_row = malloc(bytes);
    r->scratch = c->img_w != c->w ? malloc(bytes) : NULL;
    if (!r->fill_row || (c->img_w != c->w && !r->scratch)) {
        free(r->fill_row);
        free(r->scratch);
        return VLM_ENOMEM;
    }
    for (int32_t x = 0; x < c->w; x++) {
        memcpy(r->fill_row + (size_t)x * 3, c->fill, 3);
    }
    if (r->scratch) {
        memcpy(r->scratch, r->fill_row, bytes);
    }
    return 0;
}

static void row_reader_free(struct row_reader *r) {
    free(r->fill_row);
    free(r->scratch);
}

static bool row_is_fill(const struct row_reader *r, int32_t y) {
    return r->fill_row && (y < r->c->oy || y >= r->c->oy + r->c->img_h);
}

static const uint8_t *row_get(struct row_reader *r, int32_t y) {
    const struct vlm__canvas *c = r->c;
    if (row_is_fill(r, y)) {
        return r->fill_row;
    }
    const uint8_t *src = c->rgb + (size_t)(y - c->oy) * (size_t)c->img_w * 3;
    if (!r->scratch) {
        return src;
    }
    memcpy(r->scratch + (size_t)c->ox * 3, src, (size_t)c->img_w * 3);
    return r->scratch;
}

static bool canvas_ok(const struct vlm__canvas *c) {
    return c && c->rgb && c->w > 0 && c->h > 0 && c->w <= VLM__PREPROCESS_MAX_SIDE &&
           c->h <= VLM__PREPROCESS_MAX_SIDE && c->img_w > 0 && c->img_h > 0 && c->ox >= 0 && c->oy >= 0 &&
           c->ox + c->img_w <= c->w && c->oy + c->img_h <= c->h;
}

// Vertical weights for one output row applied to rows fetched one at a time (each row is consumed before the
// next fetch, so a row reader's single scratch buffer suffices). `col0` selects the first byte used per row.
static void vpass_row(struct row_reader *rr,
                      const uint8_t *rows,
                      size_t rows_stride,
                      int32_t row_base,
                      const struct coeffs *vc,
                      int32_t i,
                      size_t col0,
                      size_t nbytes,
                      int32_t *acc,
                      uint8_t *out) {
    const int32_t *k = &vc->k[(size_t)i * (size_t)vc->ksize];
    for (size_t x = 0; x < nbytes; x++) {
        acc[x] = 1 << (PRECISION_BITS - 1);
    }
    // Row-wise accumulation: integer sums are exact, so the order does not change the result.
    for (int32_t j = 0; j < vc->n[i]; j++) {
        int32_t y = vc->lo[i] + j;
        const uint8_t *r = rows ? rows + (size_t)(y - row_base) * rows_stride : row_get(rr, y);
        r += col0;
        int32_t kj = k[j];
        for (size_t x = 0; x < nbytes; x++) {
            acc[x] += r[x] * kj;
        }
    }
    for (size_t x = 0; x < nbytes; x++) {
        out[x] = clip8(acc[x]);
    }
}

int vlm__resample_region(const struct vlm__canvas *src,
                         int32_t out_w,
                         int32_t out_h,
                         int32_t x0,
                         int32_t y0,
                         int32_t cw,
                         int32_t ch,
                         enum vlm_resample filter,
                         uint8_t *dst,
                         size_t dst_stride) {
    const struct filter *f = filter == VLM_RESAMPLE_BILINEAR  ? &BILINEAR
                             : filter == VLM_RESAMPLE_BICUBIC ? &BICUBIC
                                                              : NULL;
    if (!f || !canvas_ok(src) || !dst || out_w <= 0 || out_h <= 0 || out_w > (1 << 30) || out_h > (1 << 30) ||
        cw <= 0 || ch <= 0 || x0 < 0 || y0 < 0 || x0 > out_w - cw || y0 > out_h - ch || dst_stride < (size_t)cw * 3) {
        return VLM_EINVAL;
    }
    bool need_h = out_w != src->w;
    bool need_v = out_h != src->h;
    // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more than
    // twice as many pixels as the width; the pass order changes the intermediate rounding, so we follow it.
    bool v_first = need_h && need_v && out_h < src->h && (int64_t)src->h - out_h > 2 * ((int64_t)src->w - out_w);
    struct coeffs hc = {0}, vc = {0};
    struct row_reader rr;
    uint8_t *tmp = NULL, *fill_out = NULL;
    int32_t *acc = NULL;
    const size_t row_bytes = (size_t)cw * 3;
    int rc = row_reader_init(&rr, src);
    if (rc) {
        return rc;
    }
    if (need_h && (rc = coeffs_init(&hc, src->w, out_w, x0, cw, f)) != 0) {
        goto out;
    }
    if (need_v && (rc = coeffs_init(&vc, src->h, out_h, y0, ch, f)) != 0) {
        goto out;
    }

    if (v_first) {
        // Vertical pass over the source columns the horizontal pass reads, then the horizontal pass.
        int32_t col_first = hc.lo[0], col_last = hc.lo[cw - 1] + hc.n[cw - 1];
        size_t span = (size_t)(col_last - col_first) * 3;
        tmp = malloc((size_t)ch * span);
        acc = malloc(span * sizeof(*acc));
        if (!tmp || !acc) {
            rc = VLM_ENOMEM;
            goto out;
        }
        for (int32_t i = 0; i < ch; i++) {
            vpass_row(&rr, NULL, 0, 0, &vc, i, (size_t)col_first * 3, span, acc, tmp + (size_t)i * span);
        }
        for (int32_t i = 0; i < cw; i++) {
            hc.lo[i] -= col_first;
        }
        for (int32_t i = 0; i < ch; i++) {
            hpass_row(tmp + (size_t)i * span, &hc, cw, dst + (size_t)i * dst_stride);
        }
        goto out;
    }

    // Horizontal pass first, over the source rows the vertical pass reads (the region's rows when there is no
    // vertical pass).
    int32_t row_first = need_v ? vc.lo[0] : y0;
    int32_t row_last = need_v ? vc.lo[ch - 1] + vc.n[ch - 1] : y0 + ch;
    if (need_v) {
        tmp = malloc((size_t)(row_last - row_first) * row_bytes);
        acc = malloc(row_bytes * sizeof(*acc));
        if (!tmp || !acc) {
            rc = VLM_ENOMEM;
            goto out;
        }
    }
    for (int32_t y = row_first; y < row_last; y++) {
        uint8_t *o = need_v ? tmp + (size_t)(y - row_first) * row_bytes : dst + (size_t)(y - y0) * dst_stride;
        bool fill = row_is_fill(&rr, y);
        if (fill && fill_out) { // every fill row gives the same output: compute it once
            memcpy(o, fill_out, row_bytes);
            continue;
        }
        const uint8_t *row = row_get(&rr, y);
        if (need_h) {
            hpass_row(row, &hc, cw, o);
        } else {
            memcpy(o, row + (size_t)x0 * 3, row_bytes);
        }
        if (fill) {
            fill_out = malloc(row_bytes);
            if (!fill_out) {
                rc = VLM_ENOMEM;
                goto out;
            }
            memcpy(fill_out, o, row_bytes);
        }
    }
    if (need_v) {
        for (int32_t i = 0; i < ch; i++) {
            vpass_row(&rr, tmp, row_bytes, row_first, &vc, i, 0, row_bytes, acc, dst + (size_t)i * dst_stride);
        }
    }
out:
    free(fill_out);
    free(acc);
    free(tmp);
    coeffs_free(&hc);
    coeffs_free(&vc);
    row_reader_free(&rr);
    return rc;
}

int vlm_image_resize(
    const struct vlm_image *src, int32_t w, int32_t h, enum vlm_resample filter, struct vlm_image *dst) {
    if (!src || !src->rgb || src->width <= 0 || src->height <= 0 || w <= 0 || h <= 0 || !dst) {
        return VLM_EINVAL;
    }
    if (src->width > VLM__PREPROCESS_MAX_SIDE || src->height > VLM__PREPROCESS_MAX_SIDE ||
        (int64_t)w * h > ((int64_t)1 << 28)) {
        return VLM_ETOOLARGE;
    }
    uint8_t *rgb = malloc((size_t)w * (size_t)h * 3);
    if (!rgb) {
        return VLM_ENOMEM;
    }
    struct vlm__canvas c = {
        .w = src->width, .h = src->height, .rgb = src->rgb, .img_w = src->width, .img_h = src->height};
    int rc = vlm__resample_region(&c, w, h, 0, 0, w, h, filter, rgb, (size_t)w * 3);
    if (rc) {
        free(rgb);
        return rc;
    }
    dst->width = w;
    dst->height = h;
    dst->rgb = rgb;
    return 0;
}

int vlm_image_resize_bicubic(const struct vlm_image *src, int32_t w, int32_t h, struct vlm_image *dst) {
    return vlm_image_resize(src, w, h, VLM_RESAMPLE_BICUBIC, dst);
}
