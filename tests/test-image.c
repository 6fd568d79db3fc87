// Image decoding (plugins/sdk/image.c) against Pillow: the fixtures in tests/data/images/ and their MANIFEST are
// written by tools/make_image_fixtures.py. Good files must match Pillow's exif_transpose + convert("RGB") within
// the tolerance the MANIFEST gives (0 for PNG and lossless WebP); bad files must fail with the listed code and a
// message containing the listed text; the real photos must match a sampled grid of Pillow's decode.
#include "test-util.h"

#include <string.h>

#include "vlm/image.h"
#include "vlm/log.h"

#define IMG_DIR VLM_TEST_DATA_DIR "/images"

struct entry {
    char kind[8];
    char file[128];
    char code[32];  // bad
    char text[160]; // bad: substring of the message
    int w, h, stride, tol;
};

static struct entry entries[256];
static int n_entries;

static void load_manifest(void) {
    if (n_entries) {
        return;
    }
    size_t size;
    char *buf = vlm_test_read_file(IMG_DIR "/MANIFEST", &size);
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == 0) {
            continue;
        }
        assert_true(n_entries < (int)(sizeof entries / sizeof entries[0]));
        struct entry *e = &entries[n_entries++];
        memset(e, 0, sizeof *e);
        char *f[6] = {0};
        int nf = 0;
        char *s2 = NULL;
        for (char *t = strtok_r(line, "\t", &s2); t && nf < 6; t = strtok_r(NULL, "\t", &s2)) {
            f[nf++] = t;
        }
        assert_true(nf >= 4);
        snprintf(e->kind, sizeof e->kind, "%s", f[0]);
        snprintf(e->file, sizeof e->file, "%s", f[1]);
        if (strcmp(e->kind, "bad") == 0) {
            snprintf(e->code, sizeof e->code, "%s", f[2]);
            snprintf(e->text, sizeof e->text, "%s", f[3]);
        } else if (strcmp(e->kind, "good") == 0) {
            assert_int_equal(nf, 5);
            e->w = atoi(f[2]);
            e->h = atoi(f[3]);
            e->tol = atoi(f[4]);
        } else {
            assert_string_equal(e->kind, "photo");
            assert_int_equal(nf, 6);
            e->w = atoi(f[2]);
            e->h = atoi(f[3]);
            e->stride = atoi(f[4]);
            e->tol = atoi(f[5]);
        }
    }
    free(buf);
    assert_true(n_entries >= 90); // the corpus is all there
}

static char *path_of(const char *file, const char *suffix) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s%s", IMG_DIR, file, suffix);
    return p;
}

// Something that looks like a printed pointer: "0x" starting a number, then at least 6 hex digits. libjpeg's
// "Huffman table 0x04" and our "100000x100000" do not count.
static int has_hex_literal(const char *msg) {
    for (size_t i = 0; msg[i] && msg[i + 1]; i++) {
        if (msg[i] == '0' && msg[i + 1] == 'x' && (i == 0 || msg[i - 1] < '0' || msg[i - 1] > '9')) {
            size_t k = i + 2;
            while (strchr("0123456789abcdefABCDEF", msg[k]) && msg[k]) {
                k++;
            }
            if (k - i - 2 >= 6) {
                return 1;
            }
        }
    }
    return 0;
}

static int max_abs_diff(const uint8_t *a, const uint8_t *b, size_t n, double *mean) {
    int m = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        sum += (uint64_t)d;
        m = d > m ? d : m;
    }
    if (mean) {
        *mean = n ? (double)sum / (double)n : 0.0;
    }
    return m;
}

static const char *family(const char *file) {
    const char *b = strrchr(file, '/');
    b = b ? b + 1 : file;
    if (strncmp(b, "jpeg", 4) == 0) {
        return "jpeg";
    }
    if (strncmp(b, "webp-lossy", 10) == 0) {
        return "webp-lossy";
    }
    if (strncmp(b, "webp", 4) == 0) {
        return "webp-lossless";
    }
    return "png";
}

