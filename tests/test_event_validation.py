"""Event validation (pure): each rule and its error code."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from flagmeter.events import (
    MAX_AGE_MS,
    MAX_AHEAD_MS,
    MAX_ID_LENGTH,
    TEXT_SEPARATOR,
    Event,
    Rejection,
    columns,
    judge_columns,
    normalise,
    parse_timestamp,
    time_ordered_id,
)

NOW = 1_764_000_000_000


def judge(raw: object, key_tenant: str | None = "acme", known: tuple[str, ...] = ("acme", "globex")):
    return normalise(raw, now_ms=NOW, key_tenant=key_tenant, tenant_exists=set(known).__contains__)


def code_of(raw: object, **kw: object) -> str:
    with pytest.raises(Rejection) as caught:
        judge(raw, **kw)  # type: ignore[arg-type]
    return caught.value.code


def test_a_minimal_event_gets_server_id_and_time() -> None:
    event = judge({"feature": "chat", "tokens": 5})
    assert event.tenant == "acme" and event.tokens == 5
    assert event.occurred_ms == NOW and event.received_ms == NOW
    assert len(event.id) == 32 and event.id.startswith(f"{NOW:012x}")


def test_the_services_ids_sort_by_time_and_differ_within_a_millisecond() -> None:
    """Ids the service makes lead with their receipt's millisecond, so the ledger's B-tree takes a
    batch of them side by side; 80 random bits keep ids of one millisecond apart."""
    made = [time_ordered_id(NOW + step) for step in (0, 1, 255, 256, 10**9) for _ in range(50)]
    assert len(set(made)) == len(made)
    assert made[::50] == sorted(made[::50])  # as text, in the order they were made
    assert {int(i[:12], 16) - NOW for i in made} == {0, 1, 255, 256, 10**9}
    assert all(len(i) == 32 and i.isascii() and i.isalnum() for i in made)


def test_client_id_and_timestamp_are_kept() -> None:
    event = judge({"id": "abc 1", "feature": "a.b:c-d_e", "tokens": 0, "timestamp": "2025-11-24T10:00:00.5Z"})
    assert event.id == "abc 1"
    assert event.occurred_ms == parse_timestamp("2025-11-24T10:00:00.500+00:00")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ([], "invalid_event"),
        ({"feature": "chat"}, "invalid_tokens"),
        ({"feature": "chat", "tokens": 1.0}, "invalid_tokens"),
        ({"feature": "chat", "tokens": "5"}, "invalid_tokens"),
        ({"feature": "chat", "tokens": True}, "invalid_tokens"),
        ({"feature": "chat", "tokens": -1}, "invalid_tokens"),
        ({"feature": "chat", "tokens": 10**9 + 1}, "invalid_tokens"),
        ({"tokens": 1}, "invalid_feature"),
        ({"feature": "", "tokens": 1}, "invalid_feature"),
        ({"feature": "x" * 65, "tokens": 1}, "invalid_feature"),
        ({"feature": "sp ace", "tokens": 1}, "invalid_feature"),
        ({"id": "", "feature": "chat", "tokens": 1}, "invalid_id"),
        ({"id": "x" * 129, "feature": "chat", "tokens": 1}, "invalid_id"),
        ({"id": "é", "feature": "chat", "tokens": 1}, "invalid_id"),
        ({"id": 7, "feature": "chat", "tokens": 1}, "invalid_id"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-13-24T10:00:00Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": 1764000000}, "invalid_timestamp"),
        ({"tenant": "globex", "feature": "chat", "tokens": 1}, "forbidden"),
        ({"tenant": "Bad Tenant", "feature": "chat", "tokens": 1}, "invalid_tenant"),
        ({"tenant": ["acme"], "feature": "chat", "tokens": 1}, "invalid_tenant"),
        ({"feature": ["chat"], "tokens": 1}, "invalid_feature"),
        ({"feature": {"chat": 1}, "tokens": 1}, "invalid_feature"),
        ({"id": "del\x7f", "feature": "chat", "tokens": 1}, "invalid_id"),
        ({"id": "tab\t", "feature": "chat", "tokens": 1}, "invalid_id"),
        # the separator the worker joins text columns with (store.base.joined) is in no accepted value
        ({"id": f"a{TEXT_SEPARATOR}b", "feature": "chat", "tokens": 1}, "invalid_id"),
        ({"feature": f"a{TEXT_SEPARATOR}b", "tokens": 1}, "invalid_feature"),
        ({"tenant": f"a{TEXT_SEPARATOR}b", "feature": "chat", "tokens": 1}, "invalid_tenant"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-02-30T10:00:00Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:60Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T24:00:00Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00+24:00"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00+02:60"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00.Z"}, "invalid_timestamp"),
        (
            {"feature": "chat", "tokens": 1, "timestamp": "\uff12\uff10\uff12\uff15-11-24T10:00:00Z"},
            "invalid_timestamp",
        ),
    ],
)
def test_invalid_events_are_rejected_with_their_code(raw: object, code: str) -> None:
    assert code_of(raw) == code


def test_timestamp_window_is_35_days_back_and_5_minutes_ahead() -> None:
    from datetime import UTC, datetime

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat()

    assert (
        judge({"feature": "c", "tokens": 1, "timestamp": iso(NOW - MAX_AGE_MS)}).occurred_ms
        == NOW - MAX_AGE_MS
    )
    assert (
        code_of({"feature": "c", "tokens": 1, "timestamp": iso(NOW - MAX_AGE_MS - 1000)})
        == "timestamp_too_old"
    )
    assert (
        judge({"feature": "c", "tokens": 1, "timestamp": iso(NOW + MAX_AHEAD_MS)}).occurred_ms
        == NOW + MAX_AHEAD_MS
    )
    assert (
        code_of({"feature": "c", "tokens": 1, "timestamp": iso(NOW + MAX_AHEAD_MS + 1000)})
        == "timestamp_in_future"
    )


def test_admin_must_name_an_existing_tenant() -> None:
    assert code_of({"feature": "c", "tokens": 1}, key_tenant=None) == "missing_tenant"
    assert code_of({"tenant": "nobody", "feature": "c", "tokens": 1}, key_tenant=None) == "unknown_tenant"
    assert judge({"tenant": "globex", "feature": "c", "tokens": 1}, key_tenant=None).tenant == "globex"


def test_nanosecond_fractions_and_offsets_parse() -> None:
    assert parse_timestamp("2025-11-24T12:00:00.123456789+02:00") == parse_timestamp(
        "2025-11-24T10:00:00.123Z"
    )


def test_a_second_seen_before_parses_with_its_own_fraction_and_offset() -> None:
    first = parse_timestamp("2031-05-06T07:08:09Z")  # the second is kept: the rest is parsed each time
    assert parse_timestamp("2031-05-06T07:08:09.5Z") == first + 500
    assert parse_timestamp("2031-05-06T07:08:09.250-01:30") == first + 250 + 90 * 60_000
    with pytest.raises(Rejection):
        parse_timestamp("2031-05-06T07:08:09+24:00")


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2199, 12, 31)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
    st.sampled_from(["T", "t", " "]),
)
def test_timestamps_parse_to_the_same_instant_as_the_standard_library(
    moment: datetime, offset_minutes: int, separator: str
) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    aware = moment.replace(tzinfo=zone)
    text = aware.isoformat(sep=separator, timespec="milliseconds")
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_timestamp(text) == expected
    if offset_minutes == 0:
        assert parse_timestamp(text.replace("+00:00", "Z")) == expected
        assert parse_timestamp(text.replace("+00:00", "z")) == expected


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# Each field's values, (valid, not valid), for whole batches of one shape.
FIELD_VALUES = {
    "id": (
        st.one_of(
            st.text("ab7 -~", min_size=1, max_size=6),  # an id repeats within a batch now and then
            st.text("xy", min_size=MAX_ID_LENGTH - 1, max_size=MAX_ID_LENGTH),
        ),
        st.sampled_from(["", "x" * (MAX_ID_LENGTH + 1), "é", "tab\t", "del\x7f", 7, None, ["a"]]),
    ),
    "feature": (
        st.sampled_from(["chat", "embed", "a.b:c-d_e", "x" * 64]),
        st.sampled_from(["", "sp ace", "x" * 65, 5, ["chat"]]),
    ),
    "tokens": (
        st.integers(min_value=0, max_value=10**9),
        st.sampled_from([-1, 10**9 + 1, True, 1.0, "5", None]),
    ),
    "timestamp": (
        st.integers(min_value=NOW - MAX_AGE_MS, max_value=NOW + MAX_AHEAD_MS).map(_stamp),
        st.sampled_from(
            [_stamp(NOW - MAX_AGE_MS - 1000), _stamp(NOW + MAX_AHEAD_MS + 1000), "2025-11-24", 17, None]
        ),
    ),
    "tenant": (st.just("acme"), st.sampled_from(["globex", "Bad Tenant", ["acme"], None])),
    "reservation": (st.just("r-1"), st.nothing()),
}


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, object]]:
    """Batches whose events share one set of fields (the id's often; feature and tokens always), valid
    with distinct ids throughout, or with invalid values and repeated ids mixed in; now and then one
    event of other fields among them."""
    fields = ["feature", "tokens", *draw(st.sets(st.sampled_from(["timestamp", "tenant"])))]
    if draw(st.integers(0, 3)) > 0:
        fields.append("id")
    if draw(st.integers(0, 7)) == 0:
        fields.append("reservation")
    mixed = draw(st.booleans())
    values = {name: st.one_of(*FIELD_VALUES[name]) if mixed else FIELD_VALUES[name][0] for name in fields}
    unique = None if mixed else (lambda event: event.get("id"))  # mixed in: ids repeated as well
    events = draw(st.lists(st.fixed_dictionaries(values), min_size=1, unique_by=unique))
    if draw(st.integers(0, 4)) == 0:  # anywhere, one valid event of a field more or a field fewer
        odd = draw(st.fixed_dictionaries({name: FIELD_VALUES[name][0] for name in fields}))
        more = draw(st.sampled_from(["id", "timestamp", "tenant", "reservation", "note"]))
        if more in odd:
            del odd[draw(st.sampled_from(fields))]
        else:
            odd[more] = draw(FIELD_VALUES[more][0]) if more in FIELD_VALUES else "ignored"
        events.insert(draw(st.integers(0, len(events))), odd)
    return events


@settings(max_examples=300)
@given(batches())
def test_a_batch_judged_by_fields_is_what_judging_each_event_makes(batch: list[dict[str, object]]) -> None:
    judged: list[Event | None] = []
    for raw in batch:
        try:
            judged.append(judge(raw))
        except Rejection:
            judged.append(None)
    taken_whole = (
        None not in judged
        and len({event.id for event in judged if event}) == len(batch)
        and all(raw.keys() == batch[0].keys() for raw in batch)
        and "reservation" not in batch[0]
        and all(type(raw.get("id")) is str for raw in batch)  # no id, or a null one: the service's
        and all(type(raw.get("timestamp", "")) is str for raw in batch)  # a null one: the time of receipt
    )
    event("taken whole" if taken_whole else "judged each")
    group = judge_columns(batch, now_ms=NOW, key_tenant="acme")
    if taken_whole:
        assert [group] == columns([event for event in judged if event])
    else:
        assert group is None
