/*
 * test_defer.c - the loop's thread pool: em_defer's order and results,
 * many jobs, lazily started and joined threads, the size limit, cancelling
 * before and while a job runs, done callbacks that defer and cancel,
 * em_loop_free with jobs queued and running, em_connect's resolution
 * sharing the pool, bad arguments and descriptor counts.
 *
 * Assertions run only on the test's thread: work functions record what
 * they saw in atomics that the test checks afterwards.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* ---- a recording job --------------------------------------------------- */

#define MAX_JOBS 2000

struct world {
    atomic_int started[MAX_JOBS]; /* work began (order stamp + 1) */
    atomic_int next_stamp;
    atomic_int running;     /* work functions inside now */
    atomic_int max_running; /* most at once */
    atomic_int gate_open;   /* gated jobs wait for this */
    atomic_int gated_in;    /* gated jobs that entered their work */
    int done_calls[MAX_JOBS];
    int done_status[MAX_JOBS];
    intptr_t done_result[MAX_JOBS];
    int done_order[MAX_JOBS];
    int done_count;
    em_defer_id ids[MAX_JOBS];
};

struct job {
    struct world *w;
    int index;
    int gated;
};

static struct job jobs[MAX_JOBS];

static void *record_work(void *arg)
{
    struct job *j = arg;
    struct world *w = j->w;
    int now = atomic_fetch_add(&w->running, 1) + 1;
    int max = atomic_load(&w->max_running);
    while (now > max &&
           !atomic_compare_exchange_weak(&w->max_running, &max, now))
        ;
    atomic_store(&w->started[j->index],
                 atomic_fetch_add(&w->next_stamp, 1) + 1);
    if (j->gated) {
        atomic_fetch_add(&w->gated_in, 1);
        while (!atomic_load(&w->gate_open))
            usleep(1000);
    }
    atomic_fetch_sub(&w->running, 1);
    return (void *)(intptr_t)(j->index * 10 + 7);
}

static void record_done(em_loop *loop, void *arg, void *result, int status)
{
    (void)loop;
    struct job *j = arg;
    struct world *w = j->w;
    w->done_calls[j->index]++;
    w->done_status[j->index] = status;
    w->done_result[j->index] = (intptr_t)result;
    w->done_order[w->done_count++] = j->index;
}

static void submit(em_loop *loop, struct world *w, int index, int gated)
{
    jobs[index] = (struct job){.w = w, .index = index, .gated = gated};
    int err =
        em_defer(loop, record_work, record_done, &jobs[index], &w->ids[index]);
    cr_assert_eq(err, 0, "em_defer %d: %s", index, em_strerror(err));
    cr_assert_neq(w->ids[index], 0);
}

/* Runs the loop until every one of n gated jobs has entered its work. */
static void wait_gated(em_loop *loop, struct world *w, int n)
{
    double deadline = th_now() + TH_TIMEOUT(5.0);
    while (atomic_load(&w->gated_in) < n) {
        cr_assert_lt(th_now(), deadline, "gated job never started");
        em_run_once(loop, 1);
    }
}

/* ---- results and order ------------------------------------------------- */

Test(defer, done_gets_the_result_on_the_loop_thread, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    submit(loop, &w, 0, 0);
    cr_assert_eq(w.done_count, 0, "done ran inside em_defer");
    cr_assert_eq(em_defer_count(loop), 1);
    th_run_until_count(loop, &w.done_count, 1, 5.0);
    cr_assert_eq(w.done_status[0], 0);
    cr_assert_eq(w.done_result[0], 7);
    cr_assert_eq(em_defer_count(loop), 0);
    /* The id is stale now. */
    cr_assert_eq(em_cancel_defer(loop, w.ids[0]), -ENOENT);
    th_free_loop(loop);
}

Test(defer, one_thread_runs_jobs_in_call_order, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_set_threadpool_size(loop, 1), 0);
    cr_assert_eq(em_threadpool_size(loop), 1);
    enum { N = 50 };
    for (int i = 0; i < N; i++)
        submit(loop, &w, i, 0);
    th_run_until_count(loop, &w.done_count, N, 10.0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(atomic_load(&w.started[i]), i + 1, "job %d started %d-th",
                     i, atomic_load(&w.started[i]));
        cr_assert_eq(w.done_order[i], i, "done %d was job %d", i,
                     w.done_order[i]);
        cr_assert_eq(w.done_calls[i], 1);
    }
    cr_assert_eq(atomic_load(&w.max_running), 1);
    th_free_loop(loop);
}

