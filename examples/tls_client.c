/*
 * tls_client.c - a verifying TLS client, in C with libem.
 *
 *   build/examples/tls_client HOST PORT [CA_FILE]
 *
 * Connects to HOST:PORT and starts TLS with libem's secure defaults: the
 * server's chain must lead to a CA in CA_FILE (or, without it, in the
 * system's store) and its certificate must name HOST. Once the handshake
 * completes it prints the certificate's subject and the cipher to stderr,
 * then sends what arrives on standard input and prints to stdout whatever
 * comes back. At the end of standard input it shuts its sending side
 * (close_notify) and exits once the server has closed too.
 *
 * Every failure (connect, verification, handshake, a dropped connection) is
 * printed with em_strerror and em_tls_error and exits with status 1. Ctrl-C
 * stops it. Standard input is a libem connection too (em_open_stdio): its
 * chunks go to the server as they arrive, and its EOF is the half-close.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "em.h"

static em_loop *the_loop;

typedef struct client {
    const char *host;
    const char *port;
    em_tls_options tls;
    em_conn *conn;
    int connected;
    em_conn *input; /* standard input, once the handshake is done */
    int failed;
} client;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(the_loop); /* async-signal-safe */
}

static void fail(client *c, const char *what, int err)
{
    const char *why = c->conn ? em_tls_error(c->conn) : "";
    fprintf(stderr, "tls_client: %s: %s%s%s%s\n", what, em_strerror(err),
            *why ? " (" : "", why, *why ? ")" : "");
    c->failed = 1;
}

/* Prints the subject of the server's certificate, read from its PEM. */
static void print_peer_subject(em_conn *conn)
{
    int len = em_get_peer_cert(conn, NULL, 0);
    if (len < 0) {
        fprintf(stderr, "no server certificate: %s\n", em_strerror(len));
        return;
    }
    char *pem = malloc((size_t)len + 1);
    if (!pem || em_get_peer_cert(conn, pem, (size_t)len + 1) != len) {
        free(pem);
        return;
    }
    BIO *bio = BIO_new_mem_buf(pem, len);
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    if (cert) {
        char name[512];
        X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof name);
        fprintf(stderr, "subject: %s\n", name);
    }
    X509_free(cert);
    BIO_free(bio);
    free(pem);
}

static void stop_reading_stdin(client *c)
{
    if (c->input)
        em_close_connection(c->input, 0);
}

/* Standard input: every chunk goes to the server. */
static void input_received(em_conn *input, const char *data, size_t len)
{
    client *c = em_conn_arg(input);
    int err = em_send_data(c->conn, data, len);
    if (err < 0)
        fail(c, "send", err);
}

/* End of standard input: half-close, so the server sees close_notify and
 * finishes; its last bytes still arrive. */
static void input_closed(em_conn *input, int reason)
{
    client *c = em_conn_arg(input);
    (void)reason;
    c->input = NULL;
    if (!c->conn)
        return;
    int err = em_close_write(c->conn);
    if (err < 0 && err != -ENOTCONN)
        fail(c, "close", err);
}

static const em_handler input_handler = {
    .receive_data = input_received,
    .unbind = input_closed,
};

static void connecting(em_conn *conn, void *arg)
{
    client *c = arg;
    c->conn = conn;
    int err = em_start_tls(conn, &c->tls);
    if (err < 0) {
        fail(c, "cannot start TLS", err);
        em_close_connection(conn, 0);
    }
}

static void handshake_completed(em_conn *conn)
{
    client *c = em_conn_arg(conn);
    print_peer_subject(conn);
    fprintf(stderr, "cipher: %s %s\n", em_tls_protocol(conn),
            em_tls_cipher(conn));
    int err = em_open_stdio(the_loop, &input_handler, c, &c->input);
    if (err < 0) {
        fail(c, "standard input", err);
        em_close_connection(conn, 0);
    }
}

static void receiving(em_conn *conn, const char *data, size_t len)
{
    (void)conn;
    fwrite(data, 1, len, stdout);
    fflush(stdout);
}

static void connected(em_conn *conn)
{
    client *c = em_conn_arg(conn);
    c->connected = 1;
}

/* Says what went wrong, if anything: the connect, the handshake (with the
 * certificate check's reason) or the established connection. */
static void closed(em_conn *conn, int reason)
{
    client *c = em_conn_arg(conn);
    stop_reading_stdin(c);
    int handshake_done = em_tls_handshake_done(conn);
    char what[512];
    if (!c->connected)
        snprintf(what, sizeof what, "cannot connect to %s:%s", c->host,
                 c->port);
    else if (!handshake_done)
        snprintf(what, sizeof what, "TLS handshake with %s:%s failed", c->host,
                 c->port);
    else
        snprintf(what, sizeof what, "connection to %s:%s lost", c->host,
                 c->port);
    if (reason == 0 && !handshake_done)
        reason = -ECONNABORTED; /* closed before the handshake ended */
    if (reason != 0 && !c->failed)
        fail(c, what, reason);
    c->conn = NULL;
    em_stop(the_loop);
}

static const em_handler tls_client = {
    .post_init = connecting,
    .connection_completed = connected,
    .ssl_handshake_completed = handshake_completed,
    .receive_data = receiving,
    .unbind = closed,
};

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s HOST PORT [CA_FILE]\n", argv[0]);
        return 2;
    }
    client c = {
        .host = argv[1],
        .port = argv[2],
        .tls = {.ca_file = argc == 4 ? argv[3] : NULL},
    };
    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    err = em_connect(the_loop, argv[1], atoi(argv[2]), &tls_client, &c, NULL);
    if (err < 0) {
        fprintf(stderr, "tls_client: cannot connect to %s:%s: %s\n", argv[1],
                argv[2], em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    em_run(the_loop);
    if (em_loop_free(the_loop) < 0)
        c.failed = 1;
    return c.failed ? 1 : 0;
}
