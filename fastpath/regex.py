"""Budget-aware regular expressions: ``fastpath.regex.compile(pattern, flags=0)``.

A backtracking regex runs inside one C call, and CPython's ``re`` checks for
signals only on the main thread: off the main thread nothing can interrupt it.
This module is built on the `regex <https://pypi.org/project/regex/>`_
package, whose matcher takes a ``timeout`` that it checks itself, in any
thread.  Every call gets the current budget's remaining time
(``fastpath.current_budget()``); a call that runs out of it stops the
budget's running call as its deadline would: ``enforce`` (or
``enforce_async``) raises ``ConstraintViolation(TIMEOUT_EXCEEDED,
interrupted=True)``.  Outside any budget the call runs unbounded.

Install with ``pip install fastpath[regex]``.  ``regex`` in its default
(VERSION0) mode is meant to be compatible with ``re``; what users meet:

* it accepts syntax ``re`` rejects (``\\p{L}`` properties, possessive
  quantifiers, ``(?|...)`` branch reset, ``\\m``/``\\M`` word boundaries,
  ``\\X`` graphemes, fuzzy matching), so a pattern that is an error for ``re``
  may compile here;
* nested sets, set operations and full Unicode case-folding need the
  ``regex.V1`` flag;
* the pattern and match objects are ``regex``'s, not ``re``'s
  (``isinstance(p, re.Pattern)`` is false; the methods take the same
  arguments plus ``regex``'s own).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, List

try:
    import regex as _regex  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "fastpath.regex needs the 'regex' package: pip install 'fastpath[regex]'") from exc

from . import _impl

__all__ = ["Pattern", "compile"]

_MIN_TIMEOUT_S = 1e-6


def _current() -> Any:
    return _impl.current_budget_any()


class Pattern:
    """A compiled pattern whose calls are bounded by the current budget."""

    __slots__ = ("_p",)

    def __init__(self, compiled: Any) -> None:
        self._p = compiled

    @property
    def pattern(self) -> str:
        return self._p.pattern  # type: ignore[no-any-return]

    @property
    def flags(self) -> int:
        return self._p.flags  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"fastpath.regex.compile({self._p.pattern!r}, {self._p.flags!r})"

    def _bounded(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        if budget is None:
            return method(*args, **kwargs)
        remaining = budget.remaining_ms() / 1000.0
        try:
            return method(*args, timeout=max(remaining, _MIN_TIMEOUT_S), **kwargs)
        except TimeoutError:
            budget._raise_timeout()     # stops the budget's running call, as its deadline would
            raise                       # pragma: no cover - _raise_timeout always raises

    def search(self, string: Any, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(self._p.search, string, *args, **kwargs)

    def match(self, string: Any, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(self._p.match, string, *args, **kwargs)

    def fullmatch(self, string: Any, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(self._p.fullmatch, string, *args, **kwargs)

    def findall(self, string: Any, *args: Any, **kwargs: Any) -> List[Any]:
        return self._bounded(self._p.findall, string, *args, **kwargs)  # type: ignore[no-any-return]

    def finditer(self, string: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        # Collected under the bound (an iterator would run its matches later,
        # outside it).
        return iter(self._bounded(lambda *a, **k: list(self._p.finditer(*a, **k)),
                                  string, *args, **kwargs))

    def sub(self, repl: Any, string: Any, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(self._p.sub, repl, string, *args, **kwargs)

    def split(self, string: Any, *args: Any, **kwargs: Any) -> List[Any]:
        return self._bounded(self._p.split, string, *args, **kwargs)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=512)
def compile(pattern: str, flags: int = 0) -> Pattern:  # noqa: A001 - the re-module name
    """Compile (cached) a pattern whose calls are bounded by the current budget."""
    return Pattern(_regex.compile(pattern, flags))
