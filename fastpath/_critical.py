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
import sys
import threading
from functools import partial
from itertools import accumulate, chain, compress, repeat, takewhile
from operator import call, is_not
from types import CodeType, FrameType
from typing import Any, Callable, Dict, List, Optional, Tuple

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


def _gil_serialises() -> bool:
    """Does holding the GIL keep every other thread still (not 3.13t/3.14t with
    the GIL off, where the target runs during the look whatever it does)?"""
    enabled = getattr(sys, "_is_gil_enabled", None)
    return enabled is None or bool(enabled())


def _collector_off(*steps: Callable[[], object]) -> None:
    """Call the zero-argument C callables `steps` in one C call (``list.extend``
    over ``map(call, ...)``) with the collector off, turning it back on (only if
    it was on) inside that same call.  No bytecode runs between them, so a GIL
    build does not let the GIL go: no other thread sees the collector off, and
    no allocation in `steps` starts a collection (whose Python callbacks could
    let another thread run).  An exception from a step propagates, with the
    collector back as it was."""
    was_on: List[bool] = []
    done: List[object] = []
    try:
        done.extend(map(call, chain(
            (partial(was_on.extend, map(call, (gc.isenabled,))), gc.disable), steps,
            compress((gc.enable,), iter(was_on)))))
    finally:
        if was_on and was_on[0] and len(done) < len(steps) + 3:
            gc.enable()             # a step raised: the collector on again


def stack(frame: Any, depth: int) -> List[Any]:
    """`frame` and its callers, innermost first, at most `depth` of them.

    All the frame objects are made with the collector off and the GIL held
    (`_collector_off`); the objects are then held, so the frames are safe to
    read later whatever the target does (a frame it returns from keeps its
    data).  A caller without ``f_back`` (a torn look) ends the list."""
    frames: List[Any] = []
    walk = partial(frames.extend, takewhile(partial(is_not, None), accumulate(
        repeat("f_back", depth - 1), getattr, initial=frame)))
    try:
        if _gil_serialises():
            _collector_off(walk)
        else:
            walk()
    except AttributeError:
        pass                        # what came before it
    return frames


def current_frame(ident: int) -> Optional[FrameType]:
    """Thread `ident`'s innermost frame (``sys._current_frames()``, which makes
    a frame object for every thread while holding the interpreter's thread-list
    lock: with the collector off, no collection's callback can let the GIL go
    while that lock is held).  One way Python code still runs in that call: an
    application's audit hook (``sys.addaudithook``) for the
    ``sys._current_frames`` event, which could see the collector off."""
    got: List[Dict[int, FrameType]] = []
    _collector_off(partial(got.extend, map(call, (sys._current_frames,))))
    return got[0].get(ident)


def frame_is_critical(frame: Optional[FrameType]) -> bool:
    """Is `frame` (or its caller) in one of the critical modules, or is a
    ``__del__`` method or a ``gc.callbacks`` function on its stack?  (The
    twin's own gc callback marks a collection only from the moment it runs: an
    application's callback may run before it.)  Anything on the stack that is
    not a frame means the look was torn: yes (the interrupt is put off, and
    the next tick looks again)."""
    if frame is None:
        return False
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    for depth, f in enumerate(stack(frame, FINALIZER_DEPTH)):
        code = getattr(f, "f_code", None)
        if not isinstance(code, CodeType):
            return True
        if depth < 2 and code.co_filename.startswith(CRITICAL_FILES):
            return True
        if code.co_name == "__del__" or code in callbacks:
            return True
    return False


def thread_is_critical(ident: int) -> bool:
    """Must an interrupt for thread `ident` be put off?  With the GIL off
    (3.13t/3.14t, ``PYTHON_GIL=0``) the target runs while it would be looked at
    and reading a running thread's frames can crash, so then, as in the
    compiled core, only a running collection is seen."""
    if collecting_in == ident:
        return True
    return _gil_serialises() and frame_is_critical(current_frame(ident))
