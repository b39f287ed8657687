"""Choose the cores: the compiled extensions, or the pure-Python twins on request.

``FASTPATH_NO_EXTENSIONS=1`` (any "on" word of ``_config.env_flag``) selects
the twin explicitly.  Otherwise the
compiled core is imported, and if it cannot be (a broken install), the import
error propagates: fastpath never falls back silently.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._config import env_flag

NO_EXTENSIONS = env_flag("FASTPATH_NO_EXTENSIONS", False)

IMPLEMENTATION = "python" if NO_EXTENSIONS else "compiled"
_SUFFIX = "_py" if NO_EXTENSIONS else ""

core: ModuleType = importlib.import_module(f"{__package__}._budget{_SUFFIX}")
histogram: ModuleType = importlib.import_module(f"{__package__}._histogram{_SUFFIX}")
quota: ModuleType = importlib.import_module(f"{__package__}._quota{_SUFFIX}")


def current_budget_any() -> object:
    """The current budget of whichever core is running one in this thread/task
    (the compiled core, or the twin when a test or a user picked it)."""
    import sys

    for name in (f"{__package__}._budget", f"{__package__}._budget_py"):
        mod = sys.modules.get(name)
        if mod is not None:
            budget = mod.current_budget()
            if budget is not None:
                return budget
    return None
