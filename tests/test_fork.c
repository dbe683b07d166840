/*
 * test_fork.c - em_loop_free in a forked child releases the inherited loop
 * as inherited: fork inside a callback (a timer) and between turns, with
 * live plain and TLS connections, TCP and Unix servers, a timer, popen
 * children, a signal handler, em_defer jobs running and idle workers, a
 * file watch, a queued resolution, a proxy's pipe, a queued file range,
 * attached and watched descriptors, a datagram socket, a process watch and
 * the embedding timerfd; and while other threads hammer em_schedule.
 *
 * In the child: em_loop_free returns 0, no callback ran (the state the
 * callbacks write is unchanged), the descriptor count is what it was
 * before the loop was made (plus the test's own), a borrowed descriptor
 * stays open, the signal mask is restored, and a new loop then runs a
 * round trip and an em_defer job. The child reports through a pipe and
 * _exits (Criterion's assertions are for the test's process only). In the
 * parent, after the child exited: every connection still echoes (TLS too:
 * no close_notify went out), unread input is still there, the Unix socket
 * file exists, cat still answers, the signal, the watch, the timer and the
 * defer job still work, and the loop is freed cleanly.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* ---- what the child does and reports ----------------------------------- */

typedef struct report {
    int free_rc;
    int callbacks_ran;  /* the watched state changed during em_loop_free */
    int fds_after_free; /* /proc/self/fd entries */
    int usr1_blocked;
    int borrowed_open; /* the em_watch'ed descriptor is still open */
    int new_loop_rc;   /* 0: a new loop ran a round trip and a defer */
    int fds_at_end;
} report;

typedef struct forker {
    int report_wr;
    const void *watched; /* the state callbacks write */
    size_t watched_len;
    int borrowed_fd; /* -1: none */
    int fds_at_fork; /* the parent's count just before fork() */
    int forked;
    pid_t child;
} forker;

/* Does not assert: safe in the child. */
static int count_fds_raw(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

static int is_blocked(int signo)
{
    sigset_t current;
    pthread_sigmask(SIG_BLOCK, NULL, &current);
    return sigismember(&current, signo);
}

/* The child's new loop: an echo server, a client round trip, a defer. */
typedef struct mini {
    char got[8];
    size_t got_len;
    int client_unbinds;
    int server_unbinds;
    int deferred;
} mini;

static void mini_echo(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static void mini_server_unbind(em_conn *conn, int reason)
{
    (void)reason;
    ((mini *)em_conn_arg(conn))->server_unbinds++;
}

static const em_handler mini_server = {.receive_data = mini_echo,
                                       .unbind = mini_server_unbind};

static void mini_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    em_send_data(conn, "ping", 4);
}

static void mini_receive(em_conn *conn, const char *data, size_t len)
{
    mini *m = em_conn_arg(conn);
    if (m->got_len + len <= sizeof(m->got)) {
        memcpy(m->got + m->got_len, data, len);
        m->got_len += len;
    }
    if (m->got_len >= 4)
        em_close_connection(conn, 0);
}

static void mini_client_unbind(em_conn *conn, int reason)
{
    (void)reason;
    ((mini *)em_conn_arg(conn))->client_unbinds++;
}

static const em_handler mini_client = {.post_init = mini_post_init,
                                       .receive_data = mini_receive,
                                       .unbind = mini_client_unbind};

static void *mini_work(void *arg)
{
    return arg;
}

static void mini_done(em_loop *loop, void *arg, void *result, int status)
{
    (void)loop;
    ((mini *)arg)->deferred = status == 0 && result == arg;
}

static int child_new_loop(void)
{
    em_loop *loop;
    if (em_loop_new(&loop) < 0)
        return -1;
    mini m = {0};
    em_server *srv = NULL;
    int rc =
        em_start_server(loop, "127.0.0.1", 0, &mini_server, &m, NULL, &srv);
    if (rc == 0)
        rc = em_connect(loop, "127.0.0.1", em_server_port(srv), &mini_client,
                        &m, NULL);
    if (rc == 0)
        rc = em_defer(loop, mini_work, mini_done, &m, NULL);
    double deadline = th_now() + TH_TIMEOUT(10);
    while (rc == 0 && th_now() < deadline &&
           !(m.client_unbinds && m.server_unbinds && m.deferred))
        em_run_once(loop, 10);
    if (rc == 0 && !(m.client_unbinds && m.server_unbinds && m.deferred &&
                     m.got_len == 4 && memcmp(m.got, "ping", 4) == 0))
        rc = -2;
    if (srv)
        em_stop_server(srv);
    int freed = em_loop_free(loop);
    return rc < 0 ? rc : freed;
}

static _Noreturn void child_main(em_loop *loop, const forker *f)
{
    alarm(TH_TIMEOUT(30)); /* a hung child must not outlive the test */
    /* Descriptors a process gets by being forked, not from the test or
     * libem: valgrind opens the child's own log file. */
    int extra = count_fds_raw() - f->fds_at_fork;
    report r = {0};
    void *before = malloc(f->watched_len);
    memcpy(before, f->watched, f->watched_len);
    r.free_rc = em_loop_free(loop);
    r.callbacks_ran = memcmp(before, f->watched, f->watched_len) != 0;
    free(before);
    r.fds_after_free = count_fds_raw() - extra;
    r.usr1_blocked = is_blocked(SIGUSR1);
    r.borrowed_open =
        f->borrowed_fd >= 0 && fcntl(f->borrowed_fd, F_GETFD) >= 0;
    r.new_loop_rc = child_new_loop();
    r.fds_at_end = count_fds_raw() - extra;
    ssize_t n = write(f->report_wr, &r, sizeof(r));
    _exit(n == (ssize_t)sizeof(r) ? 0 : 1);
}

/* A timer callback: the child frees the loop from inside it. */
static void fork_in_callback(em_loop *loop, void *arg)
{
    forker *f = arg;
    f->fds_at_fork = count_fds_raw();
    pid_t pid = fork();
    if (pid == 0)
        child_main(loop, f);
    f->child = pid;
    f->forked = 1;
}

static void fork_between_turns(em_loop *loop, forker *f)
{
    f->fds_at_fork = count_fds_raw();
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0)
        child_main(loop, f);
    f->child = pid;
    f->forked = 1;
}

