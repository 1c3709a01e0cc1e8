"""Fencing: check, inside the application's own transaction, that this term still holds.

The store locks the flag's row in the caller's transaction (on PostgreSQL ``FOR SHARE``:
a takeover cannot commit before that transaction ends); :func:`verify_holder` then checks
that the row still carries this process and a version written in this instance's
current term. Keep guarded transactions short: the holder's own renewal waits for them.
"""

from __future__ import annotations

from .errors import LeadershipLost

__all__ = ["verify_holder"]


def verify_holder(
    name: str, row: tuple[str, int] | None, process: str, versions: tuple[int, int]
) -> int:
    """Return the row's version if ``row`` (holder, version) carries ``process`` and a
    version within ``versions`` (first, last); else raise LeadershipLost."""
    if row is None:
        raise LeadershipLost(f"flag {name!r}: no row")
    holder, version = row
    first, last = versions
    if holder != process or not first <= version <= last:
        raise LeadershipLost(
            f"flag {name!r} is held by {holder!r} at version {version}, not by this "
            f"instance ({process!r}, versions {first}..{last})"
        )
    return version
