/*
 * test_data.c - the data path over real sockets on 127.0.0.1.
 *
 * Covers: receive_data gets arbitrary chunks (random-size writes with
 * pauses arrive intact but not with the writer's boundaries), echo back,
 * em on both ends in one loop; 64 MiB queued then close-after-writing
 * reaches a slow reader complete; 1,000 concurrent em_connect clients;
 * em_send_data's contract (copies, -EPIPE, -ENOTCONN, -EINVAL, 0 bytes);
 * immediate close drops queued data and upgrades an after-writing close;
 * em_get_outbound_data_size and drained; em_close_write half-close; a peer
 * EOF with data still queued is answered in full before the close.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

#define KiB (1024u)
#define MiB (1024u * 1024u)

/* ---- small tools ------------------------------------------------------ */

/* xorshift64*: deterministic, so a failure reproduces. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

/* Uniform-ish in [lo, hi]. */
static size_t rng_range(uint64_t *s, size_t lo, size_t hi)
{
    return lo + (size_t)(rng_next(s) % (hi - lo + 1));
}

static void rand_fill(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(rng_next(&s) >> 56);
}

/* Counts how receive_data's chunks differ from the sender's writes: a chunk
 * with a write boundary strictly inside it coalesced writes, a write with a
 * chunk boundary strictly inside it was split. */
static void boundary_diff(const size_t *writes, size_t nw, const size_t *chunks,
                          size_t nc, size_t *coalesced, size_t *split)
{
    *coalesced = *split = 0;
    size_t wi = 0, ci = 0;
    uint64_t wend = nw ? writes[0] : 0, cend = nc ? chunks[0] : 0;
    uint64_t wstart = 0, cstart = 0;
    int c_has_inner = 0, w_has_inner = 0;
    while (wi < nw && ci < nc) {
        if (wend < cend) {
            if (wend > cstart)
                c_has_inner = 1;
            if (w_has_inner)
                (*split)++;
            w_has_inner = 0;
            wstart = wend;
            if (++wi < nw)
                wend += writes[wi];
        } else if (cend < wend) {
            if (cend > wstart)
                w_has_inner = 1;
            if (c_has_inner)
                (*coalesced)++;
            c_has_inner = 0;
            cstart = cend;
            if (++ci < nc)
                cend += chunks[ci];
        } else {
            if (w_has_inner)
                (*split)++;
            if (c_has_inner)
                (*coalesced)++;
            w_has_inner = c_has_inner = 0;
            wstart = cstart = wend;
            if (++wi < nw)
                wend += writes[wi];
            if (++ci < nc)
                cend += chunks[ci];
        }
    }
}

/* ---- an echo server that records what it saw ------------------------- */

#define ECHO_TOTAL (1 * MiB)
#define MAX_PIECES (ECHO_TOTAL + 16)

static struct {
    uint8_t *got; /* what the server received */
    size_t got_len;
    size_t *chunks; /* receive_data lengths, in order */
    size_t nchunks;
    int unbinds;
    int reason;
    int conns;
} E;

static void echo_setup(void)
{
    memset(&E, 0, sizeof E);
    E.got = malloc(ECHO_TOTAL);
    E.chunks = malloc(MAX_PIECES * sizeof(size_t));
    cr_assert(E.got && E.chunks);
}

static void echo_teardown(void)
{
    free(E.got);
    free(E.chunks);
}

static void echo_post_init(em_conn *conn, void *arg)
{
    (void)conn;
    (void)arg;
    E.conns++;
}

static void echo_receive(em_conn *conn, const char *data, size_t len)
{
    cr_assert_gt(len, 0, "receive_data with 0 bytes");
    cr_assert_leq(E.got_len + len, ECHO_TOTAL, "server got too much");
    memcpy(E.got + E.got_len, data, len);
    E.got_len += len;
    E.chunks[E.nchunks++] = len;
    int rc = em_send_data(conn, data, len);
    cr_assert_eq(rc, 0, "echo em_send_data: %s", em_strerror(rc));
}

static void echo_unbind(em_conn *conn, int reason)
{
    (void)conn;
    E.unbinds++;
    E.reason = reason;
}

static const em_handler echo_handler = {
    .post_init = echo_post_init,
    .receive_data = echo_receive,
    .unbind = echo_unbind,
};

