"""The build backend: setuptools, plus Cython only when the C must be generated.

Contract (PEP 517 hooks; what is not said here is setuptools.build_meta's):

- A source tree whose ``leadership/_clock.c`` is current (an sdist, which always carries
  it) builds with setuptools (77.0.1 or newer, checked: without build isolation nobody else
  checks) and a C compiler alone; a checkout asks for Cython to generate the C (it is never
  committed).
- A wheel is compiled when it can be. When it cannot (no C compiler, no Python headers,
  no C and no Cython, a failing compile) the build does not fail: it makes the pure
  ``py3-none-any`` wheel, records why in the package (``leadership/_pure_build.py``; for an
  editable install, in the source tree, whose stale extension it removes) and says so in
  one short warning, on its own output and, since pip shows that only with ``-v``, on the
  installer's terminal or pipe.
- ``LEADERSHIP_NO_EXTENSIONS=1`` (or ``true``/``yes``; nothing else counts) builds the pure
  wheel on purpose, recorded as deliberate: no warning at build or at import.
- Config setting ``implementation``: ``compiled`` makes any fallback, the opt-out included,
  an error (release wheels); ``pure`` makes the universal pure wheel for an index, whose
  users did not choose it, so it warns at import.
- With ``SOURCE_DATE_EPOCH`` set, the sdist is byte-for-byte reproducible (the wheel already
  is: setuptools dates its entries by it, and setup.py builds the extension without paths).

This module must import on any Python 3 (pip asks it for metadata before it can tell a
user that the package needs Python 3.10), so it evaluates no newer syntax at run time.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import os
import re
import shlex
import shutil
import stat
import sys
import sysconfig
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

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
RECORD = Path("leadership/_pure_build.py")
CYTHON = "Cython>=3.0"
PURE_BUILD = "LEADERSHIP_PURE_BUILD"
"""How this backend tells setup.py to leave the extension out (internal)."""
OPT_OUT = "LEADERSHIP_NO_EXTENSIONS"
OPT_OUT_VALUES = frozenset({"1", "true", "yes"})
DELIBERATE = "deliberate: LEADERSHIP_NO_EXTENSIONS was set when it was built"
UNIVERSAL = "universal: the universal pure-Python wheel was installed"
SETUPTOOLS_FLOOR = (77, 0, 1)
"""The first setuptools that reads pyproject.toml's SPDX ``license`` string (76.1 cannot)."""

ConfigSettings = Optional[Mapping[str, Any]]  # noqa: UP045 (evaluated at run time)
Build = Callable[[], Any]  # a setuptools hook bound to its arguments: returns the file's name


# -- the PEP 517 hooks ------------------------------------------------------------------


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    """An sdist carries the generated C: Cython unless it is already current."""
    own = _setuptools().get_requires_for_build_sdist(config_settings)
    return [*own, *([] if _c_is_current() else [CYTHON])]


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    """Setuptools' own, plus Cython only when the C must be generated for a compiled build."""
    own = _setuptools().get_requires_for_build_wheel(config_settings)
    return [*own, *_cython_if_needed(config_settings)]


def get_requires_for_build_editable(config_settings: ConfigSettings = None) -> list[str]:
    """As for a wheel."""
    own = _setuptools().get_requires_for_build_editable(config_settings)
    return [*own, *_cython_if_needed(config_settings)]


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: ConfigSettings = None
) -> str:
    """setuptools' own."""
    meta = _setuptools()
    return str(meta.prepare_metadata_for_build_wheel(metadata_directory, config_settings))


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: ConfigSettings = None
) -> str:
    """setuptools' own."""
    meta = _setuptools()
    return str(meta.prepare_metadata_for_build_editable(metadata_directory, config_settings))


def build_sdist(sdist_directory: str, config_settings: ConfigSettings = None) -> str:
    """The sdist, with the generated C in it; reproducible given SOURCE_DATE_EPOCH."""
    meta = _setuptools()
    _generate_c()
    name = str(meta.build_sdist(sdist_directory, config_settings))
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
    build = _setuptools().build_wheel
    return _build(
        functools.partial(build, wheel_directory, config_settings, metadata_directory),
        config_settings,
        editable=False,
    )


def build_editable(
    wheel_directory: str,
    config_settings: ConfigSettings = None,
    metadata_directory: str | None = None,
) -> str:
    """As for a wheel, for ``pip install -e``: the record and the extension live in the tree."""
    build = _setuptools().build_editable
    return _build(
        functools.partial(build, wheel_directory, config_settings, metadata_directory),
        config_settings,
        editable=True,
    )


# -- deciding -------------------------------------------------------------------------


