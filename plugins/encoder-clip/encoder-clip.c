// encoder-clip: the CLIP ViT image encoder of LLaVA-style mmproj files (GGUF architecture "clip").
//
// The forward pass follows transformers' CLIPVisionModel as LLaVA uses it (../shared/docs/gguf-llava.md §5.3),
// not llama.cpp where the two differ: the class token goes FIRST and takes position row 0; the hidden state
// fed to the projector is the one the file names in `clip.vision.feature_layer` (hidden state k = output of
// block k-1, 0 = after the pre-LayerNorm) or, when the key is absent (classic LLaVA files, which store 23 of
// the 24 blocks), the output of the last stored block, which is transformers' hidden_states[-2]; no post-LN;
// the class row is dropped.
//
// Written llama2.c-style against the backend ops: weights in `struct clip_layer`, one straight-line function
// `forward_chunk`. Tiles are batched: every matrix product runs over the rows of all tiles of a chunk at once
// (5 tiles x 577 rows for a LLaVA-NeXT image), attention runs per tile. The patch convolution (stride = patch)
// is an im2col on the host plus one matmul with the kernel viewed as [3*P*P, n_embd].
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

#define CLIP_MAX_LAYERS 256
#define CLIP_MAX_EMBD (1 << 14)
#define CLIP_MAX_FF (1 << 17)
#define CLIP_MAX_IMAGE 4096
#define CLIP_MAX_FEATURE_LAYERS 8
#ifndef CLIP_CHUNK_ROWS
#define CLIP_CHUNK_ROWS 4096 // rows (tiles x positions) per forward chunk: bounds scratch memory
#endif

struct clip_hparams {
    int32_t image_size;
    int32_t patch_size;
    int32_t n_side;    // patches per side
    int32_t n_patches; // n_side^2
    int32_t n_pos;     // n_patches + 1 (class token)
    int32_t n_embd;
    int32_t n_ff;
    int32_t n_head;
    int32_t head_dim;
    int32_t n_layer;   // blocks stored in the file
    int32_t n_run;     // blocks the forward pass runs
    int32_t n_feat;    // hidden states concatenated into the output (1 for LLaVA)
    int32_t feat[CLIP_MAX_FEATURE_LAYERS];
    float eps;
    bool act_silu;
    enum vlm_gelu_kind gelu;
};

struct clip_layer {
    struct vlm_tensor ln1_w, ln1_b;   // [n_embd]
    struct vlm_tensor wq, wk, wv, wo; // [n_embd, n_embd]
    struct vlm_tensor bq, bk, bv, bo; // [n_embd]
    struct vlm_tensor ln2_w, ln2_b;   // [n_embd]
    struct vlm_tensor fc1_w;          // [n_embd, n_ff]  (transformers' mlp.fc1, whatever the file calls it)
    struct vlm_tensor fc1_b;          // [n_ff]
    struct vlm_tensor fc2_w;          // [n_ff, n_embd]
    struct vlm_tensor fc2_b;          // [n_embd]
};

// Scratch for one chunk of `rows` rows (grown on demand; a model is used by one thread at a time).
struct clip_scratch {
    int64_t rows;
    struct vlm_tensor patches; // [3*P*P, rows] im2col of the chunk's tiles (only n_patches per tile used)
    struct vlm_tensor x;       // [n_embd, rows] residual stream
    struct vlm_tensor xb;      // [n_embd, rows]
    struct vlm_tensor q, k, v; // [n_embd, rows]
    struct vlm_tensor att;     // [n_embd, rows]
    struct vlm_tensor h;       // [n_ff, rows]
    struct vlm_tensor scores;  // [n_pos, n_pos] one head's attention weights (matmul attention)
    struct vlm_tensor vt;      // [n_pos, n_embd] one tile's V transposed (matmul attention)
    float *host_v;             // [n_pos * n_embd] staging for the transpose
    float *host_vt;
    float *host_patches;       // host staging of `patches`
    float *host_feat;          // [n_patches, n_embd] staging when several hidden states are concatenated
};

struct clip_model {
    struct vlm_host host;
    struct vlm_backend *be;
    struct vlm_gguf *gguf;
    struct clip_hparams hp;
    bool matmul_attention; // CPU: attention as matrix products (see attention_matmul)
    struct vlm_preprocess_config pp;
    struct vlm_encoder_info info;
    struct vlm_tensor patch_w;   // [3*P*P, n_embd] (the 4-D kernel viewed as a matrix)
    struct vlm_tensor patch_b;   // [n_embd] optional
    struct vlm_tensor class_f32; // [n_embd, 1] F32 copy
    struct vlm_tensor pos_f32;   // [n_embd, n_pos] F32 copy
    struct vlm_tensor pre_ln_w, pre_ln_b;
    struct clip_layer *layers;   // [n_layer]
    struct clip_scratch s;
};

// ---- loading -------------------------------------------------------------------------------------------------

