/*
 * test_tls.c - TLS on the data path: libem server and client in one loop.
 *
 * Covers: the default handshake (TLS 1.3, verified by CA and host name or
 * IP), getters, 10 MiB each way in random pieces arriving in chunks unlike
 * the writes, close_notify versus an unexpected EOF, half-close, pause and
 * resume with plaintext buffered inside OpenSSL, close after writing, the
 * outbound size and drained, STARTTLS both ways (bytes pipelined behind the
 * command reach the handshake; bytes queued before em_start_tls go in
 * clear), TLS over a Unix socket, TLS started in connection_completed, and
 * reconnect after a TLS connection.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"
#include "internal.h"

#define MiB (1024u * 1024u)

static em_server *tls_server(em_loop *loop, th_tls *server)
{
    return th_start_server(loop, &th_tls_handler, server);
}

static em_conn *tls_connect(em_loop *loop, const char *host, int port,
                            th_tls *client)
{
    em_conn *conn = NULL;
    int rc = em_connect(loop, host, port, &th_tls_handler, client, &conn);
    cr_assert_eq(rc, 0, "em_connect: %s", em_strerror(rc));
    return conn;
}

static void finish(em_loop *loop, em_server *srv, th_tls *server,
                   th_tls *client)
{
    if (client->conn)
        em_close_connection(client->conn, 0);
    if (server->conn)
        em_close_connection(server->conn, 0);
    th_run_until_count(loop, &client->unbinds, 1, 5);
    th_stop_and_free(loop, srv);
    th_tls_reset(server);
    th_tls_reset(client);
}

/* ---- handshake and getters -------------------------------------------- */

Test(tls, default_handshake_by_name_and_ip, .timeout = TH_TIMEOUT(20))
{
    const char *hosts[] = {"localhost", "127.0.0.1"};
    for (int i = 0; i < 2; i++) {
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        th_tls_server_opts(&server.opts, "server");
        th_tls_client_opts(&client.opts);
        server.echo = 1;
        client.hello = "hello over tls";
        em_server *srv = tls_server(loop, &server);
        tls_connect(loop, hosts[i], th_listen_port(srv), &client);
        th_tls_run_handshake(loop, &server, &client);
        cr_assert_eq(client.handshakes, 1, "%s: client: %s", hosts[i],
                     client.error);
        cr_assert_eq(server.handshakes, 1, "server: %s", server.error);
        cr_assert_str_eq(client.protocol, "TLSv1.3");
        cr_assert_str_eq(server.protocol, "TLSv1.3");
        cr_assert_str_eq(client.cipher, server.cipher);
        cr_assert_geq(client.bits, 128);
        cr_assert_eq(client.completed, 1);
        /* SNI: a name is sent, an IP literal is not */
        if (i == 0)
            cr_assert_str_eq(server.sni, "localhost");
        else
            cr_assert_str_eq(server.sni, "");
        /* the client verified: the callback saw CA (1) and leaf (0) */
        cr_assert_geq(client.verify_calls, 2);
        cr_assert_eq(client.verify_max_depth, 1);
        cr_assert(client.pem_ok);
        cr_assert_eq(server.verify_calls, 0, "a server asks for nothing");
        th_run_until_size(loop, &client.got_len, strlen(client.hello), 5);
        cr_assert_str_eq((char *)client.got, client.hello);
        cr_assert_eq(em_get_outbound_data_size(client.conn), 0);
        finish(loop, srv, &server, &client);
    }
}

Test(tls, peer_cert_and_getters_before_handshake, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = tls_server(loop, &server);
    em_conn *c = tls_connect(loop, "127.0.0.1", th_listen_port(srv), &client);
    cr_assert(em_is_tls(c));
    cr_assert_not(em_tls_handshake_done(c));
    cr_assert_null(em_tls_cipher(c));
    cr_assert_null(em_tls_protocol(c));
    cr_assert_eq(em_tls_cipher_bits(c), -ENOTCONN);
    cr_assert_eq(em_get_peer_cert(c, NULL, 0), -ENOTCONN);
    cr_assert_str_eq(em_tls_error(c), "");
    th_tls_run_handshake(loop, &server, &client);
    cr_assert_eq(client.handshakes, 1, "%s", client.error);

    int len = em_get_peer_cert(client.conn, NULL, 0);
    cr_assert_gt(len, 100);
    char *pem = malloc((size_t)len + 1);
    cr_assert_eq(em_get_peer_cert(client.conn, pem, (size_t)len + 1), len);
    cr_assert_eq(strlen(pem), (size_t)len);
    char *expected = th_read_file(th_cert("server.pem"));
    cr_assert(strncmp(expected, pem, (size_t)len) == 0,
              "the peer certificate is server.pem");
    char small[10];
    cr_assert_eq(em_get_peer_cert(client.conn, small, sizeof(small)), len);
    cr_assert_eq(strlen(small), 9);
    /* a server that asked for nothing has no peer certificate */
    cr_assert_eq(em_get_peer_cert(server.conn, NULL, 0), -ENOENT);
    cr_assert_eq(em_tls_verify_error(client.conn), 0);
    free(pem);
    free(expected);

    cr_assert_eq(em_is_tls(NULL), 0);
    cr_assert_eq(em_get_peer_cert(NULL, NULL, 0), -EINVAL);
    cr_assert_str_eq(em_tls_error(NULL), "");
    finish(loop, srv, &server, &client);
}

