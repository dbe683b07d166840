/*
 * test_process.c - child processes: em_popen, em_get_pid, em_get_status,
 * em_system, em_watch_process.
 *
 * Children are real programs (/bin/sh scripts, cat, seq, sleep). Every
 * test that starts children ends by checking that none is left, running
 * or zombie (zombie_children scans /proc for our children), and the area
 * test at the end compares open descriptors before and after a mix of
 * successes, failures and kills, and with RLIMIT_NOFILE lowered so each
 * descriptor em_popen needs fails in turn.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "em.h"
#include "helpers.h"

/* ---- helpers --------------------------------------------------------- */

/* Our children still in the process table: (running + zombie), zombies. */
static int children(int *zombies)
{
    DIR *d = opendir("/proc");
    cr_assert_not_null(d);
    int n = 0, z = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (r <= 0)
            continue;
        buf[r] = '\0';
        char *p = strrchr(buf, ')');
        char state;
        int ppid;
        if (!p || sscanf(p + 2, "%c %d", &state, &ppid) != 2 ||
            ppid != getpid())
            continue;
        n++;
        z += state == 'Z';
    }
    closedir(d);
    if (zombies)
        *zombies = z;
    return n;
}

static void assert_no_children(void)
{
    int zombies;
    int n = children(&zombies);
    cr_assert_eq(zombies, 0, "%d zombie children left", zombies);
    cr_assert_eq(n, 0, "%d children still running", n);
}

/* Forked helpers of the tests never return into the test and never just
 * _exit: they exec, so that a leak checker (valgrind follows children)
 * does not report the parent's memory the fork copied. */
static _Noreturn void exec_sh(const char *script, int in, const char *arg)
{
    if (in >= 0)
        dup2(in, STDIN_FILENO);
    execl("/bin/sh", "sh", "-c", script, "sh", arg, (char *)NULL);
    _exit(127);
}

/* A child that has exited and been reaped: its pid is free. */
static pid_t gone_pid(void)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        exec_sh("exit 0", -1, NULL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return pid;
}

/* A small deterministic generator: reproducible "random" chunk sizes. */
static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* What one popen connection saw. */
typedef struct proc {
    const char *input; /* sent in post_init (input_len bytes) */
    size_t input_len;
    int piecewise;   /* send input in random-size pieces */
    int close_write; /* em_close_write after the input */
    int close_on;    /* em_close_connection once got contains this */
    const char *close_marker;
    int post_inits, unbinds, reason, status, status_rc, pid;
    int send_rc_in_post_init;
    int status_rc_in_post_init;
    char *got;
    size_t len, cap, chunks;
    em_conn *conn;
} proc;

static void proc_reset(proc *p)
{
    free(p->got);
    memset(p, 0, sizeof(*p));
}

static void proc_post_init(em_conn *conn, void *arg)
{
    proc *p = arg;
    p->post_inits++;
    p->conn = conn;
    p->pid = em_get_pid(conn);
    int st;
    p->status_rc_in_post_init = em_get_status(conn, &st);
    if (p->input && !p->piecewise)
        p->send_rc_in_post_init = em_send_data(conn, p->input, p->input_len);
    if (p->input && p->piecewise) {
        uint32_t seed = 7;
        for (size_t off = 0; off < p->input_len;) {
            size_t n = 1 + lcg(&seed) % 9000;
            if (n > p->input_len - off)
                n = p->input_len - off;
            cr_assert_eq(em_send_data(conn, p->input + off, n), 0);
            off += n;
        }
    }
    if (p->close_write)
        em_close_write(conn);
}

static void proc_receive(em_conn *conn, const char *data, size_t len)
{
    proc *p = em_conn_arg(conn);
    if (p->len + len + 1 > p->cap) {
        p->cap = (p->len + len + 1) * 2;
        p->got = realloc(p->got, p->cap);
        cr_assert_not_null(p->got);
    }
    memcpy(p->got + p->len, data, len);
    p->len += len;
    p->got[p->len] = '\0';
    p->chunks++;
    if (p->close_marker && strstr(p->got, p->close_marker))
        em_close_connection(conn, 0);
}

static void proc_unbind(em_conn *conn, int reason)
{
    proc *p = em_conn_arg(conn);
    p->unbinds++;
    p->reason = reason;
    p->status_rc = em_get_status(conn, &p->status);
    cr_assert_eq(em_get_pid(conn), p->pid, "pid stays valid in unbind");
    p->conn = NULL;
}

static const em_handler proc_handler = {
    .post_init = proc_post_init,
    .receive_data = proc_receive,
    .unbind = proc_unbind,
};

/* Starts argv with p (and opts), runs until its unbind. */
static void run_proc(em_loop *loop, const char *const *argv,
                     const em_popen_opts *opts, proc *p, double max_seconds)
{
    em_conn *conn = NULL;
    int rc = em_popen(loop, argv, opts, &proc_handler, p, &conn);
    cr_assert_eq(rc, 0, "em_popen %s: %s", argv[0], em_strerror(rc));
    cr_assert_not_null(conn);
    cr_assert_eq(p->post_inits, 1);
    th_run_until_count(loop, &p->unbinds, 1, max_seconds);
}

