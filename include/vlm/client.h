// libvlmclient: a blocking C client for the vlmd daemon (msgpack-RPC over a Unix socket, proto/PROTOCOL.md).
//
//     struct vlm_client *c;
//     struct vlm_diag diag;
//     if (vlm_client_connect(NULL, &c, &diag) != 0) { fprintf(stderr, "%s\n", diag.msg); ... }
//     struct vlm_client_ask_params p;
//     vlm_client_ask_params_init(&p);
//     p.prompt = "Describe the picture.";
//     struct vlm_client_ask_result r;
//     int rc = vlm_client_ask(c, &p, print_piece, NULL, &r, &diag); // print_piece runs for each streamed piece
//     ...
//     vlm_client_ask_result_free(&r);
//     vlm_client_close(c);
//
// Link with `pkg-config --cflags --libs vlmclient`. The library uses libvlm's protocol code (vlm/proto.h) for
// every byte it sends and reads, with the client limits of vlm_proto_client_limits().
//
// Errors: every function that can fail returns 0 or a negative code and fills the optional `diag`:
//   - VLM_E* codes of vlm/error.h. A server error reply is mapped to the nearest code (BUSY -> VLM_EBUSY,
//     NOT_FOUND -> VLM_ENOTFOUND, CANCELLED -> VLM_ECANCELED, ...) and diag->msg holds "NAME: server message"
//     (e.g. "BUSY: the request queue is full (8)"); vlm_client_last_error() gives the exact wire code.
//   - three codes that vlm/error.h does not list: VLM_CLIENT_ECONNREFUSED (a socket file with nobody listening:
//     the daemon is not running), VLM_CLIENT_ETIMEDOUT (a connect or call timeout) and VLM_CLIENT_ECONNRESET
//     (the daemon closed the connection). vlm_client_strerror() knows them all.
//   A missing socket file is VLM_ENOENT. After VLM_CLIENT_ECONNRESET or a framing error the connection is dead:
//   every later call returns VLM_CLIENT_ECONNRESET; close it and connect again.
//
// Thread-safety: a connection belongs to one thread at a time (use one connection per thread; connections are
// independent of one another). The one exception is vlm_client_cancel(), which any thread or a signal handler
// may call while another thread is inside a call on that connection.
#ifndef VLM_CLIENT_H
#define VLM_CLIENT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VLM_CLIENT_VERSION "0.1.0"
// Where the daemon listens when neither the caller nor $VLMD_SOCKET says otherwise (vlmd.socket's path).
#define VLM_CLIENT_DEFAULT_SOCKET "/run/vlmd/vlmd.sock"
#define VLM_CLIENT_CONNECT_TIMEOUT_MS 5000

// Codes beyond vlm/error.h (negated errno values, like the VLM_E* OS codes).
#define VLM_CLIENT_ECONNREFUSED (-ECONNREFUSED)
#define VLM_CLIENT_ETIMEDOUT (-ETIMEDOUT)
#define VLM_CLIENT_ECONNRESET (-ECONNRESET)

struct vlm_client; // opaque

// vlm_strerror() plus the three VLM_CLIENT_E* codes. Never NULL.
VLM_API const char *vlm_client_strerror(int code);

// The socket path a NULL path means: $VLMD_SOCKET when set and non-empty, else VLM_CLIENT_DEFAULT_SOCKET.
// The pointer is valid until the environment changes.
VLM_API const char *vlm_client_default_socket(void);

// ---- connecting ---------------------------------------------------------------------------------------------

struct vlm_client_options {
    const char *socket_path; // NULL: vlm_client_default_socket()
    const char *client_name; // sent in hello (NULL: "libvlmclient 0.1.0")
    int connect_timeout_ms;  // connect + hello; <= 0: VLM_CLIENT_CONNECT_TIMEOUT_MS
    int call_timeout_ms;     // default deadline of every later call (see vlm_client_set_timeout); 0: none
};

// Connects, sends `hello` and checks that the daemon speaks a protocol version this library knows
// (VLM_EUNSUPPORTED otherwise, with both versions in diag). On success *out is a new connection (free it with
// vlm_client_close). Errors: VLM_ENOENT (no socket file), VLM_CLIENT_ECONNREFUSED (nobody listening),
// VLM_EACCES, VLM_CLIENT_ETIMEDOUT, VLM_ETOOLARGE (path longer than a socket address holds), server errors.
VLM_API int vlm_client_connect_ex(const struct vlm_client_options *opts, struct vlm_client **out,
                                  struct vlm_diag *diag);
