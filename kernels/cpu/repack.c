// Packed weight copies for the CPU backend (see repack.h): the Q4_0 x16 layout, its packer, and the registry
// that maps a weight tensor to its packed copy.
//
// The registry is process-wide (the backend state struct is shared with other op files) and guarded by a mutex:
// each matmul does one lookup, a few tens of nanoseconds against the microseconds of the product.
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/ops-cpu.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/repack.h"
#include "vlm/log.h"

// ---- layouts -------------------------------------------------------------------------------------------------

size_t vlm__q4_0x16_group_size(int64_t n) {
    // padded to 64 bytes so that every group's code blocks are aligned for full-width loads
    return ((size_t)(n / VLM_QK4_0) * (256 + 2 * VLM_PACK_ROWS) + 63) & ~(size_t)63;
}

void vlm__pack_q4_0x16(const void *src, size_t src_row, void *dst, int64_t n) {
    const int64_t nb = n / VLM_QK4_0;
    uint8_t *codes = dst;
    uint16_t *scales = (uint16_t *)(void *)(codes + (size_t)nb * 256);
    for (int r = 0; r < VLM_PACK_ROWS; r++) {
        const struct vlm_block_q4_0 *row = (const struct vlm_block_q4_0 *)(const void *)((const char *)src +
                                                                                         (size_t)r * src_row);
        for (int64_t i = 0; i < nb; i++) {
            uint8_t *blk = codes + (size_t)i * 256;
            for (int c = 0; c < 4; c++) {
                memcpy(blk + 64 * c + 4 * r, row[i].qs + 4 * c, 4);
            }
            scales[i * VLM_PACK_ROWS + r] = row[i].d;
        }
    }
}

size_t vlm__q8_0s_row_size(int64_t n) {
    const size_t bytes = (size_t)n + (size_t)(n / VLM_QK8_0) * 8;
    return (bytes + 63) & ~(size_t)63;
}

bool vlm__packed_quant_q8_0s(const float *src, void *dst, int64_t n, int off) {
#if defined(VLM_HAVE_X86)
    if (vlm__cpu_isa_best() >= VLM_CPU_ISA_AVX512) {
        vlm__quant_row_q8_0s_avx512(src, dst, n, off);
        return true;
    }
#endif
    (void)src;
    (void)dst;
    (void)n;
    (void)off;
    return false;
}

bool vlm__packed_gemm_q4_0x16(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              const void *x, size_t x_stride, int nx) {
#if defined(VLM_HAVE_X86)
    if (vlm__cpu_isa_best() >= VLM_CPU_ISA_AVX512) {
        vlm__gemm_q4_0x16_avx512(n, s, s_stride, w, g_stride, ng, x, x_stride, nx);
        return true;
    }
#endif
    (void)n;
    (void)s;
    (void)s_stride;
    (void)w;
    (void)g_stride;
    (void)ng;
    (void)x;
    (void)x_stride;
    (void)nx;
    return false;
}

// ---- registry ------------------------------------------------------------------------------------------------

struct entry {
    struct entry *next;
    const struct vlm_backend *be;
    const void *key; // the tensor's data pointer
    int64_t ne0, ne1;
    struct vlm_cpu_packed packed;
};

#define N_BUCKETS 1024

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *buckets[N_BUCKETS];

static size_t bucket_of(const void *key) {
    uintptr_t k = (uintptr_t)key;
    k ^= k >> 17;
    k *= (uintptr_t)0x9e3779b97f4a7c15ULL;
    return (size_t)(k >> 7) % N_BUCKETS;
}

static bool is_cpu(const struct vlm_backend *be) {
    return be && be->iface && be->iface->matmul == vlm__cpu_matmul;
}

static bool packing_enabled(void) {
    static atomic_int enabled = -1; // racing first calls compute the same value
    int v = atomic_load(&enabled);
    if (v < 0) {
        const char *env = getenv("VLM_CPU_REPACK");
        v = !(env && strcmp(env, "0") == 0);
        atomic_store(&enabled, v);
    }
    return v > 0;
}

struct pack_ctx {
    const struct vlm_tensor *t;
    uint8_t *dst;
    size_t group_size;
    int64_t n_groups;
};

static void pack_groups(void *arg, int ith, int nth) {
    const struct pack_ctx *pc = arg;
    int64_t lo, hi;
    vlm__cpu_split(pc->n_groups, ith, nth, &lo, &hi);
    for (int64_t g = lo; g < hi; g++) {
        vlm__pack_q4_0x16((const char *)pc->t->data + (size_t)(g * VLM_PACK_ROWS) * pc->t->nb[1], pc->t->nb[1],
                          pc->dst + (size_t)g * pc->group_size, pc->t->ne[0]);
    }
}

