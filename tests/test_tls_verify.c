/*
 * test_tls_verify.c - certificate verification both ways, and SNI.
 *
 * Covers:
 *   - a client with default options rejects an expired certificate, a
 *     self-signed one, a chain from a CA outside the system store (no
 *     ca_file), a wrong name (other.pem as "localhost") and an explicit
 *     wrong verify_hostname: client unbind -EPROTO with em_tls_error saying
 *     why, the server's unbind nonzero (it gets the client's alert);
 *     skip_hostname_check accepts a good chain with a wrong name but not a
 *     bad chain; EM_TLS_VERIFY_NONE accepts all five and never calls
 *     ssl_verify_peer, and em_tls_verify_error is then X509_V_OK;
 *   - ssl_verify_peer: one call per certificate, root (depth 1) then leaf
 *     (depth 0), each PEM parsed here with PEM_read_bio_X509 and compared
 *     with ca.pem / server.pem; answering 0 rejects a good chain
 *     ("application verification failure"); answering 1 accepts the
 *     expired certificate (depth-0 call with preverified 0; afterwards
 *     em_tls_verify_error is "certificate has expired"); pinning other.pem
 *     by PEM overrides a host-name mismatch (reported first, at depth 0,
 *     before the root-to-leaf walk); em_tls_verify_error inside the
 *     callback says why preverified is 0; em_close_connection inside the
 * callback ends the connection, once, without a handshake;
 *   - a server with EM_TLS_VERIFY_PEER and ca_file: client.pem is accepted
 *     and is em_get_peer_cert on the server, the server's ssl_verify_peer
 *     sees the client's chain; no client certificate is accepted (-ENOENT)
 *     unless fail_if_no_peer_cert (then both sides fail, in TLS 1.3 and
 *     1.2); client2.pem from an untrusted CA is rejected;
 *   - SNI: sni_hostname reaches em_tls_sni on both sides; sni_certs pick
 *     alpha.pem for "alpha.test" (any case), beta.pem for one label under
 *     "*.beta.test", the default certificate for two labels, the bare
 *     domain and unknown names; without a main certificate the first SNI
 *     certificate is the default; an IP literal sends no SNI;
 *   - IPv6: a connect to ::1 verifies against the IP SAN ::1 (and a
 *     certificate without it is rejected), with no SNI.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <criterion/criterion.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "em.h"
#include "helpers.h"

/* ---- certificates -------------------------------------------------------- */

static X509 *parse_pem(const char *pem, size_t len)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    cr_assert_not_null(bio);
    X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return x;
}

/* The first certificate of TH_CERT_DIR/name. */
static X509 *load_cert(const char *name)
{
    char *pem = th_read_file(th_cert(name));
    X509 *x = parse_pem(pem, strlen(pem));
    free(pem);
    cr_assert_not_null(x, "%s: no certificate", name);
    return x;
}

static int same_cert(X509 *x, const char *name)
{
    X509 *want = load_cert(name);
    int same = x && X509_cmp(x, want) == 0;
    X509_free(want);
    return same;
}

/* The peer's certificate as em_get_peer_cert gives it, parsed. */
static X509 *peer_cert(const em_conn *conn)
{
    cr_assert_not_null(conn, "the connection is gone");
    int len = em_get_peer_cert(conn, NULL, 0);
    cr_assert_gt(len, 0, "em_get_peer_cert: %s", em_strerror(len));
    char *pem = malloc((size_t)len + 1);
    cr_assert_not_null(pem);
    cr_assert_eq(em_get_peer_cert(conn, pem, (size_t)len + 1), len);
    X509 *x = parse_pem(pem, (size_t)len);
    free(pem);
    cr_assert_not_null(x, "em_get_peer_cert gave no parsable PEM");
    return x;
}

static int peer_is(const em_conn *conn, const char *name)
{
    X509 *x = peer_cert(conn);
    int same = same_cert(x, name);
    X509_free(x);
    return same;
}

/* ---- a verify recorder ---------------------------------------------------
 * A th_tls with a record of every ssl_verify_peer call. th_tls_handler's
 * other callbacks see the th_tls, the first member. */

#define MAX_CALLS 8

typedef struct vcall {
    int depth;
    int preverified;
    long verify_error; /* em_tls_verify_error inside the call */
    X509 *cert;        /* the call's PEM, parsed */
} vcall;

