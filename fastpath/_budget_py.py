"""The pure-Python twin of the compiled core (``_budget.pyx``).

Same public names and behaviour; it is the reference the benchmarks compare
against and the implementation used where no compiler is available
(``FASTPATH_NO_EXTENSIONS=1``).  Differences, all documented in the README:

* CPU time is always read from the thread's CPU clock at the start and end of
  a call (``cpu_time_measured`` is always True): simpler, and slower.
* No automatic memory accounting: Python code cannot hook the allocator, so
  only ``charge_memory()`` counts (``memory_allocated_bytes`` and
  ``memory_peak_bytes`` are 0) and the memory cap is checked on return.
* The watchdog is a Python thread: it needs the GIL to act, so an interrupt
  lands up to ``sys.getswitchinterval()`` (5 ms by default) late in every
  thread, the main thread included.  It sends one interrupt per call and does
  not re-send one the call swallowed.  After 100 ms with nothing armed it looks
  only every 50 ms; a new call wakes it, but a call armed in the instant it
  goes idle may be interrupted up to 50 ms late.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import random
import sys
import sysconfig
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, Generator, List, Literal,
                    Mapping, Optional, ParamSpec, Tuple, TypeVar)

from . import _config
from ._outcome import Ending, Verdict, is_violation
from ._outcome import violation as _outcome_violation
from ._critical import thread_is_critical, track_collections
from ._flow import current_flow
from ._histogram_py import LatencyHistogram
from .errors import (
    ConstraintViolation,
    ConstraintViolationType,
    ExecutionInterrupted,
    InvalidConfiguration,
    ResourceExhausted,
)
from .typedefs import PreemptionInfo

_logger = logging.getLogger("fastpath")

if TYPE_CHECKING:  # pragma: no cover
    from .enforcer import RuleType

T = TypeVar("T")
P = ParamSpec("P")

# The violation-kind numbers are fastpath.errors' (the compiled core's C
# copies are checked against them at its import).
TIMEOUT = int(ConstraintViolationType.TIMEOUT_EXCEEDED)
MEMORY = int(ConstraintViolationType.MEMORY_EXCEEDED)
CPU = int(ConstraintViolationType.CPU_EXCEEDED)
_KINDS = (
    None,
    ConstraintViolationType.TIMEOUT_EXCEEDED,
    ConstraintViolationType.MEMORY_EXCEEDED,
    ConstraintViolationType.CPU_EXCEEDED,
)
_CHECK_ORDER = (TIMEOUT, MEMORY, CPU)
NEVER = sys.maxsize * 2 + 1  # > any monotonic ns reading
WATCHDOG_TICK_S = 0.0005
MAX_NESTING = 128  # nested enforce() calls per thread (as in the compiled core)

_now_ns = time.monotonic_ns
_thread_cpu_ns = time.thread_time_ns
_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
_INTERRUPT = ctypes.py_object(ExecutionInterrupted)
_CLEAR = ctypes.py_object()  # NULL: clears a pending asynchronous exception


# ------------------------------------------------------------------ constraints


class ExecutionConstraints:
    """Limits for one rule evaluation: immutable, hashable, picklable."""

    __slots__ = (
        "_values",
        "_max_exec_ns",
        "_cpu_allowance_ns",
        "_memory_limit",
        "_always",
        "_never",
        "_rate",
    )

    _values: _config.Normalized
    _max_exec_ns: int
    _cpu_allowance_ns: Optional[int]
    _memory_limit: Optional[int]
    _always: bool
    _never: bool
    _rate: float

    def __init__(
        self,
        max_exec_ms: int,
        *,
        cpu_shares: Optional[int] = None,
        memory_limit_bytes: Optional[int] = None,
        sampling_rate: float = 1.0,
        fail_closed_on_timeout: bool = True,
        max_retries: Optional[int] = None,
        retry_backoff_ms: Optional[int] = None,
    ) -> None:
        try:
            object.__getattribute__(self, "_values")
        except AttributeError:
            pass                # not initialised yet: the normal case
        else:
            raise AttributeError("ExecutionConstraints is immutable; use replace()")
        self._assign(
            _config.normalize(
                max_exec_ms,
                cpu_shares,
                memory_limit_bytes,
                sampling_rate,
                fail_closed_on_timeout,
                max_retries,
                retry_backoff_ms,
            )
        )

    def _assign(self, values: _config.Normalized) -> None:
        max_exec_ms, cpu_shares, memory_limit, rate, _fail_closed, _r, _b = values
        setter = object.__setattr__
        setter(self, "_values", values)
        setter(self, "_max_exec_ns", min(max_exec_ms * 1_000_000, _config.INT64_MAX))
        setter(
            self,
            "_cpu_allowance_ns",
            None if cpu_shares is None
            else min(max_exec_ms * cpu_shares * 10_000, _config.INT64_MAX),
        )
        setter(self, "_memory_limit", memory_limit)
        setter(self, "_always", rate >= 1.0)
        setter(self, "_never", rate <= 0.0)
        setter(self, "_rate", rate)

    # A call with wrong arguments names ExecutionConstraints(), never __init__().
    __init__.__qualname__ = "ExecutionConstraints"

    if not TYPE_CHECKING:   # (mypy would take __getattr__ as "any attribute exists")
        def __getattr__(self, name: str) -> Any:
            # Reached only for a missing attribute: ExecutionConstraints.__new__
            # without __init__ has no values, and is unusable rather than invalid.
            if name in ExecutionConstraints.__slots__:
                raise _config.unset_constraints()
            raise AttributeError(
                f"'ExecutionConstraints' object has no attribute {name!r}", name=name, obj=self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ExecutionConstraints is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ExecutionConstraints is immutable: cannot delete {name!r}")

    max_exec_ms = property(lambda self: self._values[0])
    cpu_shares = property(lambda self: self._values[1])
    memory_limit_bytes = property(lambda self: self._values[2])
    sampling_rate = property(lambda self: self._values[3])
    fail_closed_on_timeout = property(lambda self: self._values[4])
    max_retries = property(lambda self: self._values[5])
    retry_backoff_ms = property(lambda self: self._values[6])

    @property
    def cpu_allowance_ms(self) -> Optional[float]:
        """CPU time allowed per call (max_exec_ms * cpu_shares / 100), or None."""
        return None if self._cpu_allowance_ns is None else self._cpu_allowance_ns / 1e6

    @classmethod
    def _from(cls, values: _config.Normalized) -> "ExecutionConstraints":
        self = object.__new__(cls)
        self._assign(values)
        return self

    # Presets are immutable values, built once each (per argument for the two
    # that take one), as in the compiled core.
    @classmethod
    def fast_rule(cls) -> "ExecutionConstraints":
        """5 ms, 10 CPU shares, 1 MB, fail closed."""
        return _preset(_PRESETS, str, "fast_rule", lambda _: _config.fast_rule_args())

    @classmethod
    def semantic_rule(cls) -> "ExecutionConstraints":
        """100 ms, 50 CPU shares, 10 MB, fail open, 2 retries 10 ms apart."""
        return _preset(_PRESETS, str, "semantic_rule", lambda _: _config.semantic_rule_args())

    @classmethod
    def wasm_hook(cls, max_ms: int = 10) -> "ExecutionConstraints":
        """max_ms, 20 CPU shares, 5 MB, fail closed."""
        return _preset(_WASM_HOOKS, int, max_ms, _config.wasm_hook_args)

    @classmethod
    def observational(cls, sampling_rate: float = 1.0) -> "ExecutionConstraints":
        """2 ms, 5 CPU shares, 512 KB, the given sampling rate, fail open."""
        return _preset(_OBSERVATIONAL, float, sampling_rate, _config.observational_args)

    def __eq__(self, other: object) -> bool:
        if type(other) is not ExecutionConstraints:
            return NotImplemented
        return self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return _config.format_repr(self._values)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_restore_constraints, self._values)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict of JSON types (round-trips through from_dict)."""
        return _config.as_dict(self._values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExecutionConstraints":
        """Build from a mapping such as to_dict() returns; unknown keys are errors."""
        return cls(**_config.kwargs_from_dict(data))

    def replace(self, **changes: Any) -> "ExecutionConstraints":
        """A validated copy with some fields changed."""
        _config.check_replace_keys(changes)
        fields = _config.as_dict(self._values)
        fields.update(changes)
        return ExecutionConstraints(**fields)

    def should_sample(self) -> bool:
        """True with probability sampling_rate (exactly at 0.0 and 1.0)."""
        if self._always:
            return True
        if self._never:
            return False
        return _random() < self._rate

    def create_budget(self) -> "ExecutionBudget":
        """A started ExecutionBudget for these constraints."""
        return ExecutionBudget(self)


_PRESETS: Dict[Any, ExecutionConstraints] = {}
_WASM_HOOKS: Dict[Any, ExecutionConstraints] = {}
_OBSERVATIONAL: Dict[Any, ExecutionConstraints] = {}
_PRESET_CACHE_MAX = 64


def _preset(cache: Dict[Any, ExecutionConstraints], exact: type, arg: Any,
            build: Callable[[Any], _config.Normalized]) -> ExecutionConstraints:
    """A preset from ``cache`` when ``arg`` is of type ``exact`` (a bool is never
    taken for 1, nor an int for a float's key); at most _PRESET_CACHE_MAX kept."""
    if type(arg) is exact:
        found = cache.get(arg)
        if found is not None:
            return found
    found = ExecutionConstraints._from(build(arg))
    if type(arg) is exact and len(cache) < _PRESET_CACHE_MAX:
        cache[arg] = found
    return found


def _restore_constraints(*values: Any) -> ExecutionConstraints:
    return ExecutionConstraints._from(_config.normalize(*values))


_local = threading.local()


def _random() -> float:
    try:
        return _local.rng.random()  # type: ignore[no-any-return]
    except AttributeError:
        _local.rng = random.Random()
        return _local.rng.random()  # type: ignore[no-any-return]


def _reseed_sampler(seed: int) -> None:
    """Re-seed the calling thread's generator (0: fresh random seed)."""
    _local.rng = random.Random(seed or None)


# ------------------------------------------------------------------------ stats


class ExecutionStats:
    """What one budget measured.  See the README's "What the figures mean"."""

    __slots__ = ("elapsed_ns", "memory_used_bytes", "cpu_time_us", "cpu_time_measured",
                 "violations", "memory_allocated_bytes", "memory_peak_bytes")

    elapsed_ns: int
    memory_used_bytes: int
    memory_allocated_bytes: int
    memory_peak_bytes: int
    cpu_time_us: int
    cpu_time_measured: bool
    violations: Tuple[ConstraintViolationType, ...]

    def __init__(
        self,
        *,
        elapsed_ns: int,
        memory_used_bytes: int = 0,
        cpu_time_us: int = 0,
        cpu_time_measured: bool = False,
        violations: Any = (),
        memory_allocated_bytes: int = 0,
        memory_peak_bytes: int = 0,
    ) -> None:
        values = _config.check_stats(elapsed_ns, memory_used_bytes, cpu_time_us,
                                     cpu_time_measured, violations, memory_allocated_bytes,
                                     memory_peak_bytes)
        setter = object.__setattr__
        for name, value in zip(("elapsed_ns", "memory_used_bytes", "cpu_time_us",
                                "cpu_time_measured", "violations", "memory_allocated_bytes",
                                "memory_peak_bytes"), values, strict=True):
            setter(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ExecutionStats is read-only: cannot set {name!r}")

    @property
    def elapsed_ms(self) -> float:
        """elapsed_ns in milliseconds."""
        return self.elapsed_ns / 1e6

    @property
    def violation_count(self) -> int:
        return len(self.violations)

    def _values(self) -> Tuple[Any, ...]:
        return (
            self.elapsed_ns,
            self.memory_used_bytes,
            self.cpu_time_us,
            self.cpu_time_measured,
            self.violations,
            self.memory_allocated_bytes,
            self.memory_peak_bytes,
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not ExecutionStats:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (
            f"ExecutionStats(elapsed_ns={self.elapsed_ns}, "
            f"memory_used_bytes={self.memory_used_bytes}, cpu_time_us={self.cpu_time_us}, "
            f"cpu_time_measured={self.cpu_time_measured}, violations={self.violations!r}, "
            f"memory_allocated_bytes={self.memory_allocated_bytes}, "
            f"memory_peak_bytes={self.memory_peak_bytes})"
        )

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_restore_stats, self._values())


def _restore_stats(*values: Any) -> ExecutionStats:
    elapsed_ns, memory, cpu_us, measured, violations, allocated, peak = values
    return ExecutionStats(
        elapsed_ns=elapsed_ns,
        memory_used_bytes=memory,
        cpu_time_us=cpu_us,
        cpu_time_measured=measured,
        violations=violations,
        memory_allocated_bytes=allocated,
        memory_peak_bytes=peak,
    )


# ------------------------------------------------------------------ the watchdog


_FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
_NO_LOCK = contextlib.nullcontext()


class _Slot:
    """One thread's armed state (the twin of fp_slot)."""

    __slots__ = (
        "armed_gen",
        "interrupt_at",
        "cpu",
        "cpu_gens",
        "next_gen",
        "depth",
        "reset_gen",
        "unordered",
        "defer",
        "fire_gen",
        "fire_lock",
        "refire",
        "fire_kind",
        "fire_ns",
        "current",
        "ident",
        "cpu_clock",
        "__weakref__",
    )

    def __init__(self) -> None:
        self.armed_gen = 0
        self.interrupt_at = NEVER
        # CPU watches, outermost first: (gen, limit_ns, interrupt, cpu_at_start)
        self.cpu: Tuple[Tuple[int, int, bool, int], ...] = ()
        self.cpu_gens: Tuple[int, ...] = ()     # the watches' gens (a membership test, no call)
        self.next_gen = 0
        self.depth = 0              # enforce() calls open on this thread
        self.reset_gen = 0          # calls armed up to this gen were cleared by a reset
        self.unordered = False      # calls returned out of order here (greenlets)
        self.defer = 0              # open uninterruptible() blocks
        self.fire_gen = 0
        # The watchdog's check + injection and the owner's disarm + fire_gen read
        # (and uninterruptible()'s entry) hold it on a free-threaded build, where
        # no GIL keeps the owner from running in between; a no-op context under a
        # GIL, where the disarm sites do not touch it (no call there: see enforce).
        self.fire_lock = threading.Lock() if _FREE_THREADED else _NO_LOCK
        self.refire = False         # send fire_gen's interrupt again (see uninterruptible)
        self.fire_kind = 0
        self.fire_ns = 0
        self.current: Optional[ExecutionBudget] = None   # the innermost sync budget running
        self.ident = threading.get_ident()
        try:
            self.cpu_clock: Optional[int] = time.pthread_getcpuclockid(self.ident)
        except (AttributeError, OSError):  # pragma: no cover - non-Linux
            self.cpu_clock = None


_slots: "weakref.WeakSet[_Slot]" = weakref.WeakSet()
_watchdog_lock = threading.Lock()
_watchdog: Optional[threading.Thread] = None
_watchdog_stop = threading.Event()
_preempt_enabled = _config.env_flag("FASTPATH_PREEMPT", True)
# The compiled core's other variables are checked here too (by the same
# functions), so that an environment one core accepts the other accepts: the
# twin has no preemption signal, no TSC clock and no GIL hand-over to tune.
_config.env_flag("FASTPATH_FAST_GIL", True)
_config.env_clock()
_config.env_preempt_signal()
_fires = 0


def _slot() -> _Slot:
    try:
        return _local.slot  # type: ignore[no-any-return]
    except AttributeError:
        slot = _local.slot = _Slot()
        _slots.add(slot)
        return slot


_deferrals = 0


def _fire(slot: _Slot, gen: int, kind: int, due: int) -> None:
    """Interrupt `gen` on its thread, unless the thread is inside an
    uninterruptible() block or a stdlib lock holder (then: next tick)."""
    global _fires, _deferrals
    if slot.defer > 0 or thread_is_critical(slot.ident):
        _deferrals += 1
        return
    with slot.fire_lock:
        if slot.defer > 0:          # (entered uninterruptible() meanwhile: no GIL)
            _deferrals += 1
            return
        if not (slot.refire and slot.fire_gen == gen):
            slot.fire_kind = kind
            slot.fire_ns = due
        slot.fire_gen = gen
        slot.refire = False
        # No call between the check and the injection: the owner cannot run (and
        # disarm) in between, because the GIL is only handed over at a call or a
        # backward jump -- or, with no GIL, because it disarms under fire_lock.
        if slot.armed_gen == gen or gen in slot.cpu_gens:
            _set_async_exc(slot.ident, _INTERRUPT)
            _fires += 1


WATCHDOG_IDLE_TICKS = 200        # ~100 ms without anything armed ...
WATCHDOG_IDLE_TICK_S = 0.05      # ... and the watchdog only looks every 50 ms
_watchdog_wake = threading.Event()
_watchdog_idle = False
_ticks = 0      # watchdog loop iterations (preemption_info()["ticks"])


def _watchdog_main() -> None:
    global _watchdog_idle, _ticks
    idle_ticks = 0
    while not _watchdog_stop.is_set():
        _ticks += 1
        if _watchdog_idle:
            _watchdog_wake.wait(WATCHDOG_IDLE_TICK_S)
        else:
            _watchdog_wake.wait(WATCHDOG_TICK_S)
        _watchdog_wake.clear()
        now = _now_ns()
        active = False
        for slot in list(_slots):
            active = bool(slot.armed_gen or slot.cpu) or active
            try:
                _watch(slot, now)
            except Exception:           # noqa: BLE001 - the watchdog must go on
                _tick_failed()
        idle_ticks = 0 if active else idle_ticks + 1
        _watchdog_idle = idle_ticks >= WATCHDOG_IDLE_TICKS


def _watch(slot: _Slot, now: int) -> None:
    """One tick's look at one thread: interrupt a call past its deadline or
    its CPU allowance."""
    gen = slot.armed_gen
    watches = slot.cpu
    if slot.unordered or not _preempt_enabled:
        return
    if watches and slot.cpu_clock is not None:
        try:
            cpu = time.clock_gettime_ns(slot.cpu_clock)
        except OSError:
            return
        over = [(wgen, cpu - start - limit) for wgen, limit, interrupt, start in watches
                if interrupt and cpu - start >= limit
                and (slot.fire_gen != wgen or slot.refire)]
        if over:
            wgen, excess = over[0]
            _fire(slot, wgen, CPU, _now_ns() - excess)
            return
    if gen and slot.interrupt_at <= now and (slot.fire_gen != gen or slot.refire):
        _fire(slot, gen, TIMEOUT, slot.interrupt_at)


TICK_ERROR_LOG_S = 10.0     # at most one log record per this many seconds
_tick_error_logged = -TICK_ERROR_LOG_S


def _tick_failed() -> None:
    """An unexpected error in one look (a bug, or a torn read of another
    thread's state): logged, and the watchdog goes on -- a dead watchdog would
    leave every later call unstopped."""
    global _tick_error_logged
    now = time.monotonic()
    if now - _tick_error_logged >= TICK_ERROR_LOG_S:
        _tick_error_logged = now
        _logger.exception("fastpath's watchdog (twin core): one look at a thread failed; "
                          "it looks again next tick")


def _wake_watchdog() -> None:
    """Called before arming: an idle watchdog goes back to its fast tick."""
    global _watchdog_idle
    if _watchdog_idle:
        _watchdog_idle = False
        _watchdog_wake.set()


def _ensure_watchdog() -> None:
    global _watchdog
    if _watchdog is not None and _watchdog.is_alive():
        return
    with _watchdog_lock:
        if _watchdog is None or not _watchdog.is_alive():
            track_collections()
            _watchdog_stop.clear()
            _watchdog = threading.Thread(target=_watchdog_main, name="fastpath-wd-py", daemon=True)
            _watchdog.start()


def _stop_watchdog() -> None:
    _watchdog_stop.set()
    _watchdog_wake.set()
    if _watchdog is not None and _watchdog.is_alive():
        _watchdog.join(timeout=1.0)


def _after_fork_in_child() -> None:
    global _watchdog, _watchdog_lock
    _watchdog = None
    _watchdog_lock = threading.Lock()
    mine = getattr(_local, "slot", None)
    for slot in list(_slots):
        if slot is not mine:
            _slots.discard(slot)
    if mine is not None:
        mine.ident = threading.get_ident()


atexit.register(_stop_watchdog)
os.register_at_fork(after_in_child=_after_fork_in_child)


def set_preemption(enabled: bool) -> None:
    """Enable or disable interrupting calls process-wide (limits are still reported)."""
    global _preempt_enabled
    _preempt_enabled = _config.check_bool("enabled", enabled)


def preemption_info() -> PreemptionInfo:
    """How calls are interrupted in this process."""
    return {
        "enabled": _preempt_enabled,
        "main_thread": "gil",
        "signal": None,
        "signal_route": "off",
        "watchdog_running": _watchdog is not None and _watchdog.is_alive(),
        "watchdog_tick_ns": int(WATCHDOG_TICK_S * 1e9),
        "membarrier": False,
        "fast_gil_handover": False,
        "clock": "CLOCK_MONOTONIC",
        "ticks": _ticks,
        "interrupts_sent": _fires,
        "interrupts_deferred": _deferrals,
    }


class uninterruptible:
    """Put off interrupts while the block runs (sync ``with`` or ``async with``).

    For the application's own critical sections, such as ``lock.acquire()``
    followed by a ``try:`` on a later line: an interrupt due inside the block
    is delivered shortly after it ends.  Counted per thread; blocks nest.
    """

    __slots__ = ()

    def __enter__(self) -> "uninterruptible":
        slot = _slot()
        if not _FREE_THREADED:
            slot.defer += 1
            if slot.fire_gen and (slot.fire_gen == slot.armed_gen
                                  or slot.fire_gen in slot.cpu_gens):
                # An interrupt sent for the running call may not have been raised
                # yet (3.13 raises it at the eval-breaker check after the one it
                # was sent at, which can be inside this block): take it back, and
                # let the watchdog send it again (it defers it while the block runs).
                _set_async_exc(slot.ident, _CLEAR)
                slot.refire = True
            return self
        with slot.fire_lock:        # no GIL: the watchdog checks defer under it
            slot.defer += 1
            if slot.fire_gen and (slot.fire_gen == slot.armed_gen
                                  or slot.fire_gen in slot.cpu_gens):
                _set_async_exc(slot.ident, _CLEAR)
                slot.refire = True
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> Literal[False]:
        slot = _slot()
        if slot.defer > 0:
            slot.defer -= 1
        return False

    async def __aenter__(self) -> "uninterruptible":
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException],
                        tb: Any) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


