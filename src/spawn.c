/*
 * spawn.c - starting a child process: fork, set up its descriptors, exec,
 * and learn whether the exec worked.
 *
 * The child reports a failed exec (or dup2/chdir) by writing its errno
 * into a close-on-exec pipe and exiting with status 127; a successful exec
 * closes the pipe, so the parent's read returns 0. The parent therefore
 * knows synchronously whether the program runs, and the child, dead or
 * alive, is reaped later through its pidfd like any other (process.c):
 * never a zombie, never a crash. The read blocks the loop only until the
 * child has exec'd (the time a fork and an execve take).
 *
 * fork, not vfork or posix_spawn: posix_spawn reports exec errors itself
 * but cannot chdir portably or take an error pipe of ours, and under
 * valgrind (which turns CLONE_VFORK into a plain fork) glibc's way of
 * passing the errno back through shared memory is lost, so a missing
 * program would look like exit 127. vfork shares the parent's memory and
 * stack with a child that runs signal resets and dup2 calls. fork costs a
 * copy of the page tables, which matters only for very large processes.
 *
 * Between fork and exec the child (of a possibly multi-threaded parent)
 * calls only async-signal-safe functions and allocates nothing: the PATH
 * candidates are built in the parent. All signals are blocked across the
 * fork so that no handler of the parent runs in the child; the child sets
 * every disposition back to the default (handlers would run parent code;
 * SIG_IGN would survive exec) and starts with an empty signal mask (a loop
 * thread that blocked SIGTERM for a signalfd must not hand that on, or the
 * grace-period SIGTERM would never arrive).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fdx.h"

int em__fd_above_stdio(int fd)
{
    if (fd > STDERR_FILENO)
        return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    int err = high < 0 ? -errno : 0;
    close(fd);
    return err < 0 ? err : high;
}

/* The paths execve tries, in order: file itself when it has a '/', else
 * file in every PATH directory (an empty entry is the current one), as
 * execvp does. One malloc'd block: a NULL-terminated array, then strings. */
static char **exec_candidates(const char *file)
{
    const char *path = strchr(file, '/') ? "" : getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin"; /* glibc's default */
    size_t dirs = 1;
    for (const char *p = path; *p; p++)
        dirs += *p == ':';
    size_t file_len = strlen(file);
    size_t size =
        (dirs + 1) * sizeof(char *) + strlen(path) + dirs * (file_len + 3);
    char **list = malloc(size);
    if (!list)
        return NULL;
    if (strchr(file, '/')) {
        list[0] = (char *)file;
        list[1] = NULL;
        return list;
    }
    char *out = (char *)(list + dirs + 1);
    const char *dir = path;
    for (size_t i = 0; i < dirs; i++) {
        const char *end = strchr(dir, ':');
        size_t len = end ? (size_t)(end - dir) : strlen(dir);
        list[i] = out;
        if (len == 0)
            *out++ = '.';
        memcpy(out, dir, len);
        out += len;
        *out++ = '/';
        memcpy(out, file, file_len + 1);
        out += file_len + 1;
        dir = end ? end + 1 : dir + len;
    }
    list[dirs] = NULL;
    return list;
}

static _Noreturn void child_fail(int report_fd, int err)
{
    ssize_t n = write(report_fd, &err, sizeof(err));
    (void)n;
    _exit(127);
}

static _Noreturn void child(const em__spawn_req *req, char **paths,
                            char *const *envp, int report_fd)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL); /* glibc's own signals: EINVAL */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (dup2(req->stdio_fd, STDIN_FILENO) < 0 ||
        dup2(req->stdio_fd, STDOUT_FILENO) < 0 ||
        (req->stderr_fd >= 0 && dup2(req->stderr_fd, STDERR_FILENO) < 0))
        child_fail(report_fd, errno);
    if (req->cwd && chdir(req->cwd) < 0)
        child_fail(report_fd, errno);

    char *const *argv = (char *const *)req->argv;
    int err = ENOENT, denied = 0;
    for (char **p = paths; *p; p++) {
        execve(*p, argv, envp);
        err = errno;
        if (err == EACCES)
            denied = 1;
        else if (err != ENOENT && err != ENOTDIR)
            break; /* ENOEXEC, E2BIG, ELOOP...: the file was found */
    }
    if (denied && (err == ENOENT || err == ENOTDIR))
        err = EACCES; /* as execvp: a match we may not run beats none */
    child_fail(report_fd, err);
}

int em__spawn(const em__spawn_req *req, pid_t *pid, int *exec_errno)
{
    char **paths = exec_candidates(req->argv[0]);
    if (!paths)
        return -ENOMEM;
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) {
        free(paths);
        return -errno;
    }
    /* The child dup2s onto 0-2 before it may have to report. */
    report[1] = em__fd_above_stdio(report[1]);
    if (report[1] < 0) {
        close(report[0]);
        free(paths);
        return report[1];
    }
    char *const *envp =
        req->envp ? (char *const *)req->envp : (char *const *)environ;

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t child_pid = fork();
    if (child_pid == 0)
        child(req, paths, envp, report[1]);
    int fork_err = child_pid < 0 ? -errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    free(paths);
    if (fork_err < 0) {
        close(report[0]);
        return fork_err;
    }

    int err = 0;
    ssize_t n;
    while ((n = read(report[0], &err, sizeof(err))) < 0 && errno == EINTR)
        ;
    close(report[0]);
    *pid = child_pid;
    *exec_errno = n == (ssize_t)sizeof(err) ? err : 0;
    return 0;
}
