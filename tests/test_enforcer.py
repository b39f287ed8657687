"""ConstraintEnforcer: pipeline, failure policy, retries, audit, decorator, threads."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import pytest

from tests.threads import run_threads


def spin(seconds: float = 5.0) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "ran to the end"


class Sink:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)


# A call that sleeps LATE overruns the small profiles below.  A call that must
# fit runs under roomy_profiles: a minute, which no scheduler delay on a loaded
# machine can eat (tight budgets are only for "this call exceeded" facts).
LATE = 0.15
ROOMY_MS = 60_000


def small_profiles(fp, **changes):
    """The presets' failure policies with 100 ms budgets, so late calls are quick to make."""
    C = fp.ExecutionConstraints
    profiles = dict(
        fast=C(100, fail_closed_on_timeout=True),
        semantic=C(100, fail_closed_on_timeout=False, max_retries=2, retry_backoff_ms=1),
        wasm_hook=C(100, fail_closed_on_timeout=True),
        observational=C(100, fail_closed_on_timeout=False),
    )
    profiles.update(changes)
    return profiles


def roomy_profiles(fp, **changes):
    """The presets' failure policies with one-minute budgets, for calls that must fit."""
    return {name: c.replace(max_exec_ms=ROOMY_MS)
            for name, c in small_profiles(fp, **changes).items()}


def test_default_profiles_are_the_presets(fp):
    e = fp.ConstraintEnforcer()
    C = fp.ExecutionConstraints
    assert e.constraints_for(fp.RuleType.FAST) == C.fast_rule()
    assert e.constraints_for(fp.RuleType.SEMANTIC) == C.semantic_rule()
    assert e.constraints_for(fp.RuleType.WASM_HOOK) == C.wasm_hook(10)
    assert e.constraints_for(fp.RuleType.OBSERVATIONAL) == C.observational(1.0)


def test_with_constraints_validates_every_profile(fp):
    p = small_profiles(fp)
    e = fp.ConstraintEnforcer.with_constraints(**p)
    assert e.constraints_for(fp.RuleType.SEMANTIC) == p["semantic"]
    for name in p:
        bad = dict(p, **{name: {"max_exec_ms": 5}})
        with pytest.raises(fp.InvalidConfiguration, match=name):
            fp.ConstraintEnforcer.with_constraints(**bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(audit_sink=42), "audit_sink"),
    (dict(fallbacks={"fast": 1}), "fallbacks"),
    (dict(fallbacks=[1]), "fallbacks"),
    (dict(transient_errors=(KeyboardInterrupt,)), "transient_errors"),
    (dict(transient_errors=("ConnectionError",)), "transient_errors"),
    (dict(transient_errors=[ValueError]), "transient_errors"),
    (dict(preempt="yes"), "preempt"),
])
def test_constructor_rejects_bad_configuration(fp, kwargs, match):
    with pytest.raises(fp.InvalidConfiguration, match=match):
        fp.ConstraintEnforcer(**kwargs)


def test_unknown_rule_type_is_an_invalid_configuration(fp):
    e = fp.ConstraintEnforcer()
    with pytest.raises(fp.InvalidConfiguration, match="RuleType"):
        e.execute_with_constraints("fast", lambda: 1)
    with pytest.raises(fp.InvalidConfiguration, match="RuleType"):
        e.constraints_for(0)
    with pytest.raises(TypeError):
        e.execute_with_constraints(fp.RuleType.FAST)


def test_a_call_within_limits_returns_its_value(fp):
    # The presets' 5 ms fast_rule() is a "fits" bound a loaded machine can miss
    # (8.6 ms seen): the calls that must fit get a minute.
    e = fp.ConstraintEnforcer.with_constraints(**roomy_profiles(fp), audit_sink=Sink())
    assert e.execute_with_constraints(fp.RuleType.FAST, lambda a, *, b: a + b, 1, b=2) == 3
    # keywords named like the method's own parameters reach fn
    assert e.execute_with_constraints(fp.RuleType.FAST, dict, fn=1, rule_type=2) == {
        "fn": 1, "rule_type": 2}
    m = e.metrics()[fp.RuleType.FAST]
    assert (m["calls"], m["executed"], m["fail_open"], m["fail_closed"]) == (2, 2, 0, 0)
    assert e._audit_sink.events == []


