/*
 * fastpath C runtime: fast GIL hand-over: the watchdog's lowered switch interval and the view of
 * it that Python code gets.
 */
#ifndef FASTPATH_SWITCH_H
#define FASTPATH_SWITCH_H

#include "_fp_common.h"
#include "_fp_internal.h"

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
#define fp_get_switch_us() _PyEval_GetSwitchInterval()
#define fp_set_switch_us(us) _PyEval_SetSwitchInterval(us)
#elif PY_VERSION_HEX < 0x030F0000 && FP_HAVE_INTERNAL && !defined(Py_GIL_DISABLED)
/* 3.13 and 3.14 keep _PyEval_{Get,Set}SwitchInterval but no longer export
 * them.  Each is a plain load or store of the GIL's `interval` field
 * (ceval_gil.c), which take_gil() reads under the GIL's mutex; the internal
 * headers give its layout for the interpreter being built against
 * (struct _gil_runtime_state is the same in 3.13.5 and 3.14.10).  Only the
 * versions tested here (make matrix: 3.13, 3.14-deb) use it; later versions
 * take the plain path until tested.  A free-threaded build has no GIL to hand
 * over (with the GIL re-enabled for this module it still has the field, but
 * that build is not what this path was tested on). */
#define FP_HAVE_SWITCH_INTERVAL_API 1
static inline unsigned long fp_get_switch_us(void)
{
    return __atomic_load_n(&PyInterpreterState_Main()->ceval.gil->interval, __ATOMIC_RELAXED);
}
static inline void fp_set_switch_us(unsigned long us)
{
    __atomic_store_n(&PyInterpreterState_Main()->ceval.gil->interval, us, __ATOMIC_RELAXED);
}
#else
#define FP_HAVE_SWITCH_INTERVAL_API 0
#endif
static int fp_fast_gil = FP_HAVE_SWITCH_INTERVAL_API;
static pthread_mutex_t fp_switch_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long fp_fast_gil_saved = 0;  /* interval to restore; 0: none in flight */

/* The switch interval Python code should see, in microseconds (called with
 * the GIL held): the real one, or the one a lowering in flight replaced. */
static unsigned long fp_switch_interval_shown(void)
{
    unsigned long v = 0;
#if FP_HAVE_SWITCH_INTERVAL_API
    pthread_mutex_lock(&fp_switch_lock);
    v = fp_fast_gil_saved ? fp_fast_gil_saved : fp_get_switch_us();
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
        fp_fast_gil_saved = fp_get_switch_us();
    pthread_mutex_unlock(&fp_switch_lock);
#endif
}

static void fp_fast_gil_lower(void)
{
#if FP_HAVE_SWITCH_INTERVAL_API
    unsigned long interval;
    pthread_mutex_lock(&fp_switch_lock);
    interval = fp_get_switch_us();
    if (interval > FP_FAST_GIL_US) {
        fp_fast_gil_saved = interval;
        fp_set_switch_us(FP_FAST_GIL_US);
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
        fp_set_switch_us(fp_fast_gil_saved);
        fp_fast_gil_saved = 0;
    }
    pthread_mutex_unlock(&fp_switch_lock);
#endif
}

#endif /* FASTPATH_SWITCH_H */
