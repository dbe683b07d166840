/*
 * tls_context.c - TLS contexts (SSL_CTX), cached per loop.
 *
 * EventMachine built a new SSL_CTX, and parsed the key file again, for every
 * connection: no session could resume and every handshake paid for PEM and
 * key parsing. Here em_tls_options are reduced to a canonical byte string
 * (every field that shapes the context, in a fixed order); contexts are kept
 * per loop under that string, so connections with the same configuration
 * share one SSL_CTX, its ticket keys and its session caches. Comparing the
 * whole string, not only a hash, makes a collision harmless.
 *
 * What a connection may vary without a new context (SNI name, host name to
 * verify, preread bytes) is applied per SSL object in tls.c.
 *
 * Server certificates chosen by SNI are parsed here once and installed on
 * the SSL object from OpenSSL's certificate callback, which runs after the
 * ClientHello is parsed and before a certificate is chosen.
 *
 * Clients remember one session per (server address, name) in their
 * context: a reconnect to the same server offers it, a different context
 * never sees it. The table is small and scanned linearly; it is only read
 * when a client starts TLS.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "tls.h"

#define UNUSED_CONTEXTS_KEPT 32 /* contexts no connection uses */
#define CLIENT_SESSIONS_KEPT 256
#define KEY_INLINE 1024

/* ---- errors ---------------------------------------------------------- */

static int failf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    if (reason && n >= 0 && (size_t)n < errlen)
        snprintf(err + n, errlen - (size_t)n, " (%s)", reason);
    ERR_clear_error();
    return code;
}

/* ---- the canonical key of a configuration ---------------------------- */

typedef struct keybuf {
    unsigned char *p;
    size_t len;
    size_t cap;
    int oom;
    unsigned char inline_space[KEY_INLINE];
} keybuf;

static void kb_init(keybuf *kb)
{
    kb->p = kb->inline_space;
    kb->len = 0;
    kb->cap = sizeof(kb->inline_space);
    kb->oom = 0;
}

static void kb_free(keybuf *kb)
{
    OPENSSL_cleanse(kb->p, kb->len); /* it may hold a passphrase */
    if (kb->p != kb->inline_space)
        free(kb->p);
}

static void kb_put(keybuf *kb, const void *data, size_t len)
{
    if (kb->oom)
        return;
    if (kb->len + len > kb->cap) {
        size_t cap = kb->cap * 2;
        while (cap < kb->len + len)
            cap *= 2;
        unsigned char *p = malloc(cap);
        if (!p) {
            kb->oom = 1;
            return;
        }
        memcpy(p, kb->p, kb->len);
        if (kb->p != kb->inline_space) {
            OPENSSL_cleanse(kb->p, kb->len);
            free(kb->p);
        }
        kb->p = p;
        kb->cap = cap;
    }
    memcpy(kb->p + kb->len, data, len);
    kb->len += len;
}

static void kb_int(keybuf *kb, long value)
{
    kb_put(kb, &value, sizeof(value));
}

/* Length-prefixed, with NULL distinct from "". */
static void kb_str(keybuf *kb, const char *s)
{
    size_t n = s ? strlen(s) + 1 : 0;
    kb_put(kb, &n, sizeof(n));
    if (n)
        kb_put(kb, s, n);
}

static int server_verifies(const em_tls_options *o)
{
    return o->verify_peer == EM_TLS_VERIFY_PEER || o->fail_if_no_peer_cert;
}

static int client_verifies(const em_tls_options *o)
{
    return o->verify_peer != EM_TLS_VERIFY_NONE;
}

