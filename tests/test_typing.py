"""mypy --strict sees real types, from outside the repository too.

One mypy run, in an empty directory (so that the package is found the way a
user's project finds it: through the installed distribution, editable or
not), over the typing example, the README's first example and snippets that
must fail, each marked with the error it must produce.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each line ending in "# E: text" must get a mypy error containing text; no
#: other line may get one.
MUST_FAIL = textwrap.dedent('''
    from fastpath import AuditEvent, ConstraintEnforcer, ExecutionConstraints, RuleType
    from fastpath import LatencyHistogram, preemption_info

    FAST = RuleType.FAST
    e = ConstraintEnforcer()
    e.no_such_method()  # E: "ConstraintEnforcer" has no attribute "no_such_method"


    def render(count: int) -> str:
        return str(count)


    wrong: int = e.execute_with_constraints(FAST, render, 1)  # E: Incompatible types
    e.execute_with_constraints(FAST, render, "one")  # E: Argument 3 to "execute_with_constraints"
    e.metrics()[FAST]["no_such_key"]  # E: has no key "no_such_key"
    e.metrics(json=True)[FAST]  # E: Invalid index type
    preemption_info()["no_such_key"]  # E: has no key "no_such_key"
    LatencyHistogram().summary()["p42_ns"]  # E: has no key "p42_ns"
    ExecutionConstraints(5).no_such_field  # E: has no attribute "no_such_field"
    e.constraints_for(FAST).create_budget().no_such_method()  # E: has no attribute "no_such_method"


    def sink(event: AuditEvent) -> float:
        return event.stats.elapsed_ms  # E: Item "None" of
''')


def _readme_first_example() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Usage\n")
    return re.findall(r"```python\n(.*?)```", text[start:], re.S)[0]


@pytest.mark.slow
def test_mypy_strict_from_outside_the_repository(tmp_path):
    pytest.importorskip("mypy")
    (tmp_path / "typing_example.py").write_text((ROOT / "tests" / "typing_example.py")
                                                .read_text())
    (tmp_path / "readme_usage.py").write_text(_readme_first_example())
    (tmp_path / "must_fail.py").write_text(MUST_FAIL)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary",
         "--show-error-codes", "--cache-dir", str(tmp_path / ".mypy_cache"),
         "typing_example.py", "readme_usage.py", "must_fail.py"],
        capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    report = out.stdout + out.stderr
    assert "Cannot find implementation or library stub" not in report, (
        "mypy run outside the repository cannot find fastpath: the editable install must "
        "be a path-style one (the Makefile's editable_mode=compat)\n" + report)
    errors: dict[tuple[str, int], list[str]] = {}
    for line in out.stdout.splitlines():
        match = re.match(r"^([\w.]+):(\d+): error: (.*)$", line)
        if match:
            errors.setdefault((match[1], int(match[2])), []).append(match[3])
    expected = {}
    for number, line in enumerate(MUST_FAIL.splitlines(), start=1):
        if "# E: " in line:
            expected[("must_fail.py", number)] = line.split("# E: ", 1)[1]
    unexpected = {k: v for k, v in errors.items() if k not in expected}
    assert not unexpected, report
    for key, text in expected.items():
        assert any(text in message for message in errors.get(key, [])), (key, text, report)


def test_the_stubs_and_typed_marker_ship_in_the_wheel():
    # A normal (wheel) install type-checks through the same files: pyproject's
    # package data must carry them (checked by hand with `pip wheel .`: the
    # wheel holds py.typed, _budget.pyi, _histogram.pyi, _budget_py.py, typedefs.py).
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"*.pyi"' in pyproject and '"py.typed"' in pyproject
    for name in ("_budget.pyi", "_histogram.pyi", "py.typed", "typedefs.py"):
        assert (ROOT / "fastpath" / name).exists(), name