typedef struct vrec {
    th_tls tls;
    int answer;      /* -1: return preverified; else this */
    int close_in_cb; /* em_close_connection(conn, 0) inside the call */
    int ncalls;
    int bad_pem; /* a PEM that did not parse or had the wrong length */
    vcall calls[MAX_CALLS];
} vrec;

static int vrec_verify(em_conn *conn, const char *pem, size_t len, int depth,
                       int preverified)
{
    vrec *v = em_conn_arg(conn);
    X509 *x = NULL;
    if (pem && strlen(pem) == len)
        x = parse_pem(pem, len);
    if (!x)
        v->bad_pem++;
    if (v->ncalls < MAX_CALLS) {
        vcall *c = &v->calls[v->ncalls];
        c->depth = depth;
        c->preverified = preverified;
        c->verify_error = em_tls_verify_error(conn);
        c->cert = x;
    } else {
        X509_free(x);
    }
    v->ncalls++;
    if (v->close_in_cb)
        cr_assert_eq(em_close_connection(conn, 0), 0);
    return v->answer < 0 ? preverified : v->answer;
}

static em_handler vrec_handler(void)
{
    em_handler h = th_tls_handler;
    h.ssl_verify_peer = vrec_verify;
    return h;
}

static void vrec_init(vrec *v)
{
    memset(v, 0, sizeof(*v));
    v->tls.verify_answer = -1;
    v->answer = -1;
}

static void vrec_free(vrec *v)
{
    for (int i = 0; i < v->ncalls && i < MAX_CALLS; i++)
        X509_free(v->calls[i].cert);
    th_tls_reset(&v->tls);
    vrec_init(v);
}

/* ---- plumbing ------------------------------------------------------------ */

static em_conn *dial(em_loop *loop, const char *host, int port,
                     const em_handler *h, void *arg)
{
    em_conn *conn = NULL;
    int rc = em_connect(loop, host, port, h, arg, &conn);
    cr_assert_eq(rc, 0, "em_connect %s: %s", host, em_strerror(rc));
    return conn;
}

/* Closes what is left of both sides and runs until each has unbound. */
static void hang_up(em_loop *loop, th_tls *server, th_tls *client)
{
    if (client->conn)
        em_close_connection(client->conn, 0);
    if (server->conn)
        em_close_connection(server->conn, 0);
    th_run_until_count(loop, &client->unbinds, 1, 5);
    th_run_until_count(loop, &server->unbinds, 1, 5);
    cr_assert_eq(client->unbinds, 1, "client: one unbind");
    cr_assert_eq(server->unbinds, 1, "server: one unbind");
}

/* ---- the client refuses bad server certificates -------------------------- */

typedef struct bad_case {
    const char *what;
    const char *server_cert; /* stem in TH_CERT_DIR */
    int system_store;        /* no ca_file */
    const char *verify_hostname;
    const char *expect; /* in em_tls_error, case-insensitive */
} bad_case;

static const bad_case bad_cases[] = {
    {"expired", "expired", 0, NULL, "expired"},
    {"self-signed", "selfsigned", 0, NULL, "self"},
    {"untrusted CA, system store", "server", 1, NULL, "issuer"},
    {"other.example as localhost", "other", 0, NULL, "hostname mismatch"},
    {"verify_hostname wrong.example", "server", 0, "wrong.example",
     "hostname mismatch"},
};
#define BAD_CASES (sizeof(bad_cases) / sizeof(bad_cases[0]))

static void bad_client_opts(em_tls_options *o, const bad_case *bc)
{
    if (!bc->system_store)
        th_tls_client_opts(o);
    o->verify_hostname = bc->verify_hostname;
}

Test(tls_verify, default_client_rejects_bad_server_certificates,
     .timeout = TH_TIMEOUT(30))
{
    for (size_t i = 0; i < BAD_CASES; i++) {
        const bad_case *bc = &bad_cases[i];
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        th_tls_server_opts(&server.opts, bc->server_cert);
        bad_client_opts(&client.opts, bc);
        em_server *srv = th_start_server(loop, &th_tls_handler, &server);
        dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
        th_run_until_count(loop, &client.unbinds, 1, 5);
        th_run_until_count(loop, &server.unbinds, 1, 5);
        cr_assert_eq(client.handshakes, 0, "%s: accepted", bc->what);
        cr_assert_eq(client.reason, -EPROTO, "%s: client unbind %s (%s)",
                     bc->what, em_err_name(client.reason), client.error);
        cr_assert_neq(client.error[0], '\0', "%s: no em_tls_error", bc->what);
        cr_assert(strcasestr(client.error, bc->expect),
                  "%s: em_tls_error \"%s\" does not mention \"%s\"", bc->what,
                  client.error, bc->expect);
        cr_assert_eq(server.handshakes, 0, "%s", bc->what);
        cr_assert_neq(server.reason, 0, "%s: the server's unbind", bc->what);
        cr_assert_eq(server.unbinds, 1);
        cr_assert_eq(client.unbinds, 1);
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client);
    }
}

