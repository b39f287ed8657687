/*
 * fastpath C runtime: where an interrupt must not land: stdlib lock holders, __del__ methods,
 * garbage collections (see _critical.py).
 */
#ifndef FASTPATH_CRITICAL_H
#define FASTPATH_CRITICAL_H

#include "_fp_common.h"
#include "_fp_internal.h"

static PyObject *fp_critical_files = NULL;   /* tuple of str: file-name prefixes of stdlib
                                              * modules that hold locks (see _critical.py) */

/* How far up the stack a __del__ frame is looked for (as _critical.py). */
#define FP_FINALIZER_DEPTH 64

/* The thread running a garbage collection now (0: none): set by the core's
 * gc.callbacks entry.  A collection runs finalizers and weakref callbacks,
 * where an exception cannot propagate (see _critical.py). */
static unsigned long fp_gc_ident = 0;

/* Is a garbage collection running where thread `ident` would be interrupted?
 * The interpreter's own flag covers the whole collection, its gc.callbacks
 * included: the core's callback, which sets fp_gc_ident, may run after an
 * application's (a Python callback at the front of gc.callbacks, or one run
 * after it at "stop").  A collection anywhere puts the interrupt off (sent
 * again next tick): with the GIL the collecting thread holds it except where
 * a finalizer let it go, and a free-threaded collection stops the world.
 * Without the internal headers: fp_gc_ident alone. */
static inline int fp_gc_collecting(unsigned long ident)
{
#if FP_HAVE_INTERNAL
    if (__atomic_load_n(&PyInterpreterState_Main()->gc.collecting, __ATOMIC_RELAXED))
        return 1;
#endif
    return __atomic_load_n(&fp_gc_ident, __ATOMIC_RELAXED) == ident;
}

/* Is this frame (or its caller) code of a stdlib module that takes locks
 * with acquire() ... try: (logging, threading, queue, ...), or is a __del__
 * method on its stack?  An asynchronous exception landing in the first could
 * leave the lock held; in the second it is swallowed ("Exception ignored")
 * and cuts the finalizer short.  GIL held. */
static int fp_frame_is_critical(PyObject *frame)
{
    int depth, hit = 0;
    Py_ssize_t i, n;
    PyFrameObject *f;
    if (frame == NULL || !PyFrame_Check(frame) || fp_critical_files == NULL)
        return 0;
    n = PyTuple_GET_SIZE(fp_critical_files);
    Py_INCREF(frame);
    f = (PyFrameObject *)frame;
    for (depth = 0; depth < FP_FINALIZER_DEPTH && f != NULL && !hit; depth++) {
        PyCodeObject *code = PyFrame_GetCode(f);
        PyFrameObject *back;
        if (code != NULL) {
            for (i = 0; depth < 2 && i < n && !hit; i++) {
                if (PyUnicode_Tailmatch(code->co_filename, PyTuple_GET_ITEM(fp_critical_files, i),
                                        0, PY_SSIZE_T_MAX, -1) == 1)
                    hit = 1;
            }
            if (!hit && PyUnicode_CompareWithASCIIString(code->co_name, "__del__") == 0)
                hit = 1;
            Py_DECREF(code);
        }
        back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    if (PyErr_Occurred())
        PyErr_Clear();
    return hit;
}

/* Is the thread `ident` inside a critical stdlib frame right now?  GIL held
 * by the caller (the watchdog), so the target is parked where it will
 * resume -- which is where an asynchronous exception would land.
 *
 * Free-threaded builds (Py_GIL_DISABLED): the target keeps running while the
 * watchdog looks, and reading another running thread's frames (as
 * PyThreadState_GetFrame does) crashes: it segfaulted in 3.13t with the GIL
 * off.  CPython 3.13 has no public way to pause one thread or the world for
 * the look (_PyEval_StopTheWorld is not exported), so while the GIL is off
 * only a running collection (fp_gc_ident) is known; the frame checks are not
 * made.  With the GIL on (PYTHON_GIL=1) they are, as on a GIL build. */
#ifdef Py_GIL_DISABLED
/* Is the GIL on now (PYTHON_GIL=1, or turned on by a module)?  sys._is_gil_enabled();
 * on an error, no (the safe answer: frames are then not read).  Delivery path only. */
static int fp_gil_enabled(void)
{
    PyObject *fn = PySys_GetObject("_is_gil_enabled");     /* borrowed */
    PyObject *r;
    int on = 0;
    if (fn != NULL && (r = PyObject_CallNoArgs(fn)) != NULL) {
        on = PyObject_IsTrue(r) == 1;
        Py_DECREF(r);
    }
    if (PyErr_Occurred())
        PyErr_Clear();
    return on;
}
#endif

static int fp_thread_in_critical(unsigned long ident)
{
#ifdef Py_GIL_DISABLED
    if (!fp_gil_enabled())
        return fp_gc_collecting(ident);
#endif
    {
    PyThreadState *ts;
    PyFrameObject *frame;
    int hit, gc_was;
    for (ts = PyInterpreterState_ThreadHead(PyInterpreterState_Main()); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == ident)
            break;
    }
    if (ts == NULL)
        return 0;
    if (fp_gc_collecting(ident))
        return 1;               /* a collection (its callbacks, finalizers) runs there */
    /* No garbage collection (and so no finalizer, which could let the target
     * run) while frame objects are made for the look. */
    gc_was = PyGC_Disable();
    frame = PyThreadState_GetFrame(ts);
    hit = frame != NULL && fp_frame_is_critical((PyObject *)frame);
    Py_XDECREF(frame);
    if (gc_was)
        PyGC_Enable();
    return hit;
    }
}

#endif /* FASTPATH_CRITICAL_H */
