"""The peers: the same operation done by another library (or the standard library).

Each benchmark shares its ``group`` and ``key`` with the fastpath benchmark it
is compared with, so pytest-benchmark's table puts them side by side and
``bench/run.py`` pairs them.  The peers are benchmark-only dependencies (the
``[bench]`` extra), never runtime dependencies of fastpath.
"""

from __future__ import annotations

import random
import time
import warnings

import pytest
from _support import HIST_VALUE, f, measure

# -- clock read: time.monotonic_ns() vs budget.is_timeout() ----------------------

def test_peer_monotonic_ns(benchmark):
    measure(benchmark, "clock read", "is_timeout", "time.monotonic_ns()", time.monotonic_ns)


# -- sampling: random.random() < p vs constraints.should_sample() ----------------

def test_peer_random_sample(benchmark):
    """``random.random() < p`` needs a function around it to be benchmarked; run.py
    subtracts that wrapper's frame (``T(call_f) - T(f)``) to get the inline cost."""
    draw = random.random
    p = 0.5

    def random_sample():
        return draw() < p

    measure(benchmark, "sampling", "should_sample", "random.random() < p", random_sample,
            wrapper=True)


# -- preemptive timeout: func_timeout vs create_budget().enforce(f) -------------

def test_peer_func_timeout(benchmark):
    func_timeout = pytest.importorskip("func_timeout")
    measure(benchmark, "preemptive timeout", "create_enforce_1s", "func_timeout",
            func_timeout.func_timeout, 1.0, f, minus="f")


# -- circuit breaker: pybreaker vs execute_with_constraints ---------------------

def test_peer_pybreaker_call(benchmark):
    """Through a wrapper, like execute_with_constraints in test_enforcer (minus ``call_f``)."""
    pybreaker = pytest.importorskip("pybreaker")
    call = pybreaker.CircuitBreaker().call

    def breaker_call():
        return call(f)

    measure(benchmark, "enforcer", "execute", "pybreaker", breaker_call, minus="call_f")


# -- retry success path, 3 attempts: vs RetryPolicy(3, 10).execute(f) -----------

def test_peer_tenacity(benchmark):
    tenacity = pytest.importorskip("tenacity")
    wrapped = tenacity.retry(stop=tenacity.stop_after_attempt(3))(f)
    measure(benchmark, "retry (3 attempts, success)", "retry", "tenacity", wrapped, minus="f")


def test_peer_backoff(benchmark):
    backoff = pytest.importorskip("backoff")
    with warnings.catch_warnings():
        # backoff (2.2.1) calls asyncio.iscoroutinefunction, deprecated in Python 3.14,
        # when it decorates: the peer's warning, which the suite's "error" filter would
        # turn into this benchmark's failure on 3.14
        warnings.filterwarnings("ignore", r"'asyncio\.iscoroutinefunction' is deprecated",
                                DeprecationWarning)
        wrapped = backoff.on_exception(backoff.expo, Exception, max_tries=3)(f)
    measure(benchmark, "retry (3 attempts, success)", "retry", "backoff", wrapped, minus="f")


def test_peer_stamina(benchmark):
    stamina = pytest.importorskip("stamina")
    wrapped = stamina.retry(on=Exception, attempts=3)(f)
    measure(benchmark, "retry (3 attempts, success)", "retry", "stamina", wrapped, minus="f")


# -- histogram record: hdrhistogram vs LatencyHistogram.record ------------------

def test_peer_hdrhistogram_record_value(benchmark):
    hdrh = pytest.importorskip("hdrh.histogram")
    histogram = hdrh.HdrHistogram(1, 3_600_000_000_000, 2)
    measure(benchmark, "histogram record", "record", "hdrhistogram", histogram.record_value,
            HIST_VALUE)
    assert histogram.get_total_count() > 0
