"""The per-call path of fastpath.wasm: a WebAssembly export called through
wasmtime's C API (resolved from the library the `wasmtime` package loaded),
with pre-built value arrays, pooled instances, a per-store epoch deadline, fuel
and the linear-memory figure charged to the running budget.

Everything that is not per call (compiling, WAT, reading the module's types)
stays with wasmtime-py, in fastpath/wasm.py.
"""

cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free

from fastpath.errors import ConstraintViolationType, InvalidConfiguration


cdef extern from "_fp_atomic.h":
    # A critical section on the hook (its instance pool): nothing on GIL builds.
    ctypedef struct fp_cs:
        pass
    void fp_cs_begin(fp_cs *cs, object obj) noexcept
    void fp_cs_end(fp_cs *cs) noexcept

cdef extern from "_fp_wasm.h" nogil:
    ctypedef struct fpw_engine:
        pass
    ctypedef struct fpw_config:
        pass
    ctypedef struct fpw_store:
        pass
    ctypedef struct fpw_context:
        pass
    ctypedef struct fpw_error:
        pass
    ctypedef struct fpw_trap:
        pass
    ctypedef struct fpw_linker:
        pass
    ctypedef struct fpw_module:
        pass
    ctypedef struct fpw_instance_pre:
        pass
    ctypedef struct fpw_caller:
        pass
    ctypedef struct fpw_functype:
        pass
    ctypedef struct fpw_memorytype:
        pass
    ctypedef struct fpw_byte_vec:
        size_t size
        char *data
    ctypedef struct fpw_func:
        pass
    ctypedef struct fpw_instance:
        pass
    ctypedef union fpw_valunion:
        int32_t i32
        int64_t i64
        float f32
        double f64
    ctypedef struct fpw_val:
        uint8_t kind
        fpw_valunion of
    ctypedef union fpw_val_raw:
        int32_t i32
        int64_t i64
        float f32
        double f64
    ctypedef struct fpw_extern_union:
        fpw_func func
    ctypedef struct fpw_extern:
        uint8_t kind
        fpw_extern_union of
    ctypedef struct fpw_memory_creator:
        pass
    ctypedef fpw_trap *(*fpw_host_cb)(void *env, fpw_caller *caller, const fpw_val *args,
                                      size_t nargs, fpw_val *results, size_t nresults)
    ctypedef fpw_error *(*fpw_epoch_cb)(fpw_context *ctx, void *data, uint64_t *delta,
                                        uint8_t *update_kind)

    ctypedef struct fpw_api_t:
        fpw_store *(*store_new)(fpw_engine *, void *, void (*)(void *))
        fpw_context *(*store_context)(fpw_store *)
        void (*store_delete)(fpw_store *)
        void (*store_epoch_deadline_callback)(fpw_store *, fpw_epoch_cb, void *,
                                              void (*)(void *))
        void *(*context_get_data)(const fpw_context *)
        fpw_error *(*context_set_fuel)(fpw_context *, uint64_t)
        fpw_error *(*context_get_fuel)(const fpw_context *, uint64_t *)
        void (*context_set_epoch_deadline)(fpw_context *, uint64_t)
        fpw_context *(*caller_context)(fpw_caller *)
        fpw_linker *(*linker_new)(fpw_engine *)
        void (*linker_delete)(fpw_linker *)
        fpw_error *(*linker_define_func)(fpw_linker *, const char *, size_t, const char *,
                                         size_t, const fpw_functype *, fpw_host_cb, void *,
                                         void (*)(void *))
        fpw_error *(*linker_instantiate_pre)(const fpw_linker *, const fpw_module *,
                                             fpw_instance_pre **)
        fpw_error *(*instance_pre_instantiate)(const fpw_instance_pre *, fpw_context *,
                                               fpw_instance *, fpw_trap **) noexcept nogil
        void (*instance_pre_delete)(fpw_instance_pre *)
        int (*instance_export_get)(fpw_context *, const fpw_instance *, const char *, size_t,
                                   fpw_extern *)
        fpw_error *(*func_call_unchecked)(fpw_context *, const fpw_func *, fpw_val_raw *,
                                          size_t, fpw_trap **) noexcept nogil
        int (*trap_code)(const fpw_trap *, uint8_t *)
        void (*trap_message)(const fpw_trap *, fpw_byte_vec *)
        void (*trap_delete)(fpw_trap *)
        fpw_trap *(*trap_new)(const char *, size_t)
        void (*error_message)(const fpw_error *, fpw_byte_vec *)
        void (*error_delete)(fpw_error *)
        void (*byte_vec_delete)(fpw_byte_vec *)
        void (*config_host_memory_creator_set)(fpw_config *, const fpw_memory_creator *)

    ctypedef struct fpw_inst:
        fpw_store *store
        fpw_context *ctx
        fpw_instance instance
        fpw_func func
        int64_t deadline_ns
        int deadline_hit
        int64_t cpu_allow_ns
        int64_t cpu_base_ns
        int cpu_hit
        int64_t mem_limit
        int64_t mem_refused
        int64_t mem_bytes
        void *host_exc
        int gil_held

    fpw_api_t fpw_api
    const char *fpw_resolve(const char *path)
    int64_t fpw_now_ns()
    int64_t fpw_thread_cpu_ns()
    fpw_error *fpw_epoch_callback(fpw_context *, void *, uint64_t *, uint8_t *)
    int fpw_engine_ref(fpw_engine *engine, int delta)
    void fpw_call_begin()
    void fpw_call_end()
    void fpw_set_creating(fpw_inst *inst)
    void fpw_gil_back(fpw_inst *inst)
    uint64_t fpw_ticks_until(int64_t deadline_ns, int64_t now)
    uint64_t fpw_ticks_until_from(int64_t deadline_ns, int64_t now, int64_t first)
    int fpw_ticks_at_wake(int64_t *next_ns, int64_t now, int wake_due)
    void fpw_wake_at(int64_t deadline_ns)
    const fpw_memory_creator fpw_memory_creator_def
    unsigned long fpw_ticks_now()
    long fpw_inflight_now()
    int64_t FPW_TICK_NS
    int FPW_EXTERN_FUNC
    int FPW_TRAP_OUT_OF_FUEL
    int FPW_I32, FPW_I64, FPW_F32, FPW_F64
    size_t FPW_SIZEOF_VAL, FPW_SIZEOF_VAL_RAW, FPW_SIZEOF_EXTERN, FPW_SIZEOF_FUNC
    size_t FPW_SIZEOF_INSTANCE

