"""Automatic per-call memory accounting and the hard cap (compiled core).

The pure-Python twin cannot hook the allocator: only charge_memory() counts
there, which the last test pins down.
"""

from __future__ import annotations

import gc
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import pytest

MB = 1024 * 1024


def capped(fp, limit=MB):
    """A 1 MB cap, fail closed, with a wall budget no loaded machine can overrun."""
    return fp.ExecutionConstraints(10_000, memory_limit_bytes=limit)


@pytest.fixture(scope="module")
def fp():
    from conftest import make_namespace

    return make_namespace("compiled")


def test_a_1mb_cap_stops_an_8mb_list(fp):
    b = capped(fp).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(lambda: [0] * (MB))          # 8 MB of pointers
    v = info.value
    assert v.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert v.interrupted and v.interruptible
    assert v.stats.memory_used_bytes >= 8 * MB      # what the call tried to use
    assert v.stats.memory_allocated_bytes < MB      # ... but never got
    assert isinstance(v.__context__, MemoryError)
    # The interpreter is healthy afterwards.
    gc.collect()
    assert len([0] * (4 * MB)) == 4 * MB
    assert capped(fp).create_budget().enforce(sum, range(10)) == 45


def test_a_huge_allocation_is_refused_at_once(fp):
    b = capped(fp).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(lambda: [0] * 10**8)         # 800 MB
    assert info.value.stats.memory_allocated_bytes < MB
    assert info.value.stats.memory_used_bytes >= 800_000_000


def test_a_call_within_its_cap_reports_plausible_bytes(fp):
    b = fp.ExecutionConstraints(1000, memory_limit_bytes=10 * MB).create_budget()
    strings = b.enforce(lambda: [f"user-{i:06d}" for i in range(2000)])
    s = b.stats()
    assert len(strings) == 2000 and s.violations == ()
    # 2,000 short str objects (~60 B each) plus the list: ~100-150 KB alive at the end
    assert 80_000 < s.memory_peak_bytes < 400_000
    assert s.memory_used_bytes == s.memory_peak_bytes
    assert s.memory_allocated_bytes >= s.memory_peak_bytes


def test_temporaries_that_are_freed_do_not_count_against_the_cap(fp):
    def churn():
        for _ in range(1000):
            tmp = [0] * 1000                   # 8 KB, freed at once
            del tmp
        return "done"

    b = fp.ExecutionConstraints(1000, memory_limit_bytes=MB).create_budget()
    assert b.enforce(churn) == "done"
    s = b.stats()
    assert s.memory_allocated_bytes > 7 * MB   # gross: every temporary
    assert s.memory_peak_bytes < 100_000       # net: one at a time


def test_growing_a_list_with_realloc_is_counted(fp):
    def grow():
        items = []
        for _ in range(100_000):
            items.append(None)
        return items

    b = fp.ExecutionConstraints(1000, memory_limit_bytes=10 * MB).create_budget()
    b.enforce(grow)
    assert 800_000 <= b.stats().memory_peak_bytes < 2 * MB


def test_a_large_block_is_counted_once(fp):
    b = fp.ExecutionConstraints(1000, memory_limit_bytes=100 * MB).create_budget()
    b.enforce(lambda: bytes(4 * MB))
    gross = b.stats().memory_allocated_bytes
    assert 4 * MB <= gross < 4 * MB + 4096


def test_allocations_of_other_threads_never_count(fp):
    stop = threading.Event()

    def allocator():
        junk = []
        while not stop.is_set():
            junk.append([0] * 10_000)
            if len(junk) > 50:
                junk.clear()

    t = threading.Thread(target=allocator)
    t.start()
    try:
        b = fp.ExecutionConstraints(1000, memory_limit_bytes=MB).create_budget()
        b.enforce(time.sleep, 0.1)
    finally:
        stop.set()
        t.join()
    s = b.stats()
    assert s.violations == ()
    assert s.memory_allocated_bytes < 4096


def test_frees_from_other_threads_are_safe(fp):
    handoff: queue.Queue = queue.Queue()

    def consumer():
        while True:
            item = handoff.get()
            if item is None:
                return
            del item

    t = threading.Thread(target=consumer)
    t.start()

    def producer():
        for _ in range(2000):
            handoff.put([0] * 100)
        time.sleep(0.01)
        return "produced"

    b = fp.ExecutionConstraints(5000, memory_limit_bytes=100 * MB).create_budget()
    assert b.enforce(producer) == "produced"
    handoff.put(None)
    t.join()
    s = b.stats()
    assert s.memory_allocated_bytes >= 2000 * 800
    assert 0 <= s.memory_peak_bytes <= s.memory_allocated_bytes


def test_fail_open_lets_the_call_finish_and_reports(fp):
    c = fp.ExecutionConstraints(1000, memory_limit_bytes=MB, fail_closed_on_timeout=False)
    b = c.create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(lambda: len([0] * MB))
    v = info.value
    assert v.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert v.interrupted is False
    assert v.stats.memory_peak_bytes >= 8 * MB


def test_no_cap_when_preemption_is_off(fp):
    b = fp.ExecutionBudget(fp.ExecutionConstraints(1000, memory_limit_bytes=MB), preempt=False)
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(lambda: len([0] * MB))
    assert info.value.interrupted is False
    assert info.value.stats.memory_peak_bytes >= 8 * MB


