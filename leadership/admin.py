"""Administrative reads and writes of the flags table: ``leadership status`` and ``release``.

The table does not record the interval its users chose, so the caller gives it (the
same value the contenders use) to compute the time left on each lease.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import open_store
from .store import StoredRow

__all__ = ["FlagRow", "read_flags", "release_flag"]


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


def read_flags(
    handle: str, interval: float, timeout: float, name: str | None = None
) -> list[FlagRow]:
    """The rows of the flags table (only ``name``'s when given), sorted by name.

    Creates nothing: without a table there are no flags.
    """
    store = open_store(handle, timeout, prepare=False)
    try:
        return [_aged(row, interval) for row in store.read_rows(name)]
    finally:
        store.close()


def release_flag(handle: str, name: str, timeout: float) -> FlagRow | None:
    """Expire flag ``name`` now and bump its version, waking waiting processes.

    For holders known to be dead or stuck. Returns the row as it was, or None when
    there is no such flag. Creates nothing.
    """
    store = open_store(handle, timeout, prepare=False)
    try:
        before = store.read_rows(name)
        if not before or not store.expire(name):
            return None
        return _aged(before[0], 0.0)
    finally:
        store.close()


def _aged(row: StoredRow, interval: float) -> FlagRow:
    return FlagRow(row.name, row.holder, row.version, row.age, interval)
