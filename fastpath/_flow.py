"""The current flow: the key a quota charges (``enforcer.flow(key)``).

A ContextVar, so the flow follows asyncio tasks (a task started inside
``async with enforcer.flow(key):`` inherits it) and threads do not share it.
Both cores read it only for rules that have a quota.
"""

from __future__ import annotations

import contextvars
from types import TracebackType
from typing import Any, List, Optional, Type

from ._quota_config import check_key

__all__ = ["Flow", "current_flow", "current_flow_key"]

#: The flow key of the running context (None: no flow).
current_flow: "contextvars.ContextVar[Any]" = contextvars.ContextVar("fastpath_flow",
                                                                     default=None)


def current_flow_key() -> Any:
    """The flow key quotas charge in this context (``None`` outside any flow)."""
    return current_flow.get()


class Flow:
    """``with enforcer.flow(key):`` / ``async with enforcer.flow(key):`` -- every
    call with a quota inside the block is charged to ``key``.  Blocks nest (the
    innermost wins); one Flow object may be entered again once it has exited."""

    __slots__ = ("key", "_tokens")

    def __init__(self, key: Any) -> None:
        self.key = check_key(key)
        self._tokens: List["contextvars.Token[Any]"] = []

    def __enter__(self) -> "Flow":
        self._tokens.append(current_flow.set(self.key))
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        current_flow.reset(self._tokens.pop())

    async def __aenter__(self) -> "Flow":
        return self.__enter__()

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Flow key={self.key!r}>"
