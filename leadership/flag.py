"""The leadership flag: a lease whose ``raised()`` is the compiled hot path.

``Flag`` subclasses the lease type chosen by :mod:`leadership.clock`, so
``flag.raised()`` calls the compiled method directly: no Python frame, no
allocation, no lock.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref

from .callbacks import Callbacks
from .clock import Lease
from .deferred import IMPORTING
from .errors import LeadershipError, LeadershipLost
from .fencing import verify_holder
from .waiters import Waiters

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from types import TracebackType

    from .callbacks import Callback
    from .group import FlagGroup
    from .metrics import FlagMetrics
    from .store import DBAPIConnection, Store
    from .timing import Timing

__all__ = ["Flag"]

_live: weakref.WeakSet[Flag] = weakref.WeakSet()


class Flag(Lease):
    """A distributed leadership flag; build one with :func:`leadership.new_flag`, or
    get one from a group (:meth:`leadership.FlagGroup.flag`).

    ``raised()`` is True only while this instance holds the flag's row and its local
    lease has not run out; it never blocks, raises or takes a lock. ``close()`` lowers
    the flag, then releases the row so another process can take it at once.
    """

    # No instance __dict__: CPython 3.12+ specialises a method call on an instance with a
    # __dict__ of its own (this class's, over the compiled Lease) less well, and raised()
    # cost twice the clock floor there (benchmarks/RESULTS.md, "Python versions").
    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_campaign",
        "_closed",
        "_logger",
        "_metrics",
        "_owner_pid",
        "_store",
        "_waiters",
        "name",
        "process",
        "timing",
    )

    def __init__(
        self,
        *,
        name: str,
        process: str,
        timing: Timing,
        store: Store,
        logger: logging.Logger,
        metrics: FlagMetrics | None = None,
        precheck: Callable[[], bool] | None = None,
        on_raised: Callback | None = None,
        on_lowered: Callback | None = None,
        group: FlagGroup | None = None,
    ) -> None:
        with IMPORTING:  # the first flag imports the renewal loop and the store module
            from .campaign import Campaign
            from .group import GroupedCampaign

        super().__init__()
        self.name = name
        self.process = process
        self.timing = timing
        self._store = store
        self._logger = logger
        self._metrics = metrics
        self._owner_pid = os.getpid()
        self._closed = False
        self._waiters = Waiters(self)
        self._callbacks: Callbacks | None = None  # only with callbacks: a thread each
        if on_raised is not None or on_lowered is not None:
            self._callbacks = Callbacks(
                self,
                lambda: self._campaign.term_start,
                logger,
                name,
                on_raised=on_raised,
                on_lowered=on_lowered,
                on_failure=lambda: self._campaign.resign(timing.interval),
            )
        self._campaign: Campaign | GroupedCampaign
        if group is None:
            self._campaign = Campaign(
                self, store, timing, name, process, logger, metrics, precheck, self._changed
            )
        else:
            self._campaign = GroupedCampaign(
                group, self, store, timing, name, process, logger, metrics, precheck, self._changed
            )
        _live.add(self)
        if self._callbacks is not None:
            self._callbacks.start()
        self._campaign.start()

    def _changed(self) -> None:
        """Called by the renewal loop after every step and when it ends."""
        self._waiters.changed()
        if self._callbacks is not None:
            self._callbacks.changed()
        if self._campaign.stopping:
            self._waiters.close()

    @property
    def token(self) -> int | None:
        """The fencing token of the current term, or None while lowered.

        Constant during one leadership term, strictly greater in every later term, and
        at least 1 (one more than the row's version at the start of the term), so
        ``if flag.token:`` is a valid test.
        """
        version = self._campaign.term_start
        return version + 1 if version is not None and self.raised() else None

    def wait_raised(self, timeout: float | None = None) -> bool:
        """Block until the flag is raised (True) or ``timeout`` seconds pass (False).

        Adds no database traffic: it waits for the renewal thread's normal checks.
        Returns False at once once the flag is closed.
        """
        return self._waiters.wait_raised(timeout)

    async def wait_raised_async(self, timeout: float | None = None) -> bool:
        """``wait_raised`` for asyncio; never blocks the event loop."""
        return await self._waiters.wait_raised_async(timeout)

    def guard(self, conn: DBAPIConnection) -> int:
        """Fence the caller's transaction on ``conn``; return the fencing token.

        Call it inside the application's own transaction on the flag's database: it
        locks the flag's row until that transaction ends (no takeover can commit
        before) and raises LeadershipLost unless this instance still holds the flag
        in its current term.
        """
        token = self.token
        versions = self._campaign.versions()
        if token is None or versions is None:
            raise LeadershipLost(f"flag {self.name!r} is not raised in process {self.process!r}")
        try:
            row = self._store.lock_row(conn, self.name)
        except LeadershipError:
            raise
        except Exception as error:
            from .store import describe_error

            raise LeadershipError(
                f"flag {self.name!r}: guard() could not lock the flag's row through this "
                f"connection ({describe_error(error)}): it takes a DB-API connection to the "
                "flag's own database, inside a transaction"
            ) from error
        verify_holder(self.name, row, self.process, versions)
        if not self.raised() or self._campaign.term_start != token - 1:
            raise LeadershipLost(f"flag {self.name!r}: the lease ran out while guarding")
        return token

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or in a child process after ``fork``)."""
        return self._closed

    def close(self) -> None:
        """Lower the flag, release the row and stop renewing; idempotent.

        The flag is lowered locally before anything else happens. Then waits for the
        release (up to ``2 * timeout + 1`` s) and for a pending ``on_lowered`` callback
        (up to ``timeout + 1`` s more).
        """
        if self._closed:
            return
        self._closed = True
        self._lower()
        if os.getpid() != self._owner_pid:
            return  # a forked child: the row and the connection belong to the parent
        self._campaign.stop(wait=2 * self.timing.timeout + 1.0)
        self._waiters.close()
        if self._callbacks is not None:
            self._callbacks.stop(wait=self.timing.timeout + 1.0)
        if self._metrics is not None:
            self._metrics.close()
        _live.discard(self)

    def _forget_after_fork(self) -> None:
        """In a forked child: closed in every respect, and never touches the parent's
        connection. Locks a parent thread may have held at the fork are replaced."""
        self._closed = True
        self._lower()
        self._waiters = Waiters(self)
        self._waiters.close()
        self._campaign.forget_after_fork()

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise LeadershipError(
                f"flag {self.name!r} is closed (it cannot be raised again): build a new one"
            )

    def __enter__(self) -> Flag:
        self._refuse_if_closed()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Flag:
        self._refuse_if_closed()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop (runs in a worker thread)."""
        with IMPORTING:
            import asyncio

        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "raised" if self.raised() else "lowered"
        return f"<Flag {self.name!r} process={self.process!r} {state}>"


def _after_fork_in_child() -> None:
    for flag in list(_live):
        flag._forget_after_fork()
    _live.clear()


def _close_all_at_exit() -> None:
    for flag in list(_live):
        flag.close()


def close_all(wait: float) -> None:
    """Lower every open flag of this process at once, then close them (releasing their
    rows) on a helper thread, waiting for it up to ``wait`` seconds.

    Safe to call from a signal handler: lowering takes no lock, and if the interrupted
    code holds a lock the closing needs, the wait simply runs out (the rows then expire
    on their own).
    """
    flags = list(_live)
    for flag in flags:
        flag._lower()

    def close_them() -> None:
        groups = sys.modules.get("leadership.group")  # imported by the first group, if any
        if groups is not None:
            groups.close_all_groups()  # one release statement per group
        for flag in flags:
            flag.close()

    closer = threading.Thread(target=close_them, name="leadership close", daemon=True)
    closer.start()
    closer.join(wait)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
