/*
 * internal.h - the structures shared by libem's source files.
 *
 * Public names are em_, internal non-static names em__, everything else is
 * static. One file per concern:
 *   loop.c       turns, ticks, cross-thread scheduling, stop
 *   poller_epoll.c  the poll backend behind em__poller_* (io_uring later)
 *   timers.c     one-shot and periodic timers (4-ary heap, generation ids)
 *   timeouts.c   per-connection inactivity/connect timeouts (FIFO queues)
 *   connection.c connection life cycle, read path, close and unbind
 *   outbound.c   the outbound queue (chunks today, file ranges later)
 *   transport_socket.c  plain-socket transport
 *   transport_fd.c  pipes, ttys, files; borrowed (watched) descriptors
 *   attach.c     em_attach, em_watch, em_detach, notify, unpollable fds
 *   stdio.c      stdin and stdout as one connection
 *   process.c    em_popen, em_system, em_watch_process, reaping (pidfd)
 *   spawn.c      fork/exec of a child with an exec-error pipe
 *   tls.c        TLS transport: handshake, record I/O, getters, em_start_tls
 *   tls_context.c  SSL_CTX cache per loop, options, certificates, sessions
 *   server.c     TCP and Unix listeners, accept
 *   connect.c    outbound connections, reconnect
 *   resolve.c    off-thread getaddrinfo (jobs on the pool)
 *   pool.c       the loop's thread pool: em_defer, resolver jobs
 *   signals.c    em_add_signal: signals through a signalfd
 *   fswatch.c    em_watch_file: inotify
 *   embed.c      em_backend_fd's timerfd, em_next_timeout_ms
 *   wait_hook.c  em_set_wait_hook: the wait run by a binding's function
 *   address.c    host/port parsing into sockaddrs
 *   sockopt.c    peer/sock names, socket options, keepalive
 *   datagram.c   UDP sockets as connections (recvmmsg batches, replies)
 *   conn_id.c    connection ids (generation-checked slots), em_send_data_id
 *   lines.c      line/text framing (LineText2), standalone em_lines
 *   frames.c     length-prefixed framing, standalone em_frames
 *   framer.c     a parser attached to a connection; input held by pauses
 *   adapter.c    Backport's adapter model over handlers, servers and timers
 *   error.c      em_strerror, em_err_name
 *   fork.c       em_loop_free in a forked child: the inherited loop
 */
#ifndef EM_INTERNAL_H
#define EM_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "em.h"
#include "list.h"

struct addrinfo;

#define EM__READ_CHUNK (64 * 1024) /* one loop-owned read buffer */
#define EM__READS_PER_WAKEUP 4     /* fairness bound per readable event */
#define EM__ACCEPTS_PER_WAKEUP 64  /* default em_set_accepts_per_wakeup */
#define EM__MAX_EVENTS 256         /* epoll_wait batch */
#define EM__IOV_MAX 64             /* iovecs per writev */
#define EM__DEFAULT_CONNECT_TIMEOUT_MS 20000
#define EM__ACCEPT_RETRY_MS 100 /* listener pause after EMFILE */

/* ---- watchers and the poll backend ---------------------------------- */

/* The values are epoll's (EPOLLIN, EPOLLOUT, EPOLLERR|EPOLLHUP), checked in
 * poller_epoll.c, so the hot path translates nothing; another backend maps
 * its own bits onto these. */
enum { EM__IN = 0x001u, EM__OUT = 0x004u };

typedef struct em__watcher em__watcher;
/* revents: EM__IN / EM__OUT, plus EM__ERR when the backend saw HUP/ERR. */
enum { EM__ERR = 0x018u };
typedef void (*em__watcher_fn)(em_loop *loop, em__watcher *w, unsigned revents);

/* Anything with a descriptor the loop watches: sockets, listeners, the
 * wakeup eventfd; later pipes, datagrams, inotify, signalfd. */
struct em__watcher {
    int fd;
    unsigned registered; /* interest the backend has now (EM__IN|EM__OUT) */
    int in_backend;      /* added to the backend at all */
    em__watcher_fn on_event;
};

int em__poller_open(em_loop *loop);
void em__poller_close(em_loop *loop);
/* Makes the backend's interest for w equal to `interest` (0 removes it).
 * Returns 0 or a negative errno. No syscall when nothing changes. */
int em__poller_set(em_loop *loop, em__watcher *w, unsigned interest);
/* Takes w out of the backend before its descriptor is closed (close alone
 * does not when another descriptor shares the open file). */
