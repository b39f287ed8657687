"""The violation kinds and the exception hierarchy shared by both cores.

Both the compiled core (``_budget.pyx``) and its pure-Python twin raise these
classes, so ``except fastpath.ConstraintViolation`` works whichever is loaded.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Iterable, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from ._budget_py import ExecutionStats

__all__ = [
    "ConstraintViolationType",
    "ConstraintError",
    "ConstraintViolation",
    "InvalidConfiguration",
    "ResourceExhausted",
    "EnforcementFailure",
]


class ConstraintViolationType(enum.IntEnum):
    """What kind of limit a call broke.

    The integer values are stable: the compiled core records violations as
    these small integers and never allocates for them until it has to.
    """

    TIMEOUT_EXCEEDED = 1
    MEMORY_EXCEEDED = 2
    CPU_EXCEEDED = 3
    SAMPLED_OUT = 4
    MULTIPLE_VIOLATIONS = 5

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


class ConstraintError(Exception):
    """Base class of every error fastpath raises."""


class ConstraintViolation(ConstraintError):
    """A call broke one or more of its limits.

    Attributes:
        kind: the single kind broken, or ``MULTIPLE_VIOLATIONS`` when more than one.
        violations: the individual kinds, in the order they were recorded
            (never ``MULTIPLE_VIOLATIONS``).
        stats: the ``ExecutionStats`` of the call, or ``None``.
        interrupted: ``True`` when the call was stopped mid-way by fastpath (the
            watchdog or the memory cap), ``False`` when it returned by itself and
            the violation was detected afterwards.
        interruptible: ``None`` when no interrupt was attempted; ``True`` when an
            attempted interrupt stopped the call within the delivery bound;
            ``False`` when the call could not be interrupted in time (it was
            blocked inside a C call, or swallowed the interrupt) and the
            violation was raised when it came back.
    """

    kind: ConstraintViolationType
    violations: Tuple[ConstraintViolationType, ...]
    stats: Optional["ExecutionStats"]
    interrupted: bool
    interruptible: Optional[bool]

    def __init__(
        self,
        violations: Iterable[ConstraintViolationType],
        stats: Optional["ExecutionStats"] = None,
        message: Optional[str] = None,
        *,
        interrupted: bool = False,
        interruptible: Optional[bool] = None,
    ) -> None:
        kinds = tuple(ConstraintViolationType(v) for v in violations)
        if not kinds:
            raise ValueError("a ConstraintViolation needs at least one violation kind")
        if ConstraintViolationType.MULTIPLE_VIOLATIONS in kinds:
            raise ValueError("MULTIPLE_VIOLATIONS is a summary, not an individual violation")
        self.violations = kinds
        self.kind = kinds[0] if len(kinds) == 1 else ConstraintViolationType.MULTIPLE_VIOLATIONS
        self.stats = stats
        self.interrupted = interrupted
        self.interruptible = interruptible
        if message is None:
            message = _describe(kinds, stats)
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (
            _rebuild_violation,
            (self.violations, self.stats, str(self), self.interrupted, self.interruptible),
        )


def _rebuild_violation(
    violations: Tuple[ConstraintViolationType, ...],
    stats: Any,
    message: str,
    interrupted: bool,
    interruptible: Optional[bool],
) -> ConstraintViolation:
    return ConstraintViolation(
        violations, stats, message, interrupted=interrupted, interruptible=interruptible
    )


def _describe(kinds: Tuple[ConstraintViolationType, ...], stats: Any) -> str:
    names = ", ".join(k.name for k in kinds)
    if stats is None:
        return f"constraint violated: {names}"
    return (
        f"constraint violated: {names} (elapsed {stats.elapsed_ns / 1e6:.3f} ms, "
        f"memory {stats.memory_used_bytes} B, cpu {stats.cpu_time_us} us"
        f"{'' if stats.cpu_time_measured else ' (wall-time bound)'})"
    )


class InvalidConfiguration(ConstraintError, ValueError):
    """A constraint, policy or enforcer was given a bad value."""


class ResourceExhausted(ConstraintError):
    """A cumulative limit (a quota, an open circuit) refuses the call."""


class EnforcementFailure(ConstraintError):
    """The enforcement machinery itself failed (for example, no watchdog thread)."""


class ExecutionInterrupted(BaseException):
    """Raised inside a call that fastpath's watchdog stops at its limit.

    A ``BaseException`` so that ``except Exception`` in the rule cannot swallow
    it.  ``enforce`` turns it into a ``ConstraintViolation`` at its boundary; it
    never escapes to the caller of ``enforce``.
    """
