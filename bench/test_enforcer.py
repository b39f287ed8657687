"""ConstraintEnforcer's per-call pipeline, compiled core vs pure-Python twin.

FAST is fail closed with a 5 ms deadline and a 0.5 ms CPU allowance: on a
loaded machine a call that is descheduled at the wrong moment is denied
(ConstraintViolation).  So the call is made from a wrapper that catches and
counts the violation (a ``try`` costs nothing in Python 3.11 when nothing is
raised) and the wrapper is compared with the same wrapper around ``f()``
(``minus="call_f"``).  Denied calls are reported in ``extra_info["denied"]``.
"""

from __future__ import annotations

import pytest
from _support import f, measure


def test_execute_with_constraints_fast(benchmark, fp):
    """``enforcer.execute_with_constraints(RuleType.FAST, f)``: minus ``f()`` is goal 6."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    execute = enforcer.execute_with_constraints
    fast = fp.RuleType.FAST
    violation = fp.ConstraintViolation
    denied = [0]

    def execute_fast():
        try:
            return execute(fast, f)
        except violation:
            denied[0] += 1

    measure(benchmark, "enforcer", "execute", fp.kind, execute_fast, minus="call_f")
    counts = enforcer.metrics()[fast]
    assert counts["executed"] == counts["calls"] > 0
    assert counts["fail_closed"] == denied[0]
    benchmark.extra_info.update(denied=denied[0], calls=counts["calls"])


def test_constrained_decorator_fast(benchmark, fp):
    """``@enforcer.constrained(RuleType.FAST)``: the decorator adds a Python wrapper."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    wrapped = enforcer.constrained(fp.RuleType.FAST)(f)
    violation = fp.ConstraintViolation
    denied = [0]

    def call_wrapped():
        try:
            return wrapped()
        except violation:
            denied[0] += 1

    measure(benchmark, "enforcer", "constrained", fp.kind, call_wrapped, minus="call_f")
    benchmark.extra_info.update(denied=denied[0])


# -- observability (issue 16): what exporting costs a call within its limits ---------

def _execute_fast_of(enforcer, fp):
    """The same wrapper as test_execute_with_constraints_fast, around this enforcer
    (its method bound once, as there: an attribute lookup per call would add
    ~10 ns to these rows only).  Call it after instrumenting the enforcer."""
    execute = enforcer.execute_with_constraints
    fast = fp.RuleType.FAST
    violation = fp.ConstraintViolation
    denied = [0]

    def execute_fast():
        try:
            return execute(fast, f)
        except violation:
            denied[0] += 1

    return execute_fast, denied


def test_execute_with_prometheus_collector(benchmark, fp):
    """``execute_with_constraints(FAST, f)`` with an ``EnforcerCollector`` registered
    (and scraped once): the collector reads counters at scrape time only."""
    from prometheus_client import CollectorRegistry, generate_latest

    from fastpath.prometheus import EnforcerCollector

    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    registry = CollectorRegistry()
    registry.register(EnforcerCollector(enforcer))
    generate_latest(registry)
    execute_fast, denied = _execute_fast_of(enforcer, fp)
    measure(benchmark, "enforcer", "execute_prometheus", fp.kind, execute_fast, minus="call_f")
    benchmark.extra_info.update(denied=denied[0])


def _otel_providers():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        """Ends every span's journey at the exporter (nothing kept, nothing sent)."""

        def export(self, spans):
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


@pytest.mark.parametrize("spans", ["violations", "all"])
def test_execute_with_otel(benchmark, fp, spans):
    """``execute_with_constraints(FAST, f)`` after ``fastpath.otel.instrument(enforcer,
    spans=...)`` with the OpenTelemetry SDK: "violations" adds nothing to a call
    within its limits; "all" wraps every call in an SDK span."""
    from fastpath.otel import instrument

    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    tracer_provider, meter_provider = _otel_providers()
    instrumentation = instrument(enforcer, tracer_provider=tracer_provider,
                                 meter_provider=meter_provider, spans=spans)
    try:
        execute_fast, denied = _execute_fast_of(enforcer, fp)
        measure(benchmark, "enforcer", f"execute_otel_{spans}", fp.kind, execute_fast,
                minus="call_f")
        benchmark.extra_info.update(denied=denied[0])
    finally:
        instrumentation.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()
