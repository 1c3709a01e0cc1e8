"""Prometheus metrics of a flag, named as the Go ancestor names them.

With subsystem ``S`` (labels ``name`` and ``process``):

- ``S_leadership_flag_state``: 1 while ``raised()`` is True, else 0 (read at scrape time);
- ``S_leadership_flag_transitions_total``: raises and lowers seen by the renewal thread;
- ``S_leadership_flag_renewal_duration_seconds``: duration of each check (histogram);
- ``S_leadership_flag_renewal_errors_total``: checks that failed;
- ``S_leadership_flag_lease_remaining_seconds``: what ``lease_remaining()`` says, at scrape;
- ``S_leadership_flag_clock_jumps_total``: renewals whose database clock disagreed with the
  lease clock by more than half the safety margin (the flag stays lowered meanwhile).

Several flags may share one registry: the collectors are created once per registry
and subsystem, and each flag uses its own label values.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .clock import Lease

__all__ = ["FlagMetrics", "GroupMetrics"]

LABELS = ("name", "process")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class _Families:
    state: Gauge
    transitions: Counter
    duration: Histogram
    errors: Counter
    remaining: Gauge
    clock_jumps: Counter


_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Families]] = (
    weakref.WeakKeyDictionary()
)
_families_lock = threading.Lock()


def _families_for(registry: CollectorRegistry, subsystem: str) -> _Families:
    with _families_lock:
        by_subsystem = _families.setdefault(registry, {})
        found = by_subsystem.get(subsystem)
        if found is None:
            found = _Families(
                state=Gauge(
                    "leadership_flag_state", "1 while this process holds the flag.",
                    LABELS, subsystem=subsystem, registry=registry,
                ),
                transitions=Counter(
                    "leadership_flag_transitions", "Times the flag was raised or lowered.",
                    LABELS, subsystem=subsystem, registry=registry,
                ),
                duration=Histogram(
                    "leadership_flag_renewal_duration_seconds", "Duration of acquire/renew checks.",
                    LABELS, subsystem=subsystem, registry=registry, buckets=BUCKETS,
                ),
                errors=Counter(
                    "leadership_flag_renewal_errors", "Acquire/renew checks that failed.",
                    LABELS, subsystem=subsystem, registry=registry,
                ),
                remaining=Gauge(
                    "leadership_flag_lease_remaining_seconds",
                    "Seconds left on the local lease; 0 when lowered.",
                    LABELS, subsystem=subsystem, registry=registry,
                ),
                clock_jumps=Counter(
                    "leadership_flag_clock_jumps",
                    "Renewals whose database clock disagreed with the lease clock.",
                    LABELS, subsystem=subsystem, registry=registry,
                ),
            )  # fmt: skip
            by_subsystem[subsystem] = found
        return found


class FlagMetrics:
    """The metric children of one flag; every method is cheap and never raises."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        subsystem: str,
        name: str,
        process: str,
    ) -> None:
        families = _families_for(registry or REGISTRY, subsystem)
        self._families = families
        self._labels = (name, process)
        self._transitions = families.transitions.labels(*self._labels)
        self._duration = families.duration.labels(*self._labels)
        self._errors = families.errors.labels(*self._labels)
        self._clock_jumps = families.clock_jumps.labels(*self._labels)

    def bind(self, lease: Lease) -> None:
        """Read the state gauges from ``lease`` at scrape time (held weakly)."""
        ref = weakref.ref(lease)

        def state() -> float:
            found = ref()
            return 1.0 if found is not None and found.raised() else 0.0

        def remaining() -> float:
            found = ref()
            return found.lease_remaining() if found is not None else 0.0

        self._families.state.labels(*self._labels).set_function(state)
        self._families.remaining.labels(*self._labels).set_function(remaining)

    def transition(self) -> None:
        self._transitions.inc()

    def check_took(self, seconds: float) -> None:
        self._duration.observe(seconds)

    def check_failed(self) -> None:
        self._errors.inc()

    def clock_jumped(self) -> None:
        self._clock_jumps.inc()

    def close(self) -> None:
        """Report the flag as lowered from now on (the series stay, at 0)."""
        self._families.state.labels(*self._labels).set_function(lambda: 0.0)
        self._families.remaining.labels(*self._labels).set_function(lambda: 0.0)


@dataclass(frozen=True)
class _GroupFamilies:
    members: Gauge
    quota: Gauge
    holding: Gauge
    failures: Counter


_group_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _GroupFamilies]] = (
    weakref.WeakKeyDictionary()
)
GROUP_LABELS = ("process",)


def _group_families_for(registry: CollectorRegistry, subsystem: str) -> _GroupFamilies:
    with _families_lock:
        by_subsystem = _group_families.setdefault(registry, {})
        found = by_subsystem.get(subsystem)
        if found is None:
            found = _GroupFamilies(
                members=Gauge(
                    "leadership_group_members", "Live members of the group's pool.",
                    GROUP_LABELS, subsystem=subsystem, registry=registry,
                ),
                quota=Gauge(
                    "leadership_group_share", "Balanced flags this member may hold.",
                    GROUP_LABELS, subsystem=subsystem, registry=registry,
                ),
                holding=Gauge(
                    "leadership_group_held", "Balanced flags this member holds.",
                    GROUP_LABELS, subsystem=subsystem, registry=registry,
                ),
                failures=Counter(
                    "leadership_group_tick_errors", "Group ticks (statements) that failed.",
                    GROUP_LABELS, subsystem=subsystem, registry=registry,
                ),
            )  # fmt: skip
            by_subsystem[subsystem] = found
        return found


class GroupMetrics:
    """A group's own metrics (its flags have theirs, as single flags):
    ``S_leadership_group_members``, ``_share`` and ``_held`` (after each tick of a
    balancing group) and ``S_leadership_group_tick_errors_total``."""

    def __init__(self, registry: CollectorRegistry | None, subsystem: str, process: str) -> None:
        families = _group_families_for(registry or REGISTRY, subsystem)
        self._members = families.members.labels(process)
        self._quota = families.quota.labels(process)
        self._holding = families.holding.labels(process)
        self._failures = families.failures.labels(process)

    def observe(self, members: int, quota: int, holding: int) -> None:
        self._members.set(members)
        self._quota.set(quota)
        self._holding.set(holding)

    def tick_failed(self) -> None:
        self._failures.inc()
