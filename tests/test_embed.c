/*
 * test_embed.c - a loop embedded in a host loop: the host polls only
 * em_backend_fd (plain poll(2), with bounds far longer than any deadline
 * here) and calls em_run_once(loop, 0) when it is readable. Timers,
 * periodic timers, next ticks (queued by the host or by callbacks),
 * inactivity and pending-connect timeouts and closes made by the host must
 * all make the descriptor readable; an idle loop must not. Also
 * em_next_timeout_ms, and em_run on a loop whose descriptor was asked for.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* Polls only fd, runs a turn when it is readable, until *counter >= n.
 * Fails when fd stays unreadable for max_seconds: the loop had due work
 * its descriptor did not show. Returns the turns it ran. */
static int host_run_until(em_loop *loop, int fd, const int *counter, int n,
                          double max_seconds)
{
    int turns = 0;
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    while (*counter < n) {
        double left = deadline - th_now();
        cr_assert_gt(left, 0, "gave up at %d of %d after %d turns", *counter, n,
                     turns);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        cr_assert_eq(rc, 1,
                     "em_backend_fd not readable with work due (%d of %d)",
                     *counter, n);
        cr_assert_geq(em_run_once(loop, 0), 0);
        turns++;
    }
    return turns;
}

static int readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms);
}

struct counts {
    int ticks;
    int timers;
    int periodic;
    double fired_at;
    em_loop *loop;
    em_timer_id periodic_id;
    int tick_from_timer; /* queue a tick from the timer callback */
};

static void count_tick(em_loop *loop, void *arg)
{
    (void)loop;
    struct counts *c = arg;
    c->ticks++;
}

static void count_timer(em_loop *loop, void *arg)
{
    struct counts *c = arg;
    c->timers++;
    c->fired_at = th_now();
    if (c->tick_from_timer)
        cr_assert_eq(em_next_tick(loop, count_tick, c), 0);
}

static void count_periodic(em_loop *loop, void *arg)
{
    struct counts *c = arg;
    if (++c->periodic == 5)
        cr_assert_eq(em_cancel_timer(loop, c->periodic_id), 0);
}

Test(embed, timers_and_ticks_through_a_plain_poll_host,
     .timeout = TH_TIMEOUT(20))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    int fd = em_backend_fd(loop);
    cr_assert_geq(fd, 0);
    cr_assert_eq(em_backend_fd(loop), fd, "a second call changes the fd");
    cr_assert_eq(readable(fd, 0), 0, "an idle loop is readable");
    struct counts c = {.loop = loop};

    /* A tick queued by the host shows at once. */
    cr_assert_eq(em_next_tick(loop, count_tick, &c), 0);
    cr_assert_eq(readable(fd, 0), 1, "a queued tick does not show");
    host_run_until(loop, fd, &c.ticks, 1, 5.0);
    cr_assert_eq(readable(fd, 0), 0, "still readable after the tick ran");

    /* A timer shows when it is due, not before. */
    double t0 = th_now();
    em_update_time(loop);
    cr_assert_eq(em_add_timer(loop, 0.1, count_timer, &c, NULL), 0);
    cr_assert_eq(readable(fd, 0), 0, "readable long before the deadline");
    host_run_until(loop, fd, &c.timers, 1, 5.0);
    cr_assert_geq(c.fired_at - t0, 0.099, "fired early: %.3f", c.fired_at - t0);
    cr_assert_lt(c.fired_at - t0, TH_TIMEOUT(1.0), "fired late");

    /* A periodic timer keeps the descriptor ticking until cancelled. */
    cr_assert_eq(
        em_add_periodic_timer(loop, 0.02, count_periodic, &c, &c.periodic_id),
        0);
    host_run_until(loop, fd, &c.periodic, 5, 5.0);

    /* A tick queued inside a callback shows once the turn is over. */
    c.tick_from_timer = 1;
    cr_assert_eq(em_add_timer(loop, 0.01, count_timer, &c, NULL), 0);
    host_run_until(loop, fd, &c.timers, 2, 5.0);
    host_run_until(loop, fd, &c.ticks, 2, 5.0);

    /* Idle again: no wakeups. */
    cr_assert_eq(readable(fd, 100), 0, "an idle embedded loop wakes up");
    cr_assert_eq(c.periodic, 5);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds, "the timerfd leaked");
}

/* ---- timeouts and closes ------------------------------------------------ */

struct conns {
    int accepted;
    int unbinds;
    int reason;
    int client_unbinds;
    int client_reason;
    em_conn *accepted_conn;
};

static void server_post_init(em_conn *conn, void *arg)
{
    struct conns *c = arg;
    c->accepted++;
    c->accepted_conn = conn;
}

static void server_unbind(em_conn *conn, int reason)
{
    struct conns *c = em_conn_arg(conn);
    c->unbinds++;
    c->reason = reason;
    c->accepted_conn = NULL;
}

static const em_handler server_handler = {.post_init = server_post_init,
                                          .unbind = server_unbind};

static void client_unbind(em_conn *conn, int reason)
{
    struct conns *c = em_conn_arg(conn);
    c->client_unbinds++;
    c->client_reason = reason;
}

static const em_handler client_handler = {.unbind = client_unbind};

