// Memory read bandwidth with T threads: the roofline for LLM decode, which streams every weight byte once per
// token. Each thread sums its own slice of a buffer much larger than the last-level cache, so the figure is DRAM
// bandwidth, not cache bandwidth. Stand-alone on purpose (not part of the CMake build):
//   gcc -O2 -mavx2 -pthread bench/membw.c -o /tmp/membw && /tmp/membw [threads=2] [MiB=1024] [reps=10]
// (add -mavx512f for 512-bit loads; on the Zen 5 test machine they were no faster, see README.md).
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct job {
    const float *p;
    size_t n;
    pthread_barrier_t *bar;
    int reps;
    double best_s;
    float sink;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#ifdef __AVX512F__
#define VEC_FLOATS 16
static float sum_slice(const float *p, size_t n)
{
    // Four independent accumulators: enough loads in flight to saturate a core's memory pipe.
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#else
#define VEC_FLOATS 8
static float sum_slice(const float *p, size_t n)
{
    // Four independent accumulators: enough loads in flight to saturate a core's memory pipe.
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
#endif

static void *worker(void *arg)
{
    struct job *j = arg;
    j->best_s = 1e30;
    for (int r = 0; r < j->reps; r++) {
        pthread_barrier_wait(j->bar);
        double t0 = now_s();
        j->sink += sum_slice(j->p, j->n);
        pthread_barrier_wait(j->bar);
        double dt = now_s() - t0;
        if (dt < j->best_s)
            j->best_s = dt;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int nt = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    int reps = argc > 3 ? atoi(argv[3]) : 10;
    if (nt < 1 || nt > 256 || mib < 64 || reps < 1) {
        fprintf(stderr, "usage: %s [threads] [MiB>=64] [reps]\n", argv[0]);
        return 2;
    }
    size_t n = mib * 1024 * 1024 / sizeof(float);
    size_t per = n / (size_t)nt / (4 * VEC_FLOATS) * (4 * VEC_FLOATS);
    float *buf = aligned_alloc(64, n * sizeof(float));
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) // touch every page so the timed loop measures DRAM, not page faults
        buf[i] = (float)(i & 7);

    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)nt);
    struct job *jobs = calloc((size_t)nt, sizeof(*jobs));
    pthread_t *th = calloc((size_t)nt, sizeof(*th));
    for (int t = 0; t < nt; t++) {
        jobs[t] = (struct job){.p = buf + (size_t)t * per, .n = per, .bar = &bar, .reps = reps};
        pthread_create(&th[t], NULL, worker, &jobs[t]);
    }
    double worst_best = 0;
    float sink = 0;
    for (int t = 0; t < nt; t++) {
        pthread_join(th[t], NULL);
        if (jobs[t].best_s > worst_best)
            worst_best = jobs[t].best_s;
        sink += jobs[t].sink;
    }
    double bytes = (double)per * (double)nt * sizeof(float);
    printf("{\"threads\":%d,\"MiB\":%zu,\"reps\":%d,\"read_GBps\":%.2f,\"sink\":%g}\n", nt, mib, reps,
           bytes / worst_best / 1e9, (double)sink);
    free(jobs);
    free(th);
    free(buf);
    return 0;
}
