"""Database cost of a flag per check: statements, round trips, client and server time.

A holder and a waiting process of one flag run for a window of wall time, once with the
DSN handle (pg8000, as users write it) and once with a psycopg connection factory (the
callable handle). Each flag reaches the server through its own ``WireCounter`` relay,
which counts statements and round trips on the wire. When a throwaway cluster with
``pg_stat_statements`` can be started (``harness.cluster``), each of the four flags
connects as its own role, so the server's own statement counts and plan + execution
time can be read per flag; otherwise the server figures are None.

Figures cover only the window, which starts once every flag has made its first check:
every statement in it is the campaign's (set-up statements run at connection time).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from typing import Any

from prometheus_client import CollectorRegistry
from wire_counter import WireCounter, WireCounts

import leadership
from harness.cluster import Cluster
from leadership.dsn import pg8000_options

__all__ = ["GO_ANCESTOR_ROUND_TRIPS", "RoleCost", "measure"]

GO_ANCESTOR_ROUND_TRIPS = 3
"""Statements per check of the Go ancestor: SELECT now(), SELECT the row, INSERT/UPDATE."""

INTERVAL, JITTER, TIMEOUT = 0.6, 0.1, 0.2
DRIVERS = ("pg8000", "psycopg")


def drivers() -> tuple[str, ...]:
    """The drivers to measure: psycopg only where it is installed."""
    return tuple(driver for driver in DRIVERS if driver == "pg8000" or find_spec(driver))


ROLES = ("holder", "waiting")
SUBSYSTEM = "bench"
STATISTICS_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "on",
}
"""Server settings of the throwaway cluster: per-statement counts and timings."""


SETUP_MARKERS = ("set_config(", "LISTEN ", "pg_attribute", "pg_index", "CREATE ")
"""Text found only in the statements a store sends once per connection."""


def classify(sql: str) -> str:
    """The kind of a statement the flag sends: check, release, setup (once per
    connection) or other (anything else, counted against the checks)."""
    if "ON CONFLICT" in sql:
        return "check"
    if "pg_notify" in sql:
        return "release"
    if any(marker in sql for marker in SETUP_MARKERS):
        return "setup"
    return "other"


@dataclass(frozen=True)
class RoleCost:
    """One flag's cost per check over the window."""

    driver: str
    role: str
    checks: int
    failed_checks: int  # the flag's own error counter over the window
    setup_statements: int  # once-per-connection statements in the window (reconnections)
    statements_per_check: float  # every statement on the wire but set-up ones / checks
    round_trips_per_check: float  # client turns charged to checks / checks
    median_round_trips: float  # of one check (a driver preparing once adds to the mean only)
    client_ms_per_check: float | None  # the flag's own check-duration histogram
    server_statements_per_check: float | None  # pg_stat_statements calls but set-up / checks
    server_ms_per_check: float | None  # pg_stat_statements plan + execution time


@dataclass
class _Contender:
    driver: str
    role: str
    relay: WireCounter
    registry: CollectorRegistry
    user: str
    flag: leadership.Flag | None = None


def _histogram(contender: _Contender, name: str) -> tuple[float, float, float]:
    """(checks done, seconds they took, checks failed) from the flag's own metrics."""
    labels = {"name": name, "process": contender.role}
    prefix = f"{SUBSYSTEM}_leadership_flag_renewal"
    value = contender.registry.get_sample_value
    count = value(prefix + "_duration_seconds_count", labels) or 0.0
    total = value(prefix + "_duration_seconds_sum", labels) or 0.0
    errors = value(prefix + "_errors_total", labels) or 0.0
    return count, total, errors


def _handle(driver: str, user: str, database: str, port: int) -> str | Callable[[], Any]:
    if driver == "pg8000":
        return f"postgresql://{user}@127.0.0.1:{port}/{database}?sslmode=disable"

    def connect() -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=port, user=user, dbname=database,
            sslmode="disable", gssencmode="disable", connect_timeout=5,
        )  # fmt: skip

    return connect


@dataclass
class _Server:
    target: tuple[str, int] | str  # where the relays connect
    database: str
    cluster: Cluster | None
    note: str


@contextlib.contextmanager
def _server(base_dsn: str, use_cluster: bool) -> Iterator[_Server]:
    """A scratch cluster with pg_stat_statements and one role per flag when one can be
    started (and ``use_cluster``), else the server of ``base_dsn``."""
    cluster: Cluster | None = None
    note = "server figures need pg_stat_statements (not measured)"
    if use_cluster:
        cluster = Cluster(STATISTICS_SETTINGS)
        try:
            cluster.start()
            note = "server figures from pg_stat_statements on a throwaway cluster"
        except Exception as error:
            cluster.remove()
            cluster = None
            note = f"no throwaway cluster with pg_stat_statements ({error})"
    try:
        if cluster is not None:
            admin = cluster.connect()
            try:
                cursor = admin.cursor()
                cursor.execute("CREATE EXTENSION pg_stat_statements")
                for driver in drivers():
                    for role in ROLES:
                        cursor.execute(f"CREATE ROLE bench_{driver}_{role} LOGIN SUPERUSER")
            finally:
                admin.close()
            yield _Server(("127.0.0.1", cluster.port), "postgres", cluster, note)
        else:
            options = pg8000_options(base_dsn, timeout=10)
            target = options.get("unix_sock") or (options["host"], options["port"])
            yield _Server(target, options["database"], None, note)
    finally:
        if cluster is not None:
            cluster.remove()


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _has_checked(relay: WireCounter) -> bool:
    return relay.counts().statements["check"] >= 1


