"""Validation, presets and (de)serialisation of ExecutionConstraints (and the
validation of a hand-built ExecutionStats).

Shared by the compiled core and the pure-Python twin so that both accept and
reject exactly the same values with the same messages.  Nothing here is on the
per-call path: it runs when a constraints object is built.
"""

from __future__ import annotations

import math
import numbers
import os
import operator
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ConstraintViolationType, InvalidConfiguration

MB = 1024 * 1024
KB = 1024
MAX_EXEC_MS_LIMIT = 2**53
INT64_MAX = 2**63 - 1

#: Field names in declaration order (the order of repr and to_dict).
FIELDS: Tuple[str, ...] = (
    "max_exec_ms",
    "cpu_shares",
    "memory_limit_bytes",
    "sampling_rate",
    "fail_closed_on_timeout",
    "max_retries",
    "retry_backoff_ms",
)

DEFAULTS: Dict[str, Any] = {
    "cpu_shares": None,
    "memory_limit_bytes": None,
    "sampling_rate": 1.0,
    "fail_closed_on_timeout": True,
    "max_retries": None,
    "retry_backoff_ms": None,
}

Normalized = Tuple[int, Optional[int], Optional[int], float, bool, Optional[int], Optional[int]]


def _int(name: str, value: Any, lo: int, hi: int, *, optional: bool) -> Optional[int]:
    if value is None:
        if optional:
            return None
        raise InvalidConfiguration(f"{name} is required, got None")
    if isinstance(value, bool) or isinstance(value, (float, str, bytes, complex)):
        raise InvalidConfiguration(
            f"{name} must be an int{' or None' if optional else ''}, got {value!r}"
        )
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidConfiguration(
            f"{name} must be an int{' or None' if optional else ''}, got {value!r}"
        ) from None
    if not lo <= number <= hi:
        top = {MAX_EXEC_MS_LIMIT: "2**53", INT64_MAX: "2**63-1"}.get(hi, str(hi))
        raise InvalidConfiguration(f"{name} must be an int in {lo}..{top}, got {number!r}")
    return number


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidConfiguration(
            f"sampling_rate must be a real number within [0.0, 1.0], got {value!r}"
        )
    rate = float(value)
    if math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise InvalidConfiguration(f"sampling_rate must be within [0.0, 1.0], got {value!r}")
    return rate


def normalize(
    max_exec_ms: Any,
    cpu_shares: Any = None,
    memory_limit_bytes: Any = None,
    sampling_rate: Any = 1.0,
    fail_closed_on_timeout: Any = True,
    max_retries: Any = None,
    retry_backoff_ms: Any = None,
) -> Normalized:
    """Validate every field and return them as plain Python values."""
    check_bool("fail_closed_on_timeout", fail_closed_on_timeout)
    return (
        _int("max_exec_ms", max_exec_ms, 1, MAX_EXEC_MS_LIMIT, optional=False),  # type: ignore[return-value]
        _int("cpu_shares", cpu_shares, 0, 100, optional=True),
        _int("memory_limit_bytes", memory_limit_bytes, 1, INT64_MAX, optional=True),
        _rate(sampling_rate),
        fail_closed_on_timeout,
        _int("max_retries", max_retries, 0, INT64_MAX, optional=True),
        _int("retry_backoff_ms", retry_backoff_ms, 0, MAX_EXEC_MS_LIMIT, optional=True),
    )


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidConfiguration(f"{name} must be a bool, got {value!r}")
    return value


