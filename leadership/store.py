"""What the campaign needs from a database: one check, one release, a wait."""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["TABLE", "ConnectedStore", "Observation", "Store", "describe_error", "drain"]

TABLE = "leadership_flags"


@dataclass(frozen=True)
class Observation:
    """The outcome of one check, as the database saw it.

    ``acquired`` is True when this statement wrote the row for this instance, with
    ``version``. Otherwise ``holder`` and ``version`` describe the row before the
    statement (None when there was none) and ``expires_in`` is the number of seconds,
    on the database clock, until another process may take it (None when unknown).
    """

    acquired: bool
    holder: str | None
    version: int | None
    expires_in: float | None
    stamp: float = 0.0
    """When ``acquired``: the row's new timestamp, database clock, Unix seconds."""


class Store(Protocol):
    """A dedicated connection to the flags table, reconnecting after any failure."""

    def prepare(self) -> None:
        """Connect, create the table if missing and check its schema; raise on failure."""

    def check(
        self, name: str, process: str, mine: int, stamp: float, interval: float
    ) -> Observation:
        """Acquire or renew in one statement.

        The row is written when it is missing, when it is older than ``interval`` seconds
        on the database clock, or when it carries ``process`` and either version ``mine``
        (the version this instance last wrote, stamped ``stamp``; -1 for none) or version
        ``mine + 1`` stamped after ``stamp`` but within ``interval`` of it. Only a renewal
        of ``mine`` by this instance, whose reply was lost, can have written that row: any
        other writer must wait for ``mine`` to expire first.
        """

    def release(self, name: str, process: str, version: int) -> None:
        """Expire the row if it still carries ``process`` and ``version``, waking waiters."""

    def wait(self, seconds: float, wake_fd: int) -> None:
        """Sleep up to ``seconds``; return early when ``wake_fd`` is readable or the flag
        may have been released (a notification, where the database has them)."""

    def close(self) -> None:
        """Close the connection; idempotent."""


def describe_error(error: BaseException) -> str:
    """One line describing a driver error, without connection secrets."""
    args = error.args
    if args and isinstance(args[0], dict):  # pg8000 passes the server's fields as a dict
        fields = args[0]
        parts = [fields.get("S"), fields.get("C"), fields.get("M")]
        return " ".join(str(part) for part in parts if part) or type(error).__name__
    text = str(error).strip().splitlines()
    cause = error.__cause__
    detail = text[0] if text else type(error).__name__
    if cause is not None and not isinstance(cause, type(error)):
        detail = f"{detail} ({describe_error(cause)})"
    return detail


def drain(fd: int) -> None:
    """Read and discard whatever is waiting on the non-blocking pipe ``fd``."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class ConnectedStore:
    """Holds one dedicated DB-API connection, opened lazily and dropped after any failure.

    Subclasses set up each new connection in ``_setup`` and use ``_connection()``;
    a failed statement must call ``_reset()`` so the next call reconnects.
    """

    def __init__(self, connect: Callable[[], Any], first: Any = None) -> None:
        self._connect = connect
        self._conn: Any = None
        if first is not None:
            try:
                self._setup(first)
            except BaseException:
                _close_quietly(first)
                raise
            self._conn = first

    def _setup(self, conn: Any) -> None:
        """Prepare a fresh connection (session settings); raise to reject it."""

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            try:
                self._setup(conn)
            except BaseException:
                _close_quietly(conn)
                raise
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    def close(self) -> None:
        self._reset()

    def _sleep(self, seconds: float, wake_fd: int, watched: int | None = None) -> int | None:
        """Wait up to ``seconds`` for ``wake_fd`` or ``watched``; return the one that fired."""
        fds = [wake_fd] if watched is None else [wake_fd, watched]
        try:
            ready, _, _ = select.select(fds, [], [], max(seconds, 0.0))
        except (OSError, ValueError):  # the watched socket was closed under us
            return None
        if wake_fd in ready:
            drain(wake_fd)
            return wake_fd
        return watched if ready else None


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()
