"""The commands: ``leadership run``, ``status``, ``release`` and ``demo``.

Exit status of ``run``: the command's own status (128+N when killed by signal N),
``EXIT_LOST`` (75) when leadership was lost while it ran, 128+N when interrupted by
signal N while waiting; 127 or 126 at once, before contending, when the command cannot
be found or run. ``status`` and ``release``: 0 on success, 1 when the database fails,
2 for a usage mistake (a flag that does not exist included). ``demo``: 0 when every handover
happened and no overlap was seen, 1 otherwise, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .arguments import (
    Commands,
    UsageError,
    add_flag_options,
    count,
    fraction,
    handle_of,
    seconds_argument,
)
from .builder import new_flag
from .timing import Timing

if TYPE_CHECKING:
    from .admin import FlagRow, Listing

# Each command imports what only it needs (the stores, the supervisor, the demo) when it
# runs: ``leadership --help`` and a usage error stay quick.

__all__ = ["add_demo", "add_release", "add_run", "add_status"]

RELEASED_AGE = 1e8
"""Rows older than this many seconds were released (their timestamp is the epoch)."""


def add_run(commands: Commands) -> None:
    """``leadership run``: run a command only while holding the flag."""
    parser = commands.add_parser(
        "run",
        help="wait for the flag, run a command while holding it, release when it exits",
        description=(
            "Wait until this process holds the flag, then run COMMAND. When COMMAND exits, "
            "release the flag and exit with its status. When leadership is being lost (the "
            "lease is within --grace seconds of its end without a renewal, or another "
            "process took the flag), send COMMAND's process group SIGTERM, then SIGKILL "
            "before the lease ends, so it is gone before another process can take the "
            "flag; exit with status 75. SIGINT/SIGTERM are forwarded to COMMAND, then the "
            "flag is released. If this process is itself frozen past the lease, the "
            "kernel kills it and COMMAND (Linux)."
        ),
        epilog="Example: LEADERSHIP_HANDLE=postgresql://app@db/app leadership run "
        "--name nightly-report -- ./report.sh --full",
    )
    add_flag_options(parser, name_required=True)
    parser.add_argument("--process", help="this process's name, unique (default hostname-pid)")
    parser.add_argument(
        "--jitter", type=fraction, default=0.2, metavar="FRACTION",
        help="random spread of every scheduled wait (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--grace", type=seconds_argument, metavar="SECONDS",
        help="time COMMAND gets between SIGTERM and SIGKILL; at most interval * 0.9 - "
        "interval / 2 * (1 + jitter) - timeout, so a healthy holder never comes "
        "that close to the end of its lease (default: 5 s or that limit if smaller)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=count(1, 65535), metavar="PORT",
        help="serve Prometheus metrics on this port while running",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-subsystem", default="leadership_run", metavar="NAME",
        help="metric name prefix: NAME_leadership_flag_state... (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]", help="what to run"
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from .supervisor import CommandNotStarted, Supervisor, max_grace

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise UsageError("no command to run: give it after --, e.g. -- ./job.sh")
    try:
        _check_runnable(command[0])
    except CommandNotStarted as error:  # before contending: never hold a flag for nothing
        print(f"leadership run: error: {error}", file=sys.stderr, flush=True)
        return error.status
    timing = Timing(interval=args.interval, jitter=args.jitter, timeout=args.timeout)
    limit = max_grace(timing)
    if limit <= 0:
        raise UsageError(
            f"interval {timing.interval:g} s leaves no time to stop the command before the "
            "lease ends: raise --interval or lower --timeout"
        )
    grace = min(5.0, limit) if args.grace is None else args.grace
    if grace > limit:
        raise UsageError(
            f"--grace {grace:g} s is too long for interval {timing.interval:g} s: at most "
            f"{limit:.3g} s, so the command is stopped before another process can take the flag"
        )
    logging.basicConfig(level=logging.INFO, format="leadership run: %(message)s")
    logger = logging.getLogger("leadership.run")
    builder = (
        new_flag()
        .handle(handle_of(args))
        .name(args.name)
        .interval(timing.interval)
        .jitter(timing.jitter)
        .timeout(timing.timeout)
        .logger(logger)
    )
    if args.process:
        builder.process(args.process)
    if args.table:
        builder.table(args.table)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.metrics_port)
        except OSError as error:
            raise UsageError(f"--metrics-port {args.metrics_port}: {error.strerror}") from None
        builder.metrics_subsystem(args.metrics_subsystem)
    try:
        return Supervisor(builder.build(), command, grace, logger).run()
    except CommandNotStarted as error:
        print(f"leadership run: error: {error}", file=sys.stderr, flush=True)
        return error.status


def _check_runnable(program: str) -> None:
    """Raise CommandNotStarted unless ``program`` names an executable file, found as
    ``execvp`` would find it (through PATH unless it contains a slash)."""
    import shutil

    from .supervisor import CommandNotStarted

    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        raise CommandNotStarted(program, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CommandNotStarted(program, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))


def add_status(commands: Commands) -> None:
    """``leadership status``: who holds which flag, on the database clock."""
    parser = commands.add_parser(
        "status",
        help="show who holds each flag and the time left on its lease",
        description="One row per flag: name, holder, version, age of the last renewal and "
        "time left on the lease (database clock, with the given --interval), and whether "
        "it expired or was released.",
    )
    add_flag_options(parser, name_required=False)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--members",
        action="store_true",
        help="list the members of the pools of balancing groups instead of the flags",
    )
    parser.set_defaults(run=_status)


def _state(row: FlagRow) -> str:
    if row.age > RELEASED_AGE:
        return "released"
    return "expired" if row.expired else "held"


def _status(args: argparse.Namespace) -> int:
    import json

    from .admin import list_flags

    listing = list_flags(handle_of(args), args.interval, args.timeout, args.name, table=args.table)
    rows = listing.rows
    if args.members:
        return _print_members(listing, args.json)
    if args.name is not None and not rows:
        raise UsageError(f"no flag named {args.name!r}")
    if args.json:
        json.dump(
            [
                {
                    "table": listing.table,
                    "name": row.name,
                    "holder": row.holder,
                    "version": row.version,
                    "age": None if row.age > RELEASED_AGE else round(row.age, 3),
                    "left": round(row.left, 3),
                    "expired": row.expired,
                    "state": _state(row),
                }
                for row in rows
            ],
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    table = [("NAME", "HOLDER", "VERSION", "AGE", "LEFT", "STATE")]
    for row in rows:
        age = "-" if row.age > RELEASED_AGE else f"{row.age:.1f}s"
        table.append((row.name, row.holder, str(row.version), age, f"{row.left:.1f}s", _state(row)))
    _print_table(table, "(no flags)")
    handle = handle_of(args)
    sqlite = isinstance(handle, str) and handle.startswith("sqlite:")
    clock = "the host's boot clock" if sqlite else "the database clock"
    print(f"(table {listing.table}; times on {clock})")
    if listing.members and args.name is None:
        print()
        _print_members(listing, False)
    return 0


def _print_table(table: Sequence[tuple[str, ...]], empty: str) -> None:
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    if len(table) == 1:
        print(empty)


def _print_members(listing: Listing, as_json: bool) -> int:
    """The pools' members: pool, member, heartbeat age, time left, live, flags held."""
    import json

    members = listing.members
    if as_json:
        listed = [
            {
                "pool": m.pool,
                "member": m.member,
                "age": round(m.age, 3),
                "left": round(m.left, 3),
                "live": m.live,
                "holds": list(m.holds),
            }
            for m in members
        ]
        json.dump(listed, sys.stdout, indent=2)
        print()
        return 0
    table = [("POOL", "MEMBER", "AGE", "LEFT", "STATE", "HOLDS")]
    for m in members:
        state = "live" if m.live else "gone"
        holds = f"{len(m.holds)}: {', '.join(m.holds)}" if m.holds else "0"
        table.append((m.pool, m.member, f"{m.age:.1f}s", f"{m.left:.1f}s", state, holds))
    _print_table(table, "(no members)")
    print(f"(table {listing.table}_members; HOLDS: every flag it holds, in the pool or not)")
    return 0


