"""The clock-jump alarm against a real server whose clock is stepped (libfaketime).

A database clock stepped forward makes the holder's row look older than it is: a waiter
could take it while the holder's local lease still runs. The holder compares the
database clock's progress between two renewals with its lease clock and, on a jump over
half the safety margin, lowers its flag until the clocks agree again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import leadership
from harness.cluster import Cluster
from tests.conftest import require, require_cluster_tools
from tests.history import OverlapWatch, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL = 2.0
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


@pytest.fixture(scope="module")
def stepped() -> Iterator[tuple[Cluster, Path]]:
    """A server whose wall clock follows the offset written in the yielded file."""
    require_cluster_tools()
    require(
        None if os.path.exists(FAKETIME) else "libfaketime is not installed",
        "LEADERSHIP_REQUIRE_TOOLS",
    )
    directory = Path(tempfile.mkdtemp(prefix="leadership-faketime-"))
    directory.chmod(0o755)  # the server runs as postgres
    offset = directory / "offset"
    offset.write_text("+0\n")
    offset.chmod(0o644)
    cluster = Cluster(
        env={
            "LD_PRELOAD": FAKETIME,
            "FAKETIME_TIMESTAMP_FILE": str(offset),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    ).start()
    try:
        yield cluster, offset
    finally:
        cluster.remove()
        shutil.rmtree(directory)


def test_a_forward_step_of_the_database_clock_lowers_the_holder_until_it_agrees(
    stepped: tuple[Cluster, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cluster, offset = stepped
    name = f"jump-{uuid.uuid4().hex[:8]}"

    def flag(process: str) -> leadership.Flag:
        return (
            leadership.new_flag().handle(cluster.dsn() + "?sslmode=disable").name(name)
            .process(process).interval(INTERVAL).jitter(0.0).timeout(0.3).build()
        )  # fmt: skip

    holder = flag("holder")
    assert holder.wait_raised(timeout=3.0)
    first = holder.token
    waiter = flag("waiter")
    try:
        with OverlapWatch([holder, waiter]) as watch, caplog.at_level(logging.ERROR):
            offset.write_text("+0.5\n")  # the server's clock jumps 0.25 x I ahead
            stepped_at = time.monotonic()
            alarm = wait_for(lambda: "database clock jumped" in caplog.text, INTERVAL)
            assert alarm is not None, "no alarm within one renewal"
            assert not holder.raised()
            again = wait_for(holder.raised, INTERVAL)
            assert again is not None, "the holder never took its flag back"
        watch.assert_no_overlap()
        # The jump measured is what lies beyond the round trips' bounds: at most 0.5 s.
        assert re.search(r"jumped \+0\.[45]\d\d s", caplog.text), caplog.text
        assert holder.token != first  # a new term after the alarm
        print(f"\nalarm {alarm:.2f} s after the step; raised again {again:.2f} s later")
        assert time.monotonic() - stepped_at < 2 * INTERVAL
    finally:
        offset.write_text("+0.5\n")
        waiter.close()
        holder.close()
