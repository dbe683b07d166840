/*
 * test_descriptors.c - descriptors made elsewhere: em_attach, em_watch and
 * the notify switches, em_detach, em_attach_server, em_get_fd,
 * em_open_stdio.
 *
 * Attached descriptors are real pipes, socketpairs, a pseudo-terminal,
 * regular files and /dev/null. em_open_stdio is tested in a child
 * (tests/stdio_peer.c) whose stdin and stdout are the test's socketpair
 * (em_popen), the test's pipes, a pty, a file and /dev/null.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "em.h"
#include "helpers.h"

/* ---- a collecting handler -------------------------------------------- */

typedef struct sink {
    int post_inits, unbinds, reason;
    int status, status_rc; /* em_get_status in unbind */
    uint8_t *got;
    size_t len, cap, chunks;
    int echo; /* send back what arrives */
    em_conn *conn;
} sink;

static void sink_post_init(em_conn *conn, void *arg)
{
    sink *s = arg;
    s->post_inits++;
    s->conn = conn;
}

static void sink_receive(em_conn *conn, const char *data, size_t len)
{
    sink *s = em_conn_arg(conn);
    if (s->len + len > s->cap) {
        s->cap = (s->len + len) * 2;
        s->got = realloc(s->got, s->cap);
        cr_assert_not_null(s->got);
    }
    memcpy(s->got + s->len, data, len);
    s->len += len;
    s->chunks++;
    if (s->echo)
        cr_assert_eq(em_send_data(conn, data, len), 0);
}

static void sink_unbind(em_conn *conn, int reason)
{
    sink *s = em_conn_arg(conn);
    s->unbinds++;
    s->reason = reason;
    s->status_rc = em_get_status(conn, &s->status);
    cr_assert_eq(em_get_fd(conn), -EBADF, "closed before unbind");
    s->conn = NULL;
}

static const em_handler sink_handler = {
    .post_init = sink_post_init,
    .receive_data = sink_receive,
    .unbind = sink_unbind,
};

static void sink_reset(sink *s)
{
    free(s->got);
    memset(s, 0, sizeof(*s));
}

static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* Sends len pattern bytes from offset in random-size pieces. */
static void send_pattern(em_conn *conn, size_t offset, size_t len)
{
    uint8_t *buf = malloc(len);
    th_pat_fill(buf, offset, len);
    uint32_t seed = 11;
    for (size_t off = 0; off < len;) {
        size_t n = 1 + lcg(&seed) % 7000;
        if (n > len - off)
            n = len - off;
        cr_assert_eq(em_send_data(conn, buf + off, n), 0);
        off += n;
    }
    free(buf);
}

static int is_nonblocking(int fd)
{
    return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
}

static const em_handler nothing = {0};

/* ---- em_attach ------------------------------------------------------- */

/* Both ends of one pipe on one loop: 1 MiB in random pieces, arbitrary
 * chunks out, then em_close_write on the write end is the reader's EOF. */
Test(descriptors, pipe_both_ends, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    int p[2];
    cr_assert_eq(pipe(p), 0);
    sink reader = {0}, writer = {0};
    em_conn *r, *w;
    cr_assert_eq(em_attach(loop, p[0], &sink_handler, &reader, &r), 0);
    cr_assert_eq(em_attach(loop, p[1], &sink_handler, &writer, &w), 0);
    cr_assert_eq(reader.post_inits, 1);
    cr_assert_eq(em_get_fd(r), p[0]);
    cr_assert_eq(em_get_fd(w), p[1]);
    cr_assert(is_nonblocking(p[0]) && is_nonblocking(p[1]));
    cr_assert_eq(em_send_data(r, "x", 1), -EPIPE, "a read end is read-only");

    size_t size = TH_TIMEOUT_SCALE > 1 ? (128u << 10) : (1u << 20);
    send_pattern(w, 0, size);
    cr_assert_eq(em_close_write(w), 0);
    th_run_until_count(loop, &reader.unbinds, 1, 15);
    th_run_until_count(loop, &writer.unbinds, 1, 5);
    cr_assert_eq(reader.reason, 0);
    cr_assert_eq(writer.reason, 0);
    cr_assert_eq(reader.len, size);
    cr_assert_eq(th_pat_check(reader.got, 0, size), -1);
    cr_assert_gt(reader.chunks, 1);
    cr_assert_eq(fcntl(p[0], F_GETFD), -1, "closed at unbind");
    cr_assert_eq(fcntl(p[1], F_GETFD), -1, "closed at unbind");
    sink_reset(&reader);
    sink_reset(&writer);
    th_free_loop(loop);
}

/* A socketpair end attached as an echo connection; the test drives the
 * other end with blocking calls. */
