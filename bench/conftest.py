"""Fixtures of the benchmark suite (run it with ``make bench``, not ``make test``).

Every benchmark goes through ``_support.measure``, which files it under a ``group``
(related rows sit together in pytest-benchmark's table) and tags it with a
``key`` and an ``impl`` in ``extra_info``: ``bench/run.py`` finds its numbers
by those tags, never by parsing test names.

``impl`` is ``"compiled"`` (the extension), ``"python"`` (the pure-Python
twin), ``"reference"`` (the bare ``f()``) or the peer library's name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support


@pytest.fixture(params=_support.IMPLS)
def fp(request: pytest.FixtureRequest) -> Any:
    """The public names of one core: the compiled extension or the pure-Python twin."""
    return _support.core(request.param)


@pytest.fixture(autouse=True)
def _quiet_twin_watchdog():
    """Stop the twin's watchdog thread after every benchmark (see _support.stop_twin_watchdog)."""
    yield
    _support.stop_twin_watchdog()


def pytest_report_header(config: pytest.Config) -> str:
    info = _support.machine_info()
    return (f"fastpath bench: {info['cpu']}, {info['cores']} cores, python {info['python']}, "
            f"default core {_support.fastpath.IMPLEMENTATION}")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Drop the per-round timings from ``--benchmark-json`` (tens of MB; the stats stay).

    ``FASTPATH_BENCH_KEEP_DATA=1`` keeps them.
    """
    if os.environ.get("FASTPATH_BENCH_KEEP_DATA", "").strip() in ("", "0"):
        for bench in output_json.get("benchmarks", []):
            bench.pop("data", None)
            bench.get("stats", {}).pop("data", None)
