/*
 * rem_tls.c - EventMachine's TLS functions on libem's TLS: set_tls_parms,
 * start_tls, the ssl_handshake_completed and ssl_verify_peer callbacks,
 * and the getters (peer certificate, cipher, protocol, SNI name).
 *
 * EventMachine's options map onto em_tls_options with EventMachine's
 * meaning, which is permissive: without verify_peer nothing is verified
 * (EM_TLS_VERIFY_NONE, where libem's own default verifies chain and host
 * name), and with it the Ruby ssl_verify_peer callback alone decides, once
 * per certificate of the chain, whatever OpenSSL thought (libem may ask
 * again about a certificate with an error: the first answer is reused). A
 * server without a certificate gets libem's ephemeral self-signed one, as
 * EventMachine's built-in default certificate.
 *
 * Two defaults stay libem's, since EventMachine's Ruby cannot tell them
 * from an explicit choice: the cipher list (OpenSSL's at security level
 * 2, not EventMachine's "ALL:!ADH:!LOW:!EXP:!DES-CBC3-SHA:@STRENGTH") and
 * the versions: Ruby's start_tls asks for TLS 1.0 to 1.3 when no
 * ssl_version is given, so TLS 1.0 and 1.1 are used only when asked for
 * without 1.2 and 1.3. docs/ruby.md lists both.
 *
 * libem's secure verification is reachable through three start_tls keys
 * EventMachine's Ruby ignores (verify_hostname, ca_file, ca_path):
 * libem/eventmachine.rb's Connection#start_tls hands them to
 * LibEM.set_tls_verify before EventMachine's own start_tls runs. With any
 * of them, OpenSSL's verdict decides (chain against the CA store, and the
 * host name when asked) and a program's own ssl_verify_peer may only
 * reject more. A key of its own rather than a changed meaning of
 * verify_peer: programs that pass verify_peer and accept anything in
 * ssl_verify_peer (self-signed peers, pinning by hand) keep working.
 *
 * set_tls_parms and set_tls_verify keep their strings (copied) until
 * start_tls or the unbind.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rem.h"

/* EventMachine's protocol bits are libem's shifted left by one. */
enum { EM_PROTO_TLSv1_2 = 32, EM_PROTO_TLSv1_3 = 64, EM_PROTO_OLD = 8 | 16 };

typedef struct rem_tls_parms {
    char *strings[10];
    int verify_peer;
    int fail_if_no_peer_cert;
    unsigned protocols; /* EventMachine's bits */
} rem_tls_parms;

enum {
    P_KEY_FILE,
    P_KEY,
    P_KEY_PASS,
    P_CERT_FILE,
    P_CERT,
    P_SNI,
    P_CIPHERS,
    P_CURVE,
    P_DHPARAM,
};

/* LibEM.set_tls_verify's settings. */
typedef struct rem_tls_secure {
    char *verify_hostname; /* NULL: the connect host (when check_name) */
    char *ca_file;
    char *ca_path;
    int check_name;
    int ask_ruby; /* the program defines its own ssl_verify_peer */
} rem_tls_secure;

static void secure_free(rem_conn *rc)
{
    rem_tls_secure *s = rc->tls_secure;
    if (!s)
        return;
    free(s->verify_hostname);
    free(s->ca_file);
    free(s->ca_path);
    free(s);
    rc->tls_secure = NULL;
}

void rem_tls_free(rem_conn *rc)
{
    rem_tls_parms_free(rc);
    secure_free(rc);
    free(rc->connect_host);
    rc->connect_host = NULL;
}

void rem_tls_parms_free(rem_conn *rc)
{
    rem_tls_parms *p = rc->tls_parms;
    if (!p)
        return;
    for (size_t i = 0; i < sizeof(p->strings) / sizeof(p->strings[0]); i++)
        free(p->strings[i]);
    free(p);
    rc->tls_parms = NULL;
}

/* A copy of v, or NULL for nil and "" (EventMachine's Ruby passes ""
 * for "unset"); *nomem is set when strdup fails. */
static char *dup_or_null(VALUE v, int *nomem)
{
    if (NIL_P(v) || !*RSTRING_PTR(v))
        return NULL;
    char *d = strdup(RSTRING_PTR(v));
    *nomem |= !d;
    return d;
}