Test(data, random_writes_arrive_intact_with_other_boundaries,
     .timeout = TH_TIMEOUT(30), .init = echo_setup, .fini = echo_teardown)
{
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &echo_handler, NULL);
    int fd = th_client_connect(th_listen_port(srv));

    uint8_t *src = malloc(ECHO_TOTAL), *back = malloc(ECHO_TOTAL);
    size_t *writes = malloc(MAX_PIECES * sizeof(size_t));
    cr_assert(src && back && writes);
    rand_fill(src, ECHO_TOTAL, 0x5eed1234);

    uint64_t rng = 42;
    size_t sent = 0, got = 0, nwrites = 0;
    double deadline = th_now() + TH_TIMEOUT(20);
    while (got < ECHO_TOTAL) {
        cr_assert_lt(th_now(), deadline, "sent %zu, echoed %zu", sent, got);
        int blocked = 0;
        if (sent < ECHO_TOTAL) {
            size_t want = rng_range(&rng, 1, 20000);
            if (want > ECHO_TOTAL - sent)
                want = ECHO_TOTAL - sent;
            ssize_t n = send(fd, src + sent, want, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                writes[nwrites++] = (size_t)n;
                sent += (size_t)n;
            } else {
                cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
                          "send: %s", strerror(errno));
                blocked = 1;
            }
        }
        ssize_t n = recv(fd, back + got, ECHO_TOTAL - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
        else
            cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
                      "recv: %s", n == 0 ? "EOF" : strerror(errno));
        /* The server runs only now and then: several writes may pile up
         * before it reads, or one may be read half-way. */
        uint64_t dice = rng_next(&rng);
        if ((dice & 15) == 0)
            usleep((useconds_t)((dice >> 8) % 1500));
        if (blocked || sent == ECHO_TOTAL || (dice >> 4) % 3 == 0) {
            int rc = em_run_once(loop, blocked ? 2 : 0);
            cr_assert_geq(rc, 0);
        }
    }

    cr_assert_eq(E.got_len, ECHO_TOTAL, "server got %zu bytes", E.got_len);
    cr_assert(memcmp(E.got, src, ECHO_TOTAL) == 0, "server data corrupted");
    cr_assert(memcmp(back, src, ECHO_TOTAL) == 0, "echoed data corrupted");

    size_t coalesced, split;
    boundary_diff(writes, nwrites, E.chunks, E.nchunks, &coalesced, &split);
    cr_assert_gt(coalesced + split, 0,
                 "%zu writes arrived as exactly %zu identical chunks", nwrites,
                 E.nchunks);
    cr_assert_neq(E.nchunks, 0);

    close(fd);
    th_run_until(loop, &E.unbinds, 5);
    cr_assert_eq(E.unbinds, 1);
    cr_assert_eq(E.reason, 0, "unbind reason %s", em_err_name(E.reason));
    cr_assert_eq(E.conns, 1);
    free(src);
    free(back);
    free(writes);
    th_stop_and_free(loop, srv);
}

/* ---- em on both ends ------------------------------------------------- */

static struct {
    em_conn *conn;
    const uint8_t *src;
    uint8_t *back;
    size_t sent, got;
    size_t *writes;
    size_t nwrites;
    uint64_t rng;
    int completed, unbinds, reason, closed;
    em_loop *loop;
} C;

static void client_step(em_loop *loop, void *arg);

static void client_send_some(void)
{
    size_t pieces = rng_range(&C.rng, 1, 4);
    for (size_t i = 0; i < pieces && C.sent < ECHO_TOTAL; i++) {
        size_t want = rng_range(&C.rng, 1, 20000);
        if (want > ECHO_TOTAL - C.sent)
            want = ECHO_TOTAL - C.sent;
        int rc = em_send_data(C.conn, C.src + C.sent, want);
        cr_assert_eq(rc, 0, "client em_send_data: %s", em_strerror(rc));
        C.writes[C.nwrites++] = want;
        C.sent += want;
    }
    if (C.sent < ECHO_TOTAL) {
        double pause = (double)rng_range(&C.rng, 0, 2000) / 1e6;
        int rc = em_add_timer(C.loop, pause, client_step, NULL, NULL);
        cr_assert_eq(rc, 0, "em_add_timer: %s", em_strerror(rc));
    }
}

static void client_step(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    cr_assert_not_null(C.conn, "timer after unbind");
    client_send_some();
}

static void client_completed(em_conn *conn)
{
    cr_assert_eq(conn, C.conn);
    C.completed++;
    client_send_some();
}

static void client_receive(em_conn *conn, const char *data, size_t len)
{
    cr_assert_leq(C.got + len, ECHO_TOTAL, "client got too much");
    memcpy(C.back + C.got, data, len);
    C.got += len;
    if (C.got == ECHO_TOTAL) {
        C.closed = 1;
        cr_assert_eq(em_close_connection(conn, 1), 0);
    }
}

static void client_unbind(em_conn *conn, int reason)
{
    cr_assert_eq(conn, C.conn);
    C.conn = NULL;
    C.unbinds++;
    C.reason = reason;
}

static const em_handler client_handler = {
    .connection_completed = client_completed,
    .receive_data = client_receive,
    .unbind = client_unbind,
};

