/*
 * connection.c - a connection's life: read path, write path, close, unbind.
 *
 * Reads go into the loop's one 64 KiB buffer, a few times per wakeup, and
 * stop at a short read: the socket is then almost surely empty, and the
 * level-triggered backend reports it again if not, so a 64-byte echo costs
 * one read, one write and a share of epoll_wait. No allocation per read.
 *
 * Writes happen inside em_send_data when nothing is queued; only what the
 * kernel refuses is queued, and write interest is armed only then.
 *
 * Closing never calls back into the caller: em_close_connection and errors
 * move the connection to loop->pending_unbind; em__conn_reap (after each
 * callback batch) closes the descriptor, runs unbind once and frees the
 * memory. That gives EventMachine's guarantees: unbind exactly once, after
 * every other callback, never re-entrantly, and a connection pointer stays
 * valid until its unbind returns.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

em_conn *em__conn_new(em_loop *loop, const em_handler *handler, void *arg,
                      int fd, uint32_t flags)
{
    return em__conn_new_extra(loop, handler, arg, fd, flags, 0);
}

em_conn *em__conn_new_extra(em_loop *loop, const em_handler *handler, void *arg,
                            int fd, uint32_t flags, size_t extra)
{
    size_t state = extra ? EM__STATE_SPAN(handler->state_size) + extra
                         : handler->state_size;
    em_conn *conn = calloc(1, sizeof(*conn) + state);
    if (!conn)
        return NULL;
    conn->loop = loop;
    if (em__id_assign(conn) < 0) {
        free(conn);
        return NULL;
    }
    conn->watcher.fd = fd;
    conn->watcher.on_event = em__conn_on_event;
    conn->handler = handler;
    conn->arg = arg;
    conn->transport = &em__socket_transport;
    conn->flags = flags;
    conn->last_activity_ns = loop->now_ns;
    conn->connect_timeout_ms = EM__DEFAULT_CONNECT_TIMEOUT_MS;
    em__list_init(&conn->timeout_link);
    em__list_push_back(&loop->conns, &conn->link);
    loop->conn_count++;
    return conn;
}

static int is_closing(const em_conn *conn)
{
    return (conn->flags & EM__CONN_CLOSING) != 0;
}

/* ---- interest -------------------------------------------------------- */

static unsigned wanted_interest(const em_conn *conn)
{
    uint32_t f = conn->flags;
    if (f & EM__CONN_CLOSING || conn->watcher.fd < 0)
        return 0;
    if (f & EM__CONN_CONNECTING)
        return EM__OUT;
    if (f & EM__CONN_PAUSED)
        return 0;
    if (f & EM__CONN_WATCH_ONLY)
        return (f & EM__CONN_NOTIFY_READABLE ? EM__IN : 0) |
               (f & EM__CONN_NOTIFY_WRITABLE ? EM__OUT : 0);
    unsigned interest = 0;
    if (!(f & (EM__CONN_READ_EOF | EM__CONN_READ_PAUSED | EM__CONN_THROTTLED |
               EM__CONN_FRAMER_HELD)))
        interest |= EM__IN;
    if (conn->out.head)
        interest |= EM__OUT;
    if (conn->tls)
        return em__tls_interest(conn, interest);
    return interest;
}

void em__conn_update_interest(em_conn *conn)
{
    unsigned interest = wanted_interest(conn);
    if (conn->fdx)
        interest = em__fdx_interest(conn, interest);
    int err = em__poller_set(conn->loop, &conn->watcher, interest);
    if (err < 0)
        em__conn_close_now(conn, err);
}

/* ---- closing --------------------------------------------------------- */

void em__conn_close_now(em_conn *conn, int reason)
{
    if (is_closing(conn))
        return;
    conn->flags |= EM__CONN_CLOSING;
    conn->close_reason = reason;
    if (conn->transport->closing)
        conn->transport->closing(conn);
    em__timeout_disarm(conn);
    em__list_remove(&conn->link);
    em__list_push_back(&conn->loop->pending_unbind, &conn->link);
    em__loop_work_added(conn->loop);
}

