"""Registered rules: ``enforcer.rule(rule_id, rule_type, ...)``.

The ``Rule`` handle and its per-rule state (``_RuleState`` with a rule id, a
breaker, an adaptive limit's state) are in the core; calling a rule is one
vectorcall into ``_EnforcerCore._pipeline``.  This module holds what is not
per call: validating a registration, the registry's conflict rule, the
per-rule metrics and the audit events of breaker and limit changes.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, Optional

from .adaptive import AdaptiveLimit
from .errors import ConstraintViolationType, InvalidConfiguration

__all__ = ["UNSET", "register", "rule_entry"]


#: "Not given": the rule type's fallback / whatever is registered already.
UNSET: Any = ...

#: The names of the counts ``_RuleState.counters()`` returns, in order (the
#: per-type ``metrics()`` and ``rule_metrics()`` both use them).
COUNTER_NAMES = ("calls", "executed", "sampled_out", "fail_open", "fail_closed", "errors",
                 "retries", "quota_refused")


def register(enforcer: Any, rule_id: Any, rule_type: Any, *, constraints: Any, fallback: Any,
             breaker: Any, adaptive: Any, quota: Any) -> Any:
    """The registered Rule for ``rule_id`` (registering it first if needed)."""
    if not isinstance(rule_id, str) or not rule_id:
        raise InvalidConfiguration(f"rule_id must be a non-empty str, got {rule_id!r}")
    base = enforcer._rule_state(rule_type)          # validates rule_type
    core = enforcer._core_module
    if constraints is not None and type(constraints) is not enforcer._constraints_class:
        raise InvalidConfiguration(
            f"rule {rule_id!r}: constraints must be an ExecutionConstraints or None, "
            f"got {constraints!r}")
    if breaker is not None and not isinstance(breaker, core._Breaker):
        raise InvalidConfiguration(
            f"rule {rule_id!r}: breaker must be a fastpath.CircuitBreaker (of this "
            f"enforcer's core) or None, got {breaker!r}")
    if adaptive is not None and not isinstance(adaptive, AdaptiveLimit):
        raise InvalidConfiguration(
            f"rule {rule_id!r}: adaptive must be a fastpath.AdaptiveLimit or None, "
            f"got {adaptive!r}")
    quota_class = core._quota_class()
    if quota is not None and type(quota) is not quota_class:
        raise InvalidConfiguration(
            f"rule {rule_id!r}: quota must be a {quota_class.__module__}.Quota (of this "
            f"enforcer's core) or None, got {quota!r}")
    with enforcer._registry_lock:
        existing = enforcer._registry.get(rule_id)
        if existing is not None:
            _check_same(existing, rule_id, rule_type, constraints, fallback, breaker, adaptive,
                        quota)
            return existing
        configured = constraints if constraints is not None else base.constraints
        adaptive_state = None if adaptive is None else adaptive._state_for(core, configured)
        state = core._RuleState(
            rule_type, configured, base.fallback if fallback is UNSET else fallback,
            enforcer._preempt and rule_type.value != "observational",
            rule_id, breaker, adaptive_state, quota)
        handle = core.Rule(enforcer, state)
        if getattr(enforcer, "_trace_rule_calls", False):
            handle._trace_calls(True)           # fastpath.otel spans="all" is on
        enforcer._registry[rule_id] = handle
    if breaker is not None:
        breaker._listen(enforcer, state)
    return handle


def _check_same(existing: Any, rule_id: str, rule_type: Any, constraints: Any, fallback: Any,
                breaker: Any, adaptive: Any, quota: Any) -> None:
    state = existing._state
    conflicts = []
    if state.key is not rule_type:
        conflicts.append(f"rule_type {state.key!r} != {rule_type!r}")
    if constraints is not None and constraints != state.configured:
        conflicts.append(f"constraints {state.configured!r} != {constraints!r}")
    if fallback is not UNSET and fallback is not state.fallback and fallback != state.fallback:
        conflicts.append(f"fallback {state.fallback!r} != {fallback!r}")
    if breaker is not None and breaker is not state.breaker:
        conflicts.append("a different breaker")
    if adaptive is not None and adaptive != existing.adaptive:
        conflicts.append(f"adaptive {existing.adaptive!r} != {adaptive!r}")
    if quota is not None and quota is not state.quota:
        conflicts.append("a different quota")
    if conflicts:
        raise InvalidConfiguration(
            f"rule {rule_id!r} is already registered with other settings: "
            + "; ".join(conflicts))


def rule_entry(state: Any, json: bool) -> Dict[str, Any]:
    """One rule's metrics: the per-type keys, plus rule_type, refused,
    max_exec_ms, breaker and adaptive."""
    *counts, by_kind = state.counters()
    entry: Dict[str, Any] = dict(zip(COUNTER_NAMES, counts, strict=True))
    kinds = [ConstraintViolationType(k) for k in by_kind]
    entry["refused"] = state.refused_calls
    if json:
        entry["violations"] = {k.name: n for k, n in zip(kinds, by_kind.values(), strict=True)}
        entry["latency"] = dict(state.histogram.summary())
        entry["rule_type"] = state.key.value
    else:
        entry["violations"] = dict(zip(kinds, by_kind.values(), strict=True))
        entry["latency"] = state.histogram.summary()
        entry["rule_type"] = state.key
    entry["max_exec_ms"] = state.constraints.max_exec_ms
    entry["breaker"] = None if state.breaker is None else state.breaker.metrics()
    if state.adaptive is None:
        entry["adaptive"] = None
    else:
        limit_ms, windows, changes, in_window, _previous = state.adaptive._snapshot()
        entry["adaptive"] = {"limit_ms": limit_ms, "windows": windows, "changes": changes,
                             "calls_in_window": in_window}
    return entry


def circuit_event(event_cls: Any, state: Any, breaker: Any, old: Any, new: Any,
                  reason: str) -> Any:
    return event_cls(
        event_type="circuit_state", rule_type=state.key, rule_id=state.rule_id,
        violations=(), stats=None, timestamp=_dt.datetime.now(_dt.timezone.utc),
        outcome=new.name.lower(), interrupted=False, constraints=state.constraints,
        details={"from": old.name.lower(), "to": new.name.lower(), "reason": reason,
                 **{k: v for k, v in breaker.metrics().items() if k != "state"}})


def limit_event(event_cls: Any, state: Any, change: Any) -> Any:
    old_ms, new_ms, p_ns, calls, timeouts = change
    return event_cls(
        event_type="limit_changed", rule_type=state.key, rule_id=state.rule_id,
        violations=(), stats=None, timestamp=_dt.datetime.now(_dt.timezone.utc),
        outcome="limit_changed", interrupted=False, constraints=state.constraints,
        details={"from_ms": old_ms, "to_ms": new_ms, "percentile_ns": p_ns,
                 "window_calls": calls, "window_timeouts": timeouts,
                 "percentile": state.adaptive.settings.percentile})


def describe(event: Any) -> Optional[str]:
    """The log line of a circuit_state / limit_changed event (None for others)."""
    d = event.details or {}
    if event.event_type == "circuit_state":
        return (f"circuit state: {event.rule_type.value} rule {event.rule_id} "
                f"{d.get('from')} -> {d.get('to')} ({d.get('reason')})")
    if event.event_type == "limit_changed":
        return (f"limit changed: {event.rule_type.value} rule {event.rule_id} max_exec_ms "
                f"{d.get('from_ms')} -> {d.get('to_ms')} (p{d.get('percentile'):g} "
                f"{d.get('percentile_ns')} ns over {d.get('window_calls')} calls)")
    return None
