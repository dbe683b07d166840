/*
 * test_tls_chaos.c - hostile and heavy peers against libem's TLS server and
 * client: "one unbind with the right reason, no crash, no hang, no leak".
 *
 * Covers:
 *   - plain HTTP instead of a ClientHello: -EPROTO ("http request"), and
 *     the same server then serves a real TLS client;
 *   - seeded garbage of many sizes (noise that is not a record, records
 *     that carry no ClientHello, application data before the handshake):
 *     -EPROTO as soon as a record header (5 bytes) is there, -ECONNABORTED
 *     for fewer bytes then FIN; a record length beyond the limit: -EPROTO;
 *   - a real ClientHello (captured from a libem client by a raw listener)
 *     cut short then FIN: -ECONNABORTED; a header announcing 16 KiB then
 *     FIN: -ECONNABORTED; a whole ClientHello then RST (SO_LINGER 0),
 *     before and after the server answered: -ECONNRESET;
 *   - inactivity: a client that sends nothing ends in -ETIMEDOUT; a
 *     ClientHello trickling in one byte per 50 ms (through a relay to a
 *     real libem client) keeps a 0.3 s timeout from firing and the
 *     handshake completes; a stall mid-ClientHello times out 0.3 s after
 *     the last byte; a server that accepts and never answers ends a libem
 *     client's handshake in -ETIMEDOUT;
 *   - 1,000 concurrent TLS echo round trips on one loop (100 under
 *     valgrind): every message intact, every unbind 0, no connection left;
 *   - 10,000 sequential handshakes, 50 in flight (500 under valgrind):
 *     heap in use (mallinfo2) grows less than 1 MiB after the first 1,000,
 *     descriptors and connections back to the start;
 *   - renegotiation: a TLS 1.2 client that forces SSL_renegotiate (white
 *     box) gets no second handshake from the server, nor a server from the
 *     client; a TLS 1.3 KeyUpdate is not a renegotiation and works.
 *
 * Every random choice comes from a fixed seed (EM_TLS_CHAOS_SEED=<n>
 * overrides it), printed in every failure message.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "em.h"
#include "helpers.h"
#include "internal.h"
#include "tls.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
/* The inactivity timeout of the timeout tests, and the gap between the
 * bytes of a trickled ClientHello: 0.3 s and 50 ms, stretched under
 * valgrind, where a peer's certificate checks alone can outlast 0.3 s. */
#define IDLE (0.3 * TH_TIMEOUT_SCALE)
#define GAP (IDLE / 6)

/* ---- seed ---------------------------------------------------------------- */

static uint64_t g_seed = 0x7115c4a05ull;

#define CHK(cond, fmt, ...)                                                    \
    cr_assert((cond), "[EM_TLS_CHAOS_SEED=%#" PRIx64 "] " fmt, g_seed,         \
              ##__VA_ARGS__)

static void seed_init(void)
{
    const char *env = getenv("EM_TLS_CHAOS_SEED");
    if (env && *env)
        g_seed = strtoull(env, NULL, 0);
}

/* xorshift64* over a state that must not be 0. */
static uint64_t next_rand(uint64_t *s)
{
    if (*s == 0)
        *s = 0x9e3779b97f4a7c15ull;
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void fill_random(uint64_t *s, uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(next_rand(s) >> 56);
}

/* ---- certificate paths --------------------------------------------------- */

/* Copies of the paths: th_cert's static slots are reused by later calls,
 * and these servers start TLS on many connections. */
static struct {
    char cert[512];
    char key[512];
    char ca[512];
} P;

static void paths_init(void)
{
    snprintf(P.cert, sizeof(P.cert), "%s", th_cert("server.pem"));
    snprintf(P.key, sizeof(P.key), "%s", th_cert("server.key"));
    snprintf(P.ca, sizeof(P.ca), "%s", th_cert("ca.pem"));
}

static void server_opts(em_tls_options *o)
{
    memset(o, 0, sizeof(*o));
    o->cert_chain_file = P.cert;
    o->private_key_file = P.key;
}

static void client_opts(em_tls_options *o)
{
    memset(o, 0, sizeof(*o));
    o->ca_file = P.ca;
}

/* ---- a TLS server that records everything -------------------------------- */

typedef struct gate {
    em_tls_options opts;
    double idle; /* inactivity timeout set in post_init; 0 = none */
    int echo;
    int accepted;
    int handshakes;
    int unbinds;
    int bad_reasons; /* unbinds with a nonzero reason */
    int start_errs;
    int reason; /* the latest unbind's */
    char error[256];
    double accepted_at;
    double unbind_at;
    em_conn *conn; /* the latest connection, NULL after its unbind */
} gate;

static void gate_post_init(em_conn *conn, void *arg)
{
    gate *g = arg;
    g->accepted++;
    g->accepted_at = th_now();
    g->conn = conn;
    if (g->idle > 0)
        CHK(em_set_comm_inactivity_timeout(conn, g->idle) == 0, "idle");
    int rc = em_start_tls(conn, &g->opts);
    if (rc < 0) {
        g->start_errs++;
        em_close_connection(conn, 0);
    }
}

static void gate_handshake(em_conn *conn)
{
    gate *g = em_conn_arg(conn);
    g->handshakes++;
}

static void gate_receive(em_conn *conn, const char *data, size_t len)
{
    gate *g = em_conn_arg(conn);
    if (g->echo)
        CHK(em_send_data(conn, data, len) == 0, "echo");
}

static void gate_unbind(em_conn *conn, int reason)
{
    gate *g = em_conn_arg(conn);
    g->unbinds++;
    g->reason = reason;
    g->bad_reasons += reason != 0;
    g->unbind_at = th_now();
    snprintf(g->error, sizeof(g->error), "%s", em_tls_error(conn));
    if (g->conn == conn)
        g->conn = NULL;
}

static const em_handler gate_handler = {
    .post_init = gate_post_init,
    .ssl_handshake_completed = gate_handshake,
    .receive_data = gate_receive,
    .unbind = gate_unbind,
};

static em_server *gate_start(em_loop *loop, gate *g)
{
    server_opts(&g->opts);
    return th_start_server(loop, &gate_handler, g);
}

/* ---- raw sockets --------------------------------------------------------- */

/* A non-blocking listener on 127.0.0.1, any port. */
static int raw_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHK(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    CHK(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "bind");
    CHK(listen(fd, 64) == 0, "listen");
    CHK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0, "getsockname");
    *port = ntohs(sin.sin_port);
    return fd;
}

/* Accepts one connection (non-blocking) while turning the loop. */
static int raw_accept(em_loop *loop, int lfd)
{
    double deadline = th_now() + TH_TIMEOUT(5);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0)
            return fd;
        CHK(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR,
            "accept: %s", strerror(errno));
        CHK(th_now() < deadline, "nothing to accept");
        CHK(em_run_once(loop, 5) >= 0, "em_run_once");
    }
}

