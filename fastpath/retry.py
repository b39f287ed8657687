"""Retries with backoff: an immutable ``RetryPolicy`` and its ``BackoffStrategy``.

A policy is a value: every ``with_*`` method returns a new, validated policy and
none stores anything while it runs, so one policy can be shared by any number of
threads.  ``execute`` calls ``fn`` at most ``max_attempts`` times; the success
path is a bare ``try``/``return`` and everything else lives in the slow path.

Delays
    The delay before retry ``k`` (``k = 1, 2, ...``; retry ``k`` is attempt
    ``k + 1``) is ``backoff_ms`` for ``FIXED`` and ``backoff_ms * 2**(k-1)`` for
    ``EXPONENTIAL`` (saturating at ``2**53`` ms).  Jitter, if any, then scales
    it by ``1 - jitter * u`` with ``u`` drawn uniformly from ``[0, 1)``: the
    delay lands in ``(delay * (1 - jitter), delay]`` ("equal jitter" at
    ``jitter=0.5``, "full jitter" at ``1.0``).  The maximum delay is applied
    last, after jitter.  ``delay_ms(k)`` is the delay without jitter, capped:
    the upper bound of the real one.

What is retried
    An exception that is an instance of one of ``retry_on`` (default
    ``(Exception,)``) and, when a predicate is set with ``with_retry_if``, for
    which the predicate returns a true value.  A ``BaseException`` that is not
    an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``,
    ``asyncio.CancelledError``, ``fastpath.ExecutionInterrupted``) is never
    caught, whatever the settings.  An exception that is not retried
    propagates at once, unchanged and without a note.

Giving up
    The last exception is re-raised (the same object, its traceback kept) with
    a note (``BaseException.add_note``) saying why the policy stopped.
"""

from __future__ import annotations

import enum
import math
import numbers
import operator
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from ._impl import core as _core
from .errors import ConstraintViolation, ConstraintViolationType, InvalidConfiguration

_awaitable: Callable[[Any], bool] = _core._awaitable   # a type-slot test in the compiled core

if TYPE_CHECKING:  # pragma: no cover
    # The typed twin describes both cores' budgets.
    from ._budget_py import ExecutionBudget

__all__ = ["BackoffStrategy", "RetryPolicy"]

P = ParamSpec("P")
T = TypeVar("T")

#: Largest backoff_ms / max_delay_ms accepted, and where exponential delays saturate
#: (the same bound as ExecutionConstraints.retry_backoff_ms).
MAX_DELAY_LIMIT_MS = 2**53

#: The note prefix, so that a user can find fastpath's note among others.
NOTE_PREFIX = "fastpath.RetryPolicy:"

SleepFn = Callable[[float], object]
Predicate = Callable[[Exception], object]
RandomFn = Callable[[], float]


