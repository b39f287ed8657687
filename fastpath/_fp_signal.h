/*
 * fastpath C runtime: the preemption signal's route to the main thread (FASTPATH_PREEMPT_SIGNAL):
 * whether it is still fastpath's, and whether an interrupt is pending for the
 * main thread's running call.
 */
#ifndef FASTPATH_SIGNAL_H
#define FASTPATH_SIGNAL_H

#include "_fp_common.h"
#include "_fp_slot.h"

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

#endif /* FASTPATH_SIGNAL_H */