/* Forks inside a timer callback of loop's next turn. */
static void fork_inside(em_loop *loop, forker *f)
{
    cr_assert_eq(em_add_timer(loop, 0.0, fork_in_callback, f, NULL), 0);
    th_run_until(loop, &f->forked, 5);
    cr_assert_gt(f->child, 0, "fork failed");
}

/* Reads the child's report and reaps it. The parent's loop does not run
 * meanwhile: nothing in the child waits for it. */
static report child_report(forker *f, int report_rd)
{
    report r;
    struct pollfd p = {.fd = report_rd, .events = POLLIN};
    int ready = poll(&p, 1, TH_TIMEOUT(20) * 1000);
    if (ready != 1)
        kill(f->child, SIGKILL);
    cr_assert_eq(ready, 1, "no report from the child");
    ssize_t n = read(report_rd, &r, sizeof(r));
    cr_assert_eq(n, (ssize_t)sizeof(r), "short report: %zd", n);
    int status;
    cr_assert_eq(waitpid(f->child, &status, 0), f->child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x",
              status);
    return r;
}

static void check_report(const report *r, int expected_fds)
{
    cr_assert_eq(r->free_rc, 0, "em_loop_free in the child: %s",
                 em_strerror(r->free_rc));
    cr_assert_not(r->callbacks_ran, "a callback ran in the child");
    cr_assert_eq(r->fds_after_free, expected_fds,
                 "child: %d descriptors after em_loop_free, want %d",
                 r->fds_after_free, expected_fds);
    cr_assert_eq(r->new_loop_rc, 0, "child's new loop: %d (%s)", r->new_loop_rc,
                 em_strerror(r->new_loop_rc));
    cr_assert_eq(r->fds_at_end, expected_fds,
                 "child: %d descriptors after its new loop, want %d",
                 r->fds_at_end, expected_fds);
}

static void report_pipe(int fds[2])
{
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
}

/* ---- the state callbacks write ----------------------------------------- */

typedef struct conn_side {
    int post_inits;
    int completed;
    int unbinds;
    int echo;
    char got[64];
    size_t got_len;
    em_conn *last;
} conn_side;

typedef struct world {
    conn_side tcp;    /* TCP server: echo */
    conn_side unix_s; /* Unix server: echo */
    conn_side client; /* a connection the loop made to the TCP server */
    conn_side cat;    /* em_popen cat */
    int timer_fired;
    int usr1;
    int modified;
    int watch_unbinds;
    int dones;
    int done_status;
} world;

