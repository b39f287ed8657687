/*
 * fastpath C runtime: build facts, set by setup.py (shown by `python -m fastpath.selftest`).
 */
#ifndef FASTPATH_BUILD_H
#define FASTPATH_BUILD_H

#include "_fp_common.h"

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

#endif /* FASTPATH_BUILD_H */
