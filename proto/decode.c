// Typed decoding of params, results and notifications. Every decoder walks a message the scanner has checked,
// with a cursor that still checks each bound; it never allocates and never recurses on client data (nesting
// follows the fixed schema below; values under unknown keys are skipped iteratively).
//
// Error messages name our own field names only, never bytes from the message.
#include <float.h>
#include <math.h>
#include <string.h>

#include "proto/proto-impl.h"
#include "vlm/proto.h"

// ---- small public helpers ---------------------------------------------------------------------------------

struct vlm_proto_limits vlm_proto_default_limits(void) {
    struct vlm_proto_limits l = {
        .max_message = (size_t)64 << 20,
        .max_str = 1u << 20,
        .max_array = 1024,
        .max_map = 256,
        .max_depth = 8,
        .max_images = 8,
    };
    return l;
}

struct vlm_proto_limits vlm_proto_client_limits(void) {
    struct vlm_proto_limits l = vlm_proto_default_limits();
    l.max_str = (uint32_t)l.max_message;
    return l;
}

struct vlm_proto_str vlm_proto_str_c(const char *s) {
    struct vlm_proto_str r = {s, s ? (uint32_t)strlen(s) : 0};
    return r;
}

bool vlm_proto_str_eq(struct vlm_proto_str s, const char *c) {
    size_t n = strlen(c);
    return s.ptr && s.len == n && memcmp(s.ptr, c, n) == 0;
}

int vlm_proto_str_copy(struct vlm_proto_str s, char *dst, size_t cap) {
    if (cap == 0 || s.len >= cap) {
        return VLM_ETOOLARGE;
    }
    if (s.len) {
        memcpy(dst, s.ptr, s.len);
    }
    dst[s.len] = 0;
    return 0;
}

bool vlm_proto_utf8_valid(const void *ptr, size_t len) {
    const uint8_t *p = ptr;
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c == 0) {
                return false;
            }
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false; // continuation byte, overlong lead (c0/c1) or beyond U+10FFFF (f5..ff)
        }
        if (len - i <= n) {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}

static const char *const method_names[] = {
    [VLM_RPC_HELLO] = "hello",   [VLM_RPC_ASK] = "ask",       [VLM_RPC_CANCEL] = "cancel",
    [VLM_RPC_STATUS] = "status", [VLM_RPC_CHAINS] = "chains", [VLM_RPC_PLUGINS] = "plugins",
    [VLM_RPC_LOAD] = "load",     [VLM_RPC_UNLOAD] = "unload", [VLM_RPC_SWAP] = "swap",
};
static const char *const notify_names[] = {"vlm.text", "vlm.progress", "vlm.error"};

const char *vlm_rpc_method_name(enum vlm_rpc_method m) {
    if (m >= VLM_RPC_HELLO && m <= VLM_RPC_SWAP) {
        return method_names[m];
    }
    if (m >= VLM_RPC_N_TEXT && m <= VLM_RPC_N_ERROR) {
        return notify_names[m - VLM_RPC_N_TEXT];
    }
    return NULL;
}

enum vlm_rpc_method vlm__rpc_method_lookup(const uint8_t *name, uint64_t len) {
    for (int m = VLM_RPC_HELLO; m <= VLM_RPC_SWAP; m++) {
        if (strlen(method_names[m]) == len && memcmp(method_names[m], name, len) == 0) {
            return (enum vlm_rpc_method)m;
        }
    }
    for (int k = 0; k < 3; k++) {
        if (strlen(notify_names[k]) == len && memcmp(notify_names[k], name, len) == 0) {
            return (enum vlm_rpc_method)(VLM_RPC_N_TEXT + k);
        }
    }
    return VLM_RPC_UNKNOWN;
}

// ---- schema-driven map decoding ---------------------------------------------------------------------------

enum ftype {
    F_STR,   // struct vlm_proto_str; len in [imin, imax] (imax 0: no bound beyond the scanner's)
    F_BOOL,  // bool
    F_I32,   // int32_t in [imin, imax]
    F_U32,   // uint32_t in [imin, imax]
    F_U64,   // uint64_t, any value
    F_F32,   // float in [fmin, fmax], finite
    F_F64,   // double in [fmin, fmax], finite
    F_ENUM,  // int (enum) from the names in `names` (value = index + 1); imin 0: unknown names give 0
    F_CUSTOM, // fn
};

struct field;
typedef int (*field_fn)(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag);

struct field {
    const char *name;
    enum ftype type;
    size_t off;
    int64_t imin, imax;
    double fmin, fmax;
    const char *const *names;
    field_fn fn;
};

static int bad(struct vlm_diag *diag, const char *field, const char *what) {
    return vlm_diag_set(diag, VLM_EBADREQUEST, "field '%s': %s", field, what);
}

