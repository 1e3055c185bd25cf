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