static int load_hparams(const struct vlm_gguf *g, struct clip_hparams *hp, struct vlm_diag *diag) {
    const char *path = vlm_gguf_path(g);
    memset(hp, 0, sizeof *hp);
    int rc;
    if ((rc = vlm_hparam_i32(g, "clip.vision.image_size", 1, CLIP_MAX_IMAGE, true, &hp->image_size, diag)) ||
        (rc = vlm_hparam_i32(g, "clip.vision.patch_size", 1, CLIP_MAX_IMAGE, true, &hp->patch_size, diag)) ||
        (rc = vlm_hparam_i32(g, "clip.vision.embedding_length", 1, CLIP_MAX_EMBD, true, &hp->n_embd, diag)) ||
        (rc = vlm_hparam_i32(g, "clip.vision.feed_forward_length", 1, CLIP_MAX_FF, true, &hp->n_ff, diag)) ||
        (rc = vlm_hparam_i32(g, "clip.vision.attention.head_count", 1, CLIP_MAX_EMBD, true, &hp->n_head, diag)) ||
        (rc = vlm_hparam_i32(g, "clip.vision.block_count", 1, CLIP_MAX_LAYERS, true, &hp->n_layer, diag))) {
        return rc;
    }
    if (hp->patch_size > hp->image_size) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: patch size %d is larger than the image size %d", path,
                            hp->patch_size, hp->image_size);
    }
    if (hp->n_embd % hp->n_head) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: embedding length %d is not a multiple of the head count %d",
                            path, hp->n_embd, hp->n_head);
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    hp->n_side = hp->image_size / hp->patch_size; // the stride-P convolution drops a remainder, as PyTorch's does
    hp->n_patches = hp->n_side * hp->n_side;
    hp->n_pos = hp->n_patches + 1;
    if (hp->n_pos > CLIP_CHUNK_ROWS) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: %d patches per image is more than this encoder supports",
                            path, hp->n_patches);
    }

    double eps = 1e-5;
    rc = vlm_gguf_get_float(g, "clip.vision.attention.layer_norm_epsilon", &eps, diag);
    if (rc && rc != VLM_ENOENT) {
        return rc;
    }
    if (!(eps > 0.0 && eps < 1.0)) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: layer_norm_epsilon %g is not in (0, 1)", path, eps);
    }
    hp->eps = (float)eps;

    // CLIP's MLP activation: quick-GELU unless the file says GELU (transformers' "gelu" is the exact erf form)
    // or SiLU.
    bool use_gelu = false, use_silu = false;
    if ((rc = vlm_hparam_bool(g, "clip.use_gelu", &use_gelu, diag)) || (rc = vlm_hparam_bool(g, "clip.use_silu", &use_silu, diag))) {
        return rc;
    }
    if (use_gelu && use_silu) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: clip.use_gelu and clip.use_silu are both set", path);
    }
    hp->act_silu = use_silu;
    hp->gelu = use_gelu ? VLM_GELU_ERF : VLM_GELU_QUICK;

    // Which hidden states feed the projector.
    int64_t idx = vlm_gguf_find_key(g, "clip.vision.feature_layer");
    if (idx < 0) {
        hp->n_feat = 1;
        hp->feat[0] = hp->n_layer;
    } else {
        enum vlm_gguf_type et;
        uint64_t n = 0;
        double d = 0;
        if (vlm_gguf_kv_array(g, idx, &et, &n) == 0) {
            if (n == 0 || n > CLIP_MAX_FEATURE_LAYERS) {
                return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: clip.vision.feature_layer lists %llu layers (1 to %d "
                                    "supported)", path, (unsigned long long)n, CLIP_MAX_FEATURE_LAYERS);
            }
            for (uint64_t i = 0; i < n; i++) {
                if (vlm_gguf_array_get_num(g, idx, i, &d) != 0) {
                    return vlm_diag_set(diag, VLM_EBADMODEL, "%s: clip.vision.feature_layer is not numeric", path);
                }
                if (!(d >= 0 && d <= hp->n_layer) || d != floor(d)) {
                    return vlm_diag_set(diag, VLM_EBADMODEL, "%s: clip.vision.feature_layer entry %g is not a hidden "
                                        "state 0..%d of this encoder", path, d, hp->n_layer);
                }
                hp->feat[hp->n_feat++] = (int32_t)d;
            }
        } else {
            int32_t k = 0;
            if ((rc = vlm_hparam_i32(g, "clip.vision.feature_layer", 0, hp->n_layer, true, &k, diag))) {
                return rc;
            }
            hp->n_feat = 1;
            hp->feat[0] = k;
        }
    }
    hp->n_run = 0;
    for (int32_t i = 0; i < hp->n_feat; i++) {
        hp->n_run = hp->feat[i] > hp->n_run ? hp->feat[i] : hp->n_run;
    }
    return 0;
}

