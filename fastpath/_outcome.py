"""How one enforced call ended: the representation the compiled core, the twin
and the enforcer share.

Each core records, in its budget's ``_ending``, how the budget's last call
ended (an ``Ending``); the rule pipelines read that to tell the budget's own
``ConstraintViolation`` from an exception of ``fn``'s (``is_violation``), and
a violation's ``interrupted`` and ``interruptible`` flags are derived from the
ending in one place (``violation``).  A rule's settled attempt is a
``Verdict``; its audit outcome names are ``AUDIT_OUTCOME``.

The compiled core declares the same numbers as C constants and checks them
against these at import (``_budget._check_outcome_numbers``).
"""

from __future__ import annotations

import enum
import sys
from typing import Iterable, Optional

from .errors import ConstraintViolation, ConstraintViolationType

__all__ = ["AUDIT_OUTCOME", "DELIVERY_SLACK_NS", "FIRST_VIOLATION", "Ending", "Verdict",
           "is_violation", "stopped_in_time", "violation"]

# How long after an interrupt fell due (the deadline, or the moment the CPU
# allowance was crossed) a call may take to stop and still count as
# interruptible: it stopped at an eval-breaker check, not when a blocking C
# call finally returned.  Other threads wait for the GIL, hence the switch
# interval on top.
DELIVERY_SLACK_NS = 2_000_000


class Ending(enum.IntEnum):
    """How a budget's last call ended."""

    NOT_ENDED = 0       # no call has ended (or one is running, or it never started)
    RETURNED = 1        # fn returned within its limits
    RAISED = 2          # fn raised its own exception, which propagates unchanged
    CHECKED = 3         # budget.check() found a limit broken (the call goes on)
    # From here on the budget raised its own ConstraintViolation for the call.
    EXPIRED = 4         # the budget was spent before fn ran: fn did not run
    INTERRUPTED = 5     # stopped mid-way: by the budget's interrupt (deadline, CPU),
                        # a cancellation at the deadline, or code that enforces
                        # a limit itself (fastpath.regex, fastpath.wasm)
    MEMORY_REFUSED = 6  # the memory cap refused an allocation and fn ended
                        # with that MemoryError
    MEMORY_STOPPED = 7  # fn kept allocating past the cap's grace margin: stopped
                        # by the memory interrupt
    MEMORY_SWALLOWED = 8  # fn swallowed the cap's MemoryError and returned
    LATE = 9            # fn (or a scope) came back by itself over a limit


FIRST_VIOLATION = Ending.EXPIRED     # this ending and all after it: is_violation
_INTERRUPTED = frozenset((Ending.INTERRUPTED, Ending.MEMORY_REFUSED, Ending.MEMORY_STOPPED))


class Verdict(enum.IntEnum):
    """What a rule pipeline does after an attempt (``_RuleState._settle``)."""

    OK = 0          # fn returned: return its value
    RETRY = 1       # a transient error with time left: retry after the backoff
    DENY = 2        # fail closed: raise the violation (audited)
    FALLBACK = 3    # fail open: return the rule's fallback (audited)
    ERROR = 4       # fn's own error: raise it (audited when the call was also late)


AUDIT_OUTCOME = {Verdict.DENY: "deny", Verdict.FALLBACK: "fallback", Verdict.ERROR: "error"}


def is_violation(ending: int) -> bool:
    """Did the call end in its budget's own ConstraintViolation?"""
    return ending >= FIRST_VIOLATION


def stopped_in_time(end_ns: int, due_ns: int) -> bool:
    """Did a call that ended at end_ns stop soon enough after its interrupt fell
    due at due_ns (at an eval-breaker check, not when a blocking C call returned)?"""
    return end_ns - due_ns <= DELIVERY_SLACK_NS + int(sys.getswitchinterval() * 1e9)


def violation(kinds: Iterable[ConstraintViolationType], stats: object, ending: int,
              stop_ns: int, due_ns: Optional[int]) -> ConstraintViolation:
    """The ConstraintViolation for a call that ended as `ending` at stop_ns.

    due_ns: when an interrupt fell due (the deadline, or the moment the CPU
    allowance was crossed), or None when none was due.  ``interrupted`` is
    whether the call was stopped mid-way; ``interruptible`` whether an attempted
    interrupt stopped it in time (None: none was attempted)."""
    interruptible: Optional[bool]
    if ending == Ending.MEMORY_REFUSED:
        interruptible = True            # the refusal itself ended the call
    elif ending in (Ending.MEMORY_STOPPED, Ending.MEMORY_SWALLOWED):
        interruptible = False           # the refusal did not end it
    elif ending in (Ending.INTERRUPTED, Ending.LATE) and due_ns is not None:
        interruptible = stopped_in_time(stop_ns, due_ns)
    else:
        interruptible = None
    return ConstraintViolation(kinds, stats,  # type: ignore[arg-type]
                               interrupted=ending in _INTERRUPTED,
                               interruptible=interruptible)