/* Sends what it can without blocking while turning the loop, until all is
 * sent or the socket fails (the server closed on us). Returns the bytes
 * sent; *err gets the errno that stopped it, or 0. */
static size_t pump_send(em_loop *loop, int fd, const void *data, size_t len,
                        int *err)
{
    const uint8_t *p = data;
    size_t off = 0;
    double deadline = th_now() + TH_TIMEOUT(10);
    *err = 0;
    while (off < len) {
        ssize_t n = send(fd, p + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
            errno != EINTR) {
            *err = errno;
            break;
        }
        CHK(th_now() < deadline, "sent %zu of %zu", off, len);
        CHK(em_run_once(loop, 5) >= 0, "em_run_once");
    }
    return off;
}

/* Closes fd with an RST instead of a FIN. */
static void close_rst(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    CHK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0,
        "SO_LINGER: %s", strerror(errno));
    close(fd);
}

/* Reads whatever is there without blocking; returns the byte count. */
static size_t drain(int fd)
{
    char sink[4096];
    size_t total = 0;
    ssize_t n;
    while ((n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
        total += (size_t)n;
    return total;
}

/* ---- a real ClientHello -------------------------------------------------- */

static uint8_t g_hello[4096];
static size_t g_hello_len;

/* A libem TLS client connects to a raw listener; its first flight (one
 * handshake record) is kept in g_hello. */
static void capture_client_hello(void)
{
    em_loop *loop = th_loop();
    int port;
    int lfd = raw_listener(&port);
    th_tls client = TH_TLS_INIT;
    client_opts(&client.opts);
    em_conn *c = NULL;
    CHK(em_connect(loop, "localhost", port, &th_tls_handler, &client, &c) == 0,
        "em_connect");
    int fd = raw_accept(loop, lfd);
    size_t want = 5;
    double deadline = th_now() + TH_TIMEOUT(5);
    g_hello_len = 0;
    while (g_hello_len < want) {
        ssize_t n = recv(fd, g_hello + g_hello_len, want - g_hello_len, 0);
        if (n > 0) {
            g_hello_len += (size_t)n;
            if (g_hello_len == 5) {
                CHK(g_hello[0] == 0x16, "a handshake record: %#x", g_hello[0]);
                want = 5 + ((size_t)g_hello[3] << 8 | g_hello[4]);
                CHK(want <= sizeof(g_hello), "ClientHello of %zu bytes", want);
            }
            continue;
        }
        CHK(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "recv: %s",
            n == 0 ? "EOF" : strerror(errno));
        CHK(th_now() < deadline, "ClientHello: %zu of %zu", g_hello_len, want);
        CHK(em_run_once(loop, 5) >= 0, "em_run_once");
    }
    CHK(g_hello[5] == 1, "handshake type %u, not ClientHello", g_hello[5]);
    CHK(drain(fd) == 0, "one record in the first flight");
    close(fd); /* FIN: everything it sent was read */
    close(lfd);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    CHK(client.reason == -ECONNABORTED, "capture client: %s (%s)",
        em_err_name(client.reason), client.error);
    th_free_loop(loop);
    th_tls_reset(&client);
}

/* ---- one raw connection's fate ------------------------------------------- */

/* Runs until the gate has seen `n` unbinds, then a little longer to show
 * there is no second one. */
static void expect_unbinds(em_loop *loop, gate *g, int n)
{
    th_run_until_count(loop, &g->unbinds, n, 5);
    th_run_for(loop, 0.02);
    CHK(g->unbinds == n, "%d unbinds, expected %d", g->unbinds, n);
    CHK(g->accepted == n, "%d accepted, expected %d", g->accepted, n);
}

/* A raw client sends data; with fin, then closes (FIN). Returns the
 * server's unbind reason for that connection. */
static int raw_session(em_loop *loop, int port, gate *g, const void *data,
                       size_t len, int fin)
{
    int before = g->unbinds;
    int fd = th_client_connect(port);
    int err;
    pump_send(loop, fd, data, len, &err);
    CHK(err == 0 || err == EPIPE || err == ECONNRESET, "send: %s",
        strerror(err));
    if (fin) {
        drain(fd); /* nothing unread: close sends a FIN, not an RST */
        close(fd);
        expect_unbinds(loop, g, before + 1);
    } else {
        expect_unbinds(loop, g, before + 1);
        close(fd);
    }
    CHK(g->handshakes == 0, "a handshake with garbage");
    CHK(g->reason != 0, "a clean unbind after garbage");
    CHK(g->error[0] != '\0', "no em_tls_error for %s", em_err_name(g->reason));
    return g->reason;
}

/* ---- plain HTTP ---------------------------------------------------------- */

Test(tls_chaos, http_request_then_a_real_client, .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    gate g = {.echo = 1};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);

    int fd = th_client_connect(port);
    th_send_all(fd, "GET / HTTP/1.0\r\n\r\n", 18);
    expect_unbinds(loop, &g, 1);
    CHK(g.reason == -EPROTO, "%s (%s)", em_err_name(g.reason), g.error);
    CHK(g.error[0] != '\0', "em_tls_error empty");
    CHK(strcasestr(g.error, "http request") != NULL, "%s", g.error);
    /* the server read the whole request: its close is a FIN */
    CHK(th_pump_eof(loop, fd, 5) == 0, "EOF on the raw client");
    close(fd);

    th_tls client = TH_TLS_INIT;
    client_opts(&client.opts);
    client.hello = "still serving";
    em_conn *c = NULL;
    CHK(em_connect(loop, "localhost", port, &th_tls_handler, &client, &c) == 0,
        "em_connect");
    th_run_until_size(loop, &client.got_len, strlen(client.hello), 5);
    CHK(strcmp((char *)client.got, client.hello) == 0, "echo");
    em_close_connection(client.conn, 0);
    expect_unbinds(loop, &g, 2);
    CHK(g.reason == 0, "close_notify: %s", g.error);
    CHK(g.handshakes == 1, "one handshake");
    th_run_until_count(loop, &client.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
    th_tls_reset(&client);
}

/* ---- garbage ------------------------------------------------------------- */

enum junk_kind {
    NOISE,     /* random; byte 1 is never 3, so no TLS record header */
    HS_RECORD, /* a handshake record whose message is not a ClientHello */
    APP_DATA,  /* an application-data record before any handshake */
};

typedef struct junk {
    enum junk_kind kind;
    size_t len;
} junk;

/* Fills buf with garbage of the given kind (see junk_kind). */
static void make_junk(uint64_t *rng, const junk *j, uint8_t *buf)
{
    fill_random(rng, buf, j->len);
    if (j->kind == NOISE) {
        buf[0] &= 0x7f; /* not an SSLv2-style header */
        if (j->len > 1 && buf[1] == 3)
            buf[1] = 0x33;
        return;
    }
    size_t body = j->len - 5;
    buf[0] = j->kind == HS_RECORD ? 0x16 : 0x17;
    buf[1] = 3;
    buf[2] = 1;
    buf[3] = (uint8_t)(body >> 8);
    buf[4] = (uint8_t)body;
    if (j->kind == HS_RECORD && buf[5] == 1)
        buf[5] = 2; /* ServerHello, never a server's to receive */
}

/* Fewer than 5 bytes are not a record header yet: OpenSSL waits, and the
 * FIN that follows is an EOF mid-handshake (-ECONNABORTED). From 5 bytes
 * on, the header (or the handshake message header behind it) is wrong at
 * once and the server fails with -EPROTO while the client still holds the
 * socket open; bytes still coming then meet a closed socket. */
Test(tls_chaos, seeded_garbage_of_many_sizes, .timeout = TH_TIMEOUT(30))
{
    static const junk cases[] = {
        {NOISE, 1},         {NOISE, 2},        {NOISE, 3},
        {NOISE, 4},         {NOISE, 5},        {NOISE, 6},
        {NOISE, 64},        {NOISE, 517},      {NOISE, 4096},
        {NOISE, 16 * KiB},  {NOISE, 64 * KiB}, {NOISE, 256 * KiB},
        {HS_RECORD, 9},     {HS_RECORD, 100},  {HS_RECORD, 600},
        {HS_RECORD, 16389}, {APP_DATA, 6},     {APP_DATA, 100},
        {APP_DATA, 16389},
    };
    static uint8_t buf[256 * KiB];
    seed_init();
    paths_init();
    uint64_t rng = g_seed;
    em_loop *loop = th_loop();
    gate g = {0};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);
    int fds = th_count_fds();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const junk *j = &cases[i];
        make_junk(&rng, j, buf);
        int short_header = j->len < 5;
        int reason = raw_session(loop, port, &g, buf, j->len, short_header);
        int want = short_header ? -ECONNABORTED : -EPROTO;
        CHK(reason == want, "kind %d, %zu bytes: %s (%s), expected %s", j->kind,
            j->len, em_err_name(reason), g.error, em_err_name(want));
        const char *why = short_header       ? "during the handshake"
                          : j->kind == NOISE ? "wrong version number"
                                             : "unexpected message";
        CHK(strcasestr(g.error, why) != NULL, "kind %d, %zu bytes: \"%s\"",
            j->kind, j->len, g.error);
        CHK(em_connection_count(loop) == 0, "a connection left");
    }
    CHK(g.bad_reasons == (int)(sizeof(cases) / sizeof(cases[0])), "reasons");
    CHK(th_count_fds() == fds, "descriptors: %d, were %d", th_count_fds(), fds);
    th_stop_and_free(loop, srv);
}

