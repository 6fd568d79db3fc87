// The vlmd wire protocol: msgpack-RPC over a Unix stream socket (proto/PROTOCOL.md is the specification).
//
// Three parts, all in libvlm so the daemon and every client share them:
//   1. a bounded reader: bytes from the socket go in, complete and checked messages come out. It scans the
//      msgpack itself (every container count and str/bin/ext length is checked against the limits, the bytes
//      that can still arrive and the nesting depth, without recursion) before anything is decoded, so no
//      allocation is ever proportional to a size a peer declared but did not send;
//   2. typed decoders: one struct per method's params and per result. Decoding never allocates: strings and
//      byte strings are BORROWED pointers into the message bytes (not NUL-terminated), valid as long as those
//      bytes are (for a reader's message: until the next vlm_proto_reader_feed/_next/_close on that reader);
//   3. encoders: each appends one complete message to a growable `struct vlm_proto_buf`.
//
// Error codes on the wire are the VLM_PROTO_E* values below (wire enum, starting at 1), not VLM_E* codes;
// vlm_proto_err_from_code() maps a VLM_E* code to its wire code. Functions of this header return 0 or a
// negative VLM_E* code as everywhere else in libvlm.
//
// Thread-safety: a reader or a buffer belongs to one thread at a time; everything else is reentrant.
#ifndef VLM_PROTO_H
#define VLM_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- versions and limits -----------------------------------------------------------------------------------

// The protocol version this library speaks (an integer; it changes only for incompatible changes).
#define VLM_PROTO_VERSION 1
// The oldest protocol version this library still accepts in `hello`.
#define VLM_PROTO_VERSION_MIN 1

#define VLM_PROTO_DEPTH_MAX 8       // hard upper bound of limits.max_depth (the scanner's stack size)
#define VLM_PROTO_NAME_MAX 255      // bytes in a chain, plugin, model or client name
#define VLM_RPC_IMAGES_MAX 16       // hard upper bound of limits.max_images
#define VLM_RPC_STOP_MAX 16         // stop strings per ask
#define VLM_RPC_STOP_LEN_MAX 256    // bytes per stop string
#define VLM_RPC_CAPS_MAX 32         // capabilities in a hello result
#define VLM_RPC_MAX_TOKENS_MAX (1 << 20)

struct vlm_proto_limits {
    size_t max_message; // bytes of one message, envelope included (default 64 MiB; 16 B .. 1 GiB)
    uint32_t max_str;   // bytes of one str (and ext) value (default 1 MiB); bin is bounded by max_message only
    uint32_t max_array; // elements of one array (default 1024)
    uint32_t max_map;   // pairs of one map (default 256)
    uint32_t max_depth; // containers nested in one another, the envelope array counting as 1 (default 8)
    uint32_t max_images; // images in one ask (default 8, at most VLM_RPC_IMAGES_MAX)
};

// The limits a daemon applies to its clients: 64 MiB, 1 MiB, 1024, 256, 8, 8.
VLM_API struct vlm_proto_limits vlm_proto_default_limits(void);
// The limits a client applies to its daemon: as above, except that one str may fill the whole message (the
// final text of a long answer can exceed 1 MiB).
VLM_API struct vlm_proto_limits vlm_proto_client_limits(void);

// ---- wire error codes (stable: never renumbered; new codes are appended) ------------------------------------

// XX(name, value, fixed text)
#define VLM_PROTO_ERR_MAP(XX)                                                                                  \
    XX(BAD_REQUEST, 1, "bad request")                                                                          \
    XX(UNKNOWN_METHOD, 2, "unknown method")                                                                    \
    XX(UNSUPPORTED_PROTOCOL, 3, "unsupported protocol version")                                                \
    XX(TOO_LARGE, 4, "too large")                                                                              \
    XX(NOT_FOUND, 5, "not found")                                                                              \
    XX(BUSY, 6, "busy")                                                                                        \
    XX(CANCELLED, 7, "cancelled")                                                                              \
    XX(UNSUPPORTED_IMAGE, 8, "unsupported image format")                                                       \
    XX(BAD_IMAGE, 9, "invalid image")                                                                          \
    XX(IMAGE_TOO_LARGE, 10, "image too large")                                                                 \
    XX(MODEL_INVALID, 11, "invalid model")                                                                     \
    XX(PLUGIN_INVALID, 12, "invalid plugin")                                                                   \
    XX(OUT_OF_MEMORY, 13, "out of memory")                                                                     \
    XX(DEVICE_ERROR, 14, "compute device error")                                                               \
    XX(SHUTTING_DOWN, 15, "shutting down")                                                                     \
    XX(MAX_CLIENTS, 16, "too many clients")                                                                    \
    XX(TIMEOUT, 17, "timeout")                                                                                 \
    XX(INTERNAL, 18, "internal error")                                                                         \
    XX(UNSUPPORTED, 19, "unsupported")                                                                         \
    XX(PERMISSION, 20, "permission denied")

