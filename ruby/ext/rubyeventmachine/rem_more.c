/*
 * rem_more.c - the rest of EventMachine's engine surface on libem:
 * descriptors (attach_fd, attach_sd, detach_fd, notify), processes
 * (invoke_popen, subprocess pid and status, watch_pid), the keyboard,
 * datagrams, file watches, proxies, and two process-wide settings
 * (set_rlimit_nofile, setuid_string).
 *
 * Descriptors Ruby hands over stay Ruby's: EventMachine's Ruby layer
 * closes an attached IO itself after unbind, and a listening socket's IO
 * object closes its descriptor when collected. libem closes what it owns,
 * so it gets a dup (same open file description: O_NONBLOCK and the socket
 * are shared) and both sides close their own number. Closing one number
 * twice instead could close an unrelated descriptor that reused it.
 *
 * A file watch is not a connection in libem (em_file_watch, with its own
 * handler); Ruby sees it as one, with receive_data("modified" / "moved" /
 * "deleted") as Debian's engine sends. Its signature comes from
 * rem_new_sig and the watches are kept in a short list for
 * unwatch_filename.
 *
 * watch_pid works on Linux through libem's pidfds (Debian's engine raises
 * EM::Unsupported without kqueue): the process's exit is reported as
 * receive_data("exit"), then unbind. Fork events are not seen.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "rem.h"

/* ---- descriptors ----------------------------------------------------- */

static VALUE t_attach_fd(VALUE self, VALUE fd, VALUE watch_mode)
{
    (void)self;
    em_loop *loop = rem_loop("evma_attach_fd");
    int f = NUM2INT(fd);
    em_conn *conn = NULL;
    int err;
    if (watch_mode == Qtrue) {
        /* libem never touches a watched descriptor: no dup needed. */
        err = em_watch(loop, f, &rem_handler, NULL, &conn);
    } else {
        int mine = fcntl(f, F_DUPFD_CLOEXEC, 0);
        if (mine < 0)
            rb_raise(rb_eRuntimeError, "invalid file descriptor");
        err = em_attach(loop, mine, &rem_handler, NULL, &conn);
        if (err < 0)
            close(mine);
        else
            ((rem_conn *)em_conn_state(conn))->ruby_fd = f;
    }
    if (err < 0)
        rb_raise(rb_eRuntimeError, "unable to add new descriptor: %s",
                 strerror(-err));
    return ULL2NUM(em_conn_id(conn));
}

static VALUE t_detach_fd(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_detach_fd");
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        rb_raise(rb_eRuntimeError, "invalid binding to detach");
    int ruby_fd = ((rem_conn *)em_conn_state(conn))->ruby_fd;
    int fd = em_detach(conn);
    if (fd < 0)
        rb_raise(rb_eRuntimeError, "invalid binding to detach");
    /* An attached descriptor is our dup: Ruby's IO keeps the original,
     * whose number is the answer. */
    if (ruby_fd >= 0 && fd != ruby_fd) {
        close(fd);
        fd = ruby_fd;
    }
    return INT2NUM(fd);
}

static VALUE t_attach_sd(VALUE self, VALUE sd)
{
    (void)self;
    em_loop *loop = rem_loop("evma_attach_sd");
    int mine = fcntl(NUM2INT(sd), F_DUPFD_CLOEXEC, 0);
    if (mine < 0)
        rb_raise(rb_eRuntimeError, "invalid file descriptor");
    rem_server *srv = ALLOC(rem_server);
    memset(srv, 0, sizeof(*srv));
    int err = em_attach_server(loop, mine, &rem_handler, srv, &srv->server);
    if (err < 0) {
        close(mine);
        xfree(srv);
        rb_raise(rb_eRuntimeError, "no socket descriptor acceptor");
    }
    srv->sig = rem_new_sig();
    srv->next = rem.servers;
    rem.servers = srv;
    rem.server_count++;
    return ULL2NUM(srv->sig);
}

