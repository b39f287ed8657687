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
    uint64_t tsc1;
    int64_t ns1;
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

typedef struct fp_slot {
    /* -- written by the owning thread under the seqlock, read by the watchdog -- */
    uint64_t seq;             /* odd while the owner rewrites the fields below */
    uint64_t armed_gen;       /* generation owning interrupt_at_ns; 0 = none */
    int64_t interrupt_at_ns;  /* CLOCK_MONOTONIC ns to interrupt at; INT64_MAX = never */
    int interrupt_kind;       /* violation kind an interrupt at that time means */
    uint64_t cpu_gen;         /* generation of the CPU-limited call watched; 0 = none */
    int64_t cpu_limit_ns;     /* its CPU allowance */
    int cpu_interrupt;        /* interrupt it when the allowance is crossed */
    /* -- owner only -- */
    uint64_t next_gen;        /* last generation handed out on this slot */
    /* -- written by the watchdog -- */
    uint64_t cpu_sample_gen;  /* cpu_gen the sample below belongs to */
    int64_t cpu_sample_ns;    /* the thread's CPU clock at the sample */
    int64_t cpu_sample_wall_ns; /* CLOCK_MONOTONIC at the sample */
    uint64_t fire_gen;        /* generation an interrupt was sent for; 0 = none */
    int fire_kind;            /* violation kind of that interrupt */
    int64_t fire_ns;          /* when it was sent */
    int delivered;            /* the main-thread handler raised it */
    /* -- identity, fixed while in use -- */
    pthread_t thread;
    unsigned long py_ident;   /* PyThread_get_thread_ident() of the owner */
    clockid_t cpu_clock;      /* the owner's CPU clock, readable from the watchdog */
    int has_cpu_clock;
    int in_use;               /* 0 once the owner exited: the slot awaits reuse */
    int is_main;              /* owner is the thread the preemption signal goes to */
    /* -- watchdog private -- */
    uint64_t wd_seen_seq;
    int64_t wd_refire_at_ns;
    /* -- memory accounting, owner only (see _fp_memhook.h) -- */
    fp_mem mem;
    struct fp_slot *next;
} fp_slot;

/* What enforce() saves on its C stack when it arms, restored on disarm: this
 * is what makes nested budgets work without any allocation. */
typedef struct {
    uint64_t armed_gen;
    int64_t interrupt_at_ns;
    int interrupt_kind;
    uint64_t cpu_gen;
    int64_t cpu_limit_ns;
    int cpu_interrupt;
    uint64_t cpu_sample_gen;
    int64_t cpu_sample_ns;
    int64_t cpu_sample_wall_ns;
    fp_mem_session mem;       /* the enclosing memory session */
} fp_saved;

static __thread fp_slot *fp_tls_slot __attribute__((tls_model("initial-exec"))) = NULL;
static pthread_mutex_t fp_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static fp_slot *fp_registry = NULL;
static pthread_key_t fp_slot_key;
static int fp_slot_key_ready = 0;
static pthread_t fp_main_thread;
static int fp_main_thread_known = 0;
static int fp_preempt_signal = 0;     /* 0 = main thread served through the GIL path */

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
    s->cpu_gen = 0;
    s->fire_gen = 0;
    s->delivered = 0;
    fp_mem_thread_reset(&s->mem);
    if (s->next_gen == 0) {
        /* Generations are unique across slots too (2**40 per slot): a budget
         * looked at from another thread can never match this thread's call. */
        static uint64_t slot_serial = 0;
        s->next_gen = ++slot_serial << 40;
    }
    s->thread = pthread_self();
    s->py_ident = PyThread_get_thread_ident();
    s->has_cpu_clock = (pthread_getcpuclockid(s->thread, &s->cpu_clock) == 0);
    s->is_main = fp_main_thread_known && pthread_equal(s->thread, fp_main_thread);
    s->in_use = 1;
    pthread_mutex_unlock(&fp_registry_lock);
    pthread_setspecific(fp_slot_key, s);
    fp_tls_slot = s;
    fp_tls_mem = &s->mem;
    return s;
}

