/*
 * datagram.c - UDP sockets as connections: em_open_datagram_socket,
 * em_send_datagram, em_send_data as a reply, em_datagram_port.
 *
 * A datagram socket is an em_conn with EM__CONN_DATAGRAM, its own watcher
 * callback and its own transport, so the stream read path has no datagram
 * branch; em_send_data reaches em__dgram_reply through the refusal-flags
 * test it makes anyway. Unbind, close, pause, inactivity timeout, ids and
 * the state area work as for streams.
 *
 * Reading: one recvmmsg fills up to EM__DGRAM_BATCH datagrams per call, at
 * most EM__DGRAM_BATCHES calls per wakeup (fairness), stopping as soon as a
 * call returns fewer than it asked for: the socket was empty then, and the
 * level-triggered backend reports it again if not. So a wakeup with k
 * datagrams costs one syscall instead of k + 1 recvfrom calls (the last one
 * for EAGAIN). Every datagram goes to receive_data whole: each batch slot is
 * 64 KiB, more than the largest UDP payload (65,507 bytes over IPv4, 65,527
 * over IPv6), so nothing is ever truncated (EventMachine cut at 16 KiB).
 * The slots (1 MiB of address space) are allocated once per loop, at its
 * first datagram socket, and shared by all of them; only the pages that
 * datagrams touch become resident. Nothing is allocated per datagram.
 * Alternatives rejected: slicing the loop's 64 KiB read buffer into small
 * slots truncates big datagrams; a recvfrom loop is one syscall per
 * datagram plus one for EAGAIN, which is what libuv does.
 *
 * Before each receive_data the sender's address is copied to the
 * connection, so em_get_peername names it (and still does after the
 * callback) and em_send_data replies to it, as in EventMachine.
 *
 * em_pause inside receive_data stops delivery before the next datagram, but
 * the rest of the batch is already out of the kernel: it is copied aside
 * (one allocation, on this rare path) and delivered first after em_resume,
 * from a zero-delay timer when no new datagram wakes the socket first.
 *
 * Sending: literals only (em__addr_literal); resolving a name here would
 * block the loop. em_send_datagram is one sendto, at once, and its error
 * (EMSGSIZE, EACCES, ENETUNREACH, a pending ICMP error with IP_RECVERR, ...)
 * is returned and nothing else happens: the socket stays open and no other
 * datagram is touched. When the socket buffer is full (EAGAIN), or while
 * paused, or behind earlier queued datagrams, the datagram is queued
 * (EventMachine queued too) and sent in order when writable; conn->out.bytes
 * counts queued payload bytes, so em_get_outbound_data_size, drained and
 * close-after-writing keep their meaning. A queued datagram that then fails
 * is dropped, as the network may drop any datagram: its sender has moved on.
 * Sizes above the protocol's maximum are refused before anything else.
 *
 * Replies (em_send_data) made inside receive_data are copied into the
 * batch's reply area and leave together, one sendmmsg when the batch's
 * callbacks are done (or earlier: before an em_send_datagram on the same
 * socket, so order holds, or when 16 wait or 64 KiB are used). That saves
 * a syscall per reply: measured, about a fifth of an echo server's CPU per
 * datagram. The price: a kernel error on a reply is not returned, the reply
 * is dropped like a queued datagram that fails. Replies go to an address a
 * datagram just came from, so the errors that remain possible are rare
 * (a firewall's EPERM, a pending ICMP error with IP_RECVERR, which belongs
 * to an earlier datagram anyway); EMSGSIZE, closing and "no sender yet" are
 * still returned. What the socket refuses with EAGAIN is queued in front.
 *
 * Errors on receive: without IP_RECVERR an unconnected UDP socket hears no
 * ICMP errors. With it (set by the application), the kernel reports one
 * pending error from recv and keeps an error queue that makes epoll report
 * EPOLLERR until read: the error is skipped and the queue drained, so the
 * socket neither closes nor spins. Only errors that mean a broken descriptor
 * (EBADF, ENOTSOCK, EFAULT, EINVAL) close the connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define EM__DGRAM_BATCH 16     /* datagrams per recvmmsg */