static void side_post_init(em_conn *conn, void *arg)
{
    conn_side *s = arg;
    s->post_inits++;
    s->last = conn;
}

static void side_completed(em_conn *conn)
{
    ((conn_side *)em_conn_arg(conn))->completed++;
}

static void side_receive(em_conn *conn, const char *data, size_t len)
{
    conn_side *s = em_conn_arg(conn);
    if (s->echo) {
        cr_assert_eq(em_send_data(conn, data, len), 0);
        return;
    }
    cr_assert_leq(s->got_len + len, sizeof(s->got));
    memcpy(s->got + s->got_len, data, len);
    s->got_len += len;
}

static void side_unbind(em_conn *conn, int reason)
{
    (void)reason;
    conn_side *s = em_conn_arg(conn);
    s->unbinds++;
    if (s->last == conn)
        s->last = NULL;
}

static const em_handler side_handler = {.post_init = side_post_init,
                                        .connection_completed = side_completed,
                                        .receive_data = side_receive,
                                        .unbind = side_unbind};

static void never(em_loop *loop, void *arg)
{
    (void)loop;
    ((world *)arg)->timer_fired++;
}

static void on_usr1(em_loop *loop, int signo, void *arg)
{
    (void)loop;
    (void)signo;
    ((world *)arg)->usr1++;
}

static void on_modified(em_file_watch *watch, void *arg)
{
    (void)watch;
    ((world *)arg)->modified++;
}

static void on_watch_unbind(em_file_watch *watch, void *arg, int reason)
{
    (void)watch;
    (void)reason;
    ((world *)arg)->watch_unbinds++;
}

static const em_file_handler watch_handler = {.file_modified = on_modified,
                                              .unbind = on_watch_unbind};

/* A job that waits in its worker until the gate opens. */
typedef struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int open;
    atomic_int entered;
    world *w;
} gate;

#define GATE_INIT                                                              \
    {                                                                          \
        .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER    \
    }

static void *gated_work(void *arg)
{
    gate *g = arg;
    atomic_fetch_add(&g->entered, 1);
    pthread_mutex_lock(&g->lock);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    return g;
}

static void *quick_work(void *arg)
{
    return arg;
}

