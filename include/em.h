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

#include <errno.h> /* the API's results are -E* constants: callers compare */
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

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

/* Frees the loop. Live connections and file watches are unbound, servers
 * closed, queued em_defer jobs cancelled and running ones waited for (their
 * done runs here), signal handlers removed. Returns 0; -EBUSY if it had to
 * close live handles or finish em_defer jobs (freed anyway); -EDEADLK,
 * freeing nothing, when called from inside one of the loop's callbacks
 * (or while em_run runs it); -EINVAL for NULL.
 *
 * After fork: called in a process other than the one that created the
 * loop (a child), it releases the loop as inherited and returns 0. Every
 * descriptor the loop owns is closed in the child (sockets, listeners,
 * pipes, files queued for sending, pidfds, epoll, eventfd, timerfd,
 * signalfd, inotify) and its memory freed; no callback runs (no unbind, no
 * done), nothing is sent, shut down, read, unregistered, unlinked,
 * signalled or reaped, so the parent's connections, servers, Unix socket
 * files, file watches and children carry on; no lock another thread held
 * at the fork is waited for (what it guards is left unfreed instead);
 * the signal mask the loop changed in the forking thread is restored in
 * the child. Descriptors em_watch borrowed stay open. Allowed even from
 * inside one of the loop's callbacks (a fork there): the child must then
 * never return into the loop, but exit, exec or jump out of the callback's
 * frames. The fork must come from the loop's thread, or from another
 * while the loop's thread is not inside libem (or only waiting in the
 * poll): a copy taken in the middle of a change cannot be released. */
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

/* The backend's pollable descriptor (the epoll fd), for embedding in
 * another loop: it is readable whenever the loop has work (I/O, a due
 * timer or timeout, a queued em_next_tick or em_schedule, a pending
 * close); the host then calls em_run_once(loop, 0). The first call adds a
 * timerfd to the loop for the deadlines. Returns it, -EINVAL, or -EMFILE /
 * -ENFILE / -ENOMEM (no timerfd). Loop thread. */
int em_backend_fd(em_loop *loop);

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
    /* The TLS handshake finished (once, before any TLS receive_data). */
    void (*ssl_handshake_completed)(em_conn *conn);
    /* With verification on (em_tls_options.verify_peer), called for every
     * certificate of the peer's chain, from the root down to the peer's own
     * certificate (depth 0); a certificate may come again when it has an
     * error (a host-name mismatch is reported at depth 0 first, an error
     * the callback accepted once more). pem is the certificate (NUL-terminated,
     * valid during the call); preverified is OpenSSL's verdict for it (1
     * good, 0 bad; em_tls_verify_error(conn) says why). Return nonzero to
     * accept, 0 to reject (the handshake then fails). Returning preverified
     * keeps OpenSSL's verdict; accepting a bad certificate is the caller's
     * decision. NULL: OpenSSL's verdict decides. */
    int (*ssl_verify_peer)(em_conn *conn, const char *pem, size_t len,
                           int depth, int preverified);
    /* Slots for proxying and descriptor watching (later features). */
    void (*proxy_target_unbound)(em_conn *conn);
    void (*proxy_completed)(em_conn *conn);
    void (*notify_readable)(em_conn *conn);
    void (*notify_writable)(em_conn *conn);
    /* Framing (em_use_lines, em_use_frames): with a framer attached these
     * get whole messages instead of receive_data getting chunks. A line,
     * without its delimiter; valid only during the call. */
    void (*receive_line)(em_conn *conn, const char *line, size_t len);
    /* Binary mode (em_set_binary_mode): the block, or each piece of it. */
    void (*receive_binary_data)(em_conn *conn, const char *data, size_t len);
    /* A sized binary block is complete (line mode is back on). */
    void (*receive_end_of_binary_data)(em_conn *conn);
    /* One length-prefixed frame, without its prefix (may be empty). */
    void (*receive_frame)(em_conn *conn, const char *data, size_t len);
} em_handler;

/* ------------------------------------------------------------------ */
/* Servers                                                              */
/* ------------------------------------------------------------------ */

