"""End to end: ``leadership status``, ``release``, ``--help`` and the one-line errors of
every command, as real processes (``python -m leadership``) on the real PostgreSQL and
on SQLite. ``leadership run`` itself is in test_supervisor.py."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from harness.proxy import TcpProxy
from leadership import cli
from tests.conftest import MakeFlag
from tests.rows import put_row, read_row, run

TIMEOUT = 30.0
"""Bound on any one command's run time (they take well under a second when idle)."""


def environment(handle: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "LEADERSHIP_HANDLE"}
    if handle is not None:
        env["LEADERSHIP_HANDLE"] = handle
    return env


def leadership_cli(
    *args: str, handle: str | None = None, stdin: int = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m leadership ARGS`` with LEADERSHIP_HANDLE set to ``handle`` (or unset)."""
    (result,) = leadership_all([list(args)], handle=handle, stdin=stdin)
    return result


def leadership_all(
    invocations: Sequence[Sequence[str]],
    handle: str | None = None,
    stdin: int = subprocess.DEVNULL,
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``python -m leadership`` commands at the same time; their results."""
    env = environment(handle)
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "leadership", *args],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for args in invocations
    ]
    results = []
    try:
        for args, process in zip(invocations, started, strict=True):
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results.append(
                subprocess.CompletedProcess(list(args), process.returncode, stdout, stderr)
            )
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait(10)
    return results


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], status: int, *fragments: str
) -> str:
    """The command failed with ``status`` and one line on stderr containing ``fragments``."""
    shown = (
        f"{result.args}: exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert result.returncode == status, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    line = lines[0]
    # argparse reports options no command knows as the top-level parser: "leadership: ".
    assert re.match(r"leadership( [a-z]+)?: error: \S", line), shown
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


# --- help ---------------------------------------------------------------------------------


def subcommand_options() -> dict[str, list[str]]:
    """Every option string of every command, from the parser itself."""
    parser = cli.build_parser()
    (commands,) = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    return {
        name: [option for action in sub._actions for option in action.option_strings]
        for name, sub in commands.choices.items()
    }


EXPECTED_OPTIONS = {
    "run": ["--handle", "--name", "--process", "--interval", "--jitter", "--timeout",
            "--grace", "--metrics-port", "LEADERSHIP_HANDLE", "COMMAND"],
    "status": ["--handle", "--name", "--interval", "--timeout", "--json", "LEADERSHIP_HANDLE"],
    "release": ["--handle", "--name", "--interval", "--timeout", "--yes", "LEADERSHIP_HANDLE"],
    "demo": ["--workers", "--handle", "--name", "--interval", "--jitter", "--timeout"],
}  # fmt: skip


def test_help_of_every_command_lists_all_its_options() -> None:
    options = subcommand_options()
    names = [register.__name__.removeprefix("add_") for register in cli.COMMANDS]
    assert sorted(options) == sorted(names) and set(EXPECTED_OPTIONS) <= set(names)
    results = leadership_all([["--help"], *([name, "--help"] for name in names)])
    top = results[0]
    assert top.returncode == 0, top.stderr
    for name in names:
        assert name in top.stdout, f"{name} missing from leadership --help"
    for name, result in zip(names, results[1:], strict=True):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith(f"usage: leadership {name}"), result.stdout
        for option in [*options[name], *EXPECTED_OPTIONS.get(name, [])]:
            assert option in result.stdout, f"{option} missing from leadership {name} --help"


# --- user mistakes: one line, exit 2; a database that fails: one line, exit 1 ------------


def test_missing_handle_is_a_one_line_usage_error() -> None:
    results = leadership_all(
        [["run", "--name", "x", "--", "true"], ["status"], ["release", "--name", "x", "--yes"]],
        handle=None,
    )
    for result in results:
        assert_one_line_error(result, 2, "--handle", "LEADERSHIP_HANDLE")


def test_unknown_dsn_scheme_is_a_one_line_usage_error() -> None:
    handle = "mysql://app:hunter2-secret@db.example/app"
    results = leadership_all(
        [["run", "--name", "x", "--", "true"], ["status"], ["release", "--name", "x", "--yes"]],
        handle=handle,
    )
    for result in results:
        assert_one_line_error(result, 2, "mysql", "postgresql://")
        assert "hunter2-secret" not in result.stderr + result.stdout


def closed_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_server_is_one_line_exit_1_without_the_password() -> None:
    handle = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/app"
    results = leadership_all(
        [["run", "--name", "x", "--", "true"], ["status"], ["release", "--name", "x", "--yes"]],
        handle=handle,
    )
    for result in results:
        line = assert_one_line_error(result, 1, "cannot connect", "127.0.0.1")
        assert "hunter2-secret" not in result.stderr + result.stdout, line


def test_silent_server_fails_within_the_timeout(pg_dsn: str) -> None:
    parts = urlsplit(pg_dsn)
    with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
        proxy.freeze()  # connections are accepted, then nothing comes back
        handle = f"postgresql://app:hunter2-secret@127.0.0.1:{proxy.port}{parts.path}"
        started = time.monotonic()
        result = leadership_cli("status", "--timeout", "0.5", handle=handle)
        took = time.monotonic() - started
    assert_one_line_error(result, 1, "0.5")
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert took < 10, f"status took {took:.1f} s against a silent server with --timeout 0.5"


def test_grace_is_checked_against_the_lease(pg_dsn: str) -> None:
    timing = ["--interval", "1", "--jitter", "0", "--timeout", "0.1"]
    too_long, at_most, no_room, bad_timeout, accepted = leadership_all(
        [
            ["run", "--name", "x", *timing, "--grace", "0.5", "--", "true"],
            ["run", "--name", "x", *timing, "--grace", "0.31", "--", "true"],
            ["run", "--name", "x", "--interval", "1", "--jitter", "0", "--timeout", "0.4",
             "--", "true"],
            ["run", "--name", "x", "--interval", "1", "--jitter", "0", "--timeout", "0.5",
             "--", "true"],
            ["run", "--name", "x", *timing, "--grace", "0.25", "--", "true"],
        ],
        handle=pg_dsn,
    )  # fmt: skip
    # The limit: 0.9 * 1 - 1/2 * (1 + 0) - 0.1 = 0.3 s.
    assert_one_line_error(too_long, 2, "--grace", "0.3 s")
    assert_one_line_error(at_most, 2, "--grace", "0.3 s")
    assert_one_line_error(no_room, 2, "interval")
    assert_one_line_error(bad_timeout, 2, "timeout", "0.4")
    assert accepted.returncode == 0, accepted.stderr


def test_run_without_a_command_is_a_usage_error(pg_dsn: str) -> None:
    results = leadership_all(
        [["run", "--name", "x"], ["run", "--name", "x", "--"], ["run", "--", "true"]],
        handle=pg_dsn,
    )
    assert_one_line_error(results[0], 2, "command")
    assert_one_line_error(results[1], 2, "command")
    assert_one_line_error(results[2], 2, "--name")


def test_bad_option_values_are_one_line_usage_errors() -> None:
    results = leadership_all(
        [
            ["run", "--name", "x", "--interval", "-1", "--", "true"],
            ["status", "--timeout", "soon"],
            ["release"],
            ["status", "--no-such-option"],
        ],
        handle="sqlite:////nonexistent/flags.db",
    )
    for result in results:
        assert_one_line_error(result, 2)


# --- status -------------------------------------------------------------------------------


def table(output: str) -> dict[str, dict[str, str]]:
    """The rows of ``leadership status``'s table by flag name, cells by column title."""
    lines = output.strip().splitlines()
    titles = lines[0].split()
    assert titles == ["NAME", "HOLDER", "VERSION", "AGE", "LEFT", "STATE"], output
    assert lines[-1].startswith("(table "), output  # the table, schema-qualified
    rows = [line for line in lines[1:] if not line.startswith("(")]
    return {line.split()[0]: dict(zip(titles, line.split(), strict=True)) for line in rows}


def seconds_cell(cell: str) -> float:
    assert cell.endswith("s"), cell
    return float(cell[:-1])


def test_status_shows_holder_age_time_left_and_state(
    pg_dsn: str, flag_name: str, make_flag: MakeFlag
) -> None:
    live, fresh, old, gone = (
        f"{flag_name}-{suffix}" for suffix in ("live", "fresh", "old", "gone")
    )
    flag = make_flag(pg_dsn, "live-holder", name=live)
    assert flag.wait_raised(5)
    put_row(pg_dsn, fresh, "alpha", 3, age=1.0)
    put_row(pg_dsn, old, "beta", 9, age=100.0)
    put_row(pg_dsn, gone, "gamma", 4, age=0.0)
    run(pg_dsn, "UPDATE leadership_flags SET timestamp = 'epoch' WHERE name = %s", (gone,))
    # --handle instead of the environment (which names a server that does not exist).
    shown, as_json, unknown = leadership_all(
        [
            ["status", "--handle", pg_dsn],
            ["status", "--handle", pg_dsn, "--interval", "10", "--json"],
            ["status", "--handle", pg_dsn, "--name", f"{flag_name}-unknown"],
        ],
        handle=f"postgresql://nobody@127.0.0.1:{closed_port()}/none",
    )
    assert shown.returncode == 0, shown.stderr
    rows = table(shown.stdout)
    assert rows[live]["HOLDER"] == "live-holder" and rows[live]["STATE"] == "held"
    assert seconds_cell(rows[live]["AGE"]) < 5
    assert rows[fresh]["HOLDER"] == "alpha" and rows[fresh]["VERSION"] == "3"
    assert rows[fresh]["STATE"] == "held"
    assert 0.5 < seconds_cell(rows[fresh]["AGE"]) < 10
    assert 20 < seconds_cell(rows[fresh]["LEFT"]) < 29.5  # default interval 30 s
    assert rows[old]["HOLDER"] == "beta" and rows[old]["VERSION"] == "9"
    assert rows[old]["STATE"] == "expired" and rows[old]["LEFT"] == "0.0s"
    assert 99 < seconds_cell(rows[old]["AGE"]) < 120
    assert rows[gone]["STATE"] == "released" and rows[gone]["AGE"] == "-"

    assert as_json.returncode == 0, as_json.stderr
    entries = {entry["name"]: entry for entry in json.loads(as_json.stdout)}
    for entry in entries.values():
        assert set(entry) == {
            "table",
            "name",
            "holder",
            "version",
            "age",
            "left",
            "expired",
            "state",
        }
        assert entry["table"] == "public.leadership_flags"
    assert entries[fresh]["holder"] == "alpha" and entries[fresh]["version"] == 3
    assert entries[fresh]["expired"] is False and entries[fresh]["state"] == "held"
    assert 0.5 < entries[fresh]["age"] < 9.5  # on the database clock, --interval 10
    assert abs(entries[fresh]["age"] + entries[fresh]["left"] - 10) < 0.01
    assert entries[old]["expired"] is True and entries[old]["state"] == "expired"
    assert entries[old]["left"] == 0
    assert entries[gone]["expired"] is True and entries[gone]["state"] == "released"
    assert entries[gone]["age"] is None
    assert entries[live]["holder"] == "live-holder"

    assert_one_line_error(unknown, 2, f"{flag_name}-unknown")


def test_status_on_sqlite_and_an_empty_table(tmp_path: Path, flag_name: str) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()  # a file without the table
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    filled = f"sqlite:///{tmp_path / 'filled.db'}"
    put_row(filled, flag_name, "alpha", 2, age=50.0)
    nothing, nothing_json = leadership_all([["status"], ["status", "--json"]], handle=empty)
    one, one_json = leadership_all(
        [["status", "--name", flag_name, "--interval", "60"], ["status", "--json"]],
        handle=filled,
    )
    assert nothing.returncode == 0 and "(no flags)" in nothing.stdout, nothing
    assert nothing_json.returncode == 0 and json.loads(nothing_json.stdout) == []
    assert one.returncode == 0, one.stderr
    row = table(one.stdout)[flag_name]
    assert row["STATE"] == "held" and 5 < seconds_cell(row["LEFT"]) < 10.5
    (entry,) = json.loads(one_json.stdout)  # default interval 30 s: expired
    assert entry["holder"] == "alpha" and entry["state"] == "expired" and entry["expired"]


# --- release ------------------------------------------------------------------------------


def test_release_without_yes_refuses_when_stdin_is_not_a_terminal(
    pg_dsn: str, flag_name: str
) -> None:
    put_row(pg_dsn, flag_name, "stuck", 5, age=0.0)
    result = leadership_cli("release", "--name", flag_name, handle=pg_dsn)
    assert_one_line_error(result, 2, "--yes")
    row = read_row(pg_dsn, flag_name)
    assert row is not None and row.holder == "stuck" and row.version == 5 and row.age < 30


def test_release_of_an_unknown_flag_fails(pg_dsn: str, flag_name: str) -> None:
    result = leadership_cli("release", "--name", flag_name, "--yes", handle=pg_dsn)
    assert_one_line_error(result, 2, "no flag named", flag_name)  # a user mistake
    assert read_row(pg_dsn, flag_name) is None


def test_release_wakes_a_waiting_process_at_once(
    any_dsn: str, flag_name: str, make_flag: MakeFlag
) -> None:
    """A row held by a dead holder: instead of the 5 s left on its lease, a waiting
    process takes the flag as soon as ``release --yes`` expires the row (NOTIFY on
    PostgreSQL, the interval/20 poll on SQLite)."""
    interval = 5.0
    put_row(any_dsn, flag_name, "stuck", 5, age=0.0)
    written = time.monotonic()
    standby = make_flag(any_dsn, "standby", interval=interval, timeout=0.3)
    assert not standby.wait_raised(0.3), "raised while the row was fresh"
    raised_at: list[float] = []

    def watch() -> None:
        if standby.wait_raised(interval):
            raised_at.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    asked = time.monotonic()
    result = leadership_cli("release", "--name", flag_name, "--yes", handle=any_dsn)
    returned = time.monotonic()
    watcher.join(interval + 1)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"released flag {flag_name!r} (was held by 'stuck', version 5)"
    ), result.stdout
    assert raised_at, "never raised after the release"
    assert raised_at[0] - returned < 1.0, f"raised {raised_at[0] - returned:.3f} s after it"
    assert raised_at[0] - written < interval - 0.5, "raised only once the lease expired anyway"
    row = read_row(any_dsn, flag_name)
    assert row is not None and row.holder == "standby" and row.version >= 7
    print(
        f"raised {(raised_at[0] - asked) * 1000:.0f} ms after starting release --yes "
        f"(which took {(returned - asked) * 1000:.0f} ms)"
    )


