/*
 * test_example_stdio_lines.c - examples/stdio_lines run as a child with
 * its stdin and stdout on pipes: every answer of the request format its
 * top comment defines (escapes, surrogate pairs, integer limits, every
 * error), requests split across writes at every offset and thousands per
 * write, answers still queued at stdin's EOF written before it exits 0, an
 * unterminated last request answered, the "exit" method, a reader that
 * does not read stopping the reading of stdin (bounded memory), and an
 * overlong request ending it with status 1.
 */
#include "example_child.h"

static void start(ex_child *c)
{
    ex_start(c, "stdio_lines", NULL, EX_STDIN | EX_STDERR);
}

/* Exit status 0 and nothing on stderr. */
static void expect_clean_exit(ex_child *c)
{
    int status = ex_wait(c, 10.0);
    char err[4096];
    size_t n = ex_read_all(c->err, err, sizeof(err), 5.0);
    cr_assert_eq(n, 0, "stderr: %s", err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %#x",
              status);
    ex_close(c);
}

static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "write: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static void write_str(int fd, const char *s)
{
    write_all(fd, s, strlen(s));
}

/* Requests and their answers, in order; NULL answer: none (blank). */
static const struct {
    const char *request, *answer;
} cases[] = {
    {"{\"id\":1,\"method\":\"echo\",\"text\":\"hello\"}",
     "{\"id\":1,\"result\":\"hello\"}"},
    {" { \"id\" : 2 ,\t\"method\" : \"add\" , \"a\" : 2 , \"b\" : 40 } ",
     "{\"id\":2,\"result\":42}"},
    {"{\"method\":\"add\",\"b\":-5,\"a\":-9223372036854775803,\"id\":-3}",
     "{\"id\":-3,\"result\":-9223372036854775808}"},
    {"{\"id\":4,\"method\":\"add\",\"a\":9223372036854775807,\"b\":1}",
     "{\"id\":4,\"error\":\"integer overflow\"}"},
    {"{\"id\":4,\"method\":\"add\",\"a\":-9223372036854775808,\"b\":-1}",
     "{\"id\":4,\"error\":\"integer overflow\"}"},
    {"{\"id\":5,\"method\":\"add\",\"a\":9223372036854775808,\"b\":1}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":6,\"method\":\"echo\",\"text\":\"q\\\"b\\\\s\\/n\\nt\\tr\\rc"
     "\\u0001\\b\\f\\u00e9\\ud83d\\ude00\\u0000z\"}",
     "{\"id\":6,\"result\":\"q\\\"b\\\\s/n\\nt\\tr\\rc\\u0001\\u0008\\u000c"
     "\xc3\xa9\xf0\x9f\x98\x80\\u0000z\"}"},
    {"{\"id\":7,\"method\":\"echo\",\"text\":\"caf\xc3\xa9 \x7f\"}",
     "{\"id\":7,\"result\":\"caf\xc3\xa9 \x7f\"}"},
    {"{\"id\":8,\"method\":\"nope\"}",
     "{\"id\":8,\"error\":\"unknown method\"}"},
    {"{\"id\":9}", "{\"id\":9,\"error\":\"missing method\"}"},
    {"{\"id\":9,\"method\":7}", "{\"id\":9,\"error\":\"missing method\"}"},
    {"{\"method\":\"echo\",\"text\":\"x\"}",
     "{\"id\":null,\"error\":\"missing id\"}"},
    {"{\"id\":\"11\",\"method\":\"echo\",\"text\":\"x\"}",
     "{\"id\":null,\"error\":\"missing id\"}"},
    {"{}", "{\"id\":null,\"error\":\"missing id\"}"},
    {"{\"id\":12,\"method\":\"echo\"}",
     "{\"id\":12,\"error\":\"invalid params\"}"},
    {"{\"id\":13,\"method\":\"echo\",\"text\":5}",
     "{\"id\":13,\"error\":\"invalid params\"}"},
    {"{\"id\":14,\"method\":\"add\",\"a\":\"1\",\"b\":2}",
     "{\"id\":14,\"error\":\"invalid params\"}"},
    {"", NULL},
    {"  \t ", NULL},
    {"\r", NULL},
    {"{\"id\":15,\"method\":\"echo\",\"text\":\"x\"} trailing",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":16,\"method\":\"echo\",\"text\":\"x\"",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":16,\"method\":\"echo\",\"text\":\"x",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":17,\"method\":\"echo\",\"text\":1.5}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":17,\"method\":\"echo\",\"text\":1e3}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":18,\"method\":\"echo\",\"text\":{\"a\":1}}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":19,\"flag\":true}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"[1,2]", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":01}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":-}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":20,\"text\":\"raw \x01 control\"}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":21,\"text\":\"\\ud800\"}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":21,\"text\":\"\\udc00\"}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":21,\"text\":\"\\ud800\\u0041\"}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":21,\"text\":\"\\u12g4\"}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":22,\"text\":\"\\x\"}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":23,}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":24 \"method\":\"x\"}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":25,\"method\":\"echo\",\"text\":\"x\"}}",
     "{\"id\":null,\"error\":\"parse error\"}"},
    {"{id:1}", "{\"id\":null,\"error\":\"parse error\"}"},
    {"{\"id\":1,\"id\":26,\"method\":\"echo\",\"text\":\"first\",\"text\":"
     "\"last\"}",
     "{\"id\":26,\"result\":\"last\"}"},
    {"{\"id\":27,\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"text\":\"ok\","
     "\"extra\":99}",
     "{\"id\":27,\"result\":\"ok\"}"},
    {"{\"\\u0069d\":28,\"method\":\"echo\",\"text\":\"\"}",
     "{\"id\":28,\"result\":\"\"}"},
    {"{\"id\":29,\"method\":\"echo\",\"text\":\"crlf\"}\r",
     "{\"id\":29,\"result\":\"crlf\"}"},
    {"{\"id\":0,\"method\":\"add\",\"a\":0,\"b\":-0}",
     "{\"id\":0,\"result\":0}"},
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

