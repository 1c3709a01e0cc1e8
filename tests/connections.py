"""Connection factories (the callable handle) that count their calls and can be cut off."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from typing import Any

import pg8000.dbapi

from leadership.dsn import pg8000_options
from tests.conftest import execute
from tests.rows import is_sqlite, sqlite_path


class ConnectionFactory:
    """A zero-argument callable returning a new DB-API connection to ``dsn``.

    ``driver`` is "pg8000", "psycopg" or "sqlite3" (any ``sqlite:`` DSN). ``search_path``
    (PostgreSQL) points the connection at a schema. After ``cut()`` every call raises
    OSError and the connections handed out so far are dropped (PostgreSQL: terminated
    by the server; SQLite: closed), as when a database becomes unreachable;
    ``restore()`` undoes the refusal.
    """

    def __init__(
        self,
        dsn: str,
        driver: str = "pg8000",
        *,
        search_path: str | None = None,
        application_name: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.driver = "sqlite3" if is_sqlite(dsn) else driver
        self.search_path = search_path
        self.application_name = application_name or f"leadership-test-{uuid.uuid4().hex[:12]}"
        self.calls = 0
        self.connections: list[Any] = []
        self._cut = False
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
            if self._cut:
                raise OSError("the test cut this connection factory off")
        conn = self._connect()
        with self._lock:
            self.connections.append(conn)
        return conn

    def _connect(self) -> Any:
        if self.driver == "sqlite3":
            return sqlite3.connect(sqlite_path(self.dsn), timeout=1, check_same_thread=False)
        if self.driver == "psycopg":
            import psycopg

            extra = f"-c search_path={self.search_path}" if self.search_path else ""
            return psycopg.connect(
                self.dsn,
                autocommit=True,
                application_name=self.application_name,
                options=extra,
                connect_timeout=5,
            )
        options = pg8000_options(self.dsn, timeout=5)
        options["application_name"] = self.application_name
        conn = pg8000.dbapi.connect(**options)
        if self.search_path:
            conn.autocommit = True
            cursor = conn.cursor()
            cursor.execute(f"SET search_path TO {self.search_path}")
            cursor.close()
        return conn

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            connections, self.connections = self.connections, []
        if self.driver != "sqlite3":
            self.terminate()
            return
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()

    def backends(self) -> int:
        """How many PostgreSQL backends this factory's connections have on the server."""
        rows = execute(
            self.dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (self.application_name,),
        )
        return int(rows[0][0])

    def terminate(self) -> int:
        """Terminate this factory's PostgreSQL backends on the server; return how many."""
        rows = execute(
            self.dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (self.application_name,),
        )
        return int(rows[0][0])

    def restore(self) -> None:
        with self._lock:
            self._cut = False
