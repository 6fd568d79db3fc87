// msgpack -> JSON text, for printing results whose shape is open (status, chains, plugins, ...). The input has
// usually passed the bounded reader already, but every length is checked again here against the bytes present,
// and nesting is bounded, so any bytes are safe to convert.
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/client.h"

struct sbuf {
    char *p;
    size_t len, cap;
    int err;
};

static void sb_put(struct sbuf *b, const void *s, size_t n) {
    if (b->err) {
        return;
    }
    if (n + 1 > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (n + 1 > cap - b->len) {
            if (cap > SIZE_MAX / 2) {
                b->err = VLM_ENOMEM;
                return;
            }
            cap *= 2;
        }
        char *np = realloc(b->p, cap);
        if (!np) {
            b->err = VLM_ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(struct sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) {
        sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
    }
}

// Valid UTF-8 passes through; control characters are escaped; a string that is not valid UTF-8 has its bytes
// above 0x7f written as \u00XX so the JSON stays valid.
static void json_str(struct sbuf *b, const char *s, size_t n) {
    bool utf8 = vlm_proto_utf8_valid(s, n);
    sb_put(b, "\"", 1);
    size_t run = 0; // bytes [i - run, i) to copy as they are
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        if (ch == '"') {
            esc = "\\\"";
        } else if (ch == '\\') {
            esc = "\\\\";
        } else if (ch == '\n') {
            esc = "\\n";
        } else if (ch == '\r') {
            esc = "\\r";
        } else if (ch == '\t') {
            esc = "\\t";
        } else if (ch < 0x20 || ch == 0x7f || (ch >= 0x80 && !utf8)) {
            snprintf(u, sizeof u, "\\u%04x", ch);
            esc = u;
        }
        if (esc) {
            sb_put(b, s + i - run, run);
            run = 0;
            sb_puts(b, esc);
        } else {
            run++;
        }
    }
    sb_put(b, s + n - run, run);
    sb_put(b, "\"", 1);
}

static void base64(struct sbuf *b, const uint8_t *p, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char out[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=',
                       i + 2 < n ? tab[v & 63] : '='};
        sb_put(b, out, 4);
    }
    sb_put(b, "\"", 1);
}

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

struct cur {
    const uint8_t *p, *end;
};

static bool need(const struct cur *c, uint64_t n) {
    return (uint64_t)(c->end - c->p) >= n;
}

static void put_double(struct sbuf *b, double v) {
    if (!isfinite(v)) {
        sb_puts(b, "null");
        return;
    }
    sb_printf(b, "%.17g", v);
}

