/*
 * fastpath C runtime: the per-thread slot that enforce() arms: layout, registry, creation,
 * the seqlock the watchdog reads it with, the stack guard.
 */
#ifndef FASTPATH_SLOT_H
#define FASTPATH_SLOT_H

#include "_fp_common.h"
#include "_fp_atomic.h"
#include "_fp_clock.h"
#include "_fp_memhook.h"

#define FP_CPU_NEST 4             /* CPU watches per thread (outer limits hold during inner calls) */
#define FP_MAX_NESTING 128        /* nested enforce() calls per thread */
#define FP_STACK_MARGIN_MIN (64 * 1024)

/* One CPU-limited call the watchdog watches.  The thread's CPU clock at the
 * call's start is known to lie within [start_lo, start_hi]: equal when it was
 * read at arm time, otherwise bracketed by an earlier reading of the
 * watchdog's (a thread's CPU clock advances no faster than the wall clock). */
typedef struct {
    /* -- written by the owner under the slot's seqlock -- */
    uint64_t gen;             /* the call; 0 = empty */
    int64_t limit_ns;         /* CPU it may still use */
    int interrupt;            /* interrupt it when the allowance is crossed */
    int64_t start_lo;
    int64_t start_hi;
    int64_t fn_start;         /* fastpath clock when the call started */
    /* -- written by the watchdog (sample_gen last) -- */
    uint64_t sample_gen;      /* gen the sample belongs to */
    int64_t sample_cpu;       /* the thread's CPU clock ... */
    int64_t sample_wall;      /* ... read at this time */
} fp_cpu_watch;

typedef struct fp_slot {
    /* -- written by the owning thread under the seqlock, read by the watchdog -- */
    uint64_t seq;             /* odd while the owner rewrites the fields below */
    uint64_t armed_gen;       /* generation owning interrupt_at_ns; 0 = none */
    int64_t interrupt_at_ns;  /* fastpath-clock ns to interrupt at; INT64_MAX = never */
    int interrupt_kind;       /* violation kind an interrupt at that time means */
    int n_cpu;                /* CPU watches in use, outermost first */
    fp_cpu_watch cpu[FP_CPU_NEST];
    /* -- owner only -- */
    uint64_t next_gen;        /* last generation handed out on this slot */
    int depth;                /* enforce() calls open on this thread */
    uint64_t reset_gen;       /* calls armed up to this gen were cleared by a reset */
    int unordered;            /* calls returned out of order here (greenlets): no interrupts */
    uintptr_t stack_guard;    /* below this C-stack address enforce() refuses to nest */
    int64_t cpu_recent_ns;    /* when a CPU-limited call last started here */
    int defer_depth;          /* open fastpath.uninterruptible() blocks */
    PyObject *current;        /* the innermost budget running here (borrowed; enforce() holds it) */
    PyObject *step_current;   /* the budget of the coroutine step running here (borrowed) */
    int deferred;             /* the main-thread handler put an interrupt off */
    /* -- written by the watchdog -- */
    uint64_t base_seq;        /* seqlock of the reading below */
    int64_t base_cpu;         /* a recent reading of the owner's CPU clock ... */
    int64_t base_wall;        /* ... taken at this time */
    uint64_t fire_gen;        /* generation an interrupt was sent for; 0 = none */
    int fire_kind;            /* violation kind of that interrupt */
    int64_t fire_ns;          /* when it fell due (deadline, or the CPU allowance crossed) */
    int delivered;            /* the interrupt was raised (by the handler or the GIL path) */
    int64_t sig_sent_ns;      /* when the signal for fire_gen was sent; 0 = not by signal */
    /* -- identity, fixed while in use -- */
    pthread_t thread;
    unsigned long py_ident;   /* PyThread_get_thread_ident() of the owner */
    clockid_t cpu_clock;      /* the owner's CPU clock, readable from the watchdog */
    int has_cpu_clock;
    int in_use;               /* 0 once the owner exited: the slot awaits reuse */
    int is_main;              /* owner is the main thread */
    /* -- watchdog private -- */
    uint64_t wd_seen_seq;
    int64_t wd_refire_at_ns;  /* do not (re)send before this */
    int wd_gil_fallback;      /* a signal did not land: use the GIL path for fire_gen */
    /* -- the GIL path's hand-over: the owner's disarm and the watchdog's check
     * of armed_gen + fire_gen store + PyThreadState_SetAsyncExc hold it, so an
     * interrupt is either seen by the disarm (and cleared) or not sent.  Under
     * a GIL the GIL does this and the field does not exist (_fp_atomic.h). */
#if FP_FREE_THREADED
    fp_mutex fire_lock;
#endif
    /* -- memory accounting, owner only (see _fp_memhook.h) -- */
    fp_mem mem;
    struct fp_slot *next;
} fp_slot;

