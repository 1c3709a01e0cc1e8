"""Every bad input of ``build()``, the defaults, and failures to reach the database."""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import leadership
from leadership.timing import Timing

SECRET = "s3cretpw"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def builder(handle: Any = None, name: Any = "flag", **options: Any) -> leadership.FlagBuilder:
    """A builder with fast test timing; ``options`` call the setters of the same name."""
    made = leadership.new_flag()
    if handle is not None:
        made.handle(handle)
    if name is not None:
        made.name(name)
    made.interval(options.pop("interval", 0.6)).jitter(options.pop("jitter", 0.0))
    made.timeout(options.pop("timeout", 0.15))
    for key, value in options.items():
        getattr(made, key)(value)
    return made


def refused(made: leadership.FlagBuilder, parameter: str) -> leadership.ConfigurationError:
    """Build, expect a ConfigurationError for ``parameter``, and return it."""
    with pytest.raises(leadership.ConfigurationError) as caught:
        made.build()
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.parameter == parameter
    assert parameter in str(error)
    return error


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- mandatory parameters -------------------------------------------------------------


def test_missing_handle_is_refused(sqlite_dsn: str) -> None:
    error = refused(builder(handle=None), "handle")
    assert "missing" in str(error)


def test_missing_name_is_refused(sqlite_dsn: str) -> None:
    error = refused(builder(sqlite_dsn, name=None), "name")
    assert "missing" in str(error)


@pytest.mark.parametrize("name", ["", "   ", 42, b"bytes", "nul\x00inside"])
def test_bad_name_is_refused(sqlite_dsn: str, name: Any) -> None:
    refused(builder(sqlite_dsn, name=name), "name")


@pytest.mark.parametrize("process", ["", " ", 7, "nul\x00inside"])
def test_bad_process_is_refused(sqlite_dsn: str, process: Any) -> None:
    refused(builder(sqlite_dsn, process=process), "process")


def test_validation_happens_before_connecting() -> None:
    """A bad parameter is reported at once, even when the database is unreachable."""
    started = time.monotonic()
    refused(builder("postgresql://postgres@192.0.2.1:5432/test", interval=-1), "interval")
    assert time.monotonic() - started < 0.5


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interval", [0, -1, -0.5, math.nan, math.inf, -math.inf, "30", None, True, timedelta(0)]
)
def test_bad_interval_is_refused(sqlite_dsn: str, interval: Any) -> None:
    refused(builder(sqlite_dsn, interval=interval), "interval")


@pytest.mark.parametrize("jitter", [-0.01, 1, 1.0, 1.5, -1, math.nan, math.inf, "0.2", None, True])
def test_bad_jitter_is_refused(sqlite_dsn: str, jitter: Any) -> None:
    error = refused(builder(sqlite_dsn, jitter=jitter), "jitter")
    if isinstance(jitter, float) and math.isfinite(jitter):
        assert "[0, 1)" in str(error)


@pytest.mark.parametrize(
    "timeout", [0, -0.1, math.nan, math.inf, "1", None, False, timedelta(seconds=-1)]
)
def test_bad_timeout_is_refused(sqlite_dsn: str, timeout: Any) -> None:
    refused(builder(sqlite_dsn, timeout=timeout), "timeout")


def test_timeout_too_large_for_the_lease_is_refused_with_the_rule(sqlite_dsn: str) -> None:
    # interval 30, jitter 0.2: timeout <= 30 * 0.9 - 15 * 1.2 = 9 s.
    made = leadership.new_flag().handle(sqlite_dsn).name("flag").interval(30).timeout(9.5)
    error = refused(made, "timeout")
    text = str(error)
    assert "interval" in text and "jitter" in text
    assert "9" in text, "the message gives the largest timeout allowed"


def test_timeout_at_the_limit_is_accepted(make_flag: Callable[..., leadership.Flag]) -> None:
    limit = Timing(interval=1.0, jitter=0.1, timeout=0.01).max_timeout
    assert 0 < limit < 1.0
    with pytest.raises(leadership.ConfigurationError):
        Timing(interval=1.0, jitter=0.1, timeout=limit * 1.01)
    assert Timing(interval=1.0, jitter=0.1, timeout=limit).timeout == limit


