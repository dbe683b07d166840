/*
 * attach.c - descriptors from elsewhere: em_attach, em_watch, em_detach,
 * the notify_readable/notify_writable switches, em_get_fd.
 *
 * em_attach makes any descriptor an ordinary connection: sockets keep the
 * socket transport, pipes and FIFOs get the SIGPIPE-safe pipe transport,
 * everything else (ttys, character devices, files) plain read/write. The
 * descriptor is made non-blocking (em_detach puts the flag back). A
 * read-only descriptor refuses em_send_data (-EPIPE) and a write-only one
 * is never read, so a pipe end behaves like a half-closed socket.
 *
 * epoll refuses regular files and devices without a poll method such as
 * /dev/null (EPERM). Those are always ready, so instead of rejecting them
 * an attached one is served by a pass once per turn (a 0-second timer,
 * re-armed while the connection wants to read or write): a file attached
 * is read to its end like a peer that sends it and then closes. Rejected:
 * a thread doing blocking reads (a thread per descriptor for what is, on a
 * page-cached file, a memcpy), and a per-loop "always ready" list checked
 * every turn (a core change for a rare case, where a timer is already
 * cancellable and makes the poll not wait). em_watch, which only reports
 * readiness, rejects them with -EPERM: they would be "ready" every turn.
 *
 * em_watch borrows the descriptor: the connection has only the
 * notify_readable / notify_writable callbacks (both off at first, as in
 * EventMachine), never reads, writes, closes or changes it; its transport
 * stops polling it the moment it starts closing (transport_fd.c).
 *
 * Attaching a descriptor twice is -EEXIST: the loop's connections,
 * servers and own descriptors are scanned (O(connections), attach is not
 * a hot path), and epoll itself answers EEXIST for anything else this
 * loop polls. A per-loop table indexed by descriptor would make the check
 * O(1) but costs every accept and close an update for a rare call.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fdx.h"

/* ---- extras ---------------------------------------------------------- */

em__fdx *em__fdx_new(em_conn *conn, int kind)
{
    em__fdx *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->kind = kind;
    x->conn = conn;
    x->out.fd = -1;
    x->exit.fd = -1;
    x->in_restore = -1;
    x->out_restore = -1;
    x->status_err = -EAGAIN;
    conn->fdx = x;
    return x;
}

void em__fdx_free(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->pass_timer)
        em_cancel_timer(conn->loop, x->pass_timer);
    if (x->kind == EM__FDX_POPEN || x->kind == EM__FDX_PROC_WATCH)
        em__proc_release(x);
    free(x);
    conn->fdx = NULL;
}

/* In a forked child (fork.c): no timer to cancel (the heap goes whole), no
 * child to kill or reap. */
void em__fdx_forget(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->kind == EM__FDX_POPEN || x->kind == EM__FDX_PROC_WATCH)
        em__proc_forget(conn);
    free(x);
    conn->fdx = NULL;
}

