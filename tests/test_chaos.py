"""A short chaos run is part of the suite: every fault kind, zero overlaps; and one in
group mode (groups over several flags, balancing or not, beside a single flag).

Longer runs are a documented command: ``python -m harness.chaos --seconds 300 --seed N``
(add ``--groups 6 --single`` for group mode).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos.faults import KINDS, schedule
from harness.chaos.launch import launch
from tests.conftest import require_cluster_tools

SEED = 10  # its first round aims every kill, close, stop and partition at the holder
FAULTS = len(KINDS)  # one round: every kind once (about 18 s of faults)
SECONDS = 32  # a bound only: the run ends after FAULTS faults


def test_the_seed_aims_process_faults_at_the_holder() -> None:
    first_round = schedule(SEED, FAULTS, 1.0, 0.3)
    assert {f.kind for f in first_round} == set(KINDS)
    assert all(f.holder for f in first_round if f.kind in ("kill", "close", "stop", "partition"))
    assert schedule(SEED, FAULTS, 1.0, 0.3) == first_round  # reproducible


@pytest.mark.postgres
@pytest.mark.slow
def test_short_chaos_run_has_no_overlap(tmp_path: Path) -> None:
    require_cluster_tools()
    result = launch(
        ["--seconds", str(SECONDS), "--faults", str(FAULTS), "--seed", str(SEED)],
        tmp_path,
        timeout=SECONDS + 150,
    )
    summary = result.summary
    report = result.stdout + result.stderr
    assert summary, report
    assert summary["overlaps"] == 0, report
    assert result.returncode == 0, report
    assert summary["total_faults"] >= len(KINDS), report
    assert all(summary["faults"][kind] >= 1 for kind in KINDS), report
    # Every holder paused or partitioned, and replaced meanwhile, saw False first.
    resumed = summary["first_after_resume"]
    assert resumed["stop"] + resumed["partition"], report  # at least one was checked
    assert not any(resumed["stop"] + resumed["partition"]), report
    # Liveness, with generous margins for a loaded machine: a new holder always came.
    for kind in ("kill", "close", "stop", "partition"):
        assert all(ms < 5000 for ms in summary["failover_ms"][kind]), report
    assert summary["availability"] > 0.3, report
    assert (tmp_path / "timeline.svg").read_text().startswith("<svg")


GROUP_FLAGS = 4
GROUP_KINDS = ("kill", "close", "stop", "partition", "restart", "steal")
GROUP_SECONDS = 40  # a bound only: the run ends after one round of GROUP_KINDS


@pytest.mark.postgres
@pytest.mark.slow
def test_short_group_chaos_run_has_no_overlap_on_any_flag(tmp_path: Path) -> None:
    """Groups over 4 flags (two balancing, two adding each flag) and a single flag for
    the first name, under one round of faults: no flag ever has two holders."""
    require_cluster_tools()
    result = launch(
        [
            *("--seconds", str(GROUP_SECONDS), "--faults", str(len(GROUP_KINDS))),
            *("--seed", str(SEED), "--kinds", ",".join(GROUP_KINDS)),
            *("--groups", str(GROUP_FLAGS), "--single"),
        ],
        tmp_path,
        timeout=GROUP_SECONDS + 150,
    )
    summary = result.summary
    report = result.stdout + result.stderr
    assert summary, report
    assert result.returncode == 0, report
    assert summary["overlaps"] == 0, report
    flags = summary["flags"]
    assert sorted(flags) == [f"chaos-{i}" for i in range(GROUP_FLAGS)], report
    assert all(f["overlaps"] == 0 for f in flags.values()), report
    # A loaded machine may end the run early: most of the round, at least, came.
    assert summary["total_faults"] >= len(GROUP_KINDS) - 2, report
    assert summary["takeovers"] >= summary["total_faults"], report
    assert all(f["holders"] >= 2 for f in flags.values()), report  # every flag changed hands
    assert not [n for n in summary["notes"] if "did not exit" in n], report  # no hang