static void expect_exit(const proc *p, int code)
{
    cr_assert_eq(p->status_rc, 0, "em_get_status: %s",
                 em_strerror(p->status_rc));
    cr_assert(WIFEXITED(p->status), "status %#x is not an exit", p->status);
    cr_assert_eq(WEXITSTATUS(p->status), code, "exit %d, expected %d",
                 WEXITSTATUS(p->status), code);
}

static void expect_signal(const proc *p, int sig)
{
    cr_assert_eq(p->status_rc, 0, "em_get_status: %s",
                 em_strerror(p->status_rc));
    cr_assert(WIFSIGNALED(p->status), "status %#x is not a signal", p->status);
    cr_assert_eq(WTERMSIG(p->status), sig, "signal %d, expected %d",
                 WTERMSIG(p->status), sig);
}

/* ---- data both ways -------------------------------------------------- */

Test(process, cat_round_trip_and_status, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {.input = "hello, child\n", .input_len = 13, .close_write = 1};
    run_proc(loop, (const char *[]){"cat", NULL}, NULL, &p, 5);
    cr_assert_eq(p.send_rc_in_post_init, 0);
    cr_assert_eq(p.status_rc_in_post_init, -EAGAIN, "running: no status");
    cr_assert_gt(p.pid, 0);
    cr_assert_eq(p.len, 13);
    cr_assert_str_eq(p.got, "hello, child\n");
    cr_assert_eq(p.reason, 0);
    cr_assert_eq(p.unbinds, 1);
    expect_exit(&p, 0);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

Test(process, exit_codes, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    struct {
        const char *const *argv;
        int code;
    } cases[] = {
        {(const char *[]){"true", NULL}, 0},
        {(const char *[]){"false", NULL}, 1},
        {(const char *[]){"/bin/sh", "-c", "exit 3", NULL}, 3},
        {(const char *[]){"sh", "-c", "echo out; exit 255", NULL}, 255},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        proc p = {0};
        run_proc(loop, cases[i].argv, NULL, &p, 5);
        cr_assert_eq(p.reason, 0);
        expect_exit(&p, cases[i].code);
        proc_reset(&p);
    }
    th_free_loop(loop);
    assert_no_children();
}

Test(process, killed_by_a_signal, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {0};
    run_proc(loop, (const char *[]){"sh", "-c", "kill -KILL $$", NULL}, NULL,
             &p, 5);
    cr_assert_eq(p.reason, 0);
    expect_signal(&p, SIGKILL);
    proc_reset(&p);
    run_proc(loop, (const char *[]){"sh", "-c", "kill -TERM $$", NULL}, NULL,
             &p, 5);
    expect_signal(&p, SIGTERM);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* wc -c counts what arrives before the EOF em_close_write sends. */
Test(process, stdin_eof_after_random_chunks, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    size_t size = TH_TIMEOUT_SCALE > 1 ? 200000 : 1500000;
    uint8_t *data = malloc(size);
    th_pat_fill(data, 0, size);
    proc p = {.input = (const char *)data,
              .input_len = size,
              .piecewise = 1,
              .close_write = 1};
    run_proc(loop, (const char *[]){"wc", "-c", NULL}, NULL, &p, 10);
    cr_assert_eq(p.reason, 0);
    expect_exit(&p, 0);
    cr_assert_eq(strtoul(p.got, NULL, 10), size, "wc -c said %s", p.got);
    proc_reset(&p);
    free(data);
    th_free_loop(loop);
    assert_no_children();
}

/* Several MiB through cat and back, written in random pieces and read in
 * whatever chunks arrive. */
Test(process, megabytes_through_cat, .timeout = TH_TIMEOUT(30))
{
    em_loop *loop = th_loop();
    size_t size = TH_TIMEOUT_SCALE > 1 ? (512u << 10) : (6u << 20);
    uint8_t *data = malloc(size);
    th_pat_fill(data, 0, size);
    proc p = {.input = (const char *)data,
              .input_len = size,
              .piecewise = 1,
              .close_write = 1};
    run_proc(loop, (const char *[]){"cat", NULL}, NULL, &p, 25);
    cr_assert_eq(p.reason, 0);
    expect_exit(&p, 0);
    cr_assert_eq(p.len, size);
    cr_assert_eq(th_pat_check((const uint8_t *)p.got, 0, size), -1,
                 "first wrong byte at %ld",
                 th_pat_check((const uint8_t *)p.got, 0, size));
    cr_assert_gt(p.chunks, 1);
    proc_reset(&p);
    free(data);
    th_free_loop(loop);
    assert_no_children();
}

Test(process, large_output, .timeout = TH_TIMEOUT(30))
{
    em_loop *loop = th_loop();
    int last = TH_TIMEOUT_SCALE > 1 ? 50000 : 700000; /* ~4.8 MB */
    char arg[16];
    snprintf(arg, sizeof(arg), "%d", last);
    proc p = {0};
    run_proc(loop, (const char *[]){"seq", "1", arg, NULL}, NULL, &p, 25);
    cr_assert_eq(p.reason, 0);
    expect_exit(&p, 0);
    char *expect = malloc((size_t)last * 8 + 1);
    size_t len = 0;
    for (int i = 1; i <= last; i++)
        len += (size_t)sprintf(expect + len, "%d\n", i);
    cr_assert_eq(p.len, len, "got %zu bytes, expected %zu", p.len, len);
    cr_assert_eq(memcmp(p.got, expect, len), 0);
    cr_assert_gt(p.chunks, 1);
    free(expect);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* The child exits without reading what we send: no crash, no error
 * reason, one unbind. */
Test(process, child_exits_at_once_while_we_send, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    static char big[1 << 20];
    proc p = {.input = big, .input_len = sizeof(big)};
    run_proc(loop, (const char *[]){"true", NULL}, NULL, &p, 5);
    cr_assert_eq(p.send_rc_in_post_init, 0);
    cr_assert_eq(p.reason, 0);
    cr_assert_eq(p.unbinds, 1);
    expect_exit(&p, 0);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* head exits after one line while we still write: its line arrives, as
 * in a shell pipeline, and the connection ends with a plain EOF. */
static void head_receive(em_conn *conn, const char *data, size_t len)
{
    proc_receive(conn, data, len);
}

static void head_unbind(em_conn *conn, int reason)
{
    proc *p = em_conn_arg(conn);
    p->send_rc_in_post_init = em_send_data(conn, "x", 1);
    proc_unbind(conn, reason);
}

Test(process, output_survives_a_child_that_stops_reading,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    size_t size = 4u << 20;
    char *data = malloc(size);
    memset(data, 'y', size);
    memcpy(data, "first line\n", 11);
    proc p = {.input = data, .input_len = size};
    static const em_handler h = {.post_init = proc_post_init,
                                 .receive_data = head_receive,
                                 .unbind = head_unbind};
    cr_assert_eq(em_popen(loop, (const char *[]){"head", "-n", "1", NULL}, NULL,
                          &h, &p, NULL),
                 0);
    th_run_until_count(loop, &p.unbinds, 1, 5);
    cr_assert_str_eq(p.got, "first line\n");
    cr_assert_eq(p.reason, 0);
    expect_exit(&p, 0);
    cr_assert_eq(p.send_rc_in_post_init, -ENOTCONN, "send in unbind");
    proc_reset(&p);
    free(data);
    th_free_loop(loop);
    assert_no_children();
}

/* ---- exec failures --------------------------------------------------- */

static void expect_exec_failure(em_loop *loop, const char *const *argv,
                                const em_popen_opts *opts, int err)
{
    proc p = {.input = "data", .input_len = 4};
    run_proc(loop, argv, opts, &p, 5);
    cr_assert_eq(p.post_inits, 1);
    cr_assert_eq(p.send_rc_in_post_init, -ENOTCONN,
                 "post_init of a failed exec: already closing");
    cr_assert_eq(p.reason, err, "%s: reason %s, expected %s", argv[0],
                 em_err_name(p.reason), em_err_name(err));
    expect_exit(&p, 127);
    cr_assert_eq(p.len, 0);
    proc_reset(&p);
}

Test(process, exec_failures_reach_unbind, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char path[] = "/tmp/em-test-noexec-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "#!/bin/sh\n", 10), 10);
    close(fd);
    chmod(path, 0644);

    expect_exec_failure(loop, (const char *[]){"/nonexistent/prog", NULL}, NULL,
                        -ENOENT);
    expect_exec_failure(loop, (const char *[]){"em-no-such-program", NULL},
                        NULL, -ENOENT);
    expect_exec_failure(loop, (const char *[]){path, NULL}, NULL, -EACCES);
    expect_exec_failure(loop, (const char *[]){"/tmp", NULL}, NULL, -EACCES);
    em_popen_opts bad_cwd = {.cwd = "/nonexistent/dir"};
    expect_exec_failure(loop, (const char *[]){"true", NULL}, &bad_cwd,
                        -ENOENT);
    unlink(path);
    th_free_loop(loop);
    assert_no_children();
}

/* ---- closing while the child runs ------------------------------------ */

static void close_soon(em_loop *loop, void *arg)
{
    (void)loop;
    proc *p = arg;
    cr_assert_not_null(p->conn);
    cr_assert_eq(em_close_connection(p->conn, 0), 0);
}

Test(process, close_while_running_then_sigterm, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {0};
    em_popen_opts o = {.term_after = 0.05};
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, &o,
                          &proc_handler, &p, NULL),
                 0);
    em_add_timer(loop, 0.02, close_soon, &p, NULL);
    double start = th_now();
    th_run_until_count(loop, &p.unbinds, 1, 5);
    double took = th_now() - start;
    cr_assert_geq(took, 0.06, "unbind after %.3f s: before the SIGTERM", took);
    cr_assert_lt(took, 3.0 * TH_TIMEOUT_SCALE);
    cr_assert_eq(p.reason, 0);
    expect_signal(&p, SIGTERM);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* A child that ignores SIGTERM gets SIGKILL kill_after seconds later. */
Test(process, sigterm_ignored_then_sigkill, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {.close_marker = "ready"};
    em_popen_opts o = {.term_after = 0.05, .kill_after = 0.1};
    double start = th_now();
    run_proc(loop,
             (const char *[]){"sh", "-c",
                              "trap '' TERM; echo ready; exec sleep 100", NULL},
             &o, &p, 5);
    double took = th_now() - start;
    cr_assert_geq(took, 0.15, "unbind after %.3f s", took);
    cr_assert_eq(p.reason, 0);
    expect_signal(&p, SIGKILL);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* Negative grace periods: never signalled, unbind waits for the exit. */
Test(process, no_signals_wait_for_the_exit, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {.close_marker = "ready"};
    em_popen_opts o = {.term_after = -1, .kill_after = -1};
    run_proc(
        loop,
        (const char *[]){"sh", "-c", "echo ready; sleep 0.3; exit 5", NULL}, &o,
        &p, 5);
    expect_exit(&p, 5);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* EOF from the child while it lives on (it closed its stdout): the
 * connection closes, unbind waits for the exit and gets its status. */
Test(process, eof_before_exit, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {0};
    em_popen_opts o = {.term_after = -1, .kill_after = -1};
    double start = th_now();
    run_proc(loop,
             (const char *[]){
                 "sh", "-c", "echo bye; exec >&- <&-; sleep 0.2; exit 6", NULL},
             &o, &p, 5);
    cr_assert_geq(th_now() - start, 0.2);
    cr_assert_str_eq(p.got, "bye\n");
    expect_exit(&p, 6);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

static void stop_loop(em_loop *loop, void *arg)
{
    (void)arg;
    em_stop(loop);
}

/* Stopping the loop kills what still runs, open or closing. */
Test(process, loop_stop_kills_and_reaps, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc open_one = {0}, closed_one = {0};
    em_popen_opts never = {.term_after = -1, .kill_after = -1};
    em_conn *c2;
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, NULL,
                          &proc_handler, &open_one, NULL),
                 0);
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, &never,
                          &proc_handler, &closed_one, &c2),
                 0);
    th_run_for(loop, 0.05);
    em_close_connection(c2, 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(closed_one.unbinds, 0, "waits for the child");
    cr_assert_eq(em_connection_count(loop), 2);
    em_add_timer(loop, 0.01, stop_loop, NULL, NULL);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(open_one.unbinds, 1);
    cr_assert_eq(closed_one.unbinds, 1);
    expect_signal(&open_one, SIGKILL);
    expect_signal(&closed_one, SIGKILL);
    proc_reset(&open_one);
    proc_reset(&closed_one);
    th_free_loop(loop);
    assert_no_children();
}

/* em_loop_free with a child running: -EBUSY (live handles), yet killed,
 * reaped and unbound. */
Test(process, loop_free_with_a_running_child, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {0};
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, NULL,
                          &proc_handler, &p, NULL),
                 0);
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(p.unbinds, 1);
    expect_signal(&p, SIGKILL);
    proc_reset(&p);
    assert_no_children();
}

/* ---- options --------------------------------------------------------- */

/* Runs a child that writes "out" to stdout and "err" to stderr with the
 * given mode; returns what reached our own stderr (redirected meanwhile). */
static char *stderr_mode_run(int mode, proc *p)
{
    em_loop *loop = th_loop();
    int pipefd[2];
    cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
    int saved = dup(STDERR_FILENO);
    dup2(pipefd[1], STDERR_FILENO);
    close(pipefd[1]);
    em_popen_opts o = {.stderr_mode = mode};
    int rc = em_popen(
        loop, (const char *[]){"sh", "-c", "echo out; echo err >&2", NULL}, &o,
        &proc_handler, p, NULL);
    dup2(saved, STDERR_FILENO); /* the child has its copy by now */
    close(saved);
    cr_assert_eq(rc, 0);
    th_run_until_count(loop, &p->unbinds, 1, 5);
    th_free_loop(loop);
    static char got[64];
    ssize_t n = read(pipefd[0], got, sizeof(got) - 1); /* writers gone */
    got[n > 0 ? n : 0] = '\0';
    close(pipefd[0]);
    return got;
}

Test(process, stderr_modes, .timeout = TH_TIMEOUT(10))
{
    proc p = {0};
    cr_assert_str_eq(stderr_mode_run(EM_STDERR_INHERIT, &p), "err\n");
    cr_assert_str_eq(p.got, "out\n");
    proc_reset(&p);
    cr_assert_str_eq(stderr_mode_run(EM_STDERR_NULL, &p), "");
    cr_assert_str_eq(p.got, "out\n");
    proc_reset(&p);
    cr_assert_str_eq(stderr_mode_run(EM_STDERR_MERGE, &p), "");
    cr_assert(strcmp(p.got, "out\nerr\n") == 0 ||
                  strcmp(p.got, "err\nout\n") == 0,
              "merged: %s", p.got);
    proc_reset(&p);
    assert_no_children();
}

Test(process, cwd_and_environment, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    proc p = {0};
    em_popen_opts o = {.cwd = "/"};
    run_proc(loop, (const char *[]){"pwd", NULL}, &o, &p, 5);
    cr_assert_str_eq(p.got, "/\n");
    proc_reset(&p);

    const char *env[] = {"EM_TEST_VAR=hello there", NULL};
    em_popen_opts e = {.envp = env};
    run_proc(loop,
             (const char *[]){"sh", "-c",
                              "echo \"$EM_TEST_VAR\"; echo \"${HOME-unset}\"",
                              NULL},
             &e, &p, 5);
    cr_assert_str_eq(p.got, "hello there\nunset\n", "got %s", p.got);
    proc_reset(&p);
    th_free_loop(loop);
    assert_no_children();
}

/* ---- em_system ------------------------------------------------------- */

typedef struct sys_result {
    int calls;
    char output[256];
    size_t len;
    int status, err;
} sys_result;

static void on_system(em_loop *loop, void *arg, const char *output, size_t len,
                      int status, int err)
{
    (void)loop;
    sys_result *r = arg;
    r->calls++;
    cr_assert_eq(output[len], '\0');
    r->len = len;
    snprintf(r->output, sizeof(r->output), "%s", output);
    r->status = status;
    r->err = err;
}

Test(process, system_collects_output_and_status, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    sys_result r = {0};
    cr_assert_eq(
        em_system(loop,
                  (const char *[]){"sh", "-c",
                                   "echo hi; cat; echo there; exit 4", NULL},
                  on_system, &r),
        0);
    th_run_until_count(loop, &r.calls, 1, 5);
    cr_assert_str_eq(r.output, "hi\nthere\n", "stdin is at EOF for cat");
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 4);
    cr_assert_eq(r.err, 0);

    sys_result missing = {0};
    cr_assert_eq(em_system(loop, (const char *[]){"em-no-such-program", NULL},
                           on_system, &missing),
                 0);
    th_run_until_count(loop, &missing.calls, 1, 5);
    cr_assert_eq(missing.err, -ENOENT);
    cr_assert_eq(missing.len, 0);
    cr_assert(WIFEXITED(missing.status) && WEXITSTATUS(missing.status) == 127);

    cr_assert_eq(em_system(loop, (const char *[]){"true", NULL}, NULL, &r),
                 -EINVAL);
    cr_assert_eq(em_system(NULL, (const char *[]){"true", NULL}, on_system, &r),
                 -EINVAL);
    th_free_loop(loop);
    assert_no_children();
}

