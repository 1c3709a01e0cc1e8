"""The flags table in an SQLite file: the embedded default for processes on one host.

All of SQLite's SQL lives here. Rows are stamped with the host's boot clock and its
domain (the boot id; see :mod:`leadership.host_clock`), read by the writer while it
holds the file's write lock: wall-clock steps cannot move a lease, and a row stamped in
another boot is expired. Attempts run in an ``IMMEDIATE`` transaction (one writer at a
time); the file is in WAL mode with a busy timeout equal to the flag's timeout.

Every attempt first checks that the path still names the file this connection has open
(device and inode): a removed or replaced file means whatever this instance held there
is gone, so the store raises :class:`~leadership.store.HoldLost` and reconnects.

SQLite has no notifications, so a waiting store peeks at the rows it watches (a read,
no lock) every ``poll`` seconds, and at the file's identity, and returns early as soon as
a row is free or the file was replaced.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from .dsn import sqlite_path
from .errors import LeadershipError, StoreUnavailable
from .host_clock import HostClock, host_clock
from .store import (
    TABLE,
    Attempt,
    ConnectedStore,
    DBAPIConnection,
    HoldLost,
    Mine,
    Observation,
    QualifiedName,
    StoredMember,
    StoredRow,
    Tick,
    Written,
    check_columns,
    continues,
    describe_error,
    is_ours,
    members_table,
    timeout_ms,
)

__all__ = ["SCHEMES", "SqliteStore", "from_connection", "from_dsn"]

SCHEMES = ("sqlite",)
"""The DSN schemes this backend serves."""

# Statements are templates on {table}, the quoted table name (see SqliteSql).
CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    version INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    domain TEXT,
    lease REAL,
    owner TEXT
)
"""
COLUMNS = "PRAGMA table_info({table})"
EXPECTED = {
    "name": ("TEXT",),
    "holder": ("TEXT",),
    "version": ("INTEGER",),
    "timestamp": ("REAL",),
    "domain": ("TEXT",),
    "lease": ("REAL",),
    "owner": ("TEXT",),
}
ADDED = ("domain", "lease", "owner")
"""Columns a table made by version 0.1 lacks, added by ``prepare`` (``owner`` is the
writing store's identity)."""
EXISTS = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
ROWS = "SELECT name, holder, version, timestamp, domain, lease FROM {table}"
READ = "SELECT holder, version, timestamp, domain, lease, owner FROM {table} WHERE name = ?"
INSERT = """INSERT INTO {table} (name, holder, version, timestamp, domain, lease, owner)
VALUES (?, ?, ?, ?, ?, ?, ?)"""
WRITE = """UPDATE {table}
SET holder = ?, version = ?, timestamp = ?, domain = ?, lease = ?, owner = ?
WHERE name = ?"""
RELEASE = "UPDATE {table} SET timestamp = ? WHERE name = ? AND version = ?"
EXPIRE = "UPDATE {table} SET timestamp = ?, version = version + 1 WHERE name = ?"
TOUCH = "UPDATE {table} SET version = version WHERE name = ?"
PEEK = "SELECT timestamp, domain, lease FROM {table} WHERE name = ?"
FILE = "SELECT file FROM pragma_database_list WHERE name = 'main'"

CREATE_MEMBERS = """
CREATE TABLE IF NOT EXISTS {table} (
    pool TEXT NOT NULL,
    member TEXT NOT NULL,
    timestamp REAL NOT NULL,
    domain TEXT NOT NULL,
    lease REAL NOT NULL,
    PRIMARY KEY (pool, member)
)
"""
BEAT = """INSERT INTO {table} (pool, member, timestamp, domain, lease) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (pool, member) DO UPDATE
SET timestamp = excluded.timestamp, domain = excluded.domain, lease = excluded.lease"""
LIVE = "SELECT member FROM {table} WHERE pool = ? AND domain = ? AND timestamp + lease > ?"
GONE = """DELETE FROM {table} WHERE pool = ? AND member <> ?
AND (domain <> ? OR timestamp + lease * ? < ?)"""
GONE_AFTER = 10
"""Leases after which a silent member's row is deleted by the others."""
LEAVE = "DELETE FROM {table} WHERE pool = ? AND member = ?"
MEMBERS = "SELECT pool, member, timestamp, domain, lease FROM {table}"
"""The members table of pools (see Store.acquire_or_renew_many), beside the flags table."""

