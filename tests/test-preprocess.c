// Image preprocessing (plugins/sdk/preprocess.c, resize.c): Pillow-exact resampling against vectors written by
// tools/make_resize_vectors.py (tests/data/resize/), LLaVA-NeXT grid choice and token counts against
// transformers (worked examples and a vector file), mode selection from GGUF metadata, exactness where nothing
// is resized, the windowed/virtual-canvas paths against the plain ones, and the transformers tiles in
// tests/data/vlm/preprocess/ (tests/data/vlm/FORMAT.md).
#include "test-util.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "plugins/sdk/preprocess-impl.h"
#include "vlm/gguf.h"
#include "vlm/image.h"
#include "vlm/preprocess.h"

#define RESIZE_DIR VLM_TEST_DATA_DIR "/resize"
#define VLM_DIR    VLM_TEST_DATA_DIR "/vlm"

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};
static const int32_t PINPOINTS[5][2] = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};

static struct vlm_preprocess_config make_cfg(enum vlm_preprocess_mode mode) {
    struct vlm_preprocess_config c;
    memset(&c, 0, sizeof c);
    c.mode = mode;
    c.size = 336;
    memcpy(c.mean, CLIP_MEAN, sizeof c.mean);
    memcpy(c.std, CLIP_STD, sizeof c.std);
    c.n_pinpoints = 5;
    memcpy(c.pinpoints, PINPOINTS, sizeof PINPOINTS);
    return c;
}

// Images this file allocates itself (malloc'd rgb), and the ones vlm_image_resize returns (also malloc).
static struct vlm_image new_image(int32_t w, int32_t h, uint64_t seed) {
    struct vlm_image img = {w, h, malloc((size_t)w * h * 3)};
    assert_non_null(img.rgb);
    uint64_t s = seed | 1;
    for (int32_t y = 0; y < h; y++) {
        for (int32_t x = 0; x < w; x++) {
            uint8_t *p = img.rgb + ((size_t)y * w + x) * 3;
            // a smooth part and a noisy part, so both resampling regimes are exercised
            p[0] = (uint8_t)((x * 255) / (w > 1 ? w - 1 : 1));
            p[1] = (uint8_t)((y * 7 + x * 3) & 255);
            p[2] = (uint8_t)(vlm_test_rand_u64(&s) >> 56);
        }
    }
    return img;
}

static void free_image(struct vlm_image *img) {
    free(img->rgb);
    img->rgb = NULL;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// ---- resize vectors ---------------------------------------------------------------------------------------------

static void test_resize_vectors(void **state) {
    (void)state;
    char *list = vlm_test_read_file(RESIZE_DIR "/cases.txt", NULL);
    char *save = NULL;
    int n_cases = 0, n_bad = 0;
    for (char *line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == 0) {
            continue;
        }
        char name[64], filter[16];
        int iw, ih, ow, oh;
        assert_int_equal(sscanf(line, "%63s %15s %d %d %d %d", name, filter, &iw, &ih, &ow, &oh), 6);
        enum vlm_resample f = strcmp(filter, "bilinear") == 0 ? VLM_RESAMPLE_BILINEAR : VLM_RESAMPLE_BICUBIC;
        char path[512];
        size_t in_size, out_size;
        snprintf(path, sizeof path, "%s/%s.in.rgb", RESIZE_DIR, name);
        char *in = vlm_test_read_file(path, &in_size);
        snprintf(path, sizeof path, "%s/%s.out.rgb", RESIZE_DIR, name);
        char *want = vlm_test_read_file(path, &out_size);
        assert_int_equal(in_size, (size_t)iw * ih * 3);
        assert_int_equal(out_size, (size_t)ow * oh * 3);
        struct vlm_image src = {iw, ih, (uint8_t *)in}, dst = {0};
        assert_int_equal(vlm_image_resize(&src, ow, oh, f, &dst), 0);
        assert_int_equal(dst.width, ow);
        assert_int_equal(dst.height, oh);
        int n_diff = 0, max_diff = 0;
        for (size_t i = 0; i < out_size; i++) {
            int d = abs((int)dst.rgb[i] - (int)(uint8_t)want[i]);
            n_diff += d != 0;
            max_diff = d > max_diff ? d : max_diff;
        }
        printf("resize %-16s %-8s %3dx%-3d -> %3dx%-3d: %d of %zu bytes differ from Pillow, max %d\n", name, filter, iw,
               ih, ow, oh, n_diff, out_size, max_diff);
        n_bad += n_diff != 0;
        n_cases++;
        free_image(&dst);
        free(in);
        free(want);
    }
    free(list);
    assert_true(n_cases >= 17);
    assert_int_equal(n_bad, 0); // the resampler is byte-exact with Pillow, not merely close
}