/* ---- bulk data -------------------------------------------------------- */

typedef struct bulk {
    th_tls tls;
    uint64_t seed;
    size_t to_send;
    size_t sent;
    size_t received;
    size_t chunks;
    size_t writes;
    size_t max_chunk;
    int bad_offset;
    int drained;
} bulk;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

/* Sends the pattern in random pieces (1 B to 100 KiB) while the outbound
 * queue is below 1 MiB; drained sends more. */
static void bulk_pump(em_conn *conn)
{
    bulk *b = em_conn_arg(conn);
    static uint8_t piece[100 * 1024];
    while (b->sent < b->to_send && em_get_outbound_data_size(conn) < MiB) {
        size_t n = 1 + (size_t)(xorshift(&b->seed) % sizeof(piece));
        if (n > b->to_send - b->sent)
            n = b->to_send - b->sent;
        th_pat_fill(piece, b->sent, n);
        int rc = em_send_data(conn, piece, n);
        cr_assert_eq(rc, 0, "send: %s", em_strerror(rc));
        b->sent += n;
        b->writes++;
    }
}

static void bulk_handshake(em_conn *conn)
{
    bulk_pump(conn);
}

static void bulk_drained(em_conn *conn)
{
    bulk *b = em_conn_arg(conn);
    b->drained++;
    bulk_pump(conn);
}

static void bulk_receive(em_conn *conn, const char *data, size_t len)
{
    bulk *b = em_conn_arg(conn);
    if (th_pat_check((const uint8_t *)data, b->received, len) >= 0)
        b->bad_offset = 1;
    b->received += len;
    b->chunks++;
    if (len > b->max_chunk)
        b->max_chunk = len;
}

static void bulk_post_init(em_conn *conn, void *arg)
{
    bulk *b = arg;
    b->tls.conn = conn;
    int rc = em_start_tls(conn, &b->tls.opts);
    cr_assert_eq(rc, 0, "start_tls: %s (%s)", em_strerror(rc),
                 em_tls_error(conn));
}

static void bulk_unbind(em_conn *conn, int reason)
{
    bulk *b = em_conn_arg(conn);
    b->tls.unbinds++;
    b->tls.reason = reason;
    snprintf(b->tls.error, sizeof(b->tls.error), "%s", em_tls_error(conn));
}

static const em_handler bulk_handler = {
    .post_init = bulk_post_init,
    .ssl_handshake_completed = bulk_handshake,
    .receive_data = bulk_receive,
    .drained = bulk_drained,
    .unbind = bulk_unbind,
};

Test(tls, ten_mib_each_way_in_random_pieces, .timeout = TH_TIMEOUT(60))
{
    em_loop *loop = th_loop();
    bulk server = {.seed = 1, .to_send = 10 * MiB};
    bulk client = {.seed = 2, .to_send = 10 * MiB};
    th_tls_server_opts(&server.tls.opts, "server");
    th_tls_client_opts(&client.tls.opts);
    em_server *srv = th_start_server(loop, &bulk_handler, &server);
    em_conn *c = NULL;
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv),
                            &bulk_handler, &client, &c),
                 0);
    double deadline = th_now() + TH_TIMEOUT(50);
    while (server.received < 10 * MiB || client.received < 10 * MiB) {
        cr_assert_lt(th_now(), deadline, "server got %zu, client %zu",
                     server.received, client.received);
        cr_assert_eq(client.tls.unbinds + server.tls.unbinds, 0, "%s / %s",
                     client.tls.error, server.tls.error);
        em_run_once(loop, 10);
    }
    cr_assert_not(server.bad_offset, "server: a byte out of place");
    cr_assert_not(client.bad_offset, "client: a byte out of place");
    cr_assert_eq(server.received, 10 * MiB);
    cr_assert_eq(client.received, 10 * MiB);
    /* chunks are not the writes: reads coalesce records (full 64 KiB) */
    cr_assert_neq(server.chunks, client.writes);
    cr_assert_gt(server.max_chunk, 16384, "reads span several records");
    cr_assert_gt(client.drained, 0);
    em_close_connection(c, 0);
    th_run_until_count(loop, &server.tls.unbinds, 1, 5);
    cr_assert_eq(server.tls.reason, 0, "close_notify: a clean end (%s)",
                 server.tls.error);
    th_stop_and_free(loop, srv);
}

