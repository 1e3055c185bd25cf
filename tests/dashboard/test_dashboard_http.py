"""The dashboard over plain HTTP: who sees what, what the headers say, escaping, order and data."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from local_env import wait_until

from flagmeter.api.dashboard.chart import axis_ticks, usage_chart
from flagmeter.api.dashboard.format import compact, human_time, percent_label
from flagmeter.api.dashboard.signin import FailureThrottle, client_address
from flagmeter.config import ConfigError, Settings
from flagmeter.localstack import free_port
from flagmeter.periods import Period

ADMIN_ONLY = ["/", "/tenants/acme", "/dashboard/usage.json", "/dashboard/tenants/acme/usage.json"]


def _own_counts() -> dict[str, str]:
    """API settings whose sign-in failure counts (kept in Redis beside the stream) no other test shares."""
    return {"FLAGMETER_STREAM": f"test-sign-ins-{uuid.uuid4().hex[:8]}"}


def _get(
    stack: Any, path: str, token: str | None = None, cookie: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {"Cookie": cookie} if cookie else {}
    status, body, head = stack.request("GET", path, token=token, headers=headers)
    return status, body if isinstance(body, str) else "", head


def _login(
    stack: Any, token: str, base: str | None = None, forwarded_for: str | None = None
) -> tuple[int, dict[str, str]]:
    form = urllib.parse.urlencode({"token": token}).encode()
    request = urllib.request.Request(f"{base or stack.api_url}/login", data=form, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if forwarded_for is not None:
        request.add_header("X-Forwarded-For", forwarded_for)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


@pytest.mark.parametrize("path", ADMIN_ONLY)
def test_without_credentials_only_the_login_page_is_served(stack: Any, path: str) -> None:
    tenant, _ = stack.create_tenant()
    status, body, _ = _get(stack, path, token=None)
    assert status == 401
    assert tenant not in body and 'class="tenant"' not in body
    if not path.endswith(".json"):
        assert 'action="/login"' in body


def test_a_tenant_key_is_not_the_admin(stack: Any) -> None:
    tenant, key = stack.create_tenant()
    status, body, _ = _get(stack, "/", token=key)
    assert status == 401 and 'action="/login"' in body
    status, body, _ = _get(stack, f"/dashboard/tenants/{tenant}/usage.json", token=key)
    assert status == 401 and tenant not in body


@pytest.mark.parametrize(
    ("percent", "label"),
    [(5000010.0, "5,000,010 %"), (85.0, "85 %"), (12.5, "12.5 %"), (0.07, "0.07 %"), (0.0, "0 %")],
)
def test_percentages_read_as_grouped_numbers_never_exponents(percent: float, label: str) -> None:
    assert percent_label(percent) == label


def test_the_y_axis_has_round_labelled_steps_even_far_over_quota() -> None:
    start = datetime(2026, 5, 15, tzinfo=UTC)
    period = Period(start, datetime(2026, 6, 15, tzinfo=UTC))
    chart = usage_chart(period, [(start, 50_000_000)], 1_000, start + timedelta(days=3))
    assert [label for _, label in chart.ticks] == ["0", "20M", "40M"]
    ys = [y for y, _ in chart.ticks]
    assert ys == sorted(ys, reverse=True) and ys[0] - ys[-1] > 100  # spread over the plot, not stacked
    assert chart.quota_label == "quota 1,000"
    assert axis_ticks(110) == [0, 50, 100] and compact(2_500_000) == "2.5M" and compact(750) == "750"


def test_times_read_as_people_read_them() -> None:
    assert human_time(datetime(2026, 5, 3, 14, 2, 11, 123456, tzinfo=UTC)) == "3 May 2026, 14:02 UTC"


def test_the_tenant_page_json_follows_new_events(stack: Any) -> None:
    tenant, _ = stack.create_tenant(quota=1000)
    path = f"/dashboard/tenants/{tenant}/usage.json"
    status, body, headers = stack.request("GET", path)
    assert status == 200 and body["tenant"]["used"] == 0 and headers["Cache-Control"] == "no-store"
    stack.request("POST", "/v1/events", {"tenant": tenant, "feature": "chat", "tokens": 50_000_000})
    stack.wait_used(tenant, 50_000_000)
    wait_until(lambda: len(stack.request("GET", path)[1]["alerts"]) == 2, 10, "two alerts")
    body = stack.request("GET", path)[1]
    assert body["tenant"]["percent_label"] == "5,000,000 %" and body["tenant"]["level"] == "level-red"
    assert len(body["chart"]["ticks"]) >= 3
    alert = body["alerts"][0]
    assert alert["created_label"].endswith(" UTC") and "." not in alert["created_label"]
    assert stack.request("GET", "/dashboard/tenants/no-such-tenant/usage.json")[0] == 404


def test_login_sets_a_signed_httponly_strict_cookie_not_the_token(stack: Any) -> None:
    status, headers = _login(stack, stack.admin_token)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";", 1)[0]
    assert stack.admin_token not in value
    assert _get(stack, "/", cookie=value)[0] == 200
    tampered = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert _get(stack, "/", cookie=tampered)[0] == 401


def test_a_wrong_token_is_refused_with_the_login_page(stack: Any) -> None:
    status, headers = _login(stack, "not-the-admin-token")
    assert status == 401 and "Set-Cookie" not in headers


def test_failed_sign_ins_are_throttled_per_address_even_for_the_right_token(stack: Any) -> None:
    api, url = stack.start_api(processes=1, FLAGMETER_LOGIN_ATTEMPTS="3", **_own_counts())
    try:
        assert _login(stack, stack.admin_token, base=url)[0] == 303  # successes are not counted
        for _ in range(3):
            assert _login(stack, "not-the-admin-token", base=url)[0] == 401
        for token in ("not-the-admin-token", stack.admin_token):
            status, headers = _login(stack, token, base=url)
            assert status == 429 and "Set-Cookie" not in headers
            assert 1 <= int(headers["Retry-After"]) <= 300
        # With no trusted proxy configured, X-Forwarded-For is the client's word and changes nothing.
        assert _login(stack, stack.admin_token, base=url, forwarded_for="203.0.113.7")[0] == 429
        assert stack.request("GET", "/v1/tenants", base=url)[0] == 200  # the Bearer token still works
        assert "dashboard sign-in throttled" in api.output()
        assert _sign_ins(url) == {"signed_in": 1.0, "wrong_token": 3.0, "throttled": 3.0}
    finally:
        api.stop()


def _sign_ins(url: str) -> dict[str, float]:
    """flagmeter_dashboard_sign_ins_total by outcome, from the API's /metrics."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    found = re.findall(r'^flagmeter_dashboard_sign_ins_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


