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


# -- registered rules and async calls ----------------------------------------------
# A rule of its own with a 5 ms budget: a 50 ms sleep always overruns it (an
# ordering fact), so these tests need no multi-second sleeps.
SHORT_MS = 5
OVERRUN = 0.05


def attrs(span):
    return (span.attributes["fastpath.rule.id"], span.attributes["fastpath.rule.type"],
            span.attributes["fastpath.outcome"])


def test_a_violated_rule_object_call_is_a_span_by_default(fp, telemetry):
    e = enforcer(fp)
    C = fp.ExecutionConstraints
    rule = e.rule("deny-ua", fp.RuleType.FAST, constraints=C(SHORT_MS))
    soft = e.rule("soft", fp.RuleType.SEMANTIC, constraints=C(SHORT_MS,
                                                              fail_closed_on_timeout=False),
                  fallback="fb")
    telemetry.instrument(e)
    assert not set(otel._WRAPPED) & set(vars(e))      # nothing on the per-call path
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request") as parent:
        assert rule(abs, -1) == 1 and rule.run_for("k", abs, -2) == 2      # no span
        with pytest.raises(fp.ConstraintViolation):
            rule(time.sleep, OVERRUN)
        assert soft.run_for("tenant", time.sleep, OVERRUN) == "fb"
    spans = telemetry.spans()
    assert [attrs(s) for s in spans] == [("deny-ua", "fast", "deny"),
                                         ("soft", "semantic", "fallback")]
    for span in spans:
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["fastpath.elapsed_ns"] >= OVERRUN * 1e9
        assert span.attributes["fastpath.limit.max_exec_ms"] == SHORT_MS
    assert spans[0].status.status_code is StatusCode.ERROR
    assert spans[1].status.status_code is StatusCode.UNSET


def test_spans_all_traces_registered_rules_with_refusals(fp, telemetry):
    e = enforcer(fp)
    C = fp.ExecutionConstraints
    tracer = telemetry.tracer_provider.get_tracer("app")
    open_breaker = fp.CircuitBreaker()
    closed_rule = e.rule("closed", fp.RuleType.FAST, breaker=open_breaker)
    soft = e.rule("soft", fp.RuleType.SEMANTIC, fallback="fb", breaker=fp.CircuitBreaker(),
                  quota=fp.Quota(calls=1, per_s=3600))
    short = e.rule("short", fp.RuleType.FAST, constraints=C(SHORT_MS))
    decorated = e.constrained(fp.RuleType.FAST, rule_id="closed")(abs)   # before instrument
    telemetry.instrument(e, spans="all")

    def child():
        with tracer.start_as_current_span("inside"):
            return "child"

    with tracer.start_as_current_span("request") as parent:
        assert soft.run_for("tenant", child) == "child"          # the quota's one call
        assert soft.run_for("tenant", abs, -1) == "fb"           # quota exhausted
        assert decorated(-3) == 3
        open_breaker.force_open()
        with pytest.raises(fp.ResourceExhausted):
            closed_rule.run_for("k", abs, -1)                    # refused, fail closed
        with pytest.raises(fp.ConstraintViolation):
            short.run_for("k", time.sleep, OVERRUN)
        with pytest.raises(KeyError):
            short.run_for("k", {}.__getitem__, "x")
    spans = telemetry.spans()
    assert [attrs(s) for s in spans] == [
        ("soft", "semantic", "ok"),
        ("soft", "semantic", "fallback"),
        ("closed", "fast", "ok"),
        ("closed", "fast", "deny"),
        ("short", "fast", "deny"),
        ("short", "fast", "error"),
    ]
    for span in spans:
        assert span.parent.span_id == parent.get_span_context().span_id
    (inside,) = telemetry.spans("inside")
    assert inside.parent.span_id == spans[0].context.span_id  # current while the rule ran
    assert spans[0].attributes["fastpath.attempts"] == 1
    assert spans[1].attributes["fastpath.refused"] == "quota"
    assert spans[1].attributes["fastpath.attempts"] == 0
    assert spans[1].status.status_code is StatusCode.UNSET
    assert spans[3].attributes["fastpath.refused"] == "breaker"
    assert spans[3].attributes["error.type"] == "ResourceExhausted"
    assert spans[3].status.status_code is StatusCode.ERROR
    assert spans[4].attributes["fastpath.violations"] == ("timeout_exceeded",)
    assert spans[4].attributes["fastpath.elapsed_ns"] >= OVERRUN * 1e9
    assert spans[5].attributes["error.type"] == "KeyError"
    assert "fastpath.refused" not in spans[4].attributes


def test_spans_all_tells_a_fail_open_breaker_refusal_from_a_sampled_out_call(fp, telemetry):
    e = enforcer(fp)
    C = fp.ExecutionConstraints
    breaker = fp.CircuitBreaker()
    refused = e.rule("refused", fp.RuleType.SEMANTIC, fallback="fb", breaker=breaker)
    never = e.rule("never", fp.RuleType.SEMANTIC, fallback="fb", breaker=fp.CircuitBreaker(),
                   constraints=C(TIGHT_MS, sampling_rate=0.0, fail_closed_on_timeout=False))
    telemetry.instrument(e, spans="all")
    breaker.force_open()
    assert refused.run_for("k", abs, -1) == "fb"
    assert never.run_for("k", abs, -1) == "fb"
    assert e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, abs, 1) is None
    spans = telemetry.spans()
    assert [attrs(s) for s in spans] == [("refused", "semantic", "fallback"),
                                         ("never", "semantic", "sampled_out"),
                                         ("abs", "observational", "sampled_out")]
    assert spans[0].attributes["fastpath.refused"] == "breaker"
    assert "fastpath.refused" not in spans[1].attributes