def test_charge_memory_adds_to_the_automatic_figure(fp):
    c = fp.ExecutionConstraints(1000, memory_limit_bytes=MB)
    b = c.create_budget()

    def sandbox():
        b.charge_memory(600 * 1024)            # e.g. a WASM guest's linear memory
        return len(bytes(600 * 1024))          # 600 KB more: over 1 MB together

    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(sandbox)
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert info.value.stats.memory_used_bytes > MB

    b2 = c.create_budget()
    b2.charge_memory(100)
    b2.enforce(lambda: bytes(1000))
    assert b2.stats().memory_used_bytes >= 1100


def test_no_accounting_state_leaks_after_a_call_that_raised(fp):
    c = fp.ExecutionConstraints(1000, memory_limit_bytes=10 * MB)

    def fail():
        junk = [0] * 100_000
        raise ValueError(len(junk))

    with pytest.raises(ValueError):
        c.create_budget().enforce(fail)
    # A later call starts from zero, and a call without a memory limit is not counted.
    b = c.create_budget()
    b.enforce(lambda: None)
    assert b.stats().memory_allocated_bytes < 1024
    free_budget = fp.ExecutionConstraints(1000).create_budget()
    free_budget.enforce(lambda: [0] * 100_000)
    assert free_budget.stats().memory_allocated_bytes == 0


def test_a_callee_that_swallows_the_memory_error_is_refused_again(fp):
    def stubborn():
        hoard = []
        refused = 0
        for _ in range(200):
            try:
                hoard.append([0] * 100_000)    # 800 KB each
            except MemoryError:
                refused += 1
        return refused

    b = capped(fp).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(stubborn)
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert info.value.interruptible is False           # it swallowed the refusal
    assert info.value.stats.memory_peak_bytes < 4 * MB


def test_nested_budgets_share_the_accounting(fp):
    outer = fp.ExecutionConstraints(1000, memory_limit_bytes=10 * MB).create_budget()
    inner_stats = []

    def outer_rule():
        keep = [0] * 10_000                    # 80 KB in the outer call
        inner = fp.ExecutionConstraints(1000, memory_limit_bytes=MB).create_budget()
        kept = inner.enforce(lambda: [0] * 50_000)   # 400 KB in the inner call
        inner_stats.append(inner.stats())
        return len(keep) + len(kept)

    assert outer.enforce(outer_rule) == 60_000
    assert 400_000 <= inner_stats[0].memory_peak_bytes < 500_000
    assert outer.stats().memory_peak_bytes >= 480_000

    def inner_over_outer_cap():
        inner = fp.ExecutionConstraints(1000, memory_limit_bytes=100 * MB).create_budget()
        return inner.enforce(lambda: [0] * (2 * MB))   # 16 MB: under the inner cap only

    outer2 = fp.ExecutionConstraints(1000, memory_limit_bytes=10 * MB).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        outer2.enforce(inner_over_outer_cap)
    assert outer2.get_violations() == [fp.ConstraintViolationType.MEMORY_EXCEEDED]
    assert info.value.stats.memory_used_bytes >= 16 * MB


def test_works_with_tracemalloc_running_and_after_it_stops(fp):
    c = capped(fp)
    tracemalloc.start()
    try:
        b = fp.ExecutionConstraints(1000, memory_limit_bytes=10 * MB).create_budget()
        b.enforce(lambda: [0] * 10_000)
        assert 80_000 <= b.stats().memory_peak_bytes < 200_000
        with pytest.raises(fp.ConstraintViolation):
            c.create_budget().enforce(lambda: [0] * MB)
    finally:
        tracemalloc.stop()
    # tracemalloc.stop() restores the allocators it saw at start(); the cap still works.
    with pytest.raises(fp.ConstraintViolation) as info:
        c.create_budget().enforce(lambda: [0] * MB)
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED


SCRIPT = """
import fastpath
from fastpath import ConstraintViolation, ExecutionConstraints
assert fastpath.IMPLEMENTATION == "compiled"
b = ExecutionConstraints(1000, memory_limit_bytes=10 * 2**20).create_budget()
b.enforce(lambda: [str(i) for i in range(2000)])
peak = b.stats().memory_peak_bytes
assert 80_000 < peak < 600_000, peak
try:
    capped = ExecutionConstraints(10_000, memory_limit_bytes=2**20)
    capped.create_budget().enforce(lambda: [0] * 2**20)
except ConstraintViolation as exc:
    assert exc.kind.name == "MEMORY_EXCEEDED"
else:
    raise SystemExit("cap did not trip")
print("ok")
"""


@pytest.mark.parametrize("pymalloc", ["debug", "malloc", "pymalloc"])
def test_under_other_allocator_configurations(pymalloc):
    env = {**os.environ, "PYTHONMALLOC": pymalloc}
    env.pop("FASTPATH_NO_EXTENSIONS", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_twin_counts_only_charges():
    from conftest import make_namespace

    twin = make_namespace("python")
    b = twin.ExecutionConstraints(1000, memory_limit_bytes=MB).create_budget()
    b.enforce(lambda: [0] * 10_000)
    assert (b.stats().memory_used_bytes, b.stats().memory_allocated_bytes) == (0, 0)
    b.charge_memory(2 * MB)
    with pytest.raises(twin.ConstraintViolation):
        b.check()
