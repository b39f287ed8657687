/*
 * fastpath C runtime: macros and includes every fastpath header needs, and the violation-kind
 * numbers (checked against fastpath.errors at import).
 */
#ifndef FASTPATH_COMMON_H
#define FASTPATH_COMMON_H

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

/* Violation kinds: the values of fastpath.errors.ConstraintViolationType (the
 * one definition; the compiled core checks these against it at import, and the
 * twin takes its numbers from it).  SAMPLED_OUT is a counter index only. */
#define FP_TIMEOUT 1
#define FP_MEMORY 2
#define FP_CPU 3
#define FP_SAMPLED_OUT 4

#endif /* FASTPATH_COMMON_H */
