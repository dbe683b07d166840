/*
 * pool.c - the loop's thread pool: em_defer, and the jobs of resolve.c.
 *
 * Each loop gets a pool on first use: a FIFO of queued jobs and a list of
 * finished ones under one mutex, a condvar the workers sleep on, and up to
 * `size` worker threads (default 4), started one at a time, only when a job
 * is queued and no idle worker is left to take it. A worker pops a job,
 * runs it without the lock, puts it on the done list and, when that list
 * was empty, wakes the loop through em__loop_wakeup. The loop thread's
 * wakeup handler (loop.c) calls em__pool_deliver, which takes the whole
 * done list under the lock and calls each job's done function outside it.
 *
 * Jobs are intrusive (struct em__job inside the caller's record), so a
 * job costs the caller's one allocation and no more. Two users:
 *   - em_defer (below): work(arg) on a worker, done(loop, arg, result,
 *     status) on the loop thread; ids are generation-checked slots of a
 *     loop-thread-only slab, so a stale id never reaches a newer job.
 *   - resolve.c: getaddrinfo for em_connect. One pool, one mechanism.
 *
 * Cancelling: em__pool_cancel takes a queued job off the queue and puts it
 * on the done list with -ECANCELED, so its done function still runs, on
 * the next wakeup, never inside the caller's call; a running or finished
 * job is too late (-EBUSY). em__pool_abandon is the silent form for
 * internal users: a queued or finished job is dropped at once, a running
 * one when its work returns; its done function never runs.
 *
 * Freeing (em_loop_free): queued jobs move to the done list as cancelled,
 * workers finish what they are running and are joined, and every job left
 * is delivered on the calling thread, so each em_defer gets exactly one
 * done call. em__pool_free must run before the loop closes its eventfd.
 *
 * Alternatives considered:
 *   - One pool per process (libuv): global state, and a loop could not be
 *     freed without waiting for other loops' work. Per loop costs a few
 *     idle threads per loop that uses it.
 *   - Shrinking a started pool: idle workers would have to exit and be
 *     joined at a time nobody waits for. The size may only grow past the
 *     threads already started; EventMachine fixes it before the first
 *     defer.
 *   - Detached workers so that em_loop_free never waits: their threads and
 *     memory would outlive the loop. We join; em_loop_free waits for work
 *     that is running (documented in em.h).
 *
 * Workers block every signal, so signals reach the application's threads
 * (and a loop's signalfd, see signals.c).
 *
 * After fork the child has the pool's memory but none of its workers:
 * em__pool_forget frees the records (jobs that were running included, so
 * they are kept on a `running` list) without waiting for anyone.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>

#include "internal.h"

#define EM__POOL_DEFAULT_SIZE 4
#define EM__POOL_MAX_SIZE 256

enum job_state {
    JOB_QUEUED,  /* on pool->queue */
    JOB_RUNNING, /* a worker runs it, in no list */
    JOB_DONE,    /* on pool->done, or on deliver's batch */
};

typedef struct em__defer {
    em__job job;
    em_work_fn work;
    em_done_fn done;
    void *arg;
    void *result;
    uint32_t slot;
} em__defer;

typedef struct defer_slot {
    em__defer *defer; /* NULL while free */
    uint32_t generation;
    uint32_t next_free;
} defer_slot;

#define SLOT_NONE UINT32_MAX

struct em__pool {
    em_loop *loop;
    pthread_mutex_t lock;
    pthread_cond_t work; /* a job was queued, or stopping */
    em__link queue;      /* JOB_QUEUED, oldest first */
    em__link done;       /* JOB_DONE, waiting for em__pool_deliver */
    size_t queued;
    int idle; /* workers waiting on `work` */
    int stopping;
    int size; /* most workers; grows, never below thread_count */
    int thread_count;
    int thread_cap;
    pthread_t *threads;

    /* em_defer's ids: loop thread only, no lock. */
    defer_slot *slots;
    uint32_t slot_cap;
    uint32_t slot_used;
    uint32_t free_head;
    size_t defers; /* em_defer jobs whose done has not run */

