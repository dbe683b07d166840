/*
 * tls_loadgen.c - TLS load client for the libem TLS benchmarks.
 *
 * What: drives a TLS (or, with --plain, a plain TCP) server in one of three
 * modes and prints one machine-readable RESULT line on stdout; diagnostics
 * go to stderr.
 *   handshake: C slots; each connects, runs a full TLS 1.3 handshake, sends
 *              one small request, reads until at least one byte of reply
 *              arrives, sends close_notify, closes, and starts over.
 *   resume:    the same, but each slot offers the session (ticket) its
 *              previous connection received; the RESULT line gives the
 *              fraction that really resumed, and the run fails (exit 3)
 *              when it is below --min-resumed (0.9).
 *   echo:      C keep-alive connections; each sends one S-byte message,
 *              waits until all of it came back (verified byte by byte),
 *              then sends the next.
 * The unit of work ("op") is a completed cycle (handshake modes) or an
 * echoed message (echo). ops per server CPU-second is the headline number:
 * the server's CPU time comes from /proc/PID/task/TID/schedstat at the edges
 * of the measured window, as bench/loadgen.c reads it. The run-queue wait of
 * the server and of this client (the same files) say how much other load on
 * the machine took from either side: the driver redoes noisy runs.
 *
 * Why this way: one thread, level-triggered epoll, non-blocking sockets and
 * OpenSSL on socket BIOs, so it shares nothing with the library under test
 * and treats libem and nginx identically. Verification is off (the bench
 * certificates are self-signed) and SNI is "localhost". A connect is
 * followed at once by SSL_do_handshake: on loopback the TCP handshake is
 * usually done by then, which saves the client an epoll round trip; the
 * client's core is the scarce one in full handshakes, since verifying an
 * ECDSA signature costs more than making one. Closed connections leave
 * TIME_WAIT on the client side, so sources rotate over 127.0.0.1-32 to keep
 * the ephemeral port space from running out. Every wait is bounded by a
 * phase deadline, so the program always exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define NS_PER_S 1000000000ull
#define MAX_EVENTS 1024
#define READ_BUF_SIZE (64 * 1024)
#define PATTERN_SPREAD 251
#define SOURCE_ADDR_COUNT 32
#define MAX_ERROR_REPORTS 5
#define DEFAULT_REQUEST "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"

/* Log-linear latency histogram: 16 linear buckets per power of two. */
#define HIST_SUB_BITS 4
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (2 * HIST_SUB + (64 - HIST_SUB_BITS - 1) * HIST_SUB)

enum mode { MODE_HANDSHAKE, MODE_RESUME, MODE_ECHO };
enum phase { PHASE_CONNECT, PHASE_WARMUP, PHASE_MEASURE, PHASE_DONE };
enum step { ST_IDLE, ST_HANDSHAKE, ST_WRITING, ST_READING, ST_DEAD };
/* A step's outcome: go on, wait for the socket, fail, or the connection
 * is already gone (cycle finished or slot failed inside the step). */
enum io { IO_OK, IO_WANT_READ, IO_WANT_WRITE, IO_FAIL, IO_CLOSED };

struct options {
    const char *host;
    int port;
    enum mode mode;
    int conns;
    size_t size; /* echo message size */
    double duration;
    double warmup;
    pid_t server_pid;
    bool plain;
    const char *request;
    const char *sni;
    double min_resumed;
};

struct slot {
    int fd;
    int id;
    enum step step;
    uint32_t events;      /* epoll interest currently registered */
    SSL *ssl;
    SSL_SESSION *session; /* resume: newest ticket of the last connection */
    uint64_t started_ns;  /* start of this cycle (or message) */
    uint64_t msgno;       /* echo: messages completed on this connection */
    size_t sent;          /* bytes of the current request/message written */
    size_t recvd;         /* bytes of the current echo read back */
    bool handshaken;
};

struct cpu_sample {
    double run_s;  /* CPU time, seconds; negative when unknown */
    double wait_s; /* run-queue wait, seconds */
};

