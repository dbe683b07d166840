/*
 * test_ids.c - connection ids: never 0, em_conn_lookup finds a live
 * connection and NULL from its unbind on, a reused slot gets a new id,
 * 10,000 ids at once and 10,000 in a row are all distinct, em_reconnect
 * gives a new id, em_send_data_id from four threads arrives in per-thread
 * order, sends to a connection that is gone are dropped (also when it goes
 * between the call and the delivery, and when the loop is freed first), bad
 * arguments, and descriptor counts.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h" /* slot layout and table size, for white-box checks */

/* ---- a handler that records its ids ----------------------------------- */

typedef struct rec {
    int post_inits;
    int unbinds;
    int reason;
    int completed;
    uint64_t id_in_unbind;
    em_conn *lookup_in_unbind;
    int reconnect_to; /* port to em_reconnect to in the first unbind */
    int reconnect_err;
    em_conn *conn;
} rec;

static void rec_post_init(em_conn *conn, void *arg)
{
    rec *r = arg;
    r->post_inits++;
    r->conn = conn;
}

static void rec_completed(em_conn *conn)
{
    rec *r = em_conn_arg(conn);
    r->completed++;
}

static void rec_unbind(em_conn *conn, int reason)
{
    rec *r = em_conn_arg(conn);
    r->unbinds++;
    r->reason = reason;
    r->id_in_unbind = em_conn_id(conn);
    r->lookup_in_unbind = em_conn_lookup(em_conn_loop(conn), em_conn_id(conn));
    if (r->reconnect_to && r->unbinds == 1)
        r->reconnect_err = em_reconnect(conn, "127.0.0.1", r->reconnect_to);
}

static const em_handler rec_handler = {
    .post_init = rec_post_init,
    .connection_completed = rec_completed,
    .unbind = rec_unbind,
};

static const em_handler plain_handler = {0};

static em_conn *open_udp(em_loop *loop, const em_handler *h, void *arg)
{
    em_conn *conn = NULL;
    int err = em_open_datagram_socket(loop, "127.0.0.1", 0, h, arg, &conn);
    cr_assert_eq(err, 0, "em_open_datagram_socket: %s", em_err_name(err));
    return conn;
}

/* Runs turns until the loop has no connection left (5 s). */
static void run_until_no_connections(em_loop *loop)
{
    double deadline = th_now() + TH_TIMEOUT(5);
    while (em_connection_count(loop) > 0) {
        cr_assert_lt(th_now(), deadline, "connections left");
        cr_assert_geq(em_run_once(loop, 5), 0);
    }
}

/* ---- lookup ------------------------------------------------------------ */

Test(ids, lookup_finds_live_connections_and_null_from_unbind,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    rec a = {0}, b = {0};
    em_conn *ca = open_udp(loop, &rec_handler, &a);
    em_conn *cb = open_udp(loop, &rec_handler, &b);
    uint64_t ia = em_conn_id(ca), ib = em_conn_id(cb);
    cr_assert_neq(ia, 0);
    cr_assert_neq(ib, 0);
    cr_assert_neq(ia, ib);
    cr_assert_eq(em_conn_lookup(loop, ia), ca);
    cr_assert_eq(em_conn_lookup(loop, ib), cb);

    /* Closing but not yet unbound: still there (the pointer is valid). */
    cr_assert_eq(em_close_connection(ca, 0), 0);
    cr_assert_eq(em_conn_lookup(loop, ia), ca);
    th_run_until_count(loop, &a.unbinds, 1, 5.0);
    /* In unbind: gone for lookups, the id itself still readable. */
    cr_assert_eq(a.id_in_unbind, ia);
    cr_assert_null(a.lookup_in_unbind);
    cr_assert_null(em_conn_lookup(loop, ia));
    cr_assert_eq(em_conn_lookup(loop, ib), cb, "the other one is untouched");

    cr_assert_eq(em_close_connection(cb, 0), 0);
    th_run_until_count(loop, &b.unbinds, 1, 5.0);
    cr_assert_null(em_conn_lookup(loop, ib));
    th_free_loop(loop);
}

