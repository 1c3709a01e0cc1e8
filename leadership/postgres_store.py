"""The flags table on PostgreSQL, through pg8000 or any DB-API driver using ``%s``.

All of PostgreSQL's SQL lives here. One statement per acquire-or-renew, one per
release. Releases notify a channel derived from the flag name; a store listens on the
channels of the flags it watches, so a waiting instance checks at once instead of
waiting for its schedule.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .deadline import OperationTimeout, Watchdog, call_within, cut_connection
from .deferred import IMPORTING
from .dsn import POOLERS, Targets, endpoint_of, pg8000_targets, pooler_of, redact
from .errors import LeadershipError, SchemaError, StoreUnavailable
from .store import (
    TABLE,
    Attempt,
    ConnectedStore,
    DBAPIConnection,
    Mine,
    Observation,
    OutcomeUnknown,
    QualifiedName,
    StoredMember,
    StoredRow,
    Tick,
    Written,
    check_columns,
    close_quietly,
    continues,
    describe_error,
    first_connection,
    is_ours,
    members_table,
    timeout_ms,
)

__all__ = ["SCHEMES", "PostgresStore", "channel_for", "from_connection", "from_dsn"]

SCHEMES = ("postgresql", "postgres")
"""The DSN schemes this backend serves."""

EXPECTED = {
    "name": ("text", "character varying"),
    "holder": ("text", "character varying"),
    "version": ("bigint",),
    "timestamp": ("timestamp with time zone",),
}
LEASE_COLUMNS = {
    "lease_seconds": ("double precision",),
    "lease_version": ("bigint",),
    "lease_owner": ("text",),
}
"""Added when missing: the holder's lease, trusted while ``lease_version = version`` (a
write that does not know these columns, the Go package's, leaves them behind)."""

# Statements are templates: {table} is the quoted, schema-qualified table; %(name)s
# placeholders are bound by name (see Statement).

CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    holder text NOT NULL,
    version bigint NOT NULL,
    timestamp timestamp with time zone NOT NULL,
    lease_seconds double precision,
    lease_version bigint,
    lease_owner text
)
"""
ADD_LEASE = """
ALTER TABLE {table}
    ADD COLUMN IF NOT EXISTS lease_seconds double precision,
    ADD COLUMN IF NOT EXISTS lease_version bigint,
    ADD COLUMN IF NOT EXISTS lease_owner text
"""
TABLES_NAMED = """
SELECT n.nspname FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relname = %(table)s AND c.relkind IN ('r', 'p')
ORDER BY n.nspname
"""
SCHEMA_OF = """
SELECT n.nspname FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%(table)s)
"""
CURRENT_SCHEMA = "SELECT pg_catalog.current_schema()"
COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = pg_catalog.to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
"""
NAME_IS_UNIQUE = """
SELECT count(*) FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = pg_catalog.to_regclass(%(table)s) AND i.indisunique AND i.indnatts = 1
  AND a.attname = 'name'
"""
PRIVILEGES = """
SELECT p.privilege FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE']) AS p(privilege)
WHERE NOT pg_catalog.has_table_privilege(%(table)s, p.privilege)
"""
MEMBER_PRIVILEGES = """
SELECT p.privilege FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p(privilege)
WHERE NOT pg_catalog.has_table_privilege(%(table)s, p.privilege)
"""

CREATED_VERSION = "(EXTRACT(EPOCH FROM pg_catalog.now()) * 1000000)::bigint"
"""The version of a created row: the database clock in microseconds (see Store)."""

OURS = """({row}.version = {last_version} OR (
        {row}.version > {last_version}
        AND {row}.version <= {last_version} + {pending}
        AND {owned}
        AND {row}.timestamp > pg_catalog.to_timestamp({last_at})
        AND {row}.timestamp <= pg_catalog.to_timestamp({last_at})
                              + pg_catalog.make_interval(secs => %(interval)s::float8)))"""
"""The row carries a version this instance wrote (store.is_ours, with the holder test);
what it wrote comes from parameters (one flag) or from a column of the batch (a group)."""
MINE_PARAMETERS = {
    "last_version": "%(last_version)s::bigint",
    "pending": "%(pending)s::bigint",
    "last_at": "%(last_at)s::float8",
}
MINE_COLUMNS = {"last_version": "w.last_version", "pending": "w.pending", "last_at": "w.last_at"}

LEASE_OF = {
    True: """COALESCE(CASE WHEN {row}.lease_version = {row}.version
                       THEN {row}.lease_seconds END, %(interval)s::float8)""",
    False: "%(interval)s::float8",
}
"""The lease a row's holder took: recorded in the row while trustworthy, else our own."""

CHECK = """
WITH previous AS (
    SELECT holder, version, timestamp, {previous_lease} AS lease, {previous_owner} AS owner
    FROM {table} WHERE name = %(name)s FOR UPDATE
), written AS (
    INSERT INTO {table} AS f (name, holder, version, timestamp{lease_columns})
    SELECT %(name)s, %(process)s, {created}, pg_catalog.now(){created_lease}
    FROM (SELECT count(*) FROM previous) AS read_first  -- read the row before writing it
    ON CONFLICT (name) DO UPDATE
        SET holder = excluded.holder, version = f.version + 1,
            timestamp = pg_catalog.now(){renewed_lease}
        WHERE (f.holder = excluded.holder AND {ours})
           OR f.timestamp < pg_catalog.now() - pg_catalog.make_interval(secs => {current_lease})
    RETURNING f.version, EXTRACT(EPOCH FROM f.timestamp)::float8 AS stamp
)
SELECT w.version, w.stamp, p.holder, p.version, EXTRACT(EPOCH FROM p.timestamp)::float8,
       EXTRACT(EPOCH FROM p.timestamp + pg_catalog.make_interval(secs => p.lease)
                          - pg_catalog.now())::float8,
       p.owner
FROM (SELECT 1) AS one
LEFT JOIN written AS w ON true
LEFT JOIN previous AS p ON true
"""
"""Acquire or renew in one statement; returns what it wrote (version, timestamp) and the
row as it was before (holder, version, timestamp, seconds until it expires)."""

