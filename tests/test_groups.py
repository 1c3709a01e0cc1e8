"""Groups of flags (``leadership.new_group()``): one connection, one thread and one statement
per tick for all of a group's flags, with every property of a single flag kept per flag.

Integration tests run on the real stores (PostgreSQL and SQLite where it applies); the
statement counts are read on the wire, by a relay in front of the test server. The fair
share rule (:mod:`leadership.share`) is tested on its own, without a database.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pg8000.dbapi
import pytest

import leadership
from harness.proxy import TcpProxy
from leadership.dsn import pg8000_options
from leadership.group import FlagGroup, pool_of
from leadership.share import Share, fair_share, preference
from tests.conftest import MakeFlag, execute, forks_a_threaded_process
from tests.history import OverlapWatch, wait_for, wait_or_fail
from tests.rows import read_rows, run, sqlite_path

MakeGroup = Callable[..., FlagGroup]
"""The type of the ``make_group`` fixture."""

INTERVAL = 1.0
TIMEOUT = 0.3
LONG_INTERVAL = 10.0
"""A lease so long that a handover within a second or two can only be a release."""

GO_COLUMNS = ["name", "holder", "version", "timestamp"]
"""The flags table as the Go package creates and uses it."""
LEASE_COLUMNS = ["lease_seconds", "lease_version", "lease_owner"]
"""The columns this package adds (the Go package ignores them)."""


@pytest.fixture
def make_group() -> Iterator[MakeGroup]:
    """Build groups with fast test timing (interval 1 s, jitter 0, timeout 0.3 s); every
    group built is closed after the test."""
    built: list[FlagGroup] = []

    def make(
        dsn: str,
        process: str,
        *,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        table: str | None = None,
    ) -> FlagGroup:
        builder = leadership.new_group().handle(dsn).process(process)
        builder.interval(interval).jitter(0.0).timeout(timeout)
        if table is not None:
            builder.table(table)
        group = builder.build()
        built.append(group)
        return group

    yield make
    for group in built:
        group.close()


@pytest.fixture
def names() -> str:
    """A prefix for flag names no other test uses."""
    return f"group-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_schema(pg_dsn: str) -> Iterator[str]:
    """An empty PostgreSQL schema, dropped after the test."""
    schema = f"groups_{uuid.uuid4().hex[:10]}"
    execute(pg_dsn, f"CREATE SCHEMA {schema}")
    yield schema
    execute(pg_dsn, f"DROP SCHEMA {schema} CASCADE")


def all_raised(flags: Sequence[leadership.Flag]) -> bool:
    return all(flag.raised() for flag in flags)


def none_raised(flags: Sequence[leadership.Flag]) -> bool:
    return not any(flag.raised() for flag in flags)


def holders(dsn: str, wanted: Sequence[str]) -> dict[str, str]:
    """The holder of each row among ``wanted`` that exists, live or not."""
    rows = read_rows(dsn)
    return {name: rows[name].holder for name in wanted if name in rows}


# --- the flag API on group flags ------------------------------------------------------------


def test_group_flags_are_flags_with_the_same_raised(
    any_dsn: str, make_group: MakeGroup, names: str
) -> None:
    group = make_group(any_dsn, "pod-7")
    flags = [group.flag(f"{names}-{i}") for i in range(3)]
    assert wait_for(lambda: all_raised(flags), 3.0) is not None
    for flag in flags:
        assert isinstance(flag, leadership.Flag)
        assert type(flag).raised is leadership.Flag.raised  # the compiled hot path, untouched
        assert flag.process == "pod-7"
        assert flag.wait_raised(timeout=0) is True
        assert 0 < flag.lease_remaining() <= INTERVAL
        token = flag.token
        assert token is not None and token >= 1
    assert [flag.name for flag in group.flags] == sorted(flag.name for flag in flags)
    tokens = [flag.token for flag in flags]
    time.sleep(INTERVAL * 1.2)  # renewals in between: the same term
    assert all_raised(flags)
    assert [flag.token for flag in flags] == tokens
    assert guard(any_dsn, flags[1]) == tokens[1]
    assert repr(group) == "<FlagGroup process='pod-7' 3 flags>"


def guard(dsn: str, flag: leadership.Flag) -> int:
    """``flag.guard()`` inside a transaction of a connection of the test's own."""
    if dsn.startswith("sqlite:"):
        lite = sqlite3.connect(sqlite_path(dsn), timeout=5)
        try:
            return flag.guard(lite)
        finally:
            lite.rollback()
            lite.close()
    conn = pg8000.dbapi.connect(**pg8000_options(dsn, 5.0))
    try:
        return flag.guard(conn)
    finally:
        conn.rollback()
        conn.close()