def add_release(commands: Commands) -> None:
    """``leadership release``: expire a stuck holder's row."""
    parser = commands.add_parser(
        "release",
        help="expire a flag's row so a waiting process takes it now",
        description="Expire the flag's row at once and bump its version, waking waiting "
        "processes. For a holder known to be dead or stuck: a live holder is woken too and "
        "races the waiting processes; it takes the row back in a new term (a new token) or "
        "lowers at its next check, and until then two processes may be raised. Asks for "
        "confirmation unless --yes.",
    )
    add_flag_options(parser, name_required=True)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(run=_release)


def _release(args: argparse.Namespace) -> int:
    from .admin import read_flags, release_flag

    handle = handle_of(args)
    rows = read_flags(handle, args.interval, args.timeout, args.name, table=args.table)
    if not rows:
        raise UsageError(f"no flag named {args.name!r}")
    row = rows[0]
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to release without --yes (standard input is not a terminal)")
        answer = input(
            f"Release flag {row.name!r} held by {row.holder!r} (version {row.version}, "
            f"{_state(row)})? A live holder may still act for up to one interval. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not released")
            return 1
    released = release_flag(handle, args.name, args.timeout, table=args.table)
    if released is None:
        raise UsageError(f"no flag named {args.name!r}")
    print(f"released flag {row.name!r} (was held by {row.holder!r}, version {row.version})")
    return 0


