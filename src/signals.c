/*
 * signals.c - em_add_signal / em_remove_signal: signals delivered as
 * ordinary callbacks on the loop thread, through a signalfd.
 *
 * A loop that handles signals owns one signalfd (non-blocking, in its
 * epoll set) whose mask is the set of signals with at least one handler.
 * A handled signal is blocked in the thread that added its first handler
 * (the loop thread), so it stays pending until the signalfd reads it; the
 * loop then calls every handler of that signal in the order they were
 * added. Handlers are a small array scanned per delivered signal: programs
 * have a handful, and signals are rare.
 *
 * Blocking is per thread, signal disposition per process. A process-
 * directed signal (kill, Ctrl-C) goes to any thread that does not block
 * it, so every other thread of the process must block it too, or one of
 * them takes it with its default action. Threads inherit their creator's
 * mask: adding handlers before starting threads is enough, and libem's own
 * threads block every signal. docs/loop.md says this for users.
 *
 * When the last handler of a signal goes, a pending instance is consumed
 * (it arrived while handled; unblocking would otherwise run the default
 * action, e.g. terminate on SIGTERM during em_loop_free) and the thread's
 * mask is restored. Two loops on one thread may handle the same signal, so
 * the thread keeps a count of holders per signal and the mask it found:
 * _Thread_local state, touched only by these calls on that thread, the one
 * state in libem that is not per loop. A signal the process ignores
 * (SIG_IGN, e.g. SIGHUP under nohup) is discarded by the kernel before
 * any signalfd sees it, so the first holder sets it to SIG_DFL (safe while
 * blocked) and the last one sets SIG_IGN back.
 *
 * Alternatives considered:
 *   - A sigaction handler writing to a self-pipe (libuv): works whatever
 *     other threads block, but installs process-wide handlers, needs a
 *     process-wide registry of loops (global state, async-signal-safe
 *     locking) and changes what a later sigaction by the application sees.
 *     With signalfd libem changes no disposition except SIG_IGN above, and
 *     an application that cannot block a signal in its other threads can
 *     still build the self-pipe itself on em_wakeup (async-signal-safe).
 *   - One signalfd per handler: a descriptor and a read per handler.
 *
 * Several loops may handle the same signal: a signal sent to one thread
 * (raise, pthread_kill) reaches the loop of that thread; a process-directed
 * one reaches one of them, whichever reads it first. Standard signals that
 * arrive again before the loop reads them are merged by the kernel; real-
 * time signals queue.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define READ_BATCH 16

typedef struct sig_handler {
    em_signal_id id; /* 1, 2, 3, ... in the order handlers were added */
    int signo;
    em_signal_fn fn; /* NULL: removed during a dispatch, compacted after */
    void *arg;
} sig_handler;

struct em__signals {
    em__watcher watcher; /* the signalfd */
    sigset_t set;        /* signals with handlers: the signalfd's mask */
    sig_handler *handlers;
    size_t count;
    size_t cap;
    em_signal_id next_id;
    int dispatching;
    int removed_while_dispatching;
    unsigned handlers_of[NSIG];
    pthread_t holder[NSIG]; /* the thread that blocked the signal */
};

/* ---- the thread's mask ----------------------------------------------- */

static _Thread_local struct {
    unsigned holders[NSIG];       /* loops on this thread handling it */
    unsigned char unblock[NSIG];  /* it was not blocked before */
    unsigned char reignore[NSIG]; /* it was SIG_IGN before */
} this_thread;

static int hold(int signo)
{
    if (this_thread.holders[signo]++ > 0)
        return 0;
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, signo);
    int rc = pthread_sigmask(SIG_BLOCK, &one, &old);
    if (rc != 0) {
        this_thread.holders[signo]--;
        return -rc;
    }
    this_thread.unblock[signo] = !sigismember(&old, signo);
    struct sigaction current;
    this_thread.reignore[signo] = 0;
    if (sigaction(signo, NULL, &current) == 0 &&
        !(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_IGN) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        this_thread.reignore[signo] = sigaction(signo, &dfl, NULL) == 0;
    }
    return 0;
}

/* Consumes pending instances of signo: they were caught by a handler that
 * is gone now, and must not meet the default action once unblocked. */
static void drain(int signo)
{
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    const struct timespec zero = {0, 0};
    while (sigtimedwait(&one, NULL, &zero) == signo)
        ;
}

static void release(int signo)
{
    if (this_thread.holders[signo] == 0 || --this_thread.holders[signo] > 0)
        return;
    drain(signo);
    if (this_thread.reignore[signo]) {
        struct sigaction ign;
        memset(&ign, 0, sizeof(ign));
        ign.sa_handler = SIG_IGN;
        sigemptyset(&ign.sa_mask);
        sigaction(signo, &ign, NULL);
    }
    if (this_thread.unblock[signo]) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    }
}

/* The loop's hold on signo ends: restore the mask of the thread that
 * blocked it, if that is this thread (em.h asks for the loop thread). */
static void end_hold(em__signals *s, int signo)
{
    if (pthread_equal(s->holder[signo], pthread_self()))
        release(signo);
}

/* ---- dispatch -------------------------------------------------------- */

static void compact(em__signals *s)
{
    size_t kept = 0;
    for (size_t i = 0; i < s->count; i++)
        if (s->handlers[i].fn)
            s->handlers[kept++] = s->handlers[i];
    s->count = kept;
    s->removed_while_dispatching = 0;
}

