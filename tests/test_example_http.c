/*
 * test_example_http.c - examples/http_hello and examples/interval run as a
 * user runs them: child processes, spoken to over real sockets and pipes.
 *
 * Covers, for http_hello: one request and keep-alive; pipelining (ten
 * requests in one write, the same bytes one at a time, in random chunks, and
 * a request pair split at every offset); HTTP/1.0 with and without
 * keep-alive (as `ab -k` sends it); Connection: close; bodies skipped (one
 * that looks like a request, a 1 MiB one, Expect: 100-continue); malformed
 * heads (400, 501, 505) and overlong ones (431, with the exact limit
 * accepted) closing cleanly; clients that vanish mid-request, leaving the
 * server's descriptors as they were; a client that pipelines without
 * reading being stopped (bounded memory) and then answered in full. For
 * interval: ticks a second apart, and a clean exit on SIGINT and SIGTERM.
 *
 * The server runs as a child (tests/example_child.h: fork + exec with
 * PR_SET_PDEATHSIG, so a failed or timed-out test never leaves it behind);
 * clients are blocking sockets with
 * 5 s timeouts (th_client_connect), so a missing answer or close fails the
 * test instead of hanging it.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "example_child.h"
#include "helpers.h"

/* ---- child processes (tests/example_child.h) -------------------------- */

/* Starts http_hello on `port` (0: any) and learns the port it printed. */
static void start_http(ex_child *p, int port)
{
    char arg[16];
    snprintf(arg, sizeof(arg), "%d", port);
    ex_start(p, "http_hello", (const char *const[]){arg, NULL}, 0);
    ex_read_port(p);
}

/* Sends signo and expects a clean exit (status 0). */
static void stop(ex_child *p, int signo)
{
    cr_assert_eq(kill(p->pid, signo), 0);
    int status = ex_wait(p, 10.0);
    ex_close(p);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %#x",
              status);
}

/* The program's resident memory in KiB. */
static long program_rss_kib(const ex_child *p)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)p->pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    cr_assert_gt(kib, 0);
    return kib;
}

/* ---- an HTTP client ---------------------------------------------------- */

typedef struct client {
    int fd;
    size_t start, len; /* unread bytes: buf[start .. start + len) */
    char buf[1 << 16];
} client;

typedef struct response {
    int status;
    size_t length;       /* Content-Length */
    char connection[32]; /* the Connection header, "" when absent */
    char type[32];       /* Content-Type */
    int has_date;
    char body[64];
} response;

static void connect_client(client *c, int port)
{
    c->fd = th_client_connect(port);
    c->start = c->len = 0;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void send_str(client *c, const char *s)
{
    th_send_all(c->fd, s, strlen(s));
}

/* Reads more into c->buf; returns the bytes read, 0 at EOF. */
static size_t fill(client *c)
{
    if (c->start + c->len == sizeof(c->buf)) {
        memmove(c->buf, c->buf + c->start, c->len);
        c->start = 0;
    }
    cr_assert_lt(c->len, sizeof(c->buf), "client buffer full");
    char *at = c->buf + c->start + c->len;
    ssize_t n = recv(c->fd, at, sizeof(c->buf) - c->start - c->len, 0);
    cr_assert_geq(n, 0, "recv: %s (no answer, or the server reset)",
                  strerror(errno));
    c->len += (size_t)n;
    return (size_t)n;
}

static void consume(client *c, size_t n)
{
    c->start += n;
    c->len -= n;
    if (c->len == 0)
        c->start = 0;
}

/* Copies header `name`'s value from a head (NUL-terminated) into out. */
static int header(const char *head, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);
    for (const char *l = strstr(head, "\r\n"); l; l = strstr(l, "\r\n")) {
        l += 2;
        if (strncasecmp(l, name, nlen) == 0 && l[nlen] == ':') {
            const char *v = l + nlen + 1;
            while (*v == ' ')
                v++;
            size_t n = strcspn(v, "\r");
            cr_assert_lt(n, size);
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
    }
    out[0] = '\0';
    return 0;
}

/* Reads one whole response; `head_request`: it has no body. */
static void get_response(client *c, response *r, int head_request)
{
    char *end;
    while (!(end = memmem(c->buf + c->start, c->len, "\r\n\r\n", 4)))
        cr_assert_gt(fill(c), 0, "EOF before a whole response head");
    size_t head_len = (size_t)(end - (c->buf + c->start)) + 4;
    char head[2048];
    cr_assert_lt(head_len, sizeof(head));
    memcpy(head, c->buf + c->start, head_len);
    head[head_len] = '\0';
    memset(r, 0, sizeof(*r));
    cr_assert_eq(sscanf(head, "HTTP/1.1 %d ", &r->status), 1,
                 "bad status line: %s", head);
    char value[64];
    if (header(head, "Content-Length", value, sizeof(value)))
        r->length = strtoul(value, NULL, 10);
    header(head, "Connection", r->connection, sizeof(r->connection));
    header(head, "Content-Type", r->type, sizeof(r->type));
    r->has_date = header(head, "Date", value, sizeof(value));
    consume(c, head_len);
    if (head_request || r->status / 100 == 1)
        return;
    cr_assert_lt(r->length, sizeof(r->body));
    while (c->len < r->length)
        cr_assert_gt(fill(c), 0, "EOF inside a response body");
    memcpy(r->body, c->buf + c->start, r->length);
    consume(c, r->length);
}

/* Expects "Hello, World!" with the given Connection header ("" none). */
static void expect_hello(client *c, int head_request, const char *connection)
{
    response r;
    get_response(c, &r, head_request);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.length, 13);
    cr_assert_str_eq(r.type, "text/plain");
    cr_assert(r.has_date, "no Date header");
    cr_assert_str_eq(r.connection, connection);
    if (!head_request)
        cr_assert_str_eq(r.body, "Hello, World!");
}

