"""The stack scaled out unchanged: two API replicas on a published port range and two workers in one
consumer group share the work and count every event once."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_support import DEPLOYED, PRODUCTION_FILE, ComposeStack, running_stack, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TENANT = "deploy-scale"
BATCHES = 20
BATCH = 200
METRICS = "import urllib.request as r; print(r.urlopen('http://127.0.0.1:9091/metrics').read().decode())"


def counted_by_worker(stack: ComposeStack, index: int) -> float:
    page = stack.compose("exec", "-T", "--index", str(index), "worker", "python3", "-c", METRICS)
    match = re.search(r"^flagmeter_worker_events_counted_total(?:\{[^}]*\})? (\S+)$", page, re.M)
    assert match, page[:2000]
    return float(match.group(1))


def test_two_api_replicas_and_two_workers_count_every_event_once(
    app_image: str, local_images: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = tmp_path_factory.mktemp("scale")
    scaled = {"FLAGMETER_WORKER_REPLICAS": "2"}
    with running_stack((PRODUCTION_FILE,), work, api_replicas=2, extra_env=scaled) as stack:
        assert len(stack.compose("ps", "-q", "worker").split()) == 2
        status, body = stack.call(
            "POST", "/v1/tenants", {"id": TENANT, "name": "Scale", "monthly_quota": 10**12}
        )
        assert status == 201, body
        expected = 0
        for batch in range(BATCHES):
            events: list[dict[str, Any]] = [
                {"tenant": TENANT, "id": f"b{batch}-e{n}", "feature": "chat", "tokens": n % 89 + 1}
                for n in range(BATCH)
            ]
            # Each batch through both replicas: the second copy must be counted as a duplicate.
            for port in stack.api_ports:
                status, body = stack.call("POST", "/v1/events", events, port=port)
                assert status == 202, body
            expected += sum(event["tokens"] for event in events)

        def counted() -> bool:
            used: int = stack.call("GET", f"/v1/usage/{TENANT}")[1]["used"]
            return used == expected

        wait_until(counted, 120, "every event counted once", **DEPLOYED)
        rows = stack.sql(f"SELECT count(*) FROM events WHERE tenant_id = '{TENANT}'")
        assert rows == str(BATCHES * BATCH)
        per_worker = [counted_by_worker(stack, index) for index in (1, 2)]
        assert min(per_worker) > 0, per_worker
