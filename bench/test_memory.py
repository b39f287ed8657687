"""Memory accounting on an allocation-heavy workload (goal 15), and tracemalloc.

``work()`` builds ``[str(i) for i in range(200)]`` (201 allocations).  Goal 15
compares it run under a memory-limited budget with it run under the same
budget without a memory limit, in this one process; the peer is ``work()``
under ``tracemalloc.start()`` against plain ``work()``.  Goal 14 (the idle
allocator hook, which needs two processes) is bench/memhook.py.
"""

from __future__ import annotations

import tracemalloc

import pytest
from _support import measure, work

GROUP = "memory accounting: work()"
LIMIT = 10**9


def test_work_plain(benchmark):
    measure(benchmark, GROUP, "work", "reference", work)


def test_work_enforce_no_memory_limit(benchmark, fp):
    constraints = fp.ExecutionConstraints(10_000)

    def enforce_work():
        return constraints.create_budget().enforce(work)

    measure(benchmark, GROUP, "work_enforce_nolimit", fp.kind, enforce_work)


def test_work_enforce_memory_limit(benchmark, fp):
    constraints = fp.ExecutionConstraints(10_000, memory_limit_bytes=LIMIT)
    budget = constraints.create_budget()
    budget.enforce(work)
    if fp.kind == "compiled":
        # The allocator hook really counted the call (the twin only counts charges).
        assert budget.stats().memory_allocated_bytes > 0

    def enforce_work():
        return constraints.create_budget().enforce(work)

    measure(benchmark, GROUP, "work_enforce_limit", fp.kind, enforce_work)


@pytest.fixture
def tracing():
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already tracing")
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_work_under_tracemalloc(benchmark, tracing):
    measure(benchmark, GROUP, "work", "tracemalloc", work)
