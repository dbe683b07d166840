/*
 * http_hello.c - an HTTP/1.1 server that answers every request with
 * "Hello, World!", small enough to read and fast enough to benchmark.
 *
 *   build/examples/http_hello PORT     (127.0.0.1; 0 = any free port)
 *
 * Try: curl -i http://127.0.0.1:8080/ or ab -k -n 10000 -c 10
 * http://127.0.0.1:8080/ (after build/examples/http_hello 8080).
 *
 * What it speaks:
 *   - keep-alive: HTTP/1.1 keeps the connection unless the request says
 *     "Connection: close"; HTTP/1.0 closes after the response unless it says
 *     "Connection: keep-alive" (as `ab -k` does), and then gets that header
 *     back;
 *   - pipelining: any number of requests in one read, and a request split
 *     across reads at any byte, are answered in order;
 *   - a body (Content-Length) is skipped; "Expect: 100-continue" gets its
 *     interim response; HEAD gets the headers without the body;
 *   - a malformed head gets 400 and a close, a head over 8 KiB 431, an HTTP
 *     version other than 1.x 505, and Transfer-Encoding (chunked bodies,
 *     which this example does not decode) 501: after any of these the
 *     request framing can no longer be trusted, so the connection closes.
 *
 * How it parses, and why not with em_use_lines:
 * The parser is a byte-at-a-time state machine (as nginx's) whose whole
 * state is a few fields in the per-connection state (em_conn_state, 32
 * bytes): it never buffers a byte, so a request split at any offset takes
 * the same path as a whole one, memory per connection is fixed, and nothing
 * is allocated per request. Header values nobody reads are skipped with
 * memchr. libem's line framer (em_use_lines with "\r\n") would hand over
 * whole header lines instead; it was measured (bench/http_hello_lines.c,
 * bench/http_run.sh --servers "libem libem-lines"):
 *   - without pipelining (wrk's default) both cost the same CPU per request
 *     (ratio 1.00, 0.84..1.13 over 3 rounds): one read and one write each,
 *     the parsing is noise next to the kernel's TCP work;
 *   - with 10 pipelined requests this parser answers a whole read in one
 *     write. The framer corks the connection after a chunk's first message
 *     and writes the rest once the chunk is parsed (two writes), and costs
 *     1.19x this parser's CPU per request (0.84 = this/lines, 0.84..0.91);
 *     before corking it made one write per response and cost 6x;
 *   - a line over the framer's maximum closes the connection with no chance
 *     to answer 431, and an HTTP server must answer it.
 *
 * Batching: responses to every request of one read are built in a buffer on
 * the stack and leave in one em_send_data (one write), so ten pipelined
 * requests cost one read and one write. Each response is copied from one of
 * three prebuilt templates, rebuilt only when the second in the Date header
 * changes (time() is a vDSO call, not a syscall).
 *
 * Speed: bench/http_run.sh runs it under wrk against the same server on
 * libevent's evhttp and against nginx; see bench/RESULTS.md ("HTTP") and
 * docs/performance.md.
 *
 * Bounds: a head is at most 8 KiB; a client that pipelines requests without
 * reading the answers stops being read once 256 KiB of responses wait
 * (em_pause_reading, resumed by drained), so what one read can add on top is
 * the answers to one 64 KiB read; an idle or stalled connection is closed
 * after 30 s (em_set_comm_inactivity_timeout), which also ends slow clients
 * that never finish a head.
 */
#define _POSIX_C_SOURCE 200809L /* gmtime_r under -std=c11 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "em.h"

#define MAX_HEAD 8192           /* bytes of request line + headers */
#define MAX_QUEUED (256 * 1024) /* unsent responses before pausing */
#define IDLE_SECONDS 30.0       /* inactivity timeout */
#define BODY "Hello, World!"
#define BODY_LEN (sizeof(BODY) - 1)

/* ---- responses ------------------------------------------------------- */

enum { KEEP_11, KEEP_10, CLOSE, TEMPLATES }; /* which Connection header */

struct hello {
    time_t date_second; /* the second the templates were built for */
    char date[40];      /* "Sun, 06 Nov 1994 08:49:37 GMT" */
    char ok[TEMPLATES][192];
    size_t ok_len[TEMPLATES];
};