Test(ids, a_reused_slot_gets_a_new_id, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    rec r = {0};
    uint64_t old = em_conn_id(open_udp(loop, &rec_handler, &r));
    em_close_connection(r.conn, 0);
    th_run_until_count(loop, &r.unbinds, 1, 5.0);

    /* The only free slot is the one just released. */
    rec s = {0};
    em_conn *conn = open_udp(loop, &rec_handler, &s);
    uint64_t id = em_conn_id(conn);
    cr_assert_eq((uint32_t)id, (uint32_t)old, "slot not reused");
    cr_assert_neq(id, old);
    cr_assert_null(em_conn_lookup(loop, old));
    cr_assert_eq(em_conn_lookup(loop, id), conn);

    /* A TCP connection in the same table. */
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    uint64_t tcp = em_conn_id(e.conn);
    cr_assert_neq(tcp, id);
    cr_assert_neq(tcp, old);
    cr_assert_eq(em_conn_lookup(loop, tcp), e.conn);
    th_close_clients(loop, &e, &fd, 1);
    cr_assert_null(em_conn_lookup(loop, tcp));

    em_close_connection(conn, 0);
    th_run_until_count(loop, &s.unbinds, 1, 5.0);
    th_stop_and_free(loop, srv);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int contains(const uint64_t *sorted, size_t n, uint64_t id)
{
    return bsearch(&id, sorted, n, sizeof(id), cmp_u64) != NULL;
}

/* 10,000 live at once (1,000 under valgrind), then 10,000 more after they
 * are gone, in the same slots: all distinct, old ones never found again. */
Test(ids, ten_thousand_ids_at_once_are_distinct, .timeout = TH_TIMEOUT(60))
{
    const size_t n = TH_TIMEOUT_SCALE > 1 ? 1000 : 10000;
    th_raise_nofile(n + 256);
    em_loop *loop = th_loop();
    em_conn **conns = malloc(n * sizeof(*conns));
    uint64_t *first = malloc(n * sizeof(*first));
    for (size_t i = 0; i < n; i++) {
        conns[i] = open_udp(loop, &plain_handler, NULL);
        first[i] = em_conn_id(conns[i]);
        cr_assert_neq(first[i], 0);
    }
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(em_conn_lookup(loop, first[i]), conns[i]);
    uint32_t cap = loop->ids.cap;
    for (size_t i = 0; i < n; i++)
        em_close_connection(conns[i], 0);
    run_until_no_connections(loop);
    for (size_t i = 0; i < n; i++)
        cr_assert_null(em_conn_lookup(loop, first[i]));
    qsort(first, n, sizeof(*first), cmp_u64);
    for (size_t i = 1; i < n; i++)
        cr_assert_neq(first[i], first[i - 1], "id handed out twice");

    for (size_t i = 0; i < n; i++) {
        conns[i] = open_udp(loop, &plain_handler, NULL);
        uint64_t id = em_conn_id(conns[i]);
        cr_assert_not(contains(first, n, id), "old id %llx reused",
                      (unsigned long long)id);
        cr_assert_eq(em_conn_lookup(loop, id), conns[i]);
    }
    cr_assert_eq(loop->ids.cap, cap, "the slot table grew instead of reusing");
    for (size_t i = 0; i < n; i++)
        em_close_connection(conns[i], 0);
    run_until_no_connections(loop);
    free(conns);
    free(first);
    th_free_loop(loop);
}

/* 10,000 in a row through one or two slots: still all distinct. */
Test(ids, ten_thousand_ids_in_a_row_are_distinct, .timeout = TH_TIMEOUT(60))
{
    const size_t n = TH_TIMEOUT_SCALE > 1 ? 1000 : 10000;
    em_loop *loop = th_loop();
    uint64_t *ids = malloc(n * sizeof(*ids));
    for (size_t i = 0; i < n; i++) {
        em_conn *conn = open_udp(loop, &plain_handler, NULL);
        ids[i] = em_conn_id(conn);
        em_close_connection(conn, 0);
        cr_assert_geq(em_run_once(loop, 0), 0);
        cr_assert_null(em_conn_lookup(loop, ids[i]));
    }
    cr_assert_leq(loop->ids.count, 2);
    qsort(ids, n, sizeof(*ids), cmp_u64);
    for (size_t i = 1; i < n; i++)
        cr_assert_neq(ids[i], ids[i - 1]);
    free(ids);
    th_free_loop(loop);
}

Test(ids, reconnect_gives_a_new_id, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    rec r = {.reconnect_to = th_listen_port(srv)};
    em_conn *conn = NULL;
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", th_free_port(), &rec_handler, &r, &conn),
        0);
    uint64_t old = em_conn_id(conn);
    cr_assert_eq(em_conn_lookup(loop, old), conn, "connecting counts");
    th_run_until_count(loop, &r.completed, 1, 5.0);
    cr_assert_eq(r.unbinds, 1);
    cr_assert_eq(r.reason, -ECONNREFUSED);
    cr_assert_eq(r.reconnect_err, 0);
    cr_assert_null(r.lookup_in_unbind);
    uint64_t id = em_conn_id(conn);
    cr_assert_neq(id, old);
    cr_assert_neq(id, 0);
    cr_assert_null(em_conn_lookup(loop, old));
    cr_assert_eq(em_conn_lookup(loop, id), conn);
    em_close_connection(conn, 0);
    th_run_until_count(loop, &r.unbinds, 2, 5.0);
    cr_assert_null(em_conn_lookup(loop, id));
    th_run_until_count(loop, &e.unbinds, 1, 5.0);
    th_stop_and_free(loop, srv);
}

