"""Quotas (issue 14): what a quota adds to a rule type's call, the local store vs
RedisQuotaStore, and the peers that make one Redis round trip per call.

All rows time the same wrapper around ``execute_with_constraints(RuleType.FAST, f)``
(violations caught and counted, as in ``bench/test_enforcer.py``), so ratios
between them are the quota's own cost.  The Redis rows run against a
redis-server this module starts (``tests/redis_server.py``), on loopback.
Round trips are counted by the server (``INFO commandstats``).
"""

from __future__ import annotations

import time

import pytest
from _support import f, measure
from test_enforcer import _execute_fast_of

pytest.importorskip("redis")

import redis  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402

GROUP = "quota"
# Far more than a benchmark spends: no call is refused.
HUGE = dict(calls=10**12, per_s=1.0)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


# Script calls, each one round trip.  Redis also counts the commands a script runs
# (HMGET, HSET, ... inside the Lua) in commandstats: those are not round trips.
_SCRIPT_CALLS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro",
                 "cmdstat_fcall", "cmdstat_fcall_ro")


def _round_trips(client) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(k, {}).get("calls", 0)) for k in _SCRIPT_CALLS)


def _commands(client) -> int:
    """Every command the server ran, scripts' inner commands included (INFO excluded)."""
    stats = client.info("commandstats")
    return sum(int(v.get("calls", 0)) for k, v in stats.items() if k != "cmdstat_info")


def _inner(fp) -> int:
    # Fixed inner loops: measure()'s estimate from three calls is thrown off by
    # the first call of a fresh enforcer (watchdog start), then rounds are 1 call.
    return 500 if fp.kind == "compiled" else 50


def _interleaved(base, other, rounds: int = 41, n: int = 20000) -> dict:
    """Per-call cost of ``other`` minus ``base``, timed in alternation (base, other,
    base) on this thread's CPU clock; the median over the rounds.  On a machine
    shared with other work, two benchmarks run a minute apart see different loads,
    and wall-clock loops charge the time the thread was descheduled."""
    def per_call(fn) -> float:
        t0 = time.thread_time_ns()
        for _ in range(n):
            fn()
        return (time.thread_time_ns() - t0) / n

    diffs, base_ns, other_ns = [], [], []
    for _ in range(rounds):
        a = per_call(base)
        b = per_call(other)
        a2 = per_call(base)
        base_ns.append((a + a2) / 2)
        other_ns.append(b)
        diffs.append(b - (a + a2) / 2)
    mid = rounds // 2
    return {"interleaved_delta_ns": sorted(diffs)[mid],
            "interleaved_base_ns": sorted(base_ns)[mid],
            "interleaved_ns": sorted(other_ns)[mid], "interleaved_rounds": rounds,
            "interleaved_calls": n}


def _wrapper(enforcer, fp):
    """The wrapper of bench/test_enforcer.py around this enforcer: (call, denied)."""
    return _execute_fast_of(enforcer, fp)


def _quota_core(fp):
    from fastpath import _quota, _quota_py
    return _quota if fp.kind == "compiled" else _quota_py


def test_rule_type_without_quota(benchmark, fp):
    """The baseline: FAST with no quota (the same as bench/test_enforcer's "execute")."""
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    call, denied = _wrapper(enforcer, fp)
    measure(benchmark, GROUP, "quota_none", fp.kind, call, minus="call_f", inner=_inner(fp))
    benchmark.extra_info.update(denied=denied[0])


def test_rule_type_with_local_quota(benchmark, fp):
    """FAST with a calls quota on the in-process store, one flow key."""
    quota = _quota_core(fp).Quota(**HUGE)
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None,
                                     quotas={fp.RuleType.FAST: quota})
    call, denied = _wrapper(enforcer, fp)
    plain = fp.ConstraintEnforcer(audit_sink=lambda event: None)
    base, _ = _wrapper(plain, fp)
    with enforcer.flow("agent-42"):
        measure(benchmark, GROUP, "quota_local", fp.kind, call, minus="call_f",
                inner=_inner(fp))
        ab = _interleaved(base, call, n=20000 if fp.kind == "compiled" else 1000)
    usage = quota.store.usage("agent-42")
    assert usage["admitted"] > 0 and usage["refused"] == 0
    benchmark.extra_info.update(denied=denied[0], **ab)


