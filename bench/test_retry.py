"""RetryPolicy's success path (pure Python in both cores: no twin to compare)."""

from __future__ import annotations

from _support import f, measure

from fastpath import RetryPolicy


def test_retry_policy_execute(benchmark):
    """``RetryPolicy(3, 10).execute(f)``: minus ``f()`` is goal 8 (peers in test_peers)."""
    policy = RetryPolicy(3, 10)
    measure(benchmark, "retry (3 attempts, success)", "retry", "fastpath", policy.execute, f,
            minus="f")