static int read_str(struct vlm__mp_cur *c, const char *name, int64_t min, int64_t max, struct vlm_proto_str *out,
                    struct vlm_diag *diag) {
    struct vlm__mp_obj o;
    if (vlm__mp_read(c, &o) != 0 || o.kind != VLM__MP_STR) {
        return bad(diag, name, "expected a str");
    }
    if ((int64_t)o.len < min || (max > 0 && (int64_t)o.len > max)) {
        return vlm_diag_set(diag, o.len > 0 ? VLM_ETOOLARGE : VLM_EBADREQUEST, "field '%s': length out of range",
                            name);
    }
    if (!vlm_proto_utf8_valid(o.ptr, o.len)) {
        return bad(diag, name, "expected UTF-8 without NUL");
    }
    out->ptr = (const char *)o.ptr;
    out->len = (uint32_t)o.len;
    return 0;
}

static int read_field(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    char *dst = (char *)base + f->off;
    struct vlm__mp_obj o;
    switch (f->type) {
    case F_STR:
        return read_str(c, f->name, f->imin, f->imax, (struct vlm_proto_str *)(void *)dst, diag);
    case F_CUSTOM:
        return f->fn(c, base, f, ctx, diag);
    default:
        break;
    }
    if (vlm__mp_read(c, &o) != 0) {
        return bad(diag, f->name, "malformed");
    }
    switch (f->type) {
    case F_BOOL:
        if (o.kind != VLM__MP_BOOL) {
            return bad(diag, f->name, "expected a bool");
        }
        *(bool *)(void *)dst = o.b;
        return 0;
    case F_I32:
    case F_U32: {
        if (o.kind != VLM__MP_UINT && o.kind != VLM__MP_INT) {
            return bad(diag, f->name, "expected an integer");
        }
        if (o.kind == VLM__MP_UINT ? o.u > (uint64_t)f->imax : (o.i < f->imin)) {
            return bad(diag, f->name, "out of range");
        }
        if (o.kind == VLM__MP_UINT && (int64_t)o.u < f->imin) {
            return bad(diag, f->name, "out of range");
        }
        int64_t v = o.kind == VLM__MP_UINT ? (int64_t)o.u : o.i;
        if (f->type == F_I32) {
            *(int32_t *)(void *)dst = (int32_t)v;
        } else {
            *(uint32_t *)(void *)dst = (uint32_t)v;
        }
        return 0;
    }
    case F_U64:
        if (o.kind != VLM__MP_UINT) {
            return bad(diag, f->name, o.kind == VLM__MP_INT ? "out of range" : "expected an integer");
        }
        *(uint64_t *)(void *)dst = o.u;
        return 0;
    case F_F32:
    case F_F64: {
        double v;
        if (o.kind == VLM__MP_FLOAT) {
            v = o.f;
        } else if (o.kind == VLM__MP_UINT) {
            v = (double)o.u;
        } else if (o.kind == VLM__MP_INT) {
            v = (double)o.i;
        } else {
            return bad(diag, f->name, "expected a number");
        }
        if (!isfinite(v) || v < f->fmin || v > f->fmax) {
            return bad(diag, f->name, "out of range");
        }
        if (f->type == F_F32) {
            *(float *)(void *)dst = (float)v;
        } else {
            *(double *)(void *)dst = v;
        }
        return 0;
    }
    case F_ENUM: {
        if (o.kind != VLM__MP_STR) {
            return bad(diag, f->name, "expected a str");
        }
        int v = 0;
        for (int k = 0; f->names[k]; k++) {
            if (strlen(f->names[k]) == o.len && memcmp(f->names[k], o.ptr, o.len) == 0) {
                v = k + 1;
            }
        }
        if (v == 0 && f->imin > 0) {
            return bad(diag, f->name, "unknown value");
        }
        *(int *)(void *)dst = v;
        return 0;
    }
    default:
        return bad(diag, f->name, "malformed");
    }
}

