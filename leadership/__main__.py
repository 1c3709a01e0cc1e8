"""``python -m leadership``: the command line (see :mod:`leadership.cli`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
