/*
 * em.h - libem, EventMachine's reactor in C.
 *
 * This header is the manual. A loop (em_loop) runs callbacks; servers
 * (em_server) accept connections; every connection (em_conn) is one object
 * with a handler (a struct of callbacks) and zeroed per-connection state the
 * handler asked for. Everything runs on the loop's thread except the calls
 * marked "any thread".
 *
 * Conventions:
 *   - Functions return 0 (or a count) on success and a negative errno on
 *     failure; em_strerror() turns one into text.
 *   - Callbacks that report a failure get the same negative errno.
 *   - The library owns em_loop, em_server and em_conn memory. A connection
 *     stays valid until its unbind callback returns; a server until
 *     em_stop_server() returns; a loop until em_loop_free() returns.
 *   - Data passed to the library is copied before the call returns; data
 *     passed to a callback is valid only until that callback returns.
 */
#ifndef EM_H
#define EM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EM_VERSION_MAJOR 0
#define EM_VERSION_MINOR 1
#define EM_VERSION_PATCH 0

typedef struct em_loop em_loop;
typedef struct em_conn em_conn;
typedef struct em_server em_server;
typedef uint64_t em_timer_id;

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

/* Describes a negative errno returned by any em_ function.
 * Returns a static string; never NULL, never to be freed. */
const char *em_strerror(int err);

/* Names a negative errno ("ECONNREFUSED"), "OK" for 0, "UNKNOWN" when it
 * has no name. Returns a static string; never NULL, never to be freed. */
const char *em_err_name(int err);

/* ------------------------------------------------------------------ */
/* Reactor                                                              */
/* ------------------------------------------------------------------ */

/* Creates a loop (epoll backend). Stores it in *out, owned by the caller
 * until em_loop_free(). Returns 0, -EINVAL or the errno of epoll/eventfd. */
int em_loop_new(em_loop **out);

/* Frees the loop. Live connections are unbound and servers closed first.
 * Returns 0, or -EBUSY if it had to close live handles (freed anyway). */
int em_loop_free(em_loop *loop);

/* Runs the loop until em_stop(); then unbinds every connection and closes
 * every server before returning. Returns 0, -EINVAL or -EBUSY (re-entered). */
int em_run(em_loop *loop);

/* Runs one turn: waits at most timeout_ms (-1 = until something happens,
 * 0 = not at all), runs due callbacks. Returns 1 if the loop was stopped
 * (every connection then unbound), 0 otherwise, or a negative errno. */
int em_run_once(em_loop *loop, int timeout_ms);

/* Asks the loop to stop after the current turn. Any thread, and safe from
 * a signal handler. Returns 0 or -EINVAL. */
int em_stop(em_loop *loop);

/* Is em_stop() pending or in progress? Returns 1 or 0.
 * Loop thread. */
int em_is_stopping(const em_loop *loop);

typedef void (*em_callback)(em_loop *loop, void *arg);

/* Runs fn(loop, arg) on the loop thread at the start of the next turn, in
 * call order. Loop thread only. Returns 0, -EINVAL or -ENOMEM. */
int em_next_tick(em_loop *loop, em_callback fn, void *arg);

/* Like em_next_tick but from any thread: queues fn and wakes the loop.
 * The loop must outlive the call. Returns 0, -EINVAL or -ENOMEM. */
int em_schedule(em_loop *loop, em_callback fn, void *arg);

/* The loop's cached time in seconds (CLOCK_MONOTONIC), updated once per
 * turn after polling. Cheap: no syscall. */
double em_now(const em_loop *loop);

/* The loop's cached time in milliseconds (CLOCK_MONOTONIC).
 * Cheap: no syscall. */
uint64_t em_now_ms(const em_loop *loop);

/* Re-reads the clock into the loop's cached time. Returns the new time in
 * seconds. One clock_gettime (vDSO, usually no syscall). */
double em_update_time(em_loop *loop);

/* Number of live connections (accepted, connecting and connected) on the
 * loop. Returns the count, or 0 for a NULL loop. */
