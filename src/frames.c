/*
 * frames.c - length-prefixed framing (em_frames_*, em_frame_prefix_encode):
 * a big-endian length of 1, 2 or 4 bytes or an unsigned LEB128 varint, then
 * that many bytes.
 *
 * As in lines.c, a frame whose prefix and body lie whole in the chunk goes
 * to the callback straight from the chunk; a prefix split across chunks is
 * gathered in a 10-byte array and a split body in a buffer that grows
 * with the bytes that arrived (doubling, capped at the frame's length, which
 * max_frame bounds before a byte of the body is stored), so announcing a
 * large frame costs nothing until its bytes come. A varint is checked byte by
 * byte: a value above max_frame fails as soon as it is known, so a prefix that
 * never ends costs at most ten bytes before -EBADMSG.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"

struct em_frames {
    em_frame_fn on_frame;
    void *arg;
    int (*should_stop)(void *arg);
    em_frame_prefix prefix;
    size_t max_frame;
    int failed;
    unsigned char hdr[10]; /* prefix bytes gathered so far */
    unsigned hdr_len;
    int in_body;
    size_t need; /* body bytes of the current frame */
    char *buf;   /* a body split across chunks */
    size_t len;
    size_t cap;
};

static int valid_prefix(em_frame_prefix prefix)
{
    return prefix == EM_PREFIX_U8 || prefix == EM_PREFIX_U16 ||
           prefix == EM_PREFIX_U32 || prefix == EM_PREFIX_VARINT;
}

int em__frames_make(const em_frame_opts *opts, em_frame_fn on_frame, void *arg,
                    int (*should_stop)(void *), em_frames **out)
{
    em_frame_opts defaults = {0};
    if (!opts)
        opts = &defaults;
    em_frame_prefix prefix = opts->prefix ? opts->prefix : EM_PREFIX_U32;
    if (!valid_prefix(prefix))
        return -EINVAL;
    em_frames *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->on_frame = on_frame;
    p->arg = arg;
    p->should_stop = should_stop;
    p->prefix = prefix;
    p->max_frame = opts->max_frame ? opts->max_frame : EM_MAX_FRAME_DEFAULT;
    *out = p;
    return 0;
}

int em_frames_new(const em_frame_opts *opts, em_frame_fn on_frame, void *arg,
                  em_frames **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    return em__frames_make(opts, on_frame, arg, NULL, out);
}

void em_frames_free(em_frames *p)
{
    if (!p)
        return;
    free(p->buf);
    free(p);
}

void em__frames_reset(em_frames *p)
{
    p->failed = 0;
    p->hdr_len = 0;
    p->in_body = 0;
    p->len = 0;
    free(p->buf);
    p->buf = NULL;
    p->cap = 0;
}

int em__frames_failed(const em_frames *p)
{
    return p->failed;
}

em_frame_prefix em__frames_prefix(const em_frames *p)
{
    return p->prefix;
}

size_t em__frames_max(const em_frames *p)
{
    return p->max_frame;
}

int em_frame_prefix_encode(em_frame_prefix prefix, uint64_t len,
                           unsigned char out[10])
{
    if (!out)
        return -EINVAL;
    switch (prefix) {
    case EM_PREFIX_U8:
        if (len > 0xff)
            return -EMSGSIZE;
        out[0] = (unsigned char)len;
        return 1;
    case EM_PREFIX_U16:
        if (len > 0xffff)
            return -EMSGSIZE;
        out[0] = (unsigned char)(len >> 8);
        out[1] = (unsigned char)len;
        return 2;
    case EM_PREFIX_U32:
        if (len > 0xffffffffu)
            return -EMSGSIZE;
        for (int i = 0; i < 4; i++)
            out[i] = (unsigned char)(len >> (24 - 8 * i));
        return 4;
    case EM_PREFIX_VARINT: {
        int n = 0;
        do {
            unsigned char b = len & 0x7f;
            len >>= 7;
            out[n++] = len ? (unsigned char)(b | 0x80) : b;
        } while (len);
        return n;
    }
    }
    return -EINVAL;
}

/* Decodes a complete prefix from bytes. Returns its length, 0 when more
 * bytes are needed, or a negative errno; *value gets the frame length. */
