/*
 * helpers.c - see helpers.h.
 */
#include <dirent.h>
#include <stdlib.h>
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

/* th_run_until_count and _size: value() reads the counter. */
static void th_run_until_n(em_loop *loop, const void *counter,
                           long long (*value)(const void *), long long n,
                           double max_seconds)
{
    double limit = TH_TIMEOUT(max_seconds);
    double deadline = th_now() + limit;
    long long have;
    while ((have = value(counter)) < n) {
        cr_assert_lt(th_now(), deadline, "count %lld of %lld after %.2f s",
                     have, n, limit);
        th_turn(loop);
    }
}

static long long th_read_int(const void *counter)
{
    return *(const volatile int *)counter;
}

static long long th_read_size(const void *counter)
{
    return (long long)*(const volatile size_t *)counter;
}

void th_run_until_count(em_loop *loop, const int *counter, int n,
                        double max_seconds)
{
    th_run_until_n(loop, counter, th_read_int, n, max_seconds);
}

void th_run_until_size(em_loop *loop, const size_t *counter, size_t n,
                       double max_seconds)
{
    th_run_until_n(loop, counter, th_read_size, (long long)n, max_seconds);
}

void th_run_for(em_loop *loop, double seconds)
{
    double deadline = th_now() + seconds;
    while (th_now() < deadline)
        th_turn(loop);
}

void th_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

em_server *th_start_server(em_loop *loop, const em_handler *h, void *arg)
{
    em_server *s = NULL;
    int rc = em_start_server(loop, "127.0.0.1", 0, h, arg, NULL, &s);
    cr_assert_eq(rc, 0, "em_start_server: %s", em_strerror(rc));
    return s;
}

em_server *th_start_unix_server(em_loop *loop, const char *path,
                                const em_handler *h, void *arg)
{
    em_server *s = NULL;
    int rc = em_start_unix_server(loop, path, h, arg, NULL, &s);
    cr_assert_eq(rc, 0, "em_start_unix_server %s: %s", path, em_strerror(rc));
    return s;
}

int th_listen_port(em_server *s)
{
    cr_assert_not_null(s, "no server");
    int port = em_server_port(s);
    cr_assert_gt(port, 0, "em_server_port: %d (%s)", port, em_strerror(port));
    return port;
}

void th_stop_and_free(em_loop *loop, em_server *srv)
{
    if (srv)
        cr_assert_eq(em_stop_server(srv), 0);
    cr_assert_eq(em_connection_count(loop), 0, "%zu connections left",
                 em_connection_count(loop));
    th_free_loop(loop);
}

/* ---- the echo server and the counting client ------------------------- */

void th_echo_post_init(em_conn *conn, void *arg)
{
    th_echo *e = arg;
    e->conn = conn;
    e->accepted++;
}

void th_echo_receive(em_conn *conn, const char *data, size_t len)
{
    int rc = em_send_data(conn, data, len);
    cr_assert_eq(rc, 0, "echo em_send_data: %s", em_strerror(rc));
}

void th_echo_unbind(em_conn *conn, int reason)
{
    th_echo *e = em_conn_arg(conn);
    if (e->conn == conn)
        e->conn = NULL;
    e->unbinds++;
    e->last_reason = reason;
    if (reason != 0)
        e->bad_reasons++;
}

const em_handler th_echo_handler = {
    .post_init = th_echo_post_init,
    .receive_data = th_echo_receive,
    .unbind = th_echo_unbind,
};

void th_expect_echo(em_loop *loop, int fd, const char *msg)
{
    char buf[128];
    size_t len = strlen(msg);
    cr_assert_lt(len, sizeof buf);
    th_send_all(fd, msg, len);
    size_t got = th_pump_recv(loop, fd, buf, len, 5.0);
    cr_assert_eq(got, len, "echo cut short: %zu of %zu bytes", got, len);
    cr_assert_eq(memcmp(buf, msg, len), 0, "echo mangled");
}

void th_close_clients(em_loop *loop, th_echo *e, const int *fds, int n)
{
    int target = e->unbinds + n;
    for (int i = 0; i < n; i++)
        close(fds[i]);
    th_run_until_count(loop, &e->unbinds, target, 5.0);
}

static void th_client_post_init(em_conn *conn, void *arg)
{
    th_client *c = arg;
    c->post_inits++;
    c->connecting_in_post_init = em_is_connecting(conn);
    if (c->hello)
        cr_assert_eq(em_send_data(conn, c->hello, strlen(c->hello)), 0);
}

static void th_client_completed(em_conn *conn)
{
    th_client *c = em_conn_arg(conn);
    c->completed++;
}

static void th_client_receive(em_conn *conn, const char *data, size_t len)
{
    th_client *c = em_conn_arg(conn);
    cr_assert_leq(c->got_len + len, sizeof c->got);
    memcpy(c->got + c->got_len, data, len);
    c->got_len += len;
    if (c->hello && c->got_len == strlen(c->hello))
        em_close_connection(conn, 0);
}

