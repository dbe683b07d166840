/*
 * echo_epoll.c - reference echo server on raw epoll.
 *
 * What: the baseline every library is compared against: the least work a
 * single-threaded reactor can do per message.  Usage: echo_epoll [port].
 *
 * Why this way: level-triggered epoll, one read per readiness event into a
 * single static 64 KiB buffer, and an immediate write of what was read.  Only
 * when the kernel takes less than all of it is the rest copied into a
 * per-connection buffer; the connection then waits for EPOLLOUT instead of
 * EPOLLIN (back-pressure) until that buffer drains.  Accepts are drained in a
 * loop per event (accept4 gives nonblocking sockets directly).  TCP_NODELAY
 * is set so no server is measured against Nagle delays.  SIGINT/SIGTERM
 * interrupt epoll_wait and the loop closes everything before exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256
#define LISTEN_BACKLOG 4096

struct conn {
    int fd;
    char *pending;      /* bytes the kernel has not taken yet */
    size_t pending_len;
    size_t pending_cap;
    struct conn *prev;  /* list of live connections, for shutdown */
    struct conn *next;
};

static char read_buf[READ_BUF_SIZE];
static volatile sig_atomic_t stop_requested;
static struct conn *live_conns;
static int epfd = -1;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal; /* no SA_RESTART: epoll_wait gets EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
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

static int conn_watch(struct conn *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(epfd, op, c->fd, &ev);
}

static void conn_destroy(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    if (c->prev)
        c->prev->next = c->next;
    else
        live_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->pending);
    free(c);
}

static void conn_create(int fd)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->next = live_conns;
    if (live_conns)
        live_conns->prev = c;
    live_conns = c;
    if (conn_watch(c, EPOLL_CTL_ADD, EPOLLIN) != 0)
        conn_destroy(c);
}

static void accept_all(int listen_fd)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error: wait for the next event */
        conn_create(fd);
    }
}

/* Keep the unwritten tail; grows rarely, reused for the connection's life. */
static int conn_queue(struct conn *c, const char *data, size_t len)
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
    return conn_watch(c, EPOLL_CTL_MOD, EPOLLOUT);
}

static bool is_would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK;
}

static void conn_on_readable(struct conn *c)
{
    ssize_t n = read(c->fd, read_buf, sizeof(read_buf));
    if (n < 0 && (is_would_block() || errno == EINTR))
        return;
    if (n <= 0) {
        conn_destroy(c);
        return;
    }
    ssize_t w = write(c->fd, read_buf, (size_t)n);
    if (w < 0 && !is_would_block()) {
        conn_destroy(c);
        return;
    }
    size_t written = w < 0 ? 0 : (size_t)w;
    if (written < (size_t)n && conn_queue(c, read_buf + written, (size_t)n - written) != 0)
        conn_destroy(c);
}

static void conn_on_writable(struct conn *c)
{
    ssize_t w = write(c->fd, c->pending, c->pending_len);
    if (w < 0 && is_would_block())
        return;
    if (w < 0) {
        conn_destroy(c);
        return;
    }
    c->pending_len -= (size_t)w;
    if (c->pending_len > 0) {
        memmove(c->pending, c->pending + w, c->pending_len);
        return;
    }
    if (conn_watch(c, EPOLL_CTL_MOD, EPOLLIN) != 0)
        conn_destroy(c);
}

static void dispatch(struct epoll_event *ev, int listen_fd)
{
    struct conn *c = ev->data.ptr;
    if (c == NULL) {
        accept_all(listen_fd);
        return;
    }
    if (c->pending_len > 0) {
        if (ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            conn_on_writable(c);
        return;
    }
    conn_on_readable(c);
}

static void run_loop(int listen_fd)
{
    struct epoll_event events[MAX_EVENTS];
    while (!stop_requested) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR) {
            perror("echo_epoll: epoll_wait");
            return;
        }
        for (int i = 0; i < n; i++)
            dispatch(&events[i], listen_fd);
    }
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    install_signal_handlers();
    int listen_fd = listen_on(port);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (listen_fd < 0 || epfd < 0) {
        perror("echo_epoll: listen");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
    run_loop(listen_fd);
    while (live_conns)
        conn_destroy(live_conns);
    close(listen_fd);
    close(epfd);
    return 0;
}
