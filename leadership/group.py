"""Many flags of one process on one connection, renewed by one thread, one statement a tick.

A :class:`FlagGroup` drives a :class:`GroupedCampaign` per flag: each makes exactly the
decisions a single flag's campaign makes (the same :class:`~leadership.campaign.Contender`),
but the group sends their attempts together. Held flags are renewed together at each
renewal tick (every half interval, jittered); a flag waiting for a row to expire or to be
released is tried at that moment in an early tick with the others then due. Closing the
group releases every held row in one statement.

:meth:`FlagGroup.balance` shares a list of flags fairly among the processes balancing the
same list (the pool's members): see :mod:`leadership.share` for the rule.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from .builder import Settings, _text, check_callables, start_flag
from .campaign import FIRST_RETRY, WAKE_AFTER_EXPIRY, Contender, LeaseControl
from .clock import jittered, now_ns
from .errors import ConfigurationError, LeadershipError, StoreUnavailable
from .share import Share, fair_share
from .store import Attempt, Mine, Store, Tick, describe_error
from .wake import WakePipe

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    import logging
    from types import TracebackType

    from .callbacks import Callback
    from .flag import Flag
    from .metrics import FlagMetrics, GroupMetrics
    from .timing import Timing

__all__ = ["FlagGroup", "GroupedCampaign", "close_all_groups", "pool_of"]

EARLY_TICK_SPACING = 0.001
"""Seconds between two early ticks at least (a socket or pipe that keeps waking the loop
cannot make it spin)."""


class GroupedCampaign(Contender):
    """One flag's contender, driven by its group's thread."""

    __slots__ = ("_busy", "_due", "_group")

    def __init__(
        self,
        group: FlagGroup,
        lease: LeaseControl,
        store: Store,
        timing: Timing,
        name: str,
        process: str,
        logger: logging.Logger,
        metrics: FlagMetrics | None = None,
        precheck: Callable[[], bool] | None = None,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(lease, store, timing, name, process, logger, metrics, precheck, changed)
        self._group = group
        self._busy = threading.Lock()  # held until the group lets go of this flag
        self._busy.acquire()
        self._due = 0.0  # monotonic seconds: when to try next while not held

    @property
    def name(self) -> str:
        return self._name

    def start(self) -> None:
        self._group._admit(self)

    def stop(self, wait: float) -> None:
        """Lower the lease, ask the group to release the row, and wait up to ``wait`` s."""
        with self._lock:
            self._stopping = True
            self._lease._lower()
        self._wake()
        if not self._group._on_thread() and self._busy.acquire(timeout=wait):
            self._busy.release()

    def forget_after_fork(self) -> None:
        """In a forked child: stopped, holding nothing, with fresh locks."""
        self._lock = threading.Lock()
        self._stopping = True
        self._tenure.end()
        self._busy = threading.Lock()  # a fresh one, free: the parent's thread is gone

    def let_go(self) -> None:
        """The group let go of this flag (on the group's thread)."""
        with contextlib.suppress(RuntimeError):  # already let go
            self._busy.release()

    def _wake(self) -> None:
        self._group._wake()


class FlagGroup:
    """Flags of one process sharing one connection and one renewal thread.

    Build one with :func:`leadership.new_group`. :meth:`flag` adds a flag (a :class:`Flag` like
    any other: every safety property of a single flag holds for each); :meth:`balance`
    shares flags fairly across the processes balancing the same ones; :meth:`close`
    releases everything. Thread-safe; usable as a context manager.
    """

    def __init__(self, settings: Settings, metrics: GroupMetrics | None = None) -> None:
        self._settings = settings
        self._store = settings.store
        self._timing = settings.timing
        self.process = settings.process
        self._logger = settings.logger
        self._metrics = metrics
        self._lock = threading.RLock()  # guards _flags, _joining, _calls, _pool, _closed
        self._flags: dict[str, Flag] = {}
        self._joining: list[GroupedCampaign] = []
        self._calls: list[Callable[[], None]] = []  # store calls for the thread to run
        self._woken = False  # the last wait ended before its schedule
        self._campaigns: dict[str, GroupedCampaign] = {}  # the thread's own
        self._closed = False
        self._pool: str | None = None
        self._balanced: frozenset[str] = frozenset()
        self._share: Share | None = None  # the last view of the pool
        self._renew_at = 0.0
        self._next_early = 0.0
        self._owner_pid = os.getpid()
        self._pipe = WakePipe()
        self._thread = threading.Thread(
            target=self._run, name=f"leadership group {self.process}", daemon=True
        )
        self._thread.start()
        _live.add(self)

    # --- the API ---------------------------------------------------------------------------

    def flag(
        self,
        name: str,
        *,
        precheck: Callable[[], bool] | None = None,
        on_raised: Callback | None = None,
        on_lowered: Callback | None = None,
    ) -> Flag:
        """Add flag ``name`` to the group and start contending for it; return it.

        ``precheck``, ``on_raised`` and ``on_lowered`` are as for a single flag. Closing
        the flag releases it alone; the group goes on with the others. A name already in
        the group is refused (ConfigurationError).
        """
        name = _text("name", name)
        check_callables(precheck=precheck, on_raised=on_raised, on_lowered=on_lowered)
        with self._lock:
            self._refuse_if_closed()
            if name in self._flags and not self._flags[name].closed:
                raise ConfigurationError("name", f"flag {name!r} is already in this group")
            flag = start_flag(
                self._settings,
                name,
                precheck=precheck,
                on_raised=on_raised,
                on_lowered=on_lowered,
                group=self,
            )
            self._flags[name] = flag
        return flag

    def balance(self, names: Iterable[str], *, pool: str | None = None) -> list[Flag]:
        """Hold only a fair share of the flags ``names`` (adding those not yet in the
        group): with F of them and M live members balancing the same list, at most
        ``ceil(F/M)`` each, at least ``floor(F/M)`` once settled. Returns their flags in
        the order given.

        Members are the processes whose groups balance the same names (or name the same
        ``pool``); membership is a lease renewed with the flags, in the members table
        beside the flags table. Call it once per group.

        Raises ConfigurationError naming a bad name or pool (nothing is added then),
        SchemaError when the members table is missing and cannot be created or this role
        may not use it, StoreUnavailable when the database fails.
        """
        if isinstance(names, str):
            names = [names]
        try:
            given = list(names)
        except TypeError:
            raise ConfigurationError(
                "balance", f"expected a list of flag names, got {names!r}"
            ) from None
        wanted = list(dict.fromkeys(_text("name", name) for name in given))  # all checked first
        if not wanted:
            raise ConfigurationError("balance", "expected at least one flag name")
        chosen = _text("pool", pool) if pool is not None else pool_of(wanted)
        with self._lock:
            self._refuse_if_closed()
            if self._pool is not None:
                raise ConfigurationError("balance", "this group already balances its flags")
            flags = [
                self._flags[name] if name in self._flags and not self._flags[name].closed else None
                for name in wanted
            ]
        try:
            self._store_call(self._store.prepare_members)
        except LeadershipError:
            raise
        except Exception as error:
            raise StoreUnavailable(
                f"cannot prepare the members table: {describe_error(error)}"
            ) from None
        with self._lock:  # before the flags join: none of them is ever taken outright
            self._balanced = frozenset(wanted)
            self._pool = chosen
        added = [
            flag if flag is not None else self.flag(name)
            for flag, name in zip(flags, wanted, strict=True)
        ]
        self._wake()
        return added

    @property
    def pool(self) -> str | None:
        """The pool this group balances in (None when it does not balance)."""
        return self._pool

    @property
    def share(self) -> Share | None:
        """The last view of the pool: members, this member's quota and holdings."""
        return self._share

    @property
    def flags(self) -> list[Flag]:
        """The group's open flags, by name."""
        with self._lock:
            return [flag for _, flag in sorted(self._flags.items()) if not flag.closed]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Lower every flag, release every held row in one statement (and leave the
        pool), and stop the thread; idempotent. Waits up to ``2 * timeout + 1`` s."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            flags = list(self._flags.values())
        for flag in flags:
            flag._lower()
        if os.getpid() != self._owner_pid:
            return
        self._wake()
        if not self._on_thread():
            self._thread.join(2 * self._timing.timeout + 1.0)
        for flag in flags:
            flag.close()  # the thread let go of them: this only finishes the flag itself
        if not self._thread.is_alive():
            self._pipe.close()
        _live.discard(self)

    def __enter__(self) -> FlagGroup:
        self._refuse_if_closed()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.flags)} flags"
        return f"<FlagGroup process={self.process!r} {state}>"

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise LeadershipError("this group is closed: build a new one")

    # --- from other threads --------------------------------------------------------------

    def _admit(self, campaign: GroupedCampaign) -> None:
        with self._lock:
            self._joining.append(campaign)
        self._wake()

    def _on_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def _wake(self) -> None:
        self._pipe.wake()

    def _store_call(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the store from the group's thread (the store is not
        thread-safe), waiting for it; re-raise what it raised."""
        outcome: list[BaseException | None] = []
        done = threading.Event()

        def run() -> None:
            try:
                call()
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)
            done.set()

        with self._lock:
            self._calls.append(run)
        self._wake()
        if not done.wait(2 * self._timing.timeout + 1.0) or not outcome:
            raise LeadershipError("the group's thread did not answer in time")
        if outcome[0] is not None:
            raise outcome[0]

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed:
                self._take_in()
                self._let_go([c for c in self._campaigns.values() if c.stopping])
                if self._closed:
                    break
                now = time.monotonic()
                renewal = now >= self._renew_at
                early, self._woken = self._woken, False
                batch = self._batch(now, renewal, early)
                if renewal:  # before the tick: what it schedules may ride on the next one
                    self._renew_at = now + self._jittered(self._timing.renew_every)
                if batch:
                    self._tick(batch, renewal)
                self._wait()
        except BaseException as error:  # never expected: the flags must not stay raised
            self._logger.exception("group of %r stopped: %s", self.process, error)
            raise
        finally:
            with self._lock:
                self._closed = True  # also when the loop failed: no flag joins a dead group
            self._take_in()
            self._let_go(list(self._campaigns.values()), leave=True)
            for flag in list(self._flags.values()):
                flag._lower()
            with contextlib.suppress(Exception):
                self._store.close()

    def _jittered(self, seconds: float) -> float:
        return jittered(seconds, self._timing.jitter)

    def _take_in(self) -> None:
        """Start watching the flags added since the last look, and run queued calls."""
        with self._lock:
            joining, self._joining = self._joining, []
            calls, self._calls = self._calls, []
        for run in calls:
            run()
        for campaign in joining:
            try:
                self._store.watch(campaign.name, self._timing.interval)
            except Exception as error:  # retried by the store with its next connection
                self._logger.warning(
                    "flag %r: watch failed: %s", campaign.name, describe_error(error)
                )
            campaign._due = 0.0
            self._campaigns[campaign.name] = campaign
        if joining:
            self._next_early = 0.0

    def _let_go(self, campaigns: list[GroupedCampaign], leave: bool = False) -> None:
        """Retire ``campaigns`` and release what they hold in one statement (``leave``:
        the group is closing, so leave the pool too)."""
        if not campaigns and not (leave and self._pool is not None):
            return
        held: list[tuple[GroupedCampaign, Mine]] = []
        for campaign in campaigns:
            mine = campaign.retire("closed")
            if mine is not None:
                held.append((campaign, mine))
        pool = self._pool if leave else None
        try:
            released = set(
                self._store.release_many(
                    self.process,
                    [(c.name, mine) for c, mine in held],
                    self._timing.interval,
                    pool,
                )
            )
        except Exception as error:
            for campaign, _ in held:
                campaign.release_failed(error)
        else:
            for campaign, mine in held:
                campaign.released(mine, campaign.name in released, "closed")
        for campaign in campaigns:
            self._campaigns.pop(campaign.name, None)
            if not leave:  # closing the group closes the connection: no UNLISTEN needed
                with contextlib.suppress(Exception):
                    self._store.unwatch(campaign.name)
            campaign.let_go()
            campaign._changed()

    def _batch(self, now: float, renewal: bool, early: bool) -> list[tuple[GroupedCampaign, bool]]:
        """The flags of this tick, each with whether to write (False: only read it).

        Held flags are renewed at renewal ticks; a flag not held is tried when due (or
        at any tick woken by a release); a balanced flag not held is tried only when
        the share says to take it, and read otherwise (the share needs its holder).
        """
        balanced = self._balanced
        share = self._share
        wanted = share.to_take(self._held_balanced()) if share is not None else set()
        batch: list[tuple[GroupedCampaign, bool]] = []
        for campaign in self._campaigns.values():
            due = renewal or campaign.resigning
            if not campaign.held:
                due = due or early or campaign._due <= now
            elif campaign.retrying:  # a renewal that failed (busy row): when it is due
                due = due or campaign._due <= now
            if not due:
                continue
            name = campaign.name
            if name in balanced and not campaign.held and name not in wanted:
                batch.append((campaign, False))  # no view of the pool yet, or not our share
            elif self._plans_to_contend(campaign, now):
                batch.append((campaign, True))
            elif name in balanced:
                batch.append((campaign, False))
        return batch

    def _plans_to_contend(self, campaign: GroupedCampaign, now: float) -> bool:
        """Ask the contender (resignation, precheck); schedule it when it stands aside."""
        delay = campaign.plan()
        if delay is None:
            return True
        campaign._due = now + delay
        campaign._changed()
        return False

    def _held_balanced(self) -> set[str]:
        return {n for n, c in self._campaigns.items() if n in self._balanced and c.held}

    def _tick(self, batch: list[tuple[GroupedCampaign, bool]], renewal: bool) -> None:
        """Send the tick's one statement and hand each flag its outcome."""
        started = now_ns()
        attempts = [
            Attempt(campaign.name, campaign.begin() if write else None, write)
            for campaign, write in batch
        ]
        pool = self._pool if self._balanced else None
        try:
            tick = self._store.acquire_or_renew_many(
                self.process, attempts, self._timing.interval, pool
            )
        except Exception as error:
            self._failed(batch, error)
            return
        received = now_ns()
        now = time.monotonic()
        for campaign, write in batch:
            seen = tick.observations.get(campaign.name)
            if not write:
                continue
            if campaign.name in tick.busy:  # nothing written: try again soon
                delay = campaign.failure(RowBusy(campaign.name), log=False)
            elif seen is None:  # cannot happen with a sound store: treat as a failure
                delay = campaign.failure(LeadershipError("no reply for this flag"))
            else:
                delay = campaign.outcome(seen, started, received)
            campaign._due = self._aligned(now + delay)
            campaign._changed()
        if pool is not None:
            self._rebalance(tick, now)
        self._schedule_expiries(batch, tick, now)

    def _failed(self, batch: list[tuple[GroupedCampaign, bool]], error: Exception) -> None:
        """The whole tick failed: each written flag learns it; all retry together."""
        now = time.monotonic()
        self._logger.error(
            "group of %r: tick of %d flags (%d to write) failed: %s",
            self.process,
            len(batch),
            sum(write for _, write in batch),
            describe_error(error),
        )
        delays = []
        for campaign, write in batch:
            delay = campaign.failure(error, log=False) if write else self._timing.retry_every
            campaign._due = now + delay
            delays.append(delay)
            if write:
                campaign._changed()
        if self._metrics is not None:
            self._metrics.tick_failed()
        self._renew_at = now + min(delays, default=FIRST_RETRY)

    def _schedule_expiries(
        self, batch: list[tuple[GroupedCampaign, bool]], tick: Tick, now: float
    ) -> None:
        """Read-only flags: look again when their row expires (its holder may be gone)."""
        for campaign, write in batch:
            seen = tick.observations.get(campaign.name)
            if write or seen is None:
                continue
            left = seen.expires_in
            if left is None or left <= 0:
                campaign._due = now + self._timing.renew_every  # free: the share decides
            else:
                look = now + min(left + WAKE_AFTER_EXPIRY, self._timing.interval)
                campaign._due = self._aligned(look)

    def _aligned(self, due: float) -> float:
        """A look at a row when it expires, moved to the next renewal tick when that comes
        within ``timeout`` after: one statement instead of two, and a takeover then still
        within the failover bound (``interval + timeout``)."""
        renew_at = self._renew_at
        return renew_at if due < renew_at <= due + self._timing.timeout else due

    def _rebalance(self, tick: Tick, now: float) -> None:
        """Take the pool's view from ``tick``; release flags above this member's quota."""
        if tick.members is None:
            return
        holders: dict[str, str | None] = {}
        for name in self._balanced:
            campaign = self._campaigns.get(name)
            seen = tick.observations.get(name)
            if campaign is not None and campaign.held:
                holders[name] = self.process
            elif seen is not None and seen.holder is not None and (seen.expires_in or 0) > 0:
                holders[name] = seen.holder
            else:
                holders[name] = None
        share = fair_share(self.process, tick.members, holders)
        self._share = share
        if self._metrics is not None:
            self._metrics.observe(len(share.members), share.quota, share.holding)
        excess = share.to_give(self._held_balanced())
        if excess:
            self._cede([self._campaigns[name] for name in excess], share)
        elif share.holding < share.quota and any(
            not self._campaigns[name].standing_aside
            for name in share.free
            if name in self._campaigns
        ):
            # A free flag to take (a release woke this tick, which only read): take it
            # with the next statement at once. The view changes with every tick, so this
            # cannot repeat without progress; a failed tick waits as failures do.
            self._renew_at = min(self._renew_at, now)

    def _cede(self, campaigns: list[GroupedCampaign], share: Share) -> None:
        why = f"rebalancing: {len(share.members)} members, share {share.quota}"
        held = [(c, mine) for c in campaigns if (mine := c.retire(why)) is not None]
        try:
            released = set(
                self._store.release_many(
                    self.process, [(c.name, mine) for c, mine in held], self._timing.interval
                )
            )
        except Exception as error:
            for campaign, _ in held:
                campaign.release_failed(error)
        else:
            for campaign, mine in held:
                campaign.released(mine, campaign.name in released, why)
        for campaign in campaigns:
            campaign._due = time.monotonic() + self._timing.renew_every
            campaign._changed()

    def _wait(self) -> None:
        """Sleep until the next tick is due, or a wake (pipe, notification) comes."""
        now = time.monotonic()
        due = [self._renew_at]
        for campaign in self._campaigns.values():
            if not campaign.held or campaign.retrying:
                due.append(campaign._due)
        seconds = max(min(due) - now, 0.0)
        if seconds > 0:
            try:
                self._store.wait(seconds, self._pipe.read)
            except Exception as error:
                self._logger.error(
                    "group of %r: wait failed: %s", self.process, describe_error(error)
                )
                select.select([self._pipe.read], [], [], seconds)
        now = time.monotonic()
        if now < min(due) and now >= self._next_early:  # woken early: something changed
            self._next_early = now + EARLY_TICK_SPACING
            self._woken = True
            for campaign in self._campaigns.values():
                if not campaign.held:
                    campaign._due = min(campaign._due, now)

    def _forget_after_fork(self) -> None:
        """In a forked child: closed, without the parent's thread, pipe or connection."""
        self._closed = True
        self._lock = threading.RLock()
        self._pipe.forget_after_fork()


_live: weakref.WeakSet[FlagGroup] = weakref.WeakSet()


class RowBusy(LeadershipError):
    """A flag's row was locked by another transaction during a tick: not attempted."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"flag {name!r}: its row was locked by another transaction (a guard() or "
            "another contender's statement); nothing written, trying again"
        )


def pool_of(names: Iterable[str]) -> str:
    """The default pool of a balanced list: the same for every process listing the same
    names, in any order (``flags:`` and a digest of the sorted names)."""
    digest = hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()[:16]
    return f"flags:{digest}"


def _after_fork_in_child() -> None:
    for group in list(_live):
        group._forget_after_fork()
    _live.clear()


def close_all_groups() -> None:
    """Close every open group (each releasing its flags in one statement)."""
    for group in list(_live):
        group.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_all_groups)  # before the flags' own (atexit runs in reverse order)
