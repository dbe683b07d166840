/*
 * stdio_peer.c - a program that serves its own stdin and stdout through
 * em_open_stdio, for test_descriptors.c, which runs it with stdin and
 * stdout on sockets, pipes, a tty, regular files and /dev/null.
 *
 *   stdio_peer echo [LIMIT]  echoes stdin to stdout; after LIMIT bytes (if
 *                            given) closes after writing. Once unbound it
 *                            writes "#EOF <bytes> <reason>#" with a plain
 *                            write(2) to fd 1, which must still be open
 *                            and as blocking as it was.
 *   stdio_peer close-write   writes "bye\n", then em_close_write, then
 *                            reads stdin to EOF.
 *   stdio_peer twice         a second em_open_stdio and em_attach(0)
 *                            must say -EEXIST.
 *
 * Exit status: 0 when all went as expected, else a code naming the first
 * thing that did not (messages on stderr).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "em.h"

static int mode_close_write;
static size_t limit, total;
static int unbound, unbind_reason;
static int flags_before[2];

static int fail(int code, const char *what, int err)
{
    fprintf(stderr, "stdio_peer: %s: %s\n", what, em_strerror(err));
    return code;
}

static void post_init(em_conn *conn, void *arg)
{
    (void)arg;
    if (!mode_close_write)
        return;
    em_send_data(conn, "bye\n", 4);
    em_close_write(conn);
}

static void receive_data(em_conn *conn, const char *data, size_t len)
{
    total += len;
    if (mode_close_write)
        return;
    em_send_data(conn, data, len);
    if (limit && total >= limit)
        em_close_connection(conn, 1);
}

static void unbind(em_conn *conn, int reason)
{
    (void)conn;
    unbound = 1;
    unbind_reason = reason;
    em_stop(em_conn_loop(conn));
}

static const em_handler handler = {
    .post_init = post_init,
    .receive_data = receive_data,
    .unbind = unbind,
};

static int twice(em_loop *loop)
{
    em_conn *conn;
    int err = em_open_stdio(loop, &handler, NULL, &conn);
    if (err < 0)
        return fail(2, "em_open_stdio", err);
    err = em_open_stdio(loop, &handler, NULL, NULL);
    if (err != -EEXIST)
        return fail(3, "second em_open_stdio", err);
    err = em_attach(loop, STDIN_FILENO, &handler, NULL, NULL);
    if (err != -EEXIST)
        return fail(4, "em_attach(0)", err);
    em_close_connection(conn, 0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "echo";
    mode_close_write = strcmp(mode, "close-write") == 0;
    if (argc > 2)
        limit = strtoul(argv[2], NULL, 10);
    flags_before[0] = fcntl(STDIN_FILENO, F_GETFL);
    flags_before[1] = fcntl(STDOUT_FILENO, F_GETFL);

    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0)
        return fail(1, "em_loop_new", err);
    if (strcmp(mode, "twice") == 0) {
        int code = twice(loop);
        em_run_once(loop, 0);
        return em_loop_free(loop) < 0 ? 5 : code;
    }
    err = em_open_stdio(loop, &handler, NULL, NULL);
    if (err < 0)
        return fail(2, "em_open_stdio", err);
    em_run(loop);
    if (em_loop_free(loop) < 0)
        return fail(5, "em_loop_free", -EBUSY);
    if (!unbound)
        return fail(6, "no unbind", 0);

    if (fcntl(STDIN_FILENO, F_GETFL) != flags_before[0])
        return fail(7, "stdin's flags changed", 0);
    if (!mode_close_write && fcntl(STDOUT_FILENO, F_GETFL) != flags_before[1])
        return fail(8, "stdout's flags changed", 0);
    if (!mode_close_write) { /* stdout ended there: nothing to write */
        char trailer[64];
        int n = snprintf(trailer, sizeof(trailer), "#EOF %zu %d#", total,
                         unbind_reason);
        if (write(STDOUT_FILENO, trailer, (size_t)n) != n)
            return fail(9, "write after unbind", -errno);
    }
    return unbind_reason == 0 ? 0 : fail(10, "unbind", unbind_reason);
}
