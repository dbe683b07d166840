/*
 * test_server.c - TCP listeners: port 0, em_server_port / em_server_sockname,
 * EADDRINUSE and EACCES leaving nothing open, em_stop_server freeing the
 * port at once (also from inside a callback), host names and IPv6, bad
 * arguments, the backlog and reuseport options, accepted connections
 * outliving their server, the arg and the zeroed per-connection state.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* ---- shared helpers -------------------------------------------------- */

/* Most servers here are plain echo servers (th_echo_handler with a
 * th_echo); srv_handler also records the arg post_init gets and can stop a
 * server from post_init. */
struct srv {
    th_echo echo; /* first: the th_echo callbacks share the arg */
    em_loop *loop;
    void *post_init_arg;
    int bad_arg;
    em_server *stop_in_post_init;
    int stop_rc;
};

static void srv_post_init(em_conn *conn, void *arg)
{
    struct srv *s = arg;
    s->post_init_arg = arg;
    if (em_conn_arg(conn) != arg || em_conn_loop(conn) != s->loop)
        s->bad_arg++;
    th_echo_post_init(conn, arg);
    if (s->stop_in_post_init) {
        s->stop_rc = em_stop_server(s->stop_in_post_init);
        s->stop_in_post_init = NULL;
    }
}

static const em_handler srv_handler = {
    .post_init = srv_post_init,
    .receive_data = th_echo_receive,
    .unbind = th_echo_unbind,
};

/* ---- port 0, sockname ------------------------------------------------ */

Test(server, port_zero_gives_a_real_port, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);

    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    cr_assert_eq(sin->sin_family, AF_INET);
    cr_assert_eq(ntohs(sin->sin_port), port);
    cr_assert_eq(sin->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

    /* A short buffer gets a prefix, *len the full length. */
    struct sockaddr small;
    socklen_t small_len = 4;
    cr_assert_eq(em_server_sockname(server, &small, &small_len), 0);
    cr_assert_eq(small_len, sizeof(struct sockaddr_in));
    cr_assert_eq(small.sa_family, AF_INET);

    int fd = th_client_connect(port);
    th_expect_echo(loop, fd, "port zero");
    cr_assert_eq(s.accepted, 1);
    th_close_clients(loop, &s, &fd, 1);
    cr_assert_eq(s.last_reason, 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(server, null_host_listens_on_all_ipv4_addresses, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = NULL;
    cr_assert_eq(
        em_start_server(loop, NULL, 0, &th_echo_handler, &s, NULL, &server), 0);
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&sin, &len), 0);
    cr_assert_eq(sin.sin_family, AF_INET);
    cr_assert_eq(sin.sin_addr.s_addr, htonl(INADDR_ANY));
    int fd = th_client_connect(th_listen_port(server));
    th_expect_echo(loop, fd, "any");
    th_close_clients(loop, &s, &fd, 1);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- failures leave nothing open ------------------------------------- */

Test(server, same_port_twice_is_eaddrinuse_and_leaks_nothing,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *first = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(first);

    int before = th_count_fds();
    em_server *second = (em_server *)&s; /* must be reset to NULL */
    cr_assert_eq(em_start_server(loop, "127.0.0.1", port, &th_echo_handler, &s,
                                 NULL, &second),
                 -EADDRINUSE);
    cr_assert_null(second);
    /* 0.0.0.0 overlaps 127.0.0.1 on the same port, too. */
    cr_assert_eq(
        em_start_server(loop, NULL, port, &th_echo_handler, &s, NULL, NULL),
        -EADDRINUSE);
    cr_assert_eq(th_count_fds(), before, "a failed start left a socket");

    /* The first server is unharmed. */
    int fd = th_client_connect(port);
    th_expect_echo(loop, fd, "still here");
    th_close_clients(loop, &s, &fd, 1);
    cr_assert_eq(em_stop_server(first), 0);
    th_free_loop(loop);
}

static int unprivileged_port_start(void)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_unprivileged_port_start", "r");
    int start = 1024;
    if (f) {
        if (fscanf(f, "%d", &start) != 1)
            start = 1024;
        fclose(f);
    }
    return start;
}

