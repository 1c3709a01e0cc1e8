"""Several hosts in one DSN (libpq's way), with ``target_session_attrs``: the parsing
without a server, then the choice of host against throwaway clusters, one of them a
streaming standby (read-only)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

import leadership
from harness.cluster import Cluster, free_port
from leadership.dsn import endpoint_of, pg8000_options, pg8000_targets
from leadership.errors import ConfigurationError
from tests.conftest import require_cluster_tools

PARSED = [
    ("postgresql://u@a:5432,b:5433/db", ["a:5432", "b:5433"], "any"),
    ("postgresql://u@/db?host=a,b&port=5432,5433", ["a:5432", "b:5433"], "any"),
    ("postgresql://u@a,b/db?port=6000", ["a:6000", "b:6000"], "any"),
    ("postgresql://u@a,b:7/db", ["a:5432", "b:7"], "any"),
    ("postgresql://u@[::1]:5,b/db", ["[::1]:5", "b:5432"], "any"),
    ("postgresql://u@x:1/db?host=a,b", ["a:1", "b:1"], "any"),
    ("postgresql://u@a,b/db?target_session_attrs=read-write", ["a:5432", "b:5432"], "read-write"),
    ("postgresql://u@a/db?target_session_attrs=primary", ["a:5432"], "primary"),
]


@pytest.mark.parametrize(("dsn", "endpoints", "attrs"), PARSED)
def test_hosts_are_parsed_as_libpq_does(dsn: str, endpoints: list[str], attrs: str) -> None:
    targets = pg8000_targets(dsn, 2.0)
    assert [endpoint_of(options) for options in targets.options] == endpoints
    assert targets.session_attrs == attrs
    assert targets.connect_timeout == 2.0
    assert all(o["user"] == "u" and o["database"] == "db" for o in targets.options)


def test_every_host_shares_the_other_parameters() -> None:
    dsn = "postgresql://u:secret@a:1,b:2/db?sslmode=disable&connect_timeout=4&application_name=x"
    targets = pg8000_targets(dsn, 1.0)
    assert targets.connect_timeout == 4.0
    for options in targets.options:
        assert options["password"] == "secret"
        assert options["ssl_context"] is False
        assert options["application_name"] == "x"


REFUSED = [
    ("postgresql://u:pw@a:1,b:2/db?port=1,2,3", "3 ports for 2 hosts"),
    ("postgresql://u:pw@a:x,b/db", "port must be a number"),
    ("postgresql://u:pw@a,b/db?target_session_attrs=standby", "a standby cannot hold it"),
    ("postgresql://u:pw@a,b/db?target_session_attrs=prefer-standby", "not supported"),
    ("postgresql://u:pw@a,b/db?target_session_attrs=writable", "must be one of"),
]


@pytest.mark.parametrize(("dsn", "reason"), REFUSED)
def test_mistakes_are_refused_with_the_password_redacted(dsn: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        pg8000_targets(dsn, 1.0)
    assert reason in str(caught.value)
    assert "pw" not in str(caught.value).replace("pw@", "")  # only redacted: u:***@
    assert ":***@" in str(caught.value)


def test_one_connection_options_refuse_several_hosts() -> None:
    with pytest.raises(ConfigurationError, match="several hosts"):
        pg8000_options("postgresql://u@a,b/db", 1.0)
    assert pg8000_options("postgresql://u@a,b/db", 1.0, index=1)["host"] == "b"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    """A primary and its streaming standby (read-only sessions, in recovery)."""
    require_cluster_tools()
    with Cluster() as primary:
        standby = primary.standby("hosts_standby")
        try:
            standby.start()
            primary.wait_streaming("hosts_standby")
            yield primary, standby
        finally:
            standby.remove()


def flag_on(dsn: str, name: str) -> leadership.Flag:
    return (
        leadership.new_flag().handle(dsn).name(name).process(f"p-{uuid.uuid4().hex[:6]}")
        .interval(1).timeout(0.3).build()
    )  # fmt: skip


def hosts_dsn(ports: list[int], **query: str) -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    text = "&".join(f"{key}={value}" for key, value in query.items())
    return f"postgresql://postgres@{hosts}/postgres" + (f"?{text}" if text else "")


@pytest.mark.postgres
@pytest.mark.parametrize("attrs", ["read-write", "primary"])
def test_the_writable_host_is_chosen_wherever_it_is_listed(
    pair: tuple[Cluster, Cluster], attrs: str
) -> None:
    primary, standby = pair
    dead = free_port()
    dsn = hosts_dsn([dead, standby.port, primary.port], target_session_attrs=attrs)
    flag = flag_on(dsn, f"hosts-{attrs}")
    with flag:
        assert flag.wait_raised(timeout=10)
    conn = primary.native()
    try:
        rows = conn.run("SELECT holder FROM leadership_flags WHERE name = :n", n=f"hosts-{attrs}")
    finally:
        conn.close()
    assert rows  # written on the primary (the standby would refuse the write)


@pytest.mark.postgres
def test_without_a_writable_host_the_error_names_every_host(
    pair: tuple[Cluster, Cluster],
) -> None:
    _, standby = pair
    dead = free_port()
    dsn = hosts_dsn([dead, standby.port], target_session_attrs="read-write", connect_timeout="2")
    dsn = dsn.replace("postgres@", "postgres:hunter2@")
    started = time.monotonic()
    with pytest.raises(leadership.StoreUnavailable) as caught:
        flag_on(dsn, "hosts-none")
    message = str(caught.value)
    assert time.monotonic() - started < 2 * 2 + 1  # each host within connect_timeout
    assert f"127.0.0.1:{dead}: " in message, message
    assert f"127.0.0.1:{standby.port}: read-only sessions" in message, message
    assert "hunter2" not in message


@pytest.mark.postgres
def test_any_takes_the_first_host_that_connects(pair: tuple[Cluster, Cluster]) -> None:
    primary, _ = pair
    flag = flag_on(hosts_dsn([free_port(), primary.port]), "hosts-any")
    with flag:
        assert flag.wait_raised(timeout=10)
