"""A contender process: builds a flag through the public API and witnesses ``raised()``.

``python -m harness.chaos.contender --dsn DSN --name N --process P --log FILE ...``
(run with the checkout on ``PYTHONPATH``; see :func:`harness.child_env`).

Group mode: ``--names A,B,... --role balance|flags|single --log-dir DIR`` builds a group
(:func:`leadership.new_group`) that balances the names (``balance``) or adds a flag for
each (``flags``), or a single flag for the first name (``single``), and witnesses every
flag in one loop (:mod:`.witnesses`), flag ``F`` in ``DIR/P@F.log`` (:func:`flag_log`).

The witness log (see :mod:`leadership.testing`) gets a BUILT mark once the flag (or the
group and its flags) is built and a CLOSE mark around ``close()``. SIGTERM closes the
flag (or the group) gracefully and exits 0; the process dies with its parent
(parent-death signal). ``--unsafe`` wraps the flag in a deliberately broken
:class:`CachedFlag` (the Go ancestor's behaviour), to show that the checker catches it.
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
from pathlib import Path
from typing import Any

import leadership
from harness.sql import connect_autocommit
from leadership.deadman import die_with_parent
from leadership.store import TABLE
from leadership.testing import Kind, Witness

from .witnesses import Witnesses

__all__ = ["ROLES", "CachedFlag", "flag_log", "main"]

ROLES = ("balance", "flags", "single")
"""Group mode: a group balancing the names, a group with a flag for each name, or a
single flag (``new_flag()``) for the first name."""


def flag_log(directory: Path, process: str, flag: str) -> Path:
    """Where ``process`` writes the witness log of flag ``flag`` in group mode."""
    return directory / f"{process}@{flag}.log"


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


def _build_group(args: argparse.Namespace, names: list[str]) -> tuple[Any, list[Any]]:
    """Build the group and its flags, retrying while the database is unreachable: a
    failed attempt closes its group and starts again."""
    while True:
        group: Any = None
        try:
            group = (
                leadership.new_group()
                .handle(args.dsn)
                .process(args.process)
                .interval(args.interval)
                .jitter(args.jitter)
                .timeout(args.timeout)
                .build()
            )
            if args.role == "balance":
                return group, group.balance(names)
            return group, [group.flag(name) for name in names]
        except Exception as error:
            if not isinstance(error, leadership.StoreUnavailable):
                logging.getLogger("leadership").warning("group build failed, retrying: %s", error)
            if group is not None:
                with contextlib.suppress(Exception):
                    group.close()
            time.sleep(0.05)


def _run_group(args: argparse.Namespace, parent: int) -> int:
    """Group mode: build, witness every flag, close on SIGTERM."""
    names = [name for name in args.names.split(",") if name]
    if args.role == "single":
        names = names[:1]
    witnesses: Witnesses | None = None
    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True
        if witnesses is not None:
            witnesses.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    before = time.monotonic_ns()
    group: Any = None
    if args.role == "single":
        args.name = names[0]
        flags: list[Any] = [_build(args)]
    else:
        group, flags = _build_group(args, names)
    directory = Path(args.log_dir)
    witnesses = Witnesses(
        [
            (flag.raised, flag_log(directory, args.process, name))
            for flag, name in zip(flags, names, strict=True)
        ],
        max_gap=args.max_gap,
    )
    witnesses.stopping = stopped
    witnesses.mark(Kind.BUILT, before, time.monotonic_ns())
    if os.getppid() != parent:
        return 1
    witnesses.watch(args.witness_sleep)
    before = time.monotonic_ns()
    if group is not None:
        group.close()
    else:
        flags[0].close()
    witnesses.mark(Kind.CLOSE, before, time.monotonic_ns())
    witnesses.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--name", help="the flag (single-flag mode)")
    parser.add_argument("--process", required=True)
    parser.add_argument("--log", help="witness log file (appended; single-flag mode)")
    parser.add_argument("--names", help="group mode: comma-separated flag names")
    parser.add_argument("--role", choices=ROLES, default="flags", help="group mode")
    parser.add_argument("--log-dir", help="group mode: where the per-flag logs go")
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
    if args.names is None and (args.name is None or args.log is None):
        parser.error("either --name and --log, or --names and --log-dir")
    if args.names is not None and args.log_dir is None:
        parser.error("--names needs --log-dir")

    die_with_parent()
    parent = os.getppid()
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.process} %(threadName)s %(levelname)s %(message)s",
    )
    sys.setswitchinterval(args.switch_interval)
    if args.names is not None:
        return _run_group(args, parent)
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
