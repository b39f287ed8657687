"""AdaptiveLimit: a rule's deadline follows its own recent latencies.

The settings object is immutable and may be given to several rules; each rule
gets its own per-window state in the core (``_Adaptive``: a rotating pair of
LatencyHistograms).  Every ``window_calls`` calls (or ``window_s`` seconds)
the rule's effective ``max_exec_ms`` becomes
``clamp(ceil(pN(window) * headroom), min_ms, max_ms or the configured
max_exec_ms)``, computed from that window only.  A window where more calls
timed out than the percentile leaves out (their latency is only known to be
>= the limit) sets the limit back to the cap, so that the next window
measures the real latency: after a latency step the limit settles within two
windows after the first full window at the new latency.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Optional

from .errors import InvalidConfiguration

__all__ = ["AdaptiveLimit"]


def _real(name: str, value: Any, low: float, high: float, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise InvalidConfiguration(f"AdaptiveLimit {name} must be a number, got {value!r}")
    number = float(value)
    if number < low or (low_open and number == low) or number > high:
        raise InvalidConfiguration(
            f"AdaptiveLimit {name} must be within {'(' if low_open else '['}{low:g}, {high:g}], "
            f"got {value!r}")
    return number


def _int(name: str, value: Any, low: int, *, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 2**53:
        raise InvalidConfiguration(
            f"AdaptiveLimit {name} must be an int >= {low}{' or None' if optional else ''}, "
            f"got {value!r}")
    return value


class AdaptiveLimit:
    """``AdaptiveLimit(*, percentile=99.0, headroom=1.5, min_ms=1, max_ms=None,
    window_calls=1000, window_s=None, clock=None)`` (see the module docstring).

    ``max_ms`` (default: the rule's configured ``max_exec_ms``) may not exceed
    the configured limit: that is a hard cap.  ``clock`` (a callable returning
    seconds) times ``window_s`` windows in tests.  Each change of the limit is
    an audit event ``event_type="limit_changed"``.
    """

    __slots__ = ("percentile", "headroom", "min_ms", "max_ms", "window_calls", "window_s",
                 "clock")

    def __init__(self, *, percentile: float = 99.0, headroom: float = 1.5, min_ms: int = 1,
                 max_ms: Optional[int] = None, window_calls: int = 1000,
                 window_s: Optional[float] = None,
                 clock: Optional[Callable[[], float]] = None) -> None:
        self.percentile = _real("percentile", percentile, 0.0, 100.0, low_open=True)
        self.headroom = _real("headroom", headroom, 1.0, 1000.0, low_open=False)
        self.min_ms = _int("min_ms", min_ms, 1)
        self.max_ms = _int("max_ms", max_ms, 1, optional=True)
        if self.max_ms is not None and self.max_ms < self.min_ms:  # type: ignore[operator]
            raise InvalidConfiguration(
                f"AdaptiveLimit max_ms must be >= min_ms ({min_ms}), got {max_ms!r}")
        self.window_calls = _int("window_calls", window_calls, 1)
        self.window_s = (None if window_s is None
                         else _real("window_s", window_s, 0.0, 86400.0, low_open=True))
        if clock is not None and not callable(clock):
            raise InvalidConfiguration(f"AdaptiveLimit clock must be callable, got {clock!r}")
        self.clock = clock

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, name):
            raise AttributeError(f"AdaptiveLimit is immutable: cannot set {name}")
        object.__setattr__(self, name, value)

    def as_dict(self) -> Dict[str, Any]:
        return {"percentile": self.percentile, "headroom": self.headroom,
                "min_ms": self.min_ms, "max_ms": self.max_ms,
                "window_calls": self.window_calls, "window_s": self.window_s}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdaptiveLimit):
            return NotImplemented
        return self.as_dict() == other.as_dict() and self.clock is other.clock

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"AdaptiveLimit({fields})"

    def _state_for(self, core: Any, configured: Any) -> Any:
        """This limit's per-rule state in ``core`` for a rule configured with
        ``configured`` (its max_exec_ms is the hard cap)."""
        cap = configured.max_exec_ms
        if self.max_ms is not None:
            if self.max_ms > cap:
                raise InvalidConfiguration(
                    f"AdaptiveLimit max_ms ({self.max_ms}) must be <= the rule's max_exec_ms "
                    f"({cap}): the configured limit is a hard cap")
            cap = self.max_ms
        if self.min_ms > cap:
            raise InvalidConfiguration(
                f"AdaptiveLimit min_ms ({self.min_ms}) must be <= the rule's max_exec_ms "
                f"({cap})")
        window_ns = 0 if self.window_s is None else max(1, int(self.window_s * 1e9))
        return core._Adaptive(self, self.percentile, self.headroom, self.min_ms, cap,
                              0 if window_ns else self.window_calls, window_ns, self.clock)