static void on_system_size(em_loop *loop, void *arg, const char *output,
                           size_t len, int status, int err)
{
    (void)loop;
    (void)output;
    sys_result *r = arg;
    r->calls++;
    r->len = len;
    r->status = status;
    r->err = err;
}

Test(process, system_large_output, .timeout = TH_TIMEOUT(20))
{
    em_loop *loop = th_loop();
    sys_result r = {0};
    const char *count = TH_TIMEOUT_SCALE > 1 ? "200000" : "3000000";
    cr_assert_eq(
        em_system(loop,
                  (const char *[]){"head", "-c", count, "/dev/zero", NULL},
                  on_system_size, &r),
        0);
    th_run_until_count(loop, &r.calls, 1, 15);
    cr_assert_eq(r.len, strtoul(count, NULL, 10));
    cr_assert_eq(r.err, 0);
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0);
    th_free_loop(loop);
    assert_no_children();
}

/* ---- em_watch_process ------------------------------------------------ */

typedef struct watched {
    int unbinds, reason, status, status_rc, pid;
} watched;

static void watched_unbind(em_conn *conn, int reason)
{
    watched *w = em_conn_arg(conn);
    w->unbinds++;
    w->reason = reason;
    w->status_rc = em_get_status(conn, &w->status);
    w->pid = em_get_pid(conn);
}

