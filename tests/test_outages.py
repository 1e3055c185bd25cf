"""Dependencies going away: PostgreSQL down keeps ingest going; Redis down answers 503 and accepts nothing."""

from __future__ import annotations

import time
import uuid

import pytest

from conftest import Stack


def ev(tokens: int) -> dict[str, object]:
    return {"id": uuid.uuid4().hex, "feature": "chat", "tokens": tokens}


@pytest.mark.slow
def test_events_posted_while_postgres_is_down_are_counted_when_it_returns(stack: Stack) -> None:
    env = {"FLAGMETER_STREAM": f"test:{uuid.uuid4().hex[:8]}"}
    tenant, key = stack.create_tenant()
    api, url = stack.start_api(processes=1, **env)
    worker, _ = stack.start_worker(**env)
    try:
        assert (
            stack.request("POST", "/v1/events", ev(1), token=key, base=url)[0] == 202
        )  # warms the key cache
        stack.wait_used(tenant, 1)
        stack.servers.stop_postgres()
        try:
            time.sleep(5)  # past the key cache's lifetime: the stale entry must still be honoured
            accepted = 0
            for _ in range(40):
                status, body, _ = stack.request("POST", "/v1/events", [ev(2), ev(3)], token=key, base=url)
                assert status == 202, body
                accepted += 5
            status, body, _ = stack.request("GET", "/ready", token=None, base=url)
            assert status == 503 and body["unreachable"] == ["postgres"]
            status, body, headers = stack.request("GET", f"/v1/usage/{tenant}", token=key, base=url)
            assert status == 503 and headers["Retry-After"]
        finally:
            stack.servers.start_postgres()
        stack.wait_used(tenant, 1 + accepted, timeout=60)
    finally:
        worker.stop()
        api.stop()


@pytest.mark.slow
def test_redis_down_answers_503_with_retry_after_and_accepts_nothing(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    stack.servers.stop_redis()
    try:
        status, body, headers = stack.request("POST", "/v1/events", ev(50), token=key)
        assert status == 503 and body["error"]["code"] == "unavailable"
        assert int(headers["Retry-After"]) >= 1
        status, body, _ = stack.request("GET", "/ready", token=None)
        assert status == 503 and body["unreachable"] == ["redis"]
    finally:
        stack.servers.start_redis()
    deadline = time.monotonic() + 20
    while stack.request("POST", "/v1/events", ev(1), token=key)[0] != 202:
        assert time.monotonic() < deadline, "the API did not recover after Redis came back"
        time.sleep(0.3)
    stack.wait_used(tenant, 1)
    time.sleep(1)
    assert stack.usage(tenant)["used"] == 1  # the 503'd event was never half-accepted