cdef extern from "_fp_wasm.h":
    int fpw_inherit_vectorcall(type tp, type base) except -1

cdef extern from "_fp_rules.h":
    int fp_enable_vectorcall(type tp, Py_ssize_t offset) except -1

cdef extern from "_fp_pytype.h":
    ctypedef object (*fp_fastcall_fn)(object, PyObject **, Py_ssize_t, PyObject *)
    int fp_install_fastcall(type tp, const char *name, fp_fastcall_fn fn, const char *doc) \
        except -1

cdef extern from "Python.h":
    object PyObject_Vectorcall(object callable, PyObject **args, size_t nargsf,
                               PyObject *kwnames)
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    PyObject **fpw_tuple_items "&PyTuple_GET_ITEM"(object t, Py_ssize_t i)


# Fuel when no CPU allowance applies: wasmtime keeps fuel as an i64.
cdef uint64_t FUEL_UNLIMITED = 1 << 62
cdef enum:
    MAX_VALUES = 16     # params or results of one function

cdef object _TIMEOUT = ConstraintViolationType.TIMEOUT_EXCEEDED
cdef object _CPU = ConstraintViolationType.CPU_EXCEEDED
cdef object _MEMORY = ConstraintViolationType.MEMORY_EXCEEDED
cdef object WasmTrap = None     # fastpath.wasm.WasmTrap, bound by load()
cdef bint _loaded = False

TICK_NS = FPW_TICK_NS
SIZES = {"wasmtime_val": FPW_SIZEOF_VAL, "wasmtime_val_raw": FPW_SIZEOF_VAL_RAW,
         "wasmtime_extern": FPW_SIZEOF_EXTERN,
         "wasmtime_func": FPW_SIZEOF_FUNC, "wasmtime_instance": FPW_SIZEOF_INSTANCE}
KINDS = {"i32": FPW_I32, "i64": FPW_I64, "f32": FPW_F32, "f64": FPW_F64}


def load(str library_path, trap_class):
    """Resolve the C API from the library at library_path (already loaded by
    the wasmtime package); raise ImportError naming a missing symbol."""
    global WasmTrap, _loaded
    cdef bytes path = library_path.encode()
    cdef const char *missing
    if _loaded:
        return
    missing = fpw_resolve(path)
    if missing != NULL:
        raise ImportError(f"fastpath.wasm: wasmtime's C library {library_path} lacks "
                          f"{missing.decode()}: the installed wasmtime is not the pinned one")
    WasmTrap = trap_class
    _loaded = True


def install_memory_creator(size_t config_address):
    """Make an engine Config (its wasm_config_t address) create guests' linear
    memories with fastpath's limit-aware memory."""
    fpw_api.config_host_memory_creator_set(<fpw_config *>config_address,
                                           &fpw_memory_creator_def)


def _ticks_until(int64_t deadline_ns, int64_t now_ns, int64_t next_tick_ns):
    """The epoch ticks a store asks for at now_ns to be stopped at deadline_ns,
    the ticker's next grid tick being due at next_tick_ns (for the tests)."""
    return fpw_ticks_until_from(deadline_ns, now_ns, next_tick_ns)


