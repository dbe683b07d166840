/*
 * tls.c - the TLS transport: a connection's SSL object, its handshake, its
 * record I/O, and the getters.
 *
 * OpenSSL drives the socket itself through a small BIO of ours (recv/send
 * with MSG_NOSIGNAL) rather than through a memory BIO pair: ciphertext goes
 * from the kernel straight into OpenSSL's record buffer and back, with no
 * copy in between and no SIGPIPE, which OpenSSL's own socket BIO (write(2))
 * could raise. The BIO also serves the STARTTLS preread bytes before the
 * socket. An io_uring backend would replace only this BIO's two calls.
 *
 * The connection code stays TLS-blind: it reads plaintext through
 * transport->read and writes plaintext through transport->writev. What TLS
 * adds is handled here:
 *   - the handshake runs in its own step (never inside receive_data or
 *     em_send_data); ssl_handshake_completed comes once, when it ends;
 *   - OpenSSL may need the other direction (a read that must write, a
 *     write that must read): em__tls_interest asks the poller for it;
 *   - OpenSSL may hold plaintext the socket no longer signals (read-ahead,
 *     a full read buffer, a paused connection): such connections go on
 *     loop->tls_pending and get a pass next turn without an event;
 *   - bytes queued before em_start_tls go out in clear (raw_prefix), then
 *     the handshake starts.
 * Reads fill the loop's 64 KiB buffer from as many records as are there, so
 * receive_data sees full chunks, not EventMachine's 2 KB pieces.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls.h"

static int is_closing(const em_conn *conn)
{
    return (conn->flags & EM__CONN_CLOSING) != 0;
}

/* Every SSL call starts from a clean error queue (SSL_get_error needs it)
 * and a clean socket errno. */
static void begin_op(em__tls *t)
{
    ERR_clear_error();
    t->sys_errno = 0;
}

/* ---- the socket BIO -------------------------------------------------- */

static int bio_read(BIO *bio, char *buf, int len)
{
    em__tls *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (t->preread_off < t->preread_len) {
        size_t n = t->preread_len - t->preread_off;
        if (n > (size_t)len)
            n = (size_t)len;
        memcpy(buf, t->preread + t->preread_off, n);
        t->preread_off += n;
        if (t->preread_off == t->preread_len) {
            free(t->preread);
            t->preread = NULL;
            t->preread_len = t->preread_off = 0;
        }
        return (int)n;
    }
    for (;;) {
        ssize_t n = recv(t->conn->watcher.fd, buf, (size_t)len, 0);
        if (n >= 0) {
            if (n > 0 && (t->flags & EM__TLS_HANDSHAKING))
                em__conn_touch(t->conn);
            t->socket_drained = n < len;
            return (int)n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(bio);
        else
            t->sys_errno = errno;
        return -1;
    }
}

static int bio_write(BIO *bio, const char *buf, int len)
{
    em__tls *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    for (;;) {
        ssize_t n = send(t->conn->watcher.fd, buf, (size_t)len, MSG_NOSIGNAL);
        if (n >= 0) {
            if (n > 0 && (t->flags & EM__TLS_HANDSHAKING))
                em__conn_touch(t->conn);
            return (int)n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_write(bio);
        else
            t->sys_errno = errno;
        return -1;
    }
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)bio;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* nothing is buffered here */
}

static int bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

BIO_METHOD *em__tls_bio_method_new(void)
{
    int type = BIO_get_new_index();
    if (type < 0)
        return NULL;
    BIO_METHOD *m = BIO_meth_new(type | BIO_TYPE_SOURCE_SINK, "libem socket");
    if (!m)
        return NULL;
    if (!BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) ||
        !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return NULL;
    }
    return m;
}

/* ---- failures -------------------------------------------------------- */

static void set_error(em__tls *t, const char *fmt, const char *detail)
{
    if (!t->error[0])
        snprintf(t->error, sizeof(t->error), fmt, detail);
}

/* Turns a failed SSL call into the errno the connection closes with, and
 * the text em_tls_error gives. */
