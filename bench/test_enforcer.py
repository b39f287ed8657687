"""ConstraintEnforcer's per-call pipeline, compiled core vs pure-Python twin.

FAST is fail closed with a 5 ms deadline and a 0.5 ms CPU allowance: on a
loaded machine a call that is descheduled at the wrong moment is denied
(ConstraintViolation).  So the call is made from a wrapper that catches and
counts the violation (a ``try`` costs nothing in Python 3.11 when nothing is
raised) and the wrapper is compared with the same wrapper around ``f()``
(``minus="call_f"``).  Denied calls are reported in ``extra_info["denied"]``.
"""

from __future__ import annotations

from _support import f, measure


def test_execute_with_constraints_fast(benchmark, fp):
    """``enforcer.execute_with_constraints(RuleType.FAST, f)``: minus ``f()`` is goal 6."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    execute = enforcer.execute_with_constraints
    fast = fp.RuleType.FAST
    violation = fp.ConstraintViolation
    denied = [0]

    def execute_fast():
        try:
            return execute(fast, f)
        except violation:
            denied[0] += 1

    measure(benchmark, "enforcer", "execute", fp.kind, execute_fast, minus="call_f")
    counts = enforcer.metrics()[fast]
    assert counts["executed"] == counts["calls"] > 0
    assert counts["fail_closed"] == denied[0]
    benchmark.extra_info.update(denied=denied[0], calls=counts["calls"])


def test_constrained_decorator_fast(benchmark, fp):
    """``@enforcer.constrained(RuleType.FAST)``: the decorator adds a Python wrapper."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    wrapped = enforcer.constrained(fp.RuleType.FAST)(f)
    violation = fp.ConstraintViolation
    denied = [0]

    def call_wrapped():
        try:
            return wrapped()
        except violation:
            denied[0] += 1

    measure(benchmark, "enforcer", "constrained", fp.kind, call_wrapped, minus="call_f")
    benchmark.extra_info.update(denied=denied[0])