/* The server learns why from the client's alert. */
Test(tls_verify, server_sees_the_clients_alert, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "selfsigned");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    cr_assert_eq(server.reason, -EPROTO, "%s (%s)", em_err_name(server.reason),
                 server.error);
    cr_assert(strcasestr(server.error, "alert"), "%s", server.error);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

Test(tls_verify, skip_hostname_check_verifies_the_chain_only,
     .timeout = TH_TIMEOUT(10))
{
    const char *certs[] = {"other", "selfsigned"};
    for (int i = 0; i < 2; i++) {
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        th_tls_server_opts(&server.opts, certs[i]);
        th_tls_client_opts(&client.opts);
        client.opts.skip_hostname_check = 1;
        em_server *srv = th_start_server(loop, &th_tls_handler, &server);
        dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
        th_tls_run_handshake(loop, &server, &client);
        if (i == 0) { /* a good chain for other.example */
            cr_assert_eq(client.handshakes, 1, "%s", client.error);
            cr_assert_eq(client.verify_calls, 2);
            cr_assert_eq(client.verify_preverified_ok, 2);
            cr_assert(peer_is(client.conn, "other.pem"));
            cr_assert_eq(em_tls_verify_error(client.conn), X509_V_OK);
            th_run_until_count(loop, &server.handshakes, 1, 5);
            hang_up(loop, &server, &client);
        } else { /* the chain is still checked */
            th_run_until_count(loop, &client.unbinds, 1, 5);
            th_run_until_count(loop, &server.unbinds, 1, 5);
            cr_assert_eq(client.handshakes, 0);
            cr_assert_eq(client.reason, -EPROTO);
            cr_assert(strcasestr(client.error, "self"), "%s", client.error);
        }
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client);
    }
}

Test(tls_verify, verify_none_accepts_every_bad_certificate,
     .timeout = TH_TIMEOUT(30))
{
    for (size_t i = 0; i < BAD_CASES; i++) {
        const bad_case *bc = &bad_cases[i];
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        th_tls_server_opts(&server.opts, bc->server_cert);
        bad_client_opts(&client.opts, bc);
        client.opts.verify_peer = EM_TLS_VERIFY_NONE;
        client.hello = "unverified";
        server.echo = 1;
        em_server *srv = th_start_server(loop, &th_tls_handler, &server);
        dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
        th_tls_run_handshake(loop, &server, &client);
        cr_assert_eq(client.handshakes, 1, "%s: %s", bc->what, client.error);
        th_run_until_size(loop, &client.got_len, strlen(client.hello), 5);
        cr_assert_str_eq((char *)client.got, client.hello, "%s", bc->what);
        cr_assert_eq(client.verify_calls, 0,
                     "%s: ssl_verify_peer without verification", bc->what);
        char stem[64];
        snprintf(stem, sizeof(stem), "%s.pem", bc->server_cert);
        cr_assert(peer_is(client.conn, stem), "%s", bc->what);
        hang_up(loop, &server, &client);
        cr_assert_eq(client.reason, 0, "%s: %s", bc->what, client.error);
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client);
    }
}

/* em.h: em_tls_verify_error is "X509_V_OK = 0 when verified or not
 * checked". With EM_TLS_VERIFY_NONE OpenSSL still walks the chain (without
 * any CA loaded); the getter must not pass that result on. */
Test(tls_verify, verify_none_reports_no_verify_error, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "expired");
    th_tls_client_opts(&client.opts);
    client.opts.verify_peer = EM_TLS_VERIFY_NONE;
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
    th_tls_run_handshake(loop, &server, &client);
    cr_assert_eq(client.handshakes, 1, "%s", client.error);
    long err = em_tls_verify_error(client.conn);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    hang_up(loop, &server, &client);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
    cr_assert_eq(err, X509_V_OK,
                 "em_tls_verify_error is %ld (%s) on a "
                 "connection that verified nothing",
                 err, X509_verify_cert_error_string(err));
}

