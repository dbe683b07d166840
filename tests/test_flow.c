/*
 * test_flow.c - flow control and inactivity over real sockets on 127.0.0.1.
 *
 * Covers: em_pause inside receive_data stops delivery before the next chunk
 * and loses nothing (all of it arrives after em_resume); em_is_paused; a
 * paused connection writes nothing, neither new nor already-queued data,
 * until resumed; the comm inactivity timeout (fires with -ETIMEDOUT after
 * the idle time and not before, reads and writes both keep a connection
 * alive, get returns what was set, 0 disables, bad values are refused,
 * armed for an outbound connection once it completes); em_get_idle_time
 * grows and resets; many connections sharing one timeout all expire, and
 * different timeouts expire in their own order.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

#define KiB (1024u)
#define MiB (1024u * 1024u)

/* ---- one tracked server connection ----------------------------------- */

static struct {
    em_conn *conn;
    em_loop *loop;
    int accepted, unbinds, reason;
    double t_accept, t_unbind, t_last_rx;
    size_t received;
    long bad_at;
    int chunks, chunks_while_paused;
    int paused_by_us;     /* we paused in receive_data, not yet resumed */
    int hold_first_pause; /* leave the first pause for the test body */
    int resumes;
    double timeout;    /* set in post_init when nonzero */
    double idle_in_rx; /* em_get_idle_time inside receive_data */
} F;

static void f_resume(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    cr_assert_not_null(F.conn, "resume after unbind");
    cr_assert_eq(em_is_paused(F.conn), 1);
    F.paused_by_us = 0;
    F.resumes++;
    cr_assert_eq(em_resume(F.conn), 0);
    cr_assert_eq(em_is_paused(F.conn), 0);
}

static void f_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    F.conn = conn;
    F.accepted++;
    F.t_accept = th_now();
    cr_assert_eq(em_is_paused(conn), 0);
    if (F.timeout > 0) {
        cr_assert_eq(em_set_comm_inactivity_timeout(conn, F.timeout), 0);
        cr_assert(fabs(em_get_comm_inactivity_timeout(conn) - F.timeout) < 1e-9,
                  "get returned %f", em_get_comm_inactivity_timeout(conn));
    }
}

/* Checks the bytes against the pattern, then pauses: the next chunk may
 * come only after the resume. */
static void f_receive_pausing(em_conn *conn, const char *data, size_t len)
{
    if (F.paused_by_us || em_is_paused(conn))
        F.chunks_while_paused++;
    if (F.bad_at < 0) {
        long bad = th_pat_check((const uint8_t *)data, F.received, len);
        if (bad >= 0)
            F.bad_at = (long)F.received + bad;
    }
    F.received += len;
    F.chunks++;
    F.t_last_rx = th_now();
    F.idle_in_rx = em_get_idle_time(conn);
    cr_assert_eq(em_pause(conn), 0);
    cr_assert_eq(em_is_paused(conn), 1);
    F.paused_by_us = 1;
    if (F.hold_first_pause && F.chunks == 1)
        return;
    /* Alternate: resume on the next turn, or after a short timer. */
    int rc = F.chunks % 2 ? em_next_tick(F.loop, f_resume, NULL)
                          : em_add_timer(F.loop, 0.001, f_resume, NULL, NULL);
    cr_assert_eq(rc, 0);
}

/* Just counts; never pauses. */
static void f_receive_plain(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    F.received += len;
    F.chunks++;
    F.t_last_rx = th_now();
    F.idle_in_rx = em_get_idle_time(conn);
}

static void f_unbind(em_conn *conn, int reason)
{
    cr_assert_eq(conn, F.conn);
    F.conn = NULL;
    F.unbinds++;
    F.reason = reason;
    F.t_unbind = th_now();
}

static const em_handler pausing_handler = {
    .post_init = f_post_init,
    .receive_data = f_receive_pausing,
    .unbind = f_unbind,
};

static const em_handler plain_handler = {
    .post_init = f_post_init,
    .receive_data = f_receive_plain,
    .unbind = f_unbind,
};

/* Resets F, starts a server with h whose connections get the inactivity
 * timeout `timeout` (0: none), connects a blocking client (*fd) and runs
 * until it is accepted. */
