"""Per-call costs of enforce/execute on one interpreter, as ratios to f() measured in the same run.

``make matrix`` step ``costs`` runs it with each version's venv (``.venv-<tag>/bin/python
tools/matrix_costs.py .matrix/<tag>/costs.json``); ``tools/matrix_costs.py --table
.matrix/*/costs.json`` prints the per-version table (one column per version) for the README.

It runs only the enforce/execute rows of the benchmark suite (bench/test_core.py,
bench/test_enforcer.py) with pytest-benchmark, ``--benchmark-only``, in one pytest run, and
computes goals 4-6 the way ``bench/report.py`` does (its ``Results`` class), so the figures
are comparable with ``make bench``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

SELECT = ("reference_f or reference_call_f or create_budget_enforce_fast_rule"
          " or enforce_reused_budget or execute_with_constraints_fast")
ARGS = ["-p", "no:cacheprovider", "--benchmark-only", "--benchmark-min-rounds=20",
        "--benchmark-max-time=1.0", "--benchmark-min-time=0.00005", "--benchmark-warmup=on",
        "--benchmark-warmup-iterations=2000", "-q"]

# (row, the benchmark's extra_info key, what it is)
ROWS = [
    ("4", "create_enforce_fast", "`fast_rule().create_budget().enforce(f)` − `f()`"),
    ("6", "execute", "`execute_with_constraints(RuleType.FAST, f)` − `f()`"),
    ("4r", "enforce_reused", "`budget.enforce(f)` on a reused budget − `f()`"),
]


def measure(out: Path) -> int:
    raw = out.with_suffix(".raw.json")
    cmd = [sys.executable, "-m", "pytest", "bench/test_core.py", "bench/test_enforcer.py",
           "-k", SELECT, f"--benchmark-json={raw}", *ARGS]
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        return rc
    from report import Results

    results = Results(json.loads(raw.read_text()), "median")
    rows: list[dict[str, Any]] = []
    for n, key, label in ROWS:
        row: dict[str, Any] = {"n": n, "goal": label}
        for impl in ("compiled", "python"):
            if results.has(key, impl):
                row[impl + "_ns"] = results.cost(key, impl)
                row[impl + "_x_f"] = results.cost(key, impl) / results.f
        rows.append(row)
    import fastpath  # noqa: F401 - as in the measuring child: a free-threaded build
    # turns the GIL on to load the compiled core, and the label says what was measured
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    summary = {
        "python": sys.version.split()[0],
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": gil,
        "f_ns": results.f,
        "rows": rows,
    }
    out.write_text(json.dumps(summary, indent=2))
    print(format_table([(out.parent.name, summary)]))
    return 0


def format_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    head = "| # | operation | " + " | ".join(
        f"{tag} ({s['python']}{', GIL off' if not s['gil_enabled'] else ''})" for tag, s in runs)
    lines = [head + " |", "|---|---|" + "---|" * len(runs)]
    lines.append("|  | `f()` | " + " | ".join(f"{s['f_ns']:.1f} ns" for _, s in runs) + " |")
    for i, (n, _key, label) in enumerate(ROWS):
        cells = []
        for _, s in runs:
            row = s["rows"][i]
            if "compiled_ns" not in row:
                cells.append("—")
                continue
            cell = f"{row['compiled_x_f']:.2f}× f() ({row['compiled_ns']:.1f} ns)"
            if "python_ns" in row:
                cell += f"; twin {row['python_ns'] / row['compiled_ns']:.1f}× costlier"
            cells.append(cell)
        lines.append(f"| {n} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"]:
        runs = [(Path(p).parent.name, json.loads(Path(p).read_text())) for p in argv[1:]]
        print(format_table(runs))
        return 0
    if len(argv) != 1:
        print("usage: matrix_costs.py OUT.json | --table A.json B.json ...", file=sys.stderr)
        return 2
    return measure(Path(argv[0]).resolve())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