/* A record header announcing more than a record may hold is refused at
 * once (-EPROTO); one announcing 16 KiB is legal, so the server waits for
 * the body and the FIN is an EOF mid-handshake (-ECONNABORTED), with or
 * without part of the body. */
Test(tls_chaos, record_header_claiming_16k_then_close,
     .timeout = TH_TIMEOUT(10))
{
    static uint8_t rec[5 + 4096];
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    gate g = {0};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);
    const uint8_t claim_16k[5] = {0x16, 3, 1, 0x40, 0x00};
    CHK(raw_session(loop, port, &g, claim_16k, 5, 1) == -ECONNABORTED,
        "header only: %s (%s)", em_err_name(g.reason), g.error);
    CHK(strcasestr(g.error, "during the handshake") != NULL, "%s", g.error);

    uint64_t rng = g_seed;
    memcpy(rec, claim_16k, 5);
    fill_random(&rng, rec + 5, sizeof(rec) - 5);
    rec[5] = 1; /* a ClientHello ... */
    CHK(raw_session(loop, port, &g, rec, sizeof(rec), 1) == -ECONNABORTED,
        "part of the body: %s (%s)", em_err_name(g.reason), g.error);

    const uint8_t claim_64k[5] = {0x16, 3, 1, 0xff, 0xff};
    CHK(raw_session(loop, port, &g, claim_64k, 5, 0) == -EPROTO,
        "64 KiB record: %s (%s)", em_err_name(g.reason), g.error);
    CHK(strcasestr(g.error, "length") != NULL, "%s", g.error);
    th_stop_and_free(loop, srv);
}

