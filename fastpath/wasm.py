"""WebAssembly hooks on wasmtime, run under an ExecutionConstraints profile.

``WasmHook(module, export)`` compiles a module once (with wasmtime-py) and
calls one of its exports through wasmtime's C API from fastpath's compiled
core (``fastpath._wasm``), with instances reused from a pool.  The profile maps
onto the sandbox's own mechanisms:

============================  ===================================  ====================
profile field                 wasmtime mechanism                   violation
============================  ===================================  ====================
``max_exec_ms`` (deadline)    epoch interruption: one C ticker     ``TIMEOUT_EXCEEDED``
                              thread, per-store deadline checked   (interrupted)
                              by an epoch-deadline callback
``cpu_shares`` (allowance)    fuel, calibrated in fuel units per   ``CPU_EXCEEDED``
                              CPU ms on this machine               (interrupted)
``memory_limit_bytes``        the store's linear memories: a       ``MEMORY_EXCEEDED``
                              ``memory.grow`` past it returns -1
============================  ===================================  ====================

``import fastpath`` never imports this module or wasmtime; it needs the
``fastpath[wasm]`` extra.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import sys
import threading
import weakref
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, Union

import wasmtime
from wasmtime import _ffi as _wasmtime_ffi

from . import _impl, _wasm
from .errors import InvalidConfiguration

__all__ = ["WasmHook", "WasmTrap", "fuel_per_cpu_ms", "new_engine"]


class WasmTrap(Exception):
    """A guest's own trap (unreachable, out-of-bounds access, ...): the hook's
    error, not a constraint violation.  ``message`` is wasmtime's text, with the
    wasm backtrace."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check_layouts() -> None:
    # The C side declares wasmtime 50's struct layouts itself; refuse to run on
    # a wasmtime whose layouts differ.
    ffi = _wasmtime_ffi
    for name, size in _wasm.SIZES.items():
        theirs = ctypes.sizeof(getattr(ffi, name))
        if theirs != size:
            raise ImportError(f"fastpath.wasm: wasmtime {_wasmtime_version()} lays out {name} "
                              f"in {theirs} bytes, fastpath expects {size}; install "
                              f"fastpath[wasm] (wasmtime 50.x)")


def _wasmtime_version() -> str:
    from importlib.metadata import version
    return version("wasmtime")


_check_layouts()
_wasm.load(str(_wasmtime_ffi.filename), WasmTrap)

# id -> engine made by new_engine(), for as long as the engine lives
_ENGINES: "weakref.WeakValueDictionary[int, wasmtime.Engine]" = weakref.WeakValueDictionary()
_lock = threading.Lock()
_default_engine: Optional[wasmtime.Engine] = None


def _address(ptr: Any) -> int:
    return int(ctypes.cast(ptr, ctypes.c_void_p).value or 0)


def new_engine() -> wasmtime.Engine:
    """A wasmtime Engine configured for hooks: epoch interruption, fuel, and
    fastpath's linear memory (which enforces memory_limit_bytes).  Hooks made
    with ``engine=None`` share one such engine."""
    with _lock:
        return _new_engine_locked()


def _new_engine_locked() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = True
    _wasm.install_memory_creator(_address(config.ptr()))
    engine = wasmtime.Engine(config)
    _ENGINES[id(engine)] = engine
    return engine


def _engine(engine: Optional[wasmtime.Engine]) -> wasmtime.Engine:
    global _default_engine
    if engine is None:
        with _lock:
            if _default_engine is None:
                _default_engine = _new_engine_locked()
            return _default_engine
    if _ENGINES.get(id(engine)) is not engine:
        raise InvalidConfiguration(
            f"engine must come from fastpath.wasm.new_engine(), got {engine!r}: its Config "
            f"carries epoch interruption, fuel and fastpath's linear memory, and another "
            f"engine cannot be checked for them (wasmtime's C API cannot read an engine's "
            f"Config back)")
    return engine