/* A listener whose backlog is full: a connect to it hangs. */
static int full_listener(int *filler, int *port)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(lfd, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    cr_assert_eq(listen(lfd, 0), 0);
    socklen_t len = sizeof sin;
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    *filler = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = connect(*filler, (struct sockaddr *)&sin, sizeof sin);
    cr_assert(rc == 0 || errno == EINPROGRESS);
    struct pollfd p = {.fd = *filler, .events = POLLOUT};
    cr_assert_eq(poll(&p, 1, 2000), 1);
    return lfd;
}

Test(embed, timeouts_and_host_closes_through_a_plain_poll_host,
     .timeout = TH_TIMEOUT(20))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    int fd = em_backend_fd(loop);
    struct conns c = {0};
    em_server *server = th_start_server(loop, &server_handler, &c);

    /* Inactivity timeout, set by the host between turns. */
    int client = th_client_connect(th_listen_port(server));
    host_run_until(loop, fd, &c.accepted, 1, 5.0);
    em_update_time(loop);
    cr_assert_eq(em_set_comm_inactivity_timeout(c.accepted_conn, 0.15), 0);
    host_run_until(loop, fd, &c.unbinds, 1, 5.0);
    cr_assert_eq(c.reason, -ETIMEDOUT);
    close(client);

    /* Pending-connect timeout of a connect that hangs. */
    int filler, port;
    int lfd = full_listener(&filler, &port);
    em_conn *out = NULL;
    cr_assert_eq(em_connect(loop, "127.0.0.1", port, &client_handler, &c, &out),
                 0);
    cr_assert_eq(em_set_pending_connect_timeout(out, 0.15), 0);
    host_run_until(loop, fd, &c.client_unbinds, 1, 5.0);
    cr_assert_eq(c.client_reason, -ETIMEDOUT);
    close(filler);
    close(lfd);

    /* A close made by the host: its unbind is due at once. */
    client = th_client_connect(th_listen_port(server));
    host_run_until(loop, fd, &c.accepted, 2, 5.0);
    cr_assert_eq(readable(fd, 0), 0);
    cr_assert_eq(em_close_connection(c.accepted_conn, 0), 0);
    cr_assert_eq(readable(fd, 0), 1, "a pending unbind does not show");
    host_run_until(loop, fd, &c.unbinds, 2, 5.0);
    close(client);

    /* A connect that fails at once is reported next turn: it shows too. */
    cr_assert_eq(em_connect(loop, "127.0.0.1", th_free_port(), &client_handler,
                            &c, NULL),
                 0);
    host_run_until(loop, fd, &c.client_unbinds, 2, 5.0);
    cr_assert_eq(c.client_reason, -ECONNREFUSED);

    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_eq(readable(fd, 100), 0, "an idle embedded loop wakes up");
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}

/* ---- em_next_timeout_ms -------------------------------------------------- */

static void noop(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

Test(embed, next_timeout_ms, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_next_timeout_ms(NULL), -EINVAL);
    cr_assert_eq(em_next_timeout_ms(loop), -1, "idle: no deadline");

    em_timer_id id;
    em_update_time(loop);
    cr_assert_eq(em_add_timer(loop, 1.0, noop, NULL, &id), 0);
    int ms = em_next_timeout_ms(loop);
    cr_assert(ms > 500 && ms <= 1000, "1 s timer: %d ms", ms);

    cr_assert_eq(em_set_max_wait_ms(loop, 50), 0);
    cr_assert_eq(em_next_timeout_ms(loop), 50, "the cap applies");
    cr_assert_eq(em_cancel_timer(loop, id), 0);
    cr_assert_eq(em_next_timeout_ms(loop), 50, "no deadline: the cap");
    cr_assert_eq(em_set_max_wait_ms(loop, -1), 0);
    cr_assert_eq(em_next_timeout_ms(loop), -1);

    cr_assert_eq(em_next_tick(loop, noop, NULL), 0);
    cr_assert_eq(em_next_timeout_ms(loop), 0, "a tick is due now");
    cr_assert_eq(em_run_once(loop, 0), 0);
    cr_assert_eq(em_next_timeout_ms(loop), -1);

    cr_assert_eq(em_add_timer(loop, 0, noop, NULL, NULL), 0);
    cr_assert_eq(em_next_timeout_ms(loop), 0, "a due timer");
    cr_assert_eq(em_run_once(loop, 0), 0);

    cr_assert_eq(em_stop(loop), 0);
    cr_assert_eq(em_next_timeout_ms(loop), 0, "a stop is due now");
    cr_assert_eq(em_run_once(loop, 0), 1);
    th_free_loop(loop);
}

/* ---- em_run keeps working on an embeddable loop -------------------------- */

static void stop_cb(em_loop *loop, void *arg)
{
    int *fired = arg;
    (*fired)++;
    em_stop(loop);
}

Test(embed, em_run_still_runs_timers_after_backend_fd,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd = em_backend_fd(loop);
    int fired = 0;
    cr_assert_eq(em_add_timer(loop, 0.05, stop_cb, &fired, NULL), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(fired, 1);
    /* em_stop's own wakeup may still be pending: one turn consumes it. */
    cr_assert_eq(em_run_once(loop, 0), 0);
    cr_assert_eq(readable(fd, 50), 0, "readable after em_run returned idle");
    cr_assert_eq(em_backend_fd(NULL), -EINVAL);
    th_free_loop(loop);
}
