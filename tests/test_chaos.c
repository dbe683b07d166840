/*
 * test_chaos.c - seeded randomized abuse over real sockets on 127.0.0.1:
 * "never a crash, a hang, a leak or lost data".
 *
 * Every random choice comes from the test's 64-bit seed, printed in every
 * failure message; EM_CHAOS_SEED=<seed> reruns with it, EM_CHAOS_SEED=random
 * draws a new one. The kernel's timing still varies: a seed fixes the
 * scripts, not the exact interleaving.
 *
 *   1. echo chaos  200 em clients in one loop against one em echo server,
 *                  each with its own script: random-size messages (1 B to
 *                  256 KiB) of its own byte stream, self pause/resume on
 *                  timers, and one ending: half-close, wait for the echo
 *                  then close, close after writing, abort mid-stream, or a
 *                  tiny inactivity timeout. The server pauses connections
 *                  and closes some. Both sides verify every byte against the
 *                  regenerated stream; every connection gets one unbind,
 *                  last; reasons come from an expected set.
 *   2. raw abuse   raw sockets from a thread: RST at once, half-close,
 *                  garbage then vanish, stop reading with megabytes queued
 *                  then RST, and connect/close storms, while a well-behaved
 *                  em client gets its full echo intact.
 *   3. misuse      the API inside unbind on every path to it, unbinds run
 *                  by em_loop_free using the server, em_stop_server inside
 *                  post_init, em_stop from receive_data with 100 transfers
 *                  in flight, and a table of NULL/invalid arguments.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

#define KiB (1024u)
#define MiB (1024u * 1024u)

/* ---- seeds, random numbers, failure messages -------------------------- */

static uint64_t g_seed;

/* cr_assert with the seed in front of the message. */
#define CHK(cond, fmt, ...)                                                    \
    cr_assert((cond), "[EM_CHAOS_SEED=%#" PRIx64 "] " fmt, g_seed,             \
              ##__VA_ARGS__)

/* EM_CHAOS_SEED=<number> or =random overrides the test's fixed seed. */
static void seed_init(uint64_t fixed)
{
    const char *env = getenv("EM_CHAOS_SEED");
    g_seed = fixed;
    if (env && strcmp(env, "random") == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g_seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                 ((uint64_t)getpid() << 40);
        fprintf(stderr, "test_chaos: EM_CHAOS_SEED=%#" PRIx64 "\n", g_seed);
    } else if (env && *env) {
        g_seed = strtoull(env, NULL, 0);
    }
}

/* splitmix64's finalizer: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define GOLDEN 0x9e3779b97f4a7c15ull

static uint64_t rnd(uint64_t *s)
{
    return mix64(*s += GOLDEN);
}

/* Uniform in [lo, hi]. */
static uint64_t rnd_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
    return lo + rnd(s) % (hi - lo + 1);
}

static int one_in(uint64_t *s, unsigned n)
{
    return rnd(s) % n == 0;
}

/* A size in [1, 2^max_log2], log-uniform: as many tiny messages as huge
 * ones. */
static size_t rnd_size(uint64_t *s, unsigned max_log2)
{
    unsigned bits = (unsigned)rnd_range(s, 0, max_log2);
    return (size_t)rnd_range(s, (1ull << bits) / 2 + 1, 1ull << bits);
}

static uint64_t rng_for(uint64_t salt, uint64_t index)
{
    return mix64(g_seed ^ mix64(salt + index * GOLDEN));
}

/* ---- per-client byte streams ------------------------------------------ */

/* Byte i of stream `id`: the first 4 bytes are the id (little endian), so
 * a server can tell whose stream it reads; the rest is a keyed hash of the
 * offset, so a lost, repeated or shifted range never matches by accident. */
typedef struct stream {
    uint32_t id;
    uint64_t key;
} stream;

#define STREAM_HDR 4u

static stream stream_of(uint32_t id)
{
    return (stream){id, rng_for(0x57ea4, id)};
}

static void stream_fill(const stream *st, uint64_t off, uint8_t *buf,
                        size_t len)
{
    size_t i = 0;
    for (; i < len && off + i < STREAM_HDR; i++)
        buf[i] = (uint8_t)(st->id >> (8 * (off + i)));
    while (i < len) {
        uint64_t o = off + i;
        uint64_t word = mix64(st->key + (o >> 3));
        for (unsigned b = (unsigned)(o & 7); b < 8 && i < len; b++, i++)
            buf[i] = (uint8_t)(word >> (8 * b));
    }
}

/* Index of the first byte of buf that is not the stream at off, or -1. */
static long stream_check(const stream *st, uint64_t off, const void *data,
                         size_t len)
{
    static uint8_t want[16 * KiB];
    const uint8_t *p = data;
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof want ? len - done : sizeof want;
        stream_fill(st, off + done, want, n);
        if (memcmp(p + done, want, n) != 0)
            for (size_t i = 0; i < n; i++)
                if (p[done + i] != want[i])
                    return (long)(done + i);
        done += n;
    }
    return -1;
}

/* ---- the life of one connection, either side --------------------------- */

/* What every connection record starts with. Its em_conn_state holds a
 * pointer back to it, checked in every callback. */
typedef struct life {
    const char *who; /* "client" / "server", for messages */
    uint32_t id;
    em_conn *conn; /* NULL once unbound */
    int post_inits, completes, unbinds;
    int closed_now; /* em_close_connection(conn, 0) ran: only unbind next */
    int reason;
} life;

typedef struct slot {
    life *l;
} slot;

static void life_start(life *l, em_conn *conn, const char *who, uint32_t id)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL, "%s %u: no state", who, id);
    CHK(st->l == NULL, "%s %u: state not zeroed / post_init twice", who, id);
    CHK(l->post_inits == 0, "%s %u: second post_init", who, id);
    st->l = l;
    l->who = who;
    l->id = id;
    l->conn = conn;
    l->post_inits = 1;
}

/* Every callback but post_init and unbind. */
static void life_enter(em_conn *conn, life *l, const char *cb)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l == l, "%s: state of another connection", cb);
    CHK(l->unbinds == 0 && l->conn == conn, "%s %u: %s after unbind", l->who,
        l->id, cb);
    CHK(!l->closed_now, "%s %u: %s after an immediate close", l->who, l->id,
        cb);
}

/* Inside unbind: the connection is still an object, but a closed one. */
static void misuse_in_unbind(em_conn *conn)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int one = 1;
    socklen_t olen = sizeof one;

    CHK(em_send_data(conn, "x", 1) == -ENOTCONN, "send inside unbind");
    CHK(em_send_data(conn, NULL, 0) == -ENOTCONN, "empty send inside unbind");
    CHK(em_close_connection(conn, 0) == 0, "close inside unbind");
    CHK(em_close_connection(conn, 1) == 0, "close(1) inside unbind");
    CHK(em_close_write(conn) == -ENOTCONN, "close_write inside unbind");
    CHK(em_pause(conn) == -ENOTCONN, "pause inside unbind");
    CHK(em_resume(conn) == -ENOTCONN, "resume inside unbind");
    CHK(em_set_comm_inactivity_timeout(conn, 1) == -ENOTCONN, "idle timeout");
    CHK(em_set_pending_connect_timeout(conn, 1) == -ENOTCONN, "conn timeout");
    CHK(em_get_outbound_data_size(conn) == 0, "queue inside unbind");
    CHK(em_get_peername(conn, (struct sockaddr *)&ss, &len) == -ENOTCONN,
        "peername inside unbind");
    CHK(em_get_sockname(conn, (struct sockaddr *)&ss, &len) == -ENOTCONN,
        "sockname inside unbind");
    CHK(em_get_sock_opt(conn, SOL_SOCKET, SO_RCVBUF, &one, &olen) == -ENOTCONN,
        "getsockopt inside unbind");
    CHK(em_set_sock_opt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ==
            -ENOTCONN,
        "setsockopt inside unbind");
    CHK(em_enable_keepalive(conn, 1, 1, 1) == -ENOTCONN, "keepalive");
    CHK(em_disable_keepalive(conn) == -ENOTCONN, "keepalive off");
    CHK(em_conn_error(conn) == -ENOTCONN, "conn_error inside unbind");
    CHK(em_reconnect(conn, NULL, 1) == -EINVAL, "reconnect(NULL host)");
    CHK(em_reconnect(conn, "127.0.0.1", 0) == -EINVAL, "reconnect(port 0)");
    CHK(em_conn_loop(conn) != NULL, "loop inside unbind");
}

static void life_unbind(em_conn *conn, life *l, int reason)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l == l, "unbind: state of another connection");
    CHK(l->unbinds == 0, "%s %u: unbind twice", l->who, l->id);
    CHK(l->conn == conn, "%s %u: unbind of another connection", l->who, l->id);
    misuse_in_unbind(conn);
    l->unbinds = 1;
    l->reason = reason;
    l->conn = NULL;
}

static void cancel_timer(em_loop *loop, em_timer_id *id)
{
    if (*id) {
        int rc = em_cancel_timer(loop, *id);
        CHK(rc == 0 || rc == -ENOENT, "em_cancel_timer: %s", em_strerror(rc));
    }
    *id = 0;
}

