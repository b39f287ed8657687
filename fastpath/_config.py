"""Validation, presets and (de)serialisation of ExecutionConstraints (and the
validation of a hand-built ExecutionStats).

Shared by the compiled core and the pure-Python twin so that both accept and
reject exactly the same values with the same messages.  Nothing here is on the
per-call path: it runs when a constraints object is built.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import re
import signal
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


def constraints_args(
    max_exec_ms: Any,
    *,
    cpu_shares: Any = None,
    memory_limit_bytes: Any = None,
    sampling_rate: Any = 1.0,
    fail_closed_on_timeout: Any = True,
    max_retries: Any = None,
    retry_backoff_ms: Any = None,
) -> Normalized:
    """The compiled ``ExecutionConstraints.__init__(*args, **kwargs)``: Python binds
    the arguments, and a wrong call's TypeError names ``ExecutionConstraints()``
    (the qualified name set below), never ``__init__()``."""
    return normalize(max_exec_ms, cpu_shares, memory_limit_bytes, sampling_rate,
                     fail_closed_on_timeout, max_retries, retry_backoff_ms)


constraints_args.__qualname__ = constraints_args.__name__ = "ExecutionConstraints"


def unset_constraints() -> TypeError:
    """What a bare ``ExecutionConstraints.__new__(ExecutionConstraints)`` raises when used."""
    return TypeError("ExecutionConstraints.__new__() made an object without values: "
                     "build ExecutionConstraints(max_exec_ms, ...) or use a preset")


def not_a_value(obj: Any) -> TypeError:
    """What pickling or copying a running budget raises."""
    return TypeError(f"cannot pickle or copy an {type(obj).__name__}: a running budget is "
                     "not a value (pickle or copy its .constraints and create a new budget)")


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidConfiguration(f"{name} must be a bool, got {value!r}")
    return value


# ------------------------------------------------------------ the environment
#
# Every FASTPATH_* variable the library reads at import goes through one of the
# three functions below, so that both cores accept and reject the same values
# with the same messages.  The README's "Environment variables" table lists them.

#: The words an on/off variable accepts (case-insensitive, blanks around ignored).
TRUE_WORDS: Tuple[str, ...] = ("1", "true", "yes", "on")
FALSE_WORDS: Tuple[str, ...] = ("0", "false", "no", "off", "")


def env_flag(name: str, default: bool) -> bool:
    """An on/off variable: unset gives ``default``; 1/true/yes/on is True;
    0/false/no/off or empty is False; anything else is an InvalidConfiguration
    naming the variable and the value as given."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise InvalidConfiguration(
        f"{name} must be one of {'/'.join(TRUE_WORDS)} (on) or "
        f"{'/'.join(FALSE_WORDS[:-1])} or empty (off), got {raw!r}"
    )


def env_choice(name: str, choices: Tuple[str, ...], default: str) -> str:
    """A variable with a fixed set of values (case-insensitive, blanks around
    ignored): unset gives ``default``; anything else, empty included, is an
    InvalidConfiguration naming the variable and the value as given."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in choices:
        return word
    raise InvalidConfiguration(
        f"{name} must be one of {', '.join(map(repr, choices))}, got {raw!r}"
    )


#: FASTPATH_CLOCK: "tsc" reads the TSC where the kernel's clocksource is the TSC.
CLOCK_CHOICES: Tuple[str, ...] = ("tsc", "monotonic")

#: The main thread's preemption signal when FASTPATH_PREEMPT_SIGNAL is unset.
DEFAULT_PREEMPT_SIGNAL = "SIGRTMAX-5"

_RT_NAME = re.compile(r"SIGRT(MIN|MAX)(?:([+-])([0-9]+))?", re.IGNORECASE)


def env_clock() -> str:
    """FASTPATH_CLOCK: 'tsc' (the default) or 'monotonic'."""
    return env_choice("FASTPATH_CLOCK", CLOCK_CHOICES, "tsc")


def env_preempt_signal() -> Optional[int]:
    """FASTPATH_PREEMPT_SIGNAL as a signal number, or None for ``off``.

    Only real-time signals are accepted (SIGRTMIN..SIGRTMAX, 34..64 on Linux),
    as a number or as ``SIGRTMIN``, ``SIGRTMIN+n``, ``SIGRTMAX``, ``SIGRTMAX-n``
    (case-insensitive): any other signal has a meaning of its own to the
    application (SIGTERM, SIGUSR1, ...) or cannot be caught (SIGKILL, SIGSTOP).
    Unset means SIGRTMAX-5.  Every other value is an InvalidConfiguration.
    """
    raw = os.environ.get("FASTPATH_PREEMPT_SIGNAL")
    return parse_preempt_signal(DEFAULT_PREEMPT_SIGNAL if raw is None else raw)


def parse_preempt_signal(spec: str) -> Optional[int]:
    """One FASTPATH_PREEMPT_SIGNAL value (see env_preempt_signal)."""
    word = spec.strip()
    if word.lower() == "off":
        return None
    lo = getattr(signal, "SIGRTMIN", None)
    hi = getattr(signal, "SIGRTMAX", None)
    signum: Optional[int] = None
    if lo is not None and hi is not None:
        lo, hi = int(lo), int(hi)
        match = _RT_NAME.fullmatch(word)
        if match is not None:
            base, sign, offset = match.groups()
            signum = lo if base.upper() == "MIN" else hi
            if offset is not None:
                signum += int(offset) if sign == "+" else -int(offset)
        elif word.isascii() and word.isdigit():
            signum = int(word)
        if signum is not None and lo <= signum <= hi:
            return signum
        allowed = f"a real-time signal ({lo}..{hi}, SIGRTMIN+n or SIGRTMAX-n) or 'off'"
    else:  # pragma: no cover - a platform without real-time signals
        allowed = "'off' (this platform has no real-time signals)"
    raise InvalidConfiguration(f"FASTPATH_PREEMPT_SIGNAL must be {allowed}, got {spec!r}")


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
