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

/* Runs turns for `seconds` (not scaled) whatever happens, to check that
 * something does NOT happen. Fails the test if a turn returns an error. */
void th_run_for(em_loop *loop, double seconds);

/* Monotonic time in seconds, independent of any loop. */
double th_now(void);

/* The port a server listens on (> 0) or a failed test. */
int th_listen_port(em_server *s);

/* A blocking TCP socket connected to 127.0.0.1:port (SOCK_CLOEXEC, 5 s
 * send and receive timeouts). The connection completes in the kernel's
 * backlog, so it needs no loop turn. Fails the test on error. */
int th_client_connect(int port);

/* The same for a Unix-domain socket at path. */
int th_client_connect_unix(const char *path);

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

#endif
