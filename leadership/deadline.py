"""Bounds on whole operations over the network.

A socket timeout bounds each read, not an operation: a peer that answers one byte at a
time keeps it alive forever. :func:`call_within` bounds a call that creates a connection;
a :class:`Watchdog` cuts a connection whose operation outlives its deadline, so the
blocked read fails at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["OperationTimeout", "Watchdog", "call_within", "cut_connection"]

T = TypeVar("T")


class OperationTimeout(TimeoutError):
    """The operation did not complete within its bound."""


def call_within(seconds: float, call: Callable[[], T], discard: Callable[[T], None]) -> T:
    """Return ``call()``, run on a helper thread, or raise OperationTimeout after
    ``seconds``; a result that arrives later is passed to ``discard`` (to close it)."""
    done = threading.Event()
    lock = threading.Lock()
    outcome: list[Any] = []  # [result] or [None, error]
    abandoned = False

    def run() -> None:
        try:
            result: Any = [call()]
        except BaseException as error:
            result = [None, error]
        with lock:
            late = abandoned
            outcome.extend(result)
        done.set()
        if late and len(result) == 1:
            with contextlib.suppress(Exception):
                discard(result[0])

    threading.Thread(target=run, name="leadership connect", daemon=True).start()
    if not done.wait(seconds):
        with lock:
            if not outcome:
                abandoned = True
                raise OperationTimeout(f"no connection within {seconds:g} s")
    if len(outcome) == 2:
        raise outcome[1]
    value: T = outcome[0]
    return value


def cut_connection(conn: Any) -> None:
    """Shut down a DB connection's socket (pg8000 or any driver with ``fileno()``), so a
    read blocked on it fails at once."""
    sock = getattr(conn, "_usock", None)  # pg8000
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return
    fileno = getattr(conn, "fileno", None)
    if callable(fileno):
        with contextlib.suppress(Exception):
            copy = socket.socket(fileno=socket.dup(int(fileno())))
            try:
                copy.shutdown(socket.SHUT_RDWR)
            finally:
                copy.close()


class Watchdog:
    """Runs ``cut`` when an operation started with :meth:`bound` outlives its deadline.

    One daemon thread, started on first use. ``fired`` tells whether the last bounded
    operation was cut.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._deadline: float | None = None
        self._cut: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.fired = False

    @contextlib.contextmanager
    def bound(self, deadline: float, cut: Callable[[], None]) -> Iterator[None]:
        """Within the block, ``cut`` runs if ``time.monotonic()`` passes ``deadline``."""
        with self._condition:
            self.fired = False
            self._deadline, self._cut = deadline, cut
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._watch, name="leadership watchdog", daemon=True
                )
                self._thread.start()
            self._condition.notify()
        try:
            yield
        finally:
            with self._condition:
                self._deadline, self._cut = None, None
                self._condition.notify()

    def stop(self) -> None:
        """End the watchdog's thread (it is started again by the next :meth:`bound`)."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        self._thread = None

    def _watch(self) -> None:
        with self._condition:
            while not self._stopping:
                deadline = self._deadline
                if deadline is None:
                    self._condition.wait()
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                cut, self._cut, self._deadline = self._cut, None, None
                self.fired = cut is not None
                if cut is not None:
                    cut()
