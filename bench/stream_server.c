/*
 * stream_server.c - the server side of the stream benchmarks: a one-way
 * proxy and a file server, each in a zero-copy mode and in the copying
 * mode a program would write without it.
 *
 *   stream_server proxy-splice PORT TARGET_PORT   em_proxy_incoming_to
 *   stream_server proxy-copy   PORT TARGET_PORT   receive_data -> send_data
 *   stream_server file-sendfile PORT FILE         em_send_file_data
 *   stream_server file-copy     PORT FILE         pread -> em_send_data
 *
 * Both copying modes keep memory bounded the way a careful program would:
 * the proxy through watermarks on the target, the file server by reading
 * the next 64 KiB only when the queue is below 1 MiB. Prints "ready" once
 * listening; SIGTERM stops it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "em.h"

#define HIGH (1024 * 1024)
#define PIECE (64 * 1024)

static em_loop *loop;
static int target_port;
static const char *file_path;
static int copy_mode;

static void on_term(int sig)
{
    (void)sig;
    em_stop(loop);
}

/* ---- proxy ------------------------------------------------------------ */

typedef struct link_state {
    em_conn *client;
} link_state;

static void link_unbind(em_conn *conn, int reason)
{
    (void)reason;
    link_state *s = em_conn_state(conn);
    if (s->client)
        em_close_connection(s->client, 0);
}

static const em_handler link_handler = {
    .state_size = sizeof(link_state),
    .unbind = link_unbind,
};

typedef struct client_state {
    em_conn *link;
} client_state;

static void proxy_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    client_state *s = em_conn_state(conn);
    if (em_connect(loop, "127.0.0.1", target_port, &link_handler, NULL,
                   &s->link) < 0) {
        em_close_connection(conn, 0);
        return;
    }
    link_state *ls = em_conn_state(s->link);
    ls->client = conn;
    if (copy_mode)
        em_set_watermarks(s->link, HIGH, HIGH / 2, conn);
    else
        em_proxy_incoming_to(conn, s->link, HIGH, 0);
}

static void proxy_receive(em_conn *conn, const char *data, size_t len)
{
    client_state *s = em_conn_state(conn);
    em_send_data(s->link, data, len);
}

static void proxy_unbind(em_conn *conn, int reason)
{
    (void)reason;
    client_state *s = em_conn_state(conn);
    if (!s->link)
        return;
    link_state *ls = em_conn_state(s->link);
    ls->client = NULL;
    em_close_connection(s->link, 1);
}

static const em_handler proxy_handler = {
    .state_size = sizeof(client_state),
    .post_init = proxy_post_init,
    .receive_data = proxy_receive,
    .unbind = proxy_unbind,
};

/* ---- files ------------------------------------------------------------ */

typedef struct file_state {
    int fd;
    off_t offset;
} file_state;

static void copy_more(em_conn *conn)
{
    static char buf[PIECE];
    file_state *s = em_conn_state(conn);
    while (s->fd >= 0 && em_get_outbound_data_size(conn) < HIGH) {
        ssize_t n = pread(s->fd, buf, sizeof(buf), s->offset);
        if (n <= 0) {
            close(s->fd);
            s->fd = -1;
            em_close_connection(conn, 1);
            return;
        }
        s->offset += n;
        em_send_data(conn, buf, (size_t)n);
    }
}

static void file_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    file_state *s = em_conn_state(conn);
    s->fd = -1;
    if (!copy_mode) {
        em_send_file_data(conn, file_path);
        em_close_connection(conn, 1);
        return;
    }
    s->fd = open(file_path, O_RDONLY | O_CLOEXEC);
    copy_more(conn);
}

static void file_unbind(em_conn *conn, int reason)
{
    (void)reason;
    file_state *s = em_conn_state(conn);
    if (s->fd >= 0)
        close(s->fd);
}

static const em_handler file_handler = {
    .state_size = sizeof(file_state),
    .post_init = file_post_init,
    .drained = copy_more,
    .unbind = file_unbind,
};

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr,
                "usage: %s proxy-splice|proxy-copy PORT TARGET_PORT\n"
                "       %s file-sendfile|file-copy PORT FILE\n",
                argv[0], argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    int is_proxy = strncmp(mode, "proxy-", 6) == 0;
    copy_mode = strstr(mode, "copy") != NULL;
    if (is_proxy)
        target_port = atoi(argv[3]);
    else
        file_path = argv[3];
    if (em_loop_new(&loop) < 0)
        return 1;
    int err = em_start_server(loop, "127.0.0.1", atoi(argv[2]),
                              is_proxy ? &proxy_handler : &file_handler, NULL,
                              NULL, NULL);
    if (err < 0) {
        fprintf(stderr, "listen: %s\n", em_strerror(err));
        return 1;
    }
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    printf("ready\n");
    fflush(stdout);
    em_run(loop);
    em_loop_free(loop);
    return 0;
}
