"""End to end: ``leadership run`` as real processes on the real PostgreSQL (and SQLite).

Every command started under ``leadership run`` is the same small Python program (the
*child*): it appends ``start <ns> <pid>``, a ``beat <ns>`` every 10 ms, ``signal <ns> N``
and ``end <ns> STATUS`` records to its own log, with CLOCK_MONOTONIC readings shared
by all processes of this host. Safety is checked on those histories, not with sleeps:
a child runs from its ``start`` record to its last record (it writes one every 10 ms
while alive, so a child that went on running would have written more), and no two
children's runs may overlap, whatever faults hit the supervisors.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from harness.proxy import TcpProxy
from tests.conftest import MakeFlag, execute
from tests.rows import create_table, read_row, steal

INTERVAL = 2.0
TIMING = ("--interval", "2", "--jitter", "0.1", "--timeout", "0.3")
"""Timeout 0.3 s under the rule's 2 * 0.9 - 1 * 1.1 = 0.7 s; --grace at most 0.4 s."""
GRACE = ("--grace", "0.3")
EXIT_LOST = 75
STARTUP = 20.0
"""Seconds a ``leadership run`` may take to start on a busy machine (bound, not a figure)."""

CHILD = """\
import os, signal, sys, time

log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
action, _, argument = sys.argv[2].partition(":")
on_signal = sys.argv[3]


def record(kind, extra=""):
    os.write(log, f"{kind} {time.monotonic_ns()} {extra}\\n".encode())


def signalled(number, frame):
    record("signal", number)
    if on_signal == "exit":
        record("end", 100 + number)
        os._exit(100 + number)


signal.signal(signal.SIGTERM, signalled)
signal.signal(signal.SIGINT, signalled)
record("start", os.getpid())
if action == "exit":
    record("end", argument)
    os._exit(int(argument))
if action == "kill":
    record("end", "SIGKILL")
    os.kill(os.getpid(), signal.SIGKILL)
while not (action == "until" and os.path.exists(argument)):
    time.sleep(0.01)
    record("beat")
record("end", 0)
"""
"""The command run under ``leadership run``: ``child.py LOG ACTION ON_SIGNAL``.

ACTION: ``exit:N`` (exit with N at once), ``kill`` (SIGKILL itself), ``until:PATH``
(beat until PATH exists, then exit 0) or ``forever``. ON_SIGNAL for SIGTERM/SIGINT:
``exit`` (record it, exit with 100 + the signal number) or ``ignore`` (record it only).
"""


@dataclass(frozen=True)
class ChildRun:
    """What one child's log says: when it ran (CLOCK_MONOTONIC ns) and what it saw."""

    label: str
    pid: int
    start: int
    last: int
    end: str | None
    signals: tuple[int, ...]

    def describe(self, origin: int) -> str:
        return (
            f"{self.label}: pid {self.pid} ran {(self.start - origin) / 1e9:.3f} s to "
            f"{(self.last - origin) / 1e9:.3f} s, signals {list(self.signals)}, end {self.end}"
        )


