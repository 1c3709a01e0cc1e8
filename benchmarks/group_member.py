"""A child process balancing a list of flags in a group, driven by ``group_cost.py``.

Usage: ``python group_member.py DSN PREFIX COUNT PROCESS INTERVAL JITTER TIMEOUT POLL``.
It builds a group through the public API and balances the flags ``PREFIX-0`` to
``PREFIX-<COUNT-1>`` (one pool for every member given the same prefix and count), then
talks over its standard streams, one line each:

- prints ``ready`` once the group's first tick is done;
- on ``state``: prints ``state <held> <ticks>``, the flags raised now and the ticks so far;
- on ``mark``: forgets the tick durations timed so far (a window starts), prints ``marked``;
- on ``report``: prints ``report <json>``: ``held`` (names raised now), ``ticks`` and
  ``durations_ms`` (ticks of the window: each a statement's round trip, timed around the
  store call), ``releases`` (``[ns, names]`` for each release statement of the group,
  ``ns`` being CLOCK_BOOTTIME read just before it was sent) and ``raised`` (name -> the
  CLOCK_BOOTTIME reading when this process first saw the flag raised; only with ``POLL``);
- on ``close`` (or end of input): closes the group, prints ``closed``, exits.

The tick durations and release times are read by wrapping the group's store methods in
this process (benchmark instrumentation; the library is not changed). With ``POLL`` > 0 a
thread reads ``raised()`` of every flag each ``POLL`` seconds to time its first raise.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import leadership

BUILD_ATTEMPTS = 10


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Instruments:
    """Tick durations and release times of one group, read around its store calls."""

    def __init__(self, group: leadership.FlagGroup) -> None:
        self.lock = threading.Lock()
        self.ticks = 0
        self.durations_ms: list[float] = []
        self.releases: list[tuple[int, list[str]]] = []
        store: Any = group._store  # instrumentation only: the group's own store object
        tick, release = store.acquire_or_renew_many, store.release_many

        def timed_tick(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return tick(*args, **kwargs)
            finally:
                took = (time.perf_counter_ns() - started) / 1e6
                with self.lock:
                    self.ticks += 1
                    self.durations_ms.append(took)

        def timed_release(process: str, held: Any, *args: Any, **kwargs: Any) -> Any:
            names = [name for name, _ in held]
            if names:
                with self.lock:
                    self.releases.append((boottime_ns(), names))
            return release(process, held, *args, **kwargs)

        store.acquire_or_renew_many = timed_tick
        store.release_many = timed_release


def watch_raised(
    flags: list[leadership.Flag], poll: float, raised: dict[str, int], stop: threading.Event
) -> None:
    """Record when each flag is first seen raised, every ``poll`` seconds."""
    while not stop.is_set():
        for flag in flags:
            if flag.name not in raised and flag.raised():
                raised[flag.name] = boottime_ns()
        time.sleep(poll)


def main(
    dsn: str,
    prefix: str,
    count: str,
    process: str,
    interval: str,
    jitter: str,
    timeout: str,
    poll: str,
) -> None:
    builder = (
        leadership.new_group()
        .handle(dsn)
        .process(process)
        .interval(float(interval))
        .jitter(float(jitter))
        .timeout(float(timeout))
    )
    for attempt in range(BUILD_ATTEMPTS):  # many members start at once on a small machine
        try:
            group = builder.build()
            break
        except leadership.StoreUnavailable:
            if attempt == BUILD_ATTEMPTS - 1:
                raise
            time.sleep(0.2)
    instruments = Instruments(group)
    flags = group.balance([f"{prefix}-{index}" for index in range(int(count))])
    raised: dict[str, int] = {}
    stop = threading.Event()
    if float(poll) > 0:
        threading.Thread(
            target=watch_raised, args=(flags, float(poll), raised, stop), daemon=True
        ).start()
    deadline = time.monotonic() + 20
    while instruments.ticks < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    say("ready")
    for line in sys.stdin:
        command = line.strip()
        if command == "state":
            held = sum(flag.raised() for flag in flags)
            say(f"state {held} {instruments.ticks}")
        elif command == "mark":
            with instruments.lock:
                instruments.durations_ms.clear()
                instruments.ticks = 0
            say("marked")
        elif command == "report":
            with instruments.lock:
                data = {
                    "held": [flag.name for flag in flags if flag.raised()],
                    "ticks": instruments.ticks,
                    "durations_ms": list(instruments.durations_ms),
                    "releases": list(instruments.releases),
                    "raised": dict(raised),
                }
            say("report " + json.dumps(data))
        elif command == "close":
            break
    stop.set()
    group.close()
    say("closed")


if __name__ == "__main__":
    main(*sys.argv[1:9])
