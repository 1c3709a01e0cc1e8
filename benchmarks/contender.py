"""A child process contending for one flag, driven by the latency benchmark.

Usage: ``python contender.py DSN NAME PROCESS INTERVAL JITTER TIMEOUT [WAITER]``. It builds
the flag through the public API and talks over its standard streams, one line each:

- prints ``ready`` once the flag has finished its first check;
- prints ``raised <ns>`` the first time ``flag.raised()`` returns True, ``<ns>`` being
  CLOCK_BOOTTIME read right after (a system-wide clock, comparable across processes);
- on the line ``close`` it reads the clock, calls ``flag.close()`` and prints
  ``closed <ns>`` with that reading, then exits. SIGKILL is the other way out.

``WAITER`` says how the main thread waits for the flag once ready (default ``poll``):

- ``poll``: ``raised()`` every ``POLL`` seconds, between looks at its standard input;
- ``blocked``: blocked in ``flag.wait_raised()``;
- ``spin``: ``raised()`` in a tight loop, no sleep (the main thread holds the GIL);
- ``spin-switch``: the same after ``sys.setswitchinterval(SHORT_SWITCH)``: what a
  process spinning on ``raised()`` can do so that its renewal thread gets the GIL
  sooner than the default 5 ms at each hand-off.

In the last two, a helper thread reads the standard input.
"""

from __future__ import annotations

import select
import sys
import threading
import time

from prometheus_client import CollectorRegistry

import leadership

POLL = 0.0005
SUBSYSTEM = "bench"
WAITERS = ("poll", "blocked", "spin", "spin-switch")
SHORT_SWITCH = 0.0002


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def close_on_command(flag: leadership.Flag, done: threading.Event) -> None:
    """Read commands until ``close`` (or end of input); close the flag, say when."""
    while True:
        command = sys.stdin.readline().strip()
        if command in ("close", ""):
            started = boottime_ns()
            flag.close()
            say(f"closed {started}")
            done.set()
            return


def main(
    dsn: str,
    name: str,
    process: str,
    interval: str,
    jitter: str,
    timeout: str,
    waiter: str = "poll",
) -> None:
    if waiter not in WAITERS:
        raise SystemExit(f"waiter must be one of {WAITERS}, got {waiter!r}")
    registry = CollectorRegistry()
    flag = (
        leadership.new_flag()
        .handle(dsn)
        .name(name)
        .process(process)
        .interval(float(interval))
        .jitter(float(jitter))
        .timeout(float(timeout))
        .metrics_subsystem(SUBSYSTEM)
        .metrics_registerer(registry)
        .build()
    )
    checks = f"{SUBSYSTEM}_leadership_flag_renewal_duration_seconds_count"
    labels = {"name": name, "process": process}
    if waiter == "poll":
        poll(flag, registry, checks, labels)
        return
    while not flag.raised() and (registry.get_sample_value(checks, labels) or 0) < 1:
        time.sleep(POLL)
    say("ready")
    done = threading.Event()
    threading.Thread(target=close_on_command, args=(flag, done), daemon=True).start()
    if waiter == "spin-switch":
        sys.setswitchinterval(SHORT_SWITCH)
    if waiter == "blocked":
        raised = flag.wait_raised()
    else:
        raised = flag.raised()
        while not raised and not flag.closed:
            raised = flag.raised()
    if raised:
        say(f"raised {boottime_ns()}")
    done.wait()


def poll(
    flag: leadership.Flag, registry: CollectorRegistry, checks: str, labels: dict[str, str]
) -> None:
    ready = raised = False
    stdin = sys.stdin.fileno()
    while True:
        if not raised and flag.raised():
            raised = True
            say(f"raised {boottime_ns()}")
        if not ready and (raised or (registry.get_sample_value(checks, labels) or 0) >= 1):
            ready = True
            say("ready")
        if select.select([stdin], [], [], POLL)[0]:
            command = sys.stdin.readline().strip()
            if command in ("close", ""):
                started = boottime_ns()
                flag.close()
                say(f"closed {started}")
                return


if __name__ == "__main__":
    main(*sys.argv[1:8])
