"""Parse handles given as text: PostgreSQL DSNs (for pg8000) and SQLite URLs.

- ``postgresql://`` or ``postgres://``: query parameters ``sslmode`` (``disable``: no TLS;
  ``allow``, ``prefer`` (the default): TLS without certificate checks when the server
  offers it, else plain (with ``sslcert``: TLS required); ``require``: TLS without
  certificate checks unless ``sslrootcert`` is given; ``verify-ca``; ``verify-full``: the
  host name or IP address too; without ``sslrootcert`` they trust the system's CAs),
  ``sslrootcert``, ``sslcert``, ``sslkey`` (unencrypted), ``host`` (a directory means a
  Unix socket), ``port``, ``user``, ``password``, ``dbname``, ``application_name`` and
  ``connect_timeout``. Without a host, the Unix socket in /var/run/postgresql is used
  when it exists, else localhost.
- ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (the SQLAlchemy
  convention): an SQLite file shared by processes on one host.

Every error names the handle with its password redacted.
"""

from __future__ import annotations

import getpass
import os
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = ["POSTGRES_SCHEMES", "pg8000_options", "redact", "scheme_of", "sqlite_path"]

POSTGRES_SCHEMES = ("postgresql", "postgres")
QUERY_KEYS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "host", "port", "user", "password",
    "dbname", "application_name", "connect_timeout",
}  # fmt: skip
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SOCKET_DIR = "/var/run/postgresql"
SECRET_KEYS = ("password", "sslpassword")
"""Query parameters that ``redact`` masks (``sslpassword`` is refused, but never shown)."""


def redact(dsn: str) -> str:
    """``dsn`` with any password (or key passphrase) replaced by ``***``."""
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
        f"{key}={'***' if key in SECRET_KEYS else value}"
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
    """pg8000's ``ssl_context``: False for no TLS, None for TLS when offered (no checks),
    else a context that requires TLS. ConfigurationError names an unreadable file."""
    mode = query.get("sslmode", "prefer")
    if mode not in SSL_MODES:
        raise ConfigurationError("handle", f"sslmode must be one of {SSL_MODES} in {shown}")
    if "sslkey" in query and "sslcert" not in query:
        raise ConfigurationError(
            "handle", f"sslkey needs sslcert (the client certificate) in {shown}"
        )
    if mode == "disable":
        return False
    if mode in ("allow", "prefer") and "sslcert" not in query:
        return None  # pg8000: try TLS without verification, fall back to plain
    # From here TLS is required: a client certificate makes allow and prefer need it too.
    # Certificate checks: verify-*, and require given sslrootcert (as libpq does).
    verify = mode.startswith("verify-") or (mode == "require" and "sslrootcert" in query)
    cafile = query.get("sslrootcert") if verify else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except OSError as error:  # ssl.SSLError included
        raise ConfigurationError(
            "handle", f"sslrootcert {cafile!r}: {_file_problem(error)} in {shown}"
        ) from None
    context.check_hostname = mode == "verify-full"
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    if "sslcert" in query:
        cert, key = query["sslcert"], query.get("sslkey")
        try:
            context.load_cert_chain(cert, key, password=_refuse_passphrase(key or cert, shown))
        except OSError as error:  # ssl.SSLError included
            files = f"sslcert {cert!r}" + (f" with sslkey {key!r}" if key else "")
            raise ConfigurationError(
                "handle", f"{files}: {_file_problem(error)} in {shown}"
            ) from None
    return context


def _refuse_passphrase(key: str, shown: str) -> Callable[[], str]:
    """A password callback for an encrypted key: refuse at once (OpenSSL would otherwise
    prompt on the terminal, blocking ``build()``)."""

    def refuse() -> str:
        raise ConfigurationError(
            "handle",
            f"sslkey {key!r} is encrypted with a passphrase, which is not supported: "
            f"give an unencrypted key readable only by this user in {shown}",
        )

    return refuse


def _file_problem(error: OSError) -> str:
    """Why a certificate or key file could not be loaded, in a few words."""
    if isinstance(error, ssl.SSLError):
        if error.reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        return "not a PEM certificate or key" + (f" ({error.reason})" if error.reason else "")
    return error.strerror or str(error)


def sqlite_path(handle: str) -> str:
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


def scheme_of(handle: str) -> str:
    """The lower-case scheme of a textual handle ("" when it has none)."""
    return handle.partition("://")[0].lower() if "://" in handle else ""
