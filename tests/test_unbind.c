/*
 * test_unbind.c - unbind's guarantees, path by path, over real sockets.
 *
 * Every connection here is tracked: its state points at a record that
 * outlives it, and every callback checks that unbind has not run yet, that
 * no em_close_connection / em_connect the test made is on the stack, and
 * unbind checks it runs once with a usable connection (state, loop, arg).
 * Paths: refused connect, peer reset, inactivity timeout, em_stop inside
 * em_run, close inside post_init (accepted and outbound), after writing in
 * an outbound post_init, inside receive_data, connection_completed, a timer,
 * another connection's unbind, closing B from A's receive_data (also with a
 * scheduled task in the same batch), double close, and a peer vanishing
 * while megabytes are queued (no SIGPIPE; other connections unaffected).
 */
#include <errno.h>
#include <signal.h>
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

/* ---- the tracker ------------------------------------------------------ */

#define MAXREC 32

typedef struct rec {
    int post_inits, completes, receives, drains, unbinds;
    int unbound; /* unbind ran: any later callback is a bug */
    int closed;  /* the test closed it: no receive_data after that */
    int reason;
    int seq;    /* 1-based position among all unbinds */
    int server; /* accepted (1) or outbound (0) */
    size_t bytes;
    em_conn *conn; /* NULL once unbound */
    void *state;
    void *arg;
} rec;

struct tstate {
    rec *r;
};

static struct {
    rec recs[MAXREC];
    int nrec;
    int in_close;  /* inside an em_close_connection the test made */
    int in_api;    /* inside em_connect: no unbind/complete/receive */
    int unbinds;   /* all connections */
    int after_run; /* em_run has returned */
    int servers;   /* accepted connections so far */
    em_loop *loop;
    void (*on_post_init)(em_conn *conn, rec *r);
    void (*on_completed)(em_conn *conn, rec *r);
    void (*on_receive)(em_conn *conn, rec *r, const char *data, size_t len);
    void (*on_unbind)(em_conn *conn, rec *r, int reason);
} U;

static int server_arg, client_arg; /* their addresses tell roles apart */

static void u_reset(em_loop *loop)
{
    memset(&U, 0, sizeof U);
    U.loop = loop;
}

/* Every close the test makes goes through here. */
static int tclose(em_conn *conn, int after_writing)
{
    U.in_close++;
    int rc = em_close_connection(conn, after_writing);
    U.in_close--;
    return rc;
}

static rec *rec_of(em_conn *conn)
{
    struct tstate *st = em_conn_state(conn);
    cr_assert_not_null(st, "em_conn_state returned NULL");
    cr_assert_not_null(st->r, "callback before post_init");
    cr_assert_eq(st->r->conn, conn, "state belongs to another connection");
    return st->r;
}

/* Common to every callback but post_init. */
static rec *check_alive(em_conn *conn, const char *what)
{
    cr_assert_eq(U.in_close, 0, "%s inside em_close_connection", what);
    cr_assert_eq(U.in_api, 0, "%s inside em_connect", what);
    cr_assert_eq(U.after_run, 0, "%s after em_run returned", what);
    rec *r = rec_of(conn);
    cr_assert_eq(r->unbound, 0, "%s after unbind", what);
    return r;
}

static void t_post_init(em_conn *conn, void *arg)
{
    cr_assert_eq(U.in_close, 0, "post_init inside em_close_connection");
    cr_assert_lt(U.nrec, MAXREC);
    struct tstate *st = em_conn_state(conn);
    cr_assert_not_null(st);
    cr_assert_null(st->r, "state not zeroed or post_init twice");
    rec *r = &U.recs[U.nrec++];
    st->r = r;
    r->conn = conn;
    r->state = st;
    r->arg = arg;
    r->server = arg == &server_arg;
    if (r->server)
        U.servers++;
    r->post_inits++;
    cr_assert_eq(em_conn_arg(conn), arg);
    cr_assert_eq(em_conn_loop(conn), U.loop);
    if (U.on_post_init)
        U.on_post_init(conn, r);
}

