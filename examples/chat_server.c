/*
 * chat_server.c - a line-based chat room, in C with libem.
 *
 *   build/examples/chat_server [--tls] [--nick-timeout SECONDS] PORT
 *
 * Listens on 127.0.0.1:PORT (0 picks a free port; the first line printed
 * names it). Talk to it from two terminals with
 * `build/examples/line_client 127.0.0.1 PORT`, or with bash alone:
 * `exec 3<>/dev/tcp/127.0.0.1/PORT; cat <&3 & cat >&3`.
 *
 * The protocol is lines ending in "\n" (a "\r" before it is dropped, so
 * telnet works), at most MAX_LINE bytes:
 *
 *   server  * welcome to the chat; your nickname?
 *   client  NICK        (1 to 16 letters, digits, '-' or '_'; refused: the
 *                        server says why and asks again)
 *   server  * hello NICK; here: alice, bob       (or "here: nobody else")
 *   others  * NICK joined
 *   client  any line    others get "NICK: line" (empty lines are ignored)
 *   client  /who        server: "* here: ..."
 *   client  /quit       server: "* bye NICK", then it closes the connection
 *   others  * NICK left   (or "* NICK was dropped: too slow" or "... line
 *                          too long")
 *
 * A client that has not picked a nickname within --nick-timeout seconds
 * (default 60) gets "* too slow picking a nickname" and is closed.
 *
 * --tls runs the same room over TLS with a self-signed certificate made at
 * start-up (em_tls_options.ephemeral_cert): traffic is encrypted but clients
 * cannot authenticate the server, so use a real certificate (see
 * tls_echo_server.c) for anything but a demo. Try it with
 * `openssl s_client -quiet -connect 127.0.0.1:PORT`.
 *
 * What it shows (docs/guide.md walks through it):
 *   - em_use_lines: receive_line gets whole lines wherever TCP split them,
 *     and an overlong line ends the connection with unbind(-EMSGSIZE)
 *     instead of growing a buffer without bound;
 *   - no global state: the room (users, options) is the server's arg, each
 *     user is its connection's state (em_conn_state);
 *   - slow readers are dropped, not buffered without bound (see deliver());
 *   - a per-connection timer (the nickname deadline) is cancelled in
 *     unbind, since its arg is the connection, which is freed after unbind;
 *   - SIGINT and SIGTERM stop the loop (em_add_signal): every connection is
 *     unbound before em_run returns, and the program exits 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

#define MAX_LINE 1024 /* longest line a client may send */
#define MAX_NICK 16
/* Bytes a user may have waiting in its outbound queue: about a thousand
 * chat lines. A reader that falls further behind is dropped. */
#define MAX_BACKLOG (64 * 1024)

typedef struct user user;

/* The server's arg: everything the room knows. */
typedef struct room {
    user *first; /* joined users, in joining order */
    user *last;
    double nick_timeout;
    int use_tls;
    em_tls_options tls;
} room;

/* Per connection (em_conn_state), zeroed by the library. */
struct user {
    user *prev, *next; /* in room's list once joined */
    room *room;
    em_conn *conn;
    em_timer_id nick_timer; /* 0 when none is pending */
    int joined;
    int dropped; /* closed by us for being too slow */
    int quitting;
    size_t nick_len;
    char nick[MAX_NICK + 1];
};

/* A line the server sends: "NICK: text\n" is the longest. */
typedef struct outline {
    size_t len;
    char buf[MAX_NICK + 2 + MAX_LINE + 1];
} outline;

static void out_add(outline *o, const char *s, size_t len)
{
    if (len > sizeof(o->buf) - o->len)
        len = sizeof(o->buf) - o->len; /* cannot happen: sized above */
    memcpy(o->buf + o->len, s, len);
    o->len += len;
}

static void out_str(outline *o, const char *s)
{
    out_add(o, s, strlen(s));
}

/*
 * Sends one line to one user, or drops the user when it is not reading.
 *
 * Why drop rather than throttle: the queue that grows belongs to the slow
 * reader, but the bytes come from everyone else. Watermarks
 * (em_set_watermarks) stop the reading of one connection when another's
 * queue is full; here that would let one stalled client freeze a sender, and
 * with it the whole room. So each send checks the reader's backlog
 * (em_get_outbound_data_size, a field read) and closes a reader that is
 * MAX_BACKLOG behind: memory per user stays bounded whatever the others
 * send. Closing at once (after_writing = 0) frees the queue now.
 */