/* ---- ssl_verify_peer ----------------------------------------------------- */

Test(tls_verify, callback_sees_root_then_leaf_as_valid_pem,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    vrec client;
    vrec_init(&client);
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &h, &client);
    th_tls_run_handshake(loop, &server, &client.tls);
    cr_assert_eq(client.tls.handshakes, 1, "%s", client.tls.error);
    cr_assert_eq(client.bad_pem, 0);
    cr_assert_eq(client.ncalls, 2, "one call per certificate: %d",
                 client.ncalls);
    cr_assert_eq(client.calls[0].depth, 1, "the root first");
    cr_assert_eq(client.calls[1].depth, 0, "then the leaf");
    cr_assert(same_cert(client.calls[0].cert, "ca.pem"));
    cr_assert(same_cert(client.calls[1].cert, "server.pem"));
    X509 *ca = load_cert("ca.pem");
    cr_assert_eq(X509_NAME_cmp(X509_get_subject_name(client.calls[0].cert),
                               X509_get_subject_name(ca)),
                 0);
    X509_free(ca);
    char cn[64] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(client.calls[1].cert),
                              NID_commonName, cn, sizeof(cn));
    cr_assert_str_eq(cn, "localhost");
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(client.calls[i].preverified, 1, "call %d", i);
        cr_assert_eq(client.calls[i].verify_error, X509_V_OK);
    }
    cr_assert_eq(em_tls_verify_error(client.tls.conn), X509_V_OK);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    hang_up(loop, &server, &client.tls);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    vrec_free(&client);
}

Test(tls_verify, callback_answering_zero_rejects_a_good_chain,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    vrec client;
    vrec_init(&client);
    client.answer = 0;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &h, &client);
    th_run_until_count(loop, &client.tls.unbinds, 1, 5);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    cr_assert_eq(client.tls.handshakes, 0);
    cr_assert_eq(client.tls.reason, -EPROTO, "%s",
                 em_err_name(client.tls.reason));
    cr_assert(strcasestr(client.tls.error, "application verification failure"),
              "%s", client.tls.error);
    /* the first refusal ends the chain walk: the root was good */
    cr_assert_eq(client.ncalls, 1);
    cr_assert_eq(client.calls[0].depth, 1);
    cr_assert_eq(client.calls[0].preverified, 1);
    cr_assert_neq(server.reason, 0);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    vrec_free(&client);
}

Test(tls_verify, callback_answering_one_accepts_an_expired_certificate,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    vrec client;
    vrec_init(&client);
    client.answer = 1;
    client.tls.hello = "pinned";
    server.echo = 1;
    th_tls_server_opts(&server.opts, "expired");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &h, &client);
    th_tls_run_handshake(loop, &server, &client.tls);
    cr_assert_eq(client.tls.handshakes, 1, "%s", client.tls.error);
    th_run_until_size(loop, &client.tls.got_len, 6, 5);
    cr_assert_str_eq((char *)client.tls.got, "pinned");
    cr_assert_eq(client.bad_pem, 0);
    int leaf_bad = -1;
    for (int i = 0; i < client.ncalls && i < MAX_CALLS; i++)
        if (client.calls[i].depth == 0 && !client.calls[i].preverified) {
            leaf_bad = i;
            break;
        }
    cr_assert_geq(leaf_bad, 0, "no depth-0 call with preverified 0");
    cr_assert(same_cert(client.calls[leaf_bad].cert, "expired.pem"));
    cr_assert_eq(client.calls[0].depth, 1);
    cr_assert_eq(client.calls[0].preverified, 1, "the CA itself is fine");
    /* once the error is overridden, OpenSSL reports the leaf once more as
     * good: 3 calls in all */
    cr_assert_eq(client.ncalls, 3);
    cr_assert_eq(client.calls[2].depth, 0);
    cr_assert_eq(client.calls[2].preverified, 1);
    /* OpenSSL's result stays on the connection: the application accepted
     * the certificate, it did not become valid */
    cr_assert_eq(em_tls_verify_error(client.tls.conn),
                 X509_V_ERR_CERT_HAS_EXPIRED, "%ld",
                 em_tls_verify_error(client.tls.conn));
    th_run_until_count(loop, &server.handshakes, 1, 5);
    hang_up(loop, &server, &client.tls);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    vrec_free(&client);
}

