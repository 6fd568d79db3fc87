// Encoders: msgpack-c's packer writing into a vlm_proto_buf. Every encoder re-reads what it wrote with the
// same scanner and decoder a peer uses, and takes it back (VLM_EINVAL) when the peer would refuse it, so the
// daemon and the clients can never send what the other side rejects.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "proto/proto-impl.h"
#include "vlm/log.h"
#include "vlm/proto.h"

// ---- buffer -----------------------------------------------------------------------------------------------

void vlm_proto_buf_init(struct vlm_proto_buf *b) {
    memset(b, 0, sizeof *b);
}

void vlm_proto_buf_free(struct vlm_proto_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

void vlm_proto_buf_reset(struct vlm_proto_buf *b) {
    b->len = 0;
}

struct writer {
    struct vlm_proto_buf *b;
    size_t start; // b->len before this message: restored on failure
    int err;
    msgpack_packer pk;
};

static int write_cb(void *data, const char *p, size_t n) {
    struct writer *w = data;
    struct vlm_proto_buf *b = w->b;
    if (w->err) {
        return -1;
    }
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2) {
                w->err = VLM_ENOMEM;
                return -1;
            }
            cap *= 2;
        }
        uint8_t *nd = realloc(b->data, cap);
        if (!nd) {
            w->err = VLM_ENOMEM;
            return -1;
        }
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void writer_init(struct writer *w, struct vlm_proto_buf *b) {
    w->b = b;
    w->start = b->len;
    w->err = 0;
    msgpack_packer_init(&w->pk, w, write_cb);
}

// ---- packing helpers --------------------------------------------------------------------------------------

static void pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_str(msgpack_packer *pk, struct vlm_proto_str s) {
    msgpack_pack_str(pk, s.len);
    if (s.len) {
        msgpack_pack_str_body(pk, s.ptr, s.len);
    }
}

static void kv_str(msgpack_packer *pk, const char *k, struct vlm_proto_str v) {
    pack_cstr(pk, k);
    pack_str(pk, v);
}

static void kv_cstr(msgpack_packer *pk, const char *k, const char *v) {
    pack_cstr(pk, k);
    pack_cstr(pk, v);
}

static void kv_u64(msgpack_packer *pk, const char *k, uint64_t v) {
    pack_cstr(pk, k);
    msgpack_pack_uint64(pk, v);
}

static void kv_i64(msgpack_packer *pk, const char *k, int64_t v) {
    pack_cstr(pk, k);
    msgpack_pack_int64(pk, v);
}

static void kv_f32(msgpack_packer *pk, const char *k, float v) {
    pack_cstr(pk, k);
    msgpack_pack_float(pk, v);
}

static void kv_f64(msgpack_packer *pk, const char *k, double v) {
    pack_cstr(pk, k);
    msgpack_pack_double(pk, v);
}

static void kv_bool(msgpack_packer *pk, const char *k, bool v) {
    pack_cstr(pk, k);
    if (v) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
}

// [0, msgid, method, [ then the caller packs one map (or nothing: n_params 0) and the closing is implicit.
static void begin_request(struct writer *w, uint32_t msgid, enum vlm_rpc_method m, uint32_t n_params) {
    msgpack_pack_array(&w->pk, 4);
    msgpack_pack_uint32(&w->pk, VLM_PROTO_REQUEST);
    msgpack_pack_uint32(&w->pk, msgid);
    pack_cstr(&w->pk, vlm_rpc_method_name(m));
    msgpack_pack_array(&w->pk, n_params);
}

static void begin_result(struct writer *w, uint32_t msgid) {
    msgpack_pack_array(&w->pk, 4);
    msgpack_pack_uint32(&w->pk, VLM_PROTO_RESPONSE);
    msgpack_pack_uint32(&w->pk, msgid);
    msgpack_pack_nil(&w->pk);
}

static void begin_notify(struct writer *w, enum vlm_rpc_method m) {
    msgpack_pack_array(&w->pk, 3);
    msgpack_pack_uint32(&w->pk, VLM_PROTO_NOTIFY);
    pack_cstr(&w->pk, vlm_rpc_method_name(m));
    msgpack_pack_array(&w->pk, 1);
}

typedef int (*check_fn)(const struct vlm_proto_msg *msg, struct vlm_diag *diag);

