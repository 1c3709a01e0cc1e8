"""Import cost of the package: ``python benchmarks/import_cost.py [--runs N] [--json PATH]``.

Times fresh processes, all in one run, interleaved (every round runs each command once,
in a fresh random order, so drift on a shared machine hits all of them alike), after one
untimed warm-up round:

- ``python -c pass``: the interpreter's start-up;
- ``python -c "import sqlite3"``: the baseline, a stdlib import;
- ``python -c "import leadership"``;
- ``python -m leadership --help``: the command line's start-up;
- reported only: ``python -c pass`` and the console script ``leadership --help`` of the
  running environment (this virtual environment, as installed).

Per row: median and p90 (nearest rank) of wall time, and median CPU time (user + system
of the child). The ratio compares whole processes, start-up included, as ``time python
-c ...`` would; the table also gives it without the start-up (``pass`` taken off both).

Gate: ``import leadership`` / ``import sqlite3`` (medians of wall time) at most
``RATIO_GOAL`` (1.5); ``python -m leadership --help`` (median) under ``HELP_GOAL`` (0.1 s)
is reported, not gated (a wall-clock figure, not a ratio: it moves with the machine's load);
``import leadership`` loads none of ``DEFERRED`` (pg8000, prometheus_client, asyncio: each
is imported where first needed). The modules on the import path write
``TYPE_CHECKING = False`` rather than import ``typing``, which with ``re`` and ``enum`` would
be about 0.4 of the ratio by itself.

Environment of the gated rows: a throwaway virtual environment, made with ``venv
--without-pip`` from this interpreter's base installation: the normal start-up (``site``
imported; no ``-S``, no ``-I``) with nothing installed. Its one ``.pth`` file puts the
checkout, then this interpreter's site-packages (for the dependencies), on ``sys.path``; a
path in a ``.pth`` file does not run the ``.pth`` files found there. So the development
install's editable finder (a ``.pth`` file importing ``pathlib``, ``re``, ``urllib.parse``...
at every start-up: about 15 ms on the reference machine) runs in none of the gated rows:
it would be paid by every row, ``pass`` included, and would pre-load modules the package
imports, hiding their cost. The reported rows show what the running environment, with that
finder when it is an editable install, costs. The children get this environment's
variables without ``PYTHON*`` and coverage's, and run in the throwaway directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "DEFERRED",
    "HELP_GOAL",
    "RATIO_GOAL",
    "ImportCosts",
    "Verdict",
    "check",
    "measure",
    "render",
]

ROOT = Path(__file__).resolve().parent.parent
RATIO_GOAL = 1.5
"""``import leadership`` / ``import sqlite3`` (medians of wall time) must not exceed this."""
HELP_GOAL = 0.1
"""Seconds ``python -m leadership --help`` (median) must stay under."""
DEFERRED = ("pg8000", "prometheus_client", "asyncio")
"""Modules ``import leadership`` must not load (each is imported where first needed)."""
WATCHED = (
    *DEFERRED, "typing", "re", "enum", "dataclasses", "logging", "ssl", "socket", "sqlite3",
    "uuid", "signal", "datetime", "urllib", "pathlib", "subprocess", "json", "argparse",
)  # fmt: skip
"""Modules whose presence after ``import leadership`` the table reports."""

ROWS = {
    "pass": "python -c pass",
    "sqlite3": 'python -c "import sqlite3"',
    "leadership": 'python -c "import leadership"',
    "help": "python -m leadership --help",
    "dev_pass": "this environment: python -c pass",
    "dev_script": "this environment: leadership --help",
}
"""Row key -> what it runs, as the table shows it."""

MODULES_CHILD = """
import builtins, sys
before = set(sys.modules)
importers = {}
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.partition(".")[0] == "leadership":
        importers.setdefault(name.partition(".")[0], set()).add(importer)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
import leadership
builtins.__import__ = real_import
loaded = sorted({name.partition(".")[0] for name in set(sys.modules) - before})
import json
print(json.dumps({"loaded": loaded, "importers": {k: sorted(v) for k, v in importers.items()}}))
"""
"""Prints the top-level modules ``import leadership`` loads, and for each module the
package's modules that import it, at module level, while it is imported."""


@dataclass(frozen=True)
class ImportCosts:
    """Wall and CPU seconds of every run, per row (see ``ROWS``), in run order."""

    runs: int
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    loaded: list[str]  # top-level modules that ``import leadership`` added
    importers: dict[str, list[str]]  # module -> the package's modules importing it
    environment: str

    def median(self, row: str) -> float:
        return statistics.median(self.wall[row]) if self.wall.get(row) else math.nan

    def p90(self, row: str) -> float:
        values = sorted(self.wall.get(row, []))
        return values[math.ceil(0.9 * len(values)) - 1] if values else math.nan

    def cpu_median(self, row: str) -> float:
        return statistics.median(self.cpu[row]) if self.cpu.get(row) else math.nan

    @property
    def ratio(self) -> float:
        """``import leadership`` / ``import sqlite3``, medians of wall time."""
        return self.median("leadership") / self.median("sqlite3")

    @property
    def net_ratio(self) -> float:
        """The same with the start-up (``pass``) taken off both: the imports alone."""
        start = self.median("pass")
        return (self.median("leadership") - start) / (self.median("sqlite3") - start)

    @property
    def deferred_loaded(self) -> list[str]:
        return [name for name in DEFERRED if name in self.loaded]


