/*
 * rem_conn.c - connections for the rubyeventmachine extension: the one
 * em_handler behind every EventMachine::Connection, TCP and Unix servers,
 * outbound connects, the per-connection functions (send_data,
 * close_connection, names, timeouts, pause, socket options) and the
 * methods EventMachine's engine defines on Connection.
 *
 * A connection's EventMachine signature is its libem id (em_conn_id), so a
 * signature from Ruby is looked up with em_conn_lookup: O(1), and NULL for
 * a connection that is gone, which is what EventMachine's functions expect
 * of a stale signature. Ruby owns the Connection objects (in @conns);
 * nothing here holds a Ruby object across turns.
 *
 * Callbacks follow Debian's engine: data goes straight to
 * @conns[sig].receive_data, connection_completed (and the TLS, proxy and
 * notify callbacks) straight to the object; accepted and unbound go
 * through EventMachine.event_callback, whose Ruby code makes the object or
 * runs unbind with the reason mapped through EventMachine::ERRNOS (libem's
 * reasons are negative errnos; Ruby gets them positive).
 *
 * Names are resolved here, synchronously and without the GVL, before libem
 * sees them: EventMachine raises EM::ConnectionError at once for a name
 * that does not resolve, where em_connect would report it later through
 * unbind. libem then gets a numeric address.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <ruby/thread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "rem.h"

/* The connection whose unbind is running: libem's lookup no longer finds
 * it, but EventMachine's Ruby asks about it there (SystemCmd#unbind calls
 * get_status). Unbinds never nest. */
static em_conn *unbinding;
static uint64_t unbinding_sig;

static em_conn *lookup(VALUE sig)
{
    if (!rem.loop || !RB_INTEGER_TYPE_P(sig))
        return NULL;
    uint64_t s = NUM2ULL(sig);
    if (unbinding && s == unbinding_sig)
        return unbinding;
    em_conn *conn = em_conn_lookup(rem.loop, s);
    if (conn && em_conn_state(conn) == NULL)
        return NULL; /* not one of ours */
    return conn;
}

em_conn *rem_conn_of(VALUE sig)
{
    em_conn *conn = lookup(sig);
    /* What send_data held back goes first (rem_write.c). */
    if (conn)
        rem_write_flush(conn);
    return conn;
}

/* ---- callbacks: libem to Ruby --------------------------------------- */

VALUE rem_event_callback(VALUE arg)
{
    const rem_event *ev = (const rem_event *)arg;
    return rb_funcall(rem_mEM, rem_id_event_callback, 3, ULL2NUM(ev->sig),
                      INT2FIX(ev->code), ULL2NUM(ev->data));
}

/* @conns[sig], or ConnectionNotBound as EventMachine's ensure_conn. */
VALUE rem_conn_object(uint64_t sig)
{
    VALUE conn = rb_hash_aref(rem.conns, ULL2NUM(sig));
    if (NIL_P(conn))
        rb_raise(rem_eConnectionNotBound, "unknown connection: %" PRIu64, sig);
    return conn;
}

typedef struct call0 {
    uint64_t sig;
    ID method;
} call0;

static VALUE call_conn0(VALUE arg)
{
    const call0 *c = (const call0 *)arg;
    return rb_funcall(rem_conn_object(c->sig), c->method, 0);
}

static void deliver0(em_conn *conn, ID method)
{
    rem_conn *rc = em_conn_state(conn);
    if (!(rc->flags & REM_KNOWN))
        return;
    call0 c = {rc->sig, method};
    rem_call(call_conn0, (VALUE)&c);
}

static void on_post_init(em_conn *conn, void *arg)
{
    rem_conn *rc = em_conn_state(conn);
    rc->sig = em_conn_id(conn);
    rc->ruby_fd = -1;
    if (!arg) {
        /* Outbound, attached, popen...: made by a native function whose
         * Ruby caller makes the object as soon as the signature returns. */
        rc->flags |= REM_KNOWN;
        return;
    }
    if (rem.exc_state)
        return; /* Ruby is failing: it never learns of this connection */
    rc->flags |= REM_KNOWN;
    const rem_server *server = arg;
    rem_event ev = {server->sig, REM_CONNECTION_ACCEPTED, rc->sig};
    rem_call(rem_event_callback, (VALUE)&ev);
}

static void on_completed(em_conn *conn)
{
    deliver0(conn, rem_id_connection_completed);
}

typedef struct data_call {
    uint64_t sig;
    const char *data;
    size_t len;
} data_call;

