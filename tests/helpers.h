/*
 * helpers.h - small helpers shared by the Criterion tests (tests/helpers.c).
 *
 * Every helper fails the current test with cr_assert and a message instead
 * of returning an error, and every wait is bounded, so a broken library
 * makes a test fail rather than hang.
 *
 * Blocking client sockets and the loop share the test's thread: a test
 * sends with th_send_all, then runs the loop (th_run_until, th_pump_recv)
 * so the server side can answer. A plain blocking recv before running the
 * loop would wait for the socket timeout (TH_SOCKET_TIMEOUT) and fail.
 */
#ifndef EM_TEST_HELPERS_H
#define EM_TEST_HELPERS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "em.h"

/* Slow builds (valgrind: `make valgrind` builds with EM_TEST_TIMEOUT_SCALE)
 * stretch every bound: write `.timeout = TH_TIMEOUT(10)` in Test(), and
 * th_run_until / th_pump_* scale their max_seconds by the same factor. */
#ifndef TH_TIMEOUT_SCALE
#define TH_TIMEOUT_SCALE 1
#endif
#define TH_TIMEOUT(seconds) (TH_TIMEOUT_SCALE * (seconds))

/* SO_RCVTIMEO / SO_SNDTIMEO of the helpers' client sockets, in seconds
 * (scaled too). */
#define TH_SOCKET_TIMEOUT 5

/* A new loop; fails the test if em_loop_new fails. */
em_loop *th_loop(void);

/* Frees the loop and asserts em_loop_free returned 0: the test closed
 * every connection and server itself. */
void th_free_loop(em_loop *loop);

/* Runs em_run_once(loop, 10) until *flag is nonzero; fails the test when
 * max_seconds pass first or a turn returns an error. flag is re-read every
 * turn, so it may be set from a callback or another thread. */
void th_run_until(em_loop *loop, int *flag, double max_seconds);

/* Runs turns like th_run_until until *counter >= n: for counters that
 * callbacks increment (accepts, unbinds, bytes, timers fired). */
void th_run_until_count(em_loop *loop, const int *counter, int n,
                        double max_seconds);
void th_run_until_size(em_loop *loop, const size_t *counter, size_t n,
                       double max_seconds);

/* Runs turns for `seconds` (not scaled) whatever happens, to check that
 * something does NOT happen. Fails the test if a turn returns an error. */
void th_run_for(em_loop *loop, double seconds);

/* Monotonic time in seconds, independent of any loop. */
double th_now(void);

/* Sleeps ms milliseconds (the whole time, despite signals). */
void th_sleep_ms(int ms);

/* A server on 127.0.0.1, port 0 (th_listen_port tells which), with handler
 * h and arg; fails the test if em_start_server fails. */
em_server *th_start_server(em_loop *loop, const em_handler *h, void *arg);

/* The same on the Unix socket at path (a "@name" is abstract). */
em_server *th_start_unix_server(em_loop *loop, const char *path,
                                const em_handler *h, void *arg);

/* The port a server listens on (> 0) or a failed test. */
int th_listen_port(em_server *s);

/* Stops srv (unless NULL), asserts no connection is left and frees the
 * loop (th_free_loop). */
void th_stop_and_free(em_loop *loop, em_server *srv);

/* ---- an echo server ----------------------------------------------------
 * th_echo_handler sends back whatever arrives (asserting em_send_data
 * succeeds) and counts into the th_echo given as the server's arg. A test
 * that needs more in post_init wraps th_echo_post_init in its own handler,
 * with the th_echo as the first member of its arg. */
typedef struct th_echo {
    int accepted;    /* post_init calls */
    int unbinds;     /* unbind calls */
    int last_reason; /* the latest unbind's reason */
    int bad_reasons; /* unbinds with a nonzero reason */
    em_conn *conn;   /* the latest accepted connection; NULL at its unbind */
} th_echo;

void th_echo_post_init(em_conn *conn, void *arg);
void th_echo_receive(em_conn *conn, const char *data, size_t len);
void th_echo_unbind(em_conn *conn, int reason);
extern const em_handler th_echo_handler;

/* Sends msg on a blocking client fd and expects it back whole through the
 * loop's echo (up to 127 bytes, 5 s). */
void th_expect_echo(em_loop *loop, int fd, const char *msg);

/* Closes n client fds and runs until the echo server has unbound as many
 * more connections (5 s). */
void th_close_clients(em_loop *loop, th_echo *e, const int *fds, int n);

/* ---- a counting client -------------------------------------------------
 * th_client_handler, for em_connect / em_connect_unix with a th_client as
 * arg, counts every callback and keeps what arrives in got. When hello is
 * set, post_init sends it and the client closes once it has come back
 * whole: a round trip through an echo server. */
typedef struct th_client {
    const char *hello;
    int post_inits;
    int connecting_in_post_init; /* em_is_connecting inside post_init */
    int completed;
    int unbinds;
    int reason; /* the latest unbind's reason */
    char got[128];
    size_t got_len;
} th_client;

extern const em_handler th_client_handler;

/* A blocking TCP socket connected to 127.0.0.1:port (SOCK_CLOEXEC, 5 s
 * send and receive timeouts). The connection completes in the kernel's
 * backlog, so it needs no loop turn. Fails the test on error. */
int th_client_connect(int port);

/* The same for a Unix-domain socket at path. */
int th_client_connect_unix(const char *path);

/* The same for any address (e.g. a server's em_server_sockname). */
int th_client_connect_addr(const struct sockaddr *addr, socklen_t len);

/* th_client_connect, then runs the loop until *accepted has grown (the
 * server's post_init ran for it; 5 s). Returns the client fd. */
