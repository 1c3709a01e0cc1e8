"""The lock of the imports deferred from ``import leadership`` to first use.

A thread that imports a module holds that module's import lock; a ``fork()`` by another
thread meanwhile leaves the child with the lock held by a thread it does not have, and the
child's first import of that module hangs for ever. The deferred imports of the package
run under :data:`IMPORTING`, which fork hooks hold across ``fork()`` once
:func:`hold_across_fork` has registered them: a fork then waits for such an import to end,
and the child starts with none half-done.

Hooks run in the reverse order of their registration, so a module that registers a
``before`` hook taking a lock, and needs that lock while it or a later module is imported,
would deadlock with ours if its hook ran first (the fork holding its lock and waiting for
the import, the import waiting for its lock). ``logging`` is such a module (its hook takes
its lock; ``getLogger`` at import time needs it): ``build()`` imports logging first,
outside the lock, and only then registers ours, which therefore runs before logging's.
What remains: a fork while a thread's first ``build()`` imports logging itself, when
nothing imported logging before. Never take the lock in a signal handler (the interrupted
code may hold it).
"""

from __future__ import annotations

import os
import threading

IMPORTING = threading.RLock()
_registered = False


def hold_across_fork() -> None:
    """Register the fork hooks that hold :data:`IMPORTING` (once; after importing logging)."""
    global _registered
    with IMPORTING:
        if not _registered:
            os.register_at_fork(
                before=IMPORTING.acquire,
                after_in_parent=IMPORTING.release,
                after_in_child=IMPORTING.release,
            )
            _registered = True
