/*
 * interval.c - prints "tick" every second until Ctrl-C (SIGINT) or SIGTERM.
 *
 *   build/examples/interval
 *
 * A periodic timer (em_add_periodic_timer) runs on a fixed schedule: each
 * deadline is the previous one plus the interval, so the ticks do not drift
 * however late one callback ran. Signals arrive as ordinary loop callbacks
 * (em_add_signal), where em_stop is safe; em_run then returns and the exit
 * is clean (status 0). stdout is flushed after every line, so a pipe or a
 * file sees each tick as it happens, not when a buffer fills.
 */
#include <signal.h>
#include <stdio.h>

#include "em.h"

static void tick(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    puts("tick");
    fflush(stdout);
}

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

int main(void)
{
    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    if ((err = em_add_periodic_timer(loop, 1.0, tick, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGINT, on_signal, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGTERM, on_signal, NULL, NULL)) < 0) {
        fprintf(stderr, "interval: %s\n", em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    em_run(loop);
    return em_loop_free(loop) < 0 ? 1 : 0;
}
