/*
 * server.c - TCP and Unix-domain listeners and accepting.
 *
 * A listener drains its backlog with accept4 (non-blocking, close-on-exec
 * in the same call) up to a fairness bound per wakeup, so one busy listener
 * cannot starve established connections.
 *
 * Out of descriptors (EMFILE/ENFILE) the level-triggered listener would
 * report readable forever and spin the CPU. libuv closes a reserve
 * descriptor to accept and drop the connection; we instead stop watching
 * the listener for EM__ACCEPT_RETRY_MS and try again: pending clients stay
 * in the backlog and are served once descriptors free up, nobody is dropped
 * and the server never stops for good.
 *
 * Server names are resolved synchronously (getaddrinfo with AI_PASSIVE):
 * listening happens at start-up and callers want the bound port at once.
 * Literals never touch the resolver.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fdx.h"

static void on_accept(em_loop *loop, em__watcher *w, unsigned revents);

/* ---- listening socket ------------------------------------------------ */

static int set_int_opt(int fd, int level, int name, int value)
{
    if (setsockopt(fd, level, name, &value, sizeof(value)) < 0)
        return -errno;
    return 0;
}

static int open_listener(const struct sockaddr *sa, socklen_t len,
                         const em_server_opts *opts)
{
    int fd =
        socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int err = 0;
    if (sa->sa_family != AF_UNIX) {
        err = set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
        if (!err && opts->reuseport)
            err = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
        if (!err && sa->sa_family == AF_INET6)
            err = set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY,
                              opts->ipv6_only ? 1 : 0);
    }
    if (!err && bind(fd, sa, len) < 0)
        err = -errno;
    if (!err && listen(fd, opts->backlog > 0 ? opts->backlog : SOMAXCONN) < 0)
        err = -errno;
    if (err) {
        close(fd);
        return err;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

/* Resolves a host name (not a literal) and listens on the first address
 * that binds. Returns the descriptor or a negative errno. */
static int listen_on_name(const char *host, int port,
                          const em_server_opts *opts)
{
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *list;
    int rc = getaddrinfo(host, service, &hints, &list);
    if (rc == EAI_MEMORY)
        return -ENOMEM;
    if (rc != 0)
        return -ENOENT;
    int fd = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        fd = open_listener(ai->ai_addr, ai->ai_addrlen, opts);
        if (fd >= 0)
            break;
    }
    freeaddrinfo(list);
    return fd;
}

/* ---- server objects -------------------------------------------------- */

/* A server on listening fd. On failure fd and unix_path stay the
 * caller's. */
static int server_adopt(em_loop *loop, int fd, const em_handler *handler,
                        void *arg, char *unix_path, em_server **out)
{
    em_server *server = calloc(1, sizeof(*server));
    if (!server)
        return -ENOMEM;
    server->watcher.fd = fd;
    server->watcher.on_event = on_accept;
    server->loop = loop;
    server->handler = handler;
    server->arg = arg;
    server->unix_path = unix_path;
    server->port = unix_path ? 0 : bound_port(fd);
    int err = em__poller_set(loop, &server->watcher, EM__IN);
    if (err < 0) {
        free(server);
        return err;
    }
    em__list_push_back(&loop->servers, &server->link);
    if (out)
        *out = server;
    return 0;
}

/* server_adopt for a listener we made: closed and unlinked on failure. */
static int server_new(em_loop *loop, int fd, const em_handler *handler,
                      void *arg, char *unix_path, em_server **out)
{
    int err = server_adopt(loop, fd, handler, arg, unix_path, out);
    if (err < 0) {
        close(fd);
        if (unix_path && unix_path[0] != '@')
            unlink(unix_path);
        free(unix_path);
    }
    return err;
}

/* Checks what both kinds of server take; NULL opts become the defaults. */
static int check_server_args(em_loop *loop, const em_handler *handler,
                             const em_server_opts **opts, em_server **out)
{
    static const em_server_opts defaults;
    if (out)
        *out = NULL;
    if (!*opts)
        *opts = &defaults;
    if (!loop || !handler || (*opts)->backlog < 0)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    return 0;
}

int em_start_server(em_loop *loop, const char *host, int port,
                    const em_handler *handler, void *arg,
                    const em_server_opts *opts, em_server **out)
{
    int err = check_server_args(loop, handler, &opts, out);
    if (err < 0)
        return err;
    if (port < 0 || port > 65535)
        return -EINVAL;

    struct sockaddr_storage ss;
    socklen_t len;
    int fd;
    if (em__addr_literal(host, port, &ss, &len) == 0)
        fd = open_listener((struct sockaddr *)&ss, len, opts);
    else
        fd = listen_on_name(host, port, opts);
    if (fd < 0)
        return fd;
    return server_new(loop, fd, handler, arg, NULL, out);
}