def _ticks_at_wake(int64_t next_tick_ns, int64_t now_ns, bint wake_due):
    """(epoch ticks, next grid tick) of a ticker wake-up at now_ns (for the tests)."""
    cdef int ticks = fpw_ticks_at_wake(&next_tick_ns, now_ns, wake_due)
    return ticks, next_tick_ns


def ticker_info():
    """(epoch ticks so far, calls in flight): for tests and the selftest."""
    return fpw_ticks_now(), fpw_inflight_now()


cdef str _take_message(fpw_error *err, fpw_trap *trap):
    # The error's or trap's message (wasmtime's text includes the wasm
    # backtrace); frees both.
    cdef fpw_byte_vec vec
    cdef str text = ""
    vec.size = 0
    vec.data = NULL
    if err != NULL:
        fpw_api.error_message(err, &vec)
        fpw_api.error_delete(err)
    elif trap != NULL:
        fpw_api.trap_message(trap, &vec)
    if vec.data != NULL:
        text = vec.data[:vec.size].decode("utf-8", "replace").rstrip("\0")
        fpw_api.byte_vec_delete(&vec)
    if trap != NULL:
        fpw_api.trap_delete(trap)
    return text


cdef void _drop_error(fpw_error *err, fpw_trap *trap) noexcept:
    # Free the error and trap of a guest that fastpath itself stopped: their
    # message (wasmtime formats the wasm backtrace into it) is not built.
    if err != NULL:
        fpw_api.error_delete(err)
    if trap != NULL:
        fpw_api.trap_delete(trap)


cdef str _what(Py_ssize_t index, str label, Py_ssize_t nresults):
    # Names the value _convert refused (built only then): an argument of the
    # export, or a result of the host import `label`.
    if label is None:
        return f"argument {index}"
    if nresults == 1:
        return f"the result of {label}"
    return f"result {index} of {label}"


cdef int _convert(void *out, uint8_t kind, object value, Py_ssize_t index, str label,
                  Py_ssize_t nresults) except -1:
    # One Python value into the i32/i64/f32/f64 member of a wasmtime value
    # union (wasmtime_val_raw_t or wasmtime_val_t's `of`: the member at offset 0).
    cdef long long v
    cdef unsigned long long u
    cdef int overflow = 0
    cdef double d
    if kind == FPW_I32 or kind == FPW_I64:
        if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{_what(index, label, nresults)} must be an int "
                            f"({'i32' if kind == FPW_I32 else 'i64'}), got {value!r}")
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if kind == FPW_I32:
            if overflow or v < -2147483648LL or v >= 4294967296LL:
                raise OverflowError(f"{_what(index, label, nresults)} does not fit an i32: "
                                    f"{value!r}")
            (<int32_t *>out)[0] = <int32_t>(v - 4294967296LL if v >= 2147483648LL else v)
        elif overflow == 0:
            (<int64_t *>out)[0] = <int64_t>v
        else:
            u = 0
            if overflow > 0:
                try:
                    u = PyLong_AsUnsignedLongLong(value)    # 2**63 <= value < 2**64
                except OverflowError:
                    overflow = -1
            if overflow < 0:
                raise OverflowError(f"{_what(index, label, nresults)} does not fit an i64: "
                                    f"{value!r}")
            (<int64_t *>out)[0] = <int64_t>u      # two's complement, as wasm reads it
    else:
        if type(value) is float:
            d = <double>value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{_what(index, label, nresults)} must be a float "
                            f"({'f32' if kind == FPW_F32 else 'f64'}), got {value!r}")
        else:
            d = <double>value
        if kind == FPW_F32:
            (<float *>out)[0] = <float>d
        else:
            (<double *>out)[0] = d
    return 0


cdef inline object _from_val(const fpw_val *v):
    return _from_raw(<const fpw_val_raw *>&v.of, v.kind)


cdef inline object _from_raw(const fpw_val_raw *v, uint8_t kind):
    if kind == FPW_I32:
        return v.i32
    if kind == FPW_I64:
        return v.i64
    if kind == FPW_F32:
        return v.f32
    return v.f64


@cython.final
cdef class _HostFunc:
    # One host import: the callable and the value kinds of its declaration.
    cdef object fn
    cdef object defer               # the hook's uninterruptible(): lifted while fn runs
    cdef str label
    cdef uint8_t params[MAX_VALUES]
    cdef uint8_t results[MAX_VALUES]
    cdef Py_ssize_t nparams, nresults


