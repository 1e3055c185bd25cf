"""Webhook URLs: https only, public addresses only, checked when saved and again when sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from local_env import LocalEnv, Receiver, wait_until

STRICT = {"FLAGMETER_ALLOW_HTTP_WEBHOOKS": "0", "FLAGMETER_ALLOW_PRIVATE_WEBHOOKS": "0"}


@pytest.fixture(scope="module")
def strict_api(stack: Any) -> Iterator[str]:
    """An API without the allow-flags the test stack sets, on the session database."""
    process, url = stack.start_api(processes=1, **STRICT)
    yield url
    process.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plain http
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://[::1]/x",
        "https://10.1.2.3/x",
        "https://192.168.0.10/x",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://[::ffff:127.0.0.1]/x",
        "https://user:pass@203.0.113.5/x",
        "ftp://hooks.example.com/x",
    ],
)
@pytest.mark.parametrize("field", ["webhook_url", "slack_webhook_url"])
def test_unsafe_webhook_urls_are_refused_at_save_time(
    stack: Any, strict_api: str, field: str, url: str
) -> None:
    tenant, _ = stack.create_tenant()
    status, body, _ = stack.request("PATCH", f"/v1/tenants/{tenant}", {field: url}, base=strict_api)
    assert status == 422, body
    assert field in body["error"]["message"]


def test_a_public_https_url_is_accepted(stack: Any, strict_api: str) -> None:
    tenant, _ = stack.create_tenant()
    url = "https://8.8.8.8/hooks/flagmeter"  # an address literal: no DNS needed in the test
    status, body, _ = stack.request("PATCH", f"/v1/tenants/{tenant}", {"webhook_url": url}, base=strict_api)
    assert status == 200, body
    assert body["webhook_url"] == url and body["webhook_secret"].startswith("whsec_")


def test_a_url_that_turned_private_is_refused_at_send_time(stack: Any, receiver: Receiver) -> None:
    """Saved while allowed (as if the name resolved publicly then); the worker checks again."""
    env = LocalEnv.create(stack)
    try:
        env.start_api()  # allow-flags on: the save succeeds
        env.start_worker(**STRICT)
        tenant = env.create_tenant(quota=100)
        env.patch(tenant, webhook_url=receiver.url(f"/hook/{tenant}").replace("http:", "https:"))
        env.post(tenant, 90)
        wait_until(lambda: env.sql("SELECT status FROM alert_deliveries") == [("failed",)], 15, "the refusal")

        (attempt,) = env.sql("SELECT outcome, http_status, error FROM alert_attempts")
        assert attempt[:2] == ("failed", None)
        assert "private" in attempt[2]
        assert receiver.at(f"/hook/{tenant}") == []
    finally:
        env.stop()
