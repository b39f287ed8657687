/* fastpath: C helpers of rules as objects (issue 13).
 *
 * fp_enable_vectorcall: make instances of an extension type callable through
 * the vectorcall protocol.  Cython gives a cdef class's __call__ a fresh args
 * tuple and kwargs dict on every call; a Rule is called once per evaluation,
 * so its call goes straight to a C function with the caller's argument vector
 * instead (PEP 590).  The instance stores the function pointer at `offset`.
 */
#ifndef FP_RULES_H
#define FP_RULES_H

#include <Python.h>

typedef PyObject *(*fp_vectorcall_fn)(PyObject *, PyObject *const *, size_t, PyObject *);

static int fp_enable_vectorcall(PyTypeObject *type, Py_ssize_t offset)
{
    if (type->tp_flags & Py_TPFLAGS_HEAPTYPE) {
        PyErr_SetString(PyExc_TypeError, "fp_enable_vectorcall: a static type is required");
        return -1;
    }
    type->tp_vectorcall_offset = offset;
    type->tp_call = PyVectorcall_Call;
    type->tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL;
    PyType_Modified(type);
    return 0;
}

/* The breaker's window of outcomes: bit 0 a failure, bit 1 a slow call. */
#define FP_OUTCOME_FAILED 1
#define FP_OUTCOME_SLOW 2

#endif
