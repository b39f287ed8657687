/*
 * fastpath C runtime: arming and disarming a slot around one call or one coroutine step.
 */
#ifndef FASTPATH_ARM_H
#define FASTPATH_ARM_H

#include "_fp_common.h"
#include "_fp_slot.h"
#include "_fp_watchdog.h"
#include "_fp_memhook.h"

/* Arm the calling thread's slot for one enforce() call.  interrupt_at is the
 * time to interrupt the call at (INT64_MAX: never); cpu_limit_ns < 0 means no
 * CPU watch.  Nested calls keep the earliest interrupt time, and every
 * enclosing CPU watch (up to FP_CPU_NEST) stays in force.  For a CPU-limited
 * call, the thread's CPU clock at the start is bracketed by the watchdog's
 * latest reading when that is at most cpu_max_age old, and read (a syscall)
 * otherwise. */
static inline uint64_t fp_arm(fp_slot *s, fp_saved *sv, PyObject *budget, int64_t interrupt_at,
                              int interrupt_kind, int64_t cpu_limit_ns, int cpu_interrupt,
                              int64_t fn_start, int64_t cpu_max_age)
{
    uint64_t gen = ++s->next_gen;
    sv->current = s->current;
    s->current = budget;
    sv->armed_gen = s->armed_gen;
    sv->interrupt_at_ns = s->interrupt_at_ns;
    sv->interrupt_kind = s->interrupt_kind;
    sv->depth = ++s->depth;
    sv->cpu_idx = -1;
    if (FP_UNLIKELY(s->unordered)) {
        interrupt_at = FP_INT64_MAX;    /* calls interleave here (greenlets): measure only */
        cpu_interrupt = 0;
    }
    if (cpu_limit_ns >= 0) {
        int64_t bc, bw;
        s->cpu_recent_ns = fn_start;
        if (cpu_max_age > 0 && fp_base_read(s, &bc, &bw) && bw <= fn_start
            && fn_start - bw <= cpu_max_age) {
            sv->cpu_lo = bc;
            sv->cpu_hi = bc + (fn_start - bw);
        } else {
            sv->cpu_lo = sv->cpu_hi = fp_thread_cpu_ns();
        }
    }
    fp_seq_begin(s);
    if (s->armed_gen == 0 || interrupt_at < s->interrupt_at_ns) {
        /* this call's interrupt comes first: it owns the slot's deadline */
        s->interrupt_at_ns = interrupt_at;
        s->interrupt_kind = interrupt_kind;
        s->armed_gen = gen;
    }
    if (cpu_limit_ns >= 0 && s->n_cpu < FP_CPU_NEST) {
        fp_cpu_watch *w = &s->cpu[s->n_cpu];
        w->gen = gen;
        w->limit_ns = cpu_limit_ns;
        w->interrupt = cpu_interrupt;
        w->start_lo = sv->cpu_lo;
        w->start_hi = sv->cpu_hi;
        w->fn_start = fn_start;
        sv->cpu_idx = s->n_cpu;
        s->n_cpu++;
    }
    fp_seq_end(s);
    if (FP_UNLIKELY(__atomic_load_n(&fp_wd_parked, __ATOMIC_RELAXED)))
        fp_wd_wake();
    return gen;
}

/* Calls returned out of order on this thread (greenlets switch stacks inside
 * one OS thread): forget everything armed so far, and from now on measure
 * calls here without interrupting them -- an interrupt could otherwise land
 * in whichever greenlet runs. */
static void fp_slot_reset(fp_slot *s)
{
    fp_seq_begin(s);
    s->armed_gen = 0;
    s->interrupt_at_ns = FP_INT64_MAX;
    s->n_cpu = 0;
    fp_seq_end(s);
    s->depth = 0;
    s->current = NULL;
    s->step_current = NULL;
    s->reset_gen = s->next_gen;
    s->unordered = 1;
    fp_mem_abandon(&s->mem);
}

/* Did the call armed with (sv, gen) return in order?  (0: a reset forgot it.) */
static inline int fp_in_order(fp_slot *s, const fp_saved *sv, uint64_t gen)
{
    if (FP_LIKELY(s->depth == sv->depth && gen > s->reset_gen))
        return 1;
    if (gen > s->reset_gen)
        fp_slot_reset(s);
    return 0;
}

/* Disarm: restore what the enclosing call (if any) had armed.  Returns 1 when
 * the watchdog sent an interrupt for this generation; the caller then clears
 * a possibly still pending asynchronous exception (GIL path). */
