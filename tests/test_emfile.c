/*
 * test_emfile.c - a server out of descriptors. RLIMIT_NOFILE is lowered in
 * the test's own process (each Criterion test runs in its own process) and
 * every remaining slot is filled, so accept4 fails with EMFILE while
 * clients wait in the backlog. The loop must not spin (CPU time measured
 * with getrusage), established connections keep working, and once
 * descriptors are freed the waiting clients are accepted and served.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* A loop that spun for the whole window would burn about WINDOW seconds
 * of CPU in tens of thousands of turns; a backed-off one sleeps 10 ms per
 * turn (plus a few turns for the retry timer). */
#define WINDOW 0.5
#define MAX_CPU (0.15 * TH_TIMEOUT_SCALE)
#define MAX_TURNS 200

/* ---- descriptor starvation ------------------------------------------- */

struct starvation {
    struct rlimit saved;
    int *fillers;
    int count;
};

/* Lowers the soft limit to just above the highest open descriptor and
 * fills every hole below it, so the next descriptor allocation fails. */
static void starve(struct starvation *st)
{
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &st->saved), 0);
    int scan = st->saved.rlim_cur > 65536 ? 65536 : (int)st->saved.rlim_cur;
    int highest = 0;
    for (int fd = 0; fd < scan; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            highest = fd;
    st->fillers = calloc((size_t)highest + 1, sizeof(int));
    cr_assert_not_null(st->fillers);
    st->count = 0;

    struct rlimit low = st->saved;
    low.rlim_cur = (rlim_t)highest + 1;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0, "setrlimit: %s",
                 strerror(errno));
    for (;;) {
        int fd = fcntl(0, F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
            break;
        st->fillers[st->count++] = fd;
    }
    cr_assert_eq(errno, EMFILE, "filling descriptors: %s", strerror(errno));
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_lt(probe, 0, "descriptors left after starving");
    cr_assert_eq(errno, EMFILE);
}

/* Frees every filler and restores the original limit. */
static void feed(struct starvation *st)
{
    for (int i = 0; i < st->count; i++)
        close(st->fillers[i]);
    free(st->fillers);
    st->fillers = NULL;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &st->saved), 0);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    cr_assert_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Runs 10 ms turns for WINDOW seconds; returns the CPU time they used. */
static double cpu_of_turns(em_loop *loop, int *turns)
{
    double cpu0 = cpu_seconds();
    double end = th_now() + WINDOW;
    *turns = 0;
    while (th_now() < end) {
        int rc = em_run_once(loop, 10);
        cr_assert_geq(rc, 0, "em_run_once: %s", em_strerror(rc));
        (*turns)++;
    }
    return cpu_seconds() - cpu0;
}

/* ---- tests ----------------------------------------------------------- */

#define WAITING 4

/* valgrind keeps its own descriptors just below RLIMIT_NOFILE; lowering the
 * limit under it breaks valgrind itself, not libem. The valgrind build
 * stretches timeouts (TH_TIMEOUT_SCALE > 1), which is how we know. */
static void skip_under_valgrind(void)
{
    if (TH_TIMEOUT_SCALE > 1)
        cr_skip_test("RLIMIT_NOFILE games do not work under valgrind");
}