struct histogram {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
};

struct tlg {
    struct options opt;
    struct sockaddr_in server;
    SSL_CTX *ctx;
    int epfd;
    struct slot *slots;
    unsigned char *pattern;
    size_t request_len;
    enum phase phase;
    uint64_t phase_end_ns;
    uint64_t hard_deadline_ns;
    uint64_t window_start_ns, window_end_ns;
    struct cpu_sample server_start, server_end;
    struct cpu_sample client_start, client_end; /* this process */
    double client_cpu_start, client_cpu_end;
    unsigned source_seq;
    int established; /* echo: connections through their handshake */
    int resolved;    /* echo: established or failed, for the connect phase */
    int idle;        /* handshake modes: slots waiting to be restarted */
    uint64_t done;   /* ops completed in the window */
    uint64_t handshakes, resumed; /* handshakes completed in the window */
    uint64_t errors;
    struct histogram hist;
    char protocol[32], cipher[64];
};

static unsigned char read_buf[READ_BUF_SIZE];

/* ------------------------------------------------------------------ time */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t seconds_to_ns(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * (double)NS_PER_S);
}

static double own_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* ------------------------------------------------------------- histogram */

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    unsigned group = msb - HIST_SUB_BITS - 1;
    return 2 * HIST_SUB + group * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

static double hist_bucket_mid(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return idx;
    unsigned k = idx - 2 * HIST_SUB;
    unsigned shift = k / HIST_SUB + 1;
    double low = (double)((uint64_t)(HIST_SUB + k % HIST_SUB) << shift);
    return low + (double)(1ull << shift) / 2.0;
}

static double hist_percentile_ns(const struct histogram *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)h->total);
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= (target ? target : 1))
            return hist_bucket_mid(i);
    }
    return hist_bucket_mid(HIST_BUCKETS - 1);
}

/* --------------------------------------------------------------- options */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tls_loadgen --mode handshake|resume|echo [--port P] [--host IP]\n"
            "                   [--conns C] [--size S] [--duration T] [--warmup T]\n"
            "                   [--server-pid PID] [--plain] [--request STR]\n"
            "                   [--sni NAME] [--min-resumed F]\n");
}

static void options_defaults(struct options *o)
{
    o->host = "127.0.0.1";
    o->port = 8443;
    o->mode = MODE_HANDSHAKE;
    o->conns = 32;
    o->size = 16384;
    o->duration = 3.0;
    o->warmup = 0.5;
    o->server_pid = 0;
    o->plain = false;
    o->request = DEFAULT_REQUEST;
    o->sni = "localhost";
    o->min_resumed = 0.9;
}

static int parse_mode(const char *s, enum mode *m)
{
    static const char *names[] = {"handshake", "resume", "echo"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *m = (enum mode)i;
            return 0;
        }
    }
    return -1;
}

static bool options_valid(const struct options *o)
{
    bool ok = o->port > 0 && o->port < 65536 && o->conns > 0 && o->size > 0 &&
              o->duration > 0 && o->warmup >= 0 && o->request[0] != '\0';
    if (o->plain && o->mode != MODE_ECHO) {
        fprintf(stderr, "tls_loadgen: --plain only goes with --mode echo\n");
        return false;
    }
    return ok;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"mode", required_argument, NULL, 'm'},
        {"conns", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"server-pid", required_argument, NULL, 'P'},
        {"plain", no_argument, NULL, 'x'},
        {"request", required_argument, NULL, 'r'},
        {"sni", required_argument, NULL, 'n'},
        {"min-resumed", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, '?'},
        {NULL, 0, NULL, 0},
    };
    options_defaults(o);
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': o->host = optarg; break;
        case 'p': o->port = atoi(optarg); break;
        case 'm':
            if (parse_mode(optarg, &o->mode) != 0)
                return -1;
            break;
        case 'c': o->conns = atoi(optarg); break;
        case 's': o->size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': o->duration = strtod(optarg, NULL); break;
        case 'w': o->warmup = strtod(optarg, NULL); break;
        case 'P': o->server_pid = (pid_t)atoi(optarg); break;
        case 'x': o->plain = true; break;
        case 'r': o->request = optarg; break;
        case 'n': o->sni = optarg; break;
        case 'R': o->min_resumed = strtod(optarg, NULL); break;
        default: return -1;
        }
    }
    return options_valid(o) ? 0 : -1;
}

