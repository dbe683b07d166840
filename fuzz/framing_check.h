/*
 * framing_check.h - a reference splitter for libem's framers and the code
 * that compares a chunked run of em_lines / em_frames against it. Shared by
 * the Criterion tests (tests/test_framing.c) and the libFuzzer harnesses
 * (fuzz/), header-only so both build it without a library of their own.
 *
 * The reference sees the whole input at once and is written for clarity
 * (no buffering, no state carried between chunks), so a disagreement
 * points at the incremental parser. Lines drive mode switches, as a
 * protocol would from receive_line:
 *   "BIN n"  the next n bytes are one whole binary block
 *   "PCS n"  the next n bytes come as pieces (EM_BINARY_PIECES)
 *   "RAW"    every later byte is binary (unbounded mode)
 *   "DLM x"  the delimiter becomes the bytes x (1-3 bytes)
 * Binary pieces are merged before comparing, since how a block is cut
 * depends on the chunking; everything else must match event for event.
 */
#ifndef EM_FRAMING_CHECK_H
#define EM_FRAMING_CHECK_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "em.h"

enum { FC_LINE = 1, FC_BIN, FC_END, FC_FRAME };

typedef struct fc_event {
    int type;
    size_t off; /* into fc_log.bytes */
    size_t len;
} fc_event;

typedef struct fc_log {
    fc_event *ev;
    size_t count, cap;
    char *bytes;
    size_t used, bytes_cap;
    int err; /* final error (0, -EMSGSIZE, -EBADMSG) */
    /* for the chunked run: the parser to steer from callbacks */
    em_lines *lines;
    int control; /* apply the BIN/PCS/RAW/DLM commands */
    int setter_err;
} fc_log;

static inline void fc_log_free(fc_log *log)
{
    free(log->ev);
    free(log->bytes);
    memset(log, 0, sizeof(*log));
}

static inline void fc_add(fc_log *log, int type, const char *data, size_t len)
{
    /* merge binary pieces */
    if (type == FC_BIN && log->count &&
        log->ev[log->count - 1].type == FC_BIN &&
        log->ev[log->count - 1].off + log->ev[log->count - 1].len ==
            log->used) {
        if (log->used + len > log->bytes_cap) {
            log->bytes_cap = (log->used + len) * 2 + 64;
            log->bytes = realloc(log->bytes, log->bytes_cap);
        }
        if (len)
            memcpy(log->bytes + log->used, data, len);
        log->used += len;
        log->ev[log->count - 1].len += len;
        return;
    }
    if (log->count == log->cap) {
        log->cap = log->cap * 2 + 16;
        log->ev = realloc(log->ev, log->cap * sizeof(*log->ev));
    }
    if (log->used + len > log->bytes_cap) {
        log->bytes_cap = (log->used + len) * 2 + 64;
        log->bytes = realloc(log->bytes, log->bytes_cap);
    }
    if (len)
        memcpy(log->bytes + log->used, data, len);
    log->ev[log->count++] = (fc_event){type, log->used, len};
    log->used += len;
}