static int is_peer_gone(int err)
{
    return err == -ECONNRESET || err == -EPIPE;
}

/* ---- plumbing ---------------------------------------------------------- */

static em_server *start_server(em_loop *loop, const em_handler *h, void *arg)
{
    em_server *s = NULL;
    int rc = em_start_server(loop, "127.0.0.1", 0, h, arg, NULL, &s);
    CHK(rc == 0, "em_start_server: %s", em_strerror(rc));
    return s;
}

/* Turns the loop until done(arg) or max_seconds (scaled) pass. */
static void run_until(em_loop *loop, int (*done)(void *), void *arg,
                      double max_seconds, const char *what)
{
    double limit = TH_TIMEOUT(max_seconds);
    double deadline = th_now() + limit;
    while (!done(arg)) {
        CHK(th_now() < deadline, "%s: not done after %.1f s", what, limit);
        int rc = em_run_once(loop, 10);
        CHK(rc >= 0, "em_run_once: %s", em_strerror(rc));
    }
}

static void run_for(em_loop *loop, double seconds)
{
    double deadline = th_now() + seconds;
    while (th_now() < deadline) {
        int rc = em_run_once(loop, 5);
        CHK(rc >= 0, "em_run_once: %s", em_strerror(rc));
    }
}

/* ====================================================================== */
/* em clients with random scripts (tests 1 and 2)                        */
/* ====================================================================== */

enum ending {
    END_HALF_CLOSE,    /* em_close_write after the last message */
    END_WAIT_ECHO,     /* close once every byte came back */
    END_AFTER_WRITING, /* em_close_connection(conn, 1) after the last one */
    END_ABORT,         /* em_close_connection(conn, 0) at a random moment */
    END_IDLE,          /* a tiny inactivity timeout ends it */
    END_KINDS
};

static const char *const ending_name[END_KINDS] = {
    "half-close", "wait-echo", "after-writing", "abort", "idle-timeout"};

struct srvconn;

typedef struct client {
    life l;
    stream st;
    uint64_t rng;
    enum ending ending;
    int nmsgs, msgs_sent;
    unsigned max_log2; /* message sizes up to 2^max_log2 */
    uint64_t sent, got;
    int paused_self, closed, done_sending, send_failed;
    int server_closed;    /* the server side closed it first */
    struct srvconn *peer; /* its accepted side, once identified */
    em_timer_id step_timer, resume_timer, abort_timer;
    em_loop *loop;
} client;

static struct {
    int client_unbinds;
    int self_pauses, idle_timeouts;
} CS; /* client statistics, reset by each test */

static uint8_t msg_buf[256 * KiB];

static void client_step(client *c);

static void client_close(client *c, int after_writing)
{
    int rc = em_close_connection(c->l.conn, after_writing);
    CHK(rc == 0, "client %u: close: %s", c->l.id, em_strerror(rc));
    c->closed = 1;
    if (!after_writing)
        c->l.closed_now = 1;
}

/* Sends the next message; 0 when the connection refused it. */
static int client_send_message(client *c)
{
    size_t size = rnd_size(&c->rng, c->max_log2);
    if (c->sent == 0 && size < STREAM_HDR)
        size = STREAM_HDR; /* the server identifies the stream by it */
    stream_fill(&c->st, c->sent, msg_buf, size);
    int rc = em_send_data(c->l.conn, msg_buf, size);
    if (rc == 0) {
        c->sent += size;
        c->msgs_sent++;
        return 1;
    }
    /* Only a server that closed its side can make a send fail. */
    CHK(c->server_closed && (is_peer_gone(rc) || rc == -ENOTCONN),
        "client %u (%s): em_send_data: %s", c->l.id, ending_name[c->ending],
        em_strerror(rc));
    c->send_failed = 1;
    return 0;
}

static void on_client_resume(em_loop *loop, void *arg)
{
    (void)loop;
    client *c = arg;
    c->resume_timer = 0;
    if (!c->l.conn)
        return;
    int rc = em_resume(c->l.conn);
    CHK(rc == 0, "client %u: em_resume: %s", c->l.id, em_strerror(rc));
    CHK(em_is_paused(c->l.conn) == 0, "still paused after em_resume");
    c->paused_self = 0;
}

static void client_pause_self(client *c)
{
    if (c->paused_self || c->closed)
        return;
    int rc = em_pause(c->l.conn);
    CHK(rc == 0, "client %u: em_pause: %s", c->l.id, em_strerror(rc));
    CHK(em_is_paused(c->l.conn) == 1, "not paused after em_pause");
    c->paused_self = 1;
    CS.self_pauses++;
    rc = em_add_timer(c->loop, (double)rnd_range(&c->rng, 1, 5) / 1000.0,
                      on_client_resume, c, &c->resume_timer);
    CHK(rc == 0, "em_add_timer: %s", em_strerror(rc));
}

static void on_client_step(em_loop *loop, void *arg)
{
    (void)loop;
    client *c = arg;
    c->step_timer = 0;
    if (c->l.conn && !c->closed && !c->send_failed)
        client_step(c);
}

static void on_client_abort(em_loop *loop, void *arg)
{
    (void)loop;
    client *c = arg;
    c->abort_timer = 0;
    if (c->l.conn && !c->l.closed_now)
        client_close(c, 0);
}

static void client_finish(client *c)
{
    c->done_sending = 1;
    switch (c->ending) {
    case END_HALF_CLOSE: {
        int rc = em_close_write(c->l.conn);
        CHK(rc == 0, "client %u: em_close_write: %s", c->l.id, em_strerror(rc));
        CHK(em_send_data(c->l.conn, "x", 1) == -EPIPE,
            "send after em_close_write");
        break;
    }
    case END_WAIT_ECHO:
        if (c->got == c->sent)
            client_close(c, (int)(rnd(&c->rng) & 1));
        break;
    case END_AFTER_WRITING:
        client_close(c, 1);
        CHK(em_send_data(c->l.conn, "x", 1) == -EPIPE,
            "send after close-after-writing");
        break;
    default: /* the abort timer or the inactivity timeout ends it */
        break;
    }
}

/* Sends messages, now or after a short timer, then finishes the script. */
static void client_step(client *c)
{
    while (c->msgs_sent < c->nmsgs) {
        if (!client_send_message(c))
            return;
        if (one_in(&c->rng, 8))
            client_pause_self(c);
        if (!one_in(&c->rng, 3)) {
            double delay = (double)rnd_range(&c->rng, 0, 3) / 1000.0;
            int rc =
                em_add_timer(c->loop, delay, on_client_step, c, &c->step_timer);
            CHK(rc == 0, "em_add_timer: %s", em_strerror(rc));
            return;
        }
    }
    client_finish(c);
}

static void client_post_init(em_conn *conn, void *arg)
{
    client *c = arg;
    life_start(&c->l, conn, "client", c->st.id);
    CHK(em_is_connecting(conn) == 1, "client %u: not connecting", c->l.id);
    CHK(em_conn_arg(conn) == arg, "em_conn_arg");
    if (c->ending == END_ABORT) {
        double delay = (double)rnd_range(&c->rng, 0, 40) / 1000.0;
        int rc =
            em_add_timer(c->loop, delay, on_client_abort, c, &c->abort_timer);
        CHK(rc == 0, "em_add_timer: %s", em_strerror(rc));
    }
    if (c->ending == END_IDLE) {
        double t = (double)rnd_range(&c->rng, 5, 30) / 1000.0;
        int rc = em_set_comm_inactivity_timeout(conn, t);
        CHK(rc == 0, "em_set_comm_inactivity_timeout: %s", em_strerror(rc));
        CHK(fabs(em_get_comm_inactivity_timeout(conn) - t) < 1e-9,
            "inactivity timeout reads back %f",
            em_get_comm_inactivity_timeout(conn));
    }
    /* Data sent (and pauses made) before the connect completes wait. */
    if (one_in(&c->rng, 6))
        client_pause_self(c);
    if (one_in(&c->rng, 4))
        client_send_message(c);
}

static client *client_of(em_conn *conn, const char *cb)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "%s before post_init", cb);
    client *c = (client *)st->l;
    life_enter(conn, &c->l, cb);
    return c;
}

static void client_completed(em_conn *conn)
{
    client *c = client_of(conn, "connection_completed");
    CHK(c->l.completes == 0, "client %u: completed twice", c->l.id);
    CHK(em_is_connecting(conn) == 0, "still connecting in completed");
    c->l.completes = 1;
    client_step(c);
}

static void client_receive(em_conn *conn, const char *data, size_t len)
{
    client *c = client_of(conn, "receive_data");
    CHK(len > 0, "receive_data with 0 bytes");
    CHK(em_is_paused(conn) == 0, "client %u: receive_data while paused",
        c->l.id);
    CHK(c->l.completes == 1, "client %u: data before completed", c->l.id);
    CHK(c->got + len <= c->sent,
        "client %u: echo of %" PRIu64 " bytes, sent %" PRIu64, c->l.id,
        c->got + len, c->sent);
    long bad = stream_check(&c->st, c->got, data, len);
    CHK(bad < 0, "client %u: echo corrupt at offset %" PRIu64, c->l.id,
        c->got + (uint64_t)bad);
    c->got += len;
    if (c->ending == END_WAIT_ECHO && c->done_sending && !c->closed &&
        c->got == c->sent)
        client_close(c, (int)(rnd(&c->rng) & 1));
}

