"""Running a server program as an unprivileged user when the tests run as root.

PostgreSQL and PgBouncer refuse to run as root; under root they run as ``user`` through
``setpriv`` (util-linux), optionally with a parent-death signal so that they die with
this process.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

__all__ = ["as_user", "cannot_run_as", "give_to", "owned_tempdir"]


def cannot_run_as(user: str, program: str) -> str | None:
    """Why ``program`` cannot be run as ``user`` here (when this process is root), or
    None when it can."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        return f"running as root needs setpriv (util-linux) to run {program} as {user}"
    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"running as root needs a {user!r} user to run {program}"
    return None


def as_user(user: str, pdeathsig: bool = False) -> list[str]:
    """The command prefix that runs a program as ``user`` when this process is root
    (empty otherwise); ``pdeathsig`` kills it when this process dies (set after the user
    change, which would clear it)."""
    if os.geteuid() != 0:
        return []
    command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
    if pdeathsig:
        command.append("--pdeathsig=KILL")
    return [*command, "--"]


def give_to(user: str, *paths: Path) -> None:
    """Make ``paths`` belong to ``user`` when this process is root (no-op otherwise);
    RuntimeError when there is no such user."""
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam(user)
    except KeyError:
        raise RuntimeError(f"running as root but there is no {user!r} user") from None
    for path in paths:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def owned_tempdir(prefix: str, user: str) -> Path:
    """A new temporary directory that belongs to ``user`` (see :func:`give_to`)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    give_to(user, root)
    return root