# ----------------------------------------------------------------------- budget


class ExecutionBudget:
    """The running limits of one evaluation; its clock starts when it is created.

    Single-threaded: create it, use it and enforce with it on one thread.
    """

    __slots__ = (
        "_constraints",
        "_start_ns",
        "_deadline_ns",
        "_stop_ns",
        "_memory_charged",
        "_cpu_ns",
        "_violations",
        "_preempt",
        "_gen",
        "_cpu_start",
        "_ending",
        "_scope",
    )

    def __init__(self, constraints: ExecutionConstraints, *, preempt: bool = True) -> None:
        if getattr(self, "_constraints", None) is not None:
            raise AttributeError("ExecutionBudget is already started")
        _config.check_budget_args(constraints, ExecutionConstraints, preempt)
        _ensure_watchdog()
        self._constraints = constraints
        self._preempt = preempt
        self._stop_ns = 0
        self._memory_charged = 0
        self._cpu_ns = 0
        self._violations: List[int] = []
        self._gen = 0
        self._cpu_start = 0
        self._ending = Ending.NOT_ENDED
        self._scope: Any = None
        self._start_ns = _now_ns()
        self._deadline_ns = self._start_ns + constraints._max_exec_ns
        cur = current_budget()
        if cur is not None and cur._deadline_ns < self._deadline_ns:
            self._deadline_ns = cur._deadline_ns   # never outlives the current budget

    __init__.__qualname__ = "ExecutionBudget"   # wrong arguments name ExecutionBudget()

    def __reduce__(self) -> Tuple[Any, ...]:
        raise _config.not_a_value(self)       # pickle, copy.copy and copy.deepcopy

    @property
    def constraints(self) -> ExecutionConstraints:
        return self._constraints

    def _now_or_stop(self) -> int:
        return self._stop_ns or _now_ns()

    def elapsed_ns(self) -> int:
        """Nanoseconds since creation (frozen when an enforce() call returns)."""
        return self._now_or_stop() - self._start_ns

    def elapsed_ms(self) -> float:
        """Milliseconds since creation (frozen when an enforce() call returns)."""
        return (self._now_or_stop() - self._start_ns) / 1e6

    def remaining_ms(self) -> float:
        """Milliseconds left before the deadline, never below 0.0."""
        return max(0, self._deadline_ns - self._now_or_stop()) / 1e6

    def is_timeout(self) -> bool:
        """True once the deadline is reached (frozen when an enforce() call returns)."""
        return self._now_or_stop() >= self._deadline_ns

    def _record_mask(self, mask: int) -> None:
        for kind in _CHECK_ORDER:
            if mask & (1 << kind) and kind not in self._violations:
                self._violations.append(kind)

    def _cpu_total_now(self) -> int:
        if self._gen:
            return self._cpu_ns + _thread_cpu_ns() - self._cpu_start
        return self._cpu_ns

    def _limits_mask(self, now: int, cpu_ns: int) -> int:
        c = self._constraints
        mask = 0
        if now >= self._deadline_ns:
            mask |= 1 << TIMEOUT
        if c._memory_limit is not None and self._memory_charged > c._memory_limit:
            mask |= 1 << MEMORY
        if c._cpu_allowance_ns is not None and cpu_ns > c._cpu_allowance_ns:
            mask |= 1 << CPU
        return mask

    def check(self) -> None:
        """Record every limit violated now; raise ConstraintViolation if any is."""
        mask = self._limits_mask(self._now_or_stop(), self._cpu_total_now())
        self._record_mask(mask)
        if mask:
            raise self._violation(mask, Ending.CHECKED, None)

    def charge_memory(self, nbytes: int) -> None:
        """Add memory the caller accounts for itself (e.g. a sandbox's memory)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise InvalidConfiguration(f"nbytes must be an int >= 0, got {nbytes!r}")
        self._memory_charged = min(self._memory_charged + nbytes, _config.INT64_MAX)

    def get_violations(self) -> List[ConstraintViolationType]:
        """The violation kinds recorded so far, in the order recorded."""
        return [_KINDS[k] for k in self._violations]  # type: ignore[misc]

    def stats(self) -> ExecutionStats:
        """An ExecutionStats snapshot."""
        return ExecutionStats(
            elapsed_ns=self._now_or_stop() - self._start_ns,
            memory_used_bytes=self._memory_charged,
            cpu_time_us=self._cpu_total_now() // 1000,
            cpu_time_measured=True,
            violations=self._violations,
        )

    def _violation(self, mask: int, ending: Ending, due: Optional[int]) -> ConstraintViolation:
        """The violation of the kinds in mask, for a call that ended as `ending`
        (recorded in _ending); due: when an interrupt fell due, or None."""
        kinds = [_KINDS[k] for k in self._violations if mask & (1 << k)]
        self._ending = ending
        return _outcome_violation(kinds, self.stats(), ending, self._stop_ns, due)

    def enforce(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run fn(*args, **kwargs) under this budget and return its value.

        Raises ConstraintViolation (with .stats) when a limit was broken, whether
        the call was interrupted or finished late.  fn's own exceptions propagate
        unchanged.
        """
        result = self._run(fn, args, kwargs, self._preempt)
        if _is_awaitable(result):
            _refuse_awaitable(fn, result, "enforce")
        return result

    def enforce_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                      **kwargs: Any) -> Awaitable[T]:
        """Run the coroutine fn(*args, **kwargs) under this budget; await the result.

        Each step of the coroutine (resumption to next suspension) is armed like an
        enforce() call; a coroutine suspended past its deadline is cancelled and the
        cancellation becomes ConstraintViolation(TIMEOUT_EXCEEDED).  CPU time and
        memory are charged for its own steps only."""
        aw = fn(*args, **kwargs)
        if not _is_awaitable(aw):
            raise TypeError(f"enforce_async() needs fn to return an awaitable; {fn!r} returned "
                            f"{type(aw).__name__} (use enforce() for plain functions)")
        return _run_steps(_Steps(self, aw))

    def __enter__(self) -> "ExecutionBudget":
        if self._scope is not None:
            raise RuntimeError("this budget's `with` block is already open")
        self._scope = _SyncScope(self)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        scope = self._scope
        if not isinstance(scope, _SyncScope):
            raise RuntimeError("this budget's `with` block is not open")
        self._scope = None
        scope.close(exc)

    def __aenter__(self) -> Awaitable["ExecutionBudget"]:
        return _aio_module().scope_enter(self)  # type: ignore[no-any-return]

    def __aexit__(self, exc_type: Any, exc: Optional[BaseException],
                  tb: Any) -> Awaitable[bool]:
        return _aio_module().scope_exit(self, exc_type, exc)  # type: ignore[no-any-return]

    def _async_enter(self) -> Tuple[float, bool]:
        global _async_scopes
        now = _now_ns()
        if now >= self._deadline_ns:
            self._stop_ns = now
            self._record_mask(1 << TIMEOUT)
            raise self._violation(1 << TIMEOUT, Ending.EXPIRED, None)
        self._stop_ns = 0
        _async_scopes += 1
        return ((self._deadline_ns - now) / 1e9,
                bool(self._preempt and self._constraints._values[4] and _preempt_enabled))

    def _async_exit(self, timed_out: bool) -> None:
        global _async_scopes
        _async_scopes -= 1
        self._stop_ns = _now_ns()
        mask = self._limits_mask(self._stop_ns, self._cpu_ns) | (timed_out << TIMEOUT)
        self._record_mask(mask)
        if timed_out:
            raise self._violation(mask, Ending.INTERRUPTED, self._deadline_ns)
        if mask:
            raise self._violation(mask, Ending.LATE, None)

    def _late_violation(self) -> ConstraintViolation:
        """The violation recorded so far, not raised (audit of a late call that
        raised its own error)."""
        return self._violation(-1, Ending.RAISED, None)

    def _raise_timeout(self) -> None:
        """Stop the running call of this budget as its deadline would (for code
        that enforces the budget's remaining time itself, e.g. fastpath.regex)."""
        self._raise_limit(ConstraintViolationType.TIMEOUT_EXCEEDED)

    def _raise_limit(self, kind: ConstraintViolationType) -> None:
        """Stop the running call of this budget for the limit `kind`
        (TIMEOUT_EXCEEDED, MEMORY_EXCEEDED or CPU_EXCEEDED), which code enforcing
        it itself found broken (fastpath.regex: the deadline; fastpath.wasm: a
        guest's epoch deadline, fuel or linear-memory limit)."""
        k = _KINDS.index(kind) if kind in _KINDS[1:4] else 0
        if k == 0:
            raise InvalidConfiguration(f"kind must be a limit's ConstraintViolationType, "
                                       f"got {kind!r}")
        slot = _slot()
        if not self._gen:
            # an `async with` scope (no armed call): the violation itself
            self._stop_ns = _now_ns()
            self._record_mask(1 << k)
            raise self._violation(1 << k, Ending.INTERRUPTED, self._stop_ns)
        slot.fire_kind = k
        slot.fire_ns = self._deadline_ns if k == TIMEOUT else _now_ns()
        slot.fire_gen = self._gen
        raise ExecutionInterrupted()

    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any, preempt: bool,
             first: bool = True, current: bool = True, step: bool = False) -> T:
        """One armed call of fn.  first: refuse to run past the deadline;
        current: the budget is the thread's current one meanwhile; step: a
        coroutine step (a limit found at a suspension is the caller's to act on)."""
        c = self._constraints
        self._ending = Ending.NOT_ENDED
        fn_start = _now_ns()
        if first and fn_start >= self._deadline_ns:
            self._stop_ns = fn_start
            self._record_mask(1 << TIMEOUT)
            raise self._violation(1 << TIMEOUT, Ending.EXPIRED, None)
        slot = _slot()
        if slot.depth >= MAX_NESTING:
            raise RecursionError(
                f"fastpath: enforce() nested too deeply on this thread "
                f"({slot.depth} calls open; at most {MAX_NESTING})")
        fail_closed = c._values[4]
        stop_it = preempt and fail_closed and not slot.unordered
        if not preempt or slot.unordered:
            interrupt_at = NEVER
        elif fail_closed:
            interrupt_at = self._deadline_ns
        else:  # fail open: stop only a runaway, at twice its budget
            interrupt_at = self._deadline_ns + c._max_exec_ns
        allowance = c._cpu_allowance_ns
        left = 0 if allowance is None else max(0, allowance - self._cpu_ns)
        n_cpu = len(slot.cpu)
        cpu_start = _thread_cpu_ns()
        _wake_watchdog()
        # From the first arming store to the end of the disarm there is no call
        # (the GIL, and with it an interrupt, only changes hands at a call or a
        # backward jump), except fn itself: an interrupt lands inside the try,
        # or is cleared before anything else runs.
        saved = (slot.armed_gen, slot.interrupt_at, slot.current)
        slot.next_gen += 1
        gen = slot.next_gen
        slot.depth += 1
        depth = slot.depth
        if slot.armed_gen == 0 or interrupt_at < slot.interrupt_at:
            slot.interrupt_at = interrupt_at
            slot.armed_gen = gen
        if allowance is not None:
            slot.cpu = slot.cpu + ((gen, left, stop_it, cpu_start),)
            slot.cpu_gens = slot.cpu_gens + (gen,)
        if current:
            slot.current = self
        self._stop_ns = 0
        outer = (self._gen, self._cpu_start)
        self._gen = gen
        self._cpu_start = cpu_start
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if _FREE_THREADED:
                # No GIL: the watchdog checks and injects under fire_lock; the
                # interrupt is cleared inside it, before a call could raise it.
                with slot.fire_lock:
                    if slot.depth == depth and gen > slot.reset_gen:
                        slot.armed_gen, slot.interrupt_at, slot.current = saved
                        slot.cpu, slot.cpu_gens = slot.cpu[:n_cpu], slot.cpu_gens[:n_cpu]
                        slot.depth = depth - 1
                    elif gen > slot.reset_gen:
                        # Calls returned out of order (greenlets): forget everything
                        # armed here and stop interrupting calls on this thread.
                        slot.armed_gen, slot.interrupt_at = 0, NEVER
                        slot.cpu, slot.current = (), None
                        slot.cpu_gens = ()
                        slot.depth, slot.reset_gen, slot.unordered = 0, slot.next_gen, True
                    fired = slot.fire_gen == gen
                    if fired:
                        _set_async_exc(slot.ident, _CLEAR)  # drop an interrupt still pending
            else:
                if slot.depth == depth and gen > slot.reset_gen:
                    slot.armed_gen, slot.interrupt_at, slot.current = saved
                    slot.cpu, slot.cpu_gens = slot.cpu[:n_cpu], slot.cpu_gens[:n_cpu]
                    slot.depth = depth - 1
                elif gen > slot.reset_gen:
                    # Calls returned out of order (greenlets): forget everything
                    # armed here and stop interrupting calls on this thread.
                    slot.armed_gen, slot.interrupt_at, slot.cpu, slot.current = 0, NEVER, (), None
                    slot.cpu_gens = ()
                    slot.depth, slot.reset_gen, slot.unordered = 0, slot.next_gen, True
                fired = slot.fire_gen == gen
                if fired:
                    _set_async_exc(slot.ident, _CLEAR)  # drop an interrupt still pending
            mask = self._finish(fn_start, outer)
            self._ending = Ending.RAISED
            if isinstance(exc, ExecutionInterrupted):
                if not fired:
                    raise  # meant for an enclosing enforce() on this thread
                if slot.fire_kind and not mask & (1 << slot.fire_kind):
                    self._record_mask(1 << slot.fire_kind)
                    mask |= 1 << slot.fire_kind
                due = interrupt_at if slot.fire_kind == TIMEOUT else slot.fire_ns
                # the interrupt stays as __context__, as in the compiled core
                raise self._violation(mask, Ending.INTERRUPTED, due)  # noqa: B904
            if step and isinstance(exc, StopIteration):
                self._ending = Ending.RETURNED      # the coroutine returned
                if mask:        # over a limit
                    raise self._late(slot, mask, stop_it, interrupt_at, fired)  # noqa: B904
            raise
        if _FREE_THREADED:
            # No GIL: the watchdog checks and injects under fire_lock; the
            # interrupt is cleared inside it, before a call could raise it.
            with slot.fire_lock:
                if slot.depth == depth and gen > slot.reset_gen:
                    slot.armed_gen, slot.interrupt_at, slot.current = saved
                    slot.cpu, slot.cpu_gens = slot.cpu[:n_cpu], slot.cpu_gens[:n_cpu]
                    slot.depth = depth - 1
                elif gen > slot.reset_gen:
                    slot.armed_gen, slot.interrupt_at, slot.cpu, slot.current = 0, NEVER, (), None
                    slot.cpu_gens = ()
                    slot.depth, slot.reset_gen, slot.unordered = 0, slot.next_gen, True
                fired = slot.fire_gen == gen
                if fired:
                    _set_async_exc(slot.ident, _CLEAR)
        else:
            if slot.depth == depth and gen > slot.reset_gen:
                slot.armed_gen, slot.interrupt_at, slot.current = saved
                slot.cpu, slot.cpu_gens = slot.cpu[:n_cpu], slot.cpu_gens[:n_cpu]
                slot.depth = depth - 1
            elif gen > slot.reset_gen:
                slot.armed_gen, slot.interrupt_at, slot.cpu, slot.current = 0, NEVER, (), None
                slot.cpu_gens = ()
                slot.depth, slot.reset_gen, slot.unordered = 0, slot.next_gen, True
            fired = slot.fire_gen == gen
            if fired:
                _set_async_exc(slot.ident, _CLEAR)
        mask = self._finish(fn_start, outer)
        if mask and (not step or (stop_it and mask != 1 << TIMEOUT)):
            raise self._late(slot, mask, stop_it, interrupt_at, fired)
        if not step:    # (a coroutine step that suspended has not ended the call)
            self._ending = Ending.RETURNED
        return result

    def _late(self, slot: _Slot, mask: int, stop_it: bool, interrupt_at: int,
              fired: bool) -> ConstraintViolation:
        """The violation of a call (or coroutine step) that came back by itself
        over the limits in mask, with when an interrupt fell due (None: none was)."""
        due = NEVER
        if self._stop_ns >= interrupt_at:
            due = interrupt_at
        allowance = self._constraints._cpu_allowance_ns
        if mask & (1 << CPU) and stop_it and allowance is not None:
            if fired and slot.fire_kind == CPU:
                due = min(due, slot.fire_ns)
            else:
                due = min(due, self._stop_ns - (self._cpu_ns - allowance))
        return self._violation(mask, Ending.LATE, None if due == NEVER else due)

    def _finish(self, fn_start: int, outer: Tuple[int, int]) -> int:
        end = _now_ns()
        self._cpu_ns += _thread_cpu_ns() - self._cpu_start
        self._gen, self._cpu_start = outer
        self._stop_ns = end
        mask = self._limits_mask(end, self._cpu_ns)
        self._record_mask(mask)
        return mask


