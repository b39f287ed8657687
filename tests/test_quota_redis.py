"""RedisQuotaStore on a real redis-server (tests/redis_server.py): leases, the
fleet-wide bound across spawned processes, failures (killed, restarted, slow),
the asyncio client.  Both cores, through the ``fp`` fixture."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import threading
import time

import pytest
import redis
import redis.asyncio

from fastpath.redis import RedisQuotaStore
from tests.threads import run_threads

FROZEN = 1e6          # refill so slow that nothing comes back during a test
_prefixes = itertools.count()


def prefix() -> str:
    return f"t{next(_prefixes)}-{time.monotonic_ns()}:"


_opened: list = []


def client_of(server):
    client = redis.Redis.from_url(server.url)
    _opened.append(client)
    return client


def store_of(server, **kwargs):
    kwargs.setdefault("prefix", prefix())
    store = RedisQuotaStore(client_of(server), **kwargs)
    _opened.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _opened:
        _opened.pop().close()


def evalsha_calls(client) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0))


def make_enforcer(fp, quota, rule_type=None):
    C = fp.ExecutionConstraints
    return fp.ConstraintEnforcer.with_constraints(
        fast=C(10000, fail_closed_on_timeout=True),
        semantic=C(10000, fail_closed_on_timeout=False),
        wasm_hook=C(10000), observational=C(10000, fail_closed_on_timeout=False),
        audit_sink=lambda event: None, fallbacks={fp.RuleType.SEMANTIC: "fb"},
        quotas={rule_type or fp.RuleType.FAST: quota})


def ok():
    return "ok"


# ------------------------------------------------------------------ validation

def test_store_arguments_are_validated(redis_server):
    client = client_of(redis_server)
    with pytest.raises(Exception, match="client must be a redis.Redis or redis.asyncio.Redis"):
        RedisQuotaStore(object())
    for kwargs, fragment in [
        ({"lease": 0}, "lease must be within (0, 1], got 0"),
        ({"lease": 1.5}, "got 1.5"),
        ({"timeout_ms": -1}, "timeout_ms must be within"),
        ({"timeout_ms": "50"}, "timeout_ms must be a number, got '50'"),
        ({"on_unavailable": "open"}, "on_unavailable must be 'fail_closed' or 'fail_open'"),
        ({"prefix": 3}, "prefix must be a str, got 3"),
    ]:
        with pytest.raises(Exception, match="RedisQuotaStore") as info:
            RedisQuotaStore(client, **kwargs)
        assert fragment in str(info.value)
        assert type(info.value).__name__ == "InvalidConfiguration"


def test_importing_fastpath_does_not_import_redis():
    import subprocess
    import sys
    code = "import sys, fastpath; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ admission

def test_calls_are_admitted_up_to_the_fleet_bucket(fp, redis_server):
    store = store_of(redis_server)
    quota = fp.Quota(calls=5, per_s=FROZEN, store=store)
    enforcer = make_enforcer(fp, quota)
    run = enforcer.execute_with_constraints
    with enforcer.flow("agent-1"):
        assert [run(fp.RuleType.FAST, ok) for _ in range(5)] == ["ok"] * 5
        with pytest.raises(fp.ResourceExhausted, match="agent-1"):
            run(fp.RuleType.FAST, ok)
    assert quota.remaining("agent-1")["calls"] == pytest.approx(0, abs=1e-3)
    assert store.usage("agent-1")["calls"] == pytest.approx(5, abs=1e-3)
    assert enforcer.metrics()[fp.RuleType.FAST]["quota_refused"] == 1


def test_keys_and_prefixes_are_isolated(fp, redis_server):
    client = client_of(redis_server)
    shared = prefix()
    quota = fp.Quota(calls=2, per_s=FROZEN, store=store_of(redis_server, prefix=shared))
    other = fp.Quota(calls=2, per_s=FROZEN, store=store_of(redis_server))
    assert [quota.admit("a") for _ in range(3)] == [True, True, False]
    assert [quota.admit("b") for _ in range(3)] == [True, True, False]
    assert [quota.admit(1) for _ in range(3)] == [True, True, False]   # 1 is not "1"
    assert [quota.admit("1") for _ in range(2)] == [True, True]
    assert [other.admit("a") for _ in range(3)] == [True, True, False]
    quota.store.reset("a")
    assert quota.admit("a") is True
    assert sorted(k.decode() for k in client.keys(shared + "*")) == sorted(
        shared + "quota:" + tag for tag in ("s:a", "s:b", "i:1", "s:1"))


def test_no_increment_when_over_the_limit(fp, redis_server):
    client = client_of(redis_server)
    store = store_of(redis_server)
    quota = fp.Quota(calls=3, per_s=FROZEN, store=store)
    for _ in range(3):
        assert quota.admit("k")
    name = store._name("k")
    before = client.hgetall(name)
    trips = store.stats()["round_trips"]
    assert [quota.admit("k") for _ in range(50)] == [False] * 50
    after = client.hgetall(name)
    assert float(after[b"l1"]) == pytest.approx(float(before[b"l1"]), abs=1e-6)
    assert float(after[b"l1"]) < 1
    # Refused calls stay quiet until the bucket has refilled: no round trip each.
    assert store.stats()["round_trips"] - trips <= 1
    assert store.stats()["refused"] == 50


def test_calls_normally_make_no_round_trip(fp, redis_server):
    client = client_of(redis_server)
    store = store_of(redis_server)
    quota = fp.Quota(calls=1_000_000, per_s=60, store=store)
    enforcer = make_enforcer(fp, quota)
    before = evalsha_calls(client)
    n = 20000
    for _ in range(n):
        enforcer.execute_with_constraints(fp.RuleType.FAST, ok)
    trips = evalsha_calls(client) - before
    assert 1 <= trips <= 30, trips           # leases grow to the key's rate
    assert store.stats()["round_trips"] == trips
    assert store.max_lease["calls"] == 50000


def test_wall_time_is_debited_from_the_lease_and_returned(fp, redis_server):
    client = client_of(redis_server)
    store = store_of(redis_server, lease_ttl_ms=10)
    quota = fp.Quota(wall_ms=100, per_s=FROZEN, store=store)
    enforcer = make_enforcer(fp, quota)

    def slow():
        time.sleep(0.15)

    enforcer.execute_with_constraints(fp.RuleType.FAST, slow)
    time.sleep(0.02)                          # the lease expires: the debt goes back
    with pytest.raises(fp.ResourceExhausted):
        enforcer.execute_with_constraints(fp.RuleType.FAST, ok)
    level = float(client.hget(store._name(None), "l3"))      # l1 calls, l2 cpu, l3 wall
    assert level <= 100 - 150                 # the bucket owes at least the 150 ms slept


def test_threads_share_one_lease_table_exactly(fp, redis_server):
    store = store_of(redis_server)
    quota = fp.Quota(calls=1000, per_s=FROZEN, store=store)
    counts = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        counts.append(sum(quota.admit("k") for _ in range(300)))

    run_threads(worker, [()] * 8)
    assert sum(counts) == 1000


# ------------------------------------------------------------------ many processes

def _hammer(url: str, pfx: str, lease: float, seconds: float, queue) -> None:
    import time as _time

    import redis as _redis

    import fastpath
    from fastpath.redis import RedisQuotaStore as _Store

    store = _Store(_redis.Redis.from_url(url), prefix=pfx, lease=lease)
    quota = fastpath.Quota(calls=200, per_s=2.0, store=store)   # 100 calls/s, burst 200
    admitted = 0
    first = last = None
    end = _time.time() + seconds
    while _time.time() < end:
        if quota.admit("shared"):
            admitted += 1
            last = _time.time()
            if first is None:
                first = last
        _time.sleep(0.0002)
    queue.put((admitted, first, last, store.max_lease["calls"]))


@pytest.mark.slow
def test_quota_shared_by_4_processes_stays_within_the_bound(redis_server):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    pfx, lease = prefix(), 0.1
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, pfx, lease, 2.0, queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    admitted = sum(r[0] for r in results)
    first = min(r[1] for r in results if r[1] is not None)
    last = max(r[2] for r in results if r[2] is not None)
    max_lease = results[0][3]
    assert max_lease == 20                     # floor(0.1 x 200)
    exact = 200 + 100 * (last - first)         # what one exact bucket admits at most
    bound = exact + 4 * max_lease              # README: processes x lease
    print(f"\n4 processes admitted {admitted}; exact bucket {exact:.0f}; "
          f"over-admission {admitted - exact:+.0f} (bound +{4 * max_lease})")
    assert admitted <= bound
    assert admitted >= 200 - 4 * max_lease     # every process hammered: the burst was used
    assert all(r[0] > 0 for r in results)      # and shared


# ------------------------------------------------------------------ failures

@pytest.fixture
def private_redis():
    """A redis-server of the test's own, to kill, restart and put to sleep."""
    from tests.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


