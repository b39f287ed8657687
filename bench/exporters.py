"""What exporting costs a call within its limits, measured interleaved (issue 16).

``execute_with_constraints(RuleType.FAST, f)`` on four enforcers side by side:
plain, with a Prometheus ``EnforcerCollector`` registered (and scraped), after
``fastpath.otel.instrument(spans="violations")`` and after ``spans="all"`` (the
OpenTelemetry SDK with a span processor whose exporter drops every span).
Each round times a loop of calls on each enforcer in turn (the order rotates
every round), so a slow moment of a loaded machine falls on all four; the
figure for each variant is the median over rounds of its time divided by the
plain enforcer's time in the same round.

    .venv/bin/python bench/exporters.py [--rounds 300] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import f  # noqa: E402


def variants() -> tuple[dict[str, Callable[[int], int]], list[Callable[[], None]]]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from prometheus_client import CollectorRegistry, generate_latest

    from fastpath import ConstraintEnforcer, ConstraintViolation, RuleType
    from fastpath.otel import instrument
    from fastpath.prometheus import EnforcerCollector

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    cleanup: list[Callable[[], None]] = []

    def make_loop(enforcer: Any) -> Callable[[int], int]:
        execute = enforcer.execute_with_constraints
        fast = RuleType.FAST

        def loop(n: int) -> int:
            denied = 0
            for _ in range(n):
                try:
                    execute(fast, f)
                except ConstraintViolation:
                    denied += 1
            return denied
        return loop

    plain = ConstraintEnforcer(audit_sink=lambda event: None)
    prom = ConstraintEnforcer(audit_sink=lambda event: None)
    registry = CollectorRegistry()
    registry.register(EnforcerCollector(prom))
    generate_latest(registry)
    loops = {"plain": make_loop(plain), "prometheus": make_loop(prom)}
    for spans in ("violations", "all"):
        enforcer = ConstraintEnforcer(audit_sink=lambda event: None)
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        inst = instrument(enforcer, tracer_provider=tracer_provider,
                          meter_provider=meter_provider, spans=spans)
        cleanup.append(inst.uninstrument)
        loops[f"otel_{spans}"] = make_loop(enforcer)
    return loops, cleanup


def measure(rounds: int, calls: int) -> dict[str, Any]:
    loops, cleanup = variants()
    names = list(loops)
    ns: dict[str, list[float]] = {name: [] for name in names}
    denied = dict.fromkeys(names, 0)
    for name in names:                                   # warm up
        loops[name](calls)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            n = calls if name != "otel_all" else max(1, calls // 20)
            t0 = time.perf_counter_ns()
            denied[name] += loops[name](n)
            ns[name].append((time.perf_counter_ns() - t0) / n)
    for undo in cleanup:
        undo()
    out: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "variants": {}}
    for name in names:
        ratios = [a / b for a, b in zip(ns[name], ns["plain"], strict=True)]
        out["variants"][name] = {
            "median_ns": statistics.median(ns[name]),
            "min_ns": min(ns[name]),
            "ratio_median": statistics.median(ratios),
            "ratio_q1": statistics.quantiles(ratios, n=4)[0],
            "ratio_q3": statistics.quantiles(ratios, n=4)[2],
            "denied": denied[name],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rounds, args.calls)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'variant':<16}{'median ns':>11}{'min ns':>9}{'× plain (median, IQR)':>28}  denied")
    for name, v in result["variants"].items():
        print(f"{name:<16}{v['median_ns']:>11.1f}{v['min_ns']:>9.1f}"
              f"{v['ratio_median']:>13.3f} ({v['ratio_q1']:.3f}–{v['ratio_q3']:.3f})"
              f"  {v['denied']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
