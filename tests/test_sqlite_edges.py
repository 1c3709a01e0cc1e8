"""The embedded default at its edges: a removed or replaced file, host clock steps, fencing
on SQLite, and errors that name the path and the reason.

This file is also the worker of the clock-step tests:
``python tests/test_sqlite_edges.py DSN NAME PROCESS LOG INTERVAL TIMEOUT`` builds a flag
and witnesses ``raised()`` into LOG until SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

import leadership
from leadership.testing import Kind, Witness, overlaps, read_history
from tests.conftest import MakeFlag
from tests.history import wait_for, wait_or_fail
from tests.rows import sqlite_path

ROOT = Path(__file__).resolve().parent.parent
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
)


def _remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


# --- a removed or replaced file --------------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "replaced", "repointed"])
def test_a_removed_or_replaced_file_lowers_the_holder_at_once(
    how: str, sqlite_dsn: str, make_flag: MakeFlag, caplog: pytest.LogCaptureFixture
) -> None:
    path = sqlite_path(sqlite_dsn)
    if how == "repointed":  # the handle names a symlink (a deploy's current -> v1)
        os.symlink(path + ".v1", path)
    holder = make_flag(sqlite_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    if how == "removed":  # an operator "resetting" state, a temp cleaner
        _remove_database(path)
    elif how == "repointed":  # current -> v2, atomically
        os.symlink(path + ".v2", path + ".link")
        os.replace(path + ".link", path)
    else:  # an atomic replacement by a fresh file
        fresh = path + ".fresh"
        sqlite3.connect(fresh).close()
        os.replace(fresh, path)
    changed = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="leadership"):
        newcomer = make_flag(sqlite_dsn, "newcomer")  # builds on the new file
        assert newcomer.wait_raised(timeout=2.0)
        # The holder peeks at the file every interval/20 (30 ms here) and lowers at once.
        lowered = wait_for(lambda: not holder.raised(), timeout=1.0)
    assert lowered is not None, "the holder kept its flag on a file that is gone"
    assert time.monotonic() - changed < 0.5
    named = wait_for(lambda: path in caplog.text, 1.0)  # logged right after lowering
    assert named is not None, caplog.text
    # The holder follows the path to the new file, where the newcomer holds the flag.
    time.sleep(0.3)
    assert newcomer.raised() and not holder.raised()
    newcomer.close()
    assert holder.wait_raised(timeout=2.0)


# --- host clock steps (libfaketime) ----------------------------------------------------


def _faketime_lib() -> str:
    for candidate in FAKETIME_LIBS:
        if os.path.exists(candidate):
            return candidate
    reason = "libfaketime is not installed (apt-get install libfaketime)"
    if os.environ.get("LEADERSHIP_REQUIRE_TOOLS"):
        pytest.fail(reason + " and LEADERSHIP_REQUIRE_TOOLS is set")
    pytest.skip(reason)


@contextlib.contextmanager
def _contenders(
    dsn: str, name: str, step_file: Path, logs: list[Path], interval: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes whose wall clock (only) is offset by what ``step_file`` says."""
    env = dict(
        os.environ,
        LD_PRELOAD=_faketime_lib(),
        FAKETIME_TIMESTAMP_FILE=str(step_file),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",  # a wall-clock step, as NTP or date -s make
        PYTHONPATH=str(ROOT),
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:  # each worker is named after its log
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, dsn, name, log.stem, str(log), str(interval)],
                    env=env,
                )
            )
            wait_or_fail(partial(_built, log), 10.0, f"worker {log.stem} built")
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _built(log: Path) -> bool:
    return log.exists() and any(mark.kind == Kind.BUILT for mark in read_history(log).marks)


def _held_after(log: Path, instant: int) -> bool:
    """Whether the worker surely held the flag at some time after ``instant``."""
    return any(run.last_before > instant for run in read_history(log).runs)


def _raised_since(log: Path, instant: int = 0) -> int | None:
    """When (CLOCK_MONOTONIC ns) the worker first surely held the flag after ``instant``."""
    for run in read_history(log).runs:
        if run.first_after > instant:
            return run.first_after
    return None


@pytest.mark.slow
def test_host_clock_steps_cause_no_overlap(sqlite_dsn: str, tmp_path: Path) -> None:
    """Every process on the host sees the wall clock jump forward by 0.6 x I, then by 5 s,
    then back by 10 s: the holder keeps its flag, the other never raises meanwhile."""
    step_file = tmp_path / "faketime"
    step_file.write_text("+0\n")
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    interval = 1.0
    with _contenders(sqlite_dsn, "stepped", step_file, logs[:1], interval):
        wait_or_fail(lambda: _raised_since(logs[0]) is not None, 5.0, "p0 raised")
        with _contenders(sqlite_dsn, "stepped", step_file, logs[1:], interval):
            for offset in ("+0.6", "+5", "-5"):
                step_file.write_text(offset + "\n")
                time.sleep(1.5 * interval)
            last_step = time.monotonic_ns()
            wait_or_fail(partial(_held_after, logs[0], last_step), 2.0, "p0 still raised")
    histories = [read_history(log, log.stem) for log in logs]
    assert overlaps(histories) == []
    assert not histories[1].runs, "the waiter was raised while the holder was healthy"