def test_fn_exceptions_propagate_unchanged(fp):
    e = fp.ConstraintEnforcer.with_constraints(**roomy_profiles(fp))
    err = KeyError("mine")

    def fail():
        raise err

    for rule_type in fp.RuleType:
        with pytest.raises(KeyError) as info:
            e.execute_with_constraints(rule_type, fail)
        assert info.value is err
    assert e.metrics()[fp.RuleType.FAST]["errors"] == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_never_retried_or_swallowed(fp, exc):
    e = fp.ConstraintEnforcer.with_constraints(**roomy_profiles(fp),
                                               transient_errors=(Exception,))
    calls = []

    def fail():
        calls.append(1)
        raise exc()

    with pytest.raises(exc):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, fail)
    assert calls == [1]


def test_sampled_out_calls_return_the_fallback_are_counted_and_not_audited(fp):
    sink = Sink()
    p = small_profiles(fp, observational=fp.ExecutionConstraints.observational(0.0))
    e = fp.ConstraintEnforcer.with_constraints(**p, audit_sink=sink,
                                               fallbacks={fp.RuleType.OBSERVATIONAL: "skipped"})
    ran = []
    for _ in range(10):
        assert e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, ran.append, 1) == "skipped"
    assert ran == []
    m = e.metrics()[fp.RuleType.OBSERVATIONAL]
    assert (m["calls"], m["executed"], m["sampled_out"]) == (10, 0, 10)
    assert m["violations"][fp.ConstraintViolationType.SAMPLED_OUT] == 10
    assert sink.events == []


OUTCOMES = ["ok", "late", "error"]


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("with_fallback", [False, True])
@pytest.mark.parametrize("rule_name", ["FAST", "SEMANTIC", "WASM_HOOK", "OBSERVATIONAL"])
def test_failure_policy_matrix(fp, rule_name, outcome, with_fallback):
    rule_type = fp.RuleType[rule_name]
    sink = Sink()
    fallbacks = {rule_type: "fallback"} if with_fallback else None
    # Only the late call runs under a tight budget; ok and error calls must fit.
    profiles = small_profiles(fp) if outcome == "late" else roomy_profiles(fp)
    e = fp.ConstraintEnforcer.with_constraints(**profiles, audit_sink=sink,
                                               fallbacks=fallbacks, preempt=False)
    fail_closed = e.constraints_for(rule_type).fail_closed_on_timeout
    expected_fallback = "fallback" if with_fallback else None

    def rule():
        if outcome == "late":
            time.sleep(LATE)
        if outcome == "error":
            raise ValueError("rule bug")
        return "result"

    m_key = None
    if outcome == "ok":
        assert e.execute_with_constraints(rule_type, rule) == "result"
        assert sink.events == []
    elif outcome == "error":
        with pytest.raises(ValueError):
            e.execute_with_constraints(rule_type, rule)
        assert sink.events == []
        m_key = "errors"
    elif fail_closed:
        with pytest.raises(fp.ConstraintViolation) as info:
            e.execute_with_constraints(rule_type, rule)
        assert info.value.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
        m_key = "fail_closed"
    else:
        assert e.execute_with_constraints(rule_type, rule) == expected_fallback
        m_key = "fail_open"
    m = e.metrics()[rule_type]
    assert m["calls"] == m["executed"] == 1
    for key in ("fail_open", "fail_closed", "errors"):
        assert m[key] == (1 if key == m_key else 0), key
    if outcome == "late":
        assert len(sink.events) == 1
        ev = sink.events[0]
        assert ev.outcome == ("deny" if fail_closed else "fallback")
        assert ev.violations == (fp.ConstraintViolationType.TIMEOUT_EXCEEDED,)
        assert m["violations"][fp.ConstraintViolationType.TIMEOUT_EXCEEDED] == 1


def test_audit_event_fields(fp):
    sink = Sink()
    e = fp.ConstraintEnforcer.with_constraints(**small_profiles(fp), audit_sink=sink, preempt=False)
    with pytest.raises(fp.ConstraintViolation):
        e.execute_with_constraints(fp.RuleType.FAST, time.sleep, LATE)
    (ev,) = sink.events
    assert isinstance(ev, fp.AuditEvent)
    assert ev.event_type == "constraint_violation"
    assert ev.rule_type is fp.RuleType.FAST
    assert ev.rule_id == "sleep"
    assert ev.violations == (fp.ConstraintViolationType.TIMEOUT_EXCEEDED,)
    assert ev.stats.elapsed_ns >= 150_000_000
    assert ev.timestamp.tzinfo is dt.timezone.utc
    assert abs((dt.datetime.now(dt.timezone.utc) - ev.timestamp).total_seconds()) < 60
    with pytest.raises(AttributeError):
        ev.rule_id = "other"