static void test_good(void **state) {
    (void)state;
    load_manifest();
    const char *fams[] = {"jpeg", "png", "webp-lossy", "webp-lossless"};
    int fam_max[4] = {0}, fam_n[4] = {0};
    int n = 0;
    for (int i = 0; i < n_entries; i++) {
        const struct entry *e = &entries[i];
        if (strcmp(e->kind, "good") != 0) {
            continue;
        }
        struct vlm_image img = {0};
        struct vlm_diag d = {0, ""};
        int rc = vlm_image_load(path_of(e->file, ""), NULL, &img, &d);
        if (rc != 0) {
            fail_msg("%s: %s %s", e->file, vlm_err_name(rc), d.msg);
        }
        if (img.width != e->w || img.height != e->h) {
            fail_msg("%s: decoded %dx%d, Pillow %dx%d", e->file, img.width, img.height, e->w, e->h);
        }
        size_t n_ref;
        char *ref = vlm_test_read_file(path_of(e->file, ".rgb"), &n_ref);
        assert_int_equal(n_ref, (size_t)e->w * (size_t)e->h * 3);
        int m = max_abs_diff(img.rgb, (const uint8_t *)ref, n_ref, NULL);
        if (m > e->tol) {
            fail_msg("%s: max abs difference from Pillow %d > tolerance %d", e->file, m, e->tol);
        }
        for (int k = 0; k < 4; k++) {
            if (strcmp(family(e->file), fams[k]) == 0) {
                fam_max[k] = m > fam_max[k] ? m : fam_max[k];
                fam_n[k]++;
            }
        }
        free(ref);
        vlm_image_free(&img);
        assert_null(img.rgb);
        n++;
    }
    for (int k = 0; k < 4; k++) {
        printf("[ image    ] %-14s %2d files, max abs diff from Pillow %d\n", fams[k], fam_n[k], fam_max[k]);
        assert_true(fam_n[k] >= 2);
    }
    // PNG and lossless WebP are bit-exact with Pillow by construction; a tolerance there would hide a bug.
    assert_int_equal(fam_max[1], 0);
    assert_int_equal(fam_max[3], 0);
    printf("[ image    ] %d good fixtures decoded\n", n);
}

static int code_by_name(const char *name) {
    static const int codes[] = {VLM_EUNSUPPORTED, VLM_ETOOLARGE, VLM_EBADIMAGE, VLM_ENOMEM, VLM_EINVAL};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        if (strcmp(vlm_err_name(codes[i]), name) == 0) {
            return codes[i];
        }
    }
    fail_msg("MANIFEST names unknown code %s", name);
    return 0;
}

static void test_bad(void **state) {
    (void)state;
    load_manifest();
    int n = 0;
    for (int i = 0; i < n_entries; i++) {
        const struct entry *e = &entries[i];
        if (strcmp(e->kind, "bad") != 0) {
            continue;
        }
        size_t size;
        char *buf = vlm_test_read_file(path_of(e->file, ""), &size);
        struct vlm_image img = {-7, -7, (uint8_t *)buf}; // sentinel: must stay untouched on failure
        struct vlm_diag d = {0, ""};
        int rc = vlm_image_decode(buf, size, NULL, &img, &d);
        if (rc != code_by_name(e->code) || strstr(d.msg, e->text) == NULL) {
            fail_msg("%s: got %s \"%s\", expected %s containing \"%s\"", e->file, vlm_err_name(rc), d.msg, e->code,
                     e->text);
        }
        assert_int_equal(d.code, rc);
        assert_true(img.width == -7 && img.height == -7 && img.rgb == (uint8_t *)buf);
        assert_false(has_hex_literal(d.msg)); // no library pointers in messages
        free(buf);
        n++;
    }
    printf("[ image    ] %d bad fixtures refused with the expected code and message\n", n);
    assert_true(n >= 40);
}

static void test_photos(void **state) {
    (void)state;
    load_manifest();
    int n = 0;
    for (int i = 0; i < n_entries; i++) {
        const struct entry *e = &entries[i];
        if (strcmp(e->kind, "photo") != 0) {
            continue;
        }
        struct vlm_image img = {0};
        struct vlm_diag d = {0, ""};
        int rc = vlm_image_load(path_of(e->file, ""), NULL, &img, &d);
        if (rc != 0) {
            fail_msg("%s: %s %s", e->file, vlm_err_name(rc), d.msg);
        }
        assert_int_equal(img.width, e->w);
        assert_int_equal(img.height, e->h);
        size_t n_ref;
        char *ref = vlm_test_read_file(path_of(e->file, ".grid.rgb"), &n_ref);
        const size_t gw = (size_t)(e->w + e->stride - 1) / (size_t)e->stride;
        const size_t gh = (size_t)(e->h + e->stride - 1) / (size_t)e->stride;
        assert_int_equal(n_ref, gw * gh * 3);
        uint8_t *grid = malloc(n_ref);
        assert_non_null(grid);
        for (size_t y = 0; y < gh; y++) {
            for (size_t x = 0; x < gw; x++) {
                memcpy(grid + (y * gw + x) * 3, img.rgb + ((y * (size_t)e->stride) * (size_t)e->w +
                                                           x * (size_t)e->stride) * 3, 3);
            }
        }
        double mean;
        int m = max_abs_diff(grid, (const uint8_t *)ref, n_ref, &mean);
        printf("[ image    ] %s %dx%d: %zu sampled pixels, max abs diff from Pillow %d, mean %.4f\n", e->file,
               img.width, img.height, gw * gh, m, mean);
        if (m > e->tol) {
            fail_msg("%s: max abs difference from Pillow %d > tolerance %d", e->file, m, e->tol);
        }
        assert_true(mean < 0.1);
        free(grid);
        free(ref);
        vlm_image_free(&img);
        n++;
    }
    assert_int_equal(n, 3);
}

