/*
 * process.c - child processes as connections: em_popen, em_system,
 * em_watch_process, em_get_pid, em_get_status.
 *
 * A popen child's stdin and stdout are one end of an AF_UNIX socketpair;
 * the other end is an ordinary socket connection, so em_send_data,
 * receive_data, pause, timeouts and em_close_write (shutdown: the child
 * reads EOF) need nothing new. EventMachine and libuv do the same. Two
 * pipes would give the child real FIFOs (it rarely matters) but cost a
 * second descriptor and watcher per child and a write path that has to
 * suppress SIGPIPE by hand.
 *
 * Exits are seen through a pidfd per child, polled like any descriptor,
 * and reaped with waitpid(pid, WNOHANG) when it becomes readable: the loop
 * never blocks on a child, needs no SIGCHLD handler (the process's signal
 * dispositions stay the program's) and cannot reap someone else's child.
 * A signalfd for SIGCHLD, the pre-5.3 way, needs SIGCHLD blocked in every
 * thread and a waitpid sweep over all children. Where pidfd_open is
 * missing (Linux < 5.3, and valgrind before 3.20, which the test suite
 * runs under) the exit is polled instead: waitpid(WNOHANG) from a timer
 * every 5 ms at first, doubling up to 100 ms, so a short-lived child is
 * seen quickly and a long-lived one costs ten wakeups a second. Still no
 * signal handling, and kill(2) is safe there because an unreaped child's
 * pid cannot be reused.
 *
 * unbind runs once the connection is closed AND the child has exited, so
 * em_get_status is valid there. When the connection closes first (our
 * close, or EOF while the child lives on), its socket is closed at once,
 * which gives the child EOF on stdin and EPIPE on stdout, and the
 * connection waits on loop->proc_exiting. If the child is still there
 * term_after seconds later (default 0.5) it gets SIGTERM, kill_after
 * seconds after that (default 1) SIGKILL, from timers. (EventMachine sends
 * SIGTERM at once and SIGKILL 0.25 s later, sleeping in the reactor thread
 * in between; a child that exits on EOF by itself is the common case, so
 * it gets a moment first.) Signals go through the pidfd, so a reused pid
 * can never be hit. When the loop stops, children still running
 * are killed (SIGKILL) and reaped at once: the loop is ending and nothing
 * will poll their pidfds again.
 *
 * em_watch_process watches any process through a pidfd and never reaps:
 * waitid(WNOWAIT) peeks at the status of our own child and leaves it for
 * its owner to wait for; for anyone else's the status is unknown.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fdx.h"

#define DEFAULT_TERM_AFTER 0.5
#define DEFAULT_KILL_AFTER 1.0
#define POLL_FIRST 0.005 /* seconds, without pidfd_open */
#define POLL_MAX 0.1

/* ---- reaping --------------------------------------------------------- */

/* Collects the exit status. Returns 1 when the child is gone (status or
 * -ECHILD stored), 0 when it still runs (only with WNOHANG). */
static int reap(em__fdx *x, int options)
{
    int status;
    pid_t r;
    while ((r = waitpid(x->pid, &status, options)) < 0 && errno == EINTR)
        ;
    if (r == 0)
        return 0;
    if (r == x->pid) {
        x->status = status;
        x->status_err = 0;
    } else {
        /* Reaped behind our back (a waitpid(-1) elsewhere, SIGCHLD set to
         * SIG_IGN): gone, status unknown. */
        x->status_err = -ECHILD;
    }
    return 1;
}

static void cancel(em_loop *loop, em_timer_id *timer)
{
    if (*timer)
        em_cancel_timer(loop, *timer);
    *timer = 0;
}

/* The child has been reaped: drop its pidfd and timers; a connection that
 * waited for this goes back to have its unbind run. */
static void child_gone(em__fdx *x)
{
    em_loop *loop = x->conn->loop;
    cancel(loop, &x->signal_timer);
    cancel(loop, &x->poll_timer);
    if (x->exit.fd >= 0) {
        em__poller_forget(loop, &x->exit);
        close(x->exit.fd);
        x->exit.fd = -1;
    }
    if (x->parked) {
        x->parked = 0;
        em__list_remove(&x->conn->link);
        em__list_push_back(&loop->pending_unbind, &x->conn->link);
    }
}

