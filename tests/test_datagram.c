/*
 * test_datagram.c - UDP sockets as connections: whole datagrams of 1 and
 * 65,507 (IPv4) / 65,527 (IPv6) bytes, EMSGSIZE one byte above, bursts of
 * 1,000 datagrams each delivered once and whole, em_get_peername and
 * em_send_data replies to several senders, dual-stack sockets, pause with a
 * half-delivered batch, queued sends and close-after-writing, ICMP errors
 * (with and without IP_RECVERR) never closing the socket nor spinning the
 * loop, inactivity timeouts, wrong kinds of connection, bad arguments and
 * descriptor counts.
 *
 * Clients are plain blocking UDP sockets on the test's thread; the loop runs
 * between their sends and receives (udp_pump_recv).
 *
 * A full socket buffer never happens on loopback (the kernel hands each
 * datagram over at once), so this file defines sendto and sendmmsg itself:
 * the library, linked statically, calls these, which fail with EAGAIN on
 * one descriptor when told to and otherwise call the C library's.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h" /* conn->watcher.fd for the error-queue check */

#define MAX_V4 65507
#define MAX_V6 65527

/* ---- a recording handler --------------------------------------------- */

typedef struct dg {
    int post_inits;
    int unbinds;
    int reason;
    int received;
    int echo;     /* em_send_data the datagram back (this many times) */
    int pause_at; /* em_pause inside the datagram with this number */
    int close_at; /* em_close_connection(conn, 0) inside it */
    int send_err; /* the latest em_send_data result in receive_data */
    int peer_err; /* em_get_peername inside receive_data */
    int drained;
    size_t last_len;
    unsigned char *last; /* a copy of the latest datagram (MAX_V6 bytes) */
    struct sockaddr_storage peer; /* em_get_peername inside receive_data */
    socklen_t peer_len;
    em_conn *conn;
    /* burst bookkeeping: datagrams carry a 4-byte sequence number */
    int track;
    int seen[1000];
    int bad;
    int order[64]; /* the first 64 sequence numbers, in delivery order */
    int order_n;
} dg;

static void dg_post_init(em_conn *conn, void *arg)
{
    dg *d = arg;
    d->post_inits++;
    d->conn = conn;
    if (!d->last)
        d->last = malloc(MAX_V6);
}

static size_t burst_len(uint32_t seq)
{
    return 4 + (seq * 37u) % 1200u;
}

static void track(dg *d, const char *data, size_t len)
{
    uint32_t seq;
    if (len < 4) {
        d->bad++;
        return;
    }
    memcpy(&seq, data, 4);
    seq = ntohl(seq);
    if (seq >= 1000 || len != burst_len(seq) ||
        th_pat_check((const uint8_t *)data + 4, seq * 4096u, len - 4) != -1) {
        d->bad++;
        return;
    }
    d->seen[seq]++;
    if (d->order_n < 64)
        d->order[d->order_n++] = (int)seq;
}

static void dg_receive(em_conn *conn, const char *data, size_t len)
{
    dg *d = em_conn_arg(conn);
    d->received++;
    d->last_len = len;
    if (d->last)
        memcpy(d->last, data, len);
    d->peer_len = sizeof(d->peer);
    d->peer_err =
        em_get_peername(conn, (struct sockaddr *)&d->peer, &d->peer_len);
    if (d->track)
        track(d, data, len);
    for (int i = 0; i < d->echo; i++) {
        int err = em_send_data(conn, data, len);
        if (err)
            d->send_err = err;
    }
    if (d->pause_at && d->received == d->pause_at)
        cr_assert_eq(em_pause(conn), 0);
    if (d->close_at && d->received == d->close_at)
        cr_assert_eq(em_close_connection(conn, 0), 0);
}

static void dg_drained(em_conn *conn)
{
    dg *d = em_conn_arg(conn);
    d->drained++;
}

static void dg_unbind(em_conn *conn, int reason)
{
    dg *d = em_conn_arg(conn);
    d->unbinds++;
    d->reason = reason;
    d->conn = NULL;
}

static const em_handler dg_handler = {
    .post_init = dg_post_init,
    .receive_data = dg_receive,
    .drained = dg_drained,
    .unbind = dg_unbind,
};

static void dg_free(dg *d)
{
    free(d->last);
    d->last = NULL;
}

/* ---- client helpers ---------------------------------------------------- */

static const char *loopback(int family)
{
    return family == AF_INET6 ? "::1" : "127.0.0.1";
}

static socklen_t loopback_addr(int family, int port,
                               struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        sin6->sin6_port = htons((uint16_t)port);
        return sizeof(*sin6);
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons((uint16_t)port);
    return sizeof(*sin);
}

/* A blocking UDP socket on the loopback address, any port. */
static int udp_client(int family)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_storage ss;
    socklen_t len = loopback_addr(family, 0, &ss);
    cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0, "bind: %s",
                 strerror(errno));
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    return fd;
}