def env_flag(name: str, default: bool = True) -> bool:
    """An on/off switch from the environment (FASTPATH_PREEMPT, FASTPATH_FAST_GIL):
    unset or empty gives ``default``; anything but 0/off/no/false or
    1/on/yes/true is an InvalidConfiguration, at import, rather than ignored."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("0", "off", "no", "false"):
        return False
    if value in ("1", "on", "yes", "true"):
        return True
    if value:
        raise InvalidConfiguration(f"{name} must be 0 or 1, got {value!r}")
    return default


def check_budget_args(constraints: Any, constraints_type: type, preempt: Any) -> None:
    """Validate ExecutionBudget(constraints, preempt=...) for either core."""
    if type(constraints) is not constraints_type:
        raise InvalidConfiguration(
            f"ExecutionBudget needs an ExecutionConstraints, got {type(constraints).__name__}"
        )
    check_bool("preempt", preempt)


def kwargs_from_dict(data: Any) -> Dict[str, Any]:
    """Check a mapping given to ``from_dict`` and return constructor keywords."""
    if not isinstance(data, Mapping):
        raise InvalidConfiguration(f"from_dict expects a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise InvalidConfiguration(
            f"unknown ExecutionConstraints field(s): {', '.join(map(repr, unknown))}"
        )
    if "max_exec_ms" not in data:
        raise InvalidConfiguration("max_exec_ms is required, got no value")
    return dict(data)


def check_replace_keys(changes: Mapping[str, Any]) -> None:
    unknown = [k for k in changes if k not in FIELDS]
    if unknown:
        raise InvalidConfiguration(
            f"replace() got unknown field(s): {', '.join(map(repr, unknown))}"
        )


def as_dict(values: Normalized) -> Dict[str, Any]:
    return dict(zip(FIELDS, values, strict=True))


def format_repr(values: Normalized) -> str:
    body = ", ".join(f"{name}={value!r}" for name, value in zip(FIELDS, values, strict=True))
    return f"ExecutionConstraints({body})"


# Presets: the design card's table (SPEC "Presets").
def fast_rule_args() -> Normalized:
    return normalize(5, 10, 1 * MB, 1.0, True, None, None)


def semantic_rule_args() -> Normalized:
    return normalize(100, 50, 10 * MB, 1.0, False, 2, 10)


def wasm_hook_args(max_ms: Any) -> Normalized:
    return normalize(max_ms, 20, 5 * MB, 1.0, True, None, None)


def observational_args(sampling_rate: Any) -> Normalized:
    return normalize(2, 5, 512 * KB, sampling_rate, False, None, None)


StatsValues = Tuple[int, int, int, bool, Tuple[Any, ...], int, int]


def check_stats(elapsed_ns: Any, memory_used_bytes: Any, cpu_time_us: Any,
                cpu_time_measured: Any, violations: Any, memory_allocated_bytes: Any,
                memory_peak_bytes: Any) -> StatsValues:
    """Validate ``ExecutionStats(...)`` for either core (the compiled core's
    budgets build their stats without it; the twin's go through it): figures
    are ints in 0..2**63-1, the flag a bool, ``violations`` an iterable of
    ConstraintViolationType values."""
    def figure(name: str, value: Any) -> int:
        if isinstance(value, (bool, float, str, bytes, complex)):
            raise InvalidConfiguration(f"ExecutionStats: {name} must be an int, got {value!r}")
        try:
            number = operator.index(value)
        except TypeError:
            raise InvalidConfiguration(
                f"ExecutionStats: {name} must be an int, got {value!r}") from None
        if not 0 <= number <= INT64_MAX:
            raise InvalidConfiguration(
                f"ExecutionStats: {name} must be an int in 0..2**63-1, got {value!r}")
        return number

    if not isinstance(cpu_time_measured, bool):
        raise InvalidConfiguration(
            f"ExecutionStats: cpu_time_measured must be a bool, got {cpu_time_measured!r}")
    if isinstance(violations, (str, bytes)):
        raise InvalidConfiguration(
            f"ExecutionStats: violations must be violation kinds, got {violations!r}")
    try:
        kinds = tuple(ConstraintViolationType(v) for v in violations)
    except (TypeError, ValueError):
        raise InvalidConfiguration(
            f"ExecutionStats: violations must be violation kinds, got {violations!r}") from None
    return (figure("elapsed_ns", elapsed_ns), figure("memory_used_bytes", memory_used_bytes),
            figure("cpu_time_us", cpu_time_us), cpu_time_measured, kinds,
            figure("memory_allocated_bytes", memory_allocated_bytes),
            figure("memory_peak_bytes", memory_peak_bytes))
