// Image input: format sniffing, size limits, and the JPEG / PNG / WebP decoders into RGB8 (include/vlm/image.h).
//
// The input is untrusted. The format comes from magic bytes only; each decoder reads the dimensions from the header
// and checks them against the limits before the pixel buffer exists. libjpeg and libpng report errors by longjmp:
// everything a longjmp must find intact lives in a heap context, never in automatic variables changed after setjmp.
// Conversions follow Pillow's Image.open(...).convert("RGB") after ImageOps.exif_transpose, which is what
// transformers' load_image does, so the pixels the processors see are the pixels the reference saw.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h> // before jpeglib.h, which uses FILE
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include "vlm/image.h"
#include "vlm/log.h"

#define DEFAULT_MAX_BYTES  ((size_t)64 << 20)
#define DEFAULT_MAX_SIDE   16384
#define DEFAULT_MAX_PIXELS ((int64_t)8192 * 8192) // 64 MiP: a full 8192x8192 square fits

// libjpeg-turbo's own fuzzer stops lossy progressive files at 100 scans ("Two Issues with the JPEG Standard").
#define JPEG_MAX_SCANS 100
// libpng's defaults are 1000 cached text/unknown chunks and 8,000,000 bytes per ancillary chunk; we keep both
// explicit so a libpng built with other defaults still bounds us.
#define PNG_CHUNK_CACHE_MAX  1000
#define PNG_CHUNK_MALLOC_MAX ((png_alloc_size_t)8 << 20)

struct fail {
    int code;
    char msg[200];
};

__attribute__((format(printf, 3, 4))) static int failf(struct fail *f, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->code = code;
    return code;
}

struct vlm_image_limits vlm_image_default_limits(void) {
    struct vlm_image_limits l = {DEFAULT_MAX_BYTES, DEFAULT_MAX_SIDE, DEFAULT_MAX_PIXELS};
    return l;
}

// A zero (or negative) field means "the default" so callers can override one limit in a zeroed struct.
static struct vlm_image_limits resolve_limits(const struct vlm_image_limits *l) {
    struct vlm_image_limits d = vlm_image_default_limits();
    if (!l) {
        return d;
    }
    struct vlm_image_limits r = *l;
    if (r.max_bytes == 0) {
        r.max_bytes = d.max_bytes;
    }
    if (r.max_side <= 0) {
        r.max_side = d.max_side;
    }
    if (r.max_pixels <= 0) {
        r.max_pixels = d.max_pixels;
    }
    return r;
}

// The one place dimensions from a header are judged; called before any pixel memory is allocated.
static int check_dims(struct fail *f, const char *fmt_name, uint64_t w, uint64_t h,
                      const struct vlm_image_limits *lim) {
    if (w == 0 || h == 0) {
        return failf(f, VLM_EBADIMAGE, "%s header gives a zero-size image (%llux%llu)", fmt_name,
                     (unsigned long long)w, (unsigned long long)h);
    }
    if (w > (uint64_t)lim->max_side || h > (uint64_t)lim->max_side) {
        return failf(f, VLM_ETOOLARGE, "image %llux%llu exceeds the %d-pixel side limit", (unsigned long long)w,
                     (unsigned long long)h, (int)lim->max_side);
    }
    // Both sides are <= max_side (an int32), so the product fits in 64 bits.
    uint64_t n = w * h;
    if (n > (uint64_t)lim->max_pixels) {
        return failf(f, VLM_ETOOLARGE, "image %llux%llu has %llu pixels, over the %lld-pixel limit",
                     (unsigned long long)w, (unsigned long long)h, (unsigned long long)n,
                     (long long)lim->max_pixels);
    }
    if (n > SIZE_MAX / 4) {
        return failf(f, VLM_ETOOLARGE, "image %llux%llu does not fit in memory on this platform",
                     (unsigned long long)w, (unsigned long long)h);
    }
    return 0;
}

// ---- format sniffing -------------------------------------------------------------------------------------------

