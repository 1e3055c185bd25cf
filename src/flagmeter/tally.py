"""Redis's live quota figures: tokens pending (accepted, not yet counted) and counted per tenant and
UTC day, and the holds (reservations). Checks and grants read and change them in ONE script call each,
so they are atomic across every API process and replica and need no PostgreSQL query.

- pending: incremented by the script that XADDs an entry, decremented by the script that XACKs it,
  only when XACK really acknowledged it (stream.py): every 202 is included, nothing twice.
- counted: absolute per-day totals from PostgreSQL's `daily_totals`, merged with max() by the same
  script that acks, so two workers out of order or a crash between commit and ack lose nothing.
- holds: per tenant a hash id -> tokens and a sorted set id -> expiry (service clock, ms), with their
  total beside them (quota_figures.HOLDS_LUA); every call that reads a tenant's holds first drops its
  expired ones.
- loaded: a marker; without it (Redis lost its data) the figures are rebuilt from PostgreSQL and the
  stream before any answer, so a check never answers 0 used for want of them.

The keys, and the Lua helpers the stream's scripts share, are in quota_figures.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .quota_figures import HOLDS_LUA, MAX_MERGE_LUA, TALLY_LUA
from .script_calls import ScriptCalls
from .stream import RedisUnavailable, Stream, on_redis

DailyTotals = Sequence[tuple[str, int]]  # (day_field(tenant, day), tokens)
REBUILD_LOCK_MS = 30_000
REBUILD_WAIT_S = 10.0
MERGE_CHUNK = 2000  # fields per merge call: Redis runs each call alone, keep them short

# Drop a tenant's expired holds (at most 1000 a call); returns how many.
PURGE_LUA = (
    HOLDS_LUA
    + """
local function purge(holds, expiry, held, now)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 1000)
  drop_holds(holds, expiry, held, gone)
  return #gone
end
local function sum(values)
  local total = 0
  for _, value in ipairs(values) do total = total + (tonumber(value) or 0) end
  return total
end
local function used(counted, pending, first)
  local fields = {}
  for i = first, #ARGV do fields[#fields + 1] = ARGV[i] end
  if #fields == 0 then return 0 end
  return sum(redis.call('HMGET', counted, unpack(fields))) + sum(redis.call('HMGET', pending, unpack(fields)))
end
"""
)
# KEYS: counted, pending, holds, expiry, loaded, held. ARGV: now_ms, then the period's day fields.
# Reply {used, reserved, expired}, or {-1} when the figures must be rebuilt first.
CHECK_LUA = (
    PURGE_LUA
    + """
if redis.call('EXISTS', KEYS[5]) == 0 then return {-1} end
local expired = purge(KEYS[3], KEYS[4], KEYS[6], ARGV[1])
return {used(KEYS[1], KEYS[2], 2), holds_total(KEYS[3], KEYS[6]), expired}
"""
)
# KEYS as CHECK. ARGV: now_ms, quota, tokens, id, expires_ms, then the day fields.
# Reply {outcome, tokens, expires_ms, used, reserved, expired}: outcome 1 granted, 0 refused, 2 the id
# holds already (nothing more held); {-1}: rebuild first.
RESERVE_LUA = (
    PURGE_LUA
    + """
if redis.call('EXISTS', KEYS[5]) == 0 then return {-1} end
local expired = purge(KEYS[3], KEYS[4], KEYS[6], ARGV[1])
local spent = used(KEYS[1], KEYS[2], 6)
local reserved = holds_total(KEYS[3], KEYS[6])
local held = redis.call('HGET', KEYS[3], ARGV[4])
if held then
  return {2, tonumber(held), tonumber(redis.call('ZSCORE', KEYS[4], ARGV[4])), spent, reserved, expired}
end
local tokens = tonumber(ARGV[3])
if tokens > math.max(0, tonumber(ARGV[2]) - spent - reserved) then
  return {0, 0, 0, spent, reserved, expired}
end
add_hold(KEYS[3], KEYS[4], KEYS[6], ARGV[4], ARGV[3], ARGV[5])
return {1, tokens, tonumber(ARGV[5]), spent, reserved + tokens, expired}
"""
)
# KEYS: holds, expiry, held. ARGV: now_ms, id. Reply 1 released, 0 unknown, -1 it had expired (now dropped).
RELEASE_LUA = (
    HOLDS_LUA
    + """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not expires then return 0 end
drop_holds(KEYS[1], KEYS[2], KEYS[3], {ARGV[2]})
if tonumber(expires) <= tonumber(ARGV[1]) then return -1 end
return 1
"""
)
# KEYS: holds, expiry, held. ARGV: now_ms. Reply {expired, id, tokens, expires_ms, ...}.
LIST_LUA = (
    PURGE_LUA
    + """
