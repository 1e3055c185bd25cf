"""Ingest-to-usage lag: how long after a 202 an event shows in GET /v1/usage, measured on a probe tenant.

The probe posts one event at a time for a tenant nothing else writes to, then polls its usage until the
total includes it. Polling every 20 ms bounds the measuring error to about that plus one request, and
keeps the probe's own load on the API small (about 50 requests per second).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

POLL_S = 0.02
GIVE_UP_S = 10.0


class ApiClient:
    """One keep-alive connection to the API; reconnects after any connection error."""

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        payload = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
            try:
                self._conn.request(method, path, payload, self._headers)
                response = self._conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            return response.status, json.loads(data) if data else None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn:
            self._conn.close()


def create_tenant(base_url: str, admin_token: str, tenant_id: str) -> str:
    """Create a tenant with a quota nothing reaches; return its API key."""
    client = ApiClient(base_url, admin_token)
    try:
        status, body = client.request(
            "POST", "/v1/tenants", {"id": tenant_id, "name": tenant_id, "monthly_quota": 10**15}
        )
    finally:
        client.close()
    if status != 201 or not isinstance(body, dict):
        raise RuntimeError(f"creating tenant {tenant_id}: HTTP {status} {body}")
    return str(body["api_key"])


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class LagProbe:
    """Runs in a thread from start() to stop(); lags_s holds one sample per probe event."""

    base_url: str
    tenant: str
    key: str
    gap_s: float = 0.1
    lags_s: list[float] = field(default_factory=list)
    lost: int = 0  # probe events not seen within GIVE_UP_S
    errors: int = 0  # probe posts not answered 202
    failure: str | None = None  # why the probe stopped early, if it did
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sequence: int = 0

    def _used(self, client: ApiClient) -> int:
        status, body = client.request("GET", f"/v1/usage/{self.tenant}")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"probe usage: HTTP {status} {body}")
        return int(body["used"])

    def _probe_once(self, client: ApiClient, expected: int) -> int:
        self._sequence += 1
        event = {"id": f"probe-{time.time_ns()}-{self._sequence}", "feature": "probe", "tokens": 1}
        status, _ = client.request("POST", "/v1/events", event)
        accepted_at = time.monotonic()
        if status != 202:
            self.errors += 1
            return expected
        expected += 1
        while time.monotonic() - accepted_at < GIVE_UP_S:
            if self._used(client) >= expected:
                self.lags_s.append(time.monotonic() - accepted_at)
                return expected
            time.sleep(POLL_S)
        self.lost += 1
        return expected

    def _loop(self) -> None:
        client = ApiClient(self.base_url, self.key)
        try:
            expected = self._used(client)
            while not self._stop.is_set():
                expected = self._probe_once(client, expected)
                self._stop.wait(self.gap_s)
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            self.failure = repr(exc)
        finally:
            client.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lag-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(GIVE_UP_S + 5)

    def summary(self) -> dict[str, float | int | str | None]:
        """Lag percentiles with each lost probe taken as GIVE_UP_S, the least it waited: a worker so far
        behind that probes are given up on cannot leave only its quicker probes in the percentiles."""
        lags = self.lags_s + [GIVE_UP_S] * self.lost
        return {
            "samples": len(self.lags_s),
            "p50_ms": _ms(percentile(lags, 50)),
            "p99_ms": _ms(percentile(lags, 99)),
            "max_ms": _ms(max(lags, default=None)),
            "lost": self.lost,
            "errors": self.errors,
            "failure": self.failure,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
