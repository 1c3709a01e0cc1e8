"""The flag behind a real PgBouncer (harness/pgbouncer.py), in session and transaction
pooling mode: it works, never raises two flags at once, and leaves nothing (setting,
LISTEN, prepared statement) on the pooler's server connections for other clients.

Skipped with the reason when pgbouncer is missing, unless ``LEADERSHIP_REQUIRE_TOOLS``
is set: then failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pg8000.native
import pytest

import leadership
from harness.pgbouncer import PgBouncer, missing_pgbouncer
from harness.sql import run_sql
from leadership.dsn import pg8000_options, pooler_of
from leadership.postgres_store import PostgresStore
from tests.conftest import MakeFlag
from tests.history import OverlapWatch, wait_for

pytestmark = pytest.mark.postgres

CONTENDERS = 4
RUN_SECONDS = 7.0
INTERVAL = 1.0
TIMEOUT = 0.3
POOL_SIZES = {"session": CONTENDERS + 2, "transaction": 2}
"""Server connections per pool: session mode needs one per client; a transaction pool
smaller than the contenders makes them share server connections, as a busy one does."""
POOLER_PARAMETER = {"direct": None, "session": None, "transaction": "transaction"}
"""The DSN's ``pooler`` parameter per route (session mode works with the default)."""


def need_pgbouncer() -> None:
    reason = missing_pgbouncer()
    if reason is None:
        return
    if os.environ.get("LEADERSHIP_REQUIRE_TOOLS"):
        pytest.fail(reason + " and LEADERSHIP_REQUIRE_TOOLS is set")
    pytest.skip(reason)


@contextmanager
def bouncer(pg_dsn: str, mode: str, pool_size: int) -> Iterator[PgBouncer]:
    """A PgBouncer in ``mode`` in front of the test server (stopped at the end)."""
    need_pgbouncer()
    upstream = urlsplit(pg_dsn)
    with PgBouncer(
        mode, upstream.hostname or "127.0.0.1", upstream.port or 5432, pool_size=pool_size
    ) as running:
        yield running


def through(running: PgBouncer, pg_dsn: str, pooler: str | None) -> str:
    return running.dsn(pg_dsn) if pooler is None else running.dsn(pg_dsn, pooler=pooler)


def server_connections(running: PgBouncer, pg_dsn: str) -> list[tuple[Any, ...]]:
    """What another application finds on each of the pool's server connections: one
    client per server connection, each holding its own in a transaction, reads its
    backend pid, ``statement_timeout``, LISTEN channels and prepared statements."""
    options = urlsplit(running.dsn(pg_dsn))
    clients = []
    try:
        for _ in range(running.pool_size):
            conn = pg8000.native.Connection(
                user=options.username or "postgres",
                host="127.0.0.1",
                port=running.port,
                database=options.path.lstrip("/"),
                application_name="another application",
                timeout=10,
            )
            clients.append(conn)
            conn.run("BEGIN")
        return [
            tuple(
                conn.run(
                    "SELECT pg_backend_pid(), current_setting('statement_timeout'), "
                    "ARRAY(SELECT pg_listening_channels())::text, "
                    "(SELECT count(*) FROM pg_prepared_statements)"
                )[0]
            )
            for conn in clients
        ]
    finally:
        for conn in clients:
            conn.close()


def default_statement_timeout(pg_dsn: str) -> str:
    return str(run_sql(pg_dsn, "SELECT current_setting('statement_timeout')")[0][0])


class Availability:
    """Samples whether any of ``flags`` is raised every 2 ms on a thread."""

    def __init__(self, flags: list[leadership.Flag]) -> None:
        self.flags = flags
        self.samples = self.raised = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.samples += 1
            self.raised += any(flag.raised() for flag in self.flags)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.raised / max(self.samples, 1)


def contend(dsn: str, make_flag: MakeFlag) -> tuple[float, float, list[leadership.Flag]]:
    """Four contenders for RUN_SECONDS with no fault, then the leader closes; return the
    availability (share of time some flag was raised, from build() on), the handover
    time after close() (seconds) and the flags. Fails on any overlap."""
    flags = [make_flag(dsn, f"p{i}", interval=INTERVAL, timeout=TIMEOUT) for i in range(CONTENDERS)]
    with OverlapWatch(flags) as watch:
        sampler = Availability(flags)
        time.sleep(RUN_SECONDS)
        availability = sampler.stop()
        leaders = [flag for flag in flags if flag.raised()]
        handover = float("nan")
        if leaders:
            leaders[0].close()
            others = [flag for flag in flags if flag is not leaders[0]]
            took = wait_for(lambda: any(flag.raised() for flag in others), 2 * INTERVAL)
            handover = float("inf") if took is None else took
        watch.assert_no_overlap()
    return availability, handover, flags