def read_child(label: str, path: Path) -> ChildRun | None:
    """The run recorded in ``path``, or None when the child never started."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    lines = text.split("\n")[:-1]  # complete records only
    records = [line.split(" ", 2) for line in lines]
    if not records or records[0][0] != "start":
        return None
    signals = tuple(int(extra) for kind, _, extra in records if kind == "signal")
    ends = [extra.strip() for kind, _, extra in records if kind == "end"]
    return ChildRun(
        label=label,
        pid=int(records[0][2]),
        start=int(records[0][1]),
        last=max(int(at) for _, at, _ in records),
        end=ends[-1] if ends else None,
        signals=signals,
    )


def assert_no_overlap(runs: list[ChildRun]) -> None:
    """No two children ran at the same time: each one's last record precedes the next start."""
    ordered = sorted(runs, key=lambda run: run.start)
    origin = ordered[0].start if ordered else 0
    for earlier, later in itertools.combinations(ordered, 2):
        assert earlier.last < later.start, (
            f"two commands ran at the same time for "
            f"{(earlier.last - later.start) / 1e6:.1f} ms:\n"
            + "\n".join(run.describe(origin) for run in ordered)
        )


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: str = "") -> float:
    """Poll ``condition`` every 5 ms; return the seconds it took or fail naming ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:g} s\n{log}")
        time.sleep(0.005)
    return time.monotonic() - started


@dataclass
class Supervised:
    """One ``leadership run`` process and the files of its child."""

    label: str
    popen: subprocess.Popen[bytes]
    log: Path
    output_path: Path
    stop_path: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def child(self) -> ChildRun | None:
        return read_child(self.label, self.log)

    def stop_child(self) -> None:
        """Ask an ``until`` child to exit with status 0."""
        self.stop_path.touch()

    def status(self, timeout: float) -> int | None:
        """The exit status (negative: killed by that signal), or None if still running."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Launcher:
    """Starts ``leadership run`` processes on one flag; kills whatever is left at the end."""

    def __init__(self, tmp_path: Path, handle: str, name: str) -> None:
        self.directory = tmp_path
        self.handle = handle
        self.name = name
        self.script = tmp_path / "child.py"
        self.script.write_text(CHILD)
        self.started: list[Supervised] = []

    def start(
        self,
        label: str,
        *options: str,
        action: str = "until",
        on_signal: str = "exit",
        handle: str | None = None,
        shell: bool = False,
    ) -> Supervised:
        """Start ``leadership run`` (handle in LEADERSHIP_HANDLE) with its child's ACTION;
        with ``shell``, the command is a shell that runs the child as its own child."""
        log = self.directory / f"{label}.log"
        stop = self.directory / f"{label}.stop"
        output = self.directory / f"{label}.out"
        spec = f"until:{stop}" if action == "until" else action
        command = [sys.executable, "-S", str(self.script), str(log), spec, on_signal]
        if shell:  # "; exit $?" keeps the shell from replacing itself with the child
            command = ["sh", "-c", '"$@"; exit $?', "sh", *command]
        argv = [
            sys.executable, "-m", "leadership", "run", "--name", self.name, "--process", label,
            *TIMING, *options, "--", *command,
        ]  # fmt: skip
        env = dict(os.environ, LEADERSHIP_HANDLE=handle or self.handle)
        with output.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        supervised = Supervised(label, popen, log, output, stop)
        self.started.append(supervised)
        return supervised

    def runs(self) -> list[ChildRun]:
        return [run for run in (s.child() for s in self.started) if run is not None]

    def report(self) -> str:
        """Outputs and child histories, for failure messages."""
        parts = []
        origin = min((run.start for run in self.runs()), default=0)
        for supervised in self.started:
            run = supervised.child()
            parts.append(
                f"--- {supervised.label} (exit {supervised.popen.poll()}): "
                f"{run.describe(origin) if run else 'child never started'}\n"
                + supervised.output()[-3000:]
            )
        return "\n".join(parts)

    def waiting(self, supervised: Supervised) -> None:
        """Wait until ``supervised`` built its flag and waits for it."""
        wait_until(
            lambda: "waiting for flag" in supervised.output(),
            STARTUP,
            f"{supervised.label} waiting for the flag",
            self.report(),
        )

    def started_child(self, supervised: Supervised, timeout: float = STARTUP) -> ChildRun:
        wait_until(
            lambda: supervised.child() is not None,
            timeout,
            f"{supervised.label}'s command started",
            self.report(),
        )
        run = supervised.child()
        assert run is not None
        return run

    def cleanup(self) -> None:
        """SIGKILL every supervisor's process group and any child still alive."""
        for supervised in self.started:
            if supervised.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(supervised.popen.pid, signal.SIGKILL)
                supervised.popen.wait(10)
        for run in self.runs():  # children outliving their supervisor: a failed test
            if alive(run.pid) and self._is_child(run.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(run.pid), signal.SIGKILL)  # the group run made
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.pid, signal.SIGKILL)

    def _is_child(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                return str(self.script).encode() in cmdline.read()
        except FileNotFoundError:
            return False


@pytest.fixture
def launcher(tmp_path: Path, pg_dsn: str, flag_name: str) -> Iterator[Launcher]:
    """Supervisors on ``flag_name`` in the PostgreSQL test database."""
    launched = Launcher(tmp_path, pg_dsn, flag_name)
    try:
        yield launched
    finally:
        launched.cleanup()


@pytest.fixture
def sqlite_launcher(tmp_path: Path, sqlite_dsn: str, flag_name: str) -> Iterator[Launcher]:
    launched = Launcher(tmp_path, sqlite_dsn, flag_name)
    try:
        yield launched
    finally:
        launched.cleanup()


def released(dsn: str, name: str) -> bool:
    """Whether the flag's row carries the release mark (timestamp at the epoch)."""
    row = read_row(dsn, name)
    return row is not None and row.age > 1e8


# --- exit status and release ------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"), [("exit:0", 0), ("exit:7", 7), ("kill", 128 + signal.SIGKILL)]
)
def test_exit_status_is_the_commands_and_the_flag_is_released(
    launcher: Launcher, pg_dsn: str, flag_name: str, action: str, expected: int
) -> None:
    supervised = launcher.start("solo", action=action)
    status = supervised.status(STARTUP)
    assert status == expected, launcher.report()
    run = supervised.child()
    assert run is not None, launcher.report()
    row = read_row(pg_dsn, flag_name)
    assert row is not None and row.holder == "solo", row
    assert released(pg_dsn, flag_name), f"row not released after the command exited: {row}"
    assert "Traceback" not in supervised.output()