/* Through the pidfd when there is one; otherwise the pid, which is still
 * ours (an unreaped child's pid is never reused). */
static void send_signal(em__fdx *x, int sig)
{
    if (x->exit.fd >= 0)
        pidfd_send_signal(x->exit.fd, sig, NULL, 0);
    else
        kill(x->pid, sig);
}

static int running(const em__fdx *x)
{
    return x->pid > 0 && x->status_err == -EAGAIN;
}

static void kill_and_reap(em__fdx *x)
{
    if (!reap(x, WNOHANG)) {
        send_signal(x, SIGKILL);
        reap(x, 0); /* prompt: SIGKILL cannot be caught or ignored */
    }
    child_gone(x);
}

static void on_child_exit(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    (void)revents;
    em__fdx *x = em__container_of(w, em__fdx, exit);
    if (reap(x, WNOHANG))
        child_gone(x);
}

/* ---- the grace period after close ------------------------------------ */

static void arm_signal(em__fdx *x);

static void on_signal_timer(em_loop *loop, void *arg)
{
    (void)loop;
    em__fdx *x = arg;
    x->signal_timer = 0;
    int sig = !x->term_sent && x->term_after >= 0 ? SIGTERM : SIGKILL;
    send_signal(x, sig);
    if (sig == SIGTERM) {
        x->term_sent = 1;
        arm_signal(x);
    }
}

/* Arms the next signal: SIGTERM term_after seconds after the close, then
 * SIGKILL kill_after seconds after that (either may be "never"). */
static void arm_signal(em__fdx *x)
{
    double delay;
    if (!x->term_sent && x->term_after >= 0)
        delay = x->term_after;
    else if (x->kill_after >= 0)
        delay = x->kill_after;
    else
        return;
    if (em_add_timer(x->conn->loop, delay, on_signal_timer, x,
                     &x->signal_timer) < 0)
        on_signal_timer(x->conn->loop, x); /* no memory: do not wait */
}

int em__proc_hold_unbind(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->kind != EM__FDX_POPEN || !running(x))
        return 0;
    if (reap(x, WNOHANG)) {
        child_gone(x);
        return 0;
    }
    if (conn->loop->stopping) {
        kill_and_reap(x);
        return 0;
    }
    x->parked = 1;
    em__list_push_back(&conn->loop->proc_exiting, &conn->link);
    arm_signal(x);
    return 1;
}

void em__proc_shutdown(em_loop *loop)
{
    while (!em__list_empty(&loop->proc_exiting)) {
        em_conn *conn =
            em__container_of(loop->proc_exiting.next, em_conn, link);
        kill_and_reap(conn->fdx); /* moves it to pending_unbind */
    }
}

void em__proc_release(em__fdx *x)
{
    if (x->kind == EM__FDX_POPEN && running(x))
        kill_and_reap(x); /* only on em_popen's own failure paths */
    cancel(x->conn->loop, &x->poll_timer);
}

/* ---- em_popen -------------------------------------------------------- */

/* The socket transport, except that a child which closed its stdin (or
 * exited) does not end the connection: its output may still be waiting
 * to be read, as in a shell pipeline where `head -1` exits and its line
 * still reaches the reader. What we were writing is dropped, later sends
 * get -EPIPE, and reading goes on to the child's EOF.
 *
 * An AF_UNIX quirk: a socket closed with unread input marks its peer
 * ECONNRESET, and the peer's next read reports that (once) instead of
 * EOF. For a child it only means "exited without reading all we sent",
 * so it is read as the EOF it is. */
static ssize_t popen_read(em_conn *conn, void *buf, size_t len)
{
    ssize_t n = em__socket_transport.read(conn, buf, len);
    return n == -ECONNRESET ? 0 : n;
}