static em_server *f_start(em_loop *loop, const em_handler *h, double timeout,
                          int *fd)
{
    memset(&F, 0, sizeof F);
    F.loop = loop;
    F.bad_at = -1;
    F.timeout = timeout;
    em_server *srv = th_start_server(loop, h, NULL);
    *fd = th_connect_accepted(loop, th_listen_port(srv), &F.accepted);
    cr_assert_not_null(F.conn);
    return srv;
}

/* ---- pause inside receive_data --------------------------------------- */

#define PAUSE_TOTAL (1 * MiB)

struct writer {
    int fd;
    size_t total;
    volatile size_t sent;
    int err;
    volatile int done;
};

/* Sends the pattern in 64 KiB writes on a blocking socket, then SHUT_WR. */
static void *writer_main(void *p)
{
    struct writer *w = p;
    static uint8_t buf[64 * KiB];
    while (w->sent < w->total) {
        size_t n = w->total - w->sent;
        if (n > sizeof buf)
            n = sizeof buf;
        th_pat_fill(buf, w->sent, n);
        size_t off = 0;
        while (off < n) {
            ssize_t k = send(w->fd, buf + off, n - off, MSG_NOSIGNAL);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                w->err = k < 0 ? errno : EIO;
                w->done = 1;
                return NULL;
            }
            off += (size_t)k;
            w->sent += (size_t)k;
        }
    }
    if (shutdown(w->fd, SHUT_WR) < 0)
        w->err = errno;
    w->done = 1;
    return NULL;
}

Test(flow, pause_in_receive_data_stops_the_next_chunk,
     .timeout = TH_TIMEOUT(30))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &pausing_handler, 0, &fd);
    F.hold_first_pause = 1; /* read in receive_data: nothing was sent yet */
    cr_assert_eq(em_is_paused(NULL), 0);
    cr_assert_eq(em_pause(NULL), -EINVAL);
    cr_assert_eq(em_resume(NULL), -EINVAL);

    struct writer w = {.fd = fd, .total = PAUSE_TOTAL};
    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, writer_main, &w), 0);

    th_run_until(loop, &F.chunks, 5);
    /* Paused in the first chunk: nothing more while the writer keeps
     * going, although bytes are waiting in the socket. */
    th_run_for(loop, 0.2);
    cr_assert_eq(F.chunks, 1, "%d chunks while paused", F.chunks);
    cr_assert_eq(em_is_paused(F.conn), 1);
    cr_assert_gt(w.sent, F.received, "nothing was waiting: weak test");
    cr_assert_eq(F.unbinds, 0);

    f_resume(loop, NULL);
    th_run_until(loop, &F.unbinds, 20);
    pthread_join(tid, NULL);

    cr_assert_eq(w.err, 0, "writer: %s", strerror(w.err));
    cr_assert_eq(F.chunks_while_paused, 0, "%d chunks arrived while paused",
                 F.chunks_while_paused);
    cr_assert_eq(F.received, PAUSE_TOTAL, "got %zu of %u bytes", F.received,
                 PAUSE_TOTAL);
    cr_assert_eq(F.bad_at, -1, "corrupt byte at %ld", F.bad_at);
    cr_assert_gt(F.chunks, 2, "only %d chunks", F.chunks);
    cr_assert_eq(F.resumes, F.chunks, "%d resumes for %d chunks", F.resumes,
                 F.chunks);
    cr_assert_eq(F.reason, 0, "unbind %s", em_err_name(F.reason));
    close(fd);
    th_stop_and_free(loop, srv);
}