static VALUE notify_set(VALUE sig, VALUE mode, int readable)
{
    em_conn *conn = rem_conn_of(sig);
    if (!conn)
        return Qnil;
    int err = readable ? em_set_notify_readable(conn, RTEST(mode))
                       : em_set_notify_writable(conn, RTEST(mode));
    if (err == -EOPNOTSUPP)
        rb_raise(rb_eRuntimeError,
                 "notify_readable/writable with EM.attach is not supported");
    return mode;
}

static VALUE t_set_notify_readable(VALUE self, VALUE sig, VALUE mode)
{
    (void)self;
    rem_loop("evma_set_notify_readable");
    return notify_set(sig, mode, 1);
}

static VALUE t_set_notify_writable(VALUE self, VALUE sig, VALUE mode)
{
    (void)self;
    rem_loop("evma_set_notify_writable");
    return notify_set(sig, mode, 0);
}

static VALUE t_is_notify_readable(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_is_notify_readable");
    em_conn *conn = rem_conn_of(sig);
    return conn && em_is_notify_readable(conn) ? Qtrue : Qfalse;
}

static VALUE t_is_notify_writable(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_is_notify_writable");
    em_conn *conn = rem_conn_of(sig);
    return conn && em_is_notify_writable(conn) ? Qtrue : Qfalse;
}

static VALUE t_watch_only(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_is_watch_only");
    em_conn *conn = rem_conn_of(sig);
    return conn && em_is_watch_only(conn) ? Qtrue : Qfalse;
}

/* ---- processes and the keyboard -------------------------------------- */

static VALUE t_invoke_popen(VALUE self, VALUE cmd)
{
    (void)self;
    em_loop *loop = rem_loop("evma_popen");
    Check_Type(cmd, T_ARRAY);
    long n = RARRAY_LEN(cmd);
    if (n >= 2048)
        rb_raise(rb_eRuntimeError, "too many arguments to popen");
    if (n < 2)
        rb_raise(rb_eRuntimeError, "no popen: %s", strerror(EINVAL));
    /* EventMachine's Ruby passes [program, argv0, args...]; libem runs
     * argv0. The program is checked as Debian's engine does (a String
     * without NUL) but not used. The converted strings are kept in `keep`
     * so that none is collected before use. */
    VALUE keep = rb_ary_new_capa(n);
    const char **argv = ALLOCA_N(const char *, n);
    for (long i = 0; i < n; i++) {
        VALUE s = rb_ary_entry(cmd, i);
        const char *c = StringValueCStr(s);
        if (i > 0)
            argv[i - 1] = c;
        rb_ary_push(keep, s);
    }
    argv[n - 1] = NULL;
    em_conn *conn = NULL;
    int err = em_popen(loop, argv, NULL, &rem_handler, NULL, &conn);
    RB_GC_GUARD(keep);
    if (err < 0)
        rb_raise(rb_eRuntimeError, "no popen: %s", strerror(-err));
    return ULL2NUM(em_conn_id(conn));
}

static VALUE t_get_subprocess_pid(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_subprocess_pid");
    em_conn *conn = rem_conn_of(sig);
    int pid = conn ? em_get_pid(conn) : -EINVAL;
    return pid > 0 ? INT2NUM(pid) : Qnil;
}

static VALUE t_get_subprocess_status(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_get_subprocess_status");
    em_conn *conn = rem_conn_of(sig);
    int status, pid = conn ? em_get_pid(conn) : -EINVAL;
    if (pid <= 0 || em_get_status(conn, &status) < 0)
        return Qnil;
    /* Ruby's public way to make a Process::Status; it also becomes the
     * reactor thread's $?, as after a wait. */
    rb_last_status_set(status, pid);
    return rb_last_status_get();
}

static VALUE t_read_keyboard(VALUE self)
{
    (void)self;
    em_loop *loop = rem_loop("evma_open_keyboard");
    em_conn *conn = NULL;
    int err = em_open_stdio(loop, &rem_handler, NULL, &conn);
    if (err < 0)
        rb_raise(rb_eRuntimeError, "no keyboard reader");
    return ULL2NUM(em_conn_id(conn));
}

