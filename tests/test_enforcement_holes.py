"""Regression tests for the preemption and CPU holes found by adversarial testing.

Each test names the hole it closes (the numbers of the enforcement-holes
issue).  Every loop is bounded, and every timing fact is an ordering fact
with wide headroom ("a 2 s spin under a 20 ms budget stopped before 1 s").
Crashes and process-wide state (signal dispositions, import order, small
thread stacks) are tested in a subprocess.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from typing import Iterator, List

import pytest

from tests.threads import in_thread as run_in_thread

GIVE_UP_S = 5.0


def spin(seconds: float = GIVE_UP_S) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "ran to the end"


def burn_cpu(seconds: float) -> float:
    """Use `seconds` of this thread's CPU time (not wall time)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seconds


# A worker's give-up time: four times a call's.
in_thread = functools.partial(run_in_thread, join_s=GIVE_UP_S * 4)


def run_script(body: str, kind: str, *args: str, timeout: float = 60.0):
    env = dict(os.environ)
    if kind == "python":
        env["FASTPATH_NO_EXTENSIONS"] = "1"
    else:
        env.pop("FASTPATH_NO_EXTENSIONS", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


# --------------------------------------------------------- 2. signal dispositions

SIGNAL_SCRIPT = """
import json, signal, sys, time
import fastpath
from fastpath import ConstraintViolation, ExecutionConstraints

def spin(seconds=2.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

sig = fastpath.preemption_info()["signal"]
assert sig, fastpath.preemption_info()
hits = []
mode = sys.argv[1]
if mode == "handler":
    signal.signal(sig, lambda s, f: hits.append(s))
elif mode == "ignore":
    signal.signal(sig, signal.SIG_IGN)
elif mode == "default":
    signal.signal(sig, signal.SIG_DFL)
outcomes = []
for _ in range(5):
    t0 = time.monotonic()
    try:
        ExecutionConstraints(20).create_budget().enforce(spin)
        outcomes.append("ran to the end")
    except ConstraintViolation as exc:
        outcomes.append("stopped" if exc.interrupted and time.monotonic() - t0 < 1.0
                        else "late")
t0 = time.monotonic()
try:
    ExecutionConstraints(20).create_budget().enforce(time.sleep, 0.3)
except ConstraintViolation:
    pass
info = fastpath.preemption_info()
print(json.dumps({"outcomes": outcomes, "hits": len(hits), "main_thread": info["main_thread"],
                  "route": info["signal_route"]}))
"""


@pytest.mark.parametrize("mode", ["handler", "ignore", "default"])
def test_changing_the_signal_disposition_after_import_never_stops_enforcement(mode):
    out = run_script(SIGNAL_SCRIPT, "compiled", mode)
    assert out.returncode == 0, (out.returncode, out.stderr)
    report = json.loads(out.stdout)
    assert report["outcomes"] == ["stopped"] * 5, report
    # fastpath notices at its first send at the latest, and uses the GIL path from then on
    assert report["hits"] <= 1, report
    assert report["main_thread"] == "gil" and report["route"] == "lost", report


# ------------------------------------------------------ 3. import from a worker thread

def test_importing_fastpath_first_from_a_worker_thread_keeps_main_thread_signals():
    out = run_script("""
        import json, threading, time
        t = threading.Thread(target=lambda: __import__("fastpath"))
        t.start(); t.join()
        import fastpath
        from fastpath import ConstraintViolation, ExecutionConstraints
        t0 = time.monotonic()
        try:
            ExecutionConstraints(20).create_budget().enforce(time.sleep, 1.0)
            outcome = "ran to the end"
        except ConstraintViolation as exc:
            outcome = "stopped" if exc.interrupted else "late"
        print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - t0,
                          "main_thread": fastpath.preemption_info()["main_thread"]}))
    """, "compiled")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["outcome"] == "stopped" and report["seconds"] < 0.5, report
    assert report["main_thread"] == "signal", report


# ----------------------------------------------------------- 4. C-stack exhaustion

@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_deeply_nested_enforce_raises_recursion_error_instead_of_crashing(kind):
    out = run_script("""
        import sys, threading
        from fastpath import ExecutionConstraints
        sys.setrecursionlimit(1_000_000)
        c = ExecutionConstraints(60_000)
        def nest(n):
            if n == 0:
                return 0
            return c.create_budget().enforce(nest, n - 1)
        box = {}
        def run():
            try:
                nest(20_000)
                box["outcome"] = "returned"
            except RecursionError:
                box["outcome"] = "RecursionError"
        threading.stack_size(512 * 1024)
        t = threading.Thread(target=run)
        t.start(); t.join()
        print(box.get("outcome"))
        print(c.create_budget().enforce(nest, 10))   # nesting still works on this thread
    """, kind)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["RecursionError", "0"]


# ------------------------------------------------ 5. interrupts and stdlib lock holders

def _noisy_logger(name: str) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(io.StringIO())
    logger.handlers[:] = [handler]
    return logger, handler


def _lock_is_free(lock) -> bool:
    """Can another thread take (and give back) the lock?  An RLock is re-entrant
    for its owner, so only another thread can tell that it was left held."""
    def take_and_release() -> bool:
        if not lock.acquire(timeout=2.0):
            return False
        lock.release()
        return True

    return in_thread(take_and_release).get("result") is True


# Builds without the fast GIL handover (free-threaded ones, even with the GIL on:
# preemption_info()["fast_gil_handover"] is False there) look at a worker only when it
# hands the GIL over, once per switch interval, at points that follow its slowest C
# calls -- for a rule that logs in a loop, mostly inside logging.  The interrupt is then
# put off again and again: seen on 3.13t, calls of such a rule ran to their 5 s give-up
# time (80 of 80 in one run; in the others every call was stopped).  The safety property
# holds on every build and is what is checked there; timely delivery is checked where
# the handover is fast.
_PUT_OFF_FOR_SECONDS = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.parametrize("where", ["main", "worker"])
def test_interrupting_a_rule_that_logs_never_leaves_the_handler_lock_held(fp, where):
    logger, handler = _noisy_logger(f"fastpath.tests.noisy.{fp.kind}.{where}")
    timely = where == "main" or not _PUT_OFF_FOR_SECONDS
    calls, give_up_s = (80, GIVE_UP_S) if timely else (10, 1.0)

    def noisy() -> None:
        end = time.monotonic() + give_up_s
        i = 0
        while time.monotonic() < end:
            logger.info("message %d", i)
            i += 1

    def many() -> int:
        stopped = 0
        for _ in range(calls):
            try:
                fp.ExecutionConstraints(2).create_budget().enforce(noisy)
            except fp.ConstraintViolation as exc:
                stopped += exc.interrupted
            handler.stream.seek(0)
            handler.stream.truncate()
        return stopped

    if where == "main":
        stopped = many()
    else:
        # a call not stopped runs give_up_s
        box = in_thread(many, join_s=give_up_s * calls + 30)
        assert "error" not in box, box
        stopped = box["result"]
    if timely:
        assert stopped >= 60    # interrupted (put off while inside logging, then delivered)
    assert _lock_is_free(handler.lock), "an interrupt left the handler's lock held"


@pytest.mark.parametrize("where", ["main", "worker"])
def test_uninterruptible_protects_the_applications_own_critical_section(fp, where):
    lock = threading.Lock()
    inside = []

    def careful() -> None:
        end = time.monotonic() + GIVE_UP_S
        while time.monotonic() < end:
            with fp.uninterruptible():
                lock.acquire()          # no try: an interrupt here would leak the lock
                inside.append(1)
                sum(range(50))
                lock.release()

    def many() -> int:
        stopped = 0
        for _ in range(100):
            try:
                fp.ExecutionConstraints(2).create_budget().enforce(careful)
            except fp.ConstraintViolation as exc:
                stopped += exc.interrupted
            assert not lock.locked(), "an interrupt landed inside uninterruptible()"
        return stopped

    if where == "main":
        assert many() == 100
    else:
        box = in_thread(many)
        assert "error" not in box, box
        assert box["result"] == 100


def test_uninterruptible_defers_the_interrupt_to_the_end_of_the_block(fp):
    block_done = []

    def rule() -> None:
        with fp.uninterruptible():
            spin(1.5)               # the 0.5 s deadline passes in here
            block_done.append(1)    # ... and the block still runs to its end
        spin(30)

    t0 = time.monotonic()
    with pytest.raises(fp.ConstraintViolation) as info:
        fp.ExecutionConstraints(500).create_budget().enforce(rule)
    assert info.value.interrupted
    assert block_done == [1]
    # Delivered "shortly after the block ends": at its exit or a statement or
    # two later (whenever the watchdog next holds the GIL), not after 30 s.
    assert time.monotonic() - t0 < 15.0


def test_no_preemption_signal_is_sent_into_an_uninterruptible_block(fp):
    # The main thread's handler could only put the signal off inside the block;
    # each signal would still interrupt what runs there (a WASM guest, a C
    # call).  The watchdog looks again each tick instead, and counts it.
    if fp.preemption_info().get("main_thread") != "signal":
        pytest.skip("no preemption signal on this core")

    def rule() -> str:
        with fp.uninterruptible():
            spin(0.5)               # the 50 ms deadline passes in here
        return "returned"

    before = fp.preemption_info()
    with pytest.raises(fp.ConstraintViolation):
        fp.ExecutionConstraints(50).create_budget().enforce(rule)
    after = fp.preemption_info()
    # ~1,800 ticks passed inside the block: at most the tick after it may signal.
    assert after["interrupts_sent"] - before["interrupts_sent"] <= 2
    assert after["interrupts_deferred"] > before["interrupts_deferred"]


class _SlowFinalizer:
    """An object whose finalizer outlives the deadline (a cycle: only the GC frees it)."""

    def __init__(self, done: list, cyclic: bool) -> None:
        self.done = done
        if cyclic:
            self.me = self

    def __del__(self) -> None:
        spin(0.6)                   # the 200 ms deadline passes in here
        self.done.append("finalized")


def _run_200ms_catching_unraisable(fp, rule, where: str) -> tuple:
    """enforce(rule) under a 200 ms budget on the main thread or a worker, with
    sys.unraisablehook recording what CPython could not raise; (the call's
    ConstraintViolation or None, the unraisable (type, object) pairs)."""
    unraisable: list = []

    def once() -> object:
        try:
            fp.ExecutionConstraints(200).create_budget().enforce(rule)
        except fp.ConstraintViolation as exc:
            return exc
        return None

    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append((u.exc_type, u.object))
    try:
        result = once() if where == "main" else in_thread(once).get("result")
    finally:
        sys.unraisablehook = old_hook
    return result, unraisable


@pytest.mark.parametrize("where", ["main", "worker"])
@pytest.mark.parametrize("how", ["gc", "refcount"])
def test_an_interrupt_never_lands_in_a_finalizer(fp, where, how):
    # An exception raised in __del__ (or a weakref callback) cannot propagate:
    # CPython prints "Exception ignored in ..." and the finalizer's work is cut
    # short.  The interrupt is put off until the finalizer has returned.
    import gc

    done: list = []

    def rule() -> None:
        obj = _SlowFinalizer(done, cyclic=how == "gc")
        del obj
        if how == "gc":
            gc.collect()
        spin()

    # 200 ms: no scheduler delay lets the deadline pass before the finalizer
    # starts (then there would be nothing to put off).
    result, unraisable = _run_200ms_catching_unraisable(fp, rule, where)
    assert unraisable == []
    assert done == ["finalized"]
    assert isinstance(result, fp.ConstraintViolation) and result.interrupted


@pytest.mark.parametrize("where", ["main", "worker"])
def test_an_interrupt_never_lands_in_an_applications_gc_callback(fp, where):
    # gc.callbacks run inside a collection, where an exception cannot propagate
    # either ("Exception ignored in: <function ...>"): fastpath's own callback,
    # which marks the collection, may come after the application's -- the
    # interrupt is still put off until the collection is over.
    import gc

    armed: list = []
    done: list = []

    def app_callback(phase: str, info: object) -> None:
        if phase == "start" and armed:
            armed.clear()
            spin(0.6)               # the 200 ms deadline passes in here
            done.append("callback")

    def rule() -> None:
        armed.append(1)
        gc.collect()
        spin()

    fp.ExecutionConstraints(200).create_budget().enforce(lambda: None)   # fastpath's callback
    gc.callbacks.insert(0, app_callback)                                # ... then the app's, first
    try:
        result, unraisable = _run_200ms_catching_unraisable(fp, rule, where)
    finally:
        gc.callbacks.remove(app_callback)
    assert unraisable == []
    assert done == ["callback"]
    assert isinstance(result, fp.ConstraintViolation) and result.interrupted


async def _async_uninterruptible() -> str:
    import fastpath

    async with fastpath.uninterruptible():
        return "inside"


def test_uninterruptible_is_also_an_async_context_manager():
    import asyncio

    assert asyncio.run(_async_uninterruptible()) == "inside"


# ----------------------------------------------------------------- 6. missed CPU overruns

class CpuHogs:
    """Busy processes on every core for the length of a `with` block (bounded)."""

    def __enter__(self) -> CpuHogs:
        code = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code])
                      for _ in range(os.cpu_count() or 2)]
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def test_no_call_over_its_cpu_allowance_returns_clean_on_a_loaded_machine(fp):
    # 50 ms wall, 1 share -> 0.5 ms of CPU; fail open, so nothing interrupts
    # the calls and every one must be reported by measurement alone.
    c = fp.ExecutionConstraints(50, cpu_shares=1, fail_closed_on_timeout=False)
    clean = []
    with CpuHogs():
        for i in range(100):
            try:
                c.create_budget().enforce(burn_cpu, 0.002)
                clean.append(i)
            except fp.ConstraintViolation as exc:
                if exc.interrupted:
                    continue    # stopped by the runaway guard (2x the wall budget) first
                assert fp.ConstraintViolationType.CPU_EXCEEDED in exc.violations, exc
                assert exc.stats.cpu_time_measured
                assert exc.stats.cpu_time_us >= 2000
    assert clean == [], f"{len(clean)} of 100 calls over their CPU allowance returned clean"