# ------------------------------------------------------------------ asyncio

_aio: Any = None        # fastpath._aio, imported on first async use
_async_scopes = 0       # enforce_async / `async with` scopes open (any thread)


def _aio_module() -> Any:
    global _aio
    if _aio is None:
        from . import _aio as module
        _aio = module
    return _aio


def current_budget() -> Optional[ExecutionBudget]:
    """The innermost budget whose enforce(), enforce_async() or scope is running in
    this thread and task, or None."""
    slot = getattr(_local, "slot", None)
    if slot is not None and slot.current is not None:
        return slot.current  # type: ignore[no-any-return]
    if _async_scopes:
        return _aio.current_budget()  # type: ignore[no-any-return]
    return None


def _is_awaitable(obj: Any) -> bool:
    return hasattr(type(obj), "__await__")


_awaitable = _is_awaitable      # the name both cores export


def _refuse_awaitable(fn: Any, result: Any, entry: str) -> None:
    close = getattr(result, "close", None)
    if close is not None and not hasattr(result, "add_done_callback"):
        close()     # a coroutine: never started, and no "never awaited" warning
    raise TypeError(
        f"{entry}() ran {fn!r}, which returned an awaitable ({type(result).__name__}); "
        f"coroutines run with {entry}_async() (or ConstraintEnforcer.execute_async)")


