// Matrix multiplication dst[t][o] = sum_i w[o][i] x[t][i] for every weight type with CPU traits.
//
// Activation rows are converted once per call to the weight type's vec_dot_type (into the backend's conversion
// buffer), then output rows are handed out in chunks through an atomic counter, so a thread that got
// descheduled does not hold up the others. Matvec (one token) is bound by weight bandwidth: chunks are
// contiguous row ranges. Prefill tiles a block of weight rows against a block of tokens so that the weight
// block stays in L1/L2 while the tokens stream past, using the type's multi-row kernel when it has one.
#include <stdatomic.h>

#include "kernels/cpu/ops-cpu.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/repack.h"

// Prefill: a chunk is a block of TILE_ROWS weight rows times TILE_TOKS tokens (tens of KB of weights plus a few
// hundred KB of converted activations: together they fit in L2). Chunks are numbered with the row block fastest,
// so threads running at the same time share one token block in L3. With plain vec_dot a chunk walks its tokens
// a few at a time (as many converted rows as fit in TILE_L1_BYTES) and each weight row meets all of them back to
// back while they sit in L1; the multi-row kernel gets the whole block and tiles registers itself.
#define TILE_ROWS     16
#define TILE_TOKS     64
#define TILE_L1_BYTES 24576
#define TILE_SUB_MAX  8

// Float weights (F32/F16/BF16) go the other way round inside a chunk: the multi-row kernel gets FLOAT_SUB tokens
// at a time against all FLOAT_ROWS weight rows, so the few activation rows stay in L1 while the weight panel
// (64 KB of F16 at n_in 1024) streams from L2 (the kernel's own order, weight rows outer, re-reads every token of the
// block from L2 once per 4 weight rows). On the ViT-L/14 encoder (577 tokens, 2 threads) that is ~1090 -> ~960 ms per tile. FLOAT_SUB
// is a multiple of the float kernels' token tiles (6 on AVX-512, 2 on AVX2). Token blocks are evened out to a
// multiple of FLOAT_SUB near FLOAT_TOKS, so 577 tokens make 6 x 84 + 73, not 9 x 64 + 1 (a whole pass over the
// weights for one token).
#define FLOAT_ROWS 32
#define FLOAT_TOKS 96
#define FLOAT_SUB  6

struct convert_ctx {
    const struct vlm_tensor *x;
    vlm_from_float_fn from_float;
    char *xq;
    size_t xq_row;
    int64_t n_in;
    int64_t n_tok;
};

static void convert_rows(void *arg, int ith, int nth) {
    const struct convert_ctx *cc = arg;
    int64_t lo, hi;
    vlm__cpu_split(cc->n_tok, ith, nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        cc->from_float(vlm__row_f32(cc->x, t), cc->xq + (size_t)t * cc->xq_row, cc->n_in);
    }
}

struct matmul_ctx {
    const struct vlm_cpu_type_traits *tr;
    const char *w;
    size_t w_row;
    const char *xq;
    size_t xq_row;
    float *dst;
    size_t dst_row; // floats between output rows (tokens)
    int64_t n_in;
    int64_t n_out;
    int64_t n_tok;
    int64_t chunk_rows;
    int64_t chunk_toks;
    int64_t sub_toks; // > 0: token sub-blocks outer in matmul_chunk (float weights)
    int64_t n_row_blocks;
    int64_t n_chunks;
    atomic_llong next;
};

static void matvec_chunk(const struct matmul_ctx *mc, int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; o++) {
        mc->tr->vec_dot(mc->n_in, mc->dst + o, mc->w + (size_t)o * mc->w_row, mc->xq);
    }
}

