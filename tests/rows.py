"""Direct access to the flags table of either store, as another program would have it.

The table is the documented one (``leadership_flags(name, holder, version, timestamp)``);
on SQLite the timestamp is Unix seconds (REAL) on the host's clock.
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from leadership.backends import open_store
from tests.conftest import execute

SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class Row(NamedTuple):
    """A flag's row; ``age`` is seconds since its timestamp on the database clock."""

    name: str
    holder: str
    version: int
    age: float


def is_sqlite(dsn: str) -> bool:
    return dsn.startswith("sqlite:")


def sqlite_path(dsn: str) -> str:
    return dsn[len("sqlite:///") :]


def _sqlite(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(sqlite_path(dsn), timeout=5, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def run(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement (``%s`` placeholders, also on SQLite) in its own connection."""
    if is_sqlite(dsn):
        return _sqlite(dsn, sql.replace("%s", "?"), params)
    return execute(dsn, sql, params)


def create_table(dsn: str) -> None:
    """Create the flags table as the package does (its schema is written only there)."""
    open_store(dsn, timeout=5.0).close()


def put_row(dsn: str, name: str, holder: str, version: int, age: float = 0.0) -> None:
    """Create or overwrite the row of ``name``, stamped ``age`` seconds ago (database clock)."""
    create_table(dsn)
    stamp = f"{SQLITE_NOW} - %s" if is_sqlite(dsn) else "now() - make_interval(secs => %s)"
    run(
        dsn,
        "INSERT INTO leadership_flags (name, holder, version, timestamp) "
        f"VALUES (%s, %s, %s, {stamp}) ON CONFLICT (name) DO UPDATE SET "
        "holder = excluded.holder, version = excluded.version, timestamp = excluded.timestamp",
        (name, holder, version, age),
    )


def _age(dsn: str) -> str:
    if is_sqlite(dsn):
        return f"{SQLITE_NOW} - timestamp"
    return "EXTRACT(EPOCH FROM now() - timestamp)::float8"


def read_row(dsn: str, name: str) -> Row | None:
    rows = run(
        dsn,
        f"SELECT name, holder, version, {_age(dsn)} FROM leadership_flags WHERE name = %s",
        (name,),
    )
    if not rows:
        return None
    found, holder, version, seconds = rows[0]
    return Row(found, holder, int(version), float(seconds))


def read_rows(dsn: str) -> dict[str, Row]:
    """Every row of the table, by flag name."""
    rows = run(dsn, f"SELECT name, holder, version, {_age(dsn)} FROM leadership_flags")
    return {
        name: Row(name, holder, int(version), float(age)) for name, holder, version, age in rows
    }


def steal(dsn: str, name: str, thief: str) -> None:
    """Take the row as ``thief`` with a fresh timestamp and the next version."""
    now = SQLITE_NOW if is_sqlite(dsn) else "now()"
    run(
        dsn,
        f"UPDATE leadership_flags SET holder = %s, version = version + 1, timestamp = {now} "
        "WHERE name = %s",
        (thief, name),
    )