#define EM__DGRAM_BATCHES 4    /* recvmmsg calls per wakeup at most */
#define EM__DGRAM_SLOT 65536   /* > the largest UDP payload */
#define EM__DGRAM_FLUSH 64     /* queued datagrams sent per wakeup at most */
#define EM__DGRAM_MAX_V4 65507 /* 65535 - 20 (IPv4) - 8 (UDP) */
#define EM__DGRAM_MAX_V6 65527 /* 65535 - 8 (UDP); jumbograms aside */

typedef union em__dgram_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} em__dgram_addr;

struct em__dgram_batch {
    struct mmsghdr msgs[EM__DGRAM_BATCH];
    struct iovec iov[EM__DGRAM_BATCH];
    em__dgram_addr from[EM__DGRAM_BATCH];
    /* Replies made while a batch is delivered, sent by one sendmmsg. */
    em_conn *cork; /* the connection being delivered to, or NULL */
    int out_count;
    size_t out_used;
    struct mmsghdr out_msgs[EM__DGRAM_BATCH];
    struct iovec out_iov[EM__DGRAM_BATCH];
    em__dgram_addr out_to[EM__DGRAM_BATCH];
    char out_data[EM__DGRAM_SLOT];
    char data[EM__DGRAM_BATCH][EM__DGRAM_SLOT];
};

/* A datagram waiting for the socket to become writable. */
typedef struct em__dgram_out {
    struct em__dgram_out *next;
    em__dgram_addr to;
    socklen_t to_len;
    size_t len;
    char data[];
} em__dgram_out;

/* Datagrams read before em_pause took effect; their bytes follow e[]. */
typedef struct em__dgram_held {
    uint32_t count;
    uint32_t next;
    struct {
        em__dgram_addr from;
        socklen_t from_len;
        uint32_t len;
        size_t off;
    } e[];
} em__dgram_held;

/* Per-connection datagram state, after the handler's (em__conn_extra). */
typedef struct em__dgram {
    em__dgram_addr peer; /* sender of the current or last datagram */
    socklen_t peer_len;  /* 0: nothing received yet */
    int family;          /* the socket's */
    em__dgram_out *out_head;
    em__dgram_out *out_tail;
    em__dgram_held *held;
    em_timer_id held_timer;
} em__dgram;

static em__dgram *dgram_of(const em_conn *conn)
{
    return em__conn_extra((em_conn *)conn);
}

static int is_closing(const em_conn *conn)
{
    return (conn->flags & EM__CONN_CLOSING) != 0;
}

static int can_read(const em_conn *conn)
{
    return !(conn->flags & (EM__CONN_CLOSING | EM__CONN_PAUSED));
}

/* ---- interest -------------------------------------------------------- */

static void set_interest(em_conn *conn)
{
    unsigned interest = 0;
    if (can_read(conn))
        interest = EM__IN | (dgram_of(conn)->out_head ? EM__OUT : 0);
    int err = em__poller_set(conn->loop, &conn->watcher, interest);
    if (err < 0)
        em__conn_close_now(conn, err);
}

static void cork_begin(em_conn *conn);
static void cork_end(em_conn *conn);

/* ---- receiving ------------------------------------------------------- */

static void deliver(em_conn *conn, const em__dgram_addr *from,
                    socklen_t from_len, const char *data, size_t len)
{
    em__dgram *dg = dgram_of(conn);
    dg->peer = *from;
    dg->peer_len = from_len;
    if (conn->handler->receive_data)
        conn->handler->receive_data(conn, data, len);
}

/* Delivers held datagrams while reading is allowed. Returns 1 when none is
 * left and reading may go on. */
