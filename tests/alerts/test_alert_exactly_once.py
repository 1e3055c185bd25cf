"""Once per (tenant, period, threshold) whatever the workers do: run side by side, or die mid-delivery."""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from local_env import LocalEnv, Receiver, Reply, wait_until

pytestmark = pytest.mark.slow


def test_two_workers_send_each_threshold_once(alert_env: LocalEnv, receiver: Receiver) -> None:
    alert_env.start_worker()  # a second worker beside the module's: two processes, four consumers
    tenants = [alert_env.create_tenant(quota=1000) for _ in range(6)]
    for tenant in tenants:
        alert_env.patch(tenant, webhook_url=receiver.url(f"/hook/{tenant}"))

    # 6 tenants x 40 requests of 3 x 10 tokens: each ends at 120 %, crossing both thresholds
    # in whichever batches and workers the stream hands them to.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: alert_env.post(t, 10, 10, 10), [t for _ in range(40) for t in tenants]))
    for tenant in tenants:
        alert_env.wait_total(tenant, 1200)
        receiver.wait(f"/hook/{tenant}", 2)
    time.sleep(1.5)  # room for any duplicate to arrive

    for tenant in tenants:
        hooks = receiver.at(f"/hook/{tenant}")
        assert Counter(h.json()["data"]["threshold"] for h in hooks) == {80: 1, 100: 1}
    decided = alert_env.sql("SELECT tenant_id, threshold, count(*) FROM alerts GROUP BY 1, 2")
    assert sorted(decided) == sorted((t, th, 1) for t in tenants for th in (80, 100))
    first_used = dict(
        alert_env.sql(
            "SELECT tenant_id, used FROM alerts WHERE threshold = 80 AND tenant_id = ANY(%s)", (tenants,)
        )
    )
    assert all(800 <= used <= 1200 for used in first_used.values()), first_used


def test_worker_killed_after_commit_mid_delivery_is_delivered_by_another_once(
    stack: Any, receiver: Receiver
) -> None:
    env = LocalEnv.create(stack)
    try:
        env.start_api()
        victim = env.start_worker()
        tenant = env.create_tenant(quota=1000)
        env.patch(tenant, webhook_url=receiver.url(f"/hook/{tenant}"))
        receiver.script(f"/hook/{tenant}", Reply(hang=True))  # the victim's request never gets an answer
        env.post(tenant, 900)
        (first,) = receiver.wait(f"/hook/{tenant}", 1)
        assert env.sql("SELECT count(*) FROM alerts WHERE tenant_id = %s", (tenant,)) == [(1,)]

        victim.stop(signal.SIGKILL)  # committed, leased, request in flight, no answer recorded
        assert env.sql("SELECT status, attempts FROM alert_deliveries") == [("pending", 1)]
        assert env.sql("SELECT outcome FROM alert_attempts") == [("in_flight",)]
        env.start_worker()  # takes the row once the dead worker's lease runs out
        hooks = receiver.wait(f"/hook/{tenant}", 2, timeout=30)
        wait_until(
            lambda: env.sql("SELECT status FROM alert_deliveries") == [("delivered",)],
            10,
            "the delivery record",
        )
        time.sleep(1.0)

        answered = [h for h in receiver.at(f"/hook/{tenant}") if h.answered == 200]
        assert len(answered) == 1 and first.answered is None
        assert {h.headers["webhook-id"] for h in hooks} == {
            first.headers["webhook-id"]
        }  # receivers can dedupe
        assert env.sql("SELECT count(*) FROM alerts") == [(1,)]
        assert env.sql("SELECT outcome, http_status FROM alert_attempts ORDER BY id") == [
            ("interrupted", None),
            ("delivered", 200),
        ]
    finally:
        receiver.release()
        env.stop()
