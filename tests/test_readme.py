"""Every code block of README.md runs here: a wrong sample fails the build.

Blocks are found by their fences (```python, ```sh, ```sql, ```yaml; any other language
fails ``test_every_block_has_a_runner``). A test's id names the README line of the block's
opening fence (``line41-python``), and a block is written to a file padded with blank
lines so that tracebacks and bash errors cite README line numbers.

- ``python``: a fresh interpreter (``sys.executable``) in an empty temporary directory.
- ``sh``: ``bash -euo pipefail``, the venv's ``bin`` first on ``PATH``, in an empty
  temporary directory holding a ``.venv`` link to the venv, as the set-up leaves it. The
  install-and-demo command runs in a fresh ``git clone`` of this checkout (``slow``; pip's
  cache is reused), the benchmark command from the repository root (``slow``). The
  README's test command, ``bash tests/run``, is skipped: it is what CI runs, this test
  included.
- ``sql``: the grants for a role without CREATE, checked with such a role.
- ``text``: output the README shows, compared with what the code prints (the build's
  fallback warning, from the build backend's own function).
- ``yaml``: the alert rule is parsed and its metric names are checked against what the
  package exports.

Each process runs in its own session, bounded by a timeout; on timeout its whole process
group is killed. Relative SQLite paths need no substitution (the working directory is a
fresh temporary directory); the PostgreSQL placeholders are replaced as ``substitutions``
says, and nothing else is edited.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pg8000.dbapi
import pytest
from prometheus_client import CollectorRegistry

import leadership
from leadership.admin import read_flags, release_flag
from tests.conftest import BASE_DSN, execute

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, not the base's
VENV = VENV_BIN.parent

PYTHON_TIMEOUT = 60.0
SHELL_TIMEOUT = 120.0
CLONE_TIMEOUT = 900.0
BENCHMARK_TIMEOUT = 300.0

RECURSIVE = "bash tests/run"
"""The README's test command: what CI runs, this file included. Never run from here."""

CLONE = "python3 -m venv .venv"
"""In the install-and-demo block: run in a fresh clone of this checkout."""

FROM_ROOT = "benchmarks/run.py"
"""In the benchmark block: run from the repository root (the benchmarks are not installed)."""

PG_DSN = "postgresql://app@db.example/app"
PG8000_ARGUMENTS = 'user="app", host="db.example", database="app"'
ROLE = "TO app;"


def substitutions(dsn: str, role: str = "app") -> dict[str, str]:
    """The whole substitution table: README placeholder -> what runs instead.

    ``dsn`` is the test database (the ``pg_dsn`` fixture); ``role`` the role made for the
    SQL block's test."""
    parts = urlsplit(dsn)
    arguments = [f"user={parts.username or 'postgres'!r}"]
    if parts.password:
        arguments.append(f"password={parts.password!r}")
    arguments += [
        f"host={parts.hostname or 'localhost'!r}",
        f"port={parts.port or 5432}",
        f"database={parts.path.lstrip('/')!r}",
    ]
    return {
        PG_DSN: dsn,
        PG8000_ARGUMENTS: ", ".join(arguments),
        ROLE: f'TO "{role}";',
    }


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    line: int  # README line of the opening fence
    language: str
    text: str

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.language}"

    @property
    def uses_postgres(self) -> bool:
        return PG_DSN in self.text or FROM_ROOT in self.text or self.language == "sql"

    def substituted(self, dsn: str | None, role: str = "app") -> str:
        """The text with the placeholders replaced, padded so that its line N is README
        line N."""
        text = self.text
        if dsn is not None:
            for placeholder, value in substitutions(dsn, role).items():
                text = text.replace(placeholder, value)
        assert "db.example" not in text, (
            f"README line {self.line}: a placeholder the substitution table does not know"
        )
        return "\n" * self.line + text


FENCE = re.compile(r"^```(\S*)\s*$")


def readme_blocks() -> list[Block]:
    """The README's fenced code blocks, in order."""
    blocks: list[Block] = []
    opened: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if opened is None:
            match = FENCE.match(line)
            if match:
                opened, body = (number, match.group(1)), []
        elif line.rstrip() == "```":
            blocks.append(Block(opened[0], opened[1], "\n".join(body) + "\n"))
            opened = None
        else:
            body.append(line)
    if opened is not None:
        raise ValueError(f"README.md: the fence of line {opened[0]} is never closed")
    return blocks


BLOCKS = readme_blocks()