class BackoffStrategy(enum.Enum):
    """How the delay grows from one retry to the next."""

    FIXED = "fixed"
    """Every retry waits ``backoff_ms``."""

    EXPONENTIAL = "exponential"
    """Retry ``k`` waits ``backoff_ms * 2**(k-1)``: 1x, 2x, 4x, ..."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


_SLOTS = (
    "_max_attempts",
    "_backoff_ms",
    "_strategy",
    "_jitter",
    "_jitter_rng",
    "_max_delay_ms",
    "_retry_on",
    "_retry_if",
    "_sleep",
)


class RetryPolicy:
    """An immutable retry policy: how many attempts, how long to wait between them.

    ``RetryPolicy(max_attempts, backoff_ms)``: ``max_attempts`` counts every
    attempt, the first included (``RetryPolicy(3, 10)`` calls ``fn`` at most 3
    times); ``backoff_ms`` is the base delay in milliseconds (an int >= 0).
    The defaults: fixed backoff, no jitter, no maximum delay, retry on any
    ``Exception``, no predicate, ``time.sleep``.  Bad values raise
    ``InvalidConfiguration`` naming the argument and the value.

    Immutable (setting an attribute raises ``AttributeError``), compared and
    hashed by value, safe to share between threads: running it stores nothing
    on it.  See the module docstring for the delay and jitter model.
    """

    __slots__ = _SLOTS

    _max_attempts: int
    _backoff_ms: int
    _strategy: BackoffStrategy
    _jitter: float
    _jitter_rng: RandomFn | None
    _max_delay_ms: int | None
    _retry_on: tuple[type[Exception], ...]
    _retry_if: Predicate | None
    _sleep: SleepFn

    def __init__(self, max_attempts: int, backoff_ms: int) -> None:
        if hasattr(self, "_max_attempts"):
            raise AttributeError("RetryPolicy is immutable; use its with_*() methods")
        values: dict[str, Any] = {
            "_max_attempts": _max_attempts(max_attempts),
            "_backoff_ms": _ms("backoff_ms", backoff_ms),
            "_strategy": BackoffStrategy.FIXED,
            "_jitter": 0.0,
            "_jitter_rng": None,
            "_max_delay_ms": None,
            "_retry_on": (Exception,),
            "_retry_if": None,
            "_sleep": time.sleep,
        }
        for name in _SLOTS:
            object.__setattr__(self, name, values[name])

    # ----------------------------------------------------------- value semantics

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RetryPolicy is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RetryPolicy is immutable: cannot delete {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _SLOTS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not RetryPolicy:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        retry_on = ", ".join(_name(t) for t in self._retry_on)
        if len(self._retry_on) == 1:
            retry_on += ","
        parts = [
            f"max_attempts={self._max_attempts}",
            f"backoff_ms={self._backoff_ms}",
            f"strategy={self._strategy!r}",
            f"jitter={self._jitter!r}",
        ]
        if self._jitter_rng is not None:
            parts.append(f"jitter_rng={_name(self._jitter_rng)}")
        parts += [
            f"max_delay_ms={self._max_delay_ms!r}",
            f"retry_on=({retry_on})",
            f"retry_if={'None' if self._retry_if is None else _name(self._retry_if)}",
            f"sleep={_name(self._sleep)}",
        ]
        return f"RetryPolicy({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, self._values())

    def _evolve(self, **changes: Any) -> RetryPolicy:
        new = object.__new__(RetryPolicy)
        for name in _SLOTS:
            object.__setattr__(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    # ------------------------------------------------------------------ settings

    @property
    def max_attempts(self) -> int:
        """Every attempt counted, the first included."""
        return self._max_attempts

    @property
    def backoff_ms(self) -> int:
        """The base delay in milliseconds."""
        return self._backoff_ms

    @property
    def strategy(self) -> BackoffStrategy:
        """``BackoffStrategy.FIXED`` or ``BackoffStrategy.EXPONENTIAL``."""
        return self._strategy

    @property
    def jitter(self) -> float:
        """The jitter fraction in [0.0, 1.0]; 0.0 means no jitter."""
        return self._jitter

    @property
    def jitter_rng(self) -> RandomFn | None:
        """The uniform [0, 1) source of the jitter, or None for ``random.random``."""
        return self._jitter_rng

    @property
    def max_delay_ms(self) -> int | None:
        """The cap on every delay (applied after jitter), or None."""
        return self._max_delay_ms

    @property
    def retry_on(self) -> tuple[type[Exception], ...]:
        """The exception classes that are retried."""
        return self._retry_on

    @property
    def retry_if(self) -> Predicate | None:
        """The predicate a retried exception must also satisfy, or None."""
        return self._retry_if

    @property
    def sleep(self) -> SleepFn:
        """The function that waits between attempts; it takes seconds."""
        return self._sleep

    # ------------------------------------------------------------------- builders

    def with_exponential_backoff(self) -> RetryPolicy:
        """A copy whose delay doubles with every retry: ``backoff_ms * 2**(k-1)``."""
        return self._evolve(_strategy=BackoffStrategy.EXPONENTIAL)

    def with_fixed_backoff(self) -> RetryPolicy:
        """A copy that waits ``backoff_ms`` before every retry."""
        return self._evolve(_strategy=BackoffStrategy.FIXED)

    def with_jitter(
        self, fraction: float = 0.5, *, rng: RandomFn | None = None
    ) -> RetryPolicy:
        """A copy whose delays are scaled by ``1 - fraction * u``, ``u`` uniform in [0, 1).

        Each delay lands in ``(delay * (1 - fraction), delay]``: ``0.5`` is
        "equal jitter" (the default), ``1.0`` "full jitter", ``0.0`` none.
        ``rng`` is a zero-argument callable returning floats in [0, 1) (for
        example ``random.Random(seed).random``); by default ``random.random``.
        A draw outside [0, 1] is clamped into it.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise InvalidConfiguration(
                f"jitter fraction must be a real number within [0.0, 1.0], got {fraction!r}"
            )
        value = float(fraction)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise InvalidConfiguration(
                f"jitter fraction must be within [0.0, 1.0], got {fraction!r}"
            )
        if rng is not None and not callable(rng):
            raise InvalidConfiguration(f"rng must be a callable or None, got {rng!r}")
        return self._evolve(_jitter=value, _jitter_rng=rng)

    def with_max_delay(self, ms: int | None) -> RetryPolicy:
        """A copy whose every delay is at most ``ms`` milliseconds (None: no cap)."""
        return self._evolve(_max_delay_ms=None if ms is None else _ms("max_delay_ms", ms))

    def with_retry_on(self, *exc_types: type[Exception]) -> RetryPolicy:
        """A copy that retries only instances of these ``Exception`` subclasses.

        A class that is not an ``Exception`` subclass (``BaseException``,
        ``KeyboardInterrupt``, ``SystemExit``, ``asyncio.CancelledError``,
        ``fastpath.ExecutionInterrupted``, ...) or anything that is not a class
        raises ``InvalidConfiguration``: those are never retried.
        """
        if not exc_types:
            raise InvalidConfiguration("retry_on needs at least one exception class, got none")
        for exc_type in exc_types:
            if not isinstance(exc_type, type):
                raise InvalidConfiguration(
                    f"retry_on must be Exception subclasses, got {exc_type!r}"
                )
            if not issubclass(exc_type, Exception):
                raise InvalidConfiguration(
                    f"retry_on must be Exception subclasses, got {exc_type!r}"
                    + (
                        " (a BaseException that is not an Exception is never retried)"
                        if issubclass(exc_type, BaseException)
                        else ""
                    )
                )
        return self._evolve(_retry_on=tuple(exc_types))

    def with_retry_if(self, predicate: Predicate) -> RetryPolicy:
        """A copy that retries an exception only if ``predicate(exc)`` is true.

        The predicate is consulted after ``retry_on`` matched.  It runs in the
        retrying thread; an exception it raises propagates (the failed
        attempt's exception is then its ``__context__``).
        """
        if not callable(predicate):
            raise InvalidConfiguration(f"retry_if must be a callable, got {predicate!r}")
        return self._evolve(_retry_if=predicate)

    def with_sleep(self, sleep: SleepFn) -> RetryPolicy:
        """A copy that waits with ``sleep(seconds)`` instead of ``time.sleep``."""
        if not callable(sleep):
            raise InvalidConfiguration(f"sleep must be a callable, got {sleep!r}")
        return self._evolve(_sleep=sleep)

    # --------------------------------------------------------------------- delays

    def delay_ms(self, k: int) -> int:
        """The delay in ms before retry ``k`` (k >= 1), capped, without jitter.

        It is the upper bound of the delay actually waited.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidConfiguration(f"k must be an int >= 1, got {k!r}")
        delay = self._base_delay(k)
        cap = self._max_delay_ms
        return delay if cap is None or delay <= cap else cap

    def _base_delay(self, k: int) -> int:
        backoff = self._backoff_ms
        if self._strategy is BackoffStrategy.FIXED or backoff == 0:
            return backoff
        if k > 54:  # backoff >= 1, so 2**53 is reached: no huge int
            return MAX_DELAY_LIMIT_MS
        return min(backoff << (k - 1), MAX_DELAY_LIMIT_MS)

    def _next_delay(self, k: int) -> float:
        """The delay in ms before retry k: jittered, then capped."""
        delay: float = self._base_delay(k)
        if self._jitter:
            draw = (self._jitter_rng or random.random)()
            draw = min(max(draw, 0.0), 1.0)
            delay = delay * (1.0 - self._jitter * draw)
        cap = self._max_delay_ms
        if cap is not None and delay > cap:
            delay = cap
        return delay

    # ---------------------------------------------------------------- execution

    def execute(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, retrying as the policy says; return its value.

        An exception that is not retried (see ``retry_on`` and ``retry_if``)
        propagates at once, unchanged.  After the last attempt the last
        exception is re-raised -- the same object, its traceback kept -- with
        the note ``"fastpath.RetryPolicy: gave up after N attempts"``.  Inside
        an ``enforce()`` (or any scope with a current budget) no retry starts
        that the current budget cannot cover, as with ``execute_within``.
        ``fn`` must be a plain callable: coroutines go to ``execute_async``.
        """
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - retry_on filters it
            _check_callable(fn, "execute")      # None and the like: say so, never retry
            failure = exc
        else:
            if result is not None and _awaitable(result):
                _not_awaitable(fn, result, "execute")
            return result
        # Outside the except block: the next attempts' exceptions get no
        # __context__ from this one.
        try:
            return self._retry(failure, fn, args, kwargs, _current_budget())
        finally:
            del failure

    def execute_within(
        self,
        budget: ExecutionBudget,
        fn: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Like ``execute``, but never past the deadline of ``budget``.

        * A budget that has already timed out runs nothing: ``budget.check()``
          raises ``ConstraintViolation`` of kind ``TIMEOUT_EXCEEDED`` (or
          ``MULTIPLE_VIOLATIONS`` if another limit is broken too) with the
          budget's stats; the violation is recorded on the budget.
        * A retry is started only if the budget's ``remaining_ms()`` is greater
          than the delay before it; otherwise the last exception is re-raised
          with a note naming the delay and the remaining time.
        * If the budget times out during the delay, no further attempt is
          made: the last exception is re-raised with a note saying so.

        The attempts are called directly, not through ``budget.enforce``; pass
        ``budget.enforce`` as ``fn`` to also interrupt an attempt at the
        deadline.  The budget's clock is read with ``remaining_ms()`` and
        ``is_timeout()``, so a budget whose clock is stopped (after an
        ``enforce()`` returned) reports the time it stopped at.
        """
        _check_budget(budget, "execute_within")
        _check_callable(fn, "execute_within")
        if budget.is_timeout():
            _raise_timed_out(budget)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - retry_on filters it
            failure = exc
        else:
            return _not_awaitable(fn, result, "execute_within")
        try:
            return self._retry(failure, fn, args, kwargs, budget)
        finally:
            del failure

    async def execute_async(self, fn: Callable[P, Awaitable[T]], /, *args: P.args,
                            **kwargs: P.kwargs) -> T:
        """``execute`` for coroutines: ``await fn(*args, **kwargs)``, retrying with
        ``asyncio.sleep`` between attempts.  ``asyncio.CancelledError`` (a
        ``BaseException``) is never retried."""
        _check_callable(fn, "execute_async")
        return await self._retry_async(fn, args, kwargs, _current_budget())

    async def execute_within_async(self, budget: ExecutionBudget,
                                   fn: Callable[P, Awaitable[T]], /, *args: P.args,
                                   **kwargs: P.kwargs) -> T:
        """``execute_within`` for coroutines (pass ``budget.enforce_async`` as ``fn``
        to also run each attempt under the budget)."""
        _check_budget(budget, "execute_within_async")
        _check_callable(fn, "execute_within_async")
        if budget.is_timeout():
            _raise_timed_out(budget)
        return await self._retry_async(fn, args, kwargs, budget)

    async def _retry_async(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                           kwargs: dict[str, Any], budget: ExecutionBudget | None) -> T:
        import asyncio

        attempt = 1
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - retry_on filters it
                delay = self._delay_before_retry(exc, attempt, budget)
                try:
                    await asyncio.sleep(delay / 1000.0)
                    self._check_after_delay(exc, attempt, delay, budget)
                finally:
                    del exc
            attempt += 1

    def _retry(
        self,
        exc: Exception,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        budget: ExecutionBudget | None,
    ) -> T:
        """The slow path: attempt 1 failed with ``exc``."""
        sleep = self._sleep
        attempt = 1
        try:
            while True:
                delay = self._delay_before_retry(exc, attempt, budget)
                sleep(delay / 1000.0)
                self._check_after_delay(exc, attempt, delay, budget)
                attempt += 1
                try:
                    return fn(*args, **kwargs)
                except Exception as failure:  # noqa: BLE001 - retry_on filters it
                    exc = failure
        finally:
            del exc  # no frame -> exception -> traceback -> frame cycle

    def _delay_before_retry(self, exc: Exception, attempt: int,
                            budget: ExecutionBudget | None) -> float:
        """Attempt `attempt` failed with exc: the delay before the next one, or
        re-raise exc (not retried, out of attempts, or the budget cannot cover it)."""
        if not isinstance(exc, self._retry_on) or (
                self._retry_if is not None and not self._retry_if(exc)):
            raise exc
        if attempt >= self._max_attempts:
            _give_up(exc, f"gave up after {_attempts(attempt)}")
        delay = self._next_delay(attempt)
        if budget is not None:
            remaining = budget.remaining_ms()
            if not delay < remaining:
                _give_up(
                    exc,
                    f"stopped after {_attempts(attempt)}: the budget has timed out"
                    if remaining <= 0.0
                    else f"stopped after {_attempts(attempt)}: the delay before attempt "
                    f"{attempt + 1} ({_fmt_ms(delay)}) does not fit in the budget's "
                    f"remaining {_fmt_ms(remaining)}",
                )
        return delay

    @staticmethod
    def _check_after_delay(exc: Exception, attempt: int, delay: float,
                           budget: ExecutionBudget | None) -> None:
        if budget is not None and budget.is_timeout():
            _give_up(
                exc,
                f"stopped after {_attempts(attempt)}: the budget timed out during "
                f"the {_fmt_ms(delay)} delay before attempt {attempt + 1}",
            )


def _current_budget() -> ExecutionBudget | None:
    from ._impl import current_budget_any

    return current_budget_any()  # type: ignore[return-value]


def _check_callable(fn: Any, entry: str) -> None:
    if not callable(fn):
        raise TypeError(f"RetryPolicy.{entry}() needs a callable fn, got {fn!r}")


def _check_budget(budget: Any, entry: str) -> None:
    if not (callable(getattr(budget, "remaining_ms", None))
            and callable(getattr(budget, "is_timeout", None))):
        raise TypeError(f"RetryPolicy.{entry}() needs an ExecutionBudget as budget, "
                        f"got {budget!r}")


def _not_awaitable(fn: Any, result: T, entry: str) -> T:
    if result is not None and _awaitable(result):
        close = getattr(result, "close", None)
        if close is not None and not hasattr(result, "add_done_callback"):
            close()
        raise TypeError(f"RetryPolicy.{entry}() ran {fn!r}, which returned an awaitable; "
                        f"use {entry}_async() for coroutines")
    return result


def _give_up(exc: Exception, why: str) -> NoReturn:
    exc.add_note(f"{NOTE_PREFIX} {why}")
    raise exc


def _raise_timed_out(budget: ExecutionBudget) -> NoReturn:
    budget.check()  # raises ConstraintViolation(TIMEOUT_EXCEEDED, stats)
    # Only reached with a budget whose check() disagrees with is_timeout().
    raise ConstraintViolation(  # pragma: no cover
        [ConstraintViolationType.TIMEOUT_EXCEEDED], budget.stats()
    )


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _fmt_ms(ms: float) -> str:
    if ms == int(ms):
        return f"{int(ms)} ms"
    return f"{ms:.3f} ms"


def _name(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if qualname is None:
        return repr(obj)
    if module in (None, "builtins"):
        return str(qualname)
    return f"{module}.{qualname}"


def _max_attempts(value: Any) -> int:
    if isinstance(value, (bool, float, str, bytes, complex)):
        raise InvalidConfiguration(f"max_attempts must be an int >= 1, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidConfiguration(f"max_attempts must be an int >= 1, got {value!r}") from None
    if number < 1:
        raise InvalidConfiguration(f"max_attempts must be an int >= 1, got {number!r}")
    return number


def _ms(name: str, value: Any) -> int:
    message = f"{name} must be an int in 0..2**53, got {value!r}"
    if isinstance(value, (bool, float, str, bytes, complex)):
        raise InvalidConfiguration(message)
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidConfiguration(message) from None
    if not 0 <= number <= MAX_DELAY_LIMIT_MS:
        raise InvalidConfiguration(message)
    return number


def _restore(*values: Any) -> RetryPolicy:
    policy = object.__new__(RetryPolicy)
    for name, value in zip(_SLOTS, values, strict=True):
        object.__setattr__(policy, name, value)
    return policy
