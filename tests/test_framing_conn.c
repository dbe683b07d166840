/*
 * test_framing_conn.c - framers attached to connections (em_use_lines,
 * em_use_frames, em_use_raw, em_set_binary_mode, em_send_frame) and
 * em_send_datav, over real sockets on 127.0.0.1.
 *
 * Covers: lines from a client that writes in random pieces (each piece a
 * separate read); binary mode entered from receive_line in the middle of a
 * chunk; em_pause and em_pause_reading inside receive_line stop delivery
 * before the next line and the rest of the chunk comes after the resume, in
 * order, before anything read later; a watermark on the connection's own
 * queue does the same to a pipelining client that does not read; a close
 * inside receive_line drops the rest; em_use_raw inside receive_line hands
 * the rest of the chunk to receive_data, em_use_lines inside receive_data
 * parses only later chunks; an overlong line ends in unbind(-EMSGSIZE); an
 * unterminated last line arrives at the peer's EOF and can still be
 * answered; frames echoed with em_send_frame across random chunking, an
 * EOF inside a frame (-EBADMSG) and a frame above the maximum (-EMSGSIZE);
 * em_reconnect keeps the framer but forgets a partial line; bad arguments
 * with exact errnos; em_send_datav queues what a small send buffer does
 * not take, in order; the same pause/hold path under TLS, where input may
 * also wait inside OpenSSL; answers to pipelined lines are gathered into
 * one write after the chunk (the first goes out at once); no descriptor
 * leaks.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* ---- a recording server ------------------------------------------------ */

#define LOG_CAP (1 << 20)

typedef struct srv {
    em_conn *conn;
    int accepted, unbinds, reason;
    char log[LOG_CAP]; /* "L:<line>\n", "B:<n>\n", "E\n", "R:<n>\n", "F:..." */
    size_t log_len;
    int lines;
    /* behaviours */
    int pause_each;    /* em_pause after every line, resumed by a timer */
    int pause_reading; /* the same with em_pause_reading */
    int paused_now;    /* a line arrived while we had paused: bug */
    int close_at;      /* close in receive_line number close_at (1-based) */
    int raw_at;        /* em_use_raw in line number raw_at */
    int lines_in_data; /* em_use_lines inside the first receive_data */
    int echo_lines;    /* send each line back with "\n" */
    size_t reply_size; /* answer each line with this many bytes */
    em_line_opts opts;
    int use_frames;
    em_frame_opts fopts;
    em_loop *loop;
} srv;

static void logf_(srv *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void logf_(srv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->log + s->log_len, LOG_CAP - s->log_len, fmt, ap);
    va_end(ap);
    cr_assert_lt(s->log_len + (size_t)n, LOG_CAP);
    s->log_len += (size_t)n;
}

static void s_resume(em_loop *loop, void *arg)
{
    (void)loop;
    srv *s = arg;
    if (!s->conn)
        return;
    if (s->pause_reading)
        cr_assert_eq(em_resume_reading(s->conn), 0);
    else
        cr_assert_eq(em_resume(s->conn), 0);
}

static void s_post_init(em_conn *conn, void *arg)
{
    srv *s = arg;
    s->conn = conn;
    s->accepted++;
    if (s->use_frames)
        cr_assert_eq(em_use_frames(conn, &s->fopts), 0);
    else if (!s->lines_in_data)
        cr_assert_eq(em_use_lines(conn, &s->opts), 0);
}

static void s_line(em_conn *conn, const char *line, size_t len)
{
    srv *s = em_conn_arg(conn);
    if (em_is_paused(conn) || em_is_reading_paused(conn))
        s->paused_now++;
    s->lines++;
    logf_(s, "L:%.*s\n", (int)len, line);
    if (len > 4 && memcmp(line, "BIN ", 4) == 0)
        cr_assert_eq(em_set_binary_mode(conn, strtoull(line + 4, NULL, 10),
                                        EM_BINARY_WHOLE),
                     0);
    if (s->echo_lines) {
        struct iovec iov[2] = {{(void *)line, len}, {"\n", 1}};
        cr_assert_eq(em_send_datav(conn, iov, 2), 0);
    }
    if (s->reply_size) {
        char *big = malloc(s->reply_size);
        memset(big, 'r', s->reply_size);
        big[s->reply_size - 1] = '\n';
        cr_assert_eq(em_send_data(conn, big, s->reply_size), 0);
        free(big);
    }
    if (s->close_at == s->lines)
        cr_assert_eq(em_close_connection(conn, 0), 0);
    if (s->raw_at == s->lines)
        cr_assert_eq(em_use_raw(conn), 0);
    if (s->pause_each) {
        if (s->pause_reading)
            cr_assert_eq(em_pause_reading(conn), 0);
        else
            cr_assert_eq(em_pause(conn), 0);
        cr_assert_eq(em_add_timer(s->loop, 0.001, s_resume, s, NULL), 0);
    }
}