Test(defer, many_jobs_each_done_once_within_the_pool_size,
     .timeout = TH_TIMEOUT(30))
{
    int before = th_thread_count();
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_threadpool_size(loop), 4, "default size");
    int n = MAX_JOBS / TH_TIMEOUT_SCALE;
    for (int i = 0; i < n; i++)
        submit(loop, &w, i, 0);
    cr_assert_eq(em_defer_count(loop), (size_t)n);
    th_run_until_count(loop, &w.done_count, n, 20.0);
    cr_assert_leq(th_thread_count() - before, 4, "more threads than the size");
    cr_assert_leq(atomic_load(&w.max_running), 4);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(w.done_calls[i], 1, "job %d done %d times", i,
                     w.done_calls[i]);
        cr_assert_eq(w.done_status[i], 0);
        cr_assert_eq(w.done_result[i], i * 10 + 7, "job %d got another's", i);
    }
    th_free_loop(loop);
    cr_assert_eq(th_thread_count_settled(before), before,
                 "pool threads outlived the loop");
}

Test(defer, threads_start_lazily_and_up_to_the_size, .timeout = TH_TIMEOUT(20))
{
    int before = th_thread_count();
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_set_threadpool_size(loop, 3), 0);
    cr_assert_eq(th_thread_count(), before, "a thread before any work");

    /* Three gated jobs hold three threads; a fourth job waits. */
    for (int i = 0; i < 4; i++)
        submit(loop, &w, i, 1);
    wait_gated(loop, &w, 3);
    th_run_for(loop, 0.05);
    cr_assert_eq(atomic_load(&w.gated_in), 3, "the size was exceeded");
    cr_assert_eq(th_thread_count() - before, 3);
    cr_assert_eq(em_set_threadpool_size(loop, 2), -EBUSY,
                 "shrunk below the started threads");

    /* Growing starts a thread for the waiting job at once. */
    cr_assert_eq(em_set_threadpool_size(loop, 5), 0);
    wait_gated(loop, &w, 4);
    cr_assert_eq(th_thread_count() - before, 4, "started more than needed");
    atomic_store(&w.gate_open, 1);
    th_run_until_count(loop, &w.done_count, 4, 5.0);
    th_free_loop(loop);
    cr_assert_eq(th_thread_count_settled(before), before);
}

/* ---- cancelling -------------------------------------------------------- */

Test(defer, cancel_before_and_while_running, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_set_threadpool_size(loop, 1), 0);
    submit(loop, &w, 0, 1); /* holds the only thread */
    submit(loop, &w, 1, 0);
    submit(loop, &w, 2, 0);
    wait_gated(loop, &w, 1);

    cr_assert_eq(em_cancel_defer(loop, w.ids[0]), -EBUSY, "running job");
    cr_assert_eq(em_cancel_defer(loop, w.ids[1]), 0, "queued job");
    cr_assert_eq(w.done_calls[1], 0, "done ran inside em_cancel_defer");
    cr_assert_eq(em_cancel_defer(loop, w.ids[1]), -EALREADY);
    th_run_until_count(loop, &w.done_calls[1], 1, 5.0);
    cr_assert_eq(w.done_status[1], -ECANCELED);
    cr_assert_eq(w.done_result[1], 0, "a cancelled job has no result");
    cr_assert_eq(em_cancel_defer(loop, w.ids[1]), -ENOENT, "after its done");

    atomic_store(&w.gate_open, 1);
    th_run_until_count(loop, &w.done_count, 3, 5.0);
    cr_assert_eq(w.done_status[0], 0, "a running job is not cancelled");
    cr_assert_eq(w.done_result[0], 7);
    cr_assert_eq(w.done_status[2], 0);
    cr_assert_eq(atomic_load(&w.started[1]), 0, "cancelled work ran");
    cr_assert_eq(w.done_calls[1], 1);
    th_free_loop(loop);
}