// Same with default options and `path` (NULL: vlm_client_default_socket()).
VLM_API int vlm_client_connect(const char *path, struct vlm_client **out, struct vlm_diag *diag);

// Closes the connection (a call still running on the daemon's side is cancelled by the disconnect). NULL is
// allowed.
VLM_API void vlm_client_close(struct vlm_client *c);

// Sets the deadline of each later call, in milliseconds from its start (0: none). When it passes, an ask or a
// load/swap is cancelled on the daemon and the call returns VLM_CLIENT_ETIMEDOUT; the connection stays usable.
VLM_API void vlm_client_set_timeout(struct vlm_client *c, int timeout_ms);

// What the daemon said in hello. Pointers are valid until vlm_client_close.
struct vlm_client_server_info {
    const char *server;  // "vlmd"
    const char *version; // "0.1.0"
    uint32_t protocol;   // the agreed protocol version
    uint32_t n_capabilities;
    const char *const *capabilities; // "stream", "images", "cancel", "swap", ...
    struct vlm_proto_limits limits;  // what the daemon accepts (ask checks its request against it)
};
VLM_API const struct vlm_client_server_info *vlm_client_server(const struct vlm_client *c);

// The wire code (VLM_PROTO_E*) of the last server error reply on this connection, 0 after a call that got no
// error reply.
VLM_API int vlm_client_last_error(const struct vlm_client *c);

// ---- cancel -------------------------------------------------------------------------------------------------

// Asks the call running on `c` (an ask, load, unload or swap) to stop: the calling thread sends `cancel` for it
// and keeps reading until the daemon answers it, and the call returns VLM_ECANCELED (or its result, when the
// answer was already on its way). When no call is running, the next call is cancelled as soon as it has been
// sent. Safe from any thread and from a signal handler (it sets a flag and writes one byte to a pipe).
VLM_API void vlm_client_cancel(struct vlm_client *c);

// ---- ask ----------------------------------------------------------------------------------------------------

struct vlm_client_image {
    const void *data; // an encoded image file (JPEG, PNG, WebP), borrowed for the call
    size_t len;
};

// Receives each streamed piece of text (UTF-8, not NUL-terminated, `len` >= 0) as its notification arrives.
// Return 0 to go on, non-zero to cancel the ask (as vlm_client_cancel does).
typedef int (*vlm_client_text_cb)(const char *text, size_t len, void *user);
// Receives progress notifications (queued, loading, encoding, prefill) of the running call.
typedef void (*vlm_client_progress_cb)(const struct vlm_rpc_progress *p, void *user);

struct vlm_client_ask_params {
    const char *chain;  // NULL: the daemon's default chain
    const char *prompt; // required, UTF-8
    const struct vlm_client_image *images;
    uint32_t n_images;  // at most the daemon's limits.max_images
    // Sampling: only the fields whose VLM_RPC_ASK_* bit (vlm/proto.h) is set in `fields` are sent; the others
    // take the daemon's defaults. vlm_client_ask_params_init writes the protocol defaults and fields = 0.
    uint32_t fields;
    int32_t max_tokens; // VLM_RPC_ASK_MAX_TOKENS; -1: until the end of text
    float temperature;  // VLM_RPC_ASK_TEMPERATURE; 0: greedy
    int32_t top_k;      // VLM_RPC_ASK_TOP_K
    float top_p;        // VLM_RPC_ASK_TOP_P
    float min_p;        // VLM_RPC_ASK_MIN_P
    float repeat_penalty; // VLM_RPC_ASK_REPEAT_PENALTY
    int32_t repeat_last_n; // VLM_RPC_ASK_REPEAT_LAST_N
    uint64_t seed;      // VLM_RPC_ASK_SEED
    const char *const *stop; // VLM_RPC_ASK_STOP: n_stop strings
    uint32_t n_stop;
    vlm_client_progress_cb progress; // optional
    void *progress_user;
    int timeout_ms;     // > 0: deadline of this call instead of the connection's
};

// Fills `p` with the protocol defaults (vlm_rpc_ask_init) and NULL/0 elsewhere.
VLM_API void vlm_client_ask_params_init(struct vlm_client_ask_params *p);

