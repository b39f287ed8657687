"""should_sample(): exact at 0.0 and 1.0, Bernoulli(p) otherwise, per-thread state."""

from __future__ import annotations

import math
import threading

import pytest

from tests.threads import run_threads

N = 200_000


def _within_binomial_bounds(hits: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return abs(hits - mean) <= sigmas * sd


def test_rate_zero_never_samples_and_one_always_does(fp):
    never = fp.ExecutionConstraints(5, sampling_rate=0.0)
    always = fp.ExecutionConstraints(5, sampling_rate=1.0)
    assert not any(never.should_sample() for _ in range(N))
    assert all(always.should_sample() for _ in range(N))


@pytest.mark.parametrize("p", [1e-3, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_rate_p_is_a_bernoulli_draw(fp, p):
    c = fp.ExecutionConstraints(5, sampling_rate=p)
    hits = sum(c.should_sample() for _ in range(N))
    assert _within_binomial_bounds(hits, N, p), (hits, N * p)


def test_returns_real_bools(fp):
    c = fp.ExecutionConstraints(5, sampling_rate=0.5)
    assert {type(c.should_sample()) for _ in range(100)} == {bool}


def test_several_threads_each_get_the_rate(fp):
    c = fp.ExecutionConstraints(5, sampling_rate=0.3)
    results: dict[int, int] = {}

    def draw(i: int) -> None:
        results[i] = sum(c.should_sample() for _ in range(50_000))

    run_threads(draw, [(i,) for i in range(4)])
    assert len(results) == 4
    for hits in results.values():
        assert _within_binomial_bounds(hits, 50_000, 0.3), hits
    # Different threads draw different streams.
    assert len(set(results.values())) > 1


def test_generator_state_is_per_thread(fp):
    """Two threads seeded alike draw the same stream, whatever the other does."""
    c = fp.ExecutionConstraints(5, sampling_rate=0.5)
    streams: dict[str, list[bool]] = {}
    barrier = threading.Barrier(2)

    def draw(name: str) -> None:
        fp._reseed_sampler(12345)
        barrier.wait()
        streams[name] = [c.should_sample() for _ in range(2_000)]

    run_threads(draw, [(n,) for n in ("a", "b")])
    assert streams["a"] == streams["b"]
    assert 800 < sum(streams["a"]) < 1200
    fp._reseed_sampler(0)
