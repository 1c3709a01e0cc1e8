"""The leadership flag: a lease whose ``raised()`` is the compiled hot path.

``Flag`` subclasses the lease type chosen by :mod:`leadership.clock`, so
``flag.raised()`` calls the compiled method directly: no Python frame, no
allocation, no lock.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from types import TracebackType

from .campaign import Campaign
from .clock import Lease
from .metrics import FlagMetrics
from .store import Store
from .timing import Timing

__all__ = ["Flag"]

_live: weakref.WeakSet[Flag] = weakref.WeakSet()


class Flag(Lease):
    """A distributed leadership flag; build one with :func:`leadership.new_flag`.

    ``raised()`` is True only while this instance holds the flag's row and its local
    lease has not run out; it never blocks, raises or takes a lock. ``close()`` lowers
    the flag, then releases the row so another process can take it at once.
    """

    def __init__(
        self,
        *,
        name: str,
        process: str,
        timing: Timing,
        store: Store,
        logger: logging.Logger,
        metrics: FlagMetrics | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.process = process
        self.timing = timing
        self._logger = logger
        self._metrics = metrics
        self._owner_pid = os.getpid()
        self._closed = False
        self._campaign = Campaign(self, store, timing, name, process, logger, metrics)
        _live.add(self)
        self._campaign.start()

    @property
    def token(self) -> int | None:
        """The fencing token of the current term (the row version that started it).

        Constant during one leadership term, strictly greater in every later term;
        None while the flag is not raised.
        """
        term = self._campaign.term
        return term if term is not None and self.raised() else None

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or in a child process after ``fork``)."""
        return self._closed

    def close(self) -> None:
        """Lower the flag, release the row and stop renewing; idempotent.

        Waits for the release up to about twice the timeout; the flag is lowered
        locally before anything else happens.
        """
        if self._closed:
            return
        self._closed = True
        self._lower()
        if os.getpid() != self._owner_pid:
            return  # a forked child: the row and the connection belong to the parent
        self._campaign.stop(wait=2 * self.timing.timeout + 1.0)
        if self._metrics is not None:
            self._metrics.close()
        _live.discard(self)

    def _forget_after_fork(self) -> None:
        """In a forked child: lowered for good, and never touches the parent's connection."""
        self._closed = True
        self._lower()

    def __enter__(self) -> Flag:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
