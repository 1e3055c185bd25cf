"""Signing in to the dashboard: the admin token is traded for a signed, expiring session cookie (the token
itself is never stored in the browser); the admin Bearer token works too."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from aiohttp import web

from ... import metrics
from ..errors import ApiError
from .responses import login_page, see_other
from .signin import FailureThrottle, client_address

log = logging.getLogger(__name__)

SESSION_COOKIE = "flagmeter_session"
SESSION_TTL_S = 12 * 3600
LOGIN_WINDOW_S = 300  # FLAGMETER_LOGIN_ATTEMPTS failed sign-ins per address per window


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


def is_admin(request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return bool(request.app["directory"].is_admin_token(token.strip()))
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and valid_session(
        cookie, request.app["settings"].admin_token, request.app["settings"].clock.now().timestamp()
    )


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
        response = login_page(f"Too many failed sign-ins; try again in {wait} s.", status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    token = form.get("token")
    if not isinstance(token, str) or not token or not request.app["directory"].is_admin_token(token):
        metrics.dashboard_sign_ins.labels("wrong_token").inc()
        if await throttle.failed(address):
            log.warning("dashboard sign-in throttled", extra={"address": address})
        return login_page("That is not the admin token.")
    metrics.dashboard_sign_ins.labels("signed_in").inc()
    response = see_other("/")
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
    response = see_other("/")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