static bool is_echo(const struct tlg *g)
{
    return g->opt.mode == MODE_ECHO;
}

static const char *mode_name(enum mode m)
{
    return m == MODE_HANDSHAKE ? "handshake" : m == MODE_RESUME ? "resume" : "echo";
}

/* ------------------------------------------------------------ server cpu */

/* Adds one thread's schedstat line (run ns, run-queue wait ns) to sum. */
static int add_thread_schedstat(const char *path, struct cpu_sample *sum)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    unsigned long long run_ns, wait_ns;
    int n = fscanf(f, "%llu %llu", &run_ns, &wait_ns);
    fclose(f);
    if (n != 2)
        return -1;
    sum->run_s += (double)run_ns / 1e9;
    sum->wait_s += (double)wait_ns / 1e9;
    return 0;
}

/* A process's CPU time and run-queue wait: the sum over its threads. */
static struct cpu_sample read_server_cpu(pid_t pid)
{
    struct cpu_sample sum = {0, 0}, unknown = {-1, -1};
    char path[96];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return unknown;
    int threads = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat", (int)pid,
                 de->d_name);
        threads += add_thread_schedstat(path, &sum) == 0;
    }
    closedir(dir);
    return threads > 0 ? sum : unknown;
}

/* ------------------------------------------------------------------- TLS */

static void report_error(struct tlg *g, const struct slot *s, const char *what)
{
    g->errors++;
    if (g->errors > MAX_ERROR_REPORTS)
        return;
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "";
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof(reason));
    fprintf(stderr, "tls_loadgen: slot %d: %s%s%s%s%s\n", s->id, what,
            reason[0] ? ": " : "", reason, errno ? ", errno: " : "",
            errno ? strerror(errno) : "");
}

/* Keeps the newest ticket of the connection in its slot (resume mode). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct slot *s = SSL_get_app_data(ssl);
    if (s == NULL)
        return 0;
    if (s->session)
        SSL_SESSION_free(s->session);
    s->session = sess;
    return 1; /* the reference is ours now */
}

static SSL_CTX *make_client_ctx(enum mode mode)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1); /* one recv per record, not two */
    if (mode == MODE_RESUME) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                                SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    return ctx;
}

static int slot_attach_tls(struct tlg *g, struct slot *s)
{
    s->ssl = SSL_new(g->ctx);
    if (s->ssl == NULL || SSL_set_fd(s->ssl, s->fd) != 1)
        return -1;
    SSL_set_app_data(s->ssl, s);
    SSL_set_connect_state(s->ssl);
    SSL_set_tlsext_host_name(s->ssl, g->opt.sni);
    if (g->opt.mode == MODE_RESUME && s->session != NULL)
        SSL_set_session(s->ssl, s->session);
    return 0;
}

/* Maps an OpenSSL result to what the slot waits for next. */
static enum io tls_result(SSL *ssl, int rc)
{
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ: return IO_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return IO_WANT_WRITE;
    default: return IO_FAIL;
    }
}

/* -------------------------------------------------------------- raw I/O */

static enum io errno_result(bool writing)
{
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return writing ? IO_WANT_WRITE : IO_WANT_READ;
    return IO_FAIL;
}

static enum io io_write(struct slot *s, const void *buf, size_t len, size_t *n)
{
    errno = 0;
    if (s->ssl) {
        ERR_clear_error();
        int rc = SSL_write(s->ssl, buf, (int)len);
        *n = rc > 0 ? (size_t)rc : 0;
        return rc > 0 ? IO_OK : tls_result(s->ssl, rc);
    }
    ssize_t w = send(s->fd, buf, len, MSG_NOSIGNAL);
    *n = w > 0 ? (size_t)w : 0;
    return w > 0 ? IO_OK : w == 0 ? IO_FAIL : errno_result(true);
}

