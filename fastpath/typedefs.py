"""The shapes of the dicts fastpath returns, as ``TypedDict``s for type checkers.

At run time every one of them is a plain ``dict``; these classes exist so that
``mypy --strict`` knows each key and the type of its value
(``enforcer.metrics()[RuleType.FAST]["calls"]`` is an ``int``).  Both cores
return exactly these keys (``tests/test_parity.py`` checks them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, TypedDict

from ._histogram_shared import HistogramSummary
from .errors import ConstraintViolationType

if TYPE_CHECKING:  # pragma: no cover
    from .enforcer import RuleType

__all__ = [
    "AuditMetrics",
    "AuditMetricsJSON",
    "BuildInfo",
    "HistogramSummary",
    "PreemptionInfo",
    "RuleAuditEntry",
    "RuleAuditEntryJSON",
    "RuleMetrics",
    "RuleMetricsJSON",
]


class PreemptionInfo(TypedDict):
    """What ``fastpath.preemption_info()`` returns."""

    #: Calls may be interrupted (``set_preemption``, ``FASTPATH_PREEMPT``).
    enabled: bool
    #: How the main thread is interrupted: ``"signal"`` or ``"gil"``.
    main_thread: str
    #: The real-time signal used for the main thread, or None.
    signal: Optional[int]
    #: ``"off"``, ``"ours"``, ``"pending"``, ``"taken"`` or ``"lost"``.
    signal_route: str
    watchdog_running: bool
    #: The watchdog's period in ns.
    watchdog_tick_ns: int
    #: The compiled watchdog uses membarrier(2) (always False in the twin).
    membarrier: bool
    #: The watchdog lowers the switch interval to take the GIL at once (twin: False).
    fast_gil_handover: bool
    #: The clock of deadlines: ``"tsc"`` or ``"CLOCK_MONOTONIC"``.
    clock: str
    #: Watchdog ticks so far.
    ticks: int
    interrupts_sent: int
    interrupts_deferred: int


class BuildInfo(TypedDict):
    """What the compiled core's ``build_info()`` returns."""

    cython: str
    kind: str
    cflags: str
    directives: str


class RuleMetrics(TypedDict):
    """One rule type's entry in ``ConstraintEnforcer.metrics()``."""

    calls: int
    executed: int
    sampled_out: int
    fail_open: int
    fail_closed: int
    errors: int
    retries: int
    violations: Dict[ConstraintViolationType, int]
    latency: HistogramSummary


class RuleMetricsJSON(TypedDict):
    """One rule type's entry in ``ConstraintEnforcer.metrics(json=True)``."""

    calls: int
    executed: int
    sampled_out: int
    fail_open: int
    fail_closed: int
    errors: int
    retries: int
    #: Violation kind name (``"TIMEOUT_EXCEEDED"``) -> count.
    violations: Dict[str, int]
    latency: HistogramSummary


class RuleAuditEntry(TypedDict):
    """One rule id's entry in ``ConstraintEnforcer.audit_metrics()["rules"]``."""

    events: int
    #: ``"deny"`` / ``"fallback"`` / ``"error"`` -> count.
    outcomes: Dict[str, int]
    violations: Dict[ConstraintViolationType, int]


class RuleAuditEntryJSON(TypedDict):
    """``RuleAuditEntry`` with violation kind names as keys (``json=True``)."""

    events: int
    outcomes: Dict[str, int]
    violations: Dict[str, int]


class AuditMetrics(TypedDict):
    """What ``ConstraintEnforcer.audit_metrics()`` returns.

    ``rules`` is keyed by ``RuleType`` (a ``str`` key of the rule type's value
    with ``json=True``: see ``AuditMetricsJSON``), then by rule id.
    """

    events: int
    sink_failures: int
    #: Lines the default sink wrote, events it suppressed, summary lines
    #: (None with a custom sink).
    logged: Optional[int]
    suppressed: Optional[int]
    summaries: Optional[int]
    rules: Dict["RuleType", Dict[str, RuleAuditEntry]]


class AuditMetricsJSON(TypedDict):
    """What ``ConstraintEnforcer.audit_metrics(json=True)`` returns."""

    events: int
    sink_failures: int
    logged: Optional[int]
    suppressed: Optional[int]
    summaries: Optional[int]
    rules: Dict[str, Dict[str, RuleAuditEntryJSON]]

