/*
 * tls_echo_server.c - an echo server over TLS, in C with libem.
 *
 *   build/examples/tls_echo_server PORT CERT_FILE KEY_FILE
 *
 * Listens on 127.0.0.1:PORT (0 picks a free port; the first line printed
 * names it), starts TLS on every accepted connection in post_init and sends
 * back every byte that arrives. CERT_FILE is the PEM certificate chain and
 * KEY_FILE its private key; libem reads them on the first connection and
 * shares the context with the later ones. Once a handshake completes it
 * prints one line for the connection with the negotiated protocol and
 * cipher; a failed one prints OpenSSL's reason to stderr instead.
 *
 * Try it with the test certificates (build/tests/certs, made by
 * build/tests/tls_certgen) and the example client, or with
 * `openssl s_client -connect 127.0.0.1:PORT`. Ctrl-C stops it cleanly, as
 * in echo_server.c: every connection is unbound before em_run returns.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

static em_loop *the_loop;

/* The server's arg: the TLS options every connection starts with. */
typedef struct echo_server {
    em_tls_options tls;
    unsigned connections;
} echo_server;

/* Per connection (em_conn_state). */
typedef struct echo_conn {
    unsigned id;
} echo_conn;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(the_loop); /* async-signal-safe */
}

static void opening(em_conn *conn, void *arg)
{
    echo_server *server = arg;
    echo_conn *ec = em_conn_state(conn);
    ec->id = ++server->connections;
    int err = em_start_tls(conn, &server->tls);
    if (err < 0) {
        fprintf(stderr, "connection %u: cannot start TLS: %s (%s)\n", ec->id,
                em_strerror(err), em_tls_error(conn));
        em_close_connection(conn, 0);
    }
}

static void handshake_completed(em_conn *conn)
{
    echo_conn *ec = em_conn_state(conn);
    printf("connection %u: %s %s\n", ec->id, em_tls_protocol(conn),
           em_tls_cipher(conn));
    fflush(stdout);
}

static void receiving(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len); /* plaintext in, plaintext out */
}

static void closing(em_conn *conn, int reason)
{
    echo_conn *ec = em_conn_state(conn);
    if (reason != 0 && !em_tls_handshake_done(conn))
        fprintf(stderr, "connection %u: handshake failed: %s (%s)\n", ec->id,
                em_strerror(reason), em_tls_error(conn));
}

static const em_handler tls_echo = {
    .state_size = sizeof(echo_conn),
    .post_init = opening,
    .ssl_handshake_completed = handshake_completed,
    .receive_data = receiving,
    .unbind = closing,
};

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT CERT_FILE KEY_FILE\n", argv[0]);
        return 2;
    }
    echo_server server = {
        .tls = {.cert_chain_file = argv[2], .private_key_file = argv[3]},
    };
    int port = atoi(argv[1]);
    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_server *listener;
    err = em_start_server(the_loop, "127.0.0.1", port, &tls_echo, &server, NULL,
                          &listener);
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

    printf("tls echo server listening on 127.0.0.1:%d\n",
           em_server_port(listener));
    fflush(stdout);
    em_run(the_loop);
    err = em_loop_free(the_loop);
    puts("stopped");
    return err < 0 ? 1 : 0;
}
