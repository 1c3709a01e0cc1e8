"""What one instance holds of its flag's row: where its term started and its last write."""

from __future__ import annotations

from .store import Mine, Written

__all__ = ["Tenure"]


class Tenure:
    """This instance's hold on its flag's row (not thread-safe: the campaign locks it).

    Invariants:

    - ``start`` is None exactly when ``last`` is None (nothing held);
    - while held, ``start <= last.version``: the term started at version ``start`` and
      this instance has since written every version up to ``last.version``;
    - ``in_flight`` only while held: a renewal of ``last`` was sent and its outcome is not
      known yet, so the row may already carry ``last.version + 1``;
    - :meth:`versions` is therefore every version this instance may have written in the
      term; no other writer can use them under this process name while its lease lasts.
    """

    __slots__ = ("in_flight", "last", "pending", "start")

    def __init__(self) -> None:
        self.start: int | None = None
        self.last: Written | None = None
        self.in_flight = False
        self.pending = 0  # attempts since ``last`` whose outcome is unknown

    @property
    def held(self) -> bool:
        return self.last is not None

    def versions(self) -> tuple[int, int] | None:
        """(first, last) versions this instance may have written in the term, the last
        including a renewal in flight; None when nothing is held."""
        if self.start is None or self.last is None:
            return None
        return self.start, self.last.version + 1 if self.in_flight else self.last.version

    def sending(self) -> None:
        """A renewal (or a first acquisition) is about to be sent."""
        self.in_flight = self.last is not None

    def mine(self) -> Mine | None:
        """What this instance may have written to the row (see store.Mine)."""
        return None if self.last is None else Mine(self.last, self.pending)

    def unanswered(self) -> None:
        """The attempt was sent and never answered: it may have written a version."""
        self.in_flight = False
        if self.last is not None:
            self.pending += 1

    def refused(self) -> None:
        """The attempt failed without writing (no connection, an error the server
        reported)."""
        self.in_flight = False

    def confirm(self, written: Written, new_term: bool) -> None:
        """The store wrote ``written`` for this instance; ``new_term`` starts a term at it
        (a first acquisition always does)."""
        if new_term or self.start is None:
            self.start = written.version
        self.last = written
        self.in_flight = False
        self.pending = 0

    def end(self) -> Mine | None:
        """Forget the term; return what this instance may have written, if anything (to
        release it)."""
        mine = self.mine()
        self.start, self.last, self.in_flight, self.pending = None, None, False, 0
        return mine
