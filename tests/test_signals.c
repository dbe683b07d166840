/*
 * test_signals.c - em_add_signal / em_remove_signal with real signals:
 * raise() (to this thread) and kill() (to the process) of SIGUSR1, SIGUSR2,
 * SIGHUP, SIGTERM and a real-time signal; several handlers and loops per
 * signal, removal inside a handler, merged and queued signals, the thread
 * mask and SIG_IGN restored, a signal during em_run's shutdown and during
 * em_loop_free, a graceful stop, bad input and descriptor counts.
 *
 * Criterion runs each test in its own process, whose helper thread blocks
 * every signal, so a kill() to the process can only reach the test thread.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

static int is_blocked(int signo)
{
    sigset_t current;
    pthread_sigmask(SIG_BLOCK, NULL, &current);
    return sigismember(&current, signo);
}

static int is_pending(int signo)
{
    sigset_t pending;
    sigpending(&pending);
    return sigismember(&pending, signo);
}

#define MAX_CALLS 16

struct record {
    int calls;
    int signos[MAX_CALLS];
    int order[MAX_CALLS]; /* tag of the handler, per call */
    int *shared_count;    /* shared order counter, may be NULL */
    int tag;
    pthread_t thread;
    em_loop *loop;
};

static void record_signal(em_loop *loop, int signo, void *arg)
{
    struct record *r = arg;
    if (r->calls < MAX_CALLS) {
        r->signos[r->calls] = signo;
        r->order[r->calls] = r->shared_count ? (*r->shared_count)++ : 0;
    }
    r->calls++;
    r->thread = pthread_self();
    r->loop = loop;
}

static em_signal_id add(em_loop *loop, int signo, struct record *r)
{
    em_signal_id id = 0;
    int err = em_add_signal(loop, signo, record_signal, r, &id);
    cr_assert_eq(err, 0, "em_add_signal(%d): %s", signo, em_strerror(err));
    cr_assert_neq(id, 0);
    return id;
}

/* ---- delivery ---------------------------------------------------------- */

Test(signals, raise_runs_the_handler_on_the_loop_thread,
     .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    struct record r = {0};
    cr_assert_eq(is_blocked(SIGUSR1), 0);
    em_signal_id id = add(loop, SIGUSR1, &r);
    cr_assert(is_blocked(SIGUSR1), "not blocked while handled");
    cr_assert_eq(em_signal_count(loop), 1);

    cr_assert_eq(raise(SIGUSR1), 0);
    cr_assert_eq(r.calls, 0, "ran before the loop turned");
    th_run_until_count(loop, &r.calls, 1, 5.0);
    cr_assert_eq(r.signos[0], SIGUSR1);
    cr_assert(pthread_equal(r.thread, pthread_self()));
    cr_assert_eq(r.loop, loop);
    th_run_for(loop, 0.05);
    cr_assert_eq(r.calls, 1, "delivered twice");

    cr_assert_eq(em_remove_signal(loop, id), 0);
    cr_assert_eq(is_blocked(SIGUSR1), 0, "mask not restored");
    cr_assert_eq(em_remove_signal(loop, id), -ENOENT);
    cr_assert_eq(em_signal_count(loop), 0);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}

Test(signals, kill_to_the_process_reaches_the_loop, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct record usr2 = {0}, hup = {0}, term = {0};
    add(loop, SIGUSR2, &usr2);
    add(loop, SIGHUP, &hup);
    add(loop, SIGTERM, &term);
    cr_assert_eq(kill(getpid(), SIGUSR2), 0);
    cr_assert_eq(kill(getpid(), SIGHUP), 0);
    cr_assert_eq(kill(getpid(), SIGTERM), 0);
    th_run_until_count(loop, &term.calls, 1, 5.0);
    th_run_until_count(loop, &hup.calls, 1, 5.0);
    th_run_until_count(loop, &usr2.calls, 1, 5.0);
    cr_assert_eq(usr2.signos[0], SIGUSR2);
    cr_assert_eq(hup.signos[0], SIGHUP);
    cr_assert_eq(term.signos[0], SIGTERM);
    th_run_for(loop, 0.05);
    cr_assert_eq(usr2.calls + hup.calls + term.calls, 3);
    /* Freeing removes the handlers and restores the mask: 0, not -EBUSY. */
    th_free_loop(loop);
    cr_assert_eq(is_blocked(SIGUSR2) + is_blocked(SIGHUP) + is_blocked(SIGTERM),
                 0);
}