enum vlm_image_format vlm_image_sniff(const void *data, size_t size) {
    const uint8_t *p = data;
    if (!p) {
        return VLM_IMAGE_FORMAT_UNKNOWN;
    }
    if (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) {
        return VLM_IMAGE_FORMAT_JPEG;
    }
    if (size >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) {
        return VLM_IMAGE_FORMAT_PNG;
    }
    if (size >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0) {
        return VLM_IMAGE_FORMAT_WEBP;
    }
    return VLM_IMAGE_FORMAT_UNKNOWN;
}

// Names what a refused file probably is, so the message helps ("GIF" rather than "unknown").
static const char *guess_other_format(const uint8_t *p, size_t n) {
    if (n >= 6 && (memcmp(p, "GIF87a", 6) == 0 || memcmp(p, "GIF89a", 6) == 0)) {
        return "GIF";
    }
    if (n >= 2 && p[0] == 'B' && p[1] == 'M') {
        return "BMP";
    }
    if (n >= 4 && (memcmp(p, "II*\0", 4) == 0 || memcmp(p, "MM\0*", 4) == 0)) {
        return "TIFF";
    }
    if ((n >= 12 && memcmp(p, "\0\0\0\x0cjP  \r\n\x87\n", 12) == 0) ||
        (n >= 4 && memcmp(p, "\xff\x4f\xff\x51", 4) == 0)) {
        return "JPEG 2000";
    }
    if (n >= 12 && memcmp(p + 4, "ftyp", 4) == 0) {
        return "HEIF/AVIF";
    }
    size_t i = 0;
    if (n >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) {
        i = 3;
    }
    while (i < n && i < 64 && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) {
        i++;
    }
    if (i < n && p[i] == '<') {
        return "SVG/XML";
    }
    if (n >= 2 && p[0] == 0xFF && p[1] == 0xD8) {
        return "damaged JPEG";
    }
    return "unknown";
}

// ---- orientation (EXIF / XMP) ----------------------------------------------------------------------------------

static uint32_t rd16(const uint8_t *p, bool le) {
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | (uint32_t)p[1];
}

static uint32_t rd32(const uint8_t *p, bool le) {
    return le ? rd16(p, true) | rd16(p + 2, true) << 16 : rd16(p, false) << 16 | rd16(p + 2, false);
}

// The Orientation tag (0x0112) of IFD0 in an EXIF blob (a TIFF header, optionally after "Exif\0\0"), 1..8, or 0
// when absent or unreadable. Every offset is checked against `n`. Like Pillow, the last entry for the tag wins and
// a count other than 1 does not count.
static int exif_orientation(const uint8_t *p, size_t n) {
    if (n >= 6 && memcmp(p, "Exif\0\0", 6) == 0) {
        p += 6;
        n -= 6;
    }
    if (n < 8) {
        return 0;
    }
    bool le;
    if (memcmp(p, "II*\0", 4) == 0) {
        le = true;
    } else if (memcmp(p, "MM\0*", 4) == 0) {
        le = false;
    } else {
        return 0;
    }
    uint32_t ifd = rd32(p + 4, le);
    if (ifd > n || n - ifd < 2) {
        return 0;
    }
    uint32_t count = rd16(p + ifd, le);
    int orientation = 0;
    for (uint32_t i = 0; i < count; i++) {
        size_t off = (size_t)ifd + 2 + (size_t)i * 12;
        if (off > n || n - off < 12) {
            break;
        }
        if (rd16(p + off, le) != 0x0112 || rd32(p + off + 4, le) != 1) {
            continue;
        }
        uint32_t v;
        switch (rd16(p + off + 2, le)) {
        case 1: // BYTE
            v = p[off + 8];
            break;
        case 3: // SHORT
        case 8: // SSHORT
            v = rd16(p + off + 8, le);
            break;
        case 4: // LONG
        case 9: // SLONG
            v = rd32(p + off + 8, le);
            break;
        default:
            continue;
        }
        orientation = v >= 1 && v <= 8 ? (int)v : 0;
    }
    return orientation;
}

