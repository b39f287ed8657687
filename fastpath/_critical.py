"""Where an asynchronous interrupt must not land.

Stdlib code that takes a lock with ``lock.acquire()`` and releases it in a
``try: ... finally:`` that starts on a later line (``logging.Handler.handle``
is exactly that shape) leaks the lock if an exception is raised between the
two: every other thread then blocks on it forever.  Both cores put an
interrupt off while the target thread's innermost frame, or its caller, runs
code from one of these files, and send it again shortly after (and likewise
inside ``fastpath.uninterruptible()``).

Weak-reference callbacks (``weakref.py``, ``_weakrefset.py``) are on the list
too: the garbage collector runs them at any point of the interrupted code, and
an exception raised in one is "ignored" (printed as unraisable), so an
interrupt landing there would be lost and reported as an error of its own.
"""

from __future__ import annotations

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


def frame_is_critical(frame: Optional[FrameType]) -> bool:
    """Is `frame` (or its caller) in one of the critical modules?"""
    for _ in range(2):
        if frame is None:
            return False
        if frame.f_code.co_filename.startswith(CRITICAL_FILES):
            return True
        frame = frame.f_back
    return False
