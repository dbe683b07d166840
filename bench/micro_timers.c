/*
 * micro_timers.c - libem timer micro-benchmark (twin: micro_timers_uv.c).
 *
 * What: N one-shot timers (default 10,000,000) with pseudo-random deadlines
 * of 0..R-1 ms (default R = 1000, whole milliseconds so libuv can express
 * the very same deadlines; splitmix64 with a fixed seed, identical in both
 * programs). Three phases, each reported in ns per timer:
 *   add     em_add_timer for all N, cold (the library grows its arrays);
 *   fire    em_run_once until every callback ran. The loop sleeps until
 *           deadlines come due, so the cost is this thread's CPU time
 *           (CLOCK_THREAD_CPUTIME_ID, user + kernel), not wall time;
 *   cancel  add all N again (warm, reported as readd) and em_cancel_timer
 *           each in insertion order.
 * Every callback adds its index to a checksum, so "each timer fired exactly
 * once" is verified without touching memory inside the timed loop.
 * Prints one line: RESULT name=timers lib=libem ... ok=1|0.
 *
 * Usage: micro_timers [-n N] [-r RANGE_MS] [-s SEED]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "em.h"

static uint64_t fired;
static uint64_t fired_sum;

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64: one 64-bit state, good enough spread for deadlines. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void on_timer(em_loop *loop, void *arg)
{
    (void)loop;
    fired++;
    fired_sum += (uintptr_t)arg;
}

static long peak_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void usage(void)
{
    fprintf(stderr, "usage: micro_timers [-n N] [-r RANGE_MS] [-s SEED]\n");
}

int main(int argc, char **argv)
{
    uint64_t n = 10000000;
    uint64_t range_ms = 1000;
    uint64_t seed = 42;
    int opt;

    while ((opt = getopt(argc, argv, "n:r:s:h")) != -1) {
        switch (opt) {
        case 'n': n = strtoull(optarg, NULL, 10); break;
        case 'r': range_ms = strtoull(optarg, NULL, 10); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        default: usage(); return 2;
        }
    }
    if (n == 0) {
        usage();
        return 2;
    }

    /* Inputs prepared outside every timed region. */
    double *seconds = malloc(n * sizeof(*seconds));
    em_timer_id *ids = malloc(n * sizeof(*ids));
    if (seconds == NULL || ids == NULL) {
        fprintf(stderr, "micro_timers: out of memory for %llu timers\n",
                (unsigned long long)n);
        return 1;
    }
    uint64_t state = seed;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t ms = range_ms ? next_random(&state) % range_ms : 0;
        seconds[i] = (double)ms / 1000.0;
    }
    long rss_before_kb = peak_rss_kb();

    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "micro_timers: em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_update_time(loop);
    uint64_t start_wall = clock_ns(CLOCK_MONOTONIC);

    /* (a) add, cold */
    uint64_t t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (uint64_t i = 0; i < n; i++) {
        err = em_add_timer(loop, seconds[i], on_timer, (void *)(uintptr_t)i,
                           NULL);
        if (err < 0) {
            fprintf(stderr, "micro_timers: em_add_timer: %s\n",
                    em_strerror(err));
            return 1;
        }
    }
    uint64_t t1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    long peak_kb = peak_rss_kb();

    /* (b) fire: the loop sleeps between deadlines; count CPU time only */
    uint64_t fire_wall0 = clock_ns(CLOCK_MONOTONIC);
    uint64_t t2 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t turns = 0;
    while (fired < n) {
        err = em_run_once(loop, -1);
        turns++;
        if (err < 0) {
            fprintf(stderr, "micro_timers: em_run_once: %s\n",
                    em_strerror(err));
            return 1;
        }
        if (em_timer_count(loop) == 0 && fired < n)
            break; /* lost timers: report instead of sleeping forever */
    }
    uint64_t t3 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t fire_wall1 = clock_ns(CLOCK_MONOTONIC);
    uint64_t expect_sum = n % 2 ? n * ((n - 1) / 2) : (n / 2) * (n - 1);
    int ok = fired == n && fired_sum == expect_sum;

    /* (c) add again (warm) then cancel each, in insertion order */
    em_update_time(loop);
    uint64_t t4 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (uint64_t i = 0; i < n; i++) {
        err = em_add_timer(loop, seconds[i], on_timer, (void *)(uintptr_t)i,
                           &ids[i]);
        if (err < 0) {
            fprintf(stderr, "micro_timers: em_add_timer: %s\n",
                    em_strerror(err));
            return 1;
        }
    }
    uint64_t t5 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t cancel_failed = 0;
    for (uint64_t i = 0; i < n; i++)
        cancel_failed += em_cancel_timer(loop, ids[i]) != 0;
    uint64_t t6 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (cancel_failed != 0 || em_timer_count(loop) != 0)
        ok = 0;
    em_loop_free(loop);
    uint64_t end_wall = clock_ns(CLOCK_MONOTONIC);

    double dn = (double)n;
    double add_ns = (double)(t1 - t0) / dn;
    double fire_ns = (double)(t3 - t2) / dn;
    printf("RESULT name=timers lib=libem n=%llu range_ms=%llu seed=%llu"
           " add_ns=%.1f fire_ns=%.1f add_fire_ns=%.1f readd_ns=%.1f"
           " cancel_ns=%.1f fire_wall_s=%.3f turns=%llu total_s=%.3f"
           " fired=%llu peak_rss_mb=%.1f bytes_per_timer=%.1f ok=%d\n",
           (unsigned long long)n, (unsigned long long)range_ms,
           (unsigned long long)seed, add_ns, fire_ns, add_ns + fire_ns,
           (double)(t5 - t4) / dn, (double)(t6 - t5) / dn,
           (double)(fire_wall1 - fire_wall0) / 1e9, (unsigned long long)turns,
           (double)(end_wall - start_wall) / 1e9, (unsigned long long)fired,
           (double)peak_kb / 1024.0,
           (double)(peak_kb - rss_before_kb) * 1024.0 / dn, ok);
    free(seconds);
    free(ids);
    return ok ? 0 : 1;
}
