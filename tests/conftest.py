"""Shared fixtures: real PostgreSQL and Redis servers, and the real API and worker processes.

Everything runs on 127.0.0.1 from the system's binaries (see flagmeter.localstack); nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest

from flagmeter.localstack import LocalStack, free_port

ADMIN_TOKEN = "test-admin-token-0123456789"
ARTIFACTS = Path(__file__).parent / "artifacts"


def wait_http(url: str, timeout: float = 30.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == status:
                    return
        except urllib.error.HTTPError as error:
            last = error.code
        except OSError as error:
            last = error
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s (last: {last})")


@dataclass
class Process:
    """A flagmeter command running as a real child process, with its output in a log file."""

    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Stack:
    servers: LocalStack
    workdir: Path
    env: dict[str, str]
    api_url: str = ""
    worker_metrics_url: str = ""
    admin_token: str = ADMIN_TOKEN
    processes: list[Process] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.servers.database_url

    @property
    def redis_url(self) -> str:
        return self.servers.redis_url

    def spawn(self, *args: str, **env: str) -> Process:
        log = self.workdir / f"{args[0]}-{uuid.uuid4().hex[:8]}.log"
        handle = open(log, "wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", "flagmeter.cli", *args],
            env={**self.env, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        process = Process(popen, log)
        self.processes.append(process)
        return process

    def start_api(self, processes: int = 2, **env: str) -> tuple[Process, str]:
        port = free_port()
        process = self.spawn("api", "--processes", str(processes), PORT=str(port), **env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health")
        except TimeoutError:
            raise AssertionError(process.output()) from None
        return process, url

    def start_worker(self, **env: str) -> tuple[Process, str]:
        port = free_port()
        process = self.spawn("worker", FLAGMETER_WORKER_METRICS_PORT=str(port), **env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health")
        except TimeoutError:
            raise AssertionError(process.output()) from None
        return process, url

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

    def create_tenant(self, quota: int = 1_000_000, billing_day: int = 1, **extra: Any) -> tuple[str, str]:
        tenant_id = f"t-{uuid.uuid4().hex[:12]}"
        status, body, _ = self.request(
            "POST",
            "/v1/tenants",
            {
                "id": tenant_id,
                "name": f"Tenant {tenant_id}",
                "monthly_quota": quota,
                "billing_day": billing_day,
                **extra,
            },
        )
        assert status == 201, body
        return tenant_id, body["api_key"]

    def usage(self, tenant: str) -> dict[str, Any]:
        status, body, _ = self.request("GET", f"/v1/usage/{tenant}")
        assert status == 200, body
        return dict(body)

    def wait_used(self, tenant: str, expected: int, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        usage = self.usage(tenant)
        while usage["used"] != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            usage = self.usage(tenant)
        assert usage["used"] == expected, usage
        return usage

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            rows = list(cur.fetchall()) if cur.description else []
        conn.close()
        return rows


@pytest.fixture(scope="session")
def servers() -> Iterator[LocalStack]:
    root = Path(tempfile.mkdtemp(prefix="flagmeter-test-", dir=os.environ.get("FLAGMETER_TEST_DIR")))
    os.chmod(root, 0o755)
    stack = LocalStack(root)
    stack.start()
    subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", "migrate"],
        env={**os.environ, "DATABASE_URL": stack.database_url},
        check=True,
        capture_output=True,
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def stack(servers: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running API (2 processes) and worker against real PostgreSQL and Redis."""
    env = {
        **os.environ,
        "DATABASE_URL": servers.database_url,
        "REDIS_URL": servers.redis_url,
        "FLAGMETER_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLAGMETER_CLAIM_IDLE_MS": "2000",
        "FLAGMETER_ALLOW_HTTP_WEBHOOKS": "1",
        "FLAGMETER_ALLOW_PRIVATE_WEBHOOKS": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = Stack(servers, tmp_path_factory.mktemp("processes"), env)
    _, result.api_url = result.start_api()
    _, result.worker_metrics_url = result.start_worker()
    yield result
    for process in result.processes:
        process.stop()


@pytest.fixture(autouse=True)
def rollups_match_events(request: pytest.FixtureRequest) -> Iterator[None]:
    """After any test that used the stack: rollups and period totals agree with the events table."""
    yield
    if "stack" not in request.fixturenames:
        return
    stack: Stack = request.getfixturevalue("stack")
    mismatched = stack.sql(
        """
        SELECT coalesce(r.tenant_id, e.tenant_id), coalesce(r.feature, e.feature),
               coalesce(r.minute, e.minute)
        FROM rollups r
        FULL JOIN (SELECT tenant_id, feature, date_trunc('minute', occurred_at) AS minute,
                          sum(tokens) AS tokens, count(*) AS events
                   FROM events GROUP BY 1, 2, 3) e
          ON (r.tenant_id, r.feature, r.minute) = (e.tenant_id, e.feature, e.minute)
        WHERE r.tokens IS DISTINCT FROM e.tokens OR r.events IS DISTINCT FROM e.events
        """
    )
    assert mismatched == [], f"rollups disagree with events: {mismatched[:5]}"
    totals = stack.sql(
        """
        SELECT p.tenant_id FROM (SELECT tenant_id, sum(tokens) t FROM period_totals GROUP BY 1) p
        FULL JOIN (SELECT tenant_id, sum(tokens) t FROM rollups GROUP BY 1) r USING (tenant_id)
        WHERE p.t IS DISTINCT FROM r.t
        """
    )
    assert totals == [], f"period totals disagree with rollups: {totals[:5]}"
