/*
 * test_embed_hooks.c - what a language binding needs from the loop
 * (docs/ruby.md): the around-style wait hook (em_set_wait_hook) run
 * directly, on another thread, skipped and called twice; em_wakeup from
 * another thread and from a signal handler on another thread interrupting a
 * long hooked wait, with errno preserved; and stopping in two steps: a loop
 * of em_run_once left by the binding's own flag unbinds nothing, and
 * em_loop_free later unbinds everything in the documented order and with
 * the documented reasons.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h" /* white box: the wakeup eventfd, to make it full */

/* ---- hooks ------------------------------------------------------------ */

enum { HOOK_DIRECT, HOOK_THREAD, HOOK_SKIP_ODD, HOOK_TWICE };

typedef struct hook_state {
    int mode;
    int calls;
    int skipped;
    /* A stand-in for a runtime lock: held except while the thunk waits.
     * Another thread takes it to prove the wait ran without it. */
    pthread_mutex_t lock;
    atomic_int in_wait;
} hook_state;

typedef struct thunk_call {
    em_wait_thunk wait;
    void *thunk_arg;
    hook_state *h;
} thunk_call;

static void *run_thunk(void *arg)
{
    thunk_call *c = arg;
    atomic_store(&c->h->in_wait, 1);
    c->wait(c->thunk_arg);
    atomic_store(&c->h->in_wait, 0);
    return NULL;
}

static void hook(em_loop *loop, void *arg, em_wait_thunk wait, void *thunk_arg)
{
    hook_state *h = arg;
    cr_assert_not_null(loop);
    h->calls++;
    thunk_call c = {wait, thunk_arg, h};
    pthread_mutex_unlock(&h->lock);
    switch (h->mode) {
    case HOOK_DIRECT:
        run_thunk(&c);
        break;
    case HOOK_THREAD: {
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, run_thunk, &c), 0);
        cr_assert_eq(pthread_join(t, NULL), 0);
        break;
    }
    case HOOK_SKIP_ODD:
        if (h->calls % 2)
            h->skipped++;
        else
            run_thunk(&c);
        break;
    case HOOK_TWICE:
        run_thunk(&c);
        run_thunk(&c);
        break;
    }
    pthread_mutex_lock(&h->lock);
}

static void hook_init(hook_state *h, int mode)
{
    memset(h, 0, sizeof(*h));
    h->mode = mode;
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_lock(&h->lock); /* the loop thread holds it */
}

static void hook_done(hook_state *h)
{
    pthread_mutex_unlock(&h->lock);
    pthread_mutex_destroy(&h->lock);
}

static void count_cb(em_loop *loop, void *arg)
{
    (void)loop;
    (*(int *)arg)++;
}

static void requeue_tick(em_loop *loop, void *arg)
{
    int *ticks = arg;
    if (++*ticks == 1)
        cr_assert_eq(em_next_tick(loop, requeue_tick, arg), 0);
}

Test(embed_hooks, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(NULL, hook, &h), -EINVAL);
    cr_assert_eq(em_wakeup(NULL), -EINVAL);
    em_loop *loop = th_loop();
    cr_assert_eq(em_set_wait_hook(loop, NULL, NULL), 0);
    th_free_loop(loop);
    hook_done(&h);
}

/* Timers fire through the hook; turns with work due (a tick) and
 * em_run_once(loop, 0) do not call it; removing it stops the calls. */
Test(embed_hooks, hook_runs_blocking_waits_only, .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);

    int fired = 0;
    cr_assert_eq(em_add_timer(loop, 0.05, count_cb, &fired, NULL), 0);
    double t0 = th_now();
    while (!fired) {
        cr_assert_geq(em_run_once(loop, -1), 0);
        cr_assert_lt(th_now() - t0, TH_TIMEOUT(5.0));
    }
    cr_assert_geq(th_now() - t0, 0.045, "timer early: %.3f", th_now() - t0);
    cr_assert_geq(h.calls, 1);

    /* A tick that queues another leaves work due at the poll: the wait
     * is 0 and skips the hook. */
    int calls = h.calls, ticks = 0;
    cr_assert_eq(em_next_tick(loop, requeue_tick, &ticks), 0);
    double t1 = th_now();
    cr_assert_eq(em_run_once(loop, 5000), 0);
    cr_assert_lt(th_now() - t1, TH_TIMEOUT(2.0));
    cr_assert_eq(ticks, 1);
    cr_assert_eq(em_run_once(loop, 0), 0);
    cr_assert_eq(ticks, 2);
    cr_assert_eq(h.calls, calls, "non-blocking waits went through the hook");

    cr_assert_eq(em_set_wait_hook(loop, NULL, NULL), 0);
    cr_assert_eq(em_run_once(loop, 20), 0);
    cr_assert_eq(h.calls, calls);
    th_free_loop(loop);
    hook_done(&h);
    cr_assert_eq(th_count_fds(), fds);
}