// One object; containers recurse, at most VLM_PROTO_DEPTH_MAX deep. `as_key`: the object is a map key, which
// JSON wants as a string.
static int conv(struct cur *c, struct sbuf *b, unsigned depth, bool as_key) {
    if (depth > VLM_PROTO_DEPTH_MAX || !need(c, 1)) {
        return -1;
    }
    uint8_t t = *c->p++;
    uint64_t len = 0, count = 0;
    int kind = 0; // 's' str, 'b' bin, 'e' ext, 'a' array, 'm' map
    char num[48];
    const char *scalar = NULL;
    if (t <= 0x7f) {
        snprintf(num, sizeof num, "%u", t);
        scalar = num;
    } else if (t >= 0xe0) {
        snprintf(num, sizeof num, "%d", (int)(int8_t)t);
        scalar = num;
    } else if (t <= 0x8f) {
        kind = 'm';
        count = t & 0x0f;
        goto container;
    } else if (t <= 0x9f) {
        kind = 'a';
        count = t & 0x0f;
        goto container;
    } else if (t <= 0xbf) {
        kind = 's';
        len = t & 0x1f;
        goto body;
    }
    if (scalar) {
        goto put_scalar;
    }
    switch (t) {
    case 0xc0:
        scalar = "null";
        break;
    case 0xc2:
        scalar = "false";
        break;
    case 0xc3:
        scalar = "true";
        break;
    case 0xc4:
    case 0xc5:
    case 0xc6: {
        int n = 1 << (t - 0xc4);
        if (!need(c, (uint64_t)n)) {
            return -1;
        }
        len = be(c->p, n);
        c->p += n;
        kind = 'b';
        goto body;
    }
    case 0xc7:
    case 0xc8:
    case 0xc9: {
        int n = 1 << (t - 0xc7);
        if (!need(c, (uint64_t)n + 1)) {
            return -1;
        }
        len = be(c->p, n);
        c->p += n + 1; // length, then the ext type
        kind = 'e';
        goto body;
    }
    case 0xca: {
        if (!need(c, 4)) {
            return -1;
        }
        uint32_t u = (uint32_t)be(c->p, 4);
        float f;
        memcpy(&f, &u, 4);
        c->p += 4;
        if (as_key) {
            sb_put(b, "\"", 1);
        }
        put_double(b, (double)f);
        if (as_key) {
            sb_put(b, "\"", 1);
        }
        return 0;
    }
    case 0xcb: {
        if (!need(c, 8)) {
            return -1;
        }
        uint64_t u = be(c->p, 8);
        double d;
        memcpy(&d, &u, 8);
        c->p += 8;
        if (as_key) {
            sb_put(b, "\"", 1);
        }
        put_double(b, d);
        if (as_key) {
            sb_put(b, "\"", 1);
        }
        return 0;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: {
        int n = 1 << (t - 0xcc);
        if (!need(c, (uint64_t)n)) {
            return -1;
        }
        snprintf(num, sizeof num, "%llu", (unsigned long long)be(c->p, n));
        c->p += n;
        scalar = num;
        break;
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        int n = 1 << (t - 0xd0);
        if (!need(c, (uint64_t)n)) {
            return -1;
        }
        uint64_t u = be(c->p, n);
        int64_t v;
        if (n < 8 && (u >> (n * 8 - 1)) & 1) {
            u |= ~(uint64_t)0 << (n * 8); // sign-extend
        }
        memcpy(&v, &u, 8);
        snprintf(num, sizeof num, "%lld", (long long)v);
        c->p += n;
        scalar = num;
        break;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        if (!need(c, 1)) {
            return -1;
        }
        c->p++; // the ext type
        len = 1u << (t - 0xd4);
        kind = 'e';
        goto body;
    case 0xd9:
    case 0xda:
    case 0xdb: {
        int n = 1 << (t - 0xd9);
        if (!need(c, (uint64_t)n)) {
            return -1;
        }
        len = be(c->p, n);
        c->p += n;
        kind = 's';
        goto body;
    }
    case 0xdc:
    case 0xdd:
    case 0xde:
    case 0xdf: {
        int n = t == 0xdc || t == 0xde ? 2 : 4;
        if (!need(c, (uint64_t)n)) {
            return -1;
        }
        count = be(c->p, n);
        c->p += n;
        kind = t <= 0xdd ? 'a' : 'm';
        goto container;
    }
    default: // 0xc1
        return -1;
    }
put_scalar:
    if (as_key) {
        sb_put(b, "\"", 1);
        sb_puts(b, scalar);
        sb_put(b, "\"", 1);
    } else {
        sb_puts(b, scalar);
    }
    return 0;

body:
    if (!need(c, len)) {
        return -1;
    }
    if (kind == 's') {
        json_str(b, (const char *)c->p, (size_t)len);
    } else {
        base64(b, c->p, (size_t)len);
    }
    c->p += len;
    return 0;

container:
    // Every element takes at least one byte: a count beyond the bytes present is malformed.
    if (!need(c, kind == 'm' ? count * 2 : count) || as_key) {
        return -1;
    }
    sb_put(b, kind == 'm' ? "{" : "[", 1);
    for (uint64_t i = 0; i < count; i++) {
        if (i) {
            sb_put(b, ",", 1);
        }
        if (kind == 'm') {
            if (conv(c, b, depth + 1, true) < 0) {
                return -1;
            }
            sb_put(b, ":", 1);
        }
        if (conv(c, b, depth + 1, false) < 0) {
            return -1;
        }
    }
    sb_put(b, kind == 'm' ? "}" : "]", 1);
    return 0;
}

int vlm_client_msgpack_to_json(const void *data, size_t len, char **out, struct vlm_diag *diag) {
    struct sbuf b = {0};
    struct cur c = {data, (const uint8_t *)data + len};
    if (!data || conv(&c, &b, 1, false) < 0 || c.p != c.end) {
        free(b.p);
        return vlm_diag_set(diag, VLM_EBADREQUEST, "malformed msgpack object (or nested deeper than %d)",
                            VLM_PROTO_DEPTH_MAX);
    }
    if (b.err || !b.p) {
        free(b.p);
        return vlm_diag_set(diag, VLM_ENOMEM, "out of memory converting a result to JSON");
    }
    *out = b.p;
    return 0;
}
