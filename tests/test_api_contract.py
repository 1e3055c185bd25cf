"""The HTTP API contract, endpoint by endpoint, against the real API and worker processes."""

from __future__ import annotations

import re
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources

import orjson
import pytest

from flagmeter.api.ingest import LARGE_BODY
from flagmeter.events import TENANT_ID, TENANT_NAME
from flagmeter.keys import KEY_ID
from stacklib import Stack


def ev(tokens: int = 1, feature: str = "chat", **extra: object) -> dict[str, object]:
    return {"id": uuid.uuid4().hex, "feature": feature, "tokens": tokens, **extra}


def assert_nothing_stored(stack: Stack, tenant: str, key: str) -> None:
    """A sentinel event posted after the bad input must be the only thing ever counted."""
    status, body, _ = stack.request("POST", "/v1/events", ev(7, "sentinel"), token=key)
    assert status == 202, body
    usage = stack.wait_used(tenant, 7)
    assert usage["by_feature"] == {"sentinel": 7}


# -- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/events"),
        ("GET", "/v1/usage/acme"),
        ("GET", "/v1/usage/acme/series"),
        ("GET", "/v1/tenants"),
        ("POST", "/v1/tenants"),
        ("GET", "/v1/tenants/acme"),
        ("PATCH", "/v1/tenants/acme"),
        ("GET", "/v1/tenants/acme/keys"),
        ("POST", "/v1/tenants/acme/keys"),
        ("DELETE", "/v1/tenants/acme/keys/key_0123456789abcdef"),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong", "fm_not-a-real-key"])
def test_missing_or_invalid_token_is_401(stack: Stack, method: str, path: str, token: str | None) -> None:
    status, body, headers = stack.request(method, path, {}, token=token)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert "Bearer" in headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/tenants"),
        ("POST", "/v1/tenants"),
        ("GET", "/v1/tenants/{t}"),
        ("PATCH", "/v1/tenants/{t}"),
        ("GET", "/v1/tenants/{t}/keys"),
        ("POST", "/v1/tenants/{t}/keys"),
        ("DELETE", "/v1/tenants/{t}/keys/key_0123456789abcdef"),
    ],
)
def test_tenant_keys_cannot_use_admin_endpoints(stack: Stack, method: str, path: str) -> None:
    tenant, key = stack.create_tenant()
    status, body, _ = stack.request(method, path.format(t=tenant), {"name": "x"}, token=key)
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"


def test_a_tenant_key_reads_only_its_own_usage(stack: Stack) -> None:
    mine, key = stack.create_tenant()
    other, _ = stack.create_tenant()
    assert stack.request("GET", f"/v1/usage/{mine}", token=key)[0] == 200
    for path in (f"/v1/usage/{other}", f"/v1/usage/{other}/series", f"/usage/{other}"):
        status, body, _ = stack.request("GET", path, token=key)
        assert status == 403 and body["error"]["code"] == "forbidden"


def test_revoked_key_stops_working_within_5_seconds_on_every_process(stack: Stack) -> None:
    tenant, _ = stack.create_tenant()
    status, created, _ = stack.request("POST", f"/v1/tenants/{tenant}/keys")
    assert status == 201 and created["api_key"].startswith("fm_")
    for _ in range(8):  # warm the caches of both API processes
        assert stack.request("GET", f"/v1/usage/{tenant}", token=created["api_key"])[0] == 200
    status, revoked, _ = stack.request("DELETE", f"/v1/tenants/{tenant}/keys/{created['id']}")
    assert status == 200 and revoked["revoked_at"]
    time.sleep(5)
    for _ in range(8):
        assert stack.request("GET", f"/v1/usage/{tenant}", token=created["api_key"])[0] == 401


# -- tenants and keys -----------------------------------------------------------------------