Test(data, em_client_to_em_server_both_directions_intact,
     .timeout = TH_TIMEOUT(30), .init = echo_setup, .fini = echo_teardown)
{
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &echo_handler, NULL);

    uint8_t *src = malloc(ECHO_TOTAL);
    memset(&C, 0, sizeof C);
    C.back = malloc(ECHO_TOTAL);
    C.writes = malloc(MAX_PIECES * sizeof(size_t));
    cr_assert(src && C.back && C.writes);
    rand_fill(src, ECHO_TOTAL, 0xfeedbeef);
    C.src = src;
    C.rng = 7;
    C.loop = loop;

    int rc = em_connect(loop, "127.0.0.1", th_listen_port(srv), &client_handler,
                        NULL, &C.conn);
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
    cr_assert_not_null(C.conn);

    th_run_until(loop, &C.unbinds, 20);
    th_run_until(loop, &E.unbinds, 5);

    cr_assert_eq(C.completed, 1);
    cr_assert_eq(C.sent, ECHO_TOTAL);
    cr_assert_eq(E.got_len, ECHO_TOTAL, "server got %zu bytes", E.got_len);
    cr_assert(memcmp(E.got, src, ECHO_TOTAL) == 0, "server data corrupted");
    cr_assert_eq(C.got, ECHO_TOTAL);
    cr_assert(memcmp(C.back, src, ECHO_TOTAL) == 0, "echoed data corrupted");

    size_t coalesced, split;
    boundary_diff(C.writes, C.nwrites, E.chunks, E.nchunks, &coalesced, &split);
    cr_assert_gt(coalesced + split, 0,
                 "%zu em_send_data calls arrived as %zu identical chunks",
                 C.nwrites, E.nchunks);

    cr_assert_eq(C.unbinds, 1);
    cr_assert_eq(C.reason, 0, "client unbind %s", em_err_name(C.reason));
    cr_assert_eq(E.unbinds, 1);
    cr_assert_eq(E.reason, 0, "server unbind %s", em_err_name(E.reason));
    free(src);
    free(C.back);
    free(C.writes);
    th_stop_and_free(loop, srv);
}

/* ---- 64 MiB, close after writing, slow reader ------------------------ */

#define BIG_TOTAL (64u * MiB)

static struct {
    size_t queued_after_send;
    int send_after_close;
    int unbinds, reason;
} B;

static void big_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    uint8_t *buf = malloc(32 * MiB);
    cr_assert_not_null(buf);
    /* The first half in 1 MiB pieces, the second half in one call. */
    for (unsigned i = 0; i < 32; i++) {
        th_pat_fill(buf, (uint64_t)i * MiB, MiB);
        int rc = em_send_data(conn, buf, MiB);
        cr_assert_eq(rc, 0, "em_send_data piece %u: %s", i, em_strerror(rc));
    }
    th_pat_fill(buf, 32u * MiB, 32 * MiB);
    int rc = em_send_data(conn, buf, 32 * MiB);
    cr_assert_eq(rc, 0, "em_send_data 32 MiB: %s", em_strerror(rc));
    free(buf);
    B.queued_after_send = em_get_outbound_data_size(conn);
    cr_assert_eq(em_close_connection(conn, 1), 0);
    B.send_after_close = em_send_data(conn, "x", 1);
}

static void big_unbind(em_conn *conn, int reason)
{
    (void)conn;
    B.unbinds++;
    B.reason = reason;
}

static const em_handler big_handler = {
    .post_init = big_post_init,
    .unbind = big_unbind,
};

struct slow_reader {
    int fd;
    size_t total;
    long bad_at;   /* -1 or the offset of the first wrong byte */
    int err;       /* 0 for EOF, else errno */
    int done_flag; /* set last; read through th_run_until */
};

static void *slow_reader_main(void *p)
{
    struct slow_reader *r = p;
    size_t cap = 256 * KiB;
    uint8_t *buf = malloc(cap);
    uint64_t rng = 99;
    unsigned reads = 0;
    r->bad_at = -1;
    r->err = buf ? 0 : ENOMEM;
    while (buf) {
        size_t want = rng_range(&rng, 1 * KiB, cap);
        ssize_t n = recv(r->fd, buf, want, 0);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r->err = errno;
            break;
        }
        if (r->bad_at < 0) {
            long bad = th_pat_check(buf, r->total, (size_t)n);
            if (bad >= 0)
                r->bad_at = (long)r->total + bad;
        }
        r->total += (size_t)n;
        /* A slow start, then an occasional nap. */
        if (++reads < 100 || reads % 64 == 0)
            usleep(1000);
    }
    free(buf);
    *(volatile int *)&r->done_flag = 1;
    return NULL;
}

