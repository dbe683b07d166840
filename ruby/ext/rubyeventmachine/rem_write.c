/*
 * rem_write.c - send_data's bytes leave when the Ruby callback that sent
 * them returns: everything one callback sends to a connection goes out in
 * one write, still within the same turn.
 *
 * Why: Ruby servers answer with several send_data calls (thin: the header,
 * then the body). Written one by one, the second small segment waits in
 * the kernel for the ACK of the first (Nagle's algorithm), and a client on
 * a keep-alive connection delays that ACK by up to 40 ms because it is
 * waiting for the rest of the response: thin on libem managed ~450
 * requests/s under `ab -k -c 20`. Debian's engine never writes inside
 * send_data (it queues and writes on the next turn), so it never split a
 * response. Rejected: TCP_NODELAY on every socket (a syscall and a packet
 * per send_data, and not what EventMachine programs ask for); writing on
 * the next turn as Debian's engine (latency for nothing, and send_data
 * followed by close_connection would lose the bytes again).
 *
 * How: inside a protected call into Ruby (rem_call), send_data copies into
 * a small buffer inside the connection's state (REM_PEND_MAX bytes) and
 * remembers the connection; when the call returns, every remembered
 * connection gets one em_send_data. Data that does not fit
 * goes out at once, behind what is buffered, in one writev. Any other
 * native function given the connection's signature (close_connection,
 * start_tls, get_outbound_data_size, ...) writes the buffer first
 * (rem_conn_of), so the order of bytes and the meaning of every call are
 * what they were. Outside a callback (a trap handler, another thread while
 * the reactor sleeps) and on datagram sockets (one send_data is one
 * datagram) send_data writes at once, as before. A child forked inside a
 * callback drops what its parent held (the parent writes it).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "rem.h"

static int depth;       /* nesting of rem_call */
static int discard;     /* a forked child: held bytes are the parent's */
static uint64_t *dirty; /* signatures with buffered bytes, in order */
static size_t ndirty, dirty_cap;

void rem_write_enter(void)
{
    depth++;
}

/* Flushes at every return, not only the outermost: a child forked inside
 * a callback (fork_reactor) runs its whole reactor nested in the parent's
 * frames, and its writes must still leave. */
void rem_write_leave(void)
{
    if (depth > 0)
        depth--;
    rem_write_flush_all();
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
    /* A new machine starts outside any callback, also in such a child;
     * the old machine's connections are out of reach from here on. */
    depth = 0;
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
    if (depth == 0 || !rc || (rc->flags & REM_DATAGRAM)) {
        rem_write_flush(conn);
        return em_send_data(conn, data, len);
    }
    /* Refused now (closing, closed, watch-only) is refused later too:
     * a zero-length em_send_data tells without writing. */
    int err = em_send_data(conn, data, 0);
    if (err < 0 || len == 0)
        return err;
    if (rc->pend_len + len > REM_PEND_MAX) {
        /* Too big to buffer: what is buffered and this, in one writev. */
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