def test_behind_a_trusted_proxy_each_client_is_throttled_on_its_own(stack: Any) -> None:
    api, url = stack.start_api(
        processes=1, FLAGMETER_LOGIN_ATTEMPTS="2", FLAGMETER_TRUSTED_PROXIES="127.0.0.1", **_own_counts()
    )
    try:
        for _ in range(2):
            assert _login(stack, "not-the-admin-token", base=url, forwarded_for="203.0.113.1")[0] == 401
        assert _login(stack, stack.admin_token, base=url, forwarded_for="203.0.113.1")[0] == 429
        # Another client behind the same proxy still signs in, and one that writes someone else's
        # address in front of its own is still known by the address the proxy appended.
        assert _login(stack, stack.admin_token, base=url, forwarded_for="203.0.113.2")[0] == 303
        assert _login(stack, stack.admin_token, base=url, forwarded_for="203.0.113.2, 203.0.113.1")[0] == 429
    finally:
        api.stop()


def test_the_sign_in_limit_is_one_count_across_api_processes(stack: Any) -> None:
    """Two API servers (one process each, as two replicas would be) share an address's failures."""
    settings = {"FLAGMETER_LOGIN_ATTEMPTS": "3", **_own_counts()}
    (first, one), (second, two) = (stack.start_api(processes=1, **settings) for _ in range(2))
    try:
        for url in (one, two, one):
            assert _login(stack, "not-the-admin-token", base=url)[0] == 401
        for url in (two, one):
            status, headers = _login(stack, stack.admin_token, base=url)
            assert status == 429 and 1 <= int(headers["Retry-After"]) <= 300
    finally:
        first.stop()
        second.stop()