static inline int fp_disarm(fp_slot *s, const fp_saved *sv, uint64_t gen)
{
    int fired;
#if FP_FREE_THREADED
    fp_mutex_lock(&s->fire_lock);       /* (see fp_slot.fire_lock) */
    fired = (__atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) == gen);
    if (!fp_in_order(s, sv, gen)) {
        fp_mutex_unlock(&s->fire_lock);
        return fired;
    }
#else
    fired = (__atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) == gen);
    if (!fp_in_order(s, sv, gen))
        return fired;
#endif
    fp_seq_begin(s);
    s->armed_gen = sv->armed_gen;
    s->interrupt_at_ns = sv->interrupt_at_ns;
    s->interrupt_kind = sv->interrupt_kind;
    if (sv->cpu_idx >= 0) {
        s->cpu[sv->cpu_idx].gen = 0;
        s->n_cpu = sv->cpu_idx;
    }
    fp_seq_end(s);
    s->depth--;
    s->current = sv->current;
    fp_mutex_unlock(&s->fire_lock);
    return fired;
}

/* End the memory session of a call (or `with` block, or coroutine step). */
static inline void fp_mem_end_scope(fp_slot *s, fp_saved *sv, uint64_t gen, int mem_on,
                                    fp_mem_session *mem_out)
{
    if (!mem_on)
        return;
    if (FP_LIKELY(s->depth == sv->depth && gen > s->reset_gen))
        fp_mem_disarm(&s->mem, &sv->mem, mem_out);
    else
        fp_mem_abandon_into(&s->mem, mem_out);
}

/* Code that bounds the call itself (fastpath.regex) stops it as its deadline
 * would: the interrupt it raises is this call's own. */
static inline void fp_mark_fired(fp_slot *s, uint64_t gen)
{
    __atomic_store_n(&s->fire_gen, gen, __ATOMIC_RELEASE);
}

/* The call itself: fn(*args, **kwargs), with the memory session (if any)
 * ended in C the moment fn returns, before any of the caller's own work
 * (building a traceback entry, a violation, stats) can be counted or refused. */
static inline PyObject *fp_run_call(fp_slot *s, fp_saved *sv, uint64_t gen, int mem_on,
                                    fp_mem_session *mem_out, PyObject *fn, PyObject **args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, kwnames);
    fp_mem_end_scope(s, sv, gen, mem_on, mem_out);
    return r;
}

/* One step of a coroutine run by enforce_async(): send `arg` into it, or throw
 * `exc` (when not NULL), with the memory session ended the moment it comes
 * back, as for fp_run_call.  Returns PYGEN_RETURN / PYGEN_NEXT with *result,
 * or PYGEN_ERROR with an exception set. */
static inline PySendResult fp_run_step(fp_slot *s, fp_saved *sv, uint64_t gen, int mem_on,
                                       fp_mem_session *mem_out, PyObject *it, PyObject *arg,
                                       PyObject *exc, PyObject **result)
{
    PySendResult r;
    if (exc == NULL) {
        r = PyIter_Send(it, arg, result);
    } else {
        *result = PyObject_CallMethod(it, "throw", "O", exc);
        if (*result != NULL) {
            r = PYGEN_NEXT;
        } else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            /* the coroutine handled the exception and returned */
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            PyErr_NormalizeException(&t, &v, &tb);
            *result = v != NULL ? PyObject_GetAttrString(v, "value") : (Py_INCREF(Py_None), Py_None);
            Py_XDECREF(t);
            Py_XDECREF(v);
            Py_XDECREF(tb);
            r = *result != NULL ? PYGEN_RETURN : PYGEN_ERROR;
        } else {
            r = PYGEN_ERROR;
        }
    }
    fp_mem_end_scope(s, sv, gen, mem_on, mem_out);
    return r;
}

/* The lowest the thread's CPU clock can have been when call `gen` started:
 * its arm-time bracket, tightened by the watchdog's sample of the call (the
 * clock advances no faster than the wall clock). */
static inline int64_t fp_cpu_start_lo(const fp_slot *s, int cpu_idx, uint64_t gen, int64_t lo)
{
    const fp_cpu_watch *w;
    int64_t c, wall, l;
    if (cpu_idx < 0)
        return lo;
    w = &s->cpu[cpu_idx];
    if (__atomic_load_n(&w->sample_gen, __ATOMIC_ACQUIRE) != gen)
        return lo;
    c = w->sample_cpu;
    wall = w->sample_wall;
    if (__atomic_load_n(&w->sample_gen, __ATOMIC_ACQUIRE) != gen)
        return lo;
    l = c - (wall - w->fn_start);
    return l > lo ? l : lo;
}

#endif /* FASTPATH_ARM_H */