static enum io io_read(struct slot *s, void *buf, size_t len, size_t *n)
{
    errno = 0;
    if (s->ssl) {
        ERR_clear_error();
        int rc = SSL_read(s->ssl, buf, (int)len);
        *n = rc > 0 ? (size_t)rc : 0;
        return rc > 0 ? IO_OK : tls_result(s->ssl, rc);
    }
    ssize_t r = recv(s->fd, buf, len, 0);
    *n = r > 0 ? (size_t)r : 0;
    return r > 0 ? IO_OK : r == 0 ? IO_FAIL : errno_result(false);
}

/* ------------------------------------------------------------ connections */

static void slot_set_step(struct tlg *g, struct slot *s, enum step next)
{
    g->idle -= s->step == ST_IDLE;
    s->step = next;
    g->idle += next == ST_IDLE;
}

static int slot_watch(struct tlg *g, struct slot *s, uint32_t events)
{
    if (s->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = s};
    int op = s->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(g->epfd, op, s->fd, &ev) != 0)
        return -1;
    s->events = events;
    return 0;
}

/* Sends close_notify (handshake modes: only once the cycle is done) and
 * frees the connection; the slot keeps its ticket. */
static void slot_close(struct slot *s, bool clean)
{
    if (s->ssl) {
        if (clean)
            SSL_shutdown(s->ssl);
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0)
        close(s->fd); /* also leaves the epoll set */
    s->fd = -1;
    s->events = 0;
    s->sent = s->recvd = 0;
    s->handshaken = false;
}

static void slot_fail(struct tlg *g, struct slot *s, const char *what)
{
    report_error(g, s, what);
    if (is_echo(g) && !s->handshaken)
        g->resolved++;
    if (is_echo(g) && s->handshaken)
        g->established--;
    slot_close(s, false);
    slot_set_step(g, s, is_echo(g) ? ST_DEAD : ST_IDLE);
}

/* Spread connections over 127.0.0.x sources so TIME_WAIT never exhausts
 * the (source address, ephemeral port) space. */
static int bind_rotating_source(struct tlg *g, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in src = {.sin_family = AF_INET};
    unsigned host = 1 + (g->source_seq++ % SOURCE_ADDR_COUNT);
    src.sin_addr.s_addr = htonl((127u << 24) | host);
    return bind(fd, (struct sockaddr *)&src, sizeof(src));
}

static bool server_is_loopback(const struct tlg *g)
{
    return (ntohl(g->server.sin_addr.s_addr) >> 24) == 127;
}

static int open_connection(struct tlg *g, struct slot *s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    s->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (server_is_loopback(g) && bind_rotating_source(g, fd) != 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&g->server, sizeof(g->server)) != 0 &&
        errno != EINPROGRESS)
        return -1;
    if (!g->opt.plain && slot_attach_tls(g, s) != 0)
        return -1;
    return 0;
}

static void slot_advance(struct tlg *g, struct slot *s);

/* Starts a connection on an idle slot; its handshake is tried at once. */
static void slot_start(struct tlg *g, struct slot *s, uint64_t now)
{
    s->started_ns = now;
    if (open_connection(g, s) != 0) {
        slot_fail(g, s, "connect");
        return;
    }
    slot_set_step(g, s, ST_HANDSHAKE);
    slot_advance(g, s);
}

/* ------------------------------------------------------------- data path */

static bool measuring(const struct tlg *g)
{
    return g->phase == PHASE_MEASURE;
}

static bool running(const struct tlg *g)
{
    return g->phase == PHASE_WARMUP || g->phase == PHASE_MEASURE;
}

static void record_op(struct tlg *g, uint64_t started, uint64_t now)
{
    if (!measuring(g))
        return;
    g->done++;
    g->hist.counts[hist_index(now - started)]++;
    g->hist.total++;
}

