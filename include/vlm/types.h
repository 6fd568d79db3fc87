// Tensor element types. Values are ggml's `ggml_type` ids, so a GGUF tensor's type field maps directly.
// Each type has a trait row (block size, bytes per block, reference converters) in kernels/types.c.
#ifndef VLM_TYPES_H
#define VLM_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

enum vlm_type {
    VLM_TYPE_F32 = 0,
    VLM_TYPE_F16 = 1,
    VLM_TYPE_Q4_0 = 2,
    VLM_TYPE_Q4_1 = 3,
    VLM_TYPE_Q5_0 = 6,
    VLM_TYPE_Q5_1 = 7,
    VLM_TYPE_Q8_0 = 8,
    VLM_TYPE_Q8_1 = 9,
    VLM_TYPE_Q2_K = 10,
    VLM_TYPE_Q3_K = 11,
    VLM_TYPE_Q4_K = 12,
    VLM_TYPE_Q5_K = 13,
    VLM_TYPE_Q6_K = 14,
    VLM_TYPE_Q8_K = 15,
    VLM_TYPE_I8 = 24,
    VLM_TYPE_I16 = 25,
    VLM_TYPE_I32 = 26,
    VLM_TYPE_I64 = 27,
    VLM_TYPE_F64 = 28,
    VLM_TYPE_BF16 = 30,
    VLM_TYPE_COUNT = 40, // ids below this are valid ggml ids; not all are supported (see vlm_type_traits)
};

// Reference (plain C) converters. `n` is a multiple of the type's block size.
typedef void (*vlm_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*vlm_from_float_fn)(const float *src, void *dst, int64_t n);

struct vlm_type_traits {
    const char *name;           // "Q4_K"; NULL for ids ggml does not define
    int64_t blck_size;          // elements per block (1 for plain types)
    size_t type_size;           // bytes per block
    bool known;                 // a size is known, so a GGUF file using it can be validated and skipped
    vlm_to_float_fn to_float;   // NULL when we cannot compute with the type
    vlm_from_float_fn from_float; // NULL when we cannot quantize to the type
};

// Returns the trait row of `type`; for ids outside [0, VLM_TYPE_COUNT) a row with name NULL, known false.
VLM_API const struct vlm_type_traits *vlm_type_traits(int type);

// Name of a type ("F16"), or "?" for unknown ids.
VLM_API const char *vlm_type_name(int type);

// Bytes of a row of `n` elements. `n` must be a multiple of the block size (checked by the GGUF reader).
VLM_API size_t vlm_row_size(enum vlm_type type, int64_t n);

// True when the CPU backend can compute with weights of this type (has a to_float and a dot product).
VLM_API bool vlm_type_is_supported(enum vlm_type type);

// IEEE binary16 <-> binary32, exact for every value (subnormals, inf, NaN); round-to-nearest-even on the way
// down. Inline because they sit in reference loops.
static inline float vlm_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        // subnormal half: normalise
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t vlm_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) { // inf or NaN
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u | ((absx >> 13) & 0x3ffu) : 0));
    }
    if (absx >= 0x477ff000u) { // rounds to >= 65520: overflow to inf
        return (uint16_t)(sign | 0x7c00u);
    }
    if (absx < 0x38800000u) { // below the smallest normal half: subnormal or zero
        if (absx < 0x33000000u) {
            return (uint16_t)sign;
        }
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; // 14..24
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (half & 1u))) {
            half++;
        }
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((absx >> 13) - (112u << 10));
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) {
        half++;
    }
    return (uint16_t)(sign | half);
}

static inline float vlm_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// Round-to-nearest-even, NaN kept quiet (as ggml's ggml_compute_fp32_to_bf16).
static inline uint16_t vlm_fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 64u);
    }
    return (uint16_t)((x + (0x7fffu + ((x >> 16) & 1u))) >> 16);
}

#ifdef __cplusplus
}
#endif

#endif // VLM_TYPES_H
