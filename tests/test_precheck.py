"""``.precheck(callable)``: the process whose precheck passes holds the flag (the Go package's
scenario 11); swapping the condition moves the flag; a precheck that raises counts as no."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import leadership
from tests.conftest import MakeFlag, execute


class Switch:
    """A precheck answer that the test changes: "yes", "no" or "raise"; counts the calls."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls = 0
        self.threads: set[str] = set()

    def __call__(self) -> bool:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.answer == "raise":
            raise RuntimeError("the precheck's own dependency is down")
        return self.answer == "yes"


def wait_exclusively(
    holder: leadership.Flag, other: leadership.Flag, timeout: float, what: str
) -> float:
    """Wait until ``holder`` is raised and ``other`` is not; fail if both are ever raised."""
    started = time.monotonic()
    while True:
        holder_raised, other_raised = holder.raised(), other.raised()
        assert not (holder_raised and other_raised), f"both raised while waiting for {what}"
        if holder_raised and not other.raised():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.002)


def holder_of(dsn: str, name: str) -> list[list[object]]:
    """The row of flag ``name``: holder and whether it is released (timestamp 'epoch')."""
    return execute(
        dsn,
        "SELECT holder, timestamp = 'epoch'::timestamptz FROM leadership_flags WHERE name = %s",
        (name,),
    )


def test_the_process_whose_precheck_passes_holds_the_flag(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    check_a, check_b = Switch("no"), Switch("yes")
    a = make_flag(pg_dsn, "a", precheck=check_a)
    b = make_flag(pg_dsn, "b", precheck=check_b)
    wait_exclusively(b, a, 2.0, "b raised (only b's precheck passes)")
    time.sleep(0.4)  # across a renewal: b keeps it, a does not contend
    wait_exclusively(b, a, 0.0, "b still holds")
    check_a.answer, check_b.answer = "yes", "no"
    took = wait_exclusively(a, b, 2.5, "a raised after the conditions swapped")
    # b steps aside at its next check (half an interval) and releases: a wakes at once.
    assert took < 0.3 + 0.6, took
    assert holder_of(pg_dsn, flag_name) == [["a", False]]
    check_a.answer, check_b.answer = "no", "yes"
    wait_exclusively(b, a, 2.5, "b raised after swapping back")
    for check in (check_a, check_b):
        assert check.calls >= 2
        assert check.threads == {f"leadership {flag_name}"}  # asked by the renewal thread


@pytest.mark.parametrize("refusal", ["no", "raise"])
def test_a_refusing_precheck_does_not_contend_until_it_says_yes(
    pg_dsn: str,
    make_flag: MakeFlag,
    flag_name: str,
    refusal: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = Switch(refusal)
    logger = logging.getLogger(f"leadership.test.{flag_name}")
    with caplog.at_level(logging.INFO, logger=logger.name):
        flag = make_flag(pg_dsn, "a", precheck=check, logger=logger)
        time.sleep(0.5)  # alone on an empty row: any check would have raised it by now
        assert not flag.raised() and flag.token is None
        assert check.calls >= 2  # asked again on the schedule
        assert holder_of(pg_dsn, flag_name) == []  # not even inserted a row
        check.answer = "yes"
        assert flag.wait_raised(timeout=1.5), "not raised once the precheck said yes"
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    if refusal == "raise":
        failures = [r for r in caplog.records if "precheck failed" in r.getMessage()]
        assert failures and failures[0].levelno == logging.ERROR
        assert "dependency is down" in failures[0].getMessage()
    assert any("precheck passes" in message for message in messages), messages


@pytest.mark.parametrize("refusal", ["no", "raise"])
def test_a_holder_whose_precheck_refuses_releases_to_the_other(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str, refusal: str
) -> None:
    # A long interval: without the release the other process would wait for the row to
    # expire, about 1 s after a stepped aside; with the release it takes over at once.
    check = Switch("yes")
    a = make_flag(pg_dsn, "a", precheck=check, interval=2.0)
    assert a.wait_raised(timeout=2.0)
    b = make_flag(pg_dsn, "b", interval=2.0)
    time.sleep(0.1)
    assert a.raised() and not b.raised()
    check.answer = refusal
    refused = time.monotonic()
    while a.raised():  # until a's next check, at most half an interval away
        assert time.monotonic() - refused < 1.0 + 1.0, "a still raised"
        time.sleep(0.002)
    took = wait_exclusively(b, a, 2.5, "b raised after a's precheck refused")
    assert took < 0.8, f"b raised {took:.3f} s after a stepped aside: was the row released?"
    assert a.token is None
    assert holder_of(pg_dsn, flag_name) == [["b", False]]