Test(flow, paused_connection_queues_new_data_until_resumed,
     .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0, &fd);
    em_conn *conn = F.conn;

    cr_assert_eq(em_pause(conn), 0);
    cr_assert_eq(em_pause(conn), 0, "pausing twice");
    cr_assert_eq(em_is_paused(conn), 1);
    static uint8_t out[64 * KiB], in[64 * KiB];
    th_pat_fill(out, 0, sizeof out);
    cr_assert_eq(em_send_data(conn, out, sizeof out), 0);
    cr_assert_eq(em_get_outbound_data_size(conn), sizeof out,
                 "a paused connection wrote %zu bytes",
                 sizeof out - em_get_outbound_data_size(conn));

    /* Nothing reaches the client while paused... */
    double until = th_now() + 0.2;
    while (th_now() < until) {
        ssize_t n = recv(fd, in, sizeof in, MSG_DONTWAIT);
        cr_assert(n < 0 && errno == EAGAIN, "client got %zd bytes", n);
        cr_assert_geq(em_run_once(loop, 10), 0);
    }
    cr_assert_eq(em_get_outbound_data_size(conn), sizeof out);

    /* ...and nothing is read either: the client's bytes wait. */
    th_send_all(fd, "ping", 4);
    th_run_for(loop, 0.1);
    cr_assert_eq(F.received, 0, "a paused connection read %zu bytes",
                 F.received);

    cr_assert_eq(em_resume(conn), 0);
    cr_assert_eq(em_is_paused(conn), 0);
    size_t got = th_pump_recv(loop, fd, in, sizeof in, 5);
    cr_assert_eq(got, sizeof in);
    cr_assert_eq(th_pat_check(in, 0, sizeof in), -1, "data corrupted");
    th_run_until_size(loop, &F.received, 4, 5);
    cr_assert_eq(F.received, 4);

    cr_assert_eq(em_close_connection(conn, 1), 0);
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0);
    th_run_until(loop, &F.unbinds, 5);
    cr_assert_eq(F.reason, 0);
    close(fd);
    th_stop_and_free(loop, srv);
}

Test(flow, pause_holds_back_an_already_flowing_queue, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0, &fd);
    em_conn *conn = F.conn;

    static uint8_t piece[64 * KiB];
    size_t total = 0;
    while (em_get_outbound_data_size(conn) < 2 * MiB) {
        cr_assert_lt(total, 128u * MiB, "nothing ever queued");
        th_pat_fill(piece, total, sizeof piece);
        cr_assert_eq(em_send_data(conn, piece, sizeof piece), 0);
        total += sizeof piece;
    }
    cr_assert_eq(em_pause(conn), 0);
    size_t queued = em_get_outbound_data_size(conn);

    /* The client drains what the kernel holds; the queue must not move. */
    static uint8_t in[256 * KiB];
    size_t got = 0;
    double until = th_now() + 0.2;
    while (th_now() < until) {
        ssize_t n = recv(fd, in, sizeof in, MSG_DONTWAIT);
        if (n > 0) {
            cr_assert_eq(th_pat_check(in, got, (size_t)n), -1);
            got += (size_t)n;
        }
        cr_assert_geq(em_run_once(loop, 2), 0);
    }
    cr_assert_eq(em_get_outbound_data_size(conn), queued,
                 "a paused connection wrote queued data");
    cr_assert_eq(got, total - queued, "client got %zu, kernel had %zu", got,
                 total - queued);

    cr_assert_eq(em_resume(conn), 0);
    cr_assert_eq(em_close_connection(conn, 1), 0);
    int err;
    got = th_pump_pattern_eof(loop, fd, got, total, &err, 10);
    cr_assert_eq(err, 0, "recv: %s", em_err_name(err));
    cr_assert_eq(got, total, "got %zu of %zu after resume", got, total);
    th_run_until(loop, &F.unbinds, 5);
    cr_assert_eq(F.reason, 0);
    close(fd);
    th_stop_and_free(loop, srv);
}

/* ---- inactivity timeout ---------------------------------------------- */

/* An unbind by a 0.2 s inactivity timeout: -ETIMEDOUT, and `elapsed`
 * seconds after `since` (the last activity) between 0.15 and 0.6. */
static void expect_timed_out(int reason, double elapsed, const char *since)
{
    cr_assert_eq(reason, -ETIMEDOUT, "unbind %s", em_err_name(reason));
    cr_assert_geq(elapsed, 0.15, "timed out %.3f s after %s", elapsed, since);
    cr_assert_leq(elapsed, TH_TIMEOUT(0.6), "timed out %.3f s after %s",
                  elapsed, since);
}

Test(flow, inactivity_timeout_fires_after_idle_time, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0.2, &fd);

    th_run_until(loop, &F.unbinds, 3);
    expect_timed_out(F.reason, F.t_unbind - F.t_accept, "the accept");
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0, "client saw no EOF");
    close(fd);
    th_stop_and_free(loop, srv);
}