static void deliver(user *u, const outline *o)
{
    if (u->dropped)
        return;
    if (em_get_outbound_data_size(u->conn) + o->len > MAX_BACKLOG) {
        u->dropped = 1;
        em_close_connection(u->conn, 0); /* unbind tells the others */
        return;
    }
    /* A failed send closes the connection; its unbind tells the others. */
    em_send_data(u->conn, o->buf, o->len);
}

static void say(user *u, const char *text)
{
    outline o = {0};
    out_str(&o, text);
    out_str(&o, "\n");
    deliver(u, &o);
}

/* To every joined user except `except` (NULL: to all). deliver() may close
 * a user, but its unbind (which unlinks it) runs only after this callback
 * returns, so the walk is safe. */
static void broadcast(room *r, const user *except, const outline *o)
{
    for (user *u = r->first; u; u = u->next)
        if (u != except)
            deliver(u, o);
}

static void notice(room *r, const user *about, const char *what)
{
    outline o = {0};
    out_str(&o, "* ");
    out_add(&o, about->nick, about->nick_len);
    out_str(&o, what);
    out_str(&o, "\n");
    broadcast(r, about, &o);
}

/* "* here: alice, bob" to u, about everybody else; after "* hello NICK; "
 * when hello is set. */
static void tell_who(user *u, int hello)
{
    outline o = {0};
    out_str(&o, "* ");
    if (hello) {
        out_str(&o, "hello ");
        out_add(&o, u->nick, u->nick_len);
        out_str(&o, "; ");
    }
    out_str(&o, "here: ");
    size_t others = 0;
    for (user *v = u->room->first; v; v = v->next) {
        if (v == u)
            continue;
        if (o.len + 2 + v->nick_len + sizeof(", ...\n") > sizeof(o.buf)) {
            out_str(&o, ", ...");
            break;
        }
        if (others++)
            out_str(&o, ", ");
        out_add(&o, v->nick, v->nick_len);
    }
    if (!others)
        out_str(&o, "nobody else");
    out_str(&o, "\n");
    deliver(u, &o);
}

