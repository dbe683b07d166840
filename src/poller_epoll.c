/*
 * poller_epoll.c - the epoll poll backend.
 *
 * The loop talks to its backend through em__poller_* only (open, set
 * interest, wait, read results), as Redis's ae_epoll.c does, so an io_uring
 * backend can sit beside this file later. Level-triggered on purpose: the
 * read path stops after a short read instead of reading until EAGAIN, which
 * saves one syscall per wakeup; a socket that still holds data is simply
 * reported again. Each watcher remembers the interest the kernel has, so
 * em__poller_set costs no syscall when nothing changes.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

int em__poller_open(em_loop *loop)
{
    loop->backend_fd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->backend_fd < 0)
        return -errno;
    loop->ready = calloc(EM__MAX_EVENTS, sizeof(struct epoll_event));
    if (!loop->ready) {
        close(loop->backend_fd);
        loop->backend_fd = -1;
        return -ENOMEM;
    }
    return 0;
}

void em__poller_close(em_loop *loop)
{
    if (loop->backend_fd >= 0)
        close(loop->backend_fd);
    loop->backend_fd = -1;
    free(loop->ready);
    loop->ready = NULL;
}

_Static_assert((unsigned)EM__IN == (unsigned)EPOLLIN &&
                   (unsigned)EM__OUT == (unsigned)EPOLLOUT &&
                   (unsigned)EM__ERR == (unsigned)(EPOLLERR | EPOLLHUP),
               "watcher bits are epoll's");

int em__poller_set(em_loop *loop, em__watcher *w, unsigned interest)
{
    if (w->in_backend && w->registered == interest)
        return 0;
    if (!w->in_backend && interest == 0)
        return 0;

    struct epoll_event ev = {.events = interest, .data.ptr = w};
    int op = EPOLL_CTL_MOD;
    if (!w->in_backend)
        op = EPOLL_CTL_ADD;
    else if (interest == 0)
        op = EPOLL_CTL_DEL;

    if (epoll_ctl(loop->backend_fd, op, w->fd, &ev) < 0)
        return -errno;
    w->in_backend = interest != 0;
    w->registered = interest;
    return 0;
}

/* Called before the descriptor is closed. close(2) takes a descriptor out
 * of epoll only when it was the last reference to its open file: a dup the
 * program kept (the Ruby engine attaches a dup of the IO's descriptor), or
 * a child between fork and exec, keeps the registration alive, and its
 * events would name a freed watcher (a use-after-free, and a level-
 * triggered spin once the file stays ready). So the registration goes
 * explicitly, at one epoll_ctl per close, as libuv does. (Not in a forked
 * child releasing its copy of the loop: the set is shared with the parent,
 * and em_loop_free closes the child's reference to it first.) */
void em__poller_forget(em_loop *loop, em__watcher *w)
{
    if (w->in_backend && w->fd >= 0 && loop->backend_fd >= 0) {
        struct epoll_event ev = {.events = 0};
        epoll_ctl(loop->backend_fd, EPOLL_CTL_DEL, w->fd, &ev);
    }
    w->in_backend = 0;
    w->registered = 0;
}

int em__poller_check(em_loop *loop, int fd)
{
    struct epoll_event ev = {.events = 0};
    if (epoll_ctl(loop->backend_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    epoll_ctl(loop->backend_fd, EPOLL_CTL_DEL, fd, &ev);
    return 0;
}

int em__poller_wait(em_loop *loop, int timeout_ms)
{
    int n =
        epoll_wait(loop->backend_fd, loop->ready, EM__MAX_EVENTS, timeout_ms);
    if (n < 0)
        n = 0; /* EINTR: treat as an empty turn */
    loop->ready_count = n;
    return n;
}

void em__poller_dispatch(em_loop *loop)
{
    const struct epoll_event *ready = loop->ready;
    for (int i = 0; i < loop->ready_count; i++) {
        em__watcher *w = ready[i].data.ptr;
        w->on_event(loop, w, ready[i].events);
    }
}