static VALUE t_set_tls_parms(int argc, VALUE *argv, VALUE self)
{
    (void)self;
    rem_loop("evma_set_tls_parms");
    if (argc != 13)
        rb_error_arity(argc, 13, 13);
    /* Every conversion (they may raise) before anything is allocated. */
    VALUE in[9] = {argv[1], argv[2], argv[3],  argv[4], argv[5],
                   argv[8], argv[9], argv[10], argv[11]};
    for (int i = 0; i < 9; i++)
        if (!NIL_P(in[i]))
            StringValueCStr(in[i]);
    unsigned protocols = NUM2UINT(argv[12]);
    em_conn *conn = rem_conn_of(argv[0]);
    if (!conn)
        return Qnil;
    rem_tls_parms *p = calloc(1, sizeof(*p));
    if (!p)
        rb_memerror();
    int nomem = 0;
    for (int i = 0; i < 9; i++)
        p->strings[i] = dup_or_null(in[i], &nomem);
    p->verify_peer = RTEST(argv[6]);
    p->fail_if_no_peer_cert = RTEST(argv[7]);
    p->protocols = protocols;
    rem_conn *rc = em_conn_state(conn);
    rem_tls_parms_free(rc);
    rc->tls_parms = p;
    if (nomem) {
        rem_tls_parms_free(rc);
        rb_memerror();
    }
    return Qnil;
}

/* LibEM.set_tls_verify(sig, verify_hostname, ca_file, ca_path, ask_ruby):
 * verify_hostname is true (the host given to connect), false/nil (chain
 * only) or a name; the files are Strings or nil. */
static VALUE t_set_tls_verify(VALUE self, VALUE sig, VALUE name, VALUE ca_file,
                              VALUE ca_path, VALUE ask_ruby)
{
    (void)self;
    rem_loop("evma_set_tls_parms");
    if (RTEST(name) && name != Qtrue)
        StringValueCStr(name);
    if (!NIL_P(ca_file))
        StringValueCStr(ca_file);
    if (!NIL_P(ca_path))
        StringValueCStr(ca_path);
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return Qnil;
    rem_tls_secure *s = calloc(1, sizeof(*s));
    if (!s)
        rb_memerror();
    int nomem = 0;
    s->check_name = RTEST(name);
    if (RTEST(name) && name != Qtrue)
        s->verify_hostname = dup_or_null(name, &nomem);
    s->ca_file = dup_or_null(ca_file, &nomem);
    s->ca_path = dup_or_null(ca_path, &nomem);
    s->ask_ruby = RTEST(ask_ruby);
    rem_conn *rc = em_conn_state(conn);
    secure_free(rc);
    rc->tls_secure = s;
    if (nomem) {
        secure_free(rc);
        rb_memerror();
    }
    return Qnil;
}

/* ---- callbacks ------------------------------------------------------- */

typedef struct verify_call {
    uint64_t sig;
    const char *pem;
    size_t len;
    int accept;
} verify_call;

static VALUE call_verify(VALUE arg)
{
    verify_call *v = (verify_call *)arg;
    VALUE conn = rem_conn_object(v->sig);
    VALUE r = rb_funcall(conn, rem_id_ssl_verify_peer, 1,
                         rb_str_new(v->pem, (long)v->len));
    v->accept = RTEST(r);
    return Qnil;
}

int rem_on_verify_peer(em_conn *conn, const char *pem, size_t len, int depth,
                       int preverified)
{
    rem_conn *rc = em_conn_state(conn);
    if (!(rc->flags & REM_KNOWN))
        return 0;
    /* EventMachine's meaning: the Ruby answer alone decides. Secure
     * (REM_TLS_SECURE): OpenSSL's verdict first, then the program's own
     * ssl_verify_peer, if it has one, may reject. */
    if (rc->flags & REM_TLS_SECURE) {
        if (!preverified)
            return 0;
        if (!(rc->flags & REM_TLS_ASK_RUBY))
            return 1;
    }
    unsigned bit = depth >= 0 && depth < 32 ? 1u << depth : 0;
    if (bit && (rc->verify_asked & bit))
        return (rc->verify_accepted & bit) != 0;
    verify_call v = {rc->sig, pem, len, 0};
    if (rem_call(call_verify, (VALUE)&v) < 0)
        v.accept = 0;
    rc->verify_asked |= bit;
    if (v.accept)
        rc->verify_accepted |= bit;
    return v.accept;
}

/* ---- start_tls ------------------------------------------------------- */

static unsigned libem_protocols(unsigned em_bits)
{
    if (em_bits == 0)
        return 0;
    if (em_bits & (EM_PROTO_TLSv1_2 | EM_PROTO_TLSv1_3))
        em_bits &= ~(unsigned)EM_PROTO_OLD; /* see the top of the file */
    return em_bits >> 1;
}