size_t em_connection_count(const em_loop *loop);

/* Called around the blocking poll, e.g. to release a language runtime's
 * lock while the loop sleeps. Either may be NULL. Returns 0 or -EINVAL. */
int em_set_poll_hooks(em_loop *loop, em_callback before_poll,
                      em_callback after_poll, void *arg);

/* The backend's pollable descriptor (the epoll fd), readable when the loop
 * has work; for embedding in another loop. Returns it or -EINVAL. */
int em_backend_fd(const em_loop *loop);

/* ------------------------------------------------------------------ */
/* Timers                                                               */
/* ------------------------------------------------------------------ */

/* Calls fn(loop, arg) once after `seconds` (>= 0, finite; resolution 1 us).
 * Stores the id in *out if out != NULL. Returns 0, -EINVAL or -ENOMEM. */
int em_add_timer(em_loop *loop, double seconds, em_callback fn, void *arg,
                 em_timer_id *out);

/* Calls fn every `seconds` (> 0) on a fixed schedule: next deadline is
 * previous deadline + interval. Returns 0, -EINVAL or -ENOMEM. */
int em_add_periodic_timer(em_loop *loop, double seconds, em_callback fn,
                          void *arg, em_timer_id *out);

/* Cancels a timer. Cancelling one that already fired or was cancelled is a
 * no-op. Returns 0, or -ENOENT when the timer is no longer pending. */
int em_cancel_timer(em_loop *loop, em_timer_id id);

/* Number of pending timers on the loop.
 * Returns the count, or 0 for a NULL loop. */
size_t em_timer_count(const em_loop *loop);

/* ------------------------------------------------------------------ */
/* Handlers                                                             */
/* ------------------------------------------------------------------ */

/*
 * A handler is EventMachine's handler module: the callbacks one kind of
 * connection answers to. Every slot may be NULL. The handler must outlive
 * every connection using it (a static const struct is typical).
 *
 * Order for one connection: post_init first; then connection_completed
 * (outbound only), receive_data, drained in any order; unbind last, exactly
 * once, never from inside a call the application made.
 */
typedef struct em_handler {
    /* Bytes of per-connection state (zeroed) available via em_conn_state. */
    size_t state_size;
    /* The connection exists; `arg` is what em_start_server/em_connect got.
     * Data sent here goes out once the connection is established. */
    void (*post_init)(em_conn *conn, void *arg);
    /* An outbound connection was established. */
    void (*connection_completed)(em_conn *conn);
    /* Bytes arrived: an arbitrary chunk, never aligned to messages.
     * `data` is valid only during the call. */
    void (*receive_data)(em_conn *conn, const char *data, size_t len);
    /* The outbound queue became empty after having been non-empty. */
    void (*drained)(em_conn *conn);
    /* The connection is gone. reason: 0 for a normal close (local close or
     * peer EOF), else a negative errno (-ECONNREFUSED, -ECONNRESET,
     * -ETIMEDOUT, -ECANCELED for a connect the loop abandoned, ...).
     * conn stays valid until this returns; em_reconnect may be called here. */
    void (*unbind)(em_conn *conn, int reason);
    /* Slots for TLS, proxying and descriptor watching (later features). */
    void (*ssl_handshake_completed)(em_conn *conn);
    int (*ssl_verify_peer)(em_conn *conn, const char *pem, size_t len);
    void (*proxy_target_unbound)(em_conn *conn);
    void (*proxy_completed)(em_conn *conn);
    void (*notify_readable)(em_conn *conn);
    void (*notify_writable)(em_conn *conn);
} em_handler;

/* ------------------------------------------------------------------ */
/* Servers                                                              */
/* ------------------------------------------------------------------ */

typedef struct em_server_opts {
    int backlog;    /* listen() backlog; 0 = SOMAXCONN */
    int reuseport;  /* nonzero: set SO_REUSEPORT (one reactor per core) */
    int ipv6_only;  /* nonzero: IPV6_V6ONLY on IPv6 listeners */
} em_server_opts;

