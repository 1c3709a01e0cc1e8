"""A contender process: builds a flag through the public API and witnesses ``raised()``.

``python -m harness.chaos.contender --dsn DSN --name N --process P --log FILE ...``
(run with the checkout on ``PYTHONPATH``; see :func:`harness.child_env`).

The witness log (see :mod:`leadership.testing`) gets a BUILT mark once the flag is
built and a CLOSE mark around ``close()``. SIGTERM closes the flag gracefully and exits
0; the process dies with its parent (parent-death signal). ``--unsafe`` wraps the flag
in a deliberately broken :class:`CachedFlag` (the Go ancestor's behaviour), to show
that the checker catches it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any

import leadership
from harness.sql import connect_autocommit
from leadership.deadman import die_with_parent
from leadership.store import TABLE
from leadership.testing import Kind, Witness

__all__ = ["CachedFlag", "main"]


class CachedFlag:
    """UNSAFE on purpose, the Go ancestor's flaw: ``raised()`` returns a cached boolean
    with no deadline of its own.

    ``flag`` (a real flag, built through the public API) does the campaigning. A thread
    refreshes the boolean every ``interval / 2`` seconds (+-20 %) with a check on the
    database, as the ancestor did: is this process the holder in the flag's row? The
    answer stays in force until the next check completes, so a holder that was paused
    or cut off keeps seeing True meanwhile. A failed check caches False. ``timeout``
    (seconds) bounds each check; ``close()`` closes ``flag``.
    """

    def __init__(self, flag: leadership.Flag, dsn: str, interval: float, timeout: float) -> None:
        self._flag = flag
        self._dsn = dsn
        self._period = interval / 2
        self._timeout = timeout
        self._cached = False
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="cached flag", daemon=True)
        self._thread.start()

    def raised(self) -> bool:
        return self._cached

    def _holds(self) -> bool:
        if self._conn is None:
            self._conn = connect_autocommit(self._dsn, self._timeout)
        cursor = self._conn.cursor()
        cursor.execute(f"SELECT holder FROM {TABLE} WHERE name = %s", (self._flag.name,))
        rows = cursor.fetchall()
        return bool(rows) and rows[0][0] == self._flag.process

    def _refresh(self) -> None:
        while True:
            try:
                self._cached = self._holds()
            except Exception:
                self._cached = False
                self._disconnect()
            if self._stop.wait(self._period * random.uniform(0.8, 1.2)):
                return

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._cached = False
        self._stop.set()
        self._thread.join(2.0)
        self._disconnect()
        self._flag.close()


def _build(args: argparse.Namespace) -> leadership.Flag:
    """Build the flag, retrying while the database is unreachable (it may be faulted)."""
    while True:
        try:
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
        except leadership.StoreUnavailable:
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

    die_with_parent()
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
    built = _build(args)
    flag = CachedFlag(built, args.dsn, args.interval, args.timeout) if args.unsafe else built
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
