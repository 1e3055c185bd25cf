"""The test harness: FlagMeter processes and plain HTTP/SQL helpers over real servers (see conftest.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg2

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


def _healthy(process: Process, port: int) -> tuple[Process, str]:
    """Wait for the process's /health on `port`; on failure, fail with its output."""
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health")
    except TimeoutError:
        raise AssertionError(process.output()) from None
    return process, url


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
    every: float = 0.05,
) -> None:
    """Poll `check` until it is true; an exception in `ignoring` counts as not yet. The one wait of
    every test (and of bench/), so that timeouts read the same everywhere."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ignoring:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def mid_period_day(today: date | None = None) -> int:
    """A billing day whose period boundaries lie about two weeks from `today` (default: now), on any
    day of any month: a test that posts events now and reads the current period never straddles one."""
    return ((today or datetime.now(UTC).date()) + timedelta(days=15)).day


def fresh_database(database_url: str) -> str:
    """A new, empty database on the same server; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return database_url.rsplit("/", 1)[0] + f"/{name}"


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
        return _healthy(process, port)

    def start_worker(self, **env: str) -> tuple[Process, str]:
        port = free_port()
        process = self.spawn("worker", FLAGMETER_WORKER_METRICS_PORT=str(port), **env)
        return _healthy(process, port)

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
