"""A witness of ``raised()`` and a checker of the histories it records.

**Witness.** Each process under test runs :meth:`Witness.watch`: a tight loop calling
``raised()`` between two ``CLOCK_MONOTONIC`` readings (``before`` and ``after``; all
processes of one host share that clock). It appends fixed-size records to its own log
with ``os.write`` on an ``O_APPEND`` descriptor: a *run* (consecutive True calls) is
written when it starts, every ``tick`` while it lasts, and when it ends, so SIGKILL loses
nothing already written and a run cut by SIGKILL ends at its last record.

Consecutive calls belong to one run only while the whole span of the two calls
(``after`` of the second minus ``before`` of the first) is at most ``max_gap``. A longer
span means the process did not run for a while (SIGSTOP, a frozen VM, the scheduler):
the run is closed at the call before the gap and a new one starts after it, so a process
paused mid-run is never counted as holding during the pause. Each gap is recorded,
with the results of the two calls after it (the first call made after a resume is one
of them).

**Definite intervals.** A True call proves the flag was raised at some unknown instant
between its ``before`` and ``after``. A run asserts it was held from that instant in its
first call to that instant in its last call: its calls are at most ``max_gap`` apart,
less than a correct flag needs to change hands twice, so no other tenure fits between
two of them. Whatever the unknown instants are, the run surely covers
``[first.after, last.before]`` and at most covers ``[first.before, last.after]``. Two
runs *definitely overlap* when every choice of the unknown instants makes them
intersect: ``a.first_after <= b.last_before and b.first_after <= a.last_before``. The
checker reports only definite overlaps, so a report is a real violation, never an
artefact of sampling or of a pause in the middle of a call; it still catches a single
True call made while another process surely held the flag. Availability is the measure
of the union of the sure parts over a window: a lower bound.

**Spans.** The overlap computation itself, :func:`overlapping_spans`, works on plain
spans per process and serves any history of held intervals, sampled or reported (the
``leadership demo``, in-process test watches): a span ``(start, end)`` says the process
held the flag throughout ``[start, end]``; ``end < start`` stands for one unknown
instant of ``[end, start]`` (a run's sure part when it is a single call).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

__all__ = [
    "RECORD",
    "Gap",
    "HeldSpan",
    "History",
    "Kind",
    "Mark",
    "Overlap",
    "Report",
    "Run",
    "Sample",
    "Span",
    "Witness",
    "availability",
    "held_intervals",
    "judge",
    "overlapping_spans",
    "overlaps",
    "read_history",
]

RECORD = struct.Struct("<B7xqq")
"""One log record: kind (1 byte, 7 bytes padding), then two CLOCK_MONOTONIC ns values."""


class Kind(IntEnum):
    """Record kinds. For START, TICK, END and SAMPLE_* the two values are a call's
    ``before`` and ``after``; for GAP, ``before`` of the last call before the gap and
    ``after`` of the first call after it; for marks, readings around an action."""

    START = 1  # first True call of a run
    TICK = 2  # a True call while a run lasts (progress, at least every ``tick``)
    END = 3  # last True call of a run
    GAP = 4  # the process did not run for more than ``max_gap``
    SAMPLE_FALSE = 5  # one of the two calls right after a gap returned False
    SAMPLE_TRUE = 6  # ... returned True
    BUILT = 7  # mark: the flag was built (before and after ``build()``)
    CLOSE = 8  # mark: ``close()`` called (before and after it)


class Witness:
    """Appends the history of one process's ``raised()`` calls to ``path``.

    ``max_gap`` and ``tick`` are seconds. ``max_gap`` must stay below the time a flag
    needs to change hands twice (for this library, its safety margin: 0.1 x interval);
    otherwise a holder that lost the flag and got it back between two of its calls
    would look as if it had held it throughout. Set ``stopping`` (e.g. from a signal
    handler) to end :meth:`watch`.
    """

    def __init__(self, path: str | os.PathLike[str], max_gap: float = 0.05, tick: float = 0.002):
        self.path = Path(path)
        self.max_gap_ns = int(max_gap * 1e9)
        self.tick_ns = int(tick * 1e9)
        self.stopping = False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def mark(self, kind: Kind, first: int, second: int) -> None:
        """Append one record (one ``write``: a record is never torn by SIGKILL)."""
        os.write(self._fd, RECORD.pack(kind, first, second))

    def watch(self, raised: Callable[[], bool], pause: float = 0.0) -> None:
        """Call ``raised()`` in a tight loop, recording runs and gaps, until ``stopping``.

        ``pause`` > 0 sleeps that many seconds between calls (a lighter, sampling witness).
        """
        now = time.monotonic_ns
        sleep = time.sleep
        fd = self._fd
        write = os.write
        pack = RECORD.pack
        max_gap = self.max_gap_ns
        tick = self.tick_ns
        in_run = False
        last_before = last_after = written = 0
        to_sample = 0
        previous = now()
        while not self.stopping:
            before = now()
            result = raised()
            after = now()
            if after - previous > max_gap:
                if in_run:
                    write(fd, pack(Kind.END, last_before, last_after))
                    in_run = False
                write(fd, pack(Kind.GAP, previous, after))
                to_sample = 2
            if to_sample:
                kind = Kind.SAMPLE_TRUE if result else Kind.SAMPLE_FALSE
                write(fd, pack(kind, before, after))
                to_sample -= 1
            if result:
                if not in_run:
                    write(fd, pack(Kind.START, before, after))
                    in_run = True
                    written = after
                elif after - written >= tick:
                    write(fd, pack(Kind.TICK, before, after))
                    written = after
                last_before, last_after = before, after
            elif in_run:
                write(fd, pack(Kind.END, last_before, last_after))
                in_run = False
            previous = before
            if pause:
                sleep(pause)
        if in_run:
            write(fd, pack(Kind.END, last_before, last_after))

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Run:
    """Consecutive True calls of one process (CLOCK_MONOTONIC ns).

    ``complete`` is False when the log ends inside the run (the process was killed):
    the run then ends at its last record.
    """

    process: str
    first_before: int
    first_after: int
    last_before: int
    last_after: int
    complete: bool = True

    @property
    def sure(self) -> tuple[int, int]:
        """``(first_after, last_before)``: held throughout, if not empty."""
        return self.first_after, self.last_before


@dataclass(frozen=True)
class Sample:
    """One recorded call: its ``before`` and ``after`` readings and its result."""

    before: int
    after: int
    raised: bool


@dataclass(frozen=True)
class Gap:
    """A span in which the process made no call (``start``/``end`` bound it), with the
    (at most two) calls that followed it."""

    start: int
    end: int
    samples: tuple[Sample, ...] = ()


@dataclass(frozen=True)
class Mark:
    """An action recorded by the process itself (e.g. ``close()``), with readings
    taken before and after it."""

    kind: Kind
    before: int
    after: int


@dataclass(frozen=True)
class History:
    """Everything one process's log says."""

    process: str
    runs: tuple[Run, ...] = ()
    gaps: tuple[Gap, ...] = ()
    marks: tuple[Mark, ...] = ()

    def first_call_after(self, instant: int, max_gap: int = 50_000_000) -> bool:
        """The result of the first ``raised()`` call made entirely after ``instant``.

        Exact when ``instant`` falls in a recorded gap (e.g. a SIGCONT); otherwise True
        when a run may cover ``instant`` or starts within ``max_gap`` ns after it (the
        conservative answer), else False.
        """
        for gap in self.gaps:
            if gap.start <= instant <= gap.end:
                for sample in gap.samples:
                    if sample.before >= instant:
                        return sample.raised
        for run in self.runs:
            if run.first_before <= instant <= run.last_after:
                return True
            if instant < run.first_before <= instant + max_gap:
                return True
        return False


