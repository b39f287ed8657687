/*
 * fastpath C runtime: clocks, the per-thread sampler, the per-thread slot that
 * enforce() arms, and the watchdog thread that samples CPU clocks and
 * interrupts calls past their limits.
 *
 * Included by _budget.pyx (after Python.h).  Everything is static: the only
 * compilation unit is the extension module.
 *
 * Concurrency model
 * -----------------
 * Each thread that arms a budget owns one fp_slot.  The owner writes the
 * "armed" fields under a seqlock (plain stores and compiler barriers on the
 * owner side: no lock, no syscall, no atomic read-modify-write).  The watchdog
 * reads them with the seqlock protocol and skips a slot it caught mid-write.
 * Fields the watchdog writes (fire_*, cpu_sample_*) are single-writer too.
 * Arm and disarm always happen with the GIL held; the watchdog takes the GIL
 * only to deliver an interrupt to a non-main thread, so "check the slot, then
 * PyThreadState_SetAsyncExc" under the GIL cannot race with a disarm.
 */
#ifndef FASTPATH_RUNTIME_H
#define FASTPATH_RUNTIME_H

#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__linux__)
#include <linux/membarrier.h>
#endif

#define FP_INT64_MAX INT64_MAX
#define FP_LIKELY(x) __builtin_expect(!!(x), 1)
#define FP_UNLIKELY(x) __builtin_expect(!!(x), 0)

#if PY_VERSION_HEX >= 0x030D0000
#define FP_IS_FINALIZING() Py_IsFinalizing()
#else
#define FP_IS_FINALIZING() _Py_IsFinalizing()
#endif

#include "_fp_memhook.h"

/* Build facts, set by setup.py (shown by `python -m fastpath.selftest`). */
#ifndef FASTPATH_CYTHON_VERSION
#define FASTPATH_CYTHON_VERSION "unknown"
#endif
#ifndef FASTPATH_BUILD_KIND
#define FASTPATH_BUILD_KIND "unknown"
#endif
#ifndef FASTPATH_BUILD_CFLAGS
#define FASTPATH_BUILD_CFLAGS "unknown"
#endif
#ifndef FASTPATH_BUILD_DIRECTIVES
#define FASTPATH_BUILD_DIRECTIVES "unknown"
#endif
static const char *fp_build_directives = FASTPATH_BUILD_DIRECTIVES;
static const char *fp_build_cython = FASTPATH_CYTHON_VERSION;
static const char *fp_build_kind = FASTPATH_BUILD_KIND;
static const char *fp_build_cflags = FASTPATH_BUILD_CFLAGS;

/* Violation kinds: the values of fastpath.errors.ConstraintViolationType. */
#define FP_TIMEOUT 1
#define FP_MEMORY 2
#define FP_CPU 3

typedef PyObject *(*fp_fastcall_fn)(PyObject *, PyObject **, Py_ssize_t, PyObject *);

/* Add a METH_FASTCALL|METH_KEYWORDS method to an extension type.  Cython gives
 * a `def f(self, x, /, *args, **kwargs)` a fresh dict and tuple on every call;
 * the per-call entry points of fastpath (enforce, execute_with_constraints)
 * are installed this way instead.  The PyMethodDef lives as long as the
 * process, as the descriptor requires. */