/* A socket file nobody accepts on is left over from a dead server. */
static int is_stale_socket(const struct sockaddr *sa, socklen_t len,
                           const char *path)
{
    struct stat st;
    if (path[0] == '@' || lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return 0;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return 0;
    int stale = connect(probe, sa, len) < 0 && errno == ECONNREFUSED;
    close(probe);
    return stale;
}

int em_start_unix_server(em_loop *loop, const char *path,
                         const em_handler *handler, void *arg,
                         const em_server_opts *opts, em_server **out)
{
    int err = check_server_args(loop, handler, &opts, out);
    if (err < 0)
        return err;
    struct sockaddr_storage ss;
    socklen_t len;
    err = em__addr_unix(path, &ss, &len);
    if (err < 0)
        return err;

    const struct sockaddr *sa = (const struct sockaddr *)&ss;
    int fd = open_listener(sa, len, opts);
    if (fd == -EADDRINUSE && is_stale_socket(sa, len, path)) {
        unlink(path);
        fd = open_listener(sa, len, opts);
    }
    if (fd < 0)
        return fd;
    char *copy = strdup(path);
    if (!copy) {
        close(fd);
        if (path[0] != '@')
            unlink(path);
        return -ENOMEM;
    }
    return server_new(loop, fd, handler, arg, copy, out);
}

/* A prefork parent's or systemd's listener: checked, never closed on
 * failure, and no Unix path is ours to unlink. */
int em_attach_server(em_loop *loop, int listen_fd, const em_handler *handler,
                     void *arg, em_server **out)
{
    const em_server_opts *opts = NULL;
    int err = check_server_args(loop, handler, &opts, out);
    if (err < 0)
        return err;
    struct stat st;
    if (listen_fd < 0 || fstat(listen_fd, &st) < 0)
        return -EBADF;
    if (!S_ISSOCK(st.st_mode))
        return -ENOTSOCK;
    int type = 0, listening = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(listen_fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -errno;
    len = sizeof(listening);
    if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        return -errno;
    if (type != SOCK_STREAM || !listening)
        return -EINVAL;
    if (em__fd_in_use(loop, listen_fd))
        return -EEXIST;
    int restore;
    err = em__set_nonblock(listen_fd, &restore);
    if (err < 0)
        return err;
    return server_adopt(loop, listen_fd, handler, arg, NULL, out);
}

int em_stop_server(em_server *server)
{
    if (!server || server->watcher.fd < 0)
        return -EINVAL;
    em_loop *loop = server->loop;
    if (server->retry_timer)
        em_cancel_timer(loop, server->retry_timer);
    em__poller_forget(loop, &server->watcher);
    close(server->watcher.fd);
    server->watcher.fd = -1;
    if (server->unix_path && server->unix_path[0] != '@')
        unlink(server->unix_path);
    free(server->unix_path);
    server->unix_path = NULL;
    em__list_remove(&server->link);
    if (!loop->running && !loop->stopping) {
        free(server);
        return 0;
    }
    /* Freed after the current batch: an event for it may still be queued.
     * In em_loop_free's shutdown, after the unbinds, which may still use
     * the server the application holds (as they can in em_run's). */
    em__list_push_back(&loop->dead_servers, &server->link);
    return 0;
}

int em_server_port(const em_server *server)
{
    return server ? server->port : -EINVAL;
}

/* ---- accepting ------------------------------------------------------- */

static void resume_accepting(em_loop *loop, void *arg)
{
    em_server *server = arg;
    server->retry_timer = 0;
    if (em__poller_set(loop, &server->watcher, EM__IN) < 0)
        em_add_timer(loop, EM__ACCEPT_RETRY_MS / 1000.0, resume_accepting,
                     server, &server->retry_timer);
}

/* Out of descriptors or kernel memory: back off instead of spinning. */
static void back_off(em_loop *loop, em_server *server)
{
    if (server->retry_timer)
        return;
    em__poller_set(loop, &server->watcher, 0);
    em_add_timer(loop, EM__ACCEPT_RETRY_MS / 1000.0, resume_accepting, server,
                 &server->retry_timer);
}

static void start_accepted(em_loop *loop, em_server *server, int fd)
{
    em_conn *conn = em__conn_new(loop, server->handler, server->arg, fd, 0);
    if (!conn) {
        close(fd);
        return;
    }
    em__conn_start(conn, NULL);
}

static void on_accept(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)revents;
    em_server *server = em__container_of(w, em_server, watcher);
    for (int i = 0; i < loop->accepts_per_wakeup && server->watcher.fd >= 0;
         i++) {
        int fd = accept4(server->watcher.fd, NULL, NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            start_accepted(loop, server, fd);
            continue;
        }
        switch (errno) {
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
            continue;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            back_off(loop, server);
            return;
        default: /* EAGAIN: backlog drained */
            return;
        }
    }
}

/* ---- after fork (fork.c) --------------------------------------------- */

static void forget_list(em__link *list)
{
    while (!em__list_empty(list)) {
        em_server *server = em__container_of(list->next, em_server, link);
        em__list_remove(&server->link);
        if (server->watcher.fd >= 0)
            close(server->watcher.fd);
        /* The socket file is the parent's listener's: never unlinked. */
        free(server->unix_path);
        free(server);
    }
}

void em__servers_forget(em_loop *loop)
{
    forget_list(&loop->servers);
    forget_list(&loop->dead_servers);
}
