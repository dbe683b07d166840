/*
 * list.h - intrusive circular doubly linked lists.
 *
 * Nodes live inside the objects they link (connections, servers), so adding
 * to or removing from a list never allocates and removal is O(1). A node
 * that is in no list points at itself, which makes removal idempotent.
 */
#ifndef EM_LIST_H
#define EM_LIST_H

#include <stddef.h>

#define em__container_of(ptr, type, member)                                    \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

typedef struct em__link {
    struct em__link *prev;
    struct em__link *next;
} em__link;

static inline void em__list_init(em__link *node)
{
    node->prev = node;
    node->next = node;
}

static inline int em__list_empty(const em__link *head)
{
    return head->next == head;
}

static inline void em__list_push_back(em__link *head, em__link *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

static inline void em__list_remove(em__link *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    em__list_init(node);
}

/* Moves every node of src to the end of dst; src is left empty. */
static inline void em__list_splice_back(em__link *dst, em__link *src)
{
    if (em__list_empty(src))
        return;
    src->next->prev = dst->prev;
    src->prev->next = dst;
    dst->prev->next = src->next;
    dst->prev = src->prev;
    em__list_init(src);
}

static inline int em__list_linked(const em__link *node)
{
    return node->next != node;
}

#endif
