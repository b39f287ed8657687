"""CircuitBreaker: the state machine on both cores, with an injectable clock."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.threads import run_threads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events(list):
    def __call__(self, event) -> None:
        self.append(event)

    def circuit(self):
        return [(e.details["from"], e.details["to"], e.details["reason"])
                for e in self if e.event_type == "circuit_state"]


def _raise(exc):
    raise exc


def make(fp, *, profile=None, **kw):
    clock = kw.pop("clock", Clock())
    settings = dict(minimum_calls=4, window_calls=4, open_ms=1000, half_open_calls=2)
    settings.update(kw)
    breaker = fp.CircuitBreaker(clock=clock, **settings)
    events = Events()
    e = fp.ConstraintEnforcer(audit_sink=events, audit_rate_per_s=None)
    rule = e.rule("guarded", fp.RuleType.FAST,
                  constraints=profile or fp.ExecutionConstraints(5000), breaker=breaker)
    return e, rule, breaker, clock, events


def fail(rule, n=1):
    for _ in range(n):
        with pytest.raises(ValueError):
            rule(_raise, ValueError("boom"))


def test_opens_on_errors_refuses_without_running_fn_then_half_open_closes(fp):
    e, rule, breaker, clock, events = make(fp)
    assert breaker.state is fp.CircuitState.CLOSED
    rule(abs, -1)
    rule(abs, -1)
    fail(rule, 1)
    assert breaker.state is fp.CircuitState.CLOSED      # 1 of 3: below minimum_calls
    fail(rule, 1)                                       # 2 of 4 failed: rate 0.5
    assert breaker.state is fp.CircuitState.OPEN
    ran = []
    with pytest.raises(fp.ResourceExhausted, match="guarded"):
        rule(ran.append, 1)
    assert ran == []
    clock.now += 0.999
    with pytest.raises(fp.ResourceExhausted):
        rule(ran.append, 1)
    clock.now += 0.002
    assert rule(abs, -5) == 5                           # a probe
    assert breaker.state is fp.CircuitState.HALF_OPEN
    assert rule(abs, -6) == 6                           # second probe: closes
    assert breaker.state is fp.CircuitState.CLOSED
    assert events.circuit() == [("closed", "open", "failure_rate"),
                                ("open", "half_open", "open_elapsed"),
                                ("half_open", "closed", "probes_succeeded")]
    m = e.rule_metrics()["guarded"]
    assert m["refused"] == 2 and m["breaker"]["refused"] == 2
    assert m["breaker"]["transitions"] == 3
    assert m["calls"] == 8 and m["executed"] == 6
    assert ran == []


def test_a_refused_fail_open_call_returns_the_fallback(fp):
    clock = Clock()
    breaker = fp.CircuitBreaker(minimum_calls=1, window_calls=1, clock=clock)
    e = fp.ConstraintEnforcer(audit_sink=Events())
    rule = e.rule("soft", fp.RuleType.SEMANTIC, fallback="fb", breaker=breaker,
                  constraints=fp.ExecutionConstraints(5000, fail_closed_on_timeout=False))
    fail(rule)
    assert breaker.state is fp.CircuitState.OPEN
    ran = []
    assert rule(ran.append, 1) == "fb"
    assert ran == []


@pytest.mark.parametrize("kind", ["timeout", "cpu", "memory", "error"])
def test_opens_on_each_failure_class(fp, kind):
    profiles = {
        "timeout": fp.ExecutionConstraints(20, fail_closed_on_timeout=False),
        "cpu": fp.ExecutionConstraints(5000, cpu_shares=0, fail_closed_on_timeout=False),
        "memory": fp.ExecutionConstraints(5000, memory_limit_bytes=100_000,
                                          fail_closed_on_timeout=False),
        "error": fp.ExecutionConstraints(5000),
    }
    e, rule, breaker, _, events = make(fp, profile=profiles[kind], minimum_calls=1,
                                       window_calls=1, record=(kind,))

    def burn_cpu():
        end = time.thread_time() + 0.01
        while time.thread_time() < end:
            pass

    def run():
        if kind == "timeout":
            rule(time.sleep, 0.1)
        elif kind == "cpu":
            rule(burn_cpu)
        elif kind == "memory":
            rule(lambda: fp.current_budget().charge_memory(1_000_000))   # portable to the twin
        else:
            fail(rule)

    run()
    assert breaker.state is fp.CircuitState.OPEN
    assert events.circuit()[0][2] == "failure_rate"


def test_a_violation_kind_not_recorded_is_no_failure(fp):
    e, rule, breaker, _, _ = make(fp, minimum_calls=1, window_calls=1, record=("timeout",),
                                  profile=fp.ExecutionConstraints(5000))
    fail(rule, 3)                       # errors are not recorded
    assert breaker.state is fp.CircuitState.CLOSED


def test_a_transient_error_recovered_by_a_retry_is_no_failure(fp):
    e, rule, breaker, _, _ = make(fp, minimum_calls=1, window_calls=1,
                                  profile=fp.ExecutionConstraints(5000, max_retries=2,
                                                                  retry_backoff_ms=0))
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("again")
        return "ok"

    assert rule(flaky) == "ok"
    assert breaker.state is fp.CircuitState.CLOSED
    assert breaker.metrics()["window_failures"] == 0 and breaker.metrics()["recorded"] == 1


def test_opens_on_slow_calls(fp):
    e, rule, breaker, _, events = make(fp, slow_call_ms=1, slow_call_rate=0.5,
                                       failure_rate=1.0, minimum_calls=2, window_calls=2)
    rule(time.sleep, 0.02)
    rule(abs, 1)
    assert breaker.state is fp.CircuitState.OPEN
    assert events.circuit() == [("closed", "open", "slow_call_rate")]


def test_the_count_window_forgets_old_calls(fp):
    e, rule, breaker, _, _ = make(fp, minimum_calls=4, window_calls=4, failure_rate=0.75)
    fail(rule, 2)
    for _ in range(4):
        rule(abs, 1)                    # the two failures fall out of the window
    fail(rule, 2)
    assert breaker.state is fp.CircuitState.CLOSED
    assert breaker.metrics()["window_failures"] == 2


def test_the_time_window_forgets_old_calls(fp):
    clock = Clock()
    e, rule, breaker, _, _ = make(fp, clock=clock, minimum_calls=3, window_s=10.0)
    fail(rule, 2)
    clock.now += 11                     # both failures expire
    rule(abs, 1)
    rule(abs, 1)
    fail(rule, 1)
    assert breaker.state is fp.CircuitState.CLOSED
    assert breaker.metrics()["window_calls"] == 3
    fail(rule, 1)                       # 2 of 4 within 10 s
    assert breaker.state is fp.CircuitState.OPEN


def test_reopening_backs_off_up_to_the_cap_and_closing_resets_it(fp):
    e, rule, breaker, clock, events = make(fp, minimum_calls=1, window_calls=1,
                                           half_open_calls=1, open_ms=100, open_backoff=3.0,
                                           max_open_ms=500)
    fail(rule)
    assert breaker.metrics()["open_ms"] == 100
    for expected in (300, 500, 500):
        clock.now += breaker.metrics()["open_ms"] / 1000 + 0.001
        fail(rule)                                      # the probe fails: re-open
        assert breaker.state is fp.CircuitState.OPEN
        assert breaker.metrics()["open_ms"] == expected
    clock.now += 0.499
    with pytest.raises(fp.ResourceExhausted):
        rule(abs, 1)
    clock.now += 0.002
    rule(abs, 1)
    assert breaker.state is fp.CircuitState.CLOSED
    assert breaker.metrics()["open_ms"] == 100
    assert [c[2] for c in events.circuit()].count("probes_failed") == 3


def test_half_open_too_long_reopens(fp):
    e, rule, breaker, clock, events = make(fp, minimum_calls=1, window_calls=1,
                                           half_open_calls=2, max_half_open_ms=50)
    fail(rule)
    clock.now += 1.001
    rule(abs, 1)                                        # one probe of two
    clock.now += 0.051
    with pytest.raises(fp.ResourceExhausted):
        rule(abs, 1)
    assert breaker.state is fp.CircuitState.OPEN
    assert events.circuit()[-1] == ("half_open", "open", "half_open_timeout")


def test_half_open_admits_exactly_half_open_calls_concurrent_probes(fp):
    e, rule, breaker, clock, events = make(fp, minimum_calls=1, window_calls=1,
                                           half_open_calls=3)
    fail(rule)
    clock.now += 1.001
    release = threading.Event()
    entered, refused, lock = [], [], threading.Lock()
    start = threading.Barrier(8)

    def probe():
        with lock:
            entered.append(1)
        release.wait(30)
        return "probed"

    def worker():
        start.wait()
        try:
            rule(probe)
        except fp.ResourceExhausted:
            with lock:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(entered) + len(refused) < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(entered) == 3 and len(refused) == 5
    assert breaker.metrics()["probes_in_flight"] == 3
    release.set()
    for t in threads:
        t.join()
    assert breaker.state is fp.CircuitState.CLOSED


def test_manual_control(fp):
    e, rule, breaker, clock, events = make(fp, minimum_calls=1, window_calls=1)
    breaker.force_open()
    ran = []
    with pytest.raises(fp.ResourceExhausted):
        rule(ran.append, 1)
    clock.now += 1e6
    with pytest.raises(fp.ResourceExhausted):          # forced: no probing
        rule(ran.append, 1)
    breaker.disable()
    fail(rule, 3)
    assert breaker.state is fp.CircuitState.DISABLED and breaker.metrics()["recorded"] == 0
    breaker.reset()
    assert breaker.state is fp.CircuitState.CLOSED
    fail(rule)
    assert breaker.state is fp.CircuitState.OPEN
    assert ran == []
    assert events.circuit() == [("closed", "forced_open", "force_open"),
                                ("forced_open", "disabled", "disable"),
                                ("disabled", "closed", "reset"),
                                ("closed", "open", "failure_rate")]


def test_counts_are_exact_under_threads(fp):
    e, rule, breaker, _, _ = make(fp, minimum_calls=10**6, window_calls=10**6)

    def work():
        for i in range(5000):
            if i % 5 == 0:
                with pytest.raises(ValueError):
                    rule(_raise, ValueError())
            else:
                rule(abs, i)

    run_threads(work, [()] * 4)
    m = breaker.metrics()
    assert m["window_calls"] == m["recorded"] == 20_000
    assert m["window_failures"] == 4000
    rm = rule.metrics()
    assert rm["calls"] == rm["executed"] == 20_000 and rm["errors"] == 4000


def test_sync_and_async_calls_share_one_breaker(fp):
    e, rule, breaker, clock, events = make(fp, minimum_calls=2, window_calls=2)

    async def boom():
        await asyncio.sleep(0)
        raise ValueError("async boom")

    with pytest.raises(ValueError):
        asyncio.run(rule.run_async(boom))
    fail(rule)
    assert breaker.state is fp.CircuitState.OPEN

    async def ok():
        return "ran"

    with pytest.raises(fp.ResourceExhausted):
        asyncio.run(rule.run_async(ok))
    clock.now += 1.001
    assert asyncio.run(rule.run_async(ok)) == "ran"     # an async probe
    assert rule(abs, -2) == 2                           # a sync probe: closes
    assert breaker.state is fp.CircuitState.CLOSED


def test_one_breaker_may_guard_several_rules(fp):
    clock = Clock()
    breaker = fp.CircuitBreaker(minimum_calls=2, window_calls=2, clock=clock)
    events = Events()
    e = fp.ConstraintEnforcer(audit_sink=events, audit_rate_per_s=None)
    a = e.rule("a", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000), breaker=breaker)
    b = e.rule("b", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(5000), breaker=breaker)
    fail(a)
    fail(b)
    assert breaker.state is fp.CircuitState.OPEN
    with pytest.raises(fp.ResourceExhausted):
        a(abs, 1)
    assert sorted(ev.rule_id for ev in events if ev.event_type == "circuit_state") == ["a", "b"]


def test_an_interrupt_from_outside_frees_the_probe_slot(fp):
    e, rule, breaker, clock, _ = make(fp, minimum_calls=1, window_calls=1, half_open_calls=1)
    fail(rule)
    clock.now += 1.001

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rule(interrupted)
    assert breaker.state is fp.CircuitState.HALF_OPEN
    assert rule(abs, -1) == 1                           # the slot was given back
    assert breaker.state is fp.CircuitState.CLOSED


def test_a_breaker_of_the_other_core_is_refused(fp):
    from fastpath import _budget, _budget_py
    from fastpath import breaker as breaker_module

    other_core = _budget_py if fp.core is _budget else _budget
    other = breaker_module._bind_breaker(other_core)()
    e = fp.ConstraintEnforcer()
    with pytest.raises(fp.InvalidConfiguration, match="breaker"):
        e.rule("x", fp.RuleType.FAST, breaker=other)


@pytest.mark.parametrize("kwargs, match", [
    ({"failure_rate": 0}, "failure_rate"),
    ({"failure_rate": 1.5}, "failure_rate"),
    ({"failure_rate": "0.5"}, "failure_rate"),
    ({"slow_call_rate": float("nan")}, "slow_call_rate"),
    ({"slow_call_ms": -1}, "slow_call_ms"),
    ({"minimum_calls": 0}, "minimum_calls"),
    ({"minimum_calls": 200}, "minimum_calls"),
    ({"window_calls": 2.5}, "window_calls"),
    ({"window_s": 0}, "window_s"),
    ({"open_ms": 0}, "open_ms"),
    ({"open_backoff": 0.5}, "open_backoff"),
    ({"max_open_ms": 10}, "max_open_ms"),
    ({"half_open_calls": 0}, "half_open_calls"),
    ({"max_half_open_ms": 0}, "max_half_open_ms"),
    ({"record": "error"}, "record"),
    ({"record": ("errors",)}, "record"),
    ({"clock": 5}, "clock"),
])
def test_bad_arguments_are_invalid_configuration(fp, kwargs, match):
    with pytest.raises(fp.InvalidConfiguration, match=match):
        fp.CircuitBreaker(**kwargs)
