"""A stream entry's payload (pure): what the API writes, the worker reads back as the same events;
entries written before the columnar format still read; a malformed one reads as no events."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagmeter.events import Event
from flagmeter.stream import decode, encode
from stacklib import events_in

NOW = 1_764_000_000_000


def events_of(tenant: str, n: int, received_ms: int = NOW) -> list[Event]:
    return [Event(tenant, f"e-{i}", "chat", i, NOW - i, received_ms) for i in range(n)]


def read(payload: bytes) -> tuple[Event, ...] | None:
    return events_in(decode("1-0", {b"e": payload}).groups)


def test_a_requests_events_travel_as_one_group_of_columns() -> None:
    events = events_of("acme", 3)
    assert orjson.loads(encode(events)) == [
        ["acme", NOW, ["e-0", "e-1", "e-2"], ["chat", "chat", "chat"], [0, 1, 2], [NOW, NOW - 1, NOW - 2]]
    ]
    assert read(encode(events)) == tuple(events)
    # Kept as columns: the lists the payload's JSON gave, no object per event.
    [(tenant, received_ms, ids, *_)] = decode("1-0", {b"e": encode(events)}).groups or ()
    assert (tenant, received_ms, ids) == ("acme", NOW, ["e-0", "e-1", "e-2"])


def test_a_group_without_its_occurred_times_reads_as_events_that_occurred_when_received() -> None:
    # Read, not yet written (stream.py): a later release may write it to workers of this one.
    group = ["acme", NOW, ["e-0", "e-1"], ["chat", "tts"], [0, 1]]
    assert read(orjson.dumps([group])) == (
        Event("acme", "e-0", "chat", 0, NOW, NOW),
        Event("acme", "e-1", "tts", 1, NOW, NOW),
    )


def test_an_admins_batch_of_several_tenants_keeps_its_order_in_runs() -> None:
    events = events_of("acme", 2) + events_of("globex", 1) + events_of("acme", 1)
    assert [group[0] for group in orjson.loads(encode(events))] == ["acme", "globex", "acme"]
    assert read(encode(events)) == tuple(events)


slugs = st.sampled_from(["acme", "globex", "t-1"])
event_lists = st.lists(
    st.builds(
        Event,
        slugs,
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128),
        st.sampled_from(["chat", "embed", "a.b:c-d_e"]),
        st.integers(0, 10**9),
        st.one_of(st.integers(0, 2**53), st.just(NOW)),  # mostly the time of receipt in a batch or not
        st.sampled_from([NOW, NOW + 1]),
    ),
    min_size=1,
    max_size=40,
)


@given(event_lists)
def test_any_accepted_events_read_back_as_themselves(events: list[Event]) -> None:
    assert read(encode(events)) == tuple(events)


def test_entries_of_rows_from_before_the_columns_still_read() -> None:
    rows = [["acme", "a", "chat", 5, NOW, NOW], ["globex", "b", "tts", 0, NOW - 1, NOW]]
    assert read(orjson.dumps(rows)) == (Event(*rows[0]), Event(*rows[1]))
    assert read(orjson.dumps(rows[0])) == (Event(*rows[0]),)  # one bare row, the oldest form


@pytest.mark.parametrize(
    "payload",
    [
        b'[["acme","e","chat",true,1,1]]',  # a bool is not a token count
        b'[["acme","e","chat",5,1.5,1]]',
        b'[["acme","e","chat",5,1]]',  # a field short
        b'[["acme","e","chat",5,1,1,0]]',
        b'[["acme",7,"chat",5,1,1]]',
        b'[["acme","e","chat",5,1,1],"acmeee"]',
        b'[["acme","e","chat",5,1,1],{"a":1}]',
        b'[["acme",1,["e"],["chat"],[true],[1]]]',  # columns: a bool is not a token count
        b'[["acme",1,["e"],["chat"],[5],[1.5]]]',
        b'[["acme",1,["e","f"],["chat"],[5],[1]]]',  # a column short
        b'[["acme",1,["e"],["chat","x"],[5,6],[1,2]]]',  # the ids short
        b'[["acme",1,["e"],["chat"],[5,6,7],[1]]]',
        b'[["acme",1,["e"],["chat"],[5],[1,2]]]',
        b'[["acme",1,[],[],[],[]]]',  # a group of no events
        b'[["acme",1,"ef",["chat","chat"],[5,5],[1,1]]]',  # a string is not a column of ids
        b'[[7,1,["e"],["chat"],[5],[1]]]',
        b'[["acme",1,["e"],["chat"],[5],[1]],["acme","e","chat",5,1,1]]',  # columns and a row
        b'[["acme",1,["e"],["chat"],[5,6]]]',  # no times: the ids short
        b'[["acme",1,["e"],["chat"],[true]]]',
        b'[["acme",1,["e"],["chat"]]]',  # no tokens
        b'[["acme",1,["e"],["chat"],[5],[1],[1]]]',
        b'[["acme",1.0,["e"],["chat"],[5]]]',
        # text holding the separator the counting statement splits a column on: no API wrote it
        b'[["acme",1,["e\\u001ff"],["chat"],[5]]]',
        b'[["acme",1,["e"],["ch\\u001fat"],[5]]]',
        b'[["ac\\u001fme",1,["e"],["chat"],[5]]]',
        b'[["acme","e\\u001ff","chat",5,1,1]]',  # a row
        # empty text, which the counting statement's split would read as no value
        b'[["acme",1,["e",""],["chat","chat"],[5,5]]]',
        b'[["acme",1,["e"],[""],[5]]]',
        b'[["",1,["e"],["chat"],[5]]]',
        b'[["acme","","chat",5,1,1]]',  # a row
        b"[[]]",
        b"[]",
        b"not json",
    ],
)
def test_a_malformed_stream_entry_decodes_to_no_events(payload: bytes) -> None:
    assert read(payload) is None
