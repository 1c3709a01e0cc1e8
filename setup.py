"""The C lease clock, built from the generated ``leadership/_clock.c``.

The build backend (build_backend/leadership_build.py) decides whether a build is compiled
or pure, generates the C when needed, and falls back; this file only describes the two
builds. A pure build (``LEADERSHIP_PURE_BUILD`` set by the backend to the reason) has no
extension, so its wheel is ``py3-none-any``, and it carries the reason in
``leadership/_pure_build.py`` for the import-time warning. A compiled build has no debug
information and is stripped, so the shared object holds no build path and is the same
from any directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PURE_REASON = os.environ.get("LEADERSHIP_PURE_BUILD")
RECORD = '''"""Why this install of leadership is pure Python (written by its build)."""

REASON = {reason!r}
DELIBERATE = {deliberate!r}
'''


class StrippedBuildExt(build_ext):
    """Compiles without debug information and links stripped, with GCC-style compilers."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":
            ext.extra_compile_args = [*ext.extra_compile_args, "-g0"]
            ext.extra_link_args = [*ext.extra_link_args, "-s"]
        super().build_extension(ext)


class RecordingBuildPy(build_py):
    """Adds ``leadership/_pure_build.py`` to a pure build's package."""

    def run(self) -> None:
        super().run()
        if PURE_REASON is not None:
            target = Path(self.build_lib, "leadership", "_pure_build.py")
            target.write_text(
                RECORD.format(reason=PURE_REASON, deliberate=PURE_REASON.startswith("deliberate"))
            )


def extensions() -> list[Extension]:
    if PURE_REASON is not None:
        return []
    return [Extension("leadership._clock", ["leadership/_clock.c"])]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": StrippedBuildExt, "build_py": RecordingBuildPy},
)
