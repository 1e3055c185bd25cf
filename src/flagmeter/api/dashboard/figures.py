"""What the dashboard shows of a tenant, read at one moment, and its JSON for dashboard.js (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...alerts import percent_used
from ...clock import rfc3339
from ...periods import Period
from ...store import AlertRecord, Tenant
from ...tally import Hold
from .chart import Chart
from .format import delivery_summary, human_time, level, percent_label, period_label

RESERVATIONS_NOTE = {False: "No active reservations.", True: "Reservations cannot be read right now."}


def expiry(hold: Hold) -> datetime:
    return datetime.fromtimestamp(hold.expires_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class TenantRow:
    """One tenant on the overview: this period's tokens by feature and the last hour's."""

    tenant: Tenant
    period: Period
    by_feature: dict[str, int]
    last_hour: int

    @property
    def used(self) -> int:
        return sum(self.by_feature.values())

    @property
    def percent(self) -> float:
        return percent_used(self.used, self.tenant.monthly_quota)

    def features(self) -> list[tuple[str, int]]:
        return sorted(self.by_feature.items(), key=lambda item: (-item[1], item[0]))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.tenant.id,
            "name": self.tenant.name,
            "quota": self.tenant.monthly_quota,
            "used": self.used,
            "percent": self.percent,
            "percent_label": percent_label(self.percent),
            "level": level(self.percent),
            "period_end": rfc3339(self.period.end),
            "last_hour": self.last_hour,
            "by_feature": [{"feature": f, "tokens": t} for f, t in self.features()],
        }


def overview_order(rows: list[TenantRow]) -> list[TenantRow]:
    """Nearest to (or furthest over) quota first, then by name: the overview's and its JSON's order."""
    return sorted(rows, key=lambda r: (-r.percent, r.tenant.name.lower(), r.tenant.id))


@dataclass(frozen=True, slots=True)
class TenantView:
    """Everything the tenant page shows, read at one moment: rendered once, then polled as JSON."""

    row: TenantRow
    chart: Chart
    thresholds: str
    history: list[AlertRecord]
    now: datetime
    holds: list[Hold] | None  # None: Redis cannot be reached right now

    @property
    def reserved_label(self) -> str:
        return "unknown" if self.holds is None else f"{sum(h.tokens for h in self.holds):,}"

    def hold_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "id": hold.id,
                "tokens": hold.tokens,
                "expires_at": rfc3339(expiry(hold)),
                "expires_label": human_time(expiry(hold), seconds=True),
            }
            for hold in self.holds or ()
        ]

    def as_json(self) -> dict[str, Any]:
        tenant, period = self.row.tenant, self.row.period
        return {
            "as_of": rfc3339(self.now),
            "reserved_label": self.reserved_label,
            "reservations": self.hold_rows(),
            "reservations_note": RESERVATIONS_NOTE[self.holds is None],
            "as_of_label": f"{self.now:%H:%M:%S} UTC",
            "tenant": {
                **self.row.as_json(),
                "billing_day": tenant.billing_day,
                "period_start": rfc3339(period.start),
                "period_label": period_label(period),
            },
            "chart": self.chart.as_json(),
            "thresholds": self.thresholds,
            "alerts": [
                {
                    "created_at": rfc3339(record.created_at),
                    "created_label": human_time(record.created_at),
                    "threshold": record.threshold,
                    "used": record.used,
                    "quota": record.quota,
                    "deliveries": delivery_summary(record),
                }
                for record in self.history
            ],
        }
