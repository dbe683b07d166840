/*
 * test_timers.c - one-shot and periodic timers: firing time, order by
 * deadline then by insertion, cancellation (before, during and after firing,
 * stale ids against reused slots), periodic schedules that neither drift nor
 * burst, 0-second timers that re-add themselves without starving the poll,
 * invalid arguments, a million timers, and (white-box, through internal.h)
 * the heap's deadlines and single-pass rule on a synthetic clock.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h"

#define MS (1000000ull) /* ns */

/* A fixed-seed xorshift: the "random" deadlines are the same every run. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t fired;

static void count_cb(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    fired++;
}

static void stop_cb(em_loop *loop, void *arg)
{
    (void)arg;
    cr_assert_eq(em_stop(loop), 0);
}

/* ---- firing time ------------------------------------------------------ */

static double fire_loop_time;
static double fire_real_time;
static int fire_flag;

static void note_time_cb(em_loop *loop, void *arg)
{
    (void)arg;
    fire_loop_time = em_now(loop);
    fire_real_time = th_now();
    fire_flag = 1;
    fired++;
}

Test(timers, one_shot_fires_once_after_its_delay, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    double t0 = em_update_time(loop);
    em_timer_id id = 0;
    cr_assert_eq(em_add_timer(loop, 0.05, note_time_cb, NULL, &id), 0);
    cr_assert_neq(id, 0);
    cr_assert_eq(em_timer_count(loop), 1);

    th_run_until(loop, &fire_flag, 5);
    cr_assert_geq(fire_loop_time - t0, 0.05 - 1e-9, "fired early: %.6f s",
                  fire_loop_time - t0);
    cr_assert_geq(fire_real_time - t0, 0.05 - 1e-9);
    cr_assert_lt(fire_real_time - t0, 0.05 + 0.5, "fired late: %.6f s",
                 fire_real_time - t0);
    cr_assert_eq(em_timer_count(loop), 0);

    th_run_for(loop, 0.1);
    cr_assert_eq(fired, 1, "a one-shot timer fired %zu times", fired);
    cr_assert_eq(em_cancel_timer(loop, id), -ENOENT);
    th_free_loop(loop);
}

Test(timers, zero_seconds_fires_on_the_next_turn, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_add_timer(loop, 0, count_cb, NULL, NULL), 0);
    double t0 = th_now();
    cr_assert_geq(em_run_once(loop, 1000), 0);
    cr_assert_eq(fired, 1);
    cr_assert_lt(th_now() - t0, 0.5, "a due timer must not wait in poll");
    th_free_loop(loop);
}

/* ---- order ------------------------------------------------------------ */

static uint64_t *order_keys; /* (delay_us << 32) | insertion index */
static size_t order_count;
static double order_t0;

static void order_cb(em_loop *loop, void *arg)
{
    uint64_t key = (uint64_t)(uintptr_t)arg;
    double delay = (double)(key >> 32) * 1e-6;
    cr_assert_geq(em_now(loop) - order_t0, delay - 1e-6,
                  "timer of %.6f s fired at %.6f s", delay,
                  em_now(loop) - order_t0);
    order_keys[order_count++] = key;
}

/* Adds n timers with random whole-microsecond delays below max_us, runs
 * them all, and checks they fired by deadline, ties by insertion. */
static void check_order(size_t n, uint64_t max_us, double max_seconds)
{
    em_loop *loop = th_loop();
    order_keys = malloc(n * sizeof(*order_keys));
    cr_assert_not_null(order_keys);
    order_count = 0;
    order_t0 = em_update_time(loop);
    for (size_t i = 0; i < n; i++) {
        uint64_t us = rng_next() % max_us;
        void *key = (void *)(uintptr_t)((us << 32) | i);
        cr_assert_eq(em_add_timer(loop, (double)us * 1e-6, order_cb, key, NULL),
                     0);
    }
    cr_assert_eq(em_timer_count(loop), n);

    th_run_until_size(loop, &order_count, n, max_seconds);
    for (size_t i = 1; i < n; i++) {
        cr_assert_lt(order_keys[i - 1], order_keys[i],
                     "fire %zu: timer %llu us #%llu after %llu us #%llu", i,
                     (unsigned long long)(order_keys[i] >> 32),
                     (unsigned long long)(order_keys[i] & UINT32_MAX),
                     (unsigned long long)(order_keys[i - 1] >> 32),
                     (unsigned long long)(order_keys[i - 1] & UINT32_MAX));
    }
    cr_assert_eq(em_timer_count(loop), 0);
    free(order_keys);
    th_free_loop(loop);
}