Test(signals, handlers_run_in_the_order_added, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int order = 0;
    struct record a = {.shared_count = &order}, b = {.shared_count = &order};
    struct record other = {0};
    add(loop, SIGUSR1, &a);
    add(loop, SIGUSR2, &other);
    add(loop, SIGUSR1, &b);
    cr_assert_eq(em_signal_count(loop), 3);
    raise(SIGUSR1);
    th_run_until_count(loop, &b.calls, 1, 5.0);
    cr_assert_eq(a.calls, 1);
    cr_assert_eq(a.order[0], 0);
    cr_assert_eq(b.order[0], 1);
    cr_assert_eq(other.calls, 0, "a SIGUSR2 handler ran for SIGUSR1");
    th_free_loop(loop);
}

Test(signals, standard_signals_merge_realtime_signals_queue,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct record usr = {0}, rt = {0};
    add(loop, SIGUSR1, &usr);
    add(loop, SIGRTMIN, &rt);
    for (int i = 0; i < 3; i++) {
        raise(SIGUSR1);
        raise(SIGRTMIN);
    }
    th_run_until_count(loop, &rt.calls, 3, 5.0);
    th_run_for(loop, 0.05);
    cr_assert_eq(usr.calls, 1, "pending SIGUSR1s are one signal");
    cr_assert_eq(rt.calls, 3, "real-time signals queue");
    th_free_loop(loop);
}

/* ---- removal inside handlers ------------------------------------------ */

struct remover {
    em_signal_id self;
    em_signal_id other;
    int self_rc;
    int other_rc;
    int again_rc;
    int calls;
};

static void remove_both(em_loop *loop, int signo, void *arg)
{
    struct remover *r = arg;
    (void)signo;
    r->calls++;
    r->self_rc = em_remove_signal(loop, r->self);
    r->other_rc = em_remove_signal(loop, r->other);
    r->again_rc = em_remove_signal(loop, r->self);
}

Test(signals, removing_inside_a_handler, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct remover rm = {0};
    struct record later = {0}, survivor = {0};
    cr_assert_eq(em_add_signal(loop, SIGHUP, remove_both, &rm, &rm.self), 0);
    rm.other = add(loop, SIGHUP, &later);
    add(loop, SIGUSR1, &survivor);

    raise(SIGHUP);
    th_run_until_count(loop, &rm.calls, 1, 5.0);
    cr_assert_eq(rm.self_rc, 0);
    cr_assert_eq(rm.other_rc, 0);
    cr_assert_eq(rm.again_rc, -ENOENT);
    cr_assert_eq(later.calls, 0, "a handler removed in this delivery ran");
    cr_assert_eq(em_signal_count(loop), 1);
    cr_assert_eq(is_blocked(SIGHUP), 0, "last SIGHUP handler gone");
    cr_assert(is_blocked(SIGUSR1));

    /* The other signal still works and the array was compacted. */
    raise(SIGUSR1);
    th_run_until_count(loop, &survivor.calls, 1, 5.0);
    th_free_loop(loop);
}

struct adder {
    struct record added;
    int calls;
};

static void add_another(em_loop *loop, int signo, void *arg)
{
    struct adder *a = arg;
    a->calls++;
    if (a->calls == 1)
        cr_assert_eq(em_add_signal(loop, signo, record_signal, &a->added, NULL),
                     0);
}

Test(signals, a_handler_added_in_a_handler_waits_for_the_next_signal,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct adder a = {0};
    cr_assert_eq(em_add_signal(loop, SIGUSR2, add_another, &a, NULL), 0);
    raise(SIGUSR2);
    th_run_until_count(loop, &a.calls, 1, 5.0);
    th_run_for(loop, 0.02);
    cr_assert_eq(a.added.calls, 0);
    raise(SIGUSR2);
    th_run_until_count(loop, &a.added.calls, 1, 5.0);
    cr_assert_eq(a.calls, 2);
    th_free_loop(loop);
}

