"""Quota checks and reservations (issue 12) through the running service, on real Redis and PostgreSQL.

One isolated deployment (own database and Redis db): two single-process APIs, so a race spreads over
two processes, and one worker the tests may stop (SIGSTOP), kill or restart.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from alerts.local_env import LocalEnv
from flagmeter.quota_figures import QuotaKeys
from stacklib import Stack, wait_until


@pytest.fixture(scope="module")
def env(stack: Stack) -> Iterator[LocalEnv]:
    deployment = LocalEnv.create(stack)
    deployment.start_api()
    process, second_url = stack.start_api(processes=1, **deployment.env)
    deployment.processes.append(process)
    deployment.second_url = second_url  # type: ignore[attr-defined]
    deployment.worker = deployment.start_worker()  # type: ignore[attr-defined]
    yield deployment
    deployment.stop()


def _tenant(env: LocalEnv, quota: int = 1000, **extra: Any) -> tuple[str, str]:
    tenant = env.create_tenant(quota=quota, **extra)
    status, body, _ = env.request("POST", f"/v1/tenants/{tenant}/keys", {"name": "test"})
    assert status == 201, body
    return tenant, body["api_key"]


def _check(env: LocalEnv, tenant: str, tokens: int | None = None, **kwargs: Any) -> dict[str, Any]:
    query = "" if tokens is None else f"?tokens={tokens}"
    status, body, _ = env.request("GET", f"/v1/usage/{tenant}/check{query}", **kwargs)
    assert status == 200, body
    return dict(body)


def _reserve(env: LocalEnv, key: str, tokens: int, **fields: Any) -> tuple[int, Any]:
    status, body, _ = env.request("POST", "/v1/reservations", {"tokens": tokens, **fields}, token=key)
    return status, body


def _post(env: LocalEnv, key: str, *events: dict[str, Any]) -> None:
    status, body, _ = env.request("POST", "/v1/events", list(events), token=key)
    assert status == 202, body


def _event(tokens: int, **fields: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "feature": "chat", "tokens": tokens, **fields}


def _counted(env: LocalEnv, tenant: str) -> int:
    status, body, _ = env.request("GET", f"/v1/usage/{tenant}")
    assert status == 200, body
    return int(body["used"])


def _backlog(env: LocalEnv) -> int:
    client = redis.Redis.from_url(env.env["REDIS_URL"])
    try:
        return int(client.xlen("flagmeter:events"))
    finally:
        client.close()


def _caught_up(env: LocalEnv, tenant: str, used: int) -> None:
    """Until the worker has counted every entry and /v1/usage shows `used`; check's `used` is then equal."""
    wait_until(lambda: _backlog(env) == 0 and _counted(env, tenant) == used, 20, f"{tenant} counted {used}")
    assert _check(env, tenant)["used"] == used


