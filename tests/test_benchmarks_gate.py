"""The CI gate of the benchmarks: ``benchmarks/run.py --quick`` must pass.

It runs in a child process (its own interpreter, so pytest's threads and tracing do not
touch the timings) against the test server, and fails with the benchmark's table when a
gated figure is past its threshold (see the thresholds in ``benchmarks/run.py``).
Only meaningful for the compiled implementation (``compiled_only``): it fails when the
extension was expected (``LEADERSHIP_EXPECT_COMPILED``) but cannot be imported, and skips
when the pure-Python twin is active.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import leadership

RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"

pytestmark = [pytest.mark.compiled_only, pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.skipif(
    leadership.IMPLEMENTATION != "compiled",
    reason="the benchmark gate measures the compiled raised(); the pure-Python "
    "implementation is active (LEADERSHIP_NO_EXTENSIONS or no extension built)",
)
def test_quick_benchmarks_pass_the_gate(pg_dsn: str, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--dsn", pg_dsn, "--json", str(results)],
        capture_output=True,
        text=True,
        timeout=300,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    shown = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert results.exists(), f"the benchmark did not finish (exit {done.returncode})\n{shown}"
    report = json.loads(results.read_text())
    failed = [check["what"] for check in report["checks"] if check["gated"] and not check["passes"]]
    assert done.returncode == 0 and report["passed"], f"gate failed: {failed}\n{shown}"
    assert report["machine"]["implementation"] == "compiled"
    assert set(report["sections"]) == {"hot_path", "db_cost", "latency", "memory"}
    assert report["seconds"] < 120, f"quick mode took {report['seconds']:.0f} s\n{shown}"
