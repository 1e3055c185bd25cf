"""How the dashboard answers a browser: every response carries the security headers (a CSP with no
exceptions, since no script or style is inline), pages are HTML, and static files come from the package."""

from __future__ import annotations

from pathlib import PurePath

from aiohttp import web

from ..errors import ApiError
from .pages import login_html, shipped

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
STATIC = {n: text.encode() for n, text in shipped("static").items() if PurePath(n).suffix in STATIC_TYPES}


def html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def login_page(error: str = "", status: int = 401) -> web.Response:
    return html(login_html(error), status=status)


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers=SECURITY_HEADERS | {"Location": location})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = STATIC.get(name)
    if body is None:
        raise ApiError(404, "not_found", "no such file")
    headers = SECURITY_HEADERS | {"Cache-Control": "no-cache"}
    return web.Response(body=body, content_type=STATIC_TYPES[PurePath(name).suffix], headers=headers)