// Decodes the map at the cursor into `base` by the schema `fields` (at most 32). Bit i of *seen is set for
// fields[i] when present; known keys given twice are refused; unknown keys are skipped.
static int decode_map(struct vlm__mp_cur *c, const char *what, const struct field *fields, int n_fields, void *base,
                      void *ctx, uint32_t *seen, struct vlm_diag *diag) {
    struct vlm__mp_obj m, k;
    *seen = 0;
    if (vlm__mp_read(c, &m) != 0 || m.kind != VLM__MP_MAP) {
        return bad(diag, what, "expected a map");
    }
    for (uint64_t i = 0; i < m.len; i++) {
        if (vlm__mp_read(c, &k) != 0 || k.kind != VLM__MP_STR) {
            return bad(diag, what, "map keys must be str");
        }
        int found = -1;
        for (int j = 0; j < n_fields; j++) {
            if (strlen(fields[j].name) == k.len && memcmp(fields[j].name, k.ptr, k.len) == 0) {
                found = j;
                break;
            }
        }
        if (found < 0) {
            if (vlm__mp_skip(c) != 0) {
                return bad(diag, what, "malformed");
            }
            continue;
        }
        if (*seen & (1u << found)) {
            return bad(diag, fields[found].name, "given twice");
        }
        *seen |= 1u << found;
        int rc = read_field(c, base, &fields[found], ctx, diag);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int check_required(uint32_t seen, uint32_t required, const struct field *fields, int n_fields,
                          struct vlm_diag *diag) {
    for (int j = 0; j < n_fields; j++) {
        if ((required & (1u << j)) && !(seen & (1u << j))) {
            return bad(diag, fields[j].name, "required");
        }
    }
    return 0;
}

#define N_FIELDS(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define OFF(type, member) offsetof(type, member)

// Positions a cursor on the params map of a request or notification. *empty is set for [] (no fields).
static int params_cursor(const struct vlm_proto_msg *msg, struct vlm__mp_cur *c, bool *empty, struct vlm_diag *diag) {
    if (!msg->params) {
        return bad(diag, "params", "missing");
    }
    c->p = msg->params;
    c->end = msg->params + msg->params_len;
    *empty = false;
    struct vlm__mp_cur peek = *c;
    struct vlm__mp_obj o;
    if (vlm__mp_read(&peek, &o) != 0) {
        return bad(diag, "params", "malformed");
    }
    if (o.kind == VLM__MP_MAP) {
        return 0;
    }
    if (o.kind != VLM__MP_ARRAY || o.len > 1) {
        return bad(diag, "params", "expected [] or an array of one map");
    }
    *c = peek;
    *empty = o.len == 0;
    return 0;
}

// Decodes params by a schema; an empty params array counts as an empty map.
static int decode_params(const struct vlm_proto_msg *msg, enum vlm_rpc_method want, const struct field *fields,
                         int n_fields, void *base, void *ctx, uint32_t *seen, struct vlm_diag *diag) {
    if (msg->method != want || (msg->type == VLM_PROTO_RESPONSE)) {
        return vlm_diag_set(diag, VLM_EINVAL, "message is not a '%s'", vlm_rpc_method_name(want));
    }
    struct vlm__mp_cur c;
    bool empty = false;
    int rc = params_cursor(msg, &c, &empty, diag);
    if (rc < 0) {
        return rc;
    }
    *seen = 0;
    return empty ? 0 : decode_map(&c, "params", fields, n_fields, base, ctx, seen, diag);
}

// Positions a cursor on the result of a successful response.
static int result_cursor(const struct vlm_proto_msg *msg, struct vlm__mp_cur *c, struct vlm_diag *diag) {
    if (msg->type != VLM_PROTO_RESPONSE || !msg->result || !msg->error || msg->error_len != 1 ||
        msg->error[0] != 0xc0) {
        return vlm_diag_set(diag, VLM_EINVAL, "message is not a successful response");
    }
    c->p = msg->result;
    c->end = msg->result + msg->result_len;
    return 0;
}

// ---- errors -----------------------------------------------------------------------------------------------

static const struct field error_fields[] = {
    {"code", F_I32, OFF(struct vlm_rpc_error, code), INT32_MIN, INT32_MAX, 0, 0, NULL, NULL},
    {"name", F_STR, OFF(struct vlm_rpc_error, name), 0, 64, 0, 0, NULL, NULL},
    {"message", F_STR, OFF(struct vlm_rpc_error, message), 0, 0, 0, 0, NULL, NULL},
};

int vlm_proto_error_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_error *out, struct vlm_diag *diag) {
    struct vlm__mp_cur c;
    if (msg->type == VLM_PROTO_RESPONSE) {
        if (!msg->error) {
            return vlm_diag_set(diag, VLM_EINVAL, "response without an error part");
        }
        if (msg->error_len == 1 && msg->error[0] == 0xc0) {
            return 0;
        }
        c.p = msg->error;
        c.end = msg->error + msg->error_len;
    } else if (msg->type == VLM_PROTO_NOTIFY && msg->method == VLM_RPC_N_ERROR) {
        bool empty = false;
        int rc = params_cursor(msg, &c, &empty, diag);
        if (rc < 0) {
            return rc;
        }
        if (empty) {
            return bad(diag, "params", "expected an error map");
        }
    } else {
        return vlm_diag_set(diag, VLM_EINVAL, "message is not a response");
    }
    struct vlm_rpc_error e = {0};
    uint32_t seen = 0;
    int rc = decode_map(&c, "error", error_fields, N_FIELDS(error_fields), &e, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u << 0, error_fields, N_FIELDS(error_fields), diag);
    }
    if (rc < 0) {
        return rc;
    }
    *out = e;
    return 1;
}

// ---- hello ------------------------------------------------------------------------------------------------

static const struct field hello_fields[] = {
    {"client", F_STR, OFF(struct vlm_rpc_hello, client), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"protocol", F_U32, OFF(struct vlm_rpc_hello, protocol), 1, UINT32_MAX, 0, 0, NULL, NULL},
};

int vlm_rpc_hello_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_hello *out, struct vlm_diag *diag) {
    struct vlm_rpc_hello h = {{NULL, 0}, 0};
    uint32_t seen = 0;
    int rc = decode_params(msg, VLM_RPC_HELLO, hello_fields, N_FIELDS(hello_fields), &h, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u << 1, hello_fields, N_FIELDS(hello_fields), diag);
    }
    if (rc == 0) {
        *out = h;
    }
    return rc;
}

int vlm_rpc_hello_negotiate(const struct vlm_rpc_hello *p, uint32_t *agreed, struct vlm_diag *diag) {
    if (p->protocol < VLM_PROTO_VERSION_MIN || p->protocol > VLM_PROTO_VERSION) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "protocol %u is not supported: this server speaks %d..%d",
                            p->protocol, VLM_PROTO_VERSION_MIN, VLM_PROTO_VERSION);
    }
    *agreed = p->protocol;
    return 0;
}