BATCH = """pg_catalog.jsonb_to_recordset(%(batch)s::jsonb)
        AS w(name text, last_version bigint, pending bigint, last_at float8, write boolean,
             channel text)"""
"""A group's flags, one JSON array parameter (any driver, and a pooler's literals, pass it)."""

CHECK_MANY = """
WITH wanted AS (
    SELECT * FROM {batch}
), previous AS (
    SELECT t.name, t.holder, t.version, t.timestamp, {previous_lease} AS lease,
           {previous_owner} AS owner
    FROM {table} AS t JOIN wanted AS w ON t.name = w.name AND w.write
    ORDER BY t.name FOR UPDATE OF t SKIP LOCKED  -- a row locked elsewhere: busy, see below
), present AS (
    SELECT t.name FROM {table} AS t JOIN wanted AS w ON t.name = w.name AND w.write
), renewed AS (
    UPDATE {table} AS f
    SET holder = %(process)s, version = f.version + 1, timestamp = pg_catalog.now(){renewed_lease}
    FROM wanted AS w, previous AS p
    WHERE f.name = w.name AND p.name = w.name AND w.write  -- only the rows locked above
      AND (SELECT count(*) FROM previous) >= 0  -- every row locked first (evaluated once)
      AND ((f.holder = %(process)s AND {ours})
           OR f.timestamp < pg_catalog.now() - pg_catalog.make_interval(secs => {current_lease}))
    RETURNING f.name, f.version, EXTRACT(EPOCH FROM f.timestamp)::float8 AS stamp
), created AS (
    INSERT INTO {table} AS f (name, holder, version, timestamp{lease_columns})
    SELECT w.name, %(process)s, {created}, pg_catalog.now(){created_lease}
    FROM wanted AS w
    WHERE w.write AND NOT EXISTS (SELECT 1 FROM present AS p WHERE p.name = w.name)
      AND (SELECT count(*) FROM previous) >= 0
    ORDER BY w.name
    ON CONFLICT (name) DO NOTHING
    RETURNING f.name, f.version, EXTRACT(EPOCH FROM f.timestamp)::float8 AS stamp
), seen AS (
    SELECT name, holder, version, timestamp, lease, owner FROM previous
    UNION ALL
    SELECT t.name, t.holder, t.version, t.timestamp, {read_lease}, NULL::text
    FROM {table} AS t JOIN wanted AS w ON t.name = w.name AND NOT w.write
){member_ctes}
SELECT w.name, x.version, x.stamp, p.holder, p.version, EXTRACT(EPOCH FROM p.timestamp)::float8,
       EXTRACT(EPOCH FROM p.timestamp + pg_catalog.make_interval(secs => p.lease)
                          - pg_catalog.now())::float8,
       p.owner,
       w.write AND x.name IS NULL AND p.name IS NULL AND r.name IS NOT NULL AS busy
FROM wanted AS w
LEFT JOIN (SELECT * FROM renewed UNION ALL SELECT * FROM created) AS x ON x.name = w.name
LEFT JOIN seen AS p ON p.name = w.name
LEFT JOIN present AS r ON r.name = w.name{member_row}
"""
"""Acquire, renew or read many flags in one statement (see Store.acquire_or_renew_many):
the rows to write are locked first, then renewed or taken (UPDATE) or created (INSERT);
one row per flag as CHECK returns it, plus, with a pool, one row whose name is NULL
carrying the pool's other live members (a JSON array).

A row locked by another transaction (an application's ``guard()``, another contender's
statement) is skipped, not waited for: that flag's attempt is ``busy`` (nothing was
written) and retried soon, while the group's other flags are renewed; waiting would
hold every flag of the group behind one lock, up to the statement timeout."""

MEMBER_CTES = """, beat AS (
    INSERT INTO {members} AS m (pool, member, timestamp, lease_seconds)
    VALUES (%(pool)s, %(process)s, pg_catalog.now(), %(interval)s::float8)
    ON CONFLICT (pool, member) DO UPDATE
        SET timestamp = excluded.timestamp, lease_seconds = excluded.lease_seconds
    RETURNING m.member
), live AS (
    SELECT member FROM {members}
    WHERE pool = %(pool)s AND member <> %(process)s
      AND timestamp + pg_catalog.make_interval(secs => lease_seconds) > pg_catalog.now()
), gone AS (  -- members silent for GONE_AFTER of their leases: forgotten (never waited for)
    DELETE FROM {members}
    WHERE (pool, member) IN (
        SELECT pool, member FROM {members}
        WHERE pool = %(pool)s AND member <> %(process)s
          AND timestamp + pg_catalog.make_interval(secs => lease_seconds * {gone_after})
              < pg_catalog.now()
        FOR UPDATE SKIP LOCKED)
)"""
GONE_AFTER = 10
"""Leases after which a silent member's row is deleted by the others (``leadership status``
shows it as gone until then)."""
MEMBER_ROW = """
UNION ALL
SELECT NULL, NULL, NULL, (SELECT pg_catalog.json_agg(member)::text FROM live),
       NULL, NULL, NULL, NULL, NULL"""

RELEASE_MANY = """
WITH wanted AS (
    SELECT * FROM {batch}
), released AS (
    UPDATE {table} AS f SET timestamp = 'epoch'
    FROM wanted AS w
    WHERE f.name = w.name AND f.holder = %(process)s AND {ours}
    RETURNING f.name, w.channel
){leave}
SELECT r.name, pg_catalog.pg_notify(r.channel, '') FROM released AS r, {async_commit}
"""
LEAVE = """, leave AS (
    DELETE FROM {members} WHERE pool = %(pool)s AND member = %(process)s
)"""
CREATE_MEMBERS = """
CREATE TABLE IF NOT EXISTS {members} (
    pool text NOT NULL,
    member text NOT NULL,
    timestamp timestamp with time zone NOT NULL,
    lease_seconds double precision NOT NULL,
    PRIMARY KEY (pool, member)
)
"""
MEMBERS = """
SELECT pool, member, EXTRACT(EPOCH FROM pg_catalog.now() - timestamp)::float8, lease_seconds
FROM {members}
"""