static int load_tensor4(struct clip_model *m, const char *name, const int64_t want[4], bool required,
                        bool weight_matrix, struct vlm_tensor *out, struct vlm_diag *diag) {
    unsigned flags = (required ? VLM_WEIGHT_REQUIRED : 0u) | (weight_matrix ? VLM_WEIGHT_MATRIX : 0u);
    if (weight_matrix) {
        // AUTO: BF16 products for 16-bit weights (the ViT's matrices are 76% of its time; BF16 is what LLaVA's
        // vision tower was trained in); F32 files stay exact
        flags |= vlm_weight_precision_flags(m->host.precision, VLM_WEIGHT_BF16_16);
    }
    return vlm_weight_load(m->be, m->gguf, name, want, flags, out, diag);
}

static int load_tensor(struct clip_model *m, const char *name, int64_t ne0, int64_t ne1, bool required,
                       bool weight_matrix, struct vlm_tensor *out, struct vlm_diag *diag) {
    const int64_t want[4] = {ne0, ne1 > 0 ? ne1 : 1, 1, 1};
    return load_tensor4(m, name, want, required, weight_matrix, out, diag);
}

// An F32 copy of a small table of any supported type (position and class embeddings), made once at load so the
// forward pass only adds.
static int table_to_f32(struct clip_model *m, const struct vlm_tensor *table, struct vlm_tensor *out,
                        struct vlm_diag *diag) {
    int64_t n = table->ne[1];
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) {
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)i;
    }
    struct vlm_tensor desc = vlm_tensor_make(VLM_TYPE_F32, table->ne[0], n, 1, 1);
    int rc = vlm_tensor_alloc(m->be, &desc, out);
    if (!rc) {
        vlm_op_get_rows(m->be, out, table, ids, n);
    }
    free(ids);
    return rc ? vlm_diag_set(diag, rc, "cannot allocate the embedding tables: %s", vlm_strerror(rc)) : 0;
}

static void scratch_free(struct clip_scratch *s) {
    struct vlm_tensor *all[] = {&s->patches, &s->x, &s->xb, &s->q, &s->k, &s->v, &s->att, &s->h, &s->scores, &s->vt};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        vlm_tensor_release(all[i]);
    }
    free(s->host_v);
    free(s->host_vt);
    free(s->host_patches);
    free(s->host_feat);
    memset(s, 0, sizeof *s);
}

static void model_free(struct clip_model *m) {
    if (!m) {
        return;
    }
    if (m->layers) {
        for (int32_t i = 0; i < m->hp.n_layer; i++) {
            struct clip_layer *l = &m->layers[i];
            struct vlm_tensor *all[] = {&l->ln1_w, &l->ln1_b, &l->wq, &l->wk, &l->wv, &l->wo, &l->bq, &l->bk,
                                        &l->bv, &l->bo, &l->ln2_w, &l->ln2_b, &l->fc1_w, &l->fc1_b, &l->fc2_w,
                                        &l->fc2_b};
            for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) {
                vlm_tensor_release(all[j]);
            }
        }
        free(m->layers);
    }
    struct vlm_tensor *top[] = {&m->patch_w, &m->patch_b, &m->class_f32, &m->pos_f32, &m->pre_ln_w, &m->pre_ln_b};
    for (size_t j = 0; j < sizeof top / sizeof top[0]; j++) {
        vlm_tensor_release(top[j]);
    }
    scratch_free(&m->s);
    vlm_gguf_close(m->gguf);
    free(m);
}

// The MLP's two matrices. Legacy converters store fc1 as `ffn_down` and fc2 as `ffn_up` (backwards); like
// clip.cpp we tell them apart by shape: if `ffn_down.weight` takes n_embd inputs it is really fc1.
static int load_mlp(struct clip_model *m, int32_t il, struct clip_layer *l, struct vlm_diag *diag) {
    const struct clip_hparams *hp = &m->hp;
    char up[VLM_GGUF_MAX_NAME], down[VLM_GGUF_MAX_NAME], up_b[VLM_GGUF_MAX_NAME], down_b[VLM_GGUF_MAX_NAME];
    snprintf(up, sizeof up, "v.blk.%d.ffn_up.weight", il);
    snprintf(down, sizeof down, "v.blk.%d.ffn_down.weight", il);
    snprintf(up_b, sizeof up_b, "v.blk.%d.ffn_up.bias", il);
    snprintf(down_b, sizeof down_b, "v.blk.%d.ffn_down.bias", il);
    const struct vlm_gguf_tensor *td = vlm_gguf_find_tensor(m->gguf, down);
    if (!td) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: missing tensor '%s'", vlm_gguf_path(m->gguf), down);
    }
    bool swapped = td->ne[0] == hp->n_embd;
    const char *fc1 = swapped ? down : up, *fc2 = swapped ? up : down;
    const char *fc1_b = swapped ? down_b : up_b, *fc2_b = swapped ? up_b : down_b;
    int rc;
    if ((rc = load_tensor(m, fc1, hp->n_embd, hp->n_ff, true, true, &l->fc1_w, diag)) ||
        (rc = load_tensor(m, fc1_b, hp->n_ff, 1, false, false, &l->fc1_b, diag)) ||
        (rc = load_tensor(m, fc2, hp->n_ff, hp->n_embd, true, true, &l->fc2_w, diag)) ||
        (rc = load_tensor(m, fc2_b, hp->n_embd, 1, false, false, &l->fc2_b, diag))) {
        return rc;
    }
    if (il == 0) {
        VLM_LOGD("%s: MLP fc1 is '%s' (%s naming)", vlm_gguf_path(m->gguf), fc1, swapped ? "legacy swapped" : "plain");
    }
    return 0;
}