/* Expects an error response with `status`, then the close. */
static void expect_error_and_close(client *c, int status)
{
    response r;
    get_response(c, &r, 0);
    cr_assert_eq(r.status, status, "got %d, want %d", r.status, status);
    cr_assert_str_eq(r.connection, "close");
}

/* Expects an orderly close (FIN, not RST) with nothing more to read. */
static void expect_eof(client *c)
{
    cr_assert_eq(c->len, 0, "%zu unexpected bytes", c->len);
    cr_assert_eq(fill(c), 0, "more bytes instead of the close");
}

static void close_client(client *c)
{
    close(c->fd);
    c->fd = -1;
}

#define GET11 "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

/* ---- http_hello ------------------------------------------------------ */

Test(example_http, one_request_then_keep_alive, .timeout = TH_TIMEOUT(20))
{
    ex_child p;
    int port = th_free_port();
    start_http(&p, port);
    cr_assert_eq(p.port, port, "listens on %d, asked for %d", p.port, port);
    static client c;
    connect_client(&c, p.port);
    send_str(&c, GET11);
    expect_hello(&c, 0, "");
    /* Many more on the same connection, one at a time. */
    for (int i = 0; i < 50; i++) {
        send_str(&c, i % 2 ? "HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n"
                           : "GET /index.html?q=1 HTTP/1.1\r\n"
                             "Host: h\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n");
        expect_hello(&c, i % 2, "");
    }
    send_str(&c, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    expect_hello(&c, 0, "close");
    expect_eof(&c);
    close_client(&c);
    stop(&p, SIGTERM);
}

/* Ten requests of every kind the server distinguishes; the last closes. */
static const char *const ten[] = {
    GET11,
    "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /a/b HTTP/1.1\r\nhost: b\r\nX-Empty:\r\nX-Long: "
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r"
    "\n",
    "POST /form HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "\r\nGET / HTTP/1.1\r\n\r\n", /* a stray CRLF before a request */
    "PUT /x HTTP/1.1\r\ncontent-length:  3 \r\nConnection: "
    "keep-alive\r\n\r\nabc",
    "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    "GET / HTTP/1.1\nHost: bare-lf\n\n",
    "HEAD / HTTP/1.0\r\nconnection: foo, keep-alive\r\n\r\n",
    "GET /last HTTP/1.1\r\nConnection: TE, close\r\n\r\n",
};
static const int ten_head[10] = {0, 1, 0, 0, 0, 0, 0, 0, 1, 0};
static const char *const ten_conn[10] = {
    "", "", "", "", "", "", "keep-alive", "", "keep-alive", "close"};

static size_t ten_bytes(char *out)
{
    size_t n = 0;
    for (int i = 0; i < 10; i++) {
        memcpy(out + n, ten[i], strlen(ten[i]));
        n += strlen(ten[i]);
    }
    return n;
}

static void expect_ten(client *c)
{
    for (int i = 0; i < 10; i++)
        expect_hello(c, ten_head[i], ten_conn[i]);
    expect_eof(c);
}

/* Sends data in pieces of at most `max` bytes (random when rnd), pausing
 * after each so that the server reads it as a chunk of its own. */
static void send_chunked(client *c, const char *data, size_t len, size_t max,
                         unsigned *rnd)
{
    size_t off = 0;
    while (off < len) {
        size_t n = rnd ? 1 + (size_t)rand_r(rnd) % max : max;
        if (n > len - off)
            n = len - off;
        th_send_all(c->fd, data + off, n);
        off += n;
        th_sleep_ms(1);
    }
}

Test(example_http, pipelined_in_one_write, .timeout = TH_TIMEOUT(20))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    char all[2048];
    size_t len = ten_bytes(all);
    connect_client(&c, p.port);
    th_send_all(c.fd, all, len);
    expect_ten(&c);
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, pipelined_byte_by_byte, .timeout = TH_TIMEOUT(30))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    char all[2048];
    size_t len = ten_bytes(all);
    connect_client(&c, p.port);
    send_chunked(&c, all, len, 1, NULL);
    expect_ten(&c);
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, pipelined_random_chunks, .timeout = TH_TIMEOUT(30))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    char all[2048];
    size_t len = ten_bytes(all);
    for (unsigned seed = 1; seed <= 8; seed++) {
        unsigned rnd = seed;
        connect_client(&c, p.port);
        send_chunked(&c, all, len, 1 + seed * 7, &rnd);
        expect_ten(&c);
        close_client(&c);
    }
    stop(&p, SIGTERM);
}