static int caps_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)ctx;
    struct vlm_rpc_hello_result *r = base;
    struct vlm__mp_obj o;
    if (vlm__mp_read(c, &o) != 0 || o.kind != VLM__MP_ARRAY) {
        return bad(diag, f->name, "expected an array");
    }
    r->n_capabilities = 0;
    for (uint64_t i = 0; i < o.len; i++) {
        struct vlm_proto_str s;
        int rc = read_str(c, f->name, 0, 64, &s, diag);
        if (rc < 0) {
            return rc;
        }
        if (r->n_capabilities < VLM_RPC_CAPS_MAX) { // a newer daemon may list more: keep what fits
            r->capabilities[r->n_capabilities++] = s;
        }
    }
    return 0;
}

static const struct field limits_fields[] = {
    {"max_message", F_U64, OFF(struct vlm_proto_limits, max_message), 0, 0, 0, 0, NULL, NULL},
    {"max_string", F_U32, OFF(struct vlm_proto_limits, max_str), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"max_array", F_U32, OFF(struct vlm_proto_limits, max_array), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"max_map", F_U32, OFF(struct vlm_proto_limits, max_map), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"max_depth", F_U32, OFF(struct vlm_proto_limits, max_depth), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"max_images", F_U32, OFF(struct vlm_proto_limits, max_images), 0, UINT32_MAX, 0, 0, NULL, NULL},
};
_Static_assert(sizeof(size_t) == sizeof(uint64_t), "max_message is decoded as a uint64");

static int limits_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)ctx;
    uint32_t seen = 0;
    return decode_map(c, f->name, limits_fields, N_FIELDS(limits_fields), (char *)base + f->off, NULL, &seen, diag);
}

static const struct field hello_result_fields[] = {
    {"server", F_STR, OFF(struct vlm_rpc_hello_result, server), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"version", F_STR, OFF(struct vlm_rpc_hello_result, version), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"protocol", F_U32, OFF(struct vlm_rpc_hello_result, protocol), 1, UINT32_MAX, 0, 0, NULL, NULL},
    {"capabilities", F_CUSTOM, 0, 0, 0, 0, 0, NULL, caps_fn},
    {"limits", F_CUSTOM, OFF(struct vlm_rpc_hello_result, limits), 0, 0, 0, 0, NULL, limits_fn},
};

int vlm_rpc_hello_result_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_hello_result *out,
                                struct vlm_diag *diag) {
    struct vlm__mp_cur c;
    int rc = result_cursor(msg, &c, diag);
    if (rc < 0) {
        return rc;
    }
    struct vlm_rpc_hello_result r;
    memset(&r, 0, sizeof r);
    uint32_t seen = 0;
    rc = decode_map(&c, "result", hello_result_fields, N_FIELDS(hello_result_fields), &r, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u << 2, hello_result_fields, N_FIELDS(hello_result_fields), diag);
    }
    if (rc == 0) {
        *out = r;
    }
    return rc;
}

// ---- ask --------------------------------------------------------------------------------------------------

void vlm_rpc_ask_init(struct vlm_rpc_ask *a) {
    memset(a, 0, sizeof *a);
    a->max_tokens = -1;
    a->temperature = 0.8f;
    a->top_k = 40;
    a->top_p = 0.95f;
    a->min_p = 0.05f;
    a->repeat_penalty = 1.0f;
    a->repeat_last_n = 64;
    a->seed = 42;
}

static int images_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    struct vlm_rpc_ask *a = base;
    const struct vlm_proto_limits *lim = ctx;
    struct vlm__mp_obj o;
    if (vlm__mp_read(c, &o) != 0 || o.kind != VLM__MP_ARRAY) {
        return bad(diag, f->name, "expected an array of bin");
    }
    if (o.len > lim->max_images) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "field '%s': more than %u images", f->name, lim->max_images);
    }
    for (uint64_t i = 0; i < o.len; i++) {
        struct vlm__mp_obj b;
        if (vlm__mp_read(c, &b) != 0 || b.kind != VLM__MP_BIN) {
            return bad(diag, f->name, "expected an array of bin");
        }
        if (b.len == 0) {
            return bad(diag, f->name, "empty image");
        }
        a->images[i].ptr = b.ptr;
        a->images[i].len = (size_t)b.len;
    }
    a->n_images = (uint32_t)o.len;
    return 0;
}

static int stop_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)ctx;
    struct vlm_rpc_ask *a = base;
    struct vlm__mp_obj o;
    if (vlm__mp_read(c, &o) != 0 || o.kind != VLM__MP_ARRAY) {
        return bad(diag, f->name, "expected an array of str");
    }
    if (o.len > VLM_RPC_STOP_MAX) {
        return vlm_diag_set(diag, VLM_ETOOLARGE, "field '%s': more than %d strings", f->name, VLM_RPC_STOP_MAX);
    }
    for (uint64_t i = 0; i < o.len; i++) {
        int rc = read_str(c, f->name, 1, VLM_RPC_STOP_LEN_MAX, &a->stop[i], diag);
        if (rc < 0) {
            return rc;
        }
    }
    a->n_stop = (uint32_t)o.len;
    return 0;
}