Test(flow, inactivity_timeout_is_reset_by_reads, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0.2, &fd);

    /* A byte every 50 ms for 0.7 s: more than three timeouts' worth. */
    double start = th_now();
    while (th_now() - start < 0.7) {
        th_send_all(fd, "x", 1);
        th_run_for(loop, 0.05);
        cr_assert_eq(F.unbinds, 0, "timed out after %.3f s despite traffic",
                     th_now() - start);
    }
    cr_assert_geq(F.received, 10);

    th_run_until(loop, &F.unbinds, 3);
    expect_timed_out(F.reason, F.t_unbind - F.t_last_rx, "the last byte");
    close(fd);
    th_stop_and_free(loop, srv);
}

static void send_tick(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    if (F.conn) {
        cr_assert_eq(em_send_data(F.conn, "t", 1), 0);
        F.t_last_rx = th_now(); /* here: time of the last write */
    }
}

Test(flow, inactivity_timeout_is_reset_by_writes, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0.2, &fd);

    em_timer_id tick;
    cr_assert_eq(em_add_periodic_timer(loop, 0.05, send_tick, NULL, &tick), 0);
    th_run_for(loop, 0.7);
    cr_assert_eq(F.unbinds, 0, "timed out although we kept writing");
    cr_assert_eq(em_cancel_timer(loop, tick), 0);

    th_run_until(loop, &F.unbinds, 3);
    expect_timed_out(F.reason, F.t_unbind - F.t_last_rx, "the last write");

    static char in[64];
    size_t got = th_pump_recv(loop, fd, in, sizeof in, 5);
    cr_assert_geq(got, 10, "client got %zu ticks", got);
    cr_assert_lt(got, sizeof in);
    close(fd);
    th_stop_and_free(loop, srv);
}

Test(flow, inactivity_timeout_get_set_and_zero_disables,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0.2, &fd);
    em_conn *conn = F.conn;

    cr_assert_eq(em_set_comm_inactivity_timeout(NULL, 1.0), -EINVAL);
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, -1.0), -EINVAL);
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, NAN), -EINVAL);
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, INFINITY), -EINVAL);
    cr_assert_eq(em_get_comm_inactivity_timeout(NULL), 0.0);
    cr_assert(fabs(em_get_comm_inactivity_timeout(conn) - 0.2) < 1e-9,
              "a refused set changed the timeout to %f",
              em_get_comm_inactivity_timeout(conn));
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, 1.5), 0);
    cr_assert(fabs(em_get_comm_inactivity_timeout(conn) - 1.5) < 1e-9);
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, 0), 0);
    cr_assert_eq(em_get_comm_inactivity_timeout(conn), 0.0);

    th_run_for(loop, 0.5);
    cr_assert_eq(F.unbinds, 0, "timed out with the timeout disabled");

    /* Re-enabled: counts from now, fires again. */
    double armed = th_now();
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, 0.1), 0);
    th_run_until(loop, &F.unbinds, 3);
    cr_assert_eq(F.reason, -ETIMEDOUT);
    cr_assert_geq(F.t_unbind - armed, 0.07, "fired after %.3f s",
                  F.t_unbind - armed);
    close(fd);
    th_stop_and_free(loop, srv);
}

Test(flow, idle_time_grows_and_resets_on_traffic, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = f_start(loop, &plain_handler, 0, &fd);
    em_conn *conn = F.conn;

    cr_assert_eq(em_get_idle_time(NULL), 0.0);
    th_run_for(loop, 0.15);
    double idle1 = em_get_idle_time(conn);
    cr_assert_geq(idle1, 0.13, "idle %.3f s after 0.15 s of silence", idle1);
    th_run_for(loop, 0.1);
    double idle2 = em_get_idle_time(conn);
    cr_assert_geq(idle2, idle1 + 0.08, "idle time %.3f -> %.3f", idle1, idle2);

    /* A read resets it: zero inside receive_data, small just after. */
    th_send_all(fd, "r", 1);
    th_run_until_size(loop, &F.received, 1, 5);
    cr_assert_lt(F.idle_in_rx, 0.001, "idle %.4f s inside receive_data",
                 F.idle_in_rx);
    cr_assert_lt(em_get_idle_time(conn), 0.05);

    /* So does a write. */
    th_run_for(loop, 0.1);
    cr_assert_geq(em_get_idle_time(conn), 0.08);
    cr_assert_eq(em_send_data(conn, "w", 1), 0);
    cr_assert_lt(em_get_idle_time(conn), 0.001, "idle %.4f s after a write",
                 em_get_idle_time(conn));
    char c;
    cr_assert_eq(th_pump_recv(loop, fd, &c, 1, 5), 1);

    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until(loop, &F.unbinds, 5);
    cr_assert_eq(F.reason, 0);
    close(fd);
    th_stop_and_free(loop, srv);
}

