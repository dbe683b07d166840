/*
 * framer.c - a line or frame parser attached to a connection (em_use_lines,
 * em_use_frames, em_use_raw, em_send_frame, the em_set_*_mode calls).
 *
 * The read path hands every chunk to em__conn_deliver; with a framer
 * attached the chunk goes to the parser, whose callbacks call the
 * handler's receive_line / receive_binary_data / receive_frame. After each
 * message the parser asks whether to stop:
 *   - the connection is closing: the rest of the input is dropped;
 *   - the framer was replaced or removed inside the callback: the rest
 *     goes to whatever now receives (the new framer or receive_data);
 *   - reading is paused (em_pause, em_pause_reading, a watermark): the rest
 *     is copied to `held`, EM__CONN_FRAMER_HELD stops reading, and when
 *     reading resumes the framer gets a pass (loop->framer_pending) that
 *     parses `held` before anything new is read.
 * Stopping reads while input is held is what keeps the order right and the
 * memory bounded: held is at most the rest of one read chunk. The simpler
 * alternative, parsing the whole chunk whatever the callbacks do, would
 * make em_pause inside receive_line meaningless for a pipelining peer.
 *
 * Answers to pipelined messages leave together: from the second message
 * of a chunk on, the connection is corked (em_send_data queues) and the
 * queue is written once the chunk is parsed. The first message's answer
 * still goes out at once without a copy, so a peer that sends one request
 * per read pays nothing; ten pipelined requests cost two writes, not ten.
 *
 * A framer replaced inside its own callback is still on the stack, so it is
 * only marked dead and freed when its parse returns.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"

enum { KIND_LINES = 1, KIND_FRAMES = 2 };

struct em__framer {
    em_conn *conn;
    int kind;
    em_lines *lines;
    em_frames *frames;
    char *held; /* input not parsed yet because reading paused */
    size_t held_len;
    size_t held_cap;
    em__link pending_link; /* loop->framer_pending */
    int feeding;           /* parses of this framer on the stack */
    int dead;              /* replaced while feeding: free when done */
};

/* ---- parser callbacks -> handler -------------------------------------- */

static void on_line(void *arg, const char *line, size_t len)
{
    em_conn *conn = ((em__framer *)arg)->conn;
    if (conn->handler->receive_line)
        conn->handler->receive_line(conn, line, len);
}

static void on_binary(void *arg, const char *data, size_t len)
{
    em_conn *conn = ((em__framer *)arg)->conn;
    if (conn->handler->receive_binary_data)
        conn->handler->receive_binary_data(conn, data, len);
}

static void on_end_of_binary(void *arg)
{
    em_conn *conn = ((em__framer *)arg)->conn;
    if (conn->handler->receive_end_of_binary_data)
        conn->handler->receive_end_of_binary_data(conn);
}

static void on_frame(void *arg, const char *data, size_t len)
{
    em_conn *conn = ((em__framer *)arg)->conn;
    if (conn->handler->receive_frame)
        conn->handler->receive_frame(conn, data, len);
}

#define EM__INPUT_DROPPED (EM__CONN_CLOSING | EM__CONN_CLOSE_AFTER_WRITING)
#define EM__INPUT_STOPPED                                                      \
    (EM__CONN_PAUSED | EM__CONN_READ_PAUSED | EM__CONN_THROTTLED)

/* Asked after every message. Also where corking starts: a later message
 * of the same chunk queues its answer behind the first one's. */
static int should_stop(void *arg)
{
    em__framer *f = arg;
    f->conn->flags |= EM__CONN_CORKED;
    return f->dead ||
           (f->conn->flags & (EM__INPUT_DROPPED | EM__INPUT_STOPPED)) != 0;
}

static const em_line_callbacks line_callbacks = {
    .line = on_line,
    .binary = on_binary,
    .end_of_binary = on_end_of_binary,
};

/* ---- life cycle ---------------------------------------------------------- */

static void framer_destroy(em__framer *f)
{
    em__list_remove(&f->pending_link);
    em_lines_free(f->lines);
    em_frames_free(f->frames);
    free(f->held);
    free(f);
}

static void release(em__framer *f)
{
    if (f->feeding)
        f->dead = 1;
    else
        framer_destroy(f);
}

static int check_conn(const em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    if (em__conn_is_gone(conn))
        return -ENOTCONN;
    if (conn->flags & (EM__CONN_WATCH_ONLY | EM__CONN_DATAGRAM))
        return -EOPNOTSUPP;
    return 0;
}

