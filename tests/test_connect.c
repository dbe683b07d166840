/*
 * test_connect.c - outbound TCP connections: em_connect to our own server
 * (post_init before completion, data queued in post_init, one
 * connection_completed), refused ports, host names resolved off-thread,
 * unresolvable names, the pending-connect timeout, em_bind_connect,
 * em_reconnect inside and outside unbind, em_stop while connecting, and
 * argument checks. Everything stays on loopback: a connect is made to hang
 * by filling a listener's accept queue, never by an unroutable address.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h"

/* ---- helpers --------------------------------------------------------- */

static int sockaddr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return -1;
}

/* A listener that never accepts, with its accept queue already full, so
 * that the next connect to it stays in SYN_SENT. */
struct full_listener {
    int listen_fd;
    int filler_fd;
    int port;
};

static void full_listener_open(struct full_listener *fl)
{
    fl->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fl->listen_fd, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fl->listen_fd, (struct sockaddr *)&sin, sizeof sin), 0);
    cr_assert_eq(listen(fl->listen_fd, 0), 0);
    socklen_t len = sizeof sin;
    cr_assert_eq(getsockname(fl->listen_fd, (struct sockaddr *)&sin, &len), 0);
    fl->port = ntohs(sin.sin_port);

    /* Backlog 0 holds one completed connection: take that slot. */
    fl->filler_fd =
        socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert_geq(fl->filler_fd, 0);
    int rc = connect(fl->filler_fd, (struct sockaddr *)&sin, sizeof sin);
    cr_assert(rc == 0 || errno == EINPROGRESS);
    struct pollfd p = {.fd = fl->filler_fd, .events = POLLOUT};
    cr_assert_eq(poll(&p, 1, 2000), 1, "filler connect did not complete");
}

static void full_listener_close(struct full_listener *fl)
{
    close(fl->filler_fd);
    close(fl->listen_fd);
}

/* ---- the client ------------------------------------------------------ */

struct cli {
    em_loop *loop;
    const char *hello; /* sent from post_init when set */
    int close_in_post_init;
    double connect_timeout; /* set from post_init when > 0 */
    int post_inits;
    int connecting_in_post_init;
    int queued_in_post_init;
    double default_timeout;
    em_conn *post_init_conn;
    int completed;
    int unbinds;
    int reason;
    int unbind_inside_call; /* unbind ran while em_connect was running */
    int in_call;
    int local_port;
    char got[256];
    size_t got_len;
    double unbind_at;
};

static void cli_post_init(em_conn *conn, void *arg)
{
    struct cli *c = arg;
    c->post_inits++;
    c->post_init_conn = conn;
    c->connecting_in_post_init = em_is_connecting(conn);
    c->default_timeout = em_get_pending_connect_timeout(conn);
    if (c->hello) {
        cr_assert_eq(em_send_data(conn, c->hello, strlen(c->hello)), 0);
        c->queued_in_post_init = (int)em_get_outbound_data_size(conn);
    }
    if (c->connect_timeout > 0)
        cr_assert_eq(em_set_pending_connect_timeout(conn, c->connect_timeout),
                     0);
    if (c->close_in_post_init)
        cr_assert_eq(em_close_connection(conn, 0), 0);
}

