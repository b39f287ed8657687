/* fastpath.wasm: the few wasmtime C API types and functions fastpath._wasm uses,
 * declared here so the extension compiles without wasmtime's headers.  The
 * functions are resolved at run time (dlsym) from the very library the
 * `wasmtime` Python package loaded, so both always agree on the version; the
 * struct layouts below are wasmtime 50's and _wasm checks them at import
 * against the ctypes layouts of that package.
 *
 * Also here: the epoch ticker (one C thread, no GIL) and the linear memory that
 * fastpath's engines give their guests (it enforces the store's memory limit
 * and records a refused memory.grow).
 */
#ifndef FP_WASM_H
#define FP_WASM_H

#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* ------------------------------------------------------------------ types */
typedef struct fpw_engine fpw_engine;       /* wasm_engine_t */
typedef struct fpw_config fpw_config;       /* wasm_config_t */
typedef struct fpw_store fpw_store;         /* wasmtime_store_t */
typedef struct fpw_context fpw_context;     /* wasmtime_context_t */
typedef struct fpw_error fpw_error;         /* wasmtime_error_t */
typedef struct fpw_trap fpw_trap;           /* wasm_trap_t */
typedef struct fpw_linker fpw_linker;       /* wasmtime_linker_t */
typedef struct fpw_module fpw_module;       /* wasmtime_module_t */
typedef struct fpw_instance_pre fpw_instance_pre;
typedef struct fpw_caller fpw_caller;       /* wasmtime_caller_t */
typedef struct fpw_functype fpw_functype;   /* wasm_functype_t */
typedef struct fpw_memorytype fpw_memorytype;

typedef struct { size_t size; char *data; } fpw_byte_vec;          /* wasm_byte_vec_t */
typedef struct { uint64_t store_id; void *private_; } fpw_func;     /* wasmtime_func_t */
typedef struct { uint64_t store_id; size_t private_; } fpw_instance;
typedef struct { uint64_t store_id; uint32_t private1; uint32_t private2; uint32_t private3; }
    fpw_memory;                                                     /* wasmtime_memory_t */

/* wasmtime_val_t: a kind byte and a 24-byte union (refs are the largest). */
#define FPW_I32 0
#define FPW_I64 1
#define FPW_F32 2
#define FPW_F64 3
typedef union {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint64_t raw[3];
} fpw_valunion;
typedef struct { uint8_t kind; fpw_valunion of; } fpw_val;

/* wasmtime_val_raw_t: what wasmtime_func_call_unchecked reads the arguments
 * from and writes the results to (no kind: the function's type says). */
typedef union {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint8_t v128[16];
    uint32_t anyref;
    uint32_t externref;
    uint32_t exnref;
    void *funcref;
} fpw_val_raw;

/* wasmtime_extern_t */
#define FPW_EXTERN_FUNC 0
typedef union { fpw_func func; fpw_memory memory; uint64_t raw[3]; } fpw_extern_union;
typedef struct { uint8_t kind; fpw_extern_union of; } fpw_extern;

/* wasmtime_linear_memory_t / wasmtime_memory_creator_t */
typedef uint8_t *(*fpw_mem_get_cb)(void *env, size_t *byte_size, size_t *maximum_byte_size);
typedef fpw_error *(*fpw_mem_grow_cb)(void *env, size_t new_size);
typedef struct {
    void *env;
    fpw_mem_get_cb get_memory;
    fpw_mem_grow_cb grow_memory;
    void (*finalizer)(void *);
} fpw_linear_memory;
typedef fpw_error *(*fpw_new_memory_cb)(void *env, const fpw_memorytype *ty, size_t minimum,
                                        size_t maximum, size_t reserved_size_in_bytes,
                                        size_t guard_size_in_bytes, fpw_linear_memory *ret);
typedef struct {
    void *env;
    fpw_new_memory_cb new_memory;
    void (*finalizer)(void *);
} fpw_memory_creator;

typedef fpw_trap *(*fpw_host_cb)(void *env, fpw_caller *caller, const fpw_val *args,
                                 size_t nargs, fpw_val *results, size_t nresults);
