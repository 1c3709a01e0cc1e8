"""What ``leadership demo`` prints: the running log and the summary, on stdout.

:class:`Narrator` prints one line per event worth showing, stamped with the seconds since
the demo started (``-v`` adds readiness, renewals and the workers' log records);
:func:`print_summary` prints the handover table and the verdict.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .clock import IMPLEMENTATION
from .dsn import redact
from .timing import Timing

if TYPE_CHECKING:
    from .demo_events import Event, Fault, Ledger, Worker

__all__ = ["Narrator", "print_summary", "shown"]


def shown(handle: str) -> str:
    """The handle for display: passwords hidden (an SQLite path has none)."""
    return handle if handle.startswith("sqlite:") else redact(handle)


class Narrator:
    """Prints the demo's log; ``origin`` (``time.monotonic()``) is the demo's start."""

    def __init__(self, origin: float, verbose: bool) -> None:
        self.origin = origin
        self.verbose = verbose

    def say(self, at: float, text: str) -> None:
        """Print ``text`` stamped with the seconds from the origin to ``at``."""
        print(f"{at - self.origin:7.2f}s  {text}", flush=True)

    def _detail(self, at: float, text: str) -> None:
        if self.verbose:
            self.say(at, text)

    def header(self, workers: int, name: str, handle: str, timing: Timing) -> None:
        """What runs, on which handle and with which timing."""
        print(
            f"leadership demo: {workers} worker processes contend for flag {name!r}\n"
            f"  handle {shown(handle)}\n  interval "
            f"{timing.interval:g} s, jitter {timing.jitter:g}, timeout {timing.timeout:g} s, "
            f"lease clock {IMPLEMENTATION}; times are seconds since the start",
            flush=True,
        )

    # -- what the scenario does ------------------------------------------------------------

    def started(self, count: int) -> None:
        self.say(time.monotonic(), f"{count} workers started")

    def killed(self, victim: Worker, at: float) -> None:
        self.say(at, f"SIGKILL {victim.name} (the leader)")

    def stopped(self, victim: Worker, at: float, left: float) -> None:
        self.say(at, f"SIGSTOP {victim.name} (the leader; lease {left:.2f} s left)")

    def continued(self, victim: Worker, at: float, stopped_for: float) -> None:
        self.say(at, f"SIGCONT {victim.name} (stopped for {stopped_for:.2f} s)")

    def closing_all(self) -> None:
        self.say(time.monotonic(), "closing the workers")

    def all_closed(self) -> None:
        self.say(time.monotonic(), "all workers closed")

    # -- what the workers report ----------------------------------------------------------

    def ready(self, worker: Worker, at: float, pid: object) -> None:
        self._detail(at, f"{worker.name} ready (pid {pid})")

    def raised(self, worker: Worker, at: float, first: bool) -> None:
        self.say(at, f"{worker.name} raised{' (the first leader)' if first else ''}")

    def handover(self, fault: Fault) -> None:
        """The successor's first True and the time since the fault."""
        self.say(
            fault.raised_at,
            f"{fault.successor} raised (handover after {fault.kind} of {fault.victim}: "
            f"{fault.handover:.2f} s)",
        )

    def renewed(self, worker: Worker, at: float, lease_until: float) -> None:
        self._detail(at, f"{worker.name} renewed (lease {lease_until - at:.2f} s left)")

    def lease_ran_out(self, worker: Worker, at: float) -> None:
        self.say(at, f"{worker.name} lowered (its lease ran out)")

    def resumed(
        self, worker: Worker, at: float, gap: float, raised: bool, holder: Worker | None
    ) -> None:
        others = f" ({holder.name} holds the flag)" if holder and holder is not worker else ""
        self.say(
            at, f"{worker.name} resumed after {gap:.2f} s: first raised() returned {raised}{others}"
        )

    def closing(self, worker: Worker, at: float, *, during_fault: bool) -> None:
        if during_fault or self.verbose:
            self.say(at, f"{worker.name} calls flag.close()")

    def closed(self, worker: Worker, at: float, took: float) -> None:
        self.say(at, f"{worker.name} closed (close() took {took:.3f} s)")

    def log(self, worker: Worker, at: float, event: Event) -> None:
        """A worker's log record: warnings always, the rest with ``-v``."""
        if self.verbose or event["level"] >= logging.WARNING:
            self.say(at, f"{worker.name} log: {event['message']}")

    def output(self, worker: Worker, at: float, event: Event) -> None:
        """A line a worker printed that is not a report (``-v`` only)."""
        self._detail(at, f"{worker.name} printed: {event['text']}")


def print_summary(ledger: Ledger, origin: float) -> int:
    """Print the handovers and the overlap check; return the exit status (0 OK, 1 failed).

    A handover whose successor raised before the victim's lease had ended, an overlap of
    two terms, and every problem already in the ledger fail the demo.
    """
    problems = list(ledger.problems)
    print("\nsummary", flush=True)
    print(f"  {'fault':<9} {'leader':<10} {'next leader':<12} {'handover':>9}  {'gap':>8}")
    for fault in ledger.faults:
        gap = ledger.gap(fault)
        print(
            f"  {fault.kind:<9} {fault.victim:<10} {fault.successor or '-':<12} "
            f"{fault.handover:>7.3f} s  {gap:>6.3f} s"
        )
        if not gap > 0:
            problems.append(f"{fault.successor} raised before {fault.victim}'s lease had ended")
    print(
        "  (gap: from the old leader's lease end, or its last True after close(), to the\n"
        "   new leader's first True)"
    )
    overlapping = ledger.overlapping_terms()
    for first, second in overlapping:
        problems.append(
            f"OVERLAP: {first.worker} and {second.worker} were both raised from "
            f"{max(first.start, second.start) - origin:.3f}s"
        )
    if not overlapping:
        print(
            f"  no overlap: in {len(ledger.terms)} terms of {len(ledger.workers)} workers, no two "
            "workers saw raised() True at the same time"
        )
    if ledger.paused is not None and ledger.paused.resumed_raised is False:
        print(f"  paused {ledger.paused.name}: its first raised() after SIGCONT returned False")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    took = time.monotonic() - origin
    verdict = "FAILED" if problems else "OK"
    print(f"  {verdict}: finished in {took:.1f} s (lease clock {IMPLEMENTATION})", flush=True)
    return 1 if problems else 0