/* A real ClientHello cut anywhere: the server waits for the rest, and the
 * FIN is an EOF mid-handshake (-ECONNABORTED). */
Test(tls_chaos, truncated_client_hello_then_fin, .timeout = TH_TIMEOUT(20))
{
    seed_init();
    paths_init();
    capture_client_hello();
    uint64_t rng = g_seed ^ 0x7c;
    size_t cuts[8] = {1, 4, 5, 6, 9, g_hello_len / 2, g_hello_len - 1, 0};
    cuts[7] = 6 + (size_t)(next_rand(&rng) % (g_hello_len - 7));
    em_loop *loop = th_loop();
    gate g = {0};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);
    for (int i = 0; i < 8; i++) {
        int reason = raw_session(loop, port, &g, g_hello, cuts[i], 1);
        CHK(reason == -ECONNABORTED, "%zu of %zu bytes: %s (%s)", cuts[i],
            g_hello_len, em_err_name(reason), g.error);
    }
    /* the whole ClientHello is a valid start */
    int fd = th_client_connect(port);
    th_send_all(fd, g_hello, g_hello_len);
    th_run_until_count(loop, &g.accepted, 9, 5);
    uint8_t head[5];
    CHK(th_pump_recv(loop, fd, head, 5, 5) == 5, "the server's answer");
    CHK(head[0] == 0x16, "a ServerHello record: %#x", head[0]);
    close_rst(fd);
    expect_unbinds(loop, &g, 9);
    th_stop_and_free(loop, srv);
}

/* A whole ClientHello, then RST. Before the server accepted: the reset
 * socket waits in the backlog and the first read of the handshake fails
 * with ECONNRESET. After the server answered: it waits for the client's
 * Finished and the read fails the same way. Either way -ECONNRESET. */
Test(tls_chaos, client_hello_then_rst, .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    capture_client_hello();
    em_loop *loop = th_loop();
    gate g = {0};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);

    int fd = th_client_connect(port);
    th_send_all(fd, g_hello, g_hello_len);
    close_rst(fd); /* before the loop even accepted it */
    expect_unbinds(loop, &g, 1);
    CHK(g.reason == -ECONNRESET, "reset in the backlog: %s (%s)",
        em_err_name(g.reason), g.error);
    CHK(g.error[0] != '\0', "em_tls_error empty");

    fd = th_client_connect(port);
    th_send_all(fd, g_hello, g_hello_len);
    uint8_t head[5];
    CHK(th_pump_recv(loop, fd, head, 5, 5) == 5, "the server's answer");
    th_run_for(loop, 0.02); /* the whole flight is out */
    CHK(g.unbinds == 1, "the server waits for the client's Finished");
    close_rst(fd);
    expect_unbinds(loop, &g, 2);
    CHK(g.reason == -ECONNRESET, "reset after the answer: %s (%s)",
        em_err_name(g.reason), g.error);
    CHK(g.handshakes == 0, "no handshake");
    th_stop_and_free(loop, srv);
}

/* ---- inactivity ---------------------------------------------------------- */