Test(example_http, split_at_every_offset, .timeout = TH_TIMEOUT(30))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    static const char pair[] =
        "POST /p HTTP/1.1\r\nContent-Length: 4\r\nConnection: keep-alive\r\n"
        "\r\nbodyHEAD / HTTP/1.1\r\n\r\n";
    size_t len = sizeof(pair) - 1;
    connect_client(&c, p.port);
    for (size_t k = 1; k < len; k++) {
        th_send_all(c.fd, pair, k);
        th_sleep_ms(2);
        th_send_all(c.fd, pair + k, len - k);
        expect_hello(&c, 0, "");
        expect_hello(&c, 1, "");
    }
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, http10_without_and_with_keep_alive,
     .timeout = TH_TIMEOUT(20))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    /* HTTP/1.0 closes after the response by default. */
    connect_client(&c, p.port);
    send_str(&c, "GET / HTTP/1.0\r\n\r\n");
    expect_hello(&c, 0, "close");
    expect_eof(&c);
    close_client(&c);
    /* What ab -k sends: kept open, and told so. */
    static const char ab[] =
        "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n"
        "Host: 127.0.0.1\r\nUser-Agent: ApacheBench/2.3\r\n"
        "Accept: */*\r\n\r\n";
    connect_client(&c, p.port);
    for (int i = 0; i < 5; i++) {
        send_str(&c, ab);
        expect_hello(&c, 0, "keep-alive");
    }
    /* keep-alive and close together: close wins. */
    send_str(&c, "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
    expect_hello(&c, 0, "close");
    expect_eof(&c);
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, connection_close, .timeout = TH_TIMEOUT(20))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    connect_client(&c, p.port);
    send_str(&c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    expect_hello(&c, 0, "close");
    expect_eof(&c);
    close_client(&c);
    /* Requests after the one that asked to close are not answered. */
    connect_client(&c, p.port);
    send_str(&c, "GET / HTTP/1.1\r\nCONNECTION: Close\r\n\r\n" GET11 GET11);
    expect_hello(&c, 0, "close");
    expect_eof(&c);
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, bodies_are_skipped, .timeout = TH_TIMEOUT(20))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    connect_client(&c, p.port);
    /* A body that reads like two requests is not parsed as requests. */
    static const char fake[] = GET11 GET11;
    char req[256];
    snprintf(req, sizeof(req),
             "POST / HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s" GET11,
             sizeof(fake) - 1, fake);
    send_str(&c, req);
    expect_hello(&c, 0, "");
    expect_hello(&c, 0, "");
    /* A 1 MiB body, written in 64 KiB pieces while nothing is read. */
    size_t big = 1 << 20;
    char *body = malloc(big);
    memset(body, 'x', big);
    send_str(&c, "PUT /big HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n");
    th_send_all(c.fd, body, big);
    free(body);
    expect_hello(&c, 0, "");
    /* Expect: 100-continue gets the interim answer before the body. */
    send_str(&c, "POST / HTTP/1.1\r\nExpect: 100-continue\r\n"
                 "Content-Length: 3\r\n\r\n");
    response r;
    get_response(&c, &r, 0);
    cr_assert_eq(r.status, 100);
    send_str(&c, "abc");
    expect_hello(&c, 0, "");
    /* Content-Length: 0 is no body. */
    send_str(&c, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n" GET11);
    expect_hello(&c, 0, "");
    expect_hello(&c, 0, "");
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, malformed_heads_get_an_error_and_a_close,
     .timeout = TH_TIMEOUT(30))
{
    static const struct {
        const char *request;
        int status;
    } bad[] = {
        {"GARBAGE\r\n\r\n", 400},
        {" GET / HTTP/1.1\r\n\r\n", 400},
        {"GET  / HTTP/1.1\r\n\r\n", 400},
        {"GET / FTP/1.1\r\n\r\n", 400},
        {"GET / HTTP/1.1x\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\r\n\r\n", 400},
        {"GET /\x01 HTTP/1.1\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nNo Colon\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nName : v\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\n: v\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
         400},
        {"GET / HTTP/2.0\r\n\r\n", 505},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
    };
    ex_child p;
    start_http(&p, 0);
    static client c;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        connect_client(&c, p.port);
        /* A good request first: its answer leaves before the error. */
        send_str(&c, GET11);
        send_str(&c, bad[i].request);
        expect_hello(&c, 0, "");
        expect_error_and_close(&c, bad[i].status);
        expect_eof(&c);
        close_client(&c);
    }
    stop(&p, SIGTERM);
}

