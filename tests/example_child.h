/*
 * example_child.h - the programs in examples/ as child processes, for the
 * tests/test_example_*.c files (test_examples.c's approach: the binaries
 * are found next to the test binary, in ../examples, and a test is skipped
 * when one is not built).
 *
 * Static inline, so that each test file uses what it needs without unused
 * function warnings. Every wait is bounded (scaled by TH_TIMEOUT) and fails
 * the test rather than hang; a child that outlives its test is killed.
 */
#ifndef EM_TEST_EXAMPLE_CHILD_H
#define EM_TEST_EXAMPLE_CHILD_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

extern char **environ;

/* ex_start flags: pipes for the child's stdin and stderr (else stdin is
 * /dev/null and stderr the test's). stdout is always a pipe. */
#define EX_STDIN 1
#define EX_STDERR 2

typedef struct ex_child {
    pid_t pid;
    int in;  /* write end of its stdin, or -1 */
    int out; /* read end of its stdout */
    int err; /* read end of its stderr, or -1 */
    int port;
} ex_child;

/* The path of examples/<name>'s binary; skips the test when not built. */
static inline void ex_path(const char *name, char *buf, size_t size)
{
    char self[400];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert_gt(n, 0);
    self[n] = '\0';
    *strrchr(self, '/') = '\0';
    snprintf(buf, size, "%s/../examples/%s", self, name);
    if (access(buf, X_OK) != 0)
        cr_skip_test("%s is not built", buf);
}

/* Starts examples/<name> with args (NULL-terminated, at most 8). The child
 * gets SIGKILL when the test's process dies (PR_SET_PDEATHSIG), so a test
 * that times out leaves no server behind. fork + exec rather than
 * posix_spawn, which cannot set that; the child makes only system calls
 * before exec. */
static inline void ex_start(ex_child *c, const char *name,
                            const char *const args[], int flags)
{
    char path[600];
    ex_path(name, path, sizeof(path));
    int in[2] = {-1, -1}, out[2], err[2] = {-1, -1};
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    if (flags & EX_STDIN)
        cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    if (flags & EX_STDERR)
        cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
    char *argv[10] = {path};
    for (int i = 0; args && args[i]; i++) {
        cr_assert_lt(i, 8);
        argv[i + 1] = (char *)args[i];
    }
    pid_t parent = getpid();
    c->pid = fork();
    cr_assert_geq(c->pid, 0, "fork: %s", strerror(errno));
    if (c->pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(126);
        int null = (flags & EX_STDIN) ? in[0]
                                      : open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null < 0 || dup2(null, 0) < 0 || dup2(out[1], 1) < 0 ||
            ((flags & EX_STDERR) && dup2(err[1], 2) < 0))
            _exit(126);
        execve(path, argv, environ);
        _exit(127);
    }
    close(out[1]);
    c->out = out[0];
    c->in = -1;
    c->err = -1;
    if (flags & EX_STDIN) {
        close(in[0]);
        c->in = in[1];
    }
    if (flags & EX_STDERR) {
        close(err[1]);
        c->err = err[0];
    }
    c->port = 0;
}

/* Waits until fd is readable (or at EOF); fails after max_seconds. */
static inline void ex_wait_readable(int fd, double max_seconds)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ms = (int)((deadline - th_now()) * 1000);
        cr_assert_gt(ms, 0, "nothing to read after %.1f s",
                     TH_TIMEOUT(max_seconds));
        int n = poll(&p, 1, ms);
        if (n > 0)
            return;
        cr_assert(n == 0 || errno == EINTR, "poll: %s", strerror(errno));
    }
}

/* Buffered line reading from a pipe or socket. */
typedef struct ex_reader {
    int fd;
    size_t len;
    char buf[16384];
} ex_reader;

static inline void ex_reader_init(ex_reader *r, int fd)
{
    r->fd = fd;
    r->len = 0;
}

/* The next line without its "\n", NUL-terminated in line (size bytes);
 * returns its length, or -1 at EOF (an unterminated rest is returned as a
 * line first), or the negative errno of a failed read. Waits at most
 * max_seconds (scaled). */