static int clip_load(const struct vlm_host *host, const char *path, void **out, struct vlm_diag *diag) {
    if (!host || !host->backend) {
        return vlm_diag_set(diag, VLM_EINVAL, "encoder-clip: no backend given");
    }
    struct clip_model *m = calloc(1, sizeof *m);
    if (!m) {
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", path);
    }
    m->host = *host;
    m->be = host->backend;
    m->matmul_attention = !strcmp(vlm_backend_name(m->be), "cpu");
    int rc = vlm_gguf_open(path, &m->gguf, diag);
    if (rc) {
        free(m);
        return rc;
    }
    struct vlm_gguf_str arch;
    if (vlm_gguf_get_str(m->gguf, "general.architecture", &arch, diag) != 0 || !vlm_gguf_str_eq(arch, "clip")) {
        rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: general.architecture is not 'clip'", path);
        goto err;
    }
    bool has_vision = false;
    if ((rc = vlm_hparam_bool(m->gguf, "clip.has_vision_encoder", &has_vision, diag))) {
        goto err;
    }
    if (!has_vision) {
        rc = vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: clip.has_vision_encoder is not true: no image encoder here",
                          path);
        goto err;
    }
    if ((rc = load_hparams(m->gguf, &m->hp, diag))) {
        goto err;
    }
    // The CPU attention op has a register-tiled path for non-causal head_dim 64 on AVX-512 (ops-attention.c). On
    // ViT-L/14-336 (2 threads) it takes ~75 ms per tile where attention_matmul took ~150 ms, or ~650 ms in the
    // stretches where the host made the matmul path slow (its per-head views touch one 256-byte piece of each
    // 4 KB row, and each score pays a horizontal sum). Elsewhere (AVX2, other head sizes) the op's per-query
    // path would be slower than attention_matmul, so head_dim 64 on the CPU backend is the only switch.
    if (m->matmul_attention && m->hp.head_dim == 64) {
        m->matmul_attention = false;
    }
    if ((rc = vlm_preprocess_config_from_gguf(m->gguf, &m->pp, diag))) {
        goto err;
    }
    const struct clip_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, P = hp->patch_size;

    const int64_t patch_shape[4] = {P, P, 3, E};
    struct vlm_tensor class_raw, pos_raw;
    if ((rc = load_tensor4(m, "v.patch_embd.weight", patch_shape, true, true, &m->patch_w, diag)) ||
        (rc = load_tensor(m, "v.patch_embd.bias", E, 1, false, false, &m->patch_b, diag)) ||
        (rc = load_tensor(m, "v.pre_ln.weight", E, 1, true, false, &m->pre_ln_w, diag)) ||
        (rc = load_tensor(m, "v.pre_ln.bias", E, 1, true, false, &m->pre_ln_b, diag))) {
        goto err;
    }
    if ((rc = load_tensor(m, "v.class_embd", E, 1, true, true, &class_raw, diag))) {
        goto err;
    }
    rc = table_to_f32(m, &class_raw, &m->class_f32, diag);
    vlm_tensor_release(&class_raw);
    if (rc || (rc = load_tensor(m, "v.position_embd.weight", E, hp->n_pos, true, true, &pos_raw, diag))) {
        goto err;
    }
    rc = table_to_f32(m, &pos_raw, &m->pos_f32, diag);
    vlm_tensor_release(&pos_raw);
    if (rc) {
        goto err;
    }
    if (vlm_gguf_find_tensor(m->gguf, "v.post_ln.weight")) {
        VLM_LOGD("%s: v.post_ln is present and, as in LLaVA, not applied to the features", path);
    }

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", path);
        goto err;
    }
    // Blocks past the last one run are not needed; they are neither checked nor mapped to the backend.
    for (int32_t i = 0; i < hp->n_run; i++) {
        struct clip_layer *l = &m->layers[i];
        char name[VLM_GGUF_MAX_NAME];
#define LT(field, suffix, ne0, ne1, req, mat)                                                                    \
    snprintf(name, sizeof name, "v.blk.%d.%s", i, suffix);                                                     \
    if ((rc = load_tensor(m, name, ne0, ne1, req, mat, &l->field, diag))) {                                   \
        goto err;                                                                                              \
    }
        LT(ln1_w, "ln1.weight", E, 1, true, false)
        LT(ln1_b, "ln1.bias", E, 1, true, false)
        LT(wq, "attn_q.weight", E, E, true, true)
        LT(wk, "attn_k.weight", E, E, true, true)
        LT(wv, "attn_v.weight", E, E, true, true)
        LT(wo, "attn_out.weight", E, E, true, true)
        LT(bq, "attn_q.bias", E, 1, false, false)
        LT(bk, "attn_k.bias", E, 1, false, false)
        LT(bv, "attn_v.bias", E, 1, false, false)
        LT(bo, "attn_out.bias", E, 1, false, false)
        LT(ln2_w, "ln2.weight", E, 1, true, false)
        LT(ln2_b, "ln2.bias", E, 1, true, false)
#undef LT
        if ((rc = load_mlp(m, i, l, diag))) {
            goto err;
        }
    }

    struct vlm_encoder_info *info = &m->info;
    snprintf(info->arch, sizeof info->arch, "clip");
    struct vlm_gguf_str gname;
    if (vlm_gguf_get_str(m->gguf, "general.name", &gname, NULL) == 0) {
        snprintf(info->name, sizeof info->name, "%.*s", (int)(gname.len < 63 ? gname.len : 63), gname.ptr);
    }
    info->image_size = hp->image_size;
    info->patch_size = hp->patch_size;
    info->n_embd = hp->n_embd * hp->n_feat;
    info->n_patches = hp->n_patches;
    VLM_LOGD("%s: clip image %d patch %d n_embd %d n_ff %d heads %d blocks %d (runs %d, %d feature layer(s)) %s",
             path, hp->image_size, hp->patch_size, hp->n_embd, hp->n_ff, hp->n_head, hp->n_layer, hp->n_run,
             hp->n_feat, hp->act_silu ? "silu" : hp->gelu == VLM_GELU_ERF ? "gelu" : "quick-gelu");
    *out = m;
    return 0;