int em__set_nonblock(int fd, int *restore)
{
    *restore = -1;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -errno;
    if (flags & O_NONBLOCK)
        return 0;
    if (fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    *restore = flags;
    return 0;
}

/* ---- in use? --------------------------------------------------------- */

static int conn_uses(const em_conn *conn, int fd)
{
    if (conn->watcher.fd == fd)
        return 1;
    const em__fdx *x = conn->fdx;
    if (!x)
        return 0;
    if (x->out.fd == fd || x->exit.fd == fd)
        return 1;
    /* stdio may read and write private copies: 0 and 1 are still its. */
    return x->kind == EM__FDX_STDIO &&
           (fd == STDIN_FILENO || fd == STDOUT_FILENO);
}

static int list_uses(const em__link *list, int fd)
{
    for (const em__link *l = list->next; l != list; l = l->next)
        if (conn_uses(em__container_of(l, em_conn, link), fd))
            return 1;
    return 0;
}

int em__fd_in_use(em_loop *loop, int fd)
{
    if (fd == loop->backend_fd || fd == loop->wakeup.fd)
        return 1;
    if (list_uses(&loop->conns, fd) || list_uses(&loop->pending_unbind, fd) ||
        list_uses(&loop->failed_connects, fd) ||
        list_uses(&loop->proc_exiting, fd))
        return 1;
    for (const em__link *l = loop->servers.next; l != &loop->servers;
         l = l->next)
        if (em__container_of(l, em_server, link)->watcher.fd == fd)
            return 1;
    return 0;
}

/* The checks em_attach and em_watch share. Fills *st and *flags. */
static int check_fd(em_loop *loop, int fd, struct stat *st, int *flags)
{
    if (fd < 0 || (*flags = fcntl(fd, F_GETFL)) < 0 || fstat(fd, st) < 0)
        return -EBADF;
    if (em__fd_in_use(loop, fd))
        return -EEXIST;
    return 0;
}

/* ---- sides epoll cannot poll ----------------------------------------- */

static void unpollable_pass(em_loop *loop, void *arg)
{
    (void)loop;
    em_conn *conn = arg;
    em__fdx *x = conn->fdx;
    x->pass_timer = 0;
    if (conn->flags & EM__CONN_CLOSING)
        return;
    /* What the connection wanted when the pass was armed; reading may
     * change that (EOF), and update_interest re-arms only if still due. */
    unsigned want = (x->in_unpollable ? EM__IN : 0) |
                    (x->out_unpollable && conn->out.bytes ? EM__OUT : 0);
    if (want & EM__IN)
        em__conn_read(conn);
    if ((want & EM__OUT) && !(conn->flags & EM__CONN_CLOSING))
        em__conn_flush(conn);
    if (!(conn->flags & EM__CONN_CLOSING))
        em__conn_update_interest(conn);
}

unsigned em__fdx_interest(em_conn *conn, unsigned interest)
{
    em__fdx *x = conn->fdx;
    unsigned in = interest & EM__IN, out = interest & EM__OUT;
    unsigned pass = (x->in_unpollable ? in : 0) | (x->out_unpollable ? out : 0);
    if (x->in_unpollable)
        in = 0;
    if (x->out_unpollable)
        out = 0;
    if (x->kind == EM__FDX_STDIO) {
        /* stdout is its own watcher; the main one reads stdin. */
        int err = em__poller_set(conn->loop, &x->out, x->out.fd >= 0 ? out : 0);
        if (err < 0) {
            em__conn_close_now(conn, err);
            return 0;
        }
        out = 0;
    }
    if (pass && !x->pass_timer) {
        if (em_add_timer(conn->loop, 0.0, unpollable_pass, conn,
                         &x->pass_timer) < 0) {
            em__conn_close_now(conn, -ENOMEM);
            return 0;
        }
    } else if (!pass && x->pass_timer) {
        em_cancel_timer(conn->loop, x->pass_timer);
        x->pass_timer = 0;
    }
    return in | out;
}

/* ---- em_attach ------------------------------------------------------- */

static int is_listening(int fd)
{
    int on = 0;
    socklen_t len = sizeof(on);
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

static const em__transport *transport_for(const struct stat *st)
{
    if (S_ISSOCK(st->st_mode))
        return &em__socket_transport;
    if (S_ISFIFO(st->st_mode))
        return &em__pipe_transport;
    return &em__fd_transport;
}

int em_attach(em_loop *loop, int fd, const em_handler *handler, void *arg,
              em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !handler)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    struct stat st;
    int flags;
    int err = check_fd(loop, fd, &st, &flags);
    if (err < 0)
        return err;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if (S_ISSOCK(st.st_mode) && is_listening(fd))
        return -EINVAL; /* em_attach_server's */
    int pollable = em__poller_check(loop, fd);
    if (pollable < 0 && pollable != -EPERM)
        return pollable;

    uint32_t conn_flags = 0;
    if ((flags & O_ACCMODE) == O_RDONLY)
        conn_flags |= EM__CONN_WRITE_SHUT;
    else if ((flags & O_ACCMODE) == O_WRONLY)
        conn_flags |= EM__CONN_READ_EOF;
    em_conn *conn = em__conn_new(loop, handler, arg, fd, conn_flags);
    if (!conn || (pollable < 0 && !em__fdx_new(conn, EM__FDX_FILE))) {
        if (conn)
            em__conn_discard(conn);
        return -ENOMEM;
    }
    conn->transport = transport_for(&st);
    if (pollable < 0) {
        /* Always ready: no O_NONBLOCK needed (a file ignores it anyway). */
        conn->fdx->in_unpollable = 1;
        conn->fdx->out_unpollable = 1;
    } else {
        int restore;
        if (em__set_nonblock(fd, &restore) == 0 && restore != -1)
            conn->flags |= EM__CONN_SET_NONBLOCK;
    }
    em__conn_start(conn, out);
    return 0;
}

/* ---- em_watch -------------------------------------------------------- */

static void on_watch_event(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    em_conn *conn = em__container_of(w, em_conn, watcher);
    const em_handler *h = conn->handler;
    const uint32_t stopped = EM__CONN_CLOSING | EM__CONN_PAUSED;
    if (!(conn->flags & stopped) && (revents & (EM__IN | EM__ERR)) &&
        (conn->flags & EM__CONN_NOTIFY_READABLE) && h->notify_readable)
        h->notify_readable(conn);
    if (!(conn->flags & stopped) && (revents & (EM__OUT | EM__ERR)) &&
        (conn->flags & EM__CONN_NOTIFY_WRITABLE) && h->notify_writable)
        h->notify_writable(conn);
}

int em_watch(em_loop *loop, int fd, const em_handler *handler, void *arg,
             em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !handler)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    struct stat st;
    int flags;
    int err = check_fd(loop, fd, &st, &flags);
    if (err == 0)
        err = em__poller_check(loop, fd);
    if (err < 0)
        return err;
    /* READ_EOF too: nothing in the core ever reads it, not even the
     * discard of unread input at a graceful close. */
    em_conn *conn = em__conn_new(loop, handler, arg, fd,
                                 EM__CONN_WATCH_ONLY | EM__CONN_READ_EOF);
    if (!conn)
        return -ENOMEM;
    conn->transport = &em__watch_transport;
    conn->watcher.on_event = on_watch_event;
    em__conn_start(conn, out);
    return 0;
}

