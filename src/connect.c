/*
 * connect.c - outbound connections: em_connect, em_bind_connect,
 * em_connect_unix and em_reconnect.
 *
 * Connecting never blocks the loop thread: literals are used as they are,
 * names go to the loop's thread pool, and every resolved address is
 * tried in order with a non-blocking connect until one completes. The
 * pending-connect timeout covers the whole attempt (resolution included) and
 * reuses the connection's timeout-queue link, since a connecting connection
 * has no inactivity timeout yet.
 *
 * A connect that fails at once (a refused Unix socket, no route) is not
 * reported from inside the caller's em_connect: the connection is parked on
 * loop->failed_connects and closed at the start of the next turn, so an
 * unbind that reconnects to a dead address cannot spin inside one turn.
 */
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void em__connect_free(em_conn *conn)
{
    struct em__connect_req *req = conn->connect;
    if (!req)
        return;
    if (req->job)
        em__resolve_cancel(conn->loop, req->job);
    if (req->addresses)
        freeaddrinfo(req->addresses);
    free(req);
    conn->connect = NULL;
}

/* Reported at the start of the next turn (see the comment at the top). */
static void fail_later(em_conn *conn, int err)
{
    conn->connect->last_err = err;
    em__timeout_disarm(conn);
    em__list_remove(&conn->link);
    em__list_push_back(&conn->loop->failed_connects, &conn->link);
    em__loop_work_added(conn->loop);
}

void em__connect_run_failures(em_loop *loop)
{
    while (!em__list_empty(&loop->failed_connects)) {
        em_conn *conn =
            em__container_of(loop->failed_connects.next, em_conn, link);
        em__conn_close_now(conn, conn->connect->last_err);
    }
}

static void drop_socket(em_conn *conn)
{
    if (conn->watcher.fd < 0)
        return;
    em__poller_forget(conn->loop, &conn->watcher);
    close(conn->watcher.fd);
    conn->watcher.fd = -1;
}

/* Starts a non-blocking connect to one address. Returns 0 when under way. */
static int try_address(em_conn *conn, const struct sockaddr *sa, socklen_t len)
{
    struct em__connect_req *req = conn->connect;
    if (req->bind_len && req->bind_addr.ss_family != sa->sa_family)
        return -EAFNOSUPPORT;
    int fd =
        socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (req->bind_len &&
        bind(fd, (struct sockaddr *)&req->bind_addr, req->bind_len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        int err = -errno;
        close(fd);
        return err;
    }
    /* Even an immediate success is reported through writability, so
     * connection_completed never runs inside em_connect. */
    conn->watcher.fd = fd;
    em__conn_update_interest(conn);
    return 0;
}

/* Tries the remaining resolved addresses; closes when none is left. */
static void try_next(em_conn *conn)
{
    struct em__connect_req *req = conn->connect;
    while (req->next) {
        struct addrinfo *ai = req->next;
        req->next = ai->ai_next;
        int err = try_address(conn, ai->ai_addr, ai->ai_addrlen);
        if (err == 0)
            return;
        req->last_err = err;
    }
    em__conn_close_now(conn, req->last_err ? req->last_err : -ENOENT);
}

void em__connect_on_resolved(em_loop *loop, void *ctx, struct addrinfo *ai,
                             int err)
{
    (void)loop;
    em_conn *conn = ctx;
    struct em__connect_req *req = conn->connect;
    req->job = NULL;
    if (err < 0) {
        em__conn_close_now(conn, err);
        return;
    }
    req->addresses = ai;
    req->next = ai;
    try_next(conn);
}

void em__connect_on_writable(em_conn *conn)
{
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(conn->watcher.fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr == 0) {
        em__connect_free(conn);
        em__conn_established(conn);
        return;
    }
    drop_socket(conn);
    conn->connect->last_err = -soerr;
    try_next(conn);
}

/* ---- starting an attempt --------------------------------------------- */

static int check_port(int port)
{
    return port > 0 && port <= 65535 ? 0 : -EINVAL;
}

static int new_request(em_conn *conn, const char *bind_host, int bind_port)
{
    struct em__connect_req *req = calloc(1, sizeof(*req));
    if (!req)
        return -ENOMEM;
    if (bind_host || bind_port) {
        int err = em__addr_literal(bind_host, bind_port, &req->bind_addr,
                                   &req->bind_len);
        if (err < 0) {
            free(req);
            return err;
        }
    }
    conn->connect = req;
    return 0;
}

/* Arms the connect timeout and starts on host:port or a Unix path. */
static void begin(em_conn *conn, const char *host, int port, const char *path)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int err;
    if (conn->connect_timeout_ms &&
        em__timeout_arm(conn, (uint64_t)conn->connect_timeout_ms * 1000000u) <
            0) {
        fail_later(conn, -ENOMEM);
        return;
    }
    if (path)
        err = em__addr_unix(path, &ss, &len);
    else
        err = em__addr_literal(host, port, &ss, &len);
    if (err == 0) {
        err = try_address(conn, (struct sockaddr *)&ss, len);
        if (err < 0)
            fail_later(conn, err);
        return;
    }
    if (path) {
        fail_later(conn, err);
        return;
    }
    err = em__resolve_start(conn->loop, host, port, em__connect_on_resolved,
                            conn, &conn->connect->job);
    if (err < 0)
        fail_later(conn, err);
}