/* ---- em_send_data_id ---------------------------------------------------- */

#define THREADS 4
#define PER_THREAD 250
#define RECORD 7 /* "A00042\n" */

struct sender {
    em_loop *loop;
    uint64_t id;
    int index;
    int failures;
};

static void *send_records(void *arg)
{
    struct sender *s = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char rec[RECORD + 1];
        snprintf(rec, sizeof(rec), "%c%05d\n", 'A' + s->index, i);
        if (em_send_data_id(s->loop, s->id, rec, RECORD) != 0)
            s->failures++;
        if (i % 50 == 0)
            sched_yield();
    }
    return NULL;
}

Test(ids, sends_from_four_threads_arrive_in_per_thread_order,
     .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    uint64_t id = em_conn_id(e.conn);

    pthread_t threads[THREADS];
    struct sender senders[THREADS];
    for (int t = 0; t < THREADS; t++) {
        senders[t] = (struct sender){.loop = loop, .id = id, .index = t};
        cr_assert_eq(
            pthread_create(&threads[t], NULL, send_records, &senders[t]), 0);
    }
    size_t total = (size_t)THREADS * PER_THREAD * RECORD;
    char *buf = malloc(total);
    size_t got = th_pump_recv(loop, fd, buf, total, 10.0);
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        cr_assert_eq(senders[t].failures, 0);
    }
    cr_assert_eq(got, total);

    int next[THREADS] = {0};
    for (size_t off = 0; off < total; off += RECORD) {
        int t = buf[off] - 'A';
        cr_assert(t >= 0 && t < THREADS, "bad record at %zu", off);
        int seq = atoi(buf + off + 1);
        cr_assert_eq(seq, next[t], "thread %d: %d after %d", t, seq,
                     next[t] - 1);
        cr_assert_eq(buf[off + RECORD - 1], '\n');
        next[t]++;
    }
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(next[t], PER_THREAD);
    free(buf);
    th_close_clients(loop, &e, &fd, 1);
    th_stop_and_free(loop, srv);
}

static void *send_once(void *arg)
{
    struct sender *s = arg;
    s->failures = em_send_data_id(s->loop, s->id, "late", 4);
    return NULL;
}

