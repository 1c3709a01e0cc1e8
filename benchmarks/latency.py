"""Handover after ``close()`` and failover after SIGKILL, between real processes.

Each sample: a holder process and a waiting process (``contender.py``) share a flag; once
the waiter has made its first check, the benchmark waits a random part of the renewal
period, then either asks the holder to ``close()`` or SIGKILLs it, and measures until the
waiter first sees ``raised()`` True, on CLOCK_BOOTTIME (system-wide). The waiter then
holds, and a new waiter is started for the next sample.

``waiter`` says how each waiting process waits (see ``contender.py``): polling
``raised()`` every 0.5 ms, blocked in ``wait_raised()``, or spinning on ``raised()``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Latencies", "measure"]

CONTENDER = Path(__file__).resolve().parent / "contender.py"
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Latencies:
    """Samples in seconds (``inf`` for a waiter that never took over) and the bound."""

    samples: tuple[float, ...]
    bound: float

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class _Contender:
    """One ``contender.py`` child and the events it printed so far."""

    def __init__(
        self, dsn: str, name: str, process: str, timing: tuple[float, ...], waiter: str
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CONTENDER), dsn, name, process, *map(str, timing), waiter],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: dict[str, int] = {}

    def expect(self, word: str, timeout: float) -> int | None:
        """The value printed with ``word`` (0 when none), or None after ``timeout`` s."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while word not in self.events:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            line = self.proc.stdout.readline()
            if not line:
                return None
            event, _, value = line.strip().partition(" ")
            self.events.setdefault(event, int(value) if value else 0)
        return self.events[word]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        """SIGKILL the child; return CLOCK_BOOTTIME read just before."""
        started = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return started

    def close(self) -> int | None:
        """Ask the child to close its flag; return the reading taken before ``close()``."""
        with contextlib.suppress(BrokenPipeError):
            self.send("close")
        return self.expect("closed", START_TIMEOUT)

    def finish(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self.send("close")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def measure(
    dsn: str,
    name: str,
    samples: int,
    *,
    kill: bool,
    interval: float,
    jitter: float,
    timeout: float,
    waiter: str = "poll",
) -> Latencies:
    """Time ``samples`` takeovers after ``close()`` (or SIGKILL when ``kill``), the
    waiting process waiting the ``waiter`` way (``poll``, ``blocked``, ``spin`` or
    ``spin-switch``: see contender.py)."""
    timing = (interval, jitter, timeout)
    bound = interval + timeout
    rng = random.Random()
    results: list[float] = []
    children: list[_Contender] = []
    try:
        holder = _Contender(dsn, name, "p0", timing, waiter)
        children.append(holder)
        if holder.expect("raised", START_TIMEOUT) is None:
            raise RuntimeError("the first contender never raised its flag")
        for index in range(1, samples + 1):
            next_holder = _Contender(dsn, name, f"p{index}", timing, waiter)
            children.append(next_holder)
            if next_holder.expect("ready", START_TIMEOUT) is None:
                raise RuntimeError(f"contender p{index} never made its first check")
            time.sleep(rng.uniform(0, interval / 2))  # a random phase of the renewal period
            started = holder.kill() if kill else holder.close()
            if started is None:
                raise RuntimeError(f"contender p{index - 1} did not close")
            taken = next_holder.expect("raised", bound + 10.0)
            results.append(math.inf if taken is None else (taken - started) / 1e9)
            if taken is None:
                break  # the waiter never took over: later samples would mean nothing
            holder.finish()
            children.remove(holder)
            holder = next_holder
    finally:
        for child in children:
            child.finish()
    return Latencies(tuple(results), bound)
