"""Quotas with the in-process store, on both cores: admission, debit of measured
time, flows, failure policy, metrics, audit, threads, asyncio."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.threads import run_threads

# Refill so slow that nothing comes back during a test (1 call per ~11 days).
FROZEN = 1e6


class Sink:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)


def enforcer_with(fp, quota, rule_type=None, **kwargs):
    """Generous budgets (10 s) so that only the quota decides; FAST fails closed,
    SEMANTIC fails open (fallback "fb")."""
    C = fp.ExecutionConstraints
    rule_type = rule_type or fp.RuleType.FAST
    sink = kwargs.pop("audit_sink", None) or Sink()
    enforcer = fp.ConstraintEnforcer.with_constraints(
        fast=C(10000, fail_closed_on_timeout=True),
        semantic=C(10000, fail_closed_on_timeout=False),
        wasm_hook=C(10000),
        observational=C(10000, fail_closed_on_timeout=False),
        audit_sink=sink, fallbacks={fp.RuleType.SEMANTIC: "fb"},
        quotas={rule_type: quota}, **kwargs)
    return enforcer, sink


class Counter:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.n += 1
        return "ran"


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "at least one of calls, cpu_ms, wall_ms"),
    ({"calls": 0}, "calls must be a finite number > 0, got 0"),
    ({"calls": -1}, "got -1"),
    ({"calls": "10"}, "calls must be a number > 0 or None, got '10'"),
    ({"calls": True}, "got True"),
    ({"cpu_ms": float("nan")}, "cpu_ms must be a finite number > 0, got nan"),
    ({"wall_ms": float("inf")}, "wall_ms must be a finite number > 0, got inf"),
    ({"calls": 5, "per_s": 0}, "per_s must be a finite number > 0, got 0"),
    ({"calls": 5, "per_s": None}, "per_s must be a number > 0, got None"),
    ({"calls": 5, "burst": 0}, "burst must be a finite number > 0, got 0"),
    ({"calls": 1, "burst": 0.5}, "calls * burst must be >= 1"),
    ({"calls": 5, "store": object()}, "store must be a LocalQuotaStore or a RedisQuotaStore"),
])
def test_bad_quota_arguments_are_invalid_configuration(fp, kwargs, fragment):
    with pytest.raises(fp.InvalidConfiguration, match="Quota") as info:
        fp.Quota(**kwargs)
    assert fragment in str(info.value)


def test_quota_arguments_are_keyword_only(fp):
    with pytest.raises(TypeError):
        fp.Quota(10)


def test_a_store_serves_one_quota(fp):
    store = fp.LocalQuotaStore()
    fp.Quota(calls=1, store=store)
    with pytest.raises(fp.InvalidConfiguration, match="serves one Quota"):
        fp.Quota(calls=2, store=store)


def test_an_unbound_store_says_so(fp):
    with pytest.raises(fp.InvalidConfiguration, match="not the store of any Quota"):
        fp.LocalQuotaStore().usage("k")


def test_unhashable_flow_key_is_invalid_configuration(fp):
    quota = fp.Quota(calls=1)
    enforcer, _ = enforcer_with(fp, quota)
    with pytest.raises(fp.InvalidConfiguration, match=r"flow key must be hashable, got \[1\]"):
        enforcer.flow([1])
    with pytest.raises(fp.InvalidConfiguration, match="hashable"):
        quota.remaining([1])


def test_quotas_argument_is_validated(fp):
    with pytest.raises(fp.InvalidConfiguration, match="quotas must be a mapping"):
        fp.ConstraintEnforcer(quotas=[1])
    with pytest.raises(fp.InvalidConfiguration, match="quotas keys must be RuleType"):
        fp.ConstraintEnforcer(quotas={"fast": fp.Quota(calls=1)})
    with pytest.raises(fp.InvalidConfiguration, match="the quota of fast must be"):
        fp.ConstraintEnforcer(quotas={fp.RuleType.FAST: 10})


def test_the_other_cores_quota_is_refused(fp):
    other = "python" if fp.kind == "compiled" else "compiled"
    from tests.conftest import QUOTAS
    foreign = QUOTAS[other].Quota(calls=1)
    enforcer = fp.ConstraintEnforcer()
    with pytest.raises(fp.InvalidConfiguration, match="the quota of fast must be"):
        enforcer.set_quota(fp.RuleType.FAST, foreign)


# ------------------------------------------------------------------ admission

def test_calls_quota_refuses_without_running_fn_or_consuming(fp):
    quota = fp.Quota(calls=3, per_s=FROZEN)
    enforcer, sink = enforcer_with(fp, quota)
    fn = Counter()
    results = []
    for _ in range(5):
        try:
            results.append(enforcer.execute_with_constraints(fp.RuleType.FAST, fn))
        except fp.ResourceExhausted as exc:
            results.append(exc)
    assert results[:3] == ["ran"] * 3
    assert all(isinstance(r, fp.ResourceExhausted) for r in results[3:])
    assert fn.n == 3
    usage = quota.store.usage(None)
    assert usage["admitted"] == 3 and usage["refused"] == 2
    # Refused calls took nothing: exactly the three admitted calls are used.
    assert usage["calls"] == pytest.approx(3, abs=1e-3)
    assert quota.remaining(None)["calls"] == pytest.approx(0, abs=1e-3)
    m = enforcer.metrics()[fp.RuleType.FAST]
    assert (m["calls"], m["executed"], m["quota_refused"]) == (5, 3, 2)
    assert [e.event_type for e in sink.events] == ["quota_exhausted"] * 2
    assert sink.events[0].outcome == "deny" and sink.events[0].flow_key is None
    assert sink.events[0].violations == () and sink.events[0].stats is None


def test_resource_exhausted_names_the_flow_and_the_quota(fp):
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota)
    with enforcer.flow("agent-42"):
        enforcer.execute_with_constraints(fp.RuleType.FAST, Counter())
        with pytest.raises(fp.ResourceExhausted, match=r"flow 'agent-42' \(fast rule") as info:
            enforcer.execute_with_constraints(fp.RuleType.FAST, Counter())
    assert "calls=1" in str(info.value)
    assert isinstance(info.value, fp.ConstraintError)


def test_fail_open_rule_type_returns_the_fallback(fp):
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer, sink = enforcer_with(fp, quota, fp.RuleType.SEMANTIC)
    fn = Counter()
    assert enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, fn) == "ran"
    assert enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, fn) == "fb"
    assert fn.n == 1
    assert sink.events[0].outcome == "fallback"
    assert enforcer.metrics(json=True)["semantic"]["quota_refused"] == 1


def test_rule_types_without_a_quota_are_not_limited(fp):
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota)
    fn = Counter()
    for _ in range(10):
        enforcer.execute_with_constraints(fp.RuleType.WASM_HOOK, fn)
    assert fn.n == 10
    assert enforcer.quota_for(fp.RuleType.WASM_HOOK) is None
    assert enforcer.quota_for(fp.RuleType.FAST) is quota


def test_set_quota_attaches_and_removes(fp):
    enforcer = fp.ConstraintEnforcer()
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer.set_quota(fp.RuleType.OBSERVATIONAL, quota)
    fn = Counter()
    enforcer.execute_with_constraints(fp.RuleType.OBSERVATIONAL, fn)
    assert enforcer.execute_with_constraints(fp.RuleType.OBSERVATIONAL, fn) is None  # fail open
    enforcer.set_quota(fp.RuleType.OBSERVATIONAL, None)
    enforcer.execute_with_constraints(fp.RuleType.OBSERVATIONAL, fn)
    assert fn.n == 2


def test_sampled_out_calls_are_not_charged(fp):
    C = fp.ExecutionConstraints
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer = fp.ConstraintEnforcer.with_constraints(
        fast=C(10000, sampling_rate=0.0), semantic=C(10000), wasm_hook=C(10000),
        observational=C(10000), quotas={fp.RuleType.FAST: quota})
    for _ in range(5):
        enforcer.execute_with_constraints(fp.RuleType.FAST, Counter())
    assert quota.store.usage(None)["admitted"] == 0
    assert enforcer.metrics()[fp.RuleType.FAST]["quota_refused"] == 0


def test_refill_is_continuous(fp):
    # 20 calls per second: 200 ms after the bucket ran dry at least 4 are back.
    quota = fp.Quota(calls=1, per_s=0.05)
    assert quota.admit("k") is True
    left = quota.remaining("k")["calls"]
    assert left < 1
    time.sleep(0.2)
    assert quota.remaining("k")["calls"] == pytest.approx(1.0)   # capped at the burst
    assert quota.admit("k") is True


def test_burst_is_periods_worth(fp):
    quota = fp.Quota(calls=2, per_s=FROZEN, burst=3)
    assert [quota.admit("k") for _ in range(7)] == [True] * 6 + [False]


# ------------------------------------------------------------------ debit of measured time

def test_wall_time_is_debited_and_then_refuses(fp):
    quota = fp.Quota(wall_ms=50, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota)
    fn = Counter()

    def slow():
        time.sleep(0.08)
        return fn()

    assert enforcer.execute_with_constraints(fp.RuleType.FAST, slow) == "ran"
    used = quota.store.usage(None)["wall_ms"]
    assert used >= 80          # the call slept 80 ms: at least that much was charged
    assert quota.remaining(None)["wall_ms"] <= -30
    with pytest.raises(fp.ResourceExhausted):
        enforcer.execute_with_constraints(fp.RuleType.FAST, fn)
    assert fn.n == 1


def test_cpu_time_is_measured_not_the_wall_time(fp):
    quota = fp.Quota(cpu_ms=10000, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota)
    inside = {}

    def work():
        c0 = time.thread_time_ns()
        time.sleep(0.1)              # wall time, almost no CPU
        end = time.thread_time() + 0.03
        while time.thread_time() < end:
            pass
        inside["cpu_ns"] = time.thread_time_ns() - c0

    w0 = time.monotonic_ns()
    enforcer.execute_with_constraints(fp.RuleType.FAST, work)
    wall_ns = time.monotonic_ns() - w0
    charged_ms = quota.store.usage(None)["cpu_ms"]
    # The quota's CPU window contains fn's, and CPU never exceeds the wall time.
    assert charged_ms >= inside["cpu_ns"] / 1e6 >= 30
    assert charged_ms <= wall_ns / 1e6
    assert charged_ms < 100          # the 100 ms sleep was not charged as CPU


def test_a_call_that_raises_is_still_debited_and_its_error_propagates(fp):
    quota = fp.Quota(wall_ms=10000, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota)

    class Boom(Exception):
        pass

    def boom():
        time.sleep(0.02)
        raise Boom("mine")

    with pytest.raises(Boom, match="mine"):
        enforcer.execute_with_constraints(fp.RuleType.FAST, boom)
    assert quota.store.usage(None)["wall_ms"] >= 20

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enforcer.execute_with_constraints(fp.RuleType.FAST, interrupt)
    assert quota.store.usage(None)["admitted"] == 2


# ------------------------------------------------------------------ flows

def test_flows_are_isolated_and_nest(fp):
    quota = fp.Quota(calls=2, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota, fp.RuleType.SEMANTIC)
    run = enforcer.execute_with_constraints
    S = fp.RuleType.SEMANTIC
    with enforcer.flow("a"):
        assert [run(S, Counter()) for _ in range(3)] == ["ran", "ran", "fb"]
        with enforcer.flow("b"):
            assert fp.core is not None and run(S, Counter()) == "ran"
        assert run(S, Counter()) == "fb"
    assert run(S, Counter()) == "ran"         # no flow: the key None
    assert quota.store.usage("a")["admitted"] == 2
    assert quota.store.usage("a")["refused"] == 2
    assert quota.store.usage("b")["admitted"] == 1
    assert quota.store.usage(None)["admitted"] == 1


def test_reset_refills_one_key(fp):
    quota = fp.Quota(calls=1, per_s=FROZEN)
    assert quota.admit("a") and quota.admit("b")
    assert not quota.admit("a")
    quota.store.reset("a")
    assert quota.admit("a")
    assert not quota.admit("b")


def test_full_buckets_of_old_keys_are_dropped(fp):
    quota = fp.Quota(calls=1, per_s=1e-6)      # refills within a microsecond
    for i in range(5000):
        quota.admit(i)
    time.sleep(0.01)
    quota.admit("last")
    assert len(quota.store.keys()) < 5000


def test_flow_follows_asyncio_tasks(fp):
    quota = fp.Quota(calls=100, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota)

    async def rule():
        await asyncio.sleep(0)
        return "ok"

    async def main():
        async with enforcer.flow("agent-1"):
            await asyncio.gather(*(asyncio.create_task(
                enforcer.execute_async(fp.RuleType.FAST, rule)) for _ in range(3)))
        async with enforcer.flow("agent-2"):
            await enforcer.execute_async(fp.RuleType.FAST, rule)
        await enforcer.execute_async(fp.RuleType.FAST, rule)

    asyncio.run(main())
    assert quota.store.usage("agent-1")["admitted"] == 3
    assert quota.store.usage("agent-2")["admitted"] == 1
    assert quota.store.usage(None)["admitted"] == 1


def test_async_rules_are_admitted_and_debited(fp):
    quota = fp.Quota(calls=1, wall_ms=10000, per_s=FROZEN)
    enforcer, sink = enforcer_with(fp, quota, fp.RuleType.SEMANTIC)

    async def rule():
        await asyncio.sleep(0.03)
        return "ok"

    async def main():
        first = await enforcer.execute_async(fp.RuleType.SEMANTIC, rule)
        second = await enforcer.execute_async(fp.RuleType.SEMANTIC, rule)
        return first, second

    assert asyncio.run(main()) == ("ok", "fb")
    assert quota.store.usage(None)["wall_ms"] >= 30
    assert [e.event_type for e in sink.events] == ["quota_exhausted"]
    assert enforcer.metrics()[fp.RuleType.SEMANTIC]["quota_refused"] == 1


def test_decorated_rules_audit_their_rule_id(fp):
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer, sink = enforcer_with(fp, quota)

    @enforcer.constrained(fp.RuleType.FAST, rule_id="deny-ua")
    def rule():
        return 1

    rule()
    with pytest.raises(fp.ResourceExhausted, match="deny-ua"):
        rule()
    assert sink.events[0].rule_id == "deny-ua"
    rows = enforcer.audit_metrics()["rules"][fp.RuleType.FAST]["deny-ua"]
    assert rows["outcomes"]["deny"] == 1


def test_default_sink_rate_limits_quota_events(fp, caplog):
    quota = fp.Quota(calls=1, per_s=FROZEN)
    C = fp.ExecutionConstraints
    enforcer = fp.ConstraintEnforcer.with_constraints(
        fast=C(10000), semantic=C(10000, fail_closed_on_timeout=False), wasm_hook=C(10000),
        observational=C(10000), audit_rate_per_s=3, quotas={fp.RuleType.SEMANTIC: quota})
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="fastpath.audit"):
        for _ in range(50):
            enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, Counter())
    windows = int(time.monotonic() - t0) + 2      # a loaded machine may cross a second
    lines = [r for r in caplog.records if r.getMessage().startswith("quota exhausted")]
    assert 1 <= len(lines) <= 3 * windows < 49
    assert "flow None (fallback)" in lines[0].getMessage()
    assert enforcer.audit_metrics()["events"] == 49


# ------------------------------------------------------------------ threads

def test_local_store_is_exact_under_8_threads(fp):
    quota = fp.Quota(calls=1000, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota, fp.RuleType.SEMANTIC)
    fn = Counter()
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(500):
            enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, fn)

    run_threads(worker, [()] * 8)
    usage = quota.store.usage(None)
    assert fn.n == 1000
    assert (usage["admitted"], usage["refused"]) == (1000, 3000)
    assert enforcer.metrics()[fp.RuleType.SEMANTIC]["quota_refused"] == 3000


def test_direct_admission_is_exact_under_8_threads(fp):
    quota = fp.Quota(calls=2000, per_s=FROZEN)
    admitted = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        n = sum(quota.admit("k") for _ in range(1000))
        admitted.append(n)

    run_threads(worker, [()] * 8)
    assert sum(admitted) == 2000


def test_repr_names_the_limits(fp):
    quota = fp.Quota(calls=1000, cpu_ms=2000, per_s=60)
    assert "calls=1000" in repr(quota) and "cpu_ms=2000" in repr(quota)
    assert "per_s=60" in repr(quota)


def test_quota_refusals_are_exported_to_prometheus(fp):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from fastpath.prometheus import EnforcerCollector

    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer, _ = enforcer_with(fp, quota, fp.RuleType.SEMANTIC)
    for _ in range(3):
        enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, Counter())
    assert enforcer.metrics()[fp.RuleType.SEMANTIC]["refused"] == {"quota": 2}
    assert "refused" not in enforcer.metrics()[fp.RuleType.FAST]
    registry = CollectorRegistry()
    registry.register(EnforcerCollector(enforcer))
    text = generate_latest(registry).decode()
    assert 'fastpath_refused_total{cause="quota",rule_type="semantic"} 2.0' in text


# ------------------------------------------------------------ registered rules

def test_a_rules_quota_admits_per_flow_key_through_run_for(fp):
    C = fp.ExecutionConstraints
    enforcer = fp.ConstraintEnforcer(audit_sink=Sink())
    quota = fp.Quota(calls=2, per_s=FROZEN)
    rule = enforcer.rule("lookup", fp.RuleType.FAST, constraints=C(10000), quota=quota)
    assert rule.quota is quota
    ran = Counter()
    assert [rule.run_for("agent-1", ran) for _ in range(2)] == ["ran", "ran"]
    with pytest.raises(fp.ResourceExhausted, match="agent-1"):
        rule.run_for("agent-1", ran)
    assert ran.n == 2                              # the refused call never ran
    assert rule.run_for("agent-2", ran) == "ran"   # another key has its own bucket
    with enforcer.flow("agent-2"):
        assert rule(ran) == "ran"                  # the flow block charges the same key
        with pytest.raises(fp.ResourceExhausted):
            rule(ran)
    metrics = enforcer.rule_metrics()["lookup"]
    assert (metrics["calls"], metrics["executed"], metrics["quota_refused"]) == (6, 4, 2)
    assert enforcer.metrics()[fp.RuleType.FAST]["calls"] == 0   # the rule type's own counters


def test_a_rules_quota_refusal_is_audited_with_the_rule_id(fp):
    sink = Sink()
    enforcer = fp.ConstraintEnforcer(audit_sink=sink)
    quota = fp.Quota(calls=1, per_s=FROZEN)
    rule = enforcer.rule("score", fp.RuleType.SEMANTIC,
                         constraints=fp.ExecutionConstraints(10000, fail_closed_on_timeout=False),
                         fallback="fb", quota=quota)
    assert rule.run_for("k", len, "ab") == 2
    assert rule.run_for("k", len, "ab") == "fb"    # fail open: the fallback
    (event,) = [e for e in sink.events if e.event_type == "quota_exhausted"]
    assert (event.rule_id, event.rule_type, event.flow_key, event.outcome) == (
        "score", fp.RuleType.SEMANTIC, "k", "fallback")


def test_a_quota_refusal_gives_back_the_half_open_probe_it_was_admitted_for(fp):
    # The breaker admits a probe, then the quota refuses the call: the probe
    # slot must come back, or the breaker would wait for it for ever.
    now = [0.0]
    breaker = fp.CircuitBreaker(minimum_calls=1, window_calls=1, open_ms=10, half_open_calls=1,
                                clock=lambda: now[0])
    quota = fp.Quota(calls=1, per_s=FROZEN)
    enforcer = fp.ConstraintEnforcer(audit_sink=Sink())
    rule = enforcer.rule("probe", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(10000),
                         breaker=breaker, quota=quota)

    def down():
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        rule.run_for("a", down)                    # trips it open (and spends a's call)
    assert breaker.state == fp.CircuitState.OPEN
    now[0] += 1.0                                  # past open_ms: the next call is a probe
    with pytest.raises(fp.ResourceExhausted, match="quota"):
        rule.run_for("a", len, "x")                # probe admitted, then the quota refuses
    assert breaker.state == fp.CircuitState.HALF_OPEN
    assert rule.run_for("b", len, "xy") == 2       # the slot came back: b's probe runs
    assert breaker.state == fp.CircuitState.CLOSED


def test_a_rules_quota_applies_to_run_async(fp):
    enforcer = fp.ConstraintEnforcer(audit_sink=Sink())
    quota = fp.Quota(calls=1, per_s=FROZEN)
    rule = enforcer.rule("a", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(10000),
                         quota=quota)

    async def work():
        return "done"

    async def main():
        async with enforcer.flow("k"):
            first = await rule.run_async(work)
            with pytest.raises(fp.ResourceExhausted):
                await rule.run_async(work)
        return first

    assert asyncio.run(main()) == "done"


@pytest.mark.parametrize("bad", [3, "quota", object()])
def test_a_rules_quota_must_be_a_quota_of_its_core(fp, bad):
    enforcer = fp.ConstraintEnforcer()
    with pytest.raises(fp.InvalidConfiguration, match="quota must be a"):
        enforcer.rule("r", fp.RuleType.FAST, quota=bad)


def test_a_quota_of_the_other_core_is_refused_with_a_clear_error(fp):
    from fastpath import _quota_py

    try:
        from fastpath import _quota as compiled_quota
    except ImportError:  # pragma: no cover
        pytest.skip("no compiled quota")
    other = (_quota_py if fp.kind == "compiled" else compiled_quota).Quota(calls=1)
    with pytest.raises(fp.InvalidConfiguration, match="of this enforcer's core"):
        fp.ConstraintEnforcer().rule("r", fp.RuleType.FAST, quota=other)