typedef fpw_error *(*fpw_epoch_cb)(fpw_context *ctx, void *data, uint64_t *delta,
                                   uint8_t *update_kind);

#define FPW_TRAP_OUT_OF_FUEL 11

/* ----------------------------------------------------- the resolved functions */
typedef struct {
    fpw_store *(*store_new)(fpw_engine *, void *, void (*)(void *));
    fpw_context *(*store_context)(fpw_store *);
    void (*store_delete)(fpw_store *);
    void (*store_epoch_deadline_callback)(fpw_store *, fpw_epoch_cb, void *, void (*)(void *));
    void *(*context_get_data)(const fpw_context *);
    fpw_error *(*context_set_fuel)(fpw_context *, uint64_t);
    fpw_error *(*context_get_fuel)(const fpw_context *, uint64_t *);
    void (*context_set_epoch_deadline)(fpw_context *, uint64_t);
    fpw_context *(*caller_context)(fpw_caller *);
    void (*engine_increment_epoch)(fpw_engine *);
    fpw_linker *(*linker_new)(fpw_engine *);
    void (*linker_delete)(fpw_linker *);
    fpw_error *(*linker_define_func)(fpw_linker *, const char *, size_t, const char *, size_t,
                                     const fpw_functype *, fpw_host_cb, void *,
                                     void (*)(void *));
    fpw_error *(*linker_instantiate_pre)(const fpw_linker *, const fpw_module *,
                                         fpw_instance_pre **);
    fpw_error *(*instance_pre_instantiate)(const fpw_instance_pre *, fpw_context *,
                                           fpw_instance *, fpw_trap **);
    void (*instance_pre_delete)(fpw_instance_pre *);
    int (*instance_export_get)(fpw_context *, const fpw_instance *, const char *, size_t,
                               fpw_extern *);
    fpw_error *(*func_call_unchecked)(fpw_context *, const fpw_func *, fpw_val_raw *, size_t,
                                      fpw_trap **);
    int (*trap_code)(const fpw_trap *, uint8_t *);
    void (*trap_message)(const fpw_trap *, fpw_byte_vec *);
    void (*trap_delete)(fpw_trap *);
    fpw_trap *(*trap_new)(const char *, size_t);
    void (*error_message)(const fpw_error *, fpw_byte_vec *);
    void (*error_delete)(fpw_error *);
    fpw_error *(*error_new)(const char *);
    void (*byte_vec_delete)(fpw_byte_vec *);
    void (*config_host_memory_creator_set)(fpw_config *, const fpw_memory_creator *);
} fpw_api_t;

static fpw_api_t fpw_api;
static void *fpw_lib = NULL;

/* Resolve every function from the already-loaded library at `path`; returns
 * NULL or the name of the first symbol missing. */
static const char *fpw_resolve(const char *path)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        return "(the library itself: `import wasmtime` did not load it)";
#define FPW_SYM(field, name)                                   \
    do {                                                       \
        *(void **)(&fpw_api.field) = dlsym(lib, name);         \
        if (fpw_api.field == NULL) return name;                \
    } while (0)
    FPW_SYM(store_new, "wasmtime_store_new");
    FPW_SYM(store_context, "wasmtime_store_context");
    FPW_SYM(store_delete, "wasmtime_store_delete");
    FPW_SYM(store_epoch_deadline_callback, "wasmtime_store_epoch_deadline_callback");
    FPW_SYM(context_get_data, "wasmtime_context_get_data");
    FPW_SYM(context_set_fuel, "wasmtime_context_set_fuel");
    FPW_SYM(context_get_fuel, "wasmtime_context_get_fuel");
    FPW_SYM(context_set_epoch_deadline, "wasmtime_context_set_epoch_deadline");
    FPW_SYM(caller_context, "wasmtime_caller_context");
    FPW_SYM(engine_increment_epoch, "wasmtime_engine_increment_epoch");
    FPW_SYM(linker_new, "wasmtime_linker_new");
    FPW_SYM(linker_delete, "wasmtime_linker_delete");
    FPW_SYM(linker_define_func, "wasmtime_linker_define_func");
    FPW_SYM(linker_instantiate_pre, "wasmtime_linker_instantiate_pre");
    FPW_SYM(instance_pre_instantiate, "wasmtime_instance_pre_instantiate");
    FPW_SYM(instance_pre_delete, "wasmtime_instance_pre_delete");
    FPW_SYM(instance_export_get, "wasmtime_instance_export_get");
    FPW_SYM(func_call_unchecked, "wasmtime_func_call_unchecked");
    FPW_SYM(trap_code, "wasmtime_trap_code");
    FPW_SYM(trap_message, "wasm_trap_message");
    FPW_SYM(trap_delete, "wasm_trap_delete");
    FPW_SYM(trap_new, "wasmtime_trap_new");
    FPW_SYM(error_message, "wasmtime_error_message");
    FPW_SYM(error_delete, "wasmtime_error_delete");
    FPW_SYM(error_new, "wasmtime_error_new");
    FPW_SYM(byte_vec_delete, "wasm_byte_vec_delete");
    FPW_SYM(config_host_memory_creator_set, "wasmtime_config_host_memory_creator_set");