def test_a_sleeping_call_is_never_flagged_for_cpu_on_a_loaded_machine(fp):
    c = fp.ExecutionConstraints(2_000, cpu_shares=1)       # 20 ms of CPU
    flagged = []
    with CpuHogs():
        for i in range(40):
            b = c.create_budget()
            b.enforce(time.sleep, 0.025)                      # longer than the allowance
            if b.get_violations():
                flagged.append((i, b.stats()))
    assert flagged == []


def test_a_short_sleep_under_a_tight_allowance_is_not_a_cpu_violation(fp):
    import gc

    c = fp.ExecutionConstraints(50, cpu_shares=1)          # 0.5 ms of CPU
    gc.collect()
    gc.disable()                # a collection inside the call would be its CPU
    try:
        _short_sleeps(fp, c)
    finally:
        gc.enable()


def _short_sleeps(fp, c) -> None:
    # A sleeping call is not flagged.  But the kernel's thread CPU clock is the
    # measurement, and on this 2-core VM under load it once charged one such
    # call (twin, 15.8 ms wall) 3.9 ms of CPU: allow two of 50.
    flagged = []
    for _ in range(50):
        b = c.create_budget()
        try:
            b.enforce(time.sleep, 0.002)
        except fp.ConstraintViolation:
            pass                # a loaded machine can make it late: only CPU matters here
        if fp.ConstraintViolationType.CPU_EXCEEDED in b.get_violations():
            flagged.append(b.stats())
    assert len(flagged) <= 2, flagged


