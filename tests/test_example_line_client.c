/*
 * test_example_line_client.c - examples/line_client run as a child against
 * a server the test plays with plain sockets: stdin lines reach the server
 * and server lines reach stdout, split across writes at every offset; the
 * half-close at stdin's EOF and exit 0 when the server closes (its
 * unterminated last line printed); and every failure with its exit status
 * and message: refused port, unknown host, connect timeout (a listener
 * whose backlog is full), inactivity timeout (kept off by traffic), an
 * overlong server line, bad usage.
 */
#include <netinet/in.h>

#include "example_child.h"

typedef struct listener {
    int fd;
    int port;
    int filler; /* connection filling a backlog of 0, or -1 */
} listener;

static void listen_on(listener *l, int backlog)
{
    l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(l->fd, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(l->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    cr_assert_eq(listen(l->fd, backlog), 0);
    socklen_t len = sizeof(sin);
    cr_assert_eq(getsockname(l->fd, (struct sockaddr *)&sin, &len), 0);
    l->port = ntohs(sin.sin_port);
    l->filler = -1;
}

/* A listener that never answers a SYN: backlog 0 holds one completed
 * connection, which a filler takes; the kernel drops further SYNs, so a
 * connect stays pending (the way a dead host's address behaves, without
 * relying on a non-routable address being unroutable here). */
static void listen_full(listener *l)
{
    listen_on(l, 0);
    l->filler = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)l->port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(l->filler, (struct sockaddr *)&sin, sizeof(sin));
    cr_assert(rc == 0 || errno == EINPROGRESS);
    struct pollfd p = {.fd = l->filler, .events = POLLOUT};
    cr_assert_eq(poll(&p, 1, 2000), 1, "filler connect did not complete");
}

static void listener_close(listener *l)
{
    if (l->filler >= 0)
        close(l->filler);
    close(l->fd);
}

/* Accepts the client's connection (10 s at most). */
static int accept_client(listener *l)
{
    ex_wait_readable(l->fd, 10.0);
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(fd, 0, "accept: %s", strerror(errno));
    struct timeval tv = {.tv_sec = TH_TIMEOUT(5)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

static void start_client(ex_child *c, const char *const args[])
{
    ex_start(c, "line_client", args, EX_STDIN | EX_STDERR);
}

/* Waits for the exit; returns the exit code and the stderr text. */
static int finish(ex_child *c, char *err, size_t size)
{
    int status = ex_wait(c, 20.0);
    ex_read_all(c->err, err, size, 5.0);
    ex_close(c);
    cr_assert(WIFEXITED(status), "status %#x, stderr: %s", status, err);
    return WEXITSTATUS(status);
}

/* Reads exactly len bytes from a socket. */
static void recv_exact(int fd, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        cr_assert_gt(n, 0, "recv: %s", n == 0 ? "EOF" : strerror(errno));
        got += (size_t)n;
    }
}

static void write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        cr_assert_gt(n, 0, "write: %s", strerror(errno));
        s += n;
        len -= (size_t)n;
    }
}

Test(example_line_client, lines_both_ways_then_half_close,
     .timeout = TH_TIMEOUT(30))
{
    int fds = th_count_fds();
    listener l;
    listen_on(&l, 8);
    char port[16];
    snprintf(port, sizeof(port), "%d", l.port);
    ex_child c;
    start_client(&c, (const char *[]){"127.0.0.1", port, NULL});
    int srv = accept_client(&l);
    ex_reader out;
    ex_reader_init(&out, c.out);

    /* stdin to server, split at every offset: the server gets each line
     * once, "\n"-terminated (a "\r" before it dropped). */
    const char *in = "first\r\nsecond line\n";
    const char *want = "first\nsecond line\n";
    char got[64];
    for (size_t at = 0; at <= strlen(in); at++) {
        if (at > 0)
            write_all(c.in, in, at);
        th_sleep_ms(2);
        if (at < strlen(in))
            write_all(c.in, in + at, strlen(in) - at);
        recv_exact(srv, got, strlen(want));
        cr_assert(memcmp(got, want, strlen(want)) == 0, "got %.*s",
                  (int)strlen(want), got);
    }

    /* Server to stdout, split at every offset, then many in one write. */
    const char *lines = "hello\r\nworld, again\n";
    for (size_t at = 0; at <= strlen(lines); at++) {
        if (at > 0)
            th_send_all(srv, lines, at);
        th_sleep_ms(2);
        if (at < strlen(lines))
            th_send_all(srv, lines + at, strlen(lines) - at);
        ex_expect_line(&out, "hello");
        ex_expect_line(&out, "world, again");
    }
    char burst[8192];
    size_t len = 0;
    for (int i = 0; i < 500; i++)
        len += (size_t)snprintf(burst + len, sizeof(burst) - len, "%d\n", i);
    th_send_all(srv, burst, len);
    for (int i = 0; i < 500; i++) {
        char num[16];
        snprintf(num, sizeof(num), "%d", i);
        ex_expect_line(&out, num);
    }

    /* stdin's EOF: the client half-closes; the server still answers, and
     * its unterminated last line is printed before the client exits 0. */
    write_all(c.in, "last words", 10);
    close(c.in);
    c.in = -1;
    recv_exact(srv, got, 11);
    cr_assert(memcmp(got, "last words\n", 11) == 0);
    cr_assert_eq(recv(srv, got, sizeof(got), 0), 0, "no half-close");
    th_send_all(srv, "goodbye\nno newline", 18);
    close(srv);
    ex_expect_line(&out, "goodbye");
    ex_expect_line(&out, "no newline");
    ex_expect_eof(&out, 0);
    char err[1024];
    cr_assert_eq(finish(&c, err, sizeof(err)), 0, "stderr: %s", err);
    cr_assert_str_eq(err, "");
    listener_close(&l);
    cr_assert_eq(th_count_fds(), fds);
}