@pytest.mark.slow
@pytest.mark.parametrize("route", ["direct", "session", "transaction"])
def test_flag_works_behind_pgbouncer_and_leaves_nothing_behind(
    route: str, pg_dsn: str, make_flag: MakeFlag
) -> None:
    """Four contenders through PgBouncer (or straight to the server, the baseline): the
    flag is available about as much as without the pooler, never raised twice, hands
    over after close() (by NOTIFY where it passes, else within the schedule); then every
    server connection of the pool has the server's statement_timeout, no LISTEN and no
    prepared statement left for the next application."""
    if route == "direct":
        availability, handover, flags = contend(pg_dsn, make_flag)
        print(f"\ndirect: availability {availability:.1%}, handover {handover * 1000:.0f} ms")
        assert availability > 0.95, f"availability {availability:.1%} straight to the server"
        return
    default = default_statement_timeout(pg_dsn)
    with bouncer(pg_dsn, route, POOL_SIZES[route]) as running:
        dsn = through(running, pg_dsn, POOLER_PARAMETER[route])
        availability, handover, flags = contend(dsn, make_flag)
        prepared = [bool(flag._store._prepared) for flag in flags]  # type: ignore[attr-defined]
        for flag in flags:
            flag.close()
        seen = server_connections(running, pg_dsn)
    print(f"\n{route}: availability {availability:.1%}, handover {handover * 1000:.0f} ms")
    assert availability > 0.95, f"availability {availability:.1%} through PgBouncer ({route})"
    assert handover <= INTERVAL + TIMEOUT, f"no handover within the schedule: {handover} s"
    assert len({pid for pid, *_ in seen}) == len(seen), "a server connection was read twice"
    leftovers = [row for row in seen if row[1:] != (default, "{}", 0)]
    assert not leftovers, f"left on server connections (pid, timeout, channels, prepared): {seen}"
    # Prepared statements where they survive: the whole session in session mode.
    assert all(prepared) if route == "session" else not any(prepared)


def test_statements_are_bounded_on_the_server_in_transaction_mode(pg_dsn: str) -> None:
    """With pooler=transaction each statement carries its own statement_timeout (the
    server cancels a slow one), in a transaction that ends with it: nothing is left."""
    default = default_statement_timeout(pg_dsn)
    with bouncer(pg_dsn, "transaction", 1) as running:
        options = pg8000_options(running.dsn(pg_dsn), 5.0)  # the socket waits longer

        def connect() -> Any:
            return pg8000.native.Connection(**options)

        store = PostgresStore(connect, 0.2, pooler="transaction")
        try:
            conn = store._connection()
            with pytest.raises(pg8000.native.DatabaseError, match="statement timeout"):
                store._execute(conn, "SELECT pg_catalog.pg_sleep(%s)", (1.0,))
            # Parameters travel as literals: every kind the flag sends comes back as sent.
            values = ('o\'brien \\ "x" ünï %s', -7, 2**53 + 1, 1700000000.123456, None)
            row = store._execute(conn, "SELECT %s::text, %s::bigint, %s::bigint, %s, %s", values)
            assert tuple(row[0]) == values
        finally:
            store.close()
        [(_, timeout, channels, prepared)] = server_connections(running, pg_dsn)
    assert (timeout, channels, prepared) == (default, "{}", 0)


def test_pooler_none_behind_a_transaction_pooler_switches_and_warns(
    pg_dsn: str, make_flag: MakeFlag, caplog: pytest.LogCaptureFixture
) -> None:
    """The default pooler=none through a transaction pooler by mistake: the first
    prepared statement lost (or found taken) switches the store to the transaction-mode
    behaviour and logs a warning naming the fix, once; the flag keeps working."""
    with bouncer(pg_dsn, "transaction", 1) as running:
        dsn = running.dsn(pg_dsn)
        with caplog.at_level(logging.WARNING, logger="leadership"):
            flags = [make_flag(dsn, f"p{i}", interval=INTERVAL, timeout=TIMEOUT) for i in range(3)]
            with OverlapWatch(flags) as watch:
                assert wait_for(lambda: any(flag.raised() for flag in flags), 3) is not None
                time.sleep(1.5)
                assert any(flag.raised() for flag in flags)
                watch.assert_no_overlap()
        warnings = [r for r in caplog.records if "add pooler=transaction" in r.getMessage()]
        switched = [flag._store._per_transaction for flag in flags]  # type: ignore[attr-defined]
        assert any(switched), "no store met a lost prepared statement"
        assert len(warnings) == sum(switched), "one warning per switched store"


def test_pooler_parameter_is_validated() -> None:
    """An unknown pooler value is refused with the choices; pg8000 never sees it."""
    with pytest.raises(leadership.ConfigurationError, match="pooler must be one of"):
        pooler_of("postgresql://u@h/db?pooler=statement")
    assert pooler_of("postgresql://u@h/db") == "none"
    options = pg8000_options("postgresql://u@h/db?pooler=transaction", 1.0)
    assert "pooler" not in options
    with pytest.raises(ValueError, match="pooler must be one of"):
        PostgresStore(lambda: None, 1.0, pooler="bogus")
