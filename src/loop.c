/*
 * loop.c - the reactor: turns, next-tick and cross-thread queues, stop.
 *
 * One turn: run the ticks queued before the turn, sleep in the backend until
 * the earliest timer or timeout, dispatch ready watchers, run due timers and
 * timeouts, and after each batch run unbind for connections closed in it.
 * Connections are freed only there, so a watcher pointer from the current
 * epoll batch never dangles.
 *
 * Cross-thread work (em_schedule, em_stop, pool results) wakes the loop
 * through one eventfd. em_stop only stores an atomic flag and writes the
 * eventfd, both async-signal-safe, so it works from signal handlers; the
 * loop thread does the actual shutdown. A pipe pair was the alternative; an
 * eventfd is one descriptor and one 8-byte write.
 *
 * Ticks and scheduled tasks live in growable rings, so queueing one costs
 * no allocation once the ring has grown to the working size.
 *
 * em__loop_next_deadline is the one answer to "when is there work without
 * an event": the poll timeout, em_next_timeout_ms and the embedding timerfd
 * (embed.c) all use it. em_set_max_wait_ms caps the poll timeout. The
 * callbacks em_loop_free runs (unbinds, defer dones) run with `running`
 * set, so they cannot free or run the loop they are being freed by. In a
 * process other than the one that made the loop (a fork child) it runs
 * none of them: fork.c releases the loop as inherited.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

uint64_t em__clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- task rings ------------------------------------------------------ */

static int ring_grow(em__task_ring *ring)
{
    size_t cap = ring->cap ? ring->cap * 2 : 64;
    em__task *tasks = malloc(cap * sizeof(*tasks));
    if (!tasks)
        return -ENOMEM;
    for (size_t i = 0; i < ring->count; i++)
        tasks[i] = ring->tasks[(ring->head + i) & (ring->cap - 1)];
    free(ring->tasks);
    ring->tasks = tasks;
    ring->cap = cap;
    ring->head = 0;
    return 0;
}

int em__ring_push(em__task_ring *ring, em_callback fn, void *arg)
{
    if (ring->count == ring->cap && ring_grow(ring) < 0)
        return -ENOMEM;
    size_t slot = (ring->head + ring->count) & (ring->cap - 1);
    ring->tasks[slot] = (em__task){fn, arg};
    ring->count++;
    return 0;
}

static em__task ring_pop(em__task_ring *ring)
{
    em__task task = ring->tasks[ring->head];
    ring->head = (ring->head + 1) & (ring->cap - 1);
    ring->count--;
    return task;
}

void em__ring_free(em__task_ring *ring)
{
    free(ring->tasks);
    memset(ring, 0, sizeof(*ring));
}

/* ---- wakeups --------------------------------------------------------- */

void em__loop_wakeup(em_loop *loop)
{
    /* Signal handlers call this (em_stop, em_wakeup): errno is the
     * interrupted code's. */
    int saved = errno;
    uint64_t one = 1;
    ssize_t n = write(loop->wakeup.fd, &one, sizeof(one));
    (void)n; /* EAGAIN means the counter is already non-zero: still awake */
    errno = saved;
}

/* Swaps the producers' ring for the empty spare under the lock and runs the
 * batch outside it; the drained ring becomes the next spare, so a steady
 * stream of em_schedule calls never reallocates. */
static void run_scheduled(em_loop *loop)
{
    pthread_mutex_lock(&loop->schedule_lock);
    em__task_ring batch = loop->scheduled;
    loop->scheduled = loop->schedule_spare;
    atomic_store(&loop->wakeup_pending, 0);
    pthread_mutex_unlock(&loop->schedule_lock);

    /* No reap here: this runs inside dispatch (the wakeup watcher), and a
     * connection freed now could still have an event later in the batch.
     * turn() reaps once the whole batch is done. */
    while (batch.count) {
        em__task task = ring_pop(&batch);
        task.fn(loop, task.arg);
    }
    batch.head = 0;
    loop->schedule_spare = batch;
}