void em__poller_forget(em_loop *loop, em__watcher *w);
/* Can the backend watch fd? Returns 0, -EPERM (a regular file, /dev/null:
 * epoll refuses them), -EEXIST (already watched by this loop), -EBADF. */
int em__poller_check(em_loop *loop, int fd);
/* Waits up to timeout_ms and stores ready watchers; returns their count. */
int em__poller_wait(em_loop *loop, int timeout_ms);
/* Calls on_event for every watcher the last wait found ready. */
void em__poller_dispatch(em_loop *loop);

/* ---- timers (timers.c) ----------------------------------------------- */

typedef struct em__timers em__timers;
int em__timers_new(em__timers **out);
void em__timers_free(em__timers *timers);
/* Earliest deadline in ns (loop clock) or UINT64_MAX when none. */
uint64_t em__timers_next(const em__timers *timers);
/* Runs every timer due at loop->now_ns. */
void em__timers_run(em_loop *loop);

/* ---- inactivity and connect timeouts (timeouts.c) -------------------- */

/* Connections waiting with the same duration share one FIFO queue, so
 * re-arming on traffic is a move to the tail: O(1), no heap. */
typedef struct em__timeout_queue {
    uint64_t duration_ns;
    em__link members; /* em_conn.timeout_link, oldest deadline first */
} em__timeout_queue;

typedef struct em__timeouts {
    em__timeout_queue *queues;
    size_t count;
    size_t cap;
} em__timeouts;

void em__timeouts_free(em__timeouts *t);
/* Puts conn in the queue for duration_ns (0 removes it). */
int em__timeout_arm(em_conn *conn, uint64_t duration_ns);
void em__timeout_disarm(em_conn *conn);
/* Moves conn to the back of its queue (traffic while a timeout is set). */
void em__timeout_requeue(em_conn *conn);
uint64_t em__timeouts_next(const em__timeouts *t);
/* Closes every connection whose timeout expired (unbind -ETIMEDOUT). */
void em__timeouts_run(em_loop *loop);

/* ---- transports ------------------------------------------------------ */

/* How the connection code reaches the bytes: plain socket now, TLS next.
 * read: >0 bytes, 0 EOF, negative errno (-EAGAIN when nothing is there).
 * writev: bytes accepted or a negative errno. */
typedef struct em__transport {
    ssize_t (*read)(em_conn *conn, void *buf, size_t len);
    ssize_t (*writev)(em_conn *conn, const struct iovec *iov, int count);
    int (*shutdown_write)(em_conn *conn);
    void (*close)(em_conn *conn);
    /* Optional: the connection just started closing. A transport over a
     * descriptor it does not own stops polling it here, while the number
     * surely still names the same file (the owner may close it before
     * unbind). */
    void (*closing)(em_conn *conn);
    /* Optional: releases the descriptor in a forked child (fork.c): no
     * word to the peer, nothing shared with the parent changed. NULL:
     * close already is that. */
    void (*forget)(em_conn *conn);
} em__transport;

extern const em__transport em__socket_transport;
/* transport_fd.c: read/write on any descriptor (pipes: SIGPIPE-safe) and
 * the borrowed descriptor of em_watch (never read, written or closed). */
extern const em__transport em__fd_transport;
extern const em__transport em__pipe_transport;
extern const em__transport em__watch_transport;

/* ---- TLS (tls.c, tls_context.c) -------------------------------------- */

typedef struct em__tls em__tls;
typedef struct em__tls_ctx em__tls_ctx;
typedef struct em__tls_cache em__tls_cache;

/* The TLS watcher callback (replaces em__conn_on_event once TLS starts). */
void em__tls_on_event(em_loop *loop, em__watcher *w, unsigned revents);
/* Poll interest for a TLS connection, given what the connection wants. */
unsigned em__tls_interest(const em_conn *conn, unsigned wanted);
/* Asks for a service pass next turn: handshake kick, buffered plaintext. */
void em__tls_schedule(em_conn *conn);
/* Runs the service passes queued by em__tls_schedule. */
void em__tls_run_pending(em_loop *loop);
/* Frees conn's TLS state after its unbind; conn becomes plain again. */
void em__tls_free(em_conn *conn);
void em__tls_cache_free(em_loop *loop);

/* ---- outbound queue (outbound.c) ------------------------------------- */