/* watch_pid: a libem process watch whose exit Ruby hears as "exit". */
static VALUE pid_exit_data(VALUE arg)
{
    VALUE conn = rb_hash_aref(rem.conns, ULL2NUM(*(uint64_t *)arg));
    if (NIL_P(conn))
        return Qnil;
    return rb_funcall(conn, rem_id_receive_data, 1, rb_str_new_cstr("exit"));
}

static void pid_unbind(em_conn *conn, int reason)
{
    rem_conn *rc = em_conn_state(conn);
    int status;
    if ((rc->flags & REM_KNOWN) && em_get_status(conn, &status) != -EAGAIN)
        rem_call(pid_exit_data, (VALUE)&rc->sig);
    rem_handler.unbind(conn, reason);
}

static const em_handler pid_handler = {
    .state_size = sizeof(rem_conn),
    .unbind = pid_unbind,
};

static VALUE t_watch_pid(VALUE self, VALUE pid)
{
    (void)self;
    em_loop *loop = rem_loop("evma_watch_pid");
    em_conn *conn = NULL;
    int err = em_watch_process(loop, NUM2INT(pid), &pid_handler, NULL, &conn);
    if (err < 0)
        rb_raise(rem_eUnsupported, "no pid watching support on this system: %s",
                 strerror(-err));
    rem_conn *rc = em_conn_state(conn);
    rc->sig = em_conn_id(conn);
    rc->flags |= REM_KNOWN;
    return ULL2NUM(rc->sig);
}

static VALUE t_unwatch_pid(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_unwatch_pid");
    em_conn *conn = rem_conn_of(sig);
    if (!conn || em_conn_state(conn) == NULL)
        rb_raise(rem_eInvalidSignature,
                 "attempted to remove invalid pid signature");
    em_close_connection(conn, 0);
    return Qnil;
}

/* ---- datagrams ------------------------------------------------------- */

static VALUE t_open_udp_socket(VALUE self, VALUE host, VALUE port)
{
    (void)self;
    em_loop *loop = rem_loop("evma_open_datagram_socket");
    const char *h = StringValueCStr(host);
    int p = NUM2INT(port);
    char addr[NI_MAXHOST];
    if (rem_resolve(h, p, addr, sizeof(addr)) != 0)
        rb_raise(rb_eRuntimeError, "no datagram socket");
    em_conn *conn = NULL;
    int err = em_open_datagram_socket(loop, addr, p, &rem_handler, NULL, &conn);
    if (err < 0)
        rb_raise(rb_eRuntimeError, "no datagram socket");
    /* One send_data is one datagram: never held back (rem_write.c). */
    ((rem_conn *)em_conn_state(conn))->flags |= REM_WRITE_AT_ONCE;
    return ULL2NUM(em_conn_id(conn));
}

static VALUE t_send_datagram(VALUE self, VALUE sig, VALUE data, VALUE length,
                             VALUE host, VALUE port)
{
    (void)self;
    rem_loop("evma_send_datagram");
    const char *p = StringValuePtr(data);
    long len = NUM2LONG(length);
    if (len < 0 || len > RSTRING_LEN(data))
        len = RSTRING_LEN(data);
    const char *h = StringValueCStr(host);
    int port_n = NUM2INT(port);
    char addr[NI_MAXHOST];
    em_conn *conn = rem_conn_of(sig);
    if (!conn || rem_resolve(h, port_n, addr, sizeof(addr)) != 0 ||
        (conn = rem_conn_of(sig)) == NULL || /* gone while resolving */
        em_send_datagram(conn, p, (size_t)len, addr, port_n) < 0)
        rb_raise(rem_eConnectionError, "error in sending datagram");
    return LONG2NUM(len);
}

/* ---- file watches ---------------------------------------------------- */

typedef struct rem_watch {
    uint64_t sig;
    em_file_watch *watch;
    struct rem_watch *next;
} rem_watch;

static rem_watch *watches;

typedef struct watch_event {
    uint64_t sig;
    const char *what;
} watch_event;

