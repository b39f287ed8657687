/*
 * fastpath C runtime: the interpreter's internal headers (Py_BUILD_CORE), for
 * the two private fields fastpath reads or writes: the runtime's thread-list
 * lock (_fp_memhook.h) and, on 3.13, the GIL's switch interval (_fp_switch.h).
 * FP_HAVE_INTERNAL is 0 where they are not installed; both users then fall
 * back to a public path.
 */
#ifndef FASTPATH_INTERNAL_H
#define FASTPATH_INTERNAL_H

#include "_fp_common.h"

#if PY_VERSION_HEX >= 0x030B0000 && defined(__has_include)
#if __has_include(<internal/pycore_runtime.h>)
#define FP_HAVE_INTERNAL 1
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#define FP_UNDEF_BUILD_CORE 1
#endif
#undef _PyGC_FINALIZED          /* pycore_gc.h defines it again, with the same meaning */
#include <internal/pycore_runtime.h>
#ifdef FP_UNDEF_BUILD_CORE
#undef Py_BUILD_CORE
#undef FP_UNDEF_BUILD_CORE
#endif
#endif
#endif
#ifndef FP_HAVE_INTERNAL
#define FP_HAVE_INTERNAL 0
#endif

#endif /* FASTPATH_INTERNAL_H */
