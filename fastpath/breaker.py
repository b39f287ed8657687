"""CircuitBreaker: stop calling a rule that keeps failing, probe, recover.

The state machine and the window of outcomes live in the core (``_Breaker``
in ``fastpath/_rules.pxi``, twin in ``fastpath/_rules_py.py``): a ring buffer
of outcome bytes (count window) or a ring of time buckets (time window) with
running counts, all C integers changed with the GIL held, never across
``fn``.  This module validates the settings, names the states, shapes the
metrics and turns each state change into an audit event of every rule the
breaker guards (``event_type="circuit_state"``).
"""

from __future__ import annotations

import enum
import math
import numbers
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ._impl import core as _core
from .errors import InvalidConfiguration

__all__ = ["CircuitBreaker", "CircuitState"]

RECORD_CLASSES = ("violation", "timeout", "cpu", "memory", "error")
# ConstraintViolationType values: TIMEOUT_EXCEEDED 1, MEMORY_EXCEEDED 2, CPU_EXCEEDED 3.
_KIND_BITS = {"timeout": 1 << 1, "memory": 1 << 2, "cpu": 1 << 3}


class CircuitState(enum.IntEnum):
    """A breaker's state.  ``FORCED_OPEN`` (``force_open()``) refuses every call
    until ``reset()``; ``DISABLED`` (``disable()``) admits every call and records
    nothing until ``reset()``."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    FORCED_OPEN = 3
    DISABLED = 4

    def __repr__(self) -> str:
        return f"CircuitState.{self.name}"


def _number(name: str, value: Any, *, low: float, high: float = math.inf,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise InvalidConfiguration(f"CircuitBreaker {name} must be a number, got {value!r}")
    number = float(value)
    if number < low or (low_open and number == low) or number > high:
        lo = "(" if low_open else "["
        raise InvalidConfiguration(
            f"CircuitBreaker {name} must be within {lo}{low:g}, {high:g}], got {value!r}")
    return number


def _integer(name: str, value: Any, *, low: int, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = f"an int >= {low}" + (" or None" if optional else "")
        raise InvalidConfiguration(f"CircuitBreaker {name} must be {what}, got {value!r}")
    if value > 2**53:
        raise InvalidConfiguration(f"CircuitBreaker {name} must be <= 2**53, got {value!r}")
    return value


def _record_mask(record: Any) -> Tuple[int, bool]:
    if isinstance(record, str) or not isinstance(record, Iterable):
        raise InvalidConfiguration(
            f"CircuitBreaker record must be a tuple of {RECORD_CLASSES}, got {record!r}")
    mask, errors = 0, False
    for item in tuple(record):
        if item not in RECORD_CLASSES:
            raise InvalidConfiguration(
                f"CircuitBreaker record items must be among {RECORD_CLASSES}, got {item!r}")
        if item == "violation":
            mask |= _KIND_BITS["timeout"] | _KIND_BITS["memory"] | _KIND_BITS["cpu"]
        elif item == "error":
            errors = True
        else:
            mask |= _KIND_BITS[item]
    return mask, errors


class _CircuitBreakerAPI:
    """The Python face of a breaker (the core class holds the state machine)."""

    _setup: Callable[..., None]
    _snapshot: Callable[[], Tuple[int, ...]]
    _set_state: Callable[[int, str], None]
    _clear_window: Callable[[], None]

    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        slow_call_rate: float = 1.0,
        slow_call_ms: Optional[int] = None,
        minimum_calls: int = 20,
        window_calls: int = 100,
        window_s: Optional[float] = None,
        open_ms: int = 30000,
        open_backoff: float = 1.0,
        max_open_ms: Optional[int] = None,
        half_open_calls: int = 5,
        max_half_open_ms: Optional[int] = None,
        record: Tuple[str, ...] = ("violation", "error"),
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        failure_rate = _number("failure_rate", failure_rate, low=0.0, high=1.0, low_open=True)
        slow_call_rate = _number("slow_call_rate", slow_call_rate, low=0.0, high=1.0,
                                 low_open=True)
        slow_call_ms = _integer("slow_call_ms", slow_call_ms, low=0, optional=True)
        minimum_calls = _integer("minimum_calls", minimum_calls, low=1)  # type: ignore[assignment]
        window_calls = _integer("window_calls", window_calls, low=1)  # type: ignore[assignment]
        if window_s is not None:
            window_s = _number("window_s", window_s, low=0.0, high=86400.0, low_open=True)
        elif minimum_calls > window_calls:
            raise InvalidConfiguration(
                f"CircuitBreaker minimum_calls ({minimum_calls}) must be <= window_calls "
                f"({window_calls}): the window could never trip")
        if window_s is None and window_calls > 10_000_000:
            raise InvalidConfiguration(
                f"CircuitBreaker window_calls must be <= 10,000,000, got {window_calls!r}")
        open_ms = _integer("open_ms", open_ms, low=1)  # type: ignore[assignment]
        open_backoff = _number("open_backoff", open_backoff, low=1.0, high=1000.0)
        max_open_ms = _integer("max_open_ms", max_open_ms, low=1, optional=True)
        if max_open_ms is not None and max_open_ms < open_ms:
            raise InvalidConfiguration(
                f"CircuitBreaker max_open_ms must be >= open_ms ({open_ms}), got {max_open_ms!r}")
        half_open_calls = _integer("half_open_calls", half_open_calls, low=1)  # type: ignore[assignment]
        max_half_open_ms = _integer("max_half_open_ms", max_half_open_ms, low=1, optional=True)
        kind_mask, record_errors = _record_mask(record)
        if clock is not None and not callable(clock):
            raise InvalidConfiguration(f"CircuitBreaker clock must be callable, got {clock!r}")
        self._settings: Dict[str, Any] = {
            "failure_rate": failure_rate, "slow_call_rate": slow_call_rate,
            "slow_call_ms": slow_call_ms, "minimum_calls": minimum_calls,
            "window_calls": window_calls, "window_s": window_s, "open_ms": open_ms,
            "open_backoff": open_backoff, "max_open_ms": max_open_ms,
            "half_open_calls": half_open_calls, "max_half_open_ms": max_half_open_ms,
            "record": tuple(record),
        }
        self._listeners: List[Tuple["weakref.ref[Any]", Any]] = []
        self._listeners_lock = threading.Lock()
        ms = 1_000_000
        self._setup(failure_rate, slow_call_rate, -1 if slow_call_ms is None else slow_call_ms * ms,
                    minimum_calls, window_calls,
                    0 if window_s is None else max(1, int(window_s * 1e9)),
                    open_ms * ms, open_backoff, -1 if max_open_ms is None else max_open_ms * ms,
                    half_open_calls, -1 if max_half_open_ms is None else max_half_open_ms * ms,
                    kind_mask, record_errors, clock)

    # -- state ----------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state.  OPEN turns HALF_OPEN at the first call after
        ``open_ms`` (lazily: no timer thread)."""
        return CircuitState(self._snapshot()[0])

    @property
    def settings(self) -> Dict[str, Any]:
        """The validated settings, as given to the constructor."""
        return dict(self._settings)

    def force_open(self) -> None:
        """Refuse every call until ``reset()``."""
        self._set_state(CircuitState.FORCED_OPEN, "force_open")

    def disable(self) -> None:
        """Admit every call and record nothing until ``reset()``."""
        self._set_state(CircuitState.DISABLED, "disable")

    def reset(self) -> None:
        """Back to CLOSED with an empty window and the initial open duration."""
        if self.state is CircuitState.CLOSED:
            self._clear_window()
        else:
            self._set_state(CircuitState.CLOSED, "reset")

    def metrics(self) -> Dict[str, Any]:
        """``state`` (name), ``window_calls`` / ``window_failures`` / ``window_slow``
        (the current window), ``refused``, ``transitions``, ``recorded`` (calls
        recorded in a window, all time), ``probes_in_flight``, ``open_ms`` (the
        current, backed-off open duration)."""
        (state, n, failures, slow, refused, transitions, recorded, inflight, _until,
         open_now) = self._snapshot()
        return {
            "state": CircuitState(state).name.lower(),
            "window_calls": n,
            "window_failures": failures,
            "window_slow": slow,
            "refused": refused,
            "transitions": transitions,
            "recorded": recorded,
            "probes_in_flight": inflight,
            "open_ms": open_now / 1e6,
        }

    # -- audit: every rule that uses this breaker hears of each change ---------------
    def _listen(self, enforcer: Any, state: Any) -> None:
        with self._listeners_lock:
            self._listeners.append((weakref.ref(enforcer), state))

    def _changed(self, old: int, new: int, reason: str) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for ref, state in listeners:
            enforcer = ref()
            if enforcer is not None:
                enforcer._circuit_changed(state, self, CircuitState(old), CircuitState(new),
                                          reason)

    def __repr__(self) -> str:
        settings = getattr(self, "_settings", None)
        if settings is None:
            return "<CircuitBreaker (not initialised)>"
        return f"<CircuitBreaker {self.state.name} {settings}>"