cdef fpw_trap *_host_call(void *env, fpw_caller *caller, const fpw_val *args, size_t nargs,
                          fpw_val *results, size_t nresults) noexcept with gil:
    # The guest called a host import: run the Python callable (under whatever
    # budget is armed on this thread); an exception it raises -- including
    # fastpath's interrupt -- is kept on the instance and re-raised by the
    # hook call once the guest has unwound.
    cdef _HostFunc host = <_HostFunc>env
    cdef fpw_inst *inst = <fpw_inst *>fpw_api.context_get_data(fpw_api.caller_context(caller))
    cdef Py_ssize_t i
    cdef object exc
    cdef bytes note
    try:
        # The guest ran with interrupts put off (the epoch stops it); Python
        # code of a host import is preemptible like any other.
        host.defer.__exit__(None, None, None)
        try:
            out = host.fn(*[_from_val(&args[i]) for i in range(<Py_ssize_t>nargs)])
        finally:
            host.defer.__enter__()
        if host.nresults == 0:
            if out is not None:
                raise TypeError(f"host import {host.label} declares no results, "
                                f"returned {out!r}")
        else:
            if host.nresults > 1:
                out = tuple(out)
                if len(out) != host.nresults:
                    raise TypeError(f"host import {host.label} must return {host.nresults} "
                                    f"values, got {len(out)}")
            for i in range(host.nresults):
                results[i].kind = host.results[i]
                _convert(&results[i].of, host.results[i],
                         out if host.nresults == 1 else out[i], i, host.label, host.nresults)
        return NULL
    except BaseException as e:     # kept and re-raised by the hook call, never swallowed
        exc = e
        if inst.host_exc == NULL:
            Py_INCREF(exc)
            inst.host_exc = <void *><PyObject *>exc
        note = f"host import {host.label} raised {type(e).__name__}".encode()
        return fpw_api.trap_new(note, len(note))


cdef void _destroy(fpw_inst *inst) noexcept:
    # Never reused: a trapped or interrupted instance goes away with its store.
    cdef PyObject *exc
    if inst == NULL:
        return
    if inst.store != NULL:
        fpw_api.store_delete(inst.store)
    if inst.host_exc != NULL:
        exc = <PyObject *>inst.host_exc
        inst.host_exc = NULL
        Py_DECREF(<object>exc)
    free(inst)


