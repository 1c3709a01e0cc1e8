"""Cost of groups of flags (``leadership.new_group()``): per tick, per flag, per pool.

1. **Ticks**: one group holding 1, 10, 100 and 1,000 flags, measured over a window of
   renewal ticks: statements and round trips on the wire (a ``WireCounter`` relay) and at
   the server (``pg_stat_statements`` on a throwaway cluster, when one can be started, one
   role per group), plan + execution time at the server, CPU time of the group's thread
   (its own CPU clock) and the round trip the flags' own check-duration histogram saw.
   Ticks are counted by that histogram (every held flag observes each renewal tick), so
   a statement more per tick shows as more than 1.
2. **Memory** per additional flag of a group, in a fresh child process: RSS as
   ``memory_cost.py`` reads it over adding ``COUNT`` flags to a group holding one (no
   tracing), then ``tracemalloc`` over adding ``COUNT`` more; the same for single flags
   (``new_flag()``), for comparison.
3. **Pool**: ``MEMBERS`` processes (``group_member.py``) each balancing the same list of
   ``FLAGS`` names, interval 2 s: time to converge (every flag held, held counts differing
   by at most one), then over a window: statements per second at the server, each tick's
   round trip (p50/p99 over every member's ticks) and the held counts per member.
4. **Rebalance handover**: a member holds every flag of a pool; another joins; from the
   holder's release statement (CLOCK_BOOTTIME read just before it is sent) to the joiner's
   first ``raised()`` of each released flag (read every 0.5 ms), system-wide clock.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import db_cost
import memory_cost
from prometheus_client import CollectorRegistry
from wire_counter import WireCounter

import leadership
from harness.cluster import Cluster
from leadership.dsn import pg8000_options

__all__ = [
    "GroupMode",
    "Handover",
    "MemoryCost",
    "PoolRun",
    "TickCost",
    "measure_handover",
    "measure_memory",
    "measure_pool",
    "measure_ticks",
    "percentile",
    "statistics_server",
]

HERE = Path(__file__).resolve().parent
MEMBER = HERE / "group_member.py"
SUBSYSTEM = "bench"
TICK_TIMING = (2.0, 0.2, 0.6)
"""Interval, jitter, timeout of the tick groups: a renewal tick every ~1 s (the largest
timeout the interval allows: 1,000 flags on a loaded 2-core machine)."""
POOL_TIMING = (2.0, 0.2, 0.5)
"""Interval, jitter, timeout of the pool members (the issue's interval of 2 s)."""
HANDOVER_TIMING = (2.0, 0.2, 0.5)
MEMORY_TIMING = (2.0, 0.2, 0.5)
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class GroupMode:
    flag_counts: tuple[int, ...]
    tick_window: float  # seconds per flag count
    memory_flags: int  # group flags added in the memory child
    memory_single_flags: int  # single flags added, for comparison
    members: int  # 0: no pool run
    pool_flags: int
    converge_within: float  # seconds
    pool_window: float  # seconds observed after convergence
    handover_flags: int
    handovers: int  # rebalances


QUICK = GroupMode((1, 10, 100, 1000), 4.0, 1000, 10, 20, 50, 30.0, 5.0, 10, 4)
FULL = GroupMode((1, 10, 100, 1000), 15.0, 1000, 20, 20, 50, 30.0, 10.0, 10, 20)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (nan when empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# ---------------------------------------------------------------------------- server


@dataclass
class Server:
    target: tuple[str, int] | str  # where relays and clients connect
    database: str
    cluster: Cluster | None
    note: str
    user: str  # the base DSN's user (the cluster's superuser on a cluster)

    def dsn(self, user: str, port: int | None = None) -> str:
        """A DSN for ``user``, through ``port`` (a relay's) or straight to the server."""
        if isinstance(self.target, str):  # a Unix socket: only without a relay
            if port is not None:
                return f"postgresql://{user}@127.0.0.1:{port}/{self.database}?sslmode=disable"
            return f"postgresql://{user}@/{self.database}?host={Path(self.target).parent}"
        host, server_port = self.target
        return f"postgresql://{user}@{host}:{port or server_port}/{self.database}?sslmode=disable"

    def calls(self, role: str) -> tuple[int, int, float]:
        """pg_stat_statements for ``role``: (calls but set-up ones, check calls, check
        plan + execution ms)."""
        if self.cluster is None:
            return (0, 0, 0.0)
        conn = self.cluster.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT s.query, s.calls, s.total_exec_time + s.total_plan_time "
                "FROM pg_stat_statements AS s JOIN pg_roles AS r ON r.oid = s.userid "
                "WHERE r.rolname = %s",
                (role,),
            )
            calls = check_calls = 0
            check_ms = 0.0
            for query, count, ms in cursor.fetchall():
                kind = db_cost.classify(query)
                if kind != "setup":  # LISTEN and the like, once per connection and flag
                    calls += count
                if kind == "check":
                    check_calls += count
                    check_ms += ms
            return calls, check_calls, check_ms
        finally:
            conn.close()

    def reset(self) -> None:
        if self.cluster is not None:
            conn = self.cluster.connect()
            try:
                conn.cursor().execute("SELECT pg_stat_statements_reset()")
            finally:
                conn.close()


@contextlib.contextmanager
def statistics_server(base_dsn: str, use_cluster: bool, roles: list[str]) -> Iterator[Server]:
    """A throwaway cluster with pg_stat_statements and ``roles`` (superusers) when one can
    be started, else the server of ``base_dsn`` (server figures then not measured)."""
    cluster: Cluster | None = None
    note = "no server figures (no throwaway cluster)"
    if use_cluster:
        cluster = Cluster(db_cost.STATISTICS_SETTINGS)
        try:
            cluster.start()
            note = "server figures from pg_stat_statements on a throwaway cluster (fsync off)"
        except Exception as error:
            cluster.remove()
            cluster = None
            note = f"no throwaway cluster with pg_stat_statements ({error})"
    try:
        if cluster is not None:
            admin = cluster.connect()
            try:
                cursor = admin.cursor()
                cursor.execute("CREATE EXTENSION pg_stat_statements")
                for role in roles:
                    cursor.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
            finally:
                admin.close()
            yield Server(("127.0.0.1", cluster.port), "postgres", cluster, note, cluster.user)
        else:
            options = pg8000_options(base_dsn, timeout=10)
            target = options.get("unix_sock") or (options["host"], options["port"])
            yield Server(target, options["database"], None, note, options["user"])
    finally:
        if cluster is not None:
            cluster.remove()


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


# ---------------------------------------------------------------------------- 1. ticks


@dataclass(frozen=True)
class TickCost:
    """One group of ``flags`` flags over a window of ``ticks`` renewal ticks."""

    flags: int
    ticks: int
    statements_per_tick: float  # on the wire, every statement but set-up ones
    round_trips_per_tick: float  # client turns charged to ticks (mean)
    median_round_trips: float  # of one tick's statement
    renewals_per_flag_tick: float  # the flags' check observations / flags / ticks
    client_cpu_ms_per_tick: float  # CPU time of the group's thread
    round_trip_ms_per_tick: float  # the flags' own check-duration histogram (mean)
    server_statements_per_tick: float | None  # pg_stat_statements
    server_ms_per_tick: float | None  # plan + execution
    warnings: int  # logged by the group over the whole run (failed ticks, reconnections)


class _Counting(logging.Handler):
    """Counts the records of warning level and above (the run's log stays quiet)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def quiet_logger(name: str) -> tuple[logging.Logger, _Counting]:
    """A logger that only counts warnings (one per flag per failed tick would flood)."""
    logger = logging.getLogger(f"bench.groups.{name}")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    handler = _Counting()
    logger.handlers = [handler]
    return logger, handler


def _thread_named(name: str) -> threading.Thread:
    for thread in threading.enumerate():
        if thread.name == name:
            return thread
    raise RuntimeError(f"no thread named {name!r}")


class _Histograms:
    def __init__(self, registry: CollectorRegistry, names: list[str], process: str) -> None:
        self._value = registry.get_sample_value
        self._labels = [{"name": name, "process": process} for name in names]
        self._prefix = f"{SUBSYSTEM}_leadership_flag_renewal_duration_seconds"

    def count(self, index: int = -1) -> float:
        return self._value(self._prefix + "_count", self._labels[index]) or 0.0

    def total(self, index: int = -1) -> float:
        return self._value(self._prefix + "_sum", self._labels[index]) or 0.0

    def all_counts(self) -> float:
        return sum(self._value(self._prefix + "_count", labels) or 0.0 for labels in self._labels)

    def after_tick(self, renew_every: float) -> None:
        """Return between two ticks: once a tick was observed by the last flag, plus a
        quarter of the renewal period (the flags are observed in one loop)."""
        seen = self.count()
        _wait(lambda: self.count() != seen, 10 * renew_every + 5, "a renewal tick")
        time.sleep(renew_every / 4)


def _tick_cost(server: Server, flags: int, window: float, prefix: str) -> TickCost:
    role = f"bench_group_{flags}"
    user = role if server.cluster else server.user
    interval, jitter, timeout = TICK_TIMING
    process = f"group-{flags}"
    registry = CollectorRegistry()
    logger, warnings = quiet_logger(process)
    with WireCounter(server.target, db_cost.classify) as relay:
        group = (
            leadership.new_group()
            .handle(server.dsn(user, relay.port))
            .process(process)
            .interval(interval)
            .jitter(jitter)
            .timeout(timeout)
            .logger(logger)
            .metrics_subsystem(SUBSYSTEM)
            .metrics_registerer(registry)
            .build()
        )
        try:
            names = [f"{prefix}-{flags}-{index}" for index in range(flags)]
            added = [group.flag(name) for name in names]
            _wait(lambda: all(flag.raised() for flag in added), 60, f"{flags} flags raised")
            clock = time.pthread_getcpuclockid(_thread_named(f"leadership group {process}").ident)  # type: ignore[arg-type]
            histograms = _Histograms(registry, names, process)
            renew_every = interval / 2
            histograms.after_tick(renew_every)
            server.reset()
            seen, ticks, cpu = relay.counts(), histograms.count(), time.clock_gettime(clock)
            took, observed = histograms.total(), histograms.all_counts()
            time.sleep(window)
            histograms.after_tick(renew_every)
            seen = relay.counts() - seen
            ticks = histograms.count() - ticks
            cpu = time.clock_gettime(clock) - cpu
            took = histograms.total() - took
            observed = histograms.all_counts() - observed
            calls, check_calls, check_ms = server.calls(role)
        finally:
            group.close()
    statements = seen.total_statements - seen.statements["setup"]
    return TickCost(
        flags=flags,
        ticks=int(ticks),
        statements_per_tick=statements / ticks,
        round_trips_per_tick=seen.round_trips["check"] / ticks,
        median_round_trips=seen.median_round_trips("check"),
        renewals_per_flag_tick=observed / flags / ticks,
        client_cpu_ms_per_tick=cpu / ticks * 1000,
        round_trip_ms_per_tick=took / ticks * 1000,
        server_statements_per_tick=calls / ticks if server.cluster else None,
        server_ms_per_tick=check_ms / check_calls if check_calls else None,
        warnings=warnings.count,
    )


def measure_ticks(
    base_dsn: str, mode: GroupMode, use_cluster: bool = True
) -> tuple[list[TickCost], str]:
    """Each flag count's tick cost, one group at a time; and a note on the server figures."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}-tick"
    roles = [f"bench_group_{flags}" for flags in mode.flag_counts]
    with statistics_server(base_dsn, use_cluster, roles) as server:
        costs = [_tick_cost(server, flags, mode.tick_window, prefix) for flags in mode.flag_counts]
    return costs, server.note


# ---------------------------------------------------------------------------- 2. memory


@dataclass(frozen=True)
class MemoryCost:
    """Per additional flag: traced bytes and RSS (KiB), of a group's and of single flags."""

    group_flags: int
    group_traced_bytes: float
    group_rss_kib: float
    single_flags: int
    single_traced_bytes: float
    single_rss_kib: float


def _quiet_traced() -> int:
    """Traced bytes at a quiet moment: the least of readings across a renewal period
    (a tick's transient allocations are then gone)."""
    readings = []
    for _ in range(4):
        gc.collect()
        readings.append(tracemalloc.get_traced_memory()[0])
        time.sleep(MEMORY_TIMING[0] / 2 * 0.45)
    return min(readings)


def _quiet_rss() -> int:
    gc.collect()
    time.sleep(MEMORY_TIMING[0] / 2)
    gc.collect()
    return memory_cost.rss_kib()


def _memory_child(dsn: str, prefix: str, group_flags: int, single_flags: int) -> None:
    import pg8000.dbapi  # noqa: F401  (imported by the first flag: count it in the base)
    import prometheus_client  # noqa: F401

    interval, jitter, timeout = MEMORY_TIMING
    logger, _ = quiet_logger("memory")

    def raised(flags: list[leadership.Flag]) -> bool:
        return all(flag.raised() for flag in flags)

    group = (
        leadership.new_group()
        .handle(dsn)
        .process("memory")
        .interval(interval)
        .jitter(jitter)
        .timeout(timeout)
        .logger(logger)
        .build()
    )
    flags = [group.flag(f"{prefix}-g-0")]
    singles: list[leadership.Flag] = []

    def single(index: int) -> leadership.Flag:
        return (
            leadership.new_flag()
            .handle(dsn)
            .name(f"{prefix}-s-{index}")
            .process("memory")
            .interval(interval)
            .jitter(jitter)
            .timeout(timeout)
            .logger(logger)
            .build()
        )

    try:
        singles.append(single(0))
        _wait(lambda: raised(flags + singles), 30, "the first flags")
        # RSS untraced (tracemalloc's own records would count), then traced bytes over
        # as many more flags.
        readings = {"rss": _quiet_rss()}
        flags += [group.flag(f"{prefix}-g-{index}") for index in range(1, group_flags + 1)]
        _wait(lambda: raised(flags), 60, "the group's flags")
        readings["group_rss"] = _quiet_rss()
        singles += [single(index) for index in range(1, single_flags + 1)]
        _wait(lambda: raised(singles), 60, "the single flags")
        readings["single_rss"] = _quiet_rss()
        tracemalloc.start()
        readings["traced"] = _quiet_traced()
        more = range(group_flags + 1, 2 * group_flags + 1)
        flags += [group.flag(f"{prefix}-g-{index}") for index in more]
        _wait(lambda: raised(flags), 60, "the group's flags")
        readings["group_traced"] = _quiet_traced()
        more = range(single_flags + 1, 2 * single_flags + 1)
        singles += [single(index) for index in more]
        _wait(lambda: raised(singles), 60, "the single flags")
        readings["single_traced"] = _quiet_traced()
        tracemalloc.stop()
        print(json.dumps(readings), flush=True)
    finally:
        for flag in singles:
            flag.close()
        group.close()


def measure_memory(dsn: str, mode: GroupMode) -> MemoryCost:
    """Run the memory child once (fresh interpreter); per additional flag figures."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}-gmem"
    args = [str(mode.memory_flags), str(mode.memory_single_flags)]
    path = os.pathsep.join([str(HERE), str(HERE.parent)])  # this directory, harness/
    done = subprocess.run(
        [sys.executable, __file__, "memory", dsn, prefix, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": path},
    )
    if done.returncode != 0:
        raise RuntimeError(f"group memory child failed: {done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return MemoryCost(
        group_flags=mode.memory_flags,
        group_traced_bytes=(r["group_traced"] - r["traced"]) / mode.memory_flags,
        group_rss_kib=(r["group_rss"] - r["rss"]) / mode.memory_flags,
        single_flags=mode.memory_single_flags,
        single_traced_bytes=(r["single_traced"] - r["group_traced"]) / mode.memory_single_flags,
        single_rss_kib=(r["single_rss"] - r["group_rss"]) / mode.memory_single_flags,
    )


# ---------------------------------------------------------------------------- members


class _Member:
    """One ``group_member.py`` child and the last line of each kind it printed."""

    def __init__(self, dsn: str, prefix: str, flags: int, process: str, timing: tuple[float, ...],
                 poll: float) -> None:  # fmt: skip
        self.process = process
        self.proc = subprocess.Popen(
            [sys.executable, str(MEMBER), dsn, prefix, str(flags), process,
             *map(str, timing), str(poll)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float = START_TIMEOUT) -> str:
        """The rest of the next line starting with ``word``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise RuntimeError(f"member {self.process} did not say {word!r} in time")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"member {self.process} exited (waiting for {word!r})")
            head, _, rest = line.strip().partition(" ")
            if head == word:
                return rest

    def ask(self, command: str, word: str) -> str:
        self.send(command)
        return self.expect(word)

    def state(self) -> tuple[int, int]:
        held, ticks = self.ask("state", "state").split()
        return int(held), int(ticks)

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ask("report", "report"))
        return data

    def finish(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                self.send("close")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# ---------------------------------------------------------------------------- 3. pool


@dataclass(frozen=True)
class PoolRun:
    members: int
    flags: int
    interval: float
    converged_after: float  # seconds from every member's first tick (inf: never)
    window: float  # seconds observed after convergence
    statements_per_second: float | None  # at the server (pg_stat_statements), all members
    ticks_per_second: float  # the members' own tick counts
    tick_p50_ms: float
    tick_p99_ms: float
    tick_max_ms: float
    held: dict[str, int] = field(default_factory=dict)  # at the end of the window

    @property
    def spread(self) -> int:
        return max(self.held.values()) - min(self.held.values()) if self.held else -1


def _converged(counts: list[int], flags: int) -> bool:
    return sum(counts) == flags and max(counts) - min(counts) <= 1


def measure_pool(base_dsn: str, mode: GroupMode, use_cluster: bool = True) -> tuple[PoolRun, str]:
    """Start the members, wait for convergence, observe a window; the figures and a note."""
    role = "bench_member"
    prefix = f"bench-{uuid.uuid4().hex[:10]}-pool"
    with statistics_server(base_dsn, use_cluster, [role]) as server:
        dsn = server.dsn(role if server.cluster else server.user)
        members: list[_Member] = []
        started = time.monotonic()
        try:
            for index in range(mode.members):
                members.append(_Member(dsn, prefix, mode.pool_flags, f"member-{index:02d}",
                                       POOL_TIMING, 0.0))  # fmt: skip
            for member in members:
                member.expect("ready")
            started = time.monotonic()  # every member balances: the pool's start
            converged_after = math.inf
            while time.monotonic() - started < mode.converge_within:
                if _converged([member.state()[0] for member in members], mode.pool_flags):
                    converged_after = time.monotonic() - started
                    break
                time.sleep(0.1)
            for member in members:
                member.ask("mark", "marked")
            before = server.calls(role)[0]
            began = time.monotonic()
            time.sleep(mode.pool_window)
            reports = [member.report() for member in members]
            window = time.monotonic() - began
            after = server.calls(role)[0]
        finally:
            for member in members:
                member.finish()
    durations = [ms for report in reports for ms in report["durations_ms"]]
    return PoolRun(
        members=mode.members,
        flags=mode.pool_flags,
        interval=POOL_TIMING[0],
        converged_after=converged_after,
        window=window,
        statements_per_second=(after - before) / window if server.cluster else None,
        ticks_per_second=sum(report["ticks"] for report in reports) / window,
        tick_p50_ms=percentile(durations, 0.5),
        tick_p99_ms=percentile(durations, 0.99),
        tick_max_ms=max(durations, default=float("nan")),
        held={m.process: len(r["held"]) for m, r in zip(members, reports, strict=True)},
    ), server.note


# ---------------------------------------------------------------------------- 4. handover


@dataclass(frozen=True)
class Handover:
    """Seconds from the holder's release statement to the joiner's first ``raised()``:
    per released flag, and per rebalance (its last flag)."""

    flags: int
    rebalances: int
    per_flag: tuple[float, ...]
    per_rebalance: tuple[float, ...]


def _took_share(joiner: _Member, share: int) -> bool:
    return len(joiner.report()["raised"]) >= share


def measure_handover(dsn: str, mode: GroupMode) -> Handover:
    """``mode.handovers`` rebalances: a holder of all ``handover_flags`` flags, then a
    joiner (a new process each time, closed after it took its share)."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}-join"
    flags = mode.handover_flags
    per_flag: list[float] = []
    per_rebalance: list[float] = []
    holder = _Member(dsn, prefix, flags, "holder", HANDOVER_TIMING, 0.0)
    try:
        holder.expect("ready")
        seen_releases = 0
        for index in range(mode.handovers):
            _wait(lambda: holder.state()[0] == flags, 20, "the holder to hold every flag")
            joiner = _Member(dsn, prefix, flags, f"joiner-{index}", HANDOVER_TIMING, 0.0005)
            try:
                joiner.expect("ready")
                _wait(partial(_took_share, joiner, flags // 2), 20, "the joiner's share")
                releases = holder.report()["releases"][seen_releases:]
                seen_releases += len(releases)
                raised: dict[str, int] = joiner.report()["raised"]
            finally:
                joiner.finish()
            released_at = {name: at for at, names in releases for name in names}
            delays = [
                (raised[name] - released_at[name]) / 1e9 for name in raised if name in released_at
            ]
            if len(delays) != len(raised):
                raise RuntimeError(f"joiner took flags not released by the holder: {raised}")
            per_flag += delays
            per_rebalance.append(max(delays))
    finally:
        holder.finish()
    return Handover(flags, len(per_rebalance), tuple(per_flag), tuple(per_rebalance))


if __name__ == "__main__":
    if sys.argv[1:2] == ["memory"]:
        _memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit("usage: group_cost.py memory DSN PREFIX GROUP_FLAGS SINGLE_FLAGS")
