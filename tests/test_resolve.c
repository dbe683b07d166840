/*
 * test_resolve.c - address parsing (address.c) and the off-thread resolver
 * (resolve.c), white-box: both are internal, so this includes internal.h
 * and drives a real loop.
 *
 * Resolver tests only use names that resolve locally: numeric literals,
 * "localhost" (/etc/hosts) and "no-such-host.invalid" (RFC 6761: never
 * exists; glibc answers it at once when DNS is unreachable or NXDOMAINs
 * it). Every wait is bounded, so a slow resolver fails a test instead of
 * hanging it.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "internal.h"

#define RESOLVE_WAIT_S 20.0 /* bound for one local resolution */

/* ---- em__addr_literal ------------------------------------------------- */

static const struct sockaddr_in *as_v4(const struct sockaddr_storage *ss)
{
    return (const struct sockaddr_in *)ss;
}

static const struct sockaddr_in6 *as_v6(const struct sockaddr_storage *ss)
{
    return (const struct sockaddr_in6 *)ss;
}

static void expect_v4(const char *host, int port, const char *want)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char text[INET_ADDRSTRLEN];
    int rc = em__addr_literal(host, port, &ss, &len);

    cr_assert_eq(rc, 0, "%s: %s", host ? host : "(null)", em_strerror(rc));
    cr_assert_eq(len, sizeof(struct sockaddr_in));
    cr_assert_eq(as_v4(&ss)->sin_family, AF_INET);
    cr_assert_eq(ntohs(as_v4(&ss)->sin_port), port);
    inet_ntop(AF_INET, &as_v4(&ss)->sin_addr, text, sizeof(text));
    cr_assert_str_eq(text, want);
}

static void expect_v6(const char *host, int port, const char *want,
                      uint32_t scope)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char text[INET6_ADDRSTRLEN];
    int rc = em__addr_literal(host, port, &ss, &len);

    cr_assert_eq(rc, 0, "%s: %s", host, em_strerror(rc));
    cr_assert_eq(len, sizeof(struct sockaddr_in6));
    cr_assert_eq(as_v6(&ss)->sin6_family, AF_INET6);
    cr_assert_eq(ntohs(as_v6(&ss)->sin6_port), port);
    cr_assert_eq(as_v6(&ss)->sin6_scope_id, scope, "%s: scope %u", host,
                 (unsigned)as_v6(&ss)->sin6_scope_id);
    inet_ntop(AF_INET6, &as_v6(&ss)->sin6_addr, text, sizeof(text));
    cr_assert_str_eq(text, want);
}

/* Fails, and leaves the output untouched. */
static void expect_not_literal(const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t len = 1234;

    memset(&ss, 0xab, sizeof(ss));
    cr_assert_eq(em__addr_literal(host, port, &ss, &len), -EINVAL,
                 "\"%s\" port %d should be refused", host, port);
    cr_assert_eq(len, 1234);
    cr_assert_eq(((unsigned char *)&ss)[0], 0xab);
}

Test(address, null_and_empty_host_are_any, .timeout = 10)
{
    expect_v4(NULL, 80, "0.0.0.0");
    expect_v4("", 0, "0.0.0.0");
}

Test(address, ipv4_literal, .timeout = 10)
{
    expect_v4("127.0.0.1", 8080, "127.0.0.1");
    expect_v4("255.255.255.255", 65535, "255.255.255.255");
}

Test(address, ipv4_only_strict_dotted_quads, .timeout = 10)
{
    expect_not_literal("127.1", 80);
    expect_not_literal("0x7f.0.0.1", 80);
    expect_not_literal("1.2.3.4.5", 80);
    expect_not_literal("256.0.0.1", 80);
    expect_not_literal(" 127.0.0.1", 80);
}

Test(address, names_are_not_literals, .timeout = 10)
{
    expect_not_literal("localhost", 80);
    expect_not_literal("example.com", 80);
    expect_not_literal("1.2.3.4.example", 80);
}

Test(address, ipv6_literal, .timeout = 10)
{
    expect_v6("::1", 443, "::1", 0);
    expect_v6("::", 0, "::", 0);
    expect_v6("2001:db8::42", 1, "2001:db8::42", 0);
    expect_v6("::ffff:10.0.0.1", 2, "::ffff:10.0.0.1", 0);
}

Test(address, ipv6_bracketed, .timeout = 10)
{
    expect_v6("[::1]", 80, "::1", 0);
    expect_v6("[2001:db8::1]", 65535, "2001:db8::1", 0);
}