static void on_wakeup(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)revents;
    uint64_t value;
    ssize_t n = read(w->fd, &value, sizeof(value));
    (void)n;
    run_scheduled(loop);
    if (loop->pool)
        em__pool_deliver(loop);
}

/* ---- life cycle ------------------------------------------------------ */

static int loop_init(em_loop *loop)
{
    loop->backend_fd = -1;
    loop->wakeup.fd = -1;
    loop->embed_timer.fd = -1;
    loop->accepts_per_wakeup = EM__ACCEPTS_PER_WAKEUP;
    loop->max_wait_ms = -1;
    em__list_init(&loop->conns);
    em__list_init(&loop->pending_unbind);
    em__list_init(&loop->servers);
    em__list_init(&loop->dead_servers);
    em__list_init(&loop->failed_connects);
    em__list_init(&loop->tls_pending);
    em__list_init(&loop->framer_pending);
    em__list_init(&loop->proc_exiting);
    loop->now_ns = em__clock_ns();
    loop->owner_pid = getpid();

    int err = em__poller_open(loop);
    if (err < 0)
        return err;
    loop->wakeup.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wakeup.fd < 0)
        return -errno;
    loop->wakeup.on_event = on_wakeup;
    err = em__poller_set(loop, &loop->wakeup, EM__IN);
    if (err < 0)
        return err;
    return em__timers_new(&loop->timers);
}

static void loop_release(em_loop *loop)
{
    em__ids_free(loop);
    em__dgram_loop_free(loop);
    em__adapters_free(loop);
    /* The resolver and the pool were freed by em_loop_free, in the order
     * they need; a loop_init failure never made them. */
    if (loop->signals)
        em__signals_free(loop);
    if (loop->fswatch)
        em__fswatch_free(loop);
    if (loop->tls_cache)
        em__tls_cache_free(loop);
    em__file_loop_free(loop);
    em__timers_free(loop->timers);
    em__timeouts_free(&loop->timeouts);
    em__ring_free(&loop->ticks);
    em__ring_free(&loop->scheduled);
    em__ring_free(&loop->schedule_spare);
    if (loop->wakeup.fd >= 0)
        close(loop->wakeup.fd);
    em__embed_free(loop);
    em__poller_close(loop);
    pthread_mutex_destroy(&loop->schedule_lock);
    free(loop);
}

int em_loop_new(em_loop **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    em_loop *loop = calloc(1, sizeof(*loop));
    if (!loop)
        return -ENOMEM;
    pthread_mutex_init(&loop->schedule_lock, NULL);
    int err = loop_init(loop);
    if (err < 0) {
        loop_release(loop);
        return err;
    }
    *out = loop;
    return 0;
}

static void close_all(em__link *list)
{
    while (!em__list_empty(list)) {
        em_conn *conn = em__container_of(list->next, em_conn, link);
        int reason = conn->flags & EM__CONN_CONNECTING ? -ECANCELED : 0;
        em__conn_close_now(conn, reason);
    }
}

/* Closes every server and connection and runs every unbind. Callbacks may
 * open new connections meanwhile; those are closed too, so this ends. */
static void shut_everything(em_loop *loop)
{
    loop->stopping = 1;
    if (loop->fswatch)
        em__fswatch_end_all(loop);
    em__proc_shutdown(loop);
    while (!em__list_empty(&loop->servers)) {
        em_server *server =
            em__container_of(loop->servers.next, em_server, link);
        em_stop_server(server);
    }
    while (!em__list_empty(&loop->conns) ||
           !em__list_empty(&loop->failed_connects) ||
           !em__list_empty(&loop->pending_unbind)) {
        close_all(&loop->conns);
        close_all(&loop->failed_connects);
        em__conn_reap(loop);
    }
    em__conn_reap(loop);
}

