"""How the worker cuts what it read into transactions: whole requests, bounded in events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flagmeter.events import Event, columns
from flagmeter.stream import Entry
from flagmeter.worker import MAX_READ, read_size, transactions


def entry(n: int, ident: int) -> Entry:
    events = tuple(Event("t", f"{ident}-{i}", "chat", 1, 0, 0) for i in range(n)) or None
    return Entry(f"{ident}-0", b"", tuple(columns(events)) or None)


@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=60), st.integers(1, 2000))
def test_transactions_keep_entries_whole_and_in_order_within_the_limit(sizes: list[int], limit: int) -> None:
    entries = [entry(n, i) for i, n in enumerate(sizes)]
    groups = transactions(entries, limit)
    assert [e for group in groups for e in group] == entries
    for group in groups:
        events = sum(e.size for e in group)
        # Over the limit only when one request alone is larger than it.
        assert events <= limit or len([e for e in group if e.groups]) == 1
        assert group


def test_small_requests_share_one_transaction() -> None:
    groups = transactions([entry(1, i) for i in range(1000)], 1000)
    assert len(groups) == 1


def test_large_requests_each_fill_their_own_transaction() -> None:
    groups = transactions([entry(600, i) for i in range(4)], 1000)
    assert [len(g) for g in groups] == [1, 1, 1, 1]


def test_a_read_asks_for_what_the_transaction_still_has_room_for() -> None:
    assert read_size(4000, 0, 550.0) == 7  # seven requests of 550: 3,850 events
    assert read_size(4000, 3850, 550.0) == 0  # an eighth would not fit: commit what is held
    assert read_size(4000, 0, 1.0) == MAX_READ  # single events: as many entries as one read takes
    assert read_size(4000, 3990, 1.0) == 10
    assert read_size(4000, 4000, 1.0) == 0
    assert read_size(4000, 4400, 550.0) == 0  # past the room (an entry is never split): none