Test(address, bad_brackets, .timeout = 10)
{
    expect_not_literal("[::1", 80);
    expect_not_literal("::1]", 80);
    expect_not_literal("[]", 80);
    expect_not_literal("[", 80);
    expect_not_literal("[127.0.0.1]", 80); /* brackets are for IPv6 */
    expect_not_literal("[::1]:80", 80);
    expect_not_literal("[localhost]", 80);
}

Test(address, ipv6_scope_id, .timeout = 10)
{
    unsigned lo = if_nametoindex("lo");
    char numeric[32];

    cr_assert_gt(lo, 0, "no loopback interface");
    expect_v6("fe80::1%lo", 22, "fe80::1", lo);
    expect_v6("[fe80::1%lo]", 22, "fe80::1", lo);
    snprintf(numeric, sizeof(numeric), "fe80::2%%%u", lo);
    expect_v6(numeric, 23, "fe80::2", lo);
    expect_not_literal("fe80::1%no-such-if0", 22);
    expect_not_literal("localhost%lo", 22);
}

Test(address, port_range, .timeout = 10)
{
    expect_v4("127.0.0.1", 0, "127.0.0.1");
    expect_v4("127.0.0.1", 65535, "127.0.0.1");
    expect_not_literal("127.0.0.1", -1);
    expect_not_literal("127.0.0.1", 65536);
    expect_not_literal("::1", 70000);
    expect_not_literal(NULL, -5);
}

Test(address, literal_null_outputs, .timeout = 10)
{
    struct sockaddr_storage ss;
    socklen_t len;

    cr_assert_eq(em__addr_literal("127.0.0.1", 1, NULL, &len), -EINVAL);
    cr_assert_eq(em__addr_literal("127.0.0.1", 1, &ss, NULL), -EINVAL);
}

Test(address, literal_binds, .timeout = 10)
{
    struct sockaddr_storage ss;
    struct sockaddr_in bound;
    socklen_t len;
    socklen_t bound_len = sizeof(bound);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert_geq(fd, 0);
    cr_assert_eq(em__addr_literal("127.0.0.1", 0, &ss, &len), 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0, "bind: %s",
                 strerror(errno));
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&bound, &bound_len), 0);
    cr_assert_eq(bound.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    cr_assert_gt(ntohs(bound.sin_port), 0);
    close(fd);
}

/* ---- em__addr_unix ----------------------------------------------------- */

static const struct sockaddr_un *as_un(const struct sockaddr_storage *ss)
{
    return (const struct sockaddr_un *)ss;
}

#define SUN_PATH_SIZE sizeof(((struct sockaddr_un *)0)->sun_path)

static char *repeat(char first, size_t n)
{
    char *s = malloc(n + 1);

    cr_assert_not_null(s);
    memset(s, 'x', n);
    s[0] = first;
    s[n] = '\0';
    return s;
}

Test(address, unix_path, .timeout = 10)
{
    struct sockaddr_storage ss;
    socklen_t len;

    cr_assert_eq(em__addr_unix("/tmp/em.sock", &ss, &len), 0);
    cr_assert_eq(as_un(&ss)->sun_family, AF_UNIX);
    cr_assert_str_eq(as_un(&ss)->sun_path, "/tmp/em.sock");
    cr_assert_eq(len, offsetof(struct sockaddr_un, sun_path) +
                          strlen("/tmp/em.sock") + 1);
}

Test(address, unix_path_length_limit, .timeout = 10)
{
    struct sockaddr_storage ss;
    socklen_t len = 77;
    char *longest = repeat('/', SUN_PATH_SIZE - 1);
    char *too_long = repeat('/', SUN_PATH_SIZE);

    cr_assert_eq(em__addr_unix(longest, &ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_un));
    cr_assert_eq(as_un(&ss)->sun_path[SUN_PATH_SIZE - 1], '\0');
    len = 77;
    cr_assert_eq(em__addr_unix(too_long, &ss, &len), -ENAMETOOLONG);
    cr_assert_eq(len, 77);
    free(longest);
    free(too_long);
}

Test(address, unix_bad_args, .timeout = 10)
{
    struct sockaddr_storage ss;
    socklen_t len;

    cr_assert_eq(em__addr_unix(NULL, &ss, &len), -EINVAL);
    cr_assert_eq(em__addr_unix("", &ss, &len), -EINVAL);
    cr_assert_eq(em__addr_unix("@", &ss, &len), -EINVAL);
    cr_assert_eq(em__addr_unix("/tmp/x", NULL, &len), -EINVAL);
    cr_assert_eq(em__addr_unix("/tmp/x", &ss, NULL), -EINVAL);
}

