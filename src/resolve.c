/*
 * resolve.c - getaddrinfo off the loop thread.
 *
 * getaddrinfo can block for seconds (DNS timeouts), so the loop never calls
 * it for a name. Each loop gets a resolver on its first em__resolve_start: a
 * job queue and a "done" list under one mutex, a condvar the workers sleep
 * on, and 1 to EM__RESOLVER_THREADS worker threads (one to begin with; one
 * more whenever a job is queued and no idle worker is left to take it).
 * A worker pops a job, runs getaddrinfo without the lock, pushes the job on
 * the done list and, when that list was empty, wakes the loop with
 * em__loop_wakeup. On every wakeup the loop thread calls
 * em__resolver_deliver, which takes the whole done list under the lock and
 * runs each job's fn outside it.
 *
 * Alternatives considered:
 *   - getaddrinfo_a (glibc only): completion by signal or by a thread
 *     started per notification, a process-wide pool we cannot size or join,
 *     and gai_cancel cannot stop a running request either. A pool of our
 *     own is as small and lets em__resolver_free leave no thread behind.
 *   - An async DNS library (c-ares): a real dependency, and it does not read
 *     nsswitch (mDNS, LDAP, systemd-resolved), so names would resolve
 *     differently from every other program on the machine.
 *   - One thread per request: unbounded threads under a burst of connects.
 *   - Detached workers, so freeing a loop never waits: threads and memory
 *     would outlive the loop. We join instead; em__resolver_free waits for
 *     at most the getaddrinfo calls already running (bounded by resolv.conf
 *     timeouts). Idle workers stay until the loop is freed (at most four).
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
 * Cancelling: a queued or finished-but-undelivered job is unlinked and freed
 * at once; a running one is marked, and its worker frees it (and its
 * result) when getaddrinfo returns, without waking the loop. Either way fn
 * is never called. A job pointer is invalid once fn was called or
 * em__resolve_cancel returned.
 *
 * Workers wake the loop only while the resolver is not stopping, and
 * em__resolver_free joins them, so it must run before the loop closes its
 * wakeup eventfd (loop.c frees the resolver first). Host names longer than
 * 1024 bytes (NI_MAXHOST) are refused with -EINVAL.
 *
 * Workers block every signal, so signals reach the application's threads.
 * The resolver is not fork-safe: a child must not use the parent's loop.
 */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

#define EM__RESOLVER_THREADS 4
#define EM__RESOLVE_HOST_MAX 1024 /* NI_MAXHOST without the NUL */

enum job_state {
    JOB_QUEUED,  /* on resolver->queue */
    JOB_RUNNING, /* a worker is in getaddrinfo for it, in no list */
    JOB_DONE,    /* on resolver->done, or on deliver's batch */
};

struct em__resolve_job {
    em__link link;
    em__resolve_fn fn;
    void *ctx;
    struct addrinfo *result; /* owned until handed to fn */
    int err;
    int port;
    enum job_state state;
    int cancelled; /* only while JOB_RUNNING */
    char host[];   /* owned copy */
};

struct em__resolver {
    em_loop *loop;
    pthread_mutex_t lock;
    pthread_cond_t work; /* signalled when a job is queued or on stop */
    em__link queue;      /* JOB_QUEUED, oldest first */
    em__link done;       /* JOB_DONE, waiting for em__resolver_deliver */
    size_t queued;
    int idle; /* workers waiting on `work` */
    int stopping;
    int thread_count;
    pthread_t threads[EM__RESOLVER_THREADS];
};

static em__resolve_job *job_of(em__link *link)
{
    return em__container_of(link, em__resolve_job, link);
}

static void job_free(em__resolve_job *job)
{
    if (job->result != NULL)
        freeaddrinfo(job->result);
    free(job);
}

