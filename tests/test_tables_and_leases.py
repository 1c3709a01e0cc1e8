"""One table whatever the roles and schemas, and a row that carries its holder's lease.

Since PostgreSQL 15 the secure pattern gives each role a schema named after it
(search_path ``"$user", public``): two services used to create and use a table each,
and were both raised. And a waiter judging a row by its own, shorter interval took it
while its holder was still within its lease.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import leadership
import leadership.admin
from tests.conftest import MakeFlag, execute
from tests.history import wait_for
from tests.rows import read_row, run


@dataclass(frozen=True)
class Database:
    """A throwaway database in which roles own private schemas (the secure pattern)."""

    dsn: str
    owner_dsn: str

    def as_role(self, role: str) -> str:
        return self.dsn.replace("://postgres@", f"://{role}@", 1)


@pytest.fixture
def private_schemas(pg_dsn: str) -> Iterator[tuple[Database, list[str]]]:
    """A fresh database and two login roles, each with a schema of its own and no
    right to create in public; yields the database and the role names."""
    suffix = uuid.uuid4().hex[:8]
    database = f"leadership_roles_{suffix}"
    roles = [f"svc_a_{suffix}", f"svc_b_{suffix}"]
    execute(pg_dsn, f'CREATE DATABASE "{database}"')
    base = pg_dsn.rsplit("/", 1)[0]
    query = pg_dsn.partition("?")[2]
    dsn = f"{base}/{database}" + (f"?{query}" if query else "")
    try:
        execute(dsn, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for role in roles:
            execute(pg_dsn, f"CREATE ROLE {role} LOGIN")
            execute(dsn, f"CREATE SCHEMA {role} AUTHORIZATION {role}")
        yield Database(dsn, pg_dsn), roles
    finally:
        execute(pg_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for role in roles:
            execute(pg_dsn, f"DROP ROLE IF EXISTS {role}")


def test_two_roles_never_silently_use_two_tables(
    private_schemas: tuple[Database, list[str]], make_flag: MakeFlag, flag_name: str
) -> None:
    database, (role_a, role_b) = private_schemas
    a = make_flag(database.as_role(role_a), "a")  # creates role_a.leadership_flags
    assert a.wait_raised(timeout=2.0)
    # The other service finds that table, cannot use it, and says so: no second table.
    with pytest.raises(leadership.SchemaError, match=f"{role_a}.leadership_flags"):
        make_flag(database.as_role(role_b), "b")
    assert run(database.dsn, f"SELECT to_regclass('{role_b}.leadership_flags')") == [[None]]
    # Granted access, it contends on the same row.
    execute(database.dsn, f"GRANT USAGE ON SCHEMA {role_a} TO {role_b}")
    execute(database.dsn, f"GRANT SELECT, INSERT, UPDATE ON {role_a}.leadership_flags TO {role_b}")
    b = make_flag(database.as_role(role_b), "b")
    assert not b.wait_raised(timeout=0.5)
    a.close()
    assert b.wait_raised(timeout=2.0)


def test_several_tables_of_that_name_are_refused_with_every_name(
    private_schemas: tuple[Database, list[str]], make_flag: MakeFlag
) -> None:
    database, (role_a, role_b) = private_schemas
    for role in (role_a, role_b):
        execute(database.dsn, f"CREATE TABLE {role}.leadership_flags (name text PRIMARY KEY)")
    with pytest.raises(leadership.SchemaError) as caught:
        make_flag(database.dsn, "p")
    message = str(caught.value)
    assert f"{role_a}.leadership_flags" in message and f"{role_b}.leadership_flags" in message
    assert ".table(" in message and "--table" in message


def test_a_named_table_is_used_and_shown_qualified(
    private_schemas: tuple[Database, list[str]], make_flag: MakeFlag, flag_name: str
) -> None:
    database, (role_a, _) = private_schemas
    execute(database.dsn, f"CREATE SCHEMA jobs AUTHORIZATION {role_a}")
    flag = make_flag(database.as_role(role_a), "a", table="jobs.leadership_flags")
    assert flag.wait_raised(timeout=2.0)
    rows = run(
        database.dsn, "SELECT holder FROM jobs.leadership_flags WHERE name = %s", (flag_name,)
    )
    assert rows == [["a"]]
    listing = leadership.admin.list_flags(database.dsn, 30, 1, table="jobs.leadership_flags")
    assert listing.table == "jobs.leadership_flags"


def test_a_table_named_without_its_schema_is_looked_up_in_the_whole_database(
    private_schemas: tuple[Database, list[str]], make_flag: MakeFlag
) -> None:
    """``.table("leadership_flags")`` (or LEADERSHIP_TABLE=leadership_flags) must not
    resolve through each role's search path: two roles would use two tables."""
    database, (role_a, _) = private_schemas
    execute(database.dsn, f"CREATE TABLE {role_a}.leadership_flags (name text PRIMARY KEY)")
    execute(database.dsn, "CREATE TABLE public.leadership_flags (name text PRIMARY KEY)")
    with pytest.raises(leadership.SchemaError, match="several tables"):
        make_flag(database.as_role(role_a), "a", table="leadership_flags")


