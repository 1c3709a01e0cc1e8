"""A wake pipe: how other threads wake a renewal loop sleeping in ``select()``."""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["WakePipe"]


class WakePipe:
    """A non-blocking pipe: :meth:`wake` from any thread makes ``read`` readable (the
    sleeper drains it); :meth:`close` once closes both ends, after which waking does
    nothing (never a write to a closed, maybe reused, descriptor)."""

    __slots__ = ("_lock", "_open", "_write", "read")

    def __init__(self) -> None:
        self.read, self._write = os.pipe()
        os.set_blocking(self.read, False)
        os.set_blocking(self._write, False)
        self._open = True
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:
            if self._open:
                with contextlib.suppress(BlockingIOError):  # a full pipe wakes it anyway
                    os.write(self._write, b"!")

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self.read)
                os.close(self._write)

    def forget_after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held the old one),
        then closed (the child's copies of the descriptors)."""
        self._lock = threading.Lock()
        self.close()
