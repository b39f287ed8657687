"""Where an asynchronous interrupt must not land.

Stdlib code that takes a lock with ``lock.acquire()`` and releases it in a
``try: ... finally:`` that starts on a later line (``logging.Handler.handle``
is exactly that shape) leaks the lock if an exception is raised between the
two: every other thread then blocks on it forever.  Both cores put an
interrupt off while the target thread's innermost frame, or its caller, runs
code from one of these files, and send it again shortly after (and likewise
inside ``fastpath.uninterruptible()``).

Finalizers are the other place: an exception raised in ``__del__`` or in a
weakref callback cannot propagate (CPython prints "Exception ignored in ..."
and the finalizer's work is cut short), so an interrupt is also put off while
the target thread runs a ``__del__`` method (anywhere on its stack) or a
garbage collection (which runs finalizers and weakref callbacks).  The
collection is seen through ``gc.callbacks`` (each core adds one callback).
"""

from __future__ import annotations

import gc
import os
import threading
from types import FrameType
from typing import Optional, Tuple

_STDLIB = os.path.dirname(threading.__file__)

#: File-name prefixes (``co_filename.startswith``) of the critical modules.
CRITICAL_FILES: Tuple[str, ...] = tuple(
    os.path.join(_STDLIB, name)
    for name in (
        "logging" + os.sep,
        "threading.py",
        "queue.py",
        "concurrent" + os.sep,
        "multiprocessing" + os.sep,
        "_threading_local.py",
        "weakref.py",
        "_weakrefset.py",
    )
) + ("<frozen importlib._bootstrap",)


#: How far up the stack a ``__del__`` frame is looked for.
FINALIZER_DEPTH = 64

#: The thread running a garbage collection now (0: none).  Written by
#: `_gc_phase` (the twin's gc callback; the compiled core has its own).
collecting_in = 0


def _gc_phase(phase: str, info: object) -> None:
    global collecting_in
    collecting_in = threading.get_ident() if phase == "start" else 0


def track_collections() -> None:
    """Add the twin's gc callback (once)."""
    if _gc_phase not in gc.callbacks:
        gc.callbacks.append(_gc_phase)


def frame_is_critical(frame: Optional[FrameType]) -> bool:
    """Is `frame` (or its caller) in one of the critical modules, or is a
    ``__del__`` method or a ``gc.callbacks`` function on its stack?  (The
    twin's own gc callback marks a collection only from the moment it runs: an
    application's callback may run before it.)"""
    depth = 0
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None and depth < FINALIZER_DEPTH:
        code = frame.f_code
        if depth < 2 and code.co_filename.startswith(CRITICAL_FILES):
            return True
        if code.co_name == "__del__" or code in callbacks:
            return True
        frame = frame.f_back
        depth += 1
    return False


def thread_is_critical(ident: int, frame: Optional[FrameType]) -> bool:
    """Must an interrupt for thread `ident`, now at `frame`, be put off?"""
    return collecting_in == ident or frame_is_critical(frame)
