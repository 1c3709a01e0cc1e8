"""The flags table in an SQLite file: the embedded default for processes on one host.

The database clock is the host's wall clock as SQLite reads it. Checks run in an
``IMMEDIATE`` transaction (one writer at a time); the file is in WAL mode with a busy
timeout equal to the flag's timeout. SQLite has no notifications, so a waiting
instance peeks at the row (a read, no lock) every ``poll`` seconds and checks as soon
as it is free.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .errors import SchemaError
from .store import TABLE, ConnectedStore, Observation

__all__ = ["SqliteStore"]

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
EXPECTED = {"name": "TEXT", "holder": "TEXT", "version": "INTEGER", "timestamp": "REAL"}


class SqliteStore(ConnectedStore):
    """The flags table in an SQLite database file (stdlib ``sqlite3``)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        name: str,
        interval: float,
        timeout: float,
        first: Any = None,
    ) -> None:
        self._name = name
        self._interval = interval
        self._timeout_ms = max(1, round(timeout * 1000))
        self.poll = max(0.005, min(interval / 20, 0.5))
        super().__init__(connect, first)

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

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
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

        columns = self._transaction(create)
        for column, expected in EXPECTED.items():
            found = columns.get(column)
            if found is None:
                raise SchemaError(f"table {TABLE} has no column {column} (expected {expected})")
            if found != expected:
                raise SchemaError(
                    f"table {TABLE}: column {column} has type {found}, expected {expected}"
                )

    def check(
        self, name: str, process: str, mine: int, stamp: float, interval: float
    ) -> Observation:
        def attempt(conn: Any) -> Observation:
            now = conn.execute(NOW).fetchone()[0]
            row = conn.execute(
                f"SELECT holder, version, timestamp FROM {TABLE} WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO {TABLE} (name, holder, version, timestamp) VALUES (?, ?, 0, ?)",
                    (name, process, now),
                )
                return Observation(True, process, 0, interval, now)
            holder, version, written = row
            ours = holder == process and (
                version == mine or (version == mine + 1 and stamp < written <= stamp + interval)
            )
            if ours or now - written > interval:
                conn.execute(
                    f"UPDATE {TABLE} SET holder = ?, version = ?, timestamp = ? WHERE name = ?",
                    (process, version + 1, now, name),
                )
                return Observation(True, process, version + 1, interval, now)
            return Observation(False, holder, version, written + interval - now)

        result: Observation = self._transaction(attempt)
        return result

    def release(self, name: str, process: str, version: int) -> None:
        self._transaction(
            lambda conn: conn.execute(
                f"UPDATE {TABLE} SET timestamp = 0 WHERE name = ? AND holder = ? AND version = ?",
                (name, process, version),
            )
        )

    def wait(self, seconds: float, wake_fd: int) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._sleep(min(left, self.poll), wake_fd) == wake_fd or self._free():
                return

    def _free(self) -> bool:
        """Peek (no lock) whether the row is missing or expired; False on any error."""
        try:
            row = (
                self._connection()
                .execute(
                    f"SELECT {NOW_EXPR} - timestamp > ? FROM {TABLE} WHERE name = ?",
                    (self._interval, self._name),
                )
                .fetchone()
            )
        except Exception:  # any failure, the factory's too: the next check will tell
            self._reset()
            return False
        return row is None or bool(row[0])