// Order = bit order of enum vlm_rpc_ask_field, so `seen` is the `fields` mask.
static const struct field ask_fields[] = {
    {"chain", F_STR, OFF(struct vlm_rpc_ask, chain), 1, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"stream", F_BOOL, OFF(struct vlm_rpc_ask, stream), 0, 0, 0, 0, NULL, NULL},
    {"max_tokens", F_I32, OFF(struct vlm_rpc_ask, max_tokens), -1, VLM_RPC_MAX_TOKENS_MAX, 0, 0, NULL, NULL},
    {"temperature", F_F32, OFF(struct vlm_rpc_ask, temperature), 0, 0, 0.0, 100.0, NULL, NULL},
    {"top_k", F_I32, OFF(struct vlm_rpc_ask, top_k), 0, INT32_MAX, 0, 0, NULL, NULL},
    {"top_p", F_F32, OFF(struct vlm_rpc_ask, top_p), 0, 0, 0.0, 1.0, NULL, NULL},
    {"min_p", F_F32, OFF(struct vlm_rpc_ask, min_p), 0, 0, 0.0, 1.0, NULL, NULL},
    {"repeat_penalty", F_F32, OFF(struct vlm_rpc_ask, repeat_penalty), 0, 0, (double)FLT_MIN, 100.0, NULL, NULL},
    {"repeat_last_n", F_I32, OFF(struct vlm_rpc_ask, repeat_last_n), -1, VLM_RPC_MAX_TOKENS_MAX, 0, 0, NULL, NULL},
    {"seed", F_U64, OFF(struct vlm_rpc_ask, seed), 0, 0, 0, 0, NULL, NULL},
    {"stop", F_CUSTOM, 0, 0, 0, 0, 0, NULL, stop_fn},
    {"images", F_CUSTOM, 0, 0, 0, 0, 0, NULL, images_fn},
    {"prompt", F_STR, OFF(struct vlm_rpc_ask, prompt), 0, 0, 0, 0, NULL, NULL},
};
_Static_assert(VLM_RPC_ASK_PROMPT == 1u << 12 && VLM_RPC_ASK_IMAGES == 1u << 11 && VLM_RPC_ASK_SEED == 1u << 9,
               "ask_fields must follow the bit order of enum vlm_rpc_ask_field");

int vlm_rpc_ask_decode(const struct vlm_proto_msg *msg, const struct vlm_proto_limits *limits, struct vlm_rpc_ask *out,
                       struct vlm_diag *diag) {
    struct vlm_proto_limits lim = limits ? *limits : vlm_proto_default_limits();
    if (lim.max_images > VLM_RPC_IMAGES_MAX) {
        lim.max_images = VLM_RPC_IMAGES_MAX;
    }
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    uint32_t seen = 0;
    int rc = decode_params(msg, VLM_RPC_ASK, ask_fields, N_FIELDS(ask_fields), &a, &lim, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, VLM_RPC_ASK_PROMPT, ask_fields, N_FIELDS(ask_fields), diag);
    }
    if (rc == 0 && a.prompt.len > lim.max_str) {
        rc = vlm_diag_set(diag, VLM_ETOOLARGE, "field 'prompt': longer than %u bytes", lim.max_str);
    }
    if (rc < 0) {
        return rc;
    }
    a.fields = seen;
    *out = a;
    return 0;
}

static const char *const stop_names[] = {"eos", "stop", "length", "context", "cancelled", NULL};

static const struct field timings_fields[] = {
    {"queued_ms", F_F64, OFF(struct vlm_rpc_timings, queued_ms), 0, 0, 0.0, DBL_MAX, NULL, NULL},
    {"load_ms", F_F64, OFF(struct vlm_rpc_timings, load_ms), 0, 0, 0.0, DBL_MAX, NULL, NULL},
    {"encode_ms", F_F64, OFF(struct vlm_rpc_timings, encode_ms), 0, 0, 0.0, DBL_MAX, NULL, NULL},
    {"prefill_ms", F_F64, OFF(struct vlm_rpc_timings, prefill_ms), 0, 0, 0.0, DBL_MAX, NULL, NULL},
    {"decode_ms", F_F64, OFF(struct vlm_rpc_timings, decode_ms), 0, 0, 0.0, DBL_MAX, NULL, NULL},
    {"total_ms", F_F64, OFF(struct vlm_rpc_timings, total_ms), 0, 0, 0.0, DBL_MAX, NULL, NULL},
};

static int timings_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)ctx;
    uint32_t seen = 0;
    return decode_map(c, f->name, timings_fields, N_FIELDS(timings_fields), (char *)base + f->off, NULL, &seen, diag);
}