static void client_drained(em_conn *conn)
{
    client_of(conn, "drained");
    CHK(em_get_outbound_data_size(conn) == 0, "drained with data queued");
}

static void client_unbind(em_conn *conn, int reason)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "unbind before post_init");
    client *c = (client *)st->l;
    life_unbind(conn, &c->l, reason);
    cancel_timer(c->loop, &c->step_timer);
    cancel_timer(c->loop, &c->resume_timer);
    cancel_timer(c->loop, &c->abort_timer);
    if (reason == -ETIMEDOUT)
        CS.idle_timeouts++;
    CS.client_unbinds++;
}

static const em_handler client_handler = {
    .state_size = sizeof(slot),
    .post_init = client_post_init,
    .connection_completed = client_completed,
    .receive_data = client_receive,
    .drained = client_drained,
    .unbind = client_unbind,
};

static void client_plan(client *c, em_loop *loop, uint32_t id)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->st = stream_of(id);
    c->rng = rng_for(0xc11e47, id);
    c->ending = (enum ending)(rnd(&c->rng) % END_KINDS);
    c->nmsgs = (int)rnd_range(&c->rng, 1, 6);
    c->max_log2 = 18; /* 256 KiB */
}

static void client_connect(client *c, int port)
{
    em_conn *conn = NULL;
    int rc = em_connect(c->loop, "127.0.0.1", port, &client_handler, c, &conn);
    CHK(rc == 0, "em_connect: %s", em_strerror(rc));
    CHK(conn != NULL && conn == c->l.conn, "em_connect's *out");
}

/* ====================================================================== */
/* 1. echo chaos                                                          */
/* ====================================================================== */

#define N_CLIENTS 200

typedef struct srvconn {
    life l;
    uint64_t rng;
    uint64_t got;
    uint8_t hdr[STREAM_HDR];
    client *c;         /* whose stream this is, once 4 bytes arrived */
    uint64_t close_at; /* the server closes after this many bytes */
    int close_after_writing, closed;
    em_timer_id resume_timer;
    em_loop *loop;
} srvconn;

static struct {
    em_loop *loop;
    client clients[N_CLIENTS];
    srvconn servers[N_CLIENTS];
    int nservers, server_unbinds;
    int server_pauses, server_closes;
} CH;

static srvconn *srv_of(em_conn *conn, const char *cb)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "%s before post_init", cb);
    srvconn *s = (srvconn *)st->l;
    life_enter(conn, &s->l, cb);
    return s;
}

static void srv_post_init(em_conn *conn, void *arg)
{
    CHK(arg == &CH, "server arg");
    CHK(CH.nservers < N_CLIENTS, "more accepted connections than clients");
    srvconn *s = &CH.servers[CH.nservers];
    life_start(&s->l, conn, "server", (uint32_t)CH.nservers);
    CH.nservers++;
    s->loop = CH.loop;
    s->rng = rng_for(0x5e7e7, s->l.id);
    s->close_at = UINT64_MAX;
    CHK(em_is_connecting(conn) == 0, "accepted connection connecting");
}

/* The first bytes name the client; its script decides the server's. */
static void srv_identify(srvconn *s)
{
    uint32_t id = (uint32_t)s->hdr[0] | (uint32_t)s->hdr[1] << 8 |
                  (uint32_t)s->hdr[2] << 16 | (uint32_t)s->hdr[3] << 24;
    CHK(id < N_CLIENTS, "server %u: stream header names client %u", s->l.id,
        id);
    client *c = &CH.clients[id];
    CHK(c->peer == NULL, "client %u seen on two accepted connections", id);
    c->peer = s;
    s->c = c;
    s->rng = rng_for(0x5e7e8, id);
    if (one_in(&s->rng, 8)) {
        s->close_at = STREAM_HDR + rnd_size(&s->rng, 17);
        s->close_after_writing = (int)(rnd(&s->rng) & 1);
    }
}

static void on_srv_resume(em_loop *loop, void *arg)
{
    (void)loop;
    srvconn *s = arg;
    s->resume_timer = 0;
    if (!s->l.conn)
        return;
    int rc = em_resume(s->l.conn);
    CHK(rc == 0, "server %u: em_resume: %s", s->l.id, em_strerror(rc));
}

static void srv_close(srvconn *s)
{
    int rc = em_close_connection(s->l.conn, s->close_after_writing);
    CHK(rc == 0, "server close: %s", em_strerror(rc));
    s->closed = 1;
    s->c->server_closed = 1;
    if (!s->close_after_writing)
        s->l.closed_now = 1;
    CH.server_closes++;
}

static void srv_pause(srvconn *s)
{
    int rc = em_pause(s->l.conn);
    CHK(rc == 0, "server em_pause: %s", em_strerror(rc));
    CH.server_pauses++;
    rc = em_add_timer(s->loop, (double)rnd_range(&s->rng, 1, 4) / 1000.0,
                      on_srv_resume, s, &s->resume_timer);
    CHK(rc == 0, "em_add_timer: %s", em_strerror(rc));
}

static void srv_receive(em_conn *conn, const char *data, size_t len)
{
    srvconn *s = srv_of(conn, "receive_data");
    CHK(len > 0, "receive_data with 0 bytes");
    CHK(em_is_paused(conn) == 0, "server %u: receive_data while paused",
        s->l.id);
    uint64_t off = s->got;
    for (size_t i = 0; off + i < STREAM_HDR && i < len; i++)
        s->hdr[off + i] = (uint8_t)data[i];
    s->got += len;
    if (!s->c && s->got >= STREAM_HDR)
        srv_identify(s);
    client *c = s->c;
    if (c) {
        CHK(s->got <= c->sent,
            "client %u: server got %" PRIu64 ", sent %" PRIu64, c->l.id, s->got,
            c->sent);
        long bad = stream_check(&c->st, off, data, len);
        CHK(bad < 0, "client %u: server got a corrupt byte at %" PRIu64,
            c->l.id, off + (uint64_t)bad);
    }
    if (!s->closed) {
        int rc = em_send_data(conn, data, len);
        /* Only a client that closed its socket can make the echo fail. */
        CHK(rc == 0 || (is_peer_gone(rc) && c && (c->closed || c->l.unbinds)),
            "server %u: echo: %s", s->l.id, em_strerror(rc));
        if (rc < 0)
            return; /* closed by the failure: unbind comes next */
    }
    if (c && !s->closed && s->got >= s->close_at)
        srv_close(s);
    else if (!s->resume_timer && one_in(&s->rng, 6))
        srv_pause(s);
}

static void srv_drained(em_conn *conn)
{
    srv_of(conn, "drained");
}

static void srv_unbind(em_conn *conn, int reason)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "unbind before post_init");
    srvconn *s = (srvconn *)st->l;
    life_unbind(conn, &s->l, reason);
    cancel_timer(s->loop, &s->resume_timer);
    CH.server_unbinds++;
}

static const em_handler srv_handler = {
    .state_size = sizeof(slot),
    .post_init = srv_post_init,
    .receive_data = srv_receive,
    .drained = srv_drained,
    .unbind = srv_unbind,
};

static int chaos_done(void *arg)
{
    (void)arg;
    return CS.client_unbinds == N_CLIENTS && em_connection_count(CH.loop) == 0;
}

/* The reason a client's unbind must have, when the server left it alone. */
static int undisturbed_reason(const client *c)
{
    return c->ending == END_IDLE ? -ETIMEDOUT : 0;
}

static void check_client(const client *c)
{
    const char *how = ending_name[c->ending];
    uint32_t id = c->l.id;
    CHK(c->l.post_inits == 1 && c->l.unbinds == 1,
        "client %u (%s): %d post_init, %d unbind", id, how, c->l.post_inits,
        c->l.unbinds);
    CHK(c->ending == END_ABORT || c->l.completes == 1,
        "client %u (%s): never completed, unbind %s", id, how,
        em_err_name(c->l.reason));
    CHK(c->got <= c->sent, "client %u: more echo than sent", id);
    if (!c->server_closed) {
        CHK(c->l.reason == undisturbed_reason(c), "client %u (%s): unbind %s",
            id, how, em_err_name(c->l.reason));
    } else {
        CHK(c->l.reason == 0 || is_peer_gone(c->l.reason) ||
                (c->ending == END_IDLE && c->l.reason == -ETIMEDOUT),
            "client %u (%s), closed by the server: unbind %s", id, how,
            em_err_name(c->l.reason));
    }
    /* Completed normally: every byte came back, in order (checked as it
     * arrived), and the server saw the whole stream. */
    if ((c->ending == END_HALF_CLOSE || c->ending == END_WAIT_ECHO) &&
        !c->server_closed) {
        CHK(c->done_sending && c->msgs_sent == c->nmsgs,
            "client %u (%s): script unfinished", id, how);
        CHK(c->got == c->sent,
            "client %u (%s): %" PRIu64 " of %" PRIu64 " bytes echoed", id, how,
            c->got, c->sent);
        CHK(c->peer != NULL, "client %u: no accepted side", id);
        CHK(c->peer->got == c->sent,
            "client %u: server got %" PRIu64 " of %" PRIu64, id, c->peer->got,
            c->sent);
        CHK(c->peer->l.reason == 0, "client %u: server side unbind %s", id,
            em_err_name(c->peer->l.reason));
    }
    if (c->got >= STREAM_HDR)
        CHK(c->peer != NULL, "client %u: echoed, yet no accepted side", id);
}