/* Listens on host:port (IPv4/IPv6 literal or name, resolved synchronously;
 * NULL host = all IPv4 addresses; port 0 = any free port). Each accepted
 * connection gets `handler` and post_init(conn, arg). opts may be NULL.
 * Stores the server in *out (may be NULL). Returns 0, -EINVAL, -EADDRINUSE,
 * -EACCES, -EADDRNOTAVAIL, -ENOENT (unknown host), -ENOMEM or another errno;
 * on failure nothing is left open. */
int em_start_server(em_loop *loop, const char *host, int port,
                    const em_handler *handler, void *arg,
                    const em_server_opts *opts, em_server **out);

/* Listens on a Unix-domain socket at path. A stale socket file whose server
 * is gone is replaced; a live one gives -EADDRINUSE. Returns as above. */
int em_start_unix_server(em_loop *loop, const char *path,
                         const em_handler *handler, void *arg,
                         const em_server_opts *opts, em_server **out);

/* Closes the listener now (the port is free when this returns; a Unix
 * socket file is removed). Accepted connections live on. Returns 0/-EINVAL. */
int em_stop_server(em_server *server);

/* The port the server is bound to (useful after port 0).
 * Returns the port, 0 for Unix servers, or -EINVAL. */
int em_server_port(const em_server *server);

/* The listening socket's address. Copies at most *len bytes into addr and
 * sets *len to the full length. Returns 0, -EINVAL or an errno. */
int em_server_sockname(const em_server *server, struct sockaddr *addr,
                       socklen_t *len);

/* ------------------------------------------------------------------ */
/* Clients                                                              */
/* ------------------------------------------------------------------ */

/* Connects to host:port without blocking: names are resolved off the loop
 * thread and every address is tried in order. post_init runs before this
 * returns; connection_completed on success, unbind(reason) on failure.
 * Stores the connection in *out (may be NULL). Returns 0, -EINVAL, -ENOMEM. */
int em_connect(em_loop *loop, const char *host, int port,
               const em_handler *handler, void *arg, em_conn **out);

/* em_connect, but first binds the socket to bind_host:bind_port (either may
 * be NULL/0 for "any"). Returns as em_connect. */
int em_bind_connect(em_loop *loop, const char *bind_host, int bind_port,
                    const char *host, int port, const em_handler *handler,
                    void *arg, em_conn **out);

/* Connects to a Unix-domain socket. Returns as em_connect; a missing or
 * dead socket ends in unbind(-ENOENT or -ECONNREFUSED). */
int em_connect_unix(em_loop *loop, const char *path,
                    const em_handler *handler, void *arg, em_conn **out);

/* Connects conn again to host:port, keeping its handler and state; only
 * inside its unbind callback (EventMachine's reconnect). post_init is not
 * called again. Returns 0, -EINVAL, -EISCONN, -ECANCELED (loop stopping). */
int em_reconnect(em_conn *conn, const char *host, int port);

/* ------------------------------------------------------------------ */
/* Connections                                                          */
/* ------------------------------------------------------------------ */

/* The zeroed per-connection state of handler->state_size bytes (NULL when
 * 0). Owned by the library, freed after unbind returns. */
void *em_conn_state(const em_conn *conn);

/* The loop this connection belongs to.
 * Returns NULL for a NULL conn. */
em_loop *em_conn_loop(const em_conn *conn);

/* The arg given to em_start_server/em_connect (what post_init got).
 * Returns it, or NULL. */
void *em_conn_arg(const em_conn *conn);

/* Queues a copy of data and sends it without blocking: writes at once when
 * nothing is queued and queues only the rest. Returns 0, -EINVAL, -ENOMEM,
 * -ENOTCONN (closed), -EPIPE (close requested or write side shut down), or
 * the socket's error (-ECONNRESET, ...) when the write failed: the
 * connection then closes and its unbind gets the same reason. */
int em_send_data(em_conn *conn, const void *data, size_t len);

