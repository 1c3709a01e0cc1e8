"""The campaign's decisions, step by step, on an injected clock and an in-memory store.

Each test drives ``Campaign.step()`` synchronously (no thread, no sleep) with interval
10 s, jitter 0 and timeout 1 s: renew every 5 s, retry every 1 s, local lease 9 s.
The behaviour on real databases is proven by the integration tests; these pin down
each decision in milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from leadership.campaign import FIRST_RETRY, WAKE_AFTER_EXPIRY, Campaign
from leadership.store import Written
from leadership.timing import Timing
from tests.fakes import FakeLease, FakeRow, FakeStore, FakeTime

NAME = "jobs"
TIMING = Timing(interval=10.0, jitter=0.0, timeout=1.0)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))

    def errors(self) -> list[str]:
        return [text for level, text in self.messages if level >= logging.ERROR]


@dataclass
class Rig:
    time: FakeTime
    store: FakeStore
    lease: FakeLease
    campaign: Campaign
    log: Records

    def step(self) -> float:
        """One step of the loop, then the wait it asked for (as the thread would)."""
        return self.campaign.step()

    def after(self, seconds: float) -> float:
        self.time.advance(seconds)
        return self.campaign.step()


@pytest.fixture
def make_rig() -> Callable[..., Rig]:
    def make(process: str = "me", precheck: Callable[[], bool] | None = None) -> Rig:
        time = FakeTime()
        store = FakeStore(time)
        lease = FakeLease(time)
        records = Records()
        logger = logging.getLogger(f"test-campaign-{id(records)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(records)
        campaign = Campaign(
            lease,
            store,
            TIMING,
            NAME,
            process,
            logger,
            precheck=precheck,
            clock=time.ns,
            jitter=lambda seconds, jitter: seconds,
        )
        return Rig(time, store, lease, campaign, records)

    return make


def test_acquires_a_missing_row_then_renews_in_the_same_term(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    assert rig.step() == TIMING.renew_every
    assert rig.lease.raised() and rig.campaign.term_start == 0
    assert rig.lease.lease_remaining() == pytest.approx(9.0)
    assert rig.after(5.0) == TIMING.renew_every
    assert rig.store.rows[NAME].version == 1
    assert rig.campaign.term_start == 0
    assert rig.lease.lease_remaining() == pytest.approx(9.0)  # counted from the renewal's start
    assert rig.campaign.versions() == (0, 1)


def test_a_failed_renewal_keeps_the_lease_and_retries_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    rig.store.fail_next = 2
    assert rig.after(5.0) == FIRST_RETRY
    assert rig.lease.raised()
    assert rig.after(FIRST_RETRY) == TIMING.retry_every  # later retries are spaced
    assert rig.lease.raised()
    assert rig.after(TIMING.retry_every) == TIMING.renew_every
    assert rig.lease.raised() and rig.campaign.term_start == 0  # the same term
    assert rig.store.rows[NAME] == FakeRow("me", 1, rig.time.now)


def test_failures_past_the_lease_lower_the_flag_and_end_the_term(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.step()
    rig.store.fail_next = 10
    rig.after(5.0)
    while rig.time.now < 1_000.0 + 9.0:
        rig.after(TIMING.retry_every)
    assert not rig.lease.raised()  # the deadline alone lowered it, 9 s after the write
    rig.store.fail_next = 0
    rig.after(TIMING.retry_every)  # the row expired meanwhile (10 s): taken anew
    assert rig.lease.raised()
    assert rig.campaign.term_start == 1  # a new term: work of the old one is fenced off


def test_a_lost_reply_is_recognised_at_the_next_attempt(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    rig.store.lose_next = 1  # the renewal writes version 1, its reply never arrives
    assert rig.after(5.0) == FIRST_RETRY
    assert rig.store.rows[NAME].version == 1
    assert rig.lease.raised()
    # Until confirmed, guard() accepts only what this instance saw written (conservative).
    assert rig.campaign.versions() == (0, 0)
    assert rig.after(FIRST_RETRY) == TIMING.renew_every
    assert rig.store.rows[NAME].version == 2 and rig.store.rows[NAME].holder == "me"
    assert rig.lease.raised() and rig.campaign.term_start == 0
    assert rig.log.errors() == ["flag 'jobs': check failed: the reply was lost"]


def test_several_renewals_committed_after_the_client_gave_up_are_ours(
    make_rig: Callable[..., Rig],
) -> None:
    """Commits that waited for a stalled standby land after the client timed out, two
    in a row: both are recognised as this instance's, nobody is blamed, the flag stays
    raised; a chain longer than one lost reply starts a new term (a new token), as
    nothing proves every link of it was a renewal."""
    rig = make_rig()
    rig.step()
    rig.store.lose_next = 2
    assert rig.after(5.0) == FIRST_RETRY
    assert rig.after(FIRST_RETRY) == TIMING.retry_every
    assert rig.store.rows[NAME].version == 2
    assert rig.after(TIMING.retry_every) == TIMING.renew_every
    assert rig.store.rows[NAME] == FakeRow("me", 3, rig.time.now)
    assert rig.lease.raised() and rig.campaign.term_start == 3
    assert not any("unique" in text for text in rig.log.errors())


def test_a_duplicate_name_is_not_taken_for_a_late_commit_after_an_admin_release(
    make_rig: Callable[..., Rig],
) -> None:
    """Two instances named "me"; an administrator releases the row and the other one
    takes it: a version after ours, stamped within our interval, yet not ours (we sent
    nothing that could have written it)."""
    rig = make_rig()
    rig.step()
    assert rig.store.expire(NAME)  # version 1, expired
    rig.time.advance(1.0)
    rig.store.rows[NAME] = FakeRow("me", 2, rig.time.now)  # the other "me" took it
    rig.after(1.0)
    assert not rig.lease.raised()
    assert any("process names must be unique" in text for text in rig.log.errors())


def test_failures_that_wrote_nothing_do_not_widen_what_counts_as_ours(
    make_rig: Callable[..., Rig],
) -> None:
    """Connection failures and errors the server reported cannot have written: after
    two of them, an administrator's release and a duplicate "me" taking the row, the
    row is still not ours."""
    rig = make_rig()
    rig.step()
    rig.store.fail_next = 2  # no connection: nothing sent
    rig.after(5.0)
    rig.after(FIRST_RETRY)
    assert rig.store.expire(NAME)  # version 1
    rig.store.rows[NAME] = FakeRow("me", 2, rig.time.now)  # the other "me" took it
    rig.after(TIMING.retry_every)
    assert not rig.lease.raised()
    assert rig.store.rows[NAME].version == 2, "the other instance's row was overwritten"


def test_a_lost_takeover_after_someone_elses_tenure_starts_a_new_term(
    make_rig: Callable[..., Rig],
) -> None:
    """Attempts fail for a while; meanwhile another process holds and releases the row;
    then our takeover commits but its reply is lost. The row is ours, but the term did
    not continue: the token must not go back below the other's."""
    rig = make_rig()
    rig.step()
    rig.store.fail_next = 2
    rig.after(5.0)
    rig.after(FIRST_RETRY)
    rig.store.rows[NAME] = FakeRow("other", 5, 0.0)  # held, then released, by another
    rig.store.lose_next = 1
    rig.after(TIMING.retry_every)  # our takeover writes version 6, its reply is lost
    delay = rig.after(TIMING.retry_every)
    # Version 6 is beyond what our own unanswered attempts could have written on top of
    # version 0: it is not recognised, and the old term cannot go on (safe, if slow).
    assert not rig.lease.raised() and rig.campaign.term_start is None
    rig.after(delay)  # that row expired
    assert rig.lease.raised() and rig.campaign.term_start == 7  # above the other's 5


