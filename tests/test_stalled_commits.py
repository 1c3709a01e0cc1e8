"""Commits that wait for a synchronous standby which stalls, then resumes.

The server does not apply ``statement_timeout`` to a COMMIT waiting for a standby: the
client gives up (its watchdog cuts the connection at the timeout) and the renewal
commits later. Such renewals are this instance's own: the holder must not blame a
duplicate process name, and ``close()`` right after must release what they wrote, so
that a waiting process takes over at once instead of at expiry.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest

import leadership
from harness.cluster import Cluster
from harness.proxy import TcpProxy
from tests.conftest import require_cluster_tools
from tests.history import OverlapWatch, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL = 2.0
TIMEOUT = 0.3


class Stallable:
    """A primary whose commits wait for one synchronous standby, streaming through a
    proxy that can hold the stream (``stall``) and let it go (``resume``)."""

    def __init__(self) -> None:
        self.primary = Cluster(name="primary").start()
        self.proxy = TcpProxy(("127.0.0.1", self.primary.port))
        self.standby = self.primary.standby("replica", via=("127.0.0.1", self.proxy.port))
        self.standby.start()
        self.primary.wait_streaming("replica")
        self.primary.synchronous("replica")
        self.primary.wait_streaming("replica", sync=True)

    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary.port}/postgres?sslmode=disable"

    def stall(self) -> None:
        self.proxy.partition()

    def resume(self) -> None:
        self.proxy.heal()

    def remove(self) -> None:
        self.proxy.close()
        self.standby.remove()
        self.primary.remove()


@pytest.fixture(scope="module")
def stallable() -> Iterator[Stallable]:
    require_cluster_tools()
    made = Stallable()
    try:
        yield made
    finally:
        made.remove()


def _flag(dsn: str, name: str, process: str) -> leadership.Flag:
    return (
        leadership.new_flag().handle(dsn).name(name).process(process)
        .interval(INTERVAL).jitter(0.0).timeout(TIMEOUT).build()
    )  # fmt: skip


@pytest.fixture
def pair(stallable: Stallable) -> Iterator[tuple[leadership.Flag, leadership.Flag]]:
    """A raised holder and a waiter for a new flag; both closed, the stream resumed, after."""
    name = f"stall-{uuid.uuid4().hex[:8]}"
    holder = _flag(stallable.dsn(), name, "holder")
    assert holder.wait_raised(timeout=3.0)
    waiter = _flag(stallable.dsn(), name, "waiter")
    try:
        yield holder, waiter
    finally:
        stallable.resume()
        waiter.close()
        holder.close()


def _stall_a_renewal(stallable: Stallable, caplog: pytest.LogCaptureFixture) -> None:
    """Hold the replication stream until a renewal's commit waits past the timeout."""
    stallable.stall()
    gave_up = wait_for(lambda: "check failed" in caplog.text, 2 * INTERVAL)
    assert gave_up is not None, "no renewal stalled"


def test_a_stalled_commit_is_recognised_and_nobody_is_blamed(
    stallable: Stallable,
    pair: tuple[leadership.Flag, leadership.Flag],
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder, waiter = pair
    with OverlapWatch([holder, waiter]) as watch, caplog.at_level(logging.INFO):
        _stall_a_renewal(stallable, caplog)
        time.sleep(0.5)
        stallable.resume()  # the stalled renewal commits now
        assert wait_for(holder.raised, 2 * INTERVAL) is not None, caplog.text
    watch.assert_no_overlap()
    assert "process names must be unique" not in caplog.text
    assert not waiter.raised()


def test_close_right_after_a_stalled_commit_releases_what_it_wrote(
    stallable: Stallable,
    pair: tuple[leadership.Flag, leadership.Flag],
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder, waiter = pair
    with caplog.at_level(logging.INFO):
        _stall_a_renewal(stallable, caplog)
        stallable.resume()  # the stalled renewal commits, unheard by the holder
        time.sleep(0.2)
        closed = time.monotonic()
        holder.close()
        took = wait_for(waiter.raised, INTERVAL)
    assert took is not None, f"the waiter never took over; log:\n{caplog.text}"
    handover = time.monotonic() - closed
    # Released, the waiter is woken at once; unreleased, it would wait for the row to
    # expire, about 1.5 s later here.
    assert handover < 0.5, f"handover took {handover:.2f} s: at expiry, not at release"
