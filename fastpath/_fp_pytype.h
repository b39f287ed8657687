/*
 * fastpath C runtime: type-slot installers: METH_FASTCALL methods and am_send for Cython types.
 */
#ifndef FASTPATH_PYTYPE_H
#define FASTPATH_PYTYPE_H

#include "_fp_common.h"

typedef PyObject *(*fp_fastcall_fn)(PyObject *, PyObject **, Py_ssize_t, PyObject *);

/* Add a METH_FASTCALL|METH_KEYWORDS method to an extension type.  Cython gives
 * a `def f(self, x, /, *args, **kwargs)` a fresh dict and tuple on every call;
 * the per-call entry points of fastpath (enforce, execute_with_constraints)
 * are installed this way instead.  The PyMethodDef lives as long as the
 * process, as the descriptor requires. */
static int fp_install_fastcall(PyTypeObject *type, const char *name, fp_fastcall_fn fn,
                               const char *doc)
{
    PyMethodDef *def;
    PyObject *descr;
    int rc;
    def = (PyMethodDef *)PyMem_RawCalloc(1, sizeof(PyMethodDef));
    if (def == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    def->ml_name = name;
    def->ml_meth = (PyCFunction)(void (*)(void))fn;
    def->ml_flags = METH_FASTCALL | METH_KEYWORDS;
    def->ml_doc = doc;
    descr = PyDescr_NewMethod(type, def);
    if (descr == NULL)
        return -1;
    rc = PyDict_SetItemString(type->tp_dict, name, descr);
    Py_DECREF(descr);
    if (rc == 0)
        PyType_Modified(type);
    return rc;
}

/* Give a type with __await__ an am_send slot (Cython does not make one):
 * `await` then resumes it through PyIter_Send, and its return value needs no
 * StopIteration. */
typedef PySendResult (*fp_sendfunc)(PyObject *, PyObject *, PyObject **);
static void fp_install_am_send(PyTypeObject *tp, fp_sendfunc fn)
{
    if (tp->tp_as_async != NULL)
        tp->tp_as_async->am_send = fn;
}

/* Would awaiting be the way to use this (a coroutine, a future, ...)? */
static inline int fp_is_awaitable(PyObject *o)
{
    PyAsyncMethods *am = Py_TYPE(o)->tp_as_async;
    return am != NULL && am->am_await != NULL;
}

#endif /* FASTPATH_PYTYPE_H */
