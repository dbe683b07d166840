/*
 * timeouts.c - per-connection inactivity and pending-connect timeouts.
 *
 * An inactivity timeout is re-armed on every read and write, so it must be
 * cheap. Connections with the same duration share one FIFO queue (libevent's
 * "common timeouts"): since the loop clock only moves forward, appending at
 * the tail keeps each queue sorted by deadline, and re-arming is an unlink
 * plus an append, O(1) with no allocation. Expiry looks only at queue heads.
 * A timer heap would cost O(log n) per packet; a timer wheel would cost the
 * same O(1) but needs a tick and bucket sweeping.
 *
 * A pending connect uses the same machinery with its own duration: a
 * connection is never connecting and idle-watched at once, so one link
 * suffices. Programs use a handful of distinct durations, so the queue array
 * is scanned linearly.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

static em__timeout_queue *find_queue(em__timeouts *t, uint64_t duration_ns)
{
    for (size_t i = 0; i < t->count; i++)
        if (t->queues[i].duration_ns == duration_ns)
            return &t->queues[i];
    return NULL;
}

/* Queue heads point back into the array, so growing re-links every list. */
static int grow_queues(em__timeouts *t)
{
    size_t cap = t->cap ? t->cap * 2 : 4;
    em__timeout_queue *queues = malloc(cap * sizeof(*queues));
    if (!queues)
        return -ENOMEM;
    for (size_t i = 0; i < t->count; i++) {
        em__timeout_queue *from = &t->queues[i], *to = &queues[i];
        to->duration_ns = from->duration_ns;
        em__list_init(&to->members);
        if (em__list_empty(&from->members))
            continue;
        to->members.next = from->members.next;
        to->members.prev = from->members.prev;
        to->members.next->prev = &to->members;
        to->members.prev->next = &to->members;
        for (em__link *l = to->members.next; l != &to->members; l = l->next)
            em__container_of(l, em_conn, timeout_link)->timeout_queue = to;
    }
    free(t->queues);
    t->queues = queues;
    t->cap = cap;
    return 0;
}

static em__timeout_queue *get_queue(em__timeouts *t, uint64_t duration_ns)
{
    em__timeout_queue *q = find_queue(t, duration_ns);
    if (q)
        return q;
    if (t->count == t->cap && grow_queues(t) < 0)
        return NULL;
    q = &t->queues[t->count++];
    q->duration_ns = duration_ns;
    em__list_init(&q->members);
    return q;
}

void em__timeouts_free(em__timeouts *t)
{
    free(t->queues);
    t->queues = NULL;
    t->count = t->cap = 0;
}

void em__timeout_disarm(em_conn *conn)
{
    em__list_remove(&conn->timeout_link);
    conn->timeout_queue = NULL;
}

int em__timeout_arm(em_conn *conn, uint64_t duration_ns)
{
    em__timeout_disarm(conn);
    if (duration_ns == 0)
        return 0;
    em__timeout_queue *q = get_queue(&conn->loop->timeouts, duration_ns);
    if (!q)
        return -ENOMEM;
    conn->timeout_queue = q;
    /* Counted from now, not from the last traffic: appending at the tail
     * keeps the queue sorted only for bases that are "now". */
    conn->timeout_base_ns = conn->loop->now_ns;
    em__list_push_back(&q->members, &conn->timeout_link);
    em__loop_work_added(conn->loop);
    return 0;
}

void em__timeout_requeue(em_conn *conn)
{
    em__timeout_queue *q = conn->timeout_queue;
    conn->timeout_base_ns = conn->loop->now_ns;
    if (q->members.prev == &conn->timeout_link)
        return;
    em__list_remove(&conn->timeout_link);
    em__list_push_back(&q->members, &conn->timeout_link);
}

static uint64_t head_deadline(const em__timeout_queue *q)
{
    const em_conn *head =
        em__container_of(q->members.next, em_conn, timeout_link);
    return head->timeout_base_ns + q->duration_ns;
}

uint64_t em__timeouts_next(const em__timeouts *t)
{
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < t->count; i++) {
        if (em__list_empty(&t->queues[i].members))
            continue;
        uint64_t deadline = head_deadline(&t->queues[i]);
        if (deadline < next)
            next = deadline;
    }
    return next;
}

void em__timeouts_run(em_loop *loop)
{
    em__timeouts *t = &loop->timeouts;
    /* Earliest head first across queues: connections that expire in the
     * same turn unbind in deadline order, whichever queue they are in. */
    for (;;) {
        em__timeout_queue *due = NULL;
        uint64_t earliest = 0;
        for (size_t i = 0; i < t->count; i++) {
            em__timeout_queue *q = &t->queues[i];
            if (em__list_empty(&q->members))
                continue;
            uint64_t deadline = head_deadline(q);
            if (deadline <= loop->now_ns && (!due || deadline < earliest)) {
                due = q;
                earliest = deadline;
            }
        }
        if (!due)
            return;
        em_conn *conn =
            em__container_of(due->members.next, em_conn, timeout_link);
        em__timeout_disarm(conn);
        em__conn_close_now(conn, -ETIMEDOUT);
    }
}
