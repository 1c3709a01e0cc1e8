"""The build backend: setuptools, plus Cython only when the C must be generated.

Contract (PEP 517 hooks, everything else is setuptools.build_meta's):

- A source tree whose ``leadership/_clock.c`` is current (an sdist, which always carries
  it) builds with setuptools and a C compiler alone; a checkout asks for Cython to
  generate the C (it is never committed).
- A wheel is compiled when it can be. When it cannot (no C compiler, no Python headers,
  no C and no Cython, a failing compile) the build does not fail: it makes the pure
  ``py3-none-any`` wheel, records why in the package, and says so in one short warning
  on the installer's own output as well as its own.
- ``LEADERSHIP_NO_EXTENSIONS=1`` (or ``true``/``yes``; nothing else counts) builds the pure
  wheel on purpose, recorded as deliberate: no warning at build or at import.
- Config setting ``implementation``: ``compiled`` makes any fallback an error (release
  wheels); ``pure`` makes the universal pure wheel for an index, whose users did not choose
  it, so it warns at import.
- With ``SOURCE_DATE_EPOCH`` set, the sdist is byte-for-byte reproducible (the wheel already
  is: setuptools dates its entries by it, and setup.py builds the extension without paths).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shlex
import shutil
import sys
import sysconfig
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import setuptools
from setuptools import build_meta
from setuptools.build_meta import (  # the hooks not overridden here
    get_requires_for_build_sdist as _setuptools_requires_for_sdist,
)
from setuptools.build_meta import (
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

PYX = Path("leadership/_clock.pyx")
C_SOURCE = PYX.with_suffix(".c")
CYTHON = "Cython>=3.0"
PURE_BUILD = "LEADERSHIP_PURE_BUILD"
"""How this backend tells setup.py to leave the extension out, and why (internal)."""
OPT_OUT = "LEADERSHIP_NO_EXTENSIONS"
OPT_OUT_VALUES = frozenset({"1", "true", "yes"})
DELIBERATE = "deliberate: LEADERSHIP_NO_EXTENSIONS was set when it was built"
UNIVERSAL = "the universal pure-Python wheel was installed"

SETUPTOOLS_FLOOR = (77, 0, 1)
"""The first setuptools that reads pyproject.toml's SPDX ``license`` string (76.1 cannot)."""

ConfigSettings = Mapping[str, Any] | None


def _check_setuptools(version: str = setuptools.__version__) -> None:
    """Without build isolation pip does not check build requirements: say what is missing."""
    found = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    if found < SETUPTOOLS_FLOOR:
        floor = ".".join(map(str, SETUPTOOLS_FLOOR))
        raise RuntimeError(
            f"leadership needs setuptools>={floor} to build, found {version}: "
            f"pip install 'setuptools>={floor}' (or build with build isolation)"
        )


_check_setuptools()


# -- the PEP 517 hooks ------------------------------------------------------------------


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    """An sdist carries the generated C: Cython unless it is already current."""
    extra = [] if _c_is_current() else [CYTHON]
    return [*_setuptools_requires_for_sdist(config_settings), *extra]


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    """Setuptools' own, plus Cython only when the C must be generated for a compiled build."""
    return [
        *build_meta.get_requires_for_build_wheel(config_settings),
        *_cython_if_needed(config_settings),
    ]


def get_requires_for_build_editable(config_settings: ConfigSettings = None) -> list[str]:
    """As for a wheel."""
    return [
        *build_meta.get_requires_for_build_editable(config_settings),
        *_cython_if_needed(config_settings),
    ]


def build_sdist(sdist_directory: str, config_settings: ConfigSettings = None) -> str:
    """The sdist, with the generated C in it; reproducible given SOURCE_DATE_EPOCH."""
    _generate_c()
    name = build_meta.build_sdist(sdist_directory, config_settings)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        _normalise_sdist(Path(sdist_directory) / name, int(epoch))
    return name


def build_wheel(
    wheel_directory: str,
    config_settings: ConfigSettings = None,
    metadata_directory: str | None = None,
) -> str:
    """A compiled wheel when possible, else the pure wheel with the reason recorded."""

    def build() -> str:
        return build_meta.build_wheel(wheel_directory, config_settings, metadata_directory)

    return _build(build, config_settings)


def build_editable(
    wheel_directory: str,
    config_settings: ConfigSettings = None,
    metadata_directory: str | None = None,
) -> str:
    """As for a wheel, for ``pip install -e``."""

    def build() -> str:
        return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)

    return _build(build, config_settings)


# -- deciding -------------------------------------------------------------------------


def _mode(config_settings: ConfigSettings) -> str:
    mode = str((config_settings or {}).get("implementation", "auto"))
    if mode not in ("auto", "compiled", "pure"):
        raise ValueError(
            f"config setting implementation={mode!r}: expected 'auto', 'compiled' or 'pure'"
        )
    return mode


