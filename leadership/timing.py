"""The timing rules of a flag: lease, renewal schedule, retry and timeout.

All durations are seconds (float). With interval ``I``, jitter ``j`` and timeout ``T``:

- another process may take the flag once the database clock says the row is older than ``I``;
- the holder's local lease ends ``SAFETY_MARGIN * I`` earlier, counted from the lease-clock
  reading taken *before* the renewal that succeeded was sent;
- the holder renews every ``I/2`` (+/- ``j``); after an error it retries at once (5 ms:
  usually a dropped connection), then every ``I/10`` (+/- ``j``);
- rule: ``T <= I * (1 - SAFETY_MARGIN) - I/2 * (1 + j)``, so the first renewal, even when it
  starts as late as the jitter allows and takes its whole timeout, ends before the local lease.
"""

from __future__ import annotations

import math

from .errors import ConfigurationError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    from datetime import timedelta
    from typing import TypeAlias

    Duration: TypeAlias = float | timedelta
    """A duration as a builder takes it: seconds (int or float) or a ``timedelta``."""

__all__ = ["SAFETY_MARGIN", "Timing", "seconds"]

SAFETY_MARGIN = 0.1
"""Fraction of the interval the local lease ends before the database's expiry."""


def seconds(parameter: str, value: object) -> float:
    """Convert a duration given as int, float or timedelta to finite seconds, or raise."""
    from datetime import timedelta  # on use: the package is imported without datetime

    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigurationError(
            parameter, f"expected seconds (int or float) or a timedelta, got {value!r}"
        )
    if not math.isfinite(result):
        raise ConfigurationError(parameter, f"must be finite, got {value!r}")
    return result


class Timing:
    """Validated timing of one flag (seconds): immutable, compared by value.

    Raises ConfigurationError, naming the parameter, when a value breaks a rule. (Not a
    dataclass: the dataclasses module, which imports inspect, would cost more at import
    than the rest of the package.)
    """

    __slots__ = ("interval", "jitter", "timeout")

    interval: float
    jitter: float
    timeout: float

    def __init__(self, interval: float = 30.0, jitter: float = 0.2, timeout: float = 1.0) -> None:
        for name, value in (("interval", interval), ("jitter", jitter), ("timeout", timeout)):
            object.__setattr__(self, name, value)
        if not self.interval > 0:
            raise ConfigurationError("interval", f"must be > 0 seconds, got {self.interval!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("jitter", f"must be in [0, 1), got {self.jitter!r}")
        if not self.timeout > 0:
            raise ConfigurationError("timeout", f"must be > 0 seconds, got {self.timeout!r}")
        if self.timeout > self.max_timeout:
            raise ConfigurationError(
                "timeout",
                f"{self.timeout:g} s is too large for interval {self.interval:g} s and jitter "
                f"{self.jitter:g}: a renewal must be able to finish before the local lease ends, "
                f"so timeout <= interval * {1 - SAFETY_MARGIN:g} - interval / 2 * (1 + jitter) "
                f"= {self.max_timeout:.3g} s (raise the interval or lower the timeout)",
            )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Timing is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Timing is immutable: cannot delete {name}")

    def _values(self) -> tuple[float, float, float]:
        return self.interval, self.jitter, self.timeout

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if isinstance(other, Timing) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        interval, jitter, timeout = self._values()
        return f"Timing({interval=}, {jitter=}, {timeout=})"

    def __reduce__(self) -> tuple[type[Timing], tuple[float, float, float]]:
        """Pickled (and copied) by its values, validated again when loaded."""
        return Timing, self._values()

    def __copy__(self) -> Timing:
        return self  # immutable

    def __deepcopy__(self, memo: object) -> Timing:
        return self

    def replace(self, **changes: float) -> Timing:
        """A Timing with some values changed (validated), as ``dataclasses.replace`` did."""
        values = dict(zip(("interval", "jitter", "timeout"), self._values(), strict=True))
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"Timing has no field {sorted(unknown)[0]!r}")
        return Timing(**{**values, **changes})

    @property
    def max_timeout(self) -> float:
        """The largest timeout the rule allows for this interval and jitter."""
        return self.interval * (1 - SAFETY_MARGIN) - self.interval / 2 * (1 + self.jitter)

    @property
    def lease_ns(self) -> int:
        """Length of the local lease, counted from before the renewal was sent (ns)."""
        return int(self.interval * (1 - SAFETY_MARGIN) * 1e9)

    @property
    def renew_every(self) -> float:
        """Mean wait between successful checks (before jitter)."""
        return self.interval / 2

    @property
    def retry_every(self) -> float:
        """Mean wait after a failed check (before jitter)."""
        return self.interval / 10
