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
    from typing import Any, TypeVar

    from prometheus_client import CollectorRegistry

    from .callbacks import Callback
    from .group import FlagGroup
    from .store import DBAPIConnection, Store
    from .timing import Duration

    B = TypeVar("B", bound="Builder")

__all__ = [
    "Builder",
    "FlagBuilder",
    "GroupBuilder",
    "Settings",
    "new_flag",
    "new_group",
    "start_flag",
]

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
"""A Prometheus metric name (the whole subsystem must match)."""


def default_process() -> str:
    """``hostname-pid``: unique per live process on a network of distinct hosts."""
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def new_flag() -> FlagBuilder:
    """Start building a flag."""
    return FlagBuilder()


def new_group() -> GroupBuilder:
    """Start building a group of flags (see :class:`leadership.FlagGroup`)."""
    return GroupBuilder()


class Settings:
    """The parameters a flag and a group share, validated (see :meth:`Builder._settle`)."""

    __slots__ = ("logger", "process", "registry", "store", "subsystem", "timing")

    def __init__(
        self,
        process: str,
        timing: Timing,
        logger: logging.Logger,
        store: Store,
        subsystem: str | None,
        registry: CollectorRegistry | None,
    ) -> None:
        self.process = process
        self.timing = timing
        self.logger = logger
        self.store = store
        self.subsystem = subsystem
        self.registry = registry


class Builder:
    """The setters a flag and a group share. Every setter returns the builder.
    Durations are seconds (int or float) or a ``datetime.timedelta``."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._table: Any = None
        self._process: Any = None
        self._interval: Any = 30.0
        self._jitter: Any = 0.2
        self._timeout: Any = 1.0
        self._logger: Any = None
        self._subsystem: Any = None
        self._registry: Any = None

    def handle(self: B, handle: str | Callable[[], DBAPIConnection]) -> B:
        """Where the flag lives: a DSN or a connection factory (mandatory)."""
        self._handle = handle
        return self

    def table(self: B, table: str) -> B:
        """The flags table, ``schema.name``, or ``name``: the one table of that name in the
        database, whatever its schema (default ``leadership_flags``).

        A name alone is looked up in the whole database, not through the role's search
        path, and created in the current schema when there is none; ``build()`` fails
        when there are several, rather than let processes use different ones.
        """
        self._table = table
        return self

    def process(self: B, process: str) -> B:
        """This process's name, unique among live processes; default ``hostname-pid``."""
        self._process = process
        return self

    def interval(self: B, interval: Duration) -> B:
        """The lease length; renewals every half of it (default 30 s)."""
        self._interval = interval
        return self

    def jitter(self: B, jitter: float) -> B:
        """Random spread of every scheduled wait, ``0 <= jitter < 1`` (default 0.2)."""
        self._jitter = jitter
        return self

    def timeout(self: B, timeout: Duration) -> B:
        """Limit on each database operation (default 1 s)."""
        self._timeout = timeout
        return self

    def logger(self: B, logger: logging.Logger) -> B:
        """Where to log (default ``logging.getLogger("leadership")``)."""
        self._logger = logger
        return self

    def metrics_subsystem(self: B, subsystem: str) -> B:
        """Enable metrics named ``<subsystem>_leadership_flag_*``."""
        self._subsystem = subsystem
        return self

    def metrics_registerer(self: B, registry: CollectorRegistry) -> B:
        """The Prometheus registry for the metrics (default the global REGISTRY)."""
        self._registry = registry
        return self

    def _settle(self, what: str) -> Settings:
        """Validate the shared parameters, connect and prepare the table; ``what`` names
        the flag or group in log lines. Raises as ``build()`` says."""
        import logging  # first, outside the lock: see leadership/deferred.py

        hold_across_fork()
        with IMPORTING:
            import re

            from .backends import open_store
            from .store import QualifiedName

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
        self._check_callables()
        if self._handle is None:
            raise ConfigurationError("handle", "missing: give a DSN or a connection factory")
        table = None if self._table is None else str(QualifiedName.parse(self._table))
        store = open_store(self._handle, timing.timeout, table=table)
        for note in store.notes:
            logger.warning("%s: %s", what, note)
        logger.debug("%s uses table %s", what, store.table)
        return Settings(process, timing, logger, store, subsystem, registry)

    def _check_callables(self) -> None:
        """Raise ConfigurationError for a callback parameter that is not callable."""


