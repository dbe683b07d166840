/*
 * conn_id.c - connection ids (EventMachine's signatures) and sending to a
 * connection by id from any thread.
 *
 * A connection pointer dies with its unbind; an id never does. Each loop
 * keeps a table of slots {conn, generation}; an id is generation << 32 |
 * slot index, so em_conn_lookup is one bounds check and one compare: O(1),
 * no hashing, no allocation. Releasing a slot bumps its generation, so every
 * id handed out for the slot's earlier lives stops matching at once. Free
 * slots are reused first in, first out, which spreads reuse over the table
 * and keeps generations low; a slot whose 32-bit generation would wrap is
 * retired for good (16 bytes, once per 4 billion reuses of one slot), so an
 * id is never handed out twice by one loop. Generations start at 1, so no id
 * is 0. The table grows by doubling and never shrinks: 16 bytes per slot at
 * the peak number of live connections.
 *
 * The slot stops resolving when unbind starts (as EventMachine removes the
 * connection from its table before calling unbind), and em_reconnect inside
 * unbind gives the connection a new id: it is a new connection to peers.
 *
 * Alternatives rejected: a hash map from a 64-bit counter to the connection
 * costs hashing and probing per lookup and an entry allocation or rehash per
 * connection; handing out the pointer as the id (EventMachine's C++ did,
 * with a global map) cannot tell a freed connection from a new one at the
 * same address.
 *
 * em_send_data_id copies the data into one allocation and queues it through
 * em_schedule, so it is ordered with every em_schedule and em_send_data_id
 * call made before it by the same thread, and batched into one wakeup with
 * them. On the loop thread the id is looked up; a connection that is gone
 * (or closing) gets nothing and the copy is freed: there is no error to
 * report to a thread that has moved on, and the application learns of the
 * close through its unbind. Copies still queued when the loop is freed are
 * freed with it (em__ids_free walks the scheduled ring for them).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NO_SLOT UINT32_MAX
#define MAX_SLOTS (UINT32_MAX - 1)

static int grow(em__ids *ids)
{
    if (ids->cap >= MAX_SLOTS)
        return -ENOMEM;
    uint32_t cap = ids->cap ? ids->cap * 2 : 64;
    if (cap > MAX_SLOTS || cap < ids->cap)
        cap = MAX_SLOTS;
    em__id_slot *slots = realloc(ids->slots, (size_t)cap * sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    ids->slots = slots;
    ids->cap = cap;
    return 0;
}

static uint32_t take_slot(em__ids *ids)
{
    if (ids->free_head != NO_SLOT) {
        uint32_t index = ids->free_head;
        ids->free_head = ids->slots[index].next_free;
        if (ids->free_head == NO_SLOT)
            ids->free_tail = NO_SLOT;
        return index;
    }
    if (ids->count == ids->cap && grow(ids) < 0)
        return NO_SLOT;
    uint32_t index = ids->count++;
    ids->slots[index].gen = 1;
    return index;
}

int em__id_assign(em_conn *conn)
{
    em__ids *ids = &conn->loop->ids;
    if (ids->cap == 0)
        ids->free_head = ids->free_tail = NO_SLOT;
    uint32_t index = take_slot(ids);
    if (index == NO_SLOT)
        return -ENOMEM;
    em__id_slot *slot = &ids->slots[index];
    slot->conn = conn;
    slot->next_free = NO_SLOT;
    conn->id = (uint64_t)slot->gen << 32 | index;
    return 0;
}

static em__id_slot *slot_of(em_conn *conn)
{
    em__ids *ids = &conn->loop->ids;
    uint32_t index = (uint32_t)conn->id;
    if (conn->id == 0 || index >= ids->count ||
        ids->slots[index].gen != (uint32_t)(conn->id >> 32))
        return NULL; /* never assigned, or already released */
    return &ids->slots[index];
}

void em__id_hide(em_conn *conn)
{
    em__id_slot *slot = slot_of(conn);
    if (slot)
        slot->conn = NULL;
}

void em__id_release(em_conn *conn)
{
    em__ids *ids = &conn->loop->ids;
    em__id_slot *slot = slot_of(conn);
    if (!slot)
        return;
    slot->conn = NULL;
    if (++slot->gen == 0)
        return; /* retired: its ids must never come back */
    uint32_t index = (uint32_t)(slot - ids->slots);
    slot->next_free = NO_SLOT;
    if (ids->free_tail == NO_SLOT)
        ids->free_head = index;
    else
        ids->slots[ids->free_tail].next_free = index;
    ids->free_tail = index;
}

void em__id_renew(em_conn *conn)
{
    uint64_t old = conn->id;
    em__id_release(conn);
    /* The slot just released is free unless it retired; only then can this
     * need memory. Without it the connection keeps its dead old id: unique,
     * but em_conn_lookup cannot find it. */
    if (em__id_assign(conn) < 0)
        conn->id = old;
}

/* ---- public ---------------------------------------------------------- */

uint64_t em_conn_id(const em_conn *conn)
{
    return conn ? conn->id : 0;
}

em_conn *em_conn_lookup(const em_loop *loop, uint64_t id)
{
    if (!loop)
        return NULL;
    uint32_t index = (uint32_t)id;
    if (index >= loop->ids.count)
        return NULL;
    const em__id_slot *slot = &loop->ids.slots[index];
    /* A free slot has conn == NULL, so a stale generation is all we test. */
    return slot->gen == (uint32_t)(id >> 32) ? slot->conn : NULL;
}

/* ---- sending by id from any thread ------------------------------------ */

typedef struct send_copy {
    uint64_t id;
    size_t len;
    char data[];
} send_copy;

static void deliver_copy(em_loop *loop, void *arg)
{
    send_copy *copy = arg;
    em_conn *conn = em_conn_lookup(loop, copy->id);
    /* Gone or closing: dropped (see the comment at the top). A send error
     * closes the connection and reaches its unbind. */
    if (conn)
        em_send_data(conn, copy->data, copy->len);
    free(copy);
}

int em_send_data_id(em_loop *loop, uint64_t id, const void *data, size_t len)
{
    if (!loop || id == 0 || (!data && len > 0))
        return -EINVAL;
    send_copy *copy = malloc(sizeof(*copy) + len);
    if (!copy)
        return -ENOMEM;
    copy->id = id;
    copy->len = len;
    if (len > 0)
        memcpy(copy->data, data, len);
    int err = em_schedule(loop, deliver_copy, copy);
    if (err < 0)
        free(copy);
    return err;
}

void em__ids_free(em_loop *loop)
{
    /* The loop is being freed: no thread may call em_schedule any more, and
     * nothing runs the ring again, so the copies it still holds are ours. */
    em__task_ring *ring = &loop->scheduled;
    for (size_t i = 0; i < ring->count; i++) {
        em__task *task = &ring->tasks[(ring->head + i) & (ring->cap - 1)];
        if (task->fn == deliver_copy)
            free(task->arg);
    }
    free(loop->ids.slots);
    memset(&loop->ids, 0, sizeof(loop->ids));
}