static VALUE call_receive_data(VALUE arg)
{
    const data_call *d = (const data_call *)arg;
    VALUE conn = rb_hash_aref(rem.conns, ULL2NUM(d->sig));
    if (NIL_P(conn))
        rb_raise(rem_eConnectionNotBound,
                 "received %zu bytes of data for unknown signature: %" PRIu64,
                 d->len, d->sig);
    /* A fresh ASCII-8BIT string per chunk, as EventMachine. */
    return rb_funcall(conn, rem_id_receive_data, 1,
                      rb_str_new(d->data, (long)d->len));
}

static void on_receive_data(em_conn *conn, const char *data, size_t len)
{
    rem_conn *rc = em_conn_state(conn);
    if (!(rc->flags & REM_KNOWN))
        return;
    data_call d = {rc->sig, data, len};
    rem_call(call_receive_data, (VALUE)&d);
    rem_write_after_read(conn, len);
}

static void on_unbind(em_conn *conn, int reason)
{
    rem_conn *rc = em_conn_state(conn);
    rem_tls_free(rc);
    if (rc->flags & REM_CLOSE_COUNTED)
        rem.close_scheduled--;
    if (!(rc->flags & REM_KNOWN))
        return;
    /* EventMachine's release reports a connect still in progress as a
     * plain close. */
    if (rem.releasing && reason == -ECANCELED)
        reason = 0;
    rem_event ev = {rc->sig, REM_CONNECTION_UNBOUND,
                    (uint64_t)(reason < 0 ? -reason : reason)};
    unbinding = conn;
    unbinding_sig = rc->sig;
    rem_call(rem_event_callback, (VALUE)&ev);
    unbinding = NULL;
    unbinding_sig = 0;
}

static void on_handshake_completed(em_conn *conn)
{
    deliver0(conn, rem_id_ssl_handshake_completed);
}

static void on_proxy_target_unbound(em_conn *conn)
{
    deliver0(conn, rem_id_proxy_target_unbound);
}

static void on_proxy_completed(em_conn *conn)
{
    deliver0(conn, rem_id_proxy_completed);
}

static void on_notify_readable(em_conn *conn)
{
    deliver0(conn, rem_id_notify_readable);
}

static void on_notify_writable(em_conn *conn)
{
    deliver0(conn, rem_id_notify_writable);
}

const em_handler rem_handler = {
    .state_size = sizeof(rem_conn),
    .post_init = on_post_init,
    .connection_completed = on_completed,
    .receive_data = on_receive_data,
    .unbind = on_unbind,
    .ssl_handshake_completed = on_handshake_completed,
    .ssl_verify_peer = rem_on_verify_peer,
    .proxy_target_unbound = on_proxy_target_unbound,
    .proxy_completed = on_proxy_completed,
    .notify_readable = on_notify_readable,
    .notify_writable = on_notify_writable,
};

/* ---- servers --------------------------------------------------------- */

static rem_server *server_of(VALUE sig)
{
    if (!RB_INTEGER_TYPE_P(sig))
        return NULL;
    uint64_t s = NUM2ULL(sig);
    for (rem_server *srv = rem.servers; srv; srv = srv->next)
        if (srv->sig == s)
            return srv;
    return NULL;
}

static VALUE add_server(rem_server *srv)
{
    srv->sig = rem_new_sig();
    srv->next = rem.servers;
    rem.servers = srv;
    rem.server_count++;
    return ULL2NUM(srv->sig);
}

static VALUE t_start_tcp_server(VALUE self, VALUE host, VALUE port)
{
    (void)self;
    em_loop *loop = rem_loop("evma_create_tcp_server");
    const char *h = StringValueCStr(host);
    int p = NUM2INT(port);
    rem_server *srv = ALLOC(rem_server);
    memset(srv, 0, sizeof(*srv));
    int err = -EINVAL;
    if (p >= 0 && p <= 65535)
        err = em_start_server(loop, *h ? h : NULL, p, &rem_handler, srv, NULL,
                              &srv->server);
    if (err < 0) {
        xfree(srv);
        rb_raise(rb_eRuntimeError,
                 "no acceptor (port is in use or requires root privileges)");
    }
    return add_server(srv);
}

