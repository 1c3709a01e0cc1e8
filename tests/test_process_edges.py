"""Where processes touch the flag first: SIGTERM and SIGINT, fork, and small traps."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import leadership
from tests.conftest import MakeFlag, forks_a_threaded_process

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import signal, sys
    import leadership

    if sys.argv[3] == "own-handler":
        def mine(number, frame):
            print("my handler", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, mine)
    flag = (leadership.new_flag().handle(sys.argv[1]).name(sys.argv[2]).process("script")
            .interval(10).timeout(1).build())
    leadership.close_on_signals()
    assert flag.wait_raised(10)
    print("raised", flush=True)
    while True:  # the design card's use: raised() in a tight loop
        if not flag.raised():
            pass
    """
)


@contextmanager
def plain_script(dsn: str, name: str, mode: str = "plain") -> Iterator[subprocess.Popen[str]]:
    """A plain script holding flag ``name`` (interval 10 s) with close_on_signals()."""
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, dsn, name, mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "raised"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def handover_after(
    signal_number: int, pg_dsn: str, make_flag: MakeFlag, flag_name: str, mode: str = "plain"
) -> tuple[float, subprocess.Popen[str]]:
    """Seconds from sending the signal to a waiter's wait_raised() returning True."""
    with plain_script(pg_dsn, flag_name, mode) as script:
        waiter = make_flag(pg_dsn, f"waiter-{time.monotonic_ns()}", interval=10.0, timeout=1.0)
        assert not waiter.wait_raised(timeout=0.3)
        sent = time.monotonic()
        script.send_signal(signal_number)
        assert waiter.wait_raised(timeout=5.0), "no handover within 5 s (the lease is 10 s)"
        took = time.monotonic() - sent
        script.wait(10)
        waiter.close()
        return took, script


def test_sigterm_to_a_plain_script_hands_over_at_once(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    times = []
    for _ in range(5):
        took, script = handover_after(signal.SIGTERM, pg_dsn, make_flag, flag_name)
        assert script.returncode == -signal.SIGTERM  # the default action still ends it
        times.append(took)
    print(
        f"\nSIGTERM handover: median {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms over {len(times)}"
    )
    assert max(times) < 1.0, times  # without the release: the whole lease (about 10 s)


def test_sigint_releases_then_raises_keyboard_interrupt(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    took, script = handover_after(signal.SIGINT, pg_dsn, make_flag, flag_name)
    assert took < 1.0
    assert script.returncode == -signal.SIGINT  # KeyboardInterrupt, uncaught


def test_a_handler_installed_before_still_runs(
    pg_dsn: str, make_flag: MakeFlag, flag_name: str
) -> None:
    took, script = handover_after(signal.SIGTERM, pg_dsn, make_flag, flag_name, "own-handler")
    assert took < 1.0
    assert script.returncode == 3
    assert script.stdout is not None and "my handler" in script.stdout.read()


def test_close_on_signals_refuses_other_threads() -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            leadership.close_on_signals()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], leadership.ConfigurationError)
    assert "main thread" in str(errors[0])


# --- fork ------------------------------------------------------------------------------


@forks_a_threaded_process
def test_a_forked_child_sees_its_flag_closed_in_every_respect(
    sqlite_dsn: str, make_flag: MakeFlag
) -> None:
    flag = make_flag(sqlite_dsn, "parent")
    assert flag.wait_raised(timeout=2.0)
    # Fork while this thread holds the locks the renewal thread and waiters use: the
    # child must not inherit them held.
    with flag._campaign._lock, flag._waiters._made():
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        status = 0
        try:
            started = time.monotonic()
            checks = [
                flag.closed,
                not flag.raised(),
                flag.token is None,
                flag.wait_raised(3.0) is False,
                flag._campaign.versions() is None,
                time.monotonic() - started < 0.5,
            ]
            try:
                flag.guard(None)  # type: ignore[arg-type]
                checks.append(False)
            except leadership.LeadershipLost:
                checks.append(True)
            flag.close()  # a no-op in the child: the row is the parent's
            status = 0 if all(checks) else 10 + checks.index(False)
        finally:
            os._exit(status)
    deadline = time.monotonic() + 10.0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung (a lock inherited held?)")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0, "child check failed: see the checks list"
    assert flag.raised(), "the parent keeps its flag"


# --- small traps -----------------------------------------------------------------------


def test_a_closed_flag_refuses_with(sqlite_dsn: str, make_flag: MakeFlag) -> None:
    flag = make_flag(sqlite_dsn, "a")
    flag.close()
    with pytest.raises(leadership.LeadershipError, match="closed"), flag:
        pass


async def _enter_closed(flag: leadership.Flag) -> None:
    async with flag:
        pass


def test_a_closed_flag_refuses_async_with(sqlite_dsn: str, make_flag: MakeFlag) -> None:
    import asyncio

    flag = make_flag(sqlite_dsn, "a")
    flag.close()
    with pytest.raises(leadership.LeadershipError, match="closed"):
        asyncio.run(_enter_closed(flag))


def test_an_empty_handle_says_so() -> None:
    with pytest.raises(leadership.ConfigurationError, match="handle: is empty"):
        leadership.new_flag().handle(" ").name("n").build()


def test_the_error_states_the_connect_timeout_really_used() -> None:
    silent = socket.socket()  # accepts TCP connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        dsn = f"postgresql://u@127.0.0.1:{port}/db?sslmode=disable&connect_timeout=0.5"
        started = time.monotonic()
        with pytest.raises(leadership.StoreUnavailable) as caught:
            leadership.new_flag().handle(dsn).name("n").interval(2).timeout(0.2).build()
        assert "(timeout 0.5 s)" in str(caught.value), caught.value
        assert time.monotonic() - started < 5.0
    finally:
        silent.close()
