/*
 * test_files.c - em_send_file_data and em_stream_file_data on plain
 * sockets (TLS's bounce-buffer path is in test_tls.c).
 *
 * Covers: a 5 MiB file between em_send_data bytes arrives whole and in
 * order, sent by sendfile (the loop's bounce buffer is never made); the
 * outbound size counts the file; close after writing waits for it; HTTP
 * chunked framing for a file and for an empty one, with done called once,
 * after the call returns; files of any size beyond EventMachine's 32 KiB;
 * missing, directory, FIFO and unreadable paths fail with the errno and
 * leave the connection usable; a file that shrinks before its turn ends
 * the connection with -EIO (done gets -EIO) instead of hanging the peer;
 * a connection closed first gives done -ECANCELED; no descriptor leaks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h"

#define MiB (1024u * 1024u)

/* Writes len pattern bytes (th_pat_fill from offset 0) to a fresh file. */
static void make_file(char *path, size_t size, size_t len)
{
    snprintf(path, size, "/tmp/em-test-file-%d-XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    static uint8_t buf[256 * 1024];
    size_t done = 0;
    while (done < len) {
        size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
        th_pat_fill(buf, done, n);
        cr_assert_eq(write(fd, buf, n), (ssize_t)n);
        done += n;
    }
    close(fd);
}

typedef struct sender {
    th_echo echo; /* first: th_echo_post_init's arg */
    const char *path;
    int http_chunks;
    int use_stream;
    int call_returned;
    int done_calls;
    int done_err;
    int done_inside_call;
    int send_err;
    size_t outbound_after;
    int close_after;
    int small_buffers; /* so most of a file must wait in the queue */
} sender;

/* A client whose kernel buffers cannot absorb a file of a few MiB. */
static int small_client(int port)
{
    int fd = th_client_connect(port);
    int small = 64 * 1024;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)),
                 0);
    return fd;
}

static void on_done(em_conn *conn, int err, void *arg)
{
    (void)conn;
    sender *s = arg;
    s->done_calls++;
    s->done_err = err;
    if (!s->call_returned)
        s->done_inside_call = 1;
}

static void sender_post_init(em_conn *conn, void *arg)
{
    sender *s = arg;
    th_echo_post_init(conn, &s->echo);
    if (s->small_buffers) {
        int small = 64 * 1024;
        cr_assert_eq(
            em_set_sock_opt(conn, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)),
            0);
    }
    if (!s->path)
        return;
    if (s->use_stream) {
        em_stream_file_opts opts = {.http_chunks = s->http_chunks};
        s->send_err = em_stream_file_data(conn, s->path, &opts, on_done, s);
    } else {
        cr_assert_eq(em_send_data(conn, "HEAD", 4), 0);
        s->send_err = em_send_file_data(conn, s->path);
        cr_assert_eq(em_send_data(conn, "TAIL", 4), 0);
    }
    s->call_returned = 1;
    s->outbound_after = em_get_outbound_data_size(conn);
    if (s->close_after)
        em_close_connection(conn, 1);
}

static void sender_unbind(em_conn *conn, int reason)
{
    sender *s = em_conn_arg(conn);
    th_echo_unbind(conn, reason);
    (void)s;
}

static const em_handler sender_handler = {
    .post_init = sender_post_init,
    .receive_data = th_echo_receive,
    .unbind = sender_unbind,
};

Test(files, send_file_between_sends_uses_sendfile, .timeout = TH_TIMEOUT(20))
{
    int fds_before = th_count_fds();
    char path[64];
    size_t size = 5 * MiB;
    make_file(path, sizeof(path), size);
    em_loop *loop = th_loop();
    sender s = {.path = path, .close_after = 1};
    em_server *srv = th_start_server(loop, &sender_handler, &s);
    int fd = th_client_connect(th_listen_port(srv));

    char head[4];
    cr_assert_eq(th_pump_recv(loop, fd, head, 4, 5), 4);
    cr_assert(memcmp(head, "HEAD", 4) == 0);
    cr_assert_eq(s.send_err, 0);
    cr_assert_gt(s.outbound_after, size / 2,
                 "the file counts in the outbound size (%zu)",
                 s.outbound_after);
    uint8_t *body = malloc(size + 4);
    cr_assert_eq(th_pump_recv(loop, fd, body, size + 4, 15), size + 4);
    cr_assert_eq(th_pat_check(body, 0, size), -1, "file bytes out of place");
    cr_assert(memcmp(body + size, "TAIL", 4) == 0);
    cr_assert_eq(th_pump_eof(loop, fd, 5), 0, "closed after writing");
    th_run_until_count(loop, &s.echo.unbinds, 1, 5);
    cr_assert_eq(s.echo.last_reason, 0);
    cr_assert_null(loop->file_buf, "plain sockets never bounce: sendfile");
    close(fd);
    free(body);
    unlink(path);
    th_stop_and_free(loop, srv);
    cr_assert_eq(th_count_fds(), fds_before, "a descriptor leaked");
}