Test(data, sixty_four_mib_then_close_after_writing_reaches_slow_reader,
     .timeout = TH_TIMEOUT(60))
{
    memset(&B, 0, sizeof B);
    em_loop *loop = th_loop();
    em_server *srv = th_start_server(loop, &big_handler, NULL);
    struct slow_reader r = {.fd = th_client_connect(th_listen_port(srv))};
    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, slow_reader_main, &r), 0);

    th_run_until(loop, &B.unbinds, 50);
    th_run_until(loop, &r.done_flag, 10);
    pthread_join(tid, NULL);

    cr_assert_gt(B.queued_after_send, 32u * MiB,
                 "only %zu bytes were queued: weak test", B.queued_after_send);
    cr_assert_eq(B.send_after_close, -EPIPE, "send after close: %s",
                 em_err_name(B.send_after_close));
    cr_assert_eq(r.err, 0, "reader: %s", strerror(r.err));
    cr_assert_eq(r.total, BIG_TOTAL, "reader got %zu of %u bytes", r.total,
                 BIG_TOTAL);
    cr_assert_eq(r.bad_at, -1, "corrupt byte at offset %ld", r.bad_at);
    cr_assert_eq(B.unbinds, 1);
    cr_assert_eq(B.reason, 0, "unbind %s", em_err_name(B.reason));
    close(r.fd);
    th_stop_and_free(loop, srv);
}

/* ---- 1,000 concurrent clients ----------------------------------------- */

#define NCLIENTS 1000

struct line_state {
    char line[32];
    size_t len;
    int idx;
};

static struct {
    em_conn *waiting[NCLIENTS];
    int nwaiting;
    int server_unbinds, server_bad_reason;
    int client_unbinds, client_bad_reason;
    int answered, completed;
    size_t max_conns;
    em_loop *loop;
} M;

/* Appends to a line buffer; returns 1 when a full line is in st->line. */
static int take_line(struct line_state *st, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        cr_assert_lt(st->len, sizeof st->line - 1, "line too long");
        st->line[st->len++] = data[i];
        if (data[i] == '\n') {
            cr_assert_eq(i, len - 1, "bytes after the line");
            st->line[st->len] = '\0';
            return 1;
        }
    }
    return 0;
}

static void many_server_receive(em_conn *conn, const char *data, size_t len)
{
    struct line_state *st = em_conn_state(conn);
    if (!take_line(st, data, len))
        return;
    int idx = -1;
    cr_assert_eq(sscanf(st->line, "hello %d\n", &idx), 1, "bad line %s",
                 st->line);
    cr_assert(idx >= 0 && idx < NCLIENTS);
    st->idx = idx;
    M.waiting[M.nwaiting++] = conn;
    size_t live = em_connection_count(em_conn_loop(conn));
    if (live > M.max_conns)
        M.max_conns = live;
    if (M.nwaiting < NCLIENTS)
        return;
    /* Everybody is here at once: answer them all. */
    for (int i = 0; i < NCLIENTS; i++) {
        struct line_state *w = em_conn_state(M.waiting[i]);
        char reply[32];
        int n = snprintf(reply, sizeof reply, "ok %d\n", w->idx);
        cr_assert_eq(em_send_data(M.waiting[i], reply, (size_t)n), 0);
    }
}

static void many_server_unbind(em_conn *conn, int reason)
{
    (void)conn;
    M.server_unbinds++;
    if (reason != 0)
        M.server_bad_reason = reason;
}

static const em_handler many_server = {
    .state_size = sizeof(struct line_state),
    .receive_data = many_server_receive,
    .unbind = many_server_unbind,
};

static void many_client_post_init(em_conn *conn, void *arg)
{
    struct line_state *st = em_conn_state(conn);
    st->idx = (int)(intptr_t)arg;
    char hello[32];
    int n = snprintf(hello, sizeof hello, "hello %d\n", st->idx);
    /* Sent before the connect completes: goes out once it does. */
    cr_assert_eq(em_send_data(conn, hello, (size_t)n), 0);
}

static void many_client_completed(em_conn *conn)
{
    (void)conn;
    M.completed++;
}

static void many_client_receive(em_conn *conn, const char *data, size_t len)
{
    struct line_state *st = em_conn_state(conn);
    int idx = st->idx;
    if (!take_line(st, data, len))
        return;
    char want[32];
    snprintf(want, sizeof want, "ok %d\n", idx);
    cr_assert_str_eq(st->line, want);
    M.answered++;
    cr_assert_eq(em_close_connection(conn, 0), 0);
}

static void many_client_unbind(em_conn *conn, int reason)
{
    (void)conn;
    M.client_unbinds++;
    if (reason != 0)
        M.client_bad_reason = reason;
}