typedef struct em_server_opts {
    int backlog;   /* listen() backlog; 0 = SOMAXCONN */
    int reuseport; /* nonzero: set SO_REUSEPORT (one reactor per core) */
    int ipv6_only; /* nonzero: IPV6_V6ONLY on IPv6 listeners */
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
int em_connect_unix(em_loop *loop, const char *path, const em_handler *handler,
                    void *arg, em_conn **out);

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

/* em_send_data for count pieces sent as one stream of bytes (a header and
 * a body): one writev(2) when nothing is queued. Returns as em_send_data,
 * -EINVAL also for a negative count or NULL iov with count > 0. On a
 * datagram socket the pieces make one datagram. */
int em_send_datav(em_conn *conn, const struct iovec *iov, int count);

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
int em_get_peername(const em_conn *conn, struct sockaddr *addr, socklen_t *len);

/* The local address, as em_get_peername.
 * Returns 0, -EINVAL, -ENOTCONN. */
int em_get_sockname(const em_conn *conn, struct sockaddr *addr, socklen_t *len);

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

/* ------------------------------------------------------------------ */
/* TLS                                                                  */
/* ------------------------------------------------------------------ */

/*
 * TLS (OpenSSL 3) runs on any stream connection as a transport under the
 * normal API: receive_data gets plaintext, em_send_data takes plaintext,
 * and close-after-writing, half-close, pause, timeouts, drained and the
 * outbound size keep their meaning. See docs/tls.md.
 *
 * A zeroed em_tls_options is the secure default: TLS 1.2 and newer,
 * OpenSSL's default cipher choice at security level 2, and a client that
 * verifies the server's chain against the system CA store and the host
 * name it connected to. EventMachine's permissive behaviour is expressible:
 * verify_peer = EM_TLS_VERIFY_NONE, and ephemeral_cert for a server with no
 * certificate.
 *
 * Contexts (SSL_CTX) are cached per loop, one per distinct configuration:
 * only the first em_start_tls with a configuration reads key files; later
 * ones share the context, its session cache and its ticket keys.
 */

/* Protocol versions, as bits for em_tls_options.protocols and as values
 * for min_version / max_version. */
enum {
    EM_TLS_SSLv2 = 1 << 0, /* recognised, never supported */
    EM_TLS_SSLv3 = 1 << 1, /* recognised, never supported */
    EM_TLS_TLSv1 = 1 << 2,
    EM_TLS_TLSv1_1 = 1 << 3,
    EM_TLS_TLSv1_2 = 1 << 4,
    EM_TLS_TLSv1_3 = 1 << 5,
};

/* em_tls_options.verify_peer */
enum {
    /* Client: verify the chain and the host name. Server: ask nothing. */
    EM_TLS_VERIFY_DEFAULT = 0,
    /* Verify nothing (EventMachine's default). */
    EM_TLS_VERIFY_NONE = 1,
    /* Client: as DEFAULT. Server: ask for a client certificate and verify
     * it when sent (fail_if_no_peer_cert makes it mandatory). */
    EM_TLS_VERIFY_PEER = 2,
};

/* em_tls_options.role */
enum {
    EM_TLS_ROLE_AUTO = 0, /* accepted: server; em_connect'ed: client */
    EM_TLS_ROLE_CLIENT = 1,
    EM_TLS_ROLE_SERVER = 2,
};

/* A server certificate chosen when a client's SNI name matches hostname
 * ("www.example.com", or "*.example.com" for one label). The same fields as
 * the main certificate in em_tls_options. */
typedef struct em_tls_sni_cert {
    const char *hostname;
    const char *cert_chain_file;
    const char *private_key_file;
    const char *cert_chain_pem;
    const char *private_key_pem;
    const char *private_key_pass;
} em_tls_sni_cert;

/* Every field may be left zero. Strings are read during em_start_tls only
 * (the library keeps its own copies). */
typedef struct em_tls_options {
    int role; /* EM_TLS_ROLE_* */

    /* Our certificate: PEM files or in-memory PEM strings (the file wins
     * when both are set). The chain file holds the certificate, then its
     * intermediates. A server needs one (or ephemeral_cert); a client sends
     * one when the server asks. */
    const char *cert_chain_file;
    const char *private_key_file;
    const char *cert_chain_pem;
    const char *private_key_pem;
    const char *private_key_pass; /* for an encrypted private key */
    /* Server without a certificate: use a self-signed one generated at run
     * time (P-256, once per loop). For EventMachine compatibility only:
     * clients cannot authenticate it. */
    int ephemeral_cert;
    /* Extra server certificates chosen by the client's SNI name. */
    const em_tls_sni_cert *sni_certs;
    size_t sni_cert_count;

    /* Verification. */
    int verify_peer;          /* EM_TLS_VERIFY_* */
    int fail_if_no_peer_cert; /* server: no client certificate fails */
    const char *ca_file;      /* PEM bundle; default: the system store */
    const char *ca_path;      /* hashed directory (c_rehash) */
    /* Client: the name sent as SNI. Default: the host given to em_connect
     * when it is a name (never an IP literal). */
    const char *sni_hostname;
    /* Client: the name (or IP literal) the certificate must match. Default:
     * sni_hostname, else the host given to em_connect. */
    const char *verify_hostname;
    /* Client: verify the chain but not the name (e.g. pinned by the
     * ssl_verify_peer callback instead). */
    int skip_hostname_check;

    /* Algorithms and versions. */
    const char *cipher_list;  /* TLS <= 1.2, OpenSSL syntax */
    const char *ciphersuites; /* TLS 1.3, OpenSSL syntax */
    /* EventMachine's version list: EM_TLS_TLSv1_2 | EM_TLS_TLSv1_3, ...
     * (0 = use min/max). Versions below TLS 1.2 need an explicit request
     * and lower OpenSSL's security level to allow them. */
    unsigned protocols;
    int min_version;          /* one EM_TLS_TLSv1* value; 0 = TLS 1.2 */
    int max_version;          /* one EM_TLS_TLSv1* value; 0 = newest */
    const char *ecdh_curve;   /* group list, "prime256v1" or "X25519:P-256" */
    const char *dhparam_file; /* PEM DH parameters (default: built-in) */
    /* ALPN, comma-separated in preference order ("h2,http/1.1"). A server
     * picks its first protocol the client offers and fails the handshake
     * (no_application_protocol) when there is none in common. */
    const char *alpn_protocols;
    int no_session_resumption; /* no tickets, no session cache */

    /* STARTTLS: bytes already read from the connection that belong to the
     * TLS stream (what followed the STARTTLS line in the same chunk). The
     * handshake consumes them first. Copied. */
    const void *preread;
    size_t preread_len;
} em_tls_options;

/* Starts TLS on a stream connection (TCP or Unix, accepted or outbound),
 * now or after a plain-text exchange (STARTTLS). Bytes already queued are
 * sent in clear first; everything sent after this call is encrypted. On a
 * connecting connection the handshake starts once connected; otherwise on
 * the next turn. ssl_handshake_completed follows; a failed handshake ends
 * in unbind(-EPROTO) (-ECONNABORTED when the peer closed mid-handshake,
 * -ECONNRESET when it reset), with the reason in em_tls_error(conn).
 * opts may be NULL (all defaults). Returns 0 or, leaving the connection
 * as it was (plain and usable): -EINVAL (bad option, unknown cipher or
 * curve, key not matching the certificate, min above max), -ENOENT /
 * -EACCES (a file), -EBADMSG (not PEM), -EKEYREJECTED (wrong passphrase),
 * -ENOKEY (server without certificate), -EPROTONOSUPPORT (SSLv2/SSLv3),
 * -EALREADY (TLS already started), -EBUSY (proxying from or to conn: start
 * TLS first), -ENOTCONN (closing, or the peer ended
 * the stream), -EPIPE (closing after writing, or write side shut), -ENOMEM.
 * For a bad option em_tls_error(conn) then says why (OpenSSL's reason when
 * it gave one). Loop thread. */
int em_start_tls(em_conn *conn, const em_tls_options *opts);

/* Is TLS started on conn (handshake done or not)? Returns 1 or 0. */
int em_is_tls(const em_conn *conn);

/* Has the handshake completed? Returns 1 or 0. */
int em_tls_handshake_done(const em_conn *conn);

/* The peer's certificate as PEM. Copies at most size-1 bytes and a NUL
 * into buf (buf may be NULL when size is 0). Returns the PEM's full length
 * (call again with a bigger buffer when >= size), -EINVAL, -ENOTCONN (no
 * TLS or handshake not done) or -ENOENT (the peer sent no certificate). */
int em_get_peer_cert(const em_conn *conn, char *buf, size_t size);

/* The negotiated cipher ("TLS_AES_256_GCM_SHA384"), protocol ("TLSv1.3"),
 * ALPN protocol, and the SNI name (server: what the client asked for;
 * client: what it sent). Each returns a NUL-terminated string owned by the
 * connection, valid until its unbind returns, or NULL when there is none
 * (no TLS, handshake not done, nothing negotiated). */
const char *em_tls_cipher(const em_conn *conn);
const char *em_tls_protocol(const em_conn *conn);
const char *em_tls_alpn(const em_conn *conn);
const char *em_tls_sni(const em_conn *conn);

/* Secret bits of the negotiated cipher (e.g. 256). Returns them, or
 * -ENOTCONN before the handshake, -EINVAL without TLS. */
int em_tls_cipher_bits(const em_conn *conn);

/* Did the handshake resume an earlier session? Returns 1 or 0. */
int em_tls_session_reused(const em_conn *conn);

/* Why TLS failed, as text (OpenSSL's reason, or the certificate check's),
 * or "" when nothing failed. Owned by the connection, valid until its
 * unbind returns; readable inside unbind. Never NULL. */
const char *em_tls_error(const em_conn *conn);

/* OpenSSL's certificate-verification result for the peer (X509_V_OK = 0
 * when verified or not checked). Returns it, or -EINVAL without TLS. */
long em_tls_verify_error(const em_conn *conn);

/* Drops the loop's cached TLS contexts that no connection uses, so the next
 * em_start_tls re-reads certificate and key files (after a renewal).
 * Contexts in use stay until their last connection ends. Returns the number
 * dropped, or -EINVAL. Loop thread. */
int em_tls_flush_contexts(em_loop *loop);

/* ------------------------------------------------------------------ */
/* Flow control                                                         */
/* ------------------------------------------------------------------ */

/* Stops reading from conn; writing goes on (em_pause stops both, as in
 * EventMachine). Bytes the peer sends wait in the kernel, which makes the
 * peer's sends block: backpressure. Returns 0, -EINVAL or -ENOTCONN
 * (closing). Loop thread. */
int em_pause_reading(em_conn *conn);

/* Reads again after em_pause_reading (a watermark may still hold reading
 * back). Returns 0, -EINVAL or -ENOTCONN. Loop thread. */
int em_resume_reading(em_conn *conn);

/* Is reading paused by em_pause_reading? Returns 1 or 0. */
int em_is_reading_paused(const em_conn *conn);

/* Outbound watermarks: when conn's queue (em_get_outbound_data_size) grows
 * above `high` bytes, `throttle` (conn itself when NULL) stops reading;
 * when it falls to `low` or below, reading resumes. drained still fires.
 * An echo server that sets them on each connection cannot be made to
 * buffer more than about `high` bytes by a client that never reads. high 0
 * removes them. One connection throttles at most one other, and is
 * throttled by at most one. Returns 0, -EINVAL (low >= high, or throttle
 * on another loop), -EBUSY (throttle is already throttled by another
 * connection), -ENOTCONN (either is closing), -ENOMEM. Loop thread. */
int em_set_watermarks(em_conn *conn, size_t high, size_t low,
                      em_conn *throttle);

/* ------------------------------------------------------------------ */
/* Files                                                                */
/* ------------------------------------------------------------------ */

/* Queues the file at path, whole, behind what is already queued (any size;
 * EventMachine refused files over 32 KiB). Plain sockets send it with
 * sendfile(2), never through user space; TLS reads 64 KiB at a time as the
 * socket takes it. The file is opened now: a later rename or unlink does
 * not matter, but if it shrinks before it is sent the connection closes
 * with unbind(-EIO). It counts in em_get_outbound_data_size. Returns 0,
 * -EINVAL, -ENOTCONN / -EPIPE (as em_send_data), or open's error (-ENOENT,
 * -EACCES, -EISDIR, ...) with the connection untouched. Loop thread. */
int em_send_file_data(em_conn *conn, const char *path);

typedef void (*em_file_done_cb)(em_conn *conn, int err, void *arg);

typedef struct em_stream_file_opts {
    int http_chunks; /* HTTP/1.1 chunked framing, then the last chunk */
} em_stream_file_opts;

/* em_send_file_data with EventMachine's stream_file_data extras: chunked
 * framing when opts->http_chunks (opts may be NULL), and done(conn, err,
 * arg) once the file's last byte went to the kernel (err 0), or when it
 * could not: -EIO (the file shrank; the connection then closes) or
 * -ECANCELED (the connection closed first). done runs on the loop thread,
 * never inside this call. Returns as em_send_file_data; done is not called
 * when this returns an error. */
int em_stream_file_data(em_conn *conn, const char *path,
                        const em_stream_file_opts *opts, em_file_done_cb done,
                        void *arg);

/* ------------------------------------------------------------------ */
/* Proxying                                                             */
/* ------------------------------------------------------------------ */

/* From now on bytes arriving on `from` are sent to `to` instead of to
 * from's receive_data (EventMachine's proxy_incoming_to). Between two plain
 * TCP or Unix sockets they move with splice(2) through a pipe, never
 * through user space; otherwise (TLS on either side) through the normal
 * read and send path. `bufsize` bounds what waits at `to` (its outbound
 * queue): above it `from` stops reading until `to` drains to half of it;
 * 0 means 1 MiB (EventMachine: unbounded). After `length` bytes (0 =
 * unlimited) proxying stops, from's handler gets proxy_completed, and later
 * bytes go to receive_data again. When `to` goes away first, from's
 * handler gets proxy_target_unbound and bytes go to receive_data again.
 * Returns 0, -EINVAL (NULL, from == to, different loops, not a stream),
 * -ENOTCONN (either is closing), -EBUSY (from already proxies, or to is
 * already a target), -ENOMEM, or pipe(2)'s error. Loop thread. */
int em_proxy_incoming_to(em_conn *from, em_conn *to, size_t bufsize,
                         size_t length);

/* Stops proxying from `from`; bytes already read keep going to the target.
 * Returns 0, -EINVAL, or -ENOENT when from was not proxying. */
int em_stop_proxying(em_conn *from);

/* Bytes proxied from `from` so far (counted while it proxied).
 * Returns them, or 0 for NULL. */
uint64_t em_get_proxied_bytes(const em_conn *from);

/* ------------------------------------------------------------------ */
/* Thread pool                                                          */
/* ------------------------------------------------------------------ */

/*
 * EventMachine's defer: work runs on one of the loop's pool threads, done
 * on the loop thread afterwards. The pool starts its threads one at a time
 * as work waits for them, up to its size (default 4); they block every
 * signal and are joined by em_loop_free. em_connect's name resolution runs
 * on the same pool. See docs/loop.md.
 */
typedef uint64_t em_defer_id;
/* Runs on a pool thread; its return value is done's `result`. It must not
 * call into libem except the "any thread" functions. */
typedef void *(*em_work_fn)(void *arg);
/* Runs on the loop thread: status 0 with work's result, or -ECANCELED
 * (result NULL) when the job was cancelled before it started. */
typedef void (*em_done_fn)(em_loop *loop, void *arg, void *result, int status);

/* Queues work(arg) for the pool; done(loop, arg, result, status) follows
 * on the loop thread, exactly once, never inside this call (done may be
 * NULL). Jobs start in call order. Stores a nonzero id in *out (may be
 * NULL). Returns 0, -EINVAL, -ENOMEM, -EAGAIN (no thread could be
 * started), -ECANCELED (em_loop_free in progress). Loop thread. */
int em_defer(em_loop *loop, em_work_fn work, em_done_fn done, void *arg,
             em_defer_id *out);

/* Cancels a job that has not started: its done runs later with
 * -ECANCELED. Returns 0, -EINVAL, -EBUSY (work is running or has run: done
 * gets its result), -EALREADY (cancelled before, done still to come) or
 * -ENOENT (unknown id, or done has already run). Loop thread. */
int em_cancel_defer(em_loop *loop, em_defer_id id);

/* Jobs whose done has not run yet. Returns the count, 0 for NULL. */
size_t em_defer_count(const em_loop *loop);

/* Sets how many pool threads may run at once (1 to 256). Threads are still
 * started only as work needs them; the size may not go below the threads
 * already started. Returns 0, -EINVAL, -EBUSY (below the started threads)
 * or -ENOMEM. Loop thread. */
int em_set_threadpool_size(em_loop *loop, int threads);

/* The pool's size. Returns it, or -EINVAL for NULL. */
int em_threadpool_size(const em_loop *loop);

/* ------------------------------------------------------------------ */
/* Signals                                                              */
/* ------------------------------------------------------------------ */

/*
 * Signals as ordinary callbacks on the loop thread, through a signalfd:
 * a handled signal is blocked in the thread that adds its first handler
 * (call these on the loop's thread) and read by the loop. Every other
 * thread of the process must block it too, or a signal sent to the process
 * may go to one of them and take its default action: add handlers before
 * starting threads (threads inherit the mask; libem's own threads block
 * every signal), or block the signal in them yourself. A child started with
 * fork/exec inherits the blocked mask: unblock in the child before exec.
 * Standard signals that arrive again before the loop reads them are
 * delivered once; real-time signals queue. See docs/loop.md.
 */
typedef uint64_t em_signal_id;
typedef void (*em_signal_fn)(em_loop *loop, int signo, void *arg);

/* Calls fn(loop, signo, arg) on the loop thread each time signo arrives,
 * after every handler added before it for the same signal. A loop may have
 * several handlers per signal; several loops (on their own threads) may
 * handle one signal: a signal sent to a thread reaches that thread's loop,
 * one sent to the process reaches one of them. A signal the process ignores
 * (SIG_IGN) is set to SIG_DFL while handled. Stores a nonzero id in *out
 * (may be NULL). Returns 0, -EINVAL (NULL, or a signal that cannot be
 * handled here: SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE, SIGILL, glibc's
 * 32 .. SIGRTMIN-1, out of range), -ENOMEM, -EMFILE/-ENFILE (no descriptor
 * for the signalfd). Loop thread. */
int em_add_signal(em_loop *loop, int signo, em_signal_fn fn, void *arg,
                  em_signal_id *out);

/* Removes a handler, also from inside a handler (a removed handler is not
 * called again, even for the signal being delivered). When the last
 * handler of a signal goes, a pending instance of it is discarded and the
 * thread's mask (and SIG_IGN) is restored. em_loop_free does the same for
 * every handler left. Returns 0, -EINVAL or -ENOENT (unknown or removed
 * id). Loop thread: the thread that added the first handler. */
int em_remove_signal(em_loop *loop, em_signal_id id);

/* Number of signal handlers on the loop. Returns it, 0 for NULL. */
size_t em_signal_count(const em_loop *loop);

/* ------------------------------------------------------------------ */
/* File watching                                                        */
/* ------------------------------------------------------------------ */

/*
 * EventMachine's watch_file, on inotify (one descriptor per loop, shared by
 * every watch). A watch is a handle with its own small handler, not a
 * connection: it gets file_modified, file_moved and file_deleted, and
 * unbind once, last, as connections do. See docs/loop.md.
 */
typedef struct em_file_watch em_file_watch;

/* Every slot may be NULL; the handler must outlive its watches. */
typedef struct em_file_handler {
    /* The file's contents changed (a write or a truncation; not metadata). */
    void (*file_modified)(em_file_watch *watch, void *arg);
    /* The file was renamed or moved; the watch goes on, and
     * em_file_watch_path keeps the path it was started with. */
    void (*file_moved)(em_file_watch *watch, void *arg);
    /* The file is gone: its last link was removed and the last descriptor
     * to it closed. The watch then ends (unbind follows with 0). */
    void (*file_deleted)(em_file_watch *watch, void *arg);
    /* The watch ended: 0 after em_stop_watching, file_deleted, em_stop or
     * em_loop_free; -ENODEV when its file system was unmounted. The watch
     * is freed when this returns. */
    void (*unbind)(em_file_watch *watch, void *arg, int reason);
} em_file_handler;

/* Watches the file (or directory: then only its own move or deletion is
 * reported) at path. Several watches may watch one file; each gets every
 * event. Events that arrive faster than the loop reads them may merge; if
 * the kernel's queue overflows, every watch gets file_modified. Stores the
 * watch in *out (may be NULL). Returns 0, -EINVAL (NULL or empty
 * argument), -ECANCELED (the loop is stopping), -ENOENT, -ENOTDIR,
 * -EACCES, -ENAMETOOLONG, -ELOOP (path), -ENOSPC (the user's inotify watch
 * limit), -EMFILE (the inotify instance limit) or -ENOMEM. Loop thread. */
int em_watch_file(em_loop *loop, const char *path,
                  const em_file_handler *handler, void *arg,
                  em_file_watch **out);

/* Stops watching; unbind(watch, arg, 0) follows after the current
 * callback, never inside this call. Stopping a watch that already ended
 * (its unbind pending or running) is harmless. Returns 0 or -EINVAL.
 * Loop thread. */
int em_stop_watching(em_file_watch *watch);

/* The path the watch was started with (owned by the watch, valid until its
 * unbind returns), or NULL for NULL. */
const char *em_file_watch_path(const em_file_watch *watch);

/* The loop of the watch, or NULL for NULL. */
em_loop *em_file_watch_loop(const em_file_watch *watch);

/* Live watches on the loop. Returns the count, 0 for NULL. */
size_t em_file_watch_count(const em_loop *loop);

/* ------------------------------------------------------------------ */
/* Loop settings, embedding and wakeups                                 */
/* ------------------------------------------------------------------ */

/* Milliseconds until the loop next has work without an event (its earliest
 * timer or timeout), 0 when it has some now, -1 when it has none; capped
 * by em_set_max_wait_ms. What em_run_once(loop, -1) would wait, from the
 * current clock. Returns it, or -EINVAL for NULL. Loop thread. */
int em_next_timeout_ms(const em_loop *loop);

/* Makes the loop's blocked poll return at once (em_run goes on with its
 * next turn; em_run_once returns 0); a wakeup before the poll makes it
 * return at once. Any thread, and async-signal-safe (one eventfd write,
 * errno preserved): e.g. an interrupt from a language runtime (see
 * em_set_wait_hook), or a signal handler that set a flag the loop checks.
 * The loop must outlive the call. Returns 0 or -EINVAL. */
int em_wakeup(em_loop *loop);

/* How many connections a listener accepts per readiness event before other
 * events get their turn (default 64; EventMachine's simultaneous accept
 * count). Applies to every listener of the loop, at once. Returns 0 or
 * -EINVAL (NULL, accepts < 1). Loop thread. */
int em_set_accepts_per_wakeup(em_loop *loop, int accepts);

/* The accepts per wakeup. Returns it, or -EINVAL for NULL. */
int em_get_accepts_per_wakeup(const em_loop *loop);

/* Caps every poll wait at ms milliseconds (EventMachine's timer quantum),
 * so the loop turns at least that often even with nothing to do, e.g. for a
 * binding that checks interrupts between turns; -1 (the default) removes
 * the cap. Returns 0 or -EINVAL (NULL, ms < -1). Loop thread. */
int em_set_max_wait_ms(em_loop *loop, int ms);

/* The cap on the poll wait (-1 none). Returns it, or -EINVAL for NULL. */
int em_get_max_wait_ms(const em_loop *loop);

/* ------------------------------------------------------------------ */
/* Descriptors                                                          */
/* ------------------------------------------------------------------ */

/*
 * Descriptors made elsewhere, as connections (docs/descriptors.md). A
 * descriptor belongs to one loop at a time. All of these are loop-thread
 * calls.
 */

/* Turns fd (a connected socket, pipe end, socketpair, tty, character
 * device, or a regular file) into an ordinary connection with handler:
 * post_init(conn, arg) runs before this returns, then receive_data gets
 * what is read, em_send_data writes, and unbind follows EOF or a close.
 * The connection owns fd from now on (closed at unbind; em_detach gives
 * it back) and sets O_NONBLOCK on it. A read-only descriptor refuses
 * em_send_data with -EPIPE; a write-only one is never read, and
 * em_close_write closes it (its reader's EOF). Regular files and
 * /dev/null, which epoll cannot poll, are read once per loop turn until
 * EOF (then unbind(0)) and written directly. Stores the connection in
 * *out (may be NULL). Returns 0, -EINVAL (NULL loop or handler, a
 * listening socket: see em_attach_server), -EBADF (not an open
 * descriptor), -EEXIST (already a connection, server or descriptor of
 * this loop), -EISDIR, -ECANCELED (loop stopping) or -ENOMEM. */
int em_attach(em_loop *loop, int fd, const em_handler *handler, void *arg,
              em_conn **out);

/* Watches fd without touching it: only the handler's notify_readable and
 * notify_writable run, while switched on with em_set_notify_readable /
 * em_set_notify_writable (both off at first; post_init may switch them
 * on). They are level-triggered: notify_readable comes every turn until
 * the data is read (or the switch turned off). The library never reads,
 * writes, closes or changes fd (not even O_NONBLOCK); em_send_data gives
 * -EOPNOTSUPP. Close the connection (or em_detach it) before closing fd.
 * unbind(0) follows em_close_connection or em_detach. Stores the
 * connection in *out (may be NULL). Returns 0, -EINVAL, -EBADF, -EEXIST,
 * -EPERM (a regular file, directory or /dev/null: epoll cannot poll it,
 * it is always ready), -ECANCELED or -ENOMEM. */
int em_watch(em_loop *loop, int fd, const em_handler *handler, void *arg,
             em_conn **out);

/* Switches notify_readable / notify_writable of an em_watch connection
 * on (nonzero) or off. Returns 0, -EINVAL (NULL conn, or switching on a
 * callback the handler does not have), -EOPNOTSUPP (not an em_watch
 * connection), -ENOTCONN (closing), or the backend's error for fd
 * (-EBADF when it was closed: the connection then closes with it). */
int em_set_notify_readable(em_conn *conn, int on);
int em_set_notify_writable(em_conn *conn, int on);

/* Is the switch on? Returns 1 or 0 (0 for anything but em_watch). */
int em_is_notify_readable(const em_conn *conn);
int em_is_notify_writable(const em_conn *conn);

/* Was conn made by em_watch? Returns 1 or 0. */
int em_is_watch_only(const em_conn *conn);

/* Stops watching conn's descriptor and hands it back open: the caller
 * owns it from this call (it may close it at once), with the blocking
 * mode em_attach found (descriptors libem made stay non-blocking). Data
 * still queued is dropped. unbind(conn, 0) runs later, once, as for a
 * close. Works on em_attach'ed, em_watch'ed, accepted and em_connect'ed
 * connections. Returns the descriptor, or -EINVAL, -ENOTCONN (closing, or
 * a connect that has no socket yet), -EOPNOTSUPP (TLS, stdio, processes). */
int em_detach(em_conn *conn);

/* The connection's descriptor (for em_open_stdio the one it reads, for a
 * process the socket to the child, for em_watch_process the pidfd, or
 * -EBADF without pidfds).
 * Returns it, -EINVAL, or -EBADF once closed (inside unbind). */
int em_get_fd(const em_conn *conn);

/* Adopts a socket that is already listening (a prefork parent's, systemd
 * socket activation's): like em_start_server from here on, and
 * em_stop_server closes it. Sets O_NONBLOCK. On failure fd is left open.
 * Stores the server in *out (may be NULL). Returns 0, -EINVAL (NULL loop
 * or handler, not a listening stream socket), -EBADF, -ENOTSOCK, -EEXIST
 * (already this loop's), -ECANCELED or -ENOMEM. */
int em_attach_server(em_loop *loop, int listen_fd, const em_handler *handler,
                     void *arg, em_server **out);

/* The process's stdin and stdout as one connection: receive_data gets
 * stdin (a pipe, tty, socket, regular file or /dev/null), em_send_data
 * writes stdout, EOF on stdin is the peer's EOF (unbind(0) once queued
 * output is written), em_close_write ends stdout (a socket is shut down;
 * for a pipe fd 1 is replaced by /dev/null so that the reader sees EOF).
 * fd 0 and 1 stay open after unbind and their flags are never changed
 * (ttys and pipes are read and written through private non-blocking
 * copies). Returns 0, -EINVAL, -EBADF (fd 0 or 1 closed), -EEXIST (this
 * loop already has them), -ECANCELED or -ENOMEM. */
int em_open_stdio(em_loop *loop, const em_handler *handler, void *arg,
                  em_conn **out);

/* ------------------------------------------------------------------ */
/* Processes                                                            */
/* ------------------------------------------------------------------ */

/*
 * Child processes as connections (docs/processes.md). Exits are seen
 * through pidfds (Linux 5.3+; before that, and under valgrind < 3.20, by
 * polling waitpid from a timer), so the loop never blocks on a child and no
 * SIGCHLD handler is installed; the program must not reap libem's
 * children itself (waitpid(-1, ...)), or their status is lost (-ECHILD).
 * Statuses are raw wait statuses: read them with WIFEXITED/WEXITSTATUS
 * and WIFSIGNALED/WTERMSIG from <sys/wait.h>. Loop-thread calls.
 */

/* em_popen_opts.stderr_mode */
enum {
    EM_STDERR_INHERIT = 0, /* the child writes to our stderr */
    EM_STDERR_NULL = 1,    /* to /dev/null */
    EM_STDERR_MERGE = 2,   /* into the connection, with its stdout */
};

/* Every field may be left zero. */
typedef struct em_popen_opts {
    int stderr_mode; /* EM_STDERR_* */
    const char *cwd; /* the child's working directory; NULL: ours */
    /* The child's environment ("NAME=value", NULL-terminated); NULL: ours.
     * PATH is searched in our environment either way. */
    const char *const *envp;
    /* After the connection closes while the child runs: seconds until it
     * gets SIGTERM (0 = 0.5), then seconds until SIGKILL (0 = 1); a
     * negative value never sends that signal. */
    double term_after;
    double kill_after;
} em_popen_opts;

/* Runs argv[0] (searched in PATH unless it contains a '/') with argv;
 * the child's stdin and stdout are the connection (one end of a Unix
 * socketpair): em_send_data writes to the child, receive_data reads its
 * output, em_close_write gives it EOF on stdin. unbind runs once the
 * connection is closed AND the child has exited, so em_get_status works
 * there; reason is 0 normally, or -ENOENT / -EACCES / ... when the exec
 * failed (status: exit 127), never a crash or a zombie. A child that
 * stops reading (or exits) while we still write keeps its output: what
 * was being written is dropped, later sends give -EPIPE, reading goes on
 * to EOF. Closing the connection while the child runs closes its
 * stdin/stdout, then signals it after the grace periods of opts. When the
 * loop stops, children still running are killed (SIGKILL) and reaped.
 * argv and opts are read during the call only; opts may be NULL.
 * post_init(conn, arg) runs before this returns. Stores the connection in
 * *out (may be NULL). Returns 0, -EINVAL (NULL or empty argv, bad opts),
 * -ECANCELED (loop stopping), -EMFILE, -EAGAIN (fork) or -ENOMEM. */
int em_popen(em_loop *loop, const char *const argv[], const em_popen_opts *opts,
             const em_handler *handler, void *arg, em_conn **out);

/* The child's pid (em_popen, em_watch_process), valid until unbind
 * returns. Returns it, -EINVAL, or -EOPNOTSUPP (no process). */
int em_get_pid(const em_conn *conn);

/* The exit status (raw, for the W* macros) of an em_popen child or an
 * em_watch_process process, in unbind and earlier once it exited.
 * Returns 0 with *status set, -EAGAIN (still running, or the watch was
 * closed first), -ECHILD (it exited but the status is unknown: not our
 * child, or reaped by someone else), -EINVAL or -EOPNOTSUPP. */
int em_get_status(const em_conn *conn, int *status);

/* em_system's result: output is everything the child wrote to stdout
 * (NUL-terminated, len bytes without the NUL, valid during the call);
 * status the raw wait status or -1 when unknown; err 0, or the negative
 * errno that ended it (-ENOENT: no such program, -ENOMEM, ...). */
typedef void (*em_system_cb)(em_loop *loop, void *arg, const char *output,
                             size_t len, int status, int err);

/* Runs argv like em_popen with stdin at EOF and stderr inherited,
 * collects all of stdout in memory, and calls callback(loop, arg, ...)
 * once after the child has exited (or when the loop stops: killed).
 * Returns 0 (callback will run) or em_popen's errors. */
int em_system(em_loop *loop, const char *const argv[], em_system_cb callback,
              void *arg);

/* Reports the exit of any process (not necessarily our child) through its
 * pidfd: unbind(conn, 0) runs when it has exited, or when the connection
 * is closed first (em_get_status then gives -EAGAIN). Never reaps: our
 * own child's status is read (em_get_status) and the child left for its
 * owner to wait for; another process's status is unknown (-ECHILD).
 * Stores the connection in *out (may be NULL). Returns 0, -EINVAL,
 * -ESRCH (no such process), -ECANCELED, -EMFILE or -ENOMEM. */
int em_watch_process(em_loop *loop, pid_t pid, const em_handler *handler,
                     void *arg, em_conn **out);

/* ------------------------------------------------------------------ */
/* Datagrams (UDP)                                                      */
/* ------------------------------------------------------------------ */

/*
 * A datagram socket is a connection (see docs/datagrams.md): the handler's
 * post_init runs inside em_open_datagram_socket, receive_data gets exactly
 * one whole datagram per call (up to 65,507 bytes over IPv4, 65,527 over
 * IPv6; a zero-length datagram gives len 0), and unbind runs once when it
 * is closed (em_close_connection, an inactivity timeout, the loop's stop).
 * connection_completed never runs. Inside receive_data (and after it, until
 * the next datagram) em_get_peername gives the sender, and em_send_data
 * sends one datagram back to it (-EDESTADDRREQ before anything arrived).
 * em_pause, em_resume, em_close_connection(conn, after_writing), the
 * inactivity timeout, em_get_outbound_data_size, drained, em_get_sockname
 * and socket options work as for streams. em_close_write and em_reconnect
 * give -EOPNOTSUPP, and so does em_start_tls.
 *
 * A send error is returned by the call that sent and nothing else happens:
 * the socket stays open and no other datagram is lost. When the socket's
 * buffer is full, or while the connection is paused, datagrams are queued
 * and sent in order later (as in EventMachine); one that fails then is
 * dropped silently, as the network may drop any datagram. Replies made with
 * em_send_data inside receive_data are batched into one sendmmsg after the
 * batch's callbacks (em_send_datagram sends them first, so order holds):
 * they return -EMSGSIZE, -EDESTADDRREQ, -ENOTCONN, -EPIPE at once, but a
 * kernel error on sending one (rare for a reply: a firewall, a pending ICMP
 * error) drops it silently. Without IP_RECVERR (the default) ICMP errors
 * are not reported at all; with it, a pending one may be returned by the
 * next em_send_datagram (that datagram is then not sent) and is otherwise
 * discarded; it never closes the socket.
 */

/* Opens a UDP socket bound to host:port (IPv4/IPv6 literal or name,
 * resolved synchronously like em_start_server; NULL host = 0.0.0.0; "::" is
 * dual-stack; port 0 = any free port, see em_datagram_port). Stores the
 * connection in *out (may be NULL) before post_init(conn, arg) runs.
 * Returns 0, -EINVAL, -ECANCELED (loop stopping), -EADDRINUSE, -EACCES,
 * -EADDRNOTAVAIL, -ENOENT (unknown host), -ENOMEM or another errno of
 * socket/bind; on failure nothing is left open. The loop's first datagram
 * socket allocates its receive batch (1 MiB of address space, resident
 * only as datagrams use it). Loop thread. */
int em_open_datagram_socket(em_loop *loop, const char *host, int port,
                            const em_handler *handler, void *arg,
                            em_conn **out);

/* Sends one datagram of len bytes (0 allowed) to host:port. host must be an
 * IPv4 or IPv6 literal: a name is -EINVAL, since resolving it would block
 * the loop (resolve once elsewhere and send to the address). An IPv4
 * destination works from a dual-stack IPv6 socket. data is copied (when
 * queued). Returns 0 (sent, or queued while the socket buffer is full or
 * the connection paused), -EINVAL (bad argument, port not 1..65535, a
 * name), -EOPNOTSUPP (not a datagram connection), -ENOTCONN / -EPIPE
 * (closed or closing, as em_send_data), -EMSGSIZE (above 65,507 bytes to
 * an IPv4 address, 65,527 to IPv6), -EAFNOSUPPORT (IPv6 destination from
 * an IPv4 socket), -ENOMEM, or sendto's errno (-EACCES for a broadcast
 * address without SO_BROADCAST, -ENETUNREACH, -EHOSTUNREACH, a pending
 * ICMP error with IP_RECVERR, ...): the datagram was not sent and the
 * connection stays open. Loop thread. */
int em_send_datagram(em_conn *conn, const void *data, size_t len,
                     const char *host, int port);

/* The local port of a datagram connection (useful after port 0).
 * Returns it, -EINVAL, -EOPNOTSUPP (not a datagram connection) or
 * -ENOTCONN (closed). */
int em_datagram_port(const em_conn *conn);

/* ------------------------------------------------------------------ */
/* Connection ids                                                       */
/* ------------------------------------------------------------------ */

/* A connection's id (EventMachine's signature): never 0, never handed out
 * twice by one loop, and safe to keep after the connection is gone, unlike
 * the pointer: hand it to other threads and keep it in tables.
 * em_reconnect gives a connection a new id. Returns the id, or 0 for a NULL
 * conn. Loop thread. */
uint64_t em_conn_id(const em_conn *conn);

/* The connection with this id, or NULL once it is gone: from the moment its
 * unbind starts (as EventMachine), or for an id this loop never gave. O(1),
 * no allocation. Ids are per loop: another loop's id means nothing here.
 * Loop thread. */
em_conn *em_conn_lookup(const em_loop *loop, uint64_t id);

/* em_send_data to the connection with this id, from any thread: copies
 * data, and the loop thread sends it in order with every em_schedule and
 * em_send_data_id the calling thread made before. If the connection is
 * gone or closing by then, the copy is dropped (freed) and nothing else
 * happens: its unbind tells the application; a send error closes the
 * connection as em_send_data does. Copies still queued when the loop is
 * freed are dropped. The loop must outlive the call. Returns 0 (queued),
 * -EINVAL (NULL loop, id 0, NULL data with len > 0) or -ENOMEM. */
int em_send_data_id(em_loop *loop, uint64_t id, const void *data, size_t len);

/* ------------------------------------------------------------------ */
/* Framing: lines, binary blocks, length-prefixed frames                */
/* ------------------------------------------------------------------ */

/*
 * receive_data gets arbitrary chunks. A framer turns them into messages:
 * attach one to a connection (em_use_lines, em_use_frames) and the
 * handler's receive_line / receive_binary_data / receive_frame get whole
 * messages, wherever the chunk boundaries fell. A message that lies whole
 * inside one read chunk is passed straight from the read buffer (no copy);
 * only a message split across chunks is assembled in a buffer, which is
 * bounded by the framer's maximum. The same parsers run standalone over
 * any byte source (em_lines_new, em_frames_new).
 *
 * em_pause, em_pause_reading or a watermark taking effect inside a
 * message callback stops delivery before the next message; the rest of the
 * chunk waits in the framer and comes after em_resume, before anything
 * read later. Once the connection is closing (em_close_connection, after
 * writing or not) the rest of the input is dropped.
 */

/* Line framing: EventMachine's LineText2. */
typedef struct em_line_opts {
    const char *delimiter; /* any bytes; NULL = "\n" */
    size_t delimiter_len;  /* 0 = strlen(delimiter) */
    size_t max_line;       /* longest line, delimiter excluded; 0 = 16 KiB */
    size_t max_binary;     /* largest whole binary block; 0 = 32 MiB */
    int keep_cr;           /* 0: with "\n", one trailing "\r" is removed */
} em_line_opts;

#define EM_MAX_LINE_DEFAULT ((size_t)16 * 1024)
#define EM_MAX_BINARY_DEFAULT ((size_t)32 * 1024 * 1024)

/* em_set_binary_mode flags. */
#define EM_BINARY_WHOLE 0  /* the block comes in one receive_binary_data */
#define EM_BINARY_PIECES 1 /* pieces as they arrive, unbounded memory-free */

/* Attaches a line framer to conn (opts may be NULL): every line goes to
 * receive_line without its delimiter. Replaces a framer already attached;
 * bytes that framer held are re-parsed as lines. Callable anywhere on the
 * loop thread, also inside receive_data (the rest of that chunk is not
 * re-parsed: it already went to receive_data). A line longer than
 * max_line closes the connection with unbind(-EMSGSIZE). At the peer's
 * EOF an unterminated last line is delivered before unbind (a partial
 * sized binary block goes to receive_binary_data, without the end call).
 * Returns 0, -EINVAL (NULL conn, empty delimiter, a handler without
 * receive_line), -ENOTCONN (closing), -EOPNOTSUPP (datagram or em_watch
 * connection), -ENOMEM. */
int em_use_lines(em_conn *conn, const em_line_opts *opts);

/* Changes the delimiter of conn's line framer, effective for the next line
 * (also from inside receive_line). Returns 0, -EINVAL (no line framer,
 * empty delimiter), -ENOMEM, -EBUSY (called outside a callback while a
 * partial line is buffered). */
int em_set_delimiter(em_conn *conn, const char *delimiter, size_t len);

/* Switches conn's line framer to binary mode for the next `size` bytes
 * (-EBUSY like em_set_delimiter),
 * also in the middle of a chunk (from inside receive_line). size 0 =
 * unbounded: every byte goes to receive_binary_data as it arrives until
 * em_set_line_mode. EM_BINARY_WHOLE delivers a sized block in one call
 * (at most max_binary bytes, buffered); EM_BINARY_PIECES delivers it as it
 * arrives, with no buffering and no size limit. Either way
 * receive_end_of_binary_data follows the last byte, and line mode is back
 * on before that call (so it may start another block). Returns 0, -EINVAL
 * (no line framer, unknown flags), -EMSGSIZE (WHOLE and size > max_binary).
 */
int em_set_binary_mode(em_conn *conn, uint64_t size, int flags);

/* Back to lines from binary mode (a sized block not yet complete is
 * abandoned: no end call). Returns 0 or -EINVAL (no line framer). */
int em_set_line_mode(em_conn *conn);

/* Length-prefixed framing: every frame is a big-endian length of 1, 2 or 4
 * bytes, or an unsigned LEB128 varint (protobuf's), then that many bytes. */
typedef enum em_frame_prefix {
    EM_PREFIX_U8 = 1,
    EM_PREFIX_U16 = 2,
    EM_PREFIX_U32 = 4,
    EM_PREFIX_VARINT = 8,
} em_frame_prefix;

typedef struct em_frame_opts {
    em_frame_prefix prefix; /* 0 = EM_PREFIX_U32 */
    size_t max_frame;       /* largest accepted frame; 0 = 1 MiB */
} em_frame_opts;

#define EM_MAX_FRAME_DEFAULT ((size_t)1024 * 1024)

/* Attaches a frame parser to conn (opts may be NULL): every frame goes to
 * receive_frame. A length above max_frame closes the connection with
 * unbind(-EMSGSIZE), a varint longer than 10 bytes with -EBADMSG, and an
 * EOF in the middle of a frame with -EBADMSG (the partial frame is
 * dropped). Returns as em_use_lines (-EINVAL for an unknown prefix or a
 * handler without receive_frame). */
int em_use_frames(em_conn *conn, const em_frame_opts *opts);

/* Sends data as one frame with conn's frame prefix (prefix and data leave
 * in one write). Returns as em_send_data, or -EINVAL (no frame parser
 * attached), -EMSGSIZE (len does not fit the prefix or exceeds max_frame:
 * nothing is sent). */
int em_send_frame(em_conn *conn, const void *data, size_t len);

/* Writes the prefix for a frame of len bytes into out (10 bytes suffice).
 * Returns its length, -EINVAL (unknown prefix) or -EMSGSIZE. Pure. */
int em_frame_prefix_encode(em_frame_prefix prefix, uint64_t len,
                           unsigned char out[10]);

/* Removes conn's framer; bytes it held (a partial message, input held by a
 * pause) go to receive_data at once, from inside this call. Returns 0 or
 * -EINVAL (NULL conn). No framer: 0, nothing happens. */
int em_use_raw(em_conn *conn);

/* Standalone parsers: the same framing over bytes from anywhere. Callbacks
 * get the `arg` given at creation. Not thread-safe; one thread per parser.
 */
typedef struct em_lines em_lines;
typedef struct em_line_callbacks {
    void (*line)(void *arg, const char *line, size_t len);
    void (*binary)(void *arg, const char *data, size_t len);
    void (*end_of_binary)(void *arg);
} em_line_callbacks;

/* Makes a line parser (opts may be NULL). Returns 0, -EINVAL, -ENOMEM. */
int em_lines_new(const em_line_opts *opts, const em_line_callbacks *cb,
                 void *arg, em_lines **out);
/* Parses len bytes; callbacks run inside. Returns 0, or -EMSGSIZE (a line
 * exceeded max_line: the parser stays failed and refuses more input with
 * the same error). Callbacks may call em_lines_set_* on this parser. */
int em_lines_feed(em_lines *lines, const char *data, size_t len);
/* End of input: delivers an unterminated last line (or the partial sized
 * block). Returns 0, or -EMSGSIZE if the parser had failed. */
int em_lines_finish(em_lines *lines);
/* em_set_delimiter for a standalone parser. Returns 0, -EINVAL, -ENOMEM,
 * or -EBUSY (a partial line is buffered: it was cut by the old one). */
int em_lines_set_delimiter(em_lines *lines, const char *delimiter, size_t len);
/* em_set_binary_mode for a standalone parser; -EBUSY as above. */
int em_lines_set_binary_mode(em_lines *lines, uint64_t size, int flags);
/* em_set_line_mode for a standalone parser. Returns 0 or -EINVAL. */
int em_lines_set_line_mode(em_lines *lines);
/* Bytes held for an incomplete message. */
size_t em_lines_buffered(const em_lines *lines);
/* Frees the parser (NULL is fine); never from inside its callbacks. */
void em_lines_free(em_lines *lines);

typedef struct em_frames em_frames;
typedef void (*em_frame_fn)(void *arg, const char *data, size_t len);

/* Makes a frame parser (opts may be NULL). Returns 0, -EINVAL, -ENOMEM. */
int em_frames_new(const em_frame_opts *opts, em_frame_fn on_frame, void *arg,
                  em_frames **out);
/* Parses len bytes. Returns 0, -EMSGSIZE or -EBADMSG (sticky, as above). */
int em_frames_feed(em_frames *frames, const char *data, size_t len);
/* End of input. Returns 0, -EBADMSG (inside a frame or prefix) or the
 * earlier failure. */
int em_frames_finish(em_frames *frames);
/* Bytes held for an incomplete prefix or frame. */
size_t em_frames_buffered(const em_frames *frames);
/* Frees the parser (NULL is fine); never from inside its callback. */
void em_frames_free(em_frames *frames);

/* ------------------------------------------------------------------ */
/* Backport adapters                                                    */
/* ------------------------------------------------------------------ */

/*
 * Backport's adapter model (docs/backport.md): an adapter is three
 * callbacks, and a server, the stdio server or an interval is prepared with
 * one call. An adapter becomes an em_handler the loop owns (one per
 * distinct adapter, freed by em_loop_free), so the em_adapter itself is
 * copied and need not outlive the call, and a stopped server's connections
 * live on. Adapter connections are ordinary connections: every em_
 * function works on them, and the functions below work on every
 * connection. Loop-thread calls.
 */
typedef struct em_adapter {
    /* Zeroed bytes per connection, at em_conn_state(conn). (With 0,
     * em_conn_state gives a pointer the adapter must not use.) */
    size_t state_size;
    /* The connection was accepted (or stdio opened): Backport's opening.
     * arg is what the em_prepare_* call got. Runs before any receiving. */
    void (*opening)(em_conn *conn, void *arg);
    /* The connection is gone: Backport's closing, the handler's unbind.
     * Exactly once per connection, last, after a local close, the peer's
     * EOF, a reset, a timeout or the loop's stop. reason: 0 for a normal
     * close, else a negative errno (-ECONNRESET, -ETIMEDOUT, ...).
     * em_is_closed says 1 and em_remote still answers here. */
    void (*closing)(em_conn *conn, int reason);
    /* Bytes arrived: an arbitrary chunk, never aligned to messages; valid
     * only during the call. */
    void (*receiving)(em_conn *conn, const char *data, size_t len);
} em_adapter;

/* Listens on host:port as em_start_server does (IPv4/IPv6 literal or name,
 * NULL host = all IPv4 addresses, port 0 = any free port) and runs adapter
 * on every accepted connection: opening(conn, arg) first. Each connection
 * costs one getpeername at accept (em_remote's answer) and a 28-byte
 * record behind its state. Stores the server in *out (may be NULL; stop it
 * with em_stop_server: its connections live on). Returns 0, -EINVAL (NULL
 * loop or adapter, port out of range), -ECANCELED (loop stopping),
 * -EADDRINUSE, -EACCES, -EADDRNOTAVAIL, -ENOENT (unknown host), -ENOMEM or
 * another errno of socket/bind/listen; on failure nothing is left open. */
int em_prepare_tcp_server(em_loop *loop, const char *host, int port,
                          const em_adapter *adapter, void *arg,
                          em_server **out);

/* Runs adapter on the process's stdin and stdout as one connection
 * (em_open_stdio): receiving gets stdin, em_write writes stdout, EOF on
 * stdin ends it (closing(conn, 0) once queued output is written). Stores
 * the connection in *out (may be NULL). Returns 0, -EINVAL, -EBADF (fd 0
 * or 1 closed), -EEXIST (this loop already serves them), -ECANCELED or
 * -ENOMEM. */
int em_prepare_stdio_server(em_loop *loop, const em_adapter *adapter, void *arg,
                            em_conn **out);

/* Calls fn(loop, arg) every `period` seconds (> 0, finite), first after one
 * period, on a fixed schedule (em_add_periodic_timer). Stores the timer in
 * *out (may be NULL; 0 on failure): em_cancel_timer stops it. Returns 0,
 * -EINVAL (NULL loop or fn, bad period) or -ENOMEM. */
int em_prepare_interval(em_loop *loop, double period, em_callback fn, void *arg,
                        em_timer_id *out);

/* Backport's write: em_send_data (copied, written at once if possible).
 * Returns as em_send_data. */
int em_write(em_conn *conn, const void *data, size_t len);

/* Backport's write_line, like Ruby's puts: data, then "\n" unless data
 * already ends with one; len 0 writes "\n" alone. Data and newline leave
 * together (em_send_datav: one write, no copy; one datagram on a datagram
 * socket). Returns as em_send_datav, or -EINVAL (NULL conn, NULL data with
 * len > 0). */
int em_write_line(em_conn *conn, const void *data, size_t len);

/* Backport's close: flushes every queued byte, then closes
 * (em_close_connection(conn, 1); em_close_connection(conn, 0) drops the
 * queue instead). closing follows later, never inside this call. Closing
 * twice is harmless. Returns 0 or -EINVAL. */
int em_close(em_conn *conn);

/* Backport's closed?: 1 once a close was requested (em_close, any
 * em_close_connection) or the peer is gone (EOF, reset, error), and inside
 * closing; else 0. -EINVAL for NULL (nonzero: a missing connection counts
 * as closed). */
int em_is_closed(const em_conn *conn);

/* The peer of a connection, from em_remote. */
typedef struct em_remote_addr {
    /* AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC for stdio. An IPv4 client
     * of a dual-stack IPv6 listener (::ffff:a.b.c.d) is AF_INET. */
    int family;
    int port; /* host order; 0 for Unix and stdio */
    /* NUL-terminated: "127.0.0.1", "::1" (with "%scope" when it has one),
     * a Unix path ("@name" when abstract, "" for an unnamed peer, which a
     * Unix server's clients usually are), or "stdio". */
    char host[112];
    /* NUL-terminated: "127.0.0.1:5555", "[::1]:5555", "unix:/path",
     * "unix:" (unnamed) or "stdio". */
    char text[120];
} em_remote_addr;

/* Fills *out with conn's peer (the other end, never our own address).
 * Adapter connections keep the address they had at opening, so it is
 * answered after a reset and inside closing; other connections ask the
 * socket (a datagram socket: the last sender). Returns 0, -EINVAL, or, with
 * *out zeroed: -ENOTCONN (no peer: closed, reset, not yet connected, and
 * inside unbind for non-adapter connections), -ENOTSOCK (a pipe, tty or
 * file), -EAFNOSUPPORT (another address family). */
int em_remote(const em_conn *conn, em_remote_addr *out);

/* ------------------------------------------------------------------ */
/* Language runtimes: the wait hook, stopping in two steps              */
/* ------------------------------------------------------------------ */

/*
 * For bindings to runtimes with a global lock (Ruby's GVL): the lock must
 * be dropped while the loop sleeps and held while callbacks run, and the
 * runtime's way to drop it is usually call-style (Ruby:
 * rb_nogvl(fn, arg, ubf, ubf_arg, flags)), which a before/after pair such
 * as em_set_poll_hooks cannot wrap. The wait hook is around-style: libem
 * calls the hook with a thunk that performs the wait, and the hook runs
 * the thunk inside the runtime's call, with em_wakeup as the runtime's
 * unblocking function. See docs/ruby.md.
 */

/* Performs the turn's wait (epoll_wait with the turn's timeout) and stores
 * what it found for the turn to dispatch. Call it with the thunk_arg given
 * to the hook. */
typedef void (*em_wait_thunk)(void *thunk_arg);

/* A wait hook: must call wait(thunk_arg) once, on any thread, and return
 * after it has returned. It must not call into the loop otherwise (except
 * the "any thread" functions). A hook that returns without calling wait
 * (a runtime that skips the blocking call because an interrupt is
 * pending) makes the turn go on as if the wait found nothing; no event is
 * lost (the next turn sees it). A second call of wait does nothing. */
typedef void (*em_wait_hook)(em_loop *loop, void *arg, em_wait_thunk wait,
                             void *thunk_arg);

/* Sets the loop's wait hook: from the next turn on, every wait that may
 * block (timeout not 0) goes through fn(loop, arg, wait, thunk_arg); a
 * non-blocking poll (work already due) does not call the hook. The poll
 * hooks (em_set_poll_hooks) still run before and after it. fn NULL
 * removes it. Returns 0 or -EINVAL (NULL loop). Loop thread, outside
 * the hook.
 *
 * The unblocking side is em_wakeup: any thread, async-signal-safe (one
 * eventfd write; errno is preserved), so the runtime may call it from a
 * signal handler (Ruby: RB_NOGVL_UBF_ASYNC_SAFE). A wakeup that comes
 * before the wait starts is not lost: the wait returns at once. */
int em_set_wait_hook(em_loop *loop, em_wait_hook fn, void *arg);

/*
 * Stopping in two steps (EventMachine's stop, then release_machine): a
 * binding that wants to leave the loop first and unbind its connections
 * later runs its own loop of em_run_once(loop, -1) (or with a timeout) and
 * leaves it by a flag of its own, set by its "stop" (em_wakeup ends a wait
 * in progress). It never calls em_stop, which unbinds everything at the
 * end of the turn that sees it. Between the two steps nothing runs: no
 * callback, no timer; connections, servers and timers stay as they were,
 * and the application may still call into the loop (em_send_data,
 * em_close_connection, em_connect, em_add_timer, ...) from the loop's
 * thread; what it asks for happens in a later turn, if any.
 *
 * The second step is em_loop_free, or more turns (em_run_once goes on
 * where the loop left off). em_loop_free unbinds, in this order: file
 * watches; popen children still running (killed); then servers are closed
 * (no callback); then every connection exactly once, in this order:
 * connections already closing whose unbind had not run yet (in the order
 * they closed), then live connections oldest first (accepted and outbound
 * alike, by creation), then outbound connections whose connect had failed
 * and was not yet reported. Reasons: 0 for connections that were open,
 * -ECANCELED for connects still in progress, the failure's reason for
 * failed connects, the close's reason for connections already closing.
 * During these unbinds em_is_stopping(loop) is 1, em_send_data gives
 * -ENOTCONN, em_connect, em_reconnect and the other calls that open a
 * connection give -ECANCELED, and timers never fire. em_loop_free then
 * returns -EBUSY (it closed live handles), which here is the expected
 * result, not an error.
 */

#ifdef __cplusplus
}
#endif

#endif /* EM_H */
