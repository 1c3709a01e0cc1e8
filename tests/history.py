"""Watch several flags and catch any instant where two of them are raised at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import pytest

import leadership
from leadership.clock import now_ns
from leadership.testing import overlapping_spans


class _Runs:
    """The runs of True calls of one flag, as spans ``(first_after, last_before)`` (ns):
    :func:`leadership.testing.overlapping_spans` reads them as the witness's sure parts."""

    def __init__(self, max_gap_ns: int) -> None:
        self._max_gap_ns = max_gap_ns
        self._closed: list[tuple[int, int]] = []
        self._open: tuple[int, int] | None = None

    def record(self, before: int, after: int, raised: bool) -> None:
        """Add one call, made between the readings ``before`` and ``after``."""
        if self._open is not None and (not raised or after - self._open[1] > self._max_gap_ns):
            self._closed.append(self._open)
            self._open = None
        if raised:
            self._open = (self._open[0] if self._open else after, before)

    def spans(self) -> list[tuple[int, int]]:
        """The closed runs and the open one."""
        return self._closed + ([self._open] if self._open else [])


class OverlapWatch:
    """Samples ``raised()`` of every flag on a thread until the ``with`` block ends.

    Each call is bracketed by two lease-clock readings; consecutive True calls of one
    flag at most ``max_gap`` seconds apart form a run, which surely held the flag from
    its first call's end to its last call's start. Two runs of different flags that
    surely share an instant are an overlap (:func:`leadership.testing.overlapping_spans`,
    the witness's definite overlap): a report is a real violation as long as a flag
    cannot change hands twice within ``max_gap``. Each round reads the flags forward
    then backward, so flag ``i`` raised on both of its reads brackets the reads of the
    flags after it. ``raised_at[i]`` is the lease-clock time (ns) just before the first
    call that found flag ``i`` raised, or None.
    """

    def __init__(
        self, flags: Sequence[leadership.Flag], period: float = 0.0005, max_gap: float = 0.005
    ) -> None:
        self.flags = list(flags)
        self.period = period
        self.rounds = 0
        self.raised_at: list[int | None] = [None] * len(self.flags)
        self._runs = [_Runs(int(max_gap * 1e9)) for _ in self.flags]
        self._lock = threading.Lock()
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
        order = list(range(len(self.flags)))
        while not self._stop.is_set():
            with self._lock:
                for i in order + order[::-1]:
                    self._sample(i)
                self.rounds += 1
            time.sleep(self.period)

    def _sample(self, i: int) -> None:
        before = now_ns()
        raised = self.flags[i].raised()
        after = now_ns()
        self._runs[i].record(before, after, raised)
        if raised and self.raised_at[i] is None:
            self.raised_at[i] = before

    def overlaps(self) -> list[tuple[int, str, str]]:
        """``(from_ns, process, process)`` for each overlap seen so far."""
        with self._lock:
            spans = {str(i): runs.spans() for i, runs in enumerate(self._runs)}
        return [
            (
                int(max(first.start, second.start)),
                self.flags[int(first.process)].process,
                self.flags[int(second.process)].process,
            )
            for first, second in overlapping_spans(spans)
        ]

    def assert_no_overlap(self) -> None:
        assert self.rounds >= 5, "the watch hardly ran"
        overlaps = self.overlaps()
        assert not overlaps, f"flags raised at the same time: {overlaps[:5]}"


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
