"""The Redis stream between API and worker: append (with the rate limit), read, ack, reclaim, dead-letter.

Every Redis call of FlagMeter lives here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .events import Event

# Token bucket and append in one atomic call: a request is either limited or wholly appended.
# Returns the number of entries appended, or -(milliseconds to wait) when over the limit.
APPEND_LUA = """
local rate = tonumber(ARGV[1])
if rate > 0 then
  local burst = tonumber(ARGV[2])
  local now = tonumber(ARGV[3])
  local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'at')
  local tokens = tonumber(bucket[1]) or burst
  local at = tonumber(bucket[2]) or now
  if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000) else now = at end
  if tokens < 1 then
    return -math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', KEYS[2], 'tokens', tokens - 1, 'at', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
return #ARGV - 3
"""


class StreamUnavailable(Exception):
    """Redis cannot be reached or refuses writes; nothing of the request was appended."""


class RateLimited(Exception):
    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"rate limited for {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: an event, or the raw payload when it could not be decoded."""

    id: str
    payload: bytes
    event: Event | None
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Backlog:
    length: int
    pending: int
    oldest_ms: int | None
    dead_letters: int


def _decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    payload = fields.get(b"e", b"")
    try:
        event = Event.from_row(orjson.loads(payload))
    except (orjson.JSONDecodeError, ValueError, TypeError):
        event = None
    return Entry(ident, payload, event)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Stream:
    def __init__(self, client: redis.Redis, stream: str, group: str, dead_letter: str) -> None:
        self.client: Any = client  # redis-py's asyncio stubs type replies too loosely to help
        self.name = stream
        self.group = group
        self.dead_letter = dead_letter
        self._append = client.register_script(APPEND_LUA)

    @classmethod
    def from_url(
        cls, url: str, stream: str, group: str, dead_letter: str, *, connections: int = 32
    ) -> Stream:
        # A blocking pool: under a burst, requests wait (up to 5 s) for a connection instead of
        # failing with MaxConnectionsError, which would be a 503 while Redis is perfectly healthy.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=5,
            socket_timeout=5, socket_connect_timeout=2, health_check_interval=30,
        )  # fmt: skip
        return cls(redis.Redis(connection_pool=pool), stream, group, dead_letter)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            raise StreamUnavailable(str(error)) from error

    async def append(self, events: Sequence[Event], *, tenant: str | None, rate: int, now_ms: int) -> int:
        """Append accepted events; when `tenant` is given its request bucket is charged first."""
        payloads = [orjson.dumps(event.as_row()) for event in events]
        limited = rate > 0 and tenant is not None
        bucket = f"flagmeter:ratelimit:{tenant}" if limited else self.name
        try:
            result = await self._append(
                keys=[self.name, bucket],
                args=[rate if limited else 0, rate * 2, now_ms, *payloads],
            )
        except (RedisError, OSError) as error:
            raise StreamUnavailable(str(error)) from error
        if int(result) < 0:
            raise RateLimited(-int(result))
        return int(result)

    # -- consumer side ------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
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
        return [Entry(e.id, e.payload, e.event, deliveries.get(e.id, 1)) for e in entries]

    async def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge and delete: the stream then holds only what is not yet counted."""
        if not ids:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(self.name, self.group, *ids)
            pipe.xdel(self.name, *ids)
            await pipe.execute()

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
            pipe.xack(self.name, self.group, *[e.id for e in entries])
            pipe.xdel(self.name, *[e.id for e in entries])
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
            for _, fields in entries:
                pipe.xadd(self.name, {"e": fields[b"e"]})
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