Test(descriptors, socketpair_echo, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    sink s = {.echo = 1};
    cr_assert_eq(em_attach(loop, sv[0], &sink_handler, &s, NULL), 0);
    struct timeval tv = {.tv_sec = TH_SOCKET_TIMEOUT};
    setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    th_send_all(sv[1], "ping", 4);
    char buf[8];
    cr_assert_eq(th_pump_recv(loop, sv[1], buf, 4, 5), 4);
    cr_assert_eq(memcmp(buf, "ping", 4), 0);
    close(sv[1]);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(s.reason, 0);
    sink_reset(&s);
    th_free_loop(loop);
}

/* A pty's master side is a character device: read/write transport. */
Test(descriptors, tty, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(master, 0);
    cr_assert_eq(grantpt(master), 0);
    cr_assert_eq(unlockpt(master), 0);
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(slave, 0);
    struct termios t;
    cr_assert_eq(tcgetattr(slave, &t), 0);
    cfmakeraw(&t);
    cr_assert_eq(tcsetattr(slave, TCSANOW, &t), 0);

    sink s = {0};
    em_conn *conn;
    cr_assert_eq(em_attach(loop, slave, &sink_handler, &s, &conn), 0);
    cr_assert_eq(write(master, "typed", 5), 5);
    th_run_until_size(loop, &s.len, 5, 5);
    cr_assert_eq(memcmp(s.got, "typed", 5), 0);
    cr_assert_eq(em_send_data(conn, "shown", 5), 0);
    char buf[8];
    cr_assert_eq(read(master, buf, 5), 5);
    cr_assert_eq(memcmp(buf, "shown", 5), 0);
    em_close_connection(conn, 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    close(master);
    sink_reset(&s);
    th_free_loop(loop);
}

/* epoll cannot poll a regular file: it is read once per turn to its end,
 * like a peer that sends it and closes. */
Test(descriptors, regular_file_is_read_to_the_end, .timeout = TH_TIMEOUT(10))
{
    char path[] = "/tmp/em-test-attach-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    size_t size = 300000;
    uint8_t *data = malloc(size);
    th_pat_fill(data, 0, size);
    cr_assert_eq(write(fd, data, size), (ssize_t)size);
    close(fd);

    em_loop *loop = th_loop();
    fd = open(path, O_RDONLY | O_CLOEXEC);
    sink s = {0};
    cr_assert_eq(em_attach(loop, fd, &sink_handler, &s, NULL), 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(s.reason, 0);
    cr_assert_eq(s.len, size);
    cr_assert_eq(th_pat_check(s.got, 0, size), -1);
    cr_assert_gt(s.chunks, 1);
    sink_reset(&s);

    /* Written: em_send_data goes to the file, em_close_write closes it. */
    fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    em_conn *conn;
    cr_assert_eq(em_attach(loop, fd, &sink_handler, &s, &conn), 0);
    send_pattern(conn, 5, 100000);
    cr_assert_eq(em_close_write(conn), 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(s.reason, 0);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 100000);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_eq(read(fd, data, 100000), 100000);
    close(fd);
    cr_assert_eq(th_pat_check(data, 5, 100000), -1);
    sink_reset(&s);

    /* /dev/null: EOF at once. */
    fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert_eq(em_attach(loop, fd, &sink_handler, &s, NULL), 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(s.reason, 0);
    cr_assert_eq(s.len, 0);
    sink_reset(&s);
    unlink(path);
    free(data);
    th_free_loop(loop);
}

Test(descriptors, attach_bad_input, .timeout = TH_TIMEOUT(10))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    em_conn *out = (em_conn *)&out;
    cr_assert_eq(em_attach(loop, -1, &nothing, NULL, &out), -EBADF);
    cr_assert_null(out);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    close(p[1]);
    cr_assert_eq(em_attach(loop, p[1], &nothing, NULL, NULL), -EBADF);
    cr_assert_eq(em_attach(NULL, p[0], &nothing, NULL, NULL), -EINVAL);
    cr_assert_eq(em_attach(loop, p[0], NULL, NULL, NULL), -EINVAL);
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_eq(em_attach(loop, dir, &nothing, NULL, NULL), -EISDIR);
    close(dir);

    /* A listening socket belongs to em_attach_server. */
    em_server *srv = th_start_server(loop, &nothing, NULL);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    cr_assert_eq(em_server_sockname(srv, (struct sockaddr *)&ss, &len), 0);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(listen(lfd, 1), 0);
    cr_assert_eq(em_attach(loop, lfd, &nothing, NULL, NULL), -EINVAL);
    close(lfd);

    /* Twice, and descriptors the loop already has: -EEXIST. */
    sink s = {0};
    em_conn *conn;
    cr_assert_eq(em_attach(loop, p[0], &sink_handler, &s, &conn), 0);
    cr_assert_eq(em_attach(loop, p[0], &nothing, NULL, NULL), -EEXIST);
    cr_assert_eq(em_watch(loop, p[0], &nothing, NULL, NULL), -EEXIST);
    cr_assert_eq(em_attach(loop, em_backend_fd(loop), &nothing, NULL, NULL),
                 -EEXIST);
    /* Paused: not in epoll, still found. */
    cr_assert_eq(em_pause(conn), 0);
    cr_assert_eq(em_attach(loop, p[0], &nothing, NULL, NULL), -EEXIST);
    /* Closing (unbind not run yet): still this loop's descriptor. */
    em_close_connection(conn, 0);
    cr_assert_eq(em_attach(loop, p[0], &nothing, NULL, NULL), -EEXIST);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(em_stop_server(srv), 0);
    sink_reset(&s);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
}

/* ---- em_detach ------------------------------------------------------- */

Test(descriptors, detach_then_reuse, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    sink s = {0};
    em_conn *conn;
    cr_assert_eq(em_attach(loop, sv[0], &sink_handler, &s, &conn), 0);
    cr_assert(is_nonblocking(sv[0]));
    th_send_all(sv[1], "one", 3);
    th_run_until_size(loop, &s.len, 3, 5);

    cr_assert_eq(em_detach(conn), sv[0]);
    cr_assert(!is_nonblocking(sv[0]), "blocking again, as it was given");
    cr_assert_eq(em_detach(conn), -ENOTCONN);
    cr_assert_eq(em_send_data(conn, "x", 1), -ENOTCONN);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(s.reason, 0);
    th_run_for(loop, 0.02);
    cr_assert_eq(s.unbinds, 1, "unbind once");

    /* Still open and ours: plain reads and writes work... */
    th_send_all(sv[1], "two", 3);
    char buf[4];
    cr_assert_eq(read(sv[0], buf, 3), 3);
    cr_assert_eq(memcmp(buf, "two", 3), 0);
    cr_assert_eq(write(sv[0], "back", 4), 4);
    cr_assert_eq(read(sv[1], buf, 4), 4);
    /* ...and it can be attached again. */
    sink again = {0};
    cr_assert_eq(em_attach(loop, sv[0], &sink_handler, &again, &conn), 0);
    th_send_all(sv[1], "three", 5);
    th_run_until_size(loop, &again.len, 5, 5);
    cr_assert_eq(memcmp(again.got, "three", 5), 0);
    close(sv[1]);
    th_run_until_count(loop, &again.unbinds, 1, 5);
    cr_assert_eq(s.len, 3, "the first connection saw no more");
    sink_reset(&s);
    sink_reset(&again);
    th_free_loop(loop);
}

/* An accepted TCP connection can be detached too (handed to other code,
 * another process); it stays non-blocking, as libem made it. */
Test(descriptors, detach_accepted_connection, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int client = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    th_expect_echo(loop, client, "before");
    int fd = em_detach(e.conn);
    cr_assert_geq(fd, 0);
    th_run_until_count(loop, &e.unbinds, 1, 5);
    cr_assert_eq(e.last_reason, 0);
    th_send_all(client, "raw", 3);
    th_run_for(loop, 0.05); /* the loop must not read it */
    char buf[4];
    cr_assert_eq(recv(fd, buf, 3, 0), 3);
    cr_assert_eq(memcmp(buf, "raw", 3), 0);
    close(fd);
    close(client);
    th_stop_and_free(loop, srv);
}

static void reconnect_in_unbind(em_conn *conn, int reason)
{
    (void)reason;
    int *rc = em_conn_arg(conn);
    *rc = em_reconnect(conn, "127.0.0.1", 9);
}

Test(descriptors, detach_wrong_kinds, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    cr_assert_eq(em_detach(NULL), -EINVAL);
    cr_assert_eq(em_get_fd(NULL), -EINVAL);
    em_conn *conn;
    sink s = {0};
    cr_assert_eq(em_popen(loop, (const char *[]){"cat", NULL}, NULL,
                          &sink_handler, &s, &conn),
                 0);
    cr_assert_eq(em_detach(conn), -EOPNOTSUPP);
    cr_assert_geq(em_get_fd(conn), 0);
    em_close_write(conn);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    sink_reset(&s);

    /* No socket (/dev/null, read-write, EOF on the first pass): TLS and
     * em_reconnect are refused. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    int rc = 1;
    static const em_handler h = {.unbind = reconnect_in_unbind};
    cr_assert_eq(em_attach(loop, null, &h, &rc, &conn), 0);
    cr_assert_eq(em_start_tls(conn, NULL), -EOPNOTSUPP);
    th_run_for(loop, 0.05);
    cr_assert_eq(rc, -EOPNOTSUPP);
    th_free_loop(loop);
}

/* ---- em_watch -------------------------------------------------------- */

typedef struct watcher {
    int readable, writable, unbinds, reason;
    int drain_fd; /* >= 0: read everything on the next notify_readable */
    int stop_writable_after;
} watcher;

static void on_readable(em_conn *conn)
{
    watcher *w = em_conn_arg(conn);
    w->readable++;
    if (w->drain_fd >= 0) {
        char buf[4096];
        while (recv(w->drain_fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
            ;
        w->drain_fd = -1;
    }
}

static void on_writable(em_conn *conn)
{
    watcher *w = em_conn_arg(conn);
    w->writable++;
}

static void watcher_unbind(em_conn *conn, int reason)
{
    watcher *w = em_conn_arg(conn);
    w->unbinds++;
    w->reason = reason;
}

static const em_handler watch_handler = {
    .notify_readable = on_readable,
    .notify_writable = on_writable,
    .unbind = watcher_unbind,
};

/* Level-triggered: notify_readable comes every turn until the data is
 * read, and the library never reads it itself. */
Test(descriptors, watch_reports_readable_until_drained,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int flags = fcntl(sv[0], F_GETFL);
    watcher w = {.drain_fd = -1};
    em_conn *conn;
    cr_assert_eq(em_watch(loop, sv[0], &watch_handler, &w, &conn), 0);
    cr_assert(em_is_watch_only(conn));
    cr_assert_eq(em_get_fd(conn), sv[0]);
    cr_assert(!em_is_notify_readable(conn) && !em_is_notify_writable(conn));

    th_send_all(sv[1], "data", 4);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.readable, 0, "off by default");

    cr_assert_eq(em_set_notify_readable(conn, 1), 0);
    cr_assert(em_is_notify_readable(conn));
    th_run_until_count(loop, &w.readable, 5, 5);
    cr_assert_eq(w.writable, 0);

    w.drain_fd = sv[0]; /* the callback reads it all next time */
    int seen = w.readable;
    th_run_until_count(loop, &w.readable, seen + 1, 5);
    seen = w.readable;
    th_run_for(loop, 0.05);
    cr_assert_eq(w.readable, seen, "nothing to read: no more calls");

    th_send_all(sv[1], "more", 4);
    th_run_until_count(loop, &w.readable, seen + 1, 5);
    cr_assert_eq(em_set_notify_readable(conn, 0), 0);
    seen = w.readable;
    th_run_for(loop, 0.05);
    cr_assert_eq(w.readable, seen, "switched off");

    cr_assert_eq(em_close_connection(conn, 1), 0);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(w.reason, 0);
    /* Never read, never closed, flags untouched. */
    char buf[8];
    cr_assert_eq(fcntl(sv[0], F_GETFL), flags);
    cr_assert_eq(recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT), 4);
    cr_assert_eq(memcmp(buf, "more", 4), 0);
    close(sv[0]);
    close(sv[1]);
    th_free_loop(loop);
}

Test(descriptors, watch_reports_writable, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    watcher w = {.drain_fd = -1};
    em_conn *conn;
    cr_assert_eq(em_watch(loop, sv[0], &watch_handler, &w, &conn), 0);
    cr_assert_eq(em_set_notify_writable(conn, 1), 0);
    th_run_until_count(loop, &w.writable, 3, 5);

    /* Full: no more notify_writable until the peer reads. */
    static char junk[65536];
    while (send(sv[0], junk, sizeof(junk), MSG_DONTWAIT) > 0)
        ;
    int seen = w.writable;
    th_run_for(loop, 0.05);
    cr_assert_leq(w.writable, seen + 1);
    seen = w.writable;
    th_run_for(loop, 0.05);
    cr_assert_eq(w.writable, seen, "full socket: not writable");
    char buf[65536];
    while (recv(sv[1], buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
    th_run_until_count(loop, &w.writable, seen + 1, 5);

    /* em_detach hands it back; unbind(0) once. */
    cr_assert_eq(em_detach(conn), sv[0]);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    seen = w.writable;
    th_run_for(loop, 0.05);
    cr_assert_eq(w.writable, seen);
    cr_assert_eq(w.unbinds, 1);
    close(sv[0]);
    close(sv[1]);
    th_free_loop(loop);
}

/* The owner may close the descriptor right after closing the watch,
 * before unbind: the loop must not touch the number again (it may be
 * reused at once by another file the loop polls). */
Test(descriptors, watch_fd_closed_right_after_close, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    int dup0 = dup(p[0]); /* the file stays open elsewhere */
    watcher w = {.drain_fd = -1};
    em_conn *conn;
    cr_assert_eq(em_watch(loop, p[0], &watch_handler, &w, &conn), 0);
    cr_assert_eq(em_set_notify_readable(conn, 1), 0);
    em_close_connection(conn, 0);
    close(p[0]);
    /* The number comes back as another pipe, attached to this loop. */
    int q[2];
    cr_assert_eq(pipe2(q, O_CLOEXEC), 0);
    cr_assert_eq(q[0], p[0]);
    sink s = {0};
    cr_assert_eq(em_attach(loop, q[0], &sink_handler, &s, NULL), 0);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(write(p[1], "old", 3), 3); /* must wake nobody */
    cr_assert_eq(write(q[1], "new", 3), 3);
    th_run_until_size(loop, &s.len, 3, 5);
    cr_assert_eq(memcmp(s.got, "new", 3), 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.readable, 0);
    close(q[1]);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    close(p[1]);
    close(dup0);
    sink_reset(&s);
    th_free_loop(loop);
}

Test(descriptors, watch_bad_input, .timeout = TH_TIMEOUT(10))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    int closed = dup(p[0]);
    close(closed);
    cr_assert_eq(em_watch(loop, closed, &watch_handler, NULL, NULL), -EBADF);
    cr_assert_eq(em_watch(loop, -3, &watch_handler, NULL, NULL), -EBADF);
    cr_assert_eq(em_watch(NULL, p[0], &watch_handler, NULL, NULL), -EINVAL);
    cr_assert_eq(em_watch(loop, p[0], NULL, NULL, NULL), -EINVAL);
    int file = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    char path[] = "/tmp/em-test-watch-XXXXXX";
    int reg = mkstemp(path);
    unlink(path);
    cr_assert_eq(em_watch(loop, reg, &watch_handler, NULL, NULL), -EPERM);
    cr_assert_eq(em_watch(loop, null, &watch_handler, NULL, NULL), -EPERM);
    close(file);
    close(null);
    close(reg);

    watcher w = {.drain_fd = -1};
    em_conn *conn;
    cr_assert_eq(em_watch(loop, p[0], &nothing, &w, &conn), 0);
    cr_assert_eq(em_watch(loop, p[0], &watch_handler, NULL, NULL), -EEXIST);
    cr_assert_eq(em_send_data(conn, "x", 1), -EOPNOTSUPP);
    cr_assert_eq(em_set_notify_readable(conn, 1), -EINVAL,
                 "no notify_readable in the handler");
    cr_assert_eq(em_set_notify_writable(conn, 1), -EINVAL);
    cr_assert_eq(em_set_notify_readable(conn, 0), 0);
    cr_assert_eq(em_set_notify_readable(NULL, 1), -EINVAL);
    cr_assert_eq(em_start_tls(conn, NULL), -ENOTCONN);
    em_close_connection(conn, 0);
    cr_assert_eq(em_set_notify_readable(conn, 0), -ENOTCONN);
    th_run_for(loop, 0.02);

    /* Switches exist only on watches. */
    sink s = {0};
    cr_assert_eq(em_attach(loop, p[1], &sink_handler, &s, &conn), 0);
    cr_assert_eq(em_set_notify_writable(conn, 1), -EOPNOTSUPP);
    cr_assert(!em_is_watch_only(conn));
    cr_assert(!em_is_notify_writable(conn));
    em_close_connection(conn, 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    close(p[0]);
    sink_reset(&s);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
}

/* ---- em_attach_server ------------------------------------------------ */

static int listening_socket(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(fd, 16), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

Test(descriptors, attach_server_adopts_a_listener, .timeout = TH_TIMEOUT(10))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    int port;
    int lfd = listening_socket(&port);
    th_echo e = {0};
    em_server *srv;
    cr_assert_eq(em_attach_server(loop, lfd, &th_echo_handler, &e, &srv), 0);
    cr_assert_eq(em_server_port(srv), port);
    cr_assert_eq(em_attach_server(loop, lfd, &th_echo_handler, &e, NULL),
                 -EEXIST);
    cr_assert_eq(em_attach(loop, lfd, &nothing, NULL, NULL), -EEXIST);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = th_connect_accepted(loop, port, &e.accepted);
        th_expect_echo(loop, fds[i], "adopted");
    }
    th_close_clients(loop, &e, fds, 3);
    th_stop_and_free(loop, srv);
    cr_assert_eq(fcntl(lfd, F_GETFD), -1, "em_stop_server closed it");
    cr_assert_eq(th_count_fds(), before);
}

Test(descriptors, attach_server_bad_input, .timeout = TH_TIMEOUT(10))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    em_server *out = (em_server *)&out;
    cr_assert_eq(em_attach_server(loop, -1, &nothing, NULL, &out), -EBADF);
    cr_assert_null(out);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cr_assert_eq(em_attach_server(loop, p[0], &nothing, NULL, NULL), -ENOTSOCK);
    int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(em_attach_server(loop, tcp, &nothing, NULL, NULL), -EINVAL,
                 "not listening");
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(em_attach_server(loop, udp, &nothing, NULL, NULL), -EINVAL);
    int port;
    int lfd = listening_socket(&port);
    cr_assert_eq(em_attach_server(loop, lfd, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(em_attach_server(NULL, lfd, &nothing, NULL, NULL), -EINVAL);
    cr_assert_neq(fcntl(lfd, F_GETFD), -1, "left open on failure");
    int fds[] = {p[0], p[1], tcp, udp, lfd};
    for (int i = 0; i < 5; i++)
        close(fds[i]);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
}

/* ---- em_open_stdio, through tests/stdio_peer ------------------------- */

static void expect_peer_exit(const sink *s, int code)
{
    cr_assert_eq(s->status_rc, 0);
    cr_assert(WIFEXITED(s->status) && WEXITSTATUS(s->status) == code,
              "stdio_peer: status %#x, expected exit %d", s->status, code);
}

/* The echo's output: the data, then "#EOF <n> 0#". */
static void expect_echo(const uint8_t *got, size_t len, size_t size)
{
    char trailer[64];
    int tn = snprintf(trailer, sizeof(trailer), "#EOF %zu 0#", size);
    cr_assert_eq(len, size + (size_t)tn, "got %zu bytes", len);
    cr_assert_eq(th_pat_check(got, 0, size), -1);
    cr_assert_eq(memcmp(got + size, trailer, (size_t)tn), 0);
}

/* stdio_peer over a socketpair: em_popen gives it one as stdin/stdout. */
Test(descriptors, stdio_over_a_socket, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    sink s = {0};
    em_conn *conn;
    cr_assert_eq(em_popen(loop, (const char *[]){TH_STDIO_PEER, "echo", NULL},
                          NULL, &sink_handler, &s, &conn),
                 0);
    size_t size = TH_TIMEOUT_SCALE > 1 ? 100000 : 1000000;
    send_pattern(conn, 0, size);
    cr_assert_eq(em_close_write(conn), 0);
    th_run_until_count(loop, &s.unbinds, 1, 15);
    cr_assert_eq(s.reason, 0);
    expect_echo(s.got, s.len, size);
    expect_peer_exit(&s, 0);
    sink_reset(&s);
    th_free_loop(loop);
}

/* Runs stdio_peer MODE with stdin and stdout on the given descriptors. */
static pid_t spawn_peer(const char *mode, const char *limit, int in, int out)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(in, STDIN_FILENO);
        dup2(out, STDOUT_FILENO);
        execl(TH_STDIO_PEER, TH_STDIO_PEER, mode, limit, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid)
{
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "stdio_peer: status %#x", status);
    return WEXITSTATUS(status);
}

/* Its stdin and stdout are the test's pipes, whose other ends the test
 * attaches to its own loop. */
Test(descriptors, stdio_over_pipes, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    int to[2], from[2];
    cr_assert_eq(pipe2(to, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(from, O_CLOEXEC), 0);
    pid_t pid = spawn_peer("echo", NULL, to[0], from[1]);
    close(to[0]);
    close(from[1]);
    sink writer = {0}, reader = {0};
    em_conn *w;
    cr_assert_eq(em_attach(loop, to[1], &sink_handler, &writer, &w), 0);
    cr_assert_eq(em_attach(loop, from[0], &sink_handler, &reader, NULL), 0);
    size_t size = TH_TIMEOUT_SCALE > 1 ? 100000 : 1000000;
    send_pattern(w, 0, size);
    em_close_write(w);
    th_run_until_count(loop, &reader.unbinds, 1, 15);
    cr_assert_eq(reader.reason, 0);
    expect_echo(reader.got, reader.len, size);
    cr_assert_gt(reader.chunks, 1);
    cr_assert_eq(wait_exit(pid), 0);
    th_run_until_count(loop, &writer.unbinds, 1, 5);
    sink_reset(&writer);
    sink_reset(&reader);
    th_free_loop(loop);
}

/* em_close_write reaches the reader as EOF while stdio_peer still runs
 * (it waits for its stdin's EOF): over a pipe, fd 1 had to go too. */
Test(descriptors, stdio_close_write_over_pipes, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int to[2], from[2];
    cr_assert_eq(pipe2(to, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(from, O_CLOEXEC), 0);
    pid_t pid = spawn_peer("close-write", NULL, to[0], from[1]);
    close(to[0]);
    close(from[1]);
    sink reader = {0};
    cr_assert_eq(em_attach(loop, from[0], &sink_handler, &reader, NULL), 0);
    th_run_until_count(loop, &reader.unbinds, 1, 5);
    cr_assert_eq(reader.len, 4);
    cr_assert_eq(memcmp(reader.got, "bye\n", 4), 0);
    cr_assert_eq(waitpid(pid, NULL, WNOHANG), 0, "still reading stdin");
    cr_assert_eq(write(to[1], "late", 4), 4);
    close(to[1]);
    cr_assert_eq(wait_exit(pid), 0);
    sink_reset(&reader);
    th_free_loop(loop);
}

/* The same over a socket: a shutdown, and the peer keeps reading. */
Test(descriptors, stdio_close_write_over_a_socket, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    sink s = {0};
    cr_assert_eq(em_popen(loop,
                          (const char *[]){TH_STDIO_PEER, "close-write", NULL},
                          NULL, &sink_handler, &s, NULL),
                 0);
    /* Our side closes on its EOF, which ends the child's stdin. */
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(s.len, 4);
    cr_assert_eq(memcmp(s.got, "bye\n", 4), 0);
    expect_peer_exit(&s, 0);
    sink_reset(&s);
    th_free_loop(loop);
}

/* stdin a regular file or /dev/null (epoll refuses both), stdout a
 * regular file. */
Test(descriptors, stdio_files, .timeout = TH_TIMEOUT(20))
{
    char in_path[] = "/tmp/em-test-stdin-XXXXXX";
    char out_path[] = "/tmp/em-test-stdout-XXXXXX";
    int in = mkstemp(in_path);
    int out = mkstemp(out_path);
    size_t size = 200000;
    uint8_t *data = malloc(size + 64);
    th_pat_fill(data, 0, size);
    cr_assert_eq(write(in, data, size), (ssize_t)size);
    lseek(in, 0, SEEK_SET);

    pid_t pid = spawn_peer("echo", NULL, in, out);
    cr_assert_eq(wait_exit(pid), 0);
    struct stat st;
    cr_assert_eq(fstat(out, &st), 0);
    lseek(out, 0, SEEK_SET);
    size_t len = (size_t)st.st_size;
    cr_assert_leq(len, size + 64);
    cr_assert_eq(read(out, data, len), (ssize_t)len);
    expect_echo(data, len, size);

    /* /dev/null in, a pipe out: EOF at once. */
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int from[2];
    cr_assert_eq(pipe2(from, O_CLOEXEC), 0);
    pid = spawn_peer("echo", NULL, null, from[1]);
    close(from[1]);
    cr_assert_eq(wait_exit(pid), 0);
    char buf[64];
    ssize_t n = read(from[0], buf, sizeof(buf) - 1);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_assert_str_eq(buf, "#EOF 0 0#");
    close(from[0]);
    close(null);
    close(in);
    close(out);
    unlink(in_path);
    unlink(out_path);
    free(data);
}

/* stdin and stdout a terminal: the test plays the terminal (pty master),
 * and stdio_peer closes after echoing 1000 bytes. */
Test(descriptors, stdio_on_a_tty, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(master, 0);
    cr_assert_eq(grantpt(master), 0);
    cr_assert_eq(unlockpt(master), 0);
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
    struct termios t;
    cr_assert_eq(tcgetattr(slave, &t), 0);
    cfmakeraw(&t);
    cr_assert_eq(tcsetattr(slave, TCSANOW, &t), 0);
    pid_t pid = spawn_peer("echo", "1000", slave, slave);
    close(slave);

    sink term = {0};
    em_conn *conn;
    cr_assert_eq(em_attach(loop, master, &sink_handler, &term, &conn), 0);
    send_pattern(conn, 0, 1000);
    size_t want = 1000 + strlen("#EOF 1000 0#");
    th_run_until_size(loop, &term.len, want, 5);
    cr_assert_eq(term.len, want);
    expect_echo(term.got, term.len, 1000);
    cr_assert_eq(wait_exit(pid), 0);
    em_close_connection(conn, 0);
    th_run_until_count(loop, &term.unbinds, 1, 5);
    sink_reset(&term);
    th_free_loop(loop);
}

Test(descriptors, stdio_twice_is_eexist, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    sink s = {0};
    cr_assert_eq(em_popen(loop, (const char *[]){TH_STDIO_PEER, "twice", NULL},
                          NULL, &sink_handler, &s, NULL),
                 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    expect_peer_exit(&s, 0);
    cr_assert_eq(em_open_stdio(NULL, &nothing, NULL, NULL), -EINVAL);
    cr_assert_eq(em_open_stdio(loop, NULL, NULL, NULL), -EINVAL);
    sink_reset(&s);
    th_free_loop(loop);
}

/* ---- no descriptor left ---------------------------------------------- */

Test(descriptors, no_fd_left, .timeout = TH_TIMEOUT(20))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    int p[2], sv[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    sink a = {0}, b = {0}, c = {0};
    watcher w = {.drain_fd = -1};
    em_conn *ca, *cb;
    cr_assert_eq(em_attach(loop, p[0], &sink_handler, &a, &ca), 0);
    cr_assert_eq(em_attach(loop, p[1], &sink_handler, &b, &cb), 0);
    cr_assert_eq(em_watch(loop, sv[0], &watch_handler, &w, NULL), 0);
    cr_assert_eq(em_attach(loop, sv[0], &nothing, NULL, NULL), -EEXIST);
    cr_assert_eq(em_attach(loop, -1, &nothing, NULL, NULL), -EBADF);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert_eq(em_attach(loop, null, &sink_handler, &c, NULL), 0);
    cr_assert_eq(em_send_data(cb, "abc", 3), 0);
    th_run_until_size(loop, &a.len, 3, 5);
    int fd = em_detach(ca);
    cr_assert_eq(fd, p[0]);
    em_close_connection(cb, 1);
    th_run_until_count(loop, &c.unbinds, 1, 5);
    th_run_until_count(loop, &b.unbinds, 1, 5);
    th_run_until_count(loop, &a.unbinds, 1, 5);
    close(fd); /* detached: ours */
    cr_assert_eq(em_loop_free(loop), -EBUSY, "the watch was left open");
    cr_assert_eq(w.unbinds, 1);
    close(sv[0]); /* watched: always ours */
    close(sv[1]);
    sink_reset(&a);
    sink_reset(&b);
    sink_reset(&c);
    cr_assert_eq(th_count_fds(), before);
}

/* ---- shared open files ------------------------------------------------ */

/* Registrations in the loop's epoll set, from /proc/self/fdinfo. */
static int epoll_entries(em_loop *loop)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", em_backend_fd(loop));
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strncmp(line, "tfd:", 4) == 0;
    fclose(f);
    return n;
}

/* close(2) leaves a descriptor in epoll while another descriptor shares its
 * open file (a dup kept by the program, as the Ruby engine's attach_fd
 * does, or a child between fork and exec). Closing a connection must take
 * it out all the same: its events would otherwise name a freed connection
 * (a use-after-free) and, the pipe staying readable, wake every turn. */
Test(descriptors, close_leaves_no_registration_on_a_shared_file,
     .timeout = TH_TIMEOUT(10))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    int base = epoll_entries(loop);

    /* An attached dup of a pipe's read end; the original stays open. */
    int p[2];
    cr_assert_eq(pipe(p), 0);
    int d = dup(p[0]);
    cr_assert_geq(d, 0);
    sink s = {0};
    em_conn *conn;
    cr_assert_eq(em_attach(loop, d, &sink_handler, &s, &conn), 0);
    cr_assert_eq(epoll_entries(loop), base + 1);
    em_close_connection(conn, 0);
    th_run_until_count(loop, &s.unbinds, 1, 5);
    cr_assert_eq(epoll_entries(loop), base, "closed, still registered");
    cr_assert_eq(write(p[1], "ready", 5), 5);
    for (int i = 0; i < 5; i++)
        em_run_once(loop, 0);
    cr_assert_eq(s.len, 0);
    cr_assert_eq(s.unbinds, 1);

    /* A TCP connection whose socket the program duplicated. */
    sink client = {0};
    em_server *srv = th_start_server(loop, &sink_handler, &s);
    em_conn *c;
    cr_assert_eq(em_connect(loop, "127.0.0.1", th_listen_port(srv),
                            &sink_handler, &client, &c),
                 0);
    th_run_until_count(loop, &s.post_inits, 2, 5);
    em_conn *accepted = s.conn;
    cr_assert_not_null(accepted);
    int keep = dup(em_get_fd(c));
    cr_assert_geq(keep, 0);
    em_close_connection(c, 0);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    cr_assert_eq(epoll_entries(loop), base + 2, "the server and its peer");
    cr_assert_eq(em_send_data(accepted, "ready", 5), 0);
    for (int i = 0; i < 5; i++)
        em_run_once(loop, 0);
    cr_assert_eq(client.len, 0);

    close(keep);
    close(p[0]);
    close(p[1]);
    em_close_connection(accepted, 0);
    th_run_until_count(loop, &s.unbinds, 2, 5);
    cr_assert_eq(em_stop_server(srv), 0);
    sink_reset(&s);
    sink_reset(&client);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
}
