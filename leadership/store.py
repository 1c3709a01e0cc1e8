"""The backend boundary: everything the package asks of the database holding the flags.

A :class:`Store` is one dedicated connection to one database. It serves any number of
flags: every call names the flag it is about. Each backend module owns all of its SQL
(schema, acquire-or-renew, release, listing, administrative expiry, the fencing lock);
nothing else in the package writes SQL on the flags table. Adding a backend is one new
module implementing :class:`Store` plus one line in :mod:`leadership.backends`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ConfigurationError, LeadershipError, SchemaError, StoreUnavailable

__all__ = [
    "TABLE",
    "Attempt",
    "ConnectedStore",
    "Cursor",
    "DBAPIConnection",
    "HoldLost",
    "Mine",
    "Observation",
    "OutcomeUnknown",
    "QualifiedName",
    "Store",
    "StoredMember",
    "StoredRow",
    "Tick",
    "Written",
    "check_columns",
    "close_quietly",
    "continues",
    "describe_error",
    "drain",
    "first_connection",
    "is_ours",
    "members_table",
    "timeout_ms",
]

TABLE = "leadership_flags"
"""The flags table, shared with the Go package: ``(name, holder, version, timestamp)``."""


class Cursor(Protocol):
    """The part of a DB-API 2.0 cursor this package uses."""

    @property
    def description(self) -> Any: ...

    def execute(self, operation: Any, parameters: Any = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    def close(self) -> None: ...


class DBAPIConnection(Protocol):
    """The part of a DB-API 2.0 connection this package uses (sqlite3, pg8000, psycopg)."""

    def cursor(self) -> Cursor: ...

    def close(self) -> None: ...


class HoldLost(Exception):
    """Raised by a store that knows whatever this instance held through it is gone (its
    SQLite file was removed or replaced): the flag lowers at once instead of waiting for
    its deadline. The message names the cause."""


class OutcomeUnknown(Exception):
    """A statement was sent and no reply came (a lost reply, a cut connection): it may
    have taken effect. Failures known not to have written (no connection, an error the
    server reported) are raised as themselves."""


@dataclass(frozen=True)
class Written:
    """A row version this instance wrote and saw confirmed, with the row's new
    timestamp (database clock, seconds). ``continued`` is True when the row was this
    instance's before the write (a renewal), False when it was missing, expired or
    released (a new term begins, whatever the local lease says)."""

    version: int
    at: float
    continued: bool = False


@dataclass(frozen=True)
class Mine:
    """What this instance may have written to a row: ``last``, which it saw confirmed, and
    up to ``pending`` later versions written by attempts whose outcome it never learned
    (a lost reply, a commit that waited for a slow standby after the client gave up)."""

    last: Written
    pending: int = 0


def is_ours(
    holder: str,
    version: int,
    at: float,
    process: str,
    mine: Mine | None,
    interval: float,
    owned: bool = True,
) -> bool:
    """Whether a row (``holder``, ``version``, stamped ``at``) is this instance's own: it
    carries ``process`` and either ``mine.last.version``, or one of the ``mine.pending``
    versions after it, stamped after ``mine.last.at`` but within ``interval`` of it.

    Another writer cannot have made such a row: with this process name it would need the
    row expired (at least ``interval`` after our write) or released by an administrator.
    For that last case the store records an identity of its own in the row where it can;
    ``owned`` says whether the row carries it (True where the backend cannot tell).
    """
    if mine is None or holder != process:
        return False
    last = mine.last
    if version == last.version:
        return True
    return (
        owned
        and last.version < version <= last.version + mine.pending
        and (last.at < at <= last.at + interval)
    )


def continues(previous_version: int, mine: Mine | None) -> bool:
    """Whether a write over a row of ours (see :func:`is_ours`) at ``previous_version``
    continues this instance's term: only a renewal of ``mine.last`` itself or of the one
    version after it (a single lost reply) does; any longer chain starts a new term."""
    return mine is not None and previous_version <= mine.last.version + 1


@dataclass(frozen=True)
class Observation:
    """The outcome of one acquire-or-renew, as the database saw it.

    When ``acquired``, ``written`` is what this statement wrote for this instance.
    Otherwise ``holder`` and ``version`` describe the row that stopped it (None when
    there was none) and ``expires_in`` is the number of seconds, on the database clock,
    until another process may take it (None when unknown).
    """

    written: Written | None
    holder: str | None = None
    version: int | None = None
    expires_in: float | None = None

    @property
    def acquired(self) -> bool:
        return self.written is not None


@dataclass(frozen=True)
class StoredRow:
    """One row of the flags table; ``age`` is seconds since its timestamp (database
    clock); ``lease`` the holder's interval as recorded in the row, when trustworthy."""

    name: str
    holder: str
    version: int
    age: float
    lease: float | None = None


@dataclass(frozen=True)
class Attempt:
    """One flag of a group's tick: acquire or renew it as :meth:`Store.acquire_or_renew`
    does with ``mine``, or, with ``write`` False, only read its row."""

    name: str
    mine: Mine | None = None
    write: bool = True


