"""Balancing flags across real processes on PostgreSQL (issue 12).

Ten flags, balanced by member processes (tests/balance_member.py) with interval 1 s:
three start; one is killed (SIGKILL); two join; one is paused (SIGSTOP) and resumed
(SIGCONT). After each change, within a bounded time, every flag is held by a live member,
no member holds more than ``ceil(F/M)`` and held counts differ by at most one; then, over
a stable window of several intervals, no flag changes holder. Holders are read from the
flags table (a row held while its lease runs); each member also witnesses each flag's
``raised()`` in its own history (leadership.testing), and the histories of all members
are checked together at the end: no flag was ever raised in two members at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from leadership.backends import open_store
from leadership.store import Store
from leadership.testing import History, overlaps, read_history
from tests.balance_member import log_path, status_path
from tests.conftest import execute

INTERVAL = 1.0
JITTER = 0.2
TIMEOUT = 0.3
FLAGS = 10

FAILOVER = INTERVAL + TIMEOUT + INTERVAL / 2
"""The crash failover bound the library promises: the lease, a timeout, a renewal tick."""
START_BOUND = 20.0
"""Seconds for a member process to start, connect and return from ``balance()``."""
SETTLE_AFTER_START = 4 * INTERVAL
"""From the last member ready: every flag held and fairly shared."""
SETTLE_AFTER_CRASH = FAILOVER + 3 * INTERVAL
"""From a SIGKILL or SIGSTOP: the member's flags spread over the survivors."""
JOIN_BOUND = 2 * INTERVAL + 2 * INTERVAL
"""From a new member ready: it holds its share (about two intervals, and a margin)."""
LAPSE_BOUND = INTERVAL + INTERVAL / 2 + 1.5
"""From a SIGSTOP: the other members' views no longer count the paused one."""
STABLE_WINDOW = 3 * INTERVAL
"""A window with a stable membership in which no flag may change holder."""
POLL = 0.05


@dataclass
class Member:
    """One member process and where it writes."""

    name: str
    process: subprocess.Popen[bytes]
    errors: Path
    paused: bool = False
    killed: bool = False