def test_check_answers_the_figures_of_the_current_period(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _post(env, key, _event(300))
    body = _check(env, tenant, 600, token=key)
    usage = env.request("GET", f"/v1/usage/{tenant}")[1]
    assert body["tenant"] == tenant and body["quota"] == 1000
    assert (body["used"], body["reserved"], body["remaining"]) == (300, 0, 700)
    assert body["allowed"] is True
    assert body["period"] == usage["period"]
    assert _check(env, tenant, 701)["allowed"] is False
    assert _check(env, tenant)["allowed"] is True  # tokens defaults to 0


def test_check_is_for_the_tenants_own_key_or_the_admin(env: LocalEnv) -> None:
    tenant, key = _tenant(env)
    _, other_key = _tenant(env)
    assert env.request("GET", f"/v1/usage/{tenant}/check", token=key)[0] == 200
    assert env.request("GET", f"/v1/usage/{tenant}/check")[0] == 200
    assert env.request("GET", f"/v1/usage/{tenant}/check", token=other_key)[0] == 403
    assert env.request("GET", f"/v1/usage/{tenant}/check", token=None)[0] == 401
    assert env.request("GET", "/v1/usage/no-such-tenant/check")[0] == 404


def test_check_rejects_a_tokens_parameter_that_is_not_a_count(env: LocalEnv) -> None:
    tenant, _ = _tenant(env)
    for bad in ("-1", "abc", "1.5", str(10**9 + 1)):
        status, body, _ = env.request("GET", f"/v1/usage/{tenant}/check?tokens={bad}")
        assert (status, body["error"]["code"]) == (422, "invalid_tokens"), bad


def test_check_counts_accepted_events_while_the_worker_is_stopped(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10_000)
    worker = env.worker  # type: ignore[attr-defined]
    worker.popen.send_signal(signal.SIGSTOP)
    try:
        for n in (100, 200, 300):
            _post(env, key, _event(n))
            assert _counted(env, tenant) == 0
        assert _check(env, tenant)["used"] == 600
    finally:
        worker.popen.send_signal(signal.SIGCONT)
    _caught_up(env, tenant, 600)


def test_check_equals_usage_once_caught_up_after_client_retries(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10_000)
    events = [_event(n) for n in (10, 20, 30)]
    for _ in range(3):  # the same ids again: a client retrying
        _post(env, key, *events)
    assert _check(env, tenant)["used"] >= 60  # duplicates may count until the ledger drops them
    _caught_up(env, tenant, 60)


def test_twenty_parallel_reservations_over_two_processes_grant_exactly_ten(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10_000)
    bases = [env.api_url, env.second_url]  # type: ignore[attr-defined]

    def reserve(i: int) -> int:
        body = {"tokens": 1000}
        return int(env.stack.request("POST", "/v1/reservations", body, token=key, base=bases[i % 2])[0])

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(reserve, range(20)))
    assert sorted(statuses) == [201] * 10 + [402] * 10
    body = _check(env, tenant)
    assert (body["reserved"], body["remaining"]) == (10_000, 0)


def test_a_reservation_beyond_what_remains_is_refused_with_the_numbers_and_holds_nothing(
    env: LocalEnv,
) -> None:
    tenant, key = _tenant(env, quota=1000)
    _post(env, key, _event(400))
    assert _reserve(env, key, 500)[0] == 201
    status, body = _reserve(env, key, 101)
    assert status == 402
    error = body["error"]
    assert error["code"] == "quota_exceeded"
    assert (error["quota"], error["used"], error["reserved"], error["remaining"]) == (1000, 400, 500, 100)
    assert error["requested"] == 101
    assert _check(env, tenant)["reserved"] == 500


