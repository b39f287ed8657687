"""The README's examples run, in a fresh interpreter, and print what they say."""

from __future__ import annotations

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


def test_the_wasm_example_runs_and_prints_its_comments():
    import pytest

    pytest.importorskip("wasmtime")
    code = _section_code("WASM hooks")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["42", "TIMEOUT_EXCEEDED True", "guest says 21", "42",
                                       "trap: True"]
