"""POST /v1/events: judge the events (each alone: one invalid event rejects no other), append the valid
ones to the stream as one entry, answer 202."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .. import metrics
from ..events import MAX_BATCH, TENANT_ID, Columns, Event, Rejection, columns, judge_columns, normalise
from ..quota import named_reservation
from ..responses import json_response
from ..stream import RateLimited, RedisUnavailable
from .auth import Principal
from .errors import ApiError, read_json

log = logging.getLogger(__name__)
SINGLE_STATUS = {"unknown_tenant": 404, "forbidden": 403}


# A request this large (or chunked) holds one of FLAGMETER_LARGE_BATCHES_IN_FLIGHT while it is read,
# parsed and appended: ~120 events, below which a request holds little (a parsed batch holds ~19x its
# bytes) and never waits. Why 8 KiB and not more: docs/performance.md, issue 15's fourth pass.
LARGE_BODY = 8 * 1024
LARGE_BODY_WAIT_S = 5.0


async def post_events(request: web.Request) -> web.Response:
    principal = await request.app["directory"].principal(request)
    if (request.content_length or LARGE_BODY) < LARGE_BODY:  # a chunked body may be large
        return await _ingest(request, principal)
    # Big batches wait for one of a few slots before their body is read: under overload the
    # process's memory stays flat and clients are slowed (then told to retry) instead.
    slots: asyncio.Semaphore = request.app["large_bodies"]
    try:
        await asyncio.wait_for(slots.acquire(), LARGE_BODY_WAIT_S)
    except TimeoutError:
        metrics.busy_rejections.inc()
        raise ApiError(
            503, "busy", "too many large batches in flight; retry with the same ids", {"Retry-After": "1"}
        ) from None
    try:
        return await _ingest(request, principal)
    finally:
        slots.release()


async def _ingest(request: web.Request, principal: Principal) -> web.Response:
    app = request.app
    body = await read_json(request)
    if isinstance(body, dict):
        items: list[Any] = [body]
    elif isinstance(body, list):
        if not body:
            raise ApiError(422, "empty_batch", "the array holds no events")
        if len(body) > MAX_BATCH:
            raise ApiError(413, "batch_too_large", f"at most {MAX_BATCH} events per request")
        items = body
    else:
        raise ApiError(400, "invalid_body", "body must be an event object or an array of events")

    judged = await _judge(app, items, principal.tenant)
    rejected = judged.rejected
    if not judged.ids:
        if isinstance(body, dict):
            code, message = rejected[0]["error"]["code"], rejected[0]["error"]["message"]
            raise ApiError(SINGLE_STATUS.get(code, 422), code, message)
        raise ApiError(
            422, "no_valid_events", "no event in the batch is valid", details={"rejected": rejected}
        )

    try:
        settled = await app["stream"].append(
            judged.groups, tenant=principal.tenant, rate=app["settings"].rate_limit, settle=judged.settle
        )
    except RateLimited as limited:
        metrics.rate_limited.inc()
        seconds = max(1, -(-limited.retry_after_ms // 1000))
        raise ApiError(
            429,
            "rate_limited",
            "tenant request rate limit exceeded; retry with the same ids",
            {"Retry-After": str(seconds)},
        ) from None
    except RedisUnavailable as error:
        log.warning("stream append failed", extra={"error": str(error)})
        raise ApiError(
            503, "unavailable", "event stream unavailable; retry with the same ids", {"Retry-After": "1"}
        ) from None
    metrics.events_accepted.inc(len(judged.ids))
    if settled:
        metrics.reservations.labels("settled").inc(settled)
    return json_response(
        {
            "accepted": len(judged.ids),
            "ids": judged.ids,
            "duplicates": judged.duplicates,
            "rejected": rejected,
        },
        202,
    )


@dataclass(slots=True)
class Judged:
    """A request's verdict: the accepted events' columns and ids (in order), the reservations they
    settle, the rejected and the repeated ones (by index)."""

    groups: list[Columns]
    ids: list[str]
    settle: list[tuple[str, str]] = field(default_factory=list)  # (tenant, reservation): issue 12
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)


# Below this many events, a pass over each field costs more than one over each event (~5.8 against ~3.0
# us for one event, about even at four, in a micro-benchmark).
JUDGED_BY_FIELDS_FROM = 8


async def _judge(app: web.Application, items: list[Any], key_tenant: str | None) -> Judged:
    """A tenant key's batch of valid events is judged a field at a time (events.judge_columns); any
    other (an invalid event, a repeated id, a reservation, the admin's tenants, a few events) event by
    event, which says what is wrong with which."""
    clock = app["settings"].clock
    if key_tenant is not None and len(items) >= JUDGED_BY_FIELDS_FROM:
        group = judge_columns(items, now_ms=clock.now_ms(), key_tenant=key_tenant)
        if group is not None:
            return Judged([group], list(group[2]))
    existing = await _existing_tenants(app, items, key_tenant)
    now_ms = clock.now_ms()  # received once the admin's tenants are looked up
    accepted: list[Event] = []
    settle: list[tuple[str, str]] = []
    rejected: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(items):
        try:
            event = normalise(raw, now_ms=now_ms, key_tenant=key_tenant, tenant_exists=existing.__contains__)
            reservation = named_reservation(raw)
        except Rejection as rejection:
            metrics.events_rejected.labels(rejection.code).inc()
            rejected.append({"index": index, "error": {"code": rejection.code, "message": rejection.message}})
            continue
        # An id repeated within one request is the same event: it counts once (the first), like a retry.
        if (event.tenant, event.id) in seen:
            duplicates.append({"index": index, "id": event.id})
            continue
        seen.add((event.tenant, event.id))
        accepted.append(event)
        if reservation is not None:
            settle.append((event.tenant, reservation))
    return Judged(columns(accepted), [event.id for event in accepted], settle, rejected, duplicates)


async def _existing_tenants(app: web.Application, items: list[Any], key_tenant: str | None) -> set[str]:
    """Tenants named in the batch that exist (a tenant key can only name its own, which exists)."""
    if key_tenant is not None:
        return {key_tenant}
    names = {
        item["tenant"]
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("tenant"), str)
        and TENANT_ID.fullmatch(item["tenant"])
    }
    directory = app["directory"]
    found = set()
    for name in names:
        if await directory.tenant(name) is not None:
            found.add(name)
    return found
