/*
 * fdx.h - what a descriptor or process connection keeps beside em_conn.
 *
 * An ordinary connection is one pollable socket; conn->fdx is NULL and
 * costs it nothing but the pointer. The connections made by attach.c,
 * stdio.c and process.c need more: a second descriptor to write (stdout),
 * sides that epoll refuses (a regular file, /dev/null) and that are served
 * by a pass once per turn instead, or a child process with its pidfd,
 * status and kill timers. One allocation per such connection holds it all.
 */
#ifndef EM_FDX_H
#define EM_FDX_H

#include <sys/types.h>

#include "internal.h"

enum em__fdx_kind {
    EM__FDX_FILE = 1,   /* em_attach of a descriptor epoll cannot poll */
    EM__FDX_STDIO,      /* em_open_stdio: reads one fd, writes another */
    EM__FDX_POPEN,      /* em_popen: a socketpair to a child */
    EM__FDX_PROC_WATCH, /* em_watch_process: only a pidfd */
};

struct em__fdx {
    int kind;
    em_conn *conn;

    /* Sides epoll refused: a 0-second timer runs a read/flush pass once
     * per turn while the connection wants one (attach.c). */
    unsigned char in_unpollable;
    unsigned char out_unpollable;
    em_timer_id pass_timer;

    /* stdio (stdio.c): the write side is its own watcher. A descriptor is
     * either a private reopened copy (owned: closed at unbind) or the
     * process's own 0 or 1 (borrowed: flags put back at unbind). */
    em__watcher out;
    unsigned char in_owned, out_owned;
    unsigned char in_sock, out_sock; /* MSG_DONTWAIT, no O_NONBLOCK */
    unsigned char out_pipe;          /* write() may raise SIGPIPE */
    int in_restore, out_restore;     /* F_SETFL values to put back, or -1 */

    /* processes (process.c) */
    pid_t pid;
    em__watcher exit;  /* pidfd of an em_popen child, -1 once reaped */
    int status;        /* raw wait status, valid when status_err == 0 */
    int status_err;    /* 0, -EAGAIN (running) or -ECHILD (unknown) */
    int parked;        /* on loop->proc_exiting */
    double term_after; /* seconds from close to SIGTERM, < 0 never */
    double kill_after; /* seconds from SIGTERM to SIGKILL, < 0 never */
    em_timer_id signal_timer;
    int term_sent;
    /* Without pidfd_open (Linux < 5.3, valgrind < 3.20): the exit is
     * polled by a timer whose delay doubles up to a bound. */
    em_timer_id poll_timer;
    double poll_delay;
};

/* attach.c */
em__fdx *em__fdx_new(em_conn *conn, int kind);
/* Sets O_NONBLOCK on fd. *restore gets the flags to put back, or -1 when
 * it was set already. Returns 0 or a negative errno. */
int em__set_nonblock(int fd, int *restore);

/* process.c: frees what a process connection holds (pidfd, timers). */
void em__proc_release(em__fdx *x);

/* transport_fd.c: the building blocks of the fd transports. */
ssize_t em__fd_read(int fd, void *buf, size_t len);
/* One writev (EINTR retried). With may_sigpipe (pipes, FIFOs) SIGPIPE is
 * blocked around the call and the one it raised is consumed, so a reader
 * that went away gives -EPIPE and never kills the process. */
ssize_t em__fd_writev(int fd, const struct iovec *iov, int count,
                      int may_sigpipe);

/* spawn.c: forks a child whose stdin and stdout are stdio_fd and whose
 * stderr is stderr_fd (-1: inherited), in cwd (NULL: ours), and execs
 * argv[0] (searched in PATH without a '/') with envp (NULL: environ).
 * Every descriptor given must be >= 3. Returns 0 with *pid set and
 * *exec_errno the exec's errno (0: it ran; otherwise the child has exited
 * with status 127 and must still be reaped), or a negative errno (no
 * child). Blocks only until the child has exec'd. */
typedef struct em__spawn_req {
    const char *const *argv;
    const char *const *envp;
    const char *cwd;
    int stdio_fd;
    int stderr_fd;
} em__spawn_req;
int em__spawn(const em__spawn_req *req, pid_t *pid, int *exec_errno);
/* fd moved to a number >= 3 (close-on-exec), or a negative errno. */
int em__fd_above_stdio(int fd);

#endif