/* Certificate pinning, as docs/tls.md describes it: accept a leaf whose
 * PEM is the pinned certificate despite the name mismatch. */
static int pin_other(em_conn *conn, const char *pem, size_t len, int depth,
                     int preverified)
{
    vrec *v = em_conn_arg(conn);
    vrec_verify(conn, pem, len, depth, preverified);
    if (depth != 0)
        return preverified;
    X509 *x = parse_pem(pem, len);
    int pinned = same_cert(x, "other.pem");
    X509_free(x);
    if (!pinned)
        v->bad_pem++;
    return pinned;
}

Test(tls_verify, callback_pins_a_certificate_with_the_wrong_name,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    h.ssl_verify_peer = pin_other;
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    vrec client;
    vrec_init(&client);
    th_tls_server_opts(&server.opts, "other");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &h, &client);
    th_tls_run_handshake(loop, &server, &client.tls);
    cr_assert_eq(client.tls.handshakes, 1, "%s", client.tls.error);
    cr_assert_eq(client.bad_pem, 0);
    /* the name is checked before the signatures: the failing leaf comes
     * first, then the walk from the root (depth 1) down to the leaf */
    cr_assert_eq(client.ncalls, 3);
    cr_assert_eq(client.calls[0].depth, 0);
    cr_assert_eq(client.calls[0].preverified, 0, "hostname mismatch");
    cr_assert_eq(client.calls[1].depth, 1);
    cr_assert_eq(client.calls[1].preverified, 1);
    cr_assert_eq(client.calls[2].depth, 0);
    cr_assert_eq(em_tls_verify_error(client.tls.conn),
                 X509_V_ERR_HOSTNAME_MISMATCH);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    hang_up(loop, &server, &client.tls);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    vrec_free(&client);
}

/* em.h and docs/tls.md: "preverified is OpenSSL's verdict for it (1 good,
 * 0 bad; em_tls_verify_error(conn) says why)". Inside the callback, for the
 * expired leaf, em_tls_verify_error must say "certificate has expired". */
Test(tls_verify, verify_error_inside_the_callback_says_why,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    vrec client;
    vrec_init(&client);
    client.answer = 1;
    th_tls_server_opts(&server.opts, "expired");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &h, &client);
    th_tls_run_handshake(loop, &server, &client.tls);
    cr_assert_eq(client.tls.handshakes, 1, "%s", client.tls.error);
    long during = X509_V_OK;
    for (int i = 0; i < client.ncalls && i < MAX_CALLS; i++)
        if (client.calls[i].depth == 0 && !client.calls[i].preverified)
            during = client.calls[i].verify_error;
    th_run_until_count(loop, &server.handshakes, 1, 5);
    hang_up(loop, &server, &client.tls);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    vrec_free(&client);
    cr_assert_eq(during, X509_V_ERR_CERT_HAS_EXPIRED,
                 "em_tls_verify_error inside ssl_verify_peer "
                 "gave %ld (%s) for the expired leaf, not %d",
                 during, X509_verify_cert_error_string(during),
                 X509_V_ERR_CERT_HAS_EXPIRED);
}

Test(tls_verify, close_inside_the_callback_ends_the_connection,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    vrec client;
    vrec_init(&client);
    client.close_in_cb = 1;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "localhost", th_listen_port(srv), &h, &client);
    th_run_until_count(loop, &client.tls.unbinds, 1, 5);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    th_run_for(loop, 0.05); /* nothing more may come */
    cr_assert_eq(client.tls.unbinds, 1);
    cr_assert_eq(client.tls.handshakes, 0, "closed before the handshake ended");
    cr_assert_eq(client.ncalls, 1, "no call after the close");
    cr_assert_eq(client.tls.reason, 0, "a local close: %s (%s)",
                 em_err_name(client.tls.reason), client.tls.error);
    cr_assert_eq(server.handshakes, 0);
    cr_assert_neq(server.reason, 0);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    vrec_free(&client);
}

/* ---- the server verifies clients ----------------------------------------- */

static void verifying_server_opts(em_tls_options *o)
{
    th_tls_server_opts(o, "server");
    o->verify_peer = EM_TLS_VERIFY_PEER;
    o->ca_file = th_cert("ca.pem");
}

