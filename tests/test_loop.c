/*
 * test_loop.c - the reactor itself: em_run / em_run_once / em_stop (from a
 * callback, another thread and a signal handler), shutdown unbinding every
 * connection, next-tick ordering and fairness, em_schedule across threads,
 * cached time, connection counts, poll hooks, em_backend_fd, em_loop_free
 * with live handles and from inside its own callbacks (-EDEADLK),
 * em_wakeup, the poll-wait cap, accepts per wakeup, NULL arguments and
 * re-entry.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

static void stop_cb(em_loop *loop, void *arg)
{
    (void)arg;
    cr_assert_eq(em_stop(loop), 0);
}

/* ---- em_run / em_stop ------------------------------------------------ */

Test(loop, run_returns_after_stop_from_a_tick, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_is_stopping(loop), 0);
    cr_assert_eq(em_next_tick(loop, stop_cb, NULL), 0);
    double t0 = th_now();
    cr_assert_eq(em_run(loop), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(1.0), "em_run took %.2f s",
                 th_now() - t0);
    /* The stop request is consumed: the loop is usable and idle again. */
    cr_assert_eq(em_is_stopping(loop), 0);
    cr_assert_eq(em_run_once(loop, 0), 0);
    th_free_loop(loop);
}

Test(loop, stop_before_run_makes_run_return_after_one_turn,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_stop(loop), 0);
    cr_assert_eq(em_is_stopping(loop), 1);
    double t0 = th_now();
    cr_assert_eq(em_run(loop), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(1.0));
    cr_assert_eq(em_is_stopping(loop), 0);
    th_free_loop(loop);
}

Test(loop, loop_runs_again_after_em_run_returned, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    for (int round = 0; round < 3; round++) {
        cr_assert_eq(em_next_tick(loop, stop_cb, NULL), 0);
        cr_assert_eq(em_run(loop), 0, "round %d", round);
    }
    th_free_loop(loop);
}

static void *stop_later_thread(void *arg)
{
    th_sleep_ms(100);
    cr_assert_eq(em_stop(arg), 0);
    return NULL;
}

Test(loop, stop_from_another_thread_wakes_a_blocked_run,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, stop_later_thread, loop), 0);
    double t0 = th_now();
    /* Nothing to do: em_run blocks in the backend until em_stop's wakeup. */
    cr_assert_eq(em_run(loop), 0);
    double elapsed = th_now() - t0;
    pthread_join(thread, NULL);
    cr_assert_geq(elapsed, 0.09, "em_run returned before em_stop");
    cr_assert_lt(elapsed, TH_TIMEOUT(2.0), "em_run took %.2f s to see em_stop",
                 elapsed);
    th_free_loop(loop);
}

static em_loop *signal_loop;
static volatile sig_atomic_t signal_stop_rc = 1;

static void stop_from_signal(int sig)
{
    (void)sig;
    signal_stop_rc = em_stop(signal_loop);
}

static void install_stop_handler(int sig)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop_from_signal;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(sig, &sa, NULL), 0, "sigaction: %s",
                 strerror(errno));
}

Test(loop, stop_from_sigalrm_handler, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    signal_loop = loop;
    install_stop_handler(SIGALRM);
    struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 100000}};
    cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
    double t0 = th_now();
    cr_assert_eq(em_run(loop), 0);
    double elapsed = th_now() - t0;
    cr_assert_eq(signal_stop_rc, 0, "em_stop in the handler failed");
    cr_assert_geq(elapsed, 0.09);
    cr_assert_lt(elapsed, TH_TIMEOUT(2.0), "em_run took %.2f s", elapsed);
    th_free_loop(loop);
}

struct kill_arg {
    pthread_t target;
    int rc;
};

static void *kill_later_thread(void *arg)
{
    struct kill_arg *k = arg;
    th_sleep_ms(100);
    k->rc = pthread_kill(k->target, SIGUSR1);
    return NULL;
}

Test(loop, stop_from_signal_sent_with_pthread_kill, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    signal_loop = loop;
    install_stop_handler(SIGUSR1);
    struct kill_arg k = {.target = pthread_self(), .rc = -1};
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, kill_later_thread, &k), 0);
    cr_assert_eq(em_run(loop), 0);
    pthread_join(thread, NULL);
    cr_assert_eq(k.rc, 0, "pthread_kill failed");
    cr_assert_eq(signal_stop_rc, 0);
    th_free_loop(loop);
}

/* ---- shutdown unbinds every connection ------------------------------- */

#define STOP_CLIENTS 5

struct stop_world {
    em_loop *loop;
    int accepted;
    int completed;
    int server_unbinds;
    int client_unbinds;
    int nonzero_reasons;
    int unbinds_while_not_stopping;
    int connect_in_unbind_rc;
    int server_in_unbind_rc;
    int stop_calls;
};