Test(timers, random_deadlines_fire_in_deadline_order, .timeout = TH_TIMEOUT(10))
{
    check_order(2000, 100000, 5);
}

Test(timers, equal_deadlines_fire_in_insertion_order, .timeout = TH_TIMEOUT(10))
{
    /* max_us 1: every timer has a delay of 0 us. */
    check_order(500, 1, 5);
    /* and a few distinct deadlines, each shared by many timers */
    check_order(3000, 4, 5);
}

Test(timers, a_million_timers_all_fire_in_order, .timeout = TH_TIMEOUT(30))
{
    check_order(1000000, 200000, 25);
}

/* ---- cancellation ----------------------------------------------------- */

Test(timers, cancel_before_firing_means_never, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_timer_id id = 0;
    cr_assert_eq(em_add_timer(loop, 0.02, count_cb, NULL, &id), 0);
    cr_assert_eq(em_cancel_timer(loop, id), 0);
    cr_assert_eq(em_timer_count(loop), 0);
    cr_assert_eq(em_cancel_timer(loop, id), -ENOENT);
    th_run_for(loop, 0.1);
    cr_assert_eq(fired, 0, "a cancelled timer fired");
    th_free_loop(loop);
}

Test(timers, stale_id_never_cancels_a_timer_reusing_its_slot,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_timer_id old_id = 0;
    em_timer_id new_id = 0;
    cr_assert_eq(em_add_timer(loop, 0, count_cb, NULL, &old_id), 0);
    cr_assert_geq(em_run_once(loop, 0), 0);
    cr_assert_eq(fired, 1);

    cr_assert_eq(em_add_timer(loop, 0.01, count_cb, NULL, &new_id), 0);
    cr_assert_eq(old_id & UINT32_MAX, new_id & UINT32_MAX,
                 "the freed slot should be reused");
    cr_assert_neq(old_id, new_id);
    cr_assert_eq(em_cancel_timer(loop, old_id), -ENOENT);
    cr_assert_eq(em_timer_count(loop), 1);

    th_run_until_size(loop, &fired, 2, 5);
    cr_assert_eq(em_cancel_timer(loop, new_id), -ENOENT);
    cr_assert_eq(em_cancel_timer(loop, old_id), -ENOENT);
    th_free_loop(loop);
}

Test(timers, unknown_ids_are_enoent, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_timer_id id = 0;
    cr_assert_eq(em_cancel_timer(loop, 0), -ENOENT);
    cr_assert_eq(em_cancel_timer(loop, 1), -ENOENT);
    cr_assert_eq(em_cancel_timer(loop, UINT64_MAX), -ENOENT);
    cr_assert_eq(em_add_timer(loop, 1, count_cb, NULL, &id), 0);
    cr_assert_eq(em_cancel_timer(loop, id + (UINT64_C(1) << 32)), -ENOENT);
    cr_assert_eq(em_cancel_timer(loop, id + 1), -ENOENT);
    cr_assert_eq(em_timer_count(loop), 1);
    cr_assert_eq(em_cancel_timer(loop, id), 0);
    th_free_loop(loop);
}

static em_timer_id self_id;
static int self_cancel_rc = 1;

static void cancel_self_cb(em_loop *loop, void *arg)
{
    (void)arg;
    fired++;
    self_cancel_rc = em_cancel_timer(loop, self_id);
}

Test(timers, one_shot_cancelling_itself_gets_enoent, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_add_timer(loop, 0, cancel_self_cb, NULL, &self_id), 0);
    th_run_until_size(loop, &fired, 1, 5);
    cr_assert_eq(self_cancel_rc, -ENOENT);
    cr_assert_eq(em_timer_count(loop), 0);
    th_free_loop(loop);
}