static int deliver_held(em_conn *conn)
{
    em__dgram *dg = dgram_of(conn);
    em__dgram_held *h = dg->held;
    const char *bytes = (const char *)&h->e[h->count];
    cork_begin(conn);
    while (h->next < h->count && can_read(conn)) {
        uint32_t i = h->next++;
        deliver(conn, &h->e[i].from, h->e[i].from_len, bytes + h->e[i].off,
                h->e[i].len);
    }
    cork_end(conn);
    if (h->next < h->count)
        return 0;
    dg->held = NULL;
    free(h);
    return can_read(conn);
}

/* Paused in the middle of a batch: keep datagrams [first, n) for later. */
static void hold_rest(em_conn *conn, const struct em__dgram_batch *b, int first,
                      int n)
{
    size_t bytes = 0;
    uint32_t count = (uint32_t)(n - first);
    for (int i = first; i < n; i++)
        bytes += b->msgs[i].msg_len;
    em__dgram_held *h = malloc(sizeof(*h) + count * sizeof(h->e[0]) + bytes);
    if (!h)
        return; /* dropped, as a full socket buffer would have */
    h->count = count;
    h->next = 0;
    char *to = (char *)&h->e[count];
    size_t off = 0;
    for (uint32_t k = 0; k < count; k++) {
        const struct mmsghdr *m = &b->msgs[first + (int)k];
        h->e[k].from = b->from[first + (int)k];
        h->e[k].from_len = m->msg_hdr.msg_namelen;
        h->e[k].len = m->msg_len;
        h->e[k].off = off;
        memcpy(to + off, b->data[first + (int)k], m->msg_len);
        off += m->msg_len;
    }
    dgram_of(conn)->held = h;
}

/* A receive error. Returns 1 to keep reading, 0 to stop this wakeup. */
static int receive_error(em_conn *conn, int err)
{
    switch (err) {
    case EINTR:
        return 1;
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
    case ENOMEM:
    case ENOBUFS:
        return 0;
    case EBADF:
    case ENOTSOCK:
    case EFAULT:
    case EINVAL:
        em__conn_close_now(conn, -err);
        return 0;
    default:
        return 1; /* an earlier send's ICMP error (IP_RECVERR): skipped */
    }
}

static void read_datagrams(em_conn *conn)
{
    em__dgram *dg = dgram_of(conn);
    if (dg->held && !deliver_held(conn))
        return;
    struct em__dgram_batch *b = conn->loop->dgram_batch;
    for (int round = 0; round < EM__DGRAM_BATCHES && can_read(conn); round++) {
        for (int i = 0; i < EM__DGRAM_BATCH; i++)
            b->msgs[i].msg_hdr.msg_namelen = sizeof(b->from[i]);
        int n = recvmmsg(conn->watcher.fd, b->msgs, EM__DGRAM_BATCH, 0, NULL);
        if (n < 0) {
            if (!receive_error(conn, errno))
                return;
            continue;
        }
        em__conn_touch(conn);
        int i = 0;
        cork_begin(conn);
        for (; i < n && can_read(conn); i++)
            deliver(conn, &b->from[i], b->msgs[i].msg_hdr.msg_namelen,
                    b->data[i], b->msgs[i].msg_len);
        cork_end(conn);
        if (i < n) {
            if (!is_closing(conn))
                hold_rest(conn, b, i, n);
            return;
        }
        if (n < EM__DGRAM_BATCH)
            return;
    }
}

/* With IP_RECVERR the error queue keeps EPOLLERR up until it is read. */
static void drain_error_queue(int fd)
{
    char data[64];
    char control[512];
    for (int i = 0; i < 64; i++) {
        struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = control,
                             .msg_controllen = sizeof(control)};
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0 &&
            errno != EINTR)
            return;
    }
}

/* ---- sending --------------------------------------------------------- */

static int is_v4(const em__dgram_addr *a)
{
    return a->sa.sa_family == AF_INET ||
           IN6_IS_ADDR_V4MAPPED(&a->in6.sin6_addr);
}

