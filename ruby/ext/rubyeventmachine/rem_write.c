/*
 * rem_write.c - send_data's bytes leave at the end of the reactor turn:
 * everything the turn's callbacks sent to a connection goes out in one
 * write, after every event of the turn was delivered and before the next
 * wait.
 *
 * Why not write inside send_data (libem's em_send_data would): Ruby
 * servers answer with several send_data calls (thin: the header, then the
 * body). Written one by one, the second small segment waits in the kernel
 * for the ACK of the first (Nagle's algorithm), and a client on a
 * keep-alive connection delays that ACK by up to 40 ms because it waits
 * for the rest of the response: thin on libem managed ~450 requests/s
 * under `ab -k -c 20`. Why not at the end of each callback (which fixes
 * that): each write then wakes the client for one response, between two
 * requests' Ruby work; written together at the end of the turn, the
 * client (on loopback, on another core) is woken once for many. That
 * cost thin a third more CPU per request than Debian's engine; batched,
 * it takes less. Why not on the next turn, after another epoll_wait, as
 * Debian's engine does: latency and an epoll_ctl pair per write for
 * nothing. Rejected too: TCP_NODELAY on every socket (a syscall and a
 * packet per send_data, and not what EventMachine programs ask for).
 *
 * How: inside a protected call into Ruby (rem_call), send_data copies into
 * a small buffer inside the connection's state (REM_PEND_MAX bytes) and
 * remembers the connection; run_machine's turn ends with rem_write_turn_end,
 * which gives every remembered connection one em_send_data (a call into
 * Ruby outside a turn flushes when it returns). Data that does not fit
 * goes out at once, behind what is held, in one writev. Any other native
 * function given the connection's signature (close_connection, start_tls,
 * get_outbound_data_size, ...) writes what is held first (rem_conn_of), so
 * the order of bytes and the meaning of every call stay as they were.
 * Written at once, as before: send_data outside a callback (a trap
 * handler, another thread while the reactor sleeps), on datagram sockets
 * (one send_data is one datagram) and on both ends of a proxy (libem
 * relays into them during the turn). A receive_data of a large chunk
 * flushes its connection when it returns, because libem reads that
 * connection again at once and may find the peer's FIN, which closes it
 * after libem's own queue: what is held must be in that queue by then. A
 * FIN read first in an event drops what other callbacks of the same turn
 * held for that connection, as Debian's engine drops its whole queue at a
 * FIN. A child forked inside a callback drops what its parent held (the
 * parent writes it).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "rem.h"

static int depth;       /* nesting of rem_call */
static int in_turn;     /* inside run_machine's em_run_once */
static int discard;     /* a forked child: held bytes are the parent's */
static uint64_t *dirty; /* signatures with held bytes, in order */
static size_t ndirty, dirty_cap;

void rem_write_enter(void)
{
    depth++;
}

void rem_write_leave(void)
{
    if (depth > 0)
        depth--;
    if (depth == 0 && !in_turn)
        rem_write_flush_all();
}

void rem_write_turn_begin(void)
{
    in_turn = 1;
}

void rem_write_turn_end(void)
{
    in_turn = 0;
    rem_write_flush_all();
}

void rem_write_after_read(em_conn *conn, size_t len)
{
    if (len >= REM_FLUSH_READ)
        rem_write_flush(conn);
}

/* A child forked while bytes were held must never write them: the parent
 * does, on the same sockets. */
static void forked_child(void)
{
    discard = 1;
    ndirty = 0;
}

void rem_write_reset(void)
{
    static int registered;
    if (!registered && pthread_atfork(NULL, NULL, forked_child) == 0)
        registered = 1;
    /* A new machine starts outside any callback and turn, also in such a
     * child; the old machine's connections are out of reach from here. */
    depth = 0;
    in_turn = 0;
    ndirty = 0;
    discard = 0;
}

void rem_write_flush(em_conn *conn)
{
    rem_conn *rc = em_conn_state(conn);
    if (!rc || rc->pend_len == 0)
        return;
    size_t len = rc->pend_len;
    rc->pend_len = 0;
    if (discard)
        return;
    /* A failure closes the connection; its unbind reports why. Ruby was
     * told the bytes were taken, as EventMachine tells it of bytes it
     * later fails to write. */
    em_send_data(conn, rc->pend, len);
}

void rem_write_flush_all(void)
{
    /* Flushing runs no callback (libem defers unbind), so the list cannot
     * grow meanwhile. A connection gone since is skipped. */
    for (size_t i = 0; i < ndirty; i++) {
        em_conn *conn = rem.loop ? em_conn_lookup(rem.loop, dirty[i]) : NULL;
        if (conn && em_conn_state(conn))
            rem_write_flush(conn);
    }
    ndirty = 0;
}

static int remember(uint64_t sig)
{
    if (ndirty == dirty_cap) {
        size_t cap = dirty_cap ? 2 * dirty_cap : 64;
        uint64_t *p = realloc(dirty, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        dirty = p;
        dirty_cap = cap;
    }
    dirty[ndirty++] = sig;
    return 0;
}

int rem_write(em_conn *conn, const char *data, size_t len)
{
    rem_conn *rc = em_conn_state(conn);
    if (depth == 0 || !rc || (rc->flags & REM_WRITE_AT_ONCE)) {
        rem_write_flush(conn);
        return em_send_data(conn, data, len);
    }
    /* Refused now (closing, closed, watch-only) is refused later too:
     * a zero-length em_send_data tells without writing. */
    int err = em_send_data(conn, data, 0);
    if (err < 0 || len == 0)
        return err;
    if (rc->pend_len + len > REM_PEND_MAX) {
        /* Too big to hold: what is held and this, in one writev. */
        struct iovec iov[2] = {{rc->pend, rc->pend_len}, {(void *)data, len}};
        int first = rc->pend_len ? 0 : 1;
        rc->pend_len = 0;
        return em_send_datav(conn, iov + first, 2 - first);
    }
    if (rc->pend_len == 0 && remember(rc->sig) < 0)
        return em_send_data(conn, data, len);
    memcpy(rc->pend + rc->pend_len, data, len);
    rc->pend_len += (uint32_t)len;
    return 0;
}