/* Closes the connection. after_writing = 0 drops queued data; nonzero
 * flushes every queued byte first. unbind follows later, never from inside
 * this call. A later immediate close upgrades an after-writing one.
 * Returns 0 or -EINVAL; closing twice is harmless. */
int em_close_connection(em_conn *conn, int after_writing);

/* Shuts the write side down (FIN) once the queue has drained; reading goes
 * on until the peer closes. Returns 0, -EINVAL or -ENOTCONN. */
int em_close_write(em_conn *conn);

/* Stops reading and writing on the connection until em_resume (pausing
 * inside receive_data takes effect before the next chunk).
 * Returns 0, -EINVAL or -ENOTCONN (closing). */
int em_pause(em_conn *conn);

/* Resumes a paused connection.
 * Returns 0, -EINVAL or -ENOTCONN (closing). */
int em_resume(em_conn *conn);

/* Is the connection paused?
 * Returns 1 or 0. */
int em_is_paused(const em_conn *conn);

/* Bytes queued for sending and not yet accepted by the kernel.
 * Returns the count, or 0 for a NULL conn. */
size_t em_get_outbound_data_size(const em_conn *conn);

/* Closes the connection with unbind(-ETIMEDOUT) when no byte is read or
 * written for `seconds` (0 = never, the default), counted from this call or
 * the last traffic after it. Re-arming costs O(1). Returns 0 or -EINVAL. */
int em_set_comm_inactivity_timeout(em_conn *conn, double seconds);

/* The inactivity timeout in seconds (0 = off).
 * Returns it, or 0 for a NULL conn. */
double em_get_comm_inactivity_timeout(const em_conn *conn);

/* Fails a still-pending connect with unbind(-ETIMEDOUT) after `seconds`
 * (default 20, 0 = never). Returns 0 or -EINVAL. */
int em_set_pending_connect_timeout(em_conn *conn, double seconds);

/* The pending-connect timeout in seconds.
 * Returns it, or 0 for a NULL conn. */
double em_get_pending_connect_timeout(const em_conn *conn);

/* Seconds since the connection last read or wrote a byte (loop time).
 * Returns it, or 0 for a NULL conn. */
double em_get_idle_time(const em_conn *conn);

/* Is the outbound connection still connecting?
 * Returns 1 or 0. */
int em_is_connecting(const em_conn *conn);

/* The remote address. Copies at most *len bytes into addr, sets *len to the
 * full length. Returns 0, -EINVAL, -ENOTCONN. */
int em_get_peername(const em_conn *conn, struct sockaddr *addr,
                    socklen_t *len);

/* The local address, as em_get_peername.
 * Returns 0, -EINVAL, -ENOTCONN. */
int em_get_sockname(const em_conn *conn, struct sockaddr *addr,
                    socklen_t *len);

/* getsockopt on the connection's socket. *len in/out as getsockopt.
 * Returns 0, -EINVAL, -ENOTCONN or the errno. */
int em_get_sock_opt(const em_conn *conn, int level, int name, void *value,
                    socklen_t *len);

/* setsockopt on the connection's socket.
 * Returns 0, -EINVAL, -ENOTCONN or the errno. */
int em_set_sock_opt(em_conn *conn, int level, int name, const void *value,
                    socklen_t len);

/* Turns TCP keepalive on; idle/interval (seconds) and count of 0 keep the
 * system default. Returns 0, -EINVAL, -ENOTCONN or the errno. */
int em_enable_keepalive(em_conn *conn, int idle, int interval, int count);

/* Turns TCP keepalive off.
 * Returns 0, -EINVAL, -ENOTCONN or the errno. */
int em_disable_keepalive(em_conn *conn);

/* The socket's pending error (SO_ERROR) as a negative errno; EventMachine's
 * error?. Returns 0 when healthy, -ENOTCONN when there is no socket. */
int em_conn_error(const em_conn *conn);

#ifdef __cplusplus
}
#endif

#endif /* EM_H */