enum vlm_proto_err {
#define VLM_PROTO_ERR_ENUM(name, value, text) VLM_PROTO_E##name = (value),
    VLM_PROTO_ERR_MAP(VLM_PROTO_ERR_ENUM)
#undef VLM_PROTO_ERR_ENUM
};

// "BAD_REQUEST" for VLM_PROTO_EBAD_REQUEST; "INTERNAL" for an unknown code (clients treat unknown codes as
// internal errors).
VLM_API const char *vlm_proto_err_name(int wire_code);
// The fixed text of a wire code ("bad request"); "internal error" for an unknown code.
VLM_API const char *vlm_proto_err_text(int wire_code);
// Maps a VLM_E* code (negative) to a wire code: EBADREQUEST/EINVAL/ERANGE -> BAD_REQUEST, ENOTFOUND/ENOENT ->
// NOT_FOUND, EBUSY -> BUSY, ECANCELED -> CANCELLED, ETOOLARGE -> TOO_LARGE, EBADIMAGE -> BAD_IMAGE,
// EBADMODEL -> MODEL_INVALID, EABI -> PLUGIN_INVALID, ENOMEM -> OUT_OF_MEMORY, EDEVICE -> DEVICE_ERROR,
// EUNSUPPORTED -> UNSUPPORTED, anything else -> INTERNAL.
VLM_API int vlm_proto_err_from_code(int vlm_code);

// ---- borrowed views ---------------------------------------------------------------------------------------

// A str from a message: valid UTF-8 without NUL bytes (checked by the decoders), NOT NUL-terminated.
struct vlm_proto_str {
    const char *ptr;
    uint32_t len;
};

// A bin from a message.
struct vlm_proto_bytes {
    const uint8_t *ptr;
    size_t len;
};

// Makes a view of a NUL-terminated C string (for filling structs to encode). NULL gives an absent string.
VLM_API struct vlm_proto_str vlm_proto_str_c(const char *s);
// True when `s` holds exactly the bytes of the C string `c`.
VLM_API bool vlm_proto_str_eq(struct vlm_proto_str s, const char *c);
// Copies `s` into `dst` (capacity `cap` >= 1) with a terminating NUL; returns VLM_ETOOLARGE (and copies
// nothing) when it does not fit.
VLM_API int vlm_proto_str_copy(struct vlm_proto_str s, char *dst, size_t cap);

// ---- messages and the bounded reader -----------------------------------------------------------------------

// msgpack-RPC message types; their values are fixed by msgpack-RPC (the one wire enum that starts at 0).
enum vlm_proto_type {
    VLM_PROTO_REQUEST = 0,  // [0, msgid, method, params]
    VLM_PROTO_RESPONSE = 1, // [1, msgid, error, result]
    VLM_PROTO_NOTIFY = 2,   // [2, method, params]
};

enum vlm_rpc_method {
    VLM_RPC_UNKNOWN = 0, // a method (or notification) this library does not know; see msg.method
    VLM_RPC_HELLO = 1,
    VLM_RPC_ASK = 2,
    VLM_RPC_CANCEL = 3,
    VLM_RPC_STATUS = 4,
    VLM_RPC_CHAINS = 5,
    VLM_RPC_PLUGINS = 6,
    VLM_RPC_LOAD = 7,
    VLM_RPC_UNLOAD = 8,
    VLM_RPC_SWAP = 9,
    // notifications sent by the daemon
    VLM_RPC_N_TEXT = 100,     // "vlm.text"
    VLM_RPC_N_PROGRESS = 101, // "vlm.progress"
    VLM_RPC_N_ERROR = 102,    // "vlm.error": a connection-level error, sent just before the daemon closes
};

