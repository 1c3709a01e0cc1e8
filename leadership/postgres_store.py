"""The flags table on PostgreSQL, through pg8000 or any DB-API driver using ``%s``.

All of PostgreSQL's SQL lives here. One statement per acquire-or-renew, one per
release. Releases notify a channel derived from the flag name; a store listens on the
channels of the flags it watches, so a waiting instance checks at once instead of
waiting for its schedule.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import pg8000.native

from .dsn import pg8000_options, redact
from .errors import SchemaError, StoreUnavailable
from .store import (
    TABLE,
    ConnectedStore,
    DBAPIConnection,
    Observation,
    StoredRow,
    Written,
    check_columns,
    describe_error,
    first_connection,
    is_ours,
    timeout_ms,
)

__all__ = ["SCHEMES", "PostgresStore", "channel_for", "from_connection", "from_dsn"]

SCHEMES = ("postgresql", "postgres")
"""The DSN schemes this backend serves."""

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

CREATED_VERSION = "(EXTRACT(EPOCH FROM pg_catalog.now()) * 1000000)::bigint"
"""The version of a created row: the database clock in microseconds (see Store)."""

# Parameters: name, name, process, last version, last version, last written at (twice),
# interval (three times). The statement returns what it wrote (version, timestamp) and
# the row as it was before (holder, version, timestamp, seconds until it expires).
CHECK = f"""
WITH previous AS (
    SELECT holder, version, timestamp FROM {TABLE} WHERE name = %s FOR UPDATE
), written AS (
    INSERT INTO {TABLE} AS f (name, holder, version, timestamp)
    SELECT %s, %s, {CREATED_VERSION}, pg_catalog.now()
    FROM (SELECT count(*) FROM previous) AS read_first  -- read the row before writing it
    ON CONFLICT (name) DO UPDATE
        SET holder = excluded.holder, version = f.version + 1, timestamp = pg_catalog.now()
        WHERE (f.holder = excluded.holder AND (f.version = %s::bigint OR (
                   f.version > %s::bigint
                   AND f.timestamp > pg_catalog.to_timestamp(%s::float8)
                   AND f.timestamp <= pg_catalog.to_timestamp(%s::float8)
                                      + pg_catalog.make_interval(secs => %s::float8))))
           OR f.timestamp < pg_catalog.now() - pg_catalog.make_interval(secs => %s::float8)
    RETURNING f.version, EXTRACT(EPOCH FROM f.timestamp)::float8 AS stamp
)
SELECT w.version, w.stamp, p.holder, p.version, EXTRACT(EPOCH FROM p.timestamp)::float8,
       EXTRACT(EPOCH FROM p.timestamp + pg_catalog.make_interval(secs => %s::float8)
                          - pg_catalog.now())::float8
FROM (SELECT 1) AS one
LEFT JOIN written AS w ON true
LEFT JOIN previous AS p ON true
"""

# Parameters: name, process, last version (twice), last written at (twice), interval,
# channel. Releases the row if it is this instance's own (store.is_ours).
RELEASE = f"""
WITH released AS (
    UPDATE {TABLE} SET timestamp = 'epoch'
    WHERE name = %s AND holder = %s AND (version = %s::bigint OR (
        version > %s::bigint
        AND timestamp > pg_catalog.to_timestamp(%s::float8)
        AND timestamp <= pg_catalog.to_timestamp(%s::float8)
                         + pg_catalog.make_interval(secs => %s::float8)))
    RETURNING name
)
SELECT pg_catalog.pg_notify(%s, '') FROM released
"""

# Parameters: name, channel.
EXPIRE = f"""
WITH expired AS (
    UPDATE {TABLE} SET timestamp = 'epoch', version = version + 1
    WHERE name = %s
    RETURNING name
)
SELECT pg_catalog.pg_notify(%s, '') FROM expired
"""

EXISTS = f"SELECT to_regclass('{TABLE}') IS NOT NULL"
PRIVILEGES = f"""
SELECT p.privilege FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE']) AS p(privilege)
WHERE NOT has_table_privilege('{TABLE}', p.privilege)
"""
ROWS = f"SELECT name, holder, version, EXTRACT(EPOCH FROM now() - timestamp)::float8 FROM {TABLE}"
LOCK_ROW = f"SELECT holder, version FROM {TABLE} WHERE name = %s FOR SHARE"

UNDEFINED_TABLE = "42P01"
"""SQLSTATE of a statement on a table that does not exist (it was dropped)."""

SOCKET_WAKE_SPACING = 0.05
"""Seconds between two wake-ups by the connection's socket (guards against a busy loop)."""


def channel_for(name: str) -> str:
    """The LISTEN/NOTIFY channel of flag ``name``: a plain identifier whatever the name."""
    return "leadership_" + hashlib.sha256(name.encode()).hexdigest()[:32]