static VALUE t_start_unix_server(VALUE self, VALUE path)
{
    (void)self;
    em_loop *loop = rem_loop("evma_create_unix_domain_server");
    const char *p = StringValueCStr(path);
    rem_server *srv = ALLOC(rem_server);
    memset(srv, 0, sizeof(*srv));
    int err =
        em_start_unix_server(loop, p, &rem_handler, srv, NULL, &srv->server);
    if (err < 0) {
        xfree(srv);
        rb_raise(rb_eRuntimeError, "no unix-domain acceptor");
    }
    return add_server(srv);
}

/* EventMachine unbinds a stopped listener later: Ruby then forgets its
 * @acceptors entry. */
static void acceptor_unbound(em_loop *loop, void *arg)
{
    (void)loop;
    rem_event ev = {(uint64_t)(uintptr_t)arg, REM_CONNECTION_UNBOUND, 0};
    rem_call(rem_event_callback, (VALUE)&ev);
}

static VALUE t_stop_tcp_server(VALUE self, VALUE sig)
{
    (void)self;
    em_loop *loop = rem_loop("evma_stop_tcp_server");
    rem_server *srv = server_of(sig);
    if (!srv && rem.releasing)
        return Qnil; /* release_machine closed them all already */
    if (!srv)        /* EventMachine's C++ aborts the process here */
        rb_raise(rb_eRuntimeError, "failed to close nonexistent acceptor");
    for (rem_server **p = &rem.servers; *p; p = &(*p)->next) {
        if (*p == srv) {
            *p = srv->next;
            break;
        }
    }
    rem.server_count--;
    em_stop_server(srv->server);
    uint64_t s = srv->sig;
    xfree(srv);
    em_next_tick(loop, acceptor_unbound, (void *)(uintptr_t)s);
    return Qnil;
}

void rem_conn_release(void)
{
    /* em_loop_free closes the listeners; only their records go here. */
    while (rem.servers) {
        rem_server *srv = rem.servers;
        rem.servers = srv->next;
        xfree(srv);
    }
    rem.server_count = 0;
}

/* ---- connecting ------------------------------------------------------ */

typedef struct resolve_req {
    const char *host;
    int port;
    char *buf;
    size_t size;
    int rc;
} resolve_req;

static void *resolve_nogvl(void *arg)
{
    resolve_req *r = arg;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    char port[16];
    snprintf(port, sizeof(port), "%d", r->port);
    r->rc = getaddrinfo(r->host, port, &hints, &ai);
    if (r->rc == 0) {
        r->rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, r->buf,
                            (socklen_t)r->size, NULL, 0, NI_NUMERICHOST);
        freeaddrinfo(ai);
    }
    return NULL;
}

int rem_resolve(const char *host, int port, char *buf, size_t size)
{
    resolve_req r = {host && *host ? host : "0.0.0.0", port, buf, size, 0};
    /* getaddrinfo cannot be interrupted: no unblocking function. */
    rb_thread_call_without_gvl(resolve_nogvl, &r, NULL, NULL);
    return r.rc;
}

static VALUE connected(int err, em_conn *conn, const char *host,
                       const char *addr)
{
    /* A client that reconnects from its unbind does so at release too;
     * libem opens nothing then (-ECANCELED). A signature that names no
     * connection keeps EM.run from raising at every shutdown. */
    if (err == -ECANCELED && rem.releasing)
        return ULL2NUM(rem_new_sig());
    if (err < 0)
        rb_raise(rb_eRuntimeError, "no connection");
    /* libem was given the address: keep the name for TLS's host-name
     * check (LibEM.set_tls_verify with verify_hostname true). */
    if (host && addr && strcmp(host, addr) != 0) {
        rem_conn *rc = em_conn_state(conn);
        rc->connect_host = strdup(host); /* NULL: no name to check */
    }
    return ULL2NUM(em_conn_id(conn));
}

static VALUE t_connect_server(VALUE self, VALUE host, VALUE port)
{
    (void)self;
    em_loop *loop = rem_loop("evma_connect_to_server");
    const char *h = StringValueCStr(host);
    int p = NUM2INT(port);
    char addr[NI_MAXHOST];
    int rc = rem_resolve(h, p, addr, sizeof(addr));
    if (rc != 0)
        rb_raise(rem_eConnectionError, "unable to resolve address: %s",
                 gai_strerror(rc));
    em_conn *conn = NULL;
    int err = em_connect(loop, addr, p, &rem_handler, NULL, &conn);
    return connected(err, conn, h, addr);
}