static void s_binary(em_conn *conn, const char *data, size_t len)
{
    srv *s = em_conn_arg(conn);
    logf_(s, "B:%.*s\n", (int)len, data);
}

static void s_end(em_conn *conn)
{
    srv *s = em_conn_arg(conn);
    logf_(s, "E\n");
}

static void s_data(em_conn *conn, const char *data, size_t len)
{
    srv *s = em_conn_arg(conn);
    logf_(s, "R:%.*s\n", (int)len, data);
    if (s->lines_in_data) {
        s->lines_in_data = 0;
        cr_assert_eq(em_use_lines(conn, &s->opts), 0);
    }
}

static void s_frame(em_conn *conn, const char *data, size_t len)
{
    srv *s = em_conn_arg(conn);
    s->lines++;
    cr_assert_eq(em_send_frame(conn, data, len), 0);
}

static void s_unbind(em_conn *conn, int reason)
{
    srv *s = em_conn_arg(conn);
    s->unbinds++;
    s->reason = reason;
    s->conn = NULL;
    /* nothing applies any more */
    cr_assert_eq(em_use_lines(conn, NULL), -ENOTCONN);
}

static const em_handler srv_handler = {
    .post_init = s_post_init,
    .receive_data = s_data,
    .unbind = s_unbind,
    .receive_line = s_line,
    .receive_binary_data = s_binary,
    .receive_end_of_binary_data = s_end,
    .receive_frame = s_frame,
};

static srv *new_srv(void)
{
    srv *s = calloc(1, sizeof(*s));
    cr_assert_not_null(s);
    s->loop = th_loop();
    return s;
}

static void run_until_log(srv *s, const char *expect, double secs)
{
    double end = th_now() + secs * TH_TIMEOUT_SCALE;
    size_t n = strlen(expect);
    while (s->log_len < n && th_now() < end)
        em_run_once(s->loop, 10);
    cr_assert_eq(s->log_len, n, "log has %zu bytes, want %zu:\n%.*s",
                 s->log_len, n, (int)s->log_len, s->log);
    cr_assert_eq(memcmp(s->log, expect, n), 0, "log:\n%.*s\nwant:\n%s",
                 (int)s->log_len, s->log, expect);
}

/* Closes the client, waits for every unbind, frees all; returns the last
 * unbind's reason. */
static int finish(srv *s, em_server *server, int fd)
{
    if (fd >= 0)
        close(fd);
    th_run_until_count(s->loop, &s->unbinds, s->accepted, 5);
    int reason = s->reason;
    cr_assert_eq(s->paused_now, 0, "a line arrived while paused");
    th_stop_and_free(s->loop, server);
    free(s);
    return reason;
}

/* ---- tests -----------------------------------------------------------------
 */

Test(framing_conn, lines_from_random_pieces, .timeout = TH_TIMEOUT(30))
{
    int fds = th_count_fds();
    srv *s = new_srv();
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    const char msg[] =
        "alpha\nbeta\r\n\ngamma delta\nBIN 7\n1\n2\n3\n4after\nz\n";
    const char want[] = "L:alpha\nL:beta\nL:\nL:gamma delta\nL:BIN 7\n"
                        "B:1\n2\n3\n4\nE\nL:after\nL:z\n";
    size_t n = sizeof(msg) - 1;
    uint64_t seed = 12345;
    for (int round = 0; round < 20; round++) {
        s->log_len = 0;
        size_t at = 0;
        while (at < n) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t piece = 1 + (seed >> 33) % 9;
            if (piece > n - at)
                piece = n - at;
            th_send_all(fd, msg + at, piece);
            at += piece;
            em_run_once(s->loop, 2); /* likely a separate read each */
        }
        run_until_log(s, want, 5);
    }
    cr_assert_eq(finish(s, server, fd), 0);
    cr_assert_eq(th_count_fds(), fds);
}