static void test_sniff(void **state) {
    (void)state;
    assert_int_equal(vlm_image_sniff("\xff\xd8\xff", 3), VLM_IMAGE_FORMAT_JPEG);
    assert_int_equal(vlm_image_sniff("\xff\xd8", 2), VLM_IMAGE_FORMAT_UNKNOWN);
    assert_int_equal(vlm_image_sniff("\x89PNG\r\n\x1a\n", 8), VLM_IMAGE_FORMAT_PNG);
    assert_int_equal(vlm_image_sniff("\x89PNG\r\n\x1a", 7), VLM_IMAGE_FORMAT_UNKNOWN);
    assert_int_equal(vlm_image_sniff("RIFF\0\0\0\0WEBP", 12), VLM_IMAGE_FORMAT_WEBP);
    assert_int_equal(vlm_image_sniff("RIFF\0\0\0\0WAVE", 12), VLM_IMAGE_FORMAT_UNKNOWN);
    assert_int_equal(vlm_image_sniff("GIF89a", 6), VLM_IMAGE_FORMAT_UNKNOWN);
    assert_int_equal(vlm_image_sniff(NULL, 0), VLM_IMAGE_FORMAT_UNKNOWN);
    struct vlm_image_limits l = vlm_image_default_limits();
    assert_int_equal(l.max_bytes, (size_t)64 << 20);
    assert_int_equal(l.max_side, 16384);
    assert_int_equal(l.max_pixels, (int64_t)8192 * 8192);
}

static void test_limits(void **state) {
    (void)state;
    size_t size;
    char *buf = vlm_test_read_file(IMG_DIR "/good/png-rgb8.png", &size); // 17x11
    struct vlm_image img = {0};
    struct vlm_diag d = {0, ""};
    struct vlm_image_limits l = {size - 1, 0, 0};
    assert_int_equal(vlm_image_decode(buf, size, &l, &img, &d), VLM_ETOOLARGE);
    assert_non_null(strstr(d.msg, "over the"));
    l = (struct vlm_image_limits){size, 16, 0};
    assert_int_equal(vlm_image_decode(buf, size, &l, &img, &d), VLM_ETOOLARGE);
    assert_string_equal(d.msg, "image 17x11 exceeds the 16-pixel side limit");
    l = (struct vlm_image_limits){0, 17, 17 * 11 - 1};
    assert_int_equal(vlm_image_decode(buf, size, &l, &img, &d), VLM_ETOOLARGE);
    assert_string_equal(d.msg, "image 17x11 has 187 pixels, over the 186-pixel limit");
    l = (struct vlm_image_limits){size, 17, 17 * 11};
    assert_int_equal(vlm_image_decode(buf, size, &l, &img, &d), 0);
    assert_int_equal(img.width, 17);
    vlm_image_free(&img);
    free(buf);

    // The same limits hold for JPEG and WebP, checked from their headers.
    const char *others[] = {"/good/jpeg-420.jpg", "/good/webp-lossy.webp", "/good/webp-lossless.webp",
                            "/good/jpeg-progressive.jpg"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s%s", IMG_DIR, others[i]);
        l = (struct vlm_image_limits){0, 16, 0};
        assert_int_equal(vlm_image_load(path, &l, &img, &d), VLM_ETOOLARGE);
        assert_non_null(strstr(d.msg, "image 17x11 exceeds the 16-pixel side limit"));
        l = (struct vlm_image_limits){0, 0, 100};
        assert_int_equal(vlm_image_load(path, &l, &img, &d), VLM_ETOOLARGE);
        assert_non_null(strstr(d.msg, "over the 100-pixel limit"));
        l = (struct vlm_image_limits){10, 0, 0};
        assert_int_equal(vlm_image_load(path, &l, &img, &d), VLM_ETOOLARGE);
        assert_non_null(strstr(d.msg, "over the 10-byte image limit"));
    }

    assert_int_equal(vlm_image_load(IMG_DIR "/no-such-file.png", NULL, &img, &d), VLM_ENOENT);
    assert_int_equal(vlm_image_load(IMG_DIR, NULL, &img, &d), VLM_EINVAL); // a directory
    assert_int_equal(vlm_image_decode(NULL, 5, NULL, &img, &d), VLM_EINVAL);
    vlm_image_free(NULL);
}

