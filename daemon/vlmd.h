// vlmd internals shared by the daemon's modules. One header: the modules are small and see each other's
// structs; nothing here is installed.
//
// Threads and ownership (the rule every module follows):
//   - the loop thread (libuv) owns connections, chains, components' reference counts and states, the registry's
//     instance counts, and every socket write;
//   - a worker thread owns the models of its device: it alone loads, runs and unloads them (component `model`,
//     `plugin`, `info` fields are written by the worker only, and read by the loop only after the completion of
//     the job that wrote them);
//   - the two meet in a worker's queue (worker->mu) and in the daemon's completion list (d->out_mu), which the
//     worker fills and wakes the loop for with uv_async_send.
#ifndef VLMD_H
#define VLMD_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "vlm/backend.h"
#include "vlm/error.h"
#include "vlm/generate.h"
#include "vlm/log.h"
#include "vlm/plugin.h"
#include "vlm/proto.h"

#ifndef VLMD_VERSION
#define VLMD_VERSION "0.0.0"
#endif

#define VLMD_SLOTS 4        // indexed by enum vlm_plugin_kind (1..3); slot 0 unused
#define VLMD_TEMPLATE_MAX 32
#define VLMD_MODEL_MAX 1024 // bytes of a model name or path
#define VLMD_PLUGIN_ARCHS_MAX 8

struct vlmd;
struct vlm__conn;
struct vlm__worker;

// ---- config (config.c) -------------------------------------------------------------------------------------

struct vlm__slot_spec {
    char plugin[VLM_PROTO_NAME_MAX + 1]; // plugin name; "" = pick by the model's architecture
    char model[VLMD_MODEL_MAX];          // "" = the chain has no such component
    bool paths;                          // from the command line: a path as given, not a name in model_dir
};

struct vlm__chain_spec {
    char name[VLM_PROTO_NAME_MAX + 1];
    char template_name[VLMD_TEMPLATE_MAX]; // auto, none, vicuna, mistral
    struct vlm__slot_spec slot[VLMD_SLOTS];
};

// allow_users / allow_groups (access.c): who may use the socket besides root and the daemon's own user.
#define VLMD_ACCESS_MAX 64
struct vlm__access {
    bool users_set, groups_set; // given in the config (else: no extra users; the socket file's group)
    bool any_user;              // allow_users = *
    uint32_t n_uids, n_gids;
    uint32_t uids[VLMD_ACCESS_MAX];
    uint32_t gids[VLMD_ACCESS_MAX];
};

struct vlm__config {
    char file[PATH_MAX];        // the config file ("" = none)
    char socket_path[108];      // sun_path limit
    char plugin_dir[PATH_MAX];
    char model_dir[PATH_MAX];
    char default_chain[VLM_PROTO_NAME_MAX + 1];
    int threads;                // compute threads (0 = all CPUs)
    int32_t ctx_size;           // KV positions per request (0 = the model's default)
    bool kv_f16;
    enum vlm_precision vision_precision; // encoder and projector matrices (vlm_tensor_set_precision)
    uint32_t queue_depth;       // asks waiting (not running) before `busy`
    uint32_t max_clients;
    size_t max_message;
    size_t max_output;          // bytes queued to one client before it is dropped (hard limit)
    size_t output_pause;        // bytes queued to one client before its streams are paused (< max_output)
    double send_timeout_s;      // a paused client that reads nothing for this long is dropped (0: never)
    double shutdown_timeout_s;  // SIGTERM: time given to running requests before they are cancelled
    double frame_timeout_s;     // a message must arrive whole within this after its first byte (0: no limit)
    double idle_timeout_s;      // a client with nothing in flight is closed after this long silent (0: never)
    enum vlm_log_level log_level;
    uint32_t n_chains;
    struct vlm__chain_spec *chains; // malloc'd
    struct vlm__access access;
};

