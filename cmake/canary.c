/*
 * canary.c - tests that must FAIL under a memory checker.
 *
 * Built as canary_leak (CANARY_LEAK) and, in EM_SANITIZE builds, canary_ub
 * (CANARY_UB) into <build>/canary/. They prove that a leak and undefined
 * behaviour inside a Criterion worker are still caught:
 *   - EM_SANITIZE builds register both with ctest as WILL_FAIL, checking
 *     cmake/sanitizer_defaults.c on every `make sanitize`;
 *   - scripts/valgrind.sh runs canary_leak first and refuses to go on
 *     unless valgrind reports the leak.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#if defined(CANARY_LEAK)
static void *volatile sink;

Test(canary, leaks_one_block, .timeout = 30)
{
    char *p = malloc(64);
    cr_assert_not_null(p);
    memset(p, 0x5a, 64);
    sink = p;
    sink = NULL; /* the only pointer is gone: a definite leak */
}
#elif defined(CANARY_UB)
static volatile int big = INT_MAX;

Test(canary, signed_overflow, .timeout = 30)
{
    int v = big;
    v += 1; /* undefined: UBSan must stop the worker */
    big = v;
}
#else
#error "define CANARY_LEAK or CANARY_UB"
#endif
