"""Prometheus metrics (the ancestor's names) and logging of a flag."""

from __future__ import annotations

import logging
import sqlite3
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from harness.proxy import TcpProxy
from tests.conftest import MakeFlag
from tests.connections import ConnectionFactory
from tests.history import wait_for
from tests.rows import create_table, is_sqlite, sqlite_path, steal

SUBSYSTEM = "background_tasks"
STATE = "background_tasks_leadership_flag_state"
TRANSITIONS = "background_tasks_leadership_flag_transitions_total"
ERRORS = "background_tasks_leadership_flag_renewal_errors_total"
DURATION_COUNT = "background_tasks_leadership_flag_renewal_duration_seconds_count"
REMAINING = "background_tasks_leadership_flag_lease_remaining_seconds"


def sample(registry: CollectorRegistry, metric: str, name: str, process: str) -> float | None:
    return registry.get_sample_value(metric, {"name": name, "process": process})


def with_metrics(registry: CollectorRegistry) -> dict[str, object]:
    return {"metrics_subsystem": SUBSYSTEM, "metrics_registerer": registry}


def test_state_gauge_is_one_for_the_holder_and_zero_for_the_other(
    any_dsn: str, make_flag: MakeFlag, flag_name: str, registry: CollectorRegistry
) -> None:
    holder = make_flag(any_dsn, "a", **with_metrics(registry))
    assert holder.wait_raised(2)
    other = make_flag(any_dsn, "b", **with_metrics(registry))
    assert wait_for(lambda: sample(registry, DURATION_COUNT, flag_name, "b") == 1, 2) is not None
    assert sample(registry, STATE, flag_name, "a") == 1.0
    assert sample(registry, STATE, flag_name, "b") == 0.0
    remaining = sample(registry, REMAINING, flag_name, "a")
    assert remaining is not None and 0 < remaining <= 0.6 * 0.9
    assert sample(registry, REMAINING, flag_name, "b") == 0.0
    holder.close()
    assert other.wait_raised(2)
    assert sample(registry, STATE, flag_name, "a") == 0.0
    assert sample(registry, STATE, flag_name, "b") == 1.0
    text = generate_latest(registry).decode()
    assert f'{STATE}{{name="{flag_name}",process="b"}} 1.0' in text


def test_state_gauge_follows_the_lease_not_the_last_check(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, registry: CollectorRegistry
) -> None:
    """The gauge reads raised() at scrape time: once the lease runs out it says 0 even
    though the renewal thread has not noticed yet."""
    factory = ConnectionFactory(pg_dsn)
    flag = make_flag(pg_dsn, "a", handle=factory, **with_metrics(registry))
    assert flag.wait_raised(2)
    factory.cut()
    assert wait_for(lambda: not flag.raised(), 2) is not None
    assert sample(registry, STATE, flag_name, "a") == 0.0


def test_two_flags_on_one_registry_do_not_collide(
    any_dsn: str, make_flag: MakeFlag, flag_name: str, registry: CollectorRegistry
) -> None:
    first = make_flag(any_dsn, "a", **with_metrics(registry))
    second = make_flag(any_dsn, "a", name=flag_name + "-2", **with_metrics(registry))
    third = make_flag(any_dsn, "a", name=flag_name + "-3", metrics_subsystem="other",
                      metrics_registerer=registry)  # fmt: skip
    for flag in (first, second, third):
        assert flag.wait_raised(2)
    assert sample(registry, STATE, flag_name, "a") == 1.0
    assert sample(registry, STATE, flag_name + "-2", "a") == 1.0
    assert (
        registry.get_sample_value(
            "other_leadership_flag_state", {"name": flag_name + "-3", "process": "a"}
        )
        == 1.0
    )
    second.close()
    assert sample(registry, STATE, flag_name, "a") == 1.0
    assert sample(registry, STATE, flag_name + "-2", "a") == 0.0


