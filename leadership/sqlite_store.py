"""The flags table in an SQLite file: the embedded default for processes on one host.

All of SQLite's SQL lives here. The database clock is the host's wall clock as SQLite
reads it. Checks run in an ``IMMEDIATE`` transaction (one writer at a time); the file is
in WAL mode with a busy timeout equal to the flag's timeout. SQLite has no
notifications, so a waiting store peeks at the rows it watches (a read, no lock) every
``poll`` seconds and wakes its flag as soon as one is free.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .dsn import redact, sqlite_path
from .store import (
    TABLE,
    ConnectedStore,
    DBAPIConnection,
    Observation,
    StoredRow,
    Written,
    check_columns,
    first_connection,
    timeout_ms,
)

__all__ = ["SCHEMES", "SqliteStore", "from_connection", "from_dsn"]

SCHEMES = ("sqlite",)
"""The DSN schemes this backend serves."""

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    version INTEGER NOT NULL,
    timestamp REAL NOT NULL
)
"""

NOW_EXPR = "(julianday('now') - 2440587.5) * 86400.0"
"""The database clock: the host's wall clock in Unix seconds."""
NOW = f"SELECT {NOW_EXPR}"
EXPECTED = {"name": ("TEXT",), "holder": ("TEXT",), "version": ("INTEGER",), "timestamp": ("REAL",)}
EXISTS = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'"
ROWS = f"SELECT name, holder, version, {NOW_EXPR} - timestamp FROM {TABLE}"
READ = f"SELECT holder, version, timestamp FROM {TABLE} WHERE name = ?"
INSERT = f"INSERT INTO {TABLE} (name, holder, version, timestamp) VALUES (?, ?, 0, ?)"
WRITE = f"UPDATE {TABLE} SET holder = ?, version = ?, timestamp = ? WHERE name = ?"
RELEASE = f"UPDATE {TABLE} SET timestamp = 0 WHERE name = ? AND holder = ? AND version = ?"
EXPIRE = f"UPDATE {TABLE} SET timestamp = 0, version = version + 1 WHERE name = ?"
FREE = f"SELECT {NOW_EXPR} - timestamp > ? FROM {TABLE} WHERE name = ?"
POLL_MIN, POLL_MAX = 0.005, 0.5
"""Bounds of the peek period (seconds); within them it is a twentieth of the interval."""


def from_dsn(dsn: str, timeout: float) -> SqliteStore:
    """The store for an ``sqlite:///path`` handle."""
    path = sqlite_path(dsn)

    def open_file() -> sqlite3.Connection:
        return sqlite3.connect(path, timeout=timeout, check_same_thread=False)

    return SqliteStore(open_file, timeout, first=first_connection(open_file, redact(dsn), timeout))


def from_connection(connect: Callable[[], Any], first: Any, timeout: float) -> SqliteStore | None:
    """The store for a factory of sqlite3 connections (None for any other driver).

    Such connections may be bound to the thread that opened them, so the first one is
    closed once the table is prepared: the renewal thread opens its own.
    """
    if not isinstance(first, sqlite3.Connection):
        return None
    return SqliteStore(connect, timeout, first=first, thread_bound=True)


class SqliteStore(ConnectedStore):
    """The flags table in an SQLite database file (stdlib ``sqlite3``).

    ``connect`` opens a new connection; ``timeout`` is the busy timeout. With
    ``thread_bound``, the connection open during ``prepare()`` is closed after it.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        timeout: float,
        first: Any = None,
        *,
        thread_bound: bool = False,
    ) -> None:
        self._timeout_ms = timeout_ms(timeout)
        self._thread_bound = thread_bound
        self._watched: dict[str, float] = {}  # flag name -> interval
        super().__init__(connect, first)

    @property
    def poll(self) -> float:
        """Seconds between two peeks at the watched rows while waiting."""
        shortest = min(self._watched.values(), default=10.0)
        return max(POLL_MIN, min(shortest / 20, POLL_MAX))

    def _setup(self, conn: Any) -> None:
        conn.isolation_level = None  # we open our own transactions
        conn.execute(f"PRAGMA busy_timeout = {self._timeout_ms}")
        # Switching to WAL needs a lock SQLite's busy handler does not wait for: retry.
        give_up = time.monotonic() + self._timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.005)

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except BaseException:
            self._reset()
            raise

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement (its own transaction, as autocommit runs it); return its rows."""
        try:
            rows: list[Any] = self._connection().execute(sql, params).fetchall()
        except BaseException:
            self._reset()
            raise
        return rows

    def prepare(self) -> None:
        def create(conn: Any) -> dict[str, str]:
            conn.execute(CREATE)
            rows = conn.execute(f"PRAGMA table_info({TABLE})")
            return {row[1]: str(row[2]).upper() for row in rows}

        check_columns(self._transaction(create), EXPECTED)
        if self._thread_bound:
            self._reset()

    def watch(self, name: str, interval: float) -> None:
        self._watched[name] = interval

    def unwatch(self, name: str) -> None:
        self._watched.pop(name, None)

    def acquire_or_renew(
        self, name: str, process: str, last: Written | None, interval: float
    ) -> Observation:
        def attempt(conn: Any) -> Observation:
            now = conn.execute(NOW).fetchone()[0]
            row = conn.execute(READ, (name,)).fetchone()
            if row is None:
                conn.execute(INSERT, (name, process, now))
                return Observation(Written(0, now))
            holder, version, written_at = row
            ours = (
                holder == process
                and last is not None
                and (
                    version == last.version
                    or (version == last.version + 1 and last.at < written_at <= last.at + interval)
                )
            )
            if ours or now - written_at > interval:
                conn.execute(WRITE, (process, version + 1, now, name))
                return Observation(Written(version + 1, now))
            return Observation(None, holder, version, written_at + interval - now)

        result: Observation = self._transaction(attempt)
        return result

    def release(self, name: str, process: str, version: int) -> bool:
        def attempt(conn: Any) -> bool:
            return bool(conn.execute(RELEASE, (name, process, version)).rowcount)

        released: bool = self._transaction(attempt)
        return released

    def read_rows(self, name: str | None = None) -> list[StoredRow]:
        if not self._query(EXISTS)[0][0]:
            return []  # no table yet: no flags (and reading creates nothing)
        params: tuple[str, ...] = () if name is None else (name,)
        sql = ROWS if name is None else f"{ROWS} WHERE name = ?"
        rows = self._query(sql + " ORDER BY name", params)
        return [StoredRow(str(n), str(h), int(v), float(a)) for n, h, v, a in rows]

    def expire(self, name: str) -> bool:
        if not self._query(EXISTS)[0][0]:
            return False

        def attempt(conn: Any) -> bool:
            return bool(conn.execute(EXPIRE, (name,)).rowcount)

        expired: bool = self._transaction(attempt)
        return expired

    def lock_row(self, conn: DBAPIConnection, name: str) -> tuple[str, int] | None:
        cursor = conn.cursor()
        try:
            cursor.execute(READ, (name,))
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else (str(row[0]), int(row[1]))

    def wait(self, seconds: float, wake_fd: int) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._sleep(min(left, self.poll), wake_fd) == wake_fd or self._any_free():
                return

    def _any_free(self) -> bool:
        """Peek (no lock) whether a watched row is missing or expired; False on any error."""
        try:
            conn = self._connection()
            for name, interval in self._watched.items():
                row = conn.execute(FREE, (interval, name)).fetchone()
                if row is None or row[0]:
                    return True
        except Exception:  # any failure, the factory's too: the next check will tell
            self._reset()
        return False
