/*
 * transport_socket.c - the plain-socket transport.
 *
 * Connection code reaches bytes only through em__transport, as Redis's
 * connection.h does, so a TLS session can replace this table on a live
 * connection (STARTTLS) without the read and write paths knowing. Writes use
 * send/sendmsg with MSG_NOSIGNAL: a peer that vanished gives EPIPE, never
 * SIGPIPE, and the library needs no process-wide signal disposition. Reads
 * use recv rather than read: the socket calls skip the VFS layer's
 * permission and fsnotify hooks that read(2) and write(2) pay on every call.
 */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

static ssize_t socket_read(em_conn *conn, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(conn->watcher.fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static ssize_t socket_writev(em_conn *conn, const struct iovec *iov, int count)
{
    if (count == 1) { /* the common direct write: no msghdr to build */
        for (;;) {
            ssize_t n = send(conn->watcher.fd, iov->iov_base, iov->iov_len,
                             MSG_NOSIGNAL);
            if (n >= 0)
                return n;
            if (errno != EINTR)
                return -errno;
        }
    }
    struct msghdr msg = {.msg_iov = (struct iovec *)iov,
                         .msg_iovlen = (size_t)count};
    for (;;) {
        ssize_t n = sendmsg(conn->watcher.fd, &msg, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static int socket_shutdown_write(em_conn *conn)
{
    if (shutdown(conn->watcher.fd, SHUT_WR) < 0)
        return -errno;
    return 0;
}

static void socket_close(em_conn *conn)
{
    close(conn->watcher.fd);
    conn->watcher.fd = -1;
}

const em__transport em__socket_transport = {
    .read = socket_read,
    .writev = socket_writev,
    .shutdown_write = socket_shutdown_write,
    .close = socket_close,
};
