/*
 * tcp_proxy.c - a TCP relay: every client is connected to TARGET and the
 * bytes move both ways with em_proxy_incoming_to (splice(2) through a
 * pipe: they never enter this process's memory).
 *
 *   build/examples/tcp_proxy PORT TARGET_HOST TARGET_PORT
 *
 * Backpressure: at most 1 MiB waits for a slow side; the fast side stops
 * reading until it drains. When either side closes, the other is closed
 * once what is in flight has been sent. Ctrl-C stops the loop.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

#define BUFSIZE (1024 * 1024)

static em_loop *the_loop;
static const char *target_host;
static int target_port;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(the_loop);
}

/* Both ends of a relay share one pair; each side's state points at it. */
typedef struct relay {
    em_conn *client;
    em_conn *backend;
} relay;

typedef struct side {
    relay *pair;
} side;

static void backend_post_init(em_conn *conn, void *arg)
{
    side *s = em_conn_state(conn);
    s->pair = arg;
    s->pair->backend = conn;
}

static void backend_completed(em_conn *conn)
{
    side *s = em_conn_state(conn);
    relay *pair = s->pair;
    if (!pair->client)
        return;
    if (em_proxy_incoming_to(pair->client, conn, BUFSIZE, 0) < 0 ||
        em_proxy_incoming_to(conn, pair->client, BUFSIZE, 0) < 0) {
        em_close_connection(conn, 0);
        return;
    }
    em_resume_reading(pair->client);
}

/* Either side's unbind closes the other after writing and forgets it. */
static void side_unbind(em_conn *conn, int reason)
{
    side *s = em_conn_state(conn);
    relay *pair = s->pair;
    int is_client = pair->client == conn;
    em_conn *other = is_client ? pair->backend : pair->client;
    if (is_client)
        pair->client = NULL;
    else
        pair->backend = NULL;
    if (reason < 0)
        fprintf(stderr, "%s: %s\n", is_client ? "client" : "target",
                em_strerror(reason));
    if (other)
        em_close_connection(other, 1);
    else
        free(pair);
}

static const em_handler backend_handler = {
    .state_size = sizeof(side),
    .post_init = backend_post_init,
    .connection_completed = backend_completed,
    .unbind = side_unbind,
};

static void client_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    side *s = em_conn_state(conn);
    relay *pair = calloc(1, sizeof(*pair));
    if (!pair) {
        em_close_connection(conn, 0);
        return;
    }
    s->pair = pair;
    pair->client = conn;
    /* Hold the client's bytes until the target is connected. */
    em_pause_reading(conn);
    int err = em_connect(the_loop, target_host, target_port, &backend_handler,
                         pair, NULL);
    if (err < 0) {
        fprintf(stderr, "connect: %s\n", em_strerror(err));
        em_close_connection(conn, 0);
    }
}

static const em_handler client_handler = {
    .state_size = sizeof(side),
    .post_init = client_post_init,
    .unbind = side_unbind,
};

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT TARGET_HOST TARGET_PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    target_host = argv[2];
    target_port = atoi(argv[3]);
    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_server *server;
    err = em_start_server(the_loop, "127.0.0.1", port, &client_handler, NULL,
                          NULL, &server);
    if (err < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port,
                em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("tcp_proxy on 127.0.0.1:%d -> %s:%d\n", em_server_port(server),
           target_host, target_port);
    fflush(stdout);
    em_run(the_loop);
    return em_loop_free(the_loop) < 0;
}