    em__link running; /* JOB_RUNNING, under lock: a fork child frees them */
};

static em__job *job_of(em__link *link)
{
    return em__container_of(link, em__job, link);
}

/* Moves every node of src to the back of dst; src ends empty. */
/* Lock held. A non-empty done list means a wakeup is already on its way. */
static void push_done(em__pool *p, em__job *job, int status)
{
    int was_empty = em__list_empty(&p->done);
    job->state = JOB_DONE;
    job->status = status;
    em__list_push_back(&p->done, &job->link);
    if (was_empty && !p->stopping)
        em__loop_wakeup(p->loop);
}

static void *worker_main(void *arg)
{
    em__pool *p = arg;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stopping && em__list_empty(&p->queue)) {
            p->idle++;
            pthread_cond_wait(&p->work, &p->lock);
            p->idle--;
        }
        if (em__list_empty(&p->queue))
            break; /* stopping: em__pool_free emptied the queue */
        em__job *job = job_of(p->queue.next);
        em__list_remove(&job->link);
        p->queued--;
        job->state = JOB_RUNNING;
        em__list_push_back(&p->running, &job->link);
        pthread_mutex_unlock(&p->lock);
        job->work(job);
        pthread_mutex_lock(&p->lock);
        em__list_remove(&job->link);
        if (job->abandoned) {
            pthread_mutex_unlock(&p->lock);
            job->drop(job);
            pthread_mutex_lock(&p->lock);
            continue;
        }
        push_done(p, job, 0);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Starts one more worker with every signal blocked (the mask is inherited,
 * so the thread never has a moment in which it could take a signal).
 * Lock held. Returns 0 or -EAGAIN / -ENOMEM. */
