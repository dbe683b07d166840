/*
 * test_backpressure.c - flow control beyond EventMachine's pause:
 * em_pause_reading / em_resume_reading and outbound watermarks.
 *
 * Covers: a read-only pause stops receive_data while the connection still
 * writes, and resuming delivers everything in order; an echo server with
 * watermarks facing a client that sends 32 MiB and reads nothing keeps its
 * queue near the high mark (not 32 MiB), then echoes every byte intact
 * once the client reads, with drained firing; a watermark that throttles
 * another connection; bad arguments.
 */
#include <errno.h>
#include <fcntl.h>
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

typedef struct counted {
    th_echo echo; /* first: th_echo_post_init's arg */
    size_t received;
    size_t high;
    size_t low;
    size_t max_outbound;
    int drained;
    int pause_reading;
    int bad;
} counted;

static void counted_post_init(em_conn *conn, void *arg)
{
    counted *c = arg;
    th_echo_post_init(conn, &c->echo);
    if (c->high)
        cr_assert_eq(em_set_watermarks(conn, c->high, c->low, NULL), 0);
    if (c->pause_reading) {
        cr_assert_eq(em_pause_reading(conn), 0);
        cr_assert(em_is_reading_paused(conn));
        cr_assert_not(em_is_paused(conn));
    }
}

/* Echoes, checking the pattern and tracking the queue's peak. */
static void counted_receive(em_conn *conn, const char *data, size_t len)
{
    counted *c = em_conn_arg(conn);
    if (th_pat_check((const uint8_t *)data, c->received, len) >= 0)
        c->bad = 1;
    c->received += len;
    cr_assert_eq(em_send_data(conn, data, len), 0);
    size_t out = em_get_outbound_data_size(conn);
    if (out > c->max_outbound)
        c->max_outbound = out;
}

static void counted_drained(em_conn *conn)
{
    counted *c = em_conn_arg(conn);
    c->drained++;
}

static const em_handler counted_handler = {
    .post_init = counted_post_init,
    .receive_data = counted_receive,
    .drained = counted_drained,
    .unbind = th_echo_unbind,
};

static void set_nonblocking(int fd)
{
    cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

static void small_buffers(int fd)
{
    int size = 64 * KiB;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)), 0);
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)), 0);
}

static void small_post_init(em_conn *conn, void *arg)
{
    int size = 64 * KiB;
    cr_assert_eq(
        em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)), 0);
    cr_assert_eq(
        em_set_sock_opt(conn, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)), 0);
    counted_post_init(conn, arg);
}

/* Small socket buffers keep what the kernel holds under 1 MiB, so 8 MiB
 * is enough to show the server stops reading instead of queueing. */
