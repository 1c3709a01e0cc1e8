"""Exceptions raised by the leadership package."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "LeadershipError",
    "LeadershipLost",
    "SchemaError",
    "StoreUnavailable",
]


class LeadershipError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(LeadershipError, ValueError):
    """A builder parameter is missing or invalid; the message names the parameter."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter


class SchemaError(LeadershipError, ValueError):
    """The flags table exists but its schema is incompatible; the message names the column."""


class StoreUnavailable(LeadershipError, ConnectionError):
    """The database could not be reached or refused the connection at build time."""


class LeadershipLost(LeadershipError):
    """``Flag.guard`` found that this instance no longer holds the flag in its term."""