struct vlm_client_ask_result {
    char *text;         // the whole answer, NUL-terminated (malloc'd; vlm_client_ask_result_free)
    size_t text_len;
    uint32_t tokens_prompt;
    uint32_t tokens_generated;
    enum vlm_rpc_stop stop_reason;
    const char *stop_reason_name; // "eos", "stop", "length", "context" (static)
    struct vlm_rpc_timings timings;
    uint32_t n_pieces;  // text notifications received
    char *json;         // the result object as one JSON object (malloc'd), for printing
};

// Sends `ask` and blocks until its result. With `cb` non-NULL the ask is streamed: `cb` runs on the calling
// thread for each piece, in order, before the call returns (pieces concatenated equal out->text). On success
// *out is filled (free it with vlm_client_ask_result_free); on failure *out is zeroed. Errors: server errors
// (VLM_EBUSY when the queue is full, VLM_ENOTFOUND for an unknown chain, VLM_EBADIMAGE, ...), VLM_ECANCELED,
// VLM_CLIENT_ETIMEDOUT, VLM_CLIENT_ECONNRESET, VLM_ETOOLARGE (the request exceeds the daemon's message limit or
// more images than it takes; nothing is sent), VLM_EINVAL (a parameter outside the protocol's ranges).
VLM_API int vlm_client_ask(struct vlm_client *c, const struct vlm_client_ask_params *p, vlm_client_text_cb cb,
                           void *user, struct vlm_client_ask_result *out, struct vlm_diag *diag);
VLM_API void vlm_client_ask_result_free(struct vlm_client_ask_result *r);

// ---- status, chains, plugins, load, unload, swap ------------------------------------------------------------
//
// Their results have open shapes, so they come back twice: as JSON text to print, and as the complete msgpack
// response for typed access with vlm/proto.h:
//     struct vlm_proto_msg m; vlm_proto_parse(reply.msg, reply.msg_len, NULL, &m, diag);
//     vlm_rpc_status_decode(&m, &status, workers, cap, &n, diag);   // or _chains_, _plugins_, _chain_result_
// (the decoded views borrow from reply.msg).

struct vlm_client_reply {
    uint8_t *msg;   // the whole response message [1, msgid, nil, result] (malloc'd)
    size_t msg_len;
    char *json;     // the result object as JSON (malloc'd, NUL-terminated)
};
VLM_API void vlm_client_reply_free(struct vlm_client_reply *r);

VLM_API int vlm_client_status(struct vlm_client *c, struct vlm_client_reply *out, struct vlm_diag *diag);
VLM_API int vlm_client_chains(struct vlm_client *c, struct vlm_client_reply *out, struct vlm_diag *diag);
VLM_API int vlm_client_plugins(struct vlm_client *c, struct vlm_client_reply *out, struct vlm_diag *diag);

struct vlm_client_component_params {
    const char *chain;                 // required
    enum vlm_rpc_component component;  // ALL (load/unload: all three); required for swap
    const char *plugin;                // optional (load/swap): NULL lets the daemon pick by architecture
    const char *model;                 // required for swap, optional for load, NULL for unload
    vlm_client_progress_cb progress;   // optional: loading progress
    void *progress_user;
};

// Each answers with the chain as it is afterwards (decode with vlm_rpc_chain_result_decode).
VLM_API int vlm_client_load(struct vlm_client *c, const struct vlm_client_component_params *p,
                            struct vlm_client_reply *out, struct vlm_diag *diag);
VLM_API int vlm_client_unload(struct vlm_client *c, const struct vlm_client_component_params *p,
                              struct vlm_client_reply *out, struct vlm_diag *diag);
VLM_API int vlm_client_swap(struct vlm_client *c, const struct vlm_client_component_params *p,
                            struct vlm_client_reply *out, struct vlm_diag *diag);

// ---- helpers ------------------------------------------------------------------------------------------------

// Converts one msgpack object (e.g. vlm_proto_msg.result) to JSON text: maps become objects (non-str keys are
// written as strings), bin becomes a base64 string, NaN/Inf become null. Returns a malloc'd NUL-terminated
// string in *out, or VLM_EBADREQUEST (malformed or nested deeper than VLM_PROTO_DEPTH_MAX) / VLM_ENOMEM.
VLM_API int vlm_client_msgpack_to_json(const void *data, size_t len, char **out, struct vlm_diag *diag);

// Maps a wire error code (VLM_PROTO_E*) to the VLM_E* code the client functions return.
VLM_API int vlm_client_code_from_wire(int wire_code);

#ifdef __cplusplus
}
#endif

#endif // VLM_CLIENT_H