cdef class HookCore:
    """The compiled half of fastpath.wasm.WasmHook (see there)."""

    cdef void *_vectorcall          # hook(...) comes in here (PEP 590): _hook_vectorcall
    cdef fpw_engine *_engine
    cdef fpw_instance_pre *_pre
    cdef bytes _export
    cdef uint8_t _params[MAX_VALUES]
    cdef uint8_t _results[MAX_VALUES]
    cdef Py_ssize_t _nparams, _nresults
    cdef Py_ssize_t _nvals          # max(_nparams, _nresults): the raw values of a call
    cdef fpw_inst **_idle
    cdef Py_ssize_t _nidle, _pool_max
    cdef object _constraints
    cdef int64_t _fuel              # fuel for _constraints' CPU allowance, or -1
    cdef int64_t _cpu_ns            # that CPU allowance in ns, or -1
    cdef int64_t _grace_ns          # fail open: a late guest runs up to 2x max_exec_ms
    cdef int64_t _mem_limit         # _constraints.memory_limit_bytes, or -1
    cdef int64_t _max_ns            # _constraints.max_exec_ms in ns (saturated)
    # of _constraints' core: current_budget(), ExecutionConstraints.create_budget,
    # ExecutionBudget.enforce (unbound: no lookup per call), an uninterruptible()
    # and its bound __enter__ and __exit__
    cdef object _current_budget
    cdef object _create_budget
    cdef object _enforce
    cdef object _defer
    cdef object _defer_enter
    cdef object _defer_exit
    cdef object _fuel_for           # fuel for another budget's constraints
    cdef object _own                # the budget hook(...) made and enforces now, or None
    cdef int64_t _own_deadline_ns   # the guest's deadline under _own
    cdef object _charged            # the int last charged to a budget (see _charge)
    cdef int64_t _charged_bytes     # ... and its value
    cdef object _keep               # Python objects the C side points into
    cdef readonly Py_ssize_t instances_created
    cdef bint _registered

    def __cinit__(self):
        self._vectorcall = <void *>_hook_vectorcall

    def _setup(self, size_t engine, size_t module, str export, tuple params, tuple results,
               list hosts, Py_ssize_t pool_max, constraints, tuple limits, core, fuel_for,
               keep):
        # hosts: (module, name, functype address, callable, params, results)
        cdef fpw_linker *linker
        cdef fpw_error *err
        cdef _HostFunc host
        cdef bytes mod_b, name_b
        cdef Py_ssize_t i
        if not _loaded:
            raise RuntimeError("fastpath._wasm.load() was not called")
        if len(params) > MAX_VALUES or len(results) > MAX_VALUES:
            raise InvalidConfiguration(f"export {export!r} has {len(params)} params and "
                                       f"{len(results)} results; at most {MAX_VALUES} each")
        self._engine = <fpw_engine *>engine
        self._export = export.encode()
        self._nparams, self._nresults = len(params), len(results)
        self._nvals = max(self._nparams, self._nresults)
        for i in range(self._nparams):
            self._params[i] = params[i]
        for i in range(self._nresults):
            self._results[i] = results[i]
        self._pool_max = pool_max
        self._idle = <fpw_inst **>calloc(pool_max, sizeof(fpw_inst *))
        if self._idle == NULL:
            raise MemoryError()
        self._constraints = constraints
        self._fuel, self._cpu_ns, self._mem_limit, self._grace_ns = limits
        self._max_ns = min(<int64_t>constraints.max_exec_ms, 9223372036854) * 1000000
        self._current_budget = core.current_budget
        self._create_budget = core.ExecutionConstraints.create_budget
        self._enforce = core.ExecutionBudget.enforce
        self._fuel_for = fuel_for
        defer = self._defer = core.uninterruptible()
        self._defer_enter = defer.__enter__
        self._defer_exit = defer.__exit__
        host_objs = []
        linker = fpw_api.linker_new(self._engine)
        try:
            for mod, name, functype, fn, hparams, hresults in hosts:
                host = _HostFunc.__new__(_HostFunc)
                host.fn = fn
                host.defer = defer
                host.label = f"{mod}.{name}"
                if len(hparams) > MAX_VALUES or len(hresults) > MAX_VALUES:
                    raise InvalidConfiguration(f"host import {host.label} has too many "
                                               f"params or results (at most {MAX_VALUES})")
                host.nparams, host.nresults = len(hparams), len(hresults)
                for i in range(host.nparams):
                    host.params[i] = hparams[i]
                for i in range(host.nresults):
                    host.results[i] = hresults[i]
                host_objs.append(host)
                mod_b, name_b = mod.encode(), name.encode()
                err = fpw_api.linker_define_func(linker, mod_b, len(mod_b), name_b, len(name_b),
                                                 <fpw_functype *><size_t>functype, _host_call,
                                                 <void *>host, NULL)
                if err != NULL:
                    raise InvalidConfiguration(f"host import {host.label}: "
                                               f"{_take_message(err, NULL)}")
            err = fpw_api.linker_instantiate_pre(linker, <fpw_module *>module, &self._pre)
            if err != NULL:
                raise InvalidConfiguration(f"cannot link the module: {_take_message(err, NULL)}")
        finally:
            fpw_api.linker_delete(linker)
        # the host funcs live as long as the pre-instantiated module uses them
        self._keep = (keep, tuple(host_objs))
        if fpw_engine_ref(self._engine, 1) != 0:
            raise InvalidConfiguration("fastpath.wasm: could not register the engine with the "
                                       "epoch ticker (too many engines, or no thread)")
        self._registered = True

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._idle != NULL:
            for i in range(self._nidle):
                _destroy(self._idle[i])
            free(self._idle)
        if self._pre != NULL:
            fpw_api.instance_pre_delete(self._pre)
        if self._registered:
            fpw_engine_ref(self._engine, -1)

    @property
    def idle_instances(self):
        """Instances waiting in the pool."""
        return self._nidle

    cdef fpw_inst *_instantiate(self, int64_t deadline_ns, int64_t mem_limit,
                                object budget) except NULL:
        # budget: the running call's (None when the hook warms its pool)
        cdef fpw_inst *inst = <fpw_inst *>calloc(1, sizeof(fpw_inst))
        cdef fpw_error *err
        cdef fpw_trap *trap = NULL
        cdef fpw_extern ext
        cdef str text
        cdef int why
        if inst == NULL:
            raise MemoryError()
        inst.mem_limit = mem_limit
        inst.deadline_ns = deadline_ns
        inst.store = fpw_api.store_new(self._engine, <void *>inst, NULL)
        inst.ctx = fpw_api.store_context(inst.store)
        fpw_api.store_epoch_deadline_callback(inst.store, fpw_epoch_callback, <void *>inst, NULL)
        err = fpw_api.context_set_fuel(inst.ctx, FUEL_UNLIMITED)
        if err != NULL:
            _destroy(inst)
            raise InvalidConfiguration(f"the engine does not consume fuel: "
                                       f"{_take_message(err, NULL)}")
        self._arm(inst, deadline_ns, -1, False)
        fpw_set_creating(inst)
        with nogil:
            fpw_call_begin()
            err = fpw_api.instance_pre_instantiate(self._pre, inst.ctx, &inst.instance, &trap)
            fpw_call_end()
        fpw_set_creating(NULL)
        if err != NULL or trap != NULL:
            text = f"instantiating the module failed: {_take_message(err, trap)}"
            why = self._fail(inst, NULL, NULL, text)
            if budget is None:
                raise (WasmTrap(text) if why == 1 else InvalidConfiguration(text))
            budget._raise_limit(_TIMEOUT if why == 1 else _MEMORY)
        if not fpw_api.instance_export_get(inst.ctx, &inst.instance, self._export,
                                           len(self._export), &ext) \
                or ext.kind != FPW_EXTERN_FUNC:
            _destroy(inst)
            raise InvalidConfiguration(f"the module has no function export "
                                       f"{self._export.decode()!r}")
        inst.func = ext.of.func
        self.instances_created += 1
        return inst

    cdef inline void _arm(self, fpw_inst *inst, int64_t deadline_ns,
                          int64_t cpu_ns, bint gil_held) noexcept:
        # The call's deadline (and CPU allowance, or a guest entered holding
        # the GIL: the epoch callback then comes from the first tick on) into
        # the instance.
        cdef int64_t now = fpw_now_ns()
        cdef uint64_t ticks = fpw_ticks_until(deadline_ns, now) if deadline_ns > now else 0
        inst.deadline_ns = deadline_ns
        inst.deadline_hit = 0
        inst.cpu_allow_ns = cpu_ns
        inst.cpu_base_ns = -1
        inst.cpu_hit = 0
        inst.mem_refused = 0
        inst.gil_held = gil_held
        if (cpu_ns >= 0 or gil_held) and ticks > 1:
            ticks = 1
        fpw_api.context_set_epoch_deadline(inst.ctx, ticks)
        fpw_wake_at(deadline_ns)

    cdef int _fail(self, fpw_inst *inst, fpw_error *err, fpw_trap *trap,
                   str what) except -1:
        # The guest (or its start function) stopped: say why (1: the deadline,
        # 2: the CPU allowance, 3: the memory limit; a host import's exception
        # or the guest's own trap is raised), drop the instance and free err and
        # trap.  Only the guest's own trap -- WasmTrap(what + wasmtime's message)
        # -- needs wasmtime's message: a stop of fastpath's own, on the way from
        # the deadline to its violation, does not build it.
        cdef PyObject *pending = <PyObject *>inst.host_exc
        cdef bint hit = inst.deadline_hit
        cdef bint cpu_hit = inst.cpu_hit
        cdef int64_t refused = inst.mem_refused
        cdef object exc
        cdef str text = what
        if pending == NULL and not hit and not cpu_hit and not refused:
            if err != NULL or trap != NULL:
                text = what + _take_message(err, trap)
        else:
            _drop_error(err, trap)
        inst.host_exc = NULL
        _destroy(inst)
        if pending != NULL:
            exc = <object>pending
            Py_DECREF(exc)
            raise exc
        if hit:
            return 1
        if cpu_hit:
            return 2
        if refused:
            return 3
        raise WasmTrap(text)

    def _call_under(self, budget, tuple args):
        """Call the export with args under budget, whose enforce() (or scope)
        is running on this thread, inside the hook's uninterruptible()."""
        return self._run(budget, fpw_tuple_items(args, 0), PyTuple_GET_SIZE(args))

    cdef object _run(self, object budget, PyObject **args, Py_ssize_t nargs):
        cdef fpw_val_raw vals[MAX_VALUES]
        cdef fpw_inst *inst
        cdef fpw_error *err
        cdef fpw_trap *trap = NULL
        cdef Py_ssize_t i
        cdef int64_t fuel, cpu_ns, deadline_ns, mem_limit, grace_ns, charge
        cdef uint64_t fuel_left = 1
        cdef uint8_t code = 255
        cdef int why = 0
        cdef double remaining_ms
        if nargs != self._nparams:
            raise TypeError(f"export {self._export.decode()!r} takes {self._nparams} "
                            f"arguments, got {nargs}")
        for i in range(nargs):
            _convert(&vals[i], self._params[i], <object>args[i], i, None, 0)
        if budget is self._own:
            fuel, cpu_ns, mem_limit = self._fuel, self._cpu_ns, self._mem_limit
            deadline_ns = self._own_deadline_ns
        else:
            remaining_ms = budget.remaining_ms()
            if budget.constraints is self._constraints:
                fuel, cpu_ns, mem_limit, grace_ns = (self._fuel, self._cpu_ns, self._mem_limit,
                                                     self._grace_ns)
            else:
                fuel, cpu_ns, mem_limit, grace_ns = self._fuel_for(budget.constraints)
            deadline_ns = _deadline_after(fpw_now_ns(), remaining_ms * 1e6 + <double>grace_ns)
        inst = self._pool_take()
        if inst != NULL:
            inst.mem_limit = mem_limit
        else:
            inst = self._instantiate(deadline_ns, mem_limit, budget)
        # The GIL stays held for the guest's first tick at most (fpw_epoch_callback).
        self._arm(inst, deadline_ns, cpu_ns, True)
        fpw_api.context_set_fuel(inst.ctx, <uint64_t>fuel if fuel >= 0 else FUEL_UNLIMITED)
        fpw_call_begin()
        err = fpw_api.func_call_unchecked(inst.ctx, &inst.func, vals, self._nvals, &trap)
        fpw_call_end()
        fpw_gil_back(inst)
        charge = inst.mem_bytes if inst.mem_bytes > inst.mem_refused else inst.mem_refused
        if err == NULL and trap == NULL and inst.host_exc == NULL:
            if not self._pool_put(inst):
                _destroy(inst)
            if charge:
                self._charge(budget, charge)
            if self._nresults == 1:
                return _from_raw(&vals[0], self._results[0])
            if self._nresults == 0:
                return None
            return tuple([_from_raw(&vals[i], self._results[i]) for i in range(self._nresults)])
        # Stopped: by the deadline, fuel, the memory limit, a host import's
        # exception or the guest's own trap.
        if trap != NULL:
            fpw_api.trap_code(trap, &code)
        if fuel >= 0:
            fpw_api.context_get_fuel(inst.ctx, &fuel_left)
        try:
            if inst.host_exc == NULL and not inst.deadline_hit and not inst.cpu_hit and (
                    code == FPW_TRAP_OUT_OF_FUEL or (fuel >= 0 and fuel_left == 0)):
                _drop_error(err, trap)
                _destroy(inst)
                why = 2
            else:
                why = self._fail(inst, err, trap, "")
        finally:
            # (after the instance and the trap are freed, whatever _fail raises)
            if charge:
                self._charge(budget, charge)
        budget._raise_limit(_TIMEOUT if why == 1 else (_CPU if why == 2 else _MEMORY))

    # The instance pool: one instance (its store) serves one call at a time.
    # Under a GIL these run with no Python code in between; with no GIL, in a
    # critical section on the hook (_fp_atomic.h).
    cdef fpw_inst *_pool_take(self) noexcept:
        cdef fpw_inst *inst = NULL
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        if self._nidle:
            self._nidle -= 1
            inst = self._idle[self._nidle]
        fp_cs_end(&cs)
        return inst

    cdef bint _pool_put(self, fpw_inst *inst) noexcept:
        cdef bint kept = False
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        if self._nidle < self._pool_max:
            self._idle[self._nidle] = inst
            self._nidle += 1
            kept = True
        fp_cs_end(&cs)
        return kept

    cdef int _charge(self, object budget, int64_t nbytes) except -1:
        # The guest's linear memory onto the budget; a hook's guests mostly
        # have the same size call after call: one int object for it, not one
        # allocated (and counted by a memory-limited budget) per call.
        cdef object charged
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        if nbytes != self._charged_bytes or self._charged is None:
            self._charged = nbytes
            self._charged_bytes = nbytes
        charged = self._charged
        fp_cs_end(&cs)
        budget.charge_memory(charged)
        return 0

    def _warm(self, int64_t max_ns):
        """Instantiate one instance into the pool, outside any budget."""
        cdef fpw_inst *inst
        if self._nidle < self._pool_max:
            inst = self._instantiate(fpw_now_ns() + max_ns, self._mem_limit, None)
            if not self._pool_put(inst):
                _destroy(inst)

    def _fresh_instance(self):
        """Instantiate one instance and drop it, outside any budget (what a call
        finding the pool empty pays; for the benchmarks)."""
        _destroy(self._instantiate(fpw_now_ns() + 60 * 1000000000, self._mem_limit, None))

    def _measure(self, tuple args):
        """Run the export once outside any budget with unlimited fuel: (result,
        thread CPU ns, fuel consumed).  For the fuel calibration."""
        cdef fpw_val_raw vals[MAX_VALUES]
        cdef fpw_inst *inst
        cdef fpw_error *err
        cdef fpw_trap *trap = NULL
        cdef uint64_t left = 0
        cdef int64_t cpu0, cpu1
        cdef Py_ssize_t i
        if len(args) != self._nparams:
            raise TypeError(f"export takes {self._nparams} arguments, got {len(args)}")
        for i in range(self._nparams):
            _convert(&vals[i], self._params[i], args[i], i, None, 0)
        inst = self._instantiate(fpw_now_ns() + 60 * 1000000000, -1, None)
        self._arm(inst, fpw_now_ns() + 60 * 1000000000, -1, False)
        fpw_api.context_set_fuel(inst.ctx, FUEL_UNLIMITED)
        with nogil:
            fpw_call_begin()
            cpu0 = fpw_thread_cpu_ns()
            err = fpw_api.func_call_unchecked(inst.ctx, &inst.func, vals, self._nvals, &trap)
            cpu1 = fpw_thread_cpu_ns()
            fpw_call_end()
        fpw_api.context_get_fuel(inst.ctx, &left)
        if err != NULL or trap != NULL:
            self._fail(inst, err, trap, "the calibration guest stopped: ")
            raise WasmTrap("the calibration guest stopped")
        _destroy(inst)
        return (_from_raw(&vals[0], self._results[0]) if self._nresults else None,
                cpu1 - cpu0, FUEL_UNLIMITED - left)

    cdef object _call(self, PyObject **args, Py_ssize_t nargs):
        # hook(*args).  The guest's deadline is the epoch's to enforce:
        # fastpath's own interrupt is put off from before the guest runs until
        # the budget has disarmed (an interrupt pending while the guest cannot
        # see it would otherwise land in whatever Python code runs next -- a
        # finalizer of the garbage collector, say -- and be lost there).  Host
        # imports lift it while they run.
        cdef PyObject *vec[MAX_VALUES + 4]
        cdef PyObject *exit_args[3]
        cdef Py_ssize_t i
        cdef int64_t start_ns
        cdef object outer
        if nargs != self._nparams:
            raise TypeError(f"export {self._export.decode()!r} takes {self._nparams} "
                            f"arguments, got {nargs}")
        budget = PyObject_Vectorcall(self._current_budget, NULL, 0, NULL)
        PyObject_Vectorcall(self._defer_enter, NULL, 0, NULL)
        try:
            if budget is not None:
                return self._run(budget, args, nargs)
            # ExecutionBudget.enforce(budget, HookCore._run_under, self, budget,
            # *args) with the argument vector as it stands: no tuple, no bound
            # method, no lookup per call.  The guest's deadline is max_exec_ms
            # from a clock reading taken just after the budget started: never
            # before the budget's own (the first budget of a process can take
            # milliseconds to start), later by the time that reading takes.
            vec[1] = <PyObject *>_RUN_UNDER
            vec[2] = <PyObject *>self
            for i in range(nargs):
                vec[4 + i] = args[i]
            vec[0] = <PyObject *>self._constraints
            budget = PyObject_Vectorcall(self._create_budget, vec, 1, NULL)
            start_ns = fpw_now_ns()
            vec[0] = vec[3] = <PyObject *>budget
            # (_own, _own_deadline_ns) change together, GIL held: whatever
            # budget _own is, the deadline is its own; another thread's call
            # of this hook meanwhile only sends _run the slower way.
            outer, outer_deadline_ns = self._own, self._own_deadline_ns
            self._own = budget
            self._own_deadline_ns = _deadline_after(start_ns, <double>self._max_ns
                                                    + <double>self._grace_ns)
            try:
                return PyObject_Vectorcall(self._enforce, vec, <size_t>(4 + nargs), NULL)
            finally:
                self._own, self._own_deadline_ns = outer, outer_deadline_ns
        finally:
            exit_args[0] = exit_args[1] = exit_args[2] = <PyObject *>None
            PyObject_Vectorcall(self._defer_exit, exit_args, 3, NULL)

    def __call__(self, *args):
        # Only an explicit hook.__call__(...) gets here: hook(...) goes through
        # _hook_vectorcall (fp_enable_vectorcall below replaces the slot).
        return self._call(fpw_tuple_items(args, 0), PyTuple_GET_SIZE(args))


