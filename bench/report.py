"""The benchmark report: goals, reference rows and the operations table.

``bench/run.py`` measures and then calls :func:`write`; ``python bench/report.py``
(or ``bench/run.py --report-only``) rebuilds the report from the last run's
files, ``bench/results/latest.json`` (pytest-benchmark) and ``extras.json``.
Every figure is per call, from one run; ``bench/chart.py`` draws the operations.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LATEST = RESULTS / "latest.json"
EXTRAS = RESULTS / "extras.json"
GOALS_MD = RESULTS / "goals.md"
SUMMARY = RESULTS / "summary.json"
CHART = RESULTS / "overhead.png"

OK, MISS = "✓", "✗"


# ------------------------------------------------------------------ the numbers

class Results:
    """pytest-benchmark's figures by (key, impl), in ns per call, for one statistic."""

    def __init__(self, data: dict[str, Any], stat: str) -> None:
        self.stat = stat
        self.by: dict[tuple[str, str], dict[str, Any]] = {}
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            self.by[(info["key"], info["impl"])] = bench
        self.machine = data.get("machine_info", {})
        self.datetime = data.get("datetime")

    def has(self, key: str, impl: str) -> bool:
        return (key, impl) in self.by

    def ns(self, key: str, impl: str) -> float:
        """Per call: a round's figure divided by the calls of its inner loop."""
        bench = self.by[(key, impl)]
        return bench["stats"][self.stat] * 1e9 / bench["extra_info"].get("inner", 1)

    def info(self, key: str, impl: str) -> dict[str, Any]:
        return self.by[(key, impl)]["extra_info"]

    @property
    def f(self) -> float:
        return self.ns("f", "reference")

    @property
    def call_f(self) -> float:
        return self.ns("call_f", "reference")

    def cost(self, key: str, impl: str) -> float:
        """What the operation costs: its overhead over f() if it calls f, else its time.

        ``minus="f"``: direct benchmark of something that calls f -> minus T(f).
        ``minus="call_f"``: a wrapper around something that calls f -> minus
        T(call_f), the same wrapper around f().  ``wrapper=True``: a wrapper
        around an expression -> minus the wrapper's frame, T(call_f) - T(f).
        """
        value = self.ns(key, impl)
        info = self.info(key, impl)
        minus = info.get("minus")
        if minus == "f":
            return value - self.f
        if minus == "call_f":
            return value - self.call_f
        if info.get("wrapper"):
            return value - (self.call_f - self.f)
        return value


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "—"
    if abs(ns) >= 100_000:
        return f"{ns / 1000:,.0f} µs"
    if abs(ns) >= 10_000:
        return f"{ns / 1000:,.1f} µs"
    return f"{ns:,.1f} ns"


def fmt_x(x: float | None) -> str:
    if x is None:
        return "—"
    if x == math.inf:
        return "∞"
    if abs(x) >= 100:
        return f"{x:,.0f}×"
    if abs(x) >= 10:
        return f"{x:.1f}×"
    return f"{x:.2f}×"


def ratio(num: float, den: float) -> float:
    """num / den; a non-positive overhead below the measurement's resolution reads as ∞ cheaper."""
    return num / den if den > 0 else math.inf


# ------------------------------------------------------------------ goals

Goal = dict[str, Any]


