"""``leadership demo``: local processes contend for one flag while the demo injects faults.

:func:`run_demo` starts worker processes (``python -m leadership.demo worker NAME``), each
building a flag on the same handle (by default an SQLite file in a new temporary
directory). A worker polls ``raised()`` about every millisecond and reports each change,
with ``time.monotonic()`` timestamps (one host, so one clock), as JSON lines on its stdout.
The demo kills the leader (SIGKILL), stops the next one past its lease (SIGSTOP, then
SIGCONT) and closes the next one (``flag.close()``), printing each handover time: from the
fault to the first ``True`` another worker saw. At the end it checks from the same
reports that no two workers saw ``True`` at overlapping times.

Exit status of :func:`run_demo`: 0 when every fault was handed over and no overlap was
seen, 1 otherwise. Worker processes are stopped on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import quote

from .backends import open_store
from .builder import new_flag
from .clock import IMPLEMENTATION
from .dsn import redact
from .errors import ConfigurationError
from .flag import Flag
from .timing import Timing

__all__ = ["DemoOptions", "run_demo"]

POLL = 0.001
"""Seconds between two ``raised()`` calls of a worker."""
PAUSE_GAP = 0.1
"""A worker that did not run for this long (at most a quarter interval) says it resumed."""
START_LIMIT = 20.0
"""Seconds the workers have to start (Python start-up on a loaded machine)."""

Event = dict[str, Any]


@dataclass(frozen=True)
class DemoOptions:
    """What ``leadership demo`` runs; ``timeout`` None means 80 % of the largest allowed."""

    workers: int = 4
    handle: str | None = None
    name: str = "leadership-demo"
    interval: float = 1.0
    jitter: float = 0.2
    timeout: float | None = None
    verbose: bool = False

    def timing(self) -> Timing:
        """The validated timing; raises ConfigurationError naming the bad option."""
        if self.timeout is not None:
            return Timing(self.interval, self.jitter, self.timeout)
        try:
            largest = Timing(self.interval, self.jitter, 1e-9).max_timeout
        except ConfigurationError as error:
            if error.parameter != "timeout":
                raise
            raise ConfigurationError(
                "jitter", f"{self.jitter:g} leaves no time for a renewal within the lease"
            ) from None
        return Timing(self.interval, self.jitter, round(0.8 * largest, 3))


def run_demo(options: DemoOptions) -> int:
    """Run the demo, printing its log and summary on stdout; return the exit status."""
    timing = options.timing()
    if options.workers < 3:
        raise ConfigurationError("workers", f"at least 3 are needed, got {options.workers}")
    with contextlib.ExitStack() as stack:
        handle = options.handle
        if handle is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="leadership-demo-"))
            handle = "sqlite:///" + quote(os.path.join(directory, "flags.db"))
        open_store(handle, options.name, timing.interval, timing.timeout).close()  # fail fast
        demo = Demo(options, timing, handle)
        stack.callback(demo.cleanup)
        stack.enter_context(_sigterm_interrupts())
        try:
            demo.run()
        except DemoFailed as error:
            print(f"leadership demo: error: {error}", file=sys.stderr, flush=True)
            return 1
        return demo.summary()


class DemoFailed(Exception):
    """The demo could not go on (a worker failed, nobody took over in time)."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so the workers are cleaned up as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


