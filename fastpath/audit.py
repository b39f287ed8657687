"""Audit events after the call: the default log sink and the per-rule-id counts.

Only violated calls get here (the per-call path of the compiled core never
does), so nothing in this module is on the hot path.

* ``AuditLogSink`` is the default sink of ``ConstraintEnforcer``: it writes one
  line per event to the ``fastpath.audit`` logger, with the call's figures in
  the message, and at most ``rate_per_s`` events per rule id per second; past
  that it counts the events it leaves out and writes one summary line per rule
  id and window.
* ``RuleAuditCounts`` counts every audited event per (rule type, rule id),
  whatever the sink, with a bounded number of rule ids; the Prometheus
  collector and the OpenTelemetry instruments read it at collection time.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import ConstraintViolationType, InvalidConfiguration

__all__ = ["AuditLogSink", "RuleAuditCounts", "OTHER_RULE_ID", "describe_event"]

#: The rule id under which rule ids past a cap are counted together.  Not
#: ``"other"``: a rule may well be called that.
OTHER_RULE_ID = "__other__"

#: Outcomes of an audited (violated) call.
AUDIT_OUTCOMES = ("deny", "fallback", "error")

#: Violation kinds a call can be audited for (SAMPLED_OUT calls are never audited).
AUDITED_KINDS = (ConstraintViolationType.TIMEOUT_EXCEEDED,
                 ConstraintViolationType.MEMORY_EXCEEDED,
                 ConstraintViolationType.CPU_EXCEEDED)

_KIND_INDEX = {int(kind): i for i, kind in enumerate(AUDITED_KINDS)}


def check_rate(name: str, value: Any) -> float:
    """``None``/``inf`` (no limit) or a real number >= 0, as a float."""
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidConfiguration(f"{name} must be a number >= 0 or None, got {value!r}")
    rate = float(value)
    if math.isnan(rate) or rate < 0:
        raise InvalidConfiguration(f"{name} must be a number >= 0 or None, got {value!r}")
    return rate


# ------------------------------------------------------------------ the log line

def _limits(constraints: Any) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """(max_exec_ms, CPU allowance in µs, memory limit in bytes) of a profile."""
    if constraints is None:
        return None, None, None
    shares = constraints.cpu_shares
    cpu_us = None if shares is None else constraints.max_exec_ms * shares * 10
    return constraints.max_exec_ms, cpu_us, constraints.memory_limit_bytes


def limit_fields(constraints: Any) -> Dict[str, Optional[int]]:
    """The limits in force, for ``logging``'s ``extra=`` and span attributes."""
    max_ms, cpu_us, mem = _limits(constraints)
    return {"max_exec_ms": max_ms, "cpu_limit_us": cpu_us, "memory_limit_bytes": mem}


def describe_event(event: Any) -> str:
    """The log line of an audit event: what was violated and the figures
    (``elapsed 7.214 ms of 5 ms, cpu 412 us of 500 us, memory 1,100 B of 1,048,576 B``)."""
    if event.event_type == "quota_exhausted":
        return (f"quota exhausted: {event.rule_type.value} rule {event.rule_id} "
                f"flow {event.flow_key!r} ({event.outcome})")
    if getattr(event, "event_type", "constraint_violation") != "constraint_violation":
        from .rules import describe

        line = describe(event)
        if line is not None:
            return line
    kinds = "+".join(v.name for v in event.violations)
    flags = event.outcome + (", interrupted" if event.interrupted else "")
    head = (f"constraint violation: {event.rule_type.value} rule {event.rule_id} "
            f"{kinds} ({flags})")
    stats = event.stats
    if stats is None:
        return head
    max_ms, cpu_us, mem = _limits(getattr(event, "constraints", None))

    def of(limit: Optional[int], unit: str) -> str:
        return "" if limit is None else f" of {limit:,} {unit}"

    cpu = f"{stats.cpu_time_us:,} us"
    if not stats.cpu_time_measured:
        cpu = f"<= {cpu} (wall-time bound)"
    return (f"{head}: elapsed {stats.elapsed_ns / 1e6:.3f} ms{of(max_ms, 'ms')}, "
            f"cpu {cpu}{of(cpu_us, 'us')}, "
            f"memory {stats.memory_used_bytes:,} B{of(mem, 'B')}")


# ------------------------------------------------------------------ the default sink

class _Window:
    """One rule id's current rate-limit window."""

    __slots__ = ("start", "logged", "suppressed", "rule_type", "rule_id")

    def __init__(self, start: float, rule_type: str, rule_id: Optional[str]) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0
        self.rule_type = rule_type
        self.rule_id = rule_id


