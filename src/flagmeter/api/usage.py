"""GET /v1/usage/{tenant} (current period, from a versioned cache) and /v1/usage/{tenant}/series."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from ..clock import rfc3339
from ..events import FEATURE, Rejection, parse_timestamp
from ..periods import period_containing
from ..responses import json_response
from ..store import WINDOWS, CurrentUsage, Store, StoreUnavailable, Tenant
from ..stream import RedisUnavailable, Stream
from ..usage_versions import UsageVersions
from .auth import Principal
from .errors import ApiError

MAX_SERIES_SPAN = {"minute": timedelta(days=35), "hour": timedelta(days=400), "day": timedelta(days=800)}
# A safety net only: an answer is normally replaced when its tenant's version moves.
USAGE_CACHE_MAX_AGE_S = 60.0


@dataclass(frozen=True, slots=True)
class _Cached:
    usage: CurrentUsage
    stored_at: float  # time.monotonic()


class UsageCache:
    """Each tenant's current usage, per API process, answered without PostgreSQL while it is current.

    Every change to a tenant's answer (a counted batch, a PATCH of quota or billing day) bumps
    `tenants.usage_version` in its own transaction, and the usage read takes the version in the same
    snapshot as the totals, so a cached answer is tagged with exactly the state it shows. After the
    commit the worker (or the PATCH) raises the tenant's version in Redis, which only ever rises. A read
    fetches that version and answers from the cache only when the cached answer carries it, its period
    still holds `now` and it is younger than USAGE_CACHE_MAX_AGE_S. Otherwise it reads PostgreSQL; an
    answer newer than Redis's version (committed, not yet announced) is announced before it is given,
    so once any process has shown it, none shows an older one. Without Redis every read is fresh.
    """

    def __init__(self, store: Store, stream: Stream, max_age_s: float = USAGE_CACHE_MAX_AGE_S) -> None:
        self._store = store
        self._versions = UsageVersions(stream)
        self._max_age_s = max_age_s
        self._answers: dict[str, _Cached] = {}

    async def current(self, tenant_id: str, now: datetime) -> CurrentUsage | None:
        try:
            announced = await self._versions.announced(tenant_id)
        except RedisUnavailable:
            return (await self._store.current_usage(now, tenant_id)).get(tenant_id)
        cached = self._answers.get(tenant_id)
        if (
            cached is not None
            and cached.usage.version == announced
            and cached.usage.period.start <= now < cached.usage.period.end
            and time.monotonic() - cached.stored_at < self._max_age_s
        ):
            return cached.usage
        return await self._fresh(tenant_id, now, announced)

    async def refresh(self, tenant_id: str, now: datetime) -> None:
        """After a change this process committed (a PATCH): read it and announce its version.

        Should PostgreSQL fail just now, other processes show the old answer until the tenant's next
        counted batch or USAGE_CACHE_MAX_AGE_S; the change itself stands.
        """
        try:
            await self._fresh(tenant_id, now, -1)
        except StoreUnavailable:
            self._answers.pop(tenant_id, None)

    async def _fresh(self, tenant_id: str, now: datetime, announced: int) -> CurrentUsage | None:
        usage = (await self._store.current_usage(now, tenant_id)).get(tenant_id)
        if usage is None:
            return None
        if usage.version > announced:
            try:
                await self._versions.announce(tenant_id, usage.version)
            except RedisUnavailable:
                self._answers.pop(tenant_id, None)
                return usage  # shown, but not kept: other processes may not know it is current
        self._answers[tenant_id] = _Cached(usage, time.monotonic())
        return usage


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
    # Not from the tenant cache (another process's cached billing day may be stale): the usage cache
    # answers only with what is current.
    current = await request.app["usage_cache"].current(tenant.id, now)
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