static void count_done(em_loop *loop, void *arg, void *result, int status)
{
    (void)loop;
    (void)result;
    gate *g = arg;
    g->w->dones++;
    g->w->done_status |= status;
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static void wait_entered(em_loop *loop, gate *g, int n)
{
    double deadline = th_now() + TH_TIMEOUT(5);
    while (atomic_load(&g->entered) < n) {
        cr_assert_lt(th_now(), deadline, "gated jobs did not start");
        em_run_once(loop, 5);
    }
}

static char *temp_path(char *buf, size_t size, const char *tag)
{
    snprintf(buf, size, "/tmp/em-fork-%d-%s", (int)getpid(), tag);
    unlink(buf);
    return buf;
}

static void append_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

/* ---- fork inside a callback: connections, servers, and the rest --------- */

Test(fork, child_frees_loop_inside_callback, .timeout = TH_TIMEOUT(40))
{
    int rep[2];
    report_pipe(rep);
    char sock_path[108], file_path[64];
    th_unix_path(sock_path, sizeof(sock_path), "fork");
    temp_path(file_path, sizeof(file_path), "watched");
    append_file(file_path, "start\n");
    int usr1_was_blocked = is_blocked(SIGUSR1);
    int base = th_count_fds();

    em_loop *loop = th_loop();
    world w = {.tcp.echo = 1, .unix_s.echo = 1};
    em_server *tcp = th_start_server(loop, &side_handler, &w.tcp);
    em_server *unx =
        th_start_unix_server(loop, sock_path, &side_handler, &w.unix_s);
    int port = th_listen_port(tcp);
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", port, &side_handler, &w.client, NULL), 0);
    th_run_until_count(loop, &w.tcp.post_inits, 1, 5);
    th_run_until_count(loop, &w.client.post_inits, 1, 5);
    int tcp_fd = th_connect_accepted(loop, port, &w.tcp.post_inits);
    int unix_fd = th_client_connect_unix(sock_path);
    th_run_until_count(loop, &w.unix_s.post_inits, 1, 5);
    th_expect_echo(loop, tcp_fd, "before");
    th_expect_echo(loop, unix_fd, "before");

    em_conn *cat = NULL;
    cr_assert_eq(em_popen(loop, (const char *[]){"cat", NULL}, NULL,
                          &side_handler, &w.cat, &cat),
                 0);
    em_timer_id timer;
    cr_assert_eq(em_add_timer(loop, 3600.0, never, &w, &timer), 0);
    em_signal_id sig;
    cr_assert_eq(em_add_signal(loop, SIGUSR1, on_usr1, &w, &sig), 0);
    em_file_watch *watch = NULL;
    cr_assert_eq(em_watch_file(loop, file_path, &watch_handler, &w, &watch), 0);
    /* One worker runs a gated job at the fork; another, done with its
     * quick job, sleeps on the pool's condvar. */
    gate g = GATE_INIT;
    g.w = &w;
    cr_assert_eq(em_defer(loop, gated_work, count_done, &g, NULL), 0);
    wait_entered(loop, &g, 1);
    cr_assert_eq(em_defer(loop, quick_work, count_done, &g, NULL), 0);
    th_run_until_count(loop, &w.dones, 1, 5);

    /* Unread input at the fork: the child must not consume it. */
    th_send_all(tcp_fd, "unread", 6);
    forker f = {.report_wr = rep[1],
                .watched = &w,
                .watched_len = sizeof(w),
                .borrowed_fd = -1};
    fork_inside(loop, &f);
    report r = child_report(&f, rep[0]);
    check_report(&r, base + 2); /* + tcp_fd, unix_fd */
    cr_assert_eq(r.usr1_blocked, usr1_was_blocked,
                 "the child's signal mask was not restored");

    /* The parent's side is intact. */
    char buf[16];
    cr_assert_eq(th_pump_recv(loop, tcp_fd, buf, 6, 5), 6);
    cr_assert_eq(memcmp(buf, "unread", 6), 0);
    th_expect_echo(loop, tcp_fd, "after");
    struct stat st;
    cr_assert_eq(stat(sock_path, &st), 0, "the Unix socket file is gone");
    cr_assert(S_ISSOCK(st.st_mode));
    th_expect_echo(loop, unix_fd, "after");
    int unix_fd2 = th_client_connect_unix(sock_path);
    th_expect_echo(loop, unix_fd2, "new");
    em_conn *client = w.client.last;
    cr_assert_not_null(client);
    cr_assert_eq(em_send_data(client, "loop client", 11), 0);
    th_run_until_size(loop, &w.client.got_len, 11, 5);
    cr_assert_eq(memcmp(w.client.got, "loop client", 11), 0);
    cr_assert_eq(em_send_data(cat, "through cat\n", 12), 0);
    th_run_until_size(loop, &w.cat.got_len, 12, 5);
    cr_assert_eq(memcmp(w.cat.got, "through cat\n", 12), 0);
    raise(SIGUSR1);
    th_run_until_count(loop, &w.usr1, 1, 5);
    append_file(file_path, "more\n");
    th_run_until_count(loop, &w.modified, 1, 5);
    gate_open(&g);
    th_run_until_count(loop, &w.dones, 2, 5);
    cr_assert_eq(w.done_status, 0);
    cr_assert_eq(w.timer_fired, 0);
    cr_assert_eq(em_cancel_timer(loop, timer), 0, "the timer is still there");

    /* Everything closed the ordinary way. */
    cr_assert_eq(em_remove_signal(loop, sig), 0);
    cr_assert_eq(em_stop_watching(watch), 0);
    th_run_until_count(loop, &w.watch_unbinds, 1, 5);
    cr_assert_eq(em_close_write(cat), 0);
    th_run_until_count(loop, &w.cat.unbinds, 1, 5);
    em_close_connection(client, 0);
    close(tcp_fd);
    close(unix_fd);
    close(unix_fd2);
    th_run_until_count(loop, &w.tcp.unbinds, 2, 5);
    th_run_until_count(loop, &w.unix_s.unbinds, 2, 5);
    cr_assert_eq(em_stop_server(unx), 0);
    th_stop_and_free(loop, tcp);
    cr_assert_eq(stat(sock_path, &st), -1, "the parent's stop unlinks it");
    close(rep[0]);
    close(rep[1]);
    unlink(file_path);
    cr_assert_eq(th_count_fds(), base - 2);
}

/* ---- TLS: no close_notify from the child ------------------------------- */

typedef struct tls_pair {
    th_tls server;
    th_tls client;
} tls_pair;

static em_server *tls_pair_start(em_loop *loop, tls_pair *p)
{
    p->server = (th_tls)TH_TLS_INIT;
    p->client = (th_tls)TH_TLS_INIT;
    th_tls_server_opts(&p->server.opts, "server");
    th_tls_client_opts(&p->client.opts);
    p->server.echo = 1;
    em_server *srv = th_start_server(loop, &th_tls_handler, &p->server);
    cr_assert_eq(em_connect(loop, "127.0.0.1", th_listen_port(srv),
                            &th_tls_handler, &p->client, NULL),
                 0);
    th_tls_run_handshake(loop, &p->server, &p->client);
    cr_assert_eq(p->client.handshakes, 1, "%s", p->client.error);
    cr_assert_eq(p->server.handshakes, 1, "%s", p->server.error);
    return srv;
}

/* The parent's TLS connection still carries a round trip and neither
 * side has seen an end. */
static void tls_pair_check(em_loop *loop, tls_pair *p, const char *msg)
{
    size_t before = p->client.got_len;
    cr_assert_eq(em_send_data(p->client.conn, msg, strlen(msg)), 0);
    th_run_until_size(loop, &p->client.got_len, before + strlen(msg), 5);
    cr_assert_eq(memcmp(p->client.got + before, msg, strlen(msg)), 0);
    cr_assert_eq(p->client.unbinds, 0);
    cr_assert_eq(p->server.unbinds, 0);
}

static void tls_pair_finish(em_loop *loop, em_server *srv, tls_pair *p)
{
    em_close_connection(p->client.conn, 0);
    th_run_until_count(loop, &p->server.unbinds, 1, 5);
    th_stop_and_free(loop, srv);
    th_tls_reset(&p->server);
    th_tls_reset(&p->client);
}

Test(fork, tls_child_sends_no_close_notify, .timeout = TH_TIMEOUT(30))
{
    int rep[2];
    report_pipe(rep);
    /* OpenSSL's one-time setup (which may keep descriptors) before the
     * count: a context made and freed. */
    em_loop *warm = th_loop();
    tls_pair wp;
    tls_pair_finish(warm, tls_pair_start(warm, &wp), &wp);
    int base = th_count_fds();

    em_loop *loop = th_loop();
    tls_pair p;
    em_server *srv = tls_pair_start(loop, &p);
    tls_pair_check(loop, &p, "before fork");
    forker f = {.report_wr = rep[1],
                .watched = &p,
                .watched_len = sizeof(p),
                .borrowed_fd = -1};
    fork_inside(loop, &f);
    report r = child_report(&f, rep[0]);
    check_report(&r, base);
    tls_pair_check(loop, &p, "after the child exited");
    tls_pair_finish(loop, srv, &p);
    close(rep[0]);
    close(rep[1]);
    cr_assert_eq(th_count_fds(), base - 2);
}

/* ---- between turns: what a normal free would have done ----------------- */

Test(fork, child_frees_loop_between_turns, .timeout = TH_TIMEOUT(30))
{
    int rep[2];
    report_pipe(rep);
    em_loop *warm = th_loop();
    tls_pair wp;
    tls_pair_finish(warm, tls_pair_start(warm, &wp), &wp);
    char sock_path[108];
    th_unix_path(sock_path, sizeof(sock_path), "turns");
    int base = th_count_fds();

    em_loop *loop = th_loop();
    struct {
        tls_pair p;
        conn_side unix_s;
    } s = {.unix_s.echo = 1};
    em_server *srv = tls_pair_start(loop, &s.p);
    em_server *unx =
        th_start_unix_server(loop, sock_path, &side_handler, &s.unix_s);
    int unix_fd = th_client_connect_unix(sock_path);
    th_run_until_count(loop, &s.unix_s.post_inits, 1, 5);
    forker f = {.report_wr = rep[1],
                .watched = &s,
                .watched_len = sizeof(s),
                .borrowed_fd = -1};
    fork_between_turns(loop, &f);
    report r = child_report(&f, rep[0]);
    check_report(&r, base + 1); /* + unix_fd */

    struct stat st;
    cr_assert_eq(stat(sock_path, &st), 0, "the Unix socket file is gone");
    th_expect_echo(loop, unix_fd, "still here");
    tls_pair_check(loop, &s.p, "still encrypted");
    close(unix_fd);
    th_run_until_count(loop, &s.unix_s.unbinds, 1, 5);
    cr_assert_eq(em_stop_server(unx), 0);
    tls_pair_finish(loop, srv, &s.p);
    close(rep[0]);
    close(rep[1]);
    cr_assert_eq(th_count_fds(), base - 2);
}

/* ---- every kind of descriptor the loop owns, and one it borrows --------- */

static void watch_readable(em_conn *conn)
{
    (void)conn;
}

static const em_handler watch_only = {.notify_readable = watch_readable};

Test(fork, child_closes_every_descriptor_kind, .timeout = TH_TIMEOUT(30))
{
    int rep[2], attached[2], borrowed[2];
    report_pipe(rep);
    cr_assert_eq(pipe2(attached, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(borrowed, O_CLOEXEC), 0);
    char file_path[64];
    temp_path(file_path, sizeof(file_path), "range");
    append_file(file_path, "file range bytes\n");
    int base = th_count_fds();

    em_loop *loop = th_loop();
    struct {
        world w;
        conn_side dgram, attached, watched, procs;
    } k = {0};
    em_server *srv = th_start_server(loop, &side_handler, &k.w.tcp);
    int port = th_listen_port(srv);
    /* a and b: a proxy from a into b, b paused so the bytes stay in the
     * proxy's pipe and b's queue; c: a file range queued while paused. */
    int a = th_connect_accepted(loop, port, &k.w.tcp.post_inits);
    em_conn *ca = k.w.tcp.last;
    int b = th_connect_accepted(loop, port, &k.w.tcp.post_inits);
    em_conn *cb = k.w.tcp.last;
    int c = th_connect_accepted(loop, port, &k.w.tcp.post_inits);
    em_conn *cc = k.w.tcp.last;
    cr_assert_eq(em_pause(cb), 0);
    cr_assert_eq(em_proxy_incoming_to(ca, cb, 0, 0), 0);
    th_send_all(a, "proxied", 7);
    th_run_for(loop, 0.05);
    cr_assert_eq(em_get_outbound_data_size(cb), 7, "bytes wait in the pipe");
    cr_assert_eq(em_pause(cc), 0);
    cr_assert_eq(em_send_file_data(cc, file_path), 0);
    cr_assert_gt(em_get_outbound_data_size(cc), 0);

    cr_assert_eq(em_attach(loop, attached[0], &side_handler, &k.attached, NULL),
                 0);
    attached[0] = -1; /* the loop's now */
    cr_assert_eq(em_watch(loop, borrowed[0], &watch_only, &k.watched, NULL), 0);
    cr_assert_eq(em_open_datagram_socket(loop, "127.0.0.1", 0, &side_handler,
                                         &k.dgram, NULL),
                 0);
    em_conn *sleeper = NULL;
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, NULL,
                          &side_handler, &k.procs, &sleeper),
                 0);
    cr_assert_eq(em_watch_process(loop, em_get_pid(sleeper), &side_handler,
                                  &k.procs, NULL),
                 0);
    cr_assert_geq(em_backend_fd(loop), 0);
    /* The pool's only worker is busy: a name to resolve stays queued. */
    gate g = GATE_INIT;
    g.w = &k.w;
    cr_assert_eq(em_set_threadpool_size(loop, 1), 0);
    cr_assert_eq(em_defer(loop, gated_work, count_done, &g, NULL), 0);
    wait_entered(loop, &g, 1);
    cr_assert_eq(
        em_connect(loop, "localhost", port, &side_handler, &k.w.client, NULL),
        0);

    forker f = {.report_wr = rep[1],
                .watched = &k,
                .watched_len = sizeof(k),
                .borrowed_fd = borrowed[0]};
    fork_inside(loop, &f);
    report r = child_report(&f, rep[0]);
    /* a, b and c are the test's; attached[0] was the loop's */
    check_report(&r, base + 3 - 1);
    cr_assert(r.borrowed_open, "the child closed a descriptor em_watch "
                               "only borrowed");

    /* The parent goes on: the resolution, the proxy, the file range. */
    gate_open(&g);
    th_run_until_count(loop, &k.w.dones, 1, 5);
    th_run_until_count(loop, &k.w.client.completed, 1, 5);
    cr_assert_eq(em_resume(cb), 0);
    char buf[32];
    cr_assert_eq(th_pump_recv(loop, b, buf, 7, 5), 7);
    cr_assert_eq(memcmp(buf, "proxied", 7), 0);
    cr_assert_eq(em_resume(cc), 0);
    cr_assert_eq(th_pump_recv(loop, c, buf, 17, 5), 17);
    cr_assert_eq(memcmp(buf, "file range bytes\n", 17), 0);

    cr_assert_eq(em_stop(loop), 0);
    double deadline = th_now() + TH_TIMEOUT(5);
    while (em_run_once(loop, 10) != 1)
        cr_assert_lt(th_now(), deadline, "no stop");
    th_free_loop(loop);
    close(a);
    close(b);
    close(c);
    close(attached[1]);
    close(borrowed[0]);
    close(borrowed[1]);
    close(rep[0]);
    close(rep[1]);
    unlink(file_path);
    cr_assert_eq(th_count_fds(), base - 6);
}

