"""RetryPolicy: delays, jitter, attempts, filtering, budgets, value semantics, threads.

No test measures time: every delay is observed through an injected sleep that
records its argument (in seconds) and waits for nothing.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import math
import pickle
import random
import threading
import time
import traceback
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastpath
from fastpath import (
    BackoffStrategy,
    ConstraintViolation,
    ConstraintViolationType,
    ExecutionInterrupted,
    InvalidConfiguration,
    RetryPolicy,
)
from fastpath import retry as retry_module
from tests.threads import run_threads

PREFIX = "fastpath.RetryPolicy:"


class Recorder:
    """An injectable sleep: records the seconds it is asked to wait, waits for nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def ms(self) -> list[float]:
        return [s * 1000.0 for s in self.calls]


class Flaky:
    """Fails ``failures`` times (a new exception each time), then returns ``value``."""

    def __init__(self, failures: int, value: object = "ok", exc_type: type = ValueError) -> None:
        self.failures = failures
        self.value = value
        self.exc_type = exc_type
        self.calls: list[tuple[tuple, dict]] = []
        self.raised: list[BaseException] = []

    def __call__(self, /, *args: object, **kwargs: object) -> object:
        self.calls.append((args, kwargs))
        if len(self.calls) <= self.failures:
            exc = self.exc_type(f"failure {len(self.calls)}")
            self.raised.append(exc)
            raise exc
        return self.value


def policy(max_attempts: int = 3, backoff_ms: int = 10) -> tuple[RetryPolicy, Recorder]:
    sleep = Recorder()
    return RetryPolicy(max_attempts, backoff_ms).with_sleep(sleep), sleep


def notes(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


# ------------------------------------------------------------------------ exports


def test_exported_from_the_package():
    assert fastpath.RetryPolicy is retry_module.RetryPolicy
    assert fastpath.BackoffStrategy is retry_module.BackoffStrategy
    assert "RetryPolicy" in fastpath.__all__ and "BackoffStrategy" in fastpath.__all__


def test_backoff_strategy_is_an_enum():
    assert issubclass(BackoffStrategy, enum.Enum)
    assert {m.name for m in BackoffStrategy} == {"FIXED", "EXPONENTIAL"}
    assert repr(BackoffStrategy.FIXED) == "BackoffStrategy.FIXED"


def test_defaults():
    p = RetryPolicy(3, 10)
    assert p.max_attempts == 3
    assert p.backoff_ms == 10
    assert p.strategy is BackoffStrategy.FIXED
    assert p.jitter == 0.0
    assert p.jitter_rng is None
    assert p.max_delay_ms is None
    assert p.retry_on == (Exception,)
    assert p.retry_if is None
    assert p.sleep is time.sleep
    assert RetryPolicy(max_attempts=2, backoff_ms=0).max_attempts == 2


# ------------------------------------------------------------------------- delays


def test_fixed_backoff_waits_backoff_ms_before_every_retry():
    p, sleep = policy(4, 25)
    fn = Flaky(failures=10)
    with pytest.raises(ValueError):
        p.execute(fn)
    assert len(fn.calls) == 4
    assert sleep.calls == [25 / 1000] * 3
    assert [p.delay_ms(k) for k in (1, 2, 3, 50)] == [25] * 4


def test_exponential_backoff_doubles():
    p, sleep = policy(5, 10)
    p = p.with_exponential_backoff()
    assert p.strategy is BackoffStrategy.EXPONENTIAL
    fn = Flaky(failures=10)
    with pytest.raises(ValueError):
        p.execute(fn)
    assert len(fn.calls) == 5
    expected_ms = [10 * 2 ** (k - 1) for k in range(1, 5)]
    assert sleep.calls == [ms / 1000 for ms in expected_ms]
    assert [p.delay_ms(k) for k in range(1, 5)] == expected_ms


def test_with_fixed_backoff_goes_back():
    p = RetryPolicy(3, 10).with_exponential_backoff().with_fixed_backoff()
    assert p.strategy is BackoffStrategy.FIXED
    assert p == RetryPolicy(3, 10)
    assert p.delay_ms(4) == 10


def test_zero_backoff_retries_without_delay():
    p, sleep = policy(3, 0)
    p = p.with_exponential_backoff()
    assert p.execute(Flaky(failures=2)) == "ok"
    assert sleep.calls == [0.0, 0.0]


def test_max_delay_caps_every_delay():
    p, sleep = policy(6, 10)
    p = p.with_exponential_backoff().with_max_delay(30)
    assert p.max_delay_ms == 30
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=10))
    assert sleep.ms == pytest.approx([10, 20, 30, 30, 30])
    assert [p.delay_ms(k) for k in range(1, 6)] == [10, 20, 30, 30, 30]
    assert p.with_max_delay(None).delay_ms(5) == 160
    assert p.with_max_delay(0).delay_ms(1) == 0