/* An echo server whose every wait runs through the hook in `mode`: a
 * patterned stream sent in arbitrary chunks comes back whole. */
static void echo_through_hook(int mode)
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, mode);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);

    enum { TOTAL = 200000 };
    uint8_t *out = malloc(TOTAL), *in = malloc(TOTAL);
    cr_assert(out && in);
    th_pat_fill(out, 0, TOTAL);
    size_t sent = 0, got = 0;
    unsigned seed = 7;
    double t0 = th_now();
    while (got < TOTAL) {
        cr_assert_lt(th_now() - t0, TH_TIMEOUT(10.0), "echoed %zu", got);
        if (sent < TOTAL) {
            size_t n = 1 + rand_r(&seed) % 7000;
            if (n > TOTAL - sent)
                n = TOTAL - sent;
            ssize_t w = send(fd, out + sent, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        cr_assert_geq(em_run_once(loop, 10), 0);
        ssize_t r = recv(fd, in + got, TOTAL - got, MSG_DONTWAIT);
        if (r > 0)
            got += (size_t)r;
    }
    cr_assert_eq(th_pat_check(in, 0, TOTAL), -1);
    cr_assert_gt(h.calls, 0);
    if (mode == HOOK_SKIP_ODD)
        cr_assert_gt(h.skipped, 0);
    free(out);
    free(in);
    th_close_clients(loop, &e, &fd, 1);
    th_stop_and_free(loop, srv);
    hook_done(&h);
    cr_assert_eq(th_count_fds(), fds);
}

Test(embed_hooks, echo_with_the_wait_on_the_hooks_stack,
     .timeout = TH_TIMEOUT(30))
{
    echo_through_hook(HOOK_DIRECT);
}

Test(embed_hooks, echo_with_the_wait_on_another_thread,
     .timeout = TH_TIMEOUT(30))
{
    echo_through_hook(HOOK_THREAD);
}

/* A hook that skips every other wait (a runtime with an interrupt
 * pending) loses no event. */
Test(embed_hooks, echo_with_skipped_waits, .timeout = TH_TIMEOUT(30))
{
    echo_through_hook(HOOK_SKIP_ODD);
}

/* Calling the thunk twice waits once. */
Test(embed_hooks, second_thunk_call_does_nothing, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_TWICE);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 1000), 0);
    double took = th_now() - t0;
    cr_assert_geq(took, 0.95, "the wait did not wait: %.3f s", took);
    cr_assert_lt(took, 1.9, "the thunk waited twice: %.3f s", took);
    cr_assert_eq(h.calls, 1);
    th_free_loop(loop);
    hook_done(&h);
}

/* ---- em_wakeup -------------------------------------------------------- */

typedef struct waker {
    em_loop *loop;
    hook_state *h;
    int took_lock; /* the thread got the "runtime lock" during the wait */
} waker;

static void *wake_later(void *arg)
{
    waker *w = arg;
    /* Waits until the loop thread is inside the thunk, then proves the
     * lock is free there, and wakes the loop. */
    double t0 = th_now();
    while (!atomic_load(&w->h->in_wait) && th_now() - t0 < TH_TIMEOUT(5))
        th_sleep_ms(1);
    th_sleep_ms(50);
    if (pthread_mutex_trylock(&w->h->lock) == 0) {
        w->took_lock = 1;
        pthread_mutex_unlock(&w->h->lock);
    }
    em_wakeup(w->loop);
    return NULL;
}

Test(embed_hooks, wakeup_from_another_thread_ends_a_long_wait,
     .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    waker w = {loop, &h, 0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, wake_later, &w), 0);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 60000), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(5.0));
    pthread_join(t, NULL);
    cr_assert_eq(w.took_lock, 1, "the lock was held during the wait");
    cr_assert_eq(h.calls, 1);
    th_free_loop(loop);
    hook_done(&h);
}

/* A wakeup made before the wait starts is not lost. */
Test(embed_hooks, wakeup_before_the_wait, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    cr_assert_eq(em_wakeup(loop), 0);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 60000), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(5.0));
    th_free_loop(loop);
    hook_done(&h);
}

static em_loop *signal_loop;
static atomic_int signal_seen;

