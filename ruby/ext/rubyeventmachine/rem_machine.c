/*
 * rem_machine.c - the reactor side of the rubyeventmachine extension:
 * initialize_event_machine, run_machine, stop, release_machine, the wait
 * without the GVL, protected calls into Ruby, signal_loopbreak, one-shot
 * timers and the machine's settings.
 *
 * run_machine is a loop of em_run_once(loop, -1) turns that ends when
 * EM.stop set rem.stop_requested or a call into Ruby failed; it never
 * calls em_stop, which would unbind every connection at once. EventMachine
 * runs its shutdown hooks after run_machine returns and only then
 * release_machine, which is when the remaining connections get unbind:
 * em_loop_free does that (the two-step stop documented in em.h).
 *
 * The wait runs through em_set_wait_hook under rb_nogvl: other Ruby
 * threads run while the reactor sleeps, and Ruby's unblocking function is
 * em_wakeup, which is async-signal-safe (RB_NOGVL_UBF_ASYNC_SAFE: without
 * it Ruby would start a helper thread per wait to deliver interrupts).
 * RB_NOGVL_INTR_FAIL makes Ruby skip the wait when an interrupt is already
 * pending instead of raising from inside the hook (a longjmp through
 * libem); libem treats a skipped wait as an empty one. Interrupts (trap
 * handlers, Thread#raise, Ctrl-C) are then run between turns, protected,
 * with rb_thread_check_ints. Debian's engine instead waits on the epoll
 * descriptor with rb_wait_for_single_fd and then polls it again: two
 * syscalls per turn where this is one.
 *
 * Signatures of timers and servers come from rem_new_sig (1, 2, ...); a
 * libem connection id is at least 2^32, so the two never meet in Ruby's
 * tables.
 *
 * fork: a child forked inside the reactor (EM.fork_reactor, or fork in a
 * callback) calls release_machine, which frees the inherited loop with
 * em_loop_free: in a process other than the loop's, libem closes what the
 * loop owns and runs nothing (no unbind in the child, no close_notify or
 * unlink that would reach the parent's peers), even from inside one of its
 * callbacks. The frames of the parent's turn are then still on the child's
 * stack, and the loop they belong to is gone: when the Ruby callback the
 * child forked in returns (or raises), rem_call does not return into them
 * but throws (or re-raises) past them to that machine's run_machine, which
 * catches its machine's tag and returns; EM.run's ensure follows, as after
 * EM.stop. EM.fork_reactor's child never comes back (Kernel.fork with a
 * block exits), nor does one that exits or execs.
 */
#include <errno.h>
#include <inttypes.h>
#include <ruby/thread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rem.h"

rem_machine rem;
long rem_max_timers = 100000;  /* EventMachine's default */
static int accepts_per_wakeup; /* 0: libem's default */

/* The running machine's catch tag (made by initialize_event_machine), and
 * the tag of a machine released in a forked child while its turn was on
 * the stack: callbacks of that turn throw to it instead of returning into
 * freed frames. Both registered with the GC. */
static VALUE machine_tag = Qnil;
static VALUE released_tag = Qnil;

/* ---- protected calls ------------------------------------------------- */

static int is_exception(VALUE v)
{
    return !SPECIAL_CONST_P(v) && RB_TYPE_P(v, T_OBJECT) &&
           rb_obj_is_kind_of(v, rb_eException);
}

static VALUE call_error_handler(VALUE err)
{
    VALUE handler = rb_ivar_get(rem_mEM, rem_id_at_error_handler);
    return rb_funcall(handler, rem_id_call, 1, err);
}

/* Parks a failure: the turn loop ends and run_machine re-raises it. */
static void park(int state, VALUE err)
{
    rem.exc_state = state;
    rem.exc = err;
    if (is_exception(err))
        rb_set_errinfo(Qnil);
}

/* The callback's machine was released in this (forked) process while the
 * call ran: its libem frames below us belong to a freed loop. Leaves them
 * for its run_machine: the failure goes on up as it is, a normal return
 * becomes a throw of the machine's tag. Never returns. */
static void leave_released_machine(VALUE tag, int state)
{
    if (state)
        rb_jump_tag(state);
    rb_throw_obj(tag, Qnil);
}