// Ends a message: on a write failure, or when the peer's decoder (`check`, with the peer's limits) refuses
// what was written, the message is taken back.
static int finish(struct writer *w, bool to_server, check_fn check) {
    if (w->err) {
        w->b->len = w->start;
        return w->err;
    }
    struct vlm_proto_limits lim = to_server ? vlm_proto_default_limits() : vlm_proto_client_limits();
    struct vlm_proto_msg msg;
    struct vlm_diag diag;
    if (vlm_proto_parse(w->b->data + w->start, w->b->len - w->start, &lim, &msg, &diag) != 0 ||
        (check && check(&msg, &diag) < 0)) {
        vlm_log(VLM_LOG_DEBUG, "vlm_proto: refusing to send a message its peer would refuse: %s", diag.msg);
        w->b->len = w->start;
        return VLM_EINVAL;
    }
    return 0;
}

// ---- errors -----------------------------------------------------------------------------------------------

const char *vlm_proto_err_name(int wire_code) {
    switch (wire_code) {
#define VLM_PROTO_ERR_NAME(name, value, text)                                                                  \
    case value:                                                                                                \
        return #name;
        VLM_PROTO_ERR_MAP(VLM_PROTO_ERR_NAME)
#undef VLM_PROTO_ERR_NAME
    default:
        return "INTERNAL";
    }
}

const char *vlm_proto_err_text(int wire_code) {
    switch (wire_code) {
#define VLM_PROTO_ERR_TEXT(name, value, text)                                                                  \
    case value:                                                                                                \
        return text;
        VLM_PROTO_ERR_MAP(VLM_PROTO_ERR_TEXT)
#undef VLM_PROTO_ERR_TEXT
    default:
        return "internal error";
    }
}

int vlm_proto_err_from_code(int vlm_code) {
    switch (vlm_code) {
    case VLM_EBADREQUEST:
    case VLM_EINVAL:
    case VLM_ERANGE:
        return VLM_PROTO_EBAD_REQUEST;
    case VLM_ENOTFOUND:
    case VLM_ENOENT:
        return VLM_PROTO_ENOT_FOUND;
    case VLM_EBUSY:
        return VLM_PROTO_EBUSY;
    case VLM_ECANCELED:
        return VLM_PROTO_ECANCELLED;
    case VLM_ETOOLARGE:
        return VLM_PROTO_ETOO_LARGE;
    case VLM_EBADIMAGE:
        return VLM_PROTO_EBAD_IMAGE;
    case VLM_EBADMODEL:
        return VLM_PROTO_EMODEL_INVALID;
    case VLM_EABI:
        return VLM_PROTO_EPLUGIN_INVALID;
    case VLM_ENOMEM:
        return VLM_PROTO_EOUT_OF_MEMORY;
    case VLM_EDEVICE:
        return VLM_PROTO_EDEVICE_ERROR;
    case VLM_EUNSUPPORTED:
        return VLM_PROTO_EUNSUPPORTED;
    default:
        return VLM_PROTO_EINTERNAL;
    }
}

// Printable ASCII only, at most 255 bytes.
static void sanitize(char *dst, size_t cap, const char *src) {
    size_t n = 0;
    for (; src[n] && n + 1 < cap && n < 255; n++) {
        unsigned char ch = (unsigned char)src[n];
        dst[n] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[n] = 0;
}

static void pack_error_map(msgpack_packer *pk, int wire_code, const char *message) {
    char text[256];
    sanitize(text, sizeof text, message ? message : vlm_proto_err_text(wire_code));
    msgpack_pack_map(pk, 3);
    kv_i64(pk, "code", wire_code);
    kv_cstr(pk, "name", vlm_proto_err_name(wire_code));
    kv_cstr(pk, "message", text);
}

static int check_error(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_error e;
    int rc = vlm_proto_error_decode(msg, &e, diag);
    return rc == 1 ? 0 : rc < 0 ? rc : VLM_EINVAL;
}

int vlm_proto_error_encode(struct vlm_proto_buf *b, uint32_t msgid, int wire_code, const char *message) {
    struct writer w;
    writer_init(&w, b);
    msgpack_pack_array(&w.pk, 4);
    msgpack_pack_uint32(&w.pk, VLM_PROTO_RESPONSE);
    msgpack_pack_uint32(&w.pk, msgid);
    pack_error_map(&w.pk, wire_code, message);
    msgpack_pack_nil(&w.pk);
    return finish(&w, false, check_error);
}

int vlm_proto_error_encode_diag(struct vlm_proto_buf *b, uint32_t msgid, int vlm_code, const struct vlm_diag *diag) {
    int wire = vlm_proto_err_from_code(vlm_code);
    return vlm_proto_error_encode(b, msgid, wire, diag && diag->code == vlm_code && diag->msg[0] ? diag->msg : NULL);
}

int vlm_proto_error_encode_unknown_method(struct vlm_proto_buf *b, const struct vlm_proto_msg *request) {
    char name[65];
    size_t n = request->method_name.ptr ? request->method_name.len : 0;
    if (n > 64) {
        n = 64;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)request->method_name.ptr[i];
        name[i] = ch >= 0x20 && ch < 0x7f && ch != '\'' ? (char)ch : '?';
    }
    name[n] = 0;
    char text[128];
    snprintf(text, sizeof text, "unknown method '%s'%s", name, request->method_name.len > 64 ? "..." : "");
    return vlm_proto_error_encode(b, request->msgid, VLM_PROTO_EUNKNOWN_METHOD, text);
}

