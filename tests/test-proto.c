// Wire protocol: round trips of every message, incremental feeding, the attack inputs of reliability.md §1.5
// and §3 rows 1-7, wrong types and ranges for every ask field, and the memory a malicious header can take.
#include "test-util.h"

#include <malloc.h>
#include <math.h>
#include <string.h>

#include <msgpack.h>

#include "vlm/log.h"
#include "vlm/proto.h"

#if defined(__has_feature)
#    if __has_feature(address_sanitizer)
#        define VLM_TEST_ASAN 1
#    endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(VLM_TEST_ASAN)
size_t __sanitizer_get_current_allocated_bytes(void); // <sanitizer/allocator_interface.h>, not always installed
// ASan replaces malloc, so mallinfo2 does not see its heap: ask ASan.
static size_t heap_in_use(void) {
    return __sanitizer_get_current_allocated_bytes();
}
#else
static size_t heap_in_use(void) {
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}
#endif

// ---- helpers ----------------------------------------------------------------------------------------------

// Reads exactly one message from `data` through a fresh reader fed at once; returns the _next code.
static int read_one(const void *data, size_t len, const struct vlm_proto_limits *lim, struct vlm_proto_reader *r,
                    struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    assert_int_equal(vlm_proto_reader_init(r, lim), 0);
    size_t taken;
    int rc = vlm_proto_reader_feed(r, data, len, &taken);
    assert_int_equal(rc, 0);
    assert_int_equal(taken, len);
    return vlm_proto_reader_next(r, msg, diag);
}

// The bytes must also be one complete msgpack object for msgpack-c (an independent decoder).
static void assert_msgpack_c_agrees(const uint8_t *p, size_t len) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, (const char *)p, len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, len);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
    msgpack_unpacked_destroy(&u);
}

static bool str_is(struct vlm_proto_str s, const char *c) {
    return vlm_proto_str_eq(s, c);
}

// A request [0, msgid, method, [params]] whose params map the caller packs with `pk`.
struct req {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void req_begin(struct req *q, const char *method, uint32_t n_pairs) {
    msgpack_sbuffer_init(&q->sb);
    msgpack_packer_init(&q->pk, &q->sb, msgpack_sbuffer_write);
    msgpack_pack_array(&q->pk, 4);
    msgpack_pack_uint32(&q->pk, 0);
    msgpack_pack_uint32(&q->pk, 7);
    msgpack_pack_str_with_body(&q->pk, method, strlen(method));
    msgpack_pack_array(&q->pk, 1);
    msgpack_pack_map(&q->pk, n_pairs);
}

static void pk_key(msgpack_packer *pk, const char *k) {
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

// ---- round trips ------------------------------------------------------------------------------------------

// Encodes with `b`, checks msgpack-c agrees, reads it back through a reader. The reader stays open (the message
// borrows from it): the caller closes it.
static void reread(struct vlm_proto_buf *b, struct vlm_proto_reader *r, struct vlm_proto_msg *msg) {
    assert_msgpack_c_agrees(b->data, b->len);
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    struct vlm_diag diag;
    assert_int_equal(read_one(b->data, b->len, &lim, r, msg, &diag), 1);
    assert_int_equal(msg->len, b->len);
}

static void test_roundtrip_requests(void **state) {
    (void)state;
    struct vlm_proto_buf b;
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    struct vlm_diag diag;
    vlm_proto_buf_init(&b);

    struct vlm_rpc_hello h = {vlm_proto_str_c("vlmctl 0.1.0"), 1}, h2;
    assert_int_equal(vlm_rpc_hello_encode(&b, 1, &h), 0);
    reread(&b, &r, &m);
    assert_int_equal(m.type, VLM_PROTO_REQUEST);
    assert_int_equal(m.msgid, 1);
    assert_int_equal(m.method, VLM_RPC_HELLO);
    assert_int_equal(vlm_rpc_hello_decode(&m, &h2, &diag), 0);
    assert_true(str_is(h2.client, "vlmctl 0.1.0"));
    assert_int_equal(h2.protocol, 1);
    vlm_proto_reader_close(&r);

    static const uint8_t img1[] = {0xff, 0xd8, 0xff, 0xe0, 0, 0x10}, img2[] = {0x89, 'P', 'N', 'G'};
    struct vlm_rpc_ask a, a2;
    vlm_rpc_ask_init(&a);
    a.fields = VLM_RPC_ASK_CHAIN | VLM_RPC_ASK_STREAM | VLM_RPC_ASK_MAX_TOKENS | VLM_RPC_ASK_TEMPERATURE |
               VLM_RPC_ASK_TOP_K | VLM_RPC_ASK_TOP_P | VLM_RPC_ASK_MIN_P | VLM_RPC_ASK_REPEAT_PENALTY |
               VLM_RPC_ASK_REPEAT_LAST_N | VLM_RPC_ASK_SEED | VLM_RPC_ASK_STOP | VLM_RPC_ASK_IMAGES;
    a.chain = vlm_proto_str_c("llava");
    a.prompt = vlm_proto_str_c("Describe the image. \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    a.n_images = 2;
    a.images[0].ptr = img1;
    a.images[0].len = sizeof img1;
    a.images[1].ptr = img2;
    a.images[1].len = sizeof img2;
    a.stream = true;
    a.max_tokens = 1 << 20;
    a.temperature = 0.25f;
    a.top_k = 7;
    a.top_p = 0.5f;
    a.min_p = 0.125f;
    a.repeat_penalty = 1.5f;
    a.repeat_last_n = -1;
    a.seed = UINT64_MAX;
    a.n_stop = 2;
    a.stop[0] = vlm_proto_str_c("</s>");
    a.stop[1] = vlm_proto_str_c("\n\n");
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_ask_encode(&b, 0xffffffffu, &a), 0);
    reread(&b, &r, &m);
    assert_int_equal(m.msgid, 0xffffffffu);
    assert_int_equal(m.method, VLM_RPC_ASK);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a2, &diag), 0);
    assert_int_equal(a2.fields, a.fields | VLM_RPC_ASK_PROMPT);
    assert_true(str_is(a2.chain, "llava"));
    assert_int_equal(a2.prompt.len, a.prompt.len);
    assert_memory_equal(a2.prompt.ptr, a.prompt.ptr, a.prompt.len);
    assert_true(a2.prompt.ptr >= (const char *)m.data && a2.prompt.ptr < (const char *)m.data + m.len); // borrowed
    assert_int_equal(a2.n_images, 2);
    assert_int_equal(a2.images[0].len, sizeof img1);
    assert_memory_equal(a2.images[0].ptr, img1, sizeof img1);
    assert_memory_equal(a2.images[1].ptr, img2, sizeof img2);
    assert_true(a2.stream);
    assert_int_equal(a2.max_tokens, 1 << 20);
    assert_true(a2.temperature == 0.25f && a2.top_p == 0.5f && a2.min_p == 0.125f && a2.repeat_penalty == 1.5f);
    assert_int_equal(a2.top_k, 7);
    assert_int_equal(a2.repeat_last_n, -1);
    assert_true(a2.seed == UINT64_MAX);
    assert_int_equal(a2.n_stop, 2);
    assert_true(str_is(a2.stop[0], "</s>") && str_is(a2.stop[1], "\n\n"));
    vlm_proto_reader_close(&r);