def test_exponential_delays_saturate_without_building_huge_ints():
    p = RetryPolicy(10**9, 3).with_exponential_backoff()
    assert p.delay_ms(10**8) == retry_module.MAX_DELAY_LIMIT_MS
    assert p.delay_ms(52) == 3 * 2**51  # still below 2**53
    assert p.delay_ms(53) == 2**53  # 3 * 2**52 saturates
    assert p.with_max_delay(500).delay_ms(10**8) == 500


@given(
    backoff=st.integers(0, 10**6),
    k=st.integers(1, 200),
    cap=st.none() | st.integers(0, 10**7),
    exponential=st.booleans(),
)
def test_delay_formula(backoff, k, cap, exponential):
    p = RetryPolicy(3, backoff).with_max_delay(cap)
    if exponential:
        p = p.with_exponential_backoff()
    base = backoff * 2 ** (k - 1) if exponential else backoff
    base = min(base, 2**53)
    assert p.delay_ms(k) == (base if cap is None else min(base, cap))


# ------------------------------------------------------------------------- jitter


def test_jitter_scales_the_delay_down_by_fraction_times_the_draw():
    draws = iter([0.0, 0.5, 0.999])
    p, sleep = policy(4, 100)
    p = p.with_jitter(0.4, rng=lambda: next(draws))
    assert p.jitter == 0.4
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=10))
    assert sleep.ms == pytest.approx([100.0, 100 * (1 - 0.4 * 0.5), 100 * (1 - 0.4 * 0.999)])


def test_jitter_bounds_statistically_with_a_seeded_rng():
    fraction = 0.5
    p, sleep = policy(2001, 80)
    p = p.with_jitter(fraction, rng=random.Random(20240517).random)
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=10**6))
    delays = sleep.ms
    assert len(delays) == 2000
    lo, hi = 80 * (1 - fraction), 80.0
    assert all(lo < d <= hi for d in delays)
    # uniform over (lo, hi]: the mean is near the middle and the range is covered
    assert sum(delays) / len(delays) == pytest.approx((lo + hi) / 2, abs=1.5)
    assert min(delays) < lo + 1 and max(delays) > hi - 1


def test_jitter_with_the_default_rng_stays_within_bounds():
    p, sleep = policy(301, 10)
    p = p.with_jitter(1.0)
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=10**6))
    assert len(sleep.ms) == 300
    assert all(0.0 <= d <= 10.0 for d in sleep.ms)
    assert len(set(sleep.ms)) > 1


def test_max_delay_is_applied_after_jitter():
    draws = iter([0.0, 0.2, 0.9])
    p, sleep = policy(4, 100)
    p = p.with_jitter(0.5, rng=lambda: next(draws)).with_max_delay(70)
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=10))
    # 100 -> 100, 90, 55 after jitter; the cap then cuts the first two to 70
    assert sleep.ms == pytest.approx([70.0, 70.0, 55.0])


def test_out_of_range_draws_are_clamped():
    draws = iter([-3.0, 7.0])
    p, sleep = policy(3, 100)
    p = p.with_jitter(0.5, rng=lambda: next(draws))
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=10))
    assert sleep.ms == pytest.approx([100.0, 50.0])


def test_zero_jitter_draws_nothing():
    def rng() -> float:
        raise AssertionError("no draw expected")

    p, sleep = policy(3, 10)
    assert p.with_jitter(0.0, rng=rng).execute(Flaky(failures=2)) == "ok"
    assert sleep.calls == [0.01, 0.01]


