"""Alerts in the database: each tenant's alert settings, the decisions a batch makes (in its own
transaction), and the outbox the courier drains (leasing, attempts, history)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..alerts import Alert, crossed_thresholds, delivery_targets
from ..periods import period_containing
from .base import Database, Prepared


@dataclass(frozen=True, slots=True)
class AlertSettings:
    thresholds: list[int]
    webhook_url: str | None
    webhook_enabled: bool


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """A leased outbox row: the alert and where it goes (url None: no target configured now)."""

    id: int
    target: str  # slack | webhook
    attempts: int
    alert: Alert
    url: str | None
    secret: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    endpoint: str
    http_status: int | None
    outcome: str  # delivered | retry | failed | in_flight | interrupted
    error: str | None
    duration_ms: int
    attempted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    target: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    finished_at: datetime | None
    history: tuple[AttemptRecord, ...]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    id: int
    threshold: int
    used: int
    quota: int
    period_start: datetime
    period_end: datetime
    created_at: datetime
    deliveries: tuple[DeliveryRecord, ...]


@dataclass(frozen=True, slots=True)
class AlertSettingsChange:
    thresholds: list[int] | None = None
    webhook: tuple[str, str] | None = None  # (url, secret)
    clear_webhook: bool = False


async def apply_alert_settings(cur: Any, tenant_id: str, change: AlertSettingsChange) -> None:
    if change.thresholds is not None:
        await cur.execute(
            "UPDATE tenants SET alert_thresholds = %s::smallint[], updated_at = now() WHERE id = %s",
            (change.thresholds, tenant_id),
        )
    if change.clear_webhook:
        await cur.execute("DELETE FROM alert_webhooks WHERE tenant_id = %s", (tenant_id,))
    elif change.webhook is not None:
        await cur.execute(
            "INSERT INTO alert_webhooks (tenant_id, url, secret) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET url = excluded.url, secret = excluded.secret,"
            " enabled = true",
            (tenant_id, *change.webhook),
        )


async def decide_alerts(
    cur: Any, billing_days: dict[str, int], now: datetime, slack_fallback: bool
) -> list[Alert]:
    """Inside the batch transaction: record every newly crossed threshold of the current period for
    the counted tenants (`billing_days`: each one's billing day, read under KEY SHARE in the same
    transaction, so it cannot change before the commit).

    The caller holds each tenant's row lock (the usage version's bump) until it commits, so concurrent
    batches of one tenant decide one after the other. The tenants' alert settings and period totals are
    read here, in a statement after that lock: each batch sees the settings and totals the one before
    it committed. The unique (tenant, period_start, threshold) row makes the decision once-only.
    """
    if not billing_days:
        return []
    periods = {tid: period_containing(now, day) for tid, day in billing_days.items()}
    await DECIDING_TENANTS.run(cur, (list(periods), [p.start for p in periods.values()]))
    tenants = {row[0]: row for row in await cur.fetchall()}
    candidates = [
        (tid, periods[tid].start, periods[tid].end, threshold, int(row[6]), row[2])
        for tid, row in tenants.items()
        for threshold in crossed_thresholds(int(row[6]), row[2], row[3])
    ]
    if not candidates:
        return []
    await cur.execute(INSERT_ALERTS_SQL, [list(column) for column in zip(*candidates, strict=True)])
    alerts = [
        Alert(row[0], row[1], tenants[row[1]][1], row[2], row[3], row[4], row[5], row[6])
        for row in await cur.fetchall()
    ]
    targets = [
        (alert.id, target)
        for alert in alerts
        for target in delivery_targets(
            slack_url_enabled=tenants[alert.tenant_id][4],
            webhook_enabled=tenants[alert.tenant_id][5],
            slack_fallback=slack_fallback,
        )
    ]
    if targets:
        await cur.execute(
            "INSERT INTO alert_deliveries (alert_id, target) SELECT * FROM unnest(%s::bigint[], %s::text[])",
            ([t[0] for t in targets], [t[1] for t in targets]),
        )
    return sorted(alerts, key=lambda a: (a.tenant_id, a.threshold))


# The counted tenants that have thresholds, as decide_alerts reads them once it holds their row locks:
# id, name, quota, thresholds, whether an enabled Slack webhook and an enabled alert webhook exist, and
# the tokens of the period (its start given beside each id; the billing day is the caller's).
DECIDING_TENANTS_SQL = """
SELECT t.id, t.name, t.monthly_quota, t.alert_thresholds,
       EXISTS (SELECT 1 FROM slack_webhooks s WHERE s.tenant_id = t.id AND s.enabled),
       EXISTS (SELECT 1 FROM alert_webhooks w WHERE w.tenant_id = t.id AND w.enabled),
       (SELECT coalesce(sum(p.tokens), 0) FROM period_totals p
        WHERE p.tenant_id = t.id AND p.period_start = i.period_start)
