/*
 * test_framing.c - the standalone framers (em_lines_*, em_frames_*,
 * em_frame_prefix_encode) against a reference splitter
 * (fuzz/framing_check.h) that sees the whole input at once.
 *
 * Covers: lines, "\r" chomping and keep_cr; a delimiter split across
 * chunks at every offset (also self-overlapping delimiters such as
 * "abab"); every single and every pair of cut points of a small input;
 * thousands of random chunkings of random protocols that switch between
 * lines, whole binary blocks, binary pieces, unbounded binary and new
 * delimiters from inside receive_line; zero copy for a message inside one
 * chunk; overlong lines (-EMSGSIZE, sticky), a binary length larger than
 * what arrives, bad arguments with exact errnos; frames with every prefix,
 * zero-length frames, split prefixes, a varint that never ends, lengths
 * above the maximum (refused before any body byte arrives), EOF inside a
 * frame, and the prefix encoder's bounds.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../fuzz/framing_check.h"
#include "em.h"
#include "helpers.h"

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void expect_same(const fc_log *ref, const fc_log *got, const char *what)
{
    size_t at = fc_compare(ref, got);
    if (at) {
        size_t i = at - 1;
        cr_assert_fail(
            "%s: event %zu differs (ref %zu events err %d, got %zu "
            "events err %d; ref type %d len %zu, got type %d len %zu)",
            what, i, ref->count, ref->err, got->count, got->err,
            i < ref->count ? ref->ev[i].type : -1,
            i < ref->count ? ref->ev[i].len : 0,
            i < got->count ? got->ev[i].type : -1,
            i < got->count ? got->ev[i].len : 0);
    }
    cr_assert_eq(got->setter_err, 0, "%s: a setter failed: %d", what,
                 got->setter_err);
}

static void check_lines(const fc_line_cfg *c, const char *in, size_t n,
                        const size_t *cuts, size_t ncuts, const char *what)
{
    fc_log ref = {0}, got = {0};
    fc_ref_lines(c, in, n, &ref);
    cr_assert_eq(fc_run_lines(c, in, n, cuts, ncuts, &got), 0);
    expect_same(&ref, &got, what);
    fc_log_free(&ref);
    fc_log_free(&got);
}

/* ---- lines: basics ------------------------------------------------------- */

typedef struct rec {
    char lines[16][64];
    size_t lens[16];
    const char *ptrs[16];
    int n;
} rec;

static void rec_line(void *arg, const char *line, size_t len)
{
    rec *r = arg;
    cr_assert_lt(r->n, 16);
    cr_assert_lt(len, 64);
    memcpy(r->lines[r->n], line, len);
    r->lines[r->n][len] = 0;
    r->lens[r->n] = len;
    r->ptrs[r->n] = line;
    r->n++;
}

Test(lines, whole_lines_and_chomp, .timeout = TH_TIMEOUT(5))
{
    rec r = {0};
    em_line_callbacks cb = {.line = rec_line};
    em_lines *p;
    cr_assert_eq(em_lines_new(NULL, &cb, &r, &p), 0);
    const char in[] = "one\ntwo\r\n\nlast";
    cr_assert_eq(em_lines_feed(p, in, sizeof(in) - 1), 0);
    cr_assert_eq(r.n, 3);
    cr_assert_str_eq(r.lines[0], "one");
    cr_assert_str_eq(r.lines[1], "two", "LineText2 chomps the \\r");
    cr_assert_eq(r.lens[2], 0);
    cr_assert_eq(em_lines_buffered(p), 4);
    cr_assert_eq(em_lines_finish(p), 0);
    cr_assert_eq(r.n, 4);
    cr_assert_str_eq(r.lines[3], "last", "the unterminated last line");
    /* no copy: the first three came straight from the input */
    cr_assert_eq(r.ptrs[0], in);
    cr_assert_eq(r.ptrs[1], in + 4);
    em_lines_free(p);

    rec k = {0};
    em_line_opts o = {.keep_cr = 1};
    cr_assert_eq(em_lines_new(&o, &cb, &k, &p), 0);
    cr_assert_eq(em_lines_feed(p, "a\r\n", 3), 0);
    cr_assert_eq(k.lens[0], 2, "keep_cr keeps it");
    em_lines_free(p);
}