static inline int ex_next_line(ex_reader *r, char *line, size_t size,
                               double max_seconds)
{
    for (;;) {
        char *nl = memchr(r->buf, '\n', r->len);
        if (nl || r->len == sizeof(r->buf)) {
            size_t n = nl ? (size_t)(nl - r->buf) : r->len;
            cr_assert_lt(n, size, "line too long for the test's buffer");
            memcpy(line, r->buf, n);
            line[n] = '\0';
            size_t used = nl ? n + 1 : n;
            memmove(r->buf, r->buf + used, r->len - used);
            r->len -= used;
            return (int)n;
        }
        ex_wait_readable(r->fd, max_seconds);
        ssize_t got = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && errno == EAGAIN)
            continue;
        if (got < 0)
            return -errno;
        if (got == 0) {
            if (r->len == 0)
                return -1;
            size_t n = r->len;
            cr_assert_lt(n, size);
            memcpy(line, r->buf, n);
            line[n] = '\0';
            r->len = 0;
            return (int)n;
        }
        r->len += (size_t)got;
    }
}

/* Asserts that the next line is `want`. */
static inline void ex_expect_line(ex_reader *r, const char *want)
{
    char line[4096];
    int n = ex_next_line(r, line, sizeof(line), 5.0);
    cr_assert_geq(n, 0, "expected \"%s\", got %s", want,
                  n == -1 ? "EOF" : strerror(-n));
    cr_assert_str_eq(line, want);
}

/* Asserts that the peer closes: EOF, or a reset when `reset_ok`. */
static inline void ex_expect_eof(ex_reader *r, int reset_ok)
{
    char line[4096];
    int n = ex_next_line(r, line, sizeof(line), 5.0);
    if (n == -ECONNRESET && reset_ok)
        return;
    cr_assert_eq(n, -1, "expected EOF, got %s", n >= 0 ? line : strerror(-n));
}

/* Reads the child's first stdout line, which names "127.0.0.1:PORT". */
static inline int ex_read_port(ex_child *c)
{
    char line[256];
    /* Byte by byte: what follows the first line stays in the pipe. */
    size_t n = 0;
    for (;;) {
        ex_wait_readable(c->out, 10.0);
        ssize_t got = read(c->out, line + n, 1);
        cr_assert_eq(got, 1, "the example said nothing");
        if (line[n] == '\n' || n + 2 == sizeof(line))
            break;
        n++;
    }
    line[n] = '\0';
    char *at = strstr(line, "127.0.0.1:");
    cr_assert_not_null(at, "the example said: %s", line);
    c->port = atoi(at + strlen("127.0.0.1:"));
    cr_assert_gt(c->port, 0);
    return c->port;
}

/* Waits for the child's exit; returns the raw status. Kills it and fails
 * the test after max_seconds (scaled). */
static inline int ex_wait(ex_child *c, double max_seconds)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    for (;;) {
        int status;
        pid_t p = waitpid(c->pid, &status, WNOHANG);
        cr_assert_neq(p, -1, "waitpid: %s", strerror(errno));
        if (p == c->pid) {
            c->pid = 0;
            return status;
        }
        if (th_now() > deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &status, 0);
            c->pid = 0;
            cr_assert_fail("the example did not exit within %.1f s",
                           TH_TIMEOUT(max_seconds));
        }
        th_sleep_ms(5);
    }
}

/* Closes the test's ends of the child's pipes. */
static inline void ex_close(ex_child *c)
{
    if (c->in >= 0)
        close(c->in);
    if (c->err >= 0)
        close(c->err);
    close(c->out);
    c->in = c->err = -1;
}

/* SIGTERM, then the exit, which must be status 0. */
static inline void ex_stop(ex_child *c)
{
    cr_assert_eq(kill(c->pid, SIGTERM), 0);
    int status = ex_wait(c, 10.0);
    ex_close(c);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %#x",
              status);
}

/* Reads fd to EOF into buf (NUL-terminated); returns the length. */
static inline size_t ex_read_all(int fd, char *buf, size_t size,
                                 double max_seconds)
{
    size_t len = 0;
    for (;;) {
        ex_wait_readable(fd, max_seconds);
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        cr_assert_geq(n, 0, "read: %s", strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        cr_assert_lt(len, size - 1, "more output than expected");
    }
    buf[len] = '\0';
    return len;
}

/* Descriptors the child has open (its /proc/PID/fd). */
static inline int ex_count_child_fds(const ex_child *c)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)c->pid);
    DIR *dir = opendir(path);
    cr_assert_not_null(dir, "opendir %s: %s", path, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

#endif