# ----------------------------------------------------------------------- attempts


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_success_on_the_kth_attempt(k):
    p, sleep = policy(4, 5)
    result = object()
    fn = Flaky(failures=k - 1, value=result)
    assert p.execute(fn) is result
    assert len(fn.calls) == k
    assert len(sleep.calls) == k - 1
    assert all(notes(exc) == [] for exc in fn.raised)


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 7])
def test_gives_up_after_max_attempts_with_the_last_exception(max_attempts):
    p, sleep = policy(max_attempts, 1)
    fn = Flaky(failures=100)
    with pytest.raises(ValueError) as info:
        p.execute(fn)
    assert len(fn.calls) == max_attempts
    assert len(sleep.calls) == max_attempts - 1
    assert info.value is fn.raised[-1]
    word = "attempt" if max_attempts == 1 else "attempts"
    assert notes(info.value) == [f"{PREFIX} gave up after {max_attempts} {word}"]
    assert all(notes(exc) == [] for exc in fn.raised[:-1])


def test_the_reraised_exception_keeps_its_traceback_and_gains_no_context():
    def failing() -> None:
        raise KeyError("boom")

    p, _ = policy(3, 1)
    with pytest.raises(KeyError) as info:
        p.execute(failing)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "failing"
    assert info.value.__context__ is None
    assert info.value.__cause__ is None


def test_the_same_exception_object_raised_each_time_gets_one_note():
    shared = RuntimeError("always the same")

    def fn() -> None:
        raise shared

    p, _ = policy(3, 1)
    with pytest.raises(RuntimeError) as info:
        p.execute(fn)
    assert info.value is shared
    assert notes(shared) == [f"{PREFIX} gave up after 3 attempts"]


def test_success_path_does_not_sleep_or_touch_the_result():
    p, sleep = policy(3, 10)
    value = [1, 2]
    assert p.execute(lambda: value) is value
    assert sleep.calls == []


# ----------------------------------------------------------------- what is retried


def test_retry_on_filters_and_other_exceptions_propagate_unchanged():
    p, sleep = policy(5, 1)
    p = p.with_retry_on(KeyError, OSError)
    assert p.retry_on == (KeyError, OSError)
    fn = Flaky(failures=3, exc_type=TypeError)
    with pytest.raises(TypeError) as info:
        p.execute(fn)
    assert len(fn.calls) == 1
    assert sleep.calls == []
    assert info.value is fn.raised[0]
    assert notes(info.value) == []


def test_retry_on_matches_subclasses():
    p, _ = policy(5, 1)
    fn = Flaky(failures=2, exc_type=KeyError)
    assert p.with_retry_on(LookupError).execute(fn) == "ok"
    assert len(fn.calls) == 3
    fn = Flaky(failures=2, exc_type=FileNotFoundError)
    assert p.with_retry_on(KeyError, OSError).execute(fn) == "ok"


def test_a_non_matching_exception_on_a_later_attempt_stops_at_once():
    errors = [KeyError("first"), ValueError("second")]

    def fn() -> None:
        raise errors.pop(0)

    p, sleep = policy(5, 1)
    with pytest.raises(ValueError) as info:
        p.with_retry_on(KeyError).execute(fn)
    assert errors == []
    assert len(sleep.calls) == 1
    assert notes(info.value) == []
    assert info.value.__context__ is None


def test_retry_if_predicate():
    seen: list[BaseException] = []

    def transient(exc: Exception) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    p, sleep = policy(5, 1)
    p = p.with_retry_if(transient)
    assert p.retry_if is transient

    outcomes = [ValueError("transient 1"), ValueError("transient 2"), ValueError("fatal")]
    raised = list(outcomes)

    def fn() -> None:
        raise raised.pop(0)

    with pytest.raises(ValueError) as info:
        p.execute(fn)
    assert info.value is outcomes[2]
    assert seen == outcomes
    assert len(sleep.calls) == 2
    assert notes(info.value) == []

    fn2 = Flaky(failures=2, exc_type=lambda msg: ValueError("transient " + msg))
    assert p.execute(fn2) == "ok"


def test_retry_if_is_consulted_only_after_retry_on_matched():
    seen: list[BaseException] = []
    p, _ = policy(3, 1)
    p = p.with_retry_on(KeyError).with_retry_if(lambda exc: seen.append(exc) or True)
    with pytest.raises(ValueError):
        p.execute(Flaky(failures=5, exc_type=ValueError))
    assert seen == []
    fn = Flaky(failures=2, exc_type=KeyError)
    assert p.execute(fn) == "ok"
    assert seen == fn.raised