// Every strict prefix of a file must fail cleanly (JPEG: always, since EOI is missing; PNG and WebP: unless the
// pixel data is complete, in which case the pixels must be the full file's).
static void test_prefixes(void **state) {
    (void)state;
    const char *files[] = {"/good/jpeg-420.jpg", "/good/jpeg-progressive.jpg", "/good/jpeg-cmyk.jpg",
                           "/good/png-rgb8-adam7.png", "/good/png-grey16.png", "/good/png-pal8.png",
                           "/good/webp-lossy.webp", "/good/webp-lossless-alpha.webp", "/good/jpeg-exif6.jpg"};
    int n = 0, ok_prefixes = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s%s", IMG_DIR, files[i]);
        size_t size;
        char *buf = vlm_test_read_file(path, &size);
        struct vlm_image full = {0};
        struct vlm_diag d = {0, ""};
        assert_int_equal(vlm_image_decode(buf, size, NULL, &full, &d), 0);
        for (size_t len = 0; len < size; len++) {
            struct vlm_image img = {0};
            int rc = vlm_image_decode(buf, len, NULL, &img, &d);
            n++;
            if (rc == 0) {
                if (strstr(files[i], "jpeg")) {
                    fail_msg("%s: prefix of %zu/%zu bytes decoded", files[i], len, size);
                }
                assert_int_equal(img.width, full.width);
                assert_int_equal(img.height, full.height);
                assert_memory_equal(img.rgb, full.rgb, (size_t)full.width * (size_t)full.height * 3);
                vlm_image_free(&img);
                ok_prefixes++;
                continue;
            }
            if (rc != VLM_EBADIMAGE && rc != VLM_EUNSUPPORTED) {
                fail_msg("%s: prefix of %zu bytes: %s %s", files[i], len, vlm_err_name(rc), d.msg);
            }
        }
        vlm_image_free(&full);
        free(buf);
    }
    printf("[ image    ] %d truncated inputs refused cleanly (%d PNG/WebP prefixes held all pixel data)\n",
           n - ok_prefixes, ok_prefixes);
}

// Random byte damage: never a crash or a sanitizer report, and any success stays within the limits.
static void test_damage(void **state) {
    (void)state;
    const char *files[] = {"/good/jpeg-420.jpg", "/good/jpeg-progressive.jpg", "/good/png-rgba16-adam7.png",
                           "/good/png-pal4.png", "/good/webp-lossy.webp", "/good/webp-lossless.webp",
                           "/good/jpeg-exif8-be.jpg", "/good/png-exif6.png"};
    uint64_t rng = 0x1234567;
    int n = 0, decoded = 0;
    struct vlm_image_limits l = {1 << 20, 2048, 1 << 20};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s%s", IMG_DIR, files[i]);
        size_t size;
        char *orig = vlm_test_read_file(path, &size);
        char *buf = malloc(size);
        assert_non_null(buf);
        for (int it = 0; it < 300; it++) {
            memcpy(buf, orig, size);
            int flips = 1 + (int)(vlm_test_rand_u64(&rng) % 4);
            for (int k = 0; k < flips; k++) {
                size_t pos = (size_t)(vlm_test_rand_u64(&rng) % size);
                buf[pos] = (char)(vlm_test_rand_u64(&rng) & 0xff);
            }
            struct vlm_image img = {0};
            struct vlm_diag d = {0, ""};
            int rc = vlm_image_decode(buf, size, &l, &img, &d);
            n++;
            if (rc == 0) {
                assert_true(img.width > 0 && img.width <= 2048 && img.height > 0 && img.height <= 2048);
                assert_true((int64_t)img.width * img.height <= (1 << 20));
                vlm_image_free(&img);
                decoded++;
            } else {
                assert_true(rc == VLM_EBADIMAGE || rc == VLM_EUNSUPPORTED || rc == VLM_ETOOLARGE);
                assert_true(d.msg[0] != 0);
                if (has_hex_literal(d.msg)) {
                    fail_msg("%s: message with a hex literal: %s", files[i], d.msg);
                }
            }
        }
        free(buf);
        free(orig);
    }
    printf("[ image    ] %d damaged inputs: %d decoded, %d refused\n", n, decoded, n - decoded);
}

int main(void) {
    vlm_log_set_level(VLM_LOG_WARN); // decode failures log at debug level
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff),    cmocka_unit_test(test_good),     cmocka_unit_test(test_bad),
        cmocka_unit_test(test_photos),   cmocka_unit_test(test_limits),   cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_damage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