static void on_usr1(int signo)
{
    (void)signo;
    errno = 4242; /* em_wakeup must leave the interrupted code's errno */
    em_wakeup(signal_loop);
    if (errno == 4242)
        atomic_store(&signal_seen, 1);
    else
        atomic_store(&signal_seen, -1);
}

static void *signal_self_later(void *arg)
{
    hook_state *h = arg;
    double t0 = th_now();
    while (!atomic_load(&h->in_wait) && th_now() - t0 < TH_TIMEOUT(5))
        th_sleep_ms(1);
    th_sleep_ms(50);
    /* The handler runs on this thread: the loop's thread blocks SIGUSR1,
     * so its wait is ended by em_wakeup alone, not by EINTR. */
    pthread_kill(pthread_self(), SIGUSR1);
    return NULL;
}

Test(embed_hooks, wakeup_from_a_signal_handler_on_another_thread,
     .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    signal_loop = loop;
    atomic_store(&signal_seen, 0);
    struct sigaction sa = {.sa_handler = on_usr1}, old;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGUSR1, &sa, &old), 0);
    sigset_t usr1, prev;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_t t;
    /* The helper is created unblocked, then this thread blocks SIGUSR1. */
    cr_assert_eq(pthread_create(&t, NULL, signal_self_later, &h), 0);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &usr1, &prev), 0);
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 60000), 0);
    double took = th_now() - t0;
    pthread_join(t, NULL);
    pthread_sigmask(SIG_SETMASK, &prev, NULL);
    sigaction(SIGUSR1, &old, NULL);
    cr_assert_lt(took, TH_TIMEOUT(5.0));
    cr_assert_eq(atomic_load(&signal_seen), 1, "errno changed or no signal");
    th_free_loop(loop);
    hook_done(&h);
}

/* errno survives even a failing write: a full eventfd gives EAGAIN. */
Test(embed_hooks, wakeup_preserves_errno_when_the_write_fails,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    uint64_t most = UINT64_MAX - 1;
    cr_assert_eq(write(loop->wakeup.fd, &most, sizeof(most)),
                 (ssize_t)sizeof(most));
    uint64_t one = 1;
    cr_assert_eq(write(loop->wakeup.fd, &one, sizeof(one)), -1);
    cr_assert_eq(errno, EAGAIN, "the eventfd is not full");
    errno = 4242;
    cr_assert_eq(em_wakeup(loop), 0);
    cr_assert_eq(errno, 4242);
    errno = 4343;
    cr_assert_eq(em_stop(loop), 0);
    cr_assert_eq(errno, 4343);
    cr_assert_eq(em_run_once(loop, 1000), 1); /* drains it, and stops */
    th_free_loop(loop);
}

/* ---- stopping in two steps ------------------------------------------ */

enum { MAX_LOG = 16 };

typedef struct order_log {
    int tags[MAX_LOG];
    int reasons[MAX_LOG];
    int count;
    int completed;
    int accepted;
    int stopping_in_unbind; /* em_is_stopping inside every unbind */
    int send_in_unbind;     /* em_send_data's result there */
    int connect_in_unbind;  /* em_connect's result there */
    em_loop *loop;
    em_conn *conns[MAX_LOG];
} order_log;

/* Every connection's state: its tag and the shared log. */
typedef struct tagged {
    order_log *log;
    int tag;
} tagged;

static const em_handler tagged_handler;

static int next_tag;

static void tagged_post_init(em_conn *conn, void *arg)
{
    order_log *log = arg;
    tagged *t = em_conn_state(conn);
    t->log = log;
    t->tag = next_tag++;
    log->conns[t->tag] = conn;
    if (!(em_is_connecting(conn)))
        log->accepted++;
}

static void tagged_completed(em_conn *conn)
{
    tagged *t = em_conn_state(conn);
    t->log->completed++;
}

static void tagged_unbind(em_conn *conn, int reason)
{
    tagged *t = em_conn_state(conn);
    order_log *log = t->log;
    cr_assert_lt(log->count, MAX_LOG);
    log->tags[log->count] = t->tag;
    log->reasons[log->count] = reason;
    log->count++;
    log->conns[t->tag] = NULL;
    if (!em_is_stopping(log->loop))
        log->stopping_in_unbind = 0;
    log->send_in_unbind = em_send_data(conn, "x", 1);
    log->connect_in_unbind =
        em_connect(log->loop, "127.0.0.1", 9, &tagged_handler, log, NULL);
}

static const em_handler tagged_handler = {
    .state_size = sizeof(tagged),
    .post_init = tagged_post_init,
    .connection_completed = tagged_completed,
    .unbind = tagged_unbind,
};

static void set_flag(em_loop *loop, void *arg)
{
    (void)loop;
    *(int *)arg = 1;
}

