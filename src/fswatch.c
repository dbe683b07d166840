/*
 * fswatch.c - em_watch_file: EventMachine's FileWatch on inotify.
 *
 * One inotify descriptor per loop (created by the first em_watch_file, in
 * the epoll set) multiplexes every watch. The kernel gives one watch
 * descriptor (wd) per inode, so several em_file_watch on one file share a
 * wd: a node per wd holds the list of watches on it, and a sorted array of
 * nodes maps wd to node by binary search (wds grow, so adding is usually an
 * append). The kernel watch is removed when its last em_file_watch goes.
 *
 * Events, as EventMachine maps them: IN_MODIFY -> file_modified,
 * IN_MOVE_SELF -> file_moved (the watch goes on; path() keeps the name it
 * was given), IN_DELETE_SELF -> file_deleted, then the watch ends.
 * IN_DELETE_SELF comes when the inode is freed, i.e. after the last link is
 * gone and the last descriptor to it closed. Anything else that ends the
 * kernel watch (IN_IGNORED alone, e.g. its IN_DELETE_SELF was lost to a
 * queue overflow) counts as a deletion; an unmount ends the watch with
 * -ENODEV. A queue overflow (events lost) is reported as file_modified to
 * every watch, so users re-check rather than miss a change.
 *
 * A watch's end follows EventMachine's connection rules: unbind once, last,
 * never inside em_stop_watching; the watch moves to an "ended" list that
 * em__fswatch_reap (called from em__conn_reap, after each callback batch)
 * runs. Callbacks may stop and start any watch: one event is delivered to
 * each watch of its node that existed before the event, found again after
 * every callback, since a callback may have freed the node.
 *
 * Watches are handles like connections: em_stop ends them (unbind 0) and
 * em_loop_free ends what is left and then returns -EBUSY.
 *
 * Alternatives considered: a separate handler struct (em_file_handler)
 * rather than three more em_handler slots, since a watch is not a
 * connection: no data, no socket getters, no state_size; mixing them would
 * make every em_conn function check "is this a watch". fanotify needs
 * CAP_SYS_ADMIN; polling stat() costs a syscall per file per tick.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "internal.h"

#define WATCH_MASK (IN_MODIFY | IN_MOVE_SELF | IN_DELETE_SELF)

typedef struct wd_node {
    int wd;
    int kernel_gone; /* the kernel removed the watch: no inotify_rm_watch */
    em__link watches;
} wd_node;

struct em_file_watch {
    em__link link; /* node->watches, then fs->ended */
    em_loop *loop;
    wd_node *node; /* NULL once ended */
    const em_file_handler *handler;
    void *arg;
    uint64_t seen; /* last event (fs->event_seq) delivered or skipped */
    int reason;
    char path[];
};

struct em__fswatch {
    em__watcher watcher; /* the inotify descriptor */
    wd_node **nodes;     /* sorted by wd */
    size_t count;
    size_t cap;
    em__link ended; /* watches whose unbind is due */
    uint64_t event_seq;
    size_t live;
};

/* ---- wd -> node ------------------------------------------------------ */

/* The index of wd in the sorted array, or where it would go. */
static size_t node_index(const em__fswatch *fs, int wd)
{
    size_t lo = 0, hi = fs->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fs->nodes[mid]->wd < wd)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static wd_node *node_find(const em__fswatch *fs, int wd)
{
    size_t i = node_index(fs, wd);
    return i < fs->count && fs->nodes[i]->wd == wd ? fs->nodes[i] : NULL;
}

static wd_node *node_add(em__fswatch *fs, int wd)
{
    if (fs->count == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 8;
        wd_node **nodes = realloc(fs->nodes, cap * sizeof(*nodes));
        if (!nodes)
            return NULL;
        fs->nodes = nodes;
        fs->cap = cap;
    }
    wd_node *node = calloc(1, sizeof(*node));
    if (!node)
        return NULL;
    node->wd = wd;
    em__list_init(&node->watches);
    size_t i = node_index(fs, wd);
    memmove(&fs->nodes[i + 1], &fs->nodes[i],
            (fs->count - i) * sizeof(*fs->nodes));
    fs->nodes[i] = node;
    fs->count++;
    return node;
}

static void node_remove(em__fswatch *fs, wd_node *node)
{
    size_t i = node_index(fs, node->wd);
    memmove(&fs->nodes[i], &fs->nodes[i + 1],
            (fs->count - i - 1) * sizeof(*fs->nodes));
    fs->count--;
    if (!node->kernel_gone)
        inotify_rm_watch(fs->watcher.fd, node->wd);
    free(node);
}