int em_loop_free(em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    if (loop->owner_pid != getpid()) {
        /* Inherited across fork: released without a callback or a word to
         * the parent's peers, even from inside a callback (fork.c). The
         * epoll set is the parent's too: our reference goes first, so
         * nothing below can take the parent's registrations out of it. */
        em__poller_close(loop);
        em__loop_forget(loop);
        loop_release(loop);
        return 0;
    }
    if (loop->running)
        return -EDEADLK; /* inside one of its callbacks: free nothing */
    int busy = !em__list_empty(&loop->conns) ||
               !em__list_empty(&loop->failed_connects) ||
               !em__list_empty(&loop->servers) ||
               !em__list_empty(&loop->pending_unbind) ||
               em_file_watch_count(loop) > 0 ||
               !em__list_empty(&loop->proc_exiting);
    /* The unbinds and done callbacks below run "inside" the loop: they may
     * not free it again or run it. */
    loop->running = 1;
    shut_everything(loop);
    em__resolver_free(loop);
    if (em__pool_free(loop) > 0)
        busy = 1; /* em_defer work was cancelled or waited for */
    loop_release(loop);
    return busy ? -EBUSY : 0;
}

/* ---- running --------------------------------------------------------- */

static void run_ticks(em_loop *loop)
{
    /* Only the ticks queued before this turn: a tick that queues another
     * must not starve polling. */
    size_t due = loop->ticks.count;
    while (due-- && loop->ticks.count) {
        em__task task = ring_pop(&loop->ticks);
        task.fn(loop, task.arg);
        em__conn_reap(loop);
    }
}

uint64_t em__loop_next_deadline(const em_loop *loop)
{
    if (loop->ticks.count || atomic_load(&loop->stop_requested) ||
        !em__list_empty(&loop->pending_unbind) ||
        !em__list_empty(&loop->failed_connects) ||
        !em__list_empty(&loop->tls_pending) ||
        !em__list_empty(&loop->framer_pending) || em__fswatch_pending(loop))
        return 0;
    uint64_t next = em__timers_next(loop->timers);
    uint64_t next_timeout = em__timeouts_next(&loop->timeouts);
    return next_timeout < next ? next_timeout : next;
}

static int poll_timeout(em_loop *loop, int timeout_ms)
{
    uint64_t next = em__loop_next_deadline(loop);
    int wait = timeout_ms;
    if (next <= loop->now_ns) {
        wait = 0;
    } else if (next != UINT64_MAX) {
        /* Round up so a timer is never woken for before its deadline. */
        uint64_t wait_ms = (next - loop->now_ns + 999999) / 1000000;
        if (timeout_ms < 0 || wait_ms < (uint64_t)timeout_ms)
            wait = wait_ms > 0x7fffffff ? 0x7fffffff : (int)wait_ms;
    }
    /* The quantum (em_set_max_wait_ms) caps even an endless wait. */
    if (loop->max_wait_ms >= 0 && (wait < 0 || wait > loop->max_wait_ms))
        wait = loop->max_wait_ms;
    return wait;
}

static void turn(em_loop *loop, int timeout_ms)
{
    run_ticks(loop);
    em__connect_run_failures(loop);
    em__conn_reap(loop);
    int wait_ms = poll_timeout(loop, timeout_ms);
    if (wait_ms != 0 && loop->before_poll)
        loop->before_poll(loop, loop->poll_hook_arg);
    em__loop_wait(loop, wait_ms);
    if (wait_ms != 0 && loop->after_poll)
        loop->after_poll(loop, loop->poll_hook_arg);
    loop->now_ns = em__clock_ns();
    em__poller_dispatch(loop);
    if (!em__list_empty(&loop->tls_pending))
        em__tls_run_pending(loop);
    if (!em__list_empty(&loop->framer_pending))
        em__framer_run_pending(loop);
    em__conn_reap(loop);
    em__timers_run(loop);
    em__timeouts_run(loop);
    em__conn_reap(loop);
}