static VALUE t_bind_connect_server(VALUE self, VALUE bind_host, VALUE bind_port,
                                   VALUE host, VALUE port)
{
    (void)self;
    em_loop *loop = rem_loop("evma_connect_to_server");
    const char *bh = StringValueCStr(bind_host);
    int bp = NUM2INT(bind_port);
    const char *h = StringValueCStr(host);
    int p = NUM2INT(port);
    char baddr[NI_MAXHOST], addr[NI_MAXHOST];
    int rc = rem_resolve(h, p, addr, sizeof(addr));
    if (rc != 0)
        rb_raise(rem_eConnectionError, "unable to resolve address: %s",
                 gai_strerror(rc));
    rc = rem_resolve(bh, bp, baddr, sizeof(baddr));
    if (rc != 0)
        rb_raise(rem_eConnectionError, "invalid bind address: %s",
                 gai_strerror(rc));
    em_conn *conn = NULL;
    int err =
        em_bind_connect(loop, baddr, bp, addr, p, &rem_handler, NULL, &conn);
    return connected(err, conn, h, addr);
}

static VALUE t_connect_unix_server(VALUE self, VALUE path)
{
    (void)self;
    em_loop *loop = rem_loop("evma_connect_to_unix_server");
    const char *p = StringValueCStr(path);
    em_conn *conn = NULL;
    int err = em_connect_unix(loop, p, &rem_handler, NULL, &conn);
    if (err == 0 && em_get_fd(conn) < 0) {
        /* A Unix connect fails at once (no socket file, nobody
         * listening): EventMachine raises where libem would unbind next
         * turn. Ruby never hears of this connection. */
        rem_conn *rc = em_conn_state(conn);
        rc->flags &= ~REM_KNOWN;
        em_close_connection(conn, 0);
        err = -ECONNREFUSED;
    }
    return connected(err, conn, NULL, NULL);
}

/* ---- per connection -------------------------------------------------- */

static VALUE t_send_data(VALUE self, VALUE sig, VALUE data, VALUE length)
{
    (void)self;
    rem_loop("evma_send_data_to_connection");
    const char *p = StringValuePtr(data);
    long len = NUM2LONG(length);
    if (len < 0 || len > RSTRING_LEN(data))
        len = RSTRING_LEN(data); /* never read past the string */
    em_conn *conn = lookup(sig);
    if (!conn)
        return INT2FIX(-1);
    /* EventMachine returns the length taken, 0 once closing. */
    if (rem_write(conn, p, (size_t)len) < 0)
        return INT2FIX(0);
    return LONG2NUM(len);
}

static VALUE t_close_connection(VALUE self, VALUE sig, VALUE after_writing)
{
    (void)self;
    rem_loop("evma_close_connection");
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return Qnil;
    rem_conn *rc = em_conn_state(conn);
    if (!(rc->flags & REM_CLOSE_COUNTED)) {
        rc->flags |= REM_CLOSE_COUNTED;
        rem.close_scheduled++;
    }
    em_close_connection(conn, after_writing == Qtrue);
    return Qnil;
}

static VALUE t_report_connection_error_status(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_report_connection_error_status");
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return INT2FIX(-1);
    int err = em_conn_error(conn);
    if (err == -ENOTCONN)
        return INT2FIX(-1); /* no socket */
    return INT2FIX(-err);
}

static VALUE sockaddr_string(int peer, VALUE sig)
{
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return Qnil;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int err = peer ? em_get_peername(conn, (struct sockaddr *)&ss, &len)
                   : em_get_sockname(conn, (struct sockaddr *)&ss, &len);
    if (err < 0)
        return Qnil;
    if (len > sizeof(ss))
        len = sizeof(ss);
    return rb_str_new((const char *)&ss, (long)len);
}

static VALUE t_get_peername(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_peername");
    return sockaddr_string(1, sig);
}

static VALUE t_get_sockname(VALUE self, VALUE sig)
{
    (void)self;
    em_loop *loop = rem_loop("evma_get_sockname");
    /* A listener's signature works too (thin asks for its port). */
    rem_server *srv = server_of(sig);
    if (srv) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (em_server_sockname(srv->server, (struct sockaddr *)&ss, &len) < 0)
            return Qnil;
        if (len > sizeof(ss))
            len = sizeof(ss);
        return rb_str_new((const char *)&ss, (long)len);
    }
    (void)loop;
    return sockaddr_string(0, sig);
}

static VALUE t_get_file_descriptor(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_file_descriptor");
    em_conn *conn = rem_conn_of(sig);
    int fd = conn ? em_get_fd(conn) : -EINVAL;
    if (fd < 0)
        rb_raise(rb_eRuntimeError, "invalid binding to get_fd");
    return INT2NUM(fd);
}

