// Internal declarations shared by the type table (kernels/types.c), the reference converters
// (kernels/cpu/quant-ref.c), the trait tables (kernels/cpu/quants.c) and the ISA-specific kernels
// (kernels/cpu/x86/quants-*.c). Nothing here is public API.
#ifndef VLM_CPU_QUANT_REF_H
#define VLM_CPU_QUANT_REF_H

#include <stdint.h>

#include "kernels/cpu/quants.h"

// ---- reference dequantizers (plain C, one element at a time; n is a multiple of the block size) -------------
void vlm__dequant_row_f32(const void *src, float *dst, int64_t n);
void vlm__dequant_row_f16(const void *src, float *dst, int64_t n);
void vlm__dequant_row_bf16(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q4_0(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q4_1(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q5_0(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q5_1(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q8_0(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q8_1(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q2_k(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q3_k(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q4_k(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q5_k(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q6_k(const void *src, float *dst, int64_t n);
void vlm__dequant_row_q8_k(const void *src, float *dst, int64_t n);

// ---- reference quantizers, bit-exact with ggml's quantize_row_*_ref -------------------------------------------
void vlm__quant_row_f32_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_f16_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_bf16_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q4_0_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q4_1_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q5_0_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q5_1_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_0_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_1_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_k_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q4_k_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q5_k_ref(const float *src, void *dst, int64_t n);
void vlm__quant_row_q6_k_ref(const float *src, void *dst, int64_t n);

// ---- scalar dot products (kernels/cpu/quants.c): the plain-C definition every SIMD path is tested against ----
void vlm__vec_dot_f32_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_f16_scalar(int64_t n, float *s, const void *w, const void *x);   // F16 weights, F32 x
void vlm__vec_dot_bf16_scalar(int64_t n, float *s, const void *w, const void *x);  // BF16 weights, BF16 x
void vlm__vec_dot_q4_0_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_1_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_0_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_1_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q8_0_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q2_k_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q3_k_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_k_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_k_scalar(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q6_k_scalar(int64_t n, float *s, const void *w, const void *x);

#if defined(VLM_HAVE_X86)
// ---- AVX2 + FMA + F16C (kernels/cpu/x86/quants-avx2.c) -------------------------------------------------------
void vlm__quant_row_q8_0_avx2(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_1_avx2(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_k_avx2(const float *src, void *dst, int64_t n);
void vlm__quant_row_bf16_avx2(const float *src, void *dst, int64_t n);
void vlm__vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_0_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_1_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_0_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_1_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_k_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_k_avx2(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q6_k_avx2(int64_t n, float *s, const void *w, const void *x);

// ---- AVX-512 F/BW/VL/DQ + VNNI + BF16 (kernels/cpu/x86/quants-avx512.c) --------------------------------------
void vlm__quant_row_q8_0_avx512(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_1_avx512(const float *src, void *dst, int64_t n);
void vlm__quant_row_q8_k_avx512(const float *src, void *dst, int64_t n);
void vlm__quant_row_bf16_avx512(const float *src, void *dst, int64_t n);
void vlm__vec_dot_f32_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_f16_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_bf16_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_0_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_1_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_0_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_1_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q8_0_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q5_k_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q4_k_avx512(int64_t n, float *s, const void *w, const void *x);
void vlm__vec_dot_q6_k_avx512(int64_t n, float *s, const void *w, const void *x);
#endif

#endif // VLM_CPU_QUANT_REF_H
