/*
 * lines.c - line and text framing with EventMachine's LineText2 semantics
 * (em_lines_*): arbitrary chunks in, whole lines and binary blocks out.
 *
 * A line that lies whole inside the chunk being parsed is handed to the
 * callback straight from the chunk; only a line split across chunks is
 * assembled in `buf`, and `buf` never grows past max_line plus a partial
 * delimiter, so a peer that never sends the delimiter costs a bounded
 * amount of memory and then an error. The simpler design, appending every
 * chunk to a buffer and cutting lines out of it, copies every byte once
 * and memmoves the rest after every line.
 *
 * A delimiter may itself be split across chunks. Only the last
 * delimiter_len - 1 buffered bytes can start such a delimiter (earlier
 * positions were searched when they arrived), so those few positions are
 * checked against the new chunk before the chunk is searched on its own.
 *
 * The parser reports how many bytes it consumed, because the connection
 * framer (framer.c) may have to stop after any callback (a pause, a close)
 * and keep the rest; the standalone em_lines_feed simply never stops.
 * State is updated before every callback, so a callback may switch modes
 * or delimiters and the loop continues with the new setting.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"

enum { MODE_LINES, MODE_WHOLE, MODE_PIECES, MODE_UNBOUNDED };

struct em_lines {
    em_line_callbacks cb;
    void *arg;
    int (*should_stop)(void *arg);
    char *delim;
    size_t dlen;
    size_t max_line;
    size_t max_binary;
    int keep_cr;
    int mode;
    int failed;        /* 0 or the sticky error (-EMSGSIZE) */
    uint64_t bin_left; /* MODE_WHOLE / MODE_PIECES: bytes still to come */
    char *buf;         /* partial line, or the whole block being gathered */
    size_t len;
    size_t cap;
};

static int reserve(em_lines *p, size_t need)
{
    if (need <= p->cap)
        return 0;
    size_t cap = p->cap ? p->cap : 256;
    while (cap < need)
        cap *= 2;
    char *b = realloc(p->buf, cap);
    if (!b)
        return -ENOMEM;
    p->buf = b;
    p->cap = cap;
    return 0;
}

static int append(em_lines *p, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    int err = reserve(p, p->len + len);
    if (err < 0)
        return err;
    memcpy(p->buf + p->len, data, len);
    p->len += len;
    return 0;
}

/* Drops the buffer once it grew large for a long line, so a connection
 * that once got a 16 KiB line does not keep 16 KiB forever. */
static void shrink(em_lines *p)
{
    if (p->cap > 4096) {
        free(p->buf);
        p->buf = NULL;
        p->cap = 0;
    }
}

static int set_delimiter(em_lines *p, const char *delim, size_t len)
{
    if (!delim) {
        delim = "\n";
        len = 1;
    } else if (len == 0) {
        len = strlen(delim);
    }
    if (len == 0)
        return -EINVAL;
    char *copy = malloc(len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, delim, len);
    free(p->delim);
    p->delim = copy;
    p->dlen = len;
    return 0;
}

int em__lines_make(const em_line_opts *opts, const em_line_callbacks *cb,
                   void *arg, int (*should_stop)(void *), em_lines **out)
{
    em_line_opts defaults = {0};
    if (!opts)
        opts = &defaults;
    if (opts->delimiter && opts->delimiter_len == 0 && !opts->delimiter[0])
        return -EINVAL;
    em_lines *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    int err = set_delimiter(p, opts->delimiter, opts->delimiter_len);
    if (err < 0) {
        free(p);
        return err;
    }
    p->max_line = opts->max_line ? opts->max_line : EM_MAX_LINE_DEFAULT;
    p->max_binary = opts->max_binary ? opts->max_binary : EM_MAX_BINARY_DEFAULT;
    p->keep_cr = opts->keep_cr;
    if (cb)
        p->cb = *cb;
    p->arg = arg;
    p->should_stop = should_stop;
    *out = p;
    return 0;
}

int em_lines_new(const em_line_opts *opts, const em_line_callbacks *cb,
                 void *arg, em_lines **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    return em__lines_make(opts, cb, arg, NULL, out);
}

void em_lines_free(em_lines *p)
{
    if (!p)
        return;
    free(p->delim);
    free(p->buf);
    free(p);
}

