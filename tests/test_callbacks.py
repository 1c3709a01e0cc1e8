"""``on_raised`` / ``on_lowered``: order and counts, delivery when the lease runs out while
the renewal thread is stuck, a failing ``on_raised`` hands the flag over, and no callback
ever runs on the renewal thread."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pg8000.dbapi
import pytest

import leadership
from leadership.dsn import pg8000_options
from tests.conftest import MakeFlag, admin_connect, execute
from tests.history import wait_or_fail


@dataclass(frozen=True)
class Call:
    what: str  # "raised" or "lowered"
    raised: bool  # flag.raised() as seen inside the callback
    token: int | None  # flag.token as seen inside the callback
    thread: str
    thread_id: int
    at: float


@dataclass
class Recorder:
    """Callbacks for one flag that record every call (and optionally fail in on_raised)."""

    calls: list[Call] = field(default_factory=list)
    flag: leadership.Flag | None = None
    on_raised_error: BaseException | None = None

    def kinds(self) -> list[str]:
        return [call.what for call in self.calls]

    def _record(self, what: str) -> None:
        flag = self.flag
        thread = threading.current_thread()
        self.calls.append(
            Call(
                what,
                flag is not None and flag.raised(),
                None if flag is None else flag.token,
                thread.name,
                threading.get_ident(),
                time.monotonic(),
            )
        )

    def on_raised(self) -> None:
        self._record("raised")
        if self.on_raised_error is not None:
            raise self.on_raised_error

    def on_lowered(self) -> None:
        self._record("lowered")


def build(make_flag: MakeFlag, dsn: str, process: str, **options: Any) -> tuple[Any, Recorder]:
    recorder = Recorder()
    flag = make_flag(
        dsn, process, on_raised=recorder.on_raised, on_lowered=recorder.on_lowered, **options
    )
    recorder.flag = flag
    return flag, recorder


def assert_off_the_renewal_thread(recorder: Recorder, flag_name: str) -> None:
    """Every callback ran on one callback thread: not the renewal thread, not the caller's."""
    assert recorder.calls
    for call in recorder.calls:
        assert call.thread != f"leadership {flag_name}", f"callback on the renewal thread: {call}"
        assert call.thread != threading.main_thread().name
        assert call.thread_id != threading.main_thread().ident
    assert len({call.thread_id for call in recorder.calls}) == 1