def child_environment() -> dict[str, str]:
    """This environment without what changes an interpreter's start-up or imports."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "COVERAGE_", "COV_CORE_"))
    }


@contextmanager
def clean_interpreter(checkout: Path = ROOT) -> Iterator[Path]:
    """The python of a throwaway venv seeing ``checkout``, then this environment's
    site-packages, through one ``.pth`` file (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="leadership-import-cost-") as directory:
        home = Path(directory) / "venv"
        venv.EnvBuilder(symlinks=True, with_pip=False).create(home)
        site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(home)}))
        paths = dict.fromkeys(
            [str(checkout), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
        )
        (site_packages / "leadership-checkout.pth").write_text("\n".join(paths) + "\n")
        yield home / "bin" / "python"


def run_timed(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv`` (stdout to /dev/null); its wall and CPU seconds. Raise if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{error}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def measure(runs: int = 41, seed: int | None = None, checkout: Path = ROOT) -> ImportCosts:
    """Time every row ``runs`` times, interleaved (see the module docstring); the package
    comes from ``checkout`` (default: this one)."""
    env = child_environment()
    shuffle = random.Random(seed).shuffle
    with clean_interpreter(checkout) as python:
        cwd = python.parent.parent
        commands = {
            "pass": [str(python), "-c", "pass"],
            "sqlite3": [str(python), "-c", "import sqlite3"],
            "leadership": [str(python), "-c", "import leadership"],
            "help": [str(python), "-m", "leadership", "--help"],
            "dev_pass": [sys.executable, "-c", "pass"],
        }
        script = Path(sys.executable).with_name("leadership")
        if script.exists():
            commands["dev_script"] = [str(script), "--help"]
        modules = json.loads(
            subprocess.run(
                [str(python), "-c", MODULES_CHILD], cwd=cwd, env=env, capture_output=True,
                check=True,
            ).stdout
        )  # fmt: skip
        wall: dict[str, list[float]] = {key: [] for key in commands}
        cpu: dict[str, list[float]] = {key: [] for key in commands}
        order = list(commands)
        for round_ in range(runs + 1):  # round 0: warm-up (page cache, .pyc files)
            shuffle(order)
            for key in order:
                seconds, cpu_seconds = run_timed(commands[key], cwd, env)
                if round_:
                    wall[key].append(seconds)
                    cpu[key].append(cpu_seconds)
    base = getattr(sys, "_base_executable", sys.executable)
    environment = (
        f"throwaway venv of {base} (Python {platform.python_version()}), checkout {checkout} "
        f"via a .pth file; reported rows: {sys.executable}"
    )
    return ImportCosts(runs, wall, cpu, modules["loaded"], modules["importers"], environment)


@dataclass(frozen=True)
class Verdict:
    """One figure of the gate and whether it meets its goal."""

    what: str
    value: float
    goal: str
    meets_goal: bool

    @property
    def passes(self) -> bool:
        return self.meets_goal


def check(costs: ImportCosts) -> list[Verdict]:
    """The gate (see the module docstring)."""
    ratio = "import leadership / import sqlite3 (medians)"
    return [
        Verdict(
            ratio,
            costs.ratio,
            f"<= {RATIO_GOAL:g}",
            costs.ratio <= RATIO_GOAL,
        ),
        Verdict(
            f"modules among {', '.join(DEFERRED)} that import leadership loads",
            len(costs.deferred_loaded),
            "== 0",
            not costs.deferred_loaded,
        ),
    ]


def render(costs: ImportCosts, indent: str = "   ") -> list[str]:
    """The table, without the gate."""
    out = [f"{indent}{'command':40} {'median':>9} {'p90':>9} {'CPU':>9} {'x sqlite3':>9}"]
    baseline = costs.median("sqlite3")
    for key, label in ROWS.items():
        if key in costs.wall:
            out.append(
                f"{indent}{label:40} {costs.median(key) * 1000:6.1f} ms "
                f"{costs.p90(key) * 1000:6.1f} ms {costs.cpu_median(key) * 1000:6.1f} ms "
                f"{costs.median(key) / baseline:9.2f}"
            )
    watched = [
        name + (f" (by {', '.join(costs.importers[name])})" if name in costs.importers else "")
        for name in WATCHED
        if name in costs.loaded
    ]
    out += [
        f"{indent}import leadership / import sqlite3: {costs.ratio:.2f}; without the start-up "
        f"(python -c pass taken off both): {costs.net_ratio:.2f}",
        f"{indent}python -m leadership --help: {costs.median('help') * 1000:.0f} ms, goal < "
        f"{HELP_GOAL * 1000:.0f} ms ({'met' if costs.median('help') < HELP_GOAL else 'MISSED'}; "
        "reported, not gated: a wall-clock figure that moves with the machine's load)",
        f"{indent}watched modules that import leadership loads: {', '.join(watched) or 'none'}",
        f"{indent}({costs.runs} interleaved runs per row; {costs.environment})",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=41, help="runs per row (default 41)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--checkout", type=Path, default=ROOT,
        help="measure the package of this checkout instead, e.g. a git worktree of another "
        "commit (its extension built in place)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    costs = measure(args.runs, checkout=args.checkout.resolve())
    verdicts = check(costs)
    print("import cost, fresh processes:")
    print("\n".join(render(costs)))
    for verdict in verdicts:
        state = "goal met" if verdict.meets_goal else "FAIL"
        print(f"   {state:12} {verdict.what}: {verdict.value:.3g} (goal {verdict.goal})")
    passed = all(verdict.passes for verdict in verdicts)
    print(f"GATE {'PASSED' if passed else 'FAILED'}")
    if args.json:
        data = {
            **asdict(costs),
            "ratio": costs.ratio,
            "net_ratio": costs.net_ratio,
            "medians": {key: costs.median(key) for key in costs.wall},
            "verdicts": [{**asdict(verdict), "passes": verdict.passes} for verdict in verdicts],
            "passed": passed,
        }
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
