/*
 * fastpath C runtime: the watchdog thread: it scans the armed slots, samples CPU clocks and
 * delivers interrupts (signal to the main thread, or under the GIL).
 */
#ifndef FASTPATH_WATCHDOG_H
#define FASTPATH_WATCHDOG_H

#include "_fp_common.h"
#include "_fp_clock.h"
#include "_fp_slot.h"
#include "_fp_signal.h"
#include "_fp_switch.h"
#include "_fp_critical.h"

#define FP_WD_TICK_NS 250000LL            /* look for newly armed calls every 0.25 ms */
#define FP_WD_IDLE_TICKS 400              /* park after ~100 ms without any arm */
#define FP_WD_REFIRE_NS 2000000LL         /* re-send an interrupt that was swallowed */
#define FP_WD_SIGNAL_LAND_NS 1000000LL    /* a signal not handled by then: use the GIL path */
#define FP_WD_BASE_KEEP_NS 100000000LL    /* keep CPU readings of threads that ran CPU-limited
                                           * calls in the last 100 ms */
#define FP_WD_MAX_BATCH 64

static pthread_mutex_t fp_wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fp_wd_cond;
static int fp_wd_cond_ready = 0;
static int fp_wd_running = 0;   /* the thread exists */
static int fp_wd_stop = 0;      /* asked to exit */
static int fp_wd_parked = 0;    /* sleeping until an arm wakes it */
static int fp_wd_membarrier = 0;
static int fp_wd_final = 0;     /* shut down at interpreter exit: never restart */
static pthread_t fp_wd_thread;
static PyThreadState *fp_wd_tstate = NULL;
static PyGILState_STATE fp_wd_gilstate;      /* what the watchdog's PyGILState_Ensure() returned */
static PyObject *fp_interrupt_type = NULL;   /* ExecutionInterrupted (strong ref) */

static int fp_preempt_enabled = 1;
static uint64_t fp_wd_ticks = 0;
static uint64_t fp_wd_fires = 0;
static uint64_t fp_wd_deferrals = 0;

typedef struct {
    fp_slot *slot;
    uint64_t gen;
    int kind;
    int64_t due_ns;
} fp_fire;

static int fp_membarrier(int cmd)
{
#if defined(__linux__) && defined(SYS_membarrier)
    return (int)syscall(SYS_membarrier, cmd, 0, 0);
#else
    (void)cmd;
    errno = ENOSYS;
    return -1;
#endif
}

/* GIL held: is generation g still armed on the slot?  Then the owner, which
 * cannot run while we hold the GIL, is inside that very call. */
static inline int fp_fire_valid(const fp_slot *s, uint64_t g)
{
    int k;
    if (!s->in_use || s->unordered)
        return 0;
    if (s->armed_gen == g)
        return 1;
    for (k = 0; k < s->n_cpu; k++) {
        if (s->cpu[k].gen == g)
            return 1;
    }
    return 0;
}

/* Deliver to threads that need the GIL (every thread but a main thread the
 * signal reaches).  Called by the watchdog without the GIL and without any
 * lock.  An interrupt due while its thread is inside an uninterruptible()
 * block or a critical stdlib frame is put off to the next tick. */