/* A command line? Returns 1 and fills what it asks for. */
static inline int fc_command(const char *line, size_t len, int *kind,
                             uint64_t *n, char *delim, size_t *dlen)
{
    if (len == 3 && memcmp(line, "RAW", 3) == 0) {
        *kind = 3;
        return 1;
    }
    if (len >= 5 && len <= 7 && memcmp(line, "DLM ", 4) == 0) {
        *kind = 4;
        *dlen = len - 4;
        memcpy(delim, line + 4, *dlen);
        return 1;
    }
    if (len < 5 || len > 10 ||
        (memcmp(line, "BIN ", 4) != 0 && memcmp(line, "PCS ", 4) != 0))
        return 0;
    uint64_t v = 0;
    for (size_t i = 4; i < len; i++) {
        if (line[i] < '0' || line[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(line[i] - '0');
    }
    if (v == 0)
        return 0;
    *kind = line[0] == 'B' ? 1 : 2;
    *n = v;
    return 1;
}

typedef struct fc_line_cfg {
    const char *delim;
    size_t dlen;
    size_t max_line;
    size_t max_binary;
    int keep_cr;
} fc_line_cfg;

static inline size_t fc_chomp(const fc_line_cfg *c, const char *dl, size_t dn,
                              const char *line, size_t len)
{
    (void)c;
    if (!c->keep_cr && dn == 1 && dl[0] == '\n' && len && line[len - 1] == '\r')
        return len - 1;
    return len;
}

/* The reference: whole input, whole truth. */
static inline void fc_ref_lines(const fc_line_cfg *c, const char *in, size_t n,
                                fc_log *log)
{
    char delim[8];
    size_t dlen = c->dlen;
    memcpy(delim, c->delim, dlen);
    size_t pos = 0;
    int mode = 0; /* 0 lines, 1 whole, 2 pieces, 3 raw */
    uint64_t left = 0;
    while (pos < n) {
        if (mode == 3) {
            fc_add(log, FC_BIN, in + pos, n - pos);
            return;
        }
        if (mode == 1 || mode == 2) {
            size_t take = n - pos < left ? n - pos : (size_t)left;
            fc_add(log, FC_BIN, in + pos, take);
            pos += take;
            left -= take;
            if (left)
                return; /* partial block at EOF: no end */
            fc_add(log, FC_END, NULL, 0);
            mode = 0;
            continue;
        }
        size_t ix = SIZE_MAX;
        for (size_t i = pos; i + dlen <= n; i++)
            if (memcmp(in + i, delim, dlen) == 0) {
                ix = i;
                break;
            }
        if (ix == SIZE_MAX) {
            if (n - pos > c->max_line) {
                log->err = -EMSGSIZE;
                return;
            }
            fc_add(log, FC_LINE, in + pos,
                   fc_chomp(c, delim, dlen, in + pos, n - pos));
            return;
        }
        size_t len = ix - pos;
        if (len > c->max_line) {
            log->err = -EMSGSIZE;
            return;
        }
        size_t next = ix + dlen; /* before a DLM command changes dlen */
        size_t chomped = fc_chomp(c, delim, dlen, in + pos, len);
        fc_add(log, FC_LINE, in + pos, chomped);
        int kind = 0;
        uint64_t v = 0;
        char nd[8];
        size_t ndl = 0;
        if (fc_command(in + pos, chomped, &kind, &v, nd, &ndl)) {
            if (kind == 3)
                mode = 3;
            else if (kind == 4) {
                memcpy(delim, nd, ndl);
                dlen = ndl;
            } else if (kind == 2 || v <= c->max_binary) {
                mode = kind;
                left = v;
            }
        }
        pos = next;
    }
}

static inline void fc_on_line(void *arg, const char *line, size_t len)
{
    fc_log *log = arg;
    fc_add(log, FC_LINE, line, len);
    int kind = 0;
    uint64_t v = 0;
    char nd[8];
    size_t ndl = 0;
    if (!log->control || !fc_command(line, len, &kind, &v, nd, &ndl))
        return;
    int err = 0;
    if (kind == 3)
        err = em_lines_set_binary_mode(log->lines, 0, EM_BINARY_WHOLE);
    else if (kind == 4)
        err = em_lines_set_delimiter(log->lines, nd, ndl);
    else {
        err = em_lines_set_binary_mode(
            log->lines, v, kind == 1 ? EM_BINARY_WHOLE : EM_BINARY_PIECES);
        if (err == -EMSGSIZE)
            err = 0; /* refused: the reference stays in line mode too */
    }
    if (err)
        log->setter_err = err;
}

static inline void fc_on_binary(void *arg, const char *data, size_t len)
{
    fc_add(arg, FC_BIN, data, len);
}

static inline void fc_on_end(void *arg)
{
    fc_add(arg, FC_END, NULL, 0);
}

/* Feeds in[0, n) cut at the given offsets (ascending, < n). */
static inline int fc_run_lines(const fc_line_cfg *c, const char *in, size_t n,
                               const size_t *cuts, size_t ncuts, fc_log *log)
{
    em_line_opts o = {.delimiter = c->delim,
                      .delimiter_len = c->dlen,
                      .max_line = c->max_line,
                      .max_binary = c->max_binary,
                      .keep_cr = c->keep_cr};
    em_line_callbacks cb = {fc_on_line, fc_on_binary, fc_on_end};
    log->control = 1;
    int err = em_lines_new(&o, &cb, log, &log->lines);
    if (err)
        return err;
    size_t at = 0;
    for (size_t i = 0; i <= ncuts && !log->err; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        if (end < at)
            end = at;
        log->err = em_lines_feed(log->lines, in + at, end - at);
        at = end;
    }
    if (!log->err)
        log->err = em_lines_finish(log->lines);
    em_lines_free(log->lines);
    log->lines = NULL;
    return 0;
}

/* Cut points for a stream of n bytes from a seed: steps of 0..max_step-1
 * (zero-length chunks included). Fills cuts (room for n) and returns how
 * many. */
static inline size_t fc_cuts(uint32_t seed, unsigned max_step, size_t n,
                             size_t *cuts)
{
    size_t k = 0, at = 0;
    seed |= 1u;
    for (;;) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        at += seed % max_step;
        if (at >= n)
            return k;
        cuts[k++] = at;
    }
}

/* 0 when both logs agree; else the index of the first difference + 1. */
static inline size_t fc_compare(const fc_log *a, const fc_log *b)
{
    size_t n = a->count < b->count ? a->count : b->count;
    for (size_t i = 0; i < n; i++) {
        const fc_event *x = &a->ev[i], *y = &b->ev[i];
        if (x->type != y->type || x->len != y->len ||
            (x->len && memcmp(a->bytes + x->off, b->bytes + y->off, x->len)))
            return i + 1;
    }
    if (a->count != b->count || a->err != b->err)
        return n + 1;
    return 0;
}

/* ---- frames -------------------------------------------------------------- */

static inline void fc_ref_frames(em_frame_prefix prefix, size_t max,
                                 const unsigned char *in, size_t n, fc_log *log)
{
    size_t pos = 0;
    while (pos < n) {
        uint64_t v = 0;
        size_t width = 0;
        if (prefix == EM_PREFIX_VARINT) {
            int done = 0;
            for (size_t i = 0; i < 10; i++) {
                if (pos + i >= n) {
                    log->err = -EBADMSG;
                    return;
                }
                uint64_t part = in[pos + i] & 0x7f;
                if (i == 9 && part > 1) {
                    log->err = -EBADMSG;
                    return;
                }
                v |= part << (7 * i);
                if (v > max) {
                    log->err = -EMSGSIZE;
                    return;
                }
                if (!(in[pos + i] & 0x80)) {
                    width = i + 1;
                    done = 1;
                    break;
                }
            }
            if (!done) {
                log->err = -EBADMSG;
                return;
            }
        } else {
            width = (size_t)prefix;
            if (n - pos < width) {
                log->err = -EBADMSG;
                return;
            }
            for (size_t i = 0; i < width; i++)
                v = v << 8 | in[pos + i];
            if (v > max) {
                log->err = -EMSGSIZE;
                return;
            }
        }
        pos += width;
        if (n - pos < v) {
            log->err = -EBADMSG;
            return;
        }
        fc_add(log, FC_FRAME, (const char *)in + pos, (size_t)v);
        pos += (size_t)v;
    }
}

static inline void fc_on_frame(void *arg, const char *data, size_t len)
{
    fc_add(arg, FC_FRAME, data, len);
}

static inline int fc_run_frames(em_frame_prefix prefix, size_t max,
                                const unsigned char *in, size_t n,
                                const size_t *cuts, size_t ncuts, fc_log *log)
{
    em_frame_opts o = {.prefix = prefix, .max_frame = max};
    em_frames *f = NULL;
    int err = em_frames_new(&o, fc_on_frame, log, &f);
    if (err)
        return err;
    size_t at = 0;
    for (size_t i = 0; i <= ncuts && !log->err; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        if (end < at)
            end = at;
        log->err = em_frames_feed(f, (const char *)in + at, end - at);
        at = end;
    }
    if (!log->err)
        log->err = em_frames_finish(f);
    em_frames_free(f);
    return 0;
}

#endif
