"""The C lease clock, built from the generated ``leadership/_clock.c``.

The build backend (build_backend/leadership_build.py) decides whether a build is compiled
or pure, generates the C when needed, writes a pure build's ``leadership/_pure_build.py``
and falls back; this file only describes the two builds. A pure build
(``LEADERSHIP_PURE_BUILD`` set by the backend) has no extension, so its wheel is
``py3-none-any``. A compiled build has no debug information and is stripped, so the shared
object holds no build path and is the same from any directory.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class StrippedBuildExt(build_ext):
    """Compiles without debug information and links stripped, with GCC-style compilers."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":
            ext.extra_compile_args = [*ext.extra_compile_args, "-g0"]
            ext.extra_link_args = [*ext.extra_link_args, "-s"]
        super().build_extension(ext)


def extensions() -> list[Extension]:
    if os.environ.get("LEADERSHIP_PURE_BUILD"):
        return []
    return [Extension("leadership._clock", ["leadership/_clock.c"])]


setup(ext_modules=extensions(), cmdclass={"build_ext": StrippedBuildExt})
