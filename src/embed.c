/*
 * embed.c - running a loop inside another one: em_backend_fd and
 * em_next_timeout_ms.
 *
 * A host loop polls em_backend_fd (the epoll descriptor) and calls
 * em_run_once(loop, 0) when it is readable. I/O and cross-thread wakeups
 * make epoll readable by themselves; timers, ticks, timeouts and the other
 * work the loop does without an event (closes to reap, failed connects,
 * TLS passes, ended watches) do not, since em_run only turns them into a
 * poll timeout. So the first em_backend_fd call puts a timerfd into the
 * epoll set and from then on keeps it armed (absolute, CLOCK_MONOTONIC, the
 * loop clock) to the loop's next deadline: the earliest timer or timeout,
 * or "at once" (an absolute time in the past) when work is already due.
 *
 * Re-arming costs one timerfd_settime and is done only when the deadline
 * differs from the one armed: when control returns to the host (the end of
 * em_run_once and em_run), and when the host adds work from outside a turn
 * (em_next_tick, a timer, a timeout, a close; em__loop_work_added). Inside
 * a turn nothing is re-armed: the end of the turn covers every callback.
 * A deadline that moved later (a cancelled timer, traffic on a connection
 * with an inactivity timeout) is left armed: it costs at most one spurious
 * wakeup, after which the turn re-arms. Loops never asked for their
 * descriptor never create the timerfd and pay nothing.
 *
 * Alternatives considered: an eventfd written for every tick or timer
 * change (a syscall per em_next_tick on the hot path, and still no way to
 * wake at a future deadline), or asking hosts to poll with
 * em_next_timeout_ms alone (they would have to call it after every change
 * they make; the descriptor keeps em.h's promise by itself).
 */
#include <errno.h>
#include <limits.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "internal.h"

#define ARMED_NONE UINT64_MAX

static void on_timer(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)revents;
    uint64_t expirations;
    ssize_t n = read(w->fd, &expirations, sizeof(expirations));
    (void)n; /* EAGAIN: re-armed since it fired; nothing to clear */
    loop->embed_armed_ns = ARMED_NONE;
}

void em__embed_update(em_loop *loop)
{
    uint64_t want = em__loop_next_deadline(loop);
    uint64_t armed = loop->embed_armed_ns;
    /* A deadline that only moved later (traffic re-arming an inactivity
     * timeout, every turn on a busy loop) keeps the earlier arming: it
     * costs one early wakeup, after which on_timer clears it and the turn
     * re-arms, instead of a timerfd_settime per turn. */
    if (want == armed ||
        (armed != ARMED_NONE && want != ARMED_NONE && want > armed))
        return;
    struct itimerspec spec = {{0, 0}, {0, 0}};
    if (want != ARMED_NONE) {
        /* 0 would disarm: "at once" is 1 ns after boot, long past. */
        uint64_t at = want > 0 ? want : 1;
        spec.it_value.tv_sec = (time_t)(at / 1000000000u);
        spec.it_value.tv_nsec = (long)(at % 1000000000u);
    }
    if (timerfd_settime(loop->embed_timer.fd, TFD_TIMER_ABSTIME, &spec, NULL) ==
        0)
        loop->embed_armed_ns = want;
}

int em_backend_fd(em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    if (loop->embed_timer.fd >= 0)
        return loop->backend_fd;
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    loop->embed_timer.fd = fd;
    loop->embed_timer.on_event = on_timer;
    int err = em__poller_set(loop, &loop->embed_timer, EM__IN);
    if (err < 0) {
        close(fd);
        loop->embed_timer.fd = -1;
        return err;
    }
    loop->embed_armed_ns = ARMED_NONE;
    if (!loop->running)
        em__embed_update(loop);
    return loop->backend_fd;
}

int em_next_timeout_ms(const em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    uint64_t next = em__loop_next_deadline(loop);
    int cap = loop->max_wait_ms;
    if (next == UINT64_MAX)
        return cap;
    uint64_t now = em__clock_ns();
    if (next <= now)
        return 0;
    /* Rounded up: a host that sleeps this long finds the deadline due. */
    uint64_t ms = (next - now + 999999) / 1000000;
    if (cap >= 0 && ms > (uint64_t)cap)
        return cap;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

void em__embed_free(em_loop *loop)
{
    if (loop->embed_timer.fd < 0)
        return;
    em__poller_forget(loop, &loop->embed_timer);
    close(loop->embed_timer.fd);
    loop->embed_timer.fd = -1;
}