def test_release_asks_for_confirmation_on_a_terminal(pg_dsn: str, flag_name: str) -> None:
    """With a terminal on standard input and no --yes: 'n' keeps the row, 'y' releases it."""
    put_row(pg_dsn, flag_name, "stuck", 5, age=0.0)
    for answer, status in (("n", 1), ("y", 0)):
        controller, terminal = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "leadership", "release", "--name", flag_name],
                env=environment(pg_dsn),
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,  # input() may write its prompt to stderr
                start_new_session=True,
            )
            os.close(terminal)
            shown = b""
            deadline = time.monotonic() + TIMEOUT
            while b"[y/N]" not in shown:
                assert time.monotonic() < deadline and process.poll() is None, shown
                if select.select([controller], [], [], 0.1)[0]:
                    shown += os.read(controller, 4096)
            assert b"'stuck'" in shown and b"version 5" in shown, shown
            os.write(controller, f"{answer}\n".encode())
            assert process.wait(TIMEOUT) == status, shown
        finally:
            os.close(controller)
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait(10)
        row = read_row(pg_dsn, flag_name)
        assert row is not None
        if answer == "n":
            assert row.version == 5 and row.age < 30, row
        else:
            assert row.version == 6 and row.age > 1e8, row


# --- failures outside the database: still one line, never a traceback --------------------


