/*
 * wait_hook.c - em_set_wait_hook: the loop's blocking wait, run by a
 * binding's own function.
 *
 * A language runtime with a global lock (Ruby's GVL, Python's GIL) must
 * drop the lock while the loop sleeps and take it back before any callback
 * runs. Ruby's only public way to do that is call-style:
 * rb_nogvl(fn, arg, ubf, ubf_arg, flags) calls fn without the lock and
 * ubf from elsewhere to interrupt it. A before/after hook pair
 * (em_set_poll_hooks) cannot express that, so the hook here is around-
 * style: the turn hands the binding a thunk that performs the wait, and the
 * binding calls it from inside its runtime's call (em_wakeup is the ubf).
 *
 * The thunk is forgiving on purpose. A runtime may skip fn when an
 * interrupt is already pending (rb_nogvl with RB_NOGVL_INTR_FAIL,
 * rb_thread_call_without_gvl2), so a hook that returns without calling it
 * makes the turn go on with no events; the poller is level-triggered, so
 * nothing is lost, it is seen next turn. A second call does nothing. The
 * thunk may run on another thread as long as the hook waits for it.
 *
 * Waits that cannot block (timeout 0: work is due) skip the hook: a busy
 * loop then pays no lock round trip per turn.
 *
 * Rejected: running em_run_once without the runtime's lock and taking it
 * back per callback (rb_thread_call_with_gvl). Other runtime threads would
 * then call into the loop while it dispatches, and every callback would pay
 * a lock round trip; and a second descriptor wait before a zero-timeout
 * poll (what Debian's EventMachine does) costs a syscall per turn.
 */
#include <errno.h>

#include "internal.h"

typedef struct wait_call {
    em_loop *loop;
    int timeout_ms;
    int called;
} wait_call;

static void wait_thunk(void *arg)
{
    wait_call *call = arg;
    if (call->called++)
        return;
    em__poller_wait(call->loop, call->timeout_ms);
}

void em__loop_wait(em_loop *loop, int timeout_ms)
{
    if (timeout_ms == 0 || !loop->wait_hook) {
        em__poller_wait(loop, timeout_ms);
        return;
    }
    wait_call call = {.loop = loop, .timeout_ms = timeout_ms};
    loop->ready_count = 0; /* the hook may skip the wait */
    loop->wait_hook(loop, loop->wait_hook_arg, wait_thunk, &call);
}

int em_set_wait_hook(em_loop *loop, em_wait_hook fn, void *arg)
{
    if (!loop)
        return -EINVAL;
    loop->wait_hook = fn;
    loop->wait_hook_arg = fn ? arg : NULL;
    return 0;
}
