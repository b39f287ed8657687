"""The budget's per-call operations, compiled core vs pure-Python twin, and the reference f()."""

from __future__ import annotations

from _support import call_f, f, measure

# A deadline no benchmark reaches, with fast_rule()'s CPU and memory limits, so
# check() evaluates all three limits and finds none broken.
HOUR_MS = 3_600_000


def long_fast_rule(fp):
    return fp.ExecutionConstraints.fast_rule().replace(max_exec_ms=HOUR_MS)


# -- the reference -------------------------------------------------------------

def test_reference_f(benchmark):
    """``f()``: every ratio's denominator and the "minus f()" of direct benchmarks."""
    measure(benchmark, "reference", "f", "reference", f)


def test_reference_call_f(benchmark):
    """A wrapper calling ``f()``: the "minus f()" of benchmarks that need a wrapper."""
    measure(benchmark, "reference", "call_f", "reference", call_f)


# -- clock: is the deadline past? ----------------------------------------------

def test_is_timeout(benchmark, fp):
    budget = long_fast_rule(fp).create_budget()
    assert budget.is_timeout() is False
    measure(benchmark, "clock read", "is_timeout", fp.kind, budget.is_timeout)


def test_elapsed_ns(benchmark, fp):
    budget = long_fast_rule(fp).create_budget()
    measure(benchmark, "clock read", "elapsed_ns", fp.kind, budget.elapsed_ns)


# -- check() with no violation -------------------------------------------------

def test_check_no_violation(benchmark, fp):
    budget = long_fast_rule(fp).create_budget()
    budget.check()
    measure(benchmark, "check", "check", fp.kind, budget.check)
    assert budget.get_violations() == []


# -- sampling ------------------------------------------------------------------

def test_should_sample(benchmark, fp):
    constraints = fp.ExecutionConstraints(1000, sampling_rate=0.5)
    drawn = [constraints.should_sample() for _ in range(10_000)]
    assert 4000 < sum(drawn) < 6000
    measure(benchmark, "sampling", "should_sample", fp.kind, constraints.should_sample)


# -- presets (immutable values, built once: goal 18) ------------------------------

def test_preset_fast_rule(benchmark, fp):
    measure(benchmark, "presets", "preset_fast_rule", fp.kind, fp.ExecutionConstraints.fast_rule)


def test_preset_semantic_rule(benchmark, fp):
    measure(benchmark, "presets", "preset_semantic_rule", fp.kind,
            fp.ExecutionConstraints.semantic_rule)


def test_preset_wasm_hook(benchmark, fp):
    measure(benchmark, "presets", "preset_wasm_hook", fp.kind, fp.ExecutionConstraints.wasm_hook,
            10)


def test_preset_observational(benchmark, fp):
    measure(benchmark, "presets", "preset_observational", fp.kind,
            fp.ExecutionConstraints.observational, 0.01)


# -- budget creation -----------------------------------------------------------

def test_create_budget(benchmark, fp):
    constraints = fp.ExecutionConstraints.fast_rule()
    measure(benchmark, "budget creation", "create_budget", fp.kind, constraints.create_budget)


# -- enforce -------------------------------------------------------------------

def test_create_budget_enforce_fast_rule(benchmark, fp):
    """``fast_rule().create_budget().enforce(f)``: minus ``call_f`` is goal 4's overhead.

    fast_rule() is fail closed with a 5 ms deadline and a 0.5 ms CPU allowance:
    a call descheduled at the wrong moment on a loaded machine is denied.  The
    wrapper catches and counts that (a ``try`` costs nothing in Python 3.11
    when nothing is raised); ``extra_info["denied"]`` reports it.
    """
    constraints = fp.ExecutionConstraints.fast_rule()
    violation = fp.ConstraintViolation
    denied = [0]

    def create_budget_enforce():
        try:
            return constraints.create_budget().enforce(f)
        except violation:
            denied[0] += 1

    measure(benchmark, "enforce", "create_enforce_fast", fp.kind, create_budget_enforce,
            minus="call_f")
    benchmark.extra_info.update(denied=denied[0])


def test_enforce_reused_budget(benchmark, fp):
    """``budget.enforce(f)`` on one long-lived budget (fast_rule's limits, 1 h deadline):
    enforce without the budget's creation."""
    budget = long_fast_rule(fp).create_budget()
    measure(benchmark, "enforce", "enforce_reused", fp.kind, budget.enforce, f, minus="f")
    assert budget.get_violations() == []


def test_create_budget_enforce_1s(benchmark, fp):
    """``ExecutionConstraints(1000).create_budget().enforce(f)``: a preemptive 1 s timeout,
    the same operation as ``func_timeout.func_timeout(1.0, f)`` (test_peers)."""
    constraints = fp.ExecutionConstraints(1000)

    def create_budget_enforce():
        return constraints.create_budget().enforce(f)

    measure(benchmark, "preemptive timeout", "create_enforce_1s", fp.kind, create_budget_enforce,
            minus="call_f")