/* close(2) on a socket with unread input sends RST instead of FIN, and an
 * RST can destroy the reply we just flushed before the peer reads it (a
 * client that pipelined more requests than we answer). So a graceful close
 * discards what is readable first; a bounded effort, not a lingering close. */
static void discard_unread_input(em_conn *conn)
{
    /* Raw bytes, past any transport: under TLS they would only be
     * decrypted to be thrown away. */
    em_loop *loop = conn->loop;
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(conn->watcher.fd, loop->read_buf,
                         sizeof(loop->read_buf), MSG_DONTWAIT);
        if (n < (ssize_t)sizeof(loop->read_buf))
            return;
    }
}

/* Releases everything but the struct; leaves it reusable by em_reconnect. */
static void conn_release_io(em_conn *conn)
{
    em__connect_free(conn);
    if (conn->relay)
        em__relay_release(conn);
    em__outq_clear(conn, &conn->out);
    if (conn->watcher.fd >= 0) {
        if ((conn->flags & EM__CONN_CLOSE_AFTER_WRITING) &&
            !(conn->flags & EM__CONN_READ_EOF) && conn->close_reason == 0)
            discard_unread_input(conn);
        em__poller_forget(conn->loop, &conn->watcher);
        conn->transport->close(conn);
    }
}

static void conn_unbind(em_loop *loop, em_conn *conn)
{
    em__list_remove(&conn->link);
    conn_release_io(conn);
    if (conn->fdx && em__proc_hold_unbind(conn))
        return; /* unbind waits for the child's exit (process.c) */
    conn->flags |= EM__CONN_IN_UNBIND;
    conn->flags &= ~EM__CONN_RECONNECTED;
    em__id_hide(conn); /* gone for em_conn_lookup, as in EventMachine */
    if (conn->handler->unbind)
        conn->handler->unbind(conn, conn->close_reason);
    conn->flags &= ~EM__CONN_IN_UNBIND;
    if (conn->tls)
        em__tls_free(conn); /* after unbind: its getters work there */
    if (conn->flags & EM__CONN_RECONNECTED) {
        conn->flags &= ~EM__CONN_RECONNECTED;
        em__id_renew(conn);
        if (conn->framer)
            em__framer_reset(conn);
        return; /* em_reconnect linked it into loop->conns again */
    }
    loop->conn_count--;
    em__conn_free(conn);
}

void em__conn_discard(em_conn *conn)
{
    em__list_remove(&conn->link);
    conn->loop->conn_count--;
    em__conn_free(conn);
}

void em__conn_start(em_conn *conn, em_conn **out)
{
    if (out)
        *out = conn;
    if (conn->handler->post_init)
        conn->handler->post_init(conn, conn->arg);
    if (!(conn->flags & EM__CONN_CLOSING))
        em__conn_established(conn);
}

void em__conn_free(em_conn *conn)
{
    if (conn->fdx)
        em__fdx_free(conn);
    if (conn->framer)
        em__framer_free(conn);
    free(conn->relay);
    em__id_release(conn);
    free(conn->remote_host);
    free(conn);
}

static void free_dead_servers(em_loop *loop)
{
    while (!em__list_empty(&loop->dead_servers)) {
        em_server *server =
            em__container_of(loop->dead_servers.next, em_server, link);
        em__list_remove(&server->link);
        free(server);
    }
}

void em__conn_reap(em_loop *loop)
{
    while (!em__list_empty(&loop->pending_unbind)) {
        em_conn *conn =
            em__container_of(loop->pending_unbind.next, em_conn, link);
        conn_unbind(loop, conn);
    }
    if (!em__list_empty(&loop->dead_servers))
        free_dead_servers(loop);
    if (loop->fswatch)
        em__fswatch_reap(loop);
}

/* ---- write path ------------------------------------------------------ */

/* Traffic: idle time restarts, and so does a pending inactivity timeout. */
static inline void touch(em_conn *conn)
{
    conn->last_activity_ns = conn->loop->now_ns;
    if (conn->timeout_queue)
        em__timeout_requeue(conn);
}

void em__conn_touch(em_conn *conn)
{
    touch(conn);
}

/* The queue is empty: a close after writing or a half-close may go ahead.
 * Returns 1 when the connection closed. */
