/*
 * timers.c - one-shot and periodic timers.
 *
 * A timer is a record in a slab (an array indexed by slot: callback, arg,
 * period, generation, heap position) plus one 16-byte entry in a 4-ary
 * min-heap ordered by (deadline, seq), where seq counts insertions so that
 * timers due at the same nanosecond fire in the order they were added.
 * Freed slots go on a free list threaded through the slab, so a program in
 * steady state adds and cancels timers without calling malloc; both arrays
 * grow by doubling. A timer costs 48 bytes (32 in the slab, 16 in the heap).
 *
 * An id is (generation << 32) | (slot + 1): never 0, and freeing a slot bumps
 * its generation, so a stale id (the timer fired or was cancelled) cannot
 * reach a newer timer that reuses the slot. Generations wrap after 2^32
 * reuses of one slot.
 *
 * Alternatives considered:
 *   - A binary heap of pointers to malloc'd timers (libuv, libevent): one
 *     allocation per timer and a pointer chase per comparison. Inline heap
 *     entries keep the keys in the heap array itself; 4 children of 16 bytes
 *     share a cache line, and the tree is half as deep.
 *   - A hashed timer wheel (h2o, the kernel): O(1) insert and cancel, but
 *     coarse ticks, cascading, and no exact order for far deadlines. Users'
 *     timers are few and want exact ordering; the per-connection timeouts
 *     that do need O(1) re-arming live in timeouts.c instead.
 *   - Lazy cancellation (mark the record dead, drop the entry when it
 *     surfaces): cheaper cancel, but an add/cancel pattern with long
 *     deadlines grows the heap without bound. Here cancel removes the entry
 *     at its recorded position in O(log n).
 *
 * Semantics:
 *   - A one-shot timer is removed (its id goes stale) before its callback
 *     runs, so cancelling it from its own callback returns -ENOENT.
 *   - A periodic timer is rescheduled before its callback runs, at previous
 *     deadline + period; when the loop fell behind, missed ticks are skipped
 *     (never a burst, never drift). Cancelling it from the callback stops it.
 *   - em__timers_run runs only entries that existed when the pass began: a
 *     timer added by a callback with 0 seconds waits for the next turn, so a
 *     timer that re-adds itself cannot starve the poll. Entries are marked by
 *     seq; seq is renumbered (order-preserving) before it would wrap, and a
 *     renumbering inside a pass ends that pass early (the rest stay due and
 *     run on the next turn).
 *   - Callbacks may add and cancel any timer. They must not free the loop.
 */
#include <errno.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>

#include "internal.h"

#define EM__TIMER_NONE UINT32_MAX /* no heap position / no slot */
/* slot + 1 must fit in 32 bits, and UINT32_MAX means "none" */
#define EM__TIMER_MAX_SLOTS (UINT32_MAX - 1)
#define EM__TIMER_FIRST_CAP 64u
#define EM__TIMER_MAX_NS (UINT64_C(1) << 62) /* ~146 years: no overflow */
#define EM__TIMER_NEVER (UINT64_MAX - 1)     /* saturated deadline */

typedef struct em__timer {
    em_callback fn; /* NULL while the slot is free */
    void *arg;
    uint64_t interval_ns; /* 0 for a one-shot timer */
    uint32_t generation;
    uint32_t pos; /* heap index; next free slot while free */
} em__timer;

typedef struct em__timer_entry {
    uint64_t deadline_ns;
    uint32_t slot;
    uint32_t seq;
} em__timer_entry;

struct em__timers {
    em__timer *slab;
    uint32_t slab_cap;
    uint32_t slab_used; /* slots ever handed out; the rest are untouched */
    uint32_t free_head; /* EM__TIMER_NONE when the free list is empty */
    uint32_t count;     /* pending timers = heap entries */
    em__timer_entry *heap;
    uint32_t heap_cap;
    uint32_t next_seq;
    uint32_t pass_seq; /* entries with seq below this run in this pass */
};

/* ---- the heap -------------------------------------------------------- */