Test(server, privileged_port_is_eacces_when_unprivileged,
     .timeout = TH_TIMEOUT(10))
{
    if (unprivileged_port_start() <= 80)
        cr_skip("port 80 is not privileged on this machine");
    /* This worker process is ours alone: drop root for good. */
    if (geteuid() == 0 && setresuid(65534, 65534, 65534) < 0)
        cr_skip("cannot drop privileges: %s", strerror(errno));
    cr_assert_neq(geteuid(), 0);

    em_loop *loop = th_loop();
    th_echo s = {0};
    int before = th_count_fds();
    em_server *server = (em_server *)&s;
    cr_assert_eq(em_start_server(loop, "127.0.0.1", 80, &th_echo_handler, &s,
                                 NULL, &server),
                 -EACCES);
    cr_assert_null(server);
    cr_assert_eq(
        em_start_server(loop, NULL, 80, &th_echo_handler, &s, NULL, NULL),
        -EACCES);
    cr_assert_eq(th_count_fds(), before);
    /* Unprivileged ports still work. */
    server = th_start_server(loop, &th_echo_handler, &s);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(server, bad_arguments_are_rejected, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    int before = th_count_fds();
    em_server *out = (em_server *)&s;
    cr_assert_eq(em_start_server(loop, "127.0.0.1", 70000, &th_echo_handler, &s,
                                 NULL, &out),
                 -EINVAL);
    cr_assert_null(out);
    cr_assert_eq(em_start_server(loop, "127.0.0.1", -1, &th_echo_handler, &s,
                                 NULL, NULL),
                 -EINVAL);
    cr_assert_eq(em_start_server(loop, "127.0.0.1", 0, NULL, &s, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(
        em_start_server(NULL, "127.0.0.1", 0, &th_echo_handler, &s, NULL, NULL),
        -EINVAL);
    em_server_opts bad_backlog = {.backlog = -1};
    cr_assert_eq(em_start_server(loop, "127.0.0.1", 0, &th_echo_handler, &s,
                                 &bad_backlog, NULL),
                 -EINVAL);
    cr_assert_eq(em_start_server(loop, "no-such-host.invalid", 0,
                                 &th_echo_handler, &s, NULL, NULL),
                 -ENOENT);
    /* Not one of our addresses. */
    cr_assert_eq(
        em_start_server(loop, "192.0.2.1", 0, &th_echo_handler, &s, NULL, NULL),
        -EADDRNOTAVAIL);
    cr_assert_eq(th_count_fds(), before);

    cr_assert_eq(em_stop_server(NULL), -EINVAL);
    cr_assert_eq(em_server_port(NULL), -EINVAL);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    cr_assert_eq(em_server_sockname(NULL, (struct sockaddr *)&ss, &len),
                 -EINVAL);
    th_free_loop(loop);
}

/* ---- stopping -------------------------------------------------------- */

Test(server, stop_server_frees_the_port_at_once, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);
    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_eq(th_connect_errno(port), ECONNREFUSED);

    /* Same port again, no turn in between. */
    cr_assert_eq(em_start_server(loop, "127.0.0.1", port, &th_echo_handler, &s,
                                 NULL, &server),
                 0);
    cr_assert_eq(em_server_port(server), port);
    int fd = th_client_connect(port);
    th_expect_echo(loop, fd, "again");
    th_close_clients(loop, &s, &fd, 1);

    /* Stopped while the loop runs (freed after the batch): same. */
    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_eq(em_start_server(loop, "127.0.0.1", port, &th_echo_handler, &s,
                                 NULL, &server),
                 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_run_for(loop, 0.05);
    th_free_loop(loop);
}

Test(server, accepted_connections_survive_stop_server,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);
    int fds[2] = {th_client_connect(port), th_client_connect(port)};
    th_run_until_count(loop, &s.accepted, 2, 5.0);

    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_eq(th_connect_errno(port), ECONNREFUSED);
    cr_assert_eq(em_connection_count(loop), 2);
    th_expect_echo(loop, fds[0], "after stop 0");
    th_expect_echo(loop, fds[1], "after stop 1");
    cr_assert_eq(s.unbinds, 0);
    th_close_clients(loop, &s, fds, 2);
    cr_assert_eq(s.last_reason, 0);
    th_free_loop(loop);
}

Test(server, stop_server_from_post_init_stops_accepting,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct srv s = {.loop = loop};
    em_server *server = th_start_server(loop, &srv_handler, &s);
    int port = th_listen_port(server);
    /* Three clients wait in the backlog; the first accept stops the
     * server, so the same accept batch must not touch it again. */
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = th_client_connect(port);
    s.stop_in_post_init = server;
    th_run_until(loop, &s.echo.accepted, 5.0);
    th_run_for(loop, 0.1);
    cr_assert_eq(s.stop_rc, 0);
    cr_assert_eq(s.echo.accepted, 1, "accepted after em_stop_server");
    cr_assert_eq(th_connect_errno(port), ECONNREFUSED);

    /* The two never accepted were reset with the listener. */
    for (int i = 1; i < 3; i++) {
        char c;
        ssize_t n = recv(fds[i], &c, 1, MSG_DONTWAIT);
        cr_assert(n == 0 || (n < 0 && errno == ECONNRESET),
                  "client %d: n=%zd %s", i, n, strerror(errno));
    }
    th_expect_echo(loop, fds[0], "the accepted one works");
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    th_run_until(loop, &s.echo.unbinds, 5.0);
    th_run_for(loop, 0.05);
    cr_assert_eq(s.echo.unbinds, 1);
    th_free_loop(loop);
}

/* ---- names and IPv6 -------------------------------------------------- */

/* Connects a blocking socket to the server's own address family. */
static int connect_to_sockname(em_server *server)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&ss, &len), 0);
    return th_client_connect_addr((struct sockaddr *)&ss, len);
}

