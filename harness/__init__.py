"""The development harness of ``leadership``: used from a checkout, never installed.

Modules: :mod:`.cluster` (a throwaway PostgreSQL server), :mod:`.proxy` (a TCP proxy
that injects network faults), :mod:`.sql` (one-off SQL for set-up and inspection),
:mod:`.chaos` (the chaos experiment, ``python -m harness.chaos``).

:data:`CHECKOUT` is the repository root; :func:`child_env` is the environment a child
Python process needs to import ``harness`` (and this checkout's ``leadership``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CHECKOUT", "child_env"]

CHECKOUT = Path(__file__).resolve().parent.parent
"""The repository root (the directory holding ``harness/`` and ``leadership/``)."""


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with :data:`CHECKOUT` first on
    ``PYTHONPATH``, whatever the child's working directory."""
    env = dict(os.environ if base is None else base)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(CHECKOUT) + (os.pathsep + rest if rest else "")
    return env