/* The calling thread's slot, created on first use (NULL: out of memory). */
static inline fp_slot *fp_slot_get(void)
{
    fp_slot *s = fp_tls_slot;
    return FP_LIKELY(s != NULL) ? s : fp_slot_create();
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

/* ---------------------------------------------------------------- watchdog */

#define FP_WD_TICK_NS 250000LL            /* look for newly armed calls every 0.25 ms */
#define FP_WD_IDLE_TICKS 400              /* park after ~100 ms without any arm */
#define FP_WD_REFIRE_NS 2000000LL         /* re-send an interrupt that was swallowed */
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
static PyObject *fp_interrupt_type = NULL;   /* ExecutionInterrupted (strong ref) */

/* Fast GIL hand-over for interrupts to non-main threads.  A thread waiting
 * for the GIL asks the holder to drop it only after waiting one switch
 * interval (5 ms by default).  For its own request the watchdog lowers the
 * interval to FP_FAST_GIL_US and restores it as soon as it holds the GIL
 * (unless someone changed it meanwhile): the interrupt lands ~0.1 ms after the
 * deadline instead of ~5 ms.  FASTPATH_FAST_GIL=0 leaves the interval alone. */
#define FP_FAST_GIL_US 100UL
#if PY_VERSION_HEX < 0x030D0000
#define FP_HAVE_SWITCH_INTERVAL_API 1
#else
#define FP_HAVE_SWITCH_INTERVAL_API 0
#endif
static int fp_fast_gil = FP_HAVE_SWITCH_INTERVAL_API;
static unsigned long fp_fast_gil_saved = 0;  /* interval to restore; 0: none in flight */
static int fp_preempt_enabled = 1;
static uint64_t fp_wd_ticks = 0;
static uint64_t fp_wd_fires = 0;

typedef struct {
    fp_slot *slot;
    uint64_t gen;
    int kind;
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

/* Deliver to threads that need the GIL (every thread but the signalled main
 * thread).  Called by the watchdog without the GIL and without any lock. */
static void fp_wd_deliver_gil(fp_fire *fires, int n)
{
    int i;
    if (n == 0 || fp_interrupt_type == NULL)
        return;
    if (FP_IS_FINALIZING() || fp_wd_stop)
        return;
#if FP_HAVE_SWITCH_INTERVAL_API
    if (fp_fast_gil) {
        unsigned long interval = _PyEval_GetSwitchInterval();
        if (interval > FP_FAST_GIL_US) {
            fp_fast_gil_saved = interval;
            _PyEval_SetSwitchInterval(FP_FAST_GIL_US);
        }
    }
#endif
    if (fp_wd_tstate == NULL) {
        PyGILState_STATE st = PyGILState_Ensure();    /* first time: our own thread state */
        (void)st;
    } else {
        PyEval_RestoreThread(fp_wd_tstate);
    }
#if FP_HAVE_SWITCH_INTERVAL_API
    if (fp_fast_gil_saved) {
        /* With the GIL held nobody can call sys.setswitchinterval() now; if
         * someone did while we waited, keep their value. */
        if (_PyEval_GetSwitchInterval() == FP_FAST_GIL_US)
            _PyEval_SetSwitchInterval(fp_fast_gil_saved);
        fp_fast_gil_saved = 0;
    }
#endif
    for (i = 0; i < n; i++) {
        fp_slot *s = fires[i].slot;
        uint64_t g = fires[i].gen;
        /* Under the GIL the owner cannot be between its checks: if the
         * generation is still armed, the interrupt is for this very call. */
        if (!s->in_use || (s->armed_gen != g && s->cpu_gen != g))
            continue;
        s->fire_kind = fires[i].kind;
        s->fire_ns = fp_now_ns();
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
        if (s->in_use && (seq != s->wd_seen_seq || s->armed_gen || s->cpu_gen))
            changed = 1;
        s->wd_seen_seq = seq;
    }
    return changed;
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
            uint64_t seq1, seq2, armed_gen, cpu_gen;
            int64_t interrupt_at, cpu_limit;
            int interrupt_kind, cpu_interrupt;
            int fire_kind = 0;
            uint64_t fire_gen = 0;

            if (!s->in_use)
                continue;
            seq1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
            if (seq1 != s->wd_seen_seq) {
                active = 1;
                s->wd_seen_seq = seq1;
            }
            if (seq1 & 1) {         /* owner mid-write: look again next tick */
                active = 1;
                continue;
            }
            armed_gen = s->armed_gen;
            interrupt_at = s->interrupt_at_ns;
            interrupt_kind = s->interrupt_kind;
            cpu_gen = s->cpu_gen;
            cpu_limit = s->cpu_limit_ns;
            cpu_interrupt = s->cpu_interrupt;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            seq2 = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
            if (seq1 != seq2) {
                active = 1;
                continue;
            }
            if (armed_gen == 0 && cpu_gen == 0)
                continue;
            active = 1;

            /* CPU: sample once per call, then re-read until the allowance is
             * crossed.  CPU time cannot grow faster than wall time, so the next
             * look is due no earlier than (allowance - used) from now. */
            if (cpu_gen && s->has_cpu_clock) {
                if (__atomic_load_n(&s->cpu_sample_gen, __ATOMIC_ACQUIRE) != cpu_gen) {
                    int64_t c = fp_clock_ns(s->cpu_clock);
                    if (c >= 0) {
                        s->cpu_sample_ns = c;
                        s->cpu_sample_wall_ns = now;
                        __atomic_store_n(&s->cpu_sample_gen, cpu_gen, __ATOMIC_RELEASE);
                        if (now + cpu_limit < next_wake)
                            next_wake = now + cpu_limit;
                    }
                } else if (cpu_interrupt) {
                    int64_t c = fp_clock_ns(s->cpu_clock);
                    if (c >= 0) {
                        int64_t used = c - s->cpu_sample_ns;
                        if (used >= cpu_limit) {
                            fire_gen = cpu_gen;
                            fire_kind = FP_CPU;
                        } else if (now + (cpu_limit - used) < next_wake) {
                            next_wake = now + (cpu_limit - used);
                        }
                    }
                }
            }
            if (!fire_gen && armed_gen) {
                if (interrupt_at <= now) {
                    fire_gen = armed_gen;
                    fire_kind = interrupt_kind;
                } else if (interrupt_at < next_wake) {
                    next_wake = interrupt_at;
                }
            }
            if (fire_gen && fp_preempt_enabled) {
                uint64_t prev = __atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE);
                if (prev == fire_gen && now < s->wd_refire_at_ns)
                    continue;       /* already sent; wait before re-sending */
                s->wd_refire_at_ns = now + FP_WD_REFIRE_NS;
                if (s->is_main && fp_preempt_signal) {
                    /* The main thread runs the signal's Python handler at its
                     * next eval-breaker check and raises there, after checking
                     * that this generation is still armed: no stray interrupt. */
                    s->fire_kind = fire_kind;
                    s->fire_ns = now;
                    s->delivered = 0;
                    __atomic_store_n(&s->fire_gen, fire_gen, __ATOMIC_RELEASE);
                    pthread_kill(s->thread, fp_preempt_signal);
                    fp_wd_fires++;
                } else if (n_gil < FP_WD_MAX_BATCH) {
                    gil_fires[n_gil].slot = s;
                    gil_fires[n_gil].gen = fire_gen;
                    gil_fires[n_gil].kind = fire_kind;
                    n_gil++;
                }
            }
        }
        pthread_mutex_unlock(&fp_registry_lock);

        fp_wd_deliver_gil(gil_fires, n_gil);

        if (active || !calibrated) {
            idle_ticks = 0;
        } else if (++idle_ticks >= FP_WD_IDLE_TICKS) {
            /* Park.  An owner arms with plain stores and then reads fp_wd_parked
             * with a plain load; membarrier() makes every thread's earlier
             * stores visible before we look at the slots one last time, so
             * either we see the arm or the owner sees parked = 1 and wakes us. */
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
            idle_ticks = 0;
            continue;
        }
        ts.tv_sec = next_wake / 1000000000LL;
        ts.tv_nsec = next_wake % 1000000000LL;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
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
    pthread_join(fp_wd_thread, NULL);
    PyEval_RestoreThread(ts);
    if (fp_wd_tstate != NULL) {
        /* Still ours and detached from any thread: clear it with the GIL. */
        PyThreadState_Clear(fp_wd_tstate);
        PyThreadState_Delete(fp_wd_tstate);
        fp_wd_tstate = NULL;
    }
    __atomic_store_n(&fp_wd_running, 0, __ATOMIC_RELEASE);
}