// A command-line setting, applied over the file's (every flag is a [daemon] key, or a chain).
struct vlm__override {
    const char *key;   // "socket", "threads", ... or "chain" (value NAME=llm.gguf[,mmproj.gguf])
    const char *value;
};

// Loads defaults, then `cfg->file` (if set), then the overrides. Returns 0 or VLM_EINVAL with diag
// "FILE:LINE: reason" (or "--flag: reason"). `*cfg` is written only on success; free with vlm__config_free.
int vlm__config_load(const char *file, const struct vlm__override *ov, int n_ov, struct vlm__config *cfg,
                     struct vlm_diag *diag);
void vlm__config_free(struct vlm__config *cfg);
const struct vlm__chain_spec *vlm__config_chain(const struct vlm__config *cfg, const char *name);
// True when `name` is a valid chain name (1..255 of [A-Za-z0-9._-]).
bool vlm__name_valid(const char *name, size_t len);

// ---- plugin registry (registry.c) --------------------------------------------------------------------------

struct vlm__plugin_entry {
    char file[256];  // base name in the directory
    char path[PATH_MAX];
    char name[VLM_PROTO_NAME_MAX + 1];
    char version[64];
    enum vlm_plugin_kind kind;
    uint32_t abi;
    int n_archs;
    char archs[VLMD_PLUGIN_ARCHS_MAX][32];
    uint32_t instances; // components loaded with it now (loop thread)
};

// Immutable after the scan except `instances`; workers read it to pick plugins.
struct vlm__registry {
    struct vlm__plugin_entry *entries;
    uint32_t n;
    uint32_t n_refused; // files that looked like plugins and were refused
};

// Opens every *.so of `dir` in name order, keeps what each descriptor says and closes it again. A bad plugin
// is logged (naming the file) and skipped. Fails only when `dir` cannot be read.
int vlm__registry_scan(struct vlm__registry *reg, const char *dir, struct vlm_diag *diag);
void vlm__registry_free(struct vlm__registry *reg);
struct vlm__plugin_entry *vlm__registry_find(struct vlm__registry *reg, const char *name);
// The first plugin (in name order) of `kind` that lists `arch`.
struct vlm__plugin_entry *vlm__registry_for_arch(struct vlm__registry *reg, enum vlm_plugin_kind kind,
                                                 const char *arch);

// ---- components and chains (chain.c) -----------------------------------------------------------------------

enum vlm__comp_state {
    VLM__COMP_LOADING = 1,
    VLM__COMP_READY = 2,
    VLM__COMP_FAILED = 3,
};

struct vlm__op; // an RPC (load, swap) or a reload waiting for components to load

struct vlm__component {
    struct vlm__component *next; // in d->components (loop)
    enum vlm_plugin_kind kind;
    char plugin_req[VLM_PROTO_NAME_MAX + 1]; // as asked ("" = by architecture)
    char name[VLMD_MODEL_MAX];               // the model's name as given (what clients see)
    char path[PATH_MAX];                     // resolved file
    int fd;                                  // O_PATH descriptor of it until loaded (-1: a config path); worker
    uint32_t refs;                           // chains' slots + running jobs (loop)
    enum vlm__comp_state state;              // loop
    struct vlm__plugin_entry *entry;         // plugin used, once loaded (loop)
    struct vlm__worker *worker;              // owner
    uint64_t bytes;                          // model file size (progress)
    int n_waiters;
    struct vlm__op **waiters;                // ops to tell when the load finishes (loop)
    // Written by the worker (load/unload jobs); read by the loop after the job's completion:
    struct vlm_plugin *plugin;
    struct vlm__plugin_entry *loaded_entry;
    void *model;
    struct vlm_llm_info llm_info;
    struct vlm_encoder_info enc_info;
    struct vlm_projector_info proj_info;
    int load_rc;
    struct vlm_diag load_diag;                // for the log (may hold paths)
    const char *load_why;                     // fixed text for clients (see vlm__why)
    double load_ms;
};

