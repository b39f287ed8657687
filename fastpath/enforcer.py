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
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, Literal, Mapping, Optional,
                    ParamSpec, Tuple, Type, TypeVar, Union, overload)

from . import _config, rules as _rules
from ._flow import Flow, current_flow
from ._impl import core as _core
from ._outcome import AUDIT_OUTCOME, Verdict
from .audit import AuditLogSink, RuleAuditCounts, check_rate, describe_event, limit_fields
from .errors import (
    ConstraintViolation,
    ConstraintViolationType,
    InvalidConfiguration,
    ResourceExhausted,
)

if TYPE_CHECKING:
    # mypy sees the typed twin: tests/test_parity.py keeps the compiled core's
    # names and signatures identical to it.
    from ._budget_py import ExecutionConstraints, ExecutionStats
    from ._budget_py import _EnforcerCore as _CoreBase
    from ._histogram_py import LatencyHistogram
    from .typedefs import AuditMetrics, AuditMetricsJSON, RuleMetrics, RuleMetricsJSON
else:
    _CoreBase = _core._EnforcerCore

__all__ = ["AuditEvent", "ConstraintEnforcer", "RuleType"]

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
T = TypeVar("T")
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

    ``event_type`` is ``"constraint_violation"``, or ``"quota_exhausted"`` for a
    call its quota refused (``violations`` empty, ``stats`` None, ``flow_key``
    the key charged; ``outcome`` "deny" when ResourceExhausted was raised).
    """

    event_type: str
    rule_type: RuleType
    rule_id: Optional[str]
    violations: Tuple[ConstraintViolationType, ...]
    stats: Optional[ExecutionStats]
    timestamp: _dt.datetime
    outcome: str
    interrupted: bool
    #: The ExecutionConstraints the call ran under (its limits), or None.
    constraints: Optional[ExecutionConstraints] = None
    #: circuit_state / limit_changed events: what changed (see the README).
    details: Optional[Dict[str, Any]] = None
    #: The flow key a quota charged (quota_exhausted events), or None.
    flow_key: Any = None

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
            "flow_key": None if self.flow_key is None else repr(self.flow_key),
            **limit_fields(self.constraints),
            **({} if self.details is None else {"details": self.details}),
        }


def log_audit_event(event: AuditEvent) -> None:
    """An audit sink that logs every event to ``fastpath.audit`` at WARNING,
    without a rate limit (the default sink is ``fastpath.audit.AuditLogSink``)."""
    audit_logger.warning("%s", describe_event(event), extra=event.as_log_extra())


_RULE_ORDER = (RuleType.FAST, RuleType.SEMANTIC, RuleType.WASM_HOOK, RuleType.OBSERVATIONAL)
_DEFAULT_TRANSIENT: Tuple[Type[Exception], ...] = (ConnectionError, TimeoutError)
_COUNTER_NAMES = _rules.COUNTER_NAMES


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
    _feed: Callable[..., None]

    def __init__(
        self,
        *,
        audit_sink: Optional[Callable[[AuditEvent], Any]] = None,
        fallbacks: Optional[Mapping[RuleType, Any]] = None,
        transient_errors: Tuple[Type[BaseException], ...] = _DEFAULT_TRANSIENT,
        preempt: bool = True,
        audit_rate_per_s: Optional[float] = 10.0,
        quotas: Optional[Mapping[RuleType, Any]] = None,
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
        self._registry: Dict[str, Any] = {}          # rule id -> Rule
        self._registry_lock = threading.Lock()
        self._trace_rule_calls = False   # fastpath.otel spans="all": rule(fn) via _execute_as
        self._quotas = self._check_quotas(quotas)
        self._configure(_default_profiles(self._constraints_class))

    __init__.__qualname__ = "ConstraintEnforcer"   # wrong arguments name ConstraintEnforcer()

    @classmethod
    def with_constraints(
        cls: Type[E],
        fast: ExecutionConstraints,
        semantic: ExecutionConstraints,
        wasm_hook: ExecutionConstraints,
        observational: ExecutionConstraints,
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
        for rule in rules:
            rule.quota = self._quotas.get(rule.key)
        self._core_setup(rules, self._transient, time.sleep)

    # -- quotas -------------------------------------------------------------------
    def _check_quotas(self, quotas: Optional[Mapping[RuleType, Any]]) -> Dict[RuleType, Any]:
        if quotas is None:
            return {}
        if not isinstance(quotas, Mapping):
            raise InvalidConfiguration(
                f"quotas must be a mapping RuleType -> Quota, got {quotas!r}"
            )
        for rule_type, quota in quotas.items():
            self._check_quota(rule_type, quota)
        return dict(quotas)

    def _check_quota(self, rule_type: Any, quota: Any) -> None:
        if not isinstance(rule_type, RuleType):
            raise InvalidConfiguration(f"quotas keys must be RuleType members, got {rule_type!r}")
        quota_class = self._core_module._quota_class()
        if quota is not None and type(quota) is not quota_class:
            raise InvalidConfiguration(
                f"the quota of {rule_type.value} must be a {quota_class.__module__}.Quota or "
                f"None, got {quota!r}"
            )

    def set_quota(self, rule_type: RuleType, quota: Any) -> None:
        """Admit the calls of ``rule_type`` through ``quota`` (a ``fastpath.Quota``),
        charged to the current flow key; ``None`` removes it."""
        self._check_quota(rule_type, quota)
        if quota is None:
            self._quotas.pop(rule_type, None)
        else:
            self._quotas[rule_type] = quota
        self._rule_state(rule_type).quota = quota

    def quota_for(self, rule_type: RuleType) -> Any:
        """The Quota of ``rule_type``, or None."""
        return self._rule_state(rule_type).quota

    def flow(self, key: Any) -> Flow:
        """``with enforcer.flow(key):`` / ``async with enforcer.flow(key):`` --
        calls inside the block are charged to ``key`` by their quotas (a
        contextvar: it follows asyncio tasks; blocks nest)."""
        return Flow(key)

    def _quota_refused(self, rule_type: Any, rule_id: Optional[str], fn: Any, key: Any,
                       fail_closed: bool) -> None:
        """A call its quota refused (counted by the core): audit, then raise
        ResourceExhausted (fail closed) or return (the core returns the fallback).
        ``rule_type`` is a RuleType or a registered rule's state."""
        state = self._rule_state(rule_type)
        quota = state.quota
        event = AuditEvent(
            event_type="quota_exhausted",
            rule_type=state.key,
            rule_id=rule_id if rule_id is not None else _name_of(fn),
            violations=(),
            stats=None,
            timestamp=_dt.datetime.now(_dt.timezone.utc),
            outcome="deny" if fail_closed else "fallback",
            interrupted=False,
            constraints=state.constraints,
            flow_key=key,
        )
        self._audit_counts.record(event)
        for hook in self._audit_hooks:
            self._call_sink(hook, event)
        self._call_sink(self._audit_sink, event)
        if fail_closed:
            raise ResourceExhausted(
                f"quota exhausted for flow {key!r} ({state.key.value} rule {event.rule_id}): "
                f"{quota!r}"
            )

    def constraints_for(self, rule_type: RuleType) -> ExecutionConstraints:
        """The ExecutionConstraints used for ``rule_type``."""
        return self._rule_state(rule_type).constraints  # type: ignore[no-any-return]

    # execute_with_constraints(rule_type, fn, /, *args, **kwargs) is inherited
    # from the compiled core (typed, for mypy, by the twin's _EnforcerCore).

    # -- registered rules (fastpath/rules.py) --------------------------------------
    def rule(self, rule_id: str, rule_type: RuleType, *, constraints: Any = None,
             fallback: Any = ..., breaker: Any = None, adaptive: Any = None,
             quota: Any = None) -> Any:
        """The registered ``Rule`` ``rule_id`` (registered now if new).

        ``constraints`` defaults to the rule type's profile and ``fallback``
        (``...``: not given) to its fallback; ``breaker`` is a
        ``CircuitBreaker``, ``adaptive`` an ``AdaptiveLimit``, ``quota`` a
        ``Quota`` (admission per flow key; ``rule.run_for(key, fn)``).  The same id gives the
        same handle; asking again with a different setting (an argument left at
        its default is no setting) raises ``InvalidConfiguration``.
        """
        return _rules.register(self, rule_id, rule_type, constraints=constraints,
                               fallback=fallback, breaker=breaker, adaptive=adaptive,
                               quota=quota)

    def rules(self) -> Dict[str, Any]:
        """The registered rules, by id (a copy)."""
        with self._registry_lock:
            return dict(self._registry)

    def rule_metrics(self, *, json: bool = False) -> Dict[str, Dict[str, Any]]:
        """``metrics()``'s keys per registered rule id, plus ``rule_type``,
        ``refused``, ``max_exec_ms``, ``breaker`` and ``adaptive`` (see the
        README's "Rules")."""
        return {rule_id: rule.metrics(json=json) for rule_id, rule in self.rules().items()}

    def _rule_entry(self, state: Any, json: bool) -> Dict[str, Any]:
        return _rules.rule_entry(state, json)

    def _circuit_changed(self, state: Any, breaker: Any, old: Any, new: Any,
                         reason: str) -> None:
        self._emit(_rules.circuit_event(AuditEvent, state, breaker, old, new, reason))

    def _limit_changed(self, state: Any, change: Any) -> None:
        self._emit(_rules.limit_event(AuditEvent, state, change))

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
            registered = self._registry.get(rid)
            if registered is not None and registered.rule_type is not rule_type:
                raise InvalidConfiguration(
                    f"rule {rid!r} is registered as {registered.rule_type!r}, not {rule_type!r}")
            key: Any = rule_type
            if registered is not None:
                # A registered rule id: its own constraints, breaker, adaptive
                # limit and counters.
                if inspect.iscoroutinefunction(fn):
                    @functools.wraps(fn)
                    async def async_rule_wrapper(*args: Any, **kwargs: Any) -> Any:
                        return await registered.run_async(fn, *args, **kwargs)

                    return async_rule_wrapper  # type: ignore[return-value]
                # Called as _execute_as(its state, its id, ...) -- what calling the
                # Rule does -- so that fastpath.otel can rebind it like any wrapper.
                key = registered._state
            if inspect.iscoroutinefunction(fn):
                run_async = self._execute_async_as

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await run_async(rule_type, rid, fn, args, kwargs)

                return async_wrapper  # type: ignore[return-value]
            execute_as = self._execute_as

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return execute_as(key, rid, fn, *args, **kwargs)

            # fastpath.otel.instrument(spans="all") rebinds the wrapper's
            # execute_as cell (a per-call attribute lookup would cost ~30 %).
            self._decorated.add(wrapper)
            return wrapper  # type: ignore[return-value]

        return decorate

    async def execute_async(self, rule_type: RuleType, fn: Callable[P, Awaitable[T]], /,
                            *args: P.args, **kwargs: P.kwargs) -> T:
        """``execute_with_constraints`` for coroutines: sampling, a budget whose
        coroutine steps are each armed (``enforce_async``), transient retries with
        ``asyncio.sleep`` backoff inside the budget, the failure policy, audit,
        counters and the latency histogram.

        Typed as returning what ``fn`` returns; a fail-open rule type returns
        its fallback instead (``None`` unless configured)."""
        return await self._execute_async_as(  # type: ignore[no-any-return]
            rule_type, None, fn, args, kwargs)

    async def _execute_async_as(self, rule_type: RuleType, rule_id: Optional[str],
                                fn: Callable[..., Any], args: Tuple[Any, ...],
                                kwargs: Dict[str, Any]) -> Any:
        return await self._run_async_state(self._rule_state(rule_type), rule_id, fn, args,
                                           kwargs)

    async def _run_async_state(self, rule: Any, rule_id: Optional[str],
                               fn: Callable[..., Any], args: Tuple[Any, ...],
                               kwargs: Dict[str, Any]) -> Any:
        quota = rule.quota
        if quota is None:
            budget, token = rule._admit()
            if budget is None:
                return rule.fallback
            return await self._async_attempts(rule, rule_id, fn, budget, token, args, kwargs)
        if not rule._sample():
            return rule.fallback
        token = rule._breaker_token()
        if token == 0:
            return rule.fallback
        key = current_flow.get()
        if quota.is_async:
            admitted = quota._spend_lease(key) or await quota.store._admit_async(key)
        else:
            admitted = quota.admit(key)
        if not admitted:
            rule._release_token(token)        # a half-open probe that will not run
            rule._count_quota_refused()
            self._quota_refused(rule, rule_id, fn, key, rule.constraints.fail_closed_on_timeout)
            return rule.fallback
        budget = rule._start()
        try:
            return await self._async_attempts(rule, rule_id, fn, budget, token, args, kwargs)
        finally:
            # The budget's figures: its wall time, and its CPU time (a reading of the
            # thread's CPU clock over the coroutine's steps when the profile limits
            # CPU; otherwise the wall-time bound ExecutionStats reports).
            stats = budget.stats()
            quota.debit(key, stats.cpu_time_us * 1000, stats.elapsed_ns)

    async def _async_attempts(self, rule: Any, rule_id: Optional[str], fn: Callable[..., Any],
                              budget: Any, token: int, args: Tuple[Any, ...],
                              kwargs: Dict[str, Any]) -> Any:
        attempt = 1
        while True:
            try:
                result = await budget.enforce_async(fn, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - classified by the core
                verdict = rule._settle(budget, exc, self._transient, attempt)
                if verdict == Verdict.RETRY:
                    attempt += 1
                    if rule.backoff_s:
                        import asyncio

                        await asyncio.sleep(rule.backoff_s)
                    continue
                self._feed(rule, budget, token,
                           0 if verdict != Verdict.ERROR else 1 if isinstance(exc, Exception)
                           else -1)
                if verdict == Verdict.DENY:
                    self._audit(rule, rule_id, fn, exc, AUDIT_OUTCOME[verdict])  # type: ignore[arg-type]
                    raise
                if verdict == Verdict.FALLBACK:
                    self._audit(rule, rule_id, fn, exc, AUDIT_OUTCOME[verdict])  # type: ignore[arg-type]
                    return rule.fallback
                if budget.get_violations():
                    self._audit(rule, rule_id, fn, budget._late_violation(),
                                AUDIT_OUTCOME[verdict])
                raise
            rule._settle(budget, None, self._transient, attempt)
            self._feed(rule, budget, token, 0)
            return result

    # -- audit (slow path: only violated calls get here) ----------------------
    def _audit(self, rule_type: RuleType, rule_id: Optional[str], fn: Any,
               violation: ConstraintViolation, outcome: str) -> None:
        # rule_type is a RuleType, or a registered rule's state (rule.key is its type)
        state = self._rule_state(rule_type)
        event = AuditEvent(
            event_type="constraint_violation",
            rule_type=state.key,
            rule_id=rule_id if rule_id is not None else _name_of(fn),
            violations=violation.violations,
            stats=violation.stats,
            timestamp=_dt.datetime.now(_dt.timezone.utc),
            outcome=outcome,
            interrupted=violation.interrupted,
            constraints=state.constraints,
        )
        self._audit_counts.record(event)
        self._emit(event)

    def _emit(self, event: AuditEvent) -> None:
        """Hand an event to the sink, and a violation to the hooks too
        (fastpath.otel's spans are for violated calls; circuit_state and
        limit_changed events are not counted in audit_metrics' violated calls)."""
        if event.event_type == "constraint_violation":
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
    @overload
    def metrics(self, *, json: Literal[False] = False) -> Dict[RuleType, RuleMetrics]: ...
    @overload
    def metrics(self, *, json: Literal[True]) -> Dict[str, RuleMetricsJSON]: ...
    @overload
    def metrics(self, *, json: bool) -> Union[Dict[RuleType, RuleMetrics],
                                             Dict[str, RuleMetricsJSON]]: ...

    def metrics(self, *, json: bool = False) -> Union[Dict[RuleType, RuleMetrics],
                                                      Dict[str, RuleMetricsJSON]]:
        """Counters per rule type (see the README's "Metrics").

        ``json=True``: the same figures with string keys (``"fast"``,
        ``"TIMEOUT_EXCEEDED"``) and plain values, ready for ``json.dumps``.
        """
        out: Dict[Any, Any] = {}
        for rule_type in _RULE_ORDER:
            state = self._rule_state(rule_type)
            *counts, by_kind = state.counters()
            entry: Dict[str, Any] = dict(zip(_COUNTER_NAMES, counts, strict=True))
            if state.quota is not None:
                # Refusals by cause (fastpath.prometheus exports them as fastpath_refused).
                entry["refused"] = {"quota": entry["quota_refused"]}
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

    @overload
    def audit_metrics(self, *, json: Literal[False] = False) -> AuditMetrics: ...
    @overload
    def audit_metrics(self, *, json: Literal[True]) -> AuditMetricsJSON: ...
    @overload
    def audit_metrics(self, *, json: bool) -> Union[AuditMetrics, AuditMetricsJSON]: ...

    def audit_metrics(self, *, json: bool = False) -> Union[AuditMetrics, AuditMetricsJSON]:
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

    def latency_histogram(self, rule_type: RuleType) -> LatencyHistogram:
        """The LatencyHistogram of ``rule_type`` (live: it keeps recording)."""
        return self._rule_state(rule_type).histogram  # type: ignore[no-any-return]

    def reset_metrics(self) -> None:
        """Set every counter to zero and empty the latency histograms."""
        for rule_type in _RULE_ORDER:
            self._rule_state(rule_type).reset()
        for rule in self.rules().values():
            rule._state.reset()
        self._audit_counts.reset()

    def __repr__(self) -> str:
        return f"<ConstraintEnforcer preempt={self._preempt} sink={self._audit_sink!r}>"


class ConstraintEnforcer(_EnforcerAPI, _CoreBase):
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
    """The default rule id: the callable's qualified name.  It must not depend on
    the object's address (a repr does): the id keys the audit rate limit and the
    per-rule audit rows, and a fresh callable instance per call would otherwise
    be a new rule each time -- or the same one only when the allocator happened
    to reuse the address."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name
    return type(fn).__qualname__          # a callable instance: its class


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