static void test_resize_args(void **state) {
    (void)state;
    struct vlm_image src = new_image(10, 7, 1), dst = {0};
    assert_int_equal(vlm_image_resize(&src, 0, 5, VLM_RESAMPLE_BICUBIC, &dst), VLM_EINVAL);
    assert_int_equal(vlm_image_resize(&src, 5, -1, VLM_RESAMPLE_BICUBIC, &dst), VLM_EINVAL);
    assert_int_equal(vlm_image_resize(NULL, 5, 5, VLM_RESAMPLE_BICUBIC, &dst), VLM_EINVAL);
    assert_int_equal(vlm_image_resize(&src, 5, 5, (enum vlm_resample)9, &dst), VLM_EINVAL);
    assert_int_equal(vlm_image_resize(&src, 1 << 15, 1 << 15, VLM_RESAMPLE_BICUBIC, &dst), VLM_ETOOLARGE);
    assert_null(dst.rgb);
    // same size: a copy
    assert_int_equal(vlm_image_resize_bicubic(&src, 10, 7, &dst), 0);
    assert_memory_equal(dst.rgb, src.rgb, 10 * 7 * 3);
    free_image(&dst);
    free_image(&src);
}

// ---- anyres arithmetic ------------------------------------------------------------------------------------------

static void test_anyres_worked_examples(void **state) {
    (void)state;
    // ../shared/docs/gguf-llava.md §6.2 and transformers (pinpoints read as (height, width)).
    static const struct {
        int32_t w, h, best_w, best_h, gw, gh, rows, cols, tokens;
    } ex[] = {
        {640, 488, 672, 672, 2, 2, 36, 48, 2340},   {570, 380, 672, 672, 2, 2, 32, 48, 2144},
        {1000, 667, 672, 672, 2, 2, 32, 48, 2144},  {672, 672, 672, 672, 2, 2, 48, 48, 2928},
        {1000, 300, 1008, 336, 3, 1, 22, 72, 2182}, {300, 200, 672, 336, 2, 1, 24, 36, 1464}, // HF tie order
        {336, 336, 672, 336, 2, 1, 24, 24, 1176},
    };
    struct vlm_preprocess_config cfg = make_cfg(VLM_PREPROCESS_MODE_ANYRES);
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        int32_t bw = 0, bh = 0, gw = 0, gh = 0, rows = 0, cols = 0;
        assert_true(vlm_anyres_select(ex[i].w, ex[i].h, PINPOINTS, 5, &bw, &bh) >= 0);
        assert_int_equal(vlm_anyres_n_tokens(&cfg, ex[i].w, ex[i].h, 24, &gw, &gh), ex[i].tokens);
        assert_int_equal(vlm_anyres_unpad_shape(ex[i].w, ex[i].h, gw, gh, 24, &rows, &cols), ex[i].tokens);
        printf("anyres %4dx%-4d -> best %4dx%-4d grid %dx%d unpadded %dx%d tokens %d\n", ex[i].w, ex[i].h, bw, bh, gw,
               gh, cols, rows, ex[i].tokens);
        assert_int_equal(bw, ex[i].best_w);
        assert_int_equal(bh, ex[i].best_h);
        assert_int_equal(gw, ex[i].gw);
        assert_int_equal(gh, ex[i].gh);
        assert_int_equal(rows, ex[i].rows);
        assert_int_equal(cols, ex[i].cols);
    }
    // the original LLaVA order (width, height) breaks the 300x200 tie the other way: 1x2
    static const int32_t wh_order[5][2] = {{672, 336}, {336, 672}, {672, 672}, {336, 1008}, {1008, 336}};
    int32_t bw, bh;
    assert_int_equal(vlm_anyres_select(300, 200, wh_order, 5, &bw, &bh), 0);
    assert_int_equal(bw, 336);
    assert_int_equal(bh, 672);
    assert_int_equal(vlm_anyres_unpad_shape(300, 200, 1, 2, 24, NULL, NULL), 976);

    assert_int_equal(vlm_anyres_select(0, 10, PINPOINTS, 5, &bw, &bh), VLM_EINVAL);
    assert_int_equal(vlm_anyres_select(10, 10, PINPOINTS, 0, &bw, &bh), VLM_EINVAL);
    assert_int_equal(vlm_anyres_unpad_shape(10, 10, 0, 1, 24, NULL, NULL), VLM_EINVAL);
    struct vlm_preprocess_config hf = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_HF);
    assert_int_equal(vlm_anyres_n_tokens(&hf, 10, 10, 24, NULL, NULL), VLM_EINVAL);
}

