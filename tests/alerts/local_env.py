"""Helpers for alert and dashboard tests: an isolated FlagMeter (own database and Redis db on the
session's servers, own API and workers) and a real aiohttp webhook receiver on 127.0.0.1.

Isolation matters: the session `stack` worker would otherwise deliver (or not) the alerts a test
is watching, with its own retry settings.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg2
import redis
from aiohttp import web

from flagmeter.clock import rfc3339
from flagmeter.localstack import free_port
from stacklib import fresh_database, mid_period_day, wait_until

REDIS_DATABASES = 16  # the server's default; 0 is the session stack's

# Retries in a fraction of a second and a 1 s timeout, so an hour of backoff fits in a test.
FAST_DELIVERY = {
    "FLAGMETER_ALERT_RETRY_BASE_MS": "300",
    "FLAGMETER_ALERT_TIMEOUT_MS": "1000",
    "FLAGMETER_ALERT_MAX_ATTEMPTS": "5",
    "FLAGMETER_PUBLIC_URL": "https://flagmeter.example",
}


@dataclass
class LocalEnv:
    """One FlagMeter deployment inside the session's PostgreSQL and Redis servers."""

    stack: Any  # tests/conftest.py Stack: spawns processes and speaks HTTP
    env: dict[str, str]
    api_url: str = ""
    processes: list[Any] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, stack: Any, **env: str) -> LocalEnv:
        database_url = fresh_database(stack.database_url)
        redis_url = stack.redis_url.rsplit("/", 1)[0] + f"/{_next_redis_db(stack.redis_url)}"
        overrides = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, **FAST_DELIVERY, **env}
        subprocess.run(
            [sys.executable, "-m", "flagmeter.cli", "migrate"],
            env={**stack.env, **overrides},
            check=True,
            capture_output=True,
        )
        return cls(stack, overrides)

    def start_api(self, **env: str) -> str:
        process, self.api_url = self.stack.start_api(processes=1, **{**self.env, **env})
        self.processes.append(process)
        return self.api_url

    def start_worker(self, **env: str) -> Any:
        process, metrics_url = self.stack.start_worker(**{**self.env, **env})
        self.processes.append(process)
        self.metrics_urls.append(metrics_url)
        return process

    def request(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        result: tuple[int, Any, dict[str, str]] = self.stack.request(
            method, path, body, base=self.api_url, **kwargs
        )
        return result

    def create_tenant(self, quota: int = 1000, billing_day: int | None = None, **patch: Any) -> str:
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        status, body, _ = self.request(
            "POST",
            "/v1/tenants",
            {
                "id": tenant,
                "name": f"Tenant {tenant}",
                "monthly_quota": quota,
                "billing_day": billing_day or mid_period_day(),
            },
        )
        assert status == 201, body
        if patch:
            self.patch(tenant, **patch)
        return tenant

    def patch(self, tenant: str, **changes: Any) -> dict[str, Any]:
        status, body, _ = self.request("PATCH", f"/v1/tenants/{tenant}", changes)
        assert status == 200, body
        return dict(body)

    def post(self, tenant: str, *tokens: int, at: datetime | None = None, feature: str = "chat") -> None:
        """One request, one event per value in `tokens`, all in the same stream batch if possible."""
        events = [
            {
                "id": uuid.uuid4().hex,
                "tenant": tenant,
                "feature": feature,
                "tokens": n,
                **({"timestamp": rfc3339(at)} if at else {}),
            }
            for n in tokens
        ]
        status, body, _ = self.request("POST", "/v1/events", events)
        assert status == 202, body

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg2.connect(self.env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            rows = list(cur.fetchall()) if cur.description else []
        conn.close()
        return rows

    def wait_total(self, tenant: str, tokens: int, timeout: float = 20) -> None:
        """Until the worker has counted `tokens` for the tenant, whatever period they fall in."""
        wait_until(
            lambda: (
                self.sql(
                    "SELECT coalesce(sum(tokens), 0) FROM period_totals WHERE tenant_id = %s", (tenant,)
                )[0][0]
                == tokens
            ),
            timeout,
            f"{tenant} to reach {tokens} tokens",
        )

    def alerts(self, tenant: str) -> list[dict[str, Any]]:
        status, body, _ = self.request("GET", f"/v1/tenants/{tenant}/alerts")
        assert status == 200, body
        return list(body["alerts"])

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _next_redis_db(url: str) -> int:
    """A Redis database no other environment of this session uses (the counter lives in db 0)."""
    client = redis.Redis.from_url(url)
    number = int(client.incr("flagmeter-tests:redis-databases"))
    client.close()
    assert number < REDIS_DATABASES, "more isolated environments than Redis databases"
    return number


# -- the receiver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # hold the request until `release()`


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int | None = None  # the status sent back; None: the caller went away first

    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 in its own thread, answering from a per-path script."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self._script: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._release = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to `path` with `replies`, then 200."""
        with self._lock:
            self._script[path] = list(replies)

    def release(self) -> None:
        self._release.set()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 20) -> list[Received]:
        wait_until(lambda: len(self.at(path)) >= count, timeout, f"{count} request(s) to {path}")
        return self.at(path)

    async def _handle(self, request: web.Request) -> web.Response:
        record = Received(request.path, dict(request.headers), await request.read(), time.monotonic())
        with self._lock:
            self.received.append(record)
            queue = self._script.get(request.path) or []
            reply = queue.pop(0) if queue else Reply()
        await asyncio.sleep(reply.delay)
        if reply.hang:
            await asyncio.get_running_loop().run_in_executor(None, self._release.wait, 60)
        if request.transport is not None and not request.transport.is_closing():
            record.answered = reply.status
        return web.Response(status=reply.status, headers=reply.headers, text="ok")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def close(self) -> None:
        self._release.set()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