def test_a_key_carries_the_name_it_was_issued_with_and_lists_show_it(stack: Stack) -> None:
    tenant, _ = stack.create_tenant()
    status, created, _ = stack.request("POST", f"/v1/tenants/{tenant}/keys", {"name": "production"})
    assert status == 201 and created["name"] == "production" and created["api_key"].startswith("fm_")
    status, unnamed, _ = stack.request("POST", f"/v1/tenants/{tenant}/keys")
    assert status == 201 and unnamed["name"] == ""
    listed = stack.request("GET", f"/v1/tenants/{tenant}/keys")[1]["keys"]
    assert {k["id"]: k["name"] for k in listed}.items() >= {
        created["id"]: "production",
        unnamed["id"]: "",
    }.items()
    assert all("api_key" not in k for k in listed)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": 7}, 422, "invalid_key"),
        ({"name": "x" * 101}, 422, "invalid_key"),
        ({"name": "tab\there"}, 422, "invalid_key"),
        ({"label": "x"}, 422, "invalid_key"),
        ([], 400, "invalid_body"),
    ],
)
def test_bad_key_requests_are_refused_and_issue_nothing(
    stack: Stack, body: object, status: int, code: str
) -> None:
    tenant, _ = stack.create_tenant()
    before = stack.request("GET", f"/v1/tenants/{tenant}/keys")[1]["keys"]
    answer, error, _ = stack.request("POST", f"/v1/tenants/{tenant}/keys", body)
    assert (answer, error["error"]["code"]) == (status, code)
    assert stack.request("GET", f"/v1/tenants/{tenant}/keys")[1]["keys"] == before


def test_create_tenant_returns_the_key_once_and_stores_only_its_hash(stack: Stack) -> None:
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    status, body, _ = stack.request(
        "POST", "/v1/tenants", {"id": tenant_id, "name": "Example", "monthly_quota": 1000}
    )
    assert status == 201
    assert body["tenant"] == {**body["tenant"], "id": tenant_id, "billing_day": 1, "monthly_quota": 1000}
    key = body["api_key"]
    assert key.startswith("fm_") and len(key) >= 3 + 43
    stored = stack.sql("SELECT key_hash FROM api_keys WHERE tenant_id = %s", (tenant_id,))
    assert stored and all(key not in row[0] for row in stored)
    status, keys, _ = stack.request("GET", f"/v1/tenants/{tenant_id}/keys")
    assert status == 200 and keys["keys"][0]["id"] == body["key_id"]
    assert "api_key" not in str(keys) and key not in str(keys)


def test_duplicate_tenant_is_409(stack: Stack) -> None:
    tenant, _ = stack.create_tenant()
    status, body, _ = stack.request(
        "POST", "/v1/tenants", {"id": tenant, "name": "again", "monthly_quota": 1}
    )
    assert status == 409 and body["error"]["code"] == "tenant_exists"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "no id", "monthly_quota": 1},
        {"id": "Bad_Slug", "name": "x", "monthly_quota": 1},
        {"id": "-dash", "name": "x", "monthly_quota": 1},
        {"id": "ok", "name": "", "monthly_quota": 1},
        {"id": "ok", "name": "x", "monthly_quota": -1},
        {"id": "ok", "name": "x", "monthly_quota": 1.5},
        {"id": "ok", "name": "x", "monthly_quota": "10"},
        {"id": "ok", "name": "x", "monthly_quota": 1, "billing_day": 0},
        {"id": "ok", "name": "x", "monthly_quota": 1, "billing_day": 32},
        {"id": "ok", "name": "\U000f8c1e \x00\x066", "monthly_quota": 1},  # a fuzzer found: text holds no NUL
        {"id": "ok", "name": "a\x00b", "monthly_quota": 1},
        {"id": "ok", "name": "line\nbreak", "monthly_quota": 1},
        {"id": "ok", "name": "c1 \x85 control", "monthly_quota": 1},
        {"id": "ok", "name": "x", "monthly_quota": 1, "slack_webhook_url": "ftp://x"},
        # the test stack allows private webhook hosts, so these reach the URL's own rules, not DNS
        {"id": "ok", "name": "x", "monthly_quota": 1, "slack_webhook_url": "https://hooks.example.com/a\x00"},
        {"id": "ok", "name": "x", "monthly_quota": 1, "slack_webhook_url": "https://hooks.example.com/a b"},
        {"id": "ok", "name": "x", "monthly_quota": 1, "surprise": True},
    ],
)
def test_invalid_tenant_bodies_are_422_and_create_nothing(stack: Stack, body: dict[str, object]) -> None:
    if body.get("id") == "ok":
        body = {**body, "id": f"ok-{uuid.uuid4().hex[:8]}"}
    status, answer, _ = stack.request("POST", "/v1/tenants", body)
    assert status == 422, answer
    assert answer["error"]["code"] == "invalid_tenant"
    if isinstance(body.get("id"), str):
        assert stack.sql("SELECT 1 FROM tenants WHERE id = %s", (body["id"],)) == []


