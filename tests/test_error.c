/*
 * test_error.c - em_strerror and em_err_name.
 *
 * Needs nothing but src/error.c: no loop, no sockets.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>

#include "em.h"

/* clang-format off */
#define NAMED(e) {e, #e}
/* clang-format on */

/* The errnos a network library meets, by the name em_err_name must give.
 * EWOULDBLOCK and ENOTSUP are aliases on Linux, checked separately. */
static const struct {
    int code;
    const char *name;
} named[] = {
    NAMED(EAGAIN),        NAMED(EINTR),        NAMED(EINVAL),
    NAMED(EBADF),         NAMED(ENOMEM),       NAMED(EMFILE),
    NAMED(ENFILE),        NAMED(ECONNREFUSED), NAMED(ECONNRESET),
    NAMED(ECONNABORTED),  NAMED(ETIMEDOUT),    NAMED(EADDRINUSE),
    NAMED(EADDRNOTAVAIL), NAMED(EACCES),       NAMED(EPERM),
    NAMED(EPIPE),         NAMED(ENOTCONN),     NAMED(EISCONN),
    NAMED(ENOENT),        NAMED(ECANCELED),    NAMED(EBUSY),
    NAMED(EHOSTUNREACH),  NAMED(ENETUNREACH),  NAMED(ENAMETOOLONG),
    NAMED(EALREADY),      NAMED(EINPROGRESS),  NAMED(ENOTSOCK),
    NAMED(EAFNOSUPPORT),  NAMED(ENOSPC),       NAMED(EEXIST),
    NAMED(EPROTO),        NAMED(EMSGSIZE),     NAMED(ENOBUFS),
    NAMED(ENOSYS),        NAMED(EOPNOTSUPP),   NAMED(ESRCH),
    NAMED(ECHILD),
};
#define NNAMED (sizeof named / sizeof named[0])

Test(error, strerror_of_zero_is_success, .timeout = 10)
{
    cr_assert_str_eq(em_strerror(0), "success");
}

Test(error, strerror_describes_common_errnos, .timeout = 10)
{
    cr_assert_str_eq(em_strerror(-ECONNREFUSED), "Connection refused");
    cr_assert_str_eq(em_strerror(-EINVAL), "Invalid argument");
    cr_assert_str_eq(em_strerror(-ETIMEDOUT), "Connection timed out");
    cr_assert_str_eq(em_strerror(-ECONNRESET), "Connection reset by peer");
    for (size_t i = 0; i < NNAMED; i++) {
        const char *d = em_strerror(-named[i].code);
        cr_assert_not_null(d, "%s", named[i].name);
        cr_assert_neq(d[0], '\0', "%s has an empty description", named[i].name);
        cr_assert_str_neq(d, "unknown error", "%s", named[i].name);
    }
}

Test(error, strerror_rejects_non_errnos, .timeout = 10)
{
    const int bad[] = {1, EINVAL, INT_MAX, INT_MIN, -4095, -100000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_str_eq(em_strerror(bad[i]), "unknown error", "err=%d",
                         bad[i]);
}

Test(error, strerror_returns_the_same_static_string, .timeout = 10)
{
    const char *a = em_strerror(-EPIPE);
    const char *b = em_strerror(-EAGAIN);
    cr_assert_eq(em_strerror(-EPIPE), a);
    cr_assert_eq(em_strerror(-EAGAIN), b);
    cr_assert_eq(em_strerror(12345), em_strerror(54321));
}

Test(error, err_name_names_common_errnos, .timeout = 10)
{
    for (size_t i = 0; i < NNAMED; i++)
        cr_assert_str_eq(em_err_name(-named[i].code), named[i].name);
}

Test(error, err_name_of_aliases, .timeout = 10)
{
    /* Linux gives these two names one value; either name is right. */
    cr_assert_str_eq(em_err_name(-EWOULDBLOCK), em_err_name(-EAGAIN));
    const char *n = em_err_name(-ENOTSUP);
    cr_assert(strcmp(n, "ENOTSUP") == 0 || strcmp(n, "EOPNOTSUPP") == 0,
              "got %s", n);
}

Test(error, err_name_of_zero_and_non_errnos, .timeout = 10)
{
    cr_assert_str_eq(em_err_name(0), "OK");
    const int bad[] = {1, ECONNREFUSED, INT_MAX, INT_MIN, -4095, -100000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_str_eq(em_err_name(bad[i]), "UNKNOWN", "err=%d", bad[i]);
}

Test(error, every_value_gets_a_non_null_string, .timeout = 10)
{
    for (int e = -5000; e <= 5000; e++) {
        cr_assert_not_null(em_strerror(e), "err=%d", e);
        cr_assert_not_null(em_err_name(e), "err=%d", e);
    }
}

/* Threads asking at once must each get the right text (no shared buffer). */
#define THREADS 4
#define ROUNDS 20000

static void *hammer(void *arg)
{
    int offset = (int)(intptr_t)arg;
    for (int r = 0; r < ROUNDS; r++) {
        size_t i = (size_t)(r + offset) % NNAMED;
        const char *name = em_err_name(-named[i].code);
        const char *desc = em_strerror(-named[i].code);
        if (strcmp(name, named[i].name) != 0 ||
            strcmp(desc, "unknown error") == 0)
            return (void *)1;
        if (strcmp(em_strerror(-(7000 + r)), "unknown error") != 0)
            return (void *)1;
    }
    return NULL;
}

Test(error, thread_safe, .timeout = 10)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(
            pthread_create(&t[i], NULL, hammer, (void *)(intptr_t)(i * 7)), 0);
    for (int i = 0; i < THREADS; i++) {
        void *res = NULL;
        cr_assert_eq(pthread_join(t[i], &res), 0);
        cr_assert_null(res, "thread %d saw a wrong string", i);
    }
}
