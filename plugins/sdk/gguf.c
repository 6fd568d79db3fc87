// GGUF reader: parses and validates the whole header, KV section and tensor table at open, then serves lookups.
//
// The file is untrusted. Parsing walks a bounds-checked cursor; every declared count or length is compared with
// the bytes left before anything proportional to it is allocated, and arithmetic on file values is overflow-checked.
// Keys are copied (NUL-terminated) for lookup; string values, string arrays and tensor data point into the mapping.
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vlm/gguf.h"

#define GGUF_HEADER_SIZE      24 // magic, version, n_tensors, n_kv
#define GGUF_MAX_STRING       (16u << 20)
#define GGUF_MAX_ARRAY        (1ull << 26)
// Far above any real model (~300 tensors, ~40 keys); bounds the index memory a hostile file can make us allocate.
#define GGUF_MAX_TENSORS      (1ll << 20)
#define GGUF_MAX_KV           (1ll << 20)
// Smallest possible records, used to reject counts the remaining bytes cannot back.
#define GGUF_MIN_KV_BYTES     14 // key length (8), 1-byte key, value type (4), 1-byte value
#define GGUF_MIN_TENSOR_BYTES 32 // name length (8), empty name, n_dims (4), one dim (8), type (4), offset (8)
#define ESC_MAX               80 // bytes of a name from the file shown in a message

struct kv {
    char *key; // owned copy, NUL-terminated
    enum vlm_gguf_type type;
    enum vlm_gguf_type elem_type; // arrays only
    uint64_t n;                   // arrays: element count; strings: byte length
    const uint8_t *data;          // scalar value, string bytes, or first array element
    uint64_t *str_offs;           // string arrays: offset of each element's length prefix from `data`
};

struct vlm_gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    void *map; // our mapping, or NULL for a caller buffer
    uint32_t version;
    size_t alignment;
    size_t data_offset;
    int64_t n_kv;
    struct kv *kv;
    int64_t n_tensors;
    struct vlm_gguf_tensor *tensors;
    // Open-addressing hash indexes: a slot holds index + 1, 0 = empty. Capacity is a power of two >= 2n.
    int64_t *kv_slots;
    uint64_t kv_mask;
    int64_t *t_slots;
    uint64_t t_mask;
};

struct parser {
    struct vlm_gguf *g;
    struct vlm_diag *diag;
    size_t pos;
};

static size_t type_size(uint32_t t) {
    switch (t) {
    case VLM_GGUF_TYPE_UINT8:
    case VLM_GGUF_TYPE_INT8:
    case VLM_GGUF_TYPE_BOOL:
        return 1;
    case VLM_GGUF_TYPE_UINT16:
    case VLM_GGUF_TYPE_INT16:
        return 2;
    case VLM_GGUF_TYPE_UINT32:
    case VLM_GGUF_TYPE_INT32:
    case VLM_GGUF_TYPE_FLOAT32:
        return 4;
    case VLM_GGUF_TYPE_UINT64:
    case VLM_GGUF_TYPE_INT64:
    case VLM_GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0; // STRING, ARRAY (variable) and unknown ids
    }
}

const char *vlm_gguf_type_name(enum vlm_gguf_type t) {
    switch (t) {
    case VLM_GGUF_TYPE_UINT8:
        return "UINT8";
    case VLM_GGUF_TYPE_INT8:
        return "INT8";
    case VLM_GGUF_TYPE_UINT16:
        return "UINT16";
    case VLM_GGUF_TYPE_INT16:
        return "INT16";
    case VLM_GGUF_TYPE_UINT32:
        return "UINT32";
    case VLM_GGUF_TYPE_INT32:
        return "INT32";
    case VLM_GGUF_TYPE_FLOAT32:
        return "FLOAT32";
    case VLM_GGUF_TYPE_BOOL:
        return "BOOL";
    case VLM_GGUF_TYPE_STRING:
        return "STRING";
    case VLM_GGUF_TYPE_ARRAY:
        return "ARRAY";
    case VLM_GGUF_TYPE_UINT64:
        return "UINT64";
    case VLM_GGUF_TYPE_INT64:
        return "INT64";
    case VLM_GGUF_TYPE_FLOAT64:
        return "FLOAT64";
    case VLM_GGUF_TYPE_COUNT:
        break;
    }
    return "?";
}

static bool is_int_type(enum vlm_gguf_type t) {
    switch (t) {
    case VLM_GGUF_TYPE_UINT8:
    case VLM_GGUF_TYPE_INT8:
    case VLM_GGUF_TYPE_UINT16:
    case VLM_GGUF_TYPE_INT16:
    case VLM_GGUF_TYPE_UINT32:
    case VLM_GGUF_TYPE_INT32:
    case VLM_GGUF_TYPE_UINT64:
    case VLM_GGUF_TYPE_INT64:
        return true;
    default:
        return false;
    }
}

// ---- little-endian loads (the mapping has no alignment guarantee) -------------------------------------------

static uint16_t ld_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t ld_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t ld_u64(const uint8_t *p) {
    return (uint64_t)ld_u32(p) | ((uint64_t)ld_u32(p + 4) << 32);
}