static void check_server(const srvconn *s)
{
    CHK(s->l.post_inits == 1 && s->l.unbinds == 1,
        "server %u: %d post_init, %d unbind", s->l.id, s->l.post_inits,
        s->l.unbinds);
    CHK(s->l.reason == 0 || is_peer_gone(s->l.reason), "server %u: unbind %s",
        s->l.id, em_err_name(s->l.reason));
}

/* The seed must actually have produced the chaos it is meant to. */
static void check_coverage(void)
{
    int endings[END_KINDS] = {0};
    uint64_t bytes = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        endings[CH.clients[i].ending]++;
        bytes += CH.clients[i].sent;
    }
    for (int k = 0; k < END_KINDS; k++)
        CHK(endings[k] > 0, "no client ended by %s", ending_name[k]);
    CHK(CS.self_pauses > 0 && CH.server_pauses > 0, "no pauses");
    CHK(CH.server_closes > 0, "the server closed nothing");
    CHK(CS.idle_timeouts > 0, "no inactivity timeout fired");
    CHK(bytes > 4 * MiB, "only %" PRIu64 " bytes sent", bytes);
}

Test(chaos, echo_chaos_200_scripted_clients, .timeout = TH_TIMEOUT(30))
{
    seed_init(0xc4a05eedull);
    memset(&CH, 0, sizeof CH);
    memset(&CS, 0, sizeof CS);
    em_loop *loop = CH.loop = th_loop();
    em_server *srv = start_server(loop, &srv_handler, &CH);
    int port = th_listen_port(srv);

    for (uint32_t i = 0; i < N_CLIENTS; i++) {
        client_plan(&CH.clients[i], loop, i);
        client_connect(&CH.clients[i], port);
    }
    run_until(loop, chaos_done, NULL, 25, "echo chaos");
    /* A connection aborted before it was accepted may still be in the
     * backlog: give the listener a few more turns. */
    run_for(loop, 0.05);
    CHK(em_connection_count(loop) == 0, "%zu connections left",
        em_connection_count(loop));
    CHK(CH.server_unbinds == CH.nservers, "%d accepted, %d unbound",
        CH.nservers, CH.server_unbinds);

    for (int i = 0; i < N_CLIENTS; i++)
        check_client(&CH.clients[i]);
    for (int i = 0; i < CH.nservers; i++)
        check_server(&CH.servers[i]);
    check_coverage();

    CHK(em_stop_server(srv) == 0, "em_stop_server");
    th_free_loop(loop);
}

/* ====================================================================== */
/* 2. raw-socket abuse                                                    */
/* ====================================================================== */

#define ABUSE_MAX 4096
#define STORM_CONNS 2400
#define STALL_BYTES (8 * MiB) /* the kernel buffers take up to ~4 MiB */
#define GOOD_ID 7u

typedef struct abuse_rec {
    life l;
    uint64_t got;
} abuse_rec;

static struct {
    abuse_rec recs[ABUSE_MAX];
    int naccepted, unbinds;
    atomic_size_t max_queued; /* the largest outbound queue seen */
    client good;              /* the well-behaved em client */
} AB;

static void ab_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    CHK(AB.naccepted < ABUSE_MAX, "too many accepted connections");
    abuse_rec *r = &AB.recs[AB.naccepted];
    life_start(&r->l, conn, "accepted", (uint32_t)AB.naccepted);
    AB.naccepted++;
}

static abuse_rec *ab_of(em_conn *conn, const char *cb)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "%s before post_init", cb);
    life_enter(conn, st->l, cb);
    return (abuse_rec *)st->l;
}

static void ab_receive(em_conn *conn, const char *data, size_t len)
{
    abuse_rec *r = ab_of(conn, "receive_data");
    r->got += len;
    int rc = em_send_data(conn, data, len);
    CHK(rc == 0 || is_peer_gone(rc), "echo: %s", em_strerror(rc));
    size_t queued = em_get_outbound_data_size(conn);
    if (queued > atomic_load(&AB.max_queued))
        atomic_store(&AB.max_queued, queued);
}

static void ab_unbind(em_conn *conn, int reason)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "unbind before post_init");
    life_unbind(conn, st->l, reason);
    CHK(reason == 0 || is_peer_gone(reason), "accepted %u: unbind %s",
        st->l->id, em_err_name(reason));
    AB.unbinds++;
}

static const em_handler abuse_handler = {
    .state_size = sizeof(slot),
    .post_init = ab_post_init,
    .receive_data = ab_receive,
    .unbind = ab_unbind,
};

/* The abuser runs on its own thread with blocking sockets; it must not
 * cr_assert, so it records its first failure in err. */
typedef struct abuser {
    int port;
    uint64_t rng;
    int connected; /* connections that surely reached the backlog */
    int maybe;     /* non-blocking connects abandoned at once */
    char err[256];
    atomic_int done;
} abuser;

#define AB_FAIL(a, ...)                                                        \
    do {                                                                       \
        if (!(a)->err[0])                                                      \
            snprintf((a)->err, sizeof(a)->err, __VA_ARGS__);                   \
    } while (0)

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

/* A blocking connected socket (5 s timeouts); rcvbuf > 0 shrinks the
 * receive buffer first. Returns -1 after AB_FAIL. */
static int ab_connect(abuser *a, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        AB_FAIL(a, "socket: %s", strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = TH_TIMEOUT(5)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sin = loopback(a->port);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        AB_FAIL(a, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    a->connected++;
    return fd;
}

/* close() with SO_LINGER {1, 0}: the peer gets an RST, not a FIN. */
static void ab_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static int ab_send_all(abuser *a, int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            AB_FAIL(a, "send: %s", n < 0 ? strerror(errno) : "0 bytes");
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void ab_garbage(abuser *a, uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)rnd(&a->rng);
}

static void act_reset_now(abuser *a)
{
    int fd = ab_connect(a, 0);
    if (fd >= 0)
        ab_reset(fd);
}

/* Sends, half-closes, and wants exactly its bytes back, then EOF. */
static void act_half_close(abuser *a)
{
    static uint8_t out[64 * KiB], back[64 * KiB + 1];
    size_t len = rnd_size(&a->rng, 16);
    int fd = ab_connect(a, 0);
    if (fd < 0)
        return;
    ab_garbage(a, out, len);
    if (ab_send_all(a, fd, out, len) == 0 && shutdown(fd, SHUT_WR) == 0) {
        size_t got = 0;
        for (;;) {
            ssize_t n = recv(fd, back + got, sizeof back - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                if (n < 0)
                    AB_FAIL(a, "half-close recv: %s", strerror(errno));
                break;
            }
            got += (size_t)n;
            if (got > len)
                break;
        }
        if (got != len || memcmp(out, back, len) != 0)
            AB_FAIL(a, "half-close echo: %zu of %zu bytes, or corrupt", got,
                    len);
    }
    close(fd);
}

static void act_garbage_vanish(abuser *a)
{
    static uint8_t out[128 * KiB];
    size_t len = rnd_size(&a->rng, 17);
    int fd = ab_connect(a, 0);
    if (fd < 0)
        return;
    ab_garbage(a, out, len);
    ab_send_all(a, fd, out, len);
    if (rnd(&a->rng) & 1)
        ab_reset(fd);
    else
        close(fd);
}

/* Never reads: the server's echo piles up in its queue; then an RST. */
static void act_stall_then_reset(abuser *a)
{
    static uint8_t out[256 * KiB];
    atomic_store(&AB.max_queued, 0);
    int fd = ab_connect(a, 4096);
    if (fd < 0)
        return;
    ab_garbage(a, out, sizeof out);
    for (size_t sent = 0; sent < STALL_BYTES; sent += sizeof out)
        if (ab_send_all(a, fd, out, sizeof out) < 0)
            break;
    double deadline = th_now() + TH_TIMEOUT(5);
    while (atomic_load(&AB.max_queued) < 2 * MiB && th_now() < deadline)
        usleep(1000);
    if (atomic_load(&AB.max_queued) < 2 * MiB)
        AB_FAIL(a, "the server queued only %zu bytes for a stalled reader",
                atomic_load(&AB.max_queued));
    ab_reset(fd);
}

/* A non-blocking connect abandoned at once: the server may never see it. */
static void act_abandon_connect(abuser *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        AB_FAIL(a, "socket: %s", strerror(errno));
        return;
    }
    struct sockaddr_in sin = loopback(a->port);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0 ||
        errno == EINPROGRESS)
        a->maybe++;
    else
        AB_FAIL(a, "non-blocking connect: %s", strerror(errno));
    if (rnd(&a->rng) & 1)
        ab_reset(fd);
    else
        close(fd);
}