void em__lines_reset(em_lines *p)
{
    p->mode = MODE_LINES;
    p->failed = 0;
    p->bin_left = 0;
    p->len = 0;
    shrink(p);
}

int em__lines_failed(const em_lines *p)
{
    return p->failed;
}

static int stop(const em_lines *p)
{
    return p->should_stop && p->should_stop(p->arg);
}

/* Delivers a line (state already advanced), chomping "\r" as LineText2's
 * default delimiter does. */
static void emit_line(em_lines *p, const char *line, size_t len)
{
    if (!p->keep_cr && p->dlen == 1 && p->delim[0] == '\n' && len > 0 &&
        line[len - 1] == '\r')
        len--;
    if (p->cb.line)
        p->cb.line(p->arg, line, len);
}

static void end_block(em_lines *p)
{
    if (p->cb.end_of_binary)
        p->cb.end_of_binary(p->arg);
}

/* The buffer holds a partial line: does the delimiter straddle it and
 * data? Returns bytes of data that complete it (the line is buf[0, *at)),
 * 0 when no delimiter straddles, or SIZE_MAX when all of data may still be
 * the start of the delimiter's rest (take it all and wait). */
static size_t straddle(const em_lines *p, const char *data, size_t len,
                       size_t *at)
{
    size_t d = p->dlen;
    if (d < 2)
        return 0;
    size_t first = p->len > d - 1 ? p->len - (d - 1) : 0;
    int partial = 0;
    for (size_t s = first; s < p->len; s++) {
        size_t k = p->len - s; /* delimiter bytes already buffered */
        if (memcmp(p->buf + s, p->delim, k) != 0)
            continue;
        size_t rest = d - k;
        if (len >= rest) {
            if (memcmp(data, p->delim + k, rest) == 0) {
                *at = s;
                return rest;
            }
        } else if (memcmp(data, p->delim + k, len) == 0) {
            partial = 1;
        }
    }
    return partial ? SIZE_MAX : 0;
}

static const char *find(const em_lines *p, const char *data, size_t len)
{
    if (p->dlen == 1)
        return memchr(data, p->delim[0], len);
    if (len < p->dlen)
        return NULL;
    /* memmem is a GNU/BSD extension; a memchr-led scan is as fast here. */
    const char *end = data + len - p->dlen + 1;
    const char *at = data;
    while (at < end) {
        at = memchr(at, p->delim[0], (size_t)(end - at));
        if (!at)
            return NULL;
        if (memcmp(at, p->delim, p->dlen) == 0)
            return at;
        at++;
    }
    return NULL;
}

/* Line mode with a partial line buffered. Returns bytes consumed. */
static size_t lines_buffered(em_lines *p, const char *data, size_t len)
{
    size_t at = 0;
    size_t took = straddle(p, data, len, &at);
    if (took == SIZE_MAX) {
        if (append(p, data, len) < 0)
            p->failed = -ENOMEM;
        return len;
    }
    if (took > 0) {
        if (at > p->max_line) {
            p->failed = -EMSGSIZE;
            return took;
        }
        p->len = 0;
        emit_line(p, p->buf, at);
        return took;
    }
    const char *hit = find(p, data, len);
    size_t part = hit ? (size_t)(hit - data) : len;
    size_t limit = p->max_line + (hit ? 0 : p->dlen - 1);
    if (p->len + part > limit) {
        p->failed = -EMSGSIZE;
        return len;
    }
    if (append(p, data, part) < 0) {
        p->failed = -ENOMEM;
        return len;
    }
    if (!hit)
        return len;
    size_t line_len = p->len;
    size_t used = part + p->dlen; /* before the callback changes dlen */
    p->len = 0;
    emit_line(p, p->buf, line_len);
    return used;
}

/* Line mode, nothing buffered: lines come straight from data. */
static size_t lines_direct(em_lines *p, const char *data, size_t len)
{
    const char *hit = find(p, data, len);
    if (!hit) {
        if (len > p->max_line + p->dlen - 1) {
            p->failed = -EMSGSIZE;
            return len;
        }
        if (append(p, data, len) < 0)
            p->failed = -ENOMEM;
        return len;
    }
    size_t line_len = (size_t)(hit - data);
    if (line_len > p->max_line) {
        p->failed = -EMSGSIZE;
        return len;
    }
    size_t used = line_len + p->dlen; /* before the callback changes dlen */
    emit_line(p, data, line_len);
    return used;
}