static const em_handler many_client = {
    .state_size = sizeof(struct line_state),
    .post_init = many_client_post_init,
    .connection_completed = many_client_completed,
    .receive_data = many_client_receive,
    .unbind = many_client_unbind,
};

static int all_unbound(void)
{
    return M.server_unbinds + M.client_unbinds == 2 * NCLIENTS;
}

Test(data, thousand_concurrent_clients_all_answered, .timeout = TH_TIMEOUT(60))
{
    th_raise_nofile(2 * NCLIENTS + 64);
    memset(&M, 0, sizeof M);
    em_loop *loop = th_loop();
    M.loop = loop;
    em_server *srv = th_start_server(loop, &many_server, NULL);
    int rc;
    int port = th_listen_port(srv);
    for (int i = 0; i < NCLIENTS; i++) {
        rc = em_connect(loop, "127.0.0.1", port, &many_client,
                        (void *)(intptr_t)i, NULL);
        cr_assert_eq(rc, 0, "em_connect %d: %s", i, em_strerror(rc));
    }
    cr_assert_eq(em_connection_count(loop), NCLIENTS);

    double deadline = th_now() + TH_TIMEOUT(45);
    while (!all_unbound()) {
        cr_assert_lt(th_now(), deadline,
                     "completed %d, waiting %d, answered %d, unbound %d+%d",
                     M.completed, M.nwaiting, M.answered, M.server_unbinds,
                     M.client_unbinds);
        cr_assert_geq(em_run_once(loop, 10), 0);
    }
    cr_assert_eq(M.completed, NCLIENTS);
    cr_assert_eq(M.nwaiting, NCLIENTS);
    cr_assert_eq(M.max_conns, 2 * NCLIENTS,
                 "never had all %d pairs open at once", NCLIENTS);
    cr_assert_eq(M.answered, NCLIENTS);
    cr_assert_eq(M.server_unbinds, NCLIENTS);
    cr_assert_eq(M.client_unbinds, NCLIENTS);
    cr_assert_eq(M.server_bad_reason, 0, "server unbind %s",
                 em_err_name(M.server_bad_reason));
    cr_assert_eq(M.client_bad_reason, 0, "client unbind %s",
                 em_err_name(M.client_bad_reason));
    th_stop_and_free(loop, srv);
}

/* ---- a server whose test drives it from outside ----------------------- */

/* One accepted connection, kept in S.conn, with counters. */
static struct {
    em_conn *conn;
    int accepted, unbinds, reason, drained;
    size_t drained_size; /* outbound size seen inside drained */
    char in[256];
    size_t in_len;
    int unbind_send; /* em_send_data inside unbind */
    void (*on_post_init)(em_conn *conn);
    void (*on_receive)(em_conn *conn, const char *data, size_t len);
} S;

static void s_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    S.conn = conn;
    S.accepted++;
    if (S.on_post_init)
        S.on_post_init(conn);
}

static void s_receive(em_conn *conn, const char *data, size_t len)
{
    cr_assert_leq(S.in_len + len, sizeof S.in, "server got too much");
    memcpy(S.in + S.in_len, data, len);
    S.in_len += len;
    if (S.on_receive)
        S.on_receive(conn, data, len);
}

static void s_drained(em_conn *conn)
{
    S.drained++;
    S.drained_size = em_get_outbound_data_size(conn);
}

static void s_unbind(em_conn *conn, int reason)
{
    cr_assert_eq(conn, S.conn);
    S.unbind_send = em_send_data(conn, "x", 1);
    S.conn = NULL;
    S.unbinds++;
    S.reason = reason;
}

static const em_handler s_handler = {
    .post_init = s_post_init,
    .receive_data = s_receive,
    .drained = s_drained,
    .unbind = s_unbind,
};

/* Starts the server, connects a blocking client, runs until accepted. */
static em_server *s_start(em_loop *loop, int *client_fd)
{
    em_server *srv = th_start_server(loop, &s_handler, NULL);
    *client_fd = th_connect_accepted(loop, th_listen_port(srv), &S.accepted);
    cr_assert_not_null(S.conn);
    return srv;
}

static void s_finish(em_loop *loop, em_server *srv)
{
    cr_assert_eq(S.unbinds, 1, "unbind ran %d times", S.unbinds);
    cr_assert_eq(S.unbind_send, -ENOTCONN, "send inside unbind: %s",
                 em_err_name(S.unbind_send));
    th_stop_and_free(loop, srv);
}