/* n numbered lines in one write: "0001\n0002\n..." */
static char *numbered(int n, size_t *len)
{
    char *buf = malloc((size_t)n * 5 + 1);
    for (int i = 0; i < n; i++)
        snprintf(buf + i * 5, 6, "%04u\n", (unsigned)(i + 1) % 10000u);
    *len = (size_t)n * 5;
    return buf;
}

static char *numbered_log(int n)
{
    char *want = malloc((size_t)n * 7 + 1);
    for (int i = 0; i < n; i++)
        snprintf(want + i * 7, 8, "L:%04u\n", (unsigned)(i + 1) % 10000u);
    return want;
}

static void pause_case(int pause_reading)
{
    int fds = th_count_fds();
    srv *s = new_srv();
    s->pause_each = 1;
    s->pause_reading = pause_reading;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    size_t len;
    char *msg = numbered(200, &len);
    th_send_all(fd, msg, len); /* many lines per read */
    char *want = numbered_log(200);
    run_until_log(s, want, 10);
    /* more after the held input: still in order */
    th_send_all(fd, "tail\n", 5);
    s->pause_each = 0;
    char *want2 = malloc(strlen(want) + 8);
    sprintf(want2, "%sL:tail\n", want);
    run_until_log(s, want2, 5);
    cr_assert_eq(finish(s, server, fd), 0);
    cr_assert_eq(th_count_fds(), fds);
    free(msg);
    free(want);
    free(want2);
}

Test(framing_conn, pause_inside_receive_line_holds_the_rest,
     .timeout = TH_TIMEOUT(30))
{
    pause_case(0);
}

Test(framing_conn, pause_reading_inside_receive_line_holds_the_rest,
     .timeout = TH_TIMEOUT(30))
{
    pause_case(1);
}