static VALUE t_pause_connection(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_pause");
    em_conn *conn = rem_conn_of(sig);
    if (!conn || em_is_paused(conn))
        return Qfalse;
    return em_pause(conn) == 0 ? Qtrue : Qfalse;
}

static VALUE t_resume_connection(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_resume");
    em_conn *conn = rem_conn_of(sig);
    if (!conn || !em_is_paused(conn))
        return Qfalse;
    return em_resume(conn) == 0 ? Qtrue : Qfalse;
}

static VALUE t_connection_paused(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_is_paused");
    em_conn *conn = rem_conn_of(sig);
    return conn && em_is_paused(conn) ? Qtrue : Qfalse;
}

static VALUE t_get_comm_inactivity_timeout(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_comm_inactivity_timeout");
    em_conn *conn = rem_conn_of(sig);
    return DBL2NUM(conn ? em_get_comm_inactivity_timeout(conn) : 0.0);
}

static VALUE t_set_comm_inactivity_timeout(VALUE self, VALUE sig, VALUE secs)
{
    (void)self;
    rem_loop("evma_set_comm_inactivity_timeout");
    double s = NUM2DBL(secs);
    em_conn *conn = rem_conn_of(sig);
    if (!conn || s < 0)
        return Qfalse;
    return em_set_comm_inactivity_timeout(conn, s) == 0 ? Qtrue : Qfalse;
}

static VALUE t_get_pending_connect_timeout(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_pending_connect_timeout");
    em_conn *conn = rem_conn_of(sig);
    return DBL2NUM(conn ? em_get_pending_connect_timeout(conn) : 0.0);
}

static VALUE t_set_pending_connect_timeout(VALUE self, VALUE sig, VALUE secs)
{
    (void)self;
    rem_loop("evma_set_pending_connect_timeout");
    double s = NUM2DBL(secs);
    em_conn *conn = rem_conn_of(sig);
    if (!conn || s < 0)
        return Qfalse;
    return em_set_pending_connect_timeout(conn, s) == 0 ? Qtrue : Qfalse;
}

static VALUE t_get_idle_time(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_idle_time");
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return Qnil;
    return DBL2NUM(em_get_idle_time(conn));
}

static VALUE t_get_sock_opt(VALUE self, VALUE sig, VALUE level, VALUE name)
{
    (void)self;
    rem_loop("evma_get_sock_opt");
    int lev = NUM2INT(level), opt = NUM2INT(name);
    em_conn *conn = rem_conn_of(sig);
    char buf[128];
    socklen_t len = sizeof(buf);
    int err = conn ? em_get_sock_opt(conn, lev, opt, buf, &len) : -EBADF;
    if (err < 0)
        rb_syserr_fail(-err, "getsockopt");
    if (len > sizeof(buf))
        len = sizeof(buf);
    return rb_str_new(buf, (long)len);
}

static VALUE t_set_sock_opt(VALUE self, VALUE sig, VALUE level, VALUE name,
                            VALUE value)
{
    (void)self;
    rem_loop("evma_set_sock_opt");
    int lev = NUM2INT(level), opt = NUM2INT(name);
    int i = 0;
    const void *v = &i;
    socklen_t len = sizeof(i);
    if (value == Qtrue)
        i = 1;
    else if (value == Qfalse)
        i = 0;
    else if (FIXNUM_P(value))
        i = NUM2INT(value);
    else {
        StringValue(value);
        v = RSTRING_PTR(value);
        len = (socklen_t)RSTRING_LEN(value);
    }
    em_conn *conn = rem_conn_of(sig);
    int err = conn ? em_set_sock_opt(conn, lev, opt, v, len) : -EBADF;
    if (err < 0)
        rb_syserr_fail(-err, "setsockopt");
    return INT2FIX(0);
}

static VALUE t_send_file_data(VALUE self, VALUE sig, VALUE filename)
{
    (void)self;
    rem_loop("evma_send_file_data_to_connection");
    const char *path = StringValueCStr(filename);
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return INT2FIX(-1);
    /* Any size (EventMachine refused files over 32 KiB), sent by
     * sendfile(2) behind what is queued. */
    int err = em_send_file_data(conn, path);
    if (err == -ENOTCONN || err == -EPIPE)
        return INT2FIX(0);
    if (err < 0)
        rb_raise(rb_eIOError, ": %s %s", path, strerror(-err));
    return INT2FIX(0);
}