@dataclass
class Pool:
    """The member processes balancing ``names`` in ``table``, and a store to read it."""

    dsn: str
    table: str
    names: list[str]
    directory: Path
    store: Store
    members: dict[str, Member] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def start(self, name: str) -> None:
        config = {
            "dsn": self.dsn,
            "table": self.table,
            "member": name,
            "names": self.names,
            "directory": str(self.directory),
            "interval": INTERVAL,
            "jitter": JITTER,
            "timeout": TIMEOUT,
        }
        errors = self.directory / f"{name}.err"
        with errors.open("wb") as sink:
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("balance_member.py")),
                    json.dumps(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        self.members[name] = Member(name, process, errors)

    def status(self, name: str) -> dict[str, Any] | None:
        """The member's last status file (see tests/balance_member.py), or None."""
        try:
            status: dict[str, Any] = json.loads(status_path(self.directory, name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return status

    def wait_ready(self, *names: str) -> float:
        """Wait until each of ``names`` returned from ``balance()``; the last one's time."""
        readies: list[float] = []
        for name in names:
            deadline = time.monotonic() + START_BOUND
            while (status := self.status(name)) is None:
                member = self.members[name]
                if member.process.poll() is not None:
                    pytest.fail(f"{name} ended with {member.process.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} not ready within {START_BOUND} s:\n{self.logs()}")
                time.sleep(POLL)
            readies.append(float(status["ready"]))
        return max(readies)

    def signal(self, name: str, signum: signal.Signals) -> int:
        """Send ``signum`` to the member; the monotonic ns just before."""
        member = self.members[name]
        member.paused = signum is signal.SIGSTOP
        member.killed = member.killed or signum is signal.SIGKILL
        sent = time.monotonic_ns()
        os.kill(member.process.pid, signum)
        if signum is signal.SIGKILL:
            member.process.wait(5)
        return sent

    def live(self) -> list[str]:
        """The members that should count: started, neither killed nor paused."""
        return sorted(m.name for m in self.members.values() if not (m.killed or m.paused))

    def holders(self) -> dict[str, str | None]:
        """Each flag's holder while its row's lease runs (None when free)."""
        held: dict[str, str | None] = dict.fromkeys(self.names)
        for row in self.store.read_rows():
            if row.name in held and row.age < (row.lease if row.lease is not None else INTERVAL):
                held[row.name] = row.holder
        return held

    def logs(self) -> str:
        """The members' status and the tail of their logs, for a failure message."""
        parts = [f"holders: {self.holders()}"]
        for name, member in sorted(self.members.items()):
            tail = member.errors.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {name} status {self.status(name)}")
            parts.extend(tail)
        return "\n".join(parts)

    def stop(self) -> None:
        """End every member: SIGTERM (a graceful close), then SIGKILL for the late ones."""
        for member in self.members.values():
            if member.process.poll() is None:
                if member.paused:
                    os.kill(member.process.pid, signal.SIGCONT)
                member.process.terminate()
        give_up = time.monotonic() + 2 * TIMEOUT + 5
        for member in self.members.values():
            try:
                member.process.wait(max(give_up - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()

    def histories(self, name: str) -> list[History]:
        """The witness history of flag ``name`` in every member that ever ran."""
        return [
            read_history(log_path(self.directory, member, name), process=member)
            for member in self.members
            if log_path(self.directory, member, name).exists()
        ]


def most(members: int) -> int:
    """The most flags a member may hold while at least ``members`` members are live."""
    return math.ceil(FLAGS / members)


def fair(holders: dict[str, str | None], live: list[str]) -> str | None:
    """Why ``holders`` is not a settled fair share among ``live`` (None when it is)."""
    free = [name for name, holder in holders.items() if holder is None]
    if free:
        return f"free flags {free}"
    outside = {name: h for name, h in holders.items() if h not in live}
    if outside:
        return f"held outside the live members {live}: {outside}"
    counts = Counter(holder for holder in holders.values())
    held = [counts[member] for member in live]
    if max(held) > math.ceil(len(holders) / len(live)):
        return f"above ceil(F/M): {dict(zip(live, held, strict=True))}"
    if max(held) - min(held) > 1:
        return f"counts differ by more than one: {dict(zip(live, held, strict=True))}"
    return None


def settle(
    pool: Pool, bound: float, what: str, since: float | None = None, ceiling: int | None = None
) -> float:
    """Wait until the flags are fairly shared among the live members; the seconds it
    took since ``since`` (monotonic; default now). Fails after ``bound`` seconds, or as
    soon as a live member holds more than ``ceiling`` flags (when given)."""
    started = time.monotonic() if since is None else since
    live = pool.live()
    while True:
        holders = pool.holders()
        if ceiling is not None:
            counts = Counter(holder for holder in holders.values() if holder in live)
            above = {member: n for member, n in counts.items() if n > ceiling}
            assert not above, f"{what}: above {ceiling} flags on the way: {above}\n{pool.logs()}"
        why = fair(holders, live)
        took = time.monotonic() - started
        if why is None:
            pool.timings[what] = round(took, 2)
            return took
        if took > bound:
            pytest.fail(f"{what}: not settled within {bound} s ({why})\n{pool.logs()}")
        time.sleep(POLL)


def stays_put(pool: Pool, what: str) -> tuple[int, int]:
    """Over STABLE_WINDOW, no flag changes holder and the share stays fair; the window
    (monotonic ns)."""
    start = time.monotonic_ns()
    first = pool.holders()
    live = pool.live()
    while time.monotonic_ns() - start < STABLE_WINDOW * 1e9:
        now = pool.holders()
        moved = {name: (first[name], now[name]) for name in now if now[name] != first[name]}
        assert not moved, f"{what}: flags changed holder in a stable pool: {moved}"
        why = fair(now, live)
        assert why is None, f"{what}: {why}"
        time.sleep(POLL)
    return start, time.monotonic_ns()


def holders_in(pool: Pool, window: tuple[int, int]) -> dict[str, set[str]]:
    """For each flag, the members whose witness surely saw it raised during ``window``
    (a run's sure part, ``Run.sure``, meets it)."""
    start, end = window
    return {
        name: {
            history.process
            for history in pool.histories(name)
            for run in history.runs
            if run.first_after <= end and run.last_before >= start
        }
        for name in pool.names
    }


@pytest.fixture
def pool(pg_dsn: str, flag_name: str, tmp_path: Path) -> Iterator[Pool]:
    """A pool over a table of its own; every member ended afterwards, whatever happened."""
    table = f"balance_{uuid.uuid4().hex[:10]}"
    store = open_store(pg_dsn, timeout=10.0, table=table)  # creates the flags table
    store.prepare_members()  # and the members table, before members race to
    built = Pool(pg_dsn, table, [f"{flag_name}-{i}" for i in range(FLAGS)], tmp_path, store)
    try:
        yield built
    finally:
        built.stop()
        store.close()
        execute(pg_dsn, f'DROP TABLE IF EXISTS "{table}", "{table}_members"')


@pytest.mark.slow
def test_balance_through_crash_join_and_pause(pool: Pool) -> None:
    began = time.monotonic()
    # Three members share ten flags: 4, 3, 3.
    for name in ("m1", "m2", "m3"):
        pool.start(name)
    ready = pool.wait_ready("m1", "m2", "m3")
    settle(pool, SETTLE_AFTER_START, "three members", since=ready)
    windows = {"three members": stays_put(pool, "three members")}

    # SIGKILL the member holding most: its flags spread over the two others (5, 5).
    counts = Counter(pool.holders().values())
    victim = max(pool.live(), key=lambda member: (counts[member], member))
    killed = pool.signal(victim, signal.SIGKILL) / 1e9
    took = settle(pool, SETTLE_AFTER_CRASH, f"{victim} killed", killed, most(2))
    assert took <= FAILOVER + INTERVAL, f"failover took {took:.2f} s"
    windows[f"{victim} killed"] = stays_put(pool, f"{victim} killed")

    # Two members join: 3, 3, 2, 2, each newcomer with its share within about two intervals.
    for name in ("m4", "m5"):
        pool.start(name)
    joined = pool.wait_ready("m4", "m5")
    settle(pool, JOIN_BOUND, "m4 and m5 joined", joined, most(2))
    windows["m4 and m5 joined"] = stays_put(pool, "m4 and m5 joined")

    # SIGSTOP a member holding flags: it stops counting within about an interval, its
    # flags go to the three others (4, 3, 3); after SIGCONT it has lost them all, then
    # gets its share back (3, 3, 2, 2).
    counts = Counter(pool.holders().values())
    sleeper = max(pool.live(), key=lambda member: (counts[member], member))
    lost = sorted(name for name, holder in pool.holders().items() if holder == sleeper)
    stopped = pool.signal(sleeper, signal.SIGSTOP) / 1e9
    others = pool.live()

    def counted_by_others() -> list[str]:
        views = [pool.status(member) for member in others]
        return [
            member
            for member, view in zip(others, views, strict=True)
            if view is None
            or view["share"] is None
            or sleeper in view["share"]["members"]
            or view["t"] < stopped
        ]

    while still := counted_by_others():
        if time.monotonic() - stopped > LAPSE_BOUND:
            pytest.fail(f"{still} still count the paused {sleeper}\n{pool.logs()}")
        time.sleep(POLL)
    pool.timings[f"{sleeper} paused: membership lapsed"] = round(time.monotonic() - stopped, 2)
    settle(pool, SETTLE_AFTER_CRASH, f"{sleeper} paused", stopped, most(3))
    windows[f"{sleeper} paused"] = stays_put(pool, f"{sleeper} paused")
    resumed = pool.signal(sleeper, signal.SIGCONT)
    settle(pool, JOIN_BOUND, f"{sleeper} resumed", resumed / 1e9, most(3))
    windows[f"{sleeper} resumed"] = stays_put(pool, f"{sleeper} resumed")

    pool.stop()  # every member closes its group: the histories are complete
    # Closing released every flag at once and left the pool.
    assert pool.holders() == dict.fromkeys(pool.names), "flags still held after close"
    staying = [m.member for m in pool.store.read_members() if m.age < m.lease]
    assert not staying, f"members still live after close: {staying}"

    # No flag was ever raised in two members at once, in the whole test.
    for name in pool.names:
        histories = pool.histories(name)
        assert sum(len(h.runs) for h in histories) > 0, f"{name}: never seen raised"
        both = overlaps(histories)
        assert not both, f"{name} raised in two members at once: {both[:3]}"
    # The paused member's first calls after SIGCONT found its flags lowered (its lease ran
    # out while it slept); during each stable window, each flag was raised in one member.
    for name in lost:
        history = read_history(log_path(pool.directory, sleeper, name), process=sleeper)
        assert not history.first_call_after(resumed), f"{name} still raised after SIGCONT"
    for what, window in windows.items():
        seen = {name: who for name, who in holders_in(pool, window).items() if len(who) != 1}
        assert not seen, f"{what}: witnessed holders per flag in the stable window: {seen}"
    print(f"timings (s): {pool.timings}; total {time.monotonic() - began:.1f} s")