// Pillow's fallback when EXIF has no orientation: the first match of tiff:Orientation(="|>)([0-9]) in the XMP.
static int xmp_orientation(const uint8_t *p, size_t n) {
    static const char key[] = "tiff:Orientation";
    const size_t klen = sizeof key - 1;
    for (size_t i = 0; n >= klen + 2 && i <= n - klen - 2; i++) {
        if (p[i] != 't' || memcmp(p + i, key, klen) != 0) {
            continue;
        }
        const uint8_t *q = p + i + klen;
        size_t left = n - i - klen;
        if (q[0] == '>' && q[1] >= '0' && q[1] <= '9') {
            return q[1] - '0';
        }
        if (left >= 3 && q[0] == '=' && q[1] == '"' && q[2] >= '0' && q[2] <= '9') {
            return q[2] - '0';
        }
    }
    return 0;
}

// Applies an orientation as PIL.ImageOps.exif_transpose does (Pillow's transpose methods for 2..8). Replaces
// img->rgb; on failure the image is left as it was.
static int apply_orientation(struct fail *f, struct vlm_image *img, int orientation) {
    if (orientation < 2 || orientation > 8) {
        return 0;
    }
    const size_t w = (size_t)img->width, h = (size_t)img->height;
    uint8_t *dst = malloc(w * h * 3);
    if (!dst) {
        return failf(f, VLM_ENOMEM, "out of memory rotating a %zux%zu image", w, h);
    }
    const bool swap = orientation >= 5;
    const size_t ow = swap ? h : w, oh = swap ? w : h;
    for (size_t y = 0; y < oh; y++) {
        uint8_t *o = dst + y * ow * 3;
        for (size_t x = 0; x < ow; x++, o += 3) {
            size_t sx, sy;
            switch (orientation) {
            case 2: // FLIP_LEFT_RIGHT
                sx = w - 1 - x, sy = y;
                break;
            case 3: // ROTATE_180
                sx = w - 1 - x, sy = h - 1 - y;
                break;
            case 4: // FLIP_TOP_BOTTOM
                sx = x, sy = h - 1 - y;
                break;
            case 5: // TRANSPOSE
                sx = y, sy = x;
                break;
            case 6: // ROTATE_270 (90 degrees clockwise)
                sx = y, sy = h - 1 - x;
                break;
            case 7: // TRANSVERSE
                sx = w - 1 - y, sy = h - 1 - x;
                break;
            default: // 8: ROTATE_90 (counter-clockwise)
                sx = w - 1 - y, sy = x;
                break;
            }
            const uint8_t *s = img->rgb + (sy * w + sx) * 3;
            o[0] = s[0];
            o[1] = s[1];
            o[2] = s[2];
        }
    }
    free(img->rgb);
    img->rgb = dst;
    img->width = (int32_t)ow;
    img->height = (int32_t)oh;
    return 0;
}

// ---- JPEG (libjpeg-turbo) --------------------------------------------------------------------------------------

struct jpeg_ctx {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    struct fail fail;
    const struct vlm_image_limits *lim;
    uint8_t *rgb;
    uint8_t *row; // one CMYK row
};

static void jpeg_on_error(j_common_ptr c) {
    struct jpeg_ctx *ctx = c->client_data;
    char buf[JMSG_LENGTH_MAX];
    (*c->err->format_message)(c, buf); // libjpeg's texts name the problem and carry no pointers
    int code;
    switch (c->err->msg_code) {
    case JERR_IMAGE_TOO_BIG:
    case JERR_WIDTH_OVERFLOW:
    case JERR_NO_BACKING_STORE: // a virtual array would exceed max_memory_to_use
    case JERR_OUT_OF_MEMORY:
        code = VLM_ETOOLARGE;
        break;
    case JERR_BAD_PRECISION: // 12-bit JPEG
    case JERR_CONVERSION_NOTIMPL:
    case JERR_ARITH_NOTIMPL:
    case JERR_NOT_COMPILED:
        code = VLM_EUNSUPPORTED;
        break;
    default:
        code = VLM_EBADIMAGE;
        break;
    }
    if (ctx->fail.code != 0) {
        longjmp(ctx->jmp, 1);
    }
    if (c->err->msg_code == JERR_IMAGE_TOO_BIG) {
        // Over JPEG_MAX_DIMENSION (65500): the SOF was parsed, so say it in the same words as our own limit.
        j_decompress_ptr d = (j_decompress_ptr)c;
        failf(&ctx->fail, code, "image %ux%u exceeds the %d-pixel side limit", (unsigned)d->image_width,
              (unsigned)d->image_height, (int)ctx->lim->max_side);
    } else {
        failf(&ctx->fail, code, "%s JPEG: %s",
              code == VLM_EBADIMAGE    ? "corrupt"
              : code == VLM_ETOOLARGE ? "too large"
                                      : "unsupported",
              buf);
    }
    longjmp(ctx->jmp, 1);
}

