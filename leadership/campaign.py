"""The renewal loop of one flag: acquire or renew, update the lease, wait, repeat; release.

A :class:`Contender` makes every decision about one flag's lease; a :class:`Campaign`
runs one on a thread of its own (a single flag), a :class:`leadership.group.FlagGroup`
runs many on one thread, with one statement per tick.

Only this loop extends the lease. It lowers the lease at once when the row shows
another holder, and leaves it alone after a failed attempt: the lease deadline alone
ends leadership when renewals keep failing. The store, the lease clock and the jitter
are injected, so each decision can be tested step by step with fakes.
"""

from __future__ import annotations

import logging  # imported already: the builder imports it before the first flag
import select
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .clock import jittered, now_ns
from .store import HoldLost, Mine, Observation, OutcomeUnknown, Store, describe_error
from .tenure import Tenure
from .timing import SAFETY_MARGIN, Timing
from .wake import WakePipe

if TYPE_CHECKING:
    from .metrics import FlagMetrics  # imported by the builder, only when metrics are on

__all__ = ["Campaign", "Contender", "LeaseControl"]

WAKE_AFTER_EXPIRY = 0.002
"""Seconds a waiting instance adds to the row's expiry before trying to take it."""

FIRST_RETRY = 0.005
"""Seconds before the first retry after a failed attempt (later ones: interval/10)."""


class LeaseControl(Protocol):
    """The local lease as the campaign drives it (a :class:`leadership.clock.Lease`)."""

    def raised(self) -> bool: ...

    def _extend(self, start_ns: int, duration_ns: int) -> None: ...

    def _lower(self) -> None: ...


