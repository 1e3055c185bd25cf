"""The operators' dashboard: `/` (tenants by quota used, live) and `/tenants/{id}` (chart, alerts).

Admin only: a login form trades the admin token for a signed, expiring session cookie (the
token itself is never stored in the browser); the admin Bearer token works too. Pages are
rendered here from `dashboard/templates` with every value escaped; `dashboard/static/dashboard.js`
polls `/dashboard/usage.json` to keep the numbers live. No inline script or style, so the CSP
needs no exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from importlib import resources
from pathlib import PurePath
from string import Template
from typing import Any

from aiohttp import web

from .. import metrics
from ..alerts import percent_used
from ..clock import rfc3339
from ..periods import Period
from ..store import AlertRecord, CurrentUsage, Tenant
from .alerts import alert_json
from .auth import FailureThrottle, client_address
from .errors import ApiError, json_response

log = logging.getLogger(__name__)

SESSION_COOKIE = "flagmeter_session"
SESSION_TTL_S = 12 * 3600
LOGIN_WINDOW_S = 300  # FLAGMETER_LOGIN_ATTEMPTS failed sign-ins per address per window
POLL_WINDOW = timedelta(hours=1)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def _load(folder: str) -> dict[str, str]:
    root = resources.files("flagmeter") / "dashboard" / folder
    return {entry.name: entry.read_text() for entry in root.iterdir() if entry.is_file()}


TEMPLATES = {name: Template(text) for name, text in _load("templates").items()}
STATIC = {n: text.encode() for n, text in _load("static").items() if PurePath(n).suffix in STATIC_TYPES}


def _render(template: str, **values: object) -> str:
    """Fill a template; callers pass markup they built from escaped values only."""
    return TEMPLATES[template].substitute(values)


# -- sessions -------------------------------------------------------------------------------


def _session_key(admin_token: str) -> bytes:
    # Derived from the admin token: rotating the token signs every session out.
    return hashlib.sha256(b"flagmeter-dashboard-session\0" + admin_token.encode()).digest()


def new_session(admin_token: str, now: float) -> str:
    payload = f"{int(now) + SESSION_TTL_S}.{secrets.token_urlsafe(16)}"
    mac = hmac.new(_session_key(admin_token), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def valid_session(cookie: str, admin_token: str, now: float) -> bool:
    payload, _, mac = cookie.rpartition(".")
    expected = hmac.new(_session_key(admin_token), payload.encode(), hashlib.sha256).hexdigest()
    if not payload or not hmac.compare_digest(mac.encode(), expected.encode()):
        return False
    expires = payload.split(".", 1)[0]
    return expires.isdigit() and int(expires) > now


def _is_admin(request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return bool(request.app["directory"].is_admin_token(token.strip()))
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and valid_session(
        cookie, request.app["settings"].admin_token, request.app["settings"].clock.now().timestamp()
    )


# -- responses ------------------------------------------------------------------------------


def _page(title: str, main: str, *, signed_in: bool, status: int = 200) -> web.Response:
    session = (
        '<form class="logout" method="post" action="/logout"><button type="submit">Sign out</button></form>'
        if signed_in
        else ""
    )
    body = _render("page.html", title=escape(title), main=main, session=session)
    return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def _login_page(error: str = "", status: int = 401) -> web.Response:
    notice = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page("Sign in", _render("login.html", error=notice), signed_in=False, status=status)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers=SECURITY_HEADERS | {"Location": location})


def _secure_cookie(request: web.Request) -> bool:
    return request.secure or str(request.app["settings"].public_url).startswith("https://")


async def login(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, "unsupported_media_type", "send the form as application/x-www-form-urlencoded")
    try:
        form = await request.post()
    except ValueError:
        raise ApiError(400, "invalid_form", "the login form could not be read") from None
    throttle: FailureThrottle = request.app["login_throttle"]
    trusted = request.app["settings"].trusted_proxies
    address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
    wait = await throttle.retry_after(address)
    if wait:
        metrics.dashboard_sign_ins.labels("throttled").inc()
        response = _login_page(f"Too many failed sign-ins; try again in {wait} s.", status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    token = form.get("token")
    if not isinstance(token, str) or not token or not request.app["directory"].is_admin_token(token):
        metrics.dashboard_sign_ins.labels("wrong_token").inc()
        if await throttle.failed(address):
            log.warning("dashboard sign-in throttled", extra={"address": address})
        return _login_page("That is not the admin token.")
    metrics.dashboard_sign_ins.labels("signed_in").inc()
    response = _see_other("/")
    response.set_cookie(
        SESSION_COOKIE,
        new_session(request.app["settings"].admin_token, request.app["settings"].clock.now().timestamp()),
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure_cookie(request),
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_other("/")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = STATIC.get(name)
    if body is None:
        raise ApiError(404, "not_found", "no such file")
    headers = SECURITY_HEADERS | {"Cache-Control": "no-cache"}
    return web.Response(body=body, content_type=STATIC_TYPES[PurePath(name).suffix], headers=headers)


# -- the overview -----------------------------------------------------------------------------


def level(percent: float) -> str:
    return "level-red" if percent >= 80 else "level-amber" if percent >= 60 else "level-ok"


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant: Tenant
    period: Period
    by_feature: dict[str, int]
    last_hour: int

    @property
    def used(self) -> int:
        return sum(self.by_feature.values())

    @property
    def percent(self) -> float:
        return percent_used(self.used, self.tenant.monthly_quota)

    def features(self) -> list[tuple[str, int]]:
        return sorted(self.by_feature.items(), key=lambda item: (-item[1], item[0]))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.tenant.id,
            "name": self.tenant.name,
            "quota": self.tenant.monthly_quota,
            "used": self.used,
            "percent": self.percent,
            "level": level(self.percent),
            "period_end": rfc3339(self.period.end),
            "last_hour": self.last_hour,
            "by_feature": [{"feature": f, "tokens": t} for f, t in self.features()],
        }


async def _rows(request: web.Request, now: datetime) -> list[TenantRow]:
    store = request.app["store"]
    current: dict[str, CurrentUsage] = await store.current_usage(now)
    recent = await store.recent_tokens(list(current), now - POLL_WINDOW)
    rows = [TenantRow(c.tenant, c.period, c.by_feature, recent.get(tid, 0)) for tid, c in current.items()]
    return sorted(rows, key=lambda r: (-r.percent, r.tenant.name.lower(), r.tenant.id))


def _feature_rows(features: list[tuple[str, int]]) -> str:
    if not features:
        return '<tr class="none"><td colspan="2">No usage this period yet.</td></tr>'
    return "".join(f"<tr><td>{escape(f)}</td><td>{t:,}</td></tr>" for f, t in features)


def _row_html(row: TenantRow | None) -> str:
    """One tenant's list item; with None, the blank copy dashboard.js clones for new tenants."""
    if row is None:
        values = dict.fromkeys(("id", "name", "used", "quota", "period_end", "last_hour", "href"), "")
        return _render(
            "tenant_row.html", **values, level="level-ok", percent_label="", bar_width="0", features=""
        )
    percent = row.percent
    return _render(
        "tenant_row.html",
        id=escape(row.tenant.id),
        name=escape(row.tenant.name),
        level=level(percent),
        percent_label=f"{percent:g} %",
        bar_width=f"{min(percent, 100.0):g}",
        used=f"{row.used:,}",
        quota=f"{row.tenant.monthly_quota:,}",
        period_end=row.period.end.strftime("%Y-%m-%d"),
        last_hour=f"{row.last_hour:,}",
        features=_feature_rows(row.features()),
        href=f"/tenants/{escape(row.tenant.id)}",
    )