/* After the turn in which em_stop was seen: unbind everything, re-arm. */
static int finish_if_stopped(em_loop *loop)
{
    if (!atomic_load(&loop->stop_requested))
        return 0;
    shut_everything(loop);
    loop->stopping = 0;
    atomic_store(&loop->stop_requested, 0);
    return 1;
}

int em_run_once(em_loop *loop, int timeout_ms)
{
    if (!loop)
        return -EINVAL;
    if (loop->running)
        return -EBUSY;
    loop->running = 1;
    turn(loop, timeout_ms);
    int stopped = finish_if_stopped(loop);
    loop->running = 0;
    if (loop->embed_timer.fd >= 0)
        em__embed_update(loop); /* the host polls em_backend_fd next */
    return stopped;
}

int em_run(em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    if (loop->running)
        return -EBUSY;
    loop->running = 1;
    do
        turn(loop, -1);
    while (!finish_if_stopped(loop));
    loop->running = 0;
    if (loop->embed_timer.fd >= 0)
        em__embed_update(loop);
    return 0;
}

int em_stop(em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    atomic_store(&loop->stop_requested, 1);
    em__loop_wakeup(loop);
    return 0;
}

int em_is_stopping(const em_loop *loop)
{
    if (!loop)
        return 0;
    return loop->stopping || atomic_load(&loop->stop_requested);
}

int em_next_tick(em_loop *loop, em_callback fn, void *arg)
{
    if (!loop || !fn)
        return -EINVAL;
    int err = em__ring_push(&loop->ticks, fn, arg);
    if (err == 0 && loop->ticks.count == 1)
        em__loop_work_added(loop);
    return err;
}

int em_schedule(em_loop *loop, em_callback fn, void *arg)
{
    if (!loop || !fn)
        return -EINVAL;
    pthread_mutex_lock(&loop->schedule_lock);
    int err = em__ring_push(&loop->scheduled, fn, arg);
    int wake = err == 0 && !atomic_exchange(&loop->wakeup_pending, 1);
    pthread_mutex_unlock(&loop->schedule_lock);
    if (wake)
        em__loop_wakeup(loop);
    return err;
}

/* ---- time and introspection ------------------------------------------ */

double em_now(const em_loop *loop)
{
    return loop ? (double)loop->now_ns / 1e9 : 0.0;
}

uint64_t em_now_ms(const em_loop *loop)
{
    return loop ? loop->now_ns / 1000000u : 0;
}

double em_update_time(em_loop *loop)
{
    if (!loop)
        return 0.0;
    loop->now_ns = em__clock_ns();
    return em_now(loop);
}

size_t em_connection_count(const em_loop *loop)
{
    return loop ? loop->conn_count : 0;
}

int em_set_poll_hooks(em_loop *loop, em_callback before_poll,
                      em_callback after_poll, void *arg)
{
    if (!loop)
        return -EINVAL;
    loop->before_poll = before_poll;
    loop->after_poll = after_poll;
    loop->poll_hook_arg = arg;
    return 0;
}

int em_wakeup(em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    em__loop_wakeup(loop);
    return 0;
}

int em_set_accepts_per_wakeup(em_loop *loop, int accepts)
{
    if (!loop || accepts < 1)
        return -EINVAL;
    loop->accepts_per_wakeup = accepts;
    return 0;
}

int em_get_accepts_per_wakeup(const em_loop *loop)
{
    return loop ? loop->accepts_per_wakeup : -EINVAL;
}

int em_set_max_wait_ms(em_loop *loop, int ms)
{
    if (!loop || ms < -1)
        return -EINVAL;
    loop->max_wait_ms = ms;
    return 0;
}

int em_get_max_wait_ms(const em_loop *loop)
{
    return loop ? loop->max_wait_ms : -EINVAL;
}
