/*
 * micro_schedule.c - cross-thread em_schedule micro-benchmark.
 *
 * What: the main thread runs the loop (em_run); a second thread is the
 * producer. Two modes, both in one run:
 *   burst     the producer calls em_schedule K times (default 1,000,000) as
 *             fast as it can; each callback checks that tasks arrive in call
 *             order and the last one stops the loop. Reports end-to-end
 *             ops/s and ns/op (producer's first call to the loop running the
 *             last task) and the producer's own ns per em_schedule call.
 *   pingpong  the producer schedules one task and blocks on an eventfd that
 *             the task writes, P times (default 100,000): the round trip
 *             of a wakeup each way. Reports mean, p50 and p99 in us.
 *   raw       the same round trip without libem (the producer writes one
 *             eventfd, a plain thread blocked in read answers on another),
 *             as the floor that pingpong is to be compared with: in a VM a
 *             cross-CPU wakeup alone can cost 100+ us.
 * With two or more CPUs allowed, the loop thread is pinned to the first and
 * the producer to the second (so pingpong measures a cross-core wakeup, not
 * a context switch on one CPU); -A leaves placement to the scheduler.
 * Prints one line: RESULT name=schedule ... ok=1|0.
 *
 * Usage: micro_schedule [-k K] [-p P] [-A]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "em.h"

struct bench {
    em_loop *loop;
    uint64_t k;
    uint64_t p;
    int producer_cpu; /* -1: not pinned */
    /* burst */
    uint64_t next_expected; /* loop thread only */
    uint64_t order_errors;
    uint64_t schedule_errors;
    uint64_t t_start;
    uint64_t t_producer_done;
    uint64_t t_last_task;
    /* pingpong */
    int efd;
    uint32_t *rtt_ns;
};