def test_while_redis_is_down_each_process_throttles_sign_ins_on_its_own(stack: Any) -> None:
    """The dashboard stays reachable in a Redis outage, and guessing is still limited (per process)."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    api, url = stack.start_api(processes=1, REDIS_URL=dead_redis, FLAGMETER_LOGIN_ATTEMPTS="2")
    try:
        assert _login(stack, stack.admin_token, base=url)[0] == 303
        for _ in range(2):
            assert _login(stack, "not-the-admin-token", base=url)[0] == 401
        assert _login(stack, stack.admin_token, base=url)[0] == 429
    finally:
        api.stop()


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        ("127.0.0.1", ["198.51.100.1, 203.0.113.9"], "203.0.113.9"),  # the client's own words are ignored
        ("127.0.0.1", ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),  # one header per proxy
        ("127.0.0.1", ["203.0.113.9, 10.0.1.5"], "203.0.113.9"),  # through two trusted proxies
        ("127.0.0.1", ["10.0.1.5"], "10.0.1.5"),  # every hop trusted: the farthest one
        ("127.0.0.1", ["203.0.113.9, not-an-address"], "127.0.0.1"),  # garbage: the proxy that wrote it
        ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),  # not through a proxy: the header is a lie
        ("2001:db8::1", ["203.0.113.9"], "2001:db8::1"),
        (None, [], "unknown"),
    ],
)
def test_the_client_address_is_the_first_untrusted_hop_from_the_right(
    peer: str | None, forwarded_for: list[str], client: str
) -> None:
    trusted = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))
    assert client_address(peer, forwarded_for, trusted) == client
    assert client_address(peer, forwarded_for, ()) == (peer or "unknown")


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    env = {"DATABASE_URL": "postgresql://x", "REDIS_URL": "redis://x", "FLAGMETER_ADMIN_TOKEN": "t" * 16}
    settings = Settings.from_env(env | {"FLAGMETER_TRUSTED_PROXIES": "10.0.0.0/8, ::1,172.18.0.1"})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "::1/128", "172.18.0.1/32"]
    assert Settings.from_env(env).trusted_proxies == ()
    with pytest.raises(ConfigError, match="FLAGMETER_TRUSTED_PROXIES"):
        Settings.from_env(env | {"FLAGMETER_TRUSTED_PROXIES": "10.0.0.0/8,traefik"})


def test_the_throttle_forgets_an_address_when_its_window_ends() -> None:
    asyncio.run(_forgets_an_address_when_its_window_ends())


async def _forgets_an_address_when_its_window_ends() -> None:
    throttle = FailureThrottle(allowed=2, window_s=0.3)  # no Redis: the per-process fallback
    await throttle.failed("192.0.2.1")
    assert await throttle.retry_after("192.0.2.1") == 0
    await throttle.failed("192.0.2.1")
    assert await throttle.retry_after("192.0.2.1") == 1 and await throttle.retry_after("192.0.2.2") == 0
    await asyncio.sleep(0.35)
    assert await throttle.retry_after("192.0.2.1") == 0
    await throttle.failed("192.0.2.1")  # a new window: one failure so far
    assert await throttle.retry_after("192.0.2.1") == 0


@pytest.mark.parametrize("path", ["/", "/login-page-when-anonymous"])
def test_security_headers_forbid_framing_and_inline_script(stack: Any, path: str) -> None:
    token = stack.admin_token if path == "/" else None
    _, _, headers = _get(stack, "/", token=token)
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_pages_carry_no_inline_script_or_style(stack: Any) -> None:
    _, body, _ = _get(stack, "/", token=stack.admin_token)
    assert re.findall(r"<script(?![^>]*\bsrc=)", body) == []
    assert " style=" not in body and "<style" not in body and " on" + "click=" not in body


def test_tenant_names_render_as_text(stack: Any) -> None:
    hostile = "<script>alert('x')</script> & <i id=pwn>"
    tenant, _ = stack.create_tenant()
    stack.request("PATCH", f"/v1/tenants/{tenant}", {"name": hostile})
    for path in ("/", f"/tenants/{tenant}"):
        _, body, _ = _get(stack, path, token=stack.admin_token)
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;i id=pwn&gt;" in body, path
        assert "<script>alert" not in body and "<i id=pwn>" not in body, body


def test_tenants_are_listed_by_percent_used_with_their_features(stack: Any) -> None:
    low, _ = stack.create_tenant(quota=1000)
    high, _ = stack.create_tenant(quota=1000)
    for tenant, feature, tokens in ((low, "chat", 100), (high, "chat", 500), (high, "embed", 250)):
        status, body, _ = stack.request(
            "POST",
            "/v1/events",
            {"tenant": tenant, "feature": feature, "tokens": tokens, "id": f"{feature}-1"},
        )
        assert status == 202, body
    stack.wait_used(high, 750)
    stack.wait_used(low, 100)

    status, data, _ = stack.request("GET", "/dashboard/usage.json")
    assert status == 200
    rows = {row["id"]: row for row in data["tenants"]}
    percents = [row["percent"] for row in data["tenants"]]
    assert percents == sorted(percents, reverse=True)
    assert [row["id"] for row in data["tenants"]].index(high) < [row["id"] for row in data["tenants"]].index(
        low
    )
    assert rows[high] | {"period_end": None} == rows[high] | {
        "used": 750,
        "quota": 1000,
        "percent": 75.0,
        "level": "level-amber",
        "last_hour": 750,
        "by_feature": [{"feature": "chat", "tokens": 500}, {"feature": "embed", "tokens": 250}],
        "period_end": None,
    }
    _, html, _ = _get(stack, "/", token=stack.admin_token)
    assert html.index(f'data-id="{high}"') < html.index(f'data-id="{low}"')
    assert "<td>embed</td><td>250</td>" in html


def test_the_tenant_page_charts_the_period_and_lists_alerts(stack: Any) -> None:
    tenant, _ = stack.create_tenant(quota=100)
    stack.request("POST", "/v1/events", {"tenant": tenant, "feature": "chat", "tokens": 90, "id": "e-1"})
    stack.wait_used(tenant, 90)
    wait_until(
        lambda: len(stack.request("GET", f"/v1/tenants/{tenant}/alerts")[1]["alerts"]) == 1, 10, "alert"
    )

    status, body, _ = _get(stack, f"/tenants/{tenant}", token=stack.admin_token)
    assert status == 200
    assert '<svg class="chart"' in body and "<polyline" in body and "90 of 100" in body
    assert "<td>80 %</td>" in body and "no target configured" in body
    assert 'title="20' in body and "<time" in body  # a readable time, the exact one on hover
    for unknown in ("no-such-tenant", "a%00b"):  # the second not even a tenant id
        status, body, _ = _get(stack, f"/tenants/{unknown}", token=stack.admin_token)
        assert status == 404 and '<a href="/">' in body, unknown


def test_static_assets_are_served_with_their_types(stack: Any) -> None:
    status, _, headers = stack.request("GET", "/static/dashboard.js", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert stack.request("GET", "/static/../openapi.json", token=None)[0] == 404