OPEN_ATTEMPTS = 5
"""Times to reopen a file that was replaced while it was being opened."""
RELEASED = -1e9
"""The timestamp of a released row: older than any lease on any clock reading."""
POLL_MIN, POLL_MAX = 0.005, 0.5
"""Bounds of the peek period (seconds); within them it is a twentieth of the interval."""


def from_dsn(
    dsn: str, timeout: float, *, create: bool = True, table: str | None = None
) -> SqliteStore:
    """The store for an ``sqlite:///path`` handle; without ``create`` a missing file is
    an error instead of being created."""
    path = os.path.abspath(sqlite_path(dsn))  # reconnections must not follow a chdir
    target = path if create else f"file:{quote(path)}?mode=rw"

    def open_file() -> sqlite3.Connection:
        for _ in range(OPEN_ATTEMPTS):  # the path must name the same file before and after
            before = _identity(path)
            try:
                conn = sqlite3.connect(
                    target, timeout=timeout, check_same_thread=False, uri=not create
                )
            except sqlite3.Error as error:
                raise StoreUnavailable(_explain(path, error)) from None
            if before is None or before == _identity(path):
                return conn
            conn.close()  # replaced while we opened it: open the new one
        raise StoreUnavailable(f"SQLite file {path} keeps being replaced")

    return SqliteStore(open_file, timeout, first=open_file(), table=table, path=path)


def from_connection(
    connect: Callable[[], Any], first: Any, timeout: float, table: str | None = None
) -> SqliteStore | None:
    """The store for a factory of sqlite3 connections (None for any other driver).

    Such connections may be bound to the thread that opened them, so the first one is
    closed once the table is prepared: the renewal thread opens its own.
    """
    if not isinstance(first, sqlite3.Connection):
        return None
    return SqliteStore(connect, timeout, first=first, thread_bound=True, table=table)