def test_redis_killed_then_restarted_fail_closed(fp, private_redis, caplog):
    store = store_of(private_redis, lease_ttl_ms=20,
                            retry_ms=50, timeout_ms=200)
    quota = fp.Quota(calls=1_000_000, per_s=60, store=store)
    enforcer = make_enforcer(fp, quota)
    run = enforcer.execute_with_constraints
    assert run(fp.RuleType.FAST, ok) == "ok"
    private_redis.kill()
    time.sleep(0.05)                            # the lease expires
    refused = 0
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fastpath.redis"):
        for _ in range(20):
            try:
                run(fp.RuleType.FAST, ok)
            except fp.ResourceExhausted:
                refused += 1
            time.sleep(0.01)
    assert time.monotonic() - t0 < 5            # never a hang
    assert refused == 20                        # fail closed: the rule's policy raised
    assert store.stats()["errors"] >= 1 and store.stats()["unavailable_refused"] == 20
    logged = [r for r in caplog.records if r.name == "fastpath.redis"]
    assert len(logged) == 1 and "later errors are counted" in logged[0].getMessage()

    private_redis.restart()                     # a new server: empty, no script cached
    deadline = time.monotonic() + 10            # recovers once past retry_ms (a loaded
    while time.monotonic() < deadline:          # machine may need more than one try)
        try:
            if run(fp.RuleType.FAST, ok) == "ok":
                break
        except fp.ResourceExhausted:
            time.sleep(0.06)
    results = [run(fp.RuleType.FAST, ok) for _ in range(5)]
    assert results == ["ok"] * 5
    stats = store.stats()
    assert stats["recoveries"] >= 1 and stats["script_reloads"] >= 1
    assert stats["unavailable"] is False


