/*
 * flow.c - flow control: a read-only pause and outbound watermarks.
 *
 * EventMachine's pause stops both directions, and nothing stops a peer
 * that sends without reading from growing the outbound queue of a server
 * that answers it. Two tools fix that here:
 *   - em_pause_reading: a flag that removes read interest only;
 *   - watermarks: when a connection's queue passes `high`, a chosen
 *     connection (itself, or a proxy's source) stops reading; when it falls
 *     to `low` it reads again. The kernel's socket buffers then push back
 *     on the peer, and memory stays bounded.
 * Throttling has its own flag (EM__CONN_THROTTLED), separate from the
 * user's pauses, so neither undoes the other. The checks run only where the
 * queue grows (a send that could not finish) or shrinks (a flush), and only
 * for connections that have a relay, so plain connections pay a NULL test.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

em__relay *em__relay_get(em_conn *conn)
{
    if (!conn->relay)
        conn->relay = calloc(1, sizeof(*conn->relay));
    return conn->relay;
}

static void reading_changed(em_conn *conn)
{
    if (!em__conn_is_gone(conn))
        em__conn_reading_changed(conn);
}

void em__flow_set_throttled(em_conn *conn, int on)
{
    int was = (conn->flags & EM__CONN_THROTTLED) != 0;
    if (was == on)
        return;
    if (on)
        conn->flags |= EM__CONN_THROTTLED;
    else
        conn->flags &= ~EM__CONN_THROTTLED;
    reading_changed(conn);
}

void em__flow_after_growth(em_conn *conn)
{
    em__relay *r = conn->relay;
    if (r->high && r->throttles && conn->out.bytes > r->high)
        em__flow_set_throttled(r->throttles, 1);
}

void em__flow_after_drain(em_conn *conn)
{
    em__relay *r = conn->relay;
    if (r->throttles && conn->out.bytes <= r->low)
        em__flow_set_throttled(r->throttles, 0);
}

/* Ends the link "owner's queue throttles r->throttles". */
static void unlink_throttle(em_conn *owner)
{
    em_conn *victim = owner->relay->throttles;
    if (!victim)
        return;
    owner->relay->throttles = NULL;
    if (victim->relay)
        victim->relay->throttled_by = NULL;
    em__flow_set_throttled(victim, 0);
}

int em__flow_link(em_conn *owner, size_t high, size_t low, em_conn *victim)
{
    em__relay *r = em__relay_get(owner);
    em__relay *v = em__relay_get(victim);
    if (!r || !v)
        return -ENOMEM;
    if (v->throttled_by && v->throttled_by != owner)
        return -EBUSY;
    unlink_throttle(owner);
    r->high = high;
    r->low = low;
    if (!high)
        return 0;
    r->throttles = victim;
    v->throttled_by = owner;
    em__flow_after_growth(owner);
    return 0;
}

void em__flow_unlink_all(em_conn *conn)
{
    em__relay *r = conn->relay;
    unlink_throttle(conn);
    if (r->throttled_by) {
        em_conn *owner = r->throttled_by;
        r->throttled_by = NULL;
        owner->relay->throttles = NULL;
        owner->relay->high = 0;
    }
}

int em_set_watermarks(em_conn *conn, size_t high, size_t low, em_conn *throttle)
{
    if (!conn)
        return -EINVAL;
    if (!throttle)
        throttle = conn;
    if (throttle->loop != conn->loop || (high && low >= high))
        return -EINVAL;
    if (em__conn_is_gone(conn) || em__conn_is_gone(throttle))
        return -ENOTCONN;
    return em__flow_link(conn, high, low, throttle);
}

int em_pause_reading(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (em__conn_is_gone(conn))
        return -ENOTCONN;
    conn->flags |= EM__CONN_READ_PAUSED;
    em__conn_update_interest(conn);
    return 0;
}

int em_resume_reading(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (em__conn_is_gone(conn))
        return -ENOTCONN;
    conn->flags &= ~EM__CONN_READ_PAUSED;
    reading_changed(conn);
    return 0;
}

int em_is_reading_paused(const em_conn *conn)
{
    return conn && (conn->flags & EM__CONN_READ_PAUSED) ? 1 : 0;
}