Test(ids, sends_to_a_gone_connection_are_dropped, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);

    /* Gone before the call: accepted, queued, dropped on the loop. */
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    uint64_t id = em_conn_id(e.conn);
    th_close_clients(loop, &e, &fd, 1);
    struct sender s = {.loop = loop, .id = id};
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, send_once, &s), 0);
    pthread_join(thread, NULL);
    cr_assert_eq(s.failures, 0, "queued: the result comes later, if at all");
    th_run_for(loop, 0.05);
    cr_assert_eq(e.unbinds, 1);

    /* Gone between the call and the delivery: the client sees EOF and no
     * byte of it. */
    fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    id = em_conn_id(e.conn);
    cr_assert_eq(em_send_data_id(loop, id, "never", 5), 0);
    cr_assert_eq(em_close_connection(e.conn, 0), 0);
    char buf[16];
    cr_assert_eq(th_pump_recv(loop, fd, buf, sizeof(buf), 5.0), 0);
    th_run_until_count(loop, &e.unbinds, 2, 5.0);
    close(fd);

    /* Still queued when the loop is freed: freed with it (the sanitizer
     * and valgrind runs check that nothing leaks). */
    cr_assert_eq(em_send_data_id(loop, id, "x", 1), 0);
    char *big = calloc(1, 1 << 16);
    cr_assert_eq(em_send_data_id(loop, id, big, 1 << 16), 0);
    free(big);
    th_stop_and_free(loop, srv);
}

/* em_send_data on a datagram socket replies to the last sender, so does
 * em_send_data_id. */
static void note_datagram(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    (void)len;
    rec *r = em_conn_arg(conn);
    r->completed++;
}

static const em_handler udp_rec_handler = {
    .post_init = rec_post_init,
    .receive_data = note_datagram,
    .unbind = rec_unbind,
};

Test(ids, send_data_id_to_a_datagram_socket_replies, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    rec r = {0};
    em_conn *conn = open_udp(loop, &udp_rec_handler, &r);
    int client = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons(em_datagram_port(conn)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(sendto(client, "hi", 2, 0, (struct sockaddr *)&to, sizeof(to)),
                 2);
    th_run_until_count(loop, &r.completed, 1, 5.0);
    cr_assert_eq(em_send_data_id(loop, em_conn_id(conn), "back", 4), 0);
    char buf[8];
    ssize_t n = -1;
    double deadline = th_now() + TH_TIMEOUT(5);
    while (n < 0 && th_now() < deadline) {
        em_run_once(loop, 5);
        n = recv(client, buf, sizeof(buf), MSG_DONTWAIT);
    }
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(buf, "back", 4), 0);
    close(client);
    em_close_connection(conn, 0);
    th_run_until_count(loop, &r.unbinds, 1, 5.0);
    th_free_loop(loop);
}

/* ---- bad input, descriptors -------------------------------------------- */

Test(ids, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_conn_id(NULL), 0);
    cr_assert_null(em_conn_lookup(NULL, 1));
    cr_assert_null(em_conn_lookup(loop, 0));
    cr_assert_null(em_conn_lookup(loop, 1), "never handed out");
    cr_assert_null(em_conn_lookup(loop, UINT64_MAX));
    em_conn *conn = open_udp(loop, &plain_handler, NULL);
    uint64_t id = em_conn_id(conn);
    cr_assert_null(em_conn_lookup(loop, id + (1ull << 32)), "wrong generation");
    cr_assert_null(em_conn_lookup(loop, id ^ 0xffffffffull), "wrong slot");
    cr_assert_eq(em_send_data_id(NULL, id, "x", 1), -EINVAL);
    cr_assert_eq(em_send_data_id(loop, 0, "x", 1), -EINVAL);
    cr_assert_eq(em_send_data_id(loop, id, NULL, 1), -EINVAL);
    cr_assert_eq(em_send_data_id(loop, id, NULL, 0), 0, "an empty send");
    em_close_connection(conn, 0);
    run_until_no_connections(loop);
    th_free_loop(loop);
}

Test(ids, descriptors_are_not_leaked, .timeout = TH_TIMEOUT(10))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    for (int i = 0; i < 20; i++) {
        int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
        uint64_t id = em_conn_id(e.conn);
        cr_assert_eq(em_send_data_id(loop, id, "ping", 4), 0);
        char buf[4];
        cr_assert_eq(th_pump_recv(loop, fd, buf, 4, 5.0), 4);
        th_close_clients(loop, &e, &fd, 1);
        cr_assert_eq(em_send_data_id(loop, id, "gone", 4), 0);
    }
    th_stop_and_free(loop, srv);
    cr_assert_eq(th_count_fds(), before);
}
