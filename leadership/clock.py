"""The lease clock, picked once at import: compiled unless told or unable.

The compiled :mod:`leadership._clock` is used unless ``LEADERSHIP_NO_EXTENSIONS`` holds
one of the documented values (``1``, ``true``, ``yes``; nothing else counts) or the
extension cannot be imported; then the pure-Python twin :mod:`leadership._clock_py` is.
An unintended fallback warns once (RuntimeWarning, attributed to the user's import);
a deliberate one does not: the variable set at run time, or a build made with it, which
records so in ``leadership/_pure_build.py``. ``IMPLEMENTATION`` says which is active
("compiled" or "python").
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing would be most of `import leadership`

__all__ = ["IMPLEMENTATION", "Lease", "jittered", "now_ns", "opted_out"]

OPT_OUT_VALUES = frozenset({"1", "true", "yes"})
PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep


def opted_out(value: str | None) -> bool:
    """Whether a ``LEADERSHIP_NO_EXTENSIONS`` value chooses the pure twin (1, true, yes).

    The build backend has its twin (build_backend/leadership_build.py, which cannot import
    the package); tests/test_build_backend.py and tests/test_clock.py check each against the
    documented values.
    """
    return (value or "").strip().lower() in OPT_OUT_VALUES


def _requirement() -> str:
    """``leadership==<installed version>``, or the bare name when none is installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"leadership=={version('leadership')}"
    except PackageNotFoundError:
        return "leadership"


def fallback_reason(error: ImportError) -> tuple[str, bool]:
    """Why the extension is absent, and whether that was chosen: the build's record, if any."""
    try:
        from ._pure_build import DELIBERATE, REASON  # type: ignore[import-not-found]
    except ImportError:
        return f"the extension is not built or does not load ({error})", False
    return str(REASON), bool(DELIBERATE)


def caller_outside_package() -> int:
    """The ``stacklevel`` that attributes a warning to the first frame of the user's code.

    Counted from the caller of this function (level 1). Skips, as :func:`warnings.warn`
    does, the import machinery's internal frames (uncounted), then this package's and the
    import helpers' (``importlib.import_module``, ``runpy`` for ``python -m``): counted.
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):
            if not name.startswith(PACKAGE_DIRECTORY) and not _import_helper(name):
                return level
            level += 1
        frame = frame.f_back  # type: ignore[assignment]
    return level


def _import_helper(filename: str) -> bool:
    """Whether a frame's file imports on someone's behalf (``importlib``, ``runpy``)."""
    return filename in ("<frozen runpy>", "<frozen importlib>") or filename.endswith(
        (os.sep + os.path.join("importlib", "__init__.py"), os.sep + "runpy.py")
    )


if TYPE_CHECKING or opted_out(os.environ.get("LEADERSHIP_NO_EXTENSIONS")):
    from ._clock_py import IMPLEMENTATION, Lease, jittered, now_ns
else:
    try:
        from ._clock import IMPLEMENTATION, Lease, jittered, now_ns
    except ImportError as error:  # pragma: no cover - depends on the install
        from ._clock_py import IMPLEMENTATION, Lease, jittered, now_ns

        reason, deliberate = fallback_reason(error)
        if not deliberate:
            import warnings

            warnings.warn(
                f"leadership: using the pure-Python lease clock, because {reason}; raised() is "
                "about 3.5x slower. For the compiled one, with a C compiler and the Python "
                "headers: pip install --no-cache-dir --force-reinstall --no-deps --no-binary "
                f'leadership "{_requirement()}". To choose the pure one knowingly, '
                "set LEADERSHIP_NO_EXTENSIONS=1.",
                RuntimeWarning,
                stacklevel=caller_outside_package(),
            )
