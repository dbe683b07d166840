/*
 * test_unix.c - Unix-domain servers and clients: an echo round trip, stale
 * socket files replaced, live servers and regular files never touched
 * (-EADDRINUSE), the socket file removed by em_stop_server and by shutdown,
 * connects to missing (-ENOENT) and dead (-ECONNREFUSED) sockets, Linux
 * abstract names ("@name"), and argument checks.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

/* ---- helpers --------------------------------------------------------- */

static int path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int is_socket_file(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Binds (and maybe listens on) a raw socket at path; returns the fd. */
static int raw_unix_socket(const char *path, int do_listen)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(path), sizeof sun.sun_path);
    strcpy(sun.sun_path, path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0,
                 "bind %s: %s", path, strerror(errno));
    if (do_listen)
        cr_assert_eq(listen(fd, 4), 0);
    return fd;
}

/* A socket file whose server is gone: bound, closed, never unlinked. */
static void make_stale_socket(const char *path)
{
    close(raw_unix_socket(path, 1));
    cr_assert(is_socket_file(path));
}

/* em_connect_unix to path, sends a greeting, expects the echo, closes. */
static void round_trip(em_loop *loop, th_echo *s, const char *path)
{
    th_client c = {.hello = "unix round trip"};
    int accepted = s->accepted, unbinds = s->unbinds;
    cr_assert_eq(em_connect_unix(loop, path, &th_client_handler, &c, NULL), 0);
    cr_assert_eq(c.post_inits, 1);
    cr_assert_eq(c.connecting_in_post_init, 1);
    cr_assert_eq(c.unbinds, 0, "unbind inside em_connect_unix");
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, 0, "reason %s", em_err_name(c.reason));
    cr_assert_eq(c.completed, 1);
    cr_assert_eq(c.got_len, strlen(c.hello));
    cr_assert_eq(memcmp(c.got, c.hello, c.got_len), 0);
    th_run_until_count(loop, &s->unbinds, unbinds + 1, 5.0);
    cr_assert_eq(s->accepted, accepted + 1);
    cr_assert_eq(s->last_reason, 0);
}

/* ---- round trip and file life cycle ---------------------------------- */

Test(unix, echo_round_trip_and_stop_removes_the_file, .timeout = TH_TIMEOUT(10))
{
    char path[108];
    th_unix_path(path, sizeof path, "echo");
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_unix_server(loop, path, &th_echo_handler, &s);
    cr_assert(is_socket_file(path), "no socket file at %s", path);
    cr_assert_eq(em_server_port(server), 0, "Unix servers have no port");
    struct sockaddr_un sun;
    socklen_t len = sizeof sun;
    cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&sun, &len), 0);
    cr_assert_eq(sun.sun_family, AF_UNIX);
    cr_assert_str_eq(sun.sun_path, path);

    round_trip(loop, &s, path);

    /* A plain blocking client works as well. */
    int fd = th_client_connect_unix(path);
    th_expect_echo(loop, fd, "raw");
    th_close_clients(loop, &s, &fd, 1);

    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_not(path_exists(path), "em_stop_server left %s", path);
    th_free_loop(loop);
}

Test(unix, stale_socket_file_is_replaced, .timeout = TH_TIMEOUT(10))
{
    char path[108];
    th_unix_path(path, sizeof path, "stale");
    make_stale_socket(path);
    em_loop *loop = th_loop();
    th_echo s = {0};
    /* The stale file is replaced. */
    em_server *server = th_start_unix_server(loop, path, &th_echo_handler, &s);
    round_trip(loop, &s, path);
    cr_assert_eq(em_stop_server(server), 0);
    cr_assert_not(path_exists(path));
    th_free_loop(loop);
}