enum em__chunk_kind {
    EM__CHUNK_MEMORY = 0,
    EM__CHUNK_FILE = 1, /* a file range, sent with sendfile(2) */
    EM__CHUNK_PIPE = 2, /* bytes waiting in a proxy's pipe, splice(2) */
};

typedef struct em__pipe em__pipe;
typedef struct em__proxy em__proxy;
typedef void (*em__range_done_fn)(em_conn *conn, int err, void *arg);

/* A FILE or PIPE item: bytes [pos, end) of fd. A file's fd is owned by the
 * item; a pipe's by the proxy's em__pipe, which the item holds a reference
 * to. done runs when the item is sent (0) or dropped (negative errno). */
typedef struct em__fd_range {
    int fd;
    int error; /* why sending failed, for done */
    uint64_t pos;
    uint64_t end;
    em__pipe *pipe;
    em__range_done_fn done;
    void *done_arg;
} em__fd_range;

/* A proxy's pipe (proxy.c): what splice(2) moved out of the source and the
 * target has not sent yet. Referenced by the proxy and by every PIPE item
 * in the target's queue; closed with the last reference. */
struct em__pipe {
    int rd;
    int wr;
    size_t bytes; /* in the pipe now */
    int refs;
    em__proxy *proxy; /* while the source still splices into it */
};

typedef struct em__chunk {
    struct em__chunk *next;
    uint32_t kind;
    uint32_t start; /* first unsent byte */
    uint32_t end;   /* one past the last byte */
    uint32_t cap;
    em__fd_range *range; /* FILE and PIPE only */
    char data[];
} em__chunk;

typedef struct em__outq {
    em__chunk *head;
    em__chunk *tail;
    size_t bytes; /* memory bytes plus the unsent bytes of every range */
} em__outq;

int em__outq_append(em__outq *q, const char *data, size_t len);
/* Fills up to max iovecs from the head's memory chunks; returns how many
 * (0 when the head is a range). */
int em__outq_iov(const em__outq *q, struct iovec *iov, int max);
void em__outq_consume(em__outq *q, size_t n);
/* Appends a FILE or PIPE item (takes range; freed with the item). A PIPE
 * item directly behind another of the same pipe just grows it. */
int em__outq_append_range(em__outq *q, uint32_t kind, em__fd_range *range);
/* n bytes of the head range were sent. Returns the range when it is now
 * complete (unlinked from the queue; the caller finishes and frees it with
 * em__range_finish), else NULL. */
em__fd_range *em__outq_advance_range(em__outq *q, size_t n);
/* Runs a range's done callback with err, releases its fd or pipe, frees
 * it. */
void em__range_finish(em_conn *conn, em__fd_range *range, int err);
/* Drops everything queued; ranges finish with -ECANCELED. */
void em__outq_clear(em_conn *conn, em__outq *q);

/* ---- connections ----------------------------------------------------- */

enum em__conn_flag {
    EM__CONN_OUTBOUND = 1u << 0,   /* made by em_connect */
    EM__CONN_CONNECTING = 1u << 1, /* connect not yet completed */
    EM__CONN_PAUSED = 1u << 2,
    EM__CONN_CLOSE_AFTER_WRITING = 1u << 3,
    EM__CONN_CLOSING = 1u << 4,      /* on pending_unbind, no more I/O */
    EM__CONN_SHUT_PENDING = 1u << 5, /* em_close_write: FIN after drain */
    EM__CONN_WRITE_SHUT = 1u << 6,   /* FIN sent */
    EM__CONN_READ_EOF = 1u << 7,     /* peer sent FIN */
    EM__CONN_IN_UNBIND = 1u << 8,
    EM__CONN_RECONNECTED = 1u << 9,  /* em_reconnect called in unbind */
    EM__CONN_WAS_QUEUED = 1u << 10,  /* queue non-empty: drained pending */
    EM__CONN_HANDSHAKING = 1u << 11, /* TLS handshake: plaintext waits */
    EM__CONN_READ_PAUSED = 1u << 12, /* em_pause_reading */
    EM__CONN_THROTTLED = 1u << 13,   /* a watermark stopped our reading */
    EM__CONN_FRAMER_HELD = 1u << 14, /* framer keeps unparsed input */
    EM__CONN_CORKED = 1u << 15,      /* sends queue until the chunk is parsed */
    /* descriptors (attach.c): bits 16-19 */
    EM__CONN_WATCH_ONLY = 1u << 16, /* em_watch: only notify_* callbacks */
    EM__CONN_NOTIFY_READABLE = 1u << 17,
    EM__CONN_NOTIFY_WRITABLE = 1u << 18,
    EM__CONN_SET_NONBLOCK = 1u << 19, /* em_attach set O_NONBLOCK */
    EM__CONN_DATAGRAM = 1u << 20,     /* UDP socket (datagram.c) */
    /* Backport adapters (adapter.c): bits 24-25 */
    EM__CONN_REMOTE_KEPT = 1u << 24, /* peer address saved at opening */
};