def test_default_timeout_needs_a_long_enough_interval(sqlite_dsn: str) -> None:
    """With the default timeout (1 s) and jitter (0.2), a 2 s interval is too short."""
    made = leadership.new_flag().handle(sqlite_dsn).name("flag").interval(2)
    refused(made, "timeout")


def test_timedelta_durations_are_accepted(
    make_flag: Callable[..., leadership.Flag], sqlite_dsn: str
) -> None:
    flag = make_flag(
        sqlite_dsn,
        "p1",
        interval=timedelta(milliseconds=600),
        timeout=timedelta(milliseconds=150),
    )
    assert flag.timing.interval == pytest.approx(0.6)
    assert flag.timing.timeout == pytest.approx(0.15)
    assert flag.wait_raised(5)


# --- defaults -------------------------------------------------------------------------


def test_defaults(sqlite_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="leadership")
    made = leadership.new_flag().handle(sqlite_dsn).name("defaults")
    with made.build() as flag:
        assert flag.process == f"{socket.gethostname()}-{os.getpid()}"
        assert flag.name == "defaults"
        assert flag.timing.interval == 30.0
        assert flag.timing.jitter == 0.2
        assert flag.timing.timeout == 1.0
        assert flag.wait_raised(5)
    assert any(r.name == "leadership" and "raised" in r.getMessage() for r in caplog.records), (
        "the default logger is logging.getLogger('leadership')"
    )


def test_setters_chain() -> None:
    made = leadership.new_flag()
    assert made.handle("sqlite:///x.db") is made
    assert made.name("n") is made
    assert made.process("p") is made
    assert made.interval(1) is made
    assert made.jitter(0.1) is made
    assert made.timeout(0.1) is made
    assert made.logger(logging.getLogger("x")) is made
    assert made.metrics_subsystem("s") is made


def test_bad_logger_is_refused(sqlite_dsn: str) -> None:
    refused(builder(sqlite_dsn, logger="leadership"), "logger")


@pytest.mark.parametrize("subsystem", ["", "has space", "1digit", "dash-ed", 5])
def test_bad_metrics_subsystem_is_refused(sqlite_dsn: str, subsystem: Any) -> None:
    refused(builder(sqlite_dsn, metrics_subsystem=subsystem), "metrics_subsystem")


def test_bad_metrics_registerer_is_refused(sqlite_dsn: str) -> None:
    refused(builder(sqlite_dsn, metrics_registerer=object()), "metrics_registerer")


# --- handles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handle", "scheme"),
    [
        (f"mysql://root:{SECRET}@127.0.0.1/test", "mysql"),
        (f"redis://:{SECRET}@127.0.0.1:6379", "redis"),
        ("flags.db", "(none)"),
        ("file:///tmp/flags.db", "file"),
    ],
)
def test_unknown_scheme_is_named(handle: str, scheme: str) -> None:
    error = refused(builder(handle), "handle")
    assert scheme in str(error)
    assert SECRET not in str(error)


@pytest.mark.parametrize("handle", [42, object(), b"postgresql://x/y"])
def test_handle_of_the_wrong_type_is_refused(handle: Any) -> None:
    refused(builder(handle), "handle")


@pytest.mark.parametrize(
    "handle", ["sqlite://:memory:", "sqlite:///:memory:", "sqlite://", "sqlite:///"]
)
def test_in_memory_sqlite_is_refused(handle: str) -> None:
    error = refused(builder(handle), "handle")
    assert "memory" in str(error) or "file" in str(error)


def test_in_memory_sqlite_message_explains(sqlite_dsn: str) -> None:
    error = refused(builder("sqlite://:memory:"), "handle")
    assert "memory" in str(error) and "share" in str(error)


@pytest.mark.parametrize(
    "handle",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test?sslmode=bogus",
        f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/test",
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test?unknown_option=1",
    ],
)
def test_malformed_postgres_dsn_is_refused_without_the_password(handle: str) -> None:
    error = refused(builder(handle), "handle")
    assert SECRET not in str(error)