void vlm__cpu_prepare_weights(struct vlm_backend *be, const struct vlm_tensor *t) {
    if (!is_cpu(be) || !t->data || t->type != VLM_TYPE_Q4_0 || t->ne[2] != 1 || t->ne[3] != 1 ||
        t->ne[1] < VLM_PACK_ROWS || vlm__cpu_isa_best() < VLM_CPU_ISA_AVX512 || !packing_enabled()) {
        return;
    }
    struct pack_ctx pc = {
        .t = t,
        .group_size = vlm__q4_0x16_group_size(t->ne[0]),
        .n_groups = t->ne[1] / VLM_PACK_ROWS,
    };
    const size_t bytes = pc.group_size * (size_t)pc.n_groups;
    struct entry *e = malloc(sizeof *e);
    pc.dst = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!e || !pc.dst) {
        VLM_LOGW("cpu backend: no memory to pack %s (%zu bytes): using the plain kernels", t->name ? t->name : "?",
                 bytes);
        free(e);
        free(pc.dst);
        return;
    }
    vlm__cpu_parallel(vlm__cpu_ctx(be), pack_groups, &pc, (int64_t)bytes);
    *e = (struct entry){
        .be = be,
        .key = t->data,
        .ne0 = t->ne[0],
        .ne1 = t->ne[1],
        .packed = {.type = t->type, .n_groups = pc.n_groups, .group_size = pc.group_size, .data = pc.dst},
    };
    // A tensor handed over twice keeps one copy: replace the older one.
    vlm__cpu_forget_weights(be, t);
    const size_t b = bucket_of(t->data);
    pthread_mutex_lock(&reg_lock);
    e->next = buckets[b];
    buckets[b] = e;
    pthread_mutex_unlock(&reg_lock);
}

static void free_entry(struct entry *e) {
    free((void *)(uintptr_t)e->packed.data);
    free(e);
}

void vlm__cpu_forget_weights(struct vlm_backend *be, const struct vlm_tensor *t) {
    // `be` is only compared, never followed: a tensor may be released after its backend was freed (whose
    // entries were dropped then), and other backends never have entries.
    if (!t->data) {
        return;
    }
    const size_t b = bucket_of(t->data);
    struct entry *dead = NULL;
    pthread_mutex_lock(&reg_lock);
    for (struct entry **pp = &buckets[b]; *pp; pp = &(*pp)->next) {
        struct entry *e = *pp;
        // views of fewer rows share the data pointer: only the whole tensor owns the copy
        if (e->be == be && e->key == t->data && e->packed.type == t->type && e->ne0 == t->ne[0] &&
            e->ne1 == t->ne[1]) {
            *pp = e->next;
            dead = e;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    if (dead) {
        free_entry(dead);
    }
}

void vlm__cpu_forget_backend(struct vlm_backend *be) {
    pthread_mutex_lock(&reg_lock);
    for (size_t b = 0; b < N_BUCKETS; b++) {
        struct entry **pp = &buckets[b];
        while (*pp) {
            struct entry *e = *pp;
            if (e->be == be) {
                *pp = e->next;
                free_entry(e);
            } else {
                pp = &e->next;
            }
        }
    }
    pthread_mutex_unlock(&reg_lock);
}

bool vlm__cpu_packed_find(const struct vlm_backend *be, const struct vlm_tensor *w, struct vlm_cpu_packed *out) {
    if (w->type != VLM_TYPE_Q4_0 || vlm__cpu_isa_get() < VLM_CPU_ISA_AVX512 || w->ne[1] < VLM_PACK_ROWS) {
        return false;
    }
    bool found = false;
    const size_t b = bucket_of(w->data);
    pthread_mutex_lock(&reg_lock);
    for (const struct entry *e = buckets[b]; e; e = e->next) {
        if (e->be == be && e->key == w->data && e->packed.type == w->type && e->ne0 == w->ne[0] &&
            e->ne1 >= w->ne[1] && w->nb[1] == vlm_row_size(w->type, w->ne[0])) {
            *out = e->packed;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    if (found && out->n_groups > w->ne[1] / VLM_PACK_ROWS) {
        out->n_groups = w->ne[1] / VLM_PACK_ROWS;
    }
    return found;
}