Test(lines, custom_delimiters, .timeout = TH_TIMEOUT(5))
{
    rec r = {0};
    em_line_callbacks cb = {.line = rec_line};
    em_line_opts o = {.delimiter = "\r\n"};
    em_lines *p;
    cr_assert_eq(em_lines_new(&o, &cb, &r, &p), 0);
    cr_assert_eq(em_lines_feed(p, "a\nb\r\nc\r", 7), 0);
    cr_assert_eq(r.n, 1);
    cr_assert_str_eq(r.lines[0], "a\nb", "only \\r\\n ends a line");
    cr_assert_eq(em_lines_feed(p, "\n", 1), 0);
    cr_assert_str_eq(r.lines[1], "c");
    cr_assert_eq(em_lines_set_delimiter(p, "||", 2), 0);
    cr_assert_eq(em_lines_feed(p, "x|y||", 5), 0);
    cr_assert_str_eq(r.lines[2], "x|y");
    /* a delimiter with a NUL byte: length given explicitly */
    cr_assert_eq(em_lines_set_delimiter(p, "\0", 1), 0);
    cr_assert_eq(em_lines_feed(p, "z\0", 2), 0);
    cr_assert_str_eq(r.lines[3], "z");
    em_lines_free(p);
}

Test(lines, bad_arguments, .timeout = TH_TIMEOUT(5))
{
    em_lines *p = (em_lines *)1;
    em_line_opts empty = {.delimiter = ""};
    cr_assert_eq(em_lines_new(NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(em_lines_new(&empty, NULL, NULL, &p), -EINVAL);
    cr_assert_null(p, "out is cleared on failure");
    cr_assert_eq(em_lines_new(NULL, NULL, NULL, &p), 0);
    cr_assert_eq(em_lines_feed(NULL, "a", 1), -EINVAL);
    cr_assert_eq(em_lines_feed(p, NULL, 1), -EINVAL);
    cr_assert_eq(em_lines_feed(p, NULL, 0), 0);
    cr_assert_eq(em_lines_set_delimiter(p, "", 0), -EINVAL);
    cr_assert_eq(em_lines_set_delimiter(p, NULL, 1), -EINVAL);
    cr_assert_eq(em_lines_set_binary_mode(p, 10, 7), -EINVAL);
    cr_assert_eq(
        em_lines_set_binary_mode(p, EM_MAX_BINARY_DEFAULT + 1, EM_BINARY_WHOLE),
        -EMSGSIZE);
    cr_assert_eq(em_lines_set_binary_mode(p, EM_MAX_BINARY_DEFAULT + 1,
                                          EM_BINARY_PIECES),
                 0, "pieces have no size limit");
    cr_assert_eq(em_lines_set_line_mode(p), 0);
    cr_assert_eq(em_lines_feed(p, "partial", 7), 0);
    cr_assert_eq(em_lines_set_binary_mode(p, 4, EM_BINARY_WHOLE), -EBUSY,
                 "a partial line is buffered");
    cr_assert_eq(em_lines_set_delimiter(p, "x", 1), -EBUSY);
    cr_assert_eq(em_lines_set_line_mode(NULL), -EINVAL);
    cr_assert_eq(em_lines_finish(NULL), -EINVAL);
    cr_assert_eq(em_lines_buffered(NULL), 0);
    em_lines_free(p);
    em_lines_free(NULL);
}

Test(lines, overlong_lines_fail_and_stay_failed, .timeout = TH_TIMEOUT(5))
{
    rec r = {0};
    em_line_callbacks cb = {.line = rec_line};
    em_line_opts o = {.max_line = 8};
    em_lines *p;
    cr_assert_eq(em_lines_new(&o, &cb, &r, &p), 0);
    cr_assert_eq(em_lines_feed(p, "12345678\n", 9), 0, "exactly max is fine");
    cr_assert_eq(em_lines_feed(p, "123456789\n", 10), -EMSGSIZE);
    cr_assert_eq(em_lines_feed(p, "a\n", 2), -EMSGSIZE, "sticky");
    cr_assert_eq(em_lines_finish(p), -EMSGSIZE);
    cr_assert_eq(r.n, 1);
    em_lines_free(p);

    /* without a delimiter in sight: fails once the bytes cannot fit, and
     * never buffers more than max_line + delimiter - 1 */
    r.n = 0;
    cr_assert_eq(em_lines_new(&o, &cb, &r, &p), 0);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(em_lines_feed(p, "x", 1), 0);
    cr_assert_eq(em_lines_buffered(p), 8);
    cr_assert_eq(em_lines_feed(p, "x", 1), -EMSGSIZE);
    cr_assert_leq(em_lines_buffered(p), 8);
    em_lines_free(p);

    /* a huge chunk without a delimiter fails at once */
    char *big = malloc(1 << 20);
    memset(big, 'y', 1 << 20);
    o.max_line = 0; /* default 16 KiB */
    cr_assert_eq(em_lines_new(&o, &cb, &r, &p), 0);
    cr_assert_eq(em_lines_feed(p, big, 1 << 20), -EMSGSIZE);
    cr_assert_eq(em_lines_buffered(p), 0);
    em_lines_free(p);
    free(big);
}

/* ---- lines: binary mode ------------------------------------------------- */

Test(lines, binary_switch_mid_chunk_and_back, .timeout = TH_TIMEOUT(5))
{
    const char in[] =
        "hello\nBIN 5\n12345after\nPCS 3\nabcdef\nRAW\nrest\nof it";
    fc_line_cfg c = {"\n", 1, 64, 1024, 0};
    check_lines(&c, in, sizeof(in) - 1, NULL, 0, "one chunk");
    fc_log got = {0};
    cr_assert_eq(fc_run_lines(&c, in, sizeof(in) - 1, NULL, 0, &got), 0);
    /* hello, BIN 5, [12345], END, after, PCS 3, [abc], END, def, RAW, [...] */
    cr_assert_eq(got.count, 11);
    cr_assert_eq(got.ev[2].type, FC_BIN);
    cr_assert_eq(got.ev[2].len, 5);
    cr_assert_eq(got.ev[3].type, FC_END);
    cr_assert_eq(got.ev[4].type, FC_LINE);
    cr_assert_eq(got.ev[10].type, FC_BIN);
    cr_assert_eq(got.ev[10].len, strlen("rest\nof it"));
    fc_log_free(&got);
}

Test(lines, binary_length_larger_than_what_arrives, .timeout = TH_TIMEOUT(5))
{
    const char in[] = "BIN 100\nonly ten b";
    fc_line_cfg c = {"\n", 1, 64, 1024, 0};
    fc_log got = {0};
    cr_assert_eq(fc_run_lines(&c, in, sizeof(in) - 1, NULL, 0, &got), 0);
    cr_assert_eq(got.err, 0);
    cr_assert_eq(got.count, 2, "the partial block, no end call");
    cr_assert_eq(got.ev[1].type, FC_BIN);
    cr_assert_eq(got.ev[1].len, 10);
    fc_log_free(&got);
    check_lines(&c, in, sizeof(in) - 1, NULL, 0, "partial block");
}

static int chained;
static void chain_line(void *arg, const char *line, size_t len)
{
    (void)line;
    (void)len;
    em_lines **pp = arg;
    cr_assert_eq(em_lines_set_binary_mode(*pp, 2, EM_BINARY_WHOLE), 0);
}
static void chain_bin(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)data;
    cr_assert_eq(len, 2);
}
static void chain_end(void *arg)
{
    em_lines **pp = arg;
    /* line mode is back on before this call: a block may follow */
    if (++chained < 3)
        cr_assert_eq(em_lines_set_binary_mode(*pp, 2, EM_BINARY_WHOLE), 0);
}

Test(lines, blocks_chain_from_the_end_call, .timeout = TH_TIMEOUT(5))
{
    em_lines *p;
    em_line_callbacks cb = {chain_line, chain_bin, chain_end};
    cr_assert_eq(em_lines_new(NULL, &cb, &p, &p), 0);
    chained = 0;
    cr_assert_eq(em_lines_feed(p, "go\naabbccX", 10), 0);
    cr_assert_eq(chained, 3);
    cr_assert_eq(em_lines_buffered(p), 1, "X is a partial line again");
    em_lines_free(p);
}

Test(lines, delimiter_changed_in_callback_consumes_the_old_one,
     .timeout = TH_TIMEOUT(5))
{
    /* Found by fuzz_lines: the bytes a line used were counted with the
     * delimiter the callback had just installed. */
    const char in[] = "DLM \r\r\r\n\rx\r\ry\r\r";
    fc_line_cfg c = {"\n", 1, 32, 64, 0};
    check_lines(&c, in, sizeof(in) - 1, NULL, 0, "one chunk");
    fc_log got = {0};
    cr_assert_eq(fc_run_lines(&c, in, sizeof(in) - 1, NULL, 0, &got), 0);
    cr_assert_eq(got.count, 3);
    cr_assert_eq(got.ev[1].len, 2, "\\rx: the old delimiter alone was used");
    fc_log_free(&got);
    const char in2[] = "ab\nDLM XY\nonetwoXYthree";
    size_t cut[1] = {3};
    check_lines(&c, in2, sizeof(in2) - 1, cut, 1, "buffered line");
}

/* ---- lines: chunking ------------------------------------------------------
 */

Test(lines, delimiter_split_at_every_offset, .timeout = TH_TIMEOUT(20))
{
    static const struct {
        const char *delim;
        const char *in;
    } cases[] = {
        {"\n", "ab\ncd\n\nef\r\ngh"},
        {"\r\n", "ab\r\ncd\r\r\n\n\r\nef\r"},
        {"XYZ", "aXYbXYZcXXYZdXYZXYZeXY"},
        {"abab", "xabaabababyababab"},
        {"aa", "aaaaabaa"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        fc_line_cfg c = {cases[k].delim, strlen(cases[k].delim), 64, 1024, 0};
        const char *in = cases[k].in;
        size_t n = strlen(in);
        check_lines(&c, in, n, NULL, 0, cases[k].delim);
        for (size_t i = 0; i <= n; i++) {
            size_t one[1] = {i};
            check_lines(&c, in, n, one, 1, "one cut");
            for (size_t j = i; j <= n; j++) {
                size_t two[2] = {i, j};
                check_lines(&c, in, n, two, 2, "two cuts");
            }
        }
        /* byte by byte */
        size_t cuts[64];
        for (size_t i = 0; i < n; i++)
            cuts[i] = i + 1;
        check_lines(&c, in, n, cuts, n, "bytewise");
    }
}

/* A random protocol: lines of random bytes from a small alphabet (so
 * delimiters and their prefixes are frequent), commands, binary blocks. */
static size_t random_protocol(char *out, size_t cap, const fc_line_cfg *c)
{
    static const char alpha[] = "ab\r\nXYZ|";
    size_t n = 0;
    while (n + 64 < cap) {
        int what = (int)(rnd() % 10);
        if (what == 0) {
            int len = (int)(rnd() % 40) + 1;
            n += (size_t)snprintf(out + n, cap - n, "BIN %d", len);
            memcpy(out + n, c->delim, c->dlen);
            n += c->dlen;
            for (int i = 0; i < len && n < cap; i++)
                out[n++] = alpha[rnd() % 8];
        } else if (what == 1) {
            int len = (int)(rnd() % 40) + 1;
            n += (size_t)snprintf(out + n, cap - n, "PCS %d", len);
            memcpy(out + n, c->delim, c->dlen);
            n += c->dlen;
            for (int i = 0; i < len && n < cap; i++)
                out[n++] = alpha[rnd() % 8];
        } else if (what == 2 && rnd() % 4 == 0) {
            /* a new delimiter, then back to the configured one */
            n += (size_t)snprintf(out + n, cap - n, "DLM |");
            memcpy(out + n, c->delim, c->dlen);
            n += c->dlen;
            n += (size_t)snprintf(out + n, cap - n, "x|DLM ");
            memcpy(out + n, c->delim, c->dlen);
            n += c->dlen;
            out[n++] = '|';
        } else {
            int len = (int)(rnd() % 12);
            for (int i = 0; i < len; i++)
                out[n++] = alpha[rnd() % 8];
            if (rnd() % 8) {
                memcpy(out + n, c->delim, c->dlen);
                n += c->dlen;
            }
        }
    }
    if (rnd() % 20 == 0) {
        memcpy(out + n, "RAW", 3);
        n += 3;
        memcpy(out + n, c->delim, c->dlen);
        n += c->dlen;
    }
    return n;
}

static size_t random_cuts(size_t n, size_t *cuts, size_t max)
{
    size_t k = 0, at = 0;
    while (k < max) {
        size_t step = rnd() % 4 == 0 ? rnd() % 64 : rnd() % 6;
        at += step;
        if (at >= n)
            break;
        cuts[k++] = at;
    }
    return k;
}

Test(lines, random_chunkings_agree_with_reference, .timeout = TH_TIMEOUT(60))
{
    static const fc_line_cfg cfgs[] = {
        {"\n", 1, 16, 64, 0}, {"\n", 1, 16, 64, 1}, {"\r\n", 2, 24, 64, 0},
        {"XYZ", 3, 8, 30, 0}, {"|", 1, 4, 64, 0},   {"abab", 4, 20, 64, 0},
    };
    rng_state = 0x9e3779b97f4a7c15ull;
    char in[2048];
    size_t cuts[2048];
    int iterations = 3000 / TH_TIMEOUT_SCALE;
    for (int it = 0; it < iterations; it++) {
        const fc_line_cfg *c = &cfgs[it % 6];
        size_t n = random_protocol(in, sizeof(in) - 16, c);
        size_t k = random_cuts(n, cuts, sizeof(cuts) / sizeof(cuts[0]));
        char what[64];
        snprintf(what, sizeof(what), "iteration %d", it);
        check_lines(c, in, n, cuts, k, what);
    }
}

/* ---- frames -------------------------------------------------------------- */

static void check_frames(em_frame_prefix prefix, size_t max,
                         const unsigned char *in, size_t n, const size_t *cuts,
                         size_t ncuts, const char *what)
{
    fc_log ref = {0}, got = {0};
    fc_ref_frames(prefix, max, in, n, &ref);
    cr_assert_eq(fc_run_frames(prefix, max, in, n, cuts, ncuts, &got), 0);
    expect_same(&ref, &got, what);
    fc_log_free(&ref);
    fc_log_free(&got);
}

/* frames of the given lengths, each prefix encoded by the library */
static size_t build_frames(em_frame_prefix prefix, const size_t *lens,
                           size_t count, unsigned char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        int w = em_frame_prefix_encode(prefix, lens[i], out + n);
        cr_assert_gt(w, 0);
        n += (size_t)w;
        for (size_t j = 0; j < lens[i]; j++)
            out[n++] = (unsigned char)('a' + (i + j) % 26);
    }
    return n;
}

Test(frames, every_prefix_every_cut, .timeout = TH_TIMEOUT(30))
{
    static const em_frame_prefix prefixes[] = {EM_PREFIX_U8, EM_PREFIX_U16,
                                               EM_PREFIX_U32, EM_PREFIX_VARINT};
    static const size_t lens[] = {3, 0, 1, 0, 0, 5, 200, 2};
    unsigned char in[1024];
    for (int k = 0; k < 4; k++) {
        size_t n = build_frames(prefixes[k], lens, 8, in);
        fc_log got = {0};
        cr_assert_eq(fc_run_frames(prefixes[k], 1000, in, n, NULL, 0, &got), 0);
        cr_assert_eq(got.err, 0);
        cr_assert_eq(got.count, 8, "zero-length frames are frames");
        cr_assert_eq(got.ev[1].len, 0);
        cr_assert_eq(got.ev[6].len, 200);
        fc_log_free(&got);
        for (size_t i = 0; i <= n; i++) {
            size_t one[1] = {i};
            check_frames(prefixes[k], 1000, in, n, one, 1, "one cut");
        }
        size_t cuts[1024];
        for (size_t i = 0; i < n; i++)
            cuts[i] = i + 1;
        check_frames(prefixes[k], 1000, in, n, cuts, n, "bytewise");
    }
}

Test(frames, random_chunkings_agree_with_reference, .timeout = TH_TIMEOUT(60))
{
    rng_state = 0x2545f4914f6cdd1dull;
    unsigned char in[4096];
    size_t cuts[4096];
    int iterations = 2000 / TH_TIMEOUT_SCALE;
    for (int it = 0; it < iterations; it++) {
        em_frame_prefix prefix =
            (em_frame_prefix[]){EM_PREFIX_U8, EM_PREFIX_U16, EM_PREFIX_U32,
                                EM_PREFIX_VARINT}[it % 4];
        size_t lens[24];
        size_t count = rnd() % 24;
        for (size_t i = 0; i < count; i++)
            lens[i] = rnd() % 3 == 0 ? 0 : rnd() % 150;
        size_t n = build_frames(prefix, lens, count, in);
        if (rnd() % 4 == 0 && n > 0)
            n -= rnd() % n; /* truncated: EOF inside a frame */
        if (rnd() % 8 == 0) /* random garbage */
            for (size_t i = 0; i < n; i++)
                in[i] = (unsigned char)rnd();
        size_t k = random_cuts(n, cuts, sizeof(cuts) / sizeof(cuts[0]));
        size_t max = rnd() % 2 ? 1000 : 120;
        check_frames(prefix, max, in, n, cuts, k, "random");
    }
}

static int frames_seen;
static const char *frame_ptr;
static void count_frame(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)len;
    frame_ptr = data;
    frames_seen++;
}