class _SinkState:
    """What AuditLogSink keeps; separate so that the exit-time flush holds no
    reference to the sink itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.windows: Dict[Tuple[str, Optional[str]], _Window] = {}
        self.pending = 0          # windows holding suppressed events not yet summarised
        self.next_due = math.inf  # when the earliest of those windows ends
        self.logged = 0
        self.suppressed = 0
        self.summaries = 0


# Rate-limit windows kept at most (one per rule id); past that, windows that
# have ended are dropped, and if every one is still open new rule ids share one.
_MAX_WINDOWS = 10_000


class AuditLogSink:
    """The default audit sink: one log line per violated call, rate-limited.

    ``AuditLogSink(rate_per_s=10, *, logger="fastpath.audit", level=logging.WARNING)``

    * Each event is a line with the figures in the message (elapsed, CPU,
      memory, each with its limit) and the same fields in ``extra=`` for
      structured handlers (see ``AuditEvent.as_log_extra``).
    * **Rate limit**: per (rule type, rule id), at most ``rate_per_s`` events
      are written in each window of ``max(1, 1 / rate_per_s)`` seconds (so
      ``rate_per_s=0.2`` writes one event per 5 s); the others are counted,
      and one summary line (``suppressed 990 constraint violation events of
      fast rule deny-ua in the last 1.0 s``) is written when the window has
      ended: with the next event of any rule, or at ``flush()`` (called at
      interpreter exit too).  ``None`` or ``math.inf``: no limit; ``0``:
      summary lines only.
    * ``logged``, ``suppressed`` and ``summaries`` count what it did.

    Thread-safe; the logger is called outside its lock.
    """

    def __init__(self, rate_per_s: Optional[float] = 10.0, *,
                 logger: Optional[str | logging.Logger] = None,
                 level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = check_rate("audit_rate_per_s", rate_per_s)
        if logger is None:
            logger = "fastpath.audit"
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        if not isinstance(logger, logging.Logger):
            raise InvalidConfiguration(f"logger must be a logger or its name, got {logger!r}")
        if isinstance(level, bool) or not isinstance(level, int):
            raise InvalidConfiguration(f"level must be a logging level (int), got {level!r}")
        self.logger = logger
        self.level = level
        self._clock = clock
        rate = self.rate_per_s
        self._window_s = 1.0 if rate >= 1.0 or rate == 0 else 1.0 / rate
        self._per_window = math.inf if math.isinf(rate) else math.floor(rate * self._window_s)
        self._state = _SinkState()
        weakref.finalize(self, _flush_state, self._state, logger, level, self._window_s,
                         self.rate_per_s, None)

    @property
    def logged(self) -> int:
        """Events written as their own line."""
        return self._state.logged

    @property
    def suppressed(self) -> int:
        """Events left out by the rate limit (each was still counted)."""
        return self._state.suppressed

    @property
    def summaries(self) -> int:
        """Summary lines written."""
        return self._state.summaries

    def __call__(self, event: Any) -> None:
        state = self._state
        log_it = True
        due: List[_Window] = []
        if not math.isinf(self.rate_per_s):
            now = self._clock()
            key = (event.rule_type.value, event.rule_id)
            with state.lock:
                if state.pending and now >= state.next_due:
                    due = _take_due(state, now, self._window_s)
                window = state.windows.get(key)
                if window is not None and now - window.start >= self._window_s:
                    window = None                  # ended (and summarised above, if due)
                if window is None:
                    if len(state.windows) >= _MAX_WINDOWS:
                        _evict(state, now, self._window_s)
                    if len(state.windows) >= _MAX_WINDOWS:
                        key = (event.rule_type.value, OTHER_RULE_ID)
                        window = state.windows.get(key)
                    if window is None:
                        window = _Window(now, key[0], key[1])
                        state.windows[key] = window
                if window.logged < self._per_window:
                    window.logged += 1
                    state.logged += 1
                else:
                    log_it = False
                    if not window.suppressed:
                        state.pending += 1
                        state.next_due = min(state.next_due, window.start + self._window_s)
                    window.suppressed += 1
                    state.suppressed += 1
        else:
            with state.lock:
                state.logged += 1
        for window in due:
            _summarise(state, self.logger, self.level, window, self._window_s, self.rate_per_s)
        if log_it:
            self.logger.log(self.level, "%s", describe_event(event), extra=event.as_log_extra())

    def flush(self) -> None:
        """Write the summary line of every window that holds suppressed events,
        ended or not."""
        _flush_state(self._state, self.logger, self.level, self._window_s, self.rate_per_s,
                     self._clock())

    def __repr__(self) -> str:
        return (f"<AuditLogSink rate_per_s={self.rate_per_s:g} logger={self.logger.name!r} "
                f"logged={self.logged} suppressed={self.suppressed}>")


def _detach(state: _SinkState, window: _Window) -> _Window:
    """A copy of the window's summary figures; the window's count restarts."""
    copy = _Window(window.start, window.rule_type, window.rule_id)
    copy.logged, copy.suppressed = window.logged, window.suppressed
    window.suppressed = 0
    state.pending -= 1
    return copy


def _take_due(state: _SinkState, now: Optional[float], window_s: float) -> List[_Window]:
    """Windows with suppressed events that have ended (every one when now is None).
    Runs only once the earliest of them has ended (``state.next_due``)."""
    due = []
    next_due = math.inf
    for key, window in list(state.windows.items()):
        if not window.suppressed:
            continue
        if now is None or now - window.start >= window_s:
            due.append(_detach(state, window))
            del state.windows[key]
        else:
            next_due = min(next_due, window.start + window_s)
    state.next_due = next_due
    return due


def _evict(state: _SinkState, now: float, window_s: float) -> None:
    for key, window in list(state.windows.items()):
        if not window.suppressed and now - window.start >= window_s:
            del state.windows[key]


def _summarise(state: _SinkState, logger: logging.Logger, level: int, window: _Window,
               window_s: float, rate: float) -> None:
    with state.lock:
        state.summaries += 1
    logger.log(
        level,
        "suppressed %d constraint violation events of %s rule %s in the last %.1f s "
        "(audit_rate_per_s=%g; %d logged)",
        window.suppressed, window.rule_type, window.rule_id, window_s, rate, window.logged,
        extra={"event_type": "audit_suppressed", "rule_type": window.rule_type,
               "rule_id": window.rule_id, "suppressed": window.suppressed,
               "logged": window.logged, "window_s": window_s},
    )


def _flush_state(state: _SinkState, logger: logging.Logger, level: int, window_s: float,
                 rate: float, now: Optional[float]) -> None:
    with state.lock:
        due = _take_due(state, None, window_s)
    for window in due:
        _summarise(state, logger, level, window, window_s, rate)


# ------------------------------------------------------------------ per-rule-id counts

#: Rule ids counted separately at most; later ones are counted under OTHER_RULE_ID.
MAX_RULE_IDS = 1000


class RuleAuditCounts:
    """Audited (violated) calls per (rule type, rule id): events, outcomes, kinds.

    The first ``max_rule_ids`` rule ids seen are counted separately; later ones
    together under ``OTHER_RULE_ID`` (a rule id keeps its own counts once it
    has them, so every series stays monotonic).  Thread-safe.
    """

    def __init__(self, max_rule_ids: int = MAX_RULE_IDS) -> None:
        if isinstance(max_rule_ids, bool) or not isinstance(max_rule_ids, int) \
                or max_rule_ids < 0:
            raise InvalidConfiguration(f"max_rule_ids must be an int >= 0, got {max_rule_ids!r}")
        self.max_rule_ids = max_rule_ids
        self._lock = threading.Lock()
        # (rule type, rule id) -> [events, deny, fallback, error, timeout, memory, cpu]
        self._rows: Dict[Tuple[Any, str], List[int]] = {}
        self._named = 0
        self.events = 0

    def record(self, event: Any) -> None:
        key = (event.rule_type, event.rule_id)
        with self._lock:
            self.events += 1
            row = self._rows.get(key)
            if row is None:
                if self._named >= self.max_rule_ids:
                    key = (event.rule_type, OTHER_RULE_ID)
                    row = self._rows.get(key)
                else:
                    self._named += 1
                if row is None:
                    row = self._rows[key] = [0] * 7
            row[0] += 1
            row[1 + AUDIT_OUTCOMES.index(event.outcome)] += 1
            for kind in event.violations:
                row[4 + _KIND_INDEX[int(kind)]] += 1

    def rows(self) -> List[Tuple[Any, str, int, Dict[str, int],
                                 Dict[ConstraintViolationType, int]]]:
        """A snapshot, first seen first: (rule type, rule id, events, {outcome: n},
        {kind: n})."""
        with self._lock:
            items = [(k, list(v)) for k, v in self._rows.items()]
        return [(rule_type, rule_id, row[0], dict(zip(AUDIT_OUTCOMES, row[1:4], strict=True)),
                 dict(zip(AUDITED_KINDS, row[4:7], strict=True)))
                for (rule_type, rule_id), row in items]

    def reset(self) -> None:
        with self._lock:
            self._rows.clear()
            self._named = 0
            self.events = 0