/* The queue emptied: what waited for that goes ahead. */
static void queue_emptied(em_conn *conn)
{
    set_interest(conn);
    if (conn->flags & EM__CONN_CLOSE_AFTER_WRITING) {
        em__conn_close_now(conn, 0);
        return;
    }
    if (conn->flags & EM__CONN_WAS_QUEUED) {
        conn->flags &= ~EM__CONN_WAS_QUEUED;
        if (conn->handler->drained)
            conn->handler->drained(conn);
    }
}

static void flush(em_conn *conn)
{
    em__dgram *dg = dgram_of(conn);
    for (int i = 0; i < EM__DGRAM_FLUSH && dg->out_head; i++) {
        em__dgram_out *d = dg->out_head;
        ssize_t n =
            sendto(conn->watcher.fd, d->data, d->len, 0, &d->to.sa, d->to_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n >= 0)
            em__conn_touch(conn); /* else dropped: see the top */
        dg->out_head = d->next;
        if (!dg->out_head)
            dg->out_tail = NULL;
        conn->out.bytes -= d->len;
        free(d);
    }
    if (!dg->out_head)
        queue_emptied(conn);
}

static int enqueue(em_conn *conn, const void *data, size_t len,
                   const em__dgram_addr *to, socklen_t to_len)
{
    em__dgram *dg = dgram_of(conn);
    em__dgram_out *d = malloc(sizeof(*d) + len);
    if (!d)
        return -ENOMEM;
    d->next = NULL;
    d->to = *to;
    d->to_len = to_len;
    d->len = len;
    if (len > 0)
        memcpy(d->data, data, len);
    if (dg->out_tail)
        dg->out_tail->next = d;
    else
        dg->out_head = d;
    dg->out_tail = d;
    conn->out.bytes += len;
    conn->flags |= EM__CONN_WAS_QUEUED;
    set_interest(conn);
    return 0;
}

/* ---- replies in batches ---------------------------------------------- */

static void cork_begin(em_conn *conn)
{
    conn->loop->dgram_batch->cork = conn;
}

/* What the socket refused (EAGAIN) goes to the front of the queue: it was
 * sent before anything queued there. */
static void requeue_front(em_conn *conn, struct em__dgram_batch *b, int from)
{
    em__dgram *dg = dgram_of(conn);
    em__dgram_out *first = NULL, *last = NULL;
    for (int i = from; i < b->out_count; i++) {
        size_t len = b->out_iov[i].iov_len;
        em__dgram_out *d = malloc(sizeof(*d) + len);
        if (!d)
            continue; /* dropped, as a full buffer drops */
        d->next = NULL;
        d->to = b->out_to[i];
        d->to_len = b->out_msgs[i].msg_hdr.msg_namelen;
        d->len = len;
        memcpy(d->data, b->out_iov[i].iov_base, len);
        conn->out.bytes += len;
        if (last)
            last->next = d;
        else
            first = d;
        last = d;
    }
    if (!first)
        return;
    last->next = dg->out_head;
    if (!dg->out_head)
        dg->out_tail = last;
    dg->out_head = first;
    conn->flags |= EM__CONN_WAS_QUEUED;
    set_interest(conn);
}

static void cork_flush(em_conn *conn)
{
    struct em__dgram_batch *b = conn->loop->dgram_batch;
    int i = 0;
    while (i < b->out_count) {
        int n = sendmmsg(conn->watcher.fd, &b->out_msgs[i],
                         (unsigned)(b->out_count - i), 0);
        if (n > 0) {
            i += n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            requeue_front(conn, b, i);
            break;
        }
        i++; /* the kernel refused that reply: dropped, see the top */
    }
    if (i > 0)
        em__conn_touch(conn);
    b->out_count = 0;
    b->out_used = 0;
}

static void cork_end(em_conn *conn)
{
    struct em__dgram_batch *b = conn->loop->dgram_batch;
    if (b->out_count)
        cork_flush(conn);
    b->cork = NULL;
}