static void options_key(keybuf *kb, const em_tls_options *o, int is_server)
{
    kb_int(kb, is_server);
    kb_int(kb, is_server ? server_verifies(o) : client_verifies(o));
    kb_int(kb, o->fail_if_no_peer_cert != 0);
    kb_str(kb, o->cert_chain_file);
    kb_str(kb, o->private_key_file);
    kb_str(kb, o->cert_chain_file ? NULL : o->cert_chain_pem);
    kb_str(kb, o->private_key_file ? NULL : o->private_key_pem);
    kb_str(kb, o->private_key_pass);
    kb_int(kb, o->ephemeral_cert != 0);
    kb_int(kb, (long)o->sni_cert_count);
    for (size_t i = 0; i < o->sni_cert_count; i++) {
        const em_tls_sni_cert *s = &o->sni_certs[i];
        kb_str(kb, s->hostname);
        kb_str(kb, s->cert_chain_file);
        kb_str(kb, s->private_key_file);
        kb_str(kb, s->cert_chain_pem);
        kb_str(kb, s->private_key_pem);
        kb_str(kb, s->private_key_pass);
    }
    kb_str(kb, o->ca_file);
    kb_str(kb, o->ca_path);
    kb_str(kb, o->cipher_list);
    kb_str(kb, o->ciphersuites);
    kb_int(kb, (long)o->protocols);
    kb_int(kb, o->min_version);
    kb_int(kb, o->max_version);
    kb_str(kb, o->ecdh_curve);
    kb_str(kb, o->dhparam_file);
    kb_str(kb, o->alpn_protocols);
    kb_int(kb, o->no_session_resumption != 0);
}

static uint64_t fnv1a(const unsigned char *p, size_t len)
{
    uint64_t h = 14695981039346656037u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211u;
    return h;
}

/* ---- certificates and keys ------------------------------------------- */

static void identity_free(em__tls_identity *id)
{
    X509_free(id->cert);
    sk_X509_pop_free(id->chain, X509_free);
    EVP_PKEY_free(id->key);
    memset(id, 0, sizeof(*id));
}

/* A BIO over a file or an in-memory PEM string. */
static int pem_bio(const char *file, const char *pem, BIO **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (file) {
        FILE *f = fopen(file, "re");
        if (!f) {
            int code = -errno;
            return failf(err, errlen, code, "%s: %s", file, em_strerror(code));
        }
        *out = BIO_new_fp(f, BIO_CLOSE);
        if (!*out)
            fclose(f);
    } else {
        *out = BIO_new_mem_buf(pem, -1);
    }
    return *out ? 0 : -ENOMEM;
}

