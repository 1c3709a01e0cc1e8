"""A kernel-armed dead man's switch: SIGKILL this process at a deadline unless re-armed.

``leadership run`` arms it at the end of the lease (plus a slack inside the safety
margin) and re-arms it after every renewal. The kernel delivers the SIGKILL even to a
stopped or frozen process, and the child, started with ``PR_SET_PDEATHSIG``, dies
with it: a paused supervisor cannot leave its child running into the next holder's
term. Linux only; elsewhere ``DeadMan.available`` is False and arming does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import time

__all__ = ["DeadMan", "die_with_parent"]

SIGEV_SIGNAL = 0
TIMER_ABSTIME = 1
PR_SET_PDEATHSIG = 1
CLOCK_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", 7)


class _SigEvent(ctypes.Structure):
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("padding", ctypes.c_int * 12),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    # This process's symbols first (glibc 2.34 and later have timer_create in libc):
    # find_library runs ldconfig in a subprocess.
    lib = _with_timers(None)
    return lib if lib is not None else _with_timers(ctypes.util.find_library("rt"))


def _with_timers(name: str | None) -> ctypes.CDLL | None:
    """The library ``name`` (None: this process) if it has ``timer_create``."""
    try:
        lib = ctypes.CDLL(name, use_errno=True)
        lib.timer_create  # noqa: B018 - probe for the symbol
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class DeadMan:
    """A POSIX timer on the lease clock (CLOCK_BOOTTIME) that sends SIGKILL to this process."""

    def __init__(self) -> None:
        self._timer = ctypes.c_void_p()
        self.available = False
        if _LIBC is None:
            return
        event = _SigEvent()
        event.sigev_notify = SIGEV_SIGNAL
        event.sigev_signo = signal.SIGKILL
        if _LIBC.timer_create(CLOCK_BOOTTIME, ctypes.byref(event), ctypes.byref(self._timer)) == 0:
            self.available = True

    def arm(self, deadline_ns: int) -> None:
        """Kill this process at ``deadline_ns`` on the lease clock unless re-armed or disarmed."""
        self._set(max(deadline_ns, 1))

    def disarm(self) -> None:
        self._set(0)

    def _set(self, deadline_ns: int) -> None:
        if not self.available or _LIBC is None:
            return
        spec = _ITimerSpec()
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        flags = TIMER_ABSTIME if deadline_ns else 0
        if _LIBC.timer_settime(self._timer, flags, ctypes.byref(spec), None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timer_settime failed (errno {errno})")

    def close(self) -> None:
        if self.available and _LIBC is not None:
            self.disarm()
            _LIBC.timer_delete(self._timer)
            self.available = False


def die_with_parent() -> None:
    """In a child before exec: ask the kernel for SIGKILL when the parent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