static void set_held_flag(em_conn *conn, int on)
{
    if (!on == !(conn->flags & EM__CONN_FRAMER_HELD))
        return;
    if (on)
        conn->flags |= EM__CONN_FRAMER_HELD;
    else
        conn->flags &= ~EM__CONN_FRAMER_HELD;
    if (conn->flags & EM__CONN_CLOSING)
        return;
    if (on)
        em__conn_update_interest(conn);
    else
        em__conn_reading_changed(conn);
}

/* Makes f conn's framer. Input the old framer held moves to f (parsed
 * by f's next pass); an old framer on the stack delivers its rest itself. */
static void install(em_conn *conn, em__framer *f)
{
    em__framer *old = conn->framer;
    conn->framer = f;
    em__list_init(&f->pending_link);
    if (!old)
        return;
    if (!old->feeding && old->held_len) {
        f->held = old->held;
        f->held_len = old->held_len;
        f->held_cap = old->held_cap;
        old->held = NULL;
        old->held_len = 0;
        em__framer_wake(conn);
    }
    release(old);
}

int em_use_lines(em_conn *conn, const em_line_opts *opts)
{
    int err = check_conn(conn);
    if (err < 0)
        return err;
    if (!conn->handler->receive_line)
        return -EINVAL; /* every line would be dropped: surely a mistake */
    em__framer *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->conn = conn;
    f->kind = KIND_LINES;
    err = em__lines_make(opts, &line_callbacks, f, should_stop, &f->lines);
    if (err < 0) {
        free(f);
        return err;
    }
    install(conn, f);
    return 0;
}

int em_use_frames(em_conn *conn, const em_frame_opts *opts)
{
    int err = check_conn(conn);
    if (err < 0)
        return err;
    if (!conn->handler->receive_frame)
        return -EINVAL;
    em__framer *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->conn = conn;
    f->kind = KIND_FRAMES;
    err = em__frames_make(opts, on_frame, f, should_stop, &f->frames);
    if (err < 0) {
        free(f);
        return err;
    }
    install(conn, f);
    return 0;
}

int em_use_raw(em_conn *conn)
{
    if (!conn)
        return -EINVAL;
    em__framer *f = conn->framer;
    if (!f)
        return 0;
    conn->framer = NULL;
    if (f->feeding) {
        f->dead = 1; /* its parse hands the rest to receive_data */
        return 0;
    }
    char *held = f->held;
    size_t n = f->held_len;
    f->held = NULL;
    framer_destroy(f);
    set_held_flag(conn, 0);
    if (n && !em__conn_is_gone(conn) && conn->handler->receive_data)
        conn->handler->receive_data(conn, held, n);
    free(held);
    return 0;
}

void em__framer_free(em_conn *conn)
{
    em__framer *f = conn->framer;
    conn->framer = NULL;
    if (f)
        release(f);
}

/* In a forked child (fork.c) even a framer inside its callback goes: the
 * child never returns into the loop that was feeding it. */
void em__framer_forget(em_conn *conn)
{
    em__framer *f = conn->framer;
    conn->framer = NULL;
    framer_destroy(f);
}

void em__framer_reset(em_conn *conn)
{
    em__framer *f = conn->framer;
    if (!f)
        return;
    if (f->lines)
        em__lines_reset(f->lines);
    if (f->frames)
        em__frames_reset(f->frames);
    f->held_len = 0;
    em__list_remove(&f->pending_link);
    conn->flags &= ~EM__CONN_FRAMER_HELD;
}

/* ---- the read path ------------------------------------------------------- */

static size_t parse(em__framer *f, const char *data, size_t len)
{
    return f->kind == KIND_LINES ? em__lines_parse(f->lines, data, len)
                                 : em__frames_parse(f->frames, data, len);
}

static int failed(const em__framer *f)
{
    return f->kind == KIND_LINES ? em__lines_failed(f->lines)
                                 : em__frames_failed(f->frames);
}

static int keep(em__framer *f, const char *rest, size_t n)
{
    if (f->held_cap < n) {
        char *b = malloc(n);
        if (!b)
            return -ENOMEM;
        free(f->held);
        f->held = b;
        f->held_cap = n;
    }
    memmove(f->held, rest, n);
    f->held_len = n;
    return 0;
}

/* What happens to the n bytes at rest that a parse left. When they were in
 * f->held, f->held_len still counts the whole held input. */
