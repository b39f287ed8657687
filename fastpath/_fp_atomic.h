/*
 * fastpath C runtime: shared state that stays exact without a GIL.
 *
 * One concept: how the compiled core updates state that several Python threads
 * change at once (rule and enforcer counters, histograms, breakers, adaptive
 * windows, quota buckets).
 *
 * GIL builds (3.11 - 3.14): every macro here is the plain operation -- the GIL
 * already serialises the threads.  (callgrind on 3.11 still counted 7-10
 * instructions more per execute_with_constraints call after the change: gcc's
 * inlining and register choices around the edited breaker/adaptive code, not
 * these macros.)
 *
 * Free-threaded builds (Py_GIL_DISABLED):
 *   fp_add(p, n)       a relaxed atomic add (lock xadd on x86-64): a counter that
 *                      is only ever added to and read.  Cheapest exact choice
 *                      measured (bench/ft_counters.c): ~1 ns uncontended.
 *   fp_add_fetch(p, n) the same, returning the new value (a sequence number).
 *   fp_load(p)         a relaxed atomic load of such a counter (no torn reads).
 *   fp_cs_begin(&cs, obj) / fp_cs_end(&cs)
 *                      a critical section on obj's own mutex (PyCriticalSection,
 *                      public since 3.13: no extra field, and CPython suspends it
 *                      when the thread blocks, so Python code run inside -- a test
 *                      clock, an audit hook -- cannot deadlock; it may only let
 *                      another thread in, which the callers already allow for by
 *                      re-reading state after such calls).  fp_cs2_*: the same on
 *                      two objects at once (CPython orders the two mutexes).  For compound updates
 *                      that must be seen whole (a histogram's count, sum and
 *                      buckets; a breaker's window; a quota bucket's refill+take).
 *   fp_mutex, fp_mutex_lock(&m) / fp_mutex_unlock(&m)
 *                      a pthread mutex, for process-wide C state that no Python
 *                      object owns (the allocator hooks' memory table); never
 *                      held across Python code or a hooked allocation.  Not a
 *                      PyMutex: a thread waiting on a PyMutex detaches its thread
 *                      state and may be handed the lock while the world is stopped
 *                      for a collection, whose frees then need the same lock.  A
 *                      pthread waiter stays attached (the stop waits for it, and
 *                      the holder never waits on the interpreter).
 */
#ifndef FASTPATH_ATOMIC_H
#define FASTPATH_ATOMIC_H

#include <Python.h>

#ifdef Py_GIL_DISABLED

#define FP_FREE_THREADED 1
#define fp_add(p, n) ((void)__atomic_fetch_add((p), (n), __ATOMIC_RELAXED))
#define fp_add_fetch(p, n) __atomic_add_fetch((p), (n), __ATOMIC_RELAXED)
#define fp_load(p) __atomic_load_n((p), __ATOMIC_RELAXED)

typedef PyCriticalSection fp_cs;
#define fp_cs_begin(cs, obj) PyCriticalSection_Begin((cs), (PyObject *)(obj))
#define fp_cs_end(cs) PyCriticalSection_End(cs)
typedef PyCriticalSection2 fp_cs2;
#define fp_cs2_begin(cs, a, b) PyCriticalSection2_Begin((cs), (PyObject *)(a), (PyObject *)(b))
#define fp_cs2_end(cs) PyCriticalSection2_End(cs)

#include <pthread.h>
typedef pthread_mutex_t fp_mutex;
#define FP_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
#define fp_mutex_lock(m) pthread_mutex_lock(m)
#define fp_mutex_unlock(m) pthread_mutex_unlock(m)
#define fp_mutex_reinit(m) pthread_mutex_init((m), NULL)     /* in a forked child */

#else /* the GIL serialises the threads: plain operations */

#define FP_FREE_THREADED 0
#define fp_add(p, n) ((void)(*(p) += (n)))
#define fp_add_fetch(p, n) (*(p) += (n))
#define fp_load(p) (*(p))

typedef struct { char unused; } fp_cs;
#define fp_cs_begin(cs, obj) ((void)(cs), (void)(obj))
#define fp_cs_end(cs) ((void)(cs))
typedef struct { char unused; } fp_cs2;
#define fp_cs2_begin(cs, a, b) ((void)(cs), (void)(a), (void)(b))
#define fp_cs2_end(cs) ((void)(cs))

typedef struct { char unused; } fp_mutex;
#define FP_MUTEX_INIT {0}
#define fp_mutex_lock(m) ((void)0)      /* (m may name a field GIL builds lack) */
#define fp_mutex_unlock(m) ((void)0)
#define fp_mutex_reinit(m) ((void)0)

#endif

#endif /* FASTPATH_ATOMIC_H */