static void maybe_stop(struct stop_world *w)
{
    if (w->accepted == STOP_CLIENTS && w->completed == STOP_CLIENTS &&
        !w->stop_calls) {
        w->stop_calls++;
        cr_assert_eq(em_stop(w->loop), 0);
    }
}

static void record_unbind(struct stop_world *w, int reason)
{
    if (reason != 0)
        w->nonzero_reasons++;
    if (!em_is_stopping(w->loop))
        w->unbinds_while_not_stopping++;
}

static void stop_srv_post_init(em_conn *conn, void *arg)
{
    (void)conn;
    struct stop_world *w = arg;
    w->accepted++;
    maybe_stop(w);
}

static const em_handler null_handler;

static void stop_srv_unbind(em_conn *conn, int reason)
{
    struct stop_world *w = em_conn_arg(conn);
    w->server_unbinds++;
    record_unbind(w, reason);
    /* Nothing new may start while the loop shuts down. */
    w->connect_in_unbind_rc =
        em_connect(w->loop, "127.0.0.1", 9, &null_handler, NULL, NULL);
    w->server_in_unbind_rc = em_start_server(w->loop, "127.0.0.1", 0,
                                             &null_handler, NULL, NULL, NULL);
}

static void stop_cli_completed(em_conn *conn)
{
    struct stop_world *w = em_conn_arg(conn);
    w->completed++;
    maybe_stop(w);
}

static void stop_cli_unbind(em_conn *conn, int reason)
{
    struct stop_world *w = em_conn_arg(conn);
    w->client_unbinds++;
    record_unbind(w, reason);
}

static const em_handler stop_server_handler = {
    .post_init = stop_srv_post_init,
    .unbind = stop_srv_unbind,
};

static const em_handler stop_client_handler = {
    .connection_completed = stop_cli_completed,
    .unbind = stop_cli_unbind,
};

Test(loop, stop_unbinds_both_sides_of_every_connection,
     .timeout = TH_TIMEOUT(15))
{
    em_loop *loop = th_loop();
    struct stop_world w = {.loop = loop};
    em_server *server = th_start_server(loop, &stop_server_handler, &w);
    int port = th_listen_port(server);
    for (int i = 0; i < STOP_CLIENTS; i++)
        cr_assert_eq(
            em_connect(loop, "127.0.0.1", port, &stop_client_handler, &w, NULL),
            0);
    cr_assert_eq(em_connection_count(loop), STOP_CLIENTS);

    /* The last callback to see all connections up calls em_stop. */
    cr_assert_eq(em_run(loop), 0);

    cr_assert_eq(w.stop_calls, 1);
    cr_assert_eq(w.server_unbinds, STOP_CLIENTS);
    cr_assert_eq(w.client_unbinds, STOP_CLIENTS);
    cr_assert_eq(w.nonzero_reasons, 0, "established connections close with 0");
    cr_assert_eq(w.unbinds_while_not_stopping, 0,
                 "unbind ran outside the shutdown");
    cr_assert_eq(w.connect_in_unbind_rc, -ECANCELED);
    cr_assert_eq(w.server_in_unbind_rc, -ECANCELED);
    cr_assert_eq(em_connection_count(loop), 0);
    /* em_run closed the listener too. */
    cr_assert_eq(th_connect_errno(port), ECONNREFUSED);
    th_free_loop(loop);
}

/* ---- em_run_once ----------------------------------------------------- */

Test(loop, run_once_with_zero_timeout_returns_promptly,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    double t0 = th_now();
    for (int i = 0; i < 100; i++)
        cr_assert_eq(em_run_once(loop, 0), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(0.5), "100 idle turns took %.3f s",
                 th_now() - t0);

    /* A positive timeout is honoured when there is nothing to do. */
    t0 = th_now();
    cr_assert_eq(em_run_once(loop, 50), 0);
    double waited = th_now() - t0;
    cr_assert_geq(waited, 0.045, "waited only %.3f s", waited);
    cr_assert_lt(waited, TH_TIMEOUT(1.0));
    th_free_loop(loop);
}

Test(loop, run_once_returns_one_after_stop, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_stop(loop), 0);
    double t0 = th_now();
    /* A pending stop makes even a long wait return at once. */
    cr_assert_eq(em_run_once(loop, 5000), 1);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(1.0));
    cr_assert_eq(em_is_stopping(loop), 0);
    cr_assert_eq(em_run_once(loop, 0), 0, "the stop is reported only once");

    /* em_stop from a callback inside the turn. */
    cr_assert_eq(em_next_tick(loop, stop_cb, NULL), 0);
    cr_assert_eq(em_run_once(loop, 0), 1);
    cr_assert_eq(em_run_once(loop, 0), 0);
    th_free_loop(loop);
}

/* ---- next tick ------------------------------------------------------- */

struct tick_log {
    char order[16];
    int n;
    em_loop *loop;
};

static struct tick_log tick_log;

