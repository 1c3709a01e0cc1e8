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
from dataclasses import dataclass
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


class _LeaseWatch:
    """Owns the lease deadline: follows the flag's renewals and keeps the dead man's
    switch armed ``slack_ns`` past the current deadline (lease-clock ns)."""

    def __init__(self, flag: Flag, deadman: DeadMan, slack_ns: int) -> None:
        self._flag = flag
        self._deadman = deadman
        self._slack_ns = slack_ns
        self.deadline = flag._deadline  # read before the first raised() check

    def arm(self) -> None:
        """Arm the switch for the current deadline."""
        self._deadman.arm(self.deadline + self._slack_ns)

    def follow(self) -> int:
        """Take up a renewal, if the flag was renewed; return the current deadline."""
        flag = self._flag
        if flag.raised() and flag._deadline != self.deadline:
            self.deadline = flag._deadline
            self.arm()
        return self.deadline

    def disarm(self) -> None:
        self._deadman.disarm()


@dataclass(frozen=True)
class _Stop:
    """A stop under way: the command's group was signalled at some instant; it must be
    gone by ``by_ns`` (that instant plus the grace) and before the lease ends."""

    lost: bool  # leadership was ending when the stop began
    by_ns: int  # lease-clock ns

    def kill_due(self, now: int, deadline: int) -> bool:
        """True once SIGKILL is due: at ``by_ns`` or at the lease ``deadline``."""
        return now >= min(self.by_ns, deadline)


class Supervisor:
    """Runs one command under one flag; ``run()`` returns the exit status."""

    def __init__(
        self, flag: Flag, command: Sequence[str], grace: float, logger: logging.Logger
    ) -> None:
        self._flag = flag
        self._command = list(command)
        self._grace_ns = int(grace * 1e9)
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
            return self._supervise(_LeaseWatch(flag, deadman, self._slack_ns), guard)
        finally:
            guard.close()
            deadman.close()

    def _supervise(self, lease: _LeaseWatch, guard: _GroupGuard) -> int:
        """Run the command while the lease lasts; return the exit status."""
        if not self._flag.raised():
            return EXIT_LOST
        lease.arm()
        child = self._start(guard)
        status, lost = self._watch(child, lease)
        lease.disarm()
        if lost:
            self._logger.error("leadership lost; command stopped (status %s)", status)
            return EXIT_LOST
        self._logger.info("command exited with status %s; releasing", status)
        return status

    def _start(self, guard: _GroupGuard) -> subprocess.Popen[bytes]:
        """Start the command in its own process group, watched by the guard."""
        try:
            child = subprocess.Popen(
                self._command, start_new_session=True, preexec_fn=die_with_parent
            )
        except OSError as error:
            raise CommandNotStarted(self._command[0], error) from None
        guard.watch(child.pid)
        self._logger.info(
            "flag %r raised: started %s (pid %d)", self._flag.name, self._command[0], child.pid
        )
        return child

    def _watch(self, child: subprocess.Popen[bytes], lease: _LeaseWatch) -> tuple[int, bool]:
        """Wait for the command to exit, stopping it when due; return its status and
        whether leadership was ending when it was stopped."""
        stop: _Stop | None = None
        while (status := self._wait(child, POLL)) is None:
            now = now_ns()
            deadline = lease.follow()
            if stop is None:
                stop = self._begin_stop(child, now, deadline)
            if stop is not None and stop.kill_due(now, deadline):
                self._logger.error("command still running: SIGKILL")
                self._kill(child, signal.SIGKILL)
                return _exit_status(child.wait()), stop.lost
        return status, stop is not None and stop.lost

    def _begin_stop(self, child: subprocess.Popen[bytes], now: int, deadline: int) -> _Stop | None:
        """Decide whether the command must stop now; if so, signal its group.

        A signal received by this process is forwarded; otherwise the group gets SIGTERM
        once the flag is lowered or the lease is within the grace of its end.
        """
        lost = not self._flag.raised() or deadline - now <= self._grace_ns
        if self._signal is not None:
            self._logger.info("forwarding signal %d to %s", self._signal, self._command)
            self._kill(child, self._signal)
        elif lost:
            self._logger.error("flag %r: leadership ending; stopping the command", self._flag.name)
            self._kill(child, signal.SIGTERM)
        else:
            return None
        return _Stop(lost, now + self._grace_ns)

    def _wait(self, child: subprocess.Popen[bytes], seconds: float) -> int | None:
        """The child's exit status after up to ``seconds`` (a signal to us cuts it
        short), or None while it runs."""
        self._signalled.wait(seconds)
        self._signalled.clear()
        code = child.poll()
        return None if code is None else _exit_status(code)

    @staticmethod
    def _kill(child: subprocess.Popen[bytes], number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, number)


def _exit_status(code: int) -> int:
    """A ``Popen`` return code as an exit status: 128+N when killed by signal N."""
    return 128 - code if code < 0 else code
