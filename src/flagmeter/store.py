"""Every SQL statement and every PostgreSQL driver call lives here (aiopg + psycopg2).

Handlers and the worker get plain values back; swapping the driver touches only this module.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import aiopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from .alerts import Alert, crossed_thresholds
from .events import Event
from .periods import Period, period_containing

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x466C61674D6574  # "FlagMet": one advisory lock id for all migrators
TENANT_COLUMNS = "t.id, t.name, t.monthly_quota, t.billing_day, t.created_at, w.url"
TENANT_FROM = "tenants t LEFT JOIN slack_webhooks w ON w.tenant_id = t.id"
WINDOWS = {"minute", "hour", "day"}


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached right now; the caller should back off and retry."""


class Conflict(Exception):
    """A row with that identity already exists."""


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


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch changed: counted (new) events and tokens per tenant."""

    counted: int
    duplicates: int
    tokens_by_tenant: dict[str, int]
    unknown_tenants: frozenset[str]
    alerts: tuple[Alert, ...] = ()  # decided in the batch's transaction (issue 3)
    known_ids: int = 0  # of the duplicates, those already in the ledger (not repeated in the batch)
    recounted: bool = False  # the all-new insert met a known id; counted again, skipping known ids
    usage_versions: dict[str, int] = field(default_factory=dict)  # the batch's tenants' new versions


@dataclass(frozen=True, slots=True)
class CurrentUsage:
    """A tenant as it is now and its tokens by feature in the period holding `now`."""

    tenant: Tenant
    period: Period
    by_feature: dict[str, int]
    version: int = 0  # tenants.usage_version in the same snapshot (see migration 0005)

    @property
    def used(self) -> int:
        return sum(self.by_feature.values())


@dataclass(frozen=True, slots=True)
class AlertSettingsChange:
    thresholds: list[int] | None = None
    webhook: tuple[str, str] | None = None  # (url, secret)
    clear_webhook: bool = False


async def _apply_alert_settings(cur: Any, tenant_id: str, change: AlertSettingsChange) -> None:
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


def _tenant(row: Sequence[Any]) -> Tenant:
    return Tenant(row[0], row[1], row[2], row[3], row[4], row[5])


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, psycopg2.extensions.TransactionRollbackError):
        return False  # deadlock / serialization: retry at once, PostgreSQL itself is fine
    if isinstance(error, RuntimeError):
        # uvloop closes the poll handle of a connection refused mid-connect; aiopg surfaces that as this.
        return "closed" in str(error)
    if isinstance(error, psycopg2.ProgrammingError):
        # An undefined table or column: the schema is behind the code (`flagmeter migrate` not run yet).
        # Like an outage, it is no fault of the event being written: wait, never dead-letter.
        return True
    return isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError | OSError | TimeoutError)


def _ms(moment_ms: int) -> datetime:
    return datetime.fromtimestamp(moment_ms / 1000, UTC)


class Store:
    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool
        self._expect_new_ids = True  # see write_batch

    @classmethod
    async def connect(cls, dsn: str, *, size: int = 10, timeout: float = 10.0) -> Store:
        try:
            pool = await aiopg.create_pool(dsn, minsize=0, maxsize=size, timeout=timeout)
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable(str(error)) from error
            raise
        return cls(pool)

    async def close(self) -> None:
        self._pool.close()
        await self._pool.wait_closed()

    @property
    def pool_size(self) -> int:
        return int(self._pool.size)

    @asynccontextmanager
    async def _cursor(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                if transaction:
                    async with cur.begin():
                        yield cur
                else:
                    yield cur
        except (psycopg2.Error, OSError, TimeoutError, RuntimeError) as error:
            if _is_unavailable(error):
                raise StoreUnavailable(str(error).strip() or type(error).__name__) from error
            raise

    async def _all(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self._cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

    async def ping(self) -> None:
        """Reachable and migrated to what this code expects."""
        try:
            rows = await self._all("SELECT max(version) FROM schema_migrations")
        except StoreUnavailable as error:
            raise StoreUnavailable(f"schema not migrated: {error}") from error
        latest = migration_files()[-1][0]
        if not rows or rows[0][0] is None or rows[0][0] < latest:
            current = rows[0][0] if rows else None
            raise StoreUnavailable(f"schema at {current}, code needs {latest}: run flagmeter migrate")

    # -- tenants and keys ---------------------------------------------------------------

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
        return [_tenant(row) for row in rows]

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._all(f"SELECT {TENANT_COLUMNS} FROM {TENANT_FROM} WHERE t.id = %s", (tenant_id,))
        return _tenant(rows[0]) if rows else None

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
                await _apply_alert_settings(cur, tenant_id, alert_change)
            new_day = columns.get("billing_day")
            if new_day is not None and new_day != row[0]:
                await self._regroup_period_totals(cur, tenant_id, new_day)
            await cur.execute(f"SELECT {TENANT_COLUMNS} FROM {TENANT_FROM} WHERE t.id = %s", (tenant_id,))
            return _tenant(await cur.fetchone())

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

    async def tenant_ids(self) -> set[str]:
        return {row[0] for row in await self._all("SELECT id FROM tenants")}

    # -- usage --------------------------------------------------------------------------

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
                tenant = _tenant(row)
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

    async def tokens_since(self, since: datetime) -> dict[str, int]:
        rows = await self._all(
            "SELECT tenant_id, sum(tokens) FROM rollups WHERE minute >= %s GROUP BY tenant_id", (since,)
        )
        return {tenant: int(tokens) for tenant, tokens in rows}

    # -- the worker's batch -------------------------------------------------------------

    async def write_batch(
        self, events: Sequence[Event], *, now: datetime, slack_fallback: bool = False
    ) -> BatchResult:
        """Count a batch exactly once, in ONE transaction.

        The dedup ledger's primary key decides which events are new; only those reach `events`,
        the rollups and the period totals. A concurrent worker holding the same event id blocks on
        the ledger row and then skips it. Quota alerts for the counted tenants are decided in the
        same transaction (see `_decide_alerts`).

        Almost every batch is all new ids, so while the last batch held no known id the ledger gets
        a plain insert (WRITE_NEW_BATCH_SQL), which fails as a whole on any known id; then the batch
        is counted again with ON CONFLICT DO NOTHING (WRITE_BATCH_SQL), which skips them. The plain
        insert saves the speculative insertion and the join on what was new (~30 % of PostgreSQL's
        time per event).
        """
        recounted = False
        if self._expect_new_ids:
            try:
                return await self._write_batch(events, WRITE_NEW_BATCH_SQL, slack_fallback, now)
            except psycopg2.errors.UniqueViolation:
                self._expect_new_ids = False  # rolled back: nothing of it was counted
                recounted = True
        result = await self._write_batch(events, WRITE_BATCH_SQL, slack_fallback, now)
        self._expect_new_ids = result.known_ids == 0
        return replace(result, recounted=recounted)

    async def _write_batch(
        self, events: Sequence[Event], sql: str, slack_fallback: bool, now: datetime
    ) -> BatchResult:
        tenant_ids = sorted({event.tenant for event in events})
        async with self._cursor(transaction=True) as cur:
            # KEY SHARE keeps a billing-day change (FOR UPDATE) from interleaving with this batch.
            await cur.execute(
                "SELECT id, billing_day FROM tenants WHERE id = ANY(%s) FOR KEY SHARE", (tenant_ids,)
            )
            billing_days = dict(await cur.fetchall())
            known = [event for event in events if event.tenant in billing_days]
            unknown = frozenset(set(tenant_ids) - set(billing_days))
            if not known:
                return BatchResult(0, 0, {}, unknown)
            # The first of each id within the batch, in (tenant, id) order: concurrent workers then
            # take the ledger's row locks in the same order and cannot deadlock. Grouped by tenant, the
            # sort compares strings, not tuples (half the cost).
            by_tenant: dict[str, dict[str, Event]] = {}
            for event in known:
                by_tenant.setdefault(event.tenant, {}).setdefault(event.id, event)
            batch = [ids[i] for _, ids in sorted(by_tenant.items()) for i in sorted(ids)]
            period_ms = _period_starts(batch, billing_days)
            await cur.execute(
                sql,
                (
                    _text_array([e.tenant for e in batch]),
                    _text_array([e.id for e in batch]),
                    _text_array([e.feature for e in batch]),
                    _int_array([e.tokens for e in batch]),
                    _int_array([e.occurred_ms for e in batch]),
                    _int_array([e.received_ms for e in batch]),
                    _int_array(period_ms),
                ),
            )
            rows = await cur.fetchall()
            # Every known tenant of the batch, counted or not: a batch counted before a crash left the
            # versions in Redis behind; counted again (all duplicates), it brings them up to date.
            await cur.execute(BUMP_USAGE_VERSIONS_SQL, (sorted(billing_days),))
            versions = {tenant: int(version) for tenant, version in await cur.fetchall()}
            alerts = await _decide_alerts(cur, [r[0] for r in rows], now, slack_fallback)
        tokens_by_tenant = {tenant: int(tokens) for tenant, _, tokens in rows}
        counted = sum(int(n) for _, n, _ in rows)
        return BatchResult(
            counted,
            len(known) - counted,
            tokens_by_tenant,
            unknown,
            tuple(alerts),
            len(batch) - counted,
            usage_versions=versions,
        )

    async def ensure_partitions(self, now: datetime) -> None:
        """Monthly partitions of `events` from two months before `now`'s to three after."""
        await self._all("SELECT flagmeter_ensure_event_partitions(2, 3, %s)", (now,))

    async def prune(self, keep_days: int, now: datetime) -> tuple[int, list[str]]:
        """Drop month partitions wholly older than `keep_days` and ledger rows past 40 days."""
        dropped: list[str] = []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'"
            )
            cutoff = now.timestamp() - keep_days * 86400
            for (name,) in await cur.fetchall():
                year, month = int(name[7:11]), int(name[12:14])
                end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
                if end.timestamp() < cutoff:
                    await cur.execute(f'DROP TABLE "{name}"')
                    dropped.append(name)
            await cur.execute("DELETE FROM event_ids WHERE received_at < now() - interval '40 days'")
            return int(cur.rowcount), dropped

    # -- alerts (issue 3): settings, outbox leasing, attempts, history --------------------

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
            await _apply_alert_settings(cur, tenant_id, change)
        return True

    async def webhook_secret(self, tenant_id: str) -> str | None:
        rows = await self._all("SELECT secret FROM alert_webhooks WHERE tenant_id = %s", (tenant_id,))
        return str(rows[0][0]) if rows else None

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
        self, job: DeliveryJob, attempt_id: int, attempt: AttemptRecord, retry_in_s: float | None
    ) -> None:
        """Record how an attempt ended and move the outbox row on: delivered, failed, or due later."""
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
            if attempt.http_status == 410:
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

    async def recent_tokens(self, tenant_ids: list[str], since: datetime) -> dict[str, int]:
        """Tokens per tenant since `since`, through the (tenant, minute) index (the dashboard)."""
        rows = await self._all(
            "SELECT tenant_id, sum(tokens) FROM rollups WHERE tenant_id = ANY(%s) AND minute >= %s"
            " GROUP BY tenant_id",
            (tenant_ids, since),
        )
        return {tenant: int(tokens) for tenant, tokens in rows}


