"""Shared fixtures: real PostgreSQL and Redis servers, and the real API and worker processes.

Everything runs on 127.0.0.1 from the system's binaries (see flagmeter.localstack); nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flagmeter.localstack import LocalStack
from stacklib import ADMIN_TOKEN, Stack


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
    result = Stack(tmp_path_factory.mktemp("processes"), env, servers=servers)
    _, result.api_url = result.start_api()
    _, result.worker_metrics_url = result.start_worker()
    yield result
    result.stop()


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