static void test_anyres_vectors(void **state) {
    (void)state;
    char *list = vlm_test_read_file(RESIZE_DIR "/anyres-tokens.txt", NULL);
    char *save = NULL;
    int n = 0, n_bad = 0, n_round7 = 0;
    for (char *line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == 0) {
            continue;
        }
        int w, h, bw, bh, gw, gh, rows, cols, tokens;
        assert_int_equal(sscanf(line, "%d %d %d %d %d %d %d %d %d", &w, &h, &bw, &bh, &gw, &gh, &rows, &cols, &tokens),
                         9);
        int32_t got_bw, got_bh, got_rows, got_cols;
        assert_true(vlm_anyres_select(w, h, PINPOINTS, 5, &got_bw, &got_bh) >= 0);
        int32_t got = vlm_anyres_unpad_shape(w, h, got_bw / 336, got_bh / 336, 24, &got_rows, &got_cols);
        bool ok = got_bw == bw && got_bh == bh && got_rows == rows && got_cols == cols && got == tokens;
        if (!ok) {
            printf("anyres %dx%d: want best %dx%d rows %d cols %d tokens %d, got %dx%d %d %d %d\n", w, h, bw, bh, rows,
                   cols, tokens, got_bw, got_bh, got_rows, got_cols, got);
        }
        n_bad += !ok;
        // sizes where the old int() truncation (original LLaVA) would give a different grid than int(round(x, 7))
        int64_t ch = 24LL * gh, cw = 24LL * gw;
        double x = (double)w / h > (double)cw / (double)ch ? h * ((double)cw / w) : w * ((double)ch / h);
        n_round7 += (int64_t)x != (int64_t)floor(x + 5e-8);
        n++;
    }
    free(list);
    printf("anyres vectors: %d sizes, %d disagree with transformers, %d exercise int(round(x, 7))\n", n, n_bad,
           n_round7);
    assert_true(n >= 150);
    assert_true(n_round7 >= 1);
    assert_int_equal(n_bad, 0);
}

// ---- config from GGUF -----------------------------------------------------------------------------------------

struct gbuf {
    uint8_t data[4096];
    size_t len;
    uint64_t n_kv;
};

static void put(struct gbuf *b, const void *p, size_t n) {
    assert_true(b->len + n <= sizeof b->data);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}