static const em_handler watched_handler = {.unbind = watched_unbind};

/* A child of the test that exits with code when gate's write end is
 * written or closed. */
static pid_t gated_child(int gate[2], int code)
{
    cr_assert_eq(pipe2(gate, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char arg[16];
        snprintf(arg, sizeof(arg), "%d", code);
        exec_sh("read x; exit \"$1\"", gate[0], arg);
    }
    close(gate[0]);
    return pid;
}

Test(process, watch_own_child_keeps_it_for_its_owner, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int gate[2];
    pid_t pid = gated_child(gate, 7);
    watched w = {0};
    em_conn *conn;
    cr_assert_eq(em_watch_process(loop, pid, &watched_handler, &w, &conn), 0);
    cr_assert_eq(em_get_pid(conn), pid);
    int st;
    cr_assert_eq(em_get_status(conn, &st), -EAGAIN);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.unbinds, 0);
    close(gate[1]);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(w.reason, 0);
    cr_assert_eq(w.status_rc, 0);
    cr_assert(WIFEXITED(w.status) && WEXITSTATUS(w.status) == 7);
    int zombies;
    cr_assert_eq(children(&zombies), 1, "not reaped by the library");
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert_eq(WEXITSTATUS(st), 7);
    th_free_loop(loop);
    assert_no_children();
}

