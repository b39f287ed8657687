"""enforcer.rule(): registered rules, their counters and the registry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import sysconfig
import time

import pytest

from tests.threads import run_threads


class Events(list):
    def __call__(self, event) -> None:
        self.append(event)


def test_a_rule_runs_fn_under_its_own_constraints_and_counts(fp):
    events = Events()
    e = fp.ConstraintEnforcer(audit_sink=events)
    rule = e.rule("deny-ua", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(20))
    assert rule(abs, -3) == 3
    assert rule(lambda a, *, b: a + b, 1, b=2) == 3
    with pytest.raises(fp.ConstraintViolation):
        rule(time.sleep, 0.5)
    assert events[-1].rule_id == "deny-ua" and events[-1].constraints.max_exec_ms == 20
    m = e.rule_metrics()["deny-ua"]
    assert (m["calls"], m["executed"], m["fail_closed"]) == (3, 3, 1)
    assert m["latency"]["count"] == 3 and m["rule_type"] is fp.RuleType.FAST
    assert m["refused"] == 0 and m["breaker"] is None and m["adaptive"] is None
    # the rule type's own counters are separate
    assert e.metrics()[fp.RuleType.FAST]["calls"] == 0
    assert json.dumps(e.rule_metrics(json=True))
    assert rule.constraints == fp.ExecutionConstraints(20)
    assert rule.rule_type is fp.RuleType.FAST and rule.rule_id == "deny-ua"


def test_constraints_default_to_the_rule_types_profile_and_fallback(fp):
    e = fp.ConstraintEnforcer(fallbacks={fp.RuleType.SEMANTIC: "fb"})
    rule = e.rule("s", fp.RuleType.SEMANTIC)
    assert rule.constraints == e.constraints_for(fp.RuleType.SEMANTIC)
    assert rule.fallback == "fb"
    assert e.rule("t", fp.RuleType.SEMANTIC, fallback=None).fallback is None


def test_the_same_id_gives_the_same_handle_and_conflicts_are_refused(fp):
    e = fp.ConstraintEnforcer()
    breaker = fp.CircuitBreaker()
    rule = e.rule("r", fp.RuleType.FAST, breaker=breaker)
    assert e.rule("r", fp.RuleType.FAST) is rule
    assert e.rule("r", fp.RuleType.FAST, breaker=breaker) is rule
    with pytest.raises(fp.InvalidConfiguration, match="rule_type"):
        e.rule("r", fp.RuleType.SEMANTIC)
    with pytest.raises(fp.InvalidConfiguration, match="breaker"):
        e.rule("r", fp.RuleType.FAST, breaker=fp.CircuitBreaker())
    with pytest.raises(fp.InvalidConfiguration, match="constraints"):
        e.rule("r", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(7))
    assert e.rules() == {"r": rule}


@pytest.mark.parametrize("args, kwargs, match", [
    ((5, "FAST"), {}, "rule_id"),
    (("", "FAST"), {}, "rule_id"),
    (("x", "FAST"), {}, "rule_type"),
    (("x", None), {"constraints": 5}, "rule_type"),
    (("x", "T"), {"constraints": {"max_exec_ms": 5}}, "constraints"),
    (("x", "T"), {"breaker": object()}, "breaker"),
    (("x", "T"), {"adaptive": 99}, "adaptive"),
    (("x", "T"), {"quota": 5}, "quota"),
])
def test_bad_registrations_are_invalid_configuration(fp, args, kwargs, match):
    e = fp.ConstraintEnforcer()
    rule_id, rule_type = args
    rule_type = fp.RuleType.FAST if rule_type == "T" else rule_type
    with pytest.raises(fp.InvalidConfiguration, match=match):
        e.rule(rule_id, rule_type, **kwargs)


def test_a_rules_quota_is_its_handle_quota(fp):
    # Admission through it is tested in tests/test_quota.py.
    e = fp.ConstraintEnforcer()
    quota = fp.Quota(calls=10)
    assert e.rule("q", fp.RuleType.FAST, quota=quota).quota is quota
    assert e.rule("q", fp.RuleType.FAST).quota is quota


def test_fn_errors_propagate_unchanged_and_are_counted(fp):
    e = fp.ConstraintEnforcer()
    rule = e.rule("err", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000))
    err = ValueError("mine")

    def boom():
        raise err

    with pytest.raises(ValueError) as info:
        rule(boom)
    assert info.value is err
    assert rule.metrics()["errors"] == 1


def test_run_async_uses_the_same_state(fp):
    e = fp.ConstraintEnforcer()
    rule = e.rule("a", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000))

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    assert asyncio.run(rule.run_async(double, 4)) == 8
    assert rule(abs, -1) == 1
    assert rule.metrics()["calls"] == 2


def test_the_decorator_uses_a_registered_rule(fp):
    e = fp.ConstraintEnforcer()
    rule = e.rule("dec", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000))

    @e.constrained(fp.RuleType.FAST, rule_id="dec")
    def add(a, b):
        return a + b

    @e.constrained(fp.RuleType.FAST, rule_id="dec")
    async def aadd(a, b):
        return a + b

    assert add(1, 2) == 3
    assert asyncio.run(aadd(1, 2)) == 3
    assert rule.metrics()["calls"] == 2
    with pytest.raises(fp.InvalidConfiguration, match="registered"):
        e.constrained(fp.RuleType.SEMANTIC, rule_id="dec")(add)


def test_counters_are_exact_under_threads(fp):
    e = fp.ConstraintEnforcer()
    rule = e.rule("t", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(10_000))

    def work():
        for i in range(10_000):
            rule(abs, i)

    run_threads(work, [()] * 4)
    m = rule.metrics()
    assert m["calls"] == m["executed"] == m["latency"]["count"] == 40_000


def test_reset_metrics_resets_rules(fp):
    e = fp.ConstraintEnforcer()
    rule = e.rule("z", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000))
    rule(abs, 1)
    e.reset_metrics()
    assert rule.metrics()["calls"] == 0 and rule.metrics()["latency"]["count"] == 0


def test_a_rule_needs_fn(fp):
    e = fp.ConstraintEnforcer()
    rule = e.rule("n", fp.RuleType.FAST)
    with pytest.raises(TypeError):
        rule()


# A child with the GIL off: two threads run the same registered rule (breaker,
# adaptive limit, local quota, histogram) at once, while a third runs away
# under a deadline and must be the one interrupted.
_PARALLEL_RULES = r"""
import sys, threading, time
import fastpath
from fastpath import (AdaptiveLimit, CircuitBreaker, ConstraintEnforcer, ConstraintViolation,
                      ExecutionConstraints, Quota, RuleType)
