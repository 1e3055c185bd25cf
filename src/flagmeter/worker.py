"""The worker: read a batch from the stream, count it in one transaction, then ack.

Lifecycle: `start()` prepares the consumer group and partitions, `run()` loops until `stop()`
(SIGTERM), finishing the batch in hand. Acking only after commit, with dedup by event id in
the same transaction, makes the effect exactly-once whatever kills the process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence

from . import metrics
from .alerts import percent_used
from .config import Settings
from .delivery import Courier
from .events import MAX_BATCH
from .ledger import LedgerInsert
from .store import BatchResult, Store, StoreUnavailable
from .stream import (
    TRANSIENT_REDIS_ERRORS,
    Entry,
    RedisUnavailable,
    Stream,
    consumer_name,
    encode_columns,
    on_redis,
)
from .usage_versions import UsageVersions

log = logging.getLogger(__name__)

# A read of fewer events than this waits before the next one, so a light stream is counted in a few
# transactions of hundreds of events, not many of a handful: each transaction costs the worker and
# PostgreSQL ~1-2 ms of CPU whatever its size. The wait is lag the events see at most.
SMALL_BATCH = 500
MAX_READ = 64
SMALL_BATCH_WAIT_S = 0.2
# flagmeter_tenant_quota_used_ratio is read afresh from PostgreSQL: at most this often while batches are
# counted, and at least this often anyway, so a quota or billing-day change and a new period show too.
QUOTA_RATIO_MIN_S = 1.0
QUOTA_RATIO_MAX_S = 30.0


class Worker:
    """Counts the stream into PostgreSQL; runs `courier` (the alert outbox's sender) beside it."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        stream: Stream,
        courier: Courier,
        *,
        concurrency: int = 2,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stream = stream
        self.usage_versions = UsageVersions(stream)
        self.courier = courier
        self.concurrency = concurrency
        self.ledger = LedgerInsert()  # this worker's guess at the ledger insert's form
        self._stopping = asyncio.Event()
        self._counted = asyncio.Event()  # a batch committed since the quota ratios were last read
        self._ratio_tenants: set[str] = set()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        try:
            await self.stream.ensure_group()
        except TRANSIENT_REDIS_ERRORS as error:  # a read meeting no group creates it once Redis answers
            log.warning("redis unavailable at start; reading will retry", extra={"error": str(error)})
        try:
            readable = await on_redis(self.stream.replay_readable())
        except RedisUnavailable as error:  # unreachable, say: they stay dead letters meanwhile
            log.warning(
                "could not put back the dead letters an older worker could not read; the next start or"
                " `flagmeter dead-letters --readable` will",
                extra={"error": repr(error)},
            )
        else:
            if readable:
                log.warning(
                    "dead letters an older worker could not read put back on the stream",
                    extra={"count": readable, "reason": "malformed"},
                )
        try:
            await self.store.ensure_partitions(self.settings.clock.now())
        except StoreUnavailable as error:
            log.warning("could not ensure event partitions yet", extra={"error": str(error)})

    async def run(self) -> None:
        await self.start()
        housekeeping = asyncio.create_task(self._housekeeping())
        ratios = asyncio.create_task(self._quota_ratios())
        # Its own task: a slow webhook never holds up counting.
        delivering = asyncio.create_task(self.courier.run(self._stopping))
        try:
            await asyncio.gather(*(self._consume(consumer_name()) for _ in range(self.concurrency)))
        finally:
            housekeeping.cancel()
            ratios.cancel()
            await asyncio.wait([delivering], timeout=self.courier.config.timeout_s + 2)
            delivering.cancel()
        log.info("worker stopped")

    async def _consume(self, consumer: str) -> None:
        log.info("consumer started", extra={"consumer": consumer})
        next_reclaim = 0.0
        # Events per entry lately: entries are requests, of 1 to MAX_BATCH events. Assume the largest
        # until seen, so a worker starting on a backlog of big requests reads a few, not thousands.
        per_entry = float(MAX_BATCH)
        while not self.stopping:
            try:
                # A transaction's worth of events, read MAX_READ entries at most at a time: a burst
                # of big requests after small ones then holds at most MAX_READ x MAX_BATCH more.
                count = max(1, read_size(self.settings.batch_size, 0, per_entry))
                entries: list[Entry] = []
                if time.monotonic() >= next_reclaim:
                    entries = await self.stream.reclaim(consumer, self.settings.claim_idle_ms, count)
                    next_reclaim = time.monotonic() + min(self.settings.claim_idle_ms / 2000, 5.0)
                if not entries:
                    entries = await self.stream.read(consumer, count, block_ms=1000)
                last, events = entries, _events(entries)
                # A full read means more is waiting: top the batch up, never past a transaction's worth
                # (a second full read would only wait in memory while the first commits).
                while len(last) == count:
                    per_entry = max(1.0, events / len(entries))
                    # At most twice the last read: a few small entries ahead of big ones do not
                    # license one read of MAX_READ big ones. An entry counts as one event at least.
                    held = max(events, len(entries))
                    count = min(read_size(self.settings.batch_size, held, per_entry), 2 * count)
                    if count < 1:
                        break
                    last = await self.stream.read(consumer, count, block_ms=None)
                    entries += last
                    events += _events(last)
                for group in transactions(entries, self.settings.batch_size):
                    await self.count(group)
                if entries:
                    per_entry = max(1.0, events / len(entries))
                if 0 < events < SMALL_BATCH:
                    # A light stream: let the next batch fill a little instead of paying a transaction
                    # per handful of events. Costs at most this much freshness.
                    await self._sleep(SMALL_BATCH_WAIT_S)
            except TRANSIENT_REDIS_ERRORS as error:
                log.warning("redis unavailable; retrying", extra={"error": str(error)})
                await self._sleep(1.0)

    async def count(self, entries: Sequence[Entry]) -> None:
        """Count one batch; ack only what is committed (or dead-lettered)."""
        started = time.perf_counter()
        metrics.worker_busy.inc()
        try:
            malformed = [e for e in entries if e.groups is None]
            exhausted = [
                e for e in entries if e.groups is not None and e.deliveries > self.settings.max_deliveries
            ]
            await self.stream.dead_letter_entries(malformed, "malformed")
            await self.stream.dead_letter_entries(exhausted, "max_deliveries")
            for reason, group in (("malformed", malformed), ("max_deliveries", exhausted)):
                if group:
                    metrics.dead_letter_total.labels(reason).inc(len(group))
                    log.error("entries dead-lettered", extra={"reason": reason, "count": len(group)})
            live = [
                e for e in entries if e.groups is not None and e.deliveries <= self.settings.max_deliveries
            ]
            if live:
                await self._write(live)
        finally:
            metrics.worker_busy.dec()
            metrics.worker_batch_size.observe(_events(entries))
            metrics.worker_batch_duration.observe(time.perf_counter() - started)

    async def _write(self, entries: list[Entry]) -> None:
        """Count `entries` in one transaction, then ack them; a batch that fails is counted entry by
        entry, so one bad entry (left pending, dead-lettered after max deliveries) holds up no other."""
        try:
            result = await self._commit(entries)
        except Exception as error:
            if len(entries) == 1:
                log.error("entry failed", extra={"entry": entries[0].id, "error": repr(error)})
                return
            log.warning("batch failed; counting entry by entry", extra={"error": repr(error)})
            for entry in entries:
                await self._write([entry])
            return
        if result is not None:
            await self._acknowledge(entries, result)
            self._observe(entries, result)

    async def _commit(self, entries: list[Entry]) -> BatchResult | None:
        """The counting transaction, retried with backoff while PostgreSQL is down; None when
        stopping first (the entries stay pending for another worker)."""
        delay = 0.2
        while True:
            try:
                return await self.store.write_batch(
                    [group for e in entries for group in e.groups or ()],
                    now=self.settings.clock.now(),
                    ledger=self.ledger,
                    slack_fallback=bool(self.settings.slack_webhook_url),
                )
            except StoreUnavailable as error:
                if self.stopping:
                    log.warning("stopping with a batch uncounted; it stays pending for another worker")
                    return None
                log.warning(
                    "postgres unavailable; holding batch", extra={"error": str(error), "retry_in": delay}
                )
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _acknowledge(self, entries: list[Entry], result: BatchResult) -> None:
        unknown = _unknown_tenant_parts(entries, result.unknown_tenants)
        if unknown:
            # The rest of each such entry is counted: only the unknown tenants' events are set aside.
            await self.stream.dead_letter_entries(unknown, "unknown_tenant")
            metrics.dead_letter_total.labels("unknown_tenant").inc(len(unknown))
        unknown_ids = {e.id for e in unknown}
        # Before the ack: should this fail, the entries are counted again (as duplicates) and raise it.
        await self.usage_versions.raise_to(result.usage_versions)
        # The same call moves the entries' tokens from pending to counted in the quota figures (tally.py).
        await self.stream.ack([e.id for e in entries if e.id not in unknown_ids], result.daily_totals)

    def _observe(self, entries: list[Entry], result: BatchResult) -> None:
        """Metrics and logs of a committed batch; wake the courier for the alerts it decided."""
        metrics.worker_events_counted.inc(result.counted)
        metrics.worker_events_duplicate.inc(result.duplicates)
        if result.recounted:
            metrics.worker_batches_recounted.inc()
        for tenant, tokens in result.tokens_by_tenant.items():
            metrics.tenant_tokens.labels(tenant).inc(tokens)
        # An entry is one request: its events share the time it was received.
        oldest = min(e.groups[0][1] for e in entries if e.groups)  # the groups' received_ms
        metrics.rollup_lag.set(max(self.settings.clock.now_ms() - oldest, 0) / 1000)
        for alert in result.alerts:
            metrics.alerts_fired.labels(str(alert.threshold)).inc()
            log.info("quota alert decided", extra={"tenant": alert.tenant_id, "threshold": alert.threshold})
        if result.alerts:
            self.courier.wake()
        self._counted.set()

    async def _housekeeping(self) -> None:
        last_partitions = time.monotonic()
        while True:
            try:
                backlog = await self.stream.backlog()
                metrics.stream_length.set(backlog.length)
                metrics.stream_pending.set(backlog.pending)
                metrics.dead_letter_length.set(backlog.dead_letters)
                # Stream ids carry Redis's own (system) time, not the service clock.
                lag = 0.0 if backlog.oldest_ms is None else max(time.time() - backlog.oldest_ms / 1000, 0.0)
                metrics.consumer_lag.set(lag)
                metrics.db_pool_size.labels("worker").set(self.store.pool_size)
                metrics.sample_process("worker")
                if time.monotonic() - last_partitions > 3600:
                    await self.store.ensure_partitions(self.settings.clock.now())
                    last_partitions = time.monotonic()
            except Exception as error:
                log.warning("housekeeping failed", extra={"error": repr(error)})
            await asyncio.sleep(2.0)

    async def _quota_ratios(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._counted.wait(), QUOTA_RATIO_MAX_S)
            except TimeoutError:
                pass
            self._counted.clear()
            try:
                await self.publish_quota_ratios()
            except Exception as error:
                log.warning("could not read quota ratios", extra={"error": repr(error)})
            await asyncio.sleep(QUOTA_RATIO_MIN_S)

    async def publish_quota_ratios(self) -> None:
        """Set every tenant's used / quota in its current period, from one snapshot of PostgreSQL.

        Not from the batch: the ratio also moves when nothing is counted (a quota or billing-day change,
        a new period), and every worker sets the same value for a tenant, whichever counted its events.
        """
        usage = await self.store.current_usage(self.settings.clock.now())
        for tenant_id, current in usage.items():
            ratio = percent_used(current.used, current.tenant.monthly_quota) / 100
            metrics.tenant_quota_used_ratio.labels(tenant_id).set(ratio)
        for gone in self._ratio_tenants - set(usage):
            metrics.tenant_quota_used_ratio.remove(gone)
        self._ratio_tenants = set(usage)

    async def _sleep(self, seconds: float) -> None:
        """Sleep with jitter, waking early on stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds * random.uniform(0.8, 1.2))
        except TimeoutError:
            pass


def read_size(batch_size: int, events: int, per_entry: float) -> int:
    """Entries to read for the `batch_size - events` events a transaction still has room for, at
    about `per_entry` events each: MAX_READ at most, 0 when not one more entry fits."""
    return max(0, min(int((batch_size - events) / per_entry), MAX_READ))


def _events(entries: Sequence[Entry]) -> int:
    return sum(entry.size for entry in entries)


def transactions(entries: Sequence[Entry], limit: int) -> list[list[Entry]]:
    """Split a read into transactions of at most `limit` events; an entry (a request) is never split."""
    groups: list[list[Entry]] = []
    size = 0
    for entry in entries:
        n = entry.size
        if not groups or size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += n
    return groups


def _unknown_tenant_parts(entries: Sequence[Entry], unknown_tenants: frozenset[str]) -> list[Entry]:
    """Per entry holding events of tenants that do not exist, an entry of just those events."""
    if not unknown_tenants:
        return []
    parts = []
    for entry in entries:
        groups = tuple(group for group in entry.groups or () if group[0] in unknown_tenants)
        if groups:
            payload = entry.payload if len(groups) == len(entry.groups or ()) else encode_columns(groups)
            parts.append(Entry(entry.id, payload, groups, entry.deliveries))
    return parts
