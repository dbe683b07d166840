/*
 * outbound.c - the outbound queue of a connection.
 *
 * em_send_data writes straight to the socket when nothing is queued, so this
 * queue only holds what the kernel did not take. It is a singly linked list
 * of chunks; small appends are copied into the tail chunk's spare room, so a
 * burst of small sends becomes one writev entry and one allocation. Every
 * chunk carries a kind: besides memory, a file range (sent with sendfile)
 * or bytes waiting in a proxy's pipe (sent with splice) sit in the same
 * queue, so they go out in order with em_send_data's bytes around them,
 * and em_get_outbound_data_size and the watermarks count them too.
 * A ring buffer was the alternative: fewer mallocs but it pins its peak size
 * per connection, which costs idle connections memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CHUNK_MIN 4096u
#define CHUNK_MAX_APPEND (1u << 30) /* larger sends are split */

static em__chunk *chunk_new(size_t len)
{
    size_t cap = len < CHUNK_MIN ? CHUNK_MIN : len;
    em__chunk *c = malloc(sizeof(*c) + cap);
    if (!c)
        return NULL;
    c->next = NULL;
    c->kind = EM__CHUNK_MEMORY;
    c->start = 0;
    c->end = 0;
    c->cap = (uint32_t)cap;
    c->range = NULL;
    return c;
}

static void link_tail(em__outq *q, em__chunk *c)
{
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
}

static size_t tail_room(const em__outq *q)
{
    const em__chunk *t = q->tail;
    if (!t || t->kind != EM__CHUNK_MEMORY)
        return 0;
    return t->cap - t->end;
}

static int append_piece(em__outq *q, const char *data, size_t len)
{
    size_t room = tail_room(q);
    if (room >= len) {
        memcpy(q->tail->data + q->tail->end, data, len);
        q->tail->end += (uint32_t)len;
        q->bytes += len;
        return 0;
    }
    em__chunk *c = chunk_new(len);
    if (!c)
        return -ENOMEM;
    memcpy(c->data, data, len);
    c->end = (uint32_t)len;
    link_tail(q, c);
    q->bytes += len;
    return 0;
}

int em__outq_append(em__outq *q, const char *data, size_t len)
{
    /* All or nothing: on failure the queue is as it was. */
    em__outq before = *q;
    uint32_t tail_end = q->tail ? q->tail->end : 0;
    while (len > 0) {
        size_t piece = len < CHUNK_MAX_APPEND ? len : CHUNK_MAX_APPEND;
        if (append_piece(q, data, piece) < 0) {
            em__chunk *extra = before.tail ? before.tail->next : before.head;
            while (extra) {
                em__chunk *next = extra->next;
                free(extra);
                extra = next;
            }
            *q = before;
            if (q->tail) {
                q->tail->end = tail_end;
                q->tail->next = NULL;
            }
            return -ENOMEM;
        }
        data += piece;
        len -= piece;
    }
    return 0;
}

int em__outq_iov(const em__outq *q, struct iovec *iov, int max)
{
    int n = 0;
    for (const em__chunk *c = q->head; c && n < max; c = c->next) {
        if (c->kind != EM__CHUNK_MEMORY)
            break;
        iov[n].iov_base = (void *)(c->data + c->start);
        iov[n].iov_len = c->end - c->start;
        n++;
    }
    return n;
}

void em__outq_consume(em__outq *q, size_t n)
{
    q->bytes -= n;
    while (n > 0 && q->head) {
        em__chunk *c = q->head;
        size_t avail = c->end - c->start;
        if (n < avail) {
            c->start += (uint32_t)n;
            return;
        }
        n -= avail;
        q->head = c->next;
        free(c);
    }
    if (!q->head)
        q->tail = NULL;
}

int em__outq_append_range(em__outq *q, uint32_t kind, em__fd_range *range)
{
    uint64_t len = range->end - range->pos;
    em__chunk *t = q->tail;
    if (kind == EM__CHUNK_PIPE && t && t->kind == EM__CHUNK_PIPE &&
        t->range->pipe == range->pipe) {
        t->range->end += len;
        q->bytes += (size_t)len;
        em__range_finish(NULL, range, 0); /* merged: drop its reference */
        return 0;
    }
    em__chunk *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->next = NULL;
    c->kind = kind;
    c->start = c->end = c->cap = 0;
    c->range = range;
    link_tail(q, c);
    q->bytes += (size_t)len;
    return 0;
}

em__fd_range *em__outq_advance_range(em__outq *q, size_t n)
{
    em__chunk *c = q->head;
    em__fd_range *range = c->range;
    range->pos += n;
    q->bytes -= n;
    if (range->pos < range->end)
        return NULL;
    q->head = c->next;
    if (!q->head)
        q->tail = NULL;
    free(c);
    return range;
}

void em__outq_clear(em_conn *conn, em__outq *q)
{
    em__chunk *c = q->head;
    q->head = q->tail = NULL;
    q->bytes = 0;
    while (c) {
        em__chunk *next = c->next;
        if (c->range)
            em__range_finish(conn, c->range, -ECANCELED);
        free(c);
        c = next;
    }
}

void em__outq_forget(em__outq *q)
{
    em__chunk *c = q->head;
    q->head = q->tail = NULL;
    q->bytes = 0;
    while (c) {
        em__chunk *next = c->next;
        if (c->range)
            em__range_forget(c->range);
        free(c);
        c = next;
    }
}
