"""Administrative reads and writes of the flags table: ``leadership status`` and ``release``.

Each holder records its lease in its row; the caller's interval ages the rows that do
not say (written by the Go package).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .backends import open_store
from .store import StoredMember, StoredRow

__all__ = ["FlagRow", "Listing", "MemberRow", "list_flags", "read_flags", "release_flag"]


@dataclass(frozen=True)
class FlagRow:
    """One row of the flags table, aged on the database clock (seconds)."""

    name: str
    holder: str
    version: int
    age: float
    interval: float

    @property
    def left(self) -> float:
        """Seconds before another process may take the flag (0 when expired)."""
        return max(self.interval - self.age, 0.0)

    @property
    def expired(self) -> bool:
        return self.age > self.interval


@dataclass(frozen=True)
class MemberRow:
    """One member of a pool of balancing groups (see ``FlagGroup.balance``), aged on the
    database clock; ``holds`` are the flags whose live row names it as holder."""

    pool: str
    member: str
    age: float
    lease: float
    holds: tuple[str, ...]

    @property
    def left(self) -> float:
        """Seconds before the member stops counting unless it heartbeats (0 when gone)."""
        return max(self.lease - self.age, 0.0)

    @property
    def live(self) -> bool:
        return self.age <= self.lease


@dataclass(frozen=True)
class Listing:
    """The rows of one flags table; ``table`` is its name as operators should read it
    (schema-qualified on PostgreSQL when the table exists); ``members`` the pools'
    members, from the members table beside it (empty when no group balances)."""

    table: str
    rows: list[FlagRow]
    members: list[MemberRow] = field(default_factory=list)


def list_flags(
    handle: str,
    interval: float,
    timeout: float,
    name: str | None = None,
    *,
    table: str | None = None,
) -> Listing:
    """The rows of the flags table (only ``name``'s when given), sorted by name.

    Each row is aged with the lease its holder recorded in it, or ``interval`` for a row
    that does not say (written by the Go package, or by a role that could not add the
    lease columns). Creates nothing: without a table there are no flags.
    """
    store = open_store(handle, timeout, prepare=False, table=table)
    try:
        rows = [_aged(row, interval) for row in store.read_rows(name)]
        members = [_member(member, rows) for member in store.read_members()]
        return Listing(store.table, rows, members)
    finally:
        store.close()


def read_flags(
    handle: str,
    interval: float,
    timeout: float,
    name: str | None = None,
    *,
    table: str | None = None,
) -> list[FlagRow]:
    """The rows of :func:`list_flags`."""
    return list_flags(handle, interval, timeout, name, table=table).rows


def release_flag(
    handle: str, name: str, timeout: float, *, table: str | None = None
) -> FlagRow | None:
    """Expire flag ``name`` now and bump its version, waking waiting processes.

    For holders known to be dead or stuck. Returns the row as it was, or None when
    there is no such flag. Creates nothing.
    """
    store = open_store(handle, timeout, prepare=False, table=table)
    try:
        before = store.read_rows(name)
        if not before or not store.expire(name):
            return None
        return _aged(before[0], 0.0)
    finally:
        store.close()


def _aged(row: StoredRow, interval: float) -> FlagRow:
    lease = interval if row.lease is None else row.lease
    return FlagRow(row.name, row.holder, row.version, row.age, lease)


def _member(member: StoredMember, rows: list[FlagRow]) -> MemberRow:
    holds = tuple(row.name for row in rows if row.holder == member.member and not row.expired)
    return MemberRow(member.pool, member.member, member.age, member.lease, holds)
