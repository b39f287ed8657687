"""ConstraintEnforcer: the rule-evaluation pipeline, failure policy, audit, metrics.

The per-call work (sampling, budget, run, transient retries, the failure policy
and the counters) is one call into the compiled core: ``execute_with_constraints``
is inherited from ``_EnforcerCore``.  This module holds what is not per call:
validating the configuration, building audit events, shaping metrics, the
decorator.  The default audit sink and the per-rule-id counts are in
``fastpath/audit.py``; ``from_config`` is in ``fastpath/config.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

from . import _config
from ._impl import core as _core
from .audit import AuditLogSink, RuleAuditCounts, check_rate, describe_event, limit_fields
from .errors import ConstraintViolation, ConstraintViolationType, InvalidConfiguration

__all__ = ["AuditEvent", "ConstraintEnforcer", "RuleType"]

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E", bound="_EnforcerAPI")

audit_logger = logging.getLogger("fastpath.audit")
_logger = logging.getLogger("fastpath")


class RuleType(enum.Enum):
    """The four kinds of rule a rule engine runs, each with its own profile."""

    FAST = "fast"
    SEMANTIC = "semantic"
    WASM_HOOK = "wasm_hook"
    OBSERVATIONAL = "observational"

    def __repr__(self) -> str:
        return f"RuleType.{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    """One violated call, as handed to the audit sink.

    ``outcome`` is ``"deny"`` (fail closed: ConstraintViolation raised),
    ``"fallback"`` (fail open: the rule type's fallback returned) or ``"error"``
    (the call also raised its own exception, which propagated).
    """

    event_type: str
    rule_type: RuleType
    rule_id: Optional[str]
    violations: Tuple[ConstraintViolationType, ...]
    stats: Any
    timestamp: _dt.datetime
    outcome: str
    interrupted: bool
    #: The ExecutionConstraints the call ran under (its limits), or None.
    constraints: Any = None

    def as_log_extra(self) -> Dict[str, Any]:
        """The fields as a flat dict for ``logging``'s ``extra=``."""
        return {
            "event_type": self.event_type,
            "rule_type": self.rule_type.value,
            "rule_id": self.rule_id,
            "violations": [v.name for v in self.violations],
            "outcome": self.outcome,
            "interrupted": self.interrupted,
            "elapsed_ns": None if self.stats is None else self.stats.elapsed_ns,
            "memory_used_bytes": None if self.stats is None else self.stats.memory_used_bytes,
            "cpu_time_us": None if self.stats is None else self.stats.cpu_time_us,
            "audit_timestamp": self.timestamp.isoformat(),
            **limit_fields(self.constraints),
        }


def log_audit_event(event: AuditEvent) -> None:
    """An audit sink that logs every event to ``fastpath.audit`` at WARNING,
    without a rate limit (the default sink is ``fastpath.audit.AuditLogSink``)."""
    audit_logger.warning("%s", describe_event(event), extra=event.as_log_extra())


_RULE_ORDER = (RuleType.FAST, RuleType.SEMANTIC, RuleType.WASM_HOOK, RuleType.OBSERVATIONAL)
_DEFAULT_TRANSIENT: Tuple[Type[Exception], ...] = (ConnectionError, TimeoutError)
_COUNTER_NAMES = ("calls", "executed", "sampled_out", "fail_open", "fail_closed", "errors",
                  "retries")


def _default_profiles(constraints_cls: Any) -> Dict[RuleType, Any]:
    return {
        RuleType.FAST: constraints_cls.fast_rule(),
        RuleType.SEMANTIC: constraints_cls.semantic_rule(),
        RuleType.WASM_HOOK: constraints_cls.wasm_hook(10),
        RuleType.OBSERVATIONAL: constraints_cls.observational(1.0),
    }


class _EnforcerAPI:
    """The Python-facing half of ConstraintEnforcer (the core holds the other)."""


    # The core this enforcer runs on, and its ExecutionConstraints class.
    _core_module: Any = _core
    _constraints_class: Any = _core.ExecutionConstraints
    _audit_sink: Callable[[AuditEvent], Any]
    _rule_state: Callable[[RuleType], Any]
    _core_setup: Callable[..., None]
    _execute_as: Callable[..., Any]

    def __init__(
        self,
        *,
        audit_sink: Optional[Callable[[AuditEvent], Any]] = None,
        fallbacks: Optional[Mapping[RuleType, Any]] = None,
        transient_errors: Tuple[Type[BaseException], ...] = _DEFAULT_TRANSIENT,
        preempt: bool = True,
        audit_rate_per_s: Optional[float] = 10.0,
    ) -> None:
        if audit_sink is not None and not callable(audit_sink):
            raise InvalidConfiguration(f"audit_sink must be callable or None, got {audit_sink!r}")
        if audit_sink is None:
            audit_sink = AuditLogSink(audit_rate_per_s)
        else:
            check_rate("audit_rate_per_s", audit_rate_per_s)   # applies to the default sink
        self._audit_sink = audit_sink
        self._audit_counts = RuleAuditCounts()
        # Called with each AuditEvent before the sink (fastpath.otel's spans).
        self._audit_hooks: Tuple[Callable[[AuditEvent], Any], ...] = ()
        # The wrappers made by constrained() (see fastpath.otel).
        self._decorated: "weakref.WeakSet[Callable[..., Any]]" = weakref.WeakSet()
        self._fallbacks = _check_fallbacks(fallbacks)
        self._transient = _check_transient(transient_errors)
        self._preempt = _config.check_bool("preempt", preempt)
        self._audit_failures = 0
        self._audit_failure_lock = threading.Lock()
        self._configure(_default_profiles(self._constraints_class))

    __init__.__qualname__ = "ConstraintEnforcer"   # wrong arguments name ConstraintEnforcer()

    @classmethod
    def with_constraints(
        cls: Type[E],
        fast: Any,
        semantic: Any,
        wasm_hook: Any,
        observational: Any,
        **kwargs: Any,
    ) -> E:
        """An enforcer with four custom profiles (keywords as for the constructor)."""
        given = {RuleType.FAST: fast, RuleType.SEMANTIC: semantic,
                 RuleType.WASM_HOOK: wasm_hook, RuleType.OBSERVATIONAL: observational}
        for rule_type, value in given.items():
            if type(value) is not cls._constraints_class:
                raise InvalidConfiguration(
                    f"{rule_type.value} must be an ExecutionConstraints, got {value!r}"
                )
        enforcer = cls(**kwargs)
        enforcer._configure(given)
        return enforcer

    @classmethod
    def from_config(cls: Type[E], source: Union[Mapping[str, Any], str, "os.PathLike[str]"]
                    ) -> E:
        """An enforcer from a mapping or a TOML file (see the README's "Configuration").

        Unknown keys and bad values raise ``InvalidConfiguration`` naming the
        key path and the value.
        """
        from .config import load_config

        return load_config(source).build(cls)  # type: ignore[no-any-return]

    def _configure(self, profiles: Mapping[RuleType, Any]) -> None:
        rules = tuple(
            self._core_module._RuleState(
                rule_type,
                profiles[rule_type],
                self._fallbacks.get(rule_type),
                self._preempt and rule_type is not RuleType.OBSERVATIONAL,
            )
            for rule_type in _RULE_ORDER
        )
        self._core_setup(rules, self._transient, time.sleep)

    def constraints_for(self, rule_type: RuleType) -> Any:
        """The ExecutionConstraints used for ``rule_type``."""
        return self._rule_state(rule_type).constraints

    # execute_with_constraints(rule_type, fn, /, *args, **kwargs) is inherited
    # from the compiled core.

    def constrained(self, rule_type: RuleType, *, rule_id: Optional[str] = None
                    ) -> Callable[[F], F]:
        """Decorator: every call of the function runs under ``rule_type``.

        ``rule_id`` (default: the function's qualified name) is carried into
        audit events.  The wrapper keeps ``__name__``, ``__doc__`` and
        ``__wrapped__``.
        """
        self._rule_state(rule_type)  # validate now, not at the first call
        if rule_id is not None and not isinstance(rule_id, str):
            raise InvalidConfiguration(f"rule_id must be a str or None, got {rule_id!r}")

        def decorate(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"constrained() decorates a callable, got {fn!r}")
            rid = rule_id if rule_id is not None else _name_of(fn)
            if inspect.iscoroutinefunction(fn):
                run_async = self._execute_async_as

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await run_async(rule_type, rid, fn, args, kwargs)

                return async_wrapper  # type: ignore[return-value]
            execute_as = self._execute_as

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return execute_as(rule_type, rid, fn, *args, **kwargs)

            # fastpath.otel.instrument(spans="all") rebinds the wrapper's
            # execute_as cell (a per-call attribute lookup would cost ~30 %).
            self._decorated.add(wrapper)
            return wrapper  # type: ignore[return-value]

        return decorate

    async def execute_async(self, rule_type: RuleType, fn: Callable[..., Any], /, *args: Any,
                            **kwargs: Any) -> Any:
        """``execute_with_constraints`` for coroutines: sampling, a budget whose
        coroutine steps are each armed (``enforce_async``), transient retries with
        ``asyncio.sleep`` backoff inside the budget, the failure policy, audit,
        counters and the latency histogram."""
        return await self._execute_async_as(rule_type, None, fn, args, kwargs)

    async def _execute_async_as(self, rule_type: RuleType, rule_id: Optional[str],
                                fn: Callable[..., Any], args: Tuple[Any, ...],
                                kwargs: Dict[str, Any]) -> Any:
        rule = self._rule_state(rule_type)
        budget = rule._admit()
        if budget is None:
            return rule.fallback
        attempt = 1
        while True:
            try:
                result = await budget.enforce_async(fn, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - classified by the core
                outcome = rule._settle(budget, exc, self._transient, attempt)
                if outcome == 1:
                    attempt += 1
                    if rule.backoff_s:
                        import asyncio

                        await asyncio.sleep(rule.backoff_s)
                    continue
                if outcome == 2:
                    self._audit(rule_type, rule_id, fn, exc, "deny")  # type: ignore[arg-type]
                    raise
                if outcome == 3:
                    self._audit(rule_type, rule_id, fn, exc, "fallback")  # type: ignore[arg-type]
                    return rule.fallback
                if budget.get_violations():
                    self._audit(rule_type, rule_id, fn, budget._late_violation(), "error")
                raise
            rule._settle(budget, None, self._transient, attempt)
            return result

    # -- audit (slow path: only violated calls get here) ----------------------
    def _audit(self, rule_type: RuleType, rule_id: Optional[str], fn: Any,
               violation: ConstraintViolation, outcome: str) -> None:
        event = AuditEvent(
            event_type="constraint_violation",
            rule_type=rule_type,
            rule_id=rule_id if rule_id is not None else _name_of(fn),
            violations=violation.violations,
            stats=violation.stats,
            timestamp=_dt.datetime.now(_dt.timezone.utc),
            outcome=outcome,
            interrupted=violation.interrupted,
            constraints=self._rule_state(rule_type).constraints,
        )
        self._audit_counts.record(event)
        for hook in self._audit_hooks:
            self._call_sink(hook, event)
        self._call_sink(self._audit_sink, event)

    def _call_sink(self, sink: Callable[[AuditEvent], Any], event: AuditEvent) -> None:
        try:
            sink(event)
        except Exception:  # noqa: BLE001 - a sink never changes the rule's outcome
            with self._audit_failure_lock:
                self._audit_failures += 1
                first = self._audit_failures == 1
            if first:
                _logger.exception(
                    "fastpath audit sink %r raised; later failures are counted in "
                    "ConstraintEnforcer.audit_failures, not logged", sink
                )

    @property
    def audit_failures(self) -> int:
        """How many times the audit sink raised."""
        return self._audit_failures

    @property
    def audit_sink(self) -> Callable[[AuditEvent], Any]:
        """The audit sink in use (an ``AuditLogSink`` unless one was given)."""
        return self._audit_sink

    # -- metrics ----------------------------------------------------------------
    def metrics(self, *, json: bool = False) -> Dict[Any, Dict[str, Any]]:
        """Counters per rule type (see the README's "Metrics").

        ``json=True``: the same figures with string keys (``"fast"``,
        ``"TIMEOUT_EXCEEDED"``) and plain values, ready for ``json.dumps``.
        """
        out: Dict[Any, Dict[str, Any]] = {}
        for rule_type in _RULE_ORDER:
            state = self._rule_state(rule_type)
            *counts, by_kind = state.counters()
            entry: Dict[str, Any] = dict(zip(_COUNTER_NAMES, counts, strict=True))
            kinds = [ConstraintViolationType(k) for k in by_kind]
            if json:
                entry["violations"] = {k.name: n for k, n in zip(kinds, by_kind.values(),
                                                                 strict=True)}
                entry["latency"] = dict(state.histogram.summary())
                out[rule_type.value] = entry
            else:
                entry["violations"] = dict(zip(kinds, by_kind.values(), strict=True))
                entry["latency"] = state.histogram.summary()
                out[rule_type] = entry
        return out

    def audit_metrics(self, *, json: bool = False) -> Dict[str, Any]:
        """Audited (violated) calls, per rule id, and what the sink did with them.

        ``events``: every audit event; ``sink_failures``: sink calls that
        raised; ``logged`` / ``suppressed`` / ``summaries``: lines the default
        sink wrote, events its rate limit left out, summary lines (``None``
        with a custom sink); ``rules``: ``{rule type: {rule id: {"events": n,
        "outcomes": {"deny": n, "fallback": n, "error": n}, "violations":
        {kind: n}}}}`` for the first 1,000 rule ids seen, later ones under
        ``"__other__"``.  ``json=True``: string keys throughout.
        """
        sink = self._audit_sink
        rules: Dict[Any, Dict[str, Any]] = {}
        for rule_type, rule_id, events, outcomes, kinds in self._audit_counts.rows():
            per_type = rules.setdefault(rule_type.value if json else rule_type, {})
            per_type[rule_id] = {
                "events": events,
                "outcomes": outcomes,
                "violations": {k.name: n for k, n in kinds.items()} if json else kinds,
            }
        return {
            "events": self._audit_counts.events,
            "sink_failures": self._audit_failures,
            "logged": sink.logged if isinstance(sink, AuditLogSink) else None,
            "suppressed": sink.suppressed if isinstance(sink, AuditLogSink) else None,
            "summaries": sink.summaries if isinstance(sink, AuditLogSink) else None,
            "rules": rules,
        }

    def latency_histogram(self, rule_type: RuleType) -> Any:
        """The LatencyHistogram of ``rule_type`` (live: it keeps recording)."""
        return self._rule_state(rule_type).histogram

    def reset_metrics(self) -> None:
        """Set every counter to zero and empty the latency histograms."""
        for rule_type in _RULE_ORDER:
            self._rule_state(rule_type).reset()
        self._audit_counts.reset()

    def __repr__(self) -> str:
        return f"<ConstraintEnforcer preempt={self._preempt} sink={self._audit_sink!r}>"


class ConstraintEnforcer(_EnforcerAPI, _core._EnforcerCore):  # type: ignore[misc, name-defined]
    """Runs rules under their rule type's constraints; one per service, thread-safe.

    ``ConstraintEnforcer(*, audit_sink=None, fallbacks=None,
    transient_errors=(ConnectionError, TimeoutError), preempt=True)`` uses the
    four presets: ``fast_rule()``, ``semantic_rule()``, ``wasm_hook(10)``,
    ``observational(1.0)``.

    * ``audit_sink``: a callable taking an ``AuditEvent``; default: an
      ``AuditLogSink`` writing to the ``fastpath.audit`` logger at WARNING, at
      most ``audit_rate_per_s`` events per rule id per second (``None``: no
      limit), figures in the message and fields in ``extra=``.  A sink that
      raises is reported once through the ``fastpath`` logger and never changes
      the rule's outcome.
    * ``fallbacks``: ``RuleType`` -> the value returned when a fail-open rule
      is violated or a call is sampled out (default ``None``).
    * ``transient_errors``: ``Exception`` subclasses retried up to the
      profile's ``max_retries``, ``retry_backoff_ms`` apart, inside the rule's
      one budget.
    * ``preempt``: ``False`` never interrupts a call of this enforcer (limits
      are still reported).  Observational rules are never interrupted.
    """


def _bind_enforcer(core: Any) -> type:
    """ConstraintEnforcer built on a given core (the test suite binds the twin)."""
    return type(
        "ConstraintEnforcer",
        (_EnforcerAPI, core._EnforcerCore),
        {"_core_module": core, "_constraints_class": core.ExecutionConstraints,
         "__doc__": ConstraintEnforcer.__doc__,
         "__module__": __name__},
    )


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _check_fallbacks(fallbacks: Optional[Mapping[RuleType, Any]]) -> Dict[RuleType, Any]:
    if fallbacks is None:
        return {}
    if not isinstance(fallbacks, Mapping):
        raise InvalidConfiguration(
            f"fallbacks must be a mapping RuleType -> value, got {fallbacks!r}"
        )
    for key in fallbacks:
        if not isinstance(key, RuleType):
            raise InvalidConfiguration(f"fallbacks keys must be RuleType members, got {key!r}")
    return dict(fallbacks)


def _check_transient(errors: Any) -> Tuple[Type[Exception], ...]:
    if isinstance(errors, type):
        errors = (errors,)
    if not isinstance(errors, tuple):
        raise InvalidConfiguration(
            f"transient_errors must be a tuple of Exception subclasses, got {errors!r}"
        )
    for cls in errors:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise InvalidConfiguration(
                "transient_errors must hold Exception subclasses (never BaseException), "
                f"got {cls!r}"
            )
    return errors
