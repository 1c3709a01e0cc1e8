"""Imports deferred to first use stay fork-safe: a fork() while another thread is inside a
flag's first ``build()`` (importing the stores, sqlite3, pg8000...) must not leave the child
holding an import lock of a thread it does not have (``leadership/deferred.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORK_DURING_BUILD = textwrap.dedent(
    """
    import os, sys, threading, time, warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads, the case
    import leadership

    handle, module = sys.argv[1], sys.argv[2]
    assert module not in sys.modules, f"{module} is imported by import leadership"

    def build():
        leadership.new_flag().handle(handle).name("fork-import").process("p").build().close()

    builder = threading.Thread(target=build)
    builder.start()
    while module not in sys.modules:  # the builder thread is importing it now
        pass
    pid = os.fork()
    if pid == 0:
        __import__(module)  # the child's own import of the same module
        if handle.startswith("postgresql"):  # (SQLite's C library is not fork-safe with threads)
            leadership.new_flag().handle(handle).name("fork-child").process("c").build().close()
        os._exit(0)
    builder.join()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child exited", os.waitstatus_to_exitcode(status))
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung")
    """
)


def fork_during_first_build(handle: str, module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", FORK_DURING_BUILD, handle, module],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not done.stderr, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("attempt", range(3))
def test_fork_during_a_first_sqlite_build(tmp_path: Path, attempt: int) -> None:
    assert fork_during_first_build(f"sqlite:///{tmp_path / 'flags.db'}", "sqlite3") == (
        "child exited 0"
    )


@pytest.mark.parametrize("attempt", range(3))
def test_fork_during_a_first_postgresql_build(pg_dsn: str, attempt: int) -> None:
    assert fork_during_first_build(pg_dsn, "pg8000") == "child exited 0"