static void fp_wd_deliver_gil(fp_fire *fires, int n)
{
    int i;
    if (n == 0 || fp_interrupt_type == NULL)
        return;
    if (FP_IS_FINALIZING() || fp_wd_stop)
        return;
    if (fp_fast_gil)
        fp_fast_gil_lower();
    if (fp_wd_tstate == NULL) {
        /* First time: our own thread state, bound to this thread's PyGILState
         * slot; the watchdog deletes it on its own thread when it exits. */
        fp_wd_gilstate = PyGILState_Ensure();
    } else {
        PyEval_RestoreThread(fp_wd_tstate);
    }
    if (fp_fast_gil)
        fp_fast_gil_restore();
    for (i = 0; i < n; i++) {
        fp_slot *s = fires[i].slot;
        uint64_t g = fires[i].gen;
        if (!fp_fire_valid(s, g))
            continue;
        if (s->is_main && s->delivered && s->fire_gen == g)
            continue;           /* the signal handler got there first */
        if (s->is_main && s->sig_sent_ns && fp_sig_route == FP_ROUTE_OURS
            && !fp_sig_py_handler_is_ours())
            __atomic_store_n(&fp_sig_route, FP_ROUTE_LOST, __ATOMIC_RELEASE);
        if (s->defer_depth > 0 || fp_thread_in_critical(s->py_ident)) {
            s->wd_refire_at_ns = fp_now_ns() + FP_WD_TICK_NS;
            fp_wd_deferrals++;
            continue;
        }
        /* The checks above call into the interpreter (a frame object, a
         * garbage collection, signal.getsignal), which can let the owner run
         * and finish its call: validate again, with nothing in between and
         * the injection (and, with no GIL, the owner's disarm held off). */
        fp_mutex_lock(&s->fire_lock);
        if (!fp_fire_valid(s, g) || s->defer_depth > 0) {
            /* (an uninterruptible() block began meanwhile: next tick) */
            fp_mutex_unlock(&s->fire_lock);
            if (s->defer_depth > 0)
                s->wd_refire_at_ns = fp_now_ns() + FP_WD_TICK_NS;
            continue;
        }
        s->fire_kind = fires[i].kind;
        s->fire_ns = fires[i].due_ns;
        if (!(s->is_main && fp_sig_route == FP_ROUTE_OURS)) {
            s->sig_sent_ns = 0;
            s->delivered = 1;
        }   /* else the signal handler may still raise it first (e.g. in a sleep) */
        __atomic_store_n(&s->fire_gen, g, __ATOMIC_RELEASE);
        PyThreadState_SetAsyncExc(s->py_ident, fp_interrupt_type);
        fp_mutex_unlock(&s->fire_lock);
        fp_wd_fires++;
    }
    fp_wd_tstate = PyEval_SaveThread();
}

static int fp_wd_any_seq_changed(void)
{
    fp_slot *s;
    int changed = 0;
    for (s = fp_registry; s; s = s->next) {
        uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (s->in_use && (seq != s->wd_seen_seq || s->armed_gen || s->n_cpu))
            changed = 1;
        s->wd_seen_seq = seq;
    }
    return changed;
}

/* A consistent copy of what the owner armed (0: caught mid-write). */
typedef struct {
    uint64_t armed_gen;
    int64_t interrupt_at;
    int interrupt_kind;
    int n_cpu;
    fp_cpu_watch cpu[FP_CPU_NEST];
} fp_armed_view;

static int fp_wd_read_slot(fp_slot *s, fp_armed_view *v, int *active)
{
    uint64_t seq1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE), seq2;
    int k;
    if (seq1 != s->wd_seen_seq) {
        *active = 1;
        s->wd_seen_seq = seq1;
    }
    if (seq1 & 1) {             /* owner mid-write: look again next tick */
        *active = 1;
        return 0;
    }
    v->armed_gen = s->armed_gen;
    v->interrupt_at = s->interrupt_at_ns;
    v->interrupt_kind = s->interrupt_kind;
    v->n_cpu = s->n_cpu;
    if (v->n_cpu < 0 || v->n_cpu > FP_CPU_NEST)
        v->n_cpu = 0;
    for (k = 0; k < v->n_cpu; k++)
        v->cpu[k] = s->cpu[k];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    seq2 = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    if (seq1 != seq2) {
        *active = 1;
        return 0;
    }
    return 1;
}

#define FP_WD_CPU_READ_MAX_NS 50000LL      /* a CPU reading that took longer is dropped */

/* The owner's CPU clock, and (in *when) a time no earlier than the reading and
 * at most 50 us after it -- or -1 when the watchdog was held up in between
 * (descheduled): the pair would then understate how old the reading is. */
