/*
 * test_tls_interop.c - libem's TLS against reference implementations run
 * as separate processes: OpenSSL's s_client and s_server, nginx, and the
 * two TLS examples against each other.
 *
 * A libem TLS test against itself can pass with both ends wrong in the same
 * way; these tests hold each end to an implementation we did not write.
 * Covers: a libem server under s_client (TLS 1.2 and 1.3, EC and RSA
 * certificates, ALPN, client certificates good and untrusted, data both
 * ways, a close_notify on close); a libem client against s_server (chain
 * and name verification with ca_file, a client certificate, the system
 * store rejecting the test CA, a wrong host name, an expired certificate);
 * an HTTPS GET from nginx with ALPN and session resumption (TLS 1.2 and
 * 1.3); examples/tls_echo_server and examples/tls_client talking.
 *
 * Children are forked with PR_SET_PDEATHSIG, so even a test killed by its
 * timeout leaves none behind; every test's .fini kills and reaps what is
 * left and removes its temporary directory. Their stdout and stderr come
 * back through one pipe each, drained while the loop turns, and a failed
 * assertion prints what the child said. Servers run by children listen on
 * ports found free; a child that cannot bind is started again on another.
 * Certificates come from tests/tls_certgen (the tls_certs fixture).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "em.h"
#include "helpers.h"

#define CERT(name) TH_CERT_DIR "/" name

#define PING "ping from the client\n"
#define GREETING "hello from libem\n"
#define BYE "bye from libem\n"
#define PONG "pong from s_server\n"

/* ---- child processes ---------------------------------------------------
 * A kid is one child process with its output collected into out. At most
 * MAX_KIDS per test; kids_cleanup (every test's .fini) ends them all. */

#define MAX_KIDS 4
#define KID_OUT_MAX (64 * 1024)

typedef struct kid {
    int used;
    const char *name;
    pid_t pid;
    int exited; /* reaped; status is waitpid's */
    int status;
    int out_fd; /* read end of stdout + stderr; -1 after EOF */
    int in_fd;  /* write end of stdin; -1 when closed */
    size_t len;
    char out[KID_OUT_MAX + 1];
} kid;

static kid kids[MAX_KIDS];
static char temp_dir[PATH_MAX]; /* removed by kids_cleanup when set */

static void interop_init(void)
{
    /* A child that died must not take the test with it on a write. */
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_KIDS; i++)
        kids[i].out_fd = kids[i].in_fd = -1;
}

/* In the forked child: dies with the test, gets the pipes, runs argv. */
static void kid_exec(pid_t parent, int in_fd, int out_fd, char *const argv[])
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
        _exit(126);
    execv(argv[0], argv);
    _exit(127);
}

static kid *kid_slot(void)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (!kids[i].used)
            return &kids[i];
    cr_assert_fail("more than %d child processes in one test", MAX_KIDS);
    return NULL;
}

/* Starts argv (argv[0] an absolute path) with stdin from a pipe the test
 * writes (kid_send) or /dev/null. */
