"""Fencing: ``flag.token`` per term, ``flag.guard(conn)`` inside the application's own
transaction (pg8000 and psycopg), a paused ex-holder's guarded write fails while the new
holder's succeeds, and no takeover commits while a guarded transaction is open."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pg8000.dbapi
import pytest
from prometheus_client import CollectorRegistry

import leadership
from leadership.dsn import pg8000_options
from tests.conftest import MakeFlag, admin_connect, execute
from tests.history import wait_or_fail

STEAL = (
    "UPDATE leadership_flags SET holder = %s, version = version + 1, timestamp = now() "
    "WHERE name = %s"
)


def row_version(dsn: str, name: str) -> int:
    rows = execute(dsn, "SELECT version FROM leadership_flags WHERE name = %s", (name,))
    return int(rows[0][0])


@pytest.fixture
def writes(pg_dsn: str) -> Iterator[str]:
    """A table the tests write to under a guard: (writer text, token bigint)."""
    table = f"fenced_{uuid.uuid4().hex[:10]}"
    execute(pg_dsn, f"CREATE TABLE {table} (writer text NOT NULL, token bigint NOT NULL)")
    yield table
    execute(pg_dsn, f"DROP TABLE IF EXISTS {table}")


def connect(driver: str, dsn: str) -> Any:
    """A connection in the driver's default (transactional) mode, as an application has it."""
    if driver == "psycopg":
        psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is an optional test dependency")
        return psycopg.connect(dsn)
    return pg8000.dbapi.connect(**pg8000_options(dsn, timeout=5.0))


def guarded_write(flag: leadership.Flag, conn: Any, table: str, writer: str) -> int:
    """In one transaction on ``conn``: guard, insert a row, commit; return the token."""
    try:
        token = flag.guard(conn)
        cursor = conn.cursor()
        cursor.execute(f"INSERT INTO {table} (writer, token) VALUES (%s, %s)", (writer, token))
        cursor.close()
        conn.commit()
        return token
    except BaseException:
        conn.rollback()
        raise


