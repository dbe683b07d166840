/*
 * micro_timers_uv.c - libuv twin of micro_timers.c, for the ratio.
 *
 * Same N, same deadlines (splitmix64, same seed, whole milliseconds 0..R-1),
 * same phases and the same RESULT keys, so micro.sh can divide one by the
 * other. libuv is used the way its users use it: the uv_timer_t handles
 * live in one big array (no malloc per timer), owned by this program.
 *   add     uv_timer_init + uv_timer_start for every handle (cold: the
 *           array's pages are first touched here, as libem's arrays are
 *           first touched inside em_add_timer);
 *   fire    uv_run(UV_RUN_DEFAULT), which returns once no timer is active;
 *           the cost is this thread's CPU time, not the sleeping;
 *   cancel  uv_timer_start again on the same handles (readd, warm) and
 *           uv_timer_stop on each, in insertion order.
 * Closing is separate (close_ns): uv_close on every handle plus the uv_run
 * that delivers the closes. libem has no equivalent cost, so it is not part
 * of the comparison; -C skips it (the loop is then not closed either).
 *
 * Usage: micro_timers_uv [-n N] [-r RANGE_MS] [-s SEED] [-C]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static uint64_t fired;
static uint64_t fired_sum;
static uv_timer_t *handles;

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64, exactly as in micro_timers.c */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void on_timer(uv_timer_t *timer)
{
    fired++;
    fired_sum += (uint64_t)(timer - handles);
}

static long peak_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: micro_timers_uv [-n N] [-r RANGE_MS] [-s SEED] [-C]\n");
}

int main(int argc, char **argv)
{
    uint64_t n = 10000000;
    uint64_t range_ms = 1000;
    uint64_t seed = 42;
    int do_close = 1;
    int opt;

    while ((opt = getopt(argc, argv, "n:r:s:Ch")) != -1) {
        switch (opt) {
        case 'n': n = strtoull(optarg, NULL, 10); break;
        case 'r': range_ms = strtoull(optarg, NULL, 10); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'C': do_close = 0; break;
        default: usage(); return 2;
        }
    }
    if (n == 0) {
        usage();
        return 2;
    }

    uint64_t *timeouts = malloc(n * sizeof(*timeouts));
    if (timeouts == NULL) {
        fprintf(stderr, "micro_timers_uv: out of memory\n");
        return 1;
    }
    uint64_t state = seed;
    for (uint64_t i = 0; i < n; i++)
        timeouts[i] = range_ms ? next_random(&state) % range_ms : 0;
    long rss_before_kb = peak_rss_kb();

    /* Not touched yet: the pages count in the add phase and in peak RSS. */
    handles = malloc(n * sizeof(*handles));
    static uv_loop_t loop;
    if (handles == NULL || uv_loop_init(&loop) != 0) {
        fprintf(stderr, "micro_timers_uv: setup failed\n");
        return 1;
    }
    uv_update_time(&loop);
    uint64_t start_wall = clock_ns(CLOCK_MONOTONIC);

    /* (a) add, cold: init + start */
    uint64_t t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (uint64_t i = 0; i < n; i++) {
        uv_timer_init(&loop, &handles[i]);
        int err = uv_timer_start(&handles[i], on_timer, timeouts[i], 0);
        if (err != 0) {
            fprintf(stderr, "micro_timers_uv: uv_timer_start: %s\n",
                    uv_strerror(err));
            return 1;
        }
    }
    uint64_t t1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    long peak_kb = peak_rss_kb();

    /* (b) fire */
    uint64_t fire_wall0 = clock_ns(CLOCK_MONOTONIC);
    uint64_t t2 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uv_run(&loop, UV_RUN_DEFAULT);
    uint64_t t3 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t fire_wall1 = clock_ns(CLOCK_MONOTONIC);
    uint64_t expect_sum = n % 2 ? n * ((n - 1) / 2) : (n / 2) * (n - 1);
    int ok = fired == n && fired_sum == expect_sum;

    /* (c) start again (warm) then stop each, in insertion order */
    uv_update_time(&loop);
    uint64_t t4 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (uint64_t i = 0; i < n; i++)
        uv_timer_start(&handles[i], on_timer, timeouts[i], 0);
    uint64_t t5 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (uint64_t i = 0; i < n; i++)
        uv_timer_stop(&handles[i]);
    uint64_t t6 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (uv_loop_alive(&loop))
        ok = 0;

    /* extra: closing every handle, not part of the comparison */
    double close_ns = -1;
    if (do_close) {
        uint64_t c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        for (uint64_t i = 0; i < n; i++)
            uv_close((uv_handle_t *)&handles[i], NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uint64_t c1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        close_ns = (double)(c1 - c0) / (double)n;
        if (uv_loop_close(&loop) != 0)
            ok = 0;
    }
    uint64_t end_wall = clock_ns(CLOCK_MONOTONIC);

    double dn = (double)n;
    double add_ns = (double)(t1 - t0) / dn;
    double fire_ns = (double)(t3 - t2) / dn;
    printf("RESULT name=timers lib=libuv n=%llu range_ms=%llu seed=%llu"
           " add_ns=%.1f fire_ns=%.1f add_fire_ns=%.1f readd_ns=%.1f"
           " cancel_ns=%.1f fire_wall_s=%.3f close_ns=%.1f total_s=%.3f"
           " fired=%llu peak_rss_mb=%.1f bytes_per_timer=%.1f ok=%d\n",
           (unsigned long long)n, (unsigned long long)range_ms,
           (unsigned long long)seed, add_ns, fire_ns, add_ns + fire_ns,
           (double)(t5 - t4) / dn, (double)(t6 - t5) / dn,
           (double)(fire_wall1 - fire_wall0) / 1e9, close_ns,
           (double)(end_wall - start_wall) / 1e9, (unsigned long long)fired,
           (double)peak_kb / 1024.0,
           (double)(peak_kb - rss_before_kb) * 1024.0 / dn, ok);
    free(timeouts);
    free(handles);
    return ok ? 0 : 1;
}
