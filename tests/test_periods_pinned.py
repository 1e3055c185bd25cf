"""Billing periods through the running service on pinned days: the API and the worker read "now"
from flagmeter.clock, pinned here with FLAGMETER_CLOCK_OFFSET, never from the system's date.

Every expectation is computed from flagmeter.periods and the pinned instant, so these tests say
the same thing on any real day; the dates are the calendar's edges (the 1st and 2nd after a month
end, mid-month, a common February's last day, a leap day, a 30-day month's last day, the 31st).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.local_env import LocalEnv
from flagmeter.clock import rfc3339
from flagmeter.periods import Period, period_containing
from stacklib import Stack, wait_until

PINNED = {
    "1st": datetime(2027, 3, 1, 12, tzinfo=UTC),  # after a common February
    "2nd": datetime(2026, 12, 2, 12, tzinfo=UTC),
    "15th": datetime(2027, 1, 15, 12, tzinfo=UTC),
    "28th": datetime(2027, 2, 28, 12, tzinfo=UTC),  # a common February's last day
    "leap-day": datetime(2028, 2, 29, 12, tzinfo=UTC),
    "30th": datetime(2027, 4, 30, 12, tzinfo=UTC),  # a 30-day month's last day
    "31st": datetime(2026, 12, 31, 12, tzinfo=UTC),
}
BILLING_DAYS = (1, 2, 15, 28, 29, 30, 31)


@dataclass
class PinnedService:
    """An API (two processes) and a worker whose clocks read `today` when they start."""

    env: LocalEnv
    today: datetime
    offset_s: float

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.offset_s, UTC)

    def create_tenant(self, billing_day: int, quota: int = 1_000_000) -> str:
        return self.env.create_tenant(quota=quota, billing_day=billing_day)

    def post(self, tenant: str, stamped: list[tuple[datetime, int]]) -> None:
        events = [
            {
                "id": uuid.uuid4().hex,
                "tenant": tenant,
                "feature": "chat",
                "tokens": n,
                "timestamp": rfc3339(at),
            }
            for at, n in stamped
        ]
        status, body, _ = self.env.request("POST", "/v1/events", events)
        assert status == 202 and body["accepted"] == len(events), body

    def usage(self, tenant: str) -> dict[str, Any]:
        status, body, _ = self.env.request("GET", f"/v1/usage/{tenant}")
        assert status == 200, body
        return dict(body)


def expected_usage(stamped: list[tuple[datetime, int]], period: Period) -> int:
    return sum(tokens for at, tokens in stamped if at in period)


def period_json(period: Period) -> dict[str, str]:
    return {"start": rfc3339(period.start), "end": rfc3339(period.end)}


def spread_over_the_last_month(today: datetime) -> list[tuple[datetime, int]]:
    """Events on each of the last 34 days at 00:00 (a period boundary when it is a billing day),
    one a second before midnight, and one now."""
    midnight = today.replace(hour=0, minute=0, second=0, microsecond=0)
    stamped = [(midnight - timedelta(days=d), 10 + d) for d in range(34)]
    stamped.append((midnight - timedelta(seconds=1), 3))
    stamped.append((today, 5))
    return stamped


@pytest.fixture(scope="module")
def pinned_env(stack: Stack) -> Iterator[LocalEnv]:
    env = LocalEnv.create(stack)
    yield env
    env.stop()


@pytest.fixture(scope="module", params=list(PINNED), ids=list(PINNED))
def pinned(request: pytest.FixtureRequest, pinned_env: LocalEnv) -> Iterator[PinnedService]:
    today = PINNED[request.param]
    offset = today.timestamp() - time.time()
    env = LocalEnv(pinned_env.stack, {**pinned_env.env})
    clock = {
        "FLAGMETER_CLOCK_OFFSET": f"{offset:.3f}",
        "FLAGMETER_STREAM": f"flagmeter:pinned:{request.param}",
    }
    env.env.update(clock)
    process, env.api_url = env.stack.start_api(processes=2, **env.env)
    env.processes.append(process)
    env.start_worker()
    yield PinnedService(env, today, offset)
    env.stop()


def test_usage_reports_the_period_the_pinned_day_falls_in(pinned: PinnedService) -> None:
    for day in BILLING_DAYS:
        tenant = pinned.create_tenant(day)
        usage = pinned.usage(tenant)
        assert usage["period"] == period_json(period_containing(pinned.now(), day)), day
        assert usage["as_of"][:10] == pinned.today.date().isoformat()


def test_events_count_toward_the_period_their_timestamp_falls_in(pinned: PinnedService) -> None:
    stamped = spread_over_the_last_month(pinned.today)
    tenants = {day: pinned.create_tenant(day) for day in BILLING_DAYS}
    for tenant in tenants.values():
        pinned.post(tenant, stamped)
    for day, tenant in tenants.items():
        pinned.env.wait_total(tenant, sum(n for _, n in stamped))
        current = period_containing(pinned.now(), day)
        assert pinned.usage(tenant)["used"] == expected_usage(stamped, current), day
        per_period = dict(
            pinned.env.sql(
                "SELECT period_start, sum(tokens) FROM period_totals WHERE tenant_id = %s GROUP BY 1",
                (tenant,),
            )
        )
        expected: dict[datetime, int] = {}
        for at, tokens in stamped:
            start = period_containing(at, day).start
            expected[start] = expected.get(start, 0) + tokens
        assert per_period == expected, day


def test_changing_the_billing_day_regroups_usage_into_the_new_period(pinned: PinnedService) -> None:
    stamped = spread_over_the_last_month(pinned.today)
    tenant = pinned.create_tenant(1)
    pinned.post(tenant, stamped)
    pinned.env.wait_total(tenant, sum(n for _, n in stamped))
    assert pinned.usage(tenant)["used"] == expected_usage(stamped, period_containing(pinned.now(), 1))

    yesterday = (pinned.today - timedelta(days=1)).day  # on the 1st: the last day of the month before
    for day in (yesterday, 31, pinned.today.day, 1):
        assert pinned.env.patch(tenant, billing_day=day)["billing_day"] == day
        period = period_containing(pinned.now(), day)
        # Either API process may answer; each must show the new period once its tenant cache has
        # expired, with exactly the events whose timestamps fall in it.
        wait_until(lambda: pinned.usage(tenant)["period"] == period_json(period), 5, f"period for day {day}")  # noqa: B023
        for _ in range(4):
            usage = pinned.usage(tenant)
            assert usage["period"] == period_json(period), day
            assert usage["used"] == expected_usage(stamped, period), day


ROLLOVERS = {
    # (pinned instant, billing day): a period boundary eight seconds after the service starts
    "month-end": (datetime(2027, 1, 31, 23, 59, 52, tzinfo=UTC), 1),
    "into-leap-day": (datetime(2028, 2, 28, 23, 59, 52, tzinfo=UTC), 29),
    "day-31-in-april": (datetime(2027, 4, 29, 23, 59, 52, tzinfo=UTC), 31),
}


@pytest.mark.parametrize("case", list(ROLLOVERS))
def test_usage_rolls_over_to_an_empty_period_at_the_boundary(pinned_env: LocalEnv, case: str) -> None:
    instant, day = ROLLOVERS[case]
    boundary = period_containing(instant, day).end
    assert boundary - instant < timedelta(seconds=10)
    env = LocalEnv(pinned_env.stack, {**pinned_env.env})
    env.env.update(
        {
            "FLAGMETER_CLOCK_OFFSET": f"{instant.timestamp() - time.time():.3f}",
            "FLAGMETER_STREAM": f"flagmeter:rollover:{case}",
        }
    )
    service = PinnedService(env, instant, instant.timestamp() - time.time())
    try:
        process, env.api_url = env.stack.start_api(processes=1, **env.env)
        env.processes.append(process)
        env.start_worker()
        tenant = service.create_tenant(day)
        service.post(tenant, [(instant, 40)])
        env.wait_total(tenant, 40)
        before = service.usage(tenant)
        if service.now() < boundary:  # a start-up slower than eight seconds skips this half
            assert before["used"] == 40 and before["period"]["end"] == rfc3339(boundary)
        wait_until(lambda: service.now() >= boundary, 10, "the pinned clock to pass the boundary")
        after = service.usage(tenant)
        assert after["period"]["start"] == rfc3339(boundary)
        assert after["used"] == 0
        status, body, _ = env.request(
            "POST", "/v1/events", {"tenant": tenant, "feature": "chat", "tokens": 2}
        )
        assert status == 202, body
        env.wait_total(tenant, 42)
        assert service.usage(tenant)["used"] == 2
    finally:
        env.stop()
