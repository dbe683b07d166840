/*
 * echo_server.c - the Backport README's echo server, in C with libem.
 *
 *   build/examples/echo_server [port]     (default 8000, 127.0.0.1)
 *
 * Prints "Opening a connection" and "Closing a connection" and answers every
 * chunk with "Client sent: <data>". Ctrl-C (SIGINT) or SIGTERM stops the
 * loop cleanly: the signals arrive as loop callbacks (em_add_signal), and
 * every connection is unbound before em_run returns.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "em.h"

static em_loop *the_loop;

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

static void opening(em_conn *conn, void *arg)
{
    (void)conn;
    (void)arg;
    puts("Opening a connection");
    fflush(stdout);
}

static void receiving(em_conn *conn, const char *data, size_t len)
{
    static const char prefix[] = "Client sent: ";
    em_send_data(conn, prefix, sizeof(prefix) - 1);
    em_send_data(conn, data, len);
}

static void closing(em_conn *conn, int reason)
{
    (void)conn;
    (void)reason;
    puts("Closing a connection");
    fflush(stdout);
}

static const em_handler echo_adapter = {
    .post_init = opening,
    .receive_data = receiving,
    .unbind = closing,
};

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_server *server;
    err = em_start_server(the_loop, "127.0.0.1", port, &echo_adapter, NULL,
                          NULL, &server);
    if (err < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port,
                em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }
    if ((err = em_add_signal(the_loop, SIGINT, on_signal, NULL, NULL)) < 0 ||
        (err = em_add_signal(the_loop, SIGTERM, on_signal, NULL, NULL)) < 0) {
        fprintf(stderr, "em_add_signal: %s\n", em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }

    printf("echo server listening on 127.0.0.1:%d\n", em_server_port(server));
    fflush(stdout);
    em_run(the_loop);
    err = em_loop_free(the_loop);
    puts("stopped");
    return err < 0 ? 1 : 0;
}