Test(frames, errors, .timeout = TH_TIMEOUT(5))
{
    em_frames *f = (em_frames *)1;
    em_frame_opts bad = {.prefix = 3};
    cr_assert_eq(em_frames_new(&bad, count_frame, NULL, &f), -EINVAL);
    cr_assert_null(f);
    cr_assert_eq(em_frames_new(NULL, count_frame, NULL, NULL), -EINVAL);

    /* a varint that never ends */
    em_frame_opts v = {.prefix = EM_PREFIX_VARINT, .max_frame = SIZE_MAX};
    cr_assert_eq(em_frames_new(&v, count_frame, NULL, &f), 0);
    unsigned char cont[11];
    memset(cont, 0x80, sizeof(cont));
    for (int i = 0; i < 9; i++)
        cr_assert_eq(em_frames_feed(f, (char *)cont + i, 1), 0);
    cr_assert_eq(em_frames_buffered(f), 9);
    cr_assert_eq(em_frames_feed(f, (char *)cont, 1), -EBADMSG);
    cr_assert_eq(em_frames_feed(f, "", 0), -EBADMSG, "sticky");
    em_frames_free(f);
    /* ten bytes that end, but with more than 64 bits */
    cr_assert_eq(em_frames_new(&v, count_frame, NULL, &f), 0);
    unsigned char wide[10];
    memset(wide, 0xff, 9);
    wide[9] = 0x02;
    cr_assert_eq(em_frames_feed(f, (char *)wide, 10), -EBADMSG);
    em_frames_free(f);

    /* a length above the maximum fails before any body byte arrives */
    em_frame_opts o = {.prefix = EM_PREFIX_U32, .max_frame = 100};
    cr_assert_eq(em_frames_new(&o, count_frame, NULL, &f), 0);
    cr_assert_eq(em_frames_feed(f, "\0\0\0\x65", 4), -EMSGSIZE);
    cr_assert_eq(em_frames_finish(f), -EMSGSIZE);
    em_frames_free(f);
    cr_assert_eq(em_frames_new(&v, count_frame, NULL, &f), 0);
    em_frames_free(f);
    v.max_frame = 300;
    cr_assert_eq(em_frames_new(&v, count_frame, NULL, &f), 0);
    /* 0xff 0x7f = 16383: known too big after two bytes */
    cr_assert_eq(em_frames_feed(f, "\xff\x7f", 2), -EMSGSIZE);
    em_frames_free(f);

    /* EOF inside the prefix and inside the body */
    cr_assert_eq(em_frames_new(&o, count_frame, NULL, &f), 0);
    cr_assert_eq(em_frames_feed(f, "\0\0", 2), 0);
    cr_assert_eq(em_frames_finish(f), -EBADMSG);
    em_frames_free(f);
    cr_assert_eq(em_frames_new(&o, count_frame, NULL, &f), 0);
    cr_assert_eq(em_frames_feed(f,
                                "\0\0\0\x05"
                                "abc",
                                7),
                 0);
    cr_assert_eq(em_frames_buffered(f), 3);
    cr_assert_eq(em_frames_finish(f), -EBADMSG);
    em_frames_free(f);

    /* zero copy: a frame whole in the chunk comes from the chunk */
    frames_seen = 0;
    const char whole[] = "\0\0\0\x03"
                         "xyz";
    cr_assert_eq(em_frames_new(&o, count_frame, NULL, &f), 0);
    cr_assert_eq(em_frames_feed(f, whole, 7), 0);
    cr_assert_eq(frames_seen, 1);
    cr_assert_eq(frame_ptr, whole + 4);
    cr_assert_eq(em_frames_finish(f), 0);
    cr_assert_eq(em_frames_feed(NULL, "", 0), -EINVAL);
    cr_assert_eq(em_frames_feed(f, NULL, 1), -EINVAL);
    cr_assert_eq(em_frames_finish(NULL), -EINVAL);
    em_frames_free(f);
    em_frames_free(NULL);
}

