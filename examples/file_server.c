/*
 * file_server.c - streams FILE to every client, then closes.
 *
 *   build/examples/file_server PORT FILE
 *
 * The file goes out with sendfile(2) (em_stream_file_data): its bytes
 * never pass through this process, whatever its size. Each client gets
 * the whole file, then the connection closes after writing. A line per
 * client says how it ended. Ctrl-C stops the loop.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

static em_loop *the_loop;
static const char *file_path;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(the_loop);
}

static void file_sent(em_conn *conn, int err, void *arg)
{
    (void)arg;
    if (err < 0) {
        fprintf(stderr, "sending %s: %s\n", file_path, em_strerror(err));
        return;
    }
    em_close_connection(conn, 1);
}

static void client_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    int err = em_stream_file_data(conn, file_path, NULL, file_sent, NULL);
    if (err < 0) {
        fprintf(stderr, "%s: %s\n", file_path, em_strerror(err));
        em_close_connection(conn, 0);
    }
}

static void client_unbind(em_conn *conn, int reason)
{
    (void)conn;
    printf("client done: %s\n", reason ? em_strerror(reason) : "sent");
    fflush(stdout);
}

static const em_handler file_handler = {
    .post_init = client_post_init,
    .unbind = client_unbind,
};

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT FILE\n", argv[0]);
        return 2;
    }
    file_path = argv[2];
    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_server *server;
    err = em_start_server(the_loop, "127.0.0.1", atoi(argv[1]), &file_handler,
                          NULL, NULL, &server);
    if (err < 0) {
        fprintf(stderr, "cannot listen: %s\n", em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("file_server on 127.0.0.1:%d serving %s\n", em_server_port(server),
           file_path);
    fflush(stdout);
    em_run(the_loop);
    return em_loop_free(the_loop) < 0;
}
