"""Tenants and their API keys (only keys' hashes are stored)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.errors

from ..periods import period_containing
from .base import Conflict, Database
from .outbox import AlertSettingsChange, apply_alert_settings

TENANT_COLUMNS = "t.id, t.name, t.monthly_quota, t.billing_day, t.created_at, w.url"
TENANT_FROM = "tenants t LEFT JOIN slack_webhooks w ON w.tenant_id = t.id"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    monthly_quota: int
    billing_day: int
    created_at: datetime
    slack_webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    created_at: datetime
    revoked_at: datetime | None
    label: str = ""


def tenant_from_row(row: Sequence[Any]) -> Tenant:
    return Tenant(row[0], row[1], row[2], row[3], row[4], row[5])


class TenantStore(Database):
    async def create_tenant(self, tenant: Tenant, key_id: str, key_hash: str, label: str = "") -> Tenant:
        async with self._cursor(transaction=True) as cur:
            try:
                await cur.execute(
                    "INSERT INTO tenants (id, name, monthly_quota, billing_day) VALUES (%s, %s, %s, %s)"
                    " RETURNING created_at",
                    (tenant.id, tenant.name, tenant.monthly_quota, tenant.billing_day),
                )
            except psycopg2.errors.UniqueViolation:
                raise Conflict(f"tenant {tenant.id!r} already exists") from None
            (created_at,) = await cur.fetchone()
            if tenant.slack_webhook_url:
                await cur.execute(
                    "INSERT INTO slack_webhooks (tenant_id, url) VALUES (%s, %s)",
                    (tenant.id, tenant.slack_webhook_url),
                )
            await cur.execute(
                "INSERT INTO api_keys (id, tenant_id, key_hash, label) VALUES (%s, %s, %s, %s)",
                (key_id, tenant.id, key_hash, label),
            )
        return Tenant(
            tenant.id,
            tenant.name,
            tenant.monthly_quota,
            tenant.billing_day,
            created_at,
            tenant.slack_webhook_url,
        )

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._all(f"SELECT {TENANT_COLUMNS} FROM {TENANT_FROM} ORDER BY t.id")
        return [tenant_from_row(row) for row in rows]

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._all(f"SELECT {TENANT_COLUMNS} FROM {TENANT_FROM} WHERE t.id = %s", (tenant_id,))
        return tenant_from_row(rows[0]) if rows else None

    async def update_tenant(
        self, tenant_id: str, changes: dict[str, Any], alert_change: AlertSettingsChange | None = None
    ) -> Tenant | None:
        """Apply validated changes (and alert settings) in one transaction; a new billing day
        regroups the period totals from the rollups in it too."""
        columns = {k: v for k, v in changes.items() if k in {"name", "monthly_quota", "billing_day"}}
        async with self._cursor(transaction=True) as cur:
            await cur.execute("SELECT billing_day FROM tenants WHERE id = %s FOR UPDATE", (tenant_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            if columns:
                assignments = ", ".join(f"{name} = %s" for name in columns)
                # A new quota or billing day changes the usage answer: its cached copies go stale.
                await cur.execute(
                    f"UPDATE tenants SET {assignments}, updated_at = now(),"
                    " usage_version = usage_version + 1 WHERE id = %s",
                    (*columns.values(), tenant_id),
                )
            if "slack_webhook_url" in changes:
                url = changes["slack_webhook_url"]
                if url:
                    await cur.execute(
                        "INSERT INTO slack_webhooks (tenant_id, url) VALUES (%s, %s) ON CONFLICT (tenant_id)"
                        " DO UPDATE SET url = excluded.url, enabled = true",
                        (tenant_id, url),
                    )
                else:
                    await cur.execute("DELETE FROM slack_webhooks WHERE tenant_id = %s", (tenant_id,))
            if alert_change is not None:
                await apply_alert_settings(cur, tenant_id, alert_change)
            new_day = columns.get("billing_day")
            if new_day is not None and new_day != row[0]:
                await self._regroup_period_totals(cur, tenant_id, new_day)
            await cur.execute(f"SELECT {TENANT_COLUMNS} FROM {TENANT_FROM} WHERE t.id = %s", (tenant_id,))
            return tenant_from_row(await cur.fetchone())

    async def _regroup_period_totals(self, cur: Any, tenant_id: str, billing_day: int) -> None:
        await cur.execute(
            "SELECT feature, date_trunc('day', minute), sum(tokens), sum(events) FROM rollups"
            " WHERE tenant_id = %s GROUP BY 1, 2",
            (tenant_id,),
        )
        totals: dict[tuple[datetime, str], list[int]] = defaultdict(lambda: [0, 0])
        for feature, day, tokens, events in await cur.fetchall():
            total = totals[(period_containing(day, billing_day).start, feature)]
            total[0] += int(tokens)
            total[1] += int(events)
        await cur.execute("DELETE FROM period_totals WHERE tenant_id = %s", (tenant_id,))
        if totals:
            keys = list(totals)
            await cur.execute(
                "INSERT INTO period_totals (tenant_id, period_start, feature, tokens, events)"
                " SELECT %s, * FROM unnest(%s::timestamptz[], %s::text[], %s::bigint[], %s::bigint[])",
                (
                    tenant_id,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [totals[k][0] for k in keys],
                    [totals[k][1] for k in keys],
                ),
            )

    async def create_key(self, tenant_id: str, key_id: str, key_hash: str, label: str = "") -> ApiKey:
        rows = await self._all(
            "INSERT INTO api_keys (id, tenant_id, key_hash, label) VALUES (%s, %s, %s, %s)"
            " RETURNING id, tenant_id, created_at, revoked_at, label",
            (key_id, tenant_id, key_hash, label),
        )
        return ApiKey(*rows[0])

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        rows = await self._all(
            "SELECT id, tenant_id, created_at, revoked_at, label FROM api_keys WHERE tenant_id = %s"
            " ORDER BY created_at, id",
            (tenant_id,),
        )
        return [ApiKey(*row) for row in rows]

    async def revoke_key(self, tenant_id: str, key_id: str) -> ApiKey | None:
        rows = await self._all(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = %s AND id = %s"
            " RETURNING id, tenant_id, created_at, revoked_at, label",
            (tenant_id, key_id),
        )
        return ApiKey(*rows[0]) if rows else None

    async def revoke_keys_labelled(self, tenant_id: str, label: str) -> None:
        await self._all(
            "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = %s AND label = %s"
            " AND revoked_at IS NULL RETURNING id",
            (tenant_id, label),
        )

    async def tenant_for_key(self, key_hash: str) -> str | None:
        rows = await self._all(
            "SELECT tenant_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,)
        )
        return str(rows[0][0]) if rows else None