class Contender:
    """Every decision about one flag's lease, driven by a thread that owns ``store``.

    ``precheck`` (optional) is asked before every attempt: when it returns False or
    raises, the flag is lowered and released and the instance does not contend until
    it says yes again. ``changed`` is called after anything that may have changed the
    raised state or the term. ``clock`` reads the lease clock (ns) and ``jitter``
    spreads waits; both default to :mod:`leadership.clock`'s.

    The driving thread calls :meth:`step` (or :meth:`plan`, then :meth:`begin` before
    its own attempt and :meth:`outcome` or :meth:`failure` after it) and waits the
    seconds returned; other threads only :meth:`resign`, read, or ask it to stop.
    """

    __slots__ = (
        "__weakref__", "_aside_until", "_changed", "_clock", "_duplicate_reported", "_exchange",
        "_failures", "_jitter", "_lease", "_lock", "_logger", "_metrics", "_name",
        "_precheck", "_precheck_refused", "_process", "_reported", "_resign_for",
        "_stopping", "_store", "_tenure", "_timing",
    )  # fmt: skip

    def __init__(
        self,
        lease: LeaseControl,
        store: Store,
        timing: Timing,
        name: str,
        process: str,
        logger: logging.Logger,
        metrics: FlagMetrics | None = None,
        precheck: Callable[[], bool] | None = None,
        changed: Callable[[], None] = lambda: None,
        *,
        clock: Callable[[], int] = now_ns,
        jitter: Callable[[float, float], float] = jittered,
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
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()  # guards _tenure, _stopping, _resign_for, the lease
        self._tenure = Tenure()
        self._stopping = False
        self._resign_for: float | None = None  # seconds to stand aside, when asked to
        self._aside_until = 0  # lease-clock ns: a resignation lasts until then
        self._reported = False  # raised state as last logged and counted
        self._duplicate_reported = False
        self._precheck_refused = False
        self._failures = 0  # consecutive failed attempts
        self._exchange: tuple[int, int, float] | None = None  # last write: sent, received, at

    @property
    def term_start(self) -> int | None:
        """The row version that started the current term; None when not holding the row."""
        return self._tenure.start

    def versions(self) -> tuple[int, int] | None:
        """The versions this instance may have written in its current term (first, last;
        last includes a renewal in flight), or None when not holding."""
        with self._lock:
            return self._tenure.versions()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def standing_aside(self) -> bool:
        """Whether this flag does not contend now: its precheck said no, or a resignation
        lasts (as far as the driving thread last looked)."""
        return self._precheck_refused or self._aside_until > self._clock()

    @property
    def retrying(self) -> bool:
        """Whether the last attempt failed (the next comes sooner than a renewal)."""
        return self._failures > 0

    @property
    def resigning(self) -> bool:
        """Whether a resignation waits for the driving thread."""
        return self._resign_for is not None

    def resign(self, seconds: float) -> None:
        """Lower now, release the row and stand aside for ``seconds`` (any thread)."""
        with self._lock:
            self._resign_for = seconds
            self._lease._lower()
        self._wake()

    def step(self) -> float:
        """Do what is due now; return the seconds to wait before the next step."""
        delay = self.plan()
        return self._contend() if delay is None else delay

    def plan(self) -> float | None:
        """Act on a resignation or a refusing precheck (stepping aside) and return the
        seconds before the next step; None when the flag should contend now."""
        with self._lock:
            resign_for, self._resign_for = self._resign_for, None
        if resign_for is not None:
            self._step_aside("asked to resign")
            self._aside_until = self._clock() + int(resign_for * 1e9)
            return resign_for
        aside = (self._aside_until - self._clock()) / 1e9
        if aside > 0:  # woken early (a notification, its own release's included): not yet
            return aside
        if self._precheck is not None and not self._precheck_passes():
            self._step_aside("the precheck said no")
            return self._jitter(self._timing.renew_every, self._timing.jitter)
        return None

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

    def begin(self) -> Mine | None:
        """An attempt is about to be sent: what this instance may have written to the row
        (None when it holds nothing)."""
        with self._lock:
            self._tenure.sending()
            return self._tenure.mine()

    def outcome(self, seen: Observation, started: int, received: int) -> float:
        """What the attempt sent at ``started`` (lease clock) found, answered at
        ``received``; return the seconds to wait before the next attempt."""
        self._failures = 0
        if self._metrics:
            self._metrics.check_took((received - started) / 1e9)
        if seen.acquired:
            return self._delay_after_win(seen, started, received)
        return self._delay_after_loss(seen)

    def failure(self, error: Exception, *, log: bool = True) -> float:
        """The attempt failed with ``error``; return the seconds to wait before the next.
        ``log`` False: the driver logs the failure once for many flags (a group's tick);
        this flag logs it at DEBUG level only."""
        if isinstance(error, HoldLost):
            with self._lock:
                self._tenure.end()
                self._lease._lower()
            self._logger.error(
                "flag %r: %s; what this instance held there is gone", self._name, error
            )
            self._report(str(error))
            return FIRST_RETRY
        with self._lock:
            if isinstance(error, OutcomeUnknown):
                self._tenure.unanswered()
            else:
                self._tenure.refused()
        return self._delay_after_failure(error, log)

    def _contend(self) -> float:
        """Acquire or renew once; return the seconds to wait before the next step."""
        started = self._clock()
        mine = self.begin()
        try:
            seen = self._store.acquire_or_renew(
                self._name, self._process, mine, self._timing.interval
            )
        except Exception as error:
            return self.failure(error)
        return self.outcome(seen, started, self._clock())

    def _delay_after_failure(self, error: Exception, log: bool = True) -> float:
        timing = self._timing
        if self._metrics:
            self._metrics.check_failed()
        level = logging.ERROR if log else logging.DEBUG
        self._logger.log(level, "flag %r: check failed: %s", self._name, describe_error(error))
        self._report()
        self._failures += 1
        if self._failures == 1:  # often a dropped connection: reconnect at once
            return FIRST_RETRY
        return self._jitter(timing.retry_every, timing.jitter)

    def _delay_after_win(self, seen: Observation, started: int, received: int) -> float:
        assert seen.written is not None
        jump = self._clock_jump(seen.written.at, started, received)
        alarm = abs(jump) > SAFETY_MARGIN / 2 * self._timing.interval
        with self._lock:
            # A term continues only through this instance's own row under a live lease:
            # a row taken back after it expired or was released (someone else may have
            # held it meanwhile), or a lease that lapsed (callbacks saw it lowered),
            # starts a new term, so work of the old one is fenced off.
            continues = seen.written.continued and self._lease.raised() and not alarm
            self._tenure.confirm(seen.written, new_term=not continues)
            if alarm:
                self._lease._lower()  # until two renewals agree with the lease clock again
            elif not self._stopping and self._resign_for is None:
                self._lease._extend(started, self._timing.lease_ns)
        if alarm:
            if self._metrics:
                self._metrics.clock_jumped()
            self._logger.error(
                "flag %r: the database clock jumped %+.3f s between two renewals (beyond "
                "what their round trips allow); the flag stays lowered until the clocks "
                "agree again",
                self._name,
                jump,
            )
            self._report("the database clock jumped")
        self._duplicate_reported = False
        self._logger.debug("flag %r: holding version %d", self._name, seen.written.version)
        self._report()
        return self._jitter(self._timing.renew_every, self._timing.jitter)

    def _clock_jump(self, at: float, sent: int, received: int) -> float:
        """Seconds by which the database clock moved outside what the lease clock allows
        since this instance's previous write (0.0 when it agrees, or with no previous one).

        Each database stamp lies between the local send and receive of its statement, so
        between two writes the database clock may advance by at least ``sent - received
        before`` and at most ``received - sent before``: slow round trips widen the bounds
        and never raise an alarm.
        """
        previous, self._exchange = self._exchange, (sent, received, at)
        if previous is None:
            return 0.0
        sent_before, received_before, at_before = previous
        progress = at - at_before
        least, most = (sent - received_before) / 1e9, (received - sent_before) / 1e9
        if progress > most:
            return progress - most
        if progress < least:
            return progress - least
        return 0.0

    def _delay_after_loss(self, seen: Observation) -> float:
        with self._lock:
            self._tenure.end()
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
            return self._jitter(timing.retry_every, timing.jitter)
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
        mine = self.retire(why)
        if mine is None:
            return
        try:
            released = self._store.release(self._name, self._process, mine, self._timing.interval)
        except Exception as error:
            self.release_failed(error)
            return
        self.released(mine, released, why)

    @property
    def held(self) -> bool:
        """Whether this instance holds the row (as far as the driving thread knows)."""
        return self._tenure.held

    def retire(self, why: str) -> Mine | None:
        """Lower the lease and end the term; return what to release (None: nothing)."""
        with self._lock:
            self._lease._lower()
            mine = self._tenure.end()
        self._report(why)
        return mine

    def released(self, mine: Mine, released: bool, why: str) -> None:
        """Log the outcome of releasing ``mine`` (see :meth:`retire`)."""
        if released:
            self._logger.info("flag %r released by %r (%s)", self._name, self._process, why)
        else:
            self._logger.warning(
                "flag %r: nothing to release (%s): the row no longer carries version %d of %r",
                self._name,
                why,
                mine.last.version,
                self._process,
            )

    def release_failed(self, error: Exception) -> None:
        """Log a release that failed: others wait for the lease to expire."""
        self._logger.error(
            "flag %r: release failed (others wait for the lease to expire): %s",
            self._name,
            describe_error(error),
        )

    def _wake(self) -> None:
        """Wake the thread driving this contender (see the subclasses)."""
        raise NotImplementedError


class Campaign(Contender):
    """Contends for one flag on a daemon thread of its own until ``stop()``: the
    :class:`Contender`'s decisions, with a wake pipe and the loop around them.

    Without ``start()``, :meth:`step` and :meth:`finish` drive the same decisions
    synchronously (for tests).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pipe = WakePipe()
        self._thread = threading.Thread(
            target=self._run, name=f"leadership {self._name}", daemon=True
        )

    def start(self) -> None:
        """Watch the flag's row and start the loop (a failed watch is retried by the
        store with its next connection)."""
        try:
            self._store.watch(self._name, self._timing.interval)
        except Exception as error:
            self._logger.warning("flag %r: watch failed: %s", self._name, describe_error(error))
        self._thread.start()

    def stop(self, wait: float) -> None:
        """Lower the lease, ask the loop to release and finish, and wait up to ``wait`` s."""
        with self._lock:
            self._stopping = True
            self._lease._lower()
        self._wake()
        if self._thread is threading.current_thread():
            return
        if self._thread.ident is not None:
            self._thread.join(wait)
        if not self._thread.is_alive():
            self._pipe.close()

    def forget_after_fork(self) -> None:
        """In a forked child: stopped, holding nothing, with fresh locks (a parent thread
        may have held the old ones at the fork) and without the parent's wake pipe."""
        self._lock = threading.Lock()
        self._tenure = Tenure()
        self._stopping = True
        self._pipe.forget_after_fork()

    def _wake(self) -> None:
        self._pipe.wake()

    def _run(self) -> None:
        try:
            while not self._stopping:
                delay = self.step()
                self._changed()
                if not self._stopping:
                    self._wait(delay)
        finally:
            self.finish()
            self._changed()

    def _wait(self, seconds: float) -> None:
        """Let the store wait; if even that fails, sleep on the wake pipe alone."""
        try:
            self._store.wait(seconds, self._pipe.read)
        except Exception as error:
            self._logger.error("flag %r: wait failed: %s", self._name, describe_error(error))
            select.select([self._pipe.read], [], [], seconds)

    def finish(self) -> None:
        """Lower, release the row if held, and close the store (the loop's last act)."""
        with self._lock:
            self._stopping = True
        self._step_aside("closed")
        self._store.close()