static void act_storm(abuser *a, int count)
{
    for (int i = 0; i < count && !a->err[0]; i++) {
        int fd = ab_connect(a, 0);
        if (fd < 0)
            return;
        if (rnd(&a->rng) & 1)
            ab_reset(fd);
        else
            close(fd);
    }
}

static void *abuse_main(void *arg)
{
    abuser *a = arg;
    void (*const acts[])(abuser *) = {act_reset_now, act_half_close,
                                      act_garbage_vanish, act_abandon_connect};
    for (int round = 0; round < 8 && !a->err[0]; round++) {
        act_storm(a, STORM_CONNS / 8);
        for (int i = 0; i < 12 && !a->err[0]; i++)
            acts[rnd(&a->rng) % 4](a);
        if (round == 2 || round == 5)
            act_stall_then_reset(a);
    }
    atomic_store(&a->done, 1);
    return NULL;
}

static int all_accepted_unbound(void *arg)
{
    (void)arg;
    return AB.unbinds == AB.naccepted;
}

static int abuse_done(void *arg)
{
    abuser *a = arg;
    return atomic_load(&a->done) && AB.good.l.unbinds &&
           (a->err[0] || AB.naccepted >= a->connected + 1) &&
           em_connection_count(AB.good.loop) == 0;
}

/* After all that, the server still accepts and echoes. */
static void check_survivor(em_loop *loop, int port)
{
    static const char probe[] = "still serving";
    char back[sizeof probe];
    int fd = th_client_connect(port);
    th_send_all(fd, probe, sizeof probe);
    size_t n = th_pump_recv(loop, fd, back, sizeof back, 5);
    CHK(n == sizeof probe && memcmp(back, probe, n) == 0, "probe echo");
    close(fd);
    run_until(loop, all_accepted_unbound, NULL, 5, "the probe's unbind");
}

Test(chaos, raw_socket_abuse_while_a_good_client_runs,
     .timeout = TH_TIMEOUT(30))
{
    seed_init(0xab05edull);
    memset(&AB, 0, sizeof AB);
    memset(&CS, 0, sizeof CS);
    em_loop *loop = th_loop();
    em_server *srv = start_server(loop, &abuse_handler, NULL);
    int port = th_listen_port(srv);

    client *good = &AB.good;
    client_plan(good, loop, GOOD_ID);
    good->ending = END_HALF_CLOSE;
    good->nmsgs = 400;
    good->max_log2 = 17;
    client_connect(good, port);

    abuser a = {.port = port, .rng = rng_for(0xab05e, 0)};
    pthread_t thread;
    CHK(pthread_create(&thread, NULL, abuse_main, &a) == 0, "pthread_create");
    run_until(loop, abuse_done, &a, 25, "raw abuse");
    pthread_join(thread, NULL);
    CHK(a.err[0] == 0, "abuser: %s", a.err);

    run_for(loop, 0.05); /* a straggler in the backlog? */
    CHK(em_connection_count(loop) == 0, "%zu connections left",
        em_connection_count(loop));
    CHK(AB.unbinds == AB.naccepted, "%d accepted, %d unbound", AB.naccepted,
        AB.unbinds);
    CHK(AB.naccepted >= a.connected + 1 &&
            AB.naccepted <= a.connected + a.maybe + 1,
        "%d accepted for %d connects (+%d abandoned, +1 good client)",
        AB.naccepted, a.connected, a.maybe);
    for (int i = 0; i < AB.naccepted; i++)
        CHK(AB.recs[i].l.unbinds == 1, "accepted %d: %d unbinds", i,
            AB.recs[i].l.unbinds);

    CHK(good->l.unbinds == 1 && good->l.reason == 0, "good client: unbind %s",
        em_err_name(good->l.reason));
    CHK(good->done_sending && good->msgs_sent == good->nmsgs,
        "good client: script unfinished");
    CHK(good->got == good->sent,
        "good client: %" PRIu64 " of %" PRIu64 " bytes echoed", good->got,
        good->sent);

    check_survivor(loop, port);
    CHK(em_stop_server(srv) == 0, "em_stop_server");
    th_free_loop(loop);
}

/* ====================================================================== */
/* 3. callbacks that misuse the API                                       */
/* ====================================================================== */

/* A small tracked handler: accepted connections (arg == &mini_server)
 * echo, outbound ones keep what they receive; hooks add the misuse. Every
 * unbind runs misuse_in_unbind through life_unbind. */
#define MINI_MAX 64

typedef struct mini {
    life l;
    int server;
    char got[64];
    size_t ngot;
} mini;

static int mini_server, mini_client; /* their addresses tell roles apart */

static struct {
    em_loop *loop;
    em_server *server;
    mini recs[MINI_MAX];
    int n, unbinds, last_reason;
    void (*on_post_init)(em_conn *conn, mini *m);
    void (*on_completed)(em_conn *conn, mini *m);
    void (*on_unbind)(em_conn *conn, mini *m, int reason);
} MI;

static mini *mini_of(em_conn *conn, const char *cb)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "%s before post_init", cb);
    life_enter(conn, st->l, cb);
    return (mini *)st->l;
}

static void mini_post_init(em_conn *conn, void *arg)
{
    CHK(MI.n < MINI_MAX, "too many connections");
    mini *m = &MI.recs[MI.n];
    life_start(&m->l, conn, arg == &mini_server ? "server" : "client",
               (uint32_t)MI.n);
    MI.n++;
    m->server = arg == &mini_server;
    if (MI.on_post_init)
        MI.on_post_init(conn, m);
}

static void mini_completed(em_conn *conn)
{
    mini *m = mini_of(conn, "connection_completed");
    CHK(!m->server && m->l.completes == 0, "connection_completed");
    m->l.completes = 1;
    if (MI.on_completed)
        MI.on_completed(conn, m);
}

static void mini_receive(em_conn *conn, const char *data, size_t len)
{
    mini *m = mini_of(conn, "receive_data");
    if (m->server) {
        int rc = em_send_data(conn, data, len);
        CHK(rc == 0 || is_peer_gone(rc), "echo: %s", em_strerror(rc));
        return;
    }
    size_t room = sizeof m->got - m->ngot;
    size_t n = len < room ? len : room;
    memcpy(m->got + m->ngot, data, n);
    m->ngot += n;
}

static void mini_unbind(em_conn *conn, int reason)
{
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "unbind before post_init");
    mini *m = (mini *)st->l;
    life_unbind(conn, &m->l, reason);
    MI.unbinds++;
    MI.last_reason = reason;
    if (MI.on_unbind)
        MI.on_unbind(conn, m, reason);
}

static const em_handler mini_handler = {
    .state_size = sizeof(slot),
    .post_init = mini_post_init,
    .connection_completed = mini_completed,
    .receive_data = mini_receive,
    .unbind = mini_unbind,
};

static em_loop *mini_setup(void)
{
    memset(&MI, 0, sizeof MI);
    MI.loop = th_loop();
    MI.server = start_server(MI.loop, &mini_handler, &mini_server);
    return MI.loop;
}

static int mini_n_target, mini_unbind_target;

static int mini_reached(void *arg)
{
    (void)arg;
    return MI.n >= mini_n_target && MI.unbinds >= mini_unbind_target;
}

/* Turns until `n` connections exist and `unbinds` unbinds ran. */
static void mini_wait(int n, int unbinds, const char *what)
{
    mini_n_target = n;
    mini_unbind_target = unbinds;
    run_until(MI.loop, mini_reached, NULL, 5, what);
}

static em_conn *mini_connect(int port)
{
    em_conn *conn = NULL;
    int rc = em_connect(MI.loop, "127.0.0.1", port, &mini_handler, &mini_client,
                        &conn);
    CHK(rc == 0, "em_connect: %s", em_strerror(rc));
    return conn;
}

/* A port nobody listens on. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = loopback(0);
    socklen_t len = sizeof sin;
    CHK(fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
            getsockname(fd, (struct sockaddr *)&sin, &len) == 0,
        "bind: %s", strerror(errno));
    close(fd);
    return ntohs(sin.sin_port);
}

/* During em_stop's shutdown, nothing new may start. */
static void unbind_while_stopping(em_conn *conn, mini *m, int reason)
{
    (void)m;
    (void)reason;
    em_loop *loop = em_conn_loop(conn);
    CHK(em_is_stopping(loop) == 1, "unbind during stop: not stopping");
    CHK(em_connect(loop, "127.0.0.1", 1, &mini_handler, NULL, NULL) ==
            -ECANCELED,
        "em_connect while stopping");
    CHK(em_start_server(loop, "127.0.0.1", 0, &mini_handler, NULL, NULL,
                        NULL) == -ECANCELED,
        "em_start_server while stopping");
}

/* Every way to reach unbind; each unbind tries the whole API on its dead
 * connection (misuse_in_unbind) and must get errors, never a crash. */