def test_retry_if_accepts_any_truthy_value():
    p, _ = policy(3, 1)
    assert p.with_retry_if(lambda exc: "yes").execute(Flaky(failures=2)) == "ok"
    with pytest.raises(ValueError):
        p.with_retry_if(lambda exc: 0).execute(Flaky(failures=2))


NEVER_RETRIED = [
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    asyncio.CancelledError,
    ExecutionInterrupted,
]


@pytest.mark.parametrize("exc_type", NEVER_RETRIED, ids=lambda t: t.__name__)
def test_base_exceptions_that_are_not_exceptions_are_never_retried(exc_type):
    seen: list[BaseException] = []
    p, sleep = policy(5, 1)
    p = p.with_retry_if(lambda exc: seen.append(exc) or True)
    fn = Flaky(failures=3, exc_type=exc_type)
    with pytest.raises(exc_type) as info:
        p.execute(fn)
    assert len(fn.calls) == 1
    assert info.value is fn.raised[0]
    assert notes(info.value) == [] and seen == [] and sleep.calls == []


@pytest.mark.parametrize("exc_type", NEVER_RETRIED + [BaseException], ids=lambda t: t.__name__)
def test_retry_on_rejects_base_exception_only_classes(exc_type):
    with pytest.raises(InvalidConfiguration, match="retry_on must be Exception subclasses") as info:
        RetryPolicy(3, 1).with_retry_on(ValueError, exc_type)
    assert repr(exc_type) in str(info.value)
    assert "never retried" in str(info.value)


@pytest.mark.parametrize("exc_type", NEVER_RETRIED, ids=lambda t: t.__name__)
def test_base_exceptions_escape_a_later_attempt_without_a_note(exc_type):
    outcomes: list[BaseException] = [ValueError("retry me"), exc_type()]
    expected = outcomes[1]

    def fn() -> None:
        raise outcomes.pop(0)

    p, sleep = policy(5, 1)
    with pytest.raises(exc_type) as info:
        p.execute(fn)
    assert info.value is expected
    assert notes(expected) == [] and len(sleep.calls) == 1


# --------------------------------------------------------------- arguments passed


def test_args_and_kwargs_pass_through_including_a_kwarg_named_fn():
    fn = Flaky(failures=2)
    p, _ = policy(3, 1)
    assert p.execute(fn, 1, "two", fn="kw", self="s", budget=3) == "ok"
    assert fn.calls == [((1, "two"), {"fn": "kw", "self": "s", "budget": 3})] * 3


def test_execute_within_passes_args_through(fp):
    budget = fp.ExecutionConstraints(60_000).create_budget()
    fn = Flaky(failures=1)
    p, _ = policy(3, 1)
    assert p.execute_within(budget, fn, 1, fn=2, budget=3) == "ok"
    assert fn.calls == [((1,), {"fn": 2, "budget": 3})] * 2


# ----------------------------------------------------------------- execute_within


def test_execute_within_success(fp):
    budget = fp.ExecutionConstraints(5_000).create_budget()
    p, sleep = policy(3, 10)
    assert p.execute_within(budget, lambda x: x * 2, 21) == 42
    assert sleep.calls == []


def test_execute_within_does_not_start_a_retry_whose_delay_exceeds_the_remaining_time(fp):
    budget = fp.ExecutionConstraints(5_000).create_budget()
    p, sleep = policy(5, 100_000)
    fn = Flaky(failures=10)
    with pytest.raises(ValueError) as info:
        p.execute_within(budget, fn)
    assert len(fn.calls) == 1
    assert sleep.calls == []
    assert info.value is fn.raised[0]
    (note,) = notes(info.value)
    assert note.startswith(f"{PREFIX} stopped after 1 attempt: ")
    assert "100000 ms" in note and "remaining" in note