/* ---- ending ---------------------------------------------------------- */

static void end_watch(em__fswatch *fs, em_file_watch *w, int reason)
{
    wd_node *node = w->node;
    em__list_remove(&w->link);
    w->node = NULL;
    w->reason = reason;
    em__list_push_back(&fs->ended, &w->link);
    fs->live--;
    if (em__list_empty(&node->watches))
        node_remove(fs, node);
}

static void end_node(em__fswatch *fs, wd_node *node, int reason)
{
    node->kernel_gone = 1;
    for (;;) {
        em_file_watch *w =
            em__container_of(node->watches.next, em_file_watch, link);
        int last = w->link.next == &node->watches;
        end_watch(fs, w, reason); /* the last one frees the node */
        if (last)
            return;
    }
}

int em__fswatch_pending(const em_loop *loop)
{
    return loop->fswatch && !em__list_empty(&loop->fswatch->ended);
}

void em__fswatch_reap(em_loop *loop)
{
    em__fswatch *fs = loop->fswatch;
    while (!em__list_empty(&fs->ended)) {
        em_file_watch *w =
            em__container_of(fs->ended.next, em_file_watch, link);
        em__list_remove(&w->link);
        if (w->handler->unbind)
            w->handler->unbind(w, w->arg, w->reason);
        free(w);
    }
}

void em__fswatch_end_all(em_loop *loop)
{
    em__fswatch *fs = loop->fswatch;
    while (fs->count > 0) {
        wd_node *node = fs->nodes[fs->count - 1];
        em_file_watch *w =
            em__container_of(node->watches.next, em_file_watch, link);
        end_watch(fs, w, 0);
    }
}

size_t em__fswatch_free(em_loop *loop)
{
    em__fswatch *fs = loop->fswatch;
    size_t live = fs->live;
    em__fswatch_end_all(loop);
    em__fswatch_reap(loop);
    em__poller_forget(loop, &fs->watcher);
    close(fs->watcher.fd);
    free(fs->nodes);
    free(fs);
    loop->fswatch = NULL;
    return live;
}

/* ---- events ---------------------------------------------------------- */

typedef void (*event_fn)(em_file_watch *w, void *arg);

/* Calls fn for every watch of node wd that existed before this event. A
 * callback may end watches, free the node or add watches (they start with
 * seen = seq and so skip this event), so the node is looked up again and
 * its list walked from the head after each call. */
static void deliver(em__fswatch *fs, int wd, uint64_t seq, int which)
{
    for (;;) {
        wd_node *node = node_find(fs, wd);
        if (!node)
            return;
        em_file_watch *target = NULL;
        for (em__link *l = node->watches.next; l != &node->watches;
             l = l->next) {
            em_file_watch *w = em__container_of(l, em_file_watch, link);
            if (w->seen < seq) {
                target = w;
                break;
            }
        }
        if (!target)
            return;
        target->seen = seq;
        const em_file_handler *h = target->handler;
        event_fn fn = which == IN_MODIFY      ? h->file_modified
                      : which == IN_MOVE_SELF ? h->file_moved
                                              : h->file_deleted;
        if (fn)
            fn(target, target->arg);
    }
}

static void on_overflow(em__fswatch *fs)
{
    /* Every wd gets the same event number; the node array may change
     * under the callbacks, so walk it by wd, not by index. */
    uint64_t seq = ++fs->event_seq;
    int wd = INT_MIN;
    for (;;) {
        size_t i = node_index(fs, wd);
        if (i == fs->count)
            return;
        wd = fs->nodes[i]->wd;
        deliver(fs, wd, seq, IN_MODIFY);
        if (wd == INT_MAX)
            return;
        wd++;
    }
}

static void on_event(em__fswatch *fs, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW) {
        on_overflow(fs);
        return;
    }
    if (!node_find(fs, ev->wd))
        return; /* e.g. the IN_IGNORED of a watch we removed */
    if (ev->mask & IN_MODIFY)
        deliver(fs, ev->wd, ++fs->event_seq, IN_MODIFY);
    if (ev->mask & IN_MOVE_SELF)
        deliver(fs, ev->wd, ++fs->event_seq, IN_MOVE_SELF);
    if (ev->mask & IN_UNMOUNT) {
        wd_node *node = node_find(fs, ev->wd);
        if (node)
            end_node(fs, node, -ENODEV);
        return;
    }
    if (ev->mask & (IN_DELETE_SELF | IN_IGNORED)) {
        deliver(fs, ev->wd, ++fs->event_seq, IN_DELETE_SELF);
        wd_node *node = node_find(fs, ev->wd);
        if (node)
            end_node(fs, node, 0);
    }
}

