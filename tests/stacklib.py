"""The test harness: FlagMeter processes and plain HTTP/SQL helpers over real servers (see conftest.py)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg2

from flagmeter import launch
from flagmeter.events import Columns, Event
from flagmeter.launch import Process, wait_http, wait_until
from flagmeter.localstack import LocalStack

__all__ = ["ADMIN_TOKEN", "Process", "Stack", "fresh_database", "mid_period_day", "wait_http", "wait_until"]

ADMIN_TOKEN = "test-admin-token-0123456789"
ARTIFACTS = Path(__file__).parent / "artifacts"


def mid_period_day(today: date | None = None) -> int:
    """A billing day whose period boundaries lie about two weeks from `today` (default: now), on any
    day of any month: a test that posts events now and reads the current period never straddles one."""
    return ((today or datetime.now(UTC).date()) + timedelta(days=15)).day


def fresh_database(database_url: str, options: str = "") -> str:
    """A new, empty database on the same server (CREATE DATABASE's `options`); returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} {options}")
    admin.close()
    return database_url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Stack(launch.Stack):
    """The launcher, on the session's servers, with plain synchronous HTTP and SQL for tests."""

    servers: LocalStack | None = None  # the session's servers, for tests that stop and start them

    # -- plain synchronous HTTP for tests ---------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = ADMIN_TOKEN,
        raw: bytes | None = None,
        base: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        request = urllib.request.Request(f"{base or self.api_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload, head = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, payload, head = error.code, error.read(), dict(error.headers)
        try:
            decoded = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            decoded = payload.decode(errors="replace")
        return status, decoded, head

    def create_tenant(
        self, quota: int = 1_000_000, billing_day: int | None = None, **extra: Any
    ) -> tuple[str, str]:
        tenant_id = f"t-{uuid.uuid4().hex[:12]}"
        status, body, _ = self.request(
            "POST",
            "/v1/tenants",
            {
                "id": tenant_id,
                "name": f"Tenant {tenant_id}",
                "monthly_quota": quota,
                "billing_day": billing_day or mid_period_day(),
                **extra,
            },
        )
        assert status == 201, body
        return tenant_id, body["api_key"]

    def usage(self, tenant: str, base: str | None = None) -> dict[str, Any]:
        """The tenant's usage as an API answers it. A test running its own stream (FLAGMETER_STREAM)
        reads through its own API (`base`): usage versions live beside the stream, so an API on another
        stream never hears of that worker's batches and may answer from its cache for up to a minute."""
        status, body, _ = self.request("GET", f"/v1/usage/{tenant}", base=base)
        assert status == 200, body
        return dict(body)

    def wait_used(
        self, tenant: str, expected: int, timeout: float = 20.0, base: str | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        usage = self.usage(tenant, base)
        while usage["used"] != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            usage = self.usage(tenant, base)
        assert usage["used"] == expected, usage
        return usage

    def counted_rows(self, tenant: str) -> int:
        """The tenant's events the worker has counted: rows of the raw-event table, one per event id."""
        return int(self.sql("SELECT count(*) FROM events WHERE tenant_id = %s", (tenant,))[0][0])

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            rows = list(cur.fetchall()) if cur.description else []
        conn.close()
        return rows


def events_in(groups: Iterable[Columns] | None) -> tuple[Event, ...] | None:
    """The events a stream entry's groups of columns hold (events.columns made them), in order."""
    if groups is None:
        return None
    return tuple(
        Event(tenant, event_id, feature, tokens, occurred_ms, received_ms)
        for tenant, received_ms, ids, features, counts, times in groups
        for event_id, feature, tokens, occurred_ms in zip(ids, features, counts, times, strict=True)
    )
