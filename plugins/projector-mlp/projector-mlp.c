// projector-mlp: LLaVA's multimodal projector from an mmproj GGUF (architecture "clip"): `mlp` (mm.0 Linear ->
// GELU -> mm.2 Linear, PyTorch nn.GELU = exact erf) or `linear` (mm.0 only), and for LLaVA-NeXT the assembly of
// the tile features into the LLM's token order, as transformers' LlavaNextModel.pack_image_features does it:
//
//   overview tile (n_patches rows) first, then the grid_w x grid_h tiles laid out as one
//   (pps * grid_h) x (pps * grid_w) grid of patch features (tile row, patch row, tile column, patch column),
//   the letterbox rows or columns dropped (spatial_unpad, the shared arithmetic of vlm_anyres_unpad_shape),
//   and `model.image_newline` appended after each remaining row.
//
// `clip.vision.mm_patch_merge_type` picks the assembly (original LLaVA's names): "flat" concatenates the tiles as
// encoded (what llama.cpp does), "spatial" re-arranges without unpad or newline, "spatial_unpad" is LLaVA-NeXT.
// When the key is absent the file decides: with `model.image_newline` spatial_unpad, without it flat.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/backend.h"
#include "vlm/gguf.h"
#include "vlm/log.h"
#include "vlm/plugin.h"
#include "vlm/weights.h"
#include "vlm/preprocess.h"

#define PROJ_MAX_EMBD (1 << 17)
#define PROJ_CHUNK_ROWS 1024 // feature rows per matmul: bounds scratch memory

enum proj_kind {
    PROJ_MLP = 1,
    PROJ_LINEAR = 2,
};

enum proj_merge {
    MERGE_FLAT = 1,
    MERGE_SPATIAL = 2,
    MERGE_SPATIAL_UNPAD = 3,
};

struct proj_model {
    struct vlm_host host;
    struct vlm_backend *be;
    struct vlm_gguf *gguf;
    enum proj_kind kind;
    enum proj_merge merge;
    struct vlm_projector_info info;
    struct vlm_tensor mm0_w; // [n_in, n_out]
    struct vlm_tensor mm0_b; // [n_out] optional
    struct vlm_tensor mm2_w; // [n_out, n_out] (mlp)
    struct vlm_tensor mm2_b; // [n_out] optional
    float *newline;          // [n_out] host copy, or NULL
    // scratch for PROJ_CHUNK_ROWS rows
    struct vlm_tensor in;  // [n_in, chunk]
    struct vlm_tensor mid; // [n_out, chunk]
    struct vlm_tensor out; // [n_out, chunk]
};

static int load_tensor(struct proj_model *m, const char *name, int64_t ne0, int64_t ne1, bool required,
                       bool weight_matrix, struct vlm_tensor *out, struct vlm_diag *diag) {
    unsigned flags = (required ? VLM_WEIGHT_REQUIRED : 0u) | (weight_matrix ? VLM_WEIGHT_MATRIX : 0u);
    if (weight_matrix) {
        flags |= vlm_weight_precision_flags(m->host.precision, VLM_WEIGHT_BF16_16); // as the encoder
    }
    return vlm_weight_load_2d(m->be, m->gguf, name, ne0, ne1, flags, out, diag);
}

static void model_free(struct proj_model *m) {
    if (!m) {
        return;
    }
    struct vlm_tensor *all[] = {&m->mm0_w, &m->mm0_b, &m->mm2_w, &m->mm2_b, &m->in, &m->mid, &m->out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        vlm_tensor_release(all[i]);
    }
    free(m->newline);
    vlm_gguf_close(m->gguf);
    free(m);
}

static int load_newline(struct proj_model *m, struct vlm_diag *diag) {
    const char *path = vlm_gguf_path(m->gguf);
    const struct vlm_gguf_tensor *t = vlm_gguf_find_tensor(m->gguf, "model.image_newline");
    if (!t) {
        return 0;
    }
    const int64_t n = m->info.n_out;
    const struct vlm_type_traits *tr = vlm_type_traits(t->type);
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: tensor 'model.image_newline' has shape [%lld, %lld, %lld, %lld], "
                            "expected [%lld]", path, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                            (long long)t->ne[3], (long long)n);
    }
    if (!tr->to_float || n % tr->blck_size) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: tensor 'model.image_newline' has unusable type %s", path,
                            vlm_type_name(t->type));
    }
    m->newline = malloc((size_t)n * sizeof(float));
    if (!m->newline) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    tr->to_float(t->data, m->newline, n);
    return 0;
}

