"""Handles and the table: connection factories of every driver, reconnection, privileges,
incompatible schemas and SQL metacharacters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

import leadership
from tests.conftest import MakeFlag, execute
from tests.connections import ConnectionFactory
from tests.history import OverlapWatch, wait_for
from tests.rows import Row, create_table, is_sqlite, read_row, read_rows, run

INTERVAL = 0.6

NASTY = [
    "o'brien",
    "two''quotes",
    'double"quote',
    "back\\slash\\",
    "x'); DROP TABLE leadership_flags; --",
    "'; DELETE FROM leadership_flags WHERE ''='",
    "ünïcødé ☃ 旗 🚩",
    "%s %(name)s %% $1 ? :name",
    "tab\tnew\nline",
    "-- comment /* c */",
]


def test_sql_metacharacters_are_stored_literally(any_dsn: str, make_flag: MakeFlag) -> None:
    """Quotes, backslashes, injections, placeholders and unicode in the flag's name and
    process reach the row unchanged; renewals and the release find the row again."""
    suffix = uuid.uuid4().hex[:6]
    # Not a timing test: a slow interval and a long timeout keep a loaded machine out of it.
    flags = {
        text: make_flag(any_dsn, text, name=f"{text} {suffix}", interval=2.0, timeout=0.5)
        for text in NASTY
    }
    for text, flag in flags.items():
        assert flag.wait_raised(2), f"not raised: {text!r}"
        assert flag.name == f"{text} {suffix}" and flag.process == text

    def rows() -> dict[str, Row]:
        return {row.holder: row for row in read_rows(any_dsn).values() if suffix in row.name}

    first = rows()
    assert sorted(first) == sorted(NASTY), "rows not stored under the literal name and process"
    assert all(first[text].name == f"{text} {suffix}" for text in NASTY)

    def all_renewed() -> bool:
        now = rows()
        return len(now) == len(NASTY) and all(
            row.version > first[text].version for text, row in now.items()
        )

    assert wait_for(all_renewed, 4, step=0.05) is not None, "renewals did not find the rows"
    for flag in flags.values():
        flag.close()
    released = rows()
    assert all(released[text].age > 1000 for text in NASTY), "the release did not find a row"
    count = run(
        any_dsn, "SELECT count(*) FROM leadership_flags WHERE name LIKE %s", (f"% {suffix}",)
    )
    assert count[0][0] == len(NASTY)


def test_metacharacter_flags_do_not_interfere(any_dsn: str, make_flag: MakeFlag) -> None:
    """Names differing only in quoting are different flags."""
    flags = [make_flag(any_dsn, f"p{i}", name=name) for i, name in enumerate(["a'b", "a''b", "a"])]
    for flag in flags:
        assert flag.wait_raised(2)


# --- connection factories -------------------------------------------------------------


@pytest.mark.parametrize("driver", ["pg8000", "psycopg"])
def test_postgres_connection_factory_works_and_reconnects(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, driver: str
) -> None:
    factory = ConnectionFactory(pg_dsn, driver)
    flag = make_flag(pg_dsn, "p1", handle=factory)
    assert flag.wait_raised(2)
    assert factory.calls == 1
    assert factory.terminate() == 1, "the flag keeps one dedicated connection"
    assert wait_for(lambda: factory.calls >= 2, 3) is not None, "the factory was not called again"
    assert wait_for(lambda: factory.backends() == 1 and flag.raised(), 3) is not None
    renewals = factory.calls
    row = read_row(pg_dsn, flag_name)
    assert row is not None and row.holder == "p1"
    renewed = wait_for(lambda: (read_row(pg_dsn, flag_name) or row).version >= row.version + 2, 3)
    assert renewed is not None, "no renewals on the new connection"
    assert factory.calls == renewals, "it reconnected again without a reason"


def test_sqlite_connection_factory_works(sqlite_dsn: str, make_flag: MakeFlag) -> None:
    factory = ConnectionFactory(sqlite_dsn)
    flag = make_flag(sqlite_dsn, "p1", handle=factory)
    assert flag.wait_raised(2)
    other = make_flag(sqlite_dsn, "p2")
    assert wait_for(other.raised, 0.3) is None, "the DSN and the factory share one table"


@pytest.mark.parametrize("driver", ["pg8000", "psycopg"])
def test_factory_waiter_wakes_on_release(pg_dsn: str, make_flag: MakeFlag, driver: str) -> None:
    """LISTEN/NOTIFY works through the caller's driver too: with a 3 s interval the
    waiter would otherwise wait over a second."""
    holder = make_flag(pg_dsn, "holder", interval=3.0)
    assert holder.wait_raised(2)
    waiter = make_flag(pg_dsn, "waiter", interval=3.0, handle=ConnectionFactory(pg_dsn, driver))
    assert wait_for(waiter.raised, 0.3) is None
    started = time.monotonic()
    holder.close()
    took = wait_for(waiter.raised, 3.0)
    assert took is not None
    assert time.monotonic() - started < 0.5, "the waiter did not wake on the release"


def test_connection_blip_does_not_lower_the_flag(pg_dsn: str, make_flag: MakeFlag) -> None:
    """One failed renewal (server closed the connection) is retried well within the lease."""
    factory = ConnectionFactory(pg_dsn)
    flag = make_flag(pg_dsn, "p1", handle=factory, interval=1.2)
    assert flag.wait_raised(2)
    lowered: list[float] = []
    assert factory.terminate() == 1
    until = time.monotonic() + 1.2
    while time.monotonic() < until:
        if not flag.raised():
            lowered.append(time.monotonic())
        time.sleep(0.001)
    assert factory.calls >= 2, "it did not reconnect"
    assert not lowered, "a single failed renewal lowered the flag before its deadline"


def test_dsn_handle_reconnects_after_termination(pg_dsn: str, make_flag: MakeFlag) -> None:
    name = f"leadership-dsn-{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in pg_dsn else "?"
    flag = make_flag(f"{pg_dsn}{separator}application_name={name}", "p1")
    assert flag.wait_raised(2)
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s"
    )
    assert execute(pg_dsn, terminate, (name,))[0][0] == 1
    reconnected = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert wait_for(lambda: execute(pg_dsn, reconnected, (name,))[0][0] == 1, 3) is not None
    assert wait_for(flag.raised, 1) is not None


def test_flag_contends_again_once_its_factory_recovers(any_dsn: str, make_flag: MakeFlag) -> None:
    """The database goes away (the factory fails, connections drop) and comes back: the
    renewal thread keeps retrying and the flag is raised again."""
    factory = ConnectionFactory(any_dsn)
    flag = make_flag(any_dsn, "p1", handle=factory)
    assert flag.wait_raised(2)
    factory.cut()
    assert wait_for(lambda: not flag.raised(), 2) is not None
    calls = factory.calls
    assert wait_for(lambda: factory.calls > calls + 1, 2) is not None, "it stopped retrying"
    factory.restore()
    assert wait_for(flag.raised, 3 * INTERVAL) is not None, "not raised after recovery"


def test_factory_must_return_a_connection(make_flag: MakeFlag) -> None:
    with pytest.raises((leadership.StoreUnavailable, leadership.ConfigurationError)):
        make_flag("unused", "p1", handle=lambda: None)


# --- privileges and schemas -----------------------------------------------------------


@pytest.fixture
def limited_role(pg_dsn: str) -> Iterator[str]:
    """A login role that may use the flags table but create nothing; yields its DSN."""
    role = f"leadership_limited_{uuid.uuid4().hex[:10]}"
    create_table(pg_dsn)
    execute(pg_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        execute(pg_dsn, f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        execute(pg_dsn, f"GRANT USAGE ON SCHEMA public TO {role}")
        execute(pg_dsn, f"GRANT SELECT, INSERT, UPDATE ON leadership_flags TO {role}")
        yield pg_dsn.replace("://postgres@", f"://{role}@", 1)
    finally:
        execute(
            pg_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        execute(pg_dsn, f"DROP OWNED BY {role}")
        execute(pg_dsn, f"DROP ROLE {role}")


def test_role_without_create_privilege_works_when_the_table_exists(
    limited_role: str, make_flag: MakeFlag, flag_name: str, pg_dsn: str
) -> None:
    assert "://leadership_limited_" in limited_role
    with pytest.raises(Exception, match="permission denied"):
        execute(limited_role, "CREATE TABLE leadership_not_allowed (x int)")
    flag = make_flag(limited_role, "limited")
    assert flag.wait_raised(2)
    version = read_row(pg_dsn, flag_name)
    assert version is not None and version.holder == "limited"
    renewed = wait_for(
        lambda: (read_row(pg_dsn, flag_name) or version).version > version.version, 2
    )
    assert renewed is not None, "the limited role could not renew"
    flag.close()
    released = read_row(pg_dsn, flag_name)
    assert released is not None and released.age > 1000, "the limited role could not release"


def test_a_role_missing_a_grant_is_told_at_build(
    limited_role: str, make_flag: MakeFlag, pg_dsn: str
) -> None:
    role = limited_role.split("://", 1)[1].split("@", 1)[0]
    execute(pg_dsn, f"REVOKE UPDATE ON leadership_flags FROM {role}")
    with pytest.raises(leadership.SchemaError, match="lacks UPDATE") as caught:
        make_flag(limited_role, "limited")
    assert "GRANT SELECT, INSERT, UPDATE" in str(caught.value)


def test_role_without_create_privilege_gets_a_schema_error_when_the_table_is_missing(
    limited_role: str, make_flag: MakeFlag, pg_dsn: str
) -> None:
    schema = f"empty_{uuid.uuid4().hex[:10]}"
    role = limited_role.split("://", 1)[1].split("@", 1)[0]
    execute(pg_dsn, f"CREATE SCHEMA {schema}")
    execute(pg_dsn, f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    try:
        with pytest.raises(leadership.SchemaError, match="leadership_flags") as caught:
            make_flag(limited_role, "p1", table=f"{schema}.leadership_flags")
        assert "permission denied" in str(caught.value)
    finally:
        execute(pg_dsn, f"DROP SCHEMA {schema} CASCADE")


PG_BAD_TABLES = {
    "version": "name text PRIMARY KEY, holder text NOT NULL, version text NOT NULL, "
    "timestamp timestamptz NOT NULL",
    "holder": "name text PRIMARY KEY, version bigint NOT NULL, timestamp timestamptz NOT NULL",
    "timestamp": "name text PRIMARY KEY, holder text NOT NULL, version bigint NOT NULL, "
    "timestamp timestamp NOT NULL",
    "name": "name text, holder text NOT NULL, version bigint NOT NULL, "
    "timestamp timestamptz NOT NULL",
}
SQLITE_BAD_TABLES = {
    "version": "name TEXT PRIMARY KEY, holder TEXT NOT NULL, version TEXT NOT NULL, "
    "timestamp REAL NOT NULL",
    "holder": "name TEXT PRIMARY KEY, version INTEGER NOT NULL, timestamp REAL NOT NULL",
}


@pytest.fixture
def fresh_schema(pg_dsn: str) -> Iterator[str]:
    """An empty PostgreSQL schema, dropped after the test."""
    schema = f"schema_{uuid.uuid4().hex[:10]}"
    execute(pg_dsn, f"CREATE SCHEMA {schema}")
    yield schema
    execute(pg_dsn, f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize("column", sorted(PG_BAD_TABLES))
def test_incompatible_postgres_table_names_table_and_column(
    pg_dsn: str, fresh_schema: str, make_flag: MakeFlag, column: str
) -> None:
    execute(pg_dsn, f"CREATE TABLE {fresh_schema}.leadership_flags ({PG_BAD_TABLES[column]})")
    with pytest.raises(leadership.SchemaError) as caught:
        make_flag(pg_dsn, "p1", table=f"{fresh_schema}.leadership_flags")
    assert isinstance(caught.value, leadership.LeadershipError)
    assert "leadership_flags" in str(caught.value)
    assert column in str(caught.value)


@pytest.mark.parametrize("column", sorted(SQLITE_BAD_TABLES))
def test_incompatible_sqlite_table_names_table_and_column(
    sqlite_dsn: str, make_flag: MakeFlag, column: str
) -> None:
    run(sqlite_dsn, f"CREATE TABLE leadership_flags ({SQLITE_BAD_TABLES[column]})")
    with pytest.raises(leadership.SchemaError) as caught:
        make_flag(sqlite_dsn, "p1")
    assert "leadership_flags" in str(caught.value)
    assert column in str(caught.value)


def test_table_in_a_fresh_schema_is_created_with_the_documented_columns(
    pg_dsn: str, fresh_schema: str, make_flag: MakeFlag
) -> None:
    flag = make_flag(pg_dsn, "p1", table=f"{fresh_schema}.leadership_flags")
    assert flag.wait_raised(2)
    columns = execute(
        pg_dsn,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'leadership_flags' ORDER BY ordinal_position",
        (fresh_schema,),
    )
    assert [tuple(c) for c in columns] == [
        ("name", "text", "NO"),
        ("holder", "text", "NO"),
        ("version", "bigint", "NO"),
        ("timestamp", "timestamp with time zone", "NO"),
        ("lease_seconds", "double precision", "YES"),  # the holder's lease (Go ignores it)
        ("lease_version", "bigint", "YES"),
        ("lease_owner", "text", "YES"),  # the writing instance (duplicate names apart)
    ]


def test_sqlite_file_is_in_wal_mode(sqlite_dsn: str, make_flag: MakeFlag) -> None:
    flag = make_flag(sqlite_dsn, "p1")
    assert flag.wait_raised(2)
    assert is_sqlite(sqlite_dsn)
    assert run(sqlite_dsn, "PRAGMA journal_mode")[0][0] == "wal"


def test_two_flags_with_one_factory_each_never_overlap(any_dsn: str, make_flag: MakeFlag) -> None:
    a = make_flag(any_dsn, "a", handle=ConnectionFactory(any_dsn))
    b = make_flag(any_dsn, "b", handle=ConnectionFactory(any_dsn))
    with OverlapWatch([a, b]) as watch:
        assert wait_for(lambda: a.raised() or b.raised(), 2) is not None
        holder = a if a.raised() else b
        holder.close()
        other = b if holder is a else a
        assert wait_for(other.raised, 1) is not None
    watch.assert_no_overlap()