static void client_cert_opts(em_tls_options *o, const char *stem)
{
    th_tls_client_opts(o);
    th_tls_server_opts(o, stem); /* cert_chain_file and private_key_file */
    o->ca_file = th_cert("ca.pem");
}

Test(tls_verify, server_accepts_a_trusted_client_certificate,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    vrec server;
    vrec_init(&server);
    th_tls client = TH_TLS_INIT;
    verifying_server_opts(&server.tls.opts);
    client_cert_opts(&client.opts, "client");
    client.hello = "with a certificate";
    server.tls.echo = 1;
    em_server *srv = th_start_server(loop, &h, &server);
    dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
    th_run_until_count(loop, &server.tls.handshakes, 1, 5);
    th_run_until_size(loop, &client.got_len, strlen(client.hello), 5);
    cr_assert_eq(client.unbinds + server.tls.unbinds, 0, "%s / %s",
                 client.error, server.tls.error);
    cr_assert(peer_is(server.tls.conn, "client.pem"),
              "the server's peer certificate is client.pem");
    cr_assert_eq(em_tls_verify_error(server.tls.conn), X509_V_OK);
    /* the server's callback saw the client's chain */
    cr_assert_eq(server.bad_pem, 0);
    cr_assert_eq(server.ncalls, 2);
    cr_assert_eq(server.calls[0].depth, 1);
    cr_assert(same_cert(server.calls[0].cert, "ca.pem"));
    cr_assert_eq(server.calls[1].depth, 0);
    cr_assert(same_cert(server.calls[1].cert, "client.pem"));
    cr_assert(server.calls[0].preverified && server.calls[1].preverified);
    hang_up(loop, &server.tls, &client);
    th_stop_and_free(loop, srv);
    vrec_free(&server);
    th_tls_reset(&client);
}

Test(tls_verify, server_accepts_no_client_certificate_unless_required,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    vrec server;
    vrec_init(&server);
    th_tls client = TH_TLS_INIT;
    verifying_server_opts(&server.tls.opts);
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &h, &server);
    dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
    th_run_until_count(loop, &server.tls.handshakes, 1, 5);
    th_run_until_count(loop, &client.handshakes, 1, 5);
    cr_assert_eq(em_get_peer_cert(server.tls.conn, NULL, 0), -ENOENT);
    cr_assert_eq(server.ncalls, 0, "nothing to verify");
    hang_up(loop, &server.tls, &client);
    th_stop_and_free(loop, srv);
    vrec_free(&server);
    th_tls_reset(&client);
}

/* fail_if_no_peer_cert: the server ends the handshake with an alert. In
 * TLS 1.2 the client never sees the server's Finished; in TLS 1.3 the
 * client's handshake is over once it sent its Finished, so it may report
 * ssl_handshake_completed before the alert arrives, but its connection
 * still fails with -EPROTO and the server's never completes. */
Test(tls_verify, fail_if_no_peer_cert_fails_both_sides,
     .timeout = TH_TIMEOUT(10))
{
    const int versions[] = {EM_TLS_TLSv1_3, EM_TLS_TLSv1_2};
    for (int i = 0; i < 2; i++) {
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        verifying_server_opts(&server.opts);
        server.opts.fail_if_no_peer_cert = 1;
        th_tls_client_opts(&client.opts);
        client.opts.max_version = versions[i];
        em_server *srv = th_start_server(loop, &th_tls_handler, &server);
        dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
        th_run_until_count(loop, &server.unbinds, 1, 5);
        th_run_until_count(loop, &client.unbinds, 1, 5);
        const char *v = i == 0 ? "TLS 1.3" : "TLS 1.2";
        cr_assert_eq(server.handshakes, 0, "%s", v);
        cr_assert_eq(server.reason, -EPROTO, "%s: %s (%s)", v,
                     em_err_name(server.reason), server.error);
        cr_assert(strcasestr(server.error, "certificate"), "%s: %s", v,
                  server.error);
        cr_assert_eq(client.reason, -EPROTO, "%s: %s (%s)", v,
                     em_err_name(client.reason), client.error);
        cr_assert(strcasestr(client.error, "alert"), "%s: %s", v, client.error);
        if (i == 1)
            cr_assert_eq(client.handshakes, 0, "TLS 1.2");
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client);
    }
}