Test(server, host_name_localhost_works, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = NULL;
    cr_assert_eq(em_start_server(loop, "localhost", 0, &th_echo_handler, &s,
                                 NULL, &server),
                 0);
    th_listen_port(server);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&ss, &len), 0);
    if (ss.ss_family == AF_INET)
        cr_assert_eq(((struct sockaddr_in *)&ss)->sin_addr.s_addr,
                     htonl(INADDR_LOOPBACK));
    else
        cr_assert_eq(ss.ss_family, AF_INET6);
    int fd = connect_to_sockname(server);
    th_expect_echo(loop, fd, "by name");
    th_close_clients(loop, &s, &fd, 1);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(server, ipv6_loopback_literal, .timeout = TH_TIMEOUT(10))
{
    if (!th_have_ipv6_loopback())
        cr_skip("no IPv6 loopback here");
    em_loop *loop = th_loop();
    th_echo s = {0};
    const char *hosts[] = {"::1", "[::1]"};
    for (int i = 0; i < 2; i++) {
        em_server *server = NULL;
        cr_assert_eq(em_start_server(loop, hosts[i], 0, &th_echo_handler, &s,
                                     NULL, &server),
                     0, "%s", hosts[i]);
        th_listen_port(server);
        struct sockaddr_in6 sin6;
        socklen_t len = sizeof sin6;
        cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&sin6, &len),
                     0);
        cr_assert_eq(sin6.sin6_family, AF_INET6);
        cr_assert(IN6_IS_ADDR_LOOPBACK(&sin6.sin6_addr));
        cr_assert_eq(ntohs(sin6.sin6_port), em_server_port(server));
        int fd = connect_to_sockname(server);
        th_expect_echo(loop, fd, "over IPv6");
        th_close_clients(loop, &s, &fd, 1);
        cr_assert_eq(em_stop_server(server), 0);
    }
    th_free_loop(loop);
}

/* ---- options --------------------------------------------------------- */