static inline int64_t fp_wd_read_cpu(fp_slot *s, int64_t *when)
{
    int64_t w0 = fp_now_ns(), c = fp_clock_ns(s->cpu_clock), w1 = fp_now_ns();
    if (c < 0 || w1 - w0 > FP_WD_CPU_READ_MAX_NS)
        return -1;
    *when = w1;
    return c;
}

/* CPU watches of one slot: sample each new call once, then re-read until
 * an allowance is crossed.  CPU time cannot grow faster than wall time, so the
 * next look is due no earlier than (allowance - used) from now.  Returns the
 * index of a watch to interrupt, or -1; *due gets when it crossed. */
static int fp_wd_check_cpu(fp_slot *s, const fp_armed_view *v, int64_t now, int64_t *next_wake,
                           int64_t *due)
{
    int k, fire = -1;
    int64_t c = -1;
    if (!s->has_cpu_clock)
        return -1;
    for (k = 0; k < v->n_cpu; k++) {
        const fp_cpu_watch *w = &v->cpu[k];
        int64_t start_hi, used;
        if (w->gen == 0)
            continue;
        if (c < 0) {
            c = fp_wd_read_cpu(s, &now);
            if (c < 0)
                return -1;
            fp_base_write(s, c, now);
        }
        start_hi = w->start_hi;
        if (__atomic_load_n(&s->cpu[k].sample_gen, __ATOMIC_ACQUIRE) != w->gen) {
            s->cpu[k].sample_cpu = c;
            s->cpu[k].sample_wall = now;
            __atomic_store_n(&s->cpu[k].sample_gen, w->gen, __ATOMIC_RELEASE);
        } else if (s->cpu[k].sample_cpu < start_hi) {
            start_hi = s->cpu[k].sample_cpu;
        }
        if (c < start_hi)
            start_hi = c;
        used = c - start_hi;       /* a lower bound of what the call used */
        if (used >= w->limit_ns) {
            if (w->interrupt && fire < 0) {
                fire = k;
                *due = now - (used - w->limit_ns);
            }
        } else if (now + (w->limit_ns - used) < *next_wake) {
            *next_wake = now + (w->limit_ns - used);
        }
    }
    if (c < 0 && s->cpu_recent_ns && now - s->cpu_recent_ns < FP_WD_BASE_KEEP_NS) {
        /* Between calls: keep a fresh reading, so that the next call needs none. */
        c = fp_wd_read_cpu(s, &now);
        if (c >= 0)
            fp_base_write(s, c, now);
    }
    return fire;
}

/* Send the main thread the preemption signal for (gen, kind), or say that it
 * must go through the GIL path (returns 0). */
static int fp_wd_signal_main(fp_slot *s, uint64_t gen, int kind, int64_t due, int64_t now)
{
    if (!s->is_main || __atomic_load_n(&fp_sig_route, __ATOMIC_ACQUIRE) != FP_ROUTE_OURS)
        return 0;
    if (__atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) == gen && s->sig_sent_ns) {
        /* Already signalled for this call. */
        if (!s->delivered && !s->deferred) {
            if (now - s->sig_sent_ns < (s->wd_gil_fallback ? FP_WD_REFIRE_NS
                                                          : FP_WD_SIGNAL_LAND_NS))
                return 1;       /* give the handler time to run */
            /* Not handled within 1 ms: the main thread is inside a C call, the
             * signal came just before a blocking call started (no EINTR), or it
             * no longer reaches fastpath's handler.  Go through the GIL path
             * once (which also checks the handler), then send the signal again
             * every 2 ms while the route is still fastpath's. */
            if (!s->wd_gil_fallback) {
                s->wd_gil_fallback = 1;
                return 0;
            }
        }
        /* else delivered and swallowed, or put off: send it again */
    }
    if (!fp_sig_is_ours()) {
        /* SIG_IGN, SIG_DFL (which would kill the process) or another C
         * handler: never send it again. */
        __atomic_store_n(&fp_sig_route, FP_ROUTE_LOST, __ATOMIC_RELEASE);
        return 0;
    }
    if (__atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) != gen) {
        s->delivered = 0;
        s->wd_gil_fallback = 0;
    }
    s->deferred = 0;
    s->fire_kind = kind;
    s->fire_ns = due;
    s->sig_sent_ns = now;
    __atomic_store_n(&s->fire_gen, gen, __ATOMIC_RELEASE);
    pthread_kill(s->thread, fp_preempt_signal);
    fp_wd_fires++;
    return 1;
}

