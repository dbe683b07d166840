/*
 * test_proxy.c - em_proxy_incoming_to between connections.
 *
 * Layout of most tests: a raw client socket -> libem "front" server; the
 * front's post_init connects to a libem "back" server and proxies front ->
 * back (and back -> front for the two-way tests). Covers: 8 MiB through
 * the splice path (a pipe exists, receive_data never runs, proxied bytes
 * counted, bytes intact); a two-way TCP proxy echoing random-size writes;
 * length: proxy_completed after exactly N bytes, the rest to receive_data;
 * bufsize: a back end that does not read bounds the queue at the target
 * and stops the source, then everything arrives; bytes the program sends
 * to the target stay in order with proxied ones; the target going away
 * gives proxy_target_unbound and data to receive_data again; stop
 * proxying; bad arguments; no descriptor leaks.
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
#include "internal.h"

#define KiB (1024u)
#define MiB (1024u * 1024u)

/* ---- the back end: counts and checks what arrives, may echo ---------- */

typedef struct back {
    size_t received;
    int bad;
    int echo;
    int paused; /* pause reading in post_init */
    int unbinds;
    char text[256];
    size_t text_len;
    em_conn *conn;
} back;

static void back_post_init(em_conn *conn, void *arg)
{
    back *b = arg;
    b->conn = conn;
    int small = 64 * KiB;
    em_set_sock_opt(conn, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    if (b->paused)
        em_pause_reading(conn);
}

static void back_receive(em_conn *conn, const char *data, size_t len)
{
    back *b = em_conn_arg(conn);
    if (th_pat_check((const uint8_t *)data, b->received, len) >= 0)
        b->bad = 1;
    if (b->text_len + len < sizeof(b->text)) {
        memcpy(b->text + b->text_len, data, len);
        b->text_len += len;
    }
    b->received += len;
    if (b->echo)
        cr_assert_eq(em_send_data(conn, data, len), 0);
}

static void back_unbind(em_conn *conn, int reason)
{
    (void)reason;
    back *b = em_conn_arg(conn);
    b->unbinds++;
    if (b->conn == conn)
        b->conn = NULL;
}

static const em_handler back_handler = {
    .post_init = back_post_init,
    .receive_data = back_receive,
    .unbind = back_unbind,
};

/* ---- the front: a connection that proxies to a new back-end link ------ */

typedef struct front {
    int back_port;
    int two_way;
    size_t bufsize;
    size_t length;
    int accepted;
    int unbinds;
    int completed;
    int target_unbound;
    size_t plain; /* bytes that reached receive_data */
    char plain_text[2048];
    uint64_t proxied_at_unbind;
    em_conn *conn;
    em_conn *link;
    int link_unbinds;
} front;

static void link_unbind(em_conn *conn, int reason)
{
    (void)reason;
    front *f = em_conn_arg(conn);
    f->link_unbinds++;
    f->link = NULL;
    if (f->conn)
        em_close_connection(f->conn, 1);
}

static void link_completed(em_conn *conn)
{
    front *f = em_conn_arg(conn);
    if (f->two_way && f->conn)
        cr_assert_eq(em_proxy_incoming_to(conn, f->conn, 0, 0), 0);
}

static const em_handler link_handler = {
    .connection_completed = link_completed,
    .unbind = link_unbind,
};

static void small_buffers_conn(em_conn *conn)
{
    int small = 64 * KiB;
    em_set_sock_opt(conn, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
}

static void front_post_init(em_conn *conn, void *arg)
{
    front *f = arg;
    f->accepted++;
    /* Loopback autotuning lets sockets hold tens of MiB; small buffers
     * make backpressure visible within a few MiB. */
    small_buffers_conn(conn);
    f->conn = conn;
    cr_assert_eq(em_connect(f->conn->loop, "127.0.0.1", f->back_port,
                            &link_handler, f, &f->link),
                 0);
    int rc = em_proxy_incoming_to(conn, f->link, f->bufsize, f->length);
    cr_assert_eq(rc, 0, "%s", em_strerror(rc));
}

static void front_receive(em_conn *conn, const char *data, size_t len)
{
    front *f = em_conn_arg(conn);
    if (f->plain + len < sizeof(f->plain_text))
        memcpy(f->plain_text + f->plain, data, len);
    f->plain += len;
}

static void front_unbind(em_conn *conn, int reason)
{
    (void)reason;
    front *f = em_conn_arg(conn);
    f->unbinds++;
    f->proxied_at_unbind = em_get_proxied_bytes(conn);
    f->conn = NULL;
    if (f->link)
        em_close_connection(f->link, 1);
}

static void front_completed(em_conn *conn)
{
    front *f = em_conn_arg(conn);
    f->completed++;
    cr_assert_eq(em_stop_proxying(conn), -ENOENT, "already stopped");
}

static void front_target_unbound(em_conn *conn)
{
    front *f = em_conn_arg(conn);
    f->target_unbound++;
}

static const em_handler front_handler = {
    .post_init = front_post_init,
    .receive_data = front_receive,
    .unbind = front_unbind,
    .proxy_completed = front_completed,
    .proxy_target_unbound = front_target_unbound,
};

typedef struct rig {
    em_loop *loop;
    em_server *back_srv;
    em_server *front_srv;
    int fd; /* the client */
    int fds_before;
} rig;

static void rig_up(rig *r, back *b, front *f)
{
    r->fds_before = th_count_fds();
    r->loop = th_loop();
    r->back_srv = th_start_server(r->loop, &back_handler, b);
    f->back_port = th_listen_port(r->back_srv);
    r->front_srv = th_start_server(r->loop, &front_handler, f);
    r->fd = th_client_connect(th_listen_port(r->front_srv));
    int small = 64 * KiB;
    setsockopt(r->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    th_run_until_count(r->loop, &f->accepted, 1, 5);
}

static void rig_down(rig *r, back *b, front *f)
{
    if (r->fd >= 0)
        close(r->fd);
    th_run_until_count(r->loop, &f->unbinds, 1, 5);
    th_run_until_count(r->loop, &f->link_unbinds, 1, 5);
    th_run_until_count(r->loop, &b->unbinds, 1, 5);
    em_stop_server(r->back_srv);
    th_stop_and_free(r->loop, r->front_srv);
    cr_assert_eq(th_count_fds(), r->fds_before, "a descriptor leaked");
}

/* Sends without blocking, running the loop whenever the socket is full:
 * the loop is what drains it. */
static void send_pattern(rig *r, size_t offset, size_t len)
{
    static uint8_t buf[64 * KiB];
    double deadline = th_now() + TH_TIMEOUT(20);
    while (len > 0) {
        cr_assert_lt(th_now(), deadline, "%zu bytes left to send", len);
        size_t n = len < sizeof(buf) ? len : sizeof(buf);
        th_pat_fill(buf, offset, n);
        ssize_t w = send(r->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            offset += (size_t)w;
            len -= (size_t)w;
        } else {
            cr_assert(errno == EAGAIN, "send: %s", strerror(errno));
        }
        em_run_once(r->loop, w > 0 ? 0 : 1);
    }
}

Test(proxy, eight_mib_through_splice, .timeout = TH_TIMEOUT(30))
{
    back b = {0};
    front f = {0};
    rig r;
    rig_up(&r, &b, &f);
    cr_assert_not_null(f.conn->relay->proxy, "proxying");
    size_t total = 8 * MiB;
    send_pattern(&r, 0, total);
    th_run_until_size(r.loop, &b.received, total, 20);
    cr_assert_not(b.bad, "bytes out of place");
    cr_assert_eq(f.plain, 0, "receive_data never ran");
    cr_assert_eq(em_get_proxied_bytes(f.conn), total);
    rig_down(&r, &b, &f);
    cr_assert_eq(f.proxied_at_unbind, total, "readable in unbind");
}

Test(proxy, two_way_proxy_echoes_random_writes, .timeout = TH_TIMEOUT(30))
{
    back b = {.echo = 1};
    front f = {.two_way = 1};
    rig r;
    rig_up(&r, &b, &f);
    static uint8_t buf[64 * KiB];
    uint64_t seed = 7;
    size_t sent = 0, got = 0, total = 2 * MiB;
    double deadline = th_now() + TH_TIMEOUT(20);
    while (got < total) {
        cr_assert_lt(th_now(), deadline, "got %zu of %zu", got, total);
        if (sent < total) {
            seed = seed * 6364136223846793005u + 1442695040888963407u;
            size_t n = 1 + (size_t)(seed >> 33) % sizeof(buf);
            if (n > total - sent)
                n = total - sent;
            th_pat_fill(buf, sent, n);
            th_send_all(r.fd, buf, n);
            sent += n;
        }
        ssize_t k = recv(r.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (k > 0) {
            cr_assert_eq(th_pat_check(buf, got, (size_t)k), -1,
                         "echo corrupt at %zu", got);
            got += (size_t)k;
        }
        em_run_once(r.loop, 1);
    }
    cr_assert_eq(f.plain, 0);
    rig_down(&r, &b, &f);
}

Test(proxy, length_then_proxy_completed, .timeout = TH_TIMEOUT(10))
{
    back b = {0};
    front f = {.length = 1000};
    rig r;
    rig_up(&r, &b, &f);
    th_run_for(r.loop, 0.05); /* the link connects */
    send_pattern(&r, 0, 1500);
    th_run_until_count(r.loop, &f.completed, 1, 5);
    th_run_until_size(r.loop, &f.plain, 500, 5);
    th_run_until_size(r.loop, &b.received, 1000, 5);
    th_run_for(r.loop, 0.05);
    cr_assert_eq(b.received, 1000, "exactly length bytes proxied");
    cr_assert_eq(f.plain, 500, "the rest went to receive_data");
    cr_assert_eq(th_pat_check((uint8_t *)f.plain_text, 1000, 200), -1);
    cr_assert_eq(em_get_proxied_bytes(f.conn), 1000);
    rig_down(&r, &b, &f);
}

Test(proxy, bufsize_stops_the_source_until_the_target_drains,
     .timeout = TH_TIMEOUT(40))
{
    back b = {.paused = 1};
    front f = {.bufsize = 128 * KiB};
    rig r;
    rig_up(&r, &b, &f);
    int fl = fcntl(r.fd, F_GETFL);
    fcntl(r.fd, F_SETFL, fl | O_NONBLOCK);
    static uint8_t buf[64 * KiB];
    size_t sent = 0, max_queue = 0, total = 32 * MiB;
    double stuck_since = 0, deadline = th_now() + TH_TIMEOUT(30);
    while (sent < total) {
        cr_assert_lt(th_now(), deadline);
        size_t n = total - sent < sizeof(buf) ? total - sent : sizeof(buf);
        th_pat_fill(buf, sent, n);
        ssize_t w = send(r.fd, buf, n, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            stuck_since = 0;
        } else if (stuck_since == 0) {
            stuck_since = th_now();
        } else if (th_now() - stuck_since > 0.3) {
            break;
        }
        em_run_once(r.loop, 1);
        if (f.link && em_get_outbound_data_size(f.link) > max_queue)
            max_queue = em_get_outbound_data_size(f.link);
    }
    cr_assert_lt(sent, total, "the source kept reading");
    cr_assert_leq(max_queue, f.bufsize + 64 * KiB,
                  "%zu bytes waited at the target", max_queue);
    cr_assert_eq(em_resume_reading(b.conn), 0);
    while (sent < total || b.received < total) {
        cr_assert_lt(th_now(), deadline, "back got %zu of %zu", b.received,
                     total);
        if (sent < total) {
            size_t n = total - sent < sizeof(buf) ? total - sent : sizeof(buf);
            th_pat_fill(buf, sent, n);
            ssize_t w = send(r.fd, buf, n, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        em_run_once(r.loop, 1);
    }
    cr_assert_not(b.bad);
    rig_down(&r, &b, &f);
}

Test(proxy, program_bytes_stay_in_order_with_proxied_ones,
     .timeout = TH_TIMEOUT(10))
{
    back b = {0};
    front f = {0};
    rig r;
    rig_up(&r, &b, &f);
    th_run_for(r.loop, 0.05);
    th_send_all(r.fd, "one-", 4);
    th_run_until_size(r.loop, &b.received, 4, 5);
    cr_assert_eq(em_send_data(f.link, "two-", 4), 0);
    th_send_all(r.fd, "three", 5);
    th_run_until_size(r.loop, &b.received, 13, 5);
    cr_assert_eq(b.text_len, 13);
    cr_assert(memcmp(b.text, "one-two-three", 13) == 0, "%.13s", b.text);
    rig_down(&r, &b, &f);
}

Test(proxy, target_unbound_then_receive_data, .timeout = TH_TIMEOUT(10))
{
    back b = {0};
    front f = {0};
    rig r;
    rig_up(&r, &b, &f);
    th_run_for(r.loop, 0.05);
    em_conn *front_conn = f.conn;
    /* the link goes; link_unbind would close the front: detach first */
    em_conn *link = f.link;
    f.conn = NULL;
    em_close_connection(link, 0);
    th_run_until_count(r.loop, &f.target_unbound, 1, 5);
    f.conn = front_conn;
    th_send_all(r.fd, "after", 5);
    th_run_until_size(r.loop, &f.plain, 5, 5);
    cr_assert(memcmp(f.plain_text, "after", 5) == 0);
    cr_assert_eq(em_stop_proxying(f.conn), -ENOENT);
    em_close_connection(f.conn, 0);
    rig_down(&r, &b, &f);
}

Test(proxy, stop_proxying_returns_data_to_receive_data,
     .timeout = TH_TIMEOUT(10))
{
    back b = {0};
    front f = {0};
    rig r;
    rig_up(&r, &b, &f);
    th_run_for(r.loop, 0.05);
    th_send_all(r.fd, "proxied", 7);
    th_run_until_size(r.loop, &b.received, 7, 5);
    cr_assert_eq(em_stop_proxying(f.conn), 0);
    th_send_all(r.fd, "mine", 4);
    th_run_until_size(r.loop, &f.plain, 4, 5);
    cr_assert(memcmp(f.plain_text, "mine", 4) == 0);
    cr_assert_eq(b.received, 7);
    rig_down(&r, &b, &f);
}

Test(proxy, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    back b = {0};
    front f = {0};
    rig r;
    rig_up(&r, &b, &f);
    cr_assert_eq(em_proxy_incoming_to(NULL, f.link, 0, 0), -EINVAL);
    cr_assert_eq(em_proxy_incoming_to(f.conn, NULL, 0, 0), -EINVAL);
    cr_assert_eq(em_proxy_incoming_to(f.conn, f.conn, 0, 0), -EINVAL);
    cr_assert_eq(em_proxy_incoming_to(f.conn, f.link, 0, 0), -EBUSY,
                 "already proxying");
    cr_assert_eq(em_start_tls(f.conn, NULL), -EBUSY, "TLS under a splice");
    cr_assert_eq(em_start_tls(f.link, NULL), -EBUSY);
    cr_assert_eq(em_stop_proxying(NULL), -EINVAL);
    cr_assert_eq(em_get_proxied_bytes(NULL), 0);
    em_loop *other = th_loop();
    th_echo e = {0};
    em_server *osrv = th_start_server(other, &th_echo_handler, &e);
    int ofd = th_connect_accepted(other, th_listen_port(osrv), &e.accepted);
    cr_assert_eq(em_proxy_incoming_to(e.conn, f.link, 0, 0), -EINVAL,
                 "different loops");
    close(ofd);
    th_run_until_count(other, &e.unbinds, 1, 5);
    th_stop_and_free(other, osrv);
    rig_down(&r, &b, &f);
}