# The batch's columns travel as array literals ('{"a","b"}'), not as Python lists: psycopg2 turns a
# list into an ARRAY[...] expression of one constant per element, which costs PostgreSQL and the
# worker ~9 us per event each to build and parse; a literal costs under 1 us on each side.
def _text_array(values: Sequence[str]) -> str:
    if not values:
        return "{}"
    return '{"' + '","'.join([v.replace("\\", "\\\\").replace('"', '\\"') for v in values]) + '"}'


def _int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _period_starts(events: Iterable[Event], billing_days: dict[str, int]) -> list[int]:
    """Period start (epoch ms) per event; memoised per (billing day, UTC day)."""
    memo: dict[tuple[int, int], int] = {}
    starts = []
    for event in events:
        day = billing_days[event.tenant]
        key = (day, event.occurred_ms // 86_400_000)
        start = memo.get(key)
        if start is None:
            start = int(period_containing(_ms(event.occurred_ms), day).start.timestamp() * 1000)
            memo[key] = start
        starts.append(start)
    return starts


# Counting one batch in one statement. Times travel as epoch milliseconds and become timestamps
# per row only where a row is stored; rollups and totals group on integers, converting per group.
# Both forms define `counted` from what the ledger took, so the ledger insert runs first; the other
# inserts follow when the statement ends (totals, rollups, events). Every worker thus takes ledger
# keys, then totals rows, then rollup rows, each in key order, and two workers cannot deadlock.
_COUNT_SQL = """
WITH input AS (
    SELECT * FROM unnest(
        %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]
    ) AS t(tenant_id, event_id, feature, tokens, occurred_ms, received_ms, period_ms)
), ledger AS (
    INSERT INTO event_ids (tenant_id, event_id, received_at)
    SELECT tenant_id, event_id, to_timestamp(received_ms / 1000::float8) FROM input
    {ledger}
), counted AS (
    {counted}
), stored AS (
    INSERT INTO events (tenant_id, event_id, feature, tokens, occurred_at, received_at)
    SELECT tenant_id, event_id, feature, tokens,
           to_timestamp(occurred_ms / 1000::float8), to_timestamp(received_ms / 1000::float8)
    FROM counted
), rolled AS (
    INSERT INTO rollups AS r (tenant_id, feature, minute, tokens, events)
    SELECT tenant_id, feature, to_timestamp(minute * 60), sum(tokens), count(*)
    FROM (SELECT tenant_id, feature, occurred_ms / 60000 AS minute, tokens FROM counted) AS c
    GROUP BY tenant_id, feature, minute ORDER BY tenant_id, feature, minute
    ON CONFLICT (tenant_id, feature, minute)
    DO UPDATE SET tokens = r.tokens + excluded.tokens, events = r.events + excluded.events
), totalled AS (
    INSERT INTO period_totals AS p (tenant_id, period_start, feature, tokens, events)
    SELECT tenant_id, to_timestamp(period_ms / 1000::float8), feature, sum(tokens), count(*)
    FROM counted GROUP BY tenant_id, period_ms, feature ORDER BY tenant_id, period_ms, feature
    ON CONFLICT (tenant_id, period_start, feature)
    DO UPDATE SET tokens = p.tokens + excluded.tokens, events = p.events + excluded.events
)
SELECT tenant_id, count(*), coalesce(sum(tokens), 0) FROM counted GROUP BY tenant_id
"""
# A plain insert: any id already in the ledger fails the whole statement (unique_violation), so
# when it succeeds, every row of `input` is new. No speculative insertion, no join.
WRITE_NEW_BATCH_SQL = _COUNT_SQL.format(
    ledger="RETURNING 1",
    counted="SELECT * FROM input WHERE (SELECT count(*) FROM ledger) = (SELECT count(*) FROM input)",
)
# Known ids are skipped: only what the ledger took is counted.
WRITE_BATCH_SQL = _COUNT_SQL.format(
    ledger="ON CONFLICT DO NOTHING RETURNING tenant_id, event_id",
    counted="SELECT input.* FROM input JOIN ledger USING (tenant_id, event_id)",
)


# After the counting statement, in its transaction. Row locks in id order: concurrent batches of
# overlapping tenants wait for each other here, never in a cycle.
BUMP_USAGE_VERSIONS_SQL = """
UPDATE tenants t SET usage_version = t.usage_version + 1
FROM (SELECT id FROM tenants WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE) AS locked
WHERE t.id = locked.id
RETURNING t.id, t.usage_version
"""


# -- migrations ---------------------------------------------------------------------------


@functools.cache
def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("flagmeter") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction, under one advisory lock."""
    applied_now: list[str] = []
    async with aiopg.connect(dsn, timeout=30) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, sql in migration_files():
                if version in done:
                    continue
                async with cur.begin():
                    await cur.execute(sql)
                    await cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
                log.info("migration applied", extra={"version": version})
            await cur.execute("SELECT flagmeter_ensure_event_partitions(2, 3)")
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


# -- alerts (issue 3) -----------------------------------------------------------------------

ALERT_LOCK = 0x466D416C  # "FmAl": advisory lock namespace, one key per tenant


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


async def _decide_alerts(cur: Any, tenant_ids: list[str], now: datetime, slack_fallback: bool) -> list[Alert]:
    """Inside the batch transaction: record every newly crossed threshold of the current period.

    A per-tenant advisory lock (taken in key order, so never a deadlock) makes concurrent batches
    of one tenant decide one after the other, each seeing the other's committed totals; the
    unique (tenant, period_start, threshold) row makes the decision once-only for good.
    """
    if not tenant_ids:
        return []
    await cur.execute(
        "SELECT pg_advisory_xact_lock(%s, h) FROM"
        " (SELECT DISTINCT hashtext(id) AS h FROM unnest(%s::text[]) AS id ORDER BY h) AS keys",
        (ALERT_LOCK, tenant_ids),
    )
    await cur.execute(
        "SELECT t.id, t.name, t.monthly_quota, t.billing_day, t.alert_thresholds,"
        " EXISTS (SELECT 1 FROM slack_webhooks s WHERE s.tenant_id = t.id AND s.enabled),"
        " EXISTS (SELECT 1 FROM alert_webhooks w WHERE w.tenant_id = t.id AND w.enabled)"
        " FROM tenants t WHERE t.id = ANY(%s) AND cardinality(t.alert_thresholds) > 0",
        (tenant_ids,),
    )
    tenants = {row[0]: row for row in await cur.fetchall()}
    if not tenants:
        return []
    periods = {tid: period_containing(now, row[3]) for tid, row in tenants.items()}
    await cur.execute(
        "SELECT i.tenant_id, coalesce(sum(p.tokens), 0)"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS i(tenant_id, period_start)"
        " LEFT JOIN period_totals p USING (tenant_id, period_start) GROUP BY i.tenant_id",
        (list(periods), [p.start for p in periods.values()]),
    )
    candidates = [
        (tid, periods[tid].start, periods[tid].end, threshold, int(used), tenants[tid][2])
        for tid, used in await cur.fetchall()
        for threshold in crossed_thresholds(int(used), tenants[tid][2], tenants[tid][4])
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
        for target, wanted in (
            ("slack", tenants[alert.tenant_id][5] or slack_fallback),
            ("webhook", tenants[alert.tenant_id][6]),
        )
        if wanted
    ]
    if targets:
        await cur.execute(
            "INSERT INTO alert_deliveries (alert_id, target) SELECT * FROM unnest(%s::bigint[], %s::text[])",
            ([t[0] for t in targets], [t[1] for t in targets]),
        )
    return sorted(alerts, key=lambda a: (a.tenant_id, a.threshold))


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