static void note_session(struct tlg *g, const struct slot *s)
{
    if (g->cipher[0] == '\0' && s->ssl) {
        snprintf(g->protocol, sizeof(g->protocol), "%s", SSL_get_version(s->ssl));
        snprintf(g->cipher, sizeof(g->cipher), "%s", SSL_get_cipher_name(s->ssl));
    }
    if (!measuring(g))
        return;
    g->handshakes++;
    g->resumed += s->ssl && SSL_session_reused(s->ssl);
}

static const unsigned char *echo_message(const struct tlg *g, const struct slot *s)
{
    return g->pattern + ((uint64_t)s->id * 7u + s->msgno) % PATTERN_SPREAD;
}

/* What the slot writes now: the request, or the current echo message. */
static const unsigned char *out_bytes(const struct tlg *g, const struct slot *s,
                                      size_t *len)
{
    if (is_echo(g)) {
        *len = g->opt.size;
        return echo_message(g, s);
    }
    *len = g->request_len;
    return (const unsigned char *)g->opt.request;
}

static enum io step_handshake(struct tlg *g, struct slot *s)
{
    if (s->ssl) {
        errno = 0;
        ERR_clear_error();
        int rc = SSL_do_handshake(s->ssl);
        if (rc != 1)
            return tls_result(s->ssl, rc);
    }
    s->handshaken = true;
    note_session(g, s);
    if (is_echo(g)) {
        g->established++;
        g->resolved++;
        if (!running(g)) {
            slot_set_step(g, s, ST_READING); /* parked until warmup */
            return IO_WANT_READ;
        }
        s->started_ns = now_ns();
    }
    slot_set_step(g, s, ST_WRITING);
    return IO_OK;
}

static enum io step_write(struct tlg *g, struct slot *s)
{
    size_t len, n;
    const unsigned char *buf = out_bytes(g, s, &len);
    while (s->sent < len) {
        enum io r = io_write(s, buf + s->sent, len - s->sent, &n);
        if (r != IO_OK)
            return r;
        s->sent += n;
    }
    slot_set_step(g, s, ST_READING);
    return IO_OK;
}

/* Handshake modes: the first byte of the reply ends the cycle. The slot
 * goes idle and is restarted after this batch of events (advance_phase). */
static enum io finish_cycle(struct tlg *g, struct slot *s)
{
    record_op(g, s->started_ns, now_ns());
    slot_close(s, true);
    slot_set_step(g, s, ST_IDLE);
    return IO_CLOSED;
}

/* Echo: checks what came back against what was sent. */
static bool echo_consume(struct tlg *g, struct slot *s, size_t n)
{
    if (memcmp(read_buf, echo_message(g, s) + s->recvd, n) != 0)
        return false;
    s->recvd += n;
    if (s->recvd == g->opt.size) {
        uint64_t now = now_ns();
        record_op(g, s->started_ns, now);
        s->msgno++;
        s->sent = s->recvd = 0;
        s->started_ns = now;
        slot_set_step(g, s, ST_WRITING);
    }
    return true;
}

static enum io step_read(struct tlg *g, struct slot *s)
{
    size_t n;
    if (!is_echo(g)) {
        enum io r = io_read(s, read_buf, sizeof(read_buf), &n);
        return r == IO_OK ? finish_cycle(g, s) : r;
    }
    if (!running(g)) { /* parked: only tickets may arrive, never data */
        enum io r = io_read(s, read_buf, sizeof(read_buf), &n);
        if (r != IO_OK)
            return r;
        slot_fail(g, s, "data before the first message");
        return IO_CLOSED;
    }
    while (s->step == ST_READING) {
        size_t want = g->opt.size - s->recvd;
        enum io r = io_read(s, read_buf, want < READ_BUF_SIZE ? want : READ_BUF_SIZE, &n);
        if (r != IO_OK)
            return r;
        if (!echo_consume(g, s, n)) {
            slot_fail(g, s, "echo mismatch");
            return IO_CLOSED;
        }
    }
    return IO_OK;
}