Test(emfile, server_backs_off_and_recovers, .timeout = TH_TIMEOUT(20))
{
    skip_under_valgrind();
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);

    /* One connection established before the starvation... */
    int early = th_connect_accepted(loop, port, &s.accepted);
    /* ...and WAITING clients queued in the backlog, not yet accepted. */
    int waiting[WAITING];
    for (int i = 0; i < WAITING; i++)
        waiting[i] = th_client_connect(port);

    struct starvation st;
    starve(&st);

    int turns;
    double cpu = cpu_of_turns(loop, &turns);
    cr_assert_eq(s.accepted, 1, "accepted without a descriptor?");
    cr_assert_lt(cpu, MAX_CPU,
                 "the loop spun: %.3f s of CPU in %.1f s (%d turns)", cpu,
                 WINDOW, turns);
    cr_assert_lt(turns, MAX_TURNS, "the loop spun: %d turns in %.1f s", turns,
                 WINDOW);

    /* Established connections are still served... */
    th_expect_echo(loop, early, "still served");
    /* ...and a connect that cannot get a socket fails in unbind. */
    th_client c = {0};
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", port, &th_client_handler, &c, NULL), 0);
    cr_assert_eq(c.unbinds, 0, "unbind inside em_connect");
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, -EMFILE, "reason %s", em_err_name(c.reason));

    feed(&st);
    double t0 = th_now();
    th_run_until_count(loop, &s.accepted, 1 + WAITING, 5.0);
    cr_assert_lt(th_now() - t0, TH_TIMEOUT(2.0), "slow to resume accepting");
    for (int i = 0; i < WAITING; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "waiting client %d", i);
        th_expect_echo(loop, waiting[i], msg);
    }

    close(early);
    for (int i = 0; i < WAITING; i++)
        close(waiting[i]);
    th_run_until_count(loop, &s.unbinds, 1 + WAITING, 5.0);
    cr_assert_eq(s.bad_reasons, 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* The child connects while the parent is starved, then checks its echo.
 * Exit status: 0 ok, else the step that failed. Plain syscalls only. */
#define CHILD_CLIENTS 3

static void child_main(int port)
{
    alarm(15);
    usleep(150000); /* the parent is starved by now */
    int fds[CHILD_CLIENTS];
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 10};
    for (int i = 0; i < CHILD_CLIENTS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0)
            _exit(10);
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fds[i], (struct sockaddr *)&sin, sizeof sin) < 0)
            _exit(11);
        char msg[8] = {'c', 'h', 'i', 'l', 'd', (char)('0' + i), '\n', 0};
        if (send(fds[i], msg, 7, MSG_NOSIGNAL) != 7)
            _exit(12);
    }
    for (int i = 0; i < CHILD_CLIENTS; i++) {
        char buf[8];
        size_t got = 0;
        while (got < 7) {
            ssize_t n = recv(fds[i], buf + got, 7 - got, 0);
            if (n <= 0)
                _exit(13);
            got += (size_t)n;
        }
        if (memcmp(buf, "child", 5) != 0 || buf[5] != (char)('0' + i))
            _exit(14);
        close(fds[i]);
    }
    _exit(0);
}

Test(emfile, clients_connecting_during_starvation_are_served,
     .timeout = TH_TIMEOUT(30))
{
    skip_under_valgrind();
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);

    pid_t child = fork();
    cr_assert_geq(child, 0, "fork: %s", strerror(errno));
    if (child == 0)
        child_main(port);

    struct starvation st;
    starve(&st);
    /* Twice the window: the child connects during the first one. */
    int turns, more_turns;
    double cpu = cpu_of_turns(loop, &turns);
    cpu += cpu_of_turns(loop, &more_turns);
    turns += more_turns;
    cr_assert_eq(s.accepted, 0);
    cr_assert_lt(cpu, 2 * MAX_CPU, "the loop spun: %.3f s of CPU", cpu);
    cr_assert_lt(turns, 2 * MAX_TURNS, "the loop spun: %d turns", turns);

    feed(&st);
    th_run_until_count(loop, &s.accepted, CHILD_CLIENTS, 5.0);
    th_run_until_count(loop, &s.unbinds, CHILD_CLIENTS, 10.0);

    int status = -1;
    double deadline = th_now() + TH_TIMEOUT(10.0);
    while (waitpid(child, &status, WNOHANG) == 0) {
        if (th_now() > deadline) {
            kill(child, SIGKILL);
            waitpid(child, &status, 0);
            cr_assert_fail("the client child did not finish");
        }
        cr_assert_geq(em_run_once(loop, 10), 0);
    }
    cr_assert(WIFEXITED(status), "child died: status %#x", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "child failed at step %d",
                 WEXITSTATUS(status));
    cr_assert_eq(s.bad_reasons, 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}

/* Stopping a backed-off server cancels its retry: the timer must not fire
 * on the freed server (ASan would see it), and the port is free. */
Test(emfile, stop_server_while_backed_off, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_server(loop, &th_echo_handler, &s);
    int port = th_listen_port(server);
    int waiting = th_client_connect(port);

    struct starvation st;
    starve(&st);
    th_run_for(loop, 0.05); /* accept fails, the listener backs off */
    cr_assert_eq(s.accepted, 0);
    cr_assert_eq(em_stop_server(server), 0);
    feed(&st);
    th_run_for(loop, 0.3); /* past the retry delay */
    cr_assert_eq(s.accepted, 0);

    char c;
    ssize_t n = recv(waiting, &c, 1, 0);
    cr_assert(n == 0 || (n < 0 && errno == ECONNRESET),
              "queued client not dropped with the listener: %zd", n);
    close(waiting);
    /* The port can be listened on again at once. */
    cr_assert_eq(em_start_server(loop, "127.0.0.1", port, &th_echo_handler, &s,
                                 NULL, &server),
                 0);
    cr_assert_eq(em_stop_server(server), 0);
    th_free_loop(loop);
}
