"""AdaptiveLimit: convergence and bounds, with recorded latencies and a fake clock."""

from __future__ import annotations

import pytest

MS = 1_000_000


class Events(list):
    def __call__(self, event) -> None:
        self.append(event)


def make(fp, max_exec_ms=100, **kw):
    events = Events()
    e = fp.ConstraintEnforcer(audit_sink=events, audit_rate_per_s=None)
    rule = e.rule("adapt", fp.RuleType.SEMANTIC,
                  constraints=fp.ExecutionConstraints(max_exec_ms, fail_closed_on_timeout=False),
                  adaptive=fp.AdaptiveLimit(**kw))
    return e, rule, events


def feed(rule, ns, n, timed_out=False):
    for _ in range(n):
        limit = rule._observe(ns, timed_out)
    return limit


def test_starts_at_the_cap_and_follows_a_latency_step_within_three_windows(fp):
    e, rule, events = make(fp, window_calls=50, headroom=1.5, percentile=99.0)
    assert rule.constraints.max_exec_ms == 100
    assert feed(rule, 10 * MS, 50) == 15                  # ceil(10 ms * 1.5)
    # step up to 40 ms: calls under a 15 ms limit time out (censored)
    limits = [feed(rule, 15 * MS, 50, timed_out=True)]     # back to the cap
    limits.append(feed(rule, 40 * MS, 50))                 # the real latency
    assert limits == [100, 60]
    # step down to 4 ms
    assert feed(rule, 4 * MS, 50) == 6
    changes = [(ev.details["from_ms"], ev.details["to_ms"]) for ev in events
               if ev.event_type == "limit_changed"]
    assert changes == [(100, 15), (15, 100), (100, 60), (60, 6)]
    assert rule.metrics()["adaptive"]["changes"] == 4
    assert rule.metrics()["max_exec_ms"] == 6


def test_uses_only_the_last_window_not_all_time(fp):
    e, rule, _ = make(fp, window_calls=100)
    feed(rule, 50 * MS, 100)
    assert rule.constraints.max_exec_ms == 75
    assert feed(rule, 2 * MS, 100) == 3


def test_never_above_the_cap_nor_below_min_ms(fp):
    e, rule, _ = make(fp, window_calls=10, min_ms=5, max_ms=40)
    assert rule.constraints.max_exec_ms == 40
    assert feed(rule, 1000, 10) == 5                      # 1 us * 1.5 -> min_ms
    assert feed(rule, 90 * MS, 10) == 40                  # max_ms
    assert rule.configured_constraints.max_exec_ms == 100
    assert rule.constraints.cpu_shares == rule.configured_constraints.cpu_shares


def test_time_windows_with_a_fake_clock(fp):
    now = [0.0]
    e, rule, _ = make(fp, window_calls=1000, window_s=1.0, clock=lambda: now[0])
    feed(rule, 10 * MS, 30)
    assert rule.constraints.max_exec_ms == 100            # the window is still open
    now[0] += 1.0
    assert feed(rule, 10 * MS, 1) == 15


def test_real_calls_feed_the_window(fp):
    import time

    e, rule, _ = make(fp, max_exec_ms=5000, window_calls=5, min_ms=1)
    for _ in range(5):
        rule(time.sleep, 0.01)
    # each call slept >= 10 ms: the limit is at least 15 ms and at most the cap
    assert 15 <= rule.constraints.max_exec_ms <= 5000


@pytest.mark.parametrize("kwargs, match", [
    ({"percentile": 0}, "percentile"),
    ({"percentile": 101}, "percentile"),
    ({"headroom": 0.5}, "headroom"),
    ({"headroom": "2"}, "headroom"),
    ({"min_ms": 0}, "min_ms"),
    ({"max_ms": 0}, "max_ms"),
    ({"min_ms": 10, "max_ms": 5}, "max_ms"),
    ({"window_calls": 0}, "window_calls"),
    ({"window_s": -1}, "window_s"),
    ({"clock": 3}, "clock"),
])
def test_bad_arguments_are_invalid_configuration(fp, kwargs, match):
    with pytest.raises(fp.InvalidConfiguration, match=match):
        fp.AdaptiveLimit(**kwargs)


def test_max_ms_above_the_configured_limit_is_refused(fp):
    e = fp.ConstraintEnforcer()
    with pytest.raises(fp.InvalidConfiguration, match="hard cap"):
        e.rule("x", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(10),
               adaptive=fp.AdaptiveLimit(max_ms=20))
    with pytest.raises(fp.InvalidConfiguration, match="min_ms"):
        e.rule("y", fp.RuleType.FAST, constraints=fp.ExecutionConstraints(10),
               adaptive=fp.AdaptiveLimit(min_ms=20))


def test_the_settings_are_immutable(fp):
    limit = fp.AdaptiveLimit()
    with pytest.raises(AttributeError):
        limit.headroom = 3.0