def test_failover_is_not_delayed_by_a_clock_step_back(sqlite_dsn: str, tmp_path: Path) -> None:
    step_file = tmp_path / "faketime"
    step_file.write_text("+0\n")
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    interval = 1.0
    with _contenders(sqlite_dsn, "back", step_file, logs[:1], interval) as (holder,):
        wait_or_fail(lambda: _raised_since(logs[0]) is not None, 5.0, "p0 raised")
        with _contenders(sqlite_dsn, "back", step_file, logs[1:], interval):
            step_file.write_text("-5\n")  # the whole host's wall clock goes back 5 s
            time.sleep(0.3)
            killed = time.monotonic_ns()
            holder.kill()
            holder.wait()
            wait_or_fail(
                lambda: _raised_since(logs[1], killed) is not None, 5.0, "p1 raised after the kill"
            )
    first_raised = _raised_since(logs[1], killed)
    assert first_raised is not None
    failover = (first_raised - killed) / 1e9
    # Crash failover is bounded by about 1.1 x I + T (README); a wall clock that went back
    # 5 s made it 6.8 s with wall-clock stamps.
    assert failover < 1.1 * interval + 0.3 + 0.5, f"failover took {failover:.2f} s"


def worker(dsn: str, name: str, process: str, log: str, interval: float) -> None:
    logging.basicConfig(level=logging.INFO, format=f"{process} %(message)s")
    witness = Witness(log, max_gap=0.05)
    signal.signal(signal.SIGTERM, lambda *_: setattr(witness, "stopping", True))
    before = time.monotonic_ns()
    flag = (
        leadership.new_flag()
        .handle(dsn)
        .name(name)
        .process(process)
        .interval(interval)
        .jitter(0.2)
        .timeout(0.3)
        .build()
    )
    witness.mark(Kind.BUILT, before, time.monotonic_ns())

    def raised_then_pause() -> bool:
        raised = flag.raised()
        select.select([], [], [], 0.0005)  # time.sleep fails under libfaketime
        return raised

    witness.watch(raised_then_pause)
    flag.close()
    witness.close()


# --- fencing on SQLite -----------------------------------------------------------------


def test_guard_on_sqlite_holds_off_takeovers_until_the_transaction_ends(
    sqlite_dsn: str, make_flag: MakeFlag
) -> None:
    path = sqlite_path(sqlite_dsn)
    holder = make_flag(sqlite_dsn, "holder", interval=2.0, timeout=0.5)
    assert holder.wait_raised(timeout=2.0)
    conn = sqlite3.connect(path, timeout=1.0)  # sqlite3's default: implicit transactions
    conn.execute("CREATE TABLE IF NOT EXISTS work (token INTEGER)")
    conn.commit()
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        token = holder.guard(conn)
        assert token == holder.token and token >= 1
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # what any renewal or takeover needs first
        conn.execute("INSERT INTO work (token) VALUES (?)", (token,))
        conn.commit()
        other.execute("BEGIN IMMEDIATE")  # free again once the guarded transaction ends
        other.execute("ROLLBACK")
        assert other.execute("SELECT token FROM work").fetchall() == [(token,)]
    finally:
        conn.close()
        other.close()


def test_guard_on_sqlite_refuses_an_autocommit_connection(
    sqlite_dsn: str, make_flag: MakeFlag
) -> None:
    holder = make_flag(sqlite_dsn, "holder")
    assert holder.wait_raised(timeout=2.0)
    conn = sqlite3.connect(sqlite_path(sqlite_dsn), isolation_level=None)
    try:
        with pytest.raises(leadership.LeadershipError, match="autocommit"):
            holder.guard(conn)
        conn.execute("BEGIN IMMEDIATE")  # an explicit transaction is fine
        assert holder.guard(conn) == holder.token
        conn.execute("COMMIT")
    finally:
        conn.close()


# --- errors that name the path and the reason ------------------------------------------


def _build(dsn: str) -> leadership.Flag:
    return leadership.new_flag().handle(dsn).name("n").process("p").interval(1).timeout(0.2).build()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "flags.db"
    with pytest.raises(leadership.StoreUnavailable) as caught:
        _build(f"sqlite:///{path}")
    message = str(caught.value)
    assert str(path) in message and "does not exist" in message, message


@contextlib.contextmanager
def _as_nobody() -> Iterator[None]:
    """Run as an unprivileged user (root ignores file permissions)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="leadership-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        for inner in directory.iterdir():
            inner.chmod(0o755)
        shutil.rmtree(directory)


def test_a_read_only_directory_is_named(public_dir: Path) -> None:
    directory = public_dir / "locked"
    directory.mkdir(mode=0o555)
    path = directory / "flags.db"
    with _as_nobody(), pytest.raises(leadership.StoreUnavailable) as caught:
        _build(f"sqlite:///{path}")
    message = str(caught.value)
    assert str(path) in message and "not writable" in message, message


def test_a_read_only_file_is_named(public_dir: Path) -> None:
    directory = public_dir / "open"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    path = directory / "flags.db"
    sqlite3.connect(path).close()
    path.chmod(0o444)
    with _as_nobody(), pytest.raises(leadership.StoreUnavailable) as caught:
        _build(f"sqlite:///{path}")
    message = str(caught.value)
    assert str(path) in message and "not writable" in message, message


def test_status_on_a_mistyped_path_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from leadership.cli import main

    path = tmp_path / "typo.db"
    status = main(["status", "--handle", f"sqlite:///{path}"])
    assert status != 0
    assert not path.exists(), "status created the file"
    assert str(path) in capsys.readouterr().err


def test_release_on_a_mistyped_path_creates_nothing(tmp_path: Path) -> None:
    from leadership.cli import main

    path = tmp_path / "typo.db"
    assert main(["release", "--handle", f"sqlite:///{path}", "--name", "x", "--yes"]) != 0
    assert not path.exists(), "release created the file"


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