static int fp_install_fastcall(PyTypeObject *type, const char *name, fp_fastcall_fn fn,
                               const char *doc)
{
    PyMethodDef *def;
    PyObject *descr;
    int rc;
    def = (PyMethodDef *)PyMem_RawCalloc(1, sizeof(PyMethodDef));
    if (def == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    def->ml_name = name;
    def->ml_meth = (PyCFunction)(void (*)(void))fn;
    def->ml_flags = METH_FASTCALL | METH_KEYWORDS;
    def->ml_doc = doc;
    descr = PyDescr_NewMethod(type, def);
    if (descr == NULL)
        return -1;
    rc = PyDict_SetItemString(type->tp_dict, name, descr);
    Py_DECREF(descr);
    if (rc == 0)
        PyType_Modified(type);
    return rc;
}

/* ------------------------------------------------------------------ clocks */

/* The kernel's CLOCK_MONOTONIC (vDSO, ~21 ns here). */
static inline int64_t fp_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* fastpath's clock: CLOCK_MONOTONIC, read through the TSC where that is what
 * the kernel itself uses (x86-64 with clocksource "tsc"): rdtsc plus one
 * multiply costs ~10 ns against the vDSO's ~21 ns, and enforce() reads the
 * clock three times.  The watchdog measures the TSC rate against
 * CLOCK_MONOTONIC over 50 ms and publishes it once; until then, and wherever
 * the TSC is not the kernel's clocksource, the kernel clock is read. */
static int fp_tsc_usable = 0;          /* set at import from the kernel's clocksource */
static int fp_tsc_ready = 0;           /* calibration published */
static uint64_t fp_tsc_anchor = 0;
static int64_t fp_tsc_anchor_ns = 0;
static double fp_ns_per_tick = 0.0;

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define FP_HAVE_TSC 1
static inline uint64_t fp_rdtsc(void) { return __rdtsc(); }
#else
#define FP_HAVE_TSC 0
static inline uint64_t fp_rdtsc(void) { return 0; }
#endif

static inline int64_t fp_now_ns(void)
{
#if FP_HAVE_TSC
    if (FP_LIKELY(__atomic_load_n(&fp_tsc_ready, __ATOMIC_ACQUIRE)))
        return fp_tsc_anchor_ns
               + (int64_t)((double)(int64_t)(fp_rdtsc() - fp_tsc_anchor) * fp_ns_per_tick);
#endif
    return fp_mono_ns();
}

/* One (tsc, CLOCK_MONOTONIC) pair, read back to back (the tighter of three). */
static void fp_tsc_pair(uint64_t *tsc, int64_t *ns)
{
    int i;
    int64_t best = INT64_MAX;
    for (i = 0; i < 3; i++) {
        uint64_t t0 = fp_rdtsc();
        int64_t n = fp_mono_ns();
        uint64_t t1 = fp_rdtsc();
        if ((int64_t)(t1 - t0) < best) {
            best = (int64_t)(t1 - t0);
            *tsc = t0 + (t1 - t0) / 2;
            *ns = n;
        }
    }
}

/* Calibration step, run by the watchdog thread: returns 1 once published. */
static int fp_tsc_calibrate(uint64_t *tsc0, int64_t *ns0)
{
    uint64_t tsc1 = 0;
    int64_t ns1 = 0;
    double rate;
    if (!fp_tsc_usable || fp_tsc_ready)
        return 1;
    if (*ns0 == 0) {
        fp_tsc_pair(tsc0, ns0);
        return 0;
    }
    if (fp_mono_ns() - *ns0 < 50000000LL)
        return 0;
    fp_tsc_pair(&tsc1, &ns1);
    if (tsc1 <= *tsc0)
        return 1;       /* not a usable TSC: keep the kernel clock */
    rate = (double)(ns1 - *ns0) / (double)(tsc1 - *tsc0);
    if (rate < 0.02 || rate > 20.0)
        return 1;       /* implausible (50 MHz .. 50 GHz): keep the kernel clock */
    fp_tsc_anchor = tsc1;
    fp_tsc_anchor_ns = ns1;
    fp_ns_per_tick = rate;
    __atomic_store_n(&fp_tsc_ready, 1, __ATOMIC_RELEASE);
    return 1;
}

/* Any clock in ns, or -1 (the watchdog reads other threads' CPU clocks). */
static inline int64_t fp_clock_ns(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* CPU time of the calling thread (a real syscall, ~300-400 ns here). */
static inline int64_t fp_thread_cpu_ns(void)
{
    return fp_clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/* a + b for non-negative b, saturating at INT64_MAX */
static inline int64_t fp_sat_add(int64_t a, int64_t b)
{
    return (a > FP_INT64_MAX - b) ? FP_INT64_MAX : a + b;
}

/* ----------------------------------------------------------------- sampler */

/* xorshift64* (Vigna): 64-bit state, the multiply scrambles the low-quality
 * low bits; we compare the whole 64-bit output against p * 2**64, which is
 * decided by the (good) high bits. */
static __thread uint64_t fp_rng_state = 0;
static uint64_t fp_rng_seed_counter = 0;

static inline uint64_t fp_splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t fp_rng_seed(void)
{
    uint64_t n = __atomic_add_fetch(&fp_rng_seed_counter, 1, __ATOMIC_RELAXED);
    uint64_t s = fp_splitmix64(n ^ ((uint64_t)pthread_self() << 1) ^ (uint64_t)fp_now_ns()
                               ^ ((uint64_t)getpid() << 32));
    return s ? s : 0x853C49E6748FEA9BULL;
}

static inline uint64_t fp_rng_next(void)
{
    uint64_t x = fp_rng_state;
    if (FP_UNLIKELY(x == 0))
        x = fp_rng_seed();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    fp_rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Re-seed this thread's generator (tests use it to prove per-thread state). */
static inline void fp_rng_reseed(uint64_t seed)
{
    fp_rng_state = seed ? fp_splitmix64(seed) | 1 : fp_rng_seed();
}

/* ------------------------------------------------------------------- slots */

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

/* The preemption signal's route to the main thread. */
enum {
    FP_ROUTE_OFF = 0,     /* not used (FASTPATH_PREEMPT_SIGNAL=off): GIL path */
    FP_ROUTE_OURS,        /* installed, and still fastpath's */
    FP_ROUTE_PENDING,     /* imported off the main thread: installed at its first call */
    FP_ROUTE_TAKEN,       /* the application handled the signal first: GIL path */
    FP_ROUTE_LOST         /* changed after fastpath installed it: GIL path */
};
static int fp_sig_route = FP_ROUTE_OFF;
static int fp_preempt_signal = 0;
static void (*fp_sig_c_handler)(int) = NULL;   /* the C handler CPython installed for it */
static PyObject *fp_sig_py_handler = NULL;     /* fastpath's Python-level handler */
static PyObject *fp_sig_getsignal = NULL;      /* signal.getsignal */

static inline int fp_sig_is_ours(void)
{
    struct sigaction sa;
    if (sigaction(fp_preempt_signal, NULL, &sa) != 0)
        return 0;
    if (sa.sa_flags & SA_SIGINFO)
        return 0;
    return sa.sa_handler == fp_sig_c_handler;
}

/* Remember the C handler CPython installed for signum (after signal.signal). */
static int fp_sig_adopt(int signum)
{
    struct sigaction sa;
    if (sigaction(signum, NULL, &sa) != 0 || (sa.sa_flags & SA_SIGINFO)
        || sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN)
        return -1;
    fp_sig_c_handler = sa.sa_handler;
    fp_preempt_signal = signum;
    __atomic_store_n(&fp_sig_route, FP_ROUTE_OURS, __ATOMIC_RELEASE);
    return 0;
}

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
/* ---------------------------------------------------------------- watchdog */

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
static PyObject *fp_critical_files = NULL;   /* tuple of str: file-name prefixes of stdlib
                                              * modules that hold locks (see _critical.py) */

/* Fast GIL hand-over for interrupts to non-main threads.  A thread waiting
 * for the GIL asks the holder to drop it only after waiting one switch
 * interval (5 ms by default).  For its own request the watchdog lowers the
 * interval to FP_FAST_GIL_US and restores it as soon as it holds the GIL
 * (unless someone changed it meanwhile): the interrupt lands ~0.1 ms after the
 * deadline instead of ~5 ms.  While the lowered value is in force, fastpath's
 * sys.getswitchinterval() reports the value it replaced and its
 * sys.setswitchinterval() records the caller's value, so no Python code ever
 * sees the lowered one.  FASTPATH_FAST_GIL=0 leaves the interval (and sys)
 * alone. */
#define FP_FAST_GIL_US 100UL
#if PY_VERSION_HEX < 0x030D0000
#define FP_HAVE_SWITCH_INTERVAL_API 1
#else
#define FP_HAVE_SWITCH_INTERVAL_API 0
#endif
static int fp_fast_gil = FP_HAVE_SWITCH_INTERVAL_API;
static pthread_mutex_t fp_switch_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long fp_fast_gil_saved = 0;  /* interval to restore; 0: none in flight */
static int fp_preempt_enabled = 1;
static uint64_t fp_wd_ticks = 0;
static uint64_t fp_wd_fires = 0;
static uint64_t fp_wd_deferrals = 0;

/* The switch interval Python code should see, in microseconds (called with
 * the GIL held): the real one, or the one a lowering in flight replaced. */
static unsigned long fp_switch_interval_shown(void)
{
    unsigned long v = 0;
#if FP_HAVE_SWITCH_INTERVAL_API
    pthread_mutex_lock(&fp_switch_lock);
    v = fp_fast_gil_saved ? fp_fast_gil_saved : _PyEval_GetSwitchInterval();
    pthread_mutex_unlock(&fp_switch_lock);
#endif
    return v;
}

/* After sys.setswitchinterval() (GIL held): a lowering in flight now restores
 * the caller's value. */
static void fp_switch_interval_set(void)
{
#if FP_HAVE_SWITCH_INTERVAL_API
    pthread_mutex_lock(&fp_switch_lock);
    if (fp_fast_gil_saved)
        fp_fast_gil_saved = _PyEval_GetSwitchInterval();
    pthread_mutex_unlock(&fp_switch_lock);
#endif
}

static void fp_fast_gil_lower(void)
{
#if FP_HAVE_SWITCH_INTERVAL_API
    unsigned long interval;
    pthread_mutex_lock(&fp_switch_lock);
    interval = _PyEval_GetSwitchInterval();
    if (interval > FP_FAST_GIL_US) {
        fp_fast_gil_saved = interval;
        _PyEval_SetSwitchInterval(FP_FAST_GIL_US);
    }
    pthread_mutex_unlock(&fp_switch_lock);
#endif
}

/* With the GIL held: put back the interval the watchdog lowered. */
static void fp_fast_gil_restore(void)
{
#if FP_HAVE_SWITCH_INTERVAL_API
    pthread_mutex_lock(&fp_switch_lock);
    if (fp_fast_gil_saved) {
        _PyEval_SetSwitchInterval(fp_fast_gil_saved);
        fp_fast_gil_saved = 0;
    }
    pthread_mutex_unlock(&fp_switch_lock);
#endif
}

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

/* How far up the stack a __del__ frame is looked for (as _critical.py). */
#define FP_FINALIZER_DEPTH 64

/* The thread running a garbage collection now (0: none): set by the core's
 * gc.callbacks entry.  A collection runs finalizers and weakref callbacks,
 * where an exception cannot propagate (see _critical.py). */
static unsigned long fp_gc_ident = 0;

/* Is this frame (or its caller) code of a stdlib module that takes locks
 * with acquire() ... try: (logging, threading, queue, ...), or is a __del__
 * method on its stack?  An asynchronous exception landing in the first could
 * leave the lock held; in the second it is swallowed ("Exception ignored")
 * and cuts the finalizer short.  GIL held. */
static int fp_frame_is_critical(PyObject *frame)
{
    int depth, hit = 0;
    Py_ssize_t i, n;
    PyFrameObject *f;
    if (frame == NULL || !PyFrame_Check(frame) || fp_critical_files == NULL)
        return 0;
    n = PyTuple_GET_SIZE(fp_critical_files);
    Py_INCREF(frame);
    f = (PyFrameObject *)frame;
    for (depth = 0; depth < FP_FINALIZER_DEPTH && f != NULL && !hit; depth++) {
        PyCodeObject *code = PyFrame_GetCode(f);
        PyFrameObject *back;
        if (code != NULL) {
            for (i = 0; depth < 2 && i < n && !hit; i++) {
                if (PyUnicode_Tailmatch(code->co_filename, PyTuple_GET_ITEM(fp_critical_files, i),
                                        0, PY_SSIZE_T_MAX, -1) == 1)
                    hit = 1;
            }
            if (!hit && PyUnicode_CompareWithASCIIString(code->co_name, "__del__") == 0)
                hit = 1;
            Py_DECREF(code);
        }
        back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    if (PyErr_Occurred())
        PyErr_Clear();
    return hit;
}

/* Is the thread `ident` inside a critical stdlib frame right now?  GIL held
 * by the caller (the watchdog), so the target is parked where it will
 * resume -- which is where an asynchronous exception would land. */
static int fp_thread_in_critical(unsigned long ident)
{
    PyThreadState *ts;
    PyFrameObject *frame;
    int hit, gc_was;
    for (ts = PyInterpreterState_ThreadHead(PyInterpreterState_Main()); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == ident)
            break;
    }
    if (ts == NULL)
        return 0;
    if (__atomic_load_n(&fp_gc_ident, __ATOMIC_RELAXED) == ident)
        return 1;               /* a collection (its finalizers) runs there */
    /* No garbage collection (and so no finalizer, which could let the target
     * run) while frame objects are made for the look. */
    gc_was = PyGC_Disable();
    frame = PyThreadState_GetFrame(ts);
    hit = frame != NULL && fp_frame_is_critical((PyObject *)frame);
    Py_XDECREF(frame);
    if (gc_was)
        PyGC_Enable();
    return hit;
}

/* GIL held: is fastpath's Python-level handler still the signal's handler? */
static int fp_sig_py_handler_is_ours(void)
{
    PyObject *h;
    int ours;
    if (fp_sig_getsignal == NULL || fp_sig_py_handler == NULL)
        return 0;
    h = PyObject_CallFunction(fp_sig_getsignal, "i", fp_preempt_signal);
    if (h == NULL) {
        PyErr_Clear();
        return 0;
    }
    ours = (h == fp_sig_py_handler);
    Py_DECREF(h);
    return ours;
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
         * the injection. */
        if (!fp_fire_valid(s, g))
            continue;
        s->fire_kind = fires[i].kind;
        s->fire_ns = fires[i].due_ns;
        if (!(s->is_main && fp_sig_route == FP_ROUTE_OURS)) {
            s->sig_sent_ns = 0;
            s->delivered = 1;
        }   /* else the signal handler may still raise it first (e.g. in a sleep) */
        __atomic_store_n(&s->fire_gen, g, __ATOMIC_RELEASE);
        PyThreadState_SetAsyncExc(s->py_ident, fp_interrupt_type);
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
        struct timespec ts;

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
        ts.tv_sec = next_wake / 1000000000LL;
        ts.tv_nsec = next_wake % 1000000000LL;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
    }
    /* Delete our thread state on its own thread.  On 3.13+ PyThreadState_Delete()
     * from another thread clears the *caller's* PyGILState slot, and the main
     * thread's next PyGILState_Ensure() (numpy's PyTraceMalloc_Untrack while
     * modules are cleared) then aborts: "_PyThreadState_Attach: non-NULL old
     * thread state".  fp_wd_shutdown() has released the GIL while it joins us. */
    if (fp_wd_tstate != NULL && !FP_IS_FINALIZING()) {
        PyEval_RestoreThread(fp_wd_tstate);
        fp_wd_tstate = NULL;
        PyGILState_Release(fp_wd_gilstate);   /* clears and deletes it, drops the GIL */
    }
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

/* Start the watchdog (idempotent).  Called with the GIL held.  Returns 0, or
 * -1 with errno set. */
static int fp_wd_start(void)
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
        _PyEval_SetSwitchInterval(fp_fast_gil_saved);
        fp_fast_gil_saved = 0;
    }
#endif
    fp_main_ident = PyThread_get_thread_ident();   /* the forking thread is the child's main */
    for (s = fp_registry; s; s = s->next) {
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

/* ------------------------------------------------------------- arm/disarm */

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
    int fired = (__atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) == gen);
    if (!fp_in_order(s, sv, gen))
        return fired;
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

/* Give a type with __await__ an am_send slot (Cython does not make one):
 * `await` then resumes it through PyIter_Send, and its return value needs no
 * StopIteration. */
typedef PySendResult (*fp_sendfunc)(PyObject *, PyObject *, PyObject **);
static void fp_install_am_send(PyTypeObject *tp, fp_sendfunc fn)
{
    if (tp->tp_as_async != NULL)
        tp->tp_as_async->am_send = fn;
}

/* Would awaiting be the way to use this (a coroutine, a future, ...)? */
static inline int fp_is_awaitable(PyObject *o)
{
    PyAsyncMethods *am = Py_TYPE(o)->tp_as_async;
    return am != NULL && am->am_await != NULL;
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

/* Main-thread signal handler: is an interrupt for the running call pending? */
static inline int fp_main_pending(fp_slot *s)
{
    uint64_t g;
    if (s == NULL || s->unordered)
        return 0;
    g = __atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE);
    if (g == 0 || s->delivered)
        return 0;
    return g == s->armed_gen || fp_cpu_watch_of(s, g) >= 0;
}

static inline fp_slot *fp_slot_peek(void) { return fp_tls_slot; }

#endif /* FASTPATH_RUNTIME_H */