Test(defer, cancel_finished_but_undelivered_is_ebusy, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    submit(loop, &w, 0, 0);
    /* Wait without running the loop: the result waits for delivery. */
    double deadline = th_now() + TH_TIMEOUT(5.0);
    while (atomic_load(&w.started[0]) == 0 || atomic_load(&w.running) > 0) {
        cr_assert_lt(th_now(), deadline);
        usleep(1000);
    }
    cr_assert_eq(em_cancel_defer(loop, w.ids[0]), -EBUSY);
    th_run_until_count(loop, &w.done_count, 1, 5.0);
    cr_assert_eq(w.done_status[0], 0);
    th_free_loop(loop);
}

/* done functions that cancel a sibling, cancel themselves, and defer. */
struct chain {
    em_defer_id self;
    em_defer_id sibling;
    int cancel_self_rc;
    int cancel_sibling_rc;
    int remaining;
    int calls;
    int cancelled_calls;
};

static void *nothing_work(void *arg)
{
    return arg;
}

static void chain_done(em_loop *loop, void *arg, void *result, int status)
{
    struct chain *c = arg;
    (void)result;
    if (status == -ECANCELED) {
        c->cancelled_calls++;
        return;
    }
    c->calls++;
    if (c->calls == 1) {
        c->cancel_self_rc = em_cancel_defer(loop, c->self);
        c->cancel_sibling_rc = em_cancel_defer(loop, c->sibling);
    }
    if (--c->remaining > 0)
        cr_assert_eq(em_defer(loop, nothing_work, chain_done, c, &c->self), 0);
}

Test(defer, done_may_cancel_and_defer_again, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_set_threadpool_size(loop, 1), 0);
    struct chain c = {.remaining = 5};
    cr_assert_eq(em_defer(loop, nothing_work, chain_done, &c, &c.self), 0);
    submit(loop, &w, 0, 0);
    c.sibling = w.ids[0];
    /* One thread: the sibling is usually still queued when chain's done
     * runs; either way it is done exactly once. */
    th_run_until_count(loop, &c.calls, 5, 5.0);
    cr_assert_eq(c.cancel_self_rc, -ENOENT, "own id inside done");
    cr_assert(c.cancel_sibling_rc == 0 || c.cancel_sibling_rc == -EBUSY,
              "sibling: %d", c.cancel_sibling_rc);
    th_run_until_count(loop, &w.done_count, 1, 5.0);
    cr_assert_eq(w.done_calls[0], 1);
    cr_assert_eq(w.done_status[0], c.cancel_sibling_rc == 0 ? -ECANCELED : 0);
    cr_assert_eq(c.cancelled_calls, 0);
    th_free_loop(loop);
}

/* ---- em_loop_free ------------------------------------------------------ */

static void *open_gate_later(void *arg)
{
    struct world *w = arg;
    th_sleep_ms(100);
    atomic_store(&w->gate_open, 1);
    return NULL;
}

struct free_probe {
    int calls;
    int defer_rc;
};

static void probe_done(em_loop *loop, void *arg, void *result, int status)
{
    struct free_probe *p = arg;
    (void)result;
    (void)status;
    p->calls++;
    p->defer_rc = em_defer(loop, nothing_work, NULL, NULL, NULL);
}

Test(defer, free_with_jobs_queued_and_running, .timeout = TH_TIMEOUT(20))
{
    int before = th_thread_count();
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_set_threadpool_size(loop, 1), 0);
    submit(loop, &w, 0, 1);
    for (int i = 1; i < 6; i++)
        submit(loop, &w, i, 0);
    struct free_probe probe = {0};
    cr_assert_eq(em_defer(loop, nothing_work, probe_done, &probe, NULL), 0);
    wait_gated(loop, &w, 1);

    pthread_t opener;
    cr_assert_eq(pthread_create(&opener, NULL, open_gate_later, &w), 0);
    /* Waits for the running job, cancels the rest, runs every done. */
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    pthread_join(opener, NULL);
    cr_assert_eq(w.done_calls[0], 1);
    cr_assert_eq(w.done_status[0], 0, "the running job finished");
    cr_assert_eq(w.done_result[0], 7);
    for (int i = 1; i < 6; i++) {
        cr_assert_eq(w.done_calls[i], 1, "job %d", i);
        cr_assert_eq(w.done_status[i], -ECANCELED, "job %d", i);
        cr_assert_eq(atomic_load(&w.started[i]), 0, "job %d ran", i);
    }
    cr_assert_eq(probe.calls, 1);
    cr_assert_eq(probe.defer_rc, -ECANCELED, "em_defer during em_loop_free");
    cr_assert_eq(th_thread_count_settled(before), before,
                 "pool threads outlived the loop");
    cr_assert_eq(th_count_fds(), fds);
}

