"""Safety beyond the ancestor: release on close, duplicate names, pauses, stuck databases,
partitions and fork. Wherever two flags contend, an OverlapWatch checks that they are
never raised at the same time."""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry

import leadership
from harness.proxy import TcpProxy
from leadership.clock import now_ns
from tests.conftest import MakeFlag, admin_connect, forks_a_threaded_process
from tests.history import OverlapWatch, wait_for
from tests.rows import create_table, read_row, sqlite_path

INTERVAL = 0.6
HANDOVERS = 10


def checks_done(registry: CollectorRegistry, process: str) -> float:
    """How many checks of ``process`` completed (from its renewal-duration histogram)."""
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if (
                sample.name == "test_leadership_flag_renewal_duration_seconds_count"
                and sample.labels.get("process") == process
            ):
                total += sample.value
    return total


def measure_handovers(dsn: str, make_flag: MakeFlag, interval: float) -> list[float]:
    """Close the holder ``HANDOVERS`` times; seconds from ``close()`` to the waiter raised."""
    registry = CollectorRegistry()

    def contender(number: int) -> leadership.Flag:
        process = f"p{number}"
        flag = make_flag(
            dsn,
            process,
            interval=interval,
            timeout=0.5,  # connecting on a loaded machine can take longer than 0.15 s
            metrics_subsystem="test",
            metrics_registerer=registry,
        )
        # Wait for its first check to complete, so it is waiting on the row.
        assert wait_for(lambda: checks_done(registry, process) >= 1, 5) is not None
        return flag

    holder = contender(0)
    assert holder.wait_raised(2)
    times: list[float] = []
    for number in range(1, HANDOVERS + 1):
        waiter = contender(number)
        assert not waiter.raised()
        with OverlapWatch([holder, waiter]) as watch:
            assert wait_for(lambda: watch.rounds > 10, 2) is not None
            started = time.monotonic()
            holder.close()
            took = wait_for(waiter.raised, interval)
            if took is not None:
                took = time.monotonic() - started
        watch.assert_no_overlap()
        assert took is not None, f"handover {number} did not happen within one interval"
        times.append(took)
        holder = waiter
    return times


def test_release_on_close_hands_over_at_once_on_postgres(
    pg_dsn: str, make_flag: MakeFlag, record_property: Callable[[str, Any], None]
) -> None:
    """With a 3 s interval the waiter would otherwise wait 1.5-3 s: LISTEN/NOTIFY wakes it."""
    times = measure_handovers(pg_dsn, make_flag, interval=3.0)
    summary = (
        f"PostgreSQL handover (close -> other raised) over {len(times)}: "
        f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms, "
        f"all {[round(t * 1000, 1) for t in times]} ms"
    )
    print(summary)
    record_property("handover_ms", [round(t * 1000, 1) for t in times])
    assert statistics.median(times) < 0.1, summary
    assert max(times) < 0.3, summary


def test_release_on_close_hands_over_quickly_on_sqlite(
    sqlite_dsn: str, make_flag: MakeFlag, record_property: Callable[[str, Any], None]
) -> None:
    """SQLite has no notifications: the waiter peeks every interval/20 (0.15 s here)."""
    times = measure_handovers(sqlite_dsn, make_flag, interval=3.0)
    summary = (
        f"SQLite handover (close -> other raised) over {len(times)}: "
        f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )
    print(summary)
    record_property("handover_ms", [round(t * 1000, 1) for t in times])
    assert max(times) < 3.0 / 20 + 0.3, summary


def test_duplicate_process_names_are_never_both_raised(
    any_dsn: str, make_flag: MakeFlag, caplog: pytest.LogCaptureFixture
) -> None:
    """The second instance must not resume the first one's lease. (It may take the flag
    if the first fails to renew in time on a starved machine: that is a legitimate
    takeover after expiry, and the watch still proves they never overlap.)"""
    first = make_flag(any_dsn, "same-name")
    assert first.wait_raised(2)
    second = make_flag(any_dsn, "same-name")
    both: list[float] = []
    with OverlapWatch([first, second]) as watch:
        deadline = time.monotonic() + 4 * INTERVAL
        while time.monotonic() < deadline:
            if first.raised() and second.raised() and first.raised():
                both.append(time.monotonic())
            time.sleep(0.002)
    watch.assert_no_overlap()
    assert not both, "both instances raised at once"
    assert first.raised() or second.raised()
    assert "process names must be unique" in caplog.text


