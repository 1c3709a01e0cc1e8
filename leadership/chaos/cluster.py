"""A throwaway PostgreSQL cluster: ``initdb`` in a temp dir, served on a free loopback port.

The server runs as the unprivileged ``postgres`` user when this process is root (as a
direct child, with a parent-death signal, so it dies with its parent even on SIGKILL),
else as the current user. The machine's own PostgreSQL server is never touched.
The parent-death signal follows the *thread* that started the server: call ``start``
and ``restart`` from a thread that lives as long as the cluster (the main thread).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pg8000.dbapi

__all__ = ["Cluster", "ClusterError", "free_port"]

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",  # restarts of the server process lose nothing the kernel has
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_connections": "off",
}

STOP_MODES = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    raise ClusterError("initdb not found: install the PostgreSQL server binaries")


class Cluster:
    """One PostgreSQL server in a temporary directory; ``with Cluster() as c:`` stops and
    removes it at the end, on error too.

    ``start()`` blocks until the server accepts connections (or raises ClusterError);
    ``restart(mode)`` stops it with ``mode`` (smart, fast or immediate) and starts it again.
    """

    def __init__(self, user: str = "postgres") -> None:
        self.user = user
        self.port = free_port()
        self._bin = _bindir()
        self._root = Path(tempfile.mkdtemp(prefix="leadership-cluster-"))
        self._data = self._root / "data"
        self._log = self._root / "server.log"
        self._server: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self.restarts = 0

    @property
    def root(self) -> Path:
        return self._root

    def dsn(self, port: int | None = None, application_name: str | None = None) -> str:
        """A DSN for the ``postgres`` database, on ``port`` (a proxy) or the server's own."""
        dsn = f"postgresql://{self.user}@127.0.0.1:{port or self.port}/postgres"
        if application_name:
            dsn += f"?application_name={application_name}"
        return dsn

    def connect(self, timeout: float = 5.0) -> Any:
        """A pg8000 connection straight to the server, in autocommit mode."""
        conn = pg8000.dbapi.connect(
            user=self.user, host="127.0.0.1", port=self.port, database="postgres", timeout=timeout
        )
        conn.autocommit = True
        return conn

    def _prefix(self, pdeathsig: bool = False) -> list[str]:
        if not self._as_root:
            return []
        command = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups"]
        if pdeathsig:
            command.append("--pdeathsig=KILL")
        return [*command, "--"]

    def start(self, timeout: float = 60.0) -> None:
        if not self._data.exists():
            self._initdb()
        if self._server is not None and self._server.poll() is None:
            return
        command = [
            *self._prefix(pdeathsig=True),
            str(self._bin / "postgres"),
            "-D",
            str(self._data),
            "-p",
            str(self.port),
            "-k",
            str(self._root),
        ]
        for key, value in SERVER_SETTINGS.items():
            command += ["-c", f"{key}={value}"]
        with open(self._log, "ab") as log:
            self._server = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self._root
            )
        self._wait_ready(timeout)

    def _initdb(self) -> None:
        if self._as_root:
            uid = pwd.getpwnam(self.user).pw_uid
            os.chown(self._root, uid, -1)
        command = [
            *self._prefix(),
            str(self._bin / "initdb"),
            "-D",
            str(self._data),
            "-U",
            self.user,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]
        done = subprocess.run(command, capture_output=True, cwd=self._root, timeout=120)
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
                    raise ClusterError(f"postgres not ready after {timeout} s: {error}") from None
            time.sleep(0.05)

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
        self.stop(mode)
        self.restarts += 1
        self.start()

    def log_tail(self, size: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_bytes()[-size:].decode(errors="replace")
        return ""

    def remove(self) -> None:
        """Stop the server (immediately) and delete the directory."""
        self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)

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
