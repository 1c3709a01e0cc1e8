"""The build backend's decisions, without building (tests/test_installs.py builds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "build_backend"))
import leadership_build as backend  # noqa: E402

sys.path.remove(str(ROOT / "build_backend"))


@pytest.mark.parametrize(
    ("value", "chosen"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("no", False), ("", False)],
)
def test_only_the_documented_values_opt_out(value: str, chosen: bool) -> None:
    assert backend.opted_out({"LEADERSHIP_NO_EXTENSIONS": value}) is chosen


def missing(
    *, compiler_found: bool = True, headers_found: bool = True, c_current: bool = True
) -> str | None:
    return backend.missing_prerequisite(
        compiler="gcc",
        compiler_found=compiler_found,
        headers=Path("/usr/include/python3.11/Python.h"),
        headers_found=headers_found,
        c_current=c_current,
        cython=False,
    )


def test_the_first_missing_prerequisite_is_named() -> None:
    assert missing() is None
    assert missing(compiler_found=False) == "no C compiler was found (looked for 'gcc')"
    assert "the Python headers are missing" in str(missing(headers_found=False))
    assert "Cython is not installed" in str(missing(c_current=False, compiler_found=False))


def test_a_required_compiled_build_refuses_the_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADERSHIP_NO_EXTENSIONS", "1")

    def build() -> str:
        raise AssertionError("nothing may be built")

    with pytest.raises(RuntimeError, match="implementation=compiled was asked for"):
        backend._build(build, {"implementation": "compiled"}, editable=False)


def test_an_unknown_implementation_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="implementation='fast'"):
        backend._mode({"implementation": "fast"})


@pytest.mark.parametrize(
    ("reason", "cause", "deliberate"),
    [
        (backend.DELIBERATE, "LEADERSHIP_NO_EXTENSIONS was set when it was built", True),
        (backend.UNIVERSAL, "the universal pure-Python wheel was installed", False),
        ("unintended: no C compiler was found", "no C compiler was found", False),
    ],
)
def test_the_record_states_the_cause_and_whether_it_was_chosen(
    reason: str, cause: str, deliberate: bool
) -> None:
    namespace: dict[str, object] = {}
    exec(backend.record_text(reason), namespace)
    assert (namespace["REASON"], namespace["DELIBERATE"]) == (cause, deliberate)


@pytest.mark.parametrize(
    ("version", "release"),
    [("77.0.1", (77, 0, 1)), ("80.9.0", (80, 9, 0)), ("78.0.0rc1", (78, 0, 0)), ("65.5", (65, 5))],
)
def test_setuptools_versions_are_compared_by_release(
    version: str, release: tuple[int, ...]
) -> None:
    assert backend._release(version) == release
