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

struct vlm_cpu_packed {
    enum vlm_type type; // weight type of the original
    int64_t n_groups;   // packed groups of VLM_PACK_ROWS rows; later rows are only in the original
    size_t group_size;  // bytes between groups (a multiple of 64)
    const void *data;
};

// Packs `t` when its type has a packed layout and this CPU runs the packed kernels (VLM_CPU_REPACK=0 in the
// environment turns packing off). Called for every tensor vlm_tensor_from_host gives the CPU backend; does
// nothing for other backends. Out of memory only loses the speed-up.
void vlm__cpu_prepare_weights(struct vlm_backend *be, const struct vlm_tensor *t);

// Drops the packed copy of `t` (a no-op when there is none).
void vlm__cpu_forget_weights(struct vlm_backend *be, const struct vlm_tensor *t);

// Drops every packed copy made for `be` (the backend is being freed).
void vlm__cpu_forget_backend(struct vlm_backend *be);

// The packed copy of weight `w` usable by the current ISA path: true and *out filled, or false. `w` may be a
// view of the first rows of a packed tensor.
bool vlm__cpu_packed_find(const struct vlm_backend *be, const struct vlm_tensor *w, struct vlm_cpu_packed *out);

#endif // VLM_CPU_REPACK_H
