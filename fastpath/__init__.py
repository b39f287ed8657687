"""fastpath: runtime constraints for rule evaluation, enforced from a compiled core.

Deadlines, CPU time, memory, sampling and retries for the rules a policy engine,
API gateway or agent guardrail runs millions of times a second.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._flow import current_flow_key
from ._impl import IMPLEMENTATION, core, histogram, quota
from .adaptive import AdaptiveLimit
from .breaker import CircuitBreaker, CircuitState
from .enforcer import AuditEvent, ConstraintEnforcer, RuleType
from .errors import (
    ConstraintError,
    ConstraintViolation,
    ConstraintViolationType,
    EnforcementFailure,
    ExecutionInterrupted,
    InvalidConfiguration,
    ResourceExhausted,
)
from .retry import BackoffStrategy, RetryPolicy

__version__ = "0.1.0"

# The logging HOWTO for libraries: a NullHandler on the package logger, no other
# configuration; the application decides where "fastpath" and "fastpath.audit" go.
logging.getLogger("fastpath").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    # The typed pure-Python twin describes the compiled core exactly.
    from ._budget_py import (
        ExecutionBudget,
        ExecutionConstraints,
        ExecutionStats,
        current_budget,
        preemption_info,
        set_preemption,
        uninterruptible,
    )
    from ._histogram_py import LatencyHistogram
    from ._rules_py import Rule
    from ._quota_py import LocalQuotaStore, Quota
else:
    ExecutionConstraints = core.ExecutionConstraints
    ExecutionBudget = core.ExecutionBudget
    ExecutionStats = core.ExecutionStats
    Rule = core.Rule
    set_preemption = core.set_preemption
    preemption_info = core.preemption_info
    uninterruptible = core.uninterruptible
    current_budget = core.current_budget
    LatencyHistogram = histogram.LatencyHistogram
    Quota = quota.Quota
    LocalQuotaStore = quota.LocalQuotaStore

__all__ = [
    "IMPLEMENTATION",
    "AdaptiveLimit",
    "AuditEvent",
    "CircuitBreaker",
    "CircuitState",
    "Rule",
    "BackoffStrategy",
    "ConstraintEnforcer",
    "RuleType",
    "ConstraintError",
    "ConstraintViolation",
    "ConstraintViolationType",
    "EnforcementFailure",
    "ExecutionBudget",
    "ExecutionConstraints",
    "ExecutionInterrupted",
    "ExecutionStats",
    "InvalidConfiguration",
    "LatencyHistogram",
    "LocalQuotaStore",
    "Quota",
    "ResourceExhausted",
    "RetryPolicy",
    "__version__",
    "current_budget",
    "current_flow_key",
    "preemption_info",
    "set_preemption",
    "uninterruptible",
]