Test(chaos, api_inside_unbind_fails_cleanly_on_every_path,
     .timeout = TH_TIMEOUT(20))
{
    seed_init(0x0b1d);
    em_loop *loop = mini_setup();
    int port = th_listen_port(MI.server);

    int fd = th_client_connect(port); /* peer FIN: 0 */
    mini_wait(1, 0, "accept 1");
    close(fd);
    mini_wait(1, 1, "FIN");
    CHK(MI.last_reason == 0, "FIN: unbind %s", em_err_name(MI.last_reason));

    fd = th_client_connect(port); /* peer RST: -ECONNRESET */
    mini_wait(2, 1, "accept 2");
    ab_reset(fd);
    mini_wait(2, 2, "RST");
    CHK(MI.last_reason == -ECONNRESET, "RST: unbind %s",
        em_err_name(MI.last_reason));

    mini_connect(dead_port()); /* refused */
    mini_wait(3, 3, "refused");
    CHK(MI.last_reason == -ECONNREFUSED, "refused: unbind %s",
        em_err_name(MI.last_reason));

    em_conn *idle = mini_connect(port); /* inactivity: -ETIMEDOUT, and 0 */
    CHK(em_set_comm_inactivity_timeout(idle, 0.02) == 0, "timeout");
    mini_wait(5, 5, "inactivity timeout");
    CHK(MI.recs[3].l.reason == -ETIMEDOUT, "idle client: unbind %s",
        em_err_name(MI.recs[3].l.reason));
    CHK(MI.recs[4].l.reason == 0, "its server side: unbind %s",
        em_err_name(MI.recs[4].l.reason));

    em_conn *own = mini_connect(port); /* own close after writing: 0 */
    CHK(em_send_data(own, "bye", 3) == 0, "send");
    CHK(em_close_connection(own, 1) == 0, "close after writing");
    mini_wait(7, 7, "own close");
    CHK(MI.recs[5].l.reason == 0 && MI.recs[6].l.reason == 0, "own close");

    mini_connect(port); /* em_stop: everything, reason 0 */
    mini_connect(port);
    mini_wait(11, 7, "two more pairs");
    MI.on_unbind = unbind_while_stopping;
    CHK(em_stop(loop) == 0, "em_stop");
    CHK(em_run_once(loop, 0) == 1, "em_run_once after em_stop");
    CHK(MI.unbinds == 11 && em_connection_count(loop) == 0, "%d unbinds",
        MI.unbinds);
    for (int i = 7; i < 11; i++)
        CHK(MI.recs[i].l.reason == 0, "stop: unbind %s",
            em_err_name(MI.recs[i].l.reason));
    th_free_loop(loop); /* the server went with em_stop */
}

/* ---- em_loop_free with live handles ------------------------------------ */

/* "Stop the server when the last client leaves": the unbinds em_loop_free
 * runs may still use the server the application holds, as em_run's may. */
static void stop_server_in_unbind(em_conn *conn, mini *m, int reason)
{
    (void)conn;
    (void)m;
    (void)reason;
    CHK(em_server_port(MI.server) > 0, "server port inside unbind");
    CHK(em_stop_server(MI.server) == -EINVAL, "server already closed");
}

Test(chaos, unbinds_run_by_em_loop_free_may_use_the_server,
     .timeout = TH_TIMEOUT(10))
{
    seed_init(0xf7ee);
    em_loop *loop = mini_setup();
    mini_connect(th_listen_port(MI.server));
    mini_wait(2, 0, "a connected pair");
    MI.on_unbind = stop_server_in_unbind;
    CHK(em_loop_free(loop) == -EBUSY, "em_loop_free with live handles");
    CHK(MI.unbinds == 2, "%d unbinds", MI.unbinds);
}

/* ---- em_stop_server inside post_init ---------------------------------- */

static struct {
    int stop_rc, again_rc, send_rc, close_conn;
} SP;

static void stop_server_in_post_init(em_conn *conn, mini *m)
{
    if (!m->server || MI.server == NULL)
        return;
    SP.stop_rc = em_stop_server(MI.server);
    SP.again_rc = em_stop_server(MI.server); /* still valid this batch */
    MI.server = NULL;
    SP.send_rc = em_send_data(conn, "welcome:", 8);
    if (SP.close_conn)
        CHK(em_close_connection(conn, 1) == 0, "close in post_init");
}

static void send_hello(em_conn *conn, mini *m)
{
    (void)m;
    int rc = em_send_data(conn, "hello", 5);
    CHK(rc == 0 || is_peer_gone(rc), "hello: %s", em_strerror(rc));
}

static void close_when_echoed(void)
{
    for (int i = 0; i < MI.n; i++) {
        mini *m = &MI.recs[i];
        if (!m->server && m->l.conn && m->ngot >= 13 && !m->l.closed_now) {
            CHK(em_close_connection(m->l.conn, 0) == 0, "close");
            m->l.closed_now = 1;
        }
    }
}

static int all_clients_unbound(void *nclients)
{
    close_when_echoed();
    int n = 0;
    for (int i = 0; i < MI.n; i++)
        n += !MI.recs[i].server && MI.recs[i].l.unbinds;
    return n == *(int *)nclients && em_connection_count(MI.loop) == 0;
}

/* 20 clients are in the backlog; the first accepted connection's
 * post_init closes the listener: nobody else is accepted, the accepted
 * one is served normally, the rest are reset, new connects are refused. */
static void stop_server_scenario(int close_conn)
{
    em_loop *loop = mini_setup();
    int port = th_listen_port(MI.server);
    memset(&SP, 0, sizeof SP);
    SP.close_conn = close_conn;
    MI.on_post_init = stop_server_in_post_init;
    /* With close_conn, a hello unread at close would turn the accepted
     * side's FIN into an RST: nobody says hello then. */
    MI.on_completed = close_conn ? NULL : send_hello;
    int nclients = 20;
    for (int i = 0; i < nclients; i++)
        mini_connect(port);
    run_until(loop, all_clients_unbound, &nclients, 10, "20 clients");

    CHK(SP.stop_rc == 0, "em_stop_server in post_init: %s",
        em_strerror(SP.stop_rc));
    CHK(SP.again_rc == -EINVAL, "second em_stop_server: %d", SP.again_rc);
    CHK(SP.send_rc == 0, "send in post_init: %s", em_strerror(SP.send_rc));
    int servers = 0, served = 0;
    for (int i = 0; i < MI.n; i++) {
        mini *m = &MI.recs[i];
        CHK(m->l.unbinds == 1, "%s %d: %d unbinds", m->l.who, i, m->l.unbinds);
        if (m->server) {
            servers++;
            continue;
        }
        if (m->ngot > 0) {
            served++;
            const char *want = close_conn ? "welcome:" : "welcome:hello";
            CHK(m->ngot == strlen(want) && memcmp(m->got, want, m->ngot) == 0,
                "served client got %.*s", (int)m->ngot, m->got);
            CHK(m->l.reason == 0, "served client: unbind %s",
                em_err_name(m->l.reason));
        } else {
            CHK(m->l.reason == 0 || is_peer_gone(m->l.reason) ||
                    m->l.reason == -ECONNREFUSED,
                "unserved client: unbind %s", em_err_name(m->l.reason));
        }
    }
    CHK(servers == 1 && served == 1, "%d accepted, %d served", servers, served);

    MI.on_completed = NULL;
    mini_connect(port);
    mini_wait(MI.n, MI.unbinds + 1, "connect after the listener closed");
    CHK(MI.last_reason == -ECONNREFUSED, "after stop: unbind %s",
        em_err_name(MI.last_reason));
    th_free_loop(loop);
}

Test(chaos, stop_server_inside_post_init, .timeout = TH_TIMEOUT(20))
{
    seed_init(0x5709);
    stop_server_scenario(0);
    stop_server_scenario(1);
}

/* ---- em_stop from receive_data, 100 transfers in flight ---------------- */

#define ST_CLIENTS 100
#define ST_TOTAL (1 * MiB)
#define ST_PIECE (16 * KiB)

typedef struct st_conn {
    life l;
    stream st;
    uint64_t sent, got;
    int server;
} st_conn;

static struct {
    em_loop *loop;
    st_conn clients[ST_CLIENTS], servers[ST_CLIENTS];
    int nservers, unbinds, stopped, after_run, guard_fired;
    uint64_t server_total;
    int in_flight_at_stop;
} ST;

static st_conn *st_of(em_conn *conn, const char *cb)
{
    CHK(!ST.after_run, "%s after em_run returned", cb);
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "%s before post_init", cb);
    life_enter(conn, st->l, cb);
    return (st_conn *)st->l;
}

static void st_post_init(em_conn *conn, void *arg)
{
    CHK(!ST.after_run, "post_init after em_run returned");
    st_conn *c = arg;
    if (c == NULL) { /* accepted */
        CHK(ST.nservers < ST_CLIENTS, "too many accepted");
        c = &ST.servers[ST.nservers];
        c->server = 1;
        life_start(&c->l, conn, "server", (uint32_t)ST.nservers++);
        return;
    }
    life_start(&c->l, conn, "client", c->st.id);
}