/* Rebuilds the Date header and the templates when the second changed. */
static void refresh_date(struct hello *app)
{
    time_t now = time(NULL);
    if (now == app->date_second)
        return;
    app->date_second = now;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(app->date, sizeof(app->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    static const char *const connection[TEMPLATES] = {
        [KEEP_11] = "", /* HTTP/1.1: keep-alive is the default */
        [KEEP_10] = "Connection: keep-alive\r\n",
        [CLOSE] = "Connection: close\r\n",
    };
    for (int i = 0; i < TEMPLATES; i++) {
        int n = snprintf(app->ok[i], sizeof(app->ok[i]),
                         "HTTP/1.1 200 OK\r\n"
                         "Server: libem\r\n"
                         "Date: %s\r\n"
                         "Content-Type: text/plain\r\n"
                         "Content-Length: %zu\r\n"
                         "%s\r\n" BODY,
                         app->date, BODY_LEN, connection[i]);
        app->ok_len[i] = (size_t)n;
    }
}

/* What one read produces, sent in one em_send_data (see "Batching"). */
struct reply {
    em_conn *conn;
    size_t len;
    char buf[16384];
};

static int reply_flush(struct reply *r)
{
    int err = r->len ? em_send_data(r->conn, r->buf, r->len) : 0;
    r->len = 0;
    return err;
}

static int reply_add(struct reply *r, const char *data, size_t len)
{
    if (r->len + len > sizeof(r->buf)) {
        int err = reply_flush(r);
        if (err < 0)
            return err;
    }
    memcpy(r->buf + r->len, data, len);
    r->len += len;
    return 0;
}

/* ---- the request parser ---------------------------------------------- */

enum state {
    S_START,   /* before a request line; empty lines are skipped */
    S_METHOD,  /* the method, up to a space */
    S_TARGET,  /* the request target, up to a space */
    S_VERSION, /* "HTTP/1.x", then CR LF */
    S_LF,      /* a CR ended a line: LF must follow */
    S_FIELD,   /* start of a header line, or of the empty line */
    S_NAME,    /* a header name, up to ':' */
    S_VALUE,   /* a header value, up to the end of the line */
    S_END_LF,  /* CR of the empty line: LF must follow */
    S_BODY,    /* skipping body_left bytes */
    S_CLOSED,  /* answered for the last time: ignore the rest */
};

/* Request flags. */
enum {
    F_HEAD = 1 << 0,       /* the method is HEAD */
    F_HTTP10 = 1 << 1,     /* HTTP/1.0 */
    F_CLOSE = 1 << 2,      /* Connection: close */
    F_KEEP_ALIVE = 1 << 3, /* Connection: keep-alive */
    F_LENGTH = 1 << 4,     /* a Content-Length was seen */
    F_CHUNKED = 1 << 5,    /* a Transfer-Encoding was seen */
    F_CONTINUE = 1 << 6,   /* Expect: 100-continue */
    F_DIGITS = 1 << 7,     /* the Content-Length value has digits */
};

/* Words matched case-insensitively, a byte at a time, against every
 * candidate still possible (a bit each in `match`). */
struct word {
    const char *text; /* lower case */
    uint8_t len;
    uint8_t value; /* header: a FIELD_*; token: an F_* flag */
};

enum { FIELD_OTHER, FIELD_CONNECTION, FIELD_LENGTH, FIELD_TE, FIELD_EXPECT };
enum { T_CLOSE = 1 << 0, T_KEEP_ALIVE = 1 << 1, T_CONTINUE = 1 << 2 };

static const struct word fields[] = {
    {"connection", 10, FIELD_CONNECTION},
    {"content-length", 14, FIELD_LENGTH},
    {"transfer-encoding", 17, FIELD_TE},
    {"expect", 6, FIELD_EXPECT},
};
#define ALL_FIELDS ((1u << (sizeof(fields) / sizeof(fields[0]))) - 1)

static const struct word tokens[] = {
    {"close", 5, F_CLOSE},
    {"keep-alive", 10, F_KEEP_ALIVE},
    {"100-continue", 12, F_CONTINUE},
};

/* The tokens[] that mean something in a header's value. */
static uint8_t value_tokens(uint8_t field)
{
    if (field == FIELD_CONNECTION)
        return T_CLOSE | T_KEEP_ALIVE;
    return field == FIELD_EXPECT ? T_CONTINUE : 0;
}

/* Per-connection state: the parser's position, nothing buffered. */
struct http_conn {
    uint64_t length;    /* Content-Length of the request being read */
    uint64_t body_left; /* body bytes still to skip */
    uint32_t head_len;  /* bytes of the current head so far */
    uint16_t pos;       /* bytes of the current word (saturates) */
    uint8_t state;      /* enum state */
    uint8_t flags;      /* F_* of the request being read */
    uint8_t field;      /* FIELD_* whose value is being read */
    uint8_t match;      /* candidate words (fields[] or tokens[]) */
    uint8_t paused;     /* reading paused: too many unsent responses */
};

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c | 0x20) : c;
}