Test(frames, prefix_encoder_bounds, .timeout = TH_TIMEOUT(5))
{
    unsigned char b[10];
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U8, 255, b), 1);
    cr_assert_eq(b[0], 255);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U8, 256, b), -EMSGSIZE);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U16, 0x1234, b), 2);
    cr_assert(b[0] == 0x12 && b[1] == 0x34, "big-endian");
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U16, 65536, b), -EMSGSIZE);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U32, 0x01020304, b), 4);
    cr_assert(b[0] == 1 && b[1] == 2 && b[2] == 3 && b[3] == 4);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U32, 1ull << 32, b),
                 -EMSGSIZE);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_VARINT, 0, b), 1);
    cr_assert_eq(b[0], 0);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_VARINT, 127, b), 1);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_VARINT, 128, b), 2);
    cr_assert(b[0] == 0x80 && b[1] == 0x01, "LEB128: 300 is ac 02 style");
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_VARINT, 300, b), 2);
    cr_assert(b[0] == 0xac && b[1] == 0x02);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_VARINT, UINT64_MAX, b), 10);
    cr_assert_eq(b[9], 1);
    cr_assert_eq(em_frame_prefix_encode(7, 1, b), -EINVAL);
    cr_assert_eq(em_frame_prefix_encode(EM_PREFIX_U8, 1, NULL), -EINVAL);

    /* the decoder takes the largest varint back */
    fc_log got = {0};
    unsigned char in[10];
    em_frame_prefix_encode(EM_PREFIX_VARINT, UINT64_MAX, in);
    cr_assert_eq(
        fc_run_frames(EM_PREFIX_VARINT, SIZE_MAX, in, 10, NULL, 0, &got), 0);
    cr_assert_eq(got.err, -EBADMSG, "a body of 2^64-1 bytes never arrives");
    fc_log_free(&got);
}
