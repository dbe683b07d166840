/*
 * backport_interval.c - the Backport README's interval server, with
 * libem's Backport adapters (docs/backport.md).
 *
 *   build/examples/backport_interval
 *
 * The Ruby original:
 *
 *   Backport.run do
 *     Backport.prepare_interval 1 do
 *       puts "tick"
 *     end
 *   end
 *
 * Prints "tick" once per second, the first a second after it starts, on a
 * fixed schedule (a late tick does not push the later ones back). Ctrl-C
 * (SIGINT) or SIGTERM stops it; it then exits 0.
 */
#include <signal.h>
#include <stdio.h>

#include "em.h"

static void tick(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    puts("tick");
    fflush(stdout); /* one line at a time, also into a pipe */
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
    if ((err = em_prepare_interval(loop, 1.0, tick, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGINT, on_signal, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGTERM, on_signal, NULL, NULL)) < 0) {
        fprintf(stderr, "backport_interval: %s\n", em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    em_run(loop); /* Backport.run */
    return em_loop_free(loop) < 0 ? 1 : 0;
}
