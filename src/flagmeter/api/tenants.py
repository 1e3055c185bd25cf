"""Admin endpoints for tenants and their API keys."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..clock import rfc3339
from ..events import TENANT_ID, TENANT_NAME
from ..keys import new_key
from ..responses import json_response
from ..store import ApiKey, Conflict, Tenant
from . import alert_settings
from .auth import require_admin
from .errors import ApiError, read_json

MAX_QUOTA = 10**15
MAX_KEY_NAME = 100
CREATE_FIELDS = {"id", "name", "monthly_quota", "billing_day", "slack_webhook_url"}
PATCH_FIELDS = {"name", "monthly_quota", "billing_day", "slack_webhook_url", *alert_settings.ALERT_FIELDS}


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "monthly_quota": tenant.monthly_quota,
        "billing_day": tenant.billing_day,
        "slack_webhook_url": tenant.slack_webhook_url,
        "created_at": rfc3339(tenant.created_at),
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.label,
        "created_at": rfc3339(key.created_at),
        "revoked_at": rfc3339(key.revoked_at) if key.revoked_at else None,
    }


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_tenant", message)


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(unknown)}")


def _check_values(body: dict[str, Any]) -> None:
    """Check the name, quota and billing day present (the URLs are checked by alert_settings.check_url)."""
    name = body.get("name", "x")
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name.strip()):
        raise _invalid("name must be 1-200 characters of text without control characters")
    quota = body.get("monthly_quota", 0)
    if type(quota) is not int or not 0 <= quota <= MAX_QUOTA:
        raise _invalid(f"monthly_quota must be an integer from 0 to {MAX_QUOTA}")
    day = body.get("billing_day", 1)
    if type(day) is not int or not 1 <= day <= 31:
        raise _invalid("billing_day must be an integer from 1 to 31")


async def _admin_body(request: web.Request) -> dict[str, Any]:
    require_admin(await request.app["directory"].principal(request))
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "body must be a JSON object")
    return body


async def create_tenant(request: web.Request) -> web.Response:
    body = await _admin_body(request)
    _check_fields(body, CREATE_FIELDS)
    for field in ("id", "name", "monthly_quota"):
        if field not in body:
            raise _invalid(f"{field} is required")
    if not isinstance(body["id"], str) or not TENANT_ID.fullmatch(body["id"]):
        raise _invalid("id must be a slug [a-z0-9][a-z0-9-]{0,62}")
    _check_values(body)
    await alert_settings.check_url(request, "slack_webhook_url", body.get("slack_webhook_url"))
    key_id, key, key_hash = new_key()
    draft = Tenant(
        body["id"],
        body["name"].strip(),
        body["monthly_quota"],
        body.get("billing_day", 1),
        None,  # type: ignore[arg-type]
        body.get("slack_webhook_url"),
    )
    try:
        tenant = await request.app["store"].create_tenant(draft, key_id, key_hash)
    except Conflict:
        raise ApiError(409, "tenant_exists", f"tenant {draft.id!r} already exists") from None
    request.app["directory"].forget_tenant(tenant.id)
    return json_response({"tenant": tenant_json(tenant), "key_id": key_id, "api_key": key}, 201)


async def list_tenants(request: web.Request) -> web.Response:
    require_admin(await request.app["directory"].principal(request))
    tenants = await request.app["store"].list_tenants()
    documents = await alert_settings.with_settings(request, [tenant_json(t) for t in tenants])
    return json_response({"tenants": documents})


async def _known_tenant(request: web.Request) -> Tenant:
    tenant: Tenant | None = await request.app["store"].get_tenant(request.match_info["tenant"])
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"tenant {request.match_info['tenant']!r} does not exist")
    return tenant


async def get_tenant(request: web.Request) -> web.Response:
    require_admin(await request.app["directory"].principal(request))
    tenant = await _known_tenant(request)
    return json_response((await alert_settings.with_settings(request, [tenant_json(tenant)]))[0])


async def patch_tenant(request: web.Request) -> web.Response:
    body = await _admin_body(request)
    _check_fields(body, PATCH_FIELDS)
    if not body:
        raise _invalid("nothing to change")
    _check_values(body)
    alert_changes = await alert_settings.take_changes(request, body)  # pops the alert fields
    if "name" in body:
        body["name"] = body["name"].strip()
    alert_change, shown_once = alert_settings.settings_change(alert_changes)
    tenant = await request.app["store"].update_tenant(request.match_info["tenant"], body, alert_change)
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"tenant {request.match_info['tenant']!r} does not exist")
    request.app["directory"].forget_tenant(tenant.id)
    await request.app["usage_cache"].refresh(tenant.id, request.app["settings"].clock.now())
    document = (await alert_settings.with_settings(request, [tenant_json(tenant)]))[0]
    return json_response(document | shown_once)


async def list_keys(request: web.Request) -> web.Response:
    require_admin(await request.app["directory"].principal(request))
    tenant = await _known_tenant(request)
    keys = await request.app["store"].list_keys(tenant.id)
    return json_response({"keys": [key_json(k) for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    require_admin(await request.app["directory"].principal(request))
    body = await read_json(request) if request.body_exists else {}
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "body must be a JSON object")
    if set(body) - {"name"}:
        raise ApiError(422, "invalid_key", f"unknown field(s): {', '.join(sorted(set(body) - {'name'}))}")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_KEY_NAME or not name.isprintable():
        raise ApiError(
            422, "invalid_key", f"name must be printable text of at most {MAX_KEY_NAME} characters"
        )
    tenant = await _known_tenant(request)
    key_id, key, key_hash = new_key()
    created = await request.app["store"].create_key(tenant.id, key_id, key_hash, name.strip())
    return json_response(key_json(created) | {"api_key": key}, 201)


async def revoke_key(request: web.Request) -> web.Response:
    require_admin(await request.app["directory"].principal(request))
    tenant = await _known_tenant(request)
    revoked = await request.app["store"].revoke_key(tenant.id, request.match_info["key_id"])
    if revoked is None:
        raise ApiError(404, "unknown_key", "no such key for this tenant")
    request.app["directory"].forget_keys()
    return json_response(key_json(revoked))