static const char *step_name(enum step st)
{
    return st == ST_HANDSHAKE ? "handshake" : st == ST_WRITING ? "write" : "read";
}

/* Runs the slot's state machine until it has to wait; then sets the epoll
 * interest to what it waits for. */
static void slot_advance(struct tlg *g, struct slot *s)
{
    for (;;) {
        enum step st = s->step;
        enum io r;
        switch (st) {
        case ST_HANDSHAKE: r = step_handshake(g, s); break;
        case ST_WRITING: r = step_write(g, s); break;
        case ST_READING: r = step_read(g, s); break;
        default: return;
        }
        if (r == IO_OK)
            continue;
        if (r == IO_CLOSED)
            return;
        if (r == IO_FAIL) {
            slot_fail(g, s, step_name(st));
            return;
        }
        uint32_t ev = r == IO_WANT_WRITE ? EPOLLOUT : EPOLLIN;
        if (slot_watch(g, s, ev) != 0)
            slot_fail(g, s, "epoll_ctl");
        return;
    }
}

/* ---------------------------------------------------------------- phases */

static void restart_idle_slots(struct tlg *g, uint64_t now)
{
    for (int i = 0; i < g->opt.conns && g->idle > 0; i++)
        if (g->slots[i].step == ST_IDLE)
            slot_start(g, &g->slots[i], now);
}

static void begin_warmup(struct tlg *g, uint64_t now)
{
    g->phase = PHASE_WARMUP;
    g->phase_end_ns = now + seconds_to_ns(g->opt.warmup);
    if (!is_echo(g)) {
        restart_idle_slots(g, now);
        return;
    }
    fprintf(stderr, "tls_loadgen: %d/%d connections established\n",
            g->established, g->opt.conns);
    for (int i = 0; i < g->opt.conns; i++) {
        struct slot *s = &g->slots[i];
        if (s->step == ST_READING && s->handshaken) {
            s->started_ns = now;
            slot_set_step(g, s, ST_WRITING);
            slot_advance(g, s);
        }
    }
}

static void begin_measure(struct tlg *g, uint64_t now)
{
    g->phase = PHASE_MEASURE;
    g->window_start_ns = now;
    g->phase_end_ns = now + seconds_to_ns(g->opt.duration);
    g->client_cpu_start = own_cpu_s();
    g->client_start = read_server_cpu(getpid());
    if (g->opt.server_pid > 0)
        g->server_start = read_server_cpu(g->opt.server_pid);
}

static void end_measure(struct tlg *g, uint64_t now)
{
    if (g->opt.server_pid > 0)
        g->server_end = read_server_cpu(g->opt.server_pid);
    g->client_cpu_end = own_cpu_s();
    g->client_end = read_server_cpu(getpid());
    g->window_end_ns = now;
    g->phase = PHASE_DONE;
}

static void advance_phase(struct tlg *g, uint64_t now)
{
    if (now >= g->hard_deadline_ns && g->phase != PHASE_MEASURE) {
        fprintf(stderr, "tls_loadgen: hard deadline reached\n");
        g->phase = PHASE_DONE;
        return;
    }
    switch (g->phase) {
    case PHASE_CONNECT:
        if (g->resolved >= g->opt.conns || now >= g->phase_end_ns)
            begin_warmup(g, now);
        break;
    case PHASE_WARMUP:
        if (now >= g->phase_end_ns)
            begin_measure(g, now);
        break;
    case PHASE_MEASURE:
        if (now >= g->phase_end_ns)
            end_measure(g, now);
        break;
    case PHASE_DONE:
        break;
    }
    if (is_echo(g) && g->phase != PHASE_CONNECT && g->established == 0)
        g->phase = PHASE_DONE; /* nothing left to measure */
    if (g->idle > 0 && running(g))
        restart_idle_slots(g, now);
}

