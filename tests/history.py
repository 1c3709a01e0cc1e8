"""Watch several flags and catch any instant where two of them are raised at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import pytest

import leadership
from leadership.clock import now_ns


class OverlapWatch:
    """Samples ``raised()`` of every flag on a thread until the ``with`` block ends.

    Each round reads the flags forward then backward; flag ``i`` raised on both of its
    reads brackets the reads of the flags after it, so any of those found raised was
    raised at the same time as ``i``: an overlap. ``raised_at[i]`` is the lease-clock
    time (ns) of the first sample where flag ``i`` was raised, or None.
    """

    def __init__(self, flags: Sequence[leadership.Flag], period: float = 0.0005) -> None:
        self.flags = list(flags)
        self.period = period
        self.overlaps: list[tuple[int, str, str]] = []
        self.rounds = 0
        self.raised_at: list[int | None] = [None] * len(self.flags)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="overlap watch", daemon=True)

    def __enter__(self) -> OverlapWatch:
        """Start watching; returns once the watch has sampled a few rounds."""
        self._thread.start()
        give_up = time.monotonic() + 5
        while self.rounds < 5 and time.monotonic() < give_up:
            time.sleep(0.001)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        flags = self.flags
        count = len(flags)
        while not self._stop.is_set():
            at = now_ns()
            forward = [flag.raised() for flag in flags]
            backward = [flag.raised() for flag in reversed(flags)][::-1]
            self.rounds += 1
            for i in range(count):
                if forward[i] and self.raised_at[i] is None:
                    self.raised_at[i] = at
                if forward[i] and backward[i]:
                    for j in range(i + 1, count):
                        if forward[j] or backward[j]:
                            self.overlaps.append((at, flags[i].process, flags[j].process))
            time.sleep(self.period)

    def assert_no_overlap(self) -> None:
        assert self.rounds >= 5, "the watch hardly ran"
        assert not self.overlaps, f"flags raised at the same time: {self.overlaps[:5]}"


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.0005) -> float | None:
    """Poll ``condition`` until it holds; return the seconds it took, None after ``timeout``."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(step)


def wait_or_fail(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Like ``wait_for``, but fail the test (naming ``what``) after ``timeout``."""
    took = wait_for(condition, timeout, step=0.002)
    if took is None:
        pytest.fail(f"not within {timeout} s: {what}")
    return took
