"""A throwaway PostgreSQL server: ``initdb`` in a temporary directory, served on a free
loopback port with trust authentication. The machine's own server is never touched.

Processes run as the unprivileged ``postgres`` user when this process is root (through
``setpriv``), else as the current user. The server is a direct child of this process
(not daemonised by ``pg_ctl``) with a parent-death signal, so it dies with its parent
even on SIGKILL. That signal follows the *thread* that started the server: call
:meth:`Cluster.start` and :meth:`Cluster.restart` from a thread that lives as long as the
cluster (the main thread).

For TLS, ``files`` are copied into the data directory, owned by the server's user with
mode 0600 (as PostgreSQL wants its key), where relative paths in settings such as
``ssl_cert_file`` resolve; ``hba`` lines go first in ``pg_hba.conf``, before initdb's
trust lines, so the first that matches wins. :meth:`Cluster.install` replaces a file
later and :meth:`Cluster.reload` makes the server read its files again (SIGHUP).

Replication: :meth:`Cluster.standby` makes a streaming standby of a running cluster
(``pg_basebackup -R`` into a new data directory, ``primary_conninfo`` naming the standby
by its ``name``, optionally through another ``host:port`` such as a fault proxy), which
``start()`` starts; :meth:`Cluster.promote` ends its recovery; :meth:`Cluster.synchronous`
makes commits wait for the named standbys (``synchronous_standby_names`` and
``synchronous_commit``, through ``ALTER SYSTEM``, so the setting travels with
``pg_basebackup``). ``stop("immediate")`` is a crash: nothing is flushed or sent.

The server binaries are searched for in one order: ``initdb`` on ``PATH``, then
``pg_config --bindir``, then the newest ``/usr/lib/postgresql/<version>/bin`` (Debian).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pg8000.dbapi
import pg8000.native

from harness.users import as_user, cannot_run_as, give_to, owned_tempdir
from leadership.deadman import die_with_parent

__all__ = ["Cluster", "ClusterError", "free_port", "missing_tools", "server_bindir"]

SERVER_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",  # restarts of the server process lose nothing the kernel has
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_connections": "off",
}
"""Settings of every cluster; ``Cluster(settings=...)`` adds to or overrides them."""

STOP_MODES = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
"""PostgreSQL's shutdown modes and the signal that asks the server for each."""


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.name))