@pytest.mark.parametrize(("action", "expected"), [("exit:7", 7), ("kill", 128 + signal.SIGKILL)])
def test_exit_status_on_sqlite(
    sqlite_launcher: Launcher, sqlite_dsn: str, flag_name: str, action: str, expected: int
) -> None:
    supervised = sqlite_launcher.start("solo", action=action)
    assert supervised.status(STARTUP) == expected, sqlite_launcher.report()
    assert supervised.child() is not None
    assert released(sqlite_dsn, flag_name), read_row(sqlite_dsn, flag_name)


def test_command_runs_only_once_the_flag_is_raised(
    launcher: Launcher, pg_dsn: str, flag_name: str, make_flag: MakeFlag
) -> None:
    holder = make_flag(pg_dsn, "holder", interval=INTERVAL, timeout=0.3)
    assert holder.wait_raised(5)
    supervised = launcher.start("standby")
    launcher.waiting(supervised)
    first = read_row(pg_dsn, flag_name)
    assert first is not None
    # Two renewals by the holder: the standby checked the row meanwhile and kept waiting.
    wait_until(
        lambda: (read_row(pg_dsn, flag_name) or first).version >= first.version + 2,
        3 * INTERVAL,
        "two renewals by the holder",
    )
    assert supervised.child() is None, "the command started while another process held the flag"
    assert supervised.popen.poll() is None, launcher.report()
    closing = time.monotonic_ns()
    holder.close()  # releases the row and notifies: the standby wakes at once
    closed = time.monotonic_ns()
    run = launcher.started_child(supervised, timeout=INTERVAL)
    assert run.start > closing, "the command started before the holder let go"
    took = (run.start - closed) / 1e9
    assert took < INTERVAL / 2, f"the command started {took:.3f} s after the release"
    row = read_row(pg_dsn, flag_name)
    assert row is not None and row.holder == "standby"
    supervised.stop_child()
    assert supervised.status(10) == 0, launcher.report()
    print(f"command started {took * 1000:.0f} ms after the holder released the flag")


def test_next_supervisor_starts_its_command_soon_after_the_first_one_exits(
    launcher: Launcher,
) -> None:
    first = launcher.start("first")
    first_run = launcher.started_child(first)
    second = launcher.start("second")
    launcher.waiting(second)
    first.stop_child()
    assert first.status(10) == 0, launcher.report()
    second_run = launcher.started_child(second, timeout=INTERVAL)
    ended = first.child()
    assert ended is not None and ended.end == "0"
    gap = (second_run.start - ended.last) / 1e9
    assert 0 < gap < INTERVAL / 2, f"second command started {gap:.3f} s after the first ended"
    assert_no_overlap(launcher.runs())
    assert first_run.pid != second_run.pid
    second.stop_child()
    assert second.status(10) == 0, launcher.report()
    print(f"handover between commands: {gap * 1000:.0f} ms")


