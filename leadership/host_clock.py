"""The clock SQLite rows are stamped with: the host's boot clock, with the boot id.

Every process sharing an SQLite file runs on one host, so they can share a clock that
is never stepped: ``CLOCK_BOOTTIME`` (NTP, ``date -s`` and VM resume move only the wall
clock; suspend does not stop it). A process in a Linux time namespace (some containers)
sees it shifted by its namespace's offset, listed in ``/proc/self/timens_offsets``; the
offset is subtracted, so every process on the host reads the same value whatever its
namespace. Each reading belongs to one boot, named by the kernel's boot id: a row
stamped in another boot is expired.

Where there is no boot clock or no boot id (not Linux), the wall clock is used, in a
domain named ``"wall"``: host clock steps then move the flag's clock too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostClock", "host_clock"]

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
OFFSETS_FILE = Path("/proc/self/timens_offsets")


@dataclass(frozen=True)
class HostClock:
    """A clock shared by the processes of one host: ``read()`` in seconds, meaningful
    only against readings with the same ``domain``."""

    domain: str
    read: Callable[[], float]


def _boot_id() -> str | None:
    try:
        text = BOOT_ID_FILE.read_text().strip()
    except OSError:
        return None
    return text or None


def _boottime_offset() -> float:
    """This process's time-namespace offset of CLOCK_BOOTTIME, in seconds (0 outside one)."""
    try:
        lines = OFFSETS_FILE.read_text().splitlines()
    except OSError:
        return 0.0  # no time namespaces on this kernel
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[0] in ("boottime", str(getattr(time, "CLOCK_BOOTTIME", -1))):
            return int(fields[1]) + int(fields[2]) / 1e9
    return 0.0


def host_clock() -> HostClock:
    """The boot clock of this host (namespace offset removed), or the wall clock."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    boot = _boot_id()
    if clock_id is None or boot is None:
        return HostClock("wall", time.time)
    offset = _boottime_offset()

    def read() -> float:
        return time.clock_gettime(clock_id) - offset

    return HostClock(f"boot:{boot}", read)