/* ---- closing ---------------------------------------------------------- */

Test(tls, close_notify_versus_unexpected_eof, .timeout = TH_TIMEOUT(10))
{
    for (int raw = 0; raw < 2; raw++) {
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
        th_tls_server_opts(&server.opts, "server");
        th_tls_client_opts(&client.opts);
        em_server *srv = tls_server(loop, &server);
        tls_connect(loop, "localhost", th_listen_port(srv), &client);
        th_tls_run_handshake(loop, &server, &client);
        cr_assert_eq(client.handshakes, 1, "%s", client.error);
        if (raw) /* the socket ends under TLS: no close_notify */
            shutdown(server.conn->watcher.fd, SHUT_RDWR);
        else
            em_close_connection(server.conn, 0);
        th_run_until_count(loop, &client.unbinds, 1, 5);
        if (raw) {
            cr_assert_eq(client.reason, -ECONNABORTED, "%s",
                         em_strerror(client.reason));
            cr_assert(strstr(client.error, "close_notify"), "%s", client.error);
            em_close_connection(server.conn, 0);
        } else {
            cr_assert_eq(client.reason, 0, "%s: %s", em_strerror(client.reason),
                         client.error);
            cr_assert_str_eq(client.error, "");
        }
        th_run_until_count(loop, &server.unbinds, 1, 5);
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client);
    }
}

static void half_close_handshake(em_conn *conn)
{
    th_tls *t = em_conn_arg(conn);
    t->handshakes++;
    cr_assert_eq(em_send_data(conn, "request", 7), 0);
    cr_assert_eq(em_close_write(conn), 0);
}

static const em_handler half_close_client = {
    .post_init = NULL,
    .receive_data = NULL,
    .ssl_handshake_completed = half_close_handshake,
};

static void half_post_init(em_conn *conn, void *arg)
{
    th_tls *t = arg;
    t->conn = conn;
    cr_assert_eq(em_start_tls(conn, &t->opts), 0);
}

static void half_receive(em_conn *conn, const char *data, size_t len)
{
    th_tls *t = em_conn_arg(conn);
    t->got = realloc(t->got, t->got_len + len + 1);
    memcpy(t->got + t->got_len, data, len);
    t->got_len += len;
    t->got[t->got_len] = 0;
}

static void half_unbind(em_conn *conn, int reason)
{
    th_tls *t = em_conn_arg(conn);
    t->unbinds++;
    t->reason = reason;
    snprintf(t->error, sizeof(t->error), "%s", em_tls_error(conn));
}

/* The client sends and half-closes (close_notify, then FIN) at once; the
 * server's echo still reaches it (TLS 1.3 half-close) and both ends close
 * cleanly. */
Test(tls, half_close_reply_after_close_notify, .timeout = TH_TIMEOUT(10))
{
    em_handler client_h = half_close_client;
    client_h.post_init = half_post_init;
    client_h.receive_data = half_receive;
    client_h.unbind = half_unbind;
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    server.echo = 1; /* th_tls_handler echoes "request" */
    em_server *srv = tls_server(loop, &server);
    em_conn *c = NULL;
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, &c),
                 0);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    cr_assert_eq(client.handshakes, 1);
    cr_assert_str_eq((char *)client.got, "request",
                     "the reply arrived after our close_notify");
    cr_assert_eq(client.reason, 0, "%s", client.error);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    cr_assert_eq(server.reason, 0, "%s", server.error);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

