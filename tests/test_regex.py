"""fastpath.regex: a backtracking regex is bounded by the current budget in any thread."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("regex")

from fastpath import regex as fregex  # noqa: E402
from tests.threads import in_thread  # noqa: E402

EVIL = r"(a|aa)+$"          # exponential backtracking in `regex` too
TEXT = "a" * 36 + "b"


@pytest.mark.parametrize("where", ["main", "worker"])
def test_a_redos_is_stopped_at_the_budget_deadline_in_any_thread(fp, where):
    pattern = fregex.compile(EVIL)

    def run():
        t0 = time.monotonic()
        try:
            fp.ExecutionConstraints(20).create_budget().enforce(pattern.match, TEXT)
            return "matched", time.monotonic() - t0
        except fp.ConstraintViolation as exc:
            return exc, time.monotonic() - t0

    if where == "main":
        result, seconds = run()
    else:
        box = in_thread(run)
        assert "error" not in box, box
        result, seconds = box["result"]
    assert isinstance(result, fp.ConstraintViolation), result
    assert result.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert result.interrupted is True
    assert seconds < 1.0


def test_outside_a_budget_the_pattern_runs_unbounded_and_behaves_like_regex():
    p = fregex.compile(r"(\w+)@(\w+)\.com")
    assert p is fregex.compile(r"(\w+)@(\w+)\.com")          # cached
    assert p.search("mail bob@example.com now").group(2) == "example"
    assert p.findall("a@b.com c@d.com") == [("a", "b"), ("c", "d")]
    assert [m.group(1) for m in p.finditer("a@b.com c@d.com")] == ["a", "c"]
    assert p.sub(r"\1", "x@y.com") == "x"
    assert fregex.compile(",").split("a,b") == ["a", "b"]
    assert fregex.compile("ab").fullmatch("ab") and not fregex.compile("ab").match("b")


def test_a_quick_match_inside_a_budget_returns_its_match(fp):
    p = fregex.compile(r"sqlmap|nikto")
    b = fp.ExecutionConstraints(60_000).create_budget()
    assert b.enforce(lambda: bool(p.search("User-Agent: sqlmap/1.7"))) is True
    assert b.get_violations() == []