    // Only the prompt: everything else keeps the defaults, and `fields` says so.
    struct vlm_rpc_ask minimal;
    vlm_rpc_ask_init(&minimal);
    minimal.prompt = vlm_proto_str_c("");
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_ask_encode(&b, 2, &minimal), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a2, &diag), 0);
    assert_int_equal(a2.fields, VLM_RPC_ASK_PROMPT);
    assert_null(a2.chain.ptr);
    assert_int_equal(a2.prompt.len, 0);
    assert_int_equal(a2.max_tokens, -1);
    assert_true(a2.temperature == 0.8f && a2.top_k == 40 && a2.seed == 42 && !a2.stream);
    vlm_proto_reader_close(&r);

    struct vlm_rpc_cancel c = {123456}, c2;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_cancel_encode(&b, 3, &c), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_cancel_decode(&m, &c2, &diag), 0);
    assert_int_equal(c2.id, 123456);
    vlm_proto_reader_close(&r);

    enum vlm_rpc_method np[] = {VLM_RPC_STATUS, VLM_RPC_CHAINS, VLM_RPC_PLUGINS};
    for (int i = 0; i < 3; i++) {
        vlm_proto_buf_reset(&b);
        assert_int_equal(vlm_rpc_noparams_encode(&b, 10 + (uint32_t)i, np[i]), 0);
        reread(&b, &r, &m);
        assert_int_equal(m.method, np[i]);
        assert_int_equal(vlm_rpc_noparams_decode(&m, &diag), 0);
        vlm_proto_reader_close(&r);
    }
    assert_int_equal(vlm_rpc_noparams_encode(&b, 1, VLM_RPC_ASK), VLM_EINVAL);

    struct vlm_rpc_component_req cr = {vlm_proto_str_c("default"), VLM_RPC_COMPONENT_ENCODER,
                                       vlm_proto_str_c("encoder-clip"), vlm_proto_str_c("clip-vit-l.gguf")},
                                 cr2;
    enum vlm_rpc_method cm[] = {VLM_RPC_LOAD, VLM_RPC_SWAP};
    for (int i = 0; i < 2; i++) {
        vlm_proto_buf_reset(&b);
        assert_int_equal(vlm_rpc_component_req_encode(&b, 20, cm[i], &cr), 0);
        reread(&b, &r, &m);
        assert_int_equal(m.method, cm[i]);
        assert_int_equal(vlm_rpc_component_req_decode(&m, &cr2, &diag), 0);
        assert_true(str_is(cr2.chain, "default") && str_is(cr2.plugin, "encoder-clip") &&
                    str_is(cr2.model, "clip-vit-l.gguf"));
        assert_int_equal(cr2.component, VLM_RPC_COMPONENT_ENCODER);
        vlm_proto_reader_close(&r);
    }
    // unload takes a chain and an optional component only; swap needs component and model.
    struct vlm_rpc_component_req un = {vlm_proto_str_c("default"), VLM_RPC_COMPONENT_ALL, {NULL, 0}, {NULL, 0}};
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_component_req_encode(&b, 21, VLM_RPC_UNLOAD, &un), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_component_req_decode(&m, &cr2, &diag), 0);
    assert_int_equal(cr2.component, VLM_RPC_COMPONENT_ALL);
    assert_null(cr2.model.ptr);
    vlm_proto_reader_close(&r);
    size_t before = b.len;
    assert_int_equal(vlm_rpc_component_req_encode(&b, 22, VLM_RPC_UNLOAD, &cr), VLM_EINVAL);
    assert_int_equal(vlm_rpc_component_req_encode(&b, 22, VLM_RPC_SWAP, &un), VLM_EINVAL);
    assert_int_equal(b.len, before); // nothing half-written
    vlm_proto_buf_free(&b);
}

static void test_roundtrip_results(void **state) {
    (void)state;
    struct vlm_proto_buf b;
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    struct vlm_diag diag;
    struct vlm_rpc_error e;
    vlm_proto_buf_init(&b);

    struct vlm_rpc_hello_result hr = {0}, hr2;
    hr.server = vlm_proto_str_c("vlmd");
    hr.version = vlm_proto_str_c("0.1.0");
    hr.protocol = 1;
    hr.n_capabilities = 3;
    hr.capabilities[0] = vlm_proto_str_c("stream");
    hr.capabilities[1] = vlm_proto_str_c("images");
    hr.capabilities[2] = vlm_proto_str_c("swap");
    hr.limits = vlm_proto_default_limits();
    assert_int_equal(vlm_rpc_hello_result_encode(&b, 1, &hr), 0);
    reread(&b, &r, &m);
    assert_int_equal(m.type, VLM_PROTO_RESPONSE);
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 0);
    assert_int_equal(vlm_rpc_hello_result_decode(&m, &hr2, &diag), 0);
    assert_true(str_is(hr2.server, "vlmd") && str_is(hr2.version, "0.1.0"));
    assert_int_equal(hr2.protocol, 1);
    assert_int_equal(hr2.n_capabilities, 3);
    assert_true(str_is(hr2.capabilities[2], "swap"));
    assert_int_equal(hr2.limits.max_message, hr.limits.max_message);
    assert_int_equal(hr2.limits.max_str, hr.limits.max_str);
    assert_int_equal(hr2.limits.max_array, hr.limits.max_array);
    assert_int_equal(hr2.limits.max_map, hr.limits.max_map);
    assert_int_equal(hr2.limits.max_depth, hr.limits.max_depth);
    assert_int_equal(hr2.limits.max_images, hr.limits.max_images);
    vlm_proto_reader_close(&r);

    struct vlm_rpc_ask_result ar = {vlm_proto_str_c("A cat."), 600, 3, VLM_RPC_STOP_EOS,
                                    {1.5, 2.5, 3.5, 4.5, 5.5, 17.5}},
                              ar2;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_ask_result_encode(&b, 2, &ar), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_ask_result_decode(&m, &ar2, &diag), 0);
    assert_true(str_is(ar2.text, "A cat."));
    assert_int_equal(ar2.tokens_prompt, 600);
    assert_int_equal(ar2.tokens_generated, 3);
    assert_int_equal(ar2.stop_reason, VLM_RPC_STOP_EOS);
    assert_memory_equal(&ar2.timings, &ar.timings, sizeof ar.timings);
    vlm_proto_reader_close(&r);

    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_cancel_result_encode(&b, 3), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 0);
    assert_int_equal(m.msgid, 3);
    vlm_proto_reader_close(&r);

    struct vlm_rpc_worker wk[2] = {
        {vlm_proto_str_c("cpu"), true, 77, vlm_proto_str_c("default")},
        {vlm_proto_str_c("cuda:0"), false, 0, {NULL, 0}},
    };
    struct vlm_rpc_status st = {vlm_proto_str_c("0.1.0"), 1, 12.25, 5, 2, 64, 1000, 2, wk}, st2;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_status_encode(&b, 4, &st), 0);
    reread(&b, &r, &m);
    struct vlm_rpc_worker wk2[1];
    uint32_t total = 0;
    assert_int_equal(vlm_rpc_status_decode(&m, &st2, wk2, 1, &total, &diag), 0);
    assert_int_equal(total, 2); // the caller's array held one: the second was checked and counted
    assert_int_equal(st2.n_workers, 1);
    assert_true(st2.uptime_s == 12.25 && st2.clients == 5 && st2.queue_length == 2 && st2.queue_capacity == 64);
    assert_true(st2.requests_total == 1000 && st2.protocol == 1 && str_is(st2.version, "0.1.0"));
    assert_true(st2.workers == wk2 && str_is(wk2[0].device, "cpu") && wk2[0].busy && wk2[0].request == 77);
    assert_true(str_is(wk2[0].chain, "default"));
    vlm_proto_reader_close(&r);

    struct vlm_rpc_chain ch[2];
    memset(ch, 0, sizeof ch);
    ch[0].name = vlm_proto_str_c("default");
    ch[0].template_name = vlm_proto_str_c("llava-1.5");
    ch[0].encoder =
        (struct vlm_rpc_component_info){vlm_proto_str_c("encoder-clip"), vlm_proto_str_c("clip.gguf"), true};
    ch[0].projector =
        (struct vlm_rpc_component_info){vlm_proto_str_c("projector-mlp"), vlm_proto_str_c("mm.gguf"), true};
    ch[0].llm = (struct vlm_rpc_component_info){vlm_proto_str_c("llm-llama"), vlm_proto_str_c("llm.gguf"), false};
    ch[0].active = 3;
    ch[1].name = vlm_proto_str_c("text");
    ch[1].llm = ch[0].llm;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_chains_encode(&b, 5, ch, 2), 0);
    reread(&b, &r, &m);
    struct vlm_rpc_chain ch2[4];
    uint32_t n = 0;
    assert_int_equal(vlm_rpc_chains_decode(&m, ch2, 4, &n, &diag), 0);
    assert_int_equal(n, 2);
    assert_true(str_is(ch2[0].name, "default") && str_is(ch2[0].template_name, "llava-1.5"));
    assert_true(str_is(ch2[0].encoder.model, "clip.gguf") && ch2[0].encoder.loaded && !ch2[0].llm.loaded);
    assert_true(str_is(ch2[0].projector.plugin, "projector-mlp") && ch2[0].active == 3);
    assert_true(str_is(ch2[1].name, "text") && ch2[1].encoder.plugin.ptr == NULL);
    assert_true(str_is(ch2[1].llm.model, "llm.gguf"));
    vlm_proto_reader_close(&r);

    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_chain_result_encode(&b, 6, &ch[0]), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_chain_result_decode(&m, &ch2[0], &diag), 0);
    assert_true(str_is(ch2[0].name, "default") && str_is(ch2[0].llm.plugin, "llm-llama"));
    vlm_proto_reader_close(&r);

    struct vlm_rpc_plugin pl[1] = {{vlm_proto_str_c("llm-llama"), VLM_RPC_COMPONENT_LLM, vlm_proto_str_c("0.1.0"),
                                    vlm_proto_str_c("llm-llama.so"), 1, 2}},
                          pl2[1];
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_plugins_encode(&b, 7, pl, 1), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_plugins_decode(&m, pl2, 1, &n, &diag), 0);
    assert_int_equal(n, 1);
    assert_true(str_is(pl2[0].name, "llm-llama") && pl2[0].kind == VLM_RPC_COMPONENT_LLM && pl2[0].abi == 1 &&
                pl2[0].instances == 2 && str_is(pl2[0].file, "llm-llama.so"));
    vlm_proto_reader_close(&r);

    struct vlm_rpc_text t = {9, vlm_proto_str_c(" cat")}, t2;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_text_encode(&b, &t), 0);
    reread(&b, &r, &m);
    assert_int_equal(m.type, VLM_PROTO_NOTIFY);
    assert_int_equal(m.method, VLM_RPC_N_TEXT);
    assert_false(m.has_msgid);
    assert_int_equal(vlm_rpc_text_decode(&m, &t2, &diag), 0);
    assert_true(t2.id == 9 && str_is(t2.text, " cat"));
    vlm_proto_reader_close(&r);

    struct vlm_rpc_progress pg = {9, VLM_RPC_STAGE_LOADING, 1ull << 40, 3ull << 40}, pg2;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_progress_encode(&b, &pg), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_rpc_progress_decode(&m, &pg2, &diag), 0);
    assert_memory_equal(&pg2, &pg, sizeof pg);
    vlm_proto_reader_close(&r);

    // Errors: as a response and as a connection-level notification.
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_proto_error_encode(&b, 8, VLM_PROTO_EBUSY, NULL), 0);
    reread(&b, &r, &m);
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_int_equal(e.code, VLM_PROTO_EBUSY);
    assert_true(str_is(e.name, "BUSY") && str_is(e.message, "busy"));
    assert_int_equal(vlm_rpc_ask_result_decode(&m, &ar2, &diag), VLM_EINVAL); // not a success
    vlm_proto_reader_close(&r);

    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_proto_error_notify_encode(&b, VLM_PROTO_ESHUTTING_DOWN, "daemon is stopping"), 0);
    reread(&b, &r, &m);
    assert_int_equal(m.method, VLM_RPC_N_ERROR);
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_true(e.code == VLM_PROTO_ESHUTTING_DOWN && str_is(e.message, "daemon is stopping"));
    vlm_proto_reader_close(&r);
    vlm_proto_buf_free(&b);
}

