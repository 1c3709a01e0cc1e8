"""``leadership run``: run a command only while this process holds the flag.

Order of events:

1. wait until the flag is raised (SIGINT/SIGTERM while waiting: exit 128+signal);
2. start the command in its own process group; it dies with this process
   (``PR_SET_PDEATHSIG``), and a kernel timer (:mod:`leadership.deadman`) kills this
   process if it is frozen past the lease, so the command never outlives the lease;
3. while the command runs: when the lease has less than ``grace`` seconds left without
   a renewal, or the flag is lowered, send SIGTERM to its group; SIGKILL when the lease
   ends (or ``grace`` seconds after a lowering), always before another process can take
   the flag;
4. when the command exits: release the flag and exit with its status (128+N if killed
   by signal N); when leadership was lost: exit ``EXIT_LOST``; SIGINT/SIGTERM to this
   process are forwarded to the command, then the flag is released.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .clock import now_ns
from .deadman import DeadMan, die_with_parent
from .errors import LeadershipError
from .flag import Flag
from .timing import SAFETY_MARGIN, Timing

__all__ = ["EXIT_LOST", "CommandNotStarted", "Supervisor", "max_grace"]

EXIT_LOST = 75
"""Exit status after leadership was lost while the command ran (EX_TEMPFAIL)."""

POLL = 0.02
"""Seconds between two looks at the lease while the command runs."""


def max_grace(timing: Timing) -> float:
    """The largest ``--grace``: a healthy holder's lease never gets that close to its end.

    A renewal starts at most ``I/2 (1 + j)`` after the last one and takes at most the
    timeout, so the lease never has less than ``0.9 I - I/2 (1 + j) - T`` left.
    """
    return timing.max_timeout - timing.timeout


class CommandNotStarted(LeadershipError):
    """The command could not be started; ``status`` is 127 (not found) or 126 (other)."""

    def __init__(self, command: str, error: OSError) -> None:
        super().__init__(f"cannot run {command!r}: {error.strerror or error}")
        self.status = 127 if isinstance(error, FileNotFoundError) else 126


class _GroupGuard:
    """A separate process that SIGKILLs the command's process group if we die first.

    It reads a pipe only this process can write: our death (even SIGKILL by the dead
    man's switch) closes it, and the guard then kills the group, grandchildren included.
    """

    def __init__(self) -> None:
        read, self._write = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(__file__).with_name("_groupguard.py")),
                 str(read)],
                pass_fds=(read,), start_new_session=True, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            os.close(read)

    def watch(self, group: int) -> None:
        os.write(self._write, f"{group}\n".encode())

    def close(self) -> None:
        """We end normally: the guard exits without killing anything."""
        with contextlib.suppress(OSError):
            os.write(self._write, b"done\n")
        os.close(self._write)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)


class Supervisor:
    """Runs one command under one flag; ``run()`` returns the exit status."""

    def __init__(
        self, flag: Flag, command: Sequence[str], grace: float, logger: logging.Logger
    ) -> None:
        self._flag = flag
        self._command = list(command)
        self._grace = grace
        self._logger = logger
        self._signal: int | None = None
        self._signalled = threading.Event()
        # The kernel kills this process this long after the lease ends: inside the margin.
        self._slack_ns = int(flag.timing.interval * SAFETY_MARGIN / 2 * 1e9)

    def run(self) -> int:
        previous = {
            number: signal.signal(number, self._on_signal)
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            return self._run()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self._flag.close()

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self._signal = number
        self._signalled.set()

    def _run(self) -> int:
        flag = self._flag
        self._logger.info("waiting for flag %r as %r", flag.name, flag.process)
        while not flag.wait_raised(0.1):
            if self._signal is not None:
                return 128 + self._signal
        if self._signal is not None:  # arrived while the flag was being raised
            return 128 + self._signal
        deadman = DeadMan()
        guard = _GroupGuard()
        try:
            return self._supervise(deadman, guard)
        finally:
            guard.close()
            deadman.close()

    def _supervise(self, deadman: DeadMan, guard: _GroupGuard) -> int:
        flag = self._flag
        deadline = flag._deadline
        if not flag.raised():
            return EXIT_LOST
        deadman.arm(deadline + self._slack_ns)
        try:
            child = subprocess.Popen(
                self._command, start_new_session=True, preexec_fn=die_with_parent
            )
        except OSError as error:
            raise CommandNotStarted(self._command[0], error) from None
        guard.watch(child.pid)
        self._logger.info(
            "flag %r raised: started %s (pid %d)", flag.name, self._command[0], child.pid
        )
        grace_ns = int(self._grace * 1e9)
        stop_by: int | None = None  # lease-clock ns by which the child must be gone
        lost = False
        while (status := self._wait(child, POLL)) is None:
            now = now_ns()
            if flag.raised() and flag._deadline != deadline:
                deadline = flag._deadline
                deadman.arm(deadline + self._slack_ns)
            if stop_by is None:
                lost = not flag.raised() or deadline - now <= grace_ns
                if self._signal is not None:
                    self._logger.info("forwarding signal %d to %s", self._signal, self._command)
                    self._kill(child, self._signal)
                elif lost:
                    self._logger.error(
                        "flag %r: leadership ending; stopping the command", flag.name
                    )
                    self._kill(child, signal.SIGTERM)
                else:
                    continue
                stop_by = now + grace_ns
            if now >= min(stop_by, deadline):
                self._logger.error("command still running: SIGKILL")
                self._kill(child, signal.SIGKILL)
                status = self._wait(child, None)
                break
        deadman.disarm()
        if lost:
            self._logger.error("leadership lost; command stopped (status %s)", status)
            return EXIT_LOST
        self._logger.info("command exited with status %s; releasing", status)
        return status if status is not None else EXIT_LOST

    def _wait(self, child: subprocess.Popen[bytes], seconds: float | None) -> int | None:
        """The child's exit status after up to ``seconds`` (None: until it exits)."""
        if seconds is None:
            code: int | None = child.wait()
        else:
            self._signalled.wait(seconds)
            self._signalled.clear()
            code = child.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code

    @staticmethod
    def _kill(child: subprocess.Popen[bytes], number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, number)