class _SyncScope:
    """An open `with budget:` block: one armed call whose body is the block.

    The twin arms through ``_run`` with a callable that waits for the block to
    end, so the arming is exactly enforce()'s; the block runs on a greenlet-free
    design: ``_run`` is entered here and left in ``close``."""

    __slots__ = ("budget", "gen", "slot", "saved", "depth", "n_cpu", "fn_start", "outer",
                 "interrupt_at", "stop_it")

    def __init__(self, budget: ExecutionBudget) -> None:
        c = budget._constraints
        now = _now_ns()
        if now >= budget._deadline_ns:
            budget._stop_ns = now
            budget._record_mask(1 << TIMEOUT)
            raise budget._violation(1 << TIMEOUT, Ending.EXPIRED, None)
        slot = _slot()
        if slot.depth >= MAX_NESTING:
            raise RecursionError("fastpath: enforce() nested too deeply on this thread")
        fail_closed = c._values[4]
        self.stop_it = budget._preempt and fail_closed and not slot.unordered
        if not budget._preempt or slot.unordered:
            self.interrupt_at = NEVER
        elif fail_closed:
            self.interrupt_at = budget._deadline_ns
        else:
            self.interrupt_at = budget._deadline_ns + c._max_exec_ns
        allowance = c._cpu_allowance_ns
        left = 0 if allowance is None else max(0, allowance - budget._cpu_ns)
        self.budget, self.slot, self.fn_start = budget, slot, now
        self.n_cpu = len(slot.cpu)
        cpu_start = _thread_cpu_ns()
        _wake_watchdog()
        self.saved = (slot.armed_gen, slot.interrupt_at, slot.current)
        slot.next_gen += 1
        self.gen = gen = slot.next_gen
        slot.depth += 1
        self.depth = slot.depth
        if slot.armed_gen == 0 or self.interrupt_at < slot.interrupt_at:
            slot.interrupt_at = self.interrupt_at
            slot.armed_gen = gen
        if allowance is not None:
            slot.cpu = slot.cpu + ((gen, left, self.stop_it, cpu_start),)
            slot.cpu_gens = slot.cpu_gens + (gen,)
        slot.current = budget
        budget._stop_ns = 0
        self.outer = (budget._gen, budget._cpu_start)
        budget._gen = gen
        budget._cpu_start = cpu_start

    def close(self, exc: Optional[BaseException]) -> None:
        slot, gen, budget = self.slot, self.gen, self.budget
        if _FREE_THREADED:
            # No GIL: the watchdog checks and injects under fire_lock; the
            # interrupt is cleared inside it, before a call could raise it.
            with slot.fire_lock:
                if slot.depth == self.depth and gen > slot.reset_gen:
                    slot.armed_gen, slot.interrupt_at, slot.current = self.saved
                    slot.cpu, slot.cpu_gens = slot.cpu[:self.n_cpu], slot.cpu_gens[:self.n_cpu]
                    slot.depth = self.depth - 1
                elif gen > slot.reset_gen:
                    slot.armed_gen, slot.interrupt_at, slot.cpu, slot.current = 0, NEVER, (), None
                    slot.cpu_gens = ()
                    slot.depth, slot.reset_gen, slot.unordered = 0, slot.next_gen, True
                fired = slot.fire_gen == gen
                if fired:
                    _set_async_exc(slot.ident, _CLEAR)
        else:
            if slot.depth == self.depth and gen > slot.reset_gen:
                slot.armed_gen, slot.interrupt_at, slot.current = self.saved
                slot.cpu, slot.cpu_gens = slot.cpu[:self.n_cpu], slot.cpu_gens[:self.n_cpu]
                slot.depth = self.depth - 1
            elif gen > slot.reset_gen:
                slot.armed_gen, slot.interrupt_at, slot.cpu, slot.current = 0, NEVER, (), None
                slot.cpu_gens = ()
                slot.depth, slot.reset_gen, slot.unordered = 0, slot.next_gen, True
            fired = slot.fire_gen == gen
            if fired:
                _set_async_exc(slot.ident, _CLEAR)
        mask = budget._finish(self.fn_start, self.outer)
        budget._ending = Ending.RETURNED if exc is None else Ending.RAISED
        if isinstance(exc, ExecutionInterrupted) and fired:
            if slot.fire_kind and not mask & (1 << slot.fire_kind):
                budget._record_mask(1 << slot.fire_kind)
                mask |= 1 << slot.fire_kind
            due = self.interrupt_at if slot.fire_kind == TIMEOUT else slot.fire_ns
            raise budget._violation(mask, Ending.INTERRUPTED, due)
        if exc is None and mask:
            raise budget._late(slot, mask, self.stop_it, self.interrupt_at, fired)