Test(address, unix_abstract, .timeout = 10)
{
    struct sockaddr_storage ss;
    socklen_t len;

    cr_assert_eq(em__addr_unix("@em-test", &ss, &len), 0);
    cr_assert_eq(as_un(&ss)->sun_family, AF_UNIX);
    cr_assert_eq(as_un(&ss)->sun_path[0], '\0');
    cr_assert_eq(memcmp(as_un(&ss)->sun_path + 1, "em-test", 7), 0);
    /* The length covers the name exactly: no terminating NUL. */
    cr_assert_eq(len, offsetof(struct sockaddr_un, sun_path) + 1 + 7);
}

Test(address, unix_abstract_length_limit, .timeout = 10)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char *longest = repeat('@', SUN_PATH_SIZE); /* NUL + 107 bytes */
    char *too_long = repeat('@', SUN_PATH_SIZE + 1);

    cr_assert_eq(em__addr_unix(longest, &ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_un));
    cr_assert_eq(em__addr_unix(too_long, &ss, &len), -ENAMETOOLONG);
    free(longest);
    free(too_long);
}

/* The kernel sees the same abstract name we built. */
Test(address, unix_abstract_binds, .timeout = 10)
{
    struct sockaddr_storage ss;
    struct sockaddr_un bound;
    socklen_t len;
    socklen_t bound_len = sizeof(bound);
    char name[64];
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert_geq(fd, 0);
    snprintf(name, sizeof(name), "@em-test-%ld", (long)getpid());
    cr_assert_eq(em__addr_unix(name, &ss, &len), 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0, "bind: %s",
                 strerror(errno));
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&bound, &bound_len), 0);
    cr_assert_eq(bound_len, len);
    cr_assert_eq(bound.sun_path[0], '\0');
    cr_assert_eq(memcmp(bound.sun_path + 1, name + 1, strlen(name) - 1), 0);
    close(fd);
}

/* ---- the resolver ------------------------------------------------------ */

typedef struct result {
    int calls;
    int err;
    int port;         /* first address's port */
    int family;       /* first address's family */
    int all_loopback; /* every address is 127/8 or ::1 */
    int count;        /* addresses */
    char first[INET6_ADDRSTRLEN];
} result;

static int is_loopback(const struct addrinfo *ai)
{
    if (ai->ai_family == AF_INET) {
        const struct sockaddr_in *sin = (const void *)ai->ai_addr;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    if (ai->ai_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const void *)ai->ai_addr;
        return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
    }
    return 0;
}

static int port_of(const struct addrinfo *ai)
{
    if (ai->ai_family == AF_INET)
        return ntohs(
            ((const struct sockaddr_in *)(void *)ai->ai_addr)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_port);
}

/* Records what arrived and frees the list (fn owns it). */
static void on_resolved(em_loop *loop, void *ctx, struct addrinfo *ai, int err)
{
    result *r = ctx;
    const struct addrinfo *a;
    const void *ip;

    (void)loop;
    r->calls++;
    r->err = err;
    if (ai == NULL)
        return;
    r->family = ai->ai_family;
    r->port = port_of(ai);
    ip = ai->ai_family == AF_INET
             ? (const void *)&((struct sockaddr_in *)(void *)ai->ai_addr)
                   ->sin_addr
             : (const void *)&((struct sockaddr_in6 *)(void *)ai->ai_addr)
                   ->sin6_addr;
    inet_ntop(ai->ai_family, ip, r->first, sizeof(r->first));
    r->all_loopback = 1;
    for (a = ai; a != NULL; a = a->ai_next) {
        r->count++;
        r->all_loopback &= is_loopback(a);
        if (port_of(a) != r->port)
            r->port = -1;
    }
    freeaddrinfo(ai);
}

static void start(em_loop *loop, const char *host, int port, result *r,
                  em__resolve_job **job)
{
    int rc = em__resolve_start(loop, host, port, on_resolved, r, job);

    cr_assert_eq(rc, 0, "em__resolve_start(%s): %s", host, em_strerror(rc));
    cr_assert_not_null(*job);
}

