"""``on_raised`` / ``on_lowered`` delivery, off the hot path and off the renewal thread.

Callbacks run in order on their own thread, which also wakes at the lease deadline:
``on_lowered`` fires when the lease runs out even if the renewal thread is stuck. A
new term (a different fencing token) while raised counts as lowered then raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see leadership/__init__)
if TYPE_CHECKING:
    import logging

    from .clock import Lease

__all__ = ["Callback", "Callbacks"]

Callback = Callable[[], object]


class Callbacks:
    """Delivers a flag's raised/lowered callbacks on a thread of their own.

    ``token`` reads the current term's token. If a callback raises, the error is logged
    and ``on_failure`` is called (the flag then resigns).
    """

    def __init__(
        self,
        lease: Lease,
        token: Callable[[], int | None],
        logger: logging.Logger,
        name: str,
        on_raised: Callback | None = None,
        on_lowered: Callback | None = None,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._lease = lease
        self._token = token
        self._logger = logger
        self._name = name
        self._on_raised = on_raised
        self._on_lowered = on_lowered
        self._on_failure = on_failure
        self._condition = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        if on_raised is not None or on_lowered is not None:
            self._thread = threading.Thread(
                target=self._deliver, name=f"leadership callbacks {name}", daemon=True
            )

    def start(self) -> None:
        """Start delivering (a no-op without callbacks)."""
        if self._thread is not None:
            self._thread.start()

    def changed(self) -> None:
        """The raised state or the term may have changed."""
        if self._thread is None:
            return
        with self._condition:
            self._condition.notify_all()

    def stop(self, wait: float) -> None:
        """Stop delivering; the pending ``on_lowered`` (if raised before) is delivered
        first. Waits up to ``wait`` seconds for the delivery thread."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def _deliver(self) -> None:
        delivered: int | None = None  # the term last reported as raised
        while True:
            with self._condition:
                while True:
                    term = self._token() if self._lease.raised() else None
                    if term != delivered or self._stopped:
                        break
                    left = self._lease.lease_remaining()
                    self._condition.wait(left + 0.001 if left > 0 else None)
                stopped = self._stopped
            if delivered is not None and (term is None or term != delivered or stopped):
                delivered = None
                self._call(self._on_lowered, "on_lowered")
            if stopped:
                return
            if term is not None:
                delivered = term
                if not self._call(self._on_raised, "on_raised"):
                    delivered = None

    def _call(self, callback: Callback | None, what: str) -> bool:
        """Run a callback; on an exception log it, call ``on_failure`` and return False."""
        if callback is None:
            return True
        try:
            callback()
        except Exception:
            self._logger.exception(
                "flag %r: %s callback failed; lowering and releasing the flag", self._name, what
            )
            self._on_failure()
            return False
        return True