def read_history(path: str | os.PathLike[str], process: str | None = None) -> History:
    """Parse one witness log; ``process`` defaults to the file's stem.

    A truncated trailing record is ignored; a run without END ends at its last record.
    """
    data = Path(path).read_bytes()
    name = process if process is not None else Path(path).stem
    runs: list[Run] = []
    gaps: list[tuple[int, int, list[Sample]]] = []
    marks: list[Mark] = []
    start: tuple[int, int] | None = None
    last: tuple[int, int] = (0, 0)
    pending = 0
    usable = len(data) - len(data) % RECORD.size
    for code, first, second in RECORD.iter_unpack(data[:usable]):
        kind = Kind(code)
        if kind in (Kind.SAMPLE_TRUE, Kind.SAMPLE_FALSE):
            if pending and gaps:
                gaps[-1][2].append(Sample(first, second, kind is Kind.SAMPLE_TRUE))
                pending -= 1
        elif kind is Kind.GAP:
            gaps.append((first, second, []))
            pending = 2
        elif kind is Kind.START:
            if start is not None:  # a START without END: cannot happen, but stay safe
                runs.append(Run(name, *start, *last, complete=False))
            start = last = (first, second)
        elif kind is Kind.TICK:
            if start is not None:
                last = (first, second)
        elif kind is Kind.END:
            if start is not None:
                runs.append(Run(name, *start, first, second))
            start = None
        else:
            marks.append(Mark(kind, first, second))
    if start is not None:
        runs.append(Run(name, *start, *last, complete=False))
    return History(
        name,
        tuple(runs),
        tuple(Gap(a, b, tuple(samples)) for a, b, samples in gaps),
        tuple(marks),
    )