Test(resolve, numeric_ipv4, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};

    start(loop, "127.0.0.1", 4242, &r, &job);
    th_run_until(loop, &r.calls, RESOLVE_WAIT_S);
    cr_assert_eq(r.err, 0, "%s", em_strerror(r.err));
    cr_assert_eq(r.family, AF_INET);
    cr_assert_eq(r.port, 4242);
    cr_assert_str_eq(r.first, "127.0.0.1");
    cr_assert_eq(r.count, 1, "SOCK_STREAM only: one entry, got %d", r.count);
    th_run_for(loop, 0.05);
    cr_assert_eq(r.calls, 1, "fn ran %d times", r.calls);
    th_free_loop(loop);
}

Test(resolve, numeric_ipv6, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};

    start(loop, "::1", 0, &r, &job);
    th_run_until(loop, &r.calls, RESOLVE_WAIT_S);
    cr_assert_eq(r.err, 0, "%s", em_strerror(r.err));
    cr_assert_eq(r.family, AF_INET6);
    cr_assert_eq(r.port, 0);
    cr_assert_str_eq(r.first, "::1");
    th_free_loop(loop);
}

Test(resolve, localhost, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};

    start(loop, "localhost", 65535, &r, &job);
    th_run_until(loop, &r.calls, RESOLVE_WAIT_S);
    cr_assert_eq(r.err, 0, "%s", em_strerror(r.err));
    cr_assert_geq(r.count, 1);
    cr_assert(r.all_loopback, "localhost gave a non-loopback address %s",
              r.first);
    cr_assert_eq(r.port, 65535);
    th_free_loop(loop);
}

Test(resolve, unknown_name_fails, .timeout = 60)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};

    start(loop, "no-such-host.invalid", 80, &r, &job);
    th_run_until(loop, &r.calls, 45.0);
    /* -ENOENT when the name is refused; -EAGAIN when no DNS answered. */
    cr_assert(r.err == -ENOENT || r.err == -EAGAIN, "err %d (%s)", r.err,
              em_err_name(r.err));
    cr_assert_eq(r.count, 0);
    th_free_loop(loop);
}

Test(resolve, bad_args, .timeout = 10)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};
    char *huge = malloc(2000);

    cr_assert_not_null(huge);
    memset(huge, 'a', 1999);
    huge[1999] = '\0';
    cr_assert_eq(em__resolve_start(NULL, "a", 1, on_resolved, &r, &job),
                 -EINVAL);
    cr_assert_eq(em__resolve_start(loop, NULL, 1, on_resolved, &r, &job),
                 -EINVAL);
    cr_assert_eq(em__resolve_start(loop, "", 1, on_resolved, &r, &job),
                 -EINVAL);
    cr_assert_eq(em__resolve_start(loop, "a", 1, NULL, &r, &job), -EINVAL);
    cr_assert_eq(em__resolve_start(loop, "a", 1, on_resolved, &r, NULL),
                 -EINVAL);
    cr_assert_eq(em__resolve_start(loop, "a", -1, on_resolved, &r, &job),
                 -EINVAL);
    cr_assert_eq(em__resolve_start(loop, "a", 65536, on_resolved, &r, &job),
                 -EINVAL);
    cr_assert_eq(em__resolve_start(loop, huge, 1, on_resolved, &r, &job),
                 -EINVAL);
    cr_assert_null(job);
    cr_assert_null(loop->resolver, "a refused call created the resolver");
    /* The NULL-tolerant entry points. */
    em__resolve_cancel(loop, NULL);
    em__resolve_cancel(NULL, NULL);
    em__resolver_free(NULL);
    em__resolver_free(loop);
    free(huge);
    th_free_loop(loop);
}

#define MANY 40

static int delivered_count(const result *r, int n)
{
    int total = 0;
    int i;

    for (i = 0; i < n; i++)
        total += r[i].calls;
    return total;
}

Test(resolve, many_jobs_each_delivered_once, .timeout = 60)
{
    em_loop *loop = th_loop();
    em__resolve_job *jobs[MANY];
    result r[MANY];
    int before = th_thread_count();
    double deadline;
    int i;

    memset(r, 0, sizeof(r));
    for (i = 0; i < MANY; i++)
        start(loop, i % 2 ? "127.0.0.1" : "localhost", 1000 + i, &r[i],
              &jobs[i]);
    cr_assert_geq(th_thread_count() - before, 1, "no worker");
    deadline = th_now() + RESOLVE_WAIT_S;
    while (delivered_count(r, MANY) < MANY) {
        cr_assert_lt(th_now(), deadline, "%d of %d delivered",
                     delivered_count(r, MANY), MANY);
        th_run_for(loop, 0.01);
    }
    cr_assert_leq(th_thread_count() - before, 4, "more than 4 workers");
    for (i = 0; i < MANY; i++) {
        cr_assert_eq(r[i].calls, 1, "job %d ran %d times", i, r[i].calls);
        cr_assert_eq(r[i].err, 0, "job %d: %s", i, em_strerror(r[i].err));
        cr_assert_eq(r[i].port, 1000 + i, "job %d got another's result", i);
    }
    th_free_loop(loop);
    cr_assert_eq(th_thread_count_settled(before), before,
                 "workers outlived the loop");
}

