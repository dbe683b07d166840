/*
 * stdio_lines.c - a JSON-lines server on stdin/stdout, in C with libem: the
 * shape of a language server or any tool driven over pipes by a parent.
 *
 *   build/examples/stdio_lines
 *   printf '{"id":1,"method":"add","a":2,"b":40}\n' |
 * build/examples/stdio_lines
 *
 * Requests arrive on stdin, one per line; each gets one answer line on
 * stdout, in order. At stdin's EOF the answers still queued are written,
 * then the program exits 0.
 *
 * The request format (a subset of JSON, so no JSON library is needed):
 *
 *   - One request per line: "\n"-terminated (a "\r" before it is ignored;
 *     an unterminated last line at EOF counts), at most MAX_REQUEST bytes.
 *     Blank lines are ignored.
 *   - A request is a JSON object whose member values are strings or
 *     integers only (no nested objects or arrays, no true/false/null, no
 *     fractions or exponents). Whitespace between tokens is allowed.
 *     Strings take every JSON escape (\" \\ \/ \b \f \n \r \t \uXXXX, with
 *     surrogate pairs; \u0000 too); bytes >= 0x80 are taken as they are
 *     (not checked to be UTF-8). Integers are -2^63 .. 2^63-1. For a key
 *     given twice the last value counts. Unknown members are ignored.
 *   - "id" (an integer) is required; "method" (a string) names the method:
 *       {"id":1,"method":"echo","text":"hi"}     -> {"id":1,"result":"hi"}
 *       {"id":2,"method":"add","a":2,"b":40}     -> {"id":2,"result":42}
 *       {"id":3,"method":"exit"}                 -> {"id":3,"result":"bye"}
 *                                                   and the program exits 0
 *   - Failures answer {"id":N,"error":"MESSAGE"}, with "id":null when the
 *     request had no usable id. MESSAGE is one of "parse error" (not the
 *     format above), "missing id", "missing method", "unknown method",
 *     "invalid params" (a parameter missing or of the wrong type) and
 *     "integer overflow" (add).
 *   - Answers are compact JSON ("," and ":" without spaces), with strings
 *     escaped as JSON requires (", \, and bytes below 0x20).
 *
 * A request longer than MAX_REQUEST ends the program with status 1 (the
 * line framer's limit: unbind(-EMSGSIZE)), as does a failure to write
 * stdout. While more than HIGH_WATER bytes of answers wait for a reader
 * that does not read them, stdin is not read either (em_set_watermarks):
 * a client that only writes cannot make the server buffer without bound.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

#define MAX_REQUEST (1024 * 1024)
#define HIGH_WATER (1024 * 1024)
#define LOW_WATER (256 * 1024)

/* ---- the request ----------------------------------------------------- */

typedef struct str {
    const char *p;
    size_t len;
} str;

typedef struct value {
    int kind; /* 0 absent, 'i' integer, 's' string */
    int64_t i;
    str s;
} value;

typedef struct request {
    value id, method, text, a, b;
} request;

/* The parser: a cursor over the line and a scratch buffer that decoded
 * strings are written to (a decoded string is never longer than its JSON
 * form, so one buffer the size of the longest line always suffices). */
typedef struct parser {
    const char *p, *end;
    char *out;
} parser;

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' ||
                               *ps->p == '\r' || *ps->p == '\n'))
        ps->p++;
}