def test_unreachable_server_fails_fast_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens on port 1: the connection is refused at once."""
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(f"postgresql://postgres:{SECRET}@127.0.0.1:1/test", timeout=0.2).build()
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value, ConnectionError)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)
    assert SECRET not in caplog.text
    assert "127.0.0.1" in str(caught.value), "the error says where it tried"


def test_silent_server_fails_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts TCP connections but never answers: build() gives up after
    about ``timeout`` instead of hanging."""
    caplog.set_level(logging.DEBUG)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(leadership.StoreUnavailable) as caught:
            builder(
                f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/test", timeout=0.3, interval=2
            ).build()
        took = time.monotonic() - started
    assert 0.2 < took < 2.0, f"build() took {took:.3f} s with timeout 0.3 s"
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text


def test_unknown_database_fails_with_the_drivers_message(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/no_such_database_here"
    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(dsn, timeout=0.5, interval=2).build()
    text = str(caught.value)
    assert "no_such_database_here" in text and "does not exist" in text
    assert SECRET not in text
    assert SECRET not in caplog.text


def test_unknown_role_fails_with_the_drivers_message(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = f"postgresql://no_such_role_here:{SECRET}@127.0.0.1:5432/test"
    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(dsn, timeout=0.5, interval=2).build()
    assert "no_such_role_here" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text


def test_failing_connection_factory_fails_build() -> None:
    def factory() -> Any:
        raise OSError("no route to the flags database")

    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(factory).build()
    assert "no route to the flags database" in str(caught.value)


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with password (scram) authentication; yields
    ``host:port``. The password of user postgres is ``goodpw``."""
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or not shutil.which("runuser"):
        pytest.skip("needs root, runuser and PostgreSQL 15 binaries for a throwaway cluster")
    root = Path(tempfile.mkdtemp(prefix="leadership-scram-"))
    data = root / "data"
    password_file = root / "pw"
    password_file.write_text("goodpw\n")
    shutil.chown(root, "postgres")
    shutil.chown(password_file, "postgres")
    port = free_port()

    def as_postgres(*command: str | Path) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, command)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    try:
        as_postgres(
            PG_BIN / "initdb", "-D", data, "-A", "scram-sha-256", "-U", "postgres",
            f"--pwfile={password_file}", "-N",
        )  # fmt: skip
        as_postgres(
            PG_BIN / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "30", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip
    except subprocess.SubprocessError as error:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a throwaway PostgreSQL cluster: {error}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.postgres  # its own throwaway cluster (password_server)
def test_bad_password_fails_without_showing_it(
    password_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(
            f"postgresql://postgres:{SECRET}@{password_server}/postgres", timeout=0.5, interval=2
        ).build()
    assert time.monotonic() - started < 3.0
    text = str(caught.value)
    assert "password authentication failed" in text
    assert SECRET not in text and SECRET not in repr(caught.value)
    assert SECRET not in caplog.text


@pytest.mark.postgres  # its own throwaway cluster (password_server)
def test_password_in_query_is_not_shown(
    password_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = f"postgresql://postgres@{password_server}/postgres?password={SECRET}"
    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(dsn, timeout=0.5, interval=2).build()
    assert "password authentication failed" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text


@pytest.mark.postgres  # its own throwaway cluster (password_server)
def test_good_password_works(
    password_server: str, make_flag: Callable[..., leadership.Flag], flag_name: str
) -> None:
    flag = make_flag(f"postgresql://postgres:goodpw@{password_server}/postgres", "p1")
    assert flag.wait_raised(5)


def test_sqlite_file_in_a_missing_directory_fails_build(tmp_path: Path) -> None:
    with pytest.raises(leadership.StoreUnavailable) as caught:
        builder(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'flags.db'}").build()
    assert "flags.db" in str(caught.value)


def test_timing_copies_pickles_and_replaces_by_value() -> None:
    """Timing is a plain immutable class (not a dataclass, for import cost): it still copies,
    pickles and replaces as the frozen dataclass it was did, validating again."""
    timing = Timing(interval=4, jitter=0.1, timeout=0.5)
    assert copy.copy(timing) is timing and copy.deepcopy(timing) is timing
    assert pickle.loads(pickle.dumps(timing)) == timing
    assert timing.replace(timeout=0.25) == Timing(interval=4, jitter=0.1, timeout=0.25)
    with pytest.raises(leadership.ConfigurationError, match="timeout"):
        timing.replace(timeout=10)
    with pytest.raises(TypeError, match="'lease'"):
        timing.replace(lease=1)
    with pytest.raises(AttributeError, match="immutable"):
        timing.interval = 1
