/*
 * fuzz_frames.c - libFuzzer harness for the length-prefixed framer
 * (em_frames_*). The first byte chooses the prefix and the maximum frame
 * size, the second seeds the chunking, the rest is the stream; the
 * reference splitter, one chunk and the seeded chunks must agree.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "framing_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const em_frame_prefix prefixes[] = {EM_PREFIX_U8, EM_PREFIX_U16,
                                               EM_PREFIX_U32, EM_PREFIX_VARINT};
    em_frame_prefix prefix = prefixes[data[0] % 4];
    size_t max = (data[0] >> 2) % 2 ? 300 : SIZE_MAX;
    uint32_t seed = data[1];
    const unsigned char *in = data + 2;
    size_t n = size - 2;

    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    size_t k = fc_cuts(seed, 9, n, cuts);
    fc_log ref = {0}, whole = {0}, chunked = {0};
    fc_ref_frames(prefix, max, in, n, &ref);
    if (fc_run_frames(prefix, max, in, n, NULL, 0, &whole) != 0 ||
        fc_run_frames(prefix, max, in, n, cuts, k, &chunked) != 0)
        abort();
    if (fc_compare(&ref, &whole) || fc_compare(&ref, &chunked)) {
        fprintf(stderr, "fuzz_frames: disagreement (ref %zu events err %d)\n",
                ref.count, ref.err);
        abort();
    }
    fc_log_free(&ref);
    fc_log_free(&whole);
    fc_log_free(&chunked);
    free(cuts);
    return 0;
}