/* A process that is not our child: its exit is seen, the status is not. */
Test(process, watch_a_stranger, .timeout = TH_TIMEOUT(10))
{
    int gate[2], report[2];
    cr_assert_eq(pipe2(gate, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(report, O_CLOEXEC), 0);
    pid_t middle = fork();
    cr_assert_geq(middle, 0);
    if (middle == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0)
            exec_sh("read x; exit 3", gate[0], NULL);
        ssize_t n = write(report[1], &grandchild, sizeof(grandchild));
        exec_sh(n == sizeof(grandchild) ? "exit 0" : "exit 1", -1, NULL);
    }
    close(gate[0]);
    close(report[1]);
    pid_t stranger;
    cr_assert_eq(read(report[0], &stranger, sizeof(stranger)),
                 (ssize_t)sizeof(stranger));
    close(report[0]);
    int st;
    cr_assert_eq(waitpid(middle, &st, 0), middle);

    em_loop *loop = th_loop();
    watched w = {0};
    cr_assert_eq(em_watch_process(loop, stranger, &watched_handler, &w, NULL),
                 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(w.unbinds, 0);
    close(gate[1]);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(w.reason, 0);
    cr_assert_eq(w.status_rc, -ECHILD);
    cr_assert_eq(w.pid, stranger);
    th_free_loop(loop);
    assert_no_children();
}

Test(process, watch_closed_before_the_exit, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int gate[2];
    pid_t pid = gated_child(gate, 0);
    watched w = {0};
    em_conn *conn;
    cr_assert_eq(em_watch_process(loop, pid, &watched_handler, &w, &conn), 0);
    cr_assert_eq(em_send_data(conn, "x", 1), -EOPNOTSUPP);
    cr_assert_eq(em_detach(conn), -EOPNOTSUPP);
    cr_assert_eq(em_set_notify_readable(conn, 0), -EOPNOTSUPP);
    cr_assert_eq(em_close_connection(conn, 0), 0);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(w.status_rc, -EAGAIN);
    close(gate[1]);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    th_free_loop(loop);
    assert_no_children();
}

Test(process, watch_process_bad_input, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    watched w = {0};
    cr_assert_eq(em_watch_process(loop, 0, &watched_handler, &w, NULL),
                 -EINVAL);
    cr_assert_eq(em_watch_process(loop, -1, &watched_handler, &w, NULL),
                 -EINVAL);
    cr_assert_eq(em_watch_process(loop, getpid(), NULL, &w, NULL), -EINVAL);
    cr_assert_eq(em_watch_process(NULL, getpid(), &watched_handler, &w, NULL),
                 -EINVAL);
    cr_assert_eq(em_watch_process(loop, gone_pid(), &watched_handler, &w, NULL),
                 -ESRCH);
    th_free_loop(loop);
}

/* ---- bad input and wrong kinds --------------------------------------- */

static const em_handler nothing = {0};

static void popen_in_unbind(em_conn *conn, int reason)
{
    (void)reason;
    int *rc = em_conn_arg(conn);
    *rc = em_popen(em_conn_loop(conn), (const char *[]){"true", NULL}, NULL,
                   &nothing, NULL, NULL);
}

Test(process, bad_input, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    const char *true_argv[] = {"true", NULL};
    em_conn *out = (em_conn *)&out;
    cr_assert_eq(em_popen(NULL, true_argv, NULL, &nothing, NULL, &out),
                 -EINVAL);
    cr_assert_null(out);
    cr_assert_eq(em_popen(loop, NULL, NULL, &nothing, NULL, NULL), -EINVAL);
    cr_assert_eq(
        em_popen(loop, (const char *[]){NULL}, NULL, &nothing, NULL, NULL),
        -EINVAL);
    cr_assert_eq(
        em_popen(loop, (const char *[]){"", NULL}, NULL, &nothing, NULL, NULL),
        -EINVAL);
    cr_assert_eq(em_popen(loop, true_argv, NULL, NULL, NULL, NULL), -EINVAL);
    em_popen_opts bad = {.stderr_mode = 9};
    cr_assert_eq(em_popen(loop, true_argv, &bad, &nothing, NULL, NULL),
                 -EINVAL);
    em_popen_opts nan_grace = {.term_after = NAN};
    cr_assert_eq(em_popen(loop, true_argv, &nan_grace, &nothing, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(em_get_pid(NULL), -EINVAL);
    int st;
    cr_assert_eq(em_get_status(NULL, &st), -EINVAL);

    /* Wrong kinds: a TCP connection has no process; a process has no
     * socket to detach, no TLS, no reconnect. */
    th_echo e = {0};
    em_server *srv = th_start_server(loop, &th_echo_handler, &e);
    int fd = th_connect_accepted(loop, th_listen_port(srv), &e.accepted);
    cr_assert_eq(em_get_pid(e.conn), -EOPNOTSUPP);
    cr_assert_eq(em_get_status(e.conn, &st), -EOPNOTSUPP);
    close(fd);
    th_run_until_count(loop, &e.unbinds, 1, 5);

    proc p = {0};
    em_conn *conn;
    cr_assert_eq(em_popen(loop, (const char *[]){"cat", NULL}, NULL,
                          &proc_handler, &p, &conn),
                 0);
    cr_assert_eq(em_get_status(conn, NULL), -EINVAL);
    cr_assert_eq(em_detach(conn), -EOPNOTSUPP);
    cr_assert_eq(em_start_tls(conn, NULL), -EOPNOTSUPP);
    cr_assert_eq(em_set_notify_writable(conn, 1), -EOPNOTSUPP);
    cr_assert_eq(em_close_write(conn), 0);
    th_run_until_count(loop, &p.unbinds, 1, 5);
    expect_exit(&p, 0);
    proc_reset(&p);
    th_stop_and_free(loop, srv);

    /* em_popen while the loop shuts down: -ECANCELED. */
    loop = th_loop();
    int rc = 1;
    static const em_handler h = {.unbind = popen_in_unbind};
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, NULL,
                          &h, &rc, NULL),
                 0);
    em_add_timer(loop, 0.01, stop_loop, NULL, NULL);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(rc, -ECANCELED);
    th_free_loop(loop);
    assert_no_children();
}

/* ---- descriptors and zombies ----------------------------------------- */

Test(process, no_fd_or_zombie_left, .timeout = TH_TIMEOUT(20))
{
    int before = th_count_fds();
    em_loop *loop = th_loop();
    proc ps[6] = {{.input = "abc", .input_len = 3, .close_write = 1},
                  {0},
                  {0},
                  {.close_marker = "go"},
                  {0},
                  {0}};
    em_popen_opts quick = {.term_after = 0.01};
    const char *const *argvs[] = {
        (const char *[]){"cat", NULL},
        (const char *[]){"false", NULL},
        (const char *[]){"/nonexistent", NULL},
        (const char *[]){"sh", "-c", "echo go; exec sleep 100", NULL},
        (const char *[]){"sh", "-c", "kill -9 $$", NULL},
        (const char *[]){"sh", "-c", "sleep 1 & exit 0", NULL},
    };
    int unbinds = 0;
    for (int i = 0; i < 6; i++)
        cr_assert_eq(
            em_popen(loop, argvs[i], &quick, &proc_handler, &ps[i], NULL), 0);
    /* The last child exited, but its grandchild holds the socket: the
     * connection stays open (with the status known) until we close it. */
    int st = -1;
    double deadline = th_now() + TH_TIMEOUT(5);
    while (em_get_status(ps[5].conn, &st) != 0) {
        cr_assert_lt(th_now(), deadline);
        th_run_for(loop, 0.01);
    }
    cr_assert_eq(ps[5].unbinds, 0);
    em_close_connection(ps[5].conn, 0);
    for (int i = 0; i < 6; i++) {
        th_run_until_count(loop, &ps[i].unbinds, 1, 5);
        unbinds += ps[i].unbinds;
    }
    cr_assert_eq(unbinds, 6);
    cr_assert_str_eq(ps[0].got, "abc");
    for (int i = 0; i < 6; i++)
        proc_reset(&ps[i]);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
    /* The orphaned sleep of the last script is init's now, not ours. */
    assert_no_children();
}

/* Fills every free descriptor number below the highest one in use, so
 * that an RLIMIT_NOFILE of top + n leaves exactly n numbers. Returns top
 * (one past the highest number in use); *fill gets the placeholders. */
static int fill_fd_gaps(int *fill, int max_fill, int *filled)
{
    int top = 0;
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (isdigit((unsigned char)e->d_name[0]) && atoi(e->d_name) >= top)
            top = atoi(e->d_name) + 1;
    closedir(d);
    *filled = 0;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        if (fd >= top) {
            close(fd);
            return top;
        }
        cr_assert_lt(*filled, max_fill);
        fill[(*filled)++] = fd;
    }
}