static ssize_t popen_writev(em_conn *conn, const struct iovec *iov, int count)
{
    ssize_t n = em__socket_transport.writev(conn, iov, count);
    if (n != -EPIPE && n != -ECONNRESET)
        return n;
    conn->flags |= EM__CONN_WRITE_SHUT;
    size_t dropped = 0;
    for (int i = 0; i < count; i++)
        dropped += iov[i].iov_len;
    return (ssize_t)dropped;
}

static int popen_shutdown_write(em_conn *conn)
{
    return em__socket_transport.shutdown_write(conn);
}

static void popen_close(em_conn *conn)
{
    em__socket_transport.close(conn);
}

static const em__transport popen_transport = {
    .read = popen_read,
    .writev = popen_writev,
    .shutdown_write = popen_shutdown_write,
    .close = popen_close,
};

static int check_opts(const em_popen_opts *o)
{
    if (o->stderr_mode < EM_STDERR_INHERIT || o->stderr_mode > EM_STDERR_MERGE)
        return -EINVAL;
    if (!isfinite(o->term_after) || !isfinite(o->kill_after) ||
        o->term_after > 4294967.0 || o->kill_after > 4294967.0)
        return -EINVAL;
    return 0;
}

static double grace(double seconds, double fallback)
{
    return seconds == 0.0 ? fallback : seconds < 0 ? -1.0 : seconds;
}

/* The descriptors of one em_popen call: ours (the connection's end of the
 * socketpair), theirs (the child's stdin/stdout), the child's stderr. */
typedef struct pipes {
    int ours, theirs, err;
} pipes;

static void close_pipes(pipes *p)
{
    if (p->ours >= 0)
        close(p->ours);
    if (p->theirs >= 0)
        close(p->theirs);
    if (p->err >= 0)
        close(p->err);
}