Test(unix, live_server_on_the_path_is_eaddrinuse, .timeout = TH_TIMEOUT(10))
{
    char path[108];
    th_unix_path(path, sizeof path, "live");
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_unix_server(loop, path, &th_echo_handler, &s);
    int before = th_count_fds();
    em_server *second = (em_server *)&s;
    cr_assert_eq(
        em_start_unix_server(loop, path, &th_echo_handler, &s, NULL, &second),
        -EADDRINUSE);
    cr_assert_null(second);
    cr_assert_eq(th_count_fds(), before, "the failed start leaked an fd");
    /* The live server keeps its file and still answers. The liveness
     * probe was a connect, so it may have accepted (and lost) that one. */
    cr_assert(is_socket_file(path));
    th_run_for(loop, 0.05);
    cr_assert_leq(s.accepted, 1);
    cr_assert_eq(s.unbinds, s.accepted);
    round_trip(loop, &s, path);
    cr_assert_eq(em_stop_server(server), 0);

    /* A live server from another program (a raw listener) as well. */
    int raw = raw_unix_socket(path, 1);
    cr_assert_eq(
        em_start_unix_server(loop, path, &th_echo_handler, &s, NULL, NULL),
        -EADDRINUSE);
    cr_assert(is_socket_file(path));
    int fd = th_client_connect_unix(path);
    close(fd);
    close(raw);
    unlink(path);
    th_free_loop(loop);
}

Test(unix, regular_file_at_the_path_is_not_deleted, .timeout = TH_TIMEOUT(10))
{
    char path[108];
    th_unix_path(path, sizeof path, "file");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("precious", f);
    fclose(f);

    em_loop *loop = th_loop();
    th_echo s = {0};
    cr_assert_eq(
        em_start_unix_server(loop, path, &th_echo_handler, &s, NULL, NULL),
        -EADDRINUSE);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "the regular file was deleted");
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_size, 8, "the regular file was changed");
    unlink(path);
    th_free_loop(loop);
}

Test(unix, shutdown_removes_the_socket_file, .timeout = TH_TIMEOUT(10))
{
    char path[108];
    th_unix_path(path, sizeof path, "shutdown");
    em_loop *loop = th_loop();
    th_echo s = {0};
    th_start_unix_server(loop, path, &th_echo_handler, &s);
    int fd = th_client_connect_unix(path);
    th_run_until(loop, &s.accepted, 5.0);
    cr_assert_eq(em_stop(loop), 0);
    cr_assert_eq(em_run_once(loop, 0), 1);
    cr_assert_eq(s.unbinds, 1, "shutdown did not unbind the connection");
    cr_assert_not(path_exists(path), "shutdown left %s", path);
    char c;
    cr_assert_eq(recv(fd, &c, 1, 0), 0, "client saw no EOF");
    close(fd);
    th_free_loop(loop);
}

/* ---- failing connects ------------------------------------------------ */

static void expect_connect_failure(em_loop *loop, const char *path, int err)
{
    th_client c = {0};
    cr_assert_eq(em_connect_unix(loop, path, &th_client_handler, &c, NULL), 0);
    cr_assert_eq(c.post_inits, 1);
    cr_assert_eq(c.unbinds, 0, "unbind inside em_connect_unix");
    th_run_until(loop, &c.unbinds, 5.0);
    cr_assert_eq(c.reason, err, "%s: got %s, want %s", path,
                 em_err_name(c.reason), em_err_name(err));
    cr_assert_eq(c.completed, 0);
    th_run_for(loop, 0.02);
    cr_assert_eq(c.unbinds, 1);
}

Test(unix, connect_to_missing_or_dead_socket_fails_in_unbind,
     .timeout = TH_TIMEOUT(10))
{
    char path[108];
    em_loop *loop = th_loop();
    th_unix_path(path, sizeof path, "missing");
    expect_connect_failure(loop, path, -ENOENT);

    th_unix_path(path, sizeof path, "dead");
    make_stale_socket(path);
    expect_connect_failure(loop, path, -ECONNREFUSED);
    unlink(path);

    /* Longer than sun_path holds. */
    char long_path[200];
    memset(long_path, 'x', sizeof long_path - 1);
    long_path[0] = '/';
    long_path[sizeof long_path - 1] = '\0';
    expect_connect_failure(loop, long_path, -ENAMETOOLONG);
    cr_assert_eq(em_connection_count(loop), 0);
    th_free_loop(loop);
}

