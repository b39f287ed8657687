"""Audit storms: the rate-limited default sink, per-rule-id counts, metrics(json=True)."""

from __future__ import annotations

import functools
import gc
import json
import logging
import subprocess
import sys
import textwrap

import pytest

from fastpath.audit import OTHER_RULE_ID, AuditLogSink, RuleAuditCounts


def burn() -> int:
    """Uses some CPU: a violation under cpu_shares=0 (no CPU allowed at all)."""
    return sum(range(2000))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cpu_storm_enforcer(fp, **kwargs):
    """Every call of burn() is a CPU_EXCEEDED violation, returned as the fallback."""
    C = fp.ExecutionConstraints
    violating = C(1000, cpu_shares=0, fail_closed_on_timeout=False)
    return fp.ConstraintEnforcer.with_constraints(
        violating, violating, violating, violating, preempt=False,
        fallbacks={fp.RuleType.SEMANTIC: "fb"}, **kwargs)


@pytest.fixture(autouse=True)
def _collect_earlier_sinks():
    """An AuditLogSink that is garbage writes its pending summary when it is
    collected (weakref.finalize): collect the earlier tests' sinks now, so none
    writes into this test's log capture (seen on 3.13, whose collections come at
    other moments than 3.11's)."""
    gc.collect()


def audit_records(caplog):
    return [r for r in caplog.records if r.name == "fastpath.audit"]


class BurnCallable:
    def __call__(self) -> int:
        return burn()


def test_the_default_rule_id_does_not_depend_on_the_callables_address(fp):
    """A fresh callable instance per call is one rule (its class), not one rule
    per address: the id keys the rate limit and the per-rule audit rows."""
    events = []
    e = cpu_storm_enforcer(fp, audit_sink=events.append)
    keep = [BurnCallable() for _ in range(20)]     # alive together: 20 addresses
    for callable_ in keep:
        e.execute_with_constraints(fp.RuleType.SEMANTIC, callable_)
    e.execute_with_constraints(fp.RuleType.SEMANTIC, functools.partial(burn))
    e.execute_with_constraints(fp.RuleType.SEMANTIC, burn)
    assert [ev.rule_id for ev in events] == ["BurnCallable"] * 20 + ["burn", "burn"]
    rows = e.audit_metrics()["rules"][fp.RuleType.SEMANTIC]
    assert rows["BurnCallable"]["events"] == 20 and rows["burn"]["events"] == 2


def test_a_storm_of_1000_violations_logs_at_most_the_rate_then_one_summary(fp, caplog):
    clock = FakeClock()
    sink = AuditLogSink(10, clock=clock)
    e = cpu_storm_enforcer(fp, audit_sink=sink)
    storm = e.constrained(fp.RuleType.SEMANTIC, rule_id="storm")(burn)
    other = e.constrained(fp.RuleType.SEMANTIC, rule_id="other-rule")(burn)
    with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
        for _ in range(1000):
            assert storm() == "fb"
        for _ in range(3):
            other()                         # a second rule id has its own allowance
        assert len(audit_records(caplog)) == 13
        clock.now += 1.0                    # the window ends: the next event summarises it
        storm()
    records = audit_records(caplog)
    summaries = [r for r in records if r.event_type == "audit_suppressed"]
    assert len(summaries) == 1
    (summary,) = summaries
    assert summary.rule_id == "storm" and summary.suppressed == 990 and summary.logged == 10
    assert "suppressed 990 constraint violation events of semantic rule storm" in \
        summary.getMessage()
    events = [r for r in records if r.event_type == "constraint_violation"]
    assert [r.rule_id for r in events].count("storm") == 11
    assert [r.rule_id for r in events].count("other-rule") == 3
    # Every event was still counted.
    m = e.metrics()[fp.RuleType.SEMANTIC]
    assert m["fail_open"] == 1004
    assert m["violations"][fp.ConstraintViolationType.CPU_EXCEEDED] == 1004
    audit = e.audit_metrics()
    assert audit["events"] == 1004
    assert (audit["logged"], audit["suppressed"], audit["summaries"]) == (14, 990, 1)
    rows = audit["rules"][fp.RuleType.SEMANTIC]
    assert rows["storm"]["events"] == 1001 and rows["other-rule"]["events"] == 3
    assert rows["storm"]["outcomes"] == {"deny": 0, "fallback": 1001, "error": 0}
    assert rows["storm"]["violations"][fp.ConstraintViolationType.CPU_EXCEEDED] == 1001


