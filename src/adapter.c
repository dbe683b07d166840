/*
 * adapter.c - Backport's adapter model (docs/backport.md) over libem's
 * handlers, servers and timers.
 *
 * An em_adapter (opening, closing, receiving, state_size) becomes an
 * em_handler the loop owns: em_prepare_tcp_server and
 * em_prepare_stdio_server look the adapter up in the loop's small list of
 * such handlers (by content: one handler per distinct adapter, however many
 * servers use it) and start an ordinary server or stdio connection with it.
 * The list lives until em_loop_free, after the last unbind, so a server may
 * stop (em_stop_server, em_stop) while its connections live on, and the
 * caller's em_adapter is copied: it may be a temporary.
 *
 * receiving and closing have receive_data's and unbind's signatures, so the
 * handler points at them directly: no extra call per chunk, and closing is
 * unbind, which runs exactly once per connection, last, after a local
 * close, the peer's EOF, a reset, a timeout or the loop's stop. Only
 * opening goes through adapter_opening, which first saves the peer's
 * address (one getpeername per accepted connection, in a record behind the
 * adapter's state) so that em_remote still answers after a reset and inside
 * closing, where the socket is already closed; Backport too fixes remote
 * when the connection is made.
 *
 * Alternatives rejected: a heap record per server, counted by its
 * connections, has no way to learn that em_stop or em_loop_free closed the
 * server, so it would leak or be freed under live connections. One static
 * handler that dispatches through a per-connection record cannot give each
 * adapter its own state_size (a handler has one), so the adapter's state
 * would cost a second allocation per connection and em_conn_state would no
 * longer point at it.
 *
 * The functions on the connection (em_write, em_write_line, em_close,
 * em_is_closed, em_remote) work on every connection, adapter or not.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "fdx.h"

struct em__adapter {
    em_handler handler; /* what the adapter's connections run */
    void (*opening)(em_conn *conn, void *arg);
    size_t user_state; /* the adapter's state_size */
    struct em__adapter *next;
};

/* The peer saved at opening: adapter connections are TCP (or stdio, which
 * saves nothing), so an IPv6 socket address is the largest it holds. */
typedef union kept_peer {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} kept_peer;

static const struct em__adapter *adapter_of(const em_conn *conn)
{
    return em__container_of(conn->handler, struct em__adapter, handler);
}

/* Behind the adapter's own state, so em_conn_state still points at that. */
static kept_peer *kept_peer_of(const em_conn *conn)
{
    size_t offset = EM__STATE_SPAN(adapter_of(conn)->user_state);
    return (kept_peer *)(void *)((unsigned char *)conn->state + offset);
}

static void adapter_opening(em_conn *conn, void *arg)
{
    const struct em__adapter *a = adapter_of(conn);
    if (!conn->fdx) {
        kept_peer *peer = kept_peer_of(conn);
        socklen_t len = sizeof(*peer);
        if (em_get_peername(conn, &peer->sa, &len) == 0 &&
            len <= sizeof(*peer) &&
            (peer->sa.sa_family == AF_INET || peer->sa.sa_family == AF_INET6))
            conn->flags |= EM__CONN_REMOTE_KEPT;
        /* Otherwise (a peer that reset before opening) em_remote asks the
         * socket and reports its error. */
    }
    if (a->opening)
        a->opening(conn, arg);
}

/* The loop's handler for this adapter, made on first use. */
static int adapter_handler(em_loop *loop, const em_adapter *adapter,
                           const em_handler **out)
{
    struct em__adapter *a;
    for (a = loop->adapters; a; a = a->next) {
        if (a->opening == adapter->opening &&
            a->handler.unbind == adapter->closing &&
            a->handler.receive_data == adapter->receiving &&
            a->user_state == adapter->state_size) {
            *out = &a->handler;
            return 0;
        }
    }
    if (adapter->state_size > SIZE_MAX / 2)
        return -ENOMEM; /* no connection could ever be allocated */
    a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->opening = adapter->opening;
    a->user_state = adapter->state_size;
    a->handler.state_size =
        EM__STATE_SPAN(adapter->state_size) + sizeof(kept_peer);
    a->handler.post_init = adapter_opening;
    a->handler.receive_data = adapter->receiving;
    a->handler.unbind = adapter->closing;
    a->next = loop->adapters;
    loop->adapters = a;
    *out = &a->handler;
    return 0;
}

void em__adapters_free(em_loop *loop)
{
    while (loop->adapters) {
        struct em__adapter *a = loop->adapters;
        loop->adapters = a->next;
        free(a);
    }
}

/* ---- preparing servers and intervals --------------------------------- */

int em_prepare_tcp_server(em_loop *loop, const char *host, int port,
                          const em_adapter *adapter, void *arg, em_server **out)
{
    if (out)
        *out = NULL;
    if (!loop || !adapter)
        return -EINVAL;
    const em_handler *handler;
    int err = adapter_handler(loop, adapter, &handler);
    if (err < 0)
        return err;
    return em_start_server(loop, host, port, handler, arg, NULL, out);
}

