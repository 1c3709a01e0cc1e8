"""The backend factory: turn a flag's handle (a DSN or a connection factory) into a store.

Accepted handles: a ``postgresql://`` / ``postgres://`` DSN (PostgreSQL through pg8000),
a ``sqlite:///path`` URL (see :mod:`leadership.dsn`), or a zero-argument callable
returning a DB-API 2.0 connection (sqlite3, pg8000, psycopg, ...), called again to
reconnect after failures.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from .dsn import POSTGRES_SCHEMES, pg8000_options, redact, scheme_of, sqlite_path
from .errors import ConfigurationError, LeadershipError, StoreUnavailable
from .postgres_store import PostgresStore
from .sqlite_store import SqliteStore
from .store import describe_error

__all__ = ["open_store"]


def open_store(
    handle: str | Callable[[], Any],
    name: str,
    interval: float,
    timeout: float,
    *,
    prepare: bool = True,
) -> PostgresStore | SqliteStore:
    """Connect to the handle's database and return a store, or raise.

    With ``prepare`` (the default) the table is created if missing and its schema checked.

    Raises ConfigurationError for a bad handle, StoreUnavailable when the database
    cannot be reached or refuses the connection, SchemaError for a bad table.
    """
    try:
        store = _store(handle, name, interval, timeout)
    except LeadershipError:
        raise
    except Exception as error:  # the first connection failed while being set up
        raise StoreUnavailable(f"cannot use the database: {describe_error(error)}") from None
    if not prepare:
        return store
    try:
        store.prepare()
    except LeadershipError:
        store.close()
        raise
    except Exception as error:
        store.close()
        raise StoreUnavailable(f"cannot use the database: {describe_error(error)}") from None
    if callable(handle) and isinstance(store, SqliteStore):
        store.close()  # sqlite3 connections may be bound to this thread: the flag's opens its own
    return store


def _store(
    handle: str | Callable[[], Any], name: str, interval: float, timeout: float
) -> PostgresStore | SqliteStore:
    if isinstance(handle, str):
        scheme = scheme_of(handle)
        if scheme in POSTGRES_SCHEMES:
            import pg8000.native

            options = pg8000_options(handle, timeout)
            where = redact(handle)

            def connect() -> Any:
                return pg8000.native.Connection(**options)

            return PostgresStore(connect, name, timeout, first=_first(connect, where, timeout))
        if scheme == "sqlite":
            path = sqlite_path(handle)

            def open_file() -> sqlite3.Connection:
                return sqlite3.connect(path, timeout=timeout, check_same_thread=False)

            first = _first(open_file, redact(handle), timeout)
            return SqliteStore(open_file, name, interval, timeout, first=first)
        raise ConfigurationError(
            "handle",
            f"unknown scheme {scheme or '(none)'!r} in {redact(handle)}: expected "
            "postgresql://, postgres:// or sqlite:///path",
        )
    if callable(handle):
        first = _first(handle, "the connection factory", timeout)
        if isinstance(first, sqlite3.Connection):
            return SqliteStore(handle, name, interval, timeout, first=first)
        return PostgresStore(handle, name, timeout, first=first)
    raise ConfigurationError(
        "handle",
        "expected a DSN string or a zero-argument callable returning a DB-API connection, "
        f"got {type(handle).__name__}",
    )


def _first(connect: Callable[[], Any], where: str, timeout: float) -> Any:
    """The first connection, with connection failures turned into StoreUnavailable."""
    try:
        return connect()
    except LeadershipError:
        raise
    except Exception as error:
        raise StoreUnavailable(
            f"cannot connect to {where} (timeout {timeout:g} s): {describe_error(error)}"
        ) from None