struct em__connect_req;

struct em_conn {
    em__watcher watcher;
    em_loop *loop;
    const em_handler *handler;
    void *arg;
    const em__transport *transport;
    uint32_t flags;
    int close_reason;
    em__link link; /* loop->conns, ->failed_connects or ->pending_unbind */
    em__link timeout_link; /* in a timeout queue */
    em__timeout_queue *timeout_queue;
    uint64_t last_activity_ns; /* last byte read or written */
    uint64_t timeout_base_ns;  /* the timeout counts from here */
    uint32_t inactivity_ms;
    uint32_t connect_timeout_ms;
    em__outq out;
    struct em__connect_req *connect;
    em__tls *tls;            /* NULL for plain connections */
    struct em__relay *relay; /* watermarks and proxying; NULL when unused */
    char *remote_host; /* owned: the host given to em_connect (TLS name) */
    /* stdio, unpollable files, processes (src/fdx.h); else NULL */
    struct em__fdx *fdx;
    uint64_t id; /* em_conn_id: generation << 32 | slot (conn_id.c) */
    struct em__framer *framer; /* em_use_lines / em_use_frames; or NULL */
    _Alignas(max_align_t) unsigned char state[];
};

/* Bytes a kind of connection keeps after the handler's state (datagram
 * state, say): allocated with the connection, at em__conn_extra(conn). */
#define EM__STATE_SPAN(size)                                                   \
    (((size) + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1))
static inline void *em__conn_extra(em_conn *conn)
{
    return conn->state + EM__STATE_SPAN(conn->handler->state_size);
}

/* ---- framing (framer.c) --------------------------------------------- */

typedef struct em__framer em__framer;
/* A chunk for conn's framer (conn->framer is set). */
void em__framer_feed(em_conn *conn, const char *data, size_t len);
/* The peer's EOF: deliver a final partial line, fail a partial frame. */
void em__framer_eof(em_conn *conn);
/* Reading may resume: held input gets a pass (loop->framer_pending). */
void em__framer_wake(em_conn *conn);
void em__framer_run_pending(em_loop *loop);
/* em_reconnect: partial input is forgotten, the framer stays. */
void em__framer_reset(em_conn *conn);
void em__framer_free(em_conn *conn);

/* Where every chunk read from a stream goes. */
static inline void em__conn_deliver(em_conn *conn, const char *data, size_t len)
{
    if (conn->framer)
        em__framer_feed(conn, data, len);
    else if (conn->handler->receive_data)
        conn->handler->receive_data(conn, data, len);
}

/* Marks conn closed with reason; unbind runs at the end of this batch. */
void em__conn_close_now(em_conn *conn, int reason);
/* Recomputes and applies the poll interest of conn. */
void em__conn_update_interest(em_conn *conn);
/* Allocates a connection with zeroed state, linked into loop->conns. */
em_conn *em__conn_new(em_loop *loop, const em_handler *handler, void *arg,
                      int fd, uint32_t flags);
/* The same with `extra` zeroed bytes after the state (em__conn_extra). */
em_conn *em__conn_new_extra(em_loop *loop, const em_handler *handler, void *arg,
                            int fd, uint32_t flags, size_t extra);
/* The socket connected (or an accepted one is ready): arm and start. */
void em__conn_established(em_conn *conn);
/* Bytes were added to conn's queue: drained becomes due, watermarks and
 * the poll interest follow. */
void em__conn_queued(em_conn *conn);
/* Writes the queue; closes on error. */
void em__conn_flush(em_conn *conn);
/* Reading may have started or stopped: the poll interest follows, and
 * input already read but not delivered (inside OpenSSL, held by the
 * framer) gets a pass. */