// Warnings: the memory source warns and pads with a fake EOI when the data runs out; Pillow calls that "image
// file is truncated" and so do we. Other warnings (extraneous bytes, corrupt entropy data) are accepted, as
// Pillow accepts them.
static void jpeg_on_message(j_common_ptr c, int level) {
    struct jpeg_ctx *ctx = c->client_data;
    if (level >= 0) {
        return; // trace messages
    }
    if (c->err->msg_code == JWRN_JPEG_EOF) {
        failf(&ctx->fail, VLM_EBADIMAGE, "truncated JPEG data");
        longjmp(ctx->jmp, 1);
    }
    c->err->num_warnings++;
}

static void jpeg_on_output(j_common_ptr c) {
    (void)c; // never print: messages reach the caller through the diag only
}

static void jpeg_on_progress(j_common_ptr c) {
    struct jpeg_ctx *ctx = c->client_data;
    j_decompress_ptr d = (j_decompress_ptr)c;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        failf(&ctx->fail, VLM_ETOOLARGE, "JPEG has more than %d scans", JPEG_MAX_SCANS);
        longjmp(ctx->jmp, 1);
    }
}

// Pillow's cmyk2rgb (Convert.c) on Adobe-inverted CMYK: Pillow reads every 4-component JPEG as "CMYK;I", so the
// stored sample s is 255 - C, and R = nk - nk * C / 255 (rounded as MULDIV255) with nk = 255 - K = s_k.
static inline uint8_t muldiv255(uint32_t a, uint32_t b) {
    uint32_t t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static void cmyk_row_to_rgb(const uint8_t *in, uint8_t *out, size_t w) {
    for (size_t x = 0; x < w; x++, in += 4, out += 3) {
        const uint32_t nk = in[3];
        for (int c = 0; c < 3; c++) {
            const uint32_t cc = 255u - in[c];
            const int v = (int)nk - muldiv255(cc, nk);
            out[c] = (uint8_t)(v < 0 ? 0 : v);
        }
    }
}

static int jpeg_orientation(j_decompress_ptr cinfo) {
    static const char xmp_id[] = "http://ns.adobe.com/xap/1.0/";
    int xmp = 0;
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next) {
        if (m->marker != JPEG_APP0 + 1) {
            continue;
        }
        if (m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            // Pillow keeps the first EXIF segment's header (later ones are appended); IFD0 is in the first.
            int o = exif_orientation(m->data, m->data_length);
            if (o) {
                return o;
            }
            break;
        }
    }
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= sizeof xmp_id &&
            memcmp(m->data, xmp_id, sizeof xmp_id) == 0) {
            xmp = xmp_orientation(m->data + sizeof xmp_id, m->data_length - sizeof xmp_id); // Pillow: the last one
        }
    }
    return xmp;
}

