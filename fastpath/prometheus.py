"""Prometheus export: ``EnforcerCollector``, a ``prometheus_client`` custom collector.

Pull, not push: every figure is read from the enforcer's own counters and
histograms when Prometheus scrapes, so exporting adds nothing to the per-call
path (``prometheus_client.Histogram.observe`` would cost ~1 µs per call here).

    from prometheus_client import REGISTRY, start_http_server
    from fastpath.prometheus import EnforcerCollector

    REGISTRY.register(EnforcerCollector(enforcer))
    start_http_server(9464)

Needs ``prometheus_client`` (``pip install fastpath[prometheus]``); ``import
fastpath`` never imports this module.  The series are listed in the README's
"Observability" section.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import _histogram_shared as _layout
from .audit import AUDIT_OUTCOMES, OTHER_RULE_ID
from .errors import ConstraintViolationType, InvalidConfiguration

try:  # native histograms: prometheus_client >= 0.22 (experimental there)
    from prometheus_client.samples import BucketSpan, NativeHistogram, Sample
    _HAS_NATIVE = True
except ImportError:  # pragma: no cover - older prometheus_client
    _HAS_NATIVE = False

__all__ = ["EnforcerCollector", "DEFAULT_BUCKETS"]

#: Upper bounds (seconds) of the classic latency buckets: 1 µs to 10 s, 1-2.5-5 steps.
DEFAULT_BUCKETS: Tuple[float, ...] = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Outcomes of a call, as the ``outcome`` label (fastpath_call_outcomes_total).
CALL_OUTCOMES = ("ok", "sampled_out", "fallback", "deny", "error")

_KIND_LABELS = {kind: kind.name.lower() for kind in ConstraintViolationType
                if kind is not ConstraintViolationType.MULTIPLE_VIOLATIONS}


def _check_buckets(buckets: Any) -> Tuple[float, ...]:
    try:
        bounds = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise InvalidConfiguration(
            f"buckets must be a sequence of numbers (seconds), got {buckets!r}") from None
    if bounds and math.isinf(bounds[-1]):
        bounds = bounds[:-1]                        # +Inf is always added
    if not bounds or any(not (b > 0) or math.isinf(b) for b in bounds) \
            or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise InvalidConfiguration(
            f"buckets must be increasing positive numbers of seconds, got {buckets!r}")
    return bounds


class EnforcerCollector(Collector):
    """A custom collector for one ``ConstraintEnforcer``.

    ``EnforcerCollector(enforcer, *, namespace="fastpath", buckets=DEFAULT_BUCKETS,
    max_rule_ids=100, native_histograms=False, native_schema=3)``

    * ``buckets``: upper bounds in seconds of the classic ``_bucket`` series
      (``+Inf`` is added).  Each of the fastpath histogram's 4,562 fine buckets
      (width ≤ 1/128 of its value) is counted in the first bound at or above its
      midpoint, so an observation within 0.4 % of a bound may land on the other
      side of it.  ``_sum`` and ``_count`` are exact.
    * ``max_rule_ids``: per-rule-id series are kept for the first
      ``max_rule_ids`` (rule type, rule id) pairs the enforcer audited; later
      ones are added up under ``rule_id="__other__"``.  A pair keeps its series
      once it has one, so every counter stays monotonic.
    * ``native_histograms=True`` adds to each latency histogram a native
      (sparse, exponential) histogram of schema ``native_schema`` (0..8: 2**schema
      buckets per power of two; 3 gives buckets 9 % wide) built from the fine
      buckets, beside the classic buckets.  ``prometheus_client`` writes it only
      in the OpenMetrics 2.0 text format (experimental there) and leaves it out
      of OpenMetrics 1.0; the Prometheus 0.0.4 text format cannot carry it and
      shows one extra series instead, ``<namespace>_latency_seconds{rule_type=...}``
      with the count.

    Nothing is computed until Prometheus scrapes (``collect``).
    """

    def __init__(self, enforcer: Any, *, namespace: str = "fastpath",
                 buckets: Sequence[float] = DEFAULT_BUCKETS, max_rule_ids: int = 100,
                 native_histograms: bool = False, native_schema: int = 3) -> None:
        if not callable(getattr(enforcer, "metrics", None)) \
                or not callable(getattr(enforcer, "audit_metrics", None)):
            raise InvalidConfiguration(
                f"EnforcerCollector needs a ConstraintEnforcer, got {enforcer!r}")
        if not isinstance(namespace, str) or not namespace.replace("_", "a").isalnum() \
                or namespace[:1].isdigit():
            raise InvalidConfiguration(
                f"namespace must be a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*), got {namespace!r}")
        if isinstance(max_rule_ids, bool) or not isinstance(max_rule_ids, int) \
                or max_rule_ids < 0:
            raise InvalidConfiguration(f"max_rule_ids must be an int >= 0, got {max_rule_ids!r}")
        if not isinstance(native_histograms, bool):
            raise InvalidConfiguration(
                f"native_histograms must be a bool, got {native_histograms!r}")
        if isinstance(native_schema, bool) or not isinstance(native_schema, int) \
                or not 0 <= native_schema <= 8:
            raise InvalidConfiguration(
                f"native_schema must be an int in 0..8, got {native_schema!r}")
        if native_histograms and not _HAS_NATIVE:  # pragma: no cover
            raise InvalidConfiguration(
                "native_histograms=True needs prometheus_client >= 0.22")
        self.enforcer = enforcer
        self.namespace = namespace
        self.buckets = _check_buckets(buckets)
        self.max_rule_ids = max_rule_ids
        self.native_histograms = native_histograms
        self.native_schema = native_schema
        self._les = [floatToGoString(b)  # type: ignore[no-untyped-call]
                     for b in self.buckets] + ["+Inf"]
        # Fine bucket -> classic bucket (the first bound >= its midpoint), once.
        bounds_ns = [b * 1e9 for b in self.buckets]
        self._classic_of = [bisect.bisect_left(bounds_ns, _layout.representative(i))
                            for i in range(_layout.NBUCKETS)]
        self._native_of: Optional[List[int]] = None
        if native_histograms:
            scale = 2 ** native_schema
            # Native bucket k covers (2**((k-1)/scale), 2**(k/scale)] seconds.
            self._native_of = [
                0 if v == 0 else math.ceil(math.log2(v / 1e9) * scale - 1e-9)
                for v in (_layout.representative(i) for i in range(_layout.NBUCKETS))]

    # -- prometheus_client's Collector protocol -------------------------------
    def describe(self) -> Iterable[Metric]:
        """The families without samples (what registering checks for name clashes)."""
        return list(self._families(sampled=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(sampled=True))

    # -- the families -------------------------------------------------------------
    def _families(self, *, sampled: bool) -> Iterator[Metric]:
        ns = self.namespace
        enforcer = self.enforcer
        per_type = enforcer.metrics() if sampled else {}
        audit = enforcer.audit_metrics() if sampled else {"rules": {}}

        calls = CounterMetricFamily(f"{ns}_calls", "Calls of rules of this type, "
                                    "executed or sampled out.", labels=["rule_type"])
        outcomes = CounterMetricFamily(
            f"{ns}_call_outcomes", "Calls by outcome: ok, sampled_out, fallback (violated, "
            "fail open), deny (violated, fail closed), error (fn raised).",
            labels=["rule_type", "outcome"])
        violations = CounterMetricFamily(
            f"{ns}_violations", "Violations by kind (a call over two limits counts once in "
            "each); sampled_out counts calls skipped by sampling.",
            labels=["rule_type", "kind"])
        retries = CounterMetricFamily(f"{ns}_retries", "Transient-error retries started.",
                                      labels=["rule_type"])
        latency = HistogramMetricFamily(
            f"{ns}_latency_seconds", "Elapsed time of every executed call, whatever its "
            "outcome (fastpath's log-linear histogram, mapped onto these buckets).",
            labels=["rule_type"])
        refused = CounterMetricFamily(
            f"{ns}_refused", "Calls refused without running fn, by cause (breaker, quota).",
            labels=["rule_type", "cause"])
        for rule_type, m in per_type.items():
            label = rule_type.value
            calls.add_metric([label], m["calls"])
            violated = m["fail_open"] + m["fail_closed"] + m["errors"]
            for outcome, value in zip(CALL_OUTCOMES, (
                    max(0, m["executed"] - violated), m["sampled_out"], m["fail_open"],
                    m["fail_closed"], m["errors"]), strict=True):
                outcomes.add_metric([label, outcome], value)
            for kind, value in m["violations"].items():
                violations.add_metric([label, _KIND_LABELS[kind]], value)
            retries.add_metric([label], m["retries"])
            # Refusals come with circuit breakers and quotas (not built yet): the
            # series appear when the enforcer's metrics carry {"refused": {cause: n}}.
            for cause, value in (m.get("refused") or {}).items():
                refused.add_metric([label, str(cause)], value)
            self._add_latency(latency, [label], enforcer.latency_histogram(rule_type))
        yield from (calls, outcomes, violations, retries, latency)
        if refused.samples or not sampled:
            yield refused

        yield from self._rule_families(audit["rules"])
        yield from self._registered_families(enforcer if sampled else None)

        events = CounterMetricFamily(f"{ns}_audit_events", "Audit events (violated calls), "
                                     "every one, whatever the sink did with it.")
        failures = CounterMetricFamily(f"{ns}_audit_sink_failures",
                                       "Audit sink (or hook) calls that raised.")
        suppressed = CounterMetricFamily(
            f"{ns}_audit_suppressed", "Audit events the default sink's rate limit did not "
            "write as their own line (counted in the summary lines).")
        if sampled:
            events.add_metric([], audit["events"])
            failures.add_metric([], audit["sink_failures"])
            if audit["suppressed"] is not None:
                suppressed.add_metric([], audit["suppressed"])
        yield from (events, failures)
        if suppressed.samples or not sampled:
            yield suppressed

    def _rule_families(self, rules: Dict[Any, Dict[str, Any]]) -> Iterator[Metric]:
        """Per rule id, from the audit events (violated calls only); registered
        rules have their own families (``_registered_families``)."""
        ns = self.namespace
        violated = CounterMetricFamily(
            f"{ns}_rule_violated_calls", "Violated (audited) calls per rule id, by outcome.",
            labels=["rule_id", "rule_type", "outcome"])
        kinds = CounterMetricFamily(
            f"{ns}_rule_violations", "Violations per rule id, by kind.",
            labels=["rule_id", "rule_type", "kind"])
        merged: Dict[Tuple[str, str], List[int]] = {}
        named = 0
        for rule_type, per_id in rules.items():
            for rule_id, row in per_id.items():
                if rule_id != OTHER_RULE_ID and named < self.max_rule_ids:
                    named += 1
                    key = (str(rule_id), rule_type.value)
                else:
                    key = (OTHER_RULE_ID, rule_type.value)
                acc = merged.setdefault(key, [0] * 6)
                for i, outcome in enumerate(AUDIT_OUTCOMES):
                    acc[i] += row["outcomes"][outcome]
                for i, value in enumerate(row["violations"].values()):
                    acc[3 + i] += value
        kind_labels = [_KIND_LABELS[k] for k in (ConstraintViolationType.TIMEOUT_EXCEEDED,
                                                 ConstraintViolationType.MEMORY_EXCEEDED,
                                                 ConstraintViolationType.CPU_EXCEEDED)]
        for (rule_id, rule_type), acc in merged.items():
            for outcome, value in zip(AUDIT_OUTCOMES, acc[:3], strict=True):
                violated.add_metric([rule_id, rule_type, outcome], value)
            for kind, value in zip(kind_labels, acc[3:], strict=True):
                kinds.add_metric([rule_id, rule_type, kind], value)
        yield violated
        yield kinds

    def _registered_families(self, enforcer: Any) -> Iterator[Metric]:
        """Per registered rule (``enforcer.rule()``): calls, outcomes, refusals,
        latency, the effective deadline and the breaker's state, labelled
        ``rule_id`` and ``rule_type``; the first ``max_rule_ids`` rules only."""
        ns = self.namespace
        labels = ["rule_id", "rule_type"]
        calls = CounterMetricFamily(f"{ns}_rule_calls", "Calls of a registered rule, executed, "
                                    "sampled out or refused.", labels=labels)
        outcomes = CounterMetricFamily(
            f"{ns}_rule_call_outcomes", "Calls of a registered rule by outcome: ok, "
            "sampled_out, fallback, deny, error.", labels=labels + ["outcome"])
        refused = CounterMetricFamily(
            f"{ns}_rule_refused", "Calls of a registered rule refused without running fn, "
            "by cause.", labels=labels + ["cause"])
        latency = HistogramMetricFamily(
            f"{ns}_rule_latency_seconds", "Elapsed time of every executed call of a "
            "registered rule.", labels=labels)
        limit = GaugeMetricFamily(
            f"{ns}_rule_max_exec_ms", "A registered rule's effective max_exec_ms (an "
            "adaptive limit moves it).", labels=labels)
        state = GaugeMetricFamily(
            f"{ns}_breaker_state", "1 for the circuit breaker's current state, 0 for the "
            "others.", labels=labels + ["state"])
        transitions = CounterMetricFamily(
            f"{ns}_breaker_transitions", "State changes of a rule's circuit breaker.",
            labels=labels)
        if enforcer is not None and hasattr(enforcer, "rules"):
            for rule_id, rule in list(enforcer.rules().items())[:self.max_rule_ids]:
                m = rule.metrics()
                key = [str(rule_id), rule.rule_type.value]
                calls.add_metric(key, m["calls"])
                violated = m["fail_open"] + m["fail_closed"] + m["errors"]
                for outcome, n in zip(CALL_OUTCOMES, (
                        max(0, m["executed"] - violated), m["sampled_out"], m["fail_open"],
                        m["fail_closed"], m["errors"]), strict=True):
                    outcomes.add_metric(key + [outcome], n)
                refused.add_metric(key + ["breaker"], m["refused"])
                self._add_latency(latency, key, rule._state.histogram)
                limit.add_metric(key, m["max_exec_ms"])
                breaker = m["breaker"]
                if breaker is not None:
                    for name in ("closed", "open", "half_open", "forced_open", "disabled"):
                        state.add_metric(key + [name], 1.0 if breaker["state"] == name else 0.0)
                    transitions.add_metric(key, breaker["transitions"])
        yield from (calls, outcomes, refused, latency, limit, state, transitions)

    def _add_latency(self, family: HistogramMetricFamily, labels: List[str], hist: Any) -> None:
        # __reduce__ gives one consistent snapshot: the non-empty buckets and the exact sum.
        _, (_, pairs, sum_ns, *_rest) = hist.__reduce__()
        per_bucket = [0] * (len(self.buckets) + 1)
        classic_of = self._classic_of
        for index, count in pairs:
            per_bucket[classic_of[index]] += count
        cumulative, running = [], 0
        for le, count in zip(self._les, per_bucket, strict=True):
            running += count
            cumulative.append((le, running))
        family.add_metric(labels, cumulative, sum_ns / 1e9)
        if self._native_of is not None:
            # The value is only written by the 0.0.4 text format, which cannot
            # carry a native histogram: there it is one extra series, the count.
            family.samples.append(Sample(
                family.name, dict(zip(family._labelnames, labels, strict=True)), running,
                native_histogram=self._native(pairs, running, sum_ns / 1e9)))

    def _native(self, pairs: Sequence[Tuple[int, int]], count: int, sum_s: float) -> Any:
        assert self._native_of is not None
        zero = 0
        by_index: Dict[int, int] = {}
        for index, n in pairs:
            if index == 0:
                zero += n            # the 0 ns bucket: the zero bucket
            else:
                k = self._native_of[index]
                by_index[k] = by_index.get(k, 0) + n
        spans, deltas = [], []
        previous_k, previous_n = None, 0
        for k in sorted(by_index):
            n = by_index[k]
            if previous_k is not None and k == previous_k + 1:
                offset, length = spans[-1]
                spans[-1] = (offset, length + 1)
            else:
                spans.append((k if previous_k is None else k - previous_k - 1, 1))
            deltas.append(n - previous_n)
            previous_k, previous_n = k, n
        return NativeHistogram(
            count_value=count, sum_value=sum_s, schema=self.native_schema,
            zero_threshold=0.0, zero_count=zero,
            pos_spans=[BucketSpan(o, n) for o, n in spans] or None,
            pos_deltas=deltas or None)

    def __repr__(self) -> str:
        return f"<EnforcerCollector namespace={self.namespace!r} of {self.enforcer!r}>"