/* What enforce() saves on its C stack when it arms, restored on disarm: this
 * is what makes nested budgets work without any allocation. */
typedef struct {
    uint64_t armed_gen;       /* the enclosing call's deadline, restored on disarm */
    int64_t interrupt_at_ns;
    int interrupt_kind;
    int depth;                /* this call's depth on the thread */
    int cpu_idx;              /* its CPU watch, or -1 */
    PyObject *current;        /* the enclosing current budget */
    int64_t cpu_lo;           /* its start bracket (see fp_cpu_watch) */
    int64_t cpu_hi;
    fp_mem_session mem;       /* the enclosing memory session */
} fp_saved;

static __thread fp_slot *fp_tls_slot __attribute__((tls_model("initial-exec"))) = NULL;
static pthread_mutex_t fp_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static fp_slot *fp_registry = NULL;
static pthread_key_t fp_slot_key;
static int fp_slot_key_ready = 0;
static unsigned long fp_main_ident = 0;   /* threading.main_thread().ident */

static void fp_slot_stack_guard(fp_slot *s)
{
    pthread_attr_t attr;
    void *addr = NULL;
    size_t size = 0, margin;
    s->stack_guard = 0;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return;
    if (pthread_attr_getstack(&attr, &addr, &size) == 0 && addr != NULL && size > 0) {
        margin = size / 8 > FP_STACK_MARGIN_MIN ? size / 8 : FP_STACK_MARGIN_MIN;
        if (margin > size / 2)
            margin = size / 2;
        s->stack_guard = (uintptr_t)addr + margin;
    }
    pthread_attr_destroy(&attr);
}

/* Is less C stack left than enforce() keeps in reserve? */
static inline int fp_stack_exhausted(const fp_slot *s)
{
    char here;
    return (uintptr_t)&here < s->stack_guard;
}

static void fp_slot_release(void *p)
{
    fp_slot *s = (fp_slot *)p;
    fp_tls_mem = NULL;
    fp_tls_slot = NULL;
    pthread_mutex_lock(&fp_registry_lock);
    s->in_use = 0;
    s->has_cpu_clock = 0;
    pthread_mutex_unlock(&fp_registry_lock);
}

/* Slots are never freed: a dead thread's slot is reused by a new thread, so a
 * pointer the watchdog holds is always valid memory.  Generations keep
 * increasing across reuse, so nothing meant for the old owner matches. */