assert fastpath.IMPLEMENTATION == sys.argv[1], fastpath.IMPLEMENTATION
assert not sys._is_gil_enabled(), "the GIL is on"
N = int(sys.argv[2])
e = ConstraintEnforcer()
rule = e.rule("par", RuleType.FAST, constraints=ExecutionConstraints(10_000),
              breaker=CircuitBreaker(minimum_calls=10**6, window_calls=10**6),
              adaptive=AdaptiveLimit(window_calls=97, min_ms=10_000),
              quota=Quota(calls=10**9, per_s=3600.0))
runaway = e.rule("runaway", RuleType.FAST, constraints=ExecutionConstraints(50))
barrier = threading.Barrier(3)
interrupted = []

def work():
    barrier.wait()
    for i in range(N):
        rule(abs, i)

def spin():
    barrier.wait()
    def forever():
        while True:
            pass
    try:
        runaway(forever)
    except ConstraintViolation:
        interrupted.append(threading.get_ident())

threads = [threading.Thread(target=f) for f in (work, work, spin)]
for t in threads:
    t.start()
for t in threads:
    t.join()
m = rule.metrics()
b = m["breaker"]
usage = rule.quota.store.usage(None)
print(m["calls"], m["executed"], m["latency"]["count"], b["window_calls"], b["recorded"],
      usage["admitted"], m["adaptive"]["windows"], interrupted == [threads[2].ident],
      e.rule_metrics()["runaway"]["fail_closed"])
"""


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="a free-threaded build only")
def test_two_threads_run_rules_at_once_with_the_gil_off(fp):
    """With the GIL off, two threads in one rule's pipeline at once keep every
    count exact (the rule's, its histogram's, its breaker window's, its quota
    bucket's, its adaptive windows), and the watchdog's interrupt of a runaway
    third thread lands on that thread only."""
    n = 20_000 if fp.kind == "compiled" else 4_000
    env = {k: v for k, v in os.environ.items() if k not in ("FASTPATH_NO_EXTENSIONS",)}
    env["PYTHON_GIL"] = "0"
    if fp.kind == "python":
        env["FASTPATH_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-c", _PARALLEL_RULES, fp.kind, str(n)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    calls, executed, latency, window, recorded, admitted, windows, right, closed = (
        out.stdout.split())
    assert int(calls) == int(executed) == int(latency) == int(window) == int(recorded) == 2 * n
    assert int(admitted) == 2 * n
    assert int(windows) == 2 * n // 97
    assert right == "True" and closed == "1"