class _Steps:
    """What enforce_async() returns: awaiting it drives the coroutine one step
    (resumption to next suspension) at a time, each armed like an enforce()."""

    __slots__ = ("_budget", "_aw")

    def __init__(self, budget: ExecutionBudget, aw: Any) -> None:
        self._budget = budget
        self._aw = aw

    def __await__(self) -> Generator[Any, Any, Any]:
        global _async_scopes
        budget, aw = self._budget, self._aw
        it = aw if hasattr(aw, "send") and hasattr(aw, "throw") else aw.__await__()
        aio = _aio_module()
        c = budget._constraints
        stop_it = budget._preempt and c._values[4] and _preempt_enabled
        task = aio.task_now()
        token = aio.CURRENT.set((budget, task))
        _async_scopes += 1
        timer = None
        state = {"cancelled": False}

        def on_deadline() -> None:
            if task is not None and not task.done():
                state["cancelled"] = True
                task.cancel("fastpath: budget deadline")

        value: Any = None
        exc: Optional[BaseException] = None
        first = True
        try:
            while True:
                ours = (exc is not None and state["cancelled"]
                        and isinstance(exc, aio.CancelledError))
                if not first and not ours and stop_it and _now_ns() >= budget._deadline_ns:
                    exc, ours = aio.CancelledError(), True
                if ours and exc is not None:
                    return self._cancel_at_deadline(it, exc, task, state["cancelled"])
                try:
                    if exc is None:
                        yielded = budget._run(it.send, (value,), {}, budget._preempt,
                                              first, False, True)
                    else:
                        yielded = budget._run(it.throw, (exc,), {}, budget._preempt,
                                              first, False, True)
                except StopIteration as stop:
                    return stop.value
                except ConstraintViolation:
                    if not first or budget._stop_ns:
                        _close_quietly(it)
                    raise
                first = False
                if timer is None and stop_it and task is not None:
                    loop = aio.get_running_loop()
                    timer = loop.call_at(
                        loop.time() + (budget._deadline_ns - _now_ns()) / 1e9, on_deadline)
                try:
                    value, exc = (yield yielded), None
                except GeneratorExit:
                    _close_quietly(it)
                    raise
                except BaseException as e:  # noqa: BLE001 - passed on into the coroutine
                    value, exc = None, e
        finally:
            if timer is not None:
                timer.cancel()
            aio.CURRENT.reset(token)
            _async_scopes -= 1

    def _cancel_at_deadline(self, it: Any, exc: BaseException, task: Any,
                            cancelled_by_timer: bool) -> Any:
        budget = self._budget
        try:
            it.throw(exc)
        except BaseException as e:  # noqa: BLE001 - becomes the violation's cause
            cause = e
        else:
            cause = exc
            _close_quietly(it)      # it ignored the cancellation
        if cancelled_by_timer and task is not None and task.uncancel() > 0:
            raise cause             # also cancelled from outside: that wins
        budget._stop_ns = _now_ns()
        budget._record_mask(1 << TIMEOUT)
        raise budget._violation(1 << TIMEOUT, Ending.INTERRUPTED, budget._deadline_ns) from cause