static int load_chain(em__tls_identity *id, const char *file, const char *pem,
                      const char *what, char *err, size_t errlen)
{
    BIO *bio;
    int code = pem_bio(file, pem, &bio, err, errlen);
    if (code < 0)
        return code;
    id->cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (!id->cert) {
        BIO_free(bio);
        return failf(err, errlen, -EBADMSG, "%s: no PEM certificate in %s",
                     what, file ? file : "cert_chain_pem");
    }
    X509 *extra;
    while ((extra = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
        if (!id->chain && !(id->chain = sk_X509_new_null())) {
            X509_free(extra);
            BIO_free(bio);
            return -ENOMEM;
        }
        if (!sk_X509_push(id->chain, extra)) {
            X509_free(extra);
            BIO_free(bio);
            return -ENOMEM;
        }
    }
    ERR_clear_error(); /* the end of the file reads as "no start line" */
    BIO_free(bio);
    return 0;
}

typedef struct passphrase {
    const char *text;
    int asked;
} passphrase;

/* Never prompts on a terminal, which OpenSSL's default callback would. */
static int passphrase_cb(char *buf, int size, int rwflag, void *arg)
{
    (void)rwflag;
    passphrase *p = arg;
    p->asked = 1;
    if (!p->text)
        return 0;
    size_t n = strlen(p->text);
    if (n > (size_t)size)
        return -1;
    memcpy(buf, p->text, n);
    return (int)n;
}

static int load_key(em__tls_identity *id, const char *file, const char *pem,
                    const char *pass, const char *what, char *err,
                    size_t errlen)
{
    BIO *bio;
    int code = pem_bio(file, pem, &bio, err, errlen);
    if (code < 0)
        return code;
    passphrase p = {.text = pass};
    id->key = PEM_read_bio_PrivateKey(bio, NULL, passphrase_cb, &p);
    BIO_free(bio);
    if (id->key)
        return 0;
    if (p.asked)
        return failf(err, errlen, -EKEYREJECTED,
                     "%s: the private key is encrypted and the passphrase "
                     "is %s",
                     what, pass ? "wrong" : "missing");
    return failf(err, errlen, -EBADMSG, "%s: no PEM private key in %s", what,
                 file ? file : "private_key_pem");
}

/* Loads a certificate chain and its key. A missing key source means the
 * key follows the certificates in the same file or string. */
static int identity_load(em__tls_identity *id, const char *cert_file,
                         const char *key_file, const char *cert_pem,
                         const char *key_pem, const char *pass,
                         const char *what, char *err, size_t errlen)
{
    int code = load_chain(id, cert_file, cert_pem, what, err, errlen);
    if (code == 0) {
        if (!key_file && !key_pem) {
            key_file = cert_file;
            key_pem = cert_pem;
        }
        code = load_key(id, key_file, key_file ? NULL : key_pem, pass, what,
                        err, errlen);
    }
    if (code == 0 && !X509_check_private_key(id->cert, id->key))
        code =
            failf(err, errlen, -EINVAL,
                  "%s: the private key does not match the certificate", what);
    if (code < 0)
        identity_free(id);
    return code;
}

static int identity_use(SSL_CTX *c, const em__tls_identity *id, char *err,
                        size_t errlen)
{
    if (!SSL_CTX_use_cert_and_key(c, id->cert, id->key, id->chain, 1))
        return failf(err, errlen, -EINVAL, "cannot use the certificate");
    return 0;
}

/* A self-signed P-256 certificate made at run time, once per loop: for
 * EventMachine's servers that start TLS with no certificate at all. */
static int make_ephemeral(em__tls_identity *id, char *err, size_t errlen)
{
    id->key = EVP_EC_gen("P-256");
    id->cert = X509_new();
    if (!id->key || !id->cert)
        goto fail;
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        goto fail;
    serial[0] &= 0x7f; /* a positive INTEGER */
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(id->cert));
    BN_free(bn);
    X509_NAME *name = X509_get_subject_name(id->cert);
    ok = ok && X509_set_version(id->cert, 2) &&
         X509_gmtime_adj(X509_getm_notBefore(id->cert), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(id->cert), 365L * 86400) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                    (const unsigned char *)"libem ephemeral",
                                    -1, -1, 0) &&
         X509_set_issuer_name(id->cert, name) &&
         X509_set_pubkey(id->cert, id->key) &&
         X509_sign(id->cert, id->key, EVP_sha256());
    if (ok)
        return 0;
fail:
    identity_free(id);
    return failf(err, errlen, -ENOMEM, "cannot make an ephemeral certificate");
}

/* ---- per-context callbacks ------------------------------------------- */

static int host_matches(const char *pattern, const char *name)
{
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(name, '.');
        return dot && dot != name && strcasecmp(dot + 1, pattern + 2) == 0;
    }
    return strcasecmp(pattern, name) == 0;
}

/* Server: picks the certificate for the client's SNI name. */
static int choose_certificate(SSL *ssl, void *arg)
{
    em__tls_ctx *ctx = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return 1;
    for (size_t i = 0; i < ctx->sni_count; i++) {
        const em__tls_sni_entry *e = &ctx->sni[i];
        if (host_matches(e->hostname, name))
            return SSL_use_cert_and_key(ssl, e->id.cert, e->id.key, e->id.chain,
                                        1);
    }
    return 1;
}

/* Server: our first protocol the client offers, else a fatal alert
 * (RFC 7301's no_application_protocol). */