/* The binding's loop: turns until its own stop flag is set. */
static void binding_run(em_loop *loop, const int *stop_flag)
{
    double t0 = th_now();
    while (!*stop_flag) {
        cr_assert_eq(em_run_once(loop, -1), 0);
        cr_assert_lt(th_now() - t0, TH_TIMEOUT(10.0));
    }
}

Test(embed_hooks, leave_then_free_unbinds_in_order, .timeout = TH_TIMEOUT(20))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    order_log log = {.loop = loop, .stopping_in_unbind = 1};
    next_tag = 0;
    em_server *srv = th_start_server(loop, &tagged_handler, &log);
    int port = th_listen_port(srv);

    /* Tags in creation order: 0 and 1 outbound (their accepted ends come
     * later, in accept order), 2 and 3 the accepted ends. */
    em_conn *out0 = NULL, *out1 = NULL;
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", port, &tagged_handler, &log, &out0), 0);
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", port, &tagged_handler, &log, &out1), 0);
    double t0 = th_now();
    while (log.completed < 2 || log.accepted < 2) {
        cr_assert_eq(em_run_once(loop, 10), 0);
        cr_assert_lt(th_now() - t0, TH_TIMEOUT(5.0));
    }
    /* The binding's stop comes from a timer. */
    int stop = 0, late = 0;
    cr_assert_eq(em_add_timer(loop, 0.01, set_flag, &stop, NULL), 0);
    binding_run(loop, &stop);

    /* Between the two steps: nothing was unbound, nothing is stopping. */
    cr_assert_eq(log.count, 0);
    cr_assert_eq(em_connection_count(loop), 4);
    cr_assert_eq(em_is_stopping(loop), 0);
    /* The application may still call in: a send, a close (tag 1), and a
     * connect (tag 4) that will still be connecting at the free. */
    cr_assert_eq(em_send_data(log.conns[2], "hello", 5), 0);
    cr_assert_eq(em_close_connection(out1, 0), 0);
    em_conn *pending = NULL;
    cr_assert_eq(
        em_connect(loop, "localhost", port, &tagged_handler, &log, &pending),
        0);
    cr_assert_eq(em_is_connecting(pending), 1);
    /* A timer due at once must not fire during em_loop_free. */
    cr_assert_eq(em_add_timer(loop, 0, count_cb, &late, NULL), 0);

    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(late, 0, "a timer fired during em_loop_free");
    cr_assert_eq(log.count, 5);
    /* The closed one first, then live ones oldest first, the connecting
     * one by its creation too. */
    int want_tags[] = {1, 0, 2, 3, 4};
    int want_reasons[] = {0, 0, 0, 0, -ECANCELED};
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(log.tags[i], want_tags[i], "unbind %d: tag %d", i,
                     log.tags[i]);
        cr_expect_eq(log.reasons[i], want_reasons[i], "unbind %d: %s", i,
                     em_err_name(log.reasons[i]));
    }
    cr_assert_eq(log.stopping_in_unbind, 1);
    cr_assert_eq(log.send_in_unbind, -ENOTCONN);
    cr_assert_eq(log.connect_in_unbind, -ECANCELED);
    (void)out0;
    hook_done(&h);
    cr_assert_eq(th_count_fds(), fds);
}

typedef struct stopper {
    em_loop *loop;
    atomic_int flag;
} stopper;

static void *stop_later(void *arg)
{
    stopper *s = arg;
    th_sleep_ms(50);
    atomic_store(&s->flag, 1);
    em_wakeup(s->loop);
    return NULL;
}

/* The binding's stop from another thread ends a long wait; the loop then
 * goes on where it left off when turned again. */
Test(embed_hooks, leave_from_another_thread_then_turn_again,
     .timeout = TH_TIMEOUT(20))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    hook_state h;
    hook_init(&h, HOOK_DIRECT);
    cr_assert_eq(em_set_wait_hook(loop, hook, &h), 0);
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);

    stopper s = {.loop = loop};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, stop_later, &s), 0);
    double t0 = th_now();
    while (!atomic_load(&s.flag))
        cr_assert_eq(em_run_once(loop, 60000), 0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(5.0));
    pthread_join(t, NULL);
    cr_assert_eq(e.unbinds, 0);
    cr_assert_eq(em_connection_count(loop), 1);

    th_expect_echo(loop, fd, "still here");
    th_close_clients(loop, &e, &fd, 1);
    cr_assert_eq(e.bad_reasons, 0);
    th_stop_and_free(loop, srv);
    hook_done(&h);
    cr_assert_eq(th_count_fds(), fds);
}
