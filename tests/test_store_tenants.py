"""Store.update_tenant on a real PostgreSQL: a PATCH's tenant and alert changes are one transaction."""

from __future__ import annotations

import asyncio

import psycopg2
import pytest

from flagmeter.localstack import LocalStack
from flagmeter.store import AlertSettingsChange, Store, migrate
from stacklib import fresh_database


def _tenant_row(url: str) -> tuple[object, ...]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT monthly_quota, billing_day, alert_thresholds FROM tenants WHERE id = 'acme'")
        row = cur.fetchone()
    conn.close()
    assert row is not None
    return tuple(row)


def test_a_failing_alert_change_leaves_the_tenant_unchanged(servers: LocalStack) -> None:
    url = fresh_database(servers.database_url)
    asyncio.run(migrate(url))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants (id, name, monthly_quota, billing_day) VALUES ('acme', 'Acme', 100, 1)"
        )
    conn.close()

    async def patch(change: AlertSettingsChange) -> None:
        store = await Store.connect(url, size=1)
        try:
            await store.update_tenant("acme", {"monthly_quota": 7, "billing_day": 15}, change)
        finally:
            await store.close()

    # The schema refuses a threshold above 1000 %: the quota and billing day must not stay changed.
    with pytest.raises(psycopg2.IntegrityError):
        asyncio.run(patch(AlertSettingsChange(thresholds=[5000])))
    assert _tenant_row(url) == (100, 1, [80, 100])

    asyncio.run(patch(AlertSettingsChange(thresholds=[50])))
    assert _tenant_row(url) == (7, 15, [50])