def test_order_and_counts_across_a_handover(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    a, calls_a = build(make_flag, pg_dsn, "a")
    wait_or_fail(lambda: calls_a.kinds() == ["raised"], 2.0, "a's on_raised")
    renewal_ids = {t.ident for t in threading.enumerate() if t.name == f"leadership {flag_name}"}
    b, calls_b = build(make_flag, pg_dsn, "b")
    renewal_ids |= {t.ident for t in threading.enumerate() if t.name == f"leadership {flag_name}"}
    assert len(renewal_ids) == 2
    time.sleep(0.35)  # past a renewal of a: no callback for renewals
    assert calls_a.kinds() == ["raised"] and calls_b.kinds() == []
    a.close()
    assert calls_a.kinds() == ["raised", "lowered"], "close() returned before on_lowered"
    wait_or_fail(lambda: calls_b.kinds() == ["raised"], 2.0, "b's on_raised after a closed")
    b.close()
    assert calls_b.kinds() == ["raised", "lowered"]
    for recorder in (calls_a, calls_b):
        raised, lowered = recorder.calls
        assert raised.raised and raised.token is not None
        assert not lowered.raised and lowered.token is None
        assert_off_the_renewal_thread(recorder, flag_name)
        assert not {call.thread_id for call in recorder.calls} & renewal_ids
    assert calls_b.calls[0].token is not None and calls_a.calls[0].token is not None
    assert calls_b.calls[0].token > calls_a.calls[0].token


def test_stolen_row_lowers_then_a_new_term_raises_again(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    calls = build(make_flag, pg_dsn, "a")[1]
    wait_or_fail(lambda: calls.kinds() == ["raised"], 2.0, "on_raised")
    execute(
        pg_dsn,
        "UPDATE leadership_flags SET holder = 'thief', version = version + 1, "
        "timestamp = now() WHERE name = %s",
        (flag_name,),
    )
    wait_or_fail(lambda: calls.kinds() == ["raised", "lowered"], 1.5, "on_lowered after the theft")
    # The thief never renews: the row expires one interval after the theft.
    wait_or_fail(lambda: calls.kinds() == ["raised", "lowered", "raised"], 3.0, "raised again")
    first, second = calls.calls[0].token, calls.calls[2].token
    assert first is not None and second is not None and second > first + 1
    assert_off_the_renewal_thread(calls, flag_name)


def test_on_lowered_when_the_lease_runs_out_behind_a_locked_row(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    a, calls = build(make_flag, pg_dsn, "a")
    wait_or_fail(lambda: calls.kinds() == ["raised"], 2.0, "on_raised")
    locker = admin_connect(pg_dsn)
    try:
        cursor = locker.cursor()
        cursor.execute("BEGIN")
        cursor.execute("SELECT 1 FROM leadership_flags WHERE name = %s FOR UPDATE", (flag_name,))
        locked = time.monotonic()
        wait_or_fail(lambda: calls.kinds() == ["raised", "lowered"], 2.0, "on_lowered")
        lowered = calls.calls[1]
        # The local lease (0.54 s) counts from before the last successful renewal.
        assert lowered.at - locked < 0.54 + 0.5, lowered.at - locked
        assert not lowered.raised and not a.raised()
        time.sleep(0.2)
        assert calls.kinds() == ["raised", "lowered"]  # still stuck: nothing more
        cursor.execute("ROLLBACK")
    finally:
        locker.close()
    wait_or_fail(lambda: calls.kinds() == ["raised", "lowered", "raised"], 2.0, "raised again")
    assert a.raised()
    assert_off_the_renewal_thread(calls, flag_name)


def test_on_lowered_when_the_connection_factory_starts_failing(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    application = f"callbacks-{uuid.uuid4().hex[:8]}"
    options = {**pg8000_options(pg_dsn, timeout=5.0), "application_name": application}
    failing = threading.Event()
    attempts: list[float] = []

    def connect() -> Any:
        attempts.append(time.monotonic())
        if failing.is_set():
            raise ConnectionRefusedError("the test's factory refuses")
        return pg8000.dbapi.connect(**options)

    a, calls = build(make_flag, pg_dsn, "a", handle=connect)
    wait_or_fail(lambda: calls.kinds() == ["raised"], 2.0, "on_raised")
    failing.set()
    broken = time.monotonic()
    terminated = execute(
        pg_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (application,),
    )
    assert terminated == [[True]]
    wait_or_fail(lambda: calls.kinds() == ["raised", "lowered"], 2.0, "on_lowered")
    assert calls.calls[1].at - broken < 0.54 + 0.5
    assert not a.raised()
    assert any(at > broken for at in attempts), "the flag never tried to reconnect"
    failing.clear()
    wait_or_fail(lambda: calls.kinds() == ["raised", "lowered", "raised"], 2.0, "raised again")
    assert_off_the_renewal_thread(calls, flag_name)


def test_exception_in_on_raised_lowers_and_releases_the_flag(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    entered = threading.Event()
    proceed = threading.Event()
    calls: list[float] = []

    def failing_start() -> None:
        calls.append(time.monotonic())
        entered.set()
        proceed.wait(5.0)
        raise RuntimeError("start-up failed")

    logger = logging.getLogger(f"leadership.test.{flag_name}")
    # A long interval: without the release the other process would wait 1 to 2 s.
    a = make_flag(pg_dsn, "a", interval=2.0, on_raised=failing_start, logger=logger)
    assert entered.wait(3.0) and a.raised()
    b = make_flag(pg_dsn, "b", interval=2.0)
    time.sleep(0.1)
    assert a.raised() and not b.raised()
    with caplog.at_level(logging.ERROR, logger=logger.name):
        proceed.set()
        failed = time.monotonic()
        deadline = failed + 1.5
        while not b.raised():
            assert not a.raised() or time.monotonic() < failed + 0.5, "a kept the flag"
            assert time.monotonic() < deadline, "b not raised after a's on_raised failed"
            time.sleep(0.002)
        took = time.monotonic() - failed
    assert not a.raised() and a.token is None
    assert took < 0.8, f"b raised {took:.3f} s after a's on_raised failed"
    assert len(calls) == 1
    errors = [r for r in caplog.records if r.name == logger.name and r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None
    assert "on_raised" in errors[0].getMessage()
    rows = execute(pg_dsn, "SELECT holder FROM leadership_flags WHERE name = %s", (flag_name,))
    assert rows == [["b"]]