/* Close after writing: 4 MiB then close_notify, all of it arrives. */
static void big_reply_handshake(em_conn *conn)
{
    static uint8_t buf[4 * MiB];
    th_pat_fill(buf, 0, sizeof(buf));
    cr_assert_eq(em_send_data(conn, buf, sizeof(buf)), 0);
    cr_assert_gt(em_get_outbound_data_size(conn), 0);
    cr_assert_eq(em_close_connection(conn, 1), 0);
    cr_assert_eq(em_send_data(conn, "x", 1), -EPIPE);
}

static void count_receive(em_conn *conn, const char *data, size_t len)
{
    th_tls *t = em_conn_arg(conn);
    if (th_pat_check((const uint8_t *)data, t->got_len, len) >= 0)
        t->verify_calls = -1000; /* marks a wrong byte */
    t->got_len += len;
}

Test(tls, close_after_writing_delivers_everything, .timeout = TH_TIMEOUT(20))
{
    em_handler server_h = {.post_init = half_post_init,
                           .ssl_handshake_completed = big_reply_handshake,
                           .unbind = half_unbind};
    em_handler client_h = {.post_init = half_post_init,
                           .receive_data = count_receive,
                           .unbind = half_unbind};
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &server_h, &server);
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, NULL),
                 0);
    th_run_until_count(loop, &client.unbinds, 1, 15);
    cr_assert_eq(client.got_len, 4 * MiB);
    cr_assert_geq(client.verify_calls, 0, "bytes out of place");
    cr_assert_eq(client.reason, 0, "%s", client.error);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    cr_assert_eq(server.reason, 0, "%s", server.error);
    th_stop_and_free(loop, srv);
}

/* ---- pause and resume ------------------------------------------------- */

typedef struct pauser {
    th_tls tls;
    int paused_once;
    em_loop *loop;
} pauser;

static void resume_later(em_loop *loop, void *arg)
{
    (void)loop;
    pauser *p = arg;
    cr_assert_eq(em_resume(p->tls.conn), 0);
}

/* Pauses after the first chunk: the rest of the 1 MiB waits in the socket
 * and inside OpenSSL's buffer; resume must deliver it without a new event. */
static void pause_receive(em_conn *conn, const char *data, size_t len)
{
    pauser *p = em_conn_arg(conn);
    count_receive(conn, data, len);
    if (!p->paused_once) {
        p->paused_once = 1;
        cr_assert_eq(em_pause(conn), 0);
        cr_assert_eq(em_add_timer(p->loop, 0.2, resume_later, p, NULL), 0);
    }
}

static void send_mib_handshake(em_conn *conn)
{
    static uint8_t buf[MiB];
    th_pat_fill(buf, 0, sizeof(buf));
    cr_assert_eq(em_send_data(conn, buf, sizeof(buf)), 0);
}

Test(tls, pause_then_resume_delivers_buffered_plaintext,
     .timeout = TH_TIMEOUT(20))
{
    em_handler server_h = {.post_init = half_post_init,
                           .receive_data = pause_receive,
                           .unbind = half_unbind};
    em_handler client_h = {.post_init = half_post_init,
                           .ssl_handshake_completed = send_mib_handshake,
                           .unbind = half_unbind};
    em_loop *loop = th_loop();
    pauser server = {.loop = loop};
    th_tls client = TH_TLS_INIT;
    server.tls.verify_answer = -1;
    th_tls_server_opts(&server.tls.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &server_h, &server);
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, NULL),
                 0);
    th_run_until_size(loop, &server.tls.got_len, MiB, 15);
    cr_assert(server.paused_once);
    cr_assert_geq(server.tls.verify_calls, 0, "bytes out of place");
    cr_assert_not(em_is_paused(server.tls.conn));
    em_close_connection(server.tls.conn, 0);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
}

/* ---- STARTTLS --------------------------------------------------------- */

/* Server: a line protocol. "STARTTLS\r\n" answers "GO\r\n" and starts TLS
 * in the same callback (the answer is queued in clear first); what follows
 * the line in the same chunk is handed to the handshake as preread. */
typedef struct starttls {
    th_tls tls;
    char plain[4096];
    size_t plain_len;
    int started;
    int answer; /* send "GO\r\n" before starting */
} starttls;