async def _run_steps(steps: "_Steps") -> Any:
    # A real coroutine (asyncio.create_task accepts it) around the step driver.
    return await steps


def _close_quietly(it: Any) -> None:
    try:
        it.close()
    except RuntimeError:
        pass        # "coroutine ignored GeneratorExit"


# ------------------------------------------------------------------ the enforcer

_SAMPLED_OUT = int(ConstraintViolationType.SAMPLED_OUT)
_counter_lock = threading.Lock()    # execute_async's counters (the pipeline has its own)


class _RuleState:
    """One rule type's profile and counters (see ConstraintEnforcer)."""

    __slots__ = (
        "key", "constraints", "fallback", "preempt", "max_attempts", "backoff_s",
        "calls", "executed", "sampled_out", "fail_open", "fail_closed", "errors", "retries",
        "violations", "histogram", "rule_id", "configured", "breaker", "adaptive", "quota",
        "refused", "quota_refused", "_lock",
    )

    def __init__(self, key: Any, constraints: ExecutionConstraints, fallback: Any,
                 preempt: bool, rule_id: Any = None, breaker: Optional[_Breaker] = None,
                 adaptive: Optional[_Adaptive] = None, quota: Any = None) -> None:
        if breaker is not None and not isinstance(breaker, _Breaker):
            raise TypeError(f"breaker must be a _Breaker of this core, got {breaker!r}")
        if adaptive is not None and not isinstance(adaptive, _Adaptive):
            raise TypeError(f"adaptive must be an _Adaptive of this core, got {adaptive!r}")
        self.key = key
        self.configured = constraints
        if adaptive is not None and adaptive.limit_ms != constraints.max_exec_ms:
            constraints = constraints.replace(max_exec_ms=adaptive.limit_ms)
        self.constraints = constraints
        self.rule_id = rule_id
        self.breaker = breaker
        self.adaptive = adaptive
        self.quota: Any = quota     # a _quota_py.Quota, or None
        self._lock = _counter_lock
        self.fallback = fallback
        self.preempt = preempt
        self.max_attempts = 1 + (constraints.max_retries or 0)
        self.backoff_s = (constraints.retry_backoff_ms or 0) / 1000
        self.histogram = LatencyHistogram()
        self.reset()

    def counters(self) -> Tuple[int, int, int, int, int, int, int, int, Dict[int, int]]:
        return (self.calls, self.executed, self.sampled_out, self.fail_open, self.fail_closed,
                self.errors, self.retries, self.quota_refused,
                {k: self.violations[k] for k in range(1, 5)})

    @property
    def refused_calls(self) -> int:
        """Calls the breaker refused."""
        return self.refused

    # -- execute_async: the same bookkeeping as _pipeline, around awaits --------
    def _admit(self) -> Tuple[Optional["ExecutionBudget"], int]:
        """Count a call: (its budget, the breaker's token), or (None, 0) when
        sampled out or refused fail open; a refusal fail closed raises."""
        if not self._sample():
            return None, 0
        token = self._breaker_token()
        if token == 0:
            return None, 0
        return self._start(), token

    def _sample(self) -> bool:
        """Count a call; False when sampled out."""
        sampled = self.constraints.should_sample()
        with _counter_lock:
            self.calls += 1
            if not sampled:
                self.sampled_out += 1
                self.violations[_SAMPLED_OUT] += 1
        return sampled

    def _breaker_token(self) -> int:
        """The breaker's admission token (1: closed, or no breaker); 0 when it
        refused a fail-open rule (a refusal fail closed raises)."""
        if self.breaker is None:
            return 1
        token = self.breaker._admit()
        if token == 0:
            _rule_refused(self, self.rule_id, self.constraints)
        return token

    def _release_token(self, token: int) -> None:
        """A call admitted by the breaker that will not run (its quota refused
        it): give back a half-open probe's slot, with no outcome."""
        if token != 1 and self.breaker is not None:
            self.breaker._record(token, -1)

    def _count_quota_refused(self) -> None:
        with _counter_lock:
            self.quota_refused += 1

    def _start(self) -> "ExecutionBudget":
        """Count an executed call: its budget."""
        with _counter_lock:
            self.executed += 1
        return ExecutionBudget(self.constraints, preempt=self.preempt)

    def _settle(self, budget: "ExecutionBudget", exc: Optional[BaseException],
                transient: Tuple[type, ...], attempt: int) -> int:
        """After an attempt: its fastpath._outcome.Verdict (OK, RETRY after
        backoff_s, DENY, FALLBACK or ERROR), counted."""
        elapsed = budget._stop_ns - budget._start_ns
        if exc is None:
            self.histogram.record(elapsed)
            return Verdict.OK
        with _counter_lock:
            if is_violation(budget._ending):
                for kind in budget._violations:
                    self.violations[kind] += 1
                if self.constraints.fail_closed_on_timeout:
                    self.fail_closed += 1
                    outcome = Verdict.DENY
                else:
                    self.fail_open += 1
                    outcome = Verdict.FALLBACK
            elif (attempt < self.max_attempts and isinstance(exc, transient)
                    and budget.remaining_ms() / 1000 >= self.backoff_s):
                self.retries += 1
                return Verdict.RETRY
            else:
                self.errors += 1
                for kind in budget._violations:
                    self.violations[kind] += 1
                outcome = Verdict.ERROR
        self.histogram.record(elapsed)
        return outcome

    def reset(self) -> None:
        self.calls = self.executed = self.sampled_out = 0
        self.fail_open = self.fail_closed = self.errors = self.retries = 0
        self.refused = self.quota_refused = 0
        self.violations = [0] * 6
        self.histogram.reset()