/* Sends pattern bytes [*offset, *offset + len) in 64 KiB calls. */
static void send_pattern(em_conn *conn, size_t *offset, size_t len)
{
    static uint8_t piece[64 * KiB];
    while (len > 0) {
        size_t n = len < sizeof piece ? len : sizeof piece;
        th_pat_fill(piece, *offset, n);
        int rc = em_send_data(conn, piece, n);
        cr_assert_eq(rc, 0, "em_send_data: %s", em_strerror(rc));
        *offset += n;
        len -= n;
    }
}

/* Queues pattern data until the kernel refuses some (peer not reading). */
static void fill_until_queued(em_conn *conn, size_t *offset)
{
    while (em_get_outbound_data_size(conn) == 0) {
        cr_assert_lt(*offset, 256u * MiB, "the kernel took 256 MiB");
        send_pattern(conn, offset, 256 * KiB);
    }
}

Test(data, send_data_copies_the_callers_buffer, .timeout = TH_TIMEOUT(20))
{
    memset(&S, 0, sizeof S);
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);

    size_t offset = 0;
    fill_until_queued(S.conn, &offset);
    size_t before = em_get_outbound_data_size(S.conn);

    /* Queued, not written: then reused and freed at once. */
    size_t len = 100 * KiB;
    uint8_t *buf = malloc(len);
    cr_assert_not_null(buf);
    th_pat_fill(buf, offset, len);
    cr_assert_eq(em_send_data(S.conn, buf, len), 0);
    cr_assert_eq(em_get_outbound_data_size(S.conn), before + len,
                 "the queue did not grow by the whole send");
    memset(buf, 0xEE, len);
    free(buf);
    offset += len;
    cr_assert_eq(em_close_connection(S.conn, 1), 0);

    int err;
    size_t got = th_pump_pattern_eof(loop, fd, 0, offset, &err, 15);
    cr_assert_eq(err, 0, "client: %s", em_err_name(err));
    cr_assert_eq(got, offset, "client got %zu of %zu bytes", got, offset);
    th_run_until(loop, &S.unbinds, 5);
    cr_assert_eq(S.reason, 0);
    close(fd);
    s_finish(loop, srv);
}

Test(data, send_data_error_codes, .timeout = TH_TIMEOUT(20))
{
    memset(&S, 0, sizeof S);
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);
    em_conn *conn = S.conn;

    cr_assert_eq(em_send_data(NULL, "x", 1), -EINVAL);
    cr_assert_eq(em_send_data(conn, NULL, 5), -EINVAL);
    cr_assert_eq(em_send_data(conn, NULL, 0), 0, "NULL, 0 is an empty send");
    cr_assert_eq(em_send_data(conn, "zzz", 0), 0);
    cr_assert_eq(em_get_outbound_data_size(conn), 0);
    cr_assert_eq(em_send_data(conn, "abc", 3), 0);
    cr_assert_eq(em_get_outbound_data_size(conn), 0, "3 bytes not written");

    /* Close requested after writing, with nothing queued. */
    cr_assert_eq(em_close_connection(conn, 1), 0);
    cr_assert_eq(em_send_data(conn, "d", 1), -EPIPE,
                 "send after close_connection(conn, 1): %s",
                 em_err_name(em_send_data(conn, "d", 1)));
    cr_assert_eq(em_send_data(conn, NULL, 1), -EINVAL);

    char buf[16];
    size_t got = th_pump_recv(loop, fd, buf, sizeof buf, 5);
    cr_assert_eq(got, 3, "client got %zu bytes", got);
    cr_assert(memcmp(buf, "abc", 3) == 0);
    th_run_until(loop, &S.unbinds, 5);
    cr_assert_eq(S.reason, 0);
    close(fd);

    /* Immediate close: -ENOTCONN from then on. */
    S.accepted = 0;
    S.unbinds = 0;
    fd = th_connect_accepted(loop, th_listen_port(srv), &S.accepted);
    conn = S.conn;
    cr_assert_eq(em_close_connection(conn, 0), 0);
    cr_assert_eq(em_send_data(conn, "e", 1), -ENOTCONN);
    cr_assert_eq(em_send_data(conn, NULL, 0), -ENOTCONN);
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0);
    th_run_until(loop, &S.unbinds, 5);
    close(fd);
    s_finish(loop, srv);
}

static size_t queued_at_close;

static void close_from_timer(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    cr_assert_not_null(S.conn);
    queued_at_close = em_get_outbound_data_size(S.conn);
    cr_assert_eq(em_close_connection(S.conn, 0), 0);
}