static int choose_alpn(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    (void)ssl;
    em__tls_ctx *ctx = arg;
    unsigned char *selected;
    if (SSL_select_next_proto(&selected, outlen, ctx->alpn,
                              (unsigned)ctx->alpn_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

/* ---- building a context ---------------------------------------------- */

static const struct {
    int bit;
    int version;
    long no_option;
} versions[] = {
    {EM_TLS_TLSv1, TLS1_VERSION, SSL_OP_NO_TLSv1},
    {EM_TLS_TLSv1_1, TLS1_1_VERSION, SSL_OP_NO_TLSv1_1},
    {EM_TLS_TLSv1_2, TLS1_2_VERSION, SSL_OP_NO_TLSv1_2},
    {EM_TLS_TLSv1_3, TLS1_3_VERSION, SSL_OP_NO_TLSv1_3},
};
#define VERSION_COUNT (sizeof(versions) / sizeof(versions[0]))
#define ALL_VERSIONS                                                           \
    (EM_TLS_SSLv2 | EM_TLS_SSLv3 | EM_TLS_TLSv1 | EM_TLS_TLSv1_1 |             \
     EM_TLS_TLSv1_2 | EM_TLS_TLSv1_3)

/* Index into versions[] of a single-version value, or a negative errno. */
static int version_index(int value)
{
    if (value == EM_TLS_SSLv2 || value == EM_TLS_SSLv3)
        return -EPROTONOSUPPORT;
    for (size_t i = 0; i < VERSION_COUNT; i++)
        if (versions[i].bit == value)
            return (int)i;
    return -EINVAL;
}

static int apply_versions(SSL_CTX *c, const em_tls_options *o, char *err,
                          size_t errlen)
{
    int lo, hi;
    long no_options = 0;
    if (o->protocols) {
        if (o->protocols & ~(unsigned)ALL_VERSIONS)
            return failf(err, errlen, -EINVAL, "unknown protocol bits");
        if (o->protocols & (EM_TLS_SSLv2 | EM_TLS_SSLv3))
            return failf(err, errlen, -EPROTONOSUPPORT,
                         "SSLv2 and SSLv3 are not supported");
        lo = hi = -1;
        for (int i = 0; i < (int)VERSION_COUNT; i++) {
            if (!(o->protocols & (unsigned)versions[i].bit))
                continue;
            if (lo < 0)
                lo = i;
            hi = i;
        }
        for (int i = lo; i <= hi; i++) /* EventMachine's lists may skip */
            if (!(o->protocols & (unsigned)versions[i].bit))
                no_options |= versions[i].no_option;
    } else {
        lo = version_index(o->min_version ? o->min_version : EM_TLS_TLSv1_2);
        hi = version_index(o->max_version ? o->max_version : EM_TLS_TLSv1_3);
        if (lo < 0 || hi < 0)
            return failf(err, errlen, lo < 0 ? lo : hi,
                         "min_version/max_version: not a supported version");
        if (lo > hi)
            return failf(err, errlen, -EINVAL,
                         "min_version is above max_version");
    }
    /* Debian's OpenSSL refuses TLS 1.0/1.1 at security level 2: a caller
     * who names them explicitly gets them. */
    if (versions[lo].version < TLS1_2_VERSION)
        SSL_CTX_set_security_level(c, 0);
    if (!SSL_CTX_set_min_proto_version(c, versions[lo].version) ||
        !SSL_CTX_set_max_proto_version(c, versions[hi].version))
        return failf(err, errlen, -EINVAL, "cannot set protocol versions");
    SSL_CTX_set_options(c, (uint64_t)no_options);
    return 0;
}

static int apply_algorithms(SSL_CTX *c, const em_tls_options *o, char *err,
                            size_t errlen)
{
    if (o->cipher_list && !SSL_CTX_set_cipher_list(c, o->cipher_list))
        return failf(err, errlen, -EINVAL, "cipher_list \"%s\" is invalid",
                     o->cipher_list);
    if (o->ciphersuites && !SSL_CTX_set_ciphersuites(c, o->ciphersuites))
        return failf(err, errlen, -EINVAL, "ciphersuites \"%s\" is invalid",
                     o->ciphersuites);
    if (o->ecdh_curve && !SSL_CTX_set1_groups_list(c, o->ecdh_curve))
        return failf(err, errlen, -EINVAL, "ecdh_curve \"%s\" is unknown",
                     o->ecdh_curve);
    if (!o->dhparam_file) {
        SSL_CTX_set_dh_auto(c, 1);
        return 0;
    }
    BIO *bio;
    int code = pem_bio(o->dhparam_file, NULL, &bio, err, errlen);
    if (code < 0)
        return code;
    EVP_PKEY *dh = PEM_read_bio_Parameters(bio, NULL);
    BIO_free(bio);
    if (!dh || !EVP_PKEY_is_a(dh, "DH")) {
        EVP_PKEY_free(dh);
        return failf(err, errlen, -EBADMSG, "%s: no PEM DH parameters",
                     o->dhparam_file);
    }
    if (!SSL_CTX_set0_tmp_dh_pkey(c, dh)) {
        EVP_PKEY_free(dh);
        return failf(err, errlen, -EINVAL, "%s: unusable DH parameters",
                     o->dhparam_file);
    }
    return 0;
}

/* "h2,http/1.1" into ALPN's wire format. */
static int parse_alpn(em__tls_ctx *ctx, const char *list, char *err,
                      size_t errlen)
{
    size_t len = strlen(list);
    ctx->alpn = malloc(len + 1);
    if (!ctx->alpn)
        return -ENOMEM;
    size_t out = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0 || n > 255)
            return failf(err, errlen, -EINVAL,
                         "alpn_protocols \"%s\": empty or overlong name", list);
        ctx->alpn[out++] = (unsigned char)n;
        memcpy(ctx->alpn + out, p, n);
        out += n;
        if (!comma)
            break;
        p = comma + 1;
    }
    ctx->alpn_len = out;
    return 0;
}

static int apply_identity(em__tls_ctx *ctx, const em_tls_options *o,
                          em__tls_cache *cache, char *err, size_t errlen)
{
    SSL_CTX *c = ctx->ssl_ctx;
    int has_cert = o->cert_chain_file || o->cert_chain_pem;
    if (has_cert) {
        em__tls_identity id = {0};
        int code =
            identity_load(&id, o->cert_chain_file, o->private_key_file,
                          o->cert_chain_pem, o->private_key_pem,
                          o->private_key_pass, "certificate", err, errlen);
        if (code < 0)
            return code;
        code = identity_use(c, &id, err, errlen);
        identity_free(&id);
        if (code < 0)
            return code;
    } else if (o->private_key_file || o->private_key_pem) {
        return failf(err, errlen, -EINVAL,
                     "a private key without a certificate");
    }
    if (o->sni_cert_count) {
        if (!o->sni_certs)
            return failf(err, errlen, -EINVAL, "sni_certs is NULL");
        ctx->sni = calloc(o->sni_cert_count, sizeof(*ctx->sni));
        if (!ctx->sni)
            return -ENOMEM;
        for (size_t i = 0; i < o->sni_cert_count; i++) {
            const em_tls_sni_cert *s = &o->sni_certs[i];
            if (!s->hostname || !*s->hostname ||
                (!s->cert_chain_file && !s->cert_chain_pem))
                return failf(err, errlen, -EINVAL,
                             "sni_certs[%zu]: hostname and certificate "
                             "needed",
                             i);
            if (!(ctx->sni[i].hostname = strdup(s->hostname)))
                return -ENOMEM;
            ctx->sni_count = i + 1;
            int code = identity_load(&ctx->sni[i].id, s->cert_chain_file,
                                     s->private_key_file, s->cert_chain_pem,
                                     s->private_key_pem, s->private_key_pass,
                                     s->hostname, err, errlen);
            if (code < 0)
                return code;
        }
        SSL_CTX_set_cert_cb(c, choose_certificate, ctx);
    }
    if (!ctx->is_server || has_cert)
        return 0;
    if (ctx->sni_count) /* the first SNI certificate is the default */
        return identity_use(c, &ctx->sni[0].id, err, errlen);
    if (!o->ephemeral_cert)
        return failf(err, errlen, -ENOKEY,
                     "a TLS server needs a certificate (cert_chain_file "
                     "or ephemeral_cert)");
    if (!cache->ephemeral.cert) {
        int code = make_ephemeral(&cache->ephemeral, err, errlen);
        if (code < 0)
            return code;
    }
    return identity_use(c, &cache->ephemeral, err, errlen);
}

static int apply_verification(em__tls_ctx *ctx, const em_tls_options *o,
                              char *err, size_t errlen)
{
    SSL_CTX *c = ctx->ssl_ctx;
    ctx->verifies = ctx->is_server ? server_verifies(o) : client_verifies(o);
    if (!ctx->verifies) {
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    int mode = SSL_VERIFY_PEER;
    if (ctx->is_server && o->fail_if_no_peer_cert)
        mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(c, mode, em__tls_verify_callback);
    const char *paths[2] = {o->ca_file, o->ca_path};
    for (int i = 0; i < 2; i++) {
        if (paths[i] && access(paths[i], R_OK) < 0) {
            int code = -errno;
            return failf(err, errlen, code, "%s: %s", paths[i],
                         em_strerror(code));
        }
    }
    if (!o->ca_file && !o->ca_path) {
        if (!SSL_CTX_set_default_verify_paths(c))
            return failf(err, errlen, -EINVAL, "no system CA store");
        return 0;
    }
    if (!SSL_CTX_load_verify_locations(c, o->ca_file, o->ca_path))
        return failf(err, errlen, -EBADMSG, "cannot load CA certificates");
    if (ctx->is_server && o->ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
        if (names)
            SSL_CTX_set_client_CA_list(c, names);
        ERR_clear_error();
    }
    return 0;
}

static void apply_sessions(em__tls_ctx *ctx, const em_tls_options *o)
{
    SSL_CTX *c = ctx->ssl_ctx;
    ctx->resumes = !o->no_session_resumption;
    if (!ctx->resumes) {
        SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_num_tickets(c, 0);
        return;
    }
    if (ctx->is_server) {
        /* Stateless tickets (the keys live in this SSL_CTX) and, for TLS
         * 1.2 clients without ticket support, the internal ID cache. One
         * TLS 1.3 ticket per handshake: a client keeps one per server. */
        unsigned char sid[sizeof(ctx->hash)];
        memcpy(sid, &ctx->hash, sizeof(sid));
        SSL_CTX_set_session_id_context(c, sid, sizeof(sid));
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
        SSL_CTX_set_num_tickets(c, 1);
        return;
    }
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT |
                                          SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, em__tls_new_session_callback);
}

static void ctx_free(em__tls_ctx *ctx)
{
    SSL_CTX_free(ctx->ssl_ctx);
    for (size_t i = 0; i < ctx->sni_count; i++) {
        free(ctx->sni[i].hostname);
        identity_free(&ctx->sni[i].id);
    }
    free(ctx->sni);
    for (size_t i = 0; i < ctx->session_count; i++) {
        free(ctx->sessions[i].key);
        SSL_SESSION_free(ctx->sessions[i].session);
    }
    free(ctx->sessions);
    free(ctx->alpn);
    if (ctx->key)
        OPENSSL_cleanse(ctx->key, ctx->key_len);
    free(ctx->key);
    free(ctx);
}

static int ctx_build(em__tls_cache *cache, const em_tls_options *o,
                     int is_server, em__tls_ctx *ctx, char *err, size_t errlen)
{
    ctx->cache = cache;
    ctx->is_server = is_server;
    SSL_CTX *c = ctx->ssl_ctx = SSL_CTX_new(TLS_method());
    if (!c)
        return failf(err, errlen, -ENOMEM, "SSL_CTX_new failed");
    /* Partial writes and a moving buffer: the outbound queue retries from
     * wherever its bytes are now. Released buffers: an idle connection
     * holds no record buffers. Read-ahead: one recv per wakeup, not two
     * per record (header, then body). */
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(c, 1);
    SSL_CTX_set_options(c,
                        SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                            (is_server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
    int code = apply_versions(c, o, err, errlen);
    if (code == 0)
        code = apply_algorithms(c, o, err, errlen);
    if (code == 0 && o->alpn_protocols) {
        code = parse_alpn(ctx, o->alpn_protocols, err, errlen);
        if (code == 0 && is_server)
            SSL_CTX_set_alpn_select_cb(c, choose_alpn, ctx);
        else if (code == 0 && SSL_CTX_set_alpn_protos(
                                  c, ctx->alpn, (unsigned)ctx->alpn_len) != 0)
            code = -ENOMEM;
    }
    if (code == 0)
        code = apply_identity(ctx, o, cache, err, errlen);
    if (code == 0)
        code = apply_verification(ctx, o, err, errlen);
    if (code == 0)
        apply_sessions(ctx, o);
    SSL_CTX_set_app_data(c, ctx);
    return code;
}

/* ---- the cache ------------------------------------------------------- */

static void bio_method_free(em__tls_cache *cache)
{
    BIO_meth_free(cache->bio_method);
}

static em__tls_cache *cache_of(em_loop *loop)
{
    if (loop->tls_cache)
        return loop->tls_cache;
    em__tls_cache *cache = calloc(1, sizeof(*cache));
    if (!cache)
        return NULL;
    cache->bio_method = em__tls_bio_method_new();
    if (!cache->bio_method) {
        free(cache);
        return NULL;
    }
    loop->tls_cache = cache;
    return cache;
}

/* Keeps at most UNUSED_CONTEXTS_KEPT contexts that nobody uses, dropping
 * the least recently acquired first. */
static void evict_unused(em__tls_cache *cache)
{
    for (;;) {
        size_t unused = 0;
        em__tls_ctx **oldest = NULL;
        for (em__tls_ctx **p = &cache->contexts; *p; p = &(*p)->next) {
            if ((*p)->refs)
                continue;
            unused++;
            if (!oldest || (*p)->used < (*oldest)->used)
                oldest = p;
        }
        if (unused <= UNUSED_CONTEXTS_KEPT)
            return;
        em__tls_ctx *victim = *oldest;
        *oldest = victim->next;
        cache->count--;
        ctx_free(victim);
    }
}

int em__tls_ctx_acquire(em_loop *loop, const em_tls_options *opts,
                        int is_server, em__tls_ctx **out, char *err,
                        size_t errlen)
{
    em__tls_cache *cache = cache_of(loop);
    if (!cache)
        return -ENOMEM;
    keybuf kb;
    kb_init(&kb);
    options_key(&kb, opts, is_server);
    if (kb.oom) {
        kb_free(&kb);
        return -ENOMEM;
    }
    uint64_t hash = fnv1a(kb.p, kb.len);
    for (em__tls_ctx *c = cache->contexts; c; c = c->next) {
        if (!c->stale && c->hash == hash && c->key_len == kb.len &&
            memcmp(c->key, kb.p, kb.len) == 0) {
            kb_free(&kb);
            c->refs++;
            c->used = ++cache->clock;
            *out = c;
            return 0;
        }
    }
    em__tls_ctx *ctx = calloc(1, sizeof(*ctx));
    int code = ctx ? 0 : -ENOMEM;
    if (ctx) {
        ctx->hash = hash;
        ctx->key = malloc(kb.len);
        code = ctx->key ? 0 : -ENOMEM;
    }
    if (code == 0) {
        memcpy(ctx->key, kb.p, kb.len);
        ctx->key_len = kb.len;
        code = ctx_build(cache, opts, is_server, ctx, err, errlen);
    }
    kb_free(&kb);
    ERR_clear_error();
    if (code < 0) {
        if (ctx)
            ctx_free(ctx);
        return code;
    }
    ctx->refs = 1;
    ctx->used = ++cache->clock;
    ctx->next = cache->contexts;
    cache->contexts = ctx;
    cache->count++;
    evict_unused(cache);
    *out = ctx;
    return 0;
}

static void unlink_ctx(em__tls_cache *cache, em__tls_ctx *ctx)
{
    for (em__tls_ctx **p = &cache->contexts; *p; p = &(*p)->next) {
        if (*p == ctx) {
            *p = ctx->next;
            cache->count--;
            return;
        }
    }
}

void em__tls_ctx_release(em__tls_ctx *ctx)
{
    if (!ctx || --ctx->refs > 0)
        return;
    if (ctx->stale) {
        unlink_ctx(ctx->cache, ctx);
        ctx_free(ctx);
        return;
    }
    evict_unused(ctx->cache);
}

void em__tls_cache_free(em_loop *loop)
{
    em__tls_cache *cache = loop->tls_cache;
    while (cache->contexts) {
        em__tls_ctx *ctx = cache->contexts;
        cache->contexts = ctx->next;
        ctx_free(ctx);
    }
    identity_free(&cache->ephemeral);
    bio_method_free(cache);
    free(cache);
    loop->tls_cache = NULL;
}

int em_tls_flush_contexts(em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    em__tls_cache *cache = loop->tls_cache;
    if (!cache)
        return 0;
    int dropped = 0;
    em__tls_ctx **p = &cache->contexts;
    while (*p) {
        em__tls_ctx *ctx = *p;
        if (ctx->refs) {
            p = &ctx->next;
            continue;
        }
        *p = ctx->next;
        cache->count--;
        ctx_free(ctx);
        dropped++;
    }
    /* Contexts in use are never found again (a renewed file is read by the
     * next em_start_tls) and go when their last connection does. */
    for (em__tls_ctx *ctx = cache->contexts; ctx; ctx = ctx->next)
        ctx->stale = 1;
    return dropped;
}

/* ---- client sessions ------------------------------------------------- */

static em__tls_client_session *
session_slot(em__tls_ctx *ctx, const unsigned char *key, size_t key_len)
{
    for (size_t i = 0; i < ctx->session_count; i++) {
        em__tls_client_session *s = &ctx->sessions[i];
        if (s->key_len == key_len && memcmp(s->key, key, key_len) == 0)
            return s;
    }
    return NULL;
}

SSL_SESSION *em__tls_session_find(em__tls_ctx *ctx, const unsigned char *key,
                                  size_t key_len)
{
    em__tls_client_session *s = session_slot(ctx, key, key_len);
    if (!s)
        return NULL;
    if (!SSL_SESSION_is_resumable(s->session))
        return NULL;
    s->used = ++ctx->cache->clock;
    return s->session;
}

int em__tls_session_store(em__tls_ctx *ctx, const unsigned char *key,
                          size_t key_len, SSL_SESSION *session)
{
    em__tls_client_session *s = session_slot(ctx, key, key_len);
    if (s) {
        SSL_SESSION_free(s->session);
        s->session = session;
        s->used = ++ctx->cache->clock;
        return 1;
    }
    if (!ctx->sessions) {
        ctx->sessions = calloc(CLIENT_SESSIONS_KEPT, sizeof(*ctx->sessions));
        if (!ctx->sessions)
            return 0;
    }
    if (ctx->session_count < CLIENT_SESSIONS_KEPT) {
        s = &ctx->sessions[ctx->session_count];
        if (!(s->key = malloc(key_len)))
            return 0;
        ctx->session_count++;
    } else { /* replace the least recently used */
        s = &ctx->sessions[0];
        for (size_t i = 1; i < ctx->session_count; i++)
            if (ctx->sessions[i].used < s->used)
                s = &ctx->sessions[i];
        unsigned char *k = realloc(s->key, key_len);
        if (!k)
            return 0;
        s->key = k;
        SSL_SESSION_free(s->session);
    }
    memcpy(s->key, key, key_len);
    s->key_len = key_len;
    s->session = session;
    s->used = ++ctx->cache->clock;
    return 1;
}