static void check_chunked(int empty)
{
    char path[64];
    size_t size = empty ? 0 : 100000;
    make_file(path, sizeof(path), size);
    em_loop *loop = th_loop();
    sender s = {.path = path, .use_stream = 1, .http_chunks = 1};
    em_server *srv = th_start_server(loop, &sender_handler, &s);
    int fd = th_client_connect(th_listen_port(srv));
    char expect_head[32];
    int head_len =
        empty ? 0 : snprintf(expect_head, sizeof(expect_head), "%zx\r\n", size);
    const char *trailer = empty ? "0\r\n\r\n" : "\r\n0\r\n\r\n";
    size_t total = (size_t)head_len + size + strlen(trailer);
    char *got = malloc(total + 1);
    cr_assert_eq(th_pump_recv(loop, fd, got, total, 5), total);
    cr_assert(memcmp(got, expect_head, (size_t)head_len) == 0);
    cr_assert_eq(th_pat_check((uint8_t *)got + head_len, 0, size), -1);
    cr_assert(memcmp(got + head_len + size, trailer, strlen(trailer)) == 0);
    th_run_until_count(loop, &s.done_calls, 1, 5);
    th_run_for(loop, 0.05);
    cr_assert_eq(s.done_calls, 1);
    cr_assert_eq(s.done_err, 0);
    cr_assert_not(s.done_inside_call, "done ran inside the call");
    close(fd);
    free(got);
    unlink(path);
    th_run_until_count(loop, &s.echo.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
}

Test(files, stream_with_http_chunks, .timeout = TH_TIMEOUT(10))
{
    check_chunked(0);
}

Test(files, stream_an_empty_file, .timeout = TH_TIMEOUT(10))
{
    check_chunked(1);
}

Test(files, bad_paths_leave_the_connection_usable, .timeout = TH_TIMEOUT(10))
{
    int fds_before = th_count_fds();
    char fifo[64];
    snprintf(fifo, sizeof(fifo), "/tmp/em-test-fifo-%d", (int)getpid());
    unlink(fifo);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    em_conn *c = e.conn;
    cr_assert_eq(em_send_file_data(c, "/nonexistent/file"), -ENOENT);
    cr_assert_eq(em_send_file_data(c, "/tmp"), -EISDIR);
    cr_assert_eq(em_send_file_data(c, fifo), -EINVAL);
    cr_assert_eq(em_send_file_data(c, NULL), -EINVAL);
    cr_assert_eq(em_send_file_data(NULL, "/etc/hostname"), -EINVAL);
    cr_assert_eq(em_stream_file_data(c, "/nonexistent", NULL, NULL, NULL),
                 -ENOENT);
    cr_assert_eq(em_get_outbound_data_size(c), 0);
    th_expect_echo(loop, fd, "still usable");
    em_close_connection(c, 1);
    cr_assert_eq(em_send_file_data(c, "/etc/hostname"), -EPIPE);
    close(fd);
    th_run_until_count(loop, &e.unbinds, 1, 5);
    unlink(fifo);
    th_stop_and_free(loop, srv);
    cr_assert_eq(th_count_fds(), fds_before, "a descriptor leaked");
}

Test(files, a_file_that_shrinks_ends_with_eio, .timeout = TH_TIMEOUT(20))
{
    int fds_before = th_count_fds();
    char path[64];
    size_t size = 8 * MiB;
    make_file(path, sizeof(path), size);
    em_loop *loop = th_loop();
    sender s = {.path = path, .use_stream = 1, .small_buffers = 1};
    em_server *srv = th_start_server(loop, &sender_handler, &s);
    int fd = small_client(th_listen_port(srv));
    th_run_until_count(loop, &s.echo.accepted, 1, 5);
    th_run_for(loop, 0.1); /* the socket buffers fill; the rest waits */
    cr_assert_eq(s.done_calls, 0);
    cr_assert_eq(truncate(path, 1 * MiB), 0);
    int err = 0;
    size_t got = th_pump_pattern_eof(loop, fd, 0, size, &err, 10);
    cr_assert_lt(got, size, "the peer saw the file end early");
    th_run_until_count(loop, &s.echo.unbinds, 1, 5);
    cr_assert_eq(s.echo.last_reason, -EIO, "%s",
                 em_strerror(s.echo.last_reason));
    cr_assert_eq(s.done_calls, 1);
    cr_assert_eq(s.done_err, -EIO);
    close(fd);
    unlink(path);
    th_stop_and_free(loop, srv);
    cr_assert_eq(th_count_fds(), fds_before, "a descriptor leaked");
}

Test(files, closing_first_cancels, .timeout = TH_TIMEOUT(10))
{
    char path[64];
    make_file(path, sizeof(path), 8 * MiB);
    em_loop *loop = th_loop();
    sender s = {.path = path, .use_stream = 1, .small_buffers = 1};
    em_server *srv = th_start_server(loop, &sender_handler, &s);
    int fd = small_client(th_listen_port(srv));
    th_run_until_count(loop, &s.echo.accepted, 1, 5);
    th_run_for(loop, 0.05);
    em_close_connection(s.echo.conn, 0);
    th_run_until_count(loop, &s.echo.unbinds, 1, 5);
    cr_assert_eq(s.done_calls, 1);
    cr_assert_eq(s.done_err, -ECANCELED);
    close(fd);
    unlink(path);
    th_stop_and_free(loop, srv);
}