static void matmul_chunk(const struct matmul_ctx *mc, int64_t o0, int64_t o1, int64_t t0, int64_t t1) {
    if (mc->tr->vec_dot_nx && mc->sub_toks > 0) {
        for (int64_t s0 = t0; s0 < t1; s0 += mc->sub_toks) {
            int64_t s1 = s0 + mc->sub_toks < t1 ? s0 + mc->sub_toks : t1;
            mc->tr->vec_dot_nx(mc->n_in, mc->dst + (size_t)s0 * mc->dst_row + o0, mc->dst_row,
                               mc->w + (size_t)o0 * mc->w_row, mc->w_row, mc->xq + (size_t)s0 * mc->xq_row,
                               mc->xq_row, (int)(o1 - o0), (int)(s1 - s0));
        }
        return;
    }
    if (mc->tr->vec_dot_nx) {
        mc->tr->vec_dot_nx(mc->n_in, mc->dst + (size_t)t0 * mc->dst_row + o0, mc->dst_row,
                           mc->w + (size_t)o0 * mc->w_row, mc->w_row, mc->xq + (size_t)t0 * mc->xq_row, mc->xq_row,
                           (int)(o1 - o0), (int)(t1 - t0));
        return;
    }
    int64_t sub = (int64_t)(TILE_L1_BYTES / mc->xq_row);
    sub = sub < 1 ? 1 : (sub > TILE_SUB_MAX ? TILE_SUB_MAX : sub);
    for (int64_t s0 = t0; s0 < t1; s0 += sub) {
        int64_t s1 = s0 + sub < t1 ? s0 + sub : t1;
        for (int64_t o = o0; o < o1; o++) {
            const char *wr = mc->w + (size_t)o * mc->w_row;
            for (int64_t t = s0; t < s1; t++) {
                mc->tr->vec_dot(mc->n_in, mc->dst + (size_t)t * mc->dst_row + o, wr, mc->xq + (size_t)t * mc->xq_row);
            }
        }
    }
}

static void matmul_worker(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    struct matmul_ctx *mc = arg;
    for (;;) {
        int64_t chunk = atomic_fetch_add_explicit(&mc->next, 1, memory_order_relaxed);
        if (chunk >= mc->n_chunks) {
            break;
        }
        int64_t o0 = (chunk % mc->n_row_blocks) * mc->chunk_rows;
        int64_t o1 = o0 + mc->chunk_rows < mc->n_out ? o0 + mc->chunk_rows : mc->n_out;
        if (mc->n_tok == 1) {
            matvec_chunk(mc, o0, o1);
        } else {
            int64_t t0 = (chunk / mc->n_row_blocks) * mc->chunk_toks;
            matmul_chunk(mc, o0, o1, t0, t0 + mc->chunk_toks < mc->n_tok ? t0 + mc->chunk_toks : mc->n_tok);
        }
    }
}

// ---- packed weights (kernels/cpu/repack.h) --------------------------------------------------------------------

struct packed_convert_ctx {
    const struct vlm_tensor *x;
    enum vlm_cpu_pack_format format;
    char *xq;
    size_t xq_row;
    int64_t n_in;
    int64_t n_tok;
};

static void packed_convert_rows(void *arg, int ith, int nth) {
    const struct packed_convert_ctx *cc = arg;
    int64_t lo, hi;
    vlm__cpu_split(cc->n_tok, ith, nth, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        const float *src = vlm__row_f32(cc->x, t);
        char *dst = cc->xq + (size_t)t * cc->xq_row;
        if (cc->format == VLM_PACK_Q4_0X16) {
            (void)vlm__packed_quant_q8_0s(src, dst, cc->n_in, 8);
        } else {
            (void)vlm__packed_quant_bf16p(src, dst, cc->n_in);
        }
    }
}

struct packed_ctx {
    const struct vlm_cpu_packed *pk;
    const char *xq;
    size_t xq_row;
    float *dst;
    size_t dst_row;
    const float *bias;
    int64_t n_in;
    int64_t n_tok;
    int64_t chunk_groups;
    int64_t chunk_toks;
    int64_t n_gblocks;
    int64_t n_chunks;
    atomic_llong next;
};