#undef FPW_SYM
    fpw_lib = lib;      /* one reference held for the life of the process */
    return NULL;
}

static inline int64_t fpw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t fpw_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --------------------------------------------------- one pooled instance */
typedef struct fpw_inst {
    fpw_store *store;
    fpw_context *ctx;
    fpw_instance instance;
    fpw_func func;              /* the hook's export */
    int64_t deadline_ns;        /* this call's wall deadline (CLOCK_MONOTONIC) */
    int deadline_hit;           /* the epoch callback stopped the guest: deadline */
    int64_t cpu_allow_ns;       /* this call's CPU allowance, or -1 */
    int64_t cpu_base_ns;        /* thread CPU clock at the first epoch callback, or -1 */
    int cpu_hit;                /* the epoch callback stopped the guest: CPU allowance */
    int64_t mem_limit;          /* bytes the guest's linear memories may grow to, or -1 */
    int64_t mem_refused;        /* largest size a refused grow asked for (this call), or 0 */
    int64_t mem_bytes;          /* linear memory bytes of this instance (all memories) */
    void *host_exc;             /* PyObject*: an exception a host import raised (owned) */
    int gil_held;               /* the guest was entered holding the GIL, not yet released */
    PyThreadState *gil_saved;   /* the epoch callback released the GIL: the thread state */
} fpw_inst;

/* The instance being created on this thread: its linear memories belong to it. */
static __thread fpw_inst *fpw_creating = NULL;

/* ------------------------------------------------ the epoch deadline */
#define FPW_TICK_NS 500000          /* epoch period while a call is in flight */

/* When the ticker's next tick falls due (CLOCK_MONOTONIC; in the past while it
 * sleeps): its ticks follow a grid of FPW_TICK_NS from its wake-up. */
static _Atomic int64_t fpw_next_tick_ns = 0;
/* The earliest deadline a call asked the ticker to wake for (INT64_MAX: none):
 * the ticker also ticks then, off its grid, so a guest whose deadline falls
 * between two ticks is stopped at it, not up to a period later. */
static _Atomic int64_t fpw_wake_at_ns = INT64_MAX;

static inline void fpw_wake_at(int64_t deadline_ns)
{
    int64_t cur = atomic_load_explicit(&fpw_wake_at_ns, memory_order_relaxed);
    while (deadline_ns < cur
           && !atomic_compare_exchange_weak_explicit(&fpw_wake_at_ns, &cur, deadline_ns,
                                                     memory_order_relaxed,
                                                     memory_order_relaxed)) {
    }
}

/* Ticks from now to the first grid tick at or after deadline_ns (at least 1),
 * the next grid tick being due at `first`: a store's epoch deadline that stops
 * its guest on the first tick past its deadline, not up to a period later. */
