"""The compiled core and its pure-Python twin offer one surface.

As cytoolz compares its compiled and pure versions: the same public names, the
same signatures (``inspect.signature`` works on every public callable of the
compiled core), docstrings on both, the same ``preemption_info()`` keys, the
same validation of ``ExecutionStats`` and the same histogram API.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from fastpath import _budget_py, _histogram_py, typedefs
from fastpath._histogram_shared import HistogramSummary

_budget = pytest.importorskip("fastpath._budget")
_histogram = pytest.importorskip("fastpath._histogram")

MODULES = [(_budget, _budget_py), (_histogram, _histogram_py)]
#: Public functions only the compiled core has, and why.
COMPILED_ONLY = {
    "build_info": "how the extension was built (compiler flags, directives)",
    "getswitchinterval": "the sys.getswitchinterval wrapper the fast GIL handover installs",
    "setswitchinterval": "the sys.setswitchinterval wrapper the fast GIL handover installs",
}
#: Protocol methods compared as well as the public ones.
PROTOCOL = ("__enter__", "__exit__", "__aenter__", "__aexit__")


#: Twin modules whose classes the twin core re-exports (the compiled core
#: includes their counterparts, e.g. _rules.pxi).
TWIN_PARTS = {"fastpath._budget_py": ("fastpath._rules_py",)}


def _defined_here(module: Any) -> dict[str, Any]:
    """Public classes and functions defined in module (not imported into it)."""
    homes = (module.__name__,) + TWIN_PARTS.get(module.__name__, ())
    out = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) in homes:
            out[name] = obj
    return out


def _callables(module: Any) -> list[tuple[str, Any]]:
    """(qualified name, object) of every public callable of module, methods included."""
    found = []
    for name, obj in sorted(_defined_here(module).items()):
        found.append((name, obj))
        if inspect.isclass(obj):
            for attr in sorted(dir(obj)):
                if attr.startswith("_") and attr not in PROTOCOL:
                    continue
                raw = inspect.getattr_static(obj, attr)
                if inspect.isdatadescriptor(raw):
                    continue        # attributes and properties: compared by name below
                found.append((f"{name}.{attr}", getattr(obj, attr)))
    return found


def _shape(obj: Any) -> list[tuple[str, Any, str]]:
    """A signature without annotations, and without the self of an unbound method."""
    params = list(inspect.signature(obj).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return [(p.name, p.kind, repr(p.default)) for p in params]


def _summary_line(doc: str | None) -> str:
    """The first paragraph of a docstring, with a text-signature header removed
    and reST markup (``x``) and whitespace normalised."""
    text = doc or ""
    header = re.match(r"^\w+\(.*?\)\n--\n\n", text, re.S)
    if header:
        text = text[header.end():]
    first = inspect.cleandoc(text).split("\n\n")[0]
    return " ".join(first.replace("``", "").split())


@pytest.mark.parametrize("compiled, twin", MODULES, ids=["budget", "histogram"])
def test_both_cores_define_the_same_public_names(compiled, twin):
    mine = set(_defined_here(compiled)) - set(COMPILED_ONLY)
    assert mine == set(_defined_here(twin))
    if compiled is _budget:
        assert sorted(compiled.__all__) == sorted(twin.__all__) == sorted(mine)


@pytest.mark.parametrize("compiled, twin", MODULES, ids=["budget", "histogram"])
def test_every_public_callable_of_the_compiled_core_has_a_signature(compiled, twin):
    for name, obj in _callables(compiled):
        try:
            inspect.signature(obj)
        except (TypeError, ValueError) as exc:  # pragma: no cover - the failure report
            pytest.fail(f"inspect.signature({compiled.__name__}.{name}): {exc}")


@pytest.mark.parametrize("compiled, twin", MODULES, ids=["budget", "histogram"])
def test_signatures_match_the_twin(compiled, twin):
    twins = dict(_callables(twin))
    mine = {name: obj for name, obj in _callables(compiled)
            if name.split(".")[0] not in COMPILED_ONLY}
    assert sorted(mine) == sorted(twins)
    for name, obj in mine.items():
        assert _shape(obj) == _shape(twins[name]), name


@pytest.mark.parametrize("compiled, twin", MODULES, ids=["budget", "histogram"])
def test_attributes_match_the_twin(compiled, twin):
    for name, cls in _defined_here(twin).items():
        if not inspect.isclass(cls):
            continue
        theirs = {a for a in dir(cls) if not a.startswith("_")
                  and inspect.isdatadescriptor(inspect.getattr_static(cls, a))}
        core_cls = getattr(compiled, name)
        ours = {a for a in dir(core_cls) if not a.startswith("_")
                and inspect.isdatadescriptor(inspect.getattr_static(core_cls, a))}
        assert ours == theirs, name


@pytest.mark.parametrize("compiled, twin", MODULES, ids=["budget", "histogram"])
def test_docstrings_match_the_twin(compiled, twin):
    twins = dict(_callables(twin))
    for name, obj in _callables(compiled):
        if name.split(".")[0] in COMPILED_ONLY:
            continue
        if name.split(".")[-1] in PROTOCOL:
            continue        # the protocol's own meaning; no docstring needed
        ours, theirs = _summary_line(obj.__doc__), _summary_line(twins[name].__doc__)
        assert ours, f"{compiled.__name__}.{name} has no docstring"
        assert ours == theirs, name


def test_class_signatures_are_the_documented_ones():
    assert str(inspect.signature(_budget.ExecutionConstraints)) == (
        "(max_exec_ms, *, cpu_shares=None, memory_limit_bytes=None, sampling_rate=1.0, "
        "fail_closed_on_timeout=True, max_retries=None, retry_backoff_ms=None)")
    assert str(inspect.signature(_budget.ExecutionBudget)) == "(constraints, *, preempt=True)"
    assert str(inspect.signature(_budget.ExecutionBudget.enforce)) == (
        "(self, fn, /, *args, **kwargs)")
    assert str(inspect.signature(_histogram.LatencyHistogram)) == "()"


@pytest.mark.parametrize("core", [_budget, _budget_py], ids=["compiled", "python"])
def test_preemption_info_has_the_typed_keys_and_types(core):
    info = core.preemption_info()
    hints = get_type_hints(typedefs.PreemptionInfo)
    assert set(info) == set(hints)
    for key, value in info.items():
        expected = hints[key]
        allowed = getattr(expected, "__args__", (expected,))
        assert isinstance(value, allowed), (key, value)
    assert info["clock"] in ("tsc", "CLOCK_MONOTONIC")


def test_the_twin_reports_its_own_clock_and_handover():
    info = _budget_py.preemption_info()
    assert info["clock"] == "CLOCK_MONOTONIC"       # time.monotonic_ns
    assert info["fast_gil_handover"] is False        # a Python thread cannot lower it alone


def test_the_twin_counts_watchdog_ticks():
    import time

    # 10 s budgets: only the watchdog's ticks during a 0.2 s sleep are asserted.
    _budget_py.ExecutionConstraints(10_000).create_budget().enforce(lambda: None)
    before = _budget_py.preemption_info()["ticks"]
    _budget_py.ExecutionConstraints(10_000).create_budget().enforce(time.sleep, 0.2)
    assert _budget_py.preemption_info()["ticks"] > before


BAD_STATS = [
    {"elapsed_ns": "x"},
    {"elapsed_ns": 1.5},
    {"elapsed_ns": None},
    {"elapsed_ns": True},
    {"elapsed_ns": -1},
    {"elapsed_ns": 2**63},
    {"elapsed_ns": 1, "memory_used_bytes": "1"},
    {"elapsed_ns": 1, "cpu_time_us": 0.5},
    {"elapsed_ns": 1, "memory_allocated_bytes": -5},
    {"elapsed_ns": 1, "memory_peak_bytes": []},
    {"elapsed_ns": 1, "cpu_time_measured": 1},
    {"elapsed_ns": 1, "violations": "TIMEOUT"},
    {"elapsed_ns": 1, "violations": [9]},
    {"elapsed_ns": 1, "violations": 3},
]


@pytest.mark.parametrize("kwargs", BAD_STATS, ids=[repr(k) for k in BAD_STATS])
def test_execution_stats_rejects_the_same_values_with_the_same_message(kwargs):
    from fastpath import InvalidConfiguration

    messages = []
    for core in (_budget, _budget_py):
        with pytest.raises(InvalidConfiguration) as info:
            core.ExecutionStats(**kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("ExecutionStats: ")
    name = [k for k in kwargs if k != "elapsed_ns"] or ["elapsed_ns"]
    assert name[-1] in messages[0] and repr(kwargs[name[-1]]) in messages[0]


def test_execution_stats_accepts_the_same_values():
    kwargs = dict(elapsed_ns=5, memory_used_bytes=7, cpu_time_us=3, cpu_time_measured=True,
                  violations=[1, 3], memory_allocated_bytes=11, memory_peak_bytes=7)
    a, b = _budget.ExecutionStats(**kwargs), _budget_py.ExecutionStats(**kwargs)
    assert repr(a) == repr(b)
    assert a.violations == b.violations == (1, 3)


def test_histogram_api_and_summary_keys_match():
    compiled, twin = _histogram.LatencyHistogram(), _histogram_py.LatencyHistogram()
    for hist in (compiled, twin):
        for ns in (0, 300, 5_000, 10**9):
            hist.record(ns)
    assert compiled.summary() == twin.summary()
    assert set(compiled.summary()) == set(HistogramSummary.__annotations__)
    assert (compiled.counts() == twin.counts()).all()
    assert compiled.percentile(50) == twin.percentile(50)


@pytest.mark.parametrize("compiled, twin", MODULES, ids=["budget", "histogram"])
def test_the_stub_declares_exactly_what_the_compiled_module_has(compiled, twin):
    stub = Path(compiled.__file__).with_name(compiled.__name__.rsplit(".", 1)[1] + ".pyi")
    declared = set()
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module != "typing":
            declared.update(alias.asname for alias in node.names if alias.asname)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
    for name in declared:
        assert hasattr(compiled, name), f"{stub.name} declares {name}; the module lacks it"
    assert set(_defined_here(compiled)) <= declared


def test_the_enforcer_has_the_same_methods_on_both_cores():
    from fastpath import enforcer

    compiled, twin = enforcer._bind_enforcer(_budget), enforcer._bind_enforcer(_budget_py)
    names = [a for a in dir(twin) if not a.startswith("_") and callable(getattr(twin, a))]
    assert names == [a for a in dir(compiled) if not a.startswith("_")
                     and callable(getattr(compiled, a))]
    for name in names:
        assert _shape(getattr(compiled, name)) == _shape(getattr(twin, name)), name
        assert _summary_line(getattr(compiled, name).__doc__) == _summary_line(
            getattr(twin, name).__doc__), name
    assert str(inspect.signature(compiled.execute_with_constraints)) == (
        "(self, rule_type, fn, /, *args, **kwargs)")