static kid *kid_spawn(const char *name, const char *const argv[],
                      int with_stdin)
{
    kid *k = kid_slot();
    int out[2], in[2] = {-1, -1};
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
    if (with_stdin)
        cr_assert_eq(pipe2(in, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
    else
        in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(in[0], 0);

    memset(k, 0, sizeof *k);
    k->used = 1;
    k->name = name;
    k->out_fd = out[0];
    k->in_fd = in[1];
    pid_t parent = getpid();
    k->pid = fork();
    if (k->pid == 0)
        kid_exec(parent, in[0], out[1], (char *const *)argv);
    int fork_errno = errno;
    close(out[1]);
    close(in[0]);
    cr_assert_gt(k->pid, 0, "fork: %s", strerror(fork_errno));
    fcntl(k->out_fd, F_SETFL, fcntl(k->out_fd, F_GETFL) | O_NONBLOCK);
    return k;
}

/* Reads what the kid wrote so far (keeping the first KID_OUT_MAX bytes). */
static void kid_drain(kid *k)
{
    char buf[4096];
    while (k->out_fd >= 0) {
        ssize_t n = read(k->out_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return; /* EAGAIN: nothing more for now */
        if (n == 0) {
            close(k->out_fd);
            k->out_fd = -1;
            return;
        }
        size_t keep = KID_OUT_MAX - k->len;
        if ((size_t)n < keep)
            keep = (size_t)n;
        memcpy(k->out + k->len, buf, keep);
        k->len += keep;
        k->out[k->len] = '\0';
    }
}

static void kid_reap(kid *k, int flags)
{
    if (k->exited || k->pid <= 0)
        return;
    pid_t r;
    while ((r = waitpid(k->pid, &k->status, flags)) < 0 && errno == EINTR)
        ;
    if (r == k->pid)
        k->exited = 1;
}

/* One step of every wait below: a loop turn when there is a loop (libem
 * ends under test), else up to 10 ms for any kid's output; then every kid
 * is drained and reaped if it exited. */
static void kids_step(em_loop *loop)
{
    if (loop) {
        int rc = em_run_once(loop, 10);
        cr_assert_geq(rc, 0, "em_run_once: %s", em_strerror(rc));
    } else {
        struct pollfd p[MAX_KIDS];
        nfds_t n = 0;
        for (int i = 0; i < MAX_KIDS; i++)
            if (kids[i].used && kids[i].out_fd >= 0)
                p[n++] =
                    (struct pollfd){.fd = kids[i].out_fd, .events = POLLIN};
        if (n > 0)
            poll(p, n, 10);
        else
            th_sleep_ms(10);
    }
    for (int i = 0; i < MAX_KIDS; i++) {
        if (!kids[i].used)
            continue;
        kid_drain(&kids[i]);
        kid_reap(&kids[i], WNOHANG);
    }
}

/* Runs steps until the kid's output contains needle; fails when it exits
 * without saying it or after max_seconds. */
static void kid_wait_for(em_loop *loop, kid *k, const char *needle,
                         double max_seconds)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    while (!strstr(k->out, needle)) {
        cr_assert(!k->exited || k->out_fd >= 0,
                  "%s exited (status %#x) without printing \"%s\":\n%s",
                  k->name, k->status, needle, k->out);
        cr_assert_lt(th_now(), deadline,
                     "%s did not print \"%s\" in %.0f s:\n%s", k->name, needle,
                     max_seconds, k->out);
        kids_step(loop);
    }
}

/* Runs steps until the kid has exited and closed its output (fails after
 * max_seconds). */
static void kid_wait_done(em_loop *loop, kid *k, double max_seconds)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    while (!k->exited || k->out_fd >= 0) {
        cr_assert_lt(th_now(), deadline, "%s still running after %.0f s:\n%s",
                     k->name, max_seconds, k->out);
        kids_step(loop);
    }
}

/* kid_wait_done, then the exit code (fails if a signal ended the kid). */
static int kid_wait_exit(em_loop *loop, kid *k, double max_seconds)
{
    kid_wait_done(loop, k, max_seconds);
    cr_assert(WIFEXITED(k->status), "%s ended by signal %d:\n%s", k->name,
              WIFSIGNALED(k->status) ? WTERMSIG(k->status) : -1, k->out);
    return WEXITSTATUS(k->status);
}

/* Sends sig and waits for the end; returns the exit code, or minus the
 * signal that ended the kid. */
static int kid_stop(em_loop *loop, kid *k, int sig, double max_seconds)
{
    if (!k->exited)
        kill(k->pid, sig);
    kid_wait_done(loop, k, max_seconds);
    return WIFEXITED(k->status) ? WEXITSTATUS(k->status) : -WTERMSIG(k->status);
}

static void kid_send(kid *k, const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(k->in_fd, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "writing to %s: %s\n%s", k->name, strerror(errno),
                     k->out);
        text += n;
        len -= (size_t)n;
    }
}

static void kid_close_stdin(kid *k)
{
    if (k->in_fd >= 0)
        close(k->in_fd);
    k->in_fd = -1;
}

/* Frees the slot of a kid that has exited, for another start. */
static void kid_release(kid *k)
{
    kid_wait_done(NULL, k, 5);
    kid_close_stdin(k);
    k->used = 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Every test's .fini: no child outlives its test, no zombie either. */
static void kids_cleanup(void)
{
    for (int i = 0; i < MAX_KIDS; i++) {
        kid *k = &kids[i];
        if (!k->used)
            continue;
        if (k->pid > 0 && !k->exited) {
            kill(k->pid, SIGKILL);
            kid_reap(k, 0);
        }
        if (k->out_fd >= 0)
            close(k->out_fd);
        if (k->in_fd >= 0)
            close(k->in_fd);
        k->used = 0;
    }
    if (temp_dir[0])
        nftw(temp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    temp_dir[0] = '\0';
}

/* The kid's output must contain needle. */
static void expect_output(const kid *k, const char *needle)
{
    cr_expect(strstr(k->out, needle) != NULL, "%s did not print \"%s\":\n%s",
              k->name, needle, k->out);
}

/* Copies the rest of the line after `prefix` in the kid's output into
 * buf ("" when absent). */
static void output_field(const kid *k, const char *prefix, char *buf,
                         size_t size)
{
    buf[0] = '\0';
    const char *at = strstr(k->out, prefix);
    if (!at)
        return;
    at += strlen(prefix);
    size_t n = strcspn(at, "\r\n");
    if (n >= size)
        n = size - 1;
    memcpy(buf, at, n);
    buf[n] = '\0';
}

/* Finds a program in PATH or the sbin directories; returns 0 or -1. */
static int find_program(const char *name, char *buf, size_t size)
{
    const char *env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/local/sbin:/usr/sbin:/sbin",
             env ? env : "/usr/local/bin:/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d;
         d = strtok_r(NULL, ":", &save)) {
        snprintf(buf, size, "%s/%s", d, name);
        if (access(buf, X_OK) == 0)
            return 0;
    }
    return -1;
}

static const char *openssl_path(void)
{
    static char path[PATH_MAX];
    cr_assert_eq(find_program("openssl", path, sizeof path), 0,
                 "the openssl program is missing (scripts/deps.sh)");
    return path;
}

/* Waits until something listens on 127.0.0.1:port, or the kid exited
 * (returns 0: start it again on another port). Each probe is a plain TCP
 * connect, closed at once, that the server may log as a failed handshake. */
static int kid_wait_listening(kid *k, int port, double max_seconds)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    for (;;) {
        kids_step(NULL);
        if (k->exited)
            return 0;
        if (th_connect_errno(port) == 0)
            return 1;
        cr_assert_lt(th_now(), deadline, "%s does not listen on %d:\n%s",
                     k->name, port, k->out);
    }
}