static int start(em_loop *loop, const char *bind_host, int bind_port,
                 const char *host, int port, const char *path,
                 const em_handler *handler, void *arg, em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !handler || (!path && (!host || !*host)))
        return -EINVAL;
    if (!path && check_port(port) < 0)
        return -EINVAL;
    if (bind_port < 0 || bind_port > 65535)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;

    em_conn *conn = em__conn_new(loop, handler, arg, -1,
                                 EM__CONN_OUTBOUND | EM__CONN_CONNECTING);
    if (!conn)
        return -ENOMEM;
    int err = new_request(conn, bind_host, bind_port);
    if (err == 0 && host && !(conn->remote_host = strdup(host)))
        err = -ENOMEM;
    if (err < 0) {
        em__connect_free(conn);
        em__conn_discard(conn);
        return err;
    }
    if (out)
        *out = conn;
    if (handler->post_init)
        handler->post_init(conn, arg);
    if (!(conn->flags & EM__CONN_CLOSING))
        begin(conn, host, port, path);
    return 0;
}

int em_connect(em_loop *loop, const char *host, int port,
               const em_handler *handler, void *arg, em_conn **out)
{
    return start(loop, NULL, 0, host, port, NULL, handler, arg, out);
}

int em_bind_connect(em_loop *loop, const char *bind_host, int bind_port,
                    const char *host, int port, const em_handler *handler,
                    void *arg, em_conn **out)
{
    return start(loop, bind_host, bind_port, host, port, NULL, handler, arg,
                 out);
}

int em_connect_unix(em_loop *loop, const char *path, const em_handler *handler,
                    void *arg, em_conn **out)
{
    if (!path)
        return -EINVAL;
    return start(loop, NULL, 0, NULL, 0, path, handler, arg, out);
}

int em_reconnect(em_conn *conn, const char *host, int port)
{
    if (!conn || !host || !*host || check_port(port) < 0)
        return -EINVAL;
    if (conn->flags & EM__CONN_DATAGRAM)
        return -EOPNOTSUPP; /* nothing to connect: open another socket */
    if (!(conn->flags & EM__CONN_IN_UNBIND))
        return -EISCONN;
    if (conn->flags & EM__CONN_RECONNECTED)
        return -EALREADY;
    if (conn->fdx || (!conn->tls && conn->transport != &em__socket_transport))
        return -EOPNOTSUPP; /* attached pipes, watches, stdio, processes */
    em_loop *loop = conn->loop;
    if (loop->stopping || em_is_stopping(loop))
        return -ECANCELED;
    char *remote_host = strdup(host);
    if (!remote_host)
        return -ENOMEM;
    int err = new_request(conn, NULL, 0);
    if (err < 0) {
        free(remote_host);
        return err;
    }
    free(conn->remote_host);
    conn->remote_host = remote_host;
    conn->flags = EM__CONN_OUTBOUND | EM__CONN_CONNECTING | EM__CONN_IN_UNBIND |
                  EM__CONN_RECONNECTED;
    conn->close_reason = 0;
    conn->last_activity_ns = loop->now_ns;
    em__list_push_back(&loop->conns, &conn->link);
    begin(conn, host, port, NULL);
    return 0;
}

/* A forked child forgets the attempt (fork.c): the addresses are freed;
 * the resolver job is not cancelled (that takes the pool's lock) but freed
 * by em__resolver_forget. */
void em__connect_forget(em_conn *conn)
{
    struct em__connect_req *req = conn->connect;
    if (req->addresses)
        freeaddrinfo(req->addresses);
    free(req);
    conn->connect = NULL;
}