/* One slot, one tick: what is due, sent by signal or queued for the GIL. */
static void fp_wd_scan_slot(fp_slot *s, int64_t now, int64_t *next_wake, fp_fire *gil_fires,
                            int *n_gil, int *active)
{
    fp_armed_view v;
    uint64_t fire_gen = 0;
    int fire_kind = 0, k;
    int64_t due = 0;
    if (!fp_wd_read_slot(s, &v, active))
        return;
    if (v.armed_gen == 0 && v.n_cpu == 0) {
        if (s->has_cpu_clock)
            fp_wd_check_cpu(s, &v, now, next_wake, &due);   /* keeps the reading fresh */
        return;
    }
    *active = 1;
    k = fp_wd_check_cpu(s, &v, now, next_wake, &due);
    if (k >= 0) {
        fire_gen = v.cpu[k].gen;
        fire_kind = FP_CPU;
    }
    if (!fire_gen && v.armed_gen) {
        if (v.interrupt_at <= now) {
            fire_gen = v.armed_gen;
            fire_kind = v.interrupt_kind;
            due = v.interrupt_at;
        } else if (v.interrupt_at < *next_wake) {
            *next_wake = v.interrupt_at;
        }
    }
    if (!fire_gen || !fp_preempt_enabled || s->unordered)
        return;
    if (now < s->wd_refire_at_ns && __atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) == fire_gen
        && !(s->is_main && s->sig_sent_ns && !s->delivered))
        return;                 /* already sent; wait before re-sending */
    if (s->is_main && s->deferred && now < s->wd_refire_at_ns)
        return;
    if (s->is_main && __atomic_load_n(&s->defer_depth, __ATOMIC_RELAXED) > 0) {
        /* Inside uninterruptible(): the handler would only put the signal
         * off, and each signal interrupts what runs there (a WASM guest, say,
         * every tick).  Look again next tick. */
        s->deferred = 1;
        s->wd_refire_at_ns = now + FP_WD_TICK_NS;
        fp_wd_deferrals++;
        return;
    }
    s->wd_refire_at_ns = now + (s->deferred ? FP_WD_TICK_NS : FP_WD_REFIRE_NS);
    if (fp_wd_signal_main(s, fire_gen, fire_kind, due, now))
        return;
    if (*n_gil < FP_WD_MAX_BATCH) {
        gil_fires[*n_gil].slot = s;
        gil_fires[*n_gil].gen = fire_gen;
        gil_fires[*n_gil].kind = fire_kind;
        gil_fires[*n_gil].due_ns = due;
        (*n_gil)++;
    }
}

/* Sleep until the monotonic time `when` (ns). */
static void fp_wd_sleep_until(int64_t when)
{
    struct timespec ts;
    ts.tv_sec = when / 1000000000LL;
    ts.tv_nsec = when % 1000000000LL;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Delete the watchdog's thread state on its own thread.  On 3.13+
 * PyThreadState_Delete() from another thread clears the *caller's* PyGILState
 * slot, and the main thread's next PyGILState_Ensure() (numpy's
 * PyTraceMalloc_Untrack while modules are cleared) then aborts:
 * "_PyThreadState_Attach: non-NULL old thread state".  fp_wd_shutdown() has
 * released the GIL while it joins us. */
static void fp_wd_drop_tstate(void)
{
    if (fp_wd_tstate != NULL && !FP_IS_FINALIZING()) {
        PyEval_RestoreThread(fp_wd_tstate);
        fp_wd_tstate = NULL;
        PyGILState_Release(fp_wd_gilstate);   /* clears and deletes it, drops the GIL */
    }
}

