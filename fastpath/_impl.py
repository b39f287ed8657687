"""Choose the cores: the compiled extensions, or the pure-Python twins on request.

``FASTPATH_NO_EXTENSIONS=1`` selects the twin explicitly.  Otherwise the
compiled core is imported, and if it cannot be (a broken install), the import
error propagates: fastpath never falls back silently.
"""

from __future__ import annotations

import os
from types import ModuleType

NO_EXTENSIONS = os.environ.get("FASTPATH_NO_EXTENSIONS", "").strip() not in ("", "0")

core: ModuleType
histogram: ModuleType
if NO_EXTENSIONS:
    from . import _budget_py as core
    from . import _histogram_py as histogram

    IMPLEMENTATION = "python"
else:
    from . import _budget as core  # type: ignore[attr-defined, no-redef]
    from . import _histogram as histogram  # type: ignore[attr-defined, no-redef]

    IMPLEMENTATION = "compiled"