static fp_slot *fp_slot_create(void)
{
    fp_slot *s = NULL, *it;
    pthread_mutex_lock(&fp_registry_lock);
    if (!fp_slot_key_ready) {
        if (pthread_key_create(&fp_slot_key, fp_slot_release) != 0) {
            pthread_mutex_unlock(&fp_registry_lock);
            return NULL;
        }
        fp_slot_key_ready = 1;
    }
    for (it = fp_registry; it; it = it->next) {
        if (!it->in_use) { s = it; break; }
    }
    if (!s) {
        s = (fp_slot *)calloc(1, sizeof(fp_slot));
        if (!s) {
            pthread_mutex_unlock(&fp_registry_lock);
            return NULL;
        }
        s->next = fp_registry;
        fp_registry = s;
    }
    s->armed_gen = 0;
    s->interrupt_at_ns = FP_INT64_MAX;
    s->n_cpu = 0;
    s->depth = 0;
    s->unordered = 0;
    s->defer_depth = 0;
    s->deferred = 0;
    s->current = NULL;
    s->step_current = NULL;
    s->cpu_recent_ns = 0;
    s->base_wall = 0;
    s->fire_gen = 0;
    s->delivered = 0;
    fp_mem_thread_reset(&s->mem);
    if (s->next_gen == 0) {
        /* Generations are unique across slots too (2**40 per slot): a budget
         * looked at from another thread can never match this thread's call. */
        static uint64_t slot_serial = 0;
        s->next_gen = ++slot_serial << 40;
    }
    s->reset_gen = s->next_gen;
    s->thread = pthread_self();
    s->py_ident = PyThread_get_thread_ident();
    s->has_cpu_clock = (pthread_getcpuclockid(s->thread, &s->cpu_clock) == 0);
    s->is_main = (s->py_ident == fp_main_ident);
    fp_slot_stack_guard(s);
    s->in_use = 1;
    pthread_mutex_unlock(&fp_registry_lock);
    pthread_setspecific(fp_slot_key, s);
    fp_tls_slot = s;
    fp_tls_mem = &s->mem;
    return s;
}

static inline void fp_seq_begin(fp_slot *s)
{
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void fp_seq_end(fp_slot *s)
{
    __atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELEASE);
}

/* The watchdog's latest reading of the owner's CPU clock: 1 if consistent. */
static inline int fp_base_read(const fp_slot *s, int64_t *cpu, int64_t *wall)
{
    uint64_t q1 = __atomic_load_n(&s->base_seq, __ATOMIC_ACQUIRE), q2;
    if (q1 & 1)
        return 0;
    *cpu = s->base_cpu;
    *wall = s->base_wall;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    q2 = __atomic_load_n(&s->base_seq, __ATOMIC_RELAXED);
    return q1 == q2 && *wall != 0;
}

static inline void fp_base_write(fp_slot *s, int64_t cpu, int64_t wall)
{
    __atomic_store_n(&s->base_seq, s->base_seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    s->base_cpu = cpu;
    s->base_wall = wall;
    __atomic_store_n(&s->base_seq, s->base_seq + 1, __ATOMIC_RELEASE);
}

/* The CPU watch index of call `gen` on this slot, or -1. */
static inline int fp_cpu_watch_of(const fp_slot *s, uint64_t gen)
{
    int k;
    for (k = 0; k < s->n_cpu; k++) {
        if (s->cpu[k].gen == gen)
            return k;
    }
    return -1;
}

/* Was the last interrupt sent for the call running now (not an ended one)? */
static inline int fp_fire_for_running(const fp_slot *s)
{
    uint64_t g = __atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE);
    return g != 0 && (g == s->armed_gen || fp_cpu_watch_of(s, g) >= 0);
}

/* uninterruptible() begins on the owner's thread: count the block and say whether
 * an interrupt for the running call was sent (the caller takes it back).  Under
 * fire_lock, so that with no GIL the watchdog's check of defer_depth and its
 * injection cannot straddle the increment (see fp_slot.fire_lock). */
static inline int fp_defer_enter(fp_slot *s)
{
    int fired;
    fp_mutex_lock(&s->fire_lock);
    s->defer_depth++;
    fired = fp_fire_for_running(s);
    fp_mutex_unlock(&s->fire_lock);
    return fired;
}

static inline fp_slot *fp_slot_peek(void) { return fp_tls_slot; }

#endif /* FASTPATH_SLOT_H */