/* ---- other threads hold the loop's locks at the fork -------------------- */

typedef struct hammer {
    em_loop *loop;
    atomic_int stop;
    atomic_long scheduled;
} hammer;

static void nothing(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

static void *hammer_main(void *arg)
{
    hammer *h = arg;
    while (!atomic_load(&h->stop)) {
        if (em_schedule(h->loop, nothing, NULL) == 0)
            atomic_fetch_add(&h->scheduled, 1);
#ifndef __SANITIZE_ADDRESS__
        /* A copy queued for no connection: a malloc here, a free in the
         * loop (or the child's em_loop_free). ASan's allocator (GCC 12's)
         * is not fork-safe: a child would hang in malloc on a lock this
         * thread held at the fork. glibc's and valgrind's are. */
        em_send_data_id(h->loop, 1, "x", 1);
#endif
    }
    return NULL;
}

static void *short_work(void *arg)
{
    return arg;
}

/* Eight jobs in flight, each replaced by a new one when done, until
 * `stop`: the pool's lock changes hands all the time. */
typedef struct churn {
    int live;
    int stop;
} churn;

static void short_done(em_loop *loop, void *arg, void *result, int status)
{
    (void)result;
    (void)status;
    churn *c = arg;
    c->live--;
    if (!c->stop && em_defer(loop, short_work, short_done, c, NULL) == 0)
        c->live++;
}

Test(fork, child_frees_loop_while_threads_hold_its_locks,
     .timeout = TH_TIMEOUT(60))
{
    int rep[2];
    report_pipe(rep);
    int base = th_count_fds();
    em_loop *loop = th_loop();
    churn ch = {0};
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(em_defer(loop, short_work, short_done, &ch, NULL), 0);
        ch.live++;
    }
    hammer h = {.loop = loop};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&threads[i], NULL, hammer_main, &h), 0);
    int rounds = TH_TIMEOUT_SCALE > 1 ? 3 : 20;
    for (int i = 0; i < rounds; i++) {
        th_run_for(loop, 0.01);
        forker f = {.report_wr = rep[1],
                    .watched = &ch,
                    .watched_len = sizeof(ch),
                    .borrowed_fd = -1};
        if (i % 2)
            fork_inside(loop, &f);
        else
            fork_between_turns(loop, &f);
        report r = child_report(&f, rep[0]);
        check_report(&r, base);
    }
    atomic_store(&h.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    cr_assert_gt(atomic_load(&h.scheduled), 0);
    ch.stop = 1;
    double deadline = th_now() + TH_TIMEOUT(5);
    while (ch.live > 0) {
        cr_assert_lt(th_now(), deadline, "%d jobs left", ch.live);
        em_run_once(loop, 10);
    }
    th_free_loop(loop);
    close(rep[0]);
    close(rep[1]);
    cr_assert_eq(th_count_fds(), base - 2);
}