def _bind_breaker(core: Any) -> type:
    """CircuitBreaker built on a given core (the test suite binds the twin)."""
    return type("CircuitBreaker", (_CircuitBreakerAPI, core._Breaker),
                {"__doc__": _DOC, "__module__": __name__})


_DOC = """A circuit breaker for one or more rules (``enforcer.rule(..., breaker=b)``).

``CircuitBreaker(*, failure_rate=0.5, slow_call_rate=1.0, slow_call_ms=None,
minimum_calls=20, window_calls=100, window_s=None, open_ms=30000,
open_backoff=1.0, max_open_ms=None, half_open_calls=5, max_half_open_ms=None,
record=("violation", "error"), clock=None)``

* The window is the last ``window_calls`` calls, or the last ``window_s``
  seconds (20 buckets) if set.  It trips (CLOSED -> OPEN) once it holds at
  least ``minimum_calls`` calls and failures >= ``failure_rate`` of them or
  slow calls (elapsed > ``slow_call_ms``, default the rule's deadline) >=
  ``slow_call_rate`` of them.
* ``record``: what is a failure: ``"violation"`` (every kind), or some of
  ``"timeout"``, ``"cpu"``, ``"memory"``; ``"error"`` adds fn's own exceptions
  (a transient error that a retry recovered is not a failure).
* OPEN refuses calls without running fn for ``open_ms`` (times
  ``open_backoff`` at each re-opening from HALF_OPEN, at most ``max_open_ms``);
  then HALF_OPEN admits ``half_open_calls`` probes (at most that many at once,
  the others are refused), closes when they succeed and re-opens when their
  failure or slow-call rate reaches the threshold, or when ``max_half_open_ms``
  passes without them all finishing.
* ``force_open()``, ``disable()``, ``reset()``; ``state``; ``metrics()``.
* ``clock``: a callable returning seconds (default: CLOCK_MONOTONIC), for tests.

One breaker may guard several rules (a shared dependency): their calls share one
window and one state, and each state change is an audit event of every rule
that uses it.  Sync and async calls share it too.  No lock is held while fn runs.
"""

CircuitBreaker = _bind_breaker(_core)