static em_timer_id victim_id;
static int victim_cancel_rc = 1;

static void cancel_victim_cb(em_loop *loop, void *arg)
{
    (void)arg;
    victim_cancel_rc = em_cancel_timer(loop, victim_id);
}

Test(timers, callback_cancels_a_timer_due_in_the_same_pass,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_add_timer(loop, 0.01, cancel_victim_cb, NULL, NULL), 0);
    cr_assert_eq(em_add_timer(loop, 0.01, count_cb, NULL, &victim_id), 0);
    cr_assert_eq(em_add_timer(loop, 0.02, stop_cb, NULL, NULL), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(victim_cancel_rc, 0);
    cr_assert_eq(fired, 0, "the cancelled timer fired");
    th_free_loop(loop);
}

Test(timers, cancelling_random_timers_keeps_the_rest_in_order,
     .timeout = TH_TIMEOUT(10))
{
    enum { N = 20000 };
    em_loop *loop = th_loop();
    static em_timer_id ids[N];
    static char cancelled[N];
    size_t live = 0;

    order_keys = malloc(N * sizeof(*order_keys));
    cr_assert_not_null(order_keys);
    order_t0 = em_update_time(loop);
    for (size_t i = 0; i < N; i++) {
        uint64_t us = rng_next() % 50000;
        void *key = (void *)(uintptr_t)((us << 32) | i);
        cr_assert_eq(
            em_add_timer(loop, (double)us * 1e-6, order_cb, key, &ids[i]), 0);
        live++;
        size_t victim = rng_next() % (i + 1);
        if (rng_next() % 2 && !cancelled[victim]) {
            cr_assert_eq(em_cancel_timer(loop, ids[victim]), 0);
            cancelled[victim] = 1;
            live--;
        }
    }
    cr_assert_eq(em_timer_count(loop), live);

    th_run_until_size(loop, &order_count, live, 5);
    for (size_t i = 0; i < order_count; i++) {
        size_t index = order_keys[i] & UINT32_MAX;
        cr_assert_eq(cancelled[index], 0, "cancelled timer #%zu fired", index);
        if (i > 0)
            cr_assert_lt(order_keys[i - 1], order_keys[i], "fire %zu", i);
    }
    th_run_for(loop, 0.05);
    cr_assert_eq(order_count, live);
    free(order_keys);
    th_free_loop(loop);
}

Test(timers, a_million_timers_added_then_cancelled, .timeout = TH_TIMEOUT(30))
{
    enum { N = 1000000 };
    em_loop *loop = th_loop();
    em_timer_id *ids = malloc(N * sizeof(*ids));
    cr_assert_not_null(ids);
    for (size_t i = 0; i < N; i++) {
        double delay = (double)(rng_next() % 50000) * 1e-6;
        cr_assert_eq(em_add_timer(loop, delay, count_cb, NULL, &ids[i]), 0);
    }
    cr_assert_eq(em_timer_count(loop), N);
    for (size_t i = N - 1; i > 0; i--) { /* cancel in a random order */
        size_t j = rng_next() % (i + 1);
        em_timer_id swap = ids[i];
        ids[i] = ids[j];
        ids[j] = swap;
    }
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(em_cancel_timer(loop, ids[i]), 0);
    cr_assert_eq(em_timer_count(loop), 0);
    th_run_for(loop, 0.1);
    cr_assert_eq(fired, 0, "%zu cancelled timers fired", fired);
    free(ids);
    th_free_loop(loop);
}

/* ---- periodic timers -------------------------------------------------- */

#define PERIOD_NS (20 * MS)

static uint64_t periodic_t0;
static uint64_t periodic_last_deadline;
static size_t periodic_ticks;
static size_t periodic_stop_at;
static em_timer_id periodic_id;

/* White-box: this is the loop's only timer, so the heap's earliest
 * deadline is its next tick, already rescheduled when the callback runs. */
