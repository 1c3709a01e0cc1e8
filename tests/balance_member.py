"""One member of a balancing pool, for tests/test_balance.py (a child process).

``python tests/balance_member.py CONFIG`` where CONFIG is JSON: ``dsn``, ``table``,
``member`` (the process name), ``names`` (the flags to balance), ``directory`` (where to
write), ``interval``, ``jitter`` and ``timeout`` (seconds).

It builds a group, balances the flags and witnesses each one: a
:class:`leadership.testing.Witness` per flag appends the history of that flag's
``raised()`` to ``DIRECTORY/MEMBER--FLAG.log`` as it observes it, so SIGKILL loses nothing
already seen and SIGSTOP shows as a gap. About every 50 ms it replaces
``DIRECTORY/MEMBER.json`` with its status: ``pid``, ``ready`` (``time.monotonic()`` when
``balance()`` returned), ``t`` (when written), ``held`` (the flags whose ``raised()`` is
True) and ``share`` (the group's last view of the pool, or null). SIGTERM, or the parent's
end, closes the group (releasing its flags) and ends the process with status 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import leadership
from leadership.testing import Witness

STATUS_EVERY = 0.05
"""Seconds between two status files."""
WITNESS_PAUSE = 0.001
"""Seconds between two ``raised()`` calls of a flag's witness (ten witnesses share a CPU)."""
START_FOR = 10.0
"""Seconds for which a failed start is tried again."""


def log_path(directory: Path, member: str, name: str) -> Path:
    """Where ``member`` writes the witness history of flag ``name``."""
    return directory / f"{member}--{name}.log"


def status_path(directory: Path, member: str) -> Path:
    return directory / f"{member}.json"


def write_status(path: Path, status: dict[str, object]) -> None:
    """Replace the status file at once (a reader never sees half of it)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(status))
    os.replace(partial, path)


def start(
    config: dict[str, Any], member: str, names: list[str]
) -> tuple[leadership.FlagGroup, list[leadership.Flag]]:
    """Build the group and balance the flags. A start that fails (on a loaded machine, a
    connection or a statement of the set-up can outlast the short test timeout) is tried
    again, as a supervisor would restart the process, for up to START_FOR seconds."""
    give_up = time.monotonic() + START_FOR
    while True:
        group = None
        try:
            group = (
                leadership.new_group()
                .handle(str(config["dsn"]))
                .table(str(config["table"]))
                .process(member)
                .interval(float(config["interval"]))
                .jitter(float(config["jitter"]))
                .timeout(float(config["timeout"]))
                .build()
            )
            return group, group.balance(names)
        except Exception as error:  # balance() lets the store's OutcomeUnknown through
            if group is not None:
                group.close()
            if time.monotonic() > give_up:
                raise
            logging.warning("start failed, trying again: %s", error)
            time.sleep(0.1)


def main(config: dict[str, Any]) -> int:
    directory = Path(str(config["directory"]))
    member = str(config["member"])
    names = [str(name) for name in config["names"]]
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {member} %(message)s"
    )
    parent = os.getppid()
    group, flags = start(config, member, names)
    ready = time.monotonic()
    witnesses = [Witness(log_path(directory, member, name)) for name in names]
    threads = [
        threading.Thread(
            target=witness.watch, args=(flag.raised, WITNESS_PAUSE), name=f"witness {name}"
        )
        for witness, flag, name in zip(witnesses, flags, names, strict=True)
    ]
    for thread in threads:
        thread.start()
    status = status_path(directory, member)
    try:
        while not stop.is_set() and os.getppid() == parent:
            share = group.share
            write_status(
                status,
                {
                    "pid": os.getpid(),
                    "ready": ready,
                    "t": time.monotonic(),
                    "held": [f.name for f in flags if f.raised()],
                    "share": None if share is None else asdict(share),
                },
            )
            stop.wait(STATUS_EVERY)
    finally:
        group.close()  # lowers every flag first: the witnesses see it before the release
        for witness in witnesses:
            witness.stopping = True
        for thread in threads:
            thread.join()
        for witness in witnesses:
            witness.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
