"""Import cost: what ``import leadership`` loads, and the gate of benchmarks/import_cost.py.

The module checks run a child interpreter with ``-S`` (no ``site``: no ``.pth`` file runs,
so neither the editable install's finder nor coverage loads anything first) and the
checkout on ``sys.path``; the child reports the top-level modules that appeared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TypedDict

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFERRED = ("pg8000", "prometheus_client", "asyncio")
"""Imported where first needed, never by ``import leadership`` (the contract)."""
KEPT_OUT = (
    "ssl", "socket", "sqlite3", "logging", "dataclasses", "inspect", "uuid", "signal",
    "datetime", "subprocess", "json", "pathlib", "urllib",
)  # fmt: skip
"""Also imported where first needed, for the import cost (see leadership/__init__.py)."""

CHILD = """
import builtins, sys
sys.path[:0] = {paths!r}
before = set(sys.modules)
importers = {{}}
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {{}}).get("__name__") or ""
    if level == 0 and importer.partition(".")[0] == "leadership":
        importers.setdefault(name.partition(".")[0], set()).add(importer)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
import leadership
builtins.__import__ = real_import
{then}
loaded = sorted({{name.partition(".")[0] for name in set(sys.modules) - before}})
import json
print(json.dumps({{"loaded": loaded, "importers": {{k: sorted(v) for k, v in importers.items()}}}}))
"""
"""``import leadership``, then ``then``; prints the top-level modules loaded meanwhile and,
for each module, the package's modules that imported it during ``import leadership``."""

BUILD = """
builder = leadership.new_flag().handle({handle!r}).name("import-cost").interval(1)
builder.timeout(0.25)
{configure}
flag = builder.build()
assert flag.wait_raised(10), "the flag was not raised"
flag.close()
"""


class ChildReport(TypedDict):
    loaded: list[str]  # top-level modules
    importers: dict[str, list[str]]  # module -> the package's modules importing it


def run_child(then: str = "", *, dependencies: bool = False) -> ChildReport:
    """Run :data:`CHILD`; with ``dependencies``, this environment's site-packages come
    after the checkout on ``sys.path`` (without running their ``.pth`` files)."""
    paths = [str(ROOT)]
    if dependencies:
        paths += [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    done = subprocess.run(
        [sys.executable, "-S", "-c", CHILD.format(paths=paths, then=then)],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: ChildReport = json.loads(done.stdout)
    return result


def test_import_leadership_loads_no_deferred_module() -> None:
    loaded = run_child()["loaded"]
    assert "leadership" in loaded
    assert [name for name in DEFERRED if name in loaded] == []
    assert [name for name in KEPT_OUT if name in loaded] == [], (
        "import leadership loads more than it did: import these where first needed "
        "(python benchmarks/import_cost.py shows the cost)"
    )


def test_nothing_on_the_import_path_imports_typing() -> None:
    """The modules of the import path write ``TYPE_CHECKING = False``."""
    importers = run_child()["importers"]
    assert "typing" not in importers, importers["typing"]


def test_an_sqlite_flag_imports_neither_driver_nor_metrics(tmp_path: Path) -> None:
    build = BUILD.format(handle=f"sqlite:///{tmp_path / 'flags.db'}", configure="")
    loaded = run_child(build)["loaded"]
    assert "sqlite3" in loaded
    assert [name for name in DEFERRED if name in loaded] == []


def test_metrics_import_prometheus_client_when_enabled(tmp_path: Path) -> None:
    configure = 'builder.metrics_subsystem("import_cost")'
    build = BUILD.format(handle=f"sqlite:///{tmp_path / 'flags.db'}", configure=configure)
    loaded = run_child(build, dependencies=True)["loaded"]
    assert "prometheus_client" in loaded
    assert "pg8000" not in loaded


def test_a_postgresql_dsn_imports_pg8000(pg_dsn: str) -> None:
    loaded = run_child(BUILD.format(handle=pg_dsn, configure=""), dependencies=True)["loaded"]
    assert "pg8000" in loaded
    assert "prometheus_client" not in loaded


@pytest.mark.slow
def test_import_cost_gate(tmp_path: Path) -> None:
    """``benchmarks/import_cost.py`` passes its gate: import leadership / import sqlite3
    <= 1.5 (medians of fresh processes; ``--help`` is reported, not gated)."""
    results = tmp_path / "import_cost.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/import_cost.py", "--runs", "21", "--json", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    shown = f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert results.exists(), f"the benchmark did not finish (exit {done.returncode})\n{shown}"
    report = json.loads(results.read_text())
    failed = [verdict["what"] for verdict in report["verdicts"] if not verdict["passes"]]
    assert done.returncode == 0 and report["passed"], f"gate failed: {failed}\n{shown}"