// The wire name of a method ("ask", "vlm.text"); NULL for VLM_RPC_UNKNOWN or an unknown value.
VLM_API const char *vlm_rpc_method_name(enum vlm_rpc_method m);

// One complete message. Every pointer is borrowed from the bytes the message was read from.
struct vlm_proto_msg {
    enum vlm_proto_type type;
    uint32_t msgid;      // requests and responses
    bool has_msgid;      // set also on errors, when the envelope's msgid had been read before the error
    enum vlm_rpc_method method; // requests and notifications
    struct vlm_proto_str method_name; // the raw name (bytes as sent; checked to be a str only)
    // The raw msgpack object of each part (always a complete, checked object):
    const uint8_t *params;  // requests and notifications: an array ([] or [map]) or a map
    size_t params_len;
    const uint8_t *error;   // responses: nil or an error map
    size_t error_len;
    const uint8_t *result;  // responses: the result object (nil on error)
    size_t result_len;
    const uint8_t *data;    // the whole message
    size_t len;
};

// Parses exactly one complete message held in `data` (e.g. a copy of a reader's msg.data that must outlive
// the reader's buffer). Same checks and results as vlm_proto_reader_next: 0 on success, VLM_ETOOLARGE or
// VLM_EBADREQUEST (diag names the problem; msg->has_msgid/msgid/type are set when known).
VLM_API int vlm_proto_parse(const void *data, size_t len, const struct vlm_proto_limits *limits,
                            struct vlm_proto_msg *msg, struct vlm_diag *diag);

// Scanner state for the message being assembled (private; here so the reader can live inside the caller's
// connection struct without an allocation).
struct vlm_proto_scan {
    size_t pos;                              // bytes of the current message scanned so far
    uint32_t n_levels;                       // open levels, the root counting as one
    uint64_t left[VLM_PROTO_DEPTH_MAX + 1];  // items still to come in each open level
    uint64_t top_count;                      // elements the envelope array declared (0 until known)
    int32_t type;                            // the envelope's message type (-1 until read)
    bool has_msgid;
    uint32_t msgid;
};

// A bounded, incremental reader (caller-allocated; init/close). Its buffer holds at most limits.max_message
// bytes and grows only as bytes arrive.
struct vlm_proto_reader {
    struct vlm_proto_limits limits;
    uint8_t *buf;
    size_t cap;   // allocated bytes of buf
    size_t start; // offset of the current (unread) message
    size_t len;   // bytes held, from buf
    size_t taken; // bytes of the message handed out by the last _next, released on the next call
    struct vlm_proto_scan scan;
    int broken;   // 0, or the VLM_E* code of the framing error that ended the stream
};

// `limits` may be NULL (vlm_proto_default_limits()). Returns VLM_EINVAL for limits out of their ranges.
// Allocates nothing until bytes arrive.
VLM_API int vlm_proto_reader_init(struct vlm_proto_reader *r, const struct vlm_proto_limits *limits);
// Frees the buffer. The reader may be initialised again afterwards.
VLM_API void vlm_proto_reader_close(struct vlm_proto_reader *r);

// Copies up to `n` bytes into the reader and stores in `*taken` how many it took (fewer than `n` only when
// the buffer would exceed limits.max_message: call _next to drain complete messages, then feed the rest;
// _next then either returns a message or VLM_ETOOLARGE, so the loop always progresses). Invalidates the
// previous message. Returns 0, VLM_ENOMEM, or the stream's error when it is broken.
VLM_API int vlm_proto_reader_feed(struct vlm_proto_reader *r, const void *data, size_t n, size_t *taken);