static int udp_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void udp_send(int fd, int family, int port, const void *data, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t alen = loopback_addr(family, port, &ss);
    ssize_t n = sendto(fd, data, len, 0, (struct sockaddr *)&ss, alen);
    cr_assert_eq(n, (ssize_t)len, "sendto %zu bytes: %s", len,
                 n < 0 ? strerror(errno) : "short");
}

/* Runs the loop until one datagram arrives on fd; returns its length. */
static size_t udp_pump_recv(em_loop *loop, int fd, void *buf, size_t cap)
{
    double deadline = th_now() + TH_TIMEOUT(5);
    for (;;) {
        ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);
        if (n >= 0)
            return (size_t)n;
        cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "recv: %s",
                  strerror(errno));
        cr_assert_lt(th_now(), deadline, "no datagram within the bound");
        cr_assert_geq(em_run_once(loop, 5), 0);
    }
}

/* Asserts that nothing arrives on fd while the loop runs for `seconds`. */
static void udp_expect_nothing(em_loop *loop, int fd, double seconds)
{
    char byte;
    th_run_for(loop, seconds);
    cr_assert_eq(recv(fd, &byte, 1, MSG_DONTWAIT), -1, "unexpected datagram");
}

/* A UDP port on the loopback address that nothing is bound to. */
static int free_udp_port(int family)
{
    int fd = udp_client(family);
    int port = udp_port(fd);
    close(fd);
    return port;
}

static em_conn *open_dg(em_loop *loop, const char *host, dg *d)
{
    em_conn *conn = NULL;
    int err = em_open_datagram_socket(loop, host, 0, &dg_handler, d, &conn);
    cr_assert_eq(err, 0, "em_open_datagram_socket(%s): %s", host,
                 em_err_name(err));
    cr_assert_not_null(conn);
    cr_assert_eq(d->post_inits, 1, "post_init runs inside the call");
    cr_assert_eq(d->conn, conn, "*out is set before post_init");
    return conn;
}

static void close_dg(em_loop *loop, em_conn *conn, dg *d)
{
    int unbinds = d->unbinds;
    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until_count(loop, &d->unbinds, unbinds + 1, 5.0);
    cr_assert_eq(d->reason, 0);
}

/* ---- round trips -------------------------------------------------------- */

/* 1 byte and the largest datagram, echoed whole through em_send_data, with
 * the sender visible through em_get_peername during and after the call. */
static void round_trip_sizes(int family, size_t max)
{
    em_loop *loop = th_loop();
    dg d = {.echo = 1};
    em_conn *conn = open_dg(loop, loopback(family), &d);
    int port = em_datagram_port(conn);
    cr_assert_gt(port, 0);
    struct sockaddr_storage local;
    socklen_t local_len = sizeof(local);
    cr_assert_eq(em_get_sockname(conn, (struct sockaddr *)&local, &local_len),
                 0);
    cr_assert_eq(local.ss_family, family);

    int client = udp_client(family);
    uint8_t *out = malloc(max + 1), *in = malloc(max + 16);
    th_pat_fill(out, 0, max + 1);
    size_t sizes[] = {1, 2, 1000, max};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        int before = d.received;
        udp_send(client, family, port, out, sizes[i]);
        size_t n = udp_pump_recv(loop, client, in, max + 16);
        cr_assert_eq(d.received, before + 1, "one receive_data per datagram");
        cr_assert_eq(d.last_len, sizes[i]);
        cr_assert_eq(memcmp(d.last, out, sizes[i]), 0);
        cr_assert_eq(d.send_err, 0, "reply: %s", em_err_name(d.send_err));
        cr_assert_eq(n, sizes[i], "echo of %zu came back as %zu", sizes[i], n);
        cr_assert_eq(memcmp(in, out, n), 0);
    }

    /* The sender, inside the callback and after it. */
    struct sockaddr_storage me;
    socklen_t me_len = sizeof(me);
    cr_assert_eq(getsockname(client, (struct sockaddr *)&me, &me_len), 0);
    cr_assert_eq(d.peer_err, 0);
    cr_assert_eq(d.peer_len, me_len);
    cr_assert_eq(memcmp(&d.peer, &me, me_len), 0);
    struct sockaddr_storage after;
    socklen_t after_len = sizeof(after);
    cr_assert_eq(em_get_peername(conn, (struct sockaddr *)&after, &after_len),
                 0);
    cr_assert_eq(after_len, me_len);
    cr_assert_eq(memcmp(&after, &me, me_len), 0);

    /* One byte above the maximum: refused, nothing else happens. */
    cr_assert_eq(em_send_data(conn, out, max + 1), -EMSGSIZE);
    cr_assert_eq(em_send_datagram(conn, out, max + 1, loopback(family),
                                  udp_port(client)),
                 -EMSGSIZE);
    cr_assert_eq(
        em_send_datagram(conn, out, max, loopback(family), udp_port(client)),
        0);
    cr_assert_eq(udp_pump_recv(loop, client, in, max + 16), max);
    cr_assert_eq(d.unbinds, 0);

    close(client);
    free(out);
    free(in);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, ipv4_1_byte_to_65507_bytes_whole, .timeout = TH_TIMEOUT(10))
{
    round_trip_sizes(AF_INET, MAX_V4);
}

