"""Rows and tables changed under a running flag: a deleted row, a dropped table, versions
past the 32-bit range, and a time function shadowing ``now()`` on the search path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import leadership
from tests.conftest import MakeFlag, execute
from tests.connections import ConnectionFactory
from tests.history import wait_or_fail
from tests.rows import put_row, read_row, run


def _new_term(flag: leadership.Flag, old: int) -> bool:
    token = flag.token
    return token is not None and token != old


def _holder_after_its_row_vanished(
    dsn: str, make_flag: MakeFlag, flag_name: str
) -> tuple[leadership.Flag, int]:
    """A raised holder whose row is deleted under it, once it started a new term; and
    the token of its first term."""
    holder = make_flag(dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    first = holder.token
    assert first is not None
    run(dsn, "DELETE FROM leadership_flags WHERE name = %s", (flag_name,))
    wait_or_fail(lambda: _new_term(holder, first), 2.0, "a new term after the row vanished")
    return holder, first


def test_a_deleted_row_starts_a_new_term_with_a_greater_token(
    any_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    holder, first = _holder_after_its_row_vanished(any_dsn, make_flag, flag_name)
    second = holder.token
    assert second is not None and second > first, (first, second)
    row = read_row(any_dsn, flag_name)
    assert row is not None and row.version + 1 == second


def test_guard_agrees_with_raised_after_the_row_vanished(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    holder, _ = _holder_after_its_row_vanished(pg_dsn, make_flag, flag_name)
    conn = ConnectionFactory(pg_dsn)()
    try:
        assert holder.guard(conn) == holder.token
        conn.rollback()
    finally:
        conn.close()


def test_versions_beyond_32_bits_keep_working(
    any_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    put_row(any_dsn, flag_name, "gone", 2_147_483_646, age=100.0)
    holder = make_flag(any_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)

    def past_32_bits() -> bool:
        row = read_row(any_dsn, flag_name)
        return row is not None and row.version > 2_147_483_648

    wait_or_fail(past_32_bits, 3.0, "renewals past 2**31")
    assert holder.raised()


@pytest.fixture
def own_table_dsn(any_dsn: str) -> Iterator[str]:
    """The flags table of ``any_dsn``; on PostgreSQL a fresh database, as the test drops
    the table."""
    if any_dsn.startswith("sqlite:"):
        yield any_dsn
        return
    database = f"leadership_drop_{uuid.uuid4().hex[:10]}"
    execute(any_dsn, f'CREATE DATABASE "{database}"')
    base, _, _ = any_dsn.rpartition("/")
    query = any_dsn.partition("?")[2]
    try:
        yield f"{base}/{database}" + (f"?{query}" if query else "")
    finally:
        execute(any_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_a_dropped_table_is_created_again_by_the_running_holder(
    own_table_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    holder = make_flag(own_table_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    first = holder.token
    assert first is not None
    run(own_table_dsn, "DROP TABLE leadership_flags")
    wait_or_fail(lambda: _new_term(holder, first), 3.0, "a new term in a re-created table")
    row = read_row(own_table_dsn, flag_name)
    assert row is not None and row.holder == "holder"
    token = holder.token
    assert token is not None and token > first


def test_a_now_function_ahead_of_pg_catalog_does_not_change_the_time_authority(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    schema = f"shadow_{uuid.uuid4().hex[:10]}"
    execute(pg_dsn, f"CREATE SCHEMA {schema}")
    execute(
        pg_dsn,
        f"CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE sql "
        "AS $$ SELECT timestamptz '2000-01-01 00:00:00+00' $$",
    )
    try:
        factory = ConnectionFactory(pg_dsn, search_path=f"{schema}, pg_catalog, public")
        holder = make_flag(pg_dsn, "holder", handle=factory)
        assert holder.wait_raised(timeout=2.0)
        row = read_row(pg_dsn, flag_name)
        assert row is not None and 0 <= row.age < 5.0, f"stamped by the shadow now(): {row}"
        other = make_flag(pg_dsn, "other")
        assert not other.wait_raised(timeout=0.5), "a waiter took a fresh row"
    finally:
        execute(pg_dsn, f"DROP SCHEMA {schema} CASCADE")