/* RFC 9110 token characters: what methods and header names are made of. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* One more byte c at position pos: drops the candidates it rules out. */
static uint8_t match_step(const struct word *w, unsigned match, unsigned pos,
                          unsigned char c)
{
    for (unsigned i = 0; match >> i; i++)
        if ((match >> i & 1) && (pos >= w[i].len || w[i].text[pos] != c))
            match &= ~(1u << i);
    return (uint8_t)match;
}

/* The candidate that matched all of a word pos bytes long, or -1. */
static int match_end(const struct word *w, unsigned match, unsigned pos)
{
    for (unsigned i = 0; match >> i; i++)
        if ((match >> i & 1) && w[i].len == pos)
            return (int)i;
    return -1;
}

/* A header name ended (at its ':'): get ready for the value. Returns 0 or
 * 400 (a second Content-Length: RFC 9112 allows rejecting it, and a server
 * that picks one of two lengths can be smuggled past). */
static int start_value(struct http_conn *h)
{
    int i = match_end(fields, h->match, h->pos);
    h->field = i < 0 ? FIELD_OTHER : fields[i].value;
    h->match = value_tokens(h->field);
    h->pos = 0;
    if (h->field == FIELD_LENGTH) {
        if (h->flags & F_LENGTH)
            return 400;
        h->flags |= F_LENGTH;
    } else if (h->field == FIELD_TE) {
        h->flags |= F_CHUNKED;
        h->field = FIELD_OTHER; /* its value does not matter */
    }
    h->state = S_VALUE;
    return 0;
}

/* One byte of a Content-Length value: OWS digits OWS. Returns 0 or 400. */
static int length_byte(struct http_conn *h, unsigned char c)
{
    if (c == ' ' || c == '\t') {
        if (h->flags & F_DIGITS)
            h->pos = 1; /* after the digits: only OWS may follow */
        return 0;
    }
    if (c < '0' || c > '9' || h->pos)
        return 400;
    if (h->length > (UINT64_MAX - 9) / 10)
        return 400; /* more than any body we would wait for */
    h->length = h->length * 10 + (c - '0');
    h->flags |= F_DIGITS;
    return 0;
}

/* One byte of a comma-separated token list (Connection, Expect). */
static void token_byte(struct http_conn *h, unsigned char c)
{
    if (c == ',' || c == ' ' || c == '\t') {
        int i = h->pos ? match_end(tokens, h->match, h->pos) : -1;
        if (i >= 0)
            h->flags |= tokens[i].value;
        h->match = value_tokens(h->field);
        h->pos = 0;
        return;
    }
    h->match = match_step(tokens, h->match, h->pos, lower(c));
    if (h->pos < UINT16_MAX)
        h->pos++;
}

/* Parses head bytes from *pp up to end. Returns 0 when it needs more, 1
 * when a head is complete (*pp just past it), or the status of an error
 * response (400, 431, 501 is decided by the caller, 505). */