/* A request whose head is exactly `size` bytes. */
static size_t head_of_size(char *out, size_t size)
{
    static const char start[] = "GET / HTTP/1.1\r\nX-Pad: ";
    size_t fixed = sizeof(start) - 1 + 4; /* + "\r\n\r\n" */
    cr_assert_gt(size, fixed);
    memcpy(out, start, sizeof(start) - 1);
    memset(out + sizeof(start) - 1, 'p', size - fixed);
    memcpy(out + size - 4, "\r\n\r\n", 4);
    return size;
}

Test(example_http, overlong_heads_get_431_and_a_close,
     .timeout = TH_TIMEOUT(20))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    static char req[32768];
    /* The limit is 8192 bytes of head: exactly that is fine. */
    connect_client(&c, p.port);
    th_send_all(c.fd, req, head_of_size(req, 8192));
    expect_hello(&c, 0, "");
    /* One more byte is not, whatever the chunking. */
    th_send_all(c.fd, req, head_of_size(req, 8193));
    expect_error_and_close(&c, 431);
    expect_eof(&c);
    close_client(&c);
    /* A header line that never ends. */
    connect_client(&c, p.port);
    memset(req, 'a', sizeof(req));
    memcpy(req, "GET / HTTP/1.1\r\nX-Forever: ", 27);
    th_send_all(c.fd, req, 20000);
    expect_error_and_close(&c, 431);
    expect_eof(&c);
    close_client(&c);
    /* Empty lines count too: they cannot keep a connection busy forever. */
    connect_client(&c, p.port);
    for (int i = 0; i < 4200; i++)
        memcpy(req + 2 * i, "\r\n", 2);
    th_send_all(c.fd, req, 8400);
    expect_error_and_close(&c, 431);
    expect_eof(&c);
    close_client(&c);
    stop(&p, SIGTERM);
}

Test(example_http, clients_that_vanish, .timeout = TH_TIMEOUT(30))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    /* A first connection, so that every lazily made descriptor exists. */
    connect_client(&c, p.port);
    send_str(&c, GET11);
    expect_hello(&c, 0, "");
    close_client(&c);
    th_sleep_ms(100);
    int fds_before = ex_count_child_fds(&p);
    int my_fds = th_count_fds();

    static const char *const partial[] = {
        "GE",
        "GET / HTTP/1.1\r\nHo",
        "GET / HTTP/1.1\r\nHost: x\r\n\r",
        "POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part",
        /* Whole requests, answers never read. */
        GET11 GET11 GET11 GET11,
    };
    for (int reset = 0; reset < 2; reset++) {
        for (size_t i = 0; i < sizeof(partial) / sizeof(partial[0]); i++) {
            connect_client(&c, p.port);
            send_str(&c, partial[i]);
            th_sleep_ms(5);
            if (reset) { /* RST instead of FIN */
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            }
            close_client(&c);
        }
    }
    /* The server still answers, and has closed every one of them. */
    connect_client(&c, p.port);
    send_str(&c, GET11);
    expect_hello(&c, 0, "");
    close_client(&c);
    double deadline = th_now() + TH_TIMEOUT(5);
    int fds_after;
    while ((fds_after = ex_count_child_fds(&p)) != fds_before &&
           th_now() < deadline)
        th_sleep_ms(20);
    cr_assert_eq(fds_after, fds_before, "server fds: %d before, %d after",
                 fds_before, fds_after);
    cr_assert_eq(th_count_fds(), my_fds);
    stop(&p, SIGTERM);
}

