// Prepared weights of the CPU backend: row-interleaved copies of weight matrices for the packed AVX-512 kernels,
// made when a weight is handed to the backend (vlm_tensor_from_host) and found again by the matmul.
//
// The tensor itself keeps pointing at the original bytes (the GGUF mapping), so every other op (get_rows on a
// tied embedding, tensor_get) sees the file layout; only the matmul looks the packed copy up. Entries are keyed
// by (backend, data pointer, type, row length) and dropped when the tensor is released or the backend freed, so
// a later mapping at the same address never meets a stale copy.
#ifndef VLM_CPU_REPACK_H
#define VLM_CPU_REPACK_H

#include <stddef.h>
#include <stdint.h>

#include "vlm/backend.h"

enum vlm_cpu_pack_format {
    VLM_PACK_Q4_0X16 = 1, // Q4_0 codes and scales, 16 rows interleaved (whole groups only)
    VLM_PACK_BF16X16 = 2, // BF16 pairs, 16 rows interleaved (a partial last group is zero-padded)
};

struct vlm_cpu_packed {
    enum vlm_cpu_pack_format format;
    enum vlm_type type; // weight type of the original
    int64_t n_groups;   // packed groups of VLM_PACK_ROWS rows; later rows are only in the original
    int last_rows;      // rows of the last group (VLM_PACK_ROWS unless the matrix ends in a partial group)
    size_t group_size;  // bytes between groups (a multiple of 64)
    const void *data;
};

// Packs `t` when its type has a packed layout and this CPU runs the packed kernels (VLM_CPU_REPACK=0 in the
// environment turns packing off): Q4_0 -> Q4_0 x16 (AVX-512), BF16 -> BF16 x16 (AVX512-BF16). Called for every
// tensor vlm_tensor_from_host gives the CPU backend; does nothing for other backends. Out of memory only loses
// the speed-up.
void vlm__cpu_prepare_weights(struct vlm_backend *be, const struct vlm_tensor *t);

// vlm_tensor_set_precision for the CPU backend: VLM_PRECISION_BF16 packs an F32 or F16 weight as BF16 x16 (its
// products are then those of BF16 weights); VLM_PRECISION_EXACT drops such a copy. VLM_EUNSUPPORTED where the
// CPU lacks AVX512-BF16 (or packing is off), VLM_ENOMEM when the copy cannot be made.
int vlm__cpu_set_precision(struct vlm_backend *be, const struct vlm_tensor *t, enum vlm_precision p);

// Drops the packed copy of `t` (a no-op when there is none).
void vlm__cpu_forget_weights(struct vlm_backend *be, const struct vlm_tensor *t);

// Drops every packed copy made for `be` (the backend is being freed).
void vlm__cpu_forget_backend(struct vlm_backend *be);

// The packed copy of weight `w` usable by the current ISA path: true and *out filled, or false. `w` may be a
// view of the first rows of a packed tensor.
bool vlm__cpu_packed_find(const struct vlm_backend *be, const struct vlm_tensor *w, struct vlm_cpu_packed *out);

#endif // VLM_CPU_REPACK_H
