"""Counting a batch exactly once: the ledger, the event log (raw events, a row per batch), rollups, daily
and period totals, and the alerts the batch crosses, in ONE transaction; the log's partitions, pruning."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain, islice, repeat
from operator import eq
from typing import TypeVar

import psycopg2.errors

from ..alerts import Alert
from ..events import Columns
from ..ledger import LedgerInsert
from ..periods import period_containing
from ..quota import DAY_MS, day_field, day_of
from .base import SPLIT_TEXT, Database, Prepared, int_array, joined, ms_to_datetime, text_array
from .outbox import decide_alerts

T = TypeVar("T")
PARTITION = re.compile(r"event_log_(?P<year>[0-9]{4})_(?P<month>[0-9]{2})")


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
    # Absolute (quota.day_field(tenant, day), tokens) of every tenant-day the batch touched, read after
    # its counting statement in the same transaction (see `_write_batch`).
    daily_totals: tuple[tuple[str, int], ...] = ()


class CountingStore(Database):
    async def write_batch(
        self, groups: Sequence[Columns], *, now: datetime, ledger: LedgerInsert, slack_fallback: bool = False
    ) -> BatchResult:
        """Count a batch of events, as the stream's groups of columns hold them, exactly once, in ONE
        transaction.

        The dedup ledger's primary key decides which events are new; only those reach `events`,
        the rollups and the totals. A concurrent worker holding the same event id blocks on the
        ledger row and then skips it. Quota alerts for the counted tenants are decided in the same
        transaction (outbox.decide_alerts). `ledger` chooses the insert's form (flagmeter.ledger).
        """
        recounted = False
        if ledger.plain_first:
            try:
                return await self._write_batch(groups, True, slack_fallback, now)
            except psycopg2.errors.UniqueViolation:
                ledger.met_known_id()  # rolled back: nothing of it was counted
                recounted = True
        result = await self._write_batch(groups, False, slack_fallback, now)
        ledger.counted(result.known_ids)
        return replace(result, recounted=recounted)

    async def _write_batch(
        self, groups: Sequence[Columns], all_new: bool, slack_fallback: bool, now: datetime
    ) -> BatchResult:
        tenant_ids = sorted({group[0] for group in groups})
        async with self._cursor(begun=True) as cur:
            await cur.execute(BEGIN_WITH_TENANTS_SQL, (tenant_ids,))
            billing_days = dict(await cur.fetchall())
            known = [group for group in groups if group[0] in billing_days]
            unknown = frozenset(set(tenant_ids) - set(billing_days))
            if not known:
                return BatchResult(0, 0, {}, unknown)
            batch = Batch.of(known)
            tenants, event_ids, features, tokens, occurred, received = batch.columns
            columns = (
                joined(tenants),
                joined(event_ids),
                joined(features),
                int_array(tokens),
                int_array(occurred),
                int_array(received),
            )
            if all_new:
                # What the batch adds to each total is summed here: the statement fails whole unless
                # every event is new, so these sums are what it counts.
                sums = Sums.of(tenants, features, tokens, occurred, billing_days)
                await WRITE_NEW_BATCH.run(cur, (*columns, now, *sums.parameters()))
                await cur.fetchall()
                rows, days = sums.by_tenant(), sums.days()
            else:
                period_ms, days = _periods_and_days(tenants, occurred, billing_days)
                await cur.execute(WRITE_BATCH_SQL, (*columns, int_array(period_ms), now))
                rows = await cur.fetchall()
            day_tenants, day_names = text_array([t for t, _ in days]), text_array([d for _, d in days])
            await BUMP_VERSIONS_READ_DAILY.run(cur, (sorted(billing_days), day_tenants, day_names))
            versions: dict[str, int] = {}
            daily_totals: list[tuple[str, int]] = []
            for kind, tenant, day, number in await cur.fetchall():
                if kind == "v":
                    versions[tenant] = int(number)
                else:
                    daily_totals.append((day_field(tenant, day), int(number)))
            daily = tuple(daily_totals)
            # The versions' row locks, held to the commit, make concurrent batches of a tenant decide
            # its alerts one after the other.
            alerts = await decide_alerts(cur, {r[0]: billing_days[r[0]] for r in rows}, now, slack_fallback)
        tokens_by_tenant = {tenant: int(tokens) for tenant, _, tokens in rows}
        counted = sum(int(n) for _, n, _ in rows)
        return BatchResult(
            counted,
            batch.given - counted,
            tokens_by_tenant,
            unknown,
            tuple(alerts),
            len(event_ids) - counted,
            daily_totals=daily,
            usage_versions=versions,
        )

    async def daily_totals_since(self, day: str) -> list[tuple[str, int]]:
        """Every tenant's absolute (day field, tokens) from `day` (YYYY-MM-DD) on: the cold rebuild."""
        rows = await self._all(
            "SELECT tenant_id, day::text, tokens FROM daily_totals WHERE day >= %s::date", (day,)
        )
        return [(day_field(tenant, d), int(tokens)) for tenant, d, tokens in rows]

    async def ensure_partitions(self, now: datetime) -> None:
        """Monthly partitions of the event log from two months before `now`'s to three after."""
        await self._all("SELECT flagmeter_ensure_event_partitions(2, 3, %s)", (now,))

    async def prune(self, keep_days: int, now: datetime) -> tuple[int, list[str]]:
        """Drop month partitions wholly older than `keep_days` and ledger rows past 40 days."""
        dropped: list[str] = []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'event_log'::regclass AND c.relname ~ '^event_log_[0-9]{4}_[0-9]{2}$'"
            )
            cutoff = now.timestamp() - keep_days * 86400
            for (name,) in await cur.fetchall():
                match = PARTITION.fullmatch(name)
                if match is None:
                    continue
                year, month = int(match["year"]), int(match["month"])
                end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)  # the month after
                if end.timestamp() < cutoff:
                    await cur.execute(f'DROP TABLE "{name}"')
                    dropped.append(name)
            await cur.execute("DELETE FROM event_ids WHERE received_at < now() - interval '40 days'")
            return int(cur.rowcount), dropped