def test_tenant_body_that_is_not_an_object_is_400(stack: Stack) -> None:
    assert stack.request("POST", "/v1/tenants", [1, 2])[0] == 400
    assert stack.request("POST", "/v1/tenants", raw=b"{nope")[0] == 400


def test_get_list_patch_tenant(stack: Stack) -> None:
    tenant, _ = stack.create_tenant(quota=100)
    status, body, _ = stack.request("GET", f"/v1/tenants/{tenant}")
    assert status == 200 and body["monthly_quota"] == 100
    assert tenant in [t["id"] for t in stack.request("GET", "/v1/tenants")[1]["tenants"]]
    status, body, _ = stack.request(
        "PATCH", f"/v1/tenants/{tenant}", {"monthly_quota": 500, "name": "Renamed"}
    )
    assert status == 200 and body["monthly_quota"] == 500 and body["name"] == "Renamed"
    assert stack.request("PATCH", f"/v1/tenants/{tenant}", {"billing_day": 40})[0] == 422
    for change in ({"name": "nul\x00"}, {"webhook_url": "https://hooks.example.com/\x00"}):
        assert stack.request("PATCH", f"/v1/tenants/{tenant}", change)[0] == 422, change
    assert stack.request("GET", f"/v1/tenants/{tenant}")[1]["name"] == "Renamed"
    # Names in any script, with the invisible characters they may need (no-break space, joiners, marks)
    for name in ("Zoë\u00a0GmbH", "\U0001f469\u200d\U0001f4bb Labs", "\u200f\u05e9\u05dc\u05d5\u05dd"):
        status, body, _ = stack.request("PATCH", f"/v1/tenants/{tenant}", {"name": name})
        assert status == 200 and body["name"] == name, body
    assert stack.request("PATCH", f"/v1/tenants/{tenant}", {})[0] == 422
    assert stack.request("GET", "/v1/tenants/nobody-here")[0] == 404
    assert stack.request("PATCH", "/v1/tenants/nobody-here", {"name": "x"})[0] == 404


def test_single_event_is_accepted_and_counted(stack: Stack) -> None:
    tenant, key = stack.create_tenant(quota=1000)
    status, body, _ = stack.request("POST", "/v1/events", ev(250), token=key)
    assert status == 202 and body["accepted"] == 1 and body["rejected"] == []
    usage = stack.wait_used(tenant, 250)
    assert usage["remaining"] == 750 and usage["percent"] == 25.0 and usage["quota"] == 1000
    assert usage["by_feature"] == {"chat": 250}


def test_proof_of_concept_paths_are_aliases(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    assert stack.request("POST", "/events", ev(3), token=key)[0] == 202
    stack.wait_used(tenant, 3)
    status, body, _ = stack.request("GET", f"/usage/{tenant}", token=key)
    assert status == 200 and body["used"] == 3
    assert stack.request("GET", "/health", token=None)[0] == 200


def test_batch_accepts_valid_events_and_reports_each_rejection(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    other, _ = stack.create_tenant()
    batch = [ev(1), {"feature": "chat", "tokens": "2"}, ev(3, tenant=other), ev(4), "nope"]
    status, body, _ = stack.request("POST", "/v1/events", batch, token=key)
    assert status == 202
    assert body["accepted"] == 2
    assert [(r["index"], r["error"]["code"]) for r in body["rejected"]] == [
        (1, "invalid_tokens"),
        (2, "forbidden"),
        (4, "invalid_event"),
    ]
    stack.wait_used(tenant, 5)


def test_an_id_repeated_within_a_batch_is_accepted_once_and_listed_as_a_duplicate(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    batch = [
        {"id": "d1", "feature": "chat", "tokens": 10},
        {"id": "d1", "feature": "chat", "tokens": 99},  # the same event again: the first one counts
        {"id": "d2", "feature": "chat", "tokens": 5},
        {"id": "d2", "feature": "chat", "tokens": 5},
    ]
    status, body, _ = stack.request("POST", "/v1/events", batch, token=key)
    assert status == 202, body
    assert body["accepted"] == 2 and body["ids"] == ["d1", "d2"]
    assert body["duplicates"] == [{"index": 1, "id": "d1"}, {"index": 3, "id": "d2"}]
    assert body["rejected"] == []
    stack.wait_used(tenant, 15)


def test_admin_posts_for_any_tenant_and_unknown_tenants_are_rejected(stack: Stack) -> None:
    tenant, _ = stack.create_tenant()
    batch = [ev(2, tenant=tenant), ev(3, tenant="no-such-tenant"), ev(4)]
    status, body, _ = stack.request("POST", "/v1/events", batch)
    assert status == 202 and body["accepted"] == 1
    assert [r["error"]["code"] for r in body["rejected"]] == ["unknown_tenant", "missing_tenant"]
    stack.wait_used(tenant, 2)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"feature": "chat", "tokens": 1.5}, 422, "invalid_tokens"),
        ({"feature": "chat", "tokens": "1"}, 422, "invalid_tokens"),
        ({"feature": "chat", "tokens": 10**9 + 1}, 422, "invalid_tokens"),
        ({"feature": "bad feature", "tokens": 1}, 422, "invalid_feature"),
        ({"id": "x" * 129, "feature": "chat", "tokens": 1}, 422, "invalid_id"),
        ({"feature": "chat", "tokens": 1, "timestamp": "yesterday"}, 422, "invalid_timestamp"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2020-01-01T00:00:00Z"}, 422, "timestamp_too_old"),
        ({"feature": "chat", "tokens": 1, "timestamp": "2999-01-01T00:00:00Z"}, 422, "timestamp_in_future"),
        ({"feature": "chat", "tokens": 1, "tenant": "someone-else"}, 403, "forbidden"),
    ],
)
def test_single_invalid_event_answers_its_own_status_and_stores_nothing(
    stack: Stack, body: dict[str, object], status: int, code: str
) -> None:
    tenant, key = stack.create_tenant()
    got, answer, _ = stack.request("POST", "/v1/events", body, token=key)
    assert (got, answer["error"]["code"]) == (status, code)
    assert_nothing_stored(stack, tenant, key)