async def overview(request: web.Request) -> web.Response:
    if not _is_admin(request):
        return _login_page()
    now = request.app["settings"].clock.now()
    rows = await _rows(request, now)
    main = _render(
        "overview.html",
        rows="\n".join(_row_html(r) for r in rows),
        row_template=_row_html(None),
        empty_hidden=" hidden" if rows else "",
        as_of=rfc3339(now),
        as_of_label=now.strftime("%H:%M:%S UTC"),
    )
    return _page("Tenants", main, signed_in=True)


async def usage_json(request: web.Request) -> web.Response:
    """What dashboard.js polls: the overview's rows, already sorted."""
    if not _is_admin(request):
        raise ApiError(401, "unauthorized", "sign in at / first")
    now = request.app["settings"].clock.now()
    rows = await _rows(request, now)
    return json_response(
        {"as_of": rfc3339(now), "tenants": [r.as_json() for r in rows]}, headers={"Cache-Control": "no-store"}
    )


# -- one tenant -----------------------------------------------------------------------------

CHART_W, CHART_H, PAD_L, PAD_B, PAD_T = 720, 240, 64, 24, 12


def usage_chart(period: Period, hourly: list[tuple[datetime, int]], quota: int, now: datetime) -> str:
    """Cumulative tokens over the period as inline SVG, with the quota as a dashed line."""
    total = sum(tokens for _, tokens in hourly)
    top = max(quota, total, 1) * 1.1
    span = (period.end - period.start).total_seconds()
    plot_w, plot_h = CHART_W - PAD_L - 8, CHART_H - PAD_T - PAD_B

    def x(moment: datetime) -> float:
        return PAD_L + plot_w * min(max((moment - period.start).total_seconds() / span, 0.0), 1.0)

    def y(tokens: float) -> float:
        return PAD_T + plot_h * (1 - tokens / top)

    points = [f"{x(period.start):.1f},{y(0):.1f}"]
    running = 0
    for bucket, tokens in hourly:
        points.append(f"{x(bucket):.1f},{y(running):.1f}")
        running += tokens
        points.append(f"{x(bucket + timedelta(hours=1)):.1f},{y(running):.1f}")
    points.append(f"{x(min(now, period.end)):.1f},{y(running):.1f}")
    quota_y = y(quota)
    return (
        f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img"'
        f' aria-label="Cumulative tokens this period: {total:,} of {quota:,}">'
        f'<line class="axis" x1="{PAD_L}" y1="{y(0):.1f}" x2="{CHART_W - 8}" y2="{y(0):.1f}"></line>'
        f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{y(0):.1f}"></line>'
        f'<line class="quota" x1="{PAD_L}" y1="{quota_y:.1f}" x2="{CHART_W - 8}" y2="{quota_y:.1f}"></line>'
        f'<text class="label" x="{PAD_L - 6}" y="{quota_y + 4:.1f}" text-anchor="end">{quota:,}</text>'
        f'<text class="label" x="{PAD_L - 6}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>'
        f'<polyline class="usage" points="{" ".join(points)}"></polyline>'
        f'<text class="label" x="{PAD_L}" y="{CHART_H - 6}">{period.start:%b %d}</text>'
        f'<text class="label" x="{CHART_W - 8}" y="{CHART_H - 6}" text-anchor="end">{period.end:%b %d}</text>'
        "</svg>"
    )


