"""The dashboard's pages and the JSON dashboard.js polls: each reads the store (and the tally) at one
moment and hands the figures to `pages`, or sends their JSON form."""

from __future__ import annotations

from datetime import datetime, timedelta

from aiohttp import web

from ...clock import rfc3339
from ...events import TENANT_ID
from ...responses import json_response
from ...store import CurrentUsage
from ...stream import RedisUnavailable
from ...tally import Hold, Tally
from ..errors import ApiError
from . import pages
from .chart import usage_chart
from .figures import TenantRow, TenantView, overview_order
from .responses import html, login_page
from .session import is_admin

POLL_WINDOW = timedelta(hours=1)


async def _rows(request: web.Request, now: datetime) -> list[TenantRow]:
    store = request.app["store"]
    current: dict[str, CurrentUsage] = await store.current_usage(now)
    recent = await store.recent_tokens(list(current), now - POLL_WINDOW)
    return overview_order(
        [TenantRow(c.tenant, c.period, c.by_feature, recent.get(tid, 0)) for tid, c in current.items()]
    )


async def overview(request: web.Request) -> web.Response:
    if not is_admin(request):
        return login_page()
    now = request.app["settings"].clock.now()
    return html(pages.overview_html(await _rows(request, now), now))


async def usage_json(request: web.Request) -> web.Response:
    """What dashboard.js polls: the overview's rows, already sorted."""
    if not is_admin(request):
        raise ApiError(401, "unauthorized", "sign in at / first")
    now = request.app["settings"].clock.now()
    rows = await _rows(request, now)
    return json_response(
        {"as_of": rfc3339(now), "tenants": [r.as_json() for r in rows]}, headers={"Cache-Control": "no-store"}
    )


async def _tenant_view(request: web.Request) -> TenantView | None:
    store = request.app["store"]
    now = request.app["settings"].clock.now()
    tenant_id = request.match_info["tenant"]
    if not TENANT_ID.fullmatch(tenant_id):
        return None
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
    except RedisUnavailable:
        holds = None
    return TenantView(
        row=TenantRow(tenant, period, current.by_feature, last_hour),
        chart=usage_chart(period, [(b, t) for b, t, _ in series], tenant.monthly_quota, now),
        thresholds=", ".join(map(str, settings.thresholds)) if settings and settings.thresholds else "none",
        history=history,
        now=now,
        holds=holds,
    )


async def tenant_page(request: web.Request) -> web.Response:
    if not is_admin(request):
        return login_page()
    view = await _tenant_view(request)
    if view is None:
        return html(pages.unknown_tenant_html(), status=404)
    return html(pages.tenant_html(view))


async def tenant_json(request: web.Request) -> web.Response:
    """What dashboard.js polls on a tenant's page: authenticated like the page."""
    if not is_admin(request):
        raise ApiError(401, "unauthorized", "sign in at / first")
    view = await _tenant_view(request)
    if view is None:
        raise ApiError(404, "not_found", "no such tenant")
    return json_response(view.as_json(), headers={"Cache-Control": "no-store"})
