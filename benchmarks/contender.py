"""A child process contending for one flag, driven by the latency benchmark.

Usage: ``python contender.py DSN NAME PROCESS INTERVAL JITTER TIMEOUT``. It builds the
flag through the public API and talks over its standard streams, one line each:

- prints ``ready`` once the flag has finished its first check;
- prints ``raised <ns>`` the first time ``flag.raised()`` returns True, ``<ns>`` being
  CLOCK_BOOTTIME read right after (a system-wide clock, comparable across processes);
  ``raised()`` is polled every ``POLL`` seconds;
- on the line ``close`` it reads the clock, calls ``flag.close()`` and prints
  ``closed <ns>`` with that reading, then exits. SIGKILL is the other way out.
"""

from __future__ import annotations

import select
import sys
import time

from prometheus_client import CollectorRegistry

import leadership

POLL = 0.0005
SUBSYSTEM = "bench"


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(dsn: str, name: str, process: str, interval: str, jitter: str, timeout: str) -> None:
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
    main(*sys.argv[1:7])