def server_bindir() -> Path:
    """The directory of ``initdb``, ``postgres`` (see the module docstring for the search
    order); ClusterError when there is none."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            bindir = Path(done.stdout.strip())
            if done.returncode == 0 and (bindir / "initdb").is_file():
                return bindir
    debian = sorted(
        (str(p.parent) for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=_version_key,
    )
    if debian:
        return Path(debian[-1])
    raise ClusterError("initdb not found: install the PostgreSQL server binaries")


def missing_tools(user: str = "postgres") -> str | None:
    """Why a :class:`Cluster` cannot be made on this machine, or None when it can."""
    try:
        server_bindir()
    except ClusterError as error:
        return str(error)
    return cannot_run_as(user, "PostgreSQL")


class Cluster:
    """One PostgreSQL server in a temporary directory, listening on ``port``.

    ``start()`` creates the cluster on first use and blocks until the server accepts
    connections (ClusterError otherwise); ``stop(mode)`` and ``restart(mode)`` use the
    shutdown ``mode`` (smart, fast or immediate); ``remove()`` stops the server and
    deletes the directory. ``with Cluster() as cluster:`` starts it and removes it at the
    end, on error too. ``settings`` are extra ``postgres -c`` settings (e.g. to preload
    ``pg_stat_statements``); ``user`` is the database superuser (and, under root, the OS
    user running the server). ``files`` (name in the data directory: source file) and
    ``hba`` (``pg_hba.conf`` lines, put first) are installed when the cluster is created:
    see the module docstring. ``env`` adds to the server's environment (e.g. to preload
    libfaketime and step its clock).
    """

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        user: str = "postgres",
        *,
        files: Mapping[str, Path] | None = None,
        hba: Sequence[str] = (),
        port: int | None = None,
        name: str = "primary",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.user = user
        self.env = dict(env or {})
        self.port = port or free_port()
        self.name = name
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.files = dict(files or {})
        self.hba = list(hba)
        self.restarts = 0
        self._root: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    @property
    def root(self) -> Path | None:
        """The temporary directory (data, log, socket), None before ``start()``."""
        return self._root

    def dsn(
        self, port: int | None = None, application_name: str | None = None, database: str = ""
    ) -> str:
        """A DSN for ``database`` (default ``postgres``) as the superuser, on ``port``
        (e.g. a proxy's) or the server's own."""
        dsn = f"postgresql://{self.user}@127.0.0.1:{port or self.port}/{database or 'postgres'}"
        if application_name:
            dsn += f"?application_name={application_name}"
        return dsn

    def connect(self, timeout: float = 5.0, database: str = "postgres") -> Any:
        """A pg8000 connection straight to the server, in autocommit mode."""
        conn = pg8000.dbapi.connect(
            user=self.user, host="127.0.0.1", port=self.port, database=database, timeout=timeout
        )
        conn.autocommit = True
        return conn

    def start(self, timeout: float = 60.0) -> Cluster:
        """Create the cluster if needed and start the server (no-op when running)."""
        if self._server is not None and self._server.poll() is None:
            return self
        bindir = server_bindir()
        root = self._root or self._make_root()
        data = root / "data"
        if not data.exists():
            self._initdb(bindir, root)
            for name, source in self.files.items():
                self.install(name, source)
            if self.hba:
                hba = data / "pg_hba.conf"
                hba.write_text("\n".join(self.hba) + "\n" + hba.read_text())
        extra_env = [f"{key}={value}" for key, value in self.env.items()]
        command = [
            *self._as_user(pdeathsig=True),
            *(["env", *extra_env] if extra_env else []),  # for the server alone
            str(bindir / "postgres"),
            *("-D", str(data), "-p", str(self.port), "-k", str(root)),
        ]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        with open(root / "server.log", "ab") as log:
            self._server = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=root,
                preexec_fn=None if self._as_root else die_with_parent,
            )
        self._wait_ready(timeout)
        return self

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server (idempotent); SIGKILL when it does not stop within ``timeout``."""
        server, self._server = self._server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(STOP_MODES[mode])
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    def restart(self, mode: str = "fast") -> None:
        """Stop with ``mode``, then start again (same data, same port)."""
        self.stop(mode)
        self.restarts += 1
        self.start()

    def install(self, name: str, source: Path) -> Path:
        """Copy ``source`` to ``name`` in the data directory (created by ``start()``),
        owned by the server's user, mode 0600; return its path. The server reads it at
        start or on :meth:`reload`."""
        if self._root is None:
            raise ClusterError("install() needs the cluster: call start() first")
        target = self._root / "data" / name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        give_to(self.user, target)
        return target

    def reload(self) -> None:
        """Ask the running server to read its configuration and TLS files again
        (SIGHUP); it does so asynchronously. Settings given with ``-c`` stay."""
        if self._server is None or self._server.poll() is not None:
            raise ClusterError("reload() needs a running server")
        self._server.send_signal(signal.SIGHUP)

    def log_tail(self, size: int = 2000) -> str:
        """The last ``size`` bytes of the server log (empty when there is none)."""
        if self._root is not None:
            with contextlib.suppress(OSError):
                return (self._root / "server.log").read_bytes()[-size:].decode(errors="replace")
        return ""

    def standby(
        self,
        name: str = "standby",
        port: int | None = None,
        via: tuple[str, int] | None = None,
        timeout: float = 60.0,
    ) -> Cluster:
        """A new, not yet started, streaming standby of this running cluster, named
        ``name`` (its ``application_name`` on the primary), on ``port`` (default: a free
        one), replicating from ``via`` (default: this server) with this cluster's settings.
        ClusterError when the base backup fails."""
        if self._server is None or self._server.poll() is not None:
            raise ClusterError("standby() needs a running primary")
        replica = Cluster(self.settings, self.user, port=port, name=name)
        root = replica._make_root()
        host, source_port = via or ("127.0.0.1", self.port)
        command = [
            *replica._as_user(),
            str(server_bindir() / "pg_basebackup"),
            *("-D", str(root / "data"), "-h", host, "-p", str(source_port), "-U", self.user),
            *("-R", "-X", "stream", "-c", "fast", "--no-sync"),
        ]
        try:
            done = subprocess.run(command, capture_output=True, cwd=root, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            replica.remove()
            raise ClusterError(f"pg_basebackup failed: {error}") from None
        if done.returncode != 0:
            replica.remove()
            raise ClusterError(f"pg_basebackup failed: {done.stderr.decode(errors='replace')}")
        conninfo = f"host={host} port={source_port} user={self.user} application_name={name}"
        with open(root / "data" / "postgresql.auto.conf", "a") as auto:
            auto.write(f"primary_conninfo = '{conninfo}'\n")
        return replica

    def promote(self, timeout: float = 60.0) -> None:
        """End this standby's recovery: it accepts writes when this returns."""
        conn = self.native()
        try:
            (done,) = conn.run(f"SELECT pg_promote(true, {int(timeout)})")[0]
        finally:
            conn.close()
        if not done:
            raise ClusterError(f"{self.name} not promoted within {timeout} s")

    def in_recovery(self) -> bool:
        """Whether the server is a standby (still in recovery)."""
        conn = self.native()
        try:
            return bool(conn.run("SELECT pg_is_in_recovery()")[0][0])
        finally:
            conn.close()

    def synchronous(self, standby_names: str, commit: str = "on") -> None:
        """Make commits wait for ``standby_names`` (``synchronous_standby_names``, ""
        for none) with ``synchronous_commit = commit``; in force when this returns."""
        conn = self.native()
        try:
            for setting, value in (
                ("synchronous_standby_names", standby_names),
                ("synchronous_commit", commit),
            ):
                conn.run(f"ALTER SYSTEM SET {setting} = {pg8000.native.literal(value)}")
            conn.run("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 10
            while conn.run("SHOW synchronous_standby_names")[0][0] != standby_names:
                if time.monotonic() > deadline:
                    raise ClusterError("synchronous_standby_names not reloaded within 10 s")
                time.sleep(0.01)
        finally:
            conn.close()

    def wait_streaming(self, name: str, sync: bool = False, timeout: float = 30.0) -> None:
        """Wait until standby ``name`` streams from this server (and, with ``sync``, is
        its synchronous standby); ClusterError after ``timeout``."""
        wanted = ("sync",) if sync else ("async", "sync", "potential", "quorum")
        conn = self.native()
        try:
            deadline = time.monotonic() + timeout
            while True:
                rows = conn.run(
                    "SELECT sync_state FROM pg_stat_replication"
                    " WHERE application_name = :n AND state = 'streaming'",
                    n=name,
                )
                if rows and rows[0][0] in wanted:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"standby {name} not streaming after {timeout} s: {rows}")
                time.sleep(0.02)
        finally:
            conn.close()

    def native(self, timeout: float = 5.0) -> pg8000.native.Connection:
        """A pg8000 native connection straight to the server (``run(sql, **params)``)."""
        return pg8000.native.Connection(
            user=self.user, host="127.0.0.1", port=self.port, database="postgres", timeout=timeout
        )

    def remove(self) -> None:
        """Stop the server (immediately) and delete the directory; idempotent."""
        self.stop("immediate")
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Cluster:
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
        self._root = owned_tempdir("leadership-cluster-", self.user)
        return self._root

    def _as_user(self, pdeathsig: bool = False) -> list[str]:
        """The command prefix that runs a program as ``user`` when this process is root."""
        return as_user(self.user, pdeathsig)

    def _initdb(self, bindir: Path, root: Path) -> None:
        command = [
            *self._as_user(),
            str(bindir / "initdb"),
            *("-D", str(root / "data"), "-U", self.user, "-A", "trust"),
            *("--no-sync", "-E", "UTF8", "--no-locale"),
        ]
        try:
            done = subprocess.run(command, capture_output=True, cwd=root, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ClusterError(f"initdb failed: {error}") from None
        if done.returncode != 0:
            raise ClusterError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            server = self._server
            if server is None or server.poll() is not None:
                raise ClusterError(f"postgres exited at start-up: {self.log_tail()}")
            try:
                self.connect(timeout=1.0).close()
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    self.stop("immediate")
                    raise ClusterError(f"postgres not ready after {timeout} s: {error}") from None
            time.sleep(0.05)