FROM unnest(%s::text[], %s::timestamptz[]) AS i(tenant_id, period_start)
JOIN tenants t ON t.id = i.tenant_id
WHERE cardinality(t.alert_thresholds) > 0
"""
DECIDING_TENANTS = Prepared("flagmeter_deciding_tenants", DECIDING_TENANTS_SQL)

INSERT_ALERTS_SQL = """
INSERT INTO alerts AS a (tenant_id, period_start, period_end, threshold, used, quota)
SELECT c.* FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::smallint[], %s::bigint[],
                       %s::bigint[]) AS c(tenant_id, period_start, period_end, threshold, used, quota)
WHERE NOT EXISTS (SELECT 1 FROM alerts e WHERE (e.tenant_id, e.period_start, e.threshold)
                                              = (c.tenant_id, c.period_start, c.threshold))
ON CONFLICT (tenant_id, period_start, threshold) DO NOTHING
RETURNING a.id, a.tenant_id, a.threshold, a.used, a.quota, a.period_start, a.period_end
"""

LEASE_DELIVERIES_SQL = """
WITH due AS (
    SELECT id FROM alert_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now() AND (leased_until IS NULL OR leased_until < now())
    ORDER BY next_attempt_at LIMIT %s
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE alert_deliveries d SET leased_until = now() + make_interval(secs => %s)
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.alert_id, d.target, d.attempts
)
SELECT l.id, l.target, l.attempts, a.id, a.tenant_id, t.name, a.threshold, a.used, a.quota,
       a.period_start, a.period_end,
       CASE WHEN s.enabled THEN s.url END, CASE WHEN w.enabled THEN w.url END, w.secret