static const struct field ask_result_fields[] = {
    {"text", F_STR, OFF(struct vlm_rpc_ask_result, text), 0, 0, 0, 0, NULL, NULL},
    {"tokens_prompt", F_U32, OFF(struct vlm_rpc_ask_result, tokens_prompt), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"tokens_generated", F_U32, OFF(struct vlm_rpc_ask_result, tokens_generated), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"stop_reason", F_ENUM, OFF(struct vlm_rpc_ask_result, stop_reason), 0, 0, 0, 0, stop_names, NULL},
    {"timings", F_CUSTOM, OFF(struct vlm_rpc_ask_result, timings), 0, 0, 0, 0, NULL, timings_fn},
};

int vlm_rpc_ask_result_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_ask_result *out, struct vlm_diag *diag) {
    struct vlm__mp_cur c;
    int rc = result_cursor(msg, &c, diag);
    if (rc < 0) {
        return rc;
    }
    struct vlm_rpc_ask_result r;
    memset(&r, 0, sizeof r);
    uint32_t seen = 0;
    rc = decode_map(&c, "result", ask_result_fields, N_FIELDS(ask_result_fields), &r, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u << 0, ask_result_fields, N_FIELDS(ask_result_fields), diag);
    }
    if (rc == 0) {
        *out = r;
    }
    return rc;
}

// ---- cancel and parameterless requests --------------------------------------------------------------------

static const struct field cancel_fields[] = {
    {"id", F_U32, OFF(struct vlm_rpc_cancel, id), 0, UINT32_MAX, 0, 0, NULL, NULL},
};

int vlm_rpc_cancel_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_cancel *out, struct vlm_diag *diag) {
    struct vlm_rpc_cancel r = {0};
    uint32_t seen = 0;
    int rc = decode_params(msg, VLM_RPC_CANCEL, cancel_fields, N_FIELDS(cancel_fields), &r, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u << 0, cancel_fields, N_FIELDS(cancel_fields), diag);
    }
    if (rc == 0) {
        *out = r;
    }
    return rc;
}

int vlm_rpc_noparams_decode(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    if (msg->type != VLM_PROTO_REQUEST ||
        (msg->method != VLM_RPC_STATUS && msg->method != VLM_RPC_CHAINS && msg->method != VLM_RPC_PLUGINS)) {
        return vlm_diag_set(diag, VLM_EINVAL, "message is not a request without params");
    }
    uint32_t seen = 0;
    char dummy;
    return decode_params(msg, msg->method, NULL, 0, &dummy, NULL, &seen, diag);
}

// ---- component requests -----------------------------------------------------------------------------------

static const char *const component_names[] = {"encoder", "projector", "llm", NULL};

static const struct field component_req_fields[] = {
    {"chain", F_STR, OFF(struct vlm_rpc_component_req, chain), 1, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"component", F_ENUM, OFF(struct vlm_rpc_component_req, component), 1, 0, 0, 0, component_names, NULL},
    {"plugin", F_STR, OFF(struct vlm_rpc_component_req, plugin), 1, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"model", F_STR, OFF(struct vlm_rpc_component_req, model), 1, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
};
_Static_assert(sizeof(enum vlm_rpc_component) == sizeof(int), "enum fields are stored as int");

int vlm_rpc_component_req_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_component_req *out,
                                 struct vlm_diag *diag) {
    if (msg->method != VLM_RPC_LOAD && msg->method != VLM_RPC_UNLOAD && msg->method != VLM_RPC_SWAP) {
        return vlm_diag_set(diag, VLM_EINVAL, "message is not load, unload or swap");
    }
    struct vlm_rpc_component_req r;
    memset(&r, 0, sizeof r);
    uint32_t seen = 0;
    int rc = decode_params(msg, msg->method, component_req_fields, N_FIELDS(component_req_fields), &r, NULL, &seen,
                           diag);
    if (rc < 0) {
        return rc;
    }
    uint32_t required = 1u << 0; // chain
    if (msg->method == VLM_RPC_SWAP) {
        required |= 1u << 1 | 1u << 3;
    }
    rc = check_required(seen, required, component_req_fields, N_FIELDS(component_req_fields), diag);
    if (rc < 0) {
        return rc;
    }
    if (msg->method == VLM_RPC_UNLOAD && (seen & (1u << 2 | 1u << 3))) {
        return bad(diag, seen & (1u << 3) ? "model" : "plugin", "not allowed for unload");
    }
    if (msg->method == VLM_RPC_LOAD && r.component == VLM_RPC_COMPONENT_ALL && (seen & (1u << 2 | 1u << 3))) {
        return bad(diag, seen & (1u << 3) ? "model" : "plugin", "needs 'component'");
    }
    *out = r;
    return 0;
}

// ---- status, chains, plugins ------------------------------------------------------------------------------

