"""A usage example type-checked with `mypy --strict` (tests/test_typing.py, `make lint`).

Every `assert_type` is checked by mypy: the types are the ones stated, not `Any`.
"""

from __future__ import annotations

from typing import assert_type

from fastpath import (
    AuditEvent,
    ConstraintEnforcer,
    ConstraintViolation,
    ConstraintViolationType,
    ExecutionBudget,
    ExecutionConstraints,
    ExecutionStats,
    LatencyHistogram,
    LocalQuotaStore,
    Quota,
    RuleType,
    current_flow_key,
    preemption_info,
)
from fastpath.typedefs import (
    AuditMetrics,
    AuditMetricsJSON,
    HistogramSummary,
    PreemptionInfo,
    RuleMetrics,
    RuleMetricsJSON,
)


def evaluate(header: str) -> bool:
    return header.startswith("curl/")


def run(header: str) -> bool:
    constraints: ExecutionConstraints = ExecutionConstraints.fast_rule()
    if not constraints.should_sample():
        return False
    budget: ExecutionBudget = constraints.create_budget()
    try:
        denied: bool = budget.enforce(evaluate, header)
    except ConstraintViolation as exc:
        kind: ConstraintViolationType = exc.kind
        stats = exc.stats
        if stats is not None:
            print(kind.name, stats.elapsed_ms, stats.cpu_time_us)
        return True
    stats2: ExecutionStats = budget.stats()
    remaining: float = budget.remaining_ms()
    print(stats2.elapsed_ns, remaining, budget.is_timeout(), budget.get_violations())
    return denied


changed: ExecutionConstraints = ExecutionConstraints(5).replace(cpu_shares=20)
restored: ExecutionConstraints = ExecutionConstraints.from_dict(changed.to_dict())


enforcer = ConstraintEnforcer(fallbacks={RuleType.SEMANTIC: False})
custom: ConstraintEnforcer = ConstraintEnforcer.with_constraints(
    ExecutionConstraints.fast_rule(),
    ExecutionConstraints.semantic_rule(),
    ExecutionConstraints.wasm_hook(20),
    ExecutionConstraints.observational(0.1),
)
verdict = enforcer.execute_with_constraints(RuleType.FAST, evaluate, "curl/8")


@enforcer.constrained(RuleType.FAST, rule_id="deny-curl")
def deny_curl(header: str) -> bool:
    return header.startswith("curl/")


decided: bool = deny_curl("curl/8")


def p99_of(samples_ns: list[int]) -> int | None:
    hist: LatencyHistogram = LatencyHistogram()
    for ns in samples_ns:
        hist.record(ns)
    summary = hist.summary()
    mean: float | None = summary["mean_ns"]
    print(hist.count, mean, summary["clamped_high"], hist.counts().sum())
    return hist.percentile(99)


configured: ConstraintEnforcer = ConstraintEnforcer.from_config(
    {"profiles": {"fast": {"max_exec_ms": 2}}, "audit": {"rate_per_s": 5}})
as_json: dict[str, RuleMetricsJSON] = configured.metrics(json=True)
audited: int = configured.audit_metrics()["events"]

# execute_with_constraints / execute_async return what fn returns, and check
# fn's arguments (ParamSpec).
assert_type(enforcer.execute_with_constraints(RuleType.FAST, evaluate, "curl/8"), bool)
assert_type(enforcer.execute_with_constraints(RuleType.FAST, len, [1, 2]), int)


async def lookup(key: str) -> list[str]:
    return [key]


async def run_async() -> None:
    found = await enforcer.execute_async(RuleType.SEMANTIC, lookup, "k")
    assert_type(found, list[str])


# metrics(), audit_metrics(), preemption_info(), summary(): TypedDicts.
per_type: dict[RuleType, RuleMetrics] = enforcer.metrics()
fast_metrics = per_type[RuleType.FAST]
assert_type(fast_metrics["calls"], int)
assert_type(fast_metrics["violations"], dict[ConstraintViolationType, int])
assert_type(fast_metrics["latency"]["p99_ns"], int | None)
assert_type(as_json["fast"]["violations"], dict[str, int])
audit: AuditMetrics = configured.audit_metrics()
assert_type(audit["logged"], int | None)
for rule_ids in audit["rules"].values():
    for entry in rule_ids.values():
        assert_type(entry["outcomes"], dict[str, int])
audit_json: AuditMetricsJSON = configured.audit_metrics(json=True)
info: PreemptionInfo = preemption_info()
assert_type(info["clock"], str)
assert_type(info["signal"], int | None)
assert_type(LatencyHistogram().summary(), HistogramSummary)
assert_type(enforcer.latency_histogram(RuleType.FAST), LatencyHistogram)
assert_type(enforcer.constraints_for(RuleType.FAST), ExecutionConstraints)


# AuditEvent.stats is Optional[ExecutionStats]; constraints Optional too.
def sink(event: AuditEvent) -> None:
    assert_type(event.stats, ExecutionStats | None)
    if event.stats is not None and event.constraints is not None:
        print(event.stats.elapsed_ms, event.constraints.max_exec_ms)


sinking: ConstraintEnforcer = ConstraintEnforcer(audit_sink=sink)


tool_calls: Quota = Quota(calls=1000, cpu_ms=2000, per_s=60, store=LocalQuotaStore())
enforcer.set_quota(RuleType.FAST, tool_calls)
with enforcer.flow("agent-42"):
    enforcer.execute_with_constraints(RuleType.FAST, evaluate, "curl/8")
left: dict[str, float] = tool_calls.remaining("agent-42")
flow_key: object = current_flow_key()
