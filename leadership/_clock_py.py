"""Pure-Python twin of :mod:`leadership._clock`: the lease clock, the lease and jitter.

The compiled module and this one have the same API; :mod:`leadership.clock` picks one.
"""

from __future__ import annotations

import random
import time

__all__ = ["Lease", "jittered", "now_ns"]

IMPLEMENTATION = "python"

_CLOCK_ID: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def now_ns() -> int:
    """Read the lease clock in nanoseconds.

    The lease clock is CLOCK_BOOTTIME where the platform has it (it keeps counting
    while the machine is suspended), else the monotonic clock. Only differences
    between two readings mean anything.
    """
    if _CLOCK_ID is None:
        return time.monotonic_ns()
    return time.clock_gettime_ns(_CLOCK_ID)


if _CLOCK_ID is None:  # pragma: no cover - non-Linux platforms
    _read = time.monotonic_ns
else:
    _clock_id: int = _CLOCK_ID

    def _read() -> int:
        return time.clock_gettime_ns(_clock_id)


_random = random.Random()


def jittered(seconds: float, jitter: float) -> float:
    """Return ``seconds`` scaled by a uniform random factor in ``[1 - jitter, 1 + jitter]``."""
    return seconds * (1.0 + jitter * (2.0 * _random.random() - 1.0))


class Lease:
    """A local lease deadline on the lease clock.

    ``raised()`` is True only while the lease clock is before the deadline. A new
    lease is lowered. The deadline is changed only by ``_extend`` and ``_lower``.
    """

    __slots__ = ("_deadline_ns",)

    def __init__(self) -> None:
        self._deadline_ns = 0

    def raised(self) -> bool:
        """Return True while the lease clock is before the deadline; never blocks or raises."""
        return _read() < self._deadline_ns

    def lease_remaining(self) -> float:
        """Seconds left before the deadline, 0.0 when lowered."""
        left = self._deadline_ns - _read()
        return left / 1e9 if left > 0 else 0.0

    def _extend(self, start_ns: int, duration_ns: int) -> None:
        """Set the deadline to ``start_ns + duration_ns`` (lease-clock nanoseconds)."""
        self._deadline_ns = start_ns + duration_ns

    def _lower(self) -> None:
        """Drop the deadline: ``raised()`` is False from now on until the next ``_extend``."""
        self._deadline_ns = 0

    @property
    def _deadline(self) -> int:
        """The deadline in lease-clock nanoseconds (0 when never raised)."""
        return self._deadline_ns
