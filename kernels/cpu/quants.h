// Quantized block layouts (bit-exact with ggml's, see ../shared/docs/gguf-llava.md §2) and the CPU compute
// traits of each tensor type: which activation format a dot product wants and the dot product itself, chosen
// at run time for the instruction set (scalar, AVX2, AVX-512).
#ifndef VLM_CPU_QUANTS_H
#define VLM_CPU_QUANTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/types.h"

#define VLM_QK4_0 32
#define VLM_QK4_1 32
#define VLM_QK5_0 32
#define VLM_QK5_1 32
#define VLM_QK8_0 32
#define VLM_QK8_1 32
#define VLM_QK_K 256
#define VLM_K_SCALE_SIZE 12

// fp16 fields are stored as raw uint16_t bits.
struct vlm_block_q4_0 {
    uint16_t d;
    uint8_t qs[VLM_QK4_0 / 2];
};
struct vlm_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[VLM_QK4_1 / 2];
};
struct vlm_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[VLM_QK5_0 / 2];
};
struct vlm_block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[VLM_QK5_1 / 2];
};
struct vlm_block_q8_0 {
    uint16_t d;
    int8_t qs[VLM_QK8_0];
};
struct vlm_block_q8_1 { // activation format: d and s = d * sum(qs) as fp16
    uint16_t d;
    uint16_t s;
    int8_t qs[VLM_QK8_1];
};
struct vlm_block_q2_k {
    uint8_t scales[VLM_QK_K / 16];
    uint8_t qs[VLM_QK_K / 4];
    uint16_t d;
    uint16_t dmin;
};
struct vlm_block_q3_k {
    uint8_t hmask[VLM_QK_K / 8];
    uint8_t qs[VLM_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
};
struct vlm_block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[VLM_K_SCALE_SIZE];
    uint8_t qs[VLM_QK_K / 2];
};
struct vlm_block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[VLM_K_SCALE_SIZE];
    uint8_t qh[VLM_QK_K / 8];
    uint8_t qs[VLM_QK_K / 2];
};
struct vlm_block_q6_k {
    uint8_t ql[VLM_QK_K / 2];
    uint8_t qh[VLM_QK_K / 4];
    int8_t scales[VLM_QK_K / 16];
    uint16_t d;
};
struct vlm_block_q8_k { // activation format for K-quant dot products
    float d;
    int8_t qs[VLM_QK_K];
    int16_t bsums[VLM_QK_K / 16];
};

_Static_assert(sizeof(struct vlm_block_q4_0) == 18, "q4_0 block size");
_Static_assert(sizeof(struct vlm_block_q4_1) == 20, "q4_1 block size");
_Static_assert(sizeof(struct vlm_block_q5_0) == 22, "q5_0 block size");
_Static_assert(sizeof(struct vlm_block_q5_1) == 24, "q5_1 block size");
_Static_assert(sizeof(struct vlm_block_q8_0) == 34, "q8_0 block size");
_Static_assert(sizeof(struct vlm_block_q8_1) == 36, "q8_1 block size");
_Static_assert(sizeof(struct vlm_block_q2_k) == 84, "q2_k block size");
_Static_assert(sizeof(struct vlm_block_q3_k) == 110, "q3_k block size");
_Static_assert(sizeof(struct vlm_block_q4_k) == 144, "q4_k block size");
_Static_assert(sizeof(struct vlm_block_q5_k) == 176, "q5_k block size");
_Static_assert(sizeof(struct vlm_block_q6_k) == 210, "q6_k block size");
_Static_assert(sizeof(struct vlm_block_q8_k) == 292, "q8_k block size");

// Instruction-set paths. Chosen once at first use (best the CPU has; VLM_CPU_ISA=scalar|avx2|avx512 in the
// environment caps it) and switchable by tests.
enum vlm_cpu_isa {
    VLM_CPU_ISA_SCALAR = 0,
    VLM_CPU_ISA_AVX2 = 1,   // AVX2 + FMA + F16C
    VLM_CPU_ISA_AVX512 = 2, // AVX-512 F/BW/VL/DQ + VNNI (+ BF16 when present)
};