int th_connect_accepted(em_loop *loop, int port, const int *accepted);

/* Connects a throwaway socket to 127.0.0.1:port and closes it; returns the
 * connect's errno (0: it connected). */
int th_connect_errno(int port);

/* A port on 127.0.0.1 that nothing listens on (bound once, released). */
int th_free_port(void);

/* Whether this machine can bind a TCP socket to ::1. */
int th_have_ipv6_loopback(void);

/* Sends all of data on a blocking socket (MSG_NOSIGNAL: a dead peer gives
 * a failed assertion, not SIGPIPE). */
void th_send_all(int fd, const void *data, size_t len);

/* Runs the loop while reading fd without blocking until len bytes arrived
 * or the peer closed. Returns the byte count (< len only on EOF); fails the
 * test after max_seconds or on a socket error. */
size_t th_pump_recv(em_loop *loop, int fd, void *buf, size_t len,
                    double max_seconds);

/* Runs the loop until the peer closes fd, discarding any bytes. Returns
 * 0 on an orderly EOF or the negative errno of the socket (-ECONNRESET);
 * fails the test after max_seconds. */
int th_pump_eof(em_loop *loop, int fd, double max_seconds);

/* Writes a fresh path for a Unix socket into buf ("/tmp/em-test-<pid>-<n>-
 * <tag>.sock"), unique per process and call, and removes any stale file.
 * Returns buf. */
char *th_unix_path(char *buf, size_t size, const char *tag);

/* Descriptors open in this process (a failed call must not leak one:
 * compare before and after). */
int th_count_fds(void);

/* Threads of this process now (/proc/self/task). */
int th_thread_count(void);

/* The same once joined threads have left /proc/self/task: pthread_join
 * returns when a thread clears its tid, a moment before the kernel unlists
 * it, so a count right after em_loop_free may still see it. Polls up to 2 s
 * (scaled) for `want`; returns the last count. */
int th_thread_count_settled(int want);

/* Raises the soft RLIMIT_NOFILE to at least want; fails the test if the
 * hard limit is lower. */
void th_raise_nofile(rlim_t want);

/* ---- a byte pattern ----------------------------------------------------
 * Byte i of a test stream is a bijective hash of the offset i, so a lost,
 * repeated or shifted range never matches by accident. */

/* Fills buf with the pattern's bytes [offset, offset + len). */
void th_pat_fill(uint8_t *buf, uint64_t offset, size_t len);

/* The index in buf of the first byte that is not the pattern from offset,
 * or -1. */
long th_pat_check(const uint8_t *buf, uint64_t offset, size_t len);

/* Runs the loop (5 ms turns) while reading fd without blocking until EOF,
 * checking that the bytes continue the pattern at offset and that no more
 * than limit arrive in all. Returns offset plus the bytes read; *err gets 0
 * on EOF or the socket's negative errno. Fails the test on a wrong byte or
 * after max_seconds. */
size_t th_pump_pattern_eof(em_loop *loop, int fd, size_t offset, size_t limit,
                           int *err, double max_seconds);

/* ---- TLS peers ---------------------------------------------------------
 * th_tls_handler, with a th_tls as the arg of em_start_server / em_connect,
 * starts TLS in post_init with the th_tls's options (unless manual_start),
 * records every callback and what the getters said at the handshake, keeps
 * what arrives (bounded by got_cap, growing got), echoes it when echo is
 * set, and sends `hello` once the handshake completes. Several connections
 * may share one th_tls: counters add up, strings are the latest. The
 * certificates made by tests/tls_certgen.c live in TH_CERT_DIR. */
typedef struct th_tls {
    em_tls_options opts;
    int manual_start; /* do not start TLS in post_init */
    int echo;
    const char *hello;
    int close_after_hello_reply; /* close once got_len >= strlen(hello) */
    int verify_answer; /* ssl_verify_peer: -1 keep OpenSSL's verdict */

    int post_inits;
    int start_err; /* em_start_tls's result in post_init */
    int completed; /* connection_completed */
    int handshakes;
    int unbinds;
    int reason; /* latest unbind */
    int verify_calls;
    int verify_preverified_ok; /* calls with preverified == 1 */
    int verify_max_depth;
    int pem_ok; /* every pem began with BEGIN CERTIFICATE */
    int reused; /* handshakes that resumed */
    int bits;
    char error[256]; /* em_tls_error at the latest unbind */
    char protocol[32];
    char cipher[64];
    char alpn[64];
    char sni[128];
    unsigned char *got; /* malloc'd; th_tls_reset frees */
    size_t got_len;
    size_t chunks;
    em_conn *conn; /* latest connection, NULL after its unbind */
} th_tls;

extern const em_handler th_tls_handler;

/* A fresh th_tls: zero, keeping OpenSSL's verdict in ssl_verify_peer. */
#define TH_TLS_INIT                                                            \
    {                                                                          \
        .verify_answer = -1                                                    \
    }

/* Frees t->got and makes t TH_TLS_INIT again. */
void th_tls_reset(th_tls *t);

/* TH_CERT_DIR "/" name. The string stays valid for the whole process (one
 * per distinct name), so options may keep it. */
const char *th_cert(const char *name);

/* Server options: cert_chain_file/private_key_file = <name>.pem/.key. */
void th_tls_server_opts(em_tls_options *o, const char *name);

/* Client options that trust the test CA (ca_file = ca.pem). */
void th_tls_client_opts(em_tls_options *o);

/* Runs the loop until both sides' handshakes (or unbinds) happened. */
void th_tls_run_handshake(em_loop *loop, th_tls *server, th_tls *client);

/* Reads a whole file into a malloc'd NUL-terminated string. */
char *th_read_file(const char *path);

#endif