static inline uint64_t fpw_ticks_until_from(int64_t deadline_ns, int64_t now, int64_t first)
{
    if (first <= now)
        first = now + FPW_TICK_NS;      /* asleep (wakes with the call), or ticking now */
    if (deadline_ns <= first)
        return 1;
    return (uint64_t)((deadline_ns - first + FPW_TICK_NS - 1) / FPW_TICK_NS) + 1;
}

static inline uint64_t fpw_ticks_until(int64_t deadline_ns, int64_t now)
{
    return fpw_ticks_until_from(deadline_ns, now,
                                atomic_load_explicit(&fpw_next_tick_ns, memory_order_relaxed));
}

/* One wake-up of the ticker at `now`: the epoch ticks it advances, with
 * *next_ns (the next grid tick) moved past now; wake_due: a call's deadline
 * (fpw_wake_at) fell due by now.  That deadline's tick is one of its own even
 * when grid ticks fell due in the same wake-up (a late wake-up for the grid
 * tick just before it): the store's epoch deadline counts the grid ticks up to
 * the first one at or after its deadline (fpw_ticks_until), so a deadline's
 * tick merged into a grid tick's left the guest running for one more period.
 * An extra tick costs a store with time left one early callback, which reads
 * the clock and goes on. */
static inline int fpw_ticks_at_wake(int64_t *next_ns, int64_t now, int wake_due)
{
    int ticks = wake_due ? 1 : 0;
    while (*next_ns <= now) {
        ticks++;
        *next_ns += FPW_TICK_NS;
    }
    return ticks;
}

static fpw_error *fpw_epoch_callback(fpw_context *ctx, void *data, uint64_t *delta,
                                     uint8_t *update_kind)
{
    /* Each store checks its own deadline: an epoch tick meant for another
     * store's call never stops one that still has time.  With a CPU allowance
     * the callback also comes every tick after the first and reads this
     * thread's CPU clock: CPU used since the first reading is a lower bound of
     * the call's, so it never stops a guest early, and misses at most the
     * first tick. */
    fpw_inst *inst = (fpw_inst *)data;
    int64_t now, left, cpu;
    (void)ctx;
    if (inst->gil_held) {
        /* The guest was entered with the GIL held (a call of a microsecond
         * is not worth the hand-off); from its first tick on it runs
         * without, so other threads do.  fpw_gil_back takes it back. */
        inst->gil_held = 0;
        inst->gil_saved = PyEval_SaveThread();
    }
    now = fpw_now_ns();
    left = inst->deadline_ns - now;
    if (left <= 0) {
        inst->deadline_hit = 1;
        return fpw_api.error_new("fastpath: wall-clock deadline reached (epoch interruption)");
    }
    *update_kind = 0;       /* WASMTIME_UPDATE_DEADLINE_CONTINUE */
    fpw_wake_at(inst->deadline_ns);     /* (an earlier call's wake-up may have taken its place) */
    if (inst->cpu_allow_ns >= 0) {
        cpu = fpw_thread_cpu_ns();
        if (inst->cpu_base_ns < 0) {
            inst->cpu_base_ns = cpu;
        } else if (cpu - inst->cpu_base_ns >= inst->cpu_allow_ns) {
            inst->cpu_hit = 1;
            return fpw_api.error_new("fastpath: CPU allowance used up (thread CPU clock)");
        }
        *delta = 1;
        return NULL;
    }
    *delta = fpw_ticks_until(inst->deadline_ns, now);
    return NULL;
}

/* ------------------------------------------------ the epoch ticker */
#define FPW_MAX_ENGINES 64
#define FPW_IDLE_NS 1000000         /* time without a call before the ticker sleeps */
static struct { fpw_engine *engine; long refs; } fpw_engines[FPW_MAX_ENGINES];
static pthread_mutex_t fpw_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fpw_cv = PTHREAD_COND_INITIALIZER;
static atomic_long fpw_inflight = 0;
static atomic_int fpw_ticker_waiting = 0;   /* the ticker waits on fpw_cv for a call */
static atomic_int fpw_recent = 0;           /* a call began since the ticker last looked */
static int fpw_ticker_started = 0;
static atomic_ulong fpw_ticks = 0;      /* epochs advanced, for tests and stats */