static int decode_jpeg(const uint8_t *data, size_t size, const struct vlm_image_limits *lim, struct vlm_image *out,
                       struct fail *f) {
    struct jpeg_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        return failf(f, VLM_ENOMEM, "out of memory");
    }
    if (setjmp(ctx->jmp)) {
        jpeg_destroy_decompress(&ctx->cinfo);
        free(ctx->rgb);
        free(ctx->row);
        *f = ctx->fail;
        if (f->code == 0) {
            failf(f, VLM_EINTERNAL, "JPEG decoder failed without a message");
        }
        free(ctx);
        return f->code;
    }
    ctx->cinfo.err = jpeg_std_error(&ctx->jerr);
    ctx->jerr.error_exit = jpeg_on_error;
    ctx->jerr.emit_message = jpeg_on_message;
    ctx->jerr.output_message = jpeg_on_output;
    ctx->cinfo.client_data = ctx;
    ctx->lim = lim;
    jpeg_create_decompress(&ctx->cinfo);
    ctx->progress.progress_monitor = jpeg_on_progress;
    ctx->cinfo.progress = &ctx->progress;
    // Progressive and multi-scan files keep every coefficient in "virtual arrays" (2 bytes per sample, up to 4
    // full-size components); bound them by the pixel limit rather than by the file's say-so.
    const uint64_t px = (uint64_t)lim->max_pixels;
    const uint64_t mem = px > ((uint64_t)LONG_MAX >> 4) ? (uint64_t)LONG_MAX : px * 8 + ((uint64_t)16 << 20);
    ctx->cinfo.mem->max_memory_to_use = (long)mem;
    jpeg_save_markers(&ctx->cinfo, JPEG_APP0 + 1, 0xFFFF);
    if (size > ULONG_MAX) {
        failf(&ctx->fail, VLM_ETOOLARGE, "JPEG data too large");
        longjmp(ctx->jmp, 1);
    }
    jpeg_mem_src(&ctx->cinfo, data, (unsigned long)size);
    if (jpeg_read_header(&ctx->cinfo, TRUE) != JPEG_HEADER_OK) {
        failf(&ctx->fail, VLM_EBADIMAGE, "JPEG holds tables only, no image");
        longjmp(ctx->jmp, 1);
    }
    j_decompress_ptr cinfo = &ctx->cinfo;
    if (check_dims(&ctx->fail, "JPEG", cinfo->image_width, cinfo->image_height, lim) != 0) {
        longjmp(ctx->jmp, 1);
    }
    const int orientation = jpeg_orientation(cinfo);
    const bool cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
    cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB; // libjpeg-turbo replicates grey into RGB itself
    cinfo->scale_num = cinfo->scale_denom = 1;
    jpeg_start_decompress(cinfo);
    const size_t w = cinfo->output_width, h = cinfo->output_height;
    if (w != cinfo->image_width || h != cinfo->image_height || cinfo->output_components != (cmyk ? 4 : 3)) {
        failf(&ctx->fail, VLM_EINTERNAL, "JPEG decoder output %zux%zux%d differs from the header", w, h,
              cinfo->output_components);
        longjmp(ctx->jmp, 1);
    }
    ctx->rgb = malloc(w * h * 3);
    ctx->row = cmyk ? malloc(w * 4) : NULL;
    if (!ctx->rgb || (cmyk && !ctx->row)) {
        failf(&ctx->fail, VLM_ENOMEM, "out of memory for a %zux%zu image", w, h);
        longjmp(ctx->jmp, 1);
    }
    while (cinfo->output_scanline < h) {
        uint8_t *dst = ctx->rgb + (size_t)cinfo->output_scanline * w * 3;
        JSAMPROW row = cmyk ? ctx->row : dst;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1) {
            failf(&ctx->fail, VLM_EBADIMAGE, "truncated JPEG data");
            longjmp(ctx->jmp, 1);
        }
        if (cmyk) {
            cmyk_row_to_rgb(ctx->row, dst, w);
        }
    }
    jpeg_finish_decompress(cinfo);
    jpeg_destroy_decompress(cinfo);
    struct vlm_image img = {(int32_t)w, (int32_t)h, ctx->rgb};
    free(ctx->row);
    free(ctx);
    if (apply_orientation(f, &img, orientation) != 0) {
        free(img.rgb);
        return f->code;
    }
    *out = img;
    return 0;
}

// ---- PNG (libpng) ----------------------------------------------------------------------------------------------

struct png_ctx {
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t size;
    size_t pos;
    struct fail fail;
    uint8_t *rgb;
    png_bytep *rows;
};

static void png_on_error(png_structp png, png_const_charp msg) {
    struct png_ctx *ctx = png_get_error_ptr(png);
    if (ctx->fail.code == 0) {
        failf(&ctx->fail, VLM_EBADIMAGE, "corrupt PNG: %s", msg);
    }
    png_longjmp(png, 1); // returning would let libpng print and abort
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    vlm_log(VLM_LOG_DEBUG, "png: %s", msg);
}

static void png_on_read(png_structp png, png_bytep dst, size_t n) {
    struct png_ctx *ctx = png_get_io_ptr(png);
    if (n > ctx->size - ctx->pos) {
        failf(&ctx->fail, VLM_EBADIMAGE, "truncated PNG data");
        png_error(png, "truncated");
    }
    memcpy(dst, ctx->data + ctx->pos, n);
    ctx->pos += n;
}