/* A reply inside receive_data: copied into the batch (which has room: see
 * send_to), sent at cork_end. */
static void cork_add(em_conn *conn, const void *data, size_t len,
                     const em__dgram_addr *to, socklen_t to_len)
{
    struct em__dgram_batch *b = conn->loop->dgram_batch;
    int i = b->out_count++;
    char *copy = b->out_data + b->out_used;
    if (len > 0)
        memcpy(copy, data, len);
    b->out_used += len;
    b->out_to[i] = *to;
    b->out_iov[i].iov_base = copy;
    b->out_iov[i].iov_len = len;
    b->out_msgs[i].msg_hdr.msg_namelen = to_len;
}

/* ---- sending, one datagram -------------------------------------------- */

static int send_to(em_conn *conn, const void *data, size_t len,
                   const em__dgram_addr *to, socklen_t to_len, int reply)
{
    if (len > (is_v4(to) ? EM__DGRAM_MAX_V4 : EM__DGRAM_MAX_V6))
        return -EMSGSIZE;
    em__dgram *dg = dgram_of(conn);
    struct em__dgram_batch *b = conn->loop->dgram_batch;
    int corked = b->cork == conn;
    /* Batched replies leave before anything sent directly, and make room
     * for the next one. A flush may queue what EAGAIN refused: checked
     * below, so nothing overtakes the queue. */
    if (corked && b->out_count &&
        (!reply || b->out_count == EM__DGRAM_BATCH ||
         b->out_used + len > sizeof(b->out_data)))
        cork_flush(conn);
    if (dg->out_head || (conn->flags & EM__CONN_PAUSED))
        return enqueue(conn, data, len, to, to_len);
    if (corked && reply) {
        cork_add(conn, data, len, to, to_len);
        return 0;
    }
    ssize_t n;
    do
        n = sendto(conn->watcher.fd, data, len, 0, &to->sa, to_len);
    while (n < 0 && errno == EINTR);
    if (n >= 0) {
        em__conn_touch(conn);
        return 0;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        return -errno;
    return enqueue(conn, data, len, to, to_len);
}

int em__dgram_reply(em_conn *conn, const void *data, size_t len)
{
    em__dgram *dg = dgram_of(conn);
    if (dg->peer_len == 0)
        return -EDESTADDRREQ; /* nobody has sent anything yet */
    return send_to(conn, data, len, &dg->peer, dg->peer_len, 1);
}

/* host:port as an address of the socket's family: an IPv4 destination from
 * an IPv6 socket becomes v4-mapped and a v4-mapped one from an IPv4 socket
 * plain IPv4. */
static int destination(const em__dgram *dg, const char *host, int port,
                       em__dgram_addr *to, socklen_t *to_len)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (em__addr_literal(host, port, &ss, &len) < 0)
        return -EINVAL; /* a name: see the top */
    memset(to, 0, sizeof(*to));
    if (ss.ss_family == dg->family) {
        memcpy(to, &ss, len);
        *to_len = len;
        return 0;
    }
    if (dg->family == AF_INET6) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        to->in6.sin6_family = AF_INET6;
        to->in6.sin6_port = sin->sin_port;
        to->in6.sin6_addr.s6_addr[10] = 0xff;
        to->in6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&to->in6.sin6_addr.s6_addr[12], &sin->sin_addr, 4);
        *to_len = sizeof(to->in6);
        return 0;
    }
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
    if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
        return -EAFNOSUPPORT;
    to->in.sin_family = AF_INET;
    to->in.sin_port = sin6->sin6_port;
    memcpy(&to->in.sin_addr, &sin6->sin6_addr.s6_addr[12], 4);
    *to_len = sizeof(to->in);
    return 0;
}

