"""Run ``python -m harness.chaos`` as a bounded child process (for tests and CI).

The child gets its own session; on timeout it receives SIGTERM (it then stops its
contenders and its cluster), and SIGKILL for the whole session after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import child_env

__all__ = ["Launched", "launch"]


@dataclass(frozen=True)
class Launched:
    """A finished chaos run: exit status, output, and the JSON figures (if written)."""

    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]


def launch(args: list[str], workdir: Path, timeout: float, grace: float = 20.0) -> Launched:
    """Run the chaos CLI with ``args`` plus ``--json``/``--svg`` in ``workdir``."""
    summary_path = workdir / "summary.json"
    command = [
        sys.executable,
        "-m",
        "harness.chaos",
        "--quiet",
        "--json",
        str(summary_path),
        "--svg",
        str(workdir / "timeline.svg"),
        *args,
    ]
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=child_env(),
    )
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = child.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            stdout, stderr = child.communicate()
        raise TimeoutError(
            f"chaos run exceeded {timeout} s:\n{stdout.decode()}\n{stderr.decode()}"
        ) from None
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    summary: dict[str, Any] = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    return Launched(child.returncode, stdout.decode(), stderr.decode(), summary)