/* Opens n non-blocking connects to port and returns how many completed
 * within wait_ms each, with the loop not running (nobody accepts). */
static int connects_completing(int port, int *fds, int n, int wait_ms)
{
    int done = 0;
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert_geq(fds[i], 0);
        int rc = connect(fds[i], (struct sockaddr *)&sin, sizeof sin);
        cr_assert(rc == 0 || errno == EINPROGRESS, "connect: %s",
                  strerror(errno));
        struct pollfd p = {.fd = fds[i], .events = POLLOUT};
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (rc == 0 ||
            (poll(&p, 1, wait_ms) == 1 &&
             getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 &&
             soerr == 0))
            done++;
    }
    return done;
}

#define BACKLOG_CLIENTS 6

Test(server, backlog_option_bounds_the_accept_queue, .timeout = TH_TIMEOUT(15))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    int fds[BACKLOG_CLIENTS];

    /* backlog 1: Linux queues backlog + 1 completed connections. */
    em_server_opts small = {.backlog = 1};
    em_server *server = NULL;
    cr_assert_eq(em_start_server(loop, "127.0.0.1", 0, &th_echo_handler, &s,
                                 &small, &server),
                 0);
    int done =
        connects_completing(th_listen_port(server), fds, BACKLOG_CLIENTS, 100);
    cr_assert_geq(done, 1);
    cr_assert_leq(done, 2, "%d connects completed with backlog 1", done);
    th_run_until_count(loop, &s.accepted, done, 5.0);
    for (int i = 0; i < BACKLOG_CLIENTS; i++)
        close(fds[i]);
    cr_assert_eq(em_stop_server(server), 0);
    th_run_until_count(loop, &s.unbinds, done, 5.0);

    /* The default (SOMAXCONN) takes all of them. */
    th_echo s2 = {0};
    server = th_start_server(loop, &th_echo_handler, &s2);
    done =
        connects_completing(th_listen_port(server), fds, BACKLOG_CLIENTS, 1000);
    cr_assert_eq(done, BACKLOG_CLIENTS);
    th_run_until_count(loop, &s2.accepted, BACKLOG_CLIENTS, 5.0);
    th_close_clients(loop, &s2, fds, BACKLOG_CLIENTS);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

Test(server, reuseport_lets_two_servers_share_a_port, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server_opts opts = {.reuseport = 1};
    em_server *a = NULL, *b = NULL;
    cr_assert_eq(
        em_start_server(loop, "127.0.0.1", 0, &th_echo_handler, &s, &opts, &a),
        0);
    int port = th_listen_port(a);
    cr_assert_eq(em_start_server(loop, "127.0.0.1", port, &th_echo_handler, &s,
                                 &opts, &b),
                 0, "second SO_REUSEPORT listener refused");
    cr_assert_eq(em_server_port(b), port);
    /* Without the option the port stays taken. */
    cr_assert_eq(em_start_server(loop, "127.0.0.1", port, &th_echo_handler, &s,
                                 NULL, NULL),
                 -EADDRINUSE);

    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = th_client_connect(port);
    th_run_until_count(loop, &s.accepted, 8, 5.0);
    th_expect_echo(loop, fds[7], "shared");
    th_close_clients(loop, &s, fds, 8);
    cr_assert_eq(em_stop_server(a), 0);
    /* b alone still serves the port. */
    int fd = th_client_connect(port);
    th_expect_echo(loop, fd, "b");
    th_close_clients(loop, &s, &fd, 1);
    cr_assert_eq(em_stop_server(b), 0);
    th_free_loop(loop);
}

/* ---- arg and state --------------------------------------------------- */