def params(language: str, marks: Callable[[Block], list[pytest.MarkDecorator]]) -> list[object]:
    return [
        pytest.param(block, id=block.id, marks=marks(block))
        for block in BLOCKS
        if block.language == language
    ]


def postgres_marks(block: Block) -> list[pytest.MarkDecorator]:
    return [pytest.mark.postgres] if block.uses_postgres else []


def shell_marks(block: Block) -> list[pytest.MarkDecorator]:
    if block.text.strip() == RECURSIVE:
        return [
            pytest.mark.skip(
                reason=f"README line {block.line}: `{RECURSIVE}` is what CI runs, this test "
                "included: running it here would recurse"
            )
        ]
    marks = postgres_marks(block)
    if CLONE in block.text:
        marks.append(pytest.mark.slow)
    if FROM_ROOT in block.text:
        # The benchmark gate runs this very command (plus --json): twice would cost ~20 s.
        marks.append(
            pytest.mark.skip(
                reason=f"README line {block.line}: run by tests/test_benchmarks_gate.py, "
                "which checks its command against this block"
            )
        )
    return marks


def run_bounded(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a session of its own; fail the test, after killing the whole process
    group, when it takes longer than ``timeout`` seconds. Leftover group members are
    killed either way."""
    child = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        pytest.fail(f"{what} did not finish within {timeout:g} s\n{shown(out, err)}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


def shown(out: str, err: str) -> str:
    return f"--- stdout:\n{out[-6000:]}\n--- stderr:\n{err[-6000:]}"


def environment() -> dict[str, str]:
    """This environment, the venv's bin first on PATH, without a handle to inherit."""
    env = {k: v for k, v in os.environ.items() if k not in ("LEADERSHIP_HANDLE", "PYTHONPATH")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def workspace(tmp_path: Path) -> Path:
    """An empty working directory with ``.venv`` linked to the venv, as after the set-up."""
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(VENV, target_is_directory=True)
    return work


def check_ran(block: Block, done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, (
        f"README line {block.line} ({block.language}) exited with status {done.returncode}\n"
        f"{shown(done.stdout, done.stderr)}"
    )


# Set-up and checks of particular Python blocks, each found by a text only it contains.


def pg_invoices(dsn: str) -> None:
    execute(dsn, "DROP TABLE IF EXISTS invoices")
    execute(
        dsn,
        "CREATE TABLE invoices (id int PRIMARY KEY, sent boolean NOT NULL DEFAULT false, "
        "fence bigint)",
    )
    execute(dsn, "INSERT INTO invoices (id) VALUES (41), (42)")


def pg_invoices_fenced(dsn: str) -> None:
    """Both drivers' writes were committed, under one term's token."""
    rows = execute(dsn, "SELECT id, sent, fence FROM invoices ORDER BY id")
    assert [(id_, sent) for id_, sent, _ in rows] == [(41, True), (42, True)], (
        f"a fenced write is missing (41: pg8000.dbapi, 42: psycopg): {rows}"
    )
    version = execute(dsn, "SELECT version FROM leadership_flags WHERE name = 'invoicing'")[0][0]
    fences = {fence for _, _, fence in rows}
    assert len(fences) == 1, f"both writes happened in one term: {rows}"
    (fence,) = fences
    assert 1 <= fence <= version + 1, f"token {fence} for flag row version {version}"
    execute(dsn, "DROP TABLE invoices")


def sqlite_invoices(work: Path) -> None:
    with contextlib.closing(sqlite3.connect(work / "flags.db")) as conn, conn:
        conn.execute(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, sent INTEGER NOT NULL DEFAULT 0, "
            "fence INTEGER)"
        )
        conn.execute("INSERT INTO invoices (id) VALUES (42)")


def sqlite_invoices_fenced(work: Path) -> None:
    with contextlib.closing(sqlite3.connect(work / "flags.db")) as conn:
        rows = conn.execute("SELECT id, sent, fence FROM invoices").fetchall()
    assert len(rows) == 1 and rows[0][1] == 1 and rows[0][2] >= 1, (
        f"the fenced write is missing: {rows}"
    )


@dataclass(frozen=True)
class Hooks:
    """What the test does around one Python block: ``prepare(work, dsn)`` before it runs,
    ``verify(work, dsn, stdout)`` after it exited 0."""

    prepare: Callable[[Path, str | None], None]
    verify: Callable[[Path, str | None, str], None]


def _needs(dsn: str | None) -> str:
    assert dsn is not None, "this block uses PostgreSQL"
    return dsn


HOOKS: dict[str, Hooks] = {
    '.name("billing-scheduler")': Hooks(
        prepare=lambda work, dsn: None,
        verify=lambda work, dsn, out: check_count(out, "sent invoice", 100),
    ),
    "pg8000.dbapi.connect(": Hooks(
        prepare=lambda work, dsn: pg_invoices(_needs(dsn)),
        verify=lambda work, dsn, out: pg_invoices_fenced(_needs(dsn)),
    ),
    "sqlite3.connect(": Hooks(
        prepare=lambda work, dsn: sqlite_invoices(work),
        verify=lambda work, dsn, out: sqlite_invoices_fenced(work),
    ),
    "wait_raised_async": Hooks(
        prepare=lambda work, dsn: None,
        verify=lambda work, dsn, out: check_count(out, "raised, in asyncio", 1),
    ),
}


def check_count(out: str, text: str, expected: int) -> None:
    assert out.count(text) == expected, f"{expected} times {text!r} expected in:\n{out}"


def hooks_of(block: Block) -> Hooks | None:
    found = [hooks for marker, hooks in HOOKS.items() if marker in block.text]
    assert len(found) <= 1, f"README line {block.line}: more than one set of hooks"
    return found[0] if found else None


@pytest.mark.parametrize("block", params("python", postgres_marks))
def test_python_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn: str | None = request.getfixturevalue("pg_dsn") if block.uses_postgres else None
    work = workspace(tmp_path)
    script = tmp_path / f"readme_line{block.line}.py"
    script.write_text(block.substituted(dsn))
    hooks = hooks_of(block)
    if hooks is not None:
        hooks.prepare(work, dsn)
    done = run_bounded(
        [sys.executable, str(script)],
        work,
        environment(),
        PYTHON_TIMEOUT,
        f"README line {block.line} (python)",
    )
    check_ran(block, done)
    if hooks is not None:
        hooks.verify(work, dsn, done.stdout)


@pytest.mark.parametrize("block", params("sh", shell_marks))
def test_shell_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn: str | None = request.getfixturevalue("pg_dsn") if block.uses_postgres else None
    env = environment()
    timeout = SHELL_TIMEOUT
    if CLONE in block.text:
        work = tmp_path / "clone"
        cloned = run_bounded(
            ["git", "clone", "--quiet", str(ROOT), str(work)],
            tmp_path,
            env,
            SHELL_TIMEOUT,
            "git clone",
        )
        assert cloned.returncode == 0, shown(cloned.stdout, cloned.stderr)
        timeout = CLONE_TIMEOUT
    elif FROM_ROOT in block.text:
        work = ROOT
        env["LEADERSHIP_TEST_DSN"] = BASE_DSN  # the benchmark makes its own database there
        timeout = BENCHMARK_TIMEOUT
    else:
        work = workspace(tmp_path)
    script = tmp_path / f"readme_line{block.line}.sh"
    script.write_text(block.substituted(dsn))
    done = run_bounded(
        ["bash", "-euo", "pipefail", str(script)],
        work,
        env,
        timeout,
        f"README line {block.line} (sh)",
    )
    check_ran(block, done)


def _dsn_for(user: str, password: str, database: str) -> str:
    """BASE_DSN's server, as ``user`` on ``database``."""
    parts = urlsplit(BASE_DSN)
    server = parts.hostname or ""
    if parts.port is not None:
        server += f":{parts.port}"
    netloc = f"{user}:{password}@{server}"
    return urlunsplit((parts.scheme, netloc, "/" + database, parts.query, parts.fragment))


def _with_database(database: str) -> str:
    parts = urlsplit(BASE_DSN)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.mark.parametrize("block", params("sql", postgres_marks))
def test_sql_block(block: Block, pg_dsn: str) -> None:
    """A role without CREATE cannot build a flag until the owner runs the block; then it
    holds, fences, lists and releases flags."""
    suffix = uuid.uuid4().hex[:10]
    role, database, password = f"readme_app_{suffix}", f"readme_sql_{suffix}", uuid.uuid4().hex
    try:
        execute(BASE_DSN, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    except Exception as error:
        pytest.skip(f"cannot create a role on the test server: {error}")
    try:
        execute(BASE_DSN, f'CREATE DATABASE "{database}"')
        as_role = _dsn_for(role, password, database)
        builder = leadership.new_flag().handle(as_role).name("jobs").interval(2).timeout(0.5)
        with pytest.raises(leadership.SchemaError, match="could not be created"):
            builder.build()  # no CREATE on the schema: the case the block is for
        statements = block.substituted(BASE_DSN, role).split(";")
        for statement in filter(str.strip, statements):
            execute(_with_database(database), statement)
        with builder.build() as flag:
            assert flag.wait_raised(5), "the role could not take the flag"
            conn = pg8000.dbapi.connect(
                user=role, password=password, host=urlsplit(BASE_DSN).hostname,
                port=urlsplit(BASE_DSN).port or 5432, database=database,
            )  # fmt: skip
            try:
                assert flag.guard(conn) == flag.token  # FOR SHARE needs UPDATE
                conn.commit()
            finally:
                conn.close()
            assert [row.holder for row in read_flags(as_role, 2, 1)] == [flag.process]
        assert release_flag(as_role, "jobs", 1) is not None
    finally:
        execute(BASE_DSN, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        execute(BASE_DSN, f'DROP ROLE IF EXISTS "{role}"')


def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every metric family and sample name a flag exports with the README's subsystems."""
    registry = CollectorRegistry()
    for subsystem in ("background_tasks", "leadership_run"):
        flag = (
            leadership.new_flag()
            .handle(f"sqlite:///{tmp_path / 'metrics.db'}")
            .name(subsystem)
            .metrics_subsystem(subsystem)
            .metrics_registerer(registry)
            .build()
        )
        flag.close()
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


METRIC = re.compile(r"\b(?:background_tasks|leadership_run)_leadership_flag_[a-z_]+")
YAML_LINE = re.compile(r"^(- |  )([a-z_]+): (.+)$")


@pytest.mark.parametrize("block", params("yaml", postgres_marks))
def test_yaml_block(block: Block, tmp_path: Path) -> None:
    """The alert rule: a list of mappings with alert, expr and for (the YAML subset it is
    written in), whose expression names metrics the package exports."""
    rules: list[dict[str, str]] = []
    for line in block.text.splitlines():
        match = YAML_LINE.match(line)
        assert match, f"README line {block.line}: not a `key: value` line: {line!r}"
        if match.group(1) == "- ":
            rules.append({})
        assert rules, f"README line {block.line}: a key before the first list item"
        rules[-1][match.group(2)] = match.group(3)
    assert rules and all(set(rule) == {"alert", "expr", "for"} for rule in rules), rules
    exported = exported_metric_names(tmp_path)
    for rule in rules:
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule
        named = METRIC.findall(rule["expr"])
        assert named and set(named) <= exported, f"{named} not all in {sorted(exported)}"


def test_every_metric_the_readme_names_is_exported(tmp_path: Path) -> None:
    named = set(METRIC.findall(README.read_text()))
    assert len(named) >= 5, named
    missing = named - exported_metric_names(tmp_path)
    assert not missing, f"named in README.md but not exported: {sorted(missing)}"


RUNNERS = ("python", "sh", "sql", "text", "yaml")


def shown_outputs() -> list[str]:
    """What the code prints, for each output the README shows."""
    sys.path.insert(0, str(ROOT / "build_backend"))
    try:
        import leadership_build
    finally:
        sys.path.remove(str(ROOT / "build_backend"))
    return [leadership_build.fallback_warning("no C compiler was found (looked for 'gcc')")]


@pytest.mark.parametrize("block", params("text", lambda block: []))
def test_text_block(block: Block) -> None:
    assert block.text in shown_outputs(), (
        f"README line {block.line}: this output is not what the code prints:\n{block.text}"
    )


def test_every_block_has_a_runner() -> None:
    """No block escapes: each one's language is run by a test above."""
    untested = [block.id for block in BLOCKS if block.language not in RUNNERS]
    assert not untested, f"README blocks no test runs (give them a language of {RUNNERS})"


def test_every_special_case_matches_its_blocks() -> None:
    """The table entries, the hooks and the special places are each used, so none
    silently stops applying when the README changes."""
    texts = [block.text for block in BLOCKS]
    for placeholder in substitutions("postgresql://u@h/d"):
        assert any(placeholder in text for text in texts), f"unused placeholder {placeholder!r}"
    for marker in HOOKS:
        assert sum(marker in text for text in texts) == 1, f"hooks {marker!r}: not one block"
    assert sum(text.strip() == RECURSIVE for text in texts) == 1
    for special in (CLONE, FROM_ROOT):
        assert sum(special in text for text in texts) == 1, f"{special!r}: not one block"