static void log_tick(em_loop *loop, void *arg)
{
    (void)loop;
    char c = (char)(intptr_t)arg;
    cr_assert_lt(tick_log.n, 15);
    tick_log.order[tick_log.n++] = c;
    if (c == 'A') /* queued from a tick: runs after B and C */
        cr_assert_eq(em_next_tick(loop, log_tick, (void *)(intptr_t)'D'), 0);
    if (c == 'D')
        cr_assert_eq(em_stop(loop), 0);
}

Test(loop, next_ticks_run_in_call_order_when_run_starts,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    memset(&tick_log, 0, sizeof tick_log);
    cr_assert_eq(em_next_tick(loop, log_tick, (void *)(intptr_t)'A'), 0);
    cr_assert_eq(em_next_tick(loop, log_tick, (void *)(intptr_t)'B'), 0);
    cr_assert_eq(em_next_tick(loop, log_tick, (void *)(intptr_t)'C'), 0);
    cr_assert_eq(tick_log.n, 0, "em_next_tick ran a tick synchronously");
    double t0 = th_now();
    cr_assert_eq(em_run(loop), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(1.0), "ticks waited for the poll");
    cr_assert_str_eq(tick_log.order, "ABCD");
    th_free_loop(loop);
}

Test(loop, tick_queued_in_a_tick_runs_next_turn, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    memset(&tick_log, 0, sizeof tick_log);
    cr_assert_eq(em_next_tick(loop, log_tick, (void *)(intptr_t)'A'), 0);
    cr_assert_eq(em_next_tick(loop, log_tick, (void *)(intptr_t)'B'), 0);
    double t0 = th_now();
    /* A pending tick turns the 1 s wait into a non-blocking poll. */
    cr_assert_eq(em_run_once(loop, 1000), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(0.5));
    cr_assert_str_eq(tick_log.order, "AB");
    cr_assert_eq(em_run_once(loop, 1000), 1, "D calls em_stop");
    cr_assert_str_eq(tick_log.order, "ABD");
    th_free_loop(loop);
}

/* A tick that always queues itself again, and a server receiving data. */
struct starve {
    int ticks;
    int keep_going;
    int received;
    int server_unbinds;
};

static void requeue_tick(em_loop *loop, void *arg)
{
    struct starve *s = arg;
    s->ticks++;
    if (s->keep_going)
        cr_assert_eq(em_next_tick(loop, requeue_tick, s), 0);
}

static void starve_receive(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    struct starve *s = em_conn_arg(conn);
    s->received += (int)len;
}

static void starve_unbind(em_conn *conn, int reason)
{
    (void)reason;
    struct starve *s = em_conn_arg(conn);
    s->server_unbinds++;
}

static const em_handler starve_handler = {
    .receive_data = starve_receive,
    .unbind = starve_unbind,
};