Test(defer, free_after_every_done_is_clean, .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    static struct world w;
    memset(&w, 0, sizeof(w));
    for (int i = 0; i < 20; i++)
        submit(loop, &w, i, 0);
    th_run_until_count(loop, &w.done_count, 20, 5.0);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}

/* ---- one pool for em_defer and em_connect ------------------------------ */

static void connected(em_conn *conn)
{
    int *flag = em_conn_arg(conn);
    *flag = 1;
    em_close_connection(conn, 0);
}

static void connect_unbind(em_conn *conn, int reason)
{
    int *flag = em_conn_arg(conn);
    if (reason != 0 && *flag == 0)
        *flag = -1;
}

static const em_handler connect_handler = {
    .connection_completed = connected,
    .unbind = connect_unbind,
};

Test(defer, name_resolution_waits_for_the_shared_pool,
     .timeout = TH_TIMEOUT(30))
{
    em_loop *loop = th_loop();
    th_echo echo = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &echo);
    static struct world w;
    memset(&w, 0, sizeof(w));
    cr_assert_eq(em_set_threadpool_size(loop, 1), 0);
    submit(loop, &w, 0, 1);
    wait_gated(loop, &w, 1);

    int completed = 0;
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(server),
                            &connect_handler, &completed, NULL),
                 0);
    th_run_for(loop, 0.2);
    cr_assert_eq(completed, 0, "resolved beside a busy one-thread pool");
    atomic_store(&w.gate_open, 1);
    th_run_until(loop, &completed, 20.0);
    cr_assert_eq(completed, 1, "connect failed");
    th_run_until_count(loop, &echo.unbinds, 1, 5.0);
    th_run_until_count(loop, &w.done_count, 1, 5.0);
    th_stop_and_free(loop, server);
}

/* ---- bad input --------------------------------------------------------- */

Test(defer, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_defer_id id = 99;
    cr_assert_eq(em_defer(NULL, nothing_work, NULL, NULL, &id), -EINVAL);
    cr_assert_eq(id, 0, "*out is cleared on failure");
    cr_assert_eq(em_defer(loop, NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(em_cancel_defer(NULL, 1), -EINVAL);
    cr_assert_eq(em_cancel_defer(loop, 0), -ENOENT);
    cr_assert_eq(em_cancel_defer(loop, 12345), -ENOENT);
    cr_assert_eq(em_cancel_defer(loop, UINT64_MAX), -ENOENT);
    cr_assert_eq(em_set_threadpool_size(NULL, 2), -EINVAL);
    cr_assert_eq(em_set_threadpool_size(loop, 0), -EINVAL);
    cr_assert_eq(em_set_threadpool_size(loop, -1), -EINVAL);
    cr_assert_eq(em_set_threadpool_size(loop, 257), -EINVAL);
    cr_assert_eq(em_set_threadpool_size(loop, 256), 0);
    cr_assert_eq(em_threadpool_size(loop), 256);
    cr_assert_eq(em_threadpool_size(NULL), -EINVAL);
    cr_assert_eq(em_defer_count(NULL), 0);
    cr_assert_eq(em_defer_count(loop), 0);

    /* A stale id of a reused slot does not reach the new job. */
    static struct world w;
    memset(&w, 0, sizeof(w));
    submit(loop, &w, 0, 0);
    th_run_until_count(loop, &w.done_count, 1, 5.0);
    submit(loop, &w, 1, 1);
    cr_assert_neq(w.ids[0], w.ids[1]);
    cr_assert_eq(em_cancel_defer(loop, w.ids[0]), -ENOENT);
    wait_gated(loop, &w, 1);
    atomic_store(&w.gate_open, 1);
    th_run_until_count(loop, &w.done_count, 2, 5.0);
    th_free_loop(loop);
}