Test(tls_verify, server_rejects_a_client_from_an_untrusted_ca,
     .timeout = TH_TIMEOUT(10))
{
    em_handler h = vrec_handler();
    em_loop *loop = th_loop();
    vrec server;
    vrec_init(&server);
    th_tls client = TH_TLS_INIT;
    verifying_server_opts(&server.tls.opts);
    client_cert_opts(&client.opts, "client2");
    em_server *srv = th_start_server(loop, &h, &server);
    dial(loop, "localhost", th_listen_port(srv), &th_tls_handler, &client);
    th_run_until_count(loop, &server.tls.unbinds, 1, 5);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    cr_assert_eq(server.tls.handshakes, 0);
    cr_assert_eq(server.tls.reason, -EPROTO, "%s (%s)",
                 em_err_name(server.tls.reason), server.tls.error);
    cr_assert(strcasestr(server.tls.error, "issuer"), "%s", server.tls.error);
    cr_assert_neq(client.reason, 0);
    /* the callback saw client2 at depth 0, refused by OpenSSL */
    cr_assert_geq(server.ncalls, 1);
    cr_assert_eq(server.calls[0].depth, 0);
    cr_assert_eq(server.calls[0].preverified, 0);
    cr_assert(same_cert(server.calls[0].cert, "client2.pem"));
    th_stop_and_free(loop, srv);
    vrec_free(&server);
    th_tls_reset(&client);
}

/* ---- SNI ----------------------------------------------------------------- */

Test(tls_verify, sni_hostname_reaches_the_server, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    client.opts.sni_hostname = "named.example";
    client.opts.verify_hostname = "127.0.0.1";
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "127.0.0.1", th_listen_port(srv), &th_tls_handler, &client);
    th_tls_run_handshake(loop, &server, &client);
    cr_assert_eq(client.handshakes, 1, "%s", client.error);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    cr_assert_str_eq(server.sni, "named.example");
    cr_assert_str_eq(client.sni, "named.example", "the client's own SNI");
    cr_assert(peer_is(client.conn, "server.pem"));
    hang_up(loop, &server, &client);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

/* A server that accepts several connections needs file names of its own:
 * th_cert's 8 static slots are reused by every later th_cert call. */
typedef struct sni_files {
    char main_cert[512];
    char main_key[512];
    char cert[2][512];
    char key[2][512];
    em_tls_sni_cert certs[2];
} sni_files;

static void sni_files_init(sni_files *f)
{
    snprintf(f->main_cert, sizeof(f->main_cert), "%s", th_cert("server.pem"));
    snprintf(f->main_key, sizeof(f->main_key), "%s", th_cert("server.key"));
    const char *stems[2] = {"alpha", "beta"};
    const char *hosts[2] = {"alpha.test", "*.beta.test"};
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%s.pem", stems[i]);
        snprintf(f->cert[i], sizeof(f->cert[i]), "%s", th_cert(name));
        snprintf(name, sizeof(name), "%s.key", stems[i]);
        snprintf(f->key[i], sizeof(f->key[i]), "%s", th_cert(name));
        f->certs[i] = (em_tls_sni_cert){.hostname = hosts[i],
                                        .cert_chain_file = f->cert[i],
                                        .private_key_file = f->key[i]};
    }
}

typedef struct sni_case {
    const char *sni;
    const char *verify_hostname; /* NULL: the SNI name */
    const char *expect_cert;
} sni_case;

/* Connects a client with c->sni to srv and checks the certificate it got
 * (verified against the test CA) and the name the server saw. */
static void sni_check(em_loop *loop, int port, th_tls *server,
                      const sni_case *c)
{
    th_tls client = TH_TLS_INIT;
    th_tls_client_opts(&client.opts);
    client.opts.sni_hostname = c->sni;
    client.opts.verify_hostname = c->verify_hostname;
    client.opts.no_session_resumption = 1;
    int before = server->handshakes;
    dial(loop, "127.0.0.1", port, &th_tls_handler, &client);
    th_tls_run_handshake(loop, server, &client);
    cr_assert_eq(client.handshakes, 1, "%s: %s (server %d %s: %s)",
                 c->sni ? c->sni : "(no SNI)", client.error, server->unbinds,
                 em_err_name(server->reason), server->error);
    th_run_until_count(loop, &server->handshakes, before + 1, 5);
    cr_assert(peer_is(client.conn, c->expect_cert), "%s: expected %s",
              c->sni ? c->sni : "(no SNI)", c->expect_cert);
    cr_assert_str_eq(server->sni, c->sni ? c->sni : "");
    cr_assert_eq(client.verify_preverified_ok, client.verify_calls,
                 "%s: verified against the CA", c->sni);
    int unbinds = server->unbinds;
    em_close_connection(client.conn, 0);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    th_run_until_count(loop, &server->unbinds, unbinds + 1, 5);
    th_tls_reset(&client);
}