Test(example_http, reader_that_never_reads_is_bounded,
     .timeout = TH_TIMEOUT(60))
{
    ex_child p;
    start_http(&p, 0);
    static client c;
    /* Small client buffers: the server's queue fills sooner. */
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    c.start = c.len = 0;
    int small = 128 * 1024;
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(c.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    struct timeval tv = {.tv_sec = TH_TIMEOUT(TH_SOCKET_TIMEOUT)};
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)p.port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(c.fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    long rss_before = program_rss_kib(&p);
    /* Pipelines until the server stops reading (sends block for 300 ms),
     * at most 64 MiB of requests: seven times that in answers. */
    static char reqs[64 * 1024];
    size_t one = strlen(GET11), per = sizeof(reqs) / one;
    for (size_t i = 0; i < per; i++)
        memcpy(reqs + i * one, GET11, one);
    int fl = fcntl(c.fd, F_GETFL);
    fcntl(c.fd, F_SETFL, fl | O_NONBLOCK);
    size_t sent = 0, limit = (size_t)64 << 20;
    double blocked_since = 0;
    while (sent < limit) {
        size_t off = sent % (per * one);
        ssize_t n = send(c.fd, reqs + off, per * one - off, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            blocked_since = 0;
            continue;
        }
        cr_assert(errno == EAGAIN, "send: %s", strerror(errno));
        if (blocked_since == 0)
            blocked_since = th_now();
        else if (th_now() - blocked_since > 0.3)
            break;
        th_sleep_ms(5);
    }
    cr_assert_lt(sent, limit, "the server never stopped reading");
    long rss_paused = program_rss_kib(&p);
    cr_assert_lt(rss_paused - rss_before, 16 * 1024, "server grew by %ld KiB",
                 rss_paused - rss_before);
    fcntl(c.fd, F_SETFL, fl);
    /* Then every request sent whole is answered, in full (reading them
     * lets the server read again), and so is the one cut short. */
    size_t whole = sent / one, partial = sent % one;
    for (size_t i = 0; i < whole; i++)
        expect_hello(&c, 0, "");
    if (partial) {
        th_send_all(c.fd, GET11 + partial, one - partial);
        expect_hello(&c, 0, "");
    }
    send_str(&c, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    expect_hello(&c, 0, "close");
    expect_eof(&c);
    close_client(&c);
    cr_log_info("pipelined %zu requests (%zu bytes) before the server "
                "stopped reading; it grew by %ld KiB",
                whole, sent, rss_paused - rss_before);
    stop(&p, SIGTERM);
}

/* ---- interval -------------------------------------------------------- */

/* Three ticks, then signo. Timers never fire early, so three ticks take
 * at least 3 s from the start; a loaded machine may make them late, and
 * lines that waited in the pipe arrive together, so only the total has an
 * upper bound, a generous one. */
static void ticks_then_stop(int signo)
{
    ex_child p;
    double start = th_now();
    ex_start(&p, "interval", NULL, 0);
    ex_reader r;
    ex_reader_init(&r, p.out);
    char line[64];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(ex_next_line(&r, line, sizeof(line), 10), 4,
                     "tick %d missing", i + 1);
        cr_assert_str_eq(line, "tick");
    }
    double took = th_now() - start;
    cr_assert(took > 2.9 && took < 3.0 + 5.0 * TH_TIMEOUT(1),
              "three ticks took %.3f s", took);
    stop(&p, signo);
}

Test(example_interval, ticks_and_stops_on_sigint, .timeout = TH_TIMEOUT(30))
{
    ticks_then_stop(SIGINT);
}

Test(example_interval, ticks_and_stops_on_sigterm, .timeout = TH_TIMEOUT(30))
{
    ticks_then_stop(SIGTERM);
}
