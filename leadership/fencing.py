"""Fencing: check, inside the application's own transaction, that this term still holds.

``guard`` locks the flag's row (``FOR SHARE``) in the caller's transaction, so a
takeover cannot commit before that transaction ends, and verifies that the row still
carries this process and a version written in this instance's current term.
Keep guarded transactions short: the holder's own renewal waits for them too.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .errors import LeadershipLost
from .store import TABLE

__all__ = ["check_row"]

LOCK_POSTGRES = f"SELECT holder, version FROM {TABLE} WHERE name = %s FOR SHARE"
READ_SQLITE = f"SELECT holder, version FROM {TABLE} WHERE name = ?"


def check_row(conn: Any, name: str, process: str, versions: tuple[int, int]) -> int:
    """Lock and read the row of ``name`` through ``conn``; return its version.

    Raises LeadershipLost unless the row carries ``process`` and a version within
    ``versions`` (first, last).
    """
    sql = READ_SQLITE if isinstance(conn, sqlite3.Connection) else LOCK_POSTGRES
    cursor = conn.cursor()
    try:
        cursor.execute(sql, (name,))
        row = cursor.fetchone()
    finally:
        cursor.close()
    if row is None:
        raise LeadershipLost(f"flag {name!r}: no row")
    holder, version = row[0], int(row[1])
    first, last = versions
    if holder != process or not first <= version <= last:
        raise LeadershipLost(
            f"flag {name!r} is held by {holder!r} at version {version}, not by this "
            f"instance ({process!r}, versions {first}..{last})"
        )
    return version