int vlm_proto_error_notify_encode(struct vlm_proto_buf *b, int wire_code, const char *message) {
    struct writer w;
    writer_init(&w, b);
    begin_notify(&w, VLM_RPC_N_ERROR);
    pack_error_map(&w.pk, wire_code, message);
    return finish(&w, false, check_error);
}

// ---- requests ---------------------------------------------------------------------------------------------

static int check_hello(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_hello h;
    return vlm_rpc_hello_decode(msg, &h, diag);
}

int vlm_rpc_hello_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_hello *p) {
    struct writer w;
    writer_init(&w, b);
    begin_request(&w, msgid, VLM_RPC_HELLO, 1);
    msgpack_pack_map(&w.pk, p->client.ptr ? 2 : 1);
    if (p->client.ptr) {
        kv_str(&w.pk, "client", p->client);
    }
    kv_u64(&w.pk, "protocol", p->protocol);
    return finish(&w, true, check_hello);
}

static int check_ask(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_ask a;
    struct vlm_proto_limits lim = vlm_proto_default_limits();
    lim.max_images = VLM_RPC_IMAGES_MAX; // the daemon's image cap is its own; the hard bound is checked here
    return vlm_rpc_ask_decode(msg, &lim, &a, diag);
}

int vlm_rpc_ask_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_ask *p) {
    uint32_t f = p->fields | VLM_RPC_ASK_PROMPT;
    if (!p->chain.ptr) {
        f &= ~(uint32_t)VLM_RPC_ASK_CHAIN;
    }
    if (p->n_images > VLM_RPC_IMAGES_MAX || p->n_stop > VLM_RPC_STOP_MAX || !p->prompt.ptr) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    begin_request(&w, msgid, VLM_RPC_ASK, 1);
    msgpack_pack_map(&w.pk, (size_t)__builtin_popcount(f & ((1u << 13) - 1)));
    msgpack_packer *pk = &w.pk;
    if (f & VLM_RPC_ASK_CHAIN) {
        kv_str(pk, "chain", p->chain);
    }
    kv_str(pk, "prompt", p->prompt);
    if (f & VLM_RPC_ASK_IMAGES) {
        pack_cstr(pk, "images");
        msgpack_pack_array(pk, p->n_images);
        for (uint32_t i = 0; i < p->n_images; i++) {
            msgpack_pack_bin(pk, p->images[i].len);
            msgpack_pack_bin_body(pk, p->images[i].ptr, p->images[i].len);
        }
    }
    if (f & VLM_RPC_ASK_STREAM) {
        kv_bool(pk, "stream", p->stream);
    }
    if (f & VLM_RPC_ASK_MAX_TOKENS) {
        kv_i64(pk, "max_tokens", p->max_tokens);
    }
    if (f & VLM_RPC_ASK_TEMPERATURE) {
        kv_f32(pk, "temperature", p->temperature);
    }
    if (f & VLM_RPC_ASK_TOP_K) {
        kv_i64(pk, "top_k", p->top_k);
    }
    if (f & VLM_RPC_ASK_TOP_P) {
        kv_f32(pk, "top_p", p->top_p);
    }
    if (f & VLM_RPC_ASK_MIN_P) {
        kv_f32(pk, "min_p", p->min_p);
    }
    if (f & VLM_RPC_ASK_REPEAT_PENALTY) {
        kv_f32(pk, "repeat_penalty", p->repeat_penalty);
    }
    if (f & VLM_RPC_ASK_REPEAT_LAST_N) {
        kv_i64(pk, "repeat_last_n", p->repeat_last_n);
    }
    if (f & VLM_RPC_ASK_SEED) {
        kv_u64(pk, "seed", p->seed);
    }
    if (f & VLM_RPC_ASK_STOP) {
        pack_cstr(pk, "stop");
        msgpack_pack_array(pk, p->n_stop);
        for (uint32_t i = 0; i < p->n_stop; i++) {
            pack_str(pk, p->stop[i]);
        }
    }
    return finish(&w, true, check_ask);
}

