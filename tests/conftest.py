"""Shared fixtures: a real PostgreSQL (throwaway database), SQLite files, registries.

PostgreSQL comes from ``LEADERSHIP_TEST_DSN`` (default: the server on this machine).
When it cannot be reached, PostgreSQL tests skip with the reason, unless
``LEADERSHIP_REQUIRE_POSTGRES`` is set (as in CI): then they fail. Every test that reaches
PostgreSQL carries the ``postgres`` marker (added here for users of ``pg_dsn`` and of the
postgres param of ``any_dsn``), so ``-m "not postgres"`` needs no database.

One run covers both lease clocks: ``clock_module`` gives implementation-dependent tests the
pure-Python twin and the compiled module in turn. The compiled one, and every test marked
``compiled_only``, skips with the reason when the extension cannot be imported, unless
``LEADERSHIP_EXPECT_COMPILED`` is set (as in CI): then it fails.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry

import leadership
from harness.cluster import missing_tools
from harness.sql import connect_autocommit, run_sql
from leadership.backends import open_store

MakeFlag = Callable[..., leadership.Flag]
"""The type of the ``make_flag`` fixture."""

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test?sslmode=disable"
BASE_DSN = os.environ.get("LEADERSHIP_TEST_DSN", DEFAULT_DSN)
EXPECT_COMPILED = bool(os.environ.get("LEADERSHIP_EXPECT_COMPILED"))


def pytest_report_header() -> list[str]:
    return [
        f"leadership implementation: {leadership.IMPLEMENTATION}",
        f"PostgreSQL for tests: {leadership.dsn.redact(BASE_DSN)}",
    ]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``postgres`` every test that gets the test server through a fixture."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        through_any = callspec is not None and callspec.params.get("any_dsn") == "postgres"
        if "pg_dsn" in fixtures or through_any:
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("compiled_only") is not None:
        compiled_clock()


def compiled_clock() -> ModuleType:
    """The compiled lease clock module. When it cannot be imported, fail the calling test
    if ``LEADERSHIP_EXPECT_COMPILED`` is set, else skip it with the reason."""
    try:
        return importlib.import_module("leadership._clock")
    except ImportError as error:
        reason = f"the compiled leadership._clock cannot be imported: {error}"
        if EXPECT_COMPILED:
            pytest.fail(reason + " (LEADERSHIP_EXPECT_COMPILED is set)")
        pytest.skip(reason)


@pytest.fixture(
    params=["python", pytest.param("compiled", marks=pytest.mark.compiled_only)],
)
def clock_module(request: pytest.FixtureRequest) -> ModuleType:
    """Each lease clock module in turn: ``leadership._clock_py``, then ``leadership._clock``
    (same API: ``Lease``, ``now_ns``, ``jittered``, ``IMPLEMENTATION``)."""
    if request.param == "python":
        return importlib.import_module("leadership._clock_py")
    return compiled_clock()


forks_a_threaded_process = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"
    r":DeprecationWarning"
)
"""Mark for a test that calls ``os.fork()`` on purpose while a flag's thread runs.

Python 3.12+ warns on every fork of a process with several threads (the child gets only
the forking thread, and a lock another thread held stays held in it). That fork is the
user's situation such a test checks (the library's ``os.register_at_fork`` handlers), so
this exact warning is expected there and silenced there only. A test that forks merely to
run something elsewhere should start a subprocess instead. (An "error" filter cannot catch
an unmarked one: CPython drops this warning then, the fork being done; pytest's
configuration shows it always instead.)
"""


admin_connect = connect_autocommit
"""A pg8000 DB-API connection in autocommit mode (for test set-up only)."""
execute = run_sql
"""Run one statement on a fresh connection; return its rows."""


def require(reason: str | None, variable: str = "LEADERSHIP_REQUIRE_POSTGRES") -> None:
    """Skip the calling test with ``reason`` (something it needs is missing), or fail it
    when ``variable`` is set (as CI sets it): a skip there would hide a gap."""
    if reason:
        if os.environ.get(variable):
            pytest.fail(f"{reason} ({variable} is set)")
        pytest.skip(reason)


def require_cluster_tools() -> None:
    """The PostgreSQL server binaries for throwaway clusters (harness.cluster)."""
    require(missing_tools())


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a throwaway database on the test server, dropped after the session."""
    try:
        execute(BASE_DSN, "SELECT 1")
    except Exception as error:
        reason = f"PostgreSQL at {leadership.dsn.redact(BASE_DSN)} unreachable: {error}"
        if os.environ.get("LEADERSHIP_REQUIRE_POSTGRES"):
            pytest.fail(reason + " (LEADERSHIP_REQUIRE_POSTGRES is set)")
        pytest.skip(reason)
    database = f"leadership_test_{uuid.uuid4().hex[:12]}"
    try:
        execute(BASE_DSN, f'CREATE DATABASE "{database}"')
    except Exception:  # no CREATEDB privilege: use the given database as it is
        yield BASE_DSN
        return
    dsn = _with_database(BASE_DSN, database)
    try:
        # The table exists before any test: its one-time creation under a short test
        # timeout on a loaded machine would be noise (tests of creation make their own).
        open_store(dsn, timeout=10.0).close()  # creates the table, as build() would
        yield dsn
    finally:
        execute(BASE_DSN, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def flag_name() -> str:
    """A flag name no other test uses."""
    return f"flag-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def sqlite_dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flags.db'}"


@pytest.fixture(params=["postgres", "sqlite"])
def any_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store in turn: the PostgreSQL test database, then an SQLite file."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        return dsn
    return f"sqlite:///{tmp_path / 'flags.db'}"


@pytest.fixture
def make_flag(flag_name: str) -> Iterator[Callable[..., leadership.Flag]]:
    """Build flags with fast test timing (interval 0.6 s, jitter 0, timeout 0.15 s);
    every flag built is closed after the test."""
    built: list[leadership.Flag] = []

    def make(dsn: str, process: str, **options: Any) -> leadership.Flag:
        builder = leadership.new_flag().handle(options.pop("handle", dsn)).process(process)
        builder.name(options.pop("name", flag_name))
        builder.interval(options.pop("interval", 0.6)).jitter(options.pop("jitter", 0.0))
        builder.timeout(options.pop("timeout", 0.15))
        for key, value in options.items():
            getattr(builder, key)(value)
        flag = builder.build()
        built.append(flag)
        return flag

    yield make
    for flag in built:
        flag.close()