static void wm_post_init(em_conn *conn, void *arg)
{
    s_post_init(conn, arg);
    cr_assert_eq(em_set_watermarks(conn, 64 * 1024, 16 * 1024, NULL), 0);
    int small = 64 * 1024;
    cr_assert_eq(
        em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
}

Test(framing_conn, own_watermark_throttles_a_pipelining_client,
     .timeout = TH_TIMEOUT(30))
{
    /* Each request line gets a 16 KiB answer; the client sends 300
     * requests at once and does not read. The server must stop parsing
     * once its queue passes the high watermark instead of queueing 4.8
     * MB, and must answer everything in order once the client reads. */
    em_handler h = srv_handler;
    h.post_init = wm_post_init;
    srv *s = new_srv();
    s->reply_size = 16 * 1024;
    em_server *server = th_start_server(s->loop, &h, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    size_t len;
    char *msg = numbered(300, &len);
    th_send_all(fd, msg, len);
    th_run_for(s->loop, 0.3);
    cr_assert_lt(s->lines, 300, "parsing went on above the watermark");
    cr_assert_leq(em_get_outbound_data_size(s->conn), 64 * 1024 + 16 * 1024);
    /* now read everything */
    size_t total = 300 * s->reply_size;
    char *buf = malloc(total);
    cr_assert_eq(th_pump_recv(s->loop, fd, buf, total, 20), total);
    cr_assert_eq(s->lines, 300);
    char *want = numbered_log(300);
    run_until_log(s, want, 1);
    cr_assert_eq(finish(s, server, fd), 0);
    free(buf);
    free(msg);
    free(want);
}

Test(framing_conn, close_inside_receive_line_drops_the_rest,
     .timeout = TH_TIMEOUT(10))
{
    srv *s = new_srv();
    s->close_at = 2;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    th_send_all(fd, "a\nb\nc\nd\n", 8);
    th_run_until_count(s->loop, &s->unbinds, 1, 5);
    cr_assert_eq(s->lines, 2);
    run_until_log(s, "L:a\nL:b\n", 1);
    cr_assert_eq(finish(s, server, fd), 0);
}

Test(framing_conn, use_raw_inside_receive_line, .timeout = TH_TIMEOUT(10))
{
    srv *s = new_srv();
    s->raw_at = 1;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    th_send_all(fd, "first\nrest of\nthe chunk", 23);
    run_until_log(s, "L:first\nR:rest of\nthe chunk\n", 5);
    th_send_all(fd, "later\n", 6);
    run_until_log(s, "L:first\nR:rest of\nthe chunk\nR:later\n\n", 5);
    cr_assert_eq(finish(s, server, fd), 0);
}

Test(framing_conn, use_lines_inside_receive_data, .timeout = TH_TIMEOUT(10))
{
    srv *s = new_srv();
    s->lines_in_data = 1;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    th_send_all(fd, "raw\nbytes\n", 10);
    run_until_log(s, "R:raw\nbytes\n\n", 5);
    th_send_all(fd, "x\ny\n", 4);
    run_until_log(s, "R:raw\nbytes\n\nL:x\nL:y\n", 5);
    cr_assert_eq(finish(s, server, fd), 0);
}

Test(framing_conn, overlong_line_ends_in_emsgsize, .timeout = TH_TIMEOUT(10))
{
    srv *s = new_srv();
    s->opts.max_line = 100;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    char line[300];
    memset(line, 'x', sizeof(line));
    th_send_all(fd, "ok\n", 3);
    th_send_all(fd, line, sizeof(line)); /* never a delimiter */
    th_run_until_count(s->loop, &s->unbinds, 1, 5);
    cr_assert_eq(s->reason, -EMSGSIZE);
    cr_assert_str_eq(em_strerror(-EMSGSIZE), "Message too long");
    run_until_log(s, "L:ok\n", 1);
    cr_assert_eq(finish(s, server, fd), -EMSGSIZE);
}

Test(framing_conn, last_line_at_eof_is_delivered_and_answered,
     .timeout = TH_TIMEOUT(10))
{
    srv *s = new_srv();
    s->echo_lines = 1;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    th_send_all(fd, "one\ntwo", 7);
    shutdown(fd, SHUT_WR);
    char buf[16];
    size_t got = th_pump_recv(s->loop, fd, buf, sizeof(buf), 5);
    cr_assert_eq(got, 8, "both answered, then EOF");
    cr_assert_eq(memcmp(buf, "one\ntwo\n", 8), 0);
    run_until_log(s, "L:one\nL:two\n", 1);
    cr_assert_eq(finish(s, server, fd), 0);
}

/* ---- frames
 * ------------------------------------------------------------------ */

Test(framing_conn, frames_echo_across_random_chunks, .timeout = TH_TIMEOUT(30))
{
    static const em_frame_prefix prefixes[] = {EM_PREFIX_U8, EM_PREFIX_U16,
                                               EM_PREFIX_U32, EM_PREFIX_VARINT};
    for (int k = 0; k < 4; k++) {
        srv *s = new_srv();
        s->use_frames = 1;
        s->fopts.prefix = prefixes[k];
        em_server *server = th_start_server(s->loop, &srv_handler, s);
        int fd =
            th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
        /* 50 frames of 0..249 bytes */
        unsigned char out[20000];
        size_t n = 0;
        for (int i = 0; i < 50; i++) {
            size_t flen = (size_t)(i * 37 % 250);
            if (prefixes[k] == EM_PREFIX_U8 && flen > 255)
                flen = 255;
            int w = em_frame_prefix_encode(prefixes[k], flen, out + n);
            cr_assert_gt(w, 0);
            n += (size_t)w;
            for (size_t j = 0; j < flen; j++)
                out[n++] = (unsigned char)(i + j);
        }
        size_t at = 0;
        uint64_t seed = 99 + (uint64_t)k;
        while (at < n) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t piece = 1 + (seed >> 33) % 300;
            if (piece > n - at)
                piece = n - at;
            th_send_all(fd, out + at, piece);
            at += piece;
            em_run_once(s->loop, 1);
        }
        unsigned char *back = malloc(n);
        cr_assert_eq(th_pump_recv(s->loop, fd, back, n, 10), n);
        cr_assert_eq(memcmp(back, out, n), 0, "echoed frames, same bytes");
        cr_assert_eq(s->lines, 50);
        free(back);
        cr_assert_eq(finish(s, server, fd), 0);
    }
}

Test(framing_conn, frame_errors_end_the_connection, .timeout = TH_TIMEOUT(10))
{
    /* EOF inside a frame */
    srv *s = new_srv();
    s->use_frames = 1;
    em_server *server = th_start_server(s->loop, &srv_handler, s);
    int fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    th_send_all(fd,
                "\0\0\0\x10"
                "short",
                9);
    shutdown(fd, SHUT_WR);
    th_run_until_count(s->loop, &s->unbinds, 1, 5);
    cr_assert_eq(finish(s, server, fd), -EBADMSG);

    /* above the maximum: refused at the prefix */
    s = new_srv();
    s->use_frames = 1;
    s->fopts.max_frame = 1000;
    server = th_start_server(s->loop, &srv_handler, s);
    fd = th_connect_accepted(s->loop, th_listen_port(server), &s->accepted);
    th_send_all(fd, "\0\0\x10\0", 4);
    th_run_until_count(s->loop, &s->unbinds, 1, 5);
    cr_assert_eq(finish(s, server, fd), -EMSGSIZE);
}

/* ---- reconnect --------------------------------------------------------------
 */

typedef struct rc {
    int port_b;
    int unbinds;
    int reconnected;
    char lines[256];
    size_t len;
} rc;

static void rc_line(em_conn *conn, const char *line, size_t len)
{
    rc *r = em_conn_arg(conn);
    memcpy(r->lines + r->len, line, len);
    r->len += len;
    r->lines[r->len++] = '|';
}

static void rc_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    cr_assert_eq(em_use_lines(conn, NULL), 0);
}