Test(datagram, ipv6_1_byte_to_65527_bytes_whole, .timeout = TH_TIMEOUT(10))
{
    if (!th_have_ipv6_loopback())
        cr_skip_test("no IPv6 loopback");
    round_trip_sizes(AF_INET6, MAX_V6);
}

Test(datagram, zero_length_datagrams_both_ways, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {.echo = 1};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int client = udp_client(AF_INET);
    char buf[8];
    udp_send(client, AF_INET, em_datagram_port(conn), "", 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 0);
    cr_assert_eq(d.received, 1);
    cr_assert_eq(d.last_len, 0);
    cr_assert_eq(em_send_datagram(conn, NULL, 0, "127.0.0.1", udp_port(client)),
                 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 0);
    close(client);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* ---- bursts ----------------------------------------------------------- */

static void send_burst(int fd, int family, int port, uint32_t first,
                       uint32_t count)
{
    uint8_t buf[1300];
    for (uint32_t seq = first; seq < first + count; seq++) {
        size_t len = burst_len(seq);
        uint32_t net = htonl(seq);
        memcpy(buf, &net, 4);
        th_pat_fill(buf + 4, seq * 4096u, len - 4);
        udp_send(fd, family, port, buf, len);
    }
}

/* 1,000 datagrams of different sizes, sent in windows of 100 (a window fits
 * the receive buffer, so the kernel drops nothing; it still takes several
 * batches per wakeup): each arrives exactly once and whole, and each is
 * answered twice (32 replies per batch of 16: the reply batch fills). */
Test(datagram, burst_of_1000_each_once_and_whole, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    dg d = {.track = 1, .echo = 2};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int big = 1 << 21;
    cr_assert_eq(
        em_set_sock_opt(conn, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big)), 0);
    int port = em_datagram_port(conn);
    int client = udp_client(AF_INET);
    static int answers[1000];
    for (uint32_t w = 0; w < 10; w++) {
        send_burst(client, AF_INET, port, w * 100, 100);
        th_run_until_count(loop, &d.received, (int)(w + 1) * 100, 5.0);
        for (int k = 0; k < 200; k++) {
            uint8_t buf[1300];
            size_t n = udp_pump_recv(loop, client, buf, sizeof(buf));
            uint32_t seq;
            cr_assert_geq(n, 4);
            memcpy(&seq, buf, 4);
            seq = ntohl(seq);
            cr_assert(seq < 1000 && n == burst_len(seq), "bad answer");
            answers[seq]++;
        }
    }
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(answers[i], 2, "datagram %d answered %d times", i,
                     answers[i]);
    cr_assert_eq(d.send_err, 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(d.received, 1000);
    cr_assert_eq(d.bad, 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(d.seen[i], 1, "datagram %d seen %d times", i, d.seen[i]);
    close(client);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* ---- replies to several senders --------------------------------------- */

static void reply_receive(em_conn *conn, const char *data, size_t len)
{
    dg *d = em_conn_arg(conn);
    char reply[64];
    int n = snprintf(reply, sizeof(reply), "re:%.*s", (int)len, data);
    d->received++;
    d->send_err = em_send_data(conn, reply, (size_t)n);
}

static const em_handler reply_handler = {
    .post_init = dg_post_init,
    .receive_data = reply_receive,
    .unbind = dg_unbind,
};

static void several_senders(const char *host, int client_family)
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = NULL;
    cr_assert_eq(
        em_open_datagram_socket(loop, host, 0, &reply_handler, &d, &conn), 0);
    int port = em_datagram_port(conn);
    enum { N = 4 };
    int clients[N];
    for (int i = 0; i < N; i++)
        clients[i] = udp_client(client_family);
    /* All send before the loop runs: one wakeup, several senders. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            char msg[16];
            int n = snprintf(msg, sizeof(msg), "c%d-r%d", i, round);
            udp_send(clients[i], client_family, port, msg, (size_t)n);
        }
        for (int i = 0; i < N; i++) {
            char got[64], want[64];
            size_t n = udp_pump_recv(loop, clients[i], got, sizeof(got));
            int wn = snprintf(want, sizeof(want), "re:c%d-r%d", i, round);
            cr_assert_eq(n, (size_t)wn);
            cr_assert_eq(memcmp(got, want, n), 0, "client %d got %.*s", i,
                         (int)n, got);
        }
    }
    cr_assert_eq(d.received, 3 * N);
    cr_assert_eq(d.send_err, 0);
    for (int i = 0; i < N; i++)
        close(clients[i]);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, replies_reach_each_of_several_senders, .timeout = TH_TIMEOUT(10))
{
    several_senders("127.0.0.1", AF_INET);
}

Test(datagram, ipv6_replies_reach_each_sender, .timeout = TH_TIMEOUT(10))
{
    if (!th_have_ipv6_loopback())
        cr_skip_test("no IPv6 loopback");
    several_senders("::1", AF_INET6);
}

Test(datagram, dual_stack_socket_serves_ipv4_senders, .timeout = TH_TIMEOUT(10))
{
    if (!th_have_ipv6_loopback())
        cr_skip_test("no IPv6 loopback");
    several_senders("::", AF_INET);

    /* em_send_datagram to an IPv4 literal from the IPv6 socket. */
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "::", &d);
    int client = udp_client(AF_INET);
    char buf[16];
    cr_assert_eq(em_send_datagram(conn, "v4", 2, "127.0.0.1", udp_port(client)),
                 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 2);
    cr_assert_eq(memcmp(buf, "v4", 2), 0);
    close(client);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, names_bind_and_v4_mapped_destinations, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "localhost", &d);
    cr_assert_gt(em_datagram_port(conn), 0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    cr_assert_eq(em_get_sockname(conn, (struct sockaddr *)&ss, &len), 0);
    close_dg(loop, conn, &d);
    dg_free(&d);

    /* A v4-mapped literal reaches an IPv4 socket's peer as plain IPv4. */
    dg e = {0};
    conn = open_dg(loop, "127.0.0.1", &e);
    int client = udp_client(AF_INET);
    char buf[8];
    cr_assert_eq(
        em_send_datagram(conn, "m", 1, "::ffff:127.0.0.1", udp_port(client)),
        0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 1);
    close(client);
    close_dg(loop, conn, &e);
    dg_free(&e);
    th_free_loop(loop);
}

/* Replies inside receive_data leave in batches: several per datagram, big
 * ones that overflow the batch's 64 KiB, and an em_send_datagram between
 * them all arrive in call order. */
#define BIG 40000
static unsigned char big_reply[BIG];

static void many_replies(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    (void)len;
    dg *d = em_conn_arg(conn);
    struct sockaddr_in from;
    socklen_t flen = sizeof(from);
    d->received++;
    int err = em_get_peername(conn, (struct sockaddr *)&from, &flen);
    err = err ? err : em_send_data(conn, "r1", 2);
    err = err ? err : em_send_data(conn, big_reply, BIG);
    err =
        err ? err
            : em_send_datagram(conn, "x", 1, "127.0.0.1", ntohs(from.sin_port));
    err = err ? err : em_send_data(conn, big_reply, BIG);
    err = err ? err : em_send_data(conn, "r2", 2);
    if (err)
        d->send_err = err;
}

static const em_handler many_handler = {
    .post_init = dg_post_init,
    .receive_data = many_replies,
    .unbind = dg_unbind,
};

Test(datagram, batched_replies_keep_call_order, .timeout = TH_TIMEOUT(10))
{
    th_pat_fill(big_reply, 77, BIG);
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = NULL;
    cr_assert_eq(
        em_open_datagram_socket(loop, "127.0.0.1", 0, &many_handler, &d, &conn),
        0);
    int clients[3];
    for (int i = 0; i < 3; i++) {
        clients[i] = udp_client(AF_INET);
        udp_send(clients[i], AF_INET, em_datagram_port(conn), "go", 2);
    }
    static unsigned char buf[BIG + 16];
    for (int i = 0; i < 3; i++) {
        size_t want[] = {2, BIG, 1, BIG, 2};
        for (int k = 0; k < 5; k++) {
            size_t n = udp_pump_recv(loop, clients[i], buf, sizeof(buf));
            cr_assert_eq(n, want[k], "client %d reply %d: %zu bytes", i, k, n);
            if (k == 0)
                cr_assert_eq(memcmp(buf, "r1", 2), 0);
            if (k == 2)
                cr_assert_eq(buf[0], 'x');
            if (k == 4)
                cr_assert_eq(memcmp(buf, "r2", 2), 0);
            if (n == BIG)
                cr_assert_eq(memcmp(buf, big_reply, BIG), 0);
        }
        close(clients[i]);
    }
    cr_assert_eq(d.received, 3);
    cr_assert_eq(d.send_err, 0, "%s", em_err_name(d.send_err));
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* ---- a full socket buffer (EAGAIN), injected ------------------------------
 */

static int eagain_fd = -1;
static int eagain_sendto;   /* this many sendto calls on eagain_fd fail */
static int eagain_sendmmsg; /* this many sendmmsg calls on eagain_fd fail */

ssize_t sendto(int fd, const void *buf, size_t len, int flags,
               const struct sockaddr *to, socklen_t to_len)
{
    static ssize_t (*real)(int, const void *, size_t, int,
                           const struct sockaddr *, socklen_t);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "sendto");
    if (fd == eagain_fd && eagain_sendto > 0) {
        eagain_sendto--;
        errno = EAGAIN;
        return -1;
    }
    return real(fd, buf, len, flags, to, to_len);
}

int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags)
{
    static int (*real)(int, struct mmsghdr *, unsigned int, int);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "sendmmsg");
    if (fd == eagain_fd && eagain_sendmmsg > 0) {
        eagain_sendmmsg--;
        errno = EAGAIN;
        return -1;
    }
    return real(fd, msgs, n, flags);
}