@dataclass(frozen=True, slots=True)
class Batch:
    """A transaction's events as one set of columns: of each tenant's events, the first of each id, in
    (tenant, id) order. Concurrent workers then take the ledger's row locks in the same order and
    cannot deadlock. Built column by column, with no object per event."""

    columns: tuple[list[str], list[str], list[str], list[int], list[int], list[int]]
    given: int  # events in the groups, repeated ids included

    @classmethod
    def of(cls, groups: Sequence[Columns]) -> Batch:
        by_tenant: dict[str, list[Columns]] = {}
        for group in groups:
            by_tenant.setdefault(group[0], []).append(group)
        tenants: list[str] = []
        ids: list[str] = []
        features: list[str] = []
        tokens: list[int] = []
        occurred: list[int] = []
        received: list[int] = []
        given = 0
        for tenant, runs in sorted(by_tenant.items()):
            run_ids = list(chain.from_iterable(run[2] for run in runs))
            given += len(run_ids)
            order = sorted(range(len(run_ids)), key=run_ids.__getitem__)  # stable: a repeat after its first
            in_order = list(map(run_ids.__getitem__, order))
            if any(map(eq, in_order, islice(in_order, 1, None))):  # an id repeats: keep its first
                kept = [i for i in range(len(order)) if i == 0 or in_order[i] != in_order[i - 1]]
                order = [order[i] for i in kept]
                in_order = [in_order[i] for i in kept]
            tenants += repeat(tenant, len(order))
            ids += in_order
            features += _picked(chain.from_iterable(run[3] for run in runs), order)
            tokens += _picked(chain.from_iterable(run[4] for run in runs), order)
            occurred += _picked(chain.from_iterable(run[5] for run in runs), order)
            received += _picked(chain.from_iterable(repeat(run[1], len(run[2])) for run in runs), order)
        return cls((tenants, ids, features, tokens, occurred, received), given)


def _picked(values: Iterable[T], order: Sequence[int]) -> map[T]:
    """`values`' items at the indexes `order` gives, in that order."""
    return map(list(values).__getitem__, order)


def _periods_and_days(
    tenants: Sequence[str], occurred_ms: Sequence[int], billing_days: dict[str, int]
) -> tuple[list[int], list[tuple[str, str]]]:
    """Each event's period start (epoch ms), and the (tenant, UTC day) pairs the events fall on, sorted.

    Worked out once per run of events of one tenant and day (a batch sorted by tenant holds few runs),
    and per (billing day, UTC day) once per batch.
    """
    memo: dict[tuple[int, int], int] = {}
    starts: list[int] = []
    days: set[tuple[str, int]] = set()
    tenant, day, start = "", -1, 0
    for name, moment_ms in zip(tenants, occurred_ms, strict=True):
        if moment_ms // DAY_MS != day or name != tenant:
            tenant, day = name, moment_ms // DAY_MS
            days.add((tenant, day))
            start = _period_start_ms(billing_days[tenant], day, memo)
        starts.append(start)
    return starts, _day_names(days)


