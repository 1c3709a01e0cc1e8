"""``leadership demo``: local processes contend for one flag while the demo injects faults.

:func:`run_demo` starts worker processes (:mod:`leadership.demo_worker`), each building a
flag on the same handle (by default an SQLite file in a new temporary directory). A
worker polls ``raised()`` about every millisecond and reports each change, with
``time.monotonic()`` timestamps (one host, so one clock), as JSON lines on its stdout.
The :class:`Scenario` kills the leader (SIGKILL), stops the next one past its lease
(SIGSTOP, then SIGCONT) and closes the next one (``flag.close()``), printing each
handover time: from the fault to the first ``True`` another worker saw. At the end it
checks from the same reports that no two workers saw ``True`` at overlapping times.

The reports are handled by :mod:`leadership.demo_events`; what is printed comes from
:mod:`leadership.demo_report`.

Exit status of :func:`run_demo`: 0 when every fault was handed over and no overlap was
seen, 1 otherwise. Worker processes are stopped on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from urllib.parse import quote

from .builder import new_flag
from .demo_events import DemoFailed, EventHandler, EventPump, Fault, Ledger, Worker
from .demo_report import Narrator, print_summary
from .errors import ConfigurationError
from .timing import Timing

__all__ = ["DemoOptions", "Scenario", "run_demo"]

START_LIMIT = 20.0
"""Seconds the workers have to start (Python start-up on a loaded machine)."""


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
    """Run the demo, printing its log and summary on stdout; return the exit status.

    Raises ConfigurationError for a bad option or handle and StoreUnavailable when the
    database cannot be used, before any worker starts.
    """
    timing = options.timing()
    if options.workers < 3:
        raise ConfigurationError("workers", f"at least 3 are needed, got {options.workers}")
    with contextlib.ExitStack() as stack:
        handle = options.handle
        if handle is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="leadership-demo-"))
            handle = "sqlite:///" + quote(os.path.join(directory, "flags.db"))
        prepare_flag(handle, options.name, timing)
        narrator = Narrator(time.monotonic(), options.verbose)
        scenario = Scenario(options, timing, handle, narrator)
        stack.callback(scenario.stop_workers)
        stack.enter_context(_sigterm_interrupts())
        try:
            scenario.run()
        except DemoFailed as error:
            print(f"leadership demo: error: {error}", file=sys.stderr, flush=True)
            return 1
        return print_summary(scenario.ledger, narrator.origin)


def prepare_flag(handle: str, name: str, timing: Timing) -> None:
    """Connect once and create the flag's table, so that a bad handle fails here.

    Builds a flag whose precheck always says no (it never contends), then closes it.
    Raises what ``FlagBuilder.build()`` raises.
    """
    quiet = logging.getLogger("leadership.demo.prepare")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    probe = (
        new_flag()
        .handle(handle)
        .name(name)
        .process(f"leadership-demo-{os.getpid()}")
        .interval(timing.interval)
        .jitter(timing.jitter)
        .timeout(timing.timeout)
        .logger(quiet)
        .precheck(lambda: False)
        .build()
    )
    probe.close()


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


class Scenario:
    """The demo's script: start the workers, then SIGKILL, SIGSTOP and close() three
    successive leaders, then close every worker.

    Each step waits, handling the workers' reports, for what it needs to see (a leader,
    a handover, an exit) and raises DemoFailed if it does not come within its limit.
    """

    def __init__(self, options: DemoOptions, timing: Timing, handle: str, narrator: Narrator):
        self.options = options
        self.timing = timing
        self.handle = handle
        self.narrator = narrator
        self.limit = 3 * timing.interval + 5.0  # to see a takeover, on a loaded machine
        self.ledger = Ledger()
        self.pump = EventPump(EventHandler(self.ledger, narrator))

    def run(self) -> None:
        """Play the whole script."""
        timing = self.timing
        workers = self.ledger.workers
        self.narrator.header(self.options.workers, self.options.name, self.handle, timing)
        for number in range(1, self.options.workers + 1):
            self.start_worker(f"worker-{number}")
        self.pump.until(lambda: all(w.ready for w in workers), START_LIMIT, "workers to start")
        self.narrator.started(len(workers))
        self.wait_leader()
        self.pump.during(timing.interval)
        self.kill(self.wait_leader())
        self.pump.during(timing.interval / 2)
        self.pause(self.wait_leader())
        self.pump.during(timing.interval / 2)
        self.close(self.wait_leader())
        self.pump.during(timing.interval / 2)
        self.shutdown()

    def start_worker(self, name: str) -> None:
        """Start one worker process and follow its reports."""
        process = subprocess.Popen(
            [sys.executable, "-m", "leadership.demo_worker", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the workers
        )
        worker = Worker(name, process)
        self.ledger.workers.append(worker)
        config = {
            "handle": self.handle,
            "name": self.options.name,
            "interval": self.timing.interval,
            "jitter": self.timing.jitter,
            "timeout": self.timing.timeout,
        }
        self.send(worker, json.dumps(config))  # on stdin: keeps passwords off the process list
        self.pump.follow(worker)

    @staticmethod
    def send(worker: Worker, line: str) -> None:
        """Write one line to the worker's stdin; a worker already gone is ignored."""
        with contextlib.suppress(OSError):
            assert worker.process.stdin is not None
            worker.process.stdin.write(line + "\n")
            worker.process.stdin.flush()

    def wait_leader(self) -> Worker:
        """The current leader, once there is one."""
        self.pump.until(lambda: self.ledger.leader() is not None, self.limit, "a leader")
        leader = self.ledger.leader()
        assert leader is not None
        return leader

    def await_successor(self, fault: Fault) -> None:
        """Wait until another worker raised the flag after ``fault``."""
        self.pump.until(
            lambda: fault.successor is not None, self.limit, f"a leader after {fault.kind}"
        )

    def kill(self, victim: Worker) -> None:
        """SIGKILL the leader; its term ends at its death."""
        at = time.monotonic()
        fault = self.ledger.begin("SIGKILL", victim, at)
        victim.expected_exit = True
        victim.process.kill()
        victim.process.wait()
        dead = time.monotonic()
        self.narrator.killed(victim, at)
        self.pump.until(lambda: victim.exited, self.limit, f"{victim.name}'s last reports")
        if victim.term is not None:
            self.ledger.end_term(victim, dead)
        self.await_successor(fault)

    def pause(self, victim: Worker) -> None:
        """SIGSTOP the leader past its lease, then SIGCONT it and see its first raised()."""
        # Stop it just after a renewal: SQLite's write lock lives in the process holding
        # it, so a process stopped inside its check transaction would block every other.
        renewals = victim.renewals
        self.pump.until(lambda: victim.renewals > renewals, self.limit, f"{victim.name} to renew")
        at = time.monotonic()
        fault = self.ledger.begin("SIGSTOP", victim, at)
        os.kill(victim.process.pid, signal.SIGSTOP)
        victim.stopped = True
        self.ledger.paused = victim
        self.narrator.stopped(victim, at, victim.term.lease_until - at if victim.term else 0.0)
        self.await_successor(fault)
        self.pump.during(0.3 * self.timing.interval)
        victim.continued_at = time.monotonic()
        os.kill(victim.process.pid, signal.SIGCONT)
        victim.stopped = False
        self.narrator.continued(victim, victim.continued_at, victim.continued_at - at)
        self.pump.until(
            lambda: victim.resumed_raised is not None and victim.term is None,
            self.limit,
            f"{victim.name} to report after SIGCONT",
        )

    def close(self, victim: Worker) -> None:
        """Ask the leader to close its flag; the fault's time is when it starts closing."""
        fault = self.ledger.begin("close()", victim, None)
        victim.closing = victim.expected_exit = True
        self.send(victim, "close")
        self.await_successor(fault)
        self.pump.until(lambda: victim.exited, self.limit, f"{victim.name} to close")

    def shutdown(self) -> None:
        """Close the followers, then the leader (so nobody takes over while closing)."""
        self.ledger.fault = None
        live = [w for w in self.ledger.workers if not w.exited]
        leader = self.ledger.leader()
        self.narrator.closing_all()
        for group in ([w for w in live if w is not leader], [w for w in live if w is leader]):
            self.close_all(group)
        self.narrator.all_closed()

    def close_all(self, group: list[Worker]) -> None:
        """Ask every worker of ``group`` to close; wait until they all exited."""
        for worker in group:
            worker.closing = worker.expected_exit = True
            self.send(worker, "close")
        self.pump.until(lambda: all(w.exited for w in group), self.limit, "workers to close")

    def stop_workers(self) -> None:
        """Stop every worker still running: EOF on stdin closes it; SIGKILL after 3 s."""
        workers = self.ledger.workers
        for worker in workers:
            if worker.process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(worker.process.pid, signal.SIGCONT)
            with contextlib.suppress(OSError):
                if worker.process.stdin is not None:
                    worker.process.stdin.close()
        deadline = time.monotonic() + 3.0
        for worker in workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