static void th_client_unbind(em_conn *conn, int reason)
{
    th_client *c = em_conn_arg(conn);
    c->unbinds++;
    c->reason = reason;
}

const em_handler th_client_handler = {
    .post_init = th_client_post_init,
    .connection_completed = th_client_completed,
    .receive_data = th_client_receive,
    .unbind = th_client_unbind,
};

static void th_set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = TH_TIMEOUT(TH_SOCKET_TIMEOUT), .tv_usec = 0};
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0,
                 "SO_RCVTIMEO: %s", strerror(errno));
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0,
                 "SO_SNDTIMEO: %s", strerror(errno));
}

int th_client_connect_addr(const struct sockaddr *addr, socklen_t len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    th_set_timeouts(fd);
    int rc = connect(fd, addr, len);
    cr_assert_eq(rc, 0, "connect: %s", strerror(errno));
    return fd;
}

int th_client_connect(int port)
{
    cr_assert(port > 0 && port < 65536, "bad port %d", port);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return th_client_connect_addr((struct sockaddr *)&sin, sizeof sin);
}

int th_client_connect_unix(const char *path)
{
    struct sockaddr_un sun;
    cr_assert_not_null(path);
    cr_assert_lt(strlen(path), sizeof sun.sun_path, "path too long: %s", path);
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    return th_client_connect_addr((struct sockaddr *)&sun, sizeof sun);
}

int th_connect_accepted(em_loop *loop, int port, const int *accepted)
{
    int before = *accepted;
    int fd = th_client_connect(port);
    th_run_until_count(loop, accepted, before + 1, 5.0);
    return fd;
}

int th_connect_errno(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
    int err = rc < 0 ? errno : 0;
    close(fd);
    return err;
}

int th_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t len = sizeof sin;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

int th_have_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6,
                                .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = bind(fd, (struct sockaddr *)&sin6, sizeof sin6) == 0;
    close(fd);
    return ok;
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

int th_count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    cr_assert_not_null(dir, "opendir /proc/self/fd: %s", strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

int th_thread_count(void)
{
    DIR *dir = opendir("/proc/self/task");
    cr_assert_not_null(dir, "opendir /proc/self/task: %s", strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

int th_thread_count_settled(int want)
{
    int n = th_thread_count();
    for (int i = 0; i < 200 * TH_TIMEOUT_SCALE && n != want; i++) {
        th_sleep_ms(10);
        n = th_thread_count();
    }
    return n;
}

void th_raise_nofile(rlim_t want)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0, "getrlimit: %s",
                 strerror(errno));
    if (rl.rlim_cur >= want)
        return;
    cr_assert(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want,
              "RLIMIT_NOFILE hard limit %lu < %lu needed",
              (unsigned long)rl.rlim_max, (unsigned long)want);
    rl.rlim_cur = want;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0, "setrlimit: %s",
                 strerror(errno));
}

/* ---- the byte pattern ------------------------------------------------ */

static uint8_t th_pat(uint64_t i)
{
    return (uint8_t)(((uint32_t)i * 2654435761u) >> 24);
}

void th_pat_fill(uint8_t *buf, uint64_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = th_pat(offset + i);
}

long th_pat_check(const uint8_t *buf, uint64_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != th_pat(offset + i))
            return (long)i;
    return -1;
}

size_t th_pump_pattern_eof(em_loop *loop, int fd, size_t offset, size_t limit,
                           int *err, double max_seconds)
{
    static uint8_t buf[256 * 1024];
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            cr_assert_leq(offset + (size_t)n, limit, "more bytes than sent");
            long bad = th_pat_check(buf, offset, (size_t)n);
            cr_assert_eq(bad, -1, "corrupt byte at offset %zu",
                         offset + (size_t)bad);
            offset += (size_t)n;
            continue;
        }
        if (n == 0) {
            *err = 0;
            return offset;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            *err = -errno;
            return offset;
        }
        cr_assert_lt(th_now(), deadline, "no EOF after %zu bytes", offset);
        int rc = em_run_once(loop, 5);
        cr_assert_geq(rc, 0, "em_run_once: %s", em_strerror(rc));
    }
}

/* ---- TLS peers -------------------------------------------------------- */

#ifndef TH_CERT_DIR
#define TH_CERT_DIR "tests/certs"
#endif

static void th_tls_record_handshake(em_conn *conn, th_tls *t)
{
    const char *s;
    t->handshakes++;
    t->reused += em_tls_session_reused(conn);
    t->bits = em_tls_cipher_bits(conn);
    snprintf(t->protocol, sizeof(t->protocol), "%s",
             (s = em_tls_protocol(conn)) ? s : "");
    snprintf(t->cipher, sizeof(t->cipher), "%s",
             (s = em_tls_cipher(conn)) ? s : "");
    snprintf(t->alpn, sizeof(t->alpn), "%s", (s = em_tls_alpn(conn)) ? s : "");
    snprintf(t->sni, sizeof(t->sni), "%s", (s = em_tls_sni(conn)) ? s : "");
}