/* ---- the mask and the disposition ------------------------------------- */

Test(signals, a_signal_blocked_before_stays_blocked, .timeout = TH_TIMEOUT(10))
{
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &one, NULL);
    em_loop *loop = th_loop();
    struct record r = {0};
    em_signal_id id = add(loop, SIGUSR2, &r);
    cr_assert_eq(em_remove_signal(loop, id), 0);
    cr_assert(is_blocked(SIGUSR2), "unblocked what the program blocked");
    th_free_loop(loop);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
}

Test(signals, two_loops_on_one_thread_share_a_signal, .timeout = TH_TIMEOUT(10))
{
    em_loop *a = th_loop();
    em_loop *b = th_loop();
    struct record ra = {0}, rb = {0};
    em_signal_id ida = add(a, SIGUSR1, &ra);
    add(b, SIGUSR1, &rb);
    cr_assert_eq(em_remove_signal(a, ida), 0);
    cr_assert(is_blocked(SIGUSR1), "b still handles it");
    raise(SIGUSR1);
    th_run_until_count(b, &rb.calls, 1, 5.0);
    th_free_loop(b);
    cr_assert_eq(is_blocked(SIGUSR1), 0, "the last holder restores");
    th_free_loop(a);
    cr_assert_eq(ra.calls, 0);
}

Test(signals, ignored_signal_is_handled_then_ignored_again,
     .timeout = TH_TIMEOUT(10))
{
    signal(SIGHUP, SIG_IGN); /* as under nohup */
    em_loop *loop = th_loop();
    struct record r = {0};
    em_signal_id id = add(loop, SIGHUP, &r);
    raise(SIGHUP);
    th_run_until_count(loop, &r.calls, 1, 5.0);
    cr_assert_eq(em_remove_signal(loop, id), 0);
    struct sigaction now;
    sigaction(SIGHUP, NULL, &now);
    cr_assert_eq(now.sa_handler, SIG_IGN, "SIG_IGN not restored");
    raise(SIGHUP); /* ignored: the process survives */
    th_free_loop(loop);
    signal(SIGHUP, SIG_DFL);
}

/* ---- loops on several threads ----------------------------------------- */

struct thread_loop {
    em_loop *loop;
    struct record r;
    int ready;
    int stop;
    int free_rc;
    pthread_t self;
};

static void stop_on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

static void *run_thread_loop(void *arg)
{
    struct thread_loop *t = arg;
    em_loop_new(&t->loop);
    em_add_signal(t->loop, SIGUSR1, record_signal, &t->r, NULL);
    em_add_signal(t->loop, SIGUSR2, stop_on_signal, NULL, NULL);
    __atomic_store_n(&t->ready, 1, __ATOMIC_SEQ_CST);
    em_run(t->loop);
    t->free_rc = em_loop_free(t->loop);
    return NULL;
}

Test(signals, each_thread_loop_gets_the_signals_sent_to_its_thread,
     .timeout = TH_TIMEOUT(20))
{
    struct thread_loop t[2];
    memset(t, 0, sizeof(t));
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i].self, NULL, run_thread_loop, &t[i]),
                     0);
    for (int i = 0; i < 2; i++)
        while (!__atomic_load_n(&t[i].ready, __ATOMIC_SEQ_CST))
            usleep(1000);
    cr_assert_eq(pthread_kill(t[0].self, SIGUSR1), 0);
    cr_assert_eq(pthread_kill(t[0].self, SIGUSR2), 0);
    pthread_join(t[0].self, NULL);
    cr_assert_eq(pthread_kill(t[1].self, SIGUSR2), 0);
    pthread_join(t[1].self, NULL);
    cr_assert_eq(t[0].r.calls, 1);
    cr_assert(pthread_equal(t[0].r.thread, t[0].self));
    cr_assert_eq(t[1].r.calls, 0, "thread 1 got thread 0's signal");
    cr_assert_eq(t[0].free_rc, 0);
    cr_assert_eq(t[1].free_rc, 0);
    cr_assert_eq(is_blocked(SIGUSR1), 0, "the test thread's mask changed");
}

/* ---- shutdown ---------------------------------------------------------- */