def test_default_sink_logs_to_fastpath_audit_with_structured_fields(fp, caplog):
    e = fp.ConstraintEnforcer.with_constraints(**small_profiles(fp), preempt=False)
    with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
        assert e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE) is None
    (record,) = [r for r in caplog.records if r.name == "fastpath.audit"]
    assert record.levelno == logging.WARNING
    assert record.event_type == "constraint_violation"
    assert record.rule_type == "semantic"
    assert record.violations == ["TIMEOUT_EXCEEDED"]
    assert record.outcome == "fallback"
    assert record.elapsed_ns >= 150_000_000
    assert "TIMEOUT_EXCEEDED" in record.getMessage()


def test_a_raising_sink_never_changes_the_outcome_and_is_reported_once(fp, caplog):
    def broken(event):
        raise RuntimeError("sink down")

    e = fp.ConstraintEnforcer.with_constraints(**small_profiles(fp), audit_sink=broken,
                                               fallbacks={fp.RuleType.SEMANTIC: "fb"},
                                               preempt=False)
    with caplog.at_level(logging.ERROR, logger="fastpath"):
        for _ in range(3):
            assert e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE) == "fb"
        with pytest.raises(fp.ConstraintViolation):
            e.execute_with_constraints(fp.RuleType.FAST, time.sleep, LATE)
    reports = [r for r in caplog.records if r.name == "fastpath" and "audit sink" in r.getMessage()]
    assert len(reports) == 1 and reports[0].exc_info is not None
    assert e.audit_failures == 4


def test_transient_errors_are_retried_inside_the_budget(fp):
    e = fp.ConstraintEnforcer.with_constraints(
        **small_profiles(fp, semantic=fp.ExecutionConstraints(
            ROOMY_MS, fail_closed_on_timeout=False, max_retries=2, retry_backoff_ms=1)))
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "third time"

    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, flaky) == "third time"
    assert len(attempts) == 3
    m = e.metrics()[fp.RuleType.SEMANTIC]
    assert (m["executed"], m["retries"], m["errors"]) == (1, 2, 0)

    attempts.clear()

    def always_down():
        attempts.append(1)
        raise TimeoutError("down")

    with pytest.raises(TimeoutError):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, always_down)
    assert len(attempts) == 3          # max_retries=2: at most three calls


def test_non_transient_errors_and_profiles_without_retries_are_not_retried(fp):
    e = fp.ConstraintEnforcer.with_constraints(**roomy_profiles(fp))   # no retries for FAST
    attempts = []

    def bug():
        attempts.append(1)
        raise ValueError("bug")

    with pytest.raises(ValueError):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, bug)

    def down():
        attempts.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        e.execute_with_constraints(fp.RuleType.FAST, down)   # fast_rule: max_retries None
    assert len(attempts) == 2


def test_no_retry_is_started_when_the_budget_cannot_cover_the_backoff(fp):
    e = fp.ConstraintEnforcer.with_constraints(
        **small_profiles(fp, semantic=fp.ExecutionConstraints(
            20, fail_closed_on_timeout=False, max_retries=5, retry_backoff_ms=50)))
    attempts = []

    def down():
        attempts.append(1)
        raise ConnectionError("down")

    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, down)
    assert attempts == [1]
    assert time.monotonic() - t0 < 0.05


def test_custom_transient_errors(fp):
    class Flaky(Exception):
        pass

    e = fp.ConstraintEnforcer.with_constraints(**roomy_profiles(fp),
                                               transient_errors=(Flaky,))
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise Flaky()
        return "ok"

    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, flaky) == "ok"
    with pytest.raises(ConnectionError):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, _raise, ConnectionError())


def _raise(exc):
    raise exc