// Returns 1 and fills `msg` when a complete message is ready (valid until the next call on this reader), 0
// when more bytes are needed, or a negative code:
//  - VLM_ETOOLARGE: a declared str/ext length, array or map count exceeds its cap, or the message cannot fit
//    in max_message (reported as soon as a header says so, without waiting for the bytes);
//  - VLM_EBADREQUEST: malformed msgpack (0xc1), nesting deeper than max_depth, or an envelope that is not a
//    msgpack-RPC message; also (non-fatal) a well-framed request whose method is not a str or whose params
//    are neither an array nor a map.
// After an error, vlm_proto_reader_broken() says whether the stream lost its framing: then every later call
// returns the same code and the connection must be closed (after an error reply: to msg->msgid when
// msg->has_msgid and msg->type is REQUEST, else a "vlm.error" notification). Otherwise the bad message was
// skipped and reading continues. An unknown method is NOT an error here: msg->method is VLM_RPC_UNKNOWN.
VLM_API int vlm_proto_reader_next(struct vlm_proto_reader *r, struct vlm_proto_msg *msg, struct vlm_diag *diag);

// True when the stream had a framing error (see _next).
VLM_API bool vlm_proto_reader_broken(const struct vlm_proto_reader *r);
// Bytes held (complete or partial messages not yet returned): for idle/slow-client policies.
VLM_API size_t vlm_proto_reader_pending(const struct vlm_proto_reader *r);

// ---- output buffer ----------------------------------------------------------------------------------------

// A growable byte buffer; encoders append one complete message each. On failure an encoder leaves `len` as
// it was (no partial message).
struct vlm_proto_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

VLM_API void vlm_proto_buf_init(struct vlm_proto_buf *b);
VLM_API void vlm_proto_buf_free(struct vlm_proto_buf *b);
VLM_API void vlm_proto_buf_reset(struct vlm_proto_buf *b); // len = 0, keeps the memory

// ---- errors -----------------------------------------------------------------------------------------------

struct vlm_rpc_error {
    int32_t code;              // a VLM_PROTO_E* value (or a newer one this library does not know)
    struct vlm_proto_str name; // "BAD_REQUEST"
    struct vlm_proto_str message;
};

// Appends [1, msgid, {code, name, message}, nil]. `message` is the human text (fixed text plus field names;
// NULL: the code's fixed text). It is truncated to 255 bytes and any byte that is not printable ASCII is
// replaced by '?', so a message can never carry binary data or break UTF-8.
VLM_API int vlm_proto_error_encode(struct vlm_proto_buf *b, uint32_t msgid, int wire_code, const char *message);
// Same, for a VLM_E* code and a diag (diag->msg when diag is non-NULL and its code matches, else fixed text).
VLM_API int vlm_proto_error_encode_diag(struct vlm_proto_buf *b, uint32_t msgid, int vlm_code,
                                        const struct vlm_diag *diag);
// Appends [1, msgid, {UNKNOWN_METHOD, ..., "unknown method 'NAME'"}, nil] with the (sanitised, shortened)
// name from the request.
VLM_API int vlm_proto_error_encode_unknown_method(struct vlm_proto_buf *b, const struct vlm_proto_msg *request);
// Appends [2, "vlm.error", [{code, name, message}]]: for errors that are not the answer to a request (a
// broken stream, too many clients, shutdown); the daemon closes the connection after sending it.
VLM_API int vlm_proto_error_notify_encode(struct vlm_proto_buf *b, int wire_code, const char *message);

// Decodes the error of a response (returns 1 and fills `out`), or returns 0 when the response succeeded
// (error is nil). A "vlm.error" notification is decoded too (returns 1). VLM_EBADREQUEST when malformed.
VLM_API int vlm_proto_error_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_error *out,
                                   struct vlm_diag *diag);

// ---- hello ------------------------------------------------------------------------------------------------

struct vlm_rpc_hello {
    struct vlm_proto_str client; // free text naming the client, e.g. "vlmctl 0.1.0" (optional)
    uint32_t protocol;           // the protocol version the client speaks (required, >= 1)
};

struct vlm_rpc_hello_result {
    struct vlm_proto_str server;  // "vlmd"
    struct vlm_proto_str version; // "0.1.0"
    uint32_t protocol;            // the version both sides now speak
    uint32_t n_capabilities;
    struct vlm_proto_str capabilities[VLM_RPC_CAPS_MAX]; // "stream", "images", "cancel", "swap", ...
    struct vlm_proto_limits limits; // what the daemon accepts
};

