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
import sysconfig
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
    if pymalloc != "debug" and sysconfig.get_config_var("Py_GIL_DISABLED"):
        # a free-threaded build runs on mimalloc: "PYTHONMALLOC: unknown allocator"
        pytest.skip(f"PYTHONMALLOC={pymalloc} does not exist on a free-threaded build")
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


# ---------------------------------------------------------------- regression tests
# (one per hole of the memory-accounting issue; see README "Memory")


def _run_script(script, *args, timeout=120):
    """Run a script in a fresh interpreter on the compiled core: an abort or a
    deadlock fails the test instead of killing or hanging pytest."""
    env = {k: v for k, v in os.environ.items() if k != "FASTPATH_NO_EXTENSIONS"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


SMALLER_BLOCKS = """
import sys
import fastpath
from fastpath import ConstraintViolation, ExecutionConstraints
assert fastpath.IMPLEMENTATION == "compiled"
catch = {"MemoryError": MemoryError, "BaseException": BaseException}[sys.argv[1]]

def rule():
    # Fill the cap and its grace margin with ever smaller blocks, keeping every
    # MemoryError alive (CPython 3.11 keeps only 16 spare MemoryError objects).
    errors, keep = [], []
    size = 1 << 20
    while size:
        try:
            keep.append(bytearray(size))
        except catch as exc:
            errors.append(exc)
            size //= 2
    return len(errors)

budget = ExecutionConstraints(10_000, memory_limit_bytes=1 << 20).create_budget()
try:
    budget.enforce(rule)
except ConstraintViolation as exc:
    print(exc.kind.name)
else:
    print("not refused")
"""


@pytest.mark.parametrize("swallowed", ["MemoryError", "BaseException"])
def test_filling_the_cap_with_smaller_and_smaller_blocks_never_aborts(swallowed):
    out = _run_script(SMALLER_BLOCKS, swallowed)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "MEMORY_EXCEEDED"


def test_a_callee_that_swallows_the_memory_error_is_stopped_by_an_interrupt(fp):
    def stubborn():
        hoard = []
        while True:                                 # only an interrupt ends this
            try:
                hoard.append(bytearray(64 * 1024))
            except MemoryError:
                pass

    b = capped(fp).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        b.enforce(stubborn)
    v = info.value
    assert v.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert v.interrupted is True and v.interruptible is False
    assert isinstance(v.__context__, fp.ExecutionInterrupted)
    assert v.stats.memory_peak_bytes < 2 * MB
    assert capped(fp).create_budget().enforce(sum, range(10)) == 45   # nothing left pending


def test_an_error_raised_from_the_refusal_is_a_memory_violation(fp):
    def rule():
        try:
            return [0] * MB
        except MemoryError:
            raise ValueError("could not build the table") from None

    with pytest.raises(fp.ConstraintViolation) as info:
        capped(fp).create_budget().enforce(rule)
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert info.value.interrupted is True
    assert isinstance(info.value.__context__, ValueError)

    def unrelated():                # no refusal: fn's own error passes through
        raise ValueError("mine")

    with pytest.raises(ValueError, match="mine"):
        capped(fp).create_budget().enforce(unrelated)


def test_the_memory_interrupt_is_claimed_by_the_level_whose_cap_refused(fp):
    def stubborn():
        hoard = []
        while True:
            try:
                hoard.append(bytearray(64 * 1024))
            except MemoryError:
                pass

    # The inner cap refuses: the inner enforce claims the interrupt; the outer
    # call sees the inner violation as an ordinary exception and goes on.
    outer = fp.ExecutionConstraints(10_000, memory_limit_bytes=100 * MB).create_budget()
    inner = capped(fp).create_budget()

    def outer_rule():
        try:
            inner.enforce(stubborn)
        except fp.ConstraintViolation as exc:
            return exc.kind.name
        return "inner returned"

    assert outer.enforce(outer_rule) == "MEMORY_EXCEEDED"
    assert outer.get_violations() == []
    assert inner.get_violations() == [fp.ConstraintViolationType.MEMORY_EXCEEDED]

    # The outer cap refuses: the interrupt passes through the inner enforce.
    outer = capped(fp).create_budget()
    inner = fp.ExecutionConstraints(10_000, memory_limit_bytes=100 * MB).create_budget()
    with pytest.raises(fp.ConstraintViolation) as info:
        outer.enforce(inner.enforce, stubborn)
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert info.value.interrupted is True
    assert inner.get_violations() == []


CURRENT_FRAMES = """
import sys, threading
import fastpath
from fastpath import ConstraintViolation, ExecutionConstraints
assert fastpath.IMPLEMENTATION == "compiled"
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(8)]
for t in threads:
    t.start()
CAP = 1 << 20
GRACE = CAP // 8                    # the documented grace margin for a 1 MB cap
budget = ExecutionConstraints(10_000, memory_limit_bytes=CAP).create_budget()

def rule():
    try:
        bytearray(1 << 30)          # the first refusal: the grace margin opens
    except MemoryError:
        pass
    hoard = []
    while True:                     # fill the margin without being refused again
        headroom = CAP + GRACE - budget.stats().memory_peak_bytes
        if headroom < 2048:
            break
        hoard.append(bytearray(headroom // 2))
    # The next refusals (past the margin) come from sys._current_frames(),
    # which allocates while CPython holds the thread-list lock (HEAD_LOCK).
    for _ in range(10_000):
        try:
            sys._current_frames()
        except MemoryError:
            pass
    return "returned"

try:
    print(budget.enforce(rule))
except ConstraintViolation as exc:
    print(exc.kind.name, exc.interrupted)
finally:
    stop.set()
"""


def test_the_memory_interrupt_never_deadlocks_on_the_thread_list_lock():
    out = _run_script(CURRENT_FRAMES, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "MEMORY_EXCEEDED True"


def test_an_inner_call_cannot_free_its_way_past_its_own_cap(fp):
    # Item 7: frees of blocks the outer call allocated are not the inner call's.
    outer = fp.ExecutionConstraints(10_000, memory_limit_bytes=100 * MB).create_budget()
    results = {}

    def outer_rule():
        junk = [bytearray(MB) for _ in range(40)]          # the outer call's 40 MiB

        def inner_rule():
            junk.clear()                                   # frees the outer call's blocks
            return [bytearray(MB) for _ in range(40)]      # 40 MiB under a 1 MiB cap

        try:
            capped(fp).create_budget().enforce(inner_rule)
            results["inner"] = "kept 40 MiB"
        except fp.ConstraintViolation as exc:
            results["inner"] = exc.kind.name

        junk.extend(bytearray(MB) for _ in range(8))
        inner = fp.ExecutionConstraints(10_000, memory_limit_bytes=100 * MB).create_budget()

        def clear_then_keep():
            junk.clear()
            return bytearray(512 * 1024)

        kept = inner.enforce(clear_then_keep)
        results["inner_stats"] = inner.stats()
        return len(kept)

    assert outer.enforce(outer_rule) == 512 * 1024
    assert results["inner"] == "MEMORY_EXCEEDED"
    # An inner call's figure never goes below what it allocated itself.
    assert results["inner_stats"].memory_peak_bytes >= 512 * 1024
    assert results["inner_stats"].memory_used_bytes >= 512 * 1024


def test_an_enclosing_cap_keeps_holding_while_an_inner_call_runs(fp):
    outer = fp.ExecutionConstraints(10_000, memory_limit_bytes=10 * MB).create_budget()

    def outer_rule():
        junk = [bytearray(MB) for _ in range(8)]           # 8 of the outer's 10 MiB
        inner = fp.ExecutionConstraints(10_000, memory_limit_bytes=100 * MB).create_budget()

        def swap():                                        # frees 8 MiB, keeps 9 MiB
            junk.clear()
            return [bytearray(MB) for _ in range(9)]

        swapped = inner.enforce(swap)
        more = inner.enforce(lambda: [bytearray(MB) for _ in range(4)])   # 13 MiB: over
        return len(swapped) + len(more)

    with pytest.raises(fp.ConstraintViolation) as info:
        outer.enforce(outer_rule)
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert info.value.stats.memory_used_bytes > 10 * MB


def test_a_successful_retry_is_not_replaced_by_the_fallback(fp):
    # Item 8: attempt 1's buffer is freed (with its traceback) before attempt 2.
    enforcer = fp.ConstraintEnforcer(transient_errors=(ConnectionError,),
                                     fallbacks={fp.RuleType.SEMANTIC: "fallback"})
    attempts = []

    def rule():
        attempts.append(1)
        buf = bytearray(6 * MB)
        if len(attempts) == 1:
            raise ConnectionError("transient")
        return len(buf)

    assert enforcer.execute_with_constraints(fp.RuleType.SEMANTIC, rule) == 6 * MB
    m = enforcer.metrics()[fp.RuleType.SEMANTIC]
    assert (m["retries"], m["fail_open"]) == (1, 0)
    assert m["violations"][fp.ConstraintViolationType.MEMORY_EXCEEDED] == 0


def test_frees_between_calls_lower_the_budget_figure(fp):
    b = fp.ExecutionConstraints(10_000, memory_limit_bytes=10 * MB).create_budget()
    kept = b.enforce(lambda: bytearray(6 * MB))
    del kept                                               # freed between the calls
    kept = b.enforce(lambda: bytearray(6 * MB))            # kept: alive at the end
    assert len(kept) == 6 * MB
    s = b.stats()
    assert s.violations == ()
    assert 6 * MB <= s.memory_peak_bytes < 7 * MB
    assert s.memory_allocated_bytes >= 12 * MB


def test_frees_by_other_threads_are_subtracted(fp):
    # Item 9: a producer hands 2 MiB buffers to a consumer thread that frees them.
    handoff: queue.Queue = queue.Queue()
    freed: queue.Queue = queue.Queue()

    def consumer():
        while True:
            item = handoff.get()
            if item is None:
                return
            del item
            freed.put(True)

    t = threading.Thread(target=consumer)
    t.start()

    def producer():
        for _ in range(32):                                # 64 MiB in all, 2 MiB at a time
            handoff.put(bytearray(2 * MB))
            freed.get()
        return "produced"

    b = fp.ExecutionConstraints(10_000, memory_limit_bytes=16 * MB).create_budget()
    try:
        assert b.enforce(producer) == "produced"
    finally:
        handoff.put(None)
        t.join()
    s = b.stats()
    assert s.violations == ()
    assert s.memory_allocated_bytes >= 64 * MB
    assert s.memory_peak_bytes < 6 * MB


def test_more_live_blocks_than_the_documented_table_size_stay_exact(fp):
    # Item 10: 600,000 live blocks (the table used to fill at 524,288), three times.
    def churn():
        for _ in range(3):
            blocks = [bytes(64) for _ in range(600_000)]   # ~70 MB, 600k blocks
            del blocks
        return "done"

    b = fp.ExecutionConstraints(60_000, memory_limit_bytes=100 * MB).create_budget()
    assert b.enforce(churn) == "done"
    s = b.stats()
    assert s.violations == ()
    assert 60 * MB < s.memory_peak_bytes < 90 * MB


def test_no_periodic_stall_after_a_large_call(fp):
    # Item 11: every memory-limited call costs the same, whatever an earlier call
    # left in the table: 70,000 trivial calls, each allowed 0.5 ms of CPU (a
    # CPU-time limit: descheduling cannot break it), none of them is over.
    big = fp.ExecutionConstraints(60_000, memory_limit_bytes=1 << 30).create_budget()
    kept = big.enforce(lambda: [bytes(8) for _ in range(300_000)])
    trivial = fp.ExecutionConstraints(50, cpu_shares=1, memory_limit_bytes=MB)

    def one_pass() -> list:
        over = []
        gc.disable()
        try:
            for i in range(70_000):
                try:
                    trivial.create_budget().enforce(int)
                except fp.ConstraintViolation as exc:
                    # A loaded machine can deschedule one call past its 50 ms wall
                    # limit; a stall of the library shows up as CPU (or memory).
                    if exc.violations != (fp.ConstraintViolationType.TIMEOUT_EXCEEDED,):
                        over.append((i, exc.kind.name, exc.stats.cpu_time_us))
        finally:
            gc.enable()
        return over

    # A stall of the library recurs in every pass (before the fix: the same
    # call index each time); a burst of CPU the kernel charged to this thread
    # under load (seen once in a full run: six calls in a row at ~1 ms) does
    # not.  So one clean pass out of two is the pass mark.
    first = one_pass()
    second = one_pass() if first else []
    assert len(kept) == 300_000
    del kept
    assert first == [] or second == [], (first, second)


THREAD_TABLES = """
import gc, threading
import fastpath
from fastpath import ExecutionConstraints
assert fastpath.IMPLEMENTATION == "compiled"

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def sixteen_threads(constraints):
    one_at_a_time = threading.Lock()
    all_alive = threading.Barrier(16)

    def worker():
        with one_at_a_time:
            blocks = constraints.create_budget().enforce(lambda: [object() for _ in range(600_000)])
            del blocks
        all_alive.wait()            # 16 threads alive at once: 16 per-thread states

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()

# The same work without a memory limit first: what the interpreter itself keeps.
sixteen_threads(ExecutionConstraints(60_000))
before = rss_mib()
sixteen_threads(ExecutionConstraints(60_000, memory_limit_bytes=1 << 30))
print(round(rss_mib() - before))
"""


def test_accounting_state_is_released_after_large_calls_and_thread_exit():
    # Item 12: 16 threads, one call each with 600,000 live blocks.
    out = _run_script(THREAD_TABLES)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) < 32, f"RSS grew by {out.stdout.strip()} MiB"


# ------------------------------------------------------ the process-wide block table


@pytest.fixture
def table(fp):
    info = fp.core._memory_table_info
    gc.collect()
    return info


def test_past_the_table_limit_the_figure_is_an_upper_bound(fp, table):
    previous = fp.core._memory_table_limit(1024)
    try:
        room = max(table()["capacity"], 1024) * 3 // 4     # blocks the table holds now
        b = fp.ExecutionConstraints(60_000, memory_limit_bytes=1 << 30).create_budget()
        blocks = b.enforce(lambda: [bytes(64) for _ in range(4 * room)])
        assert table()["untracked_blocks"] > 0
        used = b.stats().memory_used_bytes
        assert used >= 4 * room * 97                       # never below the truth
        del blocks                                         # the untracked frees are not seen
        s = b.stats()
        assert s.memory_used_bytes == used
        more = b.enforce(lambda: bytes(MB))
        assert b.stats().memory_peak_bytes > MB            # still counted, upper bound
        del more
    finally:
        fp.core._memory_table_limit(previous)
    gc.collect()
    assert table()["blocks"] < 1024


def test_blocks_of_a_deallocated_budget_leave_the_table(fp, table):
    # A cache keeps what memory-limited calls returned; the budgets are gone.
    c = fp.ExecutionConstraints(60_000, memory_limit_bytes=100 * MB)
    budgets = [c.create_budget() for _ in range(20)]
    cache = [b.enforce(lambda: [object() for _ in range(1000)]) for b in budgets]
    assert table()["blocks"] >= 20_000                 # theirs while the budgets live
    del budgets
    assert table()["dead_blocks"] >= 20_000
    # Table operations (any tracked allocation or free) sweep the garbage away.
    # A sweep waits as many operations as the table has slots, then visits
    # two slots per operation: 65,536 slots here at most.
    worker = fp.ExecutionConstraints(60_000, memory_limit_bytes=100 * MB)
    calls = 0
    while calls < 2000 and table()["blocks"] >= 2000:
        worker.create_budget().enforce(lambda: [bytes(10) for _ in range(200)])
        calls += 1
    info = table()
    assert info["blocks"] < 2000 and info["dead_blocks"] == 0, (calls, info)
    assert info["capacity"] <= 16_384                  # and the table shrank
    assert len(cache) == 20
    del cache                          # frees of blocks nobody tracks any more: harmless
    gc.collect()
    assert table()["blocks"] < 2000


def test_a_block_grown_after_the_call_leaves_the_accounting(fp):
    b = fp.ExecutionConstraints(60_000, memory_limit_bytes=100 * MB).create_budget()
    items = b.enforce(lambda: [None] * 100_000)         # 800 KB, counted
    peak = b.stats().memory_peak_bytes
    items.extend([None] * 1_000_000)                    # realloc outside any call
    assert b.stats().memory_peak_bytes == peak          # nothing added outside calls
    b.enforce(lambda: bytearray(peak))                  # and the old block no longer counts:
    assert b.stats().memory_peak_bytes < 2 * peak + 4096
    del items


def test_figures_stay_sound_across_many_budgets_and_threads(fp, table):
    # A mixed workload: nested calls, frees on other threads, results kept and dropped.
    handoff: queue.Queue = queue.Queue()
    stop = object()

    def drain():
        while handoff.get() is not stop:
            pass

    t = threading.Thread(target=drain)
    t.start()
    outer_c = fp.ExecutionConstraints(60_000, memory_limit_bytes=64 * MB)
    inner_c = fp.ExecutionConstraints(60_000, memory_limit_bytes=8 * MB)
    kept = []
    try:
        for i in range(300):
            outer = outer_c.create_budget()

            def rule(i=i):
                local = [bytes(100) for _ in range(100)]
                inner = inner_c.create_budget()
                got = inner.enforce(lambda: [bytearray(1000) for _ in range(50)])
                handoff.put(got)
                kept.append(local if i % 7 == 0 else None)
                s = inner.stats()
                assert 0 < s.memory_peak_bytes <= s.memory_allocated_bytes
                return len(local)

            assert outer.enforce(rule) == 100
            s = outer.stats()
            assert s.violations == ()
            assert 0 < s.memory_peak_bytes <= s.memory_allocated_bytes
    finally:
        handoff.put(stop)
        t.join()
    kept.clear()
    gc.collect()
    for _ in range(100):
        outer_c.create_budget().enforce(lambda: [bytes(10) for _ in range(100)])
    assert table()["blocks"] < 2000