def from_dsn(dsn: str, timeout: float, *, create: bool = True) -> PostgresStore:
    """The store for a ``postgresql://`` DSN, connected through pg8000 (native protocol).
    ``create`` is accepted for the factory's sake: connecting creates nothing here."""
    options = pg8000_options(dsn, timeout)

    def connect() -> Any:
        return pg8000.native.Connection(**options)

    first = first_connection(connect, redact(dsn), options["timeout"])
    return PostgresStore(connect, timeout, first=first)


def from_connection(connect: Callable[[], Any], first: Any, timeout: float) -> PostgresStore:
    """The store for a connection factory: any DB-API driver with ``%s`` placeholders."""
    return PostgresStore(connect, timeout, first=first)


class PostgresStore(ConnectedStore):
    """The flags table on PostgreSQL (pg8000, psycopg or any ``%s``-style DB-API driver).

    ``connect`` opens a new connection (a pg8000 native connection or a DB-API one);
    ``timeout`` bounds each statement on the server (``statement_timeout``).
    """

    def __init__(self, connect: Callable[[], Any], timeout: float, first: Any = None) -> None:
        self._timeout_ms = timeout_ms(timeout)
        self._channels: dict[str, str] = {}  # watched flag name -> its channel
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
        for channel in self._channels.values():
            self._execute(conn, f'LISTEN "{channel}"', ())

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

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement (autocommit); return its rows; reconnect next time after a
        failure that broke the connection."""
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

    def _columns(self) -> dict[str, str]:
        return dict(self._query(COLUMNS))

    def prepare(self) -> None:
        columns = self._columns()
        if not columns:
            try:
                self._query(CREATE)
            except Exception as error:
                columns = self._columns()  # another process may have made it
                if not columns:
                    raise (SchemaError if _sqlstate(error) == "42501" else StoreUnavailable)(
                        f"table {TABLE} does not exist and could not be created: "
                        f"{describe_error(error)}"
                    ) from error
            else:
                columns = self._columns()
        check_columns(columns, EXPECTED)
        if not self._query(NAME_IS_UNIQUE)[0][0]:
            raise SchemaError(f"table {TABLE}: column name is not a primary key or unique")
        missing = [row[0] for row in self._query(PRIVILEGES)]
        if missing:
            raise SchemaError(
                f"table {TABLE}: this role lacks {', '.join(missing)}: the flag needs "
                f"GRANT SELECT, INSERT, UPDATE ON {TABLE} TO <role>"
            )

    def watch(self, name: str, interval: float) -> None:
        if name in self._channels:
            return
        channel = self._channels[name] = channel_for(name)
        if self._conn is not None:
            self._query(f'LISTEN "{channel}"')

    def unwatch(self, name: str) -> None:
        channel = self._channels.pop(name, None)
        if channel is not None and self._conn is not None:
            self._query(f'UNLISTEN "{channel}"')

    def acquire_or_renew(
        self, name: str, process: str, last: Written | None, interval: float
    ) -> Observation:
        version, at = (last.version, last.at) if last is not None else (-1, 0.0)
        parameters = (name, name, process, version, version, at, at, interval, interval, interval)
        try:
            rows = self._query(CHECK, parameters)
        except Exception as error:
            if _sqlstate(error) != UNDEFINED_TABLE:
                raise
            self._recreate(error)
            rows = self._query(CHECK, parameters)
        written, written_at, holder, seen, seen_at, expires_in = rows[0]
        if written is not None:
            continued = seen is not None and is_ours(
                holder, int(seen), float(seen_at), process, last, interval
            )
            return Observation(Written(int(written), float(written_at), continued))
        return Observation(
            None,
            holder,
            None if seen is None else int(seen),
            None if expires_in is None else float(expires_in),
        )

    def _recreate(self, error: BaseException) -> None:
        """The table was dropped under a running flag: create it again, or say why not."""
        try:
            self.prepare()
        except Exception as failure:
            raise SchemaError(
                f"table {TABLE} was dropped ({describe_error(error)}) and cannot be created "
                f"again: {describe_error(failure)}"
            ) from failure

    def release(self, name: str, process: str, last: Written, interval: float) -> bool:
        version, at = last.version, last.at
        parameters = (name, process, version, version, at, at, interval, channel_for(name))
        return bool(self._query(RELEASE, parameters))

    def read_rows(self, name: str | None = None) -> list[StoredRow]:
        if not self._query(EXISTS)[0][0]:
            return []  # no table yet: no flags (and reading creates nothing)
        params: tuple[str, ...] = () if name is None else (name,)
        sql = ROWS if name is None else f"{ROWS} WHERE name = %s"
        rows = self._query(sql + " ORDER BY name", params)
        return [StoredRow(str(n), str(h), int(v), float(a)) for n, h, v, a in rows]

    def expire(self, name: str) -> bool:
        if not self._query(EXISTS)[0][0]:
            return False
        return bool(self._query(EXPIRE, (name, channel_for(name))))

    def lock_row(self, conn: DBAPIConnection, name: str) -> tuple[str, int] | None:
        cursor = conn.cursor()
        try:
            cursor.execute(LOCK_ROW, (name,))
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else (str(row[0]), int(row[1]))

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
