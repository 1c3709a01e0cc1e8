"""The ``leadership`` command line (the console script and ``python -m leadership``).

Each command is a small ``add_<command>(commands)`` function listed in ``COMMANDS``: it
adds its sub-parser and sets ``run`` to a function taking the parsed arguments and
returning the exit status. Exit status: 0 success, 1 failure (e.g. a database that cannot
be reached, a failed demo), 2 a user mistake (bad option or value), 130 interrupted. User
mistakes print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from . import __version__
from .arguments import EXIT_USAGE, Commands, Parser, UsageError, count, fraction, seconds
from .commands import add_release, add_run, add_status
from .errors import ConfigurationError, LeadershipError

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


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
        "--interval", type=seconds, default=1.0, metavar="SECONDS",
        help="lease interval; renewals every half of it (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--jitter", type=fraction, default=0.2, metavar="FRACTION",
        help="random spread of every scheduled wait, in [0, 1) (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=seconds, metavar="SECONDS",
        help="limit on each database operation (default: 80%% of the largest the timing "
        "rule allows, 0.24 s with the default interval and jitter)",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="also show renewals and the workers' log records",
    )  # fmt: skip
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
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


COMMANDS: tuple[Callable[[Commands], None], ...] = (add_run, add_status, add_release, add_demo)
"""The registrars of the commands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = Parser(
        prog="leadership",
        description="A distributed leadership flag on PostgreSQL or SQLite: at most one "
        "process at a time sees the flag raised.",
        epilog="Run 'leadership COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"leadership {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(commands)
    parser.set_defaults(run=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.run is None:
        choices = ", ".join(register.__name__.removeprefix("add_") for register in COMMANDS)
        return _fail(parser.prog, f"a command is needed ({choices}; see --help)", EXIT_USAGE)
    prog = f"{parser.prog} {args.command}"
    try:
        status: int = args.run(args)
    except (UsageError, ConfigurationError) as error:
        return _fail(prog, str(error), EXIT_USAGE)
    except LeadershipError as error:
        return _fail(prog, str(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    return status


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status