Test(loop, requeuing_tick_does_not_starve_polling, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct starve s = {.keep_going = 1};
    em_server *server = th_start_server(loop, &starve_handler, &s);
    cr_assert_eq(em_next_tick(loop, requeue_tick, &s), 0);

    /* One turn runs the tick once, not forever. */
    cr_assert_eq(em_run_once(loop, 0), 0);
    cr_assert_eq(s.ticks, 1);

    int fd = th_client_connect(th_listen_port(server));
    th_send_all(fd, "12345", 5);
    int turns = 0;
    double deadline = th_now() + TH_TIMEOUT(5.0);
    while (s.received < 5) {
        cr_assert_lt(th_now(), deadline, "I/O starved by the ticks");
        cr_assert_eq(em_run_once(loop, 1000), 0);
        turns++;
    }
    cr_assert_eq(s.ticks, 1 + turns, "exactly one tick per turn");

    s.keep_going = 0;
    close(fd);
    th_run_until(loop, &s.server_unbinds, 5.0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- em_schedule ----------------------------------------------------- */

#define SCHED_PER_THREAD 20000

struct sched_world {
    em_loop *loop;
    pthread_t loop_thread;
    unsigned char hits[2 * SCHED_PER_THREAD];
    int wrong_thread;
    int failed_pushes;
    int stopped_after;
    int total;
};

struct producer {
    struct sched_world *w;
    int base;
};

static void sched_hit(em_loop *loop, void *arg)
{
    unsigned char *hit = arg;
    (void)loop;
    (*hit)++;
}

static void sched_stop(em_loop *loop, void *arg)
{
    struct sched_world *w = arg;
    for (int i = 0; i < 2 * SCHED_PER_THREAD; i++)
        w->stopped_after += w->hits[i];
    if (!pthread_equal(pthread_self(), w->loop_thread))
        w->wrong_thread++;
    em_stop(loop);
}

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    for (int i = 0; i < SCHED_PER_THREAD; i++)
        if (em_schedule(p->w->loop, sched_hit, &p->w->hits[p->base + i]) != 0)
            __atomic_add_fetch(&p->w->failed_pushes, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *controller_main(void *arg)
{
    struct sched_world *w = arg;
    th_sleep_ms(50); /* let em_run block first */
    struct producer p[2] = {{w, 0}, {w, SCHED_PER_THREAD}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, producer_main, &p[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    /* Queued after every task: the FIFO makes it run last. */
    em_schedule(w->loop, sched_stop, w);
    return NULL;
}

Test(loop, schedule_from_two_threads_runs_every_task_once,
     .timeout = TH_TIMEOUT(30))
{
    static struct sched_world w;
    memset(&w, 0, sizeof w);
    w.loop = th_loop();
    w.loop_thread = pthread_self();
    pthread_t controller;
    cr_assert_eq(pthread_create(&controller, NULL, controller_main, &w), 0);
    cr_assert_eq(em_run(w.loop), 0);
    pthread_join(controller, NULL);

    cr_assert_eq(w.failed_pushes, 0);
    cr_assert_eq(w.wrong_thread, 0, "a task ran off the loop thread");
    cr_assert_eq(w.stopped_after, 2 * SCHED_PER_THREAD,
                 "the stop task overtook some tasks");
    int first_bad = -1;
    for (int i = 0; i < 2 * SCHED_PER_THREAD && first_bad < 0; i++)
        if (w.hits[i] != 1)
            first_bad = i;
    cr_assert_eq(first_bad, -1, "task %d ran %d times", first_bad,
                 first_bad < 0 ? 1 : w.hits[first_bad]);
    th_free_loop(w.loop);
}

/* The loop must be asleep in the backend when the task arrives. */
struct wake_world {
    em_loop *loop;
    atomic_int in_poll;
    atomic_int polls;
    double scheduled_at;
    double ran_at;
    pthread_t loop_thread;
    int on_loop_thread;
};

static void wake_before(em_loop *loop, void *arg)
{
    (void)loop;
    struct wake_world *w = arg;
    atomic_fetch_add(&w->polls, 1);
    atomic_store(&w->in_poll, 1);
}

static void wake_after(em_loop *loop, void *arg)
{
    (void)loop;
    struct wake_world *w = arg;
    atomic_store(&w->in_poll, 0);
}

static void wake_task(em_loop *loop, void *arg)
{
    struct wake_world *w = arg;
    w->ran_at = th_now();
    w->on_loop_thread = pthread_equal(pthread_self(), w->loop_thread);
    em_stop(loop);
}

static void *wake_thread(void *arg)
{
    struct wake_world *w = arg;
    double limit = th_now() + TH_TIMEOUT(5.0);
    while (!atomic_load(&w->in_poll) && th_now() < limit)
        th_sleep_ms(1);
    th_sleep_ms(50); /* well inside the blocking epoll_wait now */
    w->scheduled_at = th_now();
    em_schedule(w->loop, wake_task, w);
    return NULL;
}

Test(loop, schedule_wakes_a_loop_blocked_in_run, .timeout = TH_TIMEOUT(10))
{
    struct wake_world w = {.loop = th_loop(), .loop_thread = pthread_self()};
    cr_assert_eq(em_set_poll_hooks(w.loop, wake_before, wake_after, &w), 0);
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, wake_thread, &w), 0);
    cr_assert_eq(em_run(w.loop), 0);
    pthread_join(thread, NULL);
    cr_assert_gt(w.scheduled_at, 0.0, "the loop never blocked in poll");
    cr_assert(w.on_loop_thread);
    cr_assert_lt(w.ran_at - w.scheduled_at, TH_TIMEOUT(0.5),
                 "task ran %.3f s after em_schedule",
                 w.ran_at - w.scheduled_at);
    /* One blocking poll woken by the task, none spinning around it. */
    cr_assert_leq(atomic_load(&w.polls), 2);
    th_free_loop(w.loop);
}

/* A scheduled task runs inside the batch (the wakeup watcher's event). If
 * it closes a connection or stops a server whose event comes later in the
 * same batch, nothing may be freed before the batch ends (ASan checks). */
struct batch_world {
    em_loop *loop;
    em_conn *accepted_conn;
    int accepted;
    int received;
    int unbinds;
    int closed_by_task;
    int data_after_close;
    int stop_rc;
};

static void batch_post_init(em_conn *conn, void *arg)
{
    struct batch_world *w = arg;
    w->accepted_conn = conn;
    w->accepted++;
}

static void batch_receive(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    struct batch_world *w = em_conn_arg(conn);
    if (w->closed_by_task)
        w->data_after_close++;
    w->received += (int)len;
}

static void batch_unbind(em_conn *conn, int reason)
{
    (void)reason;
    struct batch_world *w = em_conn_arg(conn);
    w->unbinds++;
}

static const em_handler batch_handler = {
    .post_init = batch_post_init,
    .receive_data = batch_receive,
    .unbind = batch_unbind,
};

static void close_task(em_loop *loop, void *arg)
{
    (void)loop;
    struct batch_world *w = arg;
    w->closed_by_task = 1;
    em_close_connection(w->accepted_conn, 0);
}

static em_server *batch_server;

static void stop_server_task(em_loop *loop, void *arg)
{
    (void)loop;
    struct batch_world *w = arg;
    w->stop_rc = em_stop_server(batch_server);
}

Test(loop, scheduled_task_closing_a_watcher_later_in_the_batch,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct batch_world w = {.loop = loop};
    batch_server = th_start_server(loop, &batch_handler, &w);
    int port = th_listen_port(batch_server);
    int fd = th_connect_accepted(loop, port, &w.accepted);

    /* Wakeup first, then the connection's data: one batch, in that order. */
    cr_assert_eq(em_schedule(loop, close_task, &w), 0);
    th_send_all(fd, "x", 1);
    cr_assert_eq(em_run_once(loop, 100), 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.unbinds, 1);
    cr_assert_eq(w.data_after_close, 0, "receive_data after the close");

    /* The same for a server with a connection waiting to be accepted. */
    cr_assert_eq(em_schedule(loop, stop_server_task, &w), 0);
    int fd2 = th_client_connect(port);
    cr_assert_eq(em_run_once(loop, 100), 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.stop_rc, 0);
    cr_assert_eq(w.accepted, 1, "accepted on a stopped server");
    close(fd);
    close(fd2);
    cr_assert_eq(em_connection_count(loop), 0);
    th_free_loop(loop);
}

/* ---- time ------------------------------------------------------------ */

Test(loop, cached_time_advances_per_turn_and_on_update,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    double t0 = em_now(loop);
    cr_assert_lt(t0 > th_now() ? t0 - th_now() : th_now() - t0, 0.5,
                 "em_now is not CLOCK_MONOTONIC seconds");
    th_sleep_ms(30);
    cr_assert_eq(em_now(loop), t0, "em_now changed without a turn");

    cr_assert_eq(em_run_once(loop, 0), 0);
    double t1 = em_now(loop);
    cr_assert_geq(t1 - t0, 0.029, "turn did not refresh the time");
    uint64_t ms = em_now_ms(loop);
    cr_assert_leq(ms, (uint64_t)(t1 * 1000.0) + 1);
    cr_assert_geq(ms + 1, (uint64_t)(t1 * 1000.0));

    th_sleep_ms(20);
    double u = em_update_time(loop);
    cr_assert_geq(u - t1, 0.019);
    cr_assert_eq(em_now(loop), u);
    cr_assert_lt(th_now() - u, TH_TIMEOUT(0.1));
    th_free_loop(loop);
}

/* ---- connection count ------------------------------------------------ */

/* One handler for both ends: accepted connections, outbound completions
 * and every unbind (with the first reasons) are counted. */
struct count_world {
    int accepted;
    int completed;
    int unbinds;
    int reasons[4];
};

static void count_post_init(em_conn *conn, void *arg)
{
    struct count_world *w = arg;
    if (!em_is_connecting(conn))
        w->accepted++;
}

static void count_completed(em_conn *conn)
{
    struct count_world *w = em_conn_arg(conn);
    w->completed++;
}

static void count_unbind(em_conn *conn, int reason)
{
    struct count_world *w = em_conn_arg(conn);
    if (w->unbinds < 4)
        w->reasons[w->unbinds] = reason;
    w->unbinds++;
}

static const em_handler count_handler = {
    .post_init = count_post_init,
    .connection_completed = count_completed,
    .unbind = count_unbind,
};

Test(loop, connection_count_follows_connections, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct count_world w = {0};
    cr_assert_eq(em_connection_count(loop), 0);
    em_server *server = th_start_server(loop, &count_handler, &w);
    cr_assert_eq(em_connection_count(loop), 0, "a server is no connection");

    em_conn *client = NULL;
    cr_assert_eq(em_connect(loop, "127.0.0.1", th_listen_port(server),
                            &count_handler, &w, &client),
                 0);
    cr_assert_eq(em_connection_count(loop), 1, "connecting counts");
    th_run_until(loop, &w.completed, 5.0);
    th_run_until(loop, &w.accepted, 5.0);
    cr_assert_eq(em_connection_count(loop), 2);

    cr_assert_eq(em_close_connection(client, 0), 0);
    cr_assert_eq(em_connection_count(loop), 2, "closing is not gone yet");
    th_run_until_count(loop, &w.unbinds, 2, 5.0);
    cr_assert_eq(em_connection_count(loop), 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- poll hooks ------------------------------------------------------ */

struct hooks {
    int before;
    int after;
    int misordered;
    double before_at;
    double slept;
};

static void hook_before(em_loop *loop, void *arg)
{
    (void)loop;
    struct hooks *h = arg;
    if (h->before != h->after)
        h->misordered++;
    h->before++;
    h->before_at = th_now();
}

static void hook_after(em_loop *loop, void *arg)
{
    (void)loop;
    struct hooks *h = arg;
    h->after++;
    if (h->before != h->after)
        h->misordered++;
    h->slept += th_now() - h->before_at;
}

static void noop_cb(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

static void queue_noop_tick(em_loop *loop, void *arg)
{
    cr_assert_eq(em_next_tick(loop, noop_cb, arg), 0);
}

Test(loop, poll_hooks_bracket_blocking_polls, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct hooks h = {0};
    cr_assert_eq(em_set_poll_hooks(loop, hook_before, hook_after, &h), 0);

    cr_assert_eq(em_run_once(loop, 50), 0);
    cr_assert_eq(h.before, 1);
    cr_assert_eq(h.after, 1);
    cr_assert_geq(h.slept, 0.045, "the hooks do not bracket the wait");

    /* Non-blocking polls do not call the hooks: timeout 0, or a tick
     * queued during the turn (the next turn must come at once). */
    cr_assert_eq(em_run_once(loop, 0), 0);
    cr_assert_eq(em_next_tick(loop, queue_noop_tick, NULL), 0);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 1000), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(0.5));
    cr_assert_eq(h.before, 1);
    cr_assert_eq(h.after, 1);

    for (int i = 0; i < 3; i++)
        cr_assert_eq(em_run_once(loop, 5), 0);
    /* The first of these runs the leftover tick, then blocks as well. */
    cr_assert_eq(h.before, 4);
    cr_assert_eq(h.after, 4);
    cr_assert_eq(h.misordered, 0);

    /* Removed hooks are not called; one NULL slot is allowed. */
    cr_assert_eq(em_set_poll_hooks(loop, NULL, hook_after, &h), 0);
    cr_assert_eq(em_run_once(loop, 5), 0);
    cr_assert_eq(h.before, 4);
    cr_assert_eq(h.after, 5);
    cr_assert_eq(em_set_poll_hooks(loop, NULL, NULL, NULL), 0);
    cr_assert_eq(em_run_once(loop, 5), 0);
    cr_assert_eq(h.after, 5);
    th_free_loop(loop);
}

/* ---- em_backend_fd --------------------------------------------------- */

Test(loop, backend_fd_becomes_readable_when_work_arrives,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd = em_backend_fd(loop);
    cr_assert_geq(fd, 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 0, "idle loop reports work");

    cr_assert_eq(em_schedule(loop, noop_cb, NULL), 0);
    cr_assert_eq(poll(&p, 1, 1000), 1, "scheduled work does not show");
    cr_assert(p.revents & POLLIN);
    cr_assert_eq(em_run_once(loop, 0), 0);
    p.revents = 0;
    cr_assert_eq(poll(&p, 1, 0), 0, "work consumed but fd still readable");
    th_free_loop(loop);
}

/* ---- em_loop_free with live handles ---------------------------------- */

static const em_handler leak_handler = {
    .state_size = 256, /* heap memory ASan would report if leaked */
    .post_init = count_post_init,
    .connection_completed = count_completed,
    .unbind = count_unbind,
};

Test(loop, free_with_live_handles_returns_ebusy_and_unbinds,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct count_world w = {0};
    em_server *server = th_start_server(loop, &leak_handler, &w);
    cr_assert_eq(em_connect(loop, "127.0.0.1", th_listen_port(server),
                            &leak_handler, &w, NULL),
                 0);
    th_run_until(loop, &w.completed, 5.0);
    th_run_until(loop, &w.accepted, 5.0);
    cr_assert_eq(em_connection_count(loop), 2);

    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(w.unbinds, 2, "every live connection is unbound");
    cr_assert_eq(w.reasons[0], 0);
    cr_assert_eq(w.reasons[1], 0);
}

Test(loop, free_with_only_a_server_or_a_connect_returns_ebusy,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(
        em_start_server(loop, "127.0.0.1", 0, &leak_handler, NULL, NULL, NULL),
        0);
    cr_assert_eq(em_loop_free(loop), -EBUSY);

    /* A connect still in progress is abandoned: -ECANCELED. */
    struct count_world w = {0};
    loop = th_loop();
    em_server *server = th_start_server(loop, &null_handler, NULL);
    int port = th_listen_port(server);
    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_eq(em_connect(loop, "127.0.0.1", port, &leak_handler, &w, NULL),
                 0);
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(w.unbinds, 1);
    cr_assert_eq(w.reasons[0], -ECANCELED);
    cr_assert_eq(w.completed, 0);

    /* Nothing left open: 0. */
    loop = th_loop();
    th_free_loop(loop);
}

/* ---- argument checks and re-entry ------------------------------------ */

Test(loop, null_arguments_are_einval, .timeout = TH_TIMEOUT(10))
{
    cr_assert_eq(em_loop_new(NULL), -EINVAL);
    cr_assert_eq(em_loop_free(NULL), -EINVAL);
    cr_assert_eq(em_run(NULL), -EINVAL);
    cr_assert_eq(em_run_once(NULL, 0), -EINVAL);
    cr_assert_eq(em_stop(NULL), -EINVAL);
    cr_assert_eq(em_next_tick(NULL, noop_cb, NULL), -EINVAL);
    cr_assert_eq(em_schedule(NULL, noop_cb, NULL), -EINVAL);
    cr_assert_eq(em_set_poll_hooks(NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(em_backend_fd(NULL), -EINVAL);
    cr_assert_eq(em_is_stopping(NULL), 0);
    cr_assert_eq(em_connection_count(NULL), 0);
    cr_assert_eq(em_now(NULL), 0.0);
    cr_assert_eq(em_now_ms(NULL), 0);

    em_loop *loop = th_loop();
    cr_assert_eq(em_next_tick(loop, NULL, NULL), -EINVAL);
    cr_assert_eq(em_schedule(loop, NULL, NULL), -EINVAL);
    th_free_loop(loop);
}

struct reentry {
    int run_rc;
    int run_once_rc;
    int free_rc;
    int ran;
};

static void reenter_tick(em_loop *loop, void *arg)
{
    struct reentry *r = arg;
    r->run_rc = em_run(loop);
    r->run_once_rc = em_run_once(loop, 0);
    r->free_rc = em_loop_free(loop);
    r->ran = 1;
    em_stop(loop);
}

/* Running again from a callback is -EBUSY; freeing is -EDEADLK, which a
 * caller cannot confuse with "freed with live handles" (-EBUSY). */
Test(loop, reentering_from_a_callback_is_ebusy_freeing_is_edeadlk,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct reentry r = {0};
    cr_assert_eq(em_next_tick(loop, reenter_tick, &r), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert(r.ran);
    cr_assert_eq(r.run_rc, -EBUSY);
    cr_assert_eq(r.run_once_rc, -EBUSY);
    cr_assert_eq(r.free_rc, -EDEADLK);

    memset(&r, 0, sizeof r);
    cr_assert_eq(em_next_tick(loop, reenter_tick, &r), 0);
    cr_assert_eq(em_run_once(loop, 0), 1);
    cr_assert_eq(r.run_rc, -EBUSY);
    cr_assert_eq(r.run_once_rc, -EBUSY);
    cr_assert_eq(r.free_rc, -EDEADLK);
    th_free_loop(loop);
}

/* ---- em_loop_free from callbacks it runs itself ------------------------ */

struct free_inside {
    em_loop *loop;
    int timer_rc;
    int unbind_free_rc;
    int unbind_run_once_rc;
    int done_free_rc;
    int unbinds;
    int dones;
};

static struct free_inside free_inside;

static void free_in_timer(em_loop *loop, void *arg)
{
    (void)arg;
    free_inside.timer_rc = em_loop_free(loop);
}

static void free_in_unbind(em_conn *conn, int reason)
{
    (void)reason;
    free_inside.unbinds++;
    free_inside.unbind_free_rc = em_loop_free(em_conn_loop(conn));
    free_inside.unbind_run_once_rc = em_run_once(em_conn_loop(conn), 0);
}

static const em_handler free_in_unbind_handler = {.unbind = free_in_unbind};

static void *idle_work(void *arg)
{
    return arg;
}

static void free_in_done(em_loop *loop, void *arg, void *result, int status)
{
    (void)arg;
    (void)result;
    (void)status;
    free_inside.dones++;
    free_inside.done_free_rc = em_loop_free(loop);
}

Test(loop, free_inside_its_own_callbacks_is_edeadlk_and_frees_nothing,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    memset(&free_inside, 0, sizeof free_inside);
    cr_assert_eq(em_add_timer(loop, 0, free_in_timer, NULL, NULL), 0);
    th_run_for(loop, 0.02);
    cr_assert_eq(free_inside.timer_rc, -EDEADLK);
    cr_assert_eq(em_timer_count(loop), 0, "the loop still works");

    /* Callbacks run by em_loop_free itself: an unbind and a defer's done. */
    em_server *server = th_start_server(loop, &free_in_unbind_handler, NULL);
    int fd = th_client_connect(th_listen_port(server));
    while (em_connection_count(loop) == 0)
        cr_assert_geq(em_run_once(loop, 10), 0);
    cr_assert_eq(em_defer(loop, idle_work, free_in_done, NULL, NULL), 0);
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(free_inside.unbinds, 1);
    cr_assert_eq(free_inside.unbind_free_rc, -EDEADLK);
    cr_assert_eq(free_inside.unbind_run_once_rc, -EBUSY);
    cr_assert_eq(free_inside.dones, 1);
    cr_assert_eq(free_inside.done_free_rc, -EDEADLK);
    close(fd);
}

/* ---- em_wakeup ------------------------------------------------------- */

static void *wakeup_later(void *arg)
{
    th_sleep_ms(100);
    cr_assert_eq(em_wakeup(arg), 0);
    return NULL;
}

static em_loop *wakeup_signal_loop;
static volatile sig_atomic_t wakeup_signal_rc = 1;

static void wakeup_from_signal(int sig)
{
    (void)sig;
    wakeup_signal_rc = em_wakeup(wakeup_signal_loop);
}

Test(loop, wakeup_from_a_thread_and_a_signal_handler, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_wakeup(NULL), -EINVAL);

    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, wakeup_later, loop), 0);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 10000), 0);
    double elapsed = th_now() - t0;
    pthread_join(thread, NULL);
    cr_assert_lt(elapsed, TH_TIMEOUT(3.0), "not woken: %.2f s", elapsed);

    wakeup_signal_loop = loop;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = wakeup_from_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART; /* the wakeup, not EINTR, must end the wait */
    cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
    struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 100000}};
    cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
    t0 = th_now();
    while (wakeup_signal_rc != 0) {
        cr_assert_lt(th_now() - t0, TH_TIMEOUT(3.0), "no signal");
        cr_assert_eq(em_run_once(loop, 10000), 0);
    }
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(3.0));
    /* Idle again: the wakeup was consumed. */
    cr_assert_eq(em_run_once(loop, 0), 0);
    struct pollfd p = {.fd = em_backend_fd(loop), .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 0);
    th_free_loop(loop);
}