def test_the_default_sink_under_a_real_clock_counts_every_event(fp, caplog):
    e = cpu_storm_enforcer(fp)                      # default sink, audit_rate_per_s=10
    assert isinstance(e.audit_sink, AuditLogSink) and e.audit_sink.rate_per_s == 10
    rule = e.constrained(fp.RuleType.SEMANTIC, rule_id="storm")(burn)
    with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
        for _ in range(1000):
            rule()
        e.audit_sink.flush()
    records = audit_records(caplog)
    events = [r for r in records if r.event_type == "constraint_violation"]
    summaries = [r for r in records if r.event_type == "audit_suppressed"]
    sink = e.audit_sink
    assert sink.logged == len(events) and sink.logged + sink.suppressed == 1000
    # At most 10 a window, and a summary for each window that left events out.
    assert len(events) <= 10 * (len(summaries) + 1)
    assert sum(r.suppressed for r in summaries) == sink.suppressed
    assert len(records) < 100


def test_a_custom_sink_gets_every_event(fp):
    got = []
    e = cpu_storm_enforcer(fp, audit_sink=got.append)
    for _ in range(1000):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, burn)
    assert len(got) == 1000
    audit = e.audit_metrics()
    assert audit["events"] == 1000
    assert audit["logged"] is None and audit["suppressed"] is None
    assert audit["rules"][fp.RuleType.SEMANTIC]["burn"]["events"] == 1000


def test_the_log_line_carries_the_figures_and_the_limits(fp, caplog):
    C = fp.ExecutionConstraints
    slow = C(100, cpu_shares=50, memory_limit_bytes=4096, fail_closed_on_timeout=False)
    e = fp.ConstraintEnforcer.with_constraints(slow, slow, slow, slow, preempt=False)
    import time

    with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, 0.15)
    (record,) = audit_records(caplog)
    message = record.getMessage()
    assert message.startswith("constraint violation: semantic rule sleep TIMEOUT_EXCEEDED "
                              "(fallback)")
    assert "elapsed 1" in message and " ms of 100 ms" in message
    assert "us of 50,000 us" in message            # 100 ms * 50 % of CPU
    assert "B of 4,096 B" in message
    assert record.max_exec_ms == 100 and record.cpu_limit_us == 50_000
    assert record.memory_limit_bytes == 4096
    assert record.elapsed_ns >= 150_000_000


def test_no_rate_limit_logs_every_event_and_zero_logs_only_summaries(fp, caplog):
    for rate, expected_events in ((None, 50), (float("inf"), 50), (0, 0)):
        caplog.clear()
        clock = FakeClock()
        e = cpu_storm_enforcer(fp, audit_sink=AuditLogSink(rate, clock=clock))
        with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
            for _ in range(50):
                e.execute_with_constraints(fp.RuleType.SEMANTIC, burn)
            e.audit_sink.flush()
        records = audit_records(caplog)
        events = [r for r in records if r.event_type == "constraint_violation"]
        assert len(events) == expected_events, rate
        if rate == 0:
            (summary,) = records
            assert summary.suppressed == 50


def test_a_rate_below_one_per_second_writes_one_event_per_longer_window(caplog):
    clock = FakeClock()
    sink = AuditLogSink(0.5, clock=clock)                # one event per 2 s
    event = _event()
    with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
        for _ in range(8):                           # 4 s, an event every 0.5 s
            sink(event)
            clock.now += 0.5
    records = audit_records(caplog)
    assert [r.event_type for r in records] == [
        "constraint_violation", "audit_suppressed", "constraint_violation"]
    assert records[1].suppressed == 3 and records[1].window_s == 2.0
    assert sink.suppressed == 6 and sink.logged == 2