def _setuptools() -> ModuleType:
    """setuptools' backend, once its version is known to be enough."""
    floor = ".".join(map(str, SETUPTOOLS_FLOOR))
    advice = f"pip install 'setuptools>={floor}' (or build with build isolation)"
    try:
        import setuptools
        from setuptools import build_meta
    except ImportError:
        raise RuntimeError(f"leadership needs setuptools>={floor} to build: {advice}") from None
    version = setuptools.__version__
    if _release(version) < SETUPTOOLS_FLOOR:
        raise RuntimeError(f"leadership needs setuptools>={floor}, found {version}: {advice}")
    return build_meta


def _release(version: str) -> tuple[int, ...]:
    """The first three numbers of a version: "80.9.0" -> (80, 9, 0), "78.0.0rc1" -> (78, 0, 0)."""
    return tuple(int(re.match(r"\d*", part).group() or 0) for part in version.split(".")[:3])  # type: ignore[union-attr]


def _mode(config_settings: ConfigSettings) -> str:
    mode = str((config_settings or {}).get("implementation", "auto"))
    if mode not in ("auto", "compiled", "pure"):
        raise ValueError(
            f"config setting implementation={mode!r}: expected 'auto', 'compiled' or 'pure'"
        )
    return mode


def opted_out(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LEADERSHIP_NO_EXTENSIONS`` holds one of the documented values.

    The twin of ``leadership.clock.opted_out`` (the build cannot import the package).
    """
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


def _build(build: Build, config_settings: ConfigSettings, *, editable: bool) -> str:
    mode = _mode(config_settings)
    if mode == "pure":
        return _pure(build, UNIVERSAL, editable)
    if opted_out():
        if mode == "compiled":
            raise RuntimeError(
                f"leadership: implementation=compiled was asked for, but {OPT_OUT} is set"
            )
        return _pure(build, DELIBERATE, editable)
    cause = _probe()
    if cause is None:
        RECORD.unlink(missing_ok=True)  # a pure build's, left in the tree
        try:
            _generate_c()
            return str(build())
        except (Exception, SystemExit) as error:  # distutils reports a failed compile by exit
            if mode == "compiled":
                raise
            cause = f"the C compiler failed ({_last_line(error)})"
    if mode == "compiled":
        raise RuntimeError(f"leadership: a compiled build was asked for, but {cause}")
    warn_installer(fallback_warning(cause))
    return _pure(build, f"unintended: {cause}", editable)


def _pure(build: Build, reason: str, editable: bool) -> str:
    """A build without the extension, ``leadership/_pure_build.py`` saying why (``reason`` is
    ``kind: cause``). An editable install keeps the record in the tree and loses any extension
    built there before; a wheel takes the record along and leaves the tree as it was."""
    RECORD.write_text(record_text(reason))
    try:
        with _environment({PURE_BUILD: reason}):
            name = str(build())
    finally:
        if not editable:
            RECORD.unlink(missing_ok=True)
    if editable:
        for stale in PYX.parent.glob("_clock.*.so"):
            stale.unlink()
    return name


def record_text(reason: str) -> str:
    """The text of ``leadership/_pure_build.py`` for a pure build's ``kind: cause``."""
    kind, _, cause = reason.partition(": ")
    return (
        '"""Why this install of leadership is pure Python (written by its build)."""\n\n'
        f"REASON = {cause!r}\nDELIBERATE = {kind == 'deliberate'!r}\n"
    )


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
        "WARNING: it is correct, but raised() is about 3.5x slower. For the compiled one, "
        "install a C compiler and the Python headers (e.g. apt-get install gcc python3-dev), "
        "then run (with your sdist's path instead of the name if you installed from a file):\n"
        "WARNING:   pip install --no-cache-dir --force-reinstall --no-deps --no-binary "
        f'leadership "leadership=={version}"\n'
    )


def warn_installer(text: str) -> None:
    """Write ``text`` to our stderr and to the installer's terminal or pipe.

    pip shows a build backend's output only with ``-v`` (pypa/pip#6634), so the warning
    also goes to the parent process's standard error (on Linux, through /proc) when that is
    a terminal or a pipe other than ours. Never to a regular file (the installer writes it
    at its own offset and would overwrite the warning) nor a socket; never blocking.
    """
    sys.stderr.write(text)
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        descriptor = os.open(f"/proc/{os.getppid()}/fd/2", os.O_WRONLY | os.O_NONBLOCK)
        try:
            theirs, ours = os.fstat(descriptor), os.fstat(sys.stderr.fileno())
            visible = os.isatty(descriptor) or stat.S_ISFIFO(theirs.st_mode)
            if visible and (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                prefix = "\n" if os.isatty(descriptor) else ""  # after pip's spinner
                os.write(descriptor, (prefix + text).encode())
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