# ------------------------------------------------------------------- 7. nested CPU limits

@pytest.mark.parametrize("where", ["main", "worker"])
def test_an_outer_cpu_allowance_holds_during_a_more_generous_inner_call(fp, where):
    outer = fp.ExecutionConstraints(10_000, cpu_shares=1)      # 100 ms of CPU
    inner_c = fp.ExecutionConstraints(20_000, cpu_shares=50)    # 10 s of CPU

    def rule() -> str:
        return inner_c.create_budget().enforce(burn_cpu, 2.0)

    def run():
        t0 = time.monotonic()
        try:
            outer.create_budget().enforce(rule)
            return "ran to the end", time.monotonic() - t0
        except fp.ConstraintViolation as exc:
            return exc, time.monotonic() - t0

    if where == "main":
        result, seconds = run()
    else:
        box = in_thread(run)
        assert "error" not in box, box
        result, seconds = box["result"]
    assert isinstance(result, fp.ConstraintViolation), result
    assert result.kind is fp.ConstraintViolationType.CPU_EXCEEDED and result.interrupted
    assert seconds < 1.0


# ---------------------------------------------------------- 13. the switch interval

def test_nobody_ever_observes_the_watchdogs_lowered_switch_interval(fp):
    before = sys.getswitchinterval()
    seen: set[float] = set()
    stop = threading.Event()

    def observer() -> None:
        while not stop.is_set():
            seen.add(sys.getswitchinterval())

    watcher = threading.Thread(target=observer)
    watcher.start()
    try:
        for _ in range(150):
            box = in_thread(lambda: fp.ExecutionConstraints(1).create_budget().enforce(spin))
            assert isinstance(box.get("error"), fp.ConstraintViolation)
            seen.add(sys.getswitchinterval())
    finally:
        stop.set()
        watcher.join()
    assert seen == {before}