static void put_u32(struct gbuf *b, uint32_t v) {
    put(b, &v, 4);
}
static void put_u64(struct gbuf *b, uint64_t v) {
    put(b, &v, 8);
}
static void put_str(struct gbuf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void kv_str(struct gbuf *b, const char *k, const char *v) {
    put_str(b, k);
    put_u32(b, VLM_GGUF_TYPE_STRING);
    put_str(b, v);
    b->n_kv++;
}
static void kv_u32(struct gbuf *b, const char *k, uint32_t v) {
    put_str(b, k);
    put_u32(b, VLM_GGUF_TYPE_UINT32);
    put_u32(b, v);
    b->n_kv++;
}
static void kv_f32_arr(struct gbuf *b, const char *k, const float *v, uint64_t n) {
    put_str(b, k);
    put_u32(b, VLM_GGUF_TYPE_ARRAY);
    put_u32(b, VLM_GGUF_TYPE_FLOAT32);
    put_u64(b, n);
    put(b, v, n * 4);
    b->n_kv++;
}
static void kv_i32_arr(struct gbuf *b, const char *k, const int32_t *v, uint64_t n) {
    put_str(b, k);
    put_u32(b, VLM_GGUF_TYPE_ARRAY);
    put_u32(b, VLM_GGUF_TYPE_INT32);
    put_u64(b, n);
    put(b, v, n * 4);
    b->n_kv++;
}

enum { WITH_MEAN = 1, WITH_STD = 2, WITH_SIZE = 4, BASE = 7 };

// A KV-only mmproj header: the common keys (selected by `with`) plus `extra`.
static int config_of(int with, void (*extra)(struct gbuf *), struct vlm_preprocess_config *cfg, struct vlm_diag *d) {
    struct gbuf kvs = {0};
    kv_str(&kvs, "general.architecture", "clip");
    if (with & WITH_SIZE) {
        kv_u32(&kvs, "clip.vision.image_size", 336);
    }
    if (with & WITH_MEAN) {
        kv_f32_arr(&kvs, "clip.vision.image_mean", CLIP_MEAN, 3);
    }
    if (with & WITH_STD) {
        kv_f32_arr(&kvs, "clip.vision.image_std", CLIP_STD, 3);
    }
    if (extra) {
        extra(&kvs);
    }
    static struct gbuf file; // static: the reader borrows the buffer while open
    memset(&file, 0, sizeof file);
    put(&file, "GGUF", 4);
    put_u32(&file, 3);
    put_u64(&file, 0);
    put_u64(&file, kvs.n_kv);
    put(&file, kvs.data, kvs.len);
    while (file.len % 32) {
        uint8_t z = 0;
        put(&file, &z, 1);
    }
    struct vlm_gguf *g = NULL;
    int rc = vlm_gguf_open_buffer(file.data, file.len, "mmproj-test", &g, d);
    assert_int_equal(rc, 0);
    rc = vlm_preprocess_config_from_gguf(g, cfg, d);
    vlm_gguf_close(g);
    return rc;
}

static void ex_pad(struct gbuf *b) {
    kv_str(b, "clip.vision.image_aspect_ratio", "pad");
}
static void ex_crop(struct gbuf *b) {
    kv_str(b, "clip.vision.image_aspect_ratio", "crop");
}
static void ex_pinpoints(struct gbuf *b) {
    kv_str(b, "clip.vision.image_aspect_ratio", "anyres");
    kv_i32_arr(b, "clip.vision.image_grid_pinpoints", &PINPOINTS[0][0], 10);
}
static void ex_anyres_only(struct gbuf *b) {
    kv_str(b, "clip.vision.image_aspect_ratio", "anyres");
}
static void ex_odd_pinpoints(struct gbuf *b) {
    kv_i32_arr(b, "clip.vision.image_grid_pinpoints", &PINPOINTS[0][0], 9);
}
static void ex_bad_pinpoint(struct gbuf *b) {
    static const int32_t pp[2] = {336, 500};
    kv_i32_arr(b, "clip.vision.image_grid_pinpoints", pp, 2);
}
static void ex_aspect_not_str(struct gbuf *b) {
    kv_u32(b, "clip.vision.image_aspect_ratio", 1);
}

static void test_config_from_gguf(void **state) {
    (void)state;
    struct vlm_preprocess_config cfg;
    struct vlm_diag d = {0};
    // legacy 2023 LLaVA-1.5 mmproj: no aspect key, no pinpoints -> pad to square, as those models were trained
    assert_int_equal(config_of(BASE, NULL, &cfg, &d), 0);
    assert_int_equal(cfg.mode, VLM_PREPROCESS_MODE_LLAVA15_PAD);
    assert_int_equal(cfg.size, 336);
    assert_true(cfg.mean[0] == CLIP_MEAN[0] && cfg.std[2] == CLIP_STD[2]);
    assert_string_equal(vlm_preprocess_mode_name(cfg.mode), "llava15-pad");
    assert_int_equal(config_of(BASE, ex_crop, &cfg, &d), 0);
    assert_int_equal(cfg.mode, VLM_PREPROCESS_MODE_LLAVA15_HF);
    assert_int_equal(config_of(BASE, ex_pad, &cfg, &d), 0);
    assert_int_equal(cfg.mode, VLM_PREPROCESS_MODE_LLAVA15_PAD);
    assert_int_equal(config_of(BASE, ex_pinpoints, &cfg, &d), 0);
    assert_int_equal(cfg.mode, VLM_PREPROCESS_MODE_ANYRES);
    assert_int_equal(cfg.n_pinpoints, 5);
    assert_memory_equal(cfg.pinpoints, PINPOINTS, sizeof PINPOINTS);

    static const struct {
        int with;
        void (*extra)(struct gbuf *);
        const char *text;
    } bad[] = {
        {BASE, ex_anyres_only, "image_grid_pinpoints is missing"},
        {BASE, ex_odd_pinpoints, "pairs"},
        {BASE, ex_bad_pinpoint, "multiples"},
        {BASE & ~WITH_MEAN, NULL, "clip.vision.image_mean"},
        {BASE & ~WITH_STD, NULL, "clip.vision.image_std"},
        {BASE & ~WITH_SIZE, NULL, "clip.vision.image_size"},
        {BASE, ex_aspect_not_str, "image_aspect_ratio"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&d, 0, sizeof d);
        memset(&cfg, 0x5a, sizeof cfg);
        assert_int_equal(config_of(bad[i].with, bad[i].extra, &cfg, &d), VLM_EBADMODEL);
        printf("bad mmproj %zu: %s\n", i, d.msg);
        assert_non_null(strstr(d.msg, bad[i].text));
        assert_int_equal(cfg.size, 0x5a5a5a5a); // untouched on failure
    }

    // The tiny golden models' mmproj files (tools/make_vlm_goldens.py + our converter), when present.
    static const struct {
        const char *path;
        enum vlm_preprocess_mode mode;
        int32_t n_pinpoints;
    } files[] = {
        {VLM_DIR "/models/llava15-tiny/mmproj-f32.gguf", VLM_PREPROCESS_MODE_LLAVA15_HF, 0},
        {VLM_DIR "/models/llava16-tiny/mmproj-f32.gguf", VLM_PREPROCESS_MODE_ANYRES, 5},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (!file_exists(files[i].path)) {
            printf("%s: absent, not checked\n", files[i].path);
            continue;
        }
        struct vlm_gguf *g = NULL;
        assert_int_equal(vlm_gguf_open(files[i].path, &g, &d), 0);
        assert_int_equal(vlm_preprocess_config_from_gguf(g, &cfg, &d), 0);
        vlm_gguf_close(g);
        printf("%s: mode %s, size %d, %d pinpoints\n", files[i].path, vlm_preprocess_mode_name(cfg.mode), (int)cfg.size,
               (int)cfg.n_pinpoints);
        assert_int_equal(cfg.mode, files[i].mode);
        assert_int_equal(cfg.n_pinpoints, files[i].n_pinpoints);
    }
}

// ---- behaviour without goldens --------------------------------------------------------------------------------

static void expect_tiles(const struct vlm_preprocess_config *cfg, const struct vlm_image *img, struct vlm__tiles *t) {
    struct vlm_diag d = {0};
    int rc = vlm__preprocess_u8(cfg, img, t, &d);
    if (rc) {
        fail_msg("preprocess %dx%d: %s", (int)img->width, (int)img->height, d.msg);
    }
}

static void test_exact_without_resize(void **state) {
    (void)state;
    const size_t S = 336, TB = S * S * 3;
    struct vlm__tiles t;
    // llava15-hf on a 336x336 image: the tile is the image
    struct vlm_image sq = new_image(336, 336, 2);
    struct vlm_preprocess_config hf = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_HF);
    expect_tiles(&hf, &sq, &t);
    assert_int_equal(t.n_tiles, 1);
    assert_int_equal(t.grid_w, 0);
    assert_memory_equal(t.rgb, sq.rgb, TB);
    vlm__tiles_free(&t);

    // llava15-pad on 336x100: no resize; rows 0..117 and 218.. are the mean colour (122, 116, 104)
    struct vlm_image wide = new_image(336, 100, 3);
    struct vlm_preprocess_config pad = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_PAD);
    expect_tiles(&pad, &wide, &t);
    for (size_t y = 0; y < S; y++) {
        for (size_t x = 0; x < S; x++) {
            const uint8_t *p = t.rgb + (y * S + x) * 3;
            if (y >= 118 && y < 218) {
                assert_memory_equal(p, wide.rgb + ((y - 118) * S + x) * 3, 3);
            } else {
                assert_true(p[0] == 122 && p[1] == 116 && p[2] == 104);
            }
        }
    }
    vlm__tiles_free(&t);

    // anyres on 672x672: the refined image is not resized, so tiles 1..4 are the quadrants; the overview is the
    // image resized to 336x336
    struct vlm_image big = new_image(672, 672, 4);
    struct vlm_preprocess_config any = make_cfg(VLM_PREPROCESS_MODE_ANYRES);
    expect_tiles(&any, &big, &t);
    assert_int_equal(t.n_tiles, 5);
    assert_int_equal(t.grid_w, 2);
    assert_int_equal(t.grid_h, 2);
    for (size_t k = 0; k < 4; k++) {
        size_t x0 = (k % 2) * S, y0 = (k / 2) * S;
        for (size_t y = 0; y < S; y++) {
            assert_memory_equal(t.rgb + (1 + k) * TB + y * S * 3, big.rgb + ((y0 + y) * 672 + x0) * 3, S * 3);
        }
    }
    struct vlm_image ov = {0};
    assert_int_equal(vlm_image_resize_bicubic(&big, 336, 336, &ov), 0);
    assert_memory_equal(t.rgb, ov.rgb, TB);
    free_image(&ov);
    vlm__tiles_free(&t);

    // normalization: transformers' float64 rescale, float32 normalize, channel-planar
    struct vlm_image_batch b;
    struct vlm_diag d = {0};
    assert_int_equal(vlm_preprocess(&hf, &sq, &b, &d), 0);
    assert_int_equal(b.n_tiles, 1);
    assert_int_equal(b.size, 336);
    assert_int_equal(b.image_w, 336);
    for (size_t p = 0; p < S * S; p += 997) {
        for (int c = 0; c < 3; c++) {
            float x = (float)((double)sq.rgb[p * 3 + c] * (1.0 / 255.0));
            float want = (x - CLIP_MEAN[c]) / CLIP_STD[c];
            assert_true(b.pixels[(size_t)c * S * S + p] == want);
        }
    }
    vlm_image_batch_free(&b);
    assert_null(b.pixels);
    vlm_image_batch_free(&b); // a zeroed batch may be freed again

    free_image(&sq);
    free_image(&wide);
    free_image(&big);
}

