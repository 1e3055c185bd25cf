"""A quota check across a period rollover, on a service whose clock is pinned just before a period ends."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis

from alerts.local_env import LocalEnv
from flagmeter.clock import rfc3339
from stacklib import Stack, wait_until

BOUNDARY = datetime(2027, 3, 1, tzinfo=UTC)  # a period of billing day 1 ends here
LEAD_S = 30.0  # the service starts this long before the boundary: time to start it and post


def test_check_rolls_over_with_the_period_and_equals_usage_on_each_side(stack: Stack) -> None:
    offset = BOUNDARY.timestamp() - LEAD_S - time.time()
    env = LocalEnv.create(stack, FLAGMETER_CLOCK_OFFSET=str(offset))
    try:
        env.start_api()
        env.start_worker()
        tenant = env.create_tenant(quota=1000, billing_day=1)

        def now() -> datetime:
            return datetime.fromtimestamp(time.time() + offset, UTC)

        def check() -> dict[str, object]:
            status, body, _ = env.request("GET", f"/v1/usage/{tenant}/check")
            assert status == 200, body
            return dict(body)

        def caught_up(used: int) -> None:
            client = redis.Redis.from_url(env.env["REDIS_URL"])
            wait_until(
                lambda: (
                    client.xlen("flagmeter:events") == 0
                    and env.request("GET", f"/v1/usage/{tenant}")[1]["used"] == used
                ),
                20,
                f"{used} counted",
            )
            client.close()
            assert check()["used"] == used

        env.post(tenant, 400)
        assert now() < BOUNDARY, "the service started too slowly to post before the boundary"
        assert check()["period"] == {"start": "2027-02-01T00:00:00Z", "end": rfc3339(BOUNDARY)}
        caught_up(400)

        wait_until(lambda: now() > BOUNDARY, LEAD_S + 5, "the period to end")
        after = check()
        assert after["period"] == {"start": rfc3339(BOUNDARY), "end": "2027-04-01T00:00:00Z"}
        assert (after["used"], after["remaining"]) == (0, 1000)
        env.post(tenant, 250)
        assert check()["used"] == 250
        caught_up(250)
    finally:
        env.stop()