struct vlm__chain {
    struct vlm__chain *next; // in d->chains (loop)
    uint32_t refs;           // the table's + running jobs'
    bool removed;            // no longer in the table (reload, unload of a run-time chain)
    struct vlm__chain_spec spec;
    struct vlm__component *slot[VLMD_SLOTS]; // loaded (or loading) components; NULL = not loaded
    uint32_t active;                          // asks running or queued on it
};

enum vlm__op_kind {
    VLM__OP_LOAD = 1,   // reply with the chain once every component waited for is ready
    VLM__OP_SWAP = 2,   // switch the slot to the new component once it is ready
    VLM__OP_RELOAD = 3, // SIGHUP: like SWAP, without a client
};

struct vlm__op {
    enum vlm__op_kind kind;
    struct vlm__conn *conn; // NULL: nobody to answer (reload, or the client went away)
    uint32_t msgid;
    uint64_t rid;
    struct vlm__chain *chain; // ref
    int pending;              // components still loading
    int rc;                   // first failure
    struct vlm_diag diag;     // for the log
    const char *why;          // fixed text for the client (static; NULL: the wire code's text)
    struct vlm__component *swap_in[VLMD_SLOTS]; // refs: components to switch in when all loaded
    struct vlm__slot_spec swap_spec[VLMD_SLOTS]; // what the chain's spec becomes for those slots
    unsigned clear_mask;                         // slots (1 << kind) to empty on success (reload)
    char template_name[VLMD_TEMPLATE_MAX];       // reload: the chain's new template ("" = unchanged)
    struct vlm__op *conn_next;                  // in the connection's op list
};

struct vlm__chain *vlm__chain_find(struct vlmd *d, const char *name, size_t len);
// The chain an ask without a chain uses: the configured default, else the only or first chain.
struct vlm__chain *vlm__chain_default(struct vlmd *d);
void vlm__chain_ref(struct vlm__chain *c);
void vlm__chain_unref(struct vlmd *d, struct vlm__chain *c);
// Creates a chain from `spec` (not loaded). NULL on out of memory.
struct vlm__chain *vlm__chain_add(struct vlmd *d, const struct vlm__chain_spec *spec);
// Starts loading the chain's components that are not loaded; `op` (may be NULL) waits for them. Returns 0 or
// an error (bad model name, unknown plugin) with diag and *why; components already asked for are kept.
int vlm__chain_load(struct vlmd *d, struct vlm__chain *c, int kind, struct vlm__op *op, struct vlm_diag *diag,
                    const char **why);
// Releases the chain's components (kind 0: all). Running requests keep theirs.
void vlm__chain_unload(struct vlmd *d, struct vlm__chain *c, int kind);
// Finds or creates (and starts loading) the component for `spec`; returns a new reference. `op` waits for it
// when it is still loading. NULL with diag and *why on a bad name or plugin.
struct vlm__component *vlm__component_get(struct vlmd *d, enum vlm_plugin_kind kind, const struct vlm__slot_spec *spec,
                                          struct vlm__op *op, struct vlm_diag *diag, const char **why);
void vlm__component_ref(struct vlm__component *comp);
void vlm__component_unref(struct vlmd *d, struct vlm__component *comp);
// Called on the loop when a component's load job completed.
void vlm__component_loaded(struct vlmd *d, struct vlm__component *comp);
// Called on the loop when an unload job completed: frees the component.
void vlm__component_unloaded(struct vlmd *d, struct vlm__component *comp);
// Fills the wire description of a chain (strings borrow from the chain).
void vlm__chain_describe(const struct vlm__chain *c, struct vlm_rpc_chain *out);
// Applies what changed from `old` to `cfg`: new chains are added and loaded, changed ones switched when their
// new components are loaded, removed ones dropped (their running requests finish). Chains the files do not
// mention (created at run time) are left alone.
void vlm__chains_reload(struct vlmd *d, const struct vlm__config *old, const struct vlm__config *cfg);
// An op is finished: answers its client (if any) and frees it.
void vlm__op_finish(struct vlmd *d, struct vlm__op *op);
struct vlm__op *vlm__op_new(struct vlmd *d, enum vlm__op_kind kind, struct vlm__conn *conn, uint32_t msgid,
                            struct vlm__chain *chain);