static int alloc_f32(struct vlm_backend *be, int64_t ne0, int64_t ne1, struct vlm_tensor *out) {
    struct vlm_tensor desc = vlm_tensor_make(VLM_TYPE_F32, ne0, ne1, 1, 1);
    return vlm_tensor_alloc(be, &desc, out);
}

static int proj_load(const struct vlm_host *host, const char *path, void **out, struct vlm_diag *diag) {
    if (!host || !host->backend) {
        return vlm_diag_set(diag, VLM_EINVAL, "projector-mlp: no backend given");
    }
    struct proj_model *m = calloc(1, sizeof *m);
    if (!m) {
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", path);
    }
    m->host = *host;
    m->be = host->backend;
    int rc = vlm_gguf_open(path, &m->gguf, diag);
    if (rc) {
        free(m);
        return rc;
    }
    struct vlm_gguf_str s;
    if (vlm_gguf_get_str(m->gguf, "general.architecture", &s, diag) != 0 || !vlm_gguf_str_eq(s, "clip")) {
        rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: general.architecture is not 'clip'", path);
        goto err;
    }

    // Projector type; 2023 LLaVA-1.5 files lack the key and mean "mlp" (llama.cpp's old default).
    m->kind = PROJ_MLP;
    rc = vlm_gguf_get_str(m->gguf, "clip.projector_type", &s, diag);
    if (rc == VLM_ENOENT) {
        rc = vlm_gguf_get_str(m->gguf, "clip.vision.projector_type", &s, diag);
    }
    if (rc == 0) {
        if (vlm_gguf_str_eq(s, "linear")) {
            m->kind = PROJ_LINEAR;
        } else if (!vlm_gguf_str_eq(s, "mlp")) {
            rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: projector type '%.*s' is not supported (mlp, linear)", path,
                              (int)(s.len < 32 ? s.len : 32), s.ptr);
            goto err;
        }
    } else if (rc != VLM_ENOENT) {
        goto err;
    } else if (vlm_gguf_find_tensor(m->gguf, "mm.3.weight")) {
        rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: mm.3.weight present: an mlp_norm projector (not supported)",
                          path);
        goto err;
    }

    const struct vlm_gguf_tensor *t0 = vlm_gguf_find_tensor(m->gguf, "mm.0.weight");
    if (!t0) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: missing tensor 'mm.0.weight'", path);
        goto err;
    }
    if (t0->ne[0] < 1 || t0->ne[0] > PROJ_MAX_EMBD || t0->ne[1] < 1 || t0->ne[1] > PROJ_MAX_EMBD) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: tensor 'mm.0.weight' has implausible shape [%lld, %lld]", path,
                          (long long)t0->ne[0], (long long)t0->ne[1]);
        goto err;
    }
    m->info.n_in = (int32_t)t0->ne[0];
    m->info.n_out = (int32_t)t0->ne[1];
    const int64_t n_in = m->info.n_in, n_out = m->info.n_out;
    if ((rc = load_tensor(m, "mm.0.weight", n_in, n_out, true, true, &m->mm0_w, diag)) ||
        (rc = load_tensor(m, "mm.0.bias", n_out, 1, false, false, &m->mm0_b, diag))) {
        goto err;
    }
    if (m->kind == PROJ_MLP &&
        ((rc = load_tensor(m, "mm.2.weight", n_out, n_out, true, true, &m->mm2_w, diag)) ||
         (rc = load_tensor(m, "mm.2.bias", n_out, 1, false, false, &m->mm2_b, diag)))) {
        goto err;
    }
    if ((rc = load_newline(m, diag))) {
        goto err;
    }

    rc = vlm_gguf_get_str(m->gguf, "clip.vision.mm_patch_merge_type", &s, diag);
    if (rc == VLM_ENOENT) {
        m->merge = m->newline ? MERGE_SPATIAL_UNPAD : MERGE_FLAT;
    } else if (rc) {
        goto err;
    } else if (vlm_gguf_str_eq(s, "flat")) {
        m->merge = MERGE_FLAT;
    } else if (vlm_gguf_str_eq(s, "spatial")) {
        m->merge = MERGE_SPATIAL;
    } else if (vlm_gguf_str_eq(s, "spatial_unpad")) {
        m->merge = MERGE_SPATIAL_UNPAD;
        if (!m->newline) {
            rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: merge type spatial_unpad needs tensor 'model.image_newline'",
                              path);
            goto err;
        }
    } else {
        rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: patch merge type '%.*s' is not supported", path,
                          (int)(s.len < 32 ? s.len : 32), s.ptr);
        goto err;
    }
    rc = 0;
    if ((rc = alloc_f32(m->be, n_in, PROJ_CHUNK_ROWS, &m->in)) ||
        (rc = alloc_f32(m->be, n_out, PROJ_CHUNK_ROWS, &m->mid)) ||
        (m->kind == PROJ_MLP && (rc = alloc_f32(m->be, n_out, PROJ_CHUNK_ROWS, &m->out)))) {
        rc = vlm_diag_set(diag, rc, "%s: cannot allocate projector scratch: %s", path, vlm_strerror(rc));
        goto err;
    }
    snprintf(m->info.type, sizeof m->info.type, "%s", m->kind == PROJ_MLP ? "mlp" : "linear");
    VLM_LOGD("%s: projector %s %d -> %d, merge %s", path, m->info.type, m->info.n_in, m->info.n_out,
             m->merge == MERGE_FLAT ? "flat" : m->merge == MERGE_SPATIAL ? "spatial" : "spatial_unpad");
    *out = m;
    return 0;

