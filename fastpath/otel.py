"""OpenTelemetry: spans for rule calls and observable instruments for the counters.

    from fastpath.otel import instrument

    instrumentation = instrument(enforcer)                 # spans for violated calls
    instrumentation = instrument(enforcer, spans="all")    # a span for every call
    instrumentation.uninstrument()

* ``spans="violations"`` (the default) adds nothing to a call that stays within
  its limits: the span is made from the audit event, after the call, which
  only violated calls produce.  Its start and end are the call's (from the
  event's time and its measured elapsed time) and its parent is the caller's
  current span.
* ``spans="all"`` wraps the enforcer's ``execute_with_constraints``,
  ``_execute_as`` and ``_run_async_state`` in wrappers that start a span around
  each call and make it current while the rule runs (spans the rule starts are
  its children; for a coroutine, in its task across its awaits), and points the
  ``@enforcer.constrained`` functions' wrappers at them.  That covers
  ``execute_async``, registered rules' ``run_for`` / ``run_async`` and
  decorated registered rule ids; registered ``Rule`` objects called directly
  (``rule(fn)``) are switched to go through ``_execute_as`` while
  instrumented, then straight into the core again.  That costs what the
  OpenTelemetry SDK costs per span (see the README's "Observability").
* ``spans="none"``: only the observable instruments.
* The instruments are observable (asynchronous): the SDK reads the enforcer's
  counters when it collects, never on the per-call path.

Needs ``opentelemetry-api`` (and an SDK to record anything): ``pip install
fastpath[otel]``.  ``import fastpath`` never imports this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional

from opentelemetry import context as _context
from opentelemetry import metrics as _metrics
from opentelemetry import trace as _trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from .audit import AUDIT_OUTCOMES, OTHER_RULE_ID, limit_fields
from .enforcer import _name_of
from .errors import ConstraintViolation, InvalidConfiguration, ResourceExhausted
from .rules import COUNTER_NAMES

__all__ = ["instrument", "Instrumentation", "SPAN_NAME"]

SPAN_NAME = "fastpath.rule"
SPAN_MODES = ("violations", "all", "none")

# Attribute names (OpenTelemetry semantic-convention style: a namespace,
# dot-separated, snake_case).
RULE_ID = "fastpath.rule.id"
RULE_TYPE = "fastpath.rule.type"
OUTCOME = "fastpath.outcome"
VIOLATIONS = "fastpath.violations"
ELAPSED_NS = "fastpath.elapsed_ns"
CPU_TIME_US = "fastpath.cpu_time_us"
CPU_TIME_MEASURED = "fastpath.cpu_time_measured"
MEMORY_USED_BYTES = "fastpath.memory_used_bytes"
INTERRUPTED = "fastpath.interrupted"
ATTEMPTS = "fastpath.attempts"
VIOLATION_KIND = "fastpath.violation.kind"
ERROR_TYPE = "error.type"

REFUSED = "fastpath.refused"

#: The enforcer methods spans="all" shadows with instance attributes.
_WRAPPED = ("execute_with_constraints", "_execute_as", "_run_async_state")

_instrumented: Dict[int, "Instrumentation"] = {}
_instrumented_lock = threading.Lock()


def _version() -> str:
    from . import __version__

    return __version__


class Instrumentation:
    """What ``instrument()`` set up on one enforcer; ``uninstrument()`` undoes it."""

    def __init__(self, enforcer: Any, spans: str, tracer: Any, meter: Any,
                 max_rule_ids: int) -> None:
        self.enforcer = enforcer
        self.spans = spans
        self.tracer = tracer
        self.meter = meter
        self.max_rule_ids = max_rule_ids
        self.active = True
        # [span, audited] of the call now running in this context (spans="all"):
        # the audit hook annotates that span instead of starting a second one.
        self._current: contextvars.ContextVar[Optional[List[Any]]] = contextvars.ContextVar(
            "fastpath_otel_span", default=None)
        self._hook: Optional[Callable[[Any], None]] = None

    # -- spans --------------------------------------------------------------------
    def _on_audit(self, event: Any) -> None:
        """The audit hook: runs in the caller's context right after a violated call."""
        stats = event.stats
        attributes = _event_attributes(event)
        running = self._current.get()
        if running is not None:                     # spans="all": the call's own span
            running[0].set_attributes(attributes)
            running[1] = True
            _set_status(running[0], event.outcome, event)
            return
        end_ns = int(event.timestamp.timestamp() * 1e9)
        start_ns = end_ns - (stats.elapsed_ns if stats is not None else 0)
        span = self.tracer.start_span(SPAN_NAME, kind=SpanKind.INTERNAL,
                                      attributes=attributes, start_time=start_ns)
        _set_status(span, event.outcome, event)
        span.end(end_time=end_ns)

    def _wrap(self, execute_as: Callable[..., Any]) -> Callable[..., Any]:
        """``_execute_as`` (and through it ``execute_with_constraints``, the
        ``@constrained`` wrappers and ``rule.run_for``) with a span per call."""
        inst = self

        def traced_execute_as(rule_type: Any, rule_id: Any, fn: Any, /, *args: Any,
                              **kwargs: Any) -> Any:
            with _TracedCall(inst, rule_type, rule_id, fn) as call:
                return execute_as(rule_type, call.rule_id, call.run, *args, **kwargs)

        return traced_execute_as

    def _wrap_async(self, run_async_state: Callable[..., Any]) -> Callable[..., Any]:
        """``_run_async_state`` (``execute_async``, ``rule.run_async``, async
        ``@constrained`` functions) with a span per call, current in the task
        while the coroutine runs."""
        inst = self

        async def traced_run_async_state(rule: Any, rule_id: Any, fn: Any, args: Any,
                                         kwargs: Any) -> Any:
            with _TracedCall(inst, rule, rule_id, fn) as call:
                return await run_async_state(rule, call.rule_id, call.run, args, kwargs)

        return traced_run_async_state

    # -- what the instruments read (at collection time) ---------------------------
    def _calls(self) -> Iterable[Observation]:
        for rule_type, m in self.enforcer.metrics().items():
            violated = m["fail_open"] + m["fail_closed"] + m["errors"]
            for outcome, value in (("ok", max(0, m["executed"] - violated)),
                                   ("sampled_out", m["sampled_out"]),
                                   ("fallback", m["fail_open"]), ("deny", m["fail_closed"]),
                                   ("error", m["errors"])):
                yield Observation(value, {RULE_TYPE: rule_type.value, OUTCOME: outcome})

    def _violations(self) -> Iterable[Observation]:
        for rule_type, m in self.enforcer.metrics().items():
            for kind, value in m["violations"].items():
                yield Observation(value, {RULE_TYPE: rule_type.value,
                                          VIOLATION_KIND: kind.name.lower()})

    def _retries(self) -> Iterable[Observation]:
        for rule_type, m in self.enforcer.metrics().items():
            yield Observation(m["retries"], {RULE_TYPE: rule_type.value})

    def _rule_calls(self) -> Iterable[Observation]:
        named = 0
        for rule_type, per_id in self.enforcer.audit_metrics()["rules"].items():
            for rule_id, row in per_id.items():
                if rule_id != OTHER_RULE_ID and named < self.max_rule_ids:
                    named += 1
                else:
                    rule_id = OTHER_RULE_ID
                for outcome in AUDIT_OUTCOMES:
                    yield Observation(row["outcomes"][outcome], {
                        RULE_ID: str(rule_id), RULE_TYPE: rule_type.value, OUTCOME: outcome})

    def _audit_events(self) -> Iterable[Observation]:
        yield Observation(self.enforcer.audit_metrics()["events"])

    def _audit_suppressed(self) -> Iterable[Observation]:
        suppressed = self.enforcer.audit_metrics()["suppressed"]
        if suppressed is not None:
            yield Observation(suppressed)

    # -- undo -----------------------------------------------------------------------
    def uninstrument(self) -> None:
        """Remove the hook and the wrappers; the instruments then report nothing
        (OpenTelemetry has no way to remove an instrument from a meter)."""
        if not self.active:
            return
        self.active = False
        enforcer = self.enforcer
        if self._hook is not None:
            enforcer._audit_hooks = tuple(h for h in enforcer._audit_hooks if h is not self._hook)
        for name in _WRAPPED:
            enforcer.__dict__.pop(name, None)
        _rebind_decorated(enforcer, enforcer._execute_as)
        if self.spans == "all":
            _trace_rule_calls(enforcer, False)
        with _instrumented_lock:
            _instrumented.pop(id(enforcer), None)
            state = _meters.get(id(self.meter))
            if state is not None and self in state.instrumentations:
                state.instrumentations.remove(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<fastpath.otel.Instrumentation spans={self.spans!r} {state}>"


class _TracedCall:
    """One call under spans="all": its span, current while the rule runs; the
    counting wrapper given to the pipeline as fn (attempts, and whether fn ran
    at all); the outcome when no audit event said what happened."""

    __slots__ = ("inst", "state", "rule_id", "fn", "attempts", "running", "before", "token")

    def __init__(self, inst: Instrumentation, rule_type: Any, rule_id: Any, fn: Any) -> None:
        # A RuleType or a registered rule's state; a bad rule type raises here,
        # as the call itself would.
        self.state = state = inst.enforcer._rule_state(rule_type)
        self.inst = inst
        self.rule_id = rule_id if rule_id is not None else _name_of(fn)
        self.fn = fn
        self.attempts = 0
        # A rule with a breaker: the counts that tell a refused call from a
        # sampled-out one (neither runs fn nor makes an audit event).
        self.before = None if state.breaker is None else _not_run_counts(state)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        return self.fn(*args, **kwargs)

    def __enter__(self) -> "_TracedCall":
        span = self.inst.tracer.start_span(
            SPAN_NAME, kind=SpanKind.INTERNAL,
            attributes={RULE_ID: str(self.rule_id), RULE_TYPE: self.state.key.value})
        self.running = [span, False]
        self.token = (_context.attach(_trace.set_span_in_context(span)),
                      self.inst._current.set(self.running))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        otel_token, running_token = self.token
        self.inst._current.reset(running_token)
        _context.detach(otel_token)
        span, audited = self.running
        try:
            span.set_attribute(ATTEMPTS, self.attempts)
            if exc is None:
                if not audited:
                    self._returned(span)
            elif isinstance(exc, asyncio.CancelledError):
                if not audited:             # cancelled from outside: not the rule's error
                    span.set_attribute(OUTCOME, "cancelled")
            else:
                if not isinstance(exc, ConstraintViolation):
                    span.record_exception(exc)
                if not audited:
                    self._raised(span, exc)
        finally:
            span.end()

    def _returned(self, span: Any) -> None:
        if self.attempts:
            span.set_attribute(OUTCOME, "ok")
            return
        if self.before is None:
            span.set_attribute(OUTCOME, "sampled_out")
            return
        refused, sampled_out = (now - then for now, then in zip(
            _not_run_counts(self.state), self.before, strict=True))
        if not refused:
            span.set_attribute(OUTCOME, "sampled_out")
        elif not sampled_out:                 # the breaker refused it, fail open
            span.set_attributes({OUTCOME: "fallback", REFUSED: "breaker"})
        else:
            # Calls of the same rule in other threads were refused and sampled
            # out meanwhile: this one was one or the other.
            span.set_attribute(OUTCOME, "not_run")

    def _raised(self, span: Any, exc: BaseException) -> None:
        if not self.attempts and self.before is not None and isinstance(exc, ResourceExhausted):
            span.set_attributes({OUTCOME: "deny", REFUSED: "breaker"})
        else:                               # fn's own error, no violation
            span.set_attribute(OUTCOME, "error")
        _set_status(span, "error", exc)


def _not_run_counts(state: Any) -> tuple[int, int]:
    """(calls its breaker refused, calls sampled out) of a rule's state."""
    return state.refused_calls, state.counters()[_SAMPLED_OUT_INDEX]


_SAMPLED_OUT_INDEX = COUNTER_NAMES.index("sampled_out")


def instrument(enforcer: Any, *, tracer_provider: Any = None, meter_provider: Any = None,
               spans: str = "violations", max_rule_ids: int = 100) -> Instrumentation:
    """Trace and meter one ``ConstraintEnforcer`` (see the module's docstring).

    ``tracer_provider`` / ``meter_provider`` default to the global ones.
    ``max_rule_ids`` caps the ``fastpath.rule.id`` values of the per-rule
    instrument (later ids are reported as ``"__other__"``).  Instrumenting an
    enforcer twice raises ``InvalidConfiguration``: ``uninstrument()`` first.
    """
    if spans not in SPAN_MODES:
        raise InvalidConfiguration(
            f"spans must be one of {', '.join(map(repr, SPAN_MODES))}, got {spans!r}")
    if not hasattr(enforcer, "_audit_hooks") or not callable(getattr(enforcer, "_execute_as",
                                                                     None)):
        raise InvalidConfiguration(f"instrument() needs a ConstraintEnforcer, got {enforcer!r}")
    if isinstance(max_rule_ids, bool) or not isinstance(max_rule_ids, int) or max_rule_ids < 0:
        raise InvalidConfiguration(f"max_rule_ids must be an int >= 0, got {max_rule_ids!r}")
    with _instrumented_lock:
        if id(enforcer) in _instrumented:
            raise InvalidConfiguration(
                f"{enforcer!r} is already instrumented: call uninstrument() first")
        tracer = _trace.get_tracer("fastpath", _version(), tracer_provider=tracer_provider)
        meter = _metrics.get_meter("fastpath", _version(), meter_provider=meter_provider)
        inst = Instrumentation(enforcer, spans, tracer, meter, max_rule_ids)
        _instrumented[id(enforcer)] = inst
    if spans != "none":
        inst._hook = inst._on_audit
        enforcer._audit_hooks = enforcer._audit_hooks + (inst._hook,)
    if spans == "all":
        execute_as = enforcer._execute_as       # the class's, bound
        traced = inst._wrap(execute_as)

        def traced_execute(rule_type: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            return traced(rule_type, None, fn, *args, **kwargs)

        # Instance attributes shadow the class's fastcall methods for this
        # enforcer only; uninstrument() deletes them again.
        enforcer.execute_with_constraints = traced_execute
        enforcer._execute_as = traced
        enforcer._run_async_state = inst._wrap_async(enforcer._run_async_state)
        _rebind_decorated(enforcer, traced)
        _trace_rule_calls(enforcer, True)
    with _instrumented_lock:
        state = _meters.get(id(meter))
        if state is None:
            state = _meters[id(meter)] = _MeterState(meter)
        state.instrumentations.append(inst)
    return inst


#: What the instruments observe: (name, unit, description, Instrumentation method).
_INSTRUMENTS = (
    ("fastpath.calls", "{call}",
     "Calls by rule type and outcome (ok, sampled_out, fallback, deny, error).", "_calls"),
    ("fastpath.violations", "{violation}",
     "Violations by rule type and kind (sampled_out: calls skipped by sampling).", "_violations"),
    ("fastpath.retries", "{retry}", "Transient-error retries started.", "_retries"),
    ("fastpath.rule.violated_calls", "{call}",
     "Violated (audited) calls per rule id and outcome.", "_rule_calls"),
    ("fastpath.audit.events", "{event}",
     "Audit events (violated calls), whatever the sink did with them.", "_audit_events"),
    ("fastpath.audit.suppressed", "{event}",
     "Audit events the default sink's rate limit did not write as a line.",
     "_audit_suppressed"),
)


class _MeterState:
    """One set of observable counters per meter, shared by every enforcer
    instrumented with it (OpenTelemetry keeps the first instrument of a name, so
    a second set would never be read).  Figures of several enforcers with the
    same attributes are added up."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter               # held, so that id(meter) stays its key
        self.instrumentations: List[Instrumentation] = []
        self.instruments = [
            meter.create_observable_counter(name, callbacks=[self._callback(method)],
                                            unit=unit, description=description)
            for name, unit, description, method in _INSTRUMENTS]

    def _callback(self, method: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            totals: Dict[tuple[tuple[str, Any], ...], int] = {}
            with _instrumented_lock:
                active = list(self.instrumentations)
            for inst in active:
                for obs in getattr(inst, method)():
                    key = tuple(sorted((obs.attributes or {}).items()))
                    totals[key] = totals.get(key, 0) + int(obs.value)
            return [Observation(value, dict(key)) for key, value in totals.items()]
        return callback


_meters: Dict[int, _MeterState] = {}


def _trace_rule_calls(enforcer: Any, on: bool) -> None:
    """Route direct calls of the enforcer's registered rules (``rule(fn)``)
    through its ``_execute_as`` (on), or straight into the core again (off);
    rules registered later follow ``_trace_rule_calls``."""
    with enforcer._registry_lock:
        enforcer._trace_rule_calls = on
        for rule in enforcer._registry.values():
            rule._trace_calls(on)


def _rebind_decorated(enforcer: Any, execute_as: Callable[..., Any]) -> None:
    """Point the ``execute_as`` cell of every ``@enforcer.constrained`` wrapper
    (decorated before or after instrument) at ``execute_as``: nothing is looked
    up per call, so an uninstrumented wrapper costs what it always did."""
    for wrapper in list(enforcer._decorated):
        cell = wrapper.__closure__[wrapper.__code__.co_freevars.index("execute_as")]
        cell.cell_contents = execute_as


def _event_attributes(event: Any) -> Dict[str, Any]:
    stats = event.stats
    attributes: Dict[str, Any] = {
        RULE_ID: str(event.rule_id),
        RULE_TYPE: event.rule_type.value,
        OUTCOME: event.outcome,
        VIOLATIONS: [v.name.lower() for v in event.violations],
        INTERRUPTED: bool(event.interrupted),
    }
    if stats is not None:
        attributes[ELAPSED_NS] = stats.elapsed_ns
        attributes[CPU_TIME_US] = stats.cpu_time_us
        attributes[CPU_TIME_MEASURED] = bool(stats.cpu_time_measured)
        attributes[MEMORY_USED_BYTES] = stats.memory_used_bytes
    for name, value in limit_fields(event.constraints).items():
        if value is not None:
            attributes[f"fastpath.limit.{name}"] = value
    if event.event_type == "quota_exhausted":
        attributes[REFUSED] = "quota"
    return attributes


def _set_status(span: Any, outcome: str, cause: Any) -> None:
    """ERROR for a deny or an error; a fallback is a handled outcome (status UNSET).

    ``cause`` is fn's exception (spans="all") or the audit event."""
    if outcome == "fallback":
        return
    if isinstance(cause, BaseException):
        span.set_attribute(ERROR_TYPE, type(cause).__qualname__)
        span.set_status(Status(StatusCode.ERROR, f"{type(cause).__name__}: {cause}"))
        return
    if cause.event_type == "quota_exhausted":      # outcome "deny": ResourceExhausted
        span.set_attribute(ERROR_TYPE, "ResourceExhausted")
        span.set_status(Status(StatusCode.ERROR, "quota exhausted (deny)"))
        return
    kinds = "+".join(v.name for v in cause.violations)
    if outcome == "deny":
        span.set_attribute(ERROR_TYPE, "ConstraintViolation")
        span.set_status(Status(StatusCode.ERROR, f"constraint violation: {kinds} (deny)"))
    else:       # "error": the rule overran and raised; its exception propagated
        span.set_status(Status(StatusCode.ERROR,
                               f"constraint violation: {kinds}, and the rule raised"))