static void periodic_cb(em_loop *loop, void *arg)
{
    int sleep_for = (int)(intptr_t)arg;
    uint64_t next = em__timers_next(loop->timers);

    periodic_ticks++;
    cr_assert_gt(next, loop->now_ns, "next tick not in the future");
    cr_assert_leq(next - loop->now_ns, PERIOD_NS);
    cr_assert_eq((next - periodic_t0) % PERIOD_NS, 0,
                 "tick %zu: next deadline %llu ns off the schedule",
                 periodic_ticks,
                 (unsigned long long)((next - periodic_t0) % PERIOD_NS));
    cr_assert_gt(next, periodic_last_deadline);
    periodic_last_deadline = next;
    /* every tick fired was due: one tick per whole period, no bursts */
    cr_assert_leq(periodic_ticks * PERIOD_NS, loop->now_ns - periodic_t0);
    if (periodic_ticks == periodic_stop_at)
        cr_assert_eq(em_cancel_timer(loop, periodic_id), 0);
    th_sleep_ms(periodic_ticks == 3 ? 3 * sleep_for : sleep_for);
}

static em_loop *periodic_start(int sleep_ms_per_tick)
{
    em_loop *loop = th_loop();
    em_update_time(loop);
    periodic_t0 = loop->now_ns;
    periodic_last_deadline = periodic_t0;
    cr_assert_eq(em_add_periodic_timer(loop, PERIOD_NS / 1e9, periodic_cb,
                                       (void *)(intptr_t)sleep_ms_per_tick,
                                       &periodic_id),
                 0);
    return loop;
}

Test(timers, periodic_keeps_its_schedule_without_drift,
     .timeout = TH_TIMEOUT(10))
{
    enum { TICKS = 10 };
    em_loop *loop = periodic_start(5);
    th_run_until_size(loop, &periodic_ticks, TICKS, 5);
    /* A drifting timer (next = callback end + period) would need 25 ms a
     * tick; ours needs 20. The deadline phase is checked exactly above. */
    double elapsed = em_now(loop) - (double)periodic_t0 / 1e9;
    cr_assert_geq(elapsed, TICKS * 0.02 - 1e-6);
    /* Loose: a loaded machine may delay a tick past a whole period, and
     * then the schedule rightly skips one. */
    cr_assert_leq(periodic_last_deadline - periodic_t0,
                  (uint64_t)(TICKS + 4) * PERIOD_NS,
                  "the schedule ran ahead of its ticks");
    cr_assert_eq(em_cancel_timer(loop, periodic_id), 0);
    th_free_loop(loop);
}

Test(timers, periodic_skips_missed_ticks_instead_of_bursting,
     .timeout = TH_TIMEOUT(10))
{
    /* tick 3 sleeps 45 ms: the deadlines it slept through are skipped
     * (checked in periodic_cb: one tick per elapsed period at most). */
    em_loop *loop = periodic_start(15);
    th_run_until_size(loop, &periodic_ticks, 6, 5);
    cr_assert_geq(periodic_last_deadline - periodic_t0, 8 * PERIOD_NS,
                  "tick 3 slept past two deadlines; they must be skipped");
    cr_assert_eq(em_cancel_timer(loop, periodic_id), 0);
    th_free_loop(loop);
}

Test(timers, periodic_cancelled_in_its_own_callback_stops,
     .timeout = TH_TIMEOUT(10))
{
    periodic_stop_at = 3;
    em_loop *loop = periodic_start(0);
    th_run_until_size(loop, &periodic_ticks, 3, 5);
    cr_assert_eq(em_timer_count(loop), 0);
    th_run_for(loop, 0.1);
    cr_assert_eq(periodic_ticks, 3, "ticked after being cancelled");
    cr_assert_eq(em_cancel_timer(loop, periodic_id), -ENOENT);
    th_free_loop(loop);
}

/* ---- re-adding and starvation ----------------------------------------- */

static void readd_cb(em_loop *loop, void *arg)
{
    (void)arg;
    fired++;
    cr_assert_eq(em_add_timer(loop, 0, readd_cb, NULL, NULL), 0);
}