/* Calls the handlers of signo that existed when it was read, in the order
 * they were added. Handlers may add and remove handlers: the array is
 * re-read by index, and removed entries stay (fn NULL) until compact. */
static void dispatch(em_loop *loop, em__signals *s, int signo)
{
    em_signal_id newest = s->next_id;
    for (size_t i = 0; i < s->count; i++) {
        sig_handler h = s->handlers[i];
        if (h.fn && h.signo == signo && h.id < newest)
            h.fn(loop, signo, h.arg);
    }
}

static void on_signalfd(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)revents;
    em__signals *s = em__container_of(w, em__signals, watcher);
    struct signalfd_siginfo info[READ_BATCH];
    ssize_t n = read(w->fd, info, sizeof(info));
    if (n <= 0)
        return; /* EAGAIN: another reader of the same signal was first */
    s->dispatching = 1;
    for (size_t i = 0; i < (size_t)n / sizeof(info[0]); i++)
        dispatch(loop, s, (int)info[i].ssi_signo);
    s->dispatching = 0;
    if (s->removed_while_dispatching)
        compact(s);
}

/* ---- setting up ------------------------------------------------------ */

static int signals_get(em_loop *loop, em__signals **out)
{
    if (loop->signals) {
        *out = loop->signals;
        return 0;
    }
    em__signals *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    sigemptyset(&s->set);
    s->next_id = 1;
    s->watcher.fd = signalfd(-1, &s->set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->watcher.fd < 0) {
        int err = -errno;
        free(s);
        return err;
    }
    s->watcher.on_event = on_signalfd;
    int err = em__poller_set(loop, &s->watcher, EM__IN);
    if (err < 0) {
        close(s->watcher.fd);
        free(s);
        return err;
    }
    loop->signals = s;
    *out = s;
    return 0;
}

/* Signals a loop cannot take through a signalfd: SIGKILL and SIGSTOP
 * cannot be blocked, a fault signal raised by the CPU while blocked kills
 * the process, and glibc keeps 32 .. SIGRTMIN-1 for itself. */
static int signo_ok(int signo)
{
    if (signo <= 0 || signo >= NSIG)
        return 0;
    switch (signo) {
    case SIGKILL:
    case SIGSTOP:
    case SIGSEGV:
    case SIGBUS:
    case SIGFPE:
    case SIGILL:
        return 0;
    default:
        return signo < 32 || signo >= SIGRTMIN;
    }
}

static int set_mask(em__signals *s)
{
    if (signalfd(s->watcher.fd, &s->set, 0) < 0)
        return -errno;
    return 0;
}

int em_add_signal(em_loop *loop, int signo, em_signal_fn fn, void *arg,
                  em_signal_id *out)
{
    if (out)
        *out = 0;
    if (!loop || !fn || !signo_ok(signo))
        return -EINVAL;
    em__signals *s = NULL;
    int err = signals_get(loop, &s);
    if (err < 0)
        return err;
    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        sig_handler *grown = realloc(s->handlers, cap * sizeof(*grown));
        if (!grown)
            return -ENOMEM;
        s->handlers = grown;
        s->cap = cap;
    }
    if (s->handlers_of[signo] == 0) {
        /* Blocked before the signalfd listens: nothing slips through. */
        err = hold(signo);
        if (err < 0)
            return err;
        sigaddset(&s->set, signo);
        err = set_mask(s);
        if (err < 0) {
            sigdelset(&s->set, signo);
            release(signo);
            return err;
        }
        s->holder[signo] = pthread_self();
    }
    s->handlers_of[signo]++;
    sig_handler *h = &s->handlers[s->count++];
    h->id = s->next_id++;
    h->signo = signo;
    h->fn = fn;
    h->arg = arg;
    if (out)
        *out = h->id;
    return 0;
}

int em_remove_signal(em_loop *loop, em_signal_id id)
{
    if (!loop)
        return -EINVAL;
    em__signals *s = loop->signals;
    size_t i = 0;
    while (s && i < s->count && (s->handlers[i].id != id || !s->handlers[i].fn))
        i++;
    if (!s || i == s->count)
        return -ENOENT;
    int signo = s->handlers[i].signo;
    s->handlers[i].fn = NULL;
    if (s->dispatching)
        s->removed_while_dispatching = 1;
    else
        compact(s);
    if (--s->handlers_of[signo] == 0) {
        sigdelset(&s->set, signo);
        set_mask(s); /* shrinking the mask of a valid signalfd */
        end_hold(s, signo);
    }
    return 0;
}

size_t em_signal_count(const em_loop *loop)
{
    if (!loop || !loop->signals)
        return 0;
    size_t n = 0;
    for (int signo = 1; signo < NSIG; signo++)
        n += loop->signals->handlers_of[signo];
    return n;
}

void em__signals_free(em_loop *loop)
{
    em__signals *s = loop->signals;
    if (!s)
        return;
    for (int signo = 1; signo < NSIG; signo++)
        if (s->handlers_of[signo])
            end_hold(s, signo);
    em__poller_forget(loop, &s->watcher);
    close(s->watcher.fd);
    free(s->handlers);
    free(s);
    loop->signals = NULL;
}