static int decode(const em_frames *p, const unsigned char *b, size_t n,
                  uint64_t *value)
{
    if (p->prefix != EM_PREFIX_VARINT) {
        size_t width = (size_t)p->prefix;
        if (n < width)
            return 0;
        uint64_t v = 0;
        for (size_t i = 0; i < width; i++)
            v = v << 8 | b[i];
        *value = v;
        return v > p->max_frame ? -EMSGSIZE : (int)width;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n && i < 10; i++) {
        uint64_t part = b[i] & 0x7f;
        if (i == 9 && part > 1)
            return -EBADMSG; /* more than 64 bits */
        v |= part << (7 * i);
        if (v > p->max_frame)
            return -EMSGSIZE;
        if (!(b[i] & 0x80)) {
            *value = v;
            return (int)i + 1;
        }
    }
    return n >= 10 ? -EBADMSG : 0;
}

static void emit(em_frames *p, const char *data, size_t len)
{
    if (p->on_frame)
        p->on_frame(p->arg, data, len);
}

static int stop(const em_frames *p)
{
    return p->should_stop && p->should_stop(p->arg);
}

/* The prefix (from data or from hdr). Returns bytes of data consumed. */
static size_t prefix(em_frames *p, const char *data, size_t len)
{
    uint64_t value = 0;
    int got;
    size_t used;
    if (p->hdr_len == 0) {
        got = decode(p, (const unsigned char *)data, len, &value);
        if (got > 0) {
            used = (size_t)got;
            goto have;
        }
    }
    /* Gather byte by byte: a prefix is at most 10 bytes. */
    used = 0;
    got = 0;
    while (used < len && got == 0) {
        p->hdr[p->hdr_len++] = (unsigned char)data[used++];
        got = decode(p, p->hdr, p->hdr_len, &value);
    }
    if (got == 0)
        return used;
have:
    if (got < 0) {
        p->failed = got;
        return len;
    }
    p->hdr_len = 0;
    p->need = (size_t)value;
    if (p->need == 0) {
        emit(p, "", 0);
        return used;
    }
    p->in_body = 1;
    return used;
}

static size_t body(em_frames *p, const char *data, size_t len)
{
    if (p->len == 0 && len >= p->need) {
        size_t n = p->need;
        p->in_body = 0;
        emit(p, data, n);
        return n;
    }
    size_t take = p->need - p->len < len ? p->need - p->len : len;
    if (p->cap < p->len + take) {
        /* Grow with what arrived, not with what the prefix announced: a
         * 4-byte prefix must not make us allocate max_frame up front. */
        size_t cap = p->cap ? p->cap * 2 : 1024;
        if (cap < p->len + take)
            cap = p->len + take;
        if (cap > p->need)
            cap = p->need;
        char *b = realloc(p->buf, cap);
        if (!b) {
            p->failed = -ENOMEM;
            return len;
        }
        p->buf = b;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, data, take);
    p->len += take;
    if (p->len == p->need) {
        size_t n = p->len;
        p->len = 0;
        p->in_body = 0;
        emit(p, p->buf, n);
        if (p->cap > 4096) { /* one big frame should not stay resident */
            free(p->buf);
            p->buf = NULL;
            p->cap = 0;
        }
    }
    return take;
}

size_t em__frames_parse(em_frames *p, const char *data, size_t len)
{
    size_t used = 0;
    while (used < len && !p->failed) {
        if (p->in_body)
            used += body(p, data + used, len - used);
        else
            used += prefix(p, data + used, len - used);
        if (stop(p))
            break;
    }
    return used;
}

int em_frames_feed(em_frames *p, const char *data, size_t len)
{
    if (!p || (!data && len > 0))
        return -EINVAL;
    if (p->failed)
        return p->failed;
    em__frames_parse(p, data, len);
    return p->failed;
}

int em__frames_finish(em_frames *p)
{
    if (p->failed)
        return p->failed;
    return p->hdr_len || p->in_body ? -EBADMSG : 0;
}

int em_frames_finish(em_frames *p)
{
    return p ? em__frames_finish(p) : -EINVAL;
}

size_t em_frames_buffered(const em_frames *p)
{
    return p ? p->len + p->hdr_len : 0;
}
