"""Figures of a chaos experiment: overlaps, availability, failover per fault kind.

Definitions (CLOCK_MONOTONIC; see :mod:`leadership.testing` for runs):

- A *tenure* is a process's runs merged across gaps shorter than ``TENURE_GAP``
  (scheduler hiccups split runs; a tenure is what a human calls "held the flag").
- A fault's instant is when the runner started it; for ``close`` it is the moment the
  victim called ``close()`` (its CLOSE mark).
- The *holder* of a fault is the process whose tenure may cover that instant (or ended
  less than ``TENURE_GAP`` before it). A fault aimed at another process does not
  measure failover. The holder is *deposed* when its tenure surely ends before the
  fault's end plus one interval and before the next fault starts; the *failover time*
  is then from the fault's instant to the first other tenure surely starting after the
  holder's sure end (at the ``after`` reading of its first True call). When nobody held
  the flag at the fault, the failover time runs to the next tenure's sure start. The
  *recovery time* is the part of it after the fault ended (0 when a new holder came
  before the end).
- For ``stop`` and ``partition`` of a holder that another process replaced during the
  fault, *first after resume* is the result of the victim's first ``raised()`` call made
  after SIGCONT or after the partition healed (see ``History.first_call_after``).
- A *takeover* is a tenure of a flag that follows a tenure of another process.
- In group mode each flag is judged on its own histories (overlaps, availability,
  takeovers: per flag and in total), and each fault is measured on the flag it aimed
  at (its ``flag``); availability is the mean over the flags.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from leadership.testing import History, Kind, Overlap, judge

from .faults import ALL_KINDS, KINDS, PROCESS_KINDS, Fault
from .runner import Experiment

__all__ = [
    "FlagFigures",
    "Outcome",
    "Summary",
    "Tenure",
    "aggregate",
    "summarise",
    "takeovers",
    "tenures",
]

TENURE_GAP = 100_000_000
"""Runs of one process closer than this (ns) belong to one tenure."""

GRACEFUL_GOAL_MS = 100.0


@dataclass(frozen=True)
class Tenure:
    """One process holding the flag (ns): possible start and end (``before`` of its first
    True call, ``after`` of its last), and the sure part between them."""

    process: str
    start: int
    sure_start: int
    sure_end: int
    end: int


@dataclass(frozen=True)
class Outcome:
    """What one fault did (times in ms)."""

    kind: str
    at_ms: float
    victim: str | None
    holder: str | None
    aimed_at_holder: bool
    deposed: bool
    failover_ms: float | None
    recovery_ms: float | None
    first_after_resume: bool | None
    detail: str


def tenures(histories: Iterable[History], gap: int = TENURE_GAP) -> list[Tenure]:
    """All tenures, sorted by start: runs of one process merged when the next run starts
    within ``gap`` ns of the sure end of the previous one."""
    found: list[Tenure] = []
    for history in histories:
        current: Tenure | None = None
        for run in sorted(history.runs, key=lambda r: r.first_before):
            if current is not None and run.first_before - current.sure_end <= gap:
                current = Tenure(
                    current.process,
                    current.start,
                    current.sure_start,
                    max(current.sure_end, run.last_before),
                    max(current.end, run.last_after),
                )
                continue
            if current is not None:
                found.append(current)
            current = Tenure(
                history.process, run.first_before, run.first_after, run.last_before, run.last_after
            )
        if current is not None:
            found.append(current)
    return sorted(found, key=lambda t: t.start)


def takeovers(all_tenures: Sequence[Tenure]) -> int:
    """How many tenures (sorted by start) follow a tenure of another process."""
    return sum(a.process != b.process for a, b in pairwise(all_tenures))


@dataclass
class FlagFigures:
    """One flag's figures in group mode: overlaps, the worst one (ms), availability
    (0-1), takeovers, faults aimed at it, and how many processes held it."""

    overlaps: int
    worst_overlap_ms: float
    availability: float
    takeovers: int
    faults: int
    holders: int


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _outcome(
    fault: Fault,
    histories: dict[str, History],
    all_tenures: list[Tenure],
    interval_ns: int,
    origin: int,
    next_start: int,
) -> Outcome:
    instant = fault.start
    if fault.kind == "close" and fault.victim in histories:
        closes = [m for m in histories[fault.victim].marks if m.kind == Kind.CLOSE]
        if closes:
            instant = closes[0].before
    holding = [t for t in all_tenures if t.start <= instant and t.end >= instant - TENURE_GAP]
    holder = holding[-1] if holding else None
    aimed = fault.kind not in PROCESS_KINDS or (
        holder is not None and holder.process == fault.victim
    )
    deposed = False
    failover: float | None = None
    recovery: float | None = None
    first_after: bool | None = None
    after = instant
    if holder is not None and aimed and holder.sure_end <= min(fault.end + interval_ns, next_start):
        deposed = True
        after = holder.sure_end
    if holder is None or deposed:
        later = [t.sure_start for t in all_tenures if t.sure_start > after and t is not holder]
        if later:
            failover = (min(later) - instant) / 1e6
            recovery = max(0, min(later) - max(instant, fault.end)) / 1e6
    if deposed:
        assert holder is not None
        if fault.kind in ("stop", "partition") and fault.victim in histories:
            replaced = any(
                t.process != holder.process and instant <= t.sure_start <= fault.end
                for t in all_tenures
            )
            if replaced:
                first_after = histories[fault.victim].first_call_after(fault.end)
    return Outcome(
        fault.kind,
        round((fault.start - origin) / 1e6, 3),
        fault.victim,
        holder.process if holder else None,
        aimed,
        deposed,
        None if failover is None else round(failover, 3),
        None if recovery is None else round(recovery, 3),
        first_after,
        fault.detail,
    )


@dataclass
class Summary:
    """The figures of one run (or of several, aggregated)."""

    seeds: list[int]
    seconds: float
    interval: float
    timeout: float
    faults: dict[str, int]
    overlaps: int
    worst_overlap_ms: float
    overlap_examples: list[str]
    availability: float
    failover_ms: dict[str, list[float]]
    recovery_ms: dict[str, list[float]]
    first_after_resume: dict[str, list[bool]]  # results of those first calls (True: bad)
    outcomes: list[Outcome]
    notes: list[str]
    takeovers: int = 0
    flags: dict[str, FlagFigures] = field(default_factory=dict)

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    @property
    def crash_bound_ms(self) -> float:
        return (1.1 * self.interval + self.timeout) * 1000

    @property
    def resume_violations(self) -> int:
        """Deposed holders whose first ``raised()`` after resuming returned True."""
        return sum(raised for results in self.first_after_resume.values() for raised in results)

    @property
    def failed(self) -> bool:
        """True on any overlap, or a deposed holder whose first call after resume was True."""
        return self.overlaps > 0 or self.resume_violations > 0

    def text(self) -> str:
        lines = [
            f"seeds {self.seeds}: {self.seconds:.1f} s under faults, interval "
            f"{self.interval:g} s, timeout {self.timeout:g} s",
            f"faults injected: {self.total_faults} ("
            + ", ".join(f"{k} {n}" for k, n in self.faults.items() if n)
            + ")",
            f"overlaps: {self.overlaps} (worst {self.worst_overlap_ms:.3f} ms)",
        ]
        lines += [f"  {example}" for example in self.overlap_examples[:10]]
        lines.append(f"takeovers: {self.takeovers}")
        if self.flags:
            lines.append(
                f"  {'flag':16} {'overlaps':>8} {'takeovers':>9} {'faults':>6} {'holders':>7} "
                f"{'available':>9}"
            )
            for name, f in self.flags.items():
                lines.append(
                    f"  {name:16} {f.overlaps:8} {f.takeovers:9} {f.faults:6} {f.holders:7} "
                    f"{f.availability * 100:8.2f}%"
                )
        held = "some process held" if not self.flags else "a flag was held (mean over flags)"
        lines.append(f"availability: {self.availability * 100:.2f} % of the time {held}")
        lines.append(
            "failover after each kind of fault that deposed the holder (fault -> next process"
            " raised; recovery: from the fault's end), ms:"
        )
        lines.append(
            f"  {'kind':10} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8} {'recovery p99':>13} "
            f"{'max':>8}"
        )
        for kind in ALL_KINDS:
            values = self.failover_ms.get(kind, [])
            recovery = self.recovery_ms.get(kind, []) or [0.0]
            if values:
                lines.append(
                    f"  {kind:10} {len(values):5} {_percentile(values, 50):8.1f} "
                    f"{_percentile(values, 99):8.1f} {max(values):8.1f} "
                    f"{_percentile(recovery, 99):13.1f} {max(recovery):8.1f}"
                )
        crash = self.failover_ms.get("kill", [])
        if crash:
            p99 = _percentile(crash, 99)
            verdict = "within" if p99 <= self.crash_bound_ms else "OVER"
            lines.append(
                f"crash failover (SIGKILL of the holder) p99 {p99:.1f} ms, {verdict} the bound "
                f"1.1 x interval + timeout = {self.crash_bound_ms:.0f} ms"
            )
        handover = self.failover_ms.get("close", [])
        if handover:
            p99 = _percentile(handover, 99)
            verdict = "under" if p99 < GRACEFUL_GOAL_MS else "OVER"
            lines.append(
                f"graceful handover (close() of the holder) p99 {p99:.1f} ms, {verdict} the "
                f"{GRACEFUL_GOAL_MS:.0f} ms goal"
            )
        for kind, results in self.first_after_resume.items():
            if results:
                false = sum(not r for r in results)
                lines.append(
                    f"{kind} of the holder, replaced meanwhile: first raised() after resume "
                    f"False in {false} of {len(results)}"
                )
        lines += [f"note: {note}" for note in self.notes]
        lines.append("RESULT: " + ("FAILED" if self.failed else "safe"))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_faults"] = self.total_faults
        data["failed"] = self.failed
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        fields = dict(data)
        fields.pop("total_faults", None)
        fields.pop("failed", None)
        fields["outcomes"] = [Outcome(**o) for o in fields["outcomes"]]
        fields["flags"] = {n: FlagFigures(**f) for n, f in fields.get("flags", {}).items()}
        return cls(**fields)


def _describe(overlap: Overlap, origin: int) -> str:
    a, b = overlap.first, overlap.second
    return (
        f"{a.process} [{(a.first_after - origin) / 1e9:.6f}, {(a.last_before - origin) / 1e9:.6f}]"
        f" and {b.process} [{(b.first_after - origin) / 1e9:.6f}, "
        f"{(b.last_before - origin) / 1e9:.6f}] s: {max(0, overlap.duration_ns) / 1e6:.3f} ms"
    )


def summarise(experiment: Experiment) -> Summary:
    """The figures of one experiment (per flag too, in group mode)."""
    s = experiment.settings
    by_flag = experiment.flag_histories or {s.name: experiment.histories}
    reports = {
        name: judge(list(h.values()), experiment.start, experiment.end)
        for name, h in by_flag.items()
    }
    flag_tenures = {name: tenures(h.values()) for name, h in by_flag.items()}
    starts = [f.start for f in experiment.faults[1:]] + [experiment.end]
    outcomes = []
    for fault, next_start in zip(experiment.faults, starts, strict=True):
        name = fault.flag if fault.flag in by_flag else s.name
        outcomes.append(
            _outcome(
                fault,
                by_flag[name],
                flag_tenures[name],
                int(s.interval * 1e9),
                experiment.start,
                next_start,
            )
        )
    used = [kind for kind in ALL_KINDS if kind in s.kinds or kind in KINDS]
    counts = {kind: 0 for kind in used}
    failover: dict[str, list[float]] = {kind: [] for kind in used}
    recovery: dict[str, list[float]] = {kind: [] for kind in used}
    resume: dict[str, list[bool]] = {"stop": [], "partition": []}
    for outcome in outcomes:
        counts[outcome.kind] += 1
        if outcome.failover_ms is not None and outcome.deposed:
            failover[outcome.kind].append(outcome.failover_ms)
            if outcome.recovery_ms is not None:
                recovery[outcome.kind].append(outcome.recovery_ms)
        if outcome.first_after_resume is not None:
            resume[outcome.kind].append(outcome.first_after_resume)
    grouped = bool(experiment.flag_histories)
    flags = {
        name: FlagFigures(
            overlaps=len(report.overlaps),
            worst_overlap_ms=report.worst_overlap_ns / 1e6,
            availability=report.availability,
            takeovers=takeovers(flag_tenures[name]),
            faults=sum(f.flag == name for f in experiment.faults),
            holders=len({t.process for t in flag_tenures[name]}),
        )
        for name, report in reports.items()
    }
    examples = [
        (f"{name}: " if grouped else "") + _describe(o, experiment.start)
        for name, report in reports.items()
        for o in report.overlaps[:20]
    ]
    return Summary(
        seeds=[s.seed],
        seconds=(experiment.end - experiment.start) / 1e9,
        interval=s.interval,
        timeout=s.flag_timeout,
        faults=counts,
        overlaps=sum(f.overlaps for f in flags.values()),
        worst_overlap_ms=max(f.worst_overlap_ms for f in flags.values()),
        overlap_examples=examples[:20],
        availability=sum(f.availability for f in flags.values()) / len(flags),
        failover_ms=failover,
        recovery_ms=recovery,
        first_after_resume=resume,
        outcomes=outcomes,
        notes=list(experiment.notes),
        takeovers=sum(f.takeovers for f in flags.values()),
        flags=flags if grouped else {},
    )


def aggregate(summaries: Sequence[Summary]) -> Summary:
    """Several runs as one: counts and samples added, availability time-weighted."""
    total = sum(s.seconds for s in summaries) or 1.0
    first = summaries[0]
    return Summary(
        seeds=[seed for s in summaries for seed in s.seeds],
        seconds=sum(s.seconds for s in summaries),
        interval=first.interval,
        timeout=first.timeout,
        faults={k: sum(s.faults.get(k, 0) for s in summaries) for k in KINDS},
        overlaps=sum(s.overlaps for s in summaries),
        worst_overlap_ms=max(s.worst_overlap_ms for s in summaries),
        overlap_examples=[e for s in summaries for e in s.overlap_examples],
        availability=sum(s.availability * s.seconds for s in summaries) / total,
        failover_ms={k: [v for s in summaries for v in s.failover_ms.get(k, [])] for k in KINDS},
        recovery_ms={k: [v for s in summaries for v in s.recovery_ms.get(k, [])] for k in KINDS},
        first_after_resume={
            k: [v for s in summaries for v in s.first_after_resume.get(k, [])]
            for k in ("stop", "partition")
        },
        outcomes=[o for s in summaries for o in s.outcomes],
        notes=[n for s in summaries for n in s.notes],
        takeovers=sum(s.takeovers for s in summaries),
        flags=_merge_flags(summaries),
    )


def _merge_flags(summaries: Sequence[Summary]) -> dict[str, FlagFigures]:
    """Per-flag figures of several runs: counts added, availability time-weighted."""
    merged: dict[str, FlagFigures] = {}
    seconds: dict[str, float] = {}
    for summary in summaries:
        for name, f in summary.flags.items():
            was = merged.get(name)
            total = seconds.get(name, 0.0) + summary.seconds
            if was is None:
                merged[name] = FlagFigures(**asdict(f))
            else:
                was.overlaps += f.overlaps
                was.worst_overlap_ms = max(was.worst_overlap_ms, f.worst_overlap_ms)
                was.availability = (
                    was.availability * seconds[name] + f.availability * summary.seconds
                ) / (total or 1.0)
                was.takeovers += f.takeovers
                was.faults += f.faults
                was.holders += f.holders
            seconds[name] = total
    return merged


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.chaos.report RUN.json...``: the figures of several runs."""
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m harness.chaos.report RUN.json...", file=sys.stderr)
        return 2
    summaries = [Summary.from_json(json.loads(Path(p).read_text())) for p in paths]
    combined = aggregate(summaries)
    print(combined.text())
    return 1 if combined.failed else 0


if __name__ == "__main__":
    sys.exit(main())