struct shutdown_world {
    th_echo echo; /* first: th_echo_post_init's arg */
    int raise_in_unbind;
    int raised;
};

static void raising_unbind(em_conn *conn, int reason)
{
    struct shutdown_world *w = em_conn_arg(conn);
    th_echo_unbind(conn, reason);
    if (w->raise_in_unbind && !w->raised) {
        w->raised = 1;
        raise(SIGTERM);
    }
}

static const em_handler raising_handler = {
    .post_init = th_echo_post_init,
    .receive_data = th_echo_receive,
    .unbind = raising_unbind,
};

static void stop_tick(em_loop *loop, void *arg)
{
    (void)arg;
    em_stop(loop);
}

Test(signals, signal_during_run_shutdown_is_delivered_next_turn,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct shutdown_world w = {.raise_in_unbind = 1};
    em_server *server = th_start_server(loop, &raising_handler, &w);
    struct record term = {0};
    add(loop, SIGTERM, &term);
    int fd =
        th_connect_accepted(loop, th_listen_port(server), &w.echo.accepted);
    cr_assert_eq(em_next_tick(loop, stop_tick, NULL), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(w.raised, 1, "the unbind ran in em_run's shutdown");
    cr_assert_eq(term.calls, 0);
    cr_assert(is_pending(SIGTERM), "the signal was lost");
    cr_assert_eq(em_run_once(loop, 100), 0);
    cr_assert_eq(term.calls, 1, "not delivered after the shutdown");
    close(fd);
    th_free_loop(loop);
}

Test(signals, signal_during_loop_free_is_discarded_not_fatal,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct shutdown_world w = {.raise_in_unbind = 1};
    em_server *server = th_start_server(loop, &raising_handler, &w);
    struct record term = {0};
    add(loop, SIGTERM, &term);
    int fd =
        th_connect_accepted(loop, th_listen_port(server), &w.echo.accepted);
    /* The unbind raises SIGTERM while the handler is still there; freeing
     * then removes it: unblocking with SIGTERM pending would kill us. */
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(w.raised, 1);
    cr_assert_eq(term.calls, 0);
    cr_assert_eq(is_blocked(SIGTERM), 0);
    cr_assert_eq(is_pending(SIGTERM), 0);
    close(fd);
}

Test(signals, sigterm_stops_a_running_loop, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo echo = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &echo);
    cr_assert_eq(em_add_signal(loop, SIGTERM, stop_on_signal, NULL, NULL), 0);
    int fd = th_connect_accepted(loop, th_listen_port(server), &echo.accepted);
    kill(getpid(), SIGTERM);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(echo.unbinds, 1, "stop unbinds the connection");
    close(fd);
    th_free_loop(loop);
}

/* ---- bad input --------------------------------------------------------- */

static void noop_signal(em_loop *loop, int signo, void *arg)
{
    (void)loop;
    (void)signo;
    (void)arg;
}

Test(signals, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    em_signal_id id = 5;
    cr_assert_eq(em_add_signal(NULL, SIGUSR1, noop_signal, NULL, &id), -EINVAL);
    cr_assert_eq(id, 0, "*out is cleared on failure");
    cr_assert_eq(em_add_signal(loop, SIGUSR1, NULL, NULL, NULL), -EINVAL);
    const int refused[] = {0,       -1,     NSIG,   1000,   SIGKILL, SIGSTOP,
                           SIGSEGV, SIGBUS, SIGFPE, SIGILL, 32,      33};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        cr_assert_eq(em_add_signal(loop, refused[i], noop_signal, NULL, NULL),
                     -EINVAL, "signal %d", refused[i]);
    cr_assert_eq(em_signal_count(loop), 0);
    cr_assert_eq(em_remove_signal(NULL, 1), -EINVAL);
    cr_assert_eq(em_remove_signal(loop, 0), -ENOENT);
    cr_assert_eq(em_remove_signal(loop, 42), -ENOENT);
    cr_assert_eq(em_signal_count(NULL), 0);
    cr_assert_eq(em_add_signal(loop, SIGRTMAX, noop_signal, NULL, &id), 0);
    cr_assert_eq(em_remove_signal(loop, id + 1), -ENOENT);
    cr_assert_eq(em_remove_signal(loop, id), 0);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}
