"""The README's examples run, in a fresh interpreter, and print what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], re.S)
    assert blocks, f"no python example in README section {title!r}"
    return blocks[0]


def test_the_asyncio_example_runs_and_prints_its_comment():
    code = _section_code("asyncio")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200"]


def _run_section(title: str) -> list[str]:
    out = subprocess.run([sys.executable, "-W", "error", "-c", _section_code(title)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_rules_example_runs_and_prints_what_it_says():
    assert _run_section("Rules") == ["True", "1"]


def test_the_circuit_breaker_example_runs_and_prints_what_it_says():
    assert _run_section("Circuit breakers") == ["OPEN", "5 CLOSED",
                                                "['open', 'half_open', 'closed']"]


def test_the_adaptive_limit_example_runs_and_prints_what_it_says():
    assert _run_section("Adaptive limits") == ["20 100"]


def _section_blocks(title: str) -> list:
    """(code, expected output) of each python example of a section."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```\n```\n(.*?)```", text[start:end], re.S)


def test_the_quota_examples_run_and_print_their_output(tmp_path, redis_server):
    blocks = _section_blocks("Quotas")
    assert len(blocks) == 2
    for i, (code, expected) in enumerate(blocks):
        script = tmp_path / f"quota_example_{i}.py"      # spawn needs an importable main
        script.write_text(code)
        out = subprocess.run([sys.executable, "-W", "error", str(script)],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "REDIS_URL": redis_server.url})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n") == expected.split("\n")


def test_the_wasm_example_runs_and_prints_its_comments():
    import pytest

    pytest.importorskip("wasmtime")
    code = _section_code("WASM hooks")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["42", "TIMEOUT_EXCEEDED True", "guest says 21", "42",
                                       "trap: True"]