RELEASE = """
WITH released AS (
    UPDATE {table} AS f SET timestamp = 'epoch'
    WHERE f.name = %(name)s AND f.holder = %(process)s AND {ours}
    RETURNING f.name
)
SELECT pg_catalog.pg_notify(%(channel)s, '') FROM released, {async_commit}
"""
ASYNC_COMMIT = "(SELECT pg_catalog.set_config('synchronous_commit', 'off', true)) AS quick"
"""A release commits without waiting for its WAL flush (some 0.4 ms after an idle spell,
on the handover's path): if the server crashes before the flush, the release is undone
and the row is ours again until it expires; the lease was lowered before the release,
and a process that took the row over meanwhile flushed the release with its own commit
(WAL is flushed in order). Acquisitions and renewals keep synchronous commits."""
EXPIRE = """
WITH expired AS (
    UPDATE {table} SET timestamp = 'epoch', version = version + 1
    WHERE name = %(name)s
    RETURNING name
)
SELECT pg_catalog.pg_notify(%(channel)s, '') FROM expired
"""
ROWS = """
SELECT name, holder, version,
       EXTRACT(EPOCH FROM pg_catalog.now() - timestamp)::float8, {lease}
FROM {table}
"""
LOCK_ROW = "SELECT holder, version FROM {table} WHERE name = %s FOR SHARE"

SERVER_TIMEOUT_FACTOR = 1.5
"""The server's ``statement_timeout`` as a multiple of the flag's timeout (see below)."""

INSUFFICIENT_PRIVILEGE = "42501"
POOLED_STATEMENT_ERRORS = ("26000", "42P05")
"""SQLSTATEs of a prepared statement that does not exist, or already exists, on the
server connection: signs of a transaction pooler between the flag and the server."""
LISTEN_COMMANDS = re.compile(r"\s*(UN)?LISTEN\b", re.IGNORECASE)
POOLER_LOG = logging.getLogger("leadership")
UNDEFINED_TABLE = "42P01"
"""SQLSTATE of a statement on a table that does not exist (it was dropped)."""

LISTENS_PER_QUERY = 500
"""LISTEN commands sent in one simple query on pg8000 (a group's flags, at each connection)."""

SOCKET_WAKE_SPACING = 0.05
"""Seconds between two wake-ups by the connection's socket (guards against a busy loop)."""