static const struct field worker_fields[] = {
    {"device", F_STR, OFF(struct vlm_rpc_worker, device), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"busy", F_BOOL, OFF(struct vlm_rpc_worker, busy), 0, 0, 0, 0, NULL, NULL},
    {"request", F_U32, OFF(struct vlm_rpc_worker, request), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"chain", F_STR, OFF(struct vlm_rpc_worker, chain), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
};

struct list_ctx {
    void *out;
    uint32_t cap;
    uint32_t n_total;
    size_t elem_size;
    const struct field *fields;
    int n_fields;
};

// An array of maps decoded into a caller array: the first `cap` kept, the rest checked and counted.
static int list_decode(struct vlm__mp_cur *c, const char *name, struct list_ctx *l, struct vlm_diag *diag) {
    struct vlm__mp_obj o;
    if (vlm__mp_read(c, &o) != 0 || o.kind != VLM__MP_ARRAY) {
        return bad(diag, name, "expected an array");
    }
    union {
        struct vlm_rpc_chain c;
        struct vlm_rpc_plugin p;
        struct vlm_rpc_worker w;
    } scratch; // where entries beyond `cap` are decoded (checked, then dropped)
    if (l->elem_size > sizeof scratch) {
        return vlm_diag_set(diag, VLM_EINTERNAL, "element too large");
    }
    for (uint64_t i = 0; i < o.len; i++) {
        void *dst = i < l->cap ? (char *)l->out + i * l->elem_size : (void *)&scratch;
        memset(dst, 0, l->elem_size);
        uint32_t seen = 0;
        int rc = decode_map(c, name, l->fields, l->n_fields, dst, NULL, &seen, diag);
        if (rc < 0) {
            return rc;
        }
    }
    l->n_total = (uint32_t)o.len;
    return 0;
}

static int workers_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)base;
    return list_decode(c, f->name, ctx, diag);
}

struct status_wire {
    struct vlm_rpc_status s;
    struct {
        uint32_t length, capacity;
    } queue;
};

static const struct field queue_fields[] = {
    {"length", F_U32, 0, 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"capacity", F_U32, sizeof(uint32_t), 0, UINT32_MAX, 0, 0, NULL, NULL},
};

static int queue_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)ctx;
    uint32_t seen = 0;
    return decode_map(c, f->name, queue_fields, N_FIELDS(queue_fields), (char *)base + f->off, NULL, &seen, diag);
}

static const struct field status_fields[] = {
    {"version", F_STR, OFF(struct status_wire, s.version), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"protocol", F_U32, OFF(struct status_wire, s.protocol), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"uptime", F_F64, OFF(struct status_wire, s.uptime_s), 0, 0, 0.0, DBL_MAX, NULL, NULL},
    {"clients", F_U32, OFF(struct status_wire, s.clients), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"queue", F_CUSTOM, OFF(struct status_wire, queue), 0, 0, 0, 0, NULL, queue_fn},
    {"requests_total", F_U64, OFF(struct status_wire, s.requests_total), 0, 0, 0, 0, NULL, NULL},
    {"workers", F_CUSTOM, 0, 0, 0, 0, 0, NULL, workers_fn},
};

int vlm_rpc_status_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_status *out, struct vlm_rpc_worker *workers,
                          uint32_t cap, uint32_t *total, struct vlm_diag *diag) {
    struct vlm__mp_cur c;
    int rc = result_cursor(msg, &c, diag);
    if (rc < 0) {
        return rc;
    }
    struct status_wire w;
    memset(&w, 0, sizeof w);
    struct list_ctx l = {workers, workers ? cap : 0, 0, sizeof(struct vlm_rpc_worker), worker_fields,
                         N_FIELDS(worker_fields)};
    uint32_t seen = 0;
    rc = decode_map(&c, "result", status_fields, N_FIELDS(status_fields), &w, &l, &seen, diag);
    if (rc < 0) {
        return rc;
    }
    w.s.queue_length = w.queue.length;
    w.s.queue_capacity = w.queue.capacity;
    w.s.n_workers = l.n_total < l.cap ? l.n_total : l.cap;
    w.s.workers = workers;
    if (total) {
        *total = l.n_total;
    }
    *out = w.s;
    return 0;
}

static const struct field component_info_fields[] = {
    {"plugin", F_STR, OFF(struct vlm_rpc_component_info, plugin), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"model", F_STR, OFF(struct vlm_rpc_component_info, model), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"loaded", F_BOOL, OFF(struct vlm_rpc_component_info, loaded), 0, 0, 0, 0, NULL, NULL},
};

static int component_info_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx,
                             struct vlm_diag *diag) {
    (void)ctx;
    uint32_t seen = 0;
    return decode_map(c, f->name, component_info_fields, N_FIELDS(component_info_fields), (char *)base + f->off, NULL,
                      &seen, diag);
}

static const struct field chain_fields[] = {
    {"name", F_STR, OFF(struct vlm_rpc_chain, name), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"template", F_STR, OFF(struct vlm_rpc_chain, template_name), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"encoder", F_CUSTOM, OFF(struct vlm_rpc_chain, encoder), 0, 0, 0, 0, NULL, component_info_fn},
    {"projector", F_CUSTOM, OFF(struct vlm_rpc_chain, projector), 0, 0, 0, 0, NULL, component_info_fn},
    {"llm", F_CUSTOM, OFF(struct vlm_rpc_chain, llm), 0, 0, 0, 0, NULL, component_info_fn},
    {"active", F_U32, OFF(struct vlm_rpc_chain, active), 0, UINT32_MAX, 0, 0, NULL, NULL},
};