static float ld_f32(const uint8_t *p) {
    uint32_t b = ld_u32(p);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static double ld_f64(const uint8_t *p) {
    uint64_t b = ld_u64(p);
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

// Scalar of a numeric type as int64 (ok = false when a UINT64 does not fit) and as double.
static int64_t ld_int(enum vlm_gguf_type t, const uint8_t *p, bool *ok) {
    *ok = true;
    switch (t) {
    case VLM_GGUF_TYPE_BOOL:
        return p[0] != 0;
    case VLM_GGUF_TYPE_UINT8:
        return p[0];
    case VLM_GGUF_TYPE_INT8:
        return (int8_t)p[0];
    case VLM_GGUF_TYPE_UINT16:
        return ld_u16(p);
    case VLM_GGUF_TYPE_INT16:
        return (int16_t)ld_u16(p);
    case VLM_GGUF_TYPE_UINT32:
        return ld_u32(p);
    case VLM_GGUF_TYPE_INT32:
        return (int32_t)ld_u32(p);
    case VLM_GGUF_TYPE_INT64:
        return (int64_t)ld_u64(p);
    case VLM_GGUF_TYPE_UINT64: {
        uint64_t v = ld_u64(p);
        if (v > (uint64_t)INT64_MAX) {
            *ok = false;
            return 0;
        }
        return (int64_t)v;
    }
    default:
        *ok = false;
        return 0;
    }
}

static double ld_num(enum vlm_gguf_type t, const uint8_t *p) {
    bool ok;
    switch (t) {
    case VLM_GGUF_TYPE_FLOAT32:
        return (double)ld_f32(p);
    case VLM_GGUF_TYPE_FLOAT64:
        return ld_f64(p);
    case VLM_GGUF_TYPE_UINT64:
        return (double)ld_u64(p);
    default:
        return (double)ld_int(t, p, &ok);
    }
}

// ---- messages ------------------------------------------------------------------------------------------------

// Copies a name from the file into `buf` for a message: printable ASCII kept, other bytes as \xNN, cut at ESC_MAX.
static const char *esc(char *buf, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= ESC_MAX) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            buf[o++] = (char)c;
        } else {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        }
    }
    buf[o] = 0;
    return buf;
}

#define ESC_BUF (ESC_MAX * 4 + 8)

