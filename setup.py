"""Build the optional C extension; fall back to the pure-Python twin when it cannot be built.

``LEADERSHIP_NO_EXTENSIONS=1`` skips the extension on purpose. A failed compile
prints a banner and installs the pure-Python package: never a broken install.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BANNER = """
*********************************************************************
* leadership: the C extension {what}.
* Installing the pure-Python implementation instead: it is correct
* but raised() is slower. leadership.IMPLEMENTATION tells which is
* active. Install a C compiler and Python headers to get the fast one.
*********************************************************************
"""


class OptionalBuildExt(build_ext):
    """A build_ext that turns a failed compile into a warning and a pure install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            self._fall_back(error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            self._fall_back(error)

    @staticmethod
    def _fall_back(error: Exception) -> None:
        sys.stderr.write(BANNER.format(what=f"could not be built ({error})"))


def extensions() -> list[Extension]:
    if os.environ.get("LEADERSHIP_NO_EXTENSIONS"):
        sys.stderr.write(BANNER.format(what="was skipped (LEADERSHIP_NO_EXTENSIONS is set)"))
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write(BANNER.format(what="needs Cython to build"))
        return []
    return cythonize(
        [Extension("leadership._clock", ["leadership/_clock.pyx"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