int em_send_datagram(em_conn *conn, const void *data, size_t len,
                     const char *host, int port)
{
    if (!conn || (!data && len > 0) || !host || !*host || port <= 0 ||
        port > 65535)
        return -EINVAL;
    if (!(conn->flags & EM__CONN_DATAGRAM))
        return -EOPNOTSUPP;
    if (conn->flags &
        (EM__CONN_IN_UNBIND | EM__CONN_CLOSING | EM__CONN_CLOSE_AFTER_WRITING))
        return em__conn_send_refusal(conn);
    em__dgram_addr to;
    socklen_t to_len;
    int err = destination(dgram_of(conn), host, port, &to, &to_len);
    if (err < 0)
        return err;
    return send_to(conn, data, len, &to, to_len, 0);
}

/* ---- events, pause, names --------------------------------------------- */

static void on_event(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    em_conn *conn = em__container_of(w, em_conn, watcher);
    if (is_closing(conn))
        return;
    if (revents & EM__ERR)
        drain_error_queue(w->fd);
    if (revents & (EM__IN | EM__ERR))
        read_datagrams(conn);
    if ((revents & (EM__OUT | EM__ERR)) && can_read(conn) &&
        dgram_of(conn)->out_head)
        flush(conn);
}

static void deliver_held_later(em_loop *loop, void *arg)
{
    (void)loop;
    em_conn *conn = arg;
    em__dgram *dg = dgram_of(conn);
    dg->held_timer = 0;
    if (dg->held && can_read(conn))
        deliver_held(conn);
}

void em__dgram_resume(em_conn *conn)
{
    em__dgram *dg = dgram_of(conn);
    set_interest(conn); /* also for zero-length datagrams in the queue */
    /* Held datagrams come first; no readiness event will announce them.
     * Without memory for the timer, the next arrival delivers them. */
    if (dg->held && !dg->held_timer && !is_closing(conn))
        em_add_timer(conn->loop, 0, deliver_held_later, conn, &dg->held_timer);
}

int em__dgram_peername(const em_conn *conn, struct sockaddr *addr,
                       socklen_t *len)
{
    const em__dgram *dg = dgram_of(conn);
    if (conn->watcher.fd < 0 || dg->peer_len == 0)
        return -ENOTCONN;
    memcpy(addr, &dg->peer, *len < dg->peer_len ? *len : dg->peer_len);
    *len = dg->peer_len;
    return 0;
}

int em_datagram_port(const em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (!(conn->flags & EM__CONN_DATAGRAM))
        return -EOPNOTSUPP;
    if (conn->watcher.fd < 0)
        return -ENOTCONN;
    em__dgram_addr a;
    socklen_t len = sizeof(a);
    if (getsockname(conn->watcher.fd, &a.sa, &len) < 0)
        return -errno;
    return ntohs(a.sa.sa_family == AF_INET ? a.in.sin_port : a.in6.sin6_port);
}

/* ---- transport -------------------------------------------------------- */

static ssize_t no_stream_read(em_conn *conn, void *buf, size_t len)
{
    (void)conn;
    (void)buf;
    (void)len;
    return -EOPNOTSUPP;
}

static ssize_t no_stream_writev(em_conn *conn, const struct iovec *iov,
                                int count)
{
    (void)conn;
    (void)iov;
    (void)count;
    return -EOPNOTSUPP;
}

static int no_shutdown(em_conn *conn)
{
    (void)conn;
    return -EOPNOTSUPP;
}

static void dgram_close(em_conn *conn)
{
    em__dgram *dg = dgram_of(conn);
    while (dg->out_head) {
        em__dgram_out *next = dg->out_head->next;
        free(dg->out_head);
        dg->out_head = next;
    }
    dg->out_tail = NULL;
    free(dg->held);
    dg->held = NULL;
    if (dg->held_timer) {
        em_cancel_timer(conn->loop, dg->held_timer);
        dg->held_timer = 0;
    }
    close(conn->watcher.fd);
    conn->watcher.fd = -1;
}