/* ---- the quantum: em_set_max_wait_ms --------------------------------- */

static void count_before_poll(em_loop *loop, void *arg)
{
    (void)loop;
    (*(int *)arg)++;
}

static void stop_timer(em_loop *loop, void *arg)
{
    (void)arg;
    em_stop(loop);
}

Test(loop, max_wait_caps_every_poll, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_get_max_wait_ms(loop), -1, "no cap by default");
    cr_assert_eq(em_set_max_wait_ms(loop, 20), 0);
    cr_assert_eq(em_get_max_wait_ms(loop), 20);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, -1), 0, "an endless wait was not capped");
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(1.0));

    /* em_run turns at least every 20 ms with nothing to do. */
    int polls = 0;
    cr_assert_eq(em_set_poll_hooks(loop, count_before_poll, NULL, &polls), 0);
    cr_assert_eq(em_add_timer(loop, 0.3, stop_timer, NULL, NULL), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_geq(polls, 5, "only %d polls in 0.3 s", polls);

    cr_assert_eq(em_set_max_wait_ms(loop, -1), 0);
    cr_assert_eq(em_set_max_wait_ms(loop, -2), -EINVAL);
    cr_assert_eq(em_set_max_wait_ms(NULL, 5), -EINVAL);
    cr_assert_eq(em_get_max_wait_ms(NULL), -EINVAL);
    th_free_loop(loop);
}