@dataclass(frozen=True)
class Tick:
    """What one group tick found: an observation per flag of the tick but the busy ones
    (a read-only one
    has ``written`` None, the row's holder and version, and ``expires_in`` <= 0 when the
    row is free; holder None when there is no row), and, when the tick heartbeat a pool,
    the names of the pool's live members, this one included, sorted."""

    observations: dict[str, Observation]
    members: tuple[str, ...] | None = None
    busy: frozenset[str] = frozenset()
    """Flags whose row another transaction held locked: not attempted (nothing written),
    and absent from ``observations``."""


@dataclass(frozen=True)
class StoredMember:
    """One member of a pool (see :meth:`Store.acquire_or_renew_many`): seconds since its
    last heartbeat (database clock) and the lease it took."""

    pool: str
    member: str
    age: float
    lease: float


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")
"""A table or schema name this package accepts (plain SQL identifiers, at most 63 bytes)."""


@dataclass(frozen=True)
class QualifiedName:
    """A table name, with its schema when known (``schema.name``)."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> QualifiedName:
        """``name`` or ``schema.name``; raise ConfigurationError("table") otherwise."""
        parts = text.split(".") if isinstance(text, str) else []
        if not 1 <= len(parts) <= 2 or not all(IDENTIFIER.match(part) for part in parts):
            raise ConfigurationError(
                "table",
                f"expected name or schema.name made of letters, digits, _ and $ "
                f"(not starting with a digit), got {text!r}",
            )
        return cls(parts[0], parts[1]) if len(parts) == 2 else cls(None, parts[0])

    def quoted(self) -> str:
        """The name as SQL, each part quoted."""
        name = f'"{self.name}"'
        return name if self.schema is None else f'"{self.schema}".{name}'

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


class Store(Protocol):
    """One dedicated connection to the flags table, serving any number of flags.

    Calls come from one thread at a time (a flag's renewal thread, or an admin command),
    except :meth:`lock_row`, which touches only the caller's connection. The connection is
    opened lazily and reopened after a failure that broke it (an ordinary SQL error, such
    as a statement timeout, keeps it).
    """

    @property
    def table(self) -> str:
        """The table this store uses, as operators should read it (schema-qualified on
        PostgreSQL once resolved)."""

    @property
    def notes(self) -> list[str]:
        """Warnings for the operator found while preparing (logged once by the flag)."""

    def prepare(self) -> None:
        """Connect, create the table if missing and check its schema; raise on failure."""

    def watch(self, name: str, interval: float) -> None:
        """Make :meth:`wait` return early when flag ``name`` is released, or found older
        than ``interval`` seconds where the backend polls instead of being notified."""

    def unwatch(self, name: str) -> None:
        """Stop watching flag ``name``."""

    def acquire_or_renew(
        self, name: str, process: str, mine: Mine | None, interval: float
    ) -> Observation:
        """Write the row of ``name`` for ``process`` in one atomic statement, if allowed.

        The row is written (version + 1; timestamp now) when it is missing, when it is
        older than ``interval`` seconds on the database clock, or when it is this
        instance's own by :func:`is_ours` (``mine``: what this instance wrote). A created
        row's version is the database clock in microseconds, so versions, and fencing
        tokens, keep growing when a row is deleted and created again.
        """

    def acquire_or_renew_many(
        self,
        process: str,
        attempts: Sequence[Attempt],
        interval: float,
        pool: str | None = None,
    ) -> Tick:
        """Every attempt of a group's tick, each exactly as :meth:`acquire_or_renew` (or
        a plain read), in one statement where the backend can (one transaction else).

        With ``pool``, the same statement heartbeats ``process`` as a member of that
        pool (a lease of ``interval`` seconds, in the members table beside the flags
        table: see :func:`members_table`) and returns the pool's live members. An error
        or an unknown outcome is the whole tick's (raised as by acquire_or_renew).
        """

    def release_many(
        self,
        process: str,
        held: Sequence[tuple[str, Mine]],
        interval: float,
        pool: str | None = None,
    ) -> list[str]:
        """:meth:`release` for each (name, mine) in one statement; with ``pool``, also
        leave it. Return the names released."""

    def prepare_members(self) -> None:
        """Create the members table if missing (see :func:`members_table`)."""

    def read_members(self, pool: str | None = None) -> list[StoredMember]:
        """The pools' members (only ``pool``'s when given), live or not, sorted by pool
        and member; empty when there is no members table. Creates nothing."""

    def release(self, name: str, process: str, mine: Mine, interval: float) -> bool:
        """Expire the row of ``name`` if it is this instance's own (see :func:`is_ours`:
        ``mine.last``, or what its unanswered attempts wrote), and wake the processes
        waiting for it. True when a row was released."""

    def wait(self, seconds: float, wake_fd: int) -> None:
        """Sleep up to ``seconds``; return early when ``wake_fd`` is readable or a watched
        flag may have become free."""

    def read_rows(self, name: str | None = None) -> list[StoredRow]:
        """The rows of the table (only ``name``'s when given), sorted by name; empty when
        the table does not exist. Creates nothing."""

    def expire(self, name: str) -> bool:
        """Administrative release: expire the row of ``name`` whoever holds it, bump its
        version and wake waiting processes. True when the row exists. Creates nothing."""

    def lock_row(self, conn: DBAPIConnection, name: str) -> tuple[str, int] | None:
        """Inside the caller's open transaction on ``conn``, lock the row of ``name``
        against takeovers until that transaction ends; return its (holder, version),
        or None when there is no row."""

    def close(self) -> None:
        """Close the connection; idempotent."""


def members_table(table: QualifiedName) -> QualifiedName:
    """The members table of a flags table: ``<table>_members`` in the same schema (for a
    name too long for that, its first 40 characters, a digest of it, then ``_members``)."""
    name = f"{table.name}_members"
    if not IDENTIFIER.match(name):
        digest = hashlib.sha256(table.name.encode()).hexdigest()[:8]
        name = f"{table.name[:40]}_{digest}_members"
    return QualifiedName(table.schema, name)


def timeout_ms(timeout: float) -> int:
    """``timeout`` seconds as whole milliseconds, at least 1."""
    return max(1, round(timeout * 1000))


def check_columns(
    table: str, columns: Mapping[str, str], expected: Mapping[str, Sequence[str]]
) -> None:
    """Raise SchemaError, naming ``table``, unless every expected column is present with
    an accepted type.

    ``columns`` maps the table's column names to their types; ``expected`` maps each
    required column to the types accepted for it (the first is the one we create).
    """
    for column, types in expected.items():
        found = columns.get(column)
        if found is None:
            raise SchemaError(f"table {table} has no column {column} (expected {types[0]})")
        if found not in types:
            raise SchemaError(
                f"table {table}: column {column} has type {found}, expected {types[0]}"
            )


def first_connection(connect: Callable[[], Any], where: str, timeout: float) -> Any:
    """Open a store's first connection; a failure raises StoreUnavailable naming ``where``."""
    try:
        return connect()
    except LeadershipError:
        raise
    except Exception as error:
        raise StoreUnavailable(
            f"cannot connect to {where} (timeout {timeout:g} s): {describe_error(error)}"
        ) from None


UNTRUSTED_ISSUER = {2, 18, 19, 20, 21, 27}
"""OpenSSL's X509_V_ERR codes for a certificate chain that ends at no trusted CA."""
WRONG_HOST = {62, 64}
"""X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH."""


def describe_error(error: BaseException) -> str:
    """One line describing a driver error, without connection secrets."""
    ssl = sys.modules.get("ssl")  # no TLS error before ssl is imported (SQLite never does)
    if ssl is not None and isinstance(error, ssl.SSLCertVerificationError):
        detail = str(error.verify_message).rstrip(".")
        if error.verify_code in UNTRUSTED_ISSUER:
            detail += " (not issued by a CA in sslrootcert, or by the system's CAs without it)"
        elif error.verify_code in WRONG_HOST:
            detail += " (verify-full: the certificate must name the host connected to)"
        return f"the server's TLS certificate was rejected: {detail}"
    args = error.args
    if args and isinstance(args[0], dict):  # pg8000 passes the server's fields as a dict
        fields = args[0]
        parts = [fields.get("S"), fields.get("C"), fields.get("M")]
        return " ".join(str(part) for part in parts if part) or type(error).__name__
    text = str(error).strip().splitlines()
    cause = error.__cause__
    detail = text[0] if text else type(error).__name__
    if cause is not None and not isinstance(cause, type(error)):
        detail = f"{detail} ({describe_error(cause)})"
    return detail


def drain(fd: int) -> None:
    """Read and discard whatever is waiting on the non-blocking pipe ``fd``."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class ConnectedStore:
    """Holds one dedicated connection, opened lazily by ``connect``.

    Subclasses set up each new connection in ``_setup`` and use ``_connection()``; after
    a failure that broke the connection they call ``_reset()`` so the next call
    reconnects. ``first``, when given, is the first connection (already open).
    """

    def __init__(self, connect: Callable[[], Any], first: Any = None) -> None:
        self._connect = connect
        self._conn: Any = None
        if first is not None:
            try:
                self._setup(first)
            except BaseException:
                close_quietly(first)
                raise
            self._conn = first

    def _setup(self, conn: Any) -> None:
        """Prepare a fresh connection (session settings); raise to reject it."""

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            try:
                self._setup(conn)
            except BaseException:
                close_quietly(conn)
                raise
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            close_quietly(conn)

    def close(self) -> None:
        self._reset()

    def _sleep(self, seconds: float, wake_fd: int, watched: int | None = None) -> int | None:
        """Wait up to ``seconds`` for ``wake_fd`` or ``watched``; return the one that fired."""
        fds = [wake_fd] if watched is None else [wake_fd, watched]
        try:
            ready, _, _ = select.select(fds, [], [], max(seconds, 0.0))
        except (OSError, ValueError):  # the watched socket was closed under us
            return None
        if wake_fd in ready:
            drain(wake_fd)
            return wake_fd
        return watched if ready else None


def close_quietly(conn: Any) -> None:
    """Close a connection, ignoring any error (it may be broken already)."""
    with contextlib.suppress(Exception):
        conn.close()
