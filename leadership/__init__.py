"""A distributed leadership flag on PostgreSQL (or SQLite) with a cheap, safe ``raised()``.

>>> flag = leadership.new_flag().handle("sqlite:///flags.db").name("jobs").build()
>>> if flag.raised(): ...

The public API is what this module exports, plus :mod:`leadership.testing` (the history
witness and overlap checker for users' own tests). Every other module is internal and may
change without notice. ``IMPLEMENTATION`` says which lease clock is active: "compiled" or
"python".
"""

from __future__ import annotations

from .builder import FlagBuilder, new_flag
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

__all__ = [
    "IMPLEMENTATION",
    "SAFETY_MARGIN",
    "ConfigurationError",
    "Flag",
    "FlagBuilder",
    "LeadershipError",
    "LeadershipLost",
    "SchemaError",
    "StoreUnavailable",
    "__version__",
    "close_on_signals",
    "new_flag",
]

__version__ = "0.1.0"
"""The package version (the only place it is written; pyproject.toml reads it)."""