# -------------------------------------------------------------------- 14. greenlets

GREENLET_SCRIPT = """
import time
from typing import Iterator, List
import greenlet
from fastpath import ExecutionConstraints, ExecutionInterrupted

# 1 s: both calls must fit (seconds of headroom for a few greenlet switches), and
# the loop below outlasts the deadline, when a leftover arm would fire.
c = ExecutionConstraints(1000, memory_limit_bytes=1 << 20)
order = []

def rule_a():
    order.append("a in")
    gb.switch()                 # B arms its own call, then switches back here
    order.append("a out")
    return "a"

def rule_b():
    order.append("b in")
    ga.switch()                 # back to A, which returns first
    order.append("b out")
    return "b"

ga = greenlet.greenlet(lambda: c.create_budget().enforce(rule_a))
gb = greenlet.greenlet(lambda: c.create_budget().enforce(rule_b))
assert ga.switch() == "a"       # A's call returned while B's is still open
assert gb.switch() == "b"
assert order == ["a in", "b in", "a out", "b out"], order
# Both calls have ended: no interrupt may arrive for either (their deadlines
# pass during this loop), and no cap applies.
strays = 0
end = time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        sum(range(100))
    except ExecutionInterrupted:
        strays += 1
big = bytearray(8 << 20)
print(strays, len(big))
# A later call on this thread is still measured.
try:
    ExecutionConstraints(10).create_budget().enforce(time.sleep, 0.05)
    print("ran clean")
except Exception as exc:
    print(type(exc).__name__)
"""


