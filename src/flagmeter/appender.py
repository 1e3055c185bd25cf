"""The API's side of the stream: each request's entry appended in ONE atomic script call that also
charges the tenant's rate limit, adds the entry's tally to the pending quota figures and settles the
reservations its events name — the appends of the requests that arrive meanwhile joined into the
next call (group commit), on a connection of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from .clock import Clock
from .quota_figures import HOLDS_LUA, TALLY_LUA, QuotaKeys
from .script_calls import GroupCommit, ScriptConnection


class RedisUnavailable(Exception):
    """Redis cannot be reached or refuses writes (the stream's, and every key beside it); for an append,
    nothing of the request was appended."""


T = TypeVar("T")


async def on_redis(call: Awaitable[T]) -> T:
    """`call`'s result, or RedisUnavailable for any of Redis's errors or a socket's (timeouts included:
    TimeoutError is an OSError)."""
    try:
        return await call
    except (RedisError, OSError) as error:
        raise RedisUnavailable(str(error)) from error


class RateLimited(Exception):
    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"rate limited for {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


# One entry onto the stream with its tally (field `t`, when it has one) added to the pending figures.
APPEND_ENTRY_LUA = (
    TALLY_LUA
    + """
local function append_entry(stream, pending, payload, tally)
  if tally == '' then
    redis.call('XADD', stream, '*', 'e', payload)
  else
    redis.call('XADD', stream, '*', 'e', payload, 't', tally)
    add_tally(pending, tally, 1)
  end
end
"""
)

# The appends of the requests that waited for the previous call (see Appender.append), in one atomic call.
# A request's accepted events travel as ONE stream entry (stream.encode's columns): one XADD, one
# decode and one ack per request, however many events it holds. The same call adds the entry's tally
# to the pending figures and settles the reservations its events name.
# KEYS: stream, pending, then rate-limit buckets and hold keys. ARGV: rate_now_ms, now_ms (service
# clock), then per request: bucket key index (0: not limited), rate, payload, tally, n, and n times
# (holds key index, expiry key index, held key index, reservation id).
# The reply holds, per request, 1 + reservations settled when appended, or -(milliseconds to wait) when
# over its tenant's limit.
APPEND_LUA = (
    APPEND_ENTRY_LUA
    + HOLDS_LUA
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
    append_entry(KEYS[1], KEYS[2], ARGV[i + 2], ARGV[i + 3])
    for s = 0, settles - 1 do
      local holds, expiry = KEYS[tonumber(ARGV[i + 5 + 4 * s])], KEYS[tonumber(ARGV[i + 6 + 4 * s])]
      local held, id = KEYS[tonumber(ARGV[i + 7 + 4 * s])], ARGV[i + 8 + 4 * s]
      local expires = redis.call('ZSCORE', expiry, id)
      if expires and tonumber(expires) > now then  -- an expired hold is left to be counted as expired
        drop_holds(holds, expiry, held, {id})
        result = result + 1
      end
    end
  end
  results[#results + 1] = result
  i = i + 5 + 4 * settles
end
return results
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


class Appender(GroupCommit[_Append]):
    def __init__(self, client: redis.Redis, stream: str, quota_keys: QuotaKeys, clock: Clock) -> None:
        super().__init__()  # one call at a time, the requests that arrive meanwhile in the next
        self.client: Any = client
        self.stream = stream
        self.quota_keys = quota_keys
        self.clock = clock
        self._script = client.register_script(APPEND_LUA)
        self._connection = ScriptConnection(client)  # the appends' own: one call at a time

    async def close(self) -> None:
        await self._connection.close()

    async def append(
        self,
        payload: bytes,
        tally: bytes,
        *,
        tenant: str | None,
        rate: int,
        settle: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Append one entry (`payload`, its `tally`); when `tenant` is given its request bucket is
        charged first. `settle` names the (tenant, reservation id) holds the entry settles, released in
        the same call; the answer is how many of them were still held.

        Group commit: one script call at a time per process; the requests that arrive while it is
        in flight share the next call, so a busy process makes fewer, fuller Redis round trips
        (and fewer trips through redis-py, which cost more CPU than the round trip itself).
        """
        limited = rate > 0 and tenant is not None
        request = _Append(
            f"{self.stream}:ratelimit:{tenant}" if limited else None,  # beside the stream, as every key
            rate,
            payload,
            tally,
            settle,
            asyncio.get_running_loop().create_future(),
        )
        self._enqueue(request)
        result = await request.done
        if result < 0:
            raise RateLimited(-result)
        return result - 1

    def _take(self, waiting: list[_Append]) -> int:
        take, size = 0, 0
        while take < len(waiting) and (take == 0 or size < MAX_APPEND_BYTES):
            size += len(waiting[take].payload)
            take += 1
        return take

    async def _send(self, batch: list[_Append]) -> None:
        keys = [self.stream, self.quota_keys.pending]
        args: list[Any] = [int(time.time() * 1000), self.clock.now_ms()]
        for request in batch:
            if request.bucket is None:
                args += [0, 0]
            else:
                keys.append(request.bucket)
                args += [len(keys), request.rate]
            args += [request.payload, request.tally, len(request.settle)]
            for tenant, reservation in request.settle:
                keys += self.quota_keys.of_holds(tenant)
                args += [len(keys) - 2, len(keys) - 1, len(keys), reservation]
        try:
            # A call that met a closed connection is sent once more: had the first run after all,
            # its events are appended twice and the worker counts them once.
            results = list(await self._connection.call(self._script, keys, args))
        except Exception as error:  # whatever it is, no request may wait forever on its future
            for request in batch:
                if not request.done.done():
                    request.done.set_exception(RedisUnavailable(str(error)))
            return
        for request, result in zip(batch, results, strict=True):
            if not request.done.done():
                request.done.set_result(int(result))