/* ---- abstract names -------------------------------------------------- */

Test(unix, abstract_socket_name, .timeout = TH_TIMEOUT(10))
{
    char name[64];
    snprintf(name, sizeof name, "@em-test-%ld-abstract", (long)getpid());
    em_loop *loop = th_loop();
    th_echo s = {0};
    em_server *server = th_start_unix_server(loop, name, &th_echo_handler, &s);
    cr_assert_not(path_exists(name), "an abstract name created a file");
    struct sockaddr_un sun;
    socklen_t len = sizeof sun;
    cr_assert_eq(em_server_sockname(server, (struct sockaddr *)&sun, &len), 0);
    cr_assert_eq(sun.sun_path[0], '\0', "not in the abstract namespace");
    cr_assert_eq(len, offsetof(struct sockaddr_un, sun_path) + strlen(name));
    cr_assert_eq(memcmp(sun.sun_path + 1, name + 1, strlen(name) - 1), 0);

    /* Abstract names are never stale: a second server is refused. */
    cr_assert_eq(
        em_start_unix_server(loop, name, &th_echo_handler, &s, NULL, NULL),
        -EADDRINUSE);
    round_trip(loop, &s, name);
    cr_assert_eq(em_stop_server(server), 0);
    /* The name is free again at once. */
    server = th_start_unix_server(loop, name, &th_echo_handler, &s);
    cr_assert_eq(em_stop_server(server), 0);
    expect_connect_failure(loop, name, -ECONNREFUSED);
    th_free_loop(loop);
}

/* ---- arguments ------------------------------------------------------- */

Test(unix, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    th_echo s = {0};
    char path[108];
    th_unix_path(path, sizeof path, "args");
    cr_assert_eq(
        em_start_unix_server(loop, NULL, &th_echo_handler, &s, NULL, NULL),
        -EINVAL);
    cr_assert_eq(
        em_start_unix_server(loop, "", &th_echo_handler, &s, NULL, NULL),
        -EINVAL);
    cr_assert_eq(em_start_unix_server(loop, path, NULL, &s, NULL, NULL),
                 -EINVAL);
    cr_assert_eq(
        em_start_unix_server(NULL, path, &th_echo_handler, &s, NULL, NULL),
        -EINVAL);
    em_server_opts bad = {.backlog = -1};
    cr_assert_eq(
        em_start_unix_server(loop, path, &th_echo_handler, &s, &bad, NULL),
        -EINVAL);
    char long_path[200];
    memset(long_path, 'y', sizeof long_path - 1);
    long_path[0] = '/';
    long_path[sizeof long_path - 1] = '\0';
    cr_assert_eq(
        em_start_unix_server(loop, long_path, &th_echo_handler, &s, NULL, NULL),
        -ENAMETOOLONG);
    cr_assert_eq(em_start_unix_server(loop, "/nonexistent-em-dir/x.sock",
                                      &th_echo_handler, &s, NULL, NULL),
                 -ENOENT);
    cr_assert_not(path_exists(path), "a rejected call created the file");

    th_client c = {0};
    cr_assert_eq(em_connect_unix(loop, NULL, &th_client_handler, &c, NULL),
                 -EINVAL);
    cr_assert_eq(em_connect_unix(loop, path, NULL, &c, NULL), -EINVAL);
    cr_assert_eq(em_connect_unix(NULL, path, &th_client_handler, &c, NULL),
                 -EINVAL);
    cr_assert_eq(c.post_inits, 0);
    th_free_loop(loop);
}
