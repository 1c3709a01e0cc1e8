"""A contender process: builds a flag through the public API and witnesses ``raised()``.

``python -m leadership.chaos.contender --dsn DSN --name N --process P --log FILE ...``

The witness log (see :mod:`leadership.testing`) gets a BUILT mark once the flag is
built and a CLOSE mark around ``close()``. SIGTERM closes the flag gracefully and exits
0; the process dies with its parent (parent-death signal). ``--unsafe`` replaces the
flag by a deliberately broken one whose ``raised()`` is a cached boolean (the Go
ancestor's behaviour), to show that the checker catches it.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import leadership
from leadership.backends import open_store
from leadership.clock import jittered
from leadership.errors import StoreUnavailable
from leadership.testing import Kind, Witness

__all__ = ["CachedFlag", "main"]

PR_SET_PDEATHSIG = 1


class CachedFlag:
    """UNSAFE on purpose: ``raised()`` returns the result of the last check, with no
    deadline, so a paused or partitioned holder keeps seeing True."""

    def __init__(self, dsn: str, name: str, process: str, interval: float, timeout: float):
        self._store = open_store(dsn, name, interval, timeout)
        self._name, self._process, self._interval = name, process, interval
        self._cached = False
        self._mine = -1
        self._stamp = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def raised(self) -> bool:
        return self._cached

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                seen = self._store.check(
                    self._name, self._process, self._mine, self._stamp, self._interval
                )
                self._cached = seen.acquired
                self._mine = seen.version if seen.acquired and seen.version is not None else -1
                self._stamp = seen.stamp
            except Exception:
                self._cached = False
            self._stop.wait(jittered(self._interval / 2, 0.2))

    def close(self) -> None:
        self._cached = False
        self._stop.set()
        self._thread.join(2.0)
        self._store.close()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _build(args: argparse.Namespace) -> Any:
    """Build the flag, retrying while the database is unreachable (it may be faulted)."""
    while True:
        try:
            if args.unsafe:
                return CachedFlag(args.dsn, args.name, args.process, args.interval, args.timeout)
            return (
                leadership.new_flag()
                .handle(args.dsn)
                .name(args.name)
                .process(args.process)
                .interval(args.interval)
                .jitter(args.jitter)
                .timeout(args.timeout)
                .build()
            )
        except StoreUnavailable:
            time.sleep(0.05)
        except Exception as error:  # e.g. the connection was cut while preparing the table
            logging.getLogger("leadership").warning("build failed, retrying: %s", error)
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--process", required=True)
    parser.add_argument("--log", required=True, help="witness log file (appended)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=0.3)
    parser.add_argument("--max-gap", type=float, default=0.05, help="seconds (witness)")
    parser.add_argument(
        "--witness-sleep", type=float, default=0.0, help="seconds between calls (0: tight loop)"
    )
    parser.add_argument("--switch-interval", type=float, default=0.001, help="GIL, seconds")
    parser.add_argument("--log-level", default="WARNING", help="of the flag's logger")
    parser.add_argument("--unsafe", action="store_true", help="cached boolean, no deadline")
    args = parser.parse_args(argv)

    _die_with_parent()
    parent = os.getppid()
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.process} %(threadName)s %(levelname)s %(message)s",
    )
    sys.setswitchinterval(args.switch_interval)
    witness = Witness(args.log, max_gap=args.max_gap)

    def stop(signum: int, frame: object) -> None:
        witness.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    before = time.monotonic_ns()
    flag = _build(args)
    witness.mark(Kind.BUILT, before, time.monotonic_ns())
    if os.getppid() != parent:
        return 1
    witness.watch(flag.raised, args.witness_sleep)
    before = time.monotonic_ns()
    flag.close()
    witness.mark(Kind.CLOSE, before, time.monotonic_ns())
    witness.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