def opted_out(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LEADERSHIP_NO_EXTENSIONS`` holds one of the documented values."""
    return environ.get(OPT_OUT, "").strip().lower() in OPT_OUT_VALUES


def _c_is_current() -> bool:
    """The C exists and is not older than the .pyx; an sdist's (it has PKG-INFO) always is."""
    if not C_SOURCE.exists():
        return False
    return Path("PKG-INFO").exists() or C_SOURCE.stat().st_mtime >= PYX.stat().st_mtime


def _cython_importable() -> bool:
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return True


def _cython_if_needed(config_settings: ConfigSettings) -> list[str]:
    if _mode(config_settings) == "pure" or opted_out() or _c_is_current():
        return []
    return [CYTHON]


def _compiler() -> str:
    """The C compiler setuptools will run: $CC, else the one Python was built with."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(command)[0]


def missing_prerequisite(
    *,
    compiler: str,
    compiler_found: bool,
    headers: Path,
    headers_found: bool,
    c_current: bool,
    cython: bool,
) -> str | None:
    """Why a compiled build cannot even start, in a user's words, or None if it can."""
    if not c_current and not cython:
        return f"{C_SOURCE} is missing or stale and Cython is not installed to generate it"
    if not compiler_found:
        return f"no C compiler was found (looked for {compiler!r})"
    if not headers_found:
        return f"the Python headers are missing (no {headers})"
    return None


def _probe() -> str | None:
    compiler = _compiler()
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return missing_prerequisite(
        compiler=compiler,
        compiler_found=shutil.which(compiler) is not None,
        headers=headers,
        headers_found=headers.exists(),
        c_current=_c_is_current(),
        cython=_cython_importable(),
    )


# -- building -------------------------------------------------------------------------


def _build(build: Any, config_settings: ConfigSettings) -> str:
    mode = _mode(config_settings)
    if mode == "pure":
        return _pure(build, UNIVERSAL)
    if opted_out():
        return _pure(build, DELIBERATE)
    cause = _probe()
    if cause is None:
        try:
            _generate_c()
            return str(build())
        except (Exception, SystemExit) as error:  # distutils reports a failed compile by exit
            if mode == "compiled":
                raise
            cause = f"the C compiler failed ({_last_line(error)})"
    if mode == "compiled":
        raise RuntimeError(f"leadership: a compiled build was required, but {cause}")
    warn_installer(fallback_warning(cause))
    return _pure(build, f"unintended: {cause}")


def _pure(build: Any, reason: str) -> str:
    with _environment({PURE_BUILD: reason}):
        return str(build())


def _generate_c() -> None:
    """Write leadership/_clock.c from the .pyx when it is not current (needs Cython)."""
    if _c_is_current():
        return
    from Cython.Build import cythonize

    cythonize([str(PYX)], compiler_directives={"language_level": "3"}, quiet=True, force=True)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


# -- telling the user -----------------------------------------------------------------


def fallback_warning(cause: str) -> str:
    """The one warning of a fallback build: the cause and the one command that fixes it."""
    version = _version()
    return (
        f"WARNING: leadership {version}: building the pure-Python implementation, because "
        f"{cause}.\n"
        "WARNING: it is correct, but raised() is about 3x slower. For the compiled one, install "
        "a C compiler and the Python headers (e.g. apt-get install gcc python3-dev), then run:\n"
        f'WARNING:   pip install --no-cache-dir --force-reinstall --no-deps "leadership=={version}"'
        "\n"
    )


def warn_installer(text: str) -> None:
    """Write ``text`` to our stderr and to the installer's, where its user looks.

    pip shows a build backend's output only with ``-v`` (pypa/pip#6634), so the warning
    also goes to the parent process's standard error when that is a different file from
    ours (on Linux, through /proc; appended, so a log file is not overwritten).
    """
    sys.stderr.write(text)
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        descriptor = os.open(f"/proc/{os.getppid()}/fd/2", os.O_WRONLY | os.O_APPEND)
        try:
            theirs, ours = os.fstat(descriptor), os.fstat(sys.stderr.fileno())
            if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                os.write(descriptor, text.encode())
        finally:
            os.close(descriptor)


def _version() -> str:
    for line in Path("leadership/__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "?"


# -- reproducible sdist ---------------------------------------------------------------


def _normalise_sdist(path: Path, epoch: int) -> None:
    """Rewrite the tarball: sorted members, dates clamped to ``epoch``, no owners, fixed gzip."""
    with tarfile.open(path, "r:gz") as source:
        members = sorted(source.getmembers(), key=lambda member: member.name)
        contents = {
            member.name: source.extractfile(member).read()  # type: ignore[union-attr]
            for member in members
            if member.isfile()
        }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as target:
        for member in members:
            member.mtime = min(int(member.mtime), epoch)
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.mode = 0o755 if member.isdir() or member.mode & 0o100 else 0o644
            member.pax_headers = {}
            data = contents.get(member.name)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=epoch) as compressed,
    ):
        compressed.write(buffer.getvalue())