static int entry_before(const em__timer_entry *a, const em__timer_entry *b)
{
    if (a->deadline_ns != b->deadline_ns)
        return a->deadline_ns < b->deadline_ns;
    return a->seq < b->seq;
}

static void heap_place(em__timers *t, uint32_t pos, em__timer_entry entry)
{
    t->heap[pos] = entry;
    t->slab[entry.slot].pos = pos;
}

static void sift_up(em__timers *t, uint32_t pos)
{
    em__timer_entry entry = t->heap[pos];

    while (pos > 0) {
        uint32_t parent = (pos - 1) / 4;
        if (!entry_before(&entry, &t->heap[parent]))
            break;
        heap_place(t, pos, t->heap[parent]);
        pos = parent;
    }
    heap_place(t, pos, entry);
}

static void sift_down(em__timers *t, uint32_t pos)
{
    em__timer_entry entry = t->heap[pos];
    size_t count = t->count;

    for (;;) {
        size_t first = (size_t)pos * 4 + 1;
        if (first >= count)
            break;
        size_t end = first + 4 < count ? first + 4 : count;
        size_t best = first;
        for (size_t child = first + 1; child < end; child++) {
            if (entry_before(&t->heap[child], &t->heap[best]))
                best = child;
        }
        if (!entry_before(&t->heap[best], &entry))
            break;
        heap_place(t, pos, t->heap[best]);
        pos = (uint32_t)best;
    }
    heap_place(t, pos, entry);
}

/* Removes the earliest entry. The hole at the root goes down to a leaf
 * along the smaller children, and the last entry then rises from there
 * (Floyd): it came from the bottom, so it rarely rises far, and the descent
 * skips a comparison per level. Prefetching the grandchildren hides part of
 * the cache misses of a large heap. */
static void heap_pop(em__timers *t)
{
    size_t count = --t->count;
    em__timer_entry last = t->heap[count];
    uint32_t pos = 0;

    if (count == 0)
        return;
    for (;;) {
        size_t first = (size_t)pos * 4 + 1;
        if (first >= count)
            break;
        if (first * 4 + 16 < count) {
            __builtin_prefetch(&t->heap[first * 4 + 1]);
            __builtin_prefetch(&t->heap[first * 4 + 9]);
        }
        size_t end = first + 4 < count ? first + 4 : count;
        size_t best = first;
        for (size_t child = first + 1; child < end; child++) {
            if (entry_before(&t->heap[child], &t->heap[best]))
                best = child;
        }
        heap_place(t, pos, t->heap[best]);
        pos = (uint32_t)best;
    }
    t->heap[pos] = last;
    sift_up(t, pos);
}

/* Removes the entry at pos, filling the hole with the last entry. */
static void heap_remove(em__timers *t, uint32_t pos)
{
    uint32_t last = --t->count;

    if (pos == last)
        return;
    heap_place(t, pos, t->heap[last]);
    if (pos > 0 && entry_before(&t->heap[pos], &t->heap[(pos - 1) / 4]))
        sift_up(t, pos);
    else
        sift_down(t, pos);
}

static int entry_compare(const void *a, const void *b)
{
    const em__timer_entry *x = a;
    const em__timer_entry *y = b;

    if (entry_before(x, y))
        return -1;
    return entry_before(y, x);
}

/* seq is about to wrap: sort the heap (a sorted array is a valid heap) and
 * renumber it 0..count-1, which keeps every relative order. Once per 2^32
 * insertions. Ends a pass in progress, since old and new entries can no
 * longer be told apart by seq. */
static void renumber(em__timers *t)
{
    qsort(t->heap, t->count, sizeof(*t->heap), entry_compare);
    for (uint32_t i = 0; i < t->count; i++) {
        t->heap[i].seq = i;
        t->slab[t->heap[i].slot].pos = i;
    }
    t->next_seq = t->count;
    t->pass_seq = 0;
}

static uint32_t take_seq(em__timers *t)
{
    if (t->next_seq == UINT32_MAX)
        renumber(t);
    return t->next_seq++;
}

/* ---- slots ----------------------------------------------------------- */

