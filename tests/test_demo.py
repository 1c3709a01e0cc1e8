"""End to end: ``python -m leadership demo`` and the command-line scaffold, as subprocesses."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from leadership import cli

FAULTS = ("SIGKILL", "SIGSTOP", "close()")


def leadership(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python -m leadership ARGS``; return the result and its duration in seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "leadership", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def handovers(output: str) -> dict[str, float]:
    """The handover time printed for each fault, from the log lines."""
    found = {}
    for fault in FAULTS:
        match = re.search(rf"handover after {re.escape(fault)} of worker-\d+: (\d+\.\d+) s", output)
        assert match, f"no handover after {fault} in:\n{output}"
        found[fault] = float(match.group(1))
    return found


def check_demo_output(result: subprocess.CompletedProcess[str], took: float) -> None:
    output = result.stdout
    assert result.returncode == 0, f"{output}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    times = handovers(output)
    # A killed or stopped leader's row is taken only once it expired (interval 1 s, renewed
    # every 0.4-0.6 s; the demo stops the leader just after a renewal): never at once.
    assert 0.2 < times["SIGKILL"] < 3.0, output
    assert 0.5 < times["SIGSTOP"] < 3.0, output
    # close() releases the row: no wait for the expiry.
    assert times["close()"] < 0.5, output
    for fault in FAULTS:
        row = re.search(rf"^  {re.escape(fault)} +worker-\d+ +worker-\d+ +[\d.]+ s +([\d.]+) s$",
                        output, re.MULTILINE)  # fmt: skip
        assert row, f"no summary row for {fault} in:\n{output}"
        assert float(row.group(1)) > 0, output  # the new leader raised after the old one's end
    assert "no overlap" in output
    assert "OVERLAP" not in output and "PROBLEM" not in output
    assert "first raised() returned False" in output
    assert took < 30, f"the demo took {took:.1f} s"


@pytest.mark.slow
def test_demo_hands_the_flag_over_through_three_faults() -> None:
    result, took = leadership("demo")
    check_demo_output(result, took)
    assert "sqlite:///" in result.stdout


@pytest.mark.postgres
@pytest.mark.slow
def test_demo_on_postgresql(pg_dsn: str) -> None:
    result, took = leadership("demo", "--handle", pg_dsn, "--name", f"demo-{uuid.uuid4().hex}")
    check_demo_output(result, took)


@pytest.mark.slow
def test_demo_stops_its_workers_when_interrupted_during_the_pause() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "leadership", "demo", "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    pids: list[int] = []
    seen: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while not any("SIGSTOP" in line for line in seen):
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            pids += [int(pid) for pid in re.findall(r"ready \(pid (\d+)\)", seen[-1])]
        demo.send_signal(signal.SIGINT)  # a worker is stopped right now
        status = demo.wait(timeout=20)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.stderr is not None
    stderr = demo.stderr.read()
    assert status == 130, stderr
    assert stderr.strip() == "leadership demo: interrupted", stderr
    assert len(pids) == 4, seen
    for pid in pids:
        assert not alive(pid), f"worker pid {pid} still runs after the demo ended"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is as good as gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_help() -> None:
    result, _ = leadership("--help")
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "COMMAND" in result.stdout
    result, _ = leadership("demo", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--workers", "--handle", "--name", "--interval", "--jitter", "--timeout"):
        assert option in result.stdout
    assert "SIGKILL" in result.stdout and "Exit status" in result.stdout


@pytest.mark.parametrize(
    ("args", "status", "mentions"),
    [
        ((), 2, "a command is needed"),
        (("frobnicate",), 2, "invalid choice: 'frobnicate'"),
        (("--bogus",), 2, "--bogus"),
        (("demo", "--bogus"), 2, "--bogus"),
        (("demo", "--interval", "-1"), 2, "--interval"),
        (("demo", "--jitter", "1"), 2, "--jitter"),
        (("demo", "--workers", "2"), 2, "--workers"),
        (("demo", "--timeout", "5"), 2, "timeout"),
        (("demo", "--handle", "mysql://db/app"), 2, "unknown scheme 'mysql'"),
        (("demo", "--handle", "sqlite://:memory:"), 2, "in-memory"),
        (("demo", "--handle", "postgresql://u:secret@127.0.0.1:1/db"), 1, "cannot connect"),
    ],
)
def test_mistakes_print_one_line(args: tuple[str, ...], status: int, mentions: str) -> None:
    result, took = leadership(*args, timeout=30)
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("leadership"), lines
    assert mentions in lines[0]
    assert "secret" not in result.stderr
    assert result.stdout == ""
    assert took < 20


def test_main_returns_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert cli.main(["demo", "--workers", "many"]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("leadership ")
    assert captured.err.count("\n") == 1 and "--workers" in captured.err