// The windowed resize and the virtual padded canvas must give what the plain full-image steps give.
static void test_windowed_paths(void **state) {
    (void)state;
    const size_t S = 336;
    struct vlm__tiles t;
    struct vlm_image img = new_image(1000, 300, 5);

    // llava15-hf: resize shortest edge (int(336 * 1000 / 300) = 1120 x 336), then center crop at x = 392
    struct vlm_preprocess_config hf = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_HF);
    expect_tiles(&hf, &img, &t);
    struct vlm_image full = {0};
    assert_int_equal(vlm_image_resize_bicubic(&img, 1120, 336, &full), 0);
    for (size_t y = 0; y < S; y++) {
        assert_memory_equal(t.rgb + y * S * 3, full.rgb + (y * 1120 + 392) * 3, S * 3);
    }
    free_image(&full);
    vlm__tiles_free(&t);

    // llava15-pad: expand2square materialized (1000x1000, image at y = 350), then resized to 336x336
    struct vlm_preprocess_config pad = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_PAD);
    expect_tiles(&pad, &img, &t);
    struct vlm_image sq = {1000, 1000, malloc(1000 * 1000 * 3)};
    assert_non_null(sq.rgb);
    for (size_t p = 0; p < 1000 * 1000; p++) {
        sq.rgb[p * 3 + 0] = 122;
        sq.rgb[p * 3 + 1] = 116;
        sq.rgb[p * 3 + 2] = 104;
    }
    memcpy(sq.rgb + 350 * 1000 * 3, img.rgb, 1000 * 300 * 3);
    assert_int_equal(vlm_image_resize_bicubic(&sq, 336, 336, &full), 0);
    assert_memory_equal(t.rgb, full.rgb, S * S * 3);
    free_image(&full);
    free_image(&sq);
    vlm__tiles_free(&t);

    // a tall one: pad columns instead of rows (200x700 -> 700x700 with the image at x = 250)
    struct vlm_image tall = new_image(200, 700, 6);
    expect_tiles(&pad, &tall, &t);
    sq = (struct vlm_image){700, 700, malloc(700 * 700 * 3)};
    assert_non_null(sq.rgb);
    for (size_t y = 0; y < 700; y++) {
        for (size_t x = 0; x < 700; x++) {
            uint8_t *p = sq.rgb + (y * 700 + x) * 3;
            if (x >= 250 && x < 450) {
                memcpy(p, tall.rgb + (y * 200 + x - 250) * 3, 3);
            } else {
                memcpy(p, (const uint8_t[3]){122, 116, 104}, 3);
            }
        }
    }
    assert_int_equal(vlm_image_resize_bicubic(&sq, 336, 336, &full), 0);
    assert_memory_equal(t.rgb, full.rgb, S * S * 3);
    free_image(&full);
    free_image(&sq);
    vlm__tiles_free(&t);
    free_image(&tall);
    free_image(&img);

    // A 16000x500 strip in pad mode would be a 768 MB square if materialized; the virtual canvas keeps it small.
    struct vlm_image strip = new_image(16000, 500, 7);
    clock_t t0 = clock();
    expect_tiles(&pad, &strip, &t);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    printf("pad mode 16000x500: %.3f s\n", secs);
    // the top rows are pure fill: far from the image, every weight sees the mean colour
    assert_true(t.rgb[0] == 122 && t.rgb[1] == 116 && t.rgb[2] == 104);
    vlm__tiles_free(&t);
    free_image(&strip);
}

