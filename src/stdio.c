/*
 * stdio.c - the process's stdin and stdout as one connection
 * (em_open_stdio): receive_data gets what arrives on stdin, em_send_data
 * writes stdout, EOF on stdin is the peer's EOF, em_close_write ends
 * stdout.
 *
 * Two descriptors make one connection: the main watcher reads stdin, a
 * second watcher in conn->fdx writes stdout, and em__fdx_interest splits
 * the connection's interest between them, so the connection code does not
 * know there are two.
 *
 * Standard descriptors are shared: a terminal's or a pipe's open file
 * description usually belongs to the shell and to stderr as well, and
 * O_NONBLOCK set on it would make their blocking writers fail with EAGAIN
 * (a well-known way to lose a program's stderr). So a tty or pipe is
 * reopened through /proc/self/fd/N: the copy is a description of our own,
 * non-blocking, closed at unbind, and fd 0/1 are never changed. A socket
 * needs no flag at all (recv/send with MSG_DONTWAIT). epoll refuses
 * regular files and /dev/null; those are always ready and served by
 * attach.c's once-per-turn pass, read and written directly (a regular
 * file's offset is shared on purpose: `prog < file` after a partial read
 * goes on where the shell left it). Only when reopening fails (no /proc)
 * does the shared descriptor get O_NONBLOCK, put back at unbind.
 *
 * Ending stdout (em_close_write) must reach the reader: a socket is shut
 * down (FIN); for a pipe our copy is closed and fd 1 is replaced by
 * /dev/null, because the reader sees EOF only once every write end is
 * gone and fd 1 is one (closing fd 1 instead would let the next open()
 * take number 1 and printf write into it). A tty or file just stops being
 * written. Unbind leaves fd 0 and 1 open: they are the process's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fdx.h"

typedef struct side {
    int fd;
    unsigned char owned, sock, pipe, unpollable;
    int restore;
} side;

/* Sets up one standard descriptor; mode is O_RDONLY or O_WRONLY. */
static int open_side(em_loop *loop, int fd, int mode, side *s)
{
    struct stat st;
    *s = (side){.fd = fd, .restore = -1};
    if (fcntl(fd, F_GETFL) < 0 || fstat(fd, &st) < 0)
        return -EBADF;
    int err = em__poller_check(loop, fd);
    if (err == -EPERM) {
        s->unpollable = 1;
        return 0;
    }
    if (err < 0)
        return err;
    if (S_ISSOCK(st.st_mode)) {
        s->sock = 1;
        return 0;
    }
    s->pipe = S_ISFIFO(st.st_mode);
    if (s->pipe || isatty(fd)) {
        char path[32];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        int copy = open(path, mode | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (copy >= 0) {
            s->fd = copy;
            s->owned = 1;
            return 0;
        }
    }
    return em__set_nonblock(fd, &s->restore);
}

static void close_side(int fd, int owned, int restore)
{
    if (owned)
        close(fd);
    else if (restore != -1)
        fcntl(fd, F_SETFL, restore);
}

/* Stops writing stdout; the descriptor is closed or given back. */
static void release_out(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->out.fd < 0)
        return;
    em__poller_set(conn->loop, &x->out, 0);
    close_side(x->out.fd, x->out_owned, x->out_restore);
    x->out.fd = -1;
}

/* ---- the transport --------------------------------------------------- */

static ssize_t stdio_read(em_conn *conn, void *buf, size_t len)
{
    if (!conn->fdx->in_sock)
        return em__fd_read(conn->watcher.fd, buf, len);
    for (;;) {
        ssize_t n = recv(conn->watcher.fd, buf, len, MSG_DONTWAIT);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static ssize_t stdio_writev(em_conn *conn, const struct iovec *iov, int count)
{
    em__fdx *x = conn->fdx;
    if (x->out.fd < 0)
        return -EPIPE;
    if (!x->out_sock)
        return em__fd_writev(x->out.fd, iov, count, x->out_pipe);
    struct msghdr msg = {.msg_iov = (struct iovec *)iov,
                         .msg_iovlen = (size_t)count};
    for (;;) {
        ssize_t n = sendmsg(x->out.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static int stdio_shutdown_write(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->out.fd < 0)
        return 0;
    if (x->out_sock)
        return shutdown(x->out.fd, SHUT_WR) < 0 ? -errno : 0;
    int was_pipe = x->out_pipe;
    release_out(conn);
    if (!was_pipe)
        return 0;
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null < 0)
        return -errno;
    int err = dup2(null, STDOUT_FILENO) < 0 ? -errno : 0;
    close(null);
    return err;
}

static void stdio_closing(em_conn *conn)
{
    em__poller_set(conn->loop, &conn->watcher, 0);
    em__poller_set(conn->loop, &conn->fdx->out, 0);
}

static void stdio_close(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    close_side(conn->watcher.fd, x->in_owned, x->in_restore);
    conn->watcher.fd = -1;
    release_out(conn);
}

/* In a forked child (fork.c): our private copies are closed; fd 0 and 1
 * keep whatever flags they have, since their description is shared with
 * the parent, whose loop may still rely on O_NONBLOCK there; and no
 * epoll_ctl touches the parent's set. */
static void stdio_forget(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->in_owned)
        close(conn->watcher.fd);
    conn->watcher.fd = -1;
    if (x->out.fd >= 0 && x->out_owned)
        close(x->out.fd);
    x->out.fd = -1;
}

static const em__transport stdio_transport = {
    .read = stdio_read,
    .writev = stdio_writev,
    .shutdown_write = stdio_shutdown_write,
    .close = stdio_close,
    .closing = stdio_closing,
    .forget = stdio_forget,
};

static void on_writable(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)revents;
    em__fdx *x = em__container_of(w, em__fdx, out);
    em__conn_on_event(loop, &x->conn->watcher, EM__OUT); /* the write half */
}

/* ---- em_open_stdio --------------------------------------------------- */

int em_open_stdio(em_loop *loop, const em_handler *handler, void *arg,
                  em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !handler)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    if (em__fd_in_use(loop, STDIN_FILENO) || em__fd_in_use(loop, STDOUT_FILENO))
        return -EEXIST;
    side in, wr;
    int err = open_side(loop, STDIN_FILENO, O_RDONLY, &in);
    if (err < 0)
        return err;
    err = open_side(loop, STDOUT_FILENO, O_WRONLY, &wr);
    if (err < 0) {
        close_side(in.fd, in.owned, in.restore);
        return err;
    }
    em_conn *conn = em__conn_new(loop, handler, arg, in.fd, 0);
    em__fdx *x = conn ? em__fdx_new(conn, EM__FDX_STDIO) : NULL;
    if (!x) {
        if (conn)
            em__conn_discard(conn);
        close_side(in.fd, in.owned, in.restore);
        close_side(wr.fd, wr.owned, wr.restore);
        return -ENOMEM;
    }
    conn->transport = &stdio_transport;
    x->in_owned = in.owned;
    x->in_sock = in.sock;
    x->in_unpollable = in.unpollable;
    x->in_restore = in.restore;
    x->out.fd = wr.fd;
    x->out.on_event = on_writable;
    x->out_owned = wr.owned;
    x->out_sock = wr.sock;
    x->out_pipe = wr.pipe;
    x->out_unpollable = wr.unpollable;
    x->out_restore = wr.restore;
    em__conn_start(conn, out);
    return 0;
}
