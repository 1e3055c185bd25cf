"""What a tenant has used: the current period's totals, rollups by window, recent tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..periods import Period, period_containing
from .base import Database
from .tenants import TENANT_COLUMNS, TENANT_FROM, Tenant, tenant_from_row

WINDOWS = {"minute", "hour", "day"}


@dataclass(frozen=True, slots=True)
class CurrentUsage:
    """A tenant as it is now and its tokens by feature in the period holding `now`."""

    tenant: Tenant
    period: Period
    by_feature: dict[str, int]
    version: int = 0  # tenants.usage_version in the same snapshot (migration 0006)

    @property
    def used(self) -> int:
        return sum(self.by_feature.values())


class UsageStore(Database):
    async def current_usage(self, now: datetime, tenant_id: str | None = None) -> dict[str, CurrentUsage]:
        """Each tenant (or the one named) with its totals in the period holding `now`.

        The tenant's billing day and its period totals come from one statement, hence one snapshot:
        a billing-day change (which regroups the totals in its transaction) shows either the old
        period with the old totals or the new period with the new ones, never a mix. The usage
        version comes from the same snapshot.
        """
        rows = await self._all(
            f"SELECT {TENANT_COLUMNS}, p.period_start, p.feature, p.tokens, t.usage_version"
            f" FROM {TENANT_FROM}"
            " LEFT JOIN period_totals p ON p.tenant_id = t.id"
            "  AND p.period_start > %s::timestamptz - interval '32 days' AND p.period_start <= %s"
            " WHERE %s::text IS NULL OR t.id = %s",
            (now, now, tenant_id, tenant_id),
        )
        found: dict[str, CurrentUsage] = {}
        for row in rows:
            usage = found.get(row[0])
            if usage is None:
                tenant = tenant_from_row(row)
                usage = found[tenant.id] = CurrentUsage(
                    tenant, period_containing(now, tenant.billing_day), {}, int(row[9])
                )
            period_start, feature, tokens = row[6:9]
            if period_start == usage.period.start:
                usage.by_feature[feature] = int(tokens)
        return found

    async def series(
        self, tenant_id: str, start: datetime, end: datetime, window: str, feature: str | None
    ) -> list[tuple[datetime, int, int]]:
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {sorted(WINDOWS)}")
        sql = (
            "SELECT date_trunc(%s, minute AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,"
            " sum(tokens), sum(events) FROM rollups"
            " WHERE tenant_id = %s AND minute >= %s AND minute < %s"
        )
        params: list[Any] = [window, tenant_id, start, end]
        if feature is not None:
            sql += " AND feature = %s"
            params.append(feature)
        rows = await self._all(sql + " GROUP BY bucket ORDER BY bucket", params)
        return [(bucket, int(tokens), int(events)) for bucket, tokens, events in rows]

    async def recent_tokens(self, tenant_ids: list[str], since: datetime) -> dict[str, int]:
        """Tokens per tenant since `since`, through the (tenant, minute) index (the dashboard)."""
        rows = await self._all(
            "SELECT tenant_id, sum(tokens) FROM rollups WHERE tenant_id = ANY(%s) AND minute >= %s"
            " GROUP BY tenant_id",
            (tenant_ids, since),
        )
        return {tenant: int(tokens) for tenant, tokens in rows}
