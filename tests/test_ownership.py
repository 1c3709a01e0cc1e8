"""Which row versions a store counts as its own, on the real databases.

A version after the last one an instance saw confirmed is its own only if one of its
unanswered attempts could have written it. With two instances sharing a process name
(a misconfiguration the flag reports), an administrator's release lets the other one
write such a version: the row's recorded writer identity tells them apart.
"""

from __future__ import annotations

from leadership.backends import open_store
from leadership.store import Mine

INTERVAL = 10.0


def test_a_duplicate_names_row_after_an_admin_release_is_not_taken_for_a_late_commit(
    any_dsn: str, flag_name: str
) -> None:
    mine, other = open_store(any_dsn, 5.0), open_store(any_dsn, 5.0)
    try:
        first = mine.acquire_or_renew(flag_name, "pod-7", None, INTERVAL).written
        assert first is not None
        assert mine.expire(flag_name)  # leadership release: version + 1, expired
        taken = other.acquire_or_renew(flag_name, "pod-7", None, INTERVAL).written
        assert taken is not None and taken.version == first.version + 2
        # Two of our attempts went unanswered: versions + 1 and + 2 could be ours...
        seen = mine.acquire_or_renew(flag_name, "pod-7", Mine(first, pending=2), INTERVAL)
        # ... but this row was written by the other instance: not ours, not taken.
        assert not seen.acquired, "took a live row of another instance with the same name"
        assert seen.version == taken.version
    finally:
        mine.close()
        other.close()


def test_a_late_commit_of_its_own_is_recognised(any_dsn: str, flag_name: str) -> None:
    store = open_store(any_dsn, 5.0)
    try:
        first = store.acquire_or_renew(flag_name, "pod-7", None, INTERVAL).written
        assert first is not None
        late = store.acquire_or_renew(flag_name, "pod-7", Mine(first), INTERVAL).written
        assert late is not None  # as if its reply had been lost: the caller saw nothing
        renewed = store.acquire_or_renew(flag_name, "pod-7", Mine(first, pending=1), INTERVAL)
        assert renewed.written is not None and renewed.written.version == late.version + 1
        assert renewed.written.continued
    finally:
        store.close()