static size_t binary(em_lines *p, const char *data, size_t len)
{
    if (p->mode == MODE_UNBOUNDED) {
        if (p->cb.binary)
            p->cb.binary(p->arg, data, len);
        return len;
    }
    size_t take = p->bin_left < len ? (size_t)p->bin_left : len;
    p->bin_left -= take;
    int done = p->bin_left == 0;
    if (p->mode == MODE_PIECES) {
        if (done)
            p->mode = MODE_LINES; /* before the calls: they may chain */
        if (p->cb.binary)
            p->cb.binary(p->arg, data, take);
        if (done) /* part of the same message: a pause waits until after */
            end_block(p);
        return take;
    }
    if (done && p->len == 0) { /* the whole block is in this chunk */
        p->mode = MODE_LINES;
        if (p->cb.binary)
            p->cb.binary(p->arg, data, take);
        end_block(p);
        return take;
    }
    if (append(p, data, take) < 0) {
        p->failed = -ENOMEM;
        return len;
    }
    if (done) {
        size_t block = p->len;
        p->len = 0;
        p->mode = MODE_LINES;
        if (p->cb.binary)
            p->cb.binary(p->arg, p->buf, block);
        end_block(p);
        shrink(p);
    }
    return take;
}

size_t em__lines_parse(em_lines *p, const char *data, size_t len)
{
    size_t used = 0;
    while (used < len && !p->failed) {
        const char *at = data + used;
        size_t left = len - used;
        if (p->mode != MODE_LINES)
            used += binary(p, at, left);
        else if (p->len > 0)
            used += lines_buffered(p, at, left);
        else
            used += lines_direct(p, at, left);
        if (stop(p))
            break;
    }
    return used;
}

int em_lines_feed(em_lines *p, const char *data, size_t len)
{
    if (!p || (!data && len > 0))
        return -EINVAL;
    if (p->failed)
        return p->failed;
    em__lines_parse(p, data, len);
    return p->failed;
}

int em__lines_finish(em_lines *p)
{
    if (p->failed)
        return p->failed;
    if (p->len == 0)
        return 0;
    size_t n = p->len;
    if (p->mode == MODE_LINES && n > p->max_line) {
        p->failed = -EMSGSIZE; /* a partial delimiter is not there to cut */
        return p->failed;
    }
    p->len = 0;
    if (p->mode == MODE_LINES)
        emit_line(p, p->buf, n);
    else if (p->cb.binary) /* a partial block: no end call */
        p->cb.binary(p->arg, p->buf, n);
    return 0;
}

int em_lines_finish(em_lines *p)
{
    return p ? em__lines_finish(p) : -EINVAL;
}

int em_lines_set_delimiter(em_lines *p, const char *delimiter, size_t len)
{
    if (!p || !delimiter)
        return -EINVAL;
    if (len == 0 && !delimiter[0])
        return -EINVAL;
    if (p->mode == MODE_LINES && p->len > 0)
        return -EBUSY; /* a partial line was cut by the old delimiter */
    return set_delimiter(p, delimiter, len);
}

int em_lines_set_binary_mode(em_lines *p, uint64_t size, int flags)
{
    if (!p || (flags != EM_BINARY_WHOLE && flags != EM_BINARY_PIECES))
        return -EINVAL;
    if (p->mode == MODE_LINES && p->len > 0)
        return -EBUSY;
    if (size > 0 && flags == EM_BINARY_WHOLE && size > p->max_binary)
        return -EMSGSIZE;
    p->len = 0;
    p->bin_left = size;
    p->mode = size == 0                   ? MODE_UNBOUNDED
              : flags == EM_BINARY_PIECES ? MODE_PIECES
                                          : MODE_WHOLE;
    return 0;
}

int em_lines_set_line_mode(em_lines *p)
{
    if (!p)
        return -EINVAL;
    if (p->mode != MODE_LINES) {
        p->mode = MODE_LINES;
        p->bin_left = 0;
        p->len = 0; /* an unfinished block is abandoned */
    }
    return 0;
}

size_t em_lines_buffered(const em_lines *p)
{
    return p ? p->len : 0;
}
