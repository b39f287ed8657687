"""fastpath.otel.instrument with the OpenTelemetry SDK's in-memory exporter and reader."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fastpath import otel


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.instrumentations = []

    def instrument(self, enforcer, **kwargs):
        inst = otel.instrument(enforcer, tracer_provider=self.tracer_provider,
                               meter_provider=self.meter_provider, **kwargs)
        self.instrumentations.append(inst)
        return inst

    def spans(self, name=otel.SPAN_NAME):
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def points(self, metric_name):
        """{frozenset(attributes): value} of one observable counter."""
        out = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == metric_name:
                        for p in metric.data.data_points:
                            out[frozenset(p.attributes.items())] = p.value
        return out


@pytest.fixture
def telemetry():
    t = Telemetry()
    yield t
    for inst in t.instrumentations:
        inst.uninstrument()
    t.meter_provider.shutdown()
    t.tracer_provider.shutdown()


# The profiles' budget: the calls that must fit (abs, a flaky call's retries)
# share these rule types with the calls that overrun it (a LATE sleep), so it
# is seconds, which no scheduler delay eats; the overrunning calls pay for it.
TIGHT_MS = 2000
LATE = 2.05


def profiles(fp):
    C = fp.ExecutionConstraints
    return dict(fast=C(TIGHT_MS), semantic=C(TIGHT_MS, fail_closed_on_timeout=False,
                                             max_retries=2, retry_backoff_ms=1),
                wasm_hook=C(TIGHT_MS), observational=C(TIGHT_MS, sampling_rate=0.0,
                                                       fail_closed_on_timeout=False))


def enforcer(fp, **kwargs):
    return fp.ConstraintEnforcer.with_constraints(**profiles(fp), preempt=False,
                                                  audit_sink=lambda event: None, **kwargs)


def test_a_violated_call_is_a_span_under_the_callers_span(fp, telemetry):
    e = enforcer(fp)
    telemetry.instrument(e)
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request") as parent:
        e.execute_with_constraints(fp.RuleType.FAST, abs, -1)           # no span
        rule = e.constrained(fp.RuleType.FAST, rule_id="deny-ua")(time.sleep)
        t0 = time.time_ns()
        with pytest.raises(fp.ConstraintViolation):
            rule(LATE)
        t1 = time.time_ns()
    (span,) = telemetry.spans()
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    a = span.attributes
    assert a["fastpath.rule.id"] == "deny-ua" and a["fastpath.rule.type"] == "fast"
    assert a["fastpath.outcome"] == "deny"
    assert a["fastpath.violations"] == ("timeout_exceeded",)
    assert a["fastpath.elapsed_ns"] >= LATE * 1e9
    assert a["fastpath.limit.max_exec_ms"] == TIGHT_MS
    assert {"fastpath.cpu_time_us", "fastpath.memory_used_bytes",
            "fastpath.interrupted"} <= set(a)
    assert a["error.type"] == "ConstraintViolation"
    assert span.status.status_code is StatusCode.ERROR
    # The span covers the call: it starts and ends within the caller's bracket.
    assert t0 - 2_000_000 <= span.start_time and span.end_time <= t1 + 1_000
    assert span.end_time - span.start_time == a["fastpath.elapsed_ns"]


def test_a_fallback_is_a_span_with_status_unset(fp, telemetry):
    e = enforcer(fp)
    telemetry.instrument(e)
    e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE)
    (span,) = telemetry.spans()
    assert span.attributes["fastpath.outcome"] == "fallback"
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None


def test_violations_mode_adds_nothing_to_calls_within_limits(fp, telemetry):
    e = enforcer(fp)
    telemetry.instrument(e)
    assert "execute_with_constraints" not in vars(e) and "_execute_as" not in vars(e)
    for i in range(100):
        e.execute_with_constraints(fp.RuleType.FAST, abs, -i)
    assert telemetry.spans() == []


def test_spans_all_traces_every_call_with_its_outcome(fp, telemetry):
    e = enforcer(fp, fallbacks={fp.RuleType.SEMANTIC: "fb"})
    decorated = e.constrained(fp.RuleType.FAST, rule_id="ok-rule")(abs)   # before instrument
    telemetry.instrument(e, spans="all")
    tracer = telemetry.tracer_provider.get_tracer("app")
    inner = []

    def calls_a_child_span():
        with tracer.start_as_current_span("inside"):
            inner.append(1)

    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("again")
        return "done"

    assert decorated(-3) == 3
    e.execute_with_constraints(fp.RuleType.FAST, calls_a_child_span)
    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, flaky) == "done"
    assert e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, abs, 1) is None
    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE) == "fb"
    with pytest.raises(fp.ConstraintViolation):
        e.execute_with_constraints(fp.RuleType.FAST, time.sleep, LATE)
    with pytest.raises(KeyError):
        e.execute_with_constraints(fp.RuleType.WASM_HOOK, {}.__getitem__, "x")
    spans = telemetry.spans()
    here = "test_spans_all_traces_every_call_with_its_outcome.<locals>"
    got = [(s.attributes["fastpath.rule.id"], s.attributes["fastpath.outcome"],
            s.status.status_code) for s in spans]
    assert got == [
        ("ok-rule", "ok", StatusCode.UNSET),
        (f"{here}.calls_a_child_span", "ok", StatusCode.UNSET),
        (f"{here}.flaky", "ok", StatusCode.UNSET),
        ("abs", "sampled_out", StatusCode.UNSET),
        ("sleep", "fallback", StatusCode.UNSET),
        ("sleep", "deny", StatusCode.ERROR),
        ("dict.__getitem__", "error", StatusCode.ERROR),
    ]
    assert spans[2].attributes["fastpath.attempts"] == 3
    assert spans[4].attributes["fastpath.elapsed_ns"] >= LATE * 1e9
    assert spans[6].attributes["error.type"] == "KeyError"
    assert [ev.name for ev in spans[6].events] == ["exception"]
    (child,) = telemetry.spans("inside")
    assert child.parent.span_id == spans[1].context.span_id
    # The metrics still count every call, and audit ids are the functions' names.
    assert e.metrics()[fp.RuleType.FAST]["calls"] == 3
    assert set(e.audit_metrics()["rules"][fp.RuleType.SEMANTIC]) == {"sleep"}


def test_spans_none_makes_no_span_but_keeps_the_instruments(fp, telemetry):
    e = enforcer(fp)
    telemetry.instrument(e, spans="none")
    e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE)
    assert telemetry.spans() == []
    calls = telemetry.points("fastpath.calls")
    assert calls[frozenset({"fastpath.rule.type": "semantic",
                            "fastpath.outcome": "fallback"}.items())] == 1


def test_observable_counters_read_the_enforcer_at_collection(fp, telemetry):
    e = enforcer(fp)
    telemetry.instrument(e)
    for i in range(20):
        e.execute_with_constraints(fp.RuleType.FAST, abs, -i)
    for _ in range(4):
        e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, abs, 1)
    e.constrained(fp.RuleType.SEMANTIC, rule_id="slow")(time.sleep)(LATE)
    calls = telemetry.points("fastpath.calls")

    def key(**attrs):
        return frozenset({f"fastpath.{k.replace('_', '.', 1) if k == 'rule_type' else k}": v
                          for k, v in attrs.items()}.items())

    assert calls[key(rule_type="fast", outcome="ok")] == 20
    assert calls[key(rule_type="observational", outcome="sampled_out")] == 4
    assert calls[key(rule_type="semantic", outcome="fallback")] == 1
    violations = telemetry.points("fastpath.violations")
    assert violations[frozenset({"fastpath.rule.type": "semantic",
                                 "fastpath.violation.kind": "timeout_exceeded"}.items())] == 1
    per_rule = telemetry.points("fastpath.rule.violated_calls")
    assert per_rule[frozenset({"fastpath.rule.id": "slow", "fastpath.rule.type": "semantic",
                               "fastpath.outcome": "fallback"}.items())] == 1
    assert telemetry.points("fastpath.audit.events") == {frozenset(): 1}
    assert telemetry.points("fastpath.retries")[
        frozenset({"fastpath.rule.type": "fast"}.items())] == 0


def test_two_enforcers_on_one_meter_are_added_up(fp, telemetry):
    first, second = enforcer(fp), enforcer(fp)
    telemetry.instrument(first, spans="none")
    telemetry.instrument(second, spans="none")
    first.execute_with_constraints(fp.RuleType.FAST, abs, 1)
    second.execute_with_constraints(fp.RuleType.FAST, abs, 1)
    calls = telemetry.points("fastpath.calls")
    assert calls[frozenset({"fastpath.rule.type": "fast", "fastpath.outcome": "ok"}.items())] == 2


def test_uninstrument_removes_the_hook_and_the_wrappers(fp, telemetry):
    e = enforcer(fp)
    before = e.constrained(fp.RuleType.FAST, rule_id="before")(abs)
    inst = telemetry.instrument(e, spans="all")
    during = e.constrained(fp.RuleType.FAST, rule_id="during")(abs)
    before(1), during(1)
    assert [s.attributes["fastpath.rule.id"] for s in telemetry.spans()] == ["before", "during"]
    telemetry.exporter.clear()
    assert "execute_with_constraints" in vars(e)
    with pytest.raises(fp.InvalidConfiguration, match="already instrumented"):
        telemetry.instrument(e)
    inst.uninstrument()
    assert "execute_with_constraints" not in vars(e) and e._audit_hooks == ()
    e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE)
    before(1), during(1)
    assert telemetry.spans() == []
    again = telemetry.instrument(e)                       # allowed once removed
    e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE)
    assert len(telemetry.spans()) == 1
    calls = telemetry.points("fastpath.calls")
    assert calls[frozenset({"fastpath.rule.type": "semantic",
                            "fastpath.outcome": "fallback"}.items())] == 2
    again.uninstrument()
    assert telemetry.points("fastpath.calls") == {}


def test_a_raising_exporter_never_changes_the_outcome(fp, telemetry):
    e = enforcer(fp, fallbacks={fp.RuleType.SEMANTIC: "fb"})
    inst = telemetry.instrument(e)
    inst.tracer = None                                   # the hook now raises
    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE) == "fb"
    assert e.audit_failures == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(spans="some"), "spans"),
    (dict(max_rule_ids=-1), "max_rule_ids"),
])
def test_bad_arguments_are_invalid_configuration(fp, kwargs, match):
    with pytest.raises(fp.InvalidConfiguration, match=match):
        otel.instrument(enforcer(fp), **kwargs)
    with pytest.raises(fp.InvalidConfiguration, match="ConstraintEnforcer"):
        otel.instrument(object())


def test_an_async_violated_call_is_a_span_under_the_tasks_span(fp, telemetry):
    import asyncio

    e = enforcer(fp)
    telemetry.instrument(e)
    tracer = telemetry.tracer_provider.get_tracer("app")

    async def slow():
        await asyncio.sleep(LATE)

    async def main():
        with tracer.start_as_current_span("request") as parent:
            await e.execute_async(fp.RuleType.SEMANTIC, slow)
            return parent

    parent = asyncio.run(main())
    (span,) = telemetry.spans()
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes["fastpath.outcome"] == "fallback"
    assert span.attributes["fastpath.violations"] == ("timeout_exceeded",)