static int open_pipes(const em_popen_opts *o, pipes *p)
{
    int sv[2], restore;
    *p = (pipes){-1, -1, -1};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    p->ours = sv[0];
    p->theirs = em__fd_above_stdio(sv[1]); /* the child dup2s onto 0-2 */
    if (p->theirs < 0)
        return p->theirs;
    int err = em__set_nonblock(p->ours, &restore);
    if (err < 0)
        return err;
    if (o->stderr_mode == EM_STDERR_MERGE)
        p->err = fcntl(p->theirs, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    else if (o->stderr_mode == EM_STDERR_NULL)
        p->err = em__fd_above_stdio(open("/dev/null", O_WRONLY | O_CLOEXEC));
    else
        return 0;
    return p->err < 0 ? (o->stderr_mode == EM_STDERR_NULL ? p->err : -errno)
                      : 0;
}

/* Without a pidfd: is the child gone yet? */
static void poll_child(em_loop *loop, void *arg)
{
    em__fdx *x = arg;
    x->poll_timer = 0;
    if (reap(x, WNOHANG)) {
        child_gone(x);
        return;
    }
    x->poll_delay = x->poll_delay * 2 < POLL_MAX ? x->poll_delay * 2 : POLL_MAX;
    if (em_add_timer(loop, x->poll_delay, poll_child, x, &x->poll_timer) < 0)
        send_signal(x, SIGKILL); /* unwatchable: end it, reap it next */
}

/* Watches the child's exit. Returns 0 or a negative errno. */
static int watch_exit(em__fdx *x)
{
    int pidfd = pidfd_open(x->pid, 0);
    if (pidfd < 0 && errno == ENOSYS) {
        x->poll_delay = POLL_FIRST;
        return em_add_timer(x->conn->loop, x->poll_delay, poll_child, x,
                            &x->poll_timer);
    }
    if (pidfd < 0)
        return -errno;
    x->exit.fd = pidfd;
    x->exit.on_event = on_child_exit;
    return em__poller_set(x->conn->loop, &x->exit, EM__IN);
}

int em_popen(em_loop *loop, const char *const argv[], const em_popen_opts *opts,
             const em_handler *handler, void *arg, em_conn **out)
{
    static const em_popen_opts defaults;
    if (out)
        *out = NULL;
    if (!opts)
        opts = &defaults;
    if (!loop || !handler || !argv || !argv[0] || !argv[0][0] ||
        check_opts(opts) < 0)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;

    pipes p;
    int err = open_pipes(opts, &p);
    if (err < 0) {
        close_pipes(&p);
        return err;
    }
    em_conn *conn = em__conn_new(loop, handler, arg, p.ours, 0);
    em__fdx *x = conn ? em__fdx_new(conn, EM__FDX_POPEN) : NULL;
    if (!x) {
        if (conn)
            em__conn_discard(conn);
        close_pipes(&p);
        return -ENOMEM;
    }
    x->term_after = grace(opts->term_after, DEFAULT_TERM_AFTER);
    x->kill_after = grace(opts->kill_after, DEFAULT_KILL_AFTER);

    em__spawn_req req = {.argv = argv,
                         .envp = opts->envp,
                         .cwd = opts->cwd,
                         .stdio_fd = p.theirs,
                         .stderr_fd = p.err};
    int exec_errno = 0;
    err = em__spawn(&req, &x->pid, &exec_errno);
    p.ours = -1; /* the connection's now */
    close_pipes(&p);
    if (err == 0)
        err = watch_exit(x);
    if (err < 0) {
        close(conn->watcher.fd);
        em__conn_discard(conn); /* kills and reaps a child it started */
        return err;
    }
    conn->transport = &popen_transport;
    /* A failed exec: post_init still runs (on a connection already
     * closing), then unbind(-errno) once the child's exit (status 127) is
     * reaped, as a failed connect reports. */
    if (exec_errno)
        em__conn_close_now(conn, -exec_errno);
    em__conn_start(conn, out);
    return 0;
}

/* ---- getters --------------------------------------------------------- */

static em__fdx *process_of(const em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (!x || (x->kind != EM__FDX_POPEN && x->kind != EM__FDX_PROC_WATCH))
        return NULL;
    return x;
}

int em_get_pid(const em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    em__fdx *x = process_of(conn);
    return x ? (int)x->pid : -EOPNOTSUPP;
}

int em_get_status(const em_conn *conn, int *status)
{
    if (!conn || !status)
        return -EINVAL;
    em__fdx *x = process_of(conn);
    if (!x)
        return -EOPNOTSUPP;
    if (x->status_err < 0)
        return x->status_err;
    *status = x->status;
    return 0;
}

/* ---- em_watch_process ------------------------------------------------ */

/* The wait status waitpid would give, rebuilt from waitid's siginfo. */
static int wait_status(const siginfo_t *si)
{
    if (si->si_code == CLD_EXITED)
        return W_EXITCODE(si->si_status, 0);
    if (si->si_code == CLD_DUMPED)
        return si->si_status | WCOREFLAG;
    return si->si_status; /* CLD_KILLED */
}

/* Our own child's status, left for its owner to wait for. Returns 1 when
 * it has exited (status stored), 0 when it runs, -ECHILD when it is not
 * our child. */
static int peek_status(em__fdx *x)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, (id_t)x->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return -errno;
    if (si.si_pid != x->pid)
        return 0;
    x->status = wait_status(&si);
    x->status_err = 0;
    return 1;
}

static void process_exited(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (peek_status(x) != 1)
        x->status_err = -ECHILD; /* not our child: exited, status unknown */
    em__conn_close_now(conn, 0);
}

static void on_process_exit(em_loop *loop, em__watcher *w, unsigned revents)
{
    (void)loop;
    (void)revents;
    em_conn *conn = em__container_of(w, em_conn, watcher);
    if (!(conn->flags & (EM__CONN_CLOSING | EM__CONN_PAUSED)))
        process_exited(conn);
}

/* Without a pidfd: gone once it no longer exists or is a zombie. */
static int stranger_gone(pid_t pid)
{
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 1;
    char path[32], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    const char *state = strrchr(buf, ')');
    return state && (state[2] == 'Z' || state[2] == 'X');
}

static void poll_process(em_loop *loop, void *arg)
{
    em_conn *conn = arg;
    em__fdx *x = conn->fdx;
    x->poll_timer = 0;
    if (conn->flags & EM__CONN_CLOSING)
        return;
    int child = peek_status(x);
    if (child == 1 || (child < 0 && stranger_gone(x->pid))) {
        process_exited(conn);
        return;
    }
    x->poll_delay = x->poll_delay * 2 < POLL_MAX ? x->poll_delay * 2 : POLL_MAX;
    if (em_add_timer(loop, x->poll_delay, poll_process, conn, &x->poll_timer) <
        0)
        em__conn_close_now(conn, -ENOMEM);
}

