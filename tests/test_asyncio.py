"""enforce_async, current_budget, nested deadlines and the scope forms, on both
cores and on the default event loop and uvloop.

Timing facts are ordering facts with wide headroom: "a 2 s sleep under a
50 ms budget was stopped before 1 s".
"""

from __future__ import annotations

import asyncio
import time

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a test dependency
    uvloop = None

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def run(request):
    if request.param == "uvloop" and uvloop is None:
        pytest.fail("uvloop is a test dependency: run `make test`")
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)

    return runner


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def sleeps(seconds: float = 2.0) -> str:
    await asyncio.sleep(seconds)
    return "woke up"


async def spins_after_an_await(seconds: float = 2.0) -> str:
    await asyncio.sleep(0)
    spin(seconds)
    return "ran to the end"


def test_enforce_async_returns_the_coroutines_value(fp, run):
    async def main():
        b = fp.ExecutionConstraints(60_000).create_budget()
        assert fp.current_budget() is None
        value = await b.enforce_async(double, 21)
        assert fp.current_budget() is None
        return value, b.get_violations()

    assert run(main()) == (42, [])


def test_a_coroutine_suspended_past_its_deadline_is_cancelled(fp, run):
    async def main():
        t0 = time.monotonic()
        with pytest.raises(fp.ConstraintViolation) as info:
            await fp.ExecutionConstraints(50).create_budget().enforce_async(sleeps)
        return info.value, time.monotonic() - t0

    v, seconds = run(main())
    assert v.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert v.interrupted is True
    assert isinstance(v.__cause__, asyncio.CancelledError)
    assert seconds < 1.0


def test_a_cpu_bound_step_between_awaits_is_preempted(fp, run):
    async def main():
        t0 = time.monotonic()
        with pytest.raises(fp.ConstraintViolation) as info:
            await fp.ExecutionConstraints(50).create_budget().enforce_async(spins_after_an_await)
        return info.value, time.monotonic() - t0

    v, seconds = run(main())
    assert v.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED and v.interrupted
    assert seconds < 1.0


def test_a_neighbour_task_is_never_interrupted_cancelled_or_charged(fp, run):
    async def neighbour() -> float:
        used = 0.0
        for _ in range(8):
            t = time.thread_time()
            while time.thread_time() - t < 0.02:
                pass                    # 20 ms of CPU per step, while the rule awaits
            used += time.thread_time() - t
            await asyncio.sleep(0)
        return used

    async def main():
        budget = fp.ExecutionConstraints(60_000, cpu_shares=1).create_budget()   # 600 ms CPU
        task = asyncio.create_task(neighbour())
        await budget.enforce_async(sleeps, 0.3)
        used = await task
        return budget.stats(), used

    stats, neighbour_cpu = run(main())
    assert neighbour_cpu >= 0.15
    assert stats.violations == ()
    assert stats.cpu_time_us < neighbour_cpu * 1e6 / 4     # only its own steps
    assert stats.elapsed_ns >= 250_000_000                   # awaits count as wall time