/* Nothing armed for a while: sleep until an arm wakes us.  An owner arms with
 * plain stores and then reads fp_wd_parked with a plain load; membarrier()
 * makes every thread's earlier stores visible before we look at the slots
 * one last time, so either we see the arm or the owner sees parked = 1 and
 * wakes us. */
static void fp_wd_park(void)
{
    int active;
    struct timespec ts;
    pthread_mutex_lock(&fp_wd_lock);
    __atomic_store_n(&fp_wd_parked, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&fp_wd_lock);
    if (fp_wd_membarrier)
        fp_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
    pthread_mutex_lock(&fp_registry_lock);
    active = fp_wd_any_seq_changed();
    pthread_mutex_unlock(&fp_registry_lock);
    pthread_mutex_lock(&fp_wd_lock);
    if (!active) {
        if (fp_wd_membarrier) {
            while (fp_wd_parked && !fp_wd_stop)
                pthread_cond_wait(&fp_wd_cond, &fp_wd_lock);
        } else {
            /* Without membarrier an arm can slip past the check above;
             * bound the damage with a short timed park. */
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 5000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            if (fp_wd_parked && !fp_wd_stop)
                pthread_cond_timedwait(&fp_wd_cond, &fp_wd_lock, &ts);
        }
    }
    __atomic_store_n(&fp_wd_parked, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&fp_wd_lock);
}

/* The watchdog's loop: every tick, scan the armed slots (signal the main
 * thread, batch the GIL deliveries), deliver, then sleep or park. */
static void *fp_wd_main(void *unused)
{
    fp_fire gil_fires[FP_WD_MAX_BATCH];
    int idle_ticks = 0;
    int calibrated = 0;
    uint64_t cal_tsc = 0;
    int64_t cal_ns = 0;
    (void)unused;
#ifdef PR_SET_TIMERSLACK
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);   /* wake within microseconds, not 50 us */
#endif
#ifdef PR_SET_NAME
    prctl(PR_SET_NAME, (unsigned long)"fastpath-wd", 0, 0, 0);
#endif
    for (;;) {
        int64_t now, next_wake;
        int n_gil = 0, active = 0;
        fp_slot *s;

        if (__atomic_load_n(&fp_wd_stop, __ATOMIC_ACQUIRE))
            break;
        if (!calibrated)
            calibrated = fp_tsc_calibrate(&cal_tsc, &cal_ns);
        now = fp_now_ns();
        next_wake = now + FP_WD_TICK_NS;
        fp_wd_ticks++;

        pthread_mutex_lock(&fp_registry_lock);
        for (s = fp_registry; s; s = s->next) {
            if (s->in_use)
                fp_wd_scan_slot(s, now, &next_wake, gil_fires, &n_gil, &active);
        }
        pthread_mutex_unlock(&fp_registry_lock);

        fp_wd_deliver_gil(gil_fires, n_gil);

        if (active || !calibrated) {
            idle_ticks = 0;
        } else if (++idle_ticks >= FP_WD_IDLE_TICKS) {
            fp_wd_park();
            idle_ticks = 0;
            continue;
        }
        fp_wd_sleep_until(next_wake);
    }
    fp_wd_drop_tstate();
    return NULL;
}
/* Rare path of arm: the watchdog is parked (nothing was armed for a while). */
static void fp_wd_wake(void)
{
    pthread_mutex_lock(&fp_wd_lock);
    __atomic_store_n(&fp_wd_parked, 0, __ATOMIC_SEQ_CST);
    pthread_cond_signal(&fp_wd_cond);
    pthread_mutex_unlock(&fp_wd_lock);
}

static void fp_atfork_child(void);

/* Start the watchdog (idempotent).  Returns 0, or -1 with errno set.  Several
 * threads may call it at once on a free-threaded build (no GIL serialises
 * them): fp_wd_start_lock makes one of them start the thread and the others
 * see it running.  Off the per-call path (callers test fp_wd_running first). */
