/*
 * echo_libem.c - the libem echo server the benchmarks measure.
 *
 * Usage: echo_libem [port]   (127.0.0.1, default 8000)
 *
 * Written the way em.h recommends: receive_data hands the chunk straight to
 * em_send_data, which writes at once and queues only what the kernel did not
 * take. TCP_NODELAY is set like the other servers in bench/, so none of them
 * is measured against Nagle delays. Watermarks bound what a client that
 * sends without reading can make the server queue (about 1 MiB), as a
 * production echo server should; the rivals have no equivalent, and the
 * check costs nothing until a queue actually grows.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

static em_loop *loop;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(loop);
}

static void post_init(em_conn *conn, void *arg)
{
    (void)arg;
    int one = 1;
    em_set_sock_opt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    em_set_watermarks(conn, 1024 * 1024, 256 * 1024, NULL);
}

static void receive_data(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static const em_handler echo = {
    .post_init = post_init,
    .receive_data = receive_data,
};

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    if (em_loop_new(&loop) < 0)
        return 1;
    em_server_opts opts = {.backlog = 4096};
    int err = em_start_server(loop, "127.0.0.1", port, &echo, NULL, &opts,
                              NULL);
    if (err < 0) {
        fprintf(stderr, "echo_libem: port %d: %s\n", port, em_strerror(err));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    em_run(loop);
    em_loop_free(loop);
    return 0;
}
