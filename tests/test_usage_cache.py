"""The usage read's cache (api/usage.py UsageCache) on real PostgreSQL and Redis: an answer is reused
only while it is current, and no read, from any API process, shows less than a read before it."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2

from flagmeter.api.usage import UsageCache
from flagmeter.config import Settings
from flagmeter.delivery import Courier
from flagmeter.events import Event, columns
from flagmeter.ledger import LedgerInsert
from flagmeter.localstack import LocalStack
from flagmeter.store import Store, migrate
from flagmeter.stream import Entry, Stream
from flagmeter.worker import Worker
from stacklib import fresh_database

TENANT = "cached"


@dataclass
class Parts:
    store: Store
    stream: Stream
    worker: Worker
    caches: list[UsageCache]  # one per API process

    async def count(self, tokens: int) -> None:
        """The worker counts one request of one event: commit, announce the version, ack."""
        now_ms = int(time.time() * 1000)
        event = Event(TENANT, uuid.uuid4().hex, "chat", tokens, now_ms, now_ms)
        await self.worker.count([Entry(f"{now_ms}-{random.randint(1, 10**6)}", b"", tuple(columns([event])))])

    async def commit_only(self, tokens: int) -> None:
        """A batch committed whose version the worker has not announced yet (the moment between)."""
        now_ms = int(time.time() * 1000)
        event = Event(TENANT, uuid.uuid4().hex, "chat", tokens, now_ms, now_ms)
        await self.store.write_batch(columns([event]), now=datetime.now(UTC), ledger=LedgerInsert())

    async def used(self, process: int, now: datetime | None = None) -> int:
        usage = await self.caches[process].current(TENANT, now or datetime.now(UTC))
        assert usage is not None
        return usage.used


def _run(servers: LocalStack, test: Callable[[Parts], Awaitable[None]]) -> None:
    url = fresh_database(servers.database_url)
    asyncio.run(migrate(url))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants (id, name, monthly_quota) VALUES (%s, %s, 1000000)", (TENANT, TENANT)
        )
    conn.close()

    @asynccontextmanager
    async def parts() -> AsyncIterator[Parts]:
        settings = Settings(url, servers.redis_url, "x" * 16, stream=f"usage-cache-{uuid.uuid4().hex}")
        store = await Store.connect(url, size=4)
        stream = Stream.from_settings(settings)
        await stream.ensure_group()
        try:
            yield Parts(
                store,
                stream,
                Worker(settings, store, stream, Courier(settings, store)),
                [UsageCache(store, stream) for _ in "ab"],
            )
        finally:
            await stream.close()
            await store.close()

    async def main() -> None:
        async with parts() as p:
            await test(p)

    asyncio.run(main())


def test_a_read_after_a_counted_event_shows_it(servers: LocalStack) -> None:
    async def test(p: Parts) -> None:
        assert await p.used(0) == 0  # cached now
        await p.count(5)
        assert await p.used(0) == 5
        assert await p.used(0) == 5  # from the cache: the version has not moved

    _run(servers, test)


def test_an_answer_committed_but_not_yet_announced_is_never_followed_by_an_older_one(
    servers: LocalStack,
) -> None:
    async def test(p: Parts) -> None:
        assert await p.used(1) == 0  # process b caches the answer at version 0
        await p.commit_only(3)  # the worker has committed but not yet raised the version in Redis
        assert await p.used(0) == 3  # process a reads it fresh (it had nothing cached)...
        assert await p.used(1) == 3  # ...and announced it first, so b's cached 0 is not shown

    _run(servers, test)


def test_reads_from_any_process_never_go_backwards(servers: LocalStack) -> None:
    async def test(p: Parts) -> None:
        rng = random.Random(15)
        shown = 0

        async def reader() -> None:
            nonlocal shown
            for _ in range(300):
                used = await p.used(rng.randrange(2))
                assert used >= shown, f"a read showed {used} after one showed {shown}"
                shown = used
                await asyncio.sleep(0)

        async def writer() -> None:
            for _ in range(60):
                await (p.count if rng.random() < 0.7 else p.commit_only)(rng.randint(1, 9))
                await asyncio.sleep(0)

        await asyncio.gather(reader(), writer())
        assert shown > 0  # the reads overlapped the counting

    _run(servers, test)


def test_a_quota_change_shows_at_once_in_every_process(servers: LocalStack) -> None:
    async def test(p: Parts) -> None:
        now = datetime.now(UTC)
        assert (await p.caches[1].current(TENANT, now)).tenant.monthly_quota == 1000000  # type: ignore[union-attr]
        await p.store.update_tenant(TENANT, {"monthly_quota": 42})
        await p.caches[0].refresh(TENANT, now)  # what the PATCH handler does after its commit
        assert (await p.caches[1].current(TENANT, now)).tenant.monthly_quota == 42  # type: ignore[union-attr]

    _run(servers, test)


def test_a_cached_answer_ends_with_its_billing_period(servers: LocalStack) -> None:
    async def test(p: Parts) -> None:
        await p.count(4)
        now = datetime.now(UTC)
        first = await p.caches[0].current(TENANT, now)
        assert first is not None and first.used == 4
        later = first.period.end + timedelta(minutes=1)  # the clock has moved into the next period
        after = await p.caches[0].current(TENANT, later)
        assert after is not None and after.period.start == first.period.end and after.used == 0

    _run(servers, test)