int em_watch_process(em_loop *loop, pid_t pid, const em_handler *handler,
                     void *arg, em_conn **out)
{
    if (out)
        *out = NULL;
    if (!loop || !handler || pid <= 0)
        return -EINVAL;
    if (loop->stopping)
        return -ECANCELED;
    int pidfd = pidfd_open(pid, 0);
    if (pidfd < 0 && errno != ENOSYS)
        return -errno;
    if (pidfd < 0 && kill(pid, 0) < 0 && errno == ESRCH)
        return -ESRCH;
    /* A watch connection (never read or written) whose one interest is
     * the pidfd's readability; without a pidfd it polls and has no fd. */
    em_conn *conn = em__conn_new(loop, handler, arg, pidfd,
                                 EM__CONN_WATCH_ONLY | EM__CONN_READ_EOF |
                                     EM__CONN_NOTIFY_READABLE);
    em__fdx *x = conn ? em__fdx_new(conn, EM__FDX_PROC_WATCH) : NULL;
    if (x) {
        x->pid = pid;
        x->poll_delay = POLL_FIRST;
    }
    if (!x || (pidfd < 0 && em_add_timer(loop, x->poll_delay, poll_process,
                                         conn, &x->poll_timer) < 0)) {
        if (conn)
            em__conn_discard(conn);
        if (pidfd >= 0)
            close(pidfd);
        return -ENOMEM;
    }
    conn->transport = &em__fd_transport; /* closes the pidfd at unbind */
    conn->watcher.on_event = on_process_exit;
    em__conn_start(conn, out);
    return 0;
}

/* ---- em_system ------------------------------------------------------- */

typedef struct collector {
    em_system_cb callback;
    void *arg;
    char *buf; /* NUL-terminated once anything arrived */
    size_t len, cap;
    int err;
} collector;

static void system_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    em_close_write(conn); /* the child's stdin: EOF at once */
}

static void system_receive(em_conn *conn, const char *data, size_t len)
{
    collector *c = em_conn_arg(conn);
    if (c->len + len + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + len + 1)
            cap *= 2;
        char *buf = realloc(c->buf, cap);
        if (!buf) {
            c->err = -ENOMEM;
            em_close_connection(conn, 0);
            return;
        }
        c->buf = buf;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    c->buf[c->len] = '\0';
}

static void system_unbind(em_conn *conn, int reason)
{
    collector *c = em_conn_arg(conn);
    int status;
    if (em_get_status(conn, &status) < 0)
        status = -1;
    c->callback(em_conn_loop(conn), c->arg, c->buf ? c->buf : "", c->len,
                status, c->err ? c->err : reason);
    free(c->buf);
    free(c);
}

static const em_handler system_handler = {
    .post_init = system_post_init,
    .receive_data = system_receive,
    .unbind = system_unbind,
};

int em_system(em_loop *loop, const char *const argv[], em_system_cb callback,
              void *arg)
{
    if (!callback)
        return -EINVAL;
    collector *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->callback = callback;
    c->arg = arg;
    int err = em_popen(loop, argv, NULL, &system_handler, c, NULL);
    if (err < 0)
        free(c);
    return err;
}

/* ---- after fork ------------------------------------------------------- */

/* A forked child forgets a process connection (fork.c): the parent's
 * child is not the child's to signal or reap, and a pidfd_send_signal or
 * waitpid here would act on the parent's behalf; the pidfd is only closed.
 * em_system's record, otherwise freed by its unbind, is freed here. */
void em__proc_forget(em_conn *conn)
{
    em__fdx *x = conn->fdx;
    if (x->exit.fd >= 0)
        close(x->exit.fd);
    x->exit.fd = -1;
    if (conn->handler == &system_handler) {
        collector *c = conn->arg;
        free(c->buf);
        free(c);
    }
}
