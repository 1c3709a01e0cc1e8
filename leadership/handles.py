"""Turn a flag's handle (a DSN or a connection factory) into a store.

Accepted handles:

- ``postgresql://`` or ``postgres://`` DSN: PostgreSQL through pg8000. Query parameters
  ``sslmode`` (disable, allow, prefer: no TLS; require: TLS without certificate checks;
  verify-ca; verify-full), ``sslrootcert``, ``sslcert``, ``sslkey``, ``host`` (a directory
  means a Unix socket), ``port``, ``user``, ``password``, ``dbname``, ``application_name``
  and ``connect_timeout``. Without a host, the Unix socket in /var/run/postgresql is used
  when it exists, else localhost.
- ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (the SQLAlchemy
  convention): an SQLite file shared by processes on one host.
- A zero-argument callable returning a DB-API 2.0 connection (sqlite3, pg8000, psycopg,
  ...). It is called again to reconnect after failures.
"""

from __future__ import annotations

import getpass
import os
import sqlite3
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import ConfigurationError, LeadershipError, StoreUnavailable
from .postgres_store import PostgresStore
from .sqlite_store import SqliteStore
from .store import describe_error

__all__ = ["open_store", "pg8000_options", "redact"]

POSTGRES_SCHEMES = ("postgresql", "postgres")
QUERY_KEYS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "host", "port", "user", "password",
    "dbname", "application_name", "connect_timeout",
}  # fmt: skip
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SOCKET_DIR = "/var/run/postgresql"


def redact(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``."""
    if dsn.lower().startswith("sqlite:"):
        return dsn  # a path: nothing secret, and urlunsplit would mangle it
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable handle>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        f"{key}={'***' if key == 'password' else value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def pg8000_options(dsn: str, timeout: float) -> dict[str, Any]:
    """Keyword arguments for ``pg8000.dbapi.connect`` from a PostgreSQL DSN."""
    shown = redact(dsn)
    try:
        parts = urlsplit(dsn)
        port_in_netloc = parts.port
    except ValueError as error:
        raise ConfigurationError("handle", f"malformed DSN {shown}: {error}") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - QUERY_KEYS)
    if unknown:
        raise ConfigurationError("handle", f"unsupported DSN parameter(s) {unknown} in {shown}")
    host = query.get("host") or unquote(parts.hostname or "")
    if "," in host:
        raise ConfigurationError("handle", f"several hosts are not supported: {shown}")
    port_text = query.get("port") or str(port_in_netloc or 5432)
    if not port_text.isdigit():
        raise ConfigurationError("handle", f"port must be a number in {shown}")
    port = int(port_text)
    user = query.get("user") or unquote(parts.username or "") or getpass.getuser()
    options: dict[str, Any] = {
        "user": user,
        "database": query.get("dbname") or unquote(parts.path.lstrip("/")) or user,
        "password": query.get("password") or (unquote(parts.password) if parts.password else None),
        "timeout": timeout,
        "application_name": query.get("application_name", "leadership"),
    }
    if "connect_timeout" in query:
        try:
            options["timeout"] = max(timeout, float(query["connect_timeout"]))
        except ValueError:
            raise ConfigurationError(
                "handle", f"connect_timeout must be a number in {shown}"
            ) from None
    if not host:
        host = SOCKET_DIR if os.path.exists(f"{SOCKET_DIR}/.s.PGSQL.{port}") else "localhost"
    if host.startswith("/"):
        options["unix_sock"] = f"{host}/.s.PGSQL.{port}"
    else:
        options["host"], options["port"] = host, port
    options["ssl_context"] = _ssl_context(query, shown)
    return options


def _ssl_context(query: dict[str, str], shown: str) -> ssl.SSLContext | bool | None:
    mode = query.get("sslmode", "prefer")
    if mode not in SSL_MODES:
        raise ConfigurationError("handle", f"sslmode must be one of {SSL_MODES} in {shown}")
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return None  # pg8000: try TLS without verification, fall back to plain
    context = ssl.create_default_context(cafile=query.get("sslrootcert"))
    if mode in ("require", "verify-ca"):
        context.check_hostname = False
    if mode == "require" and "sslrootcert" not in query:
        context.verify_mode = ssl.CERT_NONE
    if "sslcert" in query:
        context.load_cert_chain(query["sslcert"], query.get("sslkey"))
    return context


def _sqlite_path(handle: str) -> str:
    rest = handle[len("sqlite://") :]
    if rest in ("", "/", ":memory:", "/:memory:") or "mode=memory" in rest:
        raise ConfigurationError(
            "handle",
            f"{handle!r} is an in-memory SQLite database, which other processes cannot share; "
            "give a file, e.g. sqlite:///flags.db",
        )
    if not rest.startswith("/"):
        raise ConfigurationError("handle", f"expected sqlite:///path/to/file.db, got {handle!r}")
    return unquote(rest[1:])


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
        scheme = handle.partition("://")[0].lower() if "://" in handle else ""
        if scheme in POSTGRES_SCHEMES:
            import pg8000.native

            options = pg8000_options(handle, timeout)
            where = redact(handle)

            def connect() -> Any:
                return pg8000.native.Connection(**options)

            return PostgresStore(connect, name, timeout, first=_first(connect, where, timeout))
        if scheme == "sqlite":
            path = _sqlite_path(handle)

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