/* Runs the loop (draining the kids) until *counter >= n. */
static void kids_run_until(em_loop *loop, const int *counter, int n,
                           double max_seconds, const kid *k)
{
    double deadline = th_now() + TH_TIMEOUT(max_seconds);
    while (*(const volatile int *)counter < n) {
        cr_assert_lt(th_now(), deadline,
                     "count %d of %d after %.0f s; %s said:\n%s", *counter, n,
                     max_seconds, k ? k->name : "-", k ? k->out : "");
        kids_step(loop);
    }
}

/* ---- one libem TLS end ---------------------------------------------------
 * tls_end is the arg of end_handler, for a libem server (one connection
 * per test) or client: post_init starts TLS with opts, the handshake sends
 * greeting, and once close_on has arrived it sends bye (when set) and
 * closes after writing. Everything TLS reports is copied for the test. */

typedef struct tls_end {
    em_tls_options opts;
    const char *greeting;
    const char *close_on;
    const char *bye;
    em_conn *conn;
    int start_rc;
    int handshakes;
    int unbinds;
    int reason;
    int closing;
    int reused;
    int cipher_bits;
    long verify_error;
    char protocol[32];
    char cipher[64];
    char alpn[32];
    char sni[128];
    char tls_error[512];
    int peer_cert_len;
    char peer_cert[8192];
    int verify_calls;
    int verify_rejects; /* calls with preverified == 0 */
    unsigned depths;    /* bit d: called for depth d */
    int verify_bad_pem; /* a pem that was not one certificate */
    char got[16384];
    size_t got_len;
} tls_end;

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

static void end_post_init(em_conn *conn, void *arg)
{
    tls_end *e = arg;
    e->conn = conn;
    e->start_rc = em_start_tls(conn, &e->opts);
    if (e->start_rc < 0) {
        copy_str(e->tls_error, sizeof e->tls_error, em_tls_error(conn));
        em_close_connection(conn, 0);
    }
}

static void end_handshake_completed(em_conn *conn)
{
    tls_end *e = em_conn_arg(conn);
    e->handshakes++;
    copy_str(e->protocol, sizeof e->protocol, em_tls_protocol(conn));
    copy_str(e->cipher, sizeof e->cipher, em_tls_cipher(conn));
    copy_str(e->alpn, sizeof e->alpn, em_tls_alpn(conn));
    copy_str(e->sni, sizeof e->sni, em_tls_sni(conn));
    e->reused = em_tls_session_reused(conn);
    e->cipher_bits = em_tls_cipher_bits(conn);
    e->peer_cert_len =
        em_get_peer_cert(conn, e->peer_cert, sizeof e->peer_cert);
    if (e->greeting) {
        int rc = em_send_data(conn, e->greeting, strlen(e->greeting));
        cr_assert_eq(rc, 0, "em_send_data: %s", em_strerror(rc));
    }
}

static void end_receive(em_conn *conn, const char *data, size_t len)
{
    tls_end *e = em_conn_arg(conn);
    cr_assert_lt(e->got_len + len, sizeof e->got, "too much data");
    cr_assert_eq(e->handshakes, 1, "data before the handshake completed");
    memcpy(e->got + e->got_len, data, len);
    e->got_len += len;
    e->got[e->got_len] = '\0';
    if (!e->close_on || e->closing || !strstr(e->got, e->close_on))
        return;
    e->closing = 1;
    if (e->bye)
        cr_assert_eq(em_send_data(conn, e->bye, strlen(e->bye)), 0);
    em_close_connection(conn, 1);
}

static int end_verify_peer(em_conn *conn, const char *pem, size_t len,
                           int depth, int preverified)
{
    tls_end *e = em_conn_arg(conn);
    e->verify_calls++;
    if (!preverified)
        e->verify_rejects++;
    if (depth >= 0 && depth < 32)
        e->depths |= 1u << depth;
    if (strlen(pem) != len || strncmp(pem, "-----BEGIN CERTIFICATE-----", 27))
        e->verify_bad_pem++;
    return preverified;
}

static void end_unbind(em_conn *conn, int reason)
{
    tls_end *e = em_conn_arg(conn);
    e->unbinds++;
    e->reason = reason;
    copy_str(e->tls_error, sizeof e->tls_error, em_tls_error(conn));
    e->verify_error = em_tls_verify_error(conn);
    e->conn = NULL;
}

static const em_handler end_handler = {
    .post_init = end_post_init,
    .ssl_handshake_completed = end_handshake_completed,
    .receive_data = end_receive,
    .unbind = end_unbind,
};

/* The same with an ssl_verify_peer callback that records its calls. */
static const em_handler end_verifying_handler = {
    .post_init = end_post_init,
    .ssl_handshake_completed = end_handshake_completed,
    .receive_data = end_receive,
    .ssl_verify_peer = end_verify_peer,
    .unbind = end_unbind,
};

/* Is the PEM text the same certificate as the PEM file at path? */
static int same_cert(const char *pem, const char *path)
{
    BIO *mem = BIO_new_mem_buf(pem, -1);
    X509 *got = mem ? PEM_read_bio_X509(mem, NULL, NULL, NULL) : NULL;
    FILE *f = fopen(path, "r");
    X509 *want = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    int same = got && want && X509_cmp(got, want) == 0;
    if (f)
        fclose(f);
    X509_free(want);
    X509_free(got);
    BIO_free(mem);
    return same;
}

