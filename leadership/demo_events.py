"""The event side of ``leadership demo``: the workers' reports and what the demo learns.

Each worker reports on its stdout (see :mod:`leadership.demo_worker`). :class:`EventPump`
reads every worker's stdout on a thread of its own into one queue and hands the reports,
in arrival order, to :class:`EventHandler` on the thread that pumps (the scenario's).
The handler keeps the :class:`Ledger` (workers, terms, faults, problems) and tells the
:class:`~leadership.demo_report.Narrator` what to print. Times are ``time.monotonic()``
seconds, shared by every process of the host.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .demo_report import Narrator
from .testing import overlapping_spans

__all__ = ["DemoFailed", "Event", "EventHandler", "EventPump", "Fault", "Ledger", "Term", "Worker"]

Event = dict[str, Any]
"""One report of a worker: ``event`` (its kind), ``t`` (when) and the kind's fields."""


class DemoFailed(Exception):
    """The demo could not go on (a worker failed, nobody took over in time)."""


@dataclass
class Term:
    """One worker's leadership term, as it reported it (monotonic seconds)."""

    worker: str
    start: float  # first raised() True
    end: float | None = None  # last raised() True (or death); None while open
    lease_until: float = 0.0  # end of the local lease as last reported


@dataclass
class Fault:
    """A fault injected into the leader and the handover that followed."""

    kind: str
    victim: str
    at: float | None  # None until known (close(): the worker reports it)
    successor: str | None = None
    raised_at: float = 0.0

    @property
    def handover(self) -> float:
        """Seconds from the fault to the successor's first True."""
        return self.raised_at - (self.at or 0.0)


@dataclass
class Worker:
    """A worker process as the demo sees it."""

    name: str
    process: subprocess.Popen[str]
    ready: bool = False
    exited: bool = False
    expected_exit: bool = False
    stopped: bool = False
    closing: bool = False
    continued_at: float | None = None
    resumed_raised: bool | None = None
    renewals: int = 0
    quiet: bool = False  # do not print the next "lowered" (already explained)
    term: Term | None = None


class Ledger:
    """What the demo knows: its workers, their ended terms, the faults and the problems."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.terms: list[Term] = []
        self.faults: list[Fault] = []
        self.fault: Fault | None = None  # the fault whose handover is awaited or last seen
        self.problems: list[str] = []
        self.paused: Worker | None = None

    def leader(self) -> Worker | None:
        """The live, running worker whose open term started last, if any."""
        holders = [w for w in self.workers if w.term and not w.stopped and not w.exited]
        return max(holders, key=lambda w: w.term.start if w.term else 0.0, default=None)

    def held(self) -> list[Worker]:
        """The workers with an open term (stopped ones included)."""
        return [w for w in self.workers if w.term is not None]

    def begin(self, kind: str, victim: Worker, at: float | None) -> Fault:
        """Record a fault injected into ``victim``; it is the current fault from now on."""
        self.fault = Fault(kind, victim.name, at)
        self.faults.append(self.fault)
        return self.fault

    def end_term(self, worker: Worker, end: float) -> None:
        """Close the worker's open term at ``end``, if it has one."""
        if worker.term is not None:
            worker.term.end = end
            self.terms.append(worker.term)
            worker.term = None

    def gap(self, fault: Fault) -> float:
        """From the victim's lease end (its last True after close()) to the successor's first
        True; the victim's term is the last one it started before the successor raised.
        NaN when there was no successor or no such term."""
        terms = [t for t in self.terms if t.worker == fault.victim and t.start < fault.raised_at]
        if not terms or fault.successor is None:
            return float("nan")
        term = max(terms, key=lambda t: t.start)
        end = term.end if fault.kind == "close()" else term.lease_until
        return fault.raised_at - (end if end is not None else float("inf"))

    def overlapping_terms(self) -> list[tuple[Term, Term]]:
        """Pairs of ended terms of different workers whose reported intervals intersect."""
        terms: dict[str, list[Term]] = {}
        for term in self.terms:
            terms.setdefault(term.worker, []).append(term)
        spans = {
            worker: [(t.start, t.end if t.end is not None else math.inf) for t in own]
            for worker, own in terms.items()
        }
        return [
            (terms[first.process][first.index], terms[second.process][second.index])
            for first, second in overlapping_spans(spans)
        ]