static void t_completed(em_conn *conn)
{
    rec *r = check_alive(conn, "connection_completed");
    cr_assert_eq(r->server, 0, "connection_completed on an accepted conn");
    cr_assert_eq(r->completes, 0, "connection_completed twice");
    cr_assert_eq(r->receives, 0, "receive_data before connection_completed");
    r->completes++;
    if (U.on_completed)
        U.on_completed(conn, r);
}

static void t_receive(em_conn *conn, const char *data, size_t len)
{
    rec *r = check_alive(conn, "receive_data");
    cr_assert_eq(r->closed, 0, "receive_data after the connection was closed");
    cr_assert_gt(len, 0);
    r->receives++;
    r->bytes += len;
    if (U.on_receive)
        U.on_receive(conn, r, data, len);
}

static void t_drained(em_conn *conn)
{
    rec *r = check_alive(conn, "drained");
    r->drains++;
}

static void t_unbind(em_conn *conn, int reason)
{
    rec *r = check_alive(conn, "unbind");
    cr_assert_eq(r->unbinds, 0, "unbind twice");
    /* Still a usable object. */
    cr_assert_eq(em_conn_state(conn), r->state);
    cr_assert_eq(em_conn_loop(conn), U.loop);
    cr_assert_eq(em_conn_arg(conn), r->arg);
    cr_assert_eq(em_send_data(conn, "x", 1), -ENOTCONN,
                 "em_send_data inside unbind");
    cr_assert_eq(tclose(conn, 0), 0, "closing inside unbind");
    r->unbinds++;
    r->unbound = 1;
    r->reason = reason;
    r->seq = ++U.unbinds;
    if (U.on_unbind)
        U.on_unbind(conn, r, reason);
    r->conn = NULL;
}

static const em_handler tracked = {
    .state_size = sizeof(struct tstate),
    .post_init = t_post_init,
    .connection_completed = t_completed,
    .receive_data = t_receive,
    .drained = t_drained,
    .unbind = t_unbind,
};

/* ---- plumbing ------------------------------------------------------- */

static em_server *start_server(em_loop *loop)
{
    return th_start_server(loop, &tracked, &server_arg);
}

static em_conn *tconnect(em_loop *loop, int port)
{
    em_conn *conn = NULL;
    U.in_api++;
    int rc = em_connect(loop, "127.0.0.1", port, &tracked, &client_arg, &conn);
    U.in_api--;
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
    cr_assert_not_null(conn);
    return conn;
}

/* Every record unbound exactly once; nothing left on the loop. */
static void finish(em_loop *loop, em_server *srv)
{
    th_run_for(loop, 0.02); /* a late second unbind would show up here */
    for (int i = 0; i < U.nrec; i++) {
        cr_assert_eq(U.recs[i].post_inits, 1, "rec %d: post_init x%d", i,
                     U.recs[i].post_inits);
        cr_assert_eq(U.recs[i].unbinds, 1, "rec %d: unbind x%d", i,
                     U.recs[i].unbinds);
    }
    cr_assert_eq(U.unbinds, U.nrec);
    th_stop_and_free(loop, srv);
}

/* Raw client connected and accepted (post_init ran for it). */
static int accepted_client(em_loop *loop, em_server *srv, rec **out)
{
    int fd = th_connect_accepted(loop, th_listen_port(srv), &U.servers);
    rec *r = NULL;
    for (int i = 0; i < U.nrec; i++)
        if (U.recs[i].server)
            r = &U.recs[i];
    cr_assert_not_null(r);
    *out = r;
    return fd;
}

/* ---- paths ------------------------------------------------------------ */

Test(unbind, refused_connect, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    tconnect(loop, th_free_port());
    cr_assert_eq(U.unbinds, 0, "unbind inside em_connect");
    cr_assert_eq(em_connection_count(loop), 1);
    th_run_until_count(loop, &U.unbinds, 1, 5);
    rec *r = &U.recs[0];
    cr_assert_eq(r->reason, -ECONNREFUSED, "unbind %s", em_err_name(r->reason));
    cr_assert_eq(r->completes, 0);
    cr_assert_eq(r->receives, 0);
    finish(loop, NULL);
}