static void starttls_server_receive(em_conn *conn, const char *data, size_t len)
{
    starttls *s = em_conn_arg(conn);
    if (s->started) {
        th_tls *t = &s->tls;
        t->got = realloc(t->got, t->got_len + len + 1);
        memcpy(t->got + t->got_len, data, len);
        t->got_len += len;
        t->got[t->got_len] = 0;
        cr_assert_eq(em_send_data(conn, data, len), 0);
        return;
    }
    cr_assert_lt(s->plain_len + len, sizeof(s->plain));
    memcpy(s->plain + s->plain_len, data, len);
    s->plain_len += len;
    char *eol = memmem(s->plain, s->plain_len, "\r\n", 2);
    if (!eol)
        return;
    size_t line = (size_t)(eol - s->plain) + 2;
    cr_assert(strncmp(s->plain, "STARTTLS\r\n", line) == 0);
    if (s->answer)
        cr_assert_eq(em_send_data(conn, "GO\r\n", 4), 0);
    s->tls.opts.preread = s->plain + line;
    s->tls.opts.preread_len = s->plain_len - line;
    s->tls.handshakes = (int)s->tls.opts.preread_len; /* bytes pipelined */
    int rc = em_start_tls(conn, &s->tls.opts);
    cr_assert_eq(rc, 0, "%s: %s", em_strerror(rc), em_tls_error(conn));
    s->started = 1;
    s->plain_len = line;
}

static void starttls_server_post_init(em_conn *conn, void *arg)
{
    starttls *s = arg;
    s->tls.conn = conn;
    /* hold the first read back so "STARTTLS\r\n" and the ClientHello
     * behind it arrive in one chunk */
    if (!s->answer)
        cr_assert_eq(em_pause(conn), 0);
}

static void resume_conn(em_loop *loop, void *arg)
{
    (void)loop;
    starttls *s = arg;
    if (s->tls.conn)
        em_resume(s->tls.conn);
}

static void starttls_unbind(em_conn *conn, int reason)
{
    starttls *s = em_conn_arg(conn);
    s->tls.unbinds++;
    s->tls.reason = reason;
    snprintf(s->tls.error, sizeof(s->tls.error), "%s", em_tls_error(conn));
    s->tls.conn = NULL;
}

/* Client, pipelining: sends the command and starts TLS at once. */
static void pipelining_client_post_init(em_conn *conn, void *arg)
{
    th_tls *t = arg;
    t->conn = conn;
}

static void pipelining_client_completed(em_conn *conn)
{
    th_tls *t = em_conn_arg(conn);
    cr_assert_eq(em_send_data(conn, "STARTTLS\r\n", 10), 0);
    int rc = em_start_tls(conn, &t->opts);
    cr_assert_eq(rc, 0, "%s: %s", em_strerror(rc), em_tls_error(conn));
}

static void client_handshake_send(em_conn *conn)
{
    th_tls *t = em_conn_arg(conn);
    t->handshakes++;
    cr_assert_eq(em_send_data(conn, "secret", 6), 0);
}

Test(tls, starttls_with_handshake_pipelined_behind_the_command,
     .timeout = TH_TIMEOUT(10))
{
    em_handler server_h = {.post_init = starttls_server_post_init,
                           .receive_data = starttls_server_receive,
                           .unbind = starttls_unbind};
    em_handler client_h = {.post_init = pipelining_client_post_init,
                           .connection_completed = pipelining_client_completed,
                           .ssl_handshake_completed = client_handshake_send,
                           .receive_data = half_receive,
                           .unbind = half_unbind};
    em_loop *loop = th_loop();
    starttls server = {.answer = 0};
    th_tls client = TH_TLS_INIT;
    th_tls_server_opts(&server.tls.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &server_h, &server);
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, NULL),
                 0);
    th_run_for(loop, 0.2); /* both flights wait in the server's socket */
    cr_assert_not(server.started);
    cr_assert_eq(em_add_timer(loop, 0, resume_conn, &server, NULL), 0);
    th_run_until_size(loop, &client.got_len, 6, 5);
    cr_assert_str_eq((char *)client.got, "secret");
    cr_assert_gt(server.tls.handshakes, 0,
                 "the ClientHello came in the same chunk as the command");
    cr_assert_eq(server.plain_len, 10, "receive_data saw only the command");
    em_close_connection(client.conn, 0);
    th_run_until_count(loop, &server.tls.unbinds, 1, 5);
    cr_assert_eq(server.tls.reason, 0, "%s", server.tls.error);
    th_stop_and_free(loop, srv);
    free(server.tls.got);
    th_tls_reset(&client);
}

/* Client, polite: waits for "GO\r\n" in clear, then starts TLS. The server
 * queued "GO\r\n" and started TLS in the same callback. */
static void polite_completed(em_conn *conn)
{
    cr_assert_eq(em_send_data(conn, "STARTTLS\r\n", 10), 0);
}