static int finish_close_or_shutdown(em_conn *conn)
{
    if (conn->flags & EM__CONN_CLOSE_AFTER_WRITING) {
        em__conn_close_now(conn, 0);
        return 1;
    }
    if (conn->flags & EM__CONN_SHUT_PENDING) {
        conn->flags &= ~EM__CONN_SHUT_PENDING;
        conn->flags |= EM__CONN_WRITE_SHUT;
        int err = conn->transport->shutdown_write(conn);
        if (err < 0 && err != -ENOTCONN) {
            em__conn_close_now(conn, err);
            return 1;
        }
    }
    return 0;
}

/* The queue just became empty: finish what waited for that. During a TLS
 * handshake close_notify and FIN wait; its end flushes and comes back. */
static void queue_drained(em_conn *conn)
{
    if (!(conn->flags & EM__CONN_HANDSHAKING) && finish_close_or_shutdown(conn))
        return;
    if (conn->flags & EM__CONN_WAS_QUEUED) {
        conn->flags &= ~EM__CONN_WAS_QUEUED;
        if (conn->handler->drained)
            conn->handler->drained(conn);
    }
}

void em__conn_flush(em_conn *conn)
{
    struct iovec iov[EM__IOV_MAX];
    while (conn->out.head) {
        em__chunk *head = conn->out.head;
        ssize_t n;
        if (head->kind == EM__CHUNK_MEMORY) {
            int count = em__outq_iov(&conn->out, iov, EM__IOV_MAX);
            n = conn->transport->writev(conn, iov, count);
        } else {
            n = em__flush_range(conn, head);
        }
        if (n == -EAGAIN)
            break;
        if (n < 0) {
            em__conn_close_now(conn, (int)n);
            return;
        }
        touch(conn);
        if (head->kind == EM__CHUNK_MEMORY) {
            em__outq_consume(&conn->out, (size_t)n);
            continue;
        }
        em__fd_range *done = em__outq_advance_range(&conn->out, (size_t)n);
        if (done) {
            em__range_finish(conn, done, 0);
            if (is_closing(conn))
                return;
        }
    }
    if (conn->relay)
        em__flow_after_drain(conn);
    if (!conn->out.head)
        queue_drained(conn);
    if (!is_closing(conn))
        em__conn_update_interest(conn);
}

int em__conn_send_refusal(const em_conn *conn)
{
    if (conn->flags & EM__CONN_WATCH_ONLY)
        return -EOPNOTSUPP; /* em_watch'ed: never written */
    if (conn->flags & EM__CONN_IN_UNBIND)
        return -ENOTCONN;
    /* close_connection(conn, 1) gives -EPIPE even once the close is done. */
    if (conn->flags & EM__CONN_CLOSING)
        return conn->flags & EM__CONN_CLOSE_AFTER_WRITING ? -EPIPE : -ENOTCONN;
    return -EPIPE;
}

static int send_refused(em_conn *conn, const void *data, size_t len)
{
    if ((conn->flags & EM__SEND_REFUSED) == EM__CONN_DATAGRAM)
        return em__dgram_reply(conn, data, len);
    return em__conn_send_refusal(conn);
}

#define EM__WRITE_WAITS                                                        \
    (EM__CONN_CONNECTING | EM__CONN_PAUSED | EM__CONN_HANDSHAKING)

static int can_write_now(const em_conn *conn)
{
    return !(conn->flags & (EM__WRITE_WAITS | EM__CONN_CORKED)) &&
           !conn->out.head;
}

void em__conn_reading_changed(em_conn *conn)
{
    em__conn_update_interest(conn);
    if (conn->tls)
        em__tls_schedule(conn); /* plaintext may wait inside OpenSSL */
    if (conn->framer)
        em__framer_wake(conn); /* input held since the pause */
}

void em__conn_uncork(em_conn *conn)
{
    conn->flags &= ~EM__CONN_CORKED;
    if (conn->out.head && !(conn->flags & (EM__WRITE_WAITS | EM__CONN_CLOSING)))
        em__conn_flush(conn);
}

/* Writes what the transport takes now. Returns the bytes written (0 when
 * it took none) or, after closing conn, the negative errno. */
