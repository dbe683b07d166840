/*
 * resolve.c - getaddrinfo off the loop thread, on the loop's thread pool.
 *
 * getaddrinfo can block for seconds (DNS timeouts), so the loop never calls
 * it for a name. Each name is one job on the loop's thread pool (pool.c),
 * the same pool em_defer uses: the job runs getaddrinfo on a worker and its
 * done function calls fn on the loop thread. The resolver itself is only a
 * list of the jobs it has in flight (loop thread only), created by the
 * first em__resolve_start, so em__resolver_free can abandon them before
 * the pool is freed.
 *
 * Alternatives considered:
 *   - getaddrinfo_a (glibc only): completion by signal or by a thread
 *     started per notification, a process-wide pool we cannot size or join,
 *     and gai_cancel cannot stop a running request either.
 *   - An async DNS library (c-ares): a real dependency, and it does not read
 *     nsswitch (mDNS, LDAP, systemd-resolved), so names would resolve
 *     differently from every other program on the machine.
 *   - Threads of its own (what this file had before em_defer): two pools
 *     with the same locking, wakeup and join logic. One is enough; a long
 *     em_defer job can delay a resolution, which em_set_threadpool_size
 *     answers.
 *
 * Query: AF_UNSPEC, SOCK_STREAM, AI_NUMERICSERV with the port as a decimal
 * service. No AI_ADDRCONFIG: on a machine whose only interface is loopback
 * it hides 127.0.0.1 and ::1, so "localhost" would not resolve.
 *
 * Errors (fn's err): EAI_NONAME, EAI_NODATA, EAI_ADDRFAMILY -> -ENOENT (no
 * such host, or no address for it); EAI_AGAIN -> -EAGAIN (temporary, e.g.
 * DNS unreachable); EAI_MEMORY -> -ENOMEM; EAI_FAIL -> -EIO (the name
 * server failed for good); EAI_SYSTEM -> -errno (-EIO if errno is 0);
 * anything else (bad flags, family, service) -> -EINVAL.
 *
 * Cancelling abandons the pool job: a queued or finished-but-undelivered
 * job is freed at once, a running one by its worker when getaddrinfo
 * returns. Either way fn is never called. A job pointer is invalid once fn
 * was called or em__resolve_cancel returned. Host names longer than 1024
 * bytes (NI_MAXHOST) are refused with -EINVAL.
 *
 * A forked child must not use the parent's loop; it may free it, which
 * frees the jobs without cancelling them (em__resolver_forget).
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

#define EM__RESOLVE_HOST_MAX 1024 /* NI_MAXHOST without the NUL */

struct em__resolve_job {
    em__job job;   /* the pool's part */
    em__link live; /* resolver->live: loop thread only */
    em__resolve_fn fn;
    void *ctx;
    struct addrinfo *result; /* owned until handed to fn */
    int err;
    int port;
    char host[]; /* owned copy */
};

struct em__resolver {
    em__link live; /* jobs submitted, fn not yet called, not cancelled */
};

static em__resolve_job *resolve_job_of(em__job *job)
{
    return em__container_of(job, em__resolve_job, job);
}

static void job_free(em__resolve_job *job)
{
    if (job->result != NULL)
        freeaddrinfo(job->result);
    free(job);
}

static int map_gai_error(int rc, int saved_errno)
{
    switch (rc) {
    case 0:
        return 0;
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        return -ENOENT;
    case EAI_AGAIN:
        return -EAGAIN;
    case EAI_MEMORY:
        return -ENOMEM;
    case EAI_FAIL:
        return -EIO;
    case EAI_SYSTEM:
        return saved_errno > 0 ? -saved_errno : -EIO;
    default:
        return -EINVAL;
    }
}

/* On a pool worker. */
static void job_run(em__job *pool_job)
{
    em__resolve_job *job = resolve_job_of(pool_job);
    struct addrinfo hints;
    char service[8];
    int rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(service, sizeof(service), "%d", job->port);
    errno = 0;
    rc = getaddrinfo(job->host, service, &hints, &job->result);
    job->err = map_gai_error(rc, errno);
    if (rc != 0)
        job->result = NULL;
    else if (job->result == NULL)
        job->err = -ENOENT;
}

/* On the loop thread. The pool never cancels a resolver job (the resolver
 * abandons instead), so status is always 0. */
static void job_done(em_loop *loop, em__job *pool_job, int status)
{
    em__resolve_job *job = resolve_job_of(pool_job);
    struct addrinfo *result = job->result;

    (void)status;
    em__list_remove(&job->live);
    job->result = NULL;
    job->fn(loop, job->ctx, result, job->err);
    free(job);
}

/* On a worker or the loop thread, once the job is in no list. */
static void job_drop(em__job *pool_job)
{
    job_free(resolve_job_of(pool_job));
}

static em__resolve_job *job_new(const char *host, size_t host_len, int port,
                                em__resolve_fn fn, void *ctx)
{
    em__resolve_job *job = malloc(sizeof(*job) + host_len + 1);

    if (job == NULL)
        return NULL;
    job->job.work = job_run;
    job->job.done = job_done;
    job->job.drop = job_drop;
    em__list_init(&job->live);
    job->fn = fn;
    job->ctx = ctx;
    job->result = NULL;
    job->err = 0;
    job->port = port;
    memcpy(job->host, host, host_len + 1);
    return job;
}

int em__resolve_start(em_loop *loop, const char *host, int port,
                      em__resolve_fn fn, void *ctx, em__resolve_job **out)
{
    em__resolve_job *job;
    size_t host_len;
    int rc;

    if (loop == NULL || host == NULL || fn == NULL || out == NULL || port < 0 ||
        port > 65535)
        return -EINVAL;
    host_len = strlen(host);
    if (host_len == 0 || host_len > EM__RESOLVE_HOST_MAX)
        return -EINVAL;
    if (loop->resolver == NULL) {
        loop->resolver = malloc(sizeof(*loop->resolver));
        if (loop->resolver == NULL)
            return -ENOMEM;
        em__list_init(&loop->resolver->live);
    }
    job = job_new(host, host_len, port, fn, ctx);
    if (job == NULL)
        return -ENOMEM;
    rc = em__pool_submit(loop, &job->job);
    if (rc != 0) {
        free(job);
        return rc;
    }
    em__list_push_back(&loop->resolver->live, &job->live);
    *out = job;
    return 0;
}

void em__resolve_cancel(em_loop *loop, em__resolve_job *job)
{
    if (loop == NULL || job == NULL || loop->resolver == NULL)
        return;
    em__list_remove(&job->live);
    em__pool_abandon(loop, &job->job);
}

void em__resolver_free(em_loop *loop)
{
    if (loop == NULL || loop->resolver == NULL)
        return;
    em__link *live = &loop->resolver->live;
    while (!em__list_empty(live)) {
        em__resolve_job *job =
            em__container_of(live->next, em__resolve_job, live);
        em__resolve_cancel(loop, job);
    }
    free(loop->resolver);
    loop->resolver = NULL;
}

/* A forked child's resolver (fork.c): the jobs in flight are freed, not
 * abandoned, since no worker exists to drop them and abandoning takes the
 * pool's lock. Runs after em__pool_forget. */
void em__resolver_forget(em_loop *loop)
{
    if (loop->resolver == NULL)
        return;
    em__link *live = &loop->resolver->live;
    while (!em__list_empty(live)) {
        em__resolve_job *job =
            em__container_of(live->next, em__resolve_job, live);
        em__list_remove(&job->live);
        job_free(job);
    }
    free(loop->resolver);
    loop->resolver = NULL;
}