static int wait_timeout_ms(const struct tlg *g, uint64_t now)
{
    if (g->idle > 0 && running(g))
        return 1; /* back off a little before retrying failed slots */
    if (now >= g->phase_end_ns)
        return 0;
    uint64_t ms = (g->phase_end_ns - now + 999999) / 1000000;
    return ms > 1000 ? 1000 : (int)ms;
}

static void handle_event(struct tlg *g, struct slot *s)
{
    if (s->fd >= 0 && s->step != ST_DEAD && s->step != ST_IDLE)
        slot_advance(g, s);
}

static void run_event_loop(struct tlg *g)
{
    static struct epoll_event events[MAX_EVENTS];
    while (g->phase != PHASE_DONE) {
        int n = epoll_wait(g->epfd, events, MAX_EVENTS, wait_timeout_ms(g, now_ns()));
        if (n < 0 && errno != EINTR) {
            perror("tls_loadgen: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++)
            handle_event(g, events[i].data.ptr);
        advance_phase(g, now_ns());
    }
}

static void start_run(struct tlg *g)
{
    uint64_t now = now_ns();
    double connect_s = 5.0 + g->opt.conns / 500.0;
    g->hard_deadline_ns =
        now + seconds_to_ns(connect_s + g->opt.warmup + g->opt.duration + 2.0);
    if (!is_echo(g)) {
        begin_warmup(g, now);
        return;
    }
    g->phase = PHASE_CONNECT;
    g->phase_end_ns = now + seconds_to_ns(connect_s);
    for (int i = 0; i < g->opt.conns; i++)
        slot_start(g, &g->slots[i], now);
}

/* ----------------------------------------------------------------- setup */

static int resolve_server(struct tlg *g)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(g->opt.host, NULL, &hints, &res) != 0 || res == NULL) {
        fprintf(stderr, "tls_loadgen: cannot resolve %s\n", g->opt.host);
        return -1;
    }
    memcpy(&g->server, res->ai_addr, sizeof(g->server));
    freeaddrinfo(res);
    g->server.sin_port = htons((uint16_t)g->opt.port);
    return 0;
}

static void fill_pattern(unsigned char *p, size_t len)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

static void raise_fd_limit(int conns)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)conns + 64)
        fprintf(stderr, "tls_loadgen: warning: fd limit %llu too low for %d conns\n",
                (unsigned long long)rl.rlim_cur, conns);
}

static int setup(struct tlg *g)
{
    size_t n = (size_t)g->opt.conns;
    g->request_len = strlen(g->opt.request);
    g->slots = calloc(n, sizeof(*g->slots));
    g->pattern = malloc(g->opt.size + PATTERN_SPREAD);
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!g->slots || !g->pattern || g->epfd < 0)
        return -1;
    fill_pattern(g->pattern, g->opt.size + PATTERN_SPREAD);
    for (size_t i = 0; i < n; i++) {
        g->slots[i].fd = -1;
        g->slots[i].id = (int)i;
        g->slots[i].step = ST_IDLE;
    }
    g->idle = (int)n;
    g->server_start.run_s = g->server_start.wait_s = -1;
    g->server_end = g->server_start;
    if (g->opt.plain)
        return 0;
    g->ctx = make_client_ctx(g->opt.mode);
    return g->ctx ? 0 : -1;
}

static void teardown(struct tlg *g)
{
    for (int i = 0; i < g->opt.conns; i++) {
        slot_close(&g->slots[i], false);
        if (g->slots[i].session)
            SSL_SESSION_free(g->slots[i].session);
    }
    free(g->slots);
    free(g->pattern);
    if (g->ctx)
        SSL_CTX_free(g->ctx);
    if (g->epfd >= 0)
        close(g->epfd);
}

/* ---------------------------------------------------------------- report */

static double resumed_fraction(const struct tlg *g)
{
    return g->handshakes ? (double)g->resumed / (double)g->handshakes : 0;
}

/* "ok", or why the run must not be trusted. */
static const char *run_status(const struct tlg *g)
{
    if (g->done == 0)
        return "no_progress";
    if (g->opt.mode == MODE_RESUME && resumed_fraction(g) < g->opt.min_resumed)
        return "not_resumed";
    if (g->errors > 0)
        return "errors";
    return "ok";
}