static struct bench g_bench;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pin_self(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* ---- burst ------------------------------------------------------------ */

static void on_burst_task(em_loop *loop, void *arg)
{
    uint64_t index = (uint64_t)(uintptr_t)arg;

    if (index != g_bench.next_expected)
        g_bench.order_errors++;
    g_bench.next_expected = index + 1;
    if (g_bench.next_expected == g_bench.k) {
        g_bench.t_last_task = now_ns();
        em_stop(loop);
    }
}

static void *burst_producer(void *unused)
{
    (void)unused;
    struct bench *b = &g_bench;
    pin_self(b->producer_cpu);
    b->t_start = now_ns();
    for (uint64_t i = 0; i < b->k; i++) {
        /* -ENOMEM is the only failure; retry rather than lose a task */
        while (em_schedule(b->loop, on_burst_task, (void *)(uintptr_t)i) != 0)
            b->schedule_errors++;
    }
    b->t_producer_done = now_ns();
    return NULL;
}

/* ---- pingpong --------------------------------------------------------- */

static void on_ping_task(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    uint64_t one = 1;
    if (write(g_bench.efd, &one, sizeof(one)) != sizeof(one))
        g_bench.schedule_errors++;
}

static void *pingpong_producer(void *unused)
{
    (void)unused;
    struct bench *b = &g_bench;
    pin_self(b->producer_cpu);
    for (uint64_t i = 0; i < b->p; i++) {
        uint64_t value;
        uint64_t t0 = now_ns();
        if (em_schedule(b->loop, on_ping_task, NULL) != 0) {
            b->schedule_errors++;
            break;
        }
        while (read(b->efd, &value, sizeof(value)) < 0 && errno == EINTR)
            ;
        uint64_t rtt = now_ns() - t0;
        b->rtt_ns[i] = rtt > UINT32_MAX ? UINT32_MAX : (uint32_t)rtt;
    }
    em_stop(b->loop);
    return NULL;
}

/* ---- raw eventfd round trip (no libem), the floor for pingpong ------ */

static int raw_request_fd;

static void *raw_echo(void *arg)
{
    int loop_cpu = *(int *)arg;
    pin_self(loop_cpu);
    for (;;) {
        uint64_t value;
        if (read(raw_request_fd, &value, sizeof(value)) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (value > 1)
            break; /* the producer is done */
        uint64_t one = 1;
        if (write(g_bench.efd, &one, sizeof(one)) != sizeof(one))
            break;
    }
    return NULL;
}

/* Returns the mean round trip in us, or -1. */
static double raw_round_trip_us(int loop_cpu)
{
    struct bench *b = &g_bench;
    pthread_t thread;
    raw_request_fd = eventfd(0, EFD_CLOEXEC);
    if (raw_request_fd < 0 ||
        pthread_create(&thread, NULL, raw_echo, &loop_cpu) != 0)
        return -1;
    pin_self(b->producer_cpu);
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < b->p; i++) {
        uint64_t value = 1;
        if (write(raw_request_fd, &value, sizeof(value)) != sizeof(value))
            break;
        while (read(b->efd, &value, sizeof(value)) < 0 && errno == EINTR)
            ;
    }
    double mean_us = (double)(now_ns() - t0) / (double)b->p / 1e3;
    uint64_t quit = 2;
    if (write(raw_request_fd, &quit, sizeof(quit)) != sizeof(quit))
        mean_us = -1;
    pthread_join(thread, NULL);
    close(raw_request_fd);
    return mean_us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* ---- main ------------------------------------------------------------- */

/* The first two CPUs this process may run on, or -1. */
static void pick_cpus(int *loop_cpu, int *producer_cpu)
{
    cpu_set_t set;
    *loop_cpu = *producer_cpu = -1;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return;
    int found[2] = {-1, -1};
    int count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && count < 2; cpu++) {
        if (CPU_ISSET(cpu, &set))
            found[count++] = cpu;
    }
    if (count == 2) {
        *loop_cpu = found[0];
        *producer_cpu = found[1];
    }
}

static int run_with_producer(void *(*producer)(void *))
{
    pthread_t thread;
    int err = pthread_create(&thread, NULL, producer, NULL);
    if (err != 0) {
        fprintf(stderr, "micro_schedule: pthread_create: %s\n", strerror(err));
        return -1;
    }
    err = em_run(g_bench.loop);
    pthread_join(thread, NULL);
    if (err < 0) {
        fprintf(stderr, "micro_schedule: em_run: %s\n", em_strerror(err));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct bench *b = &g_bench;
    int pin = 1;
    int opt;

    b->k = 1000000;
    b->p = 100000;
    while ((opt = getopt(argc, argv, "k:p:Ah")) != -1) {
        switch (opt) {
        case 'k': b->k = strtoull(optarg, NULL, 10); break;
        case 'p': b->p = strtoull(optarg, NULL, 10); break;
        case 'A': pin = 0; break;
        default:
            fprintf(stderr, "usage: micro_schedule [-k K] [-p P] [-A]\n");
            return 2;
        }
    }
    if (b->k == 0 || b->p == 0) {
        fprintf(stderr, "micro_schedule: -k and -p must be positive\n");
        return 2;
    }
    int loop_cpu = -1;
    b->producer_cpu = -1;
    if (pin)
        pick_cpus(&loop_cpu, &b->producer_cpu);
    pin_self(loop_cpu);

    b->efd = eventfd(0, EFD_CLOEXEC);
    b->rtt_ns = malloc(b->p * sizeof(*b->rtt_ns));
    int err = em_loop_new(&b->loop);
    if (b->efd < 0 || b->rtt_ns == NULL || err < 0) {
        fprintf(stderr, "micro_schedule: setup failed\n");
        return 1;
    }

    if (run_with_producer(burst_producer) < 0)
        return 1;
    uint64_t burst_ns = b->t_last_task - b->t_start;
    uint64_t producer_ns = b->t_producer_done - b->t_start;
    uint64_t burst_done = b->next_expected;

    if (run_with_producer(pingpong_producer) < 0)
        return 1;
    double sum = 0;
    for (uint64_t i = 0; i < b->p; i++)
        sum += b->rtt_ns[i];
    qsort(b->rtt_ns, b->p, sizeof(*b->rtt_ns), cmp_u32);
    double mean_us = sum / (double)b->p / 1e3;
    double p50_us = b->rtt_ns[b->p / 2] / 1e3;
    double p99_us = b->rtt_ns[(b->p * 99) / 100] / 1e3;

    /* raw runs on this thread: move it to the producer's CPU meanwhile */
    double raw_us = raw_round_trip_us(loop_cpu);

    int ok = burst_done == b->k && b->order_errors == 0 &&
             b->schedule_errors == 0;
    printf("RESULT name=schedule k=%llu ops_per_s=%.0f ns_per_op=%.1f"
           " producer_ns_per_op=%.1f order_errors=%llu pingpong=%llu"
           " rt_mean_us=%.2f rt_p50_us=%.2f rt_p99_us=%.2f raw_rt_mean_us=%.2f pinned=%s ok=%d\n",
           (unsigned long long)b->k, (double)b->k * 1e9 / (double)burst_ns,
           (double)burst_ns / (double)b->k,
           (double)producer_ns / (double)b->k,
           (unsigned long long)b->order_errors, (unsigned long long)b->p,
           mean_us, p50_us, p99_us, raw_us, loop_cpu >= 0 ? "yes" : "no", ok);
    em_loop_free(b->loop);
    close(b->efd);
    free(b->rtt_ns);
    return ok ? 0 : 1;
}
