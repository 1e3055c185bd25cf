"""Store.write_batch on a real PostgreSQL: batches of new ids (plain ledger insert) and batches holding
ids counted before (the insert fails whole; counted again skipping them) store the same truth."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

import psycopg2
import pytest

from flagmeter.events import Event, columns
from flagmeter.ledger import LedgerInsert
from flagmeter.localstack import LocalStack
from flagmeter.periods import period_containing
from flagmeter.store import Store, migrate
from stacklib import fresh_database

TENANTS = {"day-one": 1, "day-fifteen": 15, "day-thirty-one": 31}


# A database whose default collation is a language's (ICU's, which needs no locale installed on the
# machine), as the official postgres image's en_US.utf8 is: 'a' < 'B' there, 'B' < 'a' in byte order.
LANGUAGE_ORDER = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"


def _database(servers: LocalStack, options: str = "") -> str:
    url = fresh_database(servers.database_url, options)
    asyncio.run(migrate(url))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for tenant, day in TENANTS.items():
            cur.execute(
                "INSERT INTO tenants (id, name, monthly_quota, billing_day) VALUES (%s, %s, 1000000000, %s)",
                (tenant, tenant, day),
            )
    conn.close()
    return url


def _events(count: int) -> list[Event]:
    now = int(time.time() * 1000)
    return [
        Event(
            random.choice(list(TENANTS)),
            uuid.uuid4().hex,
            random.choice(["chat", "embed"]),
            random.randint(1, 1000),
            # a few hours on one of 40 days: several minutes of one day, days, billing periods, months
            now - random.randint(0, 3 * 3600 * 1000) - random.randint(0, 40) * 86_400_000,
            now,
        )
        for _ in range(count)
    ]


Sums = tuple[Counter[tuple[str, str, datetime]], Counter[tuple[str, datetime, str]], Counter[tuple[str, str]]]


def _first_of_each_id(events: Iterable[Event]) -> dict[tuple[str, str], Event]:
    first: dict[tuple[str, str], Event] = {}
    for event in events:
        first.setdefault((event.tenant, event.id), event)
    return first


def _expected(events: Iterable[Event]) -> Sums:
    """Rollups, period totals and daily totals recomputed in Python from the first event of each id."""
    first = _first_of_each_id(events)
    rollups: Counter[tuple[str, str, datetime]] = Counter()
    totals: Counter[tuple[str, datetime, str]] = Counter()
    daily: Counter[tuple[str, str]] = Counter()
    for event in first.values():
        moment = datetime.fromtimestamp(event.occurred_ms / 1000, UTC)
        rollups[(event.tenant, event.feature, moment.replace(second=0, microsecond=0))] += event.tokens
        start = period_containing(moment, TENANTS[event.tenant]).start
        totals[(event.tenant, start, event.feature)] += event.tokens
        daily[(event.tenant, moment.date().isoformat())] += event.tokens
    return rollups, totals, daily


Log = dict[tuple[str, str], tuple[str, int, int, int]]


def _logged(events: Iterable[Event]) -> Log:
    """The event log as it should read: the first event of each id, once."""
    return {key: event[2:] for key, event in _first_of_each_id(events).items()}


def _stored(url: str) -> tuple[*Sums, Log, int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tenant_id, feature, minute, tokens FROM rollups")
        rollups = Counter({(t, f, m.astimezone(UTC)): n for t, f, m, n in cur.fetchall()})
        cur.execute("SELECT tenant_id, period_start, feature, tokens FROM period_totals")
        totals = Counter({(t, p.astimezone(UTC), f): n for t, p, f, n in cur.fetchall()})
        cur.execute("SELECT tenant_id, day::text, tokens FROM daily_totals")
        daily = Counter({(t, d): n for t, d, n in cur.fetchall()})
        cur.execute("SELECT tenant_id, event_id, feature, tokens, occurred_at, received_at FROM events")
        rows = [((t, i), (f, n, _ms(o), _ms(r))) for t, i, f, n, o, r in cur.fetchall()]
        events = dict(rows)
        assert len(events) == len(rows), "an event is in the log twice"
        cur.execute("SELECT count(*) FROM event_ids")
        (ledger,) = cur.fetchone()
    conn.close()
    return rollups, totals, daily, events, ledger


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


@pytest.mark.parametrize("options", ["", LANGUAGE_ORDER], ids=["server-default", "language-order"])
def test_new_ids_known_ids_and_both_in_one_batch_are_each_counted_once(
    servers: LocalStack, options: str
) -> None:
    url = _database(servers, options)

    async def run() -> list[tuple[int, int]]:
        store = await Store.connect(url, size=2)
        first = _events(300)
        batches = [
            first,
            first[:100] + _events(100) + first[:1],  # known ids, new ids, and one repeated in the batch
            _events(200),  # all new again
            first[100:],  # all known
            _events(50) + first[-1:],
        ]
        try:
            ledger = LedgerInsert()
            results = [
                await store.write_batch(columns(batch), now=datetime.now(UTC), ledger=ledger)
                for batch in batches
            ]
        finally:
            await store.close()
        seen: list[Event] = [event for batch in batches for event in batch]
        stored = _stored(url)
        assert stored[:3] == _expected(seen)
        assert stored[3] == _logged(seen)  # each counted event in the log once, as it came
        # The plain insert is tried while the last batch held no known id; it fails on batches 2 and 4.
        assert [r.recounted for r in results] == [False, True, False, True, False]
        return [(r.counted, r.duplicates) for r in results]

    assert asyncio.run(run()) == [(300, 0), (100, 101), (200, 0), (0, 200), (50, 1)]
    rollups, totals, daily, events, ledger = _stored(url)
    assert len(events) == ledger == 650
    assert sum(rollups.values()) == sum(totals.values()) == sum(daily.values())


def test_workers_counting_overlapping_batches_at_once_count_each_id_once(servers: LocalStack) -> None:
    url = _database(servers)

    async def run() -> int:
        stores = [await Store.connect(url, size=1) for _ in range(3)]
        ledgers = [LedgerInsert() for _ in stores]  # one per worker, as each worker has its own
        everything: list[Event] = []
        counted = 0
        try:
            for _ in range(5):
                shared = _events(400)
                batches = [shared + _events(100) for _ in stores]  # same ids in every worker's batch
                everything += [event for batch in batches for event in batch]
                results = await asyncio.gather(
                    *(
                        s.write_batch(columns(b), now=datetime.now(UTC), ledger=ledger)
                        for s, b, ledger in zip(stores, batches, ledgers, strict=True)
                    )
                )
                counted += sum(r.counted for r in results)
        finally:
            for store in stores:
                await store.close()
        stored = _stored(url)
        assert stored[:3] == _expected(everything)
        assert stored[3] == _logged(everything)
        return counted

    assert asyncio.run(run()) == 5 * (400 + 3 * 100)
    events, ledger = _stored(url)[3:]
    assert len(events) == ledger == 3500


def test_the_counting_keys_compare_as_bytes_on_a_database_of_a_language_order(servers: LocalStack) -> None:
    url = _database(servers, LANGUAGE_ORDER)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 'a' < 'B'")
        assert cur.fetchone() == (True,)  # the database's own order is the language's
        cur.execute(
            "SELECT a.attrelid::regclass::text, a.attname, c.collname FROM pg_attribute a"
            " JOIN pg_collation c ON c.oid = a.attcollation"
            " WHERE a.attrelid = ANY('{event_ids,rollups,daily_totals,period_totals}'::regclass[])"
            " AND a.attname IN ('tenant_id', 'event_id', 'feature')"
        )
        collations = {(table, column): name for table, column, name in cur.fetchall()}
    conn.close()
    assert len(collations) == 7
    assert set(collations.values()) == {"C"}, collations


def test_a_batch_waiting_on_another_batch_of_its_tenant_decides_alerts_on_what_that_one_committed(
    servers: LocalStack,
) -> None:
    """Two batches of one tenant, on different features (so no total row of one is the other's): the
    later waits for the earlier's row lock (its usage version's bump), then decides its alerts on the
    totals and the alert settings the earlier committed. Together they cross 80 % of the quota; alone,
    neither does."""
    url = _database(servers)
    now = datetime.now(UTC)
    period = period_containing(now, 1)
    earlier = psycopg2.connect(url)  # stands for a batch that has counted and holds the tenant's lock
    with earlier.cursor() as cur:
        cur.execute("INSERT INTO tenants (id, name, monthly_quota) VALUES ('alerting', 'alerting', 1000)")
        earlier.commit()
        cur.execute(
            "INSERT INTO period_totals (tenant_id, period_start, feature, tokens, events)"
            " VALUES ('alerting', %s, 'embed', 500, 1)",
            (period.start,),
        )
        cur.execute(
            "INSERT INTO alert_webhooks (tenant_id, url, secret) VALUES ('alerting', 'https://a.test', 's')"
        )
        cur.execute("UPDATE tenants SET usage_version = usage_version + 1 WHERE id = 'alerting'")

    async def run() -> tuple[int, ...]:
        store = await Store.connect(url, size=1)
        try:
            now_ms = int(now.timestamp() * 1000)
            batch = columns([Event("alerting", uuid.uuid4().hex, "chat", 400, now_ms, now_ms)])
            later = asyncio.create_task(store.write_batch(batch, now=now, ledger=LedgerInsert()))
            await asyncio.sleep(1.0)
            assert not later.done()  # waiting for the earlier batch's lock
            earlier.commit()
            result = await asyncio.wait_for(later, 10)
            return tuple(alert.threshold for alert in result.alerts)
        finally:
            await store.close()

    try:
        assert asyncio.run(run()) == (80,)
        with earlier.cursor() as cur:
            cur.execute("SELECT d.target FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id")
            assert [row[0] for row in cur.fetchall()] == ["webhook"]  # the settings committed before
    finally:
        earlier.close()