def test_execute_within_retries_while_the_delays_fit(fp):
    # 60 s budget, delays 10, 20, 40, ... ms: retry k runs while 10*2**(k-1) < remaining,
    # i.e. up to k = 13 (40.96 s); retry 14 (81.92 s) cannot fit, whatever the test's speed.
    budget = fp.ExecutionConstraints(60_000).create_budget()
    seen: list[tuple[float, float]] = []

    def sleep(seconds: float) -> None:
        seen.append((seconds * 1000, budget.remaining_ms()))

    p = RetryPolicy(20, 10).with_exponential_backoff().with_sleep(sleep)
    fn = Flaky(failures=100)
    with pytest.raises(ValueError) as info:
        p.execute_within(budget, fn)
    assert len(fn.calls) == 14
    assert [d for d, _ in seen] == [p.delay_ms(k) for k in range(1, 14)]
    assert all(delay < remaining for delay, remaining in seen)
    assert info.value is fn.raised[-1]
    (note,) = notes(info.value)
    assert note.startswith(f"{PREFIX} stopped after 14 attempts: the delay before attempt 15")
    assert f"({p.delay_ms(14)} ms)" in note


def test_execute_within_a_timed_out_budget_runs_nothing(fp):
    budget = fp.ExecutionConstraints(1).create_budget()
    while not budget.is_timeout():
        time.sleep(0.0005)
    fn = Flaky(failures=0)
    p, sleep = policy(3, 1)
    with pytest.raises(ConstraintViolation) as info:
        p.execute_within(budget, fn)
    assert fn.calls == [] and sleep.calls == []
    assert info.value.kind is ConstraintViolationType.TIMEOUT_EXCEEDED
    assert info.value.stats is not None
    assert info.value.stats.elapsed_ns >= 1_000_000
    assert budget.get_violations() == [ConstraintViolationType.TIMEOUT_EXCEEDED]


def test_execute_within_stops_when_the_budget_times_out_during_the_delay(fp):
    # 2 s: wide enough that even a loaded machine makes the first attempt in time
    budget = fp.ExecutionConstraints(2000).create_budget()

    def sleep_until_timeout(seconds: float) -> None:
        while not budget.is_timeout():
            time.sleep(0.001)

    p = RetryPolicy(5, 1).with_sleep(sleep_until_timeout)
    fn = Flaky(failures=10)
    with pytest.raises(ValueError) as info:
        p.execute_within(budget, fn)
    assert len(fn.calls) == 1
    assert info.value is fn.raised[0]
    (note,) = notes(info.value)
    # normally "timed out during the delay"; "does not fit" if ~2 s passed before it
    assert note.startswith(f"{PREFIX} stopped after 1 attempt: ")


def test_execute_within_through_budget_enforce(fp):
    budget = fp.ExecutionConstraints(60_000).create_budget()
    p, _ = policy(3, 1)
    fn = Flaky(failures=2)
    assert p.execute_within(budget, budget.enforce, fn, 7, k="v") == "ok"
    assert fn.calls == [((7,), {"k": "v"})] * 3
    assert budget.get_violations() == []


class FakeBudget:
    """A budget whose clock the test sets: for the exact boundaries."""

    def __init__(self, remaining_ms: float) -> None:
        self.remaining = remaining_ms
        self.timed_out = False

    def remaining_ms(self) -> float:
        return 0.0 if self.timed_out else self.remaining

    def is_timeout(self) -> bool:
        return self.timed_out

    def check(self) -> None:
        if self.timed_out:
            raise ConstraintViolation([ConstraintViolationType.TIMEOUT_EXCEEDED])

    def stats(self) -> None:
        return None


def test_a_retry_needs_more_remaining_time_than_its_delay():
    p, sleep = policy(5, 20)
    fn = Flaky(failures=10)
    with pytest.raises(ValueError) as info:
        p.execute_within(FakeBudget(20.0), fn)  # type: ignore[arg-type]
    assert len(fn.calls) == 1 and sleep.calls == []
    assert notes(info.value) == [
        (f"{PREFIX} stopped after 1 attempt: the delay before attempt 2 (20 ms) does not fit "
         "in the budget's remaining 20 ms")
    ]
    fn = Flaky(failures=2)
    assert p.execute_within(FakeBudget(20.5), fn) == "ok"  # type: ignore[arg-type]
    assert sleep.calls == [0.02, 0.02]