static int fail(const struct vlm_gguf *g, struct vlm_diag *diag, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(const struct vlm_gguf *g, struct vlm_diag *diag, int code, const char *fmt, ...) {
    char msg[sizeof(diag->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return vlm_diag_set(diag, code, "%s: %s", g->path, msg);
}

#define BAD(p, ...) fail((p)->g, (p)->diag, VLM_EBADMODEL, __VA_ARGS__)

static size_t left(const struct parser *p) {
    return p->g->size - p->pos;
}

// Fails with a truncation message unless `n` bytes remain. `what` names the field for the message.
static int need(struct parser *p, uint64_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int need(struct parser *p, uint64_t n, const char *fmt, ...) {
    if (n <= left(p)) {
        return 0;
    }
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return BAD(p, "truncated or corrupt file: %s at offset %zu needs %" PRIu64 " bytes, only %zu left", what, p->pos, n,
               left(p));
}

// ---- hash index ----------------------------------------------------------------------------------------------

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; // FNV-1a
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    }
    return h;
}

static int64_t *slots_new(int64_t n, uint64_t *mask) {
    uint64_t cap = 8;
    while (cap < (uint64_t)n * 2) {
        cap <<= 1;
    }
    *mask = cap - 1;
    return calloc(cap, sizeof(int64_t));
}

// ---- KV section ----------------------------------------------------------------------------------------------

static int64_t kv_lookup(const struct vlm_gguf *g, const char *key, size_t len) {
    if (!g->kv_slots) {
        return -1;
    }
    for (uint64_t h = hash_bytes(key, len) & g->kv_mask;; h = (h + 1) & g->kv_mask) {
        int64_t s = g->kv_slots[h];
        if (s == 0) {
            return -1;
        }
        const char *k = g->kv[s - 1].key;
        if (strncmp(k, key, len) == 0 && k[len] == 0) {
            return s - 1;
        }
    }
}

static void kv_insert(struct vlm_gguf *g, int64_t i) {
    const char *k = g->kv[i].key;
    uint64_t h = hash_bytes(k, strlen(k)) & g->kv_mask;
    while (g->kv_slots[h] != 0) {
        h = (h + 1) & g->kv_mask;
    }
    g->kv_slots[h] = i + 1;
}

enum str_kind { STR_KEY, STR_VALUE, STR_ELEM };

// Names the string being read, for messages (formatted only on failure).
static const char *str_label(char *buf, size_t cap, enum str_kind kind, const char *key, uint64_t idx) {
    switch (kind) {
    case STR_KEY:
        snprintf(buf, cap, "key of kv %" PRIu64, idx);
        break;
    case STR_VALUE:
        snprintf(buf, cap, "value of key '%s'", key);
        break;
    case STR_ELEM:
        snprintf(buf, cap, "string %" PRIu64 " of array '%s'", idx, key);
        break;
    }
    return buf;
}

// Reads a string's u64 length and checks the bytes are present; leaves the cursor on the bytes.
static int read_str_len(struct parser *p, uint64_t *len, enum str_kind kind, const char *key, uint64_t idx) {
    char what[ESC_BUF + 64];
    if (left(p) < 8) {
        return need(p, 8, "length of %s", str_label(what, sizeof what, kind, key, idx));
    }
    *len = ld_u64(p->g->base + p->pos);
    p->pos += 8;
    if (*len > left(p)) {
        return BAD(p,
                   "truncated or corrupt file: %s: string length %" PRIu64 " at offset %zu exceeds the %zu bytes left",
                   str_label(what, sizeof what, kind, key, idx), *len, p->pos - 8, left(p));
    }
    if (*len > GGUF_MAX_STRING) {
        return BAD(p, "%s: string length %" PRIu64 " exceeds the limit of %u bytes",
                   str_label(what, sizeof what, kind, key, idx), *len, (unsigned)GGUF_MAX_STRING);
    }
    return 0;
}

static int parse_array(struct parser *p, struct kv *kv, const char *ek) {
    int rc = need(p, 12, "array header of key '%s'", ek);
    if (rc) {
        return rc;
    }
    uint32_t et = ld_u32(p->g->base + p->pos);
    uint64_t n = ld_u64(p->g->base + p->pos + 4);
    p->pos += 12;
    if (et == VLM_GGUF_TYPE_ARRAY) {
        return BAD(p, "key '%s': nested arrays are not supported", ek);
    }
    if (et >= VLM_GGUF_TYPE_COUNT) {
        return BAD(p, "key '%s': unknown array element type %" PRIu32, ek, et);
    }
    size_t es = et == VLM_GGUF_TYPE_STRING ? 8 : type_size(et); // a string takes at least its length prefix
    if (n > left(p) / es) {
        return BAD(p,
                   "truncated or corrupt file: key '%s': array of %" PRIu64 " %s elements at offset %zu exceeds the "
                   "%zu bytes left",
                   ek, n, vlm_gguf_type_name((enum vlm_gguf_type)et), p->pos, left(p));
    }
    if (n > GGUF_MAX_ARRAY) {
        return BAD(p, "key '%s': array of %" PRIu64 " elements exceeds the limit of %llu", ek, n, GGUF_MAX_ARRAY);
    }
    kv->elem_type = (enum vlm_gguf_type)et;
    kv->n = n;
    kv->data = p->g->base + p->pos;
    if (et != VLM_GGUF_TYPE_STRING) {
        p->pos += (size_t)n * es;
        return 0;
    }
    // Two passes: validate every string against the file first, then build the O(1) index.
    size_t start = p->pos;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = 0;
        rc = read_str_len(p, &len, STR_ELEM, ek, i);
        if (rc) {
            return rc;
        }
        p->pos += (size_t)len;
    }
    if (n > 0) {
        kv->str_offs = malloc((size_t)n * sizeof(uint64_t));
        if (!kv->str_offs) {
            return fail(p->g, p->diag, VLM_ENOMEM, "key '%s': no memory for a %" PRIu64 "-string index", ek, n);
        }
        size_t q = start;
        for (uint64_t i = 0; i < n; i++) {
            kv->str_offs[i] = q - start;
            q += 8 + (size_t)ld_u64(p->g->base + q);
        }
    }
    return 0;
}

static int parse_kv(struct parser *p, int64_t i) {
    struct vlm_gguf *g = p->g;
    struct kv *kv = &g->kv[i];
    uint64_t len = 0;
    int rc = read_str_len(p, &len, STR_KEY, NULL, (uint64_t)i);
    if (rc) {
        return rc;
    }
    const char *k = (const char *)g->base + p->pos;
    if (len == 0) {
        return BAD(p, "kv %" PRId64 " at offset %zu: empty key", i, p->pos - 8);
    }
    char ek[ESC_BUF];
    esc(ek, sizeof ek, k, (size_t)len);
    if (memchr(k, 0, (size_t)len)) {
        return BAD(p, "key '%s': contains a NUL byte", ek);
    }
    if (kv_lookup(g, k, (size_t)len) >= 0) {
        return BAD(p, "duplicate key '%s'", ek);
    }
    kv->key = malloc((size_t)len + 1);
    if (!kv->key) {
        return fail(g, p->diag, VLM_ENOMEM, "key '%s': out of memory", ek);
    }
    memcpy(kv->key, k, (size_t)len);
    kv->key[len] = 0;
    kv_insert(g, i);
    p->pos += (size_t)len;

    rc = need(p, 4, "value type of key '%s'", ek);
    if (rc) {
        return rc;
    }
    uint32_t t = ld_u32(g->base + p->pos);
    p->pos += 4;
    if (t >= VLM_GGUF_TYPE_COUNT) {
        return BAD(p, "key '%s': unknown value type %" PRIu32, ek, t);
    }
    kv->type = (enum vlm_gguf_type)t;
    if (t == VLM_GGUF_TYPE_ARRAY) {
        return parse_array(p, kv, ek);
    }
    if (t == VLM_GGUF_TYPE_STRING) {
        rc = read_str_len(p, &len, STR_VALUE, ek, 0);
        if (rc) {
            return rc;
        }
        kv->n = len;
        kv->data = g->base + p->pos;
        p->pos += (size_t)len;
        return 0;
    }
    rc = need(p, type_size(t), "%s value of key '%s'", vlm_gguf_type_name(kv->type), ek);
    if (rc) {
        return rc;
    }
    kv->data = g->base + p->pos;
    p->pos += type_size(t);
    return 0;
}

// ---- tensor table --------------------------------------------------------------------------------------------

static int64_t tensor_lookup(const struct vlm_gguf *g, const char *name, size_t len) {
    if (!g->t_slots || len >= VLM_GGUF_MAX_NAME) {
        return -1;
    }
    for (uint64_t h = hash_bytes(name, len) & g->t_mask;; h = (h + 1) & g->t_mask) {
        int64_t s = g->t_slots[h];
        if (s == 0) {
            return -1;
        }
        const char *t = g->tensors[s - 1].name;
        if (strncmp(t, name, len) == 0 && t[len] == 0) {
            return s - 1;
        }
    }
}

static void tensor_insert(struct vlm_gguf *g, int64_t i) {
    const char *n = g->tensors[i].name;
    uint64_t h = hash_bytes(n, strlen(n)) & g->t_mask;
    while (g->t_slots[h] != 0) {
        h = (h + 1) & g->t_mask;
    }
    g->t_slots[h] = i + 1;
}

// Name, shape, type and offset of tensor `i`; sizes are computed here, data bounds are checked later.
static int parse_tensor_info(struct parser *p, int64_t i, uint64_t *offset) {
    struct vlm_gguf *g = p->g;
    struct vlm_gguf_tensor *t = &g->tensors[i];
    int rc = need(p, 8, "name length of tensor %" PRId64, i);
    if (rc) {
        return rc;
    }
    uint64_t len = ld_u64(g->base + p->pos);
    p->pos += 8;
    if (len >= VLM_GGUF_MAX_NAME) {
        return BAD(p, "tensor %" PRId64 " at offset %zu: name too long (%" PRIu64 " bytes, at most %d)", i, p->pos - 8,
                   len, VLM_GGUF_MAX_NAME - 1);
    }
    rc = need(p, len, "name of tensor %" PRId64, i);
    if (rc) {
        return rc;
    }
    const char *name = (const char *)g->base + p->pos;
    char en[ESC_BUF];
    esc(en, sizeof en, name, (size_t)len);
    if (memchr(name, 0, (size_t)len)) {
        return BAD(p, "tensor '%s': name contains a NUL byte", en);
    }
    if (tensor_lookup(g, name, (size_t)len) >= 0) {
        return BAD(p, "duplicate tensor name '%s'", en);
    }
    memcpy(t->name, name, (size_t)len);
    t->name[len] = 0;
    tensor_insert(g, i);
    p->pos += (size_t)len;

    rc = need(p, 4, "n_dims of tensor '%s'", en);
    if (rc) {
        return rc;
    }
    uint32_t n_dims = ld_u32(g->base + p->pos);
    p->pos += 4;
    if (n_dims < 1 || n_dims > VLM_GGUF_MAX_DIMS) {
        return BAD(p, "tensor '%s': n_dims %" PRIu32 " out of range 1..%d", en, n_dims, VLM_GGUF_MAX_DIMS);
    }
    t->n_dims = n_dims;
    rc = need(p, (uint64_t)n_dims * 8 + 12, "shape, type and offset of tensor '%s'", en);
    if (rc) {
        return rc;
    }
    int64_t nel = 1;
    bool nel_overflow = false, zero = false;
    for (uint32_t d = 0; d < VLM_GGUF_MAX_DIMS; d++) {
        int64_t ne = 1;
        if (d < n_dims) {
            ne = (int64_t)ld_u64(g->base + p->pos);
            p->pos += 8;
            if (ne < 0) {
                return BAD(p, "tensor '%s': negative dimension ne[%" PRIu32 "] = %" PRId64, en, d, ne);
            }
        }
        t->ne[d] = ne;
        zero |= ne == 0;
        nel_overflow |= __builtin_mul_overflow(nel, ne, &nel);
    }
    // A zero dimension makes the product 0 whatever the order, so only a product of non-zero dims overflows.
    if (zero) {
        nel = 0;
    } else if (nel_overflow) {
        return BAD(p,
                   "tensor '%s': element count %" PRId64 " x %" PRId64 " x %" PRId64 " x %" PRId64 " overflows int64",
                   en, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    }
    int32_t type = (int32_t)ld_u32(g->base + p->pos);
    p->pos += 4;
    const struct vlm_type_traits *tr = vlm_type_traits(type);
    if (!tr || !tr->known || tr->blck_size <= 0 || tr->type_size == 0) {
        return BAD(p, "tensor '%s': unknown tensor type %" PRId32, en, type);
    }
    t->type = (enum vlm_type)type;
    if (t->ne[0] % tr->blck_size != 0) {
        return BAD(p, "tensor '%s': ne[0] = %" PRId64 " is not a multiple of the %s block size %" PRId64, en, t->ne[0],
                   tr->name ? tr->name : "?", tr->blck_size);
    }
    uint64_t size = (uint64_t)(t->ne[0] / tr->blck_size);
    bool size_overflow = __builtin_mul_overflow(size, (uint64_t)tr->type_size, &size);
    for (int d = 1; d < VLM_GGUF_MAX_DIMS; d++) {
        size_overflow |= __builtin_mul_overflow(size, (uint64_t)t->ne[d], &size);
    }
    if ((size_overflow || size > (uint64_t)INT64_MAX || size > SIZE_MAX) && nel != 0) {
        return BAD(p, "tensor '%s': byte size of %" PRId64 " x %" PRId64 " x %" PRId64 " x %" PRId64 " %s overflows",
                   en, t->ne[0], t->ne[1], t->ne[2], t->ne[3], tr->name ? tr->name : "?");
    }
    t->size = nel == 0 ? 0 : (size_t)size;
    *offset = ld_u64(g->base + p->pos);
    p->pos += 8;
    t->offset = *offset;
    return 0;
}

// Offsets: aligned, inside the file, and contiguous in file order (llama.cpp's rule, which also rules out overlap).
static int check_tensor_data(struct parser *p) {
    struct vlm_gguf *g = p->g;
    size_t avail = g->size - g->data_offset;
    uint64_t expect = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        struct vlm_gguf_tensor *t = &g->tensors[i];
        char en[ESC_BUF];
        esc(en, sizeof en, t->name, strlen(t->name));
        if (t->offset % g->alignment != 0) {
            return BAD(p, "tensor '%s': data offset %" PRIu64 " is not aligned to %zu", en, t->offset, g->alignment);
        }
        if (t->offset > avail) {
            return BAD(
                p, "tensor '%s': data offset %" PRIu64 " lies past end of file (data section %zu+%zu, file size %zu)",
                en, t->offset, g->data_offset, avail, g->size);
        }
        if (t->size > avail - t->offset) {
            return BAD(p, "tensor '%s': data at offset %" PRIu64 "+%zu extends past end of file (size %zu)", en,
                       g->data_offset + t->offset, t->size, g->size);
        }
        if (t->offset != expect) {
            char prev[ESC_BUF], quoted[ESC_BUF + 2];
            if (i == 0) {
                snprintf(quoted, sizeof quoted, "the start of the data section");
            } else {
                esc(prev, sizeof prev, g->tensors[i - 1].name, strlen(g->tensors[i - 1].name));
                snprintf(quoted, sizeof quoted, "'%s'", prev);
            }
            return BAD(p,
                       "tensor '%s': data offset %" PRIu64 " %s %s, expected %" PRIu64
                       " (tensors must be contiguous in file order)",
                       en, t->offset, t->offset < expect ? "overlaps" : "leaves a gap after", quoted, expect);
        }
        t->data = g->base + g->data_offset + t->offset;
        // expect + size + padding <= avail + alignment, so it cannot overflow
        expect += (t->size + g->alignment - 1) / g->alignment * g->alignment;
    }
    return 0;
}

// ---- open ----------------------------------------------------------------------------------------------------

static int parse_header(struct parser *p, int64_t *n_tensors, int64_t *n_kv) {
    struct vlm_gguf *g = p->g;
    if (g->size == 0) {
        return BAD(p, "file is empty");
    }
    if (g->size >= 4 && memcmp(g->base, "GGUF", 4) != 0) {
        char m[ESC_BUF];
        return BAD(p, "bad magic '%s' (not a GGUF file)", esc(m, sizeof m, (const char *)g->base, 4));
    }
    if (g->size >= 8) {
        uint32_t v = ld_u32(g->base + 4);
        if ((v & 0xffffu) == 0 && v != 0) {
            return BAD(p, "unsupported GGUF version 0x%08" PRIx32 ": wrong endianness (a big-endian file?)", v);
        }
        if (v == 1) {
            return BAD(p, "GGUF version 1 is no longer supported (expected 2 or 3)");
        }
        if (v != 2 && v != 3) {
            return BAD(p, "unsupported GGUF version %" PRIu32 " (expected 2 or 3)", v);
        }
        g->version = v;
    }
    if (g->size < GGUF_HEADER_SIZE) {
        return BAD(p, "truncated header: file has %zu bytes, a GGUF header needs %d", g->size, GGUF_HEADER_SIZE);
    }
    *n_tensors = (int64_t)ld_u64(g->base + 8);
    *n_kv = (int64_t)ld_u64(g->base + 16);
    p->pos = GGUF_HEADER_SIZE;
    if (*n_tensors < 0 || *n_tensors > (int64_t)(left(p) / GGUF_MIN_TENSOR_BYTES)) {
        return BAD(p, "tensor count %" PRId64 " is impossible for a file of %zu bytes", *n_tensors, g->size);
    }
    if (*n_tensors > GGUF_MAX_TENSORS) {
        return BAD(p, "tensor count %" PRId64 " exceeds the limit of %lld", *n_tensors, GGUF_MAX_TENSORS);
    }
    if (*n_kv < 0 || *n_kv > (int64_t)(left(p) / GGUF_MIN_KV_BYTES)) {
        return BAD(p, "kv count %" PRId64 " is impossible for a file of %zu bytes", *n_kv, g->size);
    }
    if (*n_kv > GGUF_MAX_KV) {
        return BAD(p, "kv count %" PRId64 " exceeds the limit of %lld", *n_kv, GGUF_MAX_KV);
    }
    return 0;
}

static int parse(struct parser *p) {
    struct vlm_gguf *g = p->g;
    int64_t n_tensors, n_kv;
    int rc = parse_header(p, &n_tensors, &n_kv);
    if (rc) {
        return rc;
    }
    g->kv = calloc((size_t)n_kv + 1, sizeof *g->kv);
    g->kv_slots = slots_new(n_kv, &g->kv_mask);
    if (!g->kv || !g->kv_slots) {
        return fail(g, p->diag, VLM_ENOMEM, "out of memory for %" PRId64 " keys", n_kv);
    }
    for (int64_t i = 0; i < n_kv; i++) {
        g->n_kv = i + 1; // so close frees what this entry allocated, even on failure
        rc = parse_kv(p, i);
        if (rc) {
            return rc;
        }
    }

    g->alignment = VLM_GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = vlm_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        const struct kv *a = &g->kv[ai];
        if (a->type != VLM_GGUF_TYPE_UINT32) {
            return BAD(p, "general.alignment has type %s, expected UINT32", vlm_gguf_type_name(a->type));
        }
        uint32_t v = ld_u32(a->data);
        if (v == 0 || (v & (v - 1)) != 0) {
            return BAD(p, "general.alignment must be a non-zero power of two, got %" PRIu32, v);
        }
        g->alignment = v;
    }

    if (n_tensors > (int64_t)(left(p) / GGUF_MIN_TENSOR_BYTES)) {
        return BAD(p, "tensor count %" PRId64 " needs more than the %zu bytes left after the metadata at offset %zu",
                   n_tensors, left(p), p->pos);
    }
    g->tensors = calloc((size_t)n_tensors + 1, sizeof *g->tensors);
    g->t_slots = slots_new(n_tensors, &g->t_mask);
    if (!g->tensors || !g->t_slots) {
        return fail(g, p->diag, VLM_ENOMEM, "out of memory for %" PRId64 " tensors", n_tensors);
    }
    for (int64_t i = 0; i < n_tensors; i++) {
        uint64_t off;
        g->n_tensors = i + 1;
        rc = parse_tensor_info(p, i, &off);
        if (rc) {
            return rc;
        }
    }

    // pos <= size, and size + alignment cannot wrap for any real mapping, but check rather than assume.
    size_t pad = (g->alignment - p->pos % g->alignment) % g->alignment;
    if (pad > SIZE_MAX - p->pos) {
        return BAD(p, "data section offset overflows");
    }
    g->data_offset = p->pos + pad;
    if (n_tensors > 0 && g->data_offset > g->size) {
        return BAD(p,
                   "data section missing: tensor data would start at offset %zu (end of tensor info %zu aligned to "
                   "%zu), file size %zu",
                   g->data_offset, p->pos, g->alignment, g->size);
    }
    if (n_tensors == 0 && g->data_offset > g->size) {
        g->data_offset = g->size; // vocab-only files may end right after the metadata, unpadded
    }
    return check_tensor_data(p);
}