static void expect_datagrams(em_loop *loop, int fd, const char *const *want,
                             int count)
{
    for (int i = 0; i < count; i++) {
        char buf[32];
        size_t n = udp_pump_recv(loop, fd, buf, sizeof(buf));
        cr_assert(n == strlen(want[i]) && memcmp(buf, want[i], n) == 0,
                  "datagram %d: got %.*s, want %s", i, (int)n, buf, want[i]);
    }
}

Test(datagram, full_socket_buffer_queues_in_order, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int client = udp_client(AF_INET);
    int port = udp_port(client);
    eagain_fd = conn->watcher.fd;

    /* The first send meets a full buffer: queued, and the next one waits
     * behind it; the first flush meets it full again. */
    eagain_sendto = 2;
    cr_assert_eq(em_send_datagram(conn, "a", 1, "127.0.0.1", port), 0);
    cr_assert_eq(em_send_datagram(conn, "bb", 2, "127.0.0.1", port), 0);
    cr_assert_eq(em_get_outbound_data_size(conn), 3);
    cr_assert_eq(eagain_sendto, 1, "the second send overtook the queue");
    expect_datagrams(loop, client, (const char *const[]){"a", "bb"}, 2);
    th_run_until_count(loop, &d.drained, 1, 5.0);
    cr_assert_eq(em_get_outbound_data_size(conn), 0);
    cr_assert_eq(eagain_sendto, 0);
    eagain_fd = -1;
    cr_assert_eq(d.unbinds, 0);
    close(client);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* Batched replies the socket refuses go to the front of the queue, and what
 * follows in the same callback waits behind them. */
static void refused_replies(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    (void)len;
    dg *d = em_conn_arg(conn);
    struct sockaddr_in from;
    socklen_t flen = sizeof(from);
    d->received++;
    eagain_fd = conn->watcher.fd;
    eagain_sendmmsg = 1;
    int err = em_get_peername(conn, (struct sockaddr *)&from, &flen);
    err = err ? err : em_send_data(conn, "r1", 2);
    err = err ? err : em_send_data(conn, "r2", 2);
    /* Flushes r1 and r2 first: refused, queued; d3 queues behind them. */
    err = err ? err
              : em_send_datagram(conn, "d3", 2, "127.0.0.1",
                                 ntohs(from.sin_port));
    err = err ? err : em_send_data(conn, "r4", 2);
    d->send_err = err;
    d->last_len = em_get_outbound_data_size(conn);
}

static const em_handler refused_handler = {
    .post_init = dg_post_init,
    .receive_data = refused_replies,
    .drained = dg_drained,
    .unbind = dg_unbind,
};

Test(datagram, refused_batched_replies_keep_their_place,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = NULL;
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1", 0, &refused_handler,
                                         &d, &conn),
                 0);
    int client = udp_client(AF_INET);
    udp_send(client, AF_INET, em_datagram_port(conn), "go", 2);
    expect_datagrams(loop, client,
                     (const char *const[]){"r1", "r2", "d3", "r4"}, 4);
    cr_assert_eq(d.send_err, 0, "%s", em_err_name(d.send_err));
    cr_assert_eq(d.last_len, 8, "all four were queued");
    cr_assert_eq(eagain_sendmmsg, 0);
    th_run_until_count(loop, &d.drained, 1, 5.0);
    eagain_fd = -1;
    close(client);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* ---- errors never close ------------------------------------------------ */

