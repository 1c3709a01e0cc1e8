"""In-memory fakes for unit tests of the campaign's decisions: a clock, a lease, a store.

These are not a database: the integration tests on real PostgreSQL and SQLite are the
proof of behaviour. ``FakeStore`` follows the acquire-or-renew rule of the
:class:`leadership.store.Store` contract on one shared clock, and can be told to fail,
to lose a reply after writing, or to run a hook in the middle of a call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from leadership.store import (
    DBAPIConnection,
    Mine,
    Observation,
    OutcomeUnknown,
    StoredRow,
    Written,
)


class FakeTime:
    """One clock for everything: the lease clock (ns) and the database clock (s)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def ns(self) -> int:
        return round(self.now * 1e9)


class FakeLease:
    """The lease of :mod:`leadership.clock`, reading a :class:`FakeTime`."""

    def __init__(self, time: FakeTime) -> None:
        self._time = time
        self._deadline_ns = 0

    def raised(self) -> bool:
        return self._time.ns() < self._deadline_ns

    def lease_remaining(self) -> float:
        return max(self._deadline_ns - self._time.ns(), 0) / 1e9

    def _extend(self, start_ns: int, duration_ns: int) -> None:
        self._deadline_ns = start_ns + duration_ns

    def _lower(self) -> None:
        self._deadline_ns = 0


@dataclass
class FakeRow:
    holder: str
    version: int
    at: float


class StoreFailure(ConnectionError):
    """What the fake store raises when told to fail."""


@dataclass
class FakeStore:
    """The flags table in memory, with faults on demand.

    ``fail_next`` calls raise StoreFailure without writing; ``lose_next`` calls write
    and then raise OutcomeUnknown (a lost reply); ``during_call`` runs inside the next
    acquire-or-renew, before it decides (to stop or resign a campaign mid-call).
    """

    time: FakeTime
    rows: dict[str, FakeRow] = field(default_factory=dict)
    fail_next: int = 0
    lose_next: int = 0
    during_call: Callable[[], None] | None = None
    calls: int = 0
    releases: list[tuple[str, str, int]] = field(default_factory=list)
    closed: bool = False
    watched: dict[str, float] = field(default_factory=dict)
    db_offset: float = 0.0
    """Seconds the database clock is ahead of the shared clock (set it to step it)."""
    table: str = "leadership_flags"
    notes: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        pass

    def watch(self, name: str, interval: float) -> None:
        self.watched[name] = interval

    def unwatch(self, name: str) -> None:
        self.watched.pop(name, None)

    def acquire_or_renew(
        self, name: str, process: str, mine: Mine | None, interval: float
    ) -> Observation:
        self.calls += 1
        if self.during_call is not None:
            hook, self.during_call = self.during_call, None
            hook()
        if self.fail_next:
            self.fail_next -= 1
            raise StoreFailure("the test cut the connection")
        seen = self._decide(name, process, mine, interval)
        if self.lose_next and seen.acquired:
            self.lose_next -= 1
            raise OutcomeUnknown("the reply was lost")
        return seen

    def _decide(self, name: str, process: str, mine: Mine | None, interval: float) -> Observation:
        now = self.time.now + self.db_offset
        row = self.rows.get(name)
        if row is None:
            self.rows[name] = FakeRow(process, 0, now)
            return Observation(Written(0, now))
        last = mine.last if mine is not None else None
        ours = (
            row.holder == process
            and mine is not None
            and last is not None
            and (
                row.version == last.version
                or (
                    last.version < row.version <= last.version + mine.pending
                    and last.at < row.at <= last.at + interval
                )
            )
        )
        if ours or now - row.at > interval:
            continued = ours and last is not None and row.version <= last.version + 1
            self.rows[name] = FakeRow(process, row.version + 1, now)
            return Observation(Written(row.version + 1, now, continued))
        return Observation(None, row.holder, row.version, row.at + interval - now)

    def release(self, name: str, process: str, mine: Mine, interval: float) -> bool:
        last = mine.last
        self.releases.append((name, process, last.version))
        row = self.rows.get(name)
        if row is None or row.holder != process or row.version < last.version:
            return False
        if row.version > last.version + mine.pending:
            return False
        if row.version > last.version and not last.at < row.at <= last.at + interval:
            return False
        row.at = 0.0
        return True

    def wait(self, seconds: float, wake_fd: int) -> None:
        self.time.advance(seconds)

    def read_rows(self, name: str | None = None) -> list[StoredRow]:
        return [
            StoredRow(key, row.holder, row.version, self.time.now - row.at)
            for key, row in sorted(self.rows.items())
            if name is None or key == name
        ]

    def expire(self, name: str) -> bool:
        row = self.rows.get(name)
        if row is None:
            return False
        row.at, row.version = 0.0, row.version + 1
        return True

    def lock_row(self, conn: DBAPIConnection, name: str) -> tuple[str, int] | None:
        row = self.rows.get(name)
        return None if row is None else (row.holder, row.version)

    def close(self) -> None:
        self.closed = True

    def steal(self, name: str, thief: str) -> None:
        """Another program takes the row now (as a direct UPDATE would)."""
        row = self.rows[name]
        self.rows[name] = FakeRow(thief, row.version + 1, self.time.now)
