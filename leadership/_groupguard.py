"""Kill a process group when the process supervising it dies (stdlib only, run as a script).

Usage: ``python -I -S _groupguard.py FD``. Reads the pipe ``FD``, whose write end only
the supervisor holds, until end of file. The supervisor writes the group's id as a
line once the command started, and ``done`` when it ends normally. End of file without
``done`` means the supervisor died (for instance killed by its dead man's switch while
frozen): SIGKILL the whole group, so no grandchild of the command outlives the lease.
"""

import contextlib
import os
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the supervisor's job
    fd = int(sys.argv[1])
    received = b""
    while chunk := os.read(fd, 64):
        received += chunk
    lines = received.split()
    if b"done" in lines or not lines:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
        os.killpg(int(lines[0]), signal.SIGKILL)


if __name__ == "__main__":
    main()
