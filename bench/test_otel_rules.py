"""OpenTelemetry on registered rules and async calls (issue 16): a registered
``rule(f)`` and ``await enforcer.execute_async(FAST, af)``, uninstrumented and
after ``fastpath.otel.instrument(enforcer, spans="violations")``; and the same
async call under ``spans="all"`` (a span per call, at the SDK's cost).

"violations" installs nothing on these paths (spans come from audit events,
which only violated calls make): goals 23a and 23b check that it stays so.
Rows are wrappers catching the FAST profile's occasional deny on a loaded
machine, as in test_rules.py; the async rows run ``N`` awaits per event-loop
batch (``inner=N``).
"""

from __future__ import annotations

import asyncio

import pytest
from test_enforcer import _otel_providers
from test_rules import _rule_row

N = 200


def _instrumented(enforcer, spans):
    from fastpath.otel import instrument

    tracer_provider, meter_provider = _otel_providers()
    inst = instrument(enforcer, tracer_provider=tracer_provider,
                      meter_provider=meter_provider, spans=spans)

    def close():
        inst.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return close


@pytest.mark.parametrize("spans", [None, "violations"])
def test_rule_call_otel(benchmark, fp, spans):
    """``rule(f)`` of a registered FAST rule, with ``spans="violations"`` or not
    (the same row as test_rules.py's, measured in this group)."""
    prepare = (lambda enforcer: _instrumented(enforcer, spans)) if spans else None
    _rule_row(benchmark, fp, f"rule_otel_{spans or 'off'}", prepare=prepare)


async def af() -> None:
    return None


@pytest.mark.parametrize("spans", [None, "violations", "all"])
def test_execute_async_otel(benchmark, fp, spans):
    """``await enforcer.execute_async(FAST, af)``, ``N`` per batch."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    close = _instrumented(enforcer, spans) if spans else (lambda: None)
    fast = fp.RuleType.FAST
    violation = fp.ConstraintViolation
    denied = [0]

    async def batch() -> None:
        for _ in range(N):
            try:
                await enforcer.execute_async(fast, af)
            except violation:
                denied[0] += 1

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(batch())            # warm up
        benchmark.group = "otel_rules"
        benchmark.extra_info.update(key=f"execute_async_otel_{spans or 'off'}", impl=fp.kind,
                                    inner=N)
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()
        close()
    benchmark.extra_info.update(denied=denied[0])
