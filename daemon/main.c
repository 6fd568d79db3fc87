// vlmd: the daemon's start-up, signals and shutdown.
//
//   vlmd --socket $XDG_RUNTIME_DIR/vlmd.sock --plugin-dir build/lib/vlmd/plugins --chain default=model.gguf
//   vlmd --config /etc/vlmd/vlmd.conf
//
// SIGTERM/SIGINT: stop accepting, let running and queued requests finish within shutdown_timeout, cancel what
// is left (answered SHUTTING_DOWN), unload the models, exit 0. A second SIGTERM cancels at once. SIGHUP: read
// the config file again; new and changed chains are loaded in the background while the old ones keep serving.
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/vlmd.h"

#define OVERRIDES_MAX 128

static const char *const flag_keys[] = {
    "socket",      "plugin_dir",  "model_dir",   "default_chain", "threads",          "ctx_size",  "kv_type",
    "queue_depth", "max_clients", "max_message", "max_output",    "shutdown_timeout", "log_level", "chain",
    "allow_users", "allow_groups", "frame_timeout", "idle_timeout", "output_pause", "send_timeout",
    "vision_precision",
};
#define N_FLAG_KEYS ((int)(sizeof flag_keys / sizeof flag_keys[0]))

static void usage(FILE *f) {
    fprintf(f,
            "usage: vlmd [options]\n"
            "\n"
            "Serves vision-language models over a Unix socket (msgpack-RPC; see proto/PROTOCOL.md).\n"
            "\n"
            "  -c, --config FILE          INI configuration (see vlmd.conf.example); flags override it\n"
            "      --socket PATH          socket to listen on (default /run/vlmd/vlmd.sock)\n"
            "      --plugin-dir DIR       plugins (default %s)\n"
            "      --model-dir DIR        where chains from the config and clients name models (default\n"
            "                             /var/lib/vlmd/models)\n"
            "      --chain NAME=LLM[,MMPROJ]  a chain from model paths (repeatable)\n"
            "      --default-chain NAME   the chain of asks that name none\n"
            "      --threads N            compute threads (default: all CPUs)\n"
            "      --ctx-size N           context positions per request (default: the model's, at most 4096)\n"
            "      --kv-type f16|f32      KV cache type (default f16)\n"
            "      --vision-precision P   auto|exact|bf16: encoder/projector products (default auto: BF16 for 16-bit\n"
            "                             weights on CPUs with AVX512-BF16, exact otherwise)\n"
            "      --queue-depth N        asks that may wait for a worker before `busy` (default 64)\n"
            "      --max-clients N        connections (default 256)\n"
            "      --max-message SIZE     largest request (default 64M)\n"
            "      --max-output SIZE      bytes a client may leave unread before it is dropped at once (default 8M)\n"
            "      --output-pause SIZE    unread bytes that pause the client's streamed answers (default 256K)\n"
            "      --send-timeout S       drop a paused client that reads nothing this long (default 30; 0 = never)\n"
            "      --shutdown-timeout S   seconds running requests get after SIGTERM (default 10)\n"
            "      --frame-timeout S      seconds a request may take to arrive once begun (default 30; 0 = none)\n"
            "      --idle-timeout S       close clients silent this long with nothing running (default 0 = never)\n"
            "      --log-level LEVEL      error, warn, info or debug (default info)\n"
            "      --allow-users LIST     users allowed besides root and vlmd's own (names or ids; * = all)\n"
            "      --allow-groups LIST    groups allowed (default: the socket file's group)\n"
            "  -v, --verbose              --log-level debug\n"
            "  -V, --version              print the version\n"
            "  -h, --help                 this help\n",
            vlm_plugin_default_dir());
}

// ---- shutdown -----------------------------------------------------------------------------------------------

static void cancel_everything(struct vlmd *d) {
    for (struct vlm__conn *c = d->conns; c; c = c->next) {
        for (struct vlm__job *j = c->jobs, *next; j; j = next) {
            next = j->conn_next;
            j->cancel_code = VLM_PROTO_ESHUTTING_DOWN;
            if (vlm__worker_unqueue(j->worker, j)) {
                j->rc = VLM_ECANCELED;
                d->jobs_in_flight--;
                vlm__rpc_ask_done(d, j);
            } else {
                vlm__job_cancel(j);
            }
        }
    }
}