Test(tls_verify, sni_certs_choose_the_certificate, .timeout = TH_TIMEOUT(20))
{
    static const sni_case cases[] = {
        {"alpha.test", NULL, "alpha.pem"},
        {"ALPHA.Test", NULL, "alpha.pem"}, /* names are case-insensitive */
        {"x.beta.test", NULL, "beta.pem"},
        {"x.y.beta.test", "localhost", "server.pem"}, /* one label only */
        {"beta.test", "localhost", "server.pem"},
        {"unknown.test", "localhost", "server.pem"},
        {NULL, "127.0.0.1", "server.pem"}, /* IP literal: no SNI */
    };
    sni_files files;
    sni_files_init(&files);
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    server.opts.cert_chain_file = files.main_cert;
    server.opts.private_key_file = files.main_key;
    server.opts.sni_certs = files.certs;
    server.opts.sni_cert_count = 2;
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    int port = th_listen_port(srv);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        sni_check(loop, port, &server, &cases[i]);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
}

Test(tls_verify, first_sni_certificate_is_the_default,
     .timeout = TH_TIMEOUT(10))
{
    static const sni_case cases[] = {
        {NULL, "alpha.test", "alpha.pem"},
        {"unknown.test", "alpha.test", "alpha.pem"},
        {"x.beta.test", NULL, "beta.pem"},
    };
    sni_files files;
    sni_files_init(&files);
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    server.opts.sni_certs = files.certs;
    server.opts.sni_cert_count = 2;
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    int port = th_listen_port(srv);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        sni_check(loop, port, &server, &cases[i]);
    cr_assert_eq(server.start_err, 0);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
}

Test(tls_verify, ip_literal_sends_no_sni, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &th_tls_handler, &server);
    dial(loop, "127.0.0.1", th_listen_port(srv), &th_tls_handler, &client);
    th_tls_run_handshake(loop, &server, &client);
    cr_assert_eq(client.handshakes, 1, "%s", client.error);
    th_run_until_count(loop, &server.handshakes, 1, 5);
    cr_assert_str_eq(server.sni, "", "no SNI for an IP literal");
    cr_assert_str_eq(client.sni, "");
    cr_assert_null(em_tls_sni(server.conn));
    cr_assert_eq(client.verify_preverified_ok, client.verify_calls,
                 "verified against the IP SAN");
    hang_up(loop, &server, &client);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

/* ---- IPv6 ---------------------------------------------------------------- */

Test(tls_verify, ipv6_loopback_verifies_the_ip_san, .timeout = TH_TIMEOUT(10))
{
    if (!th_have_ipv6_loopback())
        cr_skip_test("no IPv6 loopback");
    const char *certs[] = {"server", "other"};
    for (int i = 0; i < 2; i++) {
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        th_tls_server_opts(&server.opts, certs[i]);
        th_tls_client_opts(&client.opts);
        em_server *srv = NULL;
        int rc = em_start_server(loop, "::1", 0, &th_tls_handler, &server, NULL,
                                 &srv);
        cr_assert_eq(rc, 0, "em_start_server ::1: %s", em_strerror(rc));
        dial(loop, "::1", th_listen_port(srv), &th_tls_handler, &client);
        th_tls_run_handshake(loop, &server, &client);
        if (i == 0) { /* server.pem carries IP:::1 */
            cr_assert_eq(client.handshakes, 1, "%s", client.error);
            cr_assert_eq(client.verify_calls, 2);
            cr_assert_eq(client.verify_preverified_ok, 2);
            th_run_until_count(loop, &server.handshakes, 1, 5);
            cr_assert_str_eq(server.sni, "", "no SNI for ::1");
            cr_assert(peer_is(client.conn, "server.pem"));
            hang_up(loop, &server, &client);
        } else { /* other.pem has no IP address */
            th_run_until_count(loop, &client.unbinds, 1, 5);
            th_run_until_count(loop, &server.unbinds, 1, 5);
            cr_assert_eq(client.reason, -EPROTO);
            cr_assert(strcasestr(client.error, "IP address mismatch"), "%s",
                      client.error);
        }
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client);
    }
}