void em__conn_reading_changed(em_conn *conn);
/* Ends EM__CONN_CORKED: what the callbacks queued leaves in one write. */
void em__conn_uncork(em_conn *conn);
/* Runs unbind for every connection marked closing. */
void em__conn_reap(em_loop *loop);
void em__conn_on_event(em_loop *loop, em__watcher *w, unsigned revents);
/* Closing or inside unbind: no more control calls apply. */
static inline int em__conn_is_gone(const em_conn *conn)
{
    return (conn->flags & (EM__CONN_CLOSING | EM__CONN_IN_UNBIND)) != 0;
}
/* May the read path read now (not closing, paused, throttled, at EOF or
 * connecting)? */
int em__conn_can_read(const em_conn *conn);
/* Flags under which em_send_data does not write (one test on its hot
 * path). Datagram sockets take that branch too and are routed to their
 * own send there, so streams pay nothing for them. */
#define EM__SEND_REFUSED                                                       \
    (EM__CONN_IN_UNBIND | EM__CONN_CLOSING | EM__CONN_CLOSE_AFTER_WRITING |    \
     EM__CONN_SHUT_PENDING | EM__CONN_WRITE_SHUT | EM__CONN_WATCH_ONLY |       \
     EM__CONN_DATAGRAM)
/* Why a stream connection with one of EM__SEND_REFUSED's flags takes no
 * more bytes: -ENOTCONN, -EPIPE or -EOPNOTSUPP (em_watch). */
int em__conn_send_refusal(const em_conn *conn);
/* The peer sent EOF: flush what is queued, then close. */
void em__conn_peer_eof(em_conn *conn);
/* Reads and delivers a few chunks (the read half of em__conn_on_event). */
void em__conn_read(em_conn *conn);
/* Counts traffic: idle time restarts, an inactivity timeout re-arms. */
void em__conn_touch(em_conn *conn);
/* Frees a connection that will not be unbound (never handed out). */
void em__conn_free(em_conn *conn);
/* Hands conn out (*out, may be NULL), runs post_init and, unless it closed
 * there, arms it as established. */
void em__conn_start(em_conn *conn, em_conn **out);
/* Frees a connection that was never handed out (unlinks and uncounts). */
void em__conn_discard(em_conn *conn);
void em__connect_free(em_conn *conn);
void em__connect_on_writable(em_conn *conn);
/* The resolver's answer for a connecting conn (ctx): tries every address
 * in order. Takes ownership of ai. */
void em__connect_on_resolved(em_loop *loop, void *ctx, struct addrinfo *ai,
                             int err);
/* Closes the connections whose connect failed synchronously. */
void em__connect_run_failures(em_loop *loop);

/* ---- flow control, files, proxying (flow.c, file.c, proxy.c) -------- */

/* Allocated the first time a connection gets watermarks or takes part in
 * a proxy, so plain connections pay one NULL pointer. */
typedef struct em__relay {
    size_t high; /* outbound watermarks; high 0 = none */
    size_t low;
    em_conn *throttles;     /* stops reading while our queue is above high */
    em_conn *throttled_by;  /* whose queue stops our reading */
    em__proxy *proxy;       /* we proxy our input to proxy->target */
    em_conn *proxied_from;  /* the source proxying into us */
    uint64_t proxied_bytes; /* em_get_proxied_bytes */
} em__relay;

/* conn's relay, made on first use; NULL when out of memory. */
em__relay *em__relay_get(em_conn *conn);
/* The queue grew / shrank: apply the watermarks. */
void em__flow_after_growth(em_conn *conn);
void em__flow_after_drain(em_conn *conn);
/* conn is closing: release what it throttles, end proxies, free relay. */
void em__relay_release(em_conn *conn);
/* Sends from the FILE or PIPE item at the head of the queue. Returns bytes
 * sent, -EAGAIN, or a negative errno (-EIO: a file shorter than queued). */
ssize_t em__flush_range(em_conn *conn, em__chunk *head);
/* A proxy source read data (the buffered path, e.g. under TLS). */
void em__proxy_deliver(em_conn *conn, const char *data, size_t len);
void em__pipe_release(em__pipe *pipe);
/* Bytes left the pipe: a source that found it full may splice again. */
void em__pipe_drained(em__pipe *pipe, size_t n);
/* Watermark plumbing shared by flow.c and proxy.c: owner's queue above
 * high stops victim's reading (high 0 unlinks). */
int em__flow_link(em_conn *owner, size_t high, size_t low, em_conn *victim);
void em__flow_unlink_all(em_conn *conn);
/* Sets or clears EM__CONN_THROTTLED and updates interest. */
void em__flow_set_throttled(em_conn *conn, int on);
/* Frees the loop's file bounce buffer. */
void em__file_loop_free(em_loop *loop);
/* ---- descriptors and processes (attach.c, stdio.c, process.c) -------- */

