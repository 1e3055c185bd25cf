"""The quota figures' Redis keys and the Lua helpers that change them (what the figures are: tally.py).

Apart from tally.py because the stream's append and ack scripts (appender.py, stream.py) change the
figures too, in the same call as their XADD and XACK.
"""

from __future__ import annotations

from dataclasses import dataclass

# Lua helpers of the append, ack (appender.py, stream.py) and tally.py scripts. A stream entry's
# field `t` holds its tally: the tokens it adds to the pending figures, as a JSON array
# [day field, tokens, ...] (quota.tally).
TALLY_LUA = """
local function add_tally(pending, tally, sign)
  if type(tally) == 'table' then  -- an entry's field list: find `t`
    local found = nil
    for i = 1, #tally, 2 do if tally[i] == 't' then found = tally[i + 1] end end
    tally = found
  end
  if not tally or tally == '' then return end
  local figures = cjson.decode(tally)
  for i = 1, #figures, 2 do
    local left = redis.call('HINCRBY', pending, figures[i], sign * figures[i + 1])
    if left <= 0 then redis.call('HDEL', pending, figures[i]) end
  end
end
"""
# A tenant's holds: a hash id -> tokens and a sorted set id -> expiry (service clock, ms), and beside them
# `held`, a hash of their total tokens and how many they are, so a check or a grant reads two fields, not
# every live hold: summing them (HVALS) cost Valkey ~150 us of CPU per call at 500 live holds, and grew
# with them. A version without `held` (the holds of a rolling upgrade's older replicas, or written after a
# rollback) changes the holds but not `held`: a count that is not the holds' HLEN shows it, and the total
# is summed afresh. `held` goes with the last hold. Tokens travel as integer strings.
HOLDS_LUA = """
local function holds_total(holds, held)
  local kept = redis.call('HMGET', held, 'tokens', 'count')
  local count = redis.call('HLEN', holds)
  if kept[1] and tonumber(kept[2]) == count then return tonumber(kept[1]) end
  if count == 0 then
    if kept[1] then redis.call('DEL', held) end
    return 0
  end
  local sum = 0
  for _, value in ipairs(redis.call('HVALS', holds)) do sum = sum + (tonumber(value) or 0) end
  redis.call('HSET', held, 'tokens', string.format('%d', sum), 'count', count)
  return sum
end
local function add_hold(holds, expiry, held, id, tokens, expires_ms)
  holds_total(holds, held)
  if redis.call('HSET', holds, id, tokens) == 1 then
    redis.call('HINCRBY', held, 'tokens', tokens)
    redis.call('HINCRBY', held, 'count', 1)
  end
  redis.call('ZADD', expiry, expires_ms, id)
end
local function drop_holds(holds, expiry, held, ids)
  if #ids == 0 then return end
  holds_total(holds, held)
  local gone, dropped = 0, 0
  for _, value in ipairs(redis.call('HMGET', holds, unpack(ids))) do
    if value then
      gone, dropped = gone + tonumber(value), dropped + 1
    end
  end
  redis.call('HDEL', holds, unpack(ids))
  redis.call('ZREM', expiry, unpack(ids))
  if redis.call('HLEN', holds) == 0 then
    redis.call('DEL', held)
  elseif dropped > 0 then
    redis.call('HINCRBY', held, 'tokens', string.format('%d', -gone))
    redis.call('HINCRBY', held, 'count', -dropped)
  end
end
"""
# Absolute totals: a field only ever grows, so acks applied late or twice can never lower one.
MAX_MERGE_LUA = """
local function max_merge(counted, first)
  for i = first, #ARGV, 2 do
    local current = tonumber(redis.call('HGET', counted, ARGV[i])) or 0
    if tonumber(ARGV[i + 1]) > current then redis.call('HSET', counted, ARGV[i], ARGV[i + 1]) end
  end
end
"""


@dataclass(frozen=True, slots=True)
class QuotaKeys:
    """The Redis keys of the quota figures (see tally.py), named beside the stream they follow."""

    pending: str
    counted: str
    loaded: str
    rebuilding: str
    base: str

    @classmethod
    def beside(cls, stream: str) -> QuotaKeys:
        base = f"{stream}:quota"
        return cls(f"{base}:pending", f"{base}:counted", f"{base}:loaded", f"{base}:rebuilding", base)

    def holds(self, tenant: str) -> str:
        return f"{self.base}:holds:{tenant}"

    def expiry(self, tenant: str) -> str:
        return f"{self.base}:expiry:{tenant}"

    def held(self, tenant: str) -> str:
        return f"{self.base}:held:{tenant}"

    def of_holds(self, tenant: str) -> list[str]:
        """A tenant's holds, their expiry and their total (HOLDS_LUA), in that order."""
        return [self.holds(tenant), self.expiry(tenant), self.held(tenant)]