def test_a_group_flag_has_its_own_callbacks_and_precheck(
    pg_dsn: str, make_group: MakeGroup, names: str
) -> None:
    raised: list[str] = []
    lowered: list[str] = []
    group = make_group(pg_dsn, "callbacks")
    willing = group.flag(f"{names}-willing", on_raised=lambda: raised.append("willing"))
    unwilling = group.flag(
        f"{names}-unwilling", precheck=lambda: False, on_lowered=lambda: lowered.append("x")
    )
    assert willing.wait_raised(timeout=3.0)
    wait_or_fail(lambda: raised == ["willing"], 2.0, "on_raised of the willing flag")
    assert not unwilling.wait_raised(timeout=INTERVAL)  # its precheck says no: not even tried
    assert holders(pg_dsn, [unwilling.name]) == {}
    assert lowered == []


# --- one statement per tick, on the wire ----------------------------------------------------

SSL_REQUEST = 80877103


class _Frontend:
    """Reads a client's stream of the PostgreSQL protocol v3 and reports, in order, the SQL
    of each statement it runs: a simple ``Query``, or an ``Execute`` of a portal (its SQL
    is the ``Parse`` of the statement bound to the portal)."""

    def __init__(self, executed: Callable[[str], None]) -> None:
        self._executed = executed
        self._buffer = bytearray()
        self._started = False
        self._parsed: dict[bytes, str] = {}
        self._portals: dict[bytes, str] = {}

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if not self._started:  # untyped start-up messages: length, code
                if len(buffer) < 8:
                    return
                length = int.from_bytes(buffer[:4], "big")
                code = int.from_bytes(buffer[4:8], "big")
                if len(buffer) < length:
                    return
                del buffer[:length]
                self._started = code != SSL_REQUEST
                continue
            if len(buffer) < 5:
                return
            kind = bytes(buffer[:1])
            length = int.from_bytes(buffer[1:5], "big")
            if len(buffer) < 1 + length:
                return
            body = bytes(buffer[5 : 1 + length])
            del buffer[: 1 + length]
            self._message(kind, body)

    def _message(self, kind: bytes, body: bytes) -> None:
        if kind == b"Q":
            self._executed(body.rstrip(b"\0").decode(errors="replace"))
        elif kind == b"P":
            name, _, rest = body.partition(b"\0")
            self._parsed[name] = rest.partition(b"\0")[0].decode(errors="replace")
        elif kind == b"B":
            portal, _, rest = body.partition(b"\0")
            self._portals[portal] = self._parsed.get(rest.partition(b"\0")[0], "?")
        elif kind == b"E":
            self._executed(self._portals.get(body.partition(b"\0")[0], "?"))


