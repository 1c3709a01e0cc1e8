"""The renewal thread of one flag: check, update the lease, wait, repeat; release at the end.

Only this thread extends the lease. It lowers the lease at once when the row shows
another holder, and leaves it alone after a failed check: the lease deadline alone
ends leadership when renewals keep failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from .clock import Lease, jittered, now_ns
from .metrics import FlagMetrics
from .store import Observation, Store, describe_error
from .timing import Timing

__all__ = ["Campaign"]

WAKE_AFTER_EXPIRY = 0.002
"""Seconds a waiting instance adds to the row's expiry before trying to take it."""


class Campaign:
    """Runs the checks of one flag on a daemon thread until ``stop()``."""

    def __init__(
        self,
        lease: Lease,
        store: Store,
        timing: Timing,
        name: str,
        process: str,
        logger: logging.Logger,
        metrics: FlagMetrics | None,
    ) -> None:
        self._lease = lease
        self._store = store
        self._timing = timing
        self._name = name
        self._process = process
        self._logger = logger
        self._metrics = metrics
        self._lock = threading.Lock()
        self._stopping = False
        self._mine = -1  # the version this instance last wrote and saw confirmed
        self._term = -1  # the version that started the current term
        self._reported = False  # raised state as last logged and counted
        self._duplicate_reported = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._run, name=f"leadership {name}", daemon=True)

    @property
    def term(self) -> int | None:
        """The version that started the current term; None when not holding the row."""
        return self._term if self._term >= 0 else None

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float) -> None:
        """Lower the lease, ask the thread to release and finish, and wait up to ``wait`` s."""
        with self._lock:
            self._stopping = True
            self._lease._lower()
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the thread anyway
            os.write(self._wake_write, b"!")
        if self._thread is threading.current_thread():
            return
        self._thread.join(wait)
        if not self._thread.is_alive():
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _run(self) -> None:
        try:
            while not self._stopping:
                delay = self._check()
                if not self._stopping:
                    self._store.wait(delay, self._wake_read)
        finally:
            self._finish()

    def _check(self) -> float:
        """Run one check; return the seconds to wait before the next one."""
        timing = self._timing
        started = now_ns()
        try:
            seen = self._store.check(self._name, self._process, self._mine, timing.interval)
        except Exception as error:
            if self._metrics:
                self._metrics.check_failed()
            self._logger.error("flag %r: check failed: %s", self._name, describe_error(error))
            self._report()
            return jittered(timing.retry_every, timing.jitter)
        if self._metrics:
            self._metrics.check_took((now_ns() - started) / 1e9)
        if seen.acquired:
            return self._held(seen, started)
        return self._waiting(seen)

    def _held(self, seen: Observation, started: int) -> float:
        assert seen.version is not None
        with self._lock:
            if self._term < 0:
                self._term = seen.version
            self._mine = seen.version
            if not self._stopping:
                self._lease._extend(started, self._timing.lease_ns)
        self._duplicate_reported = False
        self._logger.debug("flag %r: holding version %d", self._name, seen.version)
        self._report()
        return jittered(self._timing.renew_every, self._timing.jitter)

    def _waiting(self, seen: Observation) -> float:
        with self._lock:
            self._mine = self._term = -1
            self._lease._lower()
        self._report(f"held by {seen.holder!r}")
        if seen.holder == self._process and not self._duplicate_reported:
            self._duplicate_reported = True
            self._logger.error(
                "flag %r: the row carries this process name %r with version %s, which this "
                "instance did not write: process names must be unique (or this process "
                "restarted without releasing); waiting for that lease to expire",
                self._name,
                self._process,
                seen.version,
            )
        self._logger.debug(
            "flag %r: held by %r, expires in %s s", self._name, seen.holder, seen.expires_in
        )
        timing = self._timing
        if seen.expires_in is None:
            return jittered(timing.retry_every, timing.jitter)
        return min(max(seen.expires_in, 0.0) + WAKE_AFTER_EXPIRY, timing.interval)

    def _report(self, why: str = "the lease ran out") -> None:
        """Log and count a change of the raised state since the last report."""
        raised = self._lease.raised()
        if raised == self._reported:
            return
        self._reported = raised
        if self._metrics:
            self._metrics.transition()
        if raised:
            self._logger.info("flag %r raised for process %r", self._name, self._process)
        else:
            self._logger.info("flag %r lowered: %s", self._name, why)

    def _finish(self) -> None:
        with self._lock:
            self._stopping = True
            self._lease._lower()
        self._report("closed")
        if self._mine >= 0:
            try:
                self._store.release(self._name, self._process, self._mine)
                self._logger.info("flag %r released by %r", self._name, self._process)
            except Exception as error:
                self._logger.error(
                    "flag %r: release failed (others wait for the lease to expire): %s",
                    self._name,
                    describe_error(error),
                )
        self._mine = self._term = -1
        self._store.close()