Test(data, immediate_close_drops_queued_data, .timeout = TH_TIMEOUT(20))
{
    memset(&S, 0, sizeof S);
    queued_at_close = 0;
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);

    size_t offset = 0;
    fill_until_queued(S.conn, &offset);
    send_pattern(S.conn, &offset, 4 * MiB);
    cr_assert_geq(em_get_outbound_data_size(S.conn), 4 * MiB);
    cr_assert_eq(em_add_timer(loop, 0.05, close_from_timer, NULL, NULL), 0);
    th_run_until(loop, &S.unbinds, 5);
    cr_assert_eq(S.reason, 0);

    int err;
    size_t got = th_pump_pattern_eof(loop, fd, 0, offset, &err, 10);
    cr_assert(err == 0 || err == -ECONNRESET, "client: %s", em_err_name(err));
    cr_assert_lt(got, offset, "all %zu bytes arrived despite the close", got);
    cr_assert_geq(queued_at_close, 4 * MiB, "the queue drained meanwhile");
    cr_assert_geq(offset - got, queued_at_close,
                  "%zu bytes were queued at the close, only %zu missing",
                  queued_at_close, offset - got);
    close(fd);
    s_finish(loop, srv);
}

Test(data, immediate_close_upgrades_close_after_writing,
     .timeout = TH_TIMEOUT(20))
{
    memset(&S, 0, sizeof S);
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);

    size_t offset = 0;
    fill_until_queued(S.conn, &offset);
    send_pattern(S.conn, &offset, 2 * MiB);
    cr_assert_eq(em_close_connection(S.conn, 1), 0);
    cr_assert_eq(em_send_data(S.conn, "x", 1), -EPIPE);

    /* The client does not read: the after-writing close must wait. */
    th_run_for(loop, 0.1);
    cr_assert_eq(S.unbinds, 0, "closed before the queue drained");
    cr_assert_gt(em_get_outbound_data_size(S.conn), 0);

    cr_assert_eq(em_close_connection(S.conn, 0), 0);
    cr_assert_eq(em_send_data(S.conn, "x", 1), -ENOTCONN,
                 "send after the upgraded close");
    th_run_until(loop, &S.unbinds, 2);
    cr_assert_eq(S.reason, 0);

    int err;
    size_t got = th_pump_pattern_eof(loop, fd, 0, offset, &err, 10);
    cr_assert(err == 0 || err == -ECONNRESET, "client: %s", em_err_name(err));
    cr_assert_lt(got, offset, "the queue was flushed, not dropped");
    close(fd);
    s_finish(loop, srv);
}

Test(data, outbound_size_and_drained_track_the_queue, .timeout = TH_TIMEOUT(30))
{
    memset(&S, 0, sizeof S);
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);
    em_conn *conn = S.conn;

    /* A send the kernel takes whole never queues: no drained. */
    size_t offset = 0;
    send_pattern(conn, &offset, 1 * KiB);
    cr_assert_eq(em_get_outbound_data_size(conn), 0);

    fill_until_queued(conn, &offset);
    size_t s1 = em_get_outbound_data_size(conn);
    send_pattern(conn, &offset, 1 * MiB);
    size_t s2 = em_get_outbound_data_size(conn);
    cr_assert_eq(s2, s1 + MiB, "queue %zu -> %zu after 1 MiB", s1, s2);
    th_run_for(loop, 0.05);
    cr_assert_gt(em_get_outbound_data_size(conn), 0,
                 "the queue emptied while the peer read nothing");
    cr_assert_eq(S.drained, 0);

    uint8_t *buf = malloc(256 * KiB);
    cr_assert_not_null(buf);
    size_t got = 0;
    for (int round = 1; round <= 2; round++) {
        size_t last = em_get_outbound_data_size(conn);
        int shrank = 0;
        double deadline = th_now() + TH_TIMEOUT(15);
        while (S.drained < round) {
            cr_assert_lt(th_now(), deadline, "never drained (%zu queued)",
                         em_get_outbound_data_size(conn));
            ssize_t n = recv(fd, buf, 256 * KiB, MSG_DONTWAIT);
            if (n > 0) {
                cr_assert_eq(th_pat_check(buf, got, (size_t)n), -1);
                got += (size_t)n;
            }
            cr_assert_geq(em_run_once(loop, 1), 0);
            size_t now = em_get_outbound_data_size(conn);
            cr_assert_leq(now, last, "queue grew from %zu to %zu", last, now);
            if (now < last)
                shrank = 1;
            last = now;
        }
        cr_assert(shrank, "the queue never shrank gradually");
        cr_assert_eq(S.drained, round, "drained ran %d times", S.drained);
        cr_assert_eq(S.drained_size, 0, "drained with %zu queued",
                     S.drained_size);
        cr_assert_eq(em_get_outbound_data_size(conn), 0);
        th_run_for(loop, 0.02);
        cr_assert_eq(S.drained, round, "drained again with nothing sent");
        if (round == 1) {
            fill_until_queued(conn, &offset);
            send_pattern(conn, &offset, 1 * MiB);
        }
    }

    /* Read the rest; small sends now go out at once and never drain. */
    double deadline = th_now() + TH_TIMEOUT(10);
    while (got < offset) {
        cr_assert_lt(th_now(), deadline, "got %zu of %zu", got, offset);
        size_t want = offset - got < 256 * KiB ? offset - got : 256 * KiB;
        ssize_t n = recv(fd, buf, want, MSG_DONTWAIT);
        if (n > 0) {
            cr_assert_eq(th_pat_check(buf, got, (size_t)n), -1);
            got += (size_t)n;
        } else {
            cr_assert_geq(em_run_once(loop, 1), 0);
        }
    }
    send_pattern(conn, &offset, 100);
    cr_assert_eq(em_get_outbound_data_size(conn), 0);
    cr_assert_eq(th_pump_recv(loop, fd, buf, 100, 5), 100);
    cr_assert_eq(S.drained, 2);
    free(buf);

    cr_assert_eq(em_close_connection(conn, 1), 0);
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0);
    th_run_until(loop, &S.unbinds, 5);
    cr_assert_eq(S.reason, 0);
    close(fd);
    s_finish(loop, srv);
}