static int valid_nick(const char *s, size_t len)
{
    if (len == 0 || len > MAX_NICK)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

static int nick_taken(const room *r, const char *s, size_t len)
{
    for (const user *u = r->first; u; u = u->next)
        if (u->nick_len == len && memcmp(u->nick, s, len) == 0)
            return 1;
    return 0;
}

/* The nickname deadline: arg is the connection. Safe because unbind
 * cancels the timer, so it never fires for a connection that is gone. */
static void nick_deadline(em_loop *loop, void *arg)
{
    (void)loop;
    em_conn *conn = arg;
    user *u = em_conn_state(conn);
    u->nick_timer = 0;
    say(u, "* too slow picking a nickname");
    em_close_connection(conn, 1);
}

static void join(user *u, const char *nick, size_t len)
{
    room *r = u->room;
    if (!valid_nick(nick, len)) {
        say(u, "* a nickname is 1 to 16 letters, digits, '-' or '_'; "
               "your nickname?");
        return;
    }
    if (nick_taken(r, nick, len)) {
        say(u, "* that nickname is taken; your nickname?");
        return;
    }
    memcpy(u->nick, nick, len);
    u->nick[len] = '\0';
    u->nick_len = len;
    if (u->nick_timer) {
        em_cancel_timer(em_conn_loop(u->conn), u->nick_timer);
        u->nick_timer = 0;
    }
    u->prev = r->last;
    if (r->last)
        r->last->next = u;
    else
        r->first = u;
    r->last = u;
    u->joined = 1;

    tell_who(u, 1);
    notice(r, u, " joined");
}

static void opening(em_conn *conn, void *arg)
{
    room *r = arg;
    user *u = em_conn_state(conn);
    u->room = r;
    u->conn = conn;

    em_line_opts lines = {.max_line = MAX_LINE};
    int err = em_use_lines(conn, &lines);
    if (err == 0 && r->use_tls)
        err = em_start_tls(conn, &r->tls); /* prompt below is encrypted */
    if (err == 0)
        err = em_add_timer(em_conn_loop(conn), r->nick_timeout, nick_deadline,
                           conn, &u->nick_timer);
    if (err < 0) {
        fprintf(stderr, "chat_server: cannot set up a connection: %s\n",
                em_strerror(err));
        em_close_connection(conn, 0);
        return;
    }
    say(u, "* welcome to the chat; your nickname?");
}

static void receiving_line(em_conn *conn, const char *line, size_t len)
{
    user *u = em_conn_state(conn);
    if (!u->joined) {
        join(u, line, len);
        return;
    }
    if (len == 0)
        return;
    if (len == 5 && memcmp(line, "/quit", 5) == 0) {
        outline o = {0};
        out_str(&o, "* bye ");
        out_add(&o, u->nick, u->nick_len);
        out_str(&o, "\n");
        deliver(u, &o);
        u->quitting = 1;
        /* Flushes "* bye" first; the framer drops whatever else the client
         * had sent, since the connection is closing. */
        em_close_connection(conn, 1);
        return;
    }
    if (len == 4 && memcmp(line, "/who", 4) == 0) {
        tell_who(u, 0);
        return;
    }
    outline o = {0};
    out_add(&o, u->nick, u->nick_len);
    out_str(&o, ": ");
    out_add(&o, line, len); /* len <= MAX_LINE: the framer's limit */
    out_str(&o, "\n");
    broadcast(u->room, u, &o);
}

static void closing(em_conn *conn, int reason)
{
    user *u = em_conn_state(conn);
    em_loop *loop = em_conn_loop(conn);
    /* The timer's arg is conn, which is freed when this returns. */
    if (u->nick_timer) {
        em_cancel_timer(loop, u->nick_timer);
        u->nick_timer = 0;
    }
    if (u->room && u->room->use_tls && reason != 0 &&
        !em_tls_handshake_done(conn))
        fprintf(stderr, "chat_server: TLS handshake failed: %s (%s)\n",
                em_strerror(reason), em_tls_error(conn));
    if (!u->joined)
        return;
    room *r = u->room;
    if (u->prev)
        u->prev->next = u->next;
    else
        r->first = u->next;
    if (u->next)
        u->next->prev = u->prev;
    else
        r->last = u->prev;
    if (em_is_stopping(loop))
        return; /* everybody is being closed: nobody to tell */
    if (u->dropped)
        notice(r, u, " was dropped: too slow");
    else if (reason == -EMSGSIZE)
        notice(r, u, " was dropped: line too long");
    else
        notice(r, u, " left");
}

static const em_handler chat_handler = {
    .state_size = sizeof(user),
    .post_init = opening,
    .receive_line = receiving_line,
    .unbind = closing,
};

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

static int usage(const char *prog)
{
    fprintf(stderr, "usage: %s [--tls] [--nick-timeout SECONDS] PORT\n", prog);
    return 2;
}

int main(int argc, char **argv)
{
    room r = {.nick_timeout = 60, .tls = {.ephemeral_cert = 1}};
    const char *port_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tls") == 0) {
            r.use_tls = 1;
        } else if (strcmp(argv[i], "--nick-timeout") == 0 && i + 1 < argc) {
            char *end;
            r.nick_timeout = strtod(argv[++i], &end);
            if (*end || !(r.nick_timeout > 0))
                return usage(argv[0]);
        } else if (!port_arg && argv[i][0] != '-') {
            port_arg = argv[i];
        } else {
            return usage(argv[0]);
        }
    }
    if (!port_arg)
        return usage(argv[0]);
    int port = atoi(port_arg);

    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_server *server;
    err = em_start_server(loop, "127.0.0.1", port, &chat_handler, &r, NULL,
                          &server);
    if (err < 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port,
                em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    if ((err = em_add_signal(loop, SIGINT, on_signal, NULL, NULL)) < 0 ||
        (err = em_add_signal(loop, SIGTERM, on_signal, NULL, NULL)) < 0) {
        fprintf(stderr, "em_add_signal: %s\n", em_strerror(err));
        em_loop_free(loop);
        return 1;
    }
    printf("chat server%s listening on 127.0.0.1:%d\n",
           r.use_tls ? " (TLS)" : "", em_server_port(server));
    fflush(stdout);
    em_run(loop);
    err = em_loop_free(loop);
    puts("stopped");
    return err < 0 ? 1 : 0;
}