// Dot product of one weight row (n elements, type T, blocks contiguous) with one activation row already
// converted to T's vec_dot_type. Writes the float result to *s.
typedef void (*vlm_vec_dot_fn)(int64_t n, float *s, const void *w, const void *x);

// Tile of dot products for prefill: s[ix * s_stride + iw] = dot(row iw of w, row ix of x) for iw < nw, ix < nx.
// Weight rows are w_stride bytes apart, activation rows x_stride bytes apart (activations already converted to
// vec_dot_type); s_stride counts floats. Any nw, nx >= 1 is accepted: the kernel tiles internally so that each
// weight block, once loaded and unpacked into registers, is used against several activation rows. Results equal
// vec_dot's up to float summation order.
typedef void (*vlm_vec_dot_nx_fn)(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                  const void *x, size_t x_stride, int nw, int nx);

// Register tile of the multi-row kernels: the largest weight-rows x activation-rows block one kernel call keeps
// in registers (AVX-512: 4 x 4 for quantized types, 4 x 6 for F32/F16/BF16; AVX2: 4 x 2 floats, 2 x 4 Q8_0-like).
// Callers get the best rate when nw is a multiple of VLM_NX_MAX_W and nx one of VLM_NX_MAX_X (or simply large:
// a 16 x 32 call is split into full tiles plus small edge tiles); any nw, nx >= 1 is correct.
#define VLM_NX_MAX_W 4
#define VLM_NX_MAX_X 4

struct vlm_cpu_type_traits {
    enum vlm_type vec_dot_type;  // format activations are converted to (F32, F16, BF16, Q8_0, Q8_1, Q8_K)
    vlm_from_float_fn from_float; // F32 -> vec_dot_type for activations (NULL when vec_dot_type is F32)
    vlm_vec_dot_fn vec_dot;       // NULL when the type cannot be used for compute
    vlm_vec_dot_nx_fn vec_dot_nx; // optional multi-row kernel (NULL: call vec_dot per pair)
};

#if defined(VLM_HAVE_X86)
// Multi-row kernels (kernels/cpu/x86/quants-avx512.c, quants-avx2.c), reached through the trait tables.
void vlm__vec_dot_f32_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                                size_t x_stride, int nw, int nx);
void vlm__vec_dot_f16_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                                size_t x_stride, int nw, int nx);
void vlm__vec_dot_bf16_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q4_0_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q4_1_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q5_0_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q5_1_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q8_0_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q4_k_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q5_k_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_q6_k_nx_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride,
                                 const void *x, size_t x_stride, int nw, int nx);
void vlm__vec_dot_f32_nx_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                              size_t x_stride, int nw, int nx);
void vlm__vec_dot_f16_nx_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                              size_t x_stride, int nw, int nx);
void vlm__vec_dot_q4_0_nx_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                               size_t x_stride, int nw, int nx);
void vlm__vec_dot_q5_0_nx_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                               size_t x_stride, int nw, int nx);
void vlm__vec_dot_q8_0_nx_avx2(int64_t n, float *s, size_t s_stride, const void *w, size_t w_stride, const void *x,
                               size_t x_stride, int nw, int nx);
#endif

// ---- Row-interleaved ("packed") weights ------------------------------------------------------------------------
// Copies of weight matrices in a layout made for the AVX-512 kernels, made once at load (kernels/cpu/repack.c).
//
// Q4_0 x16: groups of 16 consecutive rows. A group of rows with n elements (nb = n / 32 blocks) is nb * 288
// bytes rounded up to a multiple of 64: first nb code blocks of 256 bytes (block i, part c = 0..3, 64 bytes:
// bytes 4r..4r+3 are row r's qs[4c..4c+3] of block i), then nb x 16 fp16 scales (row r's d of block i at 16 i + r).
#define VLM_PACK_ROWS 16
size_t vlm__q4_0x16_group_size(int64_t n);
// Packs rows [0, 16) of a Q4_0 matrix (rows src_row bytes apart) into one group.
void vlm__pack_q4_0x16(const void *src, size_t src_row, void *dst, int64_t n);