Test(example_stdio_lines, every_answer_then_exit_at_eof,
     .timeout = TH_TIMEOUT(20))
{
    int fds = th_count_fds();
    ex_child c;
    start(&c);
    size_t cap = 1 << 16, len = 0;
    char *in = malloc(cap);
    for (size_t i = 0; i < NCASES; i++)
        len += (size_t)snprintf(in + len, cap - len, "%s\n", cases[i].request);
    write_all(c.in, in, len);
    close(c.in);
    c.in = -1;

    ex_reader r;
    ex_reader_init(&r, c.out);
    char line[4096];
    for (size_t i = 0; i < NCASES; i++) {
        if (!cases[i].answer)
            continue;
        int n = ex_next_line(&r, line, sizeof(line), 5.0);
        cr_assert_geq(n, 0, "no answer to %s", cases[i].request);
        cr_assert_str_eq(line, cases[i].answer, "request: %s",
                         cases[i].request);
    }
    cr_assert_eq(ex_next_line(&r, line, sizeof(line), 5.0), -1,
                 "more output: %s", line);
    expect_clean_exit(&c);
    free(in);
    cr_assert_eq(th_count_fds(), fds);
}

Test(example_stdio_lines, requests_split_at_every_offset,
     .timeout = TH_TIMEOUT(30))
{
    ex_child c;
    start(&c);
    ex_reader r;
    ex_reader_init(&r, c.out);
    const char *two = "{\"id\":1,\"method\":\"echo\",\"text\":\"a\\u00e9\"}\r\n"
                      "{\"id\":2,\"method\":\"add\",\"a\":1,\"b\":2}\n";
    size_t len = strlen(two);
    for (size_t at = 0; at <= len; at++) {
        if (at > 0)
            write_all(c.in, two, at);
        th_sleep_ms(2); /* likely two reads; correct either way */
        if (at < len)
            write_all(c.in, two + at, len - at);
        ex_expect_line(&r, "{\"id\":1,\"result\":\"a\xc3\xa9\"}");
        ex_expect_line(&r, "{\"id\":2,\"result\":3}");
    }
    /* Byte by byte. */
    for (size_t i = 0; i < len; i++) {
        write_all(c.in, two + i, 1);
        th_sleep_ms(1);
    }
    ex_expect_line(&r, "{\"id\":1,\"result\":\"a\xc3\xa9\"}");
    ex_expect_line(&r, "{\"id\":2,\"result\":3}");
    close(c.in);
    c.in = -1;
    ex_expect_eof(&r, 0);
    expect_clean_exit(&c);
}

/* Writes data to the child's stdin while reading its stdout into *out,
 * until everything is written (stdin then closed) and stdout is at EOF. */
