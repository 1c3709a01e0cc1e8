"""The lease clock, picked once at import: compiled unless told or unable.

The compiled :mod:`leadership._clock` is used unless ``LEADERSHIP_NO_EXTENSIONS``
is set to a non-empty value or the extension cannot be imported; then the
pure-Python twin :mod:`leadership._clock_py` is, with a RuntimeWarning when the
extension was expected but missing. ``IMPLEMENTATION`` says which ("compiled" or "python").
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = ["IMPLEMENTATION", "Lease", "jittered", "now_ns"]

if TYPE_CHECKING or os.environ.get("LEADERSHIP_NO_EXTENSIONS"):
    from ._clock_py import IMPLEMENTATION, Lease, jittered, now_ns
else:
    try:
        from ._clock import IMPLEMENTATION, Lease, jittered, now_ns
    except ImportError as error:  # pragma: no cover - depends on the install
        import warnings

        from ._clock_py import IMPLEMENTATION, Lease, jittered, now_ns

        warnings.warn(
            f"leadership: the compiled lease clock is not available ({error}); using the "
            "pure-Python twin, whose raised() is about 3x slower. Reinstall with a C compiler, "
            "or set LEADERSHIP_NO_EXTENSIONS=1 to choose the pure twin knowingly.",
            RuntimeWarning,
            stacklevel=2,
        )