def test_decorator_keeps_metadata_and_carries_the_rule_id(fp):
    sink = Sink()
    # FAST calls must fit (a minute); WASM_HOOK and SEMANTIC (100 ms) calls overrun.
    e = fp.ConstraintEnforcer.with_constraints(
        **small_profiles(fp, fast=fp.ExecutionConstraints(ROOMY_MS, fail_closed_on_timeout=True)),
        audit_sink=sink, preempt=False)

    @e.constrained(fp.RuleType.FAST, rule_id="deny-bad-ua")
    def deny_bad_ua(ua: str, *, strict: bool = False) -> bool:
        """Deny scanners."""
        if ua == "slow":
            time.sleep(LATE)
        return ua.startswith("sqlmap") or strict

    assert deny_bad_ua.__name__ == "deny_bad_ua"
    assert deny_bad_ua.__doc__ == "Deny scanners."
    assert deny_bad_ua.__wrapped__("sqlmap/1.0") is True
    assert deny_bad_ua("curl") is False and deny_bad_ua("curl", strict=True) is True
    assert e.metrics()[fp.RuleType.FAST]["calls"] == 2

    @e.constrained(fp.RuleType.WASM_HOOK, rule_id="deny-bad-ua")
    def deny_slowly(ua: str) -> bool:
        time.sleep(LATE)
        return False

    with pytest.raises(fp.ConstraintViolation):
        deny_slowly("slow")
    assert [ev.rule_id for ev in sink.events] == ["deny-bad-ua"]

    @e.constrained(fp.RuleType.SEMANTIC)
    def unnamed():
        time.sleep(LATE)

    unnamed()
    assert sink.events[-1].rule_id.endswith("unnamed")
    with pytest.raises(fp.InvalidConfiguration):
        e.constrained("FAST")
    with pytest.raises(fp.InvalidConfiguration):
        e.constrained(fp.RuleType.FAST, rule_id=5)


def test_counts_are_exact_under_threads(fp):
    p = small_profiles(fp, observational=fp.ExecutionConstraints(1000, sampling_rate=0.5,
                                                                 fail_closed_on_timeout=False),
                       fast=fp.ExecutionConstraints(1000))
    e = fp.ConstraintEnforcer.with_constraints(**p)
    per_thread = 5_000 if fp.kind == "compiled" else 1_000

    def work():
        for i in range(per_thread):
            e.execute_with_constraints(fp.RuleType.FAST, abs, i)
            e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, abs, i)

    run_threads(work, [()] * 4)
    fast = e.metrics()[fp.RuleType.FAST]
    obs = e.metrics()[fp.RuleType.OBSERVATIONAL]
    assert fast["calls"] == fast["executed"] == 4 * per_thread
    assert obs["calls"] == 4 * per_thread
    assert obs["executed"] + obs["sampled_out"] == 4 * per_thread
    assert obs["sampled_out"] == obs["violations"][fp.ConstraintViolationType.SAMPLED_OUT]
    assert 0 < obs["sampled_out"] < 4 * per_thread


def test_no_lock_is_held_while_a_rule_runs(fp):
    e = fp.ConstraintEnforcer.with_constraints(
        **small_profiles(fp, fast=fp.ExecutionConstraints(10_000)))
    inside = threading.Event()
    release = threading.Event()

    def blocking_rule():
        inside.set()
        release.wait(5)
        return "released"

    box = {}
    t = threading.Thread(target=lambda: box.setdefault(
        "r", e.execute_with_constraints(fp.RuleType.FAST, blocking_rule)))
    t.start()
    assert inside.wait(5)
    # Another thread's calls complete while the first rule is still running.
    for i in range(100):
        assert e.execute_with_constraints(fp.RuleType.FAST, abs, -i) == i
    assert e.metrics()[fp.RuleType.FAST]["calls"] == 101
    release.set()
    t.join(5)
    assert box["r"] == "released"


def test_fail_closed_runaway_is_denied_promptly(fp):
    sink = Sink()
    e = fp.ConstraintEnforcer.with_constraints(
        **small_profiles(fp, fast=fp.ExecutionConstraints(20)), audit_sink=sink)
    t0 = time.monotonic()
    with pytest.raises(fp.ConstraintViolation) as info:
        e.execute_with_constraints(fp.RuleType.FAST, spin)
    assert time.monotonic() - t0 < 5.0 and info.value.interrupted
    assert sink.events[0].interrupted and sink.events[0].outcome == "deny"


def test_fail_open_semantic_runaway_returns_its_fallback_promptly(fp):
    sink = Sink()
    e = fp.ConstraintEnforcer.with_constraints(
        **small_profiles(fp, semantic=fp.ExecutionConstraints(20, fail_closed_on_timeout=False)),
        audit_sink=sink, fallbacks={fp.RuleType.SEMANTIC: "allow"})
    t0 = time.monotonic()
    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, spin) == "allow"
    assert time.monotonic() - t0 < 5.0
    (ev,) = sink.events
    assert ev.interrupted and ev.outcome == "fallback"
    assert ev.stats.elapsed_ns >= 40_000_000     # runaway guard: twice the budget


