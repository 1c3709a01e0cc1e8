"""The renewal thread of one flag: check, update the lease, wait, repeat; release at the end.

Only this thread extends the lease. It lowers the lease at once when the row shows
another holder, and leaves it alone after a failed check: the lease deadline alone
ends leadership when renewals keep failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

from .clock import Lease, jittered, now_ns
from .metrics import FlagMetrics
from .store import Observation, Store, describe_error
from .timing import Timing

__all__ = ["Campaign"]

WAKE_AFTER_EXPIRY = 0.002
"""Seconds a waiting instance adds to the row's expiry before trying to take it."""

FIRST_RETRY = 0.005
"""Seconds before the first retry after a failed check (later ones: interval/10)."""


class Campaign:
    """Runs the checks of one flag on a daemon thread until ``stop()``.

    ``precheck`` (optional) is asked before every check: when it returns False or
    raises, the flag is lowered and released and the instance does not contend until
    it says yes again. ``changed`` is called after anything that may have changed the
    raised state or the term.
    """

    def __init__(
        self,
        lease: Lease,
        store: Store,
        timing: Timing,
        name: str,
        process: str,
        logger: logging.Logger,
        metrics: FlagMetrics | None,
        precheck: Callable[[], bool] | None = None,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._lease = lease
        self._store = store
        self._timing = timing
        self._name = name
        self._process = process
        self._logger = logger
        self._metrics = metrics
        self._precheck = precheck
        self._changed = changed
        self._lock = threading.Lock()
        self._stopping = False
        self._resign_for: float | None = None  # seconds to stand aside, when asked to
        self._mine = -1  # the version this instance last wrote and saw confirmed
        self._stamp = 0.0  # its timestamp (database clock, Unix seconds)
        self._term = -1  # the version that started the current term
        self._in_flight = False  # a renewal of ``_mine`` may be landing right now
        self._reported = False  # raised state as last logged and counted
        self._duplicate_reported = False
        self._precheck_refused = False
        self._failures = 0  # consecutive failed checks
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._run, name=f"leadership {name}", daemon=True)

    @property
    def term(self) -> int | None:
        """The version that started the current term; None when not holding the row."""
        return self._term if self._term >= 0 else None

    def versions(self) -> tuple[int, int] | None:
        """The range of row versions this instance may have written in its current term
        (first, last; last includes a renewal in flight), or None when not holding."""
        with self._lock:
            if self._term < 0:
                return None
            return self._term, self._mine + 1 if self._in_flight else self._mine

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float) -> None:
        """Lower the lease, ask the thread to release and finish, and wait up to ``wait`` s."""
        with self._lock:
            self._stopping = True
            self._lease._lower()
        self._wake()
        if self._thread is threading.current_thread():
            return
        self._thread.join(wait)
        if not self._thread.is_alive():
            os.close(self._wake_read)
            os.close(self._wake_write)

    def resign(self, seconds: float) -> None:
        """Lower now, release the row and stand aside for ``seconds`` (any thread)."""
        with self._lock:
            self._resign_for = seconds
            self._lease._lower()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the thread anyway
            os.write(self._wake_write, b"!")

    def _run(self) -> None:
        try:
            while not self._stopping:
                delay = self._step()
                self._changed()
                if not self._stopping:
                    self._wait(delay)
        finally:
            self._finish()
            self._changed()

    def _wait(self, seconds: float) -> None:
        """Let the store wait; if even that fails, sleep on the wake pipe alone."""
        try:
            self._store.wait(seconds, self._wake_read)
        except Exception as error:
            self._logger.error("flag %r: wait failed: %s", self._name, describe_error(error))
            select.select([self._wake_read], [], [], seconds)

    def _step(self) -> float:
        """Do what is due now; return the seconds to wait before the next step."""
        timing = self._timing
        with self._lock:
            resign_for, self._resign_for = self._resign_for, None
        if resign_for is not None:
            self._step_aside("asked to resign")
            return resign_for
        if self._precheck is not None and not self._precheck_passes():
            self._step_aside("the precheck said no")
            return jittered(timing.renew_every, timing.jitter)
        return self._check()

    def _precheck_passes(self) -> bool:
        assert self._precheck is not None
        try:
            passed = bool(self._precheck())
            failure = None
        except Exception as error:
            passed, failure = False, error
        if passed != (not self._precheck_refused):
            self._precheck_refused = not passed
            if failure is not None:
                self._logger.error("flag %r: precheck failed: %r", self._name, failure)
            elif passed:
                self._logger.info("flag %r: precheck passes, contending again", self._name)
            else:
                self._logger.info("flag %r: precheck says no, not contending", self._name)
        return passed

    def _check(self) -> float:
        """Run one check; return the seconds to wait before the next one."""
        timing = self._timing
        started = now_ns()
        with self._lock:
            self._in_flight = self._mine >= 0
        try:
            seen = self._store.check(
                self._name, self._process, self._mine, self._stamp, timing.interval
            )
        except Exception as error:
            with self._lock:
                self._in_flight = False
            if self._metrics:
                self._metrics.check_failed()
            self._logger.error("flag %r: check failed: %s", self._name, describe_error(error))
            self._report()
            self._failures += 1
            if self._failures == 1:  # often a dropped connection: reconnect at once
                return FIRST_RETRY
            return jittered(timing.retry_every, timing.jitter)
        self._failures = 0
        if self._metrics:
            self._metrics.check_took((now_ns() - started) / 1e9)
        if seen.acquired:
            return self._held(seen, started)
        return self._waiting(seen)

    def _held(self, seen: Observation, started: int) -> float:
        assert seen.version is not None
        with self._lock:
            if self._term < 0 or not self._lease.raised():
                # A lapsed lease ends the term even when the row stayed ours: callbacks
                # saw it lowered, so work started before the lapse must be fenced off.
                self._term = seen.version
            self._mine, self._stamp = seen.version, seen.stamp
            self._in_flight = False
            if not self._stopping and self._resign_for is None:
                self._lease._extend(started, self._timing.lease_ns)
        self._duplicate_reported = False
        self._logger.debug("flag %r: holding version %d", self._name, seen.version)
        self._report()
        return jittered(self._timing.renew_every, self._timing.jitter)

    def _waiting(self, seen: Observation) -> float:
        with self._lock:
            self._mine = self._term = -1
            self._in_flight = False
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

    def _step_aside(self, why: str) -> None:
        """Lower the lease and release the row if this instance holds it."""
        with self._lock:
            self._lease._lower()
            mine, self._mine, self._term = self._mine, -1, -1
        self._report(why)
        if mine < 0:
            return
        try:
            self._store.release(self._name, self._process, mine)
            self._logger.info("flag %r released by %r (%s)", self._name, self._process, why)
        except Exception as error:
            self._logger.error(
                "flag %r: release failed (others wait for the lease to expire): %s",
                self._name,
                describe_error(error),
            )

    def _finish(self) -> None:
        with self._lock:
            self._stopping = True
        self._step_aside("closed")
        self._store.close()
