"""Threads and coroutines waiting for a flag to be raised, woken by the renewal loop.

Waiting adds no database traffic: waiters are woken after each step of the renewal
loop and when the flag closes. asyncio is imported by the first asyncio waiter, not
with the package.
"""

from __future__ import annotations

import contextlib
import threading
import time

from .clock import Lease
from .deferred import IMPORTING

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    import asyncio

__all__ = ["Waiters"]


class Waiters:
    """Blocks callers of ``wait_raised`` (threads or asyncio tasks) until ``lease`` is
    raised, their timeout passes or the flag closes."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._condition = threading.Condition()
        self._futures: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._closed = False

    def changed(self) -> None:
        """The raised state may have changed: wake every waiter to look again."""
        with self._condition:
            self._condition.notify_all()
            if self._lease.raised():
                self._resolve_all()

    def close(self) -> None:
        """Wake every waiter for good: from now on ``wait_raised`` returns at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            self._resolve_all()

    def _resolve_all(self) -> None:
        """Wake every asyncio waiter (called with the condition held)."""
        for loop, future in self._futures:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)

    def wait_raised(self, timeout: float | None) -> bool:
        """Block until raised (True), or until ``timeout`` seconds pass or close (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._lease.raised():
                if self._closed:
                    return False
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._condition.wait(left)
            return True

    async def wait_raised_async(self, timeout: float | None) -> bool:
        """``wait_raised`` for asyncio: never blocks the event loop."""
        with IMPORTING:
            import asyncio

        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not self._lease.raised():
            entry = (loop, loop.create_future())
            with self._condition:
                if self._closed:
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