def test_observational_rules_are_never_interrupted(fp):
    sink = Sink()
    e = fp.ConstraintEnforcer.with_constraints(**small_profiles(fp), audit_sink=sink,
                                               fallbacks={fp.RuleType.OBSERVATIONAL: "fb"})
    assert e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, spin, 0.25) == "fb"
    (ev,) = sink.events
    assert ev.interrupted is False
    assert ev.stats.elapsed_ns >= 250_000_000


def test_an_enforcer_without_preemption_reports_on_return(fp):
    e = fp.ConstraintEnforcer.with_constraints(**small_profiles(fp), preempt=False)
    with pytest.raises(fp.ConstraintViolation) as info:
        e.execute_with_constraints(fp.RuleType.FAST, spin, 0.25)
    assert info.value.interrupted is False
    assert info.value.stats.elapsed_ns >= 250_000_000


def test_metrics_shape_and_reset(fp):
    e = fp.ConstraintEnforcer.with_constraints(**roomy_profiles(fp))
    e.execute_with_constraints(fp.RuleType.WASM_HOOK, abs, -1)
    m = e.metrics()
    assert set(m) == set(fp.RuleType)
    for entry in m.values():
        for key in ("calls", "executed", "sampled_out", "fail_open", "fail_closed"):
            assert isinstance(entry[key], int)
        assert set(entry["violations"]) == {
            fp.ConstraintViolationType.TIMEOUT_EXCEEDED, fp.ConstraintViolationType.MEMORY_EXCEEDED,
            fp.ConstraintViolationType.CPU_EXCEEDED, fp.ConstraintViolationType.SAMPLED_OUT}
    assert m[fp.RuleType.WASM_HOOK]["calls"] == 1
    e.reset_metrics()
    assert all(entry["calls"] == 0 for entry in e.metrics().values())


def test_every_executed_call_is_recorded_in_its_histogram(fp):
    p = small_profiles(fp, observational=fp.ExecutionConstraints(1000, sampling_rate=0.0,
                                                                 fail_closed_on_timeout=False))
    e = fp.ConstraintEnforcer.with_constraints(**p, preempt=False, audit_sink=Sink())
    # The ok call may overrun 100 ms on a loaded machine: then it is recorded as
    # violated, and recorded all the same, which is the fact under test.
    try:
        e.execute_with_constraints(fp.RuleType.FAST, abs, -1)               # ok (or late)
    except fp.ConstraintViolation:
        pass
    with pytest.raises(fp.ConstraintViolation):
        e.execute_with_constraints(fp.RuleType.FAST, time.sleep, LATE)     # violated
    with pytest.raises(ValueError):
        e.execute_with_constraints(fp.RuleType.FAST, _raise, ValueError())  # error
    e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, abs, -1)          # sampled out
    fast = e.metrics()[fp.RuleType.FAST]["latency"]
    assert fast["count"] == 3
    assert fast["max_ns"] >= 150_000_000
    assert e.metrics()[fp.RuleType.OBSERVATIONAL]["latency"]["count"] == 0
    assert e.latency_histogram(fp.RuleType.FAST).count == 3
    e.reset_metrics()
    assert e.metrics()[fp.RuleType.FAST]["latency"]["count"] == 0


def test_four_threads_of_20000_calls_count_exactly(fp):
    p = small_profiles(fp, fast=fp.ExecutionConstraints(10_000),
                       observational=fp.ExecutionConstraints(10_000, sampling_rate=0.25,
                                                             fail_closed_on_timeout=False))
    e = fp.ConstraintEnforcer.with_constraints(**p)
    rules = (fp.RuleType.FAST, fp.RuleType.OBSERVATIONAL)

    def work():
        for i in range(20_000):
            e.execute_with_constraints(rules[i & 1], abs, i)

    run_threads(work, [()] * 4)
    m = e.metrics()
    fast, obs = m[fp.RuleType.FAST], m[fp.RuleType.OBSERVATIONAL]
    assert fast["calls"] == fast["executed"] == fast["latency"]["count"] == 40_000
    assert obs["calls"] == 40_000
    assert obs["executed"] + obs["sampled_out"] == 40_000
    assert obs["latency"]["count"] == obs["executed"]
    assert e.latency_histogram(fp.RuleType.FAST).counts().sum() == 40_000
