"""The error hierarchy and ConstraintViolation's fields."""

from __future__ import annotations

import pickle

import pytest

import fastpath
from fastpath.errors import (
    ConstraintError,
    ConstraintViolation,
    ConstraintViolationType,
    EnforcementFailure,
    ExecutionInterrupted,
    InvalidConfiguration,
    ResourceExhausted,
)

V = ConstraintViolationType


def test_hierarchy_matches_spec():
    assert issubclass(ConstraintError, Exception)
    for cls in (ConstraintViolation, InvalidConfiguration, ResourceExhausted, EnforcementFailure):
        assert issubclass(cls, ConstraintError)
    assert issubclass(InvalidConfiguration, ValueError)
    assert issubclass(ExecutionInterrupted, BaseException)
    assert not issubclass(ExecutionInterrupted, Exception)


def test_everything_is_importable_from_the_package():
    for name in ("ConstraintViolationType", "ConstraintError", "ConstraintViolation",
                 "InvalidConfiguration", "ResourceExhausted", "EnforcementFailure",
                 "ExecutionConstraints", "ExecutionBudget", "ExecutionStats"):
        assert hasattr(fastpath, name), name
        assert name in fastpath.__all__


def test_violation_types_are_the_spec_names():
    assert [v.name for v in V] == ["TIMEOUT_EXCEEDED", "MEMORY_EXCEEDED", "CPU_EXCEEDED",
                                   "SAMPLED_OUT", "MULTIPLE_VIOLATIONS"]


def test_single_and_multiple_kinds():
    one = ConstraintViolation([V.CPU_EXCEEDED])
    assert one.kind is V.CPU_EXCEEDED and one.violations == (V.CPU_EXCEEDED,)
    two = ConstraintViolation([V.TIMEOUT_EXCEEDED, V.MEMORY_EXCEEDED])
    assert two.kind is V.MULTIPLE_VIOLATIONS
    assert two.violations == (V.TIMEOUT_EXCEEDED, V.MEMORY_EXCEEDED)
    assert "TIMEOUT_EXCEEDED" in str(two) and "MEMORY_EXCEEDED" in str(two)
    assert two.stats is None and two.interrupted is False and two.interruptible is None


def test_violations_never_contain_the_summary_kind():
    with pytest.raises(ValueError):
        ConstraintViolation([V.MULTIPLE_VIOLATIONS])
    with pytest.raises(ValueError):
        ConstraintViolation([])


def test_violation_with_stats_pickles(fp):
    stats = fp.ExecutionStats(elapsed_ns=6_000_000, memory_used_bytes=12, cpu_time_us=40,
                              cpu_time_measured=True, violations=[V.TIMEOUT_EXCEEDED])
    v = ConstraintViolation([V.TIMEOUT_EXCEEDED], stats, interrupted=True, interruptible=True)
    clone = pickle.loads(pickle.dumps(v))
    assert clone.violations == v.violations and clone.stats == stats
    assert str(clone) == str(v) and clone.interrupted and clone.interruptible
    assert "6.000 ms" in str(v)


def test_stats_value_semantics(fp):
    a = fp.ExecutionStats(elapsed_ns=1500, violations=[1])
    assert a.elapsed_ms == 0.0015 and a.violation_count == 1
    assert a.violations == (V.TIMEOUT_EXCEEDED,)
    assert a == fp.ExecutionStats(elapsed_ns=1500, violations=[V.TIMEOUT_EXCEEDED])
    assert pickle.loads(pickle.dumps(a)) == a
    assert "elapsed_ns=1500" in repr(a)
    with pytest.raises(AttributeError):
        a.elapsed_ns = 3


def test_the_compiled_core_numbers_violation_kinds_as_fastpath_errors_does():
    # One definition (fastpath.errors); the C runtime's copy is checked at
    # import, and the twin takes its numbers from fastpath.errors.
    from fastpath import _budget, _budget_py
    from fastpath.errors import ConstraintViolationType

    numbers = _budget._kind_numbers()
    assert numbers == {name: int(ConstraintViolationType[name]) for name in numbers}
    assert (_budget_py.TIMEOUT, _budget_py.MEMORY, _budget_py.CPU, _budget_py._SAMPLED_OUT) == (
        1, 2, 3, 4)
