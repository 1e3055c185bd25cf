"""The Redis stream between API and worker: append (with the rate limit), read, ack, reclaim, dead-letter.

A Stream owns the Redis client; the other Redis data lives beside the stream, on its client and named
after it: the quota figures (quota_figures.py, tally.py), usage versions (usage_versions.py) and failed
sign-ins (sign_in_failures.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .clock import SYSTEM, Clock
from .config import Settings
from .events import Event
from .quota import tally
from .quota_figures import MAX_MERGE_LUA, TALLY_LUA, QuotaKeys

# The appends of the requests that waited for the previous call (see Stream.append), in one atomic call.
# A request's accepted events travel as ONE stream entry (a JSON array of rows): one XADD, one
# decode and one ack per request, however many events it holds. The same call adds the entry's tally
# to the pending figures and settles the reservations its events name.
# KEYS: stream, pending, then rate-limit buckets and hold keys. ARGV: rate_now_ms, now_ms (service
# clock), then per request: bucket key index (0: not limited), rate, payload, tally, n, and n times
# (holds key index, expiry key index, reservation id).
# The reply holds, per request, 1 + reservations settled when appended, or -(milliseconds to wait) when
# over its tenant's limit.
APPEND_LUA = (
    TALLY_LUA
    + """
local rate_now, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local results = {}
local i = 3
while i <= #ARGV do
  local key, rate = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local settles = tonumber(ARGV[i + 4])
  local result = 1
  if key > 0 then
    local burst = rate * 2
    local bucket = redis.call('HMGET', KEYS[key], 'tokens', 'at')
    local tokens = tonumber(bucket[1]) or burst
    local at = tonumber(bucket[2]) or rate_now
    local t = rate_now
    if t > at then tokens = math.min(burst, tokens + (t - at) * rate / 1000) else t = at end
    if tokens < 1 then
      result = -math.ceil((1 - tokens) * 1000 / rate)
    else
      redis.call('HSET', KEYS[key], 'tokens', tokens - 1, 'at', t)
      redis.call('PEXPIRE', KEYS[key], math.ceil(burst * 1000 / rate) + 1000)
    end
  end
  if result > 0 then
    if ARGV[i + 3] == '' then
      redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 2])
    else
      redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 2], 't', ARGV[i + 3])
      add_tally(KEYS[2], ARGV[i + 3], 1)
    end
    for s = 0, settles - 1 do
      local holds, expiry = KEYS[tonumber(ARGV[i + 5 + 3 * s])], KEYS[tonumber(ARGV[i + 6 + 3 * s])]
      local id = ARGV[i + 7 + 3 * s]
      local expires = redis.call('ZSCORE', expiry, id)
      if expires and tonumber(expires) > now then  -- an expired hold is left to be counted as expired
        redis.call('HDEL', holds, id)
        redis.call('ZREM', expiry, id)
        result = result + 1
      end
    end
  end
  results[#results + 1] = result
  i = i + 5 + 3 * settles
end
return results
"""
)
# Ack, delete, and in the same call take each really acknowledged entry's tally off the pending figures
# and merge the batch's absolute daily totals into the counted ones: a reader sees the events pending or
# counted, never neither. XACK answers 0 for an entry acked before (a redelivery, a dead worker's
# batch), so nothing is taken off twice.
# KEYS: stream, pending, counted. ARGV: group, n, n entry ids, then (day field, total) pairs.
ACK_LUA = (
    TALLY_LUA
    + MAX_MERGE_LUA
    + """
local n = tonumber(ARGV[2])
local acked = 0
for i = 3, 2 + n do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    acked = acked + 1
    local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if entry[1] then add_tally(KEYS[2], entry[1][2], -1) end
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
max_merge(KEYS[3], 3 + n)
return acked
"""
)


MAX_APPEND_BYTES = 512 * 1024  # per script call: Redis runs it atomically, keep it short


@dataclass(slots=True)
class _Append:
    bucket: str | None
    rate: int
    payload: bytes
    tally: bytes
    settle: Sequence[tuple[str, str]]  # (tenant, reservation id) named by its events
    done: asyncio.Future[int]


class StreamUnavailable(Exception):
    """Redis cannot be reached or refuses writes; nothing of the request was appended."""


class RateLimited(Exception):
    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"rate limited for {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: the events one request had accepted; `events` is None when undecodable."""

    id: str
    payload: bytes
    events: tuple[Event, ...] | None
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Backlog:
    length: int
    pending: int
    oldest_ms: int | None
    dead_letters: int


def encode(events: Sequence[Event]) -> bytes:
    return orjson.dumps(events, default=tuple)  # an Event, a named tuple, is written as its row


def _decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    payload = fields.get(b"e", b"")
    try:
        rows = orjson.loads(payload)
        if rows and not isinstance(rows[0], list):
            rows = [rows]  # one bare row: an entry written before entries held whole requests
        events: tuple[Event, ...] | None = tuple(Event.from_row(row) for row in rows) or None
    except (orjson.JSONDecodeError, ValueError, TypeError, IndexError, KeyError):
        events = None
    return Entry(ident, payload, events)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Stream:
    def __init__(
        self, client: redis.Redis, stream: str, group: str, dead_letter: str, clock: Clock = SYSTEM
    ) -> None:
        self.client: Any = client  # redis-py's asyncio stubs type replies too loosely to help
        self.name = stream
        self.group = group
        self.dead_letter = dead_letter
        self.clock = clock
        self.quota_keys = QuotaKeys.beside(stream)
        self._append_script = client.register_script(APPEND_LUA)
        self._append_sha = self._append_script.sha
        self._ack = client.register_script(ACK_LUA)
        self._waiting: list[_Append] = []
        self._sending: asyncio.Task[None] | None = None  # the one call in flight: one connection
        self._append_connection: Any = None

    @classmethod
    def from_url(
        cls,
        url: str,
        stream: str,
        group: str,
        dead_letter: str,
        *,
        connections: int = 32,
        clock: Clock = SYSTEM,
    ) -> Stream:
        # A blocking pool: under a burst, requests wait (up to 5 s) for a connection instead of
        # failing with MaxConnectionsError, which would be a 503 while Redis is perfectly healthy.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=5,
            socket_timeout=5, socket_connect_timeout=2, health_check_interval=30,
        )  # fmt: skip
        return cls(redis.Redis(connection_pool=pool), stream, group, dead_letter, clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Stream:
        return cls.from_url(
            settings.redis_url,
            settings.stream,
            settings.consumer_group,
            settings.dead_letter_stream,
            clock=settings.clock,
        )

    async def close(self) -> None:
        if self._append_connection is not None:
            await self._append_connection.disconnect()
        await self.client.aclose()

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            raise StreamUnavailable(str(error)) from error

    async def append(
        self,
        events: Sequence[Event],
        *,
        tenant: str | None,
        rate: int,
        settle: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Append accepted events; when `tenant` is given its request bucket is charged first.

        `settle` names the (tenant, reservation id) holds the events settle, released in the same
        call; the answer is how many of them were still held.

        Group commit: one script call at a time per process; the requests that arrive while it is
        in flight share the next call, so a busy process makes fewer, fuller Redis round trips
        (and fewer trips through redis-py, which cost more CPU than the round trip itself).
        """
        limited = rate > 0 and tenant is not None
        request = _Append(
            f"flagmeter:ratelimit:{tenant}" if limited else None,
            rate,
            encode(events),
            tally(events),
            settle,
            asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(request)
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._flush)  # after this turn: its requests join
        result = await request.done
        if result < 0:
            raise RateLimited(-result)
        return result - 1

    def _flush(self) -> None:
        if not self._waiting or self._sending is not None:
            return  # the call in flight flushes again when it ends
        take, size = 0, 0
        while take < len(self._waiting) and (take == 0 or size < MAX_APPEND_BYTES):
            size += len(self._waiting[take].payload)
            take += 1
        batch, self._waiting = self._waiting[:take], self._waiting[take:]
        self._sending = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add_done_callback(self._sent)

    def _sent(self, _done: object) -> None:
        self._sending = None
        self._flush()

    async def _send(self, batch: list[_Append]) -> None:
        keys = [self.name, self.quota_keys.pending]
        args: list[Any] = [int(time.time() * 1000), self.clock.now_ms()]
        for request in batch:
            if request.bucket is None:
                args += [0, 0]
            else:
                keys.append(request.bucket)
                args += [len(keys), request.rate]
            args += [request.payload, request.tally, len(request.settle)]
            for tenant, reservation in request.settle:
                keys += [self.quota_keys.holds(tenant), self.quota_keys.expiry(tenant)]
                args += [len(keys) - 1, len(keys), reservation]
        try:
            results = await self._call_append(keys, args)
        except Exception as error:  # whatever it is, no request may wait forever on its future
            for request in batch:
                if not request.done.done():
                    request.done.set_exception(StreamUnavailable(str(error)))
            return
        for request, result in zip(batch, results, strict=True):
            if not request.done.done():
                request.done.set_result(int(result))

    async def _call_append(self, keys: list[str], args: list[Any]) -> list[int]:
        """The script call on a connection of its own, around redis-py's client layer.

        Appends go one call at a time (see `append`), so one connection is enough; skipping the
        client's pool, retry and script wrappers halves the CPU of a call (~250 -> ~130 us here).
        """
        if self._append_connection is None:
            self._append_connection = self.client.connection_pool.make_connection()
        connection = self._append_connection
        try:
            try:
                return await self._run_append(connection, keys, args)
            except RedisConnectionError:
                # Redis closed this connection (it restarted, say): once more on a fresh one. Had the
                # first call run after all, its events are appended twice and the worker counts them once.
                await connection.disconnect(nowait=True)
                return await self._run_append(connection, keys, args)
        except BaseException:
            await connection.disconnect(nowait=True)  # a late reply must not answer the next call
            raise

    async def _run_append(self, connection: Any, keys: list[str], args: list[Any]) -> list[int]:
        try:
            await connection.send_command("EVALSHA", self._append_sha, len(keys), *keys, *args)
            return list(await connection.read_response())
        except NoScriptError:  # Redis restarted and lost its script cache
            await connection.send_command("EVAL", APPEND_LUA, len(keys), *keys, *args)
            return list(await connection.read_response())

    # -- consumer side ------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for `consumer`; waits up to `block_ms` for some (None: answer at once)."""
        try:
            reply = await self.client.xreadgroup(
                self.group, consumer, {self.name: ">"}, count=count, block=block_ms
            )
        except ResponseError as error:
            if "NOGROUP" in str(error):
                await self.ensure_group()
                return []
            raise
        return [_decode(i, f) for _, entries in reply or [] for i, f in entries]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle longer than `min_idle_ms` (a dead or stuck consumer's)."""
        try:
            reply = await self.client.xautoclaim(
                self.name, self.group, consumer, min_idle_ms, start_id="0-0", count=count
            )
        except ResponseError as error:
            if "NOGROUP" in str(error):
                await self.ensure_group()
                return []
            raise
        entries = [_decode(i, f) for i, f in reply[1] if f is not None]
        if not entries:
            return []
        pending = await self.client.xpending_range(
            self.name,
            self.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 2,
            consumername=consumer,
        )
        deliveries = {
            (p["message_id"].decode() if isinstance(p["message_id"], bytes) else p["message_id"]): int(
                p["times_delivered"]
            )
            for p in pending
        }
        return [Entry(e.id, e.payload, e.events, deliveries.get(e.id, 1)) for e in entries]

    def _ack_call(self, ids: Sequence[str], totals: Sequence[tuple[str, int]], client: Any = None) -> Any:
        keys = [self.name, self.quota_keys.pending, self.quota_keys.counted]
        args = [self.group, len(ids), *ids, *[value for pair in totals for value in pair]]
        return self._ack(keys=keys, args=args, client=client)

    async def ack(self, ids: Sequence[str], totals: Sequence[tuple[str, int]] = ()) -> None:
        """Acknowledge and delete: the stream then holds only what is not yet counted.

        `totals` are the committed batch's absolute (day field, tokens) totals, merged into the counted
        figures in the same call that takes the entries off the pending ones.
        """
        if ids:
            await self._ack_call(ids, totals)

    async def dead_letter_entries(self, entries: Sequence[Entry], reason: str) -> None:
        """Move entries to the dead-letter stream, then ack them off the main stream."""
        if not entries:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.xadd(
                    self.dead_letter,
                    {
                        "e": entry.payload,
                        "source_id": entry.id,
                        "reason": reason,
                        "deliveries": str(entry.deliveries),
                    },
                )
            await self._ack_call([e.id for e in entries], (), client=pipe)  # queued in the transaction
            await pipe.execute()

    async def dead_letter_summary(self) -> dict[str, int]:
        """Dead-lettered entries by reason."""
        reasons: dict[str, int] = {}
        last = "-"
        while True:
            batch = await self.client.xrange(self.dead_letter, min=last, count=1000)
            batch = [(i, f) for i, f in batch if i != last]
            if not batch:
                return reasons
            for _, fields in batch:
                reason = fields.get(b"reason", b"unknown").decode()
                reasons[reason] = reasons.get(reason, 0) + 1
            last = batch[-1][0]

    async def replay_dead_letters(self, count: int) -> int:
        """Move up to `count` dead letters back onto the stream; dedup makes a replay safe."""
        entries = await self.client.xrange(self.dead_letter, count=count)
        if not entries:
            return 0
        async with self.client.pipeline(transaction=True) as pipe:
            for entry_id, fields in entries:
                # Back on the stream with its tally, through the append script: pending again.
                events = _decode(entry_id, fields).events or ()
                args = [0, self.clock.now_ms(), 0, 0, fields[b"e"], tally(events), 0]
                await self._append_script(keys=[self.name, self.quota_keys.pending], args=args, client=pipe)
            pipe.xdel(self.dead_letter, *[entry_id for entry_id, _ in entries])
            await pipe.execute()
        return len(entries)

    async def backlog(self) -> Backlog:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.name)
            pipe.xrange(self.name, count=1)
            pipe.xlen(self.dead_letter)
            pipe.xpending(self.name, self.group)
            length, first, dead, pending = await pipe.execute(raise_on_error=False)
        oldest = None
        if isinstance(first, list) and first:
            first_id = first[0][0]
            first_id = first_id.decode() if isinstance(first_id, bytes) else first_id
            oldest = int(first_id.split("-")[0])
        pending_count = int(pending["pending"]) if isinstance(pending, dict) else 0
        return Backlog(
            int(length) if isinstance(length, int) else 0,
            pending_count,
            oldest,
            int(dead) if isinstance(dead, int) else 0,
        )


TRANSIENT_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