local reply = {purge(KEYS[1], KEYS[2], KEYS[3], ARGV[1])}
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  reply[#reply + 1] = entries[i]
  reply[#reply + 1] = tonumber(redis.call('HGET', KEYS[1], entries[i])) or 0
  reply[#reply + 1] = tonumber(entries[i + 1])
end
return reply
"""
)
# KEYS: counted. ARGV: field, tokens, ... (absolute totals).
MERGE_LUA = MAX_MERGE_LUA + "max_merge(KEYS[1], 1)\nreturn 1\n"
# KEYS: pending, stream, loaded. Pending becomes what the stream's entries add up to (acked entries are
# deleted by the same script, so the stream holds exactly the entries not yet counted); then `loaded`.
REBUILD_PENDING_LUA = (
    TALLY_LUA
    + """
redis.call('DEL', KEYS[1])
local start = '-'
while true do
  local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 1000)
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do add_tally(KEYS[1], entry[2], 1) end
  start = '(' .. entries[#entries][1]
end
redis.call('SET', KEYS[3], '1')
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    tenant: str
    tokens: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Grant:
    outcome: int  # GRANTED, REFUSED or EXISTING
    hold: Hold | None
    used: int
    reserved: int
    expired: int


GRANTED, REFUSED, EXISTING = 1, 0, 2


class Tally:
    def __init__(self, stream: Stream, load_counted: Callable[[], Awaitable[DailyTotals]]) -> None:
        self.stream = stream
        self.client: Any = stream.client
        self.keys = stream.quota_keys
        self._load_counted = load_counted
        self._check = self.client.register_script(CHECK_LUA)
        self._reserve = self.client.register_script(RESERVE_LUA)
        self._release = self.client.register_script(RELEASE_LUA)
        self._list = self.client.register_script(LIST_LUA)
        self._merge = self.client.register_script(MERGE_LUA)
        self._rebuild_pending = self.client.register_script(REBUILD_PENDING_LUA)
        self._calls = ScriptCalls(self.client)  # checks and grants: a connection of their own

    async def close(self) -> None:
        await self._calls.close()

    def _tenant_keys(self, tenant: str) -> list[str]:
        keys = self.keys
        holds, expiry, held = keys.of_holds(tenant)
        return [keys.counted, keys.pending, holds, expiry, keys.loaded, held]

    async def figures(self, tenant: str, days: Sequence[str], now_ms: int) -> tuple[int, int, int]:
        """(used, reserved, expired holds dropped) for the tenant over `days` (day fields)."""
        reply = await self._call(self._check, self._tenant_keys(tenant), [now_ms, *days])
        return int(reply[0]), int(reply[1]), int(reply[2])

    async def reserve(
        self,
        tenant: str,
        days: Sequence[str],
        now_ms: int,
        quota: int,
        tokens: int,
        ident: str,
        expires_ms: int,
    ) -> Grant:
        args = [now_ms, quota, tokens, ident, expires_ms, *days]
        outcome, held, expires, used, reserved, expired = map(
            int, await self._call(self._reserve, self._tenant_keys(tenant), args)
        )
        hold = Hold(ident, tenant, held, expires) if outcome != REFUSED else None
        return Grant(outcome, hold, used, reserved, expired)

    async def release(self, tenant: str, ident: str, now_ms: int) -> int:
        """1 released, 0 no such hold, -1 it had expired."""
        keys = self.keys.of_holds(tenant)
        return int(await on_redis(self._release(keys=keys, args=[now_ms, ident])))

    async def holds(self, tenant: str, now_ms: int) -> tuple[list[Hold], int]:
        """The tenant's active holds, soonest to expire first, and how many expired ones were dropped."""
        keys = self.keys.of_holds(tenant)
        reply = await on_redis(self._list(keys=keys, args=[now_ms]))
        rows = reply[1:]
        holds = [
            Hold(_text(rows[i]), tenant, int(rows[i + 1]), int(rows[i + 2])) for i in range(0, len(rows), 3)
        ]
        return holds, int(reply[0])

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        reply = await on_redis(self._calls.call(script, keys, args))
        if int(reply[0]) == -1:
            await self.rebuild()
            reply = await on_redis(self._calls.call(script, keys, args))
            if int(reply[0]) == -1:
                raise RedisUnavailable("quota figures are being rebuilt; retry")
        return list(reply)

    async def rebuild(self) -> None:
        """Reload the figures after Redis lost them: counted from PostgreSQL, pending from the stream.

        One process rebuilds (a lock with a lease); the others wait for its marker. The counted
        totals are merged with max(), so acks that land meanwhile keep whatever is newer.
        """
        keys = self.keys
        token = os.urandom(8).hex()
        if not await on_redis(self.client.set(keys.rebuilding, token, nx=True, px=REBUILD_LOCK_MS)):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + REBUILD_WAIT_S
            while loop.time() < deadline:
                if await on_redis(self.client.exists(keys.loaded)):
                    return
                await asyncio.sleep(0.05)
            raise RedisUnavailable("quota figures are being rebuilt; retry")
        try:
            totals = await self._load_counted()
            flat = [value for pair in totals for value in pair]
            for i in range(0, len(flat), 2 * MERGE_CHUNK):
                await on_redis(self._merge(keys=[keys.counted], args=flat[i : i + 2 * MERGE_CHUNK]))
            await on_redis(self._rebuild_pending(keys=[keys.pending, self.stream.name, keys.loaded]))
        finally:
            if await on_redis(self.client.get(keys.rebuilding)) == token.encode():
                await on_redis(self.client.delete(keys.rebuilding))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
