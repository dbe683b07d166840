/*
 * test_example_backport.c - the Backport seed's two examples, built as
 * examples/backport_echo and examples/backport_interval, run as a user
 * would run them and held to what the seed says they do.
 *
 * Covers: the echo server prints "Opening a connection" for each client,
 * answers "Client sent: <data>", prints "Closing a connection" once per
 * client when it leaves, prints nothing else on stdout, and exits 0 on
 * SIGTERM; the interval server prints "tick" about once a second (at
 * least three, with generous bounds), nothing else, and exits 0 on SIGINT.
 * The test's own descriptors are all closed afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

extern char **environ;

typedef struct program {
    pid_t pid;
    int out; /* the read end of its stdout */
    char buf[512];
    size_t len;
} program;

static const char *examples_dir(void)
{
    static char dir[512];
    char self[400];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert_gt(n, 0);
    self[n] = '\0';
    *strrchr(self, '/') = '\0';
    snprintf(dir, sizeof(dir), "%s/../examples", self);
    return dir;
}

static void start(program *p, const char *name, const char *arg)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", examples_dir(), name);
    if (access(path, X_OK) != 0)
        cr_skip_test("%s is not built", path);
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    char *argv[] = {path, (char *)arg, NULL};
    cr_assert_eq(posix_spawn(&p->pid, path, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    p->out = fds[0];
    p->len = 0;
}

/* The next line of its stdout (without "\n") into line; fails the test
 * after max_seconds (scaled). Returns 0, or -1 at EOF. */
static int read_line(program *p, char *line, size_t size, double max_seconds)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    for (;;) {
        char *nl = memchr(p->buf, '\n', p->len);
        if (nl) {
            size_t n = (size_t)(nl - p->buf);
            cr_assert_lt(n, size);
            memcpy(line, p->buf, n);
            line[n] = '\0';
            p->len -= n + 1;
            memmove(p->buf, nl + 1, p->len);
            return 0;
        }
        double left = deadline - th_now();
        cr_assert_gt(left, 0, "no line after %.1f s (have \"%.*s\")",
                     TH_TIMEOUT(max_seconds), (int)p->len, p->buf);
        struct pollfd pfd = {.fd = p->out, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (rc < 0 && errno == EINTR)
            continue;
        cr_assert_geq(rc, 0);
        if (rc == 0)
            continue;
        cr_assert_lt(p->len, sizeof(p->buf), "line too long");
        ssize_t n = read(p->out, p->buf + p->len, sizeof(p->buf) - p->len);
        cr_assert_geq(n, 0, "read: %s", strerror(errno));
        if (n == 0) {
            cr_assert_eq(p->len, 0, "unterminated output \"%.*s\"", (int)p->len,
                         p->buf);
            return -1;
        }
        p->len += (size_t)n;
    }
}

static void expect_line(program *p, const char *want)
{
    char line[256];
    cr_assert_eq(read_line(p, line, sizeof(line), 5.0), 0,
                 "EOF instead of \"%s\"", want);
    cr_assert_str_eq(line, want);
}

/* Expects no more output and exit status 0 (after a stop signal). */
static void finish(program *p)
{
    char line[256];
    cr_assert_eq(read_line(p, line, sizeof(line), 10.0), -1,
                 "printed \"%s\" while stopping", line);
    int status;
    cr_assert_eq(waitpid(p->pid, &status, 0), p->pid);
    close(p->out);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x",
              status);
}

static void stop(program *p, int signo)
{
    cr_assert_eq(kill(p->pid, signo), 0);
    finish(p);
}

/* Connects to localhost:port as the seed's clients would (every address
 * "localhost" has, in order), retrying while the server starts. */
static int connect_localhost(int port)
{
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    struct addrinfo *list;
    cr_assert_eq(getaddrinfo("localhost", service, &hints, &list), 0);
    double deadline = th_now() + TH_TIMEOUT(5);
    for (;;) {
        for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0)
                continue;
            if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                freeaddrinfo(list);
                struct timeval tv = {.tv_sec = TH_TIMEOUT(5)};
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
                return fd;
            }
            close(fd);
        }
        cr_assert_lt(th_now(), deadline, "backport_echo never listened");
        th_sleep_ms(20);
    }
}

static void expect_reply(int fd, const char *want)
{
    size_t len = strlen(want), got = 0;
    char buf[256];
    cr_assert_lt(len, sizeof(buf));
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        cr_assert_gt(n, 0, "recv: %s", n < 0 ? strerror(errno) : "EOF");
        got += (size_t)n;
    }
    cr_assert(memcmp(buf, want, len) == 0, "reply \"%.*s\"", (int)len, buf);
}

Test(example_backport, echo_server_as_the_seed_says, .timeout = TH_TIMEOUT(20))
{
    int fds_before = th_count_fds();
    int port = th_free_port();
    char port_arg[16];
    snprintf(port_arg, sizeof(port_arg), "%d", port);
    program p;
    start(&p, "backport_echo", port_arg);

    int a = connect_localhost(port);
    expect_line(&p, "Opening a connection");
    th_send_all(a, "hello\n", 6);
    expect_reply(a, "Client sent: hello\n");

    /* A second client at the same time gets its own answers. */
    int b = connect_localhost(port);
    expect_line(&p, "Opening a connection");
    th_send_all(b, "from b", 6);
    expect_reply(b, "Client sent: from b");
    th_send_all(a, "again", 5);
    expect_reply(a, "Client sent: again");

    close(a);
    expect_line(&p, "Closing a connection");
    close(b);
    expect_line(&p, "Closing a connection");

    /* One left open when the server stops is closed, once, too. */
    int c = connect_localhost(port);
    expect_line(&p, "Opening a connection");
    cr_assert_eq(kill(p.pid, SIGTERM), 0);
    expect_line(&p, "Closing a connection");
    char byte;
    cr_assert_eq(recv(c, &byte, 1, 0), 0, "client not closed by the stop");
    close(c);
    finish(&p);
    cr_assert_eq(th_count_fds(), fds_before);
}

Test(example_backport, interval_ticks_once_a_second, .timeout = TH_TIMEOUT(20))
{
    int fds_before = th_count_fds();
    program p;
    double started = th_now();
    start(&p, "backport_interval", NULL);
    double at[3];
    char line[256];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(read_line(&p, line, sizeof(line), 5.0), 0);
        cr_assert_str_eq(line, "tick");
        at[i] = th_now();
    }
    /* The first a second after the start; then about a second apart. The
     * bounds are generous: a loaded machine delays a tick, and a fixed
     * schedule lets the next one catch up. */
    cr_assert_geq(at[0] - started, 0.5, "first tick after %.2f s",
                  at[0] - started);
    for (int i = 1; i < 3; i++) {
        double gap = at[i] - at[i - 1];
        cr_assert(gap >= 0.5 && gap <= TH_TIMEOUT(2.0), "ticks %.2f s apart",
                  gap);
    }
    cr_assert_leq(at[2] - at[0], TH_TIMEOUT(3.0));
    stop(&p, SIGINT);
    cr_assert_eq(th_count_fds(), fds_before);
}
