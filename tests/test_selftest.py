"""`python -m fastpath.selftest`: functional checks, implementation guard, JSON output."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = {"presets", "validation", "budget", "sampling", "enforcer", "circuit breaker", "retry",
         "histogram", "preemption", "memory + CPU limits", "asyncio", "quota",
         "wasm hooks"}


def _python(*args: str, twin: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTPATH_NO_EXTENSIONS",
                                                            "PYTHONOPTIMIZE")}
    if twin:
        env["FASTPATH_NO_EXTENSIONS"] = "1"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def _selftest(*args: str, twin: bool = False) -> subprocess.CompletedProcess[str]:
    return _python("-m", "fastpath.selftest", *args, twin=twin)


def test_selftest_passes_on_the_compiled_core_and_reports_json():
    out = _selftest("--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["info"]["implementation"] == "compiled"
    assert report["info"]["build"]["cython"]
    assert {c["name"] for c in report["checks"]} == NAMES
    assert all(c["ok"] for c in report["checks"])
    ops = {row["operation"] for row in report["timings"]}
    assert "bare Python call f()" in ops and "constraints.should_sample()" in ops
    assert all(row["ns"] is not None and row["ns"] > 0
               for row in report["timings"] if "- f()" not in row["operation"])


def test_selftest_table_is_plain_text_when_not_a_tty():
    out = _selftest()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "\033[" not in out.stdout
    assert "PASS" in out.stdout and "design figure" in out.stdout


def test_selftest_refuses_the_twin_unless_asked():
    refused = _selftest(twin=True)
    assert refused.returncode == 1
    assert "pure-Python twin" in refused.stdout
    accepted = _selftest("--json", "--allow-python", twin=True)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert json.loads(accepted.stdout)["info"]["implementation"] == "python"


def test_a_failing_check_makes_the_exit_status_non_zero(monkeypatch, capsys):
    from fastpath import selftest

    def broken() -> str:
        raise AssertionError("deliberately broken")

    monkeypatch.setattr(selftest, "CHECKS", [("broken", broken)])
    monkeypatch.setattr(selftest, "measure", lambda: [])
    assert selftest.main(["--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checks"][-1] == {"name": "broken", "ok": False,
                                    "detail": "AssertionError: deliberately broken",
                                    "seconds": report["checks"][-1]["seconds"]}


def test_the_selftest_checks_nothing_with_assert():
    """``python -O`` strips asserts: every check must be an explicit test."""
    tree = ast.parse((ROOT / "fastpath" / "selftest.py").read_text())
    asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert asserts == []


def test_python_O_runs_every_check():
    out = _python("-O", "-m", "fastpath.selftest", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert {c["name"] for c in report["checks"]} == NAMES and report["ok"] is True


BROKEN_PRESET = """
import json, sys
assert False, "asserts run: this is not python -O"
from fastpath import selftest

Real = selftest.ExecutionConstraints


class Wrong:
    # Every preset with the wrong values: check_presets must notice under -O too.
    def __getattr__(self, name):
        return lambda *a: Real(7)


selftest.ExecutionConstraints = Wrong()
selftest.CHECKS = [c for c in selftest.CHECKS if c[0] == "presets"]
selftest.measure = lambda: []
sys.exit(selftest.main(["--json"]))
"""


def test_python_O_still_fails_a_broken_check():
    out = _python("-O", "-c", BROKEN_PRESET)
    assert out.returncode == 1, out.stdout + out.stderr
    (check,) = json.loads(out.stdout)["checks"]
    assert check["name"] == "presets" and check["ok"] is False
    assert check["detail"].startswith("CheckFailed: fast_rule() is "
                                      "ExecutionConstraints(max_exec_ms=7,")