def test_a_cancellation_from_outside_propagates_unchanged(fp, run):
    async def main():
        task = asyncio.create_task(
            fp.ExecutionConstraints(60_000).create_budget().enforce_async(sleeps, 5.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return "propagated"

    assert run(main()) == "propagated"


def test_sync_entry_points_refuse_coroutines_and_name_the_async_one(fp):
    b = fp.ExecutionConstraints(60_000).create_budget()
    with pytest.raises(TypeError, match="enforce_async"):
        b.enforce(double, 1)            # no "never awaited" warning either (-W error)
    with pytest.raises(TypeError, match="awaitable"):
        b.enforce_async(abs, -1)


def test_budgets_nest_and_current_budget_never_leaks_to_other_tasks_or_threads(fp, run):
    async def child() -> object:
        return fp.current_budget()

    async def rule() -> tuple:
        outer = fp.current_budget()
        inner = fp.ExecutionConstraints(60_000).create_budget()     # longer than the outer
        in_child_task = await asyncio.create_task(child())
        in_thread = await asyncio.to_thread(fp.current_budget)
        return outer, inner, in_child_task, in_thread

    async def main():
        b = fp.ExecutionConstraints(5_000).create_budget()
        outer, inner, in_child_task, in_thread = await b.enforce_async(rule)
        assert outer is b
        assert inner.remaining_ms() <= b.remaining_ms() + 1       # never outlives the outer
        return in_child_task, in_thread, fp.current_budget()

    assert run(main()) == (None, None, None)


def test_with_budget_arms_the_block_and_makes_it_current(fp):
    b = fp.ExecutionConstraints(60_000).create_budget()
    with b as entered:
        assert entered is b and fp.current_budget() is b
    assert fp.current_budget() is None
    t0 = time.monotonic()
    with pytest.raises(fp.ConstraintViolation) as info:
        with fp.ExecutionConstraints(20).create_budget():
            spin(2.0)
    assert info.value.interrupted and time.monotonic() - t0 < 1.0


def test_async_with_budget_cancels_at_the_deadline(fp, run):
    async def main():
        b = fp.ExecutionConstraints(50).create_budget()
        t0 = time.monotonic()
        with pytest.raises(fp.ConstraintViolation) as info:
            async with b:
                assert fp.current_budget() is b
                await asyncio.sleep(2.0)
        assert fp.current_budget() is None
        return info.value, time.monotonic() - t0

    v, seconds = run(main())
    assert v.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED and v.interrupted
    assert seconds < 1.0


def test_async_with_budget_passes_a_quick_block(fp, run):
    async def main():
        async with fp.ExecutionConstraints(60_000).create_budget() as b:
            await asyncio.sleep(0)
        return b.get_violations()

    assert run(main()) == []


# ------------------------------------------------------- the enforcer and retries

def test_execute_async_applies_the_failure_policy(fp, run):
    events = []
    c = fp.ExecutionConstraints
    enforcer = fp.ConstraintEnforcer.with_constraints(
        # Seconds of headroom for the quick call; the 2 s sleep still overruns it.
        c.fast_rule().replace(max_exec_ms=1500, cpu_shares=None),
        c.semantic_rule(), c.wasm_hook(10), c.observational(1.0),
        audit_sink=events.append, fallbacks={fp.RuleType.SEMANTIC: "allow"})

    async def main():
        ok = await enforcer.execute_async(fp.RuleType.FAST, double, 4)
        with pytest.raises(fp.ConstraintViolation):
            await enforcer.execute_async(fp.RuleType.FAST, sleeps, 2.0)      # fail closed
        fallback = await enforcer.execute_async(fp.RuleType.SEMANTIC, sleeps, 2.0)  # fail open
        return ok, fallback

    assert run(main()) == (8, "allow")
    m = enforcer.metrics()
    assert m[fp.RuleType.FAST]["calls"] == 2 and m[fp.RuleType.FAST]["fail_closed"] == 1
    assert m[fp.RuleType.SEMANTIC]["fail_open"] == 1
    assert [e.outcome for e in events] == ["deny", "fallback"]


def test_execute_async_retries_transient_errors_inside_the_budget(fp, run):
    c = fp.ExecutionConstraints
    enforcer = fp.ConstraintEnforcer.with_constraints(     # the calls must fit: a minute
        c(60_000), c.semantic_rule().replace(max_exec_ms=60_000), c(60_000), c(60_000),
        transient_errors=(ConnectionError,))
    attempts = []

    async def flaky() -> str:
        attempts.append(1)
        await asyncio.sleep(0)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "third time"

    assert run(enforcer.execute_async(fp.RuleType.SEMANTIC, flaky)) == "third time"
    assert enforcer.metrics()[fp.RuleType.SEMANTIC]["retries"] == 2


def test_the_decorator_on_an_async_def_returns_an_async_def(fp, run):
    import inspect

    c = fp.ExecutionConstraints(60_000)     # the call must fit: not fast_rule()'s 5 ms
    enforcer = fp.ConstraintEnforcer.with_constraints(c, c, c, c)

    @enforcer.constrained(fp.RuleType.FAST, rule_id="double")
    async def guarded(x: int) -> int:
        return await double(x)

    assert inspect.iscoroutinefunction(guarded)
    assert run(guarded(5)) == 10
    with pytest.raises(TypeError, match="execute_async"):
        enforcer.execute_with_constraints(fp.RuleType.FAST, double, 1)


def test_retry_policy_async_never_retries_cancellation(fp, run):
    from fastpath import RetryPolicy

    calls = []

    async def cancelled() -> None:
        calls.append(1)
        raise asyncio.CancelledError()

    async def flaky() -> str:
        calls.append(2)
        if calls.count(2) < 2:
            raise ConnectionError("again")
        return "ok"

    policy = RetryPolicy(3, 1).with_retry_on(ConnectionError)
    with pytest.raises(asyncio.CancelledError):
        run(policy.execute_async(cancelled))
    assert calls == [1]
    assert run(policy.execute_async(flaky)) == "ok"
    budget = fp.ExecutionConstraints(60_000).create_budget()
    calls.clear()
    assert run(policy.execute_within_async(budget, budget.enforce_async, flaky)) == "ok"
    with pytest.raises(TypeError, match="execute_async"):
        policy.execute(double, 1)
    with pytest.raises(TypeError, match="callable"):
        policy.execute(None)
