"""asyncio: ``wait_raised_async`` (raised, timeout, handover, close) never blocks the event
loop, and ``async with flag`` closes off the loop and releases the row."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable
from typing import TypeVar

import leadership
from tests.conftest import MakeFlag, execute

T = TypeVar("T")

TICK = 0.01
MAX_GAP = 0.1
"""The longest pause between two ticks that still counts as a loop that was not blocked
(ten ticks: generous on a shared machine, far below any blocking wait in these tests)."""


class Ticker:
    """A task that records the loop time every ``TICK`` seconds while the loop runs freely."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(TICK * 3)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            self.stamps.append(time.monotonic())
            await asyncio.sleep(TICK)

    def between(self, start: float, end: float) -> tuple[int, float]:
        """Ticks in [start, end] and the longest gap covering that window."""
        inside = [stamp for stamp in self.stamps if start <= stamp <= end]
        before = [stamp for stamp in self.stamps if stamp < start][-1:]
        after = [stamp for stamp in self.stamps if stamp > end][:1]
        points = before + inside + after
        gaps = [b - a for a, b in itertools.pairwise(points)]
        return len(inside), max(gaps, default=end - start)


async def timed(awaitable: Awaitable[T]) -> tuple[T, float, float]:
    """Await; return the result with the monotonic times it started and ended."""
    started = time.monotonic()
    result = await awaitable
    return result, started, time.monotonic()


def test_wait_raised_async_returns_true_when_raised(pg_dsn: str, make_flag: MakeFlag) -> None:
    flag = make_flag(pg_dsn, "a")

    async def main() -> None:
        async with Ticker() as ticker:
            raised, started, ended = await timed(flag.wait_raised_async(timeout=5.0))
            assert raised is True and flag.raised()
            assert ended - started < 1.5
            _, gap = ticker.between(started, ended)
            assert gap < MAX_GAP
            many = await asyncio.gather(*(flag.wait_raised_async(0) for _ in range(3)))
            assert many == [True, True, True]

    asyncio.run(main())


def test_wait_raised_async_times_out_without_blocking_the_loop(
    pg_dsn: str, make_flag: MakeFlag
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=5.0)
    standby = make_flag(pg_dsn, "standby")

    async def main() -> None:
        async with Ticker() as ticker:
            raised, started, ended = await timed(standby.wait_raised_async(timeout=0.5))
            assert raised is False
            assert 0.45 <= ended - started < 1.2, ended - started
            ticks, gap = ticker.between(started, ended)
            assert gap < MAX_GAP, f"the loop stalled {gap:.3f} s while waiting"
            assert ticks >= 0.5 / TICK / 3, ticks
            assert await standby.wait_raised_async(timeout=0) is False

    asyncio.run(main())
    assert holder.raised() and not standby.raised()


def test_wait_raised_async_wakes_on_handover_and_returns_false_on_close(
    pg_dsn: str, make_flag: MakeFlag
) -> None:
    # A long interval: without the release, the standby would wait 1 to 2 s.
    holder = make_flag(pg_dsn, "holder", interval=2.0)
    assert holder.wait_raised(timeout=5.0)
    standby = make_flag(pg_dsn, "standby", interval=2.0)

    async def close_later(flag: leadership.Flag, delay: float) -> float:
        await asyncio.sleep(delay)
        closing = time.monotonic()
        await flag.aclose()
        return closing

    async def main() -> None:
        async with Ticker() as ticker:
            (raised, _, woke), closing = await asyncio.gather(
                timed(standby.wait_raised_async(timeout=10.0)), close_later(holder, 0.2)
            )
            assert raised is True and standby.raised()
            assert woke - closing < 0.8, f"woke {woke - closing:.3f} s after the holder closed"
            third = await asyncio.to_thread(make_flag, pg_dsn, "third", interval=2.0)
            (still, _, returned), closing = await asyncio.gather(
                timed(third.wait_raised_async(timeout=None)), close_later(third, 0.1)
            )
            assert still is False
            assert returned - closing < 1.5
            _, gap = ticker.between(closing - 0.3, returned)
            assert gap < MAX_GAP

    asyncio.run(main())


def test_async_with_closes_off_the_loop_and_releases(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    lowered: list[float] = []

    def slow_stop() -> None:  # makes close() take a while: the loop must keep running
        time.sleep(0.4)
        lowered.append(time.monotonic())

    flag = make_flag(pg_dsn, "a", on_lowered=slow_stop)

    async def main() -> tuple[float, float, Ticker]:
        async with Ticker() as ticker:
            async with flag:
                assert await flag.wait_raised_async(timeout=5.0)
                closing = time.monotonic()
            closed = time.monotonic()
            await asyncio.sleep(TICK * 3)
        return closing, closed, ticker

    closing, closed, ticker = asyncio.run(main())
    assert flag.closed and not flag.raised() and flag.token is None
    assert len(lowered) == 1 and closing < lowered[0] <= closed
    assert closed - closing >= 0.35, "close() did not wait for the pending on_lowered"
    ticks, gap = ticker.between(closing, closed)
    assert gap < MAX_GAP, f"the loop stalled {gap:.3f} s during close"
    assert ticks >= 0.35 / TICK / 3, ticks
    rows = execute(
        pg_dsn,
        "SELECT holder, timestamp = 'epoch'::timestamptz FROM leadership_flags WHERE name = %s",
        (flag_name,),
    )
    assert rows == [["a", True]], "the row was not released"

    async def again() -> None:
        await flag.aclose()  # idempotent

    asyncio.run(again())


def test_blocking_close_would_stall_the_loop(pg_dsn: str, make_flag: MakeFlag) -> None:
    """The ticker detects a blocked loop: the same slow close, called synchronously."""

    def slow_stop() -> None:
        time.sleep(0.4)

    flag = make_flag(pg_dsn, "a", on_lowered=slow_stop)

    async def main() -> float:
        async with Ticker() as ticker:
            assert await flag.wait_raised_async(timeout=5.0)
            closing = time.monotonic()
            flag.close()  # blocks the loop on purpose
            closed = time.monotonic()
            await asyncio.sleep(TICK * 3)
        return ticker.between(closing, closed)[1]

    assert asyncio.run(main()) >= 0.35