Test(timers, zero_second_timer_readding_itself_does_not_starve,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_add_timer(loop, 0, readd_cb, NULL, NULL), 0);
    cr_assert_eq(em_add_timer(loop, 0.05, stop_cb, NULL, NULL), 0);
    double t0 = th_now();
    cr_assert_eq(em_run(loop), 0);
    cr_assert_lt(th_now() - t0, 2.0);
    cr_assert_gt(fired, 1, "the re-added timer ran only %zu times", fired);

    size_t before = fired;
    cr_assert_geq(em_run_once(loop, 0), 0);
    cr_assert_eq(fired, before + 1, "one run per turn, not a loop");
    cr_assert_eq(em_timer_count(loop), 1);
    th_free_loop(loop);
}

/* ---- arguments and counts --------------------------------------------- */

Test(timers, invalid_arguments_are_einval, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_timer_id id = 42;
    double bad[] = {-1.0, -1e-9, NAN, INFINITY, -INFINITY};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(em_add_timer(loop, bad[i], count_cb, NULL, &id), -EINVAL,
                     "seconds %f", bad[i]);
        cr_assert_eq(em_add_periodic_timer(loop, bad[i], count_cb, NULL, &id),
                     -EINVAL, "seconds %f", bad[i]);
    }
    cr_assert_eq(em_add_periodic_timer(loop, 0, count_cb, NULL, &id), -EINVAL);
    cr_assert_eq(em_add_timer(loop, 1, NULL, NULL, &id), -EINVAL);
    cr_assert_eq(em_add_periodic_timer(loop, 1, NULL, NULL, &id), -EINVAL);
    cr_assert_eq(em_add_timer(NULL, 1, count_cb, NULL, &id), -EINVAL);
    cr_assert_eq(em_add_periodic_timer(NULL, 1, count_cb, NULL, &id), -EINVAL);
    cr_assert_eq(em_cancel_timer(NULL, 1), -EINVAL);
    cr_assert_eq(em_timer_count(NULL), 0);
    cr_assert_eq(id, 42, "a failed add must not store an id");
    cr_assert_eq(em_timer_count(loop), 0);

    /* huge but finite delays are accepted and simply never come due */
    cr_assert_eq(em_add_timer(loop, 1e300, count_cb, NULL, NULL), 0);
    cr_assert_eq(em_add_periodic_timer(loop, 1e300, count_cb, NULL, NULL), 0);
    cr_assert_eq(em_add_timer(loop, 0, count_cb, NULL, NULL), 0);
    cr_assert_geq(em_run_once(loop, 0), 0);
    cr_assert_eq(fired, 1);
    cr_assert_eq(em_timer_count(loop), 2);
    th_free_loop(loop);
}

Test(timers, timer_count_follows_adds_fires_and_cancels,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_timer_id ids[3];
    cr_assert_eq(em_timer_count(loop), 0);
    cr_assert_eq(em_add_timer(loop, 0, count_cb, NULL, &ids[0]), 0);
    cr_assert_eq(em_add_timer(loop, 10, count_cb, NULL, &ids[1]), 0);
    cr_assert_eq(em_add_periodic_timer(loop, 10, count_cb, NULL, &ids[2]), 0);
    cr_assert_eq(em_timer_count(loop), 3);
    cr_assert_eq(em_cancel_timer(loop, ids[1]), 0);
    cr_assert_eq(em_timer_count(loop), 2);
    cr_assert_geq(em_run_once(loop, 0), 0);
    cr_assert_eq(fired, 1);
    cr_assert_eq(em_timer_count(loop), 1, "the periodic timer stays");
    cr_assert_eq(em_cancel_timer(loop, ids[2]), 0);
    cr_assert_eq(em_timer_count(loop), 0);
    th_free_loop(loop);
}

/* ---- white-box: the heap on a synthetic clock ------------------------- */