/* ---- accepts per wakeup ------------------------------------------------ */

static void count_accept(em_conn *conn, void *arg)
{
    (void)conn;
    (*(int *)arg)++;
}

static const em_handler accept_counter = {.post_init = count_accept};

Test(loop, accepts_per_wakeup_bounds_each_listener_event,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_get_accepts_per_wakeup(loop), 64);
    cr_assert_eq(em_set_accepts_per_wakeup(loop, 0), -EINVAL);
    cr_assert_eq(em_set_accepts_per_wakeup(loop, -1), -EINVAL);
    cr_assert_eq(em_set_accepts_per_wakeup(NULL, 1), -EINVAL);
    cr_assert_eq(em_get_accepts_per_wakeup(NULL), -EINVAL);
    cr_assert_eq(em_set_accepts_per_wakeup(loop, 2), 0);
    cr_assert_eq(em_get_accepts_per_wakeup(loop), 2);

    int accepted = 0;
    em_server *server = th_start_server(loop, &accept_counter, &accepted);
    enum { N = 5 };
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = th_client_connect(th_listen_port(server));
    /* All five wait in the backlog: each turn takes two. */
    cr_assert_eq(em_run_once(loop, 1000), 0);
    cr_assert_eq(accepted, 2);
    cr_assert_eq(em_run_once(loop, 1000), 0);
    cr_assert_eq(accepted, 4);

    /* The default takes the rest of a burst at once. */
    cr_assert_eq(em_set_accepts_per_wakeup(loop, 64), 0);
    cr_assert_eq(em_run_once(loop, 1000), 0);
    cr_assert_eq(accepted, 5);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    cr_assert_eq(em_stop_server(server), 0);
    while (em_connection_count(loop) > 0)
        cr_assert_geq(em_run_once(loop, 10), 0);
    th_free_loop(loop);
}
