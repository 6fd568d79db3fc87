// Model-loading helpers for plugins (see include/vlm/weights.h).
#include <math.h>
#include <string.h>

#include "vlm/log.h"
#include "vlm/weights.h"

int vlm_hparam_i32(const struct vlm_gguf *g, const char *key, int32_t lo, int32_t hi, bool required, int32_t *out,
                   struct vlm_diag *diag) {
    int64_t v;
    int rc = vlm_gguf_get_int(g, key, &v, diag);
    if (rc == VLM_ENOENT) {
        if (required) {
            return vlm_diag_set(diag, VLM_EBADMODEL, "%s: missing required key '%s'", vlm_gguf_path(g), key);
        }
        return 0;
    }
    if (rc == VLM_EBADMODEL) {
        // Per-layer arrays (e.g. head_count): accept them when every layer has the same value.
        int64_t idx = vlm_gguf_find_key(g, key);
        enum vlm_gguf_type et;
        uint64_t n;
        if (idx < 0 || vlm_gguf_kv_array(g, idx, &et, &n) != 0 || n == 0) {
            return rc;
        }
        double first = 0, cur = 0;
        if (vlm_gguf_array_get_num(g, idx, 0, &first) != 0) {
            return rc;
        }
        for (uint64_t i = 1; i < n; i++) {
            if (vlm_gguf_array_get_num(g, idx, i, &cur) != 0 || cur != first) {
                return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: key '%s' varies per layer; not supported",
                                    vlm_gguf_path(g), key);
            }
        }
        if (!(first >= (double)INT64_MIN && first <= (double)INT64_MAX) || first != floor(first)) {
            return vlm_diag_set(diag, VLM_EBADMODEL, "%s: key '%s' is not an integer", vlm_gguf_path(g), key);
        }
        v = (int64_t)first;
    } else if (rc) {
        return rc;
    }
    if (v < lo || v > hi) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: key '%s' = %lld is outside [%d, %d]", vlm_gguf_path(g), key,
                            (long long)v, lo, hi);
    }
    *out = (int32_t)v;
    return 0;
}

int vlm_hparam_f32(const struct vlm_gguf *g, const char *key, float *out, struct vlm_diag *diag) {
    double v;
    int rc = vlm_gguf_get_float(g, key, &v, diag);
    if (rc == VLM_ENOENT) {
        return 0;
    }
    if (rc) {
        return rc;
    }
    if (!isfinite(v) || fabs(v) > 3.4e38) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: key '%s' is not a finite float", vlm_gguf_path(g), key);
    }
    *out = (float)v;
    return 0;
}

int vlm_hparam_bool(const struct vlm_gguf *g, const char *key, bool *out, struct vlm_diag *diag) {
    int rc = vlm_gguf_get_bool(g, key, out, diag);
    return rc == VLM_ENOENT ? 0 : rc;
}

int vlm_weight_load(struct vlm_backend *be, const struct vlm_gguf *g, const char *name, const int64_t want[4],
                    unsigned flags, struct vlm_tensor *out, struct vlm_diag *diag) {
    const char *path = vlm_gguf_path(g);
    const struct vlm_gguf_tensor *t = vlm_gguf_find_tensor(g, name);
    memset(out, 0, sizeof *out);
    if (!t) {
        return (flags & VLM_WEIGHT_REQUIRED) ? vlm_diag_set(diag, VLM_EBADMODEL, "%s: missing tensor '%s'", path, name)
                                             : 0;
    }
    if (t->ne[0] != want[0] || t->ne[1] != want[1] || t->ne[2] != want[2] || t->ne[3] != want[3]) {
        return vlm_diag_set(diag, VLM_EBADMODEL,
                            "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                            path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                            (long long)t->ne[3], (long long)want[0], (long long)want[1], (long long)want[2],
                            (long long)want[3]);
    }
    if (flags & VLM_WEIGHT_MATRIX) {
        if (!vlm_backend_supports_type(be, t->type)) {
            return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: tensor '%s' has type %s, which backend %s cannot use",
                                path, name, vlm_type_name(t->type), vlm_backend_name(be));
        }
    } else if (t->type != VLM_TYPE_F32) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: tensor '%s' has type %s, expected F32", path, name,
                            vlm_type_name(t->type));
    }
    int64_t rows = want[3] > 1 ? want[3] : want[1] * want[2];
    int64_t cols = want[3] > 1 ? want[0] * want[1] * want[2] : want[0];
    if (cols % vlm_type_traits(t->type)->blck_size) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED,
                            "%s: tensor '%s' has rows of %lld elements, not a whole number of %s blocks", path, name,
                            (long long)cols, vlm_type_name(t->type));
    }
    struct vlm_tensor desc = vlm_tensor_make(t->type, cols, rows, 1, 1);
    desc.name = t->name;
    int rc = vlm_tensor_from_host(be, &desc, t->data, out);
    if (rc) {
        return vlm_diag_set(diag, rc, "%s: cannot place tensor '%s' on backend %s", path, name, vlm_backend_name(be));
    }
    out->name = t->name;
    const bool bf16 = (flags & VLM_WEIGHT_BF16) ||
                      ((flags & VLM_WEIGHT_BF16_16) && (t->type == VLM_TYPE_F16 || t->type == VLM_TYPE_BF16));
    if ((flags & VLM_WEIGHT_MATRIX) && bf16 && vlm_backend_fast_bf16(be)) {
        // out of memory for the copy only costs speed: the stored weights still work
        rc = vlm_tensor_set_precision(be, out, VLM_PRECISION_BF16);
        if (rc && rc != VLM_EUNSUPPORTED) {
            VLM_LOGW("%s: tensor '%s': no BF16 copy (%s): exact products", path, name, vlm_strerror(rc));
        }
    }
    return 0;
}

unsigned vlm_weight_precision_flags(enum vlm_precision host_precision, unsigned auto_flags) {
    switch (host_precision) {
    case VLM_PRECISION_EXACT: return 0;
    case VLM_PRECISION_BF16: return VLM_WEIGHT_BF16;
    default: return auto_flags & (VLM_WEIGHT_BF16 | VLM_WEIGHT_BF16_16);
    }
}

int vlm_weight_load_2d(struct vlm_backend *be, const struct vlm_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                       unsigned flags, struct vlm_tensor *out, struct vlm_diag *diag) {
    const int64_t want[4] = {ne0, ne1 > 0 ? ne1 : 1, 1, 1};
    return vlm_weight_load(be, g, name, want, flags, out, diag);
}
