// Helpers shared by the cmocka test programs.
#ifndef VLM_TEST_UTIL_H
#define VLM_TEST_UTIL_H

#include <setjmp.h> // cmocka needs these before its header
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

// Reads a whole file into a malloc'd buffer (NUL-terminated for convenience). Fails the test on error.
static inline char *vlm_test_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("cannot open %s", path);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fail_msg("short read on %s", path);
    }
    buf[n] = 0;
    fclose(f);
    if (size) {
        *size = (size_t)n;
    }
    return buf;
}

// Deterministic xorshift64* for test data.
static inline uint64_t vlm_test_rand_u64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

// Uniform float in [-1, 1).
static inline float vlm_test_rand_f32(uint64_t *state) {
    return (float)((double)(vlm_test_rand_u64(state) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

#endif // VLM_TEST_UTIL_H