def test_unusable_metrics_port_is_a_one_line_error(pg_dsn: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken, out_of_range = leadership_all(
            [
                ["run", "--name", "x", "--metrics-port", str(port), "--", "true"],
                ["run", "--name", "x", "--metrics-port", "70000", "--", "true"],
            ],
            handle=pg_dsn,
        )
    assert taken.returncode != 0
    assert_one_line_error(taken, taken.returncode, str(port))
    assert_one_line_error(out_of_range, 2, "--metrics-port")


def test_command_that_cannot_start_is_one_line_before_contending(
    pg_dsn: str, flag_name: str, tmp_path: Path
) -> None:
    """Exit status as env(1), timeout(1) and shells have it: 127 not found, 126 not
    runnable; known before contending, so the flag is never taken for nothing."""
    missing = str(tmp_path / "no-such-command")
    not_runnable = tmp_path / "not-executable"
    not_runnable.write_text("#!/bin/sh\n")
    first, second = f"{flag_name}-1", f"{flag_name}-2"
    not_found, cannot_run = leadership_all(
        [
            ["run", "--name", first, "--interval", "2", "--timeout", "0.3", "--", missing],
            ["run", "--name", second, "--interval", "2", "--timeout", "0.3", "--",
             str(not_runnable)],
        ],
        handle=pg_dsn,
    )  # fmt: skip
    for result, status, name in ((not_found, 127, first), (cannot_run, 126, second)):
        assert "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "not" in errors[0], result.stderr
        assert result.returncode == status, result.stderr
        assert read_row(pg_dsn, name) is None, f"flag {name} was contended for"