static void packed_worker(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    struct packed_ctx *pc = arg;
    const struct vlm_cpu_packed *pk = pc->pk;
    for (;;) {
        int64_t chunk = atomic_fetch_add_explicit(&pc->next, 1, memory_order_relaxed);
        if (chunk >= pc->n_chunks) {
            break;
        }
        int64_t g0 = (chunk % pc->n_gblocks) * pc->chunk_groups;
        int64_t g1 = g0 + pc->chunk_groups < pk->n_groups ? g0 + pc->chunk_groups : pk->n_groups;
        int64_t t0 = (chunk / pc->n_gblocks) * pc->chunk_toks;
        int64_t t1 = t0 + pc->chunk_toks < pc->n_tok ? t0 + pc->chunk_toks : pc->n_tok;
        float *s = pc->dst + (size_t)t0 * pc->dst_row + (size_t)g0 * VLM_PACK_ROWS;
        const char *w = (const char *)pk->data + (size_t)g0 * pk->group_size;
        const char *x = pc->xq + (size_t)t0 * pc->xq_row;
        if (pk->format == VLM_PACK_Q4_0X16) {
            (void)vlm__packed_gemm_q4_0x16(pc->n_in, s, pc->dst_row, w, pk->group_size, (int)(g1 - g0), x, pc->xq_row,
                                           (int)(t1 - t0));
        } else {
            (void)vlm__packed_gemm_bf16x16(pc->n_in, s, pc->dst_row, w, pk->group_size, (int)(g1 - g0),
                                           g1 == pk->n_groups ? pk->last_rows : VLM_PACK_ROWS, x, pc->xq_row,
                                           (int)(t1 - t0), pc->bias ? pc->bias + g0 * VLM_PACK_ROWS : NULL);
        }
    }
}

// BF16 x16 prefill chunks: 4 groups (64 rows, 128 KB of weights at n_in 1024) x about FLOAT_TOKS tokens.
#define BF16X16_CHUNK_GROUPS 4

// Rows [0, packed rows) of the product from the packed copy; returns how many rows that was.
static int64_t matmul_packed(struct vlm_cpu_ctx *c, const struct vlm_cpu_packed *pk, struct vlm_tensor *dst,
                             const struct vlm_tensor *x, const float *bias) {
    const int64_t n_in = x->ne[0], n_tok = x->ne[1];
    const bool q4 = pk->format == VLM_PACK_Q4_0X16;
    struct packed_convert_ctx cc = {
        .x = x,
        .format = pk->format,
        .xq_row = q4 ? vlm__q8_0s_row_size(n_in) : vlm__bf16p_row_size(n_in),
        .n_in = n_in,
        .n_tok = n_tok,
    };
    cc.xq = vlm__cpu_wdata(c, cc.xq_row * (size_t)n_tok);
    vlm__cpu_parallel(c, packed_convert_rows, &cc, n_tok > 1 ? n_in * n_tok : 0);

    struct packed_ctx pc = {
        .pk = pk,
        .xq = cc.xq,
        .xq_row = cc.xq_row,
        .dst = dst->data,
        .dst_row = dst->nb[1] / sizeof(float),
        .bias = bias,
        .n_in = n_in,
        .n_tok = n_tok,
        .chunk_toks = TILE_TOKS,
    };
    if (n_tok == 1) {
        // contiguous group ranges: each thread streams its own part of the matrix
        int64_t per = (pk->n_groups + 4 * (int64_t)c->n_threads - 1) / (4 * (int64_t)c->n_threads);
        pc.chunk_groups = per < 1 ? 1 : per;
    } else if (q4) {
        pc.chunk_groups = 1;
    } else {
        pc.chunk_groups = BF16X16_CHUNK_GROUPS;
        int64_t n_blocks = (n_tok + FLOAT_TOKS - 1) / FLOAT_TOKS;
        int64_t per = (n_tok + n_blocks - 1) / n_blocks;
        pc.chunk_toks = (per + FLOAT_SUB - 1) / FLOAT_SUB * FLOAT_SUB;
    }
    pc.n_gblocks = (pk->n_groups + pc.chunk_groups - 1) / pc.chunk_groups;
    pc.n_chunks = pc.n_gblocks * ((n_tok + pc.chunk_toks - 1) / pc.chunk_toks);
    atomic_init(&pc.next, 0);
    vlm__cpu_parallel(c, packed_worker, &pc, n_in * pk->n_groups * VLM_PACK_ROWS * n_tok);
    if (q4) {
        return pk->n_groups * VLM_PACK_ROWS;
    }
    return (pk->n_groups - 1) * VLM_PACK_ROWS + pk->last_rows;
}

