"""Validation of Quota arguments, shared by the compiled quota core and its twin.

Both cores accept and reject exactly the same values with the same messages.
Nothing here is on the per-call path: it runs when a Quota is built.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

from .errors import InvalidConfiguration

#: The resources a quota can track, in the order the cores store them.
RESOURCES: Tuple[str, ...] = ("calls", "cpu_ms", "wall_ms")

# (rate per ns for each resource, capacity for each resource, mask of configured ones)
Normalized = Tuple[Tuple[float, float, float], Tuple[float, float, float], int]


def _positive(name: str, value: Any, *, optional: bool) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidConfiguration(
            f"Quota {name} must be a number > 0{' or None' if optional else ''}, got {value!r}"
        )
    number = float(value)
    if not (number > 0) or math.isinf(number):
        raise InvalidConfiguration(f"Quota {name} must be a finite number > 0, got {value!r}")
    return number


def normalize(calls: Any, cpu_ms: Any, wall_ms: Any, per_s: Any, burst: Any) -> Normalized:
    """Validated (rates per ns, capacities, mask) of a Quota's arguments."""
    amounts = [_positive(name, value, optional=True)
               for name, value in zip(RESOURCES, (calls, cpu_ms, wall_ms), strict=True)]
    if all(a is None for a in amounts):
        raise InvalidConfiguration(
            "Quota needs at least one of calls, cpu_ms, wall_ms, got none of them"
        )
    period_s = _positive("per_s", per_s, optional=False)
    periods = 1.0 if burst is None else _positive("burst", burst, optional=False)
    assert period_s is not None and periods is not None
    rates = [0.0, 0.0, 0.0]
    caps = [0.0, 0.0, 0.0]
    mask = 0
    for i, amount in enumerate(amounts):
        if amount is None:
            continue
        mask |= 1 << i
        rates[i] = amount / (period_s * 1e9)
        caps[i] = amount * periods
    if mask & 1 and caps[0] < 1.0:
        raise InvalidConfiguration(
            f"Quota calls * burst must be >= 1 (a bucket that can never hold a call), "
            f"got calls={calls!r}, burst={burst!r}"
        )
    return (rates[0], rates[1], rates[2]), (caps[0], caps[1], caps[2]), mask


def describe(mask: int, rates: Sequence[float], caps: Sequence[float], per_s: float) -> str:
    """``calls=1000, cpu_ms=2000``: the limits per period, for repr."""
    parts = [f"{name}={rates[i] * per_s * 1e9:g}" for i, name in enumerate(RESOURCES)
             if mask & (1 << i)]
    return ", ".join(parts)


def check_key(key: Any) -> Any:
    """A flow key must be hashable (it is a dict key and, on Redis, part of a name)."""
    try:
        hash(key)
    except TypeError:
        raise InvalidConfiguration(f"flow key must be hashable, got {key!r}") from None
    return key