static void rc_unbind(em_conn *conn, int reason)
{
    rc *r = em_conn_arg(conn);
    r->unbinds++;
    if (!r->reconnected) {
        cr_assert_neq(reason, 0, "the first server resets");
        r->reconnected = 1;
        cr_assert_eq(em_reconnect(conn, "127.0.0.1", r->port_b), 0);
    }
}

static const em_handler rc_handler = {
    .post_init = rc_post_init,
    .receive_line = rc_line,
    .unbind = rc_unbind,
};

/* Server side: sends its arg's text, then (for "par") resets. */
static void send_post_init(em_conn *conn, void *arg)
{
    const char *text = arg;
    cr_assert_eq(em_send_data(conn, text, strlen(text)), 0);
    if (strcmp(text, "par") == 0) {
        struct linger lg = {1, 0};
        em_set_sock_opt(conn, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        /* after the bytes left: a timer gives the client time to read */
    }
}

static void rst_later(em_loop *loop, void *arg)
{
    (void)loop;
    em_close_connection(arg, 0);
}

static em_conn *last_a;
static void a_post_init(em_conn *conn, void *arg)
{
    send_post_init(conn, arg);
    last_a = conn;
    em_add_timer(em_conn_loop(conn), 0.1, rst_later, conn, NULL);
}

Test(framing_conn, reconnect_keeps_framer_forgets_partial_line,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_handler ha = {.post_init = a_post_init};
    em_handler hb = {.post_init = send_post_init};
    em_server *a = th_start_server(loop, &ha, "par");
    em_server *b = th_start_server(loop, &hb, "tial\nfull\n");
    rc r = {.port_b = th_listen_port(b)};
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", th_listen_port(a), &rc_handler, &r, NULL),
        0);
    double end = th_now() + 5 * TH_TIMEOUT_SCALE;
    while (r.len < 10 && th_now() < end)
        em_run_once(loop, 10);
    cr_assert_eq(r.len, 10, "got %.*s", (int)r.len, r.lines);
    cr_assert_eq(memcmp(r.lines, "tial|full|", 10), 0, "got %.*s", (int)r.len,
                 r.lines);
    em_stop_server(a);
    em_stop_server(b);
    em_stop(loop);
    em_run(loop);
    th_free_loop(loop);
}

/* ---- bad arguments
 * ----------------------------------------------------------- */

static void noline_post_init(em_conn *conn, void *arg)
{
    int *done = arg;
    cr_assert_eq(em_use_lines(conn, NULL), -EINVAL, "no receive_line");
    cr_assert_eq(em_use_frames(conn, NULL), -EINVAL, "no receive_frame");
    em_close_connection(conn, 0);
    *done = 1;
}