static int fatal(em__tls *t, int ssl_error)
{
    t->flags |= EM__TLS_FATAL;
    unsigned long e = ERR_peek_last_error();
    int handshaking = (t->flags & EM__TLS_HANDSHAKING) != 0;
    int code;
    if (t->sys_errno) {
        code = -t->sys_errno;
        set_error(t, "%s", em_strerror(code));
    } else if (ssl_error == SSL_ERROR_SYSCALL ||
               ssl_error == SSL_ERROR_ZERO_RETURN ||
               (ssl_error == SSL_ERROR_SSL &&
                ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
        code = -ECONNABORTED;
        set_error(t, "%s",
                  handshaking ? "the peer closed the connection during the "
                                "handshake"
                              : "unexpected EOF: the peer closed the "
                                "connection without close_notify");
    } else {
        code = -EPROTO;
        const char *reason = e ? ERR_reason_error_string(e) : NULL;
        long verify = SSL_get_verify_result(t->ssl);
        if (verify != X509_V_OK &&
            ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
            set_error(t, "certificate verify failed: %s",
                      X509_verify_cert_error_string(verify));
        else
            set_error(t, "%s", reason ? reason : "TLS protocol error");
    }
    ERR_clear_error();
    return code;
}

/* ---- handshake ------------------------------------------------------- */

static int is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 ||
           inet_pton(AF_INET6, host, buf) == 1;
}

/* A client offers the session it kept for this server address and name. */
static void offer_session(em_conn *conn, em__tls *t)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getpeername(conn->watcher.fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    const char *name = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    size_t name_len = name ? strlen(name) : 0;
    t->session_key = malloc(len + name_len);
    if (!t->session_key)
        return;
    memcpy(t->session_key, &ss, len);
    if (name_len)
        memcpy(t->session_key + len, name, name_len);
    t->session_key_len = len + name_len;
    SSL_SESSION *s =
        em__tls_session_find(t->ctx, t->session_key, t->session_key_len);
    if (s)
        SSL_set_session(t->ssl, s);
}

static void handshake_done(em_conn *conn, em__tls *t)
{
    t->flags = (t->flags & ~EM__TLS_HANDSHAKING) | EM__TLS_OPEN;
    conn->flags &= ~EM__CONN_HANDSHAKING;
    const unsigned char *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(t->ssl, &alpn, &alpn_len);
    if (alpn_len && (t->alpn = malloc(alpn_len + 1))) {
        memcpy(t->alpn, alpn, alpn_len);
        t->alpn[alpn_len] = '\0';
    }
    if (conn->handler->ssl_handshake_completed)
        conn->handler->ssl_handshake_completed(conn);
}

static void handshake_step(em_conn *conn, em__tls *t)
{
    if (!t->ctx->is_server && t->ctx->resumes && SSL_in_before(t->ssl) &&
        !t->session_key)
        offer_session(conn, t);
    begin_op(t);
    int r = SSL_do_handshake(t->ssl);
    if (is_closing(conn)) /* closed from ssl_verify_peer */
        return;
    if (r == 1) {
        handshake_done(conn, t);
        return;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        t->handshake_wants = EM__IN;
    } else if (e == SSL_ERROR_WANT_WRITE) {
        t->handshake_wants = EM__OUT;
    } else {
        em__conn_close_now(conn, fatal(t, e));
    }
}

/* ---- the transport --------------------------------------------------- */

static ssize_t tls_read(em_conn *conn, void *buf, size_t len)
{
    em__tls *t = conn->tls;
    if (t->flags & EM__TLS_STASHED) {
        t->flags &= ~EM__TLS_STASHED;
        return t->stashed_result;
    }
    if (!(t->flags & EM__TLS_OPEN))
        return -EAGAIN; /* the handshake step reads, not receive_data */
    size_t total = 0;
    while (total < len) {
        size_t n = 0;
        begin_op(t);
        if (SSL_read_ex(t->ssl, (char *)buf + total, len - total, &n)) {
            total += n;
            /* The socket gave less than OpenSSL asked for and nothing is
             * buffered: it is empty, so skip the recv that would only say
             * EAGAIN (the plain read path's short-read rule). */
            if (t->socket_drained && !SSL_has_pending(t->ssl))
                break;
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        int result;
        if (e == SSL_ERROR_WANT_READ) {
            result = -EAGAIN;
        } else if (e == SSL_ERROR_WANT_WRITE) {
            t->flags |= EM__TLS_READ_WANTS_WRITE;
            result = -EAGAIN;
        } else if (e == SSL_ERROR_ZERO_RETURN) {
            result = 0; /* close_notify: a clean end of the stream */
        } else {
            result = fatal(t, e);
        }
        if (total == 0)
            return result;
        if (result != -EAGAIN) { /* delivered after this chunk */
            t->stashed_result = result;
            t->flags |= EM__TLS_STASHED;
        }
        break;
    }
    return (ssize_t)total;
}

/* Plaintext queued before em_start_tls goes out as it is. */
static ssize_t raw_write(em_conn *conn, em__tls *t, const struct iovec *iov,
                         int count)
{
    struct iovec part[EM__IOV_MAX];
    size_t left = t->raw_prefix;
    int n = 0;
    for (; n < count && n < EM__IOV_MAX && left > 0; n++) {
        part[n] = iov[n];
        if (part[n].iov_len > left)
            part[n].iov_len = left;
        left -= part[n].iov_len;
    }
    ssize_t written = em__socket_transport.writev(conn, part, n);
    if (written > 0) {
        t->raw_prefix -= (size_t)written;
        if (t->raw_prefix == 0)
            em__tls_schedule(conn); /* now the handshake */
    }
    return written;
}

static ssize_t tls_writev(em_conn *conn, const struct iovec *iov, int count)
{
    em__tls *t = conn->tls;
    if (t->raw_prefix)
        return raw_write(conn, t, iov, count);
    if (!(t->flags & EM__TLS_OPEN))
        return -EAGAIN; /* queued until the handshake is done */
    /* In partial-write mode SSL_write_ex returns after each record; keep
     * going until the socket is full, so a big em_send_data is not copied
     * into the queue 16 KiB at a time. A retry after WANT_WRITE starts
     * with the same bytes, as OpenSSL requires: they are still the head
     * of the outbound queue. */
    size_t total = 0;
    for (int i = 0; i < count; i++) {
        const char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            size_t n = 0;
            begin_op(t);
            if (SSL_write_ex(t->ssl, p, left, &n)) {
                total += n;
                p += n;
                left -= n;
                continue;
            }
            int e = SSL_get_error(t->ssl, 0);
            if (e == SSL_ERROR_WANT_READ)
                t->flags |= EM__TLS_WRITE_WANTS_READ;
            else if (e != SSL_ERROR_WANT_WRITE && total == 0)
                return fatal(t, e);
            return total > 0 ? (ssize_t)total : -EAGAIN;
        }
    }
    return (ssize_t)total;
}

static void send_close_notify(em__tls *t)
{
    if (!(t->flags & EM__TLS_OPEN) ||
        (t->flags & (EM__TLS_FATAL | EM__TLS_SHUTDOWN_SENT)))
        return;
    begin_op(t);
    SSL_shutdown(t->ssl); /* one non-blocking attempt: best effort */
    t->flags |= EM__TLS_SHUTDOWN_SENT;
    ERR_clear_error();
}

static int tls_shutdown_write(em_conn *conn)
{
    send_close_notify(conn->tls);
    return em__socket_transport.shutdown_write(conn);
}

static void tls_close(em_conn *conn)
{
    em__tls *t = conn->tls;
    if (conn->close_reason == 0)
        send_close_notify(t);
    em__list_remove(&t->pending_link);
    em__socket_transport.close(conn);
}

/* In a forked child (fork.c): the socket is closed without close_notify,
 * which would end the parent's session (the peer sees the alert on the
 * connection the parent still uses). em__tls_free follows. */
static void tls_forget(em_conn *conn)
{
    em__socket_transport.close(conn);
}

static const em__transport tls_transport = {
    .read = tls_read,
    .writev = tls_writev,
    .shutdown_write = tls_shutdown_write,
    .close = tls_close,
    .forget = tls_forget,
};

/* ---- events ---------------------------------------------------------- */

static int has_buffered_input(const em__tls *t)
{
    return (t->flags & EM__TLS_STASHED) || SSL_has_pending(t->ssl);
}

static void service(em_conn *conn, unsigned revents)
{
    em__tls *t = conn->tls;
    if (t->raw_prefix) {
        if (conn->out.head && !(conn->flags & EM__CONN_PAUSED))
            em__conn_flush(conn);
        if (is_closing(conn) || t->raw_prefix)
            return;
    }
    if (t->flags & EM__TLS_HANDSHAKING) {
        if (conn->flags & EM__CONN_PAUSED)
            return;
        handshake_step(conn, t);
        if (is_closing(conn))
            return;
        if (t->flags & EM__TLS_HANDSHAKING) {
            em__conn_update_interest(conn);
            return;
        }
        /* Send what waited for the handshake, or finish a close or
         * half-close asked for meanwhile; read what came with the last
         * flight. */
        if (!(conn->flags & EM__CONN_PAUSED))
            em__conn_flush(conn);
        if (is_closing(conn))
            return;
        revents |= EM__IN;
    }
    if ((revents & (EM__IN | EM__ERR)) ||
        ((t->flags & EM__TLS_READ_WANTS_WRITE) && (revents & EM__OUT))) {
        t->flags &= ~EM__TLS_READ_WANTS_WRITE;
        em__conn_read(conn);
    }
    if (!is_closing(conn) && !(conn->flags & EM__CONN_PAUSED) &&
        conn->out.head &&
        ((revents & (EM__OUT | EM__ERR)) ||
         ((t->flags & EM__TLS_WRITE_WANTS_READ) && (revents & EM__IN)))) {
        t->flags &= ~EM__TLS_WRITE_WANTS_READ;
        em__conn_flush(conn);
    }
    if (is_closing(conn))
        return;
    if (has_buffered_input(t) && em__conn_can_read(conn))
        em__tls_schedule(conn);
    em__conn_update_interest(conn);
}

void em__tls_on_event(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    em_conn *conn = em__container_of(w, em_conn, watcher);
    if (is_closing(conn))
        return;
    if (conn->flags & EM__CONN_CONNECTING) {
        em__connect_on_writable(conn);
        return;
    }
    service(conn, revents);
}

unsigned em__tls_interest(const em_conn *conn, unsigned wanted)
{
    const em__tls *t = conn->tls;
    if (!t->ssl)
        return wanted;
    if (t->raw_prefix)
        return wanted & EM__OUT;
    if (t->flags & EM__TLS_HANDSHAKING)
        return t->handshake_wants;
    unsigned interest = wanted;
    if ((t->flags & EM__TLS_WRITE_WANTS_READ) && (interest & EM__OUT))
        interest = (interest & ~EM__OUT) | EM__IN;
    if (t->flags & EM__TLS_READ_WANTS_WRITE)
        interest |= EM__OUT;
    return interest;
}

void em__tls_schedule(em_conn *conn)
{
    em__tls *t = conn->tls;
    if (t->ssl && !em__list_linked(&t->pending_link)) {
        em__list_push_back(&conn->loop->tls_pending, &t->pending_link);
        em__loop_work_added(conn->loop);
    }
}

void em__tls_run_pending(em_loop *loop)
{
    /* Only what was queued before this pass: a pass may queue again. */
    em__link batch;
    em__list_init(&batch);
    em__list_splice_back(&batch, &loop->tls_pending);
    while (!em__list_empty(&batch)) {
        em__tls *t = em__container_of(batch.next, em__tls, pending_link);
        em__list_remove(&t->pending_link);
        em_conn *conn = t->conn;
        if (!is_closing(conn) && !(conn->flags & EM__CONN_CONNECTING))
            service(conn, EM__IN);
    }
}

/* ---- callbacks from OpenSSL ------------------------------------------ */

int em__tls_verify_callback(int preverified, X509_STORE_CTX *store)
{
    SSL *ssl =
        X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    em_conn *conn = SSL_get_app_data(ssl);
    em__tls *t = conn->tls;
    int depth = X509_STORE_CTX_get_error_depth(store);
    int ok = preverified;
    /* OpenSSL records the result only when the whole chain is done; the
     * callback's em_tls_verify_error must already say why. */
    SSL_set_verify_result(ssl, X509_STORE_CTX_get_error(store));
    if (conn->handler->ssl_verify_peer && !is_closing(conn)) {
        BIO *mem = BIO_new(BIO_s_mem());
        BUF_MEM *pem = NULL;
        ok = 0;
        if (mem &&
            PEM_write_bio_X509(mem, X509_STORE_CTX_get_current_cert(store)) &&
            BIO_write(mem, "", 1) == 1 && BIO_get_mem_ptr(mem, &pem) > 0)
            ok = conn->handler->ssl_verify_peer(
                     conn, pem->data, pem->length - 1, depth, preverified) != 0;
        BIO_free(mem);
    }
    if (is_closing(conn))
        ok = 0;
    if (!ok) {
        int e = X509_STORE_CTX_get_error(store);
        if (e == X509_V_OK) {
            e = X509_V_ERR_APPLICATION_VERIFICATION;
            X509_STORE_CTX_set_error(store, e);
        }
        snprintf(t->error, sizeof(t->error),
                 "certificate verify failed at depth %d: %s", depth,
                 X509_verify_cert_error_string(e));
    }
    return ok;
}

int em__tls_new_session_callback(SSL *ssl, SSL_SESSION *session)
{
    em_conn *conn = SSL_get_app_data(ssl);
    em__tls *t = conn ? conn->tls : NULL;
    if (!t || !t->session_key)
        return 0;
    return em__tls_session_store(t->ctx, t->session_key, t->session_key_len,
                                 session);
}

/* ---- starting TLS ---------------------------------------------------- */

static int check_options(const em_tls_options *o)
{
    if (o->role < EM_TLS_ROLE_AUTO || o->role > EM_TLS_ROLE_SERVER)
        return -EINVAL;
    if (o->verify_peer < EM_TLS_VERIFY_DEFAULT ||
        o->verify_peer > EM_TLS_VERIFY_PEER)
        return -EINVAL;
    if (o->preread_len && !o->preread)
        return -EINVAL;
    return 0;
}

/* Client: SNI and the name the certificate must carry. */
static int set_client_names(em_conn *conn, em__tls *t, const em_tls_options *o)
{
    const char *host = conn->remote_host;
    const char *sni = o->sni_hostname;
    if (!sni && host && !is_ip_literal(host))
        sni = host;
    if (sni && *sni && !SSL_set_tlsext_host_name(t->ssl, sni)) {
        snprintf(t->error, sizeof(t->error), "sni_hostname is invalid");
        return -EINVAL;
    }
    const char *expected = o->verify_hostname ? o->verify_hostname
                           : o->sni_hostname  ? o->sni_hostname
                                              : host;
    if (!t->ctx->verifies || o->skip_hostname_check || !expected)
        return 0;
    X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
    int ok;
    if (is_ip_literal(expected)) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(param, expected);
    } else {
        X509_VERIFY_PARAM_set_hostflags(param,
                                        X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set1_host(t->ssl, expected);
    }
    if (!ok) {
        snprintf(t->error, sizeof(t->error), "verify_hostname is invalid");
        return -EINVAL;
    }
    return 0;
}

static int new_ssl(em_conn *conn, em__tls *t, const em_tls_options *o)
{
    t->ssl = SSL_new(t->ctx->ssl_ctx);
    BIO *bio = t->ssl ? BIO_new(conn->loop->tls_cache->bio_method) : NULL;
    if (!bio)
        return -ENOMEM;
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    SSL_set_app_data(t->ssl, conn);
    if (t->ctx->is_server) {
        SSL_set_accept_state(t->ssl);
        return 0;
    }
    SSL_set_connect_state(t->ssl);
    return set_client_names(conn, t, o);
}

static void drop_ssl(em__tls *t)
{
    SSL_free(t->ssl);
    t->ssl = NULL;
    em__tls_ctx_release(t->ctx);
    t->ctx = NULL;
    ERR_clear_error();
}

int em_start_tls(em_conn *conn, const em_tls_options *opts)
{
    static const em_tls_options defaults;
    if (!conn)
        return -EINVAL;
    if (conn->flags & EM__CONN_DATAGRAM)
        return -EOPNOTSUPP; /* TLS needs a stream (DTLS is another thing) */
    if (conn->flags &
        (EM__CONN_CLOSING | EM__CONN_IN_UNBIND | EM__CONN_READ_EOF))
        return -ENOTCONN;
    if (conn->flags & (EM__CONN_CLOSE_AFTER_WRITING | EM__CONN_SHUT_PENDING |
                       EM__CONN_WRITE_SHUT))
        return -EPIPE;
    if (conn->tls && conn->tls->ssl)
        return -EALREADY;
    if (conn->transport != &em__socket_transport)
        return -EOPNOTSUPP; /* pipes, stdio, processes: no socket */
    if (conn->relay && (conn->relay->proxy || conn->relay->proxied_from))
        return -EBUSY; /* spliced bytes would bypass the handshake */
    if (!opts)
        opts = &defaults;
    em__tls *t = conn->tls;
    if (!t) {
        if (!(t = calloc(1, sizeof(*t))))
            return -ENOMEM;
        t->conn = conn;
        em__list_init(&t->pending_link);
        conn->tls = t;
    }
    t->error[0] = '\0';
    int err = check_options(opts);
    if (err < 0) {
        snprintf(t->error, sizeof(t->error), "invalid em_tls_options");
        return err;
    }
    int is_server = opts->role == EM_TLS_ROLE_AUTO
                        ? !(conn->flags & EM__CONN_OUTBOUND)
                        : opts->role == EM_TLS_ROLE_SERVER;
    err = em__tls_ctx_acquire(conn->loop, opts, is_server, &t->ctx, t->error,
                              sizeof(t->error));
    if (err == 0)
        err = new_ssl(conn, t, opts);
    if (err == 0 && opts->preread_len) {
        if (!(t->preread = malloc(opts->preread_len)))
            err = -ENOMEM;
        else
            memcpy(t->preread, opts->preread, opts->preread_len);
        t->preread_len = opts->preread_len;
    }
    if (err < 0) {
        drop_ssl(t);
        return err;
    }
    t->raw_prefix = conn->out.bytes;
    t->flags = EM__TLS_HANDSHAKING;
    conn->flags |= EM__CONN_HANDSHAKING;
    conn->transport = &tls_transport;
    conn->watcher.on_event = em__tls_on_event;
    if (!(conn->flags & EM__CONN_CONNECTING)) {
        em__tls_schedule(conn);
        em__conn_update_interest(conn);
    }
    return 0;
}

void em__tls_free(em_conn *conn)
{
    em__tls *t = conn->tls;
    em__list_remove(&t->pending_link);
    if (t->ssl)
        drop_ssl(t);
    free(t->preread);
    free(t->session_key);
    free(t->alpn);
    free(t);
    conn->tls = NULL;
    conn->transport = &em__socket_transport;
    conn->watcher.on_event = em__conn_on_event;
}

/* ---- getters --------------------------------------------------------- */

static const em__tls *open_tls(const em_conn *conn)
{
    if (!conn || !conn->tls || !conn->tls->ssl ||
        !(conn->tls->flags & EM__TLS_OPEN))
        return NULL;
    return conn->tls;
}

int em_is_tls(const em_conn *conn)
{
    return conn && conn->tls && conn->tls->ssl ? 1 : 0;
}

int em_tls_handshake_done(const em_conn *conn)
{
    return open_tls(conn) ? 1 : 0;
}

int em_get_peer_cert(const em_conn *conn, char *buf, size_t size)
{
    if (!conn || (!buf && size > 0))
        return -EINVAL;
    const em__tls *t = open_tls(conn);
    if (!t)
        return -ENOTCONN;
    X509 *cert = SSL_get1_peer_certificate(t->ssl);
    if (!cert)
        return -ENOENT;
    BIO *mem = BIO_new(BIO_s_mem());
    BUF_MEM *pem = NULL;
    int result = -ENOMEM;
    if (mem && PEM_write_bio_X509(mem, cert) &&
        BIO_get_mem_ptr(mem, &pem) > 0 && pem->length < (size_t)INT32_MAX) {
        result = (int)pem->length;
        if (size > 0) {
            size_t n = pem->length < size - 1 ? pem->length : size - 1;
            memcpy(buf, pem->data, n);
            buf[n] = '\0';
        }
    }
    BIO_free(mem);
    X509_free(cert);
    ERR_clear_error();
    return result;
}

const char *em_tls_cipher(const em_conn *conn)
{
    const em__tls *t = open_tls(conn);
    const SSL_CIPHER *c = t ? SSL_get_current_cipher(t->ssl) : NULL;
    return c ? SSL_CIPHER_get_name(c) : NULL;
}

int em_tls_cipher_bits(const em_conn *conn)
{
    if (!em_is_tls(conn))
        return -EINVAL;
    const em__tls *t = open_tls(conn);
    const SSL_CIPHER *c = t ? SSL_get_current_cipher(t->ssl) : NULL;
    return c ? SSL_CIPHER_get_bits(c, NULL) : -ENOTCONN;
}

const char *em_tls_protocol(const em_conn *conn)
{
    const em__tls *t = open_tls(conn);
    return t ? SSL_get_version(t->ssl) : NULL;
}

const char *em_tls_alpn(const em_conn *conn)
{
    const em__tls *t = open_tls(conn);
    return t ? t->alpn : NULL;
}

const char *em_tls_sni(const em_conn *conn)
{
    if (!em_is_tls(conn))
        return NULL;
    return SSL_get_servername(conn->tls->ssl, TLSEXT_NAMETYPE_host_name);
}

int em_tls_session_reused(const em_conn *conn)
{
    const em__tls *t = open_tls(conn);
    return t && SSL_session_reused(t->ssl) ? 1 : 0;
}

const char *em_tls_error(const em_conn *conn)
{
    return conn && conn->tls ? conn->tls->error : "";
}

long em_tls_verify_error(const em_conn *conn)
{
    if (!em_is_tls(conn))
        return -EINVAL;
    /* Without verification OpenSSL still walks the chain (with no CA) and
     * records a failure nobody asked about. */
    if (!conn->tls->ctx->verifies)
        return X509_V_OK;
    return SSL_get_verify_result(conn->tls->ssl);
}