// Server side: what protocol to answer a hello with. Returns 0 and sets *agreed, or VLM_EUNSUPPORTED (wire
// UNSUPPORTED_PROTOCOL) with diag "protocol N is not supported: this server speaks 1..1".
VLM_API int vlm_rpc_hello_negotiate(const struct vlm_rpc_hello *p, uint32_t *agreed, struct vlm_diag *diag);

// ---- ask --------------------------------------------------------------------------------------------------

// Which optional ask fields the request set (others hold the defaults written by the decoder).
enum vlm_rpc_ask_field {
    VLM_RPC_ASK_CHAIN = 1u << 0,
    VLM_RPC_ASK_STREAM = 1u << 1,
    VLM_RPC_ASK_MAX_TOKENS = 1u << 2,
    VLM_RPC_ASK_TEMPERATURE = 1u << 3,
    VLM_RPC_ASK_TOP_K = 1u << 4,
    VLM_RPC_ASK_TOP_P = 1u << 5,
    VLM_RPC_ASK_MIN_P = 1u << 6,
    VLM_RPC_ASK_REPEAT_PENALTY = 1u << 7,
    VLM_RPC_ASK_REPEAT_LAST_N = 1u << 8,
    VLM_RPC_ASK_SEED = 1u << 9,
    VLM_RPC_ASK_STOP = 1u << 10,
    VLM_RPC_ASK_IMAGES = 1u << 11,
    VLM_RPC_ASK_PROMPT = 1u << 12,
};

struct vlm_rpc_ask {
    uint32_t fields;             // VLM_RPC_ASK_* bits of the fields present (decode); of those to send (encode)
    struct vlm_proto_str chain;  // default: absent (ptr NULL): the daemon's default chain
    struct vlm_proto_str prompt; // required; UTF-8, at most limits.max_str bytes
    uint32_t n_images;
    struct vlm_proto_bytes images[VLM_RPC_IMAGES_MAX]; // encoded image files (JPEG, PNG, ...), 1 byte or more
    bool stream;                 // default false: no vlm.text notifications
    int32_t max_tokens;          // [-1, 2^20]; -1 (default): until EOS or the context is full
    float temperature;           // [0, 100]; 0: greedy. Default 0.8
    int32_t top_k;               // [0, 2^31-1]; 0: off. Default 40
    float top_p;                 // [0, 1]; 1: off. Default 0.95
    float min_p;                 // [0, 1]; 0: off. Default 0.05
    float repeat_penalty;        // (0, 100]; 1: off. Default 1
    int32_t repeat_last_n;       // [-1, 2^20]; default 64
    uint64_t seed;               // any uint64; default 42
    uint32_t n_stop;
    struct vlm_proto_str stop[VLM_RPC_STOP_MAX]; // 1..256 bytes each
};

// Wire enum of stop reasons; the values equal enum vlm_stop_reason of vlm/generate.h.
enum vlm_rpc_stop {
    VLM_RPC_STOP_EOS = 1,       // "eos"
    VLM_RPC_STOP_STRING = 2,    // "stop"
    VLM_RPC_STOP_LENGTH = 3,    // "length"
    VLM_RPC_STOP_CONTEXT = 4,   // "context"
    VLM_RPC_STOP_CANCELLED = 5, // "cancelled" (a cancelled ask is answered with the CANCELLED error instead)
};

struct vlm_rpc_timings {
    double queued_ms, load_ms, encode_ms, prefill_ms, decode_ms, total_ms;
};

struct vlm_rpc_ask_result {
    struct vlm_proto_str text;    // the whole answer (also when it was streamed)
    uint32_t tokens_prompt;
    uint32_t tokens_generated;
    enum vlm_rpc_stop stop_reason;
    struct vlm_rpc_timings timings;
};

// Fills `a` with the defaults listed above and fields = 0.
VLM_API void vlm_rpc_ask_init(struct vlm_rpc_ask *a);

// ---- cancel -----------------------------------------------------------------------------------------------

struct vlm_rpc_cancel {
    uint32_t id; // msgid of an ask (or load/swap) sent earlier on the same connection
};

// ---- status, chains, plugins ------------------------------------------------------------------------------

struct vlm_rpc_worker {
    struct vlm_proto_str device; // "cpu", "cuda:0"
    bool busy;
    uint32_t request;            // msgid it runs when busy (0 otherwise)
    struct vlm_proto_str chain;  // chain it runs when busy (absent otherwise)
};