int rem_call(VALUE (*fn)(VALUE), VALUE arg)
{
    if (rem.exc_state)
        return -1;
    VALUE tag = machine_tag;
    int state = 0;
    rem_write_enter();
    rb_protect(fn, arg, &state);
    if (tag == released_tag && !NIL_P(tag))
        leave_released_machine(tag, state);
    rem_write_leave(); /* not for a released machine: its connections are gone */
    if (!state)
        return 0;
    VALUE err = rb_errinfo();
    /* EventMachine wraps each event in rb_rescue when @error_handler is
     * set: StandardErrors go to it, anything else propagates. */
    if (is_exception(err) && rb_obj_is_kind_of(err, rb_eStandardError) &&
        rb_ivar_defined(rem_mEM, rem_id_at_error_handler)) {
        rb_set_errinfo(Qnil);
        rb_protect(call_error_handler, err, &state);
        if (tag == released_tag && !NIL_P(tag))
            leave_released_machine(tag, state);
        if (!state)
            return 0;
        err = rb_errinfo();
    }
    park(state, err);
    return -1;
}

void rem_raise_parked(void)
{
    if (!rem.exc_state)
        return;
    int state = rem.exc_state;
    VALUE err = rem.exc;
    rem.exc_state = 0;
    rem.exc = Qnil;
    if (is_exception(err))
        rb_exc_raise(err);
    rb_jump_tag(state); /* throw, break: ec->errinfo still holds it */
}

/* ---- the machine ----------------------------------------------------- */

em_loop *rem_loop(const char *what)
{
    if (!rem.loop)
        rb_raise(rb_eRuntimeError, "eventmachine not initialized: %s", what);
    return rem.loop;
}

uint64_t rem_new_sig(void)
{
    return ++rem.next_sig;
}

typedef struct nogvl_wait {
    em_wait_thunk wait;
    void *thunk_arg;
} nogvl_wait;

static void *run_wait(void *arg)
{
    nogvl_wait *w = arg;
    w->wait(w->thunk_arg);
    return NULL;
}

static void unblock(void *loop)
{
    em_wakeup(loop);
}

static void wait_without_gvl(em_loop *loop, void *arg, em_wait_thunk wait,
                             void *thunk_arg)
{
    (void)arg;
    nogvl_wait w = {wait, thunk_arg};
    rb_nogvl(run_wait, &w, unblock, loop,
             RB_NOGVL_INTR_FAIL | RB_NOGVL_UBF_ASYNC_SAFE);
}

static VALUE t_initialize_event_machine(VALUE self)
{
    (void)self;
    if (rem.loop)
        rb_raise(rb_eRuntimeError,
                 "eventmachine already initialized: evma_initialize_library");
    VALUE conns = rb_ivar_get(rem_mEM, rem_id_at_conns);
    VALUE timers = rb_ivar_get(rem_mEM, rem_id_at_timers);
    Check_Type(conns, T_HASH);
    Check_Type(timers, T_HASH);
    em_loop *loop;
    int err = em_loop_new(&loop);
    if (err < 0)
        rb_syserr_fail(-err, "em_loop_new");
    em_set_wait_hook(loop, wait_without_gvl, NULL);
    rem_write_reset();
    if (accepts_per_wakeup > 0)
        em_set_accepts_per_wakeup(loop, accepts_per_wakeup);
    rem.loop = loop;
    rem.pid = getpid();
    machine_tag = rb_obj_alloc(rb_cObject);
    atomic_store(&rem.stop_requested, 0);
    atomic_store(&rem.loopbreak_pending, 0);
    rem.running = rem.releasing = 0;
    rem.exc_state = 0;
    rem.exc = Qnil;
    rem.conns = conns;
    rem.timers = timers;
    rem.timer_count = 0;
    rem.heartbeat = 2.0;
    rem.server_count = 0;
    rem.close_scheduled = 0;
    return Qnil;
}

static VALUE check_ints(VALUE unused)
{
    (void)unused;
    rb_thread_check_ints();
    return Qnil;
}

/* One turn and the interrupts after it. Returns 0, or -1 when Ruby failed
 * (parked). */
static int one_turn(void)
{
    rem_write_turn_begin();
    int rc = em_run_once(rem.loop, -1);
    rem_write_turn_end(); /* the turn's send_data (rem_write.c) */
    if (rc < 0)
        rb_syserr_fail(-rc, "em_run_once"); /* re-entered: no libem frame */
    if (rem.exc_state)
        return -1;
    /* Trap handlers, Thread#raise, Ctrl-C: EventMachine lets these escape
     * run_machine without the error handler's help. */
    int state = 0;
    rb_protect(check_ints, Qnil, &state);
    if (state) {
        park(state, rb_errinfo());
        return -1;
    }
    return 0;
}

static VALUE run_turns(RB_BLOCK_CALL_FUNC_ARGLIST(tag, once))
{
    (void)tag;
    if (RTEST(once)) {
        one_turn();
        return Qnil;
    }
    /* At least one turn, as EventMachine: a stop before run_machine (from
     * the EM.run block's timer or a hook) ends it after that turn. */
    do {
        if (one_turn() < 0)
            break;
    } while (!atomic_load(&rem.stop_requested));
    return Qnil;
}