// Ancillary chunks we never use. Handled as unknown-and-discarded, so compressed text and ICC profiles are not
// even inflated (Pillow inflates them, within its own limits; they do not change the pixels).
static const png_byte png_ignored_chunks[] = "tEXt\0zTXt\0iTXt\0iCCP\0sPLT\0hIST\0pCAL\0sCAL\0tIME\0";

static int decode_png(const uint8_t *data, size_t size, const struct vlm_image_limits *lim, struct vlm_image *out,
                      struct fail *f) {
    // IHDR must come first (PNG spec, and libpng insists): read the size ourselves so the limit message is ours
    // and nothing of libpng runs for an oversized image.
    if (size < 33) {
        return failf(f, VLM_EBADIMAGE, "truncated PNG data (%zu bytes)", size);
    }
    if (memcmp(data + 12, "IHDR", 4) != 0 || rd32(data + 8, false) != 13) {
        return failf(f, VLM_EBADIMAGE, "corrupt PNG: first chunk is not a 13-byte IHDR");
    }
    if (check_dims(f, "PNG", rd32(data + 16, false), rd32(data + 20, false), lim) != 0) {
        return f->code;
    }

    struct png_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        return failf(f, VLM_ENOMEM, "out of memory");
    }
    ctx->data = data;
    ctx->size = size;
    ctx->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, ctx, png_on_error, png_on_warning);
    ctx->info = ctx->png ? png_create_info_struct(ctx->png) : NULL;
    if (!ctx->info) {
        png_destroy_read_struct(ctx->png ? &ctx->png : NULL, NULL, NULL);
        free(ctx);
        return failf(f, VLM_ENOMEM, "out of memory");
    }
    if (setjmp(png_jmpbuf(ctx->png))) {
        png_destroy_read_struct(&ctx->png, &ctx->info, NULL);
        free(ctx->rows);
        free(ctx->rgb);
        *f = ctx->fail;
        if (f->code == 0) {
            failf(f, VLM_EINTERNAL, "PNG decoder failed without a message");
        }
        free(ctx);
        return f->code;
    }
    png_structp png = ctx->png;
    png_infop info = ctx->info;
    png_set_read_fn(png, ctx, png_on_read);
    png_set_user_limits(png, (png_uint_32)lim->max_side, (png_uint_32)lim->max_side);
    png_set_chunk_cache_max(png, PNG_CHUNK_CACHE_MAX);
    png_set_chunk_malloc_max(png, PNG_CHUNK_MALLOC_MAX);
    // Pillow refuses a file with any bad chunk CRC, ancillary ones included; libpng would only warn for those.
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, png_ignored_chunks,
                                (int)(sizeof png_ignored_chunks / 5));
    png_read_info(png, info);

    png_uint_32 w32, h32;
    int bit_depth, color_type, interlace;
    png_get_IHDR(png, info, &w32, &h32, &bit_depth, &color_type, &interlace, NULL, NULL);
    if (check_dims(&ctx->fail, "PNG", w32, h32, lim) != 0) {
        png_longjmp(png, 1);
    }
    int orientation = 0;
    png_bytep exif = NULL;
    png_uint_32 exif_len = 0;
    if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) {
        orientation = exif_orientation(exif, exif_len);
    }

    // Pillow opens 16-bit grey as "I;16" and its I;16 -> RGB conversion saturates: v > 255 becomes 255, v <= 255
    // stays v. Every other 16-bit mode ("RGB;16B", "RGBA;16B", "LA;16B") keeps the high byte: png_set_strip_16.
    const bool grey16 = bit_depth == 16 && color_type == PNG_COLOR_TYPE_GRAY;
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png); // tRNS is left alone (no png_set_tRNS_to_alpha): convert("RGB") ignores it
    }
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) {
        png_set_expand_gray_1_2_4_to_8(png); // x255, x85, x17: Pillow's "1", "L;2", "L;4"
    }
    if (bit_depth == 16 && !grey16) {
        png_set_strip_16(png);
    }
    // convert("RGB") drops alpha without compositing. Always asked for: libpng turns a palette's tRNS into an alpha
    // channel on expansion, and strip_alpha is a no-op where there is none.
    png_set_strip_alpha(png);
    if (!grey16 && (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)) {
        png_set_gray_to_rgb(png);
    }
    (void)png_set_interlace_handling(png);
    png_read_update_info(png, info);

    const size_t w = w32, h = h32;
    const size_t stride = grey16 ? w * 2 : w * 3;
    if (png_get_rowbytes(png, info) != stride) {
        failf(&ctx->fail, VLM_EINTERNAL, "PNG row is %zu bytes after transforms, expected %zu",
              (size_t)png_get_rowbytes(png, info), stride);
        png_longjmp(png, 1);
    }
    ctx->rgb = malloc(w * h * 3);
    ctx->rows = malloc(h * sizeof *ctx->rows);
    if (!ctx->rgb || !ctx->rows) {
        failf(&ctx->fail, VLM_ENOMEM, "out of memory for a %zux%zu image", w, h);
        png_longjmp(png, 1);
    }
    for (size_t y = 0; y < h; y++) {
        ctx->rows[y] = ctx->rgb + y * stride;
    }
    png_read_image(png, ctx->rows);
    // No png_read_end: the pixels are complete here. A missing IEND (or damage after the last IDAT) is accepted,
    // as Pillow accepts it.
    if (grey16) {
        // In place, back to front: pixel i moves from 2i to 3i, never over a sample still to be read.
        uint8_t *p = ctx->rgb;
        for (size_t i = w * h; i-- > 0;) {
            const uint8_t v = p[2 * i] ? 255 : p[2 * i + 1]; // big-endian sample
            p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = v;
        }
    }
    struct vlm_image img = {(int32_t)w, (int32_t)h, ctx->rgb};
    png_destroy_read_struct(&ctx->png, &ctx->info, NULL);
    free(ctx->rows);
    free(ctx);
    if (apply_orientation(f, &img, orientation) != 0) {
        free(img.rgb);
        return f->code;
    }
    *out = img;
    return 0;
}