struct vlm_rpc_status {
    struct vlm_proto_str version;
    uint32_t protocol;
    double uptime_s;
    uint32_t clients;
    uint32_t queue_length;
    uint32_t queue_capacity;
    uint64_t requests_total;
    uint32_t n_workers;
    const struct vlm_rpc_worker *workers; // encode: n_workers entries. Decode: see vlm_rpc_status_decode
};

enum vlm_rpc_component {
    VLM_RPC_COMPONENT_ALL = 0,       // load/unload without a component: all three
    VLM_RPC_COMPONENT_ENCODER = 1,   // "encoder" (values equal enum vlm_plugin_kind)
    VLM_RPC_COMPONENT_PROJECTOR = 2, // "projector"
    VLM_RPC_COMPONENT_LLM = 3,       // "llm"
};

struct vlm_rpc_component_info {
    struct vlm_proto_str plugin; // plugin name (absent: chain has no such component, e.g. text-only)
    struct vlm_proto_str model;  // model name
    bool loaded;
};

struct vlm_rpc_chain {
    struct vlm_proto_str name;
    struct vlm_proto_str template_name; // prompt format ("llava-1.5", "chatml", ...); wire key "template"
    struct vlm_rpc_component_info encoder, projector, llm;
    uint32_t active;                // requests running on it now
};

struct vlm_rpc_plugin {
    struct vlm_proto_str name;
    enum vlm_rpc_component kind;
    struct vlm_proto_str version;
    struct vlm_proto_str file;  // file name in the plugin directory (a base name, never a path)
    uint32_t abi;
    uint32_t instances;         // models loaded with it now
};

// ---- load / unload / swap ---------------------------------------------------------------------------------

struct vlm_rpc_component_req {
    struct vlm_proto_str chain;          // required
    enum vlm_rpc_component component;    // required for swap; ALL when absent (load/unload)
    struct vlm_proto_str plugin;         // optional (load/swap): plugin name; absent: the daemon picks by arch
    struct vlm_proto_str model;          // required for swap, optional for load, refused for unload
};

// ---- notifications ----------------------------------------------------------------------------------------

struct vlm_rpc_text {
    uint32_t id; // msgid of the ask
    struct vlm_proto_str text;
};

enum vlm_rpc_stage {
    VLM_RPC_STAGE_QUEUED = 1,   // "queued": done = position in the queue (0: next), total = queue length
    VLM_RPC_STAGE_LOADING = 2,  // "loading": done/total bytes of model data
    VLM_RPC_STAGE_ENCODING = 3, // "encoding": done/total images
    VLM_RPC_STAGE_PREFILL = 4,  // "prefill": done/total prompt positions
};

struct vlm_rpc_progress {
    uint32_t id;
    enum vlm_rpc_stage stage;
    uint64_t done;
    uint64_t total; // 0: unknown
};

// ---- decoders (server side: requests) ---------------------------------------------------------------------
//
// Each checks msg->method, decodes msg->params (an array with one map, an empty array, or a map), and returns
// 0 or VLM_EBADREQUEST / VLM_ETOOLARGE with diag "field 'NAME': expected ...". Unknown keys are ignored; a
// known key given twice, a non-str key, a wrong type or an out-of-range value are refused. `out` is written
// only on success; its strings and bytes borrow from the message.

VLM_API int vlm_rpc_hello_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_hello *out, struct vlm_diag *diag);
// `limits` bounds the image count (NULL: defaults).
VLM_API int vlm_rpc_ask_decode(const struct vlm_proto_msg *msg, const struct vlm_proto_limits *limits,
                               struct vlm_rpc_ask *out, struct vlm_diag *diag);
VLM_API int vlm_rpc_cancel_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_cancel *out, struct vlm_diag *diag);
// For status, chains and plugins: checks that params are empty or a map (whose keys are ignored).
VLM_API int vlm_rpc_noparams_decode(const struct vlm_proto_msg *msg, struct vlm_diag *diag);
// For load, unload and swap (msg->method says which; the required fields differ).
VLM_API int vlm_rpc_component_req_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_component_req *out,
                                         struct vlm_diag *diag);