/* The handshake failed: unbind(-EPROTO) with a reason, no handshake. */
static void expect_tls_failure(const tls_end *e)
{
    cr_expect_eq(e->start_rc, 0, "em_start_tls: %s", em_strerror(e->start_rc));
    cr_expect_eq(e->handshakes, 0, "the handshake completed");
    cr_expect_eq(e->reason, -EPROTO, "unbind reason %s (%s), not EPROTO",
                 em_err_name(e->reason), e->tls_error);
    cr_expect_neq(e->tls_error[0], '\0', "em_tls_error is empty");
    cr_expect_eq(e->got_len, 0, "data arrived: %s", e->got);
}

/* ---- libem server, openssl s_client -------------------------------------
 * s_client sends PING and keeps reading after its stdin ends (-ign_eof);
 * the libem server greets after the handshake and answers PING with BYE
 * and a close after writing, which must reach s_client as close_notify. */

#define MAX_ARGS 40

static kid *spawn_s_client(int port, const char *const *extra)
{
    static char connect_to[64];
    snprintf(connect_to, sizeof connect_to, "127.0.0.1:%d", port);
    const char *argv[MAX_ARGS] = {
        openssl_path(), "s_client",  "-connect",
        connect_to,     "-CAfile",   CERT("ca.pem"),
        "-servername",  "localhost", "-verify_return_error",
        "-ign_eof",
    };
    size_t n = 0;
    while (argv[n])
        n++;
    for (; extra && *extra; extra++) {
        cr_assert_lt(n + 1, MAX_ARGS);
        argv[n++] = *extra;
    }
    argv[n] = NULL;
    return kid_spawn("openssl s_client", argv, 1);
}

/* One s_client connection to a libem server configured by srv; returns
 * the finished s_client (its exit code in *code). */
static kid *serve_s_client(const em_handler *h, tls_end *srv,
                           const char *const *extra, int *code)
{
    em_loop *loop = th_loop();
    em_server *server = th_start_server(loop, h, srv);
    srv->greeting = GREETING;
    srv->close_on = PING;
    srv->bye = BYE;
    kid *k = spawn_s_client(th_listen_port(server), extra);
    kid_send(k, PING);
    kid_close_stdin(k);
    kids_run_until(loop, &srv->unbinds, 1, 10, k);
    *code = kid_wait_exit(loop, k, 10);
    th_stop_and_free(loop, server);
    return k;
}

/* s_client's "New, TLSv1.3, Cipher is X" must name what libem reports. */
static void expect_same_session(const kid *k, const tls_end *e)
{
    char line[128];
    output_field(k, "New, ", line, sizeof line);
    char proto[32] = "", cipher[64] = "";
    cr_expect_eq(sscanf(line, "%31[^,], Cipher is %63s", proto, cipher), 2,
                 "no session line in s_client's output:\n%s", k->out);
    cr_expect_str_eq(e->protocol, proto, "libem says %s, s_client %s",
                     e->protocol, proto);
    cr_expect_str_eq(e->cipher, cipher, "libem says %s, s_client %s", e->cipher,
                     cipher);
}

/* A good exchange: verified, data both ways, a clean close_notify. */
static void expect_clean_exchange(const kid *k, int code, const tls_end *srv)
{
    cr_expect_eq(srv->start_rc, 0, "em_start_tls: %s (%s)",
                 em_strerror(srv->start_rc), srv->tls_error);
    cr_expect_eq(srv->handshakes, 1);
    cr_expect_eq(srv->reason, 0, "server unbind: %s (%s)",
                 em_err_name(srv->reason), srv->tls_error);
    cr_expect_str_eq(srv->got, PING, "the server got \"%s\"", srv->got);
    cr_expect_str_eq(srv->tls_error, "", "em_tls_error: %s", srv->tls_error);
    cr_expect(srv->cipher_bits == 128 || srv->cipher_bits == 256,
              "%d secret bits", srv->cipher_bits);
    cr_expect_eq(code, 0, "s_client exited with %d:\n%s", code, k->out);
    expect_output(k, "Verify return code: 0 (ok)");
    expect_output(k, GREETING);
    expect_output(k, BYE);
    /* s_client prints "closed" for a close_notify; an EOF without one is
     * "unexpected eof while reading". */
    expect_output(k, "\nclosed\n");
    cr_expect(!strstr(k->out, "unexpected eof"),
              "the close was not a close_notify:\n%s", k->out);
    expect_same_session(k, srv);
}

static tls_end *server_end(const char *cert, const char *key)
{
    static tls_end srv;
    memset(&srv, 0, sizeof srv);
    srv.opts.cert_chain_file = cert;
    srv.opts.private_key_file = key;
    return &srv;
}

Test(tls_interop, server_default_vs_s_client, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server.pem"), CERT("server.key"));
    int code;
    kid *k = serve_s_client(&end_handler, srv, NULL, &code);
    expect_clean_exchange(k, code, srv);
    cr_expect_str_eq(srv->protocol, "TLSv1.3");
    cr_expect_str_eq(srv->sni, "localhost", "SNI seen: \"%s\"", srv->sni);
    cr_expect_eq(srv->peer_cert_len, -ENOENT,
                 "peer cert without a client certificate: %d",
                 srv->peer_cert_len);
}