static int hex4(parser *ps, unsigned *v)
{
    if (ps->end - ps->p < 4)
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *ps->p++;
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

static void put_utf8(parser *ps, unsigned cp)
{
    if (cp < 0x80) {
        *ps->out++ = (char)cp;
    } else if (cp < 0x800) {
        *ps->out++ = (char)(0xc0 | cp >> 6);
        *ps->out++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *ps->out++ = (char)(0xe0 | cp >> 12);
        *ps->out++ = (char)(0x80 | (cp >> 6 & 0x3f));
        *ps->out++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *ps->out++ = (char)(0xf0 | cp >> 18);
        *ps->out++ = (char)(0x80 | (cp >> 12 & 0x3f));
        *ps->out++ = (char)(0x80 | (cp >> 6 & 0x3f));
        *ps->out++ = (char)(0x80 | (cp & 0x3f));
    }
}

/* A JSON string at the cursor (just after its opening quote), decoded
 * into the scratch buffer. \uXXXX is 6 bytes in and at most 3 out, a
 * surrogate pair 12 in and 4 out: the output never overtakes the input. */
static int parse_string(parser *ps, str *s)
{
    s->p = ps->out;
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p++;
        if (c == '"') {
            s->len = (size_t)(ps->out - s->p);
            return 0;
        }
        if (c < 0x20)
            return -1; /* control characters must be escaped */
        if (c != '\\') {
            *ps->out++ = (char)c;
            continue;
        }
        if (ps->p == ps->end)
            return -1;
        unsigned cp;
        switch (*ps->p++) {
        case '"':
            *ps->out++ = '"';
            break;
        case '\\':
            *ps->out++ = '\\';
            break;
        case '/':
            *ps->out++ = '/';
            break;
        case 'b':
            *ps->out++ = '\b';
            break;
        case 'f':
            *ps->out++ = '\f';
            break;
        case 'n':
            *ps->out++ = '\n';
            break;
        case 'r':
            *ps->out++ = '\r';
            break;
        case 't':
            *ps->out++ = '\t';
            break;
        case 'u':
            if (hex4(ps, &cp) < 0 || (cp >= 0xdc00 && cp <= 0xdfff))
                return -1;
            if (cp >= 0xd800 && cp <= 0xdbff) { /* needs its low half */
                unsigned lo;
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                    return -1;
                ps->p += 2;
                if (hex4(ps, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            put_utf8(ps, cp);
            break;
        default:
            return -1;
        }
    }
    return -1; /* no closing quote */
}

/* A JSON integer: -?(0|[1-9][0-9]*), not followed by a fraction or an
 * exponent (those are outside the format), within int64_t. */
static int parse_integer(parser *ps, int64_t *out)
{
    int neg = 0;
    if (ps->p < ps->end && *ps->p == '-') {
        neg = 1;
        ps->p++;
    }
    if (ps->p == ps->end || *ps->p < '0' || *ps->p > '9')
        return -1;
    if (*ps->p == '0' && ps->end - ps->p > 1 && ps->p[1] >= '0' &&
        ps->p[1] <= '9')
        return -1; /* leading zero */
    /* Accumulate as a negative number: -2^63 fits, 2^63 does not. */
    int64_t v = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        int d = *ps->p++ - '0';
        if (v < (INT64_MIN + d) / 10)
            return -1;
        v = v * 10 - d;
    }
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return -1;
    if (!neg) {
        if (v == INT64_MIN)
            return -1;
        v = -v;
    }
    *out = v;
    return 0;
}

static value *member(request *rq, const str *key)
{
    static const struct {
        const char *name;
        size_t offset;
    } names[] = {
        {"id", offsetof(request, id)},
        {"method", offsetof(request, method)},
        {"text", offsetof(request, text)},
        {"a", offsetof(request, a)},
        {"b", offsetof(request, b)},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i].name) == key->len &&
            memcmp(names[i].name, key->p, key->len) == 0)
            return (value *)((char *)rq + names[i].offset);
    return NULL; /* unknown: parsed, then ignored */
}

/* Parses one request line; 0 or -1 (not the format). */
static int parse_request(const char *line, size_t len, char *scratch,
                         request *rq)
{
    parser ps = {.p = line, .end = line + len, .out = scratch};
    memset(rq, 0, sizeof(*rq));
    skip_ws(&ps);
    if (ps.p == ps.end || *ps.p++ != '{')
        return -1;
    skip_ws(&ps);
    if (ps.p < ps.end && *ps.p == '}') {
        ps.p++;
    } else {
        for (;;) {
            str key;
            skip_ws(&ps);
            if (ps.p == ps.end || *ps.p++ != '"' || parse_string(&ps, &key))
                return -1;
            skip_ws(&ps);
            if (ps.p == ps.end || *ps.p++ != ':')
                return -1;
            skip_ws(&ps);
            value v = {0};
            if (ps.p < ps.end && *ps.p == '"') {
                ps.p++;
                v.kind = 's';
                if (parse_string(&ps, &v.s) < 0)
                    return -1;
            } else {
                v.kind = 'i';
                if (parse_integer(&ps, &v.i) < 0)
                    return -1;
            }
            value *slot = member(rq, &key);
            if (slot)
                *slot = v;
            skip_ws(&ps);
            if (ps.p == ps.end)
                return -1;
            char c = *ps.p++;
            if (c == '}')
                break;
            if (c != ',')
                return -1;
        }
    }
    skip_ws(&ps);
    return ps.p == ps.end ? 0 : -1; /* nothing after the object */
}

/* ---- the answer ------------------------------------------------------ */

/* Answers are built in a buffer and sent with one em_send_data each. A
 * string may grow 6 times when escaped ("\u0001"), so the buffer is sized
 * for the longest echo of the longest request. */
#define ANSWER_SIZE (6 * (size_t)MAX_REQUEST + 64)

typedef struct server {
    char *scratch; /* decoded strings of the request being answered */
    char *answer;
    size_t answer_len;
    int failed; /* exit status 1 */
} server;

static void put(server *s, const char *data, size_t len)
{
    memcpy(s->answer + s->answer_len, data, len);
    s->answer_len += len;
}

static void put_str(server *s, const char *text)
{
    put(s, text, strlen(text));
}

static void put_int(server *s, int64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof(buf), "%lld", (long long)v);
    put(s, buf, (size_t)n);
}