err:
    model_free(m);
    return rc;
}

static void clip_unload(void *model) {
    model_free(model);
}

static void clip_info(const void *model, struct vlm_encoder_info *info) {
    *info = ((const struct clip_model *)model)->info;
}

static int clip_preprocess(void *model, const struct vlm_image *image, struct vlm_image_batch *out,
                           struct vlm_diag *diag) {
    const struct clip_model *m = model;
    return vlm_preprocess(&m->pp, image, out, diag);
}

static void clip_batch_free(struct vlm_image_batch *batch) {
    vlm_image_batch_free(batch);
}

// ---- forward -------------------------------------------------------------------------------------------------

static int alloc_f32(struct vlm_backend *be, int64_t ne0, int64_t ne1, struct vlm_tensor *out) {
    struct vlm_tensor desc = vlm_tensor_make(VLM_TYPE_F32, ne0, ne1, 1, 1);
    return vlm_tensor_alloc(be, &desc, out);
}

static int scratch_reserve(struct clip_model *m, int64_t rows, struct vlm_diag *diag) {
    struct clip_scratch *s = &m->s;
    if (s->rows >= rows) {
        return 0;
    }
    scratch_free(s);
    const struct clip_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, PP3 = 3 * (int64_t)hp->patch_size * hp->patch_size;
    int rc;
    if ((rc = alloc_f32(m->be, PP3, rows, &s->patches)) || (rc = alloc_f32(m->be, E, rows, &s->x)) ||
        (rc = alloc_f32(m->be, E, rows, &s->xb)) || (rc = alloc_f32(m->be, E, rows, &s->q)) ||
        (rc = alloc_f32(m->be, E, rows, &s->k)) || (rc = alloc_f32(m->be, E, rows, &s->v)) ||
        (rc = alloc_f32(m->be, E, rows, &s->att)) || (rc = alloc_f32(m->be, hp->n_ff, rows, &s->h)) ||
        (m->matmul_attention && ((rc = alloc_f32(m->be, hp->n_pos, hp->n_pos, &s->scores)) ||
                                 (rc = alloc_f32(m->be, hp->n_pos, E, &s->vt))))) {
        scratch_free(s);
        return vlm_diag_set(diag, rc, "cannot allocate encoder scratch for %lld rows: %s", (long long)rows,
                            vlm_strerror(rc));
    }
    s->host_patches = malloc((size_t)(PP3 * rows) * sizeof(float));
    s->host_feat = hp->n_feat > 1 ? malloc((size_t)hp->n_patches * (size_t)E * sizeof(float)) : NULL;
    if (m->matmul_attention) {
        s->host_v = malloc((size_t)hp->n_pos * (size_t)E * sizeof(float));
        s->host_vt = malloc((size_t)hp->n_pos * (size_t)E * sizeof(float));
    }
    if (!s->host_patches || (hp->n_feat > 1 && !s->host_feat) ||
        (m->matmul_attention && (!s->host_v || !s->host_vt))) {
        scratch_free(s);
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory");
    }
    s->rows = rows;
    return 0;
}

