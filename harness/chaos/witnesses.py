"""A witness of many flags of one process: one loop, one log per flag.

:class:`Witnesses` calls each flag's ``raised()`` in turn, between two
``CLOCK_MONOTONIC`` readings, and appends to that flag's own log the records
:class:`leadership.testing.Witness` writes for a single flag (runs, ticks, gaps and the
two calls after each gap), so :func:`leadership.testing.read_history` reads each log as
the history of one process for one flag. A gap is measured per flag: between two
consecutive calls of that flag's ``raised()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from leadership.testing import RECORD, Kind

__all__ = ["Watched", "Witnesses"]


class Watched:
    """One flag under watch: its ``raised`` callable, its log and its run state."""

    __slots__ = (
        "fd",
        "in_run",
        "last_after",
        "last_before",
        "path",
        "previous",
        "raised",
        "to_sample",
        "written",
    )

    def __init__(self, raised: Callable[[], bool], path: Path) -> None:
        self.raised = raised
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.in_run = False
        self.last_before = 0
        self.last_after = 0
        self.written = 0
        self.to_sample = 0
        self.previous = 0


class Witnesses:
    """Append the history of each flag's ``raised()`` to its own log.

    ``flags`` pairs each ``raised`` callable with its log path. ``max_gap`` and ``tick``
    are seconds, as for :class:`leadership.testing.Witness`: ``max_gap`` applies to the
    span between two calls of the same flag, so keep it above one round over all flags.
    Set ``stopping`` (e.g. from a signal handler) to end :meth:`watch`.
    """

    def __init__(
        self,
        flags: Sequence[tuple[Callable[[], bool], Path]],
        max_gap: float = 0.05,
        tick: float = 0.002,
    ) -> None:
        self.watched = [Watched(raised, path) for raised, path in flags]
        self.max_gap_ns = int(max_gap * 1e9)
        self.tick_ns = int(tick * 1e9)
        self.stopping = False

    def mark(self, kind: Kind, first: int, second: int) -> None:
        """Append the same mark to every flag's log."""
        record = RECORD.pack(kind, first, second)
        for watched in self.watched:
            os.write(watched.fd, record)

    def watch(self, pause: float = 0.0) -> None:
        """Call every flag's ``raised()`` in turn until ``stopping``; ``pause`` > 0
        sleeps that many seconds after each round."""
        now = time.monotonic_ns
        write = os.write
        pack = RECORD.pack
        max_gap = self.max_gap_ns
        tick = self.tick_ns
        start = now()
        for watched in self.watched:
            watched.previous = start
        while not self.stopping:
            for w in self.watched:
                before = now()
                result = w.raised()
                after = now()
                fd = w.fd
                if after - w.previous > max_gap:
                    if w.in_run:
                        write(fd, pack(Kind.END, w.last_before, w.last_after))
                        w.in_run = False
                    write(fd, pack(Kind.GAP, w.previous, after))
                    w.to_sample = 2
                if w.to_sample:
                    write(
                        fd, pack(Kind.SAMPLE_TRUE if result else Kind.SAMPLE_FALSE, before, after)
                    )
                    w.to_sample -= 1
                if result:
                    if not w.in_run:
                        write(fd, pack(Kind.START, before, after))
                        w.in_run = True
                        w.written = after
                    elif after - w.written >= tick:
                        write(fd, pack(Kind.TICK, before, after))
                        w.written = after
                    w.last_before, w.last_after = before, after
                elif w.in_run:
                    write(fd, pack(Kind.END, w.last_before, w.last_after))
                    w.in_run = False
                w.previous = before
            if pause:
                time.sleep(pause)
        for w in self.watched:
            if w.in_run:
                write(w.fd, pack(Kind.END, w.last_before, w.last_after))
                w.in_run = False

    def close(self) -> None:
        for watched in self.watched:
            os.close(watched.fd)