static void *fpw_ticker_main(void *arg)
{
    /* The epoch counts FPW_TICK_NS periods of real time from the moment a
     * call wakes the ticker until FPW_IDLE_NS has passed without a call in
     * flight or begun (seen at a tick): a late wake-up advances it by every period
     * that passed, so a store's deadline in ticks stays a deadline in time.
     * A caller wakes the ticker only when it waits (fpw_call_begin): a stream
     * of calls costs one atomic add each, no lock. */
    struct timespec until;
    int64_t next_ns, now, busy_ns, wake_ns;
    int i, ticks;
    (void)arg;
#ifdef PR_SET_TIMERSLACK
    /* wake at the tick or the deadline, not up to the default 50 us after */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
#endif
#ifdef PR_SET_NAME
    prctl(PR_SET_NAME, (unsigned long)"fastpath-wasm", 0, 0, 0);
#endif
    pthread_mutex_lock(&fpw_mu);
    for (;;) {
        /* seq_cst store, then load: with fpw_call_begin's add, then load,
         * either the caller sees the ticker waiting or the ticker sees the call */
        atomic_store(&fpw_ticker_waiting, 1);
        while (atomic_load(&fpw_inflight) == 0)
            pthread_cond_wait(&fpw_cv, &fpw_mu);       /* idle: no calls in flight */
        atomic_store(&fpw_ticker_waiting, 0);
        next_ns = busy_ns = fpw_now_ns();
        atomic_store_explicit(&fpw_next_tick_ns, next_ns + FPW_TICK_NS, memory_order_relaxed);
        for (;;) {
            /* sleep to the next grid point, or to a call's deadline before it */
            wake_ns = atomic_load_explicit(&fpw_wake_at_ns, memory_order_relaxed);
            if (wake_ns > next_ns)
                wake_ns = next_ns;
            until.tv_sec = (time_t)(wake_ns / 1000000000);
            until.tv_nsec = (long)(wake_ns % 1000000000);
            pthread_mutex_unlock(&fpw_mu);
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {
            }
            pthread_mutex_lock(&fpw_mu);
            now = fpw_now_ns();
            wake_ns = atomic_load_explicit(&fpw_wake_at_ns, memory_order_relaxed);
            if (wake_ns <= now)
                atomic_compare_exchange_strong_explicit(&fpw_wake_at_ns, &wake_ns, INT64_MAX,
                                                        memory_order_relaxed,
                                                        memory_order_relaxed);
            ticks = fpw_ticks_at_wake(&next_ns, now, wake_ns <= now);
            for (; ticks > 0; ticks--) {
                for (i = 0; i < FPW_MAX_ENGINES; i++)
                    if (fpw_engines[i].refs > 0)
                        fpw_api.engine_increment_epoch(fpw_engines[i].engine);
                atomic_fetch_add_explicit(&fpw_ticks, 1, memory_order_relaxed);
            }
            atomic_store_explicit(&fpw_next_tick_ns, next_ns, memory_order_relaxed);
            if (atomic_load(&fpw_inflight) != 0
                    || atomic_exchange_explicit(&fpw_recent, 0, memory_order_relaxed))
                busy_ns = now;
            else if (now - busy_ns >= FPW_IDLE_NS)
                break;
        }
    }
    return NULL;
}