static int parse_head(struct http_conn *h, const char **pp, const char *end)
{
    const char *p = *pp;
    int status = 0;
    while (p < end && !status) {
        unsigned char c = (unsigned char)*p++;
        if (++h->head_len > MAX_HEAD) {
            status = 431;
            break;
        }
        switch (h->state) {
        case S_START:
            if (c == '\r' || c == '\n')
                break; /* empty lines before a request (RFC 9112 2.2) */
            h->flags = F_HEAD;
            h->length = 0;
            h->pos = 0;
            h->state = S_METHOD;
            /* fall through */
        case S_METHOD:
            if (c == ' ' && h->pos) {
                if (h->pos != 4)
                    h->flags &= ~F_HEAD;
                h->pos = 0;
                h->state = S_TARGET;
            } else if (!is_tchar(c)) {
                status = 400;
            } else {
                if (h->pos >= 4 || c != (unsigned char)"HEAD"[h->pos])
                    h->flags &= ~F_HEAD;
                if (h->pos < UINT16_MAX)
                    h->pos++;
            }
            break;
        case S_TARGET:
            if (c == ' ' && h->pos) {
                h->pos = 0;
                h->state = S_VERSION;
            } else if (c <= ' ' || c >= 0x7f) {
                status = 400;
            } else {
                h->pos = 1;
            }
            break;
        case S_VERSION:
            if (h->pos < 5) { /* "HTTP/" */
                if (c != (unsigned char)"HTTP/"[h->pos])
                    status = 400;
            } else if (h->pos == 5) { /* major */
                if (c != '1')
                    status = c >= '0' && c <= '9' ? 505 : 400;
            } else if (h->pos == 6) {
                if (c != '.')
                    status = 400;
            } else if (h->pos == 7) { /* minor */
                if (c < '0' || c > '9')
                    status = 400;
                else if (c == '0')
                    h->flags |= F_HTTP10;
            } else if (c == '\r') {
                h->state = S_LF;
            } else if (c == '\n') {
                h->state = S_FIELD;
            } else {
                status = 400;
            }
            h->pos++;
            break;
        case S_LF:
            if (c != '\n')
                status = 400;
            h->state = S_FIELD;
            break;
        case S_FIELD:
            if (c == '\r') {
                h->state = S_END_LF;
                break;
            }
            if (c == '\n') {
                *pp = p;
                return 1;
            }
            /* A space here would be obsolete line folding: rejected. */
            h->pos = 0;
            h->match = ALL_FIELDS;
            h->state = S_NAME;
            /* fall through */
        case S_NAME:
            if (c == ':' && h->pos) {
                status = start_value(h);
            } else if (!is_tchar(c)) {
                status = 400;
            } else {
                h->match = match_step(fields, h->match, h->pos, lower(c));
                if (h->pos < UINT16_MAX)
                    h->pos++;
            }
            break;
        case S_VALUE:
            if (h->field == FIELD_OTHER) {
                /* Nobody reads it: jump to the end of the line. */
                const char *nl = memchr(p - 1, '\n', (size_t)(end - (p - 1)));
                const char *stop = nl ? nl + 1 : end;
                h->head_len += (uint32_t)(stop - p);
                p = stop;
                if (h->head_len > MAX_HEAD)
                    status = 431;
                else if (nl)
                    h->state = S_FIELD;
                break;
            }
            if (c == '\r' || c == '\n') {
                if (h->field == FIELD_LENGTH && !(h->flags & F_DIGITS))
                    status = 400; /* empty */
                else if (h->field != FIELD_LENGTH)
                    token_byte(h, ','); /* ends the last token */
                h->state = c == '\r' ? S_LF : S_FIELD;
            } else if (h->field == FIELD_LENGTH) {
                status = length_byte(h, c);
            } else {
                token_byte(h, c);
            }
            break;
        case S_END_LF:
            if (c != '\n') {
                status = 400;
                break;
            }
            *pp = p;
            return 1;
        }
    }
    *pp = p;
    if (status)
        h->state = S_CLOSED;
    return status;
}

/* ---- the handler ----------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    default:
        return "HTTP Version Not Supported";
    }
}

/* Answers what cannot be parsed, after the answers already batched, and
 * closes once all of it is written. */
