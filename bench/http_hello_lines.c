/*
 * http_hello_lines.c - examples/http_hello.c's server written with libem's
 * line framer instead of its own parser, to measure the difference
 * (bench/http_run.sh --servers "libem libem-lines").
 *
 * What: usage http_hello_lines PORT. em_use_lines with "\r\n" hands over
 * the request line and each header line; the empty line ends the head; a
 * Content-Length body is skipped in binary mode (EM_BINARY_PIECES, nothing
 * buffered). Same answers as http_hello for GET/HEAD, keep-alive, HTTP/1.0
 * keep-alive and Connection: close, with the same Date-stamped templates.
 * Why only for the benchmark: a line over max_line closes the connection
 * without a 431, and responses to pipelined requests go out one write each
 * (nothing tells the handler that a read ended); see http_hello.c's top
 * comment. On wrk's load (no pipelining) both make one read and one write
 * per request, so the difference is the parsing alone.
 */
#define _POSIX_C_SOURCE 200809L
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "em.h"

#define BODY "Hello, World!"
#define BODY_LEN (sizeof(BODY) - 1)

enum { KEEP_11, KEEP_10, CLOSE, TEMPLATES };

struct hello {
    time_t date_second;
    char ok[TEMPLATES][192];
    size_t ok_len[TEMPLATES];
};

static void refresh_date(struct hello *app)
{
    time_t now = time(NULL);
    if (now == app->date_second)
        return;
    app->date_second = now;
    struct tm tm;
    char date[40];
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    static const char *const connection[TEMPLATES] = {
        "", "Connection: keep-alive\r\n", "Connection: close\r\n"};
    for (int i = 0; i < TEMPLATES; i++)
        app->ok_len[i] = (size_t)snprintf(
            app->ok[i], sizeof(app->ok[i]),
            "HTTP/1.1 200 OK\r\nServer: libem\r\nDate: %s\r\n"
            "Content-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n" BODY,
            date, BODY_LEN, connection[i]);
}

struct req {
    int in_head; /* the request line was seen */
    int head, http10, close, keep_alive;
    uint64_t length;
};

static int has_token(const char *v, size_t len, const char *token)
{
    size_t t = strlen(token);
    for (size_t i = 0; i + t <= len; i++)
        if (strncasecmp(v + i, token, t) == 0)
            return 1;
    return 0;
}

static void answer(em_conn *conn, struct req *r)
{
    struct hello *app = em_conn_arg(conn);
    refresh_date(app);
    int keep = r->http10 ? r->keep_alive : 1;
    if (r->close)
        keep = 0;
    int t = !keep ? CLOSE : r->http10 ? KEEP_10 : KEEP_11;
    em_send_data(conn, app->ok[t], app->ok_len[t] - (r->head ? BODY_LEN : 0));
    memset(r, 0, sizeof(*r));
    if (!keep)
        em_close_connection(conn, 1);
}

static void on_line(em_conn *conn, const char *line, size_t len)
{
    struct req *r = em_conn_state(conn);
    if (!r->in_head) {
        if (len == 0)
            return; /* empty lines before a request */
        if (len < 14 || memcmp(line + len - 8, "HTTP/1.", 7) != 0) {
            em_close_connection(conn, 0);
            return;
        }
        r->in_head = 1;
        r->head = len > 5 && memcmp(line, "HEAD ", 5) == 0;
        r->http10 = line[len - 1] == '0';
        return;
    }
    if (len == 0) {
        if (r->length) {
            em_set_binary_mode(conn, r->length, EM_BINARY_PIECES);
            return;
        }
        answer(conn, r);
        return;
    }
    if (len > 11 && strncasecmp(line, "connection:", 11) == 0) {
        r->close |= has_token(line + 11, len - 11, "close");
        r->keep_alive |= has_token(line + 11, len - 11, "keep-alive");
    } else if (len > 15 && strncasecmp(line, "content-length:", 15) == 0) {
        r->length = strtoull(line + 15, NULL, 10);
    }
}

static void on_body(em_conn *conn, const char *data, size_t len)
{
    (void)conn;
    (void)data;
    (void)len;
}

static void on_body_end(em_conn *conn)
{
    answer(conn, em_conn_state(conn));
}

static void on_open(em_conn *conn, void *arg)
{
    (void)arg;
    int one = 1;
    em_set_sock_opt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    em_set_comm_inactivity_timeout(conn, 30.0);
    em_line_opts opts = {.delimiter = "\r\n", .max_line = 8192};
    em_use_lines(conn, &opts);
}

static const em_handler handler = {
    .state_size = sizeof(struct req),
    .post_init = on_open,
    .receive_line = on_line,
    .receive_binary_data = on_body,
    .receive_end_of_binary_data = on_body_end,
};

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    struct hello app = {.date_second = -1};
    em_loop *loop;
    em_server *server;
    if (em_loop_new(&loop) < 0 ||
        em_start_server(loop, "127.0.0.1", atoi(argv[1]), &handler, &app, NULL,
                        &server) < 0 ||
        em_add_signal(loop, SIGINT, on_signal, NULL, NULL) < 0 ||
        em_add_signal(loop, SIGTERM, on_signal, NULL, NULL) < 0) {
        fprintf(stderr, "http_hello_lines: cannot start\n");
        return 1;
    }
    printf("http_hello_lines listening on 127.0.0.1:%d\n",
           em_server_port(server));
    fflush(stdout);
    em_run(loop);
    return em_loop_free(loop) < 0 ? 1 : 0;
}