err:
    model_free(m);
    return rc;
}

static void proj_unload(void *model) {
    model_free(model);
}

static void proj_info(const void *model, struct vlm_projector_info *info) {
    *info = ((const struct proj_model *)model)->info;
}

// The layout of one image: grid geometry and the unpadded rows/columns. Returns the token count or VLM_EINVAL.
struct layout_geom {
    bool grid;       // tiled (overview + grid_w x grid_h)
    int32_t pps;     // patches per tile side
    int32_t rows;    // unpadded grid rows (spatial_unpad), else pps * grid_h
    int32_t cols;    // unpadded grid columns, else pps * grid_w
    int32_t top;     // first kept grid row
    int32_t left;    // first kept grid column
    bool newline;    // image_newline after each row
};

static int32_t geometry(const struct proj_model *m, const struct vlm_image_batch *b, int32_t n_patches,
                        struct layout_geom *g) {
    memset(g, 0, sizeof *g);
    if (!b || b->n_tiles <= 0 || n_patches <= 0 || b->grid_w < 0 || b->grid_h < 0) {
        return VLM_EINVAL;
    }
    if (b->grid_w == 0 || b->grid_h == 0 || m->merge == MERGE_FLAT) {
        if ((b->grid_w == 0) != (b->grid_h == 0)) {
            return VLM_EINVAL;
        }
        if ((int64_t)b->n_tiles * n_patches > INT32_MAX / 2) {
            return VLM_EINVAL;
        }
        // transformers appends the newline once after a single, untiled image in LLaVA-NeXT
        g->newline = b->grid_w == 0 && b->n_tiles == 1 && m->merge == MERGE_SPATIAL_UNPAD;
        return b->n_tiles * n_patches + (g->newline ? 1 : 0);
    }
    if ((int64_t)b->grid_w * b->grid_h + 1 != b->n_tiles) {
        return VLM_EINVAL;
    }
    int32_t pps = (int32_t)lround(sqrt((double)n_patches));
    if (pps * pps != n_patches) {
        return VLM_EINVAL;
    }
    g->grid = true;
    g->pps = pps;
    const int32_t ch = pps * b->grid_h, cw = pps * b->grid_w;
    if (m->merge == MERGE_SPATIAL) {
        g->rows = ch;
        g->cols = cw;
        return n_patches + ch * cw;
    }
    int32_t n = vlm_anyres_unpad_shape(b->image_w, b->image_h, b->grid_w, b->grid_h, pps, &g->rows, &g->cols);
    if (n < 0 || g->rows <= 0 || g->cols <= 0 || g->rows > ch || g->cols > cw) {
        return VLM_EINVAL;
    }
    g->top = (ch - g->rows) / 2;
    g->left = (cw - g->cols) / 2;
    g->newline = true;
    return n_patches + g->rows * (g->cols + 1);
}

static int32_t proj_n_tokens(const void *model, const struct vlm_image_batch *layout, int32_t n_patches) {
    struct layout_geom g;
    return geometry(model, layout, n_patches, &g);
}