Test(tls_chaos, silent_client_times_out, .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    gate g = {.idle = IDLE};
    em_server *srv = gate_start(loop, &g);
    int fd = th_client_connect(th_listen_port(srv));
    th_run_until_count(loop, &g.unbinds, 1, 5);
    double waited = g.unbind_at - g.accepted_at;
    CHK(g.reason == -ETIMEDOUT, "%s (%s)", em_err_name(g.reason), g.error);
    CHK(waited >= IDLE - 0.06, "timed out after %.3f s", waited);
    CHK(waited < IDLE + TH_TIMEOUT(1), "timed out after %.3f s", waited);
    CHK(th_pump_eof(loop, fd, 5) == 0, "EOF on the silent client");
    close(fd);
    th_stop_and_free(loop, srv);
}

/* Sends the first `slow` bytes of the ClientHello one per GAP; returns the
 * time of the last one. */
static double trickle(em_loop *loop, int fd, size_t slow)
{
    double last = th_now();
    for (size_t i = 0; i < slow; i++) {
        th_send_all(fd, g_hello + i, 1);
        last = th_now();
        th_run_for(loop, GAP);
    }
    return last;
}

/* The handshake's bytes count as activity: 20 bytes GAP apart span more
 * than three timeout periods without a timeout; then nothing more comes
 * and the timeout fires IDLE after the last byte. */
Test(tls_chaos, stalled_client_hello_times_out_after_the_last_byte,
     .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    capture_client_hello();
    em_loop *loop = th_loop();
    gate g = {.idle = IDLE};
    em_server *srv = gate_start(loop, &g);
    int fd = th_client_connect(th_listen_port(srv));
    th_run_until_count(loop, &g.accepted, 1, 5);
    double start = th_now();
    double last = trickle(loop, fd, 20);
    CHK(g.unbinds == 0, "timed out while bytes kept coming (%.2f s): %s",
        th_now() - start, em_err_name(g.reason));
    CHK(th_now() - start > 3 * IDLE, "the trickle was too short");
    th_run_until_count(loop, &g.unbinds, 1, 5);
    CHK(g.reason == -ETIMEDOUT, "%s (%s)", em_err_name(g.reason), g.error);
    double after = g.unbind_at - last;
    CHK(after >= IDLE - 0.06 && after < IDLE + TH_TIMEOUT(1),
        "timed out %.3f s after the last byte", after);
    close(fd);
    th_stop_and_free(loop, srv);
}

/* A relay between a libem TLS client and the gate: the client's first
 * `slow` bytes go one per GAP, then everything at once; the server's
 * bytes go straight through. */
typedef struct relay {
    int a; /* accepted from the client */
    int b; /* connected to the server */
    uint8_t up[64 * KiB];
    size_t head, tail; /* up[head, tail) waits for the server */
    size_t forwarded;  /* bytes passed on to the server in all */
    size_t slow;
    double next_at;
    double slow_done_at;
} relay;

static void relay_pump(relay *r)
{
    ssize_t n =
        recv(r->a, r->up + r->tail, sizeof(r->up) - r->tail, MSG_DONTWAIT);
    if (n > 0)
        r->tail += (size_t)n;
    size_t pending = r->tail - r->head;
    if (pending && r->forwarded < r->slow) {
        if (th_now() >= r->next_at) {
            th_send_all(r->b, r->up + r->head, 1);
            r->head++;
            r->forwarded++;
            r->next_at = th_now() + GAP;
            if (r->forwarded == r->slow)
                r->slow_done_at = th_now();
        }
    } else if (pending) {
        th_send_all(r->b, r->up + r->head, pending);
        r->head += pending;
        r->forwarded += pending;
    }
    if (r->head == r->tail)
        r->head = r->tail = 0;
    uint8_t down[16 * KiB];
    while ((n = recv(r->b, down, sizeof(down), MSG_DONTWAIT)) > 0)
        th_send_all(r->a, down, (size_t)n);
}

Test(tls_chaos, slow_client_hello_keeps_the_handshake_alive,
     .timeout = TH_TIMEOUT(15))
{
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    gate g = {.idle = IDLE};
    em_server *srv = gate_start(loop, &g);
    int lport;
    int lfd = raw_listener(&lport);
    th_tls client = TH_TLS_INIT;
    client_opts(&client.opts);
    CHK(em_connect(loop, "localhost", lport, &th_tls_handler, &client, NULL) ==
            0,
        "em_connect");
    static relay r;
    memset(&r, 0, sizeof(r));
    r.slow = 20;
    r.a = raw_accept(loop, lfd);
    r.b = th_client_connect(th_listen_port(srv));
    double start = th_now();
    double deadline = start + TH_TIMEOUT(10);
    while (!(g.handshakes && client.handshakes)) {
        CHK(th_now() < deadline, "no handshake (sent %zu)", r.forwarded);
        CHK(g.unbinds == 0, "the server gave up after %.2f s: %s (%s)",
            th_now() - start, em_err_name(g.reason), g.error);
        CHK(client.unbinds == 0, "client: %s", client.error);
        relay_pump(&r);
        CHK(em_run_once(loop, 5) >= 0, "em_run_once");
    }
    CHK(r.slow_done_at - start > 3 * IDLE,
        "the slow part took %.2f s, not over 3 timeouts",
        r.slow_done_at - start);
    em_close_connection(client.conn, 0);
    em_close_connection(g.conn, 0);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    th_run_until_count(loop, &g.unbinds, 1, 5);
    CHK(g.reason == 0 && client.reason == 0, "local closes");
    close(r.a);
    close(r.b);
    close(lfd);
    th_stop_and_free(loop, srv);
    th_tls_reset(&client);
}

