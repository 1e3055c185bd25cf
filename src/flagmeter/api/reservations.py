"""Quota checks and reservations: GET /v1/usage/{tenant}/check, POST/GET /v1/reservations,
DELETE /v1/reservations/{id}. Answered from Redis alone (tally.py); PostgreSQL only on a cold rebuild.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from aiohttp import web

from .. import metrics
from ..clock import rfc3339
from ..events import Rejection
from ..periods import Period, period_containing
from ..quota import (
    Figures,
    InvalidFields,
    day_field,
    day_of,
    parse_tokens,
    period_days,
    reservation_request,
)
from ..responses import json_response
from ..store import Store, Tenant
from ..stream import RedisUnavailable
from ..tally import EXISTING, GRANTED, Hold, Tally
from .auth import Principal
from .errors import ApiError, read_json
from .usage import readable_tenant

REBUILD_DAYS = 40  # a period is at most 31 days; the rebuild loads a little more


def create_tally(store: Store, stream: Any, settings: Any) -> Tally:
    async def load_counted() -> list[tuple[str, int]]:
        since = day_of(settings.clock.now_ms() - REBUILD_DAYS * 86_400_000)
        return await store.daily_totals_since(since)

    return Tally(stream, load_counted)


def _period_fields(tenant: Tenant, now: datetime) -> tuple[Period, list[str]]:
    """The billing period `now` falls in and its days' fields in the quota figures."""
    period, days = _period_on(tenant.billing_day, now.astimezone(UTC).date())
    return period, [day_field(tenant.id, day) for day in days]


# A period begins and ends at a UTC midnight, so it and its days' names change with the UTC day at most:
# built once a day per billing day (31 at most), not per request (~30 strftime calls, 13 % of a check's
# API CPU).
@lru_cache(maxsize=64)
def _period_on(billing_day: int, day: date) -> tuple[Period, tuple[str, ...]]:
    period = period_containing(datetime(day.year, day.month, day.day, tzinfo=UTC), billing_day)
    return period, tuple(period_days(period))


def _unavailable() -> ApiError:
    return ApiError(503, "unavailable", "quota figures unavailable; retry", {"Retry-After": "1"})


def _count_expired(expired: int) -> None:
    if expired:
        metrics.reservations.labels("expired").inc(expired)


async def check(request: web.Request) -> web.Response:
    tenant = await readable_tenant(request)
    try:
        tokens = parse_tokens(_query_int(request.query.get("tokens", "0")), 0)
    except Rejection as rejection:
        raise ApiError(422, rejection.code, rejection.message) from None
    clock = request.app["settings"].clock
    now_ms = clock.now_ms()
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    period, fields = _period_fields(tenant, now)
    tally: Tally = request.app["tally"]
    try:
        used, reserved, expired = await tally.figures(tenant.id, fields, now_ms)
    except RedisUnavailable:
        raise _unavailable() from None
    _count_expired(expired)
    figures = Figures(tenant.monthly_quota, used, reserved)
    return json_response(
        {
            "tenant": tenant.id,
            "allowed": figures.allows(tokens),
            "quota": figures.quota,
            "used": figures.used,
            "reserved": figures.reserved,
            "remaining": figures.remaining,
            "period": {"start": rfc3339(period.start), "end": rfc3339(period.end)},
            "as_of": rfc3339(now),
        }
    )


def _query_int(raw: str) -> object:
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 12 else raw


async def _own_tenant(request: web.Request, principal: Principal, named: str | None) -> Tenant:
    if principal.is_admin:
        if named is None:
            raise ApiError(422, "missing_tenant", "tenant is required with the admin token")
        tenant_id = named
    else:
        if named is not None and named != principal.tenant:
            raise ApiError(403, "forbidden", "this key may only reserve for its own tenant")
        tenant_id = str(principal.tenant)
    tenant: Tenant | None = await request.app["directory"].tenant(tenant_id)
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"tenant {tenant_id!r} does not exist")
    return tenant


def _hold_document(hold: Hold) -> dict[str, Any]:
    expires = datetime.fromtimestamp(hold.expires_ms / 1000, UTC)
    return {"id": hold.id, "tenant": hold.tenant, "tokens": hold.tokens, "expires_at": rfc3339(expires)}


async def create_reservation(request: web.Request) -> web.Response:
    principal: Principal = await request.app["directory"].principal(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", "body must be a JSON object")
    try:
        wanted = reservation_request(body)
    except InvalidFields as invalid:
        _, code, message = invalid.problems[0]
        details: dict[str, object] = {
            "invalid": [{"field": f, "code": c, "message": m} for f, c, m in invalid.problems]
        }
        raise ApiError(422, code, message, details=details) from None
    tenant = await _own_tenant(request, principal, wanted.tenant)
    now_ms = request.app["settings"].clock.now_ms()
    _, fields = _period_fields(tenant, datetime.fromtimestamp(now_ms / 1000, UTC))
    tally: Tally = request.app["tally"]
    expires_ms = now_ms + wanted.ttl_s * 1000
    try:
        grant = await tally.reserve(
            tenant.id, fields, now_ms, tenant.monthly_quota, wanted.tokens, wanted.id, expires_ms
        )
    except RedisUnavailable:
        raise _unavailable() from None
    _count_expired(grant.expired)
    remaining = Figures(tenant.monthly_quota, grant.used, grant.reserved).remaining
    if grant.hold is None:
        metrics.reservations.labels("refused").inc()
        error = {
            "code": "quota_exceeded",
            "message": f"{wanted.tokens} tokens exceed the {remaining} remaining; nothing was held",
            "requested": wanted.tokens,
            "quota": tenant.monthly_quota,
            "used": grant.used,
            "reserved": grant.reserved,
            "remaining": remaining,
        }
        return json_response({"error": error}, 402)
    if grant.outcome == GRANTED:
        metrics.reservations.labels("granted").inc()
    status = 200 if grant.outcome == EXISTING else 201
    return json_response({**_hold_document(grant.hold), "remaining": remaining}, status)


def _path_tenant(request: web.Request, principal: Principal) -> str:
    """Whose reservation the path names: the key's own tenant, or `?tenant=` for the admin."""
    named = request.query.get("tenant")
    if principal.is_admin:
        if not named:
            raise ApiError(422, "missing_tenant", "tenant (query) is required with the admin token")
        return named
    if named is not None and named != principal.tenant:
        raise ApiError(404, "unknown_reservation", "no such reservation")
    return str(principal.tenant)


async def delete_reservation(request: web.Request) -> web.Response:
    principal: Principal = await request.app["directory"].principal(request)
    tenant_id = _path_tenant(request, principal)
    tally: Tally = request.app["tally"]
    try:
        released = await tally.release(
            tenant_id, request.match_info["id"], request.app["settings"].clock.now_ms()
        )
    except RedisUnavailable:
        raise _unavailable() from None
    if released < 0:
        _count_expired(1)
    if released <= 0:
        raise ApiError(404, "unknown_reservation", "no such reservation")
    metrics.reservations.labels("released").inc()
    return web.Response(status=204)


async def list_reservations(request: web.Request) -> web.Response:
    principal: Principal = await request.app["directory"].principal(request)
    tenant_id = _path_tenant(request, principal)
    tally: Tally = request.app["tally"]
    try:
        holds, expired = await tally.holds(tenant_id, request.app["settings"].clock.now_ms())
    except RedisUnavailable:
        raise _unavailable() from None
    _count_expired(expired)
    return json_response({"tenant": tenant_id, "reservations": [_hold_document(h) for h in holds]})