// ---- decoders (client side: results and notifications) ---------------------------------------------------
//
// Each takes a successful response (vlm_proto_error_decode returned 0) or the matching notification.
// Unknown keys are ignored, missing optional fields are zero/absent.

VLM_API int vlm_rpc_hello_result_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_hello_result *out,
                                        struct vlm_diag *diag);
VLM_API int vlm_rpc_ask_result_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_ask_result *out,
                                      struct vlm_diag *diag);
// cancel's result: {} (nothing to decode beyond the error).
// Fills up to `cap` workers into `workers` (out->workers points there) and sets out->n_workers to the number
// filled; *total (may be NULL) receives the number the daemon sent.
VLM_API int vlm_rpc_status_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_status *out,
                                  struct vlm_rpc_worker *workers, uint32_t cap, uint32_t *total,
                                  struct vlm_diag *diag);
// Fills up to `cap` chains; *n receives the number the daemon sent (may exceed cap).
VLM_API int vlm_rpc_chains_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_chain *out, uint32_t cap,
                                  uint32_t *n, struct vlm_diag *diag);
VLM_API int vlm_rpc_plugins_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_plugin *out, uint32_t cap,
                                   uint32_t *n, struct vlm_diag *diag);
// load, unload and swap answer with the chain as it is afterwards.
VLM_API int vlm_rpc_chain_result_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_chain *out,
                                        struct vlm_diag *diag);
VLM_API int vlm_rpc_text_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_text *out, struct vlm_diag *diag);
VLM_API int vlm_rpc_progress_decode(const struct vlm_proto_msg *msg, struct vlm_rpc_progress *out,
                                    struct vlm_diag *diag);

// ---- encoders ---------------------------------------------------------------------------------------------
//
// Each appends one message to `b` and returns 0, VLM_ENOMEM, or VLM_EINVAL when a value is outside what its
// decoder accepts (so a peer never receives what it would refuse). Absent strings (ptr NULL) are left out.

// Requests (client side).
VLM_API int vlm_rpc_hello_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_hello *p);
// Sends the fields whose bit is set in p->fields (prompt is always sent).
VLM_API int vlm_rpc_ask_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_ask *p);
VLM_API int vlm_rpc_cancel_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_cancel *p);
// status, chains, plugins: [0, msgid, "name", []].
VLM_API int vlm_rpc_noparams_encode(struct vlm_proto_buf *b, uint32_t msgid, enum vlm_rpc_method method);
// load, unload, swap.
VLM_API int vlm_rpc_component_req_encode(struct vlm_proto_buf *b, uint32_t msgid, enum vlm_rpc_method method,
                                         const struct vlm_rpc_component_req *p);

// Results (server side): [1, msgid, nil, result].
VLM_API int vlm_rpc_hello_result_encode(struct vlm_proto_buf *b, uint32_t msgid,
                                        const struct vlm_rpc_hello_result *r);
VLM_API int vlm_rpc_ask_result_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_ask_result *r);
VLM_API int vlm_rpc_cancel_result_encode(struct vlm_proto_buf *b, uint32_t msgid);
VLM_API int vlm_rpc_status_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_status *r);
VLM_API int vlm_rpc_chains_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_chain *chains,
                                  uint32_t n);
VLM_API int vlm_rpc_plugins_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_plugin *plugins,
                                   uint32_t n);
VLM_API int vlm_rpc_chain_result_encode(struct vlm_proto_buf *b, uint32_t msgid, const struct vlm_rpc_chain *c);

// Notifications (server side).
VLM_API int vlm_rpc_text_encode(struct vlm_proto_buf *b, const struct vlm_rpc_text *n);
VLM_API int vlm_rpc_progress_encode(struct vlm_proto_buf *b, const struct vlm_rpc_progress *n);

// ---- helpers ----------------------------------------------------------------------------------------------

// True when `p[0..len)` is valid UTF-8 (no overlong forms, surrogates or code points above U+10FFFF) and holds
// no NUL byte: what every str of the protocol must be.
VLM_API bool vlm_proto_utf8_valid(const void *p, size_t len);

#ifdef __cplusplus
}
#endif

#endif // VLM_PROTO_H
