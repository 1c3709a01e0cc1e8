"""The witness and the history checker (leadership.testing) must be able to fail.

Synthetic histories with and without overlaps, a real witness killed by SIGKILL, a
witness whose process stalls mid-run, and a deliberately unsafe flag (a cached boolean,
the Go ancestor's behaviour) caught by a short chaos run with SIGSTOP faults.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.chaos.launch import launch
from leadership.testing import (
    RECORD,
    History,
    Kind,
    Witness,
    availability,
    held_intervals,
    judge,
    overlaps,
    read_history,
)
from tests.conftest import require_cluster_tools

MS = 1_000_000


def write_log(path: Path, records: list[tuple[Kind, int, int]]) -> Path:
    witness = Witness(path)
    for kind, first, second in records:
        witness.mark(kind, first, second)
    witness.close()
    return path


def run_log(path: Path, calls: list[tuple[int, int]]) -> Path:
    """A log holding one run made of ``calls`` (before, after) in ms."""
    records = [(Kind.START, calls[0][0] * MS, calls[0][1] * MS)]
    records += [(Kind.TICK, b * MS, a * MS) for b, a in calls[1:-1]]
    records.append((Kind.END, calls[-1][0] * MS, calls[-1][1] * MS))
    return write_log(path, records)


def test_overlapping_history_is_reported(tmp_path: Path) -> None:
    p = read_history(run_log(tmp_path / "p.log", [(100, 101), (150, 151), (200, 201)]))
    q = read_history(run_log(tmp_path / "q.log", [(180, 181), (250, 251)]))
    found = overlaps([p, q])
    assert len(found) == 1
    assert {found[0].first.process, found[0].second.process} == {"p", "q"}
    assert found[0].duration_ns == (200 - 181) * MS
    report = judge([p, q], 100 * MS, 300 * MS)
    assert not report.safe
    assert report.worst_overlap_ns == 19 * MS


def test_non_overlapping_history_is_not_reported(tmp_path: Path) -> None:
    p = read_history(run_log(tmp_path / "p.log", [(100, 101), (200, 201)]))
    q = read_history(run_log(tmp_path / "q.log", [(205, 206), (300, 301)]))
    report = judge([p, q], 100 * MS, 300 * MS)
    assert report.safe and report.overlaps == []


def test_only_definite_overlaps_count(tmp_path: Path) -> None:
    # p's last call took from 195 to 230 ms (say, the process was paused inside it): p was
    # raised at some instant of it, maybe at 195, so q's run from 205 may not overlap.
    p = read_history(run_log(tmp_path / "p.log", [(100, 101), (195, 230)]))
    q = read_history(run_log(tmp_path / "q.log", [(205, 206), (300, 301)]))
    assert overlaps([p, q]) == []
    # But a single True call lying wholly inside another run's sure part is an overlap.
    r = read_history(run_log(tmp_path / "r.log", [(250, 251)]))
    found = overlaps([q, r])
    assert len(found) == 1 and found[0].duration_ns <= 0


def test_runs_of_one_process_never_overlap_each_other(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "p.log",
        [
            (Kind.START, 0, 1 * MS),
            (Kind.END, 10 * MS, 11 * MS),
            (Kind.START, 5 * MS, 6 * MS),
            (Kind.END, 20 * MS, 21 * MS),
        ],
    )
    assert overlaps([read_history(log)]) == []


def test_availability_is_the_sure_union(tmp_path: Path) -> None:
    p = read_history(run_log(tmp_path / "p.log", [(0, 10), (40, 50)]))  # sure 10..40
    q = read_history(run_log(tmp_path / "q.log", [(60, 70), (90, 100)]))  # sure 70..90
    assert held_intervals([p, q]) == [(10 * MS, 40 * MS), (70 * MS, 90 * MS)]
    assert availability([p, q], 0, 100 * MS) == pytest.approx(0.5)
    assert availability([p, q], 20 * MS, 30 * MS) == pytest.approx(1.0)
    assert availability([p, q], 50, 50) == 0.0


def test_truncated_log_keeps_what_was_written(tmp_path: Path) -> None:
    path = write_log(
        tmp_path / "p.log",
        [(Kind.START, 100 * MS, 101 * MS), (Kind.TICK, 150 * MS, 151 * MS)],
    )
    with open(path, "ab") as file:
        file.write(RECORD.pack(Kind.TICK, 999 * MS, 999 * MS)[:10])  # a torn last record
    history = read_history(path)
    assert len(history.runs) == 1
    run = history.runs[0]
    assert not run.complete
    assert (run.first_after, run.last_before) == (101 * MS, 150 * MS)


def test_a_stall_splits_the_run_and_records_the_calls_after_it(tmp_path: Path) -> None:
    calls = 0
    stall_start = stall_end = 0

    def raised() -> bool:
        nonlocal calls, stall_start, stall_end
        calls += 1
        if calls == 2000:
            stall_start = time.monotonic_ns()
            time.sleep(0.5)  # the process "does not run" inside this call
            stall_end = time.monotonic_ns()
        if calls == 2001:
            return False
        if calls >= 4000:
            witness.stopping = True
        return True

    witness = Witness(tmp_path / "p.log", max_gap=0.15)
    witness.watch(raised)
    witness.close()
    history = read_history(tmp_path / "p.log")
    assert all(run.complete for run in history.runs)
    # Call 2000 (inside the stall) is a run of its own; call 2001 returned False.
    stalled = [r for r in history.runs if r.first_before <= stall_start <= r.last_after]
    assert len(stalled) == 1
    assert stalled[0].last_before <= stall_start and stalled[0].first_after >= stall_end
    # Both spans around the stalled call exceed max_gap: two gaps, each with the calls
    # that followed it (call 2000; then calls 2001 and 2002).
    gaps = [g for g in history.gaps if g.start <= stall_start and g.end >= stall_end]
    assert [[s.raised for s in g.samples] for g in gaps] == [[True], [False, True]]
    # The first call made entirely after the stall is call 2001: False.
    assert history.first_call_after(stall_end) is False
    # During the stall, nobody is counted as holding (the sure parts skip it).
    held = held_intervals([history])
    assert not any(a < stall_start + 10 * MS and b > stall_end - 10 * MS for a, b in held)


def wait_until_stopped(pid: int, seconds: float = 10.0) -> None:
    """Until the kernel reports ``pid`` stopped (state T in /proc/PID/stat)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within {seconds:g} s")


