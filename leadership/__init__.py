"""A distributed leadership flag on PostgreSQL (or SQLite) with a cheap, safe ``raised()``.

>>> flag = leadership.new_flag().handle("sqlite:///flags.db").name("jobs").build()
>>> if flag.raised(): ...

The public API is what this module exports, plus :mod:`leadership.testing` (the history
witness and overlap checker for users' own tests). Every other module is internal and may
change without notice. ``IMPLEMENTATION`` says which lease clock is active: "compiled" or
"python".
"""

from __future__ import annotations

# Import cost: ``import leadership`` loads the modules below and, of the standard library,
# little more than threading and weakref (benchmarks/import_cost.py gates it against
# ``import sqlite3``). The rest is imported where first needed: by ``build()`` the
# backend with its driver, logging, and prometheus_client when metrics are on; asyncio
# by the async methods; signal by close_on_signals. Modules on this path write
# ``TYPE_CHECKING = False`` instead of importing it: typing, with the re and enum it
# imports, costs more to import than the whole package.
from .builder import FlagBuilder, GroupBuilder, new_flag, new_group
from .clock import IMPLEMENTATION
from .errors import (
    ConfigurationError,
    LeadershipError,
    LeadershipLost,
    SchemaError,
    StoreUnavailable,
)
from .flag import Flag
from .signals import close_on_signals
from .timing import SAFETY_MARGIN

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see below)
if TYPE_CHECKING:
    from .group import FlagGroup

__all__ = [
    "IMPLEMENTATION",
    "SAFETY_MARGIN",
    "ConfigurationError",
    "Flag",
    "FlagBuilder",
    "FlagGroup",
    "GroupBuilder",
    "LeadershipError",
    "LeadershipLost",
    "SchemaError",
    "StoreUnavailable",
    "__version__",
    "close_on_signals",
    "new_flag",
    "new_group",
]


def __getattr__(name: str) -> object:
    """``FlagGroup``, imported on first use (it brings the renewal loop with it)."""
    if name == "FlagGroup":
        from .group import FlagGroup

        return FlagGroup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
"""The package version (the only place it is written; pyproject.toml reads it)."""