Test(unbind, peer_reset, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    em_server *srv = start_server(loop);
    rec *r;
    int fd = accepted_client(loop, srv, &r);

    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd); /* RST */
    th_run_until_count(loop, &U.unbinds, 1, 5);
    cr_assert(r->reason == -ECONNRESET || r->reason == 0, "unbind %s",
              em_err_name(r->reason));
    finish(loop, srv);
}

static void set_short_timeout(em_conn *conn, rec *r)
{
    (void)r;
    cr_assert_eq(em_set_comm_inactivity_timeout(conn, 0.1), 0);
}

Test(unbind, inactivity_timeout, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    U.on_post_init = set_short_timeout;
    em_server *srv = start_server(loop);
    rec *r;
    int fd = accepted_client(loop, srv, &r);
    th_run_until_count(loop, &U.unbinds, 1, 5);
    cr_assert_eq(r->reason, -ETIMEDOUT, "unbind %s", em_err_name(r->reason));
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0);
    close(fd);
    finish(loop, srv);
}

/* em_stop once every connection is up; re-armed until then. */
static void stop_when_ready(em_loop *loop, void *arg)
{
    int *want = arg;
    int completes = 0;
    for (int i = 0; i < U.nrec; i++)
        completes += U.recs[i].completes;
    if (U.servers == want[0] && completes == want[1]) {
        cr_assert_eq(em_stop(loop), 0);
        cr_assert_eq(em_is_stopping(loop), 1);
        return;
    }
    cr_assert_eq(em_add_timer(loop, 0.01, stop_when_ready, arg, NULL), 0);
}

static void give_up(em_loop *loop, void *arg)
{
    int *gave_up = arg;
    *gave_up = 1;
    em_stop(loop);
}

Test(unbind, em_stop_unbinds_everything_before_em_run_returns,
     .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    em_server *srv = start_server(loop);
    int port = th_listen_port(srv);
    enum { EM_CLIENTS = 3, RAW_CLIENTS = 2 };
    for (int i = 0; i < EM_CLIENTS; i++)
        tconnect(loop, port);
    int fds[RAW_CLIENTS];
    for (int i = 0; i < RAW_CLIENTS; i++)
        fds[i] = th_client_connect(port);

    int want[2] = {EM_CLIENTS + RAW_CLIENTS, EM_CLIENTS};
    int gave_up = 0;
    em_timer_id guard;
    cr_assert_eq(em_add_timer(loop, 0.01, stop_when_ready, want, NULL), 0);
    cr_assert_eq(em_add_timer(loop, TH_TIMEOUT(10), give_up, &gave_up, &guard),
                 0);
    cr_assert_eq(em_run(loop), 0);
    U.after_run = 1;

    cr_assert_eq(gave_up, 0, "connections never came up");
    cr_assert_eq(U.nrec, 2 * EM_CLIENTS + RAW_CLIENTS);
    cr_assert_eq(U.unbinds, U.nrec, "%d of %d unbound when em_run returned",
                 U.unbinds, U.nrec);
    for (int i = 0; i < U.nrec; i++)
        cr_assert_eq(U.recs[i].reason, 0, "rec %d: %s", i,
                     em_err_name(U.recs[i].reason));
    cr_assert_eq(em_connection_count(loop), 0);
    cr_assert_eq(em_cancel_timer(loop, guard), 0);
    for (int i = 0; i < RAW_CLIENTS; i++) {
        char c;
        cr_assert_eq(recv(fds[i], &c, 1, 0), 0, "raw client saw no EOF");
        close(fds[i]);
    }
    /* em_run closed the server too: nothing is left to free. */
    finish(loop, NULL);
}

static void close_now_in_post_init(em_conn *conn, rec *r)
{
    cr_assert_eq(tclose(conn, 0), 0);
    r->closed = 1;
    cr_assert_eq(em_send_data(conn, "late", 4), -ENOTCONN);
    cr_assert_eq(tclose(conn, 1), 0);
}