Test(tls_interop, server_vs_s_client_tls1_2, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server.pem"), CERT("server.key"));
    static const char *const extra[] = {"-tls1_2", NULL};
    int code;
    kid *k = serve_s_client(&end_handler, srv, extra, &code);
    expect_clean_exchange(k, code, srv);
    cr_expect_str_eq(srv->protocol, "TLSv1.2");
    cr_expect(strncmp(srv->cipher, "ECDHE-ECDSA-", 12) == 0,
              "cipher %s for an EC certificate", srv->cipher);
}

Test(tls_interop, server_vs_s_client_tls1_3, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server.pem"), CERT("server.key"));
    static const char *const extra[] = {"-tls1_3", NULL};
    int code;
    kid *k = serve_s_client(&end_handler, srv, extra, &code);
    expect_clean_exchange(k, code, srv);
    cr_expect_str_eq(srv->protocol, "TLSv1.3");
    cr_expect(strncmp(srv->cipher, "TLS_", 4) == 0, "cipher %s", srv->cipher);
}

Test(tls_interop, server_rsa_vs_s_client_tls1_2, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server-rsa.pem"), CERT("server-rsa.key"));
    static const char *const extra[] = {"-tls1_2", NULL};
    int code;
    kid *k = serve_s_client(&end_handler, srv, extra, &code);
    expect_clean_exchange(k, code, srv);
    cr_expect(strncmp(srv->cipher, "ECDHE-RSA-", 10) == 0,
              "cipher %s for an RSA certificate", srv->cipher);
}

Test(tls_interop, server_alpn_vs_s_client, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server.pem"), CERT("server.key"));
    srv->opts.alpn_protocols = "h2,http/1.1";
    /* The client prefers http/1.1; the server's order wins. */
    static const char *const extra[] = {"-alpn", "http/1.1,h2", NULL};
    int code;
    kid *k = serve_s_client(&end_handler, srv, extra, &code);
    expect_clean_exchange(k, code, srv);
    cr_expect_str_eq(srv->alpn, "h2", "libem chose \"%s\"", srv->alpn);
    expect_output(k, "ALPN protocol: h2\n");
}

Test(tls_interop, server_sees_s_client_certificate, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server.pem"), CERT("server.key"));
    srv->opts.verify_peer = EM_TLS_VERIFY_PEER;
    srv->opts.ca_file = CERT("ca.pem");
    static const char *const extra[] = {"-cert", CERT("client.pem"), "-key",
                                        CERT("client.key"), NULL};
    int code;
    kid *k = serve_s_client(&end_verifying_handler, srv, extra, &code);
    expect_clean_exchange(k, code, srv);
    cr_assert_gt(srv->peer_cert_len, 0, "em_get_peer_cert: %s",
                 em_strerror(srv->peer_cert_len));
    cr_assert_lt(srv->peer_cert_len, (int)sizeof srv->peer_cert);
    cr_expect_eq((size_t)srv->peer_cert_len, strlen(srv->peer_cert));
    cr_expect(same_cert(srv->peer_cert, CERT("client.pem")),
              "em_get_peer_cert is not client.pem:\n%s", srv->peer_cert);
    cr_expect_eq(srv->verify_error, X509_V_OK);
    /* client <- ca: the callback saw both, accepted both. */
    cr_expect_eq(srv->depths, 3u, "depths seen: %#x", srv->depths);
    cr_expect_eq(srv->verify_rejects, 0);
    cr_expect_eq(srv->verify_bad_pem, 0);
}

Test(tls_interop, server_rejects_untrusted_client_certificate,
     .init = interop_init, .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *srv = server_end(CERT("server.pem"), CERT("server.key"));
    srv->opts.verify_peer = EM_TLS_VERIFY_PEER;
    srv->opts.ca_file = CERT("ca.pem");
    /* client2 is signed by ca2, which the server does not trust. */
    static const char *const extra[] = {"-cert", CERT("client2.pem"), "-key",
                                        CERT("client2.key"), NULL};
    int code;
    kid *k = serve_s_client(&end_verifying_handler, srv, extra, &code);
    expect_tls_failure(srv);
    cr_expect_eq(srv->verify_error,
                 X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                 "verify error %ld", srv->verify_error);
    cr_expect_gt(srv->verify_rejects, 0, "the callback saw no bad cert");
    /* s_client learns it from the server's alert. */
    expect_output(k, "alert");
    cr_expect(!strstr(k->out, GREETING), "greeted:\n%s", k->out);
}

/* ---- libem client, openssl s_server --------------------------------------
 * s_server -brief prints the protocol, cipher and client certificate; it
 * prints what it receives and sends what the test writes to its stdin.
 * With -naccept 2 it serves the readiness probe and the libem connection,
 * then exits, so its whole account of our connection is in its output,
 * after what it said about the probe (its EOF before a handshake). */