/* An exchange that proves the socket still works both ways. */
static void still_works(em_loop *loop, em_conn *conn, dg *d)
{
    int client = udp_client(AF_INET);
    char buf[16];
    int before = d->received;
    d->echo = 1;
    udp_send(client, AF_INET, em_datagram_port(conn), "alive", 5);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 5);
    cr_assert_eq(d->received, before + 1);
    cr_assert_eq(
        em_send_datagram(conn, "again", 5, "127.0.0.1", udp_port(client)), 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 5);
    cr_assert_eq(memcmp(buf, "again", 5), 0);
    cr_assert_eq(d->unbinds, 0);
    close(client);
}

Test(datagram, send_errors_are_returned_and_never_close,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    static char big[MAX_V4 + 2];
    cr_assert_eq(em_send_datagram(conn, big, MAX_V4 + 1, "127.0.0.1", 9),
                 -EMSGSIZE);
    cr_assert_eq(em_send_datagram(conn, big, sizeof(big), "127.0.0.1", 9),
                 -EMSGSIZE);
    /* Broadcast without SO_BROADCAST: the kernel says EACCES. */
    cr_assert_eq(em_send_datagram(conn, "b", 1, "255.255.255.255", 9), -EACCES);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "::1", 9), -EAFNOSUPPORT);
    cr_assert_eq(em_send_data(conn, "x", 1), -EDESTADDRREQ,
                 "no sender to reply to yet");
    cr_assert_eq(em_get_outbound_data_size(conn), 0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    cr_assert_eq(em_get_peername(conn, (struct sockaddr *)&ss, &len),
                 -ENOTCONN);
    still_works(loop, conn, &d);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* Without IP_RECVERR an unconnected socket hears no ICMP error at all. */
Test(datagram, icmp_port_unreachable_is_ignored_by_default,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int dead = free_udp_port(AF_INET);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(em_send_datagram(conn, "x", 1, "127.0.0.1", dead), 0);
        th_run_for(loop, 0.01);
    }
    cr_assert_eq(em_conn_error(conn), 0);
    still_works(loop, conn, &d);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* With IP_RECVERR the kernel reports the refusal: once to a send, else
 * through recv and the error queue. The socket stays open, the error queue
 * is drained (no EPOLLERR spin) and traffic goes on. */
Test(datagram, econnrefused_with_ip_recverr_never_closes,
     .timeout = TH_TIMEOUT(15))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int on = 1;
    cr_assert_eq(em_set_sock_opt(conn, IPPROTO_IP, IP_RECVERR, &on, sizeof(on)),
                 0);
    int dead = free_udp_port(AF_INET);

    /* A send right after the refusal reports it (and is not sent). */
    int refused = 0;
    for (int i = 0; i < 200 && !refused; i++) {
        int err = em_send_datagram(conn, "x", 1, "127.0.0.1", dead);
        cr_assert(err == 0 || err == -ECONNREFUSED, "%s", em_err_name(err));
        refused = err == -ECONNREFUSED;
        if (!refused)
            th_sleep_ms(5);
    }
    cr_assert(refused, "the kernel never reported ECONNREFUSED");
    cr_assert_eq(d.unbinds, 0);

    /* Refusals the loop sees first: skipped on receive, queue drained. */
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(em_send_datagram(conn, "x", 1, "127.0.0.1", dead), 0);
        th_run_for(loop, 0.02);
    }
    cr_assert_eq(d.unbinds, 0);
    char buf[64];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    cr_assert_eq(recvmsg(conn->watcher.fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT),
                 -1, "the error queue was left full");
    cr_assert_eq(em_conn_error(conn), 0);
    /* Nothing ready: a turn sleeps its whole timeout instead of spinning. */
    double t0 = th_now();
    cr_assert_eq(em_run_once(loop, 100), 0);
    cr_assert_geq(th_now() - t0, 0.08, "the loop woke with nothing to do");

    still_works(loop, conn, &d);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* ---- pause, queue, close ----------------------------------------------- */