class FlagBuilder(Builder):
    """Collects a flag's parameters; ``build()`` validates them and starts the flag."""

    def __init__(self) -> None:
        super().__init__()
        self._name: Any = None
        self._precheck: Any = None
        self._on_raised: Any = None
        self._on_lowered: Any = None

    def name(self, name: str) -> FlagBuilder:
        """The flag's name, shared by every process contending for it (mandatory)."""
        self._name = name
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
        name = _text("name", self._name)
        settings = self._settle(f"flag {name!r}")
        return start_flag(
            settings,
            name,
            precheck=self._precheck,
            on_raised=self._on_raised,
            on_lowered=self._on_lowered,
        )

    def _check_callables(self) -> None:
        check_callables(
            precheck=self._precheck, on_raised=self._on_raised, on_lowered=self._on_lowered
        )


class GroupBuilder(Builder):
    """Collects a group's parameters: those of :class:`FlagBuilder` but the flag's own
    (name, precheck and callbacks, given per flag to :meth:`FlagGroup.flag`)."""

    def build(self) -> FlagGroup:
        """Validate the parameters, connect, prepare the table and start the group's
        thread (contending for nothing until flags are added).

        Raises ConfigurationError (a ValueError) naming the bad parameter,
        StoreUnavailable when the database cannot be reached, SchemaError when
        the table is incompatible.
        """
        process = self._process
        settings = self._settle("group" if process is None else f"group of {process!r}")
        with IMPORTING:
            from .group import FlagGroup

            metrics = None
            if settings.subsystem is not None:
                from .metrics import GroupMetrics

                metrics = GroupMetrics(settings.registry, settings.subsystem, settings.process)
        return FlagGroup(settings, metrics)


def check_callables(**callables: object) -> None:
    """Raise ConfigurationError naming the first parameter that is set but not callable."""
    for parameter, value in callables.items():
        if value is not None and not callable(value):
            raise ConfigurationError(parameter, f"expected a callable, got {value!r}")


def start_flag(
    settings: Settings,
    name: str,
    *,
    precheck: Callable[[], bool] | None = None,
    on_raised: Callback | None = None,
    on_lowered: Callback | None = None,
    group: FlagGroup | None = None,
) -> Flag:
    """Start a flag with validated settings: on its own thread, or in ``group``."""
    metrics = None
    if settings.subsystem is not None:
        with IMPORTING:
            from .metrics import FlagMetrics

        metrics = FlagMetrics(settings.registry, settings.subsystem, name, settings.process)
    flag = Flag(
        name=name,
        process=settings.process,
        timing=settings.timing,
        store=settings.store,
        logger=settings.logger,
        metrics=metrics,
        precheck=precheck,
        on_raised=on_raised,
        on_lowered=on_lowered,
        group=group,
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
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ConfigurationError(parameter, "must be valid Unicode (no lone surrogates)") from None
    if size > MAX_TEXT_BYTES:
        raise ConfigurationError(
            parameter, f"must be at most {MAX_TEXT_BYTES} bytes in UTF-8, got {size}"
        )
    return value


MAX_TEXT_BYTES = 1000
"""The longest name, process or pool (PostgreSQL indexes no key over some 2,700 bytes; a
group's one statement would fail for all its flags on one such name)."""


def _jitter(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError("jitter", f"expected a number in [0, 1), got {value!r}")
    return float(value)