// Resolves a model name (relative to the model dir, no "..", regular file, not outside it through a symlink)
// or, with `paths`, a path as given. Returns 0 or VLM_ENOTFOUND / VLM_EINVAL with diag (for the log) and *why.
// With `fd` not NULL, *fd gets the O_PATH descriptor of the very file checked (names; -1 for paths), which the
// caller closes: loading through it (vlm__model_open_path) leaves no gap for a rename in the model directory
// between the check and the open.
int vlm__model_resolve(const struct vlmd *d, const char *name, bool paths, char *out, size_t cap, uint64_t *size,
                       int *fd, struct vlm_diag *diag, const char **why);

// Why a load or swap failed, as its client reads it: fixed texts, never a path, a model name or a library's
// message (those go to the log under the request's id). The wire code comes from the VLM_E* code beside it.
#define VLM__WHY_NAME_LENGTH "model name must be 1..1023 bytes"
#define VLM__WHY_NAME_ABSOLUTE "model name must be relative to the model directory"
#define VLM__WHY_NAME_DOTDOT "model name must not contain '.', '..' or empty path components"
#define VLM__WHY_MODEL_NOT_FOUND "model not found"
#define VLM__WHY_MODEL_NOT_FILE "model is not a regular file"
#define VLM__WHY_PATH_TOO_LONG "model path too long"
#define VLM__WHY_PLUGIN_NOT_FOUND "no plugin of this component kind has that name"
#define VLM__WHY_NOT_GGUF "model file is not a valid GGUF file"
#define VLM__WHY_NO_ARCH "model file has no general.architecture"
#define VLM__WHY_WRONG_KIND "not a model for this component kind"
#define VLM__WHY_NO_PLUGIN "no plugin handles the model's architecture"
#define VLM__WHY_PLUGIN_OPEN "the plugin could not be opened"
#define VLM__WHY_MODEL_REFUSED "the plugin refused the model file"
#define VLM__WHY_OUT_OF_MEMORY "out of memory"
#define VLM__WHY_NEW_CHAIN_KIND "a new chain starts with its llm"


// ---- jobs and workers (worker.c) ---------------------------------------------------------------------------

enum vlm__job_kind {
    VLM__JOB_ASK = 1,
    VLM__JOB_LOAD = 2,
    VLM__JOB_UNLOAD = 3,
};