static int check_cancel(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_cancel c;
    return vlm_rpc_cancel_decode(msg, &c, diag);
}

int vlm_rpc_cancel_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_cancel *p) {
    struct writer w;
    writer_init(&w, b);
    begin_request(&w, msgid, VLM_RPC_CANCEL, 1);
    msgpack_pack_map(&w.pk, 1);
    kv_u64(&w.pk, "id", p->id);
    return finish(&w, true, check_cancel);
}

int vlm_rpc_noparams_encode(struct vlm_proto_buf *b, uint32_t msgid, enum vlm_rpc_method method) {
    if (method != VLM_RPC_STATUS && method != VLM_RPC_CHAINS && method != VLM_RPC_PLUGINS) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    begin_request(&w, msgid, method, 0);
    return finish(&w, true, vlm_rpc_noparams_decode);
}

static const char *const component_names[] = {NULL, "encoder", "projector", "llm"};

static int check_component_req(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_component_req r;
    return vlm_rpc_component_req_decode(msg, &r, diag);
}

int vlm_rpc_component_req_encode(struct vlm_proto_buf *b, uint32_t msgid, enum vlm_rpc_method method,
                                 const struct vlm_rpc_component_req *p) {
    if ((method != VLM_RPC_LOAD && method != VLM_RPC_UNLOAD && method != VLM_RPC_SWAP) ||
        (unsigned)p->component > VLM_RPC_COMPONENT_LLM) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    begin_request(&w, msgid, method, 1);
    uint32_t n = (p->chain.ptr != NULL) + (p->component != VLM_RPC_COMPONENT_ALL) + (p->plugin.ptr != NULL) +
                 (p->model.ptr != NULL);
    msgpack_pack_map(&w.pk, n);
    if (p->chain.ptr) {
        kv_str(&w.pk, "chain", p->chain);
    }
    if (p->component != VLM_RPC_COMPONENT_ALL) {
        kv_cstr(&w.pk, "component", component_names[p->component]);
    }
    if (p->plugin.ptr) {
        kv_str(&w.pk, "plugin", p->plugin);
    }
    if (p->model.ptr) {
        kv_str(&w.pk, "model", p->model);
    }
    return finish(&w, true, check_component_req);
}

// ---- results ----------------------------------------------------------------------------------------------

static int check_hello_result(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_hello_result r;
    return vlm_rpc_hello_result_decode(msg, &r, diag);
}

int vlm_rpc_hello_result_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_hello_result *r) {
    if (r->n_capabilities > VLM_RPC_CAPS_MAX) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    msgpack_packer *pk = &w.pk;
    begin_result(&w, msgid);
    msgpack_pack_map(pk, 5);
    kv_str(pk, "server", r->server);
    kv_str(pk, "version", r->version);
    kv_u64(pk, "protocol", r->protocol);
    pack_cstr(pk, "capabilities");
    msgpack_pack_array(pk, r->n_capabilities);
    for (uint32_t i = 0; i < r->n_capabilities; i++) {
        pack_str(pk, r->capabilities[i]);
    }
    pack_cstr(pk, "limits");
    msgpack_pack_map(pk, 6);
    kv_u64(pk, "max_message", r->limits.max_message);
    kv_u64(pk, "max_string", r->limits.max_str);
    kv_u64(pk, "max_array", r->limits.max_array);
    kv_u64(pk, "max_map", r->limits.max_map);
    kv_u64(pk, "max_depth", r->limits.max_depth);
    kv_u64(pk, "max_images", r->limits.max_images);
    return finish(&w, false, check_hello_result);
}

