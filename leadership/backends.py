"""The backend factory: turn a flag's handle (a DSN or a connection factory) into a store.

Accepted handles: a ``postgresql://`` / ``postgres://`` DSN (PostgreSQL through pg8000),
an ``sqlite:///path`` URL (see :mod:`leadership.dsn`), or a zero-argument callable
returning a DB-API 2.0 connection (sqlite3, pg8000, psycopg, ...), called again to
reconnect after failures. A backend is a module with ``SCHEMES``, ``from_dsn`` and
``from_connection``; adding one is one new module and one entry in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from . import postgres_store, sqlite_store
from .dsn import redact, scheme_of
from .errors import ConfigurationError, LeadershipError, StoreUnavailable
from .store import DBAPIConnection, Store, describe_error, first_connection

__all__ = ["BACKENDS", "Backend", "open_store"]


class Backend(Protocol):
    """What a backend module offers the factory."""

    @property
    def SCHEMES(self) -> tuple[str, ...]: ...

    def from_dsn(
        self, dsn: str, timeout: float, *, create: bool = True, table: str | None = None
    ) -> Store: ...

    def from_connection(
        self, connect: Callable[[], Any], first: Any, timeout: float, table: str | None = None
    ) -> Store | None: ...


BACKENDS: tuple[Backend, ...] = (sqlite_store, postgres_store)
"""In the order a connection factory's first connection is offered to them (PostgreSQL,
which accepts any ``%s``-style driver, comes last)."""


def open_store(
    handle: str | Callable[[], DBAPIConnection],
    timeout: float,
    *,
    prepare: bool = True,
    table: str | None = None,
) -> Store:
    """Connect to the handle's database and return its store, or raise.

    ``table`` names the flags table (``schema.name`` or ``name``; default: the backend's
    choice, see each store). ``timeout`` bounds each operation. With ``prepare`` (the
    default) the table is
    created if missing and its schema checked; without it nothing is created (not even
    an SQLite file).

    Raises ConfigurationError for a bad handle, StoreUnavailable when the database
    cannot be reached or refuses the connection, SchemaError for a bad table.
    """
    try:
        store = _store(handle, timeout, create=prepare, table=table)
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
    return store


def _store(
    handle: str | Callable[[], DBAPIConnection],
    timeout: float,
    *,
    create: bool,
    table: str | None,
) -> Store:
    if isinstance(handle, str):
        if not handle.strip():
            raise ConfigurationError(
                "handle",
                "is empty: give a DSN such as postgresql://user@host/db or sqlite:///flags.db",
            )
        scheme = scheme_of(handle)
        for backend in BACKENDS:
            if scheme in backend.SCHEMES:
                return backend.from_dsn(handle, timeout, create=create, table=table)
        known = ", ".join(f"{s}://" for backend in BACKENDS for s in backend.SCHEMES)
        raise ConfigurationError(
            "handle",
            f"unknown scheme {scheme or '(none)'!r} in {redact(handle)}: expected {known}",
        )
    if callable(handle):
        first = first_connection(handle, "the connection factory", timeout)
        for backend in BACKENDS:
            store = backend.from_connection(handle, first, timeout, table)
            if store is not None:
                return store
        raise ConfigurationError("handle", f"no backend accepts {type(first).__name__} connections")
    raise ConfigurationError(
        "handle",
        "expected a DSN string or a zero-argument callable returning a DB-API connection, "
        f"got {type(handle).__name__}",
    )