/* Reached only through the connection code's generic paths (release). */
static const em__transport dgram_transport = {
    .read = no_stream_read,
    .writev = no_stream_writev,
    .shutdown_write = no_shutdown,
    .close = dgram_close,
};

/* ---- opening ---------------------------------------------------------- */

static int batch_ensure(em_loop *loop)
{
    if (loop->dgram_batch)
        return 0;
    struct em__dgram_batch *b = malloc(sizeof(*b));
    if (!b)
        return -ENOMEM;
    /* Only the headers are written here: the 1 MiB of slots stays
     * untouched, and unbacked, until datagrams arrive. */
    for (int i = 0; i < EM__DGRAM_BATCH; i++) {
        b->iov[i].iov_base = b->data[i];
        b->iov[i].iov_len = EM__DGRAM_SLOT;
        memset(&b->msgs[i], 0, sizeof(b->msgs[i]));
        b->msgs[i].msg_hdr.msg_name = &b->from[i];
        b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
        memset(&b->out_msgs[i], 0, sizeof(b->out_msgs[i]));
        b->out_msgs[i].msg_hdr.msg_name = &b->out_to[i];
        b->out_msgs[i].msg_hdr.msg_iov = &b->out_iov[i];
        b->out_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    b->cork = NULL;
    b->out_count = 0;
    b->out_used = 0;
    loop->dgram_batch = b;
    return 0;
}

void em__dgram_loop_free(em_loop *loop)
{
    free(loop->dgram_batch);
    loop->dgram_batch = NULL;
}

/* A bound, non-blocking UDP socket, or a negative errno. */
static int open_bound(const struct sockaddr *sa, socklen_t len)
{
    int fd =
        socket(sa->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int off = 0;
    /* Dual-stack "::" as for TCP listeners; no SO_REUSEADDR, which for UDP
     * would let a second socket share (and steal from) a bound port. */
    if ((sa->sa_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) < 0) ||
        bind(fd, sa, len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Resolves host synchronously, as em_start_server does (binding is a
 * start-up step), and binds the first address that works. */
static int open_on_name(const char *host, int port)
{
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_DGRAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *list;
    int rc = getaddrinfo(host, service, &hints, &list);
    if (rc == EAI_MEMORY)
        return -ENOMEM;
    if (rc != 0)
        return -ENOENT;
    int fd = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        fd = open_bound(ai->ai_addr, ai->ai_addrlen);
        if (fd >= 0)
            break;
    }
    freeaddrinfo(list);
    return fd;
}

static int socket_family(int fd)
{
    em__dgram_addr a;
    socklen_t len = sizeof(a);
    if (getsockname(fd, &a.sa, &len) < 0)
        return -errno;
    return a.sa.sa_family;
}

int em_open_datagram_socket(em_loop *loop, const char *host, int port,
                            const em_handler *handler, void *arg, em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !handler || port < 0 || port > 65535)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    int err = batch_ensure(loop);
    if (err < 0)
        return err;

    struct sockaddr_storage ss;
    socklen_t len;
    int fd;
    if (em__addr_literal(host, port, &ss, &len) == 0)
        fd = open_bound((struct sockaddr *)&ss, len);
    else
        fd = open_on_name(host, port);
    if (fd < 0)
        return fd;
    int family = socket_family(fd);
    em_conn *conn =
        family < 0 ? NULL
                   : em__conn_new_extra(loop, handler, arg, fd,
                                        EM__CONN_DATAGRAM, sizeof(em__dgram));
    if (!conn) {
        close(fd);
        return family < 0 ? family : -ENOMEM;
    }
    conn->watcher.on_event = on_event;
    conn->transport = &dgram_transport;
    dgram_of(conn)->family = family;
    err = em__poller_set(loop, &conn->watcher, EM__IN);
    if (err < 0) {
        close(fd);
        em__conn_discard(conn);
        return err;
    }
    if (out)
        *out = conn;
    if (handler->post_init)
        handler->post_init(conn, arg);
    return 0;
}