/* ---- many connections ------------------------------------------------- */

#define NMANY 200

struct many_state {
    int idx;
    double t_accept;
    double timeout;
};

static struct {
    int accepted, unbinds, bad_reason;
    double t_unbind[NMANY];
    double t_accept[NMANY];
    double timeout[NMANY];
    em_conn *conns[NMANY];
    int order[NMANY];       /* accept index, in unbind order */
    const double *timeouts; /* per accept index; NULL: same for all */
    double same_timeout;
} T;

static void t_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    struct many_state *st = em_conn_state(conn);
    cr_assert_lt(T.accepted, NMANY);
    st->idx = T.accepted++;
    st->t_accept = th_now();
    st->timeout = T.timeouts ? T.timeouts[st->idx] : T.same_timeout;
    T.conns[st->idx] = conn;
    T.t_accept[st->idx] = st->t_accept;
    T.timeout[st->idx] = st->timeout;
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, st->timeout), 0);
}

static void t_unbind(em_conn *conn, int reason)
{
    struct many_state *st = em_conn_state(conn);
    T.conns[st->idx] = NULL;
    T.t_unbind[st->idx] = th_now();
    T.order[T.unbinds++] = st->idx;
    if (reason != -ETIMEDOUT)
        T.bad_reason = reason ? reason : -1;
}

static const em_handler timeout_handler = {
    .state_size = sizeof(struct many_state),
    .post_init = t_post_init,
    .unbind = t_unbind,
};

Test(flow, many_connections_with_one_timeout_all_expire,
     .timeout = TH_TIMEOUT(20))
{
    memset(&T, 0, sizeof T);
    T.same_timeout = 0.3;
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &timeout_handler, NULL);
    int port = th_listen_port(srv);
    int fds[NMANY];
    for (int i = 0; i < NMANY; i++)
        fds[i] = th_client_connect(port);
    th_run_until_count(loop, &T.accepted, NMANY, 5);

    /* The odd ones see traffic halfway: they move to the back of the
     * queue and must expire later than every even one. */
    th_run_for(loop, 0.15);
    cr_assert_eq(T.unbinds, 0, "expired early");
    for (int i = 1; i < NMANY; i += 2)
        cr_assert_eq(em_send_data(T.conns[i], "k", 1), 0);
    double t_touch = th_now();

    th_run_until_count(loop, &T.unbinds, NMANY, 5);
    cr_assert_eq(T.bad_reason, 0, "unbind reason %s",
                 em_err_name(T.bad_reason));
    double last_even = 0, first_odd = 1e30;
    for (int i = 0; i < NMANY; i++) {
        if (i % 2 == 0) {
            double idle = T.t_unbind[i] - T.t_accept[i];
            cr_assert_geq(idle, 0.25, "conn %d expired after %.3f s", i, idle);
            cr_assert_leq(idle, TH_TIMEOUT(0.9), "conn %d after %.3f s", i,
                          idle);
            if (T.t_unbind[i] > last_even)
                last_even = T.t_unbind[i];
        } else {
            double idle = T.t_unbind[i] - t_touch;
            cr_assert_geq(idle, 0.25,
                          "touched conn %d expired %.3f s after its write", i,
                          idle);
            if (T.t_unbind[i] < first_odd)
                first_odd = T.t_unbind[i];
        }
    }
    cr_assert_lt(last_even, first_odd,
                 "a touched connection expired before an idle one");
    for (int i = 0; i < NMANY; i++) {
        cr_assert_eq(th_pump_eof(loop, fds[i], 5), 0);
        close(fds[i]);
    }
    th_stop_and_free(loop, srv);
}