def goals(r: Results, extras: dict[str, Any]) -> tuple[list[Goal], list[Goal]]:
    """The goals (one row each) and the reference rows."""
    f = r.f
    rows: list[Goal] = []

    def add(num: str, name: str, compute: Callable[[], tuple[str, bool, Any]], target: str) -> None:
        try:
            measured, ok, value = compute()
        except (KeyError, ZeroDivisionError, TypeError) as exc:
            rows.append({"n": num, "goal": name, "measured": f"not measured ({exc!r})",
                         "target": target, "ok": False, "value": None, "failed": True})
            return
        rows.append({"n": num, "goal": name, "measured": measured, "target": target,
                     "ok": bool(ok), "value": value, "failed": False})

    def vs_f(key: str, impl: str, limit: float, overhead: bool = False):
        def compute():
            value = r.cost(key, impl) if overhead else r.ns(key, impl)
            x = value / f
            what = "overhead " if overhead else ""
            return f"{fmt_x(x)} f() ({what}{fmt_ns(value)}; f() {fmt_ns(f)})", x <= limit, x
        return compute

    def cheaper(peer: tuple[str, str], ours: tuple[str, str], limit: float, overhead: bool,
                peer_name: str):
        def compute():
            p = r.cost(*peer) if overhead else r.ns(*peer)
            o = r.cost(*ours) if overhead else r.ns(*ours)
            x = ratio(p, o)
            return (f"{fmt_x(x)} cheaper ({fmt_ns(o)} vs {peer_name} {fmt_ns(p)})", x >= limit, x)
        return compute

    add("1", "`budget.is_timeout()`", vs_f("is_timeout", "compiled", 2.5), "≤ 2.5× f()")
    add("2", "`constraints.should_sample()` (rate 0.5)", vs_f("should_sample", "compiled", 1.5),
        "≤ 1.5× f()")
    add("3", "`constraints.create_budget()` (fast_rule)", vs_f("create_budget", "compiled", 3),
        "≤ 3× f()")
    add("4", "`fast_rule().create_budget().enforce(f)` − `f()`",
        vs_f("create_enforce_fast", "compiled", 5, overhead=True), "≤ 5× f()")
    add("5", "compiled vs pure-Python twin on (4)",
        cheaper(("create_enforce_fast", "python"), ("create_enforce_fast", "compiled"), 4, True,
                "twin"), "≥ 4× cheaper")
    add("6", "`execute_with_constraints(RuleType.FAST, f)` − `f()`",
        vs_f("execute", "compiled", 10, overhead=True), "≤ 10× f()")
    add("7", "(6) vs `pybreaker.CircuitBreaker().call(f)` − `f()`",
        cheaper(("execute", "pybreaker"), ("execute", "compiled"), 10, True, "pybreaker"),
        "≥ 10× cheaper")
    add("8", "`RetryPolicy(3, 10).execute(f)` − `f()`",
        vs_f("retry", "fastpath", 8, overhead=True), "≤ 8× f()")
    add("9", "(8) vs tenacity `retry(stop=stop_after_attempt(3))(f)` − `f()`",
        cheaper(("retry", "tenacity"), ("retry", "fastpath"), 50, True, "tenacity"),
        "≥ 50× cheaper")
    add("10", "`histogram.record(v)`", vs_f("record", "compiled", 2), "≤ 2× f()")
    add("11", "(10) vs `HdrHistogram(1, 3.6e12, 2).record_value(v)`",
        cheaper(("record", "hdrhistogram"), ("record", "compiled"), 30, False, "hdrhistogram"),
        "≥ 30× cheaper")

    for sub, call, key in [("a", "fast_rule()", "preset_fast_rule"),
                           ("b", "semantic_rule()", "preset_semantic_rule"),
                           ("c", "wasm_hook(10)", "preset_wasm_hook"),
                           ("d", "observational(0.01)", "preset_observational")]:
        add(f"18{sub}", f"`ExecutionConstraints.{call}`", vs_f(key, "compiled", 4), "≤ 4× f()")

    def arm():
        ns = extras["arm_disarm"]["ns_per_pair"]
        return f"{fmt_ns(ns)} per arm+disarm pair = {fmt_x(ns / f)} f() (C loop)", ns <= 100, ns
    add("12", "arm+disarm added to enforce (`_measure_arm_disarm(1_000_000)`)", arm, "≤ 100 ns")

    late = extras["lateness"]

    def lateness_row(name: str, limit_key: str):
        def compute():
            d = late[name]
            return ((f"p99 {d['p99_ns'] / 1e3:,.0f} µs (median {d['median_ns'] / 1e3:,.0f} µs, "
                    f"max {d['max_ns'] / 1e3:,.0f} µs, n={d['n']})"),
                    d["p99_ns"] <= late[limit_key], d["p99_ns"])
        return compute
    add("13a", "preemption lateness, main thread (5 ms budget, busy loop)",
        lateness_row("main", "goal_main_p99_ns"), "p99 ≤ 1 ms")
    switch_ms = late["switch_interval_ns"] / 1e6
    add("13b", "preemption lateness, worker thread",
        lateness_row("worker", "goal_worker_p99_ns"),
        f"p99 ≤ switch interval + 1 ms = {switch_ms + 1:g} ms")

    def async_cost():
        bare = r.ns("await_af", "reference")
        ours = r.ns("await_af", "compiled") - bare
        theirs = r.ns("await_af", "asyncio.timeout") - bare
        x = theirs / ours
        return (f"{fmt_ns(ours)} over a bare await ({fmt_x(ours / f)} f()); "
                f"asyncio.timeout {fmt_ns(theirs)}: {x:.1f}× cheaper"), x >= 5 and ours <= 1000, x
    add("16a", "`await budget.enforce_async(af)` − `await af()` vs `asyncio.timeout`",
        async_cost, "≥ 5× cheaper, ≤ 1 µs")

    def async_overshoot():
        a = late["async"]
        d, t = a["fastpath"], a["asyncio_timeout"]
        return ((f"p99 {d['p99_ns'] / 1e3:,.0f} µs (median {d['median_ns'] / 1e3:,.0f} µs, "
                 f"n={d['n']}); asyncio.timeout median {t['median_ns'] / 1e6:,.1f} ms"),
                d["p99_ns"] <= a["goal_p99_ns"], d["p99_ns"])
    add("16b", "deadline overshoot, coroutine running 50 ms chunks between awaits",
        async_overshoot, "p99 ≤ 1 ms")

    hook = extras["memhook"]

    def hook_row():
        x = hook["ratio"]
        return ((f"{fmt_x(x)} ({fmt_ns(hook['hooked_median_ns'])} vs "
                f"{fmt_ns(hook['plain_median_ns'])}; rounds {hook['ratio_min']:.3f}–"
                f"{hook['ratio_max']:.3f})"), x <= hook["goal_ratio"], x)
    add("14", "idle allocator hook on `[str(i) for i in range(200)]` (2 processes)", hook_row,
        "≤ 1.05× (+5 %)")

    def memory_row():
        lim = r.ns("work_enforce_limit", "compiled")
        nolim = r.ns("work_enforce_nolimit", "compiled")
        x = lim / nolim
        return (f"{fmt_x(x)} ({fmt_ns(lim)} vs {fmt_ns(nolim)} without a memory limit)",
                x <= 1.5, x)
    add("15", "same workload inside an active memory-limited budget", memory_row, "≤ 1.5×")

    def unchanged(key: str, base_key: str = "execute"):
        def compute():
            base = r.ns(base_key, "compiled")
            observed = r.ns(key, "compiled")
            x = observed / base
            return (f"{fmt_x(x)} ({fmt_ns(observed)} vs {fmt_ns(base)} uninstrumented)",
                    x <= 1.05, x)
        return compute
    add("16", "`execute_with_constraints(FAST, f)` with an `EnforcerCollector` registered",
        unchanged("execute_prometheus"), "≤ 1.05× uninstrumented")
    add("17", "same, after `fastpath.otel.instrument(enforcer, spans=\"violations\")`",
        unchanged("execute_otel_violations"), "≤ 1.05× uninstrumented")

    add("23a", "registered `rule(f)` (FAST) after `otel.instrument(enforcer, "
        "spans=\"violations\")`", unchanged("rule_otel_violations", "rule_otel_off"),
        "≤ 1.05× uninstrumented")
    add("23b", "`await execute_async(FAST, af)` after `otel.instrument(enforcer, "
        "spans=\"violations\")`",
        unchanged("execute_async_otel_violations", "execute_async_otel_off"),
        "≤ 1.05× uninstrumented")

    add("19", "registered `rule(f)` (FAST) − `f()`",
        vs_f("rule", "compiled", 10, overhead=True), "≤ 10× f()")

    def added(key: str, c_key: str, limit_ns: float):
        # The C loop is the figure (a difference of two ~300 ns Python-level rows
        # is noise at this scale); the Python-level difference is shown beside it.
        def compute():
            ns = extras["rule_extras"][c_key]
            with_it, without = r.cost(key, "compiled"), r.cost("rule", "compiled")
            return (f"{fmt_ns(ns)} per call (C loop, `_measure_rule_extras`); "
                    f"rows: {fmt_ns(with_it)} vs {fmt_ns(without)} ({fmt_ns(with_it - without)})",
                    ns <= limit_ns, ns)
        return compute
    add("20", "`rule(f)` with a closed `CircuitBreaker`, on top of (19)",
        added("rule_breaker", "breaker_ns", 15), "≤ 15 ns")
    add("21", "`rule(f)` with an `AdaptiveLimit` (1000-call windows), on top of (19)",
        added("rule_adaptive", "adaptive_ns", 10), "≤ 10 ns")
    for peer in ("pybreaker", "circuitbreaker", "purgatory"):
        add(f"20-{peer}", f"(20) vs {peer} closed-breaker `call(f)` − `f()` (reported)",
            cheaper(("rule_breaker", peer), ("rule_breaker", "compiled"), 1, True, peer),
            "≥ 1× cheaper")

    # -- quotas (bench/test_quota.py) -----------------------------------------
    def quota_local():
        info = r.info("quota_local", "compiled")
        delta = info["interleaved_delta_ns"]
        total = r.cost("quota_local", "compiled") / f
        return (f"+{fmt_ns(delta)} (CPU-clock A/B, median of {info['interleaved_rounds']} "
                f"rounds; {fmt_ns(info['interleaved_base_ns'])} → "
                f"{fmt_ns(info['interleaved_ns'])}); overhead in all {fmt_x(total)} f()",
                delta <= 30 and total <= 14, delta)
    add("Q1", "`execute_with_constraints(FAST, f)` with a local calls `Quota` − without",
        quota_local, "≤ +30 ns, ≤ 14× f() in all")

    def quota_trips():
        info = r.info("quota_redis", "compiled")
        x = info["round_trips_per_call"]
        peer = r.info("quota_redis", "limits")["round_trips_per_call"]
        return (f"{x:.5f} ({info['steady_round_trips']} EVALSHA for {info['steady_calls']:,} "
                f"calls at {info['steady_rate']:,.0f}/s; limits {peer:.3f}: "
                f"{fmt_x(ratio(peer, x))} fewer)", x <= 0.001, x)
    add("Q2", "`RedisQuotaStore` at a steady 10k calls/s: Redis round trips per call",
        quota_trips, "≤ 0.001 (`INFO commandstats`)")

    def quota_redis_cost():
        info = r.info("quota_redis", "compiled")
        x = info["interleaved_ns"] / info["interleaved_base_ns"]
        return (f"{fmt_x(x)} ({fmt_ns(info['interleaved_ns'])} vs local store "
                f"{fmt_ns(info['interleaved_base_ns'])}, CPU-clock A/B)", x <= 2, x)
    add("Q3", "same call, `RedisQuotaStore` vs `LocalQuotaStore`", quota_redis_cost,
        "≤ 2× the local store's")

    add("22a", "WASM `hook(1, 2)` (wasm_hook profile) vs wasmtime-py `Func.__call__`",
        cheaper(("wasm_call", "wasmtime-py"), ("wasm_call", "fastpath"), 20, False,
                "wasmtime-py"), "≥ 20× cheaper")

    def hook_call():
        ns = r.ns("wasm_call", "fastpath")
        return f"{fmt_ns(ns)} per call ({fmt_x(ns / f)} f())", ns <= 2_000, ns
    add("22b", "same, per call", hook_call, "≤ 2 µs")

    def instantiate():
        ns = r.ns("wasm_instantiate", "fastpath")
        return f"{fmt_ns(ns)} per store + instance", ns <= 20_000, ns
    add("22c", "WASM instantiation from the pool's pre-linked module", instantiate, "≤ 20 µs")

    def wasm_late(name: str):
        def compute():
            w = extras["wasm"]
            d = w[name]
            return ((f"p99 {d['p99_ns'] / 1e3:,.0f} µs (median {d['median_ns'] / 1e3:,.0f} µs, "
                     f"max {d['max_ns'] / 1e3:,.0f} µs, n={d['n']})"),
                    d["p99_ns"] <= w["goal_p99_ns"], d["p99_ns"])
        return compute
    add("22d", "WASM deadline → trap lateness, main thread (5 ms, spin loop)", wasm_late("main"),
        "p99 ≤ 2 ms")
    add("22e", "WASM deadline → trap lateness, worker thread", wasm_late("worker"),
        "p99 ≤ 2 ms")

    # -- reference rows (no goal) ---------------------------------------------
    refs: list[Goal] = []

    def ref(name: str, compute: Callable[[], str], note: str) -> None:
        try:
            measured = compute()
        except (KeyError, ZeroDivisionError, TypeError) as exc:
            measured = f"not measured ({exc!r})"
        refs.append({"what": name, "measured": measured, "note": note})

    ref("`budget.check()`, no violation (all three limits set)",
        lambda: fmt_ns(r.ns("check", "compiled")), "seed: 50–100 ns")
    ref("`should_sample()`", lambda: fmt_ns(r.ns("should_sample", "compiled")), "seed: 10–20 ns")
    ref("`create_budget()`", lambda: fmt_ns(r.ns("create_budget", "compiled")),
        "seed: ~100 ns")
    ref("`f()` (the reference)", lambda: fmt_ns(f),
        "timed like every figure: an inner loop of direct calls per round, divided by the "
        "number of calls")
    ref("`work()` under `tracemalloc.start()` vs plain `work()`",
        lambda: (f"{fmt_x(r.ns('work', 'tracemalloc') / r.ns('work', 'reference'))} "
                 f"({fmt_ns(r.ns('work', 'tracemalloc'))} vs {fmt_ns(r.ns('work', 'reference'))})"),
        "measured at 8× before; goal 15's figure for fastpath is "
        + _safe(lambda: fmt_x(r.ns("work_enforce_limit", "compiled")
                              / r.ns("work_enforce_nolimit", "compiled"))))
    cost = late["timeout_cost"]
    ref("`func_timeout.func_timeout(1.0, f)` vs `ExecutionConstraints(1000).create_budget()"
        ".enforce(f)`",
        lambda: (f"{fmt_x(cost['ratio'])} costlier ({fmt_ns(cost['func_timeout_ns'])} vs "
                 f"{fmt_ns(cost['fastpath_ns'])} per call; bare f() {fmt_ns(cost['f_ns'])})"),
        "bench/lateness.py, per call incl. loop, median of 7 interleaved repeats")
    twin = late["twin_main"]
    ref("preemption lateness, pure-Python twin, main thread",
        lambda: (f"p99 {twin['p99_ns'] / 1e3:,.0f} µs (median {twin['median_ns'] / 1e3:,.0f} µs, "
                 f"max {twin['max_ns'] / 1e3:,.0f} µs, n={twin['n']})"),
        "the twin's watchdog is a Python thread: up to a switch interval late")
    ref("`execute_with_constraints(FAST, f)` after `otel.instrument(..., spans=\"all\")` "
        "(OpenTelemetry SDK, span processor that drops)",
        lambda: (f"{fmt_ns(r.ns('execute_otel_all', 'compiled'))} per call, "
                 f"{fmt_x(r.ns('execute_otel_all', 'compiled') / r.ns('execute', 'compiled'))}"
                 f" the uninstrumented call ({fmt_ns(r.ns('execute', 'compiled'))})"),
        "opt-in: a span per call costs what the SDK costs")
    for threads in (1, 2):
        for impl in ("compiled", "python"):
            ref(f"enforcer throughput, {threads} thread{'s' if threads > 1 else ''}, {impl}",
                _throughput(r, threads, impl), "execute_with_constraints(RuleType.FAST, f)")
    denied = [(b["name"], b["extra_info"]["denied"]) for b in r.by.values()
              if b["extra_info"].get("denied") and not b["extra_info"]["key"].startswith("thr")]
    ref("calls denied during the per-call benchmarks",
        lambda: ", ".join(f"{name}: {n}" for name, n in denied) or "none",
        "fail-closed 5 ms / 0.5 ms CPU limits hit when the process is descheduled; caught "
        "and counted")

    def slowdown(impl: str) -> Callable[[], str]:
        def compute() -> str:
            plain = r.ns("wasm_loop", "plain")
            ours = r.ns("wasm_loop", impl)
            n = r.info("wasm_loop", impl)["iterations_per_call"]
            return (f"{fmt_x(ours / plain)} ({ours / n:.2f} vs {plain / n:.2f} ns per "
                    f"iteration)")
        return compute
    ref("WASM guest slowdown from epoch interruption (tight loop)", slowdown("epoch"),
        "wasmtime's own figure: ~10 %; a tight loop pays the most")
    ref("WASM guest slowdown from epoch + fuel (fastpath's engines)", slowdown("epoch+fuel"),
        "fuel adds a counter update per basic block")

    def calibration() -> str:
        c = extras["wasm"]["calibration"]
        parts = [f"{name}: {v['cpu_over_allowance_median']:.2f}× (fuel alone "
                 f"{v['fuel_alone']:.2f}×)" for name, v in c.items() if isinstance(v, dict)]
        return (f"CPU used when a {c['allowance_ms']:g} ms allowance stopped the guest, over "
                f"the allowance: " + ", ".join(parts)
                + f" ({c['fuel_per_cpu_ms'] / 1e6:.2f} M fuel per CPU ms)")
    ref("WASM fuel calibration error", calibration,
        "fuel counts instructions, not time (calibrated on loads, stores and arithmetic); "
        "the epoch callback's thread CPU reading bounds the rest")
    for k in range(4):
        ref(f"`budget.check()` with {k} violation kind{'s' if k != 1 else ''} recorded",
            lambda k=k: (f"compiled {fmt_ns(r.cost(f'check_violations_{k}', 'compiled'))}, "
                         f"twin {fmt_ns(r.cost(f'check_violations_{k}', 'python'))}"),
            "raises ConstraintViolation when k ≥ 1 (caught; wrapper frame subtracted)")
    for peer in ("limits", "throttled-py"):
        ref(f"{peer} on the same redis-server, one `hit`/`limit` per call",
            lambda peer=peer: (f"{fmt_ns(r.cost('quota_redis', peer))} per call over f(), "
                               f"{r.info('quota_redis', peer)['round_trips_per_call']:.3f} "
                               f"round trips per call; RedisQuotaStore "
                               f"{fmt_ns(r.cost('quota_redis', 'compiled'))}"),
            "limits: MovingWindowRateLimiter(RedisStorage); throttled-py: GCRA on RedisStore")
    ref("local quota with a wall-time / CPU-time resource",
        lambda: (f"calls+wall {fmt_ns(r.cost('quota_local_wall', 'compiled'))}, "
                 f"cpu {fmt_ns(r.cost('quota_local_cpu', 'compiled'))} over f() "
                 f"(no quota {fmt_ns(r.cost('quota_none', 'compiled'))})"),
        "CPU: two reads of the thread's CPU clock (syscalls) per call")
    return rows, refs