/* Moves every node of src to the back of dst; src ends empty. */
static void list_take_all(em__link *dst, em__link *src)
{
    if (em__list_empty(src))
        return;
    src->next->prev = dst->prev;
    src->prev->next = dst;
    dst->prev->next = src->next;
    dst->prev = src->prev;
    em__list_init(src);
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

/* Runs on a worker without the lock. */
static void job_run(em__resolve_job *job)
{
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

/* Called with the lock held; returns with it held. */
static void job_finish(em__resolver *r, em__resolve_job *job)
{
    int was_empty;

    if (job->cancelled) {
        pthread_mutex_unlock(&r->lock);
        job_free(job);
        pthread_mutex_lock(&r->lock);
        return;
    }
    job->state = JOB_DONE;
    was_empty = em__list_empty(&r->done);
    em__list_push_back(&r->done, &job->link);
    /* A non-empty list means a wakeup is already on its way. Once stopping,
     * the loop is being freed and its eventfd may be gone. */
    if (was_empty && !r->stopping)
        em__loop_wakeup(r->loop);
}

static void *worker_main(void *arg)
{
    em__resolver *r = arg;
    em__resolve_job *job;

    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->stopping && em__list_empty(&r->queue)) {
            r->idle++;
            pthread_cond_wait(&r->work, &r->lock);
            r->idle--;
        }
        if (r->stopping)
            break;
        job = job_of(r->queue.next);
        em__list_remove(&job->link);
        r->queued--;
        job->state = JOB_RUNNING;
        pthread_mutex_unlock(&r->lock);
        job_run(job);
        pthread_mutex_lock(&r->lock);
        job_finish(r, job);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Starts one more worker with every signal blocked (the mask is inherited,
 * so there is no window in which the thread could take a signal). Called
 * with the lock held. Returns 0 or -EAGAIN. */
static int spawn_worker(em__resolver *r)
{
    sigset_t all;
    sigset_t old;
    int rc;

    if (r->thread_count >= EM__RESOLVER_THREADS)
        return -EAGAIN;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&r->threads[r->thread_count], NULL, worker_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -EAGAIN;
    r->thread_count++;
    return 0;
}

static int resolver_new(em_loop *loop, em__resolver **out)
{
    em__resolver *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return -ENOMEM;
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        free(r);
        return -ENOMEM;
    }
    if (pthread_cond_init(&r->work, NULL) != 0) {
        pthread_mutex_destroy(&r->lock);
        free(r);
        return -ENOMEM;
    }
    r->loop = loop;
    em__list_init(&r->queue);
    em__list_init(&r->done);
    *out = r;
    return 0;
}

static em__resolve_job *job_new(const char *host, size_t host_len, int port,
                                em__resolve_fn fn, void *ctx)
{
    em__resolve_job *job = malloc(sizeof(*job) + host_len + 1);

    if (job == NULL)
        return NULL;
    em__list_init(&job->link);
    job->fn = fn;
    job->ctx = ctx;
    job->result = NULL;
    job->err = 0;
    job->port = port;
    job->state = JOB_QUEUED;
    job->cancelled = 0;
    memcpy(job->host, host, host_len + 1);
    return job;
}

/* Queues job and makes sure a worker will take it. Lock held. */
static int enqueue(em__resolver *r, em__resolve_job *job)
{
    em__list_push_back(&r->queue, &job->link);
    r->queued++;
    if ((size_t)r->idle < r->queued && spawn_worker(r) != 0 &&
        r->thread_count == 0) {
        em__list_remove(&job->link);
        r->queued--;
        return -EAGAIN;
    }
    pthread_cond_signal(&r->work);
    return 0;
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
        rc = resolver_new(loop, &loop->resolver);
        if (rc != 0)
            return rc;
    }
    job = job_new(host, host_len, port, fn, ctx);
    if (job == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&loop->resolver->lock);
    rc = enqueue(loop->resolver, job);
    pthread_mutex_unlock(&loop->resolver->lock);
    if (rc != 0) {
        free(job);
        return rc;
    }
    *out = job;
    return 0;
}

void em__resolve_cancel(em_loop *loop, em__resolve_job *job)
{
    em__resolver *r;

    if (loop == NULL || job == NULL || loop->resolver == NULL)
        return;
    r = loop->resolver;
    pthread_mutex_lock(&r->lock);
    if (job->state == JOB_RUNNING) {
        job->cancelled = 1;
        pthread_mutex_unlock(&r->lock);
        return;
    }
    /* Queued, or done (on r->done or on deliver's batch: the batch is only
     * touched by the loop thread, which is us). */
    if (job->state == JOB_QUEUED)
        r->queued--;
    em__list_remove(&job->link);
    pthread_mutex_unlock(&r->lock);
    job_free(job);
}

void em__resolver_deliver(em_loop *loop)
{
    em__resolver *r;
    em__link batch;
    em__resolve_job *job;
    struct addrinfo *result;

    if (loop == NULL || loop->resolver == NULL)
        return;
    r = loop->resolver;
    em__list_init(&batch);
    pthread_mutex_lock(&r->lock);
    list_take_all(&batch, &r->done);
    pthread_mutex_unlock(&r->lock);
    /* Pop one at a time: a fn may cancel a later job of this batch. */
    while (!em__list_empty(&batch)) {
        job = job_of(batch.next);
        em__list_remove(&job->link);
        assert(job->state == JOB_DONE && !job->cancelled);
        result = job->result;
        job->result = NULL;
        job->fn(loop, job->ctx, result, job->err);
        free(job);
    }
}

static void free_list(em__link *head)
{
    em__link *link = head->next;

    while (link != head) {
        em__link *next = link->next;

        job_free(job_of(link));
        link = next;
    }
    em__list_init(head);
}

void em__resolver_free(em_loop *loop)
{
    em__resolver *r;
    int i;

    if (loop == NULL || loop->resolver == NULL)
        return;
    r = loop->resolver;
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_cond_broadcast(&r->work);
    pthread_mutex_unlock(&r->lock);
    /* A worker inside getaddrinfo finishes that call, parks its job on
     * r->done (or frees it if cancelled), then exits. */
    for (i = 0; i < r->thread_count; i++)
        pthread_join(r->threads[i], NULL);
    free_list(&r->queue);
    free_list(&r->done);
    pthread_cond_destroy(&r->work);
    pthread_mutex_destroy(&r->lock);
    free(r);
    loop->resolver = NULL;
}