def channel_for(name: str) -> str:
    """The LISTEN/NOTIFY channel of flag ``name``: a plain identifier whatever the name."""
    return "leadership_" + hashlib.sha256(name.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Statement:
    """SQL written with ``%(name)s`` placeholders, sent with positional ``%s`` ones (what
    every driver accepts) and bound from a mapping by :meth:`bind`."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, template: str) -> Statement:
        names = tuple(NAMED.findall(template))
        return cls(NAMED.sub("%s", template), names)

    def bind(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[name] for name in self.names)


NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Statements:
    """The statements on one resolved table; ``leased`` when it has the lease columns."""

    table: str
    leased: bool
    check: Statement
    release: Statement
    expire: Statement
    rows: Statement
    lock_row: str
    check_many: dict[bool, Statement]  # by whether the tick heartbeats a pool
    release_many: dict[bool, Statement]  # by whether the group leaves a pool
    create_members: str
    members: Statement

    @classmethod
    def on(cls, table: QualifiedName, leased: bool) -> Statements:
        quoted = table.quoted()

        def of(template: str, **parts: str) -> Statement:
            return Statement.of(template.format(table=quoted, **parts))

        lease_of = LEASE_OF[leased]
        owned = "f.lease_owner = %(owner)s" if leased else "true"
        ours = OURS.format(row="f", owned=owned, **MINE_PARAMETERS)
        ours_in_batch = OURS.format(row="f", owned=owned, **MINE_COLUMNS)
        members = members_table(table).quoted()

        def check_many(pool: bool) -> Statement:
            return of(
                CHECK_MANY,
                batch=BATCH,
                previous_lease=lease_of.format(row="t"),
                previous_owner="t.lease_owner" if leased else "NULL::text",
                renewed_lease=(
                    ", lease_seconds = %(interval)s::float8, lease_version = f.version + 1, "
                    "lease_owner = %(owner)s"
                    if leased
                    else ""
                ),
                ours=ours_in_batch,
                current_lease=lease_of.format(row="f"),
                lease_columns=", lease_seconds, lease_version, lease_owner" if leased else "",
                created=CREATED_VERSION,
                created_lease=(
                    f", %(interval)s::float8, {CREATED_VERSION}, %(owner)s" if leased else ""
                ),
                read_lease=lease_of.format(row="t"),
                member_ctes=(
                    MEMBER_CTES.format(members=members, gone_after=GONE_AFTER) if pool else ""
                ),
                member_row=MEMBER_ROW if pool else "",
            )

        def release_many(pool: bool) -> Statement:
            leave = LEAVE.format(members=members) if pool else ""
            return of(
                RELEASE_MANY,
                batch=BATCH,
                ours=ours_in_batch,
                leave=leave,
                async_commit=ASYNC_COMMIT,
            )

        return cls(
            table=str(table),
            leased=leased,
            check=of(
                CHECK,
                previous_lease=lease_of.format(row=quoted),
                previous_owner="lease_owner" if leased else "NULL::text",
                lease_columns=", lease_seconds, lease_version, lease_owner" if leased else "",
                created=CREATED_VERSION,
                created_lease=(
                    f", %(interval)s::float8, {CREATED_VERSION}, %(owner)s" if leased else ""
                ),
                renewed_lease=(
                    ", lease_seconds = excluded.lease_seconds, lease_version = f.version + 1, "
                    "lease_owner = excluded.lease_owner"
                    if leased
                    else ""
                ),
                ours=ours,
                current_lease=lease_of.format(row="f"),
            ),
            release=of(RELEASE, ours=ours, async_commit=ASYNC_COMMIT),
            expire=of(EXPIRE),
            rows=of(
                ROWS,
                lease=(
                    "CASE WHEN lease_version = version THEN lease_seconds END"
                    if leased
                    else "NULL::float8"
                ),
            ),
            lock_row=LOCK_ROW.format(table=quoted),
            check_many={pool: check_many(pool) for pool in (False, True)},
            release_many={pool: release_many(pool) for pool in (False, True)},
            create_members=CREATE_MEMBERS.format(members=members),
            members=Statement.of(MEMBERS.format(members=members)),
        )


def from_dsn(
    dsn: str, timeout: float, *, create: bool = True, table: str | None = None
) -> PostgresStore:
    """The store for a ``postgresql://`` DSN, connected through pg8000 (native protocol).
    ``create`` is accepted for the factory's sake: connecting creates nothing here.

    With several hosts (or ``target_session_attrs``), each connection, the first and every
    reconnection, tries the hosts in order, each within the connect timeout, and keeps the
    first that connects and accepts what ``target_session_attrs`` asks; the error names
    every host tried with its reason."""
    targets = pg8000_targets(dsn, timeout)
    pooler = pooler_of(dsn)
    options = targets.options[0]
    pg8000 = _pg8000()

    def connect() -> Any:
        return pg8000.Connection(**options)

    connect_timeout = targets.connect_timeout
    if len(targets.options) > 1 or targets.session_attrs != "any":
        connect = _first_usable_host(targets)
        connect_timeout = targets.connect_timeout * len(targets.options)

    def connect_within() -> Any:
        return call_within(connect_timeout, connect, close_quietly)

    first = first_connection(connect_within, redact(dsn), connect_timeout)
    return PostgresStore(
        connect,
        timeout,
        first=first,
        table=table,
        connect_timeout=connect_timeout,
        pooler=pooler,
    )


def _pg8000() -> Any:
    """pg8000's native interface, imported by the first :func:`from_dsn` (not within a
    connect timeout): it costs more to import (scramp, asn1crypto, ssl) than the whole
    package, and users of SQLite or of their own driver never need it."""
    with IMPORTING:
        import pg8000.native

    return pg8000.native


def _pg8000_native(conn: Any) -> Any:
    """The pg8000.native module if ``conn`` is one of its connections, else None (without
    importing pg8000 for another driver's connection: before the import, none can be)."""
    native = sys.modules.get("pg8000.native")
    return native if native is not None and isinstance(conn, native.Connection) else None


class NoUsableHost(ConnectionError):
    """None of a DSN's hosts connected and accepted what ``target_session_attrs`` asks."""


WRITABLE_CHECKS = {
    "read-write": ("SHOW transaction_read_only", "off", "read-only sessions"),
    "primary": ("SELECT pg_catalog.pg_is_in_recovery()", False, "a standby (in recovery)"),
}
"""``target_session_attrs``: the query that tells, the answer it needs, and why a host
that answers otherwise is skipped."""


def _first_usable_host(targets: Targets) -> Callable[[], Any]:
    """A connect function that walks ``targets`` in order (see :func:`from_dsn`)."""
    check = WRITABLE_CHECKS.get(targets.session_attrs)
    pg8000 = _pg8000()

    def open_checked(options: dict[str, Any]) -> Any:
        conn = pg8000.Connection(**options)
        if check is not None:
            try:
                answer = conn.run(check[0])[0][0]
            except BaseException:
                close_quietly(conn)
                raise
            if answer != check[1]:
                close_quietly(conn)
                raise NoUsableHost(check[2])
        return conn

    def connect() -> Any:
        failures = []
        for options in targets.options:
            try:
                attempt = functools.partial(open_checked, options)
                return call_within(targets.connect_timeout, attempt, close_quietly)
            except Exception as error:
                failures.append(f"{endpoint_of(options)}: {describe_error(error)}")
        wanted = "" if check is None else f" ({targets.session_attrs})"
        raise NoUsableHost(f"no usable host{wanted}, tried " + "; ".join(failures))

    return connect


def from_connection(
    connect: Callable[[], Any], first: Any, timeout: float, table: str | None = None
) -> PostgresStore:
    """The store for a connection factory: any DB-API driver with ``%s`` placeholders."""
    return PostgresStore(connect, timeout, first=first, table=table)


class PostgresStore(ConnectedStore):
    """The flags table on PostgreSQL (pg8000, psycopg or any ``%s``-style DB-API driver).

    ``connect`` opens a new connection (a pg8000 native connection or a DB-API one);
    ``timeout`` bounds each statement (the server's ``statement_timeout`` is 1.5 times
    it). ``table`` names the table: ``schema.name``, or ``name`` for the one table of that
    name in the database whatever its schema (default ``leadership_flags``); it is an
    error when there are several.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        timeout: float,
        first: Any = None,
        table: str | None = None,
        connect_timeout: float | None = None,
        pooler: str = "none",
    ) -> None:
        if pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, got {pooler!r}")
        # Transaction pooling: every statement in a transaction of its own, nothing
        # left in the session (see _execute). Set when the DSN says so, or on the
        # first sign of such a pooler (POOLED_STATEMENT_ERRORS).
        self._per_transaction = pooler == "transaction"
        self._timeout = timeout
        self._connect_timeout = max(timeout, connect_timeout or timeout)
        # The server's bound comes later than the client's: a statement the server
        # cancels while its commit waits for a synchronous standby still reports
        # success (with a warning), and the client must have given up on it by then.
        self._timeout_ms = timeout_ms(timeout * SERVER_TIMEOUT_FACTOR)
        self._watchdog = Watchdog()
        self._budget: float | None = None  # a deadline shared by several statements
        self._wanted = QualifiedName.parse(table) if table is not None else None
        self._sql: Statements | None = None
        self.instance = uuid.uuid4().hex
        """This store's identity, recorded in the rows it writes (``lease_owner``)."""
        self.notes: list[str] = []
        self._channels: dict[str, str] = {}  # watched flag name -> its channel
        self._unlistened: list[str] = []  # channels watched, not yet listened on
        self._last_socket_wake = 0.0
        self._notified: set[str] = set()  # channels notified since the last wait
        self._prepared: dict[str, Any] = {}
        super().__init__(connect)
        if first is not None:
            self._conn = self._bounded_setup(first)

    def _connection(self) -> Any:
        """The open connection, or a new one: connected and set up within the connect
        timeout, whatever the peer does."""
        if self._conn is None:
            self._conn = self._bounded_setup(None)
        return self._conn

    def _bounded_setup(self, conn: Any) -> Any:
        def open_and_set_up() -> Any:
            opened = self._connect() if conn is None else conn
            try:
                self._setup(opened)
            except BaseException:
                close_quietly(opened)
                raise
            return opened

        try:
            return call_within(self._connect_timeout, open_and_set_up, close_quietly)
        except OperationTimeout:
            if conn is not None:
                cut_connection(conn)
            raise

    def close(self) -> None:
        super().close()
        self._watchdog.stop()

    @property
    def table(self) -> str:
        """The schema-qualified table (as given until it is resolved)."""
        if self._sql is not None:
            return self._sql.table
        return str(self._wanted) if self._wanted is not None else TABLE

    def _setup(self, conn: Any) -> None:
        self._prepared = {}
        if hasattr(conn, "autocommit"):
            conn.autocommit = True
        add_notify_handler = getattr(conn, "add_notify_handler", None)  # psycopg 3
        if add_notify_handler is not None:
            add_notify_handler(self._notified_by)
        if self._per_transaction:
            return  # nothing in the session: each statement bounds itself (_execute)
        _no_delay(conn)
        self._execute(
            conn, f"SELECT set_config('statement_timeout', '{self._timeout_ms:d}', false)", ()
        )
        self._listen(conn, list(self._channels.values()))
        self._unlistened.clear()

    def _listen(self, conn: Any, channels: list[str]) -> None:
        """LISTEN on ``channels``: on pg8000 (native), many per round trip (one simple
        query); one statement each through other drivers."""
        if _pg8000_native(conn) is None:
            for channel in channels:
                self._execute(conn, f'LISTEN "{channel}"', ())
            return
        for start in range(0, len(channels), LISTENS_PER_QUERY):
            chunk = channels[start : start + LISTENS_PER_QUERY]
            self._execute(conn, "; ".join(f'LISTEN "{channel}"' for channel in chunk), ())

    def _execute(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run ``sql`` (``%s`` placeholders) on ``conn``; return its rows.

        On pg8000 (native), a statement with parameters is prepared once per connection,
        so each later run is one round trip. Behind a transaction pooler (``pooler =
        transaction``, or after a prepared statement was lost or found taken: the pooler
        moved this client to another server connection), each statement is one simple
        query, one round trip, one transaction: ``SET LOCAL statement_timeout``, then the
        statement with its parameters as literals; ``LISTEN`` and ``UNLISTEN`` are skipped
        (waiting falls back to its schedule)."""
        native = _pg8000_native(conn)
        if native is not None and self._per_transaction:
            if LISTEN_COMMANDS.match(sql):
                return []  # would stay on a server connection that other clients get
            bounded = f"SET LOCAL statement_timeout = {self._timeout_ms:d}; {_inline(sql, params)}"
            return list(conn.run(bounded) or [])
        if native is not None:
            if not params:
                return list(conn.run(sql) or [])
            try:
                statement = self._prepared.get(sql)
                if statement is None:
                    statement = self._prepared[sql] = conn.prepare(_named_placeholders(sql))
                values = {f"p{i}": value for i, value in enumerate(params)}
                return list(statement.run(**values) or [])
            except native.DatabaseError as error:
                if _sqlstate(error) not in POOLED_STATEMENT_ERRORS:
                    raise
                self._per_transaction = True  # nothing ran: run it again, the pooled way
                self._prepared = {}
                POOLER_LOG.warning(
                    "table %s: %s: this connection goes through a pooler in transaction "
                    "mode (PgBouncer's pool_mode = transaction); add pooler=transaction to "
                    "the DSN. The flag now keeps nothing in the session (waiting processes "
                    "fall back to their schedule), but the statement_timeout it set at "
                    "connection may have been left on the pooler's server connections",
                    self.table,
                    describe_error(error),
                )
            return self._execute(conn, sql, params)
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def _query(self, sql: str | Statement, params: Any = ()) -> list[Any]:
        """Run one statement (autocommit); return its rows; reconnect next time after a
        failure that broke the connection. A Statement takes its parameters by name."""
        statement = sql if isinstance(sql, Statement) else Statement.of(sql)
        values = statement.bind(params) if isinstance(params, Mapping) else tuple(params)
        conn = self._connection()  # bounded on its own: the statement's bound starts now
        deadline = self._budget or time.monotonic() + self._timeout
        try:
            with self._watchdog.bound(deadline, lambda: cut_connection(conn)):
                rows = self._execute(conn, statement.sql, values)
        except Exception as error:
            if self._watchdog.fired:
                self._reset()
                raise OutcomeUnknown(
                    f"no complete reply within {self._timeout:g} s: the connection was cut"
                ) from error
            if _connection_survives(error):
                raise  # the server answered with an error: nothing was written
            self._reset()
            if _sqlstate(error) is None:  # sent, then the connection failed: unknown
                raise OutcomeUnknown(describe_error(error)) from error
            raise
        self._take_notifications(conn)
        return rows

    def _take_notifications(self, conn: Any) -> None:
        """Note the notifications pg8000 read with a statement's reply (psycopg hands them
        to :meth:`_notified_by`): one may be of a release committed after the statement
        read the row, so the next :meth:`wait` returns at once, unless the flag was taken
        by that statement (see :meth:`_taken`). A notification is real activity: the
        socket wake before it was no busy loop."""
        notifications = getattr(conn, "notifications", None)
        while notifications:  # pg8000 keeps them (up to 100); waking is their only use
            self._notified_by(notifications.popleft())

    def _notified_by(self, notify: Any) -> None:
        """A notification arrived on this store's connection: a pg8000 (pid, channel,
        payload) tuple, or psycopg's Notify (its notify handler)."""
        channel = getattr(notify, "channel", None)
        if channel is None and isinstance(notify, tuple) and len(notify) > 1:
            channel = notify[1]
        self._notified.add(str(channel))
        self._last_socket_wake = 0.0

    def _taken(self, name: str) -> None:
        """Flag ``name`` was just written for this instance: a notification of its release
        read with that statement's reply needs no second look."""
        self._notified.discard(channel_for(name))

    # --- the table: resolved once, created when missing ---------------------------------

    def _resolve(self, create: bool) -> Statements | None:
        """The statements on this store's table; None when it does not exist and
        ``create`` is False."""
        if self._sql is not None:
            return self._sql
        table = self._locate(create)
        if table is None:
            return None
        try:
            columns = dict(self._query(COLUMNS, {"table": table.quoted()}))
        except Exception as error:
            if _sqlstate(error) != INSUFFICIENT_PRIVILEGE:
                raise
            raise SchemaError(
                f"table {table} cannot be used by this role ({describe_error(error)}): "
                f"GRANT USAGE ON SCHEMA {table.schema} and SELECT, INSERT, UPDATE ON {table}, "
                "or name another table with .table() (command line: --table)"
            ) from None
        check_columns(str(table), columns, EXPECTED)
        leased = all(columns.get(column) in types for column, types in LEASE_COLUMNS.items())
        if not leased and create:
            leased = self._add_lease_columns(table)
        self._sql = Statements.on(table, leased)
        return self._sql

    def _locate(self, create: bool) -> QualifiedName | None:
        """The table to use: ``schema.name`` as given; else the one table of that name in
        the database, whatever the schema (a name alone is not resolved through the
        role's search path: two roles would find two tables)."""
        wanted = self._wanted or QualifiedName(None, TABLE)
        if wanted.schema is None:
            found = self._tables_named(wanted.name)
            if not found and create:
                self._create(wanted)
                found = self._tables_named(wanted.name)  # two processes may have raced
            if not found and create:
                raise SchemaError(f"{wanted.name} exists in this database but is not a table")
            return found[0] if found else None
        exists = self._query(SCHEMA_OF, {"table": wanted.quoted()})
        if not exists and create:
            self._create(wanted)
            exists = self._query(SCHEMA_OF, {"table": wanted.quoted()})
        return wanted if exists else None

    def _tables_named(self, name: str) -> list[QualifiedName]:
        """Every table called ``name`` in the database, whatever the schema; raise when
        there are several (processes could silently use different ones)."""
        rows = self._query(TABLES_NAMED, {"table": name})
        found = [QualifiedName(str(row[0]), name) for row in rows]
        if len(found) > 1:
            listed = ", ".join(str(table) for table in found)
            raise SchemaError(
                f"several tables named {name} in this database ({listed}): processes could "
                f"use different ones; name one with .table('{found[0]}') (command line: "
                "--table or LEADERSHIP_TABLE)"
            )
        return found

    def _create(self, table: QualifiedName) -> None:
        try:
            self._query(CREATE.format(table=table.quoted()))
        except Exception as error:
            if self._query(SCHEMA_OF, {"table": table.quoted()}):
                return  # another process made it meanwhile
            raise (SchemaError if _sqlstate(error) == INSUFFICIENT_PRIVILEGE else StoreUnavailable)(
                f"table {table} does not exist and could not be created: {describe_error(error)}"
            ) from error

    def _add_lease_columns(self, table: QualifiedName) -> bool:
        try:
            self._query(ADD_LEASE.format(table=table.quoted()))
        except Exception as error:
            if not _connection_survives(error):
                raise
            self.notes.append(
                f"table {table}: cannot add the lease columns ({describe_error(error)}); "
                "waiting processes judge expiry by their own interval, so every process "
                "of a flag must use the same one"
            )
            return False
        return True

    def prepare(self) -> None:
        """Resolve, create and check the table, all within one timeout."""
        self._budget = time.monotonic() + self._timeout
        try:
            self._prepare()
        finally:
            self._budget = None

    def _prepare(self) -> None:
        statements = self._resolve(create=True)
        assert statements is not None
        self._prepare_release()
        table = statements.table
        quoted = QualifiedName.parse(table).quoted()
        if not self._query(NAME_IS_UNIQUE, {"table": quoted})[0][0]:
            raise SchemaError(f"table {table}: column name is not a primary key or unique")
        missing = [row[0] for row in self._query(PRIVILEGES, {"table": quoted})]
        if missing:
            raise SchemaError(
                f"table {table}: this role lacks {', '.join(missing)}: the flag needs "
                f"GRANT SELECT, INSERT, UPDATE ON {table} TO <role>"
            )

    # --- flags ---------------------------------------------------------------------------

    def watch(self, name: str, interval: float) -> None:
        """LISTEN for ``name``'s releases now when connected (else with the connection,
        many per round trip, see :meth:`_listen`); a LISTEN that failed is sent again
        before the next statement or wait."""
        if name not in self._channels:
            self._channels[name] = channel = channel_for(name)
            self._unlistened.append(channel)
            self._listen_now()

    def _listen_now(self) -> None:
        """LISTEN on the channels watched since the last statement, before the next one
        reads a row (a release committed after that read then still wakes the wait)."""
        if self._unlistened and self._conn is not None and not self._per_transaction:
            channels = list(self._unlistened)
            conn = self._connection()
            deadline = time.monotonic() + self._timeout
            try:
                with self._watchdog.bound(deadline, lambda: cut_connection(conn)):
                    self._listen(conn, channels)
            except Exception as error:
                if self._watchdog.fired or not _connection_survives(error):
                    self._reset()  # the next connection listens on every channel
                raise
            del self._unlistened[: len(channels)]

    def unwatch(self, name: str) -> None:
        channel = self._channels.pop(name, None)
        if channel in self._unlistened:
            self._unlistened.remove(channel)
            return
        if channel is not None and self._conn is not None:
            self._query(f'UNLISTEN "{channel}"')

    def acquire_or_renew(
        self, name: str, process: str, mine: Mine | None, interval: float
    ) -> Observation:
        self._listen_now()
        values = {
            "name": name,
            "process": process,
            "last_version": mine.last.version if mine is not None else -1,
            "last_at": mine.last.at if mine is not None else 0.0,
            "pending": mine.pending if mine is not None else 0,
            "owner": self.instance,
            "interval": interval,
        }
        rows = self._write(lambda statements: statements.check, values)
        seen = self._observation(rows[0], process, mine, interval)
        if seen.acquired:
            self._taken(name)
        return seen

    def _write(self, choose: Callable[[Statements], Statement], values: Mapping[str, Any]) -> Any:
        """Run the statement ``choose`` picks; create the table again if it was dropped."""
        try:
            return self._query(choose(self._statements()), values)
        except Exception as error:
            if _sqlstate(error) != UNDEFINED_TABLE:
                raise
            self._recreate(error)
            return self._query(choose(self._statements()), values)

    def _observation(
        self, row: Any, process: str, mine: Mine | None, interval: float
    ) -> Observation:
        """An acquire-or-renew's reply row (CHECK's columns) as an Observation."""
        written, written_at, holder, seen, seen_at, expires_in, owner = row
        if written is not None:
            owned = owner == self.instance or not self._statements().leased
            continued = (
                seen is not None
                and is_ours(holder, int(seen), float(seen_at), process, mine, interval, owned)
                and continues(int(seen), mine)
            )
            return Observation(Written(int(written), float(written_at), continued))
        return Observation(
            None,
            holder,
            None if seen is None else int(seen),
            None if expires_in is None else float(expires_in),
        )

    def acquire_or_renew_many(
        self,
        process: str,
        attempts: Sequence[Attempt],
        interval: float,
        pool: str | None = None,
    ) -> Tick:
        self._listen_now()
        values = {
            "batch": _batch((attempt.name, attempt.mine, attempt.write) for attempt in attempts),
            "process": process,
            "owner": self.instance,
            "interval": interval,
            "pool": pool,
        }
        rows = self._write(lambda statements: statements.check_many[pool is not None], values)
        mine = {attempt.name: attempt.mine for attempt in attempts}
        observations: dict[str, Observation] = {}
        members: tuple[str, ...] | None = None
        busy: set[str] = set()
        for row in rows:
            name = row[0]
            if name is None:  # the pool's row: its other live members
                others = json.loads(row[3]) if row[3] else []
                members = tuple(sorted({process, *map(str, others)}))
            elif row[8]:
                busy.add(name)
            else:
                seen = observations[name] = self._observation(
                    row[1:8], process, mine[name], interval
                )
                if seen.acquired:
                    self._taken(name)
        return Tick(observations, members, frozenset(busy))

    def release_many(
        self,
        process: str,
        held: Sequence[tuple[str, Mine]],
        interval: float,
        pool: str | None = None,
    ) -> list[str]:
        if not held and pool is None:
            return []
        values = {
            "batch": _batch((name, mine, True) for name, mine in held),
            "process": process,
            "owner": self.instance,
            "interval": interval,
            "pool": pool,
        }
        rows = self._query(self._statements().release_many[pool is not None], values)
        return sorted(str(row[0]) for row in rows)

    def prepare_members(self) -> None:
        """Create the members table when missing (CREATE on the schema is needed only
        then), and check this role may use it."""
        statements = self._statements()
        members = members_table(QualifiedName.parse(statements.table))
        if not self._query(SCHEMA_OF, {"table": members.quoted()}):
            try:
                self._query(statements.create_members)
            except Exception as error:
                if self._query(SCHEMA_OF, {"table": members.quoted()}):
                    pass  # another process made it meanwhile
                elif _sqlstate(error) == INSUFFICIENT_PRIVILEGE:
                    raise SchemaError(
                        f"table {members} does not exist and this role cannot create it "
                        f"({describe_error(error)}): create it as "
                        "leadership.postgres_store.CREATE_MEMBERS says and GRANT SELECT, "
                        f"INSERT, UPDATE, DELETE ON {members} TO <role>"
                    ) from None
                else:
                    raise
        missing = [row[0] for row in self._query(MEMBER_PRIVILEGES, {"table": members.quoted()})]
        if missing:
            raise SchemaError(
                f"table {members}: this role lacks {', '.join(missing)}: a balancing group "
                f"needs GRANT SELECT, INSERT, UPDATE, DELETE ON {members} TO <role>"
            )

    def read_members(self, pool: str | None = None) -> list[StoredMember]:
        statements = self._resolve(create=False)
        if statements is None:
            return []
        members = members_table(QualifiedName.parse(statements.table))
        if not self._query(SCHEMA_OF, {"table": members.quoted()}):
            return []
        sql, params = statements.members.sql, tuple[str, ...]()
        if pool is not None:
            sql, params = f"{sql} WHERE pool = %s", (pool,)
        rows = self._query(sql + " ORDER BY pool, member", params)
        return [StoredMember(str(p), str(m), float(a), float(lease)) for p, m, a, lease in rows]

    def _statements(self) -> Statements:
        statements = self._resolve(create=True)
        assert statements is not None
        return statements

    def _recreate(self, error: BaseException) -> None:
        """The table was dropped under a running flag: create it again, or say why not."""
        dropped, self._sql = self.table, None
        self._wanted = QualifiedName.parse(dropped)  # where it was, not the current schema
        try:
            self.prepare()
        except Exception as failure:
            raise SchemaError(
                f"table {dropped} was dropped ({describe_error(error)}) and cannot be "
                f"created again: {describe_error(failure)}"
            ) from failure

    def release(self, name: str, process: str, mine: Mine, interval: float) -> bool:
        values = {
            "name": name,
            "process": process,
            "last_version": mine.last.version,
            "last_at": mine.last.at,
            "pending": mine.pending,
            "owner": self.instance,
            "interval": interval,
            "channel": channel_for(name),
        }
        return bool(self._query(self._statements().release, values))

    def read_rows(self, name: str | None = None) -> list[StoredRow]:
        statements = self._resolve(create=False)
        if statements is None:
            return []  # no table yet: no flags (and reading creates nothing)
        sql = statements.rows.sql
        params: tuple[str, ...] = ()
        if name is not None:
            sql, params = f"{sql} WHERE name = %s", (name,)
        rows = self._query(sql + " ORDER BY name", params)
        return [
            StoredRow(str(n), str(h), int(v), float(a), None if lease is None else float(lease))
            for n, h, v, a, lease in rows
        ]

    def expire(self, name: str) -> bool:
        statements = self._resolve(create=False)
        if statements is None:
            return False
        return bool(self._query(statements.expire, {"name": name, "channel": channel_for(name)}))

    def lock_row(self, conn: DBAPIConnection, name: str) -> tuple[str, int] | None:
        """Lock the row ``FOR SHARE`` in the caller's transaction, then read it; an
        autocommit connection outside a transaction is refused (the lock would end with
        the statement)."""
        if getattr(conn, "autocommit", False) is True and not _in_transaction(conn):
            raise LeadershipError(
                "guard() needs the caller's transaction: this connection is in autocommit "
                "mode, where the row lock would end with the statement; open a transaction "
                "first (psycopg: with conn.transaction(): ...) or turn autocommit off"
            )
        cursor = conn.cursor()
        try:
            cursor.execute(self._statements().lock_row, (name,))
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else (str(row[0]), int(row[1]))

    def wait(self, seconds: float, wake_fd: int) -> None:
        """Sleep up to ``seconds``; return early on ``wake_fd``, on a notification (also
        one that came with a statement's reply: then at once), or on the socket turning
        readable. A socket wake that brought no notification (a dropped connection, a
        message no statement reads) is not repeated within ``SOCKET_WAKE_SPACING``."""
        self._listen_now()
        if self._notified:
            self._notified.clear()
            return
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

    def _prepare_release(self) -> None:
        """On pg8000 (native), prepare the release statement ahead (in ``prepare()``): else
        the release after ``close()`` pays a second round trip (and a plan) just when a
        waiting process could take over. After a reconnection, the first release prepares
        it again (one extra round trip, once)."""
        conn, statements = self._conn, self._sql
        if conn is None or statements is None or self._per_transaction:
            return
        if _pg8000_native(conn) is None or statements.release.sql in self._prepared:
            return
        deadline = self._budget or time.monotonic() + self._timeout
        try:
            with self._watchdog.bound(deadline, lambda: cut_connection(conn)):
                prepared = conn.prepare(_named_placeholders(statements.release.sql))
        except Exception as error:  # left to the release itself
            if self._watchdog.fired or not _connection_survives(error):
                self._reset()
            return
        self._prepared[statements.release.sql] = prepared
        self._take_notifications(conn)

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