def _alerts_html(history: list[AlertRecord]) -> str:
    if not history:
        return '<p class="none">No alerts yet.</p>'
    rows = []
    for alert in (alert_json(a) for a in history):
        deliveries = "; ".join(
            f"{d['target']}: {d['status']} after {d['attempts']} attempt(s)"
            + (f" ({d['last_error']})" if d["last_error"] else "")
            for d in alert["deliveries"]
        )
        rows.append(
            f"<tr><td><time>{escape(alert['created_at'])}</time></td><td>{alert['threshold']} %</td>"
            f"<td>{alert['used']:,} / {alert['quota']:,}</td>"
            f"<td>{escape(deliveries or 'no target configured')}</td></tr>"
        )
    return (
        '<table class="alerts"><thead><tr><th scope="col">Decided</th><th scope="col">Threshold</th>'
        '<th scope="col">Used / quota</th><th scope="col">Deliveries</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


async def tenant_page(request: web.Request) -> web.Response:
    if not _is_admin(request):
        return _login_page()
    store = request.app["store"]
    now = request.app["settings"].clock.now()
    current = (await store.current_usage(now, request.match_info["tenant"])).get(request.match_info["tenant"])
    if current is None:
        return _page("Unknown tenant", '<p class="error">No such tenant.</p>', signed_in=True, status=404)
    tenant, period, by_feature = current.tenant, current.period, current.by_feature
    series = await store.series(tenant.id, period.start, period.end, "hour", None)
    history = await store.alert_history(tenant.id, 50)
    settings = (await store.alert_settings([tenant.id])).get(tenant.id)
    row = TenantRow(tenant, period, by_feature, 0)
    main = _render(
        "tenant.html",
        name=escape(tenant.name),
        id=escape(tenant.id),
        used=f"{row.used:,}",
        quota=f"{tenant.monthly_quota:,}",
        level=level(row.percent),
        percent_label=f"{row.percent:g} %",
        period_start=period.start.strftime("%Y-%m-%d"),
        period_end=period.end.strftime("%Y-%m-%d"),
        billing_day=tenant.billing_day,
        chart=usage_chart(period, [(b, t) for b, t, _ in series], tenant.monthly_quota, now),
        features=_feature_rows(row.features()),
        thresholds=escape(", ".join(str(t) for t in settings.thresholds) if settings else "none"),
        alerts=_alerts_html(history),
    )
    return _page(tenant.name, main, signed_in=True)
