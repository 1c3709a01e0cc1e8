"""The flags table on PostgreSQL, through any DB-API driver using ``%s`` placeholders.

One statement per check, one per release. Releases notify a channel derived from the
flag name; a waiting instance listens on it and checks at once instead of waiting for
its schedule.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import pg8000.native

from .errors import SchemaError, StoreUnavailable
from .store import TABLE, ConnectedStore, Observation, describe_error

__all__ = ["PostgresStore", "channel_for"]

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name text PRIMARY KEY,
    holder text NOT NULL,
    version bigint NOT NULL,
    timestamp timestamp with time zone NOT NULL
)
"""

COLUMNS = f"""
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute AS a
WHERE a.attrelid = to_regclass('{TABLE}') AND a.attnum > 0 AND NOT a.attisdropped
"""

NAME_IS_UNIQUE = f"""
SELECT count(*) FROM pg_index AS i
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = to_regclass('{TABLE}') AND i.indisunique AND i.indnatts = 1
  AND a.attname = 'name'
"""

EXPECTED = {
    "name": ("text", "character varying"),
    "holder": ("text", "character varying"),
    "version": ("bigint",),
    "timestamp": ("timestamp with time zone",),
}

# Parameters: name, name, process, mine, mine, stamp, stamp, interval, interval, interval.
CHECK = f"""
WITH previous AS (
    SELECT holder, version, timestamp FROM {TABLE} WHERE name = %s FOR UPDATE
), written AS (
    INSERT INTO {TABLE} AS f (name, holder, version, timestamp)
    VALUES (%s, %s, 0, now())
    ON CONFLICT (name) DO UPDATE
        SET holder = excluded.holder, version = f.version + 1, timestamp = now()
        WHERE (f.holder = excluded.holder AND (f.version = %s OR (
                   f.version = %s + 1 AND f.timestamp > to_timestamp(%s)
                   AND f.timestamp <= to_timestamp(%s) + make_interval(secs => %s))))
           OR f.timestamp < now() - make_interval(secs => %s)
    RETURNING f.version, EXTRACT(EPOCH FROM f.timestamp)::float8 AS stamp
)
SELECT w.version, w.stamp, p.holder, p.version,
       EXTRACT(EPOCH FROM p.timestamp + make_interval(secs => %s) - now())::float8
FROM (SELECT 1) AS one
LEFT JOIN written AS w ON true
LEFT JOIN previous AS p ON true
"""

# Parameters: name, process, version, channel.
RELEASE = f"""
WITH released AS (
    UPDATE {TABLE} SET timestamp = 'epoch'
    WHERE name = %s AND holder = %s AND version = %s
    RETURNING name
)
SELECT pg_notify(%s, '') FROM released
"""

SOCKET_WAKE_SPACING = 0.05
"""Seconds between two wake-ups by the connection's socket (guards against a busy loop)."""


def channel_for(name: str) -> str:
    """The LISTEN/NOTIFY channel of flag ``name``: a plain identifier whatever the name."""
    return "leadership_" + hashlib.sha256(name.encode()).hexdigest()[:32]


