// libFuzzer entry point for the wire protocol: the bounded reader (fed with random chunking), every typed
// decoder, and the encoders (what was decoded is encoded again and must decode to the same values).
//
// Oracles, each an abort():
//   - feeding in random chunks gives the same messages and the same final error as feeding all at once;
//   - every message returned lies inside the reader's buffer, and msgpack-c (an independent decoder) accepts its
//     bytes as one object of exactly that length;
//   - borrowed strings and bytes of decoded structs lie inside the message; every str is valid UTF-8;
//   - an ask that decodes re-encodes, and the re-encoded one decodes to the same fields.
//
// Built by tests/fuzz/CMakeLists.txt (-DVLM_BUILD_FUZZERS=ON, clang); seeds in tests/fuzz/corpus-proto (first byte of
// each file: the limits/chunking control byte, then the stream). Run: tools/fuzz.sh SECONDS proto.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "vlm/log.h"
#include "vlm/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSGS 256

struct rec {
    uint64_t hash;
    size_t len;
};

static void check(bool ok) {
    if (!ok) {
        abort();
    }
}

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

static void inside(const void *p, size_t n, const struct vlm_proto_msg *m) {
    if (!p) {
        check(n == 0);
        return;
    }
    const uint8_t *q = p;
    check(q >= m->data && q <= m->data + m->len && n <= (size_t)(m->data + m->len - q));
}

static void str_ok(struct vlm_proto_str s, const struct vlm_proto_msg *m) {
    inside(s.ptr, s.len, m);
    if (s.ptr) {
        check(vlm_proto_utf8_valid(s.ptr, s.len));
    }
}

static void ask_roundtrip(const struct vlm_rpc_ask *a, const struct vlm_proto_msg *m) {
    str_ok(a->prompt, m);
    str_ok(a->chain, m);
    check(a->n_images <= VLM_RPC_IMAGES_MAX && a->n_stop <= VLM_RPC_STOP_MAX);
    for (uint32_t i = 0; i < a->n_images; i++) {
        inside(a->images[i].ptr, a->images[i].len, m);
    }
    for (uint32_t i = 0; i < a->n_stop; i++) {
        str_ok(a->stop[i], m);
    }
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    int rc = vlm_rpc_ask_encode(&b, 1, a);
    check(rc == 0 || rc == VLM_ENOMEM || (rc == VLM_EINVAL && a->prompt.len > (1u << 20)));
    if (rc == 0) {
        struct vlm_proto_msg m2;
        struct vlm_rpc_ask a2;
        check(vlm_proto_parse(b.data, b.len, NULL, &m2, NULL) == 0);
        check(vlm_rpc_ask_decode(&m2, NULL, &a2, NULL) == 0);
        check(a2.fields == (a->fields | VLM_RPC_ASK_PROMPT) && a2.prompt.len == a->prompt.len &&
              memcmp(a2.prompt.ptr, a->prompt.ptr, a->prompt.len) == 0 && a2.n_images == a->n_images &&
              a2.seed == a->seed && a2.max_tokens == a->max_tokens && a2.top_k == a->top_k &&
              a2.temperature == a->temperature && a2.n_stop == a->n_stop && a2.stream == a->stream);
    }
    vlm_proto_buf_free(&b);
}

// Runs the decoder(s) that fit the message.
static void decode_all(const struct vlm_proto_msg *m) {
    struct vlm_rpc_error e;
    if (vlm_proto_error_decode(m, &e, NULL) == 1) {
        str_ok(e.name, m);
        str_ok(e.message, m);
    }
    if (m->type == VLM_PROTO_REQUEST) {
        struct vlm_proto_buf b;
        vlm_proto_buf_init(&b);
        switch (m->method) {
        case VLM_RPC_HELLO: {
            struct vlm_rpc_hello h;
            if (vlm_rpc_hello_decode(m, &h, NULL) == 0) {
                str_ok(h.client, m);
                check(h.protocol >= 1);
            }
            break;
        }
        case VLM_RPC_ASK: {
            struct vlm_rpc_ask a;
            if (vlm_rpc_ask_decode(m, NULL, &a, NULL) == 0) {
                ask_roundtrip(&a, m);
            }
            break;
        }
        case VLM_RPC_CANCEL: {
            struct vlm_rpc_cancel c;
            vlm_rpc_cancel_decode(m, &c, NULL);
            break;
        }
        case VLM_RPC_STATUS:
        case VLM_RPC_CHAINS:
        case VLM_RPC_PLUGINS:
            vlm_rpc_noparams_decode(m, NULL);
            break;
        case VLM_RPC_LOAD:
        case VLM_RPC_UNLOAD:
        case VLM_RPC_SWAP: {
            struct vlm_rpc_component_req r;
            if (vlm_rpc_component_req_decode(m, &r, NULL) == 0) {
                str_ok(r.chain, m);
                str_ok(r.model, m);
                str_ok(r.plugin, m);
                check(vlm_rpc_component_req_encode(&b, 1, m->method, &r) == 0);
            }
            break;
        }
        default:
            check(vlm_proto_error_encode_unknown_method(&b, m) == 0);
            break;
        }
        vlm_proto_buf_free(&b);
    } else if (m->type == VLM_PROTO_RESPONSE) {
        struct vlm_rpc_hello_result hr;
        struct vlm_rpc_ask_result ar;
        struct vlm_rpc_status st;
        struct vlm_rpc_worker wk[2];
        struct vlm_rpc_chain ch[2];
        struct vlm_rpc_plugin pl[2];
        uint32_t n;
        vlm_rpc_hello_result_decode(m, &hr, NULL);
        if (vlm_rpc_ask_result_decode(m, &ar, NULL) == 0) {
            str_ok(ar.text, m);
        }
        vlm_rpc_status_decode(m, &st, wk, 2, &n, NULL);
        if (vlm_rpc_chains_decode(m, ch, 2, &n, NULL) == 0 && n > 0) {
            str_ok(ch[0].name, m);
            str_ok(ch[0].llm.model, m);
        }
        vlm_rpc_plugins_decode(m, pl, 2, &n, NULL);
        vlm_rpc_chain_result_decode(m, ch, NULL);
    } else {
        struct vlm_rpc_text t;
        struct vlm_rpc_progress p;
        if (vlm_rpc_text_decode(m, &t, NULL) == 0) {
            str_ok(t.text, m);
        }
        vlm_rpc_progress_decode(m, &p, NULL);
    }
}