def test_redis_unavailable_fail_open_admits(fp, private_redis):
    store = store_of(private_redis, lease_ttl_ms=20,
                            on_unavailable="fail_open")
    quota = fp.Quota(calls=2, per_s=FROZEN, store=store)
    enforcer = make_enforcer(fp, quota)
    private_redis.kill()
    fn_calls = []
    for _ in range(5):
        enforcer.execute_with_constraints(fp.RuleType.FAST, lambda: fn_calls.append(1))
    assert len(fn_calls) == 5
    assert store.stats()["unavailable_admitted"] == 5


def test_slow_redis_hits_the_timeout(fp, private_redis):
    store = store_of(private_redis, timeout_ms=200, retry_ms=0)
    quota = fp.Quota(calls=10, per_s=FROZEN, store=store)
    assert quota.admit("warm") is True          # script loaded, connection open

    def sleep_server():
        redis.Redis.from_url(private_redis.url, socket_timeout=10).execute_command(
            "DEBUG", "SLEEP", "1.5")

    sleeper = threading.Thread(target=sleep_server)
    sleeper.start()
    time.sleep(0.2)                              # the server is asleep now
    t0 = time.monotonic()
    admitted = quota.admit("new-key")            # needs a round trip
    waited = time.monotonic() - t0
    sleeper.join()
    assert admitted is False                     # fail closed
    assert waited < 1.0                          # the 200 ms timeout, not the 1.5 s sleep
    assert store.stats()["errors"] == 1
    deadline = time.monotonic() + 10
    while not quota.admit("new-key") and time.monotonic() < deadline:
        time.sleep(0.05)                         # recovered once Redis answers again
    assert quota.store.stats()["recoveries"] >= 1


