"""Direct access to the flags table of either store, as another program would have it.

The table is the documented one (``leadership_flags(name, holder, version, timestamp)``);
on SQLite the timestamp is seconds (REAL) on the host's boot clock, with its ``domain``
(the boot id) in an extra column.
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from leadership.backends import open_store
from leadership.host_clock import host_clock
from tests.conftest import execute


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
    """Create or overwrite the row of ``name``, stamped ``age`` seconds ago (database clock;
    on SQLite the host's boot clock, in this boot)."""
    create_table(dsn)
    upsert = (
        "INSERT INTO leadership_flags (name, holder, version, timestamp{extra}) "
        "VALUES (%s, %s, %s, {stamp}{values}) ON CONFLICT (name) DO UPDATE SET "
        "holder = excluded.holder, version = excluded.version, timestamp = excluded.timestamp"
    )
    if is_sqlite(dsn):
        clock = host_clock()
        sql = upsert.format(extra=", domain", stamp="%s", values=", %s")
        run(
            dsn,
            sql + ", domain = excluded.domain",
            (name, holder, version, clock.read() - age, clock.domain),
        )
        return
    sql = upsert.format(extra="", stamp="now() - make_interval(secs => %s)", values="")
    run(dsn, sql, (name, holder, version, age))


def read_rows(dsn: str, name: str | None = None) -> dict[str, Row]:
    """Every row of the table (only ``name``'s when given), by flag name, aged as the
    package ages them (on SQLite a row stamped in another boot is infinitely old)."""
    store = open_store(dsn, timeout=5.0, prepare=False)
    try:
        rows = store.read_rows(name)
    finally:
        store.close()
    return {row.name: Row(row.name, row.holder, row.version, row.age) for row in rows}


def read_row(dsn: str, name: str) -> Row | None:
    return read_rows(dsn, name).get(name)


def steal(dsn: str, name: str, thief: str) -> None:
    """Take the row as ``thief`` with a fresh timestamp and the next version."""
    update = "UPDATE leadership_flags SET holder = %s, version = version + 1, timestamp = {now}"
    if is_sqlite(dsn):
        clock = host_clock()
        sql = update.format(now="%s") + ", domain = %s WHERE name = %s"
        run(dsn, sql, (thief, clock.read(), clock.domain, name))
        return
    run(dsn, update.format(now="now()") + " WHERE name = %s", (thief, name))
