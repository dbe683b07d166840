/*
 * driver.c - runs a LLVMFuzzerTestOneInput harness without libFuzzer, for
 * compilers that lack -fsanitize=fuzzer (gcc): random inputs, biased
 * towards the framers' interesting bytes, for a given number of seconds.
 * Not coverage-guided; clang's libFuzzer build is the real fuzzer.
 *
 *   driver [-max_total_time=SECONDS] [FILE...]   (files are replayed)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t state = 0x853c49e6748fea9bull;
static uint64_t rnd(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

int main(int argc, char **argv)
{
    double seconds = 10;
    int replayed = 0;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-max_total_time=", 16) == 0) {
            seconds = atof(argv[i] + 16);
            continue;
        }
        if (argv[i][0] == '-')
            continue; /* other libFuzzer flags */
        FILE *f = fopen(argv[i], "rb");
        if (!f)
            continue;
        static uint8_t buf[1 << 16];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
        replayed++;
    }
    if (replayed)
        return 0;
    static const char *const words[] = {"BIN ", "PCS ", "RAW", "DLM ",
                                        "\r\n", "\n",   "XYZ", "abab",
                                        "1",    "7",    "|"};
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t runs = 0;
    uint8_t buf[512];
    for (;;) {
        size_t n = rnd() % sizeof(buf);
        size_t i = 0;
        while (i < n) {
            if (rnd() % 3 == 0) {
                const char *w = words[rnd() % 11];
                size_t wl = strlen(w);
                if (i + wl > n)
                    break;
                memcpy(buf + i, w, wl);
                i += wl;
            } else {
                buf[i++] = (uint8_t)rnd();
            }
        }
        LLVMFuzzerTestOneInput(buf, i);
        runs++;
        if (runs % 256 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) +
                    (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >=
                seconds)
                break;
        }
    }
    printf("driver: %llu runs, no disagreement\n", (unsigned long long)runs);
    return 0;
}