static const char *const stop_names[] = {NULL, "eos", "stop", "length", "context", "cancelled"};

static int check_ask_result(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_ask_result r;
    return vlm_rpc_ask_result_decode(msg, &r, diag);
}

int vlm_rpc_ask_result_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_ask_result *r) {
    if (r->stop_reason < VLM_RPC_STOP_EOS || r->stop_reason > VLM_RPC_STOP_CANCELLED) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    msgpack_packer *pk = &w.pk;
    begin_result(&w, msgid);
    msgpack_pack_map(pk, 5);
    kv_str(pk, "text", r->text.ptr ? r->text : vlm_proto_str_c(""));
    kv_u64(pk, "tokens_prompt", r->tokens_prompt);
    kv_u64(pk, "tokens_generated", r->tokens_generated);
    kv_cstr(pk, "stop_reason", stop_names[r->stop_reason]);
    pack_cstr(pk, "timings");
    msgpack_pack_map(pk, 6);
    kv_f64(pk, "queued_ms", r->timings.queued_ms);
    kv_f64(pk, "load_ms", r->timings.load_ms);
    kv_f64(pk, "encode_ms", r->timings.encode_ms);
    kv_f64(pk, "prefill_ms", r->timings.prefill_ms);
    kv_f64(pk, "decode_ms", r->timings.decode_ms);
    kv_f64(pk, "total_ms", r->timings.total_ms);
    return finish(&w, false, check_ask_result);
}

int vlm_rpc_cancel_result_encode(struct vlm_proto_buf *b, uint32_t msgid) {
    struct writer w;
    writer_init(&w, b);
    begin_result(&w, msgid);
    msgpack_pack_map(&w.pk, 0);
    return finish(&w, false, NULL);
}

static int check_status(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_status s;
    return vlm_rpc_status_decode(msg, &s, NULL, 0, NULL, diag);
}

int vlm_rpc_status_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_status *r) {
    if (r->n_workers && !r->workers) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    msgpack_packer *pk = &w.pk;
    begin_result(&w, msgid);
    msgpack_pack_map(pk, 7);
    kv_str(pk, "version", r->version.ptr ? r->version : vlm_proto_str_c(""));
    kv_u64(pk, "protocol", r->protocol);
    kv_f64(pk, "uptime", r->uptime_s);
    kv_u64(pk, "clients", r->clients);
    pack_cstr(pk, "queue");
    msgpack_pack_map(pk, 2);
    kv_u64(pk, "length", r->queue_length);
    kv_u64(pk, "capacity", r->queue_capacity);
    kv_u64(pk, "requests_total", r->requests_total);
    pack_cstr(pk, "workers");
    msgpack_pack_array(pk, r->n_workers);
    for (uint32_t i = 0; i < r->n_workers; i++) {
        const struct vlm_rpc_worker *wk = &r->workers[i];
        bool chain = wk->busy && wk->chain.ptr;
        msgpack_pack_map(pk, 2 + (wk->busy ? 1 : 0) + (chain ? 1 : 0));
        kv_str(pk, "device", wk->device.ptr ? wk->device : vlm_proto_str_c(""));
        kv_bool(pk, "busy", wk->busy);
        if (wk->busy) {
            kv_u64(pk, "request", wk->request);
        }
        if (chain) {
            kv_str(pk, "chain", wk->chain);
        }
    }
    return finish(&w, false, check_status);
}

static void pack_component_info(msgpack_packer *pk, const char *key, const struct vlm_rpc_component_info *c) {
    pack_cstr(pk, key);
    msgpack_pack_map(pk, 1 + (c->plugin.ptr != NULL) + (c->model.ptr != NULL));
    if (c->plugin.ptr) {
        kv_str(pk, "plugin", c->plugin);
    }
    if (c->model.ptr) {
        kv_str(pk, "model", c->model);
    }
    kv_bool(pk, "loaded", c->loaded);
}

static bool component_present(const struct vlm_rpc_component_info *c) {
    return c->plugin.ptr || c->model.ptr;
}