/* Keeps at most 64 KiB queued until the whole megabyte is out. */
static void st_pump(em_conn *conn, st_conn *c)
{
    while (c->sent < ST_TOTAL && em_get_outbound_data_size(conn) < 64 * KiB) {
        stream_fill(&c->st, c->sent, msg_buf, ST_PIECE);
        int rc = em_send_data(conn, msg_buf, ST_PIECE);
        CHK(rc == 0, "client %u: send: %s", c->l.id, em_strerror(rc));
        c->sent += ST_PIECE;
    }
}

static void st_completed(em_conn *conn)
{
    st_conn *c = st_of(conn, "connection_completed");
    c->l.completes = 1;
    st_pump(conn, c);
}

static void st_drained(em_conn *conn)
{
    st_pump(conn, st_of(conn, "drained"));
}

static void st_stop(void)
{
    ST.stopped = 1;
    for (int i = 0; i < ST_CLIENTS; i++)
        ST.in_flight_at_stop += ST.clients[i].got < ST_TOTAL;
    CHK(em_stop(ST.loop) == 0, "em_stop");
    CHK(em_is_stopping(ST.loop) == 1, "not stopping after em_stop");
}

static void st_receive(em_conn *conn, const char *data, size_t len)
{
    st_conn *c = st_of(conn, "receive_data");
    if (!c->server) {
        long bad = stream_check(&c->st, c->got, data, len);
        CHK(bad < 0 && c->got + len <= c->sent, "client %u: bad echo", c->l.id);
        c->got += len;
        return;
    }
    int rc = em_send_data(conn, data, len);
    CHK(rc == 0, "echo: %s", em_strerror(rc));
    ST.server_total += len;
    if (!ST.stopped && ST.nservers == ST_CLIENTS &&
        ST.server_total >= (uint64_t)ST_CLIENTS * ST_TOTAL / 4)
        st_stop();
}

static void st_unbind(em_conn *conn, int reason)
{
    CHK(!ST.after_run, "unbind after em_run returned");
    slot *st = em_conn_state(conn);
    CHK(st != NULL && st->l != NULL, "unbind before post_init");
    life_unbind(conn, st->l, reason);
    CHK(ST.stopped, "%s %u: unbind %s before em_stop", st->l->who, st->l->id,
        em_err_name(reason));
    CHK(reason == 0, "%s %u: unbind %s", st->l->who, st->l->id,
        em_err_name(reason));
    ST.unbinds++;
}

static const em_handler st_handler = {
    .state_size = sizeof(slot),
    .post_init = st_post_init,
    .connection_completed = st_completed,
    .receive_data = st_receive,
    .drained = st_drained,
    .unbind = st_unbind,
};

static void st_guard(em_loop *loop, void *arg)
{
    (void)arg;
    ST.guard_fired = 1;
    em_stop(loop);
}

Test(chaos, em_stop_from_receive_data_with_100_transfers_in_flight,
     .timeout = TH_TIMEOUT(30))
{
    seed_init(0x570b);
    memset(&ST, 0, sizeof ST);
    em_loop *loop = ST.loop = th_loop();
    em_server *srv = start_server(loop, &st_handler, NULL);
    int port = th_listen_port(srv);
    for (uint32_t i = 0; i < ST_CLIENTS; i++) {
        ST.clients[i].st = stream_of(i);
        int rc = em_connect(loop, "127.0.0.1", port, &st_handler,
                            &ST.clients[i], NULL);
        CHK(rc == 0, "em_connect: %s", em_strerror(rc));
    }
    em_timer_id guard;
    CHK(em_add_timer(loop, TH_TIMEOUT(20), st_guard, NULL, &guard) == 0,
        "guard timer");

    CHK(em_run(loop) == 0, "em_run");
    ST.after_run = 1;
    CHK(!ST.guard_fired, "em_stop never came (server got %" PRIu64 ")",
        ST.server_total);
    CHK(ST.unbinds == 2 * ST_CLIENTS, "%d unbinds before em_run returned",
        ST.unbinds);
    CHK(em_connection_count(loop) == 0, "connections left");
    CHK(ST.in_flight_at_stop >= ST_CLIENTS / 2, "only %d transfers in flight",
        ST.in_flight_at_stop);
    for (int i = 0; i < ST_CLIENTS; i++)
        CHK(ST.clients[i].l.unbinds == 1 && ST.servers[i].l.unbinds == 1,
            "pair %d: unbinds %d/%d", i, ST.clients[i].l.unbinds,
            ST.servers[i].l.unbinds);

    CHK(em_cancel_timer(loop, guard) == 0, "the guard is still pending");
    CHK(em_run_once(loop, 0) == 0, "a turn after em_run");
    th_free_loop(loop); /* the server was closed by em_stop */
}

/* ---- NULL and invalid arguments ---------------------------------------- */

typedef struct arg_row {
    const char *call;
    long long got, want;
} arg_row;

#define ANY_ERROR (-1000000) /* any negative errno will do */
#define ROW(call, want)                                                        \
    {                                                                          \
#call, (long long)(intptr_t)(call), (want)                             \
    }

static void check_rows(const arg_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const arg_row *r = &rows[i];
        if (r->want == ANY_ERROR)
            CHK(r->got < 0, "%s returned %lld, wanted an error", r->call,
                r->got);
        else
            CHK(r->got == r->want, "%s returned %lld, wanted %lld", r->call,
                r->got, r->want);
    }
}