static VALUE t_start_tls(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_start_tls");
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        rb_raise(rb_eRuntimeError, "SSL/TLS not running on this connection");
    rem_conn *rc = em_conn_state(conn);
    rem_tls_parms *p = rc->tls_parms;
    em_tls_options o;
    memset(&o, 0, sizeof(o));
    o.verify_peer = EM_TLS_VERIFY_NONE;
    o.ephemeral_cert = 1; /* used only by a server without a certificate */
    if (p) {
        o.private_key_file = p->strings[P_KEY_FILE];
        o.private_key_pem = p->strings[P_KEY];
        o.private_key_pass = p->strings[P_KEY_PASS];
        o.cert_chain_file = p->strings[P_CERT_FILE];
        o.cert_chain_pem = p->strings[P_CERT];
        o.sni_hostname = p->strings[P_SNI];
        o.cipher_list = p->strings[P_CIPHERS];
        o.ecdh_curve = p->strings[P_CURVE];
        o.dhparam_file = p->strings[P_DHPARAM];
        o.protocols = libem_protocols(p->protocols);
        if (p->verify_peer) {
            o.verify_peer = EM_TLS_VERIFY_PEER;
            o.skip_hostname_check = 1; /* EventMachine checks no names */
            o.fail_if_no_peer_cert = p->fail_if_no_peer_cert;
        }
    }
    rem_tls_secure *s = rc->tls_secure;
    rc->flags &= ~(unsigned)(REM_TLS_SECURE | REM_TLS_ASK_RUBY);
    char ip[sizeof(struct in6_addr)];
    if (s) {
        rc->flags |= REM_TLS_SECURE | (s->ask_ruby ? REM_TLS_ASK_RUBY : 0);
        /* A client verifies either way; a server asks for a client
         * certificate only with verify_peer, as EventMachine. */
        o.verify_peer =
            p && p->verify_peer ? EM_TLS_VERIFY_PEER : EM_TLS_VERIFY_DEFAULT;
        o.skip_hostname_check = !s->check_name;
        o.ca_file = s->ca_file;
        o.ca_path = s->ca_path;
        if (s->check_name) {
            const char *host = rc->connect_host;
            o.verify_hostname = s->verify_hostname ? s->verify_hostname
                                : o.sni_hostname   ? o.sni_hostname
                                                   : host;
            /* SNI names a host, never an address (RFC 6066). */
            if (!o.sni_hostname && host && inet_pton(AF_INET, host, ip) != 1 &&
                inet_pton(AF_INET6, host, ip) != 1)
                o.sni_hostname = host;
        }
    }
    rc->verify_asked = rc->verify_accepted = 0;
    int err = em_start_tls(conn, &o);
    char why[256];
    snprintf(why, sizeof(why), "%s", em_tls_error(conn));
    rem_tls_parms_free(rc);
    secure_free(rc);
    if (err == -EKEYREJECTED || err == -ENOKEY ||
        (err == -EBADMSG && o.private_key_pem))
        rb_raise(rem_eInvalidPrivateKey, "%s", *why ? why : strerror(-err));
    if (err < 0)
        rb_raise(rb_eRuntimeError, "start_tls: %s",
                 *why ? why : strerror(-err));
    return Qnil;
}

/* ---- getters --------------------------------------------------------- */

static VALUE t_get_peer_cert(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_peer_cert");
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return Qnil;
    int n = em_get_peer_cert(conn, NULL, 0);
    if (n < 0)
        return Qnil;
    VALUE s = rb_str_new(NULL, n);
    if (em_get_peer_cert(conn, RSTRING_PTR(s), (size_t)n + 1) != n)
        return Qnil;
    return s;
}

static VALUE str_or_nil(const char *s)
{
    return s ? rb_str_new_cstr(s) : Qnil;
}

static VALUE t_get_cipher_bits(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_cipher_bits");
    em_conn *conn = rem_conn_of(sig);
    int bits = conn ? em_tls_cipher_bits(conn) : -EINVAL;
    return bits < 0 ? Qnil : INT2NUM(bits);
}

static VALUE t_get_cipher_name(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_cipher_name");
    em_conn *conn = rem_conn_of(sig);
    return conn ? str_or_nil(em_tls_cipher(conn)) : Qnil;
}

static VALUE t_get_cipher_protocol(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_cipher_protocol");
    em_conn *conn = rem_conn_of(sig);
    return conn ? str_or_nil(em_tls_protocol(conn)) : Qnil;
}

static VALUE t_get_sni_hostname(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_sni_hostname");
    em_conn *conn = rem_conn_of(sig);
    return conn ? str_or_nil(em_tls_sni(conn)) : Qnil;
}

static VALUE t_ssl_p(VALUE self)
{
    (void)self;
    return Qtrue;
}

void rem_define_tls(void)
{
    VALUE m = rem_mEM;
    rb_define_module_function(m, "set_tls_parms", t_set_tls_parms, -1);
    rb_define_module_function(m, "start_tls", t_start_tls, 1);
    rb_define_module_function(m, "get_peer_cert", t_get_peer_cert, 1);
    rb_define_module_function(m, "get_cipher_bits", t_get_cipher_bits, 1);
    rb_define_module_function(m, "get_cipher_name", t_get_cipher_name, 1);
    rb_define_module_function(m, "get_cipher_protocol", t_get_cipher_protocol,
                              1);
    rb_define_module_function(m, "get_sni_hostname", t_get_sni_hostname, 1);
    rb_define_module_function(m, "ssl?", t_ssl_p, 0);
    /* libem's own, outside EventMachine's set of module functions. */
    VALUE libem = rb_define_module("LibEM");
    rb_define_module_function(libem, "set_tls_verify", t_set_tls_verify, 5);
}