class _EnforcerCore:
    """The per-call pipeline of ConstraintEnforcer (twin of the compiled one).

    Counters are updated under a lock, which is never held while fn runs.
    """

    _rules: Tuple[_RuleState, ...]
    _transient: Tuple[type, ...]
    _sleep: Callable[[float], None]

    def _core_setup(self, rules: Tuple[_RuleState, ...], transient: Tuple[type, ...],
                    sleep: Callable[[float], None]) -> None:
        self._rules = rules
        self._transient = transient
        self._sleep = sleep
        self._counter_lock = threading.Lock()

    def _rule_state(self, rule_type: Any) -> _RuleState:
        if type(rule_type) is _RuleState:
            return rule_type                  # a registered rule's own state
        for rule in self._rules:
            if rule.key is rule_type:
                return rule
        raise InvalidConfiguration(f"rule_type must be a RuleType, got {rule_type!r}")

    def _audit(self, rule_type: Any, rule_id: Any, fn: Any, violation: Any, outcome: str) -> None:
        pass  # ConstraintEnforcer emits the audit event

    def _limit_changed(self, rule: _RuleState, change: Any) -> None:
        pass  # ConstraintEnforcer emits the audit event

    def _window_end(self, rule: _RuleState) -> None:
        """An adaptive window ended: the next limit, off the per-call path."""
        assert rule.adaptive is not None
        change = rule.adaptive._finish_window(if_due=True)
        if change is None:
            return
        constraints = rule.configured.replace(max_exec_ms=change[1])
        if rule.adaptive.limit_ms == change[1]:      # not overtaken by a later window
            rule.constraints = constraints
        self._limit_changed(rule, change)

    def _feed(self, rule: _RuleState, budget: "ExecutionBudget", token: int, error: int) -> None:
        """execute_async's end of a call: the breaker and the adaptive limit."""
        if rule.breaker is not None or rule.adaptive is not None:
            _rule_feed(self, rule, budget, token, error)

    def _ended(self, rule: _RuleState, budget: "ExecutionBudget", token: int, error: int) -> None:
        rule.histogram.record(budget._stop_ns - budget._start_ns)
        if rule.breaker is not None or rule.adaptive is not None:
            _rule_feed(self, rule, budget, token, error)

    def _quota_refused(self, rule_type: Any, rule_id: Any, fn: Any, key: Any,
                       fail_closed: bool) -> None:
        if fail_closed:     # ConstraintEnforcer also audits, and says which quota
            raise ResourceExhausted(f"quota exhausted for flow {key!r}")


    def execute_with_constraints(self, rule_type: RuleType, fn: Callable[P, T], /,
                                 *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn under the rule type's constraints: sampling, budget, transient
        retries, then the failure policy (see ConstraintEnforcer).

        Typed as returning what fn returns; a fail-open rule type returns its
        fallback instead (None unless configured)."""
        return self._pipeline(  # type: ignore[no-any-return]
            self._rule_state(rule_type), None, fn, args, kwargs)

    def _execute_as(self, rule_type: Any, rule_id: Any, fn: Callable[..., T], /, *args: Any,
                    **kwargs: Any) -> Any:
        """execute_with_constraints with a rule id for audit events."""
        return self._pipeline(self._rule_state(rule_type), rule_id, fn, args, kwargs)

    def _pipeline(self, rule: _RuleState, rule_id: Any, fn: Callable[..., T], args: Any,
                  kwargs: Any) -> Any:
        c = rule.constraints
        sampled = c.should_sample()
        quota = rule.quota
        with self._counter_lock:
            rule.calls += 1
            if not sampled:
                rule.sampled_out += 1
                rule.violations[_SAMPLED_OUT] += 1
        if not sampled:
            return rule.fallback
        token = 1
        if rule.breaker is not None:
            token = rule.breaker._admit()
            if token == 0:
                return _rule_refused(rule, rule_id, c)
        if quota is not None:
            return self._quota_pipeline(rule, rule_id, fn, token, args, kwargs)
        with self._counter_lock:
            rule.executed += 1
        return self._attempts(rule, rule_id, fn, c.create_budget(), token, args, kwargs)

    def _quota_pipeline(self, rule: _RuleState, rule_id: Any, fn: Callable[..., T], token: int,
                        args: Any, kwargs: Any) -> Any:
        # Admission before fn (a refused call takes nothing and never runs fn), then
        # the debit of what the call measured: its budget's wall time and, when the
        # quota limits CPU, this thread's CPU clock around the attempts.
        quota = rule.quota
        key = current_flow.get()
        if not quota.admit(key):
            rule._release_token(token)        # a half-open probe that will not run
            with self._counter_lock:
                rule.quota_refused += 1
            self._quota_refused(rule, rule_id, fn, key, rule.constraints.fail_closed_on_timeout)
            return rule.fallback
        with self._counter_lock:
            rule.executed += 1
        budget = rule.constraints.create_budget()
        if not quota.debits:
            return self._attempts(rule, rule_id, fn, budget, token, args, kwargs)
        cpu0 = time.thread_time_ns() if quota.tracks_cpu else 0
        try:
            return self._attempts(rule, rule_id, fn, budget, token, args, kwargs)
        finally:
            quota.debit(key, time.thread_time_ns() - cpu0 if quota.tracks_cpu else 0,
                        budget._now_or_stop() - budget._start_ns)

    def _attempts(self, rule: _RuleState, rule_id: Any, fn: Callable[..., T],
                  budget: "ExecutionBudget", token: int, args: Any, kwargs: Any) -> Any:
        c = rule.constraints
        attempt = 1
        while True:
            try:
                result = budget._run(fn, args, kwargs, rule.preempt)
            except BaseException as exc:
                if is_violation(budget._ending):   # this budget's own violation
                    self._ended(rule, budget, token, 0)
                    with self._counter_lock:
                        for kind in budget._violations:
                            rule.violations[kind] += 1
                        if c.fail_closed_on_timeout:
                            rule.fail_closed += 1
                        else:
                            rule.fail_open += 1
                    if c.fail_closed_on_timeout:
                        self._audit(rule, rule_id, fn, exc, "deny")
                        raise
                    self._audit(rule, rule_id, fn, exc, "fallback")
                    return rule.fallback
                if (attempt < rule.max_attempts and isinstance(exc, self._transient)
                        and budget.remaining_ms() / 1000 >= rule.backoff_s):
                    attempt += 1
                    with self._counter_lock:
                        rule.retries += 1
                    if rule.backoff_s:
                        self._sleep(rule.backoff_s)
                    continue
                with self._counter_lock:
                    rule.errors += 1
                    for kind in budget._violations:
                        rule.violations[kind] += 1
                self._ended(rule, budget, token, 1 if isinstance(exc, Exception) else -1)
                if budget._violations:
                    self._audit(rule, rule_id, fn, budget._late_violation(), "error")
                raise
            self._ended(rule, budget, token, 0)
            if _is_awaitable(result):
                _refuse_awaitable(fn, result, "enforce")
            return result


def _quota_class() -> type:
    """The Quota class this core's enforcer admits calls through."""
    from ._quota_py import Quota

    return Quota


from ._rules_py import _Adaptive, _Breaker, Rule, _rule_feed, _rule_refused  # noqa: E402

__all__ = [
    "ExecutionBudget",
    "Rule",
    "ExecutionConstraints",
    "ExecutionStats",
    "preemption_info",
    "current_budget",
    "set_preemption",
    "uninterruptible",
]