/* Register (delta=+1) or release (-1) an engine with the ticker; 0 or -1. */
static int fpw_engine_ref(fpw_engine *engine, int delta)
{
    int i, free_i = -1, rc = -1;
    pthread_mutex_lock(&fpw_mu);
    if (!fpw_ticker_started) {
        pthread_t tid;
        pthread_attr_t attr;
        sigset_t all, old;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* The ticker never takes the process's signals (a SIGINT it took
         * would not interrupt the main thread's sleep). */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (pthread_create(&tid, &attr, fpw_ticker_main, NULL) == 0)
            fpw_ticker_started = 1;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (!fpw_ticker_started) {
            pthread_mutex_unlock(&fpw_mu);
            return -1;
        }
    }
    for (i = 0; i < FPW_MAX_ENGINES; i++) {
        if (fpw_engines[i].refs > 0 && fpw_engines[i].engine == engine) {
            fpw_engines[i].refs += delta;
            rc = 0;
            break;
        }
        if (fpw_engines[i].refs <= 0 && free_i < 0)
            free_i = i;
    }
    if (rc != 0 && delta > 0 && free_i >= 0) {
        fpw_engines[free_i].engine = engine;
        fpw_engines[free_i].refs = 1;
        rc = 0;
    }
    pthread_mutex_unlock(&fpw_mu);
    return rc;
}

static inline void fpw_call_begin(void)
{
    atomic_fetch_add(&fpw_inflight, 1);
    if (!atomic_load_explicit(&fpw_recent, memory_order_relaxed))
        atomic_store_explicit(&fpw_recent, 1, memory_order_relaxed);
    if (atomic_load(&fpw_ticker_waiting)) {
        pthread_mutex_lock(&fpw_mu);
        pthread_cond_signal(&fpw_cv);
        pthread_mutex_unlock(&fpw_mu);
    }
}

static inline void fpw_call_end(void)
{
    atomic_fetch_sub_explicit(&fpw_inflight, 1, memory_order_acq_rel);
}

/* After the guest returned: hold the GIL again if the epoch callback let it go. */
static inline void fpw_gil_back(fpw_inst *inst)
{
    inst->gil_held = 0;
    if (inst->gil_saved != NULL) {
        PyThreadState *ts = inst->gil_saved;
        inst->gil_saved = NULL;
        PyEval_RestoreThread(ts);
    }
}

/* WasmHook is a Python subclass of HookCore: a heap type takes its tp_call from
 * HookCore's `__call__` slot wrapper and, on Python 3.11, never inherits
 * Py_TPFLAGS_HAVE_VECTORCALL, so `hook(...)` would build an args tuple.  Give
 * it HookCore's entry (the caller checked it does not define __call__).  (On
 * 3.11 a later assignment to its __call__ would go unseen by hook(...).) */
static int fpw_inherit_vectorcall(PyTypeObject *type, PyTypeObject *base)
{
    if (!PyType_IsSubtype(type, base) || base->tp_call != PyVectorcall_Call
            || base->tp_vectorcall_offset <= 0
            || type->tp_vectorcall_offset != base->tp_vectorcall_offset) {
        PyErr_Format(PyExc_TypeError, "%s cannot call through %s's vectorcall entry",
                     type->tp_name, base->tp_name);
        return -1;
    }
    type->tp_call = PyVectorcall_Call;
    type->tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL;
    PyType_Modified(type);
    return 0;
}

/* ------------------------------------------------ guests' linear memory */
/* fastpath's engines create every linear memory here: a PROT_NONE reservation
 * (capacity plus guard, so compiled code keeps eliding bounds checks), made
 * accessible as it grows.  A grow past the owning instance's limit fails --
 * the guest's memory.grow returns -1 -- and records the size asked for. */
typedef struct {
    uint8_t *base;
    size_t size;            /* accessible bytes */
    size_t capacity;        /* bytes reachable without moving */
    size_t mapped;          /* capacity + guard */
    fpw_inst *owner;        /* NULL: created outside a fastpath hook (no limit) */
} fpw_linmem;

static uint8_t *fpw_linmem_get(void *env, size_t *byte_size, size_t *maximum_byte_size)
{
    fpw_linmem *m = (fpw_linmem *)env;
    *byte_size = m->size;
    *maximum_byte_size = m->capacity;
    return m->base;
}