static uint32_t grown_cap(uint32_t cap)
{
    if (cap == 0)
        return EM__TIMER_FIRST_CAP;
    if (cap > EM__TIMER_MAX_SLOTS / 2)
        return EM__TIMER_MAX_SLOTS;
    return cap * 2;
}

/* Doubles an array of *cap elements. Returns the new array (and updates
 * *cap), or NULL with the old array and *cap untouched. */
static void *grow_array(void *array, uint32_t *cap, size_t elem_size)
{
    uint32_t new_cap = grown_cap(*cap);

    if (new_cap <= *cap || new_cap > SIZE_MAX / elem_size)
        return NULL;
    void *grown = realloc(array, (size_t)new_cap * elem_size);
    if (grown != NULL)
        *cap = new_cap;
    return grown;
}

/* Makes room for one more timer in both arrays; changes nothing visible. */
static int reserve_one(em__timers *t)
{
    if (t->free_head == EM__TIMER_NONE && t->slab_used == t->slab_cap) {
        em__timer *slab = grow_array(t->slab, &t->slab_cap, sizeof(*slab));
        if (slab == NULL)
            return -ENOMEM;
        t->slab = slab;
    }
    if (t->count == t->heap_cap) {
        em__timer_entry *heap =
            grow_array(t->heap, &t->heap_cap, sizeof(*heap));
        if (heap == NULL)
            return -ENOMEM;
        t->heap = heap;
    }
    return 0;
}

static uint32_t slot_take(em__timers *t)
{
    uint32_t slot = t->free_head;

    if (slot != EM__TIMER_NONE) {
        t->free_head = t->slab[slot].pos;
        return slot;
    }
    slot = t->slab_used++;
    t->slab[slot].generation = 0;
    return slot;
}

static void slot_free(em__timers *t, uint32_t slot)
{
    em__timer *timer = &t->slab[slot];

    timer->fn = NULL;
    timer->arg = NULL;
    timer->generation++;
    timer->pos = t->free_head;
    t->free_head = slot;
}

/* The pending timer named by id, or NULL. */
static em__timer *timer_lookup(em__timers *t, em_timer_id id)
{
    uint32_t low = (uint32_t)(id & UINT32_MAX);

    if (low == 0 || low > t->slab_used)
        return NULL;
    em__timer *timer = &t->slab[low - 1];
    if (timer->fn == NULL || timer->generation != (uint32_t)(id >> 32))
        return NULL;
    return timer;
}

/* ---- time arithmetic ------------------------------------------------- */

static uint64_t add_saturated(uint64_t a, uint64_t b)
{
    if (b > EM__TIMER_NEVER - a)
        return EM__TIMER_NEVER;
    return a + b;
}

/* seconds -> ns, rounded to the nearest ns. Returns 0 or -EINVAL for
 * negative, NaN or infinite seconds. Huge values saturate. */
static int seconds_to_ns(double seconds, uint64_t *ns)
{
    if (!(seconds >= 0.0 && seconds <= DBL_MAX))
        return -EINVAL;
    double scaled = seconds * 1e9 + 0.5;
    *ns = scaled >= (double)EM__TIMER_MAX_NS ? EM__TIMER_MAX_NS
                                             : (uint64_t)scaled;
    return 0;
}

/* The first tick of a periodic timer after `now`, on its schedule. */
static uint64_t next_tick(uint64_t deadline, uint64_t interval, uint64_t now)
{
    deadline = add_saturated(deadline, interval);
    if (deadline > now)
        return deadline;
    uint64_t missed = (now - deadline) / interval + 1;
    if (missed > (EM__TIMER_NEVER - deadline) / interval)
        return EM__TIMER_NEVER;
    return deadline + missed * interval;
}

/* ---- internal interface ---------------------------------------------- */

int em__timers_new(em__timers **out)
{
    if (out == NULL)
        return -EINVAL;
    em__timers *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    t->free_head = EM__TIMER_NONE;
    *out = t;
    return 0;
}

void em__timers_free(em__timers *t)
{
    if (t == NULL)
        return;
    free(t->slab);
    free(t->heap);
    free(t);
}

