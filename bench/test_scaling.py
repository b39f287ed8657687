"""Scaling: enforcer throughput with 1 and 2 threads, and check() as violations accumulate."""

from __future__ import annotations

import threading
import time

import pytest
from _support import f, measure

from fastpath import ExecutionInterrupted

HOUR_MS = 3_600_000
ROUNDS = 15
# Calls per thread per round: about 20-40 ms of work per thread on either core.
CALLS = {"compiled": 100_000, "python": 10_000}


def _hammer(execute, rule_type, violation, calls, start, denied, escaped, index):
    start.wait()
    n = leaked = 0
    for _ in range(calls):
        try:
            execute(rule_type, f)
        except violation:
            n += 1
        except ExecutionInterrupted:
            # Must never reach the caller (README, "No stray interrupts"); counted
            # and reported by run.py rather than killing the thread.
            leaked += 1
    denied[index] = n
    escaped[index] = leaked


@pytest.mark.parametrize("threads", [1, 2])
def test_enforcer_throughput(benchmark, fp, threads):
    """calls/s of ``execute_with_constraints(RuleType.FAST, f)`` over ``threads`` threads.

    Each round starts the threads, releases them together and joins them; the
    main thread only waits.  A call can be denied (FAST's 5 ms deadline) when
    its thread waits for the GIL for a whole switch interval in the middle of
    it; such calls are counted in ``extra_info["denied"]``, not hidden.  An
    ExecutionInterrupted that escapes the enforcer (it never should) is
    counted in ``extra_info["escaped_interrupts"]``.
    """
    audited = []
    enforcer = fp.ConstraintEnforcer(audit_sink=audited.append)
    calls = CALLS[fp.kind]
    totals = {"denied": 0, "escaped_interrupts": 0}

    def run():
        start = threading.Event()
        denied = [0] * threads
        escaped = [0] * threads
        workers = [
            threading.Thread(target=_hammer, args=(enforcer.execute_with_constraints,
                                                   fp.RuleType.FAST, fp.ConstraintViolation,
                                                   calls, start, denied, escaped, i))
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        start.set()
        for worker in workers:
            worker.join()
        totals["denied"] += sum(denied)
        totals["escaped_interrupts"] += sum(escaped)

    benchmark.group = "scaling: enforcer throughput"
    benchmark.extra_info.update(key=f"throughput_{threads}", impl=fp.kind, threads=threads,
                                calls_per_round=calls * threads)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    # Over all ROUNDS + 1 rounds (the warm-up round included).
    benchmark.extra_info.update(totals, calls_total=(ROUNDS + 1) * calls * threads,
                                audited=len(audited))


def _spin():
    while True:
        pass


def _budget_with(fp, kinds):
    """A budget with ``kinds`` violation kinds recorded (0..3), all limits set."""
    if kinds == 0:
        return fp.ExecutionConstraints(HOUR_MS, cpu_shares=0, memory_limit_bytes=1).create_budget()
    budget = fp.ExecutionConstraints(1, cpu_shares=0, memory_limit_bytes=1).create_budget()
    if kinds >= 3:
        # A call that spins past the 1 ms deadline: interrupted, TIMEOUT recorded,
        # and CPU (cpu_shares=0 allows none).  The budget's clock stops there.
        try:
            budget.enforce(_spin)
        except fp.ConstraintViolation:
            pass
    else:
        while not budget.is_timeout():
            time.sleep(0.001)
    if kinds >= 2:
        budget.charge_memory(2)
    return budget


@pytest.mark.parametrize("kinds", [0, 1, 2, 3])
def test_check_as_violations_accumulate(benchmark, fp, kinds):
    """``budget.check()`` with 0-3 violation kinds recorded (it raises when any is).

    Measured through a wrapper that catches the ConstraintViolation; run.py
    subtracts the wrapper's frame.
    """
    budget = _budget_with(fp, kinds)
    violation = fp.ConstraintViolation

    def check():
        try:
            budget.check()
        except violation:
            pass

    check()
    assert len(budget.get_violations()) == kinds, budget.get_violations()
    measure(benchmark, "scaling: check() as violations accumulate", f"check_violations_{kinds}",
            fp.kind, check, wrapper=True)