/* ---- the parent's own process is unaffected ---------------------------- */

typedef struct inside {
    int ran;
    int rc;
} inside;

static void free_inside(em_loop *loop, void *arg)
{
    inside *in = arg;
    in->rc = em_loop_free(loop);
    in->ran = 1;
}

Test(fork, parent_free_is_unchanged, .timeout = TH_TIMEOUT(10))
{
    /* In the process that made it, a callback still cannot free the loop,
     * and a free with live handles still unbinds them (-EBUSY). */
    em_loop *loop = th_loop();
    conn_side s = {.echo = 1};
    em_server *srv = th_start_server(loop, &side_handler, &s);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &s.post_inits);
    inside in = {0};
    cr_assert_eq(em_add_timer(loop, 0.0, free_inside, &in, NULL), 0);
    th_run_until(loop, &in.ran, 5);
    cr_assert_eq(in.rc, -EDEADLK);
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(s.unbinds, 1);
    close(fd);
}

/* ---- stdio: a process whose stdin and stdout are pipes ------------------ */

/* The intermediate process P of the stdio test: its fd 0 and 1 are the
 * test's pipes, its loop has them as an em_open_stdio connection (private
 * non-blocking copies), and it forks a child C inside a callback. P
 * forwards C's report, then echoes until stdin ends, and exits 0 when its
 * own loop was freed cleanly. */
