"""Run a test's function on a fresh worker thread and report what it did."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Tuple


def in_thread(fn: Callable[..., Any], *args: Any, join_s: float = 30.0) -> Dict[str, object]:
    """Run fn(*args) on a new thread; {"result": ...} or {"error": exc}.

    Waits up to join_s for the thread (a test's give-up time) and fails the
    test if it is still running then."""
    box: Dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(join_s)
    assert not t.is_alive()
    return box


def run_threads(target: Callable[..., Any], args: Iterable[Tuple[Any, ...]]) -> None:
    """Start one thread per tuple of args, all at once, and wait for them all."""
    threads = [threading.Thread(target=target, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