def test_a_granted_reservation_answers_its_hold_and_what_remains(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    status, body = _reserve(env, key, 250, ttl_seconds=60, id="call-1")
    assert status == 201
    assert (body["id"], body["tenant"], body["tokens"], body["remaining"]) == ("call-1", tenant, 250, 750)
    assert body["expires_at"].endswith("Z")
    assert _check(env, tenant)["reserved"] == 250


def test_the_same_reservation_id_returns_the_same_hold_and_holds_nothing_more(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    first = _reserve(env, key, 300, id="same")
    again = _reserve(env, key, 300, id="same")
    assert (first[0], again[0]) == (201, 200)
    assert again[1]["expires_at"] == first[1]["expires_at"]
    assert _check(env, tenant)["reserved"] == 300


def test_the_admin_reserves_for_a_named_tenant_and_a_key_only_for_its_own(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    other, _ = _tenant(env)
    assert _reserve(env, "test-admin-token-0123456789", 100, tenant=tenant)[0] == 201
    assert _reserve(env, "test-admin-token-0123456789", 100)[1]["error"]["code"] == "missing_tenant"
    assert _reserve(env, key, 100, tenant=other)[0] == 403
    assert _reserve(env, key, 100, tenant=tenant)[0] == 201
    assert env.request("POST", "/v1/reservations", {"tokens": 1}, token=None)[0] == 401
    assert _check(env, tenant)["reserved"] == 200


def test_deleting_a_reservation_frees_its_tokens_at_once(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _reserve(env, key, 600, id="long-call")
    status, body, _ = env.request("DELETE", "/v1/reservations/long-call", token=key)
    assert (status, body) == (204, None)
    assert _check(env, tenant)["reserved"] == 0
    assert env.request("DELETE", "/v1/reservations/long-call", token=key)[0] == 404


def test_deleting_an_unknown_or_another_tenants_reservation_is_404(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _, other_key = _tenant(env)
    _reserve(env, key, 100, id="mine")
    assert env.request("DELETE", "/v1/reservations/nothing-like-it", token=key)[0] == 404
    assert env.request("DELETE", "/v1/reservations/mine", token=other_key)[0] == 404
    assert env.request("DELETE", f"/v1/reservations/mine?tenant={tenant}", token=other_key)[0] == 404
    assert _check(env, tenant)["reserved"] == 100
    assert env.request("DELETE", f"/v1/reservations/mine?tenant={tenant}")[0] == 204


def test_an_event_naming_a_reservation_settles_it_and_counts_its_own_tokens(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _reserve(env, key, 500, id="llm-call")
    _post(env, key, _event(320, reservation="llm-call"))
    body = _check(env, tenant)
    assert (body["used"], body["reserved"], body["remaining"]) == (320, 0, 680)


def test_a_reservation_settles_once_and_later_events_naming_it_count_as_usual(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _reserve(env, key, 500, id="once")
    _reserve(env, key, 100, id="other")
    _post(env, key, _event(50, reservation="once"))
    _post(env, key, _event(70, reservation="once"))
    body = _check(env, tenant)
    assert (body["used"], body["reserved"]) == (120, 100)
    _caught_up(env, tenant, 120)


def test_an_unsettled_hold_vanishes_at_expires_at(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _reserve(env, key, 400, ttl_seconds=1)
    assert _check(env, tenant)["reserved"] == 400
    wait_until(lambda: _check(env, tenant)["reserved"] == 0, 5, "the hold to expire")
    assert _reserve(env, key, 1000)[0] == 201


def _hvals_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hvals", {}).get("calls", 0))


def test_a_check_reads_the_total_of_the_holds_not_every_hold(env: LocalEnv) -> None:
    """Checks and grants run inside Redis one at a time: summing every live hold at each (HVALS) made
    them dearer with every hold (~150 us of Valkey's CPU per call at 500)."""
    tenant, key = _tenant(env, quota=10_000)
    for n in range(40):
        assert _reserve(env, key, n + 1, id=f"hold-{n}")[0] == 201
    client = redis.Redis.from_url(env.env["REDIS_URL"])
    try:
        before = _hvals_calls(client)
        assert _check(env, tenant)["reserved"] == sum(range(1, 41))
        assert _reserve(env, key, 5, id="one-more")[0] == 201
        assert env.request("DELETE", "/v1/reservations/hold-0", token=key)[0] == 204
        _post(env, key, _event(9, reservation="hold-1"))
        assert _check(env, tenant)["reserved"] == sum(range(1, 41)) + 5 - 1 - 2
        assert _hvals_calls(client) == before
    finally:
        client.close()


def test_holds_changed_by_a_version_without_their_total_are_summed_afresh(env: LocalEnv) -> None:
    """A version before the total (a rolling upgrade's older replica, or after a rollback) changes the
    holds hash and the expiry set only: the total is summed again once the holds' count disagrees with
    it, and only then; the last hold gone, no key is left."""
    tenant, key = _tenant(env, quota=1000)
    keys = QuotaKeys.beside(env.env.get("FLAGMETER_STREAM", "flagmeter:events"))
    holds, expiry, held = keys.of_holds(tenant)
    far = int(time.time() * 1000) + 600_000
    client = redis.Redis.from_url(env.env["REDIS_URL"])
    try:
        client.hset(holds, mapping={"older-a": 300, "older-b": 200})  # as the older version writes them
        client.zadd(expiry, {"older-a": far, "older-b": far})
        before = _hvals_calls(client)
        body = _check(env, tenant)
        assert (body["reserved"], body["remaining"]) == (500, 500)
        assert _reserve(env, key, 501)[0] == 402
        assert _reserve(env, key, 100, id="newer")[0] == 201
        assert _check(env, tenant)["reserved"] == 600
        assert _hvals_calls(client) == before + 1  # summed once, then kept

        client.hdel(holds, "older-a", "older-b")  # the older version releases two and holds another
        client.zrem(expiry, "older-a", "older-b")
        client.hset(holds, "older-c", 50)
        client.zadd(expiry, {"older-c": far})
        assert _check(env, tenant)["reserved"] == 150
        assert _hvals_calls(client) == before + 2
        for ident in ("newer", "older-c"):
            assert env.request("DELETE", f"/v1/reservations/{ident}", token=key)[0] == 204
        assert _check(env, tenant)["reserved"] == 0
        assert client.exists(holds, expiry, held) == 0
    finally:
        client.close()


def test_a_body_that_is_not_json_is_400_and_holds_nothing(env: LocalEnv) -> None:
    tenant, key = _tenant(env)
    status, body, _ = env.request("POST", "/v1/reservations", raw=b"{tokens: 5", token=key)
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert _check(env, tenant)["reserved"] == 0


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"tokens": 0}, "invalid_tokens"),
        ({"tokens": 10**9 + 1}, "invalid_tokens"),
        ({"tokens": "5"}, "invalid_tokens"),
        ({}, "invalid_tokens"),
        ({"tokens": 5, "ttl_seconds": 0}, "invalid_ttl"),
        ({"tokens": 5, "ttl_seconds": 3601}, "invalid_ttl"),
        ({"tokens": 5, "id": ""}, "invalid_id"),
        ({"tokens": 5, "id": "x" * 129}, "invalid_id"),
        ({"tokens": 5, "id": "caf\u00e9"}, "invalid_id"),
        ({"tokens": 5, "tenant": "Not A Slug"}, "invalid_tenant"),
    ],
)
def test_an_invalid_reservation_field_is_422_with_its_code_and_holds_nothing(
    env: LocalEnv, fields: dict[str, Any], code: str
) -> None:
    tenant, key = _tenant(env)
    status, body, _ = env.request("POST", "/v1/reservations", fields, token=key)
    assert (status, body["error"]["code"]) == (422, code)
    assert code in [problem["code"] for problem in body["invalid"]]
    assert _check(env, tenant)["reserved"] == 0


def test_every_invalid_field_is_reported_with_its_own_code(env: LocalEnv) -> None:
    _, key = _tenant(env)
    status, body, _ = env.request("POST", "/v1/reservations", {"tokens": -1, "ttl_seconds": "x"}, token=key)
    assert status == 422
    assert {(p["field"], p["code"]) for p in body["invalid"]} == {
        ("tokens", "invalid_tokens"),
        ("ttl_seconds", "invalid_ttl"),
    }


def test_an_event_naming_an_invalid_reservation_is_rejected(env: LocalEnv) -> None:
    _, key = _tenant(env)
    status, body, _ = env.request("POST", "/v1/events", _event(5, reservation=""), token=key)
    assert (status, body["error"]["code"]) == (422, "invalid_reservation")


def test_the_active_reservations_are_listed_soonest_to_expire_first(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=1000)
    _reserve(env, key, 100, id="late", ttl_seconds=600)
    _reserve(env, key, 200, id="soon", ttl_seconds=60)
    status, body, _ = env.request("GET", "/v1/reservations", token=key)
    assert status == 200
    assert [(r["id"], r["tokens"]) for r in body["reservations"]] == [("soon", 200), ("late", 100)]
    assert env.request("GET", f"/v1/reservations?tenant={tenant}")[1] == body


def test_check_rebuilds_from_postgres_and_the_stream_when_redis_lost_the_figures(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10_000)
    _post(env, key, _event(1000))
    _caught_up(env, tenant, 1000)
    worker = env.worker  # type: ignore[attr-defined]
    worker.popen.send_signal(signal.SIGSTOP)
    try:
        _post(env, key, _event(234))  # in the stream, not counted
        client = redis.Redis.from_url(env.env["REDIS_URL"])
        lost = [k for k in client.scan_iter("flagmeter:events:quota:*") if b":holds:" not in k]
        client.delete(*lost)
        client.close()
        assert _check(env, tenant)["used"] == 1234
    finally:
        worker.popen.send_signal(signal.SIGCONT)
    _caught_up(env, tenant, 1234)


def test_check_equals_usage_after_a_worker_killed_mid_batch(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10**8)
    worker = env.worker  # type: ignore[attr-defined]
    worker.popen.send_signal(signal.SIGSTOP)
    for i in range(20):
        _post(env, key, *[_event(i + 1) for _ in range(200)])
    worker.popen.send_signal(signal.SIGCONT)
    time.sleep(0.3)  # somewhere in its batches
    worker.stop(signal.SIGKILL)
    env.worker = env.start_worker(FLAGMETER_CLAIM_IDLE_MS="500")  # type: ignore[attr-defined]
    expected = 200 * sum(range(1, 21))
    assert _check(env, tenant)["used"] >= expected
    _caught_up(env, tenant, expected)


def test_check_follows_a_billing_day_change(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10**6)
    _post(env, key, _event(500))
    _caught_up(env, tenant, 500)
    before = _check(env, tenant)["period"]
    day = int(before["start"][8:10])
    env.patch(tenant, billing_day=day % 28 + 1)
    # The tenant cache holds the old billing day up to 2 s; then check's period is /v1/usage's.
    wait_until(
        lambda: _check(env, tenant)["period"] == env.request("GET", f"/v1/usage/{tenant}")[1]["period"],
        10,
        "the new period",
    )
    assert _check(env, tenant)["used"] == _counted(env, tenant)


def _reservation_counts(env: LocalEnv) -> dict[str, float]:
    text = env.stack.request("GET", "/metrics", token=None, base=env.api_url)[1]
    counts = {}
    for line in text.splitlines():
        if line.startswith("flagmeter_reservations_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('outcome="')[1].split('"')[0]] = float(value)
    return counts


def test_reservation_outcomes_are_counted_in_prometheus_from_zero(env: LocalEnv) -> None:
    before = _reservation_counts(env)
    assert set(before) == {"granted", "refused", "settled", "released", "expired"}
    tenant, key = _tenant(env, quota=100)
    for ident in ("a", "b", "c"):
        env.request("POST", "/v1/reservations", {"tokens": 30, "id": ident, "ttl_seconds": 1}, token=key)
    _reserve(env, key, 50)  # refused: 10 remain
    _post(env, key, _event(5, reservation="a"))
    env.request("DELETE", "/v1/reservations/b", token=key)
    wait_until(lambda: _check(env, tenant)["reserved"] == 0, 5, "c to expire")
    after = _reservation_counts(env)
    assert {k: after[k] - before[k] for k in after} == {
        "granted": 3,
        "refused": 1,
        "settled": 1,
        "released": 1,
        "expired": 1,
    }


def test_holds_and_uncounted_tokens_survive_a_redis_restart(env: LocalEnv) -> None:
    tenant, key = _tenant(env, quota=10_000)
    worker = env.worker  # type: ignore[attr-defined]
    worker.popen.send_signal(signal.SIGSTOP)
    try:
        _post(env, key, _event(700))
        _reserve(env, key, 2000, id="through-restart")
        servers = env.stack.servers
        servers.stop_redis()  # a clean shutdown: the AOF holds everything acknowledged
        servers.start_redis()

        def figures() -> tuple[int, int] | None:
            status, body, _ = env.request("GET", f"/v1/usage/{tenant}/check")
            return (body["used"], body["reserved"]) if status == 200 else None

        wait_until(lambda: figures() is not None, 20, "the API to reach Redis again")
        assert figures() == (700, 2000)
    finally:
        worker.popen.send_signal(signal.SIGCONT)
    _caught_up(env, tenant, 700)