/* Starts s_server on a free port (retrying when it cannot bind). */
static kid *spawn_s_server(const char *cert, const char *key,
                           const char *const *extra, int *port)
{
    static char accept_on[64];
    for (int attempt = 0; attempt < 5; attempt++) {
        *port = th_free_port();
        snprintf(accept_on, sizeof accept_on, "127.0.0.1:%d", *port);
        const char *argv[MAX_ARGS] = {
            openssl_path(), "s_server", "-brief", "-naccept", "2", "-accept",
            accept_on,      "-cert",    cert,     "-key",     key,
        };
        size_t n = 0;
        while (argv[n])
            n++;
        for (; extra && *extra; extra++) {
            cr_assert_lt(n + 1, MAX_ARGS);
            argv[n++] = *extra;
        }
        argv[n] = NULL;
        kid *k = kid_spawn("openssl s_server", argv, 1);
        if (kid_wait_listening(k, *port, 10)) {
            kid_wait_for(NULL, k, "unexpected eof", 10);
            return k;
        }
        kid_release(k);
    }
    cr_assert_fail("s_server could not listen in 5 attempts");
    return NULL;
}

static tls_end *client_end(void)
{
    static tls_end cli;
    memset(&cli, 0, sizeof cli);
    return &cli;
}

static void connect_end(em_loop *loop, int port, tls_end *cli)
{
    int rc = em_connect(loop, "127.0.0.1", port, &end_handler, cli, NULL);
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
}

/* PING out, PONG back, then the libem client closes; returns s_server. */
static kid *talk_to_s_server(tls_end *cli, const char *const *extra)
{
    em_loop *loop = th_loop();
    int port;
    kid *k =
        spawn_s_server(CERT("server.pem"), CERT("server.key"), extra, &port);
    cli->greeting = PING;
    cli->close_on = PONG;
    size_t probe_end = k->len; /* what follows is about our connection */
    connect_end(loop, port, cli);
    kid_wait_for(loop, k, PING, 10);
    kid_send(k, PONG);
    kids_run_until(loop, &cli->unbinds, 1, 10, k);
    th_free_loop(loop);
    int code = kid_wait_exit(NULL, k, 10);
    cr_expect_eq(code, 0, "s_server exited with %d:\n%s", code, k->out);
    /* Our close was a close_notify: s_server's EOF was not unexpected. */
    cr_expect(!strstr(k->out + probe_end, "unexpected eof") &&
                  !strstr(k->out + probe_end, "ERROR"),
              "s_server saw an unclean close:\n%s", k->out + probe_end);

    cr_expect_eq(cli->start_rc, 0, "em_start_tls: %s",
                 em_strerror(cli->start_rc));
    cr_expect_eq(cli->reason, 0, "client unbind: %s (%s)",
                 em_err_name(cli->reason), cli->tls_error);
    cr_expect_str_eq(cli->got, PONG, "the client got \"%s\"", cli->got);
    cr_expect_eq(cli->verify_error, X509_V_OK, "verify error %ld",
                 cli->verify_error);
    cr_expect(same_cert(cli->peer_cert, CERT("server.pem")),
              "em_get_peer_cert is not server.pem:\n%s", cli->peer_cert);
    char field[128];
    output_field(k, "Protocol version: ", field, sizeof field);
    cr_expect_str_eq(cli->protocol, field, "libem %s, s_server %s",
                     cli->protocol, field);
    output_field(k, "Ciphersuite: ", field, sizeof field);
    cr_expect_str_eq(cli->cipher, field, "libem %s, s_server %s", cli->cipher,
                     field);
    return k;
}

Test(tls_interop, client_verifies_s_server_with_ca_file, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *cli = client_end();
    cli->opts.ca_file = CERT("ca.pem");
    kid *k = talk_to_s_server(cli, NULL);
    cr_expect_eq(cli->handshakes, 1);
    cr_expect_str_eq(cli->protocol, "TLSv1.3");
    /* An IP literal is never sent as SNI. */
    cr_expect_str_eq(cli->sni, "", "SNI sent: %s", cli->sni);
    expect_output(k, "No peer certificate");
}

Test(tls_interop, client_certificate_to_s_server, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *cli = client_end();
    cli->opts.ca_file = CERT("ca.pem");
    cli->opts.cert_chain_file = CERT("client.pem");
    cli->opts.private_key_file = CERT("client.key");
    cli->opts.max_version = EM_TLS_TLSv1_2;
    static const char *const extra[] = {"-Verify", "1", "-CAfile",
                                        CERT("ca.pem"), NULL};
    kid *k = talk_to_s_server(cli, extra);
    cr_expect_str_eq(cli->protocol, "TLSv1.2");
    expect_output(k, "Peer certificate: O = libem tests, CN = libem client");
    expect_output(k, "Verification: OK");
}

/* Connects a libem client with opts to s_server serving cert/key and
 * expects the handshake to fail with verify error want. */
static void expect_rejected(tls_end *cli, const char *cert, const char *key,
                            long want)
{
    em_loop *loop = th_loop();
    int port;
    kid *k = spawn_s_server(cert, key, NULL, &port);
    size_t probe_end = k->len;
    connect_end(loop, port, cli);
    kids_run_until(loop, &cli->unbinds, 1, 10, k);
    th_free_loop(loop);
    expect_tls_failure(cli);
    cr_expect_eq(cli->verify_error, want, "verify error %ld (%s), want %ld",
                 cli->verify_error, cli->tls_error, want);
    /* The client said why with an alert before closing. */
    kid_wait_done(NULL, k, 10);
    cr_expect(strstr(k->out + probe_end, "alert") != NULL,
              "s_server got no alert:\n%s", k->out + probe_end);
}