typedef struct em__fdx em__fdx; /* src/fdx.h */
/* Splits conn's poll interest between its descriptors (a separate write
 * descriptor, sides epoll cannot poll); returns the main watcher's share. */
unsigned em__fdx_interest(em_conn *conn, unsigned interest);
void em__fdx_free(em_conn *conn);
/* Is fd already one of the loop's connections, servers or own
 * descriptors? Returns 1 or 0. */
int em__fd_in_use(em_loop *loop, int fd);
/* Called by conn_unbind after the I/O is released: returns 1 when a child
 * still runs, the connection then waits on loop->proc_exiting and comes
 * back to pending_unbind once the child has exited. */
int em__proc_hold_unbind(em_conn *conn);
/* Loop shutdown: kills (SIGKILL) and reaps children still running, and
 * hands their connections back to pending_unbind. */
void em__proc_shutdown(em_loop *loop);

/* ---- servers --------------------------------------------------------- */

struct em_server {
    em__watcher watcher;
    em_loop *loop;
    const em_handler *handler;
    void *arg;
    em__link link; /* loop->servers, then loop->dead_servers */
    int port;
    int paused_for_emfile;
    em_timer_id retry_timer;
    char *unix_path; /* owned; NULL for TCP */
};

/* ---- thread pool (pool.c) ------------------------------------------- */

typedef struct em__pool em__pool;
typedef struct em__job em__job;
/* Runs on a pool worker, without the pool's lock. */
typedef void (*em__job_work_fn)(em__job *job);
/* Runs on the loop thread: status 0 once work ran, -ECANCELED when
 * em__pool_cancel (or em_loop_free) took it off the queue first. The job
 * belongs to the callee from then on. */
typedef void (*em__job_done_fn)(em_loop *loop, em__job *job, int status);
/* Frees an abandoned job; on a worker or the loop thread. */
typedef void (*em__job_drop_fn)(em__job *job);

/* Embedded in the user's record; the pool owns the fields below `drop`. */
struct em__job {
    em__job_work_fn work;
    em__job_done_fn done;
    em__job_drop_fn drop;
    em__link link;
    int state;
    int status;
    int abandoned;
};

/* Queues job (work, done, drop set); creates the pool on first use.
 * Returns 0, -ENOMEM, -EAGAIN (no thread could start), -ECANCELED (the
 * loop is being freed). Loop thread. */
int em__pool_submit(em_loop *loop, em__job *job);
/* A queued job's done runs later with -ECANCELED: 0. Running or finished:
 * -EBUSY; cancelled already: -EALREADY. Loop thread. */
int em__pool_cancel(em_loop *loop, em__job *job);
/* done will never run; drop frees the job now or when its work returns. */
void em__pool_abandon(em_loop *loop, em__job *job);
/* Wakeup hook: runs the done functions of finished jobs. */
void em__pool_deliver(em_loop *loop);
/* Cancels queued jobs, joins the workers, runs every done left and frees
 * the pool. Returns how many em_defer jobs were still outstanding. */
size_t em__pool_free(em_loop *loop);

/* ---- signals (signals.c) --------------------------------------------- */

typedef struct em__signals em__signals;
/* Restores the thread's mask for every handled signal, closes the
 * signalfd. */
void em__signals_free(em_loop *loop);

/* ---- file watches (fswatch.c) ---------------------------------------- */

typedef struct em__fswatch em__fswatch;
/* Runs the unbind of every watch that ended (from em__conn_reap). */
void em__fswatch_reap(em_loop *loop);
/* Ends every watch (em_stop, em_loop_free); em__fswatch_reap unbinds. */
void em__fswatch_end_all(em_loop *loop);
/* Ends and unbinds what is left, closes the inotify descriptor. Returns
 * how many watches were still live. */
size_t em__fswatch_free(em_loop *loop);
/* Is an unbind of an ended watch due? */
int em__fswatch_pending(const em_loop *loop);

/* ---- resolver (resolve.c) -------------------------------------------- */

typedef struct em__resolver em__resolver;
/* fn runs on the loop thread with the result (owned by the callee, free with
 * freeaddrinfo) or a negative errno; never after em__resolve_cancel. */
typedef void (*em__resolve_fn)(em_loop *loop, void *ctx, struct addrinfo *ai,
                               int err);