static void polite_receive(em_conn *conn, const char *data, size_t len)
{
    th_tls *t = em_conn_arg(conn);
    if (!em_is_tls(conn)) {
        cr_assert_eq(len, 4, "GO arrives alone, in clear");
        cr_assert(memcmp(data, "GO\r\n", 4) == 0);
        int rc = em_start_tls(conn, &t->opts);
        cr_assert_eq(rc, 0, "%s: %s", em_strerror(rc), em_tls_error(conn));
        return;
    }
    half_receive(conn, data, len);
}

Test(tls, starttls_answer_queued_before_start_goes_in_clear,
     .timeout = TH_TIMEOUT(10))
{
    em_handler server_h = {.post_init = starttls_server_post_init,
                           .receive_data = starttls_server_receive,
                           .unbind = starttls_unbind};
    em_handler client_h = {.post_init = pipelining_client_post_init,
                           .connection_completed = polite_completed,
                           .ssl_handshake_completed = client_handshake_send,
                           .receive_data = polite_receive,
                           .unbind = half_unbind};
    em_loop *loop = th_loop();
    starttls server = {.answer = 1};
    th_tls client = TH_TLS_INIT;
    th_tls_server_opts(&server.tls.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &server_h, &server);
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, NULL),
                 0);
    th_run_until_size(loop, &client.got_len, 6, 5);
    cr_assert_str_eq((char *)client.got, "secret");
    em_close_connection(client.conn, 0);
    th_run_until_count(loop, &server.tls.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
    free(server.tls.got);
    th_tls_reset(&client);
}

/* ---- transports and life cycle ---------------------------------------- */

Test(tls, over_a_unix_socket, .timeout = TH_TIMEOUT(10))
{
    char path[108];
    th_unix_path(path, sizeof(path), "tls");
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    client.opts.verify_hostname = "localhost"; /* no host name to go by */
    server.echo = 1;
    client.hello = "over unix";
    em_server *srv = th_start_unix_server(loop, path, &th_tls_handler, &server);
    cr_assert_eq(em_connect_unix(loop, path, &th_tls_handler, &client, NULL),
                 0);
    th_run_until_size(loop, &client.got_len, 9, 5);
    cr_assert_str_eq((char *)client.got, "over unix");
    cr_assert_eq(client.handshakes, 1);
    cr_assert_eq(client.verify_preverified_ok, client.verify_calls);
    finish(loop, srv, &server, &client);
}

static void start_in_completed(em_conn *conn)
{
    th_tls *t = em_conn_arg(conn);
    t->completed++;
    int rc = em_start_tls(conn, &t->opts);
    cr_assert_eq(rc, 0, "%s: %s", em_strerror(rc), em_tls_error(conn));
}

Test(tls, start_in_connection_completed_verifies_the_connect_name,
     .timeout = TH_TIMEOUT(10))
{
    em_handler client_h = th_tls_handler;
    client_h.connection_completed = start_in_completed;
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "other"); /* other.example */
    th_tls_client_opts(&client.opts);
    client.manual_start = 1;
    em_server *srv = tls_server(loop, &server);
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, NULL),
                 0);
    th_run_until_count(loop, &client.unbinds, 1, 5);
    cr_assert_eq(client.completed, 1);
    cr_assert_eq(client.handshakes, 0);
    cr_assert_eq(client.reason, -EPROTO);
    cr_assert(strstr(client.error, "hostname mismatch"), "%s", client.error);
    th_run_until_count(loop, &server.unbinds, 1, 5);
    cr_assert_neq(server.reason, 0);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
}

typedef struct redial {
    th_tls tls;
    int port;
    int reconnects;
} redial;

static void redial_unbind(em_conn *conn, int reason)
{
    redial *r = em_conn_arg(conn);
    r->tls.unbinds++;
    r->tls.reason = reason;
    if (r->reconnects++ == 0)
        cr_assert_eq(em_reconnect(conn, "localhost", r->port), 0);
}

static void redial_completed(em_conn *conn)
{
    redial *r = em_conn_arg(conn);
    r->tls.completed++;
    cr_assert_not(em_is_tls(conn), "a reconnected connection is plain");
    cr_assert_eq(em_start_tls(conn, &r->tls.opts), 0);
}

static void redial_handshake(em_conn *conn)
{
    redial *r = em_conn_arg(conn);
    r->tls.handshakes++;
    r->tls.reused += em_tls_session_reused(conn);
    cr_assert_eq(em_send_data(conn, "ping", 4), 0);
}

