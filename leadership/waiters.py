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

_MAKING = threading.Lock()
"""Guards the first making of a Waiters' condition."""


class Waiters:
    """Blocks callers of ``wait_raised`` (threads or asyncio tasks) until ``lease`` is
    raised, their timeout passes or the flag closes."""

    __slots__ = ("_closed", "_condition", "_futures", "_lease")

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        # Made by the first waiter (most flags of a group never have one): the renewal
        # loop wakes nobody until then, and a waiter looks at the lease again under the
        # condition it made, so a change just before it existed is not missed.
        self._condition: threading.Condition | None = None
        self._futures: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._closed = False

    def _made(self) -> threading.Condition:
        """The condition waiters wait on, made once (any thread)."""
        condition = self._condition
        if condition is None:
            with _MAKING:
                condition = self._condition
                if condition is None:
                    condition = self._condition = threading.Condition()
        return condition

    def changed(self) -> None:
        """The raised state may have changed: wake every waiter to look again."""
        condition = self._condition
        if condition is None:
            return  # nobody ever waited
        with condition:
            condition.notify_all()
            if self._lease.raised():
                self._resolve_all()

    def close(self) -> None:
        """Wake every waiter for good: from now on ``wait_raised`` returns at once."""
        self._closed = True
        condition = self._condition
        if condition is None:
            return
        with condition:
            condition.notify_all()
            self._resolve_all()

    def _resolve_all(self) -> None:
        """Wake every asyncio waiter (called with the condition held)."""
        for loop, future in self._futures:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)

    def wait_raised(self, timeout: float | None) -> bool:
        """Block until raised (True), or until ``timeout`` seconds pass or close (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        condition = self._made()
        with condition:
            while not self._lease.raised():
                if self._closed:
                    return False
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                condition.wait(left)
            return True

    async def wait_raised_async(self, timeout: float | None) -> bool:
        """``wait_raised`` for asyncio: never blocks the event loop."""
        with IMPORTING:
            import asyncio

        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not self._lease.raised():
            entry = (loop, loop.create_future())
            with self._made():
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
                with self._made():
                    self._futures.discard(entry)
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
