"""The lease clock: both twins (compiled and pure) in one run, and the selector that picks one.

Tests that depend on the implementation take the ``clock_module`` fixture (see conftest):
they run once on ``leadership._clock_py`` and once on ``leadership._clock``. The selector
(:mod:`leadership.clock`) is re-executed in-process under each condition, and a flag on the
pure twin runs end to end in a child process with ``LEADERSHIP_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import leadership
import leadership._clock_py
import leadership.clock
from tests.conftest import EXPECT_COMPILED, compiled_clock


def run_selector(monkeypatch: pytest.MonkeyPatch, *, no_extensions: bool) -> ModuleType:
    """Execute a fresh copy of ``leadership/clock.py`` (the live module is left alone)
    with ``LEADERSHIP_NO_EXTENSIONS`` set or unset, and return it."""
    if no_extensions:
        monkeypatch.setenv("LEADERSHIP_NO_EXTENSIONS", "1")
    else:
        monkeypatch.delenv("LEADERSHIP_NO_EXTENSIONS", raising=False)
    spec = importlib.util.spec_from_file_location(
        "leadership._clock_selector_copy", leadership.clock.__file__
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twin_says_what_it_is(clock_module: ModuleType) -> None:
    expected = "python" if clock_module is leadership._clock_py else "compiled"
    assert expected == clock_module.IMPLEMENTATION


def test_new_lease_is_lowered(clock_module: ModuleType) -> None:
    lease = clock_module.Lease()
    assert lease.raised() is False
    assert lease.lease_remaining() == 0.0
    assert lease._deadline == 0


def test_extended_lease_is_raised_until_its_deadline(clock_module: ModuleType) -> None:
    lease = clock_module.Lease()
    start = clock_module.now_ns()
    lease._extend(start, 50_000_000)
    assert lease._deadline == start + 50_000_000
    assert lease.raised() is True
    seen_after = False
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up:
        before = clock_module.now_ns()
        raised = lease.raised()
        after = clock_module.now_ns()
        if after < lease._deadline:
            assert raised is True, "lowered before the deadline"
        if before >= lease._deadline:
            assert raised is False, "still raised after the deadline"
            seen_after = True
            break
    assert seen_after
    assert lease.lease_remaining() == 0.0


def test_lease_started_in_the_past_is_lowered(clock_module: ModuleType) -> None:
    lease = clock_module.Lease()
    lease._extend(clock_module.now_ns() - 2_000_000_000, 1_000_000_000)
    assert lease.raised() is False
    assert lease.lease_remaining() == 0.0


def test_lower_drops_the_deadline(clock_module: ModuleType) -> None:
    lease = clock_module.Lease()
    lease._extend(clock_module.now_ns(), 10_000_000_000)
    assert lease.raised() is True
    lease._lower()
    assert lease.raised() is False
    assert lease.lease_remaining() == 0.0
    assert lease._deadline == 0
    lease._extend(clock_module.now_ns(), 10_000_000_000)
    assert lease.raised() is True, "a lowered lease can be extended again"


def test_lease_remaining_counts_down_in_seconds(clock_module: ModuleType) -> None:
    lease = clock_module.Lease()
    lease._extend(clock_module.now_ns(), 10_000_000_000)
    first = lease.lease_remaining()
    assert isinstance(first, float)
    assert 9.0 < first <= 10.0
    time.sleep(0.02)
    second = lease.lease_remaining()
    assert 0.01 < first - second < 1.0


def test_lease_is_subclassable_with_attributes(clock_module: ModuleType) -> None:
    class Named(clock_module.Lease):  # type: ignore[name-defined,misc]
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    lease = Named("x")
    assert lease.name == "x"
    assert lease.raised() is False
    lease._extend(clock_module.now_ns(), 1_000_000_000)
    assert lease.raised() is True


def test_jittered_stays_within_bounds_and_spreads(clock_module: ModuleType) -> None:
    samples = [clock_module.jittered(2.0, 0.25) for _ in range(20_000)]
    assert all(1.5 <= value <= 2.5 for value in samples)
    assert min(samples) < 1.52
    assert max(samples) > 2.48
    assert 1.98 < statistics.fmean(samples) < 2.02
    # Uniform on [1.5, 2.5]: standard deviation 1 / sqrt(12) ~ 0.289.
    assert 0.27 < statistics.pstdev(samples) < 0.31
    assert len(set(samples)) > 19_000


def test_jittered_without_jitter_is_exact(clock_module: ModuleType) -> None:
    assert all(clock_module.jittered(0.3, 0.0) == 0.3 for _ in range(100))


def test_now_ns_is_monotonic_integer_nanoseconds(clock_module: ModuleType) -> None:
    previous = clock_module.now_ns()
    assert isinstance(previous, int)
    for _ in range(10_000):
        current = clock_module.now_ns()
        assert current >= previous
        previous = current
    start = clock_module.now_ns()
    time.sleep(0.05)
    elapsed = clock_module.now_ns() - start
    assert 40_000_000 <= elapsed < 2_000_000_000


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux-only")
def test_now_ns_reads_the_boottime_clock(clock_module: ModuleType) -> None:
    """The lease clock keeps counting while the machine is suspended (CLOCK_BOOTTIME)."""
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    value = clock_module.now_ns()
    after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert before <= value <= after


@pytest.mark.compiled_only
def test_both_twins_share_one_clock() -> None:
    compiled = compiled_clock()
    first = leadership._clock_py.now_ns()
    middle = compiled.now_ns()
    last = leadership._clock_py.now_ns()
    assert first <= middle <= last


def test_compiled_is_active_when_expected() -> None:
    """Fails in CI (LEADERSHIP_EXPECT_COMPILED=1) when the extension did not load."""
    if not EXPECT_COMPILED:
        pytest.skip("LEADERSHIP_EXPECT_COMPILED is not set")
    assert leadership.IMPLEMENTATION == "compiled", (
        "the compiled lease clock was expected but the pure-Python twin is active"
    )
    assert leadership.clock.Lease is compiled_clock().Lease


def test_active_implementation_is_consistent() -> None:
    assert leadership.IMPLEMENTATION in ("compiled", "python")
    assert leadership.IMPLEMENTATION == leadership.clock.IMPLEMENTATION
    module = leadership._clock_py if leadership.IMPLEMENTATION == "python" else compiled_clock()
    assert leadership.clock.Lease is module.Lease
    assert leadership.clock.now_ns is module.now_ns
    assert leadership.clock.jittered is module.jittered


def exports_of(module: ModuleType) -> tuple[object, ...]:
    return (module.IMPLEMENTATION, module.Lease, module.now_ns, module.jittered)


def test_selector_picks_the_pure_twin_without_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The compiled module is not even tried: an import of it would raise here.
    monkeypatch.setitem(sys.modules, "leadership._clock", None)
    selector = run_selector(monkeypatch, no_extensions=True)
    assert exports_of(selector) == exports_of(leadership._clock_py)
    assert selector.IMPLEMENTATION == "python"


@pytest.mark.compiled_only
def test_selector_picks_the_compiled_module_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    selector = run_selector(monkeypatch, no_extensions=False)
    assert exports_of(selector) == exports_of(compiled_clock())
    assert selector.IMPLEMENTATION == "compiled"


def test_selector_warns_and_falls_back_when_the_extension_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "leadership._clock", None)  # its import fails
    monkeypatch.setitem(sys.modules, "leadership._pure_build", None)  # no build record
    with pytest.warns(RuntimeWarning, match="using the pure-Python lease clock") as caught:
        selector = run_selector(monkeypatch, no_extensions=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "LEADERSHIP_NO_EXTENSIONS=1" in message, "the warning says how to silence it"
    assert "leadership._clock" in message, "the warning carries the import error"
    assert "--no-cache-dir" in message, "the command to rebuild bypasses pip's cache"
    assert exports_of(selector) == exports_of(leadership._clock_py)


@pytest.mark.parametrize(
    ("value", "chosen"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" yes ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("", False),
        (None, False),
        ("on", False),
    ],
)
def test_only_the_documented_values_choose_the_pure_twin(value: str | None, chosen: bool) -> None:
    assert leadership.clock.opted_out(value) is chosen


def record_module(monkeypatch: pytest.MonkeyPatch, reason: str, deliberate: bool) -> None:
    """Stand in for the ``leadership/_pure_build.py`` that a pure build writes."""
    record = ModuleType("leadership._pure_build")
    record.REASON = reason  # type: ignore[attr-defined]
    record.DELIBERATE = deliberate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "leadership._pure_build", record)


def test_a_deliberate_pure_build_does_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "leadership._clock", None)
    record_module(monkeypatch, "deliberate: LEADERSHIP_NO_EXTENSIONS was set", deliberate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selector = run_selector(monkeypatch, no_extensions=False)
    assert selector.IMPLEMENTATION == "python"


def test_an_unintended_pure_build_warns_with_its_recorded_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "leadership._clock", None)
    record_module(monkeypatch, "unintended: no C compiler was found", deliberate=False)
    with pytest.warns(RuntimeWarning, match="because unintended: no C compiler was found"):
        selector = run_selector(monkeypatch, no_extensions=False)
    assert selector.IMPLEMENTATION == "python"


IMPORTS = {
    "import": "import leadership  # the user's import\nprint(leadership.IMPLEMENTATION)\n",
    "import_module": (
        "import importlib\n"
        "print(importlib.import_module('leadership').IMPLEMENTATION)  # the user's import\n"
    ),
    # a module of the user's whose name starts like the package's directory
    "sibling": "import leadership_jobs  # the user's import\n",
}


@pytest.mark.parametrize("how", sorted(IMPORTS))
def test_the_import_warning_points_at_the_users_import(tmp_path: Path, how: str) -> None:
    """In a copy of the package without its extension, the warning names the user's file and
    line, not a module of ours nor the import machinery."""
    root = Path(leadership.__file__).parent
    site = tmp_path / "site"
    shutil.copytree(
        root,
        site / "leadership",
        ignore=shutil.ignore_patterns("*.so", "_pure_build.py", "__pycache__"),
    )
    (site / "leadership_jobs.py").write_text(IMPORTS["import"])
    script = tmp_path / "app.py"
    script.write_text(IMPORTS[how])
    importer = site / "leadership_jobs.py" if how == "sibling" else script
    # -S: no site start-up, so no editable-install finder maps leadership._clock back to the
    # checkout; the dependencies come from site-packages on the path, after the copy.
    path = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("LEADERSHIP_NO_EXTENSIONS", None)
    done = subprocess.run(
        [sys.executable, "-S", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "python"
    lines = importer.read_text().splitlines()
    line = next(number for number, text in enumerate(lines, 1) if "the user's import" in text)
    expected = f"{importer}:{line}: RuntimeWarning: leadership: using the pure"
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count("RuntimeWarning") == 1


PURE_FLAG = textwrap.dedent(
    """
    import sys

    import leadership
    import leadership._clock_py as pure

    assert leadership.IMPLEMENTATION == "python", leadership.IMPLEMENTATION
    assert "leadership._clock" not in sys.modules, "the compiled module was loaded"
    flag = (
        leadership.new_flag().handle(sys.argv[1]).name("pure").process("p1")
        .interval(0.6).jitter(0.0).timeout(0.15).build()
    )
    try:
        assert isinstance(flag, pure.Lease)
        assert type(flag).raised is pure.Lease.raised
        assert flag.wait_raised(10), "not raised within 10 s"
        assert flag.raised() and flag.lease_remaining() > 0
    finally:
        flag.close()
    assert not flag.raised() and flag.lease_remaining() == 0.0
    print("raised and closed on", leadership.IMPLEMENTATION)
    """
)


def test_flag_runs_on_the_pure_twin_without_extensions(tmp_path: Path) -> None:
    """The public API end to end on the pure lease, as a ``LEADERSHIP_NO_EXTENSIONS=1``
    install runs it (its own interpreter: the live one has picked its lease type)."""
    env = {**os.environ, "LEADERSHIP_NO_EXTENSIONS": "1"}
    env.pop("LEADERSHIP_EXPECT_COMPILED", None)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", PURE_FLAG, f"sqlite:///{tmp_path / 'flags.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.strip() == "raised and closed on python"
    assert done.stderr == ""


def test_flag_raised_is_the_lease_method_itself(
    make_flag: Callable[..., leadership.Flag], tmp_path: Path
) -> None:
    """``flag.raised()`` dispatches straight into the lease's method: Flag does not wrap it."""
    assert "raised" not in vars(leadership.Flag)
    assert "lease_remaining" not in vars(leadership.Flag)
    assert leadership.Flag.raised is leadership.clock.Lease.raised
    flag = make_flag(f"sqlite:///{tmp_path / 'flags.db'}", "p1")
    assert type(flag).raised is leadership.clock.Lease.raised
    assert isinstance(flag, leadership.clock.Lease)