static int spawn_worker(em__pool *p)
{
    if (p->thread_count == p->thread_cap) {
        int cap = p->thread_cap ? p->thread_cap * 2 : 4;
        pthread_t *threads =
            realloc(p->threads, (size_t)cap * sizeof(*threads));
        if (!threads)
            return -ENOMEM;
        p->threads = threads;
        p->thread_cap = cap;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->threads[p->thread_count], NULL, worker_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -EAGAIN;
    p->thread_count++;
    return 0;
}

static int pool_get(em_loop *loop, em__pool **out)
{
    if (loop->pool) {
        *out = loop->pool;
        return 0;
    }
    em__pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return -ENOMEM;
    }
    if (pthread_cond_init(&p->work, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        return -ENOMEM;
    }
    p->loop = loop;
    p->size = EM__POOL_DEFAULT_SIZE;
    p->free_head = SLOT_NONE;
    em__list_init(&p->queue);
    em__list_init(&p->done);
    em__list_init(&p->running);
    loop->pool = p;
    *out = p;
    return 0;
}

/* ---- the internal interface ------------------------------------------ */

int em__pool_submit(em_loop *loop, em__job *job)
{
    em__pool *p = NULL;
    int err = pool_get(loop, &p);
    if (err < 0)
        return err;
    em__list_init(&job->link);
    job->state = JOB_QUEUED;
    job->status = 0;
    job->abandoned = 0;

    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        pthread_mutex_unlock(&p->lock);
        return -ECANCELED;
    }
    em__list_push_back(&p->queue, &job->link);
    p->queued++;
    if ((size_t)p->idle < p->queued && p->thread_count < p->size &&
        spawn_worker(p) < 0 && p->thread_count == 0) {
        em__list_remove(&job->link);
        p->queued--;
        pthread_mutex_unlock(&p->lock);
        return -EAGAIN;
    }
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int em__pool_cancel(em_loop *loop, em__job *job)
{
    em__pool *p = loop->pool;
    pthread_mutex_lock(&p->lock);
    if (job->state != JOB_QUEUED) {
        int err = job->state == JOB_DONE && job->status == -ECANCELED
                      ? -EALREADY
                      : -EBUSY;
        pthread_mutex_unlock(&p->lock);
        return err;
    }
    em__list_remove(&job->link);
    p->queued--;
    push_done(p, job, -ECANCELED);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

void em__pool_abandon(em_loop *loop, em__job *job)
{
    em__pool *p = loop->pool;
    pthread_mutex_lock(&p->lock);
    if (job->state == JOB_RUNNING) {
        job->abandoned = 1; /* its worker drops it */
        pthread_mutex_unlock(&p->lock);
        return;
    }
    /* Queued, or done (on p->done or on deliver's batch, which only the
     * loop thread touches: us). */
    if (job->state == JOB_QUEUED)
        p->queued--;
    em__list_remove(&job->link);
    pthread_mutex_unlock(&p->lock);
    job->drop(job);
}

/* Runs the done functions of batch, one at a time: one may abandon or
 * cancel a later job of the same batch. */
static void deliver_batch(em_loop *loop, em__link *batch)
{
    while (!em__list_empty(batch)) {
        em__job *job = job_of(batch->next);
        em__list_remove(&job->link);
        job->done(loop, job, job->status);
    }
}

void em__pool_deliver(em_loop *loop)
{
    em__pool *p = loop ? loop->pool : NULL;
    if (!p)
        return;
    em__link batch;
    em__list_init(&batch);
    pthread_mutex_lock(&p->lock);
    em__list_splice_back(&batch, &p->done);
    pthread_mutex_unlock(&p->lock);
    deliver_batch(loop, &batch);
}

size_t em__pool_free(em_loop *loop)
{
    em__pool *p = loop->pool;
    if (!p)
        return 0;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    while (!em__list_empty(&p->queue)) {
        em__job *job = job_of(p->queue.next);
        em__list_remove(&job->link);
        push_done(p, job, -ECANCELED);
    }
    p->queued = 0;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    /* Workers finish the jobs they are running, park them on p->done (or
     * drop abandoned ones) and exit. */
    for (int i = 0; i < p->thread_count; i++)
        pthread_join(p->threads[i], NULL);
    size_t outstanding = p->defers;
    em__link batch;
    em__list_init(&batch);
    em__list_splice_back(&batch, &p->done);
    deliver_batch(loop, &batch);
    free(p->threads);
    free(p->slots);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->lock);
    free(p);
    loop->pool = NULL;
    return outstanding;
}

/* ---- after fork ------------------------------------------------------- */

/* In a forked child no worker exists, and one may have held the lock at
 * the fork, in the middle of changing a list: the lock is only tried, and
 * the lists it guards are read only when it was free. The slot table and
 * the resolver's list are the loop thread's and always whole. Neither the
 * mutex nor the condvar is destroyed: a condvar with waiters that will
 * never wake makes pthread_cond_destroy wait forever. */
void em__pool_forget(em_loop *loop)
{
    em__pool *p = loop->pool;
    if (!p)
        return;
    if (pthread_mutex_trylock(&p->lock) == 0) {
        /* An abandoned job a worker was running is on no one else's list
         * (its owner let go of it); the others are the slots' or the
         * resolver's. */
        for (em__link *l = p->running.next, *next; l != &p->running; l = next) {
            next = l->next;
            em__job *job = job_of(l);
            if (job->abandoned)
                job->drop(job);
        }
        pthread_mutex_unlock(&p->lock);
    }
    for (uint32_t i = 0; i < p->slot_used; i++)
        free(p->slots[i].defer);
    free(p->threads);
    free(p->slots);
    free(p);
    loop->pool = NULL;
}

/* ---- em_defer's ids -------------------------------------------------- */

static int slot_reserve(em__pool *p, uint32_t *out)
{
    if (p->free_head != SLOT_NONE) {
        *out = p->free_head;
        p->free_head = p->slots[*out].next_free;
        return 0;
    }
    if (p->slot_used == p->slot_cap) {
        if (p->slot_cap >= UINT32_MAX / 2)
            return -ENOMEM;
        uint32_t cap = p->slot_cap ? p->slot_cap * 2 : 16;
        defer_slot *slots = realloc(p->slots, (size_t)cap * sizeof(*slots));
        if (!slots)
            return -ENOMEM;
        p->slots = slots;
        p->slot_cap = cap;
    }
    *out = p->slot_used++;
    p->slots[*out].generation = 0;
    p->slots[*out].defer = NULL;
    return 0;
}

static void slot_release(em__pool *p, uint32_t slot)
{
    p->slots[slot].defer = NULL;
    p->slots[slot].generation++;
    p->slots[slot].next_free = p->free_head;
    p->free_head = slot;
}

static em_defer_id slot_id(const em__pool *p, uint32_t slot)
{
    return ((em_defer_id)p->slots[slot].generation << 32) | (slot + 1u);
}

static em__defer *defer_lookup(em__pool *p, em_defer_id id)
{
    uint32_t low = (uint32_t)(id & UINT32_MAX);
    if (low == 0 || low > p->slot_used)
        return NULL;
    defer_slot *s = &p->slots[low - 1];
    if (!s->defer || s->generation != (uint32_t)(id >> 32))
        return NULL;
    return s->defer;
}

/* ---- em_defer -------------------------------------------------------- */

static void defer_work(em__job *job)
{
    em__defer *d = em__container_of(job, em__defer, job);
    d->result = d->work(d->arg);
}

static void defer_done(em_loop *loop, em__job *job, int status)
{
    em__defer *d = em__container_of(job, em__defer, job);
    em__pool *p = loop->pool;
    /* The id goes stale first: cancelling it from done is -ENOENT. */
    slot_release(p, d->slot);
    p->defers--;
    if (d->done)
        d->done(loop, d->arg, status == 0 ? d->result : NULL, status);
    free(d);
}

int em_defer(em_loop *loop, em_work_fn work, em_done_fn done, void *arg,
             em_defer_id *out)
{
    if (out)
        *out = 0;
    if (!loop || !work)
        return -EINVAL;
    em__pool *p = NULL;
    int err = pool_get(loop, &p);
    if (err < 0)
        return err;
    if (p->stopping)
        return -ECANCELED;
    uint32_t slot;
    err = slot_reserve(p, &slot);
    if (err < 0)
        return err;
    em__defer *d = malloc(sizeof(*d));
    if (!d) {
        slot_release(p, slot);
        return -ENOMEM;
    }
    d->job.work = defer_work;
    d->job.done = defer_done;
    d->job.drop = NULL; /* never abandoned */
    d->work = work;
    d->done = done;
    d->arg = arg;
    d->result = NULL;
    d->slot = slot;
    p->slots[slot].defer = d;
    err = em__pool_submit(loop, &d->job);
    if (err < 0) {
        slot_release(p, slot);
        free(d);
        return err;
    }
    p->defers++;
    if (out)
        *out = slot_id(p, slot);
    return 0;
}

int em_cancel_defer(em_loop *loop, em_defer_id id)
{
    if (!loop)
        return -EINVAL;
    em__defer *d = loop->pool ? defer_lookup(loop->pool, id) : NULL;
    if (!d)
        return -ENOENT;
    return em__pool_cancel(loop, &d->job);
}

size_t em_defer_count(const em_loop *loop)
{
    return loop && loop->pool ? loop->pool->defers : 0;
}

int em_set_threadpool_size(em_loop *loop, int threads)
{
    if (!loop || threads < 1 || threads > EM__POOL_MAX_SIZE)
        return -EINVAL;
    em__pool *p = NULL;
    int err = pool_get(loop, &p);
    if (err < 0)
        return err;
    pthread_mutex_lock(&p->lock);
    if (threads < p->thread_count) {
        pthread_mutex_unlock(&p->lock);
        return -EBUSY;
    }
    p->size = threads;
    /* Jobs that waited for a free worker may start now. */
    size_t takers = (size_t)p->idle;
    while (takers < p->queued && p->thread_count < p->size &&
           spawn_worker(p) == 0)
        takers++;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int em_threadpool_size(const em_loop *loop)
{
    if (!loop)
        return -EINVAL;
    return loop->pool ? loop->pool->size : EM__POOL_DEFAULT_SIZE;
}
