"""One representation of how an enforced call ended (fastpath._outcome).

Both cores record an ``Ending`` in the budget after each call; the rule
pipelines read it (not a side flag) to tell the budget's own violation from
an exception of fn's, and a violation's ``interrupted``/``interruptible`` come
from the ending in one function.
"""

from __future__ import annotations

import time

import pytest

from fastpath import _outcome
from fastpath._outcome import Ending, Verdict

LONG_MS = 10_000     # a budget no loaded machine can overrun


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _raise(exc):
    raise exc


def ended(budget):
    return Ending(budget._ending)


def test_a_call_that_returns_ends_as_returned(fp):
    b = fp.ExecutionConstraints(LONG_MS).create_budget()
    assert ended(b) is Ending.NOT_ENDED
    assert b.enforce(sum, (1, 2)) == 3
    assert ended(b) is Ending.RETURNED


def test_fns_own_error_ends_as_raised_and_propagates_unchanged(fp):
    b = fp.ExecutionConstraints(LONG_MS).create_budget()
    err = KeyError("mine")
    with pytest.raises(KeyError) as info:
        b.enforce(_raise, err)
    assert info.value is err
    assert ended(b) is Ending.RAISED


def test_a_spent_budget_ends_as_expired_without_running_fn(fp):
    b = fp.ExecutionConstraints(1).create_budget()
    time.sleep(0.01)
    ran = []
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(ran.append, 1)
    assert ran == [] and ended(b) is Ending.EXPIRED
    assert info.value.interrupted is False and info.value.interruptible is None


def test_a_runaway_stopped_by_its_deadline_ends_as_interrupted(fp):
    b = fp.ExecutionConstraints(20).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(spin, 5)
    assert ended(b) is Ending.INTERRUPTED
    assert info.value.interrupted is True
    assert info.value.interruptible in (True, False)    # judged from its lateness


def test_a_call_that_comes_back_late_by_itself_ends_as_late(fp):
    b = fp.ExecutionBudget(fp.ExecutionConstraints(5), preempt=False)
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(time.sleep, 0.03)
    assert ended(b) is Ending.LATE
    # no interrupt was attempted (preempt=False): nothing to judge
    assert info.value.interrupted is False and info.value.interruptible is None


def test_another_budgets_violation_raised_by_fn_is_fns_own_error(fp):
    # The pipeline reads the ending: an inner budget's ConstraintViolation that
    # fn lets out is fn's error for the outer rule (counted as an error, not
    # as the rule's own violation, and never replaced by the fallback).
    e = fp.ConstraintEnforcer()
    inner = fp.ExecutionConstraints(1).create_budget()
    time.sleep(0.01)

    def fn():
        return inner.enforce(sum, ())       # expired: raises ConstraintViolation

    with pytest.raises(fp.ConstraintViolation) as info:
        e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, fn)   # fail open
    assert ended(inner) is Ending.EXPIRED
    m = e.metrics()[fp.RuleType.OBSERVATIONAL]
    assert m["errors"] == 1 and m["fail_open"] == 0
    assert info.value.stats is not None and info.value.stats.elapsed_ns < 10**9


def test_check_raises_a_checked_violation_that_fn_can_let_out(fp):
    b = fp.ExecutionConstraints(1).create_budget()
    time.sleep(0.01)
    with pytest.raises(fp.ConstraintViolation) as info:
        b.check()
    assert ended(b) is Ending.CHECKED
    assert info.value.interrupted is False and info.value.interruptible is None


def test_each_settled_attempt_is_a_shared_verdict(fp):
    # Both cores' _RuleState._settle (used by the async pipeline) answer in
    # fastpath._outcome.Verdict.
    e = fp.ConstraintEnforcer()
    closed = e._rule_state(fp.RuleType.FAST)              # fail closed
    opened = e._rule_state(fp.RuleType.OBSERVATIONAL)     # fail open
    ok = closed._start()
    ok.enforce(sum, ())
    assert closed._settle(ok, None, (), 1) == Verdict.OK

    def late_budget(state):
        b = state._start()
        time.sleep(state.constraints.max_exec_ms / 1000 + 0.01)
        try:
            b.enforce(sum, ())
        except fp.ConstraintViolation as exc:
            return b, exc
        raise AssertionError("a spent budget ran fn")

    b, exc = late_budget(closed)
    assert closed._settle(b, exc, (), 1) == Verdict.DENY
    b, exc = late_budget(opened)
    assert opened._settle(b, exc, (), 1) == Verdict.FALLBACK
    slow = e.rule("slow", fp.RuleType.OBSERVATIONAL,
                  constraints=fp.ExecutionConstraints(LONG_MS, max_retries=1,
                                                      retry_backoff_ms=0))._state
    b = slow._start()
    with pytest.raises(OSError) as info:
        b.enforce(_raise, OSError("transient"))
    assert slow._settle(b, info.value, (OSError,), 1) == Verdict.RETRY
    assert slow._settle(b, info.value, (), 1) == Verdict.ERROR


def test_a_capped_call_refused_memory_ends_as_memory_refused():
    from conftest import make_namespace

    fp = make_namespace("compiled")
    b = fp.ExecutionConstraints(LONG_MS, memory_limit_bytes=1024 * 1024).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(lambda: [0] * 10**7)      # 80 MB of pointers, refused
    assert ended(b) is Ending.MEMORY_REFUSED
    assert info.value.interrupted is True and info.value.interruptible is True

    def swallow():
        try:
            return [0] * 10**7
        except MemoryError:
            return None

    b = fp.ExecutionConstraints(LONG_MS, memory_limit_bytes=1024 * 1024).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(swallow)
    assert ended(b) is Ending.MEMORY_SWALLOWED
    assert info.value.interrupted is False and info.value.interruptible is False


@pytest.mark.parametrize("ending, due, interrupted, interruptible", [
    (Ending.EXPIRED, None, False, None),
    (Ending.CHECKED, None, False, None),
    (Ending.RAISED, None, False, None),
    (Ending.INTERRUPTED, 1_000, True, True),          # stopped right at its due time
    (Ending.INTERRUPTED, -10**10, True, False),       # 10 s after it: a blocking C call
    (Ending.MEMORY_REFUSED, None, True, True),
    (Ending.MEMORY_STOPPED, None, True, False),
    (Ending.MEMORY_SWALLOWED, None, False, False),
    (Ending.LATE, None, False, None),
    (Ending.LATE, 1_000, False, True),
])
def test_the_flags_of_a_violation_follow_from_its_ending(ending, due, interrupted,
                                                         interruptible):
    from fastpath.errors import ConstraintViolationType

    v = _outcome.violation([ConstraintViolationType.TIMEOUT_EXCEEDED], None, ending,
                           1_000, due)
    assert (v.interrupted, v.interruptible) == (interrupted, interruptible)


def test_only_the_budgets_own_endings_are_violations():
    assert [e for e in Ending if _outcome.is_violation(e)] == [
        Ending.EXPIRED, Ending.INTERRUPTED, Ending.MEMORY_REFUSED, Ending.MEMORY_STOPPED,
        Ending.MEMORY_SWALLOWED, Ending.LATE]


def test_the_audit_outcome_names_are_the_enforcers():
    from fastpath.audit import AUDIT_OUTCOMES

    assert sorted(_outcome.AUDIT_OUTCOME.values()) == sorted(AUDIT_OUTCOMES)