def test_spans_all_traces_async_calls_in_their_task(fp, telemetry):
    import asyncio

    e = enforcer(fp)
    C = fp.ExecutionConstraints
    soft = e.rule("soft", fp.RuleType.SEMANTIC, fallback="fb",
                  constraints=C(SHORT_MS, fail_closed_on_timeout=False))
    telemetry.instrument(e, spans="all")
    tracer = telemetry.tracer_provider.get_tracer("app")

    async def child():
        await asyncio.sleep(0)
        with tracer.start_as_current_span("inside"):
            await asyncio.sleep(0)
        return "child"

    @e.constrained(fp.RuleType.FAST, rule_id="decorated")
    async def decorated(x):
        await asyncio.sleep(0)
        return x

    async def fails():
        await asyncio.sleep(0)
        raise KeyError("x")

    async def blocks():
        await asyncio.sleep(60)

    async def main():
        with tracer.start_as_current_span("request") as parent:
            assert await e.execute_async(fp.RuleType.FAST, child) == "child"
            assert await soft.run_async(asyncio.sleep, OVERRUN) == "fb"
            assert await decorated(7) == 7
            with pytest.raises(KeyError):
                await e.execute_async(fp.RuleType.WASM_HOOK, fails)
            task = asyncio.ensure_future(e.execute_async(fp.RuleType.SEMANTIC, blocks))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return parent

    parent = asyncio.run(main())
    spans = telemetry.spans()
    here = "test_spans_all_traces_async_calls_in_their_task.<locals>"
    assert [attrs(s) for s in spans] == [
        (f"{here}.child", "fast", "ok"),
        ("soft", "semantic", "fallback"),
        ("decorated", "fast", "ok"),
        (f"{here}.fails", "wasm_hook", "error"),
        (f"{here}.blocks", "semantic", "cancelled"),
    ]
    for span in spans:
        assert span.parent.span_id == parent.get_span_context().span_id
    (inside,) = telemetry.spans("inside")
    assert inside.parent.span_id == spans[0].context.span_id
    assert spans[1].attributes["fastpath.violations"] == ("timeout_exceeded",)
    assert spans[1].attributes["fastpath.elapsed_ns"] >= OVERRUN * 1e9
    assert spans[3].status.status_code is StatusCode.ERROR
    assert spans[3].attributes["error.type"] == "KeyError"
    assert spans[4].status.status_code is StatusCode.UNSET and spans[4].events == ()
    assert e.metrics()[fp.RuleType.FAST]["calls"] == 2      # counted as ever


def test_spans_all_traces_direct_rule_calls_until_uninstrumented(fp, telemetry):
    e = enforcer(fp)
    before = e.rule("before", fp.RuleType.FAST)
    inst = telemetry.instrument(e, spans="all")
    after = e.rule("after", fp.RuleType.FAST)          # registered while instrumented
    tracer = telemetry.tracer_provider.get_tracer("app")

    def child():
        with tracer.start_as_current_span("inside"):
            return 7

    with tracer.start_as_current_span("request") as parent:
        assert before(child) == 7
        assert after(abs, -2) == 2
        with pytest.raises(KeyError):
            after({}.__getitem__, "x")
    spans = telemetry.spans()
    assert [attrs(s) for s in spans] == [
        ("before", "fast", "ok"), ("after", "fast", "ok"), ("after", "fast", "error")]
    assert all(s.parent.span_id == parent.get_span_context().span_id for s in spans)
    (inside,) = telemetry.spans("inside")
    assert inside.parent.span_id == spans[0].context.span_id
    telemetry.exporter.clear()
    inst.uninstrument()
    assert before(abs, -1) == 1 and after(abs, -1) == 1
    assert telemetry.spans() == []
    assert before.metrics()["calls"] == 2 and after.metrics()["calls"] == 3


def test_uninstrument_restores_async_and_registered_rule_paths(fp, telemetry):
    import asyncio

    e = enforcer(fp)
    rule = e.rule("r", fp.RuleType.FAST)
    before = e.constrained(fp.RuleType.FAST, rule_id="r")(abs)
    inst = telemetry.instrument(e, spans="all")
    during = e.constrained(fp.RuleType.FAST, rule_id="r")(abs)

    async def coro():
        return 1

    def calls():
        before(1), during(1), rule.run_for("k", abs, 1)
        asyncio.run(e.execute_async(fp.RuleType.FAST, coro))
        asyncio.run(rule.run_async(coro))

    calls()
    assert len(telemetry.spans()) == 5
    telemetry.exporter.clear()
    inst.uninstrument()
    assert not set(otel._WRAPPED) & set(vars(e))
    calls()
    assert telemetry.spans() == []
    assert rule.metrics()["calls"] == 8
