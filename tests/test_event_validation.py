"""Event validation (pure): each rule and its error code."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagmeter.events import MAX_AGE_MS, MAX_AHEAD_MS, Rejection, normalise, parse_timestamp

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
    assert len(event.id) == 32


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
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-02-30T10:00:00Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:60Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T24:00:00Z"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00+24:00"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00+02:60"}, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2025-11-24T10:00:00.Z"}, "invalid_timestamp"),
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
