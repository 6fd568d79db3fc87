// The bounded reader: frames the msgpack stream by scanning it with an explicit stack, checks every declared
// count and length against the caps and the bytes that may still arrive, and checks the msgpack-RPC envelope.
// Nothing here allocates by a declared size: the buffer grows only with bytes received, up to max_message.
#include <stdlib.h>
#include <string.h>

#include "proto/proto-impl.h"
#include "vlm/proto.h"

#define READER_BUF_MIN 4096
#define READER_BUF_KEEP (64 * 1024) // an idle reader keeps at most this much memory

static inline uint16_t be16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t be64(const uint8_t *p) {
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

// ---- msgpack headers ----------------------------------------------------------------------------------------

static int hdr_set(struct vlm__mp_hdr *h, enum vlm__mp_kind kind, uint32_t hsize, uint64_t payload, uint64_t count) {
    h->kind = kind;
    h->hsize = hsize;
    h->payload = payload;
    h->count = count;
    h->is_f32 = false;
    return 1;
}

int vlm__mp_header(const uint8_t *p, size_t avail, struct vlm__mp_hdr *h) {
    if (avail == 0) {
        return 0;
    }
    uint8_t b = p[0];
    if (b <= 0x7f) {
        return hdr_set(h, VLM__MP_UINT, 1, 0, 0);
    }
    if (b <= 0x8f) {
        return hdr_set(h, VLM__MP_MAP, 1, 0, b & 0x0f);
    }
    if (b <= 0x9f) {
        return hdr_set(h, VLM__MP_ARRAY, 1, 0, b & 0x0f);
    }
    if (b <= 0xbf) {
        return hdr_set(h, VLM__MP_STR, 1, b & 0x1f, 0);
    }
    if (b >= 0xe0) {
        return hdr_set(h, VLM__MP_INT, 1, 0, 0);
    }
    // Types with a size field: how many bytes the header needs.
    static const uint8_t need[32] = {
        [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, // nil, (c1), false, true
        [0x04] = 2, [0x05] = 3, [0x06] = 5,             // bin8/16/32
        [0x07] = 3, [0x08] = 4, [0x09] = 6,             // ext8/16/32 (length, then type)
        [0x0a] = 1, [0x0b] = 1,                         // float32/64
        [0x0c] = 1, [0x0d] = 1, [0x0e] = 1, [0x0f] = 1, // uint8..64
        [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, // int8..64
        [0x14] = 2, [0x15] = 2, [0x16] = 2, [0x17] = 2, [0x18] = 2, // fixext 1..16 (type)
        [0x19] = 2, [0x1a] = 3, [0x1b] = 5,             // str8/16/32
        [0x1c] = 3, [0x1d] = 5,                         // array16/32
        [0x1e] = 3, [0x1f] = 5,                         // map16/32
    };
    if (b == 0xc1) {
        return -1;
    }
    uint32_t hs = need[b - 0xc0];
    if (avail < hs) {
        return 0;
    }
    switch (b) {
    case 0xc0:
        return hdr_set(h, VLM__MP_NIL, 1, 0, 0);
    case 0xc2:
    case 0xc3:
        return hdr_set(h, VLM__MP_BOOL, 1, 0, 0);
    case 0xc4:
        return hdr_set(h, VLM__MP_BIN, hs, p[1], 0);
    case 0xc5:
        return hdr_set(h, VLM__MP_BIN, hs, be16(p + 1), 0);
    case 0xc6:
        return hdr_set(h, VLM__MP_BIN, hs, be32(p + 1), 0);
    case 0xc7:
        return hdr_set(h, VLM__MP_EXT, hs, p[1], 0);
    case 0xc8:
        return hdr_set(h, VLM__MP_EXT, hs, be16(p + 1), 0);
    case 0xc9:
        return hdr_set(h, VLM__MP_EXT, hs, be32(p + 1), 0);
    case 0xca:
        hdr_set(h, VLM__MP_FLOAT, 1, 4, 0);
        h->is_f32 = true;
        return 1;
    case 0xcb:
        return hdr_set(h, VLM__MP_FLOAT, 1, 8, 0);
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        return hdr_set(h, VLM__MP_UINT, 1, 1u << (b - 0xcc), 0);
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3:
        return hdr_set(h, VLM__MP_INT, 1, 1u << (b - 0xd0), 0);
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return hdr_set(h, VLM__MP_EXT, hs, 1u << (b - 0xd4), 0);
    case 0xd9:
        return hdr_set(h, VLM__MP_STR, hs, p[1], 0);
    case 0xda:
        return hdr_set(h, VLM__MP_STR, hs, be16(p + 1), 0);
    case 0xdb:
        return hdr_set(h, VLM__MP_STR, hs, be32(p + 1), 0);
    case 0xdc:
        return hdr_set(h, VLM__MP_ARRAY, hs, 0, be16(p + 1));
    case 0xdd:
        return hdr_set(h, VLM__MP_ARRAY, hs, 0, be32(p + 1));
    case 0xde:
        return hdr_set(h, VLM__MP_MAP, hs, 0, be16(p + 1));
    default: // 0xdf
        return hdr_set(h, VLM__MP_MAP, hs, 0, be32(p + 1));
    }
}

// ---- cursor -----------------------------------------------------------------------------------------------

int vlm__mp_read(struct vlm__mp_cur *c, struct vlm__mp_obj *o) {
    struct vlm__mp_hdr h;
    size_t avail = (size_t)(c->end - c->p);
    if (vlm__mp_header(c->p, avail, &h) != 1 || h.payload > avail - h.hsize) {
        return -1;
    }
    const uint8_t *p = c->p;
    const uint8_t *body = p + h.hsize;
    memset(o, 0, sizeof *o);
    o->kind = h.kind;
    switch (h.kind) {
    case VLM__MP_NIL:
        break;
    case VLM__MP_BOOL:
        o->b = p[0] == 0xc3;
        break;
    case VLM__MP_UINT:
        if (p[0] <= 0x7f) {
            o->u = p[0];
        } else {
            o->u = h.payload == 1 ? body[0] : h.payload == 2 ? be16(body) : h.payload == 4 ? be32(body) : be64(body);
        }
        break;
    case VLM__MP_INT: {
        int64_t v;
        if (p[0] >= 0xe0) {
            v = (int8_t)p[0];
        } else if (h.payload == 1) {
            v = (int8_t)body[0];
        } else if (h.payload == 2) {
            v = (int16_t)be16(body);
        } else if (h.payload == 4) {
            v = (int32_t)be32(body);
        } else {
            v = (int64_t)be64(body);
        }
        if (v >= 0) { // a signed encoding of a non-negative value is the same number as an unsigned one
            o->kind = VLM__MP_UINT;
            o->u = (uint64_t)v;
        } else {
            o->i = v;
        }
        break;
    }
    case VLM__MP_FLOAT:
        if (h.is_f32) {
            uint32_t bits = be32(body);
            float f;
            memcpy(&f, &bits, sizeof f);
            o->f = (double)f;
        } else {
            uint64_t bits = be64(body);
            memcpy(&o->f, &bits, sizeof o->f);
        }
        break;
    case VLM__MP_STR:
    case VLM__MP_BIN:
    case VLM__MP_EXT:
        o->ptr = body;
        o->len = h.payload;
        break;
    case VLM__MP_ARRAY:
    case VLM__MP_MAP:
        o->len = h.count;
        break;
    }
    c->p = body + h.payload;
    return 0;
}

int vlm__mp_skip(struct vlm__mp_cur *c) {
    uint64_t left = 1; // objects still to skip; each container adds its items
    while (left > 0) {
        struct vlm__mp_hdr h;
        size_t avail = (size_t)(c->end - c->p);
        if (vlm__mp_header(c->p, avail, &h) != 1 || h.payload > avail - h.hsize) {
            return -1;
        }
        c->p += h.hsize + h.payload;
        left--;
        uint64_t items = h.kind == VLM__MP_MAP ? 2 * h.count : h.kind == VLM__MP_ARRAY ? h.count : 0;
        // Every item takes at least one byte: a count beyond the bytes left is malformed, and this keeps
        // `left` far from overflow.
        if (items > (uint64_t)(c->end - c->p) || left + items > (uint64_t)(c->end - c->p) + 1) {
            return -1;
        }
        left += items;
    }
    return 0;
}

// ---- scanner ----------------------------------------------------------------------------------------------

static void scan_reset(struct vlm_proto_scan *s) {
    memset(s, 0, sizeof *s);
    s->n_levels = 1;
    s->left[0] = 1;
    s->type = -1;
}

// Scans m[s->pos..avail). Returns 1 when the message is complete (its length is s->pos), 0 when more bytes are
// needed, or a negative code; *fatal is set when the framing is lost.
static int scan(struct vlm_proto_scan *s, const uint8_t *m, size_t avail, const struct vlm_proto_limits *lim,
                struct vlm_diag *diag) {
    for (;;) {
        while (s->n_levels > 0 && s->left[s->n_levels - 1] == 0) {
            s->n_levels--;
        }
        if (s->n_levels == 0) {
            return 1;
        }
        struct vlm__mp_hdr h;
        int hr = vlm__mp_header(m + s->pos, avail - s->pos, &h);
        if (hr < 0) {
            return vlm_diag_set(diag, VLM_EBADREQUEST, "malformed msgpack: byte 0xc1 at offset %zu", s->pos);
        }
        if (hr == 0) {
            return 0;
        }
        uint32_t lvl = s->n_levels - 1; // level the object belongs to (0: the message itself)
        if (lvl == 0) {
            // Anything but an array of 3 or 4 is not msgpack-RPC: refuse at the first byte (garbage, HTTP, ...).
            if (h.kind != VLM__MP_ARRAY || h.count < 3 || h.count > 4) {
                return vlm_diag_set(diag, VLM_EBADREQUEST, "not a msgpack-RPC message: expected an array of 3 or 4");
            }
            s->top_count = h.count;
        } else if (lvl == 1) {
            // The envelope's type and msgid are checked as soon as they arrive, so a later error can still be
            // answered to the right request.
            uint64_t idx = s->top_count - s->left[1];
            if (idx == 0 || (idx == 1 && s->type != VLM_PROTO_NOTIFY)) {
                bool is_int = h.kind == VLM__MP_UINT || h.kind == VLM__MP_INT;
                if (is_int && avail - s->pos < h.hsize + h.payload) {
                    return 0;
                }
                struct vlm__mp_cur c = {m + s->pos, m + avail};
                struct vlm__mp_obj o;
                bool ok = is_int && vlm__mp_read(&c, &o) == 0 && o.kind == VLM__MP_UINT;
                if (idx == 0) {
                    if (!ok || o.u > 2 || (o.u == VLM_PROTO_NOTIFY) != (s->top_count == 3)) {
                        return vlm_diag_set(diag, VLM_EBADREQUEST,
                                            "message type: expected 0 or 1 with 4 elements, or 2 with 3");
                    }
                    s->type = (int32_t)o.u;
                } else {
                    if (!ok || o.u > UINT32_MAX) {
                        return vlm_diag_set(diag, VLM_EBADREQUEST, "msgid: expected an integer in [0, 2^32-1]");
                    }
                    s->msgid = (uint32_t)o.u;
                    s->has_msgid = true;
                }
            }
        }
        size_t room = lim->max_message - s->pos; // bytes the rest of the message may still take
        if (h.kind == VLM__MP_ARRAY || h.kind == VLM__MP_MAP) {
            uint64_t cap = h.kind == VLM__MP_ARRAY ? lim->max_array : lim->max_map;
            if (h.count > cap) {
                return vlm_diag_set(diag, VLM_ETOOLARGE, "%s of %llu %s exceeds the limit of %llu",
                                    h.kind == VLM__MP_ARRAY ? "array" : "map", (unsigned long long)h.count,
                                    h.kind == VLM__MP_ARRAY ? "elements" : "pairs", (unsigned long long)cap);
            }
            uint64_t items = h.kind == VLM__MP_MAP ? 2 * h.count : h.count;
            if (h.hsize > room || items > room - h.hsize) {
                return vlm_diag_set(diag, VLM_ETOOLARGE, "message exceeds the limit of %zu bytes", lim->max_message);
            }
            if (s->n_levels > lim->max_depth) {
                return vlm_diag_set(diag, VLM_EBADREQUEST, "nesting deeper than %u", lim->max_depth);
            }
            s->left[lvl]--;
            s->pos += h.hsize;
            s->left[s->n_levels++] = items;
            continue;
        }
        if ((h.kind == VLM__MP_STR || h.kind == VLM__MP_EXT) && h.payload > lim->max_str) {
            return vlm_diag_set(diag, VLM_ETOOLARGE, "%s of %llu bytes exceeds the limit of %u",
                                h.kind == VLM__MP_STR ? "str" : "ext", (unsigned long long)h.payload, lim->max_str);
        }
        if (h.hsize > room || h.payload > room - h.hsize) {
            return vlm_diag_set(diag, VLM_ETOOLARGE, "message exceeds the limit of %zu bytes", lim->max_message);
        }
        if (avail - s->pos < h.hsize + h.payload) {
            return 0;
        }
        s->left[lvl]--;
        s->pos += h.hsize + (size_t)h.payload;
    }
}

// ---- envelope ---------------------------------------------------------------------------------------------

// Splits a complete, scanned message into its parts. The type and msgid were checked by the scanner.
static int envelope(const uint8_t *m, size_t len, struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm__mp_cur c = {m, m + len};
    struct vlm__mp_obj top, type, o;
    if (vlm__mp_read(&c, &top) != 0 || top.kind != VLM__MP_ARRAY || vlm__mp_read(&c, &type) != 0) {
        return vlm_diag_set(diag, VLM_EBADREQUEST, "not a msgpack-RPC message");
    }
    msg->data = m;
    msg->len = len;
    msg->type = (enum vlm_proto_type)type.u;
    if (msg->type != VLM_PROTO_NOTIFY) {
        if (vlm__mp_read(&c, &o) != 0) {
            return vlm_diag_set(diag, VLM_EBADREQUEST, "msgid: expected an integer");
        }
        msg->msgid = (uint32_t)o.u;
        msg->has_msgid = true;
    }
    if (msg->type == VLM_PROTO_RESPONSE) {
        msg->error = c.p;
        if (vlm__mp_skip(&c) != 0) {
            return vlm_diag_set(diag, VLM_EBADREQUEST, "error: malformed");
        }
        msg->error_len = (size_t)(c.p - msg->error);
        msg->result = c.p;
        if (vlm__mp_skip(&c) != 0) {
            return vlm_diag_set(diag, VLM_EBADREQUEST, "result: malformed");
        }
        msg->result_len = (size_t)(c.p - msg->result);
        return 0;
    }
    if (vlm__mp_read(&c, &o) != 0 || o.kind != VLM__MP_STR) {
        return vlm_diag_set(diag, VLM_EBADREQUEST, "method: expected a str");
    }
    msg->method_name.ptr = (const char *)o.ptr;
    msg->method_name.len = (uint32_t)o.len;
    msg->method = vlm__rpc_method_lookup(o.ptr, o.len);
    // A notification name and a method name live in separate spaces.
    if ((msg->type == VLM_PROTO_REQUEST) != (msg->method < VLM_RPC_N_TEXT)) {
        msg->method = VLM_RPC_UNKNOWN;
    }
    struct vlm__mp_cur pc = c;
    if (vlm__mp_read(&pc, &o) != 0 || (o.kind != VLM__MP_ARRAY && o.kind != VLM__MP_MAP)) {
        return vlm_diag_set(diag, VLM_EBADREQUEST, "params: expected an array or a map");
    }
    msg->params = c.p;
    msg->params_len = (size_t)(c.end - c.p);
    return 0;
}

static int check_limits(const struct vlm_proto_limits *l) {
    if (l->max_message < 16 || l->max_message > ((size_t)1 << 30) || l->max_str == 0 || l->max_array < 4 ||
        l->max_map == 0 || l->max_depth < 2 || l->max_depth > VLM_PROTO_DEPTH_MAX ||
        l->max_images > VLM_RPC_IMAGES_MAX) {
        return VLM_EINVAL;
    }
    return 0;
}

static void msg_fail(struct vlm_proto_msg *msg, const struct vlm_proto_scan *s) {
    memset(msg, 0, sizeof *msg);
    msg->type = s->type >= 0 ? (enum vlm_proto_type)s->type : VLM_PROTO_REQUEST;
    msg->has_msgid = s->has_msgid;
    msg->msgid = s->msgid;
}

int vlm_proto_parse(const void *data, size_t len, const struct vlm_proto_limits *limits, struct vlm_proto_msg *msg,
                    struct vlm_diag *diag) {
    struct vlm_proto_limits lim = limits ? *limits : vlm_proto_default_limits();
    if (check_limits(&lim) != 0) {
        return vlm_diag_set(diag, VLM_EINVAL, "invalid limits");
    }
    struct vlm_proto_scan s;
    scan_reset(&s);
    int rc;
    if (len > lim.max_message) {
        rc = vlm_diag_set(diag, VLM_ETOOLARGE, "message exceeds the limit of %zu bytes", lim.max_message);
    } else {
        rc = scan(&s, data, len, &lim, diag);
        if (rc == 0) {
            rc = vlm_diag_set(diag, VLM_EBADREQUEST, "truncated message");
        } else if (rc == 1 && s.pos != len) {
            rc = vlm_diag_set(diag, VLM_EBADREQUEST, "bytes after the message");
        }
    }
    if (rc < 0) {
        msg_fail(msg, &s);
        return rc;
    }
    struct vlm_proto_msg m;
    memset(&m, 0, sizeof m);
    rc = envelope(data, len, &m, diag);
    *msg = m;
    return rc;
}

// ---- reader -----------------------------------------------------------------------------------------------

int vlm_proto_reader_init(struct vlm_proto_reader *r, const struct vlm_proto_limits *limits) {
    memset(r, 0, sizeof *r);
    r->limits = limits ? *limits : vlm_proto_default_limits();
    if (check_limits(&r->limits) != 0) {
        return VLM_EINVAL;
    }
    scan_reset(&r->scan);
    return 0;
}

void vlm_proto_reader_close(struct vlm_proto_reader *r) {
    free(r->buf);
    r->buf = NULL;
    r->cap = r->len = r->start = r->taken = 0;
}

bool vlm_proto_reader_broken(const struct vlm_proto_reader *r) {
    return r->broken != 0;
}

size_t vlm_proto_reader_pending(const struct vlm_proto_reader *r) {
    return r->len - r->start - r->taken;
}

// Releases the message handed out by the last _next.
static void release(struct vlm_proto_reader *r) {
    if (r->taken) {
        r->start += r->taken;
        r->taken = 0;
        scan_reset(&r->scan);
    }
}

int vlm_proto_reader_feed(struct vlm_proto_reader *r, const void *data, size_t n, size_t *taken) {
    *taken = 0;
    if (r->broken) {
        return r->broken;
    }
    release(r);
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->len -= r->start;
        r->start = 0;
    }
    if (r->len == 0 && r->cap > READER_BUF_KEEP) {
        free(r->buf); // a burst is over: an idle connection does not keep a large buffer
        r->buf = NULL;
        r->cap = 0;
    }
    size_t take = r->limits.max_message - r->len;
    if (take > n) {
        take = n;
    }
    if (take == 0) {
        return 0;
    }
    if (r->len + take > r->cap) {
        size_t cap = r->cap < READER_BUF_MIN ? READER_BUF_MIN : r->cap;
        while (cap < r->len + take) {
            cap = cap > r->limits.max_message / 2 ? r->limits.max_message : cap * 2;
        }
        if (cap > r->limits.max_message) {
            cap = r->limits.max_message;
        }
        uint8_t *nb = realloc(r->buf, cap);
        if (!nb) {
            return VLM_ENOMEM;
        }
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, take);
    r->len += take;
    *taken = take;
    return 0;
}

int vlm_proto_reader_next(struct vlm_proto_reader *r, struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    if (r->broken) {
        msg_fail(msg, &r->scan);
        return vlm_diag_set(diag, r->broken, "stream is broken by an earlier error");
    }
    release(r);
    const uint8_t *m = r->buf + r->start;
    size_t avail = r->len - r->start;
    if (avail == 0) {
        return 0;
    }
    int rc = scan(&r->scan, m, avail, &r->limits, diag);
    if (rc == 0) {
        if (avail >= r->limits.max_message) { // defensive: scan refuses a header that cannot fit before this
            rc = vlm_diag_set(diag, VLM_ETOOLARGE, "message exceeds the limit of %zu bytes", r->limits.max_message);
        } else {
            return 0;
        }
    }
    if (rc < 0) {
        r->broken = rc;
        msg_fail(msg, &r->scan);
        return rc;
    }
    size_t len = r->scan.pos;
    r->taken = len;
    memset(msg, 0, sizeof *msg);
    rc = envelope(m, len, msg, diag);
    return rc < 0 ? rc : 1;
}
