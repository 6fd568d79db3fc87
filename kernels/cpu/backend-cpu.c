// CPU backend: host memory, the persistent thread pool, scratch buffers, and the iface table that points at
// the op files (ops-*.c).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/ops-cpu.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/repack.h"
#include "vlm/log.h"

// Below this much work (elements touched) an op runs on the calling thread: waking workers costs more.
#define PARALLEL_MIN_WORK 16384

static void *xalloc_aligned(size_t size) {
    size = (size + 63) & ~(size_t)63;
    return aligned_alloc(64, size ? size : 64);
}

static _Noreturn void oom(const char *what, size_t size) {
    VLM_LOGE("cpu backend: out of memory growing %s to %zu bytes", what, size);
    fprintf(stderr, "vlmd: cpu backend: out of memory growing %s to %zu bytes\n", what, size);
    abort();
}

void *vlm__cpu_wdata(struct vlm_cpu_ctx *c, size_t size) {
    if (size > c->wdata_size) {
        size_t want = size + size / 4;
        void *p = xalloc_aligned(want);
        if (!p) {
            oom("conversion buffer", want);
        }
        free(c->wdata);
        c->wdata = p;
        c->wdata_size = want;
    }
    return c->wdata;
}

float *vlm__cpu_tscratch(struct vlm_cpu_ctx *c, size_t n_floats) {
    if (n_floats > c->tscratch_stride) {
        size_t stride = (n_floats + n_floats / 4 + 15) & ~(size_t)15;
        float *p = xalloc_aligned(stride * sizeof(float) * (size_t)c->n_threads);
        if (!p) {
            oom("thread scratch", stride * sizeof(float) * (size_t)c->n_threads);
        }
        free(c->tscratch);
        c->tscratch = p;
        c->tscratch_stride = stride;
    }
    return c->tscratch;
}

void vlm__cpu_parallel(struct vlm_cpu_ctx *c, vlm_threadpool_fn fn, void *ctx, int64_t work) {
    if (c->n_threads == 1 || work < PARALLEL_MIN_WORK) {
        fn(ctx, 0, 1);
        return;
    }
    vlm__threadpool_run(c->pool, fn, ctx);
}

// ---- iface: lifetime and memory ------------------------------------------------------------------------------

static void cpu_free(struct vlm_backend *be) {
    struct vlm_cpu_ctx *c = vlm__cpu_ctx(be);
    vlm__cpu_forget_backend(be);
    vlm__threadpool_free(c->pool);
    free(c->wdata);
    free(c->tscratch);
    free(c);
    free(be);
}

static int cpu_synchronize(struct vlm_backend *be) {
    (void)be;
    return 0;
}

static bool cpu_supports_type(const struct vlm_backend *be, enum vlm_type type) {
    (void)be;
    const struct vlm_type_traits *tt = vlm_type_traits((int)type);
    if (!tt->name || !tt->to_float) {
        return false;
    }
    const struct vlm_cpu_type_traits *ct = vlm__cpu_type_traits(type);
    if (!ct || !ct->vec_dot) {
        return false;
    }
    return ct->vec_dot_type == VLM_TYPE_F32 || ct->from_float != NULL;
}

static int cpu_alloc(struct vlm_backend *be, size_t size, void **data) {
    (void)be;
    void *p = xalloc_aligned(size);
    if (!p) {
        return VLM_ENOMEM;
    }
    memset(p, 0, size);
    *data = p;
    return 0;
}

static void cpu_release(struct vlm_backend *be, void *data) {
    (void)be;
    free(data);
}

static int cpu_from_host(struct vlm_backend *be, const void *host, size_t size, void **data, bool *owned) {
    (void)be;
    (void)size;
    // The mapping outlives the tensor (header contract), so borrowing is safe. Ops never write weights.
    *data = (void *)(uintptr_t)host;
    *owned = false;
    return 0;
}

static int cpu_set(struct vlm_backend *be, void *data, const void *src, size_t size) {
    (void)be;
    memcpy(data, src, size);
    return 0;
}

static int cpu_get(struct vlm_backend *be, const void *data, void *dst, size_t size) {
    (void)be;
    memcpy(dst, data, size);
    return 0;
}

static const struct vlm_backend_iface cpu_iface = {
    .free = cpu_free,
    .synchronize = cpu_synchronize,
    .supports_type = cpu_supports_type,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .from_host = cpu_from_host,
    .set = cpu_set,
    .get = cpu_get,
    .matmul = vlm__cpu_matmul,
    .get_rows = vlm__cpu_get_rows,
    .rms_norm = vlm__cpu_rms_norm,
    .layer_norm = vlm__cpu_layer_norm,
    .add = vlm__cpu_add,
    .mul = vlm__cpu_mul,
    .scale = vlm__cpu_scale,
    .silu = vlm__cpu_silu,
    .gelu = vlm__cpu_gelu,
    .swiglu = vlm__cpu_swiglu,
    .softmax = vlm__cpu_softmax,
    .rope = vlm__cpu_rope,
    .copy = vlm__cpu_copy,
    .attention = vlm__cpu_attention,
};

int vlm__backend_cpu_new(const struct vlm_backend_cpu_params *params, struct vlm_backend **out, struct vlm_diag *diag) {
    int n_threads = params ? params->n_threads : 0;
    if (n_threads <= 0) {
        n_threads = vlm__cpu_count();
    }
    if (n_threads > 1024) {
        return vlm_diag_set(diag, VLM_EINVAL, "cpu backend: n_threads %d out of range (1..1024)", n_threads);
    }
    struct vlm_backend *be = calloc(1, sizeof *be);
    struct vlm_cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return vlm_diag_set(diag, VLM_ENOMEM, "cpu backend: out of memory");
    }
    int rc = vlm__threadpool_new(n_threads, &c->pool);
    if (rc < 0) {
        free(be);
        free(c);
        return vlm_diag_set(diag, rc, "cpu backend: cannot start %d threads: %s", n_threads, vlm_strerror(rc));
    }
    c->n_threads = n_threads;
    be->iface = &cpu_iface;
    be->n_threads = n_threads;
    be->ctx = c;
    snprintf(be->name, sizeof be->name, "cpu");
    VLM_LOGD("cpu backend: %d threads, %s kernels", n_threads, vlm__cpu_isa_name(vlm__cpu_isa_get()));
    *out = be;
    return 0;
}