static void bad_post_init(em_conn *conn, void *arg)
{
    int *done = arg;
    cr_assert_eq(em_set_delimiter(conn, "x", 1), -EINVAL, "no framer yet");
    cr_assert_eq(em_set_binary_mode(conn, 1, 0), -EINVAL);
    cr_assert_eq(em_set_line_mode(conn), -EINVAL);
    cr_assert_eq(em_send_frame(conn, "x", 1), -EINVAL);
    cr_assert_eq(em_use_raw(conn), 0, "no framer: nothing to do");
    em_line_opts empty = {.delimiter = ""};
    cr_assert_eq(em_use_lines(conn, &empty), -EINVAL);
    em_frame_opts badf = {.prefix = 5};
    cr_assert_eq(em_use_frames(conn, &badf), -EINVAL);
    cr_assert_eq(em_use_lines(conn, NULL), 0);
    cr_assert_eq(em_set_binary_mode(conn, 1, 9), -EINVAL);
    cr_assert_eq(em_set_binary_mode(conn, EM_MAX_BINARY_DEFAULT + 1, 0),
                 -EMSGSIZE);
    cr_assert_eq(em_send_frame(conn, "x", 1), -EINVAL, "lines, not frames");
    em_frame_opts f8 = {.prefix = EM_PREFIX_U8, .max_frame = 10};
    cr_assert_eq(em_use_frames(conn, &f8), 0);
    cr_assert_eq(em_set_delimiter(conn, "x", 1), -EINVAL, "frames now");
    char big[300] = {0};
    cr_assert_eq(em_send_frame(conn, big, 11), -EMSGSIZE);
    em_frame_opts f8b = {.prefix = EM_PREFIX_U8, .max_frame = 1000};
    cr_assert_eq(em_use_frames(conn, &f8b), 0);
    cr_assert_eq(em_send_frame(conn, big, 256), -EMSGSIZE, "U8 holds 255");
    cr_assert_eq(em_send_frame(conn, NULL, 1), -EINVAL);
    cr_assert_eq(em_send_frame(conn, NULL, 0), 0, "an empty frame");
    cr_assert_eq(em_send_datav(conn, NULL, 1), -EINVAL);
    cr_assert_eq(em_send_datav(conn, NULL, -1), -EINVAL);
    struct iovec bad_iov = {NULL, 3};
    cr_assert_eq(em_send_datav(conn, &bad_iov, 1), -EINVAL);
    cr_assert_eq(em_send_datav(conn, NULL, 0), 0);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    cr_assert_eq(em_use_lines(conn, NULL), -ENOTCONN);
    cr_assert_eq(em_use_frames(conn, NULL), -ENOTCONN);
    *done = 1;
}

static void dgram_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    cr_assert_eq(em_use_lines(conn, NULL), -EOPNOTSUPP);
    cr_assert_eq(em_use_frames(conn, NULL), -EOPNOTSUPP);
}

Test(framing_conn, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    cr_assert_eq(em_use_lines(NULL, NULL), -EINVAL);
    cr_assert_eq(em_use_frames(NULL, NULL), -EINVAL);
    cr_assert_eq(em_use_raw(NULL), -EINVAL);
    cr_assert_eq(em_set_delimiter(NULL, "x", 1), -EINVAL);
    cr_assert_eq(em_set_binary_mode(NULL, 1, 0), -EINVAL);
    cr_assert_eq(em_set_line_mode(NULL), -EINVAL);
    cr_assert_eq(em_send_frame(NULL, "x", 1), -EINVAL);
    cr_assert_eq(em_send_datav(NULL, NULL, 0), -EINVAL);
    em_loop *loop = th_loop();
    int done = 0;
    em_handler h = {.post_init = bad_post_init,
                    .receive_line = s_line,
                    .receive_frame = s_frame};
    em_server *server = th_start_server(loop, &h, &done);
    int fd = th_client_connect(th_listen_port(server));
    th_run_until(loop, &done, 5);
    close(fd);
    done = 0;
    em_handler nl = {.post_init = noline_post_init};
    em_server *server2 = th_start_server(loop, &nl, &done);
    fd = th_client_connect(th_listen_port(server2));
    th_run_until(loop, &done, 5);
    close(fd);
    em_stop_server(server2);
    em_handler dh = {.post_init = dgram_post_init};
    em_conn *d = NULL;
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1", 0, &dh, NULL, &d),
                 0);
    em_close_connection(d, 0);
    th_run_for(loop, 0.05);
    th_stop_and_free(loop, server);
}

/* ---- em_send_datav
 * ----------------------------------------------------------- */

static void datav_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    int small = 64 * 1024;
    em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    static uint8_t a[300000], b[1], c[700000];
    th_pat_fill(a, 0, sizeof(a));
    th_pat_fill(b, sizeof(a), sizeof(b));
    th_pat_fill(c, sizeof(a) + sizeof(b), sizeof(c));
    struct iovec iov[4] = {{a, sizeof(a)}, {b, 1}, {NULL, 0}, {c, sizeof(c)}};
    cr_assert_eq(em_send_datav(conn, iov, 4), 0);
    cr_assert_gt(em_get_outbound_data_size(conn), 0, "most is queued");
    cr_assert_eq(em_close_connection(conn, 1), 0);
}