def test_the_jittered_delay_is_what_must_fit():
    p, sleep = policy(3, 100)
    p = p.with_jitter(0.5, rng=lambda: 0.25)  # 100 ms * (1 - 0.125) = 87.5 ms
    assert p.execute_within(FakeBudget(88.0), Flaky(failures=1)) == "ok"  # type: ignore[arg-type]
    assert sleep.ms == [87.5]
    with pytest.raises(ValueError) as info:
        p.execute_within(FakeBudget(87.25), Flaky(failures=1))  # type: ignore[arg-type]
    assert notes(info.value) == [
        (f"{PREFIX} stopped after 1 attempt: the delay before attempt 2 (87.500 ms) does not fit "
         "in the budget's remaining 87.250 ms")
    ]


def test_the_budget_timing_out_during_the_delay_stops_the_retries():
    budget = FakeBudget(1000.0)

    def sleep(seconds: float) -> None:
        budget.timed_out = True

    p = RetryPolicy(5, 30).with_sleep(sleep)
    fn = Flaky(failures=10)
    with pytest.raises(ValueError) as info:
        p.execute_within(budget, fn)  # type: ignore[arg-type]
    assert len(fn.calls) == 1
    assert notes(info.value) == [
        (f"{PREFIX} stopped after 1 attempt: the budget timed out during the 30 ms delay "
         "before attempt 2")
    ]


def test_a_budget_that_timed_out_during_an_attempt_stops_the_retries():
    budget = FakeBudget(1000.0)

    def fn() -> None:
        budget.timed_out = True
        raise ValueError("slow and failed")

    p, sleep = policy(5, 0)
    with pytest.raises(ValueError) as info:
        p.execute_within(budget, fn)  # type: ignore[arg-type]
    assert sleep.calls == []
    assert notes(info.value) == [f"{PREFIX} stopped after 1 attempt: the budget has timed out"]


def test_execute_within_still_gives_up_after_max_attempts():
    p, sleep = policy(3, 1)
    with pytest.raises(ValueError) as info:
        p.execute_within(FakeBudget(10_000.0), Flaky(failures=10))  # type: ignore[arg-type]
    assert notes(info.value) == [f"{PREFIX} gave up after 3 attempts"]
    assert len(sleep.calls) == 2


# ------------------------------------------------------------------ value semantics


def full_policy() -> RetryPolicy:
    return (
        RetryPolicy(4, 10)
        .with_exponential_backoff()
        .with_jitter(0.5)
        .with_max_delay(100)
        .with_retry_on(ValueError, KeyError)
        .with_retry_if(bool)
        .with_sleep(time.sleep)
    )


def test_immutable():
    p = RetryPolicy(3, 10)
    for name in ("max_attempts", "backoff_ms", "_max_attempts", "strategy", "anything"):
        with pytest.raises(AttributeError):
            setattr(p, name, 5)
    with pytest.raises(AttributeError):
        del p.max_attempts
    with pytest.raises(AttributeError):
        del p._backoff_ms
    with pytest.raises(AttributeError):
        p.__init__(5, 5)
    assert not hasattr(p, "__dict__")
    assert p == RetryPolicy(3, 10)


def test_builders_return_new_policies_and_leave_the_original_alone():
    base = RetryPolicy(3, 10)
    snapshot = copy.copy(base)
    derived = [
        base.with_exponential_backoff(),
        base.with_fixed_backoff(),
        base.with_jitter(0.2),
        base.with_max_delay(5),
        base.with_retry_on(KeyError),
        base.with_retry_if(bool),
        base.with_sleep(print),
    ]
    assert all(d is not base for d in derived)
    assert base == snapshot
    assert base.strategy is BackoffStrategy.FIXED and base.jitter == 0.0
    assert base.max_delay_ms is None and base.retry_on == (Exception,)
    assert base.retry_if is None and base.sleep is time.sleep


def test_equality_and_hash_by_value():
    assert full_policy() == full_policy()
    assert hash(full_policy()) == hash(full_policy())
    assert len({full_policy(), full_policy(), RetryPolicy(4, 10)}) == 2
    assert RetryPolicy(3, 10) != "RetryPolicy(3, 10)"
    base = full_policy()
    variants = [
        RetryPolicy(5, 10),
        RetryPolicy(4, 11),
        base.with_fixed_backoff(),
        base.with_jitter(0.25),
        base.with_jitter(0.5, rng=random.random),
        base.with_max_delay(101),
        base.with_max_delay(None),
        base.with_retry_on(KeyError, ValueError),
        base.with_retry_if(callable),
        base.with_sleep(print),
    ]
    for other in variants:
        assert other != base
    assert len(set(variants)) == len(variants)


