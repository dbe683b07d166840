/*
 * test_sockopt.c - peer/local names, socket options, keepalive and
 * em_conn_error, over real loopback connections.
 *
 * Most tests open a pair: a server on 127.0.0.1 port 0 and an em_connect
 * client. Both em_conn pointers stay valid until their unbind, so the test
 * body queries them between loop turns (everything on the test's thread).
 * A few white-box tests build a bare em_conn around a socket to reach
 * states a live connection only passes through (no socket, a pending
 * SO_ERROR).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "internal.h"

#define WAIT_S 5.0

typedef struct pair {
    em_loop *loop;
    em_server *server;
    int port;
    em_conn *client;   /* NULL after its unbind */
    em_conn *accepted; /* NULL after its unbind */
    int completed;
    int have_accepted;
    int unbinds;
    int peername_in_post_init; /* em_get_peername before the socket */
    int error_in_post_init;
} pair;

static void accepted_post_init(em_conn *conn, void *arg)
{
    pair *p = arg;

    p->accepted = conn;
    p->have_accepted = 1;
}

static void accepted_unbind(em_conn *conn, int reason)
{
    pair *p = em_conn_arg(conn);

    (void)reason;
    p->accepted = NULL;
    p->unbinds++;
}

static const em_handler server_handler = {
    .post_init = accepted_post_init,
    .unbind = accepted_unbind,
};

static void client_post_init(em_conn *conn, void *arg)
{
    pair *p = arg;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    p->peername_in_post_init =
        em_get_peername(conn, (struct sockaddr *)&ss, &len);
    p->error_in_post_init = em_conn_error(conn);
}

static void client_completed(em_conn *conn)
{
    pair *p = em_conn_arg(conn);

    p->completed = 1;
}

static void client_unbind(em_conn *conn, int reason)
{
    pair *p = em_conn_arg(conn);

    (void)reason;
    p->client = NULL;
    p->unbinds++;
}

static const em_handler client_handler = {
    .post_init = client_post_init,
    .connection_completed = client_completed,
    .unbind = client_unbind,
};

static void open_pair(pair *p)
{
    int rc;

    memset(p, 0, sizeof(*p));
    p->loop = th_loop();
    p->server = th_start_server(p->loop, &server_handler, p);
    p->port = th_listen_port(p->server);
    rc = em_connect(p->loop, "127.0.0.1", p->port, &client_handler, p,
                    &p->client);
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
    th_run_until(p->loop, &p->completed, WAIT_S);
    th_run_until(p->loop, &p->have_accepted, WAIT_S);
    cr_assert_not_null(p->client);
    cr_assert_not_null(p->accepted);
}

static void close_pair(pair *p)
{
    int both = 0;
    double deadline = th_now() + WAIT_S;

    if (p->client != NULL)
        em_close_connection(p->client, 0);
    while (!both) {
        cr_assert_lt(th_now(), deadline, "%d of 2 unbinds", p->unbinds);
        th_run_for(p->loop, 0.01);
        both = p->unbinds == 2;
    }
    cr_assert_eq(em_stop_server(p->server), 0);
    th_free_loop(p->loop);
}

