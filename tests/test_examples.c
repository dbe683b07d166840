/*
 * test_examples.c - the example programs run as a user would run them.
 *
 * Covers: file_server streams a 3 MiB file to each client whole and then
 * closes; tcp_proxy relays that file unchanged from file_server; echo_server
 * answers "Client sent: ..."; each stops cleanly (exit 0) on SIGTERM. The
 * programs are started on port 0 and the test reads the port they print.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

extern char **environ;

typedef struct program {
    pid_t pid;
    FILE *out;
    int port;
} program;

static const char *examples_dir(void)
{
    static char dir[512];
    char self[400];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert_gt(n, 0);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    *slash = '\0';
    snprintf(dir, sizeof(dir), "%s/../examples", self);
    return dir;
}

/* Starts an example; reads its first line for "127.0.0.1:PORT". */
static void start(program *p, const char *name, char *const args[])
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", examples_dir(), name);
    if (access(path, X_OK) != 0)
        cr_skip_test("%s is not built", path);
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    char *argv[8] = {path};
    for (int i = 0; args[i] && i < 6; i++)
        argv[i + 1] = args[i];
    cr_assert_eq(posix_spawn(&p->pid, path, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    p->out = fdopen(fds[0], "r");
    char line[256];
    cr_assert_not_null(fgets(line, sizeof(line), p->out), "%s said nothing",
                       name);
    char *colon = strstr(line, "127.0.0.1:");
    cr_assert_not_null(colon, "%s said: %s", name, line);
    p->port = atoi(colon + strlen("127.0.0.1:"));
    cr_assert_gt(p->port, 0);
}

static void stop(program *p)
{
    kill(p->pid, SIGTERM);
    int status;
    cr_assert_eq(waitpid(p->pid, &status, 0), p->pid);
    fclose(p->out);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %#x",
              status);
}

static size_t fetch(int port, char *buf, size_t size)
{
    int fd = th_client_connect(port);
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + got, size - got, 0);
        cr_assert_geq(n, 0, "recv: %s", strerror(errno));
        if (n == 0)
            break;
        got += (size_t)n;
        cr_assert_lt(got, size, "more than the file");
    }
    close(fd);
    return got;
}

Test(examples, file_server_and_tcp_proxy, .timeout = TH_TIMEOUT(30))
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/em-test-example-%d", (int)getpid());
    size_t size = 3 * 1024 * 1024;
    uint8_t *data = malloc(size);
    th_pat_fill(data, 0, size);
    FILE *f = fopen(path, "wb");
    cr_assert_eq(fwrite(data, 1, size, f), size);
    fclose(f);

    program fs, proxy;
    start(&fs, "file_server", (char *[]){"0", path, NULL});
    char port[16];
    snprintf(port, sizeof(port), "%d", fs.port);
    start(&proxy, "tcp_proxy", (char *[]){"0", "127.0.0.1", port, NULL});

    char *buf = malloc(size + 1);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(fetch(fs.port, buf, size + 1), size);
        cr_assert(memcmp(buf, data, size) == 0, "file_server: bytes differ");
        cr_assert_eq(fetch(proxy.port, buf, size + 1), size);
        cr_assert(memcmp(buf, data, size) == 0, "tcp_proxy: bytes differ");
    }
    stop(&proxy);
    stop(&fs);
    unlink(path);
    free(buf);
    free(data);
}

Test(examples, echo_server_answers, .timeout = TH_TIMEOUT(10))
{
    program echo;
    start(&echo, "echo_server", (char *[]){"0", NULL});
    int fd = th_client_connect(echo.port);
    th_send_all(fd, "hi\n", 3);
    char want[] = "Client sent: hi\n";
    char got[sizeof(want)];
    size_t n = 0;
    while (n < sizeof(want) - 1) {
        ssize_t k = recv(fd, got + n, sizeof(want) - 1 - n, 0);
        cr_assert_gt(k, 0);
        n += (size_t)k;
    }
    cr_assert(memcmp(got, want, sizeof(want) - 1) == 0);
    close(fd);
    stop(&echo);
}