// ---- WebP (libwebp) --------------------------------------------------------------------------------------------

static int webp_fail(struct fail *f, VP8StatusCode st) {
    switch (st) {
    case VP8_STATUS_NOT_ENOUGH_DATA:
        return failf(f, VLM_EBADIMAGE, "truncated WebP data");
    case VP8_STATUS_UNSUPPORTED_FEATURE:
        return failf(f, VLM_EUNSUPPORTED, "WebP uses an unsupported feature");
    case VP8_STATUS_OUT_OF_MEMORY:
        return failf(f, VLM_ENOMEM, "out of memory decoding WebP");
    case VP8_STATUS_INVALID_PARAM:
        return failf(f, VLM_EINTERNAL, "WebP decoder refused its parameters");
    default:
        return failf(f, VLM_EBADIMAGE, "corrupt WebP data (libwebp status %d)", (int)st);
    }
}

static int webp_orientation(const uint8_t *data, size_t size) {
    WebPData wd = {data, size};
    WebPDemuxer *dmx = WebPDemux(&wd);
    if (!dmx) {
        return 0;
    }
    int o = 0;
    WebPChunkIterator it;
    if (WebPDemuxGetChunk(dmx, "EXIF", 1, &it)) {
        o = exif_orientation(it.chunk.bytes, it.chunk.size);
        WebPDemuxReleaseChunkIterator(&it);
    }
    if (!o && WebPDemuxGetChunk(dmx, "XMP ", 1, &it)) {
        o = xmp_orientation(it.chunk.bytes, it.chunk.size);
        WebPDemuxReleaseChunkIterator(&it);
    }
    WebPDemuxDelete(dmx);
    return o;
}