static void redial_receive(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    (void)len;
    em_close_connection(conn, 0); /* the echo came back: the ticket too */
}

Test(tls, reconnect_starts_plain_and_resumes, .timeout = TH_TIMEOUT(10))
{
    em_handler client_h = {.connection_completed = redial_completed,
                           .ssl_handshake_completed = redial_handshake,
                           .receive_data = redial_receive,
                           .unbind = redial_unbind};
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    server.echo = 1;
    em_server *srv = tls_server(loop, &server);
    redial client = {.port = th_listen_port(srv)};
    th_tls_client_opts(&client.tls.opts);
    cr_assert_eq(
        em_connect(loop, "localhost", client.port, &client_h, &client, NULL),
        0);
    th_run_until_count(loop, &client.tls.unbinds, 2, 10);
    cr_assert_eq(client.tls.handshakes, 2);
    cr_assert_eq(client.tls.reused, 1, "the reconnect resumed");
    th_run_until_count(loop, &server.unbinds, 2, 5);
    cr_assert_eq(server.reused, 1);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
}

/* Sending and closing before the handshake has even begun: the data waits
 * for the handshake, then goes out encrypted, then close_notify / FIN. */
typedef struct early {
    th_tls tls;
    int half; /* em_close_write instead of em_close_connection(conn, 1) */
} early;

static void early_post_init(em_conn *conn, void *arg)
{
    early *e = arg;
    e->tls.conn = conn;
    cr_assert_eq(em_start_tls(conn, &e->tls.opts), 0);
    cr_assert_eq(em_send_data(conn, "early", 5), 0);
    if (e->half)
        cr_assert_eq(em_close_write(conn), 0);
    else
        cr_assert_eq(em_close_connection(conn, 1), 0);
    cr_assert_eq(em_get_outbound_data_size(conn), 5);
}

static void early_handshake(em_conn *conn)
{
    early *e = em_conn_arg(conn);
    e->tls.handshakes++;
}

Test(tls, send_and_close_before_the_handshake, .timeout = TH_TIMEOUT(10))
{
    em_handler client_h = {.post_init = early_post_init,
                           .ssl_handshake_completed = early_handshake,
                           .receive_data = half_receive,
                           .unbind = half_unbind};
    for (int half = 0; half < 2; half++) {
        em_loop *loop = th_loop();
        th_tls server = TH_TLS_INIT;
        early client = {.tls = TH_TLS_INIT, .half = half};
        th_tls_server_opts(&server.opts, "server");
        th_tls_client_opts(&client.tls.opts);
        server.echo = half; /* a fully closed client cannot take an echo */
        em_server *srv = tls_server(loop, &server);
        cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv),
                                &client_h, &client, NULL),
                     0);
        th_run_until_count(loop, &server.unbinds, 1, 5);
        cr_assert_eq(client.tls.handshakes, 1);
        cr_assert_eq(server.got_len, 5);
        cr_assert_str_eq((char *)server.got, "early");
        cr_assert_eq(server.reason, 0, "%s", server.error);
        th_run_until_count(loop, &client.tls.unbinds, 1, 5);
        cr_assert_eq(client.tls.reason, 0, "%s", client.tls.error);
        if (half) /* the echo came back after our half-close */
            cr_assert_str_eq((char *)client.tls.got, "early");
        th_stop_and_free(loop, srv);
        th_tls_reset(&server);
        th_tls_reset(&client.tls);
    }
}

/* Files under TLS: no sendfile; 64 KiB preads through the bounce buffer,
 * encrypted in order between em_send_data's bytes. */
static char tls_file_path[64];

static void file_handshake(em_conn *conn)
{
    cr_assert_eq(em_send_data(conn, "HEAD", 4), 0);
    cr_assert_eq(em_send_file_data(conn, tls_file_path), 0);
    cr_assert_eq(em_send_data(conn, "TAIL", 4), 0);
    cr_assert_eq(em_close_connection(conn, 1), 0);
}

static void file_receive(em_conn *conn, const char *data, size_t len)
{
    th_tls *t = em_conn_arg(conn);
    unsigned char *got = realloc(t->got, t->got_len + len);
    cr_assert_not_null(got);
    memcpy(got + t->got_len, data, len);
    t->got = got;
    t->got_len += len;
}