class SqliteStore(ConnectedStore):
    """The flags table in an SQLite database file (stdlib ``sqlite3``).

    ``connect`` opens a new connection; ``timeout`` is the busy timeout. With
    ``thread_bound``, the connection open during ``prepare()`` is closed after it.
    ``clock`` stamps the rows (default: the host's boot clock). ``table`` names the table
    (default ``leadership_flags``). ``path`` is the file as the handle names it: its
    identity is checked through that path (a symlink repointed counts as a replacement).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        timeout: float,
        first: Any = None,
        *,
        thread_bound: bool = False,
        clock: HostClock | None = None,
        table: str | None = None,
        path: str | None = None,
    ) -> None:
        self._table = QualifiedName.parse(table or TABLE)
        self.instance = uuid.uuid4().hex
        """This store's identity, recorded in the rows it writes (``owner``)."""
        self.notes: list[str] = []
        self._timeout_ms = timeout_ms(timeout)
        self._thread_bound = thread_bound
        self._clock = clock or host_clock()
        self._watched: dict[str, float] = {}  # flag name -> interval
        self._given_path = path  # the path as given (a symlink stays a symlink)
        self._path = ""  # the database file of the open connection
        self._identity: tuple[int, int] | None = None  # its (device, inode)
        super().__init__(connect, first)

    @property
    def table(self) -> str:
        return str(self._table)

    def _sql(self, template: str, *, members: bool = False) -> str:
        table = members_table(self._table) if members else self._table
        return template.format(table=table.quoted())

    @property
    def poll(self) -> float:
        """Seconds between two peeks at the watched rows while waiting."""
        shortest = min(self._watched.values(), default=10.0)
        return max(POLL_MIN, min(shortest / 20, POLL_MAX))

    def _setup(self, conn: Any) -> None:
        conn.isolation_level = None  # we open our own transactions
        self._path = self._given_path or str(conn.execute(FILE).fetchone()[0])
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._timeout_ms}")
            self._switch_to_wal(conn)
        except sqlite3.Error as error:
            raise StoreUnavailable(_explain(self._path, error)) from None
        self._identity = _identity(self._path)

    def _switch_to_wal(self, conn: Any) -> None:
        # Switching to WAL needs a lock SQLite's busy handler does not wait for: retry.
        give_up = time.monotonic() + self._timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > give_up:
                    raise
                time.sleep(0.005)

    def _replaced(self) -> str | None:
        """Why the path no longer names the open file (removed, replaced), or None."""
        if self._identity is None:
            return None
        now = _identity(self._path)
        if now == self._identity:
            return None
        if now is None:
            return f"SQLite file {self._path} was removed"
        return f"SQLite file {self._path} was replaced by another file"

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
            conn.execute(self._sql(CREATE))
            columns = {row[1]: str(row[2]).upper() for row in conn.execute(self._sql(COLUMNS))}
            for added in ADDED:
                if added not in columns:
                    kind = EXPECTED[added][0]
                    conn.execute(self._sql(f"ALTER TABLE {{table}} ADD COLUMN {added} {kind}"))
                    columns[added] = kind
            return columns

        try:
            columns = self._transaction(create)
        except LeadershipError:
            raise
        except sqlite3.Error as error:
            raise StoreUnavailable(_explain(self._path, error)) from None
        check_columns(self.table, columns, EXPECTED)
        if self._thread_bound:
            self._reset()

    def watch(self, name: str, interval: float) -> None:
        self._watched[name] = interval

    def unwatch(self, name: str) -> None:
        self._watched.pop(name, None)

    def acquire_or_renew(
        self, name: str, process: str, mine: Mine | None, interval: float
    ) -> Observation:
        def attempt(conn: Any) -> Observation:
            return self._attempt(conn, name, process, mine, interval)

        result: Observation = self._write(attempt)
        return result

    def acquire_or_renew_many(
        self,
        process: str,
        attempts: Sequence[Attempt],
        interval: float,
        pool: str | None = None,
    ) -> Tick:
        """Every attempt in one IMMEDIATE transaction (one writer at a time: the tick is
        atomic, as PostgreSQL's one statement is)."""

        def tick(conn: Any) -> Tick:
            observations = {
                each.name: (
                    self._attempt(conn, each.name, process, each.mine, interval)
                    if each.write
                    else self._read(conn, each.name, interval)
                )
                for each in attempts
            }
            members = None if pool is None else self._beat(conn, pool, process, interval)
            return Tick(observations, members)

        result: Tick = self._write(tick)
        return result

    def _write(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work`` in a transaction; a vanished file raises HoldLost; a dropped table
        is created again."""
        try:
            return self._transaction(work)
        except sqlite3.Error as error:
            replaced = self._replaced()
            if replaced is not None:  # the error came from the file going away under us
                raise HoldLost(replaced) from error
            if "no such table" not in str(error):
                raise
            self.prepare()  # the table was dropped under a running flag: create it again
            return self._transaction(work)

    def _attempt(
        self, conn: Any, name: str, process: str, mine: Mine | None, interval: float
    ) -> Observation:
        """Acquire or renew ``name`` inside the caller's write transaction."""
        replaced = self._replaced()  # checked under the write lock of the open file
        if replaced is not None:
            raise HoldLost(replaced)
        clock = self._clock
        now = clock.read()
        row = conn.execute(self._sql(READ), (name,)).fetchone()
        if row is None:  # created at the wall clock in microseconds: see Store
            created = time.time_ns() // 1000
            stamped = (name, process, created, now, clock.domain, interval, self.instance)
            conn.execute(self._sql(INSERT), stamped)
            return Observation(Written(created, now))
        holder, version, at, domain, lease, owner = row
        if domain != clock.domain:  # stamped in another boot or clock domain: expired
            at = -math.inf
        lease = interval if lease is None else lease  # the holder's, when recorded
        owned = owner == self.instance
        ours = is_ours(holder, version, at, process, mine, interval, owned)
        if ours or now - at > lease:
            renewed = (process, version + 1, now, clock.domain, interval, self.instance, name)
            conn.execute(self._sql(WRITE), renewed)
            continued = ours and continues(version, mine)
            return Observation(Written(version + 1, now, continued))
        return Observation(None, holder, version, at + lease - now)

    def _read(self, conn: Any, name: str, interval: float) -> Observation:
        """The row of ``name`` as a read-only observation (see Tick); its holder's lease
        is ``interval`` unless the row records one."""
        row = conn.execute(self._sql(READ), (name,)).fetchone()
        if row is None:
            return Observation(None)
        holder, version, at, domain, lease, _ = row
        if domain != self._clock.domain:
            at = -math.inf
        lease = interval if lease is None else lease
        return Observation(None, holder, version, at + lease - self._clock.read())

    def _beat(self, conn: Any, pool: str, process: str, interval: float) -> tuple[str, ...]:
        """Heartbeat ``process`` in ``pool``; return the pool's live members."""
        now, domain = self._clock.read(), self._clock.domain
        conn.execute(self._sql(BEAT, members=True), (pool, process, now, domain, interval))
        rows = conn.execute(self._sql(LIVE, members=True), (pool, domain, now)).fetchall()
        conn.execute(self._sql(GONE, members=True), (pool, process, domain, GONE_AFTER, now))
        return tuple(sorted({process, *(str(row[0]) for row in rows)}))

    def release(self, name: str, process: str, mine: Mine, interval: float) -> bool:
        def attempt(conn: Any) -> bool:
            return self._release(conn, name, process, mine, interval)

        released: bool = self._transaction(attempt)
        return released

    def _release(self, conn: Any, name: str, process: str, mine: Mine, interval: float) -> bool:
        """Release ``name`` inside the caller's write transaction if it is ours."""
        row = conn.execute(self._sql(READ), (name,)).fetchone()
        if row is None or row[3] != self._clock.domain:
            return False
        holder, version, at = row[:3]
        if not is_ours(holder, version, at, process, mine, interval, row[5] == self.instance):
            return False
        return bool(conn.execute(self._sql(RELEASE), (RELEASED, name, version)).rowcount)

    def release_many(
        self,
        process: str,
        held: Sequence[tuple[str, Mine]],
        interval: float,
        pool: str | None = None,
    ) -> list[str]:
        def attempt(conn: Any) -> list[str]:
            released = [n for n, mine in held if self._release(conn, n, process, mine, interval)]
            if pool is not None:
                conn.execute(self._sql(LEAVE, members=True), (pool, process))
            return sorted(released)

        if not held and pool is None:
            return []
        result: list[str] = self._transaction(attempt)
        return result

    def prepare_members(self) -> None:
        try:
            self._transaction(lambda conn: conn.execute(self._sql(CREATE_MEMBERS, members=True)))
        except sqlite3.Error as error:
            raise StoreUnavailable(_explain(self._path, error)) from None

    def read_members(self, pool: str | None = None) -> list[StoredMember]:
        if not self._query(EXISTS, (members_table(self._table).name,))[0][0]:
            return []
        sql, params = self._sql(MEMBERS, members=True), tuple[str, ...]()
        if pool is not None:
            sql, params = f"{sql} WHERE pool = ?", (pool,)
        rows = self._query(sql + " ORDER BY pool, member", params)
        now, domain = self._clock.read(), self._clock.domain
        return [
            StoredMember(str(p), str(m), now - at if d == domain else math.inf, float(lease))
            for p, m, at, d, lease in rows
        ]

    def read_rows(self, name: str | None = None) -> list[StoredRow]:
        if not self._query(EXISTS, (self._table.name,))[0][0]:
            return []  # no table yet: no flags (and reading creates nothing)
        columns = {row[1] for row in self._query(self._sql(COLUMNS))}
        sql = self._sql(ROWS)
        for added in ADDED:  # absent from a table made by version 0.1 (ROWS has no owner)
            if added not in columns:
                sql = sql.replace(f", {added}", ", NULL", 1)
        params: tuple[str, ...] = () if name is None else (name,)
        if name is not None:
            sql += " WHERE name = ?"
        rows = self._query(sql + " ORDER BY name", params)
        now = self._clock.read()
        domain = self._clock.domain
        return [
            StoredRow(str(n), str(h), int(v), now - a if d == domain else math.inf, lease)
            for n, h, v, a, d, lease in rows
        ]

    def expire(self, name: str) -> bool:
        if not self._query(EXISTS, (self._table.name,))[0][0]:
            return False

        def attempt(conn: Any) -> bool:
            return bool(conn.execute(self._sql(EXPIRE), (RELEASED, name)).rowcount)

        expired: bool = self._transaction(attempt)
        return expired

    def lock_row(self, conn: DBAPIConnection, name: str) -> tuple[str, int] | None:
        """Take the file's write lock in the caller's transaction (a write that changes
        nothing), then read the row: no renewal or takeover commits until that
        transaction ends. The connection must be in a transaction or open one
        implicitly (sqlite3's default); an autocommit connection is refused."""
        autocommit = getattr(conn, "autocommit", None) is True or (
            getattr(conn, "isolation_level", "") is None
        )
        if autocommit and not getattr(conn, "in_transaction", False):
            raise LeadershipError(
                "guard() on SQLite needs the caller's transaction: this connection is in "
                "autocommit mode; run conn.execute('BEGIN IMMEDIATE') first, or use "
                "sqlite3's default isolation level"
            )
        cursor = conn.cursor()
        try:
            cursor.execute(self._sql(TOUCH), (name,))
            cursor.execute(self._sql(READ), (name,))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        holder, version, _, domain, _, _ = row
        if domain != self._clock.domain:
            return None  # stamped in another boot: nobody holds it
        return str(holder), int(version)

    def wait(self, seconds: float, wake_fd: int) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._sleep(min(left, self.poll), wake_fd) == wake_fd:
                return
            if self._replaced() is not None or self._any_free():
                return

    def _any_free(self) -> bool:
        """Peek (no lock) whether a watched row is missing or expired; False on any error."""
        try:
            conn = self._connection()
            now = self._clock.read()
            for name, interval in self._watched.items():
                row = conn.execute(self._sql(PEEK), (name,)).fetchone()
                if row is None or row[1] != self._clock.domain:
                    return True
                if now - row[0] > (interval if row[2] is None else row[2]):
                    return True
        except Exception:  # any failure, the factory's too: the next attempt will tell
            self._reset()
        return False


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when there is no such file."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _explain(path: str, error: BaseException) -> str:
    """A one-line error about the SQLite file ``path`` with the most likely reason."""
    return f"SQLite file {path}: {describe_error(error)}{_reason(path)}"


def _may(path: str, mode: int) -> bool:
    """Whether this process (its effective user) may access ``path`` with ``mode``."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _reason(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    if not os.path.isdir(directory):
        return f" (directory {directory} does not exist)"
    exists = os.path.exists(path)
    if not exists and not _may(directory, os.W_OK | os.X_OK):
        return f" (directory {directory} is not writable, so the file cannot be created)"
    if not exists:
        return " (no such file)"
    if not _may(path, os.R_OK | os.W_OK):
        return " (the file is not writable by this user)"
    if not _may(directory, os.W_OK | os.X_OK):
        return (
            f" (directory {directory} is not writable: SQLite keeps its -wal and -shm "
            "files beside the database)"
        )
    return ""
