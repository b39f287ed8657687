"""Rules as objects, circuit breakers and adaptive limits: the pure-Python twin
of ``fastpath/_rules.pxi`` (same names, same behaviour).

Every counter changes under a small lock that is never held while ``fn`` runs
or while the Python side (audit events) is told about a change.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from ._flow import current_flow
from .errors import InvalidConfiguration, ResourceExhausted

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = range(5)
STATE_NAMES = ("closed", "open", "half_open", "forced_open", "disabled")
OUTCOME_FAILED = 1
OUTCOME_SLOW = 2
_BUCKETS = 20
_TIMEOUT_BIT = 1 << 1   # ConstraintViolationType.TIMEOUT_EXCEEDED == 1

_Change = Tuple[int, int, str]


def _clock_ns(clock: Optional[Callable[[], float]]) -> int:
    return time.monotonic_ns() if clock is None else int(clock() * 1e9)


class _Breaker:
    """The state machine and window of a CircuitBreaker (fastpath/breaker.py)."""

    def _setup(self, failure_rate: float, slow_call_rate: float, slow_call_ns: int,
               minimum_calls: int, window_calls: int, window_ns: int, open_ns: int,
               open_backoff: float, max_open_ns: int, half_open_calls: int,
               max_half_open_ns: int, kind_mask: int, record_errors: bool,
               clock: Optional[Callable[[], float]]) -> None:
        self._lock = threading.Lock()
        self._st = CLOSED
        self.failure_rate = failure_rate
        self.slow_call_rate = slow_call_rate
        self.slow_call_ns = slow_call_ns
        self.minimum_calls = minimum_calls
        self.open_base_ns = self.open_now_ns = open_ns
        self.open_backoff = open_backoff
        self.max_open_ns = max_open_ns
        self.half_open_calls = half_open_calls
        self.max_half_open_ns = max_half_open_ns
        self.kind_mask = kind_mask
        self.record_errors = record_errors
        self.clock = clock
        self.window_calls = 0 if window_ns > 0 else window_calls
        self.nbuckets = _BUCKETS if window_ns > 0 else 0
        self.bucket_ns = max(1, window_ns // _BUCKETS) if window_ns > 0 else 0
        self.open_until_ns = self.half_open_since_ns = 0
        self.half_open_gen = 0
        self.probes_inflight = self.probes_done = self.probes_failed = self.probes_slow = 0
        self.refused = self.transitions = self.recorded = 0
        self._clear()

    def _now_ns(self) -> int:
        return _clock_ns(self.clock)

    def _clear(self) -> None:
        self.n = self.failures = self.slow = 0
        self.ring_pos = 0
        self.ring: List[int] = [0] * self.window_calls
        self.buckets: List[List[int]] = [[0, 0, 0, 0] for _ in range(self.nbuckets)]
        self.last_epoch = -1

    def _clear_window(self) -> None:
        with self._lock:
            self._clear()

    # -- admission ------------------------------------------------------------------
    def _admit(self) -> int:
        """0: refuse; 1: run (CLOSED / DISABLED); 2 + gen: run as a probe."""
        state = self._st
        if state == CLOSED or state == DISABLED:
            return 1
        now = self._now_ns() if state != FORCED_OPEN else 0
        change: Optional[_Change] = None
        with self._lock:
            state = self._st
            if state == CLOSED or state == DISABLED:
                return 1
            if state == FORCED_OPEN:
                self.refused += 1
                return 0
            if state == OPEN:
                if now < self.open_until_ns:
                    self.refused += 1
                    return 0
                change = self._move(HALF_OPEN, now, "open_elapsed")
                token = -1        # admitted below, after the event
            else:
                token = self._probe_admission(now)
                if token == -2:
                    change = self._move(OPEN, now, "half_open_timeout")
                    self.refused += 1
                    token = 0
        if change is not None:
            self._changed(*change)
        if token == -1:
            return self._admit()
        return token

    def _probe_admission(self, now: int) -> int:
        if self.max_half_open_ns >= 0 and now - self.half_open_since_ns >= self.max_half_open_ns:
            return -2
        if self.probes_inflight + self.probes_done >= self.half_open_calls:
            self.refused += 1
            return 0
        self.probes_inflight += 1
        return 2 + self.half_open_gen

    # -- outcomes -----------------------------------------------------------------
    def record_call(self, token: int, budget: Any, error: int, deadline_ns: int) -> None:
        outcome = 0
        mask = 0
        for kind in budget._violations:
            mask |= 1 << kind
        if (mask & self.kind_mask) or (error > 0 and self.record_errors):
            outcome |= OUTCOME_FAILED
        slow_ns = self.slow_call_ns if self.slow_call_ns >= 0 else deadline_ns
        if budget._stop_ns - budget._start_ns > slow_ns:
            outcome |= OUTCOME_SLOW
        self._record(token, -1 if error < 0 else outcome)

    def _record(self, token: int, outcome: int) -> None:
        """Record an outcome (OUTCOME_* bits; -1 none) of an admitted call."""
        if token < 2 and outcome < 0:
            return
        now = self._now_ns() if (token >= 2 or self.nbuckets) else 0
        with self._lock:
            if token >= 2:
                change = self._probe_ended(token - 2, outcome, now)
            else:
                change = self._closed_outcome(outcome, now)
        if change is not None:
            self._changed(*change)

    def _closed_outcome(self, outcome: int, now: int) -> Optional[_Change]:
        if self._st != CLOSED:
            return None
        failed, slow = outcome & OUTCOME_FAILED, (outcome & OUTCOME_SLOW) >> 1
        if self.window_calls:
            if self.n == self.window_calls:
                old = self.ring[self.ring_pos]
                self.failures -= old & OUTCOME_FAILED
                self.slow -= (old & OUTCOME_SLOW) >> 1
            else:
                self.n += 1
            self.ring[self.ring_pos] = outcome
            self.ring_pos = (self.ring_pos + 1) % self.window_calls
        else:
            epoch = now // self.bucket_ns
            if self.last_epoch < 0 or epoch - self.last_epoch >= self.nbuckets:
                self._clear()
                self.last_epoch = epoch
            elif epoch > self.last_epoch:
                for i in range(self.last_epoch + 1, epoch + 1):
                    bucket = self.buckets[i % self.nbuckets]
                    self.n -= bucket[1]
                    self.failures -= bucket[2]
                    self.slow -= bucket[3]
                    bucket[:] = [i, 0, 0, 0]
                self.last_epoch = epoch
            elif epoch <= self.last_epoch - self.nbuckets:
                return None
            bucket = self.buckets[epoch % self.nbuckets]
            self.n += 1
            bucket[1] += 1
            bucket[2] += failed
            bucket[3] += slow
        self.failures += failed
        self.slow += slow
        self.recorded += 1
        if self.n >= self.minimum_calls:
            if self.failures >= self.failure_rate * self.n:
                return self._move(OPEN, now or self._now_ns(), "failure_rate")
            if self.slow >= self.slow_call_rate * self.n:
                return self._move(OPEN, now or self._now_ns(), "slow_call_rate")
        return None

    def _probe_ended(self, gen: int, outcome: int, now: int) -> Optional[_Change]:
        if self._st != HALF_OPEN or gen != self.half_open_gen:
            return None
        self.probes_inflight -= 1
        if outcome < 0:
            return None
        self.probes_done += 1
        self.probes_failed += outcome & OUTCOME_FAILED
        self.probes_slow += (outcome & OUTCOME_SLOW) >> 1
        if self.probes_done < self.half_open_calls:
            return None
        if self.probes_failed >= self.failure_rate * self.probes_done:
            return self._move(OPEN, now, "probes_failed")
        if self.probes_slow >= self.slow_call_rate * self.probes_done:
            return self._move(OPEN, now, "probes_slow")
        return self._move(CLOSED, 0, "probes_succeeded")

    # -- transitions (the lock is held) -------------------------------------------------
    def _move(self, new_state: int, now: int, reason: str) -> _Change:
        old = self._st
        if new_state == OPEN:
            if old == HALF_OPEN:
                backed_off = self.open_now_ns * self.open_backoff
                if self.max_open_ns >= 0 and backed_off > self.max_open_ns:
                    backed_off = self.max_open_ns
                self.open_now_ns = int(min(backed_off, 9.0e18))
            self.open_until_ns = now + self.open_now_ns
        elif new_state == HALF_OPEN:
            self.half_open_gen += 1
            self.half_open_since_ns = now
            self.probes_inflight = self.probes_done = 0
            self.probes_failed = self.probes_slow = 0
        if new_state == CLOSED:
            self.open_now_ns = self.open_base_ns
        if new_state != HALF_OPEN:
            self.half_open_gen += 1
        self._clear()
        self._st = new_state
        self.transitions += 1
        return (old, new_state, reason)

    def _changed(self, old: int, new: int, reason: str) -> None:
        pass  # CircuitBreaker emits the audit events

    def _set_state(self, new_state: int, reason: str) -> None:
        now = self._now_ns()
        with self._lock:
            change = self._move(new_state, now, reason)
        self._changed(*change)

    def _snapshot(self) -> Tuple[int, ...]:
        with self._lock:
            return (self._st, self.n, self.failures, self.slow, self.refused,
                    self.transitions, self.recorded, self.probes_inflight, self.open_until_ns,
                    self.open_now_ns)


class _Adaptive:
    """One rule's adaptive limit: this window's latencies and the limit so far."""

    def __init__(self, settings: Any, percentile: float, headroom: float, min_ms: int,
                 cap_ms: int, window_calls: int, window_ns: int,
                 clock: Optional[Callable[[], float]]) -> None:
        from ._histogram_py import LatencyHistogram

        self.settings = settings
        self.percentile = percentile
        self.headroom = headroom
        self.min_ms = min_ms
        self.cap_ms = cap_ms
        self.window_calls = window_calls
        self.window_ns = window_ns
        self.clock = clock
        self.current = LatencyHistogram()
        self.previous = LatencyHistogram()
        self.n = self.timeouts = 0
        self.limit_ms = cap_ms
        self.windows = self.changes = 0
        self.window_start_ns = _clock_ns(clock)
        self._lock = threading.Lock()

    def record(self, elapsed_ns: int, timed_out: bool, stop_ns: int) -> bool:
        with self._lock:
            self.current.record(elapsed_ns)
            self.n += 1
            self.timeouts += bool(timed_out)
            return self._ended(stop_ns)

    def _ended(self, stop_ns: int) -> bool:
        """Has the current window ended (lock held)?  stop_ns: now, on the
        monotonic clock; the limit's own clock is read instead if it has one."""
        if self.window_calls:
            return self.n >= self.window_calls
        if self.clock is not None:
            stop_ns = _clock_ns(self.clock)
        return stop_ns - self.window_start_ns >= self.window_ns

    def _observe(self, elapsed_ns: int, timed_out: bool = False) -> bool:
        return self.record(elapsed_ns, timed_out, time.monotonic_ns())

    def _finish_window(self, if_due: bool = False
                       ) -> Optional[Tuple[int, int, Optional[int], int, int]]:
        # if_due (the pipeline's call, after record() said the window ended):
        # finish it only if it still has ended -- another thread may have
        # finished it between that record() and this lock, and a second finish
        # would close the next window after a call or two.
        with self._lock:
            n, timeouts, done = self.n, self.timeouts, self.current
            if n == 0:
                return None
            if if_due and not self._ended(time.monotonic_ns()):
                return None
            self.current, self.previous = self.previous, done
            self.current.reset()
            self.n = self.timeouts = 0
            self.window_start_ns = _clock_ns(self.clock)
            self.windows += 1
            p_ns: Optional[int] = None
            if timeouts * 100.0 > n * (100.0 - self.percentile):
                new_ms = self.cap_ms          # the pN is censored at the deadline
            else:
                p_ns = done.percentile(self.percentile)
                assert p_ns is not None           # the window is not empty
                new_ms = math.ceil(p_ns * self.headroom / 1e6)
                new_ms = min(max(new_ms, self.min_ms), self.cap_ms)
            old_ms = self.limit_ms
            if new_ms == old_ms:
                return None
            self.limit_ms = new_ms
            self.changes += 1
            return (old_ms, new_ms, p_ns, n, timeouts)

    def _snapshot(self) -> Tuple[int, int, int, int, Any]:
        with self._lock:
            return (self.limit_ms, self.windows, self.changes, self.n, self.previous)