def test_pickle_and_copy_round_trip():
    p = full_policy()
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.copy(p) == p
    assert copy.deepcopy(p) == p


def test_repr_shows_the_settings():
    text = repr(full_policy())
    assert text == (
        "RetryPolicy(max_attempts=4, backoff_ms=10, strategy=BackoffStrategy.EXPONENTIAL, "
        "jitter=0.5, max_delay_ms=100, retry_on=(ValueError, KeyError), retry_if=bool, "
        "sleep=time.sleep)"
    )
    assert repr(RetryPolicy(3, 10)) == (
        "RetryPolicy(max_attempts=3, backoff_ms=10, strategy=BackoffStrategy.FIXED, "
        "jitter=0.0, max_delay_ms=None, retry_on=(Exception,), retry_if=None, sleep=time.sleep)"
    )
    seeded = RetryPolicy(3, 10).with_jitter(1.0, rng=random.Random(1).random)
    assert "jitter=1.0, jitter_rng=" in repr(seeded)


# --------------------------------------------------------------------- validation


class NotAnException:
    pass


def _ok(*args):
    return None


BAD = [
    # (build, argument name, bad value)
    (lambda v: RetryPolicy(v, 10), "max_attempts", 0),
    (lambda v: RetryPolicy(v, 10), "max_attempts", -1),
    (lambda v: RetryPolicy(v, 10), "max_attempts", True),
    (lambda v: RetryPolicy(v, 10), "max_attempts", 3.0),
    (lambda v: RetryPolicy(v, 10), "max_attempts", "3"),
    (lambda v: RetryPolicy(v, 10), "max_attempts", None),
    (lambda v: RetryPolicy(3, v), "backoff_ms", -1),
    (lambda v: RetryPolicy(3, v), "backoff_ms", False),
    (lambda v: RetryPolicy(3, v), "backoff_ms", 1.5),
    (lambda v: RetryPolicy(3, v), "backoff_ms", None),
    (lambda v: RetryPolicy(3, v), "backoff_ms", "10"),
    (lambda v: RetryPolicy(3, v), "backoff_ms", 2**53 + 1),
    (lambda v: RetryPolicy(3, 1).with_max_delay(v), "max_delay_ms", -1),
    (lambda v: RetryPolicy(3, 1).with_max_delay(v), "max_delay_ms", True),
    (lambda v: RetryPolicy(3, 1).with_max_delay(v), "max_delay_ms", 2.5),
    (lambda v: RetryPolicy(3, 1).with_max_delay(v), "max_delay_ms", 2**53 + 1),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", -0.1),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", 1.5),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", math.nan),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", math.inf),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", True),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", "0.5"),
    (lambda v: RetryPolicy(3, 1).with_jitter(v), "jitter fraction", None),
    (lambda v: RetryPolicy(3, 1).with_jitter(0.5, rng=v), "rng", 0.3),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", 42),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", "ValueError"),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", (ValueError, KeyError)),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", ValueError("instance")),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", NotAnException),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", int),
    (lambda v: RetryPolicy(3, 1).with_retry_on(ValueError, v), "retry_on", None),
    (lambda v: RetryPolicy(3, 1).with_retry_on(v), "retry_on", BaseException),
    (lambda v: RetryPolicy(3, 1).with_retry_if(v), "retry_if", None),
    (lambda v: RetryPolicy(3, 1).with_retry_if(v), "retry_if", True),
    (lambda v: RetryPolicy(3, 1).with_sleep(v), "sleep", None),
    (lambda v: RetryPolicy(3, 1).with_sleep(v), "sleep", 0.5),
    (lambda v: RetryPolicy(3, 1).delay_ms(v), "k", 0),
    (lambda v: RetryPolicy(3, 1).delay_ms(v), "k", True),
    (lambda v: RetryPolicy(3, 1).delay_ms(v), "k", 1.0),
]