// y = W x (+ b)
static void linear(struct vlm_backend *be, struct vlm_tensor *y, const struct vlm_tensor *w,
                   const struct vlm_tensor *b, const struct vlm_tensor *x) {
    vlm_op_matmul_bias(be, y, w, x, b); // b->data NULL: no bias
}

// Columns [col0, col0 + n_cols) of rows [row0, row0 + n_rows) of an F32 matrix (a strided, borrowed view).
static struct vlm_tensor sub_view(const struct vlm_tensor *t, int64_t row0, int64_t n_rows, int64_t col0,
                                  int64_t n_cols) {
    struct vlm_tensor v = vlm_tensor_rows(t, row0, n_rows);
    v.data = (char *)v.data + (size_t)col0 * sizeof(float);
    v.ne[0] = n_cols;
    return v;
}

// One tile's attention as matrix products, per head: scores = K_h Q_h^T (keys x queries), row softmax, then
// out_h = V_h^T-weighted sum. The CPU attention op works one query row and one key at a time (short dot
// products and axpys of head_dim = 64 floats), which made it 40% of the ViT-L time; the F32 matmul kernel tiles
// registers instead. V is transposed on the host (the tile's V is 577 x 1024 floats, about 1 ms).
static int attention_matmul(struct clip_model *m, struct vlm_tensor *at, const struct vlm_tensor *qt,
                            const struct vlm_tensor *kt, const struct vlm_tensor *vt) {
    const struct clip_hparams *hp = &m->hp;
    struct clip_scratch *s = &m->s;
    struct vlm_backend *be = m->be;
    const int64_t n = hp->n_pos, E = hp->n_embd, hd = hp->head_dim;
    int rc = vlm_tensor_get(vt, s->host_v, 0, (size_t)(n * E) * sizeof(float));
    if (rc) {
        return rc;
    }
    // host_vt[e][j] = host_v[j][e], in 32 x 32 blocks to stay in cache
    for (int64_t j0 = 0; j0 < n; j0 += 32) {
        for (int64_t e0 = 0; e0 < E; e0 += 32) {
            int64_t j1 = j0 + 32 < n ? j0 + 32 : n, e1 = e0 + 32 < E ? e0 + 32 : E;
            for (int64_t e = e0; e < e1; e++) {
                for (int64_t j = j0; j < j1; j++) {
                    s->host_vt[e * n + j] = s->host_v[j * E + e];
                }
            }
        }
    }
    if ((rc = vlm_tensor_set(&s->vt, s->host_vt, 0, (size_t)(n * E) * sizeof(float)))) {
        return rc;
    }
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t h = 0; h < hp->n_head; h++) {
        struct vlm_tensor kh = sub_view(kt, 0, n, h * hd, hd);     // [hd, n] keys of head h
        struct vlm_tensor qh = sub_view(qt, 0, n, h * hd, hd);     // [hd, n] queries of head h
        struct vlm_tensor vth = vlm_tensor_rows(&s->vt, h * hd, hd); // [n, hd] V_h transposed
        struct vlm_tensor oh = sub_view(at, 0, n, h * hd, hd);     // [hd, n]
        vlm_op_matmul(be, &s->scores, &kh, &qh);                   // [n keys, n queries]
        vlm_op_softmax(be, &s->scores, &s->scores, scale);
        vlm_op_matmul(be, &oh, &vth, &s->scores);                  // [hd, n]
    }
    return 0;
}

// im2col of `n_tiles` tiles into host_patches: row (tile, py, px) holds the patch's 3*P*P pixels in (c, y, x)
// order, which is the order of one output channel's weights in the [P, P, 3, n_embd] kernel.
static void im2col(const struct clip_hparams *hp, const float *pixels, int32_t n_tiles, float *out) {
    const int64_t S = hp->image_size, P = hp->patch_size, n_side = hp->n_side;
    for (int64_t t = 0; t < n_tiles; t++) {
        const float *img = pixels + (size_t)(t * 3 * S * S);
        for (int64_t py = 0; py < n_side; py++) {
            for (int64_t px = 0; px < n_side; px++) {
                float *row = out + (size_t)(((t * n_side + py) * n_side + px) * 3 * P * P);
                for (int64_t c = 0; c < 3; c++) {
                    for (int64_t y = 0; y < P; y++) {
                        memcpy(row + (c * P + y) * P, img + (size_t)((c * S + py * P + y) * S + px * P),
                               (size_t)P * sizeof(float));
                    }
                }
            }
        }
    }
}

