"""``flag.wait_raised``: returns when raised, times out, returns on close, wakes on handover,
and adds no database traffic beyond the flag's normal schedule."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pg8000.dbapi
import pytest

import leadership
from leadership.dsn import pg8000_options
from tests.conftest import MakeFlag
from tests.history import wait_or_fail


class Waiter:
    """Calls ``flag.wait_raised(timeout)`` on a thread; records the result and when it returned."""

    def __init__(self, flag: leadership.Flag, timeout: float | None) -> None:
        self.result: bool | None = None
        self.returned_at: float | None = None
        self._flag = flag
        self._timeout = timeout
        self.thread = threading.Thread(target=self._run, name="waiter", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self._flag.wait_raised(self._timeout)
        self.returned_at = time.monotonic()


def test_returns_true_promptly_when_raised(pg_dsn: str, make_flag: MakeFlag) -> None:
    flag = make_flag(pg_dsn, "a")
    started = time.monotonic()
    assert flag.wait_raised(timeout=5.0) is True
    assert time.monotonic() - started < 1.5
    assert flag.raised()
    started = time.monotonic()
    assert flag.wait_raised(timeout=0) is True  # already raised: no waiting at all
    assert flag.wait_raised() is True
    assert time.monotonic() - started < 0.1


def test_returns_false_after_its_timeout_while_another_holds(
    pg_dsn: str, make_flag: MakeFlag
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=5.0)
    standby = make_flag(pg_dsn, "standby")
    started = time.monotonic()
    assert standby.wait_raised(timeout=0.4) is False
    elapsed = time.monotonic() - started
    assert 0.39 <= elapsed < 1.0, elapsed
    started = time.monotonic()
    assert standby.wait_raised(timeout=0) is False
    assert time.monotonic() - started < 0.1
    assert holder.raised() and not standby.raised()


def test_returns_false_promptly_after_close(pg_dsn: str, make_flag: MakeFlag) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=5.0)
    standby = make_flag(pg_dsn, "standby")
    waiter = Waiter(standby, timeout=None)
    time.sleep(0.05)
    assert waiter.thread.is_alive()
    closing = time.monotonic()
    standby.close()
    waiter.thread.join(3.0)
    assert not waiter.thread.is_alive(), "wait_raised() still blocked after close()"
    assert waiter.result is False
    assert waiter.returned_at is not None and waiter.returned_at - closing < 1.5
    started = time.monotonic()
    assert standby.wait_raised() is False  # after close: at once, even without a timeout
    assert time.monotonic() - started < 0.1
    holder.close()
    assert holder.wait_raised() is False  # a closed holder is lowered for good


def test_standby_blocked_in_wait_raised_wakes_when_the_holder_closes(
    pg_dsn: str, make_flag: MakeFlag
) -> None:
    # A long interval: without the release (and its notification) the standby would
    # wait between 1 and 2 s for the row to expire; the bound below is well under that.
    holder = make_flag(pg_dsn, "holder", interval=2.0)
    assert holder.wait_raised(timeout=5.0)
    standby = make_flag(pg_dsn, "standby", interval=2.0)
    waiter = Waiter(standby, timeout=10.0)
    time.sleep(0.2)  # the standby has seen the holder and sleeps until the row expires
    assert waiter.thread.is_alive() and not standby.raised()
    closing = time.monotonic()
    holder.close()
    waiter.thread.join(5.0)
    assert waiter.result is True
    assert waiter.returned_at is not None
    woke = waiter.returned_at - closing
    assert woke < 0.8, f"standby woke {woke:.3f} s after the holder closed"
    assert standby.raised()


class CountingCursor:
    """A DB-API cursor that counts its ``execute`` calls."""

    def __init__(self, cursor: Any, log: list[str]) -> None:
        self._cursor = cursor
        self._log = log

    def execute(self, sql: str, params: Any = None) -> Any:
        self._log.append(sql)
        if params is None:
            return self._cursor.execute(sql)
        return self._cursor.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class CountingConnection:
    """A DB-API connection whose cursors count statements; everything else passes through."""

    def __init__(self, conn: Any, log: list[str]) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_log", log)

    def cursor(self) -> CountingCursor:
        return CountingCursor(self._conn.cursor(), self._log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


def counting_factory(driver: str, dsn: str, log: list[str]) -> Callable[[], Any]:
    """A connection factory for ``driver`` whose connections append each statement to ``log``."""
    if driver == "psycopg":
        psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is an optional test dependency")

        def connect_psycopg() -> Any:
            return CountingConnection(psycopg.connect(dsn), log)

        return connect_psycopg
    options = pg8000_options(dsn, timeout=5.0)

    def connect_pg8000() -> Any:
        return CountingConnection(pg8000.dbapi.connect(**options), log)

    return connect_pg8000


@pytest.mark.parametrize("driver", ["pg8000", "psycopg"])
def test_wait_raised_adds_no_database_traffic(
    pg_dsn: str, make_flag: MakeFlag, driver: str
) -> None:
    holder = make_flag(pg_dsn, "holder")
    assert holder.wait_raised(timeout=5.0)
    plain_log: list[str] = []
    waited_log: list[str] = []
    make_flag(pg_dsn, "plain", handle=counting_factory(driver, pg_dsn, plain_log))
    waited = make_flag(pg_dsn, "waited", handle=counting_factory(driver, pg_dsn, waited_log))
    wait_or_fail(lambda: len(plain_log) > 0 and len(waited_log) > 0, 2.0, "first statements")
    time.sleep(0.1)  # past set-up and the first checks of both
    waiter = Waiter(waited, timeout=None)
    plain_before, waited_before = len(plain_log), len(waited_log)
    period = 1.5
    time.sleep(period)  # a measurement window, not a synchronisation
    plain_count = len(plain_log) - plain_before
    waited_count = len(waited_log) - waited_before
    assert waiter.thread.is_alive() and not waited.raised()
    # The schedule of a waiting instance: a check when the holder's row expires, about
    # every half interval here (the holder renews every half interval).
    assert 1 <= plain_count <= period / (0.6 / 2) * 2 + 2, plain_log[plain_before:]
    assert waited_count <= plain_count + 1, (
        f"{waited_count} statements with a thread in wait_raised() against {plain_count} "
        f"without, over {period} s: {waited_log[waited_before:]}"
    )
    waited.close()
    waiter.thread.join(3.0)
    assert waiter.result is False


class ReleaseInFlightCursor:
    """A DB-API cursor that, once armed, makes the standby's next check see the holder's
    row, then keeps the connection busy in a statement while the holder closes: the
    release's notification comes inside that statement's reply, not on an idle socket."""

    def __init__(self, conn: Any, cursor: Any, armed: threading.Event, closing: Callable[[], None]):
        self._conn = conn
        self._cursor = cursor
        self._armed = armed
        self._closing = closing

    def execute(self, sql: str, params: Any = None) -> Any:
        result = self._cursor.execute(sql, params) if params else self._cursor.execute(sql)
        if self._armed.is_set() and "ON CONFLICT" in sql:
            self._armed.clear()
            closer = threading.Thread(target=self._closing, name="holder close", daemon=True)
            closer.start()
            busy = self._conn.cursor()
            try:
                busy.execute("SELECT pg_catalog.pg_sleep(0.4)")  # the release lands meanwhile
            finally:
                busy.close()
            closer.join(5.0)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class ReleaseInFlightConnection:
    """A DB-API connection whose cursors are :class:`ReleaseInFlightCursor`."""

    def __init__(self, conn: Any, armed: threading.Event, closing: Callable[[], None]) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_armed", armed)
        object.__setattr__(self, "_closing", closing)

    def cursor(self) -> ReleaseInFlightCursor:
        return ReleaseInFlightCursor(self._conn, self._conn.cursor(), self._armed, self._closing)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


def test_a_release_notified_during_a_check_still_wakes_the_standby(
    pg_dsn: str, make_flag: MakeFlag
) -> None:
    # The standby's check sees the holder's row (its lease has ~4 s left); the holder then
    # releases while the standby's connection is still busy, so the notification comes
    # with a statement's reply. Kept, it wakes the standby at once; dropped, the standby
    # sleeps until the released row would have expired.
    holder = make_flag(pg_dsn, "holder", interval=4.0, timeout=1.0)
    assert holder.wait_raised(timeout=5.0)
    armed = threading.Event()
    options = pg8000_options(pg_dsn, timeout=5.0)

    def connect() -> Any:
        return ReleaseInFlightConnection(pg8000.dbapi.connect(**options), armed, holder.close)

    standby = make_flag(pg_dsn, "standby", interval=4.0, timeout=1.0, handle=connect)
    time.sleep(0.3)  # the standby has seen the holder and sleeps until the row expires
    assert not standby.raised()
    armed.set()
    standby._campaign._wake()  # its next check now, with the release in flight
    started = time.monotonic()
    assert standby.wait_raised(timeout=5.0)
    took = time.monotonic() - started
    assert not armed.is_set() and holder.closed
    assert took < 1.5, f"the standby took the flag {took:.3f} s after its check (lost wake-up)"
