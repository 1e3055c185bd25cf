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
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from ..stream import StreamUnavailable
from ..tally import Hold, Tally
from .alert_settings import alert_json
from .errors import ApiError, json_response
from .signin import FailureThrottle, client_address

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
            "percent_label": percent_label(self.percent),
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
        percent_label=percent_label(percent),
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

CHART_W, CHART_H, PAD_L, PAD_B, PAD_T, PAD_R = 720, 240, 72, 30, 12, 8
UNITS = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k"))


def percent_label(percent: float) -> str:
    """5000010.0 → '5,000,010 %', 12.5 → '12.5 %': grouped, never an exponent."""
    return f"{percent:,.2f}".rstrip("0").rstrip(".") + " %"


def human_time(moment: datetime, *, seconds: bool = False) -> str:
    """A time as people read it: '3 May 2026, 14:02 UTC' (the exact value goes in a title)."""
    return f"{moment.day} {moment:%b %Y, %H:%M{':%S' if seconds else ''}} UTC"


def human_date(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def period_label(period: Period) -> str:
    return f"{human_date(period.start)} \N{EN DASH} {human_date(period.end)}"


def _time_html(moment: datetime, *, seconds: bool = False) -> str:
    exact = rfc3339(moment)
    return f'<time datetime="{exact}" title="{exact}">{human_time(moment, seconds=seconds)}</time>'


def compact(tokens: float) -> str:
    """An axis label: 2500000 → '2.5M'."""
    for size, unit in UNITS:
        if tokens >= size:
            return f"{tokens / size:g}{unit}"
    return f"{tokens:g}"


def axis_ticks(top: float) -> list[float]:
    """0 and about four round steps (1, 2, 2.5 or 5 x 10^n tokens) up to `top`."""
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(1.0, next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw))
    return [i * step for i in range(int(top // step) + 1)]


@dataclass(frozen=True, slots=True)
class Chart:
    """Cumulative tokens over the period, in the SVG's coordinates: drawn here, updated by dashboard.js."""

    points: str
    quota_y: float
    quota_label: str
    ticks: list[tuple[float, str]]  # (y, label)
    start_label: str
    end_label: str
    aria_label: str

    def as_json(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "quota_y": self.quota_y,
            "quota_label": self.quota_label,
            "ticks": [{"y": y, "label": label} for y, label in self.ticks],
            "start_label": self.start_label,
            "end_label": self.end_label,
            "aria_label": self.aria_label,
        }

    def svg(self) -> str:
        right, bottom = CHART_W - PAD_R, CHART_H - PAD_B
        ticks = "".join(
            f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"></line>'
            f'<text class="label" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>'
            for y, label in self.ticks
        )
        return (
            f'<svg class="chart" id="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img"'
            f' aria-label="{escape(self.aria_label)}">'
            f'<g class="ticks">{ticks}</g>'
            f'<line class="axis" x1="{PAD_L}" y1="{bottom}" x2="{right}" y2="{bottom}"></line>'
            f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{bottom}"></line>'
            f'<line class="quota" x1="{PAD_L}" y1="{self.quota_y:.1f}" x2="{right}" y2="{self.quota_y:.1f}">'
            "</line>"
            f'<text class="quota-label" x="{right - 4}" y="{self.quota_y - 6:.1f}" text-anchor="end">'
            f"{escape(self.quota_label)}</text>"
            f'<polyline class="usage" points="{self.points}"></polyline>'
            f'<text class="label start" x="{PAD_L}" y="{CHART_H - 6}">{escape(self.start_label)}</text>'
            f'<text class="label end" x="{right}" y="{CHART_H - 6}" text-anchor="end">'
            f"{escape(self.end_label)}</text>"
            "</svg>"
        )


def usage_chart(period: Period, hourly: list[tuple[datetime, int]], quota: int, now: datetime) -> Chart:
    """Cumulative tokens over the period, with the quota as a dashed line and round y-axis steps."""
    total = sum(tokens for _, tokens in hourly)
    top = max(quota, total, 1) * 1.1
    span = (period.end - period.start).total_seconds()
    plot_w, plot_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

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
    return Chart(
        points=" ".join(points),
        quota_y=round(y(quota), 1),
        quota_label=f"quota {quota:,}",
        ticks=[(round(y(tick), 1), compact(tick)) for tick in axis_ticks(top)],
        start_label=f"{period.start:%b} {period.start.day}",
        end_label=f"{period.end:%b} {period.end.day}",
        aria_label=f"Cumulative tokens this period: {total:,} of {quota:,}",
    )


def _deliveries(alert: dict[str, Any]) -> str:
    text = "; ".join(
        f"{d['target']}: {d['status']} after {d['attempts']} attempt(s)"
        + (f" ({d['last_error']})" if d["last_error"] else "")
        for d in alert["deliveries"]
    )
    return text or "no target configured"


def _alert_rows(history: list[AlertRecord]) -> str:
    if not history:
        return '<tr class="none"><td colspan="4">No alerts yet.</td></tr>'
    return "".join(
        f"<tr><td>{_time_html(record.created_at)}</td><td>{record.threshold} %</td>"
        f"<td>{record.used:,} / {record.quota:,}</td><td>{escape(_deliveries(alert_json(record)))}</td></tr>"
        for record in history
    )


RESERVATIONS_NOTE = {False: "No active reservations.", True: "Reservations cannot be read right now."}


def _hold_rows(view: TenantView) -> str:
    if not view.holds:
        return f'<tr class="none"><td colspan="3">{RESERVATIONS_NOTE[view.holds is None]}</td></tr>'
    return "".join(
        f"<tr><td>{escape(hold.id)}</td><td>{hold.tokens:,}</td>"
        f"<td>{_time_html(_expiry(hold), seconds=True)}</td></tr>"
        for hold in view.holds
    )


def _expiry(hold: Hold) -> datetime:
    return datetime.fromtimestamp(hold.expires_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class TenantView:
    """Everything the tenant page shows, read at one moment: rendered once, then polled as JSON."""

    row: TenantRow
    chart: Chart
    thresholds: str
    history: list[AlertRecord]
    now: datetime
    holds: list[Hold] | None  # None: Redis cannot be reached right now

    @property
    def reserved_label(self) -> str:
        return "unknown" if self.holds is None else f"{sum(h.tokens for h in self.holds):,}"

    def hold_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "id": hold.id,
                "tokens": hold.tokens,
                "expires_at": rfc3339(_expiry(hold)),
                "expires_label": human_time(_expiry(hold), seconds=True),
            }
            for hold in self.holds or ()
        ]

    def as_json(self) -> dict[str, Any]:
        tenant, period = self.row.tenant, self.row.period
        return {
            "as_of": rfc3339(self.now),
            "reserved_label": self.reserved_label,
            "reservations": self.hold_rows(),
            "reservations_note": RESERVATIONS_NOTE[self.holds is None],
            "as_of_label": f"{self.now:%H:%M:%S} UTC",
            "tenant": {
                **self.row.as_json(),
                "billing_day": tenant.billing_day,
                "period_start": rfc3339(period.start),
                "period_label": period_label(period),
            },
            "chart": self.chart.as_json(),
            "thresholds": self.thresholds,
            "alerts": [
                {
                    "created_at": rfc3339(record.created_at),
                    "created_label": human_time(record.created_at),
                    "threshold": record.threshold,
                    "used": record.used,
                    "quota": record.quota,
                    "deliveries": _deliveries(alert_json(record)),
                }
                for record in self.history
            ],
        }


async def _tenant_view(request: web.Request) -> TenantView | None:
    store = request.app["store"]
    now = request.app["settings"].clock.now()
    tenant_id = request.match_info["tenant"]
    current = (await store.current_usage(now, tenant_id)).get(tenant_id)
    if current is None:
        return None
    tenant, period = current.tenant, current.period
    series = await store.series(tenant.id, period.start, period.end, "hour", None)
    history = await store.alert_history(tenant.id, 50)
    settings = (await store.alert_settings([tenant.id])).get(tenant.id)
    last_hour = (await store.recent_tokens([tenant.id], now - POLL_WINDOW)).get(tenant.id, 0)
    tally: Tally = request.app["tally"]
    try:
        holds: list[Hold] | None = (await tally.holds(tenant.id, int(now.timestamp() * 1000)))[0]
    except StreamUnavailable:
        holds = None
    return TenantView(
        row=TenantRow(tenant, period, current.by_feature, last_hour),
        chart=usage_chart(period, [(b, t) for b, t, _ in series], tenant.monthly_quota, now),
        thresholds=", ".join(map(str, settings.thresholds)) if settings and settings.thresholds else "none",
        history=history,
        now=now,
        holds=holds,
    )


UNKNOWN_TENANT = '<p class="error">No such tenant.</p><p><a href="/">← All tenants</a></p>'


async def tenant_page(request: web.Request) -> web.Response:
    if not _is_admin(request):
        return _login_page()
    view = await _tenant_view(request)
    if view is None:
        return _page("Unknown tenant", UNKNOWN_TENANT, signed_in=True, status=404)
    row, tenant = view.row, view.row.tenant
    main = _render(
        "tenant.html",
        name=escape(tenant.name),
        id=escape(tenant.id),
        used=f"{row.used:,}",
        quota=f"{tenant.monthly_quota:,}",
        level=level(row.percent),
        percent_label=percent_label(row.percent),
        period_label=period_label(row.period),
        billing_day=tenant.billing_day,
        last_hour=f"{row.last_hour:,}",
        chart=view.chart.svg(),
        features=_feature_rows(row.features()),
        thresholds=escape(view.thresholds),
        alerts=_alert_rows(view.history),
        reserved=view.reserved_label,
        reservations=_hold_rows(view),
        as_of=rfc3339(view.now),
        as_of_label=f"{view.now:%H:%M:%S} UTC",
    )
    return _page(tenant.name, main, signed_in=True)


async def tenant_json(request: web.Request) -> web.Response:
    """What dashboard.js polls on a tenant's page: authenticated like the page."""
    if not _is_admin(request):
        raise ApiError(401, "unauthorized", "sign in at / first")
    view = await _tenant_view(request)
    if view is None:
        raise ApiError(404, "not_found", "no such tenant")
    return json_response(view.as_json(), headers={"Cache-Control": "no-store"})