static void test_errors(void **state) {
    (void)state;
    struct vlm_image img = new_image(20, 10, 8);
    struct vlm_image_batch b;
    struct vlm_diag d = {0};
    struct vlm_preprocess_config c = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_HF);
    c.size = 0;
    assert_int_equal(vlm_preprocess(&c, &img, &b, &d), VLM_EINVAL);
    c = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_HF);
    c.std[1] = 0.0f;
    assert_int_equal(vlm_preprocess(&c, &img, &b, &d), VLM_EINVAL);
    c = make_cfg(VLM_PREPROCESS_MODE_ANYRES);
    c.n_pinpoints = 0;
    assert_int_equal(vlm_preprocess(&c, &img, &b, &d), VLM_EINVAL);
    c = make_cfg((enum vlm_preprocess_mode)0);
    assert_int_equal(vlm_preprocess(&c, &img, &b, &d), VLM_EINVAL);
    c = make_cfg(VLM_PREPROCESS_MODE_LLAVA15_HF);
    struct vlm_image empty = {0, 10, img.rgb};
    assert_int_equal(vlm_preprocess(&c, &empty, &b, &d), VLM_EINVAL);
    struct vlm_image huge = {VLM__PREPROCESS_MAX_SIDE + 1, 1, img.rgb}; // never read: refused on size
    assert_int_equal(vlm_preprocess(&c, &huge, &b, &d), VLM_ETOOLARGE);
    assert_int_equal(vlm_preprocess(&c, &img, NULL, &d), VLM_EINVAL);
    // extreme strips work in every mode (4000x1 gives an anyres grid with no unpadded rows)
    struct vlm_image thin = new_image(4000, 1, 9);
    for (int m = 1; m <= 3; m++) {
        c = make_cfg((enum vlm_preprocess_mode)m);
        assert_int_equal(vlm_preprocess(&c, &thin, &b, &d), 0);
        vlm_image_batch_free(&b);
    }
    free_image(&thin);
    free_image(&img);
}