/* Every descriptor em_popen needs fails in turn: -EMFILE, no leak, no
 * child left behind. */
Test(process, out_of_descriptors, .timeout = TH_TIMEOUT(20))
{
    const char *preload = getenv("LD_PRELOAD");
    if (preload && strstr(preload, "vgpreload"))
        cr_skip_test("valgrind keeps descriptors of its own at the top");
    em_loop *loop = th_loop();
    int fill[256], filled;
    int top = fill_fd_gaps(fill, 256, &filled);
    int before = th_count_fds();
    struct rlimit old;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    int failures = 0, successes = 0;
    for (int extra = 0; extra < 8; extra++) {
        struct rlimit low = old;
        low.rlim_cur = (rlim_t)(top + extra);
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
        proc p = {0};
        int rc = em_popen(loop, (const char *[]){"true", NULL}, NULL,
                          &proc_handler, &p, NULL);
        setrlimit(RLIMIT_NOFILE, &old);
        if (rc == 0) {
            successes++;
            th_run_until_count(loop, &p.unbinds, 1, 5);
            expect_exit(&p, 0);
        } else {
            failures++;
            cr_assert_eq(rc, -EMFILE, "extra %d: %s", extra, em_strerror(rc));
            cr_assert_eq(p.post_inits, 0);
        }
        proc_reset(&p);
        cr_assert_eq(th_count_fds(), before, "extra %d leaked", extra);
        assert_no_children();
    }
    cr_assert_gt(failures, 0);
    cr_assert_gt(successes, 0);
    for (int i = 0; i < filled; i++)
        close(fill[i]);
    th_free_loop(loop);
}

