"""The fair share of a pool: how many of the balanced flags each live member may hold.

Every member computes the same answer from the same view (the pool's live members and
each flag's live holder), so no coordination beyond the tables is needed:

- flags held by a process outside the pool (a Go process, a single flag, a group not
  balancing this list) are left out: the members share the ``n`` others;
- with ``M`` members, ``n = q * M + r``: the ``r`` members holding most (ties broken by
  name) may hold ``q + 1``, the others ``q``; so no member holds more than ``ceil(n/M)``,
  and once settled, held counts differ by at most one;
- a member above its quota releases the flags it prefers least; a member below takes
  free flags in its own order of preference (a hash of member and flag name, different
  for each member, so members rarely race for the same flag);
- a member at its quota does nothing: a stable membership moves no flag.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Share", "fair_share", "preference"]


def preference(member: str, name: str) -> int:
    """How much ``member`` prefers flag ``name`` (higher first): stable across processes."""
    return zlib.crc32(f"{member}\0{name}".encode())


@dataclass(frozen=True)
class Share:
    """One member's view of its pool: the live ``members`` (sorted), this member's
    ``quota``, what it holds (``holding``), the ``free`` flags and the flags held by
    ``outsiders`` (processes outside the pool)."""

    member: str
    members: tuple[str, ...]
    quota: int
    holding: int
    free: tuple[str, ...]
    outsiders: tuple[str, ...]

    def to_take(self, held: Iterable[str]) -> set[str]:
        """The free flags to try for, given the flags ``held`` now."""
        room = self.quota - len(set(held))
        if room <= 0:
            return set()
        ranked = sorted(self.free, key=lambda name: -preference(self.member, name))
        return set(ranked[:room])

    def to_give(self, held: Iterable[str]) -> list[str]:
        """The held flags to release (least preferred first), given the flags ``held``."""
        mine = sorted(set(held), key=lambda name: preference(self.member, name))
        return mine[: max(len(mine) - self.quota, 0)]


def fair_share(member: str, members: Iterable[str], holders: Mapping[str, str | None]) -> Share:
    """The share of ``member`` given the pool's live ``members`` and, for each balanced
    flag, its live holder (None when free)."""
    live = sorted({member, *members})
    counted = {name: holder for name, holder in holders.items() if holder is None or holder in live}
    outsiders = tuple(sorted(name for name in holders if name not in counted))
    counts = Counter(holder for holder in counted.values() if holder is not None)
    base, extra = divmod(len(counted), len(live))
    ranked = sorted(live, key=lambda m: (-counts[m], m))
    quota = base + (1 if ranked.index(member) < extra else 0)
    free = tuple(sorted(name for name, holder in counted.items() if holder is None))
    return Share(member, tuple(live), quota, counts[member], free, outsiders)
