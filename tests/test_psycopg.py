"""psycopg 3 as a connection factory (``lambda: psycopg.connect(conninfo)``), end to end:
acquire, wait, handover woken by the release's notification, guard, reconnect, release."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.conftest import MakeFlag, execute

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is an optional test dependency")


class Factory:
    """``psycopg.connect(conninfo)``, counting its calls; connections carry a unique
    application_name so the test can find their backends."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.application = f"psycopg-{uuid.uuid4().hex[:8]}"
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return psycopg.connect(self.conninfo, application_name=self.application)


def release_state(dsn: str, name: str) -> list[list[object]]:
    return execute(
        dsn,
        "SELECT holder, timestamp = 'epoch'::timestamptz FROM leadership_flags WHERE name = %s",
        (name,),
    )


def test_psycopg_factory_end_to_end(pg_dsn: str, make_flag: MakeFlag, flag_name: str) -> None:
    factory_a, factory_b = Factory(pg_dsn), Factory(pg_dsn)
    # A long interval: the handover below is fast only if the release's NOTIFY wakes b.
    a = make_flag(pg_dsn, "a", handle=factory_a, interval=2.0)
    assert a.wait_raised(timeout=3.0)
    b = make_flag(pg_dsn, "b", handle=factory_b, interval=2.0)
    time.sleep(0.2)
    assert a.raised() and not b.raised() and b.token is None
    assert factory_a.calls >= 1 and factory_b.calls >= 1
    table = f"fenced_{uuid.uuid4().hex[:10]}"
    execute(pg_dsn, f"CREATE TABLE {table} (writer text NOT NULL, token bigint NOT NULL)")
    with psycopg.connect(pg_dsn) as conn:  # commits at the end of the block
        token = a.guard(conn)
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", ("a", token))
    assert execute(pg_dsn, f"SELECT writer, token FROM {table}") == [["a", token]]
    closing = time.monotonic()
    a.close()
    assert b.wait_raised(timeout=3.0)
    took = time.monotonic() - closing
    assert took < 0.8, f"b raised {took:.3f} s after a closed: was it woken by the release?"
    assert b.token is not None and b.token > token
    b.close()
    assert release_state(pg_dsn, flag_name) == [["b", True]]


def test_psycopg_flag_reconnects_through_the_factory(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    factory = Factory(pg_dsn)
    flag = make_flag(pg_dsn, "a", handle=factory)
    assert flag.wait_raised(timeout=3.0)
    token = flag.token
    calls = factory.calls
    terminated = execute(
        pg_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (factory.application,),
    )
    assert terminated == [[True]]
    deadline = time.monotonic() + 3.0
    while factory.calls == calls:
        assert time.monotonic() < deadline, "never reconnected"
        time.sleep(0.005)
    assert flag.wait_raised(timeout=2.0)
    assert flag.token == token  # nobody else wrote the row: the same term goes on
    time.sleep(0.35)  # a renewal on the new connection
    assert flag.raised()