Test(unbind, close_inside_post_init_of_accepted, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    U.on_post_init = close_now_in_post_init;
    em_server *srv = start_server(loop);
    int fd = th_client_connect(th_listen_port(srv));
    th_send_all(fd, "data", 4); /* waiting, never delivered */
    int err = th_pump_eof(loop, fd, 5);
    cr_assert(err == 0 || err == -ECONNRESET, "client: %s", em_err_name(err));
    th_run_until_count(loop, &U.unbinds, 1, 5);
    rec *r = &U.recs[0];
    cr_assert_eq(r->reason, 0);
    cr_assert_eq(r->receives, 0);
    close(fd);
    finish(loop, srv);
}

Test(unbind, close_inside_post_init_of_outbound, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    em_server *srv = start_server(loop);
    U.on_post_init = close_now_in_post_init;
    tconnect(loop, th_listen_port(srv));
    cr_assert_eq(U.unbinds, 0, "unbind inside em_connect");
    th_run_until_count(loop, &U.unbinds, 1, 5);
    th_run_for(loop, 0.05);
    cr_assert_eq(U.nrec, 1, "the closed connect still reached the server");
    rec *r = &U.recs[0];
    cr_assert_eq(r->reason, 0, "unbind %s", em_err_name(r->reason));
    cr_assert_eq(r->completes, 0, "connection_completed after close");
    finish(loop, srv);
}

static void send_then_close_after_writing(em_conn *conn, rec *r)
{
    if (r->server)
        return;
    cr_assert_eq(em_is_connecting(conn), 1);
    cr_assert_eq(em_send_data(conn, "hello", 5), 0);
    cr_assert_eq(tclose(conn, 1), 0);
    cr_assert_eq(em_send_data(conn, "more", 4), -EPIPE);
}

Test(unbind, close_after_writing_inside_post_init_of_outbound,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    U.on_post_init = send_then_close_after_writing;
    em_server *srv = start_server(loop);
    tconnect(loop, th_listen_port(srv));
    th_run_until_count(loop, &U.unbinds, 2, 5);
    rec *c = &U.recs[0], *s = &U.recs[1];
    cr_assert_eq(c->server, 0);
    cr_assert_eq(c->completes, 1);
    cr_assert_eq(c->reason, 0);
    cr_assert_eq(s->bytes, 5, "server got %zu bytes", s->bytes);
    cr_assert_eq(s->reason, 0);
    finish(loop, srv);
}

static void close_in_receive(em_conn *conn, rec *r, const char *d, size_t n)
{
    (void)d;
    (void)n;
    cr_assert_eq(tclose(conn, 0), 0);
    r->closed = 1;
}