/* In a forked child only the forking thread exists: forget the watchdog (the
 * interpreter deletes its thread state itself) and every other slot. */
static void fp_atfork_child(void)
{
    fp_slot *s;
    pthread_mutex_init(&fp_registry_lock, NULL);
    pthread_mutex_init(&fp_wd_lock, NULL);
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
    for (s = fp_registry; s; s = s->next) {
        if (s != fp_tls_slot) {
            s->in_use = 0;
            s->has_cpu_clock = 0;
        } else {
            s->thread = pthread_self();
            s->py_ident = PyThread_get_thread_ident();
            s->has_cpu_clock = (pthread_getcpuclockid(s->thread, &s->cpu_clock) == 0);
            s->is_main = 1;     /* the forking thread is the child's main thread */
        }
    }
    if (fp_main_thread_known)
        fp_main_thread = pthread_self();
}

/* ------------------------------------------------------------- arm/disarm */

/* Arm the calling thread's slot for one enforce() call.  interrupt_at is the
 * time to interrupt the call at (INT64_MAX: never); cpu_limit_ns < 0 means no
 * CPU watch.  Nested calls keep the earliest interrupt time. */
static inline uint64_t fp_arm(fp_slot *s, fp_saved *sv, int64_t interrupt_at, int interrupt_kind,
                              int64_t cpu_limit_ns, int cpu_interrupt)
{
    uint64_t gen = ++s->next_gen;
    sv->armed_gen = s->armed_gen;
    sv->interrupt_at_ns = s->interrupt_at_ns;
    sv->interrupt_kind = s->interrupt_kind;
    sv->cpu_gen = s->cpu_gen;
    sv->cpu_limit_ns = s->cpu_limit_ns;
    sv->cpu_interrupt = s->cpu_interrupt;
    sv->cpu_sample_gen = s->cpu_sample_gen;
    sv->cpu_sample_ns = s->cpu_sample_ns;
    sv->cpu_sample_wall_ns = s->cpu_sample_wall_ns;
    fp_seq_begin(s);
    if (s->armed_gen == 0 || interrupt_at < s->interrupt_at_ns) {
        /* this call's interrupt comes first: it owns the slot's deadline */
        s->interrupt_at_ns = interrupt_at;
        s->interrupt_kind = interrupt_kind;
        s->armed_gen = gen;
    }
    if (cpu_limit_ns >= 0) {
        s->cpu_gen = gen;
        s->cpu_limit_ns = cpu_limit_ns;
        s->cpu_interrupt = cpu_interrupt;
    }
    fp_seq_end(s);
    if (FP_UNLIKELY(__atomic_load_n(&fp_wd_parked, __ATOMIC_RELAXED)))
        fp_wd_wake();
    return gen;
}