Test(tls_interop, client_default_store_rejects_test_ca, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *cli = client_end(); /* zeroed options: the system CA store */
    expect_rejected(cli, CERT("server.pem"), CERT("server.key"),
                    X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

Test(tls_interop, client_rejects_wrong_host_name, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *cli = client_end();
    cli->opts.ca_file = CERT("ca.pem");
    cli->opts.verify_hostname = "wrong.example";
    expect_rejected(cli, CERT("server.pem"), CERT("server.key"),
                    X509_V_ERR_HOSTNAME_MISMATCH);
}

Test(tls_interop, client_rejects_expired_certificate, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    tls_end *cli = client_end();
    cli->opts.ca_file = CERT("ca.pem");
    expect_rejected(cli, CERT("expired.pem"), CERT("expired.key"),
                    X509_V_ERR_CERT_HAS_EXPIRED);
}

/* ---- nginx ---------------------------------------------------------------
 * nginx serves one fixed answer over TLS from a configuration in a fresh
 * temporary directory (no daemon, one process, every path inside it). */

#define NGINX_BODY "hello from nginx\n"
#define HTTP_GET                                                               \
    "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

static void write_nginx_conf(const char *path, int port, const char *protocols)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fprintf(f,
            "daemon off;\n"
            "master_process off;\n"
            "worker_processes 1;\n"
            "pid %1$s/nginx.pid;\n"
            "error_log stderr notice;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            "    access_log off;\n"
            "    client_body_temp_path %1$s/body;\n"
            "    proxy_temp_path %1$s/proxy;\n"
            "    fastcgi_temp_path %1$s/fastcgi;\n"
            "    uwsgi_temp_path %1$s/uwsgi;\n"
            "    scgi_temp_path %1$s/scgi;\n"
            "    server {\n"
            "        listen 127.0.0.1:%2$d ssl;\n"
            "        ssl_certificate %3$s;\n"
            "        ssl_certificate_key %4$s;\n"
            "        ssl_protocols %5$s;\n"
            "        ssl_session_tickets on;\n"
            "        location / {\n"
            "            default_type text/plain;\n"
            "            return 200 \"%6$s\";\n"
            "        }\n"
            "    }\n"
            "}\n",
            temp_dir, port, CERT("server.pem"), CERT("server.key"), protocols,
            "hello from nginx\\n");
    cr_assert_eq(fclose(f), 0, "%s: %s", path, strerror(errno));
}

/* Starts nginx on a free port (retrying when it cannot bind), or skips
 * the test when nginx is not installed. */
static kid *spawn_nginx(const char *protocols, int *port)
{
    static char nginx[PATH_MAX], conf[PATH_MAX + 16];
    if (find_program("nginx", nginx, sizeof nginx) < 0)
        cr_skip_test("nginx is not installed (apt-get install nginx-light)");
    snprintf(temp_dir, sizeof temp_dir, "/tmp/em-nginx-XXXXXX");
    cr_assert_not_null(mkdtemp(temp_dir), "mkdtemp: %s", strerror(errno));
    snprintf(conf, sizeof conf, "%s/nginx.conf", temp_dir);
    for (int attempt = 0; attempt < 5; attempt++) {
        *port = th_free_port();
        write_nginx_conf(conf, *port, protocols);
        const char *argv[] = {nginx,    "-p", temp_dir, "-e",
                              "stderr", "-c", conf,     NULL};
        kid *k = kid_spawn("nginx", argv, 0);
        if (kid_wait_listening(k, *port, 10))
            return k;
        kid_release(k);
    }
    cr_assert_fail("nginx could not listen in 5 attempts");
    return NULL;
}

/* Stops nginx and reaps it. Without a master process nginx
 * misses a signal that lands just before it blocks in epoll_wait (it
 * checks its flags only between waits), so connections wake it up. */
static void nginx_stop(kid *k, int port)
{
    kill(k->pid, SIGTERM);
    double deadline = th_now() + TH_TIMEOUT(10);
    double next_wake = th_now() + 0.1;
    while (!k->exited) {
        cr_assert_lt(th_now(), deadline, "nginx ignores SIGTERM:\n%s", k->out);
        kids_step(NULL);
        if (th_now() >= next_wake) {
            th_connect_errno(port);
            next_wake = th_now() + 0.1;
        }
    }
    kid_wait_done(NULL, k, 5);
}

/* One HTTPS GET with verification and ALPN; the answer is in e->got. */
static void https_get(em_loop *loop, int port, tls_end *e, const kid *k)
{
    memset(e, 0, sizeof *e);
    e->opts.ca_file = CERT("ca.pem");
    e->opts.alpn_protocols = "http/1.1";
    e->opts.sni_hostname = "localhost";
    e->greeting = HTTP_GET;
    connect_end(loop, port, e);
    kids_run_until(loop, &e->unbinds, 1, 10, k);
    cr_expect_eq(e->start_rc, 0, "em_start_tls: %s", e->tls_error);
    cr_expect_eq(e->handshakes, 1);
    cr_expect_eq(e->reason, 0, "unbind: %s (%s)", em_err_name(e->reason),
                 e->tls_error);
    cr_expect_eq(e->verify_error, X509_V_OK);
    cr_expect_str_eq(e->alpn, "http/1.1", "ALPN: \"%s\"", e->alpn);
    cr_expect_str_eq(e->sni, "localhost", "SNI: \"%s\"", e->sni);
    cr_expect(strncmp(e->got, "HTTP/1.1 200 OK\r\n", 17) == 0,
              "nginx answered:\n%s", e->got);
    size_t body = strlen(NGINX_BODY);
    cr_expect(e->got_len >= body &&
                  strcmp(e->got + e->got_len - body, NGINX_BODY) == 0,
              "no body in:\n%s", e->got);
}

/* Two GETs from one loop: the second resumes the first's session. */
static void nginx_resumes(const char *nginx_protocols,
                          const char *want_protocol)
{
    int port;
    kid *k = spawn_nginx(nginx_protocols, &port);
    em_loop *loop = th_loop();
    static tls_end first, second;
    https_get(loop, port, &first, k);
    cr_expect_str_eq(first.protocol, want_protocol);
    cr_expect_eq(first.reused, 0, "the first connection resumed");
    https_get(loop, port, &second, k);
    cr_expect_str_eq(second.protocol, want_protocol);
    cr_expect_eq(second.reused, 1, "the second connection did not resume");
    th_free_loop(loop);
    nginx_stop(k, port); /* its exit code is valgrind's when traced */
}

Test(tls_interop, nginx_https_get_tls1_3_resumes, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(40))
{
    nginx_resumes("TLSv1.2 TLSv1.3", "TLSv1.3");
}

Test(tls_interop, nginx_https_get_tls1_2_resumes, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(40))
{
    nginx_resumes("TLSv1.2", "TLSv1.2");
}

/* ---- the examples ----------------------------------------------------------
 * build/examples/tls_echo_server and tls_client, found beside this test's
 * directory, run against each other. */

static void example_path(const char *name, char *buf, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0, "readlink /proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    cr_assert_not_null(slash);
    *slash = '\0';
    int len = snprintf(buf, size, "%s/../examples/%s", self, name);
    cr_assert_lt((size_t)len, size, "path too long");
    if (access(buf, X_OK) < 0)
        cr_skip_test("%s is not built (EM_BUILD_EXAMPLES=OFF?)", buf);
}

/* Starts tls_echo_server on port 0 and reads the port it printed. */
static kid *spawn_echo_example(int *port)
{
    static char path[PATH_MAX];
    example_path("tls_echo_server", path, sizeof path);
    const char *argv[] = {path, "0", CERT("server.pem"), CERT("server.key"),
                          NULL};
    kid *k = kid_spawn("tls_echo_server", argv, 0);
    static const char marker[] = "listening on 127.0.0.1:";
    kid_wait_for(NULL, k, marker, 10);
    double deadline = th_now() + TH_TIMEOUT(5);
    const char *at;
    while (!strchr(at = strstr(k->out, marker) + sizeof marker - 1, '\n')) {
        cr_assert_lt(th_now(), deadline, "half a line:\n%s", k->out);
        kids_step(NULL);
    }
    *port = atoi(at);
    cr_assert_gt(*port, 0, "no port in:\n%s", k->out);
    return k;
}

static kid *spawn_client_example(int port, const char *ca_file)
{
    static char path[PATH_MAX], port_text[16];
    example_path("tls_client", path, sizeof path);
    snprintf(port_text, sizeof port_text, "%d", port);
    const char *argv[] = {path, "127.0.0.1", port_text, ca_file, NULL};
    return kid_spawn("tls_client", argv, 1);
}

Test(tls_interop, examples_echo_round_trip, .init = interop_init,
     .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    int port;
    kid *server = spawn_echo_example(&port);
    kid *client = spawn_client_example(port, CERT("ca.pem"));
    kid_send(client, "hello\n");
    kid_wait_for(NULL, client, "hello\n", 10);
    kid_send(client, "over TLS\n");
    kid_close_stdin(client);
    int code = kid_wait_exit(NULL, client, 10);
    cr_expect_eq(code, 0, "tls_client exited with %d:\n%s", code, client->out);
    expect_output(client, "hello\nover TLS\n");
    expect_output(client, "/CN=localhost");
    expect_output(client, "TLSv1.3");
    kid_wait_for(NULL, server, "TLSv1.3 TLS_", 10);
    code = kid_stop(NULL, server, SIGINT, 10);
    cr_expect_eq(code, 0, "tls_echo_server exited with %d:\n%s", code,
                 server->out);
    expect_output(server, "stopped");
}

Test(tls_interop, examples_client_rejects_untrusted_server,
     .init = interop_init, .fini = kids_cleanup, .timeout = TH_TIMEOUT(30))
{
    int port;
    kid *server = spawn_echo_example(&port);
    /* No CA file: the system store, which does not trust the test CA. */
    kid *client = spawn_client_example(port, NULL);
    int code = kid_wait_exit(NULL, client, 10);
    cr_expect_neq(code, 0, "tls_client trusted the test CA:\n%s", client->out);
    expect_output(client, "tls_client: TLS handshake with 127.0.0.1:");
    cr_expect(!strstr(client->out, "/CN=localhost"),
              "printed the subject of a rejected certificate:\n%s",
              client->out);
    kid_wait_for(NULL, server, "connection 1: handshake failed", 10);
    code = kid_stop(NULL, server, SIGTERM, 10);
    cr_expect_eq(code, 0, "tls_echo_server:\n%s", server->out);
}
