"""Registered rules (issue 13): rule(f), with a closed breaker, with an adaptive
limit; and the circuit-breaker peers' ``call`` on the same ``f``.

Every row is a wrapper that catches the FAST profile's occasional deny on a
loaded machine, compared with the same wrapper around ``f()``
(``minus="call_f"``), like ``execute`` in test_enforcer.py.
"""

from __future__ import annotations

import pytest
from _support import f, measure

from fastpath import adaptive, breaker


def _rule_row(benchmark, fp, key, *, prepare=None, **rule_kwargs):
    """``prepare(enforcer)`` (bench/test_otel_rules.py) runs before the
    measurement and returns what to call after it."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    rule = enforcer.rule("bench", fp.RuleType.FAST, **rule_kwargs)
    violation = fp.ConstraintViolation
    denied = [0]

    def call_rule():
        try:
            return rule(f)
        except violation:
            denied[0] += 1

    close = prepare(enforcer) if prepare is not None else None
    for _ in range(1000):       # warm up: measure() sizes its inner loop from 3 calls
        call_rule()
    try:
        measure(benchmark, "rules", key, fp.kind, call_rule, minus="call_f")
    finally:
        if close is not None:
            close()
    m = rule.metrics()
    assert m["calls"] == m["executed"] > 0
    benchmark.extra_info.update(denied=denied[0], calls=m["calls"])
    return rule


def test_rule_call(benchmark, fp):
    """``rule(f)`` of a registered FAST rule: minus ``f()`` is goal 19."""
    _rule_row(benchmark, fp, "rule")


def test_rule_call_closed_breaker(benchmark, fp):
    """The same with a closed CircuitBreaker (never trips: failure_rate 1.0): goal 20."""
    b = breaker._bind_breaker(fp.module)(failure_rate=1.0)
    rule = _rule_row(benchmark, fp, "rule_breaker", breaker=b)
    assert rule.breaker.metrics()["state"] == "closed"


def test_rule_call_adaptive(benchmark, fp):
    """The same with an AdaptiveLimit (1000-call windows, kept at the 5 ms cap by
    min_ms so the deny rate is unchanged): goal 21."""
    rule = _rule_row(benchmark, fp, "rule_adaptive",
                     adaptive=adaptive.AdaptiveLimit(window_calls=1000, min_ms=5))
    assert rule.metrics()["adaptive"]["windows"] > 0


# -- the peers: a closed breaker's call(f) ---------------------------------------

def test_peer_pybreaker_rule(benchmark):
    pybreaker = pytest.importorskip("pybreaker")
    call = pybreaker.CircuitBreaker().call

    def breaker_call():
        return call(f)

    measure(benchmark, "rules", "rule_breaker", "pybreaker", breaker_call, minus="call_f")


def test_peer_circuitbreaker_rule(benchmark):
    circuitbreaker = pytest.importorskip("circuitbreaker")
    call = circuitbreaker.CircuitBreaker().call

    def breaker_call():
        return call(f)

    measure(benchmark, "rules", "rule_breaker", "circuitbreaker", breaker_call, minus="call_f")


def test_peer_purgatory_rule(benchmark):
    purgatory = pytest.importorskip("purgatory")
    guarded = purgatory.SyncCircuitBreakerFactory()("bench")(f)

    def breaker_call():
        return guarded()

    measure(benchmark, "rules", "rule_breaker", "purgatory", breaker_call, minus="call_f")
