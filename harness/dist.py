"""Release artifacts, built and checked: ``python -m harness.dist [--out dist] [--check]``.

Builds, from this checkout, into ``--out`` (emptied first):

- the sdist (with the generated C; build isolation fetches setuptools and Cython);
- the universal pure wheel ``py3-none-any`` (config setting ``implementation=pure``);
- a compiled wheel for each CPython in ``--pythons`` (default 3.10-3.13, found on PATH or
  under pyenv), built from the sdist with ``implementation=compiled`` (a failed compile is
  an error, never a silent pure wheel) and repaired by ``auditwheel`` to the lowest
  manylinux tag its symbols allow;

then runs ``twine check --strict`` on all of them. ``SOURCE_DATE_EPOCH`` defaults to the
last commit's time (:func:`last_commit_time`), so a rebuild of a commit gives the same bytes.

With ``--check`` it also proves, and prints as a table:

- reproducibility: everything is built a second time, the sdist from a copy of the
  checkout at another path, and every file must hash the same;
- offline installs: for each Python, a fresh venv installs ``leadership`` with pip's
  configuration off and ``--no-index`` from a wheelhouse of ``pip download`` (the runtime
  dependencies) plus our wheels, then a smoke test asserts the compiled clock, no warning,
  and a flag raised on SQLite;
- the sdist is enough to test from: unpacked, installed in place with its test tools (as
  a distribution packager does), it runs the quick test subset (``-m "not slow"``) on the
  compiled clock.

Exit status 1 when any step fails. A Python that is not installed is reported and
skipped, or fails the run when ``LEADERSHIP_REQUIRE_TOOLS`` is set (as in CI).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
SMOKE = """
import sys, tempfile, warnings
warnings.simplefilter("error")
import leadership
assert leadership.IMPLEMENTATION == "compiled", leadership.IMPLEMENTATION
with tempfile.TemporaryDirectory() as directory:
    flag = (leadership.new_flag().handle(f"sqlite:///{directory}/flags.db").name("smoke")
            .process("p1").interval(0.5).jitter(0.0).timeout(0.2).build())
    try:
        assert flag.wait_raised(10), "not raised within 10 s"
    finally:
        flag.close()
print(leadership.__version__, leadership.IMPLEMENTATION, sys.version.split()[0])
"""


class Failed(Exception):
    """A step failed; the message says which and shows its output."""


def run(command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(
        list(command), capture_output=True, text=True, env=dict(env), cwd=cwd, timeout=900
    )
    if done.returncode != 0:
        raise Failed(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def find_python(version: str) -> Path | None:
    """The newest pyenv build of ``python3.X``, else one on PATH (not a pyenv shim)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(pyenv.glob(f"{version}.*/bin/python{version}"), key=_version_key)
    if builds:
        return builds[-1]
    found = shutil.which(f"python{version}")
    return Path(found) if found and "/shims/" not in found else None


def _version_key(path: Path) -> tuple[int, ...]:
    release = path.parent.parent.name
    return tuple(int(part) for part in release.split(".") if part.isdigit())


def environment(epoch: str) -> dict[str, str]:
    """This process's environment, with the tools of its venv on PATH and a fixed epoch."""
    tools = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "SOURCE_DATE_EPOCH": epoch,
        "PATH": os.pathsep.join([tools, os.environ.get("PATH", "")]),
    }


def last_commit_time() -> str:
    """The last commit's time; outside a checkout (an unpacked sdist), pyproject.toml's."""
    done = subprocess.run(
        ["git", "log", "-1", "--format=%ct"], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    return str(int((ROOT / "pyproject.toml").stat().st_mtime))


@dataclass
class Build:
    """What one build made."""

    out: Path
    sdist: Path | None = None
    wheels: dict[str, Path] = field(default_factory=dict)  # "pure" or "3.X" -> wheel


def build_all(
    source: Path, out: Path, pythons: Mapping[str, Path], env: Mapping[str, str]
) -> Build:
    """The sdist from ``source``, then every wheel from that sdist, into ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    build = Build(out)
    run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(source)], env)
    (build.sdist,) = out.glob("leadership-*.tar.gz")
    with tempfile.TemporaryDirectory(prefix="leadership-wheels-") as scratch:
        raw = Path(scratch)
        pure = pip_wheel(Path(sys.executable), build.sdist, raw / "pure", "pure", env)
        build.wheels["pure"] = Path(shutil.copy2(pure, out))
        for version, python in pythons.items():
            wheel = pip_wheel(python, build.sdist, raw / version, "compiled", env)
            build.wheels[version] = repair(wheel, out, env)
    return build


def pip_wheel(
    python: Path, sdist: Path, into: Path, implementation: str, env: Mapping[str, str]
) -> Path:
    run(
        [
            str(python), "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
            "--config-settings", f"implementation={implementation}",
            "--wheel-dir", str(into), str(sdist),
        ],
        env,
    )  # fmt: skip
    (wheel,) = into.glob("leadership-*.whl")
    return wheel


def repair(wheel: Path, out: Path, env: Mapping[str, str]) -> Path:
    """``auditwheel repair``: the lowest manylinux tag the extension's symbols allow."""
    before = set(out.glob("*.whl"))
    run(["auditwheel", "repair", "--plat", "auto", "--wheel-dir", str(out), str(wheel)], env)
    (repaired,) = set(out.glob("*.whl")) - before
    return repaired


def twine_check(files: Iterable[Path], env: Mapping[str, str]) -> None:
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], env)


def digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def copy_checkout(into: Path) -> Path:
    """The source tree under another path, without build products (the C is regenerated)."""
    shutil.copytree(ROOT, into, ignore=shutil.ignore_patterns(*BUILD_PRODUCTS))
    return into


BUILD_PRODUCTS = (
    ".git", ".venv*", "build", "dist", "_build", "__pycache__", "*.egg-info", ".*_cache",
    ".coverage*", "*.so", "*.c", "*.db", "*.db-*",
)  # fmt: skip


def install_offline(python: Path, build: Build, version: str, scratch: Path) -> str:
    """A fresh venv of ``python`` installs from a wheelhouse only; the smoke test's output."""
    house, venv = scratch / f"house-{version}", scratch / f"venv-{version}"
    house.mkdir()
    requires = run(
        [sys.executable, "-c", _REQUIRES, str(build.wheels[version])], os.environ
    ).split()
    run([str(python), "-m", "pip", "download", "--quiet", "--dest", str(house), *requires],
        os.environ)  # fmt: skip
    for wheel in (build.wheels[version], build.wheels["pure"]):
        shutil.copy2(wheel, house)
    run([str(python), "-m", "venv", str(venv)], os.environ)
    offline = offline_environment()
    installed = run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--find-links",
         str(house), "leadership"],
        offline,
    )  # fmt: skip
    if "WARNING" in installed:
        raise Failed(f"the offline install on {version} warned:\n{installed}")
    return run([str(venv / "bin" / "python"), "-c", SMOKE], offline, scratch).strip()


def offline_environment() -> dict[str, str]:
    """This environment as an air-gapped install sees it: no pip configuration (files or
    variables naming an index or links), no cache, no opt-out, nothing on PYTHONPATH."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1"}
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PYTHONPATH",
                 "LEADERSHIP_NO_EXTENSIONS"):  # fmt: skip
        env.pop(name, None)
    return env


_REQUIRES = """
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    for line in wheel.read(name).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(line.split(":", 1)[1].strip().replace(" ", ""))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.dist", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where (emptied first)")
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="comma-separated X.Y")
    parser.add_argument("--check", action="store_true", help="reproducibility, offline installs")
    args = parser.parse_args(argv)
    env = environment(os.environ.get("SOURCE_DATE_EPOCH") or last_commit_time())
    pythons, missing = {}, []
    for version in args.pythons.split(","):
        python = find_python(version)
        if python is None:
            missing.append(version)
        else:
            pythons[version] = python
    if missing:
        print(f"SKIP: no interpreter for Python {', '.join(missing)}", flush=True)
        if os.environ.get("LEADERSHIP_REQUIRE_TOOLS"):
            return 1
    started = time.monotonic()
    try:
        build = build_all(ROOT, args.out.resolve(), pythons, env)
        twine_check(sorted(args.out.iterdir()), env)
        print(f"built in {time.monotonic() - started:.0f} s, twine check --strict passed:")
        for name, digest in digests(args.out).items():
            size = (args.out / name).stat().st_size
            print(f"  {name:<80} {size:>8} B  sha256 {digest[:16]}")
        if args.check:
            check(build, pythons, env)
    except Failed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


def check(build: Build, pythons: Mapping[str, Path], env: Mapping[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="leadership-dist-check-") as scratch:
        root = Path(scratch)
        again = build_all(copy_checkout(root / "elsewhere"), root / "again", pythons, env)
        first, second = digests(build.out), digests(again.out)
        differing = sorted(name for name in first if first[name] != second.get(name))
        if differing or first.keys() != second.keys():
            raise Failed(f"not reproducible: {differing or sorted(first.keys() ^ second.keys())}")
        print(f"reproducible: {len(first)} files built twice from two paths hash the same")
        print(f"  {'python':<8} {'offline install from a wheelhouse: smoke test output'}")
        for version, python in pythons.items():
            print(f"  {version:<8} {install_offline(python, build, version, root)}", flush=True)
        assert build.sdist is not None
        print(f"the unpacked sdist's quick tests: {test_unpacked(build.sdist, root)}")


def test_unpacked(sdist: Path, scratch: Path) -> str:
    """Unpack the sdist, install it in place with its test tools, run the quick subset."""
    with tarfile.open(sdist) as archive:
        archive.extractall(scratch / "unpacked", filter="data")
    (tree,) = (scratch / "unpacked").iterdir()
    venv = scratch / "sdist-venv"
    python = str(venv / "bin" / "python")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    run([sys.executable, "-m", "venv", str(venv)], env)
    run([python, "-m", "pip", "install", "--quiet", "--editable", ".[test]"], env, tree)
    output = run(
        [python, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
        {**env, "LEADERSHIP_EXPECT_COMPILED": "1"},
        tree,
    )
    return output.strip().splitlines()[-1].strip("= ")


if __name__ == "__main__":
    sys.exit(main())