class EventPump:
    """Carries every worker's reports, in arrival order, to one handler.

    The handler runs on the thread calling :meth:`until` or :meth:`during`; what it
    raises (e.g. :class:`DemoFailed`) propagates to that caller.
    """

    def __init__(self, handler: Callable[[Worker, Event], None]) -> None:
        self._handler = handler
        self._events: queue.Queue[tuple[Worker, Event]] = queue.Queue()

    def follow(self, worker: Worker) -> None:
        """Read the worker's reports on a daemon thread; its end of output is an ``exit`` event."""
        threading.Thread(target=self._read, args=(worker,), daemon=True).start()

    def _read(self, worker: Worker) -> None:
        assert worker.process.stdout is not None
        for line in worker.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line.rstrip()}
            self._events.put((worker, event))
        self._events.put((worker, {"event": "exit"}))

    def until(self, done: Callable[[], bool], limit: float, what: str) -> None:
        """Handle reports until ``done()``; raise DemoFailed after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"waited {limit:g} s for {what} in vain")
            self._handle_next(left)

    def during(self, seconds: float) -> None:
        """Handle reports for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._handle_next(left)

    def _handle_next(self, wait: float) -> None:
        with contextlib.suppress(queue.Empty):
            self._handler(*self._events.get(timeout=wait))


class EventHandler:
    """Turns each report into the ledger's state and the narrator's lines.

    Raises DemoFailed when a worker could not start or exited unexpectedly.
    """

    def __init__(self, ledger: Ledger, narrator: Narrator) -> None:
        self._ledger = ledger
        self._narrator = narrator
        self._handlers: dict[str, Callable[[Worker, float, Event], None]] = {
            "ready": self._ready,
            "raised": self._raised,
            "renewed": self._renewed,
            "lowered": self._lowered,
            "resumed": self._resumed,
            "closing": self._closing,
            "closed": self._closed,
            "log": self._narrator.log,
            "output": self._narrator.output,
            "error": self._error,
            "exit": self._exit,
        }

    def __call__(self, worker: Worker, event: Event) -> None:
        handler = self._handlers.get(str(event.get("event")))
        if handler is not None:
            handler(worker, float(event.get("t", time.monotonic())), event)

    def _ready(self, worker: Worker, at: float, event: Event) -> None:
        worker.ready = True
        self._narrator.ready(worker, at, event.get("pid"))

    def _raised(self, worker: Worker, at: float, event: Event) -> None:
        ledger = self._ledger
        worker.term = Term(worker.name, at, lease_until=float(event["until"]))
        fault = ledger.fault
        if fault is None or fault.successor is not None or worker.name == fault.victim:
            first = not ledger.terms and len(ledger.held()) == 1
            self._narrator.raised(worker, at, first)
            return
        fault.successor, fault.raised_at = worker.name, at
        if fault.at is not None:
            self._narrator.handover(fault)

    def _renewed(self, worker: Worker, at: float, event: Event) -> None:
        if worker.term is None:
            return
        worker.term.lease_until = float(event["until"])
        worker.renewals += 1
        self._narrator.renewed(worker, at, worker.term.lease_until)

    def _lowered(self, worker: Worker, at: float, event: Event) -> None:
        self._ledger.end_term(worker, float(event["prev"]))
        if not (worker.closing or worker.quiet):
            self._narrator.lease_ran_out(worker, at)
        worker.quiet = False

    def _resumed(self, worker: Worker, at: float, event: Event) -> None:
        if worker.continued_at is None or at < worker.continued_at:
            return  # a pause of its own (a loaded machine), not the demo's SIGSTOP
        raised = bool(event["raised"])
        worker.resumed_raised = raised
        worker.quiet = True
        self._narrator.resumed(worker, at, float(event["gap"]), raised, self._ledger.leader())
        if raised:
            self._ledger.problems.append(f"{worker.name} saw raised() True after its pause")

    def _closing(self, worker: Worker, at: float, event: Event) -> None:
        fault = self._ledger.fault
        self._narrator.closing(worker, at, during_fault=fault is not None)
        if fault is not None and fault.victim == worker.name and fault.at is None:
            fault.at = at
            if fault.successor is not None:
                self._narrator.handover(fault)

    def _closed(self, worker: Worker, at: float, event: Event) -> None:
        self._narrator.closed(worker, at, float(event["took"]))

    def _error(self, worker: Worker, at: float, event: Event) -> None:
        raise DemoFailed(f"{worker.name} could not start: {event['message']}")

    def _exit(self, worker: Worker, at: float, event: Event) -> None:
        worker.exited = True
        status = worker.process.wait()
        if not worker.expected_exit:
            raise DemoFailed(f"{worker.name} exited unexpectedly (status {status})")
