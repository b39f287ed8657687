"""``python -m fastpath.selftest``: prove the installed module works, and what it costs.

Shows which implementation is loaded (and fails if it is the pure-Python twin,
unless ``--allow-python``), runs a short functional check of every component,
measures the per-call costs next to the design's figures and a bare Python
call, and prints one table (``--json``: one JSON document).  The exit status
is non-zero when a functional check fails; timings are reported, never a
reason to fail.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import threading
import time
import timeit
from typing import Any, Callable, Dict, List, Optional, Tuple

import fastpath
from fastpath import (
    ConstraintEnforcer,
    ConstraintViolation,
    ConstraintViolationType,
    ExecutionBudget,
    ExecutionConstraints,
    InvalidConfiguration,
    LatencyHistogram,
    RetryPolicy,
    RuleType,
)

V = ConstraintViolationType
MB = 1024 * 1024


# ------------------------------------------------------------------- checks
#
# No check uses ``assert``: ``python -O -m fastpath.selftest`` must run every
# one of them (tests/test_selftest.py runs it so, and checks the source).


class CheckFailed(Exception):
    """A functional check found the library misbehaving."""


def expect(ok: object, detail: str) -> None:
    """Fail the running check with ``detail`` unless ``ok``."""
    if not ok:
        raise CheckFailed(detail)


def _spin(seconds: float = 3.0) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "ran to the end"


def check_presets() -> str:
    fast = ExecutionConstraints.fast_rule()
    expect((fast.max_exec_ms, fast.cpu_shares, fast.memory_limit_bytes) == (5, 10, MB),
           f"fast_rule() is {fast!r}")
    expect(fast.fail_closed_on_timeout and fast.cpu_allowance_ms == 0.5,
           f"fast_rule() is {fast!r}, CPU allowance {fast.cpu_allowance_ms} ms")
    sem = ExecutionConstraints.semantic_rule()
    expect((sem.max_exec_ms, sem.max_retries, sem.fail_closed_on_timeout) == (100, 2, False),
           f"semantic_rule() is {sem!r}")
    expect(ExecutionConstraints.wasm_hook(25).max_exec_ms == 25, "wasm_hook(25) is not 25 ms")
    expect(ExecutionConstraints.observational(0.3).sampling_rate == 0.3,
           "observational(0.3) does not sample at 0.3")
    expect(ExecutionConstraints.from_dict(sem.to_dict()) == sem,
           "from_dict(to_dict()) does not round-trip")
    return "4 presets, dict round trip"


def check_validation() -> str:
    for kwargs in ({"sampling_rate": 1.5}, {"cpu_shares": 150}, {"memory_limit_bytes": 0},
                   {"max_retries": -1}, {"fail_closed_on_timeout": 1}):
        try:
            ExecutionConstraints(5, **kwargs)
        except InvalidConfiguration as exc:
            expect(next(iter(kwargs)) in str(exc), f"{kwargs}: the message {exc} lacks the field")
        else:
            raise CheckFailed(f"{kwargs} was accepted")
    return "bad values rejected with field and value"


def check_budget() -> str:
    # A budget no scheduler delay can exhaust for the call that must fit.
    b = ExecutionConstraints(60_000).create_budget()
    expect(b.enforce(lambda x: x * 2, 21) == 42, "enforce did not return the call's value")
    late = ExecutionBudget(ExecutionConstraints(2), preempt=False)
    try:
        late.enforce(time.sleep, 0.005)
    except ConstraintViolation as exc:
        expect(exc.kind is V.TIMEOUT_EXCEEDED and exc.stats.elapsed_ns >= 5_000_000,
               f"a late call was reported as {exc!r}")
    else:
        raise CheckFailed("a late call was not reported")
    err = ValueError("mine")
    try:
        ExecutionConstraints(60_000).create_budget().enforce(_raise, err)
    except ValueError as exc:
        expect(exc is err, "the callee's exception was replaced")
    else:
        raise CheckFailed("the callee's exception did not propagate")
    return "enforce, late call, callee errors unchanged"


def _raise(exc: BaseException) -> None:
    raise exc


def check_sampling() -> str:
    n, p = 100_000, 0.25
    c = ExecutionConstraints(5, sampling_rate=p)
    hits = sum(c.should_sample() for _ in range(n))
    sd = math.sqrt(n * p * (1 - p))
    expect(abs(hits - n * p) < 6 * sd, f"p=0.25 sampled {hits} of {n:,}")
    expect(not any(ExecutionConstraints(5, sampling_rate=0.0).should_sample()
                   for _ in range(1000)), "rate 0.0 sampled a call")
    expect(all(ExecutionConstraints(5, sampling_rate=1.0).should_sample() for _ in range(1000)),
           "rate 1.0 skipped a call")
    return f"p=0.25: {hits / n:.4f} over {n:,} draws; 0.0 and 1.0 exact"


def check_enforcer() -> str:
    events: List[Any] = []
    C = ExecutionConstraints
    # FAST and SEMANTIC (20 ms) only see calls that overrun; the call that must
    # fit runs as WASM_HOOK, with a budget no scheduler delay can exhaust.
    e = ConstraintEnforcer.with_constraints(
        C(20), C(20, fail_closed_on_timeout=False), C(60_000), C(20, fail_closed_on_timeout=False),
        audit_sink=events.append, fallbacks={RuleType.SEMANTIC: "fallback"}, preempt=False)
    expect(e.execute_with_constraints(RuleType.WASM_HOOK, abs, -3) == 3,
           "execute_with_constraints did not return the call's value")
    try:
        e.execute_with_constraints(RuleType.FAST, time.sleep, 0.03)
    except ConstraintViolation:
        pass
    else:
        raise CheckFailed("fail closed did not deny")
    expect(e.execute_with_constraints(RuleType.SEMANTIC, time.sleep, 0.03) == "fallback",
           "fail open did not return the fallback")
    outcomes = [ev.outcome for ev in events]
    expect(outcomes == ["deny", "fallback"], f"audit outcomes {outcomes}")
    m = e.metrics()
    expect(m[RuleType.FAST]["fail_closed"] == 1 and m[RuleType.SEMANTIC]["fail_open"] == 1,
           "fail_closed / fail_open not counted")
    expect(m[RuleType.FAST]["latency"]["count"] == 1
           and m[RuleType.WASM_HOOK]["latency"]["count"] == 1, "latencies not recorded")
    return "fail closed denies, fail open falls back, audit + metrics"


def _expect(ok: bool, what: str) -> None:
    """An explicit check (``python -O`` strips asserts)."""
    if not ok:
        raise CheckFailed(what)


def check_breaker() -> str:
    from fastpath import CircuitBreaker, CircuitState, ResourceExhausted

    now = [0.0]
    events: List[Any] = []
    e = ConstraintEnforcer(audit_sink=events.append, preempt=False)
    breaker = CircuitBreaker(minimum_calls=2, window_calls=2, open_ms=100, half_open_calls=1,
                             clock=lambda: now[0])
    rule = e.rule("selftest-breaker", RuleType.FAST, constraints=ExecutionConstraints(1000),
                  breaker=breaker)

    def boom() -> None:
        raise ValueError("failure")

    for _ in range(2):
        try:
            rule(boom)
        except ValueError:
            pass
    _expect(breaker.state is CircuitState.OPEN, f"2 failures of 2 left it {breaker.state!r}")
    ran: List[int] = []
    try:
        rule(ran.append, 1)
    except ResourceExhausted:
        pass
    else:
        raise CheckFailed("an open breaker did not refuse the call")
    _expect(ran == [], "a refused call ran fn")
    now[0] += 0.101
    _expect(rule(abs, -2) == 2, "the half-open probe did not run")
    _expect(breaker.state is CircuitState.CLOSED, f"a good probe left it {breaker.state!r}")
    moves = [ev.details["to"] for ev in events if ev.event_type == "circuit_state"]
    _expect(moves == ["open", "half_open", "closed"], f"audit events {moves}")
    _expect(e.rule_metrics()["selftest-breaker"]["refused"] == 1, "refusal not counted")
    return "closed -> open -> half_open -> closed, refusal without running fn, audited"


def check_retry() -> str:
    delays: List[float] = []
    attempts: List[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return "ok"

    policy = RetryPolicy(3, 10).with_exponential_backoff().with_sleep(delays.append)
    expect(policy.execute(flaky) == "ok", "the third attempt's value was not returned")
    expect(delays == [0.01, 0.02], f"delays {delays}, not [0.01, 0.02]")
    return "3 attempts, exponential 10/20 ms"


def check_histogram() -> str:
    rng = random.Random(3)
    values = [int(rng.lognormvariate(12, 1.0)) for _ in range(20_000)]
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    import numpy

    worst = 0.0
    for q in (50, 90, 99, 99.9):
        exact = float(numpy.percentile(values, q, method="inverted_cdf"))
        got = h.percentile(q)
        if got is None:
            raise CheckFailed(f"p{q} of 20,000 values is None")
        worst = max(worst, abs(got - exact) / exact)
    expect(worst <= 0.01, f"percentiles off by up to {worst * 100:.2f} % (bound 1 %)")
    return f"p50..p99.9 within {worst * 100:.2f} % (bound 1 %)"


def check_preemption() -> str:
    info = fastpath.preemption_info()
    results = []
    for where in ("main", "worker"):
        box: Dict[str, Any] = {}

        def run(box: Dict[str, Any] = box) -> None:
            try:
                ExecutionConstraints(10).create_budget().enforce(_spin)
            except ConstraintViolation as exc:
                box["v"] = exc

        if where == "main":
            run()
        else:
            t = threading.Thread(target=run)
            t.start()
            t.join(10)
        v = box.get("v")
        if v is None or not v.interrupted:
            raise CheckFailed(f"{where} thread runaway not stopped")
        results.append(f"{where} +{(v.stats.elapsed_ns - 10_000_000) / 1e6:.2f} ms")
    return f"runaway stopped ({', '.join(results)}; main thread via {info['main_thread']})"


def check_memory_and_cpu() -> str:
    try:
        ExecutionConstraints(1000, memory_limit_bytes=MB).create_budget().enforce(lambda: [0] * MB)
    except ConstraintViolation as exc:
        expect(V.MEMORY_EXCEEDED in exc.violations, f"memory cap reported as {exc!r}")
        memory = f"8 MB list refused under 1 MB ({exc.stats.memory_allocated_bytes} B allocated)"
    else:
        if fastpath.IMPLEMENTATION == "compiled":
            raise CheckFailed("the memory cap did not trip")
        memory = "memory cap: charge_memory only (pure-Python twin)"
    try:
        ExecutionConstraints(200, cpu_shares=5).create_budget().enforce(_spin)
    except ConstraintViolation as exc:
        expect(exc.kind is V.CPU_EXCEEDED, f"CPU runaway reported as {exc.kind}")
        cpu = f"CPU runaway stopped at {exc.stats.cpu_time_us / 1000:.1f} ms CPU (allowance 10)"
    else:
        raise CheckFailed("a CPU runaway was not stopped")
    return f"{memory}; {cpu}"


def check_asyncio() -> str:
    import asyncio

    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    async def sleeps() -> None:
        await asyncio.sleep(2.0)

    async def main() -> str:
        if await ExecutionConstraints(60_000).create_budget().enforce_async(quick) != 7:
            raise CheckFailed("enforce_async did not return the coroutine's value")
        t0 = time.monotonic()
        try:
            await ExecutionConstraints(20).create_budget().enforce_async(sleeps)
        except ConstraintViolation as exc:
            if exc.kind is not V.TIMEOUT_EXCEEDED or not exc.interrupted:
                raise CheckFailed(f"unexpected violation {exc!r}") from exc
        else:
            raise CheckFailed("a suspended coroutine past its deadline was not cancelled")
        return f"coroutine cancelled at its deadline (+{(time.monotonic() - t0) * 1e3 - 20:.1f} ms)"

    return asyncio.run(main())


def check_quota() -> str:
    quota = fastpath.Quota(calls=3, wall_ms=60_000, per_s=1e9)   # no refill to speak of
    enforcer = ConstraintEnforcer(quotas={RuleType.SEMANTIC: quota})
    ran: List[int] = []
    with enforcer.flow("selftest"):
        results = [enforcer.execute_with_constraints(RuleType.SEMANTIC, ran.append, 1)
                   for _ in range(5)]
    if len(ran) != 3 or results.count(None) != 5:
        raise CheckFailed(f"3 calls admitted expected, fn ran {len(ran)} times")
    usage = quota.store.usage("selftest")
    if (usage["admitted"], usage["refused"]) != (3, 2):
        raise CheckFailed(f"expected 3 admitted and 2 refused, the store says {usage}")
    refused = enforcer.metrics()[RuleType.SEMANTIC]["quota_refused"]
    if refused != 2:
        raise CheckFailed(f"quota_refused is {refused}, expected 2")
    if not 0 < usage["wall_ms"] < 60_000:
        raise CheckFailed(f"wall time debited {usage['wall_ms']} ms, expected a measurement")
    if quota.store.usage("other")["admitted"] != 0:
        raise CheckFailed("a flow key was charged for another one's calls")
    return (f"3 of 5 calls admitted, 2 refused without running fn; "
            f"{usage['wall_ms'] * 1e3:.1f} us of wall time debited")


def check_wasm() -> str:
    try:
        import wasmtime  # noqa: F401
    except ImportError:
        return "skipped: the fastpath[wasm] extra (wasmtime) is not installed"
    from fastpath.wasm import WasmHook

    add = WasmHook('(module (func (export "add") (param i32 i32) (result i32) '
                   '(i32.add (local.get 0) (local.get 1))))', "add",
                   constraints=ExecutionConstraints.wasm_hook(1000))
    if add(40, 2) != 42:
        raise CheckFailed("the add hook did not return 42")
    spin = WasmHook('(module (func (export "spin") (loop $l (br $l))))', "spin",
                    constraints=ExecutionConstraints(20))
    t0 = time.monotonic()
    try:
        spin()
    except ConstraintViolation as exc:
        if exc.kind is not V.TIMEOUT_EXCEEDED or not exc.interrupted:
            raise CheckFailed(f"unexpected violation {exc!r}") from exc
    else:
        raise CheckFailed("a spinning guest past its deadline was not stopped")
    return (f"add(40, 2) = 42; spinning guest trapped at its epoch deadline "
            f"(+{(time.monotonic() - t0) * 1e3 - 20:.1f} ms)")


CHECKS: List[Tuple[str, Callable[[], str]]] = [
    ("presets", check_presets),
    ("validation", check_validation),
    ("budget", check_budget),
    ("sampling", check_sampling),
    ("enforcer", check_enforcer),
    ("circuit breaker", check_breaker),
    ("retry", check_retry),
    ("histogram", check_histogram),
    ("preemption", check_preemption),
    ("memory + CPU limits", check_memory_and_cpu),
    ("asyncio", check_asyncio),
    ("quota", check_quota),
    ("wasm hooks", check_wasm),
]


# ------------------------------------------------------------------- timings

def _per_call_ns(stmt: str, env: Dict[str, Any], number: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=5)) / number * 1e9


def measure() -> List[Dict[str, Any]]:
    def f() -> None:
        pass

    # fast_rule()'s CPU and memory limits (so the same per-call work), with a
    # deadline no descheduled timing loop can miss.
    fast = ExecutionConstraints.fast_rule().replace(max_exec_ms=60_000, cpu_shares=1)
    roomy = ExecutionConstraints(60_000)
    env = {
        "f": f,
        "fast": fast,
        "half": ExecutionConstraints(5, sampling_rate=0.5),
        "budget": ExecutionConstraints(60_000).create_budget(),
        "enforcer": ConstraintEnforcer.with_constraints(fast, roomy, roomy, roomy),
        "FAST": RuleType.FAST,
        "hist": LatencyHistogram(),
        "policy": RetryPolicy(3, 10),
    }
    n = 100_000
    base = _per_call_ns("f()", env, n)
    rows: List[Dict[str, Any]] = [{"operation": "bare Python call f()", "ns": base,
                                   "seed": None, "overhead_of_f": False}]
    plan = [
        ("budget.check()", "budget.check()", "50-100 ns", False),
        ("budget.is_timeout()", "budget.is_timeout()", None, False),
        ("constraints.should_sample()", "half.should_sample()", "10-20 ns", False),
        ("constraints.create_budget()", "fast.create_budget()", "~100 ns", False),
        ("create_budget().enforce(f) - f()", "fast.create_budget().enforce(f)", None, True),
        ("execute_with_constraints(FAST, f) - f()", "enforcer.execute_with_constraints(FAST, f)",
         None, True),
        ("RetryPolicy(3, 10).execute(f) - f()", "policy.execute(f)", None, True),
        ("histogram.record(v)", "hist.record(12345)", None, False),
    ]
    for name, stmt, seed, minus_f in plan:
        try:
            ns: Optional[float] = _per_call_ns(stmt, env, n)
        except Exception:  # noqa: BLE001 - a timing run never fails the selftest
            ns = None
        if ns is not None and minus_f:
            ns -= base
        rows.append({"operation": name, "ns": ns, "seed": seed, "overhead_of_f": minus_f})
    if fastpath.IMPLEMENTATION == "compiled":
        arm = fastpath.core._measure_arm_disarm(200_000)
        rows.append({"operation": "preemption arm + disarm (C)", "ns": arm, "seed": None,
                     "overhead_of_f": False})
    for row in rows:
        row["x_f"] = None if row["ns"] is None else row["ns"] / base
    return rows


# ---------------------------------------------------------------------- report

def implementation() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "implementation": fastpath.IMPLEMENTATION,
        "module": getattr(fastpath.core, "__file__", None),
        "fastpath": fastpath.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "preemption": fastpath.preemption_info(),
    }
    if fastpath.IMPLEMENTATION == "compiled":
        info["build"] = fastpath.core.build_info()
    return info


class Painter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled:
            return text
        code = {"green": "32", "red": "31", "bold": "1", "dim": "2"}[colour]
        return f"\033[{code}m{text}\033[0m"


def run(allow_python: bool) -> Tuple[Dict[str, Any], bool]:
    started = time.monotonic()
    checks = []
    ok = True
    if fastpath.IMPLEMENTATION != "compiled" and not allow_python:
        checks.append({"name": "implementation", "ok": False,
                       "detail": "the pure-Python twin is loaded (FASTPATH_NO_EXTENSIONS?); "
                                 "pass --allow-python to accept it"})
        ok = False
    for name, fn in CHECKS:
        t0 = time.monotonic()
        try:
            detail = fn()
            passed = True
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            detail = f"{type(exc).__name__}: {exc}"
            passed = False
        ok = ok and passed
        checks.append({"name": name, "ok": passed, "detail": detail,
                       "seconds": round(time.monotonic() - t0, 3)})
    timings = measure()
    info = implementation()
    report = {"ok": ok, "info": info, "checks": checks, "timings": timings,
              "seconds": round(time.monotonic() - started, 2)}
    return report, ok


def print_report(report: Dict[str, Any], paint: Painter) -> None:
    info = report["info"]
    print(paint("fastpath selftest", "bold"))
    print(f"  implementation  {info['implementation']}  {info['module']}")
    if "build" in info:
        b = info["build"]
        print(f"  build           Cython {b['cython']}, {b['kind']}, {b['cflags']}")
        print(f"  directives      {b['directives']}")
    p = info["preemption"]
    print(f"  python          {info['python']} ({info['machine']}); "
          f"clock {p.get('clock', 'CLOCK_MONOTONIC')}; "
          f"main-thread interrupts via {p['main_thread']}"
          + (f" (signal {p['signal']})" if p["signal"] else ""))
    print()
    width = max(len(c["name"]) for c in report["checks"])
    for c in report["checks"]:
        mark = paint("PASS", "green") if c["ok"] else paint("FAIL", "red")
        print(f"  {mark}  {c['name']:<{width}}  {c['detail']}")
    print()
    print(f"  {'per-call cost':<42} {'ns':>8} {'x f()':>7}  design figure")
    for row in report["timings"]:
        seed = row["seed"] or ""
        if row["ns"] is None:
            print(f"  {row['operation']:<42} {'n/a':>8} {'':>7}  {seed}")
        else:
            print(f"  {row['operation']:<42} {row['ns']:>8.1f} {row['x_f']:>7.2f}  {seed}")
    print(paint("  (timings are reported, never a reason to fail; '- f()' rows are overhead "
                "beyond the bare call)", "dim"))
    verdict = paint("OK", "green") if report["ok"] else paint("FAILED", "red")
    print(f"\n  {verdict} in {report['seconds']} s")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastpath.selftest",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--allow-python", action="store_true",
                        help="accept the pure-Python twin instead of failing")
    args = parser.parse_args(argv)
    report, ok = run(args.allow_python)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report, Painter(sys.stdout.isatty() and os.environ.get("NO_COLOR") is None))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