static void noop(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

static void loop_rows(em_loop *L)
{
    const arg_row rows[] = {
        ROW(em_loop_new(NULL), -EINVAL),
        ROW(em_loop_free(NULL), -EINVAL),
        ROW(em_run(NULL), -EINVAL),
        ROW(em_run_once(NULL, 0), -EINVAL),
        ROW(em_stop(NULL), -EINVAL),
        ROW(em_is_stopping(NULL), 0),
        ROW(em_next_tick(NULL, noop, NULL), -EINVAL),
        ROW(em_next_tick(L, NULL, NULL), -EINVAL),
        ROW(em_schedule(NULL, noop, NULL), -EINVAL),
        ROW(em_schedule(L, NULL, NULL), -EINVAL),
        ROW(em_now(NULL), 0),
        ROW(em_now_ms(NULL), 0),
        ROW(em_update_time(NULL), 0),
        ROW(em_connection_count(NULL), 0),
        ROW(em_set_poll_hooks(NULL, noop, noop, NULL), -EINVAL),
        ROW(em_backend_fd(NULL), -EINVAL),
        ROW(em_add_timer(NULL, 1, noop, NULL, NULL), -EINVAL),
        ROW(em_add_timer(L, -1, noop, NULL, NULL), -EINVAL),
        ROW(em_add_timer(L, NAN, noop, NULL, NULL), -EINVAL),
        ROW(em_add_timer(L, INFINITY, noop, NULL, NULL), -EINVAL),
        ROW(em_add_timer(L, 1, NULL, NULL, NULL), -EINVAL),
        ROW(em_add_periodic_timer(NULL, 1, noop, NULL, NULL), -EINVAL),
        ROW(em_add_periodic_timer(L, 0, noop, NULL, NULL), -EINVAL),
        ROW(em_add_periodic_timer(L, -1, noop, NULL, NULL), -EINVAL),
        ROW(em_add_periodic_timer(L, NAN, noop, NULL, NULL), -EINVAL),
        ROW(em_add_periodic_timer(L, 1, NULL, NULL, NULL), -EINVAL),
        ROW(em_cancel_timer(NULL, 1), -EINVAL),
        ROW(em_cancel_timer(L, 0), -ENOENT),
        ROW(em_cancel_timer(L, 0xdeadbeefcafeull), -ENOENT),
        ROW(em_cancel_timer(L, UINT64_MAX), -ENOENT),
        ROW(em_timer_count(NULL), 0),
    };
    check_rows(rows, sizeof rows / sizeof rows[0]);
}

static void server_rows(em_loop *L, em_server *S, const em_handler *H)
{
    static const em_server_opts bad_backlog = {.backlog = -1};
    char path[108];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    th_unix_path(path, sizeof path, "chaos");
    const arg_row rows[] = {
        ROW(em_start_server(NULL, "127.0.0.1", 0, H, NULL, NULL, NULL),
            -EINVAL),
        ROW(em_start_server(L, "127.0.0.1", 0, NULL, NULL, NULL, NULL),
            -EINVAL),
        ROW(em_start_server(L, "127.0.0.1", -1, H, NULL, NULL, NULL), -EINVAL),
        ROW(em_start_server(L, "127.0.0.1", 65536, H, NULL, NULL, NULL),
            -EINVAL),
        ROW(em_start_server(L, "127.0.0.1", 0, H, NULL, &bad_backlog, NULL),
            -EINVAL),
        ROW(em_start_unix_server(NULL, path, H, NULL, NULL, NULL), -EINVAL),
        ROW(em_start_unix_server(L, NULL, H, NULL, NULL, NULL), -EINVAL),
        ROW(em_start_unix_server(L, "", H, NULL, NULL, NULL), -EINVAL),
        ROW(em_start_unix_server(L, path, NULL, NULL, NULL, NULL), -EINVAL),
        ROW(em_stop_server(NULL), -EINVAL),
        ROW(em_server_port(NULL), -EINVAL),
        ROW(em_server_sockname(NULL, (struct sockaddr *)&ss, &len), -EINVAL),
        ROW(em_server_sockname(S, NULL, &len), -EINVAL),
        ROW(em_server_sockname(S, (struct sockaddr *)&ss, NULL), -EINVAL),
    };
    check_rows(rows, sizeof rows / sizeof rows[0]);
}

static void connect_rows(em_loop *L, em_conn *C, const em_handler *H, int port)
{
    const char *lo = "127.0.0.1";
    const arg_row rows[] = {
        ROW(em_connect(NULL, lo, port, H, NULL, NULL), -EINVAL),
        ROW(em_connect(L, NULL, port, H, NULL, NULL), -EINVAL),
        ROW(em_connect(L, "", port, H, NULL, NULL), -EINVAL),
        ROW(em_connect(L, lo, 0, H, NULL, NULL), -EINVAL),
        ROW(em_connect(L, lo, -1, H, NULL, NULL), -EINVAL),
        ROW(em_connect(L, lo, 65536, H, NULL, NULL), -EINVAL),
        ROW(em_connect(L, lo, port, NULL, NULL, NULL), -EINVAL),
        ROW(em_bind_connect(NULL, NULL, 0, lo, port, H, NULL, NULL), -EINVAL),
        ROW(em_bind_connect(L, NULL, -1, lo, port, H, NULL, NULL), -EINVAL),
        ROW(em_bind_connect(L, NULL, 65536, lo, port, H, NULL, NULL), -EINVAL),
        ROW(em_bind_connect(L, "not an address", 0, lo, port, H, NULL, NULL),
            -EINVAL),
        ROW(em_connect_unix(NULL, "/tmp/x", H, NULL, NULL), -EINVAL),
        ROW(em_connect_unix(L, NULL, H, NULL, NULL), -EINVAL),
        ROW(em_connect_unix(L, "/tmp/x", NULL, NULL, NULL), -EINVAL),
        ROW(em_reconnect(NULL, lo, port), -EINVAL),
        ROW(em_reconnect(C, NULL, port), -EINVAL),
        ROW(em_reconnect(C, "", port), -EINVAL),
        ROW(em_reconnect(C, lo, 0), -EINVAL),
        ROW(em_reconnect(C, lo, 65536), -EINVAL),
        ROW(em_reconnect(C, lo, port), -EISCONN), /* outside unbind */
    };
    check_rows(rows, sizeof rows / sizeof rows[0]);
}

static void null_conn_rows(void)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int v = 1;
    socklen_t vl = sizeof v;
    struct sockaddr *sa = (struct sockaddr *)&ss;
    const arg_row rows[] = {
        ROW(em_conn_state(NULL), 0),
        ROW(em_conn_loop(NULL), 0),
        ROW(em_conn_arg(NULL), 0),
        ROW(em_send_data(NULL, "x", 1), -EINVAL),
        ROW(em_close_connection(NULL, 0), -EINVAL),
        ROW(em_close_connection(NULL, 1), -EINVAL),
        ROW(em_close_write(NULL), -EINVAL),
        ROW(em_pause(NULL), -EINVAL),
        ROW(em_resume(NULL), -EINVAL),
        ROW(em_is_paused(NULL), 0),
        ROW(em_get_outbound_data_size(NULL), 0),
        ROW(em_set_comm_inactivity_timeout(NULL, 1), -EINVAL),
        ROW(em_get_comm_inactivity_timeout(NULL), 0),
        ROW(em_set_pending_connect_timeout(NULL, 1), -EINVAL),
        ROW(em_get_pending_connect_timeout(NULL), 0),
        ROW(em_get_idle_time(NULL), 0),
        ROW(em_is_connecting(NULL), 0),
        ROW(em_get_peername(NULL, sa, &len), -EINVAL),
        ROW(em_get_sockname(NULL, sa, &len), -EINVAL),
        ROW(em_get_sock_opt(NULL, SOL_SOCKET, SO_RCVBUF, &v, &vl), -EINVAL),
        ROW(em_set_sock_opt(NULL, SOL_SOCKET, SO_RCVBUF, &v, vl), -EINVAL),
        ROW(em_enable_keepalive(NULL, 0, 0, 0), -EINVAL),
        ROW(em_disable_keepalive(NULL), -EINVAL),
        ROW(em_conn_error(NULL), -EINVAL),
    };
    check_rows(rows, sizeof rows / sizeof rows[0]);
}

static void bad_value_rows(em_conn *C)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int v = 1;
    socklen_t vl = sizeof v;
    struct sockaddr *sa = (struct sockaddr *)&ss;
    const arg_row rows[] = {
        ROW(em_send_data(C, NULL, 1), -EINVAL),
        ROW(em_send_data(C, NULL, 0), 0), /* nothing to send */
        ROW(em_set_comm_inactivity_timeout(C, -1), -EINVAL),
        ROW(em_set_comm_inactivity_timeout(C, NAN), -EINVAL),
        ROW(em_set_comm_inactivity_timeout(C, INFINITY), -EINVAL),
        ROW(em_set_comm_inactivity_timeout(C, 1e10), -EINVAL),
        ROW(em_set_pending_connect_timeout(C, -1), -EINVAL),
        ROW(em_set_pending_connect_timeout(C, NAN), -EINVAL),
        ROW(em_get_peername(C, NULL, &len), -EINVAL),
        ROW(em_get_peername(C, sa, NULL), -EINVAL),
        ROW(em_get_sockname(C, NULL, &len), -EINVAL),
        ROW(em_get_sockname(C, sa, NULL), -EINVAL),
        ROW(em_get_sock_opt(C, SOL_SOCKET, SO_RCVBUF, NULL, &vl), -EINVAL),
        ROW(em_get_sock_opt(C, SOL_SOCKET, SO_RCVBUF, &v, NULL), -EINVAL),
        ROW(em_get_sock_opt(C, SOL_SOCKET, 99999, &v, &vl), ANY_ERROR),
        ROW(em_set_sock_opt(C, SOL_SOCKET, SO_RCVBUF, NULL, 4), -EINVAL),
        ROW(em_set_sock_opt(C, 12345, 678, &v, vl), ANY_ERROR),
        ROW(em_enable_keepalive(C, -1, 0, 0), -EINVAL),
        ROW(em_enable_keepalive(C, 0, -1, 0), -EINVAL),
        ROW(em_enable_keepalive(C, 0, 0, -1), -EINVAL),
        ROW(em_enable_keepalive(C, 100000, 0, 0), ANY_ERROR),
        ROW(em_strerror(-2147483647 - 1) != NULL, 1),
        ROW(em_strerror(12345) != NULL, 1),
        ROW(em_err_name(-2147483647 - 1) != NULL, 1),
        ROW(em_err_name(1) != NULL, 1),
    };
    check_rows(rows, sizeof rows / sizeof rows[0]);
}

/* Re-entering the loop from one of its own callbacks. */
static void reentry_rows(em_loop *L, void *arg)
{
    const arg_row rows[] = {
        ROW(em_run(L), -EBUSY), ROW(em_run_once(L, 0), -EBUSY),
        ROW(em_loop_free(L), -EDEADLK), /* not freed: it is running */
    };
    check_rows(rows, sizeof rows / sizeof rows[0]);
    *(int *)arg = 1;
}

Test(chaos, null_and_invalid_arguments_table, .timeout = TH_TIMEOUT(20))
{
    seed_init(0xa565);
    em_loop *L = mini_setup();
    int port = th_listen_port(MI.server);
    em_conn *C = mini_connect(port);
    mini_wait(2, 0, "a connected pair");
    size_t timers = em_timer_count(L);

    loop_rows(L);
    server_rows(L, MI.server, &mini_handler);
    connect_rows(L, C, &mini_handler, port);
    null_conn_rows();
    bad_value_rows(C);
    int reentered = 0;
    CHK(em_next_tick(L, reentry_rows, &reentered) == 0, "em_next_tick");
    CHK(em_run_once(L, 0) == 0 && reentered, "the tick did not run");

    /* Nothing above created, closed or leaked anything. */
    CHK(MI.n == 2 && MI.unbinds == 0, "%d connections, %d unbinds", MI.n,
        MI.unbinds);
    CHK(em_connection_count(L) == 2, "%zu connections", em_connection_count(L));
    CHK(em_timer_count(L) == timers, "timers changed");
    CHK(em_send_data(C, "ping", 4) == 0, "the connection still works");
    run_for(L, 0.02);
    CHK(MI.recs[0].ngot == 4 && memcmp(MI.recs[0].got, "ping", 4) == 0,
        "no echo");
    CHK(em_close_connection(C, 0) == 0, "close");
    mini_wait(2, 2, "close");
    CHK(em_stop_server(MI.server) == 0, "em_stop_server");
    th_free_loop(L);
}
