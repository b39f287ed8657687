"""asyncio glue shared by both cores (imported on first async use).

* ``CURRENT``: the task-local current budget, set by ``enforce_async`` and
  ``async with budget:`` (sync ``enforce`` and ``with`` keep theirs in the
  thread's slot instead, where looking it up costs nothing).
* ``async with budget:``: makes the budget current and cancels the task at
  the deadline, like ``asyncio.timeout``; that cancellation becomes
  ``ConstraintViolation(TIMEOUT_EXCEEDED)`` on exit.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Optional

CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "fastpath_current_budget", default=None)
CancelledError = asyncio.CancelledError
get_running_loop = asyncio.get_running_loop
current_task = asyncio.current_task


def task_now() -> Optional["asyncio.Task[Any]"]:
    """The running task, or None (no running loop in this thread)."""
    try:
        return current_task()
    except RuntimeError:
        return None


def current_budget() -> Any:
    """The budget of the innermost async scope of *this* task (a task created
    inside the scope copies the context, but is not running under it)."""
    entry = CURRENT.get()
    if entry is None:
        return None
    budget, task = entry
    return budget if task is task_now() else None


class _AsyncScope:
    __slots__ = ("token", "task", "timer", "cancelled")

    def __init__(self) -> None:
        self.token: Optional[contextvars.Token[Any]] = None
        self.task: Optional[asyncio.Task[Any]] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.cancelled = False

    def on_deadline(self) -> None:
        if self.task is not None and not self.task.done():
            self.cancelled = True
            self.task.cancel("fastpath: budget deadline")


async def scope_enter(budget: Any) -> Any:
    if budget._scope is not None:
        raise RuntimeError("this budget's `async with` block is already open")
    remaining_s, cancel_at_deadline = budget._async_enter()
    scope = _AsyncScope()
    scope.task = task_now()
    scope.token = CURRENT.set((budget, scope.task))
    budget._scope = scope
    if cancel_at_deadline:
        if scope.task is not None:
            loop = get_running_loop()
            scope.timer = loop.call_at(loop.time() + remaining_s, scope.on_deadline)
    return budget


async def scope_exit(budget: Any, exc_type: Any, exc: Optional[BaseException]) -> bool:
    scope = budget._scope
    if not isinstance(scope, _AsyncScope):
        raise RuntimeError("this budget's `async with` block is not open")
    budget._scope = None
    if scope.timer is not None:
        scope.timer.cancel()
    if scope.token is not None:
        CURRENT.reset(scope.token)
    timed_out = False
    if scope.cancelled and isinstance(exc, CancelledError) and scope.task is not None:
        # Ours, unless the task was also cancelled from outside (then it propagates).
        timed_out = scope.task.uncancel() == 0
    budget._async_exit(timed_out)
    return False