Test(server, arg_reaches_post_init, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct srv s = {.loop = loop};
    em_server *server = th_start_server(loop, &srv_handler, &s);
    int fd =
        th_connect_accepted(loop, th_listen_port(server), &s.echo.accepted);
    cr_assert_eq(s.post_init_arg, &s);
    cr_assert_eq(s.bad_arg, 0, "em_conn_arg/em_conn_loop disagree");
    th_close_clients(loop, &s.echo, &fd, 1);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

#define STATE_BYTES 200

struct state_world {
    int next_id;
    int accepted;
    int checked;
    int unbinds;
    int not_zeroed;
    int misaligned;
    int mixed_up;
};

static int state_intact(const unsigned char *state, unsigned char id)
{
    for (size_t i = 0; i < STATE_BYTES; i++)
        if (state[i] != id)
            return 0;
    return 1;
}

static void state_post_init(em_conn *conn, void *arg)
{
    struct state_world *w = arg;
    unsigned char *state = em_conn_state(conn);
    cr_assert_not_null(state);
    for (size_t i = 0; i < STATE_BYTES; i++)
        if (state[i] != 0)
            w->not_zeroed++;
    if ((uintptr_t)state % _Alignof(max_align_t) != 0)
        w->misaligned++;
    memset(state, ++w->next_id, STATE_BYTES);
    w->accepted++;
}

static void state_receive(em_conn *conn, const char *data, size_t len)
{
    struct state_world *w = em_conn_arg(conn);
    unsigned char *state = em_conn_state(conn);
    /* Each client sends its connection number: the state must match. */
    if (len < 1 || !state_intact(state, state[0]) ||
        state[0] != (unsigned char)data[0])
        w->mixed_up++;
    w->checked++;
    em_send_data(conn, data, len);
}

static void state_unbind(em_conn *conn, int reason)
{
    (void)reason;
    struct state_world *w = em_conn_arg(conn);
    unsigned char *state = em_conn_state(conn);
    if (!state_intact(state, state[0]))
        w->mixed_up++;
    w->unbinds++;
}

static const em_handler state_handler = {
    .state_size = STATE_BYTES,
    .post_init = state_post_init,
    .receive_data = state_receive,
    .unbind = state_unbind,
};

Test(server, state_is_zeroed_and_per_connection, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct state_world w = {0};
    em_server *server = th_start_server(loop, &state_handler, &w);
    int port = th_listen_port(server);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = th_client_connect(port);
        th_run_until_count(loop, &w.accepted, i + 1, 5.0);
    }
    /* Connection i+1 was accepted i-th: its state is filled with i+1. */
    for (int i = 2; i >= 0; i--) {
        char id = (char)(i + 1), back;
        th_send_all(fds[i], &id, 1);
        cr_assert_eq(th_pump_recv(loop, fds[i], &back, 1, 5.0), 1);
        cr_assert_eq(back, id);
    }
    cr_assert_eq(w.checked, 3);
    cr_assert_eq(w.not_zeroed, 0, "state not zeroed");
    cr_assert_eq(w.misaligned, 0, "state not aligned for max_align_t");
    cr_assert_eq(w.mixed_up, 0, "states shared between connections");
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    th_run_until_count(loop, &w.unbinds, 3, 5.0);
    cr_assert_eq(w.mixed_up, 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

static em_conn *stateless_conn;
static void stateless_post_init(em_conn *conn, void *arg)
{
    int *accepted = arg;
    cr_assert_null(em_conn_state(conn), "state_size 0 must give NULL");
    stateless_conn = conn;
    (*accepted)++;
}

static void stateless_unbind(em_conn *conn, int reason)
{
    (void)reason;
    cr_assert_eq(conn, stateless_conn);
    stateless_conn = NULL;
}

static const em_handler stateless_handler = {
    .post_init = stateless_post_init,
    .unbind = stateless_unbind,
};

Test(server, zero_state_size_gives_null_state, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int accepted = 0;
    em_server *server = th_start_server(loop, &stateless_handler, &accepted);
    int fd = th_connect_accepted(loop, th_listen_port(server), &accepted);
    cr_assert_not_null(stateless_conn);
    close(fd);
    double deadline = th_now() + TH_TIMEOUT(5.0);
    while (stateless_conn != NULL) {
        cr_assert_lt(th_now(), deadline, "no unbind after the peer closed");
        cr_assert_geq(em_run_once(loop, 10), 0);
    }
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}