static int
open_impl(const void *data, size_t size, void *map, const char *name, struct vlm_gguf **out, struct vlm_diag *diag) {
    struct vlm_gguf *g = calloc(1, sizeof *g);
    char *path = strdup(name ? name : "(buffer)");
    if (!g || !path) {
        free(g);
        free(path);
        if (map) {
            munmap(map, size);
        }
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", name ? name : "(buffer)");
    }
    g->path = path;
    g->base = data;
    g->size = size;
    g->map = map;
    struct parser p = {.g = g, .diag = diag, .pos = 0};
    int rc = parse(&p);
    if (rc) {
        vlm_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int vlm_gguf_open_buffer(
    const void *data, size_t size, const char *name, struct vlm_gguf **out, struct vlm_diag *diag) {
    if (!out || (!data && size > 0)) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: invalid arguments", name ? name : "(buffer)");
    }
    return open_impl(size ? data : "", size, NULL, name, out, diag);
}

int vlm_gguf_open(const char *path, struct vlm_gguf **out, struct vlm_diag *diag) {
    if (!path || !out) {
        return vlm_diag_set(diag, VLM_EINVAL, "vlm_gguf_open: invalid arguments");
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return vlm_diag_set(diag, -e, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return vlm_diag_set(diag, -e, "%s: cannot stat: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return vlm_diag_set(diag, VLM_EINVAL, "%s: is a directory, expected a GGUF file", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return vlm_diag_set(diag, VLM_EINVAL, "%s: not a regular file", path);
    }
    if (st.st_size < GGUF_HEADER_SIZE || (uint64_t)st.st_size > SIZE_MAX) {
        // Too small to map usefully (a 0-byte mapping is an error): read what is there for a precise message.
        uint8_t head[GGUF_HEADER_SIZE];
        ssize_t n = st.st_size > 0 && st.st_size < GGUF_HEADER_SIZE ? pread(fd, head, (size_t)st.st_size, 0) : 0;
        close(fd);
        if (n < 0 || (uint64_t)st.st_size > SIZE_MAX) {
            return vlm_diag_set(diag, VLM_EIO, "%s: cannot read %lld bytes", path, (long long)st.st_size);
        }
        struct vlm_gguf *g = NULL;
        int rc = open_impl(head, (size_t)n, NULL, path, &g, diag);
        if (rc == 0) { // unreachable: no header fits, but never hand out a reader over the stack buffer
            vlm_gguf_close(g);
            rc = vlm_diag_set(diag, VLM_EINTERNAL, "%s: truncated header", path);
        }
        return rc;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        return vlm_diag_set(diag, -e, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
    }
    // Start reading the whole file in the background (as llama.cpp does): otherwise the first forward pass
    // pays for every page fault of the weights, one 4 KiB read at a time.
    posix_madvise(map, size, POSIX_MADV_WILLNEED);
    return open_impl(map, size, map, path, out, diag);
}

void vlm_gguf_close(struct vlm_gguf *g) {
    if (!g) {
        return;
    }
    for (int64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_offs);
    }
    free(g->kv);
    free(g->kv_slots);
    free(g->tensors);
    free(g->t_slots);
    if (g->map) {
        munmap(g->map, g->size);
    }
    free(g->path);
    free(g);
}

// ---- accessors -----------------------------------------------------------------------------------------------

const char *vlm_gguf_path(const struct vlm_gguf *g) {
    return g->path;
}

uint32_t vlm_gguf_version(const struct vlm_gguf *g) {
    return g->version;
}

size_t vlm_gguf_alignment(const struct vlm_gguf *g) {
    return g->alignment;
}

size_t vlm_gguf_file_size(const struct vlm_gguf *g) {
    return g->size;
}

int64_t vlm_gguf_kv_count(const struct vlm_gguf *g) {
    return g->n_kv;
}

int64_t vlm_gguf_find_key(const struct vlm_gguf *g, const char *key) {
    return key ? kv_lookup(g, key, strlen(key)) : -1;
}

const char *vlm_gguf_kv_key(const struct vlm_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL;
}

enum vlm_gguf_type vlm_gguf_kv_type(const struct vlm_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].type : VLM_GGUF_TYPE_COUNT;
}

int vlm_gguf_kv_array(const struct vlm_gguf *g, int64_t i, enum vlm_gguf_type *elem_type, uint64_t *n) {
    if (i < 0 || i >= g->n_kv || g->kv[i].type != VLM_GGUF_TYPE_ARRAY) {
        return VLM_EINVAL;
    }
    if (elem_type) {
        *elem_type = g->kv[i].elem_type;
    }
    if (n) {
        *n = g->kv[i].n;
    }
    return 0;
}

// Finds `key`; on a present key returns its entry, else NULL with *rc = VLM_ENOENT.
static const struct kv *get_kv(const struct vlm_gguf *g, const char *key, int *rc) {
    int64_t i = vlm_gguf_find_key(g, key);
    if (i < 0) {
        *rc = VLM_ENOENT;
        return NULL;
    }
    *rc = 0;
    return &g->kv[i];
}

static int wrong_type(const struct vlm_gguf *g, const struct kv *kv, const char *expected, struct vlm_diag *diag) {
    if (kv->type == VLM_GGUF_TYPE_ARRAY) {
        return fail(g, diag, VLM_EBADMODEL, "key '%s' has type ARRAY of %s, expected %s", kv->key,
                    vlm_gguf_type_name(kv->elem_type), expected);
    }
    return fail(g, diag, VLM_EBADMODEL, "key '%s' has type %s, expected %s", kv->key, vlm_gguf_type_name(kv->type),
                expected);
}

int vlm_gguf_get_int(const struct vlm_gguf *g, const char *key, int64_t *out, struct vlm_diag *diag) {
    int rc;
    const struct kv *kv = get_kv(g, key, &rc);
    if (!kv) {
        return rc;
    }
    if (!is_int_type(kv->type) && kv->type != VLM_GGUF_TYPE_BOOL) {
        return wrong_type(g, kv, "an integer", diag);
    }
    bool ok;
    int64_t v = ld_int(kv->type, kv->data, &ok);
    if (!ok) {
        return fail(g, diag, VLM_EBADMODEL, "key '%s': value %" PRIu64 " does not fit in int64", kv->key,
                    ld_u64(kv->data));
    }
    *out = v;
    return 0;
}

int vlm_gguf_get_float(const struct vlm_gguf *g, const char *key, double *out, struct vlm_diag *diag) {
    int rc;
    const struct kv *kv = get_kv(g, key, &rc);
    if (!kv) {
        return rc;
    }
    if (!is_int_type(kv->type) && kv->type != VLM_GGUF_TYPE_FLOAT32 && kv->type != VLM_GGUF_TYPE_FLOAT64) {
        return wrong_type(g, kv, "a number", diag);
    }
    *out = ld_num(kv->type, kv->data);
    return 0;
}

int vlm_gguf_get_bool(const struct vlm_gguf *g, const char *key, bool *out, struct vlm_diag *diag) {
    int rc;
    const struct kv *kv = get_kv(g, key, &rc);
    if (!kv) {
        return rc;
    }
    if (kv->type != VLM_GGUF_TYPE_BOOL) {
        return wrong_type(g, kv, "BOOL", diag);
    }
    *out = kv->data[0] != 0;
    return 0;
}

int vlm_gguf_get_str(const struct vlm_gguf *g, const char *key, struct vlm_gguf_str *out, struct vlm_diag *diag) {
    int rc;
    const struct kv *kv = get_kv(g, key, &rc);
    if (!kv) {
        return rc;
    }
    if (kv->type != VLM_GGUF_TYPE_STRING) {
        return wrong_type(g, kv, "STRING", diag);
    }
    out->ptr = (const char *)kv->data;
    out->len = kv->n;
    return 0;
}

int vlm_gguf_get_array(const struct vlm_gguf *g,
                       const char *key,
                       enum vlm_gguf_type elem_type,
                       const void **data,
                       uint64_t *n,
                       struct vlm_diag *diag) {
    int rc;
    const struct kv *kv = get_kv(g, key, &rc);
    if (!kv) {
        return rc;
    }
    if (elem_type == VLM_GGUF_TYPE_STRING || elem_type == VLM_GGUF_TYPE_ARRAY || type_size(elem_type) == 0) {
        return fail(g, diag, VLM_EINVAL, "key '%s': vlm_gguf_get_array takes a numeric element type, not %s", key,
                    vlm_gguf_type_name(elem_type));
    }
    if (kv->type != VLM_GGUF_TYPE_ARRAY || kv->elem_type != elem_type) {
        char want[32];
        snprintf(want, sizeof want, "ARRAY of %s", vlm_gguf_type_name(elem_type));
        return wrong_type(g, kv, want, diag);
    }
    *data = kv->data;
    *n = kv->n;
    return 0;
}

int vlm_gguf_get_str_array(
    const struct vlm_gguf *g, const char *key, int64_t *kv_index, uint64_t *n, struct vlm_diag *diag) {
    int rc;
    const struct kv *kv = get_kv(g, key, &rc);
    if (!kv) {
        return rc;
    }
    if (kv->type != VLM_GGUF_TYPE_ARRAY || kv->elem_type != VLM_GGUF_TYPE_STRING) {
        return wrong_type(g, kv, "ARRAY of STRING", diag);
    }
    *kv_index = kv - g->kv;
    *n = kv->n;
    return 0;
}

struct vlm_gguf_str vlm_gguf_array_str(const struct vlm_gguf *g, int64_t kv_index, uint64_t i) {
    struct vlm_gguf_str s = {NULL, 0};
    if (kv_index < 0 || kv_index >= g->n_kv) {
        return s;
    }
    const struct kv *kv = &g->kv[kv_index];
    if (kv->type != VLM_GGUF_TYPE_ARRAY || kv->elem_type != VLM_GGUF_TYPE_STRING || i >= kv->n) {
        return s;
    }
    const uint8_t *p = kv->data + kv->str_offs[i];
    s.len = ld_u64(p);
    s.ptr = (const char *)p + 8;
    return s;
}

int vlm_gguf_array_get_num(const struct vlm_gguf *g, int64_t kv_index, uint64_t i, double *out) {
    if (kv_index < 0 || kv_index >= g->n_kv) {
        return VLM_EINVAL;
    }
    const struct kv *kv = &g->kv[kv_index];
    size_t es = type_size(kv->elem_type);
    if (kv->type != VLM_GGUF_TYPE_ARRAY || es == 0 || i >= kv->n) {
        return VLM_EINVAL;
    }
    *out = ld_num(kv->elem_type, kv->data + i * es);
    return 0;
}

int64_t vlm_gguf_tensor_count(const struct vlm_gguf *g) {
    return g->n_tensors;
}

const struct vlm_gguf_tensor *vlm_gguf_tensor_at(const struct vlm_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct vlm_gguf_tensor *vlm_gguf_find_tensor(const struct vlm_gguf *g, const char *name) {
    if (!name) {
        return NULL;
    }
    int64_t i = tensor_lookup(g, name, strlen(name));
    return i >= 0 ? &g->tensors[i] : NULL;
}

bool vlm_gguf_str_eq(struct vlm_gguf_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && (n == 0 || memcmp(s.ptr, lit, n) == 0);
}
