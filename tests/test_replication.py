"""The flag over replicated PostgreSQL (issue 10): contenders whose DSN lists a primary
and its standby with ``target_session_attrs=read-write``; the primary crashes
(``stop -m immediate``), the standby is promoted, and the flag moves to it.

With synchronous replication (``synchronous_commit = on`` and the standby named in
``synchronous_standby_names``) every renewal a holder saw committed is on the standby
before the crash: no overlap, over several failovers (a new standby is built from the
new primary after each, on the crashed one's port, as an operator or Patroni would).

With asynchronous replication a renewal the holder saw committed can be lost in the
crash: the promoted standby has an older row, whose lease ends before the holder's.
:func:`test_async_replication_loses_renewals_and_overlaps` measures that with the
replication stream held back (through a fault proxy) for part of an interval before the
crash: the honest figure is that it overlaps.

``LEADERSHIP_FAILOVERS`` sets the number of synchronous failovers (default 3; the
issue's chaos figure is 50). The chaos harness's ``failover`` kind runs twice as well.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import leadership
from harness.chaos.launch import launch
from harness.cluster import Cluster
from harness.proxy import TcpProxy
from leadership.testing import overlapping_spans
from tests.conftest import require_cluster_tools
from tests.history import OverlapWatch

INTERVAL = 1.0
TIMEOUT = 0.3
CONTENDERS = 3
FAILOVERS = int(os.environ.get("LEADERSHIP_FAILOVERS", "3"))

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@dataclass
class Replicated:
    """A primary and one standby on two fixed ports, rebuilt after each failover."""

    synchronous: bool
    primary: Cluster = field(init=False)
    standby: Cluster = field(init=False)
    proxy: TcpProxy | None = None
    builds: int = 0

    def __post_init__(self) -> None:
        self.primary = Cluster(name="node0").start()
        self.standby = self._standby_of(self.primary, None)

    @property
    def ports(self) -> list[int]:
        """The two nodes' ports: the same two after each failover and rebuild."""
        return [self.primary.port, self.standby.port]

    def _standby_of(self, primary: Cluster, port: int | None) -> Cluster:
        self.builds += 1
        name = f"node{self.builds}"
        via = None
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if not self.synchronous:  # the async stream goes through a proxy that can hold it
            self.proxy = TcpProxy(("127.0.0.1", primary.port))
            via = ("127.0.0.1", self.proxy.port)
        standby = primary.standby(name, port=port, via=via)
        standby.start()
        primary.wait_streaming(name)
        if self.synchronous:
            primary.synchronous(name)
            primary.wait_streaming(name, sync=True)
        return standby

    def fail_over(self) -> tuple[float, float]:
        """Crash the primary, promote the standby; return the lease-clock-free times
        (monotonic) of the crash and of the promotion's end."""
        crashed = time.monotonic()
        self.primary.stop("immediate")
        self.standby.promote()
        promoted = time.monotonic()
        if self.synchronous:  # no standby to wait for until one is built (Patroni's way)
            self.standby.synchronous("")
        return crashed, promoted

    def rebuild(self) -> None:
        """A new standby of the new primary, on the crashed primary's port."""
        old, self.primary = self.primary, self.standby
        port = old.port
        old.remove()
        self.standby = self._standby_of(self.primary, port)

    def remove(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.standby.remove()
        self.primary.remove()


class Contenders:
    """``CONTENDERS`` flags named ``name``, each reaching each node through its own
    proxy, so that one contender can be cut off from every node (``isolate``)."""

    def __init__(self, ports: list[int], name: str) -> None:
        self.proxies = [
            [TcpProxy(("127.0.0.1", port)) for port in ports] for _ in range(CONTENDERS)
        ]
        self.flags = [
            leadership.new_flag().handle(self._dsn(i)).name(name).process(f"c{i}")
            .interval(INTERVAL).timeout(TIMEOUT).build()
            for i in range(CONTENDERS)
        ]  # fmt: skip

    def _dsn(self, i: int) -> str:
        hosts = ",".join(f"127.0.0.1:{proxy.port}" for proxy in self.proxies[i])
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def holder(self) -> int | None:
        return next((i for i, flag in enumerate(self.flags) if flag.raised()), None)

    def isolate(self, i: int) -> None:
        for proxy in self.proxies[i]:
            proxy.partition()

    def heal(self) -> None:
        for own in self.proxies:
            for proxy in own:
                proxy.heal()

    def close(self) -> None:
        self.heal()
        for flag in self.flags:
            flag.close()
        for own in self.proxies:
            for proxy in own:
                proxy.close()


def wait_any_raised(flags: list[leadership.Flag], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not any(flag.raised() for flag in flags):
        assert time.monotonic() < deadline, f"no flag raised within {timeout} s"
        time.sleep(0.002)


def overlap_ms(watch: OverlapWatch) -> list[float]:
    """The sure common part of each overlap (ms, 0 for an instant)."""
    spans = {str(i): runs.spans() for i, runs in enumerate(watch._runs)}
    return [
        max(0.0, (min(a.end, b.end) - max(a.start, b.start)) / 1e6)
        for a, b in overlapping_spans(spans)
    ]


def renewed_on(cluster: Cluster, name: str, since: float) -> bool:
    """Whether the flag's row on ``cluster`` was written after ``since`` (epoch s)."""
    try:
        conn = cluster.native(timeout=1)
    except Exception:
        return False
    try:
        rows = conn.run(
            "SELECT extract(epoch FROM timestamp) > :t FROM leadership_flags WHERE name = :n",
            t=since,
            n=name,
        )
        return bool(rows and rows[0][0])
    except Exception:
        return False
    finally:
        conn.close()


class Gaps:
    """The longest time (s) no flag was raised, sampled every millisecond."""

    def __init__(self, flags: list[leadership.Flag]) -> None:
        self.flags = flags
        self.longest = 0.0
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if any(flag.raised() for flag in self.flags):
                if self._since is not None:
                    self.longest = max(self.longest, now - self._since)
                self._since = None
            elif self._since is None:
                self._since = now
            time.sleep(0.001)

    def reset(self) -> None:
        self.longest, self._since = 0.0, None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def synchronous() -> Iterator[Replicated]:
    require_cluster_tools()
    pair = Replicated(synchronous=True)
    try:
        yield pair
    finally:
        pair.remove()


@pytest.fixture
def asynchronous() -> Iterator[Replicated]:
    require_cluster_tools()
    pair = Replicated(synchronous=False)
    try:
        yield pair
    finally:
        pair.remove()


def report(what: str, figures: list[float]) -> str:
    if not figures:
        return f"{what}: none"
    return (
        f"{what}: n={len(figures)} median {statistics.median(figures):.0f} max {max(figures):.0f}"
    )


def test_sync_failovers_move_the_flag_without_overlap(synchronous: Replicated) -> None:
    """Odd failovers also cut the holder off from every node at the crash (its host
    went down with the primary's network): the flag must wait for its lease."""
    name = f"replicated-{uuid.uuid4().hex[:8]}"
    group = Contenders(synchronous.ports, name)
    flags = group.flags
    moved_ms: dict[bool, list[float]] = {False: [], True: []}
    unavailable_ms: dict[bool, list[float]] = {False: [], True: []}
    gaps = Gaps(flags)
    try:
        with OverlapWatch(flags, max_gap=0.05) as watch:
            for number in range(FAILOVERS):
                isolated = number % 2 == 1
                wait_any_raised(flags)
                time.sleep(INTERVAL)  # renewals flow to the standby meanwhile
                holder = group.holder()
                gaps.reset()
                if isolated and holder is not None:
                    group.isolate(holder)
                crashed, _ = synchronous.fail_over()
                since = time.time() - (time.monotonic() - crashed)
                deadline = time.monotonic() + 15
                while not renewed_on(synchronous.standby, name, since):
                    assert time.monotonic() < deadline, "the flag never reached the new primary"
                    time.sleep(0.01)
                wait_any_raised(flags)
                moved_ms[isolated].append((time.monotonic() - crashed) * 1000)
                unavailable_ms[isolated].append(gaps.longest * 1000)
                group.heal()
                synchronous.rebuild()
            watch.stop()
            overlaps = overlap_ms(watch)
    finally:
        gaps.stop()
        group.close()
    for isolated in (False, True):
        kind = "holder cut off too" if isolated else "holder reconnects"
        print(report(f"{kind}: flag renewed on the new primary after the crash (ms)",
                     moved_ms[isolated]))  # fmt: skip
        print(report(f"{kind}: longest time without a raised flag (ms)",
                     unavailable_ms[isolated]))  # fmt: skip
    assert not overlaps, f"overlaps under synchronous replication: {overlaps}"
    assert max(moved_ms[False] + moved_ms[True]) < 10_000


HELD = float(os.environ.get("LEADERSHIP_ASYNC_HELD", "0.6"))
"""Seconds the replication stream is held before the crash: renewals committed on the
primary meanwhile never reach the standby (0: the stream's own lag only)."""


def test_async_replication_loses_renewals_and_overlaps(asynchronous: Replicated) -> None:
    """Measured, not asserted safe: with the stream held ``HELD`` s before the crash, the
    promoted standby's row is older than the holder's last committed renewal; the holder,
    cut off at the crash, trusts its lease while another takes the older row's."""
    trials = int(os.environ.get("LEADERSHIP_ASYNC_TRIALS", "2"))
    found: list[float] = []
    with_overlap = 0
    for trial in range(trials):
        group = Contenders(asynchronous.ports, f"async-{trial}-{uuid.uuid4().hex[:6]}")
        try:
            with OverlapWatch(group.flags, max_gap=0.05) as watch:
                wait_any_raised(group.flags)
                time.sleep(INTERVAL)
                assert asynchronous.proxy is not None
                if HELD:
                    asynchronous.proxy.partition()
                    time.sleep(HELD)
                holder = group.holder()
                if holder is not None:
                    group.isolate(holder)
                asynchronous.fail_over()
                time.sleep(3 * INTERVAL)  # the holder's lease ends, another takes over
                watch.stop()
                overlaps = overlap_ms(watch)
        finally:
            group.close()
        with_overlap += bool(overlaps)
        found += overlaps
        asynchronous.rebuild()
    print(f"async failovers: {trials}, with overlap: {with_overlap}")
    print(report("overlap under async replication (ms)", found))


def test_chaos_failovers_have_no_overlap(tmp_path: Path) -> None:
    """The chaos harness's ``failover`` kind: a replicated pair, contenders behind
    proxies to both nodes, the primary crashed and its standby promoted twice."""
    require_cluster_tools()
    result = launch(
        ["--seconds", "20", "--faults", "2", "--kinds", "failover", "--seed", "3"],
        tmp_path,
        timeout=120,
    )
    report_text = result.stdout + result.stderr
    summary = result.summary
    assert summary, report_text
    assert summary["overlaps"] == 0, report_text
    assert result.returncode == 0, report_text
    assert summary["faults"]["failover"] == 2, report_text