Test(framing_conn, send_datav_queues_the_rest_in_order,
     .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    em_handler h = {.post_init = datav_post_init};
    em_server *server = th_start_server(loop, &h, NULL);
    int fd = th_client_connect(th_listen_port(server));
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    int err = 1;
    size_t got = th_pump_pattern_eof(loop, fd, 0, 1000001, &err, 15);
    cr_assert_eq(err, 0);
    cr_assert_eq(got, 1000001);
    close(fd);
    th_stop_and_free(loop, server);
}

/* ---- under TLS ----------------------------------------------------------- */

static void tls_srv_post_init(em_conn *conn, void *arg)
{
    em_tls_options o = {.ephemeral_cert = 1};
    cr_assert_eq(em_start_tls(conn, &o), 0);
    s_post_init(conn, arg);
}

typedef struct tls_cli {
    const char *msg;
    size_t len;
    int unbinds;
} tls_cli;

static void tls_cli_post_init(em_conn *conn, void *arg)
{
    tls_cli *c = arg;
    em_tls_options o = {.verify_peer = EM_TLS_VERIFY_NONE};
    cr_assert_eq(em_start_tls(conn, &o), 0);
    cr_assert_eq(em_send_data(conn, c->msg, c->len), 0, "sent after handshake");
}

static void tls_cli_unbind(em_conn *conn, int reason)
{
    (void)reason;
    ((tls_cli *)em_conn_arg(conn))->unbinds++;
}

Test(framing_conn, pause_holds_input_under_tls, .timeout = TH_TIMEOUT(30))
{
    srv *s = new_srv();
    s->pause_each = 1;
    em_handler h = srv_handler;
    h.post_init = tls_srv_post_init;
    em_server *server = th_start_server(s->loop, &h, s);
    size_t len;
    char *msg = numbered(300, &len);
    tls_cli c = {msg, len, 0};
    em_handler ch = {.post_init = tls_cli_post_init, .unbind = tls_cli_unbind};
    em_conn *client = NULL;
    cr_assert_eq(em_connect(s->loop, "127.0.0.1", th_listen_port(server), &ch,
                            &c, &client),
                 0);
    char *want = numbered_log(300);
    run_until_log(s, want, 20);
    em_close_connection(client, 0);
    th_run_until_count(s->loop, &c.unbinds, 1, 5);
    cr_assert_eq(finish(s, server, -1), 0);
    free(msg);
    free(want);
}

/* ---- corking ---------------------------------------------------------------
 */

static size_t queued_after[8];
static int cork_lines;

static void cork_line(em_conn *conn, const char *line, size_t len)
{
    struct iovec iov[2] = {{(void *)line, len}, {"\n", 1}};
    cr_assert_eq(em_send_datav(conn, iov, 2), 0);
    if (cork_lines < 8)
        queued_after[cork_lines] = em_get_outbound_data_size(conn);
    cork_lines++;
}

static void cork_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    cr_assert_eq(em_use_lines(conn, NULL), 0);
}

Test(framing_conn, pipelined_answers_leave_in_one_write_after_the_first,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    em_handler h = {.post_init = cork_post_init, .receive_line = cork_line};
    em_server *server = th_start_server(loop, &h, NULL);
    int fd = th_client_connect(th_listen_port(server));
    cork_lines = 0;
    th_send_all(fd, "a\nbb\nccc\n", 9);
    char buf[16];
    cr_assert_eq(th_pump_recv(loop, fd, buf, 9, 5), 9);
    cr_assert_eq(memcmp(buf, "a\nbb\nccc\n", 9), 0, "in order");
    cr_assert_eq(cork_lines, 3);
    cr_assert_eq(queued_after[0], 0, "the first answer is written at once");
    cr_assert_eq(queued_after[1], 3, "the second waits for the chunk's end");
    cr_assert_eq(queued_after[2], 7);
    /* one line per read: nothing waits */
    th_send_all(fd, "d\n", 2);
    cr_assert_eq(th_pump_recv(loop, fd, buf, 2, 5), 2);
    cr_assert_eq(queued_after[3], 0);
    close(fd);
    th_run_for(loop, 0.05);
    th_stop_and_free(loop, server);
}
