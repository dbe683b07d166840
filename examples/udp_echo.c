/*
 * udp_echo.c - a UDP echo server: every datagram goes back to its sender.
 *
 *   build/examples/udp_echo [port]     (default 8000, 127.0.0.1; 0 = any)
 *
 * receive_data gets one whole datagram per call, and em_send_data on a
 * datagram socket replies to the sender of the datagram being delivered
 * (EventMachine's semantics), so the handler is the same as a TCP echo's.
 * Try it with `printf hi | nc -u -w1 127.0.0.1 8000`. Ctrl-C stops it: the
 * socket is unbound before em_run returns.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

static em_loop *the_loop;
static unsigned long datagrams;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(the_loop); /* async-signal-safe */
}

static void echo(em_conn *conn, const char *data, size_t len)
{
    datagrams++;
    int err = em_send_data(conn, data, len); /* back to this sender */
    if (err < 0) {
        /* A failed reply never closes the socket: report and go on. */
        char host[INET6_ADDRSTRLEN] = "?";
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (em_get_peername(conn, (struct sockaddr *)&ss, &sl) == 0)
            inet_ntop(ss.ss_family,
                      ss.ss_family == AF_INET6
                          ? (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                          : (void *)&((struct sockaddr_in *)&ss)->sin_addr,
                      host, sizeof(host));
        fprintf(stderr, "reply to %s failed: %s\n", host, em_strerror(err));
    }
}

static void closed(em_conn *conn, int reason)
{
    (void)conn;
    printf("socket closed (%s) after %lu datagrams\n", em_err_name(reason),
           datagrams);
}

static const em_handler udp_echo = {
    .receive_data = echo,
    .unbind = closed,
};

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_conn *conn;
    err = em_open_datagram_socket(the_loop, "127.0.0.1", port, &udp_echo, NULL,
                                  &conn);
    if (err < 0) {
        fprintf(stderr, "cannot bind 127.0.0.1:%d/udp: %s\n", port,
                em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    printf("udp echo on 127.0.0.1:%d\n", em_datagram_port(conn));
    fflush(stdout);
    em_run(the_loop);
    err = em_loop_free(the_loop);
    return err < 0 ? 1 : 0;
}
