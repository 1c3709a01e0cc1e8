"""Compile Cython sources for the benchmarks into ``benchmarks/_build/`` and import them.

The build runs Cython's ``cythonize`` and setuptools' ``build_ext`` in a subprocess (so
setuptools' global state and output stay out of the benchmark process). A module is
rebuilt only when missing or older than its source. Raises RuntimeError with the
compiler's output when the build fails.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
BUILD = HERE / "_build"

SETUP = """
import sys
from setuptools import Extension, setup
from Cython.Build import cythonize

build, sources = sys.argv[1], sys.argv[2:]
setup(
    name="leadership-benchmark-modules",
    script_args=["build_ext", "--build-lib", build, "--build-temp", build + "/temp"],
    ext_modules=cythonize(
        [Extension(source.rsplit("/", 1)[-1][:-4], [source]) for source in sources],
        build_dir=build, quiet=True, compiler_directives={"language_level": "3"},
    ),
)
"""


def _built(name: str, directory: Path) -> Path | None:
    """The module built for this interpreter (its extension suffix: other Pythons' differ)."""
    found = [directory / (name + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    return next((path for path in found if path.exists()), None)


def load_modules(sources: list[Path], directory: Path = BUILD) -> list[ModuleType]:
    """Build the ``.pyx`` ``sources`` (module name: the file's stem) into ``directory``
    when needed, and import them."""
    stale = [
        source
        for source in sources
        if (built := _built(source.stem, directory)) is None
        or built.stat().st_mtime < source.stat().st_mtime
    ]
    if stale:
        directory.mkdir(parents=True, exist_ok=True)
        root = Path(os.path.commonpath([directory, *[source.parent for source in stale]]))
        done = subprocess.run(
            [
                sys.executable, "-c", SETUP, str(directory.relative_to(root)),
                *[str(source.relative_to(root)) for source in stale],
            ],
            cwd=root, capture_output=True, text=True, check=False,
        )  # fmt: skip
        missing = [source.name for source in stale if _built(source.stem, directory) is None]
        if done.returncode != 0 or missing:
            raise RuntimeError(
                f"building {[source.name for source in stale]} failed "
                f"(exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    return [importlib.import_module(source.stem) for source in sources]


def load_baseline() -> ModuleType:
    """The compiled ``benchmarks/_baseline.pyx``, built first when missing or stale."""
    (module,) = load_modules([HERE / "_baseline.pyx"])
    return module