def _batch(flags: Iterable[tuple[str, Mine | None, bool]]) -> str:
    """A group's flags as BATCH's JSON: name, what this instance wrote (last version -1
    when nothing), whether to write, and the flag's channel."""
    return json.dumps(
        [
            {
                "name": name,
                "last_version": -1 if mine is None else mine.last.version,
                "pending": 0 if mine is None else mine.pending,
                "last_at": 0.0 if mine is None else mine.last.at,
                "write": write,
                "channel": channel_for(name),
            }
            for name, mine, write in flags
        ]
    )


def _no_delay(conn: Any) -> None:
    """Send each message at once on a pg8000 TCP socket (no Nagle delay: a group's batch
    larger than one write would wait for the server's delayed acknowledgement, 40 ms)."""
    sock = getattr(conn, "_usock", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _in_transaction(conn: Any) -> bool:
    """Whether a DB-API connection in autocommit mode has a transaction open anyway."""
    info = getattr(conn, "info", None)
    status = getattr(info, "transaction_status", None)  # psycopg 3: 0 is IDLE
    if status is not None:
        return int(status) != 0
    return bool(getattr(conn, "_in_transaction", False))  # pg8000.dbapi


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a driver error (pg8000 or psycopg), if it has one."""
    if error.args and isinstance(error.args[0], dict):
        code = error.args[0].get("C")
        return str(code) if code else None
    code = getattr(error, "sqlstate", None)
    return str(code) if code else None


def _inline(sql: str, params: tuple[Any, ...]) -> str:
    """``sql`` with its ``%s`` placeholders replaced by ``params`` as SQL literals."""
    parts = sql.split("%s")
    if len(parts) != len(params) + 1:
        raise ValueError(f"{len(parts) - 1} placeholders for {len(params)} parameters")
    pieces = [parts[0]]
    for value, part in zip(params, parts[1:], strict=True):
        pieces += [_literal(value), part]
    return "".join(pieces)


def _literal(value: Any) -> str:
    """An SQL literal for a parameter: text as an escape string (read the same whatever
    ``standard_conforming_strings`` says), numbers, booleans and NULL; TypeError else."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"({value:d})"
    if isinstance(value, float):
        return f"'{value!r}'::float8"
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("a text parameter cannot contain a NUL character")
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for a {type(value).__name__} parameter")


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