static void converse(ex_child *c, const char *data, size_t len, char *out,
                     size_t out_cap, size_t *out_len)
{
    cr_assert_eq(fcntl(c->in, F_SETFL, O_NONBLOCK), 0);
    size_t off = 0;
    *out_len = 0;
    double deadline = th_now() + TH_TIMEOUT(30.0);
    for (;;) {
        cr_assert_lt(th_now(), deadline, "stuck: %zu of %zu written", off, len);
        struct pollfd p[2] = {{.fd = c->out, .events = POLLIN},
                              {.fd = c->in, .events = POLLOUT}};
        int n = poll(p, c->in >= 0 ? 2 : 1, 1000);
        cr_assert_geq(n, 0);
        if (p[0].revents) {
            ssize_t k = read(c->out, out + *out_len, out_cap - *out_len);
            cr_assert_geq(k, 0);
            if (k == 0)
                break;
            *out_len += (size_t)k;
            cr_assert_lt(*out_len, out_cap);
        }
        if (c->in >= 0 && p[1].revents) {
            ssize_t k = write(c->in, data + off, len - off);
            cr_assert(k > 0 || errno == EAGAIN, "write: %s", strerror(errno));
            if (k > 0)
                off += (size_t)k;
            if (off == len) {
                close(c->in);
                c->in = -1;
            }
        }
    }
    cr_assert_eq(off, len);
}

Test(example_stdio_lines, thousands_of_requests_per_write,
     .timeout = TH_TIMEOUT(60))
{
    int count = 20000 / TH_TIMEOUT_SCALE;
    size_t cap = (size_t)count * 96, len = 0;
    char *in = malloc(cap);
    for (int i = 0; i < count; i++)
        len += (size_t)snprintf(in + len, cap - len,
                                "{\"id\":%d,\"method\":\"echo\",\"text\":"
                                "\"request number %d\"}\n",
                                i, i * 7);
    ex_child c;
    start(&c);
    char *out = malloc(cap);
    size_t out_len;
    converse(&c, in, len, out, cap, &out_len);
    char want[128];
    size_t pos = 0;
    for (int i = 0; i < count; i++) {
        int n = snprintf(want, sizeof(want),
                         "{\"id\":%d,\"result\":\"request number %d\"}\n", i,
                         i * 7);
        cr_assert_leq(pos + (size_t)n, out_len, "answer %d missing", i);
        cr_assert(memcmp(out + pos, want, (size_t)n) == 0, "answer %d: %.*s", i,
                  n, out + pos);
        pos += (size_t)n;
    }
    cr_assert_eq(pos, out_len);
    expect_clean_exit(&c);
    free(in);
    free(out);
}

/* stdin is closed right after the requests: the answers still queued then
 * are written before the program exits; an unterminated last request is
 * answered too. */
Test(example_stdio_lines, answers_queued_at_eof_are_written,
     .timeout = TH_TIMEOUT(30))
{
    ex_child c;
    start(&c);
    int count = 2000;
    size_t cap = (size_t)count * 64, len = 0;
    char *in = malloc(cap);
    for (int i = 0; i < count; i++)
        len += (size_t)snprintf(in + len, cap - len,
                                "{\"id\":%d,\"method\":\"add\",\"a\":%d,"
                                "\"b\":1}\n",
                                i, i);
    len += (size_t)snprintf(in + len, cap - len,
                            "{\"id\":-1,\"method\":"
                            "\"echo\",\"text\":\"last\"}");
    write_all(c.in, in, len); /* about 80 KB: answers fit the queue */
    close(c.in);
    c.in = -1;

    ex_reader r;
    ex_reader_init(&r, c.out);
    char want[64];
    for (int i = 0; i < count; i++) {
        snprintf(want, sizeof(want), "{\"id\":%d,\"result\":%d}", i, i + 1);
        ex_expect_line(&r, want);
    }
    ex_expect_line(&r, "{\"id\":-1,\"result\":\"last\"}");
    ex_expect_eof(&r, 0);
    expect_clean_exit(&c);
    free(in);
}

Test(example_stdio_lines, exit_method_ends_without_eof,
     .timeout = TH_TIMEOUT(10))
{
    ex_child c;
    start(&c);
    write_str(c.in, "{\"id\":1,\"method\":\"echo\",\"text\":\"a\"}\n"
                    "{\"id\":2,\"method\":\"exit\"}\n"
                    "{\"id\":3,\"method\":\"echo\",\"text\":\"b\"}\n");
    ex_reader r;
    ex_reader_init(&r, c.out);
    ex_expect_line(&r, "{\"id\":1,\"result\":\"a\"}");
    ex_expect_line(&r, "{\"id\":2,\"result\":\"bye\"}");
    ex_expect_eof(&r, 0);  /* request 3 is not answered */
    expect_clean_exit(&c); /* closes stdin only now */
}