// Copies hidden state `x` (rows of n_tiles tiles) minus the class rows into the feature output, at column block
// `slot` of n_feat.
static int emit_features(struct clip_model *m, const struct vlm_tensor *x, int32_t n_tiles, int32_t slot,
                         float *features) {
    const struct clip_hparams *hp = &m->hp;
    const size_t E = (size_t)hp->n_embd, width = E * (size_t)hp->n_feat;
    for (int32_t t = 0; t < n_tiles; t++) {
        struct vlm_tensor rows = vlm_tensor_rows(x, (int64_t)t * hp->n_pos + 1, hp->n_patches);
        float *dst = features + (size_t)t * hp->n_patches * width;
        if (hp->n_feat == 1) {
            int rc = vlm_tensor_get(&rows, dst, 0, (size_t)hp->n_patches * E * sizeof(float));
            if (rc) {
                return rc;
            }
            continue;
        }
        int rc = vlm_tensor_get(&rows, m->s.host_feat, 0, (size_t)hp->n_patches * E * sizeof(float));
        if (rc) {
            return rc;
        }
        for (int32_t p = 0; p < hp->n_patches; p++) {
            memcpy(dst + (size_t)p * width + (size_t)slot * E, m->s.host_feat + (size_t)p * E, E * sizeof(float));
        }
    }
    return 0;
}

static int emit_if_wanted(struct clip_model *m, const struct vlm_tensor *x, int32_t n_tiles, int32_t hidden,
                          float *features) {
    for (int32_t j = 0; j < m->hp.n_feat; j++) {
        if (m->hp.feat[j] == hidden) {
            int rc = emit_features(m, x, n_tiles, j, features);
            if (rc) {
                return rc;
            }
        }
    }
    return 0;
}

// Encodes `n_tiles` tiles (pixels [n_tiles][3][S][S]) into features [n_tiles][n_patches][n_embd * n_feat].
static int forward_chunk(struct clip_model *m, const float *pixels, int32_t n_tiles, float *features) {
    const struct clip_hparams *hp = &m->hp;
    struct vlm_backend *be = m->be;
    struct clip_scratch *s = &m->s;
    const int64_t n_pos = hp->n_pos, n_patches = hp->n_patches, R = n_tiles * n_pos;
    const int64_t PP3 = 3 * (int64_t)hp->patch_size * hp->patch_size;

    struct vlm_tensor x = vlm_tensor_rows(&s->x, 0, R);     // [n_embd, R] residual stream
    struct vlm_tensor xb = vlm_tensor_rows(&s->xb, 0, R);   // [n_embd, R]
    struct vlm_tensor q = vlm_tensor_rows(&s->q, 0, R);     // [n_embd, R]
    struct vlm_tensor k = vlm_tensor_rows(&s->k, 0, R);     // [n_embd, R]
    struct vlm_tensor v = vlm_tensor_rows(&s->v, 0, R);     // [n_embd, R]
    struct vlm_tensor att = vlm_tensor_rows(&s->att, 0, R); // [n_embd, R]
    struct vlm_tensor h = vlm_tensor_rows(&s->h, 0, R);     // [n_ff, R]

    // patch embedding: conv(stride P) = im2col + matmul, written straight into each tile's rows 1..n_patches
    im2col(hp, pixels, n_tiles, s->host_patches);
    struct vlm_tensor patches = vlm_tensor_rows(&s->patches, 0, n_tiles * n_patches); // [3*P*P, tiles * n_patches]
    int rc = vlm_tensor_set(&patches, s->host_patches, 0, (size_t)(PP3 * n_tiles * n_patches) * sizeof(float));
    if (rc) {
        return rc;
    }
    for (int32_t t = 0; t < n_tiles; t++) {
        struct vlm_tensor xt = vlm_tensor_rows(&x, t * n_pos, n_pos);               // [n_embd, n_pos]
        struct vlm_tensor xp = vlm_tensor_rows(&x, t * n_pos + 1, n_patches);       // [n_embd, n_patches]
        struct vlm_tensor pt = vlm_tensor_rows(&patches, t * n_patches, n_patches); // [3*P*P, n_patches]
        struct vlm_tensor cls = vlm_tensor_rows(&x, t * n_pos, 1);                  // [n_embd, 1]
        linear(be, &xp, &m->patch_w, &m->patch_b, &pt);
        vlm_op_copy(be, &cls, &m->class_f32); // class token first, as transformers
        vlm_op_add(be, &xt, &xt, &m->pos_f32); // position row 0 is the class token's
    }
    vlm_op_layer_norm(be, &x, &x, &m->pre_ln_w, &m->pre_ln_b, hp->eps);
    if ((rc = emit_if_wanted(m, &x, n_tiles, 0, features))) {
        return rc;
    }

    const struct vlm_attention_params ap = {
        .n_head = hp->n_head,
        .n_head_kv = hp->n_head,
        .head_dim = hp->head_dim,
        .pos0 = 0,
        .n_kv = (int32_t)n_pos,
        .window = 0,
        .causal = false,
        .scale = 1.0f / sqrtf((float)hp->head_dim),
    };
    for (int32_t il = 0; il < hp->n_run; il++) {
        if (m->host.should_cancel && m->host.should_cancel(m->host.cancel_user)) {
            return VLM_ECANCELED;
        }
        const struct clip_layer *l = &m->layers[il];

        // attention: x += Wo attn(LN1 x) + bo, every tile attending only to itself
        vlm_op_layer_norm(be, &xb, &x, &l->ln1_w, &l->ln1_b, hp->eps);
        linear(be, &q, &l->wq, &l->bq, &xb); // [n_embd, R]
        linear(be, &k, &l->wk, &l->bk, &xb); // [n_embd, R]
        linear(be, &v, &l->wv, &l->bv, &xb); // [n_embd, R]
        for (int32_t t = 0; t < n_tiles; t++) {
            struct vlm_tensor qt = vlm_tensor_rows(&q, t * n_pos, n_pos);
            struct vlm_tensor kt = vlm_tensor_rows(&k, t * n_pos, n_pos);
            struct vlm_tensor vt = vlm_tensor_rows(&v, t * n_pos, n_pos);
            struct vlm_tensor at = vlm_tensor_rows(&att, t * n_pos, n_pos);
            if (!m->matmul_attention) {
                vlm_op_attention(be, &at, &qt, &kt, &vt, &ap); // [n_embd, n_pos]
            } else if ((rc = attention_matmul(m, &at, &qt, &kt, &vt))) {
                return rc;
            }
        }
        linear(be, &xb, &l->wo, &l->bo, &att); // [n_embd, R]
        vlm_op_add(be, &x, &x, &xb);

        // MLP: x += fc2(act(fc1(LN2 x)))
        vlm_op_layer_norm(be, &xb, &x, &l->ln2_w, &l->ln2_b, hp->eps);
        linear(be, &h, &l->fc1_w, &l->fc1_b, &xb); // [n_ff, R]
        if (hp->act_silu) {
            vlm_op_silu(be, &h, &h);
        } else {
            vlm_op_gelu(be, &h, &h, hp->gelu);
        }
        linear(be, &xb, &l->fc2_w, &l->fc2_b, &h); // [n_embd, R]
        vlm_op_add(be, &x, &x, &xb);

        if ((rc = emit_if_wanted(m, &x, n_tiles, il + 1, features))) {
            return rc;
        }
    }
    return vlm_backend_synchronize(be);
}