struct vlm__job {
    struct vlm__job *prev, *next;    // in the worker's queue (worker->mu)
    struct vlm__job *conn_next;      // in the connection's job list (loop)
    struct vlm__job *out_next;       // in d->out list (d->out_mu)
    enum vlm__job_kind kind;
    uint64_t rid;                    // request id in logs
    struct vlm__worker *worker;
    struct vlm__conn *conn;          // loop; NULL once the client went away
    uint32_t msgid;
    struct vlm__chain *chain;        // ref (ask)
    struct vlm__component *comp[VLMD_SLOTS]; // refs (ask: the chain's components; load/unload: comp[0])
    // ask input (owned copies)
    char *prompt;
    size_t prompt_len;
    bool stream;
    char template_name[VLMD_TEMPLATE_MAX]; // the chain's at submission (the loop may change the chain's)
    struct vlm_generate_params gp;
    char *stops[VLM_RPC_STOP_MAX];
    uint32_t n_images;
    uint8_t *images[VLM_RPC_IMAGES_MAX];
    size_t image_len[VLM_RPC_IMAGES_MAX];
    atomic_bool cancel;
    int cancel_code;                 // wire code to answer a cancelled ask with (CANCELLED, SHUTTING_DOWN)
    // Tokens sampled so far, bumped by the worker as each generated token goes into the model (so it may lag
    // the true count by the token being sampled, never lead it): what "stops within one token" is measured by.
    atomic_int n_gen_live;
    int32_t gen_at_cancel;           // loop: n_gen_live when the cancel arrived (-1: not cancelled)
    double t_cancel;                 // loop: when it arrived
    // Back-pressure: set by the loop while the client has more than output_pause unread; the worker then waits
    // (worker->mu, worker->resume) before handing over its next piece. Cancel wakes it too.
    atomic_bool hold;
    uint32_t n_pauses;               // loop: times the client's unread output paused it
    double t_held;                   // loop: when the current pause began
    double paused_ms;                // loop: time spent paused, for the log
    // shared with the loop under d->out_mu
    bool in_out;                     // on d->out
    bool done;                       // the worker finished it
    bool started;
    char *pending;                   // streamed text not yet taken by the loop
    size_t pending_len, pending_cap;
    uint64_t prefill_total;          // prompt positions, once known (0 before)
    bool prefill_done;               // the first token was sampled
    // loop-side copies, taken from the fields above under d->out_mu by vlm__worker_drain
    char *sending;
    size_t sending_len, sending_cap;
    bool sent_prefill_start, sent_prefill_done;
    uint64_t seen_total;
    bool seen_first, seen_done;
    // results (worker; read by the loop after done)
    int rc;
    struct vlm_diag diag;
    char *text;
    size_t text_len, text_cap;
    struct vlm_generate_stats stats;
    double t_queued, t_start, t_end;
    bool queued_counted;             // counts against queue_depth while waiting
};

struct vlm__worker {
    struct vlmd *d;
    int index;
    char device[16];
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cv;
    uv_cond_t resume;             // a held ask waits here (with mu) for its client to read, or a cancel
    struct vlm__job *head, *tail; // FIFO (mu)
    uint32_t n_waiting;           // asks queued, not running (mu)
    bool quit;                    // (mu)
    struct vlm__job *current;     // running job (mu; read by the worker itself without it)
    struct vlm_backend *backend;  // created and freed by the worker thread
    int start_rc;
    struct vlm_diag start_diag;
    uv_sem_t started;
};

int vlm__worker_start(struct vlmd *d, struct vlm__worker *w, int index, struct vlm_diag *diag);
// Asks the worker to finish its queue and exit, then joins it.
void vlm__worker_stop(struct vlm__worker *w);
// Queues a job. Asks are refused with VLM_EBUSY when queue_depth asks already wait; other jobs always go in.
int vlm__worker_submit(struct vlm__worker *w, struct vlm__job *job);
// Takes a queued ask out of the queue (true) or says it is already running or done (false).
bool vlm__worker_unqueue(struct vlm__worker *w, struct vlm__job *job);
uint32_t vlm__worker_waiting(struct vlm__worker *w);
struct vlm__job *vlm__job_new(enum vlm__job_kind kind);
void vlm__job_free(struct vlm__job *job);
// Loop side: drains the completion list (async callback).
void vlm__worker_drain(struct vlmd *d);
// Worker side: the loop has something to send for `job` (streamed text, progress; `done` set under out_mu).
void vlm__job_post(struct vlmd *d, struct vlm__job *job, bool done);
// Loop side: stops a running ask at its next token (or layer), noting how far it had got so the tokens generated
// after the cancel can be reported. Idempotent.
void vlm__job_cancel(struct vlm__job *job);
// The vlm_host.should_cancel hook (user = the worker): true when the running job was cancelled.
bool vlm__worker_should_cancel(void *user);
// Loop side: holds (true) or releases (false) a streaming ask whose client is not reading. A held ask keeps its
// worker: the worker waits in vlm__job_wait_released before its next piece, and a cancel releases it.
void vlm__job_hold(struct vlm__job *job, bool hold);
// Worker side: returns once the job is not held, or cancelled (the caller checks job->cancel), or the worker
// is told to quit. Blocks on a condition variable; never spins.
void vlm__job_wait_released(struct vlm__worker *w, struct vlm__job *job);