# --- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_forwarded_to_the_command_then_the_flag_released(
    launcher: Launcher, pg_dsn: str, flag_name: str, number: signal.Signals
) -> None:
    supervised = launcher.start("holder", action="forever", on_signal="exit")
    launcher.started_child(supervised)
    supervised.popen.send_signal(number)
    status = supervised.status(10)
    run = supervised.child()
    assert run is not None
    assert run.signals == (number,), launcher.report()
    assert status == 100 + number, launcher.report()  # the child's own status
    assert not alive(run.pid)
    assert released(pg_dsn, flag_name), read_row(pg_dsn, flag_name)
    assert f"forwarding signal {int(number)}" in supervised.output()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_waiting_exits_without_running_the_command(
    launcher: Launcher, pg_dsn: str, flag_name: str, make_flag: MakeFlag, number: signal.Signals
) -> None:
    holder = make_flag(pg_dsn, "holder", interval=INTERVAL, timeout=0.3)
    assert holder.wait_raised(5)
    supervised = launcher.start("standby")
    launcher.waiting(supervised)
    supervised.popen.send_signal(number)
    assert supervised.status(5) == 128 + number, launcher.report()
    assert supervised.child() is None
    assert holder.raised()
    row = read_row(pg_dsn, flag_name)
    assert row is not None and row.holder == "holder"


# --- metrics ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_metrics_port_serves_the_flag_state(launcher: Launcher, flag_name: str) -> None:
    port = free_port()
    supervised = launcher.start("metered", "--metrics-port", str(port))
    launcher.started_child(supervised)
    line = re.compile(
        r"^leadership_run_leadership_flag_state\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M
    )

    def state() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                text: str = reply.read().decode()
        except OSError:
            return None
        for match in line.finditer(text):
            if f'name="{flag_name}"' in match["labels"]:
                assert 'process="metered"' in match["labels"], match[0]
                return match["value"]
        return None

    wait_until(lambda: state() == "1.0", 5, "flag state 1.0 on /metrics", launcher.report())
    supervised.stop_child()
    assert supervised.status(10) == 0, launcher.report()


# --- faults: the deposed command is gone before the next one starts ----------------------


