/*
 * echo_tls_libem.c - the libem TLS echo server the TLS benchmarks measure.
 *
 * Usage: echo_tls_libem PORT CERT KEY [--plain]   (127.0.0.1)
 *
 * Every accepted connection starts TLS in post_init with the certificate
 * chain and key files (the loop caches the context, so only the first
 * connection reads them) and echoes every plaintext byte it receives, so
 * the reply to bench/tls_loadgen's one small request in the handshake modes
 * is its echo. --plain skips em_start_tls: the same program then is the
 * plaintext echo server the 16 KiB TLS echo is compared with. TCP_NODELAY
 * is set as in bench/echo_libem.c and as nginx does on keep-alive sockets.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

struct config {
    em_tls_options tls;
    int plain;
};

static em_loop *loop;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(loop);
}

static void post_init(em_conn *conn, void *arg)
{
    const struct config *cfg = arg;
    int one = 1;
    em_set_sock_opt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (cfg->plain)
        return;
    int err = em_start_tls(conn, &cfg->tls);
    if (err < 0) {
        fprintf(stderr, "echo_tls_libem: em_start_tls: %s (%s)\n", em_strerror(err),
                em_tls_error(conn));
        em_close_connection(conn, 0);
    }
}

static void receive_data(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static const em_handler echo = {
    .post_init = post_init,
    .receive_data = receive_data,
};

static int parse_args(int argc, char **argv, int *port, struct config *cfg)
{
    if (argc < 4 || argc > 5)
        return -1;
    *port = atoi(argv[1]);
    cfg->tls.cert_chain_file = argv[2];
    cfg->tls.private_key_file = argv[3];
    cfg->plain = argc == 5 && strcmp(argv[4], "--plain") == 0;
    return argc == 5 && !cfg->plain ? -1 : 0;
}

int main(int argc, char **argv)
{
    static struct config cfg;
    int port;
    if (parse_args(argc, argv, &port, &cfg) != 0) {
        fprintf(stderr, "usage: echo_tls_libem PORT CERT KEY [--plain]\n");
        return 2;
    }
    if (em_loop_new(&loop) < 0)
        return 1;
    em_server_opts opts = {.backlog = 4096};
    int err = em_start_server(loop, "127.0.0.1", port, &echo, &cfg, &opts, NULL);
    if (err < 0) {
        fprintf(stderr, "echo_tls_libem: port %d: %s\n", port, em_strerror(err));
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