uint64_t em__timers_next(const em__timers *t)
{
    if (t == NULL || t->count == 0)
        return UINT64_MAX;
    return t->heap[0].deadline_ns;
}

/* Takes the due entry at the top off the heap (one-shot) or moves it to its
 * next tick (periodic). Returns the callback to run; *arg gets its arg. */
static em_callback pop_due(em__timers *t, uint64_t now, void **arg)
{
    em__timer_entry top = t->heap[0];
    em__timer *timer = &t->slab[top.slot];
    em_callback fn = timer->fn;

    *arg = timer->arg;
    if (timer->interval_ns == 0) {
        heap_pop(t);
        slot_free(t, top.slot);
        return fn;
    }
    uint32_t seq = take_seq(t); /* may renumber: the top stays at 0 */
    t->heap[0].deadline_ns =
        next_tick(top.deadline_ns, timer->interval_ns, now);
    t->heap[0].seq = seq;
    sift_down(t, 0);
    return fn;
}

void em__timers_run(em_loop *loop)
{
    em__timers *t = loop->timers;

    if (t == NULL)
        return;
    t->pass_seq = t->next_seq;
    while (t->count > 0) {
        const em__timer_entry *top = &t->heap[0];
        if (top->deadline_ns > loop->now_ns || top->seq >= t->pass_seq)
            break;
        void *arg;
        em_callback fn = pop_due(t, loop->now_ns, &arg);
        fn(loop, arg);
        em__conn_reap(loop);
    }
}

/* ---- public API ------------------------------------------------------ */

static int timer_add(em_loop *loop, uint64_t interval_ns, int periodic,
                     em_callback fn, void *arg, em_timer_id *out)
{
    em__timers *t = loop->timers;
    int err = reserve_one(t);

    if (err < 0)
        return err;
    uint32_t slot = slot_take(t);
    em__timer *timer = &t->slab[slot];
    timer->fn = fn;
    timer->arg = arg;
    timer->interval_ns = periodic ? interval_ns : 0;

    em__timer_entry entry = {
        .deadline_ns = add_saturated(loop->now_ns, interval_ns),
        .slot = slot,
        .seq = take_seq(t),
    };
    uint32_t pos = t->count++;
    heap_place(t, pos, entry);
    sift_up(t, pos);
    if (timer->pos == 0)
        em__loop_work_added(loop); /* a new earliest deadline */
    if (out != NULL)
        *out = ((em_timer_id)timer->generation << 32) | (slot + 1u);
    return 0;
}

int em_add_timer(em_loop *loop, double seconds, em_callback fn, void *arg,
                 em_timer_id *out)
{
    uint64_t interval_ns;

    if (loop == NULL || loop->timers == NULL || fn == NULL)
        return -EINVAL;
    if (seconds_to_ns(seconds, &interval_ns) < 0)
        return -EINVAL;
    return timer_add(loop, interval_ns, 0, fn, arg, out);
}

int em_add_periodic_timer(em_loop *loop, double seconds, em_callback fn,
                          void *arg, em_timer_id *out)
{
    uint64_t interval_ns;

    if (loop == NULL || loop->timers == NULL || fn == NULL)
        return -EINVAL;
    if (seconds_to_ns(seconds, &interval_ns) < 0 || seconds <= 0.0)
        return -EINVAL;
    if (interval_ns == 0)
        interval_ns = 1; /* below 1 ns: as often as the loop turns */
    return timer_add(loop, interval_ns, 1, fn, arg, out);
}

int em_cancel_timer(em_loop *loop, em_timer_id id)
{
    if (loop == NULL || loop->timers == NULL)
        return -EINVAL;
    em__timers *t = loop->timers;
    em__timer *timer = timer_lookup(t, id);
    if (timer == NULL)
        return -ENOENT;
    uint32_t slot = (uint32_t)(id & UINT32_MAX) - 1;
    heap_remove(t, timer->pos);
    slot_free(t, slot);
    return 0;
}

size_t em_timer_count(const em_loop *loop)
{
    if (loop == NULL || loop->timers == NULL)
        return 0;
    return loop->timers->count;
}
