"""Goal 13: preemption lateness, and what a preemptive timeout costs per call.

Lateness is the time from a fail-closed budget's deadline to the
``ConstraintViolation`` raised for a busy pure-Python loop::

    ExecutionConstraints(5).create_budget().enforce(spin)
    lateness = exc.stats.elapsed_ns - 5_000_000

measured ~200 times in the main thread (the watchdog signals it) and ~200
times in a worker thread (the watchdog waits for the GIL, so up to one
``sys.getswitchinterval()`` late).  The pure-Python twin's main-thread
lateness is reported for reference.

The cost part times ``func_timeout.func_timeout(1.0, f)`` against fastpath's
``ExecutionConstraints(1000).create_budget().enforce(f)`` (the same operation:
run ``f`` under a preemptive 1 s timeout), interleaved, in this one process.

Plain measurement script, not pytest-benchmark: ``bench/run.py`` imports it
and calls :func:`run`; ``python bench/lateness.py`` prints the same figures.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support

from fastpath import ConstraintViolation

DEADLINE_MS = 5
DEADLINE_NS = DEADLINE_MS * 1_000_000
WARMUP_CALLS = 5


def spin() -> None:
    """A busy pure-Python loop that never returns by itself."""
    n = 0
    while True:
        n += 1


def lateness_samples(kind: str, n: int) -> list[int]:
    """``n`` lateness figures (ns) of ``spin`` under a 5 ms fail-closed budget,
    in the calling thread, on core ``kind`` ("compiled" or "python")."""
    constraints = _support.core(kind).ExecutionConstraints(DEADLINE_MS)
    out: list[int] = []
    for i in range(WARMUP_CALLS + n):
        try:
            constraints.create_budget().enforce(spin)
        except ConstraintViolation as exc:
            if not exc.interrupted:
                raise RuntimeError(f"spin was not interrupted: {exc!r}") from exc
            if i >= WARMUP_CALLS:
                out.append(exc.stats.elapsed_ns - DEADLINE_NS)
        else:  # pragma: no cover - spin never returns
            raise RuntimeError("spin returned")
    return out


def in_worker_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a new thread while this one waits; return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="lateness-worker")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def describe(samples: list[int]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ns": statistics.median(ordered),
        "p99_ns": percentile(ordered, 99),
        "max_ns": ordered[-1],
        "min_ns": ordered[0],
    }


def _per_call_ns(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def timeout_cost(repeats: int = 7) -> dict[str, Any]:
    """Per-call ns of func_timeout(1.0, f) vs fastpath's create_budget().enforce(f), and f()."""
    from func_timeout import func_timeout

    f = _support.f
    fastpath_1s = _support.core("compiled").ExecutionConstraints(1000)

    def with_func_timeout() -> None:
        func_timeout(1.0, f)

    def with_fastpath() -> None:
        fastpath_1s.create_budget().enforce(f)

    def bare() -> None:
        f()

    arms = {"func_timeout": (with_func_timeout, 200), "fastpath": (with_fastpath, 20_000),
            "f": (bare, 20_000)}
    for fn, n in arms.values():  # warm-up
        _per_call_ns(fn, max(1, n // 10))
    runs: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, (fn, n) in arms.items():
            runs[name].append(_per_call_ns(fn, n))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "func_timeout_ns": medians["func_timeout"],
        "fastpath_ns": medians["fastpath"],
        "f_ns": medians["f"],
        "ratio": medians["func_timeout"] / medians["fastpath"],
        "repeats": repeats,
        "note": "per call, wrapper frame and loop included in all three (median of repeats)",
    }


CHUNK_S = 0.05          # the synchronous work between two awaits


def async_overshoot(n: int = 40) -> dict[str, Any]:
    """Deadline overshoot of a coroutine that runs 50 ms synchronous chunks between
    awaits, under a 20 ms budget (fastpath) and under asyncio.timeout(0.02)."""
    import asyncio

    c = _support.core("compiled").ExecutionConstraints(DEADLINE_MS * 4)
    violation = _support.core("compiled").ConstraintViolation

    async def chunks() -> None:
        for _ in range(100):
            end = time.monotonic() + CHUNK_S
            while time.monotonic() < end:
                pass
            await asyncio.sleep(0)

    async def one_fastpath() -> int:
        budget = c.create_budget()
        deadline = time.perf_counter_ns() + DEADLINE_MS * 4 * 1_000_000
        try:
            await budget.enforce_async(chunks)
        except violation:
            pass
        return time.perf_counter_ns() - deadline

    async def one_timeout() -> int:
        deadline = time.perf_counter_ns() + DEADLINE_MS * 4 * 1_000_000
        try:
            async with asyncio.timeout(DEADLINE_MS * 4 / 1000):
                await chunks()
        except TimeoutError:
            pass
        return time.perf_counter_ns() - deadline

    async def series(one: Any, k: int) -> list[int]:
        return [await one() for _ in range(k)]

    ours = asyncio.run(series(one_fastpath, n))
    theirs = asyncio.run(series(one_timeout, max(5, n // 8)))
    return {"budget_ms": DEADLINE_MS * 4, "chunk_ms": CHUNK_S * 1000,
            "fastpath": describe(ours), "asyncio_timeout": describe(theirs),
            "goal_p99_ns": 1_000_000}


def run(n: int = 200, twin_n: int = 100) -> dict[str, Any]:
    """Every figure of goal 13; ``n`` calls per compiled series, ``twin_n`` for the twin."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("lateness.run() must be called from the main thread")
    switch_ns = int(sys.getswitchinterval() * 1e9)
    main = lateness_samples("compiled", n)
    worker = in_worker_thread(lateness_samples, "compiled", n)
    try:
        twin_main = lateness_samples("python", twin_n)
    finally:
        _support.stop_twin_watchdog()
    info = _support.core("compiled").module.preemption_info()
    return {
        "deadline_ms": DEADLINE_MS,
        "switch_interval_ns": switch_ns,
        "preemption_info": info,
        "main": describe(main),
        "worker": describe(worker),
        "twin_main": describe(twin_main),
        "goal_main_p99_ns": 1_000_000,
        "goal_worker_p99_ns": switch_ns + 1_000_000,
        "timeout_cost": timeout_cost(),
        "async": async_overshoot(20 if n < 200 else 40),
    }


def main() -> int:
    result = run()
    print(f"preemption: {result['preemption_info']}")
    for name in ("main", "worker", "twin_main"):
        d = result[name]
        print(f"{name:>10}: n={d['n']} median {d['median_ns'] / 1e3:.1f} us, "
              f"p99 {d['p99_ns'] / 1e3:.1f} us, max {d['max_ns'] / 1e3:.1f} us")
    cost = result["timeout_cost"]
    print(f"func_timeout(1.0, f): {cost['func_timeout_ns']:.0f} ns/call; fastpath "
          f"create_budget().enforce(f): {cost['fastpath_ns']:.0f} ns/call; ratio "
          f"{cost['ratio']:.0f}x")
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
