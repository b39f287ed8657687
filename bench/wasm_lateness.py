"""Goal 18c/d: deadline -> trap lateness of a WASM spin loop, and the fuel
calibration error (reference).

Lateness is the time from a hook's deadline to its ``ConstraintViolation``::

    hook = WasmHook("(module (func (export \\"spin\\") (loop $l (br $l))))", "spin",
                    constraints=ExecutionConstraints(5))
    lateness = exc.stats.elapsed_ns - 5_000_000

measured ~100 times in the main thread and ~100 times in a worker thread
(the guest traps on its epoch deadline in either: no GIL, no signal).  For
each thread it also counts the traps over 0.3 ms late during whose call the
ticker thread or the guest's own thread waited on a run queue
(``/proc/<tid>/schedstat``) for at least 60 % of that lateness: a sign that the
OS ran them late (a wait before the deadline counts too: an indicator, not a
proof).

Calibration error: fastpath converts a CPU allowance into fuel with
``fuel_per_cpu_ms()`` (measured on one workload); for three guest workloads
this runs an unbounded loop under a 20 ms allowance and reports the thread CPU
time used when the call was stopped (by fuel or by the thread CPU clock the
epoch callback reads), as a ratio to 20 ms -- and, for fuel alone, the ratio
the workload's own fuel rate implies.

Plain measurement script: ``bench/run.py`` imports it and calls :func:`run`;
``python bench/wasm_lateness.py`` prints the same figures.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.wat

from lateness import describe, in_worker_thread  # noqa: E402

from fastpath import ConstraintViolation, ConstraintViolationType, ExecutionConstraints  # noqa: E402
from tests.wat import SPIN  # noqa: E402

DEADLINE_MS = 5

# Loops of three kinds, n iterations (2**62: unbounded in practice).
_LOOP = """
(module (memory 1) (func (export "run") (param $n i64)
  (local $x i64) (local $a i32) (local.set $x (i64.const 7))
  (block $done (loop $l
    (br_if $done (i64.eqz (local.get $n)))
    (local.set $n (i64.sub (local.get $n) (i64.const 1)))
    BODY
    (br $l)))))"""
WORKLOADS = {
    "tight branch loop": _LOOP.replace("BODY", ""),
    "integer arithmetic": _LOOP.replace("BODY", """
    (local.set $x (i64.add (i64.mul (local.get $x) (i64.const 6364136223846793005))
                           (i64.const 1442695040888963407)))
    (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 29))))"""),
    "memory loads and stores": _LOOP.replace("BODY", """
    (local.set $a (i32.and (i32.add (local.get $a) (i32.const 8)) (i32.const 65528)))
    (i64.store (local.get $a) (i64.add (i64.load (local.get $a)) (i64.const 1)))"""),
}


def _schedstats() -> Optional[tuple[Path, Path]]:
    # /proc/.../schedstat of fastpath.wasm's ticker thread (named fastpath-wasm)
    # and of the calling thread: their second field is the time each spent
    # runnable but waiting for a CPU (Linux with schedstats; None elsewhere).
    try:
        for task in os.listdir("/proc/self/task"):
            if Path(f"/proc/self/task/{task}/comm").read_text().strip() == "fastpath-wasm":
                paths = (Path(f"/proc/{task}/schedstat"), Path("/proc/thread-self/schedstat"))
                for path in paths:
                    path.read_text()
                return paths
    except OSError:
        pass
    return None


def _runqueue_waits_ns(paths: Optional[tuple[Path, Path]]) -> tuple[int, int]:
    if paths is None:
        return 0, 0
    ticker, own = (int(path.read_text().split()[1]) for path in paths)
    return ticker, own


def lateness_samples(n: int, waits: Optional[list[tuple[int, int]]] = None) -> list[int]:
    """n lateness figures (ns); waits, when given, gets for each the ns the
    ticker thread and the calling thread waited on a run queue during that call."""
    from fastpath.wasm import WasmHook

    hook = WasmHook(SPIN, "spin", constraints=ExecutionConstraints(DEADLINE_MS))
    out: list[int] = []
    sched: Optional[tuple[Path, Path]] = None
    for i in range(5 + n):
        if sched is None and i:
            sched = _schedstats()           # the ticker exists from the first call on
        before = _runqueue_waits_ns(sched)
        try:
            hook()
        except ConstraintViolation as exc:
            if exc.kind is not ConstraintViolationType.TIMEOUT_EXCEEDED or not exc.interrupted:
                raise RuntimeError(f"unexpected violation {exc!r}") from exc
            if i >= 5:
                out.append(exc.stats.elapsed_ns - DEADLINE_MS * 1_000_000)
                if waits is not None:
                    after = _runqueue_waits_ns(sched)
                    waits.append((after[0] - before[0], after[1] - before[1]))
        else:  # pragma: no cover - spin never returns
            raise RuntimeError("spin returned")
    return out


def lateness_and_waits(n: int) -> dict[str, Any]:
    """describe() of n lateness figures, with how many of the late ones (over
    0.3 ms) had the ticker thread or the calling thread wait on a run queue
    during the call for at least 60 % of that lateness (see the module doc)."""
    waits: list[tuple[int, int]] = []
    samples = lateness_samples(n, waits)
    late = [(s, w) for s, w in zip(samples, waits, strict=True) if s > 300_000]
    out = describe(samples)
    out["over_0_3_ms"] = len(late)
    out["over_0_3_ms_waiting_for_a_cpu"] = sum(max(w) >= 0.6 * s for s, w in late)
    out["loadavg"] = os.getloadavg()[0]
    return out


def calibration_error(repeats: int = 5) -> dict[str, Any]:
    from fastpath.wasm import WasmHook, fuel_per_cpu_ms

    allowance_ms = 20.0
    # 2 s deadline, 1 % of it as CPU: a 20 ms allowance, far below the deadline.
    c = ExecutionConstraints(2_000, cpu_shares=1)
    out: dict[str, Any] = {"fuel_per_cpu_ms": fuel_per_cpu_ms(), "allowance_ms": allowance_ms}
    rate = fuel_per_cpu_ms()
    for name, wat in WORKLOADS.items():
        hook = WasmHook(wat, "run", constraints=c)
        # Fuel alone: this workload's fuel per CPU ms against the calibrated rate
        # (the CPU a fuel budget for A ms lets it use is A x rate / its rate).
        n = 1_000_000
        while True:
            _, cpu_ns, fuel = hook._measure((n,))
            if cpu_ns >= 5_000_000:
                break
            n *= 2
        fuel_only = rate / (fuel / (cpu_ns / 1e6))
        ratios = []
        for _ in range(repeats):
            cpu0 = time.thread_time_ns()
            try:
                hook(2**62)
            except ConstraintViolation as exc:
                if ConstraintViolationType.CPU_EXCEEDED not in exc.violations:
                    raise RuntimeError(f"unexpected violation {exc!r}") from exc
            ratios.append((time.thread_time_ns() - cpu0) / 1e6 / allowance_ms)
        ratios.sort()
        out[name] = {"cpu_over_allowance_median": ratios[len(ratios) // 2],
                     "min": ratios[0], "max": ratios[-1], "fuel_alone": fuel_only}
    return out


def run(n: int = 100) -> dict[str, Any]:
    return {
        "main": lateness_and_waits(n),
        "worker": in_worker_thread(lateness_and_waits, n),
        "goal_p99_ns": 2_000_000,
        "deadline_ms": DEADLINE_MS,
        "calibration": calibration_error(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
