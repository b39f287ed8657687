"""Wrong calls get clear errors that name the class or argument (issue 12), on both cores."""

from __future__ import annotations

import copy
import pickle

import pytest

from fastpath import RetryPolicy


def test_a_bad_constructor_call_names_the_class_not_init(fp):
    cases = [
        (fp.ExecutionConstraints, (), {}, "ExecutionConstraints() missing 1 required"),
        (fp.ExecutionConstraints, (5, 10), {}, "ExecutionConstraints() takes "),
        (fp.ExecutionConstraints, (5,), {"bogus": 1},
         "ExecutionConstraints() got an unexpected keyword argument 'bogus'"),
        (fp.ConstraintEnforcer, (1,), {}, "ConstraintEnforcer() takes "),
        (fp.ConstraintEnforcer, (), {"bogus": 1},
         "ConstraintEnforcer() got an unexpected keyword argument 'bogus'"),
        (fp.LatencyHistogram, (5,), {}, "LatencyHistogram() takes "),
        (fp.LatencyHistogram, (), {"bogus": 1},
         "LatencyHistogram() got an unexpected keyword argument 'bogus'"),
    ]
    for cls, args, kwargs, message in cases:
        with pytest.raises(TypeError) as info:
            cls(*args, **kwargs)
        assert str(info.value).startswith(message), (cls, args, kwargs, str(info.value))
        assert "__init__" not in str(info.value)


def test_retry_execute_of_a_non_callable_is_a_type_error_without_retrying(fp):
    slept = []
    policy = RetryPolicy(3, 10).with_sleep(slept.append)
    with pytest.raises(TypeError, match=r"RetryPolicy.execute\(\) needs a callable fn, got None"):
        policy.execute(None)  # type: ignore[arg-type]
    assert slept == []


@pytest.mark.parametrize("budget", [None, "x", "constraints"])
def test_execute_within_names_the_budget_argument(fp, budget):
    if budget == "constraints":
        budget = fp.ExecutionConstraints(5)
    with pytest.raises(TypeError, match=r"execute_within\(\) needs an ExecutionBudget as budget"):
        RetryPolicy(3, 10).execute_within(budget, abs, -1)  # type: ignore[arg-type]


def test_constrained_refuses_a_non_callable_when_decorating(fp):
    e = fp.ConstraintEnforcer()
    with pytest.raises(TypeError, match=r"constrained\(\) decorates a callable, got 42"):
        e.constrained(fp.RuleType.FAST)(42)


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_a_running_budget_is_not_a_value(fp, how):
    budget = fp.ExecutionConstraints(1000).create_budget()
    act = {"pickle": pickle.dumps, "copy": copy.copy, "deepcopy": copy.deepcopy}[how]
    with pytest.raises(TypeError, match="ExecutionBudget: a running budget is not a value"):
        act(budget)
    # Its constraints are a value.
    assert pickle.loads(pickle.dumps(budget.constraints)) == budget.constraints
    assert copy.deepcopy(budget.constraints) == budget.constraints


def test_init_on_built_constraints_raises_like_an_immutable_value(fp):
    c = fp.ExecutionConstraints(5)
    table = {c: "five"}
    for again in (lambda: c.__init__(7), lambda: fp.ExecutionConstraints.fast_rule().__init__(7)):
        with pytest.raises(AttributeError, match="immutable"):
            again()
    assert c.max_exec_ms == 5 and table[fp.ExecutionConstraints(5)] == "five"


def test_a_bare_new_object_is_unusable_until_initialised(fp):
    C = fp.ExecutionConstraints
    bare = C.__new__(C)
    uses = {
        "hash": lambda: hash(bare),
        "eq": lambda: bare == C(5),
        "repr": lambda: repr(bare),
        "to_dict": bare.to_dict,
        "replace": lambda: bare.replace(max_exec_ms=7),
        "pickle": lambda: pickle.dumps(bare),
        "create_budget": bare.create_budget,
        "ExecutionBudget": lambda: fp.ExecutionBudget(bare),
        "enforcer": lambda: fp.ConstraintEnforcer.with_constraints(bare, bare, bare, bare),
    }
    for name, use in uses.items():
        with pytest.raises(TypeError, match=r"ExecutionConstraints.__new__\(\) made an object "
                                            "without values"):
            use()
            pytest.fail(f"{name} accepted a bare __new__ object")
    # So it can never have been used as a key; initialising it once makes it a value.
    bare.__init__(7)
    assert bare == C(7) and hash(bare) == hash(C(7))
    with pytest.raises(AttributeError, match="immutable"):
        bare.__init__(9)
    assert bare.max_exec_ms == 7