/* ---- without pidfd_open ---------------------------------------------- */

/* Makes pidfd_open fail with ENOSYS in this test's worker process (and
 * its children), as on Linux < 5.3 or under valgrind < 3.20. Criterion
 * runs every test in its own process, so no other test is affected. */
static void deny_pidfd_open(void)
{
#if defined(__x86_64__)
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]),
                              .filter = filter};
    cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
    cr_assert_eq(syscall(SYS_pidfd_open, getpid(), 0), -1);
    cr_assert_eq(errno, ENOSYS);
#else
    cr_skip_test("the seccomp filter is written for x86-64");
#endif
}

/* The same life cycle, exits found by polling waitpid instead. */
Test(process, without_pidfd_open, .timeout = TH_TIMEOUT(20))
{
    deny_pidfd_open();
    int before = th_count_fds();
    em_loop *loop = th_loop();

    proc p = {.input = "polled\n", .input_len = 7, .close_write = 1};
    run_proc(loop, (const char *[]){"cat", NULL}, NULL, &p, 5);
    cr_assert_str_eq(p.got, "polled\n");
    expect_exit(&p, 0);
    proc_reset(&p);

    expect_exec_failure(loop, (const char *[]){"em-no-such-program", NULL},
                        NULL, -ENOENT);

    p = (proc){.close_marker = "ready"};
    em_popen_opts o = {.term_after = 0.05, .kill_after = 0.1};
    run_proc(loop,
             (const char *[]){"sh", "-c",
                              "trap '' TERM; echo ready; exec sleep 100", NULL},
             &o, &p, 5);
    expect_signal(&p, SIGKILL);
    proc_reset(&p);

    sys_result r = {0};
    cr_assert_eq(
        em_system(loop, (const char *[]){"sh", "-c", "echo hi; exit 9", NULL},
                  on_system, &r),
        0);
    th_run_until_count(loop, &r.calls, 1, 5);
    cr_assert_str_eq(r.output, "hi\n");
    cr_assert_eq(WEXITSTATUS(r.status), 9);

    /* Our own child, watched: status read, child left to us. */
    int gate[2];
    pid_t pid = gated_child(gate, 7);
    watched w = {0};
    em_conn *conn;
    cr_assert_eq(em_watch_process(loop, pid, &watched_handler, &w, &conn), 0);
    cr_assert_eq(em_get_fd(conn), -EBADF, "no pidfd");
    close(gate[1]);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(w.status_rc, 0);
    cr_assert_eq(WEXITSTATUS(w.status), 7);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);

    /* A stranger that exited but whose parent has not reaped it yet: a
     * zombie, which counts as gone. */
    int hold[2], report[2];
    cr_assert_eq(pipe2(hold, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(report, O_CLOEXEC), 0);
    pid_t parent = fork();
    cr_assert_geq(parent, 0);
    if (parent == 0) {
        pid_t kid = fork();
        if (kid == 0)
            exec_sh("exit 4", -1, NULL);
        close(hold[1]);
        ssize_t n = write(report[1], &kid, sizeof(kid));
        /* sh keeps the pid, and kid stays its unreaped child (a zombie)
         * while sh waits in its read builtin. */
        exec_sh(n == sizeof(kid) ? "read x" : "exit 1", hold[0], NULL);
    }
    close(hold[0]);
    close(report[1]);
    pid_t zombie;
    cr_assert_eq(read(report[0], &zombie, sizeof(zombie)),
                 (ssize_t)sizeof(zombie));
    close(report[0]);
    w = (watched){0};
    cr_assert_eq(em_watch_process(loop, zombie, &watched_handler, &w, NULL), 0);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    cr_assert_eq(w.status_rc, -ECHILD);
    close(hold[1]);
    cr_assert_eq(waitpid(parent, &st, 0), parent);

    /* A process that no longer exists. */
    cr_assert_eq(em_watch_process(loop, gone_pid(), &watched_handler, &w, NULL),
                 -ESRCH);

    /* Loop stop with a running child. */
    proc running = {0};
    cr_assert_eq(em_popen(loop, (const char *[]){"sleep", "100", NULL}, NULL,
                          &proc_handler, &running, NULL),
                 0);
    em_add_timer(loop, 0.02, stop_loop, NULL, NULL);
    cr_assert_eq(em_run(loop), 0);
    expect_signal(&running, SIGKILL);
    proc_reset(&running);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), before);
    assert_no_children();
}

/* With pidfds (the normal case) a watch has one. */
Test(process, watch_uses_a_pidfd, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    int gate[2];
    pid_t pid = gated_child(gate, 0);
    watched w = {0};
    em_conn *conn;
    cr_assert_eq(em_watch_process(loop, pid, &watched_handler, &w, &conn), 0);
    long probe = syscall(SYS_pidfd_open, getpid(), 0);
    if (probe < 0) {
        cr_assert_eq(errno, ENOSYS);
        cr_assert_eq(em_get_fd(conn), -EBADF); /* valgrind < 3.20 */
    } else {
        close((int)probe);
        cr_assert_geq(em_get_fd(conn), 0);
    }
    close(gate[1]);
    th_run_until_count(loop, &w.unbinds, 1, 5);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    th_free_loop(loop);
}
