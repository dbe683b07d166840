/*
 * echo_libuv.c - echo server on libuv, for comparison with libem.
 *
 * What: single-threaded TCP echo on the default uv loop.
 * Usage: echo_libuv [port].
 *
 * Why this way: the fast path libuv's API offers for an echo.  The alloc_cb
 * hands out one static 64 KiB buffer (reads are consumed synchronously in
 * read_cb, so one buffer serves all connections).  read_cb first tries
 * uv_try_write, which writes straight from that buffer; only bytes the kernel
 * did not take are copied into a per-connection buffer for uv_write, because
 * uv_write needs its data to stay valid until the write callback.  While that
 * write is pending the connection stops reading (back-pressure), so at most
 * one write request per connection exists and its uv_write_t lives in the
 * connection.  TCP_NODELAY is set as in every server of this benchmark.
 * SIGINT/SIGTERM close every handle so uv_run returns and the loop closes.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define READ_BUF_SIZE (64 * 1024)
#define LISTEN_BACKLOG 4096

struct conn {
    uv_tcp_t tcp; /* first member: the handle pointer is the conn pointer */
    uv_write_t write_req;
    char *pending;
    size_t pending_cap;
};

static char read_buf[READ_BUF_SIZE];
static uv_tcp_t listener;

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)handle;
    (void)suggested;
    *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_conn_closed(uv_handle_t *handle)
{
    struct conn *c = (struct conn *)handle;
    free(c->pending);
    free(c);
}

static void conn_close(struct conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_write_done(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    if (status < 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

static int ensure_pending_capacity(struct conn *c, size_t len)
{
    if (len <= c->pending_cap)
        return 0;
    char *grown = realloc(c->pending, len);
    if (!grown)
        return -1;
    c->pending = grown;
    c->pending_cap = len;
    return 0;
}

/* Copy what uv_try_write left over and hand it to uv_write. */
static void queue_remainder(struct conn *c, const char *data, size_t len)
{
    if (ensure_pending_capacity(c, len) != 0) {
        conn_close(c);
        return;
    }
    memcpy(c->pending, data, len);
    uv_buf_t out = uv_buf_init(c->pending, (unsigned int)len);
    c->write_req.data = c;
    uv_stream_t *stream = (uv_stream_t *)&c->tcp;
    if (uv_write(&c->write_req, stream, &out, 1, on_write_done) != 0) {
        conn_close(c);
        return;
    }
    uv_read_stop(stream);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)stream;
    if (nread < 0) { /* UV_EOF or an error */
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    uv_buf_t out = uv_buf_init(buf->base, (unsigned int)nread);
    int written = uv_try_write(stream, &out, 1);
    if (written == UV_EAGAIN)
        written = 0;
    if (written < 0) {
        conn_close(c);
        return;
    }
    if (written < nread)
        queue_remainder(c, buf->base + written, (size_t)(nread - written));
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

static void close_any_handle(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (uv_is_closing(handle))
        return;
    /* connections own heap memory; the listener and signals are static */
    bool is_conn = handle->type == UV_TCP && handle != (uv_handle_t *)&listener;
    uv_close(handle, is_conn ? on_conn_closed : NULL);
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    uv_walk(sig->loop, close_any_handle, NULL);
}

static int start_listener(uv_loop_t *loop, int port)
{
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(loop, &listener);
    int rc = uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&listener, LISTEN_BACKLOG, on_connection);
    if (rc != 0)
        fprintf(stderr, "echo_libuv: listen: %s\n", uv_strerror(rc));
    return rc;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    uv_loop_t *loop = uv_default_loop();
    static uv_signal_t sigint_watcher, sigterm_watcher;
    signal(SIGPIPE, SIG_IGN);
    if (start_listener(loop, port) != 0)
        return 1;
    uv_signal_init(loop, &sigint_watcher);
    uv_signal_start(&sigint_watcher, on_stop_signal, SIGINT);
    uv_signal_init(loop, &sigterm_watcher);
    uv_signal_start(&sigterm_watcher, on_stop_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