static ssize_t write_now(em_conn *conn, const struct iovec *iov, int count)
{
    ssize_t n = conn->transport->writev(conn, iov, count);
    if (n == -EAGAIN)
        return 0;
    if (n < 0) {
        em__conn_close_now(conn, (int)n);
        return n;
    }
    if (n > 0)
        touch(conn);
    return n;
}

void em__conn_queued(em_conn *conn)
{
    conn->flags |= EM__CONN_WAS_QUEUED;
    if (conn->relay)
        em__flow_after_growth(conn);
    em__conn_update_interest(conn);
}

int em_send_data(em_conn *conn, const void *data, size_t len)
{
    if (!conn || (!data && len > 0))
        return -EINVAL;
    if (conn->flags & EM__SEND_REFUSED)
        return send_refused(conn, data, len);
    if (len == 0)
        return 0;

    const char *bytes = data;
    if (can_write_now(conn)) {
        struct iovec iov = {.iov_base = (void *)bytes, .iov_len = len};
        ssize_t n = write_now(conn, &iov, 1);
        if (n < 0)
            return (int)n;
        bytes += n;
        len -= (size_t)n;
        if (len == 0)
            return 0;
    }
    int err = em__outq_append(&conn->out, bytes, len);
    if (err < 0)
        return err;
    em__conn_queued(conn);
    return 0;
}

/* A datagram is one message: its pieces are gathered first. (A stack
 * buffer for small ones trips GCC's -Wmaybe-uninitialized at -O2: it cannot
 * see the loop fill all `total` bytes.) */
