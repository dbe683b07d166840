/*
 * sockopt.c - peer and local names, socket options, keepalive, SO_ERROR.
 *
 * Thin, validated wrappers over getpeername/getsockname/getsockopt/
 * setsockopt on the connection's descriptor (conn->watcher.fd, -1 when the
 * connection has no socket: -ENOTCONN). A closing connection keeps its
 * descriptor until unbind, so these still work there. em_server_sockname
 * gives -EBADF for a listener without a descriptor.
 *
 * Alternatives considered: caching peer and local addresses in em_conn at
 * accept/connect time would save a syscall per query, but it costs every
 * connection 256 bytes for a call most programs never make, and the
 * kernel's answer is always current (e.g. after a reconnect).
 *
 * Keepalive is a TCP feature. em_enable_keepalive and em_disable_keepalive
 * return -EOPNOTSUPP on any other socket (Unix, SCTP...) rather than setting
 * SO_KEEPALIVE where it probes nothing: a silent success would let the
 * caller believe dead peers are being detected. Enabling sets TCP_KEEPIDLE,
 * TCP_KEEPINTVL and TCP_KEEPCNT (each only when > 0) before SO_KEEPALIVE, so
 * a value the kernel rejects (idle/interval > 32767 s, count > 127) fails
 * with keepalive still in its previous state.
 *
 * em_conn_error reads SO_ERROR, which clears the pending error in the
 * kernel (as EventMachine's error? does). While an outbound connect is
 * still pending it returns 0 without reading: SO_ERROR is how the connect
 * code learns the connect's outcome, and that arrives through
 * connection_completed or unbind.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "internal.h"

/* The connection's descriptor, or -ENOTCONN. */
static int conn_fd(const em_conn *conn)
{
    return conn->watcher.fd >= 0 ? conn->watcher.fd : -ENOTCONN;
}

typedef int (*name_getter)(int, struct sockaddr *, socklen_t *);

/* getpeername/getsockname copy at most *len bytes and store the full
 * length, which is the contract em.h promises. */
static int conn_name(const em_conn *conn, name_getter get,
                     struct sockaddr *addr, socklen_t *len)
{
    if (conn == NULL || addr == NULL || len == NULL)
        return -EINVAL;
    int fd = conn_fd(conn);
    if (fd < 0)
        return fd;
    return get(fd, addr, len) == 0 ? 0 : -errno;
}

int em_get_peername(const em_conn *conn, struct sockaddr *addr, socklen_t *len)
{
    if (conn && addr && len && (conn->flags & EM__CONN_DATAGRAM))
        return em__dgram_peername(conn, addr, len); /* the last sender */
    return conn_name(conn, getpeername, addr, len);
}

int em_get_sockname(const em_conn *conn, struct sockaddr *addr, socklen_t *len)
{
    return conn_name(conn, getsockname, addr, len);
}

int em_server_sockname(const em_server *server, struct sockaddr *addr,
                       socklen_t *len)
{
    if (server == NULL || addr == NULL || len == NULL)
        return -EINVAL;
    if (server->watcher.fd < 0)
        return -EBADF;
    return getsockname(server->watcher.fd, addr, len) == 0 ? 0 : -errno;
}

int em_get_sock_opt(const em_conn *conn, int level, int name, void *value,
                    socklen_t *len)
{
    int fd;

    if (conn == NULL || value == NULL || len == NULL)
        return -EINVAL;
    fd = conn_fd(conn);
    if (fd < 0)
        return fd;
    return getsockopt(fd, level, name, value, len) == 0 ? 0 : -errno;
}

int em_set_sock_opt(em_conn *conn, int level, int name, const void *value,
                    socklen_t len)
{
    int fd;

    /* NULL with length 0 is legitimate for a few options. */
    if (conn == NULL || (value == NULL && len != 0))
        return -EINVAL;
    fd = conn_fd(conn);
    if (fd < 0)
        return fd;
    return setsockopt(fd, level, name, value, len) == 0 ? 0 : -errno;
}

static int set_int(int fd, int level, int name, int value)
{
    if (setsockopt(fd, level, name, &value, sizeof(value)) != 0)
        return -errno;
    return 0;
}

/* conn's descriptor if it is a TCP socket; -ENOTCONN, -EOPNOTSUPP or the
 * errno of getsockopt otherwise. */
static int tcp_fd(const em_conn *conn)
{
    int fd = conn_fd(conn);
    int protocol = 0;
    socklen_t len = sizeof(protocol);

    if (fd < 0)
        return fd;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0)
        return -errno;
    return protocol == IPPROTO_TCP ? fd : -EOPNOTSUPP;
}

/* A TCP_* keepalive parameter; 0 keeps the system default. */
static int set_tcp_param(int fd, int name, int value)
{
    return value > 0 ? set_int(fd, IPPROTO_TCP, name, value) : 0;
}

int em_enable_keepalive(em_conn *conn, int idle, int interval, int count)
{
    int fd;
    int rc;

    if (conn == NULL || idle < 0 || interval < 0 || count < 0)
        return -EINVAL;
    fd = tcp_fd(conn);
    if (fd < 0)
        return fd;
    rc = set_tcp_param(fd, TCP_KEEPIDLE, idle);
    if (rc == 0)
        rc = set_tcp_param(fd, TCP_KEEPINTVL, interval);
    if (rc == 0)
        rc = set_tcp_param(fd, TCP_KEEPCNT, count);
    if (rc != 0)
        return rc;
    return set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
}

int em_disable_keepalive(em_conn *conn)
{
    int fd;

    if (conn == NULL)
        return -EINVAL;
    fd = tcp_fd(conn);
    if (fd < 0)
        return fd;
    return set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 0);
}

int em_conn_error(const em_conn *conn)
{
    int fd;
    int err = 0;
    socklen_t len = sizeof(err);

    if (conn == NULL)
        return -EINVAL;
    fd = conn_fd(conn);
    if (fd < 0)
        return fd;
    if (conn->flags & EM__CONN_CONNECTING)
        return 0;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return -errno;
    return -err;
}