static void put_json_string(server *s, const char *p, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char *o = s->answer + s->answer_len;
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (c < 0x20) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    s->answer_len = (size_t)(o - s->answer);
}

static void begin_answer(server *s, const request *rq)
{
    s->answer_len = 0;
    put_str(s, "{\"id\":");
    if (rq && rq->id.kind == 'i')
        put_int(s, rq->id.i);
    else
        put_str(s, "null");
}

static void send_answer(server *s, em_conn *conn)
{
    put_str(s, "}\n");
    em_send_data(conn, s->answer, s->answer_len); /* copied */
}

static void answer_error(server *s, em_conn *conn, const request *rq,
                         const char *message)
{
    begin_answer(s, rq);
    put_str(s, ",\"error\":\"");
    put_str(s, message); /* plain ASCII, nothing to escape */
    put_str(s, "\"");
    send_answer(s, conn);
}

static int is(const value *v, const char *name)
{
    return v->kind == 's' && v->s.len == strlen(name) &&
           memcmp(v->s.p, name, v->s.len) == 0;
}

static void receiving_line(em_conn *conn, const char *line, size_t len)
{
    server *s = em_conn_arg(conn);
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len)
        return; /* blank line */

    request rq;
    if (parse_request(line, len, s->scratch, &rq) < 0) {
        answer_error(s, conn, NULL, "parse error");
        return;
    }
    if (rq.id.kind != 'i') {
        answer_error(s, conn, NULL, "missing id");
        return;
    }
    if (rq.method.kind != 's') {
        answer_error(s, conn, &rq, "missing method");
        return;
    }
    if (is(&rq.method, "echo")) {
        if (rq.text.kind != 's') {
            answer_error(s, conn, &rq, "invalid params");
            return;
        }
        begin_answer(s, &rq);
        put_str(s, ",\"result\":");
        put_json_string(s, rq.text.s.p, rq.text.s.len);
        send_answer(s, conn);
    } else if (is(&rq.method, "add")) {
        int64_t sum;
        if (rq.a.kind != 'i' || rq.b.kind != 'i') {
            answer_error(s, conn, &rq, "invalid params");
            return;
        }
        if ((rq.b.i > 0 && rq.a.i > INT64_MAX - rq.b.i) ||
            (rq.b.i < 0 && rq.a.i < INT64_MIN - rq.b.i)) {
            answer_error(s, conn, &rq, "integer overflow");
            return;
        }
        sum = rq.a.i + rq.b.i;
        begin_answer(s, &rq);
        put_str(s, ",\"result\":");
        put_int(s, sum);
        send_answer(s, conn);
    } else if (is(&rq.method, "exit")) {
        begin_answer(s, &rq);
        put_str(s, ",\"result\":\"bye\"");
        send_answer(s, conn);
        /* Writes the answers queued so far, then unbind(0); the framer
         * drops the requests that follow this one. */
        em_close_connection(conn, 1);
    } else {
        answer_error(s, conn, &rq, "unknown method");
    }
}

static void opening(em_conn *conn, void *arg)
{
    server *s = arg;
    em_line_opts opts = {.max_line = MAX_REQUEST};
    int err = em_use_lines(conn, &opts);
    if (err == 0)
        err = em_set_watermarks(conn, HIGH_WATER, LOW_WATER, NULL);
    if (err < 0) {
        fprintf(stderr, "stdio_lines: %s\n", em_strerror(err));
        s->failed = 1;
        em_close_connection(conn, 0);
    }
}

/* stdin's EOF once every answer is written (0), or a failure. */
static void closing(em_conn *conn, int reason)
{
    server *s = em_conn_arg(conn);
    if (reason == -EMSGSIZE) {
        fprintf(stderr, "stdio_lines: a request is longer than %d bytes\n",
                MAX_REQUEST);
        s->failed = 1;
    } else if (reason < 0) {
        fprintf(stderr, "stdio_lines: %s\n", em_strerror(reason));
        s->failed = 1;
    }
    em_stop(em_conn_loop(conn));
}

static const em_handler stdio_handler = {
    .post_init = opening,
    .receive_line = receiving_line,
    .unbind = closing,
};

int main(void)
{
    server s = {
        .scratch = malloc(MAX_REQUEST),
        .answer = malloc(ANSWER_SIZE),
    };
    em_loop *loop = NULL;
    int err = s.scratch && s.answer ? em_loop_new(&loop) : -ENOMEM;
    if (err == 0)
        err = em_open_stdio(loop, &stdio_handler, &s, NULL);
    if (err < 0) {
        fprintf(stderr, "stdio_lines: %s\n", em_strerror(err));
        s.failed = 1;
    } else {
        em_run(loop);
    }
    if (loop && em_loop_free(loop) < 0)
        s.failed = 1;
    free(s.scratch);
    free(s.answer);
    return s.failed ? 1 : 0;
}