// Split Q8_0 activations for the packed kernels: a row of n elements (nb blocks) is int8 qs[n] (Q8_0's codes in
// element order), float d[nb] (Q8_0's fp16 scale, widened), int32 c[nb] = -off * sum of the block's codes (the
// weight code offset: 8 for Q4_0), vlm__q8_0s_row_size(n) bytes (a multiple of 64).
size_t vlm__q8_0s_row_size(int64_t n);

// Portable entry points of the two kernels below (tests, benchmarks): false when this build or CPU lacks them.
bool vlm__packed_quant_q8_0s(const float *src, void *dst, int64_t n, int off);
bool vlm__packed_gemm_q4_0x16(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              const void *x, size_t x_stride, int nx);

#if defined(VLM_HAVE_X86)
void vlm__quant_row_q8_0s_avx512(const float *src, void *dst, int64_t n, int off);
// s[t * s_stride + 16 * g + r] = dot(row r of group g, activation row t) for g < ng, t < nx. Groups are g_stride
// bytes apart (64-byte aligned), activation rows x_stride bytes apart (split Q8_0, offset 8).
void vlm__gemm_q4_0x16_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              const void *x, size_t x_stride, int nx);
#endif

// BF16 x16: groups of 16 consecutive rows as BF16 pairs. A group of rows with n elements is (n + 1) / 2 pairs of
// 64 bytes: dword lane r of pair p holds row r's elements 2p (low half) and 2p + 1 (high half), zero past the row's
// end (odd n) and in the rows of a partial last group. Activations for it are BF16 rows zero-padded to even
// length (vlm__quant_row_bf16p_avx512), 64-byte aligned.
size_t vlm__bf16x16_group_size(int64_t n);
// Packs rows [0, rows) (rows <= 16, rows src_row bytes apart, type F32, F16 or BF16) into one group.
void vlm__pack_bf16x16(enum vlm_type type, const void *src, size_t src_row, int rows, void *dst, int64_t n);
size_t vlm__bf16p_row_size(int64_t n);
// True when this CPU runs the BF16 x16 kernels (AVX-512 path with AVX512-BF16).
bool vlm__cpu_bf16_dot(void);
bool vlm__packed_gemm_bf16x16(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              int last_rows, const void *x, size_t x_stride, int nx, const float *bias);
bool vlm__packed_quant_bf16p(const float *src, void *dst, int64_t n);

#if defined(VLM_HAVE_X86)
void vlm__quant_row_bf16p_avx512(const float *src, void *dst, int64_t n);
// s[t * s_stride + 16 * g + r] (+ bias[16 g + r] when bias is not NULL) = dot(row r of group g, activation row t)
// for g < ng, t < nx, r < 16 (r < last_rows in the last group).
void vlm__gemm_bf16x16_avx512(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              int last_rows, const void *x, size_t x_stride, int nx, const float *bias);
#endif

// Traits for the current ISA path; NULL for types the CPU backend cannot compute with.
const struct vlm_cpu_type_traits *vlm__cpu_type_traits(enum vlm_type type);
// Traits of a specific path (for tests comparing paths); NULL if that path lacks the type or the CPU lacks it.
const struct vlm_cpu_type_traits *vlm__cpu_type_traits_isa(enum vlm_type type, enum vlm_cpu_isa isa);

enum vlm_cpu_isa vlm__cpu_isa_best(void);    // best path this CPU can run
#if defined(VLM_HAVE_X86)
bool vlm__cpu_has_bf16(void);                // the CPU has AVX512-BF16 (whatever path is in use)
#endif
enum vlm_cpu_isa vlm__cpu_isa_get(void);     // path in use
int vlm__cpu_isa_set(enum vlm_cpu_isa isa);  // VLM_EUNSUPPORTED if the CPU lacks it
const char *vlm__cpu_isa_name(enum vlm_cpu_isa isa);

#endif // VLM_CPU_QUANTS_H