static void after_parse(em__framer *f, const char *rest, size_t n,
                        int from_held)
{
    em_conn *conn = f->conn;
    int err = failed(f);
    if (err < 0 || n == 0 || (conn->flags & EM__INPUT_DROPPED) || f->dead) {
        if (from_held)
            f->held_len = 0;    /* rest still points into held: not freed */
        set_held_flag(conn, 0); /* a successor holds nothing yet */
        if (err < 0)
            em__conn_close_now(conn, err);
        else if (n && f->dead && !(conn->flags & EM__INPUT_DROPPED))
            em__conn_deliver(conn, rest, n);
        return;
    }
    /* Stopped by a pause: keep the rest for the pass after the resume. */
    if (keep(f, rest, n) < 0) {
        em__conn_close_now(conn, -ENOMEM);
        return;
    }
    set_held_flag(conn, 1);
}

/* Parses data (f->held itself when from_held) and settles the rest; f may
 * be gone afterwards. */
static void parse_and_settle(em__framer *f, const char *data, size_t len,
                             int from_held)
{
    f->feeding++;
    size_t used = parse(f, data, len);
    after_parse(f, data + used, len - used, from_held);
    if (--f->feeding == 0 && f->dead)
        framer_destroy(f);
}

void em__framer_feed(em_conn *conn, const char *data, size_t len)
{
    uint32_t corked = conn->flags & EM__CONN_CORKED; /* an outer feed's */
    parse_and_settle(conn->framer, data, len, 0);
    if (!corked)
        em__conn_uncork(conn);
}

void em__framer_wake(em_conn *conn)
{
    em__framer *f = conn->framer;
    if (f && f->held_len && !em__list_linked(&f->pending_link)) {
        em__list_push_back(&conn->loop->framer_pending, &f->pending_link);
        em__loop_work_added(conn->loop);
    }
}

void em__framer_run_pending(em_loop *loop)
{
    em__link batch;
    em__list_init(&batch);
    em__list_splice_back(&batch, &loop->framer_pending);
    while (!em__list_empty(&batch)) {
        em__framer *f = em__container_of(batch.next, em__framer, pending_link);
        em__list_remove(&f->pending_link);
        if (should_stop(f) || !f->held_len)
            continue; /* paused again or closing: a resume wakes it */
        em_conn *conn = f->conn;
        parse_and_settle(f, f->held, f->held_len, 1);
        em__conn_uncork(conn);
    }
}

void em__framer_eof(em_conn *conn)
{
    em__framer *f = conn->framer;
    if (f->held_len)
        return; /* cannot happen: held input stops reading before EOF */
    f->feeding++;
    int err = f->kind == KIND_LINES ? em__lines_finish(f->lines)
                                    : em__frames_finish(f->frames);
    if (err < 0)
        em__conn_close_now(conn, err);
    if (--f->feeding == 0 && f->dead)
        framer_destroy(f);
}

/* ---- control ------------------------------------------------------------- */

static em_lines *lines_of(const em_conn *conn)
{
    if (!conn || !conn->framer || conn->framer->kind != KIND_LINES)
        return NULL;
    return conn->framer->lines;
}

int em_set_delimiter(em_conn *conn, const char *delimiter, size_t len)
{
    em_lines *p = lines_of(conn);
    return p ? em_lines_set_delimiter(p, delimiter, len) : -EINVAL;
}

int em_set_binary_mode(em_conn *conn, uint64_t size, int flags)
{
    em_lines *p = lines_of(conn);
    return p ? em_lines_set_binary_mode(p, size, flags) : -EINVAL;
}

int em_set_line_mode(em_conn *conn)
{
    em_lines *p = lines_of(conn);
    return p ? em_lines_set_line_mode(p) : -EINVAL;
}

int em_send_frame(em_conn *conn, const void *data, size_t len)
{
    if (!conn || !conn->framer || conn->framer->kind != KIND_FRAMES ||
        (!data && len > 0))
        return -EINVAL;
    em_frames *p = conn->framer->frames;
    if (len > em__frames_max(p))
        return -EMSGSIZE;
    unsigned char prefix[10];
    int n = em_frame_prefix_encode(em__frames_prefix(p), len, prefix);
    if (n < 0)
        return n;
    struct iovec iov[2] = {
        {.iov_base = prefix, .iov_len = (size_t)n},
        {.iov_base = (void *)data, .iov_len = len},
    };
    return em_send_datav(conn, iov, len ? 2 : 1);
}