def _safe(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except (KeyError, ZeroDivisionError, TypeError):
        return "—"


def _throughput(r: Results, threads: int, impl: str) -> Callable[[], str]:
    def compute() -> str:
        key = f"throughput_{threads}"
        info = r.info(key, impl)
        per_round = r.ns(key, impl)
        calls_per_s = info["calls_per_round"] / (per_round / 1e9)
        text = (f"{calls_per_s / 1e6:,.2f} M calls/s "
                f"({fmt_ns(per_round / info['calls_per_round'])}/call)")
        if info.get("denied") or info.get("escaped_interrupts"):
            text += (f"; of {info['calls_total']:,} calls {info['denied']} denied (5 ms deadline "
                     f"passed while waiting for the GIL), {info['escaped_interrupts']} "
                     "ExecutionInterrupted escaped to the caller")
        return text
    return compute


# ------------------------------------------------------------------ operations

# (label, key, kind, peers): kind "per call" = the call's own time; "overhead" =
# minus f() (see Results.cost).  One row per peer (or one row without a peer).
OPERATIONS: list[tuple[str, str, str, list[str]]] = [
    ("clock read: budget.is_timeout()", "is_timeout", "per call", ["time.monotonic_ns()"]),
    ("budget.elapsed_ns()", "elapsed_ns", "per call", []),
    ("budget.check(), no violation", "check", "per call", []),
    ("sampling: should_sample() at 0.5", "should_sample", "per call", ["random.random() < p"]),
    ("preset: ExecutionConstraints.fast_rule()", "preset_fast_rule", "per call", []),
    ("preset: ExecutionConstraints.semantic_rule()", "preset_semantic_rule", "per call", []),
    ("preset: ExecutionConstraints.wasm_hook(10)", "preset_wasm_hook", "per call", []),
    ("preset: ExecutionConstraints.observational(0.01)", "preset_observational", "per call", []),
    ("create_budget() (fast_rule)", "create_budget", "per call", []),
    ("create_budget().enforce(f) (fast_rule)", "create_enforce_fast", "overhead", []),
    ("budget.enforce(f), reused budget", "enforce_reused", "overhead", []),
    ("preemptive 1 s timeout: create_budget().enforce(f)", "create_enforce_1s", "overhead",
     ["func_timeout"]),
    ("execute_with_constraints(FAST, f)", "execute", "overhead", ["pybreaker"]),
    ("@constrained(FAST) wrapper", "constrained", "overhead", []),
    ("registered rule(f) (FAST)", "rule", "overhead", []),
    ("rule(f), closed CircuitBreaker", "rule_breaker", "overhead",
     ["pybreaker", "circuitbreaker", "purgatory"]),
    ("rule(f), AdaptiveLimit", "rule_adaptive", "overhead", []),
    ("execute_with_constraints(FAST, f), EnforcerCollector registered", "execute_prometheus",
     "overhead", []),
    ("execute_with_constraints(FAST, f), otel spans=violations", "execute_otel_violations",
     "overhead", []),
    ("execute_with_constraints(FAST, f), otel spans=all", "execute_otel_all", "overhead", []),
    ("rule(f), uninstrumented (otel rows)", "rule_otel_off", "overhead", []),
    ("rule(f), otel spans=violations", "rule_otel_violations", "overhead", []),
    ("await execute_async(FAST, af), uninstrumented", "execute_async_otel_off", "per call", []),
    ("await execute_async(FAST, af), otel spans=violations", "execute_async_otel_violations",
     "per call", []),
    ("await execute_async(FAST, af), otel spans=all", "execute_async_otel_all", "per call", []),
    ("retry success path: RetryPolicy(3, 10).execute(f)", "retry", "overhead",
     ["tenacity", "backoff", "stamina"]),
    ("histogram.record(v)", "record", "per call", ["hdrhistogram"]),
    ("memory accounting on work()", "memory", "overhead", ["tracemalloc"]),
    ("check() with 0 violations recorded", "check_violations_0", "per call", []),
    ("check() with 1 violation recorded", "check_violations_1", "per call", []),
    ("check() with 2 violations recorded", "check_violations_2", "per call", []),
    ("check() with 3 violations recorded", "check_violations_3", "per call", []),
    ("enforcer, 1 thread (throughput run)", "throughput_1", "per call", []),
    ("enforcer, 2 threads (throughput run)", "throughput_2", "per call", []),
    ("execute_with_constraints(FAST, f), no quota", "quota_none", "overhead", []),
    ("same, local calls Quota", "quota_local", "overhead", []),
    ("same, local calls + wall_ms Quota", "quota_local_wall", "overhead", []),
    ("same, local cpu_ms Quota", "quota_local_cpu", "overhead", []),
    ("same, RedisQuotaStore (leases)", "quota_redis", "overhead", ["limits", "throttled-py"]),
]


def operation_value(r: Results, key: str, impl: str) -> float | None:
    """ns per call for the operations table (None: not applicable / not measured)."""
    try:
        if key == "memory":
            if impl == "tracemalloc":
                return r.ns("work", "tracemalloc") - r.ns("work", "reference")
            if impl == "python":
                return None     # the twin has no allocator hook: it only counts charges
            return r.ns("work_enforce_limit", impl) - r.ns("work_enforce_nolimit", impl)
        if key.startswith("throughput_"):
            return r.ns(key, impl) / r.info(key, impl)["calls_per_round"]
        if key == "retry" and impl == "compiled":
            impl = "fastpath"
        return r.cost(key, impl)
    except KeyError:
        return None


def _positive_ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or num <= 0:
        return None
    return ratio(num, den)


def operations(r: Results) -> list[dict[str, Any]]:
    rows = []
    for label, key, kind, peers in OPERATIONS:
        compiled = operation_value(r, key, "compiled")
        twin = None if key == "retry" else operation_value(r, key, "python")
        for peer in peers or [None]:
            peer_ns = operation_value(r, key, peer) if peer else None
            rows.append({
                "operation": label, "key": key, "kind": kind,
                "compiled_ns": compiled, "twin_ns": twin,
                "twin_over_compiled": _positive_ratio(twin, compiled),
                "peer": peer, "peer_ns": peer_ns,
                "peer_over_compiled": _positive_ratio(peer_ns, compiled),
            })
    return rows


# ------------------------------------------------------------------ report

def machine_lines(machine: dict[str, Any], stat: str, f_ns: float) -> list[str]:
    return [
        (f"- machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"{machine['platform']}"),
        (f"- fastpath {machine['fastpath']}, clock: {machine['fastpath_clock']} "
        f"(`preemption_info()['clock']`), main-thread preemption: {machine['preemption']}, "
        f"switch interval {machine['switch_interval_s'] * 1e3:g} ms"),
        (f"- statistic: the **{stat}** of pytest-benchmark's rounds, ns per call; GC enabled; "
        f"reference `f()` (`def f(): pass`) = {fmt_ns(f_ns)} in this run"),
        ("- overhead = T(op) − T(f()) for operations that call f (a wrapper around the "
        "expression is compared with the same wrapper around `f()`); other figures are the "
        "call's own time, pytest-benchmark's loop included"),
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def render(r: Results, machine: dict[str, Any], goal_rows: list[Goal], refs: list[Goal],
           ops: list[dict[str, Any]], when: str) -> str:
    held = sum(1 for g in goal_rows if g["ok"])
    lines = [f"# fastpath benchmark — {when}", ""]
    lines += machine_lines(machine, r.stat, r.f)
    lines += ["", f"## Goals: {held} of {len(goal_rows)} hold", ""]
    lines += table(["#", "goal", "measured", "target", ""],
                   [[g["n"], g["goal"], g["measured"], g["target"], OK if g["ok"] else MISS]
                    for g in goal_rows])
    lines += ["", "## Reference (no goal)", ""]
    lines += table(["what", "measured", "note"], [[x["what"], x["measured"], x["note"]]
                                                  for x in refs])
    lines += ["", "## Every operation: compiled vs pure-Python twin vs peer", "",
              ("ns per call (`overhead` rows: minus `f()`); ratios are to the compiled core "
              "(RetryPolicy is pure Python in both cores: its figure is in the compiled column; "
              "the twin has no allocator hook, so no memory-accounting figure)."), ""]
    lines += table(
        ["operation", "figure", "compiled", "twin", "twin ÷ compiled", "peer", "peer",
         "peer ÷ compiled"],
        [[o["operation"], o["kind"], fmt_ns(o["compiled_ns"]), fmt_ns(o["twin_ns"]),
          fmt_x(o["twin_over_compiled"]), o["peer"] or "—", fmt_ns(o["peer_ns"]),
          fmt_x(o["peer_over_compiled"])] for o in ops])
    lines += ["", (f"Raw data: `{LATEST.relative_to(ROOT)}` (pytest-benchmark), "
              f"`{SUMMARY.relative_to(ROOT)}`; chart: `{CHART.relative_to(ROOT)}`."), ""]
    return "\n".join(lines)


def write(stat: str, extras: dict[str, Any], failed: bool) -> bool:
    """Build the report from LATEST and ``extras``; print it and write goals.md,
    summary.json and the chart.  Returns whether a measurement failed."""
    import _support
    import chart

    results = Results(json.loads(LATEST.read_text()), stat)
    info = extras["lateness"]["preemption_info"]
    machine = _support.machine_info(clock=info["clock"])
    machine["preemption"] = (f"signal {info['signal']}" if info["main_thread"] == "signal"
                             else info["main_thread"])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    goal_rows, refs = goals(results, extras)
    ops = operations(results)
    report = render(results, machine, goal_rows, refs, ops, when)
    print("\n" + report)
    GOALS_MD.write_text(report)
    chart.chart(ops, results.f, stat, machine)
    failed = failed or any(g["failed"] for g in goal_rows)
    SUMMARY.write_text(json.dumps({
        "when": when,
        "statistic": stat,
        "machine": machine,
        "goals": goal_rows,
        "reference": refs,
        "operations": ops,
        "benchmarks": {
            f"{key}/{impl}": {"name": b["name"], "group": b["group"],
                              "median_ns": b["stats"]["median"] * 1e9,
                              "min_ns": b["stats"]["min"] * 1e9,
                              "rounds": b["stats"]["rounds"],
                              "iterations": b["stats"].get("iterations"),
                              "extra_info": b["extra_info"]}
            for (key, impl), b in sorted(results.by.items())
        },
        **extras,
        "failed": failed,
    }, indent=2, default=str))
    return failed


def main(argv: list[str] | None = None) -> int:
    """``python bench/report.py [--stat median|min]``: the report of the last run."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    args = parser.parse_args(argv)
    if not LATEST.exists() or not EXTRAS.exists():
        print(f"no {LATEST.relative_to(ROOT)} / {EXTRAS.relative_to(ROOT)}: run bench/run.py",
              file=sys.stderr)
        return 1
    return 1 if write(args.stat, json.loads(EXTRAS.read_text()), False) else 0


if __name__ == "__main__":
    sys.exit(main())
