"""Liveness, readiness, metrics and the OpenAPI document (readiness and metrics serve the worker too)."""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from .. import metrics
from .errors import json_response

OPENAPI = (resources.files("flagmeter") / "openapi.json").read_bytes()


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    checks = {"postgres": request.app["store"].ping(), "redis": request.app["stream"].ping()}
    results = await asyncio.gather(*(asyncio.wait_for(c, 3) for c in checks.values()), return_exceptions=True)
    down = sorted(
        name for name, result in zip(checks, results, strict=True) if isinstance(result, BaseException)
    )
    if down:
        return json_response(
            {
                "status": "unavailable",
                "unreachable": down,
                "error": {"code": "not_ready", "message": f"unreachable: {', '.join(down)}"},
            },
            503,
        )
    return json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body, content_type = metrics.render(request.app["metrics_role"])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI, content_type="application/json")