# The value types a hook supports, as wasm_valtype_t objects to compare a
# signature's types with.  wasmtime 50's wasm_valtype_kind() -- what
# wasmtime-py's ValType.__str__ calls -- aborts the process for a v128 and for
# any reference type but a nullable externref or funcref ("... is not
# implemented"); wasmtime_wasm_valtype_equal() compares any two types without
# aborting.  Kept for the life of the process.
_SUPPORTED = tuple((_wasmtime_ffi.wasm_valtype_new(getattr(_wasmtime_ffi, "WASM_" + name.upper())),
                    kind) for name, kind in _wasm.KINDS.items())
_V128 = _wasmtime_ffi.wasmtime_wasm_valtype_v128()


def _kinds(types: List[Any], what: str) -> Tuple[int, ...]:
    # The value kinds of a signature's wasmtime.ValTypes (fastpath._wasm.KINDS),
    # never asking wasmtime for a kind it cannot name.
    out = []
    for t in types:
        ptr = t.ptr()
        for supported, kind in _SUPPORTED:
            if _wasmtime_ffi.wasmtime_wasm_valtype_equal(ptr, supported):
                out.append(kind)
                break
        else:
            which = ("v128" if _wasmtime_ffi.wasmtime_wasm_valtype_equal(ptr, _V128)
                     else "a reference type")
            raise InvalidConfiguration(f"{what} uses {which}; WasmHook supports the value "
                                       f"types i32, i64, f32 and f64 only")
    return tuple(out)


def _compile(module: Any, engine: wasmtime.Engine) -> wasmtime.Module:
    if isinstance(module, wasmtime.Module):
        return module
    try:
        if isinstance(module, (bytes, bytearray, memoryview)):
            binary = bytes(module)
        elif isinstance(module, str) and module.lstrip().startswith(("(", ";;")):
            binary = bytes(wasmtime.wat2wasm(module))
        elif isinstance(module, (str, os.PathLike)):
            path = os.fspath(module)
            if not os.path.isfile(path):
                raise InvalidConfiguration(f"module must be WAT text, wasm bytes, a path to "
                                           f"a file or a wasmtime.Module; no file {path!r}")
            with open(path, "rb") as f:
                binary = f.read()
        else:
            raise InvalidConfiguration(f"module must be WAT text, wasm bytes, a path or a "
                                       f"wasmtime.Module, got {type(module).__name__}")
        if not binary.startswith(b"\0asm"):
            binary = bytes(wasmtime.wat2wasm(binary.decode("utf-8", "replace")))
        return wasmtime.Module(engine, binary)
    except wasmtime.WasmtimeError as exc:
        raise InvalidConfiguration(f"module does not compile: {exc}") from None


_FUEL_LOCK = threading.Lock()
_fuel_per_ms: Optional[float] = None

# The calibration guest: the shape of a hook's match logic -- loads and
# stores to linear memory, integer arithmetic, a compare and a branch.
_CALIBRATION_WAT = """
(module
  (memory 1)
  (func (export "spin") (param $n i64) (result i64)
    (local $x i64) (local $a i32)
    (local.set $x (i64.const 88172645463325252))
    (block $done
      (loop $top
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $a (i32.and (i32.wrap_i64 (local.get $x)) (i32.const 4088)))
        (local.set $x (i64.xor (local.get $x) (i64.load (local.get $a))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (i64.store (local.get $a) (local.get $x))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $top)))
    (local.get $x)))
"""


