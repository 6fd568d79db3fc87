// Packed weight copies for the CPU backend (see repack.h): the Q4_0 x16 and BF16 x16 layouts, their packers, and
// the registry that maps a weight tensor to its packed copy.
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

size_t vlm__bf16x16_group_size(int64_t n) {
    return (size_t)((n + 1) / 2) * 64; // a pair of 16 rows is one 64-byte vector
}

// F16 -> BF16 for every half value (128 KB, made once): the conversion with its subnormal handling does not
// vectorize, and a ViT-L has 300 M weights to convert at load.
static uint16_t f16_to_bf16[65536];
static pthread_once_t f16_to_bf16_once = PTHREAD_ONCE_INIT;

static void f16_to_bf16_init(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        f16_to_bf16[h] = vlm_fp32_to_bf16(vlm_fp16_to_fp32((uint16_t)h));
    }
}

void vlm__pack_bf16x16(enum vlm_type type, const void *src, size_t src_row, int rows, void *dst, int64_t n) {
    const int64_t n2 = (n + 1) / 2;
    uint32_t *pairs = dst; // pair p of row r at 16 p + r
    uint16_t row_bf16[2 * 4096];
    memset(dst, 0, (size_t)n2 * 64);
    for (int r = 0; r < rows; r++) {
        const char *row = (const char *)src + (size_t)r * src_row;
        // in pieces of the stack buffer; each piece converted by a plain loop the compiler vectorizes
        for (int64_t i0 = 0; i0 < n; i0 += 2 * 4096) {
            const int64_t len = n - i0 < 2 * 4096 ? n - i0 : 2 * 4096;
            if (type == VLM_TYPE_BF16) {
                memcpy(row_bf16, (const uint16_t *)(const void *)row + i0, (size_t)len * 2);
            } else if (type == VLM_TYPE_F16) {
                const uint16_t *h = (const uint16_t *)(const void *)row + i0;
                pthread_once(&f16_to_bf16_once, f16_to_bf16_init);
                for (int64_t i = 0; i < len; i++) {
                    row_bf16[i] = f16_to_bf16[h[i]];
                }
            } else {
                const float *f = (const float *)(const void *)row + i0;
                for (int64_t i = 0; i < len; i++) {
                    row_bf16[i] = vlm_fp32_to_bf16(f[i]);
                }
            }
            if (len & 1) {
                row_bf16[len] = 0;
            }
            for (int64_t i = 0; i < len; i += 2) {
                pairs[(size_t)((i0 + i) / 2) * 16 + (size_t)r] =
                    (uint32_t)row_bf16[i] | (uint32_t)row_bf16[i + 1] << 16;
            }
        }
    }
}

size_t vlm__bf16p_row_size(int64_t n) {
    return ((size_t)((n + 1) / 2) * 4 + 63) & ~(size_t)63;
}

bool vlm__cpu_bf16_dot(void) {
#if defined(VLM_HAVE_X86)
    return vlm__cpu_isa_get() >= VLM_CPU_ISA_AVX512 && vlm__cpu_has_bf16();
#else
    return false;
#endif
}

bool vlm__packed_quant_bf16p(const float *src, void *dst, int64_t n) {
#if defined(VLM_HAVE_X86)
    if (vlm__cpu_bf16_dot()) {
        vlm__quant_row_bf16p_avx512(src, dst, n);
        return true;
    }
#endif
    (void)src;
    (void)dst;
    (void)n;
    return false;
}

bool vlm__packed_gemm_bf16x16(int64_t n, float *s, size_t s_stride, const void *w, size_t g_stride, int ng,
                              int last_rows, const void *x, size_t x_stride, int nx, const float *bias) {
#if defined(VLM_HAVE_X86)
    if (vlm__cpu_bf16_dot()) {
        vlm__gemm_bf16x16_avx512(n, s, s_stride, w, g_stride, ng, last_rows, x, x_stride, nx, bias);
        return true;
    }
#endif
    (void)n;
    (void)s;
    (void)s_stride;
    (void)w;
    (void)g_stride;
    (void)ng;
    (void)last_rows;
    (void)x;
    (void)x_stride;
    (void)nx;
    (void)bias;
    return false;
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
    enum vlm_cpu_pack_format format;
    uint8_t *dst;
    size_t group_size;
    int64_t n_groups;
};

static void pack_groups(void *arg, int ith, int nth) {
    const struct pack_ctx *pc = arg;
    int64_t lo, hi;
    vlm__cpu_split(pc->n_groups, ith, nth, &lo, &hi);
    for (int64_t g = lo; g < hi; g++) {
        const char *src = (const char *)pc->t->data + (size_t)(g * VLM_PACK_ROWS) * pc->t->nb[1];
        uint8_t *dst = pc->dst + (size_t)g * pc->group_size;
        if (pc->format == VLM_PACK_Q4_0X16) {
            vlm__pack_q4_0x16(src, pc->t->nb[1], dst, pc->t->ne[0]);
        } else {
            const int64_t left = pc->t->ne[1] - g * VLM_PACK_ROWS;
            vlm__pack_bf16x16(pc->t->type, src, pc->t->nb[1], left < VLM_PACK_ROWS ? (int)left : VLM_PACK_ROWS, dst,
                              pc->t->ne[0]);
        }
    }
}

