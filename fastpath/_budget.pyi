"""Types of the compiled core (``_budget.pyx``).

Its classes and functions are typed by the pure-Python twin, whose names,
signatures and docstrings ``tests/test_parity.py`` keeps identical to the
compiled ones; what only the compiled core has is declared here.
"""

from typing import Optional

from ._budget_py import ExecutionBudget as ExecutionBudget
from ._budget_py import ExecutionConstraints as ExecutionConstraints
from ._budget_py import ExecutionStats as ExecutionStats
from ._budget_py import _awaitable as _awaitable
from ._budget_py import _EnforcerCore as _EnforcerCore
from ._budget_py import _reseed_sampler as _reseed_sampler
from ._budget_py import _RuleState as _RuleState
from ._budget_py import Rule as Rule
from ._budget_py import current_budget as current_budget
from ._budget_py import preemption_info as preemption_info
from ._budget_py import set_preemption as set_preemption
from ._budget_py import uninterruptible as uninterruptible
from .typedefs import BuildInfo

__all__: list[str]

def build_info() -> BuildInfo: ...
def getswitchinterval() -> float: ...
def setswitchinterval(interval: float) -> None: ...
def _measure_arm_disarm(n: int) -> float: ...
def _slot_state() -> Optional[dict[str, int | bool]]: ...
def _memory_table_info() -> dict[str, int | bool]: ...
def _memory_table_limit(slots: int) -> int: ...
def _shutdown_watchdog() -> None: ...
