"""A usage example type-checked with `mypy --strict` (tests/test_packaging.py)."""

from __future__ import annotations

from fastpath import (
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
as_json: dict[str, dict[str, object]] = configured.metrics(json=True)
audited: int = configured.audit_metrics()["events"]

tool_calls: Quota = Quota(calls=1000, cpu_ms=2000, per_s=60, store=LocalQuotaStore())
enforcer.set_quota(RuleType.FAST, tool_calls)
with enforcer.flow("agent-42"):
    enforcer.execute_with_constraints(RuleType.FAST, evaluate, "curl/8")
left: dict[str, float] = tool_calls.remaining("agent-42")
flow_key: object = current_flow_key()