Test(example_line_client, refused_port_exits_1, .timeout = TH_TIMEOUT(20))
{
    char port[16], want[256];
    snprintf(port, sizeof(port), "%d", th_free_port());
    ex_child c;
    start_client(&c, (const char *[]){"127.0.0.1", port, NULL});
    char err[1024];
    cr_assert_eq(finish(&c, err, sizeof(err)), 1, "stderr: %s", err);
    snprintf(want, sizeof(want),
             "line_client: cannot connect to 127.0.0.1:%s: %s (ECONNREFUSED)\n",
             port, em_strerror(-ECONNREFUSED));
    cr_assert_str_eq(err, want);
}

Test(example_line_client, unknown_host_exits_1, .timeout = TH_TIMEOUT(30))
{
    ex_child c;
    start_client(&c, (const char *[]){"no-such-host.invalid", "80", NULL});
    char err[1024];
    cr_assert_eq(finish(&c, err, sizeof(err)), 1, "stderr: %s", err);
    cr_assert_not_null(
        strstr(err, "line_client: cannot connect to no-such-host.invalid:80: "),
        "stderr: %s", err);
    /* No such name, or (no DNS server at all) a temporary failure. */
    cr_assert(strstr(err, "unknown host (ENOENT: ") || strstr(err, "(EAGAIN)"),
              "stderr: %s", err);
}

Test(example_line_client, connect_timeout_exits_1, .timeout = TH_TIMEOUT(20))
{
    listener l;
    listen_full(&l);
    char port[16];
    snprintf(port, sizeof(port), "%d", l.port);
    double t0 = th_now();
    ex_child c;
    start_client(&c, (const char *[]){"-c", "0.3", "127.0.0.1", port, NULL});
    char err[1024];
    int code = finish(&c, err, sizeof(err));
    double elapsed = th_now() - t0;
    cr_assert_eq(code, 1, "stderr: %s", err);
    char want[256];
    snprintf(want, sizeof(want),
             "line_client: cannot connect to 127.0.0.1:%s: connect timeout "
             "after 0.3 s (ETIMEDOUT: %s)\n",
             port, em_strerror(-ETIMEDOUT));
    cr_assert_str_eq(err, want);
    cr_assert_geq(elapsed, 0.3);
    listener_close(&l);
}

Test(example_line_client, inactivity_timeout_exits_3, .timeout = TH_TIMEOUT(30))
{
    listener l;
    listen_on(&l, 8);
    char port[16];
    snprintf(port, sizeof(port), "%d", l.port);
    ex_child c;
    start_client(&c, (const char *[]){"-i", "1", "127.0.0.1", port, NULL});
    int srv = accept_client(&l);
    ex_reader out;
    ex_reader_init(&out, c.out);

    /* Traffic every 100 ms for 2 s keeps a 1 s timeout off. */
    for (int i = 0; i < 20; i++) {
        th_sleep_ms(100);
        th_send_all(srv, "ping\n", 5);
        ex_expect_line(&out, "ping");
    }
    double t0 = th_now(); /* just after the client's last traffic */
    char err[1024];
    int code = finish(&c, err, sizeof(err));
    cr_assert_eq(code, 3, "stderr: %s", err);
    cr_assert_geq(th_now() - t0, 0.8); /* 1 s, less our reading delay */
    char want[256];
    snprintf(want, sizeof(want),
             "line_client: 127.0.0.1:%s: inactivity timeout, nothing sent or "
             "received for 1 s (ETIMEDOUT: %s)\n",
             port, em_strerror(-ETIMEDOUT));
    cr_assert_str_eq(err, want);
    close(srv);
    listener_close(&l);
}

Test(example_line_client, overlong_server_line_exits_3,
     .timeout = TH_TIMEOUT(20))
{
    signal(SIGPIPE, SIG_IGN);
    listener l;
    listen_on(&l, 8);
    char port[16];
    snprintf(port, sizeof(port), "%d", l.port);
    ex_child c;
    start_client(&c, (const char *[]){"127.0.0.1", port, NULL});
    int srv = accept_client(&l);
    size_t len = 64 * 1024 + 1; /* MAX_LINE + 1, no newline */
    char *big = malloc(len);
    memset(big, 'o', len);
    /* The client may close before it all went: a reset is fine. */
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(srv, big + off, len - off, MSG_NOSIGNAL);
        if (n < 0)
            break;
        off += (size_t)n;
    }
    char err[1024];
    cr_assert_eq(finish(&c, err, sizeof(err)), 3, "stderr: %s", err);
    cr_assert_not_null(strstr(err, "sent a line longer than 65536 bytes "
                                   "(EMSGSIZE"),
                       "stderr: %s", err);
    free(big);
    close(srv);
    listener_close(&l);
}

Test(example_line_client, usage_exits_2, .timeout = TH_TIMEOUT(10))
{
    const char *const bad[][5] = {
        {NULL},
        {"127.0.0.1", NULL},
        {"-c", "x", "127.0.0.1", "80", NULL},
        {"-c", "-1", "127.0.0.1", "80", NULL},
        {"-z", "1", "127.0.0.1", "80", NULL},
        {"127.0.0.1", "0", NULL},
        {"127.0.0.1", "65536", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ex_child c;
        start_client(&c, bad[i]);
        char err[1024];
        cr_assert_eq(finish(&c, err, sizeof(err)), 2, "case %zu", i);
        cr_assert_not_null(strstr(err, "usage: "), "case %zu: %s", i, err);
    }
}