def _period_start_ms(billing_day: int, day: int, memo: dict[tuple[int, int], int]) -> int:
    """The start (epoch ms) of the billing period holding UTC day number `day`, once per batch."""
    start = memo.get((billing_day, day))
    if start is None:
        period = period_containing(ms_to_datetime(day * DAY_MS), billing_day)
        start = memo[billing_day, day] = int(period.start.timestamp() * 1000)
    return start


def _day_names(days: Iterable[tuple[str, int]]) -> list[tuple[str, str]]:
    """(tenant, UTC day number) pairs as (tenant, YYYY-MM-DD), sorted."""
    return [(tenant, day_of(day * DAY_MS)) for tenant, day in sorted(days)]


@dataclass(frozen=True, slots=True)
class Sums:
    """A batch of new events summed as the totals take them: (tenant, feature, minute) → [tokens,
    events] from one pass over the events, and the daily and period totals from those few groups."""

    minutes: dict[tuple[str, str, int], list[int]]  # minute: epoch ms // 60,000
    billing_days: dict[str, int]

    @classmethod
    def of(
        cls,
        tenants: Sequence[str],
        features: Sequence[str],
        tokens: Sequence[int],
        occurred_ms: Sequence[int],
        billing_days: dict[str, int],
    ) -> Sums:
        minutes: dict[tuple[str, str, int], list[int]] = {}
        # A batch's events occurred at few distinct times: divide each once (a ~10^12 int's // is dear)
        minute_of = {moment_ms: moment_ms // 60_000 for moment_ms in set(occurred_ms)}
        keys = zip(tenants, features, map(minute_of.__getitem__, occurred_ms), strict=True)
        for key, count in zip(keys, tokens, strict=True):
            group = minutes.get(key)
            if group is None:
                minutes[key] = [count, 1]
            else:
                group[0] += count
                group[1] += 1
        return cls(dict(sorted(minutes.items())), billing_days)

    def parameters(self) -> tuple[str, ...]:
        """WRITE_NEW_BATCH_SQL's group arrays: rollups, then daily totals, then period totals, each
        in its key's order (the order the rows are locked in)."""
        days: dict[tuple[str, int], int] = {}
        periods: dict[tuple[str, int, str], list[int]] = {}
        starts: dict[tuple[int, int], int] = {}
        for (tenant, feature, minute), (count, events) in self.minutes.items():
            day = minute * 60_000 // DAY_MS
            days[tenant, day] = days.get((tenant, day), 0) + count
            start = _period_start_ms(self.billing_days[tenant], day, starts)
            total = periods.setdefault((tenant, start, feature), [0, 0])
            total[0] += count
            total[1] += events
        rollups = list(self.minutes.items())
        daily = sorted(days.items())
        period = sorted(periods.items())
        return (
            text_array([tenant for (tenant, _, _), _ in rollups]),
            text_array([feature for (_, feature, _), _ in rollups]),
            int_array([minute for (_, _, minute), _ in rollups]),
            int_array([count for _, (count, _) in rollups]),
            int_array([events for _, (_, events) in rollups]),
            text_array([tenant for (tenant, _), _ in daily]),
            int_array([day for (_, day), _ in daily]),
            int_array([count for _, count in daily]),
            text_array([tenant for (tenant, _, _), _ in period]),
            int_array([start for (_, start, _), _ in period]),
            text_array([feature for (_, _, feature), _ in period]),
            int_array([count for _, (count, _) in period]),
            int_array([events for _, (_, events) in period]),
        )

    def by_tenant(self) -> list[tuple[str, int, int]]:
        """(tenant, events, tokens), as WRITE_BATCH_SQL's rows."""
        sums: dict[str, list[int]] = {}
        for (tenant, _, _), (count, events) in self.minutes.items():
            total = sums.setdefault(tenant, [0, 0])
            total[0] += events
            total[1] += count
        return [(tenant, events, count) for tenant, (events, count) in sums.items()]

    def days(self) -> list[tuple[str, str]]:
        """The (tenant, UTC day) pairs the events fall on, sorted."""
        return _day_names({(tenant, minute * 60_000 // DAY_MS) for tenant, _, minute in self.minutes})


# Counting one batch in one statement, in two forms. Their text columns compare as bytes, as the keys
# they meet do (migrations 0007, 0008): no strcoll() per comparison under any cluster locale. Times
# travel as epoch milliseconds and become timestamps per row only where a row is stored; rollups and
# totals group on integers, converting per group.
# In both, the ledger insert runs first (what follows reads what it took); the other inserts follow
# when the statement ends (totals, daily totals, rollups, the event log). Every worker thus takes ledger
# keys, then totals rows, then rollup rows, each in key order, and two workers cannot deadlock.
#
# A batch that may hold known ids: the ledger skips them, and only what it took is counted.
WRITE_BATCH_SQL = f"""
WITH input AS (
    SELECT unnest({SPLIT_TEXT} COLLATE "C") AS tenant_id, unnest({SPLIT_TEXT} COLLATE "C") AS event_id,
           unnest({SPLIT_TEXT} COLLATE "C") AS feature, unnest(%s::bigint[]) AS tokens,
           unnest(%s::bigint[]) AS occurred_ms, unnest(%s::bigint[]) AS received_ms,
           unnest(%s::bigint[]) AS period_ms
), ledger AS (
    INSERT INTO event_ids (tenant_id, event_id, received_at)
    SELECT tenant_id, event_id, to_timestamp(received_ms / 1000::float8) FROM input
    ON CONFLICT DO NOTHING RETURNING tenant_id, event_id
), counted AS (
    SELECT input.* FROM input JOIN ledger USING (tenant_id, event_id)
), stored AS (
    INSERT INTO event_log (counted_at, tenant_ids, event_ids, features, tokens, occurred_ms, received_ms)
    SELECT %s, array_agg(tenant_id), array_agg(event_id), array_agg(feature), array_agg(tokens),
           array_agg(occurred_ms), array_agg(received_ms)
    FROM (SELECT * FROM counted ORDER BY tenant_id, event_id) AS c  -- one pass: the arrays align
    HAVING count(*) > 0
), rolled AS (
    INSERT INTO rollups AS r (tenant_id, feature, minute, tokens, events)
    SELECT tenant_id, feature, to_timestamp(minute * 60), sum(tokens), count(*)
    FROM (SELECT tenant_id, feature, occurred_ms / 60000 AS minute, tokens FROM counted) AS c
    GROUP BY tenant_id, feature, minute ORDER BY tenant_id, feature, minute
    ON CONFLICT (tenant_id, feature, minute)
    DO UPDATE SET tokens = r.tokens + excluded.tokens, events = r.events + excluded.events
), dailied AS (
    INSERT INTO daily_totals AS d (tenant_id, day, tokens)
    SELECT tenant_id, (to_timestamp(day * 86400) AT TIME ZONE 'UTC')::date, sum(tokens)
    FROM (SELECT tenant_id, occurred_ms / 86400000 AS day, tokens FROM counted) AS c
    GROUP BY tenant_id, day ORDER BY tenant_id, day
    ON CONFLICT (tenant_id, day) DO UPDATE SET tokens = d.tokens + excluded.tokens
), totalled AS (
    INSERT INTO period_totals AS p (tenant_id, period_start, feature, tokens, events)
    SELECT tenant_id, to_timestamp(period_ms / 1000::float8), feature, sum(tokens), count(*)
    FROM counted GROUP BY tenant_id, period_ms, feature ORDER BY tenant_id, period_ms, feature
    ON CONFLICT (tenant_id, period_start, feature)
    DO UPDATE SET tokens = p.tokens + excluded.tokens, events = p.events + excluded.events
)
SELECT tenant_id, count(*), coalesce(sum(tokens), 0) FROM counted GROUP BY tenant_id
"""
# A batch believed all new: a plain ledger insert, which fails the whole statement on any id already
# in the ledger (unique_violation), so when it succeeds every event is new — no speculative insertion,
# no join — and the totals take the sums the worker made (`Sums`), a few rows, instead of grouping
# every event here. The events' arrays are read once (`batch`): unnested for the ledger, and stored as
# they are, one row, in the event log (migration 0009). `taken` holds the ledger's count: the
# main query reads it, so the ledger insert runs first, and the other inserts, waiting on it, follow
# when the statement ends, as in WRITE_BATCH_SQL.
WRITE_NEW_BATCH_SQL = f"""
WITH batch AS (
    SELECT {SPLIT_TEXT} COLLATE "C" AS tenants, {SPLIT_TEXT} COLLATE "C" AS ids, {SPLIT_TEXT} AS features,
           %s::bigint[] AS tokens, %s::bigint[] AS occurred, %s::bigint[] AS received
), ledger AS (
    INSERT INTO event_ids (tenant_id, event_id, received_at)
    SELECT tenant_id, event_id, to_timestamp(received_ms / 1000::float8)
    FROM (SELECT unnest(tenants) AS tenant_id, unnest(ids) AS event_id, unnest(received) AS received_ms
          FROM batch) AS t  -- in the select list: unnested as read, not stored first (ROWS FROM would)
    RETURNING 1
), taken AS (
    SELECT count(*) AS n FROM ledger
), stored AS (
    INSERT INTO event_log (counted_at, tenant_ids, event_ids, features, tokens, occurred_ms, received_ms)
    SELECT %s, tenants, ids, features, tokens, occurred, received FROM batch
    WHERE (SELECT n FROM taken) > 0
), rolled AS (
    INSERT INTO rollups AS r (tenant_id, feature, minute, tokens, events)
    SELECT tenant_id, feature, to_timestamp(minute * 60), tokens, events
    FROM unnest(%s::text[] COLLATE "C", %s::text[] COLLATE "C", %s::bigint[], %s::bigint[], %s::int[])
        AS g(tenant_id, feature, minute, tokens, events)
    WHERE (SELECT n FROM taken) > 0
    ORDER BY tenant_id, feature, minute
    ON CONFLICT (tenant_id, feature, minute)
    DO UPDATE SET tokens = r.tokens + excluded.tokens, events = r.events + excluded.events
), dailied AS (
    INSERT INTO daily_totals AS d (tenant_id, day, tokens)
    SELECT tenant_id, (to_timestamp(day * 86400) AT TIME ZONE 'UTC')::date, tokens
    FROM unnest(%s::text[] COLLATE "C", %s::bigint[], %s::bigint[]) AS g(tenant_id, day, tokens)
    WHERE (SELECT n FROM taken) > 0
    ORDER BY tenant_id, day
    ON CONFLICT (tenant_id, day) DO UPDATE SET tokens = d.tokens + excluded.tokens
), totalled AS (
    INSERT INTO period_totals AS p (tenant_id, period_start, feature, tokens, events)
    SELECT tenant_id, to_timestamp(period_ms / 1000::float8), feature, tokens, events
    FROM unnest(%s::text[] COLLATE "C", %s::bigint[], %s::text[] COLLATE "C", %s::bigint[], %s::bigint[])
        AS g(tenant_id, period_ms, feature, tokens, events)
    WHERE (SELECT n FROM taken) > 0
    ORDER BY tenant_id, period_ms, feature
    ON CONFLICT (tenant_id, period_start, feature)
    DO UPDATE SET tokens = p.tokens + excluded.tokens, events = p.events + excluded.events
)
SELECT n FROM taken
"""
# Prepared once per connection: its text is most of what a small batch costs the backend. Not
# WRITE_BATCH_SQL (the rare batch that meets known ids): a generic plan, costed for arrays of a default
# size, could join `input` and `ledger` by nested loop over thousands of rows.
WRITE_NEW_BATCH = Prepared("flagmeter_write_new_batch", WRITE_NEW_BATCH_SQL)


# The batch's transaction begins with its tenants' billing days, in the same round trip. KEY SHARE keeps
# a billing-day change (FOR UPDATE) from interleaving with the batch.
BEGIN_WITH_TENANTS_SQL = """
BEGIN;
SELECT id, billing_day FROM tenants WHERE id = ANY(%s) FOR KEY SHARE
"""


# After the counting statement, in its transaction, one statement: its snapshot holds any batch this one
# waited for on the ledger, so the daily totals read ('d' rows) include every event of these entries,
# counted here or before. The usage versions ('v' rows) are bumped for every known tenant of the batch,
# counted or not: a batch counted before a crash left the versions in Redis behind; counted again (all
# duplicates), it brings them up to date. Their row locks, in id order, are held to the commit:
# concurrent batches of overlapping tenants wait for each other here, never in a cycle.
BUMP_VERSIONS_READ_DAILY_SQL = """
WITH bumped AS (
    UPDATE tenants t SET usage_version = t.usage_version + 1
    FROM (SELECT id FROM tenants WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE) AS locked
    WHERE t.id = locked.id
    RETURNING t.id, t.usage_version
)
SELECT 'v', id, NULL, usage_version FROM bumped
UNION ALL
SELECT 'd', d.tenant_id, d.day::text, d.tokens FROM daily_totals d
JOIN unnest(%s::text[], %s::date[]) AS b(tenant_id, day) USING (tenant_id, day)
"""
BUMP_VERSIONS_READ_DAILY = Prepared("flagmeter_bump_versions_read_daily", BUMP_VERSIONS_READ_DAILY_SQL)
