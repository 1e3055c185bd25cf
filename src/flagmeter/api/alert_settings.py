"""Alert settings on the tenant resource, URL safety at save time, and GET /v1/tenants/{id}/alerts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..alerts import new_secret, valid_secret, validate_thresholds
from ..clock import rfc3339
from ..responses import json_response
from ..store import AlertRecord, AlertSettings, AlertSettingsChange, AttemptRecord
from ..urls import url_problem
from .auth import require_admin
from .errors import ApiError

ALERT_FIELDS = frozenset({"alert_thresholds", "webhook_url", "webhook_secret"})
HISTORY_LIMIT = 100


@dataclass(frozen=True, slots=True)
class AlertChanges:
    thresholds: list[int] | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    clear_webhook: bool = False

    @property
    def empty(self) -> bool:
        return self.thresholds is None and self.webhook_url is None and not self.clear_webhook


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_tenant", message)


async def check_url(request: web.Request, field: str, url: object) -> None:
    """422 unless FlagMeter may call `url`: https (or allowed http), a public address."""
    if url is None:
        return
    if isinstance(url, str) and (not url.isprintable() or " " in url):
        # When saved, not when called: a URL saved before this rule (a tab urlsplit drops) still works.
        raise _invalid(f"{field} must not contain spaces or control characters")
    settings = request.app["settings"]
    problem = await url_problem(
        url, allow_http=settings.allow_http_webhooks, allow_private=settings.allow_private_webhooks
    )
    if problem:
        raise _invalid(f"{field} {problem}")


async def take_changes(request: web.Request, body: dict[str, Any]) -> AlertChanges:
    """Remove the alert fields from a PATCH body and validate them (and the Slack URL's host)."""
    await check_url(request, "slack_webhook_url", body.get("slack_webhook_url"))
    fields = {name: body.pop(name) for name in ALERT_FIELDS & body.keys()}
    thresholds = None
    if "alert_thresholds" in fields:
        try:
            thresholds = validate_thresholds(fields["alert_thresholds"])
        except ValueError as error:
            raise _invalid(str(error)) from None
    secret = fields.get("webhook_secret")
    if secret is not None and (not isinstance(secret, str) or not valid_secret(secret)):
        raise _invalid("webhook_secret must be whsec_ followed by base64 of 24-64 random bytes")
    if "webhook_url" not in fields:
        if secret is not None:
            raise _invalid("webhook_secret needs webhook_url in the same request")
        return AlertChanges(thresholds)
    url = fields["webhook_url"]
    if url is None:
        return AlertChanges(thresholds, clear_webhook=True)
    await check_url(request, "webhook_url", url)
    return AlertChanges(thresholds, url, secret)


def settings_change(changes: AlertChanges) -> tuple[AlertSettingsChange | None, dict[str, Any]]:
    """What the store applies with the tenant's other changes, and `webhook_secret` when a new
    webhook is set (shown this once)."""
    if changes.empty:
        return None, {}
    secret = changes.webhook_secret or (new_secret() if changes.webhook_url else None)
    webhook = (changes.webhook_url, secret) if changes.webhook_url and secret else None
    change = AlertSettingsChange(changes.thresholds, webhook, changes.clear_webhook)
    return change, ({"webhook_secret": secret} if webhook else {})


def settings_json(settings: AlertSettings | None) -> dict[str, Any]:
    if settings is None:
        return {}
    return {
        "alert_thresholds": settings.thresholds,
        "webhook_url": settings.webhook_url,
        "webhook_enabled": settings.webhook_enabled,
    }


async def with_settings(request: web.Request, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each tenant's alert settings to its JSON document."""
    found = await request.app["store"].alert_settings([d["id"] for d in documents])
    return [d | settings_json(found.get(d["id"])) for d in documents]


def _attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "at": rfc3339(attempt.attempted_at) if attempt.attempted_at else None,
        "endpoint": attempt.endpoint,
        "http_status": attempt.http_status,
        "outcome": attempt.outcome,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
    }


def alert_json(alert: AlertRecord) -> dict[str, Any]:
    return {
        "id": alert.id,
        "threshold": alert.threshold,
        "used": alert.used,
        "quota": alert.quota,
        "period": {"start": rfc3339(alert.period_start), "end": rfc3339(alert.period_end)},
        "created_at": rfc3339(alert.created_at),
        "deliveries": [
            {
                "target": d.target,
                "status": d.status,
                "attempts": d.attempts,
                "next_attempt_at": rfc3339(d.next_attempt_at) if d.status == "pending" else None,
                "last_error": d.last_error,
                "finished_at": rfc3339(d.finished_at) if d.finished_at else None,
                "history": [_attempt_json(a) for a in d.history],
            }
            for d in alert.deliveries
        ],
    }


async def list_alerts(request: web.Request) -> web.Response:
    """GET /v1/tenants/{tenant}/alerts (admin): newest first, with every delivery attempt."""
    require_admin(await request.app["directory"].principal(request))
    tenant_id = request.match_info["tenant"]
    if await request.app["store"].get_tenant(tenant_id) is None:
        raise ApiError(404, "unknown_tenant", f"tenant {tenant_id!r} does not exist")
    history = await request.app["store"].alert_history(tenant_id, HISTORY_LIMIT)
    return json_response({"tenant": tenant_id, "alerts": [alert_json(a) for a in history]})