static size_t half_close_total;

static void half_close_post_init(em_conn *conn)
{
    size_t offset = 0;
    fill_until_queued(conn, &offset);
    send_pattern(conn, &offset, 1 * MiB);
    half_close_total = offset;
    cr_assert_gt(em_get_outbound_data_size(conn), 0, "nothing queued");
    cr_assert_eq(em_close_write(conn), 0);
    cr_assert_eq(em_close_write(conn), 0, "second close_write");
    cr_assert_eq(em_send_data(conn, "x", 1), -EPIPE);
}

Test(data, close_write_half_closes_after_the_queue, .timeout = TH_TIMEOUT(20))
{
    memset(&S, 0, sizeof S);
    S.on_post_init = half_close_post_init;
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);
    cr_assert_eq(em_close_write(NULL), -EINVAL);

    int err;
    size_t got = th_pump_pattern_eof(loop, fd, 0, half_close_total, &err, 10);
    cr_assert_eq(err, 0, "client: %s", em_err_name(err));
    cr_assert_eq(got, half_close_total, "EOF after %zu of %zu bytes", got,
                 half_close_total);

    /* Our side is still open for reading. */
    th_run_for(loop, 0.05);
    cr_assert_eq(S.unbinds, 0, "half-closed connection was closed");
    static const char msg[] = "still talking";
    th_send_all(fd, msg, sizeof msg - 1);
    th_run_until_size(loop, &S.in_len, sizeof msg - 1, 5);
    cr_assert(memcmp(S.in, msg, sizeof msg - 1) == 0);
    cr_assert_eq(S.unbinds, 0);

    close(fd);
    th_run_until(loop, &S.unbinds, 5);
    cr_assert_eq(S.reason, 0, "unbind %s", em_err_name(S.reason));
    s_finish(loop, srv);
}

/* Small socket buffers on both ends (autotuning would let the kernel take
 * tens of MiB) so that most of the answer must wait in the queue. */
#define ANSWER_SIZE (4 * MiB)

static size_t answer_queued;

static void answer_on_request(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    (void)len;
    if (S.in_len < 4 || memcmp(S.in, "GET\n", 4) != 0)
        return;
    cr_assert_eq(S.in_len, 4, "bytes after the request");
    int small = 64 * 1024;
    cr_assert_eq(
        em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    size_t offset = 0;
    send_pattern(conn, &offset, ANSWER_SIZE);
    answer_queued = em_get_outbound_data_size(conn);
}

Test(data, peer_eof_with_queued_data_finishes_sending,
     .timeout = TH_TIMEOUT(40))
{
    memset(&S, 0, sizeof S);
    answer_queued = 0;
    S.on_receive = answer_on_request;
    em_loop *loop = th_loop();
    int fd;
    em_server *srv = s_start(loop, &fd);
    int small = 64 * 1024;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)),
                 0);

    th_send_all(fd, "GET\n", 4);
    cr_assert_eq(shutdown(fd, SHUT_WR), 0);
    /* Let the server read the request and the EOF before we read. */
    th_run_for(loop, 0.1);
    cr_assert_gt(answer_queued, 0, "the answer was not queued");

    int err;
    size_t got = th_pump_pattern_eof(loop, fd, 0, ANSWER_SIZE, &err, 20);
    cr_assert_eq(err, 0, "client: %s", em_err_name(err));
    cr_assert_eq(got, ANSWER_SIZE, "EOF after %zu bytes", got);
    th_run_until(loop, &S.unbinds, 5);
    cr_assert_eq(S.reason, 0, "unbind %s", em_err_name(S.reason));
    close(fd);
    s_finish(loop, srv);
}
