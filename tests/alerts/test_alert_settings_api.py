"""Alert settings on the tenant resource: thresholds, the signed webhook and its secret, the history."""

from __future__ import annotations

import base64
from typing import Any

import pytest


def _patch(stack: Any, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, answer, _ = stack.request("PATCH", f"/v1/tenants/{tenant}", body)
    return status, answer


def test_new_tenants_alert_at_80_and_100_percent_with_no_webhook(stack: Any) -> None:
    tenant, _ = stack.create_tenant()
    _, body, _ = stack.request("GET", f"/v1/tenants/{tenant}")
    assert body["alert_thresholds"] == [80, 100]
    assert body["webhook_url"] is None and body["webhook_enabled"] is False
    listed = {t["id"]: t for t in stack.request("GET", "/v1/tenants")[1]["tenants"]}
    assert listed[tenant]["alert_thresholds"] == [80, 100]


def test_thresholds_are_replaced_sorted_alongside_other_fields(stack: Any) -> None:
    tenant, _ = stack.create_tenant()
    status, body = _patch(stack, tenant, {"alert_thresholds": [100, 50, 90], "monthly_quota": 5})
    assert status == 200, body
    assert body["alert_thresholds"] == [50, 90, 100] and body["monthly_quota"] == 5


@pytest.mark.parametrize(
    "body",
    [
        {"alert_thresholds": [0]},
        {"alert_thresholds": "80"},
        {"alert_thresholds": list(range(1, 12))},
        {"webhook_secret": "whsec_" + base64.b64encode(b"k" * 32).decode()},  # no webhook_url
        {"webhook_url": "https://8.8.8.8/h", "webhook_secret": "whsec_tooshort"},
        {"webhook_url": 42},
    ],
)
def test_invalid_alert_settings_are_refused_and_change_nothing(stack: Any, body: dict[str, Any]) -> None:
    tenant, _ = stack.create_tenant()
    status, answer = _patch(stack, tenant, {"monthly_quota": 7, **body})
    assert status == 422 and answer["error"]["code"] == "invalid_tenant", answer
    _, after, _ = stack.request("GET", f"/v1/tenants/{tenant}")
    assert after["monthly_quota"] == 1_000_000 and after["alert_thresholds"] == [80, 100]


def test_a_given_secret_is_kept_and_null_removes_the_webhook(stack: Any) -> None:
    tenant, _ = stack.create_tenant()
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    status, body = _patch(stack, tenant, {"webhook_url": "https://8.8.8.8/h", "webhook_secret": secret})
    assert status == 200 and body["webhook_secret"] == secret and body["webhook_enabled"] is True
    status, body = _patch(stack, tenant, {"webhook_url": None})
    assert status == 200 and body["webhook_url"] is None and "webhook_secret" not in body


def test_alert_history_is_for_the_admin_only(stack: Any) -> None:
    tenant, key = stack.create_tenant()
    assert stack.request("GET", f"/v1/tenants/{tenant}/alerts", token=key)[0] == 403
    assert stack.request("GET", f"/v1/tenants/{tenant}/alerts", token=None)[0] == 401
    assert stack.request("GET", "/v1/tenants/nobody-here/alerts")[0] == 404
    assert stack.request("GET", f"/v1/tenants/{tenant}/alerts")[1] == {"tenant": tenant, "alerts": []}
