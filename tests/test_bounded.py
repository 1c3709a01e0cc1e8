"""Every operation finishes or fails within its bound, whatever the peer does.

A socket timeout bounds each read, not an operation: a peer that answers one byte every
0.25 s (timeout 0.3 s) kept build() running for over a minute, and close() returned with
the renewal thread still stuck in a check.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

import leadership
from harness.proxy import TcpProxy
from leadership.campaign import Campaign
from tests.conftest import MakeFlag
from tests.history import wait_for

TIMEOUT = 0.3
DRIP = 0.25  # seconds per byte of every reply


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username or 'postgres'}@127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _target(dsn: str) -> tuple[str, int]:
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def test_build_through_a_dripping_peer_fails_within_the_connect_timeout(pg_dsn: str) -> None:
    with TcpProxy(_target(pg_dsn)) as proxy:
        proxy.drip_replies(DRIP)
        started = time.monotonic()
        with pytest.raises(leadership.StoreUnavailable, match="within"):
            leadership.new_flag().handle(_via(pg_dsn, proxy.port)).name("n").interval(2).timeout(
                TIMEOUT
            ).build()
        took = time.monotonic() - started
    assert took < TIMEOUT + 1.0, f"build() took {took:.2f} s"


def test_a_dripping_peer_fails_each_check_within_the_timeout_and_close_finishes(
    pg_dsn: str, make_flag: MakeFlag, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpProxy(_target(pg_dsn)) as proxy:
        flag = make_flag(_via(pg_dsn, proxy.port), "holder", interval=2.0, timeout=TIMEOUT)
        assert flag.wait_raised(timeout=2.0)
        with caplog.at_level(logging.ERROR, logger="leadership"):
            proxy.drip_replies(DRIP)
            cut = wait_for(lambda: "no complete reply within" in caplog.text, 3.0)
            assert cut is not None, f"no check was cut off; log:\n{caplog.text}"
            started = time.monotonic()
            flag.close()
            took = time.monotonic() - started
        assert isinstance(flag._campaign, Campaign)
        assert not flag._campaign._thread.is_alive(), "the renewal thread is still stuck"
        # close() waits for the renewal thread up to 2T + 1 s; a bounded release fits.
        assert took < 2 * TIMEOUT + 1.0, f"close() took {took:.2f} s"