static void fail(struct reply *r, struct hello *app, int status)
{
    char buf[256];
    const char *reason = reason_phrase(status);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\n"
                     "Server: libem\r\n"
                     "Date: %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, reason, app->date, strlen(reason) + 1, reason);
    if (reply_add(r, buf, (size_t)n) == 0)
        reply_flush(r);
    em_close_connection(r->conn, 1);
}

/* A whole request (head and body) was read: queue its answer. Returns 0,
 * 1 when the connection is to close after it, or a send error. */
static int answer(struct reply *r, struct hello *app, struct http_conn *h)
{
    int keep = h->flags & F_HTTP10 ? (h->flags & F_KEEP_ALIVE) != 0 : 1;
    if (h->flags & F_CLOSE)
        keep = 0;
    int t = !keep ? CLOSE : h->flags & F_HTTP10 ? KEEP_10 : KEEP_11;
    size_t len = app->ok_len[t] - (h->flags & F_HEAD ? BODY_LEN : 0);
    h->state = keep ? S_START : S_CLOSED;
    h->head_len = 0;
    int err = reply_add(r, app->ok[t], len);
    return err < 0 ? err : !keep;
}

static void on_open(em_conn *conn, void *arg)
{
    (void)arg;
    /* Responses leave whole, in one write each: Nagle's delay could only
     * hold back the tail of a batch split over several writes. */
    int one = 1;
    em_set_sock_opt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    em_set_comm_inactivity_timeout(conn, IDLE_SECONDS);
}

static void on_data(em_conn *conn, const char *data, size_t len)
{
    struct hello *app = em_conn_arg(conn);
    struct http_conn *h = em_conn_state(conn);
    struct reply r;
    r.conn = conn;
    r.len = 0;
    refresh_date(app);

    const char *p = data, *end = data + len;
    while (p < end && h->state != S_CLOSED) {
        int done = 0;
        if (h->state == S_BODY) {
            size_t n = (size_t)(end - p);
            if (n > h->body_left)
                n = (size_t)h->body_left;
            p += n;
            h->body_left -= n;
            if (h->body_left)
                break;
            done = answer(&r, app, h);
        } else {
            int status = parse_head(h, &p, end);
            if (status == 0)
                break; /* the head goes on in the next read */
            if (status == 1 && (h->flags & F_CHUNKED))
                status = 501;
            if (status > 1) {
                fail(&r, app, status);
                return;
            }
            if (h->length) {
                if ((h->flags & (F_CONTINUE | F_HTTP10)) == F_CONTINUE) {
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    done = reply_add(&r, cont, sizeof(cont) - 1);
                }
                h->body_left = h->length;
                h->state = S_BODY;
            } else {
                done = answer(&r, app, h);
            }
        }
        if (done < 0)
            return; /* the send failed: the connection is closing */
        if (done > 0) {
            if (reply_flush(&r) == 0)
                em_close_connection(conn, 1);
            return;
        }
    }
    if (reply_flush(&r) < 0)
        return;
    /* A client that pipelines without reading is not read any further
     * until its answers have left (drained). */
    if (em_get_outbound_data_size(conn) > MAX_QUEUED &&
        em_pause_reading(conn) == 0)
        h->paused = 1;
}

static void on_drained(em_conn *conn)
{
    struct http_conn *h = em_conn_state(conn);
    if (h->paused && em_resume_reading(conn) == 0)
        h->paused = 0;
}

static const em_handler http_handler = {
    .state_size = sizeof(struct http_conn),
    .post_init = on_open,
    .receive_data = on_data,
    .drained = on_drained,
};

/* ---- main ------------------------------------------------------------ */

static void on_signal(em_loop *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    em_stop(loop);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    struct hello app = {.date_second = -1};
    refresh_date(&app);

    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "em_loop_new: %s\n", em_strerror(err));
        return 1;
    }
    em_server *server;
    err = em_start_server(loop, "127.0.0.1", port, &http_handler, &app, NULL,
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
    printf("http_hello listening on 127.0.0.1:%d\n", em_server_port(server));
    fflush(stdout);
    em_run(loop);
    return em_loop_free(loop) < 0 ? 1 : 0;
}