// Projects `n` feature rows (n_in wide) into `dst` (n_out wide), in chunks.
static int project_rows(struct proj_model *m, const float *src, int64_t n, float *dst) {
    const int64_t n_in = m->info.n_in, n_out = m->info.n_out;
    for (int64_t r0 = 0; r0 < n; r0 += PROJ_CHUNK_ROWS) {
        if (m->host.should_cancel && m->host.should_cancel(m->host.cancel_user)) {
            return VLM_ECANCELED;
        }
        int64_t r = n - r0 < PROJ_CHUNK_ROWS ? n - r0 : PROJ_CHUNK_ROWS;
        struct vlm_tensor in = vlm_tensor_rows(&m->in, 0, r);   // [n_in, r]
        struct vlm_tensor mid = vlm_tensor_rows(&m->mid, 0, r); // [n_out, r]
        int rc = vlm_tensor_set(&in, src + (size_t)(r0 * n_in), 0, (size_t)(r * n_in) * sizeof(float));
        if (rc) {
            return rc;
        }
        vlm_op_matmul_bias(m->be, &mid, &m->mm0_w, &in, &m->mm0_b); // no data: no bias
        struct vlm_tensor *res = &mid;
        struct vlm_tensor out = vlm_tensor_rows(&m->out, 0, r);
        if (m->kind == PROJ_MLP) {
            vlm_op_gelu(m->be, &mid, &mid, VLM_GELU_ERF); // PyTorch nn.GELU()
            vlm_op_matmul_bias(m->be, &out, &m->mm2_w, &mid, &m->mm2_b);
            res = &out;
        }
        if ((rc = vlm_tensor_get(res, dst + (size_t)(r0 * n_out), 0, (size_t)(r * n_out) * sizeof(float)))) {
            return rc;
        }
    }
    return 0;
}

static int proj_project(void *model, const float *features, const struct vlm_image_batch *layout, int32_t n_patches,
                        float *embd, struct vlm_diag *diag) {
    struct proj_model *m = model;
    struct layout_geom g;
    int32_t n_tokens = geometry(m, layout, n_patches, &g);
    if (n_tokens <= 0 || !features || !embd) {
        return vlm_diag_set(diag, VLM_EINVAL, "projector-mlp: inconsistent image layout (%d tiles, grid %dx%d, %d "
                            "patches per tile)", layout ? layout->n_tiles : 0, layout ? layout->grid_w : 0,
                            layout ? layout->grid_h : 0, n_patches);
    }
    const size_t E = (size_t)m->info.n_out;
    const int64_t n_rows = (int64_t)layout->n_tiles * n_patches;
    int rc;
    if (!g.grid) {
        // flat: the projected rows are already in token order
        if ((rc = project_rows(m, features, n_rows, embd))) {
            goto fail;
        }
        if (g.newline) {
            memcpy(embd + (size_t)n_rows * E, m->newline, E * sizeof(float));
        }
        return 0;
    }
    // overview straight into place, the grid tiles into a staging buffer to be re-arranged
    const int64_t n_grid = n_rows - n_patches;
    float *tiles = malloc((size_t)n_grid * E * sizeof(float));
    if (!tiles) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    rc = project_rows(m, features, n_patches, embd);
    if (!rc) {
        rc = project_rows(m, features + (size_t)n_patches * (size_t)m->info.n_in, n_grid, tiles);
    }
    if (rc) {
        free(tiles);
        goto fail;
    }
    float *dst = embd + (size_t)n_patches * E;
    for (int32_t r = g.top; r < g.top + g.rows; r++) {
        const int32_t tr = r / g.pps, pr = r % g.pps;
        for (int32_t c = g.left; c < g.left + g.cols; c++) {
            const int32_t tc = c / g.pps, pc = c % g.pps;
            const size_t tile = (size_t)tr * (size_t)layout->grid_w + (size_t)tc;
            const float *src = tiles + (tile * (size_t)n_patches + (size_t)pr * (size_t)g.pps + (size_t)pc) * E;
            memcpy(dst, src, E * sizeof(float));
            dst += E;
        }
        if (g.newline) {
            memcpy(dst, m->newline, E * sizeof(float));
            dst += E;
        }
    }
    free(tiles);
    if (dst != embd + (size_t)n_tokens * E) {
        return vlm_diag_set(diag, VLM_EINTERNAL, "projector-mlp: assembled %lld rows, expected %d",
                            (long long)((dst - embd) / (ptrdiff_t)E), n_tokens);
    }
    return 0;

fail:
    return vlm_diag_set(diag, rc, "image projection %s", rc == VLM_ECANCELED ? "cancelled" : "failed");
}

// ---- descriptor ------------------------------------------------------------------------------------------------

static const struct vlm_projector_ops proj_ops = {
    .load = proj_load,
    .unload = proj_unload,
    .info = proj_info,
    .n_tokens = proj_n_tokens,
    .project = proj_project,
};

static const char *const proj_archs[] = {"clip", NULL};

static const struct vlm_plugin_desc proj_desc = {
    .abi_version = VLM_PLUGIN_ABI_VERSION,
    .kind = VLM_PLUGIN_KIND_PROJECTOR,
    .name = "projector-mlp",
    .version = "0.1.0",
    .description = "LLaVA mlp/linear projector with LLaVA-NeXT spatial_unpad assembly and image_newline",
    .archs = proj_archs,
    .projector = &proj_ops,
};

VLM_PLUGIN_EXPORT(proj_desc)