static void pack_chain(msgpack_packer *pk, const struct vlm_rpc_chain *c) {
    uint32_t n = 2 + (c->template_name.ptr != NULL) + component_present(&c->encoder) +
                 component_present(&c->projector) + component_present(&c->llm);
    msgpack_pack_map(pk, n);
    kv_str(pk, "name", c->name.ptr ? c->name : vlm_proto_str_c(""));
    if (c->template_name.ptr) {
        kv_str(pk, "template", c->template_name);
    }
    if (component_present(&c->encoder)) {
        pack_component_info(pk, "encoder", &c->encoder);
    }
    if (component_present(&c->projector)) {
        pack_component_info(pk, "projector", &c->projector);
    }
    if (component_present(&c->llm)) {
        pack_component_info(pk, "llm", &c->llm);
    }
    kv_u64(pk, "active", c->active);
}

static int check_chains(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    uint32_t n;
    return vlm_rpc_chains_decode(msg, NULL, 0, &n, diag);
}

int vlm_rpc_chains_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_chain *chains, uint32_t n) {
    struct writer w;
    writer_init(&w, b);
    begin_result(&w, msgid);
    msgpack_pack_map(&w.pk, 1);
    pack_cstr(&w.pk, "chains");
    msgpack_pack_array(&w.pk, n);
    for (uint32_t i = 0; i < n; i++) {
        pack_chain(&w.pk, &chains[i]);
    }
    return finish(&w, false, check_chains);
}

static int check_plugins(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    uint32_t n;
    return vlm_rpc_plugins_decode(msg, NULL, 0, &n, diag);
}

int vlm_rpc_plugins_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_plugin *plugins,
                           uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        if (plugins[i].kind < VLM_RPC_COMPONENT_ENCODER || plugins[i].kind > VLM_RPC_COMPONENT_LLM) {
            return VLM_EINVAL;
        }
    }
    struct writer w;
    writer_init(&w, b);
    msgpack_packer *pk = &w.pk;
    begin_result(&w, msgid);
    msgpack_pack_map(pk, 1);
    pack_cstr(pk, "plugins");
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        const struct vlm_rpc_plugin *p = &plugins[i];
        msgpack_pack_map(pk, 6);
        kv_str(pk, "name", p->name.ptr ? p->name : vlm_proto_str_c(""));
        kv_cstr(pk, "kind", component_names[p->kind]);
        kv_str(pk, "version", p->version.ptr ? p->version : vlm_proto_str_c(""));
        kv_str(pk, "file", p->file.ptr ? p->file : vlm_proto_str_c(""));
        kv_u64(pk, "abi", p->abi);
        kv_u64(pk, "instances", p->instances);
    }
    return finish(&w, false, check_plugins);
}

static int check_chain_result(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_chain c;
    return vlm_rpc_chain_result_decode(msg, &c, diag);
}

int vlm_rpc_chain_result_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_chain *c) {
    struct writer w;
    writer_init(&w, b);
    begin_result(&w, msgid);
    pack_chain(&w.pk, c);
    return finish(&w, false, check_chain_result);
}

// ---- notifications ----------------------------------------------------------------------------------------

static int check_text(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_text t;
    return vlm_rpc_text_decode(msg, &t, diag);
}

int vlm_rpc_text_encode(struct vlm_proto_buf *b, const struct vlm_rpc_text *n) {
    struct writer w;
    writer_init(&w, b);
    begin_notify(&w, VLM_RPC_N_TEXT);
    msgpack_pack_map(&w.pk, 2);
    kv_u64(&w.pk, "id", n->id);
    kv_str(&w.pk, "text", n->text.ptr ? n->text : vlm_proto_str_c(""));
    return finish(&w, false, check_text);
}

static const char *const stage_names[] = {NULL, "queued", "loading", "encoding", "prefill"};

static int check_progress(const struct vlm_proto_msg *msg, struct vlm_diag *diag) {
    struct vlm_rpc_progress p;
    return vlm_rpc_progress_decode(msg, &p, diag);
}

int vlm_rpc_progress_encode(struct vlm_proto_buf *b, const struct vlm_rpc_progress *n) {
    if (n->stage < VLM_RPC_STAGE_QUEUED || n->stage > VLM_RPC_STAGE_PREFILL) {
        return VLM_EINVAL;
    }
    struct writer w;
    writer_init(&w, b);
    begin_notify(&w, VLM_RPC_N_PROGRESS);
    msgpack_pack_map(&w.pk, 4);
    kv_u64(&w.pk, "id", n->id);
    kv_cstr(&w.pk, "stage", stage_names[n->stage]);
    kv_u64(&w.pk, "done", n->done);
    kv_u64(&w.pk, "total", n->total);
    return finish(&w, false, check_progress);
}