typedef struct stdio_result {
    report child;
    int base;         /* P's descriptors before its loop */
    int child_status; /* C's wait status */
    int blocking_0_1; /* P's fd 0 and 1 are still blocking after C */
} stdio_result;

static int stdio_unbinds;

static void stdio_echo(em_conn *conn, const char *data, size_t len)
{
    em_send_data(conn, data, len);
}

static void stdio_unbind(em_conn *conn, int reason)
{
    (void)conn;
    (void)reason;
    stdio_unbinds++;
}

static const em_handler stdio_echo_handler = {.receive_data = stdio_echo,
                                              .unbind = stdio_unbind};

static _Noreturn void stdio_parent(int in_fd, int out_fd, int result_wr)
{
    alarm(TH_TIMEOUT(30));
    if (dup2(in_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0)
        _exit(3);
    close(in_fd);
    close(out_fd);
    int rep[2];
    if (pipe2(rep, O_CLOEXEC) < 0)
        _exit(3);
    stdio_result res = {.base = count_fds_raw()};
    em_loop *loop;
    em_conn *conn;
    if (em_loop_new(&loop) < 0 ||
        em_open_stdio(loop, &stdio_echo_handler, NULL, &conn) < 0)
        _exit(4);
    int watched = 0;
    forker f = {.report_wr = rep[1],
                .watched = &watched,
                .watched_len = sizeof(watched),
                .borrowed_fd = -1};
    em_add_timer(loop, 0.0, fork_in_callback, &f, NULL);
    while (!f.forked)
        em_run_once(loop, 10);
    struct pollfd p = {.fd = rep[0], .events = POLLIN};
    if (f.child < 0 || poll(&p, 1, TH_TIMEOUT(20) * 1000) != 1 ||
        read(rep[0], &res.child, sizeof(res.child)) != sizeof(res.child))
        _exit(5);
    waitpid(f.child, &res.child_status, 0);
    res.blocking_0_1 = !(fcntl(STDIN_FILENO, F_GETFL) & O_NONBLOCK) &&
                       !(fcntl(STDOUT_FILENO, F_GETFL) & O_NONBLOCK);
    if (write(result_wr, &res, sizeof(res)) != sizeof(res))
        _exit(6);
    double deadline = th_now() + TH_TIMEOUT(10);
    while (!stdio_unbinds && th_now() < deadline)
        em_run_once(loop, 10);
    _exit(stdio_unbinds && em_loop_free(loop) == 0 ? 0 : 7);
}

Test(fork, stdio_copies_closed_in_child, .timeout = TH_TIMEOUT(30))
{
    int in[2], out[2], res[2];
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(res, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(in[1]);
        close(out[0]);
        close(res[0]);
        stdio_parent(in[0], out[1], res[1]);
    }
    close(in[0]);
    close(out[1]);
    close(res[1]);
    stdio_result r;
    struct pollfd p = {.fd = res[0], .events = POLLIN};
    if (poll(&p, 1, TH_TIMEOUT(20) * 1000) != 1)
        kill(pid, SIGKILL);
    cr_assert_eq(read(res[0], &r, sizeof(r)), (ssize_t)sizeof(r),
                 "no result from the stdio process");
    cr_assert(WIFEXITED(r.child_status) && WEXITSTATUS(r.child_status) == 0,
              "child status %#x", r.child_status);
    check_report(&r.child, r.base);
    cr_assert(r.blocking_0_1, "fd 0 and 1 keep their flags");
    /* P's stdio connection still echoes: C closed only its copies. */
    cr_assert_eq(write(in[1], "after\n", 6), 6);
    char buf[8];
    p.fd = out[0];
    cr_assert_eq(poll(&p, 1, TH_TIMEOUT(5) * 1000), 1, "no echo");
    cr_assert_eq(read(out[0], buf, sizeof(buf)), 6);
    cr_assert_eq(memcmp(buf, "after\n", 6), 0);
    close(in[1]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x",
              status);
    close(out[0]);
    close(res[0]);
}