def test_sigkill_loses_nothing_already_written(tmp_path: Path) -> None:
    path = tmp_path / "victim.log"
    code = textwrap.dedent(
        f"""
        from leadership.testing import Witness
        Witness({str(path)!r}, max_gap=60).watch(lambda: True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 50 * RECORD.size) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        child.send_signal(signal.SIGSTOP)
        wait_until_stopped(child.pid)  # the signal is asynchronous: a write may still land
        written = path.stat().st_size
        killed_at = time.monotonic_ns()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert written >= 50 * RECORD.size and path.stat().st_size == written
    history = read_history(path)
    assert len(history.runs) == 1
    run = history.runs[0]
    assert not run.complete and run.last_before < killed_at
    ticks = written // RECORD.size - 1
    assert run.last_before - run.first_after >= (ticks - 1) * 2 * MS  # one tick per 2 ms


def test_histories_are_read_with_their_process_names(tmp_path: Path) -> None:
    log = run_log(tmp_path / "c1.3.log", [(1, 2), (3, 4)])
    assert read_history(log).process == "c1.3"
    assert read_history(log, "other").runs[0].process == "other"
    assert read_history(write_log(tmp_path / "empty.log", [])) == History("empty")


@pytest.mark.postgres
@pytest.mark.slow
def test_unsafe_cached_flag_is_caught_by_a_chaos_run(tmp_path: Path) -> None:
    require_cluster_tools()
    result = launch(
        ["--unsafe", "--kinds", "stop", "--holder-bias", "1", "--seconds", "9", "--seed", "7"],
        tmp_path,
        timeout=120,
    )
    summary = result.summary
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary["faults"]["stop"] >= 2
    assert summary["overlaps"] >= 1, json.dumps(summary, indent=1)
    assert "RESULT: FAILED" in result.stdout
    assert os.path.exists(tmp_path / "timeline.svg")
