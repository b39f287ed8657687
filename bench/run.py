"""Run the benchmark suite and report: ``make bench`` (or ``.venv/bin/python bench/run.py``).

1. ``python -m pytest bench`` (pytest-benchmark) -> ``bench/results/latest.json``;
2. ``bench/lateness.py`` (goal 13) in this process's main thread;
3. ``bench/memhook.py`` (goal 14) in interleaved subprocesses;
4. ``fastpath._budget._measure_arm_disarm`` (goal 12), measured in C;
5. the report (``bench/report.py``): a goals table (one row per goal, ✓/✗), a
   reference table and a table of every operation (compiled, twin, peer),
   printed and written to ``bench/results/goals.md``; everything in
   ``bench/results/summary.json``; the chart ``bench/results/overhead.png``
   (``bench/chart.py``).

This file is the runner; the report and the chart are modules of their own.

Every figure is the **median** of pytest-benchmark's rounds (``--stat min``
to use the minimum instead), in ns per call, and every ratio compares
figures measured side by side in this run.  The exit status is 0 whether or
not the goals hold (timings are reported, not gated on); it is non-zero only
if a measurement failed.

Options: ``--stat {median,min}``, ``--quick`` (shorter runs, for development),
``--report-only`` (rebuild the report from the last run's files), and
anything after ``--`` is passed to pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/: _support, lateness, ...

from report import CHART, EXTRAS, GOALS_MD, LATEST, RESULTS, ROOT, SUMMARY, write  # noqa: E402

PYTEST_ARGS = [
    "-p", "no:cacheprovider",
    "--benchmark-only",
    "--benchmark-min-rounds=20",
    "--benchmark-max-time=1.0",
    "--benchmark-min-time=0.00005",    # rounds of >= 50 us: many calls per round
    "--benchmark-warmup=on",
    "--benchmark-warmup-iterations=2000",
    "--benchmark-columns=min,median,iqr,rounds,iterations",
    "--benchmark-sort=name",
    # GC stays enabled (no --benchmark-disable-gc): the peers allocate, and
    # what they make the collector do is part of their cost.
    "-q",
]
QUICK_ARGS = ["--benchmark-max-time=0.1", "--benchmark-min-rounds=10"]


# ------------------------------------------------------------------ measurements

def run_pytest(stat: str, quick: bool, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "bench", f"--benchmark-json={LATEST}", *PYTEST_ARGS]
    if quick:
        cmd += QUICK_ARGS
    cmd += extra
    print("$ " + " ".join(os.path.relpath(c, ROOT) if c == sys.executable else c for c in cmd),
          flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def measure_arm_disarm(repeats: int = 7) -> dict[str, Any]:
    from fastpath import _budget

    runs = [_budget._measure_arm_disarm(1_000_000) for _ in range(repeats)]
    return {"ns_per_pair": statistics.median(runs), "runs": runs, "pairs_per_run": 1_000_000}


def measure_rule_extras(repeats: int = 7) -> dict[str, Any]:
    from fastpath import _budget

    runs = [_budget._measure_rule_extras(1_000_000) for _ in range(repeats)]
    return {"breaker_ns": statistics.median(r[0] for r in runs),
            "adaptive_ns": statistics.median(r[1] for r in runs), "runs": runs,
            "calls_per_run": 1_000_000}


def run_extras(quick: bool) -> dict[str, Any]:
    import lateness
    import memhook

    print("\n$ bench/lateness.py (goal 13)", flush=True)
    late = lateness.run(n=100 if quick else 200, twin_n=50 if quick else 100)
    print("$ bench/memhook.py (goal 14)", flush=True)
    hook = memhook.run(rounds=7 if quick else 25)
    print("$ fastpath._budget._measure_arm_disarm(1_000_000) (goal 12)", flush=True)
    arm = measure_arm_disarm()
    print("$ fastpath._budget._measure_rule_extras(1_000_000) (goals 20, 21)", flush=True)
    rule_extras = measure_rule_extras()
    extras = {"lateness": late, "memhook": hook, "arm_disarm": arm, "rule_extras": rule_extras}
    try:
        import wasm_lateness
    except ImportError as exc:      # the wasm extra is not installed
        print(f"(no bench/wasm_lateness.py figures: {exc})", flush=True)
    else:
        print("$ bench/wasm_lateness.py (goals 22d, 22e)", flush=True)
        extras["wasm"] = wasm_lateness.run(n=50 if quick else 100)
    return extras


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    parser.add_argument("--quick", action="store_true", help="shorter runs (development)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from bench/results/latest.json and extras.json")
    args = parser.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failed = False
    if args.report_only:
        extras = json.loads(EXTRAS.read_text())
    else:
        if LATEST.exists():
            LATEST.unlink()
        code = run_pytest(args.stat, args.quick, extra)
        if code != 0:
            print(f"\npytest exited with {code}: a benchmark failed", file=sys.stderr)
            failed = True
        extras = run_extras(args.quick)
        EXTRAS.write_text(json.dumps(extras, indent=2, default=str))
    if not LATEST.exists():
        print(f"no {LATEST.relative_to(ROOT)}: nothing to report", file=sys.stderr)
        return 1
    failed = write(args.stat, extras, failed)
    took = time.monotonic() - started
    print(f"wrote {GOALS_MD.relative_to(ROOT)}, {SUMMARY.relative_to(ROOT)}, "
          f"{CHART.relative_to(ROOT)} ({took:.0f} s)")
    if failed:
        print("a measurement failed: see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