/* Runs fn(arg) under this machine's catch tag. Returns 1 when a forked
 * child released the machine from inside one of the callbacks fn ran: the
 * libem frames fn was in are gone, and rem belongs to the child's own
 * machines now. */
static int under_tag(rb_block_call_func_t fn, VALUE arg)
{
    VALUE tag = machine_tag;
    rb_catch_obj(tag, fn, arg);
    if (tag == released_tag && !NIL_P(tag)) {
        released_tag = Qnil;
        return 1;
    }
    return 0;
}

/* The turns. Returns 1 as under_tag. */
static int run_caught(VALUE once)
{
    rem.running = 1;
    if (under_tag(run_turns, once))
        return 1;
    rem.running = 0;
    rem_raise_parked();
    return 0;
}

static VALUE t_run_machine(VALUE self)
{
    (void)self;
    rem_loop("evma_run_machine");
    if (rem.running)
        rb_raise(rb_eRuntimeError, "eventmachine is already running");
    run_caught(Qfalse);
    return Qnil;
}

static VALUE t_run_machine_once(VALUE self)
{
    (void)self;
    rem_loop("evma_run_machine_once");
    if (rem.running)
        rb_raise(rb_eRuntimeError, "eventmachine is already running");
    if (run_caught(Qtrue))
        return Qfalse;
    return atomic_load(&rem.stop_requested) ? Qfalse : Qtrue;
}

static VALUE t_stop(VALUE self)
{
    (void)self;
    em_loop *loop = rem_loop("evma_stop_machine");
    atomic_store(&rem.stop_requested, 1);
    /* EM.stop from another thread ends a wait. Not in a forked child
     * (fork_reactor stops before releasing): the eventfd is the parent's
     * too, and it would wake the parent's reactor. */
    if (rem.pid == getpid())
        em_wakeup(loop);
    return Qnil;
}

static VALUE t_stopping(VALUE self)
{
    (void)self;
    rem_loop("evma_stopping");
    return atomic_load(&rem.stop_requested) ? Qtrue : Qfalse;
}

static VALUE free_loop(RB_BLOCK_CALL_FUNC_ARGLIST(tag, result))
{
    (void)tag;
    *(int *)result = em_loop_free(rem.loop);
    return Qnil;
}

static VALUE t_release_machine(VALUE self)
{
    (void)self;
    if (!rem.loop)
        return Qnil; /* initialize_event_machine failed: nothing to free */
    if (rem.pid != getpid()) {
        /* A child forked inside the parent's reactor (fork_reactor): libem
         * releases its copy as inherited, closing the descriptors and
         * running no unbind, also from inside one of its callbacks (see
         * the top of this file for how the child leaves that turn). A
         * failure parked in the parent's turn is the parent's. */
        rem_conn_release();
        em_loop_free(rem.loop); /* 0: a loop of another process */
        if (rem.running || rem.releasing)
            released_tag = machine_tag;
        machine_tag = Qnil;
        rem.loop = NULL;
        rem.running = 0;
        rem.exc_state = 0;
        rem.exc = rem.conns = rem.timers = Qnil;
        return Qnil;
    }
    if (rem.running)
        rb_raise(rb_eRuntimeError,
                 "release_machine: eventmachine is still running");
    rem.releasing = 1;
    rem_conn_release();
    /* Unbinds every connection, oldest first, through rem_call. -EBUSY
     * (live connections) is the expected result here. */
    int err = 0;
    if (under_tag(free_loop, (VALUE)&err))
        return Qnil; /* a child forked in an unbind released it */
    if (err == -EDEADLK) {
        /* Called from inside one of the loop's own callbacks (an unbind
         * this very em_loop_free runs). The loop cannot be freed from
         * here: it is abandoned, and a new machine can start. */
        rb_warn("release_machine: the reactor could not be freed here "
                "(inside one of its callbacks); its descriptors stay open");
    }
    machine_tag = Qnil;
    rem.loop = NULL;
    rem.releasing = 0;
    rem.conns = rem.timers = Qnil;
    rem_raise_parked();
    return Qnil;
}

static VALUE t_library_type(VALUE self)
{
    (void)self;
    return ID2SYM(rb_intern("extension"));
}

/* ---- loopbreak ------------------------------------------------------- */

static VALUE run_deferred(VALUE unused)
{
    (void)unused;
    return rb_funcall(rem_mEM, rem_id_run_deferred_callbacks, 0);
}

