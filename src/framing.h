/*
 * framing.h - what the connection framer (framer.c) needs from the
 * parsers (lines.c, frames.c) beyond their public standalone API: a stop
 * predicate checked after every callback and a parse that reports how
 * much it consumed, so input after a pause can be kept for later.
 */
#ifndef EM_FRAMING_H
#define EM_FRAMING_H

#include "internal.h"

int em__lines_make(const em_line_opts *opts, const em_line_callbacks *cb,
                   void *arg, int (*should_stop)(void *), em_lines **out);
/* Parses until the input ends, the parser fails or should_stop says so
 * after a callback. Returns the bytes consumed. */
size_t em__lines_parse(em_lines *p, const char *data, size_t len);
int em__lines_finish(em_lines *p);
int em__lines_failed(const em_lines *p);
/* Forgets partial input and binary mode (em_reconnect). */
void em__lines_reset(em_lines *p);

int em__frames_make(const em_frame_opts *opts, em_frame_fn on_frame, void *arg,
                    int (*should_stop)(void *), em_frames **out);
size_t em__frames_parse(em_frames *p, const char *data, size_t len);
int em__frames_finish(em_frames *p);
int em__frames_failed(const em_frames *p);
void em__frames_reset(em_frames *p);
em_frame_prefix em__frames_prefix(const em_frames *p);
size_t em__frames_max(const em_frames *p);

#endif
