/*
 * udp_echo_libuv.c - UDP echo server on libuv, for comparison with libem.
 *
 * Usage: udp_echo_libuv [port] [plain]   (127.0.0.1, default 8000)
 *
 * Why this way: libuv's fastest UDP receive path. By default the handle is
 * created with UV_UDP_RECVMMSG, so libuv reads up to 20 datagrams per
 * recvmmsg into the 20 x 64 KiB buffer alloc_cb hands out (one static
 * buffer: datagrams are consumed synchronously in recv_cb). "plain" drops
 * the flag: one recvmsg per datagram, libuv's default. Each datagram goes
 * back with uv_udp_try_send, which sends at once from that buffer; only if
 * the socket buffer is full is it copied for uv_udp_send. The socket
 * buffers are raised as in the libem server. SIGINT/SIGTERM close every
 * handle so uv_run returns.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define SLOT (64 * 1024)
#define SLOTS 20 /* libuv's recvmmsg batch (UV__MMSG_MAXWIDTH) */

static char read_buf[SLOTS * SLOT];
static int mmsg = 1;
static uv_udp_t server;

struct pending {
    uv_udp_send_t req;
    char data[];
};

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)handle;
    (void)suggested;
    *buf = uv_buf_init(read_buf, mmsg ? sizeof(read_buf) : SLOT);
}

static void on_sent(uv_udp_send_t *req, int status)
{
    (void)status;
    free(req);
}

static void on_recv(uv_udp_t *handle, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags)
{
    (void)flags;
    if (nread < 0 || addr == NULL)
        return; /* an error, or the end of a recvmmsg batch */
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
    int rc = uv_udp_try_send(handle, &out, 1, addr);
    if (rc != UV_EAGAIN)
        return;
    struct pending *p = malloc(sizeof(*p) + (size_t)nread);
    if (!p)
        return;
    memcpy(p->data, buf->base, (size_t)nread);
    out = uv_buf_init(p->data, (unsigned)nread);
    if (uv_udp_send(&p->req, handle, &out, 1, addr, on_sent) != 0)
        free(p);
}

static void close_any_handle(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    (void)signum;
    uv_walk(sig->loop, close_any_handle, NULL);
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    if (argc > 2 && strcmp(argv[2], "plain") == 0)
        mmsg = 0;
    uv_loop_t *loop = uv_default_loop();
    static uv_signal_t sigint_watcher, sigterm_watcher;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_udp_init_ex(loop, &server, AF_INET | (mmsg ? UV_UDP_RECVMMSG : 0));
    int rc = uv_udp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_udp_recv_start(&server, on_alloc, on_recv);
    if (rc != 0) {
        fprintf(stderr, "udp_echo_libuv: port %d: %s\n", port, uv_strerror(rc));
        return 1;
    }
    int size = 4 << 20;
    uv_recv_buffer_size((uv_handle_t *)&server, &size);
    size = 4 << 20;
    uv_send_buffer_size((uv_handle_t *)&server, &size);
    uv_signal_init(loop, &sigint_watcher);
    uv_signal_start(&sigint_watcher, on_stop_signal, SIGINT);
    uv_signal_init(loop, &sigterm_watcher);
    uv_signal_start(&sigterm_watcher, on_stop_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