static int port_of(const struct sockaddr_storage *ss)
{
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static int is_127_0_0_1(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET &&
           ((const struct sockaddr_in *)ss)->sin_addr.s_addr ==
               htonl(INADDR_LOOPBACK);
}

static int get_int(em_conn *conn, int level, int name)
{
    int value = -12345;
    socklen_t len = sizeof(value);
    int rc = em_get_sock_opt(conn, level, name, &value, &len);

    cr_assert_eq(rc, 0, "em_get_sock_opt(%d, %d): %s", level, name,
                 em_strerror(rc));
    cr_assert_eq(len, sizeof(value));
    return value;
}

static void set_int(em_conn *conn, int level, int name, int value)
{
    int rc = em_set_sock_opt(conn, level, name, &value, sizeof(value));

    cr_assert_eq(rc, 0, "em_set_sock_opt(%d, %d, %d): %s", level, name, value,
                 em_strerror(rc));
}

/* ---- names ------------------------------------------------------------- */

Test(sockopt, names_match_both_ends, .timeout = 30)
{
    pair p;
    struct sockaddr_storage c_peer, c_local, a_peer, a_local;
    socklen_t len;

    open_pair(&p);
    len = sizeof(c_peer);
    cr_assert_eq(em_get_peername(p.client, (struct sockaddr *)&c_peer, &len),
                 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    len = sizeof(c_local);
    cr_assert_eq(em_get_sockname(p.client, (struct sockaddr *)&c_local, &len),
                 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    len = sizeof(a_peer);
    cr_assert_eq(em_get_peername(p.accepted, (struct sockaddr *)&a_peer, &len),
                 0);
    len = sizeof(a_local);
    cr_assert_eq(em_get_sockname(p.accepted, (struct sockaddr *)&a_local, &len),
                 0);

    cr_assert(is_127_0_0_1(&c_peer) && is_127_0_0_1(&c_local));
    cr_assert(is_127_0_0_1(&a_peer) && is_127_0_0_1(&a_local));
    cr_assert_eq(port_of(&c_peer), p.port, "client's peer is the server");
    cr_assert_eq(port_of(&a_local), p.port, "accepted on the server port");
    cr_assert_eq(port_of(&a_peer), port_of(&c_local),
                 "each end's peer is the other's local address");
    cr_assert_neq(port_of(&c_local), p.port);
    close_pair(&p);
}

Test(sockopt, names_truncate_and_report_full_length, .timeout = 30)
{
    pair p;
    struct sockaddr_storage ss;
    socklen_t len = 4;

    open_pair(&p);
    memset(&ss, 0xab, sizeof(ss));
    cr_assert_eq(em_get_peername(p.client, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    cr_assert_eq(((unsigned char *)&ss)[4], 0xab, "wrote past *len");
    len = 0;
    cr_assert_eq(em_get_sockname(p.client, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    close_pair(&p);
}

Test(sockopt, server_sockname, .timeout = 30)
{
    pair p;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    open_pair(&p);
    cr_assert_eq(em_server_sockname(p.server, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    cr_assert(is_127_0_0_1(&ss));
    cr_assert_eq(port_of(&ss), em_server_port(p.server));
    len = 2;
    cr_assert_eq(em_server_sockname(p.server, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    cr_assert_eq(em_server_sockname(NULL, (struct sockaddr *)&ss, &len),
                 -EINVAL);
    cr_assert_eq(em_server_sockname(p.server, NULL, &len), -EINVAL);
    cr_assert_eq(em_server_sockname(p.server, (struct sockaddr *)&ss, NULL),
                 -EINVAL);
    close_pair(&p);
}

/* post_init of an outbound connection runs before its socket exists. */
Test(sockopt, no_socket_yet_is_enotconn, .timeout = 30)
{
    pair p;

    open_pair(&p);
    cr_assert_eq(p.peername_in_post_init, -ENOTCONN, "got %s",
                 em_err_name(p.peername_in_post_init));
    cr_assert_eq(p.error_in_post_init, -ENOTCONN, "got %s",
                 em_err_name(p.error_in_post_init));
    close_pair(&p);
}

/* ---- options ------------------------------------------------------------ */

Test(sockopt, nodelay_round_trip, .timeout = 30)
{
    pair p;

    open_pair(&p);
    set_int(p.client, IPPROTO_TCP, TCP_NODELAY, 1);
    cr_assert_neq(get_int(p.client, IPPROTO_TCP, TCP_NODELAY), 0);
    set_int(p.client, IPPROTO_TCP, TCP_NODELAY, 0);
    cr_assert_eq(get_int(p.client, IPPROTO_TCP, TCP_NODELAY), 0);
    set_int(p.accepted, IPPROTO_TCP, TCP_NODELAY, 1);
    cr_assert_neq(get_int(p.accepted, IPPROTO_TCP, TCP_NODELAY), 0);
    close_pair(&p);
}

Test(sockopt, option_errors_come_back, .timeout = 30)
{
    pair p;
    int value = 1;
    socklen_t len = sizeof(value);

    open_pair(&p);
    cr_assert_eq(
        em_set_sock_opt(p.client, SOL_SOCKET, 987654, &value, sizeof(value)),
        -ENOPROTOOPT);
    cr_assert_eq(em_get_sock_opt(p.client, SOL_SOCKET, 987654, &value, &len),
                 -ENOPROTOOPT);
    close_pair(&p);
}

Test(sockopt, keepalive_round_trip, .timeout = 30)
{
    pair p;

    open_pair(&p);
    cr_assert_eq(get_int(p.client, SOL_SOCKET, SO_KEEPALIVE), 0);
    cr_assert_eq(em_enable_keepalive(p.client, 30, 5, 3), 0);
    cr_assert_neq(get_int(p.client, SOL_SOCKET, SO_KEEPALIVE), 0);
    cr_assert_eq(get_int(p.client, IPPROTO_TCP, TCP_KEEPIDLE), 30);
    cr_assert_eq(get_int(p.client, IPPROTO_TCP, TCP_KEEPINTVL), 5);
    cr_assert_eq(get_int(p.client, IPPROTO_TCP, TCP_KEEPCNT), 3);
    cr_assert_eq(em_disable_keepalive(p.client), 0);
    cr_assert_eq(get_int(p.client, SOL_SOCKET, SO_KEEPALIVE), 0);
    close_pair(&p);
}

Test(sockopt, keepalive_zero_keeps_defaults, .timeout = 30)
{
    pair p;
    int idle, interval, count;

    open_pair(&p);
    idle = get_int(p.accepted, IPPROTO_TCP, TCP_KEEPIDLE);
    interval = get_int(p.accepted, IPPROTO_TCP, TCP_KEEPINTVL);
    count = get_int(p.accepted, IPPROTO_TCP, TCP_KEEPCNT);
    cr_assert_eq(em_enable_keepalive(p.accepted, 0, 0, 0), 0);
    cr_assert_neq(get_int(p.accepted, SOL_SOCKET, SO_KEEPALIVE), 0);
    cr_assert_eq(get_int(p.accepted, IPPROTO_TCP, TCP_KEEPIDLE), idle);
    cr_assert_eq(get_int(p.accepted, IPPROTO_TCP, TCP_KEEPINTVL), interval);
    cr_assert_eq(get_int(p.accepted, IPPROTO_TCP, TCP_KEEPCNT), count);
    cr_assert_eq(em_enable_keepalive(p.accepted, 0, 7, 0), 0);
    cr_assert_eq(get_int(p.accepted, IPPROTO_TCP, TCP_KEEPIDLE), idle);
    cr_assert_eq(get_int(p.accepted, IPPROTO_TCP, TCP_KEEPINTVL), 7);
    close_pair(&p);
}

Test(sockopt, keepalive_bad_values, .timeout = 30)
{
    pair p;

    open_pair(&p);
    cr_assert_eq(em_enable_keepalive(p.client, -1, 0, 0), -EINVAL);
    cr_assert_eq(em_enable_keepalive(p.client, 0, -1, 0), -EINVAL);
    cr_assert_eq(em_enable_keepalive(p.client, 0, 0, -1), -EINVAL);
    /* The kernel refuses a count above 127: keepalive stays off. */
    cr_assert_eq(em_enable_keepalive(p.client, 10, 10, 100000), -EINVAL);
    cr_assert_eq(get_int(p.client, SOL_SOCKET, SO_KEEPALIVE), 0);
    close_pair(&p);
}

Test(sockopt, healthy_connection_has_no_error, .timeout = 30)
{
    pair p;

    open_pair(&p);
    cr_assert_eq(em_conn_error(p.client), 0);
    cr_assert_eq(em_conn_error(p.accepted), 0);
    close_pair(&p);
}

Test(sockopt, null_args, .timeout = 30)
{
    pair p;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int value = 1;

    open_pair(&p);
    cr_assert_eq(em_get_peername(NULL, (struct sockaddr *)&ss, &len), -EINVAL);
    cr_assert_eq(em_get_peername(p.client, NULL, &len), -EINVAL);
    cr_assert_eq(em_get_peername(p.client, (struct sockaddr *)&ss, NULL),
                 -EINVAL);
    cr_assert_eq(em_get_sockname(NULL, (struct sockaddr *)&ss, &len), -EINVAL);
    cr_assert_eq(em_get_sockname(p.client, NULL, &len), -EINVAL);
    cr_assert_eq(em_get_sockname(p.client, (struct sockaddr *)&ss, NULL),
                 -EINVAL);
    cr_assert_eq(em_get_sock_opt(NULL, SOL_SOCKET, SO_KEEPALIVE, &value, &len),
                 -EINVAL);
    cr_assert_eq(
        em_get_sock_opt(p.client, SOL_SOCKET, SO_KEEPALIVE, NULL, &len),
        -EINVAL);
    cr_assert_eq(
        em_get_sock_opt(p.client, SOL_SOCKET, SO_KEEPALIVE, &value, NULL),
        -EINVAL);
    cr_assert_eq(
        em_set_sock_opt(NULL, SOL_SOCKET, SO_KEEPALIVE, &value, sizeof(value)),
        -EINVAL);
    cr_assert_eq(em_set_sock_opt(p.client, SOL_SOCKET, SO_KEEPALIVE, NULL,
                                 sizeof(value)),
                 -EINVAL);
    cr_assert_eq(em_enable_keepalive(NULL, 1, 1, 1), -EINVAL);
    cr_assert_eq(em_disable_keepalive(NULL), -EINVAL);
    cr_assert_eq(em_conn_error(NULL), -EINVAL);
    close_pair(&p);
}

/* ---- Unix sockets ---------------------------------------------------------
 */

Test(sockopt, unix_names_and_no_keepalive, .timeout = 30)
{
    em_loop *loop = th_loop();
    em_server *server;
    pair p;
    char path[128];
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd;

    memset(&p, 0, sizeof(p));
    p.loop = loop;
    th_unix_path(path, sizeof(path), "sockopt");
    server = th_start_unix_server(loop, path, &server_handler, &p);
    fd = th_client_connect_unix(path);
    th_run_until(loop, &p.have_accepted, WAIT_S);

    cr_assert_eq(em_get_sockname(p.accepted, (struct sockaddr *)&ss, &len), 0);
    cr_assert_eq(ss.ss_family, AF_UNIX);
    cr_assert_str_eq(((struct sockaddr_un *)&ss)->sun_path, path);
    cr_assert_eq(em_enable_keepalive(p.accepted, 0, 0, 0), -EOPNOTSUPP);
    cr_assert_eq(em_enable_keepalive(p.accepted, 10, 0, 0), -EOPNOTSUPP);
    cr_assert_eq(em_disable_keepalive(p.accepted), -EOPNOTSUPP);
    cr_assert_eq(get_int(p.accepted, SOL_SOCKET, SO_KEEPALIVE), 0);
    cr_assert_eq(em_conn_error(p.accepted), 0);

    close(fd);
    th_run_until(loop, &p.unbinds, WAIT_S);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* ---- white-box: a bare em_conn around a descriptor ----------------------- */

static em_conn *bare_conn(int fd, uint32_t flags)
{
    em_conn *conn = calloc(1, sizeof(*conn));

    cr_assert_not_null(conn);
    conn->watcher.fd = fd;
    conn->flags = flags;
    return conn;
}

Test(sockopt, without_socket_everything_is_enotconn, .timeout = 10)
{
    em_conn *conn = bare_conn(-1, 0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int value = 1;

    cr_assert_eq(em_get_peername(conn, (struct sockaddr *)&ss, &len),
                 -ENOTCONN);
    cr_assert_eq(em_get_sockname(conn, (struct sockaddr *)&ss, &len),
                 -ENOTCONN);
    cr_assert_eq(em_get_sock_opt(conn, SOL_SOCKET, SO_KEEPALIVE, &value, &len),
                 -ENOTCONN);
    cr_assert_eq(
        em_set_sock_opt(conn, SOL_SOCKET, SO_KEEPALIVE, &value, sizeof(value)),
        -ENOTCONN);
    cr_assert_eq(em_enable_keepalive(conn, 1, 1, 1), -ENOTCONN);
    cr_assert_eq(em_disable_keepalive(conn), -ENOTCONN);
    cr_assert_eq(em_conn_error(conn), -ENOTCONN);
    free(conn);
}

/* A non-blocking connect to a port nobody listens on: SO_ERROR becomes
 * ECONNREFUSED once the attempt ends. */
static int refused_socket(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)th_free_port()),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct pollfd pfd;
    int fd;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0)
        cr_assert_fail("connected to a closed port");
    cr_assert(errno == EINPROGRESS || errno == ECONNREFUSED, "%s",
              strerror(errno));
    pfd.fd = fd;
    pfd.events = POLLOUT;
    cr_assert_eq(poll(&pfd, 1, 5000), 1);
    return fd;
}

Test(sockopt, conn_error_reports_and_clears, .timeout = 10)
{
    int fd = refused_socket();
    em_conn *conn = bare_conn(fd, EM__CONN_OUTBOUND);

    cr_assert_eq(em_conn_error(conn), -ECONNREFUSED);
    cr_assert_eq(em_conn_error(conn), 0, "SO_ERROR is cleared by reading");
    close(fd);
    free(conn);
}

/* While connecting, SO_ERROR belongs to the connect code: em_conn_error
 * must not consume the outcome. */
Test(sockopt, conn_error_leaves_pending_connect_alone, .timeout = 10)
{
    int fd = refused_socket();
    em_conn *conn = bare_conn(fd, EM__CONN_OUTBOUND | EM__CONN_CONNECTING);
    int err = 0;
    socklen_t len = sizeof(err);

    cr_assert_eq(em_conn_error(conn), 0);
    cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
    cr_assert_eq(err, ECONNREFUSED, "the connect's outcome was consumed");
    close(fd);
    free(conn);
}