def _rule_refused(rule: Any, rule_id: Any, constraints: Any) -> Any:
    """A call the breaker refused: ResourceExhausted (fail closed) or the fallback."""
    with rule._lock:
        rule.refused += 1
    if constraints.fail_closed_on_timeout:
        raise ResourceExhausted(
            f"rule {rule_id!r} refused without running fn: its circuit breaker is "
            f"{STATE_NAMES[rule.breaker._st]}")
    return rule.fallback


def _rule_feed(core: Any, rule: Any, budget: Any, token: int, error: int) -> None:
    """After an executed call of a registered rule: the breaker, the adaptive limit."""
    if rule.breaker is not None:
        rule.breaker.record_call(token, budget, error, rule.constraints.max_exec_ms * 1_000_000)
    if rule.adaptive is not None and rule.adaptive.record(
            budget._stop_ns - budget._start_ns, 1 in budget._violations, budget._stop_ns):
        core._window_end(rule)


class Rule:
    """Rule(enforcer, state)
--

A registered rule: ``enforcer.rule(rule_id, rule_type, ...)``.

    ``rule(fn, /, *args, **kwargs)`` runs ``fn`` through the enforcer's
    pipeline with this rule's constraints, breaker, adaptive limit and
    counters; ``await rule.run_async(fn, ...)`` does the same for coroutines.
    """

    __slots__ = ("enforcer", "_state", "_traced")

    def __init__(self, enforcer: Any, state: Any) -> None:
        self.enforcer = enforcer
        self._state = state
        self._traced = False

    def __call__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        state = self._state
        if self._traced:
            return self.enforcer._execute_as(state, state.rule_id, fn, *args, **kwargs)
        return self.enforcer._pipeline(state, state.rule_id, fn, args, kwargs)

    def _trace_calls(self, on: bool) -> None:
        """on: rule(...) goes through the enforcer's ``_execute_as`` (which
        fastpath.otel's spans="all" wraps) instead of straight into the pipeline."""
        self._traced = bool(on)

    @property
    def rule_id(self) -> Any:
        """The rule's id (audit events, metrics)."""
        return self._state.rule_id

    @property
    def rule_type(self) -> Any:
        """The RuleType whose profile and fallback it starts from."""
        return self._state.key

    @property
    def constraints(self) -> Any:
        """The effective ExecutionConstraints (an adaptive limit changes max_exec_ms)."""
        return self._state.constraints

    @property
    def configured_constraints(self) -> Any:
        """The constraints it was registered with (the adaptive limit's cap)."""
        return self._state.configured

    @property
    def fallback(self) -> Any:
        return self._state.fallback

    @property
    def breaker(self) -> Any:
        """Its CircuitBreaker, or None."""
        return self._state.breaker

    @property
    def adaptive(self) -> Any:
        """Its AdaptiveLimit, or None."""
        return None if self._state.adaptive is None else self._state.adaptive.settings

    @property
    def quota(self) -> Any:
        """Its Quota (admission per flow key before each call), or None."""
        return self._state.quota

    def run_for(self, key: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``rule(fn, ...)`` charged to the flow ``key`` (as inside
        ``with enforcer.flow(key):``)."""
        token = current_flow.set(key)
        try:
            # As the compiled Rule.run_for: through _execute_as (fastpath.otel wraps it).
            return self.enforcer._execute_as(self._state, self._state.rule_id, fn, *args,
                                             **kwargs)
        finally:
            current_flow.reset(token)

    def run_async(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``await rule.run_async(fn, ...)``: the pipeline for coroutines."""
        return self.enforcer._run_async_state(self._state, self._state.rule_id, fn, args,
                                              kwargs)

    def metrics(self, *, json: bool = False) -> Any:
        """This rule's entry of ``enforcer.rule_metrics()``."""
        return self.enforcer._rule_entry(self._state, json)

    def _observe(self, elapsed_ns: int, timed_out: bool = False) -> int:
        """Feed one recorded latency to the adaptive limit as a call would
        (tests and replays); returns the effective max_exec_ms."""
        if self._state.adaptive is None:
            raise InvalidConfiguration(f"rule {self._state.rule_id!r} has no adaptive limit")
        if self._state.adaptive._observe(elapsed_ns, timed_out):
            self.enforcer._window_end(self._state)
        return int(self._state.constraints.max_exec_ms)

    def __repr__(self) -> str:
        return (f"<Rule {self._state.rule_id!r} {self._state.key!r} "
                f"max_exec_ms={self._state.constraints.max_exec_ms}>")