/* Paused inside the first datagram of a batch: the rest waits, then comes in
 * order after em_resume even though no new datagram wakes the socket. */
Test(datagram, pause_mid_batch_holds_the_rest, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {.track = 1, .pause_at = 1, .echo = 1};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int client = udp_client(AF_INET);
    send_burst(client, AF_INET, em_datagram_port(conn), 0, 10);
    th_run_until_count(loop, &d.received, 1, 5.0);
    th_run_for(loop, 0.05);
    cr_assert_eq(d.received, 1, "delivered while paused");
    cr_assert(em_is_paused(conn));
    /* The other nine left the kernel in the same batch: they are held. */
    char peek;
    cr_assert_eq(recv(conn->watcher.fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT), -1,
                 "datagrams still in the kernel");
    cr_assert_eq(em_resume(conn), 0);
    cr_assert_eq(d.received, 1, "delivered inside em_resume");
    th_run_until_count(loop, &d.received, 10, 5.0);
    cr_assert_eq(d.bad, 0);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(d.seen[i], 1);

    /* Paused again with datagrams held, then new arrivals: the held ones
     * still come first. */
    d.pause_at = 12;
    d.order_n = 0;
    memset(d.seen, 0, sizeof(d.seen));
    send_burst(client, AF_INET, em_datagram_port(conn), 0, 5);
    th_run_until_count(loop, &d.received, 12, 5.0);
    th_run_for(loop, 0.05); /* the other three are out of the kernel now */
    cr_assert_eq(d.received, 12);
    send_burst(client, AF_INET, em_datagram_port(conn), 5, 5);
    th_run_for(loop, 0.05);
    cr_assert_eq(d.received, 12);
    cr_assert_eq(em_resume(conn), 0);
    th_run_until_count(loop, &d.received, 20, 5.0);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(d.seen[i], 1);
    cr_assert_eq(d.bad, 0);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(d.order[i], i, "held datagram %d came as #%d", i,
                     d.order[i]);
    /* Every one was answered, held or not. */
    cr_assert_eq(d.send_err, 0);
    for (int i = 0; i < 20; i++) {
        uint8_t buf[1300];
        size_t n = udp_pump_recv(loop, client, buf, sizeof(buf));
        cr_assert_geq(n, 4);
    }
    close(client);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

/* While paused, sends are queued in order and counted; em_resume sends
 * them and drained fires once. */
Test(datagram, sends_while_paused_are_queued_in_order,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int client = udp_client(AF_INET);
    int port = udp_port(client);
    cr_assert_eq(em_pause(conn), 0);
    cr_assert_eq(em_send_datagram(conn, "one", 3, "127.0.0.1", port), 0);
    cr_assert_eq(em_send_datagram(conn, "", 0, "127.0.0.1", port), 0);
    cr_assert_eq(em_send_datagram(conn, "three", 5, "127.0.0.1", port), 0);
    cr_assert_eq(em_get_outbound_data_size(conn), 8);
    udp_expect_nothing(loop, client, 0.05);
    cr_assert_eq(em_resume(conn), 0);
    char buf[16];
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 3);
    cr_assert_eq(memcmp(buf, "one", 3), 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 5);
    cr_assert_eq(memcmp(buf, "three", 5), 0);
    th_run_until_count(loop, &d.drained, 1, 5.0);
    cr_assert_eq(em_get_outbound_data_size(conn), 0);
    th_run_for(loop, 0.02);
    cr_assert_eq(d.drained, 1);

    /* Close after writing waits for the queue. */
    cr_assert_eq(em_pause(conn), 0);
    cr_assert_eq(em_send_datagram(conn, "last", 4, "127.0.0.1", port), 0);
    cr_assert_eq(em_close_connection(conn, 1), 0);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "127.0.0.1", port), -EPIPE);
    cr_assert_eq(em_send_data(conn, "x", 1), -EPIPE);
    th_run_for(loop, 0.05);
    cr_assert_eq(d.unbinds, 0);
    cr_assert_eq(em_resume(conn), 0);
    cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 4);
    th_run_until_count(loop, &d.unbinds, 1, 5.0);
    cr_assert_eq(d.reason, 0);
    close(client);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, close_inside_receive_data_stops_delivery,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {.close_at = 3, .track = 1};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    int client = udp_client(AF_INET);
    send_burst(client, AF_INET, em_datagram_port(conn), 0, 10);
    th_run_until_count(loop, &d.unbinds, 1, 5.0);
    cr_assert_eq(d.received, 3);
    cr_assert_eq(d.reason, 0);
    close(client);
    dg_free(&d);
    th_free_loop(loop);
}

