/*
 * echo_libev.c - echo server on libev, for comparison with libem.
 *
 * What: single-threaded TCP echo on the default ev loop.
 * Usage: echo_libev [port].
 *
 * Why this way: libev only reports readiness and leaves I/O to the caller,
 * as its manual describes: one ev_io watcher per socket, read into a single
 * static 64 KiB buffer, write straight back, and only if the kernel takes
 * less, copy the rest into a per-connection buffer and switch the watcher
 * from EV_READ to EV_WRITE (stop, ev_io_set, start) until it drains, which
 * also gives back-pressure.  Accepts are drained in a loop per event.
 * TCP_NODELAY is set as in every server of this benchmark.  SIGINT/SIGTERM
 * are ev_signal watchers that break the loop; then everything is closed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_SIZE (64 * 1024)
#define LISTEN_BACKLOG 4096

struct conn {
    ev_io io; /* first member: the watcher pointer is the conn pointer */
    char *pending;
    size_t pending_len;
    size_t pending_cap;
    struct conn *prev;
    struct conn *next;
};

static char read_buf[READ_BUF_SIZE];
static struct conn *live_conns;

static bool is_would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK;
}

static void conn_destroy(struct ev_loop *loop, struct conn *c)
{
    ev_io_stop(loop, &c->io);
    close(c->io.fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        live_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->pending);
    free(c);
}

static void conn_watch(struct ev_loop *loop, struct conn *c, int events)
{
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->io.fd, events);
    ev_io_start(loop, &c->io);
}

static int conn_queue(struct ev_loop *loop, struct conn *c, const char *data, size_t len)
{
    if (len > c->pending_cap) {
        char *grown = realloc(c->pending, len);
        if (!grown)
            return -1;
        c->pending = grown;
        c->pending_cap = len;
    }
    memcpy(c->pending, data, len);
    c->pending_len = len;
    conn_watch(loop, c, EV_WRITE);
    return 0;
}

static void conn_on_readable(struct ev_loop *loop, struct conn *c)
{
    ssize_t n = read(c->io.fd, read_buf, sizeof(read_buf));
    if (n < 0 && (is_would_block() || errno == EINTR))
        return;
    if (n <= 0) {
        conn_destroy(loop, c);
        return;
    }
    ssize_t w = write(c->io.fd, read_buf, (size_t)n);
    if (w < 0 && !is_would_block()) {
        conn_destroy(loop, c);
        return;
    }
    size_t written = w < 0 ? 0 : (size_t)w;
    if (written < (size_t)n &&
        conn_queue(loop, c, read_buf + written, (size_t)n - written) != 0)
        conn_destroy(loop, c);
}

static void conn_on_writable(struct ev_loop *loop, struct conn *c)
{
    ssize_t w = write(c->io.fd, c->pending, c->pending_len);
    if (w < 0 && is_would_block())
        return;
    if (w < 0) {
        conn_destroy(loop, c);
        return;
    }
    c->pending_len -= (size_t)w;
    if (c->pending_len > 0)
        memmove(c->pending, c->pending + w, c->pending_len);
    else
        conn_watch(loop, c, EV_READ);
}

static void on_conn_event(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = (struct conn *)w;
    if (revents & EV_WRITE)
        conn_on_writable(loop, c);
    else if (revents & EV_READ)
        conn_on_readable(loop, c);
}

static void conn_create(struct ev_loop *loop, int fd)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->next = live_conns;
    if (live_conns)
        live_conns->prev = c;
    live_conns = c;
    ev_io_init(&c->io, on_conn_event, fd, EV_READ);
    ev_io_start(loop, &c->io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error: wait for the next event */
        conn_create(loop, fd);
    }
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, LISTEN_BACKLOG) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = ev_default_loop(0);
    int listen_fd = listen_on(port);
    if (!loop || listen_fd < 0) {
        perror("echo_libev: listen");
        return 1;
    }
    ev_io accept_watcher;
    ev_signal sigint_watcher, sigterm_watcher;
    ev_io_init(&accept_watcher, on_accept, listen_fd, EV_READ);
    ev_io_start(loop, &accept_watcher);
    ev_signal_init(&sigint_watcher, on_stop_signal, SIGINT);
    ev_signal_start(loop, &sigint_watcher);
    ev_signal_init(&sigterm_watcher, on_stop_signal, SIGTERM);
    ev_signal_start(loop, &sigterm_watcher);
    ev_run(loop, 0);
    while (live_conns)
        conn_destroy(loop, live_conns);
    ev_io_stop(loop, &accept_watcher);
    close(listen_fd);
    ev_loop_destroy(loop);
    return 0;
}