// ---- work done on a worker thread (ask.c, model.c) ------------------------------------------------------------

// Runs an ask: prompt -> tokens -> vlm_generate, streaming pieces; fills job->rc/diag/text/stats.
void vlm__ask_run(struct vlm__worker *w, struct vlm__job *job);
// Loads the component's model through its plugin (fills comp->model/plugin/info, or load_rc/load_diag).
void vlm__model_load(struct vlm__worker *w, struct vlm__component *comp);
// Unloads the component's model and closes its plugin handle.
void vlm__model_unload(struct vlm__worker *w, struct vlm__component *comp);

// ---- connections (server.c) --------------------------------------------------------------------------------

struct vlm__conn {
    uv_pipe_t pipe;             // first: the handle's address is the connection's
    struct vlmd *d;
    uint64_t id;
    struct vlm__conn *prev, *next;
    struct vlm_proto_reader reader;
    struct vlm_proto_buf out;   // scratch for encoding
    struct vlm__job *jobs;      // asks in flight
    struct vlm__op *ops;        // loads/swaps in flight
    bool closing;
    bool draining;              // answered a fatal error: close once written
    const char *why;            // static text: why it is being closed (logs)
    uv_shutdown_t shutdown_req;
    uid_t peer_uid;             // SO_PEERCRED at accept (access.c)
    gid_t peer_gid;
    pid_t peer_pid;
    double t_active;            // last bytes read, or last work in flight (idle_timeout)
    double t_frame;             // first byte of the partial message held (frame_timeout); 0: none
    // Back-pressure (server.c). `paused`: more than output_pause bytes were unread, and not yet drained below half
    // of it; its streaming asks are held meanwhile. The send_timeout clock restarts whenever the socket takes
    // bytes (as nginx's send_timeout: between two successive writes, not for the whole answer).
    bool paused;
    double t_paused;            // when it paused (log)
    double t_progress;          // paused: when the client last took bytes
    uint64_t bytes_queued;      // total handed to uv_write
    uint64_t bytes_taken;       // bytes_queued - write queue, at the last check
};

int vlm__server_listen(struct vlmd *d, struct vlm_diag *diag);
// Stops accepting (SIGTERM).
void vlm__server_stop_accepting(struct vlmd *d);
// Stops the frame/idle timeout sweep (shutdown, once the workers are gone).
void vlm__server_stop_timeouts(struct vlmd *d);
// Sends what was encoded into conn->out (takes its bytes). Drops the client when its output exceeds max_output;
// pauses its streaming asks when it exceeds output_pause (they resume when the client has read half of it).
void vlm__conn_flush(struct vlm__conn *c);
// Holds or releases the connection's streaming asks (rpc.c: a new ask of a connection that is paused now).
void vlm__conn_hold(struct vlm__conn *c, struct vlm__job *job, bool hold);
// Closes the connection now: its running asks are cancelled, queued ones dropped.
void vlm__conn_close(struct vlm__conn *c, const char *why);
// Closes once everything queued is written (after a fatal error reply, or at shutdown).
void vlm__conn_close_after_write(struct vlm__conn *c, const char *why);
void vlm__conn_error(struct vlm__conn *c, uint32_t msgid, int wire_code, const char *message);
void vlm__conn_progress(struct vlm__conn *c, uint32_t id, enum vlm_rpc_stage stage, uint64_t done, uint64_t total);

// ---- rpc (rpc.c) -------------------------------------------------------------------------------------------

void vlm__rpc_dispatch(struct vlm__conn *c, const struct vlm_proto_msg *msg);
// Answers a finished ask (the job is done) and releases it.
void vlm__rpc_ask_done(struct vlmd *d, struct vlm__job *job);