class Demo:
    """The coordinator: starts the workers, injects the faults, keeps the history."""

    def __init__(self, options: DemoOptions, timing: Timing, handle: str) -> None:
        self.options = options
        self.timing = timing
        self.handle = handle
        self.origin = time.monotonic()
        self.limit = 3 * timing.interval + 5.0  # to see a takeover, on a loaded machine
        self.events: queue.Queue[tuple[Worker, Event]] = queue.Queue()
        self.workers: list[Worker] = []
        self.terms: list[Term] = []
        self.faults: list[Fault] = []
        self.fault: Fault | None = None
        self.problems: list[str] = []
        self.paused: Worker | None = None

    def say(self, at: float, text: str) -> None:
        print(f"{at - self.origin:7.2f}s  {text}", flush=True)

    # -- the scenario ---------------------------------------------------------------------

    def run(self) -> None:
        timing = self.timing
        print(
            f"leadership demo: {self.options.workers} worker processes contend for flag "
            f"{self.options.name!r}\n  handle {shown(self.handle)}\n  interval "
            f"{timing.interval:g} s, jitter {timing.jitter:g}, timeout {timing.timeout:g} s, "
            f"lease clock {IMPLEMENTATION}; times are seconds since the start",
            flush=True,
        )
        for number in range(1, self.options.workers + 1):
            self.start_worker(f"worker-{number}")
        self.pump(lambda: all(w.ready for w in self.workers), START_LIMIT, "workers to start")
        self.say(time.monotonic(), f"{len(self.workers)} workers started")
        self.wait_leader()
        self.pump_for(timing.interval)
        self.kill(self.wait_leader())
        self.pump_for(timing.interval / 2)
        self.pause(self.wait_leader())
        self.pump_for(timing.interval / 2)
        self.close(self.wait_leader())
        self.pump_for(timing.interval / 2)
        self.shutdown()

    def kill(self, victim: Worker) -> None:
        at = time.monotonic()
        fault = self.begin("SIGKILL", victim, at)
        victim.expected_exit = True
        victim.process.kill()
        victim.process.wait()
        dead = time.monotonic()
        self.say(at, f"SIGKILL {victim.name} (the leader)")
        self.pump(lambda: victim.exited, self.limit, f"{victim.name}'s last reports")
        if victim.term is not None:
            self.end_term(victim, dead)
        self.pump(lambda: fault.successor is not None, self.limit, f"a leader after {fault.kind}")

    def pause(self, victim: Worker) -> None:
        # Stop it just after a renewal: SQLite's write lock lives in the process holding
        # it, so a process stopped inside its check transaction would block every other.
        renewals = victim.renewals
        self.pump(lambda: victim.renewals > renewals, self.limit, f"{victim.name} to renew")
        at = time.monotonic()
        fault = self.begin("SIGSTOP", victim, at)
        os.kill(victim.process.pid, signal.SIGSTOP)
        victim.stopped = True
        self.paused = victim
        left = victim.term.lease_until - at if victim.term else 0.0
        self.say(at, f"SIGSTOP {victim.name} (the leader; lease {left:.2f} s left)")
        self.pump(lambda: fault.successor is not None, self.limit, f"a leader after {fault.kind}")
        self.pump_for(0.3 * self.timing.interval)
        victim.continued_at = time.monotonic()
        os.kill(victim.process.pid, signal.SIGCONT)
        victim.stopped = False
        stopped_for = victim.continued_at - at
        self.say(victim.continued_at, f"SIGCONT {victim.name} (stopped for {stopped_for:.2f} s)")
        self.pump(
            lambda: victim.resumed_raised is not None and victim.term is None,
            self.limit,
            f"{victim.name} to report after SIGCONT",
        )

    def close(self, victim: Worker) -> None:
        fault = self.begin("close()", victim, None)
        victim.closing = victim.expected_exit = True
        self.send(victim, "close")
        self.pump(lambda: fault.successor is not None, self.limit, f"a leader after {fault.kind}")
        self.pump(lambda: victim.exited, self.limit, f"{victim.name} to close")

    def shutdown(self) -> None:
        """Close the followers, then the leader (so nobody takes over while closing)."""
        self.fault = None
        live = [w for w in self.workers if not w.exited]
        leader = self.leader()
        self.say(time.monotonic(), "closing the workers")
        for group in ([w for w in live if w is not leader], [w for w in live if w is leader]):
            self.close_all(group)
        self.say(time.monotonic(), "all workers closed")

    def close_all(self, group: list[Worker]) -> None:
        for worker in group:
            worker.closing = worker.expected_exit = True
            self.send(worker, "close")
        self.pump(lambda: all(w.exited for w in group), self.limit, "workers to close")

    # -- workers and their reports --------------------------------------------------------

    def start_worker(self, name: str) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "leadership.demo", "worker", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the workers
        )
        worker = Worker(name, process)
        self.workers.append(worker)
        config = {
            "handle": self.handle,
            "name": self.options.name,
            "interval": self.timing.interval,
            "jitter": self.timing.jitter,
            "timeout": self.timing.timeout,
        }
        self.send(worker, json.dumps(config))  # on stdin: keeps passwords off the process list
        threading.Thread(target=self.read, args=(worker,), daemon=True).start()

    def read(self, worker: Worker) -> None:
        assert worker.process.stdout is not None
        for line in worker.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line.rstrip()}
            self.events.put((worker, event))
        self.events.put((worker, {"event": "exit"}))

    def send(self, worker: Worker, line: str) -> None:
        with contextlib.suppress(OSError):
            assert worker.process.stdin is not None
            worker.process.stdin.write(line + "\n")
            worker.process.stdin.flush()

    def pump(self, done: Callable[[], bool], limit: float, what: str) -> None:
        """Handle reports until ``done()``; raise DemoFailed after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"waited {limit:g} s for {what} in vain")
            with contextlib.suppress(queue.Empty):
                self.handle_event(*self.events.get(timeout=left))

    def pump_for(self, seconds: float) -> None:
        """Handle reports for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                self.handle_event(*self.events.get(timeout=left))

    def leader(self) -> Worker | None:
        holders = [w for w in self.workers if w.term and not w.stopped and not w.exited]
        return max(holders, key=lambda w: w.term.start if w.term else 0.0, default=None)

    def wait_leader(self) -> Worker:
        self.pump(lambda: self.leader() is not None, self.limit, "a leader")
        leader = self.leader()
        assert leader is not None
        return leader

    def begin(self, kind: str, victim: Worker, at: float | None) -> Fault:
        self.fault = Fault(kind, victim.name, at)
        self.faults.append(self.fault)
        return self.fault

    def end_term(self, worker: Worker, end: float) -> None:
        if worker.term is not None:
            worker.term.end = end
            self.terms.append(worker.term)
            worker.term = None

    def handle_event(self, worker: Worker, event: Event) -> None:
        kind = event.get("event")
        at = float(event.get("t", time.monotonic()))
        if kind == "ready":
            worker.ready = True
            if self.options.verbose:
                self.say(at, f"{worker.name} ready (pid {event.get('pid')})")
        elif kind == "raised":
            self.raised(worker, at, float(event["until"]))
        elif kind == "renewed" and worker.term is not None:
            worker.term.lease_until = float(event["until"])
            worker.renewals += 1
            if self.options.verbose:
                self.say(at, f"{worker.name} renewed (lease {event['until'] - at:.2f} s left)")
        elif kind == "lowered":
            self.end_term(worker, float(event["prev"]))
            if not (worker.closing or worker.quiet):
                self.say(at, f"{worker.name} lowered (its lease ran out)")
            worker.quiet = False
        elif kind == "resumed" and worker.continued_at is not None and at >= worker.continued_at:
            self.resumed(worker, at, bool(event["raised"]), float(event["gap"]))
        elif kind == "closing":
            self.closing(worker, at)
        elif kind == "closed":
            self.say(at, f"{worker.name} closed (close() took {event['took']:.3f} s)")
        elif kind == "log" and (self.options.verbose or event["level"] >= logging.WARNING):
            self.say(at, f"{worker.name} log: {event['message']}")
        elif kind == "output" and self.options.verbose:
            self.say(at, f"{worker.name} printed: {event['text']}")
        elif kind == "error":
            raise DemoFailed(f"{worker.name} could not start: {event['message']}")
        elif kind == "exit":
            self.exited(worker)

    def raised(self, worker: Worker, at: float, until: float) -> None:
        worker.term = Term(worker.name, at, lease_until=until)
        fault = self.fault
        if fault is None or fault.successor is not None or worker.name == fault.victim:
            first = " (the first leader)" if not self.terms and len(self.held()) == 1 else ""
            self.say(at, f"{worker.name} raised{first}")
            return
        fault.successor, fault.raised_at = worker.name, at
        if fault.at is not None:
            self.announce(fault)

    def announce(self, fault: Fault) -> None:
        self.say(
            fault.raised_at,
            f"{fault.successor} raised (handover after {fault.kind} of {fault.victim}: "
            f"{fault.handover:.2f} s)",
        )

    def resumed(self, worker: Worker, at: float, raised: bool, gap: float) -> None:
        worker.resumed_raised = raised
        worker.quiet = True
        holder = self.leader()
        others = f" ({holder.name} holds the flag)" if holder and holder is not worker else ""
        self.say(
            at, f"{worker.name} resumed after {gap:.2f} s: first raised() returned {raised}{others}"
        )
        if raised:
            self.problems.append(f"{worker.name} saw raised() True after its pause")

    def closing(self, worker: Worker, at: float) -> None:
        fault = self.fault
        if fault is not None or self.options.verbose:
            self.say(at, f"{worker.name} calls flag.close()")
        if fault is not None and fault.victim == worker.name and fault.at is None:
            fault.at = at
            if fault.successor is not None:
                self.announce(fault)

    def exited(self, worker: Worker) -> None:
        worker.exited = True
        status = worker.process.wait()
        if not worker.expected_exit:
            raise DemoFailed(f"{worker.name} exited unexpectedly (status {status})")

    def held(self) -> list[Worker]:
        return [w for w in self.workers if w.term is not None]

    def gap(self, fault: Fault) -> float:
        """From the victim's lease end (its last True after close()) to the successor's first
        True; the victim's term is the last one it started before the successor raised."""
        terms = [t for t in self.terms if t.worker == fault.victim and t.start < fault.raised_at]
        if not terms or fault.successor is None:
            return float("nan")
        term = max(terms, key=lambda t: t.start)
        end = term.end if fault.kind == "close()" else term.lease_until
        return fault.raised_at - (end if end is not None else float("inf"))

    # -- the end --------------------------------------------------------------------------

    def summary(self) -> int:
        """Print the handovers and the overlap check; return the exit status."""
        print("\nsummary", flush=True)
        print(f"  {'fault':<9} {'leader':<10} {'next leader':<12} {'handover':>9}  {'gap':>8}")
        for fault in self.faults:
            gap = self.gap(fault)
            print(
                f"  {fault.kind:<9} {fault.victim:<10} {fault.successor or '-':<12} "
                f"{fault.handover:>7.3f} s  {gap:>6.3f} s"
            )
            if not gap > 0:
                self.problems.append(
                    f"{fault.successor} raised before {fault.victim}'s lease had ended"
                )
        print(
            "  (gap: from the old leader's lease end, or its last True after close(), to the\n"
            "   new leader's first True)"
        )
        overlaps = find_overlaps(self.terms)
        for first, second in overlaps:
            self.problems.append(
                f"OVERLAP: {first.worker} and {second.worker} were both raised from "
                f"{max(first.start, second.start) - self.origin:.3f}s"
            )
        if not overlaps:
            print(
                f"  no overlap: in {len(self.terms)} terms of {len(self.workers)} workers, no two "
                "workers saw raised() True at the same time"
            )
        if self.paused is not None and self.paused.resumed_raised is False:
            print(f"  paused {self.paused.name}: its first raised() after SIGCONT returned False")
        for problem in self.problems:
            print(f"  PROBLEM: {problem}")
        took = time.monotonic() - self.origin
        verdict = "FAILED" if self.problems else "OK"
        print(f"  {verdict}: finished in {took:.1f} s (lease clock {IMPLEMENTATION})", flush=True)
        return 1 if self.problems else 0

    def cleanup(self) -> None:
        """Stop every worker still running: EOF on stdin closes it; SIGKILL after 3 s."""
        for worker in self.workers:
            if worker.process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(worker.process.pid, signal.SIGCONT)
            with contextlib.suppress(OSError):
                if worker.process.stdin is not None:
                    worker.process.stdin.close()
        deadline = time.monotonic() + 3.0
        for worker in self.workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


