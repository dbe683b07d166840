/*
 * file.c - sending files: em_send_file_data, em_stream_file_data.
 *
 * A file is an item of the outbound queue (a FILE range: descriptor,
 * offset, end), not a copy: on a plain socket the flush sends it with
 * sendfile(2), so its bytes never enter user space, and it goes out in
 * order with em_send_data's bytes before and after it. EventMachine read
 * the file into memory (and refused files over 32 KiB); a streamer that
 * reads chunks on the drained event was the other option, but it costs a
 * copy and a callback per chunk for what the kernel does alone.
 *
 * Transports that must see plaintext (TLS) get the file through a 64 KiB
 * bounce buffer per loop: pread at the range's offset, then write. After
 * a short write the next flush preads the same offset again, which gives
 * OpenSSL the same bytes it requires on a retry.
 *
 * The file is opened and measured when queued; if it is shorter when its
 * turn comes, sending would hang the peer waiting for the announced bytes,
 * so the connection ends with -EIO instead.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define FILE_BUF_SIZE (64 * 1024)
#define SENDFILE_MAX (1u << 30) /* bytes per sendfile call */

void em__range_finish(em_conn *conn, em__fd_range *range, int err)
{
    if (range->error)
        err = range->error;
    if (range->done)
        range->done(conn, err, range->done_arg);
    if (range->pipe)
        em__pipe_release(range->pipe);
    else if (range->fd >= 0)
        close(range->fd);
    free(range);
}

/* em__range_finish without the done callback, in a forked child. */
void em__range_forget(em__fd_range *range)
{
    if (range->pipe)
        em__pipe_release(range->pipe);
    else if (range->fd >= 0)
        close(range->fd);
    free(range);
}

void em__file_loop_free(em_loop *loop)
{
    free(loop->file_buf);
    loop->file_buf = NULL;
}

static ssize_t send_file_range(em_conn *conn, em__fd_range *r, uint64_t left)
{
    if (conn->transport == &em__socket_transport) {
        off_t offset = (off_t)r->pos;
        size_t count = left < SENDFILE_MAX ? (size_t)left : SENDFILE_MAX;
        for (;;) {
            ssize_t n = sendfile(conn->watcher.fd, r->fd, &offset, count);
            if (n > 0)
                return n;
            if (n == 0)
                return -EIO; /* the file is shorter than queued */
            if (errno != EINTR)
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
    }
    em_loop *loop = conn->loop;
    if (!loop->file_buf && !(loop->file_buf = malloc(FILE_BUF_SIZE)))
        return -ENOMEM;
    size_t want = left < FILE_BUF_SIZE ? (size_t)left : FILE_BUF_SIZE;
    ssize_t got;
    do
        got = pread(r->fd, loop->file_buf, want, (off_t)r->pos);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        return -errno;
    if (got == 0)
        return -EIO;
    struct iovec iov = {.iov_base = loop->file_buf, .iov_len = (size_t)got};
    return conn->transport->writev(conn, &iov, 1);
}

static ssize_t send_pipe_range(em_conn *conn, em__fd_range *r, uint64_t left)
{
    for (;;) {
        ssize_t n = splice(r->fd, NULL, conn->watcher.fd, NULL, (size_t)left,
                           SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n > 0) {
            em__pipe_drained(r->pipe, (size_t)n);
            return n;
        }
        if (n == 0)
            return -EIO; /* the pipe holds fewer bytes than counted */
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

ssize_t em__flush_range(em_conn *conn, em__chunk *head)
{
    em__fd_range *r = head->range;
    uint64_t left = r->end - r->pos;
    if (left == 0)
        return 0; /* an empty file: only its done callback is left */
    ssize_t n = head->kind == EM__CHUNK_PIPE ? send_pipe_range(conn, r, left)
                                             : send_file_range(conn, r, left);
    if (n < 0 && n != -EAGAIN)
        r->error = (int)n; /* its done callback reports why */
    return n;
}

/* ---- queueing --------------------------------------------------------- */

static int open_regular(const char *path, int *fd_out, uint64_t *size_out)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct stat st;
    int err = fstat(fd, &st) < 0 ? -errno : 0;
    if (err == 0 && S_ISDIR(st.st_mode))
        err = -EISDIR;
    else if (err == 0 && !S_ISREG(st.st_mode))
        err = -EINVAL; /* a FIFO or device has no size to announce */
    if (err < 0) {
        close(fd);
        return err;
    }
    *fd_out = fd;
    *size_out = (uint64_t)st.st_size;
    return 0;
}

static int queue_file(em_conn *conn, const char *path, int http_chunks,
                      em_file_done_cb done, void *arg)
{
    if (!conn || !path)
        return -EINVAL;
    if (conn->flags & EM__CONN_DATAGRAM)
        return -EOPNOTSUPP;
    if (conn->flags & EM__SEND_REFUSED)
        return em__conn_send_refusal(conn);
    int fd = -1;
    uint64_t size = 0;
    int err = open_regular(path, &fd, &size);
    if (err < 0)
        return err;
    em__fd_range *range = calloc(1, sizeof(*range));
    if (!range) {
        close(fd);
        return -ENOMEM;
    }
    range->fd = fd;
    range->end = size;

    char header[32];
    int header_len = snprintf(header, sizeof(header), "%" PRIx64 "\r\n", size);
    if (http_chunks && size > 0)
        err = em__outq_append(&conn->out, header, (size_t)header_len);
    if (err == 0)
        err = em__outq_append_range(&conn->out, EM__CHUNK_FILE, range);
    if (err == 0) {
        range->done = done; /* from here on done runs exactly once */
        range->done_arg = arg;
    } else {
        em__range_finish(NULL, range, 0);
    }
    if (err == 0 && http_chunks) {
        const char *trailer = size > 0 ? "\r\n0\r\n\r\n" : "0\r\n\r\n";
        err = em__outq_append(&conn->out, trailer, strlen(trailer));
    }
    if (err < 0) { /* a partial frame cannot be taken back: give up */
        em__conn_close_now(conn, err);
        return err;
    }
    em__conn_queued(conn);
    return 0;
}

int em_send_file_data(em_conn *conn, const char *path)
{
    return queue_file(conn, path, 0, NULL, NULL);
}

int em_stream_file_data(em_conn *conn, const char *path,
                        const em_stream_file_opts *opts, em_file_done_cb done,
                        void *arg)
{
    return queue_file(conn, path, opts && opts->http_chunks, done, arg);
}