static int send_gathered(em_conn *conn, const struct iovec *iov, int count,
                         size_t total)
{
    char *msg = malloc(total ? total : 1);
    if (!msg)
        return -ENOMEM;
    size_t at = 0;
    for (int i = 0; i < count; i++) {
        if (iov[i].iov_len)
            memcpy(msg + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    int err = em_send_data(conn, msg, total);
    free(msg);
    return err;
}

/* em_send_data for several pieces: one writev when the queue is empty, so
 * a header and a body (a frame prefix and its frame) leave together. */
int em_send_datav(em_conn *conn, const struct iovec *iov, int count)
{
    if (!conn || count < 0 || (!iov && count > 0))
        return -EINVAL;
    size_t total = 0;
    for (int i = 0; i < count; i++) {
        if (!iov[i].iov_base && iov[i].iov_len > 0)
            return -EINVAL;
        if (total + iov[i].iov_len < total)
            return -EINVAL;
        total += iov[i].iov_len;
    }
    if (count <= 1)
        return em_send_data(conn, count ? iov[0].iov_base : NULL,
                            count ? iov[0].iov_len : 0);
    if ((conn->flags & EM__SEND_REFUSED) == EM__CONN_DATAGRAM)
        return send_gathered(conn, iov, count, total);
    if (conn->flags & EM__SEND_REFUSED)
        return em__conn_send_refusal(conn);
    if (total == 0)
        return 0;
    size_t sent = 0;
    if (can_write_now(conn)) {
        ssize_t n =
            write_now(conn, iov, count < EM__IOV_MAX ? count : EM__IOV_MAX);
        if (n < 0)
            return (int)n;
        sent = (size_t)n;
        if (sent == total)
            return 0;
    }
    for (int i = 0; i < count; i++) {
        size_t len = iov[i].iov_len;
        const char *bytes = iov[i].iov_base;
        if (sent >= len) {
            sent -= len;
            continue;
        }
        int err = em__outq_append(&conn->out, bytes + sent, len - sent);
        sent = 0;
        if (err < 0) { /* earlier pieces are queued: the stream is broken */
            em__conn_close_now(conn, err);
            return err;
        }
    }
    em__conn_queued(conn);
    return 0;
}

size_t em_get_outbound_data_size(const em_conn *conn)
{
    return conn ? conn->out.bytes : 0;
}

/* ---- read path ------------------------------------------------------- */

/* Peer sent FIN: what we still owe it goes out first, then we close. */
void em__conn_peer_eof(em_conn *conn)
{
    if (conn->framer) {
        em__framer_eof(conn); /* a last unterminated line, or an error */
        if (is_closing(conn))
            return;
    }
    conn->flags |= EM__CONN_READ_EOF;
    if (!conn->out.head) {
        em__conn_close_now(conn, 0);
        return;
    }
    conn->flags |= EM__CONN_CLOSE_AFTER_WRITING;
    em__conn_update_interest(conn);
}

int em__conn_can_read(const em_conn *conn)
{
    return !(conn->flags &
             (EM__CONN_CLOSING | EM__CONN_PAUSED | EM__CONN_READ_EOF |
              EM__CONN_CONNECTING | EM__CONN_READ_PAUSED | EM__CONN_THROTTLED |
              EM__CONN_FRAMER_HELD));
}

void em__conn_read(em_conn *conn)
{
    em_loop *loop = conn->loop;
    for (int i = 0; i < EM__READS_PER_WAKEUP && em__conn_can_read(conn); i++) {
        ssize_t n =
            conn->transport->read(conn, loop->read_buf, sizeof(loop->read_buf));
        if (n == -EAGAIN)
            return;
        if (n < 0) {
            em__conn_close_now(conn, (int)n);
            return;
        }
        if (n == 0) {
            em__conn_peer_eof(conn);
            return;
        }
        touch(conn);
        if (conn->relay && conn->relay->proxy)
            em__proxy_deliver(conn, loop->read_buf, (size_t)n);
        else
            em__conn_deliver(conn, loop->read_buf, (size_t)n);
        if ((size_t)n < sizeof(loop->read_buf))
            return;
    }
}

void em__conn_on_event(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    em_conn *conn = em__container_of(w, em_conn, watcher);
    if (is_closing(conn))
        return;
    if (conn->flags & EM__CONN_CONNECTING) {
        em__connect_on_writable(conn);
        return;
    }
    if (revents & (EM__IN | EM__ERR))
        em__conn_read(conn);
    if ((revents & (EM__OUT | EM__ERR)) && !is_closing(conn) &&
        !(conn->flags & EM__CONN_PAUSED) && conn->out.head)
        em__conn_flush(conn);
}

/* ---- established ----------------------------------------------------- */

void em__conn_established(em_conn *conn)
{
    conn->flags &= ~EM__CONN_CONNECTING;
    conn->last_activity_ns = conn->loop->now_ns;
    em__timeout_disarm(conn);
    if (conn->inactivity_ms &&
        em__timeout_arm(conn, (uint64_t)conn->inactivity_ms * 1000000u) < 0) {
        em__conn_close_now(conn, -ENOMEM);
        return;
    }
    if ((conn->flags & EM__CONN_OUTBOUND) &&
        conn->handler->connection_completed)
        conn->handler->connection_completed(conn);
    if (is_closing(conn))
        return;
    if (conn->out.head && !(conn->flags & EM__CONN_PAUSED))
        em__conn_flush(conn);
    else if (!conn->out.head && conn->flags & (EM__CONN_CLOSE_AFTER_WRITING |
                                               EM__CONN_SHUT_PENDING))
        queue_drained(conn);
    if (!is_closing(conn))
        em__conn_update_interest(conn);
    if (conn->tls && !is_closing(conn))
        em__tls_schedule(conn); /* the handshake starts now */
}

/* ---- public control -------------------------------------------------- */

int em_close_connection(em_conn *conn, int after_writing)
{
    if (!conn)
        return -EINVAL;
    if (is_closing(conn) || (conn->flags & EM__CONN_IN_UNBIND))
        return 0;
    if (!after_writing) {
        conn->flags &= ~EM__CONN_CLOSE_AFTER_WRITING; /* upgraded */
        em__conn_close_now(conn, 0);
        return 0;
    }
    conn->flags |= EM__CONN_CLOSE_AFTER_WRITING;
    /* out.bytes too: a datagram socket queues outside out.head. */
    if (!conn->out.head && conn->out.bytes == 0 &&
        !(conn->flags & (EM__CONN_CONNECTING | EM__CONN_HANDSHAKING)))
        em__conn_close_now(conn, 0);
    return 0;
}

int em_close_write(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (conn->flags & EM__CONN_DATAGRAM)
        return -EOPNOTSUPP; /* no stream to end */
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    if (conn->flags & (EM__CONN_SHUT_PENDING | EM__CONN_WRITE_SHUT))
        return 0;
    conn->flags |= EM__CONN_SHUT_PENDING;
    if (!conn->out.head &&
        !(conn->flags & (EM__CONN_CONNECTING | EM__CONN_HANDSHAKING)))
        queue_drained(conn);
    return 0;
}

int em_pause(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    conn->flags |= EM__CONN_PAUSED;
    em__conn_update_interest(conn);
    return 0;
}

int em_resume(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    conn->flags &= ~EM__CONN_PAUSED;
    em__conn_reading_changed(conn);
    if (conn->flags & EM__CONN_DATAGRAM)
        em__dgram_resume(conn); /* datagrams read before the pause */
    return 0;
}

int em_is_paused(const em_conn *conn)
{
    return conn && (conn->flags & EM__CONN_PAUSED) ? 1 : 0;
}

int em_is_connecting(const em_conn *conn)
{
    return conn && (conn->flags & EM__CONN_CONNECTING) ? 1 : 0;
}

void *em_conn_state(const em_conn *conn)
{
    if (!conn || conn->handler->state_size == 0)
        return NULL;
    return (void *)conn->state;
}

em_loop *em_conn_loop(const em_conn *conn)
{
    return conn ? conn->loop : NULL;
}

void *em_conn_arg(const em_conn *conn)
{
    return conn ? conn->arg : NULL;
}

/* ---- timeouts -------------------------------------------------------- */

static int seconds_to_ms(double seconds, uint32_t *ms)
{
    if (!(seconds >= 0.0) || seconds > 4294967.0)
        return -EINVAL;
    double rounded = seconds * 1000.0 + 0.5;
    *ms = (uint32_t)rounded;
    if (seconds > 0.0 && *ms == 0)
        *ms = 1;
    return 0;
}

int em_set_comm_inactivity_timeout(em_conn *conn, double seconds)
{
    uint32_t ms;
    if (!conn || seconds_to_ms(seconds, &ms) < 0)
        return -EINVAL;
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    conn->inactivity_ms = ms;
    if (conn->flags & EM__CONN_CONNECTING)
        return 0; /* armed once the connection is established */
    return em__timeout_arm(conn, (uint64_t)ms * 1000000u);
}

double em_get_comm_inactivity_timeout(const em_conn *conn)
{
    return conn ? conn->inactivity_ms / 1000.0 : 0.0;
}

int em_set_pending_connect_timeout(em_conn *conn, double seconds)
{
    uint32_t ms;
    if (!conn || seconds_to_ms(seconds, &ms) < 0)
        return -EINVAL;
    if (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND))
        return -ENOTCONN;
    conn->connect_timeout_ms = ms;
    if (!(conn->flags & EM__CONN_CONNECTING))
        return 0;
    /* Counted from now: the caller chose a new budget for the attempt. */
    return em__timeout_arm(conn, (uint64_t)ms * 1000000u);
}

double em_get_pending_connect_timeout(const em_conn *conn)
{
    return conn ? conn->connect_timeout_ms / 1000.0 : 0.0;
}

double em_get_idle_time(const em_conn *conn)
{
    if (!conn || conn->loop->now_ns < conn->last_activity_ns)
        return 0.0;
    return (double)(conn->loop->now_ns - conn->last_activity_ns) / 1e9;
}

/* ---- after fork (fork.c) --------------------------------------------- */

/* Unlinked from every list first, while its neighbours still live, then
 * released piece by piece; conn_release_io's path is not taken: it would
 * discard unread input, send close_notify and run done callbacks. */
void em__conn_forget(em_conn *conn)
{
    em__list_remove(&conn->link);
    em__timeout_disarm(conn);
    if (conn->connect)
        em__connect_forget(conn);
    if (conn->relay)
        em__proxy_forget(conn);
    em__outq_forget(&conn->out);
    if (conn->watcher.fd >= 0) {
        if (conn->transport->forget)
            conn->transport->forget(conn);
        else
            conn->transport->close(conn);
    }
    if (conn->tls)
        em__tls_free(conn); /* memory only: SSL_free sends nothing */
    if (conn->fdx)
        em__fdx_forget(conn);
    if (conn->framer)
        em__framer_forget(conn);
    free(conn->relay);
    free(conn->remote_host);
    free(conn);
}
