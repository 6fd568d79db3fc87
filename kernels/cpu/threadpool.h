// Persistent worker pool for the CPU backend. One dispatch runs fn(ctx, ith, nth) once for every ith in
// [0, nth), with nth = the pool's thread count; the calling thread takes part as ith 0 and the call returns
// when every thread has finished. Idle workers spin briefly (decode issues hundreds of small ops per token)
// and then sleep on a condition variable, so an unused pool costs no CPU.
//
// A pool is driven by one thread at a time and dispatches do not nest (fn must not call run on the same pool).
// Once the caller has finished share 0 it runs, itself, every share no worker has started yet (a descheduled or
// sleeping worker does not stall the dispatch), so a share other than 0 must never wait for another share.
#ifndef VLM_CPU_THREADPOOL_H
#define VLM_CPU_THREADPOOL_H

struct vlm_threadpool;

typedef void (*vlm_threadpool_fn)(void *ctx, int ith, int nth);

// Starts n_threads - 1 workers (n_threads <= 0: the number of online CPUs). Returns 0, VLM_ENOMEM, or a
// negated errno from pthread_create. `*out` is written only on success.
int vlm__threadpool_new(int n_threads, struct vlm_threadpool **out);

// Stops and joins the workers. NULL is a no-op.
void vlm__threadpool_free(struct vlm_threadpool *pool);

int vlm__threadpool_n_threads(const struct vlm_threadpool *pool);

// Runs fn on every thread of the pool and waits for all of them.
void vlm__threadpool_run(struct vlm_threadpool *pool, vlm_threadpool_fn fn, void *ctx);

// Number of online CPUs (at least 1).
int vlm__cpu_count(void);

#endif // VLM_CPU_THREADPOOL_H
