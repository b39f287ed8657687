"""Shared pieces of the benchmark suite: the reference function, the two cores, the machine.

Imported by ``bench/conftest.py``, the benchmark modules, ``bench/lateness.py``,
``bench/memhook.py`` and ``bench/run.py``.  Keep it free of pytest.
"""

from __future__ import annotations

import os
import platform
import sys
import types
from collections.abc import Callable
from typing import Any

import fastpath
from fastpath import _budget_py, _histogram_py, enforcer, errors

try:
    from fastpath import _budget as _compiled
    from fastpath import _histogram as _compiled_histogram
except ImportError:  # pragma: no cover - the suite reports it
    _compiled = None
    _compiled_histogram = None


def f() -> None:
    """The reference: a bare Python function call.  Every ratio is against it."""


def call_f() -> None:
    """The reference for benchmarks that need a wrapper function around the
    measured expression: the same wrapper around a bare ``f()`` call.

    ``T(wrapper around X) - T(call_f)`` is the cost of ``X`` minus the cost of ``f()``.
    """
    f()


def work() -> list[str]:
    """The allocation-heavy workload of the memory goals (201 allocations)."""
    return [str(i) for i in range(200)]


# The histogram value: a typical rule latency (1.23 ms), the same for every recorder.
HIST_VALUE = 1_234_567

IMPLS = ("compiled", "python")


def core(kind: str) -> types.SimpleNamespace:
    """The public names bound to one core: "compiled" (the extension) or "python" (the twin)."""
    if kind == "compiled":
        if _compiled is None or _compiled_histogram is None:
            raise RuntimeError("the compiled core is not built: run `make bench`")
        mod, hist = _compiled, _compiled_histogram
    elif kind == "python":
        mod, hist = _budget_py, _histogram_py
    else:
        raise ValueError(kind)
    return types.SimpleNamespace(
        kind=kind,
        module=mod,
        ExecutionConstraints=mod.ExecutionConstraints,
        ExecutionBudget=mod.ExecutionBudget,
        LatencyHistogram=hist.LatencyHistogram,
        ConstraintEnforcer=enforcer._bind_enforcer(mod),
        RuleType=enforcer.RuleType,
        ConstraintViolation=errors.ConstraintViolation,
    )


def stop_twin_watchdog() -> None:
    """Stop the pure-Python twin's watchdog thread.

    It is a Python thread that wakes every 0.5 ms for as long as the process
    lives and takes the GIL each time; left running it would perturb every
    benchmark measured after the first twin budget.  It restarts by itself at
    the next twin budget.
    """
    _budget_py._stop_watchdog()


def _inner_loop(n_args: int) -> Callable[..., None]:
    """``loop(n, fn, a0, a1, ...)`` calling ``fn(a0, a1, ...)`` n times, with the
    function and its arguments as fast locals, as timeit does (but with GC on)."""
    params = "".join(f", a{i}" for i in range(n_args))
    src = (f"def loop(_n, fn{params}):\n"
           f"    for _ in range(_n):\n"
           f"        fn({params[2:]})\n")
    namespace: dict[str, Any] = {}
    exec(src, namespace)  # noqa: S102 - a fixed template, like timeit's
    return namespace["loop"]  # type: ignore[no-any-return]


def measure(benchmark: Any, group: str, key: str, impl: str, fn: Callable[..., Any],
            *args: Any, inner: int | None = None, **info: Any) -> Any:
    """Time ``fn(*args)`` under ``group``, tagged ``key``/``impl``.

    Each pytest-benchmark round runs an inner loop of ``inner`` direct calls
    (chosen so a round lasts ~2 ms, at most 1000 calls): pytest-benchmark's own
    ``fn(*args)`` dispatch would otherwise add ~30 ns to every call on both
    sides of every ratio.  ``bench/run.py`` divides by ``inner``.  ``info`` goes
    into ``extra_info`` too (``minus="f"`` or ``minus="call_f"`` names the
    reference whose time is subtracted to get the overhead).
    """
    loop = _inner_loop(len(args))
    if inner is None:
        import time

        t0 = time.perf_counter()
        loop(3, fn, *args)
        once = (time.perf_counter() - t0) / 3
        inner = max(1, min(1000, int(2e-3 / max(once, 1e-9))))
    benchmark.group = group
    benchmark.extra_info.update(key=key, impl=impl, inner=inner, **info)
    return benchmark(loop, inner, fn, *args)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(clock: str | None = None) -> dict[str, Any]:
    """CPU model, cores, Python, fastpath's clock (after its watchdog calibrated it)."""
    if clock is None and _compiled is not None:
        clock = _compiled.preemption_info()["clock"]
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "fastpath": fastpath.__version__,
        "fastpath_clock": clock,
        "switch_interval_s": sys.getswitchinterval(),
    }
