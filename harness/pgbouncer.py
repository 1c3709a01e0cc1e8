"""A throwaway PgBouncer in front of a PostgreSQL server, for tests of the flag behind a
connection pooler.

:class:`PgBouncer` writes a configuration in a temporary directory (``auth_type = trust``,
every database forwarded to ``upstream_host:upstream_port``, ``listen_addr = 127.0.0.1`` on
a free port, no Unix socket) and runs ``pgbouncer`` in the foreground as a direct child
of this process with a parent-death signal, so it dies with its parent even on SIGKILL.
Under root it runs as the unprivileged ``postgres`` user (PgBouncer refuses root), through
``setpriv``. ``with PgBouncer(mode="transaction") as bouncer:`` starts it and stops it at
the end, on error too; :meth:`PgBouncer.dsn` points a DSN at it.

The binary is ``pgbouncer`` on ``PATH``, else ``/usr/sbin/pgbouncer`` (Debian's package).
:func:`missing_pgbouncer` says why one cannot run here, or None.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from harness.cluster import free_port
from harness.users import as_user, cannot_run_as, give_to, owned_tempdir
from leadership.deadman import die_with_parent

__all__ = ["MODES", "PgBouncer", "PgBouncerError", "missing_pgbouncer", "pgbouncer_binary"]

MODES = ("session", "transaction", "statement")
"""PgBouncer's pool modes."""


class PgBouncerError(RuntimeError):
    """PgBouncer could not be configured or started; the message says why."""


def pgbouncer_binary() -> Path | None:
    """The ``pgbouncer`` executable, or None when it is not installed."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    return Path(found) if found else None


def missing_pgbouncer(user: str = "postgres") -> str | None:
    """Why a :class:`PgBouncer` cannot run on this machine, or None when it can."""
    if pgbouncer_binary() is None:
        return "pgbouncer not found (Debian: apt-get install pgbouncer)"
    return cannot_run_as(user, "pgbouncer")


class PgBouncer:
    """One PgBouncer on ``127.0.0.1:port`` pooling connections to the upstream server.

    ``mode`` is the pool mode (``session``, ``transaction`` or ``statement``);
    ``pool_size`` the server connections per database and user (a small pool makes
    clients share server connections, as a busy production pooler does). Clients
    authenticate as any user (``trust``); PgBouncer connects upstream as that user, so
    the upstream server must accept it without a password. ``start()`` blocks until
    PgBouncer accepts connections (PgBouncerError otherwise); ``stop()`` is idempotent.
    """

    def __init__(
        self,
        mode: str = "transaction",
        upstream_host: str = "127.0.0.1",
        upstream_port: int = 5432,
        *,
        pool_size: int = 20,
        user: str = "postgres",
    ) -> None:
        if mode not in MODES:
            raise PgBouncerError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.upstream = (upstream_host, upstream_port)
        self.pool_size = pool_size
        self.user = user
        self.port = free_port()
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    def dsn(self, upstream_dsn: str, **query: str) -> str:
        """``upstream_dsn`` (a ``postgresql://`` DSN of the upstream server) pointed at
        this PgBouncer instead: same user, database and parameters, plus ``query``."""
        parts = urlsplit(upstream_dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        extra = "&".join(f"{key}={value}" for key, value in query.items())
        joined = "&".join(part for part in (parts.query, extra) if part)
        return urlunsplit((parts.scheme, netloc, parts.path, joined, parts.fragment))

    def config(self, root: Path) -> str:
        """The text of ``pgbouncer.ini`` for a run in directory ``root``."""
        host, port = self.upstream
        return "\n".join(
            [
                "[databases]",
                f"* = host={host} port={port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {root / 'userlist.txt'}",
                f"pool_mode = {self.mode}",
                f"default_pool_size = {self.pool_size}",
                "max_client_conn = 200",
                "server_reset_query = DISCARD ALL",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {root / 'pgbouncer.log'}",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )

    def start(self, timeout: float = 20.0) -> PgBouncer:
        """Write the configuration and start PgBouncer (no-op when running)."""
        if self._process is not None and self._process.poll() is None:
            return self
        binary = pgbouncer_binary()
        if binary is None:
            raise PgBouncerError(missing_pgbouncer() or "pgbouncer not found")
        root = self._root or self._make_root()
        (root / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (root / "pgbouncer.ini").write_text(self.config(root))
        give_to(self.user, root / "userlist.txt", root / "pgbouncer.ini")
        with open(root / "stderr.log", "ab") as log:
            self._process = subprocess.Popen(
                [*self._as_user(), str(binary), str(root / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=root,
                preexec_fn=None if self._as_root else die_with_parent,
            )
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop PgBouncer (SIGINT: at once, dropping clients); SIGKILL after ``timeout``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def remove(self) -> None:
        """Stop PgBouncer and delete its directory; idempotent."""
        self.stop()
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def log_tail(self, size: int = 2000) -> str:
        """The last ``size`` bytes of PgBouncer's log and stderr (empty when none)."""
        text = ""
        if self._root is not None:
            for name in ("stderr.log", "pgbouncer.log"):
                with contextlib.suppress(OSError):
                    text += (self._root / name).read_bytes()[-size:].decode(errors="replace")
        return text

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def _make_root(self) -> Path:
        self._root = owned_tempdir("leadership-pgbouncer-", self.user)
        return self._root

    def _as_user(self) -> list[str]:
        """The command prefix that runs pgbouncer as ``user`` (with a parent-death signal,
        set after the user change, which would clear it) when this process is root."""
        return as_user(self.user, pdeathsig=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                raise PgBouncerError(f"pgbouncer exited at start-up: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PgBouncerError(
                        f"pgbouncer not listening after {timeout} s: {error}; {self.log_tail()}"
                    ) from None
            time.sleep(0.05)