def test_close_releases_what_a_late_commit_wrote(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    rig.store.lose_next = 1
    rig.after(5.0)  # version 1 committed, its reply lost
    rig.campaign.finish()
    assert rig.store.rows[NAME].at == 0.0, "the row written by the late commit stayed held"
    assert any("released by" in text for _, text in rig.log.messages)


def test_versions_include_a_renewal_in_flight(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    seen: list[tuple[int, int] | None] = []
    rig.store.during_call = lambda: seen.append(rig.campaign.versions())
    rig.after(5.0)
    assert seen == [(0, 1)]
    assert rig.campaign.versions() == (0, 1)


def test_another_holder_is_waited_for_until_its_row_expires(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.store.rows[NAME] = FakeRow("other", 4, rig.time.now - 3.0)
    delay = rig.step()
    assert not rig.lease.raised()
    assert delay == pytest.approx(7.0 + WAKE_AFTER_EXPIRY)
    rig.after(delay)
    assert rig.lease.raised() and rig.campaign.term_start == 5
    assert rig.log.errors() == []


def test_a_stolen_row_lowers_the_holder_at_its_next_attempt(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    rig.store.steal(NAME, "thief")
    rig.after(5.0)
    assert not rig.lease.raised()
    assert rig.campaign.term_start is None and rig.campaign.versions() is None


def test_a_duplicate_process_name_is_never_raised_and_reported_once(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.store.rows[NAME] = FakeRow("me", 7, rig.time.now)  # written by another "me"
    rig.step()
    assert not rig.lease.raised()
    rig.after(1.0)
    assert not rig.lease.raised()
    errors = rig.log.errors()
    assert len(errors) == 1 and "process names must be unique" in errors[0]


def test_a_row_of_this_name_one_version_ahead_but_too_late_is_not_ours(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.step()
    written = rig.store.rows[NAME]
    # version + 1 under this name, but stamped more than an interval after our write:
    # only another writer that waited for expiry can have written it.
    rig.store.rows[NAME] = FakeRow("me", written.version + 1, written.at + 10.5)
    rig.time.now = written.at + 10.5
    rig.campaign.step()
    assert not rig.lease.raised()


def test_a_row_released_behind_its_back_and_taken_back_starts_a_new_term(
    make_rig: Callable[..., Rig],
) -> None:
    """An administrative release expires the row and bumps its version; someone else may
    have held it meanwhile, so taking it back must not continue the old term."""
    rig = make_rig()
    rig.step()
    assert rig.campaign.term_start == 0
    assert rig.store.expire(NAME)  # leadership release: version 1, expired
    rig.after(1.0)  # the holder's lease is still running
    assert rig.lease.raised()
    assert rig.store.rows[NAME] == FakeRow("me", 2, rig.time.now)
    assert rig.campaign.term_start == 2


@pytest.mark.parametrize("step", [+0.6, -0.6])
def test_a_database_clock_jump_lowers_the_flag_until_the_clocks_agree(
    make_rig: Callable[..., Rig], step: float
) -> None:
    """Half the safety margin is 0.5 s here: a 0.6 s step of the database clock between
    two renewals is an alarm; the next renewal, consistent again, raises a new term."""
    rig = make_rig()
    rig.step()
    rig.after(5.0)
    assert rig.lease.raised()
    rig.store.db_offset += step
    rig.after(5.0)
    assert not rig.lease.raised()
    errors = rig.log.errors()
    assert len(errors) == 1 and "database clock jumped" in errors[0]
    assert f"{step:+.3f} s" in errors[0]
    rig.after(5.0)
    assert rig.lease.raised() and rig.campaign.term_start == 3  # a new term


def test_slow_round_trips_raise_no_clock_alarm(make_rig: Callable[..., Rig]) -> None:
    """The database stamps somewhere inside each round trip: a slow one moves the stamp
    within its own bounds, which is no jump."""
    rig = make_rig()
    rig.step()
    rig.store.during_call = lambda: rig.time.advance(0.9)  # a 0.9 s round trip...
    rig.after(5.0)  # ... stamped at its very end
    rig.after(5.0)
    assert rig.lease.raised() and rig.log.errors() == []


def test_resign_lowers_releases_and_stands_aside(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    rig.campaign.resign(3.0)
    assert not rig.lease.raised()  # at once, before the loop runs
    assert rig.after(1.0) == 3.0
    assert rig.store.releases == [(NAME, "me", 0)]
    assert rig.store.rows[NAME].at == 0.0
    assert rig.after(3.0) == TIMING.renew_every
    assert rig.lease.raised() and rig.campaign.term_start == 1  # a new term


def test_precheck_refusing_releases_and_recovering_contends_again(
    make_rig: Callable[..., Rig],
) -> None:
    answer = {"yes": True}
    rig = make_rig(precheck=lambda: answer["yes"])
    rig.step()
    assert rig.lease.raised()
    answer["yes"] = False
    calls = rig.store.calls
    assert rig.after(5.0) == TIMING.renew_every
    assert not rig.lease.raised()
    assert rig.store.calls == calls  # no attempt while it says no
    assert rig.store.releases == [(NAME, "me", 0)]
    answer["yes"] = True
    rig.after(5.0)
    assert rig.lease.raised() and rig.campaign.term_start == 1


def test_a_precheck_that_raises_counts_as_no(make_rig: Callable[..., Rig]) -> None:
    def broken() -> bool:
        raise RuntimeError("health endpoint down")

    rig = make_rig(precheck=broken)
    rig.step()
    assert not rig.lease.raised() and rig.store.calls == 0
    assert any("precheck failed" in text for text in rig.log.errors())


def test_stop_during_an_attempt_never_raises_and_releases_what_it_wrote(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.store.during_call = lambda: rig.campaign.stop(wait=0.0)
    rig.step()  # the attempt writes version 0 after stop() was called
    assert not rig.lease.raised()
    assert rig.campaign.stopping
    rig.campaign.finish()
    assert rig.store.releases == [(NAME, "me", 0)]
    assert rig.store.rows[NAME].at == 0.0
    assert rig.store.closed


def test_finish_after_losing_the_row_releases_nothing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.step()
    rig.store.steal(NAME, "thief")
    rig.after(5.0)
    rig.campaign.finish()
    assert rig.store.releases == []
    assert rig.store.rows[NAME].holder == "thief"


def test_a_release_that_matches_nothing_is_not_logged_as_released(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.step()
    rig.store.rows[NAME] = FakeRow("thief", 9, rig.time.now)  # taken behind our back
    rig.campaign.finish()
    texts = [text for _, text in rig.log.messages]
    assert not any("released by" in text for text in texts)
    assert any("nothing to release" in text for text in texts)


def test_the_store_contract_of_the_fake_matches_the_documented_rule() -> None:
    """The fake's acquire-or-renew rule, on its own: ours, ours + 1 (lost reply), expiry."""
    time = FakeTime()
    store = FakeStore(time)
    first = store.acquire_or_renew(NAME, "a", None, 10.0)
    assert first.written == Written(0, time.now)
    assert not store.acquire_or_renew(NAME, "b", None, 10.0).acquired
    assert not store.acquire_or_renew(NAME, "a", None, 10.0).acquired  # "a" but not us
    time.advance(10.1)
    assert store.acquire_or_renew(NAME, "b", None, 10.0).written == Written(1, time.now)