/* ---- timeouts, stop --------------------------------------------------- */

Test(datagram, inactivity_timeout_closes_an_idle_socket,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {.echo = 1};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, 0.5), 0);
    cr_assert_float_eq(em_get_comm_inactivity_timeout(conn), 0.5, 1e-9);
    int client = udp_client(AF_INET);
    int port = em_datagram_port(conn);
    char buf[8];
    /* Traffic every 100 ms keeps it open well past the timeout. */
    double t0 = th_now();
    while (th_now() - t0 < 1.2) {
        udp_send(client, AF_INET, port, "k", 1);
        udp_pump_recv(loop, client, buf, sizeof(buf));
        th_run_for(loop, 0.1);
        cr_assert_eq(d.unbinds, 0, "closed despite traffic");
    }
    double idle_from = th_now();
    th_run_until_count(loop, &d.unbinds, 1, 5.0);
    cr_assert_eq(d.reason, -ETIMEDOUT);
    cr_assert_geq(th_now() - idle_from, 0.35);
    close(client);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, stop_unbinds_and_free_reports_live_sockets,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    open_dg(loop, "127.0.0.1", &d);
    cr_assert_eq(em_connection_count(loop), 1);
    cr_assert_eq(em_stop(loop), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(d.unbinds, 1);
    cr_assert_eq(d.reason, 0);
    cr_assert_eq(em_connection_count(loop), 0);

    dg e = {0};
    open_dg(loop, "127.0.0.1", &e);
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(e.unbinds, 1);
    dg_free(&d);
    dg_free(&e);
}

/* ---- wrong kinds, bad arguments, descriptors -------------------------- */

static int reconnect_result = 1;

static void reconnect_unbind(em_conn *conn, int reason)
{
    dg_unbind(conn, reason);
    reconnect_result = em_reconnect(conn, "127.0.0.1", 9);
}

static const em_handler reconnect_handler = {
    .post_init = dg_post_init,
    .unbind = reconnect_unbind,
};

Test(datagram, wrong_kinds_of_connection, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    /* A TCP connection is not a datagram socket. */
    th_echo s = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &s);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &s.accepted);
    cr_assert_eq(em_send_datagram(s.conn, "x", 1, "127.0.0.1", 9), -EOPNOTSUPP);
    cr_assert_eq(em_datagram_port(s.conn), -EOPNOTSUPP);
    th_close_clients(loop, &s, &fd, 1);

    /* A datagram socket has no stream: no TLS, no half-close, no
     * keepalive, no reconnect. */
    dg d = {0};
    em_conn *conn = NULL;
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1", 0,
                                         &reconnect_handler, &d, &conn),
                 0);
    cr_assert_eq(em_start_tls(conn, NULL), -EOPNOTSUPP);
    cr_assert_eq(em_is_tls(conn), 0);
    cr_assert_eq(em_close_write(conn), -EOPNOTSUPP);
    cr_assert_eq(em_enable_keepalive(conn, 0, 0, 0), -EOPNOTSUPP);
    cr_assert_eq(em_is_connecting(conn), 0);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until_count(loop, &d.unbinds, 1, 5.0);
    cr_assert_eq(reconnect_result, -EOPNOTSUPP);
    cr_assert_eq(em_connection_count(loop), 0);
    dg_free(&d);
    th_stop_and_free(loop, srv);
}

