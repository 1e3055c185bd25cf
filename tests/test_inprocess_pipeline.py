"""The pipeline's parts built in the test's own event loop, as arq's tests build its Worker: a real
Stream on the session's Redis, a real Store on a fresh PostgreSQL database, a Courier and a Worker,
no subprocess. Faster to reason about than the process tests, and they reach inside (the ledger
guess, the courier's wake-up) where a black box cannot.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from alerts.local_env import Receiver
from flagmeter.config import Settings
from flagmeter.delivery import Courier
from flagmeter.events import Event, columns
from flagmeter.keys import new_key
from flagmeter.localstack import LocalStack
from flagmeter.store import AlertSettingsChange, Store, Tenant, migrate
from flagmeter.stream import Stream
from flagmeter.worker import Worker
from stacklib import ADMIN_TOKEN, fresh_database, mid_period_day


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    stream: Stream

    def worker(self, courier: Courier | None = None) -> Worker:
        return Worker(self.settings, self.store, self.stream, courier or Courier(self.settings, self.store))

    async def tenant(self, quota: int = 1_000_000) -> str:
        tenant_id = f"t-{uuid.uuid4().hex[:10]}"
        key_id, _, key_hash = new_key()
        draft = Tenant(tenant_id, tenant_id, quota, mid_period_day(), None)  # type: ignore[arg-type]
        await self.store.create_tenant(draft, key_id, key_hash)
        return tenant_id

    async def used(self, tenant: str) -> int:
        usage = await self.store.current_usage(self.settings.clock.now(), tenant)
        return usage[tenant].used


@pytest.fixture
async def pipeline(servers: LocalStack) -> AsyncIterator[Pipeline]:
    database_url = fresh_database(servers.database_url)
    await migrate(database_url)
    settings = Settings(
        database_url=database_url,
        redis_url=servers.redis_url,
        admin_token=ADMIN_TOKEN,
        stream=f"inprocess:{uuid.uuid4().hex[:8]}",
        claim_idle_ms=500,
        allow_http_webhooks=True,
        allow_private_webhooks=True,
        alert_retry_base_ms=200,
        alert_timeout_ms=1000,
    )
    store = await Store.connect(database_url, size=4)
    stream = Stream.from_settings(settings)
    yield Pipeline(settings, store, stream)
    await stream.close()
    await store.close()


def _events(tenant: str, *tokens: int) -> list[Event]:
    now = int(time.time() * 1000)
    return [Event(tenant, uuid.uuid4().hex, "chat", n, now, now) for n in tokens]


async def _until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_worker_counts_what_the_stream_holds_once_and_acks_it(pipeline: Pipeline) -> None:
    tenant = await pipeline.tenant()
    first = _events(tenant, 5, 7)
    worker = pipeline.worker()
    running = asyncio.create_task(worker.run())
    try:
        # an id twice in one entry
        await pipeline.stream.append(columns(first + first[:1]), tenant=None, rate=0)
        await _until(lambda: _equals(pipeline.used(tenant), 12))
        assert worker.ledger.plain_first  # repeats within a batch never reach the ledger
        # a client's retry
        await pipeline.stream.append(columns(first + _events(tenant, 1)), tenant=None, rate=0)
        await _until(lambda: _equals(pipeline.used(tenant), 13))
        await _until(lambda: _equals(_length(pipeline.stream), 0))  # acked entries are deleted
        assert not worker.ledger.plain_first  # the retry met known ids: the next insert skips them
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)
    assert await pipeline.used(tenant) == 13


async def test_an_entry_left_by_a_dead_consumer_is_reclaimed_and_counted(pipeline: Pipeline) -> None:
    tenant = await pipeline.tenant()
    await pipeline.stream.ensure_group()
    await pipeline.stream.append(columns(_events(tenant, 40)), tenant=None, rate=0)
    taken = await pipeline.stream.read("a-consumer-that-dies", 10, block_ms=None)
    assert len(taken) == 1  # read, never acked
    worker = pipeline.worker()
    running = asyncio.create_task(worker.run())
    try:
        await _until(lambda: _equals(pipeline.used(tenant), 40))
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)


async def test_the_courier_the_worker_runs_delivers_a_crossed_threshold_once(pipeline: Pipeline) -> None:
    receiver = Receiver()
    try:
        tenant = await pipeline.tenant(quota=100)
        url = receiver.url(f"/hook/{tenant}")
        await pipeline.store.update_alert_settings(tenant, AlertSettingsChange([80], (url, _secret())))
        settings = replace(pipeline.settings, public_url="https://flagmeter.example")
        worker = pipeline.worker(Courier(settings, pipeline.store))
        running = asyncio.create_task(worker.run())
        try:
            await pipeline.stream.append(columns(_events(tenant, 50, 35)), tenant=None, rate=0)
            await asyncio.get_running_loop().run_in_executor(None, receiver.wait, f"/hook/{tenant}", 1)
            # 90 %: 80 % was sent
            await pipeline.stream.append(columns(_events(tenant, 5)), tenant=None, rate=0)
            await _until(lambda: _equals(pipeline.used(tenant), 90))
            await asyncio.sleep(0.5)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 20)
        hooks = receiver.at(f"/hook/{tenant}")
        assert len(hooks) == 1 and hooks[0].json()["data"]["threshold"] == 80
    finally:
        receiver.close()


def _secret() -> str:
    from flagmeter.alerts import new_secret

    return new_secret()


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def _length(stream: Stream) -> int:
    return int(await stream.client.xlen(stream.name))