static fpw_error *fpw_linmem_grow(void *env, size_t new_size)
{
    fpw_linmem *m = (fpw_linmem *)env;
    fpw_inst *owner = m->owner;
    if (new_size <= m->size)
        return NULL;
    if (owner != NULL && owner->mem_limit >= 0
            && (int64_t)(owner->mem_bytes + (new_size - m->size)) > owner->mem_limit) {
        int64_t asked = owner->mem_bytes + (int64_t)(new_size - m->size);
        if (asked > owner->mem_refused)
            owner->mem_refused = asked;
        return fpw_api.error_new("fastpath: linear memory limit (memory_limit_bytes) reached");
    }
    if (new_size > m->capacity)
        return fpw_api.error_new("fastpath: linear memory reservation exhausted");
    if (mprotect(m->base + m->size, new_size - m->size, PROT_READ | PROT_WRITE) != 0)
        return fpw_api.error_new("fastpath: mprotect failed while growing a linear memory");
    if (owner != NULL)
        owner->mem_bytes += (int64_t)(new_size - m->size);
    m->size = new_size;
    return NULL;
}

static void fpw_linmem_free(void *env)
{
    fpw_linmem *m = (fpw_linmem *)env;
    munmap(m->base, m->mapped);
    free(m);
}

#define FPW_DEFAULT_RESERVATION ((size_t)1 << 32)   /* 4 GiB, wasmtime's own default */

static fpw_error *fpw_new_memory(void *env, const fpw_memorytype *ty, size_t minimum,
                                 size_t maximum, size_t reserved, size_t guard,
                                 fpw_linear_memory *ret)
{
    fpw_linmem *m;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), capacity;
    fpw_inst *owner = fpw_creating;
    (void)env;
    (void)ty;
    if (owner != NULL && owner->mem_limit >= 0
            && owner->mem_bytes + (int64_t)minimum > owner->mem_limit) {
        int64_t asked = owner->mem_bytes + (int64_t)minimum;
        if (asked > owner->mem_refused)
            owner->mem_refused = asked;
        return fpw_api.error_new("fastpath: a linear memory's initial size is over "
                                 "memory_limit_bytes");
    }
    capacity = reserved ? reserved : (maximum && maximum < FPW_DEFAULT_RESERVATION
                                      ? maximum : FPW_DEFAULT_RESERVATION);
    if (capacity < minimum)
        capacity = minimum;
    capacity = (capacity + page - 1) / page * page;
    m = (fpw_linmem *)calloc(1, sizeof *m);
    if (m == NULL)
        return fpw_api.error_new("fastpath: out of memory creating a linear memory");
    m->mapped = capacity + guard;
    m->base = (uint8_t *)mmap(NULL, m->mapped, PROT_NONE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m->base == MAP_FAILED) {
        free(m);
        return fpw_api.error_new("fastpath: mmap failed reserving a linear memory");
    }
    if (minimum && mprotect(m->base, minimum, PROT_READ | PROT_WRITE) != 0) {
        munmap(m->base, m->mapped);
        free(m);
        return fpw_api.error_new("fastpath: mprotect failed creating a linear memory");
    }
    m->size = minimum;
    m->capacity = capacity;
    m->owner = owner;
    if (owner != NULL)
        owner->mem_bytes += (int64_t)minimum;
    ret->env = m;
    ret->get_memory = fpw_linmem_get;
    ret->grow_memory = fpw_linmem_grow;
    ret->finalizer = fpw_linmem_free;
    return NULL;
}

static const fpw_memory_creator fpw_memory_creator_def = {NULL, fpw_new_memory, NULL};

static inline void fpw_set_creating(fpw_inst *inst) { fpw_creating = inst; }
static inline unsigned long fpw_ticks_now(void) { return atomic_load(&fpw_ticks); }
static inline long fpw_inflight_now(void) { return atomic_load(&fpw_inflight); }

/* Sizes checked at import against the wasmtime package's ctypes layouts. */
#define FPW_SIZEOF_VAL sizeof(fpw_val)
#define FPW_SIZEOF_VAL_RAW sizeof(fpw_val_raw)
#define FPW_SIZEOF_EXTERN sizeof(fpw_extern)
#define FPW_SIZEOF_FUNC sizeof(fpw_func)
#define FPW_SIZEOF_INSTANCE sizeof(fpw_instance)

#endif /* FP_WASM_H */