static void registry_add(struct entry *e);

static int pack(struct vlm_backend *be, const struct vlm_tensor *t, enum vlm_cpu_pack_format format) {
    struct pack_ctx pc = {.t = t, .format = format};
    int last_rows = VLM_PACK_ROWS;
    if (format == VLM_PACK_Q4_0X16) {
        pc.group_size = vlm__q4_0x16_group_size(t->ne[0]);
        pc.n_groups = t->ne[1] / VLM_PACK_ROWS;
    } else {
        pc.group_size = vlm__bf16x16_group_size(t->ne[0]);
        pc.n_groups = (t->ne[1] + VLM_PACK_ROWS - 1) / VLM_PACK_ROWS;
        last_rows = (int)(t->ne[1] - (pc.n_groups - 1) * VLM_PACK_ROWS);
    }
    const size_t bytes = pc.group_size * (size_t)pc.n_groups;
    struct entry *e = malloc(sizeof *e);
    pc.dst = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!e || !pc.dst) {
        VLM_LOGW("cpu backend: no memory to pack %s (%zu bytes): using the plain kernels", t->name ? t->name : "?",
                 bytes);
        free(e);
        free(pc.dst);
        return VLM_ENOMEM;
    }
    vlm__cpu_parallel(vlm__cpu_ctx(be), pack_groups, &pc, (int64_t)bytes);
    *e = (struct entry){
        .be = be,
        .key = t->data,
        .ne0 = t->ne[0],
        .ne1 = t->ne[1],
        .packed = {.format = format,
                   .type = t->type,
                   .n_groups = pc.n_groups,
                   .last_rows = last_rows,
                   .group_size = pc.group_size,
                   .data = pc.dst},
    };
    // A tensor handed over twice keeps one copy: replace the older one.
    vlm__cpu_forget_weights(be, t);
    registry_add(e);
    return 0;
}

static bool packable(const struct vlm_backend *be, const struct vlm_tensor *t) {
    return is_cpu(be) && t->data && t->ne[2] == 1 && t->ne[3] == 1 && packing_enabled() &&
           t->nb[1] == vlm_row_size(t->type, t->ne[0]);
}

void vlm__cpu_prepare_weights(struct vlm_backend *be, const struct vlm_tensor *t) {
    if (!packable(be, t)) {
        return;
    }
    if (t->type == VLM_TYPE_Q4_0 && t->ne[1] >= VLM_PACK_ROWS && vlm__cpu_isa_best() >= VLM_CPU_ISA_AVX512) {
        (void)pack(be, t, VLM_PACK_Q4_0X16);
    } else if (t->type == VLM_TYPE_BF16 && vlm__cpu_bf16_dot()) {
        (void)pack(be, t, VLM_PACK_BF16X16);
    }
}

int vlm__cpu_set_precision(struct vlm_backend *be, const struct vlm_tensor *t, enum vlm_precision p) {
    if (t->type != VLM_TYPE_F32 && t->type != VLM_TYPE_F16) {
        return 0; // quantized and BF16 weights have one way to be multiplied
    }
    if (p != VLM_PRECISION_BF16) {
        vlm__cpu_forget_weights(be, t);
        return 0;
    }
    if (!packable(be, t) || !vlm__cpu_bf16_dot()) {
        return VLM_EUNSUPPORTED;
    }
    return pack(be, t, VLM_PACK_BF16X16);
}

static void registry_add(struct entry *e) {
    const size_t b = bucket_of(e->key);
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
    if (w->ne[1] < 1 || (w->type == VLM_TYPE_Q4_0 && w->ne[1] < VLM_PACK_ROWS)) {
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
    if (!found) {
        return false;
    }
    // the ISA path may have been switched since packing (tests, VLM_CPU_ISA)
    if (out->format == VLM_PACK_Q4_0X16) {
        if (vlm__cpu_isa_get() < VLM_CPU_ISA_AVX512) {
            return false;
        }
        if (out->n_groups > w->ne[1] / VLM_PACK_ROWS) {
            out->n_groups = w->ne[1] / VLM_PACK_ROWS;
        }
    } else {
        if (!vlm__cpu_bf16_dot()) {
            return false;
        }
        // a view of the first rows: fewer groups, the last one maybe partial
        const int64_t ng = (w->ne[1] + VLM_PACK_ROWS - 1) / VLM_PACK_ROWS;
        if (ng < out->n_groups) {
            out->n_groups = ng;
            out->last_rows = (int)(w->ne[1] - (ng - 1) * VLM_PACK_ROWS);
        } else if (ng == out->n_groups) {
            out->last_rows = (int)(w->ne[1] - (ng - 1) * VLM_PACK_ROWS);
        }
    }
    return true;
}