/* The client sets its own inactivity timeout before starting TLS. */
static void idle_client_post_init(em_conn *conn, void *arg)
{
    CHK(em_set_comm_inactivity_timeout(conn, IDLE) == 0, "idle");
    th_tls_handler.post_init(conn, arg);
}

Test(tls_chaos, server_that_never_answers_times_the_client_out,
     .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    em_handler h = th_tls_handler;
    h.post_init = idle_client_post_init;
    em_loop *loop = th_loop();
    int port;
    int lfd = raw_listener(&port);
    th_tls client = TH_TLS_INIT;
    client_opts(&client.opts);
    CHK(em_connect(loop, "localhost", port, &h, &client, NULL) == 0,
        "em_connect");
    int fd = raw_accept(loop, lfd);
    double start = th_now();
    th_run_until_count(loop, &client.unbinds, 1, 5);
    double waited = th_now() - start;
    CHK(client.reason == -ETIMEDOUT, "%s (%s)", em_err_name(client.reason),
        client.error);
    CHK(client.handshakes == 0 && client.completed == 1, "connected, no TLS");
    CHK(waited >= IDLE - 0.06 && waited < IDLE + TH_TIMEOUT(1),
        "timed out after %.3f s", waited);
    uint8_t first;
    CHK(recv(fd, &first, 1, MSG_DONTWAIT) == 1 && first == 0x16,
        "the ClientHello reached the silent server");
    close(fd);
    close(lfd);
    th_free_loop(loop);
    th_tls_reset(&client);
}

/* ---- many connections ---------------------------------------------------- */

typedef struct swarm swarm;

typedef struct peer {
    swarm *sw;
    char msg[48];
    size_t msg_len;
    char got[48];
    size_t got_len;
    int handshakes;
    int unbinds;
    int reason;
    int echoed; /* the whole message came back intact */
} peer;

struct swarm {
    em_tls_options opts[2]; /* [1]: no session resumption */
    peer *peers;
    int started;
    int done; /* client unbinds */
    int echoed;
    int bad; /* overlong or wrong echoes, failed starts */
};

static void peer_post_init(em_conn *conn, void *arg)
{
    peer *p = arg;
    size_t i = (size_t)(p - p->sw->peers);
    int rc = em_start_tls(conn, &p->sw->opts[i % 2]);
    if (rc < 0) {
        p->sw->bad++;
        em_close_connection(conn, 0);
    }
}

static void peer_handshake(em_conn *conn)
{
    peer *p = em_conn_arg(conn);
    p->handshakes++;
    CHK(em_send_data(conn, p->msg, p->msg_len) == 0, "send");
}

static void peer_receive(em_conn *conn, const char *data, size_t len)
{
    peer *p = em_conn_arg(conn);
    if (p->got_len + len > p->msg_len) {
        p->sw->bad++;
        em_close_connection(conn, 0);
        return;
    }
    memcpy(p->got + p->got_len, data, len);
    p->got_len += len;
    if (p->got_len < p->msg_len)
        return;
    if (memcmp(p->got, p->msg, p->msg_len) == 0) {
        p->echoed = 1;
        p->sw->echoed++;
    } else {
        p->sw->bad++;
    }
    em_close_connection(conn, 1);
}

static void peer_unbind(em_conn *conn, int reason)
{
    peer *p = em_conn_arg(conn);
    p->unbinds++;
    p->reason = reason;
    p->sw->done++;
}

static const em_handler peer_handler = {
    .post_init = peer_post_init,
    .ssl_handshake_completed = peer_handshake,
    .receive_data = peer_receive,
    .unbind = peer_unbind,
};

static void swarm_init(swarm *sw, int n, uint64_t *rng)
{
    memset(sw, 0, sizeof(*sw));
    client_opts(&sw->opts[0]);
    client_opts(&sw->opts[1]);
    sw->opts[1].no_session_resumption = 1;
    sw->peers = calloc((size_t)n, sizeof(peer));
    CHK(sw->peers != NULL, "calloc");
    for (int i = 0; i < n; i++) {
        peer *p = &sw->peers[i];
        p->sw = sw;
        int len = snprintf(p->msg, sizeof(p->msg), "peer %06d %016" PRIx64, i,
                           next_rand(rng));
        p->msg_len = (size_t)len;
    }
}

static void swarm_start(em_loop *loop, swarm *sw, int port)
{
    peer *p = &sw->peers[sw->started++];
    int rc = em_connect(loop, "127.0.0.1", port, &peer_handler, p, NULL);
    CHK(rc == 0, "em_connect %d: %s", sw->started, em_strerror(rc));
}

/* Every peer in [from, to): one handshake, its echo, one clean unbind. */
static void swarm_check(const swarm *sw, int from, int to)
{
    for (int i = from; i < to; i++) {
        const peer *p = &sw->peers[i];
        CHK(p->unbinds == 1, "peer %d: %d unbinds", i, p->unbinds);
        CHK(p->reason == 0, "peer %d: %s", i, em_err_name(p->reason));
        CHK(p->handshakes == 1, "peer %d: no handshake", i);
        CHK(p->echoed, "peer %d: got %zu of %zu bytes", i, p->got_len,
            p->msg_len);
    }
}