def test_separate_registries_are_separate(
    sqlite_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    a = make_flag(sqlite_dsn, "a", **with_metrics(one))
    assert a.wait_raised(2)  # before "b" exists: both contend for the one flag
    make_flag(sqlite_dsn, "b", **with_metrics(two))
    assert sample(one, STATE, flag_name, "a") == 1.0
    assert sample(one, STATE, flag_name, "b") is None
    assert sample(two, STATE, flag_name, "a") is None


def test_no_metrics_without_a_subsystem(
    sqlite_dsn: str, make_flag: MakeFlag, registry: CollectorRegistry
) -> None:
    flag = make_flag(sqlite_dsn, "a", metrics_registerer=registry)
    assert flag.wait_raised(2)
    assert "leadership" not in generate_latest(registry).decode()


def test_transitions_are_counted(
    any_dsn: str, make_flag: MakeFlag, flag_name: str, registry: CollectorRegistry
) -> None:
    flag = make_flag(any_dsn, "a", **with_metrics(registry))
    assert flag.wait_raised(2)
    assert sample(registry, TRANSITIONS, flag_name, "a") == 1.0
    steal(any_dsn, flag_name, "thief")
    assert wait_for(lambda: sample(registry, TRANSITIONS, flag_name, "a") == 2.0, 2) is not None
    assert wait_for(flag.raised, 2) is not None
    assert wait_for(lambda: sample(registry, TRANSITIONS, flag_name, "a") == 3.0, 1) is not None
    flag.close()
    assert sample(registry, TRANSITIONS, flag_name, "a") == 4.0
    assert sample(registry, STATE, flag_name, "a") == 0.0


def test_renewal_errors_are_counted_when_the_database_is_unreachable(
    any_dsn: str, make_flag: MakeFlag, flag_name: str, registry: CollectorRegistry
) -> None:
    """PostgreSQL: the connections drop and the factory fails. SQLite: another connection
    holds the file's write lock past the timeout."""
    factory = ConnectionFactory(any_dsn)
    handle: object = any_dsn if is_sqlite(any_dsn) else factory
    flag = make_flag(any_dsn, "a", handle=handle, **with_metrics(registry))
    assert flag.wait_raised(2)
    assert not sample(registry, ERRORS, flag_name, "a")
    checks = sample(registry, DURATION_COUNT, flag_name, "a")
    assert checks is not None and checks >= 1
    blocker = None
    if is_sqlite(any_dsn):
        blocker = sqlite3.connect(sqlite_path(any_dsn), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    else:
        factory.cut()
    try:
        counted = wait_for(lambda: (sample(registry, ERRORS, flag_name, "a") or 0) >= 2, 2)
        assert counted is not None, "failed renewals were not counted"
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()


# --- logging --------------------------------------------------------------------------


def messages(caplog: pytest.LogCaptureFixture, level: int, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == logger]


def test_raise_and_lower_are_logged_at_info_on_the_given_logger(
    any_dsn: str, make_flag: MakeFlag, flag_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.flags")
    flag = make_flag(any_dsn, "a", logger=logging.getLogger("app.flags"))
    assert flag.wait_raised(2)
    assert wait_for(lambda: bool(messages(caplog, logging.INFO, "app.flags")), 1) is not None
    infos = messages(caplog, logging.INFO, "app.flags")
    assert any("raised" in m and flag_name in m for m in infos), infos
    steal(any_dsn, flag_name, "thief")
    assert wait_for(lambda: not flag.raised(), 2) is not None
    lowered = wait_for(
        lambda: any("lowered" in m for m in messages(caplog, logging.INFO, "app.flags")), 1
    )
    assert lowered is not None
    infos = messages(caplog, logging.INFO, "app.flags")
    assert any("lowered" in m and "thief" in m for m in infos), infos
    debugs = messages(caplog, logging.DEBUG, "app.flags")
    assert debugs, "routine checks are logged at debug"
    assert not [r for r in caplog.records if r.name == "leadership"], "used the default logger"


def test_routine_checks_are_debug_and_close_is_info(
    sqlite_dsn: str, make_flag: MakeFlag, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.quiet")
    # Interval 1.2 s: half a second of slack per renewal, so a loaded machine does not
    # let the lease lapse (which would rightly log at info).
    flag = make_flag(sqlite_dsn, "a", logger=logging.getLogger("app.quiet"), interval=1.2)
    assert flag.wait_raised(2)
    time.sleep(1.3)  # two renewals
    infos = messages(caplog, logging.INFO, "app.quiet")
    assert len(infos) == 1, f"renewals logged above debug: {infos}"
    assert len(messages(caplog, logging.DEBUG, "app.quiet")) >= 2
    flag.close()
    infos = messages(caplog, logging.INFO, "app.quiet")
    assert any("lowered" in m and "closed" in m for m in infos), infos
    assert any("released" in m for m in infos), infos


def test_renewal_failures_are_errors_without_the_password(
    pg_dsn: str, make_flag: MakeFlag, caplog: pytest.LogCaptureFixture
) -> None:
    """The server trusts local connections, so a password in the DSN is accepted and
    ignored; the relay then goes silent and the renewal errors must not show it."""
    caplog.set_level(logging.DEBUG)
    create_table(pg_dsn)
    parts = urlsplit(pg_dsn)
    with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
        netloc = f"{parts.username}:s3cretpw@127.0.0.1:{proxy.port}"
        dsn = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        flag = make_flag(dsn, "a")
        assert flag.wait_raised(2)
        proxy.freeze()
        errors = wait_for(lambda: len(messages(caplog, logging.ERROR, "leadership")) >= 2, 3)
        assert errors is not None
        flag.close()
    assert "s3cretpw" not in caplog.text
    assert "s3cretpw" not in repr(flag)