Test(backpressure, watermarks_bound_an_echo_to_a_client_that_never_reads,
     .timeout = TH_TIMEOUT(30))
{
    size_t total = 8 * MiB;
    em_handler h = counted_handler;
    h.post_init = small_post_init;
    em_loop *loop = th_loop();
    counted c = {.high = 256 * KiB, .low = 64 * KiB};
    em_server *srv = th_start_server(loop, &h, &c);
    int fd = th_client_connect(th_listen_port(srv));
    small_buffers(fd);
    set_nonblocking(fd);
    static uint8_t piece[64 * KiB];
    static uint8_t in[256 * KiB];
    size_t sent = 0, echoed = 0;

    /* Phase 1: send without reading until nothing moves for 0.3 s. */
    double stuck_since = 0;
    double deadline = th_now() + TH_TIMEOUT(20);
    while (sent < total) {
        cr_assert_lt(th_now(), deadline, "sent %zu", sent);
        size_t n = total - sent < sizeof(piece) ? total - sent : sizeof(piece);
        th_pat_fill(piece, sent, n);
        ssize_t w = send(fd, piece, n, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            stuck_since = 0;
        } else {
            cr_assert(errno == EAGAIN, "send: %s", strerror(errno));
            if (stuck_since == 0)
                stuck_since = th_now();
            else if (th_now() - stuck_since > 0.3)
                break;
        }
        em_run_once(loop, 1);
    }
    cr_assert_lt(sent, total, "the server kept reading and queueing");
    cr_assert_leq(c.max_outbound, c.high + 4 * 64 * KiB,
                  "the queue grew to %zu bytes", c.max_outbound);

    /* Phase 2: read; everything comes back intact. */
    while (echoed < total) {
        cr_assert_lt(th_now(), deadline, "sent %zu, echoed %zu", sent, echoed);
        if (sent < total) {
            size_t n =
                total - sent < sizeof(piece) ? total - sent : sizeof(piece);
            th_pat_fill(piece, sent, n);
            ssize_t w = send(fd, piece, n, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        ssize_t r = recv(fd, in, sizeof(in), MSG_DONTWAIT);
        if (r > 0) {
            cr_assert_eq(th_pat_check(in, echoed, (size_t)r), -1,
                         "echo corrupt at %zu", echoed);
            echoed += (size_t)r;
        }
        em_run_once(loop, 1);
    }
    cr_assert_not(c.bad, "the server saw bytes out of place");
    cr_assert_leq(c.max_outbound, c.high + 4 * 64 * KiB);
    cr_assert_gt(c.drained, 0);
    close(fd);
    th_run_until_count(loop, &c.echo.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
}

Test(backpressure, pause_reading_keeps_writing, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    counted c = {.pause_reading = 1};
    em_server *srv = th_start_server(loop, &counted_handler, &c);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &c.echo.accepted);
    static uint8_t buf[MiB];
    th_pat_fill(buf, 0, sizeof(buf));
    th_send_all(fd, buf, 100 * KiB);
    th_run_for(loop, 0.2);
    cr_assert_eq(c.received, 0, "reading is paused");
    /* writing still works while reading is paused */
    cr_assert_eq(em_send_data(c.echo.conn, "out", 3), 0);
    char got[3];
    cr_assert_eq(th_pump_recv(loop, fd, got, 3, 5), 3);
    cr_assert(memcmp(got, "out", 3) == 0);
    cr_assert_eq(em_resume_reading(c.echo.conn), 0);
    cr_assert_not(em_is_reading_paused(c.echo.conn));
    th_run_until_size(loop, &c.received, 100 * KiB, 5);
    cr_assert_not(c.bad);
    close(fd);
    th_run_until_count(loop, &c.echo.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
}

/* conn A's queue throttles conn B: B stops reading while A's queue is
 * above the mark. */
Test(backpressure, a_watermark_throttles_another_connection,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int port = th_listen_port(srv);
    int fa = th_connect_accepted(loop, port, &e.accepted);
    em_conn *a = e.conn;
    int fb = th_connect_accepted(loop, port, &e.accepted);
    em_conn *b = e.conn;
    cr_assert_eq(em_set_watermarks(a, 100, 10, b), 0);
    cr_assert_eq(em_set_watermarks(b, 100, 10, b), -EBUSY,
                 "b is already throttled by a");
    cr_assert_eq(em_set_watermarks(a, 10, 10, b), -EINVAL);
    cr_assert_eq(em_set_watermarks(NULL, 10, 1, NULL), -EINVAL);
    /* fill a's queue: its client does not read */
    static uint8_t big[8 * MiB];
    cr_assert_eq(em_send_data(a, big, sizeof(big)), 0);
    cr_assert_gt(em_get_outbound_data_size(a), 100);
    th_send_all(fb, "ping", 4);
    th_run_for(loop, 0.2);
    char got[4];
    cr_assert_eq(recv(fb, got, sizeof(got), MSG_DONTWAIT), -1,
                 "b did not read (no echo)");
    /* a drains: b reads again */
    size_t drained = 0;
    static uint8_t sink[256 * 1024];
    double deadline = th_now() + TH_TIMEOUT(5);
    while (drained < sizeof(big)) {
        cr_assert_lt(th_now(), deadline);
        ssize_t r = recv(fa, sink, sizeof(sink), MSG_DONTWAIT);
        if (r > 0)
            drained += (size_t)r;
        em_run_once(loop, 1);
    }
    cr_assert_eq(th_pump_recv(loop, fb, got, 4, 5), 4);
    cr_assert(memcmp(got, "ping", 4) == 0);
    cr_assert_eq(em_set_watermarks(a, 0, 0, b), 0, "high 0 removes them");
    close(fa);
    close(fb);
    th_run_until_count(loop, &e.unbinds, 2, 5);
    th_stop_and_free(loop, srv);
}

Test(backpressure, bad_arguments, .timeout = TH_TIMEOUT(5))
{
    cr_assert_eq(em_pause_reading(NULL), -EINVAL);
    cr_assert_eq(em_resume_reading(NULL), -EINVAL);
    cr_assert_eq(em_is_reading_paused(NULL), 0);
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    em_conn *c = e.conn;
    em_close_connection(c, 0);
    cr_assert_eq(em_pause_reading(c), -ENOTCONN);
    cr_assert_eq(em_resume_reading(c), -ENOTCONN);
    cr_assert_eq(em_set_watermarks(c, 10, 1, NULL), -ENOTCONN);
    th_run_until_count(loop, &e.unbinds, 1, 5);
    close(fd);
    th_stop_and_free(loop, srv);
}