static int is_watch(const em_conn *conn)
{
    return (conn->flags & EM__CONN_WATCH_ONLY) && !conn->fdx;
}

int em_is_watch_only(const em_conn *conn)
{
    return conn && is_watch(conn) ? 1 : 0;
}

static int set_notify(em_conn *conn, uint32_t flag, int on, int has_callback)
{
    if (!conn)
        return -EINVAL;
    if (!is_watch(conn))
        return -EOPNOTSUPP;
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    if (on && !has_callback)
        return -EINVAL; /* level-triggered with nobody to drain: a spin */
    if (on)
        conn->flags |= flag;
    else
        conn->flags &= ~flag;
    em__conn_update_interest(conn);
    /* The backend refused (the owner closed the descriptor): closed now. */
    return conn->flags & EM__CONN_CLOSING ? conn->close_reason : 0;
}

int em_set_notify_readable(em_conn *conn, int on)
{
    return set_notify(conn, EM__CONN_NOTIFY_READABLE, on,
                      conn && conn->handler->notify_readable);
}

int em_set_notify_writable(em_conn *conn, int on)
{
    return set_notify(conn, EM__CONN_NOTIFY_WRITABLE, on,
                      conn && conn->handler->notify_writable);
}

int em_is_notify_readable(const em_conn *conn)
{
    return conn && is_watch(conn) && (conn->flags & EM__CONN_NOTIFY_READABLE)
               ? 1
               : 0;
}

int em_is_notify_writable(const em_conn *conn)
{
    return conn && is_watch(conn) && (conn->flags & EM__CONN_NOTIFY_WRITABLE)
               ? 1
               : 0;
}

/* ---- em_detach, em_get_fd -------------------------------------------- */

int em_detach(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    if (conn->tls || (conn->fdx && conn->fdx->kind != EM__FDX_FILE))
        return -EOPNOTSUPP;
    int fd = conn->watcher.fd;
    if (fd < 0)
        return -ENOTCONN; /* a connect still resolving its name */
    /* Out of the backend now, while fd surely names the same file: the
     * caller owns it from here and may close it at once. */
    em__poller_set(conn->loop, &conn->watcher, 0);
    if (conn->flags & EM__CONN_SET_NONBLOCK) {
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0)
            fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    }
    conn->watcher.fd = -1;
    em__conn_close_now(conn, 0);
    return fd;
}

int em_get_fd(const em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    return conn->watcher.fd >= 0 ? conn->watcher.fd : -EBADF;
}
