/*
 * signals.c - a server that reloads on SIGHUP and stops gracefully on
 * SIGTERM or SIGINT, with signals delivered as loop callbacks.
 *
 *   build/examples/signals [port]     (default 8001, 127.0.0.1)
 *
 * Every client gets "hello (config N)" and then an echo of what it sends.
 * SIGHUP prints "reloading" and bumps N (a real server would re-read its
 * files here, on the loop thread, between two callbacks). SIGTERM or Ctrl-C
 * prints "stopping": the listener closes at once (new clients are refused),
 * every connection gets "bye" and closes after its queued bytes are
 * written, and the loop stops when the last one is gone (or after a grace
 * period of 10 s), so the program exits 0.
 *
 * Try: build/examples/signals 8001 & nc 127.0.0.1 8001, then
 * kill -HUP %1 and kill -TERM %1.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "em.h"

#define GRACE_SECONDS 10.0

struct client {
    em_conn *conn;
    struct client *prev, *next;
};

struct server {
    em_loop *loop;
    em_server *listener;
    int config;
    int stopping;
    struct client clients; /* list head */
};

static void opening(em_conn *conn, void *arg)
{
    struct server *s = arg;
    struct client *c = em_conn_state(conn);
    c->conn = conn;
    c->next = &s->clients;
    c->prev = s->clients.prev;
    s->clients.prev->next = c;
    s->clients.prev = c;
    char hello[64];
    int n = snprintf(hello, sizeof(hello), "hello (config %d)\n", s->config);
    em_send_data(conn, hello, (size_t)n);
}

static void receiving(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static void closing(em_conn *conn, int reason)
{
    (void)reason;
    struct server *s = em_conn_arg(conn);
    struct client *c = em_conn_state(conn);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    if (s->stopping && s->clients.next == &s->clients)
        em_stop(s->loop); /* the last connection is gone */
}

static const em_handler client_handler = {
    .state_size = sizeof(struct client),
    .post_init = opening,
    .receive_data = receiving,
    .unbind = closing,
};

static void reload(em_loop *loop, int signo, void *arg)
{
    (void)loop;
    (void)signo;
    struct server *s = arg;
    s->config++;
    puts("reloading");
    fflush(stdout);
}

static void grace_over(em_loop *loop, void *arg)
{
    (void)arg;
    em_stop(loop); /* unbinds whoever is still there */
}

static void graceful_stop(em_loop *loop, int signo, void *arg)
{
    struct server *s = arg;
    if (s->stopping)
        return; /* a second Ctrl-C while draining */
    s->stopping = 1;
    printf("stopping (%s)\n", signo == SIGTERM ? "SIGTERM" : "SIGINT");
    fflush(stdout);
    em_stop_server(s->listener);
    s->listener = NULL;
    if (s->clients.next == &s->clients) {
        em_stop(loop);
        return;
    }
    for (struct client *c = s->clients.next; c != &s->clients; c = c->next) {
        em_send_data(c->conn, "bye\n", 4);
        em_close_connection(c->conn, 1); /* after writing */
    }
    em_add_timer(loop, GRACE_SECONDS, grace_over, NULL, NULL);
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8001;
    struct server s;
    memset(&s, 0, sizeof(s));
    s.clients.next = s.clients.prev = &s.clients;

    int err = em_loop_new(&s.loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    /* Before any thread exists, so that every later thread inherits the
     * blocked mask (libem's own threads block every signal anyway). */
    if ((err = em_add_signal(s.loop, SIGHUP, reload, &s, NULL)) < 0 ||
        (err = em_add_signal(s.loop, SIGTERM, graceful_stop, &s, NULL)) < 0 ||
        (err = em_add_signal(s.loop, SIGINT, graceful_stop, &s, NULL)) < 0) {
        fprintf(stderr, "em_add_signal: %s\n", em_strerror(err));
        em_loop_free(s.loop);
        return 1;
    }
    err = em_start_server(s.loop, "127.0.0.1", port, &client_handler, &s, NULL,
                          &s.listener);
    if (err < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port,
                em_strerror(err));
        em_loop_free(s.loop);
        return 1;
    }
    printf("listening on 127.0.0.1:%d (pid %d)\n", em_server_port(s.listener),
           (int)getpid());
    fflush(stdout);
    em_run(s.loop);
    err = em_loop_free(s.loop);
    puts("stopped");
    return err < 0 ? 1 : 0;
}