CHILD = """
import os, sys, time
import leadership
from leadership.clock import now_ns

dsn, name = sys.argv[1], sys.argv[2]
flag = (leadership.new_flag().handle(dsn).name(name).process("paused")
        .interval(0.6).jitter(0).timeout(0.15).build())
end = now_ns() + 30_000_000_000
while now_ns() < end:
    before = now_ns()
    raised = flag.raised()
    after = now_ns()
    os.write(1, f"{before} {after} {int(raised)}\\n".encode())
    time.sleep(0.001)
"""


class Samples:
    """Lines ``before after raised`` read from a child's stdout on a thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.rows: list[tuple[int, int, bool]] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            before, after, raised = line.split()
            self.rows.append((int(before), int(after), raised == b"1"))

    def raised_seen(self) -> bool:
        return any(raised for _, _, raised in self.rows[-50:])


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    children: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, env=os.environ.copy()
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
        child.wait(10)


def test_paused_holder_sees_lowered_on_its_first_call_after_resume(
    any_dsn: str,
    make_flag: MakeFlag,
    flag_name: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    child = spawn(any_dsn, flag_name)
    samples = Samples(child)
    assert wait_for(samples.raised_seen, 20) is not None, "the child never held the flag"
    competitor = make_flag(any_dsn, "competitor")
    assert not competitor.raised()
    child.send_signal(signal.SIGSTOP)
    stopped = now_ns()
    # Paused until its row expired and the competitor took the flag: past its lease.
    assert competitor.wait_raised(5), "the competitor did not take the paused holder's flag"
    resumed = now_ns()
    child.send_signal(signal.SIGCONT)
    count = len(samples.rows)
    assert wait_for(lambda: len(samples.rows) > count + 100, 5) is not None
    assert competitor.raised()
    child.kill()
    child.wait(10)
    after_resume = [row for row in samples.rows if row[0] >= resumed]
    assert after_resume, "no sample after resume"
    assert after_resume[0][2] is False, "the first raised() after resume returned True"
    assert not any(raised for _, _, raised in after_resume), "raised while another holds it"
    before_stop = [row for row in samples.rows if row[1] < stopped]
    assert any(raised for _, _, raised in before_stop)


def test_killed_holder_is_replaced_when_its_lease_expires(
    any_dsn: str,
    make_flag: MakeFlag,
    flag_name: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """No release after kill -9: the waiter takes over at the row's expiry (it sleeps
    until then), not at some later periodic check."""
    child = spawn(any_dsn, flag_name)
    samples = Samples(child)
    assert wait_for(samples.raised_seen, 20) is not None, "the child never held the flag"
    waiter = make_flag(any_dsn, "waiter")
    assert wait_for(waiter.raised, 0.1) is None
    child.kill()
    child.wait(10)
    asked = time.monotonic()
    row = read_row(any_dsn, flag_name)
    answered = time.monotonic()
    assert row is not None and row.holder == "paused"
    raised_after = wait_for(waiter.raised, 2 * INTERVAL)
    assert raised_after is not None, "the waiter never took over"
    raised = answered + raised_after
    expiry_earliest = asked + INTERVAL - row.age
    expiry_latest = answered + INTERVAL - row.age
    assert raised >= expiry_earliest - 0.005, "taken before the row expired"
    assert raised <= expiry_latest + 0.15, (
        f"taken {raised - expiry_latest:.3f} s after the row expired"
    )


def test_with_block_closes_and_releases(any_dsn: str, flag_name: str) -> None:
    made = leadership.new_flag().handle(any_dsn).name(flag_name).process("p1")
    with made.interval(INTERVAL).jitter(0).timeout(0.15).build() as flag:
        assert flag.wait_raised(2)
        assert flag.token is not None
    assert flag.closed
    assert not flag.raised()
    assert flag.token is None
    row = read_row(any_dsn, flag_name)
    assert row is not None and row.age > 1000, "not released on leaving the block"
    flag.close()  # idempotent
    assert not flag.raised()


def test_stuck_database_lowers_the_holder_by_its_deadline(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    """A row lock held elsewhere blocks every renewal: the holder must report False from
    its lease deadline on, and nobody is raised until the lock is gone."""
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(2)
    waiter = make_flag(pg_dsn, "waiter")
    lease = holder.timing.lease_ns
    conn = admin_connect(pg_dsn)
    try:
        with OverlapWatch([holder, waiter]) as watch:
            conn.autocommit = False
            cursor = conn.cursor()
            asked = now_ns()
            cursor.execute(
                "SELECT holder, EXTRACT(EPOCH FROM timestamp + make_interval(secs => %s) "
                "- now())::float8 FROM leadership_flags WHERE name = %s FOR UPDATE",
                (INTERVAL, flag_name),
            )
            row_holder, expires_in = cursor.fetchone()
            locked = now_ns()
            assert row_holder == "holder"
            # Every renewal that succeeded started before the lock was granted.
            must_be_lowered_at = locked + lease
            late_raised: list[int] = []
            hold_until = asked + int((expires_in + 0.4) * 1e9)
            while now_ns() < hold_until:
                before = now_ns()
                if holder.raised() and before >= must_be_lowered_at:
                    late_raised.append(before - must_be_lowered_at)
                assert not waiter.raised(), "the waiter was raised while the row was locked"
                time.sleep(0.001)
            assert not late_raised, f"raised after its deadline by {min(late_raised)} ns"
            assert not holder.raised()
            conn.commit()
            released = time.monotonic()
            took = wait_for(lambda: holder.raised() or waiter.raised(), 2 * INTERVAL + 0.5)
            assert took is not None, "nobody took the flag once the database recovered"
            print(f"flag raised again {time.monotonic() - released:.3f} s after the lock ended")
        watch.assert_no_overlap()
        taken = watch.raised_at[1]
        if taken is not None:
            assert taken >= asked + int(expires_in * 1e9), "the waiter took it before expiry"
    finally:
        conn.close()


def test_stuck_sqlite_file_lowers_the_holder_by_its_deadline(
    sqlite_dsn: str, make_flag: MakeFlag
) -> None:
    """Another connection holds the file's write lock: renewals fail with "database is
    locked" and the holder must report False from its lease deadline on."""
    holder = make_flag(sqlite_dsn, "holder")
    assert holder.wait_raised(2)
    waiter = make_flag(sqlite_dsn, "waiter")
    blocker = sqlite3.connect(sqlite_path(sqlite_dsn), isolation_level=None)
    try:
        with OverlapWatch([holder, waiter]) as watch:
            blocker.execute("BEGIN IMMEDIATE")
            locked = now_ns()
            must_be_lowered_at = locked + holder.timing.lease_ns
            late: list[int] = []
            while now_ns() < locked + int(1.5 * INTERVAL * 1e9):
                before = now_ns()
                if holder.raised() and before >= must_be_lowered_at:
                    late.append(before - must_be_lowered_at)
                assert not waiter.raised(), "the waiter was raised while the file was locked"
                time.sleep(0.001)
            assert not late, f"raised after its deadline by {min(late)} ns"
            blocker.rollback()
            took = wait_for(lambda: holder.raised() or waiter.raised(), 2 * INTERVAL + 0.5)
            assert took is not None, "nobody took the flag once the lock was gone"
        watch.assert_no_overlap()
    finally:
        blocker.close()


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_partitioned_holder_is_lowered_before_another_takes_over(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    """The holder reaches the database through a relay that goes silent; the other
    process does not. The holder must be lowered before the other is raised."""
    parts = urlsplit(pg_dsn)
    create_table(pg_dsn)  # creating it through the relay may outlast the 0.15 s timeout
    with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
        holder = make_flag(_via(pg_dsn, proxy.port), "holder")
        assert holder.wait_raised(2)
        waiter = make_flag(pg_dsn, "waiter")
        with OverlapWatch([holder, waiter]) as watch:
            proxy.freeze()
            frozen = now_ns()
            assert waiter.wait_raised(3 * INTERVAL), "the reachable process never took over"
            assert not holder.raised()
            holder_deadline = holder._deadline  # of its last renewal that succeeded
            proxy.thaw()
            # Back on the network, the old holder sees the new holder's row.
            assert wait_for(holder.raised, 1.5 * INTERVAL) is None
            assert waiter.raised()
        watch.assert_no_overlap()
        assert holder_deadline <= frozen + holder.timing.lease_ns
        taken = watch.raised_at[1]
        assert taken is not None and taken > holder_deadline, (
            "taken before the holder's lease ended"
        )
        row = read_row(pg_dsn, flag_name)
        assert row is not None and row.holder == "waiter"


@pytest.mark.slow
def test_renewal_with_a_lost_reply_does_not_lower_the_flag(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal commits on the server but its reply never arrives (client timeout).
    That is a failed renewal of unknown outcome: the flag must stay raised until its
    deadline, and must not blame a duplicate process name for its own write.
    (Interval 3 s, timeout 0.3 s: the relay is slow to reconnect on a loaded machine.)"""
    parts = urlsplit(pg_dsn)
    with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
        flag = make_flag(_via(pg_dsn, proxy.port), "holder", interval=3.0, timeout=0.3)
        assert flag.wait_raised(2)
        written = read_row(pg_dsn, flag_name)
        assert written is not None
        proxy.hold_replies()
        deadline = flag._deadline  # later successful renewals can only move it later

        def renewed_unheard() -> bool:
            row = read_row(pg_dsn, flag_name)
            return row is not None and row.version > written.version

        assert wait_for(renewed_unheard, 3, step=0.01) is not None, "no renewal reached the server"
        gave_up = wait_for(lambda: "check failed" in caplog.text, 3, step=0.002)
        assert gave_up is not None, "the client did not give up on the withheld reply"
        time.sleep(0.1)  # the old connection is gone; its retry comes 0.3 s after the failure
        proxy.thaw()
        lowered_at: int | None = None
        while now_ns() < deadline:
            if not flag.raised():
                lowered_at = now_ns()
                break
            time.sleep(0.001)
    assert lowered_at is None, (
        f"lowered {(deadline - lowered_at) / 1e9:.3f} s before its deadline after one "
        f"renewal of unknown outcome; log:\n{caplog.text}"
    )
    assert "process names must be unique" not in caplog.text


@forks_a_threaded_process
def test_fork_child_sees_the_flag_lowered(
    any_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    flag = make_flag(any_dsn, "parent")
    assert flag.wait_raised(2)
    before = read_row(any_dsn, flag_name)
    assert before is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any cleanup
        try:
            report = f"{int(flag.raised())} {flag.token} {int(flag.closed)}"
            flag.close()  # must not release the parent's row
            report += f" {int(flag.raised())}"
            os.write(write_end, report.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "0 None 1 0", f"child saw (raised token closed raised-after-close) {report}"
    assert flag.raised(), "the parent lost the flag"
    assert wait_for(lambda: not flag.raised(), 2 * INTERVAL) is None
    after = read_row(any_dsn, flag_name)
    assert after is not None and after.holder == "parent" and after.version > before.version
    assert after.age < INTERVAL, "the parent's row was released by the child"


@forks_a_threaded_process
def test_fork_child_can_build_its_own_flag(
    any_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    """A flag built after fork in the child works (the gunicorn worker pattern)."""
    parent = make_flag(any_dsn, "parent")
    assert parent.wait_raised(2)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = (
                leadership.new_flag()
                .handle(any_dsn)
                .name(flag_name + "-child")
                .process("child")
                .interval(INTERVAL)
                .jitter(0)
                .timeout(0.15)
                .build()
            )
            ok = child.wait_raised(3)
            child.close()
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"1"
    assert parent.raised()
    row = read_row(any_dsn, flag_name + "-child")
    assert row is not None and row.holder == "child"