// ---- incremental feeding ----------------------------------------------------------------------------------

struct seen_msg {
    int type, method;
    uint32_t msgid;
    size_t len;
    uint64_t hash;
};

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

// Feeds `data` in chunks (chunk 0: random sizes 1..97) and records every message.
static int feed_all(const uint8_t *data, size_t len, size_t chunk, struct seen_msg *out, int cap) {
    struct vlm_proto_reader r;
    struct vlm_proto_limits lim = vlm_proto_client_limits();
    assert_int_equal(vlm_proto_reader_init(&r, &lim), 0);
    uint64_t rng = 0x1234567ull + chunk;
    int n = 0;
    size_t off = 0;
    while (off < len) {
        size_t want = chunk ? chunk : 1 + vlm_test_rand_u64(&rng) % 97;
        if (want > len - off) {
            want = len - off;
        }
        size_t taken;
        assert_int_equal(vlm_proto_reader_feed(&r, data + off, want, &taken), 0);
        assert_int_equal(taken, want);
        off += taken;
        struct vlm_proto_msg m;
        int rc;
        while ((rc = vlm_proto_reader_next(&r, &m, NULL)) == 1) {
            assert_true(n < cap);
            out[n++] = (struct seen_msg){(int)m.type, (int)m.method, m.msgid, m.len, fnv(m.data, m.len)};
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(vlm_proto_reader_pending(&r), 0);
    vlm_proto_reader_close(&r);
    return n;
}

static void test_incremental(void **state) {
    (void)state;
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    struct vlm_rpc_hello h = {vlm_proto_str_c("t"), 1};
    assert_int_equal(vlm_rpc_hello_encode(&b, 1, &h), 0);
    static uint8_t big[100000];
    for (size_t i = 0; i < sizeof big; i++) {
        big[i] = (uint8_t)(i * 31);
    }
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c("what is this?");
    a.fields = VLM_RPC_ASK_IMAGES | VLM_RPC_ASK_STREAM;
    a.n_images = 1;
    a.images[0].ptr = big;
    a.images[0].len = sizeof big;
    a.stream = true;
    assert_int_equal(vlm_rpc_ask_encode(&b, 2, &a), 0);
    for (uint32_t i = 0; i < 50; i++) {
        struct vlm_rpc_text t = {2, vlm_proto_str_c("piece ")};
        assert_int_equal(vlm_rpc_text_encode(&b, &t), 0);
    }
    struct vlm_rpc_ask_result ar = {vlm_proto_str_c("done"), 1, 2, VLM_RPC_STOP_LENGTH, {0, 0, 0, 0, 0, 0}};
    assert_int_equal(vlm_rpc_ask_result_encode(&b, 2, &ar), 0);
    assert_int_equal(vlm_rpc_noparams_encode(&b, 3, VLM_RPC_STATUS), 0);

    static struct seen_msg all[64], one[64], rnd[64], seven[64];
    int n_all = feed_all(b.data, b.len, b.len, all, 64);
    assert_int_equal(n_all, 54);
    assert_int_equal(all[1].method, VLM_RPC_ASK);
    assert_int_equal(all[52].type, VLM_PROTO_RESPONSE);
    assert_int_equal(feed_all(b.data, b.len, 1, one, 64), n_all);
    assert_int_equal(feed_all(b.data, b.len, 0, rnd, 64), n_all);
    assert_int_equal(feed_all(b.data, b.len, 7, seven, 64), n_all);
    assert_memory_equal(one, all, sizeof(all[0]) * (size_t)n_all);
    assert_memory_equal(rnd, all, sizeof(all[0]) * (size_t)n_all);
    assert_memory_equal(seven, all, sizeof(all[0]) * (size_t)n_all);
    vlm_proto_buf_free(&b);
}

// A feed larger than max_message is taken in part; draining messages makes room, and the loop progresses.
static void test_feed_bounded(void **state) {
    (void)state;
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    for (uint32_t i = 0; i < 100; i++) {
        assert_int_equal(vlm_rpc_noparams_encode(&b, i, VLM_RPC_CHAINS), 0);
    }
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    lim.max_message = 64;
    struct vlm_proto_reader r;
    assert_int_equal(vlm_proto_reader_init(&r, &lim), 0);
    size_t off = 0, taken;
    uint32_t got = 0;
    while (off < b.len) {
        assert_int_equal(vlm_proto_reader_feed(&r, b.data + off, b.len - off, &taken), 0);
        assert_true(taken <= 64);
        assert_true(r.cap <= 64); // the buffer never exceeds max_message
        off += taken;
        struct vlm_proto_msg m;
        while (vlm_proto_reader_next(&r, &m, NULL) == 1) {
            assert_int_equal(m.msgid, got);
            got++;
        }
    }
    assert_int_equal(got, 100);
    vlm_proto_reader_close(&r);
    vlm_proto_buf_free(&b);
}

// ---- attack inputs ----------------------------------------------------------------------------------------

// Feeds `p` to a fresh reader and returns _next's code; *broken receives whether the stream is dead.
static int attack(const uint8_t *p, size_t n, const struct vlm_proto_limits *lim, bool *broken,
                  struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    int rc = read_one(p, n, lim, &r, msg ? msg : &m, diag);
    if (broken) {
        *broken = vlm_proto_reader_broken(&r);
    }
    if (rc == 1) {
        // a message borrows from the reader; callers of attack() only look at the code for successes
        if (msg) {
            memset(msg, 0, sizeof *msg);
        }
    }
    vlm_proto_reader_close(&r);
    return rc;
}

// The prefix of an ask request with params [X]: 94 00 07 a3 "ask" 91, then the caller's bytes.
static size_t ask_prefix(uint8_t *p) {
    static const uint8_t pre[] = {0x94, 0x00, 0x07, 0xa3, 'a', 's', 'k', 0x91};
    memcpy(p, pre, sizeof pre);
    return sizeof pre;
}

static void test_attack_headers(void **state) {
    (void)state;
    struct vlm_diag diag;
    struct vlm_proto_msg m;
    bool broken;
    uint8_t buf[512];

    // dd ff ff ff ff alone: not an envelope (refused at the first byte); inside params: over the array cap.
    static const uint8_t a1[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(attack(a1, sizeof a1, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    assert_true(broken);
    size_t n = ask_prefix(buf);
    memcpy(buf + n, a1, sizeof a1);
    assert_int_equal(attack(buf, n + sizeof a1, NULL, &broken, &m, &diag), VLM_ETOOLARGE);
    assert_true(broken);
    assert_true(m.has_msgid && m.msgid == 7 && m.type == VLM_PROTO_REQUEST); // the error can answer request 7

    // 32 nested dd 04 00 00 00 (160 bytes): as the message, and inside params.
    for (int i = 0; i < 32; i++) {
        memcpy(buf + 5 * i, "\xdd\x00\x00\x00\x04", 5);
    }
    assert_int_equal(attack(buf, 160, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    assert_true(broken);
    n = ask_prefix(buf);
    for (int i = 0; i < 32; i++) {
        memcpy(buf + n + 5 * i, "\xdd\x00\x00\x00\x04", 5);
    }
    assert_int_equal(attack(buf, n + 160, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    assert_non_null(strstr(diag.msg, "nesting deeper than 8"));
    // The same 160 bytes as msgpack-c's own examples would take them (reliability.md 1.5): dd 04 00 00 00 is
    // an array of 67,108,864; ours refuses it at its header.
    for (int i = 0; i < 32; i++) {
        memcpy(buf + n + 5 * i, "\xdd\x04\x00\x00\x00", 5);
    }
    assert_int_equal(attack(buf, n + 160, NULL, &broken, NULL, &diag), VLM_ETOOLARGE);

    // db ff ff ff ff + 3 bytes: a 4 GiB str declared, 3 bytes sent.
    n = ask_prefix(buf);
    memcpy(buf + n, "\x81\xa6prompt\xdb\xff\xff\xff\xff" "abc", 15);
    assert_int_equal(attack(buf, n + 15, NULL, &broken, NULL, &diag), VLM_ETOOLARGE);
    assert_true(broken);
    static const uint8_t a3[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c'};
    assert_int_equal(attack(a3, sizeof a3, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);

    // bin32 of 100 MiB: over max_message, refused at its 5-byte header.
    n = ask_prefix(buf);
    memcpy(buf + n, "\x81\xa6images\x91\xc6\x06\x40\x00\x00", 14);
    assert_int_equal(attack(buf, n + 14, NULL, &broken, NULL, &diag), VLM_ETOOLARGE);
    assert_non_null(strstr(diag.msg, "message exceeds"));

    // 0xc1 is never valid; ext types are framed (refused later where a field is expected).
    n = ask_prefix(buf);
    buf[n] = 0xc1;
    assert_int_equal(attack(buf, n + 1, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    assert_true(broken);

    // Garbage: an HTTP request line is refused at the first byte.
    assert_int_equal(attack((const uint8_t *)"GET / HTTP/1.1\r\n", 16, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    assert_true(broken);
}

// Builds [0, 1, "ask", P] with P = `depth - 1` arrays nested (the envelope is depth 1).
static size_t nested(uint8_t *p, size_t cap, int depth) {
    size_t n = 0;
    static const uint8_t pre[] = {0x94, 0x00, 0x01, 0xa3, 'a', 's', 'k'};
    memcpy(p, pre, sizeof pre);
    n += sizeof pre;
    for (int i = 1; i < depth; i++) {
        assert_true(n < cap);
        p[n++] = 0x91;
    }
    p[n++] = 0xc0;
    return n;
}

static void test_depth(void **state) {
    (void)state;
    static uint8_t buf[10100];
    struct vlm_diag diag;
    bool broken;
    size_t n = nested(buf, sizeof buf, 8);
    assert_int_equal(attack(buf, n, NULL, &broken, NULL, &diag), 1);
    n = nested(buf, sizeof buf, 9);
    assert_int_equal(attack(buf, n, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    assert_true(broken);
    assert_non_null(strstr(diag.msg, "nesting deeper than 8"));
    n = nested(buf, sizeof buf, 33);
    assert_int_equal(attack(buf, n, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    n = nested(buf, sizeof buf, 10000);
    assert_int_equal(attack(buf, n, NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
    // Refused at the 9th header: only 7 + 8 bytes needed to be present.
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    assert_int_equal(read_one(buf, 7 + 8, NULL, &r, &m, &diag), VLM_EBADREQUEST);
    vlm_proto_reader_close(&r);
    // A lower configured depth.
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    lim.max_depth = 4;
    n = nested(buf, sizeof buf, 4);
    assert_int_equal(attack(buf, n, &lim, &broken, NULL, &diag), 1);
    n = nested(buf, sizeof buf, 5);
    assert_int_equal(attack(buf, n, &lim, &broken, NULL, &diag), VLM_EBADREQUEST);
    lim.max_depth = 9;
    assert_int_equal(vlm_proto_reader_init(&r, &lim), VLM_EINVAL);
}

// str/array/map caps, each at the cap and one over, refused as soon as the header is there.
static void test_caps(void **state) {
    (void)state;
    struct vlm_diag diag;
    bool broken;
    size_t big = (1u << 20) + 64;
    uint8_t *buf = malloc(big + 64);
    assert_non_null(buf);
    size_t n = ask_prefix(buf);
    memcpy(buf + n, "\x81\xa6prompt\xdb\x00\x10\x00\x00", 13); // str of exactly 1 MiB
    memset(buf + n + 13, 'x', 1u << 20);
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    assert_int_equal(read_one(buf, n + 13 + (1u << 20), NULL, &r, &m, &diag), 1);
    struct vlm_rpc_ask a;
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), 0);
    assert_int_equal(a.prompt.len, 1u << 20);
    vlm_proto_reader_close(&r);
    buf[n + 12] = 0x01; // 1 MiB + 1: refused from the header alone
    assert_int_equal(attack(buf, n + 13, NULL, &broken, NULL, &diag), VLM_ETOOLARGE);
    assert_non_null(strstr(diag.msg, "str of 1048577 bytes"));

    // Arrays: 1024 elements fine, 1025 refused.
    n = ask_prefix(buf);
    memcpy(buf + n, "\xdc\x04\x00", 3);
    memset(buf + n + 3, 0xc0, 1024);
    assert_int_equal(attack(buf, n + 3 + 1024, NULL, &broken, NULL, &diag), 1);
    memcpy(buf + n, "\xdc\x04\x01", 3);
    assert_int_equal(attack(buf, n + 3, NULL, &broken, NULL, &diag), VLM_ETOOLARGE);
    // Maps: 256 pairs fine, 257 refused.
    memcpy(buf + n, "\xde\x01\x00", 3);
    memset(buf + n + 3, 0xc0, 512);
    assert_int_equal(attack(buf, n + 3 + 512, NULL, &broken, NULL, &diag), 1);
    memcpy(buf + n, "\xde\x01\x01", 3);
    assert_int_equal(attack(buf, n + 3, NULL, &broken, NULL, &diag), VLM_ETOOLARGE);

    // Bytes beyond max_message: 1000 small strs declared by a count that fits, the bytes do not.
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    lim.max_message = 1024;
    n = ask_prefix(buf);
    memcpy(buf + n, "\xdc\x03\xe8", 3);
    size_t m0 = n + 3;
    for (int i = 0; i < 1000; i++) {
        memcpy(buf + m0 + 10 * (size_t)i, "\xa9" "123456789", 10);
    }
    assert_int_equal(vlm_proto_reader_init(&r, &lim), 0);
    size_t taken;
    assert_int_equal(vlm_proto_reader_feed(&r, buf, m0 + 10000, &taken), 0);
    assert_int_equal(taken, 1024); // the buffer stops at max_message
    assert_int_equal(vlm_proto_reader_next(&r, &m, &diag), VLM_ETOOLARGE);
    assert_true(vlm_proto_reader_broken(&r));
    assert_int_equal(vlm_proto_reader_feed(&r, buf, 1, &taken), VLM_ETOOLARGE); // a broken stream stays broken
    vlm_proto_reader_close(&r);
    // A count larger than the bytes max_message leaves is refused at the header.
    memcpy(buf + n, "\xdc\x04\x00", 3);
    assert_int_equal(attack(buf, n + 3, &lim, &broken, NULL, &diag), VLM_ETOOLARGE);
    free(buf);
}

// Malicious headers must not make anything allocate more than the bytes that arrived (plus a small buffer).
static void test_peak_allocation(void **state) {
    (void)state;
    uint8_t buf[256];
    size_t n = ask_prefix(buf);
    for (int i = 0; i < 32; i++) {
        memcpy(buf + n + 5 * i, "\xdd\x00\x00\x00\x04", 5);
    }
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    lim.max_depth = 8;
    size_t before = heap_in_use();
    struct vlm_proto_reader rs[4];
    struct vlm_diag diag;
    // Four "connections", each left with a half-sent 160-byte message (reliability.md 1.5: 256 GiB reserved by
    // msgpack-c), and four with the 4 GiB str header.
    for (int i = 0; i < 4; i++) {
        assert_int_equal(vlm_proto_reader_init(&rs[i], &lim), 0);
        size_t taken;
        assert_int_equal(vlm_proto_reader_feed(&rs[i], buf, n + 5 * 6, &taken), 0);
        struct vlm_proto_msg m;
        assert_int_equal(vlm_proto_reader_next(&rs[i], &m, &diag), 0); // depth 8 reached: still waiting
    }
    struct vlm_proto_reader rs2[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(vlm_proto_reader_init(&rs2[i], &lim), 0);
        size_t taken;
        assert_int_equal(vlm_proto_reader_feed(&rs2[i], "\x94\x00\x01\xa3" "ask\x81\xa6prompt\xdb\x00\x0f\xff\xff", 20,
                                               &taken), 0);
        struct vlm_proto_msg m;
        assert_int_equal(vlm_proto_reader_next(&rs2[i], &m, &diag), 0); // a 1 MiB - 1 str: allowed, waiting
    }
    size_t grown = heap_in_use() - before;
    size_t caps = 0;
    for (int i = 0; i < 4; i++) {
        caps += rs[i].cap + rs2[i].cap;
    }
    print_message("heap growth for 8 readers holding malicious headers: %zu bytes (reader buffers %zu)\n", grown,
                  caps);
    assert_true(caps == 8 * 4096);          // each reader holds only its minimum buffer
    assert_true(grown >= caps / 2);         // the measurement sees the buffers (it is not blind)...
    assert_true(grown <= caps + 4096);      // ...and nothing else grew
    for (int i = 0; i < 4; i++) {
        vlm_proto_reader_close(&rs[i]);
        vlm_proto_reader_close(&rs2[i]);
    }
}

// ---- envelope ---------------------------------------------------------------------------------------------

static void test_envelope(void **state) {
    (void)state;
    struct vlm_diag diag;
    struct vlm_proto_msg m;
    bool broken;
    // response type with 3 elements; notification with 4; type 3; negative type; msgid str; msgid 2^32.
    static const uint8_t e1[] = {0x93, 0x01, 0x01, 0xc0};
    static const uint8_t e2[] = {0x94, 0x02, 0xa1, 'x', 0x90, 0xc0};
    static const uint8_t e3[] = {0x94, 0x03, 0x01, 0xa1, 'x', 0x90};
    static const uint8_t e4[] = {0x94, 0xff, 0x01, 0xa1, 'x', 0x90};
    static const uint8_t e5[] = {0x94, 0x00, 0xa1, '1', 0xa1, 'x', 0x90};
    static const uint8_t e6[] = {0x94, 0x00, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0, 0xa1, 'x', 0x90};
    const uint8_t *bad[] = {e1, e2, e3, e4, e5, e6};
    size_t lens[] = {sizeof e1, sizeof e2, sizeof e3, sizeof e4, sizeof e5, sizeof e6};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(attack(bad[i], lens[i], NULL, &broken, NULL, &diag), VLM_EBADREQUEST);
        assert_true(broken);
    }
    // Non-canonical but valid encodings are fine: array16 of 4, msgid as int8 and uint64.
    static const uint8_t ok1[] = {0xdc, 0x00, 0x04, 0xd0, 0x00, 0xcf, 0, 0, 0, 0, 0, 0, 0, 5,
                                  0xa6, 's',  't',  'a',  't',  'u',  's', 0x90};
    struct vlm_proto_reader r;
    assert_int_equal(read_one(ok1, sizeof ok1, NULL, &r, &m, &diag), 1);
    assert_int_equal(m.msgid, 5);
    assert_int_equal(m.method, VLM_RPC_STATUS);
    vlm_proto_reader_close(&r);

    // Well framed but wrong inside: answered with the msgid, the stream goes on.
    static const uint8_t two[] = {0x94, 0x00, 0x09, 0x05, 0x90,                          // method is an int
                                  0x94, 0x00, 0x0a, 0xa6, 's', 't', 'a', 't', 'u', 's', 0x05, // params an int
                                  0x94, 0x00, 0x0b, 0xaa, 'f', 'r', 'o', 'b', 'n', 'i', 'c', 'a', 't', 'e', 0x90,
                                  0x93, 0x02, 0xa8, 'v', 'l', 'm', '.', 't', 'e', 'x', 't', 0x90};
    assert_int_equal(vlm_proto_reader_init(&r, NULL), 0);
    size_t taken;
    assert_int_equal(vlm_proto_reader_feed(&r, two, sizeof two, &taken), 0);
    assert_int_equal(vlm_proto_reader_next(&r, &m, &diag), VLM_EBADREQUEST);
    assert_true(m.has_msgid && m.msgid == 9 && !vlm_proto_reader_broken(&r));
    assert_non_null(strstr(diag.msg, "method"));
    assert_int_equal(vlm_proto_reader_next(&r, &m, &diag), VLM_EBADREQUEST);
    assert_true(m.has_msgid && m.msgid == 10 && !vlm_proto_reader_broken(&r));
    assert_int_equal(vlm_proto_reader_next(&r, &m, &diag), 1);
    assert_int_equal(m.method, VLM_RPC_UNKNOWN); // unknown method: the daemon answers it
    assert_true(vlm_proto_str_eq(m.method_name, "frobnicate"));
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    assert_int_equal(vlm_proto_error_encode_unknown_method(&b, &m), 0);
    assert_int_equal(vlm_proto_reader_next(&r, &m, &diag), 1);
    assert_int_equal(m.type, VLM_PROTO_NOTIFY);
    assert_int_equal(m.method, VLM_RPC_N_TEXT);
    assert_int_equal(vlm_proto_reader_next(&r, &m, &diag), 0);
    vlm_proto_reader_close(&r);

    struct vlm_proto_reader r2;
    assert_int_equal(read_one(b.data, b.len, NULL, &r2, &m, &diag), 1);
    struct vlm_rpc_error e;
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_int_equal(m.msgid, 11);
    assert_int_equal(e.code, VLM_PROTO_EUNKNOWN_METHOD);
    assert_true(vlm_proto_str_eq(e.name, "UNKNOWN_METHOD"));
    assert_true(vlm_proto_str_eq(e.message, "unknown method 'frobnicate'"));
    vlm_proto_reader_close(&r2);

    // A request name used as a notification (and the reverse) is unknown, not misrouted.
    static const uint8_t n1[] = {0x93, 0x02, 0xa3, 'a', 's', 'k', 0x90};
    assert_int_equal(read_one(n1, sizeof n1, NULL, &r2, &m, &diag), 1);
    assert_int_equal(m.method, VLM_RPC_UNKNOWN);
    vlm_proto_reader_close(&r2);

    // vlm_proto_parse: exactly one message.
    assert_int_equal(vlm_proto_parse(ok1, sizeof ok1, NULL, &m, &diag), 0);
    assert_int_equal(vlm_proto_parse(ok1, sizeof ok1 - 1, NULL, &m, &diag), VLM_EBADREQUEST);
    uint8_t trail[sizeof ok1 + 1];
    memcpy(trail, ok1, sizeof ok1);
    trail[sizeof ok1] = 0xc0;
    assert_int_equal(vlm_proto_parse(trail, sizeof trail, NULL, &m, &diag), VLM_EBADREQUEST);
    vlm_proto_buf_free(&b);
}

// ---- field types and ranges -------------------------------------------------------------------------------

enum kind { K_NIL, K_TRUE, K_UINT, K_NEGINT, K_FLOAT, K_STR, K_BIN, K_ARRAY, K_MAP, K_EXT, K_COUNT };
static const char *const kind_names[] = {"nil", "true", "5", "-5", "0.5", "str", "bin", "[]", "{}", "ext"};

static void pack_kind(msgpack_packer *pk, enum kind k) {
    switch (k) {
    case K_NIL:
        msgpack_pack_nil(pk);
        break;
    case K_TRUE:
        msgpack_pack_true(pk);
        break;
    case K_UINT:
        msgpack_pack_uint64(pk, 5);
        break;
    case K_NEGINT:
        msgpack_pack_int64(pk, -5);
        break;
    case K_FLOAT:
        msgpack_pack_double(pk, 0.5);
        break;
    case K_STR:
        msgpack_pack_str_with_body(pk, "x", 1);
        break;
    case K_BIN:
        msgpack_pack_bin_with_body(pk, "x", 1);
        break;
    case K_ARRAY:
        msgpack_pack_array(pk, 0);
        break;
    case K_MAP:
        msgpack_pack_map(pk, 0);
        break;
    default:
        msgpack_pack_ext_with_body(pk, "x", 1, 1);
        break;
    }
}

// Decodes an ask whose params are {prompt: "hi", key: <packed by fn>}; returns the code.
typedef void (*pack_fn)(msgpack_packer *pk, const void *arg);

static int ask_with(const char *key, pack_fn fn, const void *arg, struct vlm_rpc_ask *out, struct vlm_diag *diag) {
    struct req q;
    bool is_prompt = strcmp(key, "prompt") == 0;
    req_begin(&q, "ask", is_prompt ? 1 : 2);
    if (!is_prompt) {
        pk_key(&q.pk, "prompt");
        msgpack_pack_str_with_body(&q.pk, "hi", 2);
    }
    pk_key(&q.pk, key);
    fn(&q.pk, arg);
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    int rc = read_one(q.sb.data, q.sb.size, NULL, &r, &m, diag);
    assert_int_equal(rc, 1);
    struct vlm_rpc_ask a;
    rc = vlm_rpc_ask_decode(&m, NULL, out ? out : &a, diag);
    vlm_proto_reader_close(&r);
    msgpack_sbuffer_destroy(&q.sb);
    return rc;
}

static void pack_kind_fn(msgpack_packer *pk, const void *arg) {
    pack_kind(pk, *(const enum kind *)arg);
}

static void test_field_types(void **state) {
    (void)state;
    // Which sample values each field accepts (the others are refused, naming the field).
    static const struct {
        const char *name;
        unsigned ok; // bit per enum kind
    } fields[] = {
        {"chain", 1u << K_STR},
        {"prompt", 1u << K_STR},
        {"images", 1u << K_ARRAY},
        {"stream", 1u << K_TRUE},
        {"max_tokens", 1u << K_UINT},
        {"temperature", 1u << K_UINT | 1u << K_FLOAT},
        {"top_k", 1u << K_UINT},
        {"top_p", 1u << K_FLOAT},
        {"min_p", 1u << K_FLOAT},
        {"repeat_penalty", 1u << K_UINT | 1u << K_FLOAT},
        {"repeat_last_n", 1u << K_UINT},
        {"seed", 1u << K_UINT},
        {"stop", 1u << K_ARRAY},
    };
    struct vlm_diag diag;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (enum kind k = 0; k < K_COUNT; k++) {
            int rc = ask_with(fields[f].name, pack_kind_fn, &k, NULL, &diag);
            if (fields[f].ok & (1u << k)) {
                if (rc != 0) {
                    fail_msg("field %s with %s: refused (%s)", fields[f].name, kind_names[k], diag.msg);
                }
            } else {
                if (rc != VLM_EBADREQUEST) {
                    fail_msg("field %s with %s: got %d, expected EBADREQUEST", fields[f].name, kind_names[k], rc);
                }
                char want[64];
                snprintf(want, sizeof want, "field '%s'", fields[f].name);
                if (!strstr(diag.msg, want)) {
                    fail_msg("field %s with %s: message '%s' does not name the field", fields[f].name,
                             kind_names[k], diag.msg);
                }
            }
        }
    }
    // Unknown keys are ignored, even with an ext value; a known key twice and a non-str key are refused.
    enum kind ext = K_EXT;
    assert_int_equal(ask_with("future_option", pack_kind_fn, &ext, NULL, &diag), 0);
    struct req q;
    req_begin(&q, "ask", 2);
    pk_key(&q.pk, "prompt");
    msgpack_pack_str_with_body(&q.pk, "a", 1);
    pk_key(&q.pk, "prompt");
    msgpack_pack_str_with_body(&q.pk, "b", 1);
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    struct vlm_rpc_ask a;
    assert_int_equal(read_one(q.sb.data, q.sb.size, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), VLM_EBADREQUEST);
    assert_non_null(strstr(diag.msg, "given twice"));
    vlm_proto_reader_close(&r);
    msgpack_sbuffer_destroy(&q.sb);
    req_begin(&q, "ask", 2);
    pk_key(&q.pk, "prompt");
    msgpack_pack_str_with_body(&q.pk, "a", 1);
    msgpack_pack_uint64(&q.pk, 1);
    msgpack_pack_nil(&q.pk);
    assert_int_equal(read_one(q.sb.data, q.sb.size, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), VLM_EBADREQUEST);
    assert_non_null(strstr(diag.msg, "keys must be str"));
    vlm_proto_reader_close(&r);
    msgpack_sbuffer_destroy(&q.sb);
    // No prompt.
    req_begin(&q, "ask", 0);
    assert_int_equal(read_one(q.sb.data, q.sb.size, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), VLM_EBADREQUEST);
    assert_non_null(strstr(diag.msg, "field 'prompt': required"));
    vlm_proto_reader_close(&r);
    msgpack_sbuffer_destroy(&q.sb);
}

static void pack_i64(msgpack_packer *pk, const void *arg) {
    msgpack_pack_int64(pk, *(const int64_t *)arg);
}

static void pack_u64(msgpack_packer *pk, const void *arg) {
    msgpack_pack_uint64(pk, *(const uint64_t *)arg);
}

static void pack_f64(msgpack_packer *pk, const void *arg) {
    msgpack_pack_double(pk, *(const double *)arg);
}

static void pack_f32(msgpack_packer *pk, const void *arg) {
    msgpack_pack_float(pk, (float)*(const double *)arg);
}

static void pack_str_arg(msgpack_packer *pk, const void *arg) {
    const char *s = arg;
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void test_field_ranges(void **state) {
    (void)state;
    struct vlm_diag diag;
    struct vlm_rpc_ask a;
    const int64_t i64min = INT64_MIN, m1 = -1, m2 = -2, mt = (1 << 20) + 1, mtok = 1 << 20;
    const uint64_t u63 = 1ull << 63, umax = UINT64_MAX, i32over = 1ull << 31;
    // ints at +-2^63 and the edges of each range
    assert_int_equal(ask_with("max_tokens", pack_i64, &i64min, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("max_tokens", pack_u64, &u63, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("max_tokens", pack_u64, &umax, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("max_tokens", pack_i64, &m2, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("max_tokens", pack_i64, &mt, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("max_tokens", pack_i64, &m1, &a, &diag), 0);
    assert_int_equal(a.max_tokens, -1);
    assert_int_equal(ask_with("max_tokens", pack_i64, &mtok, &a, &diag), 0);
    assert_int_equal(a.max_tokens, 1 << 20);
    assert_int_equal(ask_with("top_k", pack_u64, &u63, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("top_k", pack_u64, &i32over, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("top_k", pack_i64, &m1, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("seed", pack_u64, &umax, &a, &diag), 0);
    assert_true(a.seed == UINT64_MAX);
    assert_int_equal(ask_with("seed", pack_u64, &u63, &a, &diag), 0);
    assert_true(a.seed == 1ull << 63);
    assert_int_equal(ask_with("seed", pack_i64, &i64min, NULL, &diag), VLM_EBADREQUEST);
    assert_int_equal(ask_with("repeat_last_n", pack_i64, &m1, NULL, &diag), 0);
    assert_int_equal(ask_with("repeat_last_n", pack_i64, &m2, NULL, &diag), VLM_EBADREQUEST);

    // floats: NaN, infinities and the range edges, as float64 and float32
    const double nan_ = (double)NAN, inf = (double)INFINITY, ninf = -(double)INFINITY;
    const double zero = 0.0, hundred = 100.0, over = 100.5;
    const double neg = -0.1, one = 1.0, justover = 1.0000001;
    pack_fn packers[2] = {pack_f64, pack_f32};
    for (int p = 0; p < 2; p++) {
        assert_int_equal(ask_with("temperature", packers[p], &nan_, NULL, &diag), VLM_EBADREQUEST);
        assert_non_null(strstr(diag.msg, "field 'temperature': out of range"));
        assert_int_equal(ask_with("temperature", packers[p], &inf, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("temperature", packers[p], &ninf, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("temperature", packers[p], &neg, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("temperature", packers[p], &over, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("temperature", packers[p], &zero, &a, &diag), 0);
        assert_true(a.temperature == 0.0f);
        assert_int_equal(ask_with("temperature", packers[p], &hundred, &a, &diag), 0);
        assert_int_equal(ask_with("top_p", packers[p], &one, NULL, &diag), 0);
        assert_int_equal(ask_with("top_p", packers[p], &justover, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("min_p", packers[p], &nan_, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("repeat_penalty", packers[p], &zero, NULL, &diag), VLM_EBADREQUEST);
        assert_int_equal(ask_with("repeat_penalty", packers[p], &hundred, NULL, &diag), 0);
    }

    // Strings: UTF-8 only, no NUL.
    static const char *const bad_utf8[] = {
        "\xff",             // never valid
        "\xc0\xaf",         // overlong '/'
        "\xe0\x80\xaf",     // overlong
        "\xed\xa0\x80",     // surrogate
        "\xf4\x90\x80\x80", // above U+10FFFF
        "abc\xe2\x82",      // truncated
        "\x80",             // lone continuation
    };
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        assert_int_equal(ask_with("prompt", pack_str_arg, bad_utf8[i], NULL, &diag), VLM_EBADREQUEST);
        assert_non_null(strstr(diag.msg, "field 'prompt': expected UTF-8"));
    }
    assert_int_equal(ask_with("prompt", pack_str_arg, "\xf4\x8f\xbf\xbf \xe2\x82\xac \xc3\xa9 \xef\xbb\xbf", &a, &diag),
                     0);
    struct req q;
    req_begin(&q, "ask", 1);
    pk_key(&q.pk, "prompt");
    msgpack_pack_str_with_body(&q.pk, "a\0b", 3);
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    assert_int_equal(read_one(q.sb.data, q.sb.size, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), VLM_EBADREQUEST);
    vlm_proto_reader_close(&r);
    msgpack_sbuffer_destroy(&q.sb);
    assert_int_equal(ask_with("chain", pack_str_arg, "", NULL, &diag), VLM_EBADREQUEST); // names are 1..255 bytes
    char longname[300];
    memset(longname, 'n', 256);
    longname[256] = 0;
    assert_int_equal(ask_with("chain", pack_str_arg, longname, NULL, &diag), VLM_ETOOLARGE);
    longname[255] = 0;
    assert_int_equal(ask_with("chain", pack_str_arg, longname, NULL, &diag), 0);

    // Images: at most limits.max_images, each a non-empty bin.
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    for (uint32_t count = 8; count <= 9; count++) {
        req_begin(&q, "ask", 2);
        pk_key(&q.pk, "prompt");
        msgpack_pack_str_with_body(&q.pk, "a", 1);
        pk_key(&q.pk, "images");
        msgpack_pack_array(&q.pk, count);
        for (uint32_t i = 0; i < count; i++) {
            msgpack_pack_bin_with_body(&q.pk, "img", 3);
        }
        assert_int_equal(read_one(q.sb.data, q.sb.size, NULL, &r, &m, &diag), 1);
        assert_int_equal(vlm_rpc_ask_decode(&m, &lim, &a, &diag), count == 8 ? 0 : VLM_ETOOLARGE);
        vlm_proto_reader_close(&r);
        msgpack_sbuffer_destroy(&q.sb);
    }
    // Stop strings: at most 16, each 1..256 bytes.
    req_begin(&q, "ask", 2);
    pk_key(&q.pk, "prompt");
    msgpack_pack_str_with_body(&q.pk, "a", 1);
    pk_key(&q.pk, "stop");
    msgpack_pack_array(&q.pk, 1);
    msgpack_pack_str_with_body(&q.pk, "", 0);
    assert_int_equal(read_one(q.sb.data, q.sb.size, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, &lim, &a, &diag), VLM_EBADREQUEST);
    vlm_proto_reader_close(&r);
    msgpack_sbuffer_destroy(&q.sb);

    // params shapes: [] and a bare map are accepted; two maps are not.
    static const uint8_t p2[] = {0x94, 0x00, 0x01, 0xa3, 'a', 's', 'k', 0x92, 0x80, 0x80};
    assert_int_equal(read_one(p2, sizeof p2, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), VLM_EBADREQUEST);
    assert_non_null(strstr(diag.msg, "field 'params'"));
    vlm_proto_reader_close(&r);
    static const uint8_t p3[] = {0x94, 0x00, 0x01, 0xa3, 'a', 's', 'k', 0x81, 0xa6, 'p', 'r', 'o', 'm', 'p', 't', 0xa0};
    assert_int_equal(read_one(p3, sizeof p3, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_rpc_ask_decode(&m, NULL, &a, &diag), 0);
    vlm_proto_reader_close(&r);
}

// ---- hello, errors, encoder self-checks -------------------------------------------------------------------

static void test_hello_versions(void **state) {
    (void)state;
    struct vlm_diag diag;
    uint32_t agreed = 0;
    struct vlm_rpc_hello h = {vlm_proto_str_c("x"), 1};
    assert_int_equal(vlm_rpc_hello_negotiate(&h, &agreed, &diag), 0);
    assert_int_equal(agreed, 1);
    h.protocol = 2;
    assert_int_equal(vlm_rpc_hello_negotiate(&h, &agreed, &diag), VLM_EUNSUPPORTED);
    assert_string_equal(diag.msg, "protocol 2 is not supported: this server speaks 1..1");
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    assert_int_equal(vlm_proto_error_encode(&b, 1, VLM_PROTO_EUNSUPPORTED_PROTOCOL, diag.msg), 0);
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    assert_int_equal(read_one(b.data, b.len, NULL, &r, &m, &diag), 1);
    struct vlm_rpc_error e;
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_int_equal(e.code, 3);
    assert_true(vlm_proto_str_eq(e.name, "UNSUPPORTED_PROTOCOL"));
    vlm_proto_reader_close(&r);
    // protocol 0 or missing: refused by the decoder; the encoder will not send it.
    h.protocol = 0;
    vlm_proto_buf_reset(&b);
    assert_int_equal(vlm_rpc_hello_encode(&b, 1, &h), VLM_EINVAL);
    assert_int_equal(b.len, 0);
    vlm_proto_buf_free(&b);
}

static void test_errors(void **state) {
    (void)state;
    // Names are unique, texts are fixed, unknown codes read as internal.
    for (int a = 1; a <= 19; a++) {
        if (a != VLM_PROTO_EINTERNAL) {
            assert_string_not_equal(vlm_proto_err_name(a), "INTERNAL");
        }
        for (int c = a + 1; c <= 19; c++) {
            assert_string_not_equal(vlm_proto_err_name(a), vlm_proto_err_name(c));
        }
    }
    assert_string_equal(vlm_proto_err_name(0), "INTERNAL");
    assert_string_equal(vlm_proto_err_name(1000), "INTERNAL");
    assert_int_equal(vlm_proto_err_from_code(VLM_EBADREQUEST), VLM_PROTO_EBAD_REQUEST);
    assert_int_equal(vlm_proto_err_from_code(VLM_ETOOLARGE), VLM_PROTO_ETOO_LARGE);
    assert_int_equal(vlm_proto_err_from_code(VLM_EBUSY), VLM_PROTO_EBUSY);
    assert_int_equal(vlm_proto_err_from_code(VLM_ECANCELED), VLM_PROTO_ECANCELLED);
    assert_int_equal(vlm_proto_err_from_code(VLM_EIO), VLM_PROTO_EINTERNAL);

    // A message is printable ASCII only and at most 255 bytes.
    char msg[400];
    memset(msg, 'a', sizeof msg - 1);
    msg[sizeof msg - 1] = 0;
    memcpy(msg, "bad\n\xff\x01", 6);
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    assert_int_equal(vlm_proto_error_encode(&b, 1, VLM_PROTO_EBAD_REQUEST, msg), 0);
    struct vlm_proto_reader r;
    struct vlm_proto_msg m;
    struct vlm_diag diag;
    assert_int_equal(read_one(b.data, b.len, NULL, &r, &m, &diag), 1);
    struct vlm_rpc_error e;
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_int_equal(e.message.len, 255);
    assert_memory_equal(e.message.ptr, "bad\?\?\?aaa", 9);
    vlm_proto_reader_close(&r);

    // An unknown method name with binary bytes is echoed shortened and sanitised.
    vlm_proto_buf_reset(&b);
    static const uint8_t req[] = {0x94, 0x00, 0x02, 0xa4, 'x', 0x00, 0xff, '\'', 0x90};
    assert_int_equal(read_one(req, sizeof req, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_proto_error_encode_unknown_method(&b, &m), 0);
    vlm_proto_reader_close(&r);
    assert_int_equal(read_one(b.data, b.len, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_true(vlm_proto_str_eq(e.message, "unknown method 'x\?\?\?'"));
    vlm_proto_reader_close(&r);

    // The diag of a decoder travels as the message (fixed text plus field names).
    struct vlm_rpc_ask a;
    vlm_proto_buf_reset(&b);
    static const uint8_t bad_ask[] = {0x94, 0x00, 0x04, 0xa3, 'a', 's', 'k', 0x91,
                                      0x81, 0xa6, 'p',  'r',  'o', 'm', 'p', 't', 0x05};
    assert_int_equal(read_one(bad_ask, sizeof bad_ask, NULL, &r, &m, &diag), 1);
    int rc = vlm_rpc_ask_decode(&m, NULL, &a, &diag);
    assert_int_equal(rc, VLM_EBADREQUEST);
    assert_int_equal(vlm_proto_error_encode_diag(&b, m.msgid, rc, &diag), 0);
    vlm_proto_reader_close(&r);
    assert_int_equal(read_one(b.data, b.len, NULL, &r, &m, &diag), 1);
    assert_int_equal(vlm_proto_error_decode(&m, &e, &diag), 1);
    assert_int_equal(e.code, VLM_PROTO_EBAD_REQUEST);
    assert_true(vlm_proto_str_eq(e.message, "field 'prompt': expected a str"));
    vlm_proto_reader_close(&r);
    vlm_proto_buf_free(&b);
}

// Encoders refuse what the peer would refuse, and leave the buffer as it was.
static void test_encoder_refuses(void **state) {
    (void)state;
    struct vlm_proto_buf b;
    vlm_proto_buf_init(&b);
    assert_int_equal(vlm_rpc_noparams_encode(&b, 1, VLM_RPC_STATUS), 0);
    size_t len = b.len;
    struct vlm_rpc_ask a;
    vlm_rpc_ask_init(&a);
    a.prompt = vlm_proto_str_c("x");
    a.fields = VLM_RPC_ASK_TEMPERATURE;
    a.temperature = NAN;
    assert_int_equal(vlm_rpc_ask_encode(&b, 2, &a), VLM_EINVAL);
    a.temperature = 0.5f;
    a.prompt = vlm_proto_str_c("\xff");
    assert_int_equal(vlm_rpc_ask_encode(&b, 2, &a), VLM_EINVAL);
    struct vlm_rpc_text t = {1, vlm_proto_str_c("\xc3")}; // half a character
    assert_int_equal(vlm_rpc_text_encode(&b, &t), VLM_EINVAL);
    struct vlm_rpc_progress p = {1, 0, 0, 0};
    assert_int_equal(vlm_rpc_progress_encode(&b, &p), VLM_EINVAL);
    assert_int_equal(b.len, len);
    assert_msgpack_c_agrees(b.data, b.len);
    vlm_proto_buf_free(&b);
}

int main(void) {
    vlm_log_set_level(VLM_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_requests),
        cmocka_unit_test(test_roundtrip_results),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_feed_bounded),
        cmocka_unit_test(test_attack_headers),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_peak_allocation),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_field_types),
        cmocka_unit_test(test_field_ranges),
        cmocka_unit_test(test_hello_versions),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_encoder_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
