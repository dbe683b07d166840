/*
 * tls.h - what tls.c (the per-connection transport) and tls_context.c (the
 * per-loop SSL_CTX cache) share. Private to those two files.
 */
#ifndef EM_TLS_H
#define EM_TLS_H

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "internal.h"

/* A certificate with its chain and key, parsed once per context. */
typedef struct em__tls_identity {
    X509 *cert;
    STACK_OF(X509) * chain; /* intermediates, may be NULL */
    EVP_PKEY *key;
} em__tls_identity;

typedef struct em__tls_sni_entry {
    char *hostname; /* "name" or "*.domain" */
    em__tls_identity id;
} em__tls_sni_entry;

/* One remembered client session, keyed by server address and name. */
typedef struct em__tls_client_session {
    unsigned char *key;
    size_t key_len;
    SSL_SESSION *session;
    uint64_t used; /* cache clock at last use, for eviction */
} em__tls_client_session;

struct em__tls_ctx {
    em__tls_ctx *next;
    em__tls_cache *cache;
    SSL_CTX *ssl_ctx;
    unsigned char *key; /* canonical form of the options that built it */
    size_t key_len;
    uint64_t hash;
    int refs;      /* connections using it */
    uint64_t used; /* cache clock at last acquire */
    int is_server;
    int verifies;        /* SSL_VERIFY_PEER is set */
    int resumes;         /* session resumption on */
    int stale;           /* flushed: freed with its last connection */
    unsigned char *alpn; /* wire format (length-prefixed names) */
    size_t alpn_len;
    em__tls_sni_entry *sni;
    size_t sni_count;
    em__tls_client_session *sessions;
    size_t session_count;
};

struct em__tls_cache {
    BIO_METHOD *bio_method;
    em__tls_ctx *contexts;
    size_t count;
    uint64_t clock;
    em__tls_identity ephemeral; /* made on first use of ephemeral_cert */
};

enum em__tls_flag {
    EM__TLS_HANDSHAKING = 1u << 0,
    EM__TLS_OPEN = 1u << 1,  /* handshake done */
    EM__TLS_FATAL = 1u << 2, /* no close_notify after this */
    EM__TLS_SHUTDOWN_SENT = 1u << 3,
    EM__TLS_READ_WANTS_WRITE = 1u << 4,
    EM__TLS_WRITE_WANTS_READ = 1u << 5,
    EM__TLS_STASHED = 1u << 6, /* stashed_result is pending */
};

struct em__tls {
    SSL *ssl; /* NULL when em_start_tls failed: only error[] is valid */
    em__tls_ctx *ctx;
    em_conn *conn;
    em__link pending_link; /* loop->tls_pending */
    uint32_t flags;
    unsigned handshake_wants; /* EM__IN or EM__OUT */
    int stashed_result;       /* EOF (0) or error met after some data */
    int sys_errno;            /* the last socket error the BIO saw */
    int socket_drained;       /* the last recv returned less than asked */
    size_t raw_prefix;        /* queued before em_start_tls: sent in clear */
    unsigned char *preread;
    size_t preread_len;
    size_t preread_off;
    unsigned char *session_key; /* client: where its session is cached */
    size_t session_key_len;
    char *alpn;
    char error[256];
};

/* Finds the context for (opts, is_server) or builds and caches it. On
 * failure writes the reason into err. Returns 0 or a negative errno. */
int em__tls_ctx_acquire(em_loop *loop, const em_tls_options *opts,
                        int is_server, em__tls_ctx **out, char *err,
                        size_t errlen);
void em__tls_ctx_release(em__tls_ctx *ctx);

/* The cached session for key (no new reference), or NULL. */
SSL_SESSION *em__tls_session_find(em__tls_ctx *ctx, const unsigned char *key,
                                  size_t key_len);

/* The BIO type that connects an SSL object to a connection's socket. */
BIO_METHOD *em__tls_bio_method_new(void);

/* OpenSSL's verify callback for every context that verifies (tls.c). */
int em__tls_verify_callback(int preverified, X509_STORE_CTX *store);
/* OpenSSL's new-session callback for client contexts (tls.c). */
int em__tls_new_session_callback(SSL *ssl, SSL_SESSION *session);
/* Stores session under key; takes the caller's reference on success.
 * Returns 1 when stored, 0 otherwise. */
int em__tls_session_store(em__tls_ctx *ctx, const unsigned char *key,
                          size_t key_len, SSL_SESSION *session);

#endif