static void on_inotify(em_loop *loop, em__watcher *watcher, unsigned revents)
{
    (void)loop;
    (void)revents;
    em__fswatch *fs = em__container_of(watcher, em__fswatch, watcher);
    _Alignas(struct inotify_event) char buf[4096];
    ssize_t n = read(watcher->fd, buf, sizeof(buf));
    for (ssize_t off = 0; off + (ssize_t)sizeof(struct inotify_event) <= n;) {
        const struct inotify_event *ev = (const void *)(buf + off);
        on_event(fs, ev);
        off += (ssize_t)(sizeof(*ev) + ev->len);
    }
}

/* ---- public API ------------------------------------------------------ */

static int fswatch_get(em_loop *loop, em__fswatch **out)
{
    if (loop->fswatch) {
        *out = loop->fswatch;
        return 0;
    }
    em__fswatch *fs = calloc(1, sizeof(*fs));
    if (!fs)
        return -ENOMEM;
    em__list_init(&fs->ended);
    fs->watcher.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fs->watcher.fd < 0) {
        int err = -errno;
        free(fs);
        return err;
    }
    fs->watcher.on_event = on_inotify;
    int err = em__poller_set(loop, &fs->watcher, EM__IN);
    if (err < 0) {
        close(fs->watcher.fd);
        free(fs);
        return err;
    }
    loop->fswatch = fs;
    *out = fs;
    return 0;
}

int em_watch_file(em_loop *loop, const char *path,
                  const em_file_handler *handler, void *arg,
                  em_file_watch **out)
{
    if (out)
        *out = NULL;
    if (!loop || !path || !*path || !handler)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    size_t len = strlen(path);
    if (len >= PATH_MAX)
        return -ENAMETOOLONG;
    em__fswatch *fs = NULL;
    int err = fswatch_get(loop, &fs);
    if (err < 0)
        return err;
    em_file_watch *w = malloc(sizeof(*w) + len + 1);
    if (!w)
        return -ENOMEM;
    int wd = inotify_add_watch(fs->watcher.fd, path, WATCH_MASK);
    if (wd < 0) {
        err = -errno;
        free(w);
        return err;
    }
    wd_node *node = node_find(fs, wd);
    if (!node && !(node = node_add(fs, wd))) {
        inotify_rm_watch(fs->watcher.fd, wd);
        free(w);
        return -ENOMEM;
    }
    w->loop = loop;
    w->node = node;
    w->handler = handler;
    w->arg = arg;
    w->seen = fs->event_seq; /* not the event being delivered, if any */
    w->reason = 0;
    memcpy(w->path, path, len + 1);
    em__list_push_back(&node->watches, &w->link);
    fs->live++;
    if (out)
        *out = w;
    return 0;
}

int em_stop_watching(em_file_watch *watch)
{
    if (!watch)
        return -EINVAL;
    if (watch->node) {
        end_watch(watch->loop->fswatch, watch, 0);
        em__loop_work_added(watch->loop); /* its unbind is due */
    }
    return 0;
}

const char *em_file_watch_path(const em_file_watch *watch)
{
    return watch ? watch->path : NULL;
}

em_loop *em_file_watch_loop(const em_file_watch *watch)
{
    return watch ? watch->loop : NULL;
}

size_t em_file_watch_count(const em_loop *loop)
{
    return loop && loop->fswatch ? loop->fswatch->live : 0;
}

/* ---- after fork (fork.c) --------------------------------------------- */

/* The inotify instance is shared with the parent: inotify_rm_watch here
 * would end the parent's watches, so the descriptor is only closed and the
 * records freed, with no unbind. */
void em__fswatch_forget(em_loop *loop)
{
    em__fswatch *fs = loop->fswatch;
    for (size_t i = 0; i < fs->count; i++) {
        wd_node *node = fs->nodes[i];
        while (!em__list_empty(&node->watches)) {
            em__link *l = node->watches.next;
            em__list_remove(l);
            free(em__container_of(l, em_file_watch, link));
        }
        free(node);
    }
    while (!em__list_empty(&fs->ended)) {
        em__link *l = fs->ended.next;
        em__list_remove(l);
        free(em__container_of(l, em_file_watch, link));
    }
    close(fs->watcher.fd);
    free(fs->nodes);
    free(fs);
    loop->fswatch = NULL;
}
