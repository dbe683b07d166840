/*
 * line_client.c - a line-oriented TCP client, in C with libem.
 *
 *   build/examples/line_client [-c SECONDS] [-i SECONDS] HOST PORT
 *
 * Connects to HOST:PORT (a name or an IPv4/IPv6 literal; names are
 * resolved off the loop thread), then sends every line of standard input
 * and prints every line the server sends. At the end of standard input it
 * half-closes (the server sees EOF) and exits once the server has closed
 * its side too. Try it against chat_server or echo_server.
 *
 *   -c SECONDS  connect timeout: give up when the connection (name
 *               resolution included) is not established in time
 *               (default 10; 0 = never)
 *   -i SECONDS  inactivity timeout: give up when nothing is sent or
 *               received for that long once connected (default 300;
 *               0 = never)
 *
 * Exit status: 0 when the server closed the connection normally, 1 when it
 * could not connect (refused, unknown host, connect timeout), 3 when an
 * established connection failed (inactivity timeout, reset, a line longer
 * than MAX_LINE), 2 for a usage error. Every failure is printed to stderr
 * with em_strerror and the errno's name.
 *
 * Both timeouts end in unbind(-ETIMEDOUT); what tells them apart is whether
 * the connection was ever established. This client keeps a flag set in
 * connection_completed; em_is_connecting(conn), still 1 inside unbind for
 * a connect that never completed, says the same (see closed()).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "em.h"

#define MAX_LINE (64 * 1024) /* longest line accepted from the server */

typedef struct client {
    const char *host;
    const char *port;
    double connect_timeout;
    double idle_timeout;
    em_conn *server;
    em_conn *input; /* standard input, once connected */
    int connected;  /* set in connection_completed */
    int status;     /* the exit status */
} client;

/* ---- standard input: every line goes to the server ------------------ */

static void input_line(em_conn *input, const char *line, size_t len)
{
    client *c = em_conn_arg(input);
    /* Line and newline in one write. A failed send closes the server
     * connection, and its unbind reports why. */
    struct iovec iov[2] = {{(void *)line, len}, {"\n", 1}};
    em_send_datav(c->server, iov, 2);
}

/* End of standard input (or a read error): tell the server we are done.
 * Its answers still arrive; we exit when it closes. */
static void input_closed(em_conn *input, int reason)
{
    client *c = em_conn_arg(input);
    c->input = NULL;
    if (reason == -EMSGSIZE)
        fprintf(stderr, "line_client: an input line is longer than %d bytes\n",
                MAX_LINE);
    if (c->server)
        em_close_write(c->server);
}

static const em_handler input_handler = {
    .receive_line = input_line,
    .unbind = input_closed,
};

/* ---- the server connection ------------------------------------------ */

static void connecting(em_conn *conn, void *arg)
{
    client *c = arg;
    c->server = conn;
    em_line_opts opts = {.max_line = MAX_LINE};
    int err = em_use_lines(conn, &opts);
    if (err == 0)
        err = em_set_pending_connect_timeout(conn, c->connect_timeout);
    if (err < 0) {
        fprintf(stderr, "line_client: %s\n", em_strerror(err));
        em_close_connection(conn, 0);
    }
}

static void connected(em_conn *conn)
{
    client *c = em_conn_arg(conn);
    c->connected = 1;
    /* Counted from now: connecting is covered by the connect timeout. */
    em_set_comm_inactivity_timeout(conn, c->idle_timeout);
    em_line_opts opts = {.max_line = MAX_LINE};
    em_conn *input;
    int err = em_open_stdio(em_conn_loop(conn), &input_handler, c, &input);
    if (err == 0)
        err = em_use_lines(input, &opts);
    if (err < 0) {
        fprintf(stderr, "line_client: standard input: %s\n", em_strerror(err));
        em_close_connection(conn, 0);
        return;
    }
    c->input = input;
}

static void server_line(em_conn *conn, const char *line, size_t len)
{
    (void)conn;
    fwrite(line, 1, len, stdout);
    putchar('\n');
    fflush(stdout);
}

static void closed(em_conn *conn, int reason)
{
    client *c = em_conn_arg(conn);
    c->server = NULL;
    if (c->input)
        em_close_connection(c->input, 0); /* stop reading stdin */
    em_stop(em_conn_loop(conn));

    /* Was it ever established? c->connected (set in connection_completed)
     * answers; em_is_connecting(conn) would too: it stays 1 here for a
     * connect that never completed. */
    int never_connected = !c->connected;
    if (never_connected && reason == 0)
        reason = -ECANCELED; /* closed by us before it connected */
    if (reason == 0) {
        c->status = 0; /* the server closed: done */
        return;
    }

    const char *why = em_strerror(reason);
    const char *name = em_err_name(reason);
    if (never_connected) {
        c->status = 1;
        if (reason == -ETIMEDOUT)
            fprintf(stderr,
                    "line_client: cannot connect to %s:%s: connect timeout "
                    "after %g s (%s: %s)\n",
                    c->host, c->port, c->connect_timeout, name, why);
        else if (reason == -ENOENT)
            fprintf(stderr,
                    "line_client: cannot connect to %s:%s: unknown host "
                    "(%s: %s)\n",
                    c->host, c->port, name, why);
        else
            fprintf(stderr, "line_client: cannot connect to %s:%s: %s (%s)\n",
                    c->host, c->port, why, name);
        return;
    }
    c->status = 3;
    if (reason == -ETIMEDOUT)
        fprintf(stderr,
                "line_client: %s:%s: inactivity timeout, nothing sent or "
                "received for %g s (%s: %s)\n",
                c->host, c->port, c->idle_timeout, name, why);
    else if (reason == -EMSGSIZE)
        fprintf(stderr,
                "line_client: %s:%s sent a line longer than %d bytes "
                "(%s: %s)\n",
                c->host, c->port, MAX_LINE, name, why);
    else
        fprintf(stderr, "line_client: connection to %s:%s lost: %s (%s)\n",
                c->host, c->port, why, name);
}

static const em_handler server_handler = {
    .post_init = connecting,
    .connection_completed = connected,
    .receive_line = server_line,
    .unbind = closed,
};

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

static int usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-c SECONDS] [-i SECONDS] HOST PORT\n", prog);
    return 2;
}

static int seconds_arg(const char *s, double *out)
{
    char *end;
    *out = strtod(s, &end);
    return *s && !*end && *out >= 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    client c = {.connect_timeout = 10, .idle_timeout = 300, .status = 1};
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        double *opt = strcmp(argv[i], "-c") == 0   ? &c.connect_timeout
                      : strcmp(argv[i], "-i") == 0 ? &c.idle_timeout
                                                   : NULL;
        if (!opt || seconds_arg(argv[i + 1], opt) < 0)
            return usage(argv[0]);
    }
    if (argc - i != 2)
        return usage(argv[0]);
    c.host = argv[i];
    c.port = argv[i + 1];
    char *end;
    long port = strtol(c.port, &end, 10);
    if (*end || port < 1 || port > 65535)
        return usage(argv[0]);

    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    if ((err = em_add_signal(loop, SIGINT, on_signal, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGTERM, on_signal, NULL, NULL)) < 0 ||
        (err = em_connect(loop, c.host, (int)port, &server_handler, &c, NULL)) <
            0) {
        fprintf(stderr, "line_client: %s\n", em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    em_run(loop);
    if (em_loop_free(loop) < 0 && c.status == 0)
        c.status = 1;
    return c.status;
}