def _measure_local(benchmark, fp, key: str, **limits) -> None:
    quota = _quota_core(fp).Quota(per_s=1.0, **limits)
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None,
                                     quotas={fp.RuleType.FAST: quota})
    call, denied = _wrapper(enforcer, fp)
    with enforcer.flow("agent-42"):
        measure(benchmark, GROUP, key, fp.kind, call, minus="call_f", inner=_inner(fp))
    benchmark.extra_info.update(denied=denied[0])


def test_rule_type_with_local_wall_quota(benchmark, fp):
    """FAST with calls + wall-time quota (the debit of the budget's wall time)."""
    _measure_local(benchmark, fp, "quota_local_wall", calls=10**12, wall_ms=10**12)


def test_rule_type_with_local_cpu_quota(benchmark, fp):
    """FAST with a CPU-time quota: two reads of the thread's CPU clock (syscalls)."""
    _measure_local(benchmark, fp, "quota_local_cpu", cpu_ms=10**12)


def _paced(call, client, rate_per_s: float, seconds: float) -> dict:
    """Call at a steady rate for a while; the server's count of round trips."""
    before = _round_trips(client)
    n = int(rate_per_s * seconds)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate_per_s
        while time.perf_counter() < due:
            pass
        call()
    elapsed = time.perf_counter() - start
    trips = _round_trips(client) - before
    return {"steady_calls": n, "steady_rate": n / elapsed, "steady_round_trips": trips,
            "round_trips_per_call": trips / n}


def test_rule_type_with_redis_quota(benchmark, fp, redis_server):
    """FAST with a calls quota on RedisQuotaStore: leases spent in the lease table."""
    from fastpath.redis import RedisQuotaStore

    client = redis.Redis.from_url(redis_server.url)
    store = RedisQuotaStore(client, prefix=f"bench-{fp.kind}:")
    quota = _quota_core(fp).Quota(calls=10**9, per_s=60.0, store=store)
    enforcer = fp.ConstraintEnforcer(audit_sink=lambda event: None,
                                     quotas={fp.RuleType.FAST: quota})
    call, denied = _wrapper(enforcer, fp)
    local = fp.ConstraintEnforcer(audit_sink=lambda event: None,
                                  quotas={fp.RuleType.FAST: _quota_core(fp).Quota(**HUGE)})
    local_call, _ = _wrapper(local, fp)
    with enforcer.flow("agent-42"):
        steady = _paced(call, client, 10_000, 2.0)      # goal: round trips per call
        measure(benchmark, GROUP, "quota_redis", fp.kind, call, minus="call_f",
                inner=_inner(fp))
        ab = _interleaved(local_call, call, n=20000 if fp.kind == "compiled" else 1000)
    assert store.stats()["errors"] == 0
    benchmark.extra_info.update(denied=denied[0], **steady, **ab)
    store.close()
    client.close()


def _measure_peer(benchmark, peer: str, call, server, n: int = 1000) -> None:
    """A peer's call: its round trips and commands per call (server counts), its time."""
    client = redis.Redis.from_url(server.url)
    trips, commands = _round_trips(client), _commands(client)
    for _ in range(n):
        call()
    trips = (_round_trips(client) - trips) / n
    commands = (_commands(client) - commands) / n
    measure(benchmark, GROUP, "quota_redis", peer, call, minus="f")
    benchmark.extra_info.update(round_trips_per_call=trips, commands_per_call=commands)
    client.close()


def test_limits_moving_window_on_redis(benchmark, redis_server):
    """limits: ``MovingWindowRateLimiter(RedisStorage).hit(item, key)`` around f()."""
    limits = pytest.importorskip("limits")
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    storage = RedisStorage(redis_server.url)
    limiter = MovingWindowRateLimiter(storage)
    item = limits.parse("1000000000/minute")

    def call():
        if limiter.hit(item, "agent-42"):
            return f()

    _measure_peer(benchmark, "limits", call, redis_server)


def test_throttled_on_redis(benchmark, redis_server):
    """throttled-py: GCRA on its RedisStore, ``throttle.limit(key)`` around f()."""
    throttled = pytest.importorskip("throttled")

    throttle = throttled.Throttled(
        using=throttled.RateLimiterType.GCRA.value,
        quota=throttled.per_sec(10**8),
        store=throttled.RedisStore(server=redis_server.url))

    def call():
        if not throttle.limit("agent-42").limited:
            return f()

    _measure_peer(benchmark, "throttled-py", call, redis_server)
