"""fastpath.prometheus.EnforcerCollector, scraped over HTTP from prometheus_client's server."""

from __future__ import annotations

import math
import re
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from fastpath import _histogram_shared
from fastpath.audit import OTHER_RULE_ID
from fastpath.prometheus import DEFAULT_BUCKETS, EnforcerCollector

OM2 = "application/openmetrics-text; version=2.0.0; charset=utf-8"


@pytest.fixture
def scrape():
    """scrape(collector, accept=None) -> the body of a real HTTP GET of /metrics,
    served by prometheus_client.start_http_server on a free loopback port."""
    servers = []

    def get(collector, accept=None):
        registry = CollectorRegistry()
        registry.register(collector)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        port = server.server_address[1]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return response.read().decode()

    yield get
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def samples(text):
    """{(sample name, frozenset(labels)): value} of a Prometheus text scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed, name, **labels):
    return parsed[(name, frozenset(labels.items()))]


# The profiles' budget: the calls that must fit share the rule types with the
# calls that overrun it (a LATE sleep), so it is seconds, which no scheduler
# delay eats; the overrunning calls pay for it.
TIGHT_MS = 2000
LATE = 2.05


def small(fp, **changes):
    C = fp.ExecutionConstraints
    profiles = dict(
        fast=C(TIGHT_MS), semantic=C(TIGHT_MS, fail_closed_on_timeout=False, max_retries=2,
                                     retry_backoff_ms=1),
        wasm_hook=C(TIGHT_MS), observational=C(TIGHT_MS, sampling_rate=0.0,
                                               fail_closed_on_timeout=False))
    profiles.update(changes)
    return profiles


def test_a_real_scrape_shows_calls_outcomes_violations_retries_and_audit(fp, scrape):
    e = fp.ConstraintEnforcer.with_constraints(**small(fp), preempt=False,
                                               audit_sink=lambda event: None)
    for i in range(50):
        e.execute_with_constraints(fp.RuleType.FAST, abs, -i)
    deny = e.constrained(fp.RuleType.FAST, rule_id="deny-ua")(time.sleep)
    for _ in range(2):
        with pytest.raises(fp.ConstraintViolation):
            deny(LATE)
    e.execute_with_constraints(fp.RuleType.SEMANTIC, time.sleep, LATE)   # fallback
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("again")

    e.execute_with_constraints(fp.RuleType.SEMANTIC, flaky)              # 2 retries
    with pytest.raises(KeyError):
        e.execute_with_constraints(fp.RuleType.WASM_HOOK, {}.__getitem__, "x")
    for _ in range(7):
        e.execute_with_constraints(fp.RuleType.OBSERVATIONAL, abs, 1)    # sampled out
    assert "execute_with_constraints" not in vars(e)     # nothing wraps the per-call path

    parsed = samples(scrape(EnforcerCollector(e)))
    assert value(parsed, "fastpath_calls_total", rule_type="fast") == 52
    assert value(parsed, "fastpath_call_outcomes_total", rule_type="fast", outcome="ok") == 50
    assert value(parsed, "fastpath_call_outcomes_total", rule_type="fast", outcome="deny") == 2
    assert value(parsed, "fastpath_call_outcomes_total", rule_type="semantic",
                 outcome="fallback") == 1
    assert value(parsed, "fastpath_call_outcomes_total", rule_type="semantic", outcome="ok") == 1
    assert value(parsed, "fastpath_call_outcomes_total", rule_type="wasm_hook",
                 outcome="error") == 1
    assert value(parsed, "fastpath_call_outcomes_total", rule_type="observational",
                 outcome="sampled_out") == 7
    assert value(parsed, "fastpath_violations_total", rule_type="fast",
                 kind="timeout_exceeded") == 2
    assert value(parsed, "fastpath_violations_total", rule_type="observational",
                 kind="sampled_out") == 7
    assert value(parsed, "fastpath_retries_total", rule_type="semantic") == 2
    assert value(parsed, "fastpath_latency_seconds_count", rule_type="fast") == 52
    assert value(parsed, "fastpath_latency_seconds_bucket", rule_type="fast", le="+Inf") == 52
    assert value(parsed, "fastpath_latency_seconds_bucket", rule_type="fast", le="1.0") == 50
    assert value(parsed, "fastpath_latency_seconds_count", rule_type="observational") == 0
    assert value(parsed, "fastpath_rule_violated_calls_total", rule_id="deny-ua",
                 rule_type="fast", outcome="deny") == 2
    assert value(parsed, "fastpath_rule_violations_total", rule_id="sleep",
                 rule_type="semantic", kind="timeout_exceeded") == 1
    assert value(parsed, "fastpath_audit_events_total") == 3
    assert value(parsed, "fastpath_audit_sink_failures_total") == 0
    # A custom sink: no suppressed series (only the default sink rate-limits).
    assert not any(name == "fastpath_audit_suppressed_total" for name, _ in parsed)


def test_latency_buckets_are_the_histogram_mapped_onto_the_bounds(fp, scrape):
    e = fp.ConstraintEnforcer()
    hist = e.latency_histogram(fp.RuleType.SEMANTIC)
    values_ns = [0, 200, 999, 1_000, 1_001, 40_000, 2_600_000, 3 * 10**9, 20 * 10**9]
    for ns in values_ns:
        hist.record(ns)
    parsed = samples(scrape(EnforcerCollector(e)))
    for bound in DEFAULT_BUCKETS:
        expected = sum(1 for ns in values_ns
                       if _histogram_shared.representative(_histogram_shared.bucket_index(ns))
                       <= bound * 1e9)
        got = value(parsed, "fastpath_latency_seconds_bucket", rule_type="semantic",
                    le=repr(bound) if bound < 1e-4 else str(bound))
        assert got == expected, bound
    assert value(parsed, "fastpath_latency_seconds_bucket", rule_type="semantic",
                 le="+Inf") == len(values_ns)
    assert math.isclose(value(parsed, "fastpath_latency_seconds_sum", rule_type="semantic"),
                        sum(values_ns) / 1e9, rel_tol=1e-12)


def test_custom_buckets(fp, scrape):
    e = fp.ConstraintEnforcer()
    e.latency_histogram(fp.RuleType.FAST).record(1_500_000)
    parsed = samples(scrape(EnforcerCollector(e, buckets=[0.001, 0.002], namespace="gw")))
    assert value(parsed, "gw_latency_seconds_bucket", rule_type="fast", le="0.001") == 0
    assert value(parsed, "gw_latency_seconds_bucket", rule_type="fast", le="0.002") == 1
    assert value(parsed, "gw_calls_total", rule_type="fast") == 0


def test_rule_ids_past_the_cap_are_added_up_under_other(fp, scrape):
    got = []
    # Only calls that overrun: a tight 100 ms SEMANTIC budget is enough.
    semantic = fp.ExecutionConstraints(100, fail_closed_on_timeout=False)
    e = fp.ConstraintEnforcer.with_constraints(**small(fp, semantic=semantic), preempt=False,
                                               audit_sink=got.append)
    for rule_id in ("r1", "r2", "r3", "r4", "r1"):
        e.constrained(fp.RuleType.SEMANTIC, rule_id=rule_id)(time.sleep)(0.105)
    parsed = samples(scrape(EnforcerCollector(e, max_rule_ids=2)))
    rule_ids = {dict(labels)["rule_id"] for name, labels in parsed
                if name == "fastpath_rule_violated_calls_total"}
    assert rule_ids == {"r1", "r2", OTHER_RULE_ID}
    outcome = dict(rule_type="semantic", outcome="fallback")
    assert value(parsed, "fastpath_rule_violated_calls_total", rule_id="r1", **outcome) == 2
    assert value(parsed, "fastpath_rule_violated_calls_total", rule_id=OTHER_RULE_ID,
                 **outcome) == 2


def test_the_default_sink_exposes_its_suppressed_count(fp, scrape):
    C = fp.ExecutionConstraints
    c = C(1000, cpu_shares=0, fail_closed_on_timeout=False)
    e = fp.ConstraintEnforcer.with_constraints(c, c, c, c, preempt=False, audit_rate_per_s=0)
    for _ in range(30):
        e.execute_with_constraints(fp.RuleType.SEMANTIC, sum, range(2000))
    parsed = samples(scrape(EnforcerCollector(e)))
    assert value(parsed, "fastpath_audit_suppressed_total") == 30
    assert value(parsed, "fastpath_audit_events_total") == 30


def test_native_histogram_in_openmetrics_2(fp, scrape):
    e = fp.ConstraintEnforcer()
    hist = e.latency_histogram(fp.RuleType.FAST)
    values_ns = [0, 150, 151, 90_000, 1_234_567, 1_234_567, 5 * 10**9]
    for ns in values_ns:
        hist.record(ns)
    collector = EnforcerCollector(e, native_histograms=True, native_schema=3)
    text = scrape(collector, accept=OM2)
    (line,) = [ln for ln in text.splitlines()
               if ln.startswith('fastpath_latency_seconds{rule_type="fast"}')]
    families = {f.name: f for f in parse_openmetrics(text)}
    (native,) = [s.native_histogram for s in families["fastpath_latency_seconds"].samples
                 if s.native_histogram and s.labels["rule_type"] == "fast"]
    assert native.count_value == len(values_ns) and native.schema == 3
    assert native.zero_count == 1
    assert math.isclose(native.sum_value, sum(values_ns) / 1e9, rel_tol=1e-12)
    # Decode the spans and deltas from the exposition and check every value's bucket.
    spans = [tuple(map(int, s.split(":")))
             for s in re.search(r"positive_spans:\[([^\]]*)\]", line).group(1).split(",")]
    deltas = [int(d) for d in re.search(r"positive_deltas:\[([^\]]*)\]", line).group(1)
              .split(",")]
    buckets, index, running, i = {}, 0, 0, 0
    for n_span, (offset, length) in enumerate(spans):
        index = offset if n_span == 0 else index + offset
        for _ in range(length):
            running += deltas[i]
            buckets[index] = running
            index += 1
            i += 1
    expected = {}
    for ns in values_ns[1:]:
        k = math.ceil(math.log2(ns / 1e9) * 8 - 1e-9)
        expected[k] = expected.get(k, 0) + 1
    assert {k: n for k, n in buckets.items() if n} == expected
    # Classic buckets are still there, and OpenMetrics 1.0 and the 0.0.4 text
    # format leave the native histogram out (the latter shows its count).
    assert 'fastpath_latency_seconds_bucket{le="+Inf",rule_type="fast"} 7' in text
    assert "positive_spans" not in scrape(collector, accept="application/openmetrics-text")
    plain = samples(scrape(collector))
    assert value(plain, "fastpath_latency_seconds", rule_type="fast") == 7


def test_refusals_appear_when_the_enforcers_metrics_report_them(fp, scrape):
    """The slot for circuit breakers and quotas: metrics entries with "refused"."""

    class WithRefusals(fp.ConstraintEnforcer):
        def metrics(self, *, json=False):
            out = super().metrics(json=json)
            out[fp.RuleType.FAST]["refused"] = {"breaker": 3, "quota": 1}
            return out

    parsed = samples(scrape(EnforcerCollector(WithRefusals())))
    assert value(parsed, "fastpath_refused_total", rule_type="fast", cause="breaker") == 3
    assert value(parsed, "fastpath_refused_total", rule_type="fast", cause="quota") == 1
    plain = samples(scrape(EnforcerCollector(fp.ConstraintEnforcer())))
    assert not any(name == "fastpath_refused_total" for name, _ in plain)


def test_registering_twice_in_one_registry_is_refused_by_name(fp):
    e = fp.ConstraintEnforcer()
    registry = CollectorRegistry()
    registry.register(EnforcerCollector(e))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(EnforcerCollector(e))
    registry.register(EnforcerCollector(e, namespace="second"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(namespace="bad-name"), "namespace"),
    (dict(namespace="1x"), "namespace"),
    (dict(buckets=[0.2, 0.1]), "buckets"),
    (dict(buckets=[0, 1]), "buckets"),
    (dict(buckets="fast"), "buckets"),
    (dict(max_rule_ids=-1), "max_rule_ids"),
    (dict(native_histograms=1), "native_histograms"),
    (dict(native_schema=9), "native_schema"),
])
def test_bad_arguments_are_invalid_configuration(fp, kwargs, match):
    with pytest.raises(fp.InvalidConfiguration, match=match):
        EnforcerCollector(fp.ConstraintEnforcer(), **kwargs)
    with pytest.raises(fp.InvalidConfiguration, match="ConstraintEnforcer"):
        EnforcerCollector(object())


def test_registered_rules_have_their_own_series(fp, scrape):
    e = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    breaker = fp.CircuitBreaker(minimum_calls=1, window_calls=1)
    rule = e.rule("deny-ua", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000),
                  breaker=breaker)
    rule(abs, -1)

    def boom():
        raise ValueError

    with pytest.raises(ValueError):
        rule(boom)
    with pytest.raises(fp.ResourceExhausted):
        rule(abs, -1)
    parsed = samples(scrape(EnforcerCollector(e)))
    labels = {"rule_id": "deny-ua", "rule_type": "fast"}
    assert value(parsed, "fastpath_rule_calls_total", **labels) == 3
    assert value(parsed, "fastpath_rule_call_outcomes_total", outcome="ok", **labels) == 1
    assert value(parsed, "fastpath_rule_call_outcomes_total", outcome="error", **labels) == 1
    assert value(parsed, "fastpath_rule_refused_total", cause="breaker", **labels) == 1
    assert value(parsed, "fastpath_rule_latency_seconds_count", **labels) == 2
    assert value(parsed, "fastpath_rule_max_exec_ms", **labels) == 5000
    assert value(parsed, "fastpath_breaker_state", state="open", **labels) == 1
    assert value(parsed, "fastpath_breaker_state", state="closed", **labels) == 0
    assert value(parsed, "fastpath_breaker_transitions_total", **labels) == 1
