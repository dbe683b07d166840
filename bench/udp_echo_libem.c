/*
 * udp_echo_libem.c - the libem UDP echo server the UDP benchmark measures.
 *
 * Usage: udp_echo_libem [port]   (127.0.0.1, default 8000)
 *
 * Written the way em.h recommends: receive_data gets one datagram and hands
 * it to em_send_data, which sends it straight back to its sender. The socket
 * buffers are raised like the libuv server's, so neither is measured
 * against drops from a default-sized buffer.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "em.h"

static em_loop *loop;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(loop);
}

static void receive_data(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static const em_handler echo = {.receive_data = receive_data};

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    if (em_loop_new(&loop) < 0)
        return 1;
    em_conn *conn;
    int err =
        em_open_datagram_socket(loop, "127.0.0.1", port, &echo, NULL, &conn);
    if (err < 0) {
        fprintf(stderr, "udp_echo_libem: port %d: %s\n", port,
                em_strerror(err));
        return 1;
    }
    int buf = 4 << 20;
    em_set_sock_opt(conn, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    em_run(loop);
    em_loop_free(loop);
    return 0;
}