/* ---- EventMachine::Connection's native methods ----------------------- */

static em_conn *self_conn(VALUE self)
{
    return rem_conn_of(rb_ivar_get(self, rem_id_at_signature));
}

static VALUE conn_get_outbound_data_size(VALUE self)
{
    em_conn *conn = self_conn(self);
    return SIZET2NUM(conn ? em_get_outbound_data_size(conn) : 0);
}

static VALUE conn_enable_keepalive(int argc, VALUE *argv, VALUE self)
{
    VALUE idle, interval, count;
    rb_scan_args(argc, argv, "03", &idle, &interval, &count);
    int i = NIL_P(idle) ? 0 : NUM2INT(idle);
    int n = NIL_P(interval) ? 0 : NUM2INT(interval);
    int c = NIL_P(count) ? 0 : NUM2INT(count);
    em_conn *conn = self_conn(self);
    if (!conn)
        rb_raise(rb_eRuntimeError, "invalid binding to enable keepalive");
    int err = em_enable_keepalive(conn, i, n, c);
    if (err < 0)
        rb_raise(rb_eRuntimeError, "unable to enable keepalive: %s",
                 strerror(-err));
    return INT2FIX(0);
}

static VALUE conn_disable_keepalive(VALUE self)
{
    em_conn *conn = self_conn(self);
    if (!conn)
        rb_raise(rb_eRuntimeError, "invalid binding to enable keepalive");
    int err = em_disable_keepalive(conn);
    if (err < 0)
        rb_raise(rb_eRuntimeError, "unable to disable keepalive: %s",
                 strerror(-err));
    return INT2FIX(0);
}

static VALUE conn_associate_callback_target(VALUE self, VALUE sig)
{
    (void)self;
    (void)sig;
    return Qnil; /* EventMachine's is a no-op too */
}

void rem_define_conn(void)
{
    VALUE m = rem_mEM;
    rb_define_module_function(m, "start_tcp_server", t_start_tcp_server, 2);
    rb_define_module_function(m, "start_unix_server", t_start_unix_server, 1);
    rb_define_module_function(m, "stop_tcp_server", t_stop_tcp_server, 1);
    rb_define_module_function(m, "connect_server", t_connect_server, 2);
    rb_define_module_function(m, "bind_connect_server", t_bind_connect_server,
                              4);
    rb_define_module_function(m, "connect_unix_server", t_connect_unix_server,
                              1);
    rb_define_module_function(m, "send_data", t_send_data, 3);
    rb_define_module_function(m, "close_connection", t_close_connection, 2);
    rb_define_module_function(m, "report_connection_error_status",
                              t_report_connection_error_status, 1);
    rb_define_module_function(m, "get_peername", t_get_peername, 1);
    rb_define_module_function(m, "get_sockname", t_get_sockname, 1);
    rb_define_module_function(m, "get_file_descriptor", t_get_file_descriptor,
                              1);
    rb_define_module_function(m, "pause_connection", t_pause_connection, 1);
    rb_define_module_function(m, "resume_connection", t_resume_connection, 1);
    rb_define_module_function(m, "connection_paused?", t_connection_paused, 1);
    rb_define_module_function(m, "get_comm_inactivity_timeout",
                              t_get_comm_inactivity_timeout, 1);
    rb_define_module_function(m, "set_comm_inactivity_timeout",
                              t_set_comm_inactivity_timeout, 2);
    rb_define_module_function(m, "get_pending_connect_timeout",
                              t_get_pending_connect_timeout, 1);
    rb_define_module_function(m, "set_pending_connect_timeout",
                              t_set_pending_connect_timeout, 2);
    rb_define_module_function(m, "get_idle_time", t_get_idle_time, 1);
    rb_define_module_function(m, "get_sock_opt", t_get_sock_opt, 3);
    rb_define_module_function(m, "set_sock_opt", t_set_sock_opt, 4);
    rb_define_module_function(m, "send_file_data", t_send_file_data, 2);

    VALUE c = rem_cConnection;
    rb_define_method(c, "get_outbound_data_size", conn_get_outbound_data_size,
                     0);
    rb_define_method(c, "enable_keepalive", conn_enable_keepalive, -1);
    rb_define_method(c, "disable_keepalive", conn_disable_keepalive, 0);
    rb_define_method(c, "associate_callback_target",
                     conn_associate_callback_target, 1);
}
