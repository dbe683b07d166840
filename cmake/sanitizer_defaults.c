/*
 * sanitizer_defaults.c - linked into every test program of an EM_SANITIZE
 * build, so that plain `ctest` in that build behaves like `make sanitize`.
 *
 * Criterion runs each test in a worker process re-executed from the test
 * binary (argv[0] "boxfort-worker"); the process ctest starts only
 * schedules workers and collects their results, and it ignores a worker's
 * exit status once the test has reported success. Hence:
 *   - abort_on_error=1: a sanitizer report ends the worker with SIGABRT,
 *     which Criterion does count as a crash (an exit code would be lost);
 *   - no leak check in the runner: it leaks a small block inside
 *     libcriterion now and then, and runs no test or library code. The
 *     workers, where all of that runs, keep the check.
 * cmake/canary.c proves on every run that both still catch.
 * ASAN_OPTIONS / UBSAN_OPTIONS in the environment add to these defaults.
 */
#include <errno.h>
#include <string.h>

const char *__asan_default_options(void);
const char *__ubsan_default_options(void);
int __lsan_is_turned_off(void);

const char *__asan_default_options(void)
{
    return "detect_leaks=1:abort_on_error=1";
}

const char *__ubsan_default_options(void)
{
    return "print_stacktrace=1:halt_on_error=1";
}

int __lsan_is_turned_off(void)
{
    return strcmp(program_invocation_short_name, "boxfort-worker") != 0;
}
