/*
 * proxy.c - em_proxy_incoming_to: a source connection's input goes to a
 * target connection's output.
 *
 * Between two plain sockets the bytes never enter user space: the source
 * is spliced into a pipe, and the pipe's bytes join the target's outbound
 * queue as a PIPE item, which the target's flush splices to its socket.
 * Because the item sits in the queue like any other, bytes the program
 * sends to the target with em_send_data stay in order with proxied ones,
 * and em_get_outbound_data_size and the watermarks count them. Several
 * PIPE items may refer to the same pipe (proxied bytes, then a program's
 * bytes, then proxied bytes again): the pipe is a FIFO and each item just
 * counts its share.
 *
 * Otherwise (TLS on either side) the source reads as usual and its chunks
 * are sent to the target instead of to receive_data: the buffered path,
 * with the same limits and callbacks.
 *
 * bufsize is the target's high watermark with the source as the throttled
 * connection (flow.c): the source stops reading when that much waits at
 * the target and resumes at half. A pipe can also fill with fewer bytes
 * than its nominal size (splice moves socket buffers, not pages), so a
 * splice that finds the pipe full while the socket has data throttles the
 * source too, until the target drains the pipe; without that the level-
 * triggered source would spin.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_BUFSIZE (1024 * 1024)
/* 128 KiB: on loopback 64 KiB pipes made twice the splices and 256 KiB or
 * 1 MiB pipes cost more CPU per byte than copying (bench/stream_run.sh). */
#define PIPE_MAX (128 * 1024)

struct em__proxy {
    em_conn *source;
    em_conn *target;
    em__pipe *pipe;  /* NULL on the buffered path */
    uint64_t length; /* 0 = unlimited */
    uint64_t moved;
    size_t bufsize;
    int pipe_full; /* the source is throttled until the pipe drains */
    em__watcher_fn source_on_event; /* restored when proxying ends */
};

/* ---- the pipe --------------------------------------------------------- */

static int pipe_new(size_t bufsize, em__pipe **out)
{
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    em__pipe *p = calloc(1, sizeof(*p));
    if (!p) {
        close(fds[0]);
        close(fds[1]);
        return -ENOMEM;
    }
    p->rd = fds[0];
    p->wr = fds[1];
    p->refs = 1;
    /* Best effort: fewer splices per byte when the kernel allows it. */
    int size = (int)(bufsize < PIPE_MAX ? bufsize : PIPE_MAX);
    if (size > 65536)
        (void)fcntl(p->wr, F_SETPIPE_SZ, size);
    *out = p;
    return 0;
}

void em__pipe_release(em__pipe *pipe)
{
    if (--pipe->refs > 0)
        return;
    close(pipe->rd);
    close(pipe->wr);
    free(pipe);
}

void em__pipe_drained(em__pipe *pipe, size_t n)
{
    pipe->bytes -= n;
    em__proxy *p = pipe->proxy;
    if (!p || !p->pipe_full)
        return;
    p->pipe_full = 0;
    em_conn *target = p->target;
    if (target->out.bytes <= p->bufsize)
        em__flow_set_throttled(p->source, 0);
}

/* ---- ending ----------------------------------------------------------- */

static void end_proxy(em__proxy *p)
{
    em_conn *source = p->source;
    em_conn *target = p->target;
    source->relay->proxy = NULL;
    target->relay->proxied_from = NULL;
    em__flow_link(target, 0, 0, source); /* unthrottles the source */
    if (p->source_on_event)
        source->watcher.on_event = p->source_on_event;
    if (p->pipe) {
        p->pipe->proxy = NULL;
        em__pipe_release(p->pipe);
    }
    free(p);
}

static void complete(em__proxy *p)
{
    em_conn *source = p->source;
    end_proxy(p);
    if (source->handler->proxy_completed)
        source->handler->proxy_completed(source);
}

void em__relay_release(em_conn *conn)
{
    em__relay *r = conn->relay;
    if (r->proxy)
        end_proxy(r->proxy);
    if (r->proxied_from) {
        em_conn *source = r->proxied_from;
        end_proxy(source->relay->proxy);
        if (!(source->flags & EM__CONN_CLOSING) &&
            source->handler->proxy_target_unbound)
            source->handler->proxy_target_unbound(source);
    }
    em__flow_unlink_all(conn);
    r->high = 0; /* the struct stays: em_get_proxied_bytes works in unbind */
}

/* ---- the buffered path ------------------------------------------------ */

void em__proxy_deliver(em_conn *conn, const char *data, size_t len)
{
    em__proxy *p = conn->relay->proxy;
    size_t take = len;
    if (p->length && p->length - p->moved < take)
        take = (size_t)(p->length - p->moved);
    em_send_data(p->target, data, take); /* a dead target unbinds soon */
    p->moved += take;
    conn->relay->proxied_bytes += take;
    if (!p->length || p->moved < p->length)
        return;
    complete(p);
    if (take < len && !(conn->flags & EM__CONN_CLOSING))
        em__conn_deliver(conn, data + take, len - take);
}

/* ---- the splice path -------------------------------------------------- */

static int target_can_write(const em_conn *target)
{
    return !(target->flags & (EM__CONN_CONNECTING | EM__CONN_PAUSED |
                              EM__CONN_HANDSHAKING | EM__CONN_CLOSING));
}

