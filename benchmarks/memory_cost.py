"""Resident memory of flags, measured in fresh child processes.

The child (this file run as a script: ``python memory_cost.py DSN PREFIX COUNT HANDLE``)
imports everything a flag process imports (leadership, pg8000.dbapi, prometheus_client),
reads its RSS (the bare interpreter with the same imports), builds one flag and waits
until it is raised, reads RSS again, then builds ``COUNT - 1`` more flags (distinct names,
all raised) and reads RSS a third time; it prints the readings (KiB) as JSON.

``HANDLE`` is ``dsn`` (the DSN string, as users write it) or ``no-tls-probe``: a pg8000
connection factory with ``ssl_context=False``. With a DSN whose sslmode is disable, allow
or prefer, pg8000 (given ``ssl_context=None``) builds a default SSL context, loading the
system CA bundle, at every connection to probe for TLS; the second handle shows what the
flag costs without that.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["MemoryCost", "measure"]

INTERVAL, JITTER, TIMEOUT = 2.0, 0.2, 0.3


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass(frozen=True)
class MemoryCost:
    """Medians over the child runs, KiB."""

    empty_interpreter: float
    with_imports: float
    one_flag: float  # RSS with one raised flag minus with_imports
    per_extra_flag: float  # (RSS with COUNT flags - RSS with one) / (COUNT - 1)
    count: int
    runs: int


def _settle() -> None:
    gc.collect()
    time.sleep(0.3)  # let the renewal threads finish their first checks
    gc.collect()


def _child(dsn: str, prefix: str, count: int, handle_kind: str) -> None:
    import pg8000.dbapi  # (imported by the first flag: count it in the base)
    import prometheus_client  # noqa: F401

    import leadership
    from leadership.dsn import pg8000_options

    options = {**pg8000_options(dsn, TIMEOUT), "ssl_context": False}

    def connect() -> Any:
        return pg8000.dbapi.connect(**options)

    handle = dsn if handle_kind == "dsn" else connect

    def build(index: int) -> leadership.Flag:
        return (
            leadership.new_flag()
            .handle(handle)
            .name(f"{prefix}-{index}")
            .process("memory")
            .interval(INTERVAL)
            .jitter(JITTER)
            .timeout(TIMEOUT)
            .build()
        )

    def wait_raised(flags: list[leadership.Flag]) -> None:
        deadline = time.monotonic() + 20
        while not all(flag.raised() for flag in flags):
            if time.monotonic() > deadline:
                raise RuntimeError("flags not raised within 20 s")
            time.sleep(0.01)

    _settle()
    readings = {"imports": rss_kib()}
    flags = [build(0)]
    wait_raised(flags)
    _settle()
    readings["one"] = rss_kib()
    flags += [build(index) for index in range(1, count)]
    wait_raised(flags)
    _settle()
    readings["many"] = rss_kib()
    print(json.dumps(readings), flush=True)
    for flag in flags:
        flag.close()


def _empty_interpreter_kib() -> int:
    code = (
        "print(next(int(line.split()[1]) for line in open('/proc/self/status') "
        "if line.startswith('VmRSS:')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(done.stdout) if done.returncode == 0 else 0


def measure(dsn: str, prefix: str, count: int, runs: int, handle: str = "dsn") -> MemoryCost:
    """Run the child ``runs`` times (flag names ``prefix-r<run>-<i>``); return medians."""
    empty, imports, one, extra = [], [], [], []
    for run in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, dsn, f"{prefix}-r{run}", str(count), handle],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed: {done.stderr[-2000:]}")
        readings = json.loads(done.stdout.strip().splitlines()[-1])
        imports.append(readings["imports"])
        one.append(readings["one"] - readings["imports"])
        extra.append((readings["many"] - readings["one"]) / max(1, count - 1))
        empty.append(_empty_interpreter_kib())
    return MemoryCost(
        empty_interpreter=statistics.median(empty),
        with_imports=statistics.median(imports),
        one_flag=statistics.median(one),
        per_extra_flag=statistics.median(extra),
        count=count,
        runs=runs,
    )


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