@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_greenlets_returning_out_of_order_leave_no_stray_interrupt_or_memory_cap(kind):
    pytest.importorskip("greenlet")
    if os.environ.get("FASTPATH_SANITIZE") == "1":
        pytest.skip("greenlet copies C stacks with memcpy, which ASan reports as a "
                    "stack-buffer-underflow (its documented false positive)")
    out = run_script(GREENLET_SCRIPT, kind)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["0", str(8 << 20), "ConstraintViolation"]


# ---------------------------------------------- 15. interruptible on the CPU path

def test_a_regex_past_its_cpu_allowance_in_a_worker_is_not_interruptible(fp):
    pattern = re.compile(r"(a+)+$")
    text = "a" * 24 + "b"           # one _sre call of ~0.3-1 s: nothing stops it in a worker

    def run():
        # 1 s wall, 2 shares -> 20 ms of CPU: the CPU allowance is crossed first
        return fp.ExecutionConstraints(1_000, cpu_shares=2).create_budget().enforce(
            pattern.match, text)

    box = in_thread(run)
    v = box.get("error")
    assert isinstance(v, fp.ConstraintViolation), box
    assert fp.ConstraintViolationType.CPU_EXCEEDED in v.violations
    assert v.stats.elapsed_ns > 150_000_000
    assert v.interruptible is False


# ------------------------------------------------ 15. weak-reference callbacks

def test_an_interrupt_is_put_off_inside_a_weakref_callback():
    """The GC runs weakref callbacks anywhere; an interrupt raised in one is only
    printed as "ignored" (seen under load: ``WeakSet._remove`` in a worker thread
    spinning under a 1 ms budget), so such frames are critical, like logging's."""
    import weakref

    from fastpath._critical import frame_is_critical

    class Obj:
        pass

    seen = []
    obj = Obj()
    weakref.finalize(obj, lambda: seen.append(frame_is_critical(sys._getframe())))
    del obj                                 # the callback runs in weakref.py's finalize
    assert seen == [True]
    assert not frame_is_critical(sys._getframe())


# --------------------------- 5. the twin's look at another thread's stack

def _park_at_depth(depth: int, ready: threading.Event, release: threading.Lock) -> None:
    if depth > 1:
        _park_at_depth(depth - 1, ready, release)
    else:
        ready.set()
        release.acquire(timeout=30)     # parked in a C call, in this (not critical) file


@contextlib.contextmanager
def _main_thread_collections() -> Iterator[List[int]]:
    """Count (one list item each) the collections started on the main thread
    inside the block, with a young collection due at every other allocation."""
    runs: List[int] = []

    def count(phase: str, info: object) -> None:
        if phase == "start" and threading.current_thread() is threading.main_thread():
            runs.append(1)

    threshold = gc.get_threshold()
    gc.callbacks.append(count)
    gc.set_threshold(1, 1_000_000, 1_000_000)
    try:
        yield runs
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(count)