@pytest.mark.parametrize("rate", [-1, float("nan"), "10", True])
def test_a_bad_audit_rate_is_an_invalid_configuration(fp, rate):
    with pytest.raises(fp.InvalidConfiguration, match="audit_rate_per_s"):
        fp.ConstraintEnforcer(audit_rate_per_s=rate)
    with pytest.raises(fp.InvalidConfiguration, match="audit_rate_per_s"):
        fp.ConstraintEnforcer(audit_rate_per_s=rate, audit_sink=print)


def test_per_rule_id_counts_are_bounded():
    counts = RuleAuditCounts(max_rule_ids=2)
    for rule_id in ("a", "b", "c", "d", "a"):
        counts.record(_event(rule_id))
    rows = {(row[1]): row[2] for row in counts.rows()}
    assert rows == {"a": 2, "b": 1, OTHER_RULE_ID: 2}
    assert counts.events == 5
    counts.reset()
    assert counts.rows() == [] and counts.events == 0


def test_metrics_json_has_string_keys_and_dumps(fp):
    e = cpu_storm_enforcer(fp, audit_sink=lambda event: None)
    e.execute_with_constraints(fp.RuleType.SEMANTIC, burn)
    plain = e.metrics()
    data = e.metrics(json=True)
    assert set(data) == {"fast", "semantic", "wasm_hook", "observational"}
    assert data["semantic"]["violations"]["CPU_EXCEEDED"] == 1
    assert data["semantic"]["calls"] == plain[fp.RuleType.SEMANTIC]["calls"] == 1
    assert json.loads(json.dumps(data)) == data
    audit = e.audit_metrics(json=True)
    assert json.loads(json.dumps(audit)) == audit
    assert audit["rules"]["semantic"]["burn"]["violations"]["CPU_EXCEEDED"] == 1
    e.reset_metrics()
    assert e.audit_metrics()["events"] == 0 and e.audit_metrics()["rules"] == {}


def test_the_package_logger_follows_the_logging_howto_for_libraries():
    code = textwrap.dedent("""
        import logging, fastpath
        assert logging.getLogger().handlers == [], logging.getLogger().handlers
        handlers = logging.getLogger("fastpath").handlers
        assert [type(h) for h in handlers] == [logging.NullHandler], handlers
        assert logging.getLogger("fastpath.audit").handlers == []
        assert "prometheus_client" not in __import__("sys").modules
        assert "opentelemetry" not in __import__("sys").modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_suppressed_events_are_summarised_at_interpreter_exit():
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(stream=sys.stdout, format="%(message)s")
        from fastpath import ConstraintEnforcer, ExecutionConstraints, RuleType
        c = ExecutionConstraints(1000, cpu_shares=0, fail_closed_on_timeout=False)
        e = ConstraintEnforcer.with_constraints(c, c, c, c, preempt=False, audit_rate_per_s=2)
        for _ in range(20):
            e.execute_with_constraints(RuleType.SEMANTIC, sum, range(2000))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[-1].startswith("suppressed 18 constraint violation events of semantic rule sum")
    assert len(out) == 3


def _event(rule_id: str = "r"):
    import datetime as dt

    from fastpath import ConstraintViolationType, RuleType
    from fastpath.enforcer import AuditEvent

    return AuditEvent(event_type="constraint_violation", rule_type=RuleType.FAST,
                      rule_id=rule_id, violations=(ConstraintViolationType.TIMEOUT_EXCEEDED,),
                      stats=None, timestamp=dt.datetime.now(dt.timezone.utc), outcome="deny",
                      interrupted=False)


def test_each_rule_id_gets_its_own_window_and_summary(caplog):
    clock = FakeClock()
    sink = AuditLogSink(2, clock=clock)
    with caplog.at_level(logging.WARNING, logger="fastpath.audit"):
        for _ in range(5):
            for i in range(50):
                sink(_event(f"rule-{i}"))
        clock.now += 1.0
        sink(_event("rule-0"))              # sweeps every ended window
    summaries = [r for r in audit_records(caplog) if r.event_type == "audit_suppressed"]
    assert sorted(r.rule_id for r in summaries) == sorted(f"rule-{i}" for i in range(50))
    assert all(r.suppressed == 3 for r in summaries)
    assert sink.logged == 101 and sink.suppressed == 150 and sink.summaries == 50
