"""Eight processes increment a PostgreSQL counter non-atomically, only while raised().

Each increment reads the counter, sleeps a few ms and writes the value read plus one,
so two processes raised at once would lose updates. Holders hand the flag over by
``close()`` after a few increments. The final counter must equal the sum of the
increments the processes report: exactly.

This file is also the worker: ``python tests/test_contention.py DSN FLAG TABLE ...``.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WORKERS = 8
SECONDS = 6.0  # over 100 tenures and 800 increments on a loaded 2-core machine
INTERVAL, JITTER, TIMEOUT = 1.0, 0.2, 0.3


def worker(dsn: str, flag: str, table: str, process: str, seconds: float, out: Path) -> None:
    """Hold the flag over and over; while raised, increment the counter a few times."""
    import pg8000.dbapi

    import leadership
    from leadership.dsn import pg8000_options

    conn = pg8000.dbapi.connect(**pg8000_options(dsn, timeout=10))
    conn.autocommit = True
    cursor = conn.cursor()
    increments = tenures = 0
    deadline = time.monotonic() + seconds
    term = 0
    while time.monotonic() < deadline:
        builder = leadership.new_flag().handle(dsn).name(flag).process(f"{process}-{term}")
        builder.interval(INTERVAL).jitter(JITTER).timeout(TIMEOUT)
        term += 1
        try:
            f = builder.build()
        except Exception:
            # A timeout on a loaded machine (not this test's subject): StoreUnavailable, or
            # the driver's own error when the first statement on the new connection times
            # out (build() does not wrap that one yet).
            time.sleep(0.05)
            continue
        try:
            while not f.raised() and time.monotonic() < deadline:
                time.sleep(0.001)
            if f.raised():
                tenures += 1
            for _ in range(random.randint(3, 12)):
                if not f.raised():
                    break
                cursor.execute(f"SELECT value FROM {table} WHERE id = 1")
                value = cursor.fetchall()[0][0]
                time.sleep(random.uniform(0.002, 0.006))
                if not f.raised():
                    break
                cursor.execute(f"UPDATE {table} SET value = %s WHERE id = 1", (value + 1,))
                increments += 1
        finally:
            f.close()
        time.sleep(random.uniform(0.0, 0.05))
    conn.close()
    out.write_text(json.dumps({"increments": increments, "tenures": tenures}))


@pytest.mark.postgres
@pytest.mark.slow
def test_counter_is_exact_under_contention(pg_dsn: str, flag_name: str, tmp_path: Path) -> None:
    from .conftest import execute

    table = f"counter_{uuid.uuid4().hex[:10]}"
    execute(pg_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY, value bigint NOT NULL)")
    execute(pg_dsn, f"INSERT INTO {table} VALUES (1, 0)")
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(WORKERS):
            command = [sys.executable, __file__, pg_dsn, flag_name, table, f"w{i}"]
            command += [str(SECONDS), str(tmp_path / f"w{i}.json")]
            children.append(subprocess.Popen(command))
        for child in children:
            assert child.wait(timeout=SECONDS + 60) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        with contextlib.suppress(Exception):
            total = execute(pg_dsn, f"SELECT value FROM {table} WHERE id = 1")[0][0]
        execute(pg_dsn, f"DROP TABLE IF EXISTS {table}")
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(WORKERS)]
    done = sum(r["increments"] for r in results)
    assert total == done, results
    assert done >= 100, results
    assert sum(r["increments"] > 0 for r in results) >= WORKERS // 2, results


if __name__ == "__main__":
    dsn, flag, table, process, seconds, out = sys.argv[1:7]
    worker(dsn, flag, table, process, float(seconds), Path(out))