Test(timers, next_deadline_has_nanosecond_resolution, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    uint64_t now = loop->now_ns;
    cr_assert_eq(em__timers_next(loop->timers), UINT64_MAX);
    cr_assert_eq(em_add_timer(loop, 0.25, count_cb, NULL, NULL), 0);
    cr_assert_eq(em__timers_next(loop->timers), now + 250 * MS);
    cr_assert_eq(em_add_timer(loop, 1.5e-6, count_cb, NULL, NULL), 0);
    cr_assert_eq(em__timers_next(loop->timers), now + 1500);
    cr_assert_eq(em_add_timer(loop, 1e-9, count_cb, NULL, NULL), 0);
    cr_assert_eq(em__timers_next(loop->timers), now + 1);
    th_free_loop(loop);
}

Test(timers, one_pass_runs_only_timers_present_when_it_began,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_add_timer(loop, 0, readd_cb, NULL, NULL), 0);
    cr_assert_eq(em_add_timer(loop, 0, readd_cb, NULL, NULL), 0);
    em__timers_run(loop);
    cr_assert_eq(fired, 2);
    cr_assert_eq(em__timers_next(loop->timers), loop->now_ns,
                 "the re-added timers are due, for the next pass");
    em__timers_run(loop);
    cr_assert_eq(fired, 4);
    th_free_loop(loop);
}

Test(timers, periodic_schedule_on_a_synthetic_clock, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    uint64_t t0 = loop->now_ns;
    cr_assert_eq(em_add_periodic_timer(loop, 0.02, count_cb, NULL, NULL), 0);
    cr_assert_eq(em__timers_next(loop->timers), t0 + 20 * MS);

    loop->now_ns = t0 + 19 * MS;
    em__timers_run(loop);
    cr_assert_eq(fired, 0, "fired 1 ms early");

    loop->now_ns = t0 + 25 * MS; /* late by 5 ms: keep the phase */
    em__timers_run(loop);
    cr_assert_eq(fired, 1);
    cr_assert_eq(em__timers_next(loop->timers), t0 + 40 * MS);

    loop->now_ns = t0 + 130 * MS; /* 60, 80, 100 and 120 were missed */
    em__timers_run(loop);
    cr_assert_eq(fired, 2, "missed ticks must not fire in a burst");
    cr_assert_eq(em__timers_next(loop->timers), t0 + 140 * MS);

    loop->now_ns = t0 + 140 * MS; /* exactly on the deadline */
    em__timers_run(loop);
    cr_assert_eq(fired, 3);
    cr_assert_eq(em__timers_next(loop->timers), t0 + 160 * MS);
    th_free_loop(loop);
}

/* ---- connections closed in a timer are reaped after it ---------------- */

static em_conn *reap_conn;
static int reap_unbound;
static int reap_seen_in_second_timer = -1;

static void reap_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    reap_conn = conn;
}

static void reap_unbind(em_conn *conn, int reason)
{
    (void)conn;
    (void)reason;
    reap_unbound = 1;
}

static const em_handler reap_handler = {
    .post_init = reap_post_init,
    .unbind = reap_unbind,
};

static void close_conn_cb(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    cr_assert_eq(em_close_connection(reap_conn, 0), 0);
    cr_assert_eq(reap_unbound, 0, "unbind inside em_close_connection");
}

static void check_reaped_cb(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    reap_seen_in_second_timer = reap_unbound;
}

Test(timers, connection_closed_in_a_timer_unbinds_before_the_next,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_server *server = th_start_server(loop, &reap_handler, NULL);
    int fd = th_client_connect(th_listen_port(server));
    double limit = th_now() + TH_TIMEOUT(5);
    while (reap_conn == NULL) {
        cr_assert_lt(th_now(), limit, "the connection was never accepted");
        cr_assert_geq(em_run_once(loop, 10), 0);
    }

    cr_assert_eq(em_add_timer(loop, 0.01, close_conn_cb, NULL, NULL), 0);
    cr_assert_eq(em_add_timer(loop, 0.01, check_reaped_cb, NULL, NULL), 0);
    th_run_until(loop, &reap_unbound, 5);
    while (reap_seen_in_second_timer < 0) {
        cr_assert_lt(th_now(), limit, "the second timer never ran");
        cr_assert_geq(em_run_once(loop, 10), 0);
    }
    cr_assert_eq(reap_seen_in_second_timer, 1,
                 "unbind must run right after the timer that closed it");
    close(fd);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}