int em_prepare_stdio_server(em_loop *loop, const em_adapter *adapter, void *arg,
                            em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !adapter)
        return -EINVAL;
    const em_handler *handler;
    int err = adapter_handler(loop, adapter, &handler);
    if (err < 0)
        return err;
    return em_open_stdio(loop, handler, arg, out);
}

int em_prepare_interval(em_loop *loop, double period, em_callback fn, void *arg,
                        em_timer_id *out)
{
    if (out)
        *out = 0;
    return em_add_periodic_timer(loop, period, fn, arg, out);
}

/* ---- functions on the connection ------------------------------------- */

int em_write(em_conn *conn, const void *data, size_t len)
{
    return em_send_data(conn, data, len);
}

int em_write_line(em_conn *conn, const void *data, size_t len)
{
    if (!conn || (!data && len > 0))
        return -EINVAL;
    if (len > 0 && ((const char *)data)[len - 1] == '\n')
        return em_send_data(conn, data, len);
    /* One writev with the newline: no copy, and one datagram on UDP. */
    struct iovec iov[2] = {{.iov_base = (void *)data, .iov_len = len},
                           {.iov_base = "\n", .iov_len = 1}};
    return em_send_datav(conn, iov, 2);
}

int em_close(em_conn *conn)
{
    return em_close_connection(conn, 1);
}

int em_is_closed(const em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    return (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND |
                           EM__CONN_CLOSE_AFTER_WRITING | EM__CONN_READ_EOF))
               ? 1
               : 0;
}

/* ---- em_remote ------------------------------------------------------- */

/* Appends the NUL-terminated s to buf (size bytes, NUL-terminated). */
static void append(char *buf, size_t size, const char *s)
{
    size_t have = strlen(buf);
    size_t n = strlen(s);
    if (n > size - 1 - have)
        n = size - 1 - have;
    memcpy(buf + have, s, n);
    buf[have + n] = '\0';
}

static void describe_ip(em_remote_addr *out, int family, const void *ip,
                        int port, uint32_t scope)
{
    out->family = family;
    out->port = port;
    inet_ntop(family, ip, out->host, sizeof(out->host));
    if (scope) {
        char name[IF_NAMESIZE + 1] = "%";
        if (!if_indextoname(scope, name + 1))
            snprintf(name + 1, sizeof(name) - 1, "%u", (unsigned)scope);
        append(out->host, sizeof(out->host), name);
    }
    char port_text[8];
    snprintf(port_text, sizeof(port_text), ":%d", port);
    append(out->text, sizeof(out->text), family == AF_INET6 ? "[" : "");
    append(out->text, sizeof(out->text), out->host);
    append(out->text, sizeof(out->text), family == AF_INET6 ? "]" : "");
    append(out->text, sizeof(out->text), port_text);
}

/* A Unix peer: its path, "@name" for an abstract one (NUL bytes in the
 * name shown as '@', as /proc/net/unix does), "" when unnamed. */
static void describe_unix(em_remote_addr *out, const struct sockaddr_un *sun,
                          socklen_t len)
{
    size_t n = len > offsetof(struct sockaddr_un, sun_path)
                   ? len - offsetof(struct sockaddr_un, sun_path)
                   : 0;
    if (n > sizeof(sun->sun_path))
        n = sizeof(sun->sun_path);
    out->family = AF_UNIX;
    if (n > 0 && sun->sun_path[0] == '\0') {
        for (size_t i = 0; i < n && i < sizeof(out->host) - 1; i++)
            out->host[i] = sun->sun_path[i] ? sun->sun_path[i] : '@';
    } else {
        size_t end = strnlen(sun->sun_path, n);
        memcpy(out->host, sun->sun_path, end);
    }
    append(out->text, sizeof(out->text), "unix:");
    append(out->text, sizeof(out->text), out->host);
}

int em_remote(const em_conn *conn, em_remote_addr *out)
{
    if (!conn || !out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (conn->fdx && conn->fdx->kind == EM__FDX_STDIO) {
        out->family = AF_UNSPEC;
        append(out->host, sizeof(out->host), "stdio");
        append(out->text, sizeof(out->text), "stdio");
        return 0;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (conn->flags & EM__CONN_REMOTE_KEPT) {
        memcpy(&ss, kept_peer_of(conn), sizeof(kept_peer));
        len = sizeof(kept_peer);
    } else {
        int err = em_get_peername(conn, (struct sockaddr *)&ss, &len);
        if (err < 0)
            return err;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        describe_ip(out, AF_INET, &sin->sin_addr, ntohs(sin->sin_port), 0);
        return 0;
    }
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            /* A dual-stack listener's IPv4 client: shown as IPv4. */
            describe_ip(out, AF_INET, &sin6->sin6_addr.s6_addr[12],
                        ntohs(sin6->sin6_port), 0);
            return 0;
        }
        describe_ip(out, AF_INET6, &sin6->sin6_addr, ntohs(sin6->sin6_port),
                    sin6->sin6_scope_id);
        return 0;
    }
    if (ss.ss_family == AF_UNIX) {
        describe_unix(out, (const struct sockaddr_un *)&ss, len);
        return 0;
    }
    return -EAFNOSUPPORT;
}