FROM leased l
JOIN alerts a ON a.id = l.alert_id
JOIN tenants t ON t.id = a.tenant_id
LEFT JOIN slack_webhooks s ON s.tenant_id = a.tenant_id
LEFT JOIN alert_webhooks w ON w.tenant_id = a.tenant_id
"""


class OutboxStore(Database):
    async def alert_settings(self, tenant_ids: Sequence[str]) -> dict[str, AlertSettings]:
        rows = await self._all(
            "SELECT t.id, t.alert_thresholds, w.url, coalesce(w.enabled, false) FROM tenants t"
            " LEFT JOIN alert_webhooks w ON w.tenant_id = t.id WHERE t.id = ANY(%s)",
            (list(tenant_ids),),
        )
        return {row[0]: AlertSettings(list(row[1]), row[2], bool(row[3])) for row in rows}

    async def update_alert_settings(self, tenant_id: str, change: AlertSettingsChange) -> bool:
        """Set thresholds and/or the signed webhook; False when the tenant is unknown."""
        async with self._cursor(transaction=True) as cur:
            await cur.execute("SELECT 1 FROM tenants WHERE id = %s FOR NO KEY UPDATE", (tenant_id,))
            if await cur.fetchone() is None:
                return False
            await apply_alert_settings(cur, tenant_id, change)
        return True

    async def lease_deliveries(self, limit: int, lease_s: float) -> list[DeliveryJob]:
        """Take up to `limit` due outbox rows for `lease_s` seconds (other workers skip them)."""
        async with self._cursor() as cur:
            await cur.execute(LEASE_DELIVERIES_SQL, (limit, lease_s))
            rows = await cur.fetchall()
        return [
            DeliveryJob(
                row[0],
                row[1],
                int(row[2]),
                Alert(int(row[3]), row[4], row[5], int(row[6]), int(row[7]), int(row[8]), row[9], row[10]),
                row[11] if row[1] == "slack" else row[12],
                row[13] if row[1] == "webhook" else None,
            )
            for row in rows
        ]

    async def start_attempt(self, job: DeliveryJob, endpoint: str) -> int:
        """Note an attempt before sending, so one cut short by a crash still shows (as interrupted)."""
        async with self._cursor(transaction=True) as cur:
            await cur.execute(
                "UPDATE alert_attempts SET outcome = 'interrupted',"
                " error = 'the worker stopped before recording an answer'"
                " WHERE delivery_id = %s AND outcome = 'in_flight'",
                (job.id,),
            )
            await cur.execute(
                "INSERT INTO alert_attempts (delivery_id, endpoint, outcome, duration_ms)"
                " VALUES (%s, %s, 'in_flight', 0) RETURNING id",
                (job.id, endpoint),
            )
            (attempt_id,) = await cur.fetchone()
            await cur.execute("UPDATE alert_deliveries SET attempts = attempts + 1 WHERE id = %s", (job.id,))
        return int(attempt_id)

    async def record_attempt(
        self,
        job: DeliveryJob,
        attempt_id: int,
        attempt: AttemptRecord,
        retry_in_s: float | None,
        *,
        disable_target: bool = False,
    ) -> None:
        """Record how an attempt ended and move the outbox row on: delivered, failed, or due later;
        with `disable_target`, that tenant's URL is switched off (alerts.disables_target)."""
        status = attempt.outcome if attempt.outcome in {"delivered", "failed"} else "pending"
        async with self._cursor(transaction=True) as cur:
            await cur.execute(
                "UPDATE alert_attempts SET http_status = %s, outcome = %s, error = %s, duration_ms = %s"
                " WHERE id = %s",
                (attempt.http_status, attempt.outcome, attempt.error, attempt.duration_ms, attempt_id),
            )
            await cur.execute(
                "UPDATE alert_deliveries SET status = %s, leased_until = NULL,"
                " last_error = %s, next_attempt_at = now() + make_interval(secs => %s),"
                " finished_at = CASE WHEN %s = 'pending' THEN NULL ELSE now() END"
                " WHERE id = %s AND status = 'pending'",
                (status, attempt.error, retry_in_s or 0.0, status, job.id),
            )
            if disable_target:
                table = "slack_webhooks" if job.target == "slack" else "alert_webhooks"
                await cur.execute(
                    f"UPDATE {table} SET enabled = false WHERE tenant_id = %s AND url = %s",
                    (job.alert.tenant_id, job.url),
                )

    async def outbox_backlog(self) -> int:
        rows = await self._all("SELECT count(*) FROM alert_deliveries WHERE status = 'pending'")
        return int(rows[0][0])

    async def alert_history(self, tenant_id: str, limit: int = 100) -> list[AlertRecord]:
        alerts = await self._all(
            "SELECT id, threshold, used, quota, period_start, period_end, created_at FROM alerts"
            " WHERE tenant_id = %s ORDER BY created_at DESC, id DESC LIMIT %s",
            (tenant_id, limit),
        )
        ids = [row[0] for row in alerts]
        deliveries = await self._all(
            "SELECT id, alert_id, target, status, attempts, next_attempt_at, last_error, finished_at"
            " FROM alert_deliveries WHERE alert_id = ANY(%s) ORDER BY id",
            (ids,),
        )
        attempts = await self._all(
            "SELECT delivery_id, attempted_at, endpoint, http_status, outcome, error, duration_ms"
            " FROM alert_attempts WHERE delivery_id = ANY(%s) ORDER BY attempted_at, id",
            ([row[0] for row in deliveries],),
        )
        attempts_of: dict[int, list[AttemptRecord]] = defaultdict(list)
        for row in attempts:
            attempts_of[row[0]].append(AttemptRecord(row[2], row[3], row[4], row[5], row[6], row[1]))
        deliveries_of: dict[int, list[DeliveryRecord]] = defaultdict(list)
        for row in deliveries:
            deliveries_of[row[1]].append(
                DeliveryRecord(row[2], row[3], row[4], row[5], row[6], row[7], tuple(attempts_of[row[0]]))
            )
        return [
            AlertRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], tuple(deliveries_of[row[0]]))
            for row in alerts
        ]
