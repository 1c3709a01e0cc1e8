"""A throwaway PostgreSQL cluster with ``pg_stat_statements`` loaded, for server-side counts.

``ScratchCluster.start()`` runs ``initdb`` and ``pg_ctl`` (as user ``postgres`` when run
by root) in a temporary directory, on a free port of 127.0.0.1, with trust
authentication; ``stop()`` stops it and removes the directory. The machine's own
server is never touched. ``start()`` raises RuntimeError saying why when the cluster
cannot be made (no PostgreSQL binaries, no ``postgres`` user, ...).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pg8000.dbapi

__all__ = ["ScratchCluster"]


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        path = Path(found.stdout.strip())
        if (path / "initdb").exists():
            return path
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb) found")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ScratchCluster:
    """A temporary cluster; use as a context manager or call ``start``/``stop``."""

    def __init__(self) -> None:
        self.port = 0
        self._dir: Path | None = None
        self._bin: Path | None = None
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout[-500:]} {done.stderr[-500:]}")

    def start(self) -> ScratchCluster:
        self._bin = _bindir()
        self._dir = Path(tempfile.mkdtemp(prefix="leadership-bench-pg-"))
        try:
            if self._as_postgres:
                try:
                    owner = pwd.getpwnam("postgres")
                except KeyError:
                    raise RuntimeError("running as root but there is no postgres user") from None
                os.chown(self._dir, owner.pw_uid, owner.pw_gid)
            data = self._dir / "data"
            self._run(
                str(self._bin / "initdb"), "-D", str(data), "-U", "postgres",
                "--auth=trust", "--no-sync", "--encoding=UTF8",
            )  # fmt: skip
            self.port = _free_port()
            options = (
                f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self._dir} "
                "-c shared_preload_libraries=pg_stat_statements "
                "-c pg_stat_statements.track_planning=on -c max_connections=50"
            )
            self._run(
                str(self._bin / "pg_ctl"), "-D", str(data), "-l", str(self._dir / "log"),
                "-w", "-t", "30", "-o", options, "start",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def connect(self, user: str = "postgres", database: str = "postgres") -> Any:
        """An autocommit pg8000 connection (for set-up and reading statistics)."""
        conn = pg8000.dbapi.connect(
            user=user, host="127.0.0.1", port=self.port, database=database, timeout=10
        )
        conn.autocommit = True
        return conn

    def stop(self) -> None:
        """Stop the server and remove its directory; idempotent."""
        if self._dir is None:
            return
        data = self._dir / "data"
        if self._bin is not None and (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(str(self._bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> ScratchCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