class StatementCounter:
    """A relay from ``127.0.0.1:port`` to ``target`` recording the SQL of every statement
    its clients run, in order (plain-text connections only: ``sslmode=disable``). Each
    statement is recorded before it is forwarded, so before its reply exists."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._statements: list[str] = []
        self._sockets: list[socket.socket] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="statement counter", daemon=True).start()

    def statements(self) -> list[str]:
        with self._lock:
            return list(self._statements)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __enter__(self) -> StatementCounter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _executed(self, sql: str) -> None:
        with self._lock:
            self._statements.append(sql)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target, timeout=10)
            server.settimeout(None)
            for sock in (client, server):  # no Nagle delay on a relay of small messages
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            reader = _Frontend(self._executed)
            for source, sink, feed in ((client, server, reader.feed), (server, client, None)):
                threading.Thread(target=self._pump, args=(source, sink, feed), daemon=True).start()

    @staticmethod
    def _pump(
        source: socket.socket, sink: socket.socket, feed: Callable[[bytes], None] | None
    ) -> None:
        try:
            while data := source.recv(65536):
                if feed is not None:
                    feed(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def kind_of(sql: str) -> str:
    """What a statement of the store is, by its SQL."""
    text = sql.lstrip().upper()
    if text.startswith("LISTEN"):
        return "listen"
    if text.startswith("UNLISTEN"):
        return "unlisten"
    if "JSONB_TO_RECORDSET" in text and "RENEWED AS" in text:
        return "tick"
    if "JSONB_TO_RECORDSET" in text and "RELEASED AS" in text:
        return "release_many"
    return "other"


def server_of(dsn: str) -> tuple[str, int]:
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def through(dsn: str, port: int) -> str:
    """``dsn`` through a relay listening on ``127.0.0.1:port``."""
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.mark.parametrize("count", [1, 10, 100])
def test_one_statement_per_tick_whatever_the_number_of_flags(
    pg_dsn: str, make_group: MakeGroup, names: str, count: int
) -> None:
    window = 2.0  # four renewal ticks at interval 1 s, jitter 0
    with StatementCounter(server_of(pg_dsn)) as counter:
        group = make_group(through(pg_dsn, counter.port), "counted")
        flags = [group.flag(f"{names}-{i:03d}") for i in range(count)]
        wait_or_fail(lambda: all_raised(flags), 5.0, f"{count} flags raised")
        seen = len(counter.statements())
        started = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - started
        during = counter.statements()[seen:]
        assert all_raised(flags)
        kinds = Counter(kind_of(sql) for sql in during)
        assert set(kinds) == {"tick"}, kinds  # nothing else runs while the flags are held
        ticks = elapsed / (INTERVAL / 2)
        assert ticks - 2 <= kinds["tick"] <= ticks + 1, (kinds, elapsed)
        listens = [  # one LISTEN per flag, many sent in one simple query
            command.strip()
            for sql in counter.statements()
            if kind_of(sql) == "listen"
            for command in sql.split(";")
        ]
        assert len(listens) == count and len(set(listens)) == count, listens[:3]
        assert counter.connections == 1  # one connection for the whole group

        closing = len(counter.statements())
        group.close()
        after = Counter(kind_of(sql) for sql in counter.statements()[closing:])
        assert after["release_many"] == 1, after  # every row released in one statement
        assert after["tick"] == 0, after
    assert holders(pg_dsn, [flag.name for flag in flags]) == {f.name: "counted" for f in flags}
    assert all(row.age > 1e6 for row in read_rows(pg_dsn).values() if row.name.startswith(names))


# --- closing --------------------------------------------------------------------------------


def test_closing_one_flag_releases_it_alone(
    any_dsn: str, make_group: MakeGroup, names: str
) -> None:
    wanted = [f"{names}-{i}" for i in range(3)]
    first = make_group(any_dsn, "first", interval=LONG_INTERVAL)
    held = [first.flag(name) for name in wanted]
    wait_or_fail(lambda: all_raised(held), 3.0, "the first group's flags raised")
    second = make_group(any_dsn, "second", interval=LONG_INTERVAL)
    waiting = [second.flag(name) for name in wanted]
    assert not waiting[0].wait_raised(timeout=0.3)

    started = time.monotonic()
    held[0].close()
    assert waiting[0].wait_raised(timeout=3.0)
    took = time.monotonic() - started
    assert took < 2.0, f"{took:.2f} s: a release, not the {LONG_INTERVAL:g} s lease"
    assert held[0].closed and not held[0].raised()
    assert all_raised(held[1:]) and none_raised(waiting[1:])
    assert not first.closed and [flag.name for flag in first.flags] == wanted[1:]
    time.sleep(0.3)
    assert all_raised(held[1:]) and none_raised(waiting[1:])
    assert holders(any_dsn, wanted) == {
        wanted[0]: "second",
        wanted[1]: "first",
        wanted[2]: "first",
    }


def test_closing_the_group_releases_every_flag(
    any_dsn: str, make_group: MakeGroup, names: str
) -> None:
    wanted = [f"{names}-{i}" for i in range(5)]
    first = make_group(any_dsn, "first", interval=LONG_INTERVAL)
    held = [first.flag(name) for name in wanted]
    wait_or_fail(lambda: all_raised(held), 3.0, "the first group's flags raised")
    second = make_group(any_dsn, "second", interval=LONG_INTERVAL)
    waiting = [second.flag(name) for name in wanted]
    assert not any(flag.wait_raised(timeout=0.05) for flag in waiting)

    started = time.monotonic()
    first.close()
    closed = time.monotonic() - started
    assert first.closed and all(flag.closed for flag in held) and none_raised(held)
    took = wait_for(lambda: all_raised(waiting), 3.0)
    assert took is not None, "the waiting group did not take every flag"
    assert closed + took < 2.0, f"{closed + took:.2f} s: not a release"
    assert first.flags == []
    first.close()  # idempotent


def test_a_closed_group_refuses_new_flags(sqlite_dsn: str, make_group: MakeGroup) -> None:
    group = make_group(sqlite_dsn, "done")
    group.close()
    with pytest.raises(leadership.LeadershipError, match="closed"):
        group.flag("late")
    with pytest.raises(leadership.LeadershipError, match="closed"):
        group.balance(["late"])
    with pytest.raises(leadership.LeadershipError, match="closed"), group:
        pass
    assert repr(group) == "<FlagGroup process='done' closed>"


def test_a_name_already_in_the_group_is_refused_until_its_flag_closes(
    sqlite_dsn: str, make_group: MakeGroup, names: str
) -> None:
    group = make_group(sqlite_dsn, "dup")
    first = group.flag(names)
    with pytest.raises(leadership.ConfigurationError, match="already in this group") as caught:
        group.flag(names)
    assert caught.value.parameter == "name"
    assert first.wait_raised(timeout=2.0)
    first.close()
    again = group.flag(names)  # a closed flag leaves its name free
    assert again is not first and again.wait_raised(timeout=2.0)
    assert again.token is not None


@pytest.mark.parametrize(
    ("bad", "parameter", "problem"),
    [
        ({"names": []}, "balance", "at least one flag name"),
        ({"names": ["ok", ""]}, "name", "non-empty string"),
        ({"names": ["ok", 7]}, "name", "non-empty string"),
        ({"names": ["ok", "nul\x00"]}, "name", "NUL"),
        ({"names": ["ok"], "pool": " "}, "pool", "non-empty string"),
        ({"names": ["ok"], "pool": 3}, "pool", "non-empty string"),
    ],
)
def test_bad_inputs_to_balance_name_the_problem(
    sqlite_dsn: str, make_group: MakeGroup, bad: dict[str, Any], parameter: str, problem: str
) -> None:
    group = make_group(sqlite_dsn, "balancer")
    with pytest.raises(leadership.ConfigurationError, match=problem) as caught:
        group.balance(bad["names"], pool=bad.get("pool"))
    assert caught.value.parameter == parameter


def test_balance_twice_is_refused(sqlite_dsn: str, make_group: MakeGroup, names: str) -> None:
    group = make_group(sqlite_dsn, "balancer")
    flags = group.balance([f"{names}-a", f"{names}-b", f"{names}-a"])  # duplicates once
    assert [flag.name for flag in flags] == [f"{names}-a", f"{names}-b"]
    assert group.pool == pool_of([f"{names}-b", f"{names}-a"])  # any order: the same pool
    with pytest.raises(leadership.ConfigurationError, match="already balances"):
        group.balance([f"{names}-c"])


def test_a_refused_balance_adds_no_flag(sqlite_dsn: str, make_group: MakeGroup, names: str) -> None:
    group = make_group(sqlite_dsn, "balancer")
    with pytest.raises(leadership.ConfigurationError):
        group.balance([f"{names}-good", ""])
    assert group.flags == [], "a refused balance() left flags contending"


# --- network faults: local deadline, compare-and-set, lost replies ------------------------


def test_a_partitioned_group_lowers_every_flag_by_its_deadline_and_never_overlaps(
    pg_dsn: str, make_group: MakeGroup, names: str
) -> None:
    wanted = [f"{names}-{i}" for i in range(3)]
    with TcpProxy(server_of(pg_dsn)) as proxy:
        cut_off = make_group(through(pg_dsn, proxy.port), "cut-off")
        held = [cut_off.flag(name) for name in wanted]
        wait_or_fail(lambda: all_raised(held), 3.0, "the group's flags raised")
        other = make_group(pg_dsn, "other")
        waiting = [other.flag(name) for name in wanted]
        watches = [OverlapWatch(pair) for pair in zip(held, waiting, strict=True)]
        with contextlib.ExitStack() as stack:
            for watch in watches:
                stack.enter_context(watch)
            assert none_raised(waiting)
            partitioned = time.monotonic()
            proxy.partition()
            lowered = wait_for(lambda: none_raised(held), 2.0)
            assert lowered is not None, "a flag stayed raised without its renewals"
            assert lowered < INTERVAL * 0.9 + 0.05, f"{lowered:.2f} s: past the local lease"
            wait_or_fail(lambda: all_raised(waiting), 3.0, "the other group took over")
            took = time.monotonic() - partitioned
            assert took > INTERVAL * 0.5, f"{took:.2f} s: taken before the row expired"
            proxy.heal()  # the cut-off group's writes on its old versions must now fail
            time.sleep(INTERVAL * 1.5)
            assert all_raised(waiting) and none_raised(held)
        for watch in watches:
            watch.assert_no_overlap()
    assert holders(pg_dsn, wanted) == dict.fromkeys(wanted, "other")


def test_a_lost_reply_to_a_tick_costs_no_flag(
    pg_dsn: str, make_group: MakeGroup, names: str
) -> None:
    """The tick's statement runs but its reply never comes: the group must know the rows it
    may have written (not wait for them to expire), and nobody else may take them."""
    wanted = [f"{names}-{i}" for i in range(3)]
    with TcpProxy(server_of(pg_dsn)) as proxy:
        group = make_group(through(pg_dsn, proxy.port), "unlucky")
        held = [group.flag(name) for name in wanted]
        wait_or_fail(lambda: all_raised(held), 3.0, "the group's flags raised")
        other = make_group(pg_dsn, "other")
        waiting = [other.flag(name) for name in wanted]
        watches = [OverlapWatch(pair) for pair in zip(held, waiting, strict=True)]
        with contextlib.ExitStack() as stack:
            for watch in watches:
                stack.enter_context(watch)
            versions = {name: read_rows(pg_dsn)[name].version for name in wanted}
            proxy.hold_replies()
            wait_or_fail(
                lambda: any(read_rows(pg_dsn)[name].version > versions[name] for name in wanted),
                2.0,
                "a tick ran on the server while its reply was held",
            )
            time.sleep(TIMEOUT + 0.1)  # the client gives up on that reply
            proxy.heal()
            wait_or_fail(lambda: all_raised(held), INTERVAL, "the group raised its flags again")
            time.sleep(INTERVAL * 1.2)
            assert all_raised(held) and none_raised(waiting)
        for watch in watches:
            watch.assert_no_overlap()
    assert holders(pg_dsn, wanted) == dict.fromkeys(wanted, "unlucky")


# --- a group flag against a single flag of the same name ------------------------------------


def test_a_group_flag_and_a_single_flag_never_overlap_across_handovers(
    any_dsn: str, make_group: MakeGroup, make_flag: MakeFlag, flag_name: str
) -> None:
    group = make_group(any_dsn, "grouped")
    for round_ in range(2):  # the group first holds, then the single flag
        group_first = round_ == 0
        if group_first:
            holder: leadership.Flag = group.flag(flag_name)
        else:
            holder = make_flag(any_dsn, f"single-{round_}", interval=INTERVAL, timeout=TIMEOUT)
        assert holder.wait_raised(timeout=3.0)
        if group_first:
            waiter = make_flag(any_dsn, f"single-{round_}", interval=INTERVAL, timeout=TIMEOUT)
        else:
            waiter = group.flag(flag_name)
        with OverlapWatch([holder, waiter]) as watch:
            time.sleep(INTERVAL * 1.3)  # renewals: the waiter respects the holder's lease
            assert holder.raised() and not waiter.raised()
            holder.close()
            took = wait_for(waiter.raised, 3.0)
            assert took is not None and took < 1.5, f"handover took {took}"
            time.sleep(0.2)
        watch.assert_no_overlap()
        assert watch.raised_at[0] is not None and watch.raised_at[1] is not None
        waiter.close()


def test_groups_contend_flag_by_flag_and_never_overlap(
    sqlite_dsn: str, make_group: MakeGroup, names: str
) -> None:
    wanted = [f"{names}-{i}" for i in range(4)]
    groups = [make_group(sqlite_dsn, f"member-{i}") for i in range(2)]
    pairs = [[group.flag(name) for group in groups] for name in wanted]
    watches = [OverlapWatch(pair) for pair in pairs]
    with contextlib.ExitStack() as stack:
        for watch in watches:
            stack.enter_context(watch)
        wait_or_fail(
            lambda: all(a.raised() != b.raised() for a, b in pairs), 3.0, "one holder a flag"
        )
        time.sleep(INTERVAL * 1.5)
        assert all(a.raised() != b.raised() for a, b in pairs)
        winner = groups[0] if pairs[0][0].raised() else groups[1]
        winner.close()
        took = wait_for(lambda: all(a.raised() or b.raised() for a, b in pairs), 3.0)
        assert took is not None and took < 1.5, f"{took}: the other group took the flags"
    for watch in watches:
        watch.assert_no_overlap()


# --- the Go package's table -----------------------------------------------------------------


def columns_of(dsn: str, schema: str, table: str) -> list[str]:
    rows = execute(
        dsn,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    )
    return [str(row[0]) for row in rows]


def test_a_table_made_the_go_way_serves_groups_and_keeps_its_schema(
    pg_dsn: str, fresh_schema: str, make_group: MakeGroup, names: str
) -> None:
    table = f"{fresh_schema}.leadership_flags"
    execute(
        pg_dsn,
        f"CREATE TABLE {table} (name text PRIMARY KEY, holder text NOT NULL, "
        "version bigint NOT NULL, timestamp timestamp with time zone NOT NULL)",
    )
    wanted = [f"{names}-{i}" for i in range(4)]
    groups = [make_group(pg_dsn, f"member-{i}", table=table) for i in range(2)]
    balanced = [group.balance(wanted) for group in groups]
    settled = wait_for(
        lambda: (
            all(sum(flag.raised() for flag in flags) == 2 for flags in balanced)
            and all(a.raised() != b.raised() for a, b in zip(*balanced, strict=True))
        ),
        6.0,
    )
    assert settled is not None, [[f.raised() for f in flags] for flags in balanced]
    plain = groups[0].flag(f"{names}-plain")
    assert plain.wait_raised(timeout=2.0)

    assert columns_of(pg_dsn, fresh_schema, "leadership_flags") == GO_COLUMNS + LEASE_COLUMNS
    assert columns_of(pg_dsn, fresh_schema, "leadership_flags_members") == [
        "pool",
        "member",
        "timestamp",
        "lease_seconds",
    ]
    members = execute(pg_dsn, f"SELECT pool, member FROM {table}_members ORDER BY member")
    assert [tuple(row) for row in members] == [
        (groups[0].pool, "member-0"),
        (groups[1].pool, "member-1"),
    ]
    for group in groups:
        group.close()
    assert execute(pg_dsn, f"SELECT count(*) FROM {table}_members") == [[0]]  # both left


def test_a_go_writer_holds_the_flag_against_a_group_until_it_stops(
    pg_dsn: str, fresh_schema: str, make_group: MakeGroup, flag_name: str
) -> None:
    table = f"{fresh_schema}.leadership_flags"
    execute(
        pg_dsn,
        f"CREATE TABLE {table} (name text PRIMARY KEY, holder text NOT NULL, "
        "version bigint NOT NULL, timestamp timestamp with time zone NOT NULL)",
    )
    execute(pg_dsn, f"INSERT INTO {table} VALUES (%s, 'go-pod', 1, now())", (flag_name,))
    group = make_group(pg_dsn, "python-pod", table=table)
    flag = group.flag(flag_name)
    renewing_until = time.monotonic() + INTERVAL * 1.5
    while time.monotonic() < renewing_until:  # the Go holder renews, as it does, by version
        execute(
            pg_dsn,
            f"UPDATE {table} SET version = version + 1, timestamp = now() "
            "WHERE name = %s AND holder = 'go-pod'",
            (flag_name,),
        )
        assert not flag.raised()
        time.sleep(0.1)
    stopped = time.monotonic()
    assert flag.wait_raised(timeout=3.0)
    took = time.monotonic() - stopped
    assert INTERVAL * 0.7 < took < INTERVAL + 1.0, f"{took:.2f} s after the Go holder stopped"
    assert columns_of(pg_dsn, fresh_schema, "leadership_flags") == GO_COLUMNS + LEASE_COLUMNS


def test_the_default_table_keeps_its_schema_after_balancing(
    pg_dsn: str, make_group: MakeGroup, names: str
) -> None:
    group = make_group(pg_dsn, "alone")
    flags = group.balance([f"{names}-{i}" for i in range(3)])
    wait_or_fail(lambda: all_raised(flags), 4.0, "a lone member takes every balanced flag")
    assert group.share is not None and group.share.members == ("alone",)
    schema = str(execute(pg_dsn, "SELECT current_schema()")[0][0])
    assert columns_of(pg_dsn, schema, "leadership_flags") == GO_COLUMNS + LEASE_COLUMNS
    assert "pool" in columns_of(pg_dsn, schema, "leadership_flags_members")


# --- balance across members -----------------------------------------------------------------


def counts(groups: Sequence[Sequence[leadership.Flag]]) -> list[int]:
    return [sum(flag.raised() for flag in flags) for flags in groups]


def test_balance_shares_flags_fairly_as_members_come_and_go(
    any_dsn: str, make_group: MakeGroup, names: str
) -> None:
    wanted = [f"{names}-{i}" for i in range(7)]
    groups = [make_group(any_dsn, f"member-{i}") for i in range(3)]
    balanced = [groups[0].balance(wanted)]
    wait_or_fail(lambda: counts(balanced) == [7], 4.0, "the lone member holds all 7")
    balanced.append(groups[1].balance(wanted))
    wait_or_fail(lambda: sorted(counts(balanced)) == [3, 4], 6.0, "7 flags on 2 members")
    balanced.append(groups[2].balance(wanted))
    wait_or_fail(lambda: sorted(counts(balanced)) == [2, 2, 3], 6.0, "7 flags on 3 members")

    held = {
        flag.name: (flag.process, flag.token)
        for flags in balanced
        for flag in flags
        if flag.raised()
    }
    assert len(held) == 7
    time.sleep(INTERVAL * 1.5)  # a stable membership moves no flag: same holders, same terms
    assert {
        flag.name: (flag.process, flag.token)
        for flags in balanced
        for flag in flags
        if flag.raised()
    } == held

    groups[2].close()
    del balanced[2]
    wait_or_fail(lambda: sorted(counts(balanced)) == [3, 4], 6.0, "back to 2 members")
    for name in wanted:
        assert sum(flag.raised() for flags in balanced for flag in flags if flag.name == name) == 1


# --- fork -----------------------------------------------------------------------------------


@forks_a_threaded_process
def test_a_forked_child_sees_the_group_closed_and_leaves_the_connection_alone(
    pg_dsn: str, make_group: MakeGroup, names: str
) -> None:
    group = make_group(pg_dsn, "parent")
    flags = [group.flag(f"{names}-{i}") for i in range(3)]
    wait_or_fail(lambda: all_raised(flags), 3.0, "the parent's flags raised")
    tokens = [flag.token for flag in flags]
    # Fork while this thread holds the group's locks: the child must not inherit them held.
    with group._lock, group._pipe._lock:
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        status = 0
        try:
            started = time.monotonic()
            checks = [
                group.closed,
                all(flag.closed for flag in flags),
                none_raised(flags),
                all(flag.token is None for flag in flags),
                flags[0].wait_raised(3.0) is False,
            ]
            try:
                group.flag(f"{names}-child")
                checks.append(False)
            except leadership.LeadershipError:
                checks.append(True)
            group.close()  # no-ops in the child: the rows and the connection are the parent's
            for flag in flags:
                flag.close()
            checks.append(time.monotonic() - started < 0.5)
            status = 0 if all(checks) else 10 + checks.index(False)
        finally:
            os._exit(status)
    deadline = time.monotonic() + 10.0
    lowered = 0
    while True:
        lowered += not all_raised(flags)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung (a lock inherited held?)")
        time.sleep(0.005)
    assert os.waitstatus_to_exitcode(status) == 0, "child check failed: see the checks list"
    versions = {name: row.version for name, row in read_rows(pg_dsn).items()}
    until = time.monotonic() + INTERVAL * 1.5  # renewals go on over the untouched connection
    while time.monotonic() < until:
        lowered += not all_raised(flags)
        time.sleep(0.005)
    assert lowered == 0, "the parent's flags were lowered while or after the child ran"
    assert [flag.token for flag in flags] == tokens  # the same terms
    rows = read_rows(pg_dsn)
    for flag in flags:
        assert rows[flag.name].holder == "parent"
        assert rows[flag.name].version > versions[flag.name]  # renewed since
        assert rows[flag.name].age < INTERVAL


# --- SQLite ---------------------------------------------------------------------------------


def test_a_group_on_sqlite_shares_one_file_connection_and_releases_on_close(
    sqlite_dsn: str, make_group: MakeGroup, names: str
) -> None:
    wanted = [f"{names}-{i}" for i in range(4)]
    group = make_group(sqlite_dsn, "lite")
    flags = [group.flag(name) for name in wanted]
    wait_or_fail(lambda: all_raised(flags), 3.0, "the group's flags raised")
    rows = run(sqlite_dsn, "SELECT name, holder FROM leadership_flags ORDER BY name")
    assert [tuple(row) for row in rows] == [(name, "lite") for name in wanted]
    group.close()
    assert all(row.age > 1e6 for row in read_rows(sqlite_dsn).values())  # released, not left
    again = make_group(sqlite_dsn, "next", interval=LONG_INTERVAL)
    taken = [again.flag(name) for name in wanted]
    took = wait_for(lambda: all_raised(taken), 2.0)
    assert took is not None and took < 1.0


# --- the fair share rule (no database) ------------------------------------------------------


def share_of(member: str, members: Sequence[str], held: dict[str, str | None]) -> Share:
    return fair_share(member, members, held)


@pytest.mark.parametrize("flags", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("member_count", [1, 2, 3, 5])
def test_quotas_are_floor_or_ceil_and_add_up(flags: int, member_count: int) -> None:
    members = [f"m{i}" for i in range(member_count)]
    rng = random.Random(flags * 100 + member_count)
    held = {f"f{i}": rng.choice([None, *members]) for i in range(flags)}
    quotas = [share_of(m, members, held).quota for m in members]
    assert sum(quotas) == flags
    assert all(flags // member_count <= q <= math.ceil(flags / member_count) for q in quotas)


def test_outsiders_are_left_out_of_the_count() -> None:
    held: dict[str, str | None] = {"a": "go-pod", "b": None, "c": "m1", "d": None, "e": "single"}
    share = share_of("m1", ["m1", "m2"], held)
    assert share.outsiders == ("a", "e")
    assert share.free == ("b", "d")
    assert share.members == ("m1", "m2")
    # Three counted flags (b, c, d) on two members: m1, which holds one, gets the extra one.
    assert share.quota == 2 and share.holding == 1
    assert share_of("m2", ["m1", "m2"], held).quota == 1
    assert share.to_take(["c"]) <= {"b", "d"}
    assert "a" not in share.to_take([]) and "e" not in share.to_take([])


def test_the_member_itself_always_counts() -> None:
    share = share_of("late", [], {"a": None, "b": None})
    assert share.members == ("late",) and share.quota == 2
    assert share.to_take([]) == {"a", "b"}


def test_ties_are_broken_by_name_and_holding_more_keeps_the_extra() -> None:
    free: dict[str, str | None] = {f"f{i}": None for i in range(5)}
    assert [share_of(m, ["b", "a"], free).quota for m in "ab"] == [3, 2]
    held: dict[str, str | None] = {**free, "f0": "b"}
    assert [share_of(m, ["a", "b"], held).quota for m in "ab"] == [2, 3]


def test_a_settled_pool_takes_and_gives_nothing() -> None:
    members = ["m0", "m1", "m2"]
    held: dict[str, str | None] = {f"f{i}": members[i % 3] for i in range(8)}  # 3, 3, 2
    for member in members:
        share = share_of(member, members, held)
        mine = [name for name, holder in held.items() if holder == member]
        assert share.quota == len(mine)
        assert share.to_take(mine) == set()
        assert share.to_give(mine) == []


def test_a_member_above_quota_gives_its_least_preferred_flags() -> None:
    held: dict[str, str | None] = {f"f{i}": "m0" for i in range(6)}
    share = share_of("m0", ["m0", "m1"], held)
    mine = list(held)
    given = share.to_give(mine)
    assert share.quota == 3 and len(given) == 3
    ranked = sorted(mine, key=lambda name: preference("m0", name))
    assert given == ranked[:3]  # least preferred first
    newcomer = share_of("m1", ["m0", "m1"], held)
    assert newcomer.quota == 3 and newcomer.to_take([]) == set()  # nothing free yet


def test_a_member_below_quota_takes_its_most_preferred_free_flags() -> None:
    held: dict[str, str | None] = {f"f{i}": None for i in range(6)}
    share = share_of("m1", ["m0", "m1"], held)
    taken = share.to_take([])
    ranked = sorted(held, key=lambda name: -preference("m1", name))
    assert taken == set(ranked[:3])
    assert share.to_take(ranked[:1]) == set(ranked[:2])  # room for two more


def test_members_taking_and_giving_settle_fairly_and_then_stay_still() -> None:
    rng = random.Random(12)
    for _ in range(50):
        members = [f"m{i}" for i in range(rng.randint(1, 5))]
        flags = [f"f{i}" for i in range(rng.randint(0, 20))]
        held: dict[str, str | None] = {name: rng.choice([None, *members]) for name in flags}
        for _ in range(10):  # rounds: each member acts on its own view of the same table
            moved = False
            for member in rng.sample(members, len(members)):
                share = share_of(member, members, held)
                mine = [name for name, holder in held.items() if holder == member]
                for name in share.to_give(mine):
                    held[name], moved = None, True
                share = share_of(member, members, held)
                mine = [name for name, holder in held.items() if holder == member]
                for name in share.to_take(mine):
                    if held[name] is None:
                        held[name], moved = member, True
            if not moved:
                break
        assert not moved, "the pool did not settle"
        tally = Counter(holder for holder in held.values() if holder is not None)
        assert sum(tally.values()) == len(flags)  # nothing left free
        loads = [tally[member] for member in members]
        assert max(loads) - min(loads) <= 1


def test_a_long_guarded_transaction_holds_back_its_own_flag_alone(
    pg_dsn: str, make_group: MakeGroup, names: str
) -> None:
    """The tick skips a row another transaction holds locked (a guard() in progress)
    instead of waiting for it: the group's other flags keep being renewed meanwhile."""
    group = make_group(pg_dsn, "guarded")
    guarded, other = group.flag(f"{names}-a"), group.flag(f"{names}-b")
    wait_or_fail(lambda: all_raised([guarded, other]), 3.0, "both flags raised")
    conn = pg8000.dbapi.connect(**pg8000_options(pg_dsn, 5.0))
    try:
        assert guarded.guard(conn) == guarded.token  # the row stays locked until rollback
        held_until = time.monotonic() + 3 * INTERVAL
        while time.monotonic() < held_until:
            assert other.raised(), "the unguarded flag lowered while the other was guarded"
            time.sleep(0.01)
        # The guarded flag could not be renewed meanwhile: its lease ran out, and no one
        # else could take its row while the guard held it.
        assert not guarded.raised()
    finally:
        conn.rollback()
        conn.close()
    wait_or_fail(lambda: guarded.raised(), 3.0, "the guarded flag raised again")
    assert other.raised()
