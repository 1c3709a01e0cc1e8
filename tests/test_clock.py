"""The lease clock: both twins (compiled and pure) in the same process, and which one is active."""

from __future__ import annotations

import importlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import leadership
import leadership._clock_py
import leadership.clock

NO_EXTENSIONS = bool(os.environ.get("LEADERSHIP_NO_EXTENSIONS"))
EXPECT_COMPILED = bool(os.environ.get("LEADERSHIP_EXPECT_COMPILED"))


def _compiled() -> ModuleType:
    try:
        return importlib.import_module("leadership._clock")
    except ImportError as error:
        if NO_EXTENSIONS:
            pytest.skip(
                f"compiled leadership._clock not importable ({error}); "
                "LEADERSHIP_NO_EXTENSIONS is set, so a pure install is expected"
            )
        pytest.fail(f"compiled leadership._clock not importable: {error}")


@pytest.fixture(params=["python", "compiled"])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation of the lease clock module in turn."""
    if request.param == "python":
        return leadership._clock_py
    return _compiled()


def test_twin_says_what_it_is(twin: ModuleType) -> None:
    expected = "python" if twin is leadership._clock_py else "compiled"
    assert expected == twin.IMPLEMENTATION


def test_new_lease_is_lowered(twin: ModuleType) -> None:
    lease = twin.Lease()
    assert lease.raised() is False
    assert lease.lease_remaining() == 0.0
    assert lease._deadline == 0


def test_extended_lease_is_raised_until_its_deadline(twin: ModuleType) -> None:
    lease = twin.Lease()
    start = twin.now_ns()
    lease._extend(start, 50_000_000)
    assert lease._deadline == start + 50_000_000
    assert lease.raised() is True
    seen_after = False
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up:
        before = twin.now_ns()
        raised = lease.raised()
        after = twin.now_ns()
        if after < lease._deadline:
            assert raised is True, "lowered before the deadline"
        if before >= lease._deadline:
            assert raised is False, "still raised after the deadline"
            seen_after = True
            break
    assert seen_after
    assert lease.lease_remaining() == 0.0


def test_lease_started_in_the_past_is_lowered(twin: ModuleType) -> None:
    lease = twin.Lease()
    lease._extend(twin.now_ns() - 2_000_000_000, 1_000_000_000)
    assert lease.raised() is False
    assert lease.lease_remaining() == 0.0


def test_lower_drops_the_deadline(twin: ModuleType) -> None:
    lease = twin.Lease()
    lease._extend(twin.now_ns(), 10_000_000_000)
    assert lease.raised() is True
    lease._lower()
    assert lease.raised() is False
    assert lease.lease_remaining() == 0.0
    assert lease._deadline == 0
    lease._extend(twin.now_ns(), 10_000_000_000)
    assert lease.raised() is True, "a lowered lease can be extended again"


def test_lease_remaining_counts_down_in_seconds(twin: ModuleType) -> None:
    lease = twin.Lease()
    lease._extend(twin.now_ns(), 10_000_000_000)
    first = lease.lease_remaining()
    assert isinstance(first, float)
    assert 9.0 < first <= 10.0
    time.sleep(0.02)
    second = lease.lease_remaining()
    assert 0.01 < first - second < 1.0


def test_lease_is_subclassable_with_attributes(twin: ModuleType) -> None:
    class Named(twin.Lease):  # type: ignore[name-defined,misc]
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    lease = Named("x")
    assert lease.name == "x"
    assert lease.raised() is False
    lease._extend(twin.now_ns(), 1_000_000_000)
    assert lease.raised() is True


def test_jittered_stays_within_bounds_and_spreads(twin: ModuleType) -> None:
    samples = [twin.jittered(2.0, 0.25) for _ in range(20_000)]
    assert all(1.5 <= value <= 2.5 for value in samples)
    assert min(samples) < 1.52
    assert max(samples) > 2.48
    assert 1.98 < statistics.fmean(samples) < 2.02
    # Uniform on [1.5, 2.5]: standard deviation 1 / sqrt(12) ~ 0.289.
    assert 0.27 < statistics.pstdev(samples) < 0.31
    assert len(set(samples)) > 19_000


def test_jittered_without_jitter_is_exact(twin: ModuleType) -> None:
    assert all(twin.jittered(0.3, 0.0) == 0.3 for _ in range(100))


def test_now_ns_is_monotonic_integer_nanoseconds(twin: ModuleType) -> None:
    previous = twin.now_ns()
    assert isinstance(previous, int)
    for _ in range(10_000):
        current = twin.now_ns()
        assert current >= previous
        previous = current
    start = twin.now_ns()
    time.sleep(0.05)
    elapsed = twin.now_ns() - start
    assert 40_000_000 <= elapsed < 2_000_000_000


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux-only")
def test_now_ns_reads_the_boottime_clock(twin: ModuleType) -> None:
    """The lease clock keeps counting while the machine is suspended (CLOCK_BOOTTIME)."""
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    value = twin.now_ns()
    after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert before <= value <= after


def test_both_twins_share_one_clock() -> None:
    compiled = _compiled()
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
    assert leadership.clock.Lease is _compiled().Lease


def test_pure_is_active_without_extensions() -> None:
    if not NO_EXTENSIONS:
        pytest.skip("LEADERSHIP_NO_EXTENSIONS is not set")
    assert leadership.IMPLEMENTATION == "python"
    assert leadership.clock.Lease is leadership._clock_py.Lease


def test_active_implementation_is_consistent() -> None:
    assert leadership.IMPLEMENTATION in ("compiled", "python")
    assert leadership.IMPLEMENTATION == leadership.clock.IMPLEMENTATION
    module = leadership._clock_py if leadership.IMPLEMENTATION == "python" else _compiled()
    assert leadership.clock.Lease is module.Lease
    assert leadership.clock.now_ns is module.now_ns
    assert leadership.clock.jittered is module.jittered


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