def fuel_per_cpu_ms() -> float:
    """Fuel units a guest consumes per millisecond of thread CPU time on this
    machine, measured once (about 30 ms of calibration runs) on first use: the
    median of 5 runs of an integer loop.  A CPU allowance of A ms becomes
    A * fuel_per_cpu_ms() units of fuel."""
    global _fuel_per_ms
    with _FUEL_LOCK:
        if _fuel_per_ms is None:
            hook = WasmHook(_CALIBRATION_WAT, "spin",
                            constraints=_impl.core.ExecutionConstraints(60_000), pool=1)
            rates = []
            n = 200_000
            for _ in range(12):
                _, cpu_ns, fuel = hook._measure((n,))
                if cpu_ns < 2_000_000:
                    n *= 2           # too short to time: grow the run first
                    continue
                rates.append(fuel / (cpu_ns / 1e6))
                if len(rates) == 5:
                    break
            _fuel_per_ms = statistics.median(rates)
        return _fuel_per_ms


def _limits_for(constraints: Any) -> Tuple[int, int, int, int]:
    # (fuel for the CPU allowance or -1, the allowance in ns or -1,
    #  memory_limit_bytes or -1, ns a guest may run past the deadline): fail
    #  open lets a late call finish and stops only a runaway at twice its
    #  budget, as for Python code.
    allowance = constraints.cpu_allowance_ms
    fuel = -1 if allowance is None else int(allowance * fuel_per_cpu_ms())
    cpu_ns = -1 if allowance is None else int(allowance * 1e6)
    limit = constraints.memory_limit_bytes
    grace_ns = 0 if constraints.fail_closed_on_timeout else constraints.max_exec_ms * 1_000_000
    return fuel, cpu_ns, (-1 if limit is None else limit), grace_ns


def _core_of(constraints: Any) -> Any:
    # The core (compiled or twin) the constraints come from: its budgets,
    # current_budget() and uninterruptible() go together.
    module = sys.modules.get(type(constraints).__module__)
    if (module is not None and module.__name__ in ("fastpath._budget", "fastpath._budget_py")
            and isinstance(constraints, module.ExecutionConstraints)):
        return module
    raise InvalidConfiguration(f"constraints must be an ExecutionConstraints or None, "
                               f"got {constraints!r}")


HostImports = Mapping[str, Mapping[str, Callable[..., Any]]]


