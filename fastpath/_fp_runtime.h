/*
 * fastpath C runtime: clocks, the per-thread sampler, the per-thread slot that
 * enforce() arms, and the watchdog thread that samples CPU clocks and
 * interrupts calls past their limits.
 *
 * Included by _budget.pyx (after Python.h).  Everything is static: the only
 * compilation unit is the extension module.  One header per concept:
 *   _fp_common.h    macros, includes, violation-kind numbers
 *   _fp_internal.h  the interpreter's internal headers (two private fields)
 *   _fp_build.h     build facts
 *   _fp_pytype.h    METH_FASTCALL and am_send installers
 *   _fp_clock.h     monotonic clock, TSC, thread CPU clocks
 *   _fp_sampler.h   the per-thread sampler
 *   _fp_memhook.h   memory accounting (allocator hooks)
 *   _fp_slot.h      the per-thread slot and its seqlock
 *   _fp_signal.h    the main thread's preemption signal route
 *   _fp_switch.h    fast GIL hand-over (switch interval)
 *   _fp_critical.h  where an interrupt must not land
 *   _fp_watchdog.h  the watchdog thread
 *   _fp_arm.h       arm/disarm around a call or a step
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

#include "_fp_common.h"
#include "_fp_internal.h"
#include "_fp_build.h"
#include "_fp_pytype.h"
#include "_fp_clock.h"
#include "_fp_sampler.h"
#include "_fp_memhook.h"
#include "_fp_slot.h"
#include "_fp_signal.h"
#include "_fp_switch.h"
#include "_fp_critical.h"
#include "_fp_watchdog.h"
#include "_fp_arm.h"

#endif /* FASTPATH_RUNTIME_H */