cdef object _hook_vectorcall(object self, PyObject **args, size_t nargsf, PyObject *kwnames):
    if kwnames != NULL and PyTuple_GET_SIZE(<object>kwnames):
        raise TypeError(f"a WasmHook takes positional arguments only, got keywords "
                        f"{<object>kwnames!r}")
    return (<HookCore>self)._call(args, PyVectorcall_NARGS(nargsf))


cdef object _run_under_fastcall(object self, PyObject **args, Py_ssize_t nargs,
                                PyObject *kwnames):
    # HookCore._run_under(hook, budget, *args): the fn a hook's own budget
    # enforces (the method descriptor checks that hook is a HookCore).
    if nargs < 1 or (kwnames != NULL and PyTuple_GET_SIZE(<object>kwnames)):
        raise TypeError("_run_under(budget, *args)")
    return (<HookCore>self)._run(<object>args[0], args + 1, nargs - 1)


fp_install_fastcall(HookCore, "_run_under", _run_under_fastcall,
                    "_run_under($self, budget, /, *args)\n--\n\n"
                    "The export's call under budget (hook(...) enforces it).")
cdef object _RUN_UNDER = HookCore.__dict__["_run_under"]


cdef inline int64_t _deadline_after(int64_t now_ns, double ns) noexcept:
    # now_ns + ns, saturated: a time past 2**63 ns is no deadline
    if ns < 9.2e18 - <double>now_ns:
        return now_ns + <int64_t>ns
    return 0x7FFFFFFFFFFFFFFF


def _vectorcall_offset_probe():
    cdef HookCore probe = HookCore.__new__(HookCore)
    return <Py_ssize_t>(<char *>&probe._vectorcall - <char *><PyObject *>probe)


fp_enable_vectorcall(HookCore, _vectorcall_offset_probe())


def inherit_vectorcall(type subclass):
    """Let `subclass` (fastpath.wasm.WasmHook) be called through HookCore's
    vectorcall entry without an args tuple."""
    if getattr(subclass, "__call__", None) is not HookCore.__dict__["__call__"]:
        raise TypeError(f"{subclass.__name__} defines its own __call__")
    fpw_inherit_vectorcall(subclass, HookCore)