Test(tls_chaos, thousand_concurrent_tls_echoes, .timeout = TH_TIMEOUT(120))
{
    const int n = TH_TIMEOUT_SCALE > 1 ? 100 : 1000;
    seed_init();
    paths_init();
    th_raise_nofile(4096);
    uint64_t rng = g_seed ^ 0x1000;
    em_loop *loop = th_loop();
    gate g = {.echo = 1};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);
    swarm sw;
    swarm_init(&sw, n, &rng);
    for (int i = 0; i < n; i++)
        swarm_start(loop, &sw, port);
    CHK(em_connection_count(loop) >= (size_t)n, "all connecting at once");
    double deadline = th_now() + TH_TIMEOUT(100);
    while (sw.done < n || g.unbinds < n) {
        CHK(th_now() < deadline, "%d/%d clients done, %d server unbinds",
            sw.done, n, g.unbinds);
        CHK(em_run_once(loop, 10) >= 0, "em_run_once");
    }
    CHK(sw.bad == 0, "%d bad echoes", sw.bad);
    CHK(sw.echoed == n, "%d of %d echoed", sw.echoed, n);
    swarm_check(&sw, 0, n);
    CHK(g.handshakes == n, "server handshakes: %d", g.handshakes);
    CHK(g.bad_reasons == 0, "server: %d bad unbinds, latest %s (%s)",
        g.bad_reasons, em_err_name(g.reason), g.error);
    CHK(em_connection_count(loop) == 0, "%zu connections left",
        em_connection_count(loop));
    free(sw.peers);
    th_stop_and_free(loop, srv);
}

/* Keeps `in_flight` connections going until `upto` have started, then
 * waits for all of them (both sides) to end. */
static void swarm_run(em_loop *loop, swarm *sw, gate *g, int port, int upto,
                      int in_flight)
{
    double deadline = th_now() + TH_TIMEOUT(100);
    while (sw->done < upto || g->unbinds < upto) {
        while (sw->started < upto && sw->started - sw->done < in_flight)
            swarm_start(loop, sw, port);
        CHK(th_now() < deadline, "%d/%d done", sw->done, upto);
        CHK(em_run_once(loop, 10) >= 0, "em_run_once");
    }
}

/* Heap in use (mallinfo2) after 1,000 handshakes and after all of them:
 * caches (contexts, sessions, the loop's buffers) are warm after the first
 * 1,000, so the rest must not grow it. Under ASan the allocator is not
 * glibc's and mallinfo2 sees nothing: LeakSanitizer checks that build. */
Test(tls_chaos, ten_thousand_handshakes_do_not_grow, .timeout = TH_TIMEOUT(180))
{
    const int total = TH_TIMEOUT_SCALE > 1 ? 500 : 10000;
    const int warm = total / 10;
    seed_init();
    paths_init();
    uint64_t rng = g_seed ^ 0x10000;
    int fds_at_start = th_count_fds();
    swarm sw;
    swarm_init(&sw, total, &rng);
    em_loop *loop = th_loop();
    gate g = {.echo = 1};
    em_server *srv = gate_start(loop, &g);
    int port = th_listen_port(srv);
    int fds_with_loop = th_count_fds();

    swarm_run(loop, &sw, &g, port, warm, 50);
    CHK(em_connection_count(loop) == 0, "connections after the warm-up");
    size_t heap_warm = mallinfo2().uordblks;

    double t0 = th_now();
    swarm_run(loop, &sw, &g, port, total, 50);
    double secs = th_now() - t0;
    size_t heap_end = mallinfo2().uordblks;
    long growth = (long)heap_end - (long)heap_warm;
    CHK(growth < (long)MiB, "heap grew by %ld bytes over %d handshakes", growth,
        total - warm);
    CHK(sw.bad == 0 && sw.echoed == total, "%d bad, %d echoed", sw.bad,
        sw.echoed);
    swarm_check(&sw, 0, total);
    CHK(g.bad_reasons == 0, "server: %d bad unbinds, latest %s (%s)",
        g.bad_reasons, em_err_name(g.reason), g.error);
    CHK(g.handshakes == total, "server handshakes: %d", g.handshakes);
    CHK(em_connection_count(loop) == 0, "%zu connections left",
        em_connection_count(loop));
    CHK(th_count_fds() == fds_with_loop, "descriptors: %d, were %d",
        th_count_fds(), fds_with_loop);
    cr_log_info("%d handshakes in %.1f s, heap %+ld bytes", total - warm, secs,
                growth);
    free(sw.peers);
    th_stop_and_free(loop, srv);
    CHK(th_count_fds() == fds_at_start,
        "descriptors after the loop: %d, "
        "were %d",
        th_count_fds(), fds_at_start);
}

/* ---- renegotiation ------------------------------------------------------- */

static SSL *ssl_of(em_conn *conn)
{
    CHK(conn && conn->tls && conn->tls->ssl, "no SSL object");
    return conn->tls->ssl;
}

/* The client (TLS 1.2) forces a renegotiation: its own context refuses
 * (SSL_OP_NO_RENEGOTIATION), so the option is cleared on its SSL object
 * first. Its next write sends a new ClientHello; the server answers with
 * a no_renegotiation warning and never starts a second handshake, and
 * OpenSSL's client treats that refusal as fatal: the connection ends in
 * -EPROTO on both sides, after exactly one handshake each. */
