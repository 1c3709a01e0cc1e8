"""Parse handles given as text: PostgreSQL DSNs (for pg8000) and SQLite URLs.

- ``postgresql://`` or ``postgres://``: query parameters ``sslmode`` (``disable``: no TLS;
  ``allow``, ``prefer`` (the default): TLS without certificate checks when the server
  offers it, else plain (with ``sslcert``: TLS required); ``require``: TLS without
  certificate checks unless ``sslrootcert`` is given; ``verify-ca``; ``verify-full``: the
  host name or IP address too; without ``sslrootcert`` they trust the system's CAs),
  ``sslrootcert``, ``sslcert``, ``sslkey`` (unencrypted), ``host`` (a directory means a
  Unix socket), ``port``, ``user``, ``password``, ``dbname``, ``application_name``,
  ``connect_timeout`` and ``target_session_attrs``. Without a host, the Unix socket in
  /var/run/postgresql is used when it exists, else localhost. Several hosts, as libpq
  takes them: ``postgresql://a:5432,b:5433/db`` or ``?host=a,b&port=5432,5433`` (one port
  for all, or one per host; an empty one is 5432); :func:`pg8000_targets` gives the
  options of each, tried in order, with ``target_session_attrs`` (``any``, the default:
  the first that connects; ``read-write`` or ``primary``: the first that accepts writes).
  ``pooler`` (``none``, the default; ``session``; ``transaction``: behind a pooler in
  transaction mode, such as PgBouncer's, no session setting, ``LISTEN`` or prepared
  statement; see :func:`pooler_of`) is the flag's, not passed to pg8000.
- ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (the SQLAlchemy
  convention): an SQLite file shared by processes on one host.

Every error names the handle with its password redacted.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    import ssl

__all__ = [
    "POSTGRES_SCHEMES",
    "Targets",
    "endpoint_of",
    "pg8000_options",
    "pg8000_targets",
    "pooler_of",
    "redact",
    "scheme_of",
    "sqlite_path",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")
QUERY_KEYS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "host", "port", "user", "password",
    "dbname", "application_name", "connect_timeout", "target_session_attrs",
    "pooler",
}  # fmt: skip
POOLERS = ("none", "session", "transaction")
"""Values of the ``pooler`` parameter (see :func:`pooler_of`)."""
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SOCKET_DIR = "/var/run/postgresql"
SESSION_ATTRS = ("any", "read-write", "primary")
"""``target_session_attrs`` served: ``read-write`` takes a host whose sessions are not
read-only, ``primary`` a host that is not in recovery (not a standby)."""
REFUSED_ATTRS = ("read-only", "standby", "prefer-standby")
"""libpq's other values: a flag writes on every check, so a standby cannot hold it."""
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


@dataclass(frozen=True)
class Targets:
    """The hosts of a DSN: ``options`` for ``pg8000`` per host, in the order to try;
    ``session_attrs``, what a host must accept (see SESSION_ATTRS); ``connect_timeout``
    bounds each host's attempt (seconds)."""

    options: tuple[dict[str, Any], ...]
    session_attrs: str
    connect_timeout: float


def pg8000_targets(dsn: str, timeout: float) -> Targets:
    """The hosts of a PostgreSQL DSN (one or several) with what each must accept."""
    shown = redact(dsn)
    query = dict(parse_qsl(urlsplit(dsn).query, keep_blank_values=True))
    attrs = query.get("target_session_attrs") or "any"
    if attrs in REFUSED_ATTRS:
        raise ConfigurationError(
            "handle",
            f"target_session_attrs={attrs} is not supported: the flag writes on every "
            f"check, so a standby cannot hold it; use read-write or primary in {shown}",
        )
    if attrs not in SESSION_ATTRS:
        raise ConfigurationError(
            "handle", f"target_session_attrs must be one of {SESSION_ATTRS} in {shown}"
        )
    first = pg8000_options(dsn, timeout, index=0)
    count = len(_endpoints(urlsplit(dsn).netloc, query, shown))
    options = (first, *(pg8000_options(dsn, timeout, index=i) for i in range(1, count)))
    return Targets(options, attrs, float(first["timeout"]))


def endpoint_of(options: Mapping[str, Any]) -> str:
    """``host:port`` (or the socket path) that pg8000 ``options`` connect to."""
    if "unix_sock" in options:
        return str(options["unix_sock"])
    host = str(options["host"])
    return f"[{host}]:{options['port']}" if ":" in host else f"{host}:{options['port']}"


def _endpoints(netloc: str, query: Mapping[str, str], shown: str) -> list[tuple[str, str]]:
    """``(host, port)`` texts, libpq's way: the query's ``host`` and ``port`` lists,
    else the netloc's ``host:port,host:port``; one port serves every host."""
    hosts: list[str] = []
    ports: list[str] = []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("["):  # an IPv6 address
            name, _, rest = item[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ConfigurationError("handle", f"malformed host {item!r} in {shown}")
            port = rest[1:]
        else:
            name, _, port = item.partition(":")
        hosts.append(unquote(name))
        ports.append(port)
    if query.get("host"):
        hosts = query["host"].split(",")
    if query.get("port"):
        ports = query["port"].split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        raise ConfigurationError(
            "handle",
            f"{len(ports)} ports for {len(hosts)} hosts (give one or one per host) in {shown}",
        )
    for port in ports:
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError("handle", f"port must be a number in {shown}")
    return list(zip(hosts, ports, strict=True))


def pg8000_options(dsn: str, timeout: float, *, index: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``pg8000.dbapi.connect`` from a PostgreSQL DSN: for its host
    number ``index`` (from 0), or its only host when ``index`` is None (several hosts are
    then refused: :func:`pg8000_targets` gives them all)."""
    shown = redact(dsn)
    try:
        parts = urlsplit(dsn)
    except ValueError as error:
        raise ConfigurationError("handle", f"malformed DSN {shown}: {error}") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - QUERY_KEYS)
    if unknown:
        raise ConfigurationError("handle", f"unsupported DSN parameter(s) {unknown} in {shown}")
    endpoints = _endpoints(parts.netloc, query, shown)
    if index is None and len(endpoints) > 1:
        raise ConfigurationError(
            "handle", f"several hosts where one connection is made (pg8000_targets): {shown}"
        )
    host, port_text = endpoints[index or 0]
    port = int(port_text or 5432)
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
    import ssl  # on use, as pg8000 itself: PostgreSQL DSNs only

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
    import ssl  # imported already, by _ssl_context

    if isinstance(error, ssl.SSLError):
        if error.reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        return "not a PEM certificate or key" + (f" ({error.reason})" if error.reason else "")
    return error.strerror or str(error)


def pooler_of(dsn: str) -> str:
    """The ``pooler`` parameter of a PostgreSQL DSN: ``none`` (the default: connected to
    the server, or through a pooler in session mode), ``session`` (the same behaviour,
    said explicitly) or ``transaction`` (through a pooler that hands each transaction to
    any server connection, such as PgBouncer's ``pool_mode = transaction``: the flag then
    keeps nothing in the session). ConfigurationError for another value."""
    query = dict(parse_qsl(urlsplit(dsn).query, keep_blank_values=True))
    pooler = query.get("pooler") or "none"
    if pooler not in POOLERS:
        raise ConfigurationError(
            "handle", f"pooler must be one of {POOLERS} (got {pooler!r}) in {redact(dsn)}"
        )
    return pooler


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
