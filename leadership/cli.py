"""The ``leadership`` command line (the console script and ``python -m leadership``).

Each command is a small ``add_<command>(commands)`` function of :mod:`leadership.commands`,
listed in ``COMMANDS``: it adds its sub-parser and sets ``run`` to a function taking the
parsed arguments and returning the exit status. Exit status: 0 success, 1 failure (e.g. a
database that cannot be reached, a failed demo), 2 a user mistake (bad option or value),
130 interrupted. User mistakes print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from . import __version__
from .arguments import EXIT_USAGE, Commands, Parser, UsageError
from .commands import add_demo, add_release, add_run, add_status
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
