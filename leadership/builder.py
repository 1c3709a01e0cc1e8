"""The builder of a flag: every parameter of the Go ancestor, validated in ``build()``.

``build()`` imports what a flag needs beyond the package itself: the backend (and its
driver), logging and, only when metrics are enabled, prometheus_client.
"""

from __future__ import annotations

import os

from .deferred import IMPORTING, hold_across_fork
from .errors import ConfigurationError
from .flag import Flag
from .timing import Timing, seconds

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any

    from prometheus_client import CollectorRegistry

    from .callbacks import Callback
    from .store import DBAPIConnection
    from .timing import Duration

__all__ = ["FlagBuilder", "new_flag"]

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
"""A Prometheus metric name (the whole subsystem must match)."""


def default_process() -> str:
    """``hostname-pid``: unique per live process on a network of distinct hosts."""
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def new_flag() -> FlagBuilder:
    """Start building a flag."""
    return FlagBuilder()


class FlagBuilder:
    """Collects a flag's parameters; ``build()`` validates them and starts the flag.

    Every setter returns the builder. Durations are seconds (int or float) or a
    ``datetime.timedelta``.
    """

    def __init__(self) -> None:
        self._handle: Any = None
        self._table: Any = None
        self._name: Any = None
        self._process: Any = None
        self._interval: Any = 30.0
        self._jitter: Any = 0.2
        self._timeout: Any = 1.0
        self._logger: Any = None
        self._subsystem: Any = None
        self._registry: Any = None
        self._precheck: Any = None
        self._on_raised: Any = None
        self._on_lowered: Any = None

    def handle(self, handle: str | Callable[[], DBAPIConnection]) -> FlagBuilder:
        """Where the flag lives: a DSN or a connection factory (mandatory)."""
        self._handle = handle
        return self

    def table(self, table: str) -> FlagBuilder:
        """The flags table, ``schema.name``, or ``name``: the one table of that name in the
        database, whatever its schema (default ``leadership_flags``).

        A name alone is looked up in the whole database, not through the role's search
        path, and created in the current schema when there is none; ``build()`` fails
        when there are several, rather than let processes use different ones.
        """
        self._table = table
        return self

    def name(self, name: str) -> FlagBuilder:
        """The flag's name, shared by every process contending for it (mandatory)."""
        self._name = name
        return self

    def process(self, process: str) -> FlagBuilder:
        """This process's name, unique among live processes; default ``hostname-pid``."""
        self._process = process
        return self

    def interval(self, interval: Duration) -> FlagBuilder:
        """The lease length; renewals every half of it (default 30 s)."""
        self._interval = interval
        return self

    def jitter(self, jitter: float) -> FlagBuilder:
        """Random spread of every scheduled wait, ``0 <= jitter < 1`` (default 0.2)."""
        self._jitter = jitter
        return self

    def timeout(self, timeout: Duration) -> FlagBuilder:
        """Limit on each database operation (default 1 s)."""
        self._timeout = timeout
        return self

    def logger(self, logger: logging.Logger) -> FlagBuilder:
        """Where to log (default ``logging.getLogger("leadership")``)."""
        self._logger = logger
        return self

    def metrics_subsystem(self, subsystem: str) -> FlagBuilder:
        """Enable metrics named ``<subsystem>_leadership_flag_*``."""
        self._subsystem = subsystem
        return self

    def metrics_registerer(self, registry: CollectorRegistry) -> FlagBuilder:
        """The Prometheus registry for the metrics (default the global REGISTRY)."""
        self._registry = registry
        return self

    def precheck(self, precheck: Callable[[], bool]) -> FlagBuilder:
        """Asked before every check: when it returns False or raises, the flag is lowered
        and released and this process does not contend until it says yes again."""
        self._precheck = precheck
        return self

    def on_raised(self, callback: Callback) -> FlagBuilder:
        """Called (on a callback thread) when the flag is raised for a new term.

        If it raises, the error is logged and the flag is lowered, released and not
        contended for one interval."""
        self._on_raised = callback
        return self

    def on_lowered(self, callback: Callback) -> FlagBuilder:
        """Called (on a callback thread) when a term ends, also when the lease runs out."""
        self._on_lowered = callback
        return self

    def build(self) -> Flag:
        """Validate the parameters, connect, prepare the table and start contending.

        Raises ConfigurationError (a ValueError) naming the bad parameter,
        StoreUnavailable when the database cannot be reached, SchemaError when
        the table is incompatible.
        """
        import logging  # first, outside the lock: see leadership/deferred.py

        hold_across_fork()
        with IMPORTING:
            import re

            from .backends import open_store
            from .store import QualifiedName

        name = _text("name", self._name)
        process = _text(
            "process", self._process if self._process is not None else default_process()
        )
        timing = Timing(
            interval=seconds("interval", self._interval),
            jitter=_jitter(self._jitter),
            timeout=seconds("timeout", self._timeout),
        )
        logger = self._logger if self._logger is not None else logging.getLogger("leadership")
        if not isinstance(logger, logging.Logger):
            raise ConfigurationError("logger", f"expected a logging.Logger, got {logger!r}")
        registry = self._registry
        if registry is not None:
            with IMPORTING:
                from prometheus_client import CollectorRegistry

            if not isinstance(registry, CollectorRegistry):
                raise ConfigurationError(
                    "metrics_registerer", f"expected a CollectorRegistry, got {registry!r}"
                )
        subsystem = self._subsystem
        if subsystem is not None and not (
            isinstance(subsystem, str) and re.fullmatch(METRIC_NAME, subsystem)
        ):
            raise ConfigurationError(
                "metrics_subsystem",
                f"must be a Prometheus name like background_tasks, got {subsystem!r}",
            )
        for parameter, value in (
            ("precheck", self._precheck),
            ("on_raised", self._on_raised),
            ("on_lowered", self._on_lowered),
        ):
            if value is not None and not callable(value):
                raise ConfigurationError(parameter, f"expected a callable, got {value!r}")
        if self._handle is None:
            raise ConfigurationError("handle", "missing: give a DSN or a connection factory")
        table = None if self._table is None else str(QualifiedName.parse(self._table))
        store = open_store(self._handle, timing.timeout, table=table)
        for note in store.notes:
            logger.warning("flag %r: %s", name, note)
        logger.debug("flag %r uses table %s", name, store.table)
        metrics = None
        if subsystem is not None:
            with IMPORTING:
                from .metrics import FlagMetrics

            metrics = FlagMetrics(registry, subsystem, name, process)
        flag = Flag(
            name=name,
            process=process,
            timing=timing,
            store=store,
            logger=logger,
            metrics=metrics,
            precheck=self._precheck,
            on_raised=self._on_raised,
            on_lowered=self._on_lowered,
        )
        if metrics is not None:
            metrics.bind(flag)
        return flag


def _text(parameter: str, value: Any) -> str:
    if value is None:
        raise ConfigurationError(parameter, "missing")
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(parameter, f"must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise ConfigurationError(parameter, "must not contain NUL characters")
    return value


def _jitter(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError("jitter", f"expected a number in [0, 1), got {value!r}")
    return float(value)