Test(tls, send_file_data_over_tls, .timeout = TH_TIMEOUT(20))
{
    size_t size = 3 * MiB + 12345;
    snprintf(tls_file_path, sizeof(tls_file_path),
             "/tmp/em-test-tlsfile-%d-XXXXXX", (int)getpid());
    int fd = mkstemp(tls_file_path);
    cr_assert_geq(fd, 0);
    uint8_t *buf = malloc(size);
    th_pat_fill(buf, 0, size);
    cr_assert_eq(write(fd, buf, size), (ssize_t)size);
    close(fd);

    em_handler server_h = {.post_init = half_post_init,
                           .ssl_handshake_completed = file_handshake,
                           .unbind = half_unbind};
    em_handler client_h = {.post_init = half_post_init,
                           .receive_data = file_receive,
                           .unbind = half_unbind};
    em_loop *loop = th_loop();
    th_tls server = TH_TLS_INIT, client = TH_TLS_INIT;
    th_tls_server_opts(&server.opts, "server");
    th_tls_client_opts(&client.opts);
    em_server *srv = th_start_server(loop, &server_h, &server);
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, NULL),
                 0);
    th_run_until_count(loop, &client.unbinds, 1, 15);
    cr_assert_eq(client.reason, 0, "%s", client.error);
    cr_assert_eq(client.got_len, size + 8);
    cr_assert(memcmp(client.got, "HEAD", 4) == 0);
    cr_assert_eq(th_pat_check(client.got + 4, 0, size), -1);
    cr_assert(memcmp(client.got + 4 + size, "TAIL", 4) == 0);
    cr_assert_not_null(loop->file_buf, "TLS used the bounce buffer");
    th_run_until_count(loop, &server.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
    th_tls_reset(&server);
    th_tls_reset(&client);
    free(buf);
    unlink(tls_file_path);
}

/* Proxying from a TLS connection takes the buffered path: plaintext read
 * through OpenSSL goes to the target's queue with the same limits. */
typedef struct tls_front {
    th_tls tls;
    int back_port;
    em_conn *link;
} tls_front;

static size_t back_received;
static int back_bad;

static void plain_back_receive(em_conn *conn, const char *data, size_t len)
{
    (void)conn;
    if (th_pat_check((const uint8_t *)data, back_received, len) >= 0)
        back_bad = 1;
    back_received += len;
}

static const em_handler plain_back = {.receive_data = plain_back_receive};
static const em_handler plain_link = {0};

static void tls_front_post_init(em_conn *conn, void *arg)
{
    tls_front *f = arg;
    f->tls.conn = conn;
    cr_assert_eq(em_start_tls(conn, &f->tls.opts), 0);
    cr_assert_eq(em_connect(em_conn_loop(conn), "127.0.0.1", f->back_port,
                            &plain_link, NULL, &f->link),
                 0);
    cr_assert_eq(em_proxy_incoming_to(conn, f->link, 256 * 1024, 0), 0);
}

static void tls_front_unbind(em_conn *conn, int reason)
{
    tls_front *f = em_conn_arg(conn);
    f->tls.unbinds++;
    f->tls.reason = reason;
    cr_assert_eq(em_get_proxied_bytes(conn), 4 * MiB);
    em_close_connection(f->link, 1);
}

Test(tls, proxy_from_tls_takes_the_buffered_path, .timeout = TH_TIMEOUT(20))
{
    em_handler front_h = {.post_init = tls_front_post_init,
                          .unbind = tls_front_unbind};
    em_handler client_h = {.post_init = bulk_post_init,
                           .ssl_handshake_completed = bulk_handshake,
                           .drained = bulk_drained,
                           .unbind = bulk_unbind};
    em_loop *loop = th_loop();
    back_received = 0;
    back_bad = 0;
    em_server *back_srv = th_start_server(loop, &plain_back, NULL);
    tls_front front = {.tls = TH_TLS_INIT,
                       .back_port = th_listen_port(back_srv)};
    th_tls_server_opts(&front.tls.opts, "server");
    em_server *srv = th_start_server(loop, &front_h, &front);
    bulk client = {.seed = 3, .to_send = 4 * MiB};
    th_tls_client_opts(&client.tls.opts);
    em_conn *c = NULL;
    cr_assert_eq(em_connect(loop, "localhost", th_listen_port(srv), &client_h,
                            &client, &c),
                 0);
    th_run_until_size(loop, &back_received, 4 * MiB, 15);
    cr_assert_not(back_bad, "bytes out of place");
    em_close_connection(c, 0);
    th_run_until_count(loop, &front.tls.unbinds, 1, 5);
    th_run_for(loop, 0.1);
    em_stop_server(back_srv);
    th_stop_and_free(loop, srv);
}
