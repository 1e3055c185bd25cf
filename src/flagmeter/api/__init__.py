"""The aiohttp application: routes in one table, shared state on the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web

from .. import metrics, probes
from ..config import Settings
from ..events import TENANT_ID
from ..keys import KEY_ID
from ..store import Store
from ..stream import Stream
from . import alert_settings, dashboard, ingest, reservations, tenants, usage
from .auth import Directory
from .dashboard.signin import FailureThrottle
from .errors import error_middleware

MAX_BODY = 1024 * 1024
OPENAPI = (resources.files("flagmeter") / "openapi.json").read_bytes()
# The API's ids in a path are matched by the router: one of another shape (a NUL, say, which PostgreSQL
# cannot even hold) is a 404 before any handler runs. The dashboard's pages answer their own not-found
# page instead (dashboard.views._tenant_view).
TENANT = "{tenant:" + TENANT_ID.pattern + "}"
KEY = "{key_id:" + KEY_ID + "}"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app["settings"] = settings
    app["max_body"] = MAX_BODY
    app["metrics_role"] = "api"  # which families /metrics shows (metrics.EXPOSED)
    # Per process, each ~1 MiB of body and ~1 MiB of objects at most: memory stays flat under overload.
    app["large_bodies"] = asyncio.Semaphore(settings.large_batches_in_flight)
    app.cleanup_ctx.append(_resources)
    app.router.add_routes(
        [
            web.post("/v1/events", ingest.post_events),
            web.post("/events", ingest.post_events),
            web.get(f"/v1/usage/{TENANT}", usage.get_usage),
            web.get(f"/usage/{TENANT}", usage.get_usage),
            web.get(f"/v1/usage/{TENANT}/series", usage.get_series),
            # quota checks and reservations (issue 12)
            web.get(f"/v1/usage/{TENANT}/check", reservations.check),
            web.post("/v1/reservations", reservations.create_reservation),
            web.get("/v1/reservations", reservations.list_reservations),
            web.delete("/v1/reservations/{id}", reservations.delete_reservation),
            web.post("/v1/tenants", tenants.create_tenant),
            web.get("/v1/tenants", tenants.list_tenants),
            web.get(f"/v1/tenants/{TENANT}", tenants.get_tenant),
            web.patch(f"/v1/tenants/{TENANT}", tenants.patch_tenant),
            web.get(f"/v1/tenants/{TENANT}/keys", tenants.list_keys),
            web.post(f"/v1/tenants/{TENANT}/keys", tenants.create_key),
            web.delete(f"/v1/tenants/{TENANT}/keys/{KEY}", tenants.revoke_key),
            web.get("/openapi.json", openapi),
            # alerts and the dashboard (issue 3)
            web.get(f"/v1/tenants/{TENANT}/alerts", alert_settings.list_alerts),
            web.get("/", dashboard.overview),
            web.post("/login", dashboard.login),
            web.post("/logout", dashboard.logout),
            web.get("/tenants/{tenant}", dashboard.tenant_page),
            web.get("/dashboard/usage.json", dashboard.usage_json),
            web.get("/dashboard/tenants/{tenant}/usage.json", dashboard.tenant_json),
            web.get("/static/{name}", dashboard.static),
        ]
    )
    probes.add_routes(app)  # /health, /ready, /metrics
    return app


async def openapi(_: web.Request) -> web.Response:
    return web.Response(body=OPENAPI, content_type="application/json")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings: Settings = app["settings"]
    store = await Store.connect(settings.database_url, size=settings.db_pool_size)
    stream = Stream.from_settings(settings)
    app["store"] = store
    app["stream"] = stream
    app["tally"] = reservations.create_tally(store, stream, settings)
    app["directory"] = Directory(store, settings.admin_token)
    app["usage_cache"] = usage.UsageCache(store, stream)
    app["login_throttle"] = FailureThrottle(settings.login_attempts, dashboard.LOGIN_WINDOW_S, stream)
    sampler = asyncio.create_task(metrics.sample_process_forever("api"))
    yield
    sampler.cancel()
    await app["tally"].close()
    await stream.close()
    await store.close()