Test(resolve, cancel_right_away, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};

    start(loop, "localhost", 80, &r, &job);
    em__resolve_cancel(loop, job);
    th_run_for(loop, 0.2);
    cr_assert_eq(r.calls, 0, "fn ran after cancel");
    th_free_loop(loop);
}

/* Waits (without running the loop) until a worker has woken the loop,
 * i.e. a job sits finished on the done list. */
static void wait_for_wakeup(em_loop *loop)
{
    struct pollfd pfd = {.fd = loop->wakeup.fd, .events = POLLIN};

    cr_assert_eq(poll(&pfd, 1, (int)(RESOLVE_WAIT_S * 1000)), 1,
                 "no worker finished");
}

Test(resolve, cancel_finished_but_undelivered, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};

    start(loop, "127.0.0.1", 80, &r, &job);
    wait_for_wakeup(loop);
    em__resolve_cancel(loop, job); /* frees the job and its addrinfo */
    th_run_for(loop, 0.1);
    cr_assert_eq(r.calls, 0, "fn ran after cancel");
    th_free_loop(loop);
}

/* Cancel half of many jobs while they are queued, running or done: none of
 * the cancelled ones may be delivered, all others must be. */
Test(resolve, cancel_in_every_state, .timeout = 60)
{
    em_loop *loop = th_loop();
    em__resolve_job *jobs[MANY];
    result r[MANY];
    double deadline = th_now() + RESOLVE_WAIT_S;
    int i;
    int delivered = 0;

    memset(r, 0, sizeof(r));
    for (i = 0; i < MANY; i++) {
        start(loop, "localhost", i, &r[i], &jobs[i]);
        if (i % 3 == 0)
            usleep(200);
    }
    for (i = 0; i < MANY; i += 2)
        em__resolve_cancel(loop, jobs[i]);
    while (delivered < MANY / 2) {
        cr_assert_lt(th_now(), deadline, "%d delivered", delivered);
        th_run_for(loop, 0.01);
        delivered = delivered_count(r, MANY);
    }
    th_run_for(loop, 0.1);
    for (i = 0; i < MANY; i++)
        cr_assert_eq(r[i].calls, i % 2, "job %d ran %d times", i, r[i].calls);
    th_free_loop(loop);
}

/* A fn may cancel another job, even one in the batch being delivered.
 * Two racers each cancel the other when delivered: whichever comes first
 * wins, and the other must never run. */
typedef struct racer {
    struct racer *rival;
    em__resolve_job *job; /* NULL once delivered or cancelled */
    int calls;
} racer;

static void on_racer(em_loop *loop, void *ctx, struct addrinfo *ai, int err)
{
    racer *self = ctx;

    (void)err;
    if (ai != NULL)
        freeaddrinfo(ai);
    self->calls++;
    self->job = NULL;
    if (self->rival->job != NULL) {
        em__resolve_cancel(loop, self->rival->job);
        self->rival->job = NULL;
    }
}

Test(resolve, fn_cancels_another_job, .timeout = 30)
{
    em_loop *loop = th_loop();
    racer a = {0};
    racer b = {0};
    int any = 0;
    double deadline = th_now() + RESOLVE_WAIT_S;

    a.rival = &b;
    b.rival = &a;
    cr_assert_eq(em__resolve_start(loop, "127.0.0.1", 1, on_racer, &a, &a.job),
                 0);
    cr_assert_eq(em__resolve_start(loop, "127.0.0.1", 2, on_racer, &b, &b.job),
                 0);
    usleep(100 * 1000); /* usually both finish: one delivery batch */
    while (!any) {
        cr_assert_lt(th_now(), deadline, "neither job was delivered");
        th_run_for(loop, 0.01);
        any = a.calls + b.calls;
    }
    th_run_for(loop, 0.1);
    cr_assert_eq(a.calls + b.calls, 1, "a ran %d, b ran %d times", a.calls,
                 b.calls);
    th_free_loop(loop);
}

