"""The CI gate of the benchmarks: ``benchmarks/run.py --quick`` must pass.

It runs the README's benchmark command (from the repository root, against the test
server) in a child process (its own interpreter, so pytest's threads and tracing do not
touch the timings), with ``--json`` for its checks, and fails with the benchmark's table
when a gated figure is past its threshold (see the thresholds in ``benchmarks/run.py``).
tests/test_readme.py leaves that README block to this file.
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
from tests.conftest import BASE_DSN

ROOT = Path(__file__).resolve().parent.parent
README_COMMAND = ".venv/bin/python benchmarks/run.py --quick"
"""The README's benchmark command (run here with ``sys.executable``, the same venv)."""


@pytest.mark.compiled_only
@pytest.mark.slow
@pytest.mark.skipif(
    leadership.IMPLEMENTATION != "compiled",
    reason="the benchmark gate measures the compiled raised(); the pure-Python "
    "implementation is active (LEADERSHIP_NO_EXTENSIONS or no extension built)",
)
@pytest.mark.usefixtures("pg_dsn")  # the server is reachable: else skip, or fail in CI
def test_quick_benchmarks_pass_the_gate(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["LEADERSHIP_TEST_DSN"] = BASE_DSN  # the benchmark makes its own database there
    python, *arguments = README_COMMAND.split()
    assert python == ".venv/bin/python"
    done = subprocess.run(
        [sys.executable, *arguments, "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    shown = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert results.exists(), f"the benchmark did not finish (exit {done.returncode})\n{shown}"
    report = json.loads(results.read_text())
    failed = [check["what"] for check in report["checks"] if check["gated"] and not check["passes"]]
    assert done.returncode == 0 and report["passed"], f"gate failed: {failed}\n{shown}"
    assert report["machine"]["implementation"] == "compiled"
    assert set(report["sections"]) == {"hot_path", "db_cost", "latency", "memory", "import_cost"}
    assert report["seconds"] < 120, f"quick mode took {report['seconds']:.0f} s\n{shown}"


def test_the_readme_shows_this_command() -> None:
    """The README's benchmark block is run here, not by tests/test_readme.py."""
    readme = (ROOT / "README.md").read_text()
    shell_blocks = [part.split("```")[0] for part in readme.split("```sh\n")[1:]]
    commands = [line.split("#")[0].strip() for b in shell_blocks for line in b.splitlines()]
    assert [c for c in commands if "benchmarks/run.py" in c] == [README_COMMAND]