static const struct field plugin_fields[] = {
    {"name", F_STR, OFF(struct vlm_rpc_plugin, name), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"kind", F_ENUM, OFF(struct vlm_rpc_plugin, kind), 0, 0, 0, 0, component_names, NULL},
    {"version", F_STR, OFF(struct vlm_rpc_plugin, version), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"file", F_STR, OFF(struct vlm_rpc_plugin, file), 0, VLM_PROTO_NAME_MAX, 0, 0, NULL, NULL},
    {"abi", F_U32, OFF(struct vlm_rpc_plugin, abi), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"instances", F_U32, OFF(struct vlm_rpc_plugin, instances), 0, UINT32_MAX, 0, 0, NULL, NULL},
};

static int list_fn(struct vlm__mp_cur *c, void *base, const struct field *f, void *ctx, struct vlm_diag *diag) {
    (void)base;
    return list_decode(c, f->name, ctx, diag);
}

static const struct field chains_fields[] = {{"chains", F_CUSTOM, 0, 0, 0, 0, 0, NULL, list_fn}};
static const struct field plugins_fields[] = {{"plugins", F_CUSTOM, 0, 0, 0, 0, 0, NULL, list_fn}};

static int result_list(const struct vlm_proto_msg *msg, const struct field *top, struct list_ctx *l, uint32_t *n,
                       struct vlm_diag *diag) {
    struct vlm__mp_cur c;
    int rc = result_cursor(msg, &c, diag);
    if (rc < 0) {
        return rc;
    }
    uint32_t seen = 0;
    char dummy;
    rc = decode_map(&c, "result", top, 1, &dummy, l, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u, top, 1, diag);
    }
    if (rc == 0) {
        *n = l->n_total;
    }
    return rc;
}

int vlm_rpc_chains_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_chain *out, uint32_t cap, uint32_t *n,
                          struct vlm_diag *diag) {
    struct vlm_rpc_chain scratch; // never written with cap 0, but keeps the pointer valid
    struct list_ctx l = {out ? (void *)out : (void *)&scratch, out ? cap : 0, 0, sizeof *out, chain_fields,
                         N_FIELDS(chain_fields)};
    return result_list(msg, chains_fields, &l, n, diag);
}

int vlm_rpc_plugins_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_plugin *out, uint32_t cap, uint32_t *n,
                           struct vlm_diag *diag) {
    struct vlm_rpc_plugin scratch;
    struct list_ctx l = {out ? (void *)out : (void *)&scratch, out ? cap : 0, 0, sizeof *out, plugin_fields,
                         N_FIELDS(plugin_fields)};
    return result_list(msg, plugins_fields, &l, n, diag);
}

int vlm_rpc_chain_result_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_chain *out, struct vlm_diag *diag) {
    struct vlm__mp_cur c;
    int rc = result_cursor(msg, &c, diag);
    if (rc < 0) {
        return rc;
    }
    struct vlm_rpc_chain r;
    memset(&r, 0, sizeof r);
    uint32_t seen = 0;
    rc = decode_map(&c, "result", chain_fields, N_FIELDS(chain_fields), &r, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 1u << 0, chain_fields, N_FIELDS(chain_fields), diag);
    }
    if (rc == 0) {
        *out = r;
    }
    return rc;
}

// ---- notifications ----------------------------------------------------------------------------------------

static const struct field text_fields[] = {
    {"id", F_U32, OFF(struct vlm_rpc_text, id), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"text", F_STR, OFF(struct vlm_rpc_text, text), 0, 0, 0, 0, NULL, NULL},
};

int vlm_rpc_text_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_text *out, struct vlm_diag *diag) {
    struct vlm_rpc_text t;
    memset(&t, 0, sizeof t);
    uint32_t seen = 0;
    int rc = decode_params(msg, VLM_RPC_N_TEXT, text_fields, N_FIELDS(text_fields), &t, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 3u, text_fields, N_FIELDS(text_fields), diag);
    }
    if (rc == 0) {
        *out = t;
    }
    return rc;
}

static const char *const stage_names[] = {"queued", "loading", "encoding", "prefill", NULL};

static const struct field progress_fields[] = {
    {"id", F_U32, OFF(struct vlm_rpc_progress, id), 0, UINT32_MAX, 0, 0, NULL, NULL},
    {"stage", F_ENUM, OFF(struct vlm_rpc_progress, stage), 0, 0, 0, 0, stage_names, NULL},
    {"done", F_U64, OFF(struct vlm_rpc_progress, done), 0, 0, 0, 0, NULL, NULL},
    {"total", F_U64, OFF(struct vlm_rpc_progress, total), 0, 0, 0, 0, NULL, NULL},
};
_Static_assert(sizeof(enum vlm_rpc_stage) == sizeof(int) && sizeof(enum vlm_rpc_stop) == sizeof(int),
               "enum fields are stored as int");

int vlm_rpc_progress_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_progress *out, struct vlm_diag *diag) {
    struct vlm_rpc_progress p;
    memset(&p, 0, sizeof p);
    uint32_t seen = 0;
    int rc = decode_params(msg, VLM_RPC_N_PROGRESS, progress_fields, N_FIELDS(progress_fields), &p, NULL, &seen, diag);
    if (rc == 0) {
        rc = check_required(seen, 3u, progress_fields, N_FIELDS(progress_fields), diag);
    }
    if (rc == 0) {
        *out = p;
    }
    return rc;
}
