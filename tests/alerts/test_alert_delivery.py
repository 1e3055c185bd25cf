"""Quota alerts end to end: real API and worker processes, real PostgreSQL/Redis, a real HTTP receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from local_env import LocalEnv, Receiver, Reply, wait_until


def _targets(env: LocalEnv, receiver: Receiver, tenant: str, *, slack: bool = True) -> dict[str, Any]:
    """Point the tenant's Slack URL and signed webhook at the receiver; returns the PATCH answer."""
    changes: dict[str, Any] = {"webhook_url": receiver.url(f"/hook/{tenant}")}
    if slack:
        changes["slack_webhook_url"] = receiver.url(f"/slack/{tenant}")
    return env.patch(tenant, **changes)


def _deliveries(env: LocalEnv, tenant: str, target: str) -> list[dict[str, Any]]:
    return [d for alert in env.alerts(tenant) for d in alert["deliveries"] if d["target"] == target]


def _wait_finished(
    env: LocalEnv, tenant: str, target: str, count: int = 1, timeout: float = 20
) -> list[dict[str, Any]]:
    def finished() -> bool:
        found = _deliveries(env, tenant, target)
        return len(found) >= count and all(d["status"] != "pending" for d in found)

    wait_until(finished, timeout, f"{count} finished {target} deliveries for {tenant}")
    return _deliveries(env, tenant, target)


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec independently of flagmeter.alerts."""
    lower = {k.lower(): v for k, v in headers.items()}
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1) for s in lower["webhook-signature"].split(" ")]
    fresh = abs(time.time() - int(lower["webhook-timestamp"])) < 300
    return fresh and any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in offered)


def test_jump_past_both_thresholds_in_one_batch_sends_both_alerts_once(
    alert_env: LocalEnv, receiver: Receiver
) -> None:
    tenant = alert_env.create_tenant(quota=1000)
    _targets(alert_env, receiver, tenant)
    alert_env.post(tenant, 100)
    alert_env.wait_total(tenant, 100)
    alert_env.post(tenant, 600, 500)  # 10 % -> 120 % in one request
    slack = receiver.wait(f"/slack/{tenant}", 2)
    hooks = receiver.wait(f"/hook/{tenant}", 2)

    alert_env.post(tenant, 50)  # past both already: nothing more
    alert_env.wait_total(tenant, 1250)
    time.sleep(1.0)
    assert len(receiver.at(f"/slack/{tenant}")) == 2
    assert len(receiver.at(f"/hook/{tenant}")) == 2
    assert sorted(h.json()["data"]["threshold"] for h in hooks) == [80, 100]
    message = slack[0].json()
    assert tenant in message["text"] and "1,200 / 1,000 tokens" in message["text"]
    assert f"https://flagmeter.example/tenants/{tenant}" in message["text"]
    assert any("Period ends" in b.get("text", {}).get("text", "") for b in message["blocks"])
    alerts = alert_env.alerts(tenant)
    assert sorted(a["threshold"] for a in alerts) == [80, 100]
    assert all(d["status"] == "delivered" for a in alerts for d in a["deliveries"])


def test_webhook_signature_verifies_with_an_independent_implementation(
    alert_env: LocalEnv, receiver: Receiver
) -> None:
    tenant = alert_env.create_tenant(quota=1000)
    secret = _targets(alert_env, receiver, tenant, slack=False)["webhook_secret"]
    assert secret.startswith("whsec_")
    alert_env.post(tenant, 850)
    (hook,) = receiver.wait(f"/hook/{tenant}", 1)

    assert verify_standard_webhook(secret, hook.headers, hook.body)
    assert not verify_standard_webhook(secret, hook.headers, hook.body + b" ")
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert not verify_standard_webhook(other, hook.headers, hook.body)
    payload = hook.json()
    assert payload["type"] == "quota.threshold_crossed"
    assert payload["data"] | {"period": None, "dashboard_url": None} == payload["data"] | {
        "tenant": tenant,
        "threshold": 80,
        "used": 850,
        "quota": 1000,
        "percent": 85.0,
        "period": None,
        "dashboard_url": None,
    }
    _, tenant_doc, _ = alert_env.request("GET", f"/v1/tenants/{tenant}")
    assert "webhook_secret" not in tenant_doc and tenant_doc["webhook_url"].endswith(f"/hook/{tenant}")


def test_429_waits_for_retry_after(alert_env: LocalEnv, receiver: Receiver) -> None:
    tenant = alert_env.create_tenant(quota=1000)
    receiver.script(f"/hook/{tenant}", Reply(429, {"Retry-After": "2"}))
    _targets(alert_env, receiver, tenant, slack=False)
    alert_env.post(tenant, 800)
    first, second = receiver.wait(f"/hook/{tenant}", 2)

    assert second.at - first.at >= 1.9  # backoff alone would retry after ~0.3 s
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    (delivery,) = _wait_finished(alert_env, tenant, "webhook")
    assert delivery["status"] == "delivered"
    assert [(a["http_status"], a["outcome"]) for a in delivery["history"]] == [
        (429, "retry"),
        (200, "delivered"),
    ]


def test_server_errors_and_timeouts_are_retried_until_delivered(
    alert_env: LocalEnv, receiver: Receiver
) -> None:
    tenant = alert_env.create_tenant(quota=1000)
    # The third answer comes after the worker's 1 s timeout.
    receiver.script(f"/slack/{tenant}", Reply(503), Reply(500), Reply(200, delay=1.6))
    alert_env.patch(tenant, slack_webhook_url=receiver.url(f"/slack/{tenant}"))
    alert_env.post(tenant, 900)
    receiver.wait(f"/slack/{tenant}", 4)

    (delivery,) = _wait_finished(alert_env, tenant, "slack")
    assert delivery["status"] == "delivered"
    assert [a["http_status"] for a in delivery["history"]] == [503, 500, None, 200]
    assert [a["outcome"] for a in delivery["history"]] == ["retry", "retry", "retry", "delivered"]
    assert "timed out" in delivery["history"][2]["error"]
    assert all(a["endpoint"] == f"http://127.0.0.1:{receiver.port}" for a in delivery["history"])


def test_retries_stop_after_the_last_attempt(alert_env: LocalEnv, receiver: Receiver) -> None:
    tenant = alert_env.create_tenant(quota=1000)
    receiver.script(f"/hook/{tenant}", *[Reply(500)] * 6)
    _targets(alert_env, receiver, tenant, slack=False)
    alert_env.post(tenant, 800)
    (delivery,) = _wait_finished(alert_env, tenant, "webhook", timeout=30)  # 0.3 s doubling: ~4.5 s

    assert delivery["status"] == "failed" and delivery["attempts"] == 5  # FLAGMETER_ALERT_MAX_ATTEMPTS
    assert [a["outcome"] for a in delivery["history"]] == ["retry"] * 4 + ["failed"]
    assert delivery["last_error"] == "HTTP 500; gave up after 5 attempts"
    assert len(receiver.at(f"/hook/{tenant}")) == 5


def _webhook_answering(env: LocalEnv, receiver: Receiver, status: int) -> tuple[str, dict[str, Any]]:
    """A tenant over 80 % whose webhook answers `status`; returns it and the finished delivery."""
    tenant = env.create_tenant(quota=1000)
    receiver.script(f"/hook/{tenant}", Reply(status))
    _targets(env, receiver, tenant, slack=False)
    env.post(tenant, 850)
    (delivery,) = _wait_finished(env, tenant, "webhook")
    return tenant, delivery


def test_404_is_recorded_as_failed_and_not_retried(alert_env: LocalEnv, receiver: Receiver) -> None:
    tenant, delivery = _webhook_answering(alert_env, receiver, 404)
    time.sleep(1.5)  # five backoff steps would have retried by now

    assert len(receiver.at(f"/hook/{tenant}")) == 1
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["last_error"] == "HTTP 404"


def test_410_fails_and_disables_the_webhook(alert_env: LocalEnv, receiver: Receiver) -> None:
    tenant, delivery = _webhook_answering(alert_env, receiver, 410)
    assert delivery["status"] == "failed"

    _, tenant_doc, _ = alert_env.request("GET", f"/v1/tenants/{tenant}")
    assert tenant_doc["webhook_enabled"] is False
    alert_env.post(tenant, 200)  # crosses 100 %: no webhook delivery is even queued
    alert_env.wait_total(tenant, 1050)
    wait_until(lambda: len(alert_env.alerts(tenant)) == 2, 10, "the 100 % alert")
    assert len(_deliveries(alert_env, tenant, "webhook")) == 1
    assert len(receiver.at(f"/hook/{tenant}")) == 1


def test_late_events_for_a_closed_period_send_nothing(alert_env: LocalEnv, receiver: Receiver) -> None:
    now = datetime.now(UTC)
    tenant = alert_env.create_tenant(quota=1000, billing_day=now.day)  # the period began today 00:00
    _targets(alert_env, receiver, tenant)
    yesterday = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(hours=1)
    alert_env.post(tenant, 700, 500, at=yesterday)
    alert_env.wait_total(tenant, 1200)
    alert_env.post(tenant, 10)  # current period: 1 %
    alert_env.wait_total(tenant, 1210)
    time.sleep(1.0)

    assert alert_env.alerts(tenant) == []
    assert receiver.at(f"/slack/{tenant}") == receiver.at(f"/hook/{tenant}") == []


def test_raising_the_quota_does_not_refire_but_a_new_period_rearms(
    alert_env: LocalEnv, receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    tomorrow = now + timedelta(days=1)
    tenant = alert_env.create_tenant(quota=1000, billing_day=tomorrow.day)  # the period ends tomorrow
    _targets(alert_env, receiver, tenant, slack=False)
    alert_env.post(tenant, 850)
    receiver.wait(f"/hook/{tenant}", 1)
    alert_env.patch(tenant, monthly_quota=2000)  # 42.5 %
    alert_env.post(tenant, 800)  # 82.5 % of the new quota: 80 % was already sent this period
    alert_env.wait_total(tenant, 1650)
    time.sleep(1.0)
    assert [a["threshold"] for a in alert_env.alerts(tenant)] == [80]

    alert_env.patch(tenant, billing_day=now.day)  # the period now starts today: a new period
    alert_env.post(tenant, 1)
    hooks = receiver.wait(f"/hook/{tenant}", 2)
    alerts = alert_env.alerts(tenant)
    assert [a["threshold"] for a in alerts] == [80, 80]
    assert alerts[0]["period"]["start"] != alerts[1]["period"]["start"]
    assert hooks[0].headers["webhook-id"] != hooks[1].headers["webhook-id"]


def test_alert_metrics_are_exported(alert_env: LocalEnv, receiver: Receiver) -> None:
    tenant = alert_env.create_tenant(quota=100)
    alert_env.patch(tenant, slack_webhook_url=receiver.url(f"/slack/{tenant}"))
    alert_env.post(tenant, 100)
    receiver.wait(f"/slack/{tenant}", 2)
    metrics_url = alert_env.metrics_urls[0] + "/metrics"
    delivered = 'flagmeter_alert_deliveries_total{outcome="delivered",target="slack"}'
    wait_until(lambda: delivered in _get(metrics_url), 10, "delivery metrics")
    text = _get(metrics_url)
    assert 'flagmeter_alerts_fired_total{threshold="100"}' in text
    assert "flagmeter_alert_outbox_backlog" in text


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_tenants_without_a_slack_url_use_the_global_fallback(stack: Any, receiver: Receiver) -> None:
    env = LocalEnv.create(stack, FLAGMETER_SLACK_WEBHOOK_URL=receiver.url("/fallback"))
    try:
        env.start_api()
        env.start_worker()
        own, shared = env.create_tenant(quota=100), env.create_tenant(quota=100)
        env.patch(own, slack_webhook_url=receiver.url(f"/slack/{own}"))
        env.post(own, 80)
        env.post(shared, 80)
        (fallback,) = receiver.wait("/fallback", 1)
        receiver.wait(f"/slack/{own}", 1)
        time.sleep(0.5)

        assert shared in fallback.json()["text"]
        assert len(receiver.at("/fallback")) == 1
    finally:
        env.stop()