# ------------------------------------------------------------------ asyncio client

def test_asyncio_client(fp, redis_server):
    async def main():
        client = redis.asyncio.Redis.from_url(redis_server.url)
        store = RedisQuotaStore(client, prefix=prefix())
        quota = fp.Quota(calls=3, per_s=FROZEN, store=store)
        enforcer = make_enforcer(fp, quota, fp.RuleType.SEMANTIC)

        async def rule():
            await asyncio.sleep(0)
            return "ok"

        async with enforcer.flow("agent-9"):
            results = [await enforcer.execute_async(fp.RuleType.SEMANTIC, rule)
                       for _ in range(4)]
        left = await quota.remaining("agent-9")
        # A synchronous call cannot fetch with an asyncio client: the policy applies.
        with enforcer.flow("sync"):
            sync_result = enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, ok)
        await store.close()
        await client.aclose()
        return results, left, sync_result, store.stats()

    results, left, sync_result, stats = asyncio.run(main())
    assert results == ["ok", "ok", "ok", "fb"]
    assert left["calls"] == pytest.approx(0, abs=1e-3)
    assert sync_result == "fb" and stats["unavailable_refused"] == 1
    assert stats["round_trips"] >= 2


def test_asyncio_client_timeout(fp, private_redis):
    async def main():
        client = redis.asyncio.Redis.from_url(private_redis.url)
        store = RedisQuotaStore(client, prefix=prefix(), timeout_ms=200, retry_ms=0)
        quota = fp.Quota(calls=10, per_s=FROZEN, store=store)
        enforcer = make_enforcer(fp, quota, fp.RuleType.SEMANTIC)
        assert await enforcer.execute_async(fp.RuleType.SEMANTIC, asyncio.sleep, 0) is None
        sleeper = threading.Thread(target=lambda: redis.Redis.from_url(
            private_redis.url, socket_timeout=10).execute_command("DEBUG", "SLEEP", "2"))
        sleeper.start()
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        async with enforcer.flow("other"):
            result = await enforcer.execute_async(fp.RuleType.SEMANTIC, asyncio.sleep, 0)
        waited = time.monotonic() - t0
        sleeper.join()
        await store.close()
        await client.aclose()
        return result, waited, store.stats()

    result, waited, stats = asyncio.run(main())
    assert result == "fb" and waited < 1.0 and stats["errors"] == 1


def test_a_slow_lease_fetch_is_not_charged_to_the_rules_budget(fp, private_redis):
    # FAST allows 5 ms; the lease fetch below waits for a sleeping server ~100 ms.
    store = store_of(private_redis, timeout_ms=1000)
    quota = fp.Quota(calls=10, per_s=FROZEN, store=store)
    C = fp.ExecutionConstraints
    enforcer = fp.ConstraintEnforcer.with_constraints(
        fast=C(5, fail_closed_on_timeout=True), semantic=C(10000), wasm_hook=C(10000),
        observational=C(10000), audit_sink=lambda event: None,
        quotas={fp.RuleType.FAST: quota})
    assert quota.admit("warm")
    sleeper = threading.Thread(target=lambda: redis.Redis.from_url(
        private_redis.url, socket_timeout=10).execute_command("DEBUG", "SLEEP", "0.15"))
    sleeper.start()
    time.sleep(0.03)
    t0 = time.monotonic()
    with enforcer.flow("cold"):
        result = enforcer.execute_with_constraints(fp.RuleType.FAST, ok)
    waited = time.monotonic() - t0
    sleeper.join()
    assert result == "ok"            # no TIMEOUT_EXCEEDED for the time Redis took
    assert waited >= 0.05            # the fetch did wait for the server