// ---- transformers' tiles (tests/data/vlm/FORMAT.md) ---------------------------------------------------------------

struct meta {
    char mode[32];
    int image_w, image_h, n_tiles, grid_w, grid_h, best_w, best_h, n_tokens;
};

static bool read_meta(const char *path, struct meta *m) {
    FILE *f = fopen(path, "r");
    if (!f) {
        return false;
    }
    memset(m, 0, sizeof *m);
    char line[256];
    while (fgets(line, sizeof line, f)) {
        char key[64];
        if (sscanf(line, "%63s", key) != 1) {
            continue;
        }
        const char *v = line + strlen(key);
        if (!strcmp(key, "mode")) {
            sscanf(v, "%31s", m->mode);
        } else if (!strcmp(key, "image")) {
            sscanf(v, "%d %d", &m->image_w, &m->image_h);
        } else if (!strcmp(key, "n_tiles")) {
            sscanf(v, "%d", &m->n_tiles);
        } else if (!strcmp(key, "grid")) {
            sscanf(v, "%d %d", &m->grid_w, &m->grid_h);
        } else if (!strcmp(key, "best_resolution")) {
            sscanf(v, "%d %d", &m->best_w, &m->best_h);
        } else if (!strcmp(key, "n_image_tokens")) {
            sscanf(v, "%d", &m->n_tokens);
        }
    }
    fclose(f);
    return true;
}