// ---- entry ---------------------------------------------------------------------------------------------------

// Rows [o_start, n_out) of the product with the row-major kernels.
static void matmul_plain(struct vlm_cpu_ctx *c, struct vlm_tensor *dst, const struct vlm_tensor *w,
                         const struct vlm_tensor *x, int64_t o_start) {
    const struct vlm_cpu_type_traits *tr = vlm__cpu_type_traits(w->type);
    int64_t n_in = w->ne[0], n_out = w->ne[1] - o_start, n_tok = x->ne[1];

    const char *xq;
    size_t xq_row;
    if (tr->vec_dot_type == VLM_TYPE_F32) {
        xq = x->data;
        xq_row = x->nb[1];
    } else {
        xq_row = vlm_row_size(tr->vec_dot_type, n_in);
        struct convert_ctx cc = {
            .x = x,
            .from_float = tr->from_float,
            .xq = vlm__cpu_wdata(c, xq_row * (size_t)n_tok),
            .xq_row = xq_row,
            .n_in = n_in,
            .n_tok = n_tok,
        };
        vlm__cpu_parallel(c, convert_rows, &cc, n_tok > 1 ? n_in * n_tok : 0);
        xq = cc.xq;
    }

    struct matmul_ctx mc = {
        .tr = tr,
        .w = (const char *)w->data + (size_t)o_start * w->nb[1],
        .w_row = w->nb[1],
        .xq = xq,
        .xq_row = xq_row,
        .dst = (float *)dst->data + o_start,
        .dst_row = dst->nb[1] / sizeof(float),
        .n_in = n_in,
        .n_out = n_out,
        .n_tok = n_tok,
    };
    mc.chunk_toks = TILE_TOKS;
    if (n_tok == 1) {
        // Four chunks per thread evens out cores that run slower (SMT siblings, other processes).
        int64_t per = (n_out + 4 * (int64_t)c->n_threads - 1) / (4 * (int64_t)c->n_threads);
        mc.chunk_rows = per < 8 ? 8 : per;
    } else if (tr->vec_dot_nx &&
               (w->type == VLM_TYPE_F16 || w->type == VLM_TYPE_F32 || w->type == VLM_TYPE_BF16)) {
        int64_t n_blocks = (n_tok + FLOAT_TOKS - 1) / FLOAT_TOKS;
        int64_t per = (n_tok + n_blocks - 1) / n_blocks;
        mc.chunk_toks = (per + FLOAT_SUB - 1) / FLOAT_SUB * FLOAT_SUB;
        mc.chunk_rows = FLOAT_ROWS;
        mc.sub_toks = FLOAT_SUB;
    } else {
        mc.chunk_rows = TILE_ROWS;
    }
    mc.n_row_blocks = (n_out + mc.chunk_rows - 1) / mc.chunk_rows;
    mc.n_chunks = mc.n_row_blocks * ((n_tok + mc.chunk_toks - 1) / mc.chunk_toks);
    atomic_init(&mc.next, 0);
    vlm__cpu_parallel(c, matmul_worker, &mc, n_in * n_out * n_tok);
}

void vlm__cpu_matmul(struct vlm_backend *be,
                     struct vlm_tensor *dst,
                     const struct vlm_tensor *w,
                     const struct vlm_tensor *x,
                     const struct vlm_tensor *bias) {
    struct vlm_cpu_ctx *c = vlm__cpu_ctx(be);
    struct vlm_cpu_packed pk;
    int64_t done = 0;
    bool bias_done = false;
    if (vlm__cpu_packed_find(be, w, &pk)) {
        // the BF16 kernel adds the bias as it stores (it covers every row); Q4_0 leaves it to the pass below
        bias_done = bias && pk.format == VLM_PACK_BF16X16;
        done = matmul_packed(c, &pk, dst, x, bias_done ? bias->data : NULL);
    }
    if (done < w->ne[1]) {
        matmul_plain(c, dst, w, x, done);
    }
    if (bias && !bias_done) {
        vlm__cpu_add(be, dst, dst, bias);
    }
}
