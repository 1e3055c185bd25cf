"""GET /v1/usage/{tenant} (current period) and /v1/usage/{tenant}/series (rollups by window)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from ..clock import rfc3339
from ..events import FEATURE, Rejection, parse_timestamp
from ..periods import period_containing
from ..store import WINDOWS, Tenant
from .auth import Principal
from .errors import ApiError, json_response

MAX_SERIES_SPAN = {"minute": timedelta(days=35), "hour": timedelta(days=400), "day": timedelta(days=800)}


async def readable_tenant(request: web.Request) -> Tenant:
    """The tenant named in the path, if the caller may read it: 403 for another's key, 404 if unknown."""
    principal: Principal = await request.app["directory"].principal(request)
    tenant_id = request.match_info["tenant"]
    if not principal.may_read(tenant_id):
        raise ApiError(403, "forbidden", "this key may only read its own tenant")
    tenant: Tenant | None = await request.app["directory"].tenant(tenant_id)
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"tenant {tenant_id!r} does not exist")
    return tenant


async def usage_document(request: web.Request, tenant: Tenant, now: datetime) -> dict[str, object]:
    # Read fresh, not from the tenant cache: another process's cached billing day may be stale.
    current = (await request.app["store"].current_usage(now, tenant.id)).get(tenant.id)
    if current is None:
        raise ApiError(404, "unknown_tenant", f"tenant {tenant.id!r} does not exist")
    period, by_feature, used = current.period, current.by_feature, current.used
    quota = current.tenant.monthly_quota
    percent = round(100 * used / quota, 2) if quota else (100.0 if used else 0.0)
    return {
        "tenant": tenant.id,
        "period": {"start": rfc3339(period.start), "end": rfc3339(period.end)},
        "quota": quota,
        "used": used,
        "remaining": max(quota - used, 0),
        "percent": percent,
        "by_feature": by_feature,
        "as_of": rfc3339(now),
    }


async def get_usage(request: web.Request) -> web.Response:
    tenant = await readable_tenant(request)
    return json_response(await usage_document(request, tenant, request.app["settings"].clock.now()))


def _moment(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return datetime.fromtimestamp(parse_timestamp(raw) / 1000, UTC)
    except Rejection:
        raise ApiError(422, "invalid_parameter", f"{name} must be an RFC 3339 date-time") from None


async def get_series(request: web.Request) -> web.Response:
    tenant = await readable_tenant(request)
    period = period_containing(request.app["settings"].clock.now(), tenant.billing_day)
    window = request.query.get("window", "hour")
    if window not in WINDOWS:
        raise ApiError(422, "invalid_parameter", "window must be minute, hour or day")
    start = _moment(request, "from", period.start)
    end = _moment(request, "to", period.end)
    if end <= start:
        raise ApiError(422, "invalid_parameter", "to must be after from")
    if end - start > MAX_SERIES_SPAN[window]:
        raise ApiError(422, "invalid_parameter", f"the span is too long for window={window}")
    feature = request.query.get("feature")
    if feature is not None and not FEATURE.fullmatch(feature):
        raise ApiError(422, "invalid_parameter", "feature must be 1-64 characters of [A-Za-z0-9_.:-]")
    rows = await request.app["store"].series(tenant.id, start, end, window, feature)
    return json_response(
        {
            "tenant": tenant.id,
            "window": window,
            "from": rfc3339(start),
            "to": rfc3339(end),
            "rows": [{"start": rfc3339(b), "tokens": t, "events": n} for b, t, n in rows],
        }
    )