Test(datagram, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *out = (em_conn *)&d;
    cr_assert_eq(
        em_open_datagram_socket(NULL, "127.0.0.1", 0, &dg_handler, &d, &out),
        -EINVAL);
    cr_assert_null(out);
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1", 0, NULL, &d, &out),
                 -EINVAL);
    cr_assert_eq(
        em_open_datagram_socket(loop, "127.0.0.1", -1, &dg_handler, &d, &out),
        -EINVAL);
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1", 65536, &dg_handler,
                                         &d, &out),
                 -EINVAL);
    cr_assert_eq(em_open_datagram_socket(loop, "no-such-host.invalid", 0,
                                         &dg_handler, &d, &out),
                 -ENOENT);
    cr_assert_eq(
        em_open_datagram_socket(loop, "192.0.2.1", 0, &dg_handler, &d, &out),
        -EADDRNOTAVAIL);
    cr_assert_eq(d.post_inits, 0);

    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    /* The port is taken: no SO_REUSEADDR sharing. */
    dg e = {0};
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1",
                                         em_datagram_port(conn), &dg_handler,
                                         &e, NULL),
                 -EADDRINUSE);
    cr_assert_eq(e.post_inits, 0);
    cr_assert_eq(em_send_datagram(NULL, "x", 1, "127.0.0.1", 9), -EINVAL);
    cr_assert_eq(em_send_datagram(conn, NULL, 1, "127.0.0.1", 9), -EINVAL);
    cr_assert_eq(em_send_datagram(conn, "x", 1, NULL, 9), -EINVAL);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "", 9), -EINVAL);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "127.0.0.1", 0), -EINVAL);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "127.0.0.1", 65536), -EINVAL);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "localhost", 9), -EINVAL,
                 "names are not resolved on the loop");
    cr_assert_eq(em_send_data(conn, NULL, 1), -EINVAL);
    cr_assert_eq(em_datagram_port(NULL), -EINVAL);
    close_dg(loop, conn, &d);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, closed_sockets_refuse_sends, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    dg d = {0};
    em_conn *conn = open_dg(loop, "127.0.0.1", &d);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    cr_assert_eq(em_send_datagram(conn, "x", 1, "127.0.0.1", 9), -ENOTCONN);
    cr_assert_eq(em_send_data(conn, "x", 1), -ENOTCONN);
    cr_assert_eq(em_close_connection(conn, 0), 0, "closing twice");
    th_run_until_count(loop, &d.unbinds, 1, 5.0);
    dg_free(&d);
    th_free_loop(loop);
}

Test(datagram, descriptors_are_not_leaked, .timeout = TH_TIMEOUT(20))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    int with_loop = th_count_fds();
    dg d[20];
    memset(d, 0, sizeof(d));
    int client = udp_client(AF_INET);
    for (int round = 0; round < 3; round++) {
        em_conn *conns[20];
        for (int i = 0; i < 20; i++) {
            d[i].echo = 1;
            d[i].post_inits = 0;
            conns[i] = open_dg(loop, "127.0.0.1", &d[i]);
            if (i % 4 == 0)
                em_set_comm_inactivity_timeout(conns[i], 0.05);
        }
        cr_assert_eq(th_count_fds(), with_loop + 21);
        /* Failures leave nothing open either. */
        cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1",
                                             em_datagram_port(conns[1]),
                                             &dg_handler, &d[0], NULL),
                     -EADDRINUSE);
        cr_assert_eq(em_open_datagram_socket(loop, "192.0.2.1", 0, &dg_handler,
                                             &d[0], NULL),
                     -EADDRNOTAVAIL);
        cr_assert_eq(th_count_fds(), with_loop + 21);
        for (int i = 1; i < 20; i++) {
            if (i % 4 == 0)
                continue;
            char buf[8];
            udp_send(client, AF_INET, em_datagram_port(conns[i]), "fd", 2);
            cr_assert_eq(udp_pump_recv(loop, client, buf, sizeof(buf)), 2);
            em_close_connection(conns[i], i % 2);
        }
        double deadline = th_now() + TH_TIMEOUT(5);
        while (em_connection_count(loop) > 0 && th_now() < deadline)
            em_run_once(loop, 10);
        cr_assert_eq(em_connection_count(loop), 0);
        cr_assert_eq(th_count_fds(), with_loop + 1);
    }
    close(client);
    for (int i = 0; i < 20; i++)
        dg_free(&d[i]);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
}