static void test_golden_tiles(void **state) {
    (void)state;
    // FORMAT.md present means the golden set is part of the tree: every mode x image must then be complete.
    assert_true(file_exists(VLM_DIR "/FORMAT.md"));
    static const struct {
        const char *dir;
        enum vlm_preprocess_mode mode;
    } modes[] = {
        {"llava15-hf", VLM_PREPROCESS_MODE_LLAVA15_HF},
        {"llava15-pad", VLM_PREPROCESS_MODE_LLAVA15_PAD},
        {"llava16", VLM_PREPROCESS_MODE_ANYRES},
    };
    DIR *dir = opendir(VLM_DIR "/images");
    if (!dir) {
        fail_msg("%s/images: missing (FORMAT.md lists the golden images)", VLM_DIR);
    }
    char names[64][128];
    int n_images = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        if (e->d_name[0] != '.' && n_images < 64 && strlen(e->d_name) < sizeof names[0]) {
            snprintf(names[n_images++], sizeof names[0], "%.120s", e->d_name);
        }
    }
    closedir(dir);
    assert_true(n_images >= 3);
    int n_checked = 0, n_failed = 0;
    for (int i = 0; i < n_images; i++) {
        char stem[128], path[1024];
        snprintf(stem, sizeof stem, "%.120s", names[i]);
        char *dot = strrchr(stem, '.');
        bool lossless = dot && !strcmp(dot, ".png");
        if (dot) {
            *dot = 0;
        }
        snprintf(path, sizeof path, "%s/images/%.120s", VLM_DIR, names[i]);
        struct vlm_image img = {0};
        struct vlm_diag d = {0};
        if (vlm_image_load(path, NULL, &img, &d) != 0) {
            fail_msg("%s: %s", path, d.msg);
        }
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            char base[768];
            snprintf(base, sizeof base, "%s/preprocess/%s/%.120s", VLM_DIR, modes[m].dir, stem);
            snprintf(path, sizeof path, "%s/meta.txt", base);
            struct meta meta;
            if (!read_meta(path, &meta)) {
                fail_msg("%s: missing (golden tiles incomplete)", path);
            }
            struct vlm_preprocess_config cfg = make_cfg(modes[m].mode);
            struct vlm_image_batch b;
            if (vlm_preprocess(&cfg, &img, &b, &d) != 0) {
                fail_msg("%s: preprocess: %s", base, d.msg);
            }
            assert_int_equal(meta.image_w, img.width);
            assert_int_equal(meta.image_h, img.height);
            assert_int_equal(b.n_tiles, meta.n_tiles);
            assert_int_equal(b.grid_w, meta.grid_w);
            assert_int_equal(b.grid_h, meta.grid_h);
            int32_t tokens = 576;
            if (modes[m].mode == VLM_PREPROCESS_MODE_ANYRES) {
                int32_t bw, bh;
                assert_true(vlm_anyres_select(img.width, img.height, PINPOINTS, 5, &bw, &bh) >= 0);
                assert_int_equal(bw, meta.best_w);
                assert_int_equal(bh, meta.best_h);
                tokens = vlm_anyres_n_tokens(&cfg, img.width, img.height, 24, NULL, NULL);
            }
            assert_int_equal(tokens, meta.n_tokens);
            const size_t plane = (size_t)b.size * b.size;
            double max_d = 0.0, sum_d = 0.0;
            for (int k = 0; k < b.n_tiles; k++) {
                snprintf(path, sizeof path, "%s/tile-%02d.png", base, k);
                struct vlm_image tile = {0};
                if (!file_exists(path)) {
                    fail_msg("%s: missing (golden tiles incomplete)", path);
                }
                if (vlm_image_load(path, NULL, &tile, &d) != 0) {
                    fail_msg("%s: %s", path, d.msg);
                }
                assert_int_equal(tile.width, b.size);
                assert_int_equal(tile.height, b.size);
                const float *px = b.pixels + (size_t)k * 3 * plane;
                for (size_t p = 0; p < plane; p++) {
                    for (int c = 0; c < 3; c++) {
                        float x = (float)((double)tile.rgb[p * 3 + c] * (1.0 / 255.0));
                        float want = (x - CLIP_MEAN[c]) / CLIP_STD[c];
                        double diff = fabs((double)px[(size_t)c * plane + p] - (double)want);
                        max_d = diff > max_d ? diff : max_d;
                        sum_d += diff;
                    }
                }
                vlm_image_free(&tile);
            }
            double mean_d = sum_d / ((double)b.n_tiles * 3.0 * (double)plane);
            // PNG sources decode identically to Pillow and our resampler is Pillow-exact: demand equality there.
            // JPEG decoders may differ by a level or so (issue 3 tolerance: max 0.03, mean 0.003).
            bool ok = lossless ? max_d == 0.0 : (max_d < 0.03 && mean_d < 0.003);
            printf("golden %-11s %-16s %4dx%-4d tiles %d grid %dx%d tokens %4d: max |diff| %.6f mean %.7f%s\n",
                   modes[m].dir, stem, (int)img.width, (int)img.height, (int)b.n_tiles, (int)b.grid_w, (int)b.grid_h,
                   (int)tokens, max_d, mean_d, ok ? "" : "  FAIL");
            n_failed += !ok;
            n_checked++;
            vlm_image_batch_free(&b);
        }
        vlm_image_free(&img);
    }
    printf("golden tiles: %d image x mode cases, %d failed\n", n_checked, n_failed);
    assert_int_equal(n_failed, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resize_vectors),         cmocka_unit_test(test_resize_args),
        cmocka_unit_test(test_anyres_worked_examples), cmocka_unit_test(test_anyres_vectors),
        cmocka_unit_test(test_config_from_gguf),       cmocka_unit_test(test_exact_without_resize),
        cmocka_unit_test(test_windowed_paths),         cmocka_unit_test(test_errors),
        cmocka_unit_test(test_golden_tiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
