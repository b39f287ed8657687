/*
 * fastpath C runtime: the clocks -- CLOCK_MONOTONIC, the calibrated TSC, thread CPU clocks.
 */
#ifndef FASTPATH_CLOCK_H
#define FASTPATH_CLOCK_H

#include "_fp_common.h"

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

#endif /* FASTPATH_CLOCK_H */