@dataclass(frozen=True)
class Overlap:
    """Two runs of different processes that definitely overlap.

    ``duration_ns`` is the length of the sure common part; it is <= 0 when one run is a
    single call inside the other's sure part (still a definite overlap).
    """

    first: Run
    second: Run

    @property
    def duration_ns(self) -> int:
        return min(self.first.last_before, self.second.last_before) - max(
            self.first.first_after, self.second.first_after
        )


Span = tuple[float, float]
"""``(start, end)`` on one clock, in any unit (ints stay exact): held throughout
``[start, end]``; when ``end < start``, held at one unknown instant of ``[end, start]``."""


@dataclass(frozen=True)
class HeldSpan:
    """Span number ``index`` (in its caller's order) of ``process``, as found by
    :func:`overlapping_spans`."""

    process: str
    index: int
    start: float
    end: float


def overlapping_spans(spans: Mapping[str, Sequence[Span]]) -> list[tuple[HeldSpan, HeldSpan]]:
    """Every pair of spans of different processes that surely share an instant.

    ``spans`` maps each process to its spans. Two spans ``a`` and ``b`` overlap when
    ``a.start <= b.end and b.start <= a.end`` (closed spans): a span with ``end < start``
    (one unknown instant) overlaps only a span covering the whole of ``[end, start]``,
    and two such spans never do. Each pair comes once, the span that starts first
    first, in the order of the later start.
    """
    ordered = sorted(
        (
            HeldSpan(process, index, start, end)
            for process, own in spans.items()
            for index, (start, end) in enumerate(own)
        ),
        key=lambda span: span.start,
    )
    found: list[tuple[HeldSpan, HeldSpan]] = []
    active: list[HeldSpan] = []  # spans that may still reach a later start
    for span in ordered:
        active = [other for other in active if other.end >= span.start]
        found += [
            (other, span)
            for other in active
            if other.process != span.process and other.start <= span.end
        ]
        active.append(span)
    return found


def overlaps(histories: Iterable[History]) -> list[Overlap]:
    """Every pair of runs of different processes that definitely overlap (their sure
    parts, ``Run.sure``, share an instant: see the module's documentation)."""
    runs: dict[str, list[Run]] = {}
    for history in histories:
        for run in history.runs:
            runs.setdefault(run.process, []).append(run)
    spans = {process: [run.sure for run in own] for process, own in runs.items()}
    return [
        Overlap(runs[first.process][first.index], runs[second.process][second.index])
        for first, second in overlapping_spans(spans)
    ]


def held_intervals(histories: Iterable[History]) -> list[tuple[int, int]]:
    """The union of the runs' sure parts, as sorted disjoint ``(start, end)`` ns."""
    parts = sorted(
        run.sure for h in histories for run in h.runs if run.first_after < run.last_before
    )
    merged: list[tuple[int, int]] = []
    for start, end in parts:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def availability(histories: Iterable[History], start: int, end: int) -> float:
    """Fraction of ``[start, end]`` (ns) in which some process surely held the flag."""
    if end <= start:
        return 0.0
    held = sum(max(0, min(b, end) - max(a, start)) for a, b in held_intervals(histories))
    return held / (end - start)


@dataclass(frozen=True)
class Report:
    """The verdict of :func:`judge` on a set of histories.

    ``overlaps``: every definite overlap (empty for a safe history); ``availability``: the
    fraction of the window in which some process surely held the flag (a lower bound);
    ``runs``: how many runs the histories hold (0 means nothing was observed).
    """

    overlaps: list[Overlap] = field(default_factory=list)
    availability: float = 0.0
    runs: int = 0

    @property
    def worst_overlap_ns(self) -> int:
        """The longest sure common part of an overlap, ns (0 when none is longer than a call)."""
        return max((max(0, o.duration_ns) for o in self.overlaps), default=0)

    @property
    def safe(self) -> bool:
        """True when no two processes definitely held the flag at once."""
        return not self.overlaps


def judge(histories: Sequence[History], start: int, end: int) -> Report:
    """Judge the histories over the window ``[start, end]`` (CLOCK_MONOTONIC ns): a
    :class:`Report` of their definite overlaps and availability. Never raises for an
    unsafe history: read ``Report.safe``."""
    return Report(
        overlaps(histories),
        availability(histories, start, end),
        sum(len(h.runs) for h in histories),
    )