/* The pipe is full though the source has bytes: wait for the target. */
static int pipe_is_full(em__proxy *p)
{
    int pending = 0;
    if (ioctl(p->source->watcher.fd, FIONREAD, &pending) < 0 || pending <= 0)
        return 0;
    p->pipe_full = 1;
    em__flow_set_throttled(p->source, 1);
    return 1;
}

/* Moves n spliced bytes into the target's queue and sends what it can. */
static int hand_to_target(em__proxy *p, size_t n)
{
    em__fd_range *range = calloc(1, sizeof(*range));
    if (!range)
        return -ENOMEM;
    range->fd = p->pipe->rd;
    range->end = n;
    range->pipe = p->pipe;
    p->pipe->refs++;
    p->pipe->bytes += n;
    em_conn *target = p->target;
    int err = em__outq_append_range(&target->out, EM__CHUNK_PIPE, range);
    if (err < 0) {
        em__range_finish(NULL, range, 0);
        return err;
    }
    em__flow_after_growth(target);
    if (target_can_write(target))
        em__conn_flush(target);
    else
        em__conn_update_interest(target);
    return 0;
}

static void splice_in(em_conn *conn)
{
    for (int i = 0; i < EM__READS_PER_WAKEUP; i++) {
        em__proxy *p = conn->relay ? conn->relay->proxy : NULL;
        if (!p || !em__conn_can_read(conn))
            return;
        size_t waiting = p->target->out.bytes;
        size_t count = waiting < p->bufsize ? p->bufsize - waiting : 0;
        if (p->length && p->length - p->moved < count)
            count = (size_t)(p->length - p->moved);
        if (count == 0)
            return; /* the watermark throttles the source meanwhile */
        ssize_t n = splice(conn->watcher.fd, NULL, p->pipe->wr, NULL, count,
                           SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n == 0) {
            em__conn_peer_eof(conn);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN && (p->pipe->bytes == 0 || !pipe_is_full(p)))
                return;
            if (errno != EAGAIN)
                em__conn_close_now(conn, -errno);
            return;
        }
        em__conn_touch(conn);
        p->moved += (uint64_t)n;
        conn->relay->proxied_bytes += (uint64_t)n;
        int err = hand_to_target(p, (size_t)n);
        if (err < 0) {
            em__conn_close_now(conn, err);
            return;
        }
        if (p->length && p->moved >= p->length) {
            complete(p);
            return;
        }
    }
}

static void splice_on_event(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    em_conn *conn = em__container_of(w, em_conn, watcher);
    if (conn->flags & EM__CONN_CLOSING)
        return;
    if (conn->flags & EM__CONN_CONNECTING) {
        em__connect_on_writable(conn);
        return;
    }
    if (revents & (EM__IN | EM__ERR))
        splice_in(conn);
    if ((revents & (EM__OUT | EM__ERR)) &&
        !(conn->flags & (EM__CONN_CLOSING | EM__CONN_PAUSED)) && conn->out.head)
        em__conn_flush(conn);
}

/* ---- starting and stopping -------------------------------------------- */

int em_proxy_incoming_to(em_conn *from, em_conn *to, size_t bufsize,
                         size_t length)
{
    if (!from || !to || from == to || from->loop != to->loop)
        return -EINVAL;
    if (em__conn_is_gone(from) || em__conn_is_gone(to))
        return -ENOTCONN;
    if ((from->relay && from->relay->proxy) ||
        (to->relay && to->relay->proxied_from))
        return -EBUSY;
    if (!em__relay_get(from) || !em__relay_get(to))
        return -ENOMEM;
    em__proxy *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->source = from;
    p->target = to;
    p->length = length;
    p->bufsize = bufsize ? bufsize : DEFAULT_BUFSIZE;
    int splices = from->transport == &em__socket_transport &&
                  to->transport == &em__socket_transport;
    int err = splices ? pipe_new(p->bufsize, &p->pipe) : 0;
    if (err == 0)
        err = em__flow_link(to, p->bufsize, p->bufsize / 2, from);
    if (err < 0) {
        if (p->pipe)
            em__pipe_release(p->pipe);
        free(p);
        return err;
    }
    from->relay->proxy = p;
    to->relay->proxied_from = from;
    if (splices) {
        p->pipe->proxy = p;
        p->source_on_event = from->watcher.on_event;
        from->watcher.on_event = splice_on_event;
    }
    return 0;
}

int em_stop_proxying(em_conn *from)
{
    if (!from)
        return -EINVAL;
    if (!from->relay || !from->relay->proxy)
        return -ENOENT;
    end_proxy(from->relay->proxy);
    return 0;
}

uint64_t em_get_proxied_bytes(const em_conn *from)
{
    return from && from->relay ? from->relay->proxied_bytes : 0;
}

/* A forked child forgets conn's proxy (fork.c): the pipe loses the proxy's
 * reference; the target, freed on its own, is not touched, nor is any
 * throttled connection's interest (that would be an epoll_ctl on the
 * parent's epoll set). */
void em__proxy_forget(em_conn *conn)
{
    em__proxy *p = conn->relay->proxy;
    if (!p)
        return;
    if (p->pipe) {
        p->pipe->proxy = NULL;
        em__pipe_release(p->pipe);
    }
    free(p);
    conn->relay->proxy = NULL;
}
