"""Event validation (pure): each rule and its error code."""

import pytest

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