def _collections_during_look(depth: int) -> int:
    """Garbage collections started while the twin looks at a thread parked
    `depth` Python frames deep (whose callers have no frame objects yet), with
    a collection due at every allocation."""
    from fastpath import _critical

    ready, release = threading.Event(), threading.Lock()
    release.acquire()
    t = threading.Thread(target=_park_at_depth, args=(depth, ready, release))
    t.start()
    ready.wait(30)
    while sys._current_frames()[t.ident].f_code is not _park_at_depth.__code__:
        time.sleep(0.001)               # (still returning from ready.set())
    try:
        top = sys._current_frames()[t.ident]
        with _main_thread_collections() as runs:
            _critical.frame_is_critical(top)
    finally:
        release.release()
        t.join()
    return len(runs)


@pytest.mark.skipif(bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
                    reason="with the GIL off the target runs during the look anyway")
def test_the_twins_look_at_another_threads_stack_runs_no_collection_between_frames():
    """Each frame object the look makes for the target's callers is an
    allocation, which can start a collection; a collection runs gc.callbacks
    and finalizers, Python code that can hand the GIL to the target, which
    then returns from the frames being read (CI: the twin's watchdog died with
    "'dict' object has no attribute 'f_code'", a frame read from the target's
    reused stack).  The look makes them all with collections off, so how many
    collections start during it does not grow with the stack's depth.  (3.11
    starts a collection inside the allocation that falls due, 3.12 and later
    at the next eval-breaker check, which the old Python walk met between two
    frames: 7 collections at a depth of 10 and 32 at 60 on 3.13.5.)"""
    shallow, deep = _collections_during_look(10), _collections_during_look(60)
    assert abs(deep - shallow) <= 1, (shallow, deep)


def _collections_while_finding_a_thread(threads: int) -> int:
    """Collections started while the twin looks for one of `threads` parked
    threads that nobody has looked at yet (``sys._current_frames()`` makes a
    frame object for each of them, under the interpreter's thread-list lock)."""
    from fastpath import _critical

    readies = [threading.Event() for _ in range(threads)]
    releases = [threading.Lock() for _ in range(threads)]
    for release in releases:
        release.acquire()
    parked = [threading.Thread(target=_park_at_depth, args=(1, ready, release))
              for ready, release in zip(readies, releases, strict=True)]
    for t in parked:
        t.start()
    for ready in readies:
        ready.wait(30)
    time.sleep(0.05)                # (each into its acquire(): nothing allocating meanwhile)
    try:
        with _main_thread_collections() as runs:
            _critical.thread_is_critical(parked[0].ident)
    finally:
        for release in releases:
            release.release()
        for t in parked:
            t.join()
    return len(runs)


@pytest.mark.skipif(bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
                    reason="with the GIL off the twin does not look at frames")
def test_finding_the_target_thread_runs_no_collection_under_the_thread_list_lock():
    """A collection started while sys._current_frames() holds the thread-list
    lock runs Python callbacks that can hand the GIL to a thread that then
    waits for that lock (starting or ending a thread): the twin finds the
    target's frame with the collector off, so the count does not grow with the
    number of threads (before: 13 with 2 threads, 42 with 60; after, 19 and 21:
    the frames made count towards one more collection once the look is over)."""
    few, many = (_collections_while_finding_a_thread(2),
                 _collections_while_finding_a_thread(60))
    assert many - few <= 3, (few, many)


def test_a_look_that_meets_something_other_than_a_frame_puts_the_interrupt_off():
    from fastpath._critical import frame_is_critical

    class Torn:                     # what a frame read from reused stack memory looked like
        f_code = sys._getframe().f_code
        f_back = {"__name__": "_pytest.capture"}

    assert frame_is_critical(Torn()) is True


def test_the_twins_watchdog_survives_an_error_in_a_tick_and_keeps_stopping_calls(
        monkeypatch, caplog):
    """An unexpected error in one tick of the twin's watchdog killed its thread:
    every later call ran unstopped (and pytest reported the thread's exception)."""
    from fastpath import _budget_py as twin

    real = twin.thread_is_critical
    failures = []

    def fails_once(ident):
        if not failures:
            failures.append(ident)
            raise RuntimeError("a tick went wrong")
        return real(ident)

    monkeypatch.setattr(twin, "thread_is_critical", fails_once)
    with caplog.at_level(logging.ERROR, logger="fastpath"):
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(twin.ConstraintViolation) as info:
                twin.ExecutionConstraints(20).create_budget().enforce(spin, 2.0)
            assert time.monotonic() - t0 < 1.0 and info.value.interrupted
    assert failures and twin.preemption_info()["watchdog_running"]
    assert any("a tick went wrong" in r.getMessage() or
               (r.exc_info and "a tick went wrong" in str(r.exc_info[1])) for r in caplog.records)