static void th_tls_post_init(em_conn *conn, void *arg)
{
    th_tls *t = arg;
    t->post_inits++;
    t->conn = conn;
    if (t->manual_start)
        return;
    t->start_err = em_start_tls(conn, &t->opts);
    if (t->start_err < 0)
        em_close_connection(conn, 0);
}

static void th_tls_completed(em_conn *conn)
{
    th_tls *t = em_conn_arg(conn);
    t->completed++;
}

static void th_tls_handshake(em_conn *conn)
{
    th_tls *t = em_conn_arg(conn);
    cr_assert(em_tls_handshake_done(conn));
    th_tls_record_handshake(conn, t);
    if (t->hello) {
        int rc = em_send_data(conn, t->hello, strlen(t->hello));
        cr_assert_eq(rc, 0, "send hello: %s", em_strerror(rc));
    }
}

static void th_tls_receive(em_conn *conn, const char *data, size_t len)
{
    th_tls *t = em_conn_arg(conn);
    t->chunks++;
    unsigned char *got = realloc(t->got, t->got_len + len + 1);
    cr_assert_not_null(got);
    memcpy(got + t->got_len, data, len);
    t->got = got;
    t->got_len += len;
    t->got[t->got_len] = '\0';
    if (t->echo) {
        int rc = em_send_data(conn, data, len);
        cr_assert_eq(rc, 0, "echo: %s", em_strerror(rc));
    }
    if (t->close_after_hello_reply && t->hello &&
        t->got_len >= strlen(t->hello))
        em_close_connection(conn, 1);
}

static void th_tls_unbind(em_conn *conn, int reason)
{
    th_tls *t = em_conn_arg(conn);
    t->unbinds++;
    t->reason = reason;
    snprintf(t->error, sizeof(t->error), "%s", em_tls_error(conn));
    if (t->conn == conn)
        t->conn = NULL;
}

static int th_tls_verify(em_conn *conn, const char *pem, size_t len, int depth,
                         int preverified)
{
    th_tls *t = em_conn_arg(conn);
    t->verify_calls++;
    t->verify_preverified_ok += preverified;
    if (depth > t->verify_max_depth)
        t->verify_max_depth = depth;
    if (t->verify_calls == 1)
        t->pem_ok = 1;
    if (len < 27 || strncmp(pem, "-----BEGIN CERTIFICATE-----", 27) != 0 ||
        strlen(pem) != len)
        t->pem_ok = 0;
    return t->verify_answer < 0 ? preverified : t->verify_answer;
}

const em_handler th_tls_handler = {
    .post_init = th_tls_post_init,
    .connection_completed = th_tls_completed,
    .receive_data = th_tls_receive,
    .unbind = th_tls_unbind,
    .ssl_handshake_completed = th_tls_handshake,
    .ssl_verify_peer = th_tls_verify,
};

void th_tls_reset(th_tls *t)
{
    free(t->got);
    memset(t, 0, sizeof(*t));
    t->verify_answer = -1;
}

const char *th_cert(const char *name)
{
    static char paths[64][256];
    static char names[64][64];
    static unsigned used;
    for (unsigned i = 0; i < used; i++)
        if (strcmp(names[i], name) == 0)
            return paths[i];
    cr_assert_lt(used, 64, "th_cert: too many distinct names");
    cr_assert_lt(strlen(name), sizeof(names[0]));
    snprintf(names[used], sizeof(names[0]), "%s", name);
    snprintf(paths[used], sizeof(paths[0]), "%s/%s", TH_CERT_DIR, name);
    return paths[used++];
}

void th_tls_server_opts(em_tls_options *o, const char *name)
{
    char file[128];
    snprintf(file, sizeof(file), "%s.pem", name);
    o->cert_chain_file = th_cert(file);
    snprintf(file, sizeof(file), "%s.key", name);
    o->private_key_file = th_cert(file);
}

void th_tls_client_opts(em_tls_options *o)
{
    o->ca_file = th_cert("ca.pem");
}

void th_tls_run_handshake(em_loop *loop, th_tls *server, th_tls *client)
{
    double limit = TH_TIMEOUT(10);
    double deadline = th_now() + limit;
    while (!((server->handshakes || server->unbinds) &&
             (client->handshakes || client->unbinds))) {
        cr_assert_lt(th_now(), deadline,
                     "no handshake after %.1f s (server %d/%d, client %d/%d)",
                     limit, server->handshakes, server->unbinds,
                     client->handshakes, client->unbinds);
        th_turn(loop);
    }
}

char *th_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        buf = realloc(buf, len + n + 1);
        cr_assert_not_null(buf);
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    cr_assert_not_null(buf, "%s is empty", path);
    buf[len] = '\0';
    return buf;
}