Test(unbind, close_inside_receive_data, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    U.on_receive = close_in_receive;
    em_server *srv = start_server(loop);
    rec *r;
    int fd = accepted_client(loop, srv, &r);

    /* More than one read's worth waits in the socket. */
    static char junk[256 * KiB];
    size_t sent = 0;
    while (sent < sizeof junk) {
        ssize_t n = send(fd, junk + sent, sizeof junk - sent,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    cr_assert_gt(sent, 0);
    th_run_until_count(loop, &U.unbinds, 1, 5);
    cr_assert_eq(r->receives, 1, "receive_data ran %d times", r->receives);
    cr_assert_eq(r->reason, 0);
    int err = th_pump_eof(loop, fd, 5);
    cr_assert(err == 0 || err == -ECONNRESET, "client: %s", em_err_name(err));
    close(fd);
    finish(loop, srv);
}

static void greet(em_conn *conn, rec *r)
{
    if (r->server)
        cr_assert_eq(em_send_data(conn, "greeting", 8), 0);
}

static void close_in_completed(em_conn *conn, rec *r)
{
    cr_assert_eq(tclose(conn, 0), 0);
    r->closed = 1;
}

Test(unbind, close_inside_connection_completed, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    U.on_post_init = greet;
    U.on_completed = close_in_completed;
    em_server *srv = start_server(loop);
    tconnect(loop, th_listen_port(srv));
    th_run_until_count(loop, &U.unbinds, 2, 5);
    rec *c = &U.recs[0], *s = &U.recs[1];
    cr_assert_eq(c->completes, 1);
    cr_assert_eq(c->receives, 0);
    cr_assert_eq(c->reason, 0);
    cr_assert(s->reason == 0 || s->reason == -ECONNRESET, "server unbind %s",
              em_err_name(s->reason));
    finish(loop, srv);
}

static void close_from_timer(em_loop *loop, void *arg)
{
    (void)loop;
    rec *r = arg;
    cr_assert_eq(r->unbound, 0);
    cr_assert_eq(tclose(r->conn, 0), 0);
    r->closed = 1;
}

Test(unbind, close_inside_timer_callback, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    em_server *srv = start_server(loop);
    rec *r;
    int fd = accepted_client(loop, srv, &r);
    cr_assert_eq(em_add_timer(loop, 0.02, close_from_timer, r, NULL), 0);
    th_run_until_count(loop, &U.unbinds, 1, 5);
    cr_assert_eq(r->closed, 1);
    cr_assert_eq(r->reason, 0);
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0);
    close(fd);
    finish(loop, srv);
}

static rec *victim;

static void close_victim_in_unbind(em_conn *conn, rec *r, int reason)
{
    (void)conn;
    (void)reason;
    if (!victim || r == victim)
        return;
    cr_assert_eq(victim->unbound, 0);
    cr_assert_eq(tclose(victim->conn, 0), 0);
    victim->closed = 1;
    cr_assert_eq(em_send_data(victim->conn, "x", 1), -ENOTCONN);
    cr_assert_eq(victim->unbound, 0, "unbind inside em_close_connection");
}

Test(unbind, close_inside_another_connections_unbind, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    victim = NULL;
    U.on_unbind = close_victim_in_unbind;
    em_server *srv = start_server(loop);
    rec *a, *b;
    int fa = accepted_client(loop, srv, &a);
    int fb = accepted_client(loop, srv, &b);
    cr_assert_neq(a, b);
    victim = b;

    cr_assert_eq(tclose(a->conn, 0), 0);
    cr_assert_eq(U.unbinds, 0, "unbind inside em_close_connection");
    th_run_until_count(loop, &U.unbinds, 2, 5);
    cr_assert_eq(a->seq, 1);
    cr_assert_eq(b->seq, 2);
    cr_assert_eq(a->reason, 0);
    cr_assert_eq(b->reason, 0);
    cr_assert_eq(th_pump_eof(loop, fa, 5), 0);
    cr_assert_eq(th_pump_eof(loop, fb, 5), 0);
    close(fa);
    close(fb);
    finish(loop, srv);
}

/* Whoever reads first closes every other server connection, then itself. */
static void close_all_in_receive(em_conn *conn, rec *r, const char *d, size_t n)
{
    (void)d;
    (void)n;
    for (int i = 0; i < U.nrec; i++) {
        rec *o = &U.recs[i];
        if (o == r || !o->server || o->closed || o->unbound)
            continue;
        o->closed = 1;
        cr_assert_eq(tclose(o->conn, 0), 0);
    }
    r->closed = 1;
    cr_assert_eq(tclose(conn, 0), 0);
}

static int task_runs;

static void count_task(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    task_runs++;
}

/* Both sockets readable in the same batch; with_task puts an em_schedule
 * wakeup between them, whose task runs in the middle of that batch. */
static void close_other_from_receive(int with_task)
{
    em_loop *loop = th_loop();
    u_reset(loop);
    task_runs = 0;
    U.on_receive = close_all_in_receive;
    em_server *srv = start_server(loop);
    enum { N = 3 };
    int fds[N];
    rec *recs[N];
    for (int i = 0; i < N; i++)
        fds[i] = accepted_client(loop, srv, &recs[i]);

    for (int i = 0; i < N; i++) {
        th_send_all(fds[i], "data", 4);
        if (with_task && i == 0)
            cr_assert_eq(em_schedule(loop, count_task, NULL), 0);
    }
    th_run_until_count(loop, &U.unbinds, N, 5);

    int receives = 0;
    for (int i = 0; i < N; i++) {
        receives += recs[i]->receives;
        cr_assert_eq(recs[i]->reason, 0, "unbind %s",
                     em_err_name(recs[i]->reason));
    }
    cr_assert_eq(receives, 1, "%d receive_data calls", receives);
    if (with_task)
        cr_assert_eq(task_runs, 1);
    for (int i = 0; i < N; i++) {
        int err = th_pump_eof(loop, fds[i], 5);
        cr_assert(err == 0 || err == -ECONNRESET, "client %d: %s", i,
                  em_err_name(err));
        close(fds[i]);
    }
    finish(loop, srv);
}

Test(unbind, close_of_b_from_a_receive_data, .timeout = TH_TIMEOUT(10))
{
    close_other_from_receive(0);
}

Test(unbind, close_of_b_from_a_receive_data_with_scheduled_task,
     .timeout = TH_TIMEOUT(10))
{
    close_other_from_receive(1);
}

Test(unbind, double_close_is_harmless, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    u_reset(loop);
    em_server *srv = start_server(loop);
    cr_assert_eq(em_close_connection(NULL, 0), -EINVAL);
    cr_assert_eq(em_close_connection(NULL, 1), -EINVAL);

    static const int seqs[][4] = {
        {1, 1, 0, 0}, /* after writing twice, then upgraded twice */
        {0, 1, 0, 1}, /* immediate, then after writing */
        {0, 0, 0, 0},
    };
    for (int k = 0; k < 3; k++) {
        rec *r;
        int fd = accepted_client(loop, srv, &r);
        for (int j = 0; j < 4; j++)
            cr_assert_eq(tclose(r->conn, seqs[k][j]), 0, "seq %d close %d", k,
                         j);
        r->closed = 1;
        th_run_until_count(loop, &U.unbinds, k + 1, 5);
        cr_assert_eq(r->reason, 0);
        cr_assert_eq(th_pump_eof(loop, fd, 5), 0);
        close(fd);
    }
    finish(loop, srv);
}

/* ---- a peer vanishing mid-write -------------------------------------- */

static void send_pattern(em_conn *conn, size_t len)
{
    static uint8_t piece[64 * KiB];
    for (size_t off = 0; off < len; off += sizeof piece) {
        size_t n = len - off < sizeof piece ? len - off : sizeof piece;
        th_pat_fill(piece, off, n);
        cr_assert_eq(em_send_data(conn, piece, n), 0);
    }
}

Test(unbind, peer_vanishing_mid_write, .timeout = TH_TIMEOUT(20))
{
    /* A library write raising SIGPIPE would kill the test process. */
    signal(SIGPIPE, SIG_DFL);
    em_loop *loop = th_loop();
    u_reset(loop);
    em_server *srv = start_server(loop);
    rec *r1, *r2;
    int f1 = accepted_client(loop, srv, &r1);
    int f2 = accepted_client(loop, srv, &r2);

    send_pattern(r1->conn, 16 * MiB);
    send_pattern(r2->conn, 8 * MiB);
    cr_assert_gt(em_get_outbound_data_size(r1->conn), 8 * MiB);
    cr_assert_gt(em_get_outbound_data_size(r2->conn), 0);
    cr_assert_eq(tclose(r2->conn, 1), 0);

    /* Client 1 reads a little, then goes away with unread data: RST. */
    static uint8_t buf[64 * KiB];
    cr_assert_eq(th_pump_recv(loop, f1, buf, sizeof buf, 5), sizeof buf);
    close(f1);
    th_run_until_count(loop, &U.unbinds, 1, 5);
    cr_assert_eq(r1->unbound, 1);
    cr_assert(r1->reason == -EPIPE || r1->reason == -ECONNRESET, "unbind %s",
              em_err_name(r1->reason));

    /* Client 2 gets every byte, then EOF. */
    int err;
    size_t got = th_pump_pattern_eof(loop, f2, 0, 8 * MiB, &err, 10);
    cr_assert_eq(err, 0, "client 2: %s", em_err_name(err));
    cr_assert_eq(got, 8 * MiB, "client 2 got %zu bytes", got);
    th_run_until_count(loop, &U.unbinds, 2, 5);
    cr_assert_eq(r2->reason, 0, "unbind %s", em_err_name(r2->reason));
    close(f2);
    finish(loop, srv);
}
