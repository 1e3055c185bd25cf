"""Dependencies going away: PostgreSQL down keeps ingest going; Redis down answers 503 and accepts nothing."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from stacklib import Stack, fresh_database, wait_until


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
        # Counted, seen in the database: not through `url`, whose usage read below must find no cached
        # answer, nor through the shared API, which is on another stream and may cache an early 0.
        wait_until(lambda: stack.counted_rows(tenant) == 1, 20, "the first event to be counted")
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
        # Read through the API on the worker's stream (see Stack.usage); its pool may answer 503 (retry
        # later) until it has reconnected.
        wait_until(
            lambda: stack.request("GET", f"/v1/usage/{tenant}", base=url)[0] == 200, 30, "usage read again"
        )
        stack.wait_used(tenant, 1 + accepted, timeout=60, base=url)
    finally:
        worker.stop()
        api.stop()


@pytest.mark.slow
def test_redis_down_answers_503_with_retry_after_and_accepts_nothing(stack: Stack) -> None:
    tenant, key = stack.create_tenant()
    for _ in range(6):  # every API process has its append connection open when Redis goes away
        assert stack.request("POST", "/v1/events", ev(1), token=key)[0] == 202
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
    while stack.request("GET", "/ready", token=None)[0] != 200:
        assert time.monotonic() < deadline, "the API did not see Redis come back"
        time.sleep(0.3)
    for _ in range(6):  # every API process replaces the connection Redis closed, without a 503
        status, body, _ = stack.request("POST", "/v1/events", ev(1), token=key)
        assert status == 202, body
    stack.wait_used(tenant, 12)
    time.sleep(1)
    assert stack.usage(tenant)["used"] == 12  # the 503'd event was never half-accepted


@pytest.mark.slow
def test_a_worker_started_while_redis_is_down_counts_once_it_returns(stack: Stack) -> None:
    env = {"FLAGMETER_STREAM": f"test:{uuid.uuid4().hex[:8]}"}  # no consumer group yet: the worker makes it
    tenant, key = stack.create_tenant()
    stack.servers.stop_redis()
    try:
        worker, _ = stack.start_worker(**env)
        time.sleep(3)  # its start, and a few reads, meet no Redis
        assert worker.popen.poll() is None, "the worker exited"
    finally:
        stack.servers.start_redis()
    api, url = stack.start_api(processes=1, until="/ready", **env)
    try:
        for tokens in (4, 5):
            assert stack.request("POST", "/v1/events", ev(tokens), token=key, base=url)[0] == 202
        stack.wait_used(tenant, 9, timeout=30, base=url)
    finally:
        worker.stop()
        api.stop()


@pytest.mark.slow
def test_a_worker_ahead_of_the_schema_waits_for_migrate_instead_of_dead_lettering(stack: Stack) -> None:
    import subprocess
    import sys

    import psycopg2
    import redis

    url = fresh_database(stack.database_url)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_URL": url,
        "FLAGMETER_STREAM": stream,
        "FLAGMETER_CLAIM_IDLE_MS": "200",
        "FLAGMETER_MAX_DELIVERIES": "2",
    }
    client = redis.Redis.from_url(stack.redis_url)
    client.xgroup_create(stream, "flagmeter-workers", id="0", mkstream=True)
    now = int(time.time() * 1000)
    client.xadd(stream, {"e": f'["early","e1","chat",12,{now},{now}]'})
    worker, metrics_url = stack.start_worker(**env)
    try:
        time.sleep(4)  # many reclaim rounds: an entry-level failure would be dead-lettered by now
        assert client.xlen(f"{stream}:dead") == 0
        assert stack.request("GET", "/ready", token=None, base=metrics_url)[0] == 503
        # Paused, so it cannot retry between the migration and the tenant's creation (a tenant
        # cannot exist before the schema; in between, the entry would rightly be an unknown tenant's).
        worker.popen.send_signal(signal.SIGSTOP)
        try:
            subprocess.run(
                [sys.executable, "-m", "flagmeter.cli", "migrate"],
                env={**stack.env, **env},
                check=True,
                capture_output=True,
            )
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO tenants (id, name, monthly_quota) VALUES ('early', 'Early', 100)")
            conn.close()
        finally:
            worker.popen.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while client.xlen(stream) > 0:
            assert time.monotonic() < deadline, "the held entry was never counted after migrate"
            time.sleep(0.2)
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT sum(tokens) FROM period_totals WHERE tenant_id = 'early'")
            assert cur.fetchone() == (12,)
        conn.close()
        assert client.xlen(f"{stream}:dead") == 0
    finally:
        worker.stop()


def test_appends_go_on_after_redis_forgets_its_scripts(stack: Stack) -> None:
    import redis

    tenant, key = stack.create_tenant()
    assert stack.request("POST", "/v1/events", ev(1), token=key)[0] == 202
    redis.Redis.from_url(stack.redis_url).script_flush()  # as after a Redis restart without persistence
    for _ in range(4):  # every API process meets the missing script
        status, body, _ = stack.request("POST", "/v1/events", ev(2), token=key)
        assert status == 202, body
    stack.wait_used(tenant, 9)
