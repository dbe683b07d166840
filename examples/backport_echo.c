/*
 * backport_echo.c - the Backport README's echo server, with libem's
 * Backport adapters (docs/backport.md).
 *
 *   build/examples/backport_echo [PORT]     (default 8000, on localhost)
 *
 * The Ruby original:
 *
 *   module MyAdapter
 *     def opening; puts "Opening a connection"; end
 *     def closing; puts "Closing a connection"; end
 *     def receiving data; write "Client sent: #{data}"; end
 *   end
 *   Backport.run do
 *     Backport.prepare_tcp_server(host: 'localhost', port: 8000,
 *                                 adapter: MyAdapter)
 *   end
 *
 * Prints "Opening a connection" and "Closing a connection" and answers
 * every chunk it reads with "Client sent: <data>" (a chunk, not a line:
 * see docs/guide.md on arbitrary chunks). Ctrl-C (SIGINT) or SIGTERM stops
 * the loop: the listener closes and every open connection gets its
 * closing, once, before the program exits 0.
 *
 * Try it from another terminal with bash alone:
 *   exec 3<>/dev/tcp/localhost/8000; printf 'hi\n' >&3; timeout 1 cat <&3
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "em.h"

static void opening(em_conn *conn, void *arg)
{
    (void)conn;
    (void)arg;
    puts("Opening a connection");
    fflush(stdout); /* one line at a time, also into a pipe */
}

static void closing(em_conn *conn, int reason)
{
    (void)conn;
    (void)reason; /* 0, or why it ended: -ECONNRESET, ... */
    puts("Closing a connection");
    fflush(stdout);
}

static void receiving(em_conn *conn, const char *data, size_t len)
{
    static const char prefix[] = "Client sent: ";
    em_write(conn, prefix, sizeof(prefix) - 1);
    em_write(conn, data, len);
}

static const em_adapter my_adapter = {
    .opening = opening,
    .closing = closing,
    .receiving = receiving,
};

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

int main(int argc, char **argv)
{
    char *end = NULL;
    long port = argc > 1 ? strtol(argv[1], &end, 10) : 8000;
    if (argc > 2 || (end && *end) || port < 0 || port > 65535) {
        fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
        return 2;
    }
    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    err = em_prepare_tcp_server(loop, "localhost", (int)port, &my_adapter, NULL,
                                NULL);
    if (err < 0) {
        fprintf(stderr, "cannot listen on localhost:%ld: %s\n", port,
                em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    if ((err = em_add_signal(loop, SIGINT, on_signal, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGTERM, on_signal, NULL, NULL)) < 0) {
        fprintf(stderr, "em_add_signal: %s\n", em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    em_run(loop); /* Backport.run */
    return em_loop_free(loop) < 0 ? 1 : 0;
}