def test_single_event_for_unknown_tenant_is_404(stack: Stack) -> None:
    status, body, _ = stack.request("POST", "/v1/events", ev(1, tenant="nobody-at-all"))
    assert status == 404 and body["error"]["code"] == "unknown_tenant"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'"a string"', 400, "invalid_body"),
        (b"42", 400, "invalid_body"),
        (b"null", 400, "invalid_body"),
        (b"[]", 422, "empty_batch"),
        (b'[{"feature": "chat"}, {"tokens": 1}]', 422, "no_valid_events"),
    ],
)
def test_malformed_bodies_get_their_status_and_store_nothing(
    stack: Stack, raw: bytes, status: int, code: str
) -> None:
    tenant, key = stack.create_tenant()
    got, answer, _ = stack.request("POST", "/v1/events", raw=raw, token=key)
    assert (got, answer["error"]["code"]) == (status, code)
    assert_nothing_stored(stack, tenant, key)


def test_oversized_requests_are_413_and_store_nothing(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    too_many = [ev(1) for _ in range(1001)]
    status, body, _ = stack.request("POST", "/v1/events", too_many, token=key)
    assert status == 413 and body["error"]["code"] == "batch_too_large"
    huge = b'{"feature": "chat", "tokens": 1, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    status, body, _ = stack.request("POST", "/v1/events", raw=huge, token=key)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert_nothing_stored(stack, tenant, key)


def test_a_full_batch_of_1000_is_accepted(stack: Stack) -> None:
    tenant, key = stack.create_tenant(quota=10**9)
    status, body, _ = stack.request("POST", "/v1/events", [ev(2) for _ in range(1000)], token=key)
    assert status == 202 and body["accepted"] == 1000
    stack.wait_used(tenant, 2000)


def test_a_batch_of_valid_events_is_stored_as_each_event_said(stack: Stack) -> None:
    # Judged a field at a time (api/ingest.py): the events' own times, ids and features are what counts.
    tenant, key = stack.create_tenant(quota=10**9)
    now = datetime.now(UTC).replace(microsecond=0)
    batch = [
        ev(
            n,
            f"f{n % 3}",
            tenant=tenant,
            timestamp=(now - timedelta(minutes=n)).isoformat(timespec="milliseconds"),
        )
        for n in range(1, 13)
    ]
    status, body, _ = stack.request("POST", "/v1/events", batch, token=key)
    assert status == 202 and body["ids"] == [event["id"] for event in batch]
    stack.wait_used(tenant, sum(range(1, 13)))
    stored = stack.sql(
        "SELECT event_id, feature, tokens, occurred_at FROM events WHERE tenant_id = %s", (tenant,)
    )
    assert sorted(stored) == sorted(
        (event["id"], event["feature"], event["tokens"], now - timedelta(minutes=event["tokens"]))
        for event in batch
    )


def test_rate_limit_answers_429_with_retry_after(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    api, url = stack.start_api(processes=1, FLAGMETER_RATE_LIMIT="2")
    try:
        statuses = [stack.request("POST", "/v1/events", ev(1), token=key, base=url) for _ in range(8)]
        limited = [s for s in statuses if s[0] == 429]
        assert limited, [s[0] for s in statuses]
        assert int(limited[0][2]["Retry-After"]) >= 1
        assert limited[0][1]["error"]["code"] == "rate_limited"
        accepted = sum(1 for s in statuses if s[0] == 202)
        assert 4 <= accepted <= 5  # a burst of 2x the rate, plus what refilled meanwhile
        stack.wait_used(tenant, accepted)
    finally:
        api.stop()


def test_rate_limit_buckets_are_per_stream_so_previews_sharing_a_redis_do_not_share_them(
    stack: Stack,
) -> None:
    _, key = stack.create_tenant()
    first, first_url = stack.start_api(processes=1, FLAGMETER_RATE_LIMIT="2")
    other, other_url = stack.start_api(
        processes=1, FLAGMETER_RATE_LIMIT="2", FLAGMETER_STREAM=f"test:{uuid.uuid4().hex[:8]}"
    )
    try:
        statuses = [
            stack.request("POST", "/v1/events", ev(1), token=key, base=first_url)[0] for _ in range(8)
        ]
        assert 429 in statuses
        # The same tenant on another stream (a preview) has its own bucket: a full burst of 2x the rate.
        assert [
            stack.request("POST", "/v1/events", ev(1), token=key, base=other_url)[0] for _ in range(4)
        ] == [202] * 4
    finally:
        first.stop()
        other.stop()


def test_large_batches_past_the_process_limit_wait_then_get_503_busy(stack: Stack) -> None:
    tenant, key = stack.create_tenant(quota=10**9)
    api, url = stack.start_api(processes=1, FLAGMETER_LARGE_BATCHES_IN_FLIGHT="1")
    prefix = uuid.uuid4().hex + "-" + "x" * 40
    big: list[dict[str, object]] = []
    while len(orjson.dumps(big)) <= LARGE_BODY:  # just over the size that takes a slot
        big.append({"id": f"{prefix}-{len(big):06d}", "feature": "chat", "tokens": 1})
    # A slow client holds the one slot: the headers of a large batch and the start of its body.
    slow = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    try:
        slow.sendall(
            f"POST /v1/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n[".encode()
        )
        time.sleep(0.5)
        started = time.monotonic()
        status, body, headers = stack.request("POST", "/v1/events", big, token=key, base=url)
        assert status == 503 and body["error"]["code"] == "busy", body
        assert headers["Retry-After"] == "1" and time.monotonic() - started >= 4  # it waited for a slot
        # Small requests never wait for large ones.
        assert stack.request("POST", "/v1/events", ev(3), token=key, base=url)[0] == 202
    finally:
        slow.close()
    time.sleep(0.5)
    status, body, _ = stack.request("POST", "/v1/events", big, token=key, base=url)
    assert status == 202 and body["accepted"] == len(big)
    stack.wait_used(tenant, len(big) + 3)
    api.stop()


# -- usage ----------------------------------------------------------------------------------


def test_usage_of_unknown_tenant_is_404_for_the_admin(stack: Stack) -> None:
    status, body, _ = stack.request("GET", "/v1/usage/nobody-here")
    assert status == 404 and body["error"]["code"] == "unknown_tenant"


def test_usage_over_quota_shows_percent_above_100_and_zero_remaining(stack: Stack) -> None:
    tenant, key = stack.create_tenant(quota=3)
    stack.request("POST", "/v1/events", ev(4), token=key)
    usage = stack.wait_used(tenant, 4)
    assert usage["remaining"] == 0 and usage["percent"] == 133.33


def test_series_by_window_and_feature(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    events = [
        ev(1, "a", timestamp=base.isoformat()),
        ev(2, "a", timestamp=(base + timedelta(minutes=1)).isoformat()),
        ev(4, "b", timestamp=(base + timedelta(minutes=1, seconds=5)).isoformat()),
    ]
    stack.request("POST", "/v1/events", events, token=key)
    stack.wait_used(tenant, 7)
    start = base.isoformat().replace("+00:00", "Z")
    end = (base + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    status, body, _ = stack.request(
        "GET", f"/v1/usage/{tenant}/series?window=minute&from={start}&to={end}", token=key
    )
    assert status == 200
    assert [(r["tokens"], r["events"]) for r in body["rows"]] == [(1, 1), (6, 2)]
    status, body, _ = stack.request(
        "GET", f"/v1/usage/{tenant}/series?window=minute&feature=a&from={start}&to={end}"
    )
    assert [r["tokens"] for r in body["rows"]] == [1, 2]
    status, body, _ = stack.request("GET", f"/v1/usage/{tenant}/series", token=key)
    assert body["window"] == "hour" and sum(r["tokens"] for r in body["rows"]) == 7


@pytest.mark.parametrize(
    "query",
    [
        "window=week",
        "from=yesterday",
        "to=2020-01-01T00:00:00Z",
        "feature=bad%20feature",
        "window=minute&from=2025-01-01T00:00:00Z&to=2025-12-01T00:00:00Z",
    ],
)
def test_series_bad_parameters_are_422(stack: Stack, query: str) -> None:
    tenant, key = stack.create_tenant()
    status, body, _ = stack.request("GET", f"/v1/usage/{tenant}/series?{query}", token=key)
    assert status == 422 and body["error"]["code"] == "invalid_parameter"


# -- operations ------------------------------------------------------------------------------


def test_health_ready_metrics_and_openapi_need_no_token(stack: Stack) -> None:
    assert stack.request("GET", "/health", token=None)[1] == {"status": "ok"}
    assert stack.request("GET", "/ready", token=None)[1]["status"] == "ready"
    status, spec, _ = stack.request("GET", "/openapi.json", token=None)
    assert status == 200 and spec["openapi"].startswith("3.")


def test_unknown_route_and_method_are_json_errors(stack: Stack) -> None:
    status, body, _ = stack.request("GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = stack.request("PUT", "/v1/events", {})
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/tenants/a%00b"),
        ("PATCH", "/v1/tenants/a%00b"),
        ("GET", "/v1/usage/a%00b"),
        ("GET", "/v1/tenants/Acme/keys"),
        ("DELETE", "/v1/tenants/{tenant}/keys/key%00"),
        ("GET", "/v1/tenants/a%2Fb/alerts"),
    ],
)
def test_a_path_id_of_another_shape_is_404_before_any_handler(stack: Stack, method: str, path: str) -> None:
    tenant, _ = stack.create_tenant()
    body = {"name": "x"} if method == "PATCH" else None
    status, body, _ = stack.request(method, path.format(tenant=tenant), body)
    assert status == 404 and body["error"]["code"] == "not_found", body


def test_the_openapi_documents_the_id_and_name_rules_the_api_applies() -> None:
    document = orjson.loads((resources.files("flagmeter") / "openapi.json").read_bytes())
    operations = [op for item in document["paths"].values() for op in item.values()]
    params = {
        (p["name"], p["schema"].get("pattern"))
        for op in operations
        for p in op.get("parameters", [])
        if p["in"] == "path"
    }
    assert {pattern for name, pattern in params if name == "tenant"} == {f"^{TENANT_ID.pattern}$"}
    assert {pattern for name, pattern in params if name == "key_id"} == {f"^{KEY_ID}$"}
    bodies = [document["paths"]["/v1/tenants"]["post"], document["paths"]["/v1/tenants/{tenant}"]["patch"]]
    for op in bodies:
        name = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["name"]
        for code in range(0x300):  # every control character and then some, each in a name
            text = f"a{chr(code)}b"
            assert bool(re.fullmatch(name["pattern"], text)) == bool(TENANT_NAME.fullmatch(text)), hex(code)


def test_request_id_is_echoed(stack: Stack) -> None:
    _, _, headers = stack.request("GET", "/health", headers={"X-Request-ID": "abc-123"})
    assert headers["X-Request-ID"] == "abc-123"


def test_metrics_are_summed_across_api_processes(stack: Stack) -> None:
    import urllib.request

    def accepted() -> float:
        text = urllib.request.urlopen(f"{stack.api_url}/metrics").read().decode()
        line = next(row for row in text.splitlines() if row.startswith("flagmeter_events_accepted_total "))
        return float(line.split()[1])

    _, key = stack.create_tenant()
    before = accepted()
    for _ in range(20):  # new connections spread over both processes
        stack.request("POST", "/v1/events", ev(1), token=key)
    assert accepted() - before == 20