def shown(handle: str) -> str:
    """The handle for display: passwords hidden (an SQLite path has none)."""
    return handle if handle.startswith("sqlite:") else redact(handle)


def find_overlaps(terms: list[Term]) -> list[tuple[Term, Term]]:
    """Pairs of terms of different workers whose reported intervals intersect."""
    found = []
    ordered = sorted(terms, key=lambda term: term.start)
    for index, first in enumerate(ordered):
        first_end = first.end if first.end is not None else float("inf")
        for second in ordered[index + 1 :]:
            if second.start > first_end:
                break
            if second.worker != first.worker:
                found.append((first, second))
    return found


# -- the worker process -------------------------------------------------------------------


class Reporter:
    """Writes the worker's reports as JSON lines on stdout (thread-safe)."""

    def __init__(self, stop: threading.Event) -> None:
        self._lock = threading.Lock()
        self._stop = stop

    def send(self, event: str, **fields: Any) -> None:
        fields.setdefault("t", time.monotonic())
        line = json.dumps({"event": event, **fields})
        with self._lock:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):  # the demo is gone: stop
                self._stop.set()


class ReportHandler(logging.Handler):
    """Forwards the flag's log records to the demo."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(logging.INFO)
        self._reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        self._reporter.send("log", level=record.levelno, message=record.getMessage())


@dataclass
class Watcher:
    """Polls ``raised()`` and reports each change, renewal and pause."""

    flag: Flag
    reporter: Reporter
    pause_gap: float = PAUSE_GAP
    raised: bool = False
    seen_at: float = field(default_factory=time.monotonic)
    until: float = 0.0

    def observe(self, after_pause: bool = True) -> None:
        at = time.monotonic()
        raised = self.flag.raised()
        until = at + self.flag.lease_remaining() if raised else 0.0
        if after_pause and at - self.seen_at > self.pause_gap:
            self.reporter.send("resumed", t=at, gap=at - self.seen_at, raised=raised)
        if raised != self.raised:
            kind = "raised" if raised else "lowered"
            self.reporter.send(kind, t=at, prev=self.seen_at, until=until)
        elif raised and until > self.until + 0.01:
            self.reporter.send("renewed", t=at, until=until)
        self.raised, self.seen_at = raised, at
        self.until = until


def worker_main(process: str) -> int:
    """Run one worker: config on the first stdin line; ``close`` or EOF closes the flag."""
    stop = threading.Event()
    reporter = Reporter(stop)
    logger = logging.getLogger(f"leadership.demo.{process}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(ReportHandler(reporter))
    try:
        config = json.loads(sys.stdin.readline())
        flag = (
            new_flag()
            .handle(config["handle"])
            .name(config["name"])
            .process(process)
            .interval(config["interval"])
            .jitter(config["jitter"])
            .timeout(config["timeout"])
            .logger(logger)
            .build()
        )
    except Exception as error:  # reported: the demo prints it as one line
        reporter.send("error", message=str(error) or type(error).__name__)
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    threading.Thread(target=_commands, args=(stop,), daemon=True).start()
    reporter.send("ready", pid=os.getpid(), implementation=IMPLEMENTATION)
    watcher = Watcher(flag, reporter, min(PAUSE_GAP, flag.timing.interval / 4))
    while not stop.is_set():
        watcher.observe()
        time.sleep(POLL)
    closing = time.monotonic()
    reporter.send("closing", t=closing)
    flag.close()
    closed = time.monotonic()
    watcher.observe(after_pause=False)
    reporter.send("closed", t=closed, took=closed - closing)
    return 0


def _commands(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "close":
            break
    stop.set()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        sys.exit("usage: python -m leadership.demo worker NAME (started by leadership demo)")
    sys.exit(worker_main(sys.argv[2]))