class WasmHook(_wasm.HookCore):
    """A WebAssembly export as a callable run under constraints.

    ``module``: WAT text, wasm bytes, a path to a ``.wat``/``.wasm`` file, or a
    ``wasmtime.Module`` compiled with ``engine``.  ``export``: the name of a
    function export whose parameters and results are i32, i64, f32 or f64.
    ``constraints``: default ``ExecutionConstraints.wasm_hook(10)``.
    ``engine``: one from :func:`new_engine` (default: a shared one).
    ``imports``: ``{"module": {"name": callable}}`` for every function the module
    imports; the callables run under the same budget, preemptible like any
    Python code.  ``pool``: how many idle instances to keep.

    ``hook(*args)`` runs the export under a fresh budget of ``constraints`` --
    or, when called inside a running ``enforce()`` (e.g. the enforcer's
    pipeline), under that budget -- and returns its result (None, one value, or
    a tuple).  A guest past the deadline, out of fuel or over its memory raises
    ``ConstraintViolation``; a guest's own trap raises :class:`WasmTrap`.
    """

    __slots__ = ("module", "export", "constraints", "engine")

    def __init__(self, module: Union[str, bytes, "os.PathLike[str]", wasmtime.Module],
                 export: str, *, constraints: Any = None,
                 engine: Optional[wasmtime.Engine] = None,
                 imports: Optional[HostImports] = None, pool: int = 8) -> None:
        if not isinstance(export, str) or not export:
            raise InvalidConfiguration(f"export must be a non-empty str, got {export!r}")
        if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= 4096:
            raise InvalidConfiguration(f"pool must be an int in 1..4096, got {pool!r}")
        if constraints is None:
            constraints = _impl.core.ExecutionConstraints.wasm_hook(10)
        core = _core_of(constraints)
        engine = _engine(engine)
        compiled = _compile(module, engine)
        export_type = None
        for exp in compiled.exports:
            if exp.name == export:
                export_type = exp.type
        if not isinstance(export_type, wasmtime.FuncType):
            names = [e.name for e in compiled.exports if isinstance(e.type, wasmtime.FuncType)]
            raise InvalidConfiguration(f"export {export!r} is not a function export of the "
                                       f"module (its function exports: {names})")
        params = _kinds(export_type.params, f"export {export!r}")
        results = _kinds(export_type.results, f"export {export!r}")
        hosts, import_types = self._host_table(compiled, imports)
        self._setup(_address(engine.ptr()), _address(compiled.ptr()), export, params, results,
                    hosts, pool, constraints, _limits_for(constraints), core, _limits_for,
                    (engine, compiled, import_types))
        self.module = compiled
        self.export = export
        self.constraints = constraints
        self.engine = engine
        # Warm the pool: instantiates (running the start function, if any, under
        # the deadline of max_exec_ms) and finds the export.
        self._warm(constraints.max_exec_ms * 1_000_000)

    @staticmethod
    def _host_table(compiled: wasmtime.Module,
                    imports: Optional[HostImports]) -> Tuple[List[Any], List[Any]]:
        # (one row per function import, the wasmtime FuncTypes the rows point
        # into: they must outlive the linking)
        if imports is None:
            imports = {}
        if not isinstance(imports, Mapping):
            raise InvalidConfiguration(f"imports must be a mapping of module name to "
                                       f"{{name: callable}}, got {imports!r}")
        given: Dict[Tuple[str, str], Callable[..., Any]] = {}
        for mod, names in imports.items():
            if not isinstance(mod, str) or not isinstance(names, Mapping):
                raise InvalidConfiguration(f"imports[{mod!r}] must be a mapping of name to "
                                           f"callable, got {names!r}")
            for name, fn in names.items():
                if not isinstance(name, str) or not callable(fn):
                    raise InvalidConfiguration(f"imports[{mod!r}][{name!r}] must be a "
                                               f"callable, got {fn!r}")
                given[(mod, name)] = fn
        hosts = []
        types = []
        for imp in compiled.imports:
            key = (imp.module, imp.name or "")
            ty = imp.type
            if not isinstance(ty, wasmtime.FuncType):
                raise InvalidConfiguration(f"the module imports {key[0]}.{key[1]}, a "
                                           f"{type(ty).__name__}; WasmHook provides function "
                                           f"imports only")
            label = f"import {key[0]}.{key[1]}"
            params, results = _kinds(ty.params, label), _kinds(ty.results, label)
            if key not in given:
                raise InvalidConfiguration(f"the module imports the function "
                                           f"{key[0]}.{key[1]}; pass it in imports=")
            types.append(ty)
            hosts.append((key[0], key[1], _address(ty.ptr()), given.pop(key), params, results))
        if given:
            extra = sorted(f"{m}.{n}" for m, n in given)
            raise InvalidConfiguration(f"imports names functions the module does not "
                                       f"import: {extra}")
        return hosts, types

    def run_async(self, *args: Any) -> Awaitable[Any]:
        """Await the export's result: the guest runs in the event loop's thread as
        one step of ``enforce_async`` (or inside the running step's budget)."""
        return _run_async(self, args)

    def __repr__(self) -> str:
        return (f"WasmHook(export={self.export!r}, constraints={self.constraints!r}, "
                f"idle_instances={self.idle_instances})")


_wasm.inherit_vectorcall(WasmHook)


async def _step(hook: WasmHook, budget: Any, args: Tuple[Any, ...]) -> Any:
    with _core_of(hook.constraints).uninterruptible():     # as in WasmHook.__call__
        return hook._call_under(budget, args)


async def _run_async(hook: WasmHook, args: Tuple[Any, ...]) -> Any:
    core = _core_of(hook.constraints)
    budget = core.current_budget()
    if budget is not None:
        with core.uninterruptible():
            return hook._call_under(budget, args)
    budget = hook.constraints.create_budget()
    return await budget.enforce_async(_step, hook, budget, args)