static pthread_mutex_t fp_wd_start_lock = PTHREAD_MUTEX_INITIALIZER;

static int fp_wd_start_locked(void);

static int fp_wd_start(void)
{
    int rc;
    pthread_mutex_lock(&fp_wd_start_lock);
    rc = fp_wd_start_locked();
    pthread_mutex_unlock(&fp_wd_start_lock);
    return rc;
}

static int fp_wd_start_locked(void)
{
    pthread_attr_t attr;
    sigset_t all, old;
    int rc;
    static int atfork_done = 0;

    if (__atomic_load_n(&fp_wd_running, __ATOMIC_ACQUIRE) || fp_wd_final)
        return 0;
    if (!fp_wd_cond_ready) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_cond_init(&fp_wd_cond, &ca);
        pthread_condattr_destroy(&ca);
        fp_wd_cond_ready = 1;
    }
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, fp_atfork_child);
        atfork_done = 1;
    }
    if (!fp_wd_membarrier) {
        if (fp_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0)
            fp_wd_membarrier = 1;
    }
    fp_wd_stop = 0;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    /* The watchdog must never receive the process's signals. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&fp_wd_thread, &attr, fp_wd_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    __atomic_store_n(&fp_wd_running, 1, __ATOMIC_RELEASE);
    return 0;
}

/* Stop and join the watchdog.  Called with the GIL held (from atexit); the GIL
 * is released while joining so a delivery in progress can finish. */
static void fp_wd_shutdown(void)
{
    PyThreadState *ts;
    fp_wd_final = 1;
    if (!__atomic_load_n(&fp_wd_running, __ATOMIC_ACQUIRE))
        return;
    __atomic_store_n(&fp_wd_stop, 1, __ATOMIC_RELEASE);
    fp_wd_wake();
    ts = PyEval_SaveThread();
    pthread_join(fp_wd_thread, NULL);     /* the watchdog deletes its own thread state */
    PyEval_RestoreThread(ts);
    /* One it could not delete (finalizing) is left to the interpreter, which
     * clears every remaining thread state at exit. */
    fp_wd_tstate = NULL;
    __atomic_store_n(&fp_wd_running, 0, __ATOMIC_RELEASE);
}

/* In a forked child only the forking thread exists: forget the watchdog (the
 * interpreter deletes its thread state itself) and every other slot. */
static void fp_atfork_child(void)
{
    fp_slot *s;
    pthread_mutex_init(&fp_registry_lock, NULL);
    pthread_mutex_init(&fp_wd_lock, NULL);
    pthread_mutex_init(&fp_wd_start_lock, NULL);
    fp_mutex_reinit(&fp_mem_lock);
    pthread_mutex_init(&fp_switch_lock, NULL);
    if (fp_wd_cond_ready)
        pthread_cond_init(&fp_wd_cond, NULL);
    fp_wd_running = 0;
    fp_wd_parked = 0;
    fp_wd_stop = 0;
    fp_wd_tstate = NULL;
#if FP_HAVE_SWITCH_INTERVAL_API
    if (fp_fast_gil_saved) {
        /* forked while the watchdog's fast GIL request was in flight */
        fp_set_switch_us(fp_fast_gil_saved);
        fp_fast_gil_saved = 0;
    }
#endif
    fp_main_ident = PyThread_get_thread_ident();   /* the forking thread is the child's main */
    for (s = fp_registry; s; s = s->next) {
        fp_mutex_reinit(&s->fire_lock);
        if (s != fp_tls_slot) {
            s->in_use = 0;
            s->has_cpu_clock = 0;
        } else {
            s->thread = pthread_self();
            s->py_ident = fp_main_ident;
            s->has_cpu_clock = (pthread_getcpuclockid(s->thread, &s->cpu_clock) == 0);
            s->is_main = 1;
            s->base_wall = 0;       /* the parent's readings are not this thread's clock */
        }
    }
}

#endif /* FASTPATH_WATCHDOG_H */