def test_a_dropped_table_is_created_again_where_it_was(
    private_schemas: tuple[Database, list[str]], make_flag: MakeFlag
) -> None:
    database, (role_a, _) = private_schemas
    execute(
        database.dsn,
        "CREATE TABLE public.leadership_flags (name text PRIMARY KEY, holder text NOT NULL, "
        "version bigint NOT NULL, timestamp timestamptz NOT NULL, "
        "lease_seconds double precision, lease_version bigint, lease_owner text)",
    )
    execute(database.dsn, f"GRANT SELECT, INSERT, UPDATE ON public.leadership_flags TO {role_a}")
    flag = make_flag(database.as_role(role_a), "a")  # uses public.leadership_flags
    assert flag.wait_raised(timeout=2.0)
    execute(database.dsn, "DROP TABLE public.leadership_flags")
    time.sleep(1.0)  # renewals try to create it again: in public, which the role may not
    assert run(database.dsn, f"SELECT to_regclass('{role_a}.leadership_flags')") == [[None]]
    assert wait_for(lambda: not flag.raised(), 1.0) is not None


def test_a_view_of_that_name_is_named_in_the_error(
    private_schemas: tuple[Database, list[str]], make_flag: MakeFlag
) -> None:
    database, _ = private_schemas
    execute(database.dsn, "CREATE VIEW public.leadership_flags AS SELECT 1 AS name")
    with pytest.raises(leadership.SchemaError, match="not a table"):
        make_flag(database.dsn, "p")


def test_a_bad_table_name_is_refused() -> None:
    with pytest.raises(leadership.ConfigurationError, match="table"):
        leadership.new_flag().handle("sqlite:///x.db").name("n").table("a.b.c").build()


# --- the row carries its lease --------------------------------------------------------


def _stamp_lease(dsn: str, name: str, lease: float, age: float, trusted: bool = True) -> None:
    """Make ``name``'s row look written ``age`` s ago by a holder whose lease is ``lease``."""
    run(
        dsn,
        "INSERT INTO leadership_flags (name, holder, version, timestamp, lease_seconds, "
        "lease_version) VALUES (%s, 'stalled', 7, now() - make_interval(secs => %s), %s, %s) "
        "ON CONFLICT (name) DO NOTHING",
        (name, age, lease, 7 if trusted else 6),
    )


def test_a_waiter_with_a_shorter_interval_respects_the_holders_lease(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    """A rolling change of the interval from 4 s down to 1 s: the old holder, stalled,
    keeps its lease (4 s from its last renewal) against the new, shorter one."""
    _stamp_lease(pg_dsn, flag_name, lease=4.0, age=1.5)
    started = time.monotonic()
    waiter = make_flag(pg_dsn, "new", interval=1.0, timeout=0.2)
    took = wait_for(waiter.raised, 4.0)
    assert took is not None, "never raised after the holder's lease ran out"
    waited = time.monotonic() - started
    assert waited > 2.5 - 0.2, f"took the row {waited:.2f} s after build, within the holder's lease"


def test_a_waiter_with_a_longer_interval_fails_over_at_the_holders_lease(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    _stamp_lease(pg_dsn, flag_name, lease=1.0, age=0.5)
    waiter = make_flag(pg_dsn, "new", interval=4.0, timeout=0.5)
    took = wait_for(waiter.raised, 3.0)
    assert took is not None and took < 1.5, f"waited {took} s for a 1 s lease"


def test_an_untrusted_recorded_lease_is_ignored(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    """A row renewed by a writer that does not know the lease columns (the Go package)
    keeps a lease_version behind its version: waiters use their own interval."""
    _stamp_lease(pg_dsn, flag_name, lease=30.0, age=1.5, trusted=False)
    waiter = make_flag(pg_dsn, "new", interval=1.0, timeout=0.2)
    assert wait_for(waiter.raised, 1.0) is not None


def test_the_holder_records_its_lease_and_status_uses_it(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    holder = make_flag(pg_dsn, "holder", interval=3.0, timeout=0.3)
    assert holder.wait_raised(timeout=2.0)
    rows = run(
        pg_dsn,
        "SELECT lease_seconds, lease_version = version FROM leadership_flags WHERE name = %s",
        (flag_name,),
    )
    assert rows == [[3.0, True]]
    (row,) = leadership.admin.read_flags(pg_dsn, 999.0, 1.0, flag_name)  # no --interval
    assert row.interval == 3.0 and 0 < row.left <= 3.0
    assert read_row(pg_dsn, flag_name) is not None


def test_without_the_right_to_add_the_lease_columns_it_works_and_warns_once(
    private_schemas: tuple[Database, list[str]],
    make_flag: MakeFlag,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database, (role_a, _) = private_schemas
    execute(
        database.dsn,  # a table made by version 0.1 (or the Go package), owned by another role
        "CREATE TABLE public.leadership_flags (name text PRIMARY KEY, holder text NOT NULL, "
        "version bigint NOT NULL, timestamp timestamptz NOT NULL)",
    )
    execute(database.dsn, f"GRANT SELECT, INSERT, UPDATE ON public.leadership_flags TO {role_a}")
    with caplog.at_level("WARNING", logger="leadership"):
        flag = make_flag(database.as_role(role_a), "a")
        assert flag.wait_raised(timeout=2.0)
        time.sleep(0.5)  # a few renewals: no warning for each
    warnings = [r.getMessage() for r in caplog.records if "lease columns" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "same" in warnings[0]  # every process of the flag must use the same interval
