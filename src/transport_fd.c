/*
 * transport_fd.c - transports over descriptors that are not sockets, and
 * over descriptors the library only borrows.
 *
 * em_attach turns any descriptor into a connection. Sockets keep the socket
 * transport (recv/send skip the VFS hooks read/write pay); pipes, ttys,
 * character devices and files use read/writev here.
 *
 * write(2) has no MSG_NOSIGNAL: a pipe whose reader has gone raises
 * SIGPIPE, which kills a process that did not ignore it. The library never
 * changes process-wide dispositions, so a pipe write blocks SIGPIPE in the
 * calling thread for the duration of the call and consumes the signal it
 * raised (sigtimedwait with a zero timeout): two cheap extra syscalls per
 * pipe write, none for other descriptors. Rejected: ignoring SIGPIPE
 * process-wide (not a library's decision), and looking at the disposition
 * once at attach time (wrong as soon as the program changes it).
 *
 * em_watch borrows a descriptor: it is never read, written or closed. Its
 * transport only stops polling it, as soon as the connection starts
 * closing: the owner may close the descriptor before unbind runs, and an
 * EPOLL_CTL_DEL on a number reused meanwhile would remove another file's
 * registration (or leave ours behind on a file still open elsewhere).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fdx.h"

ssize_t em__fd_read(int fd, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static ssize_t plain_writev(int fd, const struct iovec *iov, int count)
{
    for (;;) {
        ssize_t n = writev(fd, iov, count);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

ssize_t em__fd_writev(int fd, const struct iovec *iov, int count,
                      int may_sigpipe)
{
    if (!may_sigpipe)
        return plain_writev(fd, iov, count);
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = plain_writev(fd, iov, count);
    if (n == -EPIPE && !sigismember(&old, SIGPIPE)) {
        /* The write raised it and it waits, blocked, on this thread. */
        static const struct timespec now;
        while (sigtimedwait(&pipe_set, NULL, &now) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return n;
}

static ssize_t fd_read(em_conn *conn, void *buf, size_t len)
{
    return em__fd_read(conn->watcher.fd, buf, len);
}

static ssize_t fd_writev(em_conn *conn, const struct iovec *iov, int count)
{
    return em__fd_writev(conn->watcher.fd, iov, count, 0);
}

static ssize_t pipe_writev(em_conn *conn, const struct iovec *iov, int count)
{
    return em__fd_writev(conn->watcher.fd, iov, count, 1);
}

/* Only a socket can half-close. A write-only descriptor (a pipe's write
 * end) has nothing left to do once writing ends: closing it is how its
 * reader gets EOF. Any other descriptor just stops being written. */
static int fd_shutdown_write(em_conn *conn)
{
    int flags = fcntl(conn->watcher.fd, F_GETFL);
    if (flags >= 0 && (flags & O_ACCMODE) == O_WRONLY)
        em__conn_close_now(conn, 0);
    return 0;
}

static void fd_close(em_conn *conn)
{
    close(conn->watcher.fd);
    conn->watcher.fd = -1;
}

const em__transport em__fd_transport = {
    .read = fd_read,
    .writev = fd_writev,
    .shutdown_write = fd_shutdown_write,
    .close = fd_close,
};

const em__transport em__pipe_transport = {
    .read = fd_read,
    .writev = pipe_writev,
    .shutdown_write = fd_shutdown_write,
    .close = fd_close,
};

/* ---- borrowed descriptors (em_watch) --------------------------------- */

static ssize_t watch_read(em_conn *conn, void *buf, size_t len)
{
    (void)conn;
    (void)buf;
    (void)len;
    return -EBADF; /* never called: watch connections are never read */
}

static ssize_t watch_writev(em_conn *conn, const struct iovec *iov, int count)
{
    (void)conn;
    (void)iov;
    (void)count;
    return -EBADF; /* never called: em_send_data refuses them */
}

static int watch_shutdown_write(em_conn *conn)
{
    (void)conn;
    return 0;
}

/* The number is the owner's again from here on, even before unbind: it
 * may be closed and reused at once. */
static void watch_closing(em_conn *conn)
{
    em__poller_set(conn->loop, &conn->watcher, 0);
    conn->watcher.fd = -1;
}

static void watch_close(em_conn *conn)
{
    conn->watcher.fd = -1; /* never reached: closing let go of it */
}

const em__transport em__watch_transport = {
    .read = watch_read,
    .writev = watch_writev,
    .shutdown_write = watch_shutdown_write,
    .close = watch_close,
    .closing = watch_closing,
};
