"""Raised/lowered callbacks and waiters, kept off the hot path and off the renewal thread.

Callbacks run in order on their own thread, which also wakes at the lease deadline:
``on_lowered`` fires when the lease runs out even if the renewal thread is stuck. A
new term (a different fencing token) while raised counts as lowered then raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from .clock import Lease

__all__ = ["Events"]

Callback = Callable[[], object]


class Events:
    """Wakes waiters and delivers callbacks when the flag's state may have changed."""

    def __init__(
        self,
        lease: Lease,
        term: Callable[[], int | None],
        logger: logging.Logger,
        name: str,
        on_raised: Callback | None = None,
        on_lowered: Callback | None = None,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._lease = lease
        self._term = term
        self._logger = logger
        self._name = name
        self._on_raised = on_raised
        self._on_lowered = on_lowered
        self._on_failure = on_failure
        self._condition = threading.Condition()
        self._futures: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._stopped = False
        self._thread: threading.Thread | None = None
        if on_raised is not None or on_lowered is not None:
            self._thread = threading.Thread(
                target=self._deliver, name=f"leadership callbacks {name}", daemon=True
            )

    def start(self) -> None:
        """Start delivering callbacks (if any were given)."""
        if self._thread is not None:
            self._thread.start()

    def changed(self) -> None:
        """Called by the renewal thread after every step."""
        with self._condition:
            self._condition.notify_all()
            if self._lease.raised():
                self._resolve_all()

    def _resolve_all(self) -> None:
        """Wake every asyncio waiter (called with the condition held)."""
        for loop, future in self._futures:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)

    def stop(self, wait: float) -> None:
        """Stop delivering; the pending ``on_lowered`` (if raised before) is delivered first."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
            self._resolve_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def wait_raised(self, timeout: float | None) -> bool:
        """Block until raised (True), or until ``timeout`` seconds pass or stop (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._lease.raised():
                if self._stopped:
                    return False
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._condition.wait(left)
            return True

    async def wait_raised_async(self, timeout: float | None) -> bool:
        """``wait_raised`` for asyncio: never blocks the event loop."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not self._lease.raised():
            entry = (loop, loop.create_future())
            with self._condition:
                if self._stopped:
                    return False
                self._futures.add(entry)
            try:
                if self._lease.raised():  # raised before we were registered
                    return True
                left = None if end is None else end - loop.time()
                if left is not None and left <= 0:
                    return False
                await asyncio.wait_for(entry[1], left)
            except asyncio.TimeoutError:
                return self._lease.raised()
            finally:
                with self._condition:
                    self._futures.discard(entry)
        return True

    def _deliver(self) -> None:
        delivered: int | None = None  # the term last reported as raised
        while True:
            with self._condition:
                while True:
                    term = self._term() if self._lease.raised() else None
                    if term != delivered or self._stopped:
                        break
                    left = self._lease.lease_remaining()
                    self._condition.wait(left + 0.001 if left > 0 else None)
                stopped = self._stopped
            if delivered is not None and (term is None or term != delivered or stopped):
                delivered = None
                self._call(self._on_lowered, "on_lowered")
            if stopped:
                return
            if term is not None:
                delivered = term
                if not self._call(self._on_raised, "on_raised"):
                    delivered = None

    def _call(self, callback: Callback | None, what: str) -> bool:
        """Run a callback; on an exception log it, resign the flag and return False."""
        if callback is None:
            return True
        try:
            callback()
        except Exception:
            self._logger.exception(
                "flag %r: %s callback failed; lowering and releasing the flag", self._name, what
            )
            self._on_failure()
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