/* A fn may start a new resolution (as a reconnect does). */
typedef struct chain {
    int remaining;
    int done;
    int err;
} chain;

static void chain_next(em_loop *loop, void *ctx, struct addrinfo *ai, int err)
{
    chain *c = ctx;
    em__resolve_job *job;

    if (ai != NULL)
        freeaddrinfo(ai);
    if (err != 0 || --c->remaining == 0) {
        c->err = err;
        c->done = 1;
        return;
    }
    c->err =
        em__resolve_start(loop, "localhost", c->remaining, chain_next, c, &job);
    c->done = c->err != 0;
}

Test(resolve, fn_starts_another, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job;
    chain c = {.remaining = 5};

    cr_assert_eq(em__resolve_start(loop, "localhost", 5, chain_next, &c, &job),
                 0);
    th_run_until(loop, &c.done, RESOLVE_WAIT_S);
    cr_assert_eq(c.err, 0, "%s", em_strerror(c.err));
    cr_assert_eq(c.remaining, 0);
    th_free_loop(loop);
}

/* Freeing the loop with jobs queued, running and done: no fn runs, no
 * thread survives, nothing leaks (under ASan). */
Test(resolve, free_with_jobs_in_flight, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *jobs[MANY];
    result r[MANY];
    int before = th_thread_count();
    int i;

    memset(r, 0, sizeof(r));
    for (i = 0; i < MANY; i++)
        start(loop, i % 2 ? "localhost" : "127.0.0.1", i, &r[i], &jobs[i]);
    wait_for_wakeup(loop);
    em__resolve_cancel(loop, jobs[MANY - 1]);
    th_free_loop(loop);
    for (i = 0; i < MANY; i++)
        cr_assert_eq(r[i].calls, 0, "job %d delivered during free", i);
    cr_assert_eq(th_thread_count_settled(before), before,
                 "workers outlived the loop");
}

#define MAX_TIDS 64

/* The thread ids of this process; returns how many. */
static int list_tids(int *tids, int max)
{
    DIR *dir = opendir("/proc/self/task");
    struct dirent *entry;
    int n = 0;

    cr_assert_not_null(dir);
    while ((entry = readdir(dir)) != NULL && n < max) {
        if (entry->d_name[0] != '.')
            tids[n++] = atoi(entry->d_name);
    }
    closedir(dir);
    return n;
}

static int contains(const int *tids, int n, int tid)
{
    int i;

    for (i = 0; i < n; i++) {
        if (tids[i] == tid)
            return 1;
    }
    return 0;
}

static unsigned long long blocked_mask(int tid)
{
    char path[64];
    char line[256];
    unsigned long long mask = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
    f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    while (fgets(line, sizeof(line), f) != NULL)
        sscanf(line, "SigBlk: %llx", &mask);
    fclose(f);
    return mask;
}

/* Bit (sig - 1) of a SigBlk mask. */
static int blocks(unsigned long long mask, int sig)
{
    return (int)((mask >> (sig - 1)) & 1u);
}

Test(resolve, workers_block_signals, .timeout = 30)
{
    em_loop *loop = th_loop();
    em__resolve_job *job = NULL;
    result r = {0};
    int before[MAX_TIDS];
    int after[MAX_TIDS];
    int n_before = list_tids(before, MAX_TIDS);
    int n_after;
    int checked = 0;
    int i;

    start(loop, "127.0.0.1", 1, &r, &job);
    th_run_until(loop, &r.calls, RESOLVE_WAIT_S);
    n_after = list_tids(after, MAX_TIDS);
    for (i = 0; i < n_after; i++) {
        unsigned long long mask;

        if (contains(before, n_before, after[i]))
            continue;
        mask = blocked_mask(after[i]);
        cr_assert(blocks(mask, SIGINT) && blocks(mask, SIGTERM) &&
                      blocks(mask, SIGUSR1) && blocks(mask, SIGPIPE) &&
                      blocks(mask, SIGCHLD) && blocks(mask, SIGALRM),
                  "worker %d has SigBlk %llx", after[i], mask);
        checked++;
    }
    cr_assert_geq(checked, 1, "no worker thread found");
    /* The caller's own mask is restored after spawning. */
    cr_assert_eq(blocks(blocked_mask(gettid()), SIGINT), 0);
    th_free_loop(loop);
}