def dsn_through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextlib.contextmanager
def login_role(dsn: str) -> Iterator[tuple[str, str]]:
    """A role allowed to use the flags table; yields (role, its DSN); dropped afterwards."""
    role = f"leadership_run_{uuid.uuid4().hex[:10]}"
    create_table(dsn)
    execute(dsn, f"CREATE ROLE {role} LOGIN")
    try:
        execute(dsn, f"GRANT SELECT, INSERT, UPDATE ON leadership_flags TO {role}")
        parts = urlsplit(dsn)
        netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
        yield role, urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    finally:
        execute(dsn, f"ALTER ROLE {role} NOLOGIN")
        execute(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        execute(dsn, f"DROP OWNED BY {role}")
        execute(dsn, f"DROP ROLE {role}")


FAULTS = ("stolen row", "partition", "database refuses", "SIGSTOP")


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_deposed_command_is_gone_before_the_next_one_starts(
    launcher: Launcher, pg_dsn: str, flag_name: str, fault: str
) -> None:
    """Three supervisors on one flag; the holder is hit by ``fault``.

    Its command ignores SIGTERM (the worst case: it must be SIGKILLed in time). The
    histories must show it ended before another command started, the deposed
    supervisor must exit 75 (or die by the dead man's switch when frozen), and one
    waiting supervisor must start its command within a bound.
    """
    with contextlib.ExitStack() as stack:
        handle = pg_dsn
        apply: Callable[[], None]
        if fault == "partition":
            parts = urlsplit(pg_dsn)
            proxy = stack.enter_context(
                TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
            )
            handle = dsn_through(pg_dsn, proxy.port)
            apply = proxy.freeze
        elif fault == "database refuses":
            role, handle = stack.enter_context(login_role(pg_dsn))

            def apply() -> None:
                execute(pg_dsn, f"ALTER ROLE {role} NOLOGIN")
                execute(
                    pg_dsn,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (role,),
                )

        elif fault == "stolen row":

            def apply() -> None:
                steal(pg_dsn, flag_name, "thief")

        else:
            apply = lambda: None  # noqa: E731 - the SIGSTOP is sent below
        stack.callback(launcher.cleanup)  # before the proxy or the role go away

        deposed = launcher.start("a", *GRACE, action="forever", on_signal="ignore", handle=handle)
        deposed_run = launcher.started_child(deposed)
        waiters = [launcher.start(label, *GRACE, action="forever") for label in ("b", "c")]
        for waiter in waiters:
            launcher.waiting(waiter)
        assert deposed.popen.poll() is None, launcher.report()

        fault_at = time.monotonic_ns()
        if fault == "SIGSTOP":
            os.kill(deposed.popen.pid, signal.SIGSTOP)
        apply()

        wait_until(
            lambda: any(waiter.child() is not None for waiter in waiters),
            INTERVAL + 5,
            f"a waiting supervisor started its command after the {fault}",
            launcher.report(),
        )
        status = deposed.status(10)
        wait_until(lambda: not alive(deposed_run.pid), 2, "the deposed command died")
        runs = launcher.runs()
        assert_no_overlap(runs)  # the first thing that matters

        (successor,) = [waiter for waiter in waiters if waiter.child() is not None]
        (standby,) = [waiter for waiter in waiters if waiter is not successor]
        successor_run = successor.child()
        ended = deposed.child()
        assert successor_run is not None and ended is not None
        took = (successor_run.start - fault_at) / 1e9
        # The row expires one interval after the last write before the fault; the rest is
        # waking, one check and starting a process on a busy machine.
        assert took < INTERVAL + 2.0, f"next command started {took:.3f} s after the {fault}"
        if fault == "SIGSTOP":
            assert status == -signal.SIGKILL, f"frozen supervisor not killed:\n{launcher.report()}"
            assert ended.signals == (), launcher.report()
        else:
            assert status == EXIT_LOST, launcher.report()
            assert ended.signals == (signal.SIGTERM,), launcher.report()
            assert "Traceback" not in deposed.output(), deposed.output()
        print(
            f"{fault}: deposed command's last record {(ended.last - fault_at) / 1e6:.0f} ms, "
            f"next command started {took * 1000:.0f} ms after the fault "
            f"(gap {(successor_run.start - ended.last) / 1e6:.0f} ms)"
        )

        # Graceful end: the standby gives up waiting, the successor's command is stopped.
        standby.popen.send_signal(signal.SIGTERM)
        assert standby.status(10) == 128 + signal.SIGTERM, launcher.report()
        assert standby.child() is None
        successor.popen.send_signal(signal.SIGTERM)
        assert successor.status(10) == 100 + signal.SIGTERM, launcher.report()
        assert_no_overlap(launcher.runs())
        assert released(pg_dsn, flag_name), read_row(pg_dsn, flag_name)


def test_frozen_supervisors_grandchild_is_gone_before_the_next_command_starts(
    launcher: Launcher,
) -> None:
    """The command is a shell running the real work as its child (a wrapper script):
    when the supervisor is frozen, the dead man's switch kills it, PR_SET_PDEATHSIG
    kills the shell, and the shell's child must not outlive them into the next term."""
    deposed = launcher.start("a", *GRACE, action="forever", on_signal="ignore", shell=True)
    deposed_run = launcher.started_child(deposed)
    waiter = launcher.start("b", *GRACE, action="forever")
    launcher.waiting(waiter)
    os.kill(deposed.popen.pid, signal.SIGSTOP)
    launcher.started_child(waiter, timeout=INTERVAL + 5)
    assert deposed.status(10) == -signal.SIGKILL, launcher.report()
    outlived = False
    try:
        wait_until(lambda: not alive(deposed_run.pid), 2, "the command's child died")
    except pytest.fail.Exception:
        outlived = True
    launcher.cleanup()  # every process is dead: the histories are complete
    assert_no_overlap(launcher.runs())
    assert not outlived, "the command's child outlived the frozen supervisor"
