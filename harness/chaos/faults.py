"""The fault kinds, their seeded schedule and the record of each injected fault.

The schedule is a pure function of the seed and the settings: the same seed gives the
same sequence of kinds, durations, targeting choices and pauses between faults. Faults
run one after another; the kinds come in rounds (a shuffled permutation of the enabled
kinds per round), so every kind occurs once in each round.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ALL_KINDS", "KINDS", "PROCESS_KINDS", "Fault", "FaultSpec", "schedule"]

KINDS = (
    "kill",  # SIGKILL of a contender; a replacement starts
    "close",  # graceful close() of a contender (SIGTERM); a replacement starts
    "stop",  # SIGSTOP for 1.2-3 x interval, then SIGCONT
    "partition",  # the contender's proxy holds all bytes both ways, then releases them
    "latency",  # the contender's proxy delays each direction by 0.6-1.5 x timeout
    "terminate",  # pg_terminate_backend of the contender's connection
    "restart",  # restart of the PostgreSQL server (fast or immediate shutdown)
    "steal",  # UPDATE of the row to holder 'thief', version + 1, timestamp now()
    "readonly",  # default_transaction_read_only on for 1.2-3 x interval, then off
)

OPTIONAL_KINDS = (
    "failover",  # the primary crashes (immediate), its synchronous standby is promoted
)
"""Kinds run only when asked for (``--kinds``): ``failover`` needs a replicated pair,
which every run then has (a standby rebuilt from the new primary after each)."""
ALL_KINDS = KINDS + OPTIONAL_KINDS

PROCESS_KINDS = frozenset({"kill", "close", "stop", "partition", "latency", "terminate"})
"""Kinds aimed at one contender (the others hit the database itself)."""

RESTART_MODES = ("fast", "immediate")


@dataclass(frozen=True)
class FaultSpec:
    """One scheduled fault.

    ``duration`` (seconds) is how long stop, partition, latency and readonly last;
    ``holder`` says whether a process fault aims at the current holder (else at a
    random other contender, chosen with ``pick`` in [0, 1)); ``amount`` is the
    one-way latency in seconds, or the restart mode; ``pause`` is the wait after
    the fault, once the flag is held again.
    """

    kind: str
    duration: float
    holder: bool
    pick: float
    amount: float | str
    pause: float


def schedule(
    seed: int,
    count: int,
    interval: float,
    timeout: float,
    kinds: Sequence[str] = KINDS,
    holder_bias: float = 0.8,
) -> list[FaultSpec]:
    """The first ``count`` faults of the schedule for ``seed``."""
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {ALL_KINDS}")
    rng = random.Random(seed)
    faults: list[FaultSpec] = []
    while len(faults) < count:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            duration = 0.0
            amount: float | str = 0.0
            if kind in ("stop", "partition", "readonly"):
                duration = rng.uniform(1.2, 3.0) * interval
            elif kind == "latency":
                duration = rng.uniform(1.0, 3.0) * interval
                amount = rng.uniform(0.6, 1.5) * timeout
            elif kind == "restart":
                amount = rng.choice(RESTART_MODES)
            faults.append(
                FaultSpec(
                    kind=kind,
                    duration=duration,
                    holder=rng.random() < holder_bias,
                    pick=rng.random(),
                    amount=amount,
                    pause=rng.uniform(0.2, 0.8) * interval,
                )
            )
    return faults[:count]


@dataclass
class Fault:
    """A fault as it was injected (CLOCK_MONOTONIC ns).

    ``victim`` is the contender process it hit (None for database faults); ``holder``
    the process that held the flag when it started, as the witnesses showed it. In
    group mode ``flag`` is the flag the fault aims at (whose holder it may hit, whose
    row ``steal`` takes, whose failover it measures); None otherwise.
    """

    kind: str
    start: int
    end: int
    victim: str | None = None
    holder: str | None = None
    detail: str = ""
    flag: str | None = None