class PostgresStore(ConnectedStore):
    """The flags table on PostgreSQL (pg8000, psycopg or any ``%s``-style DB-API driver)."""

    def __init__(
        self, connect: Callable[[], Any], name: str, timeout: float, first: Any = None
    ) -> None:
        self._channel = channel_for(name)
        self._timeout_ms = max(1, round(timeout * 1000))
        self._last_socket_wake = 0.0
        self._prepared: dict[str, Any] = {}
        super().__init__(connect, first)

    def _setup(self, conn: Any) -> None:
        self._prepared = {}
        if hasattr(conn, "autocommit"):
            conn.autocommit = True
        self._execute(
            conn, "SELECT set_config('statement_timeout', %s, false)", (str(self._timeout_ms),)
        )
        self._execute(conn, f'LISTEN "{self._channel}"', ())

    def _execute(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run ``sql`` (``%s`` placeholders) on ``conn``; return its rows."""
        if isinstance(conn, pg8000.native.Connection):
            if not params:
                return list(conn.run(sql) or [])
            # Prepared once per connection: each later run is one round trip.
            statement = self._prepared.get(sql)
            if statement is None:
                statement = self._prepared[sql] = conn.prepare(_named_placeholders(sql))
            return list(statement.run(**{f"p{i}": value for i, value in enumerate(params)}) or [])
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement (autocommit); return its rows; reconnect next time after a failure."""
        try:
            rows = self._execute(self._connection(), sql, params)
        except BaseException as error:
            if not _connection_survives(error):
                self._reset()
            raise
        notifications = getattr(self._conn, "notifications", None)
        if notifications is not None:  # pg8000 keeps them; waking was their only use
            notifications.clear()
        return rows

    def prepare(self) -> None:
        columns = dict(self.query(COLUMNS, ()))
        if not columns:
            try:
                self.query(CREATE, ())
            except Exception as error:
                columns = dict(self.query(COLUMNS, ()))  # another process may have made it
                if not columns:
                    raise (SchemaError if _sqlstate(error) == "42501" else StoreUnavailable)(
                        f"table {TABLE} does not exist and could not be created: "
                        f"{describe_error(error)}"
                    ) from error
            else:
                columns = dict(self.query(COLUMNS, ()))
        for column, types in EXPECTED.items():
            found = columns.get(column)
            if found is None:
                raise SchemaError(f"table {TABLE} has no column {column} (expected {types[0]})")
            if found not in types:
                raise SchemaError(
                    f"table {TABLE}: column {column} has type {found}, expected {types[0]}"
                )
        if not self.query(NAME_IS_UNIQUE, ())[0][0]:
            raise SchemaError(f"table {TABLE}: column name is not a primary key or unique")

    def check(
        self, name: str, process: str, mine: int, stamp: float, interval: float
    ) -> Observation:
        parameters = (name, name, process, mine, mine, stamp, stamp, interval, interval, interval)
        written, written_stamp, holder, version, expires_in = self.query(CHECK, parameters)[0]
        if written is not None:
            return Observation(True, process, int(written), interval, float(written_stamp))
        return Observation(
            False,
            holder,
            None if version is None else int(version),
            None if expires_in is None else float(expires_in),
        )

    def release(self, name: str, process: str, version: int) -> None:
        self.query(RELEASE, (name, process, version, self._channel))

    def wait(self, seconds: float, wake_fd: int) -> None:
        since = time.monotonic() - self._last_socket_wake
        if since < SOCKET_WAKE_SPACING:
            pause = min(seconds, SOCKET_WAKE_SPACING - since)
            if self._sleep(pause, wake_fd) == wake_fd:
                return
            seconds -= pause
        socket = self._socket()
        if socket is not None and self._sleep(seconds, wake_fd, socket) == socket:
            self._last_socket_wake = time.monotonic()
        elif socket is None:
            self._sleep(seconds, wake_fd)

    def _socket(self) -> int | None:
        """The connection's socket, to wake on notifications or on a dropped connection."""
        conn = self._conn
        if conn is None:
            return None
        sock = getattr(conn, "_usock", None)  # pg8000
        if sock is not None:
            fileno: int = sock.fileno()
            return fileno if fileno >= 0 else None
        if hasattr(conn, "fileno"):  # psycopg
            try:
                return int(conn.fileno())
            except Exception:
                return None
        return None


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a driver error (pg8000 or psycopg), if it has one."""
    if error.args and isinstance(error.args[0], dict):
        code = error.args[0].get("C")
        return str(code) if code else None
    code = getattr(error, "sqlstate", None)
    return str(code) if code else None


def _named_placeholders(sql: str) -> str:
    """``%s`` placeholders as pg8000.native's ``:p0, :p1, ...``."""
    numbers = itertools.count()
    parts = sql.split("%s")
    return "".join(
        part + (f":p{next(numbers)}" if i < len(parts) - 1 else "") for i, part in enumerate(parts)
    )


def _connection_survives(error: BaseException) -> bool:
    """True for an ordinary SQL error reported by the server (read-only transaction,
    statement timeout, lock timeout...): the connection stays usable. Anything else
    (network, protocol, server shutdown or termination) means reconnecting."""
    state = _sqlstate(error)
    return state is not None and not state.startswith(("08", "57P", "53", "58", "XX"))
