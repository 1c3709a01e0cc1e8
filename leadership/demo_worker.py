"""One worker process of ``leadership demo`` (``python -m leadership.demo_worker NAME``).

It reads its configuration as JSON on the first line of stdin (the handle stays off the
process list), builds a flag named by it with process name ``NAME``, and polls
``raised()`` about every millisecond. It reports, as JSON lines on stdout with
``time.monotonic()`` timestamps (``t``), every change (``raised``, ``lowered``), renewal
(``renewed``), resumption after a pause (``resumed``) and the flag's log records
(``log``). A ``close`` line on stdin, end of stdin or SIGTERM closes the flag
(``closing``, then ``closed``). A flag that cannot be built is one ``error`` report and
exit status 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .builder import new_flag
from .clock import IMPLEMENTATION
from .flag import Flag

__all__ = ["worker_main"]

POLL = 0.001
"""Seconds between two ``raised()`` calls of a worker."""
PAUSE_GAP = 0.1
"""A worker that did not run for this long (at most a quarter interval) says it resumed."""


class Reporter:
    """Writes the worker's reports as JSON lines on stdout (thread-safe)."""

    def __init__(self, stop: threading.Event) -> None:
        self._lock = threading.Lock()
        self._stop = stop

    def send(self, event: str, **fields: Any) -> None:
        """Write one report, stamped ``t`` (now) unless given; sets ``stop`` if the demo is gone."""
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
        """Call ``raised()`` once and report what changed since the previous call."""
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
    """Run one worker until told to close; return its exit status."""
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
    """Set ``stop`` on a ``close`` line or at the end of stdin."""
    for line in sys.stdin:
        if line.strip() == "close":
            break
    stop.set()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m leadership.demo_worker NAME (started by leadership demo)")
    sys.exit(worker_main(sys.argv[1]))