Test(example_stdio_lines, empty_input, .timeout = TH_TIMEOUT(10))
{
    ex_child c;
    start(&c);
    close(c.in);
    c.in = -1;
    ex_reader r;
    ex_reader_init(&r, c.out);
    ex_expect_eof(&r, 0);
    expect_clean_exit(&c);
}

/* A reader that does not read: the program stops reading stdin once about
 * HIGH_WATER (1 MiB) of answers wait, so a writer cannot make it buffer
 * 4 MiB. Then everything is read and every answer is right. */
Test(example_stdio_lines, unread_answers_stop_reading,
     .timeout = TH_TIMEOUT(60))
{
    size_t text = 1000;
    int count = 4096; /* about 4 MiB of requests, as much of answers */
    size_t cap = (size_t)count * (text + 64), len = 0;
    char *in = malloc(cap);
    char *filler = malloc(text + 1);
    memset(filler, 'w', text);
    filler[text] = '\0';
    for (int i = 0; i < count; i++)
        len += (size_t)snprintf(in + len, cap - len,
                                "{\"id\":%d,\"method\":\"echo\",\"text\":\"%s"
                                "\"}\n",
                                i, filler);
    ex_child c;
    start(&c);
    cr_assert_eq(fcntl(c.in, F_SETFL, O_NONBLOCK), 0);
    size_t off = 0;
    for (;;) { /* write until no progress for 300 ms */
        struct pollfd p = {.fd = c.in, .events = POLLOUT};
        if (poll(&p, 1, 300) == 0)
            break;
        ssize_t k = write(c.in, in + off, len - off);
        cr_assert(k > 0 || errno == EAGAIN);
        if (k > 0)
            off += (size_t)k;
        cr_assert_lt(off, len, "all 4 MiB were taken: nothing held back");
    }
    cr_assert_lt(off, (size_t)3 << 20, "%zu bytes taken", off);

    char *out = malloc(cap);
    size_t out_len;
    converse(&c, in + off, len - off, out, cap, &out_len);
    size_t pos = 0;
    char head[32];
    for (int i = 0; i < count; i++) {
        int n = snprintf(head, sizeof(head), "{\"id\":%d,\"result\":\"", i);
        cr_assert_leq(pos + (size_t)n + text + 3, out_len);
        cr_assert(memcmp(out + pos, head, (size_t)n) == 0);
        cr_assert(memcmp(out + pos + n, filler, text) == 0);
        cr_assert(memcmp(out + pos + n + text, "\"}\n", 3) == 0);
        pos += (size_t)n + text + 3;
    }
    cr_assert_eq(pos, out_len);
    expect_clean_exit(&c);
    free(in);
    free(out);
    free(filler);
}

Test(example_stdio_lines, overlong_request_exits_1, .timeout = TH_TIMEOUT(20))
{
    signal(SIGPIPE, SIG_IGN); /* the child may be gone while we write */
    ex_child c;
    start(&c);
    size_t len = 1024 * 1024 + 1; /* MAX_REQUEST + 1, no newline */
    char *in = malloc(len);
    memset(in, 'a', len);
    cr_assert_eq(fcntl(c.in, F_SETFL, O_NONBLOCK), 0);
    size_t off = 0;
    double deadline = th_now() + TH_TIMEOUT(10.0);
    while (off < len) {
        cr_assert_lt(th_now(), deadline);
        struct pollfd p = {.fd = c.in, .events = POLLOUT};
        poll(&p, 1, 100);
        ssize_t k = write(c.in, in + off, len - off);
        if (k < 0 && errno == EPIPE)
            break; /* it stopped reading: exited */
        cr_assert(k > 0 || errno == EAGAIN, "write: %s", strerror(errno));
        if (k > 0)
            off += (size_t)k;
    }
    int status = ex_wait(&c, 10.0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit status %#x",
              status);
    char err[1024];
    ex_read_all(c.err, err, sizeof(err), 5.0);
    cr_assert_not_null(strstr(err, "longer than 1048576 bytes"), "stderr: %s",
                       err);
    ex_close(&c);
    free(in);
}