static int decode_webp(const uint8_t *data, size_t size, const struct vlm_image_limits *lim, struct vlm_image *out,
                       struct fail *f) {
    WebPBitstreamFeatures feat;
    VP8StatusCode st = WebPGetFeatures(data, size, &feat);
    if (st != VP8_STATUS_OK) {
        return webp_fail(f, st);
    }
    if (feat.has_animation) {
        return failf(f, VLM_EUNSUPPORTED, "animated WebP is not supported (send a still image)");
    }
    if (check_dims(f, "WebP", feat.width > 0 ? (uint64_t)feat.width : 0, feat.height > 0 ? (uint64_t)feat.height : 0,
                   lim) != 0) {
        return f->code;
    }
    const size_t w = (size_t)feat.width, h = (size_t)feat.height;
    uint8_t *rgb = malloc(w * h * 3);
    if (!rgb) {
        return failf(f, VLM_ENOMEM, "out of memory for a %zux%zu image", w, h);
    }
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg)) {
        free(rgb);
        return failf(f, VLM_EINTERNAL, "libwebp version mismatch");
    }
    cfg.output.colorspace = MODE_RGB; // alpha dropped, not composited (Pillow's convert("RGB"))
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = rgb;
    cfg.output.u.RGBA.stride = (int)(w * 3);
    cfg.output.u.RGBA.size = w * h * 3;
    st = WebPDecode(data, size, &cfg);
    WebPFreeDecBuffer(&cfg.output);
    if (st != VP8_STATUS_OK) {
        free(rgb);
        return webp_fail(f, st);
    }
    if (cfg.output.width != (int)w || cfg.output.height != (int)h) {
        free(rgb);
        return failf(f, VLM_EINTERNAL, "WebP decoder output %dx%d differs from the header %zux%zu",
                     cfg.output.width, cfg.output.height, w, h);
    }
    struct vlm_image img = {(int32_t)w, (int32_t)h, rgb};
    if (apply_orientation(f, &img, webp_orientation(data, size)) != 0) {
        free(img.rgb);
        return f->code;
    }
    *out = img;
    return 0;
}

// ---- public entry points ---------------------------------------------------------------------------------------

int vlm_image_decode(const void *data, size_t size, const struct vlm_image_limits *limits, struct vlm_image *out,
                     struct vlm_diag *diag) {
    if (!out || (!data && size)) {
        return vlm_diag_set(diag, VLM_EINVAL, "vlm_image_decode: NULL argument");
    }
    const struct vlm_image_limits lim = resolve_limits(limits);
    if (size == 0) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "empty image data");
    }
    if (size > lim.max_bytes) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "image data is %zu bytes, over the %zu-byte limit", size,
                            lim.max_bytes);
    }
    struct fail f = {0, ""};
    int rc;
    switch (vlm_image_sniff(data, size)) {
    case VLM_IMAGE_FORMAT_JPEG:
        rc = decode_jpeg(data, size, &lim, out, &f);
        break;
    case VLM_IMAGE_FORMAT_PNG:
        rc = decode_png(data, size, &lim, out, &f);
        break;
    case VLM_IMAGE_FORMAT_WEBP:
        rc = decode_webp(data, size, &lim, out, &f);
        break;
    default:
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "unsupported image format (%s); JPEG, PNG and WebP are accepted",
                            guess_other_format(data, size));
    }
    if (rc != 0) {
        return vlm_diag_set(diag, rc, "%s", f.msg);
    }
    return 0;
}

int vlm_image_load(const char *path, const struct vlm_image_limits *limits, struct vlm_image *out,
                   struct vlm_diag *diag) {
    if (!path || !out) {
        return vlm_diag_set(diag, VLM_EINVAL, "vlm_image_load: NULL argument");
    }
    const struct vlm_image_limits lim = resolve_limits(limits);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return vlm_diag_set(diag, -e, "%s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return vlm_diag_set(diag, -e, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return vlm_diag_set(diag, VLM_EINVAL, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)lim.max_bytes) {
        close(fd);
        return vlm_diag_set(diag, VLM_ETOOLARGE, "%s: %lld bytes, over the %zu-byte image limit", path,
                            (long long)st.st_size, lim.max_bytes);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return vlm_diag_set(diag, -e, "%s: read failed: %s", path, r < 0 ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    struct vlm_diag d = {0, ""};
    int rc = vlm_image_decode(buf, n, &lim, out, &d);
    free(buf);
    if (rc != 0) {
        return vlm_diag_set(diag, rc, "%s: %s", path, d.msg);
    }
    return 0;
}

void vlm_image_free(struct vlm_image *img) {
    if (!img) {
        return;
    }
    free(img->rgb);
    img->rgb = NULL;
    img->width = img->height = 0;
}