static int clip_encode(void *model, const struct vlm_image_batch *batch, float *features, struct vlm_diag *diag) {
    struct clip_model *m = model;
    const struct clip_hparams *hp = &m->hp;
    if (!batch || !batch->pixels || batch->n_tiles <= 0 || !features) {
        return vlm_diag_set(diag, VLM_EINVAL, "encoder-clip: empty image batch");
    }
    if (batch->size != hp->image_size) {
        return vlm_diag_set(diag, VLM_EINVAL, "encoder-clip: tiles are %d px; this encoder takes %d px",
                            batch->size, hp->image_size);
    }
    int32_t per_chunk = CLIP_CHUNK_ROWS / hp->n_pos; // >= 1 (checked at load)
    if (per_chunk > batch->n_tiles) {
        per_chunk = batch->n_tiles;
    }
    int rc = scratch_reserve(m, (int64_t)per_chunk * hp->n_pos, diag);
    if (rc) {
        return rc;
    }
    const size_t tile_px = 3 * (size_t)hp->image_size * (size_t)hp->image_size;
    const size_t tile_feat = (size_t)hp->n_patches * (size_t)hp->n_embd * (size_t)hp->n_feat;
    for (int32_t t0 = 0; t0 < batch->n_tiles; t0 += per_chunk) {
        int32_t n = batch->n_tiles - t0 < per_chunk ? batch->n_tiles - t0 : per_chunk;
        rc = forward_chunk(m, batch->pixels + (size_t)t0 * tile_px, n, features + (size_t)t0 * tile_feat);
        if (rc) {
            return vlm_diag_set(diag, rc, "image encoding %s", rc == VLM_ECANCELED ? "cancelled" : "failed");
        }
    }
    return 0;
}

// ---- descriptor ------------------------------------------------------------------------------------------------

static const struct vlm_encoder_ops clip_ops = {
    .load = clip_load,
    .unload = clip_unload,
    .info = clip_info,
    .preprocess = clip_preprocess,
    .batch_free = clip_batch_free,
    .encode = clip_encode,
};

static const char *const clip_archs[] = {"clip", NULL};

static const struct vlm_plugin_desc clip_desc = {
    .abi_version = VLM_PLUGIN_ABI_VERSION,
    .kind = VLM_PLUGIN_KIND_ENCODER,
    .name = "encoder-clip",
    .version = "0.1.0",
    .description = "CLIP ViT image encoder of LLaVA mmproj files (transformers' feature layer and class token)",
    .archs = clip_archs,
    .encoder = &clip_ops,
};

VLM_PLUGIN_EXPORT(clip_desc)