@pytest.mark.parametrize(
    "build, name, value", BAD, ids=[f"{name}={value!r}" for _, name, value in BAD]
)
def test_every_bad_value_is_an_invalid_configuration_naming_it(build, name, value):
    with pytest.raises(InvalidConfiguration) as info:
        build(value)
    message = str(info.value)
    assert message.startswith(name)
    assert f"got {value!r}" in message
    assert isinstance(info.value, ValueError)


def test_the_documented_message():
    with pytest.raises(InvalidConfiguration) as info:
        RetryPolicy(0, 10)
    assert str(info.value) == "max_attempts must be an int >= 1, got 0"


def test_with_retry_on_needs_at_least_one_class():
    with pytest.raises(InvalidConfiguration, match="retry_on needs at least one"):
        RetryPolicy(3, 1).with_retry_on()


def test_good_boundary_values_are_accepted():
    import numpy as np

    assert RetryPolicy(1, 0).max_attempts == 1
    assert RetryPolicy(np.int64(4), np.int32(7)).max_attempts == 4
    assert type(RetryPolicy(np.int64(4), np.int32(7)).backoff_ms) is int
    assert RetryPolicy(3, 2**53).backoff_ms == 2**53
    assert RetryPolicy(3, 1).with_max_delay(2**53).max_delay_ms == 2**53
    assert RetryPolicy(3, 1).with_jitter(0).jitter == 0.0
    assert RetryPolicy(3, 1).with_jitter(1).jitter == 1.0
    assert RetryPolicy(3, 1).with_jitter(Fraction(1, 4)).jitter == 0.25
    assert type(RetryPolicy(3, 1).with_jitter(Fraction(1, 4)).jitter) is float


# -------------------------------------------------------------------------- threads


def test_one_policy_shared_by_eight_threads():
    local = threading.local()

    def sleep(seconds: float) -> None:
        local.sleeps.append(seconds)
        time.sleep(0)  # let another thread run between attempts

    p = RetryPolicy(5, 7).with_exponential_backoff().with_sleep(sleep)
    before = copy.copy(p)
    start = threading.Barrier(8)
    results: dict[int, object] = {}
    problems: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            local.sleeps = []
            failures = i % 4  # 0..3 failures, all within max_attempts
            fn = Flaky(failures=failures, value=("thread", i))
            start.wait()
            for _ in range(50):
                fn.calls.clear()
                local.sleeps.clear()
                assert p.execute(fn, i, tag=i) == ("thread", i)
                assert fn.calls == [((i,), {"tag": i})] * (failures + 1)
                assert local.sleeps == [p.delay_ms(k) / 1000 for k in range(1, failures + 1)]
            never = Flaky(failures=10, value=None)
            with pytest.raises(ValueError) as info:
                p.execute(never)
            assert info.value is never.raised[-1]
            assert notes(info.value) == [f"{PREFIX} gave up after 5 attempts"]
            results[i] = fn.value
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            problems.append(exc)

    run_threads(worker, [(i,) for i in range(8)])
    assert problems == []
    assert results == {i: ("thread", i) for i in range(8)}
    assert p == before


# -------------------------------------------------------------------------- typing


@pytest.mark.slow
def test_mypy_strict_checks_the_arguments_passed_through(tmp_path):
    pytest.importorskip("mypy")
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    example = tmp_path / "retry_typing.py"
    example.write_text(textwrap.dedent("""
        from fastpath import BackoffStrategy, ExecutionConstraints, RetryPolicy

        def add(a: int, b: int = 0) -> int:
            return a + b

        policy: RetryPolicy = (
            RetryPolicy(3, 10).with_exponential_backoff().with_max_delay(100)
            .with_retry_on(KeyError, OSError).with_jitter(0.5).with_sleep(print)
        )
        strategy: BackoffStrategy = policy.strategy
        total: int = policy.execute(add, 1, b=2)
        budget = ExecutionConstraints(50).create_budget()
        within: int = policy.execute_within(budget, add, 1)
        wrong: int = policy.execute(add, "one")  # type: ignore[arg-type]
    """))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         str(root / "fastpath" / "retry.py"), str(example)],
        check=False, capture_output=True, text=True, cwd=root,
    )
    # --strict warns about an unused "type: ignore": the bad call must be an error
    assert out.returncode == 0, out.stdout + out.stderr