def add_demo(commands: Commands) -> None:
    """``leadership demo``: the zero-set-up showcase."""
    parser = commands.add_parser(
        "demo",
        help="watch local processes hand a flag over through faults (no set-up needed)",
        description=(
            "Start several local worker processes contending for one flag (by default on a "
            "new SQLite file in a temporary directory, removed afterwards). Kill the leader "
            "(SIGKILL), pause the next one past its lease (SIGSTOP, then SIGCONT) and close "
            "the next one (flag.close()), printing who holds the flag and each handover time. "
            "At the end, check from the workers' reports that no two of them saw raised() "
            "True at the same time. Takes about 6 s with the defaults."
        ),
        epilog="Exit status: 0 when every handover happened and no overlap was seen, 1 "
        "otherwise, 2 for a bad option, 130 when interrupted (the workers are stopped).",
    )
    parser.add_argument(
        "--workers", type=count(3, 16), default=4, metavar="N",
        help="number of worker processes, 3 to 16 (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--handle", metavar="DSN",
        help="where the flag lives instead of the temporary SQLite file, e.g. "
        "postgresql://user@host/db or sqlite:////path/flags.db",
    )  # fmt: skip
    parser.add_argument("--name", default="leadership-demo", help="flag name (default %(default)s)")
    parser.add_argument(
        "--interval", type=seconds_argument, default=1.0, metavar="SECONDS",
        help="lease interval; renewals every half of it (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--jitter", type=fraction, default=0.2, metavar="FRACTION",
        help="random spread of every scheduled wait, in [0, 1) (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=seconds_argument, metavar="SECONDS",
        help="limit on each database operation (default: 80%% of the largest the timing "
        "rule allows, 0.24 s with the default interval and jitter)",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="also show renewals and the workers' log records",
    )  # fmt: skip
    parser.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            workers=args.workers,
            handle=args.handle,
            name=args.name,
            interval=args.interval,
            jitter=args.jitter,
            timeout=args.timeout,
            verbose=args.verbose,
        )
    )
