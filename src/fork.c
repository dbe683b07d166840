/*
 * fork.c - em_loop_free in a process other than the loop's: releasing a
 * loop inherited across fork.
 *
 * A child forked by a program with a running loop (EventMachine's
 * fork_reactor, a fork inside a callback) has a copy of the loop whose
 * descriptors it shares with the parent: the same sockets, listeners,
 * epoll set, eventfd, inotify instance, pidfds. It wants them closed in
 * itself and nothing else. A normal em_loop_free would do harm there: run
 * unbind and done callbacks the parent runs too, send close_notify and
 * FIN-after-drain on the parent's connections, read and discard input
 * from sockets the parent still reads, epoll_ctl(DEL) and
 * inotify_rm_watch on sets the parent still uses, unlink the parent's Unix
 * socket files, kill and reap the parent's children; and it would hang,
 * joining pool workers that do not exist in the child (only the forking
 * thread survives fork) or waiting on locks they held at the fork.
 *
 * So em_loop_new records getpid() and em_loop_free, called in any other
 * process, comes here instead: every module forgets its part (close(2)
 * only on what the loop owns, free for memory), no callback runs, and the
 * loop is released even while `running` is set, since a child forked
 * inside a callback sees its parent's turn in progress. Such a child must
 * not return into the loop afterwards: it exits, execs, or leaves the
 * callback's frames another way (the Ruby engine throws past them).
 *
 * Locks: only the thread that called fork exists in the child. A lock
 * another thread held at that moment stays held forever, and what it
 * guards may be half-changed, so this file never waits for one: the
 * schedule lock (em_schedule's ring) and the pool's lock are tried, and
 * what they guard is freed only if they were free; otherwise it is left
 * (leaked, in a child about to run a new loop or exit). malloc is safe
 * (glibc makes it so across fork). OpenSSL frees take only the objects'
 * own locks, which only the loop thread uses, and the library's ex_data
 * lock for reading.
 *
 * Signals: a loop's handled signals are blocked in the thread that added
 * them, and the child inherits the forking thread's mask. When that thread
 * is the one that blocked them, the mask is restored as a normal free
 * does (em__signals_free): left blocked, SIGTERM would stay blocked in the
 * child and in every program it execs. This changes the child's own mask
 * and dispositions only; no parent thread is in the child.
 *
 * Alternatives rejected: a pthread_atfork handler that marks loops in the
 * child needs a process-wide registry of loops (global state) and still
 * leaves the freeing to em_loop_free; closing descriptors without freeing
 * (what the Ruby engine did, by abandoning the loop) leaks every
 * connection's memory and keeps the inherited epoll set reachable.
 */
#include <pthread.h>

#include "internal.h"

static void forget_conns(em__link *list)
{
    while (!em__list_empty(list))
        em__conn_forget(em__container_of(list->next, em_conn, link));
}

void em__loop_forget(em_loop *loop)
{
    /* A connection in the middle of its unbind when the child forked is
     * in no list; its descriptor is closed already, and its memory stays
     * with the callback frame the child never returns to. */
    forget_conns(&loop->conns);
    forget_conns(&loop->pending_unbind);
    forget_conns(&loop->failed_connects);
    forget_conns(&loop->proc_exiting);
    em__servers_forget(loop);
    if (loop->fswatch)
        em__fswatch_forget(loop);
    em__pool_forget(loop);
    em__resolver_forget(loop);
    /* em_schedule's ring: whole only if no producer held the lock. Left
     * otherwise; the lock is made anew for loop_release to destroy. */
    if (pthread_mutex_trylock(&loop->schedule_lock) == 0) {
        pthread_mutex_unlock(&loop->schedule_lock);
    } else {
        loop->scheduled = (em__task_ring){0};
        pthread_mutex_init(&loop->schedule_lock, NULL);
    }
}
