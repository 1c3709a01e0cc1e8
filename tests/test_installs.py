"""Installs in restricted environments: what each path yields, and what the user is told.

Each test makes a fresh virtual environment and installs offline, as an air-gapped host
does: pip's machine configuration switched off (``PIP_CONFIG_FILE=/dev/null``), no cache,
``--no-index`` with a local wheelhouse of the runtime dependencies (downloaded once per
session, the only step that uses the network). Each asserts the implementation obtained and
the warnings shown, in pip's default output and at the user's import.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import leadership
from harness.dist import offline_environment
from tests.conftest import require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
VERSION = leadership.__version__
FALLBACK = f"WARNING: leadership {VERSION}: building the pure-Python implementation, because"
IMPORT_WARNING = "RuntimeWarning: leadership: using the pure-Python lease clock"
APP = "import leadership  # the user's import\nprint(leadership.IMPLEMENTATION)\n"


def setuptools_floor() -> str:
    """The lowest setuptools pyproject.toml allows: the one these installs build with."""
    found = re.search(r'"setuptools>=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert found, "pyproject.toml's build requirements name no setuptools floor"
    return found.group(1)


def dependencies() -> list[str]:
    """The runtime requirements, as the installed metadata states them."""
    requires = importlib.metadata.requires("leadership") or []
    return [entry for entry in requires if "extra ==" not in entry]


def offline() -> dict[str, str]:
    """The environment of an offline install (harness.dist's, which checks the wheels)."""
    return offline_environment()


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run ``command``; its combined output, or a failure that shows it."""
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env=env if env is not None else offline(),
        cwd=cwd,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return output


@pytest.fixture(scope="session")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, built from this checkout as a release is (with build isolation)."""
    out = tmp_path_factory.mktemp("sdist")
    try:
        run(
            [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
            os.environ.copy(),
        )
    except AssertionError as error:
        require(
            f"cannot build the sdist (no network for its build requirements?): {error}",
            "LEADERSHIP_REQUIRE_TOOLS",
        )
    (built,) = out.glob("leadership-*.tar.gz")
    return built


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime dependencies and the lowest allowed setuptools, as ``pip download`` makes."""
    house = tmp_path_factory.mktemp("wheelhouse")
    wanted = [f"setuptools=={setuptools_floor()}", *dependencies()]
    try:
        run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(house), *wanted],
            os.environ.copy(),
        )
    except AssertionError as error:
        require(
            f"cannot download the wheelhouse (no network?): {error}", "LEADERSHIP_REQUIRE_TOOLS"
        )
    return house


@dataclass
class Venv:
    """A fresh virtual environment and what runs in it."""

    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def pip(self, *arguments: str, env: dict[str, str] | None = None) -> str:
        return run([self.python, "-m", "pip", "--disable-pip-version-check", *arguments], env)

    def app(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The user's program, run from an empty directory (no checkout on its path)."""
        script = self.path / "app.py"
        script.write_text(APP)
        return subprocess.run(
            [self.python, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env if env is not None else offline(),
            cwd=self.path,
        )


@pytest.fixture
def build_venv(tmp_path: Path, wheelhouse: Path) -> Iterator[Venv]:
    """A venv holding setuptools (the floor), pg8000 and prometheus-client; no Cython."""
    venv = Venv(tmp_path / "venv")
    run([sys.executable, "-m", "venv", str(venv.path)])
    venv.pip(
        "install",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        f"setuptools=={setuptools_floor()}",
        *dependencies(),
    )
    cython = subprocess.run([venv.python, "-c", "import Cython"], capture_output=True)
    assert cython.returncode != 0, "the build venv must not have Cython"
    yield venv


def without_compiler(tmp_path: Path) -> dict[str, str]:
    """An environment in which no C compiler can be found (PATH is an empty directory)."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return {**offline(), "PATH": str(empty)}


def test_sdist_builds_compiled_without_cython_or_build_isolation(
    build_venv: Venv, sdist: Path
) -> None:
    output = build_venv.pip("install", "--no-index", "--no-build-isolation", str(sdist))
    assert "WARNING" not in output, output
    assert re.search(rf"leadership-{VERSION}-cp3\d+-cp3\d+-linux_\w+\.whl", output), output
    app = build_venv.app()
    assert (app.returncode, app.stdout.strip(), app.stderr) == (0, "compiled", "")


def test_sdist_without_a_compiler_installs_pure_and_says_so(
    build_venv: Venv, sdist: Path, tmp_path: Path
) -> None:
    output = build_venv.pip(
        "install", "--no-index", "--no-build-isolation", str(sdist), env=without_compiler(tmp_path)
    )
    # pip's default output (no -v): the one warning, its cause, and the command that fixes it.
    assert f"{FALLBACK} no C compiler was found" in output, output
    assert "pip install --no-cache-dir --force-reinstall --no-deps" in output, output
    assert output.count(FALLBACK) == 1, output
    assert f"leadership-{VERSION}-py3-none-any.whl" in output, "the pure wheel is tagged pure"
    app = build_venv.app()
    assert app.returncode == 0 and app.stdout.strip() == "python", app
    # The import warning names the user's own import line and the recorded cause.
    assert app.stderr.startswith(f"{build_venv.path / 'app.py'}:1: {IMPORT_WARNING}"), app.stderr
    assert "no C compiler was found" in app.stderr


def test_the_advised_command_replaces_a_cached_pure_build(
    build_venv: Venv, sdist: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    """pip caches the pure wheel it built from an index's (here: find-links') sdist; once a
    compiler is there, a plain reinstall hands it back, and the command the warning gives
    (with --no-cache-dir) gets the compiled one."""
    links = tmp_path / "links"
    links.mkdir()
    (links / sdist.name).symlink_to(sdist)

    def with_cache(env: dict[str, str]) -> dict[str, str]:
        env = {**env, "PIP_CACHE_DIR": str(tmp_path / "pip-cache")}
        del env["PIP_NO_CACHE_DIR"]
        return env

    install = ["install", "--no-index", "--no-build-isolation", "--find-links", str(links)]
    build_venv.pip(*install, "leadership", env=with_cache(without_compiler(tmp_path)))
    again = build_venv.pip(
        *install, "--force-reinstall", "--no-deps", "leadership", env=with_cache(offline())
    )
    assert f"Using cached leadership-{VERSION}-py3-none-any.whl" in again, again
    assert build_venv.app().stdout.strip() == "python"
    advised = build_venv.pip(
        *install,
        "--no-cache-dir",
        "--force-reinstall",
        "--no-deps",
        "leadership",
        env=with_cache(offline()),
    )
    app = build_venv.app()
    assert (app.stdout.strip(), app.stderr) == ("compiled", ""), advised


def test_deliberate_pure_build_is_silent(build_venv: Venv, sdist: Path) -> None:
    env = {**offline(), "LEADERSHIP_NO_EXTENSIONS": "1"}
    output = build_venv.pip("install", "--no-index", "--no-build-isolation", str(sdist), env=env)
    assert "WARNING" not in output, output
    assert f"leadership-{VERSION}-py3-none-any.whl" in output, output
    app = build_venv.app()  # the variable is not set at run time: the build recorded it
    assert (app.returncode, app.stdout.strip(), app.stderr) == (0, "python", "")


def test_an_undocumented_opt_out_value_does_not_count(build_venv: Venv, sdist: Path) -> None:
    env = {**offline(), "LEADERSHIP_NO_EXTENSIONS": "0"}
    build_venv.pip("install", "--no-index", "--no-build-isolation", str(sdist), env=env)
    assert build_venv.app(env).stdout.strip() == "compiled"


def test_wheelhouse_install_offline_is_compiled(
    tmp_path: Path, build_venv: Venv, sdist: Path, wheelhouse: Path
) -> None:
    """The usual air-gapped route: ``pip download`` of the dependencies plus our wheel."""
    house = tmp_path / "house"
    house.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("setuptools"):
            (house / wheel.name).symlink_to(wheel)
    build_venv.pip(
        "wheel",
        "--no-index",
        "--no-build-isolation",
        "--no-deps",
        "--wheel-dir",
        str(house),
        str(sdist),
    )
    target = Venv(tmp_path / "target")
    run([sys.executable, "-m", "venv", str(target.path)])
    output = target.pip("install", "--no-index", "--find-links", str(house), "leadership")
    assert "WARNING" not in output, output
    app = target.app()
    assert (app.returncode, app.stdout.strip(), app.stderr) == (0, "compiled", "")


def test_the_sdist_holds_the_generated_c_and_what_the_tests_need(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "leadership/_clock.c",
        "leadership/_clock.pyx",
        "LICENSE",
        "tests/conftest.py",
        "tests/run",
        "harness/chaos/__main__.py",
        "benchmarks/run.py",
        "build_backend/leadership_build.py",
        "setup.py",
    ):
        assert needed in names, f"{needed} is missing from the sdist"
    assert not [name for name in names if name.endswith((".so", ".pyc"))], names


def test_editable_installs_record_their_choice_in_the_tree(tmp_path: Path) -> None:
    """``pip install -e``: the record lives in the source tree, and a pure build removes an
    extension built there before (else it would still be imported)."""
    from harness.dist import copy_checkout

    tree = copy_checkout(tmp_path / "checkout")
    venv = Venv(tmp_path / "venv")
    run([sys.executable, "-m", "venv", str(venv.path)])
    online = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    online.pop("LEADERSHIP_NO_EXTENSIONS", None)
    venv.pip("install", "--editable", str(tree), env=online)
    assert venv.app().stdout.strip() == "compiled"
    venv.pip("install", "--editable", str(tree), env={**online, "LEADERSHIP_NO_EXTENSIONS": "1"})
    assert (tree / "leadership" / "_pure_build.py").exists()
    assert not list((tree / "leadership").glob("_clock.*.so"))
    app = venv.app()
    assert (app.stdout.strip(), app.stderr) == ("python", ""), "a deliberate build is silent"
    venv.pip("install", "--editable", str(tree), env=online)
    assert not (tree / "leadership" / "_pure_build.py").exists()
    app = venv.app()
    assert (app.stdout.strip(), app.stderr) == ("compiled", "")
