"""One parametrised fixture runs the whole suite on both cores.

``fp`` is a namespace with the public names bound to one core: the compiled
extension ("compiled") or the pure-Python twin ("python").
"""

from __future__ import annotations

import os
import sys
import sysconfig
import types

import pytest

# A free-threaded build (3.13t) turns the GIL on when it loads the compiled core, which
# does not declare Py_mod_gil, and says so with a RuntimeWarning; the many tests that run
# a child Python under -W error or read its stderr would see that.  Their children start
# with the GIL on instead (PYTHON_GIL=1: nothing to turn on, no warning), as this process
# runs after the import.  test_packaging checks the warning itself, without this.
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    os.environ.setdefault("PYTHON_GIL", "1")

import fastpath
from fastpath import _budget_py, _histogram_py, _quota_py, breaker, enforcer, errors

try:
    from fastpath import _budget as _compiled
except ImportError:  # pragma: no cover - reported by test_compiled_core_is_built
    _compiled = None

try:
    from fastpath import _histogram as _compiled_histogram
except ImportError:  # pragma: no cover - reported by make_namespace
    _compiled_histogram = None

try:
    from fastpath import _quota as _compiled_quota
except ImportError:  # pragma: no cover - reported by make_namespace
    _compiled_quota = None

CORES = {"compiled": _compiled, "python": _budget_py}
HISTOGRAMS = {"compiled": _compiled_histogram, "python": _histogram_py}
QUOTAS = {"compiled": _compiled_quota, "python": _quota_py}


def make_namespace(kind: str) -> types.SimpleNamespace:
    core = CORES[kind]
    histogram = HISTOGRAMS[kind]
    quota = QUOTAS[kind]
    if core is None or histogram is None or quota is None:
        pytest.fail("the compiled core is not built: run `make test`")
    ns = types.SimpleNamespace(kind=kind, core=core, histogram=histogram, quota=quota)
    for name in ("ExecutionConstraints", "ExecutionBudget", "ExecutionStats",
                 "set_preemption", "preemption_info", "_reseed_sampler",
                 "uninterruptible", "current_budget"):
        setattr(ns, name, getattr(core, name))
    ns.LatencyHistogram = histogram.LatencyHistogram
    ns.Quota = quota.Quota
    ns.LocalQuotaStore = quota.LocalQuotaStore
    for name in errors.__all__ + ["ExecutionInterrupted"]:
        setattr(ns, name, getattr(errors, name))
    ns.ConstraintEnforcer = enforcer._bind_enforcer(core)
    ns.RuleType = enforcer.RuleType
    ns.AuditEvent = enforcer.AuditEvent
    ns.CircuitBreaker = breaker._bind_breaker(core)
    ns.CircuitState = breaker.CircuitState
    ns.AdaptiveLimit = fastpath.AdaptiveLimit
    ns.Rule = core.Rule
    return ns


@pytest.fixture(params=["compiled", "python"], scope="session")
def fp(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    return make_namespace(request.param)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server for the session (tests/redis_server.py), stopped by PID."""
    from tests.redis_server import RedisServer

    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _preemption_stays_on():
    yield
    for core in CORES.values():
        if core is not None:
            core.set_preemption(True)


def pytest_report_header(config):
    return (f"fastpath {fastpath.__version__}: default core {fastpath.IMPLEMENTATION}; "
            f"python {sys.version.split()[0]}")
