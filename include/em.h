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
 * -EALREADY (TLS already started), -ENOTCONN (closing, or the peer ended
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

#ifdef __cplusplus
}
#endif

#endif /* EM_H */