static void print_server_cpu(const struct tlg *g, double window_s)
{
    const struct cpu_sample *a = &g->server_start, *b = &g->server_end;
    double cpu = b->run_s - a->run_s;
    if (a->run_s < 0 || b->run_s < 0 || cpu <= 0 || g->done == 0) {
        printf(" server_cpu_s=na ops_per_server_cpu_s=na server_cpu_us_per_op=na"
               " server_cpu_pct=na server_runq_pct=na");
        return;
    }
    printf(" server_cpu_s=%.4f ops_per_server_cpu_s=%.1f server_cpu_us_per_op=%.2f"
           " server_cpu_pct=%.1f server_runq_pct=%.1f",
           cpu, (double)g->done / cpu, cpu * 1e6 / (double)g->done,
           cpu * 100.0 / window_s, (b->wait_s - a->wait_s) * 100.0 / window_s);
}

static void print_result(const struct tlg *g)
{
    double window_s = g->window_end_ns > g->window_start_ns
                          ? (double)(g->window_end_ns - g->window_start_ns) / 1e9
                          : 0;
    double rate = window_s > 0 ? (double)g->done / window_s : 0;
    printf("RESULT mode=%s tls=%d conns=%d size=%zu duration=%.2f ops=%llu"
           " ops_per_s=%.1f",
           mode_name(g->opt.mode), !g->opt.plain, g->opt.conns,
           is_echo(g) ? g->opt.size : g->request_len, window_s,
           (unsigned long long)g->done, rate);
    if (is_echo(g))
        printf(" mb_per_s=%.1f", rate * (double)g->opt.size / 1e6);
    print_server_cpu(g, window_s);
    double client_wait = g->client_start.wait_s >= 0 && g->client_end.wait_s >= 0
                             ? g->client_end.wait_s - g->client_start.wait_s
                             : 0;
    printf(" client_cpu_pct=%.1f client_runq_pct=%.1f handshakes=%llu resumed=%llu"
           " resumed_frac=%.3f",
           window_s > 0 ? (g->client_cpu_end - g->client_cpu_start) * 100.0 / window_s : 0,
           window_s > 0 ? client_wait * 100.0 / window_s : 0,
           (unsigned long long)g->handshakes, (unsigned long long)g->resumed,
           resumed_fraction(g));
    printf(" p50_us=%.1f p99_us=%.1f errors=%llu protocol=%s cipher=%s status=%s\n",
           hist_percentile_ns(&g->hist, 0.50) / 1e3,
           hist_percentile_ns(&g->hist, 0.99) / 1e3, (unsigned long long)g->errors,
           g->protocol[0] ? g->protocol : "none", g->cipher[0] ? g->cipher : "none",
           run_status(g));
    fflush(stdout);
}

/* 0 ok, 1 nothing measured, 3 resumption below the bar. */
static int exit_status(const struct tlg *g)
{
    if (g->done == 0)
        return 1;
    if (g->opt.mode == MODE_RESUME && resumed_fraction(g) < g->opt.min_resumed) {
        fprintf(stderr,
                "tls_loadgen: FAIL: only %.1f%% of %llu handshakes resumed"
                " (need %.0f%%): the server does not resume sessions\n",
                resumed_fraction(g) * 100.0, (unsigned long long)g->handshakes,
                g->opt.min_resumed * 100.0);
        return 3;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct tlg g;
    g.epfd = -1;
    if (parse_options(argc, argv, &g.opt) != 0) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(g.opt.conns);
    if (resolve_server(&g) != 0 || setup(&g) != 0) {
        fprintf(stderr, "tls_loadgen: setup failed\n");
        teardown(&g);
        return 2;
    }
    start_run(&g);
    run_event_loop(&g);
    print_result(&g);
    int status = exit_status(&g);
    teardown(&g);
    return status;
}