// Feeds data in chunks (chunk 0: one go) and records messages. Returns the final code (0 or an error).
static int run(const uint8_t *data, size_t size, const struct vlm_proto_limits *lim, uint64_t seed, bool decode,
               struct rec *recs, int *n_recs) {
    struct vlm_proto_reader r;
    check(vlm_proto_reader_init(&r, lim) == 0);
    uint64_t x = seed | 1;
    size_t off = 0;
    int rc = 0;
    *n_recs = 0;
    while (off < size && rc == 0) {
        size_t want = size - off;
        if (seed) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            want = 1 + (size_t)((x * 0x2545F4914F6CDD1DULL) >> 58); // 1..64
            if (want > size - off) {
                want = size - off;
            }
        }
        size_t taken;
        rc = vlm_proto_reader_feed(&r, data + off, want, &taken);
        if (rc < 0) {
            break;
        }
        off += taken;
        struct vlm_proto_msg m;
        for (;;) {
            rc = vlm_proto_reader_next(&r, &m, NULL);
            if (rc == 1) {
                check(m.data >= r.buf && m.data + m.len <= r.buf + r.len && m.len <= lim->max_message);
                if (decode) {
                    msgpack_unpacked u;
                    msgpack_unpacked_init(&u);
                    size_t o = 0;
                    check(msgpack_unpack_next(&u, (const char *)m.data, m.len, &o) == MSGPACK_UNPACK_SUCCESS &&
                          o == m.len);
                    msgpack_unpacked_destroy(&u);
                    decode_all(&m);
                }
                if (*n_recs < MAX_MSGS) {
                    recs[(*n_recs)++] = (struct rec){fnv(m.data, m.len), m.len};
                }
                continue;
            }
            if (rc < 0 && !vlm_proto_reader_broken(&r)) { // a bad message that was skipped: record, go on
                if (*n_recs < MAX_MSGS) {
                    recs[(*n_recs)++] = (struct rec){(uint64_t)(int64_t)rc, 0};
                }
                continue;
            }
            break;
        }
        if (rc > 0) {
            rc = 0;
        }
        if (rc == 0 && taken == 0 && want > 0) {
            break; // full buffer and nothing complete: _next must have said TOO_LARGE
        }
    }
    check(r.cap <= lim->max_message);
    vlm_proto_reader_close(&r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool quiet;
    if (!quiet) {
        vlm_log_set_level(VLM_LOG_ERROR);
        quiet = true;
    }
    if (size < 2) {
        return 0;
    }
    // First byte: limits variant and chunking seed; the rest is the stream.
    uint8_t ctl = data[0];
    data++;
    size--;
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    if (ctl & 1) { // small limits, so the caps are reached with small inputs
        lim.max_message = 256 + (ctl & 0x7e) * 16;
        lim.max_str = 64;
        lim.max_array = 16;
        lim.max_map = 8;
        lim.max_depth = 2 + (ctl >> 5) % 7; // 2..8
    }
    static struct rec a[MAX_MSGS], b[MAX_MSGS];
    int na, nb;
    int rca = run(data, size, &lim, 0, true, a, &na);
    int rcb = run(data, size, &lim, 0x9e3779b97f4a7c15ull * (ctl + 1), false, b, &nb);
    check(rca == rcb && na == nb && memcmp(a, b, sizeof a[0] * (size_t)na) == 0);

    // vlm_proto_parse on the whole input agrees with the reader when the input is exactly one message.
    struct vlm_proto_msg m;
    int prc = vlm_proto_parse(data, size, &lim, &m, NULL);
    if (prc == 0) {
        check(na == 1 && a[0].len == size);
    }
    return 0;
}
