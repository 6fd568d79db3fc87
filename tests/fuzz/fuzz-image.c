// libFuzzer entry point for the image decoders (plugins/sdk/image.c): decode under small limits, then check the
// result against the limits and read every output byte (so MSan sees uninitialised pixels).
//
// Built by tests/fuzz/CMakeLists.txt (-DVLM_BUILD_FUZZERS=ON, clang); seeds in tests/fuzz/corpus-image (the small
// fixtures of tests/data/images/good and bad). Run: tools/fuzz.sh SECONDS image.
//
// The system libjpeg/libpng/libwebp are not instrumented: ASan checks our code and what we hand them, not their
// internals; coverage feedback comes from image.c only.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "vlm/image.h"
#include "vlm/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool quiet;
    if (!quiet) {
        vlm_log_set_level(VLM_LOG_ERROR); // failures log at debug level; keep the fuzzer's output readable
        quiet = true;
    }
    // libjpeg-turbo's own fuzzer skips images over 1 MP; the same bound keeps each run fast here.
    const struct vlm_image_limits lim = {1u << 20, 4096, 1 << 20};
    struct vlm_image img = {0};
    struct vlm_diag diag = {0, ""};
    int rc = vlm_image_decode(data, size, &lim, &img, &diag);
    if (rc != 0) {
        if (rc != VLM_EBADIMAGE && rc != VLM_EUNSUPPORTED && rc != VLM_ETOOLARGE && rc != VLM_ENOMEM) {
            abort(); // an internal error is a bug
        }
        if (diag.code != rc || diag.msg[0] == 0 || img.rgb != NULL) {
            abort();
        }
        return 0;
    }
    if (img.width <= 0 || img.height <= 0 || img.width > lim.max_side || img.height > lim.max_side ||
        (int64_t)img.width * img.height > lim.max_pixels || img.rgb == NULL) {
        abort();
    }
    uint64_t sum = 0;
    const size_t n = (size_t)img.width * (size_t)img.height * 3;
    for (size_t i = 0; i < n; i++) {
        sum += img.rgb[i];
    }
    sink = sum;
    vlm_image_free(&img);
    return 0;
}