static void on_loopbreak(em_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
    /* Cleared first: a next_tick made by the callbacks signals again. */
    atomic_store(&rem.loopbreak_pending, 0);
    rem_call(run_deferred, Qnil);
}

static VALUE t_signal_loopbreak(VALUE self)
{
    (void)self;
    em_loop *loop = rem_loop("evma_signal_loopbreak");
    /* Any Ruby thread. Many signals before the loop runs make one call,
     * as EventMachine's loopbreak pipe does. */
    if (!atomic_exchange(&rem.loopbreak_pending, 1) &&
        em_schedule(loop, on_loopbreak, NULL) < 0) {
        atomic_store(&rem.loopbreak_pending, 0);
        rb_memerror();
    }
    return Qnil;
}

/* ---- timers ---------------------------------------------------------- */

static VALUE fire_timer(VALUE id)
{
    VALUE timer = rb_hash_delete(rem.timers, id);
    if (NIL_P(timer))
        rb_raise(rem_eUnknownTimerFired, "no such timer: %" PRIu64,
                 (uint64_t)NUM2ULL(id));
    if (timer == Qfalse)
        return Qnil; /* EM.cancel_timer stored false */
    return rb_funcall(timer, rem_id_call, 0);
}

static VALUE fire_timer_sig(VALUE arg)
{
    return fire_timer(ULL2NUM(*(uint64_t *)arg));
}

static void on_timer(em_loop *loop, void *arg)
{
    (void)loop;
    uint64_t id = (uint64_t)(uintptr_t)arg;
    rem_call(fire_timer_sig, (VALUE)&id);
    /* Counted until its callback has run, as EventMachine does. */
    rem.timer_count--;
}

static VALUE t_add_oneshot_timer(VALUE self, VALUE interval)
{
    (void)self;
    em_loop *loop = rem_loop("evma_install_oneshot_timer");
    long ms = NUM2LONG(interval);
    /* EventMachine refuses once it holds more than the maximum. */
    if (rem.timer_count > rem_max_timers)
        rb_raise(rb_eRuntimeError,
                 "ran out of timers; use #set_max_timers to increase limit");
    uint64_t id = rem_new_sig();
    int err = em_add_timer(loop, ms > 0 ? (double)ms / 1000.0 : 0.0, on_timer,
                           (void *)(uintptr_t)id, NULL);
    if (err < 0)
        rb_syserr_fail(-err, "add_oneshot_timer");
    rem.timer_count++;
    return ULL2NUM(id);
}

static VALUE t_get_timer_count(VALUE self)
{
    (void)self;
    rem_loop("evma_get_timer_count");
    return LONG2NUM(rem.timer_count);
}

static VALUE t_get_max_timer_count(VALUE self)
{
    (void)self;
    return LONG2NUM(rem_max_timers);
}

static VALUE t_set_max_timer_count(VALUE self, VALUE count)
{
    (void)self;
    if (rem.loop)
        rb_raise(rb_eRuntimeError,
                 "eventmachine already initialized: evma_set_max_timer_count");
    long n = NUM2LONG(count);
    /* EventMachine never goes below its old 100-timer floor. */
    rem_max_timers = n < 100 ? 100 : n;
    return Qnil;
}

static VALUE t_set_timer_quantum(VALUE self, VALUE ms)
{
    (void)self;
    em_loop *loop = rem_loop("evma_set_timer_quantum");
    int q = NUM2INT(ms);
    if (q < 5 || q > 5 * 60 * 1000) /* EventMachine aborts the process */
        rb_raise(rb_eRuntimeError, "invalid timer-quantum");
    em_set_max_wait_ms(loop, q);
    return Qnil;
}

/* ---- settings and introspection -------------------------------------- */

static VALUE t_current_time(VALUE self)
{
    (void)self;
    /* The loop's monotonic clock, as Debian's engine (1970 + uptime), not
     * the wall clock. */
    double now = em_now(rem_loop("evma_get_current_loop_time"));
    time_t sec = (time_t)now;
    long ns = (long)((now - (double)sec) * 1e9);
    if (ns > 999999999)
        ns = 999999999;
    return rb_time_nano_new(sec, ns);
}

static VALUE t_get_heartbeat_interval(VALUE self)
{
    (void)self;
    rem_loop("evma_get_heartbeat_interval");
    return DBL2NUM(rem.heartbeat);
}

static VALUE t_set_heartbeat_interval(VALUE self, VALUE seconds)
{
    (void)self;
    rem_loop("evma_set_heartbeat_interval");
    double s = NUM2DBL(seconds);
    if (!(s > 0))
        return Qfalse;
    rem.heartbeat = s;
    return Qtrue;
}

