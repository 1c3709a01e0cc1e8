"""Opt-in: close this process's flags on SIGTERM and SIGINT, then let the signal go on.

Docker, Kubernetes and systemd stop a process with SIGTERM, whose default action ends a
Python process without running ``atexit``: without this, the next leader waits for the
lease to expire on every deploy.
"""

from __future__ import annotations

import os
import threading

from .deferred import IMPORTING
from .errors import ConfigurationError
from .flag import close_all

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import FrameType
    from typing import Any

__all__ = ["close_on_signals"]

CLOSE_WAIT = 5.0
"""Seconds a signal handler waits for the flags' release before passing the signal on."""

_previous: dict[int, Any] = {}  # signal number -> the handler ours replaced


def close_on_signals(signals: Iterable[int] | None = None) -> None:
    """On each of ``signals`` (default: SIGTERM and SIGINT), lower and release every open
    flag of this process, then hand the signal to the handler installed before (idempotent).

    The previous handler then runs as it would have: Python's SIGINT handler raises
    KeyboardInterrupt; a default action ends the process with the signal's status (the
    handler restores it and sends the signal again); a Python handler is called. A
    signal set to be ignored is left alone. Flags closed this way stay closed.

    Call it from the main thread, where Python runs signal handlers; elsewhere it raises
    ConfigurationError. The release waits up to ``CLOSE_WAIT`` seconds (it gives up if the
    interrupted code holds a lock it needs: the flags are lowered anyway and their rows
    expire on their own).
    """
    with IMPORTING:  # here, not with the package: signal's enums take milliseconds to build
        import signal

    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError(
            "close_on_signals",
            "must be called from the main thread: Python runs signal handlers only there",
        )
    if signals is None:
        signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        current = signal.getsignal(number)
        if current is _close_then_pass_on or current == signal.SIG_IGN:
            continue
        _previous[number] = current
        signal.signal(number, _close_then_pass_on)


def _close_then_pass_on(number: int, frame: FrameType | None) -> None:
    import signal  # imported already, by close_on_signals, which installed this handler

    close_all(CLOSE_WAIT)
    previous = _previous.get(number, signal.SIG_DFL)
    if callable(previous):
        previous(number, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(number, signal.SIG_DFL)  # the default action (or one installed from C)
    os.kill(os.getpid(), number)