static void cli_completed(em_conn *conn)
{
    struct cli *c = em_conn_arg(conn);
    c->completed++;
    cr_assert_eq(em_is_connecting(conn), 0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (em_get_sockname(conn, (struct sockaddr *)&ss, &len) == 0)
        c->local_port = sockaddr_port(&ss);
}

static void cli_receive(em_conn *conn, const char *data, size_t len)
{
    struct cli *c = em_conn_arg(conn);
    cr_assert_leq(c->got_len + len, sizeof c->got);
    memcpy(c->got + c->got_len, data, len);
    c->got_len += len;
}

static void cli_unbind(em_conn *conn, int reason)
{
    struct cli *c = em_conn_arg(conn);
    c->unbinds++;
    c->reason = reason;
    c->unbind_at = th_now();
    if (c->in_call)
        c->unbind_inside_call++;
}

static const em_handler client_handler = {
    .post_init = cli_post_init,
    .connection_completed = cli_completed,
    .receive_data = cli_receive,
    .unbind = cli_unbind,
};

/* em_connect, noting whether any unbind ran inside it. */
static em_conn *cli_connect(struct cli *c, const char *host, int port)
{
    em_conn *conn = NULL;
    c->in_call = 1;
    int rc = em_connect(c->loop, host, port, &client_handler, c, &conn);
    c->in_call = 0;
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
    cr_assert_not_null(conn);
    cr_assert_eq(c->post_inits, 1, "post_init must run inside em_connect");
    cr_assert_eq(c->post_init_conn, conn);
    cr_assert_eq(c->unbind_inside_call, 0, "unbind ran inside em_connect");
    return conn;
}

/* ---- connecting to our own server ------------------------------------ */

Test(connect, post_init_data_and_completion_to_own_server,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    struct cli c = {.loop = loop, .hello = "hello from post_init"};
    em_conn *conn = cli_connect(&c, "127.0.0.1", th_listen_port(server));

    cr_assert_eq(c.connecting_in_post_init, 1);
    cr_assert_eq(c.queued_in_post_init, (int)strlen(c.hello),
                 "data sent while connecting must be queued");
    cr_assert_eq(c.completed, 0, "completed inside em_connect");
    cr_assert_eq(em_is_connecting(conn), 1);

    size_t want = strlen(c.hello);
    th_run_until_size(loop, &c.got_len, want, 5.0);
    cr_assert_eq(c.got_len, want);
    cr_assert_eq(memcmp(c.got, c.hello, want), 0);
    cr_assert_eq(c.completed, 1);
    cr_assert_eq(em_get_outbound_data_size(conn), 0);
    cr_assert_eq(s.accepted, 1);

    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until(loop, &c.unbinds, 5.0);
    th_run_until(loop, &s.unbinds, 5.0);
    cr_assert_eq(c.reason, 0);
    cr_assert_eq(s.last_reason, 0);
    cr_assert_eq(c.completed, 1, "connection_completed fired again");
    cr_assert_eq(c.unbinds, 1);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(connect, refused_port_unbinds_with_econnrefused, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct cli c = {.loop = loop};
    cli_connect(&c, "127.0.0.1", th_free_port());
    cr_assert_eq(c.connecting_in_post_init, 1);
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, -ECONNREFUSED, "reason %s", em_err_name(c.reason));
    cr_assert_eq(c.completed, 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(c.unbinds, 1);
    cr_assert_eq(em_connection_count(loop), 0);
    th_free_loop(loop);
}

Test(connect, close_in_post_init_never_connects, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    struct cli c = {.loop = loop, .close_in_post_init = 1};
    cli_connect(&c, "127.0.0.1", th_listen_port(server));
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, 0);
    cr_assert_eq(c.completed, 0);
    th_run_for(loop, 0.1);
    cr_assert_eq(s.accepted, 0, "a connection closed in post_init connected");
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- names ----------------------------------------------------------- */

Test(connect, host_name_localhost_is_resolved, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    struct cli c = {.loop = loop, .hello = "by name"};
    em_conn *conn = cli_connect(&c, "localhost", th_listen_port(server));
    cr_assert_eq(c.connecting_in_post_init, 1);
    th_run_until(loop, &c.completed, 5.0);
    th_run_until_size(loop, &c.got_len, strlen(c.hello), 5.0);
    cr_assert_eq(memcmp(c.got, "by name", 7), 0);
    cr_assert_eq(em_close_connection(conn, 1), 0);
    th_run_until(loop, &c.unbinds, 5.0);
    th_run_until(loop, &s.unbinds, 5.0);
    cr_assert_eq(c.reason, 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(connect, unresolvable_name_unbinds_promptly, .timeout = TH_TIMEOUT(15))
{
    em_loop *loop = th_loop();
    struct cli c = {.loop = loop};
    double t0 = th_now();
    cli_connect(&c, "no-such-host.invalid", 80);
    cr_assert_eq(c.connecting_in_post_init, 1);
    th_run_until(loop, &c.unbinds, 10.0);
    cr_assert_lt(c.reason, 0, "reason %d", c.reason);
    cr_assert_neq(c.reason, -ETIMEDOUT, "the resolver took the whole 20 s?");
    cr_assert_eq(c.completed, 0);
    cr_assert_lt(c.unbind_at - t0, TH_TIMEOUT(10.0));
    th_free_loop(loop);
}

Test(connect, ipv6_loopback_literal, .timeout = TH_TIMEOUT(10))
{
    if (!th_have_ipv6_loopback())
        cr_skip("no IPv6 loopback here");

    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = NULL;
    cr_assert_eq(
        em_start_server(loop, "::1", 0, &th_echo_handler, &s, NULL, &server),
        0);
    struct cli c = {.loop = loop, .hello = "v6"};
    em_conn *conn = cli_connect(&c, "::1", th_listen_port(server));
    th_run_until(loop, &c.completed, 5.0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    cr_assert_eq(em_get_peername(conn, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(ss.ss_family, AF_INET6);
    cr_assert_eq(em_close_connection(conn, 1), 0);
    th_run_until(loop, &c.unbinds, 5.0);
    th_run_until(loop, &s.unbinds, 5.0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- pending-connect timeout ----------------------------------------- */

Test(connect, pending_connect_timeout_fires_etimedout,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct full_listener fl;
    full_listener_open(&fl);
    struct cli c = {.loop = loop};
    em_conn *conn = cli_connect(&c, "127.0.0.1", fl.port);
    cr_assert_eq(c.default_timeout, 20.0);
    cr_assert_eq(em_get_pending_connect_timeout(conn), 20.0);

    /* Armed from the loop's cached time: make that "now" (>= t0). */
    double t0 = th_now();
    em_update_time(loop);
    cr_assert_eq(em_set_pending_connect_timeout(conn, 0.3), 0);
    cr_assert_eq(em_get_pending_connect_timeout(conn), 0.3);
    th_run_for(loop, 0.1);
    cr_assert_eq(c.unbinds, 0);
    cr_assert_eq(em_is_connecting(conn), 1,
                 "the connect did not hang: the test proves nothing");

    th_run_until(loop, &c.unbinds, 5.0);
    double elapsed = c.unbind_at - t0;
    cr_assert_eq(c.reason, -ETIMEDOUT, "reason %s", em_err_name(c.reason));
    cr_assert_eq(c.completed, 0);
    cr_assert_geq(elapsed, 0.29, "timed out early: %.3f s", elapsed);
    cr_assert_lt(elapsed, TH_TIMEOUT(1.0), "timed out late: %.3f s", elapsed);
    full_listener_close(&fl);
    th_free_loop(loop);
}

Test(connect, connect_timeout_set_in_post_init_and_zero_disables,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct full_listener fl;
    full_listener_open(&fl);

    /* Set before the attempt starts (in post_init). */
    struct cli c = {.loop = loop, .connect_timeout = 0.2};
    double t0 = th_now();
    em_update_time(loop);
    cli_connect(&c, "127.0.0.1", fl.port);
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, -ETIMEDOUT);
    cr_assert_geq(c.unbind_at - t0, 0.19);
    cr_assert_lt(c.unbind_at - t0, TH_TIMEOUT(1.0));

    /* 0 = never: still connecting well after a short timeout would fire. */
    struct cli c2 = {.loop = loop};
    em_conn *conn = cli_connect(&c2, "127.0.0.1", fl.port);
    cr_assert_eq(em_set_pending_connect_timeout(conn, 0), 0);
    cr_assert_eq(em_get_pending_connect_timeout(conn), 0.0);
    th_run_for(loop, 0.4);
    cr_assert_eq(c2.unbinds, 0);
    cr_assert_eq(em_is_connecting(conn), 1);
    cr_assert_eq(em_set_pending_connect_timeout(conn, -1.0), -EINVAL);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until(loop, &c2.unbinds, 5.0);
    cr_assert_eq(c2.reason, 0);
    full_listener_close(&fl);
    th_free_loop(loop);
}

/* ---- em_stop while connecting ---------------------------------------- */

static int reconnect_in_cancel_rc;

static void cancel_unbind(em_conn *conn, int reason)
{
    cli_unbind(conn, reason);
    reconnect_in_cancel_rc = em_reconnect(conn, "127.0.0.1", 9);
}

static const em_handler cancel_handler = {
    .post_init = cli_post_init,
    .connection_completed = cli_completed,
    .unbind = cancel_unbind,
};

Test(connect, stop_while_connecting_unbinds_ecanceled,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct full_listener fl;
    full_listener_open(&fl);
    struct cli c = {.loop = loop};
    em_conn *conn = NULL;
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", fl.port, &cancel_handler, &c, &conn), 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(em_is_connecting(conn), 1);

    /* And one still resolving its name. */
    struct cli r = {.loop = loop};
    cr_assert_eq(
        em_connect(loop, "localhost", fl.port, &cancel_handler, &r, NULL), 0);

    reconnect_in_cancel_rc = 0;
    cr_assert_eq(em_stop(loop), 0);
    cr_assert_eq(em_run_once(loop, 0), 1);
    cr_assert_eq(c.unbinds, 1);
    cr_assert_eq(c.reason, -ECANCELED, "reason %s", em_err_name(c.reason));
    cr_assert_eq(r.unbinds, 1);
    cr_assert_eq(r.reason, -ECANCELED, "reason %s", em_err_name(r.reason));
    cr_assert_eq(c.completed + r.completed, 0);
    cr_assert_eq(reconnect_in_cancel_rc, -ECANCELED);
    cr_assert_eq(em_connection_count(loop), 0);
    full_listener_close(&fl);
    th_free_loop(loop);
}

/* ---- em_bind_connect ------------------------------------------------- */

Test(connect, bind_connect_uses_the_local_port, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int local = th_free_port();
    struct cli c = {.loop = loop};
    em_conn *conn = NULL;
    cr_assert_eq(em_bind_connect(loop, "127.0.0.1", local, "127.0.0.1",
                                 th_listen_port(server), &client_handler, &c,
                                 &conn),
                 0);
    cr_assert_eq(c.post_inits, 1);
    th_run_until(loop, &c.completed, 5.0);
    th_run_until(loop, &s.accepted, 5.0);
    cr_assert_eq(c.local_port, local, "client sockname port");
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    cr_assert_eq(em_get_peername(s.conn, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(sockaddr_port(&ss), local, "server sees peer port %d",
                 sockaddr_port(&ss));

    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until(loop, &c.unbinds, 5.0);
    th_run_until(loop, &s.unbinds, 5.0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(connect, bind_connect_to_a_taken_port_fails_in_unbind,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);
    struct cli c = {.loop = loop};
    c.in_call = 1;
    cr_assert_eq(em_bind_connect(loop, "127.0.0.1", port, "127.0.0.1", port,
                                 &client_handler, &c, NULL),
                 0);
    c.in_call = 0;
    cr_assert_eq(c.unbind_inside_call, 0);
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, -EADDRINUSE, "reason %s", em_err_name(c.reason));
    cr_assert_eq(c.completed, 0);

    /* Bind host only ("any port"), and the argument checks. */
    struct cli c2 = {.loop = loop};
    em_conn *conn = NULL;
    cr_assert_eq(em_bind_connect(loop, "127.0.0.1", 0, "127.0.0.1", port,
                                 &client_handler, &c2, &conn),
                 0);
    th_run_until(loop, &c2.completed, 5.0);
    cr_assert_gt(c2.local_port, 0);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until(loop, &c2.unbinds, 5.0);
    th_run_until(loop, &s.unbinds, 5.0);
    cr_assert_eq(em_bind_connect(loop, "127.0.0.1", 70000, "127.0.0.1", port,
                                 &client_handler, &c2, NULL),
                 -EINVAL);
    cr_assert_eq(em_bind_connect(loop, "127.0.0.1", -1, "127.0.0.1", port,
                                 &client_handler, &c2, NULL),
                 -EINVAL);
    cr_assert_eq(c2.post_inits, 1, "post_init ran for a rejected call");
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* A connect that fails inside the call (here: bind to a taken port) is
 * reported next turn; changing its timeout meanwhile must not lose it. */
Test(connect, sync_failure_survives_a_timeout_change, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);
    const double timeouts[] = {0.0, 3.0};
    for (int i = 0; i < 2; i++) {
        struct cli c = {.loop = loop};
        em_conn *conn = NULL;
        cr_assert_eq(em_bind_connect(loop, "127.0.0.1", port, "127.0.0.1", port,
                                     &client_handler, &c, &conn),
                     0);
        cr_assert_eq(c.unbinds, 0);
        cr_assert_eq(em_set_pending_connect_timeout(conn, timeouts[i]), 0);
        double t0 = th_now();
        th_run_until(loop, &c.unbinds, 5.0);
        cr_assert_eq(c.reason, -EADDRINUSE, "timeout %.0f: reason %s",
                     timeouts[i], em_err_name(c.reason));
        cr_assert_lt(th_now() - t0, TH_TIMEOUT(1.0),
                     "the failure waited for a timeout");
    }
    cr_assert_eq(em_connection_count(loop), 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- em_reconnect ---------------------------------------------------- */

struct rc_state {
    int magic;
    int unbinds;
};

struct rc_world {
    int port;
    int post_inits;
    int completed;
    int unbinds;
    int reasons[8];
    int reconnect_rc;
    int again_rc;
    int bad_port_rc;
    int isconn_rc;
    int state_lost;
    int max_reconnects;
    em_conn *first;
    int same_conn;
};

static void rc_post_init(em_conn *conn, void *arg)
{
    struct rc_world *w = arg;
    struct rc_state *st = em_conn_state(conn);
    st->magic = 0x5eed;
    w->first = conn;
    w->post_inits++;
}

static void rc_completed(em_conn *conn)
{
    struct rc_world *w = em_conn_arg(conn);
    w->completed++;
    if (conn == w->first)
        w->same_conn++;
    if (w->completed == 1)
        w->isconn_rc = em_reconnect(conn, "127.0.0.1", w->port);
    em_close_connection(conn, 0);
}

static void rc_unbind(em_conn *conn, int reason)
{
    struct rc_world *w = em_conn_arg(conn);
    struct rc_state *st = em_conn_state(conn);
    if (w->unbinds < 8)
        w->reasons[w->unbinds] = reason;
    w->unbinds++;
    st->unbinds++;
    if (st->magic != 0x5eed || st->unbinds != w->unbinds)
        w->state_lost++;
    if (w->unbinds <= w->max_reconnects) {
        w->bad_port_rc = em_reconnect(conn, "127.0.0.1", 0);
        w->reconnect_rc = em_reconnect(conn, "127.0.0.1", w->port);
        w->again_rc = em_reconnect(conn, "127.0.0.1", w->port);
    }
}

static const em_handler rc_handler = {
    .state_size = sizeof(struct rc_state),
    .post_init = rc_post_init,
    .connection_completed = rc_completed,
    .unbind = rc_unbind,
};

Test(connect, reconnect_in_unbind_keeps_state, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    struct rc_world w = {.port = th_listen_port(server), .max_reconnects = 1};
    cr_assert_eq(em_connect(loop, "127.0.0.1", w.port, &rc_handler, &w, NULL),
                 0);
    th_run_until_count(loop, &w.unbinds, 2, 5.0);
    th_run_until_count(loop, &s.unbinds, 2, 5.0);
    th_run_for(loop, 0.05);

    cr_assert_eq(w.isconn_rc, -EISCONN, "em_reconnect outside unbind");
    cr_assert_eq(w.bad_port_rc, -EINVAL);
    cr_assert_eq(w.reconnect_rc, 0);
    cr_assert_lt(w.again_rc, 0, "second em_reconnect in one unbind");
    cr_assert_eq(w.post_inits, 1, "post_init must not run again");
    cr_assert_eq(w.completed, 2);
    cr_assert_eq(w.same_conn, 2, "reconnect must keep the em_conn");
    cr_assert_eq(w.unbinds, 2);
    cr_assert_eq(w.reasons[0], 0);
    cr_assert_eq(w.reasons[1], 0);
    cr_assert_eq(w.state_lost, 0, "state not preserved across reconnect");
    cr_assert_eq(s.accepted, 2);
    cr_assert_eq(em_connection_count(loop), 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(connect, reconnect_to_a_dead_port_retries_each_turn,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct rc_world w = {.port = th_free_port(), .max_reconnects = 4};
    cr_assert_eq(em_connect(loop, "127.0.0.1", w.port, &rc_handler, &w, NULL),
                 0);
    th_run_until_count(loop, &w.unbinds, 5, 5.0);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.unbinds, 5, "4 reconnects give 5 unbinds");
    for (int i = 0; i < 5; i++)
        cr_assert_eq(w.reasons[i], -ECONNREFUSED, "unbind %d: %s", i,
                     em_err_name(w.reasons[i]));
    cr_assert_eq(w.completed, 0);
    cr_assert_eq(w.state_lost, 0);
    cr_assert_eq(em_connection_count(loop), 0);
    th_free_loop(loop);
}

/* ---- arguments ------------------------------------------------------- */

Test(connect, bad_arguments_are_einval, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct cli c = {.loop = loop};
    em_conn *out = (em_conn *)&c;
    cr_assert_eq(em_connect(NULL, "127.0.0.1", 80, &client_handler, &c, &out),
                 -EINVAL);
    cr_assert_null(out);
    cr_assert_eq(em_connect(loop, "127.0.0.1", 80, NULL, &c, NULL), -EINVAL);
    cr_assert_eq(em_connect(loop, NULL, 80, &client_handler, &c, NULL),
                 -EINVAL);
    cr_assert_eq(em_connect(loop, "", 80, &client_handler, &c, NULL), -EINVAL);
    cr_assert_eq(em_connect(loop, "127.0.0.1", 0, &client_handler, &c, NULL),
                 -EINVAL);
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", 70000, &client_handler, &c, NULL),
        -EINVAL);
    cr_assert_eq(c.post_inits, 0, "post_init ran for a rejected call");
    cr_assert_eq(em_connection_count(loop), 0);
    cr_assert_eq(em_reconnect(NULL, "127.0.0.1", 80), -EINVAL);
    cr_assert_eq(em_is_connecting(NULL), 0);
    cr_assert_eq(em_get_pending_connect_timeout(NULL), 0.0);
    cr_assert_eq(em_set_pending_connect_timeout(NULL, 1.0), -EINVAL);
    th_free_loop(loop);
}

/* ---- every resolved address, in order --------------------------------- */

/* A one-address list for 127.0.0.1:port from getaddrinfo itself, so that
 * chaining two with ai_next still frees correctly with freeaddrinfo. */
static struct addrinfo *loopback_address(int port)
{
    struct addrinfo hints = {.ai_family = AF_INET,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo *ai = NULL;
    cr_assert_eq(getaddrinfo("127.0.0.1", service, &hints, &ai), 0);
    cr_assert_null(ai->ai_next);
    return ai;
}

/* This machine's names resolve to one address each, so the resolver's
 * answer is made by hand: a refused address first, the server second. The
 * connect must fall through to the second and complete. */
Test(connect, every_resolved_address_is_tried_in_order,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    struct cli c = {.loop = loop, .hello = "second address"};
    em_conn *conn = cli_connect(&c, "name.invalid", th_listen_port(server));
    cr_assert_not_null(conn->connect);

    struct addrinfo *list = loopback_address(th_free_port());
    list->ai_next = loopback_address(th_listen_port(server));
    em__resolve_cancel(loop, conn->connect->job); /* stand in for it */
    conn->connect->job = NULL;
    em__connect_on_resolved(loop, conn, list, 0);

    th_run_until(loop, &c.completed, 5.0);
    th_run_until_size(loop, &c.got_len, strlen(c.hello), 5.0);
    cr_assert_eq(memcmp(c.got, c.hello, strlen(c.hello)), 0);
    cr_assert_eq(c.unbinds, 0);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, 0);
    th_run_until(loop, &s.unbinds, 5.0);
    th_stop_and_free(loop, server);
}

Test(connect, last_address_error_is_the_unbind_reason,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct cli c = {.loop = loop};
    em_conn *conn = cli_connect(&c, "name.invalid", 9);
    struct addrinfo *list = loopback_address(th_free_port());
    list->ai_next = loopback_address(th_free_port());
    em__resolve_cancel(loop, conn->connect->job);
    conn->connect->job = NULL;
    em__connect_on_resolved(loop, conn, list, 0);
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, -ECONNREFUSED);
    cr_assert_eq(c.completed, 0);
    th_free_loop(loop);
}