def _start(contender: _Contender, server: _Server, name: str) -> None:
    contender.flag = (
        leadership.new_flag()
        .handle(_handle(contender.driver, contender.user, server.database, contender.relay.port))
        .name(f"{name}-{contender.driver}")
        .process(contender.role)
        .interval(INTERVAL)
        .jitter(JITTER)
        .timeout(TIMEOUT)
        .metrics_subsystem(SUBSYSTEM)
        .metrics_registerer(contender.registry)
        .build()
    )
    if contender.role == "holder":
        _wait(contender.flag.raised, 10, f"the {contender.driver} holder to raise its flag")


def _cost(
    contender: _Contender, seen: WireCounts, histogram: tuple[float, ...], server: Any
) -> RoleCost:
    checks = seen.statements["check"]
    count, total, errors = histogram
    calls, check_calls, check_ms = server
    nan = float("nan")
    setup = seen.statements["setup"]
    return RoleCost(
        driver=contender.driver,
        role=contender.role,
        checks=checks,
        failed_checks=int(errors),
        setup_statements=setup,
        statements_per_check=(seen.total_statements - setup) / checks if checks else nan,
        round_trips_per_check=seen.round_trips["check"] / checks if checks else nan,
        median_round_trips=seen.median_round_trips("check"),
        client_ms_per_check=total / count * 1000 if count else None,
        server_statements_per_check=calls / checks if calls and checks else None,
        server_ms_per_check=check_ms / check_calls if check_calls else None,
    )


def measure(base_dsn: str, window: float, use_cluster: bool = True) -> tuple[list[RoleCost], str]:
    """Run the four flags for ``window`` seconds; return their costs and a note on the
    source of the server figures."""
    base_user = pg8000_options(base_dsn, timeout=10)["user"]
    name = f"bench-{uuid.uuid4().hex[:10]}-dbcost"
    with _server(base_dsn, use_cluster) as server:
        contenders: list[_Contender] = []
        try:
            for role in ROLES:
                for driver in drivers():
                    user = f"bench_{driver}_{role}" if server.cluster else base_user
                    relay = WireCounter(server.target, classify)
                    contenders.append(_Contender(driver, role, relay, CollectorRegistry(), user))
                    _start(contenders[-1], server, name)
            for contender in contenders:
                _wait(partial(_has_checked, contender.relay), 10, "a first check")
            stats = server.cluster.connect() if server.cluster else None
            if stats is not None:
                stats.cursor().execute("SELECT pg_stat_statements_reset()")
            before = [(c.relay.counts(), _histogram(c, f"{name}-{c.driver}")) for c in contenders]
            time.sleep(window)
            after = [(c.relay.counts(), _histogram(c, f"{name}-{c.driver}")) for c in contenders]
            figures = _server_figures(stats) if stats is not None else {}
            if stats is not None:
                stats.close()
        finally:
            for contender in contenders:
                if contender.flag is not None:
                    contender.flag.close()
                contender.relay.close()
    return [
        _cost(
            contender,
            seen_after - seen_before,
            tuple(a - b for a, b in zip(histogram_after, histogram_before, strict=True)),
            figures.get(contender.user, (0, 0, 0.0)),
        )
        for contender, (seen_before, histogram_before), (seen_after, histogram_after) in zip(
            contenders, before, after, strict=True
        )
    ], server.note


def _server_figures(stats: Any) -> dict[str, tuple[int, int, float]]:
    """Per role: (calls but set-up ones, check calls, check plan + execution ms)."""
    cursor = stats.cursor()
    cursor.execute(
        "SELECT r.rolname, s.query, s.calls, s.total_exec_time + s.total_plan_time "
        "FROM pg_stat_statements AS s JOIN pg_roles AS r ON r.oid = s.userid "
        "WHERE r.rolname LIKE 'bench_%'"
    )
    figures: dict[str, tuple[int, int, float]] = {}
    for role, query, calls, ms in cursor.fetchall():
        total, check_calls, check_ms = figures.get(role, (0, 0, 0.0))
        kind = classify(query)
        if kind == "check":
            check_calls += calls
            check_ms += ms
        if kind != "setup":
            total += calls
        figures[role] = (total, check_calls, check_ms)
    return figures
