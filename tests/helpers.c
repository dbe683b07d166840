/*
 * helpers.c - see helpers.h.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <criterion/criterion.h>

#include "helpers.h"

#define TH_TURN_MS 10

em_loop *th_loop(void)
{
    em_loop *loop = NULL;
    int rc = em_loop_new(&loop);
    cr_assert_eq(rc, 0, "em_loop_new: %s", em_strerror(rc));
    cr_assert_not_null(loop, "em_loop_new returned 0 but no loop");
    return loop;
}

void th_free_loop(em_loop *loop)
{
    int rc = em_loop_free(loop);
    cr_assert_eq(rc, 0, "em_loop_free: %s (%s): live handles were left",
                 em_err_name(rc), em_strerror(rc));
}

double th_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void th_turn(em_loop *loop)
{
    int rc = em_run_once(loop, TH_TURN_MS);
    cr_assert_geq(rc, 0, "em_run_once: %s", em_strerror(rc));
}

void th_run_until(em_loop *loop, int *flag, double max_seconds)
{
    volatile int *f = flag;
    double limit = TH_TIMEOUT(max_seconds);
    double deadline = th_now() + limit;
    while (!*f) {
        cr_assert_lt(th_now(), deadline,
                     "condition still false after %.2f s of loop turns", limit);
        th_turn(loop);
    }
}

void th_run_for(em_loop *loop, double seconds)
{
    double deadline = th_now() + seconds;
    while (th_now() < deadline)
        th_turn(loop);
}

int th_listen_port(em_server *s)
{
    cr_assert_not_null(s, "no server");
    int port = em_server_port(s);
    cr_assert_gt(port, 0, "em_server_port: %d (%s)", port, em_strerror(port));
    return port;
}

static void th_set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = TH_TIMEOUT(TH_SOCKET_TIMEOUT), .tv_usec = 0};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0,
                 "SO_RCVTIMEO: %s", strerror(errno));
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0,
                 "SO_SNDTIMEO: %s", strerror(errno));
}

int th_client_connect(int port)
{
    cr_assert(port > 0 && port < 65536, "bad port %d", port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    th_set_timeouts(fd);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
    cr_assert_eq(rc, 0, "connect to 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

int th_client_connect_unix(const char *path)
{
    struct sockaddr_un sun;
    cr_assert_not_null(path);
    cr_assert_lt(strlen(path), sizeof sun.sun_path, "path too long: %s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    th_set_timeouts(fd);
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    cr_assert_eq(rc, 0, "connect to %s: %s", path, strerror(errno));
    return fd;
}

void th_send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "send: %s", n < 0 ? strerror(errno) : "0 bytes");
        p += n;
        len -= (size_t)n;
    }
}

size_t th_pump_recv(em_loop *loop, int fd, void *buf, size_t len,
                    double max_seconds)
{
    char *p = buf;
    size_t got = 0;
    double limit = TH_TIMEOUT(max_seconds);
    double deadline = th_now() + limit;
    while (got < len) {
        ssize_t n = recv(fd, p + got, len - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0)
            break; /* EOF */
        cr_assert(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR,
                  "recv: %s", strerror(errno));
        cr_assert_lt(th_now(), deadline, "only %zu of %zu bytes after %.2f s",
                     got, len, limit);
        th_turn(loop);
    }
    return got;
}

int th_pump_eof(em_loop *loop, int fd, double max_seconds)
{
    char sink[4096];
    double limit = TH_TIMEOUT(max_seconds);
    double deadline = th_now() + limit;
    for (;;) {
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n == 0)
            return 0;
        if (n > 0)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
        cr_assert_lt(th_now(), deadline, "no EOF after %.2f s", limit);
        th_turn(loop);
    }
}

char *th_unix_path(char *buf, size_t size, const char *tag)
{
    static unsigned counter;
    int n = snprintf(buf, size, "/tmp/em-test-%ld-%u-%s.sock", (long)getpid(),
                     counter++, tag ? tag : "s");
    cr_assert(n > 0 && (size_t)n < size, "buffer too small for a path");
    unlink(buf);
    return buf;
}
