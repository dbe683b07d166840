/*
 * test_threads.c - several loops in one process, one per thread.
 *
 * libem keeps no global state: each thread below runs its own loop with its
 * own server, client, timers and cross-thread queue, all at the same time.
 * Criterion assertions must not run off the main thread, so every thread
 * records what it saw and the main thread checks it.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "em.h"
#include "helpers.h"

#define LOOPS 4
#define ROUND_TRIPS 200

struct worker {
    em_loop *loop;
    int round_trips;
    int mismatches;
    int unbinds;
    int ticks;
    int scheduled;
    int free_result;
    char expect[32];
    size_t expect_len;
    char got[32];
    size_t got_len;
};

static void echo_receive(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static void count_unbind(em_conn *conn, int reason)
{
    struct worker *w = em_conn_arg(conn);
    if (reason == 0)
        w->unbinds++;
    if (w->unbinds == 2)
        em_stop(w->loop);
}

static const em_handler echo = {.receive_data = echo_receive,
                                .unbind = count_unbind};

static void send_next(em_conn *conn, struct worker *w)
{
    w->expect_len = (size_t)snprintf(w->expect, sizeof w->expect, "ping %d",
                                     w->round_trips);
    w->got_len = 0;
    em_send_data(conn, w->expect, w->expect_len);
}

static void client_post_init(em_conn *conn, void *arg)
{
    send_next(conn, arg);
}

/* Replies may come in pieces: collect until the whole ping is back. */
static void client_receive(em_conn *conn, const char *data, size_t len)
{
    struct worker *w = em_conn_arg(conn);
    if (w->got_len + len > sizeof w->got) {
        w->mismatches++;
        em_close_connection(conn, 0);
        return;
    }
    memcpy(w->got + w->got_len, data, len);
    w->got_len += len;
    if (w->got_len < w->expect_len)
        return;
    if (w->got_len != w->expect_len || memcmp(w->got, w->expect, w->got_len))
        w->mismatches++;
    if (++w->round_trips == ROUND_TRIPS)
        em_close_connection(conn, 0);
    else
        send_next(conn, w);
}

static const em_handler client = {.post_init = client_post_init,
                                  .receive_data = client_receive,
                                  .unbind = count_unbind};

static void on_tick(em_loop *loop, void *arg)
{
    (void)loop;
    ((struct worker *)arg)->ticks++;
}

static void on_scheduled(em_loop *loop, void *arg)
{
    (void)loop;
    ((struct worker *)arg)->scheduled++;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    if (em_loop_new(&w->loop) < 0)
        return NULL;
    em_server *srv;
    if (em_start_server(w->loop, "127.0.0.1", 0, &echo, w, NULL, &srv) == 0 &&
        em_connect(w->loop, "127.0.0.1", em_server_port(srv), &client, w,
                   NULL) == 0) {
        em_add_periodic_timer(w->loop, 0.001, on_tick, w, NULL);
        em_schedule(w->loop, on_scheduled, w);
        em_run(w->loop);
    }
    w->free_result = em_loop_free(w->loop);
    return NULL;
}

Test(threads, one_loop_per_thread_runs_independently,
     .timeout = TH_TIMEOUT(20))
{
    struct worker workers[LOOPS];
    pthread_t threads[LOOPS];
    memset(workers, 0, sizeof workers);
    for (int i = 0; i < LOOPS; i++)
        cr_assert_eq(pthread_create(&threads[i], NULL, run_worker,
                                    &workers[i]), 0);
    for (int i = 0; i < LOOPS; i++)
        pthread_join(threads[i], NULL);

    for (int i = 0; i < LOOPS; i++) {
        struct worker *w = &workers[i];
        cr_assert_not_null(w->loop, "loop %d was not created", i);
        cr_expect_eq(w->round_trips, ROUND_TRIPS, "loop %d", i);
        cr_expect_eq(w->mismatches, 0, "loop %d", i);
        cr_expect_eq(w->unbinds, 2, "loop %d: both ends unbound", i);
        cr_expect_eq(w->scheduled, 1, "loop %d", i);
        cr_expect_eq(w->free_result, 0, "loop %d freed clean", i);
    }
}
