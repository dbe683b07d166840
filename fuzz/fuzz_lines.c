/*
 * fuzz_lines.c - libFuzzer harness for the line framer (em_lines_*).
 *
 * The first bytes of an input choose a configuration (delimiter, maximum
 * line and block sizes, keep_cr) and a seed for where the rest is cut into
 * chunks; the rest is the byte stream. Each input is parsed three ways:
 * by the reference splitter, in one chunk, and in the seeded chunks. Any
 * disagreement, crash or leak is a finding (abort()).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "framing_check.h"

static const char *const delims[] = {"\n", "\r\n", "|", "XYZ", "abab", "aa"};

static void fail(const char *what, const fc_log *ref, const fc_log *got)
{
    fprintf(stderr, "fuzz_lines: %s: ref %zu events err %d, got %zu err %d\n",
            what, ref->count, ref->err, got->count, got->err);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    const char *d = delims[data[0] % 6];
    fc_line_cfg c = {
        .delim = d,
        .dlen = strlen(d),
        .max_line = 1 + data[1] % 40,
        .max_binary = 1 + data[2] % 64,
        .keep_cr = data[0] >> 7,
    };
    uint32_t seed = data[3];
    const char *in = (const char *)data + 4;
    size_t n = size - 4;

    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    size_t k = fc_cuts(seed, 7, n, cuts);

    fc_log ref = {0}, whole = {0}, chunked = {0};
    fc_ref_lines(&c, in, n, &ref);
    if (fc_run_lines(&c, in, n, NULL, 0, &whole) != 0)
        abort();
    if (fc_run_lines(&c, in, n, cuts, k, &chunked) != 0)
        abort();
    if (fc_compare(&ref, &whole))
        fail("one chunk", &ref, &whole);
    if (fc_compare(&ref, &chunked))
        fail("chunked", &ref, &chunked);
    if (whole.setter_err || chunked.setter_err)
        fail("setter", &ref, &chunked);
    fc_log_free(&ref);
    fc_log_free(&whole);
    fc_log_free(&chunked);
    free(cuts);
    return 0;
}