typedef struct em__resolve_job em__resolve_job;
int em__resolve_start(em_loop *loop, const char *host, int port,
                      em__resolve_fn fn, void *ctx, em__resolve_job **out);
void em__resolve_cancel(em_loop *loop, em__resolve_job *job);
/* Abandons the jobs in flight; before em__pool_free. */
void em__resolver_free(em_loop *loop);

/* An outbound connect in progress (connect.c). */
struct em__connect_req {
    struct em__resolve_job *job; /* name being resolved, or NULL */
    struct addrinfo *addresses;  /* owned, from the resolver */
    struct addrinfo *next;       /* next address to try */
    struct sockaddr_storage bind_addr;
    socklen_t bind_len; /* 0: do not bind */
    int last_err;
};

/* ---- addresses (address.c) ------------------------------------------- */

/* Parses a numeric IPv4/IPv6 literal (or NULL = 0.0.0.0) and port into a
 * sockaddr. Returns 0, or -EINVAL when host is not a literal. */
int em__addr_literal(const char *host, int port, struct sockaddr_storage *ss,
                     socklen_t *len);
/* Builds a sockaddr_un. Returns 0 or -ENAMETOOLONG / -EINVAL. */
int em__addr_unix(const char *path, struct sockaddr_storage *ss,
                  socklen_t *len);

/* ---- datagrams (datagram.c) ------------------------------------------ */

struct em__dgram_batch;
/* em_send_data on a datagram connection: a reply to the last sender. */
int em__dgram_reply(em_conn *conn, const void *data, size_t len);
/* em_resume on a datagram connection: queued sends, held datagrams. */
void em__dgram_resume(em_conn *conn);
/* em_get_peername on a datagram connection: the last sender. */
int em__dgram_peername(const em_conn *conn, struct sockaddr *addr,
                       socklen_t *len);
void em__dgram_loop_free(em_loop *loop);

/* ---- connection ids (conn_id.c) --------------------------------------- */

typedef struct em__id_slot {
    em_conn *conn; /* NULL: free, or its connection is unbinding */
    uint32_t gen;  /* generation; a slot whose gen wraps is retired */
    uint32_t next_free;
} em__id_slot;

typedef struct em__ids {
    em__id_slot *slots;
    uint32_t count; /* slots handed out at least once */
    uint32_t cap;
    uint32_t free_head; /* FIFO of free slots; UINT32_MAX = empty */
    uint32_t free_tail;
} em__ids;

/* Gives conn a fresh id. Returns 0 or -ENOMEM. */
int em__id_assign(em_conn *conn);
/* From now on em_conn_lookup(conn's id) is NULL (unbind is starting). */
void em__id_hide(em_conn *conn);
/* Frees conn's slot for reuse under a new generation. */
void em__id_release(em_conn *conn);
/* em_reconnect gave the connection a new life: a new id. */
void em__id_renew(em_conn *conn);
/* Frees the slot table and undelivered em_send_data_id copies. */
void em__ids_free(em_loop *loop);

/* ---- Backport adapters (adapter.c) ----------------------------------- */

struct em__adapter;
/* Frees the handlers the loop's adapters became (after every unbind). */
void em__adapters_free(em_loop *loop);

/* ---- the loop -------------------------------------------------------- */

typedef struct em__task {
    em_callback fn;
    void *arg;
} em__task;

/* A growable ring of tasks; no allocation per task in steady state. */
typedef struct em__task_ring {
    em__task *tasks;
    size_t cap;  /* power of two */
    size_t head; /* next to run */
    size_t count;
} em__task_ring;

int em__ring_push(em__task_ring *ring, em_callback fn, void *arg);
void em__ring_free(em__task_ring *ring);

struct em_loop {
    /* backend */
    int backend_fd;
    int ready_count;
    void *ready; /* backend's event array */

    uint64_t now_ns;
    int running;
    int stopping; /* shutdown in progress */
    atomic_int stop_requested;

    em__watcher wakeup; /* eventfd: em_schedule, em_stop, resolver */
    atomic_int wakeup_pending;

    pthread_mutex_t schedule_lock;
    em__task_ring scheduled;      /* guarded by schedule_lock */
    em__task_ring schedule_spare; /* loop thread only: next empty ring */
    em__task_ring ticks;

    em__link conns;          /* live connections */
    em__link pending_unbind; /* closed, unbind not yet run */
    em__link servers;
    em__link dead_servers;    /* stopped; freed after the current batch */
    em__link failed_connects; /* em_conn.link; closed next turn */
    em__link tls_pending;     /* em__tls needing a pass without an event */
    em__link framer_pending;  /* em__framer with held input to parse */
    size_t conn_count;