/* Disarm: restore what the enclosing call (if any) had armed.  Returns 1 when
 * the watchdog sent an interrupt for this generation; the caller then clears
 * a possibly still pending asynchronous exception (GIL path). */
static inline int fp_disarm(fp_slot *s, const fp_saved *sv, uint64_t gen)
{
    int fired = (__atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE) == gen);
    fp_seq_begin(s);
    s->armed_gen = sv->armed_gen;
    s->interrupt_at_ns = sv->interrupt_at_ns;
    s->interrupt_kind = sv->interrupt_kind;
    if (s->cpu_gen == gen) {
        s->cpu_gen = sv->cpu_gen;
        s->cpu_limit_ns = sv->cpu_limit_ns;
        s->cpu_interrupt = sv->cpu_interrupt;
    }
    fp_seq_end(s);
    if (sv->cpu_gen && sv->cpu_sample_gen == sv->cpu_gen
        && __atomic_load_n(&s->cpu_sample_gen, __ATOMIC_ACQUIRE) != sv->cpu_gen) {
        /* An inner CPU watch replaced the enclosing call's sample: put it back
         * (any interleaving with the watchdog leaves a valid lower bound). */
        s->cpu_sample_ns = sv->cpu_sample_ns;
        s->cpu_sample_wall_ns = sv->cpu_sample_wall_ns;
        __atomic_store_n(&s->cpu_sample_gen, sv->cpu_sample_gen, __ATOMIC_RELEASE);
    }
    return fired;
}

/* The call itself: fn(*args, **kwargs), with the memory session (if any)
 * ended in C the moment fn returns, before any of the caller's own work
 * (building a traceback entry, a violation, stats) can be counted or refused. */
static inline PyObject *fp_run_call(fp_slot *s, fp_saved *sv, int mem_on, fp_mem_session *mem_out,
                                    PyObject *fn, PyObject **args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, kwnames);
    if (mem_on)
        fp_mem_disarm(&s->mem, &sv->mem, mem_out);
    return r;
}

/* The watchdog's CPU sample for generation gen, if it took one. */
static inline int fp_cpu_sample(fp_slot *s, uint64_t gen, int64_t *cpu_ns, int64_t *wall_ns)
{
    if (__atomic_load_n(&s->cpu_sample_gen, __ATOMIC_ACQUIRE) != gen)
        return 0;
    *cpu_ns = s->cpu_sample_ns;
    *wall_ns = s->cpu_sample_wall_ns;
    /* re-check: the watchdog writes the gen last */
    return __atomic_load_n(&s->cpu_sample_gen, __ATOMIC_ACQUIRE) == gen;
}

/* Main-thread signal handler body: should an interrupt be raised now? */
static inline int fp_main_should_raise(fp_slot *s)
{
    uint64_t g;
    if (s == NULL)
        return 0;
    g = __atomic_load_n(&s->fire_gen, __ATOMIC_ACQUIRE);
    if (g == 0 || s->delivered)
        return 0;
    if (g != s->armed_gen && g != s->cpu_gen)
        return 0;
    s->delivered = 1;
    return 1;
}

static inline fp_slot *fp_slot_peek(void) { return fp_tls_slot; }

static inline void fp_set_main_thread(int signum)
{
    fp_slot *s;
    fp_main_thread = pthread_self();
    fp_main_thread_known = 1;
    pthread_mutex_lock(&fp_registry_lock);
    for (s = fp_registry; s; s = s->next)
        s->is_main = s->in_use && pthread_equal(s->thread, fp_main_thread);
    pthread_mutex_unlock(&fp_registry_lock);
    fp_preempt_signal = signum;
}

#endif /* FASTPATH_RUNTIME_H */