Test(flow, different_timeouts_expire_in_their_own_order,
     .timeout = TH_TIMEOUT(20))
{
    /* Six durations, six queues (more than the first allocation holds),
     * armed out of order. */
    static const double timeouts[] = {0.35, 0.1, 0.3, 0.15, 0.25, 0.2};
    enum { N = sizeof timeouts / sizeof timeouts[0] };
    memset(&T, 0, sizeof T);
    T.timeouts = timeouts;
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &timeout_handler, NULL);
    int port = th_listen_port(srv);
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = th_client_connect(port);
    th_run_until_count(loop, &T.accepted, N, 5);
    th_run_until_count(loop, &T.unbinds, N, 5);

    cr_assert_eq(T.bad_reason, 0, "unbind %s", em_err_name(T.bad_reason));
    for (int k = 1; k < N; k++)
        cr_assert_lt(T.timeout[T.order[k - 1]], T.timeout[T.order[k]],
                     "%.2f s timeout expired after %.2f s one",
                     T.timeout[T.order[k - 1]], T.timeout[T.order[k]]);
    for (int i = 0; i < N; i++) {
        double idle = T.t_unbind[i] - T.t_accept[i];
        cr_assert_geq(idle, T.timeout[i] - 0.03, "%.2f s timeout after %.3f",
                      T.timeout[i], idle);
        cr_assert_leq(idle, T.timeout[i] + TH_TIMEOUT(0.3),
                      "%.2f s timeout after %.3f", T.timeout[i], idle);
        close(fds[i]);
    }
    th_stop_and_free(loop, srv);
}

Test(flow, timeouts_due_in_one_turn_unbind_in_deadline_order,
     .timeout = TH_TIMEOUT(20))
{
    /* A long callback (here: a stalled loop) lets several timeouts pass at
     * once; they still unbind earliest deadline first, whichever queue. */
    static const double timeouts[] = {0.3, 0.1, 0.25, 0.2};
    enum { N = sizeof timeouts / sizeof timeouts[0] };
    memset(&T, 0, sizeof T);
    T.timeouts = timeouts;
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &timeout_handler, NULL);
    int port = th_listen_port(srv);
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = th_client_connect(port);
    th_run_until_count(loop, &T.accepted, N, 5);
    cr_assert_eq(T.unbinds, 0);

    usleep(450 * 1000);
    th_run_until_count(loop, &T.unbinds, N, 5);
    cr_assert_eq(T.bad_reason, 0, "unbind %s", em_err_name(T.bad_reason));
    for (int k = 1; k < N; k++)
        cr_assert_lt(T.timeout[T.order[k - 1]], T.timeout[T.order[k]],
                     "%.2f s timeout unbound before the %.2f s one",
                     T.timeout[T.order[k - 1]], T.timeout[T.order[k]]);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    th_stop_and_free(loop, srv);
}

/* ---- an outbound connection ------------------------------------------- */

static struct {
    int completed, unbinds, reason;
    double t_completed, t_unbind;
    double get_while_connecting;
    int server_unbinds, server_reason;
} O;

static void o_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    cr_assert_eq(em_is_connecting(conn), 1);
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, 0.2), 0);
    O.get_while_connecting = em_get_comm_inactivity_timeout(conn);
}

static void o_completed(em_conn *conn)
{
    (void)conn;
    O.completed++;
    O.t_completed = th_now();
}

static void o_unbind(em_conn *conn, int reason)
{
    (void)conn;
    O.unbinds++;
    O.reason = reason;
    O.t_unbind = th_now();
}

static const em_handler outbound_handler = {
    .post_init = o_post_init,
    .connection_completed = o_completed,
    .unbind = o_unbind,
};

static void o_server_unbind(em_conn *conn, int reason)
{
    (void)conn;
    O.server_unbinds++;
    O.server_reason = reason;
}

static const em_handler o_server_handler = {.unbind = o_server_unbind};

Test(flow, inactivity_timeout_set_while_connecting_applies_once_connected,
     .timeout = TH_TIMEOUT(10))
{
    memset(&O, 0, sizeof O);
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &o_server_handler, NULL);
    em_conn *conn = NULL;
    int rc = em_connect(loop, "127.0.0.1", th_listen_port(srv),
                        &outbound_handler, NULL, &conn);
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
    cr_assert(fabs(O.get_while_connecting - 0.2) < 1e-9);

    th_run_until(loop, &O.unbinds, 3);
    th_run_until(loop, &O.server_unbinds, 3);
    cr_assert_eq(O.completed, 1);
    expect_timed_out(O.reason, O.t_unbind - O.t_completed, "connecting");
    cr_assert_eq(O.server_reason, 0, "server unbind %s",
                 em_err_name(O.server_reason));
    th_stop_and_free(loop, srv);
}