static VALUE t_get_connection_count(VALUE self)
{
    (void)self;
    em_loop *loop = rem_loop("evma_get_connection_count");
    /* EventMachine counts its listeners as descriptors too. */
    return SIZET2NUM(em_connection_count(loop) + (size_t)rem.server_count);
}

static VALUE t_num_close_scheduled(VALUE self)
{
    (void)self;
    rem_loop("evma_num_close_scheduled");
    return LONG2NUM(rem.close_scheduled);
}

static VALUE t_get_simultaneous_accept_count(VALUE self)
{
    (void)self;
    if (rem.loop)
        return INT2NUM(em_get_accepts_per_wakeup(rem.loop));
    if (accepts_per_wakeup > 0)
        return INT2NUM(accepts_per_wakeup);
    em_loop *probe; /* libem's default, without a machine */
    if (em_loop_new(&probe) < 0)
        return INT2NUM(64);
    int n = em_get_accepts_per_wakeup(probe);
    em_loop_free(probe);
    return INT2NUM(n);
}

static VALUE t_set_simultaneous_accept_count(VALUE self, VALUE count)
{
    (void)self;
    int n = NUM2INT(count);
    if (n < 1)
        n = 1;
    accepts_per_wakeup = n;
    if (rem.loop)
        em_set_accepts_per_wakeup(rem.loop, n);
    return INT2NUM(n);
}

static VALUE t_true(VALUE self)
{
    (void)self;
    return Qtrue;
}

static VALUE t_false(VALUE self)
{
    (void)self;
    return Qfalse;
}

static VALUE t_true1(VALUE self, VALUE arg)
{
    (void)self;
    (void)arg;
    return Qtrue;
}

static VALUE t_kqueue_set(VALUE self, VALUE on)
{
    (void)self;
    (void)on;
    rb_raise(rem_eUnsupported, "kqueue is not supported on this platform");
    return Qnil;
}

void rem_define_machine(void)
{
    rem.exc = rem.conns = rem.timers = Qnil;
    rb_gc_register_address(&rem.exc);
    rb_gc_register_address(&rem.conns);
    rb_gc_register_address(&rem.timers);
    rb_gc_register_address(&machine_tag);
    rb_gc_register_address(&released_tag);

    VALUE m = rem_mEM;
    rb_define_module_function(m, "initialize_event_machine",
                              t_initialize_event_machine, 0);
    rb_define_module_function(m, "run_machine", t_run_machine, 0);
    rb_define_module_function(m, "run_machine_without_threads", t_run_machine,
                              0);
    rb_define_module_function(m, "run_machine_once", t_run_machine_once, 0);
    rb_define_module_function(m, "release_machine", t_release_machine, 0);
    rb_define_module_function(m, "stop", t_stop, 0);
    rb_define_module_function(m, "stopping?", t_stopping, 0);
    rb_define_module_function(m, "signal_loopbreak", t_signal_loopbreak, 0);
    rb_define_module_function(m, "library_type", t_library_type, 0);
    rb_define_module_function(m, "add_oneshot_timer", t_add_oneshot_timer, 1);
    rb_define_module_function(m, "get_timer_count", t_get_timer_count, 0);
    rb_define_module_function(m, "get_max_timer_count", t_get_max_timer_count,
                              0);
    rb_define_module_function(m, "set_max_timer_count", t_set_max_timer_count,
                              1);
    rb_define_module_function(m, "set_timer_quantum", t_set_timer_quantum, 1);
    rb_define_module_function(m, "current_time", t_current_time, 0);
    rb_define_module_function(m, "get_heartbeat_interval",
                              t_get_heartbeat_interval, 0);
    rb_define_module_function(m, "set_heartbeat_interval",
                              t_set_heartbeat_interval, 1);
    rb_define_module_function(m, "get_connection_count", t_get_connection_count,
                              0);
    rb_define_module_function(m, "num_close_scheduled", t_num_close_scheduled,
                              0);
    rb_define_module_function(m, "get_simultaneous_accept_count",
                              t_get_simultaneous_accept_count, 0);
    rb_define_module_function(m, "set_simultaneous_accept_count",
                              t_set_simultaneous_accept_count, 1);
    rb_define_module_function(m, "epoll", t_true, 0);
    rb_define_module_function(m, "epoll=", t_true1, 1);
    rb_define_module_function(m, "epoll?", t_true, 0);
    rb_define_module_function(m, "kqueue", t_false, 0);
    rb_define_module_function(m, "kqueue=", t_kqueue_set, 1);
    rb_define_module_function(m, "kqueue?", t_false, 0);
}