Test(tls_chaos, client_renegotiation_is_refused, .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    server_opts(&server.opts);
    client_opts(&client.opts);
    client.opts.max_version = EM_TLS_TLSv1_2;
    server.echo = 1;
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    CHK(em_connect(loop, "localhost", th_listen_port(srv), &th_tls_handler,
                   &client, NULL) == 0,
        "em_connect");
    th_tls_run_handshake(loop, &server, &client);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    CHK(client.handshakes == 1, "%s", client.error);
    CHK(strcmp(client.protocol, "TLSv1.2") == 0, "%s", client.protocol);

    SSL *ssl = ssl_of(client.conn);
    CHK(SSL_renegotiate(ssl) == 0, "libem's client refuses by default");
    ERR_clear_error();
    SSL_clear_options(ssl, SSL_OP_NO_RENEGOTIATION);
    CHK(SSL_renegotiate(ssl) == 1, "forced renegotiation");
    CHK(em_send_data(client.conn, "after", 5) == 0, "send");
    double deadline = th_now() + TH_TIMEOUT(5);
    while (!client.unbinds && client.got_len < 5) {
        CHK(th_now() < deadline, "neither echo nor failure");
        CHK(em_run_once(loop, 10) >= 0, "em_run_once");
    }
    th_run_for(loop, 0.05);
    CHK(server.handshakes == 1, "the server renegotiated (%d handshakes)",
        server.handshakes);
    CHK(client.handshakes == 1, "the client completed a second handshake");
    CHK(client.unbinds == 1, "the client survived the refusal");
    CHK(client.reason == -EPROTO, "%s (%s)", em_err_name(client.reason),
        client.error);
    CHK(strcasestr(client.error, "renegotiation") != NULL, "%s", client.error);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    CHK(server.reason == -EPROTO, "server: %s (%s)", em_err_name(server.reason),
        server.error);
    CHK(server.got_len == 0, "data arrived around the renegotiation");
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

/* The other way: the server forces one (HelloRequest). The client refuses
 * with a no_renegotiation warning, which the server's OpenSSL treats as
 * fatal; the client never completes a second handshake. */
Test(tls_chaos, server_renegotiation_is_refused, .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    server_opts(&server.opts);
    server.opts.max_version = EM_TLS_TLSv1_2;
    client_opts(&client.opts);
    client.echo = 1;
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    CHK(em_connect(loop, "localhost", th_listen_port(srv), &th_tls_handler,
                   &client, NULL) == 0,
        "em_connect");
    th_tls_run_handshake(loop, &server, &client);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    CHK(strcmp(server.protocol, "TLSv1.2") == 0, "%s", server.protocol);

    SSL *ssl = ssl_of(server.conn);
    SSL_clear_options(ssl, SSL_OP_NO_RENEGOTIATION);
    CHK(SSL_renegotiate(ssl) == 1, "forced renegotiation");
    CHK(em_send_data(server.conn, "after", 5) == 0, "send");
    double deadline = th_now() + TH_TIMEOUT(5);
    while (!server.unbinds && server.got_len < 5) {
        CHK(th_now() < deadline, "neither echo nor failure");
        CHK(em_run_once(loop, 10) >= 0, "em_run_once");
    }
    th_run_for(loop, 0.05);
    CHK(client.handshakes == 1, "the client renegotiated (%d handshakes)",
        client.handshakes);
    CHK(server.handshakes == 1, "the server completed a second handshake");
    CHK(server.unbinds == 1, "the server survived the refusal");
    CHK(server.reason == -EPROTO, "%s (%s)", em_err_name(server.reason),
        server.error);
    CHK(strcasestr(server.error, "renegotiation") != NULL, "%s", server.error);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    CHK(client.reason != 0, "client: %s (%s)", em_err_name(client.reason),
        client.error);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

/* TLS 1.3 has no renegotiation; its KeyUpdate is a post-handshake message
 * the transport must pass through: data flows on, no new handshake. */
Test(tls_chaos, tls13_key_update_is_not_a_handshake, .timeout = TH_TIMEOUT(10))
{
    seed_init();
    paths_init();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    server_opts(&server.opts);
    client_opts(&client.opts);
    server.echo = 1;
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    CHK(em_connect(loop, "localhost", th_listen_port(srv), &th_tls_handler,
                   &client, NULL) == 0,
        "em_connect");
    th_tls_run_handshake(loop, &server, &client);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    CHK(strcmp(client.protocol, "TLSv1.3") == 0, "%s", client.protocol);
    SSL *ssl = ssl_of(client.conn);
    CHK(SSL_renegotiate(ssl) == 0, "no renegotiation in TLS 1.3");
    ERR_clear_error();
    for (int round = 0; round < 3; round++) {
        CHK(SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) == 1, "key update");
        char msg[16];
        int len = snprintf(msg, sizeof(msg), "round %d;", round);
        size_t want = client.got_len + (size_t)len;
        CHK(em_send_data(client.conn, msg, (size_t)len) == 0, "send");
        th_run_until_size(loop, &client.got_len, want, 5);
    }
    CHK(strcmp((char *)client.got, "round 0;round 1;round 2;") == 0, "%s",
        (char *)client.got);
    CHK(server.handshakes == 1 && client.handshakes == 1, "one handshake");
    CHK(client.unbinds == 0 && server.unbinds == 0, "%s / %s", client.error,
        server.error);
    em_close_connection(client.conn, 0);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    CHK(server.reason == 0, "%s", server.error);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}
