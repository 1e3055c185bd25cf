"""What every FlagMeter server answers — liveness, readiness and metrics, for the API and the worker
alike. Kept apart from the API's package, so the worker's small server imports aiohttp's web server
and nothing of the API (dashboard, routes)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import metrics
from .responses import error_json, json_response


async def health(request: web.Request) -> web.Response:
    """Alive; "stopping" once a server that says so (app["stopping"]) has been told to stop."""
    stopping = request.app.get("stopping")
    return json_response({"status": "stopping" if stopping is not None and stopping() else "ok"})


async def ready(request: web.Request) -> web.Response:
    """Ready when PostgreSQL (app["store"]) and Redis (app["stream"]) both answer within 3 s."""
    checks = {"postgres": request.app["store"].ping(), "redis": request.app["stream"].ping()}
    results = await asyncio.gather(*(asyncio.wait_for(c, 3) for c in checks.values()), return_exceptions=True)
    down = sorted(
        name for name, result in zip(checks, results, strict=True) if isinstance(result, BaseException)
    )
    if down:
        message = f"unreachable: {', '.join(down)}"
        return error_json(503, "not_ready", message, details={"status": "unavailable", "unreachable": down})
    return json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body, content_type = metrics.render(request.app["metrics_role"])
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/health", health),
            web.get("/ready", ready),
            web.get("/metrics", metrics_endpoint),
        ]
    )
