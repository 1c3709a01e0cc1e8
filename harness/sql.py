"""One-off SQL on a PostgreSQL DSN, for test set-up, benchmarks and inspection.

Not part of the flag: each call opens its own pg8000 connection in autocommit mode.
The DSN is parsed by :func:`leadership.dsn.pg8000_options` (the flag's own parser).
"""

from __future__ import annotations

from typing import Any

import pg8000.dbapi

from leadership.dsn import pg8000_options

__all__ = ["connect_autocommit", "run_sql"]


def connect_autocommit(dsn: str, timeout: float = 10.0) -> Any:
    """A pg8000 DB-API connection to ``dsn`` in autocommit mode; ``timeout`` in seconds
    bounds the connect and each socket operation. The caller closes it."""
    conn = pg8000.dbapi.connect(**pg8000_options(dsn, timeout))
    conn.autocommit = True
    return conn


def run_sql(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement (``%s`` placeholders) on a fresh connection and close it.

    Returns the rows (empty for a statement without a result). Driver errors propagate.
    """
    conn = connect_autocommit(dsn)
    try:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()
