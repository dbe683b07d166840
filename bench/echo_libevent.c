/*
 * echo_libevent.c - echo server on libevent 2 bufferevents, for comparison.
 *
 * What: single-threaded TCP echo.  Usage: echo_libevent [port].
 *
 * Why this way: it is the echo the libevent book and samples teach: an
 * evconnlistener accepts, each connection gets a socket bufferevent, and the
 * read callback moves the whole input evbuffer onto the output evbuffer with
 * evbuffer_add_buffer, which relinks chains instead of copying bytes.  The
 * library owns the buffers, so there is no per-read allocation in this file.
 * Connections sit on a small intrusive list only so shutdown can free them.
 * TCP_NODELAY is set as in every server of this benchmark.  SIGINT/SIGTERM
 * break the loop through evsignal events, then everything is freed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define LISTEN_BACKLOG 4096

struct conn {
    struct bufferevent *bev;
    struct conn *prev;
    struct conn *next;
};

static struct conn *live_conns;

static void conn_destroy(struct conn *c)
{
    bufferevent_free(c->bev); /* BEV_OPT_CLOSE_ON_FREE closes the socket */
    if (c->prev)
        c->prev->next = c->next;
    else
        live_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void on_readable(struct bufferevent *bev, void *arg)
{
    (void)arg;
    evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        conn_destroy(arg);
}

static void set_nodelay(evutil_socket_t fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd,
                      struct sockaddr *addr, int addrlen, void *arg)
{
    (void)addr;
    (void)addrlen;
    (void)arg;
    struct event_base *base = evconnlistener_get_base(listener);
    struct conn *c = calloc(1, sizeof(*c));
    struct bufferevent *bev =
        c ? bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    if (!bev) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->bev = bev;
    set_nodelay(fd);
    c->next = live_conns;
    if (live_conns)
        live_conns->prev = c;
    live_conns = c;
    bufferevent_setcb(c->bev, on_readable, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static struct evconnlistener *start_listener(struct event_base *base, int port)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE;
    return evconnlistener_new_bind(base, on_accept, NULL, flags, LISTEN_BACKLOG,
                                   (struct sockaddr *)&addr, sizeof(addr));
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evconnlistener *listener = base ? start_listener(base, port) : NULL;
    if (!listener) {
        perror("echo_libevent: listen");
        return 1;
    }
    struct event *sigint_ev = evsignal_new(base, SIGINT, on_stop_signal, base);
    struct event *sigterm_ev = evsignal_new(base, SIGTERM, on_stop_signal, base);
    event_add(sigint_ev, NULL);
    event_add(sigterm_ev, NULL);
    event_base_dispatch(base);
    while (live_conns)
        conn_destroy(live_conns);
    event_free(sigint_ev);
    event_free(sigterm_ev);
    evconnlistener_free(listener);
    event_base_free(base);
    return 0;
}