    em__timers *timers;
    em__timeouts timeouts;
    em__resolver *resolver;
    em__tls_cache *tls_cache; /* created by the first em_start_tls */
    char *file_buf; /* 64 KiB: file ranges under TLS (pread, then write) */

    em_callback before_poll;
    em_callback after_poll;
    void *poll_hook_arg;

    char read_buf[EM__READ_CHUNK];

    em__pool *pool;          /* created by the first em_defer or resolution */
    em__signals *signals;    /* created by the first em_add_signal */
    em__fswatch *fswatch;    /* created by the first em_watch_file */
    em__watcher embed_timer; /* timerfd once em_backend_fd was asked for */
    uint64_t embed_armed_ns; /* deadline it is armed to, UINT64_MAX none */
    int accepts_per_wakeup;
    int max_wait_ms;       /* -1: no cap */
    em__link proc_exiting; /* closed popen connections, child running */
    em__ids ids;           /* conn_id.c */
    struct em__dgram_batch *dgram_batch; /* datagram.c, first socket on */
    struct em__adapter *adapters; /* adapter.c: handlers adapters became */
    em_wait_hook wait_hook;       /* wait_hook.c; NULL: the turn waits itself */
    void *wait_hook_arg;
    /* em_loop_new's process; em_loop_free in another one forgets (fork.c) */
    pid_t owner_pid;
};

/* Wakes the loop from any thread (eventfd write; async-signal-safe). */
void em__loop_wakeup(em_loop *loop);
uint64_t em__clock_ns(void);
/* When the loop next has work without an event: 0 if it has some now,
 * else the earliest timer or timeout (loop clock, ns), UINT64_MAX none. */
uint64_t em__loop_next_deadline(const em_loop *loop);
/* The turn's wait: through the wait hook when one is set and the wait may
 * block (wait_hook.c). */
void em__loop_wait(em_loop *loop, int timeout_ms);

/* ---- embedding (embed.c) --------------------------------------------- */

/* Re-arms the embedding timerfd to em__loop_next_deadline if that moved. */
void em__embed_update(em_loop *loop);
void em__embed_free(em_loop *loop);

/* Work added from outside a turn (the host's code, not a callback): an
 * embedded loop's descriptor must show it. Inside a turn the end of the
 * turn re-arms, so this is one load and branch on the hot paths. */
static inline void em__loop_work_added(em_loop *loop)
{
    if (loop->embed_timer.fd >= 0 && !loop->running)
        em__embed_update(loop);
}

/* ---- a loop inherited across fork (fork.c) ---------------------------- */

/* em_loop_free in a process other than the loop's: closes what the loop
 * owns and frees what no vanished thread may hold, running no callback and
 * touching nothing the parent still uses (no send, shutdown, read,
 * epoll_ctl, inotify_rm_watch, unlink, kill or wait). loop_release then
 * frees the rest. Each module's part: */
void em__loop_forget(em_loop *loop);
/* connection.c: one connection (unlinked from every list, freed). */
void em__conn_forget(em_conn *conn);
/* connect.c: the attempt's addresses; its resolver job is resolve.c's. */
void em__connect_forget(em_conn *conn);
/* proxy.c: conn's proxy as a source, and its pipe reference. */
void em__proxy_forget(em_conn *conn);
/* outbound.c, file.c: the queue; ranges close their file, drop their pipe
 * reference, and call no done function. */
void em__outq_forget(em__outq *q);
void em__range_forget(em__fd_range *range);
/* attach.c, process.c: the extras; a pidfd is closed, no child signalled
 * or reaped. */
void em__fdx_forget(em_conn *conn);
void em__proc_forget(em_conn *conn);
/* framer.c: the parser, even one whose callback is running. */
void em__framer_forget(em_conn *conn);
/* server.c: listeners closed, Unix socket files left in place. */
void em__servers_forget(em_loop *loop);
/* fswatch.c: the inotify descriptor closed, its watches left to the
 * parent, the records freed. */
void em__fswatch_forget(em_loop *loop);
/* pool.c: no worker exists: records freed without the pool's lock (taken
 * only if free), nothing joined or destroyed. Before em__resolver_forget. */
void em__pool_forget(em_loop *loop);
/* resolve.c: the jobs in flight freed. */
void em__resolver_forget(em_loop *loop);

#endif
