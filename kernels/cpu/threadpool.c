// Persistent pthread pool. A dispatch publishes (fn, ctx) and bumps a generation counter; workers spin on the
// counter for a short while after each job and then sleep on a condition variable. The waker only touches the
// mutex when some worker is actually asleep (n_sleeping), so a dispatch to spinning workers is a few atomic
// operations plus the wait for the slowest thread.
//
// Each share (ith) of a job is claimed by CAS on its slot (gen - 1 -> gen) before it runs. The worker that owns
// the slot normally wins; but once the caller has finished its own share it claims and runs every share whose
// worker has not started yet. So a dispatch never waits for a worker that is descheduled or still waking up
// (an oversubscribed machine, a sleeping pool): it only waits for shares that are actually running.
//
// Ordering: the caller writes fn/ctx, then increments gen (seq_cst, a release). A worker reads fn/ctx only after
// it observed the new gen (acquire) and won its slot's CAS; the caller cannot start the next generation before
// every claimed share has incremented n_done (release; the caller waits with acquire), so fn/ctx are stable
// while read. A worker that lost its slot, even generations late, touches nothing but its slot and gen. The
// sleep handshake is a Dekker pair on (gen, n_sleeping), both seq_cst: either the waker sees n_sleeping > 0 and
// broadcasts under the mutex, or the sleeper sees the new gen before waiting.
#include "kernels/cpu/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vlm/error.h"

// How long an idle worker spins before sleeping. Between two ops of a decode step the caller does a few
// microseconds of bookkeeping; between tokens the sampler runs. 200 us covers both without burning a core
// for long when the model is idle.
#define SPIN_NS 200000LL

// After this many pause-polls a waiting thread (caller or idle worker) polls with sched_yield in between: on
// an oversubscribed machine the thread it waits for may need the very core it is spinning on. A yield with
// nobody else runnable costs well under a microsecond, so dispatch latency barely changes.
#define SPINS_BEFORE_YIELD 1000

struct worker {
    alignas(64) atomic_uint claimed; // last generation whose share ith was claimed (by the worker or the caller)
    pthread_t thread;
    struct vlm_threadpool *pool;
    int ith;
};

struct vlm_threadpool {
    int n_threads;
    struct worker *workers; // n_threads - 1 entries, for ith = 1 .. n_threads - 1
    pthread_mutex_t mutex;
    pthread_cond_t cond;

    vlm_threadpool_fn fn; // job of the current generation
    void *ctx;

    alignas(64) atomic_uint gen;
    atomic_int n_sleeping;
    atomic_bool stop;
    alignas(64) atomic_int n_done;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int vlm__cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) {
            return n;
        }
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static unsigned wait_for_job(struct vlm_threadpool *pool, unsigned seen) {
    unsigned g;
    int64_t t0 = now_ns();
    for (unsigned i = 1;; i++) {
        g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        if (g != seen) {
            return g;
        }
        if (i < SPINS_BEFORE_YIELD) {
            cpu_relax();
        } else {
            sched_yield();
        }
        if ((i & 63u) == 0 && now_ns() - t0 > SPIN_NS) {
            break;
        }
    }
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add(&pool->n_sleeping, 1);
    while ((g = atomic_load(&pool->gen)) == seen) {
        pthread_cond_wait(&pool->cond, &pool->mutex);
    }
    atomic_fetch_sub(&pool->n_sleeping, 1);
    pthread_mutex_unlock(&pool->mutex);
    return g;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct vlm_threadpool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_job(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            break;
        }
        unsigned expect = seen - 1u;
        if (!atomic_compare_exchange_strong(&w->claimed, &expect, seen)) {
            continue; // the caller ran this share already (we were late), or a later generation is running
        }
        pool->fn(pool->ctx, w->ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

static void wake_sleepers(struct vlm_threadpool *pool) {
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->cond);
        pthread_mutex_unlock(&pool->mutex);
    }
}

static void stop_workers(struct vlm_threadpool *pool, int n_started) {
    atomic_store_explicit(&pool->stop, true, memory_order_release);
    atomic_fetch_add(&pool->gen, 1u);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 0; i < n_started; i++) {
        pthread_join(pool->workers[i].thread, NULL);
    }
}

int vlm__threadpool_new(int n_threads, struct vlm_threadpool **out) {
    if (n_threads <= 0) {
        n_threads = vlm__cpu_count();
    }
    size_t size = (sizeof(struct vlm_threadpool) + 63) & ~(size_t)63;
    struct vlm_threadpool *pool = aligned_alloc(64, size);
    if (!pool) {
        return VLM_ENOMEM;
    }
    memset(pool, 0, size);
    pool->n_threads = n_threads;
    atomic_init(&pool->gen, 0u);
    atomic_init(&pool->n_sleeping, 0);
    atomic_init(&pool->stop, false);
    atomic_init(&pool->n_done, 0);
    size_t wsize = (size_t)n_threads * sizeof *pool->workers;
    pool->workers = aligned_alloc(64, (wsize + 63) & ~(size_t)63);
    if (!pool->workers) {
        free(pool);
        return VLM_ENOMEM;
    }
    memset(pool->workers, 0, wsize);
    for (int i = 0; i < n_threads; i++) {
        atomic_init(&pool->workers[i].claimed, 0u);
    }
    int rc = pthread_mutex_init(&pool->mutex, NULL);
    if (rc != 0) {
        goto err_free;
    }
    rc = pthread_cond_init(&pool->cond, NULL);
    if (rc != 0) {
        goto err_mutex;
    }
    for (int i = 0; i < n_threads - 1; i++) {
        struct worker *w = &pool->workers[i];
        w->pool = pool;
        w->ith = i + 1;
        rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            stop_workers(pool, i);
            goto err_cond;
        }
    }
    *out = pool;
    return 0;

err_cond:
    pthread_cond_destroy(&pool->cond);
err_mutex:
    pthread_mutex_destroy(&pool->mutex);
err_free:
    free(pool->workers);
    free(pool);
    return rc == ENOMEM || rc == EAGAIN ? VLM_ENOMEM : -rc;
}

void vlm__threadpool_free(struct vlm_threadpool *pool) {
    if (!pool) {
        return;
    }
    stop_workers(pool, pool->n_threads - 1);
    pthread_cond_destroy(&pool->cond);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool);
}

int vlm__threadpool_n_threads(const struct vlm_threadpool *pool) {
    return pool->n_threads;
}

void vlm__threadpool_run(struct vlm_threadpool *pool, vlm_threadpool_fn fn, void *ctx) {
    int n = pool->n_threads;
    if (n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    unsigned g = atomic_fetch_add(&pool->gen, 1u) + 1u;
    wake_sleepers(pool);

    fn(ctx, 0, n);

    for (int i = 0; i < n - 1; i++) {
        struct worker *w = &pool->workers[i];
        unsigned expect = g - 1u;
        if (atomic_load_explicit(&w->claimed, memory_order_relaxed) == expect &&
            atomic_compare_exchange_strong(&w->claimed, &expect, g)) {
            fn(ctx, w->ith, n);
            atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_relaxed);
        }
    }

    for (int i = 0; atomic_load_explicit(&pool->n_done, memory_order_acquire) != n - 1; i++) {
        if (i < SPINS_BEFORE_YIELD) {
            cpu_relax();
        } else {
            sched_yield();
        }
    }
}
