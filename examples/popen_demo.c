/*
 * popen_demo.c - runs a command with em_popen, streams its output line by
 * line, and prints how it ended.
 *
 *   build/examples/popen_demo [COMMAND [ARG...]]
 *
 * Without a command it runs a small shell script that reads the lines we
 * send to its stdin, answers each, and exits with status 3. With one, the
 * command's stdin is at EOF at once (em_close_write). Every output line is
 * printed as "[pid] line"; output arrives in arbitrary chunks, so a line
 * may be split across receive_data calls and is put back together in the
 * connection's state. Ctrl-C stops the loop, which kills the child.
 * The program's exit code is the child's (128 + signal when killed).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "em.h"

static em_loop *the_loop;
static int exit_code = 1;

static void on_signal(int sig)
{
    (void)sig;
    em_stop(the_loop); /* async-signal-safe */
}

/* Per-connection state: the unfinished line. */
typedef struct lines {
    char buf[4096];
    size_t len;
} lines;

static void print_line(em_conn *conn, const char *line, size_t len)
{
    printf("[%d] %.*s\n", em_get_pid(conn), (int)len, line);
}

static void started(em_conn *conn, void *arg)
{
    const char *const *script_input = arg;
    printf("started pid %d\n", em_get_pid(conn));
    for (; script_input && *script_input; script_input++)
        em_send_data(conn, *script_input, strlen(*script_input));
    em_close_write(conn); /* the child reads EOF after our lines */
}

static void output(em_conn *conn, const char *data, size_t len)
{
    lines *l = em_conn_state(conn);
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n' || l->len == sizeof(l->buf)) {
            print_line(conn, l->buf, l->len);
            l->len = 0;
            if (data[i] == '\n')
                continue;
        }
        l->buf[l->len++] = data[i];
    }
}

static void ended(em_conn *conn, int reason)
{
    lines *l = em_conn_state(conn);
    if (l->len > 0) /* a last line without '\n' */
        print_line(conn, l->buf, l->len);
    int status;
    int err = em_get_status(conn, &status);
    if (reason < 0)
        printf("could not run it: %s\n", em_strerror(reason));
    if (err < 0) {
        printf("exit status unknown: %s\n", em_strerror(err));
    } else if (WIFEXITED(status)) {
        exit_code = WEXITSTATUS(status);
        printf("exited with status %d\n", exit_code);
    } else if (WIFSIGNALED(status)) {
        exit_code = 128 + WTERMSIG(status);
        printf("killed by signal %d (%s)\n", WTERMSIG(status),
               strsignal(WTERMSIG(status)));
    }
    em_stop(em_conn_loop(conn));
}

static const em_handler child_handler = {
    .state_size = sizeof(lines),
    .post_init = started,
    .receive_data = output,
    .unbind = ended,
};

int main(int argc, char **argv)
{
    static const char *const script[] = {
        "sh", "-c",
        "while read -r line; do echo \"you said: $line\"; sleep 0.2; done; "
        "echo 'no more input'; exit 3",
        NULL};
    static const char *const script_input[] = {"hello\n", "how are you\n",
                                               "bye\n", NULL};
    const char *const *child_argv =
        argc > 1 ? (const char *const *)argv + 1 : script;

    int err = em_loop_new(&the_loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    setvbuf(stdout, NULL, _IOLBF, 0);
    err = em_popen(the_loop, child_argv, NULL, &child_handler,
                   argc > 1 ? NULL : (void *)script_input, NULL);
    if (err < 0) {
        fprintf(stderr, "em_popen: %s\n", em_strerror(err));
        em_loop_free(the_loop);
        return 1;
    }
    em_run(the_loop); /* until the child's unbind, or Ctrl-C */
    em_loop_free(the_loop);
    return exit_code;
}
