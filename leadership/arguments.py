"""Argument types and the parser class shared by the ``leadership`` commands.

User mistakes found while parsing exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import NoReturn, TypeAlias

__all__ = [
    "EXIT_USAGE",
    "Commands",
    "Parser",
    "UsageError",
    "add_flag_options",
    "count",
    "fraction",
    "handle_of",
    "seconds_argument",
]

EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake found after parsing; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


Commands: TypeAlias = "argparse._SubParsersAction[Parser]"
"""What a command's ``add_<command>`` function receives to add its sub-parser to."""


def seconds_argument(text: str) -> float:
    """argparse type: command-line text as a positive, finite number of seconds.

    Raises argparse.ArgumentTypeError (a usage error) for anything else.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def count(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def add_flag_options(parser: argparse.ArgumentParser, *, name_required: bool) -> None:
    """The options that mirror the builder: --handle, --name, --process, timing."""
    parser.add_argument(
        "--handle", default=os.environ.get("LEADERSHIP_HANDLE"), metavar="DSN",
        help="where the flags live: postgresql://..., sqlite:///path (default: the "
        "LEADERSHIP_HANDLE environment variable, which keeps passwords out of the process list)",
    )  # fmt: skip
    parser.add_argument(
        "--table", default=os.environ.get("LEADERSHIP_TABLE"), metavar="[SCHEMA.]TABLE",
        help="the flags table (default: the LEADERSHIP_TABLE environment variable, else the "
        "one table named leadership_flags in the database, whatever its schema)",
    )  # fmt: skip
    parser.add_argument("--name", required=name_required, help="the flag's name")
    parser.add_argument(
        "--interval", type=seconds_argument, default=30.0, metavar="SECONDS",
        help="lease interval (default %(default)s); status uses the interval each holder "
        "recorded in its row, this one only for rows that do not say",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=seconds_argument, default=1.0, metavar="SECONDS",
        help="limit on each database operation (default %(default)s)",
    )  # fmt: skip


def handle_of(args: argparse.Namespace) -> str:
    """The handle given by --handle or LEADERSHIP_HANDLE, or a UsageError."""
    handle: str | None = args.handle
    if not handle:
        raise UsageError("no handle: give --handle DSN or set LEADERSHIP_HANDLE")
    return handle