static void on_walk_close(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static void close_handle(uv_handle_t *h) {
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

// Clients that did not take their last messages within the grace period are cut off.
static void on_grace_over(uv_timer_t *t) {
    struct vlmd *d = t->data;
    while (d->conns) {
        vlm__conn_close(d->conns, "daemon stopped");
    }
    vlm__daemon_maybe_finish(d);
}

static void finish_step(uv_timer_t *t) {
    struct vlmd *d = t->data;
    if (d->stop_stage == 0) {
        if (d->jobs_in_flight > 0) {
            return; // requests (or loads) still running; called again when one completes
        }
        // Stage 1: answer what is written, let go of every chain: the models unload on their workers.
        d->stop_stage = 1;
        for (struct vlm__conn *c = d->conns, *next; c; c = next) {
            next = c->next;
            vlm__conn_close_after_write(c, "daemon stopping");
        }
        while (d->chains) {
            struct vlm__chain *c = d->chains;
            d->chains = c->next;
            c->next = NULL;
            c->removed = true;
            vlm__chain_unref(d, c);
        }
    }
    if (d->stop_stage == 1) {
        if (d->jobs_in_flight > 0) {
            return;
        }
        // Stage 2: workers have nothing left: stop them; clients get a moment to read their last messages.
        d->stop_stage = 2;
        vlm__sd_close(d);
        vlm__server_stop_timeouts(d);
        for (int i = 0; i < d->n_workers; i++) {
            vlm__worker_stop(&d->workers[i]);
        }
        d->n_workers = 0;
        close_handle((uv_handle_t *)&d->async);
        close_handle((uv_handle_t *)&d->sig_term);
        close_handle((uv_handle_t *)&d->sig_int);
        close_handle((uv_handle_t *)&d->sig_hup);
        uv_timer_stop(&d->shutdown_timer);
        uv_ref((uv_handle_t *)&d->shutdown_timer);
        uv_timer_start(&d->shutdown_timer, on_grace_over, 1000, 0);
    }
    if (d->stop_stage == 2 && d->n_conns == 0) {
        // Stage 3: nothing left; closing the last handles ends uv_run.
        d->stop_stage = 3;
        close_handle((uv_handle_t *)&d->shutdown_timer);
        close_handle((uv_handle_t *)&d->finish_timer);
    }
}

void vlm__daemon_maybe_finish(struct vlmd *d) {
    if (d->shutting_down && d->stop_stage < 3) {
        uv_timer_start(&d->finish_timer, finish_step, 0, 0); // from a clean stack, on the next turn
    }
}

static void on_shutdown_timeout(uv_timer_t *t) {
    struct vlmd *d = t->data;
    if (d->jobs_in_flight > 0) {
        VLM_LOGW("shutdown: %.1f s passed: cancelling what still runs", d->cfg.shutdown_timeout_s);
    }
    d->shutdown_forced = true;
    cancel_everything(d);
    vlm__daemon_maybe_finish(d);
}

static void begin_shutdown(struct vlmd *d, const char *why) {
    if (d->shutting_down) {
        if (!d->shutdown_forced) {
            VLM_LOGW("%s again: cancelling running requests now", why);
            on_shutdown_timeout(&d->shutdown_timer);
        }
        return;
    }
    d->shutting_down = true;
    VLM_LOGI("%s: stopping (%u requests and loads in flight, %.1f s to finish)", why, d->jobs_in_flight,
             d->cfg.shutdown_timeout_s);
    vlm__server_stop_accepting(d);
    vlm__sd_stopping(d);
    uv_timer_start(&d->shutdown_timer, on_shutdown_timeout, (uint64_t)(d->cfg.shutdown_timeout_s * 1e3), 0);
    vlm__daemon_maybe_finish(d);
}

// ---- signals ------------------------------------------------------------------------------------------------

static void reload(struct vlmd *d) {
    struct vlm__config cfg;
    struct vlm_diag diag = {0};
    if (!d->config_file && d->n_ov == 0) {
        VLM_LOGI("SIGHUP: no config file: nothing to reload");
        return;
    }
    if (vlm__config_load(d->config_file, d->ov, d->n_ov, &cfg, &diag) != 0) {
        VLM_LOGE("SIGHUP: keeping the running configuration: %s", diag.msg);
        return;
    }
    // Settings the running daemon cannot change without a restart.
    if (strcmp(cfg.socket_path, d->cfg.socket_path) || strcmp(cfg.plugin_dir, d->cfg.plugin_dir) ||
        strcmp(cfg.model_dir, d->cfg.model_dir) || cfg.threads != d->cfg.threads || cfg.ctx_size != d->cfg.ctx_size ||
        cfg.kv_f16 != d->cfg.kv_f16 || cfg.max_message != d->cfg.max_message) {
        VLM_LOGW("SIGHUP: socket, plugin_dir, model_dir, threads, ctx_size, kv_type and max_message take effect at "
                 "the next start");
    }
    d->cfg.queue_depth = cfg.queue_depth;
    d->cfg.max_clients = cfg.max_clients;
    d->cfg.max_output = cfg.max_output;
    d->cfg.output_pause = cfg.output_pause;
    d->cfg.send_timeout_s = cfg.send_timeout_s;
    d->cfg.vision_precision = cfg.vision_precision; // for encoders and projectors loaded from now on
    d->cfg.shutdown_timeout_s = cfg.shutdown_timeout_s;
    d->cfg.frame_timeout_s = cfg.frame_timeout_s;
    d->cfg.idle_timeout_s = cfg.idle_timeout_s;
    d->cfg.log_level = cfg.log_level;
    d->cfg.access = cfg.access;
    vlm_log_set_level(cfg.log_level);
    memcpy(d->cfg.default_chain, cfg.default_chain, sizeof cfg.default_chain);
    vlm__chains_reload(d, &d->cfg, &cfg);
    free(d->cfg.chains);
    d->cfg.chains = cfg.chains;
    d->cfg.n_chains = cfg.n_chains;
    VLM_LOGI("SIGHUP: configuration reloaded (%u chains)", cfg.n_chains);
    vlm__sd_reloaded(d);
}

static void on_signal(uv_signal_t *s, int signum) {
    struct vlmd *d = s->data;
    if (signum == SIGHUP) {
        if (!d->shutting_down) {
            reload(d);
        }
        return;
    }
    begin_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_async(uv_async_t *a) {
    vlm__worker_drain(a->data);
}

// ---- start-up -----------------------------------------------------------------------------------------------

static int parse_args(int argc, char **argv, struct vlm__override *ov, int *n_ov, const char **config_file) {
    struct option longopts[N_FLAG_KEYS + 5];
    char names[N_FLAG_KEYS][32];
    for (int i = 0; i < N_FLAG_KEYS; i++) {
        snprintf(names[i], sizeof names[i], "%s", flag_keys[i]);
        for (char *p = names[i]; *p; p++) {
            *p = *p == '_' ? '-' : *p;
        }
        longopts[i] = (struct option){names[i], required_argument, NULL, 256 + i};
    }
    longopts[N_FLAG_KEYS + 0] = (struct option){"config", required_argument, NULL, 'c'};
    longopts[N_FLAG_KEYS + 1] = (struct option){"verbose", no_argument, NULL, 'v'};
    longopts[N_FLAG_KEYS + 2] = (struct option){"version", no_argument, NULL, 'V'};
    longopts[N_FLAG_KEYS + 3] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[N_FLAG_KEYS + 4] = (struct option){NULL, 0, NULL, 0};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:vVh", longopts, NULL)) != -1) {
        if (ch >= 256 && ch < 256 + N_FLAG_KEYS) {
            if (*n_ov == OVERRIDES_MAX) {
                fprintf(stderr, "vlmd: too many options\n");
                return 2;
            }
            ov[(*n_ov)++] = (struct vlm__override){flag_keys[ch - 256], optarg};
            continue;
        }
        switch (ch) {
        case 'c':
            *config_file = optarg;
            break;
        case 'v':
            if (*n_ov < OVERRIDES_MAX) {
                ov[(*n_ov)++] = (struct vlm__override){"log_level", "debug"};
            }
            break;
        case 'V':
            printf("vlmd %s (protocol %d)\n", VLMD_VERSION, VLM_PROTO_VERSION);
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vlmd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    static struct vlm__override ov[OVERRIDES_MAX];
    static struct vlmd daemon; // large (read buffer): not on the stack
    struct vlmd *d = &daemon;
    int n_ov = 0;
    const char *config_file = NULL;
    int rc = parse_args(argc, argv, ov, &n_ov, &config_file);
    if (rc) {
        return rc;
    }
    // A client that goes away mid-write must cost an EPIPE, not the process.
    signal(SIGPIPE, SIG_IGN);

    struct vlm_diag diag = {0};
    if (vlm__config_load(config_file, ov, n_ov, &d->cfg, &diag) != 0) {
        fprintf(stderr, "vlmd: %s\n", diag.msg);
        return 2;
    }
    vlm_log_set_level(d->cfg.log_level);
    d->config_file = config_file;
    d->ov = ov;
    d->n_ov = n_ov;
    d->t_start = vlm_time_ms();
    d->limits = vlm_proto_default_limits();
    d->limits.max_message = d->cfg.max_message;
    if (d->limits.max_str > d->limits.max_message) {
        d->limits.max_str = (uint32_t)d->limits.max_message;
    }
    VLM_LOGI("vlmd %s starting (pid %ld)", VLMD_VERSION, (long)getpid());

    uv_loop_t loop;
    uv_loop_init(&loop);
    d->loop = &loop;
    d->exit_code = 1;
    if (vlm__registry_scan(&d->reg, d->cfg.plugin_dir, &diag) != 0) {
        VLM_LOGE("%s", diag.msg);
        goto out_config;
    }
    VLM_LOGI("%s: %u plugins (%u refused)", d->cfg.plugin_dir, d->reg.n, d->reg.n_refused);
    uv_mutex_init(&d->out_mu);
    uv_async_init(&loop, &d->async, on_async);
    d->async.data = d;
    uv_timer_init(&loop, &d->shutdown_timer);
    uv_timer_init(&loop, &d->finish_timer);
    d->shutdown_timer.data = d->finish_timer.data = d;
    uv_unref((uv_handle_t *)&d->shutdown_timer);
    d->workers = calloc(1, sizeof *d->workers);
    if (!d->workers || vlm__worker_start(d, &d->workers[0], 0, &diag) != 0) {
        VLM_LOGE("cannot start the worker: %s", d->workers ? diag.msg : "out of memory");
        goto out_loop;
    }
    d->n_workers = 1;
    if (vlm__server_listen(d, &diag) != 0) {
        VLM_LOGE("%s", diag.msg);
        goto out_workers;
    }
    uv_signal_init(&loop, &d->sig_term);
    uv_signal_init(&loop, &d->sig_int);
    uv_signal_init(&loop, &d->sig_hup);
    d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    uv_signal_start(&d->sig_term, on_signal, SIGTERM);
    uv_signal_start(&d->sig_int, on_signal, SIGINT);
    uv_signal_start(&d->sig_hup, on_signal, SIGHUP);

    for (uint32_t i = 0; i < d->cfg.n_chains; i++) {
        struct vlm__chain *c = vlm__chain_add(d, &d->cfg.chains[i]);
        if (!c) {
            VLM_LOGE("out of memory");
            continue;
        }
        vlm__chain_load(d, c, 0, NULL, &diag, NULL); // failures are logged; asks retry the load
    }
    d->exit_code = 0;
    vlm__sd_start(d); // after the chains started loading: READY=1 once none is loading
    uv_run(&loop, UV_RUN_DEFAULT);
    VLM_LOGI("stopped");
    uv_loop_close(&loop);
    uv_mutex_destroy(&d->out_mu);
    free(d->drain);
    free(d->workers);
    vlm__registry_free(&d->reg);
    vlm__config_free(&d->cfg);
    return d->exit_code;

out_workers:
    vlm__worker_stop(&d->workers[0]);
out_loop:
    free(d->workers);
    uv_walk(&loop, on_walk_close, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    uv_mutex_destroy(&d->out_mu);
    vlm__registry_free(&d->reg);
out_config:
    vlm__config_free(&d->cfg);
    return 1;
}