static VALUE watch_data(VALUE arg)
{
    const watch_event *ev = (const watch_event *)arg;
    VALUE conn = rb_hash_aref(rem.conns, ULL2NUM(ev->sig));
    if (NIL_P(conn))
        return Qnil;
    return rb_funcall(conn, rem_id_receive_data, 1, rb_str_new_cstr(ev->what));
}

static void watch_deliver(void *arg, const char *what)
{
    watch_event ev = {((rem_watch *)arg)->sig, what};
    rem_call(watch_data, (VALUE)&ev);
}

static void on_file_modified(em_file_watch *watch, void *arg)
{
    (void)watch;
    watch_deliver(arg, "modified");
}

static void on_file_moved(em_file_watch *watch, void *arg)
{
    (void)watch;
    watch_deliver(arg, "moved");
}

static void on_file_deleted(em_file_watch *watch, void *arg)
{
    (void)watch;
    watch_deliver(arg, "deleted");
}

static void on_watch_unbind(em_file_watch *watch, void *arg, int reason)
{
    (void)watch;
    rem_watch *w = arg;
    for (rem_watch **p = &watches; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    rem_event ev = {w->sig, REM_CONNECTION_UNBOUND,
                    (uint64_t)(reason < 0 ? -reason : 0)};
    xfree(w);
    rem_call(rem_event_callback, (VALUE)&ev);
}

static const em_file_handler watch_handler = {
    .file_modified = on_file_modified,
    .file_moved = on_file_moved,
    .file_deleted = on_file_deleted,
    .unbind = on_watch_unbind,
};

static VALUE t_watch_filename(VALUE self, VALUE path)
{
    (void)self;
    em_loop *loop = rem_loop("evma_watch_filename");
    const char *p = StringValueCStr(path);
    rem_watch *w = ALLOC(rem_watch);
    memset(w, 0, sizeof(*w));
    int err = em_watch_file(loop, p, &watch_handler, w, &w->watch);
    if (err < 0) {
        xfree(w);
        rb_raise(rem_eUnsupported, "error registering file %s for watching: %s",
                 p, strerror(-err));
    }
    w->sig = rem_new_sig();
    w->next = watches;
    watches = w;
    return ULL2NUM(w->sig);
}

static VALUE t_unwatch_filename(VALUE self, VALUE sig)
{
    (void)self;
    rem_loop("evma_unwatch_filename");
    uint64_t s = RB_INTEGER_TYPE_P(sig) ? NUM2ULL(sig) : 0;
    for (rem_watch *w = watches; w; w = w->next) {
        if (w->sig == s) {
            em_stop_watching(w->watch); /* unbind follows */
            return Qnil;
        }
    }
    rb_raise(rem_eInvalidSignature,
             "attempted to remove invalid watch signature");
    return Qnil;
}

/* ---- proxies --------------------------------------------------------- */

static VALUE t_start_proxy(VALUE self, VALUE from, VALUE to, VALUE bufsize,
                           VALUE length)
{
    (void)self;
    rem_loop("evma_start_proxy");
    long b = NUM2LONG(bufsize), l = NUM2LONG(length);
    em_conn *f = rem_conn_of(from), *t = rem_conn_of(to);
    if (!f || !t)
        rb_raise(rb_eRuntimeError, "Tried to proxy to an invalid descriptor");
    /* bufsize 0: libem bounds the target's queue at 1 MiB (EventMachine:
     * unbounded). */
    int err = em_proxy_incoming_to(f, t, b > 0 ? (size_t)b : 0,
                                   l > 0 ? (size_t)l : 0);
    if (err < 0)
        rb_raise(rb_eRuntimeError, "start_proxy: %s", strerror(-err));
    /* EventMachine's get_proxied_bytes counts from the last start_proxy;
     * libem's count runs over the connection's life. */
    ((rem_conn *)em_conn_state(f))->proxied_base = em_get_proxied_bytes(f);
    /* libem relays into them during the turn: Ruby's bytes must not wait
     * for its end (rem_write.c). */
    ((rem_conn *)em_conn_state(f))->flags |= REM_WRITE_AT_ONCE;
    ((rem_conn *)em_conn_state(t))->flags |= REM_WRITE_AT_ONCE;
    return Qnil;
}

static VALUE t_stop_proxy(VALUE self, VALUE from)
{
    (void)self;
    rem_loop("evma_stop_proxy");
    em_conn *f = rem_conn_of(from);
    if (f)
        em_stop_proxying(f);
    return Qnil;
}

static VALUE t_get_proxied_bytes(VALUE self, VALUE from)
{
    (void)self;
    rem_loop("evma_get_proxied_bytes");
    em_conn *f = rem_conn_of(from);
    if (!f)
        return ULL2NUM(0);
    return ULL2NUM(em_get_proxied_bytes(f) -
                   ((rem_conn *)em_conn_state(f))->proxied_base);
}

/* ---- process-wide settings ------------------------------------------- */

static VALUE t_set_rlimit_nofile(VALUE self, VALUE arg)
{
    (void)self;
    long n = NIL_P(arg) ? -1 : NUM2LONG(arg);
    struct rlimit rl;
    if (n >= 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = (rlim_t)n;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
            rl.rlim_max = rl.rlim_cur; /* succeeds for root only */
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0 &&
            getrlimit(RLIMIT_NOFILE, &rl) == 0) {
            rl.rlim_cur = rl.rlim_max; /* as high as we may */
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return INT2FIX(-1);
    return LONG2NUM((long)rl.rlim_cur);
}

static VALUE t_setuid_string(VALUE self, VALUE name)
{
    (void)self;
    const char *user = NIL_P(name) ? NULL : StringValueCStr(name);
    if (!user || !*user)
        rb_raise(rb_eRuntimeError,
                 "setuid_string failed: no username specified");
    struct passwd *pw = getpwnam(user);
    if (!pw)
        rb_raise(rb_eRuntimeError, "setuid_string failed: unknown username");
    if (setuid(pw->pw_uid) != 0)
        rb_raise(rb_eRuntimeError, "setuid_string failed: no setuid");
    return Qnil;
}

void rem_define_more(void)
{
    VALUE m = rem_mEM;
    rb_define_module_function(m, "attach_fd", t_attach_fd, 2);
    rb_define_module_function(m, "detach_fd", t_detach_fd, 1);
    rb_define_module_function(m, "attach_sd", t_attach_sd, 1);
    rb_define_module_function(m, "set_notify_readable", t_set_notify_readable,
                              2);
    rb_define_module_function(m, "set_notify_writable", t_set_notify_writable,
                              2);
    rb_define_module_function(m, "is_notify_readable", t_is_notify_readable, 1);
    rb_define_module_function(m, "is_notify_writable", t_is_notify_writable, 1);
    rb_define_module_function(m, "watch_only?", t_watch_only, 1);
    rb_define_module_function(m, "invoke_popen", t_invoke_popen, 1);
    rb_define_module_function(m, "get_subprocess_pid", t_get_subprocess_pid, 1);
    rb_define_module_function(m, "get_subprocess_status",
                              t_get_subprocess_status, 1);
    rb_define_module_function(m, "read_keyboard", t_read_keyboard, 0);
    rb_define_module_function(m, "watch_pid", t_watch_pid, 1);
    rb_define_module_function(m, "unwatch_pid", t_unwatch_pid, 1);
    rb_define_module_function(m, "open_udp_socket", t_open_udp_socket, 2);
    rb_define_module_function(m, "send_datagram", t_send_datagram, 5);
    rb_define_module_function(m, "watch_filename", t_watch_filename, 1);
    rb_define_module_function(m, "unwatch_filename", t_unwatch_filename, 1);
    rb_define_module_function(m, "start_proxy", t_start_proxy, 4);
    rb_define_module_function(m, "stop_proxy", t_stop_proxy, 1);
    rb_define_module_function(m, "get_proxied_bytes", t_get_proxied_bytes, 1);
    rb_define_module_function(m, "set_rlimit_nofile", t_set_rlimit_nofile, 1);
    rb_define_module_function(m, "setuid_string", t_setuid_string, 1);
}