// ---- the daemon ------------------------------------------------------------------------------------------

struct vlmd {
    uv_loop_t *loop;
    struct vlm__config cfg;
    const char *config_file;          // for SIGHUP
    const struct vlm__override *ov;
    int n_ov;
    struct vlm_proto_limits limits;
    struct vlm__registry reg;
    struct vlm__chain *chains;
    struct vlm__component *components;
    struct vlm__worker *workers;
    int n_workers;
    uv_pipe_t server;
    bool listening;
    struct vlm__conn *conns;
    uint32_t n_conns;
    uint64_t next_conn_id;
    uint64_t next_rid;
    uint64_t requests_total;
    uint32_t jobs_in_flight;          // asks, loads and unloads not yet completed on the loop
    double t_start;
    uv_async_t async;
    uv_mutex_t out_mu;
    struct vlm__job *out_head, *out_tail; // jobs with something for the loop (out_mu)
    struct vlm__job **drain;              // loop: scratch array for vlm__worker_drain
    size_t drain_cap;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t shutdown_timer;        // SIGTERM: the time running requests get
    uv_timer_t finish_timer;          // runs the next shutdown step from a clean stack
    bool shutting_down;
    bool shutdown_forced;             // the timeout passed: everything still running was cancelled
    int stop_stage;                   // 0 requests finishing, 1 models unloading, 2 clients reading, 3 done
    int exit_code;
    bool socket_activated;            // the listening socket came from systemd: never unlinked (sd.c)
    bool socket_gid_known;
    gid_t socket_gid;                 // group of the socket file: allowed by default (access.c)
    uv_timer_t sd_timer;              // readiness, STATUS=, WATCHDOG=1 (sd.c)
    uv_timer_t conn_timer;            // frame and idle timeouts, swept over all clients (server.c)
    char read_buf[64 * 1024];
};

// main.c: called by the modules when a job or an op completed, so a pending shutdown can go on.
void vlm__daemon_maybe_finish(struct vlmd *d);

// ---- service integration (sd.c, access.c, modelpath.c) -----------------------------------------------------

// Socket activation: *fd = the listening socket passed by systemd (and `path` its file), or -1 when vlmd was
// not socket-activated. Fails when fds were passed but none is a listening Unix stream socket.
int vlm__sd_listen_fd(int *fd, char *path, size_t path_cap, struct vlm_diag *diag);
// Starts the loop timer that sends STATUS=/READY=1 once no configured model is loading, and WATCHDOG=1.
void vlm__sd_start(struct vlmd *d);
void vlm__sd_stopping(struct vlmd *d);
void vlm__sd_reloaded(struct vlmd *d);
void vlm__sd_close(struct vlmd *d);
// Parses an allow_users (groups false) or allow_groups list: names or ids, comma or space separated; "*" (users)
// allows everyone who can open the socket. Returns 0, or -1 with the reason in `why`.
int vlm__access_set(struct vlm__access *a, bool groups, const char *value, char *why, size_t cap);
// Checks an accepted client's credentials; logs them. A refused client is answered PERMISSION and closed (false).
bool vlm__access_admit(struct vlm__conn *c);
// Resolves `name` inside `model_dir` with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and O_PATH: no "..", no
// absolute path, no symlink, regular files only; nothing is opened for reading. Fills `out` with the file's path.
// With `fd` not NULL the O_PATH descriptor stays open in *fd (the caller closes it).
int vlm__model_beneath(const char *model_dir, const char *name, char *out, size_t cap, uint64_t *size, int *fd,
                       struct vlm_diag *diag, const char **why);
// The path a plugin should open for a file held by O_PATH descriptor `fd` (/proc/self/fd/N: it reopens that inode,
// whatever the name points at now), or `path` when fd < 0 or /proc is not there.
const char *vlm__model_open_path(int fd, const char *path, char *buf, size_t cap);

#endif // VLMD_H