def test_token_is_constant_in_a_term_and_greater_in_later_terms(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    a = make_flag(pg_dsn, "a")
    assert a.wait_raised(timeout=2.0)
    first = a.token
    assert first is not None and first >= 1, "tokens are truthy"
    b = make_flag(pg_dsn, "b")
    assert b.token is None
    started = time.monotonic()
    while time.monotonic() - started < 0.8:  # across two renewals at least
        assert a.token == first
        assert b.token is None
        time.sleep(0.01)
    assert row_version(pg_dsn, flag_name) >= first + 1, "no renewal during the term"
    a.close()
    assert a.token is None
    assert b.wait_raised(timeout=2.0)
    second = b.token
    assert second is not None and second > first
    a_again = make_flag(pg_dsn, "a")  # a new instance under the old process name
    assert a_again.token is None
    b.close()
    assert b.token is None
    assert a_again.wait_raised(timeout=2.0)
    third = a_again.token
    assert third is not None and third > second


def test_lease_remaining_and_its_gauge(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, registry: CollectorRegistry
) -> None:
    a = make_flag(pg_dsn, "a", metrics_subsystem="fencing", metrics_registerer=registry)
    gauge = "fencing_leadership_flag_lease_remaining_seconds"
    labels = {"name": flag_name, "process": "a"}
    assert a.wait_raised(timeout=2.0)
    assert 0.0 < a.lease_remaining() <= 0.54
    sample = registry.get_sample_value(gauge, labels)
    assert sample is not None and 0.0 < sample <= 0.54
    b = make_flag(pg_dsn, "b")
    assert b.lease_remaining() == 0.0
    a.close()
    assert a.lease_remaining() == 0.0
    assert registry.get_sample_value(gauge, labels) == 0.0


@pytest.mark.parametrize("driver", ["pg8000", "psycopg"])
def test_guard_inside_a_transaction_succeeds_for_the_holder(
    pg_dsn: str, make_flag: MakeFlag, writes: str, driver: str
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    standby = make_flag(pg_dsn, "standby")
    conn = connect(driver, pg_dsn)
    try:
        assert guarded_write(holder, conn, writes, "holder") == holder.token
        assert guarded_write(holder, conn, writes, "holder") == holder.token  # reusable
        with pytest.raises(leadership.LeadershipLost):
            guarded_write(standby, conn, writes, "standby")
        holder.close()
        with pytest.raises(leadership.LeadershipLost):
            guarded_write(holder, conn, writes, "closed holder")
    finally:
        conn.close()
    rows = execute(pg_dsn, f"SELECT writer FROM {writes}")
    assert rows == [["holder"], ["holder"]]


def test_guard_checks_the_row_not_only_the_local_lease(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, writes: str
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    conn = connect("pg8000", pg_dsn)
    try:
        execute(pg_dsn, STEAL, ("thief", flag_name))  # behind the holder's back
        assert holder.raised(), "lowered already: too slow a machine for this check"
        with pytest.raises(leadership.LeadershipLost, match="thief"):
            guarded_write(holder, conn, writes, "holder")
    finally:
        conn.close()
    assert execute(pg_dsn, f"SELECT writer FROM {writes}") == []


def test_no_takeover_commits_while_a_guarded_transaction_is_open(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    conn = connect("pg8000", pg_dsn)
    thief = admin_connect(pg_dsn)
    try:
        cursor = thief.cursor()
        cursor.execute("SET lock_timeout = '100ms'")
        token = holder.guard(conn)  # the transaction stays open
        with pytest.raises(pg8000.dbapi.DatabaseError) as failure:
            cursor.execute(STEAL, ("thief", flag_name))
        assert failure.value.args[0]["C"] == "55P03", failure.value  # lock_not_available
        conn.commit()  # the guarded transaction ends: the same takeover goes through now
        cursor.execute(STEAL, ("thief", flag_name))
        assert row_version(pg_dsn, flag_name) >= token
        wait_or_fail(lambda: not holder.raised(), 1.0, "the holder sees the theft")
    finally:
        conn.close()
        thief.close()


CHILD = """
import sys

import pg8000.dbapi

import leadership
from leadership.dsn import pg8000_options

dsn, name, table = sys.argv[1:4]
flag = (
    leadership.new_flag().handle(dsn).name(name).process("paused")
    .interval(0.6).jitter(0).timeout(0.15).build()
)
if not flag.wait_raised(timeout=10):
    print("never raised", flush=True)
    sys.exit(1)
print("raised", flag.token, flush=True)
sys.stdin.readline()  # the parent stops and resumes this process meanwhile
print("resumed raised" if flag.raised() else "resumed lowered", flush=True)
conn = pg8000.dbapi.connect(**pg8000_options(dsn, timeout=5.0))
try:
    token = flag.guard(conn)
    cursor = conn.cursor()
    cursor.execute(f"INSERT INTO {table} (writer, token) VALUES (%s, %s)", ("paused", token))
    conn.commit()
    print("wrote", token, flush=True)
except leadership.LeadershipLost as error:
    conn.rollback()
    print("lost", error, flush=True)
conn.close()
flag.close()
"""


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of ``stream``, read on a thread ("" at the end)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.strip())
        lines.put("")

    threading.Thread(target=read, name="child output", daemon=True).start()
    return lines


def test_paused_holder_guarded_write_fails_while_the_new_holders_succeeds(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, writes: str, tmp_path: Path
) -> None:
    script = tmp_path / "paused_holder.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), pg_dsn, flag_name, writes],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert child.stdin is not None and child.stdout is not None
    output = lines_of(child.stdout)
    try:
        line = output.get(timeout=15.0)
        assert line.startswith("raised "), f"child said {line!r}"
        child_token = int(line.split()[1])
        new_holder = make_flag(pg_dsn, "new")
        os.kill(child.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        assert new_holder.wait_raised(timeout=3.0), "no takeover from the stopped holder"
        took = time.monotonic() - stopped
        assert took < 0.6 + 0.6, took  # the row expires one interval after its last renewal
        conn = connect("pg8000", pg_dsn)
        try:
            new_token = guarded_write(new_holder, conn, writes, "new")
        finally:
            conn.close()
        assert new_token > child_token
        child.stdin.write("go\n")
        child.stdin.flush()
        os.kill(child.pid, signal.SIGCONT)
        resumed = output.get(timeout=10.0)
        result = output.get(timeout=10.0)
        assert result.startswith("lost "), f"the paused holder's write: {resumed!r}, {result!r}"
        assert child.wait(timeout=10.0) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()
        child.stdin.close()
    rows = execute(pg_dsn, f"SELECT writer, token FROM {writes}")
    assert rows == [["new", new_token]]
    assert new_holder.raised() and new_holder.token == new_token


@pytest.mark.parametrize("driver", ["pg8000", "psycopg"])
def test_guard_refuses_an_autocommit_connection_outside_a_transaction(
    pg_dsn: str, make_flag: MakeFlag, driver: str
) -> None:
    """In autocommit mode the FOR SHARE lock would end with guard()'s own statement:
    the token returned would fence nothing."""
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    conn = connect(driver, pg_dsn)
    try:
        conn.autocommit = True
        with pytest.raises(leadership.LeadershipError, match="autocommit"):
            holder.guard(conn)
        if driver == "psycopg":  # an explicit transaction on an autocommit connection is fine
            with conn.transaction():
                assert holder.guard(conn) == holder.token
    finally:
        conn.close()


def test_guard_names_the_problem_with_a_connection_of_another_kind(
    pg_dsn: str, sqlite_dsn: str, make_flag: MakeFlag
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    conn = sqlite3.connect(sqlite_dsn[len("sqlite:///") :])
    try:
        with pytest.raises(leadership.LeadershipError, match="DB-API connection to the flag"):
            holder.guard(conn)
    finally:
        conn.close()
