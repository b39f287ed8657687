"""The README and docs/ cite only what the repository has, and say what the code does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: A path in backticks that starts with one of the repository's directories.
REPO_PATH = re.compile(r"`((?:\.ci|bench|docs|examples|fastpath|tests|tools)/[\w./-]+)`")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _generated_dirs() -> list[str]:
    """Directories .gitignore lists: files under them are outputs (bench/results/)."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip().endswith("/")
            and not line.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_document_cites_a_file_outside_the_repository(doc):
    text = doc.read_text()
    assert not re.search(r"\bSPEC\b", text), f"{doc.name} cites the SPEC, which is not shipped"
    missing = []
    for target in MARKDOWN_LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue        # a URL or an anchor
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    generated = _generated_dirs()
    for target in REPO_PATH.findall(text):
        if any(target.startswith(d) for d in generated):
            continue
        if not (ROOT / target.rstrip("/")).exists():
            missing.append(target)
    assert not missing, f"{doc.name} cites files the repository does not have: {missing}"


def test_the_readme_cites_the_contract_in_docs():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/contract.md)" in readme
    assert (ROOT / "docs" / "contract.md").exists()


def test_cpu_shares_unit_is_defined_where_the_readme_first_uses_it():
    readme = (ROOT / "README.md").read_text()
    first = readme.index("`cpu_shares`")
    assert "percentage" in readme[first:first + 200]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"### {title}\n")
    return text[start:text.index("\n## ", start)]


def test_the_p99_example_prints_the_header_it_shows():
    section = _section("Metrics")
    code = re.findall(r"A p99 table:\n\n```python\n(.*?)```", section, re.S)[0]
    shown = re.findall(r"```python\n.*?```\n```\n(.*?)```", section, re.S)[0].splitlines()
    # Profiles with 10 s deadlines: a loaded machine must not make len() late.
    setup = (
        "from fastpath import ConstraintEnforcer, ExecutionConstraints as C, RuleType\n"
        "enforcer = ConstraintEnforcer.with_constraints(\n"
        "    C(10_000), C.semantic_rule(), C.wasm_hook(10),\n"
        "    C(10_000, fail_closed_on_timeout=False))\n"
        "for _ in range(50):\n"
        "    enforcer.execute_with_constraints(RuleType.FAST, len, 'abc')\n"
        "    enforcer.execute_with_constraints(RuleType.OBSERVATIONAL, len, 'abc')\n"
    )
    out = subprocess.run([sys.executable, "-W", "error", "-c", setup + code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == shown[0]
    assert [line.split()[:2] for line in lines[1:]] == [["fast", "50"], ["observational", "50"]]
    assert [line.split()[:2] for line in shown[1:]] == [["fast", "50000"],
                                                        ["observational", "50000"]]
