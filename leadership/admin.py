"""Administrative reads and writes of the flags table: ``leadership status`` and ``release``.

The table does not record the interval its users chose, so the caller gives it (the
same value the contenders use) to compute the time left on each lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pg8000.dbapi

from .backends import open_store
from .dsn import pg8000_options
from .postgres_store import PostgresStore, channel_for
from .sqlite_store import NOW_EXPR, SqliteStore
from .store import TABLE

__all__ = ["FlagRow", "connect_autocommit", "read_flags", "release_flag", "run_sql"]


@dataclass(frozen=True)
class FlagRow:
    """One row of the flags table, aged on the database clock (seconds)."""

    name: str
    holder: str
    version: int
    age: float
    interval: float

    @property
    def left(self) -> float:
        """Seconds before another process may take the flag (0 when expired)."""
        return max(self.interval - self.age, 0.0)

    @property
    def expired(self) -> bool:
        return self.age > self.interval


POSTGRES_READ = (
    f"SELECT name, holder, version, EXTRACT(EPOCH FROM now() - timestamp)::float8 FROM {TABLE}"
)
SQLITE_READ = f"SELECT name, holder, version, {NOW_EXPR} - timestamp FROM {TABLE}"
POSTGRES_EXISTS = f"SELECT to_regclass('{TABLE}') IS NOT NULL"
SQLITE_EXISTS = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'"


def _rows(
    store: PostgresStore | SqliteStore, name: str | None
) -> list[tuple[str, str, int, float]]:
    if isinstance(store, SqliteStore):
        sql, mark, exists = SQLITE_READ, "?", SQLITE_EXISTS
    else:
        sql, mark, exists = POSTGRES_READ, "%s", POSTGRES_EXISTS
    if not store.query(exists)[0][0]:
        return []  # no table yet: no flags (and the admin commands create nothing)
    if name is not None:
        sql += f" WHERE name = {mark}"
    rows = store.query(sql + " ORDER BY name", () if name is None else (name,))
    return [(str(n), str(h), int(v), float(a)) for n, h, v, a in rows]


def read_flags(
    handle: str, interval: float, timeout: float, name: str | None = None
) -> list[FlagRow]:
    """The rows of the flags table (only ``name``'s when given), sorted by name."""
    store = open_store(handle, name or "", interval, timeout, prepare=False)
    try:
        return [FlagRow(*row, interval=interval) for row in _rows(store, name)]
    finally:
        store.close()


def release_flag(handle: str, name: str, timeout: float) -> FlagRow | None:
    """Expire flag ``name`` now and bump its version, waking waiting processes.

    A live holder keeps its local lease until its deadline (up to one interval) and
    loses the flag at its next renewal; this is for holders known to be dead or stuck.
    Returns the row as it was, or None when there is no such flag.
    """
    store = open_store(handle, name, 1.0, timeout, prepare=False)
    try:
        before = _rows(store, name)
        if not before:
            return None
        if isinstance(store, PostgresStore):
            store.query(
                f"WITH r AS (UPDATE {TABLE} SET timestamp = 'epoch', version = version + 1 "
                "WHERE name = %s RETURNING name) SELECT pg_notify(%s, '') FROM r",
                (name, channel_for(name)),
            )
        else:
            store.query(
                f"UPDATE {TABLE} SET timestamp = 0, version = version + 1 WHERE name = ?", (name,)
            )
        return FlagRow(*before[0], interval=0.0)
    finally:
        store.close()


def connect_autocommit(dsn: str, timeout: float = 10.0) -> Any:
    """A pg8000 DB-API connection to a PostgreSQL DSN, in autocommit mode (for tooling)."""
    conn = pg8000.dbapi.connect(**pg8000_options(dsn, timeout))
    conn.autocommit = True
    return conn


def run_sql(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement (``%s`` placeholders) on a fresh connection; return its rows."""
    conn = connect_autocommit(dsn)
    try:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()
